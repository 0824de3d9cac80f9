//! Replication of one database: reads new WAL frames, ships whole
//! transactions as segments, takes snapshots, runs walsync's own
//! checkpoints, and notices every way the WAL history can break.
//!
//! This is where DESIGN.md invariant 1 lives. The rules, in one place:
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

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::format::mark::{Fingerprint, Mark};
use crate::format::segment::{CommitRecord, SegmentDecoder, SegmentEncoder, SegmentHeader};
use crate::format::snapshot::{SnapshotDecoder, SnapshotEncoder, SnapshotHeader};
use crate::format::FormatError;
use crate::keys::{self, ObjectKind};
use crate::spool::SpoolFile;
use crate::sqlite::{self, DbHandle, SqliteError};
use crate::storage::{Body, Storage, StorageError};
use crate::wal::{self, Checksum, TxnSpan, WalHeader, WalPos};

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
}

#[derive(Debug)]
pub enum ReplicaError {
    Sqlite(SqliteError),
    Storage(StorageError),
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// An object in the bucket could not be decoded.
    Corrupt {
        key: String,
        source: FormatError,
    },
    BadKey(keys::BadKey),
    /// The files changed while walsync read them; it tries again.
    Unstable {
        path: PathBuf,
        what: String,
    },
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::Sqlite(e) => e.fmt(f),
            ReplicaError::Storage(e) => e.fmt(f),
            ReplicaError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ReplicaError::Corrupt { key, source } => write!(f, "object {key:?}: {source}"),
            ReplicaError::BadKey(e) => e.fmt(f),
            ReplicaError::Unstable { path, what } => {
                write!(f, "{}: {what}; will retry", path.display())
            }
        }
    }
}

impl std::error::Error for ReplicaError {}

impl From<SqliteError> for ReplicaError {
    fn from(e: SqliteError) -> Self {
        ReplicaError::Sqlite(e)
    }
}
impl From<StorageError> for ReplicaError {
    fn from(e: StorageError) -> Self {
        ReplicaError::Storage(e)
    }
}

impl ReplicaError {
    /// The database file is not there (yet): wait for it, do not back off loudly.
    pub fn is_missing_database(&self) -> bool {
        matches!(self, ReplicaError::Sqlite(SqliteError::Missing(_)))
    }

    /// Another file took the database's path while walsync worked on it:
    /// the next sync sees the new file (no backoff, nothing failed).
    pub fn is_replaced_database(&self) -> bool {
        matches!(self, ReplicaError::Sqlite(SqliteError::Replaced(_)))
    }

    /// The process (EMFILE) or the system (ENFILE) had no descriptor left,
    /// as the OS error says; `is_cannot_open` is SQLite's word for what may
    /// be the same. The S3 client keeps only the text of a transport error,
    /// so there the errno is read from it.
    pub fn is_out_of_descriptors(&self) -> bool {
        let os = |e: &io::Error| crate::signals::is_out_of_fds(e);
        match self {
            ReplicaError::Io { source, .. }
            | ReplicaError::Sqlite(SqliteError::Io { source, .. })
            | ReplicaError::Storage(StorageError::Io { source, .. })
            | ReplicaError::Corrupt {
                source: FormatError::Io(source),
                ..
            } => os(source),
            ReplicaError::Storage(StorageError::Transport { detail, .. }) => {
                detail.contains("(os error 24)") || detail.contains("(os error 23)")
            }
            _ => false,
        }
    }

    /// SQLite could not open the database, its WAL or its -shm file
    /// (SQLITE_CANTOPEN, which hides the errno).
    pub fn is_cannot_open(&self) -> bool {
        matches!(
            self,
            ReplicaError::Sqlite(SqliteError::Sqlite { source, .. })
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen)
        )
    }
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
}

/// Where walsync stands in the WAL.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// Just past the last shipped commit frame; `None` when the WAL was
    /// empty at the base.
    pos: Option<WalPos>,
    /// The database file equals the shipped state at `pos` and cannot change
    /// while walsync holds its read transaction (read mark 0, taken right
    /// after a complete checkpoint under the write lock). Cleared as soon as
    /// a frame is shipped.
    base_is_db_file: bool,
    /// Database size in pages after the commit at `pos`, when known.
    db_pages: Option<u32>,
}

struct Live {
    handle: DbHandle,
    page_size: u32,
    cursor: Cursor,
    /// The `-shm` file walsync's read mark lives in; if it is replaced,
    /// the mark protects nothing any more.
    shm_id: Option<sqlite::FileId>,
    /// An upper bound of the WAL end (salts, frames) that walsync's read
    /// transaction sees, when known: a checkpoint result read after the
    /// read transaction began. See `settle`.
    view: Option<WalEnd>,
    /// Every frame walsync has seen is in the database file (the last
    /// settle or sync point backfilled the whole WAL, and nothing was seen
    /// since): a file renamed over the database now would not get the old
    /// WAL applied to it.
    backfilled: bool,
    /// walsync's read transaction was taken right after a complete
    /// checkpoint under the write lock, so it has mark 0: the application
    /// may restart the WAL (and its RESTART and TRUNCATE checkpoints can
    /// succeed). Cleared when the mark is moved by `settle`.
    mark_zero: bool,
}

impl Live {
    /// Moves the read mark to the WAL's end and backfills (see
    /// `Replica::settle`); returns the checkpoint's result and the WAL end
    /// it reported, which the new read transaction sees at most.
    fn move_mark(&mut self, db: &Path) -> Result<(sqlite::CheckpointResult, WalEnd), ReplicaError> {
        let ck = self.handle.move_read_mark()?;
        let end = wal_end_after(db, &ck)?;
        self.view = Some(end);
        self.backfilled = ck.complete();
        self.mark_zero = false;
        Ok((ck, end))
    }
}

/// The end of the committed frames of one WAL: its salts and frame count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WalEnd {
    salt1: u32,
    salt2: u32,
    frames: u64,
}

impl WalEnd {
    /// The end a checkpoint reported, in the WAL with `header`.
    fn reported(header: Option<WalHeader>, ck: &sqlite::CheckpointResult) -> WalEnd {
        WalEnd {
            salt1: header.map_or(0, |h| h.salt1),
            salt2: header.map_or(0, |h| h.salt2),
            frames: ck.log_frames.max(0) as u64,
        }
    }

    fn of(pos: &WalPos, page_size: u32) -> WalEnd {
        WalEnd {
            salt1: pos.salt1,
            salt2: pos.salt2,
            frames: pos.offset.saturating_sub(wal::HEADER_SIZE as u64)
                / (wal::FRAME_HEADER_SIZE as u64 + u64::from(page_size)),
        }
    }
}

/// The WAL no longer continues what was shipped: a new generation starts.
#[derive(Debug)]
struct Gap {
    reason: String,
    /// walsync's locks on the database were lost (the WAL or the -shm file
    /// vanished under it): the connections must be opened again.
    reopen: bool,
    /// Another file was renamed over the database.
    replaced: bool,
}

impl Gap {
    fn new(reason: impl Into<String>) -> Gap {
        Gap {
            reason: reason.into(),
            reopen: false,
            replaced: false,
        }
    }

    fn lost_locks(reason: impl Into<String>) -> Gap {
        Gap {
            reason: reason.into(),
            reopen: true,
            replaced: false,
        }
    }

    fn replaced() -> Gap {
        Gap {
            reason: "the database file was replaced".into(),
            reopen: true,
            replaced: true,
        }
    }
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
    last_snapshot_ms: u64,
    commits_since_snapshot: u64,
    /// Let go of while idle: what it takes to prove continuity on waking.
    released: Option<Released>,
}

/// A database walsync let go of while it was idle (DESIGN.md "Scale"): no
/// connections and no read transaction, only walsync's own descriptor (which
/// keeps the flock and the process-wide registration) and a fingerprint of
/// the database file taken when it held exactly what was shipped.
struct Released {
    db: sqlite::DbFile,
    cursor: Cursor,
    page_size: u32,
    fingerprint: Fingerprint,
}

fn fingerprint(file: &File, path: &Path) -> Result<Fingerprint, ReplicaError> {
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

const READ_CHUNK: usize = 4 << 20;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ReplicaError + '_ {
    move |source| ReplicaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open `-wal` file.
struct WalFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl WalFile {
    /// `None` if there is no WAL file.
    fn open(db: &Path) -> Result<Option<WalFile>, ReplicaError> {
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

    fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>, ReplicaError> {
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
    fn header(&self) -> Result<Option<WalHeader>, ReplicaError> {
        let b = self.read_at(0, wal::HEADER_SIZE)?;
        Ok(wal::parse_header(&b).ok())
    }

    /// Reads frames one after another from `from` (a position in the WAL
    /// of `h`) up to byte offset `limit`, checking each against the salts
    /// and the checksum chain, and calls `f(offset, chain_before, frame,
    /// frame_bytes)` for each valid one, until the first invalid frame, the
    /// end of the file, or `f` returning `false`. Memory: one read buffer,
    /// whatever the size of a transaction (DESIGN.md invariant 7).
    fn stream_frames(
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
    fn scan_spans(
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

/// Where an encoded segment goes: memory when small, a spool file when one
/// transaction makes it large.
enum Sink {
    Memory(Vec<u8>),
    File(BufWriter<File>, PathBuf),
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Memory(v) => v.write(b),
            Sink::File(f, _) => f.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Memory(v) => v.flush(),
            Sink::File(f, _) => f.flush(),
        }
    }
}

/// Segments whose WAL bytes exceed this are spooled to a file, not memory.
const SEGMENT_IN_MEMORY: u64 = 16 << 20;

impl Replica {
    pub fn new(opts: ReplicaOptions) -> Replica {
        Replica {
            opts,
            live: None,
            needs_generation: false,
            last_txid: 0,
            last_time_ms: 0,
            generation: 0,
            last_snapshot_ms: 0,
            commits_since_snapshot: 0,
            released: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    pub fn prefix(&self) -> &str {
        &self.opts.prefix
    }

    /// Newest txid shipped (0: none yet).
    pub fn last_txid(&self) -> u64 {
        self.last_txid
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
    /// `sync` resumes from what the bucket holds.
    pub fn close(&mut self) {
        self.live = None;
        self.released = None;
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
        let mut report = SyncReport::default();
        if let Some(live) = &self.live {
            match sqlite::file_id(&self.opts.path) {
                Ok(id) if id == live.handle.id() => {}
                Ok(_) => {
                    self.log_replaced();
                    self.live = None;
                    self.needs_generation = true;
                }
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
        if self.live.is_none() {
            self.start(storage)?;
        }
        if self.needs_generation {
            self.snapshot(storage, true, &mut report)?;
        }
        let shipped = self.ship(storage, &mut report);
        if let Err(ReplicaError::Storage(e)) = &shipped {
            self.warn_if_wal_grows(e);
            // Nothing can be shipped, but the WAL can still be backfilled
            // (its frames stay in it: walsync's read mark keeps it from
            // being restarted), so that replacing the database stays safe
            // during an outage too.
            if let Err(e) = self.settle(false) {
                log::debug!("{}: settling the WAL failed: {e}", self.opts.path.display());
            }
        }
        if let Err(gap) = shipped? {
            self.handle_gap(storage, gap, &mut report)?;
        }
        let wal_len = std::fs::metadata(sqlite::wal_path(&self.opts.path))
            .map(|m| m.len())
            .unwrap_or(0);
        let due = self.last_snapshot_ms + self.opts.snapshot_interval.as_millis() as u64;
        // A forced snapshot right after a new generation's first one would
        // upload the same image twice.
        let forced = force_snapshot && (!report.snapshot || self.commits_since_snapshot > 0);
        // What the WAL holds beyond the database file is measured by where
        // walsync stands in the current WAL, not by the file's size: SQLite
        // reuses a restarted WAL file without shrinking it, and an idle
        // database must not be checkpointed over and over.
        let cursor = self.live_mut().cursor;
        let mark_zero = self.live_mut().mark_zero;
        // How far the current WAL has grown since it was last restarted:
        // walsync's read mark (see `settle`) keeps the application from
        // restarting it, so walsync's own sync point, which leaves it with
        // mark 0, is what lets the next writer start the WAL over. Not again
        // while nothing was shipped since the last one.
        let wal_used = cursor.pos.map_or(0, |p| p.offset);
        if forced || (self.commits_since_snapshot > 0 && crate::time::now_ms() >= due) {
            self.snapshot(storage, false, &mut report)?;
        } else if cursor.base_is_db_file && mark_zero && wal_len >= self.opts.truncate_threshold {
            // Everything is in the database file and walsync holds read mark
            // 0, so TRUNCATE can only drop frames already shipped and
            // backfilled (a frame appended since makes it report busy).
            let r = self.live_mut().handle.checkpoint_truncate()?;
            log::debug!("{}: TRUNCATE checkpoint: {r:?}", self.opts.path.display());
        } else if !(mark_zero && cursor.base_is_db_file)
            && (wal_used >= self.opts.checkpoint_threshold
                || wal_len >= self.opts.truncate_threshold)
        {
            // Also when the file is large but walsync's position is not: a
            // restarted WAL keeps the old frames as a stale tail until it is
            // truncated.
            self.checkpoint(
                storage,
                wal_len >= self.opts.truncate_threshold,
                &mut report,
            )?;
        }
        self.settle(true)?;
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

    fn let_go(
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
        let Some((true, stat)) = self.sync_point(storage, &mut report)? else {
            return Ok(None);
        };
        // Read mark 0 is held: the database file cannot change meanwhile.
        let fingerprint = fingerprint(self.live_mut().handle.file(), &path)?;
        // Leave the proof in the bucket too, so that a restart (or a kill)
        // while the database is idle can resume without a full snapshot.
        let cursor = self.live_mut().cursor;
        let mark = Mark {
            page_size: self.live_mut().page_size,
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
        let live = self.live.take().expect("invariant: still live");
        self.released = Some(Released {
            db: live.handle.release(),
            cursor: live.cursor,
            page_size: live.page_size,
            fingerprint,
        });
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
    fn wake(&mut self, released: Released) -> Result<(), ReplicaError> {
        let Released {
            db,
            cursor: released_cursor,
            page_size,
            fingerprint,
        } = released;
        let path = self.opts.path.clone();
        let keep = |db| Released {
            db,
            cursor: released_cursor,
            page_size,
            fingerprint,
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
                let continues = match released_cursor.pos {
                    Some(p) => wal_continues(&path, page_size, p)?,
                    None => false,
                };
                Ok(continues || file_as_left(&handle, released_cursor.pos, fingerprint)?)
                    .map(|proven| (continues, proven))
            });
        let (continues, proven) = match proof {
            Ok(p) => p,
            Err(e) => {
                self.released = Some(keep(handle.release()));
                return Err(e);
            }
        };
        let cursor = if continues {
            Some(Cursor {
                base_is_db_file: false,
                ..released_cursor
            })
        } else if proven {
            Some(Cursor {
                base_is_db_file: true,
                ..released_cursor
            })
        } else {
            None
        };
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
            "the database changed while walsync had let go of it (idle) in a way it cannot follow",
        );
        Ok(())
    }

    /// Replicates from `cursor` on with `handle` (whose read transaction is
    /// open), or, without a cursor, from a new generation for the reason
    /// given.
    fn go_live(&mut self, handle: DbHandle, page_size: u32, cursor: Option<Cursor>, why_new: &str) {
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
    fn settle(&mut self, shipped_all: bool) -> Result<(), ReplicaError> {
        let path = self.opts.path.clone();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let page_size = live.page_size;
        if shipped_all {
            if live.cursor.base_is_db_file {
                // Nothing new since the last settle: an idle database costs
                // nothing.
                return Ok(());
            }
            let (ck, end) = live.move_mark(&path)?;
            let at_end = match live.cursor.pos {
                Some(p) => WalEnd::of(&p, page_size) == end,
                None => end.frames == 0,
            };
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
            return Ok(());
        }
        let now = live.handle.checkpoint_passive_beside()?;
        if now.complete() {
            live.backfilled = true;
            return Ok(());
        }
        live.backfilled = false;
        let end = wal_end_after(&path, &now)?;
        let moved = live
            .view
            .is_some_and(|v| (v.salt1, v.salt2) != (end.salt1, end.salt2) || end.frames > v.frames);
        if !moved {
            // The checkpoint ran after walsync's read transaction began, so
            // it saw at least as far: the next one can move the mark.
            live.view = Some(end);
            return Ok(());
        }
        let (ck, _) = live.move_mark(&path)?;
        log::debug!("{}: settled while uploads fail: {ck:?}", path.display());
        Ok(())
    }

    /// Says that the database file was replaced, and, when the old WAL
    /// still held frames that were not in the old file, that SQLite may
    /// apply them to the new one (README "Replacing a database").
    fn log_replaced(&self) {
        let (who, prefix) = (self.opts.path.display(), &self.opts.prefix);
        // Only what walsync saw: frames appended after its last settle
        // may be the old file's (committed just before the rename) or the
        // new file's (committed after it), which the WAL cannot tell apart.
        let stale = self.live.as_ref().is_some_and(|l| !l.backfilled);
        if stale {
            log::error!(
                "{who} ({prefix}): the database file was replaced while its WAL still held \
                 transactions of the old file that were not in it; SQLite applies such a WAL \
                 to the new file, which may now be corrupt: check it with PRAGMA integrity_check \
                 and restore it if needed. To replace a database safely, wait one sync_interval \
                 after the application's last commit before renaming (README \"Replacing a \
                 database\"). Starting a new generation"
            );
        } else {
            log::warn!(
                "{who} ({prefix}): the database file was replaced; starting a new generation"
            );
        }
    }

    /// Whether walsync let go of the database while idle.
    pub fn is_released(&self) -> bool {
        self.released.is_some()
    }

    /// After a gap: a new generation, with fresh connections first if
    /// walsync's locks were lost.
    fn handle_gap(
        &mut self,
        storage: &dyn Storage,
        gap: Gap,
        report: &mut SyncReport,
    ) -> Result<(), ReplicaError> {
        if gap.replaced {
            self.log_replaced();
            self.needs_generation = true;
        } else {
            self.begin_new_generation(&gap.reason);
        }
        if gap.reopen {
            self.live = None;
            self.start(storage)?;
            // start() may think the WAL continues the bucket; after lost
            // locks nothing is proven.
            self.needs_generation = true;
        }
        self.snapshot(storage, true, report)
    }

    fn begin_new_generation(&mut self, reason: &str) {
        log::warn!(
            "{} ({}): {reason}; starting a new generation with a full snapshot",
            self.opts.path.display(),
            self.opts.prefix
        );
        self.needs_generation = true;
    }

    /// Opens the database, learns from the bucket where its backup stands and
    /// either resumes that generation (the WAL provably continues it) or
    /// schedules a new one.
    fn start(&mut self, storage: &dyn Storage) -> Result<(), ReplicaError> {
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

    /// Ships the committed transactions after the cursor. `Ok(Err(reason))`
    /// is a gap: the WAL no longer continues what was shipped.
    fn ship(
        &mut self,
        storage: &dyn Storage,
        report: &mut SyncReport,
    ) -> Result<Result<(), Gap>, ReplicaError> {
        let live = self
            .live
            .as_ref()
            .expect("invariant: ship runs on a live replica");
        let cursor = live.cursor;
        // While walsync holds its connections the WAL file exists (SQLite
        // creates it when the read transaction starts, and deletes it only
        // under an EXCLUSIVE lock walsync's SHARED lock forbids): if it is
        // gone, that lock was lost.
        let Some(wal) = WalFile::open(&self.opts.path)? else {
            return Ok(Err(Gap::lost_locks("the WAL file was deleted")));
        };
        let Some(h) = wal.header()? else {
            return Ok(if cursor.base_is_db_file || cursor.pos.is_none() {
                Ok(())
            } else {
                Err(Gap::new("the WAL was truncated or overwritten"))
            });
        };
        if h.page_size != live.page_size {
            return Ok(Err(Gap::new(format!(
                "the WAL page size {} differs from the database's {}",
                h.page_size, live.page_size
            ))));
        }
        let from = match cursor.pos {
            Some(p) if p.same_wal(&h) => {
                if wal.len < p.offset {
                    return Ok(Err(Gap::new("the WAL is shorter than what was shipped")));
                }
                p
            }
            _ if cursor.base_is_db_file => h.start(),
            _ => {
                return Ok(Err(Gap::new(
                    "the WAL was restarted before walsync shipped all of it",
                )))
            }
        };
        let max_segment = self.opts.max_segment_bytes;
        let mut shipped = 0u64;
        let prefix = self.opts.prefix.clone();
        let generation = self.generation;
        let mut next_txid = self.last_txid + 1;
        // Segment times never go back (see `now_ms`).
        let mut time_floor = self.now_ms();
        // A restarted WAL (accepted above) is where walsync now stands, even
        // before anything of it is shipped.
        let mut cursor_now = Cursor {
            pos: Some(from),
            ..cursor
        };
        let mut commits_total = 0u64;
        let mut segments = 0u64;
        let mut bytes_up = 0u64;
        let mut replaced = false;
        let result = (|| -> Result<(), ReplicaError> {
            let mut at = from;
            loop {
                // A run of whole transactions of about max_segment bytes
                // (one larger transaction goes whole into its own segment).
                let mut group: Vec<TxnSpan> = Vec::new();
                let mut size = 0u64;
                wal.scan_spans(&h, at, u64::MAX, |t| {
                    size += t.end.offset - t.start;
                    group.push(t.clone());
                    Ok(size < max_segment)
                })?;
                let Some(last) = group.last() else {
                    return Ok(());
                };
                // Stamped once its transactions are read, so that each was
                // committed before the stamp: stamped before the scan, a
                // commit made meanwhile was restored "as of" a time before
                // it was made.
                let time_ms = crate::time::now_ms().max(time_floor);
                time_floor = time_ms;
                let header = SegmentHeader {
                    page_size: h.page_size,
                    commit_count: group.len() as u32,
                    first_txid: next_txid,
                    last_txid: next_txid + group.len() as u64 - 1,
                    first_time_ms: time_ms,
                    last_time_ms: time_ms,
                    start: at,
                    end: last.end,
                };
                let spool = (size > SEGMENT_IN_MEMORY)
                    .then(|| SpoolFile::create(&self.opts.spool_dir, "segment"))
                    .transpose()?;
                let encoded = encode_segment(&wal, &h, header, &group, spool.as_ref());
                let key = keys::segment_key(
                    &prefix,
                    generation,
                    header.first_txid,
                    header.last_txid,
                    header.first_time_ms,
                    header.last_time_ms,
                );
                // The frames just read were written before this check, so
                // if the path still names the file walsync holds they are
                // that file's, not those of a file renamed over it.
                if !self.live.as_ref().is_some_and(|l| l.handle.still_at_path()) {
                    drop(spool);
                    replaced = true;
                    return Ok(());
                }
                let uploaded = encoded.and_then(|(sink, len, crc)| {
                    let body = match &sink {
                        Sink::Memory(v) => Body::Bytes(v),
                        Sink::File(_, path) => Body::File { path, len },
                    };
                    storage.put(&key, body, crc)?;
                    Ok(len)
                });
                drop(spool);
                let len = uploaded?;
                log::debug!("{prefix}: uploaded {key} ({len} bytes)");
                next_txid = header.last_txid + 1;
                cursor_now = Cursor {
                    pos: Some(header.end),
                    base_is_db_file: false,
                    db_pages: Some(last.db_pages),
                };
                shipped = header.last_txid;
                commits_total += group.len() as u64;
                segments += 1;
                bytes_up += len;
                at = header.end;
            }
        })();
        self.last_time_ms = self.last_time_ms.max(time_floor);
        // Keep what was uploaded even if a later upload failed.
        if shipped != 0 {
            self.last_txid = shipped;
            self.commits_since_snapshot += commits_total;
            report.commits += commits_total;
            report.segments += segments;
            report.bytes_uploaded += bytes_up;
        }
        let live = self.live.as_mut().expect("invariant: still live");
        live.cursor = cursor_now;
        if shipped != 0 {
            live.backfilled = false;
        }
        result?;
        if replaced {
            return Ok(Err(Gap::replaced()));
        }
        Ok(Ok(()))
    }

    fn live_mut(&mut self) -> &mut Live {
        self.live
            .as_mut()
            .expect("invariant: the replica is live here")
    }

    /// Runs `f` while walsync holds the database's write lock.
    fn with_writers_locked<T>(
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
    fn checkpoint_under_lock(
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
        if ck.log_frames > 0 {
            let agrees = match (header, shipped_to) {
                (Some(h), Some(p)) => {
                    p.same_wal(&h)
                        && p.offset
                            == wal::HEADER_SIZE as u64 + ck.log_frames as u64 * h.frame_size()
                }
                _ => false,
            };
            if !agrees {
                live_reset_base(self);
                return Ok(Err(Gap::new(format!(
                    "at a sync point the WAL ends after frame {} but walsync stands at {:?}",
                    ck.log_frames,
                    shipped_to.map(|p| p.offset)
                ))));
            }
        }
        // The read transaction began under the write lock, right after the
        // checkpoint: it sees exactly the end the checkpoint reported.
        let end = WalEnd::reported(header, &ck);
        let live = self.live_mut();
        live.cursor.base_is_db_file = ck.complete();
        live.backfilled = ck.complete();
        live.mark_zero = ck.complete();
        live.view = Some(end);
        Ok(Ok(ck.complete()))
    }

    /// A sync point: under the write lock, ship the rest of the WAL, run a
    /// PASSIVE checkpoint, take the read transaction again, and note the
    /// files as walsync leaves them (before any writer can touch them).
    /// Returns whether the checkpoint was complete, or `None` when the write
    /// lock was not to be had or a gap was found (and handled: a new
    /// generation).
    fn sync_point(
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
    fn checkpoint(
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

    /// Takes a snapshot and uploads it: the first of a new generation
    /// (`new_generation`), or a periodic one inside the current generation.
    fn snapshot(
        &mut self,
        storage: &dyn Storage,
        new_generation: bool,
        report: &mut SyncReport,
    ) -> Result<(), ReplicaError> {
        let path = self.opts.path.clone();
        let page_size = self.live_mut().page_size;
        let mut gap = None;
        let (pos, db_pages, complete) = self.with_writers_locked(|this| {
            let new_generation = new_generation || this.needs_generation;
            if !new_generation {
                if let Err(g) = this.ship(storage, report)? {
                    gap = Some(g);
                    return Ok((None, None, false));
                }
            }
            let (pos, db_pages) = if new_generation {
                wal_end(&path, page_size)?
            } else {
                let c = this.live_mut().cursor;
                (c.pos, c.db_pages)
            };
            match this.checkpoint_under_lock(pos)? {
                Ok(complete) => Ok((pos, db_pages, complete)),
                Err(g) => {
                    gap = Some(g);
                    Ok((None, None, false))
                }
            }
        })?;
        if let Some(g) = gap {
            return self.handle_gap(storage, g, report);
        }
        let new_generation = new_generation || self.needs_generation;
        let time_ms = self.now_ms();
        let txid = if new_generation {
            self.last_txid + 1
        } else {
            self.last_txid
        };
        let generation = if new_generation {
            txid
        } else {
            self.generation
        };

        let overlay = match pos {
            Some(p) if !complete && p.offset > wal::HEADER_SIZE as u64 => {
                Some(build_overlay(&path, page_size, p)?)
            }
            _ => None,
        };
        let db = self.live.as_ref().expect("invariant: live").handle.file();
        let db_len = db.metadata().map_err(io_err(&path))?.len();
        let pages = match (&overlay, db_pages) {
            (Some(_), Some(n)) => n,
            (Some(_), None) => {
                return Err(ReplicaError::Unstable {
                    path,
                    what: "database size at the snapshot position is unknown".into(),
                })
            }
            (None, _) => {
                // The database file is the image (every frame is in it).
                // Its size in pages is its header's (SQLite writes it with
                // every commit that changes it), else the last commit's;
                // the file itself may be longer (SQLITE_FCNTL_CHUNK_SIZE
                // rounds it up). The header comes first: a WAL found at a
                // new generation may be a fully backfilled one left by a
                // file that was renamed over (SQLite ignores it, and so
                // must the snapshot).
                let mut h = [0u8; 100];
                db.read_exact_at(&mut h, 0).map_err(io_err(&path))?;
                let n = sqlite::db_header_pages(&h)
                    .or(db_pages)
                    .unwrap_or((db_len / u64::from(page_size)) as u32);
                if n == 0 || u64::from(n) * u64::from(page_size) > db_len {
                    return Err(ReplicaError::Unstable {
                        path,
                        what: format!(
                            "database file of {db_len} bytes is shorter than its {n} pages"
                        ),
                    });
                }
                n
            }
        };

        let header = SnapshotHeader {
            page_size,
            page_count: pages,
            txid,
            time_ms,
            pos,
        };
        let spool_file = SpoolFile::create(&self.opts.spool_dir, "snapshot")?;
        let spool = spool_file.path().to_path_buf();
        let result = (|| {
            let f = spool_file.writer().map_err(io_err(&spool))?;
            let mut enc =
                SnapshotEncoder::new(BufWriter::new(f), header).map_err(io_err(&spool))?;
            let mut buf = vec![0u8; page_size as usize];
            let mut frame = vec![0u8; wal::FRAME_HEADER_SIZE + page_size as usize];
            let wal = match &overlay {
                Some(_) => Some(File::open(sqlite::wal_path(&path)).map_err(io_err(&path))?),
                None => None,
            };
            let wal_header = overlay.as_ref().map(|o| o.header);
            for p in 1..=pages {
                let from_wal = overlay.as_ref().and_then(|o| o.frames.get(&p));
                if let (Some(fr), Some(wal), Some(h)) = (from_wal, &wal, &wal_header) {
                    wal.read_exact_at(&mut frame, fr.offset)
                        .map_err(io_err(&path))?;
                    match h.check_frame(fr.prev, &frame) {
                        Some(f) if f.checksum == fr.sum && f.page_no == p => {}
                        _ => {
                            return Err(ReplicaError::Unstable {
                                path: path.clone(),
                                what: "the WAL changed while the snapshot was read".into(),
                            })
                        }
                    }
                    enc.page(&frame[wal::FRAME_HEADER_SIZE..])
                        .map_err(io_err(&spool))?;
                } else {
                    db.read_exact_at(&mut buf, u64::from(p - 1) * u64::from(page_size))
                        .map_err(io_err(&path))?;
                    enc.page(&buf).map_err(io_err(&spool))?;
                }
            }
            let (w, len, crc) = enc.finish().map_err(io_err(&spool))?;
            w.into_inner()
                .map_err(|e| io_err(&spool)(e.into_error()))?
                .sync_all()
                .map_err(io_err(&spool))?;
            let key = keys::snapshot_key(&self.opts.prefix, generation, txid, time_ms);
            storage.put(&key, Body::File { path: &spool, len }, crc)?;
            Ok((key, len))
        })();
        drop(spool_file);
        let (key, len) = result?;

        if new_generation {
            self.generation = generation;
            self.last_txid = txid;
            self.needs_generation = false;
            report.new_generation = true;
            log::info!(
                "{} ({}): generation {generation:016x} started: {key}, {pages} pages, {len} bytes",
                self.opts.path.display(),
                self.opts.prefix
            );
        } else {
            log::info!(
                "{} ({}): snapshot {key}, {pages} pages, {len} bytes",
                self.opts.path.display(),
                self.opts.prefix
            );
        }
        let live = self.live_mut();
        live.cursor.pos = pos;
        live.cursor.db_pages = Some(pages);
        self.last_snapshot_ms = time_ms;
        self.commits_since_snapshot = 0;
        report.snapshot = true;
        report.bytes_uploaded += len;
        Ok(())
    }
}

/// After a failed position check the database file is not known to equal
/// anything shipped.
fn live_reset_base(r: &mut Replica) {
    if let Some(live) = r.live.as_mut() {
        live.cursor.base_is_db_file = false;
    }
}

/// Where the newest copy of each page lives in the WAL, up to a position,
/// with what its frame must checksum to.
struct Overlay {
    header: WalHeader,
    frames: HashMap<u32, FrameRef>,
}

struct FrameRef {
    offset: u64,
    prev: Checksum,
    sum: Checksum,
}

fn build_overlay(db: &Path, page_size: u32, upto: WalPos) -> Result<Overlay, ReplicaError> {
    let unstable = |what: &str| ReplicaError::Unstable {
        path: db.to_path_buf(),
        what: what.to_string(),
    };
    let wal = WalFile::open(db)?.ok_or_else(|| unstable("the WAL disappeared"))?;
    let h = wal
        .header()?
        .ok_or_else(|| unstable("the WAL header changed"))?;
    if !upto.same_wal(&h) || h.page_size != page_size {
        return Err(unstable("the WAL was restarted"));
    }
    let mut frames = HashMap::new();
    let mut last_commit_end = h.start();
    wal.stream_frames(&h, h.start(), upto.offset, |offset, prev, frame, _| {
        frames.insert(
            frame.page_no,
            FrameRef {
                offset,
                prev,
                sum: frame.checksum,
            },
        );
        if frame.commit_size != 0 {
            last_commit_end = WalPos {
                salt1: h.salt1,
                salt2: h.salt2,
                offset: offset + h.frame_size(),
                checksum: frame.checksum,
            };
        }
        Ok(true)
    })?;
    let end = last_commit_end;
    if end != upto {
        return Err(unstable("the WAL no longer holds the snapshot position"));
    }
    Ok(Overlay { header: h, frames })
}

/// Encodes the transactions `group` as one segment, reading their frames
/// from the WAL file again (and checking them again: a WAL that changed
/// since the scan is an error, retried by the next sync), into memory or,
/// for a large group, into the spool file `spool`. Returns the sink, the
/// object's length and its CRC32.
fn encode_segment(
    wal: &WalFile,
    h: &WalHeader,
    header: SegmentHeader,
    group: &[TxnSpan],
    spool: Option<&SpoolFile>,
) -> Result<(Sink, u64, u32), ReplicaError> {
    let sink = match spool {
        None => Sink::Memory(Vec::new()),
        Some(s) => Sink::File(
            BufWriter::new(s.writer().map_err(io_err(s.path()))?),
            s.path().to_path_buf(),
        ),
    };
    let out_err = |e: io::Error| io_err(spool.map_or(&wal.path, SpoolFile::path))(e);
    let mut enc = SegmentEncoder::new(sink, header).map_err(out_err)?;
    for (i, t) in group.iter().enumerate() {
        enc.commit(&CommitRecord {
            txid: header.first_txid + i as u64,
            time_ms: header.first_time_ms,
            db_pages: t.db_pages,
            page_count: t.frame_count,
        })
        .map_err(out_err)?;
        let from = WalPos {
            salt1: h.salt1,
            salt2: h.salt2,
            offset: t.start,
            checksum: t.start_checksum,
        };
        let mut seen = 0u32;
        let mut last_sum = t.start_checksum;
        wal.stream_frames(h, from, t.end.offset, |_, _, frame, bytes| {
            enc.page(frame.page_no, &bytes[wal::FRAME_HEADER_SIZE..])
                .map_err(out_err)?;
            seen += 1;
            last_sum = frame.checksum;
            Ok(true)
        })?;
        if seen != t.frame_count || last_sum != t.end.checksum {
            return Err(ReplicaError::Unstable {
                path: wal.path.clone(),
                what: "the WAL changed while a segment was read from it".into(),
            });
        }
    }
    let (sink, len, crc) = enc.finish().map_err(out_err)?;
    let sink = match sink {
        Sink::File(f, p) => {
            let file = f.into_inner().map_err(|e| io_err(&p)(e.into_error()))?;
            file.sync_all().map_err(io_err(&p))?;
            Sink::File(BufWriter::new(file), p)
        }
        m => m,
    };
    Ok((sink, len, crc))
}

/// How far a local database is ahead of its backup: the commits (and WAL
/// bytes) in its WAL after the newest shipped position. `None` when that
/// cannot be told from the files alone (the WAL was restarted since; a
/// running walsync may still be in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub commits: u64,
    pub wal_bytes: u64,
}

/// Reads the local WAL (never the database file, and without SQLite) and
/// compares it with the newest position in the bucket.
pub fn local_lag(
    storage: &dyn Storage,
    prefix: &str,
    db: &Path,
) -> Result<Option<Lag>, ReplicaError> {
    let listing = storage.list(&keys::database_root(prefix))?;
    let (objects, _) = keys::parse_listing_lenient(prefix, &listing);
    let Some(newest) = objects.iter().max_by_key(|o| (o.kind.txid(), o.generation)) else {
        return Ok(None);
    };
    let Some((pos, _)) = read_object_pos(storage, newest)? else {
        return Ok(None);
    };
    let Some(wal) = WalFile::open(db)? else {
        return Ok(Some(Lag {
            commits: 0,
            wal_bytes: 0,
        }));
    };
    let Some(h) = wal.header()? else {
        return Ok(Some(Lag {
            commits: 0,
            wal_bytes: 0,
        }));
    };
    if !pos.same_wal(&h) || wal.len < pos.offset {
        return Ok(None);
    }
    let mut commits = 0u64;
    let (end, _) = wal.scan_spans(&h, pos, u64::MAX, |_| {
        commits += 1;
        Ok(true)
    })?;
    Ok(Some(Lag {
        commits,
        wal_bytes: end.offset - pos.offset,
    }))
}

/// The WAL position (and database size) recorded in the header of a
/// backup object: where the backup stands.
fn read_object_pos(
    storage: &dyn Storage,
    o: &keys::BackupObject,
) -> Result<Option<(WalPos, Option<u32>)>, ReplicaError> {
    let corrupt = |source| ReplicaError::Corrupt {
        key: o.key.clone(),
        source,
    };
    let reader = storage.get(&o.key)?;
    match o.kind {
        ObjectKind::Snapshot { .. } => {
            let d = SnapshotDecoder::new(reader).map_err(corrupt)?;
            Ok(d.header.pos.map(|p| (p, Some(d.header.page_count))))
        }
        ObjectKind::Segment { .. } => {
            // The whole (small) segment is read so its checksum is verified
            // before walsync builds on it.
            let mut d = SegmentDecoder::new(reader).map_err(corrupt)?;
            let end = d.header.end;
            let mut db_pages = None;
            while let Some(c) = d.next_commit().map_err(corrupt)? {
                db_pages = Some(c.db_pages);
            }
            d.finish().map_err(corrupt)?;
            Ok(Some((end, db_pages)))
        }
        ObjectKind::Mark { .. } => Ok(read_mark(storage, o)?.pos.map(|p| (p, None))),
    }
}

/// Reads and checks an idle mark (a few dozen bytes; more is corrupt).
fn read_mark(storage: &dyn Storage, o: &keys::BackupObject) -> Result<Mark, ReplicaError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    storage
        .get(&o.key)?
        .take(4096)
        .read_to_end(&mut bytes)
        .map_err(|e| ReplicaError::Corrupt {
            key: o.key.clone(),
            source: FormatError::Io(e),
        })?;
    Mark::decode(&bytes).map_err(|source| ReplicaError::Corrupt {
        key: o.key.clone(),
        source,
    })
}

/// The second proof of continuity (the first is a WAL that continues the
/// shipped position): the WAL was restarted since `pos`, so all of it is
/// new, and the database file still has the fingerprint it had when it held
/// exactly what was shipped. Call with the read transaction open.
fn file_as_left(
    handle: &DbHandle,
    pos: Option<WalPos>,
    left: Fingerprint,
) -> Result<bool, ReplicaError> {
    Ok(wal_restarted_since(handle.path(), pos)?
        && fingerprint(handle.file(), handle.path())? == left)
}

/// Whether the WAL is no longer the one `pos` is in (new salts, or no
/// header): then every frame in it came after `pos`. A WAL with the same
/// salts that does not continue `pos` proves nothing.
fn wal_restarted_since(db: &Path, pos: Option<WalPos>) -> Result<bool, ReplicaError> {
    Ok(match (wal_header(db)?, pos) {
        (Some(h), Some(p)) => !p.same_wal(&h),
        _ => true,
    })
}

/// The WAL's header, if it has a valid one.
fn wal_header(db: &Path) -> Result<Option<WalHeader>, ReplicaError> {
    match WalFile::open(db)? {
        Some(w) => w.header(),
        None => Ok(None),
    }
}

/// The WAL end a checkpoint result reports, with the salts of the WAL
/// as it is now.
fn wal_end_after(db: &Path, ck: &sqlite::CheckpointResult) -> Result<WalEnd, ReplicaError> {
    Ok(WalEnd::reported(wal_header(db)?, ck))
}

/// Whether the current WAL provably continues `pos`: same salts, and the
/// checksum chain from the WAL's start reaches `pos` exactly.
fn wal_continues(db: &Path, page_size: u32, pos: WalPos) -> Result<bool, ReplicaError> {
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
fn wal_end(db: &Path, page_size: u32) -> Result<(Option<WalPos>, Option<u32>), ReplicaError> {
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
