//! Taking a database up: from a release (`wake`, in `release`), or from what
//! the bucket holds, resuming its generation when the WAL or the database
//! file provably continues it, else a new generation with a snapshot.

use std::path::Path;
use std::time::Duration;

use super::bucket::{read_mark, read_object, ObjectRead};
use super::continuity::{
    self, BucketEvidence, Continuity, FileIdentity, LocalEvidence, Resume, ShippedPos,
};
use super::error::ReplicaError;
use super::live::{Cursor, Live};
use super::release::{fingerprint, identity};
use super::wal_file::{wal_continues, wal_header};
use super::Replica;
use crate::format::mark::{Fingerprint, Mark};
use crate::keyfile::Key;
use crate::keys::{self, BackupObject};
use crate::sqlite::{self, DbHandle};
use crate::storage::Storage;
use crate::wal::{WalHeader, WalPos};

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
        let bucket = continuity::summarize(&objects, self.last_txid);
        self.last_time_ms = self.last_time_ms.max(bucket.last_time_ms);
        self.last_txid = bucket.last_txid;
        self.last_snapshot_ms = self.last_snapshot_ms.max(bucket.last_snapshot_ms);
        let mut evidence = BucketFiles {
            storage,
            local: LocalFiles {
                path: &self.opts.path,
                page_size,
                handle: &handle,
            },
            prefix: &self.opts.prefix,
            keys: &self.opts.keys.open,
            newest: None,
        };
        let sealing = self.opts.keys.seal.is_some();
        let (cursor, why) = match continuity::resume(&bucket, page_size, sealing, &mut evidence)? {
            Resume::Continue {
                generation,
                cursor,
                proof,
            } => {
                self.generation = generation;
                self.generation_sealed = sealing;
                log::info!(
                    "{} ({}): resuming generation {:016x} at txid {}{}",
                    self.opts.path.display(),
                    self.opts.prefix,
                    generation,
                    self.last_txid,
                    match proof {
                        Continuity::WalContinues => "",
                        Continuity::FileAsLeft => " (the database file is as walsync left it)",
                    }
                );
                (Some(cursor), "")
            }
            Resume::NewGeneration { why } => (None, why),
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
            shipped_since_mark: false,
            shm_file: None,
        });
        // A reason was given already (e.g. the file was replaced).
        if !proven && !self.needs_generation {
            self.begin_new_generation(why_new);
        }
    }
}

/// The local files, as `continuity` asks about them (with walsync's read
/// transaction open on `handle`).
pub(super) struct LocalFiles<'a> {
    pub(super) path: &'a Path,
    pub(super) page_size: u32,
    pub(super) handle: &'a DbHandle,
}

impl LocalEvidence for LocalFiles<'_> {
    fn wal_continues(&mut self, pos: WalPos) -> Result<bool, ReplicaError> {
        wal_continues(self.path, self.page_size, pos)
    }

    fn wal_header(&mut self) -> Result<Option<WalHeader>, ReplicaError> {
        wal_header(self.handle.path())
    }

    fn fingerprint(&mut self) -> Result<Fingerprint, ReplicaError> {
        fingerprint(self.handle.file(), self.handle.path())
    }

    fn identity(&mut self) -> Result<FileIdentity, ReplicaError> {
        identity(self.handle.file(), self.handle.path(), self.page_size)
    }
}

/// The bucket and the local files, as `continuity` asks about them. An
/// object that cannot be decoded proves nothing: it is logged and answered
/// with `None`.
struct BucketFiles<'a> {
    storage: &'a dyn Storage,
    local: LocalFiles<'a>,
    prefix: &'a str,
    /// The keys that open the database's objects.
    keys: &'a [Key],
    /// The newest object, read once for both of its questions.
    newest: Option<ObjectRead>,
}

impl BucketFiles<'_> {
    fn newest(&mut self, newest: &BackupObject) -> Result<&mut ObjectRead, ReplicaError> {
        if self.newest.is_none() {
            self.newest = Some(read_object(self.storage, newest, self.keys)?);
        }
        Ok(self.newest.as_mut().expect("invariant: read just above"))
    }
}

impl BucketEvidence for BucketFiles<'_> {
    fn sealed(&mut self, newest: &BackupObject) -> Result<Option<bool>, ReplicaError> {
        Ok(Some(self.newest(newest)?.sealed))
    }

    fn shipped_pos(&mut self, newest: &BackupObject) -> Result<Option<ShippedPos>, ReplicaError> {
        let read = self.newest(newest)?;
        let pos = std::mem::replace(&mut read.pos, Ok(None));
        match pos {
            Ok(pos) => Ok(pos),
            // A newest object that cannot be read proves nothing to build
            // on; a new generation does not need it.
            Err(e @ ReplicaError::Corrupt { .. }) => {
                log::error!("{} ({}): {e}", self.local.path.display(), self.prefix);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn mark(&mut self, mark: &BackupObject) -> Result<Option<Mark>, ReplicaError> {
        match read_mark(self.storage, mark, self.keys) {
            Ok(m) => Ok(Some(m)),
            Err(e @ ReplicaError::Corrupt { .. }) => {
                log::warn!("{} ({}): {e}", self.local.path.display(), self.prefix);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl LocalEvidence for BucketFiles<'_> {
    fn wal_continues(&mut self, pos: WalPos) -> Result<bool, ReplicaError> {
        self.local.wal_continues(pos)
    }

    fn wal_header(&mut self) -> Result<Option<WalHeader>, ReplicaError> {
        self.local.wal_header()
    }

    fn fingerprint(&mut self) -> Result<Fingerprint, ReplicaError> {
        self.local.fingerprint()
    }

    fn identity(&mut self) -> Result<FileIdentity, ReplicaError> {
        self.local.identity()
    }
}
