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
pub mod sqlite;
pub mod storage;
pub mod time;
pub mod wal;
