//! The top-level settings of `walsync.toml` and the resolution of the whole
//! file ([`Document::resolve`]): globals with their defaults, at least one
//! thing to back up, thresholds that make sense together, and each
//! `[[databases]]` or `[[directories]]` table's overrides falling back to
//! the globals.

use std::time::Duration;

use toml::Spanned;

use super::error::Document;
use super::schema::{RawConfig, RawDatabase, RawDirectory, RawEncryption, RawOverrides};
use super::units::show_size;
use super::values::Sourced;
use super::{
    Config, ConfigError, EncryptionConfig, DEFAULT_CHECKPOINT_THRESHOLD,
    DEFAULT_IDLE_RELEASE_AFTER, DEFAULT_IDLE_RELEASE_MAX_SIZE, DEFAULT_LEASE_TTL,
    DEFAULT_RESCAN_INTERVAL, DEFAULT_SNAPSHOT_INTERVAL, DEFAULT_SYNC_INTERVAL,
    DEFAULT_TRUNCATE_THRESHOLD, DEFAULT_WORKERS, MAX_WORKERS,
};

/// The global values the overrides fall back to.
pub(super) struct Globals {
    pub(super) retention: Option<Duration>,
    pub(super) sync_interval: Duration,
    pub(super) snapshot_interval: Duration,
    pub(super) checkpoint_threshold: Sourced<u64>,
    pub(super) truncate_threshold: Sourced<u64>,
    pub(super) encryption: Option<EncryptionConfig>,
}

/// The overrides of one table, resolved.
pub(super) struct Resolved {
    pub(super) retention: Option<Duration>,
    pub(super) sync_interval: Duration,
    pub(super) snapshot_interval: Duration,
    pub(super) checkpoint_threshold: u64,
    pub(super) truncate_threshold: u64,
    pub(super) encryption: Option<EncryptionConfig>,
}

impl Document<'_> {
    pub(super) fn resolve(
        &self,
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let sync_interval =
            self.duration(&raw.sync_interval, "sync_interval", DEFAULT_SYNC_INTERVAL)?;
        let snapshot_interval = self.duration(
            &raw.snapshot_interval,
            "snapshot_interval",
            DEFAULT_SNAPSHOT_INTERVAL,
        )?;
        let retention = match &raw.retention {
            None => None,
            Some(_) => Some(self.duration(&raw.retention, "retention", Duration::ZERO)?),
        };
        let rescan_interval = self.duration(
            &raw.rescan_interval,
            "rescan_interval",
            DEFAULT_RESCAN_INTERVAL,
        )?;
        let idle_release_after = self.duration(
            &raw.idle_release_after,
            "idle_release_after",
            DEFAULT_IDLE_RELEASE_AFTER,
        )?;
        let lease_ttl = self.duration(&raw.lease_ttl, "lease_ttl", DEFAULT_LEASE_TTL)?;
        if lease_ttl < std::time::Duration::from_secs(1) {
            return Err(self.error(
                raw.lease_ttl.as_ref().map(|v| v.span()),
                "lease_ttl",
                format!("{lease_ttl:?} is too short"),
                "write at least \"1s\"; the default \"15m\" suits most uses",
            ));
        }
        let idle_release_max_size = self
            .size(
                &raw.idle_release_max_size,
                "idle_release_max_size".to_string(),
                DEFAULT_IDLE_RELEASE_MAX_SIZE,
            )?
            .value;
        let checkpoint_threshold = self.size(
            &raw.checkpoint_threshold,
            "checkpoint_threshold".to_string(),
            DEFAULT_CHECKPOINT_THRESHOLD,
        )?;
        let truncate_threshold = self.size(
            &raw.truncate_threshold,
            "truncate_threshold".to_string(),
            DEFAULT_TRUNCATE_THRESHOLD,
        )?;
        self.check_thresholds(&checkpoint_threshold, &truncate_threshold)?;
        let workers = match &raw.workers {
            None => DEFAULT_WORKERS,
            Some(w) => usize::try_from(*w.get_ref())
                .ok()
                .filter(|n| (1..=MAX_WORKERS).contains(n))
                .ok_or_else(|| {
                    self.error(
                        Some(w.span()),
                        "workers",
                        format!("{} is out of range", w.get_ref()),
                        format!("write a whole number from 1 to {MAX_WORKERS}, e.g. `workers = 2`"),
                    )
                })?,
        };
        let storage = self.storage(raw.storage, env)?;
        self.check_something_to_back_up(&raw.databases, &raw.directories)?;
        let encryption = self.encryption(&raw.encryption, &|leaf| format!("encryption.{leaf}"))?;
        let globals = Globals {
            encryption,
            retention,
            sync_interval,
            snapshot_interval,
            checkpoint_threshold,
            truncate_threshold,
        };
        let raw_databases = raw.databases.map(Spanned::into_inner).unwrap_or_default();
        let raw_directories = raw.directories.map(Spanned::into_inner).unwrap_or_default();
        let databases = self.databases(&raw_databases, &globals)?;
        let directories =
            self.directories(&raw_directories, &raw_databases, &databases, &globals)?;
        let metrics_listen = match raw.metrics.as_ref().and_then(|m| m.get_ref().listen.as_ref()) {
            None => None,
            Some(v) => Some(v.get_ref().trim().parse::<std::net::SocketAddr>().map_err(|_| {
                self.error(
                    Some(v.span()),
                    "metrics.listen",
                    format!("{:?} is not an address and port", v.get_ref()),
                    "write an IP address and a port, e.g. `listen = \"127.0.0.1:9095\"` (0.0.0.0 to listen on every interface)",
                )
            })?),
        };
        let metrics_per_database = raw
            .metrics
            .as_ref()
            .and_then(|m| m.get_ref().per_database.as_ref())
            .is_none_or(|v| *v.get_ref());
        Ok(Config {
            storage,
            workers,
            rescan_interval,
            idle_release_after,
            idle_release_max_size,
            lease_ttl,
            databases,
            directories,
            source: self.file.to_path_buf(),
            metrics_listen,
            metrics_per_database,
        })
    }

    /// At least one `[[databases]]` or `[[directories]]` table.
    pub(super) fn check_something_to_back_up(
        &self,
        databases: &Option<Spanned<Vec<Spanned<RawDatabase>>>>,
        directories: &Option<Spanned<Vec<Spanned<RawDirectory>>>>,
    ) -> Result<(), ConfigError> {
        let count = |list: Option<usize>| list.unwrap_or(0);
        if count(databases.as_ref().map(|d| d.get_ref().len()))
            + count(directories.as_ref().map(|d| d.get_ref().len()))
            > 0
        {
            return Ok(());
        }
        // Point at what is there but empty (`databases = []`), if anything.
        let (key, span) = match (databases, directories) {
            (Some(d), _) => ("databases", Some(d.span())),
            (None, Some(d)) => ("directories", Some(d.span())),
            (None, None) => ("databases", None),
        };
        Err(self.error(
            span,
            key,
            "no databases are configured",
            "add a [[databases]] table with `path` and `prefix` for each database to back up, \
             or a [[directories]] table with `dir` and `prefix = \".../{name}\"` to back up \
             every database found in a directory",
        ))
    }

    /// A TRUNCATE threshold below the PASSIVE one would make the PASSIVE
    /// checkpoint unreachable, which is surely not what was meant.
    pub(super) fn check_thresholds(
        &self,
        checkpoint: &Sourced<u64>,
        truncate: &Sourced<u64>,
    ) -> Result<(), ConfigError> {
        if truncate.value >= checkpoint.value {
            return Ok(());
        }
        // Blame the more specific (per-table) setting if there is one.
        let local = |key: &str| key.starts_with("databases") || key.starts_with("directories");
        let (blamed, other) = if local(&truncate.key) || !local(&checkpoint.key) {
            (truncate, checkpoint)
        } else {
            (checkpoint, truncate)
        };
        let other_place = match &other.span {
            Some(span) => format!("line {}", self.line_of(span.start)),
            None => "the default".to_string(),
        };
        Err(self.error(
            blamed.span.clone(),
            &blamed.key,
            format!(
                "truncate_threshold ({}) is below checkpoint_threshold ({}); `{}` comes from {other_place}",
                show_size(truncate.value),
                show_size(checkpoint.value),
                other.key,
            ),
            "make truncate_threshold at least checkpoint_threshold (defaults: 4MiB and 64MiB)",
        ))
    }

    /// The optional per-database settings of one table, falling back to
    /// the globals. `key` turns a leaf into the table's dotted key.
    pub(super) fn overrides(
        &self,
        raw: RawOverrides<'_>,
        key: &dyn Fn(&str) -> String,
        globals: &Globals,
    ) -> Result<Resolved, ConfigError> {
        let checkpoint = match raw.checkpoint_threshold {
            None => globals.checkpoint_threshold.clone(),
            Some(_) => self.size(raw.checkpoint_threshold, key("checkpoint_threshold"), 0)?,
        };
        let truncate = match raw.truncate_threshold {
            None => globals.truncate_threshold.clone(),
            Some(_) => self.size(raw.truncate_threshold, key("truncate_threshold"), 0)?,
        };
        self.check_thresholds(&checkpoint, &truncate)?;
        Ok(Resolved {
            sync_interval: self.duration(
                raw.sync_interval,
                &key("sync_interval"),
                globals.sync_interval,
            )?,
            snapshot_interval: self.duration(
                raw.snapshot_interval,
                &key("snapshot_interval"),
                globals.snapshot_interval,
            )?,
            checkpoint_threshold: checkpoint.value,
            truncate_threshold: truncate.value,
            retention: match raw.retention {
                None => globals.retention,
                Some(_) => Some(self.duration(raw.retention, &key("retention"), Duration::ZERO)?),
            },
            encryption: match raw.encryption {
                None => globals.encryption.clone(),
                Some(_) => {
                    self.encryption(raw.encryption, &|leaf| key(&format!("encryption.{leaf}")))?
                }
            },
        })
    }

    /// An `encryption` table: its key files as paths (read at start, not
    /// here). A table replaces the global one whole, old keys included.
    pub(super) fn encryption(
        &self,
        raw: &Option<Spanned<RawEncryption>>,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<EncryptionConfig>, ConfigError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let raw = raw.get_ref();
        let key_file = self.local_path(&raw.key_file, &key("key_file"))?;
        let mut old_key_files = Vec::new();
        for (i, f) in raw
            .old_key_files
            .iter()
            .flat_map(|l| l.get_ref())
            .enumerate()
        {
            let path = self.local_path(f, &key(&format!("old_key_files[{i}]")))?;
            if path == key_file || old_key_files.contains(&path) {
                return Err(self.error(
                    Some(f.span()),
                    &key(&format!("old_key_files[{i}]")),
                    format!("{} is named twice", path.display()),
                    "name each key file once: the current key in key_file, earlier ones in old_key_files",
                ));
            }
            old_key_files.push(path);
        }
        Ok(Some(EncryptionConfig {
            key_file,
            old_key_files,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn neither_databases_nor_directories_says_how_to_add_either() {
        let err = parse(STORAGE).expect_err("nothing to back up");
        let message = err.to_string();
        assert!(
            message.contains("[[databases]]") && message.contains("[[directories]]"),
            "{message}"
        );
    }

    #[test]
    fn metrics_listen_is_an_address() {
        let config = parse(&format!(
            "{STORAGE}{DATABASE}[metrics]\nlisten = \"127.0.0.1:9095\"\n"
        ))
        .expect("valid");
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9095".parse().unwrap())
        );
        assert_eq!(
            parse(&format!("{STORAGE}{DATABASE}"))
                .unwrap()
                .metrics_listen,
            None
        );
        let err = parse(&format!(
            "{STORAGE}{DATABASE}[metrics]\nlisten = \"localhost\"\n"
        ))
        .unwrap_err();
        assert_eq!(err.key(), Some("metrics.listen"));
        assert_eq!(err.line(), Some(7));
        let err = parse(&format!("{STORAGE}{DATABASE}[metrics]\nport = 1\n")).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn metrics_per_database_is_on_unless_turned_off() {
        let on = |text: &str| {
            parse(&format!("{STORAGE}{DATABASE}{text}")).map(|c| c.metrics_per_database)
        };
        assert!(on("").unwrap());
        assert!(on("[metrics]\nlisten = \"127.0.0.1:9095\"\n").unwrap());
        assert!(!on("[metrics]\nlisten = \"127.0.0.1:9095\"\nper_database = false\n").unwrap());
        assert!(on("[metrics]\nper_database = true\n").unwrap());
        let err = on("[metrics]\nper_database = \"no\"\n").unwrap_err();
        assert_eq!(err.line(), Some(7));
        assert!(err.to_string().contains("true or false"), "{err}");
        let err = on("[metrics]\nper_databases = false\n").unwrap_err();
        assert_eq!(err.line(), Some(7));
        assert!(err.to_string().contains("per_databases"), "{err}");
    }

    #[test]
    fn encryption_is_global_with_per_database_and_directory_tables() {
        use crate::config::EncryptionConfig;
        let text = format!(
            "[encryption]\nkey_file = \"keys/new.key\"\nold_key_files = [\"/k/old.key\"]\n{STORAGE}{DATABASE}\
             [[databases]]\npath = \"/b.db\"\nprefix = \"b\"\nencryption = {{ key_file = \"/k/b.key\" }}\n\
             {DIRECTORY}[directories.encryption]\nkey_file = \"/k/t.key\"\nold_key_files = [\"/k/t0.key\", \"/k/old.key\"]\n"
        );
        let config = parse(&text).expect("valid");
        let global = EncryptionConfig {
            key_file: PathBuf::from("/etc/walsync/keys/new.key"),
            old_key_files: vec![PathBuf::from("/k/old.key")],
        };
        assert_eq!(config.databases[0].encryption, Some(global));
        // A table of its own replaces the global one whole.
        assert_eq!(
            config.databases[1].encryption,
            Some(EncryptionConfig {
                key_file: PathBuf::from("/k/b.key"),
                old_key_files: vec![],
            })
        );
        let dir = &config.directories[0];
        assert_eq!(
            dir.database(PathBuf::from("/t/x.db"), "t/x".into())
                .encryption,
            dir.encryption
        );
        assert_eq!(
            dir.encryption.as_ref().map(|e| e.old_key_files.len()),
            Some(2)
        );
        // Every file once, in the order written.
        let files: Vec<String> = config
            .key_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "/etc/walsync/keys/new.key",
                "/k/old.key",
                "/k/b.key",
                "/k/t.key",
                "/k/t0.key"
            ]
        );
        // Without a table, nothing is encrypted.
        let plain = parse(&format!("{STORAGE}{DATABASE}")).unwrap();
        assert_eq!(plain.databases[0].encryption, None);
        assert!(plain.key_files().is_empty());
        // Mistakes name the key and its line.
        for (text, key, line, says) in [
            (
                "[encryption]\nold_key_files = [\"/a\"]\n",
                Some("encryption.key_file"),
                1,
                "required",
            ),
            (
                "[encryption]\nkey_file = \"\"\n",
                Some("encryption.key_file"),
                2,
                "empty",
            ),
            (
                "[encryption]\nkey_file = \"/a\"\nold_key_files = [\"/b\", \"/a\"]\n",
                Some("encryption.old_key_files[1]"),
                3,
                "named twice",
            ),
            (
                "[encryption]\nkey_file = \"/a\"\nkey = \"x\"\n",
                Some("encryption.key"),
                3,
                "unknown field",
            ),
        ] {
            let err = parse(&format!("{text}{STORAGE}{DATABASE}")).unwrap_err();
            assert_eq!(err.key(), key, "{text}: {err}");
            assert_eq!(err.line(), Some(line), "{text}: {err}");
            assert!(err.to_string().contains(says), "{text}: {err}");
        }
        let err = parse(&format!(
            "{STORAGE}{DATABASE}encryption = {{ key_file = \"~/k\" }}\n"
        ))
        .unwrap_err();
        assert_eq!(err.key(), Some("databases[0].encryption.key_file"));
    }

    #[test]
    fn retention_is_global_with_per_database_overrides() {
        let text = format!(
            "retention = \"72h\"\n{STORAGE}{DATABASE}[[databases]]\npath = \"/b.db\"\nprefix = \"b\"\nretention = \"7d\"\n"
        );
        let config = parse(&text).expect("valid");
        assert_eq!(
            config.databases[0].retention,
            Some(Duration::from_secs(72 * 3600))
        );
        assert_eq!(
            config.databases[1].retention,
            Some(Duration::from_secs(7 * 86_400))
        );
        let err = parse(&format!("retention = \"forever\"\n{STORAGE}{DATABASE}")).unwrap_err();
        assert_eq!(err.key(), Some("retention"));
        assert_eq!(err.line(), Some(1));
    }
}
