//! Restore planning: from a listing of one database's objects and a target
//! (latest, a txid, or a time), which generation, which snapshot and which
//! segments to apply, in order, and where to stop.
//!
//! Pure: takes parsed keys (`keys::parse_listing`) and returns a plan; no
//! object is downloaded here. Upholds ARCHITECTURE.md invariant 2 (restore stops at
//! the last commit at or before the target) and the "Time" rule: a restore to
//! time T contains exactly the commits whose recorded time is at or before
//! T, each an upper bound on when its commit was made (README "Point in
//! time"): segments are picked by their first commit's time, and restore
//! stops at the first commit after T. A chain
//! with a hole in it is an error, never a silently shorter restore.

use std::collections::BTreeMap;
use std::fmt;

use crate::keys::{BackupObject, ObjectKind};

/// What point to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Latest,
    /// Up to and including this transaction id.
    Txid(u64),
    /// Every commit made at or before this time (ms since the Unix epoch).
    Time(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    pub generation: u64,
    pub snapshot: BackupObject,
    /// Segments in replay order. Commits at or below the snapshot's txid (or
    /// already applied from an earlier, overlapping segment) are skipped.
    pub segments: Vec<BackupObject>,
    /// Apply no commit above this txid.
    pub max_txid: u64,
    /// Apply no commit whose recorded time is after this.
    pub max_time_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    NoBackup,
    /// The generation has segments but no snapshot to start from.
    MissingSnapshot {
        generation: u64,
    },
    /// Segments are missing between two txids.
    Gap {
        generation: u64,
        after_txid: u64,
        next_txid: u64,
    },
    TxidNotFound {
        txid: u64,
        oldest: u64,
        newest: u64,
    },
    TimeBeforeOldest {
        time_ms: u64,
        oldest_ms: u64,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NoBackup => write!(f, "no backup found (no snapshot under this prefix)"),
            PlanError::MissingSnapshot { generation } => write!(
                f,
                "generation {generation:016x} has no snapshot to start from; restore an earlier point with --txid or --timestamp"
            ),
            PlanError::Gap {
                generation,
                after_txid,
                next_txid,
            } => write!(
                f,
                "generation {generation:016x} is missing the segments for txids {} to {}; \
                 the newest point before the hole is txid {after_txid} (use --txid {after_txid})",
                after_txid + 1,
                next_txid - 1
            ),
            PlanError::TxidNotFound { txid, oldest, newest } => write!(
                f,
                "txid {txid} is not in the backup; restorable txids are {oldest} to {newest}"
            ),
            PlanError::TimeBeforeOldest { time_ms, oldest_ms } => write!(
                f,
                "no backup at or before {}; the oldest restorable time is {}",
                crate::time::format_rfc3339(*time_ms),
                crate::time::format_rfc3339(*oldest_ms)
            ),
        }
    }
}

impl std::error::Error for PlanError {}

/// The objects of one generation.
#[derive(Debug, Default)]
pub struct Generation<'a> {
    pub snapshots: Vec<&'a BackupObject>,
    pub segments: Vec<&'a BackupObject>,
}

impl Generation<'_> {
    /// The newest txid this generation reaches through an unbroken chain from
    /// its newest snapshot, or the hole that stops it.
    pub fn newest_txid(&self) -> Option<u64> {
        let snap = self.snapshots.last()?;
        let ObjectKind::Snapshot { txid, .. } = snap.kind else {
            unreachable!("snapshots holds snapshots")
        };
        let mut newest = txid;
        for s in &self.segments {
            if let ObjectKind::Segment {
                first_txid,
                last_txid,
                ..
            } = s.kind
            {
                if first_txid <= newest + 1 && last_txid > newest {
                    newest = last_txid;
                }
            }
        }
        Some(newest)
    }

    fn first_snapshot_time(&self) -> Option<u64> {
        self.snapshots.iter().find_map(|s| match s.kind {
            ObjectKind::Snapshot { time_ms, .. } => Some(time_ms),
            _ => None,
        })
    }
}

/// Groups objects by generation, in ascending generation order.
pub fn generations(objects: &[BackupObject]) -> BTreeMap<u64, Generation<'_>> {
    let mut gens: BTreeMap<u64, Generation<'_>> = BTreeMap::new();
    for o in objects {
        let g = gens.entry(o.generation).or_default();
        match o.kind {
            ObjectKind::Snapshot { .. } => g.snapshots.push(o),
            ObjectKind::Segment { .. } => g.segments.push(o),
            // Marks help walsync resume; no restore needs one.
            ObjectKind::Mark { .. } => {}
        }
    }
    for g in gens.values_mut() {
        g.snapshots.sort_by_key(|o| o.kind);
        g.segments.sort_by_key(|o| o.kind);
    }
    gens
}

pub fn plan_restore(objects: &[BackupObject], target: Target) -> Result<RestorePlan, PlanError> {
    let gens = generations(objects);
    let (&oldest_gen, _) = gens.iter().next().ok_or(PlanError::NoBackup)?;
    let newest_overall = || {
        gens.values()
            .rev()
            .find_map(|g| g.newest_txid())
            .unwrap_or(oldest_gen)
    };

    let (generation, gen) = match target {
        Target::Latest => gens.iter().next_back(),
        Target::Txid(n) => gens.range(..=n).next_back(),
        Target::Time(t) => gens
            .iter()
            .rev()
            .find(|(_, g)| g.first_snapshot_time().is_some_and(|s| s <= t)),
    }
    .ok_or_else(|| match target {
        Target::Time(t) => PlanError::TimeBeforeOldest {
            time_ms: t,
            oldest_ms: gens
                .values()
                .find_map(|g| g.first_snapshot_time())
                .unwrap_or(0),
        },
        Target::Txid(n) => PlanError::TxidNotFound {
            txid: n,
            oldest: oldest_gen,
            newest: newest_overall(),
        },
        Target::Latest => PlanError::NoBackup,
    })?;
    let generation = *generation;

    let (max_txid, max_time_ms) = match target {
        Target::Latest => (u64::MAX, None),
        Target::Txid(n) => (n, None),
        Target::Time(t) => (u64::MAX, Some(t)),
    };

    let snapshot = gen
        .snapshots
        .iter()
        .rev()
        .find(|s| match s.kind {
            ObjectKind::Snapshot { txid, time_ms } => {
                txid <= max_txid && max_time_ms.is_none_or(|t| time_ms <= t)
            }
            _ => false,
        })
        .ok_or(PlanError::MissingSnapshot { generation })?;
    let ObjectKind::Snapshot {
        txid: snap_txid, ..
    } = snapshot.kind
    else {
        unreachable!("snapshots holds snapshots")
    };

    let mut reached = snap_txid;
    let mut segments = Vec::new();
    for s in &gen.segments {
        let ObjectKind::Segment {
            first_txid,
            last_txid,
            first_time_ms,
            ..
        } = s.kind
        else {
            continue;
        };
        if last_txid <= reached {
            continue;
        }
        if first_txid > max_txid || max_time_ms.is_some_and(|t| first_time_ms > t) {
            break;
        }
        if first_txid > reached + 1 {
            return Err(PlanError::Gap {
                generation,
                after_txid: reached,
                next_txid: first_txid,
            });
        }
        segments.push((*s).clone());
        reached = last_txid;
    }

    if let Target::Txid(n) = target {
        if reached < n {
            return Err(PlanError::TxidNotFound {
                txid: n,
                oldest: oldest_gen,
                newest: newest_overall(),
            });
        }
    }

    Ok(RestorePlan {
        generation,
        snapshot: (*snapshot).clone(),
        segments,
        max_txid,
        max_time_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::testing::{listing, random_history, Lcg};
    use super::*;
    use crate::keys::{segment_key, snapshot_key};

    /// Two generations: gen 1 (snapshot at txid 1, t=100; segments 2-4, 5-6)
    /// and gen 7 (snapshot 7 at t=200, segments 8-9, 10-12 with times 210..230).
    fn sample() -> Vec<String> {
        vec![
            snapshot_key("db", 1, 1, 100),
            segment_key("db", 1, 2, 4, 101, 103),
            segment_key("db", 1, 5, 6, 104, 105),
            snapshot_key("db", 7, 7, 200),
            segment_key("db", 7, 8, 9, 201, 202),
            segment_key("db", 7, 10, 12, 210, 230),
        ]
    }

    fn seg_firsts(p: &RestorePlan) -> Vec<u64> {
        p.segments
            .iter()
            .map(|s| match s.kind {
                ObjectKind::Segment { first_txid, .. } => first_txid,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn latest_uses_newest_generation() {
        let p = plan_restore(&listing(&sample()), Target::Latest).unwrap();
        assert_eq!(p.generation, 7);
        assert_eq!(seg_firsts(&p), vec![8, 10]);
        assert_eq!(p.max_txid, u64::MAX);
    }

    #[test]
    fn txid_picks_its_generation_and_stops() {
        let objs = listing(&sample());
        let p = plan_restore(&objs, Target::Txid(3)).unwrap();
        assert_eq!((p.generation, seg_firsts(&p), p.max_txid), (1, vec![2], 3));
        let p = plan_restore(&objs, Target::Txid(6)).unwrap();
        assert_eq!(seg_firsts(&p), vec![2, 5]);
        let p = plan_restore(&objs, Target::Txid(7)).unwrap();
        assert_eq!((p.generation, seg_firsts(&p)), (7, vec![]));
        let p = plan_restore(&objs, Target::Txid(11)).unwrap();
        assert_eq!(seg_firsts(&p), vec![8, 10]);
        assert_eq!(
            plan_restore(&objs, Target::Txid(13)),
            Err(PlanError::TxidNotFound {
                txid: 13,
                oldest: 1,
                newest: 12
            })
        );
        assert!(matches!(
            plan_restore(&objs, Target::Txid(0)),
            Err(PlanError::TxidNotFound { .. })
        ));
    }

    #[test]
    fn time_picks_commits_read_at_or_before() {
        let objs = listing(&sample());
        let p = plan_restore(&objs, Target::Time(102)).unwrap();
        assert_eq!(
            (p.generation, seg_firsts(&p), p.max_time_ms),
            (1, vec![2], Some(102))
        );
        // Between the generations: the whole of gen 1.
        let p = plan_restore(&objs, Target::Time(150)).unwrap();
        assert_eq!((p.generation, seg_firsts(&p)), (1, vec![2, 5]));
        // Inside the last segment: it is applied partially by time.
        let p = plan_restore(&objs, Target::Time(215)).unwrap();
        assert_eq!((p.generation, seg_firsts(&p)), (7, vec![8, 10]));
        assert_eq!(
            plan_restore(&objs, Target::Time(99)),
            Err(PlanError::TimeBeforeOldest {
                time_ms: 99,
                oldest_ms: 100
            })
        );
    }

    #[test]
    fn a_hole_is_an_error_not_a_shorter_restore() {
        let mut keys = sample();
        keys.remove(4); // segment 8-9 of gen 7
        let objs = listing(&keys);
        assert_eq!(
            plan_restore(&objs, Target::Latest),
            Err(PlanError::Gap {
                generation: 7,
                after_txid: 7,
                next_txid: 10
            })
        );
        // A point before the hole is still restorable.
        assert!(plan_restore(&objs, Target::Txid(7)).is_ok());
    }

    #[test]
    fn newer_snapshot_shortens_the_chain() {
        let mut keys = sample();
        keys.push(snapshot_key("db", 7, 9, 202));
        let p = plan_restore(&listing(&keys), Target::Latest).unwrap();
        assert!(matches!(
            p.snapshot.kind,
            ObjectKind::Snapshot { txid: 9, .. }
        ));
        assert_eq!(seg_firsts(&p), vec![10]);
        let p = plan_restore(&listing(&keys), Target::Txid(8)).unwrap();
        assert!(matches!(
            p.snapshot.kind,
            ObjectKind::Snapshot { txid: 7, .. }
        ));
    }

    #[test]
    fn missing_snapshot_and_empty_listing() {
        assert_eq!(plan_restore(&[], Target::Latest), Err(PlanError::NoBackup));
        let objs = listing(&[segment_key("db", 3, 4, 5, 1, 2)]);
        assert_eq!(
            plan_restore(&objs, Target::Latest),
            Err(PlanError::MissingSnapshot { generation: 3 })
        );
    }

    /// Property: for random chains, planning to every txid yields segments
    /// that are contiguous from the snapshot and cover exactly up to the txid.
    #[test]
    fn random_chains_plan_contiguously() {
        let mut rng = Lcg(7);
        for _ in 0..300 {
            let history = random_history(&mut rng);
            let objs = listing(&history.keys);
            let newest = history.newest_txid;
            for n in 1..=newest {
                let p = plan_restore(&objs, Target::Txid(n)).unwrap();
                let ObjectKind::Snapshot { txid: s, .. } = p.snapshot.kind else {
                    panic!()
                };
                let mut reached = s;
                for seg in &p.segments {
                    let ObjectKind::Segment {
                        first_txid,
                        last_txid,
                        ..
                    } = seg.kind
                    else {
                        panic!()
                    };
                    assert!(first_txid <= reached + 1);
                    reached = last_txid;
                }
                assert!(reached >= n && s <= n);
            }
        }
    }
}

/// Backup histories for the property tests here and in `retention`.
#[cfg(test)]
pub(crate) mod testing {
    use super::BackupObject;
    use crate::keys::{parse_listing, segment_key, snapshot_key};
    use crate::storage::ObjectMeta;

    /// The objects of prefix `db` under these keys.
    pub fn listing(keys: &[String]) -> Vec<BackupObject> {
        let metas: Vec<ObjectMeta> = keys
            .iter()
            .map(|k| ObjectMeta {
                key: k.clone(),
                size: 1,
            })
            .collect();
        parse_listing("db", &metas).unwrap()
    }

    /// A small deterministic generator.
    pub struct Lcg(pub u64);

    impl Lcg {
        /// A number below `m`.
        pub fn below(&mut self, m: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % m
        }
    }

    pub struct History {
        /// Snapshot and segment keys of prefix `db`.
        pub keys: Vec<String>,
        /// Every time a key carries.
        pub times: Vec<u64>,
        pub newest_txid: u64,
        /// Past the newest time.
        pub end_time: u64,
    }

    /// 1 to 3 generations, each a snapshot and up to 7 segments of 1 to 4
    /// commits, with further snapshots now and then and gaps in time.
    pub fn random_history(rng: &mut Lcg) -> History {
        let mut keys = Vec::new();
        let mut times = Vec::new();
        let mut txid = 1u64;
        let mut t = 1000u64;
        for _ in 0..1 + rng.below(3) {
            let gen = txid;
            keys.push(snapshot_key("db", gen, txid, t));
            times.push(t);
            for _ in 0..rng.below(8) {
                let n = 1 + rng.below(4);
                t += 1 + rng.below(5);
                keys.push(segment_key("db", gen, txid + 1, txid + n, t, t + n));
                times.extend([t, t + n]);
                txid += n;
                t += n;
                if rng.below(3) == 0 {
                    t += rng.below(3);
                    keys.push(snapshot_key("db", gen, txid, t));
                    times.push(t);
                }
            }
            txid += 1;
            t += 1 + rng.below(20);
        }
        History {
            keys,
            times,
            newest_txid: txid - 1,
            end_time: t,
        }
    }
}
