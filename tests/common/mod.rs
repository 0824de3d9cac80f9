//! Helpers shared by the integration tests: real servers (`s3server`, and the
//! scripted `fakeserver` and `faultproxy` for answers no local server gives)
//! and the application side of a test (`app`: a real SQLite database).
//! Each test binary uses some of them, so unused ones are no warning.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod app;
pub mod fakeserver;
pub mod faultproxy;
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
