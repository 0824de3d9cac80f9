//! The daemon's decisions, apart from its effects: which databases sync
//! now and in what order (longest waiting first, so none starves), when a
//! failing one is retried (backoff), when an idle one is let go (and
//! sooner while others wait for descriptors), what follows a finished job,
//! and what a stop still has to do (ARCHITECTURE.md invariant 8: a last sync of
//! every database, nothing new after it).
//!
//! The state of each database is explicit: whether a job has its replica
//! (`Job`), whether a sync is wanted and from when (`Work`), how its syncs
//! have been failing (`Health`), and whether it stays, leaves the catalog
//! or is done at a stop (`Membership`). Queues list the databases by
//! due time (those walsync has not opened apart) and by release time, so
//! that what is due is found without looking at every database (`reindex`
//! keeps them, and the count of open databases, after each change).
//!
//! At most `MAX_OPEN` databases are opened from nothing (start-up, many
//! databases discovered at once) while that many are open, and open ones
//! are let go of sooner meanwhile: memory at start-up is bounded by that
//! window (about 60 KB each), not by the number of databases. Released
//! databases that the application writes again wake whatever the count.
//! `Schedule` changes these and returns `Action`s; the loop (`super`) performs them: it owns the
//! replicas, the worker pool, the watcher and the metrics. Nothing here
//! opens a file: the clock is the `now` passed in, the backoff and the
//! wall clock are functions given at construction, file stats come from a
//! function parameter, and descriptors are asked through `Descriptors`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::catalog::WatchedDatabase;
use super::fds::{
    Descriptors, FDS_PER_ACTIVE_DATABASE, FDS_PER_JOB, FD_WAIT, PRESSED_IDLE_DIVISOR,
};
use super::outage::{Notice, OutageWatch};
use crate::replica::SyncReport;
use crate::sqlite::FileStat;

/// What a database's connections are, between jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connection {
    /// Not opened yet, or closed: the next sync opens it (and resumes from
    /// what the bucket holds).
    Closed,
    /// Replicating: connections open, a read transaction held.
    Open,
    /// Let go while idle: one descriptor kept, files fingerprinted.
    Released,
}

/// Whether a job has the database's replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Job {
    /// No job: the loop holds the replica.
    Idle(Connection),
    Syncing,
    Releasing,
}

/// Whether a sync is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Nothing new since the last sync started.
    Clean,
    /// Something changed (or may have): sync at this time or later.
    Due(Instant),
}

/// How the database's syncs have been going.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    /// Failures that drive the backoff (not counted when descriptors were
    /// short, which is not the database's fault).
    failures: u32,
    /// The current run of failed syncs: how many, and when the first
    /// began (for the recovery line).
    failed_syncs: u32,
    failing_since: Option<Instant>,
    /// Backing off: no sync before this.
    retry_at: Option<Instant>,
    /// The last sync failed to reach the storage.
    unreachable: bool,
    /// "waiting for the database to be created" was said.
    waiting_logged: bool,
    /// That another walsync holds the prefix was said.
    refused_logged: bool,
}

/// Whether the database stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Membership {
    Replicating,
    /// Left the catalog: one last sync, then it is forgotten.
    Leaving,
    /// Stopping: its last sync ran (or it had nothing to ship).
    Finished,
}

/// One database as the scheduler sees it.
pub(crate) struct Database {
    pub(crate) want: WatchedDatabase,
    job: Job,
    work: Work,
    last_sync: Option<Instant>,
    health: Health,
    /// The files as the last job left them.
    stat: Option<FileStat>,
    /// Wall-clock ms since which changes have been waiting to be shipped.
    pending_since_ms: Option<u64>,
    /// When to let go of the connections if nothing is committed until then.
    release_at: Option<Instant>,
    /// No other process had it open at the last probe: the application
    /// closed its last connection, so walsync lets go now, whatever the
    /// database's size and whether commits wait (`last_close`).
    closed_by_app: bool,
    /// The application showed itself since walsync took the database up
    /// (or last let go of it): a sync shipped commits, or a probe found
    /// another process with it open. Only then is a probe that finds none
    /// a last close (`last_close`). A database no process has open when
    /// walsync takes it up was closed by nobody, and letting go of it at
    /// once would cost a new generation whenever a writer that starts next
    /// checkpoints before walsync is back (its WAL and `-shm` are made
    /// afresh then, so nothing proves that they continue the history).
    /// Close events cannot tell: walsync's own connections make them too.
    app_seen: bool,
    /// Its last idle release did not let go of it (larger than
    /// `idle_release_max_size`, or not the moment): tried again after
    /// `idle_release_after`, and not counted in the window of open
    /// databases meanwhile (`counts_open`).
    kept_open: bool,
    /// Its replica keeps objects for the storage, from a let-go during an
    /// outage (`Replica::has_pending`): released, it still wants syncs
    /// (which upload them without waking it), and a stop gives it one.
    spooled: bool,
    /// Let go of without a mark in the bucket (larger than
    /// `idle_release_max_size`, at the application's last close): its stop
    /// takes it up again to leave one, so that the next start needs no
    /// snapshot (`Replica::released_without_mark`).
    unmarked: bool,
    membership: Membership,
    /// Where `Schedule::reindex` lists it now.
    listed: Listed,
}

/// Databases by due time, then id.
type DueQueue = BTreeSet<(Instant, u64)>;

/// Where `Schedule::reindex` last listed a database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Listed {
    /// Its due time, and whether in `Schedule::due_closed` (walsync has
    /// not opened it) rather than in `Schedule::due`.
    due: Option<(Instant, bool)>,
    /// Its release time, in `Schedule::releases`: only while it may be
    /// let go of then (`may_let_go`).
    release: Option<Instant>,
    /// Counted in `Schedule::open`.
    open: bool,
}

/// Whether a database counts as open: walsync holds its connections, or a
/// job has it (and may open it); not one whose last release did not let go
/// (`Database::kept_open`), since letting go of open ones is what makes
/// room for more.
fn counts_open(job: Job, kept_open: bool) -> bool {
    !kept_open && !matches!(job, Job::Idle(Connection::Closed | Connection::Released))
}

/// Databases walsync opens from nothing only while fewer than this many are
/// open (see the module's doc): each open one costs about 60 KB (its SQLite
/// connection, the `-shm` pages it maps) and up to `FDS_PER_ACTIVE_DATABASE`
/// descriptors. The window lets first syncs go on at the pace of the jobs
/// while the open ones are let go of after a tenth of `idle_release_after`
/// (at 250 first syncs a second, about 1,500 are open at once).
pub(crate) const MAX_OPEN: usize = 2048;

impl Database {
    fn new(want: WatchedDatabase, now: Instant) -> Database {
        Database {
            want,
            job: Job::Idle(Connection::Closed),
            work: Work::Due(now),
            last_sync: None,
            health: Health::default(),
            stat: None,
            pending_since_ms: None,
            release_at: None,
            closed_by_app: false,
            app_seen: false,
            kept_open: false,
            spooled: false,
            unmarked: false,
            membership: Membership::Replicating,
            listed: Listed::default(),
        }
    }

    /// When its sync is due, if one is wanted.
    fn due_at(&self) -> Option<Instant> {
        match self.work {
            Work::Due(at) => Some(at),
            Work::Clean => None,
        }
    }

    pub(crate) fn name(&self) -> String {
        format!(
            "{} ({})",
            self.want.replica.path.display(),
            self.want.replica.prefix
        )
    }

    pub(crate) fn is_dirty(&self) -> bool {
        matches!(self.work, Work::Due(_))
    }

    pub(crate) fn pending_since_ms(&self) -> Option<u64> {
        self.pending_since_ms
    }

    fn mark_dirty(&mut self, now: Instant, wall_ms: fn() -> u64) {
        // A released database holds no read transaction: until walsync takes
        // one again, the application's checkpoints can restart the WAL over
        // commits walsync has not read (a new generation). It wakes at once;
        // the sync interval paces databases whose WAL walsync pins.
        let released = self.job == Job::Idle(Connection::Released);
        let mut due = match self.last_sync {
            Some(last) if !released => (last + self.want.sync_interval).max(now),
            _ => now,
        };
        if let Some(retry) = self.health.retry_at {
            due = due.max(retry);
        }
        match self.work {
            Work::Due(earlier) if earlier <= due => {}
            _ => self.work = Work::Due(due),
        }
        self.pending_since_ms.get_or_insert_with(wall_ms);
    }

    /// The sync that just ended left the WAL unbackfilled because the
    /// application was writing (`SyncReport::settle_deferred`): one more
    /// sync a sync interval after it, even if nothing changes, backfills it
    /// once the application has paused (`Replica::settle`). Not a change:
    /// the lag reported (`pending_since_ms`) stays as it is.
    fn settle_later(&mut self) {
        if let (Work::Clean, Some(last)) = (self.work, self.last_sync) {
            self.work = Work::Due(last + self.want.sync_interval);
        }
    }

    /// Released, and written since (a change of its files walsync did not
    /// make): walsync takes the database up at once (`mark_dirty`), also
    /// while its syncs back off from a storage outage to upload what a
    /// let-go kept (`spooled`): until the wake's read transaction, the
    /// application's checkpoints can restart the WAL over commits walsync
    /// has not read. For such a database the write is also what shows the
    /// application (`app_seen`): its syncs ship nothing until the storage
    /// answers, so its next close would not let it go again.
    fn wake(&mut self, now: Instant, wall_ms: fn() -> u64) {
        self.mark_dirty(now, wall_ms);
        if self.spooled {
            self.app_seen = true;
            self.work = Work::Due(now);
        }
    }

    /// Released, and its files as walsync left them.
    fn released_unchanged(&self, stat_of: &dyn Fn(&Path) -> FileStat) -> bool {
        self.job == Job::Idle(Connection::Released)
            && self.stat == Some(stat_of(&self.want.replica.path))
    }
}

/// What the loop does for the scheduler.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Lend the replica to a job that syncs it (with the options in `want`);
    /// `last`: then stop it, leaving a mark (README "Restarts").
    Sync { id: u64, last: bool },
    /// Lend the replica to a job that lets go of the database, for the
    /// reason given.
    Release { id: u64, why: LetGo },
    /// Close the replica's connections: done with it at a stop.
    Close { id: u64 },
    /// The database left and had its last sync: drop the replica and its
    /// figures (under `prefix`).
    Forget { id: u64, prefix: String },
}

/// Why walsync lets go of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LetGo {
    /// Idle for `idle_release_after` (`Replica::release`).
    Idle,
    /// No other process has it open any more (`Replica::release_closed`);
    /// `storage_failing`: its last sync could not reach the storage, so
    /// walsync lets go without trying to ship first.
    Closed { storage_failing: bool },
}

/// How a sync job ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Synced(SyncReport),
    /// Another file took the database's path: sync again, no backoff.
    Replaced(String),
    /// The database file is not there (yet).
    Missing,
    /// A file renamed over the database while walsync held it is still
    /// open with the old file's wal-index (`Replica` said so, once): looked
    /// at again on its next change, as a missing one.
    Waiting,
    /// No descriptor was free: wait for some, no backoff.
    OutOfDescriptors(String),
    /// The storage could not be reached (or answered with a server error
    /// or throttling): back off, and see whether many databases see the
    /// same (`outage`).
    Unreachable(String),
    Failed(String),
    /// Another walsync holds the database's prefix (`crate::lease`): not a
    /// failure to back off from nor an outage; said once while it lasts,
    /// and looked at again after `retry_after` (when that lease can have
    /// expired), the database untouched meanwhile.
    Refused {
        error: String,
        retry_after: Duration,
    },
}

/// A sync job's return.
pub(crate) struct Finished {
    pub(crate) outcome: Outcome,
    /// The replica's connections after the job.
    pub(crate) connection: Connection,
    /// The files when the job began.
    pub(crate) stat: FileStat,
    /// When the job began.
    pub(crate) started: Instant,
    /// Whether another process has the database open, asked as the job
    /// ended (`None`: not known, or not open).
    pub(crate) others_attached: Option<bool>,
}

/// The scheduler: every database's state and the daemon-wide decisions.
pub(crate) struct Schedule {
    dbs: BTreeMap<u64, Database>,
    /// The databases that want a sync, by due time (then id): the loop
    /// looks at those due now, not at every database, after each batch of
    /// messages. Kept by `reindex` after every change of a database. Those
    /// walsync has not opened (`Connection::Closed`, no job) are in
    /// `due_closed` instead, since they wait while `MAX_OPEN` are open.
    due: BTreeSet<(Instant, u64)>,
    due_closed: BTreeSet<(Instant, u64)>,
    /// The databases that count as open (`counts_open`), kept by `reindex`.
    open: usize,
    /// `MAX_OPEN`, or less in tests.
    max_open: usize,
    /// Where `rescan_some` goes on: the id after the last it looked at.
    rescan_from: u64,
    /// The databases with a release time, by that time (then id), while
    /// they may be let go of (`may_let_go`): a time that has come for one
    /// that cannot be let go of then must not bring the loop's wake
    /// (`next_wake`) forward, or the loop spins until it can.
    releases: BTreeSet<(Instant, u64)>,
    by_path: HashMap<PathBuf, u64>,
    next_id: u64,
    running: usize,
    /// Jobs queued or running at most (see `launch`).
    max_jobs: usize,
    stopping: Option<Instant>,
    failed_at_stop: Vec<String>,
    idle_release_after: Option<Duration>,
    /// Until when databases that need opening wait, because descriptors
    /// were short; cleared when a job ends and gives some back. A database
    /// that waits keeps its due time, and so its place in line: pushing it
    /// back instead let the same ones lose the race for freed descriptors
    /// again and again.
    opens_wait_until: Option<Instant>,
    /// The wait after the `n`th failure in a row.
    backoff: fn(u32) -> Duration,
    /// Wall-clock milliseconds (for `pending_since_ms`).
    wall_ms: fn() -> u64,
    /// Whether the storage as a whole is down: then one line says so, and
    /// the databases' own lines go to debug.
    outage: OutageWatch,
}

impl Schedule {
    pub(crate) fn new(
        max_jobs: usize,
        idle_release_after: Option<Duration>,
        backoff: fn(u32) -> Duration,
        wall_ms: fn() -> u64,
    ) -> Schedule {
        Schedule {
            dbs: BTreeMap::new(),
            due: BTreeSet::new(),
            due_closed: BTreeSet::new(),
            open: 0,
            max_open: MAX_OPEN,
            rescan_from: 0,
            releases: BTreeSet::new(),
            by_path: HashMap::new(),
            next_id: 0,
            running: 0,
            max_jobs,
            stopping: None,
            failed_at_stop: Vec::new(),
            idle_release_after,
            opens_wait_until: None,
            backoff,
            wall_ms,
            outage: OutageWatch::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.dbs.len()
    }

    /// Opens databases from nothing only while fewer than the descriptors
    /// allow are open (`MAX_OPEN` at most, `fds::open_window`), for as
    /// many databases as there are now: at start, once the open-file limit
    /// is known, and whenever databases come or go (`apply`, `forget`), so
    /// that a reload that adds many cannot open them past the limit. Kept
    /// as it is while the limit is not known.
    pub(crate) fn fit_open_window(&mut self, fds: &dyn Descriptors) {
        let Some(window) = fds.open_window(self.dbs.len() as u64, self.max_jobs) else {
            return;
        };
        let window = window.max(1);
        if window != self.max_open {
            log::info!(
                "opening at most {window} databases at a time (the open-file limit leaves room \
                 for that many beside one descriptor for each of {})",
                self.dbs.len()
            );
            self.max_open = window;
        }
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Database> {
        self.dbs.get(&id)
    }

    /// Every database's path.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.dbs.values().map(|d| d.want.replica.path.as_path())
    }

    pub(crate) fn running(&self) -> usize {
        self.running
    }

    pub(crate) fn stopping(&self) -> Option<Instant> {
        self.stopping
    }

    /// The databases a stop left with commits unshipped.
    pub(crate) fn take_failed_at_stop(&mut self) -> Vec<String> {
        std::mem::take(&mut self.failed_at_stop)
    }

    /// Lists database `id` under its due time and release time as they are
    /// now, and counts it if open (nowhere once it is gone). Every change
    /// of a database's `work`, `release_at` or `job` is followed by this.
    fn reindex(&mut self, id: u64) {
        let Some(d) = self.dbs.get_mut(&id) else {
            return;
        };
        let closed = d.job == Job::Idle(Connection::Closed);
        let stopping = self.stopping.is_some();
        let now = Listed {
            due: d.due_at().map(|t| (t, closed)),
            release: d
                .release_at
                .filter(|_| may_let_go(d.job, d.is_dirty(), d.closed_by_app, stopping)),
            open: counts_open(d.job, d.kept_open),
        };
        let was = std::mem::replace(&mut d.listed, now);
        self.relist(id, was, now);
    }

    /// Moves database `id` from where `was` lists it to where `now` does.
    fn relist(&mut self, id: u64, was: Listed, now: Listed) {
        if was.due != now.due {
            if let Some((t, closed)) = was.due {
                self.due_queue(closed).remove(&(t, id));
            }
            if let Some((t, closed)) = now.due {
                self.due_queue(closed).insert((t, id));
            }
        }
        if was.release != now.release {
            if let Some(t) = was.release {
                self.releases.remove(&(t, id));
            }
            if let Some(t) = now.release {
                self.releases.insert((t, id));
            }
        }
        match (was.open, now.open) {
            (false, true) => self.open += 1,
            (true, false) => self.open -= 1,
            _ => {}
        }
    }

    fn due_queue(&mut self, closed: bool) -> &mut BTreeSet<(Instant, u64)> {
        if closed {
            &mut self.due_closed
        } else {
            &mut self.due
        }
    }

    /// Whether as many databases are open as databases are opened from
    /// nothing with (`MAX_OPEN`).
    fn open_window_full(&self) -> bool {
        self.open >= self.max_open
    }

    /// `reindex` for every database, after a change to all of them.
    fn reindex_all(&mut self) {
        let ids: Vec<u64> = self.dbs.keys().copied().collect();
        for id in ids {
            self.reindex(id);
        }
    }

    /// Brings the databases in line with the catalog: adds new ones,
    /// updates the options of kept ones, schedules removed ones for a last
    /// sync; and the window of open databases with their number.
    pub(crate) fn apply(
        &mut self,
        wanted: Vec<WatchedDatabase>,
        now: Instant,
        fds: &dyn Descriptors,
    ) {
        let mut keep = HashMap::new();
        for want in wanted {
            let path = want.replica.path.clone();
            if keep.contains_key(&path) {
                log::warn!("{} is listed twice; replicating it once", path.display());
                continue;
            }
            match self.by_path.get(&path).copied() {
                Some(id) if self.dbs[&id].want.replica.prefix == want.replica.prefix => {
                    let db = self
                        .dbs
                        .get_mut(&id)
                        .expect("invariant: by_path points at a database");
                    if db.membership == Membership::Leaving {
                        log::info!(
                            "{}: back in the configuration, keeps replicating",
                            db.name()
                        );
                        db.membership = Membership::Replicating;
                    }
                    db.want = want;
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
            .dbs
            .iter()
            .filter(|(id, d)| {
                d.membership != Membership::Leaving && keep.get(&d.want.replica.path) != Some(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove(id, now);
        }
        self.fit_open_window(fds);
    }

    fn add(&mut self, want: WatchedDatabase, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let db = Database::new(want, now);
        if self.stopping.is_none() && self.next_id > 1 {
            log::debug!("{}: added", db.name());
        }
        self.by_path.insert(db.want.replica.path.clone(), id);
        self.dbs.insert(id, db);
        self.reindex(id);
        id
    }

    fn remove(&mut self, id: u64, now: Instant) {
        if let Some(db) = self.dbs.get_mut(&id) {
            log::info!(
                "{}: no longer configured; shipping what it committed, then letting go",
                db.name()
            );
            db.membership = Membership::Leaving;
            db.health.retry_at = None;
            db.last_sync = None;
            db.mark_dirty(now, self.wall_ms);
            self.reindex(id);
        }
    }

    /// Drops a database that left, once its last sync ran (the window of
    /// open databases widens with the descriptor it gave back).
    fn forget(&mut self, id: u64, fds: &dyn Descriptors) -> Option<Action> {
        let db = self.dbs.remove(&id)?;
        self.fit_open_window(fds);
        self.relist(id, db.listed, Listed::default());
        tell(self.outage.forget(id));
        if self.by_path.get(&db.want.replica.path) == Some(&id) {
            self.by_path.remove(&db.want.replica.path);
        }
        log::info!("{}: stopped replicating", db.name());
        Some(Action::Forget {
            id,
            prefix: db.want.replica.prefix,
        })
    }

    /// Every database may have changed (a lost event, a watcher error).
    pub(crate) fn mark_all_dirty(&mut self, now: Instant) {
        for db in self.dbs.values_mut() {
            db.mark_dirty(now, self.wall_ms);
        }
        self.reindex_all();
    }

    /// A file event for the database at `path`. Returns whether it is one
    /// of them.
    pub(crate) fn on_file_event(
        &mut self,
        path: &Path,
        now: Instant,
        stat_of: &dyn Fn(&Path) -> FileStat,
    ) -> bool {
        let Some(&id) = self.by_path.get(path) else {
            return false;
        };
        if let Some(db) = self.dbs.get_mut(&id) {
            // A released database wakes only for a real change, not for the
            // tail of walsync's own checkpoint.
            if db.job == Job::Idle(Connection::Released) {
                if db.stat != Some(stat_of(path)) {
                    db.wake(now, self.wall_ms);
                }
            } else {
                db.mark_dirty(now, self.wall_ms);
            }
            self.reindex(id);
        }
        true
    }

    /// A file of the released database at `path` was closed: a WAL with
    /// frames, which walsync's own closes never leave, wakes it (at once).
    pub(crate) fn on_close_released(
        &mut self,
        path: &Path,
        now: Instant,
        stat_of: &dyn Fn(&Path) -> FileStat,
    ) {
        let Some(&id) = self.by_path.get(path) else {
            return;
        };
        let Some(db) = self.dbs.get_mut(&id) else {
            return;
        };
        let stat = stat_of(path);
        if db.job == Job::Idle(Connection::Released)
            && stat.wal.is_some_and(|(len, _)| len > 0)
            && db.stat != Some(stat)
        {
            db.wake(now, self.wall_ms);
            self.reindex(id);
        }
    }

    /// The database at `path`, if walsync holds it open and no job has it:
    /// the one to ask, after a file of it was closed, whether another
    /// process still has it open (`on_probe`).
    pub(crate) fn probe_wanted(&self, path: &Path) -> Option<u64> {
        let id = *self.by_path.get(path)?;
        let db = self.dbs.get(&id)?;
        (db.job == Job::Idle(Connection::Open) && self.stopping.is_none()).then_some(id)
    }

    /// What the probe of `probe_wanted` found: whether another process has
    /// database `id` open (`None`: not known). If none has, walsync lets go
    /// of it now (`last_close`).
    pub(crate) fn on_probe(&mut self, id: u64, others_attached: Option<bool>, now: Instant) {
        let leaving = self.stopping.is_some();
        let Some(db) = self.dbs.get_mut(&id) else {
            return;
        };
        let leaving = leaving || db.membership == Membership::Leaving;
        db.app_seen |= others_attached == Some(true);
        if db.app_seen && last_close(db.job, others_attached, leaving) {
            log::debug!("{}: no other process has it open; letting go", db.name());
            db.closed_by_app = true;
            db.release_at = Some(now);
            self.reindex(id);
        }
    }

    /// The safety net: the databases (those whose path `which` accepts)
    /// whose files changed without an event are due.
    pub(crate) fn rescan(
        &mut self,
        now: Instant,
        stat_of: &dyn Fn(&Path) -> FileStat,
        which: &dyn Fn(&Path) -> bool,
    ) {
        let ids: Vec<u64> = self
            .dbs
            .iter()
            .filter(|(_, d)| which(&d.want.replica.path))
            .map(|(&id, _)| id)
            .collect();
        self.rescan_ids(ids, now, stat_of);
    }

    /// `rescan` of the next `n` databases in id order, from where the last
    /// one stopped (round and round): the periodic rescan, spread over its
    /// interval (`rescan_slice`).
    pub(crate) fn rescan_some(
        &mut self,
        n: usize,
        now: Instant,
        stat_of: &dyn Fn(&Path) -> FileStat,
    ) {
        let from = self.rescan_from;
        let ids: Vec<u64> = self
            .dbs
            .range(from..)
            .chain(self.dbs.range(..from))
            .take(n)
            .map(|(&id, _)| id)
            .collect();
        if let Some(&last) = ids.last() {
            self.rescan_from = last + 1;
        }
        self.rescan_ids(ids, now, stat_of);
    }

    fn rescan_ids(&mut self, ids: Vec<u64>, now: Instant, stat_of: &dyn Fn(&Path) -> FileStat) {
        for id in ids {
            let Some(db) = self.dbs.get_mut(&id) else {
                continue;
            };
            if matches!(db.job, Job::Idle(_))
                && !db.is_dirty()
                && db.stat != Some(stat_of(&db.want.replica.path))
            {
                db.mark_dirty(now, self.wall_ms);
                self.reindex(id);
            }
        }
    }

    /// Whether databases that need opening wait for descriptors now.
    fn opens_wait(&self, now: Instant) -> bool {
        self.opens_wait_until.is_some_and(|t| t > now)
    }

    /// Starts due jobs, at most `max_jobs` at a time: a job holds its
    /// database open, so an unbounded queue would open every database at
    /// once (thousands at start-up, more descriptors than allowed). Releases
    /// go first, since they close databases.
    pub(crate) fn launch(&mut self, now: Instant, fds: &mut dyn Descriptors) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.stopping.is_none() {
            for id in self.due_releases(now, fds) {
                if self.running >= self.max_jobs {
                    return actions;
                }
                let db = self.dbs.get_mut(&id).expect("invariant: listed above");
                db.job = Job::Releasing;
                db.release_at = None;
                let why = if std::mem::take(&mut db.closed_by_app) {
                    LetGo::Closed {
                        storage_failing: db.health.unreachable,
                    }
                } else {
                    LetGo::Idle
                };
                self.reindex(id);
                self.running += 1;
                actions.push(Action::Release { id, why });
            }
        }
        if self.running >= self.max_jobs {
            return actions;
        }
        let databases = self.dbs.len() as u64;
        // Descriptors left for databases opened now; worked out only when
        // the limit is too low for all of them to be open at once.
        let mut open_budget: Option<Option<u64>> = None;
        // Room for the jobs that can start, and for those that wait for
        // descriptors instead.
        let room = (self.max_jobs - self.running) * 8;
        let may_open = !self.opens_wait(now);
        let max_jobs = fds.max_jobs(databases, self.max_jobs);
        let queues = (&self.due, &self.due_closed);
        let closed_may_open = may_open && !self.open_window_full();
        for id in due_syncs(&self.dbs, queues, now, room, may_open, closed_may_open) {
            if self.running >= max_jobs {
                return actions;
            }
            let job = self.dbs[&id].job;
            if job == Job::Idle(Connection::Closed) && self.open_window_full() {
                // The window filled up with the databases started above:
                // the others wait for open ones to be let go of.
                continue;
            }
            let opens = job != Job::Idle(Connection::Open);
            let running = self.running;
            let budget = open_budget.get_or_insert_with(|| fds.open_budget(databases, running));
            if let Some(left) = budget {
                // Each job takes what it may open from the budget; one that
                // opens its database also what an active one holds.
                if opens {
                    if *left < FDS_PER_ACTIVE_DATABASE + FDS_PER_JOB {
                        // Opening it now could take the descriptors that
                        // open databases need to sync or be released (and
                        // so give theirs back): it and the others that
                        // need opening wait for a job to end, or a little.
                        self.opens_wait_until = Some(now + FD_WAIT);
                        fds.report_shortage(databases, now);
                        continue;
                    }
                    *left -= FDS_PER_ACTIVE_DATABASE;
                    fds.opened();
                }
                *left = left.saturating_sub(FDS_PER_JOB);
            }
            let db = self.dbs.get_mut(&id).expect("invariant: listed above");
            // The sync interval runs from a sync's start: what is written
            // while it runs ships one sync interval after it began, not as
            // soon as it ends (which made two syncs, and two segments, per
            // interval under steady writes, and a burst of them right after
            // a wake, whose last sync was long before).
            db.last_sync = Some(now);
            db.work = Work::Clean;
            db.job = Job::Syncing;
            // The last sync before walsync stops or lets go of the database
            // for good leaves a mark, so that the next start needs no
            // snapshot (README "Restarts").
            let last = self.stopping.is_some() || db.membership == Membership::Leaving;
            self.reindex(id);
            self.running += 1;
            actions.push(Action::Sync { id, last });
        }
        actions
    }

    /// The databases to let go now: those idle for `idle_release_after`
    /// (`release_at` is the last commit plus that), and, while a database
    /// waits to be opened for want of descriptors or while `MAX_OPEN` are
    /// open, the open ones idle for a tenth of it (`PRESSED_IDLE_DIVISOR`).
    /// This runs after every batch
    /// of messages: it looks only at the databases whose release time has
    /// come (or comes within the shortened wait), and at those due, not at
    /// every database. Both lists are in id order.
    fn due_releases(&self, now: Instant, fds: &dyn Descriptors) -> Vec<u64> {
        let databases = self.dbs.len() as u64;
        let low_limit = fds.limit_below_wanted(databases);
        let window_full = self.open_window_full();
        let pressed = low_limit || window_full;
        let sooner_by = match self.idle_release_after {
            Some(idle) if pressed => idle - idle / PRESSED_IDLE_DIVISOR,
            _ => Duration::ZERO,
        };
        let (mut due, mut sooner) = (Vec::new(), Vec::new());
        // Listed only while they may be let go of (`may_let_go`).
        for &(t, id) in self.releases.range(..=(now + sooner_by, u64::MAX)) {
            let Job::Idle(connection) = self.dbs[&id].job else {
                continue;
            };
            if t <= now {
                due.push(id);
            } else if pressed && connection == Connection::Open {
                sooner.push(id);
            }
        }
        due.sort_unstable();
        sooner.sort_unstable();
        // Whether a database waits to be opened.
        let waiting = low_limit
            && (self.due_closed.range(..=(now, u64::MAX)).next().is_some()
                || self.due.range(..=(now, u64::MAX)).any(
                    |(_, id)| matches!(self.dbs[id].job, Job::Idle(c) if c != Connection::Open),
                ));
        let short = || {
            self.opens_wait(now)
                || waiting
                    && fds
                        .open_budget(databases, self.running)
                        .is_some_and(|left| left < FDS_PER_ACTIVE_DATABASE + FDS_PER_JOB)
        };
        if !sooner.is_empty() && (window_full || short()) {
            due.append(&mut sooner);
        }
        due
    }

    /// A sync job ended: what follows for its database.
    pub(crate) fn on_done(
        &mut self,
        id: u64,
        done: Finished,
        fds: &mut dyn Descriptors,
        now: Instant,
    ) -> Vec<Action> {
        self.running -= 1;
        // The descriptors it gave back may let the databases that wait for
        // some open now.
        self.opens_wait_until = None;
        let stopping = self.stopping.is_some();
        let databases = self.dbs.len() as u64;
        let wall_ms = self.wall_ms;
        let Some(s) = self.dbs.get_mut(&id) else {
            return Vec::new();
        };
        let Finished {
            outcome,
            connection,
            stat,
            started,
            others_attached,
        } = done;
        if matches!(outcome, Outcome::Synced(_)) && !s.is_dirty() {
            s.pending_since_ms = None;
        }
        s.job = Job::Idle(connection);
        s.last_sync = Some(started);
        s.stat = Some(stat);
        if let (Outcome::Synced(r), Some(idle)) = (&outcome, self.idle_release_after) {
            // Each commit restarts the idle clock, and the first sync starts
            // it: a database is let go of only after `idle` without a
            // commit since walsync took it up, even if its first sync found
            // nothing new. Letting go at once invited a burst of writes
            // right after the start to checkpoint and restart the WAL
            // before walsync was back (a new generation); starting with
            // more databases than descriptors allow is what lets go of
            // open ones sooner (`due_releases`).
            if r.commits > 0
                || r.snapshot
                || s.release_at.is_none() && connection == Connection::Open
            {
                s.release_at = Some(now + idle);
            }
        }
        let last_sync = stopping || s.membership == Membership::Leaving;
        let mut retrying = false;
        match &outcome {
            Outcome::Synced(report) => {
                let h = &s.health;
                // During a storage outage, one line for every database
                // (below) stands for theirs.
                let level = if self.outage.in_outage() && self.outage.is_waiting(id) {
                    log::Level::Debug
                } else {
                    log::Level::Info
                };
                tell(self.outage.reached(id, now));
                if h.failed_syncs > 0 {
                    // The counterpart of the error lines: the operator sees
                    // how long the outage lasted and that the backlog went.
                    let outage = h.failing_since.map_or(0.0, |t| (now - t).as_secs_f64());
                    log::log!(
                        level,
                        "{}: replicating again after {} failed {} over {outage:.1}s; \
                         {} commits shipped",
                        s.name(),
                        h.failed_syncs,
                        if h.failed_syncs == 1 { "sync" } else { "syncs" },
                        report.commits
                    );
                } else if h.waiting_logged {
                    log::info!("{}: replicating again", s.name());
                }
                s.health = Health::default();
                if report.settle_deferred && !last_sync {
                    s.settle_later();
                }
                if report.commits > 0 {
                    log::debug!(
                        "{}: shipped {} commits in {} segments",
                        s.name(),
                        report.commits,
                        report.segments
                    );
                }
            }
            Outcome::Replaced(e) => {
                log::debug!("{}: {e}", s.name());
                retrying = true;
                s.mark_dirty(now, wall_ms);
            }
            Outcome::Waiting => log::debug!("{}: waiting for the application", s.name()),
            Outcome::Missing => {
                if !s.health.waiting_logged && !last_sync {
                    log::info!("{}: waiting for the database to be created", s.name());
                    s.health.waiting_logged = true;
                }
            }
            Outcome::Refused { error, retry_after } => {
                let level = if s.health.refused_logged || last_sync {
                    log::Level::Debug
                } else {
                    log::Level::Error
                };
                log::log!(level, "{}: {error}", s.name());
                s.health.refused_logged = true;
                if !last_sync {
                    retrying = true;
                    s.health.retry_at = Some(now + *retry_after);
                    s.mark_dirty(now, wall_ms);
                    if let Work::Due(at) = &mut s.work {
                        *at = (*at).max(now + *retry_after);
                    }
                }
            }
            Outcome::OutOfDescriptors(e) | Outcome::Unreachable(e) | Outcome::Failed(e) => {
                let fds_short = matches!(outcome, Outcome::OutOfDescriptors(_));
                // Whether the storage is down for many databases: their
                // lines go to debug, one line speaks for all of them.
                let mut quiet = false;
                match &outcome {
                    Outcome::Unreachable(_) if !last_sync => {
                        let wall = wall_ms();
                        let databases = databases as usize;
                        if let Some(n) = self.outage.unreachable(id, started, now, databases, wall)
                        {
                            // What this database saw stands for the others.
                            log::error!("{n}: {e}");
                        }
                        quiet = self.outage.in_outage();
                    }
                    Outcome::Failed(_) => tell(self.outage.failed_otherwise(id, now)),
                    _ => {}
                }
                s.health.failures += 1;
                s.health.failed_syncs += 1;
                s.health.unreachable = matches!(outcome, Outcome::Unreachable(_));
                s.health.failing_since.get_or_insert(started);
                if fds_short {
                    fds.report_shortage(databases, now);
                    // Not the database's fault: it should get its turn as
                    // soon as others are released, not after a backoff that
                    // grew while descriptors were short.
                    s.health.failures = 0;
                }
                if last_sync && !fds_short {
                    log::error!("{}: {e}", s.name());
                    // Only a database walsync was replicating can have
                    // committed transactions left unshipped.
                    if stopping && connection != Connection::Closed {
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
                    s.mark_dirty(now, wall_ms);
                    self.opens_wait_until = Some(now + FD_WAIT);
                } else {
                    retrying = true;
                    let wait = (self.backoff)(s.health.failures);
                    let level = if quiet {
                        log::Level::Debug
                    } else {
                        log::Level::Error
                    };
                    log::log!(
                        level,
                        "{}: {e}; retrying in {:.1}s",
                        s.name(),
                        wait.as_secs_f64()
                    );
                    s.health.retry_at = Some(now + wait);
                    s.mark_dirty(now, wall_ms);
                    // A database written during the failed sync is dirty
                    // already, with an earlier due time that `mark_dirty`
                    // keeps: without this it was retried at once, without
                    // backing off.
                    if let Work::Due(at) = &mut s.work {
                        *at = (*at).max(now + wait);
                    }
                }
            }
        }
        let mut actions = Vec::new();
        if stopping && !retrying {
            s.membership = Membership::Finished;
            // Done with it: its descriptors may let another database's last
            // sync run (walsync exits next; the connections close then
            // anyway). Not while another sync is due: a sync that was
            // running when the stop came is followed by one more, which
            // must find the replica as it was, not start over from the
            // bucket.
            if !s.is_dirty() {
                s.job = Job::Idle(Connection::Closed);
                actions.push(Action::Close { id });
            }
        } else if s.membership == Membership::Leaving && !retrying {
            actions.extend(self.forget(id, fds));
        }
        if let Some(s) = self.dbs.get_mut(&id) {
            let leaving = stopping || s.membership == Membership::Leaving;
            s.app_seen |= others_attached == Some(true)
                || matches!(&outcome, Outcome::Synced(r) if r.commits > 0);
            s.closed_by_app = s.app_seen && last_close(s.job, others_attached, leaving);
            if s.closed_by_app {
                s.release_at = Some(now);
            }
        }
        self.reindex(id);
        actions
    }

    /// A release job ended: `Ok(Some(stat))` if it let go (the files as it
    /// left them, taken under the write lock), `Ok(None)` if it was not
    /// the moment, `Err` with the message if it failed.
    pub(crate) fn on_released(
        &mut self,
        id: u64,
        result: Result<Option<FileStat>, String>,
        connection: Connection,
        now: Instant,
        stat_of: &dyn Fn(&Path) -> FileStat,
    ) {
        self.running -= 1;
        self.opens_wait_until = None;
        let wall_ms = self.wall_ms;
        let Some(s) = self.dbs.get_mut(&id) else {
            return;
        };
        s.job = Job::Idle(connection);
        if matches!(result, Ok(Some(_))) {
            s.app_seen = false;
        }
        s.kept_open = matches!(result, Ok(None)) && connection == Connection::Open;
        match result {
            // Let go of with commits unshipped (the storage was down when
            // the application closed it): taken up again from the bucket,
            // as a new generation, once the storage answers.
            Ok(Some(_)) if connection == Connection::Closed => s.mark_dirty(now, wall_ms),
            // The events of its own checkpoint are no news, a change from
            // this is (see `on_file_event`).
            Ok(Some(stat)) => s.stat = Some(stat),
            // Not let go of: tried again later. Without this it stayed
            // open until its next commit, for good if it had none.
            Ok(None) => {
                if let (Some(idle), Connection::Open) = (self.idle_release_after, connection) {
                    s.release_at.get_or_insert(now + idle);
                }
            }
            Err(e) => {
                log::warn!("{}: releasing the idle database failed: {e}", s.name());
                s.mark_dirty(now, wall_ms);
            }
        }
        if s.is_dirty() && s.released_unchanged(stat_of) {
            s.work = Work::Clean;
        }
        self.reindex(id);
    }

    /// Whether database `id`'s replica keeps objects for the storage
    /// (`Database::spooled`), told after each of its jobs. A released one
    /// that does wants a sync, at its backoff's pace.
    pub(crate) fn spooled(&mut self, id: u64, pending: bool, now: Instant) {
        let wall_ms = self.wall_ms;
        let Some(db) = self.dbs.get_mut(&id) else {
            return;
        };
        db.spooled = pending;
        if pending && db.job == Job::Idle(Connection::Released) && !db.is_dirty() {
            db.mark_dirty(now, wall_ms);
            self.reindex(id);
        }
    }

    /// Whether database `id`, just let go of, left no mark in the bucket
    /// (`Database::unmarked`).
    pub(crate) fn set_unmarked(&mut self, id: u64, unmarked: bool) {
        if let Some(db) = self.dbs.get_mut(&id) {
            db.unmarked = unmarked;
        }
    }

    /// SIGINT/SIGTERM: every database gets one last sync (nothing else
    /// starts), except released ones whose files did not change since and
    /// that keep nothing for the storage, and whose let-go left a mark.
    pub(crate) fn begin_stop(&mut self, now: Instant, stat_of: &dyn Fn(&Path) -> FileStat) {
        self.stopping = Some(now);
        for db in self.dbs.values_mut() {
            db.health.retry_at = None;
            db.last_sync = None;
            db.release_at = None;
            // A released database whose files did not change since has
            // nothing to ship: waking it only to stop would cost a
            // fingerprint, unless its let-go left no mark (then that is
            // what the stop is for).
            if !db.is_dirty() && !db.unmarked && !db.spooled && db.released_unchanged(stat_of) {
                db.membership = Membership::Finished;
            } else {
                db.mark_dirty(now, self.wall_ms);
            }
        }
        self.reindex_all();
    }

    /// The databases whose last sync has not run (yet).
    pub(crate) fn unfinished(&self) -> Vec<String> {
        self.dbs
            .values()
            .filter(|d| {
                (!matches!(d.job, Job::Idle(_)) || d.is_dirty())
                    && d.membership != Membership::Finished
            })
            .map(|d| d.name())
            .collect()
    }

    /// Gives up on a stop: what is unfinished counts as failed.
    pub(crate) fn abandon_stop(&mut self) {
        let unfinished = self.unfinished();
        self.failed_at_stop.extend(unfinished);
    }

    /// Whether a stop is complete: no job runs and every last sync ran.
    pub(crate) fn stop_complete(&self) -> bool {
        self.running == 0
            && self
                .dbs
                .values()
                .all(|d| d.membership == Membership::Finished || !d.is_dirty())
    }

    /// When the loop must look again at the latest, given `wake` (its own
    /// timers): the next time something can start, a due sync or release.
    /// Never now or earlier for what cannot start then: the loop would go
    /// round without waiting, at full CPU, until it could. So not while
    /// every job slot is taken (the next finished job is what can start
    /// more: a message wakes the loop), nor syncs while as many run as the
    /// open-file limit lets (`Descriptors::max_jobs`; releases still may),
    /// nor databases that need opening while descriptors are short, and
    /// releases only of databases that may be let go of (`releases`).
    pub(crate) fn next_wake(
        &self,
        now: Instant,
        mut wake: Instant,
        fds: &dyn Descriptors,
    ) -> Instant {
        if self.running >= self.max_jobs {
            return wake;
        }
        if let Some(&(t, _)) = self.releases.first() {
            wake = wake.min(t);
        }
        if self.running >= fds.max_jobs(self.dbs.len() as u64, self.max_jobs) {
            return wake;
        }
        // Databases that need opening while descriptors are short wait for
        // a job to end (a message) or for the short wait to pass.
        let opens_wait = self.opens_wait_until.filter(|&t| t > now);
        // In due order: once a due time is past `wake`, no later one can
        // bring it forward. Those a job has wait for its end (a message).
        for &(due, id) in &self.due {
            if due >= wake {
                break;
            }
            if let Job::Idle(c) = self.dbs[&id].job {
                let due = match opens_wait {
                    Some(t) if c != Connection::Open => due.max(t),
                    _ => due,
                };
                wake = wake.min(due);
            }
        }
        // Those walsync has not opened wait, while the window is full, for
        // an open one to be let go of: a job's end, or a look a little
        // later (open ones are let go of sooner then, see `due_releases`).
        if let Some(&(due, _)) = self.due_closed.first() {
            let due = opens_wait.map_or(due, |t| due.max(t));
            wake = wake.min(if self.open_window_full() {
                due.max(now + FD_WAIT)
            } else {
                due
            });
        }
        wake
    }
}

/// Databases whose files the periodic rescan looks at per second, at most:
/// two `stat`s each, a few microseconds. Up to `rescan_interval` × this
/// many databases (10,000 at the default 10 s) each is looked at once per
/// `rescan_interval`; beyond, the round through all of them takes longer
/// (100 s for 100,000), so that an idle walsync costs the same fraction of
/// a core whatever the number of databases. The databases of directories
/// walsync could not watch are all looked at every `rescan_interval`
/// besides, and a lost event (the watcher's queue overflowed) makes an
/// immediate rescan of all.
pub(crate) const RESCAN_PER_SECOND: u64 = 1_000;

/// How many databases the periodic rescan looks at on each of its ticks,
/// `tick` apart, for `databases` to be looked at once per
/// `rescan_interval`, or at `RESCAN_PER_SECOND` if that is fewer (at least
/// one, while there are databases).
pub(crate) fn rescan_slice(databases: usize, rescan_interval: Duration, tick: Duration) -> usize {
    let ticks = (rescan_interval.as_secs_f64() / tick.as_secs_f64().max(1e-3)).max(1.0);
    let even = (databases as f64 / ticks).ceil() as u64;
    let cap = ((RESCAN_PER_SECOND as f64 * tick.as_secs_f64()).ceil() as u64).max(1);
    even.min(cap).min(databases as u64) as usize
}

/// Whether a database may be let go of when its release time comes: no job
/// has it, walsync is not stopping (the stop's last syncs let go of every
/// database), and no sync is due first, unless the application closed it
/// (then the release ships what waits). Only such a database is listed
/// under its release time (`Schedule::reindex`): one whose time came while
/// its sync ran, or while its next sync waited for the sync interval or a
/// backoff, pulled the loop's wake to the past with nothing to start, and
/// the loop spun at full CPU until the job ended or the sync was due.
fn may_let_go(job: Job, dirty: bool, closed_by_app: bool, stopping: bool) -> bool {
    matches!(job, Job::Idle(_)) && !stopping && (!dirty || closed_by_app)
}

/// Whether walsync lets go of a database now because the application
/// closed it: no other process has it open (`others_attached`, from the
/// DMS lock of its `-shm` file) while walsync holds it open and no job has
/// it. SQLite's own last close would checkpoint and delete the WAL then;
/// walsync's connection prevents that, so walsync does it, and the
/// database can be replaced or deleted as if walsync were not there. Not
/// when it leaves (`leaving`: stopping, or no longer configured): its last
/// sync lets go of it anyway.
fn last_close(job: Job, others_attached: Option<bool>, leaving: bool) -> bool {
    job == Job::Idle(Connection::Open) && others_attached == Some(false) && !leaving
}

/// Logs what the outage watch has to say: that the storage went down (an
/// error) or came back (the counterpart).
fn tell(notice: Option<Notice>) {
    match notice {
        Some(n @ Notice::Began { .. }) => log::error!("{n}"),
        Some(n @ Notice::Ended { .. }) => log::info!("{n}"),
        None => {}
    }
}

/// The databases whose sync is due and can start, longest waiting first.
/// In key order instead, the first databases would take every free job
/// while the last ones wait, whenever more work is due than jobs run.
/// At most `n` of them, read off the two due queues (every database that
/// wants a sync, by due time then id: those walsync has opened, and those
/// it has not) up to `now`: with thousands of databases, only those due
/// are looked at. Unless `may_open`, only those open already; unless
/// `closed_may_open`, none of those not opened.
fn due_syncs(
    dbs: &BTreeMap<u64, Database>,
    (due, due_closed): (&DueQueue, &DueQueue),
    now: Instant,
    n: usize,
    may_open: bool,
    closed_may_open: bool,
) -> Vec<u64> {
    let held = due
        .range(..=(now, u64::MAX))
        .filter(|(_, id)| matches!(dbs[id].job, Job::Idle(c) if may_open || c == Connection::Open))
        .take(n);
    let closed = due_closed
        .range(..=(now, u64::MAX))
        .take(if closed_may_open { n } else { 0 });
    let mut both: Vec<(Instant, u64)> = held.chain(closed).copied().collect();
    both.sort_unstable();
    both.into_iter().take(n).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::SystemTime;

    use super::*;
    use crate::replica::ReplicaOptions;

    fn want(id: u64) -> WatchedDatabase {
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
                keys: Default::default(),
            },
            sync_interval: Duration::from_secs(1),
        }
    }

    /// 2 s after the first failure in a row, 4 s after the second, …
    fn test_backoff(failures: u32) -> Duration {
        Duration::from_secs(1 << failures)
    }

    fn wall_ms() -> u64 {
        0
    }

    const STAT: FileStat = FileStat {
        wal: None,
        db: None,
    };

    /// The files as the jobs left them.
    fn unchanged(_: &Path) -> FileStat {
        STAT
    }

    /// The files written since the jobs left them.
    fn written(_: &Path) -> FileStat {
        FileStat {
            wal: Some((4096, SystemTime::UNIX_EPOCH)),
            db: None,
        }
    }

    /// Descriptors as a test sets them: `left` is the budget for opening
    /// (`None`: the limit has room for every database), `jobs` how many
    /// syncs the limit lets run at once (`None`: all of `max_jobs`),
    /// `limit` the open-file limit the window of open databases is worked
    /// out from (`None`: not known, the window stays as the test set it).
    #[derive(Default)]
    struct FakeFds {
        left: Option<u64>,
        jobs: Option<usize>,
        limit: Option<u64>,
        opened: Cell<u32>,
        reports: u32,
    }

    impl Descriptors for FakeFds {
        fn limit_below_wanted(&self, _databases: u64) -> bool {
            self.left.is_some()
        }
        fn open_window(&self, databases: u64, max_jobs: usize) -> Option<usize> {
            let limit = self.limit?;
            Some(super::super::fds::open_window(
                limit,
                databases,
                max_jobs as u64,
            ))
        }
        fn max_jobs(&self, _databases: u64, max_jobs: usize) -> usize {
            self.jobs.map_or(max_jobs, |n| n.min(max_jobs))
        }
        fn open_budget(&self, _databases: u64, _running: usize) -> Option<u64> {
            self.left
        }
        fn opened(&self) {
            self.opened.set(self.opened.get() + 1);
        }
        fn report_shortage(&mut self, _databases: u64, _now: Instant) {
            self.reports += 1;
        }
    }

    fn schedule(databases: u64, max_jobs: usize, idle: Option<Duration>) -> (Schedule, Instant) {
        let t0 = Instant::now();
        let mut s = Schedule::new(max_jobs, idle, test_backoff, wall_ms);
        s.apply((0..databases).map(want).collect(), t0, &FakeFds::default());
        (s, t0)
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn finished(outcome: Outcome, connection: Connection, started: Instant) -> Finished {
        Finished {
            outcome,
            connection,
            stat: STAT,
            started,
            others_attached: None,
        }
    }

    fn synced(commits: u64, started: Instant) -> Finished {
        let report = SyncReport {
            commits,
            ..SyncReport::default()
        };
        finished(Outcome::Synced(report), Connection::Open, started)
    }

    fn failed(started: Instant) -> Finished {
        finished(
            Outcome::Failed("the storage is down".into()),
            Connection::Open,
            started,
        )
    }

    /// The databases that `actions` sync, and whether as their last.
    fn syncs(actions: &[Action]) -> Vec<(u64, bool)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Sync { id, last } => Some((*id, *last)),
                _ => None,
            })
            .collect()
    }

    fn releases(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Release { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// A write to database `id`, as a file event reports it.
    fn write(s: &mut Schedule, id: u64, now: Instant) {
        let path = want(id).replica.path;
        assert!(s.on_file_event(&path, now, &written));
    }

    #[test]
    fn due_syncs_go_longest_waiting_first() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut dbs = BTreeMap::new();
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
            let mut d = Database::new(want(id), t0);
            d.work = if dirty {
                Work::Due(at(due))
            } else {
                Work::Clean
            };
            if !present {
                d.job = Job::Syncing;
            }
            dbs.insert(id, d);
        }
        // The index the schedule keeps of them.
        let due: BTreeSet<(Instant, u64)> = dbs
            .iter()
            .filter_map(|(&id, d)| Some((d.due_at()?, id)))
            .collect();
        let none = BTreeSet::new();
        let due_syncs = |now, n, may_open| due_syncs(&dbs, (&due, &none), now, n, may_open, true);
        assert_eq!(due_syncs(at(1000), 10, true), vec![2, 7, 3, 1]);
        assert_eq!(due_syncs(at(1000), 2, true), vec![2, 7]);
        assert_eq!(due_syncs(at(1000), 3, true), vec![2, 7, 3]);
        assert_eq!(due_syncs(at(2000), 5, true), vec![2, 7, 3, 1, 6]);
        assert!(due_syncs(at(0), 5, true).is_empty());
        // While descriptors are short, only databases open already can
        // start; none of these is.
        assert!(due_syncs(at(1000), 10, false).is_empty());
        // Those walsync has not opened come in their place in line, unless
        // the window of open databases is full.
        let closed: BTreeSet<(Instant, u64)> = [(at(300), 8), (at(50), 9), (at(1500), 10)].into();
        let both = |n, closed_may_open| {
            super::due_syncs(&dbs, (&due, &closed), at(1000), n, true, closed_may_open)
        };
        assert_eq!(both(10, true), vec![9, 2, 7, 8, 3, 1]);
        assert_eq!(both(3, true), vec![9, 2, 7]);
        assert_eq!(both(10, false), vec![2, 7, 3, 1]);
    }

    #[test]
    fn a_new_database_syncs_at_once_then_at_most_once_per_sync_interval() {
        let (mut s, t0) = schedule(1, 2, None);
        let mut fds = FakeFds::default();
        assert_eq!(syncs(&s.launch(t0, &mut fds)), vec![(0, false)]);
        s.on_done(0, synced(1, t0), &mut fds, ms(t0, 10));
        // Written after that sync: due one sync interval after it began.
        write(&mut s, 0, ms(t0, 20));
        assert!(s.launch(ms(t0, 500), &mut fds).is_empty());
        assert_eq!(s.next_wake(ms(t0, 500), ms(t0, 60_000), &fds), ms(t0, 1000));
        assert_eq!(syncs(&s.launch(ms(t0, 1010), &mut fds)), vec![(0, false)]);
        // One job per database at a time, however often it is written.
        write(&mut s, 0, ms(t0, 1015));
        assert!(s.launch(ms(t0, 3000), &mut fds).is_empty());
        s.on_done(0, synced(0, ms(t0, 1010)), &mut fds, ms(t0, 3000));
        // Written during that sync: due again at once (a sync interval
        // after the one before).
        assert_eq!(syncs(&s.launch(ms(t0, 3000), &mut fds)), vec![(0, false)]);
        s.on_done(0, synced(0, ms(t0, 3000)), &mut fds, ms(t0, 3010));
        // Nothing written since: nothing due, however long it waits.
        assert!(s.launch(ms(t0, 60_000), &mut fds).is_empty());
        // A rescan finds a change that no event reported.
        s.rescan(ms(t0, 60_000), &written, &|_| true);
        assert_eq!(syncs(&s.launch(ms(t0, 60_000), &mut fds)), vec![(0, false)]);
        assert_eq!(
            fds.opened.get(),
            0,
            "no budget asked while the limit has room"
        );
    }

    /// A tiny deterministic generator for the fairness property.
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn a_sync_that_deferred_settling_is_followed_by_one_more_without_a_change() {
        let (mut s, t0) = schedule(1, 2, None);
        let mut fds = FakeFds::default();
        let deferred = |started| {
            let report = SyncReport {
                commits: 100,
                settle_deferred: true,
                ..SyncReport::default()
            };
            finished(Outcome::Synced(report), Connection::Open, started)
        };
        assert_eq!(syncs(&s.launch(t0, &mut fds)), vec![(0, false)]);
        s.on_done(0, deferred(t0), &mut fds, ms(t0, 10));
        // No event since: still due one sync interval after it began.
        assert!(s.launch(ms(t0, 500), &mut fds).is_empty());
        assert_eq!(s.next_wake(ms(t0, 500), ms(t0, 60_000), &fds), ms(t0, 1000));
        assert_eq!(syncs(&s.launch(ms(t0, 1000), &mut fds)), vec![(0, false)]);
        // That one settled (nothing shipped): nothing more is due.
        s.on_done(0, synced(0, ms(t0, 1000)), &mut fds, ms(t0, 1010));
        assert!(s.launch(ms(t0, 60_000), &mut fds).is_empty());
        // A write during a deferring sync keeps its own due time.
        write(&mut s, 0, ms(t0, 60_000));
        assert_eq!(syncs(&s.launch(ms(t0, 60_000), &mut fds)), vec![(0, false)]);
        write(&mut s, 0, ms(t0, 60_005));
        s.on_done(0, deferred(ms(t0, 60_000)), &mut fds, ms(t0, 60_010));
        assert_eq!(
            s.next_wake(ms(t0, 60_010), ms(t0, 120_000), &fds),
            ms(t0, 61_000)
        );
        // A last sync (the stop) is followed by none.
        s.begin_stop(ms(t0, 61_000), &unchanged);
        let last = syncs(&s.launch(ms(t0, 61_000), &mut fds));
        assert_eq!(last, vec![(0, true)]);
        s.on_done(0, deferred(ms(t0, 61_000)), &mut fds, ms(t0, 61_010));
        assert!(syncs(&s.launch(ms(t0, 70_000), &mut fds)).is_empty());
    }

    #[test]
    fn every_due_database_gets_its_turn_whatever_the_number_of_jobs() {
        for (databases, max_jobs, seed) in [(1, 1, 1), (5, 1, 2), (16, 2, 3), (50, 4, 4), (7, 8, 5)]
        {
            let (mut s, t0) = schedule(databases, max_jobs, None);
            let mut fds = FakeFds::default();
            let mut rng = seed;
            let mut running: Vec<u64> = Vec::new();
            let mut syncs_of = vec![0u32; databases as usize];
            // Every database is written all the time; jobs end in a random
            // order, one at a time, 2 s apart (past every sync interval).
            let rounds = databases * 8;
            for round in 0..rounds {
                let now = t0 + Duration::from_secs(2 * round);
                for id in 0..databases {
                    write(&mut s, id, now);
                }
                for (id, last) in syncs(&s.launch(now, &mut fds)) {
                    assert!(!last);
                    syncs_of[id as usize] += 1;
                    running.push(id);
                }
                assert!(
                    running.len() <= max_jobs,
                    "{databases}/{max_jobs}: too many jobs"
                );
                let i = (lcg(&mut rng) % running.len() as u64) as usize;
                let id = running.swap_remove(i);
                s.on_done(id, synced(1, now), &mut fds, now);
            }
            let (least, most) = (
                *syncs_of.iter().min().unwrap(),
                *syncs_of.iter().max().unwrap(),
            );
            // Longest waiting first: no database starves, none is served
            // much more often than another.
            assert!(
                least >= 1,
                "{databases}/{max_jobs}: one never synced: {syncs_of:?}"
            );
            assert!(
                most - least <= 2 + max_jobs as u32,
                "{databases}/{max_jobs}: unfair: {syncs_of:?}"
            );
        }
    }

    impl Schedule {
        /// The due and release queues hold exactly what every database's
        /// state says.
        fn assert_queues_match_the_databases(&self, step: &str) {
            let closed = |d: &Database| d.job == Job::Idle(Connection::Closed);
            let due: BTreeSet<(Instant, u64)> = self
                .dbs
                .iter()
                .filter(|(_, d)| !closed(d))
                .filter_map(|(&id, d)| Some((d.due_at()?, id)))
                .collect();
            let due_closed: BTreeSet<(Instant, u64)> = self
                .dbs
                .iter()
                .filter(|(_, d)| closed(d))
                .filter_map(|(&id, d)| Some((d.due_at()?, id)))
                .collect();
            let open = self
                .dbs
                .values()
                .filter(|d| counts_open(d.job, d.kept_open))
                .count();
            assert_eq!(
                self.due_closed, due_closed,
                "due queue (closed) after {step}"
            );
            assert_eq!(self.open, open, "open databases after {step}");
            let stopping = self.stopping.is_some();
            let releases: BTreeSet<(Instant, u64)> = self
                .dbs
                .iter()
                .filter(|(_, d)| may_let_go(d.job, d.is_dirty(), d.closed_by_app, stopping))
                .filter_map(|(&id, d)| Some((d.release_at?, id)))
                .collect();
            assert_eq!(self.due, due, "due queue after {step}");
            assert_eq!(self.releases, releases, "release queue after {step}");
        }

        /// `next_wake` by a look at every database.
        fn next_wake_of_every_database(
            &self,
            now: Instant,
            mut wake: Instant,
            fds: &dyn Descriptors,
        ) -> Instant {
            if self.running >= self.max_jobs {
                return wake;
            }
            let syncs_may_start = self.running < fds.max_jobs(self.dbs.len() as u64, self.max_jobs);
            let opens_wait = self.opens_wait_until.filter(|&t| t > now);
            let stopping = self.stopping.is_some();
            for d in self.dbs.values() {
                if let (Job::Idle(c), Work::Due(due), true) = (d.job, d.work, syncs_may_start) {
                    let mut due = match opens_wait {
                        Some(t) if c != Connection::Open => due.max(t),
                        _ => due,
                    };
                    if c == Connection::Closed && self.open >= self.max_open {
                        due = due.max(now + FD_WAIT);
                    }
                    wake = wake.min(due);
                }
                // A release can start only when no job has it, and not
                // before a sync due first (unless the application closed
                // it), nor at a stop.
                match (d.job, d.release_at) {
                    (Job::Idle(_), Some(t)) if !stopping && (!d.is_dirty() || d.closed_by_app) => {
                        wake = wake.min(t);
                    }
                    _ => {}
                }
            }
            wake
        }
    }

    #[test]
    fn the_queues_follow_every_change_of_the_databases() {
        for seed in 1..=20u64 {
            let (mut s, t0) = schedule(12, 3, Some(Duration::from_secs(5)));
            // A window of open databases from 1 to 6 (and the default).
            if seed % 7 != 0 {
                s.max_open = (seed % 7) as usize;
            }
            let mut fds = FakeFds::default();
            let mut rng = seed;
            let mut syncing: Vec<u64> = Vec::new();
            let mut releasing: Vec<u64> = Vec::new();
            let mut next_new = 12;
            for step in 0..400u64 {
                let now = t0 + Duration::from_millis(700 * step);
                let what = lcg(&mut rng) % 9;
                let id = lcg(&mut rng) % next_new;
                match what {
                    0 | 1 => {
                        let path = want(id).replica.path;
                        s.on_file_event(&path, now, &written);
                    }
                    2 | 3 => {
                        let open_before = s.open;
                        let closed = |s: &Schedule, id| {
                            s.dbs.get(&id).map(|d| d.job) == Some(Job::Idle(Connection::Closed))
                        };
                        let closed_before: Vec<u64> =
                            s.dbs.keys().copied().filter(|&id| closed(&s, id)).collect();
                        let actions = s.launch(now, &mut fds);
                        let opened_from_nothing = syncs(&actions)
                            .iter()
                            .filter(|(id, _)| closed_before.contains(id))
                            .count();
                        assert!(
                            opened_from_nothing <= s.max_open.saturating_sub(open_before),
                            "seed {seed} step {step}: {opened_from_nothing} opened with \
                             {open_before} of {} open",
                            s.max_open
                        );
                        for a in actions {
                            match a {
                                Action::Sync { id, .. } => syncing.push(id),
                                Action::Release { id, .. } => releasing.push(id),
                                _ => {}
                            }
                        }
                    }
                    4 | 5 if !syncing.is_empty() => {
                        let i = (lcg(&mut rng) % syncing.len() as u64) as usize;
                        let id = syncing.swap_remove(i);
                        let done = match lcg(&mut rng) % 4 {
                            0 => failed(now),
                            1 => {
                                finished(Outcome::Unreachable("down".into()), Connection::Open, now)
                            }
                            _ => synced(lcg(&mut rng) % 2, now),
                        };
                        s.on_done(id, done, &mut fds, now);
                    }
                    6 if !releasing.is_empty() => {
                        let id = releasing.swap_remove(0);
                        s.on_released(id, Ok(Some(STAT)), Connection::Released, now, &unchanged);
                    }
                    7 => {
                        // One database leaves, another comes.
                        let keep = (0..next_new).filter(|&k| k != id).map(want);
                        next_new += 1;
                        s.apply(keep.chain([want(next_new - 1)]).collect(), now, &fds);
                    }
                    8 => s.rescan_some(5, now, &written),
                    _ => {}
                }
                s.assert_queues_match_the_databases(&format!("seed {seed} step {step} ({what})"));
                let later = now + Duration::from_secs(3600);
                assert_eq!(
                    s.next_wake(now, later, &fds),
                    s.next_wake_of_every_database(now, later, &fds)
                );
            }
            s.begin_stop(t0 + Duration::from_secs(1000), &unchanged);
            s.assert_queues_match_the_databases("stop");
        }
    }

    /// One step of `run`'s loop at `now`: `launch`, then `next_wake`, as
    /// often as the loop would go round without waiting (a wake at `now` or
    /// earlier). Each round that wakes so early must have started
    /// something: one that started nothing would be repeated with nothing
    /// changed, the loop spinning at full CPU until a job ended or a time
    /// came. Returns the jobs started.
    fn loop_at(s: &mut Schedule, now: Instant, fds: &mut FakeFds, what: &str) -> Vec<Action> {
        let later = now + Duration::from_secs(3600);
        let mut started = Vec::new();
        for _round in 0..1000 {
            let actions = s.launch(now, fds);
            let wake = s.next_wake(now, later, fds);
            assert_eq!(
                wake,
                s.next_wake_of_every_database(now, later, fds),
                "{what}: the reference"
            );
            let nothing = actions.is_empty();
            started.extend(actions);
            if wake > now {
                return started;
            }
            assert!(
                !nothing,
                "{what}: the loop spins: wakes {:?} before now with nothing to start",
                now - wake
            );
        }
        panic!("{what}: the loop went round 1,000 times at one instant");
    }

    #[test]
    fn the_loop_never_wakes_in_the_past_with_nothing_to_start() {
        for seed in 1..=60u64 {
            let idle = Duration::from_millis(1_500 + 500 * (seed % 4));
            let (mut s, t0) = schedule(10, 3, Some(idle));
            // A window of open databases from 1 to 4 (and the default).
            if seed % 5 != 0 {
                s.max_open = (seed % 5) as usize;
            }
            // Descriptors for every database, or short (opens wait, and
            // fewer syncs run at once than jobs may).
            let mut fds = FakeFds {
                left: (seed % 3 == 0).then_some(OPENS_ONE + (seed % 2) * OPENS_ONE),
                jobs: (seed % 4 == 1).then_some(1 + (seed % 3) as usize),
                ..FakeFds::default()
            };
            let mut rng = seed;
            let mut syncing: Vec<u64> = Vec::new();
            let mut releasing: Vec<u64> = Vec::new();
            let mut next_new = 10;
            let mut now = t0;
            for step in 0..600u64 {
                // Several events at one instant at times, jobs that last.
                now += Duration::from_millis(lcg(&mut rng) % 3 * 150);
                if step == 500 {
                    s.begin_stop(now, &unchanged);
                }
                let what = lcg(&mut rng) % 10;
                let id = lcg(&mut rng) % next_new;
                match what {
                    0 | 1 => {
                        // (It may have left.)
                        s.on_file_event(&want(id).replica.path, now, &written);
                    }
                    2..=4 if !syncing.is_empty() => {
                        let i = (lcg(&mut rng) % syncing.len() as u64) as usize;
                        let id = syncing.swap_remove(i);
                        let mut done = match lcg(&mut rng) % 6 {
                            0 => failed(now),
                            1 => {
                                finished(Outcome::Unreachable("down".into()), Connection::Open, now)
                            }
                            2 => finished(Outcome::Missing, Connection::Closed, now),
                            _ => synced(lcg(&mut rng) % 2, now),
                        };
                        done.others_attached =
                            [None, Some(true), Some(false)][(lcg(&mut rng) % 3) as usize];
                        let actions = s.on_done(id, done, &mut fds, now);
                        assert!(syncs(&actions).is_empty() && releases(&actions).is_empty());
                    }
                    5 if !releasing.is_empty() => {
                        let id = releasing.swap_remove(0);
                        let (result, connection) = match lcg(&mut rng) % 4 {
                            0 => (Ok(None), Connection::Open),
                            1 => (Err("cannot".to_string()), Connection::Open),
                            _ => (Ok(Some(STAT)), Connection::Released),
                        };
                        s.on_released(id, result, connection, now, &unchanged);
                    }
                    6 => {
                        if let Some(id) = s.probe_wanted(&want(id).replica.path) {
                            s.on_probe(id, Some(lcg(&mut rng).is_multiple_of(2)), now);
                        }
                    }
                    7 if step < 500 => {
                        // One database leaves, another comes.
                        let keep = (0..next_new).filter(|&k| k != id).map(want);
                        next_new += 1;
                        s.apply(keep.chain([want(next_new - 1)]).collect(), now, &fds);
                    }
                    8 => s.rescan_some(3, now, &written),
                    _ => {}
                }
                let what = format!("seed {seed} step {step} ({what})");
                for a in loop_at(&mut s, now, &mut fds, &what) {
                    match a {
                        Action::Sync { id, .. } => syncing.push(id),
                        Action::Release { id, .. } => releasing.push(id),
                        _ => {}
                    }
                }
                s.assert_queues_match_the_databases(&what);
            }
        }
    }

    #[test]
    fn a_failing_database_backs_off_longer_each_time_and_a_success_resets_it() {
        let (mut s, t0) = schedule(2, 2, None);
        let mut fds = FakeFds::default();
        assert_eq!(s.launch(t0, &mut fds).len(), 2);
        s.on_done(1, synced(0, t0), &mut fds, t0);
        // Written while the failing sync ran: still waits out the backoff.
        write(&mut s, 0, ms(t0, 1));
        s.on_done(0, failed(t0), &mut fds, ms(t0, 10));
        // 2 s after the first failure; the other database goes on.
        write(&mut s, 1, ms(t0, 1500));
        assert_eq!(syncs(&s.launch(ms(t0, 1500), &mut fds)), vec![(1, false)]);
        s.on_done(1, synced(1, t0), &mut fds, ms(t0, 1510));
        assert!(s.launch(ms(t0, 2000), &mut fds).is_empty());
        assert_eq!(syncs(&s.launch(ms(t0, 2010), &mut fds)), vec![(0, false)]);
        // 4 s after the second.
        s.on_done(0, failed(ms(t0, 2010)), &mut fds, ms(t0, 2020));
        write(&mut s, 0, ms(t0, 2030));
        assert!(s.launch(ms(t0, 6000), &mut fds).is_empty());
        assert_eq!(syncs(&s.launch(ms(t0, 6020), &mut fds)), vec![(0, false)]);
        assert_eq!(s.get(0).unwrap().health.failed_syncs, 2);
        // A success ends the run: the next failure waits 2 s again.
        s.on_done(0, synced(3, ms(t0, 6020)), &mut fds, ms(t0, 6030));
        assert_eq!(s.get(0).unwrap().health.failed_syncs, 0);
        write(&mut s, 0, ms(t0, 7100));
        assert_eq!(syncs(&s.launch(ms(t0, 7100), &mut fds)), vec![(0, false)]);
        s.on_done(0, failed(ms(t0, 7100)), &mut fds, ms(t0, 7110));
        assert!(s.launch(ms(t0, 9100), &mut fds).is_empty());
        assert_eq!(syncs(&s.launch(ms(t0, 9110), &mut fds)), vec![(0, false)]);
    }

    #[test]
    fn many_databases_failing_to_reach_the_storage_are_one_outage_that_ends_when_all_caught_up() {
        let (mut s, t0) = schedule(5, 5, None);
        let mut fds = FakeFds::default();
        let unreachable = |started| {
            finished(
                Outcome::Unreachable("cannot reach the storage server".into()),
                Connection::Open,
                started,
            )
        };
        assert_eq!(s.launch(t0, &mut fds).len(), 5);
        // A database failing for its own reason is not the storage's.
        s.on_done(4, failed(t0), &mut fds, ms(t0, 5));
        s.on_done(0, unreachable(t0), &mut fds, ms(t0, 10));
        s.on_done(1, unreachable(t0), &mut fds, ms(t0, 20));
        assert!(!s.outage.in_outage());
        s.on_done(2, unreachable(t0), &mut fds, ms(t0, 30));
        assert!(s.outage.in_outage(), "three at once: the storage is down");
        // Each still backs off on its own.
        assert!(s.get(2).unwrap().health.retry_at.is_some());
        s.on_done(3, synced(0, t0), &mut fds, ms(t0, 40));
        assert!(
            s.outage.in_outage(),
            "a database that did not wait proves nothing"
        );
        let mut retried = syncs(&s.launch(ms(t0, 5000), &mut fds));
        retried.sort_unstable();
        assert_eq!(
            retried,
            vec![(0, false), (1, false), (2, false), (4, false)]
        );
        s.on_done(4, failed(t0), &mut fds, ms(t0, 5005));
        for id in [0, 1] {
            s.on_done(id, synced(1, ms(t0, 5000)), &mut fds, ms(t0, 5010));
        }
        assert!(s.outage.in_outage(), "one still waits");
        s.on_done(2, unreachable(t0), &mut fds, ms(t0, 5030));
        assert!(s.outage.in_outage());
        // Forgotten: it no longer waits, and the storage was seen back.
        s.apply(
            [0, 1, 3, 4].into_iter().map(want).collect(),
            ms(t0, 5040),
            &fds,
        );
        let last = syncs(&s.launch(ms(t0, 20_000), &mut fds));
        assert!(last.contains(&(2, true)), "{last:?}");
        let actions = s.on_done(2, synced(0, ms(t0, 20_000)), &mut fds, ms(t0, 20_010));
        assert!(matches!(actions[..], [Action::Forget { id: 2, .. }]));
        assert!(!s.outage.in_outage());
    }

    #[test]
    fn a_replaced_or_missing_database_does_not_back_off() {
        let (mut s, t0) = schedule(2, 2, None);
        let mut fds = FakeFds::default();
        assert_eq!(s.launch(t0, &mut fds).len(), 2);
        let replaced = Outcome::Replaced("replaced".into());
        s.on_done(0, finished(replaced, Connection::Closed, t0), &mut fds, t0);
        s.on_done(
            1,
            finished(Outcome::Missing, Connection::Closed, t0),
            &mut fds,
            t0,
        );
        // The replaced one syncs again a sync interval later; the missing
        // one when its file shows up.
        assert_eq!(syncs(&s.launch(ms(t0, 1000), &mut fds)), vec![(0, false)]);
        assert!(s.get(1).unwrap().health.waiting_logged);
        assert_eq!(s.get(1).unwrap().health.retry_at, None);
        write(&mut s, 1, ms(t0, 1000));
        assert_eq!(syncs(&s.launch(ms(t0, 1000), &mut fds)), vec![(1, false)]);
    }

    /// What a job that opens its database takes from the budget.
    const OPENS_ONE: u64 = FDS_PER_ACTIVE_DATABASE + FDS_PER_JOB;

    #[test]
    fn every_job_started_in_one_pass_takes_its_descriptors_from_the_budget() {
        // Room for two opening jobs and a bit: the third waits, though
        // workers are free (each opening job's connection to the storage
        // counts, not only its database's files).
        let (mut s, t0) = schedule(3, 8, None);
        let mut fds = FakeFds {
            left: Some(2 * OPENS_ONE + FDS_PER_JOB),
            ..FakeFds::default()
        };
        assert_eq!(syncs(&s.launch(t0, &mut fds)), vec![(0, false), (1, false)]);
        assert_eq!((fds.opened.get(), fds.reports), (2, 1));
    }

    #[test]
    fn databases_that_need_opening_wait_while_descriptors_are_short() {
        let (mut s, t0) = schedule(2, 4, None);
        let mut fds = FakeFds {
            left: Some(OPENS_ONE),
            ..FakeFds::default()
        };
        // Room to open one of them: the other waits, and the shortage is named.
        assert_eq!(syncs(&s.launch(t0, &mut fds)), vec![(0, false)]);
        assert_eq!((fds.opened.get(), fds.reports), (1, 1));
        fds.left = Some(OPENS_ONE - 1);
        assert!(s.launch(ms(t0, 100), &mut fds).is_empty(), "waits a little");
        assert_eq!(s.next_wake(ms(t0, 100), ms(t0, 60_000), &fds), t0 + FD_WAIT);
        // Still short after the wait: waits again, keeping its place.
        assert!(s.launch(t0 + FD_WAIT, &mut fds).is_empty());
        // An open database needs no descriptors to sync, short or not.
        s.on_done(0, synced(1, t0), &mut fds, ms(t0, 300));
        write(&mut s, 0, ms(t0, 1300));
        fds.left = Some(0);
        assert_eq!(syncs(&s.launch(ms(t0, 1300), &mut fds)), vec![(0, false)]);
        // A job that ends gives descriptors back: the waiting one opens.
        fds.left = Some(OPENS_ONE);
        s.on_done(0, synced(0, ms(t0, 1300)), &mut fds, ms(t0, 1310));
        assert_eq!(syncs(&s.launch(ms(t0, 1310), &mut fds)), vec![(1, false)]);
    }

    #[test]
    fn a_sync_short_of_descriptors_waits_for_them_without_backing_off() {
        let (mut s, t0) = schedule(1, 2, None);
        let mut fds = FakeFds::default();
        for round in 0..5 {
            let now = ms(t0, round * 1000);
            assert_eq!(
                syncs(&s.launch(now, &mut fds)),
                vec![(0, false)],
                "round {round}"
            );
            let short = Outcome::OutOfDescriptors("Too many open files".into());
            s.on_done(0, finished(short, Connection::Closed, now), &mut fds, now);
            assert_eq!(s.get(0).unwrap().health.failures, 0, "no backoff builds up");
            // Due again one interval after, opening once the short wait is over.
            assert!(s.launch(now + FD_WAIT / 2, &mut fds).is_empty());
        }
        assert_eq!(
            fds.reports, 5,
            "the fake names every shortage it is told of"
        );
    }

    #[test]
    fn idle_databases_are_released_and_sooner_while_others_wait_for_descriptors() {
        let idle = Duration::from_secs(10);
        let (mut s, t0) = schedule(2, 4, Some(idle));
        let mut fds = FakeFds::default();
        assert_eq!(s.launch(t0, &mut fds).len(), 2);
        // Database 0 committed: released after `idle` without commits.
        s.on_done(0, synced(1, t0), &mut fds, ms(t0, 5_000));
        // Database 1 had nothing committed while walsync was away: let go
        // `idle` after its first sync, as any other (not at once: a burst
        // right after the start must find walsync holding it); its files
        // as the release left them.
        s.on_done(1, synced(0, t0), &mut fds, t0);
        assert!(releases(&s.launch(ms(t0, 9_999), &mut fds)).is_empty());
        assert_eq!(releases(&s.launch(ms(t0, 10_000), &mut fds)), vec![1]);
        s.on_released(
            1,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 10_002),
            &unchanged,
        );
        // Its own checkpoint's events wake nothing; a write does.
        let path = want(1).replica.path;
        assert!(s.on_file_event(&path, ms(t0, 10_003), &unchanged));
        assert!(!s.get(1).unwrap().is_dirty());
        assert!(s.launch(ms(t0, 12_000), &mut fds).is_empty());
        // Written while descriptors are short: it must be opened, and the
        // open idle database is let go at a tenth of `idle`.
        fds.left = Some(0);
        write(&mut s, 1, ms(t0, 12_000));
        let actions = s.launch(ms(t0, 12_000), &mut fds);
        assert_eq!((releases(&actions), syncs(&actions)), (vec![0], vec![]));
        s.on_released(
            0,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 12_010),
            &unchanged,
        );
        fds.left = Some(OPENS_ONE);
        assert_eq!(syncs(&s.launch(ms(t0, 12_010), &mut fds)), vec![(1, false)]);
    }

    #[test]
    fn databases_are_opened_from_nothing_only_while_the_window_has_room() {
        let idle = Duration::from_secs(10);
        let (mut s, t0) = schedule(6, 4, Some(idle));
        s.max_open = 2;
        let mut fds = FakeFds::default();
        // Six to open, four jobs, a window of two.
        assert_eq!(syncs(&s.launch(t0, &mut fds)), vec![(0, false), (1, false)]);
        s.on_done(0, synced(0, t0), &mut fds, ms(t0, 10));
        s.on_done(1, synced(0, t0), &mut fds, ms(t0, 10));
        // Both open: the others wait, and the loop looks again a little
        // later, not at once and not only when the idle time is up.
        assert!(s.launch(ms(t0, 20), &mut fds).is_empty());
        assert_eq!(
            s.next_wake(ms(t0, 20), ms(t0, 60_000), &fds),
            ms(t0, 20) + FD_WAIT
        );
        // The open ones are let go of after a tenth of `idle`; each one let
        // go of makes room for one more.
        assert!(s.launch(ms(t0, 1_009), &mut fds).is_empty());
        assert_eq!(releases(&s.launch(ms(t0, 1_010), &mut fds)), vec![0, 1]);
        s.on_released(
            0,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 1_020),
            &unchanged,
        );
        assert_eq!(syncs(&s.launch(ms(t0, 1_020), &mut fds)), vec![(2, false)]);
        s.on_released(
            1,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 1_030),
            &unchanged,
        );
        assert_eq!(syncs(&s.launch(ms(t0, 1_030), &mut fds)), vec![(3, false)]);
        // A released database the application writes wakes at once, full
        // window or not.
        write(&mut s, 0, ms(t0, 1_040));
        assert_eq!(syncs(&s.launch(ms(t0, 1_040), &mut fds)), vec![(0, false)]);
        assert_eq!(s.open, 3);
        // Without a window to fill, an open database waits all of `idle`.
        let (mut s, t0) = schedule(2, 4, Some(idle));
        s.launch(t0, &mut fds);
        s.on_done(0, synced(0, t0), &mut fds, ms(t0, 10));
        s.on_done(1, synced(0, t0), &mut fds, ms(t0, 10));
        assert!(s.launch(ms(t0, 9_000), &mut fds).is_empty());
        assert_eq!(
            s.next_wake(ms(t0, 9_000), ms(t0, 60_000), &fds),
            ms(t0, 10_010)
        );
    }

    #[test]
    fn the_window_of_open_databases_follows_the_number_of_databases() {
        // A limit of 95 with 4 jobs: room beyond one descriptor per
        // database, walsync's own and the jobs' for (95 - n - 32 - 16) / 5
        // open databases.
        let (mut s, t0) = schedule(2, 4, None);
        let mut fds = FakeFds {
            limit: Some(95),
            ..FakeFds::default()
        };
        s.fit_open_window(&fds);
        assert_eq!(s.max_open, 9);
        // A reload adds 13: a narrower window, which the first syncs keep.
        s.apply((0..15).map(want).collect(), t0, &fds);
        assert_eq!(s.max_open, 6);
        let mut opened = Vec::new();
        loop {
            let started = syncs(&s.launch(t0, &mut fds));
            if started.is_empty() {
                break;
            }
            for (id, _) in started {
                s.on_done(id, synced(0, t0), &mut fds, t0);
                opened.push(id);
            }
        }
        assert_eq!(opened, vec![0, 1, 2, 3, 4, 5]);
        // A reload removes the six open ones: each keeps its descriptors
        // until its last sync ran and it is forgotten; then the window is
        // that of nine databases.
        s.apply((6..15).map(want).collect(), ms(t0, 10), &fds);
        assert_eq!(s.max_open, 6);
        let mut forgotten = 0;
        let mut running = syncs(&s.launch(ms(t0, 10), &mut fds));
        while let Some((id, _)) = running.pop() {
            let actions = s.on_done(id, synced(0, ms(t0, 10)), &mut fds, ms(t0, 20));
            forgotten += actions.len();
            running.extend(syncs(&s.launch(ms(t0, 20), &mut fds)));
            assert!(s.open <= s.max_open);
        }
        assert_eq!((forgotten, s.len()), (6, 9));
        assert_eq!(s.max_open, 7);
        assert_eq!(s.open, 7, "as many opened as the wider window holds");
        // While the limit is not known, the window stays as it is.
        s.apply((0..40).map(want).collect(), ms(t0, 30), &FakeFds::default());
        assert_eq!(s.max_open, 7);
    }

    #[test]
    fn a_database_its_release_kept_open_is_tried_again_and_leaves_the_window() {
        let idle = Duration::from_secs(10);
        let (mut s, t0) = schedule(3, 4, Some(idle));
        s.max_open = 1;
        let mut fds = FakeFds::default();
        assert_eq!(syncs(&s.launch(t0, &mut fds)), vec![(0, false)]);
        s.on_done(0, synced(0, t0), &mut fds, t0);
        assert_eq!(releases(&s.launch(ms(t0, 1_000), &mut fds)), vec![0]);
        // Too large to let go of (or not the moment): it stays open, and
        // makes no room by staying in the window, so the next one opens.
        s.on_released(0, Ok(None), Connection::Open, ms(t0, 1_010), &unchanged);
        assert_eq!(s.open, 0);
        assert_eq!(syncs(&s.launch(ms(t0, 1_010), &mut fds)), vec![(1, false)]);
        s.on_done(1, synced(0, t0), &mut fds, ms(t0, 1_020));
        // And it is tried again later, not left open for good.
        let actions = s.launch(ms(t0, 11_010), &mut fds);
        assert!(releases(&actions).contains(&0), "{actions:?}");
    }

    #[test]
    fn the_rescan_looks_at_every_database_once_per_interval_up_to_a_rate() {
        let s = Duration::from_secs;
        // (databases, rescan_interval, tick) -> databases per tick
        for (databases, interval, tick, want) in [
            (0, s(10), s(1), 0),
            (1, s(10), s(1), 1),
            (64, s(10), s(1), 7),
            (10_000, s(10), s(1), 1_000),
            // Beyond 10,000 at 10 s, a round takes longer than 10 s.
            (18_000, s(10), s(1), 1_000),
            (100_000, s(10), s(1), 1_000),
            (100_000, s(3600), s(1), 28),
            // An interval shorter than the tick: one tick per interval.
            (
                500,
                Duration::from_millis(200),
                Duration::from_millis(200),
                200,
            ),
            (
                50,
                Duration::from_millis(200),
                Duration::from_millis(200),
                50,
            ),
        ] {
            assert_eq!(
                rescan_slice(databases, interval, tick),
                want,
                "{databases} {interval:?} {tick:?}"
            );
        }
    }

    #[test]
    fn the_rescan_goes_round_every_database_in_slices() {
        let (mut s, t0) = schedule(5, 8, None);
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        for id in 0..5 {
            s.on_done(id, synced(0, t0), &mut fds, t0);
        }
        let looked = std::cell::RefCell::new(Vec::new());
        let stat = |p: &Path| {
            looked.borrow_mut().push(p.to_path_buf());
            STAT
        };
        for n in [2, 2, 2, 5] {
            s.rescan_some(n, t0, &stat);
        }
        let ids: Vec<u64> = looked
            .borrow()
            .iter()
            .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0]);
        // A change found dues only that database.
        s.rescan_some(1, ms(t0, 10), &written);
        let due: Vec<u64> = s.due.iter().map(|&(_, id)| id).collect();
        assert_eq!(due, vec![1]);
    }

    #[test]
    fn a_released_database_wakes_at_once_and_then_ships_at_the_sync_interval() {
        let idle = Duration::from_secs(10);
        let (mut s, t0) = schedule(1, 2, Some(idle));
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        // A first sync that found nothing new: let go of after `idle`.
        s.on_done(0, synced(0, t0), &mut fds, ms(t0, 10));
        assert!(releases(&s.launch(ms(t0, 10_009), &mut fds)).is_empty());
        assert_eq!(releases(&s.launch(ms(t0, 10_010), &mut fds)), vec![0]);
        s.on_released(
            0,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 10_020),
            &unchanged,
        );
        // Written 10 ms later: due at once, not a sync interval after its
        // last sync (walsync pins nothing while it is let go of).
        write(&mut s, 0, ms(t0, 10_030));
        assert_eq!(syncs(&s.launch(ms(t0, 10_030), &mut fds)), vec![(0, false)]);
        // A burst goes on while it wakes: what is written meanwhile ships
        // one sync interval (1 s) after the wake began, not as soon as it
        // ends, and from then on one sync interval after each sync began.
        // (sync started, sync ended) -> when the next one starts.
        for (at, done, next) in [
            (10_030, 10_060, 11_030),
            (11_030, 11_050, 12_030),
            (12_030, 12_070, 13_030),
        ] {
            write(&mut s, 0, ms(t0, at + 5));
            write(&mut s, 0, ms(t0, at + 20));
            s.on_done(0, synced(50, ms(t0, at)), &mut fds, ms(t0, done));
            write(&mut s, 0, ms(t0, done + 1));
            assert!(s.launch(ms(t0, next - 1), &mut fds).is_empty(), "{at}");
            assert_eq!(
                syncs(&s.launch(ms(t0, next), &mut fds)),
                vec![(0, false)],
                "{at}"
            );
        }
    }

    #[test]
    fn a_close_wakes_a_released_database_only_when_its_wal_has_frames() {
        let (mut s, t0) = schedule(1, 2, Some(Duration::from_secs(10)));
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        s.on_done(0, synced(0, t0), &mut fds, ms(t0, 10));
        assert_eq!(releases(&s.launch(ms(t0, 10_010), &mut fds)), vec![0]);
        let path = want(0).replica.path;
        // Closed while the job lets go of it: not released yet, nothing.
        s.on_close_released(&path, ms(t0, 10_015), &written);
        s.on_released(
            0,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 10_020),
            &unchanged,
        );
        // Its files as walsync left them (its own closes), an empty WAL,
        // another database's path: no wake.
        let empty = |_: &Path| FileStat {
            wal: Some((0, SystemTime::UNIX_EPOCH)),
            db: None,
        };
        s.on_close_released(&path, ms(t0, 10_030), &unchanged);
        s.on_close_released(&path, ms(t0, 10_030), &empty);
        s.on_close_released(Path::new("/elsewhere.db"), ms(t0, 10_030), &written);
        assert!(s.launch(ms(t0, 10_030), &mut fds).is_empty());
        // The application's close left frames in the WAL: at once.
        s.on_close_released(&path, ms(t0, 10_040), &written);
        assert_eq!(syncs(&s.launch(ms(t0, 10_040), &mut fds)), vec![(0, false)]);
    }

    #[test]
    fn without_a_shortage_an_open_database_is_released_only_when_idle() {
        let idle = Duration::from_secs(10);
        let (mut s, t0) = schedule(1, 2, Some(idle));
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        s.on_done(0, synced(1, t0), &mut fds, t0);
        assert!(s.launch(ms(t0, 9999), &mut fds).is_empty());
        // A commit restarts the idle clock.
        write(&mut s, 0, ms(t0, 5000));
        s.launch(ms(t0, 5000), &mut fds);
        s.on_done(0, synced(2, ms(t0, 5000)), &mut fds, ms(t0, 5000));
        assert!(s.launch(ms(t0, 14_999), &mut fds).is_empty());
        assert_eq!(releases(&s.launch(ms(t0, 15_000), &mut fds)), vec![0]);
        // A failed release: synced again.
        s.on_released(
            0,
            Err("busy".into()),
            Connection::Open,
            ms(t0, 15_010),
            &unchanged,
        );
        assert_eq!(syncs(&s.launch(ms(t0, 16_000), &mut fds)), vec![(0, false)]);
    }

    #[test]
    fn walsync_lets_go_at_the_last_close_only_of_an_open_database_it_keeps() {
        use Connection::*;
        // (job, another process has it open, leaving) -> let go now
        for (job, others, leaving, let_go) in [
            (Job::Idle(Open), Some(false), false, true),
            (Job::Idle(Open), Some(true), false, false),
            (Job::Idle(Open), None, false, false),
            (Job::Idle(Open), Some(false), true, false),
            (Job::Idle(Released), Some(false), false, false),
            (Job::Idle(Closed), Some(false), false, false),
            (Job::Syncing, Some(false), false, false),
            (Job::Releasing, Some(false), false, false),
        ] {
            assert_eq!(
                last_close(job, others, leaving),
                let_go,
                "{job:?} {others:?} {leaving}"
            );
        }
    }

    /// A job that ended with no other process having the database open.
    fn alone(done: Finished) -> Finished {
        Finished {
            others_attached: Some(false),
            ..done
        }
    }

    fn closed_releases(actions: &[Action]) -> Vec<(u64, LetGo)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Release { id, why } => Some((*id, *why)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_database_the_application_closed_is_let_go_at_once() {
        // Also without idle releases: replacing the database must be safe.
        let (mut s, t0) = schedule(2, 4, None);
        let mut fds = FakeFds::default();
        assert_eq!(s.launch(t0, &mut fds).len(), 2);
        // Database 0's sync found nobody else with it open; 1's did not.
        s.on_done(0, alone(synced(3, t0)), &mut fds, ms(t0, 5));
        s.on_done(1, synced(3, t0), &mut fds, ms(t0, 5));
        let closed = |storage_failing| LetGo::Closed { storage_failing };
        assert_eq!(
            closed_releases(&s.launch(ms(t0, 5), &mut fds)),
            vec![(0, closed(false))]
        );
        s.on_released(
            0,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 6),
            &unchanged,
        );
        // Database 1 is written, then its last file closes: probed while
        // the commit waits for its sync interval; let go at once (the
        // release ships the commit), not a sync first.
        write(&mut s, 1, ms(t0, 10));
        assert_eq!(s.probe_wanted(&want(1).replica.path), Some(1));
        assert_eq!(s.probe_wanted(&want(0).replica.path), None, "released");
        s.on_probe(1, Some(true), ms(t0, 11));
        assert!(s.launch(ms(t0, 11), &mut fds).is_empty());
        s.on_probe(1, Some(false), ms(t0, 12));
        let actions = s.launch(ms(t0, 12), &mut fds);
        assert_eq!(
            (closed_releases(&actions), syncs(&actions)),
            (vec![(1, closed(false))], vec![])
        );
        assert_eq!(s.probe_wanted(&want(1).replica.path), None, "a job has it");
        // Not the moment after all (the application opened it again).
        s.on_released(1, Ok(None), Connection::Open, ms(t0, 13), &written);
        assert_eq!(syncs(&s.launch(ms(t0, 1013), &mut fds)), vec![(1, false)]);
        // Its sync cannot reach the storage, and the application has closed
        // it meanwhile: let go at once, during the backoff, without trying
        // to ship first.
        let unreachable = finished(
            Outcome::Unreachable("503".into()),
            Connection::Open,
            ms(t0, 1013),
        );
        s.on_done(1, alone(unreachable), &mut fds, ms(t0, 4000));
        assert_eq!(
            closed_releases(&s.launch(ms(t0, 4000), &mut fds)),
            vec![(1, closed(true))]
        );
        // Let go with commits unshipped: closed, and a sync takes it up
        // again from the bucket (after the backoff).
        s.on_released(
            1,
            Ok(Some(STAT)),
            Connection::Closed,
            ms(t0, 4001),
            &written,
        );
        assert!(s.get(1).unwrap().is_dirty());
        assert!(s.launch(ms(t0, 4002), &mut fds).is_empty(), "backing off");
        assert_eq!(syncs(&s.launch(ms(t0, 7000), &mut fds)), vec![(1, false)]);
    }

    #[test]
    fn a_database_nobody_had_open_is_not_let_go_as_closed_until_the_application_shows_itself() {
        // Idle releases after 10 s; database 0 is closed when walsync takes
        // it up: nobody closed it, so its first sync's probe lets nothing go.
        let (mut s, t0) = schedule(1, 2, Some(Duration::from_secs(10)));
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        s.on_done(0, alone(synced(0, t0)), &mut fds, ms(t0, 5));
        assert!(s.launch(ms(t0, 5), &mut fds).is_empty());
        // Nor after a sync that shipped nothing new.
        write(&mut s, 0, ms(t0, 1000));
        s.launch(ms(t0, 1000), &mut fds);
        s.on_done(0, alone(synced(0, ms(t0, 1000))), &mut fds, ms(t0, 1005));
        assert!(s.launch(ms(t0, 1005), &mut fds).is_empty());
        // A sync that shipped commits: the application was there, and its
        // close as the sync ended lets go.
        write(&mut s, 0, ms(t0, 2000));
        s.launch(ms(t0, 2000), &mut fds);
        s.on_done(0, alone(synced(4, ms(t0, 2000))), &mut fds, ms(t0, 2005));
        let closed = LetGo::Closed {
            storage_failing: false,
        };
        assert_eq!(
            closed_releases(&s.launch(ms(t0, 2005), &mut fds)),
            vec![(0, closed)]
        );
        s.on_released(
            0,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 2006),
            &unchanged,
        );
        // Let go of: the application must show itself again. A sync that
        // ships nothing, a close (walsync's own connections make those
        // too) whose probe finds nobody: kept.
        write(&mut s, 0, ms(t0, 3000));
        s.launch(ms(t0, 3000), &mut fds);
        s.on_done(0, alone(synced(0, ms(t0, 3000))), &mut fds, ms(t0, 3005));
        s.on_probe(0, Some(false), ms(t0, 3006));
        assert!(s.launch(ms(t0, 3006), &mut fds).is_empty());
        // A probe that finds another process with it open: the next that
        // finds none is the application's last close.
        s.on_probe(0, Some(true), ms(t0, 3500));
        assert!(s.launch(ms(t0, 3500), &mut fds).is_empty());
        s.on_probe(0, Some(false), ms(t0, 3600));
        assert_eq!(
            closed_releases(&s.launch(ms(t0, 3600), &mut fds)),
            vec![(0, closed)]
        );
    }

    /// A database let go of during an outage with commits kept for upload
    /// (`Replica::has_pending`) wants syncs, paced by its backoff, until
    /// they are up; and a stop gives it a last one though its files did
    /// not change.
    #[test]
    fn a_released_database_keeping_commits_for_upload_syncs_until_they_are_up() {
        let idle = Duration::from_secs(10);
        let (mut s, t0) = schedule(2, 4, Some(idle));
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        s.on_done(0, synced(1, t0), &mut fds, t0);
        s.on_done(1, synced(1, t0), &mut fds, t0);
        assert_eq!(releases(&s.launch(ms(t0, 10_000), &mut fds)), vec![0, 1]);
        for id in [0, 1] {
            let now = ms(t0, 10_001);
            s.on_released(id, Ok(Some(STAT)), Connection::Released, now, &unchanged);
            s.spooled(id, id == 0, now);
        }
        // Only the one that keeps commits, at once, though unchanged.
        assert_eq!(syncs(&s.launch(ms(t0, 10_002), &mut fds)), vec![(0, false)]);
        let unreachable = Outcome::Unreachable("connection refused".into());
        let now = ms(t0, 10_003);
        s.on_done(
            0,
            finished(unreachable, Connection::Released, now),
            &mut fds,
            now,
        );
        s.spooled(0, true, now);
        // Backoff: 2 s after the first failure.
        assert!(s.launch(ms(t0, 11_000), &mut fds).is_empty());
        assert_eq!(syncs(&s.launch(ms(t0, 12_100), &mut fds)), vec![(0, false)]);
        let now = ms(t0, 12_200);
        let up = finished(
            Outcome::Synced(SyncReport::default()),
            Connection::Released,
            now,
        );
        s.on_done(0, up, &mut fds, now);
        s.spooled(0, false, now);
        assert!(
            s.launch(ms(t0, 60_000), &mut fds).is_empty(),
            "uploaded: at rest"
        );
        // At a stop, a released one unchanged since is finished at once,
        // unless it keeps commits for upload.
        s.spooled(1, true, ms(t0, 60_000));
        assert_eq!(syncs(&s.launch(ms(t0, 60_000), &mut fds)), vec![(1, false)]);
        let now = ms(t0, 60_001);
        let failed_again = finished(
            Outcome::Unreachable("connection refused".into()),
            Connection::Released,
            now,
        );
        s.on_done(1, failed_again, &mut fds, now);
        s.begin_stop(ms(t0, 60_002), &unchanged);
        assert_eq!(syncs(&s.launch(ms(t0, 60_002), &mut fds)), vec![(1, true)]);
    }

    /// Written while its syncs back off from the outage, a database let go
    /// of with commits kept for upload wakes at once (not at its backoff),
    /// and the application's close lets it go again, though no sync could
    /// ship anything meanwhile.
    #[test]
    fn a_released_database_keeping_commits_for_upload_wakes_at_once_and_is_let_go_at_the_next_close(
    ) {
        let (mut s, t0) = schedule(1, 2, None);
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        s.on_done(0, synced(1, t0), &mut fds, t0);
        s.on_probe(0, Some(false), ms(t0, 1));
        let failing = LetGo::Closed {
            storage_failing: false,
        };
        assert_eq!(
            closed_releases(&s.launch(ms(t0, 1), &mut fds)),
            vec![(0, failing)]
        );
        s.on_released(
            0,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 2),
            &unchanged,
        );
        s.spooled(0, true, ms(t0, 2));
        assert_eq!(syncs(&s.launch(ms(t0, 2), &mut fds)), vec![(0, false)]);
        let unreachable = || Outcome::Unreachable("connection refused".into());
        let now = ms(t0, 3);
        s.on_done(
            0,
            finished(unreachable(), Connection::Released, now),
            &mut fds,
            now,
        );
        s.spooled(0, true, now);
        // Backing off for 2 s; the application writes: at once.
        assert!(s.launch(ms(t0, 500), &mut fds).is_empty());
        write(&mut s, 0, ms(t0, 500));
        assert_eq!(syncs(&s.launch(ms(t0, 500), &mut fds)), vec![(0, false)]);
        // The wake holds it; the upload fails; the application closes.
        let now = ms(t0, 600);
        s.on_done(
            0,
            alone(finished(unreachable(), Connection::Open, now)),
            &mut fds,
            now,
        );
        s.spooled(0, true, now);
        let failing = LetGo::Closed {
            storage_failing: true,
        };
        assert_eq!(
            closed_releases(&s.launch(ms(t0, 601), &mut fds)),
            vec![(0, failing)]
        );
    }

    #[test]
    fn no_release_for_a_last_close_while_stopping() {
        let (mut s, t0) = schedule(1, 2, None);
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        s.on_done(0, synced(1, t0), &mut fds, ms(t0, 5));
        s.begin_stop(ms(t0, 6), &unchanged);
        assert_eq!(s.probe_wanted(&want(0).replica.path), None);
        s.on_probe(0, Some(false), ms(t0, 7));
        let actions = s.launch(ms(t0, 7), &mut fds);
        assert_eq!(
            (releases(&actions), syncs(&actions)),
            (vec![], vec![(0, true)])
        );
        s.on_done(0, alone(synced(0, ms(t0, 7))), &mut fds, ms(t0, 8));
        assert!(releases(&s.launch(ms(t0, 9), &mut fds)).is_empty());
    }

    #[test]
    fn a_stop_gives_each_database_one_last_sync_and_starts_nothing_else() {
        let idle = Duration::from_secs(10);
        let (mut s, t0) = schedule(4, 8, Some(idle));
        let mut fds = FakeFds::default();
        assert_eq!(s.launch(t0, &mut fds).len(), 4);
        // 0: open, idle since its sync; 1: released, unchanged since;
        // 2: released, then written; 3: still syncing when the stop comes.
        s.on_done(0, synced(1, t0), &mut fds, ms(t0, 5_000));
        s.on_done(1, synced(0, t0), &mut fds, t0);
        s.on_done(2, synced(0, t0), &mut fds, t0);
        assert_eq!(releases(&s.launch(ms(t0, 10_000), &mut fds)), vec![1, 2]);
        s.on_released(
            1,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 10_002),
            &unchanged,
        );
        s.on_released(
            2,
            Ok(Some(STAT)),
            Connection::Released,
            ms(t0, 10_002),
            &unchanged,
        );
        let stat_now = |p: &Path| {
            if p == want(2).replica.path {
                written(p)
            } else {
                unchanged(p)
            }
        };
        s.begin_stop(ms(t0, 20_000), &stat_now);
        let name = |id| s.get(id).unwrap().name();
        assert_eq!(s.unfinished(), vec![name(0), name(2), name(3)]);
        // Last syncs for all but the released, unchanged one; no release
        // although database 0 has been idle long enough.
        let actions = s.launch(ms(t0, 20_000), &mut fds);
        assert_eq!(syncs(&actions), vec![(0, true), (2, true)]);
        assert!(releases(&actions).is_empty());
        assert!(!s.stop_complete());
        let now = ms(t0, 20_010);
        assert_eq!(
            s.on_done(0, synced(0, now), &mut fds, now),
            vec![Action::Close { id: 0 }]
        );
        assert_eq!(
            s.on_done(2, synced(0, now), &mut fds, now),
            vec![Action::Close { id: 2 }]
        );
        // The sync that was running gets one more, as a last sync.
        assert_eq!(s.on_done(3, synced(1, t0), &mut fds, now), vec![]);
        assert_eq!(syncs(&s.launch(now, &mut fds)), vec![(3, true)]);
        s.on_done(3, synced(0, now), &mut fds, now);
        assert!(s.stop_complete());
        assert!(s.take_failed_at_stop().is_empty());
    }

    #[test]
    fn a_database_let_go_of_without_a_mark_is_taken_up_at_stop_to_leave_one() {
        let idle = Duration::from_secs(10);
        let (mut s, t0) = schedule(2, 8, Some(idle));
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        s.on_done(0, synced(0, t0), &mut fds, t0);
        s.on_done(1, synced(0, t0), &mut fds, t0);
        assert_eq!(releases(&s.launch(ms(t0, 10_000), &mut fds)), vec![0, 1]);
        // Both unchanged since; 1 is over `idle_release_max_size` (its
        // let-go read no fingerprint and left no mark).
        for id in [0, 1] {
            let at = ms(t0, 10_002);
            s.on_released(id, Ok(Some(STAT)), Connection::Released, at, &unchanged);
            s.set_unmarked(id, id == 1);
        }
        s.begin_stop(ms(t0, 20_000), &unchanged);
        assert_eq!(syncs(&s.launch(ms(t0, 20_000), &mut fds)), vec![(1, true)]);
        let now = ms(t0, 20_010);
        assert_eq!(
            s.on_done(1, synced(0, now), &mut fds, now),
            vec![Action::Close { id: 1 }]
        );
        assert!(s.stop_complete());
    }

    #[test]
    fn a_failed_last_sync_counts_only_for_a_database_that_was_replicated() {
        let (mut s, t0) = schedule(2, 4, None);
        let mut fds = FakeFds::default();
        s.begin_stop(t0, &unchanged);
        assert_eq!(syncs(&s.launch(t0, &mut fds)), vec![(0, true), (1, true)]);
        s.on_done(0, failed(t0), &mut fds, ms(t0, 4));
        let never_opened = finished(Outcome::Failed("no".into()), Connection::Closed, t0);
        s.on_done(1, never_opened, &mut fds, ms(t0, 4));
        assert!(
            s.launch(ms(t0, 5), &mut fds).is_empty(),
            "a failed last sync is not retried"
        );
        assert!(s.stop_complete());
        assert_eq!(s.take_failed_at_stop(), vec![s.get(0).unwrap().name()]);
    }

    #[test]
    fn a_database_that_leaves_the_catalog_gets_a_last_sync_then_is_forgotten() {
        let (mut s, t0) = schedule(2, 4, None);
        let mut fds = FakeFds::default();
        s.launch(t0, &mut fds);
        s.on_done(0, synced(0, t0), &mut fds, t0);
        s.on_done(1, synced(0, t0), &mut fds, t0);
        s.apply(vec![want(0)], ms(t0, 10), &fds);
        // At once, not a sync interval after the last.
        assert_eq!(syncs(&s.launch(ms(t0, 10), &mut fds)), vec![(1, true)]);
        assert_eq!(
            s.on_done(1, synced(0, t0), &mut fds, ms(t0, 20)),
            vec![Action::Forget {
                id: 1,
                prefix: "db/1".into()
            }]
        );
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.paths().collect::<Vec<_>>(),
            vec![want(0).replica.path.as_path()]
        );
        // Back in the catalog: a new database, synced from the start.
        s.apply(vec![want(0), want(1)], ms(t0, 30), &fds);
        assert_eq!(syncs(&s.launch(ms(t0, 30), &mut fds)), vec![(2, false)]);
    }
}
