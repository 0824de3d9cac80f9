//! What a sync must do, decided from plain values, without I/O: the upkeep
//! after shipping (a snapshot, a sync point, a TRUNCATE, or nothing, and
//! whether to backfill before it), what a ship that failed on the storage
//! still does, the steps of `settle`, which backfills the WAL by moving
//! walsync's read mark once the application pauses (`app_paused`; while it
//! writes, at SQLite's own cadence: the sync points), and the check a sync
//! point makes of the WAL's end. `Replica::sync`, `Replica::settle` and
//! `Replica::checkpoint_under_lock` gather the values and act on the answers.
//!
//! These rules are what keeps a database replaced by rename from getting a
//! stale WAL applied to it (issue 10), and what keeps every frame readable
//! until it is shipped (ARCHITECTURE.md invariant 1): read `Replica::settle` before
//! changing one.

use super::error::ReplicaError;
use super::live::WalEnd;
use crate::storage::StorageError;
use crate::wal::{self, WalHeader, WalPos};

/// The WAL as a sync sees it once everything it could ship is shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WalState {
    /// How far the current WAL has grown since it was last restarted:
    /// walsync's position in it (0 without one). Not the file's size: SQLite
    /// reuses a restarted WAL file without shrinking it, and an idle database
    /// must not be checkpointed over and over. walsync's read mark (see
    /// `settle`) keeps the application from restarting the WAL, so
    /// walsync's own sync point, which leaves it with mark 0, is what lets
    /// the next writer start the WAL over; not again while nothing was
    /// shipped since the last one (`base_is_db_file` and `mark_zero`).
    pub(super) used_bytes: u64,
    /// The `-wal` file's size (0 without one), stale tail included.
    pub(super) file_bytes: u64,
    /// The database file equals the shipped state (`Cursor::base_is_db_file`).
    pub(super) base_is_db_file: bool,
    /// walsync's read transaction has read mark 0 (`Live::mark_zero`).
    pub(super) mark_zero: bool,
}

/// What decides whether a sync takes a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SnapshotState {
    /// The caller asked for a snapshot (`walsync snapshot`).
    pub(super) forced: bool,
    /// This sync took one already (the first of a new generation).
    pub(super) taken_this_sync: bool,
    pub(super) commits_since_snapshot: u64,
    pub(super) now_ms: u64,
    /// When the periodic snapshot is due: the last one's time plus
    /// `snapshot_interval`.
    pub(super) due_ms: u64,
}

/// The WAL sizes at which walsync checkpoints (`ReplicaOptions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Thresholds {
    /// WAL grown this far since its restart: a sync point (PASSIVE).
    pub(super) checkpoint_bytes: u64,
    /// `-wal` file this large: a TRUNCATE after the sync point.
    pub(super) truncate_bytes: u64,
}

/// The work a sync does after shipping, before it settles the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upkeep {
    /// A snapshot in the current generation (itself a sync point).
    Snapshot,
    /// A TRUNCATE checkpoint alone: every frame is shipped and in the
    /// database file and walsync holds read mark 0, so TRUNCATE can only drop
    /// frames already shipped and backfilled (a frame appended since makes it
    /// report busy).
    Truncate,
    /// A sync point (PASSIVE checkpoint under the write lock), followed by a
    /// TRUNCATE if `truncate` and the checkpoint was complete.
    SyncPoint {
        truncate: bool,
    },
    Nothing,
}

/// What a sync does once everything it could ship is shipped.
pub(super) fn upkeep(snapshot: SnapshotState, wal: WalState, limits: Thresholds) -> Upkeep {
    // A forced snapshot right after a new generation's first one would
    // upload the same image twice.
    let forced =
        snapshot.forced && (!snapshot.taken_this_sync || snapshot.commits_since_snapshot > 0);
    let due = snapshot.commits_since_snapshot > 0 && snapshot.now_ms >= snapshot.due_ms;
    let truncate = wal.file_bytes >= limits.truncate_bytes;
    // Nothing shipped since walsync's last sync point left it with read
    // mark 0: a new one would change nothing, and the application may
    // restart the WAL already.
    let at_rest = wal.base_is_db_file && wal.mark_zero;
    if forced || due {
        Upkeep::Snapshot
    } else if at_rest && truncate {
        Upkeep::Truncate
    } else if !at_rest && (wal.used_bytes >= limits.checkpoint_bytes || truncate) {
        // Also when the file is large but walsync's position is not: a
        // restarted WAL keeps the old frames as a stale tail until it is
        // truncated.
        Upkeep::SyncPoint { truncate }
    } else {
        Upkeep::Nothing
    }
}

/// Whether a sync backfills the WAL (`Replica::settle`, beside its read
/// transaction, without the write lock) before `upkeep`. A snapshot and a
/// sync point checkpoint under the write lock, where the application's
/// writers wait for every fsync of it (SQLite's busy handler then sleeps
/// in steps of 1, 2, 5, 10 ms and more); backfilled first, they have only
/// what was committed since to copy. While the application writes, syncs
/// leave the WAL unbackfilled (`SettleStep::Defer`) until the sync point.
pub(super) fn backfill_first(upkeep: Upkeep) -> bool {
    matches!(upkeep, Upkeep::Snapshot | Upkeep::SyncPoint { .. })
}

/// A ship that failed because the storage did (an outage): nothing can be
/// shipped, but the sync still backfills the WAL (`settle(false)`; its
/// frames stay in it, walsync's read mark keeps it from being restarted), so
/// that replacing the database stays safe during an outage too, and says so
/// if the WAL grows large. Any other failure just ends the sync.
pub(super) fn outage(failure: &ReplicaError) -> Option<&StorageError> {
    match failure {
        ReplicaError::Storage(e) => Some(e),
        _ => None,
    }
}

/// The first step of `settle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SettleStep {
    /// Nothing new since the last settle: an idle database costs nothing.
    Nothing,
    /// Everything is shipped, but the application is writing (`quiet`
    /// says not): the read mark stays where it is and nothing is
    /// backfilled. A backfill costs an fsync of the WAL and one of the
    /// database file, and SQLite's own checkpoint runs once per
    /// `wal_autocheckpoint` pages, not once a second: walsync backfills
    /// at its sync point (`checkpoint_threshold`), which is SQLite's own
    /// cadence, or once the database is quiet (`Replica::sync` asks for
    /// one more sync then: `SyncReport::settle_deferred`). The mark, at or
    /// below the shipped end (or 0), keeps every unshipped frame from
    /// being backfilled or the WAL from being restarted, as before.
    Defer,
    /// Everything is shipped, some of it since the read mark was taken:
    /// move the read mark to the WAL's end and backfill.
    MoveMark,
    /// Everything is shipped, and nothing since the read mark was taken
    /// (the last backfill was not complete, e.g. an application checkpoint
    /// held the checkpointer lock): a PASSIVE checkpoint beside the read
    /// transaction, which its mark bounds at the shipped end. Moving the
    /// mark now could give walsync read mark 0 (the WAL fully backfilled as
    /// the new read transaction starts) while it believes otherwise, and
    /// the application's next write would then restart the WAL: a gap that
    /// is none, costing a new generation.
    CheckpointAtEnd,
    /// Uploads fail: a PASSIVE checkpoint beside the read transaction
    /// (bounded by its mark); the mark moves only if `mark_may_move`.
    CheckpointBeside,
}

/// `shipped_all`: every frame up to the WAL end that walsync's read
/// transaction sees is shipped (false while uploads fail);
/// `shipped_since_mark`: a frame was shipped since the read mark was taken;
/// `quiet`: the application has paused (`app_paused`).
pub(super) fn settle_step(
    shipped_all: bool,
    base_is_db_file: bool,
    shipped_since_mark: bool,
    quiet: bool,
) -> SettleStep {
    match (shipped_all, base_is_db_file, shipped_since_mark, quiet) {
        (true, true, _, _) => SettleStep::Nothing,
        (true, false, true, false) => SettleStep::Defer,
        (true, false, true, true) => SettleStep::MoveMark,
        (true, false, false, _) => SettleStep::CheckpointAtEnd,
        (false, _, _, _) => SettleStep::CheckpointBeside,
    }
}

/// How long the application must have been without a commit for a sync
/// to settle the WAL (backfill it and rest at read mark 0) at once rather
/// than at the next sync: a pause, not the gap between two commits of a
/// steady writer.
pub(super) const QUIET_MS: u64 = 200;

/// Whether the application has paused, as a sync sees it: it shipped no
/// commit (nothing new since the last sync), or the newest commit it holds
/// was made `QUIET_MS` or more before `now_ms`. `newest_commit_ms` is the
/// time the newest commit was dated with, an upper bound of when it was
/// made (README "Point in time"), so a pause is never seen longer than it
/// was.
pub(super) fn app_paused(commits_shipped: u64, newest_commit_ms: u64, now_ms: u64) -> bool {
    commits_shipped == 0 || now_ms.saturating_sub(newest_commit_ms) >= QUIET_MS
}

/// Whether the WAL end a moved read mark sees (`end`, reported by the
/// checkpoint that followed) is exactly walsync's shipped position. If so,
/// and that checkpoint was complete, the database file is exactly what was
/// shipped and the new mark keeps it so.
pub(super) fn at_shipped_end(shipped: Option<WalPos>, end: WalEnd, page_size: u32) -> bool {
    match shipped {
        Some(p) => WalEnd::of(&p, page_size) == end,
        None => end.frames == 0,
    }
}

/// While uploads fail, whether the read mark may move to the WAL's end,
/// given the end the old read transaction sees at most (`view`) and the
/// end now (`now`): only once the WAL has grown past it, or been restarted
/// (which happens only while walsync holds mark 0, blocking every
/// backfill). Then the new read transaction cannot get mark 0 while a frame
/// is unshipped. Without a known view it waits for the next settle.
pub(super) fn mark_may_move(view: Option<WalEnd>, now: WalEnd) -> bool {
    view.is_some_and(|v| (v.salt1, v.salt2) != (now.salt1, now.salt2) || now.frames > v.frames)
}

/// What the WAL end a checkpoint reported right after walsync moved its
/// read mark (`after`) says about the new read transaction, when every
/// frame up to `shipped`, the WAL's end as the old one saw it, is shipped
/// (`Replica::rest_at_mark_zero`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterMove {
    /// The same WAL, no further: the new read transaction sees `shipped`.
    Same,
    /// Another WAL (new salts), or the same with fewer frames (a RESTART
    /// checkpoint whose WAL has no new header yet): SQLite restarted it.
    /// A restart needs every mark above 0 unused and the WAL wholly
    /// backfilled; the old mark (above 0, or 0, which blocks every
    /// backfill) bounded the backfill at `shipped` until the new read
    /// transaction began, so the new one has mark 0 and sees `shipped`,
    /// and the restart came exactly there.
    Restarted,
    /// The same WAL grown: the new read transaction may see frames not
    /// shipped yet, with a mark above 0 that lets them be backfilled.
    Grew,
}

pub(super) fn after_move(shipped: WalEnd, after: WalEnd) -> AfterMove {
    if (after.salt1, after.salt2) != (shipped.salt1, shipped.salt2) || after.frames < shipped.frames
    {
        AfterMove::Restarted
    } else if after.frames == shipped.frames {
        AfterMove::Same
    } else {
        AfterMove::Grew
    }
}

/// What `Replica::rest_at_mark_zero` does after a move of the read mark
/// that saw `seen`, when the WAL was wholly backfilled at the shipped end
/// before the move (`backfilled`) and the checkpoint after it was complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RestStep {
    /// The new read transaction has mark 0 at the shipped end: it began on
    /// a wholly backfilled WAL that ends there, or a restart proves it.
    AtMarkZero,
    /// The new mark sees the shipped end and the WAL is now wholly
    /// backfilled (the database file is the shipped state), but the mark
    /// was taken before that: move once more.
    Again,
    /// Done, with whether the database file is the shipped state: not when
    /// the WAL grew (the new mark may let new frames be backfilled), nor
    /// when a reader of the application's holds an older mark.
    Stop { base_is_db_file: bool },
}

pub(super) fn rest_step(seen: AfterMove, backfilled: bool, complete: bool) -> RestStep {
    match (seen, backfilled, complete) {
        (AfterMove::Grew, _, _) => RestStep::Stop {
            base_is_db_file: false,
        },
        (AfterMove::Restarted, _, _) | (AfterMove::Same, true, _) => RestStep::AtMarkZero,
        (AfterMove::Same, false, true) => RestStep::Again,
        (AfterMove::Same, false, false) => RestStep::Stop {
            base_is_db_file: false,
        },
    }
}

/// Defence in depth at a sync point: with the write lock held, the WAL's
/// committed end (`log_frames`, reported by the checkpoint) must be exactly
/// where walsync stands. If not, something walsync has not shipped could be
/// in the database file now, and only a new generation is safe. An empty
/// WAL (no frames) agrees with any position.
pub(super) fn sync_point_agrees(
    log_frames: i64,
    header: Option<WalHeader>,
    shipped_to: Option<WalPos>,
) -> bool {
    if log_frames <= 0 {
        return true;
    }
    match (header, shipped_to) {
        (Some(h), Some(p)) => {
            p.same_wal(&h)
                && p.offset == wal::HEADER_SIZE as u64 + log_frames as u64 * h.frame_size()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteError;
    use crate::wal::Checksum;

    const PAGE: u32 = 4096;
    const FRAME: u64 = wal::FRAME_HEADER_SIZE as u64 + PAGE as u64;
    const LIMITS: Thresholds = Thresholds {
        checkpoint_bytes: 1000,
        truncate_bytes: 5000,
    };

    fn header(salt1: u32) -> WalHeader {
        WalHeader {
            big_endian: false,
            page_size: PAGE,
            checkpoint_seq: 0,
            salt1,
            salt2: 7,
            checksum: Checksum(1, 2),
        }
    }

    /// Just past frame `frames` of the WAL with `salt1`.
    fn pos(salt1: u32, frames: u64) -> WalPos {
        WalPos {
            salt1,
            salt2: 7,
            offset: wal::HEADER_SIZE as u64 + frames * FRAME,
            checksum: Checksum(3, 4),
        }
    }

    fn end(salt1: u32, frames: u64) -> WalEnd {
        WalEnd {
            salt1,
            salt2: 7,
            frames,
        }
    }

    fn quiet() -> SnapshotState {
        SnapshotState {
            forced: false,
            taken_this_sync: false,
            commits_since_snapshot: 0,
            now_ms: 10_000,
            due_ms: 20_000,
        }
    }

    fn wal_state(used: u64, file: u64, base: bool, mark_zero: bool) -> WalState {
        WalState {
            used_bytes: used,
            file_bytes: file,
            base_is_db_file: base,
            mark_zero,
        }
    }

    #[test]
    fn upkeep_follows_the_wal_and_the_thresholds() {
        use Upkeep::*;
        // (used, file, base_is_db_file, mark_zero) -> upkeep, with no
        // snapshot due.
        let rows = [
            // Below both thresholds: nothing, whatever the state.
            ((0, 0, false, false), Nothing),
            ((999, 4999, false, false), Nothing),
            ((999, 4999, true, true), Nothing),
            // Grown past the checkpoint threshold since the last restart.
            ((1000, 1000, false, false), SyncPoint { truncate: false }),
            ((1000, 1000, true, false), SyncPoint { truncate: false }),
            ((1000, 1000, false, true), SyncPoint { truncate: false }),
            // At rest (read mark 0 right after a complete sync point): a new
            // sync point would change nothing, however far walsync stands.
            ((1000, 1000, true, true), Nothing),
            // A large file: a sync point and a TRUNCATE, also when
            // walsync's position is small (a stale tail of a restarted WAL).
            ((1000, 5000, false, false), SyncPoint { truncate: true }),
            ((0, 5000, false, false), SyncPoint { truncate: true }),
            ((0, 5000, true, false), SyncPoint { truncate: true }),
            ((0, 5000, false, true), SyncPoint { truncate: true }),
            // At rest with a large file: TRUNCATE alone.
            ((0, 5000, true, true), Truncate),
            ((9999, 9999, true, true), Truncate),
        ];
        for ((used, file, base, zero), want) in rows {
            let got = upkeep(quiet(), wal_state(used, file, base, zero), LIMITS);
            assert_eq!(
                got, want,
                "used {used}, file {file}, base {base}, mark 0 {zero}"
            );
        }
    }

    #[test]
    fn a_snapshot_comes_before_any_checkpoint_when_it_is_due_or_forced() {
        let busy = wal_state(9999, 9999, false, false);
        let at_rest = wal_state(0, 0, true, true);
        // (forced, taken this sync, commits since, now, due) -> snapshot?
        let rows = [
            // Periodic: due only once the interval passed and something
            // was committed since the last one.
            ((false, false, 1, 20_000, 20_000), true),
            ((false, false, 1, 19_999, 20_000), false),
            ((false, false, 0, 99_999, 20_000), false),
            // Forced: always, but not twice in one sync for the same image
            // (a new generation's first snapshot was just taken).
            ((true, false, 0, 0, 20_000), true),
            ((true, true, 0, 0, 20_000), false),
            ((true, true, 3, 0, 20_000), true),
        ];
        for ((forced, taken, commits, now_ms, due_ms), want) in rows {
            let state = SnapshotState {
                forced,
                taken_this_sync: taken,
                commits_since_snapshot: commits,
                now_ms,
                due_ms,
            };
            for wal in [busy, at_rest] {
                let got = upkeep(state, wal, LIMITS) == Upkeep::Snapshot;
                assert_eq!(got, want, "{state:?}, {wal:?}");
            }
        }
        // Not a snapshot: the WAL decides as without one.
        let taken = SnapshotState {
            forced: true,
            taken_this_sync: true,
            ..quiet()
        };
        assert_eq!(
            upkeep(taken, busy, LIMITS),
            Upkeep::SyncPoint { truncate: true }
        );
        assert_eq!(upkeep(taken, at_rest, LIMITS), Upkeep::Nothing);
    }

    #[test]
    fn sync_points_and_snapshots_are_backfilled_before_the_write_lock() {
        let rows = [
            (Upkeep::Snapshot, true),
            (Upkeep::SyncPoint { truncate: false }, true),
            (Upkeep::SyncPoint { truncate: true }, true),
            // TRUNCATE alone runs at rest: everything is backfilled.
            (Upkeep::Truncate, false),
            (Upkeep::Nothing, false),
        ];
        for (upkeep, want) in rows {
            assert_eq!(backfill_first(upkeep), want, "{upkeep:?}");
        }
    }

    #[test]
    fn only_a_storage_failure_is_an_outage_that_still_settles_the_wal() {
        let storage = ReplicaError::Storage(StorageError::Transport {
            location: "s3".into(),
            detail: "connection refused".into(),
            os_error: None,
        });
        assert!(outage(&storage).is_some());
        let others = [
            ReplicaError::Sqlite(SqliteError::Missing("db".into())),
            ReplicaError::Io {
                path: "db-wal".into(),
                source: std::io::Error::other("read"),
            },
            ReplicaError::Unstable {
                path: "db".into(),
                what: "the WAL changed".into(),
            },
        ];
        for e in others {
            assert!(outage(&e).is_none(), "{e}");
        }
    }

    #[test]
    fn settle_moves_the_mark_after_a_complete_ship_and_checkpoints_beside_during_an_outage() {
        use SettleStep::*;
        // (shipped_all, base_is_db_file, shipped_since_mark, quiet) -> first
        // step.
        let rows = [
            ((true, true, true, true), Nothing),
            ((true, true, false, true), Nothing),
            ((true, true, true, false), Nothing),
            ((true, true, false, false), Nothing),
            // Shipped, and the application has paused: move and backfill.
            ((true, false, true, true), MoveMark),
            // Shipped while the application writes: no move, no backfill
            // (no fsync of its files); at the sync point or once quiet.
            ((true, false, true, false), Defer),
            // Nothing shipped since the mark was taken: never a move, which
            // could take mark 0 unknowingly; a checkpoint at the end.
            ((true, false, false, true), CheckpointAtEnd),
            ((true, false, false, false), CheckpointAtEnd),
            // Uploads fail (`settle(false)`): never a plain move, whatever
            // the base, busy or not.
            ((false, false, true, true), CheckpointBeside),
            ((false, false, false, true), CheckpointBeside),
            ((false, true, true, true), CheckpointBeside),
            ((false, true, false, true), CheckpointBeside),
            ((false, false, true, false), CheckpointBeside),
            ((false, true, false, false), CheckpointBeside),
        ];
        for ((shipped_all, base, since, quiet), want) in rows {
            assert_eq!(
                settle_step(shipped_all, base, since, quiet),
                want,
                "{shipped_all} {base} {since} {quiet}"
            );
        }
    }

    #[test]
    fn the_application_is_quiet_when_a_sync_ships_nothing_or_its_newest_commit_is_old_enough() {
        // (commits shipped, newest commit ms, now ms) -> quiet?
        let rows = [
            // Nothing new since the last sync: quiet, however recent the
            // newest commit (the one shipped by the sync before).
            ((0, 10_000, 10_000), true),
            ((0, 0, 10_000), true),
            // A steady writer: its newest commit is milliseconds old.
            ((100, 9_990, 10_000), false),
            ((1, 10_000, 10_000), false),
            ((1, 10_000 - QUIET_MS + 1, 10_000), false),
            // A pause of QUIET_MS or more before the sync.
            ((1, 10_000 - QUIET_MS, 10_000), true),
            ((20, 8_500, 10_000), true),
            // A commit dated after `now` (the clock stepped back) is recent.
            ((1, 12_000, 10_000), false),
        ];
        for ((commits, newest, now), want) in rows {
            assert_eq!(
                app_paused(commits, newest, now),
                want,
                "{commits} {newest} {now}"
            );
        }
    }

    #[test]
    fn the_database_file_is_the_shipped_state_only_at_the_shipped_end() {
        // (shipped position, end the new mark sees) -> at the shipped end?
        let rows = [
            ((Some(pos(1, 10)), end(1, 10)), true),
            // The application committed after walsync shipped.
            ((Some(pos(1, 10)), end(1, 11)), false),
            // Another WAL (restarted), same frame count.
            ((Some(pos(1, 10)), end(2, 10)), false),
            ((Some(pos(1, 0)), end(1, 0)), true),
            // Nothing shipped in this WAL: only an empty WAL is the end.
            ((None, end(1, 0)), true),
            ((None, end(1, 1)), false),
        ];
        for ((shipped, e), want) in rows {
            assert_eq!(at_shipped_end(shipped, e, PAGE), want, "{shipped:?} {e:?}");
        }
    }

    #[test]
    fn a_moved_mark_sees_the_shipped_end_unless_the_same_wal_grew() {
        use AfterMove::*;
        // (shipped end, end after the move) -> what the new mark sees.
        let rows = [
            ((end(1, 10), end(1, 10)), Same),
            // The application committed meanwhile: the new mark may see it.
            ((end(1, 10), end(1, 11)), Grew),
            // The application restarted the WAL (RESTART or TRUNCATE, or a
            // writer after the move): only a read mark 0 lets it.
            ((end(1, 10), end(2, 0)), Restarted),
            ((end(1, 10), end(2, 30)), Restarted),
            // A RESTART checkpoint with no writer since: the wal-index is
            // empty, the file's header is the old one.
            ((end(1, 10), end(1, 0)), Restarted),
            // TRUNCATE: no header at all.
            ((end(1, 10), end(0, 0)), Restarted),
        ];
        for ((shipped, after), want) in rows {
            assert_eq!(after_move(shipped, after), want, "{shipped:?} {after:?}");
        }
    }

    #[test]
    fn the_mark_rests_at_zero_only_from_a_wholly_backfilled_shipped_end() {
        use AfterMove::*;
        use RestStep::*;
        let stop = |base_is_db_file| Stop { base_is_db_file };
        // (seen, backfilled before the move, checkpoint complete) -> step.
        let rows = [
            ((Same, true, true), AtMarkZero),
            ((Same, true, false), AtMarkZero),
            ((Restarted, false, false), AtMarkZero),
            ((Restarted, true, false), AtMarkZero),
            // The old mark was below the end: backfilled now, move again.
            ((Same, false, true), Again),
            ((Same, false, false), stop(false)),
            ((Grew, true, true), stop(false)),
            ((Grew, false, true), stop(false)),
        ];
        for ((seen, backfilled, complete), want) in rows {
            assert_eq!(
                rest_step(seen, backfilled, complete),
                want,
                "{seen:?} {backfilled} {complete}"
            );
        }
    }

    #[test]
    fn during_an_outage_the_mark_moves_only_past_what_the_old_read_transaction_sees() {
        // (view, end now) -> may move?
        let rows = [
            // No view known yet: note this end, move at the next settle.
            ((None, end(1, 5)), false),
            ((Some(end(1, 5)), end(1, 5)), false),
            // The WAL grew past the view.
            ((Some(end(1, 5)), end(1, 6)), true),
            // A smaller count in the same WAL is not growth.
            ((Some(end(1, 5)), end(1, 4)), false),
            // The WAL was restarted (new salts), whatever its length.
            ((Some(end(1, 5)), end(2, 0)), true),
            ((Some(end(1, 5)), end(2, 5)), true),
            (
                (
                    Some(end(1, 5)),
                    WalEnd {
                        salt1: 1,
                        salt2: 8,
                        frames: 1,
                    },
                ),
                true,
            ),
        ];
        for ((view, now), want) in rows {
            assert_eq!(mark_may_move(view, now), want, "{view:?} {now:?}");
        }
    }

    #[test]
    fn a_sync_point_agrees_only_when_the_wal_ends_where_walsync_stands() {
        // (log_frames, header salt, shipped to) -> agrees?
        let rows = [
            // An empty WAL agrees with anything.
            ((0, None, None), true),
            ((0, Some(header(1)), Some(pos(2, 9))), true),
            ((-1, None, Some(pos(1, 3))), true),
            ((3, Some(header(1)), Some(pos(1, 3))), true),
            // Frames walsync has not shipped, or fewer than it shipped.
            ((4, Some(header(1)), Some(pos(1, 3))), false),
            ((2, Some(header(1)), Some(pos(1, 3))), false),
            // Another WAL than the one walsync stands in.
            ((3, Some(header(2)), Some(pos(1, 3))), false),
            // Frames but no header, or no position.
            ((3, None, Some(pos(1, 3))), false),
            ((3, Some(header(1)), None), false),
        ];
        for ((frames, h, p), want) in rows {
            assert_eq!(
                sync_point_agrees(frames, h, p),
                want,
                "{frames} {h:?} {p:?}"
            );
        }
    }
}
