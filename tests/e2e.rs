//! End to end, the way users run walsync: the real binary as a child
//! process, a real S3 server (s3s-fs, which checks SigV4 and
//! x-amz-checksum-crc32), real SQLite databases in WAL mode written while
//! walsync runs, with the application's own checkpoints of every mode and
//! autocheckpoint, SIGKILLs mid-stream, a SIGTERM at the end, then restores
//! compared with the source.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::app::{app_checkpoint, insert, insert_value, integrity, rows};
use common::process::{sigterm, Running};
use common::s3server::S3Server;
use rusqlite::Connection;
use walsync::keyfile::Key;
use walsync::keys::{self, ObjectKind};
use walsync::storage::s3::S3Storage;
use walsync::storage::Storage;

const PREFIXES: [&str; 3] = ["tenants/acme", "services/auth", "edge/node-1/cache"];

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_walsync")
}

struct Setup {
    server: S3Server,
    dir: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new(dbs: &[(&str, &str)]) -> Setup {
        let server = S3Server::start();
        let dir = server.scratch_dir("e2e");
        let config = dir.join("walsync.toml");
        let mut text = format!(
            "sync_interval = \"100ms\"\nrescan_interval = \"1s\"\ncheckpoint_threshold = \"256KiB\"\ntruncate_threshold = \"1MiB\"\n\
             [storage]\nbucket = \"{}\"\nendpoint = \"{}\"\n",
            server.bucket, server.endpoint
        );
        for (file, prefix) in dbs {
            text.push_str(&format!(
                "[[databases]]\npath = \"{file}\"\nprefix = \"{prefix}\"\n"
            ));
        }
        std::fs::write(&config, text).unwrap();
        Setup {
            server,
            dir,
            config,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(bin());
        // WALSYNC_TEST_LOG=debug shows walsync's debug lines in a failing
        // test's log.
        let level = std::env::var("WALSYNC_TEST_LOG").unwrap_or_else(|_| "info".into());
        c.current_dir(&self.dir).env("RUST_LOG", level);
        for (k, v) in self.server.env() {
            c.env(k, v);
        }
        c
    }

    fn watch(&self, log: &str) -> Running {
        self.watch_logging(log, None)
    }

    /// `watch` writing its log to `log`, at `rust_log` if given (else as
    /// `command` sets it).
    fn watch_logging(&self, log: &str, rust_log: Option<&str>) -> Running {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let mut c = self.command();
        if let Some(level) = rust_log {
            c.env("RUST_LOG", level);
        }
        Running(
            c.args(["watch", "--config"])
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Rewrites the config file through `f`; returns the new text.
    fn edit_config(&self, f: impl FnOnce(&str) -> String) -> String {
        let text = f(&std::fs::read_to_string(&self.config).unwrap());
        std::fs::write(&self.config, &text).unwrap();
        text
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.server.scratch_dir(name)
    }

    fn storage(&self) -> S3Storage {
        S3Storage::new(self.server.settings()).unwrap()
    }

    fn restore(&self, prefix: &str, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "restore",
            "--config",
            self.config.to_str().unwrap(),
            "--prefix",
            prefix,
            "-o",
        ];
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Restores `prefix` (newest) to `out`, asserts that it succeeded and
    /// that the file passes `integrity_check`, and returns its rows.
    fn restore_verified(&self, prefix: &str, out: &Path) -> Vec<(i64, String)> {
        let o = self.restore(prefix, out, &[]);
        assert!(
            o.status.success(),
            "restore {prefix}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(integrity(out), "ok", "restore {prefix}");
        rows(out)
    }
}

fn open_app(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=200; PRAGMA wal_autocheckpoint=200;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )
    .unwrap();
    c
}

/// Waits until a restore of `prefix` has exactly the rows of `db`: for
/// commits made by another process, whose end the test cannot time.
fn wait_restorable(storage: &S3Storage, prefix: &str, db: &Path) {
    wait_restorable_with(storage, prefix, db, &[])
}

/// `wait_restorable` of an encrypted backup, opened with `keys`.
fn wait_restorable_with(storage: &S3Storage, prefix: &str, db: &Path, keys: &[Key]) {
    // Outside the database's directory, which walsync may be watching.
    let scratch = common::unique_temp_dir("walsync-probe").join("probe.db");
    let start = Instant::now();
    loop {
        let _ = std::fs::remove_file(&scratch);
        if walsync::restore::restore(
            storage,
            prefix,
            &scratch,
            walsync::plan::Target::Latest,
            false,
            keys,
        )
        .is_ok()
            && rows(&scratch) == rows(db)
        {
            let _ = std::fs::remove_dir_all(scratch.parent().unwrap());
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{prefix}: not caught up after 30 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn generation_count(storage: &S3Storage, prefix: &str) -> usize {
    let listing = storage.list(&keys::database_root(prefix)).unwrap();
    let objs = keys::parse_listing(prefix, &listing).unwrap();
    walsync::plan::generations(&objs).len()
}

/// Waits until the backup has caught up with `db`: a restore of the newest
/// point has exactly its rows. (Waiting for "an object newer than now" would
/// hang when walsync shipped the last commit before the wait began.)
fn wait_shipped(storage: &S3Storage, prefix: &str, db: &Path) {
    wait_restorable(storage, prefix, db)
}

#[test]
fn three_databases_survive_kills_and_checkpoints_and_restore_exactly() {
    let files = ["acme.db", "auth.db", "cache.db"];
    let dbs: Vec<(&str, &str)> = files.iter().copied().zip(PREFIXES).collect();
    let setup = Setup::new(&dbs);
    let paths: Vec<PathBuf> = files.iter().map(|f| setup.dir.join(f)).collect();
    for p in &paths {
        open_app(p);
    }

    let mut child = setup.watch("watch-0.log");
    let stop = Arc::new(AtomicBool::new(false));
    // One writer per database: small transactions, the application's own
    // checkpoints of every mode, autocheckpoint at 200 pages.
    let writers: Vec<_> = paths
        .iter()
        .cloned()
        .enumerate()
        .map(|(w, path)| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let c = open_app(&path);
                let modes = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];
                let mut id = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    insert(&c, id);
                    if id % 150 == 0 {
                        let mode = modes[(id as usize / 150 + w) % 4];
                        let _ =
                            c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
                    }
                    if id % 500 == 0 {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
                id
            })
        })
        .collect();

    // Kill walsync with SIGKILL mid-stream three times, restarting it each time.
    for kill in 1..=3 {
        thread::sleep(Duration::from_millis(1200 + 300 * kill));
        child.kill().unwrap();
        child.wait().unwrap();
        thread::sleep(Duration::from_millis(200));
        child = setup.watch(&format!("watch-{kill}.log"));
    }
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let written: Vec<i64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let status = sigterm(&mut child);
    assert!(
        status.success(),
        "walsync exit status after SIGTERM: {status}"
    );
    eprintln!("committed rows per database: {written:?}");

    for ((path, prefix), &n) in paths.iter().zip(PREFIXES).zip(&written) {
        assert!(n > 500, "{prefix}: the writer committed only {n} rows");
        let out = setup
            .dir
            .join(format!("{}.restored.db", prefix.replace('/', "_")));
        let got = setup.restore_verified(prefix, &out);
        assert_eq!(
            got.len() as i64,
            n,
            "{prefix}: every committed row is restored"
        );
        assert_eq!(
            got,
            rows(path),
            "{prefix}: restored content equals the source"
        );
        // With the WAL checkpointed into it, the source file is the same bytes.
        let c = Connection::open(path).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(c);
        let identical = std::fs::read(path).unwrap() == std::fs::read(&out).unwrap();
        eprintln!(
            "{prefix}: {n} rows restored from {} generations after 3 SIGKILLs; byte-identical to the checkpointed source: {identical}",
            generation_count(&setup.storage(), prefix)
        );
        assert!(
            identical,
            "{prefix}: restored file differs from the checkpointed source"
        );
    }
}

#[test]
fn point_in_time_restore_is_exact_and_gaps_start_new_generations() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let path = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&path);
    let mut child = setup.watch("watch.log");

    for id in 1..=300 {
        insert(&c, id);
    }
    wait_shipped(&storage, "tenants/acme", &setup.dir.join("app.db"));
    let t1 = walsync::time::now_ms();
    thread::sleep(Duration::from_millis(50));
    for id in 301..=600 {
        insert(&c, id);
    }
    wait_shipped(&storage, "tenants/acme", &setup.dir.join("app.db"));
    let t2 = walsync::time::now_ms();
    thread::sleep(Duration::from_millis(50));
    for id in 601..=700 {
        insert(&c, id);
    }
    assert!(sigterm(&mut child).success());
    assert_eq!(
        generation_count(&storage, "tenants/acme"),
        1,
        "{}",
        std::fs::read_to_string(setup.dir.join("watch.log")).unwrap()
    );

    // Written while walsync is stopped, with the WAL checkpointed and
    // restarted: walsync must notice and start a new generation.
    for id in 701..=800 {
        insert(&c, id);
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    for id in 801..=900 {
        insert(&c, id);
    }
    let mut child = setup.watch("watch-2.log");
    wait_shipped(&storage, "tenants/acme", &setup.dir.join("app.db"));
    for id in 901..=950 {
        insert(&c, id);
    }
    wait_shipped(&storage, "tenants/acme", &setup.dir.join("app.db"));
    assert!(sigterm(&mut child).success());
    assert_eq!(
        generation_count(&storage, "tenants/acme"),
        2,
        "a gap starts a new generation: {}",
        std::fs::read_to_string(setup.dir.join("watch-2.log")).unwrap()
    );

    let ts = |ms: u64| walsync::time::format_rfc3339(ms);
    for (t, expect) in [(t1, 300usize), (t2, 600)] {
        let out = setup.dir.join(format!("at-{t}.db"));
        let o = setup.restore("tenants/acme", &out, &["--timestamp", &ts(t)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = rows(&out);
        assert_eq!(
            got.len(),
            expect,
            "restore to {} has exactly the rows committed before it",
            ts(t)
        );
        assert_eq!(got.last().map(|r| r.0), Some(expect as i64));
        assert_eq!(integrity(&out), "ok");
    }
    let out = setup.dir.join("latest.db");
    let o = setup.restore("tenants/acme", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out), rows(&path));
    assert_eq!(rows(&out).len(), 950);

    // Restores by txid: each is a prefix of the rows, growing with the txid.
    let mut last = 0;
    for txid in [1u64, 2, 50, 200] {
        let out = setup.dir.join(format!("txid-{txid}.db"));
        let o = setup.restore("tenants/acme", &out, &["--txid", &txid.to_string()]);
        assert!(
            o.status.success(),
            "txid {txid}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let n = rows(&out).len();
        assert!(
            n >= last,
            "txid {txid}: {n} rows, fewer than an earlier txid's {last}"
        );
        last = n;
    }

    // The output is never overwritten without --force; with it, it is.
    let o = setup.restore("tenants/acme", &out, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let o = setup.restore("tenants/acme", &out, &["--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out).len(), 950);

    // A timestamp before the first backup, and a prefix with no backup.
    let o = setup.restore(
        "tenants/acme",
        &setup.dir.join("early.db"),
        &["--timestamp", "2001-01-01T00:00:00Z"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("oldest restorable time"));
    assert!(!setup.dir.join("early.db").exists());
    let o = setup.run(&[
        "restore",
        "--bucket",
        &setup.server.bucket,
        "--endpoint",
        &setup.server.endpoint,
        "--prefix",
        "tenants/nobody",
        "-o",
        setup.dir.join("nobody.db").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tenants/nobody"));
}

#[test]
fn wrong_secret_key_is_a_clear_authentication_error() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let o = setup
        .command()
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["list", "--config", setup.config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        !err.contains("not-the-secret"),
        "the secret must not be printed: {err}"
    );
}

/// Every object file of the bucket as s3s-fs stores it (one file per key).
fn object_files(setup: &Setup, prefix: &str) -> Vec<(String, PathBuf)> {
    let storage = setup.storage();
    storage
        .list(&keys::database_root(prefix))
        .unwrap()
        .into_iter()
        .map(|o| {
            let p = setup.server.bucket_dir().join(&o.key);
            assert!(p.is_file(), "s3s-fs stores {} at {}", o.key, p.display());
            (o.key, p)
        })
        .collect()
}

fn assert_nothing_left(dir: &Path, out: &Path) {
    assert!(
        !out.exists(),
        "{} must not exist after a failed restore",
        out.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("walsync-restore"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn corrupt_or_missing_objects_are_named_and_nothing_is_written() {
    let setup = Setup::new(&[("app.db", "services/auth")]);
    let path = setup.dir.join("app.db");
    let c = open_app(&path);
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    for batch in 0..4 {
        for id in batch * 100 + 1..=batch * 100 + 100 {
            insert(&c, id);
        }
        wait_shipped(&storage, "services/auth", &path);
    }
    assert!(sigterm(&mut child).success());
    let files = object_files(&setup, "services/auth");
    assert!(
        files.len() >= 4,
        "a snapshot and several segments: {files:?}"
    );
    let outdir = setup.scratch("restores");
    let out = outdir.join("r.db");

    // A flipped byte anywhere in any object a restore reads (idle marks are
    // not among them): restore names it and writes nothing.
    for (key, file) in files
        .iter()
        .filter(|(k, _)| !k.ends_with(".mark") && !k.ends_with("/lease"))
    {
        let good = std::fs::read(file).unwrap();
        for at in [0, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            std::fs::write(file, &bad).unwrap();
            let o = setup.restore("services/auth", &out, &[]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "flip at {at} of {key}: {err}");
            assert!(err.contains(key.as_str()), "the error names {key}: {err}");
            assert_nothing_left(&outdir, &out);
        }
        // Truncated.
        std::fs::write(file, &good[..good.len() / 3]).unwrap();
        let o = setup.restore("services/auth", &out, &[]);
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains(key.as_str()));
        assert_nothing_left(&outdir, &out);
        std::fs::write(file, &good).unwrap();
    }

    // A segment missing in the middle of the chain.
    let segments: Vec<_> = files.iter().filter(|(k, _)| k.ends_with(".seg")).collect();
    assert!(segments.len() >= 3);
    let (key, file) = segments[1];
    let saved = std::fs::read(file).unwrap();
    std::fs::remove_file(file).unwrap();
    let o = setup.restore("services/auth", &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("missing the segments"), "{err}");
    assert_nothing_left(&outdir, &out);
    std::fs::write(file, &saved).unwrap();
    let _ = key;

    // A key under generations/ that is not a walsync object.
    let stray = setup
        .server
        .bucket_dir()
        .join("services/auth/generations/0000000000000001/snapshots/junk");
    std::fs::write(&stray, b"junk").unwrap();
    // Named, and otherwise no part of the restore, which succeeds.
    let o = setup.restore("services/auth", &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("snapshots/junk") && err.contains("not a walsync object"),
        "{err}"
    );
    assert_eq!(rows(&out), rows(&path));
    std::fs::remove_file(&out).unwrap();
    // list and verify name it too, and succeed.
    let cfg = setup.config.to_str().unwrap();
    for args in [
        vec!["list", "--config", cfg, "--json"],
        vec!["verify", "--config", cfg],
    ] {
        let o = setup.run(&args);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(err.contains("snapshots/junk"), "{args:?}: {err}");
        if args[0] == "list" {
            assert!(out.contains("\"stray\":[{\"key\":\"services/auth/generations/0000000000000001/snapshots/junk\",\"bytes\":4}]"), "{out}");
        }
    }
    std::fs::remove_file(&stray).unwrap();

    // With everything back in place, the restore is whole.
    let o = setup.restore("services/auth", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out), rows(&path));
}

#[test]
fn missing_and_broken_databases_do_not_stop_the_others() {
    let setup = Setup::new(&[
        ("good.db", "apps/good"),
        ("later.db", "apps/later"),
        ("rollback.db", "apps/rollback"),
    ]);
    let storage = setup.storage();
    // A database in rollback-journal mode: walsync refuses it, clearly.
    let rb = Connection::open(setup.dir.join("rollback.db")).unwrap();
    rb.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t VALUES (1, 'x');",
    )
    .unwrap();
    let good = open_app(&setup.dir.join("good.db"));
    let mut child = setup.watch("watch.log");
    for id in 1..=50 {
        insert(&good, id);
    }
    wait_shipped(&storage, "apps/good", &setup.dir.join("good.db"));

    // The database that did not exist at start appears and is replicated.
    let later = open_app(&setup.dir.join("later.db"));
    for id in 1..=40 {
        insert(&later, id);
    }
    wait_shipped(&storage, "apps/later", &setup.dir.join("later.db"));
    for id in 51..=60 {
        insert(&good, id);
    }
    wait_shipped(&storage, "apps/good", &setup.dir.join("good.db"));
    let status = sigterm(&mut child);
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("waiting for the database to be created"),
        "{log}"
    );
    assert!(log.contains("walsync needs WAL"), "{log}");

    for (prefix, file, n) in [("apps/good", "good.db", 60), ("apps/later", "later.db", 40)] {
        let out = setup.dir.join(format!("{file}.restored"));
        let o = setup.restore(prefix, &out, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(rows(&out).len(), n);
        assert_eq!(rows(&out), rows(&setup.dir.join(file)));
    }
}

#[test]
fn snapshot_and_list_commands_and_config_errors() {
    let setup = Setup::new(&[("app.db", "edge/node-1/cache")]);
    let c = open_app(&setup.dir.join("app.db"));
    for id in 1..=20 {
        insert(&c, id);
    }
    let cfg = setup.config.to_str().unwrap();
    let o = setup.run(&["snapshot", "--config", cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for id in 21..=30 {
        insert(&c, id);
    }
    let o = setup.run(&["snapshot", "--config", cfg, "--prefix", "edge/node-1/cache"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = setup.run(&["list", "--config", cfg]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("edge/node-1/cache"), "{out}");
    // Two snapshots. (Whether the second starts a new generation depends on
    // whether the application restarted the WAL in between: walsync cannot
    // prove continuity across its own restart once the WAL was restarted.)
    let snapshots = setup
        .storage()
        .list("edge/node-1/cache/")
        .unwrap()
        .into_iter()
        .filter(|o| o.key.ends_with(".snap"))
        .count();
    assert_eq!(snapshots, 2, "{out}");
    assert!(out.contains("generation 0000000000000001"), "{out}");
    let o = setup.run(&["list", "--config", cfg, "--json"]);
    let json = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        json.starts_with("[{\"prefix\":\"edge/node-1/cache\""),
        "{json}"
    );
    assert!(json.contains("\"newest_txid\":"), "{json}");
    let restored = setup.dir.join("r.db");
    let o = setup.restore("edge/node-1/cache", &restored, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&restored).len(), 30);

    // Usage and configuration errors exit 2 and say what is wrong where.
    let bad = setup.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[storage]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:1\"\nbogus = 1\n",
    )
    .unwrap();
    let o = setup.run(&["list", "--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bogus") && err.contains(":4"), "{err}");
    for args in [
        vec!["restore", "--prefix", "../x", "-o", "x.db", "--dir", "."],
        vec![
            "restore",
            "--prefix",
            "a",
            "-o",
            "x.db",
            "--dir",
            ".",
            "--txid",
            "1",
            "--timestamp",
            "2026-01-01T00:00:00Z",
        ],
        vec![
            "restore",
            "--prefix",
            "a",
            "-o",
            "x.db",
            "--dir",
            ".",
            "--timestamp",
            "yesterday",
        ],
        vec!["list", "--config", "/nonexistent/walsync.toml"],
        vec!["frobnicate"],
    ] {
        let o = setup.run(&args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn restore_all_restores_every_database_and_names_failures() {
    let names: Vec<(String, String)> = (0..22)
        .map(|i| {
            let prefix = match i % 3 {
                0 => format!("tenants/t{i}"),
                1 => format!("services/s{i}"),
                _ => format!("edge/node-{i}/cache"),
            };
            (format!("db{i}.db"), prefix)
        })
        .collect();
    let dbs: Vec<(&str, &str)> = names
        .iter()
        .map(|(f, p)| (f.as_str(), p.as_str()))
        .collect();
    let setup = Setup::new(&dbs);
    for (i, (file, _)) in names.iter().enumerate() {
        let c = open_app(&setup.dir.join(file));
        for id in 1..=(10 + i as i64) {
            insert(&c, id);
        }
    }
    let cfg = setup.config.to_str().unwrap();
    let o = setup.run(&["snapshot", "--config", cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // From the config, in parallel.
    let out = setup.scratch("all");
    let o = setup.run(&[
        "restore-all",
        "--config",
        cfg,
        "--output-dir",
        out.to_str().unwrap(),
        "--jobs",
        "4",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("22 ok, 0 failed"), "{stdout}");
    for (i, (file, prefix)) in names.iter().enumerate() {
        let restored = out.join(format!("{prefix}.db"));
        assert_eq!(rows(&restored).len(), 10 + i, "{prefix}");
        assert_eq!(rows(&restored), rows(&setup.dir.join(file)), "{prefix}");
    }

    // With no config: discovered by listing the bucket, under a parent prefix.
    let out2 = setup.scratch("edge-only");
    let o = setup.run(&[
        "restore-all",
        "--bucket",
        &setup.server.bucket,
        "--endpoint",
        &setup.server.endpoint,
        "--prefix",
        "edge",
        "--output-dir",
        out2.to_str().unwrap(),
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("\"ok\":7,\"failed\":0"), "{stdout}");
    assert!(out2.join("edge/node-2/cache.db").is_file());
    assert!(!out2.join("tenants").exists());

    // verify replays everything into temporary files and keeps nothing.
    let tmp = setup.scratch("verify-tmp");
    let o = setup.run(&[
        "verify",
        "--config",
        cfg,
        "--temp-dir",
        tmp.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("22 ok, 0 failed"), "{stdout}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    // One database's snapshot corrupted: exit 1, that one named, the others restored.
    let victim = "services/s1";
    let (_, file) = object_files(&setup, victim)
        .into_iter()
        .find(|(key, _)| key.contains("/snapshots/"))
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let out3 = setup.scratch("one-bad");
    let o = setup.run(&[
        "restore-all",
        "--config",
        cfg,
        "--output-dir",
        out3.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("FAILED  {victim}")), "{stdout}");
    assert!(stdout.contains("21 ok, 1 failed"), "{stdout}");
    assert!(!out3.join(format!("{victim}.db")).exists());
    assert!(out3.join("tenants/t0.db").is_file());
    let o = setup.run(&[
        "verify",
        "--config",
        cfg,
        "--temp-dir",
        tmp.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("FAILED  {victim}")) && stdout.contains("checksum mismatch"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    // Existing files are kept without --force; a symlink leading out is refused.
    let o = setup.run(&[
        "restore-all",
        "--config",
        cfg,
        "--output-dir",
        out.to_str().unwrap(),
        "--prefix",
        "tenants",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("already exists"));
    let out4 = setup.scratch("symlinked");
    let outside = setup.scratch("outside");
    std::os::unix::fs::symlink(&outside, out4.join("tenants")).unwrap();
    let o = setup.run(&[
        "restore-all",
        "--config",
        cfg,
        "--output-dir",
        out4.to_str().unwrap(),
        "--prefix",
        "tenants",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("leads outside the output directory"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through the symlink"
    );
}

#[test]
fn retention_prunes_old_objects_and_keeps_the_window_restorable() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    // A short window and frequent snapshots, so pruning happens in seconds.
    setup.edit_config(|t| format!("retention = \"3s\"\nsnapshot_interval = \"1s\"\n{t}"));
    let path = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&path);
    let mut child = setup.watch("watch.log");
    // (time before the INSERT, time after it): walsync may read a commit
    // before the INSERT call returns here.
    let mut committed: Vec<(u64, u64)> = Vec::new();
    let start = Instant::now();
    let mut id = 0;
    while start.elapsed() < Duration::from_secs(9) {
        id += 1;
        let before = walsync::time::now_ms();
        insert(&c, id);
        committed.push((before, walsync::time::now_ms()));
        thread::sleep(Duration::from_millis(20));
    }
    wait_shipped(&storage, "tenants/acme", &path);
    assert!(sigterm(&mut child).success());
    let stopped = walsync::time::now_ms();
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert!(log.contains("retention deleted"), "{log}");
    let listing = storage.list("tenants/acme/").unwrap();
    let objs = keys::parse_listing("tenants/acme", &listing).unwrap();
    let oldest = objs
        .iter()
        .filter_map(|o| match o.kind {
            ObjectKind::Snapshot { time_ms, .. } => Some(time_ms),
            _ => None,
        })
        .min()
        .unwrap();
    assert!(
        oldest > committed[0].1 + 2000,
        "the first snapshots were pruned (oldest left is {} ms after the first commit)",
        oldest - committed[0].1
    );

    // Every point of the last (window minus a margin) restores: a prefix of
    // the rows, containing every row committed a sync interval before it.
    for back in [2500u64, 1800, 1200, 600, 0] {
        let t = stopped - back;
        let out = setup.dir.join(format!("at-{back}.db"));
        let o = setup.restore(
            "tenants/acme",
            &out,
            &["--timestamp", &walsync::time::format_rfc3339(t)],
        );
        assert!(
            o.status.success(),
            "{back} ms back: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got: Vec<i64> = rows(&out).into_iter().map(|r| r.0).collect();
        let n = got.len() as i64;
        assert_eq!(got, (1..=n).collect::<Vec<_>>(), "a prefix of the rows");
        let surely = committed
            .iter()
            .filter(|(_, done)| *done + 300 <= t)
            .count() as i64;
        let at_most = committed.iter().filter(|(began, _)| *began <= t).count() as i64;
        assert!(
            surely <= n && n <= at_most,
            "{back} ms back: {n} rows, expected {surely}..={at_most}"
        );
    }

    // prune --dry-run with a tiny window lists what would go and deletes nothing.
    let before = storage.list("tenants/acme/").unwrap().len();
    let o = setup.run(&[
        "prune",
        "--config",
        setup.config.to_str().unwrap(),
        "--retention",
        "1s",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("would delete"));
    assert_eq!(storage.list("tenants/acme/").unwrap().len(), before);
    let o = setup.run(&[
        "prune",
        "--config",
        setup.config.to_str().unwrap(),
        "--retention",
        "1s",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = setup.dir.join("latest.db");
    let o = setup.restore("tenants/acme", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out), rows(&path));
}

#[test]
fn a_second_walsync_on_the_same_database_is_refused() {
    let setup = Setup::new(&[("app.db", "services/auth")]);
    let c = open_app(&setup.dir.join("app.db"));
    insert(&c, 1);
    let storage = setup.storage();
    let mut first = setup.watch("first.log");
    wait_shipped(&storage, "services/auth", &setup.dir.join("app.db"));
    // `snapshot` is refused by the prefix's lease, naming the watch.
    let o = setup.run(&["snapshot", "--config", setup.config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is held by another walsync (host ")
            && err.contains(&format!("pid {}, since", first.id())),
        "{err}"
    );
    // A second watch is refused by the prefix's lease before it opens the
    // database (the flock stays the backstop where the storage has no
    // conditional writes), naming the first.
    let mut second = setup.watch("second.log");
    let needle = "is held by another walsync (host ";
    wait_log(&setup, "second.log", needle, 1);
    assert!(sigterm(&mut second).success());
    let log = std::fs::read_to_string(setup.dir.join("second.log")).unwrap();
    assert!(log.contains(&format!("pid {}, since", first.id())), "{log}");
    // The first goes on replicating.
    for id in 2..=20 {
        insert(&c, id);
    }
    wait_shipped(&storage, "services/auth", &setup.dir.join("app.db"));
    assert!(sigterm(&mut first).success());
    let out = setup.dir.join("r.db");
    assert!(setup.restore("services/auth", &out, &[]).status.success());
    assert_eq!(rows(&out).len(), 20);
    assert_eq!(
        generation_count(&storage, "services/auth"),
        1,
        "no interleaved generation"
    );
}

#[test]
fn storage_outages_and_errors_lose_nothing() {
    use common::faultproxy::{Fault, FaultProxy};
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let proxy = FaultProxy::start(setup.server.endpoint.trim_start_matches("http://"));
    // walsync talks to the proxy; the test checks the bucket directly.
    setup.edit_config(|t| t.replace(&setup.server.endpoint, &proxy.endpoint));
    let path = setup.dir.join("app.db");
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let path = path.clone();
        thread::spawn(move || {
            let c = open_app(&path);
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                insert(&c, id);
                thread::sleep(Duration::from_millis(3));
            }
            id
        })
    };
    thread::sleep(Duration::from_millis(800));
    for fault in [
        Fault::Unavailable,
        Fault::Reset,
        Fault::InternalError,
        Fault::TruncateResponse,
        Fault::Slow,
    ] {
        proxy.set(fault);
        thread::sleep(Duration::from_millis(1500));
        proxy.set(Fault::None);
        thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let n = writer.join().unwrap();
    wait_shipped(&storage, "tenants/acme", &path);
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert!(
        log.contains("retrying in"),
        "the faults were seen and retried: {log}"
    );
    let got = setup.restore_verified("tenants/acme", &setup.dir.join("r.db"));
    assert_eq!(
        got.len() as i64,
        n,
        "every committed row survived the outages"
    );
    assert_eq!(got, rows(&path));
}

fn signal(child: &Running, sig: i32) {
    // SAFETY: kill(2) with the pid of our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn sighup_adds_and_removes_databases_while_another_is_written() {
    let setup = Setup::new(&[("keep.db", "apps/keep"), ("old.db", "apps/old")]);
    let storage = setup.storage();
    let keep_path = setup.dir.join("keep.db");
    let old = open_app(&setup.dir.join("old.db"));
    let new = open_app(&setup.dir.join("new.db"));
    for id in 1..=30 {
        insert(&old, id);
        insert(&new, id);
    }
    let mut child = setup.watch("watch.log");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let path = keep_path.clone();
        thread::spawn(move || {
            let c = open_app(&path);
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                insert(&c, id);
                thread::sleep(Duration::from_millis(2));
            }
            id
        })
    };
    wait_shipped(&storage, "apps/old", &setup.dir.join("old.db"));
    for id in 31..=40 {
        insert(&old, id);
    }
    // old.db leaves the config, new.db joins it.
    let edited = setup.edit_config(|t| {
        let e = t.replace(
            "path = \"old.db\"\nprefix = \"apps/old\"",
            "path = \"new.db\"\nprefix = \"apps/new\"",
        );
        assert_ne!(t, e);
        e
    });
    signal(&child, libc::SIGHUP);
    wait_shipped(&storage, "apps/new", &setup.dir.join("new.db"));

    // A broken config on SIGHUP is refused; the running set stays.
    std::fs::write(&setup.config, "this is = not [valid").unwrap();
    signal(&child, libc::SIGHUP);
    wait_log(
        &setup,
        "watch.log",
        "the current configuration stays in force",
        1,
    );
    for id in 31..=35 {
        insert(&new, id);
    }
    wait_shipped(&storage, "apps/new", &setup.dir.join("new.db"));
    std::fs::write(&setup.config, &edited).unwrap();

    stop.store(true, Ordering::Relaxed);
    let n = writer.join().unwrap();
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert!(log.contains("SIGHUP: configuration reloaded"), "{log}");
    assert!(
        log.contains("the current configuration stays in force"),
        "{log}"
    );
    assert!(
        log.contains("old.db (apps/old): stopped replicating"),
        "{log}"
    );

    for (prefix, file, expect) in [
        ("apps/keep", "keep.db", n),
        ("apps/old", "old.db", 40),
        ("apps/new", "new.db", 35),
    ] {
        let out = setup.dir.join(format!("{file}.restored"));
        let o = setup.restore(prefix, &out, &[]);
        assert!(
            o.status.success(),
            "{prefix}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(rows(&out).len() as i64, expect, "{prefix}");
    }
    // After it left the config, old.db is not replicated any more.
    for id in 41..=50 {
        insert(&old, id);
    }
    let out = setup.dir.join("old-again.db");
    assert!(setup.restore("apps/old", &out, &[]).status.success());
    assert_eq!(rows(&out).len(), 40);
}

#[test]
fn databases_in_a_watched_directory_are_discovered_and_let_go() {
    let setup = Setup::new(&[]);
    setup.edit_config(|t| {
        format!("{t}[[directories]]\ndir = \"tenants\"\npattern = \"*.db\"\nprefix = \"tenants/{{name}}\"\n")
    });
    let tenants = setup.dir.join("tenants");
    std::fs::create_dir_all(&tenants).unwrap();
    let storage = setup.storage();
    let acme = open_app(&tenants.join("acme.db"));
    for id in 1..=10 {
        insert(&acme, id);
    }
    std::fs::write(tenants.join("notes.txt"), "not a database").unwrap();
    let mut child = setup.watch("watch.log");
    wait_shipped(&storage, "tenants/acme", &tenants.join("acme.db"));

    // Created while walsync runs: picked up through the same watcher.
    let globex = open_app(&tenants.join("globex.db"));
    for id in 1..=25 {
        insert(&globex, id);
    }
    wait_shipped(&storage, "tenants/globex", &tenants.join("globex.db"));
    for id in 26..=30 {
        insert(&globex, id);
    }
    wait_shipped(&storage, "tenants/globex", &tenants.join("globex.db"));

    // Deleted: walsync lets go of it.
    drop(acme);
    std::fs::remove_file(tenants.join("acme.db")).unwrap();
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
        if log.contains("acme.db (tenants/acme): stopped replicating") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "acme.db not let go: {log}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert!(!log.contains("notes.txt"), "{log}");

    // restore-all from the config finds both, the deleted one from the bucket.
    let out = setup.scratch("all");
    let cfg = setup.config.to_str().unwrap();
    let o = setup.run(&[
        "restore-all",
        "--config",
        cfg,
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(rows(&out.join("tenants/acme.db")).len(), 10);
    assert_eq!(rows(&out.join("tenants/globex.db")).len(), 30);
    let o = setup.run(&["list", "--config", cfg]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("tenants/globex"));
}

#[test]
fn the_metrics_page_parses_as_prometheus_text() {
    use std::io::{Read, Write};
    let setup = Setup::new(&[("app.db", "services/auth")]);
    // Port 0: the system picks a free one, and walsync logs which.
    setup.edit_config(|t| format!("{t}[metrics]\nlisten = \"127.0.0.1:0\"\n"));
    let c = open_app(&setup.dir.join("app.db"));
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    insert(&c, 1);
    wait_shipped(&storage, "services/auth", &setup.dir.join("app.db"));
    for id in 2..=41 {
        insert(&c, id);
    }
    wait_shipped(&storage, "services/auth", &setup.dir.join("app.db"));
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    let port: u16 = log
        .split("metrics at http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in the log: {log}"));
    let fetch = |path: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    // The page follows each finished sync; wait for the one that shipped
    // the 40 rows to be published.
    let start = Instant::now();
    let resp = loop {
        let resp = fetch("/metrics");
        let shipped = resp
            .lines()
            .find(|l| l.starts_with("walsync_database_last_txid{prefix=\"services/auth\""))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if shipped >= 41.0 || start.elapsed() > Duration::from_secs(10) {
            break resp;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(fetch("/nope").starts_with("HTTP/1.1 404"));
    assert!(sigterm(&mut child).success());
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(
        resp.contains("Content-Type: text/plain; version=0.0.4"),
        "{resp}"
    );
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    let mut samples = 0;
    for line in body.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        samples += 1;
    }
    assert!(samples > 10, "{body}");
    let commits: f64 = body
        .lines()
        .find(|l| l.starts_with("walsync_database_commits_total{prefix=\"services/auth\""))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(commits >= 40.0, "{body}");
    assert!(
        body.contains("walsync_database_up{prefix=\"services/auth\""),
        "{body}"
    );
}

/// Runs python3's sqlite3 module (the distribution's SQLite, older than the
/// bundled one, whose close checkpoints and deletes the WAL whenever it can
/// take the EXCLUSIVE lock) as the application, in its own process.
fn python_app(db: &Path, script: &str) {
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3\nc = sqlite3.connect({db:?}, timeout=5, isolation_level=None)\n{script}\nc.close()\n"
        ))
        .output()
        .expect("python3 runs");
    assert!(
        o.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_second_path_to_a_live_database_never_drops_its_locks() {
    let setup = Setup::new(&[("app.db", "apps/main"), ("alias.db", "apps/alias")]);
    let db = setup.dir.join("app.db");
    python_app(&db, "c.execute('PRAGMA journal_mode=WAL')\nc.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)')");
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    wait_shipped(&storage, "apps/main", &db);
    // The same file under a second name in the config, appearing once the
    // first is live. (Linked before the start, either name could win the
    // race to open it first, and the test waited for apps/main in vain.)
    std::fs::hard_link(&db, setup.dir.join("alias.db")).unwrap();
    // The alias has been tried and refused.
    wait_log(
        &setup,
        "watch.log",
        "already replicated by this walsync under another path",
        1,
    );
    // The application writes and closes: with walsync's locks intact its
    // close can neither checkpoint past walsync nor delete the WAL.
    python_app(
        &db,
        "c.execute(\"INSERT INTO t(v) VALUES ('a')\")\nc.execute(\"UPDATE t SET v = 'a2'\")",
    );
    wait_shipped(&storage, "apps/main", &db);
    python_app(&db, "c.execute(\"INSERT INTO t(v) VALUES ('b')\")");
    wait_restorable(&storage, "apps/main", &db);
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert!(
        log.contains("already replicated by this walsync under another path"),
        "{log}"
    );
    assert!(!log.contains("the WAL file was deleted"), "{log}");
    let out = setup.dir.join("r.db");
    let o = setup.restore("apps/main", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        rows(&out),
        vec![(1, "a2".to_string()), (2, "b".to_string())]
    );
}

#[test]
fn idle_databases_are_released_and_woken_without_losing_a_commit() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    setup.edit_config(|t| format!("idle_release_after = \"1s\"\n{t}"));
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&db);
    let mut child = Running(
        setup
            .command()
            .env("RUST_LOG", "walsync=debug")
            .args(["watch", "--config"])
            .arg(&setup.config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(setup.dir.join("watch.log")).unwrap())
            .stderr(std::fs::File::create(setup.dir.join("watch.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(setup.dir.join("watch.err")).unwrap();
    let wait_log = |needle: &str, times: usize| {
        let start = Instant::now();
        while log().matches(needle).count() < times {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "waiting for {times}× {needle:?}: {}",
                log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    for id in 1..=20 {
        insert(&c, id);
    }
    wait_shipped(&storage, "tenants/acme", &db);
    wait_log("idle, connections released", 1);
    // Written while released, without a checkpoint: woken, same generation.
    for id in 21..=40 {
        insert(&c, id);
    }
    wait_shipped(&storage, "tenants/acme", &db);
    wait_log("woke up, continuing generation", 1);
    assert_eq!(generation_count(&storage, "tenants/acme"), 1);
    // Released again; then the application appends, checkpoints and
    // restarts the WAL while walsync wakes up: nothing lost.
    wait_log("idle, connections released", 2);
    for id in 41..=60 {
        insert(&c, id);
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    for id in 61..=70 {
        insert(&c, id);
    }
    wait_shipped(&storage, "tenants/acme", &db);
    assert!(sigterm(&mut child).success());
    // Whether walsync woke up before the application's TRUNCATE (which it
    // then kept from restarting the WAL: same generation) or after it (a new
    // generation) is a race; either way nothing may be lost. The library
    // tests take each branch deterministically.
    let generations = generation_count(&storage, "tenants/acme");
    assert!((1..=2).contains(&generations), "{}", log());
    let out = setup.dir.join("r.db");
    let o = setup.restore("tenants/acme", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out), rows(&db));
    assert_eq!(rows(&out).len(), 70);
}

#[test]
fn bad_configs_flags_and_databases_get_clear_errors_never_a_panic() {
    let setup = Setup::new(&[("app.db", "apps/a")]);
    let dir = &setup.dir;
    let c = open_app(&dir.join("app.db"));
    insert(&c, 1);
    let cfg = setup.config.to_str().unwrap().to_string();
    let o = setup.run(&["snapshot", "--config", &cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let storage_toml = format!(
        "[storage]\nbucket = \"{}\"\nendpoint = \"{}\"\n",
        setup.server.bucket, setup.server.endpoint
    );
    let db = "[[databases]]\npath = \"app.db\"\nprefix = \"apps/a\"\n";
    // (config text, what the error must mention)
    let configs: Vec<(String, &str)> = vec![
        ("this is not toml".into(), ".toml:1:"),
        (format!("{storage_toml}{db}bogus = 1\n"), "bogus"),
        (format!("workers = \"two\"\n{storage_toml}{db}"), "workers"),
        (format!("workers = 0\n{storage_toml}{db}"), "workers"),
        (format!("sync_interval = \"soon\"\n{storage_toml}{db}"), "sync_interval"),
        (format!("sync_interval = \"0s\"\n{storage_toml}{db}"), "sync_interval"),
        (format!("retention = \"-1h\"\n{storage_toml}{db}"), "retention"),
        (format!("checkpoint_threshold = \"lots\"\n{storage_toml}{db}"), "checkpoint_threshold"),
        (db.to_string(), "storage"),
        ("[storage]\nendpoint = \"http://x\"\n[[databases]]\npath = \"a.db\"\nprefix = \"a\"\n".into(), "bucket"),
        (storage_toml.clone(), "databases"),
        (format!("{storage_toml}[[databases]]\npath = \"a.db\"\n"), "prefix"),
        (format!("{storage_toml}[[databases]]\nprefix = \"a\"\n"), "path"),
        (format!("{storage_toml}[[databases]]\npath = \"a.db\"\nprefix = \"\"\n"), "prefix"),
        (format!("{storage_toml}[[databases]]\npath = \"a.db\"\nprefix = \"/abs\"\n"), "prefix"),
        (format!("{storage_toml}[[databases]]\npath = \"a.db\"\nprefix = \"a/../b\"\n"), "prefix"),
        (format!("{storage_toml}[[databases]]\npath = \"a.db\"\nprefix = \"a//b\"\n"), "prefix"),
        (format!("{storage_toml}[[databases]]\npath = \"a.db\"\nprefix = \"sp ace\"\n"), "prefix"),
        (format!("{storage_toml}{db}[[databases]]\npath = \"b.db\"\nprefix = \"apps/a\"\n"), "prefix"),
        (format!("{storage_toml}{db}[[databases]]\npath = \"app.db\"\nprefix = \"apps/b\"\n"), "path"),
        (format!("{storage_toml}{db}[[databases]]\npath = \"b.db\"\nprefix = \"apps\"\n"), "prefix"),
        ("[storage]\nbucket = \"b\"\ndir = \"x\"\n[[databases]]\npath = \"a.db\"\nprefix = \"a\"\n".into(), "dir"),
        ("[storage]\nbucket = \"b\"\nendpoint = \"ftp://x\"\n[[databases]]\npath = \"a.db\"\nprefix = \"a\"\n".into(), "endpoint"),
        (format!("{storage_toml}{db}[metrics]\nlisten = \"nowhere\"\n"), "listen"),
        (format!("{storage_toml}[[directories]]\ndir = \"d\"\nprefix = \"t/{{bogus}}\"\n"), "prefix"),
    ];
    let mut tried = 0;
    let mut failures = Vec::new();
    for (i, (text, needle)) in configs.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        for cmd in ["list", "watch"] {
            let o = setup.run(&[cmd, "--config", path.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.code() != Some(2) || !err.contains(needle) || err.contains("panicked") {
                failures.push(format!(
                    "config {i} ({cmd}, {:?}) should mention {needle:?}: {err}",
                    o.status.code()
                ));
            }
            tried += 1;
        }
    }

    // Databases that are not what walsync needs: clear errors from `snapshot`.
    std::fs::write(dir.join("notsqlite.db"), "hello, this is text").unwrap();
    let rb = Connection::open(dir.join("rollback.db")).unwrap();
    rb.execute_batch("CREATE TABLE t(x)").unwrap();
    std::fs::create_dir_all(dir.join("adir.db")).unwrap();
    for (file, needle) in [
        ("notsqlite.db", "not a SQLite database"),
        ("rollback.db", "walsync needs WAL"),
        ("adir.db", "not a SQLite database"),
    ] {
        let path = dir.join(format!("{file}.toml"));
        std::fs::write(
            &path,
            format!("{storage_toml}[[databases]]\npath = \"{file}\"\nprefix = \"x/y\"\n"),
        )
        .unwrap();
        let o = setup.run(&["snapshot", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.code() != Some(1) || !err.contains(needle) {
            failures.push(format!(
                "{file} ({:?}) should mention {needle:?}: {err}",
                o.status.code()
            ));
        }
        tried += 1;
    }

    // Flags.
    let out = dir.join("never.db");
    let out = out.to_str().unwrap();
    let flag_cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["frobnicate"], 2, "Unrecognized"),
        (vec!["restore"], 2, "prefix"),
        (vec!["restore", "--prefix", "apps/a"], 2, "output"),
        (
            vec!["restore", "--config", &cfg, "--prefix", "../x", "-o", out],
            2,
            "prefix",
        ),
        (
            vec![
                "restore", "--config", &cfg, "--prefix", "apps/a", "-o", out, "--txid", "abc",
            ],
            2,
            "txid",
        ),
        (
            vec![
                "restore", "--config", &cfg, "--prefix", "apps/a", "-o", out, "--txid", "0",
            ],
            2,
            "txid",
        ),
        (
            vec![
                "restore",
                "--config",
                &cfg,
                "--prefix",
                "apps/a",
                "-o",
                out,
                "--timestamp",
                "yesterday",
            ],
            2,
            "timestamp",
        ),
        (
            vec![
                "restore",
                "--config",
                &cfg,
                "--prefix",
                "apps/a",
                "-o",
                out,
                "--timestamp",
                "2001-01-01T00:00:00Z",
            ],
            1,
            "oldest restorable time",
        ),
        (
            vec![
                "restore", "--config", &cfg, "--prefix", "apps/a", "-o", out, "--txid", "99999",
            ],
            1,
            "not in the backup",
        ),
        (
            vec![
                "restore",
                "--config",
                &cfg,
                "--prefix",
                "apps/a",
                "-o",
                out,
                "--txid",
                "1",
                "--timestamp",
                "2026-01-01T00:00:00Z",
            ],
            2,
            "not both",
        ),
        (
            vec![
                "restore", "--config", &cfg, "--bucket", "b", "--prefix", "apps/a", "-o", out,
            ],
            2,
            "not both",
        ),
        (
            vec![
                "restore",
                "--endpoint",
                "http://x",
                "--prefix",
                "apps/a",
                "-o",
                out,
                "--dir",
                ".",
            ],
            2,
            "--dir",
        ),
        (
            vec![
                "restore",
                "--config",
                &cfg,
                "--prefix",
                "apps/a",
                "-o",
                dir.to_str().unwrap(),
            ],
            2,
            "directory",
        ),
        (
            vec![
                "restore",
                "--config",
                &cfg,
                "--prefix",
                "apps/a",
                "-o",
                "/nonexistent/dir/x.db",
            ],
            2,
            "directory",
        ),
        (vec!["restore-all", "--config", &cfg], 2, "output-dir"),
        (
            vec![
                "restore-all",
                "--config",
                &cfg,
                "--output-dir",
                out,
                "--jobs",
                "0",
            ],
            2,
            "jobs",
        ),
        (
            vec!["list", "--config", "/nonexistent/walsync.toml"],
            2,
            "walsync.toml",
        ),
        (
            vec!["prune", "--config", &cfg, "--retention", "forever"],
            2,
            "retention",
        ),
        (vec!["watch", "--config", &cfg, "extra"], 2, "Unrecognized"),
    ];
    for (args, code, needle) in &flag_cases {
        let o = setup.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.code() != Some(*code) || !err.contains(needle) || err.contains("panicked") {
            failures.push(format!(
                "{args:?} ({:?}) should mention {needle:?}: {err}",
                o.status.code()
            ));
        }
        tried += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(!Path::new(out).exists());
    eprintln!("{tried} bad inputs tried");
    assert!(tried >= 30);
}

#[test]
fn a_restore_that_runs_out_of_space_leaves_nothing_behind() {
    use std::os::unix::process::CommandExt;
    let setup = Setup::new(&[("app.db", "apps/a")]);
    let c = open_app(&setup.dir.join("app.db"));
    for id in 1..=400 {
        insert(&c, id);
    }
    let cfg = setup.config.to_str().unwrap();
    assert!(setup.run(&["snapshot", "--config", cfg]).status.success());
    let outdir = setup.scratch("full");
    let out = outdir.join("r.db");
    // A file size limit stands in for a full disk: writes past 64 KiB fail
    // (EFBIG) the way they would with ENOSPC.
    let mut cmd = setup.command();
    cmd.args([
        "restore",
        "--config",
        cfg,
        "--prefix",
        "apps/a",
        "-o",
        out.to_str().unwrap(),
    ]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("File too large") || err.contains("No space"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&outdir).unwrap().count(),
        0,
        "no partial or temp file is left"
    );
    // With room, the same restore works.
    let o = setup.restore("apps/a", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out).len(), 400);
}

/// Runs `f`; when it panics, prints walsync's log first (the test's
/// directory, and the log with it, is gone once the panic unwinds).
fn showing_log_on_failure<T>(setup: &Setup, log: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let text = std::fs::read_to_string(setup.dir.join(log)).unwrap_or_default();
            eprintln!("walsync's log {log}:\n{text}");
            std::panic::resume_unwind(e)
        }
    }
}

/// Waits until `log` (a file in the setup's directory) contains `needle`
/// `times` times; returns the log.
fn wait_log(setup: &Setup, log: &str, needle: &str, times: usize) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(setup.dir.join(log)).unwrap_or_default();
        if text.matches(needle).count() >= times {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "waiting for {times}x {needle:?} in {log}: {text}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_storage_outage_of_a_fleet_is_one_line_when_it_begins_and_one_when_it_ends() {
    let names: Vec<(String, String)> = (0..6)
        .map(|i| (format!("db{i}.db"), format!("fleet/db{i}")))
        .collect();
    let pairs: Vec<(&str, &str)> = names
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_str()))
        .collect();
    let mut setup = Setup::new(&pairs);
    let storage = setup.storage();
    let apps: Vec<Connection> = names
        .iter()
        .map(|(n, _)| {
            let c = open_app(&setup.dir.join(n));
            insert(&c, 1);
            c
        })
        .collect();
    let mut child = setup.watch("watch.log");
    for (n, p) in &names {
        wait_shipped(&storage, p, &setup.dir.join(n));
    }
    // Down for long enough that every database fails several syncs, each
    // after the storage layer's own retries; the applications go on.
    setup.server.stop();
    let mut id = 1;
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(8) {
        id += 1;
        for c in &apps {
            insert(c, id);
        }
        thread::sleep(Duration::from_millis(100));
    }
    setup.server.restart();
    let log = wait_log(&setup, "watch.log", "storage reachable again", 1);
    for (n, p) in &names {
        wait_shipped(&storage, p, &setup.dir.join(n));
    }
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap_or(log);
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("storage unreachable since"), 1, "{log}");
    assert_eq!(count("storage reachable again"), 1, "{log}");
    // Neither a line per database per failed sync nor one per retried
    // request: a database's own error only until a third one failing says
    // that it is the storage, and at most one retry warning in 8 s.
    let began = log
        .lines()
        .position(|l| l.contains("storage unreachable since"))
        .unwrap();
    let own = |l: &&str| l.contains(" ERROR ") && l.contains("): s3://");
    assert!(log.lines().take(began).filter(own).count() <= 2, "{log}");
    assert_eq!(log.lines().skip(began + 1).filter(own).count(), 0, "{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains(" WARN ") && l.contains("retrying in"))
            .count()
            <= 1,
        "{log}"
    );
    for (n, p) in &names {
        let got = setup.restore_verified(p, &setup.dir.join(format!("r-{n}")));
        assert_eq!(got, rows(&setup.dir.join(n)), "{n}");
        assert_eq!(got.len() as i64, id, "{n}");
    }
}

#[test]
fn the_s3_server_killed_and_started_again_loses_nothing() {
    let mut setup = Setup::new(&[("app.db", "tenants/acme")]);
    let path = setup.dir.join("app.db");
    let wal = setup.dir.join("app.db-wal");
    let storage = setup.storage();
    let c = open_app(&path);
    for id in 1..=50 {
        insert(&c, id);
    }
    // Each retried request at debug (only one a minute is a warning).
    let mut child = setup.watch_logging("watch.log", Some("info,walsync::storage=debug"));
    wait_shipped(&storage, "tenants/acme", &path);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicI64::new(50));
    let writer = {
        let (stop, written, path) = (Arc::clone(&stop), Arc::clone(&written), path.clone());
        thread::spawn(move || {
            let c = open_app(&path);
            let mut id = 50;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                insert(&c, id);
                written.store(id, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(3));
            }
            id
        })
    };
    thread::sleep(Duration::from_millis(500));

    // The server process dies (not a proxy: the port refuses connections).
    setup.server.stop();
    let before = written.load(Ordering::Relaxed);
    // Two failed syncs, each after the storage layer's own retries: walsync
    // keeps going, backing off between them.
    wait_log(
        &setup,
        "watch.log",
        "attempts); check the endpoint and the network; retrying in",
        2,
    );
    // walsync holds its read transaction, so the application cannot
    // checkpoint the unshipped frames away: its TRUNCATE stays busy and the
    // WAL keeps them. (Frames -1: busy before it could even start.)
    let (busy, log_frames): (i64, i64) = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    assert_eq!(
        busy, 1,
        "the application's TRUNCATE checkpoint is held back"
    );
    assert!(
        log_frames != 0 && wal_len > 0,
        "{log_frames} frames, {wal_len} bytes"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "walsync exited while the server was down"
    );
    let during = written.load(Ordering::Relaxed) - before;

    // Back on the same port with the same data directory.
    setup.server.restart();
    thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let n = writer.join().unwrap();
    let log = wait_log(&setup, "watch.log", "replicating again", 1);
    wait_shipped(&storage, "tenants/acme", &path);
    let status = sigterm(&mut child);
    let log = format!(
        "{log}{}",
        std::fs::read_to_string(setup.dir.join("watch.log"))
            .unwrap()
            .strip_prefix(log.as_str())
            .unwrap_or_default()
    );
    assert!(status.success(), "{status}: {log}");
    eprintln!(
        "{n} rows committed, {during} of them while the server was down ({wal_len} bytes of WAL held)"
    );
    for line in log.lines().filter(|l| {
        l.contains("cannot reach") || l.contains("replicating again") || l.contains("grows")
    }) {
        eprintln!("log: {line}");
    }
    assert!(during > 100, "the application kept writing: {during} rows");
    // The outage: which database, what failed, what to check, when the next try is.
    let outage = log
        .lines()
        .find(|l| l.contains("walsync::daemon") && l.contains("cannot reach"))
        .unwrap_or_else(|| panic!("no outage line for the database: {log}"));
    assert!(
        outage.contains("app.db (tenants/acme): ")
            && outage.contains(&setup.server.endpoint)
            && outage.contains("retrying in"),
        "{outage}"
    );
    // Each retry waits at least the backoff it announced, even though the
    // application's writes kept marking the database dirty: the first
    // attempt of the next sync (which fails at once, connection refused)
    // comes no earlier.
    let at = |l: &str| walsync::time::parse_rfc3339(&l[1..25]).unwrap() as f64;
    let mut backoff_from: Option<(f64, f64)> = None;
    let mut retries_checked = 0;
    for line in log.lines() {
        if line.contains("walsync::daemon") && line.contains("retrying in ") {
            let wait = line.rsplit("retrying in ").next().unwrap();
            let wait: f64 = wait.trim_end_matches('s').parse().unwrap();
            backoff_from = Some((at(line), wait * 1000.0));
        } else if line.contains("attempt 1/") {
            if let Some((failed, wait_ms)) = backoff_from.take() {
                // The announced wait is rounded to 0.1 s.
                assert!(
                    at(line) >= failed + wait_ms - 50.0,
                    "retried {} ms after a failure that announced {wait_ms} ms: {log}",
                    at(line) - failed
                );
                retries_checked += 1;
            }
        }
    }
    assert!(retries_checked >= 1, "{log}");
    // The recovery: how long it lasted.
    let recovery = log
        .lines()
        .find(|l| l.contains("replicating again"))
        .unwrap();
    assert!(
        recovery.contains("app.db (tenants/acme)") && recovery.contains("failed sync"),
        "{recovery}"
    );
    assert_eq!(generation_count(&storage, "tenants/acme"), 1, "no gap");

    let got = setup.restore_verified("tenants/acme", &setup.dir.join("r.db"));
    assert_eq!(got.len() as i64, n, "every committed row is restored");
    assert_eq!(got, rows(&path));
}

/// Runs walsync with `args` (and `env` on top of the setup's), waiting at
/// most a minute: a command that should fail at once must not hang the
/// suite if it starts running instead.
fn run_bounded(setup: &Setup, args: &[&str], env: &[(&str, &str)]) -> Output {
    let (out_path, err_path) = (
        setup.dir.join("bounded.stdout"),
        setup.dir.join("bounded.stderr"),
    );
    let mut cmd = setup.command();
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = Running(cmd.spawn().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{args:?} still running after 60 s: {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

#[test]
fn wrong_region_missing_bucket_and_a_web_server_are_one_line_errors() {
    use common::fakeserver::FakeServer;
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let c = open_app(&setup.dir.join("app.db"));
    insert(&c, 1);
    let secret = setup.server.secret_key.clone();

    // s3s-fs 0.14.1 does not check the region in a signature's scope: a
    // client signing for another region is served as usual. So the wrong
    // region is played by a fake server giving AWS's answers (below); this
    // shows the real server's behaviour, and fails if it ever changes.
    let o = run_bounded(
        &setup,
        &["list", "--config", setup.config.to_str().unwrap()],
        &[("AWS_REGION", "eu-west-3")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // What AWS answers to a presigned URL signed for the wrong region, and
    // to a path-style request sent to the wrong regional endpoint.
    let wrong_region = FakeServer::start(|_| {
        (
            "400 Bad Request",
            "content-type: application/xml\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AuthorizationQueryParametersError\
             </Code><Message>Error parsing the X-Amz-Credential parameter; the region 'us-east-1' \
             is wrong; expecting 'eu-west-3'</Message><Region>eu-west-3</Region>\
             <RequestId>R</RequestId></Error>"
                .to_owned(),
        )
    });
    let redirect = FakeServer::start(|_| {
        (
            "301 Moved Permanently",
            "content-type: application/xml\r\nx-amz-bucket-region: eu-west-3\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>PermanentRedirect</Code>\
             <Message>The bucket you are attempting to access must be addressed using the \
             specified endpoint. Please send all future requests to this endpoint.</Message>\
             <Endpoint>walsync-test.s3.eu-west-3.amazonaws.com</Endpoint></Error>"
                .to_owned(),
        )
    });
    // Not S3 at all: a web server (a console port, a reverse proxy's default
    // site) answering HTML, with 200 and with 404.
    let html_200 = FakeServer::start(|_| {
        (
            "200 OK",
            "content-type: text/html; charset=utf-8\r\n",
            "<!DOCTYPE html><html><head><title>MinIO Console</title></head><body></body></html>"
                .to_owned(),
        )
    });
    let html_404 = FakeServer::start(|_| {
        (
            "404 Not Found",
            "content-type: text/html\r\n",
            "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
                .to_owned(),
        )
    });

    let config = std::fs::read_to_string(&setup.config).unwrap();
    let endpoint_line = format!("endpoint = \"{}\"", setup.server.endpoint);
    // (case, bucket, endpoint, what the one line must say)
    let cases: Vec<(&str, &str, &str, Vec<&str>)> = vec![
        (
            "missing bucket",
            "no-such-bucket",
            &setup.server.endpoint,
            vec![
                "s3://no-such-bucket",
                "the bucket does not exist",
                "bucket name",
            ],
        ),
        (
            "wrong region",
            &setup.server.bucket,
            &wrong_region.endpoint,
            vec!["in region \"eu-west-3\"", "AWS_REGION"],
        ),
        (
            "redirect to another region",
            &setup.server.bucket,
            &redirect.endpoint,
            vec!["eu-west-3.amazonaws.com", "check the region"],
        ),
        (
            "HTML 200",
            &setup.server.bucket,
            &html_200.endpoint,
            vec!["an HTML page titled \"MinIO Console\"", "S3-compatible"],
        ),
        (
            "HTML 404",
            &setup.server.bucket,
            &html_404.endpoint,
            vec!["an HTML page titled \"404 Not Found\"", "S3-compatible"],
        ),
    ];
    let out = setup.dir.join("never.db");
    let out_dir = setup.dir.join("never");
    let mut tried = 0;
    let mut failures = Vec::new();
    for (i, (case, bucket, endpoint, needles)) in cases.iter().enumerate() {
        let cfg = setup.dir.join(format!("case{i}.toml"));
        let text = config
            .replace(&endpoint_line, &format!("endpoint = \"{endpoint}\""))
            .replace(
                &format!("bucket = \"{}\"", setup.server.bucket),
                &format!("bucket = \"{bucket}\""),
            );
        std::fs::write(&cfg, text).unwrap();
        let cfg = cfg.to_str().unwrap();
        let out = out.to_str().unwrap();
        let out_dir = out_dir.to_str().unwrap();
        let commands: Vec<Vec<&str>> = vec![
            vec!["list", "--config", cfg],
            vec![
                "restore",
                "--config",
                cfg,
                "--prefix",
                "tenants/acme",
                "-o",
                out,
            ],
            vec![
                "restore",
                "--bucket",
                bucket,
                "--endpoint",
                endpoint,
                "--prefix",
                "tenants/acme",
                "-o",
                out,
            ],
            vec!["snapshot", "--config", cfg],
            vec!["watch", "--config", cfg],
            vec!["restore-all", "--config", cfg, "--output-dir", out_dir],
            vec!["verify", "--config", cfg],
        ];
        for args in commands {
            let o = run_bounded(&setup, &args, &[]);
            let err = String::from_utf8_lossy(&o.stderr);
            let all = format!("{}{err}", String::from_utf8_lossy(&o.stdout));
            let lines: Vec<&str> = err.lines().collect();
            let ok = o.status.code() == Some(1)
                && lines.len() == 1
                && lines[0].starts_with("walsync: ")
                && needles.iter().all(|n| lines[0].contains(n))
                && !all.contains(&secret)
                && !all.contains("X-Amz-Signature")
                && !all.contains("panicked");
            if !ok {
                failures.push(format!("{case}: {args:?} ({:?}): {all}", o.status.code()));
            } else if args[0] == "list" {
                eprintln!("{case}: {}", lines[0]);
            }
            tried += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(&out_dir).map_or(0, |d| d.count()), 0);
    assert_eq!(tried, 35);

    // A server that does not answer at all may be on its way (at boot, or
    // down for a while): watch starts anyway and retries, as in an outage.
    let closed = format!("http://127.0.0.1:{}", common::s3server::free_port());
    setup.edit_config(|t| t.replace(&endpoint_line, &format!("endpoint = \"{closed}\"")));
    let mut child = setup.watch("closed.log");
    wait_log(&setup, "closed.log", "starting anyway", 1);
    wait_log(&setup, "closed.log", "watching 1 databases", 1);
    assert!(child.try_wait().unwrap().is_none());
    assert!(sigterm(&mut child).success());
}

impl Setup {
    /// `walsync watch` with its open-file limit (soft and hard, so walsync
    /// cannot raise it) set to `limit`.
    fn watch_with_fd_limit(&self, log: &str, limit: u64) -> Running {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        let mut cmd = self.command();
        cmd.args(["watch", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Running(cmd.spawn().unwrap())
    }
}

#[test]
fn too_low_an_open_file_limit_is_refused_or_named() {
    let names: Vec<(String, String)> = (0..64)
        .map(|i| (format!("db{i}.db"), format!("tenants/t{i}")))
        .collect();
    let dbs: Vec<(&str, &str)> = names
        .iter()
        .map(|(f, p)| (f.as_str(), p.as_str()))
        .collect();
    let setup = Setup::new(&dbs);
    setup.edit_config(|t| format!("idle_release_after = \"1s\"\n{t}"));
    for (i, (file, _)) in names.iter().enumerate() {
        let c = open_app(&setup.dir.join(file));
        insert(&c, i as i64 + 1);
    }
    let storage = setup.storage();

    // 48 descriptors cannot even hold one per database: refused at start,
    // in one line that names the numbers and the fix.
    let mut child = setup.watch_with_fd_limit("refused.log", 48);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "walsync started with 48 descriptors for 64 databases"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(setup.dir.join("refused.log")).unwrap();
    eprintln!("limit 48: {log}");
    assert_eq!(status.code(), Some(1), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
    for needle in [
        "walsync: the open-file limit is 48",
        "64 databases",
        "LimitNOFILE=416",
        "ulimit -n 416",
    ] {
        assert!(log.contains(needle), "{needle:?}: {log}");
    }
    assert!(
        storage.list("tenants/").unwrap().is_empty(),
        "nothing uploaded"
    );

    // Enough for every database released, not for every one active: walsync
    // starts, warns, replicates what it can open, names the shortage and
    // retries the rest until each is replicated.
    let mut child = setup.watch_with_fd_limit("low.log", 100);
    // Each database is released once its first snapshot is up, keeping one
    // descriptor; then the applications all write at once, and walsync
    // cannot open all 64 again at the same time.
    wait_log(&setup, "low.log", "generation 0000000000000001 started", 64);
    for (i, (file, _)) in names.iter().enumerate() {
        insert(&open_app(&setup.dir.join(file)), 1000 + i as i64);
    }
    wait_log(&setup, "low.log", "out of file descriptors", 1);
    showing_log_on_failure(&setup, "low.log", || {
        for (file, prefix) in &names {
            wait_shipped(&storage, prefix, &setup.dir.join(file));
        }
    });
    // Those waiting for descriptors keep their place in line: each is
    // replicated again roughly in the order it was written, none overtaken
    // by many written after it (when a wait pushed them back, some lost the
    // race for freed descriptors again and again, for over 30 s).
    let log = std::fs::read_to_string(setup.dir.join("low.log")).unwrap();
    let order: Vec<usize> = log
        .lines()
        .filter(|l| l.contains("generation 0000000000000002 started"))
        .filter_map(|l| {
            l.split("(tenants/t")
                .nth(1)?
                .split(')')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    for (place, written) in order.iter().enumerate() {
        let own = format!("(tenants/t{written})");
        assert!(
            place.abs_diff(*written) <= 16,
            "t{written} was written {written}th, replicated {place}th: {order:?}\n{:#?}",
            log.lines()
                .filter(|l| l.contains(&own) || !l.contains("(tenants/"))
                .collect::<Vec<_>>()
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "walsync keeps running");
    let status = sigterm(&mut child);
    let log = std::fs::read_to_string(setup.dir.join("low.log")).unwrap();
    let tail: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("Terminate"))
        .filter(|l| !l.contains("replicating again"))
        .collect();
    assert!(status.success(), "{status}: {tail:#?}");
    let warned = log
        .lines()
        .find(|l| l.contains("the open-file limit is 100"))
        .unwrap_or_else(|| panic!("no warning at start: {log}"));
    assert!(warned.contains("64 databases") && warned.contains("LimitNOFILE=416"));
    let short = log
        .lines()
        .find(|l| l.contains("out of file descriptors"))
        .unwrap_or_else(|| panic!("the shortage is not named: {log}"));
    eprintln!("limit 100: {warned}\n{short}");
    assert!(
        short.contains("open-file limit 100") && short.contains("64 databases"),
        "{short}"
    );
    assert!(!log.contains("panicked"), "{log}");
    for (file, prefix) in names.iter().take(3) {
        let out = setup.dir.join(format!("{file}.restored"));
        assert_eq!(
            setup.restore_verified(prefix, &out),
            rows(&setup.dir.join(file))
        );
    }
}

/// The wal-index header of a database's `-shm` file, as SQLite reads it:
/// (frames in the WAL, frames backfilled into the database file).
/// https://www.sqlite.org/walformat.html#the_wal_index_file_format
/// SQLite ignores a WAL whose frames are all backfilled.
fn wal_index(db: &Path) -> (u32, u32) {
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let b = std::fs::read(PathBuf::from(shm)).unwrap();
    let word = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
    (word(16), word(96))
}

/// Waits until every frame of the WAL is in the database file.
fn wait_backfilled(db: &Path) {
    let start = Instant::now();
    loop {
        let (frames, backfilled) = wal_index(db);
        if frames == backfilled {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the WAL stays {backfilled} of {frames} frames backfilled"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// How many objects of `prefix` are of the kind `of` accepts.
fn object_count(storage: &S3Storage, prefix: &str, of: impl Fn(&ObjectKind) -> bool) -> usize {
    let listing = storage.list(&keys::database_root(prefix)).unwrap();
    keys::parse_listing(prefix, &listing)
        .unwrap()
        .iter()
        .filter(|o| of(&o.kind))
        .count()
}

fn snapshot_count(storage: &S3Storage, prefix: &str) -> usize {
    object_count(storage, prefix, |k| {
        matches!(k, ObjectKind::Snapshot { .. })
    })
}

/// Whether walsync holds an SQLite connection on `db`: a descriptor of its
/// `-wal` or `-shm` file is open in the process (a released database keeps
/// a descriptor of the database file only).
fn holds(child: &Running, db: &Path) -> bool {
    let side: Vec<PathBuf> = ["-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .collect();
    std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| side.contains(&target))
}

/// Waits (up to 30 s) until `done` says so.
fn wait_for(done: impl Fn() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "waited 30 s for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Makes sure walsync holds `db` (it may have let go of it while idle):
/// commits a change nobody reads (`user_version`), then waits until
/// walsync has shipped it as a segment and holds the database.
fn take_up(child: &Running, storage: &S3Storage, prefix: &str, db: &Path) {
    let segments = || object_count(storage, prefix, |k| matches!(k, ObjectKind::Segment { .. }));
    let before = segments();
    let c = open_app(db);
    let start = Instant::now();
    // Again until it is shipped as a segment: a commit made before walsync's
    // first snapshot is in that snapshot.
    'commit: loop {
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        c.execute_batch(&format!("PRAGMA user_version = {}", v + 1))
            .unwrap();
        let tried = Instant::now();
        while tried.elapsed() < Duration::from_secs(2) {
            if segments() > before {
                break 'commit;
            }
            thread::sleep(Duration::from_millis(20));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "walsync did not ship a commit in 30 s"
        );
    }
    wait_for(|| holds(child, db), "walsync to hold the database");
}

/// Waits until walsync holds no SQLite connection on `db`.
fn wait_let_go(child: &Running, db: &Path) {
    wait_for(|| !holds(child, db), "walsync to let go of the database");
}

#[test]
fn a_database_replaced_by_rename_is_never_corrupted_and_starts_a_new_generation() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    // Long enough that the application closes first in the even rounds.
    setup.edit_config(|t| format!("idle_release_after = \"5s\"\n{t}"));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let mut c = open_app(&db);
    for id in 1..=300 {
        insert(&c, id);
    }
    let mut child = setup.watch("watch.log");
    let mut next = 1_000;
    for round in 0..3 {
        // The issue's steps: commits and a delete, then VACUUM INTO, the
        // application's only connection closed, rename; the replacement a
        // different size each round (smaller, larger, larger).
        let n = [50, 2_000, 400][round];
        for _ in 0..n {
            insert(&c, next);
            next += 1;
        }
        c.execute("DELETE FROM t WHERE id % 3 = 0", []).unwrap();
        showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
        let expected = rows(&db);
        let new = setup.dir.join("x.db");
        c.execute("VACUUM INTO ?1", [new.to_str().unwrap()])
            .unwrap();
        // What makes the rename safe: walsync has let go of the quiet
        // database (README "Replacing a database"). Whoever closes last,
        // no stale frame or wal-index reaches the new file: the
        // application's last close deletes the WAL, and walsync's leaves
        // it empty.
        if round % 2 == 0 {
            // walsync holds the database, so it closes last.
            take_up(&child, &storage, prefix, &db);
            drop(c);
            showing_log_on_failure(&setup, "watch.log", || wait_let_go(&child, &db));
        } else {
            showing_log_on_failure(&setup, "watch.log", || wait_let_go(&child, &db));
            drop(c);
        }
        std::fs::rename(&new, &db).unwrap();
        c = open_app(&db);
        assert_eq!(integrity(&db), "ok", "round {round}");
        assert_eq!(rows(&db), expected, "round {round}");
        // walsync backs the new file up as a new generation.
        insert(&c, next);
        next += 1;
        showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
        assert_eq!(integrity(&db), "ok", "round {round}");
    }
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 4, "{log}");
    // walsync had let go of the old file: no stale WAL to warn of.
    assert!(!log.contains("while its WAL still held"), "{log}");
    assert_eq!(
        setup.restore_verified(prefix, &setup.dir.join("r.db")),
        rows(&db)
    );
}

#[test]
fn a_database_replaced_during_a_storage_outage_is_never_corrupted() {
    use common::faultproxy::{Fault, FaultProxy};
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let proxy = FaultProxy::start(setup.server.endpoint.trim_start_matches("http://"));
    setup.edit_config(|t| t.replace(&setup.server.endpoint, &proxy.endpoint));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&db);
    for id in 1..=100 {
        insert(&c, id);
    }
    let mut child = setup.watch("watch.log");
    wait_shipped(&storage, prefix, &db);
    proxy.set(Fault::Unavailable);
    // Commits walsync cannot ship: they stay in the WAL (walsync's read
    // mark keeps it from being restarted) but are backfilled all the same.
    for id in 101..=300 {
        insert(&c, id);
    }
    c.execute("DELETE FROM t WHERE id % 3 = 0", []).unwrap();
    wait_backfilled(&db);
    let expected = rows(&db);
    let new = setup.dir.join("x.db");
    c.execute("VACUUM INTO ?1", [new.to_str().unwrap()])
        .unwrap();
    drop(c);
    std::fs::rename(&new, &db).unwrap();
    let c = open_app(&db);
    assert_eq!(integrity(&db), "ok");
    assert_eq!(rows(&db), expected);
    insert(&c, 5_000);
    proxy.set(Fault::None);
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    assert!(sigterm(&mut child).success());
    assert_eq!(
        setup.restore_verified(prefix, &setup.dir.join("r.db")),
        rows(&db)
    );
}

#[test]
fn two_application_processes_writing_at_once_keep_one_generation() {
    let setup = burst_setup(None);
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    drop(open_default_app(&db));
    let mut child = watch_debug(&setup);
    // Right after walsync's first sync (which found nothing new), two
    // processes with the default autocheckpoint, 2 × 2,000 commits, one of
    // them also checkpointing in every mode as it goes.
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    let writer = |first: i64, checkpoints: bool| {
        let db = db.clone();
        thread::spawn(move || {
            let ck = if checkpoints {
                "    if i % 250 == 0:\n        try:\n            c.execute('PRAGMA wal_checkpoint(' + ['PASSIVE','FULL','RESTART','TRUNCATE'][i // 250 % 4] + ')')\n        except sqlite3.OperationalError:\n            pass\n"
            } else {
                ""
            };
            // Retried while the other writer (or a slow checkpoint) holds
            // the lock past the 5 s busy timeout on a loaded machine.
            python_app(
                &db,
                &format!(
                    "import time\nfor i in range(2000):\n    while True:\n        try:\n            c.execute('INSERT INTO t(id, v) VALUES (?, ?)', ({first} + i, 'v' * (i % 50)))\n            break\n        except sqlite3.OperationalError:\n            time.sleep(0.01)\n{ck}"
                ),
            );
        })
    };
    let a = writer(1, false);
    let b = writer(100_000, true);
    a.join().unwrap();
    b.join().unwrap();
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    assert!(sigterm(&mut child).success());
    assert_eq!(rows(&db).len(), 4_000);
    assert_one_exact_history(&setup, prefix, &db, &[1, 100_000], 10);
}

#[test]
fn a_restart_continues_a_large_database_without_a_snapshot() {
    let setup = Setup::new(&[("big.db", "edge/big")]);
    let prefix = "edge/big";
    let db = setup.dir.join("big.db");
    let storage = setup.storage();
    let c = open_app(&db);
    c.execute_batch("CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, b BLOB)")
        .unwrap();
    let mut child = setup.watch("watch.log");
    // About 105 MB in one transaction while walsync runs: past its
    // truncate threshold, so walsync truncates the WAL itself.
    c.execute_batch(
        "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
         INSERT INTO blobs(b) SELECT zeroblob(1048576) || randomblob(8) FROM n; COMMIT;",
    )
    .unwrap();
    insert(&c, 1);
    wait_shipped(&storage, prefix, &db);
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size >= 100 << 20, "{size}");
    let snapshots = snapshot_count(&storage, prefix);
    // 1. Stopped and started again with nothing changed.
    assert!(sigterm(&mut child).success());
    child = setup.watch("watch2.log");
    insert(&c, 2);
    wait_shipped(&storage, prefix, &db);
    // 2. Stopped; the application commits, kept in its WAL (which it
    //    restarts: walsync left it backfilled).
    assert!(sigterm(&mut child).success());
    insert(&c, 3);
    child = setup.watch("watch3.log");
    insert(&c, 4);
    wait_shipped(&storage, prefix, &db);
    // 3. Stopped; the application only runs a TRUNCATE checkpoint.
    assert!(sigterm(&mut child).success());
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    child = setup.watch("watch4.log");
    insert(&c, 5);
    wait_shipped(&storage, prefix, &db);
    assert!(sigterm(&mut child).success());
    let logs: String = ["watch2.log", "watch3.log", "watch4.log"]
        .iter()
        .map(|l| std::fs::read_to_string(setup.dir.join(l)).unwrap())
        .collect();
    assert_eq!(snapshot_count(&storage, prefix), snapshots, "{logs}");
    assert_eq!(generation_count(&storage, prefix), 1, "{logs}");
    assert_eq!(logs.matches("resuming generation").count(), 3, "{logs}");
    assert_eq!(
        setup.restore_verified(prefix, &setup.dir.join("r.db")),
        rows(&db)
    );
}

/// A test directory whose config backs up to a local directory (`dir`
/// storage): for what needs no S3 server. Removed on drop.
struct DirSetup {
    dir: PathBuf,
    config: PathBuf,
    backup: PathBuf,
}

impl DirSetup {
    /// One `[[databases]]` table per (file in the directory, prefix).
    fn new(name: &str, dbs: &[(&str, &str)]) -> DirSetup {
        let dir = common::unique_temp_dir(&format!("walsync-{name}"));
        let tables: String = dbs
            .iter()
            .map(|(file, prefix)| {
                format!(
                    "[[databases]]\npath = \"{}\"\nprefix = \"{prefix}\"\n",
                    dir.join(file).display()
                )
            })
            .collect();
        DirSetup::in_dir(dir, &tables)
    }

    /// The config's tables as given (paths relative to the directory).
    fn with_tables(name: &str, tables: &str) -> DirSetup {
        DirSetup::in_dir(common::unique_temp_dir(&format!("walsync-{name}")), tables)
    }

    fn in_dir(dir: PathBuf, tables: &str) -> DirSetup {
        let backup = dir.join("backup");
        let config = dir.join("walsync.toml");
        let text = format!("[storage]\ndir = \"{}\"\n{tables}", backup.display());
        std::fs::write(&config, text).unwrap();
        DirSetup {
            dir,
            config,
            backup,
        }
    }

    /// walsync with `args` (`{config}` stands for the config file's path),
    /// run in the directory.
    fn command(&self, args: &[&str]) -> Command {
        let config = self.config.to_str().unwrap();
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "{config}" { config } else { a })
            .collect();
        let mut c = Command::new(bin());
        c.current_dir(&self.dir).env("RUST_LOG", "info").args(&args);
        c
    }

    /// Runs walsync with `args` and the extra environment `env`.
    fn run(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

impl Drop for DirSetup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The pid the next child process will likely get (Linux hands them out in
/// order), to plant files under names a walsync child would predict.
fn next_pid_guess() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid + 1
}

#[test]
fn spool_files_are_private_gone_after_and_planted_symlinks_are_not_followed() {
    use std::os::unix::fs::symlink;
    let setup = DirSetup::new("spool", &[("big.db", "apps/big")]);
    let db = setup.dir.join("big.db");
    {
        // About 24 MiB that LZ4 cannot shrink: each snapshot sits in its
        // spool file long enough to be seen there.
        let c = open_app(&db);
        c.execute_batch(
            "CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB NOT NULL);
             WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 24)
             INSERT INTO blobs SELECT x, randomblob(1048576) FROM n;
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .unwrap();
        for id in 1..=20 {
            insert(&c, id);
        }
    }
    let tmp = setup.dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let private = tmp.join(format!("walsync-{}", uid()));

    // A file another user wants written: symlinks to it under every name
    // the old spool scheme (walsync-snapshot-<pid>-<n>.tmp in TMPDIR) would
    // use for the next few thousand pids.
    let precious = setup.dir.join("precious");
    std::fs::write(&precious, b"precious").unwrap();
    let first = next_pid_guess();
    for pid in first..first + 4000 {
        symlink(&precious, tmp.join(format!("walsync-snapshot-{pid}-0.tmp"))).unwrap();
    }
    // What a walsync killed while spooling left in its private directory.
    std::fs::DirBuilder::new().create(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let leftover = private.join("snapshot-00112233445566ff.spool");
    std::fs::write(&leftover, b"an old copy of the database").unwrap();

    // Watch the private directory while snapshots are spooled: every spool
    // file seen must be a regular file of ours with mode 0600.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        let (private, leftover) = (private.clone(), leftover.clone());
        thread::spawn(move || {
            use std::os::unix::fs::MetadataExt;
            while !stop.load(Ordering::Relaxed) {
                for e in std::fs::read_dir(&private).into_iter().flatten().flatten() {
                    let p = e.path();
                    if p == leftover {
                        continue;
                    }
                    if let Ok(m) = std::fs::symlink_metadata(&p) {
                        let entry = (p, m.is_file(), m.uid(), m.mode() & 0o7777);
                        seen.lock().unwrap().push(entry);
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // Up to five snapshots, until the watcher has caught one being spooled.
    let mut runs = 0;
    while runs < 5 && seen.lock().unwrap().is_empty() {
        let o = setup.run(&["snapshot", "-c", "{config}"], &[("TMPDIR", &tmp)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        runs += 1;
        if runs == 1 {
            assert!(
                !leftover.exists(),
                "the leftover is removed at start: {err}"
            );
            assert!(err.contains("removed 1 spool file"), "{err}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty(),
        "no spool file seen in {} after {runs} snapshots",
        private.display()
    );
    for (p, is_file, owner, mode) in &seen {
        assert!(*is_file, "{} is not a regular file", p.display());
        assert_eq!(*owner, uid(), "{}", p.display());
        assert_eq!(*mode, 0o600, "{} has mode {mode:o}", p.display());
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("snapshot-") && name.ends_with(".spool"),
            "{name}"
        );
    }
    assert_eq!(mode_of(&private), 0o700);
    let left: Vec<_> = std::fs::read_dir(&private).unwrap().flatten().collect();
    assert!(left.is_empty(), "spool files left behind: {left:?}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"precious");
    let mut others = 0;
    for e in std::fs::read_dir(&tmp).unwrap().flatten() {
        let p = e.path();
        if p == private {
            continue;
        }
        assert!(
            std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{}",
            p.display()
        );
        others += 1;
    }
    assert_eq!(others, 4000, "nothing else appeared in TMPDIR");
    // The backup's objects are as private as the spool files.
    let objects = walk_files(&setup.backup);
    assert!(!objects.is_empty());
    for p in &objects {
        assert_eq!(mode_of(p), 0o600, "{}", p.display());
    }

    // The private directory's predictable name, planted as a symlink to a
    // directory another user reads: refused, nothing written there.
    let attacker = setup.dir.join("attacker");
    std::fs::create_dir(&attacker).unwrap();
    std::fs::remove_dir(&private).unwrap();
    symlink(&attacker, &private).unwrap();
    let o = setup.run(&["snapshot", "-c", "{config}"], &[("TMPDIR", &tmp)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&private.display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&attacker).unwrap().count(), 0);
    // So is one with a mode others can use.
    std::fs::remove_file(&private).unwrap();
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let o = setup.run(&["snapshot", "-c", "{config}"], &[("TMPDIR", &tmp)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("mode 0777"), "{err}");
}

/// Every regular file under `dir`, recursively.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn restore_output_is_private_and_leftovers_of_a_killed_restore_go() {
    use std::os::unix::fs::symlink;
    let setup = DirSetup::new("restore-private", &[("app.db", "apps/app")]);
    let db = setup.dir.join("app.db");
    {
        let c = open_app(&db);
        for id in 1..=30 {
            insert(&c, id);
        }
    }
    let o = setup.run(&["snapshot", "-c", "{config}"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out_dir = setup.dir.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("r.db");
    // Leftovers of a restore to the same output that was killed: the temp
    // file and the WAL SQLite made beside it.
    let dead = out_dir.join(".r.db.walsync-restore-0123456789abcdef");
    std::fs::write(&dead, b"half a database").unwrap();
    std::fs::write(
        out_dir.join(".r.db.walsync-restore-0123456789abcdef-wal"),
        b"w",
    )
    .unwrap();
    // Symlinks under the names the old scheme (.<name>.walsync-restore-<pid>)
    // would use, to a file that must stay as it is.
    let precious = setup.dir.join("precious");
    std::fs::write(&precious, b"precious").unwrap();
    let first = next_pid_guess();
    for pid in first..first + 2000 {
        symlink(
            &precious,
            out_dir.join(format!(".r.db.walsync-restore-{pid}")),
        )
        .unwrap();
    }
    // Another output's file, and a file that only looks like a leftover.
    std::fs::write(
        out_dir.join(".other.db.walsync-restore-0123456789abcdef"),
        b"x",
    )
    .unwrap();

    let o = setup.run(
        &[
            "restore", "-c", "{config}", "--prefix", "apps/app", "-o", "out/r.db",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(rows(&out), rows(&db));
    // Not readable by others, whatever the umask.
    assert_eq!(mode_of(&out), 0o600);
    assert!(!dead.exists(), "{err}");
    assert!(!out_dir
        .join(".r.db.walsync-restore-0123456789abcdef-wal")
        .exists());
    assert!(err.contains("left by a restore that was killed"), "{err}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"precious");
    assert!(out_dir
        .join(".other.db.walsync-restore-0123456789abcdef")
        .exists());
    // Besides the planted symlinks: the output, and what is not ours.
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_type().unwrap().is_symlink())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".other.db.walsync-restore-0123456789abcdef", "r.db"]
    );

    // Replacing a file with --force keeps the mode its owner chose.
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let o = setup.run(
        &[
            "restore", "-c", "{config}", "--prefix", "apps/app", "-o", "out/r.db", "--force",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode_of(&out), 0o640);
    assert_eq!(rows(&out), rows(&db));
}

#[test]
fn stray_objects_are_named_by_list_and_verify_and_ignored_by_restore() {
    let setup = DirSetup::new("stray", &[("app.db", "apps/app")]);
    let db = setup.dir.join("app.db");
    {
        let c = open_app(&db);
        for id in 1..=40 {
            insert(&c, id);
        }
    }
    let o = setup.run(&["snapshot", "-c", "{config}"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let generations = setup.backup.join("apps/app/generations");
    let generation = std::fs::read_dir(&generations)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let junk_key = format!("apps/app/generations/{generation}/snapshots/x.snap");
    std::fs::write(setup.backup.join(&junk_key), b"junk").unwrap();
    std::fs::write(setup.backup.join("apps/app/notes.txt"), b"hello").unwrap();
    let strays = [junk_key.as_str(), "apps/app/notes.txt"];

    let backup = setup.backup.to_str().unwrap().to_string();
    for via in [
        vec!["-c", "{config}"],
        vec!["--dir", backup.as_str(), "--prefix", "apps/app"],
    ] {
        let list = |extra: &[&str]| {
            let mut args = vec!["list"];
            args.extend_from_slice(&via);
            args.extend_from_slice(extra);
            setup.run(&args, &[])
        };
        let o = list(&[]);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "{err}");
        // The snapshot and the mark `walsync snapshot` leaves at its end.
        assert!(out.contains("1 generations, 2 objects"), "{out}");
        for k in strays {
            assert!(
                err.contains(&format!("{k:?}")) && err.contains("not a walsync object"),
                "list names {k}: {err}"
            );
        }
        let o = list(&["--json"]);
        let json = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            json.contains(&format!(
                "\"stray\":[{{\"key\":\"{junk_key}\",\"bytes\":4}},{{\"key\":\"apps/app/notes.txt\",\"bytes\":5}}]"
            )),
            "{json}"
        );
        assert!(json.contains("\"objects\":2,"), "{json}");
    }

    // verify names them and succeeds (they are no part of any restore).
    let o = setup.run(&["verify", "-c", "{config}", "--json"], &[]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(out.contains("\"ok\":1,\"failed\":0"), "{out}");
    assert!(
        out.contains(&format!("{{\"key\":\"{junk_key}\",\"bytes\":4}}")),
        "{out}"
    );
    for k in strays {
        assert!(err.contains(&format!("{k:?}")), "verify names {k}: {err}");
    }

    // restore is whole and exact, and says what it left out.
    let out = setup.dir.join("r.db");
    let o = setup.run(
        &[
            "restore",
            "-c",
            "{config}",
            "--prefix",
            "apps/app",
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&junk_key), "{err}");
    assert_eq!(rows(&out), rows(&db));
    assert_eq!(integrity(&out), "ok");
    // The stray objects are still there: walsync names them, never deletes them.
    for k in strays {
        assert!(setup.backup.join(k).exists(), "{k}");
    }
}

/// The process ended by exiting, not by a signal (SIGABRT is what a panic
/// gives in the release build), and said nothing of a panic.
fn assert_no_abort(what: &str, o: &Output) {
    use std::os::unix::process::ExitStatusExt;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.signal(), None, "{what}: killed by a signal: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{what}: {err}"
    );
}

#[test]
fn bad_timestamps_are_usage_errors_never_an_abort() {
    let setup = DirSetup::with_tables(
        "timestamps",
        "[[databases]]\npath = \"app.db\"\nprefix = \"apps/a\"\n",
    );
    let cfg = setup.config.to_str().unwrap();
    for timestamp in [
        "2026-11-25T20:43:16+0é00",
        "2026-11-25T20:43:16+é:00",
        "2026-11-25T20:43:16+01é0",
        "2026-11-25T20:43:16😀",
        "2026-11-25T20:43:1€",
        "é",
    ] {
        for args in [
            vec!["restore", "--dir", "d", "--prefix", "a", "-o", "x.db"],
            vec!["restore-all", "--dir", "d", "--output-dir", "out"],
            vec!["restore-all", "--config", cfg, "--output-dir", "out"],
            vec!["verify", "--dir", "d"],
            vec!["verify", "--config", cfg],
        ] {
            let what = format!("{} --timestamp {timestamp:?}", args.join(" "));
            let mut args = args.clone();
            args.extend(["--timestamp", timestamp]);
            let o = setup.run(&args, &[]);
            assert_no_abort(&what, &o);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{what}: {err}");
            assert!(
                err.contains("--timestamp") && err.contains("RFC 3339"),
                "{what}: {err}"
            );
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_non_ascii_key_in_the_bucket_is_named_never_an_abort() {
    let setup = DirSetup::with_tables(
        "non-ascii-key",
        "[[directories]]\ndir = \"tenants\"\npattern = \"*.db\"\nprefix = \"tenants/{name}\"\n",
    );
    std::fs::create_dir_all(setup.dir.join("tenants")).unwrap();
    let c = open_app(&setup.dir.join("tenants/acme.db"));
    insert(&c, 1);
    let o = setup.run(&["snapshot", "--config", "{config}"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // What no walsync writes (prefixes are ASCII), but a bucket may hold:
    // tenants/é/generations/..., here a copy of a real backup.
    let backups = setup.backup.join("tenants");
    copy_tree(&backups.join("acme"), &backups.join("é"));

    let o = setup.run(
        &["restore-all", "--config", "{config}", "--output-dir", "out"],
        &[],
    );
    assert_no_abort("restore-all", &o);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    // The database of the config is restored; the stray prefix is named,
    // with why it cannot be written, and makes the run fail (exit 1).
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("ok      tenants/acme"), "{out}");
    let failed = out
        .lines()
        .find(|l| l.starts_with("FAILED  tenants/é"))
        .unwrap_or_else(|| panic!("tenants/é is not named: {out}"));
    assert!(failed.contains("cannot name a file"), "{failed}");
    assert_eq!(
        rows(&setup.dir.join("out/tenants/acme.db")),
        rows(&setup.dir.join("tenants/acme.db"))
    );

    let o = setup.run(&["verify", "--config", "{config}"], &[]);
    assert_no_abort("verify", &o);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    // Verify keeps no file, so the copy under tenants/é verifies like any.
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("ok      tenants/acme") && out.contains("ok      tenants/é"),
        "{out}"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    // Enough databases for `list --json` to write far more than a pipe holds.
    let long = "x".repeat(200);
    let tables: String = (0..400)
        .map(|i| format!("[[databases]]\npath = \"db{i}.db\"\nprefix = \"fleet/{long}/{i}\"\n"))
        .collect();
    let setup = DirSetup::with_tables("closed-pipe", &tables);
    let cfg = setup.config.to_str().unwrap();

    // A reader that takes 100 bytes and goes away (`| head -c 100`).
    for args in [
        vec!["list", "--json", "--config", cfg],
        vec!["list", "--config", cfg],
    ] {
        let mut child = setup
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut head = [0u8; 100];
        child.stdout.take().unwrap().read_exact(&mut head).unwrap();
        let o = child.wait_with_output().unwrap();
        assert_no_abort(&args.join(" "), &o);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // A pipe closed before anything is written (`--help` into a reader
    // that already exited).
    for args in [
        vec!["--help"],
        vec!["list", "--help"],
        vec!["list", "--json", "--config", cfg],
    ] {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two descriptors we then own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here once.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(read);
        let o = setup.command(&args).stdout(write).output().unwrap();
        assert_no_abort(&args.join(" "), &o);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Sleeps until `t` (at once if it is past).
fn sleep_until(t: Instant) {
    thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// The issue's steps with the rename one `sync_interval` after the
/// application's last commit (and close), not after `idle_release_after`:
/// walsync lets go at the application's last close, as SQLite's own last
/// close would have checkpointed and deleted the WAL.
#[test]
fn a_database_renamed_over_one_sync_interval_after_the_application_closed_it_is_not_corrupted() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let interval = Duration::from_secs(1);
    setup.edit_config(|t| {
        format!(
            "idle_release_after = \"1h\"\n{}",
            t.replace("sync_interval = \"100ms\"", "sync_interval = \"1s\"")
        )
    });
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let mut c = open_app(&db);
    for id in 1..=300 {
        insert(&c, id);
    }
    let mut child = setup.watch("watch.log");
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    let mut next = 1_000;
    for round in 0..3 {
        // walsync holds the database while the application has it open.
        showing_log_on_failure(&setup, "watch.log", || {
            wait_for(|| holds(&child, &db), "walsync to hold the database")
        });
        // Replacements of different sizes. (A sync in flight when the
        // application closes ends first; bursts of thousands of commits in a
        // debug build on a loaded machine made that longer than the interval:
        // README "Replacing a database".)
        let n = [50, 600, 300][round];
        for _ in 0..n {
            insert(&c, next);
            next += 1;
        }
        c.execute("DELETE FROM t WHERE id % 3 = 0", []).unwrap();
        let last_commit = Instant::now();
        let expected = rows(&db);
        let new = setup.dir.join("x.db");
        c.execute("VACUUM INTO ?1", [new.to_str().unwrap()])
            .unwrap();
        drop(c);
        sleep_until(last_commit + interval);
        std::fs::rename(&new, &db).unwrap();
        c = showing_log_on_failure(&setup, "watch.log", || {
            let c = open_app(&db);
            assert_eq!(integrity(&db), "ok", "round {round}");
            assert_eq!(rows(&db), expected, "round {round}");
            c
        });
        // walsync backs the new file up as a new generation.
        insert(&c, next);
        next += 1;
        showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
        assert_eq!(integrity(&db), "ok", "round {round}");
    }
    // The application's last close: walsync lets go too, so the file holds
    // every commit and its restore is the same bytes.
    drop(c);
    showing_log_on_failure(&setup, "watch.log", || wait_let_go(&child, &db));
    let restored = setup.dir.join("r.db");
    assert_eq!(setup.restore_verified(prefix, &restored), rows(&db));
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&db).unwrap());
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 4, "{log}");
    assert!(!log.contains("while its WAL still held"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

/// The same with a database larger than `idle_release_max_size`: walsync
/// lets go of it at the application's last close too, without reading the
/// whole file (the file's identity proves it as left), so that a larger or
/// a smaller file renamed over it one `sync_interval` after the last commit
/// is what the application reads; the new file is a new generation; and the
/// let-go's mark, which it does not leave, is left at stop, so that a
/// restart costs no snapshot.
#[test]
fn a_database_larger_than_idle_release_max_size_renamed_over_after_the_application_closed_it_is_not_corrupted(
) {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let interval = Duration::from_secs(1);
    setup.edit_config(|t| {
        format!(
            "idle_release_after = \"1h\"\nidle_release_max_size = \"1MiB\"\n{}",
            t.replace("sync_interval = \"100ms\"", "sync_interval = \"1s\"")
        )
    });
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let big = |id: i64| format!("row {id} {}", "y".repeat(3_000));
    let mut c = open_app(&db);
    for id in 1..=800 {
        insert_value(&c, id, &big(id));
    }
    assert!(std::fs::metadata(&db).unwrap().len() > 2 << 20);
    let mut child = setup.watch("watch.log");
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    let mut next = 10_000;
    for (round, larger) in [true, false].into_iter().enumerate() {
        showing_log_on_failure(&setup, "watch.log", || {
            wait_for(|| holds(&child, &db), "walsync to hold the database")
        });
        for _ in 0..30 {
            insert_value(&c, next, &big(next));
            next += 1;
        }
        c.execute("DELETE FROM t WHERE id % 3 = 0", []).unwrap();
        let last_commit = Instant::now();
        let new = setup.dir.join("x.db");
        c.execute("VACUUM INTO ?1", [new.to_str().unwrap()])
            .unwrap();
        let old_len = std::fs::metadata(&db).unwrap().len();
        drop(c);
        if larger {
            let x = Connection::open(&new).unwrap();
            for id in 100_000..100_600 {
                insert_value(&x, id, &big(id));
            }
        }
        let new_len = std::fs::metadata(&new).unwrap().len();
        assert_eq!(
            new_len > old_len,
            larger,
            "round {round}: {new_len} vs {old_len}"
        );
        assert!(new_len > 1 << 20, "round {round}: still over 1 MiB");
        let expected = rows(&new);
        sleep_until(last_commit + interval);
        std::fs::rename(&new, &db).unwrap();
        c = showing_log_on_failure(&setup, "watch.log", || {
            let c = open_app(&db);
            assert_eq!(integrity(&db), "ok", "round {round}");
            assert_eq!(rows(&db), expected, "round {round}");
            c
        });
        insert_value(&c, next, &big(next));
        next += 1;
        showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
        assert_eq!(integrity(&db), "ok", "round {round}");
    }
    drop(c);
    showing_log_on_failure(&setup, "watch.log", || wait_let_go(&child, &db));
    let restored = setup.dir.join("r.db");
    assert_eq!(setup.restore_verified(prefix, &restored), rows(&db));
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&db).unwrap());
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 3, "{log}");
    assert!(!log.contains("ERROR"), "{log}");

    // The stop took the released database up to leave its mark: the next
    // start continues the generation without a snapshot.
    let snapshots = snapshot_count(&storage, prefix);
    let mut child = setup.watch("watch2.log");
    let c = open_app(&db);
    insert_value(&c, next, &big(next));
    showing_log_on_failure(&setup, "watch2.log", || wait_shipped(&storage, prefix, &db));
    drop(c);
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch2.log")).unwrap();
    assert_eq!(snapshot_count(&storage, prefix), snapshots, "{log}");
    assert_eq!(generation_count(&storage, prefix), 3, "{log}");
    assert_eq!(
        setup.restore_verified(prefix, &setup.dir.join("r2.db")),
        rows(&db)
    );
}

/// A file renamed over a database walsync holds (the application kept a
/// connection to the old file), then opened and written by another process
/// of the application, which then shares the old file's wal-index: walsync
/// says so in one ERROR, closes its connections to the old file, ships and
/// checkpoints nothing through the old wal-index ("checkpoint: malformed"
/// retried forever, and snapshots that did not restore, before), and backs
/// the new file up as a new generation once the application has closed it.
#[test]
fn a_file_renamed_over_a_database_walsync_holds_is_named_once_and_backed_up_once_closed() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    setup.edit_config(|t| format!("idle_release_after = \"1h\"\n{t}"));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&db);
    for id in 1..=600 {
        insert(&c, id);
    }
    let mut child = setup.watch("watch.log");
    c.execute("DELETE FROM t WHERE id % 3 = 0", []).unwrap();
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    let new = setup.dir.join("x.db");
    c.execute("VACUUM INTO ?1", [new.to_str().unwrap()])
        .unwrap();
    // Renamed over the database while the application (and walsync) hold it.
    std::fs::rename(&new, &db).unwrap();
    let mut other = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, sys\nc = sqlite3.connect({db:?}, timeout=5, isolation_level=None)\n\
             c.execute(\"INSERT INTO t(id, v) VALUES (9999, 'after the rename')\")\n\
             print('committed', flush=True)\nsys.stdin.read()\nc.close()\n"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(other.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "committed");
    }
    let log = || std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    showing_log_on_failure(&setup, "watch.log", || {
        wait_for(
            || log().contains("while walsync held it open"),
            "walsync to notice the replacement",
        )
    });
    // Many sync intervals: nothing goes through the old wal-index.
    thread::sleep(Duration::from_secs(3));
    let seen = log();
    assert_eq!(seen.matches("ERROR").count(), 1, "{seen}");
    // SQLITE_CORRUPT ("database disk image is malformed") from walsync's
    // own checkpoints or reads.
    assert_eq!(seen.matches("malformed").count(), 1, "{seen}");
    assert_eq!(generation_count(&storage, prefix), 1, "{seen}");
    // The application closes everything, and opens the new file again.
    drop(other.stdin.take());
    assert!(other.wait().unwrap().success());
    drop(c);
    let c = open_app(&db);
    assert_eq!(integrity(&db), "ok");
    insert(&c, 10_000);
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    drop(c);
    assert!(sigterm(&mut child).success());
    let seen = log();
    assert_eq!(seen.matches("ERROR").count(), 1, "{seen}");
    assert_eq!(generation_count(&storage, prefix), 2, "{seen}");
    assert_eq!(
        setup.restore_verified(prefix, &setup.dir.join("r.db")),
        rows(&db)
    );
}

/// The same during a storage outage: walsync cannot ship the last commits,
/// lets go at the application's last close all the same (without trying to
/// ship once a sync has failed), says so, and starts a new generation of the
/// new file once the storage is back. An upload in flight when the
/// application closes (a sync's, or the release's own first try) ends
/// first: its retries take 3.1 s of back-off at most, plus the attempts,
/// seconds in a debug build on a loaded machine; so the sync interval here
/// is longer than that (README "Replacing a database").
#[test]
fn a_database_renamed_over_during_a_storage_outage_after_the_application_closed_it_is_not_corrupted(
) {
    use common::faultproxy::{Fault, FaultProxy};
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let interval = Duration::from_secs(8);
    let proxy = FaultProxy::start(setup.server.endpoint.trim_start_matches("http://"));
    setup.edit_config(|t| {
        format!(
            "idle_release_after = \"1h\"\n{}",
            t.replace(&setup.server.endpoint, &proxy.endpoint)
                .replace("sync_interval = \"100ms\"", "sync_interval = \"8s\"")
        )
    });
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&db);
    for id in 1..=100 {
        insert(&c, id);
    }
    let mut child = setup.watch("watch.log");
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    proxy.set(Fault::Unavailable);
    for id in 101..=1_300 {
        insert(&c, id);
    }
    c.execute("DELETE FROM t WHERE id % 3 = 0", []).unwrap();
    let last_commit = Instant::now();
    let new = setup.dir.join("x.db");
    c.execute("VACUUM INTO ?1", [new.to_str().unwrap()])
        .unwrap();
    drop(c);
    // A replacement larger than the file it replaces (a stale wal-index
    // makes SQLite read it as "malformed").
    {
        let x = open_app(&new);
        for id in 10_001..=13_000 {
            insert(&x, id);
        }
    }
    let expected = rows(&new);
    sleep_until(last_commit + interval);
    std::fs::rename(&new, &db).unwrap();
    let c = showing_log_on_failure(&setup, "watch.log", || {
        let c = open_app(&db);
        assert_eq!(integrity(&db), "ok");
        assert_eq!(rows(&db), expected);
        c
    });
    insert(&c, 5_000);
    proxy.set(Fault::None);
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert!(
        log.contains("closed the database while the storage is unreachable"),
        "{log}"
    );
    assert_eq!(generation_count(&storage, prefix), 2, "{log}");
    assert_eq!(
        setup.restore_verified(prefix, &setup.dir.join("r.db")),
        rows(&db)
    );
}

/// The first steps of the store-and-forward tests: 100 rows shipped (the
/// bucket's newest txid is returned), then the storage goes down, the
/// application commits rows 101 to 400, one per transaction, and closes;
/// walsync lets go all the same, the WAL emptied, so the file alone holds
/// every commit and may be renamed or copied away.
fn commit_and_close_during_an_outage(
    setup: &mut Setup,
    prefix: &str,
    db: &Path,
    child: &Running,
) -> u64 {
    let storage = setup.storage();
    let c = open_app(db);
    for id in 1..=100 {
        insert(&c, id);
    }
    showing_log_on_failure(setup, "watch.log", || wait_shipped(&storage, prefix, db));
    let base = newest_txid(&storage, prefix);
    setup.server.stop();
    for id in 101..=400 {
        insert(&c, id);
    }
    drop(c);
    showing_log_on_failure(setup, "watch.log", || wait_let_go(child, db));
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert_eq!(
        std::fs::metadata(&wal).map_or(0, |m| m.len()),
        0,
        "WAL emptied"
    );
    // What a rename would put elsewhere: the file alone, without its WAL.
    let copy = setup.scratch("copied").join("copy.db");
    std::fs::copy(db, &copy).unwrap();
    assert_eq!(integrity(&copy), "ok");
    assert_eq!(rows(&copy).len(), 400);
    base
}

/// Store and forward: the application commits, the storage goes down, the
/// application commits more and closes its last connection. walsync lets
/// go so that the database can be replaced safely, and keeps the commits it
/// could not upload in its spool; once the storage is back they go up
/// first, with the keys a ship would have given them, and the generation
/// goes on: one generation, every commit restorable by its txid, the
/// newest restore the same bytes as the file. (Before, the let-go cost a
/// new generation with a full snapshot, and the commits made during the
/// outage were restorable only as that snapshot.)
#[test]
fn a_let_go_during_a_storage_outage_keeps_one_generation_and_every_commit() {
    let mut setup = Setup::new(&[("app.db", "tenants/acme")]);
    setup.edit_config(|t| format!("idle_release_after = \"1h\"\n{t}"));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    let base = commit_and_close_during_an_outage(&mut setup, prefix, &db, &child);
    setup.server.restart();
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 1, "{log}");
    assert_eq!(newest_txid(&storage, prefix), base + 300, "{log}");
    assert!(log.contains("keeps the commits not yet uploaded"), "{log}");
    assert!(log.contains("uploaded the 300 commits"), "{log}");
    // Every commit by its txid, sampled across the outage.
    let out = setup.scratch("by-txid").join("r.db");
    for k in [0u64, 1, 2, 150, 299, 300] {
        let _ = std::fs::remove_file(&out);
        let txid = (base + k).to_string();
        let o = setup.restore(prefix, &out, &["--txid", &txid]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = rows(&out);
        assert_eq!(got.len() as u64, 100 + k, "txid {txid}");
        assert_eq!(got.last().unwrap().0 as u64, 100 + k, "txid {txid}");
    }
    let newest = setup.dir.join("newest.db");
    assert_eq!(setup.restore_verified(prefix, &newest), rows(&db));
    assert!(std::fs::read(&newest).unwrap() == std::fs::read(&db).unwrap());
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 1, "{log}");
}

/// Two sessions in one outage: the application opens the database again
/// after walsync let go of it (keeping the first session's commits), commits
/// and closes; walsync takes it up (proving the WAL is new), holds the new
/// commits while the first ones still wait, and keeps those too at the
/// second close. Once the storage is back: one generation, every commit.
#[test]
fn two_sessions_in_one_outage_keep_one_generation_and_every_commit() {
    let mut setup = Setup::new(&[("app.db", "tenants/acme")]);
    setup.edit_config(|t| format!("idle_release_after = \"1h\"\n{t}"));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    let base = commit_and_close_during_an_outage(&mut setup, prefix, &db, &child);
    let c = open_app(&db);
    for id in 401..=500 {
        insert(&c, id);
    }
    showing_log_on_failure(&setup, "watch.log", || {
        wait_for(
            || holds(&child, &db),
            "walsync to take the database up again",
        )
    });
    drop(c);
    showing_log_on_failure(&setup, "watch.log", || wait_let_go(&child, &db));
    setup.server.restart();
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 1, "{log}");
    assert_eq!(newest_txid(&storage, prefix), base + 400, "{log}");
    let out = setup.scratch("by-txid").join("r.db");
    for k in [300u64, 301, 350, 400] {
        let _ = std::fs::remove_file(&out);
        let txid = (base + k).to_string();
        let o = setup.restore(prefix, &out, &["--txid", &txid]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(rows(&out).len() as u64, 100 + k, "txid {txid}");
    }
    let newest = setup.dir.join("newest.db");
    assert_eq!(setup.restore_verified(prefix, &newest), rows(&db));
    assert!(std::fs::read(&newest).unwrap() == std::fs::read(&db).unwrap());
}

/// Past its bound (`idle_release_max_size` per database) the backlog is not
/// kept: walsync lets go as before, says so, and starts a new generation
/// once the storage answers; nothing is lost from the newest state.
#[test]
fn a_backlog_over_its_bound_is_let_go_of_unkept_and_starts_a_new_generation() {
    let mut setup = Setup::new(&[("app.db", "tenants/acme")]);
    // The database (about 0.5 MiB) may be let go of; the outage's 300
    // commits (a 4 KiB page or more each in the WAL) are more than that.
    setup.edit_config(|t| {
        format!("idle_release_after = \"1h\"\nidle_release_max_size = \"1MiB\"\n{t}")
    });
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    commit_and_close_during_an_outage(&mut setup, prefix, &db, &child);
    setup.server.restart();
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert!(log.contains("cannot be kept for upload"), "{log}");
    assert!(
        log.contains("closed the database while the storage is unreachable"),
        "{log}"
    );
    assert_eq!(generation_count(&storage, prefix), 2, "{log}");
    assert_eq!(
        setup.restore_verified(prefix, &setup.dir.join("r.db")),
        rows(&db)
    );
}

/// Commits kept for upload live only in the process: walsync stopped
/// while the storage is still down says which txids the bucket lacks, and
/// the next start sees that the bucket does not continue (its newest
/// objects end before them) and begins a new generation with a snapshot;
/// no restore ever joins the old generation to the file's later state.
#[test]
fn commits_kept_for_upload_that_a_stop_loses_start_a_new_generation_never_a_hole() {
    commits_kept_for_upload_lost(false);
}

/// The same after a SIGKILL: the spool files go with the process (the
/// next start removes them), and the next start begins a new generation.
#[test]
fn commits_kept_for_upload_that_a_kill_loses_start_a_new_generation_never_a_hole() {
    commits_kept_for_upload_lost(true);
}

fn commits_kept_for_upload_lost(kill: bool) {
    let mut setup = Setup::new(&[("app.db", "tenants/acme")]);
    setup.edit_config(|t| format!("idle_release_after = \"1h\"\n{t}"));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    let base = commit_and_close_during_an_outage(&mut setup, prefix, &db, &child);
    if kill {
        child.kill().unwrap();
        child.wait().unwrap();
    } else {
        let stopped = sigterm(&mut child);
        let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
        assert!(!stopped.success(), "{log}");
        assert!(
            log.contains(&format!(
                "the commits with txids {} to {}, kept while the storage was unreachable, were never uploaded",
                base + 1,
                base + 300
            )),
            "{log}"
        );
    }
    setup.server.restart();
    let mut child = setup.watch("watch-2.log");
    showing_log_on_failure(&setup, "watch-2.log", || {
        wait_shipped(&storage, prefix, &db)
    });
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch-2.log")).unwrap();
    assert!(log.contains("does not continue the backup"), "{log}");
    assert_eq!(generation_count(&storage, prefix), 2, "{log}");
    // The old generation ends where its history does, at 100 rows; the new
    // one begins with a snapshot of all 400.
    let out = setup.scratch("by-txid").join("r.db");
    let o = setup.restore(prefix, &out, &["--txid", &base.to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out).len(), 100);
    assert_eq!(
        setup.restore_verified(prefix, &setup.dir.join("newest.db")),
        rows(&db)
    );
    let objs = objects(&storage, prefix);
    let newest_generation = objs.iter().map(|o| o.generation).max().unwrap();
    assert!(
        objs.iter()
            .any(|o| o.generation == newest_generation
                && matches!(o.kind, ObjectKind::Snapshot { .. })),
        "the new generation begins with a snapshot"
    );
}

/// The neighbouring cases of a rename: right after the application's last
/// close, it deletes the database with its `-wal` and `-shm` and creates a
/// new one, or `walsync restore --force` puts an older state in its place.
#[test]
fn a_database_deleted_and_created_again_or_restored_over_after_the_application_closed_it() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let interval = Duration::from_secs(1);
    setup.edit_config(|t| {
        format!(
            "idle_release_after = \"1h\"\n{}",
            t.replace("sync_interval = \"100ms\"", "sync_interval = \"1s\"")
        )
    });
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&db);
    for id in 1..=500 {
        insert(&c, id);
    }
    let mut child = setup.watch("watch.log");
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    let first = rows(&db);
    let txid = {
        let listing = storage.list(&keys::database_root(prefix)).unwrap();
        let objs = keys::parse_listing(prefix, &listing).unwrap();
        objs.iter().map(|o| o.kind.txid()).max().unwrap()
    };
    // Deleted with its -wal and -shm, and created again, smaller.
    for id in 501..=800 {
        insert(&c, id);
    }
    let last_commit = Instant::now();
    drop(c);
    sleep_until(last_commit + interval);
    for side in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", db.display()));
    }
    let c = open_app(&db);
    for id in 1..=20 {
        insert(&c, id);
    }
    assert_eq!(integrity(&db), "ok");
    assert_eq!(rows(&db).len(), 20);
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    // An older state restored over it right after the application's close.
    for id in 21..=40 {
        insert(&c, id);
    }
    let last_commit = Instant::now();
    drop(c);
    sleep_until(last_commit + interval);
    let o = setup.restore(prefix, &db, &["--force", "--txid", &txid.to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = open_app(&db);
    assert_eq!(integrity(&db), "ok");
    assert_eq!(rows(&db), first);
    insert(&c, 10_000);
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    drop(c);
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 3, "{log}");
    assert_eq!(
        setup.restore_verified(prefix, &setup.dir.join("r.db")),
        rows(&db)
    );
}

/// An application that opens, writes and closes per transaction (PHP, a
/// CLI, a cron job): walsync lets go at each close, and its lock on
/// SQLite's SHARED range keeps that close from deleting the WAL, so the
/// next session's WAL continues the backup: one generation, every commit.
#[test]
fn an_application_that_opens_writes_and_closes_per_transaction_keeps_one_generation() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    setup.edit_config(|t| t.replace("sync_interval = \"100ms\"", "sync_interval = \"1s\""));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    drop(open_app(&db));
    let mut child = setup.watch("watch.log");
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    // 120 sessions, 20 to 100 ms apart, each in a process of its own.
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, time\nfor i in range(120):\n    c = sqlite3.connect({db:?}, timeout=5)\n    c.execute('INSERT INTO t(id, v) VALUES (?, ?)', (i + 1, 'v' * (i % 50)))\n    c.commit()\n    c.close()\n    time.sleep(0.02 * (1 + i % 5))\n"
        ))
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    showing_log_on_failure(&setup, "watch.log", || {
        wait_shipped(&storage, prefix, &db);
        wait_let_go(&child, &db);
    });
    let restored = setup.dir.join("r.db");
    let got = setup.restore_verified(prefix, &restored);
    assert_eq!(got.len(), 120);
    assert_eq!(got, rows(&db));
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&db).unwrap());
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 1, "{log}");
    assert!(!log.contains("cannot follow"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

/// The per-transaction application with a database larger than
/// `idle_release_max_size`: walsync lets go of it at each close too (so that
/// it can be replaced, README "Replacing a database"), without reading the
/// whole file or leaving a mark (its identity proves the file as left at
/// the next wake), and keeps one generation with every commit; the stop
/// leaves the mark.
#[test]
fn an_application_that_opens_writes_and_closes_a_large_database_per_transaction_keeps_one_generation(
) {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    setup.edit_config(|t| {
        format!(
            "idle_release_max_size = \"16KiB\"\n{}",
            t.replace("sync_interval = \"100ms\"", "sync_interval = \"1s\"")
        )
    });
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&db);
    for id in 1..=200 {
        insert(&c, id);
    }
    drop(c);
    assert!(std::fs::metadata(&db).unwrap().len() > 16 * 1024);
    let mut child = setup.watch_logging("watch.log", Some("walsync=debug"));
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    // 60 sessions, 20 to 100 ms apart, each in a process of its own.
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3, time\nfor i in range(60):\n    c = sqlite3.connect({db:?}, timeout=5)\n    c.execute('INSERT INTO t(id, v) VALUES (?, ?)', (1000 + i, 'v' * (i % 50)))\n    c.commit()\n    c.close()\n    time.sleep(0.02 * (1 + i % 5))\n"
        ))
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    showing_log_on_failure(&setup, "watch.log", || {
        wait_shipped(&storage, prefix, &db);
        wait_let_go(&child, &db);
    });
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert!(
        log.matches("closed by the application, connections released")
            .count()
            > 1,
        "{log}"
    );
    let marks = || object_count(&storage, prefix, |k| matches!(k, ObjectKind::Mark { .. }));
    assert_eq!(marks(), 0, "a let-go over the limit reads no fingerprint");
    let restored = setup.dir.join("r.db");
    assert_eq!(setup.restore_verified(prefix, &restored), rows(&db));
    assert_eq!(rows(&db).len(), 260);
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&db).unwrap());
    assert!(sigterm(&mut child).success());
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 1, "{log}");
    assert_eq!(marks(), 1, "the stop leaves the mark: {log}");
    assert!(!log.contains("cannot follow"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

/// A setup for the write patterns of issue 10 item 2: `sync_interval` 1 s,
/// `idle_release_after` as given (`None`: the default), debug log (it says
/// when walsync lets go and wakes).
fn burst_setup(idle: Option<&str>) -> Setup {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    setup.edit_config(|t| {
        let t = t.replace("sync_interval = \"100ms\"", "sync_interval = \"1s\"");
        match idle {
            Some(idle) => format!("idle_release_after = \"{idle}\"\n{t}"),
            None => t,
        }
    });
    setup
}

/// `setup` with checkpoint thresholds (64 MiB, truncate 128 MiB) no test
/// burst reaches: walsync runs no sync point of its own.
fn without_sync_points(setup: Setup) -> Setup {
    setup.edit_config(|t| {
        t.replace("\"256KiB\"", "\"64MiB\"")
            .replace("\"1MiB\"", "\"128MiB\"")
    });
    setup
}

fn watch_debug(setup: &Setup) -> Running {
    setup.watch_logging("watch.log", Some("walsync=debug"))
}

/// The application's connection as most applications have it: WAL mode
/// with `synchronous=NORMAL` (a few thousand commits a second), SQLite's
/// default `wal_autocheckpoint` (1,000 pages).
fn open_default_app(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )
    .unwrap();
    c
}

/// Commits rows `ids`, one per transaction; returns how long it took.
fn burst(c: &Connection, ids: std::ops::Range<i64>) -> Duration {
    let start = Instant::now();
    for id in ids {
        insert(c, id);
    }
    start.elapsed()
}

/// The objects of `prefix`.
fn objects(storage: &S3Storage, prefix: &str) -> Vec<keys::BackupObject> {
    let listing = storage.list(&keys::database_root(prefix)).unwrap();
    keys::parse_listing(prefix, &listing).unwrap()
}

/// The newest txid in the bucket for `prefix`.
fn newest_txid(storage: &S3Storage, prefix: &str) -> u64 {
    objects(storage, prefix)
        .iter()
        .filter(|o| !matches!(o.kind, ObjectKind::Mark { .. }))
        .map(|o| o.kind.txid())
        .max()
        .unwrap_or(0)
}

/// Segments of `prefix` holding txids after `txid`.
fn segments_after(storage: &S3Storage, prefix: &str, txid: u64) -> usize {
    object_count(
        storage,
        prefix,
        |k| matches!(k, ObjectKind::Segment { last_txid, .. } if *last_txid > txid),
    )
}

/// After walsync stopped: the backup of `db` (every commit since walsync's
/// snapshot one row, its id counting up from one of `writers`, the first
/// ids of the application's writers, in order) is one generation, and each
/// of `samples` txids across it restores exactly a state the writers had:
/// the newest `N - (T - txid)` rows (T the newest txid), each writer's
/// first ones in order, with their values, passing `integrity_check`. The
/// newest restore is byte-identical to the database once checkpointed.
fn assert_one_exact_history(setup: &Setup, prefix: &str, db: &Path, writers: &[i64], samples: u64) {
    let ranges: Vec<std::ops::Range<i64>> = writers
        .iter()
        .enumerate()
        .map(|(i, &first)| first..writers.get(i + 1).copied().unwrap_or(i64::MAX))
        .collect();
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    let storage = setup.storage();
    assert_eq!(generation_count(&storage, prefix), 1, "{log}");
    let live: std::collections::BTreeMap<i64, String> = rows(db).into_iter().collect();
    let newest = newest_txid(&storage, prefix);
    let snapshot_txid = objects(&storage, prefix)
        .iter()
        .filter(|o| matches!(o.kind, ObjectKind::Snapshot { .. }))
        .map(|o| o.kind.txid())
        .min()
        .unwrap();
    let n = live.len() as u64;
    let span = newest - snapshot_txid;
    for i in 0..=samples {
        let txid = snapshot_txid + span * i / samples;
        let out = setup.dir.join(format!("at-{txid}.db"));
        let o = setup.restore(prefix, &out, &["--txid", &txid.to_string()]);
        assert!(
            o.status.success(),
            "txid {txid}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(integrity(&out), "ok", "txid {txid}");
        let got = rows(&out);
        assert_eq!(got.len() as u64, n - (newest - txid), "txid {txid}: {log}");
        for w in &ranges {
            let mine: Vec<&(i64, String)> = got.iter().filter(|(id, _)| w.contains(id)).collect();
            let want: Vec<(&i64, &String)> = live.range(w.clone()).take(mine.len()).collect();
            let mine: Vec<(&i64, &String)> = mine.iter().map(|(id, v)| (id, v)).collect();
            assert_eq!(mine, want, "txid {txid}: the first rows of writer {w:?}");
        }
        std::fs::remove_file(&out).unwrap();
    }
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    let out = setup.dir.join("latest.db");
    assert_eq!(setup.restore_verified(prefix, &out).len() as u64, n);
    assert!(
        std::fs::read(db).unwrap() == std::fs::read(&out).unwrap(),
        "the newest restore is the database's bytes"
    );
}

#[test]
fn a_burst_after_an_idle_release_keeps_one_generation_at_the_sync_interval() {
    // No sync point of walsync's own during the burst (it ships what came
    // since the sync's upload, a second PUT in that sync): this counts the
    // syncs.
    let setup = without_sync_points(burst_setup(Some("1s")));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_default_app(&db);
    burst(&c, 1..101);
    let mut child = watch_debug(&setup);
    showing_log_on_failure(&setup, "watch.log", || {
        wait_shipped(&storage, prefix, &db);
        wait_let_go(&child, &db);
    });
    // 3,000 small commits (about 12 MB of WAL frames, under one segment's
    // 16 MiB, so that each sync ships one segment): the application's
    // autocheckpoint backfills the WAL (changing the database file) and
    // would restart it before walsync takes it up again.
    let before = newest_txid(&storage, prefix);
    let start = Instant::now();
    for id in 101..3_101 {
        c.execute("INSERT INTO t(id, v) VALUES (?1, 'r')", [id])
            .unwrap();
    }
    let took = start.elapsed();
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    let segments = segments_after(&storage, prefix, before);
    eprintln!(
        "3,000 commits in {:.2} s after a release: {segments} segments",
        took.as_secs_f64()
    );
    // One per sync_interval, and one each for the wake and the tail.
    showing_log_on_failure(&setup, "watch.log", || {
        assert!(
            segments as f64 <= took.as_secs_f64() / 1.0 + 2.0,
            "{segments} segments for {:.2} s",
            took.as_secs_f64()
        )
    });
    assert!(sigterm(&mut child).success());
    drop(c);
    assert_one_exact_history(&setup, prefix, &db, &[1], 10);
}

#[test]
fn a_burst_right_after_the_start_keeps_one_generation() {
    let setup = burst_setup(None);
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_default_app(&db);
    burst(&c, 1..101);
    let mut child = watch_debug(&setup);
    // walsync's first sync found nothing new: the burst comes right after.
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    burst(&c, 101..3_101);
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    assert!(sigterm(&mut child).success());
    drop(c);
    assert_one_exact_history(&setup, prefix, &db, &[1], 10);
}

#[test]
fn a_large_transaction_after_an_idle_release_keeps_one_generation() {
    let setup = burst_setup(Some("1s"));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_default_app(&db);
    burst(&c, 1..101);
    let mut child = watch_debug(&setup);
    showing_log_on_failure(&setup, "watch.log", || {
        wait_shipped(&storage, prefix, &db);
        wait_let_go(&child, &db);
    });
    // One transaction of about 12 MB (more pages than the page cache and
    // the autocheckpoint hold), then small ones.
    c.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
         INSERT INTO t(id, v) SELECT 1000000 + i, hex(randomblob(300)) FROM n;",
    )
    .unwrap();
    burst(&c, 101..601);
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    assert!(sigterm(&mut child).success());
    drop(c);
    // The large transaction is one commit of 20,000 rows: restore the
    // ends exactly.
    let log = std::fs::read_to_string(setup.dir.join("watch.log")).unwrap();
    assert_eq!(generation_count(&storage, prefix), 1, "{log}");
    let c = Connection::open(&db).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    let out = setup.dir.join("latest.db");
    assert_eq!(setup.restore_verified(prefix, &out), rows(&db));
    assert!(std::fs::read(&db).unwrap() == std::fs::read(&out).unwrap());
    // Just before the small ones: the 100 first rows and the large
    // transaction.
    let txid = newest_txid(&storage, prefix) - 500;
    let out = setup.dir.join("at.db");
    let o = setup.restore(prefix, &out, &["--txid", &txid.to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(integrity(&out), "ok");
    assert_eq!(rows(&out).len(), 20_100);
}

#[test]
fn the_applications_checkpoints_of_every_mode_after_idle_releases_keep_one_generation() {
    let setup = burst_setup(Some("1s"));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_default_app(&db);
    burst(&c, 1..101);
    let mut child = watch_debug(&setup);
    let mut next = 101;
    for mode in ["PASSIVE", "FULL", "RESTART", "TRUNCATE"] {
        showing_log_on_failure(&setup, "watch.log", || {
            wait_shipped(&storage, prefix, &db);
            wait_let_go(&child, &db);
        });
        // A burst, the application's checkpoint, and another burst.
        burst(&c, next..next + 800);
        c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
            .unwrap();
        burst(&c, next + 800..next + 1_000);
        next += 1_000;
    }
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    assert!(sigterm(&mut child).success());
    drop(c);
    assert_one_exact_history(&setup, prefix, &db, &[1], 10);
}

/// Issue 10: the application's RESTART and TRUNCATE checkpoints go through
/// once walsync has caught up (its read transaction rests at read mark 0,
/// which no WAL restart waits for), instead of stalling for the busy
/// timeout; and a storm of commits and checkpoints of every mode, at random
/// moments, still keeps one generation with every commit.
#[test]
fn the_applications_restart_and_truncate_succeed_once_walsync_has_caught_up() {
    // No sync point of walsync's own (which also leaves it at mark 0): only
    // the syncs that ship and settle.
    let setup = without_sync_points(burst_setup(Some("1h")));
    let prefix = "tenants/acme";
    let db = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&db);
    burst(&c, 1..101);
    let mut child = watch_debug(&setup);
    let mut next = 101;
    for (round, mode) in ["TRUNCATE", "RESTART", "TRUNCATE", "RESTART"]
        .iter()
        .enumerate()
    {
        burst(&c, next..next + 20);
        next += 20;
        showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
        // walsync settles right after it ships; nothing is committed now.
        let start = Instant::now();
        let (busy, log, done) = loop {
            let r = app_checkpoint(&c, mode);
            if r.0 == 0 || start.elapsed() > Duration::from_secs(5) {
                break r;
            }
        };
        showing_log_on_failure(&setup, "watch.log", || {
            assert_eq!(
                (busy, log),
                (0, done),
                "round {round}: {mode} once caught up"
            )
        });
        if *mode == "TRUNCATE" {
            let wal = std::fs::metadata(setup.dir.join("app.db-wal"))
                .unwrap()
                .len();
            assert_eq!(wal, 0, "round {round}: TRUNCATE empties the WAL");
        }
    }
    // The storm: bursts of 1 to 60 commits, each followed by a checkpoint
    // of the next mode and a pause of 0 to 1.2 s (busy or not).
    let modes = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut draw = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut went_through = 0;
    for i in 0..40 {
        let n = 1 + draw(60) as i64;
        burst(&c, next..next + n);
        next += n;
        let (busy, _, _) = app_checkpoint(&c, modes[i % 4]);
        went_through += usize::from(busy == 0 && i % 4 >= 2);
        thread::sleep(Duration::from_millis(draw(1_200)));
    }
    eprintln!("{went_through} of 20 RESTART/TRUNCATE went through in the storm");
    showing_log_on_failure(&setup, "watch.log", || wait_shipped(&storage, prefix, &db));
    assert!(sigterm(&mut child).success());
    drop(c);
    assert_one_exact_history(&setup, prefix, &db, &[1], 12);
}

/// Microseconds since the Unix epoch, for a writer that times its commits.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// One row committed every ~20 ms in bursts, with 300 ms pauses; each
/// commit timed by the writer (just before the INSERT, just after it
/// returns). Returns (id, start µs, end µs) per row.
fn timed_bursts(c: &Connection, bursts: usize, per_burst: usize) -> Vec<(i64, u64, u64)> {
    let mut timed = Vec::new();
    for b in 0..bursts {
        for i in 0..per_burst {
            let id = (b * per_burst + i + 1) as i64;
            let start = now_us();
            insert(c, id);
            timed.push((id, start, now_us()));
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(300));
    }
    timed
}

/// README "Point in time": with a sync interval of 1 s, far longer than
/// the pauses between the writer's bursts, a restore to an instant T holds
/// every commit that ended at or before T - 10 ms and none that began after
/// T. (Before commits were dated one by one, every commit of a sync got the
/// sync's time, and restores to 150 ms into a pause missed the burst before
/// it.)
#[test]
fn restore_to_a_time_has_exactly_the_commits_made_before_it() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    setup.edit_config(|t| t.replace("sync_interval = \"100ms\"", "sync_interval = \"1s\""));
    let path = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&path);
    let mut child = setup.watch("watch.log");
    wait_shipped(&storage, "tenants/acme", &path);

    let timed = timed_bursts(&c, 8, 12);
    wait_shipped(&storage, "tenants/acme", &path);
    assert!(sigterm(&mut child).success());

    // 150 ms into each pause, and instants spread over the whole run.
    let per_burst = 12;
    let mut instants: Vec<u64> = timed
        .chunks(per_burst)
        .map(|b| b.last().unwrap().2 / 1000 + 150)
        .collect();
    let (first, last) = (timed[0].1 / 1000, timed.last().unwrap().2 / 1000);
    instants.extend((1..=7).map(|k| first + (last - first) * k / 8 + k * 13 % 17));
    let mut failures = Vec::new();
    for (n, t) in instants.iter().enumerate() {
        let out = setup.dir.join(format!("at-{n}.db"));
        let ts = walsync::time::format_rfc3339(*t);
        let o = setup.restore("tenants/acme", &out, &["--timestamp", &ts]);
        assert!(
            o.status.success(),
            "{ts}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(integrity(&out), "ok");
        let got: Vec<i64> = rows(&out).into_iter().map(|r| r.0).collect();
        let t_us = t * 1000;
        let must: Vec<i64> = timed
            .iter()
            .filter(|c| c.2 + 10_000 <= t_us)
            .map(|c| c.0)
            .collect();
        let may: Vec<i64> = timed.iter().filter(|c| c.1 <= t_us).map(|c| c.0).collect();
        // Rows go in order, so what a restore holds is 1..=k.
        let k = got.len();
        if got != (1..=k as i64).collect::<Vec<_>>() || k < must.len() || k > may.len() {
            failures.push(format!(
                "{ts}: {k} rows, expected {} to {} (every commit ended by T - 10 ms, none begun after T)",
                must.len(),
                may.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        std::fs::read_to_string(setup.dir.join("watch.log")).unwrap()
    );
}

/// `walsync history --json`, parsed by Python's json module into one line
/// per item: `kind txid time_ms generation break`.
fn history_items(setup: &Setup, extra: &[&str]) -> Vec<(String, u64, u64, String, bool)> {
    let mut args = vec!["history", "--prefix", "tenants/acme", "--json"];
    args.extend_from_slice(extra);
    let o = setup.run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = "import json, sys, datetime\n\
        for i in json.load(sys.stdin):\n\
        \x20   t = i.get('time')\n\
        \x20   ms = int(datetime.datetime.fromisoformat(t.replace('Z', '+00:00')).timestamp() * 1000 + 0.5) if t else 0\n\
        \x20   print(i['kind'], i.get('txid', 0), ms, i['generation'], i.get('break', False))\n";
    let mut py = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    py.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let parsed = py.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "history --json is not JSON: {}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(parsed.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].to_string(),
                f[4] == "True",
            )
        })
        .collect()
}

/// `walsync history` lists every commit the backup holds, in order, each
/// dated no earlier than its writer began it, with the snapshots marked
/// and a break where a new generation began; as text with a config and as
/// JSON with only the bucket; `--since` leaves out what is older.
#[test]
fn history_lists_every_commit_with_snapshots_and_generation_breaks() {
    let setup = Setup::new(&[("app.db", "tenants/acme")]);
    let path = setup.dir.join("app.db");
    let storage = setup.storage();
    let c = open_app(&path);
    let mut child = setup.watch("watch.log");
    wait_shipped(&storage, "tenants/acme", &path);
    let mut started = Vec::new();
    for id in 1..=20 {
        started.push(now_us());
        insert(&c, id);
    }
    wait_shipped(&storage, "tenants/acme", &path);
    assert!(sigterm(&mut child).success());
    // A new generation: written while walsync is stopped, the WAL restarted.
    for id in 21..=30 {
        insert(&c, id);
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let mut child = setup.watch("watch-2.log");
    wait_shipped(&storage, "tenants/acme", &path);
    for id in 31..=40 {
        started.push(now_us());
        insert(&c, id);
    }
    wait_shipped(&storage, "tenants/acme", &path);
    assert!(sigterm(&mut child).success());
    assert_eq!(generation_count(&storage, "tenants/acme"), 2);

    let bucket = [
        "--bucket",
        &setup.server.bucket,
        "--endpoint",
        &setup.server.endpoint,
    ];
    let items = history_items(&setup, &bucket);
    let gens: Vec<_> = items.iter().filter(|i| i.0 == "generation").collect();
    assert_eq!(gens.len(), 2, "{items:?}");
    assert!(
        !gens[0].4 && gens[1].4,
        "the second generation is a break: {items:?}"
    );
    // Per generation: a snapshot, then its commits one by one, txids
    // following the snapshot's without a hole, times never going back.
    let mut commits = Vec::new();
    for g in gens {
        let of: Vec<_> = items
            .iter()
            .filter(|i| i.3 == g.3 && i.0 != "generation")
            .collect();
        assert_eq!(of[0].0, "snapshot", "{items:?}");
        let mut txid = of[0].1;
        for i in &of[1..] {
            assert_eq!((i.0.as_str(), i.1), ("commit", txid + 1), "{items:?}");
            txid = i.1;
        }
        assert!(of.windows(2).all(|w| w[0].2 <= w[1].2), "{items:?}");
        commits.push(of[1..].to_vec());
    }
    assert_eq!(
        (commits[0].len(), commits[1].len()),
        (20, 10),
        "one commit per row written while walsync ran: {items:?}"
    );
    // Each time is an upper bound: never before its writer began.
    for (c, began) in commits.iter().flatten().zip(&started) {
        assert!(
            c.2 * 1000 >= *began,
            "txid {} dated {} before it began",
            c.1,
            c.2
        );
    }
    // Restoring to a commit's txid or to its time gives the same rows.
    let last_of_first = commits[0].last().unwrap();
    let out = setup.dir.join("by-time.db");
    let ts = walsync::time::format_rfc3339(last_of_first.2);
    let o = setup.restore("tenants/acme", &out, &["--timestamp", &ts]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out).len(), 20);

    // Text, with the config: one line per commit and snapshot, each with
    // its txid, the snapshots marked, the break said.
    let cfg = setup.config.to_str().unwrap();
    let o = setup.run(&["history", "-c", cfg, "--prefix", "tenants/acme"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("TXID") && lines[0].contains("GENERATION"),
        "{text}"
    );
    for i in items.iter().filter(|i| i.0 != "generation") {
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(&i.1.to_string()) && l.contains(&i.3))
            .unwrap_or_else(|| panic!("txid {} missing:\n{text}", i.1));
        assert_eq!(line.ends_with("snapshot"), i.0 == "snapshot", "{line}");
        assert!(line.contains(&walsync::time::format_rfc3339(i.2)), "{line}");
    }
    assert_eq!(text.matches("a new history").count(), 1, "{text}");

    // --since the second generation's snapshot: nothing older.
    let since = walsync::time::format_rfc3339(commits[1][0].2);
    let newer = history_items(&setup, &[&bucket[..], &["--since", &since]].concat());
    assert!(newer.iter().all(|i| i.3 == commits[1][0].3), "{newer:?}");
    assert_eq!(newer.iter().filter(|i| i.0 == "commit").count(), 10);

    // A prefix without a backup is named.
    let o = setup.run(&["history", "-c", cfg, "--prefix", "tenants/nobody"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tenants/nobody"));
}

/// Runs walsync with the storage layer's debug log, and returns what it
/// did and the prefixes it LISTed (one per page), as the log names them,
/// sorted.
fn run_counting_lists(setup: &Setup, args: &[&str]) -> (Output, Vec<String>) {
    let o = setup
        .command()
        .env("RUST_LOG", "walsync::storage=debug")
        .args(args)
        .output()
        .unwrap();
    let mut lists: Vec<String> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| l.split_once(": LIST ").map(|(_, p)| p.to_string()))
        .collect();
    // Made in parallel: their order means nothing.
    lists.sort();
    (o, lists)
}

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_fleet_is_listed_once_per_parent_then_restored_verified_and_listed() {
    // Nine databases share a parent (one listing of "fleet/"); two do not
    // (one listing each, never the whole bucket).
    let mut names: Vec<(String, String)> = (0..9)
        .map(|i| (format!("f{i}.db"), format!("fleet/t{i}")))
        .collect();
    names.push(("deep.db".into(), "lone/deep/db".into()));
    names.push(("solo.db".into(), "solo".into()));
    let dbs: Vec<(&str, &str)> = names
        .iter()
        .map(|(f, p)| (f.as_str(), p.as_str()))
        .collect();
    let setup = Setup::new(&dbs);
    for (i, (file, _)) in names.iter().enumerate() {
        let c = open_app(&setup.dir.join(file));
        for id in 1..=(3 + i as i64) {
            insert(&c, id);
        }
    }
    let cfg = setup.config.to_str().unwrap();
    let o = setup.run(&["snapshot", "--config", cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bucket = setup.server.bucket.clone();
    let endpoint = setup.server.endpoint.clone();
    let s3 = ["--bucket", &bucket, "--endpoint", &endpoint];
    let restored_all = |out: &Path, which: &[&(String, String)]| {
        for (file, prefix) in which {
            let restored = out.join(format!("{prefix}.db"));
            assert_eq!(integrity(&restored), "ok", "{prefix}");
            assert_eq!(rows(&restored), rows(&setup.dir.join(file)), "{prefix}");
        }
    };
    let all: Vec<&(String, String)> = names.iter().collect();
    let roots = ["\"fleet/\"", "\"lone/deep/db/\"", "\"solo/\""];

    // With the config: three listings, whatever the number of databases.
    let out = setup.scratch("fleet-all");
    let (o, lists) = run_counting_lists(
        &setup,
        &[
            "restore-all",
            "-c",
            cfg,
            "--output-dir",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "{}{}",
        stdout_of(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout_of(&o).contains("11 ok, 0 failed"),
        "{}",
        stdout_of(&o)
    );
    assert_eq!(lists, roots, "one LIST per parent, none per database");
    restored_all(&out, &all);

    let (o, lists) = run_counting_lists(&setup, &["verify", "-c", cfg]);
    assert!(o.status.success(), "{}", stdout_of(&o));
    assert!(
        stdout_of(&o).contains("11 ok, 0 failed"),
        "{}",
        stdout_of(&o)
    );
    assert_eq!(lists, roots);

    let (o, lists) = run_counting_lists(&setup, &["list", "-c", cfg, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lists, roots);
    // Each database's summary is what listing it alone gives (one LIST of
    // its own prefix): its own objects, none of its neighbours'.
    let alone: Vec<String> = names
        .iter()
        .map(|(_, prefix)| {
            let (o, lists) =
                run_counting_lists(&setup, &["list", "-c", cfg, "--prefix", prefix, "--json"]);
            assert!(o.status.success(), "{prefix}");
            assert_eq!(lists, [format!("{:?}", format!("{prefix}/"))]);
            let json = stdout_of(&o);
            json.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        })
        .collect();
    assert_eq!(stdout_of(&o).trim(), format!("[{}]", alone.join(",")));
    assert_eq!(stdout_of(&o).matches("\"objects\":2,").count(), 11);

    // Without a config: one listing of the folders under the parent (too
    // few to cut its listing at), then one of the parent, or the same of
    // the bucket.
    let out = setup.scratch("fleet-bucket");
    let mut args = vec!["restore-all", "--prefix", "fleet/", "--output-dir"];
    args.push(out.to_str().unwrap());
    args.extend_from_slice(&s3);
    let (o, lists) = run_counting_lists(&setup, &args);
    assert!(o.status.success(), "{}", stdout_of(&o));
    assert!(
        stdout_of(&o).contains("9 ok, 0 failed"),
        "{}",
        stdout_of(&o)
    );
    assert_eq!(lists, ["\"fleet/\"", "\"fleet/\" by \"/\""]);
    restored_all(&out, &all[..9]);
    assert!(!out.join("solo.db").exists());
    let out = setup.scratch("fleet-bucket-all");
    let mut args = vec!["restore-all", "--output-dir", out.to_str().unwrap()];
    args.extend_from_slice(&s3);
    let (o, lists) = run_counting_lists(&setup, &args);
    assert!(o.status.success(), "{}", stdout_of(&o));
    assert_eq!(lists, ["\"\"", "\"\" by \"/\""]);
    restored_all(&out, &all);

    // One broken object: that database named, every other one restored.
    let victim = "fleet/t3";
    let (_, file) = object_files(&setup, victim)
        .into_iter()
        .find(|(key, _)| key.contains("/snapshots/"))
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let others: Vec<&(String, String)> = names.iter().filter(|n| n.1 != victim).collect();
    let out = setup.scratch("fleet-broken");
    let o = setup.run(&[
        "restore-all",
        "-c",
        cfg,
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout_of(&o));
    assert!(
        stdout_of(&o).contains(&format!("FAILED  {victim}")),
        "{}",
        stdout_of(&o)
    );
    assert!(
        stdout_of(&o).contains("10 ok, 1 failed"),
        "{}",
        stdout_of(&o)
    );
    assert!(!out.join(format!("{victim}.db")).exists());
    restored_all(&out, &others);
    let out = setup.scratch("fleet-broken-bucket");
    let mut args = vec!["restore-all", "--prefix", "fleet", "--output-dir"];
    args.push(out.to_str().unwrap());
    args.extend_from_slice(&s3);
    let o = setup.run(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stdout_of(&o));
    assert!(
        stdout_of(&o).contains(&format!("FAILED  {victim}")),
        "{}",
        stdout_of(&o)
    );
    assert!(
        stdout_of(&o).contains("8 ok, 1 failed"),
        "{}",
        stdout_of(&o)
    );
    restored_all(&out, &others[..8]);
    let o = setup.run(&["verify", "-c", cfg]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout_of(&o));
    assert!(
        stdout_of(&o).contains(&format!("FAILED  {victim}"))
            && stdout_of(&o).contains("10 ok, 1 failed"),
        "{}",
        stdout_of(&o)
    );
}

#[test]
fn list_without_a_config_discovers_the_databases_of_a_bucket_or_a_parent() {
    let names = [
        ("a.db", "tenants/a"),
        ("b.db", "tenants/b"),
        ("c.db", "tenants/eu/c"),
        ("d.db", "other/d"),
    ];
    let setup = Setup::new(&names);
    for (file, _) in names {
        insert(&open_app(&setup.dir.join(file)), 1);
    }
    let cfg = setup.config.to_str().unwrap();
    let o = setup.run(&["snapshot", "--config", cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same backups in a directory backend.
    let dir = setup.scratch("list-dir");
    copy_tree(&setup.server.bucket_dir(), &dir);
    let bucket = setup.server.bucket.clone();
    let endpoint = setup.server.endpoint.clone();
    let dir_arg = dir.to_str().unwrap().to_string();
    let headers = |o: &Output| -> Vec<String> {
        stdout_of(o)
            .lines()
            .filter(|l| !l.starts_with(' '))
            .map(str::to_string)
            .collect()
    };
    for target in [
        vec!["--bucket", &bucket, "--endpoint", &endpoint],
        vec!["--dir", &dir_arg],
    ] {
        for (prefix, expected) in [
            (
                None,
                vec!["other/d", "tenants/a", "tenants/b", "tenants/eu/c"],
            ),
            (
                Some("tenants"),
                vec!["tenants/a", "tenants/b", "tenants/eu/c"],
            ),
            (
                Some("tenants/"),
                vec!["tenants/a", "tenants/b", "tenants/eu/c"],
            ),
            (Some("tenants/a"), vec!["tenants/a"]),
            (Some("tenants/eu"), vec!["tenants/eu/c"]),
        ] {
            let mut args = vec!["list"];
            args.extend_from_slice(&target);
            if let Some(p) = prefix {
                args.extend_from_slice(&["--prefix", p]);
            }
            let o = setup.run(&args);
            assert!(
                o.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(headers(&o), expected, "{args:?}: {}", stdout_of(&o));
            assert!(
                !stdout_of(&o).contains("no backup yet"),
                "{args:?}: {}",
                stdout_of(&o)
            );
            assert_eq!(
                stdout_of(&o).matches("1 generations, ").count(),
                expected.len(),
                "{args:?}: {}",
                stdout_of(&o)
            );
            args.push("--json");
            let o = setup.run(&args);
            assert!(o.status.success(), "{args:?}");
            for p in &expected {
                assert!(
                    stdout_of(&o).contains(&format!("{{\"prefix\":\"{p}\",\"path\":null,")),
                    "{args:?}: {}",
                    stdout_of(&o)
                );
            }
        }
        // A prefix that holds nothing is still shown as such.
        let mut args = vec!["list", "--prefix", "nothing/here"];
        args.extend_from_slice(&target);
        let o = setup.run(&args);
        assert!(o.status.success(), "{args:?}");
        assert_eq!(stdout_of(&o), "nothing/here\n  no backup yet\n");
    }
}

/// Writes a new key with `walsync keygen -o` into the setup's directory
/// and returns its path and the key.
fn keygen(setup: &Setup, name: &str) -> (PathBuf, Key) {
    let path = setup.dir.join(name);
    let o = setup.run(&["keygen", "-o", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key = walsync::keyfile::load(&path).unwrap();
    (path, key)
}

/// Inserts row `id` holding `marker` (retrying while walsync holds the
/// write lock).
fn insert_marked(c: &Connection, id: i64, marker: &str) {
    let v = format!("{marker} {id} {}", "y".repeat((id % 13) as usize * 40));
    common::app::insert_value(c, id, &v);
}

/// Every file s3s-fs holds under `prefix`, with its bytes.
fn bucket_files(setup: &Setup, prefix: &str) -> Vec<(PathBuf, Vec<u8>)> {
    walk_files(&setup.server.bucket_dir().join(prefix))
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Whether `needle` occurs in `haystack`; quick on objects of tens of MiB
/// in a debug build (looks for the first byte, then compares).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut at = 0;
    while let Some(i) = haystack[at..].iter().position(|&b| b == first) {
        let start = at + i;
        if haystack[start + 1..].starts_with(rest) {
            return true;
        }
        at = start + 1;
    }
    false
}

/// Checks every object under `prefix` but the lease (host, pid, times:
/// nothing of the database, and plain, as README "Encryption" says): sealed
/// with `key`, and neither `marker` nor a database header in the clear.
/// Returns them.
fn assert_sealed_hiding(
    setup: &Setup,
    prefix: &str,
    key: &Key,
    marker: &str,
) -> Vec<(PathBuf, Vec<u8>)> {
    let files = bucket_files(setup, prefix);
    for (path, bytes) in files.iter().filter(|(p, _)| !p.ends_with("lease")) {
        assert!(
            !contains(bytes, marker.as_bytes()) && !contains(bytes, b"SQLite format 3"),
            "{} holds the application's data in the clear",
            path.display()
        );
        assert_eq!(
            sealed_key_id(bytes),
            Some(key.id().to_string()),
            "{} is sealed with its database's key",
            path.display()
        );
    }
    files
}

/// Restores `prefix` to `out` (the config's keys), checks it is `db`'s
/// bytes once `db`'s WAL is checkpointed, and removes it.
fn assert_restores_the_bytes_of(setup: &Setup, prefix: &str, db: &Path, out: &Path) {
    assert_eq!(setup.restore_verified(prefix, out), rows(db));
    let c = Connection::open(db).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    assert!(
        std::fs::read(db).unwrap() == std::fs::read(out).unwrap(),
        "{prefix}: the restore is the source's bytes"
    );
    std::fs::remove_file(out).unwrap();
}

/// The key id in a sealed object's header (bytes 12..20), as hex.
fn sealed_key_id(bytes: &[u8]) -> Option<String> {
    bytes
        .starts_with(b"WSEA")
        .then(|| bytes[12..20].iter().map(|b| format!("{b:02x}")).collect())
}

/// `args` run against the bucket without a config (disaster recovery),
/// with `--key-file` for each of `keys`.
fn run_on_bucket(setup: &Setup, args: &[&str], keys: &[&Path]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend([
        "--bucket".into(),
        setup.server.bucket.clone(),
        "--endpoint".into(),
        setup.server.endpoint.clone(),
    ]);
    for k in keys {
        all.extend(["--key-file".into(), k.display().to_string()]);
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    setup.run(&all)
}

#[test]
fn encrypted_backups_hide_the_data_restore_exactly_and_fail_cleanly_without_their_key() {
    let setup = Setup::new(&[("a.db", "enc/a"), ("b.db", "enc/b")]);
    let (ka_path, ka) = keygen(&setup, "a.key");
    let (kb_path, kb) = keygen(&setup, "b.key");
    let (kw_path, kw) = keygen(&setup, "wrong.key");
    // One key for every database, and database b's own.
    setup.edit_config(|t| {
        format!("{t}[encryption]\nkey_file = \"a.key\"\n").replace(
            "prefix = \"enc/b\"\n",
            "prefix = \"enc/b\"\nencryption = { key_file = \"b.key\" }\n",
        )
    });
    let marker = format!("walsync-marker-{}", common::s3server::random_hex(16));
    let (a, b) = (setup.dir.join("a.db"), setup.dir.join("b.db"));
    let (ca, cb) = (open_app(&a), open_app(&b));
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    for batch in 0..3 {
        for id in batch * 200 + 1..=batch * 200 + 200 {
            insert_marked(&ca, id, &marker);
            insert_marked(&cb, id, &marker);
        }
        showing_log_on_failure(&setup, "watch.log", || {
            wait_restorable_with(&storage, "enc/a", &a, std::slice::from_ref(&ka));
            wait_restorable_with(&storage, "enc/b", &b, std::slice::from_ref(&kb));
        });
    }
    drop((ca, cb));
    assert!(sigterm(&mut child).success());
    // The marker is in the application's files, and in no object.
    assert!(
        contains(&std::fs::read(&a).unwrap(), marker.as_bytes()) || {
            let wal = std::fs::read(setup.dir.join("a.db-wal")).unwrap_or_default();
            contains(&wal, marker.as_bytes())
        }
    );
    for (prefix, key) in [("enc/a", &ka), ("enc/b", &kb)] {
        let files = assert_sealed_hiding(&setup, prefix, key, &marker);
        let kinds = |ext: &str| {
            files
                .iter()
                .filter(|(p, _)| p.extension().is_some_and(|e| e == ext))
                .count()
        };
        assert!(
            kinds("snap") >= 1 && kinds("seg") >= 2 && kinds("mark") >= 1,
            "{files:?}"
        );
    }

    // With the config's keys: exactly the source, byte for byte.
    let outdir = setup.scratch("restores");
    for (prefix, db) in [("enc/a", &a), ("enc/b", &b)] {
        assert_restores_the_bytes_of(&setup, prefix, db, &outdir.join("exact.db"));
    }

    // Without a config: no key, a wrong key, another database's key. One
    // line naming the key id needed and the object, exit 1, nothing written.
    let out = outdir.join("r.db");
    let out_arg = out.to_str().unwrap();
    let restore_a = ["restore", "--prefix", "enc/a", "-o", out_arg];
    for (keys, given) in [
        (vec![], vec![]),
        (vec![kw_path.as_path()], vec![kw.id()]),
        (
            vec![kb_path.as_path(), kw_path.as_path()],
            vec![kb.id(), kw.id()],
        ),
    ] {
        let o = run_on_bucket(&setup, &restore_a, &keys);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{keys:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("key id {}", ka.id())) && err.contains("enc/a/generations/"),
            "{keys:?}: names the key needed and the object: {err}"
        );
        for id in given {
            assert!(err.contains(&id.to_string()), "{err}");
        }
        assert_nothing_left(&outdir, &out);
    }
    // The right key file: the same rows.
    let o = run_on_bucket(&setup, &restore_a, &[&ka_path]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out), rows(&a));
    std::fs::remove_file(&out).unwrap();
    // verify, restore-all, history and list read with the keys given.
    let all_out = setup.scratch("all");
    for args in [
        vec!["verify", "--prefix", "enc"],
        vec![
            "restore-all",
            "--prefix",
            "enc",
            "--output-dir",
            all_out.to_str().unwrap(),
        ],
        vec!["history", "--prefix", "enc/b"],
        vec!["list", "--prefix", "enc", "--keys"],
    ] {
        let o = run_on_bucket(&setup, &args, &[&ka_path, &kb_path]);
        let (so, se) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "{args:?}: {se}");
        if args[0] == "list" {
            for k in [&ka, &kb] {
                assert!(so.contains(&format!("keys needed: {} (", k.id())), "{so}");
            }
        }
        if args[0] == "verify" {
            let o = run_on_bucket(&setup, &args, &[&ka_path]);
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(o.status.code(), Some(1), "{said}");
            assert!(said.contains(&format!("key id {}", kb.id())), "{said}");
        }
    }
    assert_eq!(rows(&all_out.join("enc/a.db")), rows(&a));
    assert_eq!(rows(&all_out.join("enc/b.db")), rows(&b));

    // Tampered: a flipped bit anywhere in a sealed object.
    let files = object_files(&setup, "enc/a");
    // Not the marks (a damaged one only costs a snapshot) nor the lease
    // (restore never reads it).
    for (key, file) in files
        .iter()
        .filter(|(k, _)| !k.ends_with(".mark") && !k.ends_with("/lease"))
    {
        let good = std::fs::read(file).unwrap();
        for at in [5, 30, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x04;
            std::fs::write(file, &bad).unwrap();
            let o = setup.restore("enc/a", &out, &[]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "flip at {at} of {key}: {err}");
            assert!(err.contains(key.as_str()), "the error names {key}: {err}");
            assert_nothing_left(&outdir, &out);
        }
        std::fs::write(file, &good).unwrap();
    }
    // Moved: a segment's bytes under another segment's name (another txid
    // range) fail to open, though each is whole.
    let segments: Vec<_> = files.iter().filter(|(k, _)| k.ends_with(".seg")).collect();
    assert!(segments.len() >= 2, "{segments:?}");
    let (moved_to, to_file) = segments[segments.len() - 1];
    let saved = std::fs::read(to_file).unwrap();
    std::fs::copy(&segments[segments.len() - 2].1, to_file).unwrap();
    let o = setup.restore("enc/a", &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(moved_to.as_str()) && err.contains("authentication failed"),
        "{err}"
    );
    assert_nothing_left(&outdir, &out);
    std::fs::write(to_file, &saved).unwrap();
    assert_eq!(setup.restore_verified("enc/a", &out), rows(&a));
    std::fs::remove_file(&out).unwrap();

    // Key files that cannot be used: exit 2 naming the file, at start.
    let missing = setup.dir.join("missing.key");
    let o = run_on_bucket(&setup, &restore_a, &[&missing]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("missing.key") && err.contains("not found"),
        "{err}"
    );
    let bad = setup.dir.join("bad.key");
    let line = ka.to_line();
    for (text, says) in [
        ("hello".to_string(), "not a walsync key"),
        (line[..line.len() - 2].to_string(), "malformed key"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let o = run_on_bucket(&setup, &restore_a, &[&bad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("bad.key") && err.contains(says), "{err}");
    }
    setup.edit_config(|t| t.replace("key_file = \"a.key\"", "key_file = \"bad.key\""));
    let o = run_bounded(
        &setup,
        &["watch", "--config", setup.config.to_str().unwrap()],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.key"), "{err}");
    // Readable by others: a warning, and it still works.
    setup.edit_config(|t| t.replace("key_file = \"bad.key\"", "key_file = \"a.key\""));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ka_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run_on_bucket(&setup, &restore_a, &[&ka_path]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn an_encrypted_transaction_over_the_multipart_threshold_restores_exactly_and_needs_its_key() {
    let setup = Setup::new(&[("big.db", "enc/big")]);
    let (_, key) = keygen(&setup, "big.key");
    setup.edit_config(|t| format!("{t}[encryption]\nkey_file = \"big.key\"\n"));
    let marker = format!("walsync-marker-{}", common::s3server::random_hex(16));
    let db = setup.dir.join("big.db");
    let c = open_app(&db);
    let storage = setup.storage();
    let mut child = setup.watch("watch.log");
    for id in 1..=20 {
        insert_marked(&c, id, &marker);
    }
    showing_log_on_failure(&setup, "watch.log", || {
        wait_restorable_with(&storage, "enc/big", &db, std::slice::from_ref(&key))
    });
    // One transaction of 70 rows of 1 MiB (hex of random bytes, which LZ4
    // cannot shrink much: an object is sealed after compression, so only
    // incompressible pages make it large), each holding the marker: its
    // segment (or, after a gap, the snapshot) is over the 64 MiB multipart
    // threshold.
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT 21 UNION ALL SELECT i + 1 FROM n WHERE i < 90)
         INSERT INTO t(id, v) SELECT i, ?1 || ' ' || hex(randomblob(524288)) FROM n",
        [&marker],
    )
    .expect("a multipart-sized transaction");
    for id in 91..=100 {
        insert_marked(&c, id, &marker);
    }
    showing_log_on_failure(&setup, "watch.log", || {
        wait_restorable_with(&storage, "enc/big", &db, std::slice::from_ref(&key))
    });
    drop(c);
    assert!(sigterm(&mut child).success());

    // A sealed object over the threshold, and the marker in no object.
    let listing = storage.list(&keys::database_root("enc/big")).unwrap();
    let large: Vec<_> = listing.iter().filter(|o| o.size > 64 << 20).collect();
    assert!(
        !large.is_empty(),
        "an object over 64 MiB: {:?}",
        listing.iter().map(|o| (&o.key, o.size)).collect::<Vec<_>>()
    );
    let large_key = large[0].key.clone();
    assert_sealed_hiding(&setup, "enc/big", &key, &marker);

    // With the key: the source's bytes.
    let outdir = setup.scratch("restores");
    let out = outdir.join("big.db");
    assert_restores_the_bytes_of(&setup, "enc/big", &db, &out);

    // Without the key: one line naming the key id and an object, exit 1,
    // nothing written.
    let out_arg = out.to_str().unwrap();
    let o = run_on_bucket(
        &setup,
        &["restore", "--prefix", "enc/big", "-o", out_arg],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("key id {}", key.id())) && err.contains("enc/big/generations/"),
        "{err}"
    );
    assert_nothing_left(&outdir, &out);

    // A flipped bit deep inside the large object (opened ahead of its
    // decoder, on a thread of its own): the object named, exit 1, nothing
    // written.
    let file = setup.server.bucket_dir().join(&large_key);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    let at = good.len() / 3 * 2;
    bad[at] ^= 0x10;
    std::fs::write(&file, &bad).unwrap();
    drop(bad);
    let o = setup.restore("enc/big", &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(large_key.as_str()) && err.contains("authentication failed"),
        "{err}"
    );
    assert_nothing_left(&outdir, &out);
    std::fs::write(&file, &good).unwrap();
}

/// The key ids (hex) of the sealed objects of `generation` under `prefix`,
/// and how many of its objects are plain.
fn generation_keys(setup: &Setup, prefix: &str, generation: u64) -> (Vec<String>, usize) {
    let dir = format!("{prefix}/generations/{generation:016x}");
    let mut ids = Vec::new();
    let mut plain = 0;
    for (_, bytes) in bucket_files(setup, &dir) {
        match sealed_key_id(&bytes) {
            Some(id) if !ids.contains(&id) => ids.push(id),
            Some(_) => {}
            None => plain += 1,
        }
    }
    (ids, plain)
}

fn generations(storage: &S3Storage, prefix: &str) -> Vec<u64> {
    let listing = storage.list(&keys::database_root(prefix)).unwrap();
    let objs = keys::parse_listing(prefix, &listing).unwrap();
    walsync::plan::generations(&objs).keys().copied().collect()
}

#[test]
fn encryption_turned_on_rotated_retired_and_turned_off_keeps_every_point_restorable() {
    let prefix = "rot/a";
    let setup = Setup::new(&[("a.db", prefix)]);
    let (k1_path, k1) = keygen(&setup, "k1.key");
    let (k2_path, k2) = keygen(&setup, "k2.key");
    let db = setup.dir.join("a.db");
    let c = open_app(&db);
    let storage = setup.storage();
    let outdir = setup.scratch("restores");
    let out = outdir.join("r.db");
    let out_arg = out.to_str().unwrap().to_string();

    // Plain at first.
    let mut child = setup.watch("watch1.log");
    for id in 1..=100 {
        insert(&c, id);
    }
    showing_log_on_failure(&setup, "watch1.log", || wait_shipped(&storage, prefix, &db));
    let plain_rows = rows(&db);
    assert!(sigterm(&mut child).success());
    let [plain_gen] = generations(&storage, prefix)[..] else {
        panic!("one generation")
    };
    let plain_txid = walsync::restore::restore(
        &storage,
        prefix,
        &out,
        walsync::plan::Target::Latest,
        false,
        &[],
    )
    .unwrap()
    .txid;
    std::fs::remove_file(&out).unwrap();

    // Turned on (at a restart): a new generation, sealed from its snapshot on.
    setup.edit_config(|t| format!("{t}[encryption]\nkey_file = \"k1.key\"\n"));
    let mut child = setup.watch("watch2.log");
    for id in 101..=200 {
        insert(&c, id);
    }
    showing_log_on_failure(&setup, "watch2.log", || {
        wait_restorable_with(&storage, prefix, &db, std::slice::from_ref(&k1))
    });
    wait_log(&setup, "watch2.log", "encryption was turned on", 1);
    let gens = generations(&storage, prefix);
    assert_eq!(gens.len(), 2, "{gens:?}");
    let sealed_gen = gens[1];
    let (ids, plain) = generation_keys(&setup, prefix, plain_gen);
    assert!(ids.is_empty() && plain >= 2, "{ids:?} {plain}");
    assert_eq!(
        generation_keys(&setup, prefix, sealed_gen),
        (vec![k1.id().to_string()], 0)
    );
    // Across the switch: the plain generation needs no key, the sealed one
    // names its key.
    let txid = plain_txid.to_string();
    let o = run_on_bucket(
        &setup,
        &[
            "restore", "--prefix", prefix, "-o", &out_arg, "--txid", &txid,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out), plain_rows);
    std::fs::remove_file(&out).unwrap();
    let o = run_on_bucket(
        &setup,
        &["restore", "--prefix", prefix, "-o", &out_arg],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("key id {}", k1.id())), "{err}");
    assert_nothing_left(&outdir, &out);

    // Rotated (SIGHUP): the generation goes on, new objects use the new key,
    // the old ones still open with the old key.
    setup.edit_config(|t| {
        t.replace(
            "key_file = \"k1.key\"\n",
            "key_file = \"k2.key\"\nold_key_files = [\"k1.key\"]\n",
        )
    });
    signal(&child, libc::SIGHUP);
    wait_log(&setup, "watch2.log", "SIGHUP", 1);
    for id in 201..=300 {
        insert(&c, id);
    }
    showing_log_on_failure(&setup, "watch2.log", || {
        wait_restorable_with(&storage, prefix, &db, &[k2.clone(), k1.clone()])
    });
    assert_eq!(
        generations(&storage, prefix),
        gens,
        "a rotation keeps the generation"
    );
    let (ids, _) = generation_keys(&setup, prefix, sealed_gen);
    assert!(
        ids.contains(&k1.id().to_string()) && ids.contains(&k2.id().to_string()),
        "{ids:?}"
    );
    let o = run_on_bucket(
        &setup,
        &["restore", "--prefix", prefix, "-o", &out_arg],
        &[&k2_path, &k1_path],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(&out).unwrap();
    let o = run_on_bucket(
        &setup,
        &["restore", "--prefix", prefix, "-o", &out_arg],
        &[&k2_path],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("key id {}", k1.id())), "{err}");
    assert_nothing_left(&outdir, &out);
    let o = run_on_bucket(&setup, &["list", "--prefix", prefix, "--keys"], &[]);
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        listed.contains(&k1.id().to_string()) && listed.contains(&k2.id().to_string()),
        "{listed}"
    );
    assert!(sigterm(&mut child).success());

    // Retired: a snapshot with the new key, then prune; the old key is no
    // longer needed by anything in the bucket.
    let cfg = setup.config.to_str().unwrap();
    let o = setup.run(&["snapshot", "--config", cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    thread::sleep(Duration::from_millis(1100));
    let o = setup.run(&["prune", "--config", cfg, "--retention", "1s"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run_on_bucket(
        &setup,
        &["list", "--prefix", prefix, "--keys", "--json"],
        &[],
    );
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        !listed.contains(&k1.id().to_string())
            && listed.contains(&format!("\"keys\":[{{\"key_id\":\"{}\"", k2.id()))
            && listed.contains("\"plain_objects\":0"),
        "{listed}"
    );
    let o = run_on_bucket(
        &setup,
        &["restore", "--prefix", prefix, "-o", &out_arg],
        &[&k2_path],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out), rows(&db));
    std::fs::remove_file(&out).unwrap();

    // Turned off (SIGHUP while running): a new plain generation.
    let mut child = setup.watch("watch3.log");
    insert(&c, 301);
    showing_log_on_failure(&setup, "watch3.log", || {
        wait_restorable_with(&storage, prefix, &db, std::slice::from_ref(&k2))
    });
    setup.edit_config(|t| {
        t.replace(
            "[encryption]\nkey_file = \"k2.key\"\nold_key_files = [\"k1.key\"]\n",
            "",
        )
    });
    signal(&child, libc::SIGHUP);
    wait_log(&setup, "watch3.log", "SIGHUP", 1);
    for id in 302..=400 {
        insert(&c, id);
    }
    showing_log_on_failure(&setup, "watch3.log", || wait_shipped(&storage, prefix, &db));
    wait_log(&setup, "watch3.log", "encryption was turned off", 1);
    let gens = generations(&storage, prefix);
    let (ids, plain) = generation_keys(&setup, prefix, *gens.last().unwrap());
    assert!(ids.is_empty() && plain >= 1, "{ids:?} {plain}");
    assert!(sigterm(&mut child).success());
    assert_eq!(setup.restore_verified(prefix, &out), rows(&db));
}
