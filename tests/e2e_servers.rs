//! The end-to-end core on each of the three S3 implementations the suite
//! installs (s3s-fs, moto's server, s3rver): the real binary watches a
//! real WAL-mode database while it is written, stops on SIGTERM, and
//! `restore` (newest and by txid), `list`, `verify` and `restore-all` (with
//! and without a config) read the backup back; `snapshot` and `prune`
//! replace and delete objects.
//! `tests/e2e.rs` covers far more, against s3s-fs only.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::app::{insert, integrity, rows};
use common::process::{sigterm, Running};
use common::s3servers::{AnyS3Server, ServerKind};
use rusqlite::Connection;
use walsync::storage::s3::S3Storage;
use walsync::storage::Storage;

const PREFIX: &str = "tenants/acme";

struct Setup {
    server: AnyS3Server,
    dir: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new(kind: ServerKind) -> Setup {
        let server = AnyS3Server::start(kind);
        let dir = server.scratch_dir("e2e");
        let config = dir.join("walsync.toml");
        let text = format!(
            "sync_interval = \"100ms\"\n[storage]\nbucket = \"{}\"\nendpoint = \"{}\"\n\
             [[databases]]\npath = \"app.db\"\nprefix = \"{PREFIX}\"\n",
            server.bucket, server.endpoint
        );
        std::fs::write(&config, text).expect("write the config");
        Setup {
            server,
            dir,
            config,
        }
    }

    fn name(&self) -> &'static str {
        self.server.kind.name()
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_walsync"));
        c.current_dir(&self.dir).env("RUST_LOG", "info");
        for (k, v) in self.server.env() {
            c.env(k, v);
        }
        c
    }

    fn watch(&self) -> Running {
        let log = std::fs::File::create(self.dir.join("watch.log")).expect("log file");
        let log_err = log.try_clone().expect("log file handle");
        Running(
            self.command()
                .args(["watch", "--config"])
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .expect("run walsync watch"),
        )
    }

    /// Runs walsync with `args` after `--config`; asserts it succeeded and
    /// returns its standard output.
    fn run_ok(&self, command: &str, args: &[&str]) -> String {
        self.run_ok_with_stderr(command, args).0
    }

    /// `run_ok`, with what the command wrote to stderr.
    fn run_ok_with_stderr(&self, command: &str, args: &[&str]) -> (String, String) {
        let o: Output = self
            .command()
            .arg(command)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run walsync");
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            o.status.success(),
            "{}: walsync {command} {args:?}: {stdout}{stderr}\nwatch log:\n{}",
            self.name(),
            self.watch_log()
        );
        (stdout, stderr)
    }

    fn restore(&self, out: &Path, extra: &[&str]) -> String {
        let mut args = vec!["--prefix", PREFIX, "-o", out.to_str().expect("UTF-8 path")];
        args.extend_from_slice(extra);
        self.run_ok("restore", &args)
    }

    fn watch_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("watch.log")).unwrap_or_default()
    }

    /// Waits until a restore of the newest point has exactly the rows of
    /// `db`.
    fn wait_restorable(&self, db: &Path) {
        let storage = S3Storage::new(self.server.settings()).expect("settings");
        let probe = self.server.scratch_dir("probe").join("probe.db");
        let start = Instant::now();
        loop {
            let _ = std::fs::remove_file(&probe);
            let restored = walsync::restore::restore(
                &storage,
                PREFIX,
                &probe,
                walsync::plan::Target::Latest,
                false,
                &[],
            );
            if restored.is_ok() && rows(&probe) == rows(db) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{}: not caught up after 120 s ({restored:?}); watch log:\n{}",
                self.name(),
                self.watch_log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The txid a `restore` says it restored to ("... txid 303 (...").
fn restored_txid(stdout: &str) -> u64 {
    stdout
        .split_once(": txid ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no txid in {stdout:?}"))
}

/// A second `watch` as another machine would run it (its own config and
/// copy of the database, another host name) on the same prefix: refused,
/// naming the holder, while the first holds the lease.
fn second_machine_is_refused(setup: &Setup) {
    let name = setup.name();
    let dir = setup.server.scratch_dir("other-machine");
    let config = dir.join("walsync.toml");
    let text = std::fs::read_to_string(&setup.config).expect("the config");
    std::fs::write(&config, text).expect("write the config");
    let c = Connection::open(dir.join("app.db")).expect("open the other database");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )
    .expect("create the table");
    insert(&c, 9999);
    let log_path = dir.join("watch.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut other = Running(
        setup
            .command()
            .current_dir(&dir)
            .env("WALSYNC_HOSTNAME", "other-machine")
            .args(["watch", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log)
            .spawn()
            .expect("run walsync watch"),
    );
    let start = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("is held by another walsync (host ") {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name}: the second machine was not refused:\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(sigterm(&mut other).success(), "{name}");
    assert!(!text.contains("lease taken"), "{name}: {text}");
}

#[test]
fn watch_restore_and_verify_on_every_server() {
    for kind in ServerKind::ALL {
        let setup = Setup::new(kind);
        let name = setup.name();
        let db = setup.dir.join("app.db");
        let c = Connection::open(&db).expect("open the database");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=200;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        )
        .expect("create the table");
        for id in 1..=50 {
            insert(&c, id);
        }
        let mut child = setup.watch();
        for id in 51..=150 {
            insert(&c, id);
        }
        setup.wait_restorable(&db);
        let first = setup.dir.join("first.db");
        let txid = restored_txid(&setup.restore(&first, &[]));
        assert_eq!(rows(&first).len(), 150, "{name}");
        if kind.honours_conditional_writes() {
            second_machine_is_refused(&setup);
        }

        // One transaction of 2,000 rows (about 2 MiB of pages), then more
        // single-row commits.
        c.execute_batch("BEGIN").expect("begin");
        for id in 151..=2150 {
            insert(&c, id);
        }
        c.execute_batch("COMMIT").expect("commit");
        for id in 2151..=2200 {
            insert(&c, id);
        }
        // One transaction over the 64 MiB multipart threshold (70 rows of
        // 1 MiB of random hex, which LZ4 cannot shrink much): its segment
        // goes up as a multipart upload, each part with its checksum.
        c.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 2201 UNION ALL SELECT i + 1 FROM n WHERE i < 2270)
             INSERT INTO t(id, v) SELECT i, hex(randomblob(524288)) FROM n;",
        )
        .expect("a multipart-sized transaction");
        for id in 2271..=2280 {
            insert(&c, id);
        }
        setup.wait_restorable(&db);
        assert!(
            sigterm(&mut child).success(),
            "{name}: {}",
            setup.watch_log()
        );
        // The lease where the server honours conditional writes; else one
        // warning, and replication as without leases.
        let log = setup.watch_log();
        let warned = log.matches("walsync goes on without leases").count();
        if kind.honours_conditional_writes() {
            assert!(
                log.contains(&format!("{PREFIX}: lease taken")),
                "{name}: {log}"
            );
            assert_eq!(warned, 0, "{name}: {log}");
        } else {
            assert!(!log.contains("lease taken"), "{name}: {log}");
            assert_eq!(warned, 1, "{name}: {log}");
            assert!(
                log.contains("ignores If-None-Match: * and If-Match"),
                "{name}: {log}"
            );
        }

        let latest = setup.dir.join("latest.db");
        setup.restore(&latest, &[]);
        assert_eq!(rows(&latest), rows(&db), "{name}");
        assert_eq!(integrity(&latest), "ok", "{name}");

        let at_txid = setup.dir.join("at-txid.db");
        let stdout = setup.restore(&at_txid, &["--txid", &txid.to_string()]);
        assert_eq!(restored_txid(&stdout), txid, "{name}");
        assert_eq!(rows(&at_txid), rows(&first), "{name}");

        let (listed, list_err) = setup.run_ok_with_stderr("list", &[]);
        assert!(listed.contains(PREFIX), "{name}: {listed}");
        let (verified, verify_err) = setup.run_ok_with_stderr("verify", &[]);
        assert!(verified.contains("1 ok, 0 failed"), "{name}: {verified}");
        // What each server checks of uploads is found out by the probe
        // (a wrong CRC32 on purpose), not assumed: reported on stderr by
        // list and verify (stdout stays one line per database) and in
        // watch's log, and the probe deleted.
        let report = if kind.checks_crc32() {
            "uploads: the server checks every upload's x-amz-checksum-crc32"
        } else {
            "uploads: the server does not check upload checksums"
        };
        for err in [&list_err, &verify_err] {
            assert!(err.contains(report), "{name}: {err}");
        }
        assert!(!listed.contains("uploads:"), "{name}: {listed}");
        let log = setup.watch_log();
        assert_eq!(
            log.matches(report).count(),
            1,
            "{name}: once, at start: {log}"
        );
        let storage = S3Storage::new(setup.server.settings()).expect("settings");
        let listing = storage.list("").expect("list the bucket");
        let keys: Vec<&str> = listing
            .iter()
            .map(|o| o.key.as_str())
            .filter(|k| k.contains("probe"))
            .collect();
        assert!(keys.is_empty(), "{name}: the probe is deleted: {keys:?}");
        assert!(
            listing
                .iter()
                .any(|o| o.key.ends_with(".seg") && o.size > 64 << 20),
            "{name}: a segment over the multipart threshold: {:?}",
            listing.iter().map(|o| (&o.key, o.size)).collect::<Vec<_>>()
        );

        // restore-all from the config, and from the bucket alone.
        let all = setup.server.scratch_dir("all");
        let summary = setup.run_ok(
            "restore-all",
            &["--output-dir", all.to_str().expect("UTF-8")],
        );
        assert!(summary.contains("1 ok, 0 failed"), "{name}: {summary}");
        assert_eq!(rows(&all.join(format!("{PREFIX}.db"))), rows(&db), "{name}");
        let bare = setup.server.scratch_dir("bare");
        let o = setup
            .command()
            .args(["restore-all", "--bucket", &setup.server.bucket])
            .args(["--endpoint", &setup.server.endpoint, "--output-dir"])
            .arg(&bare)
            .output()
            .expect("run walsync restore-all");
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            rows(&bare.join(format!("{PREFIX}.db"))),
            rows(&db),
            "{name}"
        );

        // A new snapshot makes everything before it unneeded once it is
        // older than the window: prune deletes it, and the newest point
        // still restores.
        setup.run_ok("snapshot", &[]);
        let storage = S3Storage::new(setup.server.settings()).expect("settings");
        let before = storage.list(&format!("{PREFIX}/")).expect("list").len();
        thread::sleep(Duration::from_millis(1500));
        setup.run_ok("prune", &["--retention", "1s"]);
        let after = storage.list(&format!("{PREFIX}/")).expect("list").len();
        assert!(
            after < before,
            "{name}: {before} objects before prune, {after} after"
        );
        let pruned = setup.dir.join("pruned.db");
        setup.restore(&pruned, &[]);
        assert_eq!(rows(&pruned), rows(&db), "{name}");
    }
}
