//! The retry policy of every S3 call: how many tries, how long to wait
//! between them (jittered exponential backoff, from `crate::backoff`), and
//! the one loop that runs an attempt until it succeeds, fails for good or
//! runs out of tries.

use std::time::Duration;

use super::answers::Failure;
use super::S3Storage;
use crate::backoff::{self, Jitter};
use crate::storage::StorageError;

/// How often and how patiently a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in total, the first one included (0 counts as 1).
    pub max_attempts: u32,
    /// The delay before the first retry, doubled for each further one.
    pub base_delay: Duration,
    /// No delay is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 for the first retry), given a
    /// random `unit` in `[0, 1)`: "equal jitter", i.e. between half and all of
    /// `min(max_delay, base_delay * 2^(retry-1))`.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let cap = backoff::exponential(self.base_delay, retry.saturating_sub(1), self.max_delay);
        backoff::down_to_half(cap, unit)
    }
}

/// Adds "after N attempts" to the detail of an error that was retried.
fn note_attempts(error: &mut StorageError, tries: u32) {
    match error {
        StorageError::Transport { detail, .. }
        | StorageError::Server { detail, .. }
        | StorageError::BadResponse { detail, .. } => {
            detail.push_str(&format!(", after {tries} attempts"))
        }
        _ => {}
    }
}

impl S3Storage {
    /// The one retry loop of every S3 call: runs `attempt` until it succeeds,
    /// fails for good, or `max_attempts` are used, sleeping a jittered
    /// exponential backoff between tries. `what` and `key` are for log lines.
    pub(super) fn retry<T>(
        &self,
        what: &str,
        key: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, StorageError> {
        let max_attempts = self.retry.max_attempts.max(1);
        let jitter = Jitter::seeded();
        let mut tries = 1;
        loop {
            match attempt() {
                Ok(value) => return Ok(value),
                Err(failure) if failure.retryable && tries < max_attempts => {
                    let delay = self.retry.backoff(tries, jitter.next_unit());
                    log::warn!(
                        "{what} {key:?}: attempt {tries}/{max_attempts} failed: {}; retrying in {delay:?}",
                        failure.error
                    );
                    std::thread::sleep(delay);
                    tries += 1;
                }
                Err(failure) => {
                    let mut error = failure.error;
                    if failure.retryable && tries > 1 {
                        note_attempts(&mut error, tries);
                    }
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_half_and_full_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        };
        for retry in 1..=12 {
            let cap = Duration::from_millis(100 * 2u64.pow(retry - 1)).min(Duration::from_secs(5));
            assert_eq!(policy.backoff(retry, 0.0), cap / 2, "retry {retry}");
            assert!(policy.backoff(retry, 0.999_999) <= cap, "retry {retry}");
            assert!(policy.backoff(retry, 0.5) >= cap / 2, "retry {retry}");
        }
        assert_eq!(policy.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(u32::MAX, 1.0), Duration::from_secs(5));
    }
}
