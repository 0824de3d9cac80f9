//! What a backup object in the bucket says about where the backup stands:
//! the WAL position (and database size) in its header, or an idle mark.

use super::error::ReplicaError;
use crate::format::mark::Mark;
use crate::format::segment::SegmentDecoder;
use crate::format::snapshot::SnapshotDecoder;
use crate::format::FormatError;
use crate::keys::{self, ObjectKind};
use crate::storage::Storage;
use crate::wal::WalPos;

/// The WAL position (and database size) recorded in the header of a
/// backup object: where the backup stands.
pub(super) fn read_object_pos(
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
pub(super) fn read_mark(
    storage: &dyn Storage,
    o: &keys::BackupObject,
) -> Result<Mark, ReplicaError> {
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
