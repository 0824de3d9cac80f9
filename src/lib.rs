//! walsync: continuous backup of many SQLite databases (WAL mode) to
//! S3-compatible storage from one small synchronous process, and exact
//! restore of any of them to the newest transaction or a point in time.
//!
//! The pure core (`wal`, `format`, `keys`, `plan`, `time`) does no I/O; the
//! edges (`storage`, `sqlite`, `replica`, `restore`, `daemon`, `cmd`) do.
//! See DESIGN.md for the invariants each module upholds.

pub mod cmd;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod format;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod replica;
pub mod restore;
pub mod retention;
pub mod signals;
pub mod spool;
pub mod sqlite;
pub mod storage;
pub mod time;
pub mod wal;

/// Helpers shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    /// How many inputs each fuzz loop tries: `WALSYNC_FUZZ_ITERS` if set
    /// (`bench/fuzz.sh` sets a large count), else the loop's `default`, small
    /// enough for every `cargo test`.
    pub(crate) fn fuzz_iters(default: u64) -> u64 {
        match std::env::var("WALSYNC_FUZZ_ITERS") {
            Ok(v) => v
                .trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("WALSYNC_FUZZ_ITERS={v:?} is not a count")),
            Err(_) => default,
        }
    }

    /// Runs `f`; a panic is counted in `panics` (the loop goes on, and the
    /// test fails at the end with the total) instead of ending the loop.
    pub(crate) fn counting_panics<T>(panics: &mut u64, f: impl FnOnce() -> T) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(v) => Some(v),
            Err(_) => {
                *panics += 1;
                None
            }
        }
    }
}
