//! What a backup object in the bucket says about where the backup stands:
//! the WAL position (and database size) in its header, or an idle mark.

use super::continuity::ShippedPos;
use super::error::ReplicaError;
use crate::format::mark::Mark;
use crate::format::sealed;
use crate::format::segment::SegmentDecoder;
use crate::format::snapshot::SnapshotDecoder;
use crate::format::FormatError;
use crate::keyfile::Key;
use crate::keys::{self, ObjectKind};
use crate::storage::Storage;

/// What the newest backup object says: whether it is sealed (told by its
/// first bytes, key or no key), and the WAL position it records.
pub(super) struct ObjectRead {
    pub(super) sealed: bool,
    /// `Err`: it cannot be decoded (or opened: no key for it).
    pub(super) pos: Result<Option<ShippedPos>, ReplicaError>,
}

/// Reads a backup object, opening it with `keys` if sealed. `Err` only
/// when it cannot be fetched.
pub(super) fn read_object(
    storage: &dyn Storage,
    o: &keys::BackupObject,
    keys: &[Key],
) -> Result<ObjectRead, ReplicaError> {
    let corrupt = |source| ReplicaError::Corrupt {
        key: o.key.clone(),
        source,
    };
    let reader = storage.get(&o.key)?;
    let (sealed, reader) = sealed::peek(reader).map_err(|e| corrupt(e.into()))?;
    let pos = sealed::open_peeked(sealed, reader, keys, &o.key)
        .map_err(|e| corrupt(FormatError::Sealed(e)))
        .and_then(|reader| object_pos(o, reader));
    Ok(ObjectRead { sealed, pos })
}

/// The WAL position (and database size) recorded in the header of a
/// backup object, read (opened) from `reader`: where the backup stands.
fn object_pos(
    o: &keys::BackupObject,
    reader: impl std::io::Read,
) -> Result<Option<ShippedPos>, ReplicaError> {
    let corrupt = |source| ReplicaError::Corrupt {
        key: o.key.clone(),
        source,
    };
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
        ObjectKind::Mark { .. } => Ok(decode_mark(o, reader)?.pos.map(|p| (p, None))),
    }
}

/// Reads and checks an idle mark (a few dozen bytes; more is corrupt),
/// opening it with `keys` if sealed.
pub(super) fn read_mark(
    storage: &dyn Storage,
    o: &keys::BackupObject,
    keys: &[Key],
) -> Result<Mark, ReplicaError> {
    let opened = sealed::open(storage.get(&o.key)?, keys, &o.key);
    let opened = opened.map_err(|e| ReplicaError::Corrupt {
        key: o.key.clone(),
        source: FormatError::Sealed(e),
    })?;
    decode_mark(o, opened)
}

fn decode_mark(o: &keys::BackupObject, reader: impl std::io::Read) -> Result<Mark, ReplicaError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    reader
        .take(4096)
        .read_to_end(&mut bytes)
        .map_err(|e| ReplicaError::Corrupt {
            key: o.key.clone(),
            source: e.into(),
        })?;
    Mark::decode(&bytes).map_err(|source| ReplicaError::Corrupt {
        key: o.key.clone(),
        source,
    })
}
