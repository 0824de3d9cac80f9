//! Snapshots, read from the files themselves: the database file, overlaid
//! with the newest copy of each page from WAL frames up to the snapshot's
//! position when the WAL was not fully backfilled, each overlaid frame
//! checked against its recorded checksum.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::{io_err, ReplicaError};
use super::wal_file::{wal_end, WalFile};
use super::{Replica, SyncReport};
use crate::format::sealed::Envelope;
use crate::format::snapshot::{SnapshotEncoder, SnapshotHeader};
use crate::keys;
use crate::spool::SpoolFile;
use crate::sqlite;
use crate::storage::{Body, Storage};
use crate::wal::{self, Checksum, WalHeader, WalPos};

/// Where the newest copy of each page lives in the WAL, up to a position,
/// with what its frame must checksum to.
pub(super) struct Overlay {
    pub(super) header: WalHeader,
    pub(super) frames: HashMap<u32, FrameRef>,
}

pub(super) struct FrameRef {
    pub(super) offset: u64,
    pub(super) prev: Checksum,
    pub(super) sum: Checksum,
}

pub(super) fn build_overlay(
    db: &Path,
    page_size: u32,
    upto: WalPos,
) -> Result<Overlay, ReplicaError> {
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

/// The generation and txid of a snapshot: the first of a new generation is
/// named after its txid, the one after the newest shipped; a periodic one
/// stands at the newest shipped txid of the current generation.
pub(super) fn snapshot_id(new_generation: bool, generation: u64, last_txid: u64) -> (u64, u64) {
    if new_generation {
        (last_txid + 1, last_txid + 1)
    } else {
        (generation, last_txid)
    }
}

/// The WAL position up to which a snapshot overlays the database file with
/// WAL frames, taken at `pos` after a checkpoint: none if the checkpoint was
/// complete (every frame is in the database file) or the WAL holds no frame
/// up to `pos`.
pub(super) fn overlay_upto(pos: Option<WalPos>, checkpoint_complete: bool) -> Option<WalPos> {
    pos.filter(|p| !checkpoint_complete && p.offset > wal::HEADER_SIZE as u64)
}

/// The size in pages of a snapshot read from the database file alone (every
/// frame is in it): its header's (`header_pages`; SQLite writes it with
/// every commit that changes it), else the last commit's, else what the
/// file's length holds. The file itself may be longer
/// (SQLITE_FCNTL_CHUNK_SIZE rounds it up), never shorter: that is a file
/// that changed while walsync read it, retried by the next sync.
pub(super) fn db_file_pages(
    header_pages: Option<u32>,
    commit_pages: Option<u32>,
    db_len: u64,
    page_size: u32,
) -> Result<u32, String> {
    let n = header_pages
        .or(commit_pages)
        .unwrap_or((db_len / u64::from(page_size)) as u32);
    if n == 0 || u64::from(n) * u64::from(page_size) > db_len {
        return Err(format!(
            "database file of {db_len} bytes is shorter than its {n} pages"
        ));
    }
    Ok(n)
}

impl Replica {
    /// Takes a snapshot and uploads it: the first of a new generation
    /// (`new_generation`), or a periodic one inside the current generation.
    pub(super) fn snapshot(
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
        let (generation, txid) = snapshot_id(new_generation, self.generation, self.last_txid);

        let overlay = match overlay_upto(pos, complete) {
            Some(p) => Some(build_overlay(&path, page_size, p)?),
            None => None,
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
                // The header comes first: a WAL found at a new generation
                // may be a fully backfilled one left by a file that was
                // renamed over (SQLite ignores it, and so must the
                // snapshot).
                let mut h = [0u8; 100];
                db.read_exact_at(&mut h, 0).map_err(io_err(&path))?;
                db_file_pages(sqlite::db_header_pages(&h), db_pages, db_len, page_size).map_err(
                    |what| ReplicaError::Unstable {
                        path: path.clone(),
                        what,
                    },
                )?
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
        let key = keys::snapshot_key(&self.opts.prefix, generation, txid, time_ms);
        let seal = self.seal()?;
        let result = (|| {
            let f = spool_file.writer().map_err(io_err(&spool))?;
            let seal = seal.as_ref().map(|(k, salt)| (k, *salt));
            let out = Envelope::new(BufWriter::new(f), seal, &key).map_err(io_err(&spool))?;
            let mut enc = SnapshotEncoder::new(out, header).map_err(io_err(&spool))?;
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
            let (w, len, crc) = w.finish((len, crc)).map_err(io_err(&spool))?;
            w.into_inner()
                .map_err(|e| io_err(&spool)(e.into_error()))?
                .sync_all()
                .map_err(io_err(&spool))?;
            storage.put(&key, Body::File { path: &spool, len }, crc)?;
            Ok((key, len))
        })();
        drop(spool_file);
        let (key, len) = result?;

        if new_generation {
            self.generation = generation;
            self.generation_sealed = seal.is_some();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_generation_is_named_after_its_first_txid() {
        // (new generation, generation, newest txid) -> (generation, txid)
        let rows = [
            ((true, 0, 0), (1, 1)),
            ((true, 5, 41), (42, 42)),
            ((false, 5, 41), (5, 41)),
        ];
        for ((new, generation, txid), want) in rows {
            assert_eq!(
                snapshot_id(new, generation, txid),
                want,
                "{new} {generation} {txid}"
            );
        }
    }

    #[test]
    fn frames_are_overlaid_only_after_an_incomplete_checkpoint_of_a_wal_with_frames() {
        let at = |offset| WalPos {
            salt1: 1,
            salt2: 2,
            offset,
            checksum: Checksum(3, 4),
        };
        let first_frame_end = wal::HEADER_SIZE as u64 + wal::FRAME_HEADER_SIZE as u64 + 4096;
        let rows = [
            (
                (Some(at(first_frame_end)), false),
                Some(at(first_frame_end)),
            ),
            ((Some(at(first_frame_end)), true), None),
            // At the WAL's start: no frame to overlay.
            ((Some(at(wal::HEADER_SIZE as u64)), false), None),
            ((None, false), None),
            ((None, true), None),
        ];
        for ((pos, complete), want) in rows {
            assert_eq!(overlay_upto(pos, complete), want, "{pos:?} {complete}");
        }
    }

    #[test]
    fn the_database_file_size_comes_from_its_header_then_the_last_commit_then_its_length() {
        const PAGE: u32 = 4096;
        let len = |pages: u64| pages * u64::from(PAGE);
        // (header pages, last commit's pages, file length) -> pages
        type Row = ((Option<u32>, Option<u32>, u64), Result<u32, String>);
        let rows: [Row; 9] = [
            ((Some(3), Some(5), len(8)), Ok(3)),
            ((None, Some(5), len(8)), Ok(5)),
            ((None, None, len(8)), Ok(8)),
            // A length that is not a whole number of pages rounds down.
            ((None, None, len(8) + 100), Ok(8)),
            // The file may be longer than its pages (chunk size)...
            ((Some(2), None, len(16)), Ok(2)),
            // ...never shorter.
            (
                (Some(9), None, len(8)),
                Err(format!(
                    "database file of {} bytes is shorter than its 9 pages",
                    len(8)
                )),
            ),
            (
                (None, Some(9), len(8)),
                Err(format!(
                    "database file of {} bytes is shorter than its 9 pages",
                    len(8)
                )),
            ),
            // An empty file has no image.
            (
                (None, None, 0),
                Err("database file of 0 bytes is shorter than its 0 pages".into()),
            ),
            (
                (None, None, 100),
                Err("database file of 100 bytes is shorter than its 0 pages".into()),
            ),
        ];
        for ((header, commit, db_len), want) in rows {
            assert_eq!(
                db_file_pages(header, commit, db_len, PAGE),
                want,
                "{header:?} {commit:?} {db_len}"
            );
        }
    }
}
