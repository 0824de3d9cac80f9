//! The retry policy of every S3 call: how many tries, how long to wait
//! between them (jittered exponential backoff, from `crate::backoff`), and
//! the one loop that runs an attempt until it succeeds, fails for good or
//! runs out of tries.

use std::sync::atomic::{AtomicU64, Ordering};
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

    /// Tries in total, at least one.
    fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// What to do after try number `tries` (from 1) failed, `retryable` or
    /// not; `unit` is a random number in `[0, 1)` for the jitter.
    pub(super) fn after_failure(&self, tries: u32, retryable: bool, unit: f64) -> AfterFailure {
        if retryable && tries < self.attempts() {
            AfterFailure::RetryAfter(self.backoff(tries, unit))
        } else {
            AfterFailure::GiveUp {
                note_attempts: retryable && tries > 1,
            }
        }
    }
}

/// The retry loop's decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterFailure {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Report the failure; `note_attempts` when it is a retryable one that
    /// used up the tries, whose message then says how many were made.
    GiveUp { note_attempts: bool },
}

/// How often a retried request is worth a warning: one line a minute per
/// process, however many databases retry at once (a fleet in a storage
/// outage would otherwise print one per request; the daemon says the
/// storage is unreachable in one line of its own). The others go to debug.
const RETRY_WARNING_EVERY_MS: u64 = 60_000;

/// When the last retry warning was logged (ms since the Unix epoch, 0:
/// never), and how many retries went to debug since.
static LAST_RETRY_WARNING_MS: AtomicU64 = AtomicU64::new(0);
static RETRIES_UNWARNED: AtomicU64 = AtomicU64::new(0);

/// Whether a retry at `now_ms` is logged as a warning, given when the last
/// one was (`last_ms`, 0: never).
fn warn_retry(now_ms: u64, last_ms: u64) -> bool {
    last_ms == 0 || now_ms.saturating_sub(last_ms) >= RETRY_WARNING_EVERY_MS
}

/// Logs a retry: the first in a minute as a warning that counts the ones
/// logged at debug since the last warning, the rest at debug.
fn log_retry(line: std::fmt::Arguments<'_>) {
    let now = crate::time::now_ms();
    let last = LAST_RETRY_WARNING_MS.load(Ordering::Relaxed);
    if warn_retry(now, last)
        && LAST_RETRY_WARNING_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        match RETRIES_UNWARNED.swap(0, Ordering::Relaxed) {
            0 => log::warn!("{line}"),
            n => log::warn!(
                "{line} ({n} more retried requests since the last such line, at debug level)"
            ),
        }
    } else {
        RETRIES_UNWARNED.fetch_add(1, Ordering::Relaxed);
        log::debug!("{line}");
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
        let jitter = Jitter::seeded();
        let mut tries = 1;
        let mut fell_back = false;
        loop {
            let failure = match attempt() {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            // The server refused the CRC32 header itself: the same request
            // once more at once, with Content-MD5 (not a retry: nothing
            // failed that waiting could mend).
            if let (Some(said), false) = (&failure.checksum_header_refused, fell_back) {
                self.fall_back_to_md5(said);
                fell_back = true;
                continue;
            }
            match self
                .retry
                .after_failure(tries, failure.retryable, jitter.next_unit())
            {
                AfterFailure::RetryAfter(delay) => {
                    log_retry(format_args!(
                        "{what} {key:?}: attempt {tries}/{} failed: {}; retrying in {delay:?}",
                        self.retry.attempts(),
                        failure.error
                    ));
                    std::thread::sleep(delay);
                    tries += 1;
                }
                AfterFailure::GiveUp {
                    note_attempts: note,
                } => {
                    let mut error = failure.error;
                    if note {
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
    fn a_retry_warns_once_a_minute() {
        // (now, last warning) -> a warning
        for (now, last, warn) in [
            (5, 0, true),
            (1_000_000, 0, true),
            (1_000_000, 1_000_000, false),
            (1_059_999, 1_000_000, false),
            (1_060_000, 1_000_000, true),
            // A clock stepped back: no warning until a minute after it.
            (999_000, 1_000_000, false),
        ] {
            assert_eq!(warn_retry(now, last), warn, "{now} {last}");
        }
    }

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

    #[test]
    fn failures_are_retried_while_tries_are_left_and_the_failure_is_retryable() {
        use AfterFailure::*;
        let ms = Duration::from_millis;
        let policy = |max_attempts| RetryPolicy {
            max_attempts,
            base_delay: ms(100),
            max_delay: ms(1000),
        };
        // (max_attempts, tries so far, retryable, unit, decision)
        #[rustfmt::skip]
        let cases = [
            (6, 1, true, 0.0, RetryAfter(ms(50))),
            (6, 1, true, 1.0, RetryAfter(ms(100))),
            (6, 2, true, 0.0, RetryAfter(ms(100))),
            (6, 3, true, 1.0, RetryAfter(ms(400))),
            (6, 5, true, 1.0, RetryAfter(ms(1000))),
            (6, 5, true, 0.0, RetryAfter(ms(500))),
            (6, 6, true, 0.0, GiveUp { note_attempts: true }),
            (6, 7, true, 0.0, GiveUp { note_attempts: true }),
            (6, 1, false, 0.0, GiveUp { note_attempts: false }),
            (6, 3, false, 0.0, GiveUp { note_attempts: false }),
            (2, 1, true, 0.0, RetryAfter(ms(50))),
            (2, 2, true, 0.0, GiveUp { note_attempts: true }),
            // 0 and 1 attempt: the first failure is final, and said to be
            // the only try.
            (1, 1, true, 0.0, GiveUp { note_attempts: false }),
            (0, 1, true, 0.0, GiveUp { note_attempts: false }),
            (u32::MAX, 40, true, 0.0, RetryAfter(ms(500))),
        ];
        for (max_attempts, tries, retryable, unit, expected) in cases {
            assert_eq!(
                policy(max_attempts).after_failure(tries, retryable, unit),
                expected,
                "{max_attempts} attempts, {tries} tried, retryable {retryable}"
            );
        }
    }

    #[test]
    fn only_errors_with_a_detail_say_how_many_attempts_were_made() {
        let location = || "s3://b".to_owned();
        let detail = || "d".to_owned();
        // (error, message has ", after 3 attempts")
        #[rustfmt::skip]
        let cases = [
            (StorageError::Transport { location: location(), detail: detail(), os_error: None }, true),
            (
                StorageError::Server { location: location(), key: "k".to_owned(), status: 503, detail: detail() },
                true,
            ),
            (StorageError::BadResponse { location: location(), detail: detail() }, true),
            (StorageError::Auth { location: location(), detail: detail() }, false),
            (StorageError::WrongRegion { location: location(), detail: detail() }, false),
            (StorageError::NoSuchBucket { location: location() }, false),
            (StorageError::NotFound { key: "k".to_owned() }, false),
        ];
        for (mut error, noted) in cases {
            note_attempts(&mut error, 3);
            let text = error.to_string();
            assert_eq!(text.contains(", after 3 attempts"), noted, "{text}");
        }
    }

    fn storage(max_attempts: u32) -> S3Storage {
        S3Storage::new(crate::storage::s3::tests::settings(
            Some("http://127.0.0.1:9"),
            true,
        ))
        .expect("valid settings")
        .with_retry(RetryPolicy {
            max_attempts,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        })
    }

    fn busy() -> Failure {
        Failure::retryable(StorageError::Server {
            location: "s3://b".to_owned(),
            key: "k".to_owned(),
            status: 503,
            detail: "SlowDown".to_owned(),
        })
    }

    #[test]
    fn the_loop_stops_at_success_at_a_final_failure_or_after_max_attempts() {
        let storage = storage(4);
        let mut tries = 0;
        let value = storage.retry("get", "k", || {
            tries += 1;
            if tries < 3 {
                Err(busy())
            } else {
                Ok(tries)
            }
        });
        assert_eq!(value.expect("third try succeeds"), 3);

        let mut tries = 0;
        let err = storage
            .retry("get", "k", || -> Result<(), Failure> {
                tries += 1;
                Err(busy())
            })
            .expect_err("always busy");
        assert_eq!(tries, 4);
        assert!(err.to_string().contains(", after 4 attempts"), "{err}");

        let mut tries = 0;
        let err = storage
            .retry("get", "k", || -> Result<(), Failure> {
                tries += 1;
                Err(Failure::fatal(StorageError::NotFound {
                    key: "k".to_owned(),
                }))
            })
            .expect_err("not found");
        assert_eq!(tries, 1);
        assert!(matches!(err, StorageError::NotFound { .. }));
    }
}
