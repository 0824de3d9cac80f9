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
//! without holding up the others.
//!
//! The set of databases comes from a `Catalog` and may change while running:
//! databases discovered in watched directories appear and disappear, and
//! SIGHUP re-reads the configuration. A database that leaves the set gets one
//! last sync (shipping what it committed) before its connections close; the
//! others are not touched. SIGINT/SIGTERM stop taking events, run one last
//! sync of every database and exit (ARCHITECTURE.md invariant 8).
//!
//! This module is the loop and its effects: messages, the watcher, the
//! worker pool, the replicas and the metrics. What to do when is decided
//! by `schedule` (pure), whether the storage as a whole is down by
//! `outage` (pure); the descriptor budget is `fds`, the set of databases
//! `catalog`.

mod catalog;
mod fds;
mod outage;
mod schedule;

pub use catalog::{
    config_databases, load_keys, replica_options, Catalog, ConfigCatalog, WatchedDatabase,
};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::lease::claim::Leases;
use crate::replica::{CommitTimes, Replica, ReplicaError, SyncReport};
use crate::signals::{self, Signal};
use crate::sqlite::{stat_of, FileStat};
use crate::storage::Storage;
use fds::FdBudget;
use schedule::{Action, Connection, Finished, LetGo, Outcome, Schedule};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub workers: usize,
    pub rescan_interval: Duration,
    /// How long a stop may take to ship what is committed.
    pub shutdown_timeout: Duration,
    /// Where to publish per-database figures (the metrics page), if anywhere.
    pub metrics: Option<Arc<crate::metrics::Registry>>,
    /// Let go of a database's connections after this long without commits
    /// (ARCHITECTURE.md "Idle databases"); `None` keeps every database open.
    pub idle_release_after: Option<Duration>,
    /// Databases larger than this are never released (waking one up reads
    /// the whole file to fingerprint it).
    pub idle_release_max_bytes: u64,
    /// This process's leases: each database writes only while it holds
    /// its prefix's (`crate::lease`); `None` takes none.
    pub leases: Option<Arc<Leases>>,
    /// Where to find out, once at start, whether the storage checks upload
    /// checksums (`Storage::upload_check`), to log it; `None`: not at all.
    pub checksum_probe_root: Option<String>,
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Signal(Signal),
    Done {
        id: u64,
        replica: Box<Replica>,
        result: Result<SyncReport, ReplicaError>,
        stat: FileStat,
        /// When the sync began.
        started: Instant,
    },
    Released {
        id: u64,
        replica: Box<Replica>,
        result: Result<Option<FileStat>, ReplicaError>,
    },
}

/// Whether the main loop goes on after a message.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    /// A second signal: stop without waiting for the last syncs.
    StopNow,
}

/// Messages handled at most before the main loop looks again at what is
/// due.
const MESSAGE_BATCH: usize = 256;

/// How often the periodic rescan looks at its next slice of databases.
const RESCAN_TICK: Duration = Duration::from_secs(1);

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
                "stopped before every committed transaction was shipped for: {}; they will be shipped \
                 (or a new generation started) at the next start",
                failed.join(", ")
            ),
        }
    }
}

impl std::error::Error for DaemonError {}

/// How long a failing database waits before its next try: 0.5 s doubling
/// up to 60 s, plus up to a quarter more at random, so that databases that
/// failed together do not retry together.
fn backoff(failures: u32) -> Duration {
    let base = crate::backoff::exponential(
        Duration::from_millis(500),
        failures,
        Duration::from_secs(60),
    );
    crate::backoff::up_by(base, 0.25, crate::backoff::random_unit())
}

/// The database a file event's `path` is about: `path` itself, or the
/// database whose side file it is, if its name ends in one of `sides` (e.g.
/// `-wal`). `None` for a name that is not UTF-8.
fn database_of(path: &Path, sides: &[&str]) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    Some(match sides.iter().find_map(|s| name.strip_suffix(s)) {
        Some(stem) => path.with_file_name(stem),
        None => path.to_path_buf(),
    })
}

/// How long file events in a discovery directory are gathered before the
/// catalog is asked again.
const DISCOVERY_DEBOUNCE: Duration = Duration::from_millis(300);

/// What the scheduler is told about a replica's connections.
fn connection_of(replica: &Replica) -> Connection {
    if replica.is_live() {
        Connection::Open
    } else if replica.is_released() {
        Connection::Released
    } else {
        Connection::Closed
    }
}

struct Dispatcher {
    storage: Arc<dyn Storage>,
    pool: rayon::ThreadPool,
    tx: Sender<Msg>,
    schedule: Schedule,
    /// The replica of every database that has been synced and is not lent
    /// to a job now (one is made at a database's first sync).
    replicas: HashMap<u64, Box<Replica>>,
    watcher: RecommendedWatcher,
    watched: HashMap<PathBuf, RecursiveMode>,
    /// Directories of databases that could not be watched: every
    /// `rescan_interval`, all their databases are looked at.
    unwatched: HashSet<PathBuf>,
    discovery: Vec<(PathBuf, bool)>,
    metrics: Option<Arc<crate::metrics::Registry>>,
    idle_release_max_bytes: u64,
    leases: Option<Arc<Leases>>,
    fds: FdBudget,
    /// When the watcher saw each commit, for every replica.
    commit_times: Arc<CommitTimes>,
}

impl Dispatcher {
    /// Brings the databases in line with the catalog (see
    /// `Schedule::apply`) and the watches with the databases.
    fn apply(&mut self, wanted: Vec<WatchedDatabase>, now: Instant) {
        self.schedule.apply(wanted, now, &self.fds);
        self.refresh_watches();
    }

    /// One watch per directory that holds a database or may hold new ones.
    fn refresh_watches(&mut self) {
        let mut want: HashMap<PathBuf, RecursiveMode> = HashMap::new();
        for path in self.schedule.paths() {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            want.entry(dir).or_insert(RecursiveMode::NonRecursive);
        }
        for (dir, recursive) in &self.discovery {
            if *recursive {
                want.insert(dir.clone(), RecursiveMode::Recursive);
            } else {
                want.entry(dir.clone())
                    .or_insert(RecursiveMode::NonRecursive);
            }
        }
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|(d, m)| want.get(*d) != Some(*m))
            .map(|(d, _)| d.clone())
            .collect();
        for dir in stale {
            let _ = self.watcher.unwatch(&dir);
            self.watched.remove(&dir);
        }
        self.unwatched.retain(|dir| want.contains_key(dir));
        for (dir, mode) in want {
            if self.watched.contains_key(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, mode) {
                Ok(()) => {
                    self.unwatched.remove(&dir);
                    self.watched.insert(dir, mode);
                }
                Err(e) => {
                    if self.unwatched.insert(dir.clone()) {
                        log::warn!(
                            "cannot watch {}: {e}; relying on the periodic rescan there",
                            dir.display()
                        );
                    }
                }
            }
        }
    }

    /// Maps a file event to the databases it concerns. Returns whether it
    /// may change the catalog (something appeared or went in a discovery
    /// directory).
    fn on_fs_event(&mut self, ev: &notify::Event, now: Instant) -> bool {
        // Opens and closes are no news: walsync's own reads of a WAL open it,
        // and treating that as a change resynced every database forever.
        // Writes come as Modify (and a closed-after-write file has had them).
        // A close may be the application's last, though: it only makes
        // walsync ask, without a sync, whether another process still has the
        // database open, and let go of it if none has.
        if let notify::EventKind::Access(access) = ev.kind {
            if matches!(access, notify::event::AccessKind::Close(_)) {
                for p in &ev.paths {
                    self.on_close(p, now);
                }
            }
            return false;
        }
        if ev.need_rescan() {
            self.schedule.mark_all_dirty(now);
            return !self.discovery.is_empty();
        }
        let mut catalog_may_change = false;
        for p in &ev.paths {
            let Some(db) = database_of(p, &["-wal"]) else {
                continue;
            };
            if self.schedule.on_file_event(&db, now, &stat_of) {
                // A database file that went away may leave the catalog.
                if !db.exists() {
                    catalog_may_change |= self.in_discovery(&db);
                }
            } else {
                catalog_may_change |= self.in_discovery(p);
            }
        }
        catalog_may_change
    }

    /// A file of a database (itself, its `-wal` or its `-shm`) was closed:
    /// if walsync holds the database and no other process has it open any
    /// more, the scheduler lets go of it (`Schedule::on_probe`); if walsync
    /// let go of it, a WAL with frames wakes it.
    fn on_close(&mut self, p: &Path, now: Instant) {
        let Some(db) = database_of(p, &["-wal", "-shm"]) else {
            return;
        };
        let Some(id) = self.schedule.probe_wanted(&db) else {
            // A released database has no -shm to ask; its last close
            // leaves the WAL (walsync's lock) for walsync to ship now.
            self.schedule.on_close_released(&db, now, &stat_of);
            return;
        };
        let attached = self.replicas.get_mut(&id).and_then(|r| r.others_attached());
        log::debug!(
            "{}: closed; another process has the database open: {attached:?}",
            p.display()
        );
        self.schedule.on_probe(id, attached, now);
    }

    fn in_discovery(&self, path: &Path) -> bool {
        self.discovery.iter().any(|(dir, recursive)| {
            if *recursive {
                path.starts_with(dir)
            } else {
                path.parent() == Some(dir.as_path())
            }
        })
    }

    /// Starts the jobs the scheduler finds due.
    fn launch_due(&mut self, now: Instant) {
        let actions = self.schedule.launch(now, &mut self.fds);
        self.perform(actions);
    }

    /// Does what the scheduler decided.
    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Sync { id, last } => {
                    let opts = match self.schedule.get(id) {
                        Some(db) => db.want.replica.clone(),
                        None => continue,
                    };
                    let mut replica = self.replicas.remove(&id).unwrap_or_else(|| {
                        let mut r = Box::new(Replica::new(opts.clone()));
                        r.set_commit_times(Arc::clone(&self.commit_times));
                        if let Some(leases) = &self.leases {
                            r.set_leases(Arc::clone(leases));
                        }
                        r
                    });
                    // Options may have changed (reload) since the replica was made.
                    replica.opts = opts;
                    let storage = Arc::clone(&self.storage);
                    let tx = self.tx.clone();
                    self.pool.spawn(move || {
                        let started = Instant::now();
                        let stat = stat_of(replica.path());
                        let mut result = replica.sync(&*storage, false);
                        if last {
                            result = result.and_then(|r| replica.stop(&*storage).map(|()| r));
                        }
                        let _ = tx.send(Msg::Done {
                            id,
                            replica,
                            result,
                            stat,
                            started,
                        });
                    });
                }
                Action::Release { id, why } => {
                    let mut replica = self
                        .replicas
                        .remove(&id)
                        .expect("invariant: a release is due only after a sync, which left the replica here");
                    let storage = Arc::clone(&self.storage);
                    let tx = self.tx.clone();
                    let max = self.idle_release_max_bytes;
                    self.pool.spawn(move || {
                        let result = match why {
                            LetGo::Idle => replica.release(&*storage, max),
                            LetGo::Closed { storage_failing } => {
                                replica.release_closed(&*storage, storage_failing, max)
                            }
                        };
                        let _ = tx.send(Msg::Released {
                            id,
                            replica,
                            result,
                        });
                    });
                }
                Action::Close { id } => {
                    if let Some(r) = self.replicas.get_mut(&id) {
                        r.close();
                    }
                }
                Action::Forget { id, prefix } => {
                    if let Some(mut r) = self.replicas.remove(&id) {
                        self.commit_times.forget(r.path());
                        // Says what it kept for the storage, if anything.
                        r.close();
                    }
                    if let Some(m) = &self.metrics {
                        m.remove(&prefix);
                    }
                    self.refresh_watches();
                }
            }
        }
    }

    fn on_done(
        &mut self,
        id: u64,
        replica: Box<Replica>,
        result: Result<SyncReport, ReplicaError>,
        stat: FileStat,
        started: Instant,
        now: Instant,
    ) {
        if let (Some(m), Some(db)) = (&self.metrics, self.schedule.get(id)) {
            let wall = crate::time::now_ms();
            // Commits kept for upload are not in the bucket either.
            let lag_bytes = replica.pending_bytes()
                + match (stat.wal, replica.shipped_wal_offset()) {
                    (Some((len, _)), Some(off)) => len.saturating_sub(off),
                    _ => 0,
                };
            let pending = if result.is_ok() && !db.is_dirty() {
                None
            } else {
                db.pending_since_ms()
            };
            m.update(
                &db.want.replica.prefix,
                &db.want.replica.path.display().to_string(),
                |m| {
                    m.syncs += 1;
                    m.last_sync_ms = Some(wall);
                    m.last_txid = replica.last_txid();
                    m.lag_bytes = lag_bytes;
                    m.pending_since_ms = pending;
                    match &result {
                        Ok(r) => {
                            m.last_success_ms = Some(wall);
                            m.commits += r.commits;
                            m.snapshots += u64::from(r.snapshot);
                            m.generations += u64::from(r.new_generation);
                            m.puts += r.segments + u64::from(r.snapshot);
                            m.uploaded_bytes += r.bytes_uploaded;
                        }
                        Err(_) => m.errors += 1,
                    }
                },
            );
        }
        let databases = self.schedule.len() as u64;
        let outcome = match result {
            Ok(report) => Outcome::Synced(report),
            Err(e) if e.is_replaced_database() => Outcome::Replaced(e.to_string()),
            Err(e) if e.is_missing_database() => Outcome::Missing,
            Err(e) if e.is_waiting_for_application() => Outcome::Waiting,
            Err(e) if e.lease_retry_after().is_some() => Outcome::Refused {
                retry_after: e.lease_retry_after().unwrap_or_default(),
                error: e.to_string(),
            },
            Err(e) if self.fds.sync_failed_for_descriptors(&e, databases) => {
                Outcome::OutOfDescriptors(e.to_string())
            }
            Err(e) if e.is_storage_unreachable() => Outcome::Unreachable(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let mut replica = replica;
        let connection = connection_of(&replica);
        let pending = replica.has_pending();
        // Whether the application has closed the database: a cheap probe
        // (`Replica::others_attached`) after each sync, failed ones too.
        let others_attached = replica.others_attached();
        if self.schedule.get(id).is_some() {
            self.replicas.insert(id, replica);
        }
        let done = Finished {
            outcome,
            connection,
            stat,
            started,
            others_attached,
        };
        let actions = self.schedule.on_done(id, done, &mut self.fds, now);
        self.schedule.spooled(id, pending, now);
        self.perform(actions);
    }

    fn on_released(
        &mut self,
        id: u64,
        replica: Box<Replica>,
        result: Result<Option<FileStat>, ReplicaError>,
        now: Instant,
    ) {
        if let Ok(Some(_)) = &result {
            self.fds.released();
        }
        let connection = connection_of(&replica);
        let pending = replica.has_pending();
        let unmarked = replica.released_without_mark();
        if self.schedule.get(id).is_some() {
            self.replicas.insert(id, replica);
        }
        let result = result.map_err(|e| e.to_string());
        self.schedule
            .on_released(id, result, connection, now, &stat_of);
        self.schedule.spooled(id, pending, now);
        self.schedule.set_unmarked(id, unmarked);
    }

    /// Handles one message of the main loop.
    fn handle(
        &mut self,
        msg: Msg,
        catalog: &mut dyn Catalog,
        catalog_due: &mut Option<Instant>,
        now: Instant,
    ) -> Flow {
        let stopping = self.schedule.stopping().is_some();
        match msg {
            Msg::Fs(Ok(ev)) => {
                let catalog_may_change = !stopping && self.on_fs_event(&ev, now);
                if catalog_may_change && catalog_due.is_none() {
                    *catalog_due = Some(now + DISCOVERY_DEBOUNCE);
                }
            }
            Msg::Fs(Err(e)) => {
                log::warn!("file watcher: {e}; rescanning every database");
                self.schedule.mark_all_dirty(now);
            }
            Msg::Signal(Signal::Hangup) if !stopping => match catalog.reload() {
                Ok(()) => {
                    log::info!("SIGHUP: configuration reloaded");
                    self.discovery = catalog.discovery_dirs();
                    *catalog_due = Some(now);
                }
                Err(e) => log::error!("SIGHUP: {e}; the current configuration stays in force"),
            },
            Msg::Signal(Signal::Hangup) => {}
            Msg::Signal(sig) => {
                if !stopping {
                    log::info!("{sig:?}: stopping; shipping what is committed");
                    self.schedule.begin_stop(now, &stat_of);
                } else {
                    log::warn!("{sig:?} again: stopping now");
                    self.schedule.abandon_stop();
                    return Flow::StopNow;
                }
            }
            Msg::Done {
                id,
                replica,
                result,
                stat,
                started,
            } => self.on_done(id, replica, result, stat, started, now),
            Msg::Released {
                id,
                replica,
                result,
            } => self.on_released(id, replica, result, now),
        }
        Flow::Go
    }
}

/// Runs until SIGINT or SIGTERM. Blocks those signals (and SIGHUP) for the
/// calling thread and every thread it starts; call it before starting other
/// threads, or block the signals first with `signals::block`.
pub fn run(
    storage: Arc<dyn Storage>,
    catalog: &mut dyn Catalog,
    opts: WatchOptions,
) -> Result<(), DaemonError> {
    signals::block().map_err(|e| DaemonError::Setup(format!("cannot block signals: {e}")))?;
    let (tx, rx) = mpsc::channel::<Msg>();
    signals::forward(tx.clone(), Msg::Signal)
        .map_err(|e| DaemonError::Setup(format!("cannot start the signal thread: {e}")))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.workers.max(1))
        .thread_name(|i| format!("walsync-worker-{i}"))
        .build()
        .map_err(|e| DaemonError::Setup(format!("cannot start the worker pool: {e}")))?;
    let fs_tx = tx.clone();
    let commit_times = Arc::new(CommitTimes::default());
    let times = Arc::clone(&commit_times);
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Here, on the watcher's thread, right after the write: the time a
        // commit is seen is then within a few ms of when it was made.
        if let Ok(e) = &ev {
            if matches!(e.kind, notify::EventKind::Modify(_)) {
                for p in &e.paths {
                    if let Some(db) = database_of(p, &["-wal"]).filter(|db| db != p) {
                        times.on_write(&db);
                    }
                }
            }
        }
        let _ = fs_tx.send(Msg::Fs(ev));
    })
    .map_err(|e| DaemonError::Setup(format!("cannot start the file watcher: {e}")))?;

    let mut d = Dispatcher {
        storage: Arc::clone(&storage),
        pool,
        tx,
        schedule: Schedule::new(
            opts.workers.max(1) * 2,
            opts.idle_release_after,
            backoff,
            crate::time::now_ms,
        ),
        replicas: HashMap::new(),
        watcher,
        watched: HashMap::new(),
        unwatched: HashSet::new(),
        discovery: catalog.discovery_dirs(),
        metrics: opts.metrics.clone(),
        idle_release_max_bytes: opts.idle_release_max_bytes,
        leases: opts.leases.clone(),
        fds: FdBudget::default(),
        commit_times,
    };
    let now = Instant::now();
    d.apply(catalog.databases(), now);
    d.fds
        .raise_limit(d.schedule.len() as u64)
        .map_err(DaemonError::Setup)?;
    d.schedule.fit_open_window(&d.fds);
    log::info!(
        "watching {} databases ({} directories), {} workers, storage {}",
        d.schedule.len(),
        d.watched.len(),
        opts.workers.max(1),
        storage.location()
    );
    if let Some(root) = &opts.checksum_probe_root {
        log::info!(
            "{}: uploads: {}",
            storage.location(),
            storage.upload_check(root)
        );
    }

    // The periodic rescan, a slice of the databases each tick
    // (`schedule::rescan_slice`); once per `rescan_interval`, the
    // discovery directories and the databases of unwatched directories.
    let tick = RESCAN_TICK.min(opts.rescan_interval);
    let mut next_rescan = now + tick;
    let mut next_full_rescan = now + opts.rescan_interval;
    let mut catalog_due: Option<Instant> = None;
    'outer: loop {
        let now = Instant::now();
        d.launch_due(now);
        if let Some(since) = d.schedule.stopping() {
            if d.schedule.stop_complete() {
                break;
            }
            if since.elapsed() > opts.shutdown_timeout {
                log::error!(
                    "stop timed out after {:?} with {} syncs still running",
                    opts.shutdown_timeout,
                    d.schedule.running()
                );
                d.schedule.abandon_stop();
                break;
            }
        }
        let mut wake = if d.schedule.stopping().is_some() {
            now + Duration::from_millis(100)
        } else {
            next_rescan
        };
        if let Some(c) = catalog_due {
            wake = wake.min(c);
        }
        let wake = d.schedule.next_wake(now, wake, &d.fds);
        let mut msg = match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // What arrived meanwhile is handled before the next look at what is
        // due (above): with 10,000 databases starting, one look at every
        // database per message kept the main thread busy with nothing else
        // (the look is now at the scheduler's queues, but a batch still
        // saves it). A bounded batch, so that a flood of events cannot hold
        // the jobs back.
        for _ in 0..MESSAGE_BATCH {
            let Some(m) = msg.take() else { break };
            if d.handle(m, catalog, &mut catalog_due, Instant::now()) == Flow::StopNow {
                break 'outer;
            }
            msg = rx.try_recv().ok();
        }
        let now = Instant::now();
        if d.schedule.stopping().is_none() {
            if catalog_due.is_some_and(|c| c <= now) {
                catalog_due = None;
                d.apply(catalog.databases(), now);
            }
            if now >= next_rescan {
                let n = schedule::rescan_slice(d.schedule.len(), opts.rescan_interval, tick);
                d.schedule.rescan_some(n, now, &stat_of);
                next_rescan = now + tick;
            }
            if now >= next_full_rescan {
                if !d.unwatched.is_empty() {
                    let unwatched = &d.unwatched;
                    let in_unwatched =
                        |p: &Path| p.parent().is_some_and(|dir| unwatched.contains(dir));
                    d.schedule.rescan(now, &stat_of, &in_unwatched);
                }
                if !d.discovery.is_empty() && catalog_due.is_none() {
                    catalog_due = Some(now);
                }
                next_full_rescan = now + opts.rescan_interval;
            }
        }
    }
    let failed = d.schedule.take_failed_at_stop();
    // This process writes nothing more: its leases are given up (those
    // of databases released while idle too, which had no last sync), so
    // another walsync may take the prefixes at once. On the pool: one PUT
    // each.
    {
        use rayon::prelude::*;
        let claims: Vec<_> = d.replicas.values().filter_map(|r| r.claim_held()).collect();
        let storage = &d.storage;
        d.pool
            .install(|| claims.par_iter().for_each(|c| c.give_up(&**storage)));
    }
    // Closing the connections releases the read transactions; checkpoint on
    // close is disabled, so the WAL stays as it is for the next start.
    drop(d);
    if failed.is_empty() {
        log::info!("stopped");
        Ok(())
    } else {
        Err(DaemonError::IncompleteStop { failed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_event_is_about_the_database_or_the_one_whose_side_file_it_is() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let p = |s: &str| PathBuf::from(s);
        // (path, sides) -> database
        for (path, sides, want) in [
            ("/d/app.db", &["-wal"][..], Some(p("/d/app.db"))),
            ("/d/app.db-wal", &["-wal"], Some(p("/d/app.db"))),
            ("/d/app.db-shm", &["-wal"], Some(p("/d/app.db-shm"))),
            ("/d/app.db-shm", &["-wal", "-shm"], Some(p("/d/app.db"))),
            ("/d/app.db-wal", &["-wal", "-shm"], Some(p("/d/app.db"))),
        ] {
            assert_eq!(
                database_of(Path::new(path), sides),
                want,
                "{path} {sides:?}"
            );
        }
        let not_utf8 = Path::new(OsStr::from_bytes(b"/d/\xff-wal"));
        assert_eq!(database_of(not_utf8, &["-wal"]), None);
    }
}
