//! Library-level replication tests on a local directory target: a real
//! SQLite database in WAL mode, written between `Replica::sync` calls, with
//! the application's own checkpoints of every mode, then restored and
//! compared. (The same paths against the real S3 server, through the real
//! binary, are in `tests/e2e.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::app::{app_checkpoint, rows};
use rusqlite::Connection;
use walsync::plan::Target;
use walsync::replica::{Replica, ReplicaOptions, SyncReport};
use walsync::restore::{restore, RestoreError};
use walsync::storage::dir::DirStorage;
use walsync::storage::Storage;

fn temp_dir(name: &str) -> PathBuf {
    common::unique_temp_dir(&format!("walsync-lib-{name}"))
}

fn options(db: &Path, prefix: &str, spool: &Path) -> ReplicaOptions {
    ReplicaOptions {
        path: db.to_path_buf(),
        prefix: prefix.to_string(),
        snapshot_interval: Duration::from_secs(3600),
        checkpoint_threshold: 64 * 1024,
        truncate_threshold: 512 * 1024,
        max_segment_bytes: 256 * 1024,
        spool_dir: spool.to_path_buf(),
        retention: None,
        keys: Default::default(),
    }
}

fn app(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )
    .unwrap();
    c
}

/// Restores prefix `p` (newest) to `out` and returns its rows.
fn restored_rows(storage: &DirStorage, out: &Path) -> Vec<(i64, String)> {
    restore(storage, "p", out, Target::Latest, false, &[]).unwrap();
    rows(out)
}

/// A sync and, if it left the WAL unbackfilled because the application was
/// writing (`settle_deferred`), the one the scheduler runs a sync interval
/// later, which finds nothing new and settles: walsync has caught up.
/// Returns the first one's report.
fn sync_caught_up(r: &mut Replica, storage: &DirStorage) -> SyncReport {
    let rep = r.sync(storage, false).unwrap();
    if rep.settle_deferred {
        let again = r.sync(storage, false).unwrap();
        assert!(
            again.commits == 0 && !again.settle_deferred,
            "the follow-up sync settles: {again:?}"
        );
    }
    rep
}

fn insert(c: &Connection, from: i64, n: i64) {
    for i in from..from + n {
        c.execute(
            "INSERT INTO t(id, v) VALUES (?1, ?2)",
            (i, format!("row {i} {}", "x".repeat((i % 50) as usize))),
        )
        .unwrap();
    }
}

#[test]
fn replicate_through_every_checkpoint_mode_and_restore() {
    let dir = temp_dir("modes");
    let db = dir.join("app.db");
    let storage = DirStorage::new(&dir.join("bucket")).unwrap();
    let c = app(&db);
    c.execute_batch("PRAGMA wal_autocheckpoint=100").unwrap();
    let mut r = Replica::new(options(&db, "apps/one", &dir));
    let first = r.sync(&storage, false).unwrap();
    assert!(first.new_generation && first.snapshot);

    let mut next = 1;
    for (round, mode) in ["PASSIVE", "FULL", "RESTART", "TRUNCATE", "PASSIVE"]
        .iter()
        .enumerate()
    {
        insert(&c, next, 200);
        next += 200;
        let report = r.sync(&storage, false).unwrap();
        assert!(report.commits >= 1, "round {round}: {report:?}");
        assert!(!report.new_generation, "round {round}: {report:?}");
        // The application's checkpoint; walsync's read lock stops RESTART and
        // TRUNCATE from restarting the WAL, so they may report busy.
        let _ = c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
        insert(&c, next, 50);
        next += 50;
        let report = r.sync(&storage, false).unwrap();
        assert!(
            !report.new_generation,
            "round {round} after {mode}: {report:?}"
        );
    }
    let out = dir.join("restored.db");
    let rep = restore(&storage, "apps/one", &out, Target::Latest, false, &[]).unwrap();
    assert_eq!(rows(&out), rows(&db));
    assert_eq!(rep.txid, r.last_txid());

    // Point in time by txid: every earlier txid restores a prefix of the rows.
    let out2 = dir.join("at.db");
    restore(&storage, "apps/one", &out2, Target::Txid(3), false, &[]).unwrap();
    let n = rows(&out2).len();
    assert!(n > 0 && n < rows(&db).len());
    assert!(
        restore(&storage, "apps/one", &out2, Target::Latest, false, &[]).is_err(),
        "refuses to overwrite"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_applications_restart_and_truncate_succeed_once_walsync_has_caught_up() {
    let dir = temp_dir("caught-up");
    let db = dir.join("app.db");
    let storage = DirStorage::new(&dir.join("bucket")).unwrap();
    let c = app(&db);
    c.execute_batch("PRAGMA busy_timeout=100").unwrap();
    // No sync point of walsync's own (which leaves it at read mark 0 too):
    // only the syncs that ship.
    let mut opts = options(&db, "p", &dir);
    opts.checkpoint_threshold = 64 << 20;
    opts.truncate_threshold = 128 << 20;
    let mut r = Replica::new(opts);
    assert!(r.sync(&storage, false).unwrap().new_generation);
    let mut next = 1;
    for (round, mode) in ["RESTART", "TRUNCATE", "RESTART", "TRUNCATE", "TRUNCATE"]
        .iter()
        .enumerate()
    {
        insert(&c, next, 30);
        next += 30;
        // Not shipped yet: walsync's read mark keeps every frame in the
        // WAL, whatever the mode.
        let (busy, log, _) = app_checkpoint(&c, mode);
        assert_eq!(
            (busy, log > 0),
            (1, true),
            "round {round}: {mode} before the sync"
        );
        let rep = sync_caught_up(&mut r, &storage);
        assert_eq!(rep.commits, 30, "round {round}: {rep:?}");
        assert!(!rep.new_generation, "round {round}: {rep:?}");
        // Caught up (the application paused and walsync synced since): the
        // application's checkpoint goes through, as it would without
        // walsync.
        let (busy, log, done) = app_checkpoint(&c, mode);
        assert_eq!(
            (busy, log),
            (0, done),
            "round {round}: {mode} after the sync"
        );
        if *mode == "TRUNCATE" {
            let wal = std::fs::metadata(dir.join("app.db-wal")).unwrap().len();
            assert_eq!(wal, 0, "round {round}: TRUNCATE empties the WAL");
        }
        let out = dir.join(format!("r{round}.db"));
        assert_eq!(restored_rows(&storage, &out), rows(&db), "round {round}");
    }
    // Nothing the application did since is lost: the next commits restart
    // the WAL walsync let go of, and ship.
    insert(&c, next, 5);
    let rep = r.sync(&storage, false).unwrap();
    assert_eq!((rep.commits, rep.new_generation), (5, false), "{rep:?}");
    assert_eq!(restored_rows(&storage, &dir.join("last.db")), rows(&db));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn restart_of_walsync_resumes_or_starts_new_generation() {
    let dir = temp_dir("resume");
    let db = dir.join("app.db");
    let storage = DirStorage::new(&dir.join("bucket")).unwrap();
    let c = app(&db);
    c.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    let mut r = Replica::new(options(&db, "p", &dir));
    insert(&c, 1, 10);
    r.sync(&storage, false).unwrap();
    insert(&c, 11, 10);
    r.sync(&storage, false).unwrap();
    r.stop(&storage).unwrap();
    r.close();

    // Written while walsync is stopped, no checkpoint: the WAL (restarted
    // by the first write, since walsync left it backfilled) follows the
    // database file walsync left, as its stop mark proves.
    insert(&c, 21, 10);
    let mut r = Replica::new(options(&db, "p", &dir));
    let rep = r.sync(&storage, false).unwrap();
    assert!(!rep.new_generation, "{rep:?}");
    assert!(rep.commits >= 10);
    r.stop(&storage).unwrap();
    r.close();

    // Written and checkpointed with a WAL restart while walsync is stopped.
    insert(&c, 31, 10);
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    insert(&c, 41, 10);
    let mut r = Replica::new(options(&db, "p", &dir));
    let rep = r.sync(&storage, false).unwrap();
    assert!(rep.new_generation, "{rep:?}");
    insert(&c, 51, 10);
    r.sync(&storage, false).unwrap();

    let got = restored_rows(&storage, &dir.join("restored.db"));
    assert_eq!(got, rows(&db));
    assert_eq!(got.len(), 60);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn restore_never_lets_a_stale_wal_beside_the_output_change_it() {
    let dir = temp_dir("stale-wal");
    let db = dir.join("app.db");
    let storage = DirStorage::new(&dir.join("bucket")).unwrap();
    let c = app(&db);
    insert(&c, 1, 20);
    let mut r = Replica::new(options(&db, "p", &dir));
    r.sync(&storage, false).unwrap();

    // Another database, with committed rows still in its WAL, at the output path.
    let other = dir.join("other.db");
    let oc = app(&other);
    oc.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    insert(&oc, 1000, 50);
    let out = dir.join("out.db");
    std::fs::copy(&other, &out).unwrap();
    std::fs::copy(dir.join("other.db-wal"), dir.join("out.db-wal")).unwrap();
    // (Not opened here: closing the last connection would fold the WAL in.)

    // Without --force: refused, and the -wal is named.
    let e = restore(&storage, "p", &out, Target::Latest, false, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    std::fs::rename(&out, dir.join("moved.db")).unwrap();
    let e = restore(&storage, "p", &out, Target::Latest, false, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("out.db-wal") && e.contains("--force"), "{e}");

    // With --force: the stale WAL goes with the old file, the rows are ours.
    restore(&storage, "p", &out, Target::Latest, true, &[]).unwrap();
    assert!(!dir.join("out.db-wal").exists());
    assert_eq!(rows(&out), rows(&db));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_idle_database_is_not_checkpointed_again_and_again() {
    let dir = temp_dir("idle");
    let db = dir.join("app.db");
    let storage = DirStorage::new(&dir.join("bucket")).unwrap();
    let c = app(&db);
    c.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    // A WAL between the two thresholds: checkpointed, never truncated.
    let mut opts = options(&db, "p", &dir);
    opts.truncate_threshold = 64 << 20;
    let mut r = Replica::new(opts);
    r.sync(&storage, false).unwrap();
    insert(&c, 1, 300); // well past the 64 KiB checkpoint threshold
    let rep = r.sync(&storage, false).unwrap();
    assert!(rep.checkpointed, "{rep:?}");
    let wal = std::fs::metadata(dir.join("app.db-wal")).unwrap().len();
    assert!(wal >= 64 * 1024, "the WAL file keeps its size: {wal}");
    for _ in 0..5 {
        let rep = r.sync(&storage, false).unwrap();
        assert!(
            !rep.checkpointed && rep.commits == 0,
            "idle sync did work: {rep:?}"
        );
    }
    // New commits start a restarted WAL; they are shipped and restorable.
    insert(&c, 301, 10);
    let rep = r.sync(&storage, false).unwrap();
    assert_eq!(rep.commits, 10);
    assert!(!rep.new_generation);
    assert_eq!(restored_rows(&storage, &dir.join("r.db")), rows(&db));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn commits_before_a_stale_wal_tail_ship_and_restore() {
    let dir = temp_dir("stale-tail");
    let db = dir.join("app.db");
    let storage = DirStorage::new(&dir.join("bucket")).unwrap();
    let c = app(&db);
    c.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    // Thresholds far apart: 64 KiB to checkpoint, 512 KiB to truncate.
    let mut r = Replica::new(options(&db, "p", &dir));
    r.sync(&storage, false).unwrap();
    // One big transaction, shipped and checkpointed; the WAL file stays
    // large under the truncate threshold, so it is restarted, not truncated.
    c.execute_batch("BEGIN").unwrap();
    insert(&c, 1, 3000);
    c.execute_batch("COMMIT").unwrap();
    let rep = r.sync(&storage, false).unwrap();
    assert!(rep.checkpointed, "{rep:?}");
    let big = std::fs::metadata(dir.join("app.db-wal")).unwrap().len();
    assert!(big > 64 * 1024 && big < 512 * 1024, "{big}");
    // Small commits now go to the start of the restarted WAL, before the
    // stale tail; each sync reads what is new and stops at the tail.
    for round in 0..3 {
        insert(&c, 10_000 + round * 10, 10);
        let rep = r.sync(&storage, false).unwrap();
        assert_eq!(rep.commits, 10, "round {round}: {rep:?}");
        assert!(!rep.new_generation, "round {round}: {rep:?}");
    }
    assert_eq!(restored_rows(&storage, &dir.join("r.db")), rows(&db));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_database_file_longer_than_its_pages_snapshots_its_pages() {
    let dir = temp_dir("chunk");
    let db = dir.join("app.db");
    let storage = DirStorage::new(&dir.join("bucket")).unwrap();
    let c = app(&db);
    // The application grows its file in 1 MiB chunks (SQLITE_FCNTL_CHUNK_SIZE).
    let mut chunk: std::os::raw::c_int = 1 << 20;
    // SAFETY: a file-control call on a live connection, with a valid pointer.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            c.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_CHUNK_SIZE,
            (&mut chunk as *mut std::os::raw::c_int).cast(),
        )
    };
    assert_eq!(rc, 0);
    insert(&c, 1, 30);
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let len = std::fs::metadata(&db).unwrap().len();
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let pages = pages as u64;
    assert!(
        len > pages * 4096,
        "the file ({len}) is longer than its {pages} pages"
    );
    let mut r = Replica::new(options(&db, "p", &dir));
    assert!(r.sync(&storage, false).unwrap().snapshot);
    assert_eq!(restored_rows(&storage, &dir.join("r.db")), rows(&db));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_object_in_the_bucket_does_not_stop_replication() {
    let dir = temp_dir("bad-object");
    let db = dir.join("app.db");
    let bucket = dir.join("bucket");
    let storage = DirStorage::new(&bucket).unwrap();
    let c = app(&db);
    c.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    let mut r = Replica::new(options(&db, "p", &dir));
    r.sync(&storage, false).unwrap();
    insert(&c, 1, 10);
    r.sync(&storage, false).unwrap();
    r.close();
    // The newest segment is damaged, and a stranger wrote under generations/.
    let segs: Vec<_> = walsync::storage::Storage::list(&storage, "p/")
        .unwrap()
        .into_iter()
        .filter(|o| o.key.ends_with(".seg"))
        .collect();
    let newest = bucket.join(&segs.last().unwrap().key);
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    std::fs::write(bucket.join("p/generations/junk.txt"), b"x").unwrap();

    insert(&c, 11, 10);
    let mut r = Replica::new(options(&db, "p", &dir));
    let rep = r.sync(&storage, false).unwrap();
    assert!(rep.new_generation, "{rep:?}");
    insert(&c, 21, 10);
    r.sync(&storage, false).unwrap();
    // Restore names the stranger's key, leaves it alone and is whole.
    let out = dir.join("r.db");
    let report = restore(&storage, "p", &out, Target::Latest, false, &[]).unwrap();
    let stray: Vec<_> = report.stray.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(stray, ["p/generations/junk.txt"]);
    assert!(bucket.join("p/generations/junk.txt").exists());
    assert_eq!(rows(&out), rows(&db));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A WAL-mode database without autocheckpoint, a directory target, and a
/// replica that has taken its first snapshot.
fn started(name: &str) -> (PathBuf, PathBuf, DirStorage, Connection, Replica) {
    let dir = temp_dir(name);
    let db = dir.join("app.db");
    let storage = DirStorage::new(&dir.join("bucket")).unwrap();
    let c = app(&db);
    c.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
    let mut r = Replica::new(options(&db, "p", &dir));
    r.sync(&storage, false).unwrap();
    (dir, db, storage, c, r)
}

/// The wal-index header of a database's `-shm` file: (frames in the WAL,
/// frames backfilled into the database file).
fn wal_index(db: &Path) -> (u32, u32) {
    let b = std::fs::read(format!("{}-shm", db.display())).unwrap();
    let word = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
    (word(16), word(96))
}

#[test]
fn a_sync_while_the_application_writes_leaves_the_wal_to_the_sync_after_it_pauses() {
    let (dir, db, storage, c, mut r) = started("cadence");
    // Shipped right after the commits: the application is writing, so the
    // sync neither moves walsync's mark nor backfills (no fsync of the
    // application's files), and asks for one more sync.
    insert(&c, 1, 5);
    let rep = r.sync(&storage, false).unwrap();
    assert_eq!(rep.commits, 5);
    assert!(rep.settle_deferred && !rep.checkpointed, "{rep:?}");
    let (frames, backfilled) = wal_index(&db);
    assert!(frames > 0 && backfilled < frames, "{frames} {backfilled}");
    // Every commit is in the bucket all the same.
    assert_eq!(restored_rows(&storage, &dir.join("r1.db")), rows(&db));
    // The next sync finds nothing new: the application has paused, the WAL
    // is backfilled and walsync rests at mark 0, so the application's
    // TRUNCATE goes through.
    let rep = r.sync(&storage, false).unwrap();
    assert!(rep.commits == 0 && !rep.settle_deferred, "{rep:?}");
    let (frames, backfilled) = wal_index(&db);
    assert_eq!(backfilled, frames);
    assert_eq!(app_checkpoint(&c, "TRUNCATE").0, 0);
    // The application's next commits restart the WAL walsync left at
    // rest: a continuation, not a gap. (Without the watcher's times, as
    // here, a commit is dated when a sync reads it, so it is the sync after
    // that sees the pause.)
    insert(&c, 100, 5);
    let rep = sync_caught_up(&mut r, &storage);
    assert!(rep.commits == 5 && !rep.new_generation, "{rep:?}");
    assert_eq!(restored_rows(&storage, &dir.join("r2.db")), rows(&db));
    assert!(!r.sync(&storage, false).unwrap().new_generation);
    r.close();
    std::fs::remove_dir_all(dir).unwrap();
}

/// A database with 20 rows, replicated, then released as idle.
fn released(name: &str) -> (PathBuf, PathBuf, DirStorage, Connection, Replica) {
    let (dir, db, storage, c, mut r) = started(name);
    insert(&c, 1, 20);
    r.sync(&storage, false).unwrap();
    assert!(r.release(&storage, 1 << 30).unwrap().is_some(), "released");
    (dir, db, storage, c, r)
}

/// Releases an idle database, lets `meanwhile` act as the application, then
/// wakes walsync up; returns whether that started a new generation, after
/// checking that every row restores.
fn release_then(name: &str, meanwhile: impl FnOnce(&Connection)) -> bool {
    let (dir, db, storage, c, mut r) = released(name);
    assert!(r.is_released() && !r.is_live());
    // Released, walsync still holds the file: a second handle is refused.
    assert!(walsync::sqlite::DbHandle::open(&db, Duration::from_secs(1)).is_err());
    meanwhile(&c);
    let rep = r.sync(&storage, false).unwrap();
    assert!(r.is_live());
    insert(&c, 10_000, 5);
    r.sync(&storage, false).unwrap();
    let out = dir.join("r.db");
    restore(&storage, "p", &out, Target::Latest, false, &[]).unwrap();
    assert_eq!(
        rows(&out),
        rows(&db),
        "{name}: every committed row restores"
    );
    r.close();
    std::fs::remove_dir_all(dir).unwrap();
    rep.new_generation
}

#[test]
fn an_idle_database_is_released_and_woken_without_losing_anything() {
    // Nothing happened: the same generation goes on.
    assert!(!release_then("rel-idle", |_| {}));
    // The application wrote (a restarted WAL) without checkpointing: the
    // database file still has its fingerprint, so the new WAL is all new.
    assert!(!release_then("rel-append", |c| insert(c, 100, 30)));
    // The application appended, checkpointed and restarted the WAL: the
    // file changed in a way walsync cannot follow, so a new generation.
    assert!(release_then("rel-restart", |c| {
        insert(c, 100, 30);
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        insert(c, 200, 30);
    }));
    // Appended and backfilled (PASSIVE), not restarted: the database file
    // changed, but the WAL is the one that came next after walsync emptied
    // it, from frame 1: the same generation goes on.
    assert!(!release_then("rel-passive", |c| {
        insert(c, 100, 30);
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
    }));
}

#[test]
fn a_transaction_larger_than_memory_segments_is_spooled_and_restores() {
    let (dir, db, storage, c, mut r) = started("bigtxn");
    // One transaction of about 20 MiB of WAL (more than segments kept in memory).
    c.execute_batch("BEGIN").unwrap();
    for i in 0..80 {
        c.execute(
            "INSERT INTO t(id, v) VALUES (?1, ?2)",
            (i, "y".repeat(250_000)),
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    let rep = r.sync(&storage, false).unwrap();
    assert_eq!((rep.commits, rep.segments), (1, 1), "{rep:?}");
    // The spool file is gone after the upload.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("walsync-segment")
        })
        .collect();
    assert!(leftovers.is_empty());
    assert_eq!(restored_rows(&storage, &dir.join("r.db")), rows(&db));
    r.close();
    std::fs::remove_dir_all(dir).unwrap();
}

/// An idle mark left at release lets a new process resume after the
/// application restarted the WAL, as long as the database file is unchanged.
fn restart_after_idle(name: &str, meanwhile: impl FnOnce(&Connection)) -> bool {
    let (dir, db, storage, c, mut r) = released(name);
    let marks = walsync::storage::Storage::list(&storage, "p/")
        .unwrap()
        .into_iter()
        .filter(|o| o.key.ends_with(".mark"))
        .count();
    assert_eq!(marks, 1, "the release left an idle mark");
    r.close(); // the process ends
    meanwhile(&c);
    let mut r = Replica::new(options(&db, "p", &dir));
    let rep = r.sync(&storage, false).unwrap();
    insert(&c, 10_000, 5);
    r.sync(&storage, false).unwrap();
    let out = dir.join("r.db");
    restore(&storage, "p", &out, Target::Latest, false, &[]).unwrap();
    assert_eq!(
        rows(&out),
        rows(&db),
        "{name}: every committed row restores"
    );
    // Restore ignores marks; a point before the restart still restores.
    let out2 = dir.join("r2.db");
    restore(&storage, "p", &out2, Target::Txid(2), false, &[]).unwrap();
    r.close();
    std::fs::remove_dir_all(dir).unwrap();
    rep.new_generation
}

#[test]
fn a_restart_after_an_idle_release_resumes_when_the_file_is_unchanged() {
    assert!(!restart_after_idle("mark-append", |c| insert(c, 100, 30)));
    assert!(restart_after_idle("mark-checkpointed", |c| {
        insert(c, 100, 30);
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
    }));
}

#[test]
fn local_lag_counts_the_commits_not_yet_shipped() {
    let (dir, db, storage, c, mut r) = started("lag");
    insert(&c, 1, 30);
    r.sync(&storage, false).unwrap();
    let lag = walsync::replica::local_lag(&storage, "p", &storage.list("p/").unwrap(), &db, &[])
        .unwrap()
        .unwrap();
    assert_eq!(lag.commits, 0);
    insert(&c, 40, 7);
    let lag = walsync::replica::local_lag(&storage, "p", &storage.list("p/").unwrap(), &db, &[])
        .unwrap()
        .unwrap();
    assert_eq!(lag.commits, 7);
    assert!(lag.wal_bytes >= 7 * 4096);
    sync_caught_up(&mut r, &storage);
    assert_eq!(
        walsync::replica::local_lag(&storage, "p", &storage.list("p/").unwrap(), &db, &[])
            .unwrap()
            .unwrap()
            .commits,
        0
    );
    // walsync caught up and let the next commit begin the WAL again: its
    // commits count as long as the old frames after the backup's position
    // are still there to show that the old WAL ended at it.
    insert(&c, 100, 5);
    let lag = || walsync::replica::local_lag(&storage, "p", &storage.list("p/").unwrap(), &db, &[]);
    assert_eq!(lag().unwrap().unwrap().commits, 5);
    insert(&c, 200, 40);
    assert_eq!(lag().unwrap(), None, "the new WAL grew over the old one");
    r.close();
    std::fs::remove_dir_all(dir).unwrap();
}

/// A snapshot and segments of several MiB that do not compress come back
/// through the parallel ranged downloads (4 MiB ranges) byte for byte, also
/// to a transaction in the middle.
#[test]
fn a_large_incompressible_database_restores_through_ranged_downloads() {
    let (dir, db, storage, c, mut r) = started("ranged");
    let blob = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?3)
                INSERT INTO t(id, v) SELECT ?1 + i, hex(randomblob(?2)) FROM n";
    // About 12 MiB of random hex: a snapshot of three and more ranges.
    c.execute(blob, (0, 64 * 1024, 96)).unwrap();
    let rep = r.sync(&storage, true).unwrap();
    assert!(rep.snapshot, "{rep:?}");
    let objects = storage_objects(&storage, "snapshots/");
    assert!(
        objects.iter().any(|o| o.size > 8 << 20),
        "a snapshot over two ranges: {objects:?}"
    );
    // Then segments: one of about 5 MiB, and small ones.
    c.execute(blob, (1000, 64 * 1024, 40)).unwrap();
    r.sync(&storage, false).unwrap();
    let middle = rows(&db);
    let middle_txid = r.last_txid();
    for i in 0..5 {
        c.execute(blob, (2000 + i * 10, 1000, 10)).unwrap();
        r.sync(&storage, false).unwrap();
    }
    assert!(
        restored_rows(&storage, &dir.join("latest.db")) == rows(&db),
        "latest restore differs"
    );
    let out = dir.join("middle.db");
    restore(&storage, "p", &out, Target::Txid(middle_txid), false, &[]).unwrap();
    assert!(
        rows(&out) == middle,
        "restore to txid {middle_txid} differs"
    );
    r.close();
    std::fs::remove_dir_all(dir).unwrap();
}

fn storage_objects(storage: &DirStorage, kind: &str) -> Vec<walsync::storage::ObjectMeta> {
    use walsync::storage::Storage;
    let all = storage.list("p/").unwrap();
    all.into_iter().filter(|o| o.key.contains(kind)).collect()
}

/// The restored database's `PRAGMA integrity_check` (restore verifies every
/// restore), or the restore's error if it failed verification.
fn restore_check(storage: &DirStorage, out: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(out);
    match restore(storage, "p", out, Target::Latest, false, &[]) {
        Ok(_) => Ok(()),
        Err(RestoreError::Verify { detail, .. }) => Err(detail),
        Err(e) => panic!("restore failed before verification: {e}"),
    }
}

/// User databases may use the SQLite extensions compiled into walsync's
/// bundled SQLite (FTS3/4, FTS5, R-Tree, JSON functions in CHECK constraints,
/// generated columns and expression indexes, soundex). A restore of such a
/// database must verify, and the verification must still see inside them:
/// each kind of damage below makes the restore fail. Guards the SQLite
/// compile options in .cargo/config.toml.
#[test]
fn databases_using_sqlite_extensions_restore_and_verify() {
    let (dir, _db, storage, c, mut r) = started("extensions");
    c.execute_batch(
        "CREATE VIRTUAL TABLE docs USING fts5(title, body);
         CREATE VIRTUAL TABLE notes USING fts4(body);
         CREATE VIRTUAL TABLE boxes USING rtree(id, min_x, max_x, min_y, max_y);
         CREATE TABLE events(
             id INTEGER PRIMARY KEY,
             doc TEXT NOT NULL CHECK (json_valid(doc)),
             kind TEXT GENERATED ALWAYS AS (json_extract(doc, '$.kind')) VIRTUAL,
             who TEXT NOT NULL
         );
         CREATE INDEX events_user ON events(json_extract(doc, '$.user'));
         CREATE INDEX events_kind ON events(kind);
         CREATE INDEX events_who ON events(soundex(who));",
    )
    .unwrap();
    for i in 0..200i64 {
        c.execute(
            "INSERT INTO docs(title, body) VALUES (?1, ?2)",
            (
                format!("title {i}"),
                format!("body {} word{}", "lorem ipsum ".repeat(5), i % 7),
            ),
        )
        .unwrap();
        c.execute(
            "INSERT INTO notes(body) VALUES (?1)",
            (format!("note {i} word{}", i % 3),),
        )
        .unwrap();
        let (x, y) = ((i % 20) as f64, (i / 20) as f64);
        c.execute(
            "INSERT INTO boxes VALUES (?1, ?2, ?3, ?4, ?5)",
            (i, x, x + 0.5, y, y + 0.5),
        )
        .unwrap();
        c.execute(
            "INSERT INTO events(doc, who) VALUES (json_object('kind', ?1, 'user', ?2), ?3)",
            (
                ["open", "close"][(i % 2) as usize],
                i % 10,
                format!("user{i}"),
            ),
        )
        .unwrap();
    }
    r.sync(&storage, false).unwrap();

    let out = dir.join("restored.db");
    restore_check(&storage, &out).unwrap();
    let rc = Connection::open(&out).unwrap();
    let count = |sql: &str| -> i64 { rc.query_row(sql, [], |row| row.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM docs WHERE docs MATCH 'word3'"),
        29
    );
    assert_eq!(
        count("SELECT count(*) FROM notes WHERE notes MATCH 'word1'"),
        67
    );
    assert_eq!(
        count("SELECT count(*) FROM boxes WHERE min_x >= 5 AND max_x <= 10.5 AND min_y < 2"),
        12
    );
    assert_eq!(
        count("SELECT count(*) FROM events WHERE json_extract(doc, '$.user') = 3"),
        20
    );
    assert_eq!(
        count("SELECT count(*) FROM events WHERE kind = 'open'"),
        100
    );
    drop(rc);

    // Each damage (made through the shadow tables or with CHECK constraints
    // off, as a buggy application could) is shipped, then must fail the
    // restore's verification; the repair makes it pass again. The bad event
    // is JSON5, which json_extract (the indexes) reads but the strict
    // json_valid (the CHECK) rejects.
    let damages: [(&str, &str, &str); 3] = [
        (
            "UPDATE docs_content SET c1 = 'tampered' WHERE id = 1",
            "INSERT INTO docs(docs) VALUES ('rebuild')",
            "docs",
        ),
        (
            "CREATE TABLE saved AS SELECT * FROM boxes_rowid WHERE rowid = 1;
             DELETE FROM boxes_rowid WHERE rowid = 1",
            "INSERT INTO boxes_rowid SELECT * FROM saved; DROP TABLE saved",
            "boxes",
        ),
        (
            "PRAGMA ignore_check_constraints = ON;
             INSERT INTO events(doc, who) VALUES ('{kind: \"bad\", user: 99}', 'x');
             PRAGMA ignore_check_constraints = OFF",
            "DELETE FROM events WHERE who = 'x'",
            "CHECK constraint failed in events",
        ),
    ];
    for (damage, repair, expected) in damages {
        c.execute_batch(damage).unwrap();
        r.sync(&storage, false).unwrap();
        let detail = restore_check(&storage, &out).expect_err(damage);
        assert!(
            detail.contains("integrity_check") && detail.contains(expected),
            "{damage}: {detail}"
        );
        c.execute_batch(repair).unwrap();
        r.sync(&storage, false).unwrap();
        restore_check(&storage, &out).unwrap_or_else(|d| panic!("after {repair}: {d}"));
    }
    std::fs::remove_dir_all(dir).unwrap();
}
