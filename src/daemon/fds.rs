//! The descriptor budget of the daemon: how many file descriptors walsync
//! wants for its databases, whether the open-file limit leaves room for
//! every one of them active at once, and, when it does not, how many
//! databases may be opened now without taking the descriptors that open
//! ones need to sync or be released (and so give theirs back).
//!
//! It counts /proc/self/fd (I/O) and logs the shortage; the scheduler asks
//! it through `Descriptors`, so that the decisions stay testable with a
//! fake. A sync that failed for want of descriptors is recognised by the
//! OS error it carries (EMFILE, ENFILE), or by SQLite's "cannot open" when
//! the descriptors are nearly all in use, never by the text of a message.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::schedule::MAX_OPEN;
use crate::replica::ReplicaError;
use crate::signals;

/// Descriptors walsync keeps for itself whatever the number of databases:
/// standard streams, the watcher, S3 connections, the metrics listener.
pub(crate) const FDS_RESERVED: u64 = 32;
/// Descriptors an active database may hold: walsync's own, the reader's
/// database, WAL and -shm files, a checkpointing connection's. A released
/// (idle) database keeps one.
pub(crate) const FDS_PER_ACTIVE_DATABASE: u64 = 6;
/// Descriptors a job may open besides its database's: a connection to the
/// storage, a spool file for a large transaction. Kept free for every job
/// that runs or is started (`Schedule` takes them from the budget as it
/// starts each): a database opened with the last of them could not upload
/// its snapshot, nor be let go before it had, and held its own for good.
/// Reserved for every job the workers could run instead, whether or not
/// the limit let that many run, it left nothing to open a database with
/// under a low limit and many workers, and replication stalled.
pub(crate) const FDS_PER_JOB: u64 = 2;
/// How old a count of open descriptors may be when deciding to open one more.
const FD_COUNT_MAX_AGE: Duration = Duration::from_millis(100);
/// How long a database waits to be opened while descriptors are short.
pub(crate) const FD_WAIT: Duration = Duration::from_millis(250);
/// While databases wait for descriptors, an open one counts as idle after
/// `idle_release_after` divided by this, not after all of it: otherwise the
/// waiting ones are not replicated at all meanwhile. Not at once: one
/// written a moment ago is likely to be written again, and letting it go
/// and opening it again for every commit would spend the descriptors and
/// jobs the waiting ones need (and invite a new generation each time).
pub(crate) const PRESSED_IDLE_DIVISOR: u32 = 10;
/// How often the "out of file descriptors" line may repeat.
const FD_EXHAUSTED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The open-file limit at which every one of `databases` can be active at
/// once: below it, descriptors are budgeted.
pub(crate) fn fds_wanted(databases: u64) -> u64 {
    databases * FDS_PER_ACTIVE_DATABASE + FDS_RESERVED
}

/// The open-file limit walsync asks for `databases`: one descriptor for
/// each, all of `FDS_PER_ACTIVE_DATABASE` for as many as are opened at
/// once at start-up (`MAX_OPEN`, see `schedule`), and its own. The same as
/// `fds_wanted` up to `MAX_OPEN` databases; for 100,000, 110,272 instead
/// of 600,032. More databases active at once than `MAX_OPEN` may then
/// wait for descriptors, as under any limit below `fds_wanted`.
pub(crate) fn fds_recommended(databases: u64) -> u64 {
    let window = databases.min(MAX_OPEN as u64);
    databases + window * (FDS_PER_ACTIVE_DATABASE - 1) + FDS_RESERVED
}

/// The window of databases opened from nothing at once (`MAX_OPEN` at
/// most, at least one per job, below which the descriptor budget alone
/// holds opens back) that an open-file limit of `limit` has room for with
/// `databases`: one descriptor for each of them, walsync's own, 4 for each
/// of `max_jobs` jobs, and 5 more for each open database. Under a limit
/// below `fds_recommended`, a window of `MAX_OPEN` had the descriptor
/// budget alone hold opens back, at the very edge of the limit, where a
/// release (which needs descriptors for a moment) could fail for want of
/// one and give none back: start-up stalled at the limit (18,000
/// databases under 20,000).
pub(crate) fn open_window(limit: u64, databases: u64, max_jobs: u64) -> usize {
    active_at_once(limit, databases, max_jobs * 4, 0)
        .clamp(max_jobs.clamp(1, MAX_OPEN as u64), MAX_OPEN as u64) as usize
}

/// The jobs that may run at once under `limit` with `databases`, of at most
/// `max_jobs`: each released database holds one descriptor, each running
/// job's database the rest of an active one's and the job its own; at least
/// `MIN_JOBS`. Reserving for more jobs than that (many workers, few
/// descriptors) left nothing to open a database with once the others were
/// released, and replication stalled.
fn jobs_at_once(limit: u64, databases: u64, max_jobs: usize) -> usize {
    const MIN_JOBS: u64 = 4;
    let affordable = active_at_once(limit, databases, 0, FDS_PER_JOB);
    (max_jobs as u64).min(affordable.max(MIN_JOBS)) as usize
}

/// The model of descriptors that `open_window` and `jobs_at_once` share:
/// how many databases can be active at once under `limit` with
/// `databases`. Every database holds one descriptor (walsync's own; a
/// released database keeps only that), walsync holds `FDS_RESERVED`, and
/// `kept` more are kept aside; what is left goes to active databases, each
/// of which adds the rest of `FDS_PER_ACTIVE_DATABASE` and `extra_each`
/// (its job's own, when each is a running job). 0 under a limit that
/// leaves nothing (or not even one per database).
fn active_at_once(limit: u64, databases: u64, kept: u64, extra_each: u64) -> u64 {
    let left = limit.saturating_sub(databases + FDS_RESERVED + kept);
    left / (FDS_PER_ACTIVE_DATABASE - 1 + extra_each)
}

/// How to raise the limit, for messages.
fn raise_limit_hint(to: u64) -> String {
    format!(
        "raise it to at least {to} (LimitNOFILE={to} in the systemd unit, or ulimit -n {to} \
         in the shell that starts walsync)"
    )
}

/// What the scheduler needs to know about descriptors (the daemon's
/// `FdBudget`, or a fake in tests).
pub(crate) trait Descriptors {
    /// Whether the open-file limit is below what `databases` active at once
    /// could need: only then are descriptors budgeted.
    fn limit_below_wanted(&self, databases: u64) -> bool;
    /// Descriptors that jobs started now may take: `None` when the
    /// open-file limit has room for every database active at once (then
    /// nothing needs counting), else what is free beyond what the `running`
    /// jobs may still open.
    fn open_budget(&self, databases: u64, running: usize) -> Option<u64>;
    /// The window of databases opened from nothing at once that the limit
    /// has room for with `databases` (`open_window`); `None` while the
    /// limit is not known.
    fn open_window(&self, databases: u64, max_jobs: usize) -> Option<usize>;
    /// How many of `max_jobs` may run at once: all of them unless the limit
    /// is below what `databases` active at once could need, then no more
    /// than could run with their databases open while every other database
    /// is released (`jobs_at_once`).
    fn max_jobs(&self, databases: u64, max_jobs: usize) -> usize;
    /// A database is being opened: the count moves by an estimate.
    fn opened(&self);
    /// Names a shortage of descriptors (at most once a minute).
    fn report_shortage(&mut self, databases: u64, now: Instant);
}

/// A count of the open descriptors (a directory read of /proc/self/fd, as
/// costly as there are descriptors), and the databases opened and released
/// since, which move it by an estimate until the next count.
#[derive(Clone, Copy)]
struct FdCount {
    at: Instant,
    n: u64,
    opened: u64,
    released: u64,
}

impl FdCount {
    /// Descriptors a release is taken to give back: fewer than an active
    /// database may hold (an estimate too high would open too many).
    const FREED_BY_RELEASE: u64 = 3;

    fn used(&self) -> u64 {
        (self.n + self.opened * FDS_PER_ACTIVE_DATABASE)
            .saturating_sub(self.released * Self::FREED_BY_RELEASE)
    }
}

/// The process's descriptors: its soft limit, and the last count.
#[derive(Default)]
pub(crate) struct FdBudget {
    /// The soft open-file limit, once known.
    limit: Option<u64>,
    /// When the "out of file descriptors" line was last logged.
    exhausted_logged: Option<Instant>,
    /// The last count of open descriptors, and what changed since.
    count: Cell<Option<FdCount>>,
}

impl FdBudget {
    /// Raises the soft open-file limit as far as the hard one allows and
    /// checks it against `databases`: `Err` (the message) when it cannot
    /// hold even one descriptor per database; a warning when it cannot
    /// hold every one active at once.
    pub(crate) fn raise_limit(&mut self, databases: u64) -> Result<(), String> {
        match signals::raise_fd_limit() {
            Ok((soft, hard)) => {
                self.limit = Some(soft);
                let wanted = fds_recommended(databases);
                if soft < databases + FDS_RESERVED {
                    // Not even one descriptor per database: some could never be
                    // replicated. Better refused now than failing for ever.
                    return Err(format!(
                        "the open-file limit is {soft} (hard limit {hard}), too low for {databases} \
                         databases: walsync needs one descriptor per database, up to \
                         {FDS_PER_ACTIVE_DATABASE} per active one and about {FDS_RESERVED} of its own; {}",
                        raise_limit_hint(wanted)
                    ));
                }
                if soft < wanted {
                    log::warn!(
                        "the open-file limit is {soft} (hard limit {hard}); {databases} databases may \
                         need up to {wanted} when many are active, and those that cannot be opened \
                         then wait and are retried; {}",
                        raise_limit_hint(wanted)
                    );
                }
            }
            Err(e) => log::warn!("cannot read the open-file limit: {e}"),
        }
        Ok(())
    }

    /// A database was released: the count moves by an estimate.
    pub(crate) fn released(&self) {
        self.count_moves(|c| c.released += 1);
    }

    /// Moves the descriptor count, if one was taken, by `change`.
    fn count_moves(&self, change: impl FnOnce(&mut FdCount)) {
        if let Some(mut c) = self.count.get() {
            change(&mut c);
            self.count.set(Some(c));
        }
    }

    /// Whether a failed sync looks like the process ran out of descriptors:
    /// an OS error that says so (EMFILE, ENFILE), or SQLite's "unable to
    /// open database file" (which hides the errno, and may come from the
    /// WAL or -shm file) while the limit is below what every database
    /// active at once would need, or nearly every descriptor is in use.
    pub(crate) fn sync_failed_for_descriptors(&self, error: &ReplicaError, databases: u64) -> bool {
        if error.is_out_of_descriptors() {
            return true;
        }
        let limit = self.limit.unwrap_or(u64::MAX);
        error.is_cannot_open()
            && (limit < fds_wanted(databases)
                || signals::open_fd_count().map_or_else(
                    |e| signals::is_out_of_fds(&e),
                    |used| used + used / 10 >= limit,
                ))
    }
}

impl Descriptors for FdBudget {
    fn limit_below_wanted(&self, databases: u64) -> bool {
        self.limit
            .is_some_and(|limit| limit < fds_wanted(databases))
    }

    fn open_window(&self, databases: u64, max_jobs: usize) -> Option<usize> {
        let limit = self.limit?;
        Some(open_window(limit, databases, max_jobs as u64))
    }

    fn max_jobs(&self, databases: u64, max_jobs: usize) -> usize {
        match self.limit {
            Some(limit) if self.limit_below_wanted(databases) => {
                jobs_at_once(limit, databases, max_jobs)
            }
            _ => max_jobs,
        }
    }

    fn open_budget(&self, databases: u64, running: usize) -> Option<u64> {
        if !self.limit_below_wanted(databases) {
            return None;
        }
        let limit = self.limit?;
        // Counting /proc/self/fd costs a directory read of every
        // descriptor: at most every FD_COUNT_MAX_AGE, estimated in between
        // (jobs started since are covered by `running`).
        let now = Instant::now();
        let used = match self.count.get() {
            Some(c) if now.duration_since(c.at) < FD_COUNT_MAX_AGE => c.used(),
            _ => {
                let n = match signals::open_fd_count() {
                    Ok(n) => n,
                    // Not even one left to count them with.
                    Err(e) if signals::is_out_of_fds(&e) => limit,
                    // No way to count here: opening is left to fail and be
                    // retried.
                    Err(_) => return None,
                };
                self.count.set(Some(FdCount {
                    at: now,
                    n,
                    opened: 0,
                    released: 0,
                }));
                n
            }
        };
        // What the running jobs may still open, and room for two more (a
        // release needs one for a moment); each job started from here on
        // takes its own `FDS_PER_JOB` from what is returned.
        Some(limit.saturating_sub(used + (running as u64 + 2) * FDS_PER_JOB))
    }

    fn opened(&self) {
        self.count_moves(|c| c.opened += 1);
    }

    fn report_shortage(&mut self, databases: u64, now: Instant) {
        if self
            .exhausted_logged
            .is_some_and(|t| now.duration_since(t) < FD_EXHAUSTED_LOG_INTERVAL)
        {
            return;
        }
        self.exhausted_logged = Some(now);
        let limit = self.limit.unwrap_or(u64::MAX);
        let used =
            signals::open_fd_count().map_or(String::new(), |n| format!("{n} descriptors in use, "));
        log::error!(
            "out of file descriptors ({used}open-file limit {limit}) with {databases} databases: \
             the databases that cannot be opened now wait until others are released or fail, \
             the others go on; {}",
            raise_limit_hint(fds_recommended(databases))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_asked_for_holds_every_database_and_the_window_of_open_ones() {
        // databases -> limit asked for
        for (databases, want) in [
            (1, 38),
            (64, 416),
            (2_048, 2_048 * 6 + 32),
            (10_000, 10_000 + 2_048 * 5 + 32),
            (100_000, 110_272),
        ] {
            assert_eq!(fds_recommended(databases), want, "{databases}");
            assert!(want <= fds_wanted(databases));
        }
    }

    #[test]
    fn the_window_of_open_databases_fits_the_limit() {
        // (limit, databases, max_jobs) -> window
        for (limit, databases, max_jobs, want) in [
            // Room for all of the window.
            (110_272, 100_000, 4, 2_044),
            (1 << 20, 100_000, 4, MAX_OPEN),
            (20_000, 1_000, 4, MAX_OPEN),
            // A limit of 20,000: 10,000 and 18,000 databases.
            (20_000, 10_000, 4, 1_990),
            (20_000, 18_000, 16, 380),
            // Barely one descriptor per database: one per job.
            (10_032, 10_000, 4, 4),
            (100, 64, 4, 4),
        ] {
            assert_eq!(
                open_window(limit, databases, max_jobs),
                want,
                "{limit} {databases} {max_jobs}"
            );
            // The window open and every other database released fits.
            if want > max_jobs as usize {
                let used = databases
                    + want as u64 * (FDS_PER_ACTIVE_DATABASE - 1)
                    + FDS_RESERVED
                    + max_jobs * 4;
                assert!(used <= limit, "{limit} {databases}: {used}");
            }
        }
    }

    #[test]
    fn a_descriptor_count_moves_with_opens_and_releases_until_the_next() {
        let c = |n, opened, released| FdCount {
            at: Instant::now(),
            n,
            opened,
            released,
        };
        assert_eq!(c(100, 0, 0).used(), 100);
        // An opened database may take all it can; a release is taken to give
        // back fewer than that.
        assert_eq!(c(100, 2, 0).used(), 112);
        assert_eq!(c(100, 2, 3).used(), 103);
        assert_eq!(c(4, 0, 10).used(), 0);
    }

    #[test]
    fn what_is_left_beyond_one_per_database_goes_to_active_ones() {
        // (limit, databases, kept, extra_each) -> active at once
        for ((limit, databases, kept, extra_each), want) in [
            // (20,000 - 10,000 - 32) / 5, each adding 5.
            ((20_000, 10_000, 0, 0), 1_993),
            // 16 kept aside for 4 jobs.
            ((20_000, 10_000, 16, 0), 1_990),
            // Each a running job, adding its own 2: / 7.
            ((20_000, 10_000, 0, 2), 1_424),
            ((200, 64, 0, 2), 14),
            // Exactly one per database and walsync's own: none; below
            // that (refused at start), none without underflow.
            ((10_032, 10_000, 0, 0), 0),
            ((10_036, 10_000, 0, 0), 0),
            ((10_037, 10_000, 0, 0), 1),
            ((48, 64, 0, 2), 0),
            ((100, 64, 16, 0), 0),
            ((0, 0, 0, 0), 0),
            // No database: all of it but walsync's own.
            ((1_032, 0, 0, 0), 200),
        ] {
            assert_eq!(
                active_at_once(limit, databases, kept, extra_each),
                want,
                "limit {limit}, {databases} databases, {kept} kept, {extra_each} extra"
            );
        }
    }

    #[test]
    fn under_a_low_limit_no_more_jobs_run_than_it_can_hold() {
        // (limit, databases, max_jobs) -> jobs at once
        let rows = [
            // Room for every worker's job.
            ((20_000, 10_000, 32), 32),
            ((20_000, 10_000, 4), 4),
            // 64 databases under 100: nearly all released leave room for
            // no job by the estimate; four run anyway (one at a time
            // would leave most databases unreplicated for long).
            ((100, 64, 32), 4),
            ((100, 64, 2), 2),
            // (200 - 64 - 32) / 7 = 14.
            ((200, 64, 32), 14),
            // A limit below one descriptor per database (refused at start)
            // does not underflow.
            ((48, 64, 32), 4),
        ];
        for ((limit, databases, max_jobs), want) in rows {
            assert_eq!(
                jobs_at_once(limit, databases, max_jobs),
                want,
                "limit {limit}, {databases} databases, {max_jobs} jobs"
            );
        }
    }

    #[test]
    fn a_sync_short_of_descriptors_is_known_by_its_error_kind() {
        use crate::sqlite::SqliteError;
        use std::path::PathBuf;
        let io = |errno| ReplicaError::Io {
            path: PathBuf::from("/db-wal"),
            source: std::io::Error::from_raw_os_error(errno),
        };
        let cannot_open = || {
            ReplicaError::Sqlite(SqliteError::Sqlite {
                path: PathBuf::from("/db"),
                what: "take read lock",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some("unable to open database file".into()),
                ),
            })
        };
        let roomy = FdBudget::default();
        let low = FdBudget {
            limit: Some(1000),
            ..FdBudget::default()
        };
        // EMFILE and ENFILE whatever the limit; not another OS error.
        for budget in [&roomy, &low] {
            assert!(budget.sync_failed_for_descriptors(&io(libc::EMFILE), 64));
            assert!(budget.sync_failed_for_descriptors(&io(libc::ENFILE), 64));
            assert!(!budget.sync_failed_for_descriptors(&io(libc::EACCES), 64));
        }
        let wrapped = ReplicaError::Sqlite(SqliteError::Io {
            path: PathBuf::from("/db"),
            source: std::io::Error::from_raw_os_error(libc::EMFILE),
        });
        assert!(roomy.sync_failed_for_descriptors(&wrapped, 64));
        // An S3 request that could not open its socket, by the OS error it
        // carries, not by its text.
        let transport = |os_error| {
            ReplicaError::Storage(crate::storage::StorageError::Transport {
                location: "s3://b".into(),
                detail: "Too many open files (os error 24)".into(),
                os_error,
            })
        };
        assert!(roomy.sync_failed_for_descriptors(&transport(Some(libc::EMFILE)), 64));
        assert!(!roomy.sync_failed_for_descriptors(&transport(None), 64));
        // SQLite's "cannot open" hides the errno: a shortage only while the
        // limit is below what every database active at once needs.
        assert!(low.sync_failed_for_descriptors(&cannot_open(), 200));
        assert!(!low.sync_failed_for_descriptors(&cannot_open(), 2));
        assert!(!roomy.sync_failed_for_descriptors(&cannot_open(), 200));
        let missing = ReplicaError::Sqlite(SqliteError::Missing(PathBuf::from("/db")));
        assert!(!low.sync_failed_for_descriptors(&missing, 200));
    }
}
