//! Letting go of a database (idle release, the application's last close,
//! or stop) with the proof that lets it be taken up again without a
//! snapshot: what the database file was while it held exactly what was
//! shipped, kept in memory (its identity, and up to
//! `idle_release_max_size` its content's fingerprint) and, with the
//! fingerprint, left in the bucket as a mark; and waking a released
//! database.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use super::continuity::{self, AsLeft, FileIdentity, NextWal, ShmId, WakeEvidence};
use super::error::{io_err, ReplicaError};
use super::live::Cursor;
use super::resume::LocalFiles;
use super::wal_file::WalFile;
use super::{Replica, SyncReport};
use crate::format::mark::{Fingerprint, Mark};
use crate::format::sealed::envelope_bytes;
use crate::keys;
use crate::sqlite::{self, DbHandle, FileId};
use crate::storage::{Body, Storage};
use crate::wal::{self, WalHeader, WalIndexHeader};

/// A database walsync let go of (ARCHITECTURE.md "Idle databases"): no
/// connections and no read transaction, only walsync's own descriptor (which
/// keeps the flock and the process-wide registration) and what the
/// database file was when it held exactly what was shipped.
pub(super) struct Released {
    pub(super) db: sqlite::DbFile,
    pub(super) cursor: Cursor,
    pub(super) page_size: u32,
    /// Its identity (settled), and its fingerprint if it was read (then a
    /// mark with it went up too).
    pub(super) as_left: AsLeft,
    /// `db` holds the read lock on SQLite's SHARED range
    /// (`sqlite::hold_shared`), taken when the WAL was empty: the
    /// application's last close cannot checkpoint nor delete the WAL, so
    /// after a short session the file is still as left (`continuity::wake`).
    pub(super) locked: bool,
    /// The WAL that comes next, when walsync let go of an empty one.
    pub(super) next: Option<NextWal>,
}

/// The wal-index header of `db`'s `-shm` file and which file that is;
/// `None` if there is none, or no consistent header in a few reads (a
/// writer updates it at each commit). Read through `file`, walsync's own
/// descriptor of it, opened here if not yet (and kept there: see
/// `Live::shm_file`).
pub(super) fn wal_index(
    db: &Path,
    file: &mut Option<File>,
) -> Result<Option<(ShmId, WalIndexHeader)>, ReplicaError> {
    use std::os::unix::fs::MetadataExt;
    let path = sqlite::shm_path(db);
    let f = match file {
        Some(f) => f,
        None => match File::open(&path) {
            Ok(f) => file.insert(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        },
    };
    let m = f.metadata().map_err(io_err(&path))?;
    let id = ShmId {
        file: FileId {
            dev: m.dev(),
            ino: m.ino(),
        },
        born: m.created().ok(),
    };
    let mut buf = [0u8; wal::INDEX_HEADER_BYTES];
    for _ in 0..5 {
        match f.read_exact_at(&mut buf, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        }
        if let Some(h) = wal::parse_index_header(&buf) {
            return Ok(Some((id, h)));
        }
        std::thread::yield_now();
    }
    Ok(None)
}

/// The local files as a wake asks about them: `local`, and walsync's
/// descriptor of the `-shm` file (see `Live::shm_file`).
struct WakeFiles<'a> {
    local: LocalFiles<'a>,
    shm_file: &'a mut Option<File>,
}

impl continuity::LocalEvidence for WakeFiles<'_> {
    fn wal_continues(&mut self, pos: wal::WalPos) -> Result<bool, ReplicaError> {
        self.local.wal_continues(pos)
    }

    fn wal_header(&mut self) -> Result<Option<WalHeader>, ReplicaError> {
        self.local.wal_header()
    }

    fn fingerprint(&mut self) -> Result<Fingerprint, ReplicaError> {
        self.local.fingerprint()
    }

    fn identity(&mut self) -> Result<FileIdentity, ReplicaError> {
        self.local.identity()
    }
}

impl WakeEvidence for WakeFiles<'_> {
    fn wal_index(&mut self) -> Result<Option<(ShmId, WalIndexHeader)>, ReplicaError> {
        // Evidence that cannot be read proves nothing; the other proofs
        // still may.
        Ok(
            wal_index(self.local.path, self.shm_file).unwrap_or_else(|e| {
                log::debug!(
                    "{}: the wal-index cannot be read: {e}",
                    self.local.path.display()
                );
                None
            }),
        )
    }

    fn commits_in(&mut self, h: WalHeader, frames: u32) -> Result<Option<u64>, ReplicaError> {
        let Some(wal) = WalFile::open(self.local.path)? else {
            return Ok(None);
        };
        let limit = wal::HEADER_SIZE as u64 + u64::from(frames) * h.frame_size();
        let (mut valid, mut commits) = (0u32, 0u64);
        wal.stream_frames(&h, h.start(), limit, |_, _, frame, _| {
            valid += 1;
            commits += u64::from(frame.commit_size != 0);
            Ok(true)
        })?;
        Ok((valid == frames).then_some(commits))
    }
}

pub(super) fn fingerprint(file: &File, path: &Path) -> Result<Fingerprint, ReplicaError> {
    let mut crc = crc32fast::Hasher::new();
    let mut mix = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = match file.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path)(e)),
        };
        crc.update(&buf[..n]);
        for word in buf[..n].chunks(8) {
            let mut w = [0u8; 8];
            w[..word.len()].copy_from_slice(word);
            mix = (mix ^ u64::from_le_bytes(w))
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(29);
        }
        at += n as u64;
    }
    Ok(Fingerprint {
        len: at,
        crc: crc.finalize(),
        mix,
    })
}

/// The identity of the database file open as `file` (see
/// `FileIdentity`): a `stat` and a read of its first `page_size` bytes.
pub(super) fn identity(
    file: &File,
    path: &Path,
    page_size: u32,
) -> Result<FileIdentity, ReplicaError> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().map_err(io_err(path))?;
    let mut head = vec![0u8; page_size as usize];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    let ns = |s: i64, ns: i64| i128::from(s) * 1_000_000_000 + i128::from(ns);
    Ok(FileIdentity {
        file: FileId {
            dev: m.dev(),
            ino: m.ino(),
        },
        len: m.len(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        head_crc: crc32fast::hash(&head[..n]),
    })
}

/// The kernel's coarse clock (ns since the epoch): the one it stamps file
/// times with.
fn coarse_now_ns() -> i128 {
    // SAFETY: an all-zero timespec is a valid value of a plain C struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime with a pointer to a timespec that lives across
    // the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return 0;
    }
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// The file's identity once it proves that any later write shows
/// (`continuity::until_settled`), waiting at most `patience` for the
/// kernel's clock to get there; `None` if it does not (a ctime in the
/// future: the clock was set back). The file must not change meanwhile
/// (walsync holds read mark 0).
pub(super) fn settled_identity(
    file: &File,
    path: &Path,
    page_size: u32,
    patience: Duration,
) -> Result<Option<FileIdentity>, ReplicaError> {
    let mut left = patience;
    loop {
        let id = identity(file, path, page_size)?;
        let wait = continuity::until_settled(id.ctime_ns, coarse_now_ns());
        if wait == 0 {
            return Ok(Some(id));
        }
        // The coarse clock moves by ticks (1 to 10 ms): look again then.
        let wait = Duration::from_nanos(wait).max(Duration::from_millis(1));
        if wait > left {
            return Ok(None);
        }
        left -= wait;
        std::thread::sleep(wait);
    }
}

/// How long a let-go waits for the identity to settle when it is the only
/// proof (no fingerprint): a granule of a filesystem with whole-second
/// times, and a tick.
const IDENTITY_PATIENCE: Duration = Duration::from_millis(2_100);
/// The same with a fingerprint, which proves the file as left anyway: a
/// granule of a fine-grained filesystem, and a tick.
const IDENTITY_PATIENCE_WITH_FINGERPRINT: Duration = Duration::from_millis(20);

impl Replica {
    /// Whether walsync let go of the database without leaving a mark in the
    /// bucket (a database over `idle_release_max_size`, let go of at the
    /// application's last close): its stop takes it up again to leave one
    /// (README "Restarts").
    pub fn released_without_mark(&self) -> bool {
        self.released
            .as_ref()
            .is_some_and(|r| r.as_left.fingerprint.is_none())
    }

    /// Lets go of an idle database: ships what is left and runs a sync
    /// point; if the checkpoint was complete (the database file is then
    /// exactly what was shipped), fingerprints the file and closes the
    /// connections, keeping only walsync's descriptor. `Ok(None)` if it
    /// was not the moment (not live, larger than `max_db_bytes`, not
    /// complete): a large idle database stays held, so that a kill leaves
    /// a WAL that continues the backup (the mark that would stand in for
    /// it costs a read of the whole file).
    pub fn release(
        &mut self,
        storage: &dyn Storage,
        max_db_bytes: u64,
    ) -> Result<Option<sqlite::FileStat>, ReplicaError> {
        self.under_lease(storage, false, |r, storage| {
            if r.live.is_none() || r.db_len()? > max_db_bytes {
                return Ok(None);
            }
            // Nothing goes up before what waits (`pending`).
            r.upload_pending(storage, &mut SyncReport::default())?;
            r.let_go(storage, max_db_bytes, false, "idle, connections released")
        })
    }

    /// Stops replicating (SIGTERM, or the database left the configuration)
    /// the way a release does, whatever the database's size: ships what is
    /// left, backfills the WAL under the write lock and leaves a mark with
    /// the database file's fingerprint in the bucket, so that the next
    /// start continues this generation without a snapshot even if the
    /// application restarts the WAL meanwhile (README "Restarts"). If the
    /// write lock or a complete checkpoint is not to be had, no mark is
    /// left and the next start relies on the WAL alone.
    pub fn stop(&mut self, storage: &dyn Storage) -> Result<(), ReplicaError> {
        self.under_lease(storage, false, |r, storage| r.stop_leased(storage))?;
        // The last write is done: another walsync may take the prefix now.
        self.give_up_lease(storage);
        Ok(())
    }

    /// Gives up the prefix's lease, if held (`Claim::give_up`): for when
    /// this process writes nothing more for the database.
    pub fn give_up_lease(&self, storage: &dyn Storage) {
        if let Some(claim) = &self.claim {
            claim.give_up(storage);
        }
    }

    fn stop_leased(&mut self, storage: &dyn Storage) -> Result<(), ReplicaError> {
        self.upload_pending(storage, &mut SyncReport::default())?;
        if self.live.is_some() {
            let left = self.let_go(storage, u64::MAX, false, "stopped, mark left")?;
            if left.is_none() {
                log::info!(
                    "{} ({}): no complete checkpoint at stop (the write lock was busy or an \
                     application reader held old frames); the next start resumes only if the WAL \
                     still continues the backup",
                    self.opts.path.display(),
                    self.opts.prefix
                );
            }
        }
        Ok(())
    }

    /// Lets go of a database that no other process has open any more, as
    /// the application's own last close would have had walsync not held it
    /// (SQLite checkpoints and deletes the WAL then): ships what is left,
    /// checkpoints, leaves the WAL empty and closes the connections, so
    /// that the database can be replaced by rename or deleted at once
    /// (README "Replacing a database"), whatever its size: up to
    /// `max_db_bytes` (`idle_release_max_size`) with a fingerprint and a
    /// mark, as an idle release; a larger one with its identity alone (no
    /// read of the whole file at each close), and its mark at stop.
    /// `Ok(None)` if it was not the moment (another process has it open again, the write
    /// lock was busy, a write came in between).
    ///
    /// If the storage cannot be reached, walsync lets go all the same: a
    /// database that cannot be replaced safely is worse than a broken
    /// history. It keeps what it could not upload in its spool, to upload
    /// first once the storage answers, so the generation goes on
    /// (`let_go_spooled`); without room for it, the commits not yet
    /// shipped stay in the database file but not in the bucket, and the
    /// next sync, once the storage answers, starts a new generation (and
    /// nothing is opened until then). With `storage_failing` (its last
    /// sync could not reach the storage) it does not try to ship first: an
    /// upload's retries would keep the database held for seconds.
    pub fn release_closed(
        &mut self,
        storage: &dyn Storage,
        storage_failing: bool,
        max_db_bytes: u64,
    ) -> Result<Option<sqlite::FileStat>, ReplicaError> {
        self.under_lease(storage, false, |r, storage| {
            r.release_closed_leased(storage, storage_failing, max_db_bytes)
        })
    }

    fn release_closed_leased(
        &mut self,
        storage: &dyn Storage,
        storage_failing: bool,
        max_db_bytes: u64,
    ) -> Result<Option<sqlite::FileStat>, ReplicaError> {
        if self.others_attached() != Some(false) || self.needs_generation || self.live.is_none() {
            return Ok(None);
        }
        if storage_failing {
            return self.let_go_spooled(max_db_bytes, &"its last sync could not reach the storage");
        }
        // Nothing goes up before what waits (`pending`).
        let let_go = match self.upload_pending(storage, &mut SyncReport::default()) {
            Ok(()) => self.let_go(
                storage,
                max_db_bytes,
                true,
                "closed by the application, connections released",
            ),
            Err(e) => Err(e),
        };
        match let_go {
            Err(e) if self.live.is_some() && super::sync_plan::outage(&e).is_some() => {
                self.let_go_spooled(max_db_bytes, &e)
            }
            r => r,
        }
    }

    /// `release_closed` while the storage is down (`cause`), when what is
    /// not uploaded cannot be kept for upload: gives up the read mark,
    /// empties the WAL into the database file (TRUNCATE) and closes the
    /// connections; the next sync starts a new generation.
    pub(super) fn let_go_unshipped(
        &mut self,
        cause: &dyn std::fmt::Display,
    ) -> Result<Option<sqlite::FileStat>, ReplicaError> {
        let path = self.opts.path.clone();
        let live = self.live.as_mut().expect("invariant: checked live");
        // From here the WAL is not pinned any more: whatever happens next,
        // the history walsync holds ends here.
        self.needs_generation = true;
        let truncated = live
            .handle
            .end_read()
            .map_err(ReplicaError::from)
            .and_then(|()| {
                live.handle
                    .checkpoint_truncate()
                    .map_err(ReplicaError::from)
            });
        self.live = None;
        self.released = None;
        let truncated = truncated?;
        log::warn!(
            "{} ({}): the application closed the database while the storage is unreachable \
             ({cause}); walsync let go of it anyway so that it can be replaced or deleted \
             safely, which leaves the commits not yet shipped out of this generation: a new \
             generation with a full snapshot starts once the storage answers{}",
            path.display(),
            self.opts.prefix,
            if truncated.complete() {
                ""
            } else {
                " (the WAL was not emptied: another connection opened the database meanwhile)"
            }
        );
        Ok(Some(sqlite::stat_of(&path)))
    }

    /// The size of the database file walsync holds open.
    fn db_len(&mut self) -> Result<u64, ReplicaError> {
        let path = self.opts.path.clone();
        Ok(self
            .live_mut()
            .handle
            .file()
            .metadata()
            .map_err(io_err(&path))?
            .len())
    }

    /// Ships, checkpoints, empties the WAL and closes the connections (see
    /// `release`); with `emptied`, only if the WAL could be emptied. The
    /// proof that the file is as left: its identity, and, up to
    /// `fingerprint_max` bytes, its fingerprint, also left in the bucket as
    /// a mark.
    pub(super) fn let_go(
        &mut self,
        storage: &dyn Storage,
        fingerprint_max: u64,
        emptied: bool,
        done: &str,
    ) -> Result<Option<sqlite::FileStat>, ReplicaError> {
        if self.needs_generation || self.live.is_none() {
            return Ok(None);
        }
        let path = self.opts.path.clone();
        let mut report = SyncReport::default();
        // Shipped and backfilled beside the read transaction first, as
        // before a sync's sync point (`sync_plan::backfill_first`): while
        // the application writes, syncs leave the WAL unbackfilled, and its
        // writers would wait for all of it under the write lock. A ship
        // that fails or finds a gap is left to the sync point.
        if matches!(self.ship(storage, &mut report), Ok(Ok(()))) {
            self.settle(true, true)?;
        }
        let Some((true, mut stat)) = self.sync_point(storage, &mut report)? else {
            return Ok(None);
        };
        // Leave the WAL empty, as the application's last close would have
        // (it deletes the WAL; walsync's connection kept it from doing so).
        // Once walsync's connections are closed, the next connection to
        // open this path rebuilds the wal-index from the WAL; a WAL still
        // holding frames, even backfilled ones, would then be applied to
        // whatever file is at the path, e.g. one renamed over the database
        // (README "Replacing a database"). Safe: read mark 0 is held, so
        // every frame is shipped and in the database file.
        let truncated = self.live_mut().handle.checkpoint_truncate()?;
        if truncated.complete() {
            // Taken again, so that the next write (which restarts the
            // empty WAL) shows as a change. A write between the TRUNCATE
            // and this stat is not in the bucket yet: not the moment.
            stat = sqlite::stat_of(&path);
            if stat.wal.is_some_and(|(len, _)| len != 0) {
                return Ok(None);
            }
        } else {
            log::debug!(
                "{}: TRUNCATE before letting go not complete: {truncated:?}",
                path.display()
            );
            // At a last close, another connection came between the probe
            // and the TRUNCATE: not the moment (without the lock its close
            // could delete a WAL walsync has not read).
            if emptied {
                return Ok(None);
            }
        }
        // Read mark 0 is held: the database file cannot change meanwhile.
        // Its fingerprint reads all of it: only up to `fingerprint_max`.
        let fingerprint = match self.db_len()? <= fingerprint_max {
            true => Some(fingerprint(self.live_mut().handle.file(), &path)?),
            false => None,
        };
        // Taken after the fingerprint's read, which lets the clock move on.
        let patience = match fingerprint {
            Some(_) => IDENTITY_PATIENCE_WITH_FINGERPRINT,
            None => IDENTITY_PATIENCE,
        };
        let live = self.live_mut();
        let identity = settled_identity(live.handle.file(), &path, live.page_size, patience)?;
        if identity.is_none() && fingerprint.is_none() {
            log::debug!(
                "{}: the file's change time is ahead of the clock: no proof of it as left",
                path.display()
            );
        }
        // The WAL that comes next, if the TRUNCATE left it empty.
        let next = wal_index(&path, &mut live.shm_file)
            .unwrap_or_else(|e| {
                log::debug!("{}: the wal-index cannot be read: {e}", path.display());
                None
            })
            .and_then(|(shm, i)| NextWal::of(shm, i));
        // Taken while walsync's connections still hold their own SHARED
        // locks, so that no moment passes without one: a last close of the
        // application in between took EXCLUSIVE, checkpointed and deleted
        // the WAL of a session that began meanwhile, and the wake could
        // not follow (a new generation). Only over an empty WAL: then the
        // file as left is what was shipped. Walsync's own closes below
        // leave the WAL as it is either way.
        let locked = truncated.complete()
            && sqlite::hold_shared(self.live_mut().handle.file(), true)
                .map_err(|e| {
                    log::debug!("{}: SHARED range not locked: {e}", path.display());
                })
                .is_ok();
        // The connections close first: until they do, a file renamed over
        // the database would share their wal-index, and the mark's upload
        // may take an outage's retries.
        let mut live = self.live.take().expect("invariant: still live");
        let shm_file = live.shm_file.take();
        let (cursor, page_size) = (live.cursor, live.page_size);
        let db = live.handle.release();
        // Only now that the connections are closed (see `Live::shm_file`).
        drop(shm_file);
        self.released = Some(Released {
            db,
            cursor,
            page_size,
            as_left: AsLeft {
                identity,
                fingerprint,
            },
            next,
            locked,
        });
        // Leave the proof in the bucket too, so that a restart (or a kill)
        // while the database is idle can resume without a full snapshot.
        // It stays true of the position it names whatever is written next.
        // Without a fingerprint there is none to leave: the stop leaves it.
        let Some(fingerprint) = fingerprint else {
            log::debug!("{} ({}): {done}", path.display(), self.opts.prefix);
            return Ok(Some(stat));
        };
        let mark = Mark {
            page_size,
            db_pages: cursor.db_pages,
            fingerprint,
            pos: cursor.pos,
        };
        let (bytes, crc) = mark.encode();
        let time_ms = self.now_ms();
        let key = keys::mark_key(&self.opts.prefix, self.generation, self.last_txid, time_ms);
        // Its fingerprint is derived from the database's content: sealed too.
        let put = self.seal().and_then(|seal| {
            let seal = seal.as_ref().map(|(k, salt)| (k, *salt));
            let (bytes, crc) = envelope_bytes(bytes, crc, seal, &key).map_err(io_err(&path))?;
            Ok(storage.put(&key, Body::Bytes(&bytes), crc)?)
        });
        if let Err(e) = put {
            log::warn!(
                "{} ({}): idle mark not written: {e}",
                path.display(),
                self.opts.prefix
            );
        }
        log::debug!("{} ({}): {done}", path.display(), self.opts.prefix);
        Ok(Some(stat))
    }

    /// Takes a released database up again. Continuity is proven, with the
    /// read transaction already held, in one of three ways: the WAL still
    /// continues the shipped position; the WAL is the one that came next
    /// after walsync emptied it (`continuity::first_wal_since`: then all of
    /// it is new, even if the application backfilled it); or the database
    /// file is still as it was when it held exactly what was shipped (its
    /// identity, else its fingerprint: then every frame of the current WAL
    /// is new). Anything else
    /// (the application appended, checkpointed and restarted the WAL
    /// meanwhile) is a gap.
    ///
    /// The read transaction comes first, before anything slower: while it
    /// has a read mark above 0 the application cannot restart the WAL.
    ///
    /// If it fails before the proof is done (e.g. out of file descriptors),
    /// the database stays released with its proof, to be woken again later:
    /// a failed attempt is no gap.
    pub(super) fn wake(&mut self, released: Released) -> Result<(), ReplicaError> {
        let Released {
            db,
            cursor: released_cursor,
            page_size,
            as_left,
            next,
            locked,
        } = released;
        let path = self.opts.path.clone();
        let keep = |db| Released {
            db,
            cursor: released_cursor,
            page_size,
            as_left,
            next,
            locked,
        };
        let mut handle = match DbHandle::connect_or_return(db, Duration::from_secs(5)) {
            Ok(h) => h,
            Err(failed) => {
                let (e, db) = *failed;
                self.released = Some(keep(db));
                return Err(e.into());
            }
        };
        let mut shm_file = None;
        let proof = handle
            .begin_read()
            .map_err(ReplicaError::from)
            .and_then(|()| {
                let mut files = WakeFiles {
                    local: LocalFiles {
                        path: &path,
                        page_size,
                        handle: &handle,
                    },
                    shm_file: &mut shm_file,
                };
                continuity::wake(released_cursor, as_left, next, &mut files)
            });
        let cursor = match proof {
            Ok(c) => c,
            Err(e) => {
                self.released = Some(keep(handle.release()));
                // Only now that the connections are closed.
                drop(shm_file);
                return Err(e);
            }
        };
        // walsync's read transaction now keeps the WAL from being deleted.
        if let Err(e) = sqlite::hold_shared(handle.file(), false) {
            log::debug!("{}: SHARED range not unlocked: {e}", path.display());
        }
        if cursor.is_some() {
            log::debug!(
                "{} ({}): woke up, continuing generation",
                path.display(),
                self.opts.prefix
            );
        }
        self.go_live(
            handle,
            page_size,
            cursor,
            continuity::CHANGED_WHILE_RELEASED,
        );
        self.live_mut().shm_file = shm_file;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::wal_file::wal_header;
    use rusqlite::Connection;

    fn commit(c: &Connection, n: usize) {
        for _ in 0..n {
            c.execute("INSERT INTO t VALUES (randomblob(300))", [])
                .unwrap();
        }
    }

    fn checkpoint(c: &Connection, mode: &str) {
        c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
            .unwrap();
    }

    /// What `FileIdentity` relies on, on this machine's filesystem: once
    /// settled, a write right after it, of the very bytes already there,
    /// changes the identity (a checkpoint writing the file, here by hand).
    #[test]
    fn a_write_right_after_a_settled_identity_always_shows() {
        let dir = crate::testing::fresh_dir("identity");
        let db = dir.join("t.db");
        let app = Connection::open(&db).unwrap();
        app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .unwrap();
        commit(&app, 20);
        checkpoint(&app, "TRUNCATE");
        let file = File::options().read(true).write(true).open(&db).unwrap();
        let mut page = vec![0u8; 4096];
        file.read_exact_at(&mut page, 4096).unwrap();
        for round in 0..30 {
            let patience = Duration::from_millis(2_100);
            let left = settled_identity(&file, &db, 4096, patience)
                .unwrap()
                .expect("settles within a granule");
            assert_eq!(identity(&file, &db, 4096).unwrap(), left, "round {round}");
            file.write_all_at(&page, 4096).unwrap();
            assert_ne!(identity(&file, &db, 4096).unwrap(), left, "round {round}");
        }
        drop((app, file));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What `first_wal_since` relies on, as real SQLite does it: after a
    /// TRUNCATE the wal-index names the next WAL's salts, which a writer
    /// that restarted a WAL before uses; a writer that never did draws its
    /// own, and then the wal-index's commit count tells whether a restart
    /// dropped commits.
    #[test]
    fn sqlite_starts_the_next_wal_as_the_wal_index_says_and_counts_every_commit() {
        let dir = crate::testing::fresh_dir("next-wal");
        let db = dir.join("t.db");
        let app = Connection::open(&db).unwrap();
        app.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x);",
        )
        .unwrap();
        commit(&app, 3);
        // One descriptor of the -shm file for the whole test, closed after
        // the connections (see `Live::shm_file`).
        let mut shm_file = None;
        let (shm, index) = wal_index(&db, &mut shm_file).unwrap().unwrap();
        let h = wal_header(&db).unwrap().unwrap();
        assert_eq!((index.salt1, index.salt2), (h.salt1, h.salt2));
        assert!(index.frames >= 3, "{index:?}");
        assert_eq!(index.page_size, h.page_size);
        // The application restarts a WAL itself once.
        checkpoint(&app, "TRUNCATE");
        commit(&app, 2);

        // walsync lets go: its TRUNCATE leaves the wal-index naming the
        // next WAL.
        let walsync = DbHandle::open(&db, Duration::from_secs(1)).unwrap();
        assert!(walsync.checkpoint_truncate().unwrap().complete());
        let next = wal_index(&db, &mut shm_file)
            .unwrap()
            .and_then(|(shm, i)| NextWal::of(shm, i))
            .unwrap();
        assert_eq!(next.shm, shm, "the same -shm file all along");
        commit(&app, 5);
        checkpoint(&app, "PASSIVE");
        let h = wal_header(&db).unwrap().unwrap();
        assert_eq!((h.salt1, h.salt2), (next.salt1, next.salt2));
        let mut slot = None;
        let mut local = WakeFiles {
            local: LocalFiles {
                path: &db,
                page_size: h.page_size,
                handle: &walsync,
            },
            shm_file: &mut slot,
        };
        assert!(continuity::first_wal_since(&mut local, next, h).unwrap());

        // A connection that never restarted a WAL draws its own salts; the
        // commit count still proves the WAL is the next one, backfilled or
        // not.
        assert!(walsync.checkpoint_truncate().unwrap().complete());
        let next = wal_index(&db, &mut shm_file)
            .unwrap()
            .and_then(|(shm, i)| NextWal::of(shm, i))
            .unwrap();
        let fresh = Connection::open(&db).unwrap();
        fresh.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
        commit(&fresh, 4);
        let h = wal_header(&db).unwrap().unwrap();
        assert_ne!((h.salt1, h.salt2), (next.salt1, next.salt2));
        assert!(continuity::first_wal_since(&mut local, next, h).unwrap());
        checkpoint(&fresh, "PASSIVE");
        assert!(continuity::first_wal_since(&mut local, next, h).unwrap());

        // Backfilled whole, then restarted by the next commit: the commits
        // before the restart are counted but gone from the WAL.
        commit(&fresh, 2);
        let h = wal_header(&db).unwrap().unwrap();
        assert_ne!(h.salt1, next.salt1);
        assert!(!continuity::first_wal_since(&mut local, next, h).unwrap());
        drop((app, fresh, walsync));
        drop((shm_file, slot));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
