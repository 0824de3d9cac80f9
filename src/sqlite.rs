//! The SQLite edge: the connections walsync holds on a user's database.
//!
//! Two connections per database:
//! - `reader` holds the long-lived read transaction that stops the
//!   application from restarting the WAL behind walsync's back (ARCHITECTURE.md
//!   invariant 1); it is released only inside `sync point` procedures run
//!   while `writer` holds the write lock;
//! - `writer` takes the write lock (`BEGIN IMMEDIATE`, which writes nothing)
//!   for the few milliseconds of those procedures, and runs TRUNCATE
//!   checkpoints. It holds nothing in between, so it is opened for each of
//!   those and closed after (a connection costs about 20 KiB), after
//!   checking that the path still names the file walsync holds, so that it
//!   never locks or checkpoints a file that replaced it.
//!
//! walsync never writes into the user's database: no tables of its own, and
//! both connections have checkpoint-on-close disabled, so closing them never
//! checkpoints or deletes the WAL (a restart can resume where it stopped).

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

#[derive(Debug)]
pub enum SqliteError {
    Missing(PathBuf),
    NotSqlite(PathBuf),
    NotWal {
        path: PathBuf,
        mode: String,
    },
    /// Another walsync process replicates this database.
    Locked(PathBuf),
    /// This process already replicates this file, under another path.
    AlreadyOpen(PathBuf),
    /// Another file took the path while walsync opened or locked it.
    Replaced(PathBuf),
    Sqlite {
        path: PathBuf,
        what: &'static str,
        source: rusqlite::Error,
    },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqliteError::Missing(p) => write!(f, "{}: database file does not exist (yet)", p.display()),
            SqliteError::NotSqlite(p) => write!(f, "{}: not a SQLite database", p.display()),
            SqliteError::NotWal { path, mode } => write!(
                f,
                "{}: journal mode is {mode:?}, walsync needs WAL; run `PRAGMA journal_mode=WAL` on it once",
                path.display()
            ),
            SqliteError::AlreadyOpen(p) => write!(
                f,
                "{}: this file is already replicated by this walsync under another path \
                 (a hard link, symlink or bind mount?); list each database once",
                p.display()
            ),
            SqliteError::Locked(p) => write!(
                f,
                "{}: another walsync process is already replicating this database \
                 (two would interleave their histories in one prefix); stop the other one first",
                p.display()
            ),
            SqliteError::Sqlite { path, what, source } => match source.sqlite_error() {
                // The extended code tells which of SQLite's many "disk I/O
                // error"s it was.
                Some(e) if e.extended_code != e.code as i32 => write!(
                    f,
                    "{}: {what}: {source} (SQLite code {})",
                    path.display(),
                    e.extended_code
                ),
                _ => write!(f, "{}: {what}: {source}", path.display()),
            },
            SqliteError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            SqliteError::Replaced(p) => write!(
                f,
                "{}: the file was replaced while being opened; will retry",
                p.display()
            ),
        }
    }
}

impl std::error::Error for SqliteError {}

/// Device and inode of a file: how walsync notices a database file replaced
/// underneath it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

pub fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// What the rescan compares: size and mtime of the WAL and the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub wal: Option<(u64, SystemTime)>,
    pub db: Option<(u64, SystemTime, u64)>,
}

pub fn stat_of(db: &Path) -> FileStat {
    use std::os::unix::fs::MetadataExt;
    let wal = std::fs::metadata(wal_path(db))
        .ok()
        .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
    let dbm = std::fs::metadata(db).ok().map(|m| {
        (
            m.len(),
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.ino(),
        )
    });
    FileStat { wal, db: dbm }
}

/// The `-shm` file of a database.
pub fn shm_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-shm");
    PathBuf::from(s)
}

/// Offset of the DMS ("dead man switch") byte in the `-shm` file in
/// SQLite's unix VFS: `UNIX_SHM_DMS`, after the 8 WAL lock bytes at 120.
const SHM_DMS_BYTE: libc::off_t = 128;

/// Whether another process holds a lock on the DMS byte of the `-shm` file
/// open as `shm` (`F_GETLK` for a write lock: it takes nothing).
fn dms_locked_by_others(shm: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero flock is a valid value of a plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = SHM_DMS_BYTE;
    lock.l_len = 1;
    // SAFETY: F_GETLK with a pointer to a flock that lives across the call.
    if unsafe { libc::fcntl(shm.as_raw_fd(), libc::F_GETLK, &mut lock) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as _)
}

/// Whether a process other than this one has the database whose `-shm`
/// file is at `shm` open (see `DbHandle::others_attached`); `None` when
/// that cannot be asked. Only for a database this process has no
/// connection to: closing the descriptor opened here would drop this
/// process's locks on the file.
pub fn others_attached_to(shm: &Path) -> Option<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(shm)
        .ok()?;
    dms_locked_by_others(&f).ok()
}

/// SQLite's SHARED byte range in a database file (unix VFS: `SHARED_FIRST`
/// = `PENDING_BYTE` + 2, `SHARED_SIZE` = 510). Every connection read-locks
/// it while it has the database open; an EXCLUSIVE lock write-locks it.
const SHARED_FIRST: libc::off_t = 0x4000_0000 + 2;
const SHARED_SIZE: libc::off_t = 510;

/// Takes (`hold`) or drops a read lock on SQLite's SHARED range of the
/// database file open as `file`, as an open file description lock: it
/// belongs to walsync's own descriptor, so SQLite closing other
/// descriptors of the file in this process does not drop it, and it goes
/// when that descriptor closes. While it is held no connection can take
/// EXCLUSIVE: a last close neither checkpoints nor deletes the WAL
/// (`sqlite3WalClose`), as when walsync holds a connection open. Taking it
/// fails only while a connection holds EXCLUSIVE (its own last close).
pub fn hold_shared(file: &std::fs::File, hold: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero flock is a valid value of a plain C struct (and
    // l_pid must be 0 for an OFD lock).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = if hold { libc::F_RDLCK } else { libc::F_UNLCK } as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = SHARED_FIRST;
    lock.l_len = SHARED_SIZE;
    // SAFETY: F_OFD_SETLK with a pointer to a flock that lives across the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The `-wal` file of a database.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

pub struct DbHandle {
    path: PathBuf,
    // Field order is drop order: the connections close before `db`.
    reader: Connection,
    /// Open only while the write lock is held (`lock_writers` to
    /// `unlock_writers`); `checkpoint_truncate` opens its own.
    writer: Option<Connection>,
    busy_timeout: Duration,
    in_read: bool,
    writers_locked: bool,
    /// walsync's own descriptor of the `-shm` file, for `others_attached`;
    /// opened while the read transaction holds it mapped, closed only after
    /// the connections (closing it earlier would drop SQLite's locks on the
    /// `-shm`, walsync's read mark included: see `DbFile`).
    shm: Option<std::fs::File>,
    db: DbFile,
}

/// walsync's own hold on a database file: the one descriptor it keeps (with
/// the flock that keeps other walsync processes out) and the process-wide
/// registration. It outlives the SQLite connections, and an idle database
/// keeps only this.
///
/// POSIX locks belong to the process, and closing *any* descriptor of a file
/// drops all of them, SQLite's SHARED lock included; another process could
/// then checkpoint past walsync's read mark and delete the WAL on close. So
/// every raw read of the database goes through this descriptor, which is
/// never closed while a connection is open and never duplicated, and a
/// second one on the same file is refused before it is opened.
pub struct DbFile {
    path: PathBuf,
    file: std::fs::File,
    pub id: FileId,
    /// Declared last, so released after the descriptor is closed.
    _registration: Registration,
}

/// The database files this process has open, by (device, inode): a second
/// handle on one of them is refused before it opens anything.
static OPEN_FILES: std::sync::Mutex<std::collections::BTreeSet<(u64, u64)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

struct Registration(FileId);

impl Registration {
    fn claim(id: FileId) -> Option<Registration> {
        let mut open = OPEN_FILES.lock().unwrap_or_else(|p| p.into_inner());
        // Not `then_some`: it would build (and drop, releasing the other
        // handle's claim, under this very lock) a Registration on failure.
        if open.insert((id.dev, id.ino)) {
            Some(Registration(id))
        } else {
            None
        }
    }

    fn is_claimed(id: FileId) -> bool {
        OPEN_FILES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(id.dev, id.ino))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        OPEN_FILES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(self.0.dev, self.0.ino));
    }
}

/// Process-wide SQLite settings, applied once, before the first connection
/// initializes SQLite (`sqlite3_config` is refused after that, so a program
/// that opened SQLite connections of its own first keeps the defaults, which
/// costs memory, not correctness).
///
/// No initial bulk allocation for each connection's page cache
/// (`SQLITE_CONFIG_PAGECACHE` with no buffer and 0 lines): by default every
/// connection mallocs 20 pages (about 85 KiB at 4 KiB pages) when it first
/// reads its schema and keeps them until it closes, whatever its
/// `cache_size`. Two connections per actively written database made that
/// three quarters of walsync's heap; its connections need a page or two,
/// which SQLite then allocates one at a time.
pub(crate) fn configure_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config with the documented (NULL, 0, 0) arguments
        // of SQLITE_CONFIG_PAGECACHE; SQLite checks whether it is already
        // initialized and then returns SQLITE_MISUSE, changing nothing.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
                std::ptr::null_mut::<std::ffi::c_void>(),
                0 as std::ffi::c_int,
                0 as std::ffi::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            log::debug!(
                "SQLite page cache bulk allocation left on (code {rc}: SQLite was already in use)"
            );
        }
    });
}

/// Result of `PRAGMA wal_checkpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointResult {
    pub busy: bool,
    pub log_frames: i64,
    pub checkpointed_frames: i64,
}

impl CheckpointResult {
    /// Every frame of the WAL is now in the database file.
    pub fn complete(&self) -> bool {
        !self.busy && self.log_frames >= 0 && self.log_frames == self.checkpointed_frames
    }
}

impl DbFile {
    /// Takes hold of a database file: it must exist and be SQLite, and no
    /// other handle of this process or other walsync process may hold it.
    pub fn open(path: &Path) -> Result<DbFile, SqliteError> {
        let io = |source| SqliteError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Checked by stat, before any descriptor is opened: if this file is
        // already open in this process (another path to it: a hard link, a
        // symlink, a bind mount), opening and closing a descriptor here
        // would drop the live handle's SQLite locks (see `file`).
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SqliteError::Missing(path.to_path_buf()));
            }
            Err(e) => return Err(io(e)),
        };
        if meta.is_dir() {
            return Err(SqliteError::NotSqlite(path.to_path_buf()));
        }
        if meta.len() == 0 {
            // Created but not yet written by the application: wait for it.
            return Err(SqliteError::Missing(path.to_path_buf()));
        }
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let registration =
            Registration::claim(id).ok_or_else(|| SqliteError::AlreadyOpen(path.to_path_buf()))?;
        let file = std::fs::File::open(path).map_err(io)?;
        let opened = file.metadata().map_err(io)?;
        if (opened.dev(), opened.ino()) != (id.dev, id.ino) {
            let other = FileId {
                dev: opened.dev(),
                ino: opened.ino(),
            };
            if Registration::is_claimed(other) {
                // Replaced by a file this process holds between stat and
                // open: closing this descriptor would drop that file's
                // locks, so it is kept open (leaked) instead.
                std::mem::forget(file);
            }
            return Err(SqliteError::Replaced(path.to_path_buf()));
        }
        {
            use std::os::unix::fs::FileExt;
            let mut magic = [0u8; 16];
            let n = file.read_at(&mut magic, 0).map_err(io)?;
            if n != 16 || &magic != b"SQLite format 3\0" {
                return Err(SqliteError::NotSqlite(path.to_path_buf()));
            }
        }
        // One walsync per database: an advisory flock on our descriptor,
        // released when it closes. flock(2) locks are separate from the
        // fcntl(2) locks SQLite uses, so this never touches SQLite's locking.
        // std's try_lock is flock(2) with LOCK_EX | LOCK_NB on Linux.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SqliteError::Locked(path.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        Ok(DbFile {
            path: path.to_path_buf(),
            file,
            id,
            _registration: registration,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names this file (not replaced or deleted).
    pub fn still_at_path(&self) -> bool {
        file_id(&self.path).is_ok_and(|id| id == self.id)
    }

    /// See `hold_shared`.
    pub fn hold_shared(&self, hold: bool) -> std::io::Result<()> {
        hold_shared(&self.file, hold)
    }
}

impl DbHandle {
    /// Opens the database (which must exist, be SQLite and be in WAL mode)
    /// without changing anything in it.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<DbHandle, SqliteError> {
        DbHandle::connect(DbFile::open(path)?, busy_timeout)
    }

    /// Like `connect`, but hands the file back on failure, so that the
    /// caller keeps its hold on it.
    pub fn connect_or_return(
        db: DbFile,
        busy_timeout: Duration,
    ) -> Result<DbHandle, Box<(SqliteError, DbFile)>> {
        let mut held = Some(db);
        match DbHandle::connect_from(&mut held, busy_timeout) {
            Ok(handle) => Ok(handle),
            Err(e) => Err(Box::new((
                e,
                held.expect("invariant: connect_from gives the file back on error"),
            ))),
        }
    }

    /// Opens the SQLite connections on a file walsync holds.
    pub fn connect(db: DbFile, busy_timeout: Duration) -> Result<DbHandle, SqliteError> {
        DbHandle::connect_from(&mut Some(db), busy_timeout)
    }

    /// Opens the connections on the file in `held`, which it takes only on
    /// success.
    fn connect_from(
        held: &mut Option<DbFile>,
        busy_timeout: Duration,
    ) -> Result<DbHandle, SqliteError> {
        let db = held
            .as_ref()
            .expect("invariant: connect_from is given a file");
        let path = db.path.clone();
        let path = path.as_path();
        let reader = open_connection(path, busy_timeout)?;
        let mode: String = reader
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|source| SqliteError::Sqlite {
                path: path.to_path_buf(),
                what: "reading journal mode",
                source,
            })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::NotWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        // The connection opened the path; it must still be the file held.
        if !db.still_at_path() {
            return Err(replaced(path));
        }
        let path = path.to_path_buf();
        Ok(DbHandle {
            path,
            reader,
            writer: None,
            busy_timeout,
            in_read: false,
            writers_locked: false,
            shm: None,
            db: held
                .take()
                .expect("invariant: the file is still held until here"),
        })
    }

    /// Closes the SQLite connections (and with them the read transaction)
    /// and keeps only walsync's hold on the file.
    pub fn release(self) -> DbFile {
        let DbHandle {
            reader,
            writer,
            shm,
            db,
            ..
        } = self;
        drop(writer);
        drop(reader);
        drop(shm);
        db
    }

    /// Whether a connection of another process has the database open:
    /// whether any other process holds a lock on the DMS byte of the `-shm`
    /// file, which SQLite's unix VFS keeps SHARED-locked in every process
    /// that has the wal-index mapped (`unixLockSharedMemory` asks exactly
    /// this, with `F_GETLK`, to learn whether it is the first to open the
    /// database). Locks of this process never conflict with its own, so
    /// walsync's connections do not count. Takes and changes no lock.
    /// `shm_id` is the `-shm` file walsync's read mark is in; `None` when
    /// that cannot be asked (no read transaction, the `-shm` file replaced
    /// or unreadable).
    pub fn others_attached(&mut self, shm_id: Option<FileId>) -> Option<bool> {
        if !self.in_read {
            return None;
        }
        if self.shm.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(shm_path(&self.path))
                .ok()?;
            let m = f.metadata().ok()?;
            if Some(FileId {
                dev: m.dev(),
                ino: m.ino(),
            }) != shm_id
            {
                // Not the -shm SQLite has mapped for walsync (replaced),
                // so closing this descriptor drops no lock of walsync's.
                return None;
            }
            self.shm = Some(f);
        }
        let f = self.shm.as_ref()?;
        dms_locked_by_others(f).ok()
    }

    pub fn id(&self) -> FileId {
        self.db.id
    }

    /// Whether the path still names the file walsync holds.
    pub fn still_at_path(&self) -> bool {
        self.db.still_at_path()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database file, for raw page reads (see the field's comment).
    pub fn file(&self) -> &std::fs::File {
        &self.db.file
    }

    /// Page size and page count from the database file's header.
    pub fn geometry(&self) -> Result<(u32, u32), SqliteError> {
        use std::os::unix::fs::FileExt;
        let mut h = [0u8; 100];
        self.db
            .file
            .read_exact_at(&mut h, 0)
            .map_err(|source| SqliteError::Io {
                path: self.path.clone(),
                source,
            })?;
        db_header_geometry(&h).ok_or_else(|| SqliteError::NotSqlite(self.path.clone()))
    }

    fn err(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> SqliteError + '_ {
        move |source| SqliteError::Sqlite {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Starts the read transaction (a no-op if one is open).
    pub fn begin_read(&mut self) -> Result<(), SqliteError> {
        if self.in_read {
            return Ok(());
        }
        begin_read_on(&self.reader).map_err(self.err("take read lock"))?;
        self.in_read = true;
        Ok(())
    }

    pub fn end_read(&mut self) -> Result<(), SqliteError> {
        if self.in_read {
            self.in_read = false;
            self.reader
                .execute_batch("COMMIT")
                .map_err(self.err("end read"))?;
        }
        Ok(())
    }

    /// Takes the database's write lock; application writers wait (their
    /// busy timeout) until `unlock_writers`. Nothing is written.
    pub fn lock_writers(&mut self) -> Result<(), SqliteError> {
        assert!(
            !self.writers_locked,
            "invariant: the write lock is not taken twice"
        );
        let writer = self.open_writer()?;
        writer
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(self.err("take write lock"))?;
        // Checked again with the lock held: the read mark that came with it
        // bounds every checkpoint walsync runs under this lock, and it must
        // have been taken while the path named the file walsync holds, so
        // that no frame of a file renamed over it is ever checkpointed
        // (README "Replacing a database").
        if !self.db.still_at_path() {
            let _ = writer.execute_batch("ROLLBACK");
            return Err(replaced(&self.path));
        }
        self.writer = Some(writer);
        self.writers_locked = true;
        Ok(())
    }

    /// Moves walsync's read mark to the WAL's current end without ever
    /// holding no read mark at all: a new connection takes its read
    /// transaction first (after which the path is checked again: the new
    /// mark was taken on the file walsync holds), then the old one ends its
    /// own and runs a PASSIVE checkpoint, which the new mark bounds, before
    /// it closes. The new connection becomes the reader.
    ///
    /// This is how walsync keeps the WAL backfilled without the write lock
    /// (README "How replication stays correct"): while a read mark is at an
    /// old frame, no checkpoint can copy the frames after it into the
    /// database file, and a WAL that is not fully backfilled is applied by
    /// SQLite to whatever file next opens under this path.
    ///
    /// The new mark is 0 (no pin on the WAL at all: the application may
    /// restart it) only if the WAL was fully backfilled when it was taken;
    /// callers make sure that happens only when every frame is shipped.
    pub fn move_read_mark(&mut self) -> Result<CheckpointResult, SqliteError> {
        assert!(
            self.in_read,
            "invariant: the read mark is moved only while one is held"
        );
        // Checked before the new connection reads anything, too: on a file
        // renamed over the database it would open the same -shm file
        // through a second SQLite inode, and closing that would drop every
        // lock this process holds on it, walsync's read mark included.
        let next = self.open_writer()?;
        begin_read_on(&next).map_err(self.err("take read lock"))?;
        if !self.db.still_at_path() {
            // `next` closes with its read transaction; the old one still
            // holds walsync's mark on the file it holds.
            return Err(replaced(&self.path));
        }
        let old = std::mem::replace(&mut self.reader, next);
        old.execute_batch("COMMIT").map_err(self.err("end read"))?;
        let ck = checkpoint(&old, "PASSIVE").map_err(self.err("checkpoint"));
        drop(old);
        ck
    }

    /// `PRAGMA wal_checkpoint(PASSIVE)` on a connection of its own while the
    /// reader keeps its read transaction, whose mark bounds what it can
    /// backfill. Returns the WAL's committed end and how much of it is
    /// backfilled.
    pub fn checkpoint_passive_beside(&self) -> Result<CheckpointResult, SqliteError> {
        let c = self.open_writer()?;
        checkpoint(&c, "PASSIVE").map_err(self.err("checkpoint"))
    }

    /// Releases the write lock and closes the connection that held it
    /// (closing rolls back whatever a failed ROLLBACK left open).
    pub fn unlock_writers(&mut self) {
        if self.writers_locked {
            self.writers_locked = false;
            if let Some(writer) = self.writer.take() {
                if let Err(e) = writer.execute_batch("ROLLBACK") {
                    log::warn!(
                        "{}: releasing the write lock failed: {e}",
                        self.path.display()
                    );
                }
            }
        }
    }

    /// Whether the writer connection is open (only while the write lock is
    /// held).
    pub fn writer_open(&self) -> bool {
        self.writer.is_some()
    }

    /// A connection for the write lock or a TRUNCATE checkpoint, on the
    /// file walsync holds: if the path now names another file, that file is
    /// not the one walsync's read mark protects, and nothing is done to it.
    fn open_writer(&self) -> Result<Connection, SqliteError> {
        let c = open_connection(&self.path, self.busy_timeout)?;
        if !self.db.still_at_path() {
            return Err(replaced(&self.path));
        }
        Ok(c)
    }

    /// `PRAGMA wal_checkpoint(PASSIVE)` on the reader connection, which must
    /// not be inside its read transaction.
    pub fn checkpoint_passive(&self) -> Result<CheckpointResult, SqliteError> {
        assert!(
            !self.in_read,
            "invariant: checkpoints run with the read transaction released"
        );
        checkpoint(&self.reader, "PASSIVE").map_err(self.err("checkpoint"))
    }

    /// `PRAGMA wal_checkpoint(TRUNCATE)` on a writer connection with a short
    /// busy timeout (it holds the write lock while it waits): the one that
    /// holds the write lock, else one opened for it and closed after.
    pub fn checkpoint_truncate(&self) -> Result<CheckpointResult, SqliteError> {
        let opened;
        let writer = match &self.writer {
            Some(w) => w,
            None => {
                opened = self.open_writer()?;
                &opened
            }
        };
        let _ = writer.busy_timeout(Duration::from_millis(50));
        let r = checkpoint(writer, "TRUNCATE");
        let _ = writer.busy_timeout(self.busy_timeout);
        r.map_err(self.err("checkpoint"))
    }
}

fn replaced(path: &Path) -> SqliteError {
    SqliteError::Replaced(path.to_path_buf())
}

/// One of walsync's connections on a database: never checkpoints on close,
/// no lookaside, a 2-page cache.
fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection, SqliteError> {
    let what = "open";
    configure_process();
    let sq = |source| SqliteError::Sqlite {
        path: path.to_path_buf(),
        what,
        source,
    };
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| {
        // SQLite says only "unable to open database file"; when the
        // process is out of descriptors, say that instead. (The probe
        // opens /dev/null, not the database: closing a descriptor of
        // the database would drop this process's SQLite locks on it.)
        match std::fs::File::open("/dev/null") {
            Err(io) if matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                SqliteError::Io {
                    path: path.to_path_buf(),
                    source: io,
                }
            }
            _ => sq(e),
        }
    })?;
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sq)?;
    c.busy_timeout(busy_timeout).map_err(sq)?;
    // walsync reads pages from the files itself; its connections only
    // hold a read mark, take the write lock and checkpoint, none of
    // which needs a page cache or a lookaside allocator. Without them
    // a connection costs tens of KiB instead of a few hundred
    // (ARCHITECTURE.md "Idle databases").
    // SAFETY: configuring a connection that has not run a statement
    // yet, with the documented (NULL, 0, 0) arguments.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            c.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        log::debug!("{}: lookaside not disabled (code {rc})", path.display());
    }
    c.execute_batch("PRAGMA cache_size = 2").map_err(sq)?;
    Ok(c)
}

/// Starts a read transaction on `c` and takes its WAL read mark (a read
/// statement is what takes it; `BEGIN` alone does not).
fn begin_read_on(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch("BEGIN")?;
    let r = c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    });
    if r.is_err() {
        let _ = c.execute_batch("ROLLBACK");
    }
    r.map(|_| ())
}

fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<CheckpointResult> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(CheckpointResult {
            busy: r.get::<_, i64>(0)? != 0,
            log_frames: r.get(1)?,
            checkpointed_frames: r.get(2)?,
        })
    })
}

/// Page size and size in pages from a database file's 100-byte header.
pub fn db_header_geometry(header: &[u8]) -> Option<(u32, u32)> {
    if header.len() < 100 || &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    let raw = u16::from_be_bytes([header[16], header[17]]);
    let page_size = if raw == 1 { 65536 } else { u32::from(raw) };
    let pages = u32::from_be_bytes([header[28], header[29], header[30], header[31]]);
    crate::wal::valid_page_size(page_size).then_some((page_size, pages))
}

/// The in-header database size (pages), when the header says it is valid:
/// non-zero, and the version-valid-for number equals the change counter
/// (https://www.sqlite.org/fileformat2.html#in_header_database_size).
pub fn db_header_pages(header: &[u8]) -> Option<u32> {
    if header.len() < 100 || &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    let pages = u32::from_be_bytes([header[28], header[29], header[30], header[31]]);
    (pages > 0 && header[24..28] == header[92..96]).then_some(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> (PathBuf, PathBuf) {
        let dir = crate::testing::fresh_dir(&format!("sqlite-test-{name}"));
        let db = dir.join("t.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        (dir, db)
    }

    /// An application connection that gives up at once when locked out.
    fn app(db: &Path) -> Connection {
        let c = Connection::open(db).unwrap();
        c.busy_timeout(Duration::ZERO).unwrap();
        c
    }

    fn app_can_write(c: &Connection) -> bool {
        match c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2); COMMIT;") {
            Ok(()) => true,
            Err(_) => {
                let _ = c.execute_batch("ROLLBACK");
                false
            }
        }
    }

    #[test]
    fn the_writer_connection_is_open_only_while_writers_are_locked() {
        let (dir, db) = temp_db("writer");
        let a = app(&db);
        let mut h = DbHandle::open(&db, Duration::from_secs(1)).unwrap();
        h.begin_read().unwrap();
        assert!(!h.writer_open());
        assert!(app_can_write(&a));

        h.lock_writers().unwrap();
        assert!(h.writer_open());
        assert!(!app_can_write(&a), "the write lock keeps writers out");
        h.unlock_writers();
        assert!(!h.writer_open());
        assert!(app_can_write(&a), "closing the writer released the lock");

        // Every frame is shipped in this test's terms: a full sync point
        // (read mark released, PASSIVE, read mark 0 again), then TRUNCATE
        // on a connection of its own that is closed after.
        h.lock_writers().unwrap();
        h.end_read().unwrap();
        assert!(h.checkpoint_passive().unwrap().complete());
        h.begin_read().unwrap();
        h.unlock_writers();
        let r = h.checkpoint_truncate().unwrap();
        assert!(!r.busy);
        assert!(!h.writer_open());
        assert_eq!(std::fs::metadata(wal_path(&db)).unwrap().len(), 0);

        // Opening and closing writers never dropped the reader's locks:
        // the application still cannot restart the WAL past walsync's read
        // mark (its TRUNCATE checkpoint reports busy once frames exist).
        assert!(app_can_write(&a));
        let (busy, _, _): (i64, i64, i64) = a
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 1, "walsync's read transaction still holds the WAL");
        drop(h);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_read_mark_moves_to_the_end_and_the_wal_is_backfilled() {
        let (dir, db) = temp_db("move-mark");
        let a = app(&db);
        let mut h = DbHandle::open(&db, Duration::from_secs(1)).unwrap();
        h.begin_read().unwrap();
        for _ in 0..2 {
            for i in 0..20 {
                a.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
            }
            let ck = h.move_read_mark().unwrap();
            assert!(ck.complete(), "{ck:?}");
        }
        drop(h);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_replaced_the_database_is_never_locked_or_checkpointed() {
        let (dir, db) = temp_db("replaced");
        let mut h = DbHandle::open(&db, Duration::from_secs(1)).unwrap();
        h.begin_read().unwrap();
        // Another database is renamed over the path.
        let other = dir.join("other.db");
        let c = Connection::open(&other).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .unwrap();
        drop(c);
        std::fs::rename(&other, &db).unwrap();
        let a = app(&db);
        assert!(app_can_write(&a));

        assert!(h.lock_writers().is_err());
        assert!(!h.writer_open());
        assert!(app_can_write(&a), "the new file was not locked");
        assert!(h.checkpoint_truncate().is_err());
        assert!(
            std::fs::metadata(wal_path(&db)).unwrap().len() > 0,
            "the new file's WAL was not checkpointed"
        );
        drop(h);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn while_walsync_holds_the_shared_range_the_last_close_leaves_the_wal() {
        let (dir, db) = temp_db("shared");
        let held = DbFile::open(&db).unwrap();
        // An application that opens, writes and closes, in its own process.
        let session = |id: i64| {
            let o = std::process::Command::new("python3")
                .args(["-c", "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nc.execute('insert into t values (?)', (int(sys.argv[2]),))\nc.commit()\nc.close()"])
                .arg(&db)
                .arg(id.to_string())
                .output()
                .expect("python3 runs");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        let wal = || std::fs::read(wal_path(&db)).ok();
        // Without the lock, its close checkpoints and deletes the WAL.
        session(2);
        assert_eq!(wal(), None);
        held.hold_shared(true).unwrap();
        // Another descriptor of the file closed in this process (as SQLite's
        // own closes do) drops POSIX locks, not this one.
        drop(std::fs::File::open(&db).unwrap());
        session(3);
        let kept = wal().expect("the WAL is left");
        assert!(kept.len() > 32);
        // Made afresh: checkpoint sequence 0.
        assert_eq!(kept[12..16], [0, 0, 0, 0]);
        session(4);
        assert!(
            wal().unwrap().len() > kept.len(),
            "the next session appends"
        );
        held.hold_shared(false).unwrap();
        session(5);
        assert_eq!(
            wal(),
            None,
            "deleted as usual once walsync lets go of the range"
        );
        let c = Connection::open(&db).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5);
        drop(c);
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_another_process_with_the_database_open_counts_as_attached() {
        use std::io::{BufRead, BufReader, Write};
        let (dir, db) = temp_db("attached");
        let mut h = DbHandle::open(&db, Duration::from_secs(1)).unwrap();
        assert_eq!(h.others_attached(None), None, "no read transaction yet");
        h.begin_read().unwrap();
        let shm = file_id(&shm_path(&db)).ok();
        assert_eq!(
            h.others_attached(Some(FileId { dev: 0, ino: 0 })),
            None,
            "not the -shm its read mark is in"
        );
        // walsync's own connections, and an application connection in this
        // process, never count (POSIX locks do not conflict within one).
        let a = app(&db);
        a.execute("INSERT INTO t VALUES (3)", []).unwrap();
        assert_eq!(h.others_attached(shm), Some(false));
        // Another process with the database open does, until it closes.
        let mut py = std::process::Command::new("python3")
            .args(["-c", "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nc.execute('select count(*) from t').fetchone()\nprint('open',flush=True)\nsys.stdin.read()\nc.close()"])
            .arg(&db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(py.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "open");
        assert_eq!(h.others_attached(shm), Some(true));
        py.stdin.take().unwrap().write_all(b"").unwrap();
        assert!(py.wait().unwrap().success());
        assert_eq!(h.others_attached(shm), Some(false));
        // The probe took no lock: the application's TRUNCATE still runs
        // once walsync's read transaction ends.
        h.end_read().unwrap();
        let busy: i64 = a
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
        drop(h);
        drop(a);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
