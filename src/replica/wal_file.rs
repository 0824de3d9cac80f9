//! Reading the `-wal` file itself, never through SQLite: frames checked
//! against the salts and the checksum chain, whole transactions, and
//! whether the WAL continues a shipped position. Memory stays one read
//! buffer whatever the size of a transaction (ARCHITECTURE.md invariant 7).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{io_err, ReplicaError};
use super::live::WalEnd;
use crate::sqlite;
use crate::wal::{self, Checksum, TxnSpan, WalHeader, WalPos};

pub(super) const READ_CHUNK: usize = 4 << 20;

/// An open `-wal` file.
pub(super) struct WalFile {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) len: u64,
}

impl WalFile {
    /// `None` if there is no WAL file.
    pub(super) fn open(db: &Path) -> Result<Option<WalFile>, ReplicaError> {
        let path = sqlite::wal_path(db);
        match File::open(&path) {
            Ok(file) => {
                let len = file.metadata().map_err(io_err(&path))?.len();
                Ok(Some(WalFile { path, file, len }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub(super) fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>, ReplicaError> {
        let n = (self.len.saturating_sub(offset)).min(max as u64) as usize;
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&self.path)(e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// The header, if the WAL has a valid one.
    pub(super) fn header(&self) -> Result<Option<WalHeader>, ReplicaError> {
        let b = self.read_at(0, wal::HEADER_SIZE)?;
        Ok(wal::parse_header(&b).ok())
    }

    /// Reads frames one after another from `from` (a position in the WAL
    /// of `h`) up to byte offset `limit`, checking each against the salts
    /// and the checksum chain, and calls `f(offset, chain_before, frame,
    /// frame_bytes)` for each valid one, until the first invalid frame, the
    /// end of the file, or `f` returning `false`. Memory: one read buffer,
    /// whatever the size of a transaction (ARCHITECTURE.md invariant 7).
    pub(super) fn stream_frames(
        &self,
        h: &WalHeader,
        from: WalPos,
        limit: u64,
        mut f: impl FnMut(u64, Checksum, &wal::Frame, &[u8]) -> Result<bool, ReplicaError>,
    ) -> Result<(), ReplicaError> {
        let fs = h.frame_size() as usize;
        let end = limit.min(self.len);
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_at = from.offset;
        let mut at = from.offset;
        let mut chain = from.checksum;
        while at + fs as u64 <= end {
            if at + fs as u64 > buf_at + buf.len() as u64 {
                let want = ((end - at) as usize).min(READ_CHUNK.max(fs));
                buf = self.read_at(at, want)?;
                buf_at = at;
                if buf.len() < fs {
                    break;
                }
            }
            let i = (at - buf_at) as usize;
            let bytes = &buf[i..i + fs];
            let Some(frame) = h.check_frame(chain, bytes) else {
                break;
            };
            if !f(at, chain, &frame, bytes)? {
                break;
            }
            chain = frame.checksum;
            at += fs as u64;
        }
        Ok(())
    }

    /// Calls `on_txn` for each whole transaction from `from` on (up to byte
    /// offset `limit`), in order, until it returns `false`. Returns the
    /// position after the last whole transaction seen and the database size
    /// there.
    pub(super) fn scan_spans(
        &self,
        h: &WalHeader,
        from: WalPos,
        limit: u64,
        mut on_txn: impl FnMut(&TxnSpan) -> Result<bool, ReplicaError>,
    ) -> Result<(WalPos, Option<u32>), ReplicaError> {
        let mut end = from;
        let mut db_pages = None;
        let mut start = (from.offset, from.checksum);
        let mut frames = 0u32;
        self.stream_frames(h, from, limit, |offset, _, frame, _| {
            frames += 1;
            if frame.commit_size == 0 {
                return Ok(true);
            }
            let span = TxnSpan {
                start: start.0,
                start_checksum: start.1,
                end: WalPos {
                    salt1: h.salt1,
                    salt2: h.salt2,
                    offset: offset + h.frame_size(),
                    checksum: frame.checksum,
                },
                frame_count: frames,
                db_pages: frame.commit_size,
            };
            end = span.end;
            db_pages = Some(span.db_pages);
            start = (span.end.offset, span.end.checksum);
            frames = 0;
            on_txn(&span)
        })?;
        Ok((end, db_pages))
    }
}

/// The WAL's header, if it has a valid one.
pub(super) fn wal_header(db: &Path) -> Result<Option<WalHeader>, ReplicaError> {
    match WalFile::open(db)? {
        Some(w) => w.header(),
        None => Ok(None),
    }
}

/// The WAL end a checkpoint result reports, with the salts of the WAL
/// as it is now.
pub(super) fn wal_end_after(
    db: &Path,
    ck: &sqlite::CheckpointResult,
) -> Result<WalEnd, ReplicaError> {
    Ok(WalEnd::reported(wal_header(db)?, ck))
}

/// Whether the current WAL provably continues `pos`: same salts, and the
/// checksum chain from the WAL's start reaches `pos` exactly.
pub(super) fn wal_continues(db: &Path, page_size: u32, pos: WalPos) -> Result<bool, ReplicaError> {
    let Some(wal) = WalFile::open(db)? else {
        return Ok(false);
    };
    let Some(h) = wal.header()? else {
        return Ok(false);
    };
    if !pos.same_wal(&h) || h.page_size != page_size || wal.len < pos.offset {
        return Ok(false);
    }
    let (end, _) = wal.scan_spans(&h, h.start(), pos.offset, |_| Ok(true))?;
    Ok(end == pos)
}

/// The position after the last commit in the current WAL, and the database
/// size there; `(None, None)` if the WAL is empty.
pub(super) fn wal_end(
    db: &Path,
    page_size: u32,
) -> Result<(Option<WalPos>, Option<u32>), ReplicaError> {
    let Some(wal) = WalFile::open(db)? else {
        return Ok((None, None));
    };
    let Some(h) = wal.header()? else {
        return Ok((None, None));
    };
    if h.page_size != page_size {
        return Err(ReplicaError::Unstable {
            path: db.to_path_buf(),
            what: format!(
                "WAL page size {} differs from the database's {page_size}",
                h.page_size
            ),
        });
    }
    let (end, db_pages) = wal.scan_spans(&h, h.start(), u64::MAX, |_| Ok(true))?;
    Ok((Some(end), db_pages))
}
