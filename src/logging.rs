//! The log sink: `log` records to standard error, filtered by `RUST_LOG`.
//!
//! A few dozen lines in place of env_logger, which cost more binary size than
//! walsync uses of it. `RUST_LOG` takes a comma-separated list of `level`
//! (the default for every target) and `target=level` entries, the longest
//! matching target prefix winning: `info`, `walsync=debug`,
//! `warn,walsync::daemon=debug`. Unset or empty means `info`. Lines are
//! `[<RFC 3339 time> <LEVEL> <target>] <message>`.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct Logger {
    default: LevelFilter,
    /// (target prefix, level), longest prefix first.
    targets: Vec<(String, LevelFilter)>,
}

fn level(s: &str) -> Option<LevelFilter> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

fn parse(spec: &str) -> Logger {
    let mut logger = Logger {
        default: LevelFilter::Info,
        targets: Vec::new(),
    };
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((target, lvl)) => {
                if let Some(l) = level(lvl) {
                    logger.targets.push((target.trim().to_string(), l));
                }
            }
            None => match level(part) {
                Some(l) => logger.default = l,
                // A bare target name turns everything on for it.
                None => logger.targets.push((part.to_string(), LevelFilter::Trace)),
            },
        }
    }
    logger
        .targets
        .sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
    logger
}

impl Logger {
    fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(t, _)| target == t || target.starts_with(&format!("{t}::")))
            .map_or(self.default, |(_, l)| *l)
    }

    fn max(&self) -> LevelFilter {
        self.targets
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, std::cmp::max)
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level_for(m.target())
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = format!(
                "[{} {:<5} {}] {}\n",
                crate::time::format_rfc3339(crate::time::now_ms()),
                r.level(),
                r.target(),
                r.args()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger for the process (once; later calls do nothing).
pub fn init() {
    let logger = parse(&std::env::var("RUST_LOG").unwrap_or_default());
    let max = logger.max();
    // Leaked once: the logger lives as long as the process.
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_specs() {
        let l = parse("");
        assert_eq!(l.level_for("walsync::daemon"), LevelFilter::Info);
        let l = parse("walsync=debug");
        assert_eq!(l.level_for("walsync::daemon"), LevelFilter::Debug);
        assert_eq!(l.level_for("ureq"), LevelFilter::Info);
        assert_eq!(l.level_for("walsyncx"), LevelFilter::Info);
        let l = parse("warn, walsync::daemon=trace ,walsync=error");
        assert_eq!(l.level_for("walsync::daemon"), LevelFilter::Trace);
        assert_eq!(l.level_for("walsync::replica"), LevelFilter::Error);
        assert_eq!(l.level_for("rustls"), LevelFilter::Warn);
        assert_eq!(l.max(), LevelFilter::Trace);
        let l = parse("bogus=loud,off");
        assert_eq!(l.level_for("walsync"), LevelFilter::Off);
    }
}
