//! Replication of one database: reads new WAL frames, ships whole
//! transactions as segments, takes snapshots, runs walsync's own
//! checkpoints, and notices every way the WAL history can break.
//!
//! This is where ARCHITECTURE.md invariant 1 lives. The rules, in one place:
//! - walsync holds a read transaction on the database at all times while it
//!   runs. With a read mark above 0 the application can append to the WAL but
//!   cannot restart it, so every frame stays readable until walsync ships it.
//! - walsync releases that read transaction only in a *sync point*
//!   (`checkpoint`, `snapshot`), while it holds the write lock: it ships the
//!   rest of the WAL, runs a PASSIVE checkpoint and takes the read transaction
//!   again before any writer can append. If the checkpoint backfilled every
//!   frame, the new read transaction has read mark 0: the database file now
//!   equals the shipped state and no checkpoint can change it while walsync
//!   holds the mark (`Cursor::base_is_db_file`). Only in that state is a WAL
//!   restart (new salts, or the WAL truncated) a continuation; in any other
//!   state it is a gap.
//! - On a gap (a restart it cannot account for, the WAL deleted, the file
//!   replaced, a WAL that does not continue what the bucket holds after a
//!   restart of walsync), a new generation starts with a full snapshot.
//!
//! Snapshots are read from the files themselves: the database file, overlaid
//! with the newest copy of each page from WAL frames up to the snapshot's
//! position when the WAL was not fully backfilled. Each overlaid frame is
//! checked against its recorded checksum, so a frame that changed while being
//! read aborts the snapshot instead of corrupting it.
//!
//! The files of this folder:
//! - `mod.rs` (this file): `Replica` and its public API (`sync`, `release`,
//!   `stop`, `close`), `ReplicaOptions`, `SyncReport`;
//! - `live`: where walsync stands while it holds a database (`Cursor`,
//!   `Live`, `WalEnd`);
//! - `wal_file`: reading the `-wal` file itself (frames, transactions, does
//!   the WAL continue a position);
//! - `ship`: shipping transactions as segments, and what a gap does;
//! - `sync_point`: walsync's own checkpoints and the read mark (`settle`);
//! - `sync_plan`: what a sync must do and how `settle` moves the mark,
//!   decided from plain values (table-tested);
//! - `snapshot`: snapshots read from the files;
//! - `resume`: taking a database up, from the bucket or after a release;
//! - `continuity`: does this WAL continue that backup? (the decisions of
//!   `resume` and of a wake, apart from the reading; table-tested);
//! - `release`: letting go of an idle or stopped database, and its proof;
//! - `pending`: what a let-go during a storage outage keeps for upload
//!   (store and forward);
//! - `bucket`: what a backup object in the bucket says about where it stands;
//! - `lag`: how far a local database is ahead of its backup (`walsync list`);
//! - `error`: `ReplicaError`.

mod bucket;
mod commit_times;
mod continuity;
mod error;
mod lag;
mod live;
mod pending;
mod release;
mod resume;
mod ship;
mod snapshot;
mod sync_plan;
mod sync_point;
mod wal_file;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use crate::format::sealed::{fresh_salt, SALT_BYTES};
use crate::keyfile::{Key, Keyring};
use crate::lease::claim::{Claim, Leased, Leases};
use crate::sqlite::{self, SqliteError};
use crate::storage::{Storage, StorageError};

pub use commit_times::CommitTimes;
pub use error::ReplicaError;
pub use lag::{local_lag, Lag};

use error::io_err;
use live::Live;
use pending::{Pending, PendingStep};
use release::Released;
use sync_plan::{SnapshotState, Thresholds, Upkeep, WalState};

/// How one database is replicated.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub path: PathBuf,
    pub prefix: String,
    pub snapshot_interval: Duration,
    /// WAL size (bytes) at which walsync runs a PASSIVE checkpoint.
    pub checkpoint_threshold: u64,
    /// WAL size (bytes) at which walsync follows with a TRUNCATE checkpoint.
    pub truncate_threshold: u64,
    /// Uncompressed page bytes per segment before a new one is started
    /// (a single larger transaction still goes whole into one segment).
    pub max_segment_bytes: u64,
    /// Where snapshots are spooled before upload.
    pub spool_dir: PathBuf,
    /// Keep every point of this window restorable and delete what is older
    /// (after each snapshot); `None` keeps everything.
    pub retention: Option<Duration>,
    /// The key that seals every object written (none: written as they
    /// are), and those that open what the bucket holds.
    pub keys: Keyring,
}

/// What one `sync` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub commits: u64,
    pub segments: u64,
    pub bytes_uploaded: u64,
    pub snapshot: bool,
    pub new_generation: bool,
    pub checkpointed: bool,
    /// The sync shipped while the application was writing and left the
    /// WAL unbackfilled (`Replica::settle`): the next sync, one
    /// `sync_interval` later, backfills it if the application has paused,
    /// and is due even if nothing changes.
    pub settle_deferred: bool,
}

pub struct Replica {
    pub opts: ReplicaOptions,
    live: Option<Live>,
    /// The next snapshot must start a new generation before anything ships.
    needs_generation: bool,
    /// Newest txid in the bucket for this database (0: none).
    last_txid: u64,
    /// Newest commit time recorded (times never go backwards).
    last_time_ms: u64,
    generation: u64,
    /// Whether the current generation's objects are sealed.
    generation_sealed: bool,
    last_snapshot_ms: u64,
    commits_since_snapshot: u64,
    /// Let go of while idle: what it takes to prove continuity on waking.
    released: Option<Released>,
    /// Another file was renamed over the database while walsync held it:
    /// what of the old one must be gone before the new one is taken up
    /// (`replaced_while_held`).
    stale: Option<continuity::StaleIndex>,
    /// When the watcher saw each commit (`commit_times`); without it a
    /// commit's time is the sync's.
    commit_times: Option<std::sync::Arc<CommitTimes>>,
    /// This process's leases, and this database's claim on its prefix
    /// (`crate::lease`); without them, no lease is taken.
    leases: Option<Arc<Leases>>,
    claim: Option<Arc<Claim>>,
    /// What a let-go during a storage outage kept for upload: it goes up
    /// before anything else of this database (`pending`).
    pending: Pending,
}

impl Replica {
    pub fn new(opts: ReplicaOptions) -> Replica {
        Replica {
            opts,
            live: None,
            needs_generation: false,
            last_txid: 0,
            last_time_ms: 0,
            generation: 0,
            generation_sealed: false,
            last_snapshot_ms: 0,
            commits_since_snapshot: 0,
            released: None,
            stale: None,
            commit_times: None,
            leases: None,
            claim: None,
            pending: Pending::default(),
        }
    }

    /// Writes only while holding the prefix's lease (`crate::lease`).
    pub fn set_leases(&mut self, leases: Arc<Leases>) {
        self.leases = Some(leases);
    }

    /// This database's claim on its prefix, if it has one (for giving it up
    /// at the end of the process).
    pub fn claim_held(&self) -> Option<Arc<Claim>> {
        self.claim.clone()
    }

    /// The claim on the prefix of the options in force (a reload may have
    /// changed it: the old prefix's lease is then given up).
    fn claim(&mut self, storage: &dyn Storage) -> Option<Arc<Claim>> {
        let leases = self.leases.as_ref()?;
        if self
            .claim
            .as_ref()
            .is_none_or(|c| c.prefix() != self.opts.prefix)
        {
            let new = Arc::new(leases.claim(&self.opts.prefix));
            if let Some(old) = self.claim.replace(new) {
                old.give_up(storage);
            }
        }
        self.claim.clone()
    }

    /// Runs `work` with a storage that writes only under the lease, if
    /// there is one. A lease lost on the way closes the database (its read
    /// transaction would pin the WAL for nothing) and is the error.
    fn under_lease<T>(
        &mut self,
        storage: &dyn Storage,
        take_first: bool,
        work: impl FnOnce(&mut Self, &dyn Storage) -> Result<T, ReplicaError>,
    ) -> Result<T, ReplicaError> {
        let Some(claim) = self.claim(storage) else {
            return work(self, storage);
        };
        let leased = Leased {
            inner: storage,
            claim: &claim,
        };
        let taken = match take_first {
            true => claim.ensure(storage),
            false => Ok(()),
        };
        let result = match taken {
            Ok(()) => work(self, &leased),
            Err(e) => Err(e.into()),
        };
        if let Some(lost) = claim.lost() {
            self.close();
            return Err(lost.into());
        }
        result
    }

    /// Dates commits by the timelines the watcher records in `times`.
    pub fn set_commit_times(&mut self, times: std::sync::Arc<CommitTimes>) {
        self.commit_times = Some(times);
    }

    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    pub fn prefix(&self) -> &str {
        &self.opts.prefix
    }

    /// Newest txid in the bucket (0: none yet); commits kept for upload
    /// (`pending`) are not in it yet.
    pub fn last_txid(&self) -> u64 {
        self.first_pending_txid()
            .map_or(self.last_txid, |t| t.saturating_sub(1))
    }

    /// The WAL offset up to which everything is shipped, while replicating.
    pub fn shipped_wal_offset(&self) -> Option<u64> {
        self.live
            .as_ref()
            .and_then(|l| l.cursor.pos)
            .map(|p| p.offset)
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Closes the connections (releasing the read transaction). The next
    /// `sync` resumes from what the bucket holds; what waited for the
    /// storage is dropped, and said so.
    pub fn close(&mut self) {
        self.live = None;
        self.released = None;
        self.drop_pending();
    }

    fn now_ms(&mut self) -> u64 {
        self.last_time_ms = self.last_time_ms.max(crate::time::now_ms());
        self.last_time_ms
    }

    /// Ships every committed transaction not yet in the bucket, and does the
    /// checkpoint and snapshot work that is due. Idempotent; safe to call on
    /// any event or timer.
    pub fn sync(
        &mut self,
        storage: &dyn Storage,
        force_snapshot: bool,
    ) -> Result<SyncReport, ReplicaError> {
        // The lease is taken before the database is opened: a refused
        // prefix leaves the application's database untouched.
        let take_first = self.live.is_none();
        self.under_lease(storage, take_first, |r, storage| {
            r.sync_leased(storage, force_snapshot)
        })
    }

    fn sync_leased(
        &mut self,
        storage: &dyn Storage,
        force_snapshot: bool,
    ) -> Result<SyncReport, ReplicaError> {
        let mut report = SyncReport::default();
        // What a let-go during an outage kept goes up first; a database let
        // go of and unchanged since is not woken for it.
        if self.has_pending() && pending::step(self.held()) == PendingStep::UploadAlone {
            return self.upload_pending(storage, &mut report).map(|()| report);
        }
        if let Some(live) = &self.live {
            match sqlite::file_id(&self.opts.path) {
                Ok(id) if id == live.handle.id() => {}
                Ok(_) => self.replaced_while_held(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.live = None;
                    self.needs_generation = true;
                    return Err(SqliteError::Missing(self.opts.path.clone()).into());
                }
                Err(e) => return Err(io_err(&self.opts.path)(e)),
            }
        }
        if let Some(live) = &self.live {
            let shm_now = sqlite::file_id(&sqlite::shm_path(&self.opts.path)).ok();
            if live.shm_id.is_some() && shm_now != live.shm_id {
                log::warn!(
                    "{} ({}): the -shm file was replaced, so walsync's read lock protected nothing; \
                     reopening and starting a new generation",
                    self.opts.path.display(),
                    self.opts.prefix
                );
                self.live = None;
                self.needs_generation = true;
            }
        }
        if self.live.is_none() && self.released.is_none() && self.needs_generation {
            // Let go of with commits unshipped during an outage
            // (`release_closed`): holding the database again is safe only
            // while walsync can ship, so the storage is asked first.
            storage.list(&crate::keys::database_root(&self.opts.prefix))?;
        }
        if self.live.is_none() {
            self.take_up_replaced()?;
            self.start(storage)?;
        }
        // The keys may have changed since (SIGHUP): a generation's objects
        // are all sealed or all plain.
        let sealing = self.opts.keys.seal.is_some();
        if let Some(why) = continuity::sealing_changed(self.generation_sealed, sealing) {
            if !self.needs_generation && self.generation != 0 {
                self.begin_new_generation(why);
            }
        }
        // Held now (its read transaction pins the application's new
        // commits), but nothing goes up before what waits.
        if let Err(e) = self.upload_pending(storage, &mut report) {
            if let Some(cause) = sync_plan::outage(&e) {
                self.warn_if_wal_grows(cause);
                if let Err(e) = self.settle(false, true) {
                    log::debug!("{}: settling the WAL failed: {e}", self.opts.path.display());
                }
            }
            return Err(e);
        }
        if self.needs_generation {
            self.snapshot(storage, true, &mut report)?;
        }
        let shipped = self.ship(storage, &mut report);
        if let Some(e) = shipped.as_ref().err().and_then(sync_plan::outage) {
            self.warn_if_wal_grows(e);
            if let Err(e) = self.settle(false, true) {
                log::debug!("{}: settling the WAL failed: {e}", self.opts.path.display());
            }
        }
        if let Err(gap) = shipped? {
            self.handle_gap(storage, gap, &mut report)?;
        }
        let mut upkeep = self.upkeep(force_snapshot, &report);
        if sync_plan::backfill_first(upkeep) {
            // Backfilled beside the read transaction first (the application
            // keeps writing), the sync point has only what was committed
            // since to copy while the application's writers wait for it;
            // none at all if that left walsync at rest.
            self.settle(true, true)?;
            report.checkpointed = true;
            upkeep = self.upkeep(force_snapshot, &report);
        }
        match upkeep {
            Upkeep::Snapshot => self.snapshot(storage, false, &mut report)?,
            Upkeep::Truncate => {
                let r = self.live_mut().handle.checkpoint_truncate()?;
                log::debug!("{}: TRUNCATE checkpoint: {r:?}", self.opts.path.display());
            }
            Upkeep::SyncPoint { truncate } => self.checkpoint(storage, truncate, &mut report)?,
            Upkeep::Nothing => {}
        }
        let quiet = sync_plan::app_paused(report.commits, self.last_time_ms, crate::time::now_ms());
        report.settle_deferred = self.settle(true, quiet)?;
        if let (true, Some(retention)) = (report.snapshot, self.opts.retention) {
            // A new snapshot is what makes older objects unnecessary; an idle
            // database costs no requests for retention either.
            match crate::retention::prune(
                storage,
                &self.opts.prefix,
                retention,
                crate::time::now_ms(),
                false,
            ) {
                Ok(p) if !p.deleted.is_empty() => log::info!(
                    "{} ({}): retention deleted {} objects ({} bytes), {} kept",
                    self.opts.path.display(),
                    self.opts.prefix,
                    p.deleted.len(),
                    p.bytes,
                    p.kept
                ),
                Ok(_) => {}
                Err(e) => log::warn!(
                    "{} ({}): retention: {e}",
                    self.opts.path.display(),
                    self.opts.prefix
                ),
            }
        }
        Ok(report)
    }

    /// What `sync_plan::upkeep` says is due now.
    fn upkeep(&mut self, force_snapshot: bool, report: &SyncReport) -> Upkeep {
        let wal_len = std::fs::metadata(sqlite::wal_path(&self.opts.path))
            .map(|m| m.len())
            .unwrap_or(0);
        let live = self.live_mut();
        let wal = WalState {
            used_bytes: live.cursor.pos.map_or(0, |p| p.offset),
            file_bytes: wal_len,
            base_is_db_file: live.cursor.base_is_db_file,
            mark_zero: live.mark_zero,
        };
        let snapshot = SnapshotState {
            forced: force_snapshot,
            taken_this_sync: report.snapshot,
            commits_since_snapshot: self.commits_since_snapshot,
            now_ms: crate::time::now_ms(),
            due_ms: self.last_snapshot_ms + self.opts.snapshot_interval.as_millis() as u64,
        };
        let limits = Thresholds {
            checkpoint_bytes: self.opts.checkpoint_threshold,
            truncate_bytes: self.opts.truncate_threshold,
        };
        sync_plan::upkeep(snapshot, wal, limits)
    }

    /// Whether a connection of another process has the database open
    /// (`DbHandle::others_attached`); `None` when not live or not known.
    pub fn others_attached(&mut self) -> Option<bool> {
        let live = self.live.as_mut()?;
        live.handle.others_attached(live.shm_id)
    }

    /// While uploads fail walsync keeps holding the WAL, so nothing is lost
    /// but the WAL grows: past `truncate_threshold` that is worth an error
    /// line each attempt, naming the size.
    fn warn_if_wal_grows(&self, cause: &StorageError) {
        let len = std::fs::metadata(sqlite::wal_path(&self.opts.path)).map_or(0, |m| m.len());
        if len >= self.opts.truncate_threshold {
            log::error!(
                "{} ({}): the WAL is {len} bytes and grows while uploads fail ({cause}); walsync holds it \
                 so that no commit is lost, which also keeps the application's checkpoints from shrinking it",
                self.opts.path.display(),
                self.opts.prefix
            );
        }
    }

    /// Whether walsync let go of the database while idle.
    pub fn is_released(&self) -> bool {
        self.released.is_some()
    }

    /// The key to seal the next object with, and a fresh salt for it, if
    /// the database's objects are sealed (README "Encryption").
    fn seal(&self) -> Result<Option<(Key, [u8; SALT_BYTES])>, ReplicaError> {
        let Some(key) = &self.opts.keys.seal else {
            return Ok(None);
        };
        let salt = fresh_salt().map_err(io_err(&self.opts.path))?;
        Ok(Some((key.clone(), salt)))
    }

    fn live_mut(&mut self) -> &mut Live {
        self.live
            .as_mut()
            .expect("invariant: the replica is live here")
    }

    fn begin_new_generation(&mut self, reason: &str) {
        log::warn!(
            "{} ({}): {reason}; starting a new generation with a full snapshot",
            self.opts.path.display(),
            self.opts.prefix
        );
        self.needs_generation = true;
    }
}
