//! The file as written: the serde schema of `walsync.toml` (`Raw*` types)
//! and the list of its keys. Every value keeps its span so errors can name
//! its line; unknown keys are refused by serde (`deny_unknown_fields`). No
//! `Debug`: these hold secrets. Nothing here is checked yet; that is the
//! work of the other modules of `config`.

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) retention: Option<Spanned<String>>,
    pub(super) sync_interval: Option<Spanned<String>>,
    pub(super) snapshot_interval: Option<Spanned<String>>,
    pub(super) checkpoint_threshold: Option<Spanned<RawSize>>,
    pub(super) truncate_threshold: Option<Spanned<RawSize>>,
    pub(super) workers: Option<Spanned<i64>>,
    pub(super) rescan_interval: Option<Spanned<String>>,
    pub(super) idle_release_after: Option<Spanned<String>>,
    pub(super) idle_release_max_size: Option<Spanned<RawSize>>,
    pub(super) lease_ttl: Option<Spanned<String>>,
    pub(super) storage: Option<Spanned<RawStorage>>,
    pub(super) databases: Option<Spanned<Vec<Spanned<RawDatabase>>>>,
    pub(super) directories: Option<Spanned<Vec<Spanned<RawDirectory>>>>,
    pub(super) metrics: Option<Spanned<RawMetrics>>,
    pub(super) encryption: Option<Spanned<RawEncryption>>,
}

/// `[encryption]`, or a database's or directory's `encryption = {...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    pub(super) key_file: Spanned<String>,
    pub(super) old_key_files: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) per_database: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) bucket: Option<Spanned<String>>,
    pub(super) dir: Option<Spanned<String>>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    pub(super) path_style: Option<Spanned<bool>>,
    pub(super) access_key_id: Option<Spanned<String>>,
    pub(super) secret_access_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) path: Spanned<String>,
    pub(super) prefix: Spanned<String>,
    pub(super) retention: Option<Spanned<String>>,
    pub(super) sync_interval: Option<Spanned<String>>,
    pub(super) snapshot_interval: Option<Spanned<String>>,
    pub(super) checkpoint_threshold: Option<Spanned<RawSize>>,
    pub(super) truncate_threshold: Option<Spanned<RawSize>>,
    pub(super) encryption: Option<Spanned<RawEncryption>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDirectory {
    pub(super) dir: Spanned<String>,
    pub(super) pattern: Option<Spanned<String>>,
    pub(super) recursive: Option<Spanned<bool>>,
    pub(super) prefix: Spanned<String>,
    pub(super) retention: Option<Spanned<String>>,
    pub(super) sync_interval: Option<Spanned<String>>,
    pub(super) snapshot_interval: Option<Spanned<String>>,
    pub(super) checkpoint_threshold: Option<Spanned<RawSize>>,
    pub(super) truncate_threshold: Option<Spanned<RawSize>>,
    pub(super) encryption: Option<Spanned<RawEncryption>>,
}

/// The per-database overrides as written, in a `[[databases]]` or a
/// `[[directories]]` table.
pub(super) struct RawOverrides<'a> {
    pub(super) retention: &'a Option<Spanned<String>>,
    pub(super) sync_interval: &'a Option<Spanned<String>>,
    pub(super) snapshot_interval: &'a Option<Spanned<String>>,
    pub(super) checkpoint_threshold: &'a Option<Spanned<RawSize>>,
    pub(super) truncate_threshold: &'a Option<Spanned<RawSize>>,
    pub(super) encryption: &'a Option<Spanned<RawEncryption>>,
}

impl RawDatabase {
    pub(super) fn overrides(&self) -> RawOverrides<'_> {
        RawOverrides {
            retention: &self.retention,
            sync_interval: &self.sync_interval,
            snapshot_interval: &self.snapshot_interval,
            checkpoint_threshold: &self.checkpoint_threshold,
            truncate_threshold: &self.truncate_threshold,
            encryption: &self.encryption,
        }
    }
}

impl RawDirectory {
    pub(super) fn overrides(&self) -> RawOverrides<'_> {
        RawOverrides {
            retention: &self.retention,
            sync_interval: &self.sync_interval,
            snapshot_interval: &self.snapshot_interval,
            checkpoint_threshold: &self.checkpoint_threshold,
            truncate_threshold: &self.truncate_threshold,
            encryption: &self.encryption,
        }
    }
}

/// A size as written: an integer, or a string for [`super::parse_size`].
pub(super) enum RawSize {
    Integer(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"4MiB\" or a number of bytes")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Integer(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Integer(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Every key of the format, so a syntax error can name the key on its line
/// without ever echoing something that is not a key (such as a pasted secret).
pub(super) const KNOWN_KEYS: [&str; 30] = [
    "idle_release_after",
    "lease_ttl",
    "idle_release_max_size",
    "metrics",
    "listen",
    "per_database",
    "retention",
    "sync_interval",
    "snapshot_interval",
    "checkpoint_threshold",
    "truncate_threshold",
    "workers",
    "rescan_interval",
    "storage",
    "bucket",
    "dir",
    "endpoint",
    "region",
    "path_style",
    "access_key_id",
    "secret_access_key",
    "databases",
    "path",
    "prefix",
    "directories",
    "pattern",
    "recursive",
    "encryption",
    "key_file",
    "old_key_files",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn inline_tables_work_too() {
        let text = "storage = { bucket = \"b\" }\ndatabases = [\n  { path = \"/a.db\", prefix = \"a\" },\n  { path = \"/b.db\", prefix = \"b\", sync_interval = \"5s\" },\n]\n";
        let config = parse(text).expect("valid");
        assert_eq!(config.databases[1].sync_interval, Duration::from_secs(5));
        let bad = "storage = { bucket = \"b\" }\ndatabases = [\n  { path = \"/a.db\", prefix = \"a\" },\n  { path = \"/b.db\", prefix = \"a/b\" },\n]\n";
        let err = parse(bad).expect_err("nested prefix");
        assert_eq!(err.line(), Some(4));
        assert_eq!(err.key(), Some("databases[1].prefix"));
    }

    #[test]
    fn example_file_documents_every_key() {
        let text = include_str!("../../walsync.toml.example");
        for key in KNOWN_KEYS {
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("[{key}]"))
                    || l.starts_with(&format!("[[{key}]]"))
            });
            assert!(documented, "walsync.toml.example does not show `{key}`");
        }
    }
}
