//! How far a local database is ahead of its backup, for `walsync list`:
//! read from the local WAL and the bucket only, without SQLite.

use std::path::Path;

use super::bucket::read_object_pos;
use super::error::ReplicaError;
use super::wal_file::WalFile;
use crate::keys;
use crate::storage::{ObjectMeta, Storage};
use crate::wal::{WalHeader, WalPos};

/// How far a local database is ahead of its backup: the commits (and WAL
/// bytes) in its WAL after the newest shipped position, also when SQLite
/// began the WAL again right there (`restarted_at`). `None` when that
/// cannot be told from the files alone (the WAL was truncated or restarted
/// from elsewhere since; a running walsync may still be in step).
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
) -> Result<Option<Lag>, ReplicaError> {
    let (objects, _) = keys::parse_listing_lenient(prefix, listing);
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
    if pos.same_wal(&h) && wal.len >= pos.offset {
        return Ok(Some(count_from(&wal, &h, pos)?.0));
    }
    // A WAL SQLite began again: the backup's position is in the one before.
    let (lag, frames_end) = count_from(&wal, &h, h.start())?;
    let fs = h.frame_size();
    let old = WalHeader {
        salt1: pos.salt1,
        salt2: pos.salt2,
        ..h
    };
    let old_went_on = wal.len >= pos.offset + fs
        && old
            .check_frame(pos.checksum, &wal.read_at(pos.offset, fs as usize)?)
            .is_some();
    Ok(restarted_at(&pos, &h, wal.len, frames_end, old_went_on).then_some(lag))
}

/// The commits (and their bytes) of the WAL of `h` from `from` on, and the
/// end of its last valid frame, committed or not.
fn count_from(wal: &WalFile, h: &WalHeader, from: WalPos) -> Result<(Lag, u64), ReplicaError> {
    let (mut commits, mut end, mut frames_end) = (0u64, from.offset, from.offset);
    wal.stream_frames(h, from, u64::MAX, |at, _, frame, _| {
        frames_end = at + h.frame_size();
        if frame.commit_size != 0 {
            commits += 1;
            end = frames_end;
        }
        Ok(true)
    })?;
    let lag = Lag {
        commits,
        wal_bytes: end - from.offset,
    };
    Ok((lag, frames_end))
}

/// Whether the WAL with header `h` (a file of `file_len` bytes whose valid
/// frames end at `frames_end`) is the one SQLite began when it restarted
/// the WAL of `pos` exactly at `pos`, so that every commit in it is one the
/// backup lacks, and none is missing: the salt-1 SQLite adds one to at each
/// restart; and the old WAL's frames from `pos` on are still where a
/// restart (which writes the new WAL over the old one from its start, and
/// keeps the file's length) left them, and show no frame after `pos`
/// (`old_went_on`: a frame there in the old WAL's salts, on its checksum
/// chain). A WAL truncated since (shorter than `pos`), or grown over `pos`,
/// tells nothing. While walsync runs, the WAL is restarted only at its
/// shipped end (`Replica::rest_at_mark_zero`).
fn restarted_at(
    pos: &WalPos,
    h: &WalHeader,
    file_len: u64,
    frames_end: u64,
    old_went_on: bool,
) -> bool {
    h.salt1 == pos.salt1.wrapping_add(1)
        && file_len >= pos.offset
        && frames_end <= pos.offset
        && !old_went_on
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Checksum;

    #[test]
    fn a_wal_begun_again_continues_the_backup_only_from_its_position() {
        let pos = WalPos {
            salt1: u32::MAX,
            salt2: 5,
            offset: 32 + 10 * 4120,
            checksum: Checksum(1, 2),
        };
        let h = |salt1| WalHeader {
            big_endian: false,
            page_size: 4096,
            checkpoint_seq: 3,
            salt1,
            salt2: 9,
            checksum: Checksum(3, 4),
        };
        let at = pos.offset;
        // (salt1, file length, end of valid frames, old WAL went on) -> ?
        let rows = [
            // Begun again at the position: 3 frames over the old 10.
            ((0, at, 32 + 3 * 4120, false), true),
            ((0, at + 4120, at, false), true),
            // The old WAL had a frame after the position (committed while
            // walsync did not run, and checkpointed).
            ((0, at + 4120, 32 + 3 * 4120, true), false),
            // Begun again twice (or another WAL altogether).
            ((1, at, 32 + 3 * 4120, false), false),
            ((7, at, 32 + 3 * 4120, false), false),
            // Truncated since: the old frames are gone.
            ((0, 32 + 3 * 4120, 32 + 3 * 4120, false), false),
            // The new WAL grew over the position.
            ((0, at + 4120, at + 4120, false), false),
        ];
        for ((salt1, len, end, went_on), want) in rows {
            assert_eq!(
                restarted_at(&pos, &h(salt1), len, end, went_on),
                want,
                "{salt1} {len} {end} {went_on}"
            );
        }
    }
}
