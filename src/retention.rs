//! Retention: which objects no restore inside the retention window needs.
//!
//! `plan_retention` is pure. The window is `[now - retention, now]`; the
//! *anchor* is the snapshot a restore to the window's start would use. Every
//! restore to a time inside the window uses the anchor or something newer,
//! so the plan deletes only what is older than the anchor: earlier
//! generations, earlier snapshots of the anchor's generation and segments
//! that end at or before the anchor. The newest restorable chain is never
//! touched, nor is anything when the bucket's chain is broken (a plan that
//! cannot be made deletes nothing). `prune` is the I/O around it.

use std::time::Duration;

use crate::keys::{self, BackupObject, ObjectKind};
use crate::plan::{plan_restore, Target};
use crate::storage::{Storage, StorageError};

/// The objects to delete so that every time at or after `window_start_ms`
/// stays restorable exactly as before.
pub fn plan_retention(objects: &[BackupObject], window_start_ms: u64) -> Vec<&BackupObject> {
    let Ok(anchor) = plan_restore(objects, Target::Time(window_start_ms)) else {
        return Vec::new();
    };
    let ObjectKind::Snapshot {
        txid: anchor_txid, ..
    } = anchor.snapshot.kind
    else {
        unreachable!("a plan starts at a snapshot")
    };
    objects
        .iter()
        .filter(|o| {
            o.generation < anchor.generation
                || (o.generation == anchor.generation
                    && match o.kind {
                        ObjectKind::Snapshot { txid, .. } => txid < anchor_txid,
                        ObjectKind::Segment { last_txid, .. } => last_txid <= anchor_txid,
                        ObjectKind::Mark { txid, .. } => txid < anchor_txid,
                    })
        })
        .collect()
}

/// What `prune` did (or would do, with `dry_run`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub deleted: Vec<String>,
    pub bytes: u64,
    pub kept: usize,
}

#[derive(Debug)]
pub enum PruneError {
    Storage(StorageError),
    BadKey(keys::BadKey),
}

impl std::fmt::Display for PruneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PruneError::Storage(e) => e.fmt(f),
            PruneError::BadKey(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PruneError {}

/// Deletes what the retention plan allows for the database at `prefix`.
pub fn prune(
    storage: &dyn Storage,
    prefix: &str,
    retention: Duration,
    now_ms: u64,
    dry_run: bool,
) -> Result<PruneReport, PruneError> {
    let listing = storage
        .list(&keys::database_root(prefix))
        .map_err(PruneError::Storage)?;
    let objects = keys::parse_listing(prefix, &listing).map_err(PruneError::BadKey)?;
    let window_start = now_ms.saturating_sub(retention.as_millis() as u64);
    let doomed = plan_retention(&objects, window_start);
    let report = PruneReport {
        deleted: doomed.iter().map(|o| o.key.clone()).collect(),
        bytes: doomed.iter().map(|o| o.size).sum(),
        kept: objects.len() - doomed.len(),
    };
    if !dry_run && !report.deleted.is_empty() {
        // Every object in the plan is older than the anchor, so an
        // interrupted prune leaves the kept chain whole.
        storage
            .delete(&report.deleted)
            .map_err(PruneError::Storage)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{segment_key, snapshot_key};
    use crate::plan::testing::{listing, random_history, Lcg};

    #[test]
    fn keeps_the_anchor_and_everything_after() {
        let keys = vec![
            snapshot_key("db", 1, 1, 100),
            segment_key("db", 1, 2, 4, 101, 103),
            snapshot_key("db", 5, 5, 200),
            segment_key("db", 5, 6, 7, 201, 202),
            snapshot_key("db", 5, 7, 210),
            segment_key("db", 5, 8, 9, 220, 230),
        ];
        let objs = listing(&keys);
        let names =
            |v: Vec<&BackupObject>| v.into_iter().map(|o| o.key.clone()).collect::<Vec<_>>();
        // Window starting before any backup: nothing goes.
        assert!(plan_retention(&objs, 50).is_empty());
        // Window starting inside gen 1: nothing of gen 1's chain can go.
        assert!(plan_retention(&objs, 102).is_empty());
        // Window starting in gen 5 after its second snapshot: gen 1 and the
        // first part of gen 5 go.
        assert_eq!(names(plan_retention(&objs, 215)), keys[..4].to_vec());
        // Window starting after everything: the newest chain stays.
        assert_eq!(names(plan_retention(&objs, 10_000)), keys[..4].to_vec());
    }

    #[test]
    fn a_broken_chain_deletes_nothing() {
        let keys = vec![
            snapshot_key("db", 1, 1, 100),
            segment_key("db", 1, 5, 6, 110, 111),
        ];
        assert!(plan_retention(&listing(&keys), 10_000).is_empty());
    }

    /// Property: for random histories and windows, every time inside the
    /// window plans exactly as it did before pruning.
    #[test]
    fn every_point_in_the_window_stays_restorable() {
        let mut rng = Lcg(11);
        for _ in 0..400 {
            let history = random_history(&mut rng);
            let (times, t) = (&history.times, history.end_time);
            let all = listing(&history.keys);
            let start = 990 + rng.below(t - 990 + 10);
            let doomed: Vec<String> = plan_retention(&all, start)
                .iter()
                .map(|o| o.key.clone())
                .collect();
            let kept: Vec<BackupObject> = all
                .iter()
                .filter(|o| !doomed.contains(&o.key))
                .cloned()
                .collect();
            assert!(!kept.is_empty());
            for &probe in times
                .iter()
                .filter(|&&x| x >= start)
                .chain([start, t + 5].iter())
            {
                assert_eq!(
                    plan_restore(&kept, Target::Time(probe)),
                    plan_restore(&all, Target::Time(probe)),
                    "time {probe}, window from {start}"
                );
            }
            assert_eq!(
                plan_restore(&kept, Target::Latest),
                plan_restore(&all, Target::Latest)
            );
        }
    }
}
