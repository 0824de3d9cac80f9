//! `S3Storage` as the storage tests use it: quick retries, and bytes put
//! and read back whole.

use std::io::Read;
use std::time::Duration;

use walsync::storage::s3::{RetryPolicy, S3Settings, S3Storage};
use walsync::storage::{Body, Storage};

/// Retries short enough for a test that expects a failure.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
    }
}

/// An `S3Storage` on `settings` with `fast_retry`.
pub fn fast_storage(settings: S3Settings) -> S3Storage {
    S3Storage::new(settings)
        .unwrap_or_else(|e| panic!("settings of the test server are valid: {e}"))
        .with_retry(fast_retry())
}

pub fn put_bytes(storage: &dyn Storage, key: &str, bytes: &[u8]) {
    storage
        .put(key, Body::Bytes(bytes), crc32fast::hash(bytes))
        .unwrap_or_else(|e| panic!("{}: put {key}: {e}", storage.location()));
}

pub fn get_bytes(storage: &S3Storage, key: &str) -> Vec<u8> {
    let mut reader = storage
        .get(key)
        .unwrap_or_else(|e| panic!("{}: get {key}: {e}", storage.location()));
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("{}: read {key}: {e}", storage.location()));
    bytes
}
