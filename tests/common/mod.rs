//! Helpers shared by the integration tests: real servers (`s3server`, and the
//! scripted `fakeserver` and `faultproxy` for answers no local server gives)
//! the application side of a test (`app`: a real SQLite database), the
//! walsync binary as a child (`process`) and the S3 client as the storage
//! tests use it (`s3client`).
//! Each test binary uses some of them, so unused ones are no warning.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod app;
pub mod fakeserver;
pub mod faultproxy;
pub mod process;
pub mod s3client;
pub mod s3server;
pub mod s3servers;

/// A new, empty directory under the system temp dir, unique per process and
/// call.
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    path
}

/// The version of the tool `name` (e.g. `S3S_FS_VERSION`) that
/// `contrib/tools.versions` names, where `contrib/test.sh` reads it too.
pub fn tool_version(name: &str) -> &'static str {
    include_str!("../../contrib/tools.versions")
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .map(str::trim)
        .unwrap_or_else(|| panic!("contrib/tools.versions names {name}"))
}
