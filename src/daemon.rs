//! The daemon (`walsync watch`): one notify watcher for every database's
//! directory, one dispatcher (this module's loop, on the calling thread)
//! and a small rayon pool that runs sync jobs.
//!
//! The dispatcher owns each database's `Replica` and lends it to at most one
//! job at a time, so a database's segments are produced in order while many
//! databases sync in parallel. File events are hints: a burst of them marks a
//! database dirty once, and a sync runs at most once per `sync_interval`; a
//! cheap periodic stat of every WAL catches missed events. An idle database
//! costs no S3 request. A failing database backs off (jittered, exponential)
//! without holding up the others. SIGINT/SIGTERM stop taking events, run one
//! last sync of every database and exit (DESIGN.md invariant 8).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};

use crate::replica::{Replica, ReplicaError, ReplicaOptions, SyncReport};
use crate::signals::{self, Signal};
use crate::sqlite;
use crate::storage::Storage;

/// One database to watch.
#[derive(Debug, Clone)]
pub struct WatchedDatabase {
    pub replica: ReplicaOptions,
    pub sync_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub workers: usize,
    pub rescan_interval: Duration,
    /// How long a stop may take to ship what is committed.
    pub shutdown_timeout: Duration,
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Signal(Signal),
    Done {
        idx: usize,
        replica: Box<Replica>,
        result: Result<SyncReport, ReplicaError>,
        stat: Option<FileStat>,
    },
}

/// What the rescan compares: size and mtime of the WAL and the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStat {
    wal: Option<(u64, SystemTime)>,
    db: Option<(u64, SystemTime, u64)>,
}

fn stat_of(db: &Path) -> FileStat {
    use std::os::unix::fs::MetadataExt;
    let wal = std::fs::metadata(sqlite::wal_path(db))
        .ok()
        .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
    let dbm = std::fs::metadata(db).ok().map(|m| {
        (
            m.len(),
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.ino(),
        )
    });
    FileStat { wal, db: dbm }
}

struct Slot {
    replica: Option<Box<Replica>>,
    path: PathBuf,
    prefix: String,
    sync_interval: Duration,
    dirty: bool,
    due: Instant,
    last_sync: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
    waiting_logged: bool,
    stat: Option<FileStat>,
    final_sync_done: bool,
}

impl Slot {
    fn mark_dirty(&mut self, now: Instant) {
        let mut due = match self.last_sync {
            Some(last) => (last + self.sync_interval).max(now),
            None => now,
        };
        if let Some(retry) = self.retry_at {
            due = due.max(retry);
        }
        if !self.dirty || due < self.due {
            self.due = due;
        }
        self.dirty = true;
    }
}

#[derive(Debug)]
pub enum DaemonError {
    Setup(String),
    /// Stopped, but some databases could not ship everything.
    IncompleteStop {
        failed: Vec<String>,
    },
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::Setup(s) => write!(f, "{s}"),
            DaemonError::IncompleteStop { failed } => write!(
                f,
                "stopped before every committed transaction was shipped for: {}; they will be shipped (or a new generation started) at the next start",
                failed.join(", ")
            ),
        }
    }
}

impl std::error::Error for DaemonError {}

fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    // Up to +25%.
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

fn backoff(failures: u32) -> Duration {
    jitter(
        Duration::from_millis(500u64.saturating_mul(1 << failures.min(7)))
            .min(Duration::from_secs(60)),
    )
}

/// Runs until SIGINT or SIGTERM. Call `signals::block()` on the main thread
/// before any thread was started (this function does it too, for callers
/// that start no thread before it).
pub fn run(
    storage: Arc<dyn Storage>,
    databases: Vec<WatchedDatabase>,
    opts: WatchOptions,
) -> Result<(), DaemonError> {
    signals::block().map_err(|e| DaemonError::Setup(format!("cannot block signals: {e}")))?;
    let (tx, rx) = mpsc::channel::<Msg>();
    signals::forward(tx.clone(), Msg::Signal)
        .map_err(|e| DaemonError::Setup(format!("cannot start the signal thread: {e}")))?;
    match signals::raise_fd_limit() {
        Ok((soft, _)) => {
            let need = databases.len() as u64 * 6 + 64;
            if soft < need {
                log::warn!(
                    "open-file limit is {soft}, {} databases may need about {need}; raise it (ulimit -n / LimitNOFILE=)",
                    databases.len()
                );
            }
        }
        Err(e) => log::warn!("cannot read the open-file limit: {e}"),
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.workers.max(1))
        .thread_name(|i| format!("walsync-worker-{i}"))
        .build()
        .map_err(|e| DaemonError::Setup(format!("cannot start the worker pool: {e}")))?;

    let now = Instant::now();
    let mut slots: Vec<Slot> = databases
        .into_iter()
        .map(|d| Slot {
            path: d.replica.path.clone(),
            prefix: d.replica.prefix.clone(),
            replica: Some(Box::new(Replica::new(d.replica))),
            sync_interval: d.sync_interval,
            dirty: true,
            due: now,
            last_sync: None,
            failures: 0,
            retry_at: None,
            waiting_logged: false,
            stat: None,
            final_sync_done: false,
        })
        .collect();

    // One watcher, one watch per directory; events are mapped back by name.
    let mut by_dir: HashMap<PathBuf, Vec<usize>> = HashMap::new();
    for (i, s) in slots.iter().enumerate() {
        let dir = s.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        by_dir.entry(dir).or_default().push(i);
    }
    let fs_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = fs_tx.send(Msg::Fs(ev));
    })
    .map_err(|e| DaemonError::Setup(format!("cannot start the file watcher: {e}")))?;
    for dir in by_dir.keys() {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            log::warn!(
                "cannot watch {}: {e}; relying on the periodic rescan for its databases",
                dir.display()
            );
        }
    }
    log::info!(
        "watching {} databases in {} directories, {} workers, storage {}",
        slots.len(),
        by_dir.len(),
        opts.workers.max(1),
        storage.location()
    );

    let mut running = 0usize;
    let mut stopping: Option<Instant> = None;
    let mut failed_at_stop = Vec::new();
    let mut next_rescan = Instant::now() + opts.rescan_interval;

    loop {
        let now = Instant::now();
        // Launch every due job.
        for (idx, slot) in slots.iter_mut().enumerate() {
            if slot.dirty && slot.due <= now {
                if let Some(replica) = slot.replica.take() {
                    slot.dirty = false;
                    running += 1;
                    launch(&pool, &storage, &tx, idx, replica);
                }
            }
        }
        if let Some(since) = stopping {
            let all_done = running == 0 && slots.iter().all(|s| s.final_sync_done || !s.dirty);
            if all_done {
                break;
            }
            if since.elapsed() > opts.shutdown_timeout {
                log::error!(
                    "stop timed out after {:?} with {running} syncs still running",
                    opts.shutdown_timeout
                );
                for s in &slots {
                    if s.replica.is_none() || s.dirty {
                        failed_at_stop.push(format!("{} ({})", s.path.display(), s.prefix));
                    }
                }
                break;
            }
        }
        let mut wake = if stopping.is_some() {
            now + Duration::from_millis(100)
        } else {
            next_rescan
        };
        for s in &slots {
            if s.dirty && s.replica.is_some() {
                wake = wake.min(s.due);
            }
        }
        let msg = match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let now = Instant::now();
        match msg {
            Some(Msg::Fs(Ok(ev))) if stopping.is_none() => {
                if ev.need_rescan() {
                    for s in slots.iter_mut() {
                        s.mark_dirty(now);
                    }
                }
                for p in &ev.paths {
                    let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
                        continue;
                    };
                    let Some(idxs) = by_dir.get(dir) else {
                        continue;
                    };
                    for &i in idxs {
                        let s = &mut slots[i];
                        let db_name = s.path.file_name().unwrap_or_default();
                        let mut wal_name = db_name.to_owned();
                        wal_name.push("-wal");
                        if name == db_name || name == wal_name {
                            s.mark_dirty(now);
                        }
                    }
                }
            }
            Some(Msg::Fs(Err(e))) => {
                log::warn!("file watcher: {e}; rescanning every database");
                for s in slots.iter_mut() {
                    s.mark_dirty(now);
                }
            }
            Some(Msg::Fs(Ok(_))) => {}
            Some(Msg::Signal(Signal::Hangup)) => {
                log::info!("SIGHUP: configuration reload is not supported yet; restart walsync to apply changes");
            }
            Some(Msg::Signal(sig)) => {
                if stopping.is_none() {
                    log::info!("{sig:?}: stopping; shipping what is committed");
                    stopping = Some(now);
                    for s in slots.iter_mut() {
                        s.retry_at = None;
                        s.last_sync = None;
                        s.mark_dirty(now);
                    }
                } else {
                    log::warn!("{sig:?} again: stopping now");
                    for s in &slots {
                        if s.replica.is_none() || s.dirty {
                            failed_at_stop.push(format!("{} ({})", s.path.display(), s.prefix));
                        }
                    }
                    break;
                }
            }
            Some(Msg::Done {
                idx,
                replica,
                result,
                stat,
            }) => {
                running -= 1;
                let s = &mut slots[idx];
                s.replica = Some(replica);
                s.last_sync = Some(now);
                s.stat = stat;
                match result {
                    Ok(report) => {
                        if s.failures > 0 || s.waiting_logged {
                            log::info!("{} ({}): replicating again", s.path.display(), s.prefix);
                        }
                        s.failures = 0;
                        s.retry_at = None;
                        s.waiting_logged = false;
                        if stopping.is_some() {
                            s.final_sync_done = true;
                        }
                        if report.commits > 0 {
                            log::debug!(
                                "{} ({}): shipped {} commits in {} segments",
                                s.path.display(),
                                s.prefix,
                                report.commits,
                                report.segments
                            );
                        }
                    }
                    Err(e) if e.is_missing_database() => {
                        if !s.waiting_logged {
                            log::info!(
                                "{} ({}): waiting for the database to be created",
                                s.path.display(),
                                s.prefix
                            );
                            s.waiting_logged = true;
                        }
                        if stopping.is_some() {
                            s.final_sync_done = true;
                        }
                    }
                    Err(e) => {
                        s.failures += 1;
                        let wait = backoff(s.failures);
                        if stopping.is_some() {
                            log::error!("{} ({}): {e}", s.path.display(), s.prefix);
                            // Only a database walsync was replicating can
                            // have committed transactions left unshipped.
                            if s.replica.as_ref().is_some_and(|r| r.is_live()) {
                                failed_at_stop.push(format!("{} ({})", s.path.display(), s.prefix));
                            }
                            s.final_sync_done = true;
                        } else {
                            log::error!(
                                "{} ({}): {e}; retrying in {:.1}s",
                                s.path.display(),
                                s.prefix,
                                wait.as_secs_f64()
                            );
                            s.retry_at = Some(now + wait);
                            s.mark_dirty(now);
                        }
                    }
                }
            }
            None => {}
        }
        if stopping.is_none() && Instant::now() >= next_rescan {
            let now = Instant::now();
            for s in slots.iter_mut() {
                if s.replica.is_some() && !s.dirty {
                    let st = stat_of(&s.path);
                    if s.stat != Some(st) {
                        s.mark_dirty(now);
                    }
                }
            }
            next_rescan = now + opts.rescan_interval;
        }
    }
    drop(watcher);
    // Closing the connections releases the read transactions; checkpoint on
    // close is disabled, so the WAL stays as it is for the next start.
    drop(slots);
    if failed_at_stop.is_empty() {
        log::info!("stopped");
        Ok(())
    } else {
        Err(DaemonError::IncompleteStop {
            failed: failed_at_stop,
        })
    }
}

fn launch(
    pool: &rayon::ThreadPool,
    storage: &Arc<dyn Storage>,
    tx: &Sender<Msg>,
    idx: usize,
    mut replica: Box<Replica>,
) {
    let storage = Arc::clone(storage);
    let tx = tx.clone();
    pool.spawn(move || {
        let stat = stat_of(replica.path());
        let result = replica.sync(&*storage, false);
        let _ = tx.send(Msg::Done {
            idx,
            replica,
            result,
            stat: Some(stat),
        });
    });
}
