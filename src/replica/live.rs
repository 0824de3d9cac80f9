//! Where walsync stands while it holds a database: the shipped position
//! (`Cursor`), the connections and what its read mark protects (`Live`),
//! and the end of the WAL a read transaction sees (`WalEnd`).

use std::path::Path;

use super::error::ReplicaError;
use super::wal_file::wal_end_after;
use crate::sqlite::{self, DbHandle};
use crate::wal::{self, WalHeader, WalPos};

/// Where walsync stands in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    /// Just past the last shipped commit frame; `None` when the WAL was
    /// empty at the base.
    pub(super) pos: Option<WalPos>,
    /// The database file equals the shipped state at `pos` and cannot change
    /// while walsync holds its read transaction (read mark 0, taken right
    /// after a complete checkpoint under the write lock). Cleared as soon as
    /// a frame is shipped.
    pub(super) base_is_db_file: bool,
    /// Database size in pages after the commit at `pos`, when known.
    pub(super) db_pages: Option<u32>,
}

pub(super) struct Live {
    pub(super) handle: DbHandle,
    pub(super) page_size: u32,
    pub(super) cursor: Cursor,
    /// The `-shm` file walsync's read mark lives in; if it is replaced,
    /// the mark protects nothing any more.
    pub(super) shm_id: Option<sqlite::FileId>,
    /// An upper bound of the WAL end (salts, frames) that walsync's read
    /// transaction sees, when known: a checkpoint result read after the
    /// read transaction began. See `settle`.
    pub(super) view: Option<WalEnd>,
    /// Every frame walsync has seen is in the database file (the last
    /// settle or sync point backfilled the whole WAL, and nothing was seen
    /// since): a file renamed over the database now would not get the old
    /// WAL applied to it.
    pub(super) backfilled: bool,
    /// walsync's read transaction was taken right after a complete
    /// checkpoint under the write lock, so it has mark 0: the application
    /// may restart the WAL (and its RESTART and TRUNCATE checkpoints can
    /// succeed). Cleared when the mark is moved by `settle`.
    pub(super) mark_zero: bool,
    /// A frame was shipped since walsync's read mark was taken (by a sync
    /// point, a move, or opening the database).
    pub(super) shipped_since_mark: bool,
    /// walsync's own descriptor of the `-shm` file, to read the wal-index
    /// header (`release::wal_index`), opened once and kept: POSIX locks
    /// belong to the process, and closing any descriptor of the `-shm`
    /// file would drop the read lock of walsync's connection with it.
    /// Declared after `handle`, so that it is closed after the connections.
    pub(super) shm_file: Option<std::fs::File>,
}

impl Live {
    /// Moves the read mark to the WAL's end and backfills (see
    /// `Replica::settle`); returns the checkpoint's result and the WAL end
    /// it reported, which the new read transaction sees at most.
    pub(super) fn move_mark(
        &mut self,
        db: &Path,
    ) -> Result<(sqlite::CheckpointResult, WalEnd), ReplicaError> {
        let ck = self.handle.move_read_mark()?;
        let end = wal_end_after(db, &ck)?;
        self.view = Some(end);
        self.backfilled = ck.complete();
        self.mark_zero = false;
        self.shipped_since_mark = false;
        Ok((ck, end))
    }
}

/// The end of the committed frames of one WAL: its salts and frame count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WalEnd {
    pub(super) salt1: u32,
    pub(super) salt2: u32,
    pub(super) frames: u64,
}

impl WalEnd {
    /// The end a checkpoint reported, in the WAL with `header`.
    pub(super) fn reported(header: Option<WalHeader>, ck: &sqlite::CheckpointResult) -> WalEnd {
        WalEnd {
            salt1: header.map_or(0, |h| h.salt1),
            salt2: header.map_or(0, |h| h.salt2),
            frames: ck.log_frames.max(0) as u64,
        }
    }

    pub(super) fn of(pos: &WalPos, page_size: u32) -> WalEnd {
        WalEnd {
            salt1: pos.salt1,
            salt2: pos.salt2,
            frames: pos.offset.saturating_sub(wal::HEADER_SIZE as u64)
                / (wal::FRAME_HEADER_SIZE as u64 + u64::from(page_size)),
        }
    }
}
