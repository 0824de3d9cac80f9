//! How far a local database is ahead of its backup, for `walsync list`:
//! read from the local WAL and the bucket only, without SQLite.

use std::path::Path;

use super::bucket::read_object;
use super::error::ReplicaError;
use super::wal_file::WalFile;
use crate::keyfile::Key;
use crate::keys;
use crate::storage::{ObjectMeta, Storage};

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
/// compares it with the newest position in the bucket, found in `listing`
/// (of `<prefix>/`, made by the caller; one GET reads that position).
pub fn local_lag(
    storage: &dyn Storage,
    prefix: &str,
    listing: &[ObjectMeta],
    db: &Path,
    keys: &[Key],
) -> Result<Option<Lag>, ReplicaError> {
    let (objects, _) = keys::parse_listing_lenient(prefix, listing);
    let Some(newest) = objects.iter().max_by_key(|o| (o.kind.txid(), o.generation)) else {
        return Ok(None);
    };
    let Some((pos, _)) = read_object(storage, newest, keys)?.pos? else {
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
