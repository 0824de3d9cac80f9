//! Shipping: the committed transactions after walsync's position are read
//! from the WAL and uploaded as segments of whole transactions (spooled to
//! a file when one transaction makes a segment large); a WAL that no longer
//! continues what was shipped is a `Gap` (`continuity::ship_from`), which
//! starts a new generation.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use super::commit_times::commit_times;
use super::continuity::{self, Gap};
use super::error::{io_err, ReplicaError};
use super::live::Cursor;
use super::wal_file::WalFile;
use super::{Replica, SyncReport};
use crate::format::sealed::{Envelope, SALT_BYTES};
use crate::format::segment::{CommitRecord, SegmentEncoder, SegmentHeader};
use crate::keyfile::Key;
use crate::keys;
use crate::spool::SpoolFile;
use crate::storage::{Body, Storage};
use crate::wal::{self, TxnSpan, WalHeader, WalPos};

/// Where an encoded segment goes: memory when small, a spool file when one
/// transaction makes it large.
pub(super) enum Sink {
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
pub(super) const SEGMENT_IN_MEMORY: u64 = 16 << 20;

/// Encodes the transactions `group` as one segment, reading their frames
/// from the WAL file again (and checking them again: a WAL that changed
/// since the scan is an error, retried by the next sync), into memory or,
/// for a large group, into the spool file `spool`, sealed as the object
/// `key` when `seal` holds a key (and its fresh salt). Returns the sink,
/// the object's length and its CRC32 (of the bytes as stored).
#[allow(clippy::too_many_arguments)]
pub(super) fn encode_segment(
    wal: &WalFile,
    h: &WalHeader,
    header: SegmentHeader,
    group: &[TxnSpan],
    times: &[u64],
    spool: Option<&SpoolFile>,
    seal: Option<(&Key, [u8; SALT_BYTES])>,
    key: &str,
) -> Result<(Sink, u64, u32), ReplicaError> {
    let sink = match spool {
        None => Sink::Memory(Vec::new()),
        Some(s) => Sink::File(
            BufWriter::new(s.writer().map_err(io_err(s.path()))?),
            s.path().to_path_buf(),
        ),
    };
    let out_err = |e: io::Error| io_err(spool.map_or(&wal.path, SpoolFile::path))(e);
    let sink = Envelope::new(sink, seal, key).map_err(out_err)?;
    let mut enc = SegmentEncoder::new(sink, header).map_err(out_err)?;
    for (i, (t, &time_ms)) in group.iter().zip(times).enumerate() {
        enc.commit(&CommitRecord {
            txid: header.first_txid + i as u64,
            time_ms,
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
    let (sink, len, crc) = sink.finish((len, crc)).map_err(out_err)?;
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

impl Replica {
    /// Ships the committed transactions after the cursor. `Ok(Err(reason))`
    /// is a gap: the WAL no longer continues what was shipped.
    pub(super) fn ship(
        &mut self,
        storage: &dyn Storage,
        report: &mut SyncReport,
    ) -> Result<Result<(), Gap>, ReplicaError> {
        let live = self
            .live
            .as_ref()
            .expect("invariant: ship runs on a live replica");
        let cursor = live.cursor;
        // From now on the watcher notes when it sees each commit (from the
        // first sync on, even one that finds nothing to ship).
        let clock = self.commit_times.clone();
        if let Some(c) = &clock {
            c.track(&self.opts.path, cursor.pos);
        }
        // While walsync holds its connections the WAL file exists (SQLite
        // creates it when the read transaction starts, and deletes it only
        // under an EXCLUSIVE lock walsync's SHARED lock forbids): if it is
        // gone, that lock was lost.
        let Some(wal) = WalFile::open(&self.opts.path)? else {
            return Ok(Err(Gap::lost_locks("the WAL file was deleted")));
        };
        let header = wal.header()?;
        let from = match continuity::ship_from(cursor, live.page_size, header, wal.len) {
            Ok(Some(from)) => from,
            Ok(None) => return Ok(Ok(())),
            Err(gap) => return Ok(Err(gap)),
        };
        let h = header.expect("invariant: shipping goes on only in a WAL with a header");
        let max_segment = self.opts.max_segment_bytes;
        let mut shipped = 0u64;
        let prefix = self.opts.prefix.clone();
        let generation = self.generation;
        let mut next_txid = self.last_txid + 1;
        // Commit times never go back (see `now_ms`).
        let mut time_floor = self.last_time_ms;
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
                // Each commit's time is an upper bound on when it was made
                // (`commit_times`): when the watcher saw its frame, else
                // now, after the read that found it (stamped before the
                // read, a commit made meanwhile was restored "as of" a time
                // before it was made).
                let scan_ms = crate::time::now_ms();
                let salts = (h.salt1, h.salt2);
                let ends: Vec<u64> = group.iter().map(|t| t.end.offset).collect();
                let times = match &clock {
                    Some(c) => c.times(&self.opts.path, salts, &ends, scan_ms, time_floor),
                    None => commit_times(&[], salts, &ends, scan_ms, time_floor),
                };
                let (first_time_ms, last_time_ms) = (times[0], times[times.len() - 1]);
                time_floor = last_time_ms;
                let header = SegmentHeader {
                    page_size: h.page_size,
                    commit_count: group.len() as u32,
                    first_txid: next_txid,
                    last_txid: next_txid + group.len() as u64 - 1,
                    first_time_ms,
                    last_time_ms,
                    start: at,
                    end: last.end,
                };
                let spool = (size > SEGMENT_IN_MEMORY)
                    .then(|| SpoolFile::create(&self.opts.spool_dir, "segment"))
                    .transpose()?;
                let key = keys::segment_key(
                    &prefix,
                    generation,
                    header.first_txid,
                    header.last_txid,
                    header.first_time_ms,
                    header.last_time_ms,
                );
                let seal = self.seal()?;
                let encoded = encode_segment(
                    &wal,
                    &h,
                    header,
                    &group,
                    &times,
                    spool.as_ref(),
                    seal.as_ref().map(|(k, salt)| (k, *salt)),
                    &key,
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
                log::debug!("{prefix}: {} {key} ({len} bytes)", storage.put_does());
                if let Some(c) = &clock {
                    c.shipped(&self.opts.path, &header.end);
                }
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
            live.shipped_since_mark = true;
        }
        result?;
        if replaced {
            return Ok(Err(Gap::replaced()));
        }
        Ok(Ok(()))
    }

    /// After a gap: a new generation, with fresh connections first if
    /// walsync's locks were lost. A file renamed over the database is taken
    /// up only once the old file's wal-index and WAL are out of its way
    /// (`replaced_while_held`).
    pub(super) fn handle_gap(
        &mut self,
        storage: &dyn Storage,
        gap: Gap,
        report: &mut SyncReport,
    ) -> Result<(), ReplicaError> {
        if gap.replaced {
            self.replaced_while_held();
            self.take_up_replaced()?;
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

    /// Another file was renamed over the database while walsync held it
    /// open. Until every connection that has the old file's wal-index
    /// mapped closes, SQLite shares it (the database size, and any frame
    /// not yet in the old file) with the new file's connections (README
    /// "Replacing a database"). walsync says so once, as an error, closes
    /// its connections to the old file without checkpointing, and notes
    /// which `-shm` file and WAL they used: it takes the new file up (a new
    /// generation) only once they are out of the way (`take_up_replaced`),
    /// never reading, checkpointing or snapshotting it through them.
    pub(super) fn replaced_while_held(&mut self) {
        let path = self.opts.path.clone();
        let Some(mut live) = self.live.take() else {
            return;
        };
        // Through walsync's own descriptor of the -shm (see
        // `Live::shm_file`), closed with the connections.
        let commits = super::release::wal_index(&path, &mut live.shm_file)
            .ok()
            .flatten()
            .map(|(_, index)| index.commits);
        let shm = live.shm_id.and_then(|id| {
            let m = std::fs::metadata(crate::sqlite::shm_path(&path)).ok()?;
            use std::os::unix::fs::MetadataExt;
            (m.dev() == id.dev && m.ino() == id.ino).then_some(continuity::ShmId {
                file: id,
                born: m.created().ok(),
            })
        });
        let wal_salts = super::wal_file::wal_header(&path)
            .ok()
            .flatten()
            .map(|h| (h.salt1, h.salt2));
        let stale_frames = !live.backfilled;
        // Closing the connections checkpoints nothing (checkpoint-on-close
        // is off); walsync's descriptor of the old file goes with them.
        drop(live);
        self.stale = Some(continuity::StaleIndex {
            shm,
            wal_salts,
            commits,
        });
        self.needs_generation = true;
        log::error!(
            "{} ({}): the database file was replaced (another file renamed over it) while walsync \
             held it open. Until all of its connections have closed, SQLite shares the old file's \
             wal-index (its database size{}) with the new file, which can then read as \"database \
             disk image is malformed\" or get commits that claim the old size. walsync has closed \
             its connections to the old file and backs up the new file as a new generation once \
             nothing of the old one is in its way. Close every connection the application has to \
             the database, open it again and check it with PRAGMA integrity_check (restore it if \
             needed). To replace a database safely, close the application's connections and wait \
             one sync_interval before renaming (README \"Replacing a database\")",
            path.display(),
            self.opts.prefix,
            if stale_frames {
                ", and transactions of the old file not yet in it"
            } else {
                ""
            }
        );
    }

    /// Whether a file renamed over the database while walsync held it may
    /// be taken up now (`continuity::stale_index_gone`); if not, the error
    /// that waits for the application to close it.
    pub(super) fn take_up_replaced(&mut self) -> Result<(), ReplicaError> {
        let Some(stale) = self.stale else {
            return Ok(());
        };
        let path = &self.opts.path;
        let shm_path = crate::sqlite::shm_path(path);
        let shm_now = std::fs::metadata(&shm_path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            continuity::ShmId {
                file: crate::sqlite::FileId {
                    dev: m.dev(),
                    ino: m.ino(),
                },
                born: m.created().ok(),
            }
        });
        let others = shm_now.and_then(|_| crate::sqlite::others_attached_to(&shm_path));
        // walsync has no connection to this -shm file: a descriptor of its
        // own opened and closed here drops no lock of walsync's.
        let commits = super::release::wal_index(path, &mut None)
            .ok()
            .flatten()
            .map(|(_, index)| index.commits);
        let wal_now = super::wal_file::wal_header(path)?.map(|h| (h.salt1, h.salt2));
        if !continuity::stale_index_gone(stale, shm_now, others, commits, wal_now) {
            log::debug!(
                "{}: the replaced file's {stale:?} is in the way: -shm {shm_now:?}, others \
                 attached {others:?}, commits {commits:?}, WAL salts {wal_now:?}",
                path.display()
            );
            return Err(ReplicaError::StaleIndex(path.clone()));
        }
        log::info!(
            "{} ({}): nothing of the replaced file is in the way any more; backing up the new one",
            path.display(),
            self.opts.prefix
        );
        self.stale = None;
        Ok(())
    }
}
