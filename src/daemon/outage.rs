//! Whether the storage as a whole is down, as the syncs of many databases
//! show it: pure (the clock and the wall clock are parameters).
//!
//! With thousands of databases, a storage outage made every database log an
//! ERROR at every retry. What the operator needs is one line when the
//! storage stops answering ("storage unreachable since …, N databases
//! waiting, retrying") and one when it answers again ("storage reachable
//! again after …; N databases caught up"); the scheduler logs the
//! per-database lines of an outage at debug.
//!
//! The rule: a sync that failed because the storage could not be reached, or
//! answered with a server error or throttling after the client's own
//! retries, makes its database *waiting*. When at least `OUTAGE_DATABASES`
//! databases (fewer in a smaller catalog, but at least two: one database
//! failing is that database's failure, with its own ERROR lines) are
//! waiting, each with such a failure within `OUTAGE_WINDOW`, the storage is
//! down. A waiting database whose sync succeeds proves the storage is
//! reachable again; the outage is over when no database waits any more. A
//! waiting database that fails for another reason stops waiting (its
//! failure is its own again; the storage did not stop it this time), and so
//! does one that leaves the catalog (which says nothing of the storage).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Databases failing to reach the storage at once that make an outage.
pub(crate) const OUTAGE_DATABASES: usize = 3;

/// How recent their failures must be. The daemon's backoff grows to 60 s
/// (plus jitter), so a database that keeps failing shows it within about
/// that; failures further apart are not one outage.
pub(crate) const OUTAGE_WINDOW: Duration = Duration::from_secs(60);

/// What to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The storage is down: since (wall-clock ms) the first failure of the
    /// databases that showed it, and how many are waiting now.
    Began { since_ms: u64, waiting: usize },
    /// The storage answered again `after` the outage began, and every
    /// database that waited (`caught_up` of them) synced since.
    Ended { after: Duration, caught_up: usize },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Began { since_ms, waiting } => write!(
                f,
                "storage unreachable since {}, {waiting} {} waiting, retrying",
                crate::time::format_rfc3339(*since_ms),
                databases(*waiting)
            ),
            Notice::Ended { after, caught_up } => write!(
                f,
                "storage reachable again after {:.1}s; {caught_up} {} caught up",
                after.as_secs_f64(),
                databases(*caught_up)
            ),
        }
    }
}

fn databases(n: usize) -> &'static str {
    if n == 1 {
        "database"
    } else {
        "databases"
    }
}

/// A database whose last sync could not reach the storage.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// When its first failed sync of this run began.
    since: Instant,
    /// When its latest failure came.
    last: Instant,
}

/// The outage under way.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    /// When a waiting database first got through.
    reachable_at: Option<Instant>,
    caught_up: usize,
}

/// The databases waiting for the storage, and the outage if they make one.
#[derive(Debug, Default)]
pub(crate) struct OutageWatch {
    waiting: HashMap<u64, Waiting>,
    outage: Option<Outage>,
}

impl OutageWatch {
    /// Whether the storage is down: per-database lines go to debug.
    pub(crate) fn in_outage(&self) -> bool {
        self.outage.is_some()
    }

    /// Whether database `id` waits for the storage.
    pub(crate) fn is_waiting(&self, id: u64) -> bool {
        self.waiting.contains_key(&id)
    }

    /// A sync of database `id`, begun at `started`, could not reach the
    /// storage at `now`; `databases` are in the catalog, `wall_ms` is the
    /// wall clock at `now`.
    pub(crate) fn unreachable(
        &mut self,
        id: u64,
        started: Instant,
        now: Instant,
        databases: usize,
        wall_ms: u64,
    ) -> Option<Notice> {
        self.waiting
            .entry(id)
            .and_modify(|w| w.last = now)
            .or_insert(Waiting {
                since: started,
                last: now,
            });
        if let Some(outage) = &mut self.outage {
            // Still (or again) down: the same outage goes on.
            outage.reachable_at = None;
            return None;
        }
        let recent = self
            .waiting
            .values()
            .filter(|w| now.saturating_duration_since(w.last) <= OUTAGE_WINDOW);
        let (count, since) = recent.fold((0, now), |(n, since), w| (n + 1, since.min(w.since)));
        if count < OUTAGE_DATABASES.min(databases.max(2)) {
            return None;
        }
        self.outage = Some(Outage {
            since,
            reachable_at: None,
            caught_up: 0,
        });
        let ago = now.saturating_duration_since(since).as_millis() as u64;
        Some(Notice::Began {
            since_ms: wall_ms.saturating_sub(ago),
            waiting: self.waiting.len(),
        })
    }

    /// A sync of database `id` succeeded at `now`.
    pub(crate) fn reached(&mut self, id: u64, now: Instant) -> Option<Notice> {
        self.waiting.remove(&id)?;
        let outage = self.outage.as_mut()?;
        outage.caught_up += 1;
        outage.reachable_at.get_or_insert(now);
        self.end_if_none_waits()
    }

    /// A sync of database `id` failed at `now` for another reason than the
    /// storage being unreachable: it no longer waits for the storage.
    pub(crate) fn failed_otherwise(&mut self, id: u64, now: Instant) -> Option<Notice> {
        self.waiting.remove(&id)?;
        if let Some(outage) = &mut self.outage {
            outage.reachable_at.get_or_insert(now);
        }
        self.end_if_none_waits()
    }

    /// Database `id` left the catalog: it no longer waits for the storage.
    pub(crate) fn forget(&mut self, id: u64) -> Option<Notice> {
        self.waiting.remove(&id)?;
        self.end_if_none_waits()
    }

    fn end_if_none_waits(&mut self) -> Option<Notice> {
        let outage = self.outage?;
        let reachable_at = outage.reachable_at?;
        if !self.waiting.is_empty() {
            return None;
        }
        self.outage = None;
        Some(Notice::Ended {
            after: reachable_at.saturating_duration_since(outage.since),
            caught_up: outage.caught_up,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What happens to which database, `ms` after the start.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Its sync, begun at `.1`, could not reach the storage.
        Unreachable(u64, u64),
        Reached(u64),
        /// Its sync failed for another reason.
        Other(u64),
        Forget(u64),
    }
    use Step::*;

    const WALL_T0: u64 = 1_800_000_000_000;

    /// Runs `steps` (each at its time in ms) over a catalog of `databases`;
    /// returns the notices with the step they came from, and whether an
    /// outage is under way at the end.
    fn run(databases: usize, steps: &[(u64, Step)]) -> (Vec<(usize, Notice)>, bool) {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = OutageWatch::default();
        let mut notices = Vec::new();
        for (i, &(ms, step)) in steps.iter().enumerate() {
            let notice = match step {
                Unreachable(id, started) => {
                    w.unreachable(id, at(started), at(ms), databases, WALL_T0 + ms)
                }
                Reached(id) => w.reached(id, at(ms)),
                Other(id) => w.failed_otherwise(id, at(ms)),
                Forget(id) => w.forget(id),
            };
            notices.extend(notice.map(|n| (i, n)));
        }
        (notices, w.in_outage())
    }

    fn began(since_ms: u64, waiting: usize) -> Notice {
        Notice::Began {
            since_ms: WALL_T0 + since_ms,
            waiting,
        }
    }

    fn ended(after_ms: u64, caught_up: usize) -> Notice {
        Notice::Ended {
            after: Duration::from_millis(after_ms),
            caught_up,
        }
    }

    #[test]
    fn an_outage_is_several_databases_failing_to_reach_the_storage_together() {
        #[allow(clippy::type_complexity)]
        let table: &[(&str, usize, &[(u64, Step)], &[(usize, Notice)], bool)] = &[
            (
                "one database failing again and again is its own failure",
                100,
                &[
                    (10, Unreachable(1, 0)),
                    (600, Unreachable(1, 500)),
                    (1700, Unreachable(1, 1600)),
                ],
                &[],
                false,
            ),
            (
                "two of many are not enough",
                100,
                &[(10, Unreachable(1, 0)), (20, Unreachable(2, 5))],
                &[],
                false,
            ),
            (
                "three of many within the window: one line, since the first began",
                100,
                &[
                    (10, Unreachable(1, 0)),
                    (20, Unreachable(2, 5)),
                    (30, Unreachable(3, 25)),
                    (40, Unreachable(4, 35)),
                    (50, Unreachable(1, 45)),
                ],
                &[(2, began(0, 3))],
                true,
            ),
            (
                "failures further apart than the window are not one outage",
                100,
                &[
                    (10, Unreachable(1, 0)),
                    (70_000, Unreachable(2, 69_000)),
                    (70_100, Unreachable(3, 70_000)),
                ],
                &[],
                false,
            ),
            (
                "unless the first keeps failing",
                100,
                &[
                    (10, Unreachable(1, 0)),
                    (60_000, Unreachable(1, 59_000)),
                    (70_000, Unreachable(2, 69_000)),
                    (70_100, Unreachable(3, 70_000)),
                ],
                &[(3, began(0, 3))],
                true,
            ),
            (
                "in a catalog of two, both failing is an outage",
                2,
                &[(10, Unreachable(0, 0)), (20, Unreachable(1, 10))],
                &[(1, began(0, 2))],
                true,
            ),
            (
                "a catalog of one never has one",
                1,
                &[(10, Unreachable(0, 0)), (900, Unreachable(0, 800))],
                &[],
                false,
            ),
            (
                "a database that got through stops waiting before an outage",
                100,
                &[
                    (10, Unreachable(1, 0)),
                    (20, Unreachable(2, 5)),
                    (25, Reached(1)),
                    (30, Unreachable(3, 25)),
                ],
                &[],
                false,
            ),
        ];
        for (what, databases, steps, want, outage) in table {
            let (got, in_outage) = run(*databases, steps);
            assert_eq!(&got, want, "{what}");
            assert_eq!(in_outage, *outage, "{what}");
        }
    }

    #[test]
    fn an_outage_ends_once_every_waiting_database_caught_up() {
        #[allow(clippy::type_complexity)]
        let table: &[(&str, &[(u64, Step)], &[(usize, Notice)], bool)] = &[
            (
                "the first success marks the storage back; the last waiting one ends it",
                &[
                    (10, Unreachable(1, 0)),
                    (20, Unreachable(2, 5)),
                    (30, Unreachable(3, 25)),
                    (5_000, Reached(2)),
                    (5_100, Reached(1)),
                    (5_200, Reached(7)),
                    (6_000, Reached(3)),
                ],
                &[(2, began(0, 3)), (6, ended(5_000, 3))],
                false,
            ),
            (
                "databases that fail during the outage wait too",
                &[
                    (10, Unreachable(1, 0)),
                    (20, Unreachable(2, 5)),
                    (30, Unreachable(3, 25)),
                    (40, Unreachable(4, 35)),
                    (5_000, Reached(1)),
                    (5_000, Reached(2)),
                    (5_000, Reached(3)),
                    (8_000, Reached(4)),
                ],
                &[(2, began(0, 3)), (7, ended(5_000, 4))],
                false,
            ),
            (
                "a failure after a first success: still the same outage",
                &[
                    (10, Unreachable(1, 0)),
                    (20, Unreachable(2, 5)),
                    (30, Unreachable(3, 25)),
                    (5_000, Reached(1)),
                    (5_100, Unreachable(2, 5_000)),
                    (9_000, Reached(2)),
                    (9_100, Reached(3)),
                ],
                &[(2, began(0, 3)), (6, ended(9_000, 3))],
                false,
            ),
            (
                "one that fails for its own reason stops waiting",
                &[
                    (10, Unreachable(1, 0)),
                    (20, Unreachable(2, 5)),
                    (30, Unreachable(3, 25)),
                    (5_000, Reached(1)),
                    (5_000, Reached(2)),
                    (5_100, Forget(3)),
                ],
                &[(2, began(0, 3)), (5, ended(5_000, 2))],
                false,
            ),
            (
                "nor does the storage stop the last one this time",
                &[
                    (10, Unreachable(1, 0)),
                    (20, Unreachable(2, 5)),
                    (30, Unreachable(3, 25)),
                    (4_000, Other(2)),
                    (5_000, Reached(1)),
                    (5_100, Other(3)),
                ],
                &[(2, began(0, 3)), (5, ended(4_000, 1))],
                false,
            ),
            (
                "without a success, databases leaving do not say the storage is back",
                &[
                    (10, Unreachable(1, 0)),
                    (20, Unreachable(2, 5)),
                    (30, Unreachable(3, 25)),
                    (40, Forget(1)),
                    (40, Forget(2)),
                    (40, Forget(3)),
                    (90_000, Unreachable(4, 89_000)),
                    (95_000, Reached(4)),
                ],
                &[(2, began(0, 3)), (7, ended(95_000, 1))],
                false,
            ),
            (
                "after it ended, a new one needs several again",
                &[
                    (10, Unreachable(1, 0)),
                    (20, Unreachable(2, 5)),
                    (30, Unreachable(3, 25)),
                    (5_000, Reached(1)),
                    (5_000, Reached(2)),
                    (5_000, Reached(3)),
                    (9_000, Unreachable(1, 8_000)),
                    (9_100, Unreachable(2, 8_100)),
                    (9_200, Unreachable(3, 9_000)),
                ],
                &[(2, began(0, 3)), (5, ended(5_000, 3)), (8, began(8_000, 3))],
                true,
            ),
        ];
        for (what, steps, want, outage) in table {
            let (got, in_outage) = run(100, steps);
            assert_eq!(&got, want, "{what}");
            assert_eq!(in_outage, *outage, "{what}");
        }
    }

    #[test]
    fn the_lines_say_since_when_how_many_and_how_long() {
        assert_eq!(
            began(1_500, 3).to_string(),
            "storage unreachable since 2027-01-15T08:00:01.500Z, 3 databases waiting, retrying"
        );
        assert_eq!(
            ended(12_340, 1).to_string(),
            "storage reachable again after 12.3s; 1 database caught up"
        );
    }
}
