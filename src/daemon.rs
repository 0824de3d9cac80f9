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
//! sync of every database and exit (DESIGN.md invariant 8).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::replica::{Replica, ReplicaError, ReplicaOptions, SyncReport};
use crate::signals::{self, Signal};
use crate::sqlite::{stat_of, FileStat};
use crate::storage::Storage;

/// One database to watch.
#[derive(Debug, Clone)]
pub struct WatchedDatabase {
    pub replica: ReplicaOptions,
    pub sync_interval: Duration,
}

/// Where the daemon learns which databases to replicate.
pub trait Catalog {
    /// Every database that should be replicated now (configured and
    /// discovered). Called at start, after a discovery directory changed,
    /// on the periodic rescan when there are discovery directories, and
    /// after a reload.
    fn databases(&mut self) -> Vec<WatchedDatabase>;
    /// Directories in which new databases may appear, and whether their
    /// subdirectories count.
    fn discovery_dirs(&self) -> Vec<(PathBuf, bool)>;
    /// Re-reads the configuration (SIGHUP). On `Err` the current one stays.
    fn reload(&mut self) -> Result<(), String>;
}

/// A fixed set of databases, for callers without a config file.
pub struct FixedCatalog(pub Vec<WatchedDatabase>);

impl Catalog for FixedCatalog {
    fn databases(&mut self) -> Vec<WatchedDatabase> {
        self.0.clone()
    }
    fn discovery_dirs(&self) -> Vec<(PathBuf, bool)> {
        Vec::new()
    }
    fn reload(&mut self) -> Result<(), String> {
        Err("there is no configuration file to reload".into())
    }
}

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub workers: usize,
    pub rescan_interval: Duration,
    /// How long a stop may take to ship what is committed.
    pub shutdown_timeout: Duration,
    /// Where to publish per-database figures (the metrics page), if anywhere.
    pub metrics: Option<Arc<crate::metrics::Registry>>,
    /// Let go of a database's connections after this long without commits
    /// (DESIGN.md "Scale"); `None` keeps every database open.
    pub idle_release_after: Option<Duration>,
    /// Databases larger than this are never released (waking one up reads
    /// the whole file to fingerprint it).
    pub idle_release_max_bytes: u64,
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

/// Messages handled at most before the main loop looks at every database
/// again.
const MESSAGE_BATCH: usize = 256;

struct Slot {
    want: WatchedDatabase,
    /// `None` while a job has it.
    replica: Option<Box<Replica>>,
    dirty: bool,
    due: Instant,
    last_sync: Option<Instant>,
    failures: u32,
    /// The current run of failed syncs: how many, and when the first
    /// began (for the recovery line; `failures` drives the backoff).
    failed_syncs: u32,
    failing_since: Option<Instant>,
    retry_at: Option<Instant>,
    waiting_logged: bool,
    stat: Option<FileStat>,
    /// Wall-clock ms since which changes have been waiting to be shipped.
    pending_since_ms: Option<u64>,
    /// When to let go of the connections if nothing is committed until then.
    release_at: Option<Instant>,
    /// Left the catalog: one last sync, then the slot goes.
    removing: bool,
    final_sync_done: bool,
}

impl Slot {
    fn new(want: WatchedDatabase, now: Instant) -> Slot {
        Slot {
            replica: Some(Box::new(Replica::new(want.replica.clone()))),
            want,
            dirty: true,
            due: now,
            last_sync: None,
            failures: 0,
            failed_syncs: 0,
            failing_since: None,
            retry_at: None,
            waiting_logged: false,
            stat: None,
            pending_since_ms: None,
            release_at: None,
            removing: false,
            final_sync_done: false,
        }
    }

    fn name(&self) -> String {
        format!(
            "{} ({})",
            self.want.replica.path.display(),
            self.want.replica.prefix
        )
    }

    fn mark_dirty(&mut self, now: Instant) {
        let mut due = match self.last_sync {
            Some(last) => (last + self.want.sync_interval).max(now),
            None => now,
        };
        if let Some(retry) = self.retry_at {
            due = due.max(retry);
        }
        if !self.dirty || due < self.due {
            self.due = due;
        }
        self.dirty = true;
        self.pending_since_ms
            .get_or_insert_with(crate::time::now_ms);
    }

    /// Whether the database was being replicated (and so may have committed
    /// transactions that a failed last sync leaves unshipped).
    fn was_live(&self) -> bool {
        self.replica
            .as_ref()
            .is_some_and(|r| r.is_live() || r.is_released())
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
                "stopped before every committed transaction was shipped for: {}; they will be shipped \
                 (or a new generation started) at the next start",
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

/// Descriptors walsync keeps for itself whatever the number of databases:
/// standard streams, the watcher, S3 connections, the metrics listener.
const FDS_RESERVED: u64 = 32;
/// Descriptors an active database may hold: walsync's own, the reader's
/// database, WAL and -shm files, a checkpointing connection's. A released
/// (idle) database keeps one.
const FDS_PER_ACTIVE_DATABASE: u64 = 6;
/// Descriptors a job may open besides its database's: a connection to the
/// storage, a spool file for a large transaction. Kept free for every job
/// that may run: a database opened with the last of them could not upload
/// its snapshot, nor be let go before it had, and held its own for good.
const FDS_PER_JOB: u64 = 2;
/// How old a count of open descriptors may be when deciding to open one more.
const FD_COUNT_MAX_AGE: Duration = Duration::from_millis(100);
/// How long a database waits to be opened while descriptors are short.
const FD_WAIT: Duration = Duration::from_millis(250);
/// While databases wait for descriptors, an open one counts as idle after
/// `idle_release_after` divided by this, not after all of it: otherwise the
/// waiting ones are not replicated at all meanwhile. Not at once: one
/// written a moment ago is likely to be written again, and letting it go
/// and opening it again for every commit would spend the descriptors and
/// jobs the waiting ones need (and invite a new generation each time).
const PRESSED_IDLE_DIVISOR: u32 = 10;
/// How often the "out of file descriptors" line may repeat.
const FD_EXHAUSTED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The open-file limit walsync would like for `databases`: room for every
/// one of them to be active at once.
fn fds_wanted(databases: u64) -> u64 {
    databases * FDS_PER_ACTIVE_DATABASE + FDS_RESERVED
}

/// How to raise the limit, for messages.
fn raise_limit_hint(to: u64) -> String {
    format!(
        "raise it to at least {to} (LimitNOFILE={to} in the systemd unit, or ulimit -n {to} \
         in the shell that starts walsync)"
    )
}

/// Names a shortage of descriptors, at most once per
/// `FD_EXHAUSTED_LOG_INTERVAL` (`last` is when it last did).
fn log_fds_short(last: &mut Option<Instant>, limit: u64, databases: u64, now: Instant) {
    if last.is_some_and(|t| now.duration_since(t) < FD_EXHAUSTED_LOG_INTERVAL) {
        return;
    }
    *last = Some(now);
    let used =
        signals::open_fd_count().map_or(String::new(), |n| format!("{n} descriptors in use, "));
    log::error!(
        "out of file descriptors ({used}open-file limit {limit}) with {databases} databases: \
         the databases that cannot be opened now wait until others are released or fail, \
         the others go on; {}",
        raise_limit_hint(fds_wanted(databases))
    );
}

/// Whether a failed sync looks like the process ran out of descriptors:
/// EMFILE itself, or SQLite's "unable to open database file" (which hides
/// the errno, and may come from the WAL or -shm file) while the limit is
/// below what every database active at once would need, or nearly every
/// descriptor is in use.
fn out_of_fds(error: &str, limit: u64, databases: u64) -> bool {
    if error.contains("Too many open files") || error.contains("os error 24") {
        return true;
    }
    error.contains("unable to open database file")
        && (limit < fds_wanted(databases)
            || signals::open_fd_count().map_or_else(
                |e| signals::is_out_of_fds(&e),
                |used| used + used / 10 >= limit,
            ))
}

/// Whether the application wrote to the database since `before` was taken
/// (walsync's own first read may create an empty WAL, which is no write).
/// When walsync checkpointed in that sync, the database file and the WAL
/// changed by its own hand, so only a WAL longer than before counts (a
/// database left with a WAL from its last run checkpoints at its first
/// sync; counting that as a write kept thousands of them open at start).
fn written_during(before: &FileStat, db: &Path, checkpointed: bool) -> bool {
    let after = stat_of(db);
    let wal_len = |s: &FileStat| s.wal.map_or(0, |(len, _)| len);
    if checkpointed {
        return wal_len(&after) > wal_len(before);
    }
    before.db != after.db
        || wal_len(&after) > wal_len(before)
        || before.wal.is_some() && before.wal != after.wal
}

/// How long file events in a discovery directory are gathered before the
/// catalog is asked again.
const DISCOVERY_DEBOUNCE: Duration = Duration::from_millis(300);

/// The databases whose sync is due and can start, longest waiting first.
/// In key order instead, the first databases would take every free job
/// while the last ones wait, whenever more work is due than jobs run.
/// At most `n` of them: with thousands due at start-up, only the few that
/// can start are sorted. Unless `may_open`, only those open already.
fn due_syncs(slots: &BTreeMap<u64, Slot>, now: Instant, n: usize, may_open: bool) -> Vec<u64> {
    let mut due: Vec<(Instant, u64)> = slots
        .iter()
        .filter(|(_, s)| s.dirty && s.due <= now)
        .filter(|(_, s)| s.replica.as_ref().is_some_and(|r| may_open || r.is_live()))
        .map(|(&id, s)| (s.due, id))
        .collect();
    if due.len() > n && n > 0 {
        due.select_nth_unstable(n - 1);
    }
    due.truncate(n);
    due.sort_unstable();
    due.into_iter().map(|(_, id)| id).collect()
}

/// A count of the open descriptors (a directory read of /proc/self/fd, as
/// costly as there are descriptors), and the databases opened and released
/// since, which move it by an estimate until the next count.
#[derive(Clone, Copy)]
struct FdCount {
    at: Instant,
    n: u64,
    opened: u64,
    released: u64,
}

impl FdCount {
    /// Descriptors a release is taken to give back: fewer than an active
    /// database may hold (an estimate too high would open too many).
    const FREED_BY_RELEASE: u64 = 3;

    fn used(&self) -> u64 {
        (self.n + self.opened * FDS_PER_ACTIVE_DATABASE)
            .saturating_sub(self.released * Self::FREED_BY_RELEASE)
    }
}

struct Dispatcher {
    storage: Arc<dyn Storage>,
    pool: rayon::ThreadPool,
    tx: Sender<Msg>,
    slots: BTreeMap<u64, Slot>,
    next_id: u64,
    by_path: HashMap<PathBuf, u64>,
    watcher: RecommendedWatcher,
    watched: HashMap<PathBuf, RecursiveMode>,
    discovery: Vec<(PathBuf, bool)>,
    running: usize,
    stopping: Option<Instant>,
    failed_at_stop: Vec<String>,
    metrics: Option<Arc<crate::metrics::Registry>>,
    idle_release_after: Option<Duration>,
    idle_release_max_bytes: u64,
    /// Jobs queued or running at most (see `launch_due`).
    max_jobs: usize,
    /// The soft open-file limit, once known.
    fd_limit: Option<u64>,
    /// When the "out of file descriptors" line was last logged.
    fd_exhausted_logged: Option<Instant>,
    /// The last count of open descriptors, and what changed since.
    fd_count: std::cell::Cell<Option<FdCount>>,
    /// Until when databases that need opening wait, because descriptors
    /// were short; cleared when a job ends and gives some back. A database
    /// that waits keeps its due time, and so its place in line: pushing it
    /// back instead let the same ones lose the race for freed descriptors
    /// again and again.
    opens_wait_until: Option<Instant>,
}

impl Dispatcher {
    /// Brings the slots in line with the catalog: adds new databases,
    /// updates the options of kept ones, schedules removed ones for a last
    /// sync.
    fn apply(&mut self, wanted: Vec<WatchedDatabase>, now: Instant) {
        let mut keep = HashMap::new();
        for want in wanted {
            let path = want.replica.path.clone();
            if keep.contains_key(&path) {
                log::warn!("{} is listed twice; replicating it once", path.display());
                continue;
            }
            match self.by_path.get(&path).copied() {
                Some(id) if self.slots[&id].want.replica.prefix == want.replica.prefix => {
                    let slot = self
                        .slots
                        .get_mut(&id)
                        .expect("invariant: by_path points at a slot");
                    if slot.removing {
                        log::info!(
                            "{}: back in the configuration, keeps replicating",
                            slot.name()
                        );
                        slot.removing = false;
                    }
                    slot.want = want;
                    keep.insert(path, id);
                }
                Some(id) => {
                    // Same file, new prefix: the old replica ends, a new one starts
                    // once the old one let go of the database.
                    self.remove(id, now);
                    let id = self.add(want, now);
                    keep.insert(path, id);
                }
                None => {
                    let id = self.add(want, now);
                    keep.insert(path, id);
                }
            }
        }
        let gone: Vec<u64> = self
            .slots
            .iter()
            .filter(|(id, s)| !s.removing && keep.get(&s.want.replica.path) != Some(id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove(id, now);
        }
        self.refresh_watches();
    }

    fn add(&mut self, want: WatchedDatabase, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let slot = Slot::new(want, now);
        if self.stopping.is_none() && self.next_id > 1 {
            log::debug!("{}: added", slot.name());
        }
        self.by_path.insert(slot.want.replica.path.clone(), id);
        self.slots.insert(id, slot);
        id
    }

    fn remove(&mut self, id: u64, now: Instant) {
        if let Some(slot) = self.slots.get_mut(&id) {
            log::info!(
                "{}: no longer configured; shipping what it committed, then letting go",
                slot.name()
            );
            slot.removing = true;
            slot.retry_at = None;
            slot.last_sync = None;
            slot.mark_dirty(now);
        }
    }

    /// Drops a removed slot once its last sync ran.
    fn drop_slot(&mut self, id: u64) {
        if let Some(slot) = self.slots.remove(&id) {
            if self.by_path.get(&slot.want.replica.path) == Some(&id) {
                self.by_path.remove(&slot.want.replica.path);
            }
            if let Some(m) = &self.metrics {
                m.remove(&slot.want.replica.prefix);
            }
            log::info!("{}: stopped replicating", slot.name());
        }
        self.refresh_watches();
    }

    /// One watch per directory that holds a database or may hold new ones.
    fn refresh_watches(&mut self) {
        let mut want: HashMap<PathBuf, RecursiveMode> = HashMap::new();
        for s in self.slots.values() {
            let dir = s
                .want
                .replica
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf();
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
        for (dir, mode) in want {
            if self.watched.contains_key(&dir) {
                continue;
            }
            match self.watcher.watch(&dir, mode) {
                Ok(()) => {
                    self.watched.insert(dir, mode);
                }
                Err(e) => log::warn!(
                    "cannot watch {}: {e}; relying on the periodic rescan there",
                    dir.display()
                ),
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
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return false;
        }
        if ev.need_rescan() {
            for s in self.slots.values_mut() {
                s.mark_dirty(now);
            }
            return !self.discovery.is_empty();
        }
        let mut catalog_may_change = false;
        for p in &ev.paths {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let db = match name.strip_suffix("-wal") {
                Some(stem) => p.with_file_name(stem),
                None => p.clone(),
            };
            match self.by_path.get(&db) {
                Some(id) => {
                    if let Some(s) = self.slots.get_mut(id) {
                        // A released database wakes only for a real change,
                        // not for the tail of walsync's own checkpoint.
                        let unchanged = s.replica.as_ref().is_some_and(|r| r.is_released())
                            && s.stat == Some(stat_of(&s.want.replica.path));
                        if !unchanged {
                            s.mark_dirty(now);
                        }
                    }
                    // A database file that went away may leave the catalog.
                    if !db.exists() {
                        catalog_may_change |= self.in_discovery(&db);
                    }
                }
                None => catalog_may_change |= self.in_discovery(p),
            }
        }
        catalog_may_change
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

    /// Starts due jobs, at most `max_jobs` at a time: a job holds its
    /// database open, so an unbounded queue would open every database at
    /// once (thousands at start-up, more descriptors than allowed). Releases
    /// go first, since they close databases.
    fn launch_due(&mut self, now: Instant) {
        if self.stopping.is_none() {
            let due = self.due_releases(now);
            for id in due {
                if self.running >= self.max_jobs {
                    return;
                }
                let slot = self.slots.get_mut(&id).expect("invariant: listed above");
                let mut replica = slot.replica.take().expect("invariant: checked above");
                slot.release_at = None;
                self.running += 1;
                let storage = Arc::clone(&self.storage);
                let tx = self.tx.clone();
                let max = self.idle_release_max_bytes;
                self.pool.spawn(move || {
                    let result = replica.release(&*storage, max);
                    let _ = tx.send(Msg::Released {
                        id,
                        replica,
                        result,
                    });
                });
            }
        }
        if self.running >= self.max_jobs {
            return;
        }
        // Descriptors left for databases opened now; worked out only when
        // the limit is too low for all of them to be open at once.
        let mut open_budget: Option<Option<u64>> = None;
        // Room for the jobs that can start, and for those that wait for
        // descriptors instead.
        let room = (self.max_jobs - self.running) * 8;
        let may_open = !self.opens_wait(now);
        for id in due_syncs(&self.slots, now, room, may_open) {
            if self.running >= self.max_jobs {
                return;
            }
            let opens = !self.slots[&id]
                .replica
                .as_ref()
                .is_some_and(|r| r.is_live());
            if opens {
                let budget = open_budget.get_or_insert_with(|| self.open_budget());
                if let Some(left) = budget {
                    if *left < FDS_PER_ACTIVE_DATABASE {
                        // Opening it now could take the descriptors that
                        // open databases need to sync or be released (and
                        // so give theirs back): it and the others that
                        // need opening wait for a job to end, or a little.
                        self.opens_wait_until = Some(now + FD_WAIT);
                        log_fds_short(
                            &mut self.fd_exhausted_logged,
                            self.fd_limit.unwrap_or(u64::MAX),
                            self.slots.len() as u64,
                            now,
                        );
                        continue;
                    }
                    *left -= FDS_PER_ACTIVE_DATABASE;
                    self.count_fds(|c| c.opened += 1);
                }
            }
            let slot = self.slots.get_mut(&id).expect("invariant: listed above");
            let mut replica = slot.replica.take().expect("invariant: checked above");
            slot.dirty = false;
            self.running += 1;
            // Options may have changed (reload) since the replica was made.
            replica.opts = slot.want.replica.clone();
            // The last sync before walsync stops or lets go of the database
            // for good leaves a mark, so that the next start needs no
            // snapshot (README "Restarts").
            let last = self.stopping.is_some() || slot.removing;
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
    }

    /// Whether the open-file limit is below what every database active at
    /// once could need: only then are descriptors budgeted.
    fn limit_below_wanted(&self) -> bool {
        self.fd_limit
            .is_some_and(|limit| limit < fds_wanted(self.slots.len() as u64))
    }

    /// Whether databases that need opening wait for descriptors now.
    fn opens_wait(&self, now: Instant) -> bool {
        self.opens_wait_until.is_some_and(|t| t > now)
    }

    /// A job ended: the descriptors it gave back may let the databases that
    /// wait for some open now.
    fn descriptors_returned(&mut self) {
        self.opens_wait_until = None;
    }

    /// Moves the descriptor count, if one was taken, by `change`.
    fn count_fds(&self, change: impl FnOnce(&mut FdCount)) {
        if let Some(mut c) = self.fd_count.get() {
            change(&mut c);
            self.fd_count.set(Some(c));
        }
    }

    /// Descriptors that databases opened now may take: `None` when the
    /// open-file limit has room for every database active at once (then
    /// nothing needs counting), else what is free beyond what the jobs may
    /// still open (a sync point's connection, a storage connection, a spool
    /// file).
    fn open_budget(&self) -> Option<u64> {
        if !self.limit_below_wanted() {
            return None;
        }
        let limit = self.fd_limit?;
        // Counting /proc/self/fd costs a directory read of every
        // descriptor: at most every FD_COUNT_MAX_AGE, estimated in between
        // (jobs started since are covered by `running`).
        let now = Instant::now();
        let used = match self.fd_count.get() {
            Some(c) if now.duration_since(c.at) < FD_COUNT_MAX_AGE => c.used(),
            _ => {
                let n = match signals::open_fd_count() {
                    Ok(n) => n,
                    // Not even one left to count them with.
                    Err(e) if signals::is_out_of_fds(&e) => limit,
                    // No way to count here: opening is left to fail and be
                    // retried.
                    Err(_) => return None,
                };
                self.fd_count.set(Some(FdCount {
                    at: now,
                    n,
                    opened: 0,
                    released: 0,
                }));
                n
            }
        };
        let jobs = self.running as u64 * 2 + self.max_jobs as u64 * FDS_PER_JOB;
        Some(limit.saturating_sub(used + jobs))
    }

    /// The databases to let go now: those idle for `idle_release_after`
    /// (`release_at` is the last commit plus that), and, while a database
    /// waits to be opened for want of descriptors, the open ones idle for a
    /// tenth of it (`PRESSED_IDLE_DIVISOR`). One pass over the databases:
    /// this runs after every batch of messages.
    fn due_releases(&self, now: Instant) -> Vec<u64> {
        let low_limit = self.limit_below_wanted();
        let sooner_by = match self.idle_release_after {
            Some(idle) if low_limit => idle - idle / PRESSED_IDLE_DIVISOR,
            _ => Duration::ZERO,
        };
        let (mut due, mut sooner, mut waiting) = (Vec::new(), Vec::new(), false);
        for (&id, s) in &self.slots {
            let Some(r) = s.replica.as_ref() else {
                continue;
            };
            if s.dirty {
                waiting |= low_limit && s.due <= now && !r.is_live();
            } else if let Some(t) = s.release_at {
                if t <= now {
                    due.push(id);
                } else if low_limit && r.is_live() && t <= now + sooner_by {
                    sooner.push(id);
                }
            }
        }
        let short = || {
            self.opens_wait(now)
                || waiting
                    && self
                        .open_budget()
                        .is_some_and(|left| left < FDS_PER_ACTIVE_DATABASE)
        };
        if !sooner.is_empty() && short() {
            due.append(&mut sooner);
        }
        due
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
        self.running -= 1;
        self.descriptors_returned();
        let stopping = self.stopping.is_some();
        let databases = self.slots.len() as u64;
        let Some(s) = self.slots.get_mut(&id) else {
            return;
        };
        if let Some(m) = &self.metrics {
            let wall = crate::time::now_ms();
            let lag_bytes = match (stat.wal, replica.shipped_wal_offset()) {
                (Some((len, _)), Some(off)) => len.saturating_sub(off),
                _ => 0,
            };
            let pending = if result.is_ok() && !s.dirty {
                None
            } else {
                s.pending_since_ms
            };
            m.update(
                &s.want.replica.prefix,
                &s.want.replica.path.display().to_string(),
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
        if result.is_ok() && !s.dirty {
            s.pending_since_ms = None;
        }
        s.replica = Some(replica);
        let first_sync = s.last_sync.is_none();
        s.last_sync = Some(now);
        s.stat = Some(stat);
        if let (Ok(r), Some(idle)) = (&result, self.idle_release_after) {
            if first_sync
                && r.commits == 0
                && !written_during(&stat, &s.want.replica.path, r.checkpointed)
            {
                // Nothing was committed while walsync was away: let go at
                // once, so that starting with thousands of databases does not
                // hold them all open (and run out of descriptors) at the
                // same time. Not if the application is writing right now:
                // letting go then only invites it to checkpoint and restart
                // the WAL before walsync is back, a gap (a new generation).
                s.release_at = Some(now);
            } else if r.commits > 0
                || r.snapshot
                || s.release_at.is_none() && s.replica.as_ref().is_some_and(|r| r.is_live())
            {
                // Each commit restarts the idle clock.
                s.release_at = Some(now + idle);
            }
        }
        let last_sync = stopping || s.removing;
        let mut retrying = false;
        match result {
            Ok(report) => {
                if s.failed_syncs > 0 {
                    // The counterpart of the error lines: the operator sees
                    // how long the outage lasted and that the backlog went.
                    let outage = s.failing_since.map_or(0.0, |t| (now - t).as_secs_f64());
                    log::info!(
                        "{}: replicating again after {} failed {} over {outage:.1}s; \
                         {} commits shipped",
                        s.name(),
                        s.failed_syncs,
                        if s.failed_syncs == 1 { "sync" } else { "syncs" },
                        report.commits
                    );
                } else if s.waiting_logged {
                    log::info!("{}: replicating again", s.name());
                }
                s.failures = 0;
                s.failed_syncs = 0;
                s.failing_since = None;
                s.retry_at = None;
                s.waiting_logged = false;
                if report.commits > 0 {
                    log::debug!(
                        "{}: shipped {} commits in {} segments",
                        s.name(),
                        report.commits,
                        report.segments
                    );
                }
            }
            Err(e) if e.is_replaced_database() => {
                log::debug!("{}: {e}", s.name());
                retrying = true;
                s.mark_dirty(now);
            }
            Err(e) if e.is_missing_database() => {
                if !s.waiting_logged && !last_sync {
                    log::info!("{}: waiting for the database to be created", s.name());
                    s.waiting_logged = true;
                }
            }
            Err(e) => {
                s.failures += 1;
                s.failed_syncs += 1;
                s.failing_since.get_or_insert(started);
                let limit = self.fd_limit.unwrap_or(u64::MAX);
                let fds_short = out_of_fds(&e.to_string(), limit, databases);
                if fds_short {
                    log_fds_short(&mut self.fd_exhausted_logged, limit, databases, now);
                    // Not the database's fault: it should get its turn as
                    // soon as others are released, not after a backoff that
                    // grew while descriptors were short.
                    s.failures = 0;
                }
                if last_sync && !fds_short {
                    log::error!("{}: {e}", s.name());
                    // Only a database walsync was replicating can have
                    // committed transactions left unshipped.
                    if stopping && s.was_live() {
                        self.failed_at_stop.push(s.name());
                    }
                } else if fds_short {
                    // Also a last sync that found no descriptor free: the
                    // databases finished before it close theirs (below), and
                    // the stop timeout bounds the wait. The line above
                    // stands for all of them; this one waits with the others
                    // that need opening, in its place in line.
                    retrying = true;
                    log::debug!("{}: {e}; retrying when descriptors are free", s.name());
                    s.mark_dirty(now);
                    self.opens_wait_until = Some(now + FD_WAIT);
                } else {
                    retrying = true;
                    let wait = backoff(s.failures);
                    log::error!("{}: {e}; retrying in {:.1}s", s.name(), wait.as_secs_f64());
                    s.retry_at = Some(now + wait);
                    s.mark_dirty(now);
                    // A database written during the failed sync is dirty
                    // already, with an earlier due time that `mark_dirty`
                    // keeps: without this it was retried at once, without
                    // backing off.
                    s.due = s.due.max(now + wait);
                }
            }
        }
        if stopping && !retrying {
            s.final_sync_done = true;
            // Done with it: its descriptors may let another database's last
            // sync run (walsync exits next; the connections close then
            // anyway). Not while another sync is due: a sync that was
            // running when the stop came is followed by one more, which
            // must find the replica as it was, not start over from the
            // bucket.
            if !s.dirty {
                if let Some(r) = s.replica.as_mut() {
                    r.close();
                }
            }
        } else if s.removing && !retrying {
            self.drop_slot(id);
        }
    }

    fn on_released(
        &mut self,
        id: u64,
        replica: Box<Replica>,
        result: Result<Option<FileStat>, ReplicaError>,
        now: Instant,
    ) {
        self.running -= 1;
        self.descriptors_returned();
        if let Ok(Some(_)) = &result {
            self.count_fds(|c| c.released += 1);
        }
        let Some(s) = self.slots.get_mut(&id) else {
            return;
        };
        s.replica = Some(replica);
        match result {
            // The files as walsync left them, taken under the write lock: the
            // events of its own checkpoint are no news, a change from this
            // is (see `on_fs_event`).
            Ok(Some(stat)) => s.stat = Some(stat),
            Ok(None) => {}
            Err(e) => {
                log::warn!("{}: releasing the idle database failed: {e}", s.name());
                s.mark_dirty(now);
            }
        }
        if s.dirty
            && s.replica.as_ref().is_some_and(|r| r.is_released())
            && s.stat == Some(stat_of(&s.want.replica.path))
        {
            s.dirty = false;
        }
    }

    /// The safety net: a database whose files changed without an event.
    fn rescan(&mut self, now: Instant) {
        for s in self.slots.values_mut() {
            if s.replica.is_some() && !s.dirty && s.stat != Some(stat_of(&s.want.replica.path)) {
                s.mark_dirty(now);
            }
        }
    }

    fn begin_stop(&mut self, now: Instant) {
        self.stopping = Some(now);
        for s in self.slots.values_mut() {
            s.retry_at = None;
            s.last_sync = None;
            s.release_at = None;
            // A released database whose files did not change since has
            // nothing to ship: waking it only to stop would cost a fingerprint.
            let idle = s.replica.as_ref().is_some_and(|r| r.is_released())
                && !s.dirty
                && s.stat == Some(stat_of(&s.want.replica.path));
            if idle {
                s.final_sync_done = true;
            } else {
                s.mark_dirty(now);
            }
        }
    }

    fn unfinished(&self) -> Vec<String> {
        self.slots
            .values()
            .filter(|s| (s.replica.is_none() || s.dirty) && !s.final_sync_done)
            .map(|s| s.name())
            .collect()
    }

    /// Handles one message of the main loop.
    fn handle(
        &mut self,
        msg: Msg,
        catalog: &mut dyn Catalog,
        catalog_due: &mut Option<Instant>,
        now: Instant,
    ) -> Flow {
        match msg {
            Msg::Fs(Ok(ev)) => {
                let catalog_may_change = self.stopping.is_none() && self.on_fs_event(&ev, now);
                if catalog_may_change && catalog_due.is_none() {
                    *catalog_due = Some(now + DISCOVERY_DEBOUNCE);
                }
            }
            Msg::Fs(Err(e)) => {
                log::warn!("file watcher: {e}; rescanning every database");
                for s in self.slots.values_mut() {
                    s.mark_dirty(now);
                }
            }
            Msg::Signal(Signal::Hangup) if self.stopping.is_none() => match catalog.reload() {
                Ok(()) => {
                    log::info!("SIGHUP: configuration reloaded");
                    self.discovery = catalog.discovery_dirs();
                    *catalog_due = Some(now);
                }
                Err(e) => log::error!("SIGHUP: {e}; the current configuration stays in force"),
            },
            Msg::Signal(Signal::Hangup) => {}
            Msg::Signal(sig) => {
                if self.stopping.is_none() {
                    log::info!("{sig:?}: stopping; shipping what is committed");
                    self.begin_stop(now);
                } else {
                    log::warn!("{sig:?} again: stopping now");
                    let unfinished = self.unfinished();
                    self.failed_at_stop.extend(unfinished);
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
    let watcher = notify::recommended_watcher(move |ev| {
        let _ = fs_tx.send(Msg::Fs(ev));
    })
    .map_err(|e| DaemonError::Setup(format!("cannot start the file watcher: {e}")))?;

    let mut d = Dispatcher {
        storage: Arc::clone(&storage),
        pool,
        tx,
        slots: BTreeMap::new(),
        next_id: 0,
        by_path: HashMap::new(),
        watcher,
        watched: HashMap::new(),
        discovery: catalog.discovery_dirs(),
        running: 0,
        stopping: None,
        failed_at_stop: Vec::new(),
        metrics: opts.metrics.clone(),
        idle_release_after: opts.idle_release_after,
        idle_release_max_bytes: opts.idle_release_max_bytes,
        max_jobs: opts.workers.max(1) * 2,
        fd_limit: None,
        fd_exhausted_logged: None,
        fd_count: std::cell::Cell::new(None),
        opens_wait_until: None,
    };
    let now = Instant::now();
    d.apply(catalog.databases(), now);
    match signals::raise_fd_limit() {
        Ok((soft, hard)) => {
            d.fd_limit = Some(soft);
            let databases = d.slots.len() as u64;
            let wanted = fds_wanted(databases);
            if soft < databases + FDS_RESERVED {
                // Not even one descriptor per database: some could never be
                // replicated. Better refused now than failing for ever.
                return Err(DaemonError::Setup(format!(
                    "the open-file limit is {soft} (hard limit {hard}), too low for {databases} \
                     databases: walsync needs one descriptor per database, up to \
                     {FDS_PER_ACTIVE_DATABASE} per active one and about {FDS_RESERVED} of its own; {}",
                    raise_limit_hint(wanted)
                )));
            }
            if soft < wanted {
                log::warn!(
                    "the open-file limit is {soft} (hard limit {hard}); {databases} databases may \
                     need up to {wanted} when all are active, and those that cannot be opened \
                     then wait and are retried; {}",
                    raise_limit_hint(wanted)
                );
            }
        }
        Err(e) => log::warn!("cannot read the open-file limit: {e}"),
    }
    log::info!(
        "watching {} databases ({} directories), {} workers, storage {}",
        d.slots.len(),
        d.watched.len(),
        opts.workers.max(1),
        storage.location()
    );

    let mut next_rescan = now + opts.rescan_interval;
    let mut catalog_due: Option<Instant> = None;
    'outer: loop {
        let now = Instant::now();
        d.launch_due(now);
        if let Some(since) = d.stopping {
            if d.running == 0 && d.slots.values().all(|s| s.final_sync_done || !s.dirty) {
                break;
            }
            if since.elapsed() > opts.shutdown_timeout {
                log::error!(
                    "stop timed out after {:?} with {} syncs still running",
                    opts.shutdown_timeout,
                    d.running
                );
                let unfinished = d.unfinished();
                d.failed_at_stop.extend(unfinished);
                break;
            }
        }
        let mut wake = if d.stopping.is_some() {
            now + Duration::from_millis(100)
        } else {
            next_rescan
        };
        if let Some(c) = catalog_due {
            wake = wake.min(c);
        }
        // With every job slot taken, the next finished job is what can
        // start more: due work must not make this loop spin meanwhile.
        if d.running < d.max_jobs {
            // Databases that need opening while descriptors are short wait
            // for a job to end (a message) or for the short wait to pass.
            let opens_wait = d.opens_wait_until.filter(|&t| t > now);
            for s in d.slots.values() {
                if let Some(r) = s.replica.as_ref().filter(|_| s.dirty) {
                    let due = match opens_wait {
                        Some(t) if !r.is_live() => s.due.max(t),
                        _ => s.due,
                    };
                    wake = wake.min(due);
                }
                if let Some(t) = s.release_at {
                    wake = wake.min(t);
                }
            }
        }
        let mut msg = match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // What arrived meanwhile is handled before the next look at every
        // database (above): with 10,000 databases starting, one look per
        // message kept the main thread busy with nothing else. A bounded
        // batch, so that a flood of events cannot hold the jobs back.
        for _ in 0..MESSAGE_BATCH {
            let Some(m) = msg.take() else { break };
            if d.handle(m, catalog, &mut catalog_due, Instant::now()) == Flow::StopNow {
                break 'outer;
            }
            msg = rx.try_recv().ok();
        }
        let now = Instant::now();
        if d.stopping.is_none() {
            if catalog_due.is_some_and(|c| c <= now) {
                catalog_due = None;
                d.apply(catalog.databases(), now);
            }
            if now >= next_rescan {
                d.rescan(now);
                if !d.discovery.is_empty() && catalog_due.is_none() {
                    catalog_due = Some(now);
                }
                next_rescan = now + opts.rescan_interval;
            }
        }
    }
    let failed = std::mem::take(&mut d.failed_at_stop);
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

    fn slot(id: u64, now: Instant) -> Slot {
        Slot::new(
            WatchedDatabase {
                replica: ReplicaOptions {
                    path: PathBuf::from(format!("/nonexistent/{id}.db")),
                    prefix: format!("db/{id}"),
                    snapshot_interval: Duration::from_secs(3600),
                    checkpoint_threshold: 1 << 22,
                    truncate_threshold: 1 << 26,
                    max_segment_bytes: 1 << 24,
                    spool_dir: std::env::temp_dir(),
                    retention: None,
                },
                sync_interval: Duration::from_secs(1),
            },
            now,
        )
    }

    #[test]
    fn a_descriptor_count_moves_with_opens_and_releases_until_the_next() {
        let c = |n, opened, released| FdCount {
            at: Instant::now(),
            n,
            opened,
            released,
        };
        assert_eq!(c(100, 0, 0).used(), 100);
        // An opened database may take all it can; a release is taken to give
        // back fewer than that.
        assert_eq!(c(100, 2, 0).used(), 112);
        assert_eq!(c(100, 2, 3).used(), 103);
        assert_eq!(c(4, 0, 10).used(), 0);
    }

    #[test]
    fn due_syncs_go_longest_waiting_first() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut slots = BTreeMap::new();
        // id -> (due, dirty, replica present)
        for (id, due, dirty, present) in [
            (1, 900, true, true),
            (2, 100, true, true),
            (3, 500, true, true),
            (4, 50, false, true),  // clean
            (5, 10, true, false),  // its job is running
            (6, 2000, true, true), // not yet due
            (7, 100, true, true),
        ] {
            let mut s = slot(id, t0);
            s.due = at(due);
            s.dirty = dirty;
            if !present {
                s.replica = None;
            }
            slots.insert(id, s);
        }
        assert_eq!(due_syncs(&slots, at(1000), 10, true), vec![2, 7, 3, 1]);
        assert_eq!(due_syncs(&slots, at(1000), 2, true), vec![2, 7]);
        assert_eq!(due_syncs(&slots, at(1000), 3, true), vec![2, 7, 3]);
        assert_eq!(due_syncs(&slots, at(2000), 5, true), vec![2, 7, 3, 1, 6]);
        assert!(due_syncs(&slots, at(0), 5, true).is_empty());
        // While descriptors are short, only databases open already can
        // start; none of these is.
        assert!(due_syncs(&slots, at(1000), 10, false).is_empty());
    }
}
