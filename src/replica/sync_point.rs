//! walsync's own checkpoints: sync points (ship the rest, PASSIVE
//! checkpoint and read transaction again, all under the write lock), the
//! TRUNCATE that may follow, and `settle`, which moves the read mark so
//! that the WAL is backfilled once the application pauses (issue 10: a
//! database replaced by rename must never get a stale WAL applied to it;
//! issue 12: not an fsync of the application's files at every sync).

use super::continuity::Gap;
use super::error::ReplicaError;
use super::live::WalEnd;
use super::sync_plan::{self, RestStep, SettleStep};
use super::wal_file::{wal_end_after, wal_header};
use super::{Replica, SyncReport};
use crate::sqlite;
use crate::storage::Storage;
use crate::wal::WalPos;

/// After a failed position check the database file is not known to equal
/// anything shipped.
pub(super) fn live_reset_base(r: &mut Replica) {
    if let Some(live) = r.live.as_mut() {
        live.cursor.base_is_db_file = false;
    }
}

impl Replica {
    /// Keeps the WAL backfilled, so that the database file alone holds
    /// every commit and SQLite ignores the WAL (its wal-index says every
    /// frame is backfilled) in any connection that opens this path next:
    /// what SQLite itself leaves behind when the application's last
    /// connection closes, which walsync's read transaction otherwise
    /// prevents. Run at the end of every sync (`shipped_all`: every frame
    /// up to the WAL end that walsync's read transaction sees is shipped),
    /// and while uploads fail.
    ///
    /// The read mark is moved to the WAL's end by a handover (a new
    /// connection takes its read transaction before the old one ends its
    /// own), then a PASSIVE checkpoint, bounded by the new mark, backfills.
    /// walsync therefore always holds a read mark. It must not be mark 0
    /// (no pin: the application could restart the WAL) while a frame is
    /// unshipped, and a new read transaction gets mark 0 when the WAL is
    /// fully backfilled as it starts; so the mark is moved only when that
    /// cannot be the case:
    /// - after a complete ship, the old mark is at or below the shipped
    ///   end, so nothing after it can have been backfilled;
    /// - during an outage, only once the WAL has grown (or been restarted,
    ///   which happens only while walsync holds mark 0, blocking every
    ///   backfill) past what the old read transaction can see.
    ///
    /// While the application writes (`quiet` false) a sync that shipped
    /// leaves the mark and the WAL as they are (`SettleStep::Defer`) and
    /// returns true: backfilling once a second would cost the application
    /// an fsync of its WAL and of its database file at every sync, where
    /// SQLite's own checkpoint runs once per `wal_autocheckpoint` pages.
    /// The sync point at `checkpoint_threshold` backfills at that cadence,
    /// and the caller asks for one more sync, which settles once the
    /// application has paused.
    pub(super) fn settle(&mut self, shipped_all: bool, quiet: bool) -> Result<bool, ReplicaError> {
        let path = self.opts.path.clone();
        let Some(live) = self.live.as_mut() else {
            return Ok(false);
        };
        let page_size = live.page_size;
        match sync_plan::settle_step(
            shipped_all,
            live.cursor.base_is_db_file,
            live.shipped_since_mark,
            quiet,
        ) {
            SettleStep::Nothing => Ok(false),
            SettleStep::Defer => {
                log::debug!(
                    "{}: settle deferred: the application is writing",
                    path.display()
                );
                Ok(true)
            }
            SettleStep::CheckpointAtEnd => {
                // The mark is at or past the shipped end (taken after the
                // last ship), so this backfills shipped frames only.
                let ck = live.handle.checkpoint_passive_beside()?;
                let end = wal_end_after(&path, &ck)?;
                let at_end = sync_plan::at_shipped_end(live.cursor.pos, end, page_size);
                if ck.complete() {
                    live.backfilled = true;
                    // The file is exactly what was shipped, and the mark
                    // (at the end, or 0) keeps it so.
                    live.cursor.base_is_db_file = at_end;
                }
                log::debug!(
                    "{}: settled at the end: {ck:?}, at the shipped end: {at_end}",
                    path.display()
                );
                if at_end {
                    self.rest_at_mark_zero(ck.complete())?;
                }
                Ok(false)
            }
            SettleStep::MoveMark => {
                let (ck, end) = live.move_mark(&path)?;
                let at_end = sync_plan::at_shipped_end(live.cursor.pos, end, page_size);
                if ck.complete() && at_end {
                    // The database file is exactly what was shipped, and the
                    // read mark (at the WAL's end, which is fully backfilled)
                    // keeps it so: no checkpoint can go past it, and no writer
                    // can restart the WAL while it is held.
                    live.cursor.base_is_db_file = true;
                }
                log::debug!(
                    "{}: settled: {ck:?}, at the shipped end: {at_end}",
                    path.display()
                );
                if at_end {
                    self.rest_at_mark_zero(ck.complete())?;
                }
                Ok(false)
            }
            SettleStep::CheckpointBeside => {
                let now = live.handle.checkpoint_passive_beside()?;
                if now.complete() {
                    live.backfilled = true;
                    return Ok(false);
                }
                live.backfilled = false;
                let end = wal_end_after(&path, &now)?;
                if !sync_plan::mark_may_move(live.view, end) {
                    // The checkpoint ran after walsync's read transaction
                    // began, so it saw at least as far: the next one can
                    // move the mark.
                    live.view = Some(end);
                    return Ok(false);
                }
                let (ck, _) = live.move_mark(&path)?;
                log::debug!("{}: settled while uploads fail: {ck:?}", path.display());
                Ok(false)
            }
        }
    }

    /// Called after a settle found every frame up to the WAL's end shipped
    /// (`at_shipped_end`); `backfilled_at_end`: the WAL was also wholly
    /// backfilled there, with walsync's read transaction seeing that end.
    /// Moves the read mark once more, so that the new read transaction
    /// begins on a fully backfilled WAL and gets read mark 0: SQLite reads
    /// the database file alone for it, so it holds none of the marks a WAL
    /// restart must find unused, and the application's RESTART and TRUNCATE
    /// checkpoints succeed (and its next writer restarts the WAL) while
    /// walsync has caught up (issue 10).
    ///
    /// Mark 0 still protects every frame committed after it: a checkpoint
    /// must lock mark 0 exclusively to backfill, which walsync's read lock
    /// on it forbids, and SQLite restarts only a fully backfilled WAL; so
    /// the WAL is restarted at most once, at the shipped end, and then grows
    /// until walsync's next settle moves the mark above 0 and backfills what
    /// it shipped. The old mark is held until the new one is taken, and
    /// `after_move` says what the new one sees. When the WAL was not wholly
    /// backfilled yet (the old mark was below the end: SQLite gives a reader
    /// an older mark when it cannot take a free one, as while an application
    /// checkpoint scans them), the first move's checkpoint backfills it and
    /// a second move takes mark 0.
    fn rest_at_mark_zero(&mut self, backfilled_at_end: bool) -> Result<(), ReplicaError> {
        let path = self.opts.path.clone();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let Some(shipped) = live.cursor.pos.map(|p| WalEnd::of(&p, live.page_size)) else {
            return Ok(());
        };
        if live.mark_zero || shipped.frames == 0 {
            return Ok(());
        }
        let mut backfilled = backfilled_at_end;
        for _ in 0..2 {
            let (ck, after) = live.move_mark(&path)?;
            let seen = sync_plan::after_move(shipped, after);
            log::debug!(
                "{}: read mark moved at the shipped end: {seen:?}, {ck:?}",
                path.display()
            );
            match sync_plan::rest_step(seen, backfilled, ck.complete()) {
                RestStep::Stop { base_is_db_file } => {
                    live.cursor.base_is_db_file = base_is_db_file;
                    return Ok(());
                }
                RestStep::AtMarkZero => {
                    live.cursor.base_is_db_file = true;
                    live.backfilled = true;
                    live.mark_zero = true;
                    return Ok(());
                }
                RestStep::Again => {
                    live.cursor.base_is_db_file = true;
                    backfilled = true;
                }
            }
        }
        Ok(())
    }

    /// Runs `f` while walsync holds the database's write lock.
    pub(super) fn with_writers_locked<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ReplicaError>,
    ) -> Result<T, ReplicaError> {
        self.live_mut().handle.lock_writers()?;
        let r = f(self);
        if let Some(live) = self.live.as_mut() {
            live.handle.unlock_writers();
        }
        r
    }

    /// The heart of a sync point, called with the write lock held: release
    /// the read transaction, run a PASSIVE checkpoint, take the read
    /// transaction again. Returns whether every frame is now in the database
    /// file (then the new read transaction has read mark 0).
    pub(super) fn checkpoint_under_lock(
        &mut self,
        shipped_to: Option<WalPos>,
    ) -> Result<Result<bool, Gap>, ReplicaError> {
        let path = self.opts.path.clone();
        let live = self.live_mut();
        let r = (|| {
            live.handle.end_read()?;
            let ck = live.handle.checkpoint_passive();
            live.handle.begin_read()?;
            ck
        })();
        let ck = match r {
            Ok(ck) => ck,
            Err(e) => {
                // Without a read transaction nothing protects the WAL: start
                // over from the bucket's view on the next sync.
                self.live = None;
                return Err(e.into());
            }
        };
        // Defence in depth: with the write lock held, the WAL's committed
        // end (log_frames) must be exactly where walsync stands. If not,
        // something walsync has not shipped could be in the database file
        // now, and only a new generation is safe.
        let header = wal_header(&path)?;
        if !sync_plan::sync_point_agrees(ck.log_frames, header, shipped_to) {
            live_reset_base(self);
            return Ok(Err(Gap::new(format!(
                "at a sync point the WAL ends after frame {} but walsync stands at {:?}",
                ck.log_frames,
                shipped_to.map(|p| p.offset)
            ))));
        }
        // The read transaction began under the write lock, right after the
        // checkpoint: it sees exactly the end the checkpoint reported.
        let end = WalEnd::reported(header, &ck);
        let live = self.live_mut();
        live.cursor.base_is_db_file = ck.complete();
        live.backfilled = ck.complete();
        live.mark_zero = ck.complete();
        live.shipped_since_mark = false;
        live.view = Some(end);
        Ok(Ok(ck.complete()))
    }

    /// A sync point: under the write lock, ship the rest of the WAL, run a
    /// PASSIVE checkpoint, take the read transaction again, and note the
    /// files as walsync leaves them (before any writer can touch them).
    /// Returns whether the checkpoint was complete, or `None` when the write
    /// lock was not to be had or a gap was found (and handled: a new
    /// generation).
    pub(super) fn sync_point(
        &mut self,
        storage: &dyn Storage,
        report: &mut SyncReport,
    ) -> Result<Option<(bool, sqlite::FileStat)>, ReplicaError> {
        if let Err(e) = self.live_mut().handle.lock_writers() {
            log::debug!("{}: sync point skipped: {e}", self.opts.path.display());
            return Ok(None);
        }
        let r = (|| -> Result<Result<(bool, sqlite::FileStat), Gap>, ReplicaError> {
            if let Err(gap) = self.ship(storage, report)? {
                return Ok(Err(gap));
            }
            let shipped_to = self.live_mut().cursor.pos;
            let complete = self.checkpoint_under_lock(shipped_to)?;
            Ok(complete.map(|c| (c, sqlite::stat_of(&self.opts.path))))
        })();
        if let Some(live) = self.live.as_mut() {
            live.handle.unlock_writers();
        }
        match r? {
            Ok(done) => Ok(Some(done)),
            Err(gap) => {
                self.handle_gap(storage, gap, report)?;
                Ok(None)
            }
        }
    }

    /// walsync's own checkpoint, run when the WAL has grown past the
    /// threshold. Skipped (not an error) if the write lock is not to be had.
    pub(super) fn checkpoint(
        &mut self,
        storage: &dyn Storage,
        truncate: bool,
        report: &mut SyncReport,
    ) -> Result<(), ReplicaError> {
        let Some((complete, _)) = self.sync_point(storage, report)? else {
            return Ok(());
        };
        report.checkpointed = true;
        log::debug!(
            "{}: PASSIVE checkpoint {}",
            self.opts.path.display(),
            if complete {
                "complete"
            } else {
                "partial (an application reader holds older frames)"
            }
        );
        if complete && truncate {
            // Safe: our read mark 0 blocks any backfill, so TRUNCATE
            // can only drop a WAL whose frames are all shipped and in
            // the database file.
            let r = self.live_mut().handle.checkpoint_truncate()?;
            log::debug!("{}: TRUNCATE checkpoint: {r:?}", self.opts.path.display());
        }
        Ok(())
    }
}
