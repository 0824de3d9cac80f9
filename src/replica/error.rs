//! `ReplicaError`: what can go wrong while replicating one database, with
//! the questions the daemon asks of it (keep `impl ReplicaError` here, in
//! one block).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::format::FormatError;
use crate::keys;
use crate::lease::claim::LeaseError;
use crate::sqlite::SqliteError;
use crate::storage::StorageError;

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
    /// The prefix is not this process's to write (`crate::lease`).
    Lease(LeaseError),
    /// A file renamed over the database while walsync held it still shares
    /// the old file's wal-index or WAL (`continuity::stale_index_gone`):
    /// not taken up until the application has closed it.
    StaleIndex(PathBuf),
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
            ReplicaError::Lease(e) => e.fmt(f),
            ReplicaError::StaleIndex(path) => write!(
                f,
                "{}: the file renamed over the database is still open with the old file's \
                 wal-index; waiting for the application to close it",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ReplicaError {}

impl From<SqliteError> for ReplicaError {
    fn from(e: SqliteError) -> Self {
        ReplicaError::Sqlite(e)
    }
}

impl From<LeaseError> for ReplicaError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Storage(e) => ReplicaError::Storage(e),
            other => ReplicaError::Lease(other),
        }
    }
}

impl From<StorageError> for ReplicaError {
    fn from(e: StorageError) -> Self {
        ReplicaError::Storage(e)
    }
}

impl ReplicaError {
    /// Another walsync holds the prefix, or took it over from this one
    /// (`crate::lease`): when to look again. Once the holder's lease can
    /// have expired (a second after what the lease said); a lost lease or
    /// an unreadable one costs no request to ask about, so once a minute.
    pub fn lease_retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ReplicaError::Lease(LeaseError::Refused { expires_in, .. }) => {
                Some(*expires_in + std::time::Duration::from_secs(1))
            }
            ReplicaError::Lease(_) => Some(std::time::Duration::from_secs(60)),
            _ => None,
        }
    }

    /// The database file is not there (yet): wait for it, do not back off loudly.
    pub fn is_missing_database(&self) -> bool {
        matches!(self, ReplicaError::Sqlite(SqliteError::Missing(_)))
    }

    /// A file renamed over the database while walsync held it is still
    /// open with the old file's wal-index: wait for the application to
    /// close it (its next change), quietly (the replica said it once).
    pub fn is_waiting_for_application(&self) -> bool {
        matches!(self, ReplicaError::StaleIndex(_))
    }

    /// Another file took the database's path while walsync worked on it:
    /// the next sync sees the new file (no backoff, nothing failed).
    pub fn is_replaced_database(&self) -> bool {
        matches!(self, ReplicaError::Sqlite(SqliteError::Replaced(_)))
    }

    /// The storage could not be reached, or answered with a server error or
    /// throttling, after the client's own retries: the storage's trouble,
    /// not this database's, when many databases see it at once (the daemon
    /// then logs one outage instead of an error per database).
    pub fn is_storage_unreachable(&self) -> bool {
        match self {
            ReplicaError::Storage(StorageError::Transport { .. }) => true,
            ReplicaError::Storage(StorageError::Server { status, .. }) => {
                *status >= 500 || *status == 429
            }
            _ => false,
        }
    }

    /// The process (EMFILE) or the system (ENFILE) had no descriptor left,
    /// as the OS error says; `is_cannot_open` is SQLite's word for what may
    /// be the same. An S3 transport error carries the OS error that caused
    /// it, if any.
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
            ReplicaError::Storage(StorageError::Transport {
                os_error: Some(errno),
                ..
            }) => os(&io::Error::from_raw_os_error(*errno)),
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

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ReplicaError + '_ {
    move |source| ReplicaError::Io {
        path: path.to_path_buf(),
        source,
    }
}
