//! One writer per prefix across machines (README "One writer per prefix"),
//! end to end: two `watch` processes, each with its own config and its own
//! copy of a database (as two machines would have: different directories,
//! so no local `flock` is shared), replicate into the same bucket and
//! prefix of a real S3 server (s3s-fs, which honours conditional writes).
//! The second refuses the prefix naming the holder; it takes over only
//! when the holder's lease has expired (SIGKILL, another host), at once
//! when the holder gave it up (SIGTERM) or died on the same machine; and a
//! restore is always exactly one machine's rows, never a mix.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::app::{insert, integrity, rows};
use common::process::{sigterm, Running};
use common::s3server::S3Server;
use rusqlite::Connection;
use walsync::storage::s3::S3Storage;
use walsync::storage::Storage;

const PREFIX: &str = "shared/app";

/// One machine: its directory, its database, its config.
struct Machine {
    dir: PathBuf,
    db: PathBuf,
    config: PathBuf,
    /// `WALSYNC_HOSTNAME`; `None`: this host's own name.
    host: Option<&'static str>,
}

impl Machine {
    fn new(server: &S3Server, name: &str, lease_ttl: &str, host: Option<&'static str>) -> Machine {
        let dir = server.scratch_dir(name);
        let db = dir.join("app.db");
        let config = dir.join("walsync.toml");
        std::fs::write(
            &config,
            format!(
                "sync_interval = \"100ms\"\nrescan_interval = \"1s\"\nlease_ttl = \"{lease_ttl}\"\n\
                 [storage]\nbucket = \"{}\"\nendpoint = \"{}\"\n\
                 [[databases]]\npath = \"{}\"\nprefix = \"{PREFIX}\"\n",
                server.bucket,
                server.endpoint,
                db.display()
            ),
        )
        .unwrap();
        Machine {
            dir,
            db,
            config,
            host,
        }
    }

    fn command(&self, server: &S3Server) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_walsync"));
        let level = std::env::var("WALSYNC_TEST_LOG").unwrap_or_else(|_| "info".into());
        c.current_dir(&self.dir).env("RUST_LOG", level);
        for (k, v) in server.env() {
            c.env(k, v);
        }
        match self.host {
            Some(h) => c.env("WALSYNC_HOSTNAME", h),
            None => c.env_remove("WALSYNC_HOSTNAME"),
        };
        c
    }

    fn watch(&self, server: &S3Server, log: &str) -> Running {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        Running(
            self.command(server)
                .args(["watch", "--config"])
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// Restores the prefix (newest, or `extra`) into `out` with this
    /// machine's config; asserts success and `integrity_check`.
    fn restore(&self, server: &S3Server, out: &Path, extra: &[&str]) -> Vec<(i64, String)> {
        let o = self
            .command(server)
            .args(["restore", "--config"])
            .arg(&self.config)
            .args(["--prefix", PREFIX, "-o"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "restore: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(integrity(out), "ok");
        rows(out)
    }

    /// `walsync list` with this machine's config (and `extra`): its stdout.
    fn list(&self, server: &S3Server, extra: &[&str]) -> String {
        let o = self
            .command(server)
            .args(["list", "--config"])
            .arg(&self.config)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Waits (up to `limit`) for a line of log `name` holding `needle`.
    fn wait_log(&self, name: &str, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.log(name).lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                start.elapsed() < limit,
                "no line with {needle:?} in {name} after {limit:?}:\n{}",
                self.log(name)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn open_app(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=200;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )
    .unwrap();
    c
}

/// The newest restorable state of the prefix, `None` while there is none.
fn newest(storage: &S3Storage) -> Option<Vec<(i64, String)>> {
    let scratch = common::unique_temp_dir("walsync-lease-probe").join("probe.db");
    let got = walsync::restore::restore(
        storage,
        PREFIX,
        &scratch,
        walsync::plan::Target::Latest,
        false,
        &[],
    )
    .ok()
    .map(|_| rows(&scratch));
    let _ = std::fs::remove_dir_all(scratch.parent().unwrap());
    got
}

/// Waits until the newest restorable state is exactly the rows of `db`.
fn wait_restorable(storage: &S3Storage, db: &Path) {
    let start = Instant::now();
    while newest(storage).as_ref() != Some(&rows(db)) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}: not restorable after 60 s",
            db.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Commits rows `from..` one every 20 ms until `stop`; returns the last id.
fn writer(
    path: PathBuf,
    from: i64,
    stop: Arc<AtomicBool>,
    last: Arc<AtomicI64>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let c = open_app(&path);
        let mut id = from;
        while !stop.load(Ordering::Relaxed) {
            insert(&c, id);
            last.store(id, Ordering::Relaxed);
            id += 1;
            thread::sleep(Duration::from_millis(20));
        }
    })
}

/// The database file with its WAL checkpointed into it.
fn checkpointed(path: &Path) -> Vec<u8> {
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    std::fs::read(path).unwrap()
}

fn last_txid(storage: &S3Storage) -> u64 {
    let listing = storage.list(&walsync::keys::database_root(PREFIX)).unwrap();
    walsync::keys::parse_listing(PREFIX, &listing)
        .unwrap()
        .iter()
        .map(|o| o.kind.txid())
        .max()
        .unwrap()
}

#[test]
fn a_second_host_refuses_a_held_prefix_and_takes_it_over_only_after_the_lease_expired() {
    let server = S3Server::start();
    let storage = S3Storage::new(server.settings()).unwrap();
    // 6 s: long enough that the holder, writing every 20 ms and renewing
    // after 3 s, never lets it expire while it runs on a loaded machine.
    let a = Machine::new(&server, "machine-a", "6s", Some("machine-a"));
    let b = Machine::new(&server, "machine-b", "6s", Some("machine-b"));

    // Machine A: 100 commits, replicated.
    let ca = open_app(&a.db);
    for id in 1..=100 {
        insert(&ca, id);
    }
    let mut watch_a = a.watch(&server, "watch.log");
    wait_restorable(&storage, &a.db);

    // Machine B: its own copy, with other rows, and its own walsync.
    let cb = open_app(&b.db);
    for id in 1001..=1100 {
        insert(&cb, id);
    }
    let mut watch_b = b.watch(&server, "watch.log");
    let refused = b.wait_log(
        "watch.log",
        "is held by another walsync",
        Duration::from_secs(30),
    );
    assert!(
        refused.contains("ERROR")
            && refused.contains("host \"machine-a\"")
            && refused.contains(&format!("pid {}", watch_a.id()))
            && refused.contains(", since 20"),
        "{refused}"
    );
    // `list` names the holder too, on either machine.
    let listed = b.list(&server, &[]);
    let held = format!(
        "  lease: held by host \"machine-a\", pid {}, since 20",
        watch_a.id()
    );
    assert!(listed.contains(&held), "{listed}");
    let json = b.list(&server, &["--json"]);
    assert!(
        json.contains(&format!(
            "\"lease\":{{\"state\":\"held\",\"host\":\"machine-a\",\"pid\":{},",
            watch_a.id()
        )),
        "{json}"
    );

    // A goes on writing for longer than the TTL (renewing its lease);
    // B stays refused and writes nothing.
    let stop = Arc::new(AtomicBool::new(false));
    let last_a = Arc::new(AtomicI64::new(100));
    let w = writer(a.db.clone(), 101, Arc::clone(&stop), Arc::clone(&last_a));
    thread::sleep(Duration::from_secs(9));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    wait_restorable(&storage, &a.db);
    let b_log = b.log("watch.log");
    assert!(!b_log.contains("lease taken over"), "{b_log}");
    assert_eq!(
        b_log.matches("is held by another walsync").count(),
        1,
        "one ERROR line while refused:\n{b_log}"
    );
    // The holder said nothing wrong (neither the probe of conditional
    // writes nor its renewals).
    let a_log = a.log("watch.log");
    let complaints = a_log.lines().filter(|l| {
        l.contains("ERROR") || l.contains("WARN") && !l.contains("no backup in the bucket yet")
    });
    assert_eq!(complaints.count(), 0, "{a_log}");
    let a_rows = rows(&a.db);
    assert_eq!(a_rows.len() as i64, last_a.load(Ordering::Relaxed));
    let a_txid = last_txid(&storage);
    let a_out = a.dir.join("restored-a.db");
    assert_eq!(a.restore(&server, &a_out, &[]), a_rows);

    // A dies without a word: B takes the prefix over once A's lease expired.
    let killed = Instant::now();
    watch_a.kill().unwrap();
    watch_a.wait().unwrap();
    assert_eq!(
        std::fs::read(&a_out).unwrap(),
        checkpointed(&a.db),
        "A's restore is A's file"
    );
    for id in 1101..=1200 {
        insert(&cb, id);
    }
    let took = b.wait_log("watch.log", "lease taken over", Duration::from_secs(60));
    let waited = killed.elapsed();
    assert!(
        took.contains("host \"machine-a\"") && took.contains("its lease expired"),
        "{took}"
    );
    eprintln!("B took over {:.1}s after A's SIGKILL", waited.as_secs_f64());
    wait_restorable(&storage, &b.db);
    assert!(sigterm(&mut watch_b).success());

    // Newest: exactly B's rows and B's bytes. At A's last txid: exactly
    // A's, byte for byte: the histories never mix.
    let b_out = b.dir.join("restored-b.db");
    let b_rows = b.restore(&server, &b_out, &[]);
    assert_eq!(b_rows, rows(&b.db));
    assert!(b_rows.iter().all(|(id, _)| (1001..=1200).contains(id)));
    assert_eq!(std::fs::read(&b_out).unwrap(), checkpointed(&b.db));
    let a_again = b.dir.join("restored-a-again.db");
    assert_eq!(
        b.restore(&server, &a_again, &["--txid", &a_txid.to_string()]),
        a_rows
    );
    assert_eq!(
        std::fs::read(&a_again).unwrap(),
        std::fs::read(&a_out).unwrap()
    );
}

#[test]
fn on_one_machine_a_prefix_is_taken_over_at_once_after_a_clean_stop_or_the_holders_death() {
    let server = S3Server::start();
    let storage = S3Storage::new(server.settings()).unwrap();
    // An hour: any take-over seen here did not wait for expiry.
    let a = Machine::new(&server, "one", "1h", None);
    let b = Machine::new(&server, "two", "1h", None);
    let c = Machine::new(&server, "three", "1h", None);
    for (m, first) in [(&a, 1), (&b, 1001), (&c, 2001)] {
        let conn = open_app(&m.db);
        for id in first..first + 50 {
            insert(&conn, id);
        }
    }
    let mut watch_a = a.watch(&server, "watch.log");
    wait_restorable(&storage, &a.db);
    let mut watch_b = b.watch(&server, "watch.log");
    let refused = b.wait_log(
        "watch.log",
        "is held by another walsync",
        Duration::from_secs(30),
    );
    assert!(
        refused.contains(&format!("pid {}", watch_a.id())),
        "{refused}"
    );

    // A stops cleanly: it gives the lease up. B would look again when the
    // lease it read could have expired (an hour): B is started again to
    // look now, as a restored machine's walsync would start.
    assert!(sigterm(&mut watch_b).success());
    assert!(sigterm(&mut watch_a).success());
    let mut watch_b = b.watch(&server, "watch-2.log");
    let took = b.wait_log("watch-2.log", "lease taken over", Duration::from_secs(30));
    assert!(took.contains("it gave the lease up"), "{took}");
    wait_restorable(&storage, &b.db);

    // B dies: on the same machine, C sees that B's process is gone.
    let mut watch_c = c.watch(&server, "watch.log");
    let refused = c.wait_log(
        "watch.log",
        "is held by another walsync",
        Duration::from_secs(30),
    );
    assert!(
        refused.contains(&format!("pid {}", watch_b.id())),
        "{refused}"
    );
    assert!(sigterm(&mut watch_c).success());
    watch_b.kill().unwrap();
    watch_b.wait().unwrap();
    let mut watch_c = c.watch(&server, "watch-2.log");
    let took = c.wait_log("watch-2.log", "lease taken over", Duration::from_secs(30));
    assert!(took.contains("its process is gone"), "{took}");
    wait_restorable(&storage, &c.db);
    assert!(sigterm(&mut watch_c).success());
    let listed = c.list(&server, &[]);
    assert!(
        listed.contains("  lease: given up (last held by host "),
        "{listed}"
    );
    let out = c.dir.join("restored.db");
    assert_eq!(c.restore(&server, &out, &[]), rows(&c.db));
    assert_eq!(std::fs::read(&out).unwrap(), checkpointed(&c.db));
}

#[test]
fn a_holder_idle_past_its_lease_that_another_host_took_over_stops_replicating() {
    let server = S3Server::start();
    let storage = S3Storage::new(server.settings()).unwrap();
    let a = Machine::new(&server, "machine-a", "3s", Some("machine-a"));
    let b = Machine::new(&server, "machine-b", "3s", Some("machine-b"));
    let ca = open_app(&a.db);
    for id in 1..=50 {
        insert(&ca, id);
    }
    let mut watch_a = a.watch(&server, "watch.log");
    wait_restorable(&storage, &a.db);
    let cb = open_app(&b.db);
    for id in 1001..=1050 {
        insert(&cb, id);
    }
    let mut watch_b = b.watch(&server, "watch.log");
    b.wait_log(
        "watch.log",
        "is held by another walsync",
        Duration::from_secs(30),
    );

    // A writes nothing for longer than its TTL: its lease expires, and B,
    // looking again when it could have, takes the prefix over.
    let took = b.wait_log("watch.log", "lease taken over", Duration::from_secs(30));
    assert!(
        took.contains("host \"machine-a\"") && took.contains("its lease expired"),
        "{took}"
    );
    wait_restorable(&storage, &b.db);

    // A's application writes again: A, about to write, finds its lease
    // written by B and stops replicating that database, saying so; it
    // does not exit, and B's backup stays B's.
    for id in 51..=60 {
        insert(&ca, id);
    }
    let lost = a.wait_log(
        "watch.log",
        "was taken over by another walsync (host \"machine-b\"",
        Duration::from_secs(30),
    );
    assert!(lost.contains("ERROR"), "{lost}");
    assert!(watch_a.try_wait().unwrap().is_none(), "A goes on running");
    for id in 1051..=1060 {
        insert(&cb, id);
    }
    wait_restorable(&storage, &b.db);
    assert!(sigterm(&mut watch_a).success());
    assert!(sigterm(&mut watch_b).success());
    let out = b.dir.join("restored.db");
    assert_eq!(b.restore(&server, &out, &[]), rows(&b.db));
    assert_eq!(std::fs::read(&out).unwrap(), checkpointed(&b.db));
    let a_log = a.log("watch.log");
    assert_eq!(
        a_log.matches("was taken over by another walsync").count(),
        1,
        "said once:\n{a_log}"
    );
}
