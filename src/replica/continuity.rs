//! Does this WAL continue that backup? The decisions of resuming, apart
//! from the reading they need: what the bucket's listing says (the newest
//! object, the idle mark that may go with it), and, from that and what the
//! local files say, whether a start (`resume`) or a wake from an idle
//! release goes on in the same generation, and from where, or needs a new
//! generation, and why.
//!
//! The proofs are costly (a GET of the mark, a read of the whole database
//! file for its fingerprint), so the decisions ask for them one at a time
//! through `Evidence`, in the order they need them, and only when the
//! answer matters; `resume` and `release` answer from the real files and
//! bucket, the tests from tables.
//!
//! Two proofs of continuity (ARCHITECTURE.md invariant 1):
//! - the WAL continues the shipped position (same salts, and the checksum
//!   chain from the WAL's start reaches it exactly): ship from there;
//! - the WAL was restarted since (new salts, or no header) and the database
//!   file is still as it was when it held exactly what was shipped (`AsLeft`:
//!   the same fingerprint of its content, or, within one process while
//!   walsync held its lock, the same identity as the kernel keeps it,
//!   `FileIdentity`): every frame of the WAL is new, ship from its start.
//!
//! A wake from an idle release has a third: walsync let go right after
//! its own TRUNCATE checkpoint, so the history goes on at frame 1 of the
//! next WAL; if the WAL now is that one (`NextWal`), all of it is new, even
//! after the application backfilled it into the database file: ship from
//! its start.
//!
//! Anything else is a gap: a new generation with a full snapshot. While
//! walsync holds a database, `ship_from` says whether the WAL still
//! continues what was shipped (a restart is a continuation only while the
//! database file is the shipped state).

use std::time::SystemTime;

use super::error::ReplicaError;
use super::live::Cursor;
use crate::format::mark::{Fingerprint, Mark};
use crate::keys::{BackupObject, ObjectKind};
use crate::sqlite::FileId;
use crate::wal::{WalHeader, WalIndexHeader, WalPos};

/// The WAL no longer continues what was shipped: a new generation starts.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Gap {
    pub(super) reason: String,
    /// walsync's locks on the database were lost (the WAL or the -shm file
    /// vanished under it): the connections must be opened again.
    pub(super) reopen: bool,
    /// Another file was renamed over the database.
    pub(super) replaced: bool,
}

impl Gap {
    pub(super) fn new(reason: impl Into<String>) -> Gap {
        Gap {
            reason: reason.into(),
            reopen: false,
            replaced: false,
        }
    }

    pub(super) fn lost_locks(reason: impl Into<String>) -> Gap {
        Gap {
            reason: reason.into(),
            reopen: true,
            replaced: false,
        }
    }

    pub(super) fn replaced() -> Gap {
        Gap {
            reason: "the database file was replaced".into(),
            reopen: true,
            replaced: true,
        }
    }
}

/// Where shipping goes on in the current WAL (with `header`, if valid, and
/// `len` bytes), from where walsync stands (`cursor`) in a database of
/// `page_size`: at walsync's position if the WAL is the one it is in, at
/// the WAL's start if it was restarted while the database file was the
/// shipped state; `Ok(None)` if there is nothing to ship and nothing lost
/// (no valid header, and nothing of this WAL was shipped or the database
/// file is the shipped state). Anything else is a gap.
pub(super) fn ship_from(
    cursor: Cursor,
    page_size: u32,
    header: Option<WalHeader>,
    len: u64,
) -> Result<Option<WalPos>, Gap> {
    let Some(h) = header else {
        return if cursor.base_is_db_file || cursor.pos.is_none() {
            Ok(None)
        } else {
            Err(Gap::new("the WAL was truncated or overwritten"))
        };
    };
    if h.page_size != page_size {
        return Err(Gap::new(format!(
            "the WAL page size {} differs from the database's {}",
            h.page_size, page_size
        )));
    }
    match cursor.pos {
        Some(p) if p.same_wal(&h) => {
            if len < p.offset {
                return Err(Gap::new("the WAL is shorter than what was shipped"));
            }
            Ok(Some(p))
        }
        _ if cursor.base_is_db_file => Ok(Some(h.start())),
        _ => Err(Gap::new(
            "the WAL was restarted before walsync shipped all of it",
        )),
    }
}

/// What the bucket's listing of one database says about its backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BucketSummary<'a> {
    /// The snapshot or segment where the backup stands (see `summarize`).
    pub(super) newest: Option<&'a BackupObject>,
    /// The newest idle mark, by (generation, txid); the later listed wins
    /// a tie.
    pub(super) newest_mark: Option<&'a BackupObject>,
    /// The newest txid: of every snapshot and segment, and the one known
    /// before.
    pub(super) last_txid: u64,
    /// The newest time of any object, marks included (0: none).
    pub(super) last_time_ms: u64,
    /// The newest snapshot's time (0: none).
    pub(super) last_snapshot_ms: u64,
}

/// Reads a listing (`keys::parse_listing_lenient`, sorted by generation and
/// kind). `known_last_txid` is the newest txid the replica knew before
/// (0 for a new one), which the last txid never goes below. The newest
/// object is the snapshot or segment with the highest txid (the first
/// listed of equals), whatever the replica knew: a replica that starts over
/// (after a failed sync point) resumes from the newest object, never from an
/// older one whose WAL position the WAL may still continue, which would ship
/// those commits again under new txids.
pub(super) fn summarize(objects: &[BackupObject], known_last_txid: u64) -> BucketSummary<'_> {
    let mut s = BucketSummary {
        newest: None,
        newest_mark: None,
        last_txid: known_last_txid,
        last_time_ms: 0,
        last_snapshot_ms: 0,
    };
    for o in objects {
        let (txid, time) = (o.kind.txid(), o.kind.time_ms());
        s.last_time_ms = s.last_time_ms.max(time);
        if let ObjectKind::Mark { .. } = o.kind {
            if s.newest_mark
                .is_none_or(|m| (m.generation, m.kind.txid()) <= (o.generation, txid))
            {
                s.newest_mark = Some(o);
            }
            continue;
        }
        s.last_txid = s.last_txid.max(txid);
        if s.newest.is_none_or(|n| txid > n.kind.txid()) {
            s.newest = Some(o);
        }
        if let ObjectKind::Snapshot { time_ms, .. } = o.kind {
            s.last_snapshot_ms = s.last_snapshot_ms.max(time_ms);
        }
    }
    s
}

impl<'a> BucketSummary<'a> {
    /// The idle mark that may prove the database file is as walsync left
    /// it: the newest mark, if it is in the newest object's generation and
    /// at the newest txid (left after everything in the bucket was shipped).
    pub(super) fn mark_of_newest(&self) -> Option<&'a BackupObject> {
        let (o, m) = (self.newest?, self.newest_mark?);
        (m.generation == o.generation && m.kind.txid() == self.last_txid).then_some(m)
    }
}

/// Which proof of continuity held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Continuity {
    /// The WAL continues the shipped position.
    WalContinues,
    /// The WAL was restarted, and the database file is as walsync left it.
    FileAsLeft,
}

impl Continuity {
    /// Where walsync stands after this proof, at the shipped `pos` with
    /// `db_pages`: after `FileAsLeft` the database file is the shipped state
    /// (and a restarted WAL a continuation).
    pub(super) fn cursor(self, pos: Option<WalPos>, db_pages: Option<u32>) -> Cursor {
        Cursor {
            pos,
            base_is_db_file: self == Continuity::FileAsLeft,
            db_pages,
        }
    }
}

/// What the local files say, asked for only when needed (with walsync's
/// read transaction open).
pub(super) trait LocalEvidence {
    /// Whether the current WAL provably continues `pos`: same salts, and
    /// the checksum chain from the WAL's start reaches `pos` exactly.
    fn wal_continues(&mut self, pos: WalPos) -> Result<bool, ReplicaError>;
    /// The current WAL's header, if it has a valid one.
    fn wal_header(&mut self) -> Result<Option<WalHeader>, ReplicaError>;
    /// The database file's fingerprint (reads all of it).
    fn fingerprint(&mut self) -> Result<Fingerprint, ReplicaError>;
    /// The database file's identity now (a `stat` and its first page).
    fn identity(&mut self) -> Result<FileIdentity, ReplicaError>;
}

/// A WAL position a backup object records, with the database size (pages)
/// there when known.
pub(super) type ShippedPos = (WalPos, Option<u32>);

/// What the bucket says beyond its listing, asked for only when needed.
pub(super) trait BucketEvidence {
    /// Whether `newest` is sealed (known from its first bytes, with or
    /// without its key); `None` if it cannot be read.
    fn sealed(&mut self, newest: &BackupObject) -> Result<Option<bool>, ReplicaError>;
    /// The WAL position (and database size) `newest` records; `None` if it
    /// records none, or cannot be read (a new generation does not need it).
    fn shipped_pos(&mut self, newest: &BackupObject) -> Result<Option<ShippedPos>, ReplicaError>;
    /// The idle mark's contents; `None` if it cannot be read.
    fn mark(&mut self, mark: &BackupObject) -> Result<Option<Mark>, ReplicaError>;
}

/// Whether the WAL with `header` is no longer the one `pos` is in (new
/// salts, or no header): then every frame in it came after `pos`. A WAL
/// with the same salts that does not continue `pos` proves nothing.
pub(super) fn wal_restarted_since(header: Option<WalHeader>, pos: Option<WalPos>) -> bool {
    match (header, pos) {
        (Some(h), Some(p)) => !p.same_wal(&h),
        _ => true,
    }
}

/// A database file as the kernel keeps it: which file, its size, its
/// modification and change times (ns), and a CRC32 of its first page.
///
/// Any write to the file moves its change time (ctime), which nobody can
/// set back (`utimensat` sets mtime and moves ctime to now), to the
/// kernel's coarse clock at the write, cut to the filesystem's timestamp
/// granularity. Two writes within one granule can leave the same ctime, so
/// an identity proves "nothing written since" only when it was taken once
/// the coarse clock had gone a granule past the file's ctime
/// (`until_settled`): every later write then gives a later ctime. It is the
/// cheap proof that the file is as walsync left it (no read of the whole
/// file), kept in memory only: across a restart of walsync (a reboot, a
/// clock set back) the fingerprint of the content decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileIdentity {
    pub(super) file: FileId,
    pub(super) len: u64,
    pub(super) mtime_ns: i128,
    pub(super) ctime_ns: i128,
    /// CRC32 of the first page (the header: page count, change counter).
    pub(super) head_crc: u32,
}

/// The widest timestamp granule assumed for a file whose ctime is
/// `ctime_ns`: 2 s when it is a whole second (ext4 with 128-byte inodes
/// and other filesystems with whole-second times have 1 s, FAT 2 s), else
/// 10 ms (exFAT; ns, 100 ns and µs filesystems are finer).
const WHOLE_SECOND_GRANULE_NS: i128 = 2_000_000_000;
const FINE_GRANULE_NS: i128 = 10_000_000;

/// How long (ns) the coarse clock, at `coarse_now_ns`, must still go on
/// before an identity with ctime `ctime_ns` proves that any later write
/// shows (0: it does now): until it is a granule past the ctime, so that a
/// later write's time, cut to the filesystem's granularity, is after it.
pub(super) fn until_settled(ctime_ns: i128, coarse_now_ns: i128) -> u64 {
    let granule = if ctime_ns.rem_euclid(1_000_000_000) == 0 {
        WHOLE_SECOND_GRANULE_NS
    } else {
        FINE_GRANULE_NS
    };
    let wait = (ctime_ns + granule - coarse_now_ns).max(0);
    u64::try_from(wait).unwrap_or(u64::MAX)
}

/// What proves that the database file is still as walsync left it, when it
/// held exactly what was shipped: its identity (taken settled, see
/// `FileIdentity`), its content's fingerprint, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AsLeft {
    pub(super) identity: Option<FileIdentity>,
    pub(super) fingerprint: Option<Fingerprint>,
}

impl AsLeft {
    /// The fingerprint alone (an idle mark's).
    pub(super) fn content(fingerprint: Fingerprint) -> AsLeft {
        AsLeft {
            identity: None,
            fingerprint: Some(fingerprint),
        }
    }
}

/// The second proof: the WAL was restarted since `pos`, so all of it is
/// new, and the database file is still as `left` says it was when it held
/// exactly what was shipped: the same identity (a `stat`), else the same
/// fingerprint (a read of the whole file, when one was taken). Asked only
/// after a restart; the fingerprint only when the identity did not prove it.
pub(super) fn file_as_left(
    local: &mut impl LocalEvidence,
    pos: Option<WalPos>,
    left: AsLeft,
) -> Result<bool, ReplicaError> {
    if !wal_restarted_since(local.wal_header()?, pos) {
        return Ok(false);
    }
    if let Some(identity) = left.identity {
        if local.identity()? == identity {
            return Ok(true);
        }
    }
    match left.fingerprint {
        Some(f) => Ok(local.fingerprint()? == f),
        None => Ok(false),
    }
}

/// How a start goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resume {
    /// In `generation`, from `cursor`.
    Continue {
        generation: u64,
        cursor: Cursor,
        proof: Continuity,
    },
    /// With a new generation and a full snapshot.
    NewGeneration { why: &'static str },
}

/// Why a start needs a new generation when the bucket holds a backup.
pub(super) const CHANGED_WHILE_STOPPED: &str =
    "the WAL does not continue the backup in the bucket \
     (the database changed while walsync was not running)";
/// Why a start needs a new generation when the bucket holds none.
pub(super) const NO_BACKUP: &str = "no backup in the bucket yet";
/// Why a start or a sync needs a new generation: objects are sealed now,
/// the generation's were not, or the other way round.
pub(super) const ENCRYPTION_ON: &str = "encryption was turned on";
pub(super) const ENCRYPTION_OFF: &str = "encryption was turned off";

/// Whether objects written now (`sealing`: with a key) may go on in a
/// generation whose objects are sealed (`generation_sealed`), and if not,
/// why: a generation is all sealed or all plain, so that turning
/// encryption on leaves no plain object after the switch (and the first
/// sealed object is a snapshot: nothing of the database is in the clear
/// from there on). A new key (rotation) goes on: each object names its own.
pub(super) fn sealing_changed(generation_sealed: bool, sealing: bool) -> Option<&'static str> {
    match (generation_sealed, sealing) {
        (false, true) => Some(ENCRYPTION_ON),
        (true, false) => Some(ENCRYPTION_OFF),
        _ => None,
    }
}

/// Why a wake needs a new generation.
pub(super) const CHANGED_WHILE_RELEASED: &str =
    "the database changed while walsync had let go of it (idle) in a way it cannot follow";

/// Does the database (page size `page_size`, its objects written sealed
/// or not: `sealing`) continue the backup the bucket holds? Not if the
/// newest object is sealed and objects are not any more, or the other way
/// round (`sealing_changed`). Then the newest object's position: does the
/// WAL continue it; if not, the idle mark of the newest txid: same page
/// size, and the file as it records.
pub(super) fn resume(
    bucket: &BucketSummary<'_>,
    page_size: u32,
    sealing: bool,
    evidence: &mut (impl BucketEvidence + LocalEvidence),
) -> Result<Resume, ReplicaError> {
    let Some(newest) = bucket.newest else {
        return Ok(Resume::NewGeneration { why: NO_BACKUP });
    };
    if let Some(why) = evidence
        .sealed(newest)?
        .and_then(|sealed| sealing_changed(sealed, sealing))
    {
        return Ok(Resume::NewGeneration { why });
    }
    if let Some((pos, db_pages)) = evidence.shipped_pos(newest)? {
        if evidence.wal_continues(pos)? {
            let proof = Continuity::WalContinues;
            return Ok(Resume::Continue {
                generation: newest.generation,
                cursor: proof.cursor(Some(pos), db_pages),
                proof,
            });
        }
    }
    // The WAL was restarted, but the database file may still be exactly
    // what was shipped when walsync last let go of it (an idle mark).
    if let Some(m) = bucket.mark_of_newest() {
        if let Some(mark) = evidence.mark(m)? {
            if mark.page_size == page_size
                && file_as_left(evidence, mark.pos, AsLeft::content(mark.fingerprint))?
            {
                let proof = Continuity::FileAsLeft;
                return Ok(Resume::Continue {
                    generation: newest.generation,
                    cursor: proof.cursor(mark.pos, mark.db_pages),
                    proof,
                });
            }
        }
    }
    Ok(Resume::NewGeneration {
        why: CHANGED_WHILE_STOPPED,
    })
}

/// Which `-shm` file: a file deleted and created again (the application's
/// last connection closed, and a new one opened) is another one, even if it
/// gets the same inode number back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ShmId {
    pub(super) file: FileId,
    pub(super) born: Option<SystemTime>,
}

/// What the wal-index said when walsync let go, right after its TRUNCATE
/// checkpoint emptied the WAL (`frames` 0): which WAL comes next.
///
/// SQLite's checkpoint that restarts the WAL (`walRestartHdr`) chooses the
/// next WAL's salts (salt-1 plus one, a new random salt-2) and stores them
/// in the wal-index; a writer starting frame 1 uses them, unless it never
/// restarted a WAL itself (its checkpoint sequence is 0: then it draws new
/// random salts). Every later restart changes both salts again. And the
/// wal-index counts commits (`iChange`), not restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NextWal {
    pub(super) page_size: u32,
    pub(super) salt1: u32,
    pub(super) salt2: u32,
    /// The wal-index's commit count then.
    pub(super) commits: u32,
    /// The `-shm` file the count is in.
    pub(super) shm: ShmId,
}

impl NextWal {
    /// What the wal-index `index` of `shm` says, if it is an empty WAL's.
    pub(super) fn of(shm: ShmId, index: WalIndexHeader) -> Option<NextWal> {
        (index.frames == 0).then_some(NextWal {
            page_size: index.page_size,
            salt1: index.salt1,
            salt2: index.salt2,
            commits: index.commits,
            shm,
        })
    }
}

/// What else a wake asks of the local files.
pub(super) trait WakeEvidence: LocalEvidence {
    /// The wal-index header of the `-shm` file now, and which file that
    /// is; `None` if there is none or it cannot be read whole.
    fn wal_index(&mut self) -> Result<Option<(ShmId, WalIndexHeader)>, ReplicaError>;
    /// The commit frames among the first `frames` frames of the WAL with
    /// `header`, if all of them are valid; `None` otherwise.
    fn commits_in(&mut self, header: WalHeader, frames: u32) -> Result<Option<u64>, ReplicaError>;
}

/// The third proof: the current WAL (with `header`) is the one that came
/// next after walsync let go (`next`), so every commit since is in it from
/// frame 1. Either it has the salts the wal-index chose for it, or the
/// same `-shm` file has counted exactly as many commits since as the WAL
/// holds: a restart would have dropped the commits before it from the WAL,
/// but not from the count.
///
/// The count proves nothing if the `-shm` file was rebuilt in place: when
/// every connection has closed but the last close could not delete the
/// file (walsync's lock), the next open runs SQLite's recovery, which sets
/// the count to 0 (`walIndexRecover`) and keeps the file. A count `j`
/// since the rebuild, over a WAL holding the `r` commits recovered plus
/// those `j`, matches only if the count at let-go `c` was such that
/// `j - c = r + j`; without wrapping around that is `c = r = 0`. So the
/// count is taken only when it was not 0 at let-go and has not gone
/// below it since (a real wrap, after 2^32 commits, is refused too): a
/// rebuild then never matches, and the fingerprint decides instead.
pub(super) fn first_wal_since(
    local: &mut impl WakeEvidence,
    next: NextWal,
    header: WalHeader,
) -> Result<bool, ReplicaError> {
    if header.page_size != next.page_size {
        return Ok(false);
    }
    if (header.salt1, header.salt2) == (next.salt1, next.salt2) {
        return Ok(true);
    }
    let Some((shm, index)) = local.wal_index()? else {
        return Ok(false);
    };
    if shm != next.shm
        || (index.salt1, index.salt2) != (header.salt1, header.salt2)
        || index.frames == 0
    {
        return Ok(false);
    }
    let Some(since) = index.commits.checked_sub(next.commits) else {
        return Ok(false);
    };
    if next.commits == 0 {
        return Ok(false);
    }
    Ok(local.commits_in(header, index.frames)? == Some(u64::from(since)))
}

/// The `-shm` file and the WAL (its salts) that walsync's connections used
/// when it found another file renamed over the database it held: until
/// every connection that has them mapped closes, the application's
/// connections to the new file share the old file's wal-index (README
/// "Replacing a database").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StaleIndex {
    pub(super) shm: Option<ShmId>,
    pub(super) wal_salts: Option<(u32, u32)>,
    /// The wal-index's commit count (`iChange`) then.
    pub(super) commits: Option<u32>,
}

/// Whether the file renamed over the database may be taken up now without
/// reading or checkpointing it through the old file's wal-index or WAL
/// (`stale`): the old WAL's frames are gone (no WAL with its salts), and
/// no connection shares the old wal-index any more: the `-shm` file is
/// gone or another one (the application's last close deleted it), or no
/// process has it open (the next opener rebuilds it), or it was rebuilt in
/// place since (its commit count, which a rebuild sets to 0, went below
/// what it was: as in `first_wal_since`). `shm_now`, `others_attached` and
/// `commits_now` are of the `-shm` file at the path now.
pub(super) fn stale_index_gone(
    stale: StaleIndex,
    shm_now: Option<ShmId>,
    others_attached: Option<bool>,
    commits_now: Option<u32>,
    wal_salts_now: Option<(u32, u32)>,
) -> bool {
    let old_wal_gone = stale.wal_salts.is_none() || wal_salts_now != stale.wal_salts;
    let rebuilt = matches!((stale.commits, commits_now), (Some(then), Some(now)) if now < then);
    let index_gone = match (stale.shm, shm_now) {
        (_, None) => true,
        (Some(old), Some(now)) if old != now => true,
        _ => others_attached == Some(false) || rebuilt,
    };
    old_wal_gone && index_gone
}

/// Does the database continue what was shipped when walsync released it
/// (`left`, with what proved the file as it was then, `as_left`, and `next`
/// if the WAL was empty then)? `None`: a new generation
/// (`CHANGED_WHILE_RELEASED`).
///
/// A WAL the application made afresh after all its connections closed
/// (checkpoint sequence 0, new salts) proves nothing by itself, even under
/// walsync's lock on SQLite's SHARED range (`Released::locked`): a
/// `TRUNCATE` checkpoint by one connection followed by a commit of another
/// that never restarted a WAL itself also gives sequence 0, and the commits
/// before the `TRUNCATE` are then in the database file only. What the lock
/// gives is that the application's last close cannot checkpoint, so after
/// a short session the file is still as left and its fingerprint proves
/// that every frame of the WAL is new (`file_as_left`).
pub(super) fn wake(
    left: Cursor,
    as_left: AsLeft,
    next: Option<NextWal>,
    local: &mut impl WakeEvidence,
) -> Result<Option<Cursor>, ReplicaError> {
    let continues = match left.pos {
        Some(p) => local.wal_continues(p)?,
        None => false,
    };
    if continues {
        return Ok(Some(
            Continuity::WalContinues.cursor(left.pos, left.db_pages),
        ));
    }
    if let Some(next) = next {
        if let Some(h) = local.wal_header()? {
            if first_wal_since(local, next, h)? {
                let at = Some(h.start());
                return Ok(Some(Continuity::WalContinues.cursor(at, left.db_pages)));
            }
        }
    }
    if file_as_left(local, left.pos, as_left)? {
        return Ok(Some(Continuity::FileAsLeft.cursor(left.pos, left.db_pages)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Checksum;

    const PAGE: u32 = 4096;

    fn obj(generation: u64, kind: ObjectKind) -> BackupObject {
        BackupObject {
            generation,
            kind,
            key: format!("{generation}/{kind:?}"),
            size: 1,
        }
    }

    fn snap(generation: u64, txid: u64, time_ms: u64) -> BackupObject {
        obj(generation, ObjectKind::Snapshot { txid, time_ms })
    }

    fn seg(generation: u64, first: u64, last: u64, time_ms: u64) -> BackupObject {
        obj(
            generation,
            ObjectKind::Segment {
                first_txid: first,
                last_txid: last,
                first_time_ms: time_ms,
                last_time_ms: time_ms,
            },
        )
    }

    fn mark(generation: u64, txid: u64, time_ms: u64) -> BackupObject {
        obj(generation, ObjectKind::Mark { txid, time_ms })
    }

    /// Listed as `keys::parse_listing_lenient` lists: by generation, then
    /// kind.
    fn listing(mut objects: Vec<BackupObject>) -> Vec<BackupObject> {
        objects.sort_by_key(|o| (o.generation, o.kind));
        objects
    }

    fn pos(salt1: u32, offset: u64) -> WalPos {
        WalPos {
            salt1,
            salt2: 9,
            offset,
            checksum: Checksum(offset as u32, 1),
        }
    }

    fn header(salt1: u32) -> WalHeader {
        WalHeader {
            big_endian: false,
            page_size: PAGE,
            checkpoint_seq: 0,
            salt1,
            salt2: 9,
            checksum: Checksum(0, 0),
        }
    }

    /// A file identity told apart by its ctime.
    fn ident(ctime_ns: i128) -> FileIdentity {
        FileIdentity {
            file: FileId { dev: 1, ino: 2 },
            len: 4096,
            mtime_ns: 5,
            ctime_ns,
            head_crc: 6,
        }
    }

    fn print(n: u64) -> Fingerprint {
        Fingerprint {
            len: n,
            crc: n as u32,
            mix: n,
        }
    }

    /// Answers from fixed values and records what was asked.
    #[derive(Default)]
    struct Table {
        /// The position each object key records.
        positions: Vec<(String, Option<ShippedPos>)>,
        /// The mark each mark key holds (`None`: unreadable).
        marks: Vec<(String, Option<Mark>)>,
        /// The positions the current WAL continues.
        continues: Vec<WalPos>,
        header: Option<WalHeader>,
        fingerprint: u64,
        /// The file's identity now (its ctime, see `ident`).
        identity: i128,
        /// The wal-index now.
        index: Option<(ShmId, WalIndexHeader)>,
        /// The commits among the frames asked about (`None`: not all valid).
        commits: Option<u64>,
        /// Whether the newest object is sealed (`None`: unreadable).
        sealed: Option<bool>,
        asked: Vec<&'static str>,
    }

    impl WakeEvidence for Table {
        fn wal_index(&mut self) -> Result<Option<(ShmId, WalIndexHeader)>, ReplicaError> {
            self.asked.push("wal_index");
            Ok(self.index)
        }
        fn commits_in(&mut self, h: WalHeader, frames: u32) -> Result<Option<u64>, ReplicaError> {
            self.asked.push("commits_in");
            let index = self.index.expect("asked only with a wal-index").1;
            assert_eq!(
                (h.salt1, h.salt2, frames),
                (index.salt1, index.salt2, index.frames)
            );
            Ok(self.commits)
        }
    }

    impl LocalEvidence for Table {
        fn wal_continues(&mut self, pos: WalPos) -> Result<bool, ReplicaError> {
            self.asked.push("wal_continues");
            Ok(self.continues.contains(&pos))
        }
        fn wal_header(&mut self) -> Result<Option<WalHeader>, ReplicaError> {
            self.asked.push("wal_header");
            Ok(self.header)
        }
        fn fingerprint(&mut self) -> Result<Fingerprint, ReplicaError> {
            self.asked.push("fingerprint");
            Ok(print(self.fingerprint))
        }
        fn identity(&mut self) -> Result<FileIdentity, ReplicaError> {
            self.asked.push("identity");
            Ok(ident(self.identity))
        }
    }

    impl BucketEvidence for Table {
        // Not in `asked`: it is asked first whenever there is a backup (see
        // `resume_starts_a_new_generation_when_encryption_was_turned_on_or_off`).
        fn sealed(&mut self, _newest: &BackupObject) -> Result<Option<bool>, ReplicaError> {
            Ok(self.sealed)
        }
        fn shipped_pos(
            &mut self,
            newest: &BackupObject,
        ) -> Result<Option<ShippedPos>, ReplicaError> {
            self.asked.push("shipped_pos");
            Ok(self
                .positions
                .iter()
                .find(|(k, _)| *k == newest.key)
                .and_then(|(_, p)| *p))
        }
        fn mark(&mut self, mark: &BackupObject) -> Result<Option<Mark>, ReplicaError> {
            self.asked.push("mark");
            Ok(self
                .marks
                .iter()
                .find(|(k, _)| *k == mark.key)
                .and_then(|(_, m)| *m))
        }
    }

    #[test]
    fn the_newest_object_and_mark_are_read_from_the_listing() {
        let objects = listing(vec![
            snap(1, 1, 100),
            seg(1, 2, 5, 150),
            mark(1, 5, 160),
            snap(6, 6, 200),
            seg(6, 7, 9, 250),
            snap(6, 9, 300),
            mark(6, 9, 310),
            mark(6, 9, 320),
        ]);
        let s = summarize(&objects, 0);
        // The first object listed with the newest txid: the snapshot at 9
        // (snapshots are listed before segments, and the segment ending at
        // 9 does not go past it).
        assert_eq!(s.newest.map(|o| &o.key), Some(&snap(6, 9, 300).key));
        assert_eq!(s.newest_mark.map(|o| o.kind.time_ms()), Some(320));
        assert_eq!(s.last_txid, 9);
        assert_eq!(s.last_time_ms, 320);
        assert_eq!(s.last_snapshot_ms, 300);
        assert_eq!(s.mark_of_newest().map(|o| o.kind.time_ms()), Some(320));

        let empty = summarize(&[], 0);
        assert_eq!(empty.newest, None);
        assert_eq!((empty.last_txid, empty.last_time_ms), (0, 0));
        assert_eq!(empty.mark_of_newest(), None);

        let only_marks = listing(vec![mark(1, 4, 50)]);
        let s = summarize(&only_marks, 0);
        assert_eq!((s.newest, s.last_txid, s.last_time_ms), (None, 0, 50));
        assert_eq!(s.mark_of_newest(), None, "no object to be the mark of");
    }

    #[test]
    fn a_mark_counts_only_in_the_newest_generation_at_the_newest_txid() {
        // (objects) -> the mark used to prove the file as left, by time.
        let rows: Vec<(Vec<BackupObject>, Option<u64>)> = vec![
            (vec![snap(1, 1, 10), mark(1, 1, 11)], Some(11)),
            // Commits were shipped after the mark.
            (vec![snap(1, 1, 10), mark(1, 1, 11), seg(1, 2, 2, 12)], None),
            // The mark is of an older generation.
            (vec![snap(1, 1, 10), mark(1, 1, 11), snap(2, 2, 12)], None),
            // The newest generation's mark, not an older one's.
            (
                vec![
                    snap(1, 1, 10),
                    mark(1, 1, 11),
                    snap(2, 2, 12),
                    mark(2, 2, 13),
                ],
                Some(13),
            ),
            // Two marks at the same txid: the later listed (newer) one.
            (
                vec![snap(1, 1, 10), mark(1, 1, 11), mark(1, 1, 12)],
                Some(12),
            ),
        ];
        for (objects, want) in rows {
            let objects = listing(objects);
            let s = summarize(&objects, 0);
            assert_eq!(
                s.mark_of_newest().map(|m| m.kind.time_ms()),
                want,
                "{objects:?}"
            );
        }
    }

    #[test]
    fn a_fresh_start_takes_the_newest_txid_whatever_the_listing() {
        // Property: with no txid known before, the newest object has the
        // largest txid of every snapshot and segment, and is the first of
        // them listed with it; the mark is the largest (generation, txid).
        let mut rng = crate::testing::Rng(0x5eed_1234);
        for _ in 0..crate::testing::fuzz_iters(500) {
            let mut objects = Vec::new();
            for _ in 0..rng.below(12) {
                let generation = 1 + rng.below(3) as u64;
                let txid = 1 + rng.below(20) as u64;
                let time = rng.below(1000) as u64;
                objects.push(match rng.below(3) {
                    0 => snap(generation, txid, time),
                    1 => seg(generation, txid, txid + rng.below(3) as u64, time),
                    _ => mark(generation, txid, time),
                });
            }
            let objects = listing(objects);
            let s = summarize(&objects, 0);
            let shipped = || {
                objects
                    .iter()
                    .filter(|o| !matches!(o.kind, ObjectKind::Mark { .. }))
            };
            let max = shipped().map(|o| o.kind.txid()).max();
            assert_eq!(s.newest.map(|o| o.kind.txid()), max, "{objects:?}");
            assert_eq!(
                s.newest.map(|o| &o.key),
                shipped()
                    .find(|o| Some(o.kind.txid()) == max)
                    .map(|o| &o.key),
                "{objects:?}"
            );
            assert_eq!(s.last_txid, max.unwrap_or(0), "{objects:?}");
            let newest_mark = objects
                .iter()
                .filter(|o| matches!(o.kind, ObjectKind::Mark { .. }))
                .map(|o| (o.generation, o.kind.txid()))
                .max();
            assert_eq!(
                s.newest_mark.map(|o| (o.generation, o.kind.txid())),
                newest_mark,
                "{objects:?}"
            );
        }
    }

    #[test]
    fn a_known_txid_never_makes_an_older_object_the_newest() {
        // A replica starting over knows the txid it shipped last; the newest
        // object is still the one with the highest txid, never the first
        // listed.
        let objects = listing(vec![snap(1, 1, 10), seg(1, 2, 4, 20)]);
        for known in [0, 3, 4, 9] {
            let s = summarize(&objects, known);
            assert_eq!(s.newest.map(|o| o.kind.txid()), Some(4), "known {known}");
            assert_eq!(s.last_txid, known.max(4), "known {known}");
        }
    }

    #[test]
    fn a_restarted_wal_is_one_with_other_salts_or_no_header() {
        let rows = [
            ((Some(header(1)), Some(pos(1, 32))), false),
            ((Some(header(2)), Some(pos(1, 32))), true),
            ((None, Some(pos(1, 32))), true),
            ((Some(header(1)), None), true),
            ((None, None), true),
        ];
        for ((h, p), want) in rows {
            assert_eq!(wal_restarted_since(h, p), want, "{h:?} {p:?}");
        }
    }

    fn the_mark(p: Option<WalPos>, page_size: u32, fingerprint: u64) -> Mark {
        Mark {
            page_size,
            db_pages: Some(7),
            fingerprint: print(fingerprint),
            pos: p,
        }
    }

    #[test]
    fn resume_continues_the_wal_or_the_file_as_left_or_starts_a_new_generation() {
        let objects = listing(vec![snap(1, 1, 10), seg(1, 2, 3, 20), mark(1, 3, 30)]);
        let newest = seg(1, 2, 3, 20).key;
        let the_mark_key = mark(1, 3, 30).key;
        let shipped = pos(1, 1000);
        struct Row {
            what: &'static str,
            position: Option<(WalPos, Option<u32>)>,
            continues: bool,
            mark: Option<Mark>,
            header: Option<WalHeader>,
            fingerprint: u64,
            want: Resume,
            asked: &'static [&'static str],
        }
        let at_pos = Resume::Continue {
            generation: 1,
            cursor: Cursor {
                pos: Some(shipped),
                base_is_db_file: false,
                db_pages: Some(5),
            },
            proof: Continuity::WalContinues,
        };
        let as_left = Resume::Continue {
            generation: 1,
            cursor: Cursor {
                pos: Some(shipped),
                base_is_db_file: true,
                db_pages: Some(7),
            },
            proof: Continuity::FileAsLeft,
        };
        let changed = Resume::NewGeneration {
            why: CHANGED_WHILE_STOPPED,
        };
        let rows = [
            Row {
                what: "the WAL continues: the mark is not even read",
                position: Some((shipped, Some(5))),
                continues: true,
                mark: Some(the_mark(Some(shipped), PAGE, 42)),
                header: Some(header(1)),
                fingerprint: 42,
                want: at_pos,
                asked: &["shipped_pos", "wal_continues"],
            },
            Row {
                what: "restarted WAL, file as the mark left it",
                position: Some((shipped, Some(5))),
                continues: false,
                mark: Some(the_mark(Some(shipped), PAGE, 42)),
                header: Some(header(2)),
                fingerprint: 42,
                want: as_left,
                asked: &[
                    "shipped_pos",
                    "wal_continues",
                    "mark",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "WAL truncated (no header), file as left",
                position: Some((shipped, Some(5))),
                continues: false,
                mark: Some(the_mark(Some(shipped), PAGE, 42)),
                header: None,
                fingerprint: 42,
                want: as_left,
                asked: &[
                    "shipped_pos",
                    "wal_continues",
                    "mark",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "restarted WAL, file changed",
                position: Some((shipped, Some(5))),
                continues: false,
                mark: Some(the_mark(Some(shipped), PAGE, 42)),
                header: Some(header(2)),
                fingerprint: 43,
                want: changed,
                asked: &[
                    "shipped_pos",
                    "wal_continues",
                    "mark",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "same salts but not continuing: proves nothing, no fingerprint read",
                position: Some((shipped, Some(5))),
                continues: false,
                mark: Some(the_mark(Some(shipped), PAGE, 42)),
                header: Some(header(1)),
                fingerprint: 42,
                want: changed,
                asked: &["shipped_pos", "wal_continues", "mark", "wal_header"],
            },
            Row {
                what: "the mark is of another page size",
                position: Some((shipped, Some(5))),
                continues: false,
                mark: Some(the_mark(Some(shipped), 1024, 42)),
                header: Some(header(2)),
                fingerprint: 42,
                want: changed,
                asked: &["shipped_pos", "wal_continues", "mark"],
            },
            Row {
                what: "the mark cannot be read",
                position: Some((shipped, Some(5))),
                continues: false,
                mark: None,
                header: Some(header(2)),
                fingerprint: 42,
                want: changed,
                asked: &["shipped_pos", "wal_continues", "mark"],
            },
            Row {
                what: "the newest object records no position (or is unreadable): only the mark",
                position: None,
                continues: true,
                mark: Some(the_mark(Some(shipped), PAGE, 42)),
                header: Some(header(2)),
                fingerprint: 42,
                want: as_left,
                asked: &["shipped_pos", "mark", "wal_header", "fingerprint"],
            },
        ];
        for row in rows {
            let mut t = Table {
                positions: vec![(newest.clone(), row.position)],
                marks: vec![(the_mark_key.clone(), row.mark)],
                continues: if row.continues { vec![shipped] } else { vec![] },
                header: row.header,
                fingerprint: row.fingerprint,
                ..Table::default()
            };
            let got = resume(&summarize(&objects, 0), PAGE, false, &mut t).unwrap();
            assert_eq!(got, row.want, "{}", row.what);
            assert_eq!(t.asked, row.asked, "{}: what was read, in order", row.what);
        }
    }

    #[test]
    fn resume_without_a_backup_starts_a_new_generation_without_asking_anything() {
        let objects = listing(vec![mark(1, 1, 10)]);
        let s = summarize(&objects, 0);
        let mut t = Table::default();
        let got = resume(&s, PAGE, false, &mut t).unwrap();
        assert_eq!(got, Resume::NewGeneration { why: NO_BACKUP });
        assert!(t.asked.is_empty());
    }

    #[test]
    fn resume_starts_a_new_generation_when_encryption_was_turned_on_or_off() {
        // (generation sealed, sealing now) -> why a new generation
        let rows = [
            ((false, false), None),
            ((true, true), None),
            ((false, true), Some(ENCRYPTION_ON)),
            ((true, false), Some(ENCRYPTION_OFF)),
        ];
        for ((was, now), want) in rows {
            assert_eq!(sealing_changed(was, now), want, "{was} {now}");
        }
        let objects = listing(vec![snap(1, 1, 10), seg(1, 2, 3, 20), mark(1, 3, 30)]);
        let newest = seg(1, 2, 3, 20).key;
        let shipped = pos(1, 1000);
        let at_pos = Resume::Continue {
            generation: 1,
            cursor: Cursor {
                pos: Some(shipped),
                base_is_db_file: false,
                db_pages: Some(5),
            },
            proof: Continuity::WalContinues,
        };
        // (newest object sealed (None: unreadable), sealing now) -> resume, what was read
        type Row = ((Option<bool>, bool), Resume, &'static [&'static str]);
        let rows: [Row; 6] = [
            (
                (Some(false), false),
                at_pos,
                &["shipped_pos", "wal_continues"],
            ),
            (
                (Some(true), true),
                at_pos,
                &["shipped_pos", "wal_continues"],
            ),
            (
                (Some(false), true),
                Resume::NewGeneration { why: ENCRYPTION_ON },
                &[],
            ),
            (
                (Some(true), false),
                Resume::NewGeneration {
                    why: ENCRYPTION_OFF,
                },
                &[],
            ),
            // Not known (the object cannot be read): the other proofs decide.
            ((None, true), at_pos, &["shipped_pos", "wal_continues"]),
            ((None, false), at_pos, &["shipped_pos", "wal_continues"]),
        ];
        for ((sealed, sealing), want, asked) in rows {
            let mut t = Table {
                positions: vec![(newest.clone(), Some((shipped, Some(5))))],
                continues: vec![shipped],
                sealed,
                ..Table::default()
            };
            let got = resume(&summarize(&objects, 0), PAGE, sealing, &mut t).unwrap();
            assert_eq!(got, want, "{sealed:?} {sealing}");
            assert_eq!(t.asked, asked, "{sealed:?} {sealing}");
        }
    }

    #[test]
    fn a_mark_of_an_older_txid_is_never_read() {
        let objects = listing(vec![snap(1, 1, 10), mark(1, 1, 11), seg(1, 2, 2, 12)]);
        let s = summarize(&objects, 0);
        let mut t = Table::default();
        let got = resume(&s, PAGE, false, &mut t).unwrap();
        assert_eq!(
            got,
            Resume::NewGeneration {
                why: CHANGED_WHILE_STOPPED
            }
        );
        assert_eq!(t.asked, ["shipped_pos"]);
    }

    #[test]
    fn wake_continues_the_wal_or_the_file_as_left() {
        let left_at = pos(1, 500);
        let left = |p: Option<WalPos>| Cursor {
            pos: p,
            base_is_db_file: true,
            db_pages: Some(3),
        };
        // (position left, WAL continues it, header now, fingerprint now)
        //   -> cursor's base_is_db_file (None: new generation), questions.
        type Row = (
            Option<WalPos>,
            bool,
            Option<WalHeader>,
            u64,
            Option<bool>,
            &'static [&'static str],
        );
        let rows: [Row; 7] = [
            (
                Some(left_at),
                true,
                Some(header(1)),
                1,
                Some(false),
                &["wal_continues"],
            ),
            (
                Some(left_at),
                false,
                Some(header(2)),
                1,
                Some(true),
                &["wal_continues", "wal_header", "fingerprint"],
            ),
            (
                Some(left_at),
                false,
                None,
                1,
                Some(true),
                &["wal_continues", "wal_header", "fingerprint"],
            ),
            (
                Some(left_at),
                false,
                Some(header(2)),
                2,
                None,
                &["wal_continues", "wal_header", "fingerprint"],
            ),
            (
                Some(left_at),
                false,
                Some(header(1)),
                1,
                None,
                &["wal_continues", "wal_header"],
            ),
            // Released with an empty WAL: any WAL now is new.
            (
                None,
                false,
                Some(header(1)),
                1,
                Some(true),
                &["wal_header", "fingerprint"],
            ),
            (
                None,
                false,
                Some(header(1)),
                2,
                None,
                &["wal_header", "fingerprint"],
            ),
        ];
        for (p, continues, h, fp, want, asked) in rows {
            let mut local = Table {
                continues: if continues { vec![left_at] } else { vec![] },
                header: h,
                fingerprint: fp,
                ..Table::default()
            };
            let got = wake(left(p), AsLeft::content(print(1)), None, &mut local).unwrap();
            let what = format!("{p:?} continues {continues} header {h:?} fingerprint {fp}");
            assert_eq!(got.map(|c| c.base_is_db_file), want, "{what}");
            if let Some(c) = got {
                assert_eq!((c.pos, c.db_pages), (p, Some(3)), "{what}");
            }
            assert_eq!(local.asked, asked, "{what}");
        }
    }

    fn shm(ino: u64, born: u64) -> ShmId {
        ShmId {
            file: FileId { dev: 1, ino },
            born: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(born)),
        }
    }

    fn index(commits: u32, frames: u32, salt1: u32) -> WalIndexHeader {
        WalIndexHeader {
            commits,
            page_size: PAGE,
            frames,
            salt1,
            salt2: 9,
        }
    }

    #[test]
    fn wake_goes_on_at_the_start_of_the_wal_that_came_next() {
        // walsync let go with an empty WAL: the wal-index had chosen salts
        // (7, 9) for the next one and counted 100 commits, in -shm file 5.
        let next = NextWal {
            page_size: PAGE,
            salt1: 7,
            salt2: 9,
            commits: 100,
            shm: shm(5, 50),
        };
        let left = Cursor {
            pos: Some(pos(6, 32)),
            base_is_db_file: true,
            db_pages: Some(3),
        };
        let other_page = WalHeader {
            page_size: 1024,
            ..header(7)
        };
        struct Row {
            what: &'static str,
            header: Option<WalHeader>,
            index: Option<(ShmId, WalIndexHeader)>,
            commits: Option<u64>,
            fingerprint: u64,
            /// Where shipping goes on (`Some(None)`: the file as left, at
            /// the released position); `None`: a new generation.
            want: Option<Option<WalPos>>,
            asked: &'static [&'static str],
        }
        let from_start = |salt1| Some(Some(header(salt1).start()));
        let rows = [
            Row {
                what: "the salts chosen for it: backfilled or not, all of it is new",
                header: Some(header(7)),
                index: None,
                commits: None,
                fingerprint: 2,
                want: from_start(7),
                asked: &["wal_continues", "wal_header"],
            },
            Row {
                what: "a writer's own random salts, every commit since counted in it",
                header: Some(header(40)),
                index: Some((shm(5, 50), index(130, 61, 40))),
                commits: Some(30),
                fingerprint: 2,
                want: from_start(40),
                asked: &["wal_continues", "wal_header", "wal_index", "commits_in"],
            },
            Row {
                what: "the count went below what it was (rebuilt in place, or wrapped)",
                header: Some(header(40)),
                index: Some((shm(5, 50), index(4, 61, 40))),
                commits: Some(u64::from(4u32.wrapping_sub(100))),
                fingerprint: 2,
                want: None,
                asked: &[
                    "wal_continues",
                    "wal_header",
                    "wal_index",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "restarted: commits counted that the WAL lost, file changed",
                header: Some(header(8)),
                index: Some((shm(5, 50), index(130, 20, 8))),
                commits: Some(10),
                fingerprint: 2,
                want: None,
                asked: &[
                    "wal_continues",
                    "wal_header",
                    "wal_index",
                    "commits_in",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "restarted, but the file is still as left: all of this WAL is new",
                header: Some(header(8)),
                index: Some((shm(5, 50), index(130, 20, 8))),
                commits: Some(10),
                fingerprint: 1,
                want: Some(None),
                asked: &[
                    "wal_continues",
                    "wal_header",
                    "wal_index",
                    "commits_in",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "frames of the counted ones are not valid (overwritten meanwhile)",
                header: Some(header(40)),
                index: Some((shm(5, 50), index(130, 61, 40))),
                commits: None,
                fingerprint: 2,
                want: None,
                asked: &[
                    "wal_continues",
                    "wal_header",
                    "wal_index",
                    "commits_in",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "another -shm file (rebuilt, its count started again)",
                header: Some(header(40)),
                index: Some((shm(6, 50), index(130, 61, 40))),
                commits: Some(30),
                fingerprint: 2,
                want: None,
                asked: &[
                    "wal_continues",
                    "wal_header",
                    "wal_index",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "the same inode number, but a new file",
                header: Some(header(40)),
                index: Some((shm(5, 51), index(130, 61, 40))),
                commits: Some(30),
                fingerprint: 2,
                want: None,
                asked: &[
                    "wal_continues",
                    "wal_header",
                    "wal_index",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "the wal-index is of another WAL than the file's",
                header: Some(header(40)),
                index: Some((shm(5, 50), index(130, 61, 41))),
                commits: Some(30),
                fingerprint: 2,
                want: None,
                asked: &[
                    "wal_continues",
                    "wal_header",
                    "wal_index",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "no wal-index to read",
                header: Some(header(40)),
                index: None,
                commits: None,
                fingerprint: 1,
                want: Some(None),
                asked: &[
                    "wal_continues",
                    "wal_header",
                    "wal_index",
                    "wal_header",
                    "fingerprint",
                ],
            },
            Row {
                what: "the chosen salts, but another page size",
                header: Some(other_page),
                index: None,
                commits: None,
                fingerprint: 2,
                want: None,
                asked: &["wal_continues", "wal_header", "wal_header", "fingerprint"],
            },
            Row {
                what: "no WAL header: only the fingerprint can tell",
                header: None,
                index: None,
                commits: None,
                fingerprint: 1,
                want: Some(None),
                asked: &["wal_continues", "wal_header", "wal_header", "fingerprint"],
            },
        ];
        for row in rows {
            let mut local = Table {
                header: row.header,
                index: row.index,
                commits: row.commits,
                fingerprint: row.fingerprint,
                ..Table::default()
            };
            let got = wake(left, AsLeft::content(print(1)), Some(next), &mut local).unwrap();
            let want = row.want.map(|at| match at {
                Some(p) => Cursor {
                    pos: Some(p),
                    base_is_db_file: false,
                    db_pages: Some(3),
                },
                None => left,
            });
            assert_eq!(got, want, "{}", row.what);
            assert_eq!(local.asked, row.asked, "{}", row.what);
        }
    }

    /// The wal-index and WAL as SQLite keeps them (wal.c), for the
    /// property below: a writer that restarted a WAL before (`nCkpt` > 0)
    /// writes frame 1 with the salts the wal-index holds, one that never
    /// did draws its own; a restart (`walRestartHdr`) sets salt-1 plus one
    /// and a new salt-2, and counts no commit; a recovery (the last
    /// connection closed, a new one opened) builds a new `-shm` file with
    /// the count at 0.
    struct Sqlite {
        shm: ShmId,
        index: WalIndexHeader,
        /// Commit frames in the WAL's valid frames.
        wal_commits: u64,
        /// Whether each of two writers restarted a WAL before.
        restarted: [bool; 2],
        /// A commit since walsync let go is in no WAL any more.
        lost: bool,
        recovered: bool,
    }

    impl Sqlite {
        fn header(&self) -> WalHeader {
            WalHeader {
                salt1: self.index.salt1,
                salt2: self.index.salt2,
                ..header(0)
            }
        }

        fn restart(&mut self, rng: &mut crate::testing::Rng) {
            self.lost |= self.wal_commits > 0;
            self.index.salt1 = self.index.salt1.wrapping_add(1);
            self.index.salt2 = rng.next() as u32;
            self.index.frames = 0;
            self.wal_commits = 0;
        }
    }

    impl LocalEvidence for Sqlite {
        fn wal_continues(&mut self, _: WalPos) -> Result<bool, ReplicaError> {
            unreachable!("not asked by first_wal_since")
        }
        fn wal_header(&mut self) -> Result<Option<WalHeader>, ReplicaError> {
            unreachable!("not asked by first_wal_since")
        }
        fn fingerprint(&mut self) -> Result<Fingerprint, ReplicaError> {
            unreachable!("not asked by first_wal_since")
        }
        fn identity(&mut self) -> Result<FileIdentity, ReplicaError> {
            unreachable!("not asked by first_wal_since")
        }
    }

    impl WakeEvidence for Sqlite {
        fn wal_index(&mut self) -> Result<Option<(ShmId, WalIndexHeader)>, ReplicaError> {
            Ok(Some((self.shm, self.index)))
        }
        fn commits_in(&mut self, h: WalHeader, frames: u32) -> Result<Option<u64>, ReplicaError> {
            let same = (h.salt1, h.salt2) == (self.index.salt1, self.index.salt2);
            Ok((same && frames == self.index.frames).then_some(self.wal_commits))
        }
    }

    #[test]
    fn the_wal_that_came_next_is_proven_only_when_it_holds_every_commit_since() {
        let mut rng = crate::testing::Rng(0x0bad_5eed);
        let (mut proven, mut refused) = (0, 0);
        for _ in 0..crate::testing::fuzz_iters(2000) {
            // walsync let go right after its TRUNCATE; the count is 0 when
            // no commit came since the -shm file was last built.
            let index = WalIndexHeader {
                commits: if rng.below(4) == 0 {
                    0
                } else {
                    rng.next() as u32
                },
                page_size: PAGE,
                frames: 0,
                salt1: rng.next() as u32,
                salt2: rng.next() as u32,
            };
            let restarted = [rng.below(2) == 0, rng.below(2) == 0];
            let mut db = Sqlite {
                shm: shm(5, 50),
                index,
                wal_commits: 0,
                restarted,
                lost: false,
                recovered: false,
            };
            let next = NextWal::of(db.shm, index).unwrap();
            for _ in 0..1 + rng.below(12) {
                match rng.below(10) {
                    // A commit by either writer (after a checkpoint that
                    // backfilled everything, its first restarts the WAL).
                    0..=6 => {
                        let w = rng.below(2);
                        if db.index.frames > 0 && rng.below(4) == 0 {
                            db.restart(&mut rng);
                            db.restarted[w] = true;
                        }
                        if db.index.frames == 0 && !db.restarted[w] {
                            db.index.salt1 = rng.next() as u32;
                            db.index.salt2 = rng.next() as u32;
                        }
                        let frames = 1 + rng.below(3) as u32;
                        db.index.frames += frames;
                        db.index.commits = db.index.commits.wrapping_add(1);
                        db.wal_commits += 1;
                    }
                    // A TRUNCATE checkpoint by one of them.
                    7 => {
                        let w = rng.below(2);
                        db.restart(&mut rng);
                        db.restarted[w] = true;
                    }
                    // Every connection closed, and walsync's lock kept the
                    // last close from checkpointing and deleting: the next
                    // open rebuilds the same -shm file from the WAL, the
                    // count at 0 (a writer draws its own salts for a WAL
                    // that has no header).
                    8 => {
                        db.recovered = true;
                        db.index.commits = 0;
                        if db.index.frames == 0 {
                            db.index.salt1 = 0;
                            db.index.salt2 = 0;
                            db.restarted = [false, false];
                        }
                    }
                    // Every connection closed (the WAL checkpointed and
                    // deleted), then opened again: a new -shm file.
                    _ => {
                        db.lost |= db.wal_commits > 0;
                        db.recovered = true;
                        db.shm = shm(5, 51 + rng.below(3) as u64);
                        db.index = WalIndexHeader {
                            commits: 0,
                            salt1: 0,
                            salt2: 0,
                            frames: 0,
                            ..db.index
                        };
                        db.wal_commits = 0;
                        db.restarted = [false, false];
                    }
                }
            }
            if db.index.frames == 0 {
                continue;
            }
            let h = db.header();
            let got = first_wal_since(&mut db, next, h).unwrap();
            let what = format!("{next:?} -> {:?}, lost {}", db.index, db.lost);
            if got {
                proven += 1;
                assert!(!db.lost, "a gap taken for a continuation: {what}");
            } else {
                refused += 1;
                // A count of 0 at let-go, or one that wrapped, is not
                // taken (see first_wal_since).
                let unproven = next.commits == 0 || db.index.commits < next.commits;
                assert!(
                    db.lost || db.recovered || unproven,
                    "a continuation refused: {what}"
                );
            }
        }
        assert!(
            proven > 100 && refused > 100,
            "{proven} proven, {refused} refused"
        );
    }

    #[test]
    fn the_next_wal_is_known_only_from_an_empty_one() {
        let s = shm(5, 50);
        let got = NextWal::of(s, index(12, 0, 7));
        assert_eq!(
            got,
            Some(NextWal {
                page_size: PAGE,
                salt1: 7,
                salt2: 9,
                commits: 12,
                shm: s
            })
        );
        assert_eq!(NextWal::of(s, index(12, 1, 7)), None);
    }

    #[test]
    fn a_wal_made_afresh_continues_only_over_the_file_as_left() {
        let left_at = pos(1, 500);
        let seq = |salt1, checkpoint_seq| WalHeader {
            checkpoint_seq,
            ..header(salt1)
        };
        // (position left, header now, fingerprint now) -> where shipping
        // goes on (None: new generation), questions asked.
        type Row = (
            Option<WalPos>,
            Option<WalHeader>,
            u64,
            Option<(Option<WalPos>, bool)>,
            &'static [&'static str],
        );
        let rows: [Row; 4] = [
            // Made afresh after a short session: the file is as left (the
            // application's close could not checkpoint), so every frame of
            // the WAL is new.
            (
                Some(left_at),
                Some(seq(2, 0)),
                1,
                Some((Some(left_at), true)),
                &["wal_continues", "wal_header", "fingerprint"],
            ),
            // Sequence 0 too, but the file changed: one connection's
            // TRUNCATE, then another's commit. The commits before the
            // TRUNCATE are only in the file: a gap, never "continues".
            (
                Some(left_at),
                Some(seq(2, 0)),
                2,
                None,
                &["wal_continues", "wal_header", "fingerprint"],
            ),
            (
                None,
                Some(seq(2, 0)),
                2,
                None,
                &["wal_header", "fingerprint"],
            ),
            // No WAL yet: the file as left.
            (
                None,
                None,
                1,
                Some((None, true)),
                &["wal_header", "fingerprint"],
            ),
        ];
        for (p, h, fp, want, asked) in rows {
            let mut local = Table {
                continues: vec![],
                header: h,
                fingerprint: fp,
                ..Table::default()
            };
            let left = Cursor {
                pos: p,
                base_is_db_file: true,
                db_pages: Some(3),
            };
            let got = wake(left, AsLeft::content(print(1)), None, &mut local).unwrap();
            let what = format!("{p:?} header {h:?} fp {fp}");
            assert_eq!(got.map(|c| (c.pos, c.base_is_db_file)), want, "{what}");
            assert!(got.is_none_or(|c| c.db_pages == Some(3)), "{what}");
            assert_eq!(local.asked, asked, "{what}");
        }
    }

    #[test]
    fn shipping_goes_on_where_walsync_stands_or_at_a_restart_over_the_shipped_state() {
        let at = pos(1, 1000);
        let cursor = |pos: Option<WalPos>, base_is_db_file: bool| Cursor {
            pos,
            base_is_db_file,
            db_pages: Some(2),
        };
        let gap = |reason: &str| Err(Gap::new(reason));
        let other_page = WalHeader {
            page_size: 1024,
            ..header(1)
        };
        type Row = (
            (Option<WalPos>, bool, Option<WalHeader>, u64),
            Result<Option<WalPos>, Gap>,
        );
        // (walsync's position, base is the db file, WAL header, WAL length)
        //   -> where shipping goes on, or the gap.
        let rows: Vec<Row> = vec![
            ((Some(at), false, Some(header(1)), 1000), Ok(Some(at))),
            ((Some(at), false, Some(header(1)), 5000), Ok(Some(at))),
            ((Some(at), true, Some(header(1)), 1000), Ok(Some(at))),
            (
                (Some(at), false, Some(header(1)), 999),
                gap("the WAL is shorter than what was shipped"),
            ),
            // Restarted: a continuation only over the shipped state.
            (
                (Some(at), true, Some(header(2)), 5000),
                Ok(Some(header(2).start())),
            ),
            (
                (None, true, Some(header(2)), 5000),
                Ok(Some(header(2).start())),
            ),
            (
                (Some(at), false, Some(header(2)), 5000),
                gap("the WAL was restarted before walsync shipped all of it"),
            ),
            (
                (None, false, Some(header(2)), 5000),
                gap("the WAL was restarted before walsync shipped all of it"),
            ),
            // No valid header (empty or truncated WAL).
            ((None, false, None, 0), Ok(None)),
            ((Some(at), true, None, 0), Ok(None)),
            (
                (Some(at), false, None, 0),
                gap("the WAL was truncated or overwritten"),
            ),
            (
                (Some(at), true, Some(other_page), 5000),
                gap("the WAL page size 1024 differs from the database's 4096"),
            ),
        ];
        for ((p, base, h, len), want) in rows {
            assert_eq!(
                ship_from(cursor(p, base), PAGE, h, len),
                want,
                "{p:?} base {base} {h:?} len {len}"
            );
        }
    }

    #[test]
    fn the_file_as_left_is_proven_by_its_identity_then_by_its_fingerprint() {
        let left_at = pos(1, 500);
        let left = Cursor {
            pos: Some(left_at),
            base_is_db_file: true,
            db_pages: Some(3),
        };
        // (identity kept, fingerprint kept, identity now, fingerprint now)
        //   -> the file as left, questions asked (the WAL was restarted).
        type Row = (
            (Option<i128>, Option<u64>, i128, u64),
            bool,
            &'static [&'static str],
        );
        let rows: [Row; 8] = [
            // A database over `idle_release_max_size`: the identity alone,
            // and no read of the whole file either way.
            ((Some(10), None, 10, 1), true, &["wal_header", "identity"]),
            ((Some(10), None, 11, 1), false, &["wal_header", "identity"]),
            // Both: the identity spares the read; a changed identity (a
            // chmod, a touch) leaves the content to decide.
            (
                (Some(10), Some(1), 10, 2),
                true,
                &["wal_header", "identity"],
            ),
            (
                (Some(10), Some(1), 11, 1),
                true,
                &["wal_header", "identity", "fingerprint"],
            ),
            (
                (Some(10), Some(1), 11, 2),
                false,
                &["wal_header", "identity", "fingerprint"],
            ),
            // No settled identity (a clock set back): the content alone.
            ((None, Some(1), 10, 1), true, &["wal_header", "fingerprint"]),
            (
                (None, Some(1), 10, 2),
                false,
                &["wal_header", "fingerprint"],
            ),
            // Nothing kept proves nothing.
            ((None, None, 10, 1), false, &["wal_header"]),
        ];
        for ((kept_id, kept_print, id_now, print_now), want, asked) in rows {
            let as_left = AsLeft {
                identity: kept_id.map(ident),
                fingerprint: kept_print.map(print),
            };
            let mut local = Table {
                header: Some(header(2)),
                identity: id_now,
                fingerprint: print_now,
                ..Table::default()
            };
            let what = format!("{kept_id:?} {kept_print:?} now {id_now} {print_now}");
            let got = wake(left, as_left, None, &mut local).unwrap();
            assert_eq!(got.is_some(), want, "{what}");
            let mut asked_all = vec!["wal_continues"];
            asked_all.extend_from_slice(asked);
            assert_eq!(local.asked, asked_all, "{what}");
        }
        // The WAL still the one walsync left (same salts, not continuing):
        // no proof at all, not even a stat.
        let mut local = Table {
            header: Some(header(1)),
            identity: 10,
            ..Table::default()
        };
        let as_left = AsLeft {
            identity: Some(ident(10)),
            fingerprint: None,
        };
        assert_eq!(wake(left, as_left, None, &mut local).unwrap(), None);
        assert_eq!(local.asked, ["wal_continues", "wal_header"]);
    }

    /// The kernel's side of `until_settled`, simulated: a write stamps the
    /// file with the coarse clock (which moves in ticks) cut to the
    /// filesystem's granularity. Once `until_settled` says 0, no later write
    /// can leave the ctime as it was; and waiting as long as it says is
    /// enough.
    #[test]
    fn a_settled_identity_shows_every_later_write() {
        const MS: i128 = 1_000_000;
        // ns, 100 ns (NTFS), µs, 1 ms, 10 ms (exFAT), 1 s (ext4 with
        // 128-byte inodes), 2 s (FAT).
        let granularities = [1, 100, 1_000, MS, 10 * MS, 1_000 * MS, 2_000 * MS];
        let ticks = [MS, 4 * MS, 10 * MS];
        let mut rng = crate::testing::Rng(0x7157_c0a5);
        let (mut settled, mut waited) = (0, 0);
        for _ in 0..crate::testing::fuzz_iters(20_000) {
            let g = granularities[rng.below(granularities.len())];
            let tick = ticks[rng.below(ticks.len())];
            let coarse = |t: i128| t - t.rem_euclid(tick);
            let stamp = |t: i128| {
                let c = coarse(t);
                c - c.rem_euclid(g)
            };
            // The last write, then walsync's look some time later.
            let written = 1_700_000_000_000 * MS + i128::from(rng.next() % 10_000_000_000);
            let ctime = stamp(written);
            let look = written + (rng.below(3_000) as i128) * MS + rng.below(1_000_000) as i128;
            let wait = until_settled(ctime, coarse(look));
            if wait == 0 {
                settled += 1;
                // Any later write, however soon, shows.
                for later in [look, look + 1, look + tick, look + g, look + 3_000 * MS] {
                    assert_ne!(
                        stamp(later),
                        ctime,
                        "g {g} tick {tick} ctime {ctime} look {look} write {later}"
                    );
                }
            } else {
                waited += 1;
                // Waiting that long (and for the clock's next tick) settles it.
                let after = look + i128::from(wait) + tick;
                assert_eq!(until_settled(ctime, coarse(after)), 0, "g {g} tick {tick}");
                assert!(
                    wait <= 2_000 * MS as u64 + tick as u64,
                    "waits at most 2 s: {wait}"
                );
            }
        }
        assert!(
            settled > 1_000 && waited > 1_000,
            "{settled} settled, {waited} waited"
        );
    }

    #[test]
    fn a_file_renamed_over_a_held_database_is_taken_up_once_the_old_index_and_wal_are_gone() {
        let stale = StaleIndex {
            shm: Some(shm(5, 50)),
            wal_salts: Some((7, 9)),
            commits: Some(600),
        };
        let same = Some(shm(5, 50));
        // (-shm now, others attached, its commit count, WAL salts now)
        //   -> may be taken up.
        type Row = (
            (Option<ShmId>, Option<bool>, Option<u32>, Option<(u32, u32)>),
            bool,
        );
        let rows: [Row; 13] = [
            // The application still has the old wal-index mapped (and
            // commits through it).
            ((same, Some(true), Some(600), Some((7, 9))), false),
            ((same, Some(true), Some(605), None), false),
            ((same, None, None, None), false),
            // Its last close checkpointed and deleted the WAL and -shm.
            ((None, None, None, None), true),
            // ... and it opened the database again: new files.
            ((Some(shm(6, 60)), Some(true), Some(1), Some((1, 2))), true),
            ((Some(shm(5, 51)), Some(true), Some(1), None), true),
            // ... or the same -shm file, rebuilt in place by its next open
            // (every connection had closed, but a close could not delete it).
            ((same, Some(true), Some(3), Some((1, 2))), true),
            // Nobody has it open: the next opener rebuilds the index, but
            // the old WAL's frames would be applied to the new file.
            ((same, Some(false), Some(600), Some((7, 9))), false),
            ((same, Some(false), Some(600), None), true),
            ((same, Some(false), Some(600), Some((8, 3))), true),
            // The old WAL is gone but the index is still shared.
            ((same, Some(true), Some(610), Some((8, 3))), false),
            // Rebuilt, but the old WAL is still there to be recovered.
            ((same, Some(true), Some(0), Some((7, 9))), false),
            ((same, Some(true), None, None), false),
        ];
        for ((shm_now, others, commits, wal_now), want) in rows {
            assert_eq!(
                stale_index_gone(stale, shm_now, others, commits, wal_now),
                want,
                "{shm_now:?} {others:?} {commits:?} {wal_now:?}"
            );
        }
        // Which -shm walsync had is not known: only nobody attached, or no
        // -shm at all, will do.
        let unknown = StaleIndex {
            shm: None,
            wal_salts: None,
            commits: None,
        };
        let other = Some(shm(6, 60));
        assert!(!stale_index_gone(unknown, other, Some(true), Some(0), None));
        assert!(stale_index_gone(unknown, other, Some(false), None, None));
        assert!(stale_index_gone(unknown, None, None, None, None));
    }
}
