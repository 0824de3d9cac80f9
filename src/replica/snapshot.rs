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
