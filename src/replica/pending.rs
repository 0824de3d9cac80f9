//! Store and forward: the commits walsync could not upload when the
//! application closed the database during a storage outage. walsync lets
//! go then all the same (the WAL emptied, so that the database can be
//! replaced safely: README "Replacing a database"), but first it keeps what
//! it has not uploaded as the very objects a ship would have uploaded
//! (segments built by `ship`, and the let-go's mark), sealed and named as
//! they will be stored, each in a private spool file (`crate::spool`). Its
//! position moves on as if they were shipped, so the release proof (the
//! file's fingerprint and the next WAL) holds and the generation goes on.
//! Once the storage answers, they go up first, in order, before anything
//! else of the database's; until then nothing else is written to its
//! prefix (a later object before them would make a hole in the history).
//!
//! What it must never do: keep a segment in memory (each is a file), hold
//! more than `idle_release_max_size` per database or `PROCESS_MAX_BYTES` in
//! all (over it, the let-go goes on as before: the commits not uploaded
//! start a new generation), or outlive the process: a pending object is
//! only in this process, so walsync stopped or killed before the upload
//! loses it from the bucket (the next start sees that the bucket does not
//! continue and begins a new generation: ARCHITECTURE.md invariant 1).

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::error::ReplicaError;
use super::{Replica, SyncReport};
use crate::keys::{self, ObjectKind};
use crate::spool::SpoolFile;
use crate::sqlite::{self, FileStat};
use crate::storage::{Body, ObjectMeta, ObjectReader, Storage, StorageError};

/// Spooled bytes the whole process may hold for uploads to come.
pub(super) const PROCESS_MAX_BYTES: u64 = 1 << 30;

/// Pending objects one database may hold (each keeps a descriptor: its
/// lock, see `crate::spool`).
pub(super) const MAX_OBJECTS: usize = 64;

/// Spooled bytes held by every database of this process.
static PROCESS_BYTES: AtomicU64 = AtomicU64::new(0);

/// One object kept for upload: its key, kind, length and CRC32 as a ship
/// made them, and the spool file that holds its bytes.
#[derive(Debug)]
struct PendingObject {
    key: String,
    kind: ObjectKind,
    len: u64,
    crc: u32,
    file: SpoolFile,
}

impl Drop for PendingObject {
    fn drop(&mut self) {
        PROCESS_BYTES.fetch_sub(self.len, Ordering::Relaxed);
    }
}

/// A database's objects waiting for the storage, oldest first.
#[derive(Debug, Default)]
pub(super) struct Pending {
    objects: VecDeque<PendingObject>,
    /// The files as the last let-go that kept objects left them: while they
    /// are, there is nothing to wake the database for (`Replica::sync`).
    left: Option<FileStat>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.len).sum()
    }

    /// The txids of the pending segments, if any.
    fn txids(&self) -> Option<(u64, u64)> {
        let mut segments = self.objects.iter().filter_map(|o| match o.kind {
            ObjectKind::Segment {
                first_txid,
                last_txid,
                ..
            } => Some((first_txid, last_txid)),
            _ => None,
        });
        let first = segments.next()?;
        Some((first.0, segments.next_back().unwrap_or(first).1))
    }

    /// Appends `new` (spooled in this order) and drops the marks they make
    /// stale (`keep`).
    fn push(&mut self, new: Vec<PendingObject>) {
        self.objects.extend(new);
        let kinds: Vec<ObjectKind> = self.objects.iter().map(|o| o.kind).collect();
        let mut keep = keep(&kinds).into_iter();
        self.objects.retain(|_| keep.next().unwrap_or(true));
    }
}

/// Which pending objects are worth uploading: every segment, and a mark
/// only as the last object. A mark proves where walsync let go (README
/// "Restarts"), and a start reads only a mark at the newest txid of the
/// bucket (`BucketSummary::mark_of_newest`): one followed by a segment
/// proves nothing any more.
fn keep(kinds: &[ObjectKind]) -> Vec<bool> {
    let last = kinds.len().saturating_sub(1);
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| !matches!(k, ObjectKind::Mark { .. }) || i == last)
        .collect()
}

/// What a let-go during an outage would keep, and what is kept already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backlog {
    /// WAL bytes after walsync's position: a bound on the segments' size
    /// (a segment holds each page once, with 24 bytes less of header than
    /// its frame; LZ4 and sealing add a little per segment, `SLACK`).
    pub(super) wal_bytes: u64,
    /// What this database keeps already.
    pub(super) held_bytes: u64,
    pub(super) held_objects: usize,
    /// What the whole process keeps already.
    pub(super) process_bytes: u64,
}

/// Bytes allowed above a backlog's WAL bytes for the objects' headers,
/// LZ4's worst case and sealing.
const SLACK: u64 = 64 << 10;

/// Whether a let-go during an outage may keep `b` for upload, given
/// `max_db_bytes` (`idle_release_max_size`) for one database; if not, why.
pub(super) fn may_spool(b: Backlog, max_db_bytes: u64) -> Result<(), String> {
    let need = b.wal_bytes + b.wal_bytes / 128 + SLACK;
    if b.held_objects + 2 > MAX_OBJECTS {
        return Err(format!(
            "{} objects of this database already wait for the storage, at most {MAX_OBJECTS}",
            b.held_objects
        ));
    }
    if b.held_bytes + need > max_db_bytes {
        return Err(format!(
            "{} bytes of commits would wait for the storage, more than idle_release_max_size \
             ({max_db_bytes} bytes)",
            b.held_bytes + need
        ));
    }
    if b.process_bytes + need > PROCESS_MAX_BYTES {
        return Err(format!(
            "walsync's spool holds {} bytes for uploads to come already, at most \
             {PROCESS_MAX_BYTES} in all",
            b.process_bytes
        ));
    }
    Ok(())
}

/// How the database is held when a sync with pending objects begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// Open, with its read transaction.
    Live,
    /// Let go of, and its files are as the let-go left them.
    ReleasedAsLeft,
    /// Let go of and changed since (to be woken), or closed.
    Otherwise,
}

/// When a sync uploads the pending objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PendingStep {
    /// Alone, and nothing more: the database stays let go of (waking it
    /// would hold a file the application may want to replace, for nothing).
    UploadAlone,
    /// Once the sync holds the database (a wake first: its read
    /// transaction pins the application's new commits, and must not wait
    /// for an upload's retries), before anything else goes up; if they
    /// cannot go up, the sync fails there, writing nothing else: a later
    /// object first would be a hole.
    UploadOnceHeld,
}

/// When a sync with pending objects uploads them.
pub(super) fn step(held: Held) -> PendingStep {
    match held {
        Held::ReleasedAsLeft => PendingStep::UploadAlone,
        Held::Live | Held::Otherwise => PendingStep::UploadOnceHeld,
    }
}

/// A `Storage` that keeps what a let-go writes (segments and its mark) in
/// spool files instead, up to `room` bytes.
struct Spooler<'a> {
    dir: &'a Path,
    prefix: &'a str,
    room: u64,
    kept: Mutex<Vec<PendingObject>>,
}

impl Spooler<'_> {
    fn refused(&self, why: &str) -> StorageError {
        StorageError::Io {
            path: self.dir.to_path_buf(),
            source: io::Error::other(why.to_string()),
        }
    }

    fn into_kept(self) -> Vec<PendingObject> {
        self.kept.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for Spooler<'_> {
    fn put(&self, key: &str, body: Body<'_>, crc32: u32) -> Result<(), StorageError> {
        let kind = match keys::parse_key(self.prefix, key) {
            Ok(Some((_, k @ (ObjectKind::Segment { .. } | ObjectKind::Mark { .. })))) => k,
            _ => return Err(self.refused("only segments and marks are kept for upload")),
        };
        let len = body.len();
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let used: u64 = kept.iter().map(|o| o.len).sum();
        if used + len > self.room {
            return Err(self.refused("the spool's room for uploads to come is used up"));
        }
        PROCESS_BYTES.fetch_add(len, Ordering::Relaxed);
        let file = match SpoolFile::create(self.dir, "pending") {
            Ok(f) => f,
            Err(e) => {
                PROCESS_BYTES.fetch_sub(len, Ordering::Relaxed);
                return Err(StorageError::Io {
                    path: e.path,
                    source: e.source,
                });
            }
        };
        // Counted from here: dropped, it gives its bytes back.
        let object = PendingObject {
            key: key.to_string(),
            kind,
            len,
            crc: crc32,
            file,
        };
        let path = object.file.path().to_path_buf();
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        let mut out = object.file.writer().map_err(io)?;
        let copied = io::copy(&mut body.open().map_err(io)?, &mut out).map_err(io)?;
        if copied != len {
            return Err(io(io::Error::other(format!(
                "{copied} bytes copied of {len}"
            ))));
        }
        kept.push(object);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<ObjectReader, StorageError> {
        Err(StorageError::NotFound {
            key: key.to_string(),
        })
    }

    fn list(&self, _prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        Err(self.refused("the spool cannot be listed"))
    }

    fn delete(&self, _keys: &[String]) -> Result<(), StorageError> {
        Err(self.refused("nothing is deleted through the spool"))
    }

    fn location(&self) -> String {
        format!("walsync's spool in {}", self.dir.display())
    }

    fn put_does(&self) -> &'static str {
        "kept for upload"
    }
}

impl Replica {
    /// Whether objects wait for the storage (`pending`).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes of the objects that wait for the storage.
    pub fn pending_bytes(&self) -> u64 {
        self.pending.bytes()
    }

    /// The first txid that waits for the storage, if any.
    pub(super) fn first_pending_txid(&self) -> Option<u64> {
        self.pending.txids().map(|(first, _)| first)
    }

    /// Let go of with objects kept, and its files as that let-go left them.
    fn released_as_left(&self) -> bool {
        self.released.is_some()
            && self
                .pending
                .left
                .is_some_and(|s| s == sqlite::stat_of(&self.opts.path))
    }

    /// How the database is held, for `step`.
    pub(super) fn held(&self) -> Held {
        if self.live.is_some() {
            Held::Live
        } else if self.released_as_left() {
            Held::ReleasedAsLeft
        } else {
            Held::Otherwise
        }
    }

    /// Uploads the pending objects, oldest first, with the keys, CRC32 and
    /// sealing the ship that made them gave them. Stops at the first
    /// failure; what went up is gone from the spool.
    pub(super) fn upload_pending(
        &mut self,
        storage: &dyn Storage,
        report: &mut SyncReport,
    ) -> Result<(), ReplicaError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (mut commits, mut objects) = (0u64, 0u64);
        while let Some(o) = self.pending.objects.front() {
            storage.put(
                &o.key,
                Body::File {
                    path: o.file.path(),
                    len: o.len,
                },
                o.crc,
            )?;
            log::debug!(
                "{}: uploaded {} ({} bytes), kept since a let-go",
                self.opts.prefix,
                o.key,
                o.len
            );
            if let ObjectKind::Segment {
                first_txid,
                last_txid,
                ..
            } = o.kind
            {
                commits += last_txid - first_txid + 1;
                report.segments += 1;
            }
            objects += 1;
            report.bytes_uploaded += o.len;
            self.pending.objects.pop_front();
        }
        report.commits += commits;
        self.pending.left = None;
        log::info!(
            "{} ({}): uploaded the {commits} commits ({objects} objects) kept while the storage \
             was unreachable; the generation goes on",
            self.opts.path.display(),
            self.opts.prefix
        );
        Ok(())
    }

    /// `release_closed` while the storage is down (`cause`): lets go as
    /// `let_go` does, keeping what is not uploaded in the spool instead of
    /// shipping it, so that the generation goes on (see the module doc). If
    /// that cannot be (no room, the spool unusable, a gap), lets go with
    /// the commits not uploaded out of the generation (`let_go_unshipped`).
    pub(super) fn let_go_spooled(
        &mut self,
        max_db_bytes: u64,
        cause: &dyn std::fmt::Display,
    ) -> Result<Option<FileStat>, ReplicaError> {
        let path = self.opts.path.clone();
        let wal_len = std::fs::metadata(sqlite::wal_path(&path)).map_or(0, |m| m.len());
        let backlog = Backlog {
            wal_bytes: wal_len.saturating_sub(self.shipped_wal_offset().unwrap_or(0)),
            held_bytes: self.pending.bytes(),
            held_objects: self.pending.objects.len(),
            process_bytes: PROCESS_BYTES.load(Ordering::Relaxed),
        };
        if let Err(why) = may_spool(backlog, max_db_bytes) {
            log::warn!(
                "{} ({}): the commits not yet uploaded cannot be kept for upload: {why}",
                path.display(),
                self.opts.prefix
            );
            return self.let_go_unshipped(cause);
        }
        let dir = self.opts.spool_dir.clone();
        let prefix = self.opts.prefix.clone();
        let spooler = Spooler {
            dir: &dir,
            prefix: &prefix,
            room: max_db_bytes.saturating_sub(backlog.held_bytes),
            kept: Mutex::new(Vec::new()),
        };
        // What is committed now goes to the spool first, without the write
        // lock (the application has closed the database): a gap found here
        // (the file replaced, the WAL restarted) is no history to keep, and
        // the let-go below must not meet it, since a gap there closes the
        // connections without emptying the WAL (`handle_gap`).
        let shipped = self.ship(&spooler, &mut SyncReport::default());
        let replaced = matches!(&shipped, Ok(Err(gap)) if gap.replaced)
            || !self.live.as_ref().is_some_and(|l| l.handle.still_at_path());
        if replaced {
            // No history to keep: let go as without a spool.
            self.pending.push(spooler.into_kept());
            return self.let_go_unshipped(cause);
        }
        let let_go = match shipped {
            Ok(Ok(())) => self.let_go(
                &spooler,
                max_db_bytes,
                true,
                "let go of, commits kept for upload",
            ),
            Ok(Err(gap)) => {
                self.begin_new_generation(&gap.reason);
                Ok(None)
            }
            Err(e) => Err(e),
        };
        // Kept even if the let-go failed on the way: the position moved
        // past them, so they must go up before anything after them.
        self.pending.push(spooler.into_kept());
        match let_go {
            Ok(Some(stat)) => {
                self.pending.left = Some(stat);
                let (first, last) = self.pending.txids().unwrap_or((0, 0));
                log::warn!(
                    "{} ({}): the application closed the database while the storage is \
                     unreachable ({cause}); walsync let go of it so that it can be replaced or \
                     deleted safely, and keeps the commits not yet uploaded (txids {first} to \
                     {last}, {} bytes) in its spool, to upload first in this generation once \
                     the storage answers (lost from the backup if walsync stops before)",
                    path.display(),
                    self.opts.prefix,
                    self.pending.bytes()
                );
                Ok(Some(stat))
            }
            // Not the moment (another connection came): the next close.
            Ok(None)
                if self.live.is_some()
                    && !self.needs_generation
                    && self.live.as_ref().is_some_and(|l| l.handle.still_at_path()) =>
            {
                Ok(None)
            }
            Ok(None) | Err(_) if self.live.is_some() => {
                if let Err(e) = &let_go {
                    log::debug!("{}: keeping the commits failed: {e}", path.display());
                }
                self.let_go_unshipped(cause)
            }
            other => other,
        }
    }

    /// Drops what waits for the storage (walsync closes the database: it
    /// stops, or lost its lease), saying what the bucket lacks.
    pub(super) fn drop_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (first, last) = self.pending.txids().unwrap_or((0, 0));
        log::warn!(
            "{} ({}): the commits with txids {first} to {last}, kept while the storage was \
             unreachable, were never uploaded and are missing from the backup (the database \
             holds them); the next start begins a new generation with a full snapshot",
            self.opts.path.display(),
            self.opts.prefix
        );
        self.pending = Pending::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(first_txid: u64, last_txid: u64) -> ObjectKind {
        ObjectKind::Segment {
            first_txid,
            last_txid,
            first_time_ms: 0,
            last_time_ms: 0,
        }
    }

    fn mark(txid: u64) -> ObjectKind {
        ObjectKind::Mark { txid, time_ms: 0 }
    }

    #[test]
    fn only_the_last_mark_is_kept_and_every_segment() {
        let cases: &[(&[ObjectKind], &[bool])] = &[
            (&[], &[]),
            (&[mark(3)], &[true]),
            (&[segment(1, 3), mark(3)], &[true, true]),
            (
                &[segment(1, 3), mark(3), segment(4, 4), mark(4)],
                &[true, false, true, true],
            ),
            (
                &[segment(1, 3), mark(3), segment(4, 9)],
                &[true, false, true],
            ),
            (&[mark(3), mark(3)], &[false, true]),
        ];
        for (kinds, want) in cases {
            assert_eq!(keep(kinds), *want, "{kinds:?}");
        }
    }

    #[test]
    fn a_backlog_is_kept_only_within_its_bounds() {
        let mib = 1 << 20;
        let b = |wal_bytes, held_bytes, held_objects, process_bytes| Backlog {
            wal_bytes,
            held_bytes,
            held_objects,
            process_bytes,
        };
        let max = 64 * mib;
        let rows = [
            (b(0, 0, 0, 0), Ok(())),
            (b(mib, 0, 0, 0), Ok(())),
            (b(60 * mib, 0, 0, 0), Ok(())),
            (b(max - SLACK, 0, 0, 0), Err("idle_release_max_size")),
            (b(30 * mib, 30 * mib, 4, 0), Ok(())),
            (b(30 * mib, 34 * mib, 4, 0), Err("idle_release_max_size")),
            (b(mib, 0, MAX_OBJECTS - 2, 0), Ok(())),
            (b(mib, 0, MAX_OBJECTS - 1, 0), Err("objects")),
            (b(mib, 0, 0, PROCESS_MAX_BYTES - 2 * mib), Ok(())),
            (b(mib, 0, 0, PROCESS_MAX_BYTES - mib), Err("in all")),
        ];
        for (backlog, want) in rows {
            match (may_spool(backlog, max), want) {
                (Ok(()), Ok(())) => {}
                (Err(why), Err(says)) => assert!(why.contains(says), "{backlog:?}: {why}"),
                (got, _) => panic!("{backlog:?}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn a_sync_wakes_a_database_with_pending_objects_only_for_a_change_and_uploads_them_once_held() {
        use PendingStep::*;
        let rows = [
            (Held::ReleasedAsLeft, UploadAlone),
            (Held::Live, UploadOnceHeld),
            (Held::Otherwise, UploadOnceHeld),
        ];
        for (held, want) in rows {
            assert_eq!(step(held), want, "{held:?}");
        }
    }

    #[test]
    fn the_spooler_keeps_segments_and_marks_in_private_files_and_refuses_the_rest() {
        let base = crate::testing::fresh_dir("pending-spooler");
        let prefix = "tenants/acme";
        let spooler = Spooler {
            dir: &base,
            prefix,
            room: 100,
            kept: Mutex::new(Vec::new()),
        };
        let seg = keys::segment_key(prefix, 1, 2, 3, 10, 11);
        spooler.put(&seg, Body::Bytes(b"segment bytes"), 7).unwrap();
        let snap = keys::snapshot_key(prefix, 1, 4, 12);
        assert!(spooler.put(&snap, Body::Bytes(b"x"), 1).is_err());
        let mk = keys::mark_key(prefix, 1, 3, 12);
        assert!(
            spooler.put(&mk, Body::Bytes(&[0u8; 100]), 1).is_err(),
            "no room"
        );
        spooler.put(&mk, Body::Bytes(b"mark"), 9).unwrap();
        // What the lines of a ship through it say.
        assert_eq!(spooler.put_does(), "kept for upload");
        let kept = spooler.into_kept();
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].key.as_str(), kept[0].crc), (seg.as_str(), 7));
        assert_eq!(
            std::fs::read(kept[0].file.path()).unwrap(),
            b"segment bytes"
        );
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(kept[0].file.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let paths: Vec<_> = kept.iter().map(|o| o.file.path().to_path_buf()).collect();
        drop(kept);
        assert!(paths.iter().all(|p| !p.exists()), "removed when dropped");
        let _ = std::fs::remove_dir_all(base);
    }
}
