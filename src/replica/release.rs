//! Letting go of a database (idle release, or stop) with the proof that
//! lets it be taken up again without a snapshot: the database file's
//! fingerprint while it held exactly what was shipped, kept in memory and
//! left in the bucket as a mark; and waking a released database.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use super::continuity;
use super::error::{io_err, ReplicaError};
use super::live::Cursor;
use super::resume::LocalFiles;
use super::{Replica, SyncReport};
use crate::format::mark::{Fingerprint, Mark};
use crate::keys;
use crate::sqlite::{self, DbHandle};
use crate::storage::{Body, Storage};

/// A database walsync let go of while it was idle (ARCHITECTURE.md "Idle databases"): no
/// connections and no read transaction, only walsync's own descriptor (which
/// keeps the flock and the process-wide registration) and a fingerprint of
/// the database file taken when it held exactly what was shipped.
pub(super) struct Released {
    pub(super) db: sqlite::DbFile,
    pub(super) cursor: Cursor,
    pub(super) page_size: u32,
    pub(super) fingerprint: Fingerprint,
    /// `db` holds the read lock on SQLite's SHARED range
    /// (`sqlite::hold_shared`), taken when the WAL was empty: the
    /// application's last close cannot delete the WAL, and a WAL made
    /// afresh continues the backup (`continuity::wake`).
    pub(super) locked: bool,
}

pub(super) fn fingerprint(file: &File, path: &Path) -> Result<Fingerprint, ReplicaError> {
    let mut crc = crc32fast::Hasher::new();
    let mut mix = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = match file.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        crc.update(&buf[..n]);
        for word in buf[..n].chunks(8) {
            let mut w = [0u8; 8];
            w[..word.len()].copy_from_slice(word);
            mix = (mix ^ u64::from_le_bytes(w))
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(29);
        }
        at += n as u64;
    }
    Ok(Fingerprint {
        len: at,
        crc: crc.finalize(),
        mix,
    })
}

impl Replica {
    /// Lets go of an idle database: ships what is left and runs a sync
    /// point; if the checkpoint was complete (the database file is then
    /// exactly what was shipped), fingerprints the file and closes the
    /// connections, keeping only walsync's descriptor. `Ok(false)` if it
    /// was not the moment (not live, too large, not complete).
    pub fn release(
        &mut self,
        storage: &dyn Storage,
        max_db_bytes: u64,
    ) -> Result<Option<sqlite::FileStat>, ReplicaError> {
        self.let_go(storage, max_db_bytes, "idle, connections released")
    }

    /// Stops replicating (SIGTERM, or the database left the configuration)
    /// the way a release does, whatever the database's size: ships what is
    /// left, backfills the WAL under the write lock and leaves a mark with
    /// the database file's fingerprint in the bucket, so that the next
    /// start continues this generation without a snapshot even if the
    /// application restarts the WAL meanwhile (README "Restarts"). If the
    /// write lock or a complete checkpoint is not to be had, no mark is
    /// left and the next start relies on the WAL alone.
    pub fn stop(&mut self, storage: &dyn Storage) -> Result<(), ReplicaError> {
        if self.live.is_some() {
            let left = self.let_go(storage, u64::MAX, "stopped, mark left")?;
            if left.is_none() {
                log::info!(
                    "{} ({}): no complete checkpoint at stop (the write lock was busy or an \
                     application reader held old frames); the next start resumes only if the WAL \
                     still continues the backup",
                    self.opts.path.display(),
                    self.opts.prefix
                );
            }
        }
        Ok(())
    }

    /// Lets go of a database that no other process has open any more, as
    /// the application's own last close would have had walsync not held it
    /// (SQLite checkpoints and deletes the WAL then): ships what is left,
    /// checkpoints, leaves the WAL empty and closes the connections, so
    /// that the database can be replaced by rename or deleted at once
    /// (README "Replacing a database"). Whatever its size. `Ok(None)` if
    /// it was not the moment (another process has it open again, the write
    /// lock was busy, a write came in between).
    ///
    /// If the storage cannot be reached, walsync lets go all the same: a
    /// database that cannot be replaced safely is worse than a broken
    /// history. The commits not yet shipped stay in the database file but
    /// not in the bucket, so the next sync, once the storage answers,
    /// starts a new generation (and nothing is opened until then). With
    /// `storage_failing` (its last sync could not reach the storage) it
    /// does not try to ship first: an upload's retries would keep the
    /// database held for seconds.
    pub fn release_closed(
        &mut self,
        storage: &dyn Storage,
        storage_failing: bool,
    ) -> Result<Option<sqlite::FileStat>, ReplicaError> {
        if self.others_attached() != Some(false) || self.needs_generation {
            return Ok(None);
        }
        if storage_failing {
            return self.let_go_unshipped(&"its last sync could not reach the storage");
        }
        match self.let_go(
            storage,
            u64::MAX,
            "closed by the application, connections released",
        ) {
            Err(e) if self.live.is_some() && super::sync_plan::outage(&e).is_some() => {
                self.let_go_unshipped(&e)
            }
            r => r,
        }
    }

    /// `release_closed` while the storage is down (`cause`): gives up the
    /// read mark, empties the WAL into the database file (TRUNCATE) and
    /// closes the connections; the next sync starts a new generation.
    fn let_go_unshipped(
        &mut self,
        cause: &dyn std::fmt::Display,
    ) -> Result<Option<sqlite::FileStat>, ReplicaError> {
        let path = self.opts.path.clone();
        let live = self.live.as_mut().expect("invariant: checked live");
        // From here the WAL is not pinned any more: whatever happens next,
        // the history walsync holds ends here.
        self.needs_generation = true;
        let truncated = live
            .handle
            .end_read()
            .map_err(ReplicaError::from)
            .and_then(|()| {
                live.handle
                    .checkpoint_truncate()
                    .map_err(ReplicaError::from)
            });
        self.live = None;
        self.released = None;
        let truncated = truncated?;
        log::warn!(
            "{} ({}): the application closed the database while the storage is unreachable              ({cause}); walsync let go of it anyway so that it can be replaced or deleted safely,              which leaves the commits not yet shipped out of this generation: a new generation              with a full snapshot starts once the storage answers{}",
            path.display(),
            self.opts.prefix,
            if truncated.complete() {
                ""
            } else {
                " (the WAL was not emptied: another connection opened the database meanwhile)"
            }
        );
        Ok(Some(sqlite::stat_of(&path)))
    }

    pub(super) fn let_go(
        &mut self,
        storage: &dyn Storage,
        max_db_bytes: u64,
        done: &str,
    ) -> Result<Option<sqlite::FileStat>, ReplicaError> {
        if self.needs_generation || self.live.is_none() {
            return Ok(None);
        }
        let path = self.opts.path.clone();
        let len = self
            .live_mut()
            .handle
            .file()
            .metadata()
            .map_err(io_err(&path))?
            .len();
        if len > max_db_bytes {
            return Ok(None);
        }
        let mut report = SyncReport::default();
        let Some((true, mut stat)) = self.sync_point(storage, &mut report)? else {
            return Ok(None);
        };
        // Leave the WAL empty, as the application's last close would have
        // (it deletes the WAL; walsync's connection kept it from doing so).
        // Once walsync's connections are closed, the next connection to
        // open this path rebuilds the wal-index from the WAL; a WAL still
        // holding frames, even backfilled ones, would then be applied to
        // whatever file is at the path, e.g. one renamed over the database
        // (README "Replacing a database"). Safe: read mark 0 is held, so
        // every frame is shipped and in the database file.
        let truncated = self.live_mut().handle.checkpoint_truncate()?;
        if truncated.complete() {
            // Taken again, so that the next write (which restarts the
            // empty WAL) shows as a change. A write between the TRUNCATE
            // and this stat is not in the bucket yet: not the moment.
            stat = sqlite::stat_of(&path);
            if stat.wal.is_some_and(|(len, _)| len != 0) {
                return Ok(None);
            }
        } else {
            log::debug!(
                "{}: TRUNCATE before letting go not complete: {truncated:?}",
                path.display()
            );
        }
        // Read mark 0 is held: the database file cannot change meanwhile.
        let fingerprint = fingerprint(self.live_mut().handle.file(), &path)?;
        // The connections close first: until they do, a file renamed over
        // the database would share their wal-index, and the mark's upload
        // may take an outage's retries.
        let live = self.live.take().expect("invariant: still live");
        let (cursor, page_size) = (live.cursor, live.page_size);
        let db = live.handle.release();
        // After walsync's own closes (which leave the WAL as it is). Only
        // over an empty WAL: then every frame of a WAL made afresh is new.
        let locked = truncated.complete()
            && db
                .hold_shared(true)
                .map_err(|e| {
                    log::debug!("{}: SHARED range not locked: {e}", path.display());
                })
                .is_ok();
        self.released = Some(Released {
            db,
            cursor,
            page_size,
            fingerprint,
            locked,
        });
        // Leave the proof in the bucket too, so that a restart (or a kill)
        // while the database is idle can resume without a full snapshot.
        // It stays true of the position it names whatever is written next.
        let mark = Mark {
            page_size,
            db_pages: cursor.db_pages,
            fingerprint,
            pos: cursor.pos,
        };
        let (bytes, crc) = mark.encode();
        let time_ms = self.now_ms();
        let key = keys::mark_key(&self.opts.prefix, self.generation, self.last_txid, time_ms);
        if let Err(e) = storage.put(&key, Body::Bytes(&bytes), crc) {
            log::warn!(
                "{} ({}): idle mark not written: {e}",
                path.display(),
                self.opts.prefix
            );
        }
        log::debug!("{} ({}): {done}", path.display(), self.opts.prefix);
        Ok(Some(stat))
    }

    /// Takes a released database up again. Continuity is proven, with the
    /// read transaction already held, in one of two ways: the WAL still
    /// continues the shipped position, or the database file still has the
    /// fingerprint it had when it held exactly what was shipped (then every
    /// frame of the current WAL is new). Anything else (the application
    /// appended, checkpointed and restarted the WAL meanwhile) is a gap.
    ///
    /// If it fails before the proof is done (e.g. out of file descriptors),
    /// the database stays released with its proof, to be woken again later:
    /// a failed attempt is no gap.
    pub(super) fn wake(&mut self, released: Released) -> Result<(), ReplicaError> {
        let Released {
            db,
            cursor: released_cursor,
            page_size,
            fingerprint,
            locked,
        } = released;
        let path = self.opts.path.clone();
        let keep = |db| Released {
            db,
            cursor: released_cursor,
            page_size,
            fingerprint,
            locked,
        };
        let mut handle = match DbHandle::connect_or_return(db, Duration::from_secs(5)) {
            Ok(h) => h,
            Err(failed) => {
                let (e, db) = *failed;
                self.released = Some(keep(db));
                return Err(e.into());
            }
        };
        let proof = handle
            .begin_read()
            .map_err(ReplicaError::from)
            .and_then(|()| {
                let mut local = LocalFiles {
                    path: &path,
                    page_size,
                    handle: &handle,
                };
                continuity::wake(released_cursor, fingerprint, locked, &mut local)
            });
        let cursor = match proof {
            Ok(c) => c,
            Err(e) => {
                self.released = Some(keep(handle.release()));
                return Err(e);
            }
        };
        // walsync's read transaction now keeps the WAL from being deleted.
        if let Err(e) = sqlite::hold_shared(handle.file(), false) {
            log::debug!("{}: SHARED range not unlocked: {e}", path.display());
        }
        if cursor.is_some() {
            log::debug!(
                "{} ({}): woke up, continuing generation",
                path.display(),
                self.opts.prefix
            );
        }
        self.go_live(
            handle,
            page_size,
            cursor,
            continuity::CHANGED_WHILE_RELEASED,
        );
        Ok(())
    }
}
