//! Exponential backoff with random jitter: the one place walsync draws the
//! randomness that spreads out retries, and computes how long to wait.
//!
//! Everything here is a function from values to values except
//! `Jitter::seeded` (and `random_unit`, which uses it), which reads the
//! clock and a per-process random hasher to pick a seed: randomness is a
//! parameter (`unit`, a number in `[0, 1)`), so tests pass fixed ones. Two
//! shapes of jitter are offered: `down_to_half` ("equal jitter", for S3
//! retries: between half and all of the delay) and `up_by` (a delay plus up
//! to a fraction of it, for a database that keeps failing). No `rand`
//! dependency: a small xorshift generator is enough to keep threads that
//! fail together from retrying in step.

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `first` doubled `doublings` times, but never longer than `max`
/// (saturating: any number of doublings is fine).
pub fn exponential(first: Duration, doublings: u32, max: Duration) -> Duration {
    first
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(max)
}

/// "Equal jitter": between half and all of `delay`, placed by `unit` in
/// `[0, 1]` (clamped), `delay / 2` for 0.
pub fn down_to_half(delay: Duration, unit: f64) -> Duration {
    let half = delay / 2;
    half + (delay - half).mul_f64(unit.clamp(0.0, 1.0))
}

/// `delay` plus up to `fraction` of it, placed by `unit` in `[0, 1]`
/// (clamped): `delay` for 0, `delay * (1 + fraction)` for 1.
pub fn up_by(delay: Duration, fraction: f64, unit: f64) -> Duration {
    delay + delay.mul_f64(fraction * unit.clamp(0.0, 1.0))
}

/// A fresh random number in `[0, 1)` from a newly seeded [`Jitter`], for a
/// caller that needs one now and then.
pub fn random_unit() -> f64 {
    Jitter::seeded().next_unit()
}

/// A tiny xorshift generator for backoff jitter.
pub struct Jitter(Cell<u64>);

impl Jitter {
    /// Seeded from the clock, a per-process random hasher (which differs per
    /// process) and a counter, so that threads retrying together spread out.
    pub fn seeded() -> Jitter {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let hashed = RandomState::new().hash_one((nanos, count, std::thread::current().id()));
        Jitter::from_seed(hashed)
    }

    /// A generator that always gives the same sequence for `seed`.
    pub fn from_seed(seed: u64) -> Jitter {
        // xorshift must never hold 0.
        Jitter(Cell::new(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        }))
    }

    /// A value in `[0, 1)`.
    pub fn next_unit(&self) -> f64 {
        let mut x = self.0.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_doubles_up_to_its_cap_and_saturates() {
        // (first, doublings, max, expected)
        let cases = [
            (100 * MS, 0, 5000 * MS, 100 * MS),
            (100 * MS, 1, 5000 * MS, 200 * MS),
            (100 * MS, 5, 5000 * MS, 3200 * MS),
            (100 * MS, 6, 5000 * MS, 5000 * MS),
            (100 * MS, 31, 5000 * MS, 5000 * MS),
            (100 * MS, 32, 5000 * MS, 5000 * MS),
            (100 * MS, u32::MAX, 5000 * MS, 5000 * MS),
            (Duration::MAX, 3, Duration::MAX, Duration::MAX),
            (Duration::ZERO, u32::MAX, 5000 * MS, Duration::ZERO),
        ];
        for (first, doublings, max, expected) in cases {
            assert_eq!(
                exponential(first, doublings, max),
                expected,
                "{first:?} doubled {doublings} times, at most {max:?}"
            );
        }
    }

    /// The daemon's backoff of a failing database: 500 ms doubled per
    /// failure, at most 60 s, as it computes it itself
    /// (`500 * (1 << failures.min(7))` ms, at most 60 s).
    #[test]
    fn exponential_gives_the_daemons_backoff_for_every_failure_count() {
        for failures in (0..=64).chain([1000, u32::MAX - 1, u32::MAX]) {
            let daemon = Duration::from_millis(500u64.saturating_mul(1 << failures.min(7)))
                .min(Duration::from_secs(60));
            assert_eq!(
                exponential(500 * MS, failures, Duration::from_secs(60)),
                daemon,
                "{failures} failures"
            );
        }
    }

    #[test]
    fn down_to_half_spans_half_to_all_of_the_delay() {
        // (delay, unit, expected)
        let cases = [
            (1000 * MS, 0.0, 500 * MS),
            (1000 * MS, 0.5, 750 * MS),
            (1000 * MS, 1.0, 1000 * MS),
            (1000 * MS, -3.0, 500 * MS),
            (1000 * MS, 7.0, 1000 * MS),
            (Duration::ZERO, 0.7, Duration::ZERO),
            (Duration::from_nanos(3), 0.0, Duration::from_nanos(1)),
            (Duration::from_nanos(3), 1.0, Duration::from_nanos(3)),
        ];
        for (delay, unit, expected) in cases {
            assert_eq!(down_to_half(delay, unit), expected, "{delay:?} at {unit}");
        }
    }

    #[test]
    fn up_by_adds_at_most_the_fraction() {
        // (delay, fraction, unit, expected)
        let cases = [
            (1000 * MS, 0.25, 0.0, 1000 * MS),
            (1000 * MS, 0.25, 0.5, 1125 * MS),
            (1000 * MS, 0.25, 1.0, 1250 * MS),
            (1000 * MS, 0.25, 2.0, 1250 * MS),
            (1000 * MS, 0.25, -1.0, 1000 * MS),
            (1000 * MS, 0.0, 0.9, 1000 * MS),
        ];
        for (delay, fraction, unit, expected) in cases {
            assert_eq!(
                up_by(delay, fraction, unit),
                expected,
                "{delay:?} up by {fraction} at {unit}"
            );
        }
        // Jittered by a random unit: within [delay, 1.25 * delay).
        for _ in 0..100 {
            let d = up_by(60_000 * MS, 0.25, random_unit());
            assert!(d >= 60_000 * MS && d < 75_000 * MS, "{d:?}");
        }
    }

    #[test]
    fn jitter_stays_in_unit_interval_and_varies() {
        let jitter = Jitter::from_seed(0);
        let values: Vec<f64> = (0..1000).map(|_| jitter.next_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
        assert_ne!(Jitter::seeded().next_unit(), Jitter::seeded().next_unit());
    }

    #[test]
    fn jitter_from_a_seed_repeats_its_sequence() {
        let (a, b) = (Jitter::from_seed(42), Jitter::from_seed(42));
        for _ in 0..10 {
            assert_eq!(a.next_unit(), b.next_unit());
        }
        assert!((0.0..1.0).contains(&random_unit()));
    }
}
