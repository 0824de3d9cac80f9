//! Taking a database up: from a release (`wake`, in `release`), or from what
//! the bucket holds, resuming its generation when the WAL or the database
//! file provably continues it, else a new generation with a snapshot.

use std::time::Duration;

use super::bucket::{read_mark, read_object_pos};
use super::error::ReplicaError;
use super::live::{Cursor, Live};
use super::release::file_as_left;
use super::wal_file::wal_continues;
use super::Replica;
use crate::keys::{self, ObjectKind};
use crate::sqlite::{self, DbHandle};
use crate::storage::Storage;

impl Replica {
    /// Opens the database, learns from the bucket where its backup stands and
    /// either resumes that generation (the WAL provably continues it) or
    /// schedules a new one.
    pub(super) fn start(&mut self, storage: &dyn Storage) -> Result<(), ReplicaError> {
        if let Some(released) = self.released.take() {
            if released.db.still_at_path() {
                return self.wake(released);
            }
            // Replaced while released: the file held is not this database
            // any more; a fresh start sees the new one.
            self.needs_generation = true;
        }
        let mut handle = DbHandle::open(&self.opts.path, Duration::from_secs(5))?;
        let page_size = handle.geometry()?.0;
        handle.begin_read()?;

        let listing = storage.list(&keys::database_root(&self.opts.prefix))?;
        // Replication must go on whatever else is in the bucket: a key that
        // is not ours is reported and left alone (restore and verify are
        // the ones that refuse it).
        let (objects, bad) = keys::parse_listing_lenient(&self.opts.prefix, &listing);
        for b in bad {
            log::warn!("{} ({}): {b}", self.opts.path.display(), self.opts.prefix);
        }
        let mut newest: Option<&keys::BackupObject> = None;
        let mut newest_mark: Option<&keys::BackupObject> = None;
        for o in &objects {
            let (txid, time) = (o.kind.txid(), o.kind.time_ms());
            self.last_time_ms = self.last_time_ms.max(time);
            if let ObjectKind::Mark { .. } = o.kind {
                if newest_mark.is_none_or(|m| (m.generation, m.kind.txid()) <= (o.generation, txid))
                {
                    newest_mark = Some(o);
                }
                continue;
            }
            if txid > self.last_txid || newest.is_none() {
                self.last_txid = self.last_txid.max(txid);
                newest = Some(o);
            }
            if let ObjectKind::Snapshot { time_ms, .. } = o.kind {
                self.last_snapshot_ms = self.last_snapshot_ms.max(time_ms);
            }
        }

        let mut cursor = None;
        if let Some(o) = newest {
            let pos = match read_object_pos(storage, o) {
                Ok(pos) => pos,
                // A newest object that cannot be read proves nothing to build
                // on; a new generation does not need it.
                Err(e @ ReplicaError::Corrupt { .. }) => {
                    log::error!("{} ({}): {e}", self.opts.path.display(), self.opts.prefix);
                    None
                }
                Err(e) => return Err(e),
            };
            if let Some((pos, db_pages)) = pos {
                if wal_continues(&self.opts.path, page_size, pos)? {
                    cursor = Some(Cursor {
                        pos: Some(pos),
                        base_is_db_file: false,
                        db_pages,
                    });
                    self.generation = o.generation;
                    log::info!(
                        "{} ({}): resuming generation {:016x} at txid {}",
                        self.opts.path.display(),
                        self.opts.prefix,
                        o.generation,
                        self.last_txid
                    );
                }
            }
        }
        // The WAL was restarted, but the database file may still be exactly
        // what was shipped when walsync last let go of it (an idle mark).
        if let (None, Some(o), Some(m)) = (cursor, newest, newest_mark) {
            if m.generation == o.generation && m.kind.txid() == self.last_txid {
                match read_mark(storage, m) {
                    Ok(mark) if mark.page_size == page_size => {
                        if file_as_left(&handle, mark.pos, mark.fingerprint)? {
                            cursor = Some(Cursor {
                                pos: mark.pos,
                                base_is_db_file: true,
                                db_pages: mark.db_pages,
                            });
                            self.generation = o.generation;
                            log::info!(
                                "{} ({}): resuming generation {:016x} at txid {} (the database file is as walsync left it)",
                                self.opts.path.display(),
                                self.opts.prefix,
                                o.generation,
                                self.last_txid
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(e @ ReplicaError::Corrupt { .. }) => {
                        log::warn!("{} ({}): {e}", self.opts.path.display(), self.opts.prefix)
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let why = if newest.is_some() {
            "the WAL does not continue the backup in the bucket (the database changed while walsync was not running)"
        } else {
            "no backup in the bucket yet"
        };
        self.go_live(handle, page_size, cursor, why);
        Ok(())
    }

    /// Replicates from `cursor` on with `handle` (whose read transaction is
    /// open), or, without a cursor, from a new generation for the reason
    /// given.
    pub(super) fn go_live(
        &mut self,
        handle: DbHandle,
        page_size: u32,
        cursor: Option<Cursor>,
        why_new: &str,
    ) {
        // The read transaction is open, so the -shm file exists: the one
        // walsync's read mark is in.
        let shm_id = sqlite::file_id(&sqlite::shm_path(&self.opts.path)).ok();
        let proven = cursor.is_some();
        self.live = Some(Live {
            handle,
            page_size,
            cursor: cursor.unwrap_or(Cursor {
                pos: None,
                base_is_db_file: false,
                db_pages: None,
            }),
            shm_id,
            view: None,
            backfilled: false,
            mark_zero: false,
        });
        // A reason was given already (e.g. the file was replaced).
        if !proven && !self.needs_generation {
            self.begin_new_generation(why_new);
        }
    }
}
