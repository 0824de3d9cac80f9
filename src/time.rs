//! Wall-clock times as walsync records them: milliseconds since the Unix
//! epoch, UTC, and their RFC 3339 form for flags and messages. Pure, except
//! `now_ms`, which callers pass on to the pure code as a parameter.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, rounded up to the millisecond: a time walsync records for an
/// event it has seen is never before the event (README "Point in time").
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() * 1000 + u64::from(d.subsec_nanos()).div_ceil(1_000_000))
        .unwrap_or(0)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-25T20:43:16.123Z`
pub fn format_rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Parses RFC 3339 (`2026-11-25T20:43:16Z`, fractional seconds and numeric
/// offsets allowed) into ms since the epoch. Fractions beyond milliseconds
/// are truncated (a time T includes every commit read in T's millisecond).
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid timestamp {s:?}: expected RFC 3339, e.g. 2026-11-25T20:43:16Z or 2026-11-25T21:43:16.5+01:00")
    };
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
        let t = &b[r];
        if t.iter().all(|c| c.is_ascii_digit()) {
            Ok(t.iter().fold(0u32, |acc, c| acc * 10 + u32::from(c - b'0')))
        } else {
            Err(bad())
        }
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d == 0
        || d > mdays[mo as usize - 1]
        || h > 23
        || mi > 59
        || se > 60
    {
        return Err(bad());
    }
    let mut i = 19;
    let mut frac_ms = 0u64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let digits = &b[start..i.min(start + 3)];
        let value = digits
            .iter()
            .fold(0u64, |acc, c| acc * 10 + u64::from(c - b'0'));
        frac_ms = value * 10u64.pow(3 - digits.len() as u32);
    }
    // Bytes, not `str` slices: the offset may hold multi-byte characters
    // (`+0é00`), and slicing a `str` inside one panics.
    let offset_secs: i64 = match &b[i..] {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = i64::from(num(i + 1..i + 3)?);
            let om = i64::from(num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let v = oh * 3600 + om * 60;
            if *sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return Err(bad()),
    };
    let secs = days_from_civil(i64::from(y), mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(se.min(59))
        - offset_secs;
    if secs < 0 {
        return Err(format!("timestamp {s:?} is before 1970"));
    }
    Ok(secs as u64 * 1000 + frac_ms)
}

/// Parses an HTTP date in its one current form (IMF-fixdate, RFC 9110:
/// `Sun, 06 Nov 1994 08:49:37 GMT`), as S3 servers send `Date` and
/// `Last-Modified`, into ms since the epoch; `None` for anything else.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let [_, _, _, b',', b' ', d1, d2, b' ', m1, m2, m3, b' ', y1, y2, y3, y4, b' ', h1, h2, b':', n1, n2, b':', s1, s2, b' ', b'G', b'M', b'T'] =
        b
    else {
        return None;
    };
    let digits = |ds: &[u8]| -> Option<u32> {
        ds.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let mo = MONTHS.iter().position(|m| *m == &[*m1, *m2, *m3])? as u32 + 1;
    let (d, y) = (digits(&[*d1, *d2])?, digits(&[*y1, *y2, *y3, *y4])?);
    let (h, mi, se) = (
        digits(&[*h1, *h2])?,
        digits(&[*n1, *n2])?,
        digits(&[*s1, *s2])?,
    );
    if !(1..=31).contains(&d) || y < 1970 || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let secs = days_from_civil(i64::from(y), mo, d) * 86_400
        + i64::from(h) * 3600
        + i64::from(mi) * 60
        + i64::from(se.min(59));
    u64::try_from(secs).ok().map(|s| s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_read_in_their_one_current_form() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sun, 29 Nov 2026 14:49:14 GMT").map(format_rfc3339),
            Some("2026-11-29T14:49:14.000Z".to_owned())
        );
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun, 0x Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_round_trip() {
        for ms in [
            0u64,
            1,
            999,
            86_400_000,
            1_764_103_396_123,
            4_102_444_800_000,
            951_782_400_000,
        ] {
            assert_eq!(
                parse_rfc3339(&format_rfc3339(ms)).unwrap(),
                ms,
                "{}",
                format_rfc3339(ms)
            );
        }
        assert_eq!(
            format_rfc3339(1_764_103_396_123),
            "2025-11-25T20:43:16.123Z"
        );
    }

    #[test]
    fn rfc3339_offsets_and_fractions() {
        let base = parse_rfc3339("2026-11-25T20:43:16Z").unwrap();
        assert_eq!(parse_rfc3339("2026-11-25T21:43:16+01:00").unwrap(), base);
        assert_eq!(parse_rfc3339("2026-11-25T19:43:16-01:00").unwrap(), base);
        assert_eq!(parse_rfc3339("2026-11-25T20:43:16.5Z").unwrap(), base + 500);
        assert_eq!(
            parse_rfc3339("2026-11-25T20:43:16.123456789Z").unwrap(),
            base + 123
        );
    }

    #[test]
    fn rfc3339_rejects_garbage() {
        for s in [
            "",
            "yesterday",
            "2026-11-25",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-25T24:00:00Z",
            "2026-11-25T20:43:16",
            "2026-11-25T20:43:16.Z",
            "2026-11-25T20:43:16+1:00",
            "２026-11-25T20:43:16Z",
            // Multi-byte characters where the offset's digits and colon go
            // (issue 10: these once sliced a `str` inside a character).
            "2026-11-25T20:43:16+0é00",
            "2026-11-25T20:43:16+é:00",
            "2026-11-25T20:43:16+01é0",
            "2026-11-25T20:43:16.5+0€0",
            "2026-11-25T20:43:16😀",
            "2026-11-25T20:43:1é",
            "2026-11-25é20:43:16Z",
        ] {
            let err = parse_rfc3339(s).expect_err(s);
            assert!(err.contains("RFC 3339"), "{s:?}: {err}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    #[test]
    fn rfc3339_parser_never_panics() {
        let valid = [
            "2026-11-25T20:43:16Z",
            "2026-11-25T21:43:16+01:00",
            "2026-11-25T19:43:16.123456-01:00",
            "1970-01-01T00:00:00.5z",
            "2024-02-29 23:59:60+23:59",
        ];
        crate::testing::fuzz_text("timestamp parser", 0x7117_0001, 3000, &valid, |s| {
            parse_rfc3339(s).is_ok()
        });
        crate::testing::fuzz_text(
            "HTTP date parser",
            0x7117_0002,
            3000,
            &["Sun, 06 Nov 1994 08:49:37 GMT"],
            |s| parse_http_date(s).is_some(),
        );
    }
}
