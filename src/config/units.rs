//! Durations and sizes as written in `walsync.toml` and on the command line
//! (`"1h30m"`, `"4MiB"`), and sizes as shown back in messages. Pure.

use std::time::Duration;

/// Parses a duration such as `"500ms"`, `"1s"`, `"10m"`, `"1h30m"`, `"72h"`
/// or `"7d"`: whole numbers with units `d`, `h`, `m`, `s`, `ms`, largest
/// first, each at most once. Empty, negative, fractional, unit-less and zero
/// durations are rejected (every walsync duration is an interval, where zero
/// makes no sense).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let text = s.trim();
    if text.is_empty() {
        return Err("the duration is empty".to_string());
    }
    if text.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    let mut previous_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration: expected a number at {rest:?}"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(format!(
                "{s:?} has no unit; write e.g. \"{number}s\" or \"{number}ms\""
            ));
        }
        if unit.starts_with('.') {
            return Err(format!(
                "{s:?} has a fraction; combine whole units instead, e.g. \"1h30m\" or \"1500ms\""
            ));
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(format!(
                "{s:?} has unknown unit {unit:?}; use d, h, m, s or ms"
            ));
        };
        if previous_unit.is_some_and(|p| p >= index) {
            return Err(format!(
                "{s:?} repeats a unit or puts a smaller unit first; write e.g. \"1h30m\""
            ));
        }
        previous_unit = Some(index);
        total_ms = number
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("{s:?} is too large"))?;
    }
    if total_ms == 0 {
        return Err(format!("{s:?} is zero; it must be greater than zero"));
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parses a size in bytes: a whole number (`"1048576"`) optionally followed
/// by a unit, binary (`KiB`, `MiB`, `GiB`, `TiB`) or decimal (`KB`/`kB`,
/// `MB`, `GB`, `TB`), or `B`. Zero is accepted here; callers decide whether
/// it makes sense.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 11] = [
        ("B", 1),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
        ("KB", 1_000),
        ("kB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
        ("", 1),
    ];
    let text = s.trim();
    if text.is_empty() {
        return Err("the size is empty".to_string());
    }
    if text.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return Err(format!("{s:?} is not a size: it must start with a number"));
    }
    let number: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("{s:?} is too large"))?;
    let unit = text[digits..].trim_start();
    if unit.starts_with('.') {
        return Err(format!(
            "{s:?} has a fraction; use a smaller unit instead, e.g. \"1536KiB\""
        ));
    }
    let Some((_, multiplier)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!(
            "{s:?} has unknown unit {unit:?}; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
        ));
    };
    number
        .checked_mul(*multiplier)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `4194304` → `4 MiB`; sizes that are not whole MiB/KiB stay in bytes.
pub(super) fn show_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_show_in_the_largest_whole_binary_unit() {
        for (bytes, shown) in [
            (0, "0 bytes"),
            (1, "1 bytes"),
            (1000, "1000 bytes"),
            (1024, "1 KiB"),
            (1536, "1536 bytes"),
            (4 << 20, "4 MiB"),
            ((1 << 30) + (1 << 10), "1048577 KiB"),
            (3 << 30, "3 GiB"),
            (1 << 40, "1 TiB"),
            (2048 << 40, "2048 TiB"),
            (u64::MAX, "18446744073709551615 bytes"),
        ] {
            assert_eq!(show_size(bytes), shown, "{bytes}");
        }
    }

    #[test]
    fn durations_parse() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("500ms", ms(500)),
            ("1s", ms(1_000)),
            ("10m", ms(600_000)),
            ("1h30m", ms(5_400_000)),
            ("72h", ms(259_200_000)),
            ("7d", ms(604_800_000)),
            ("1d2h3m4s5ms", ms(93_784_005)),
            (" 2s ", ms(2_000)),
            ("0h1s", ms(1_000)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn bad_durations_are_rejected() {
        for text in [
            "",
            " ",
            "-1s",
            "0",
            "0s",
            "0ms",
            "5",
            "s",
            "1x",
            "1S",
            "1sec",
            "1.5s",
            "1 s",
            "30m1h",
            "1m1m",
            "1h 30m",
            "99999999999999999999s",
            "18446744073709551615d",
            "+1s",
            "1s-",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn sizes_parse() {
        for (text, expected) in [
            ("0", 0),
            ("1048576", 1 << 20),
            ("10B", 10),
            ("4KiB", 4 << 10),
            ("4MiB", 4 << 20),
            ("2GiB", 2 << 30),
            ("1TiB", 1 << 40),
            ("4KB", 4_000),
            ("4kB", 4_000),
            ("64MB", 64_000_000),
            ("1GB", 1_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("4 MiB", 4 << 20),
        ] {
            assert_eq!(parse_size(text), Ok(expected), "{text:?}");
        }
        for text in [
            "",
            "MiB",
            "-1",
            "1.5MiB",
            "4mib",
            "4M",
            "4 MiB x",
            "lots",
            "99999999999999999999",
            "16777216TiB",
        ] {
            assert!(parse_size(text).is_err(), "{text:?} was accepted");
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Every value of the config file, every `AWS_*` variable and every
    //! `--bucket`/`--endpoint`/`--region` flag is user input: the parsers
    //! must answer with an error for any of it, never panic.
    use super::*;
    use crate::testing::fuzz_text;

    #[test]
    fn durations_and_sizes_never_panic() {
        let durations = ["500ms", "1s", "10m", "1h30m", "72h", "7d", "1d2h3m4s5ms"];
        fuzz_text("duration parser", 0xc0f1_0001, 3000, &durations, |s| {
            parse_duration(s).is_ok()
        });
        let sizes = ["1048576", "4MiB", "64 MB", "1kB", "2TiB", "0", "7 B"];
        fuzz_text("size parser", 0xc0f1_0002, 3000, &sizes, |s| {
            parse_size(s).is_ok()
        });
    }
}
