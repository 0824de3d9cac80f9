//! The `[[databases]]` tables: each path a database file (not one of
//! SQLite's side files) listed once, each prefix valid
//! ([`crate::keys::prefix::validate_prefix`]), used once, and not a parent of
//! another's, which would make listing one database return the other's
//! objects.

use std::collections::HashMap;
use std::path::PathBuf;

use toml::Spanned;

use super::error::Document;
use super::globals::Globals;
use super::schema::RawDatabase;
use super::{ConfigError, DatabaseConfig};
use crate::keys::prefix::validate_prefix;

const PREFIX_FORM: &str = "use '/'-separated names made of letters, digits, '.', '_' and '-', \
     e.g. \"tenants/acme\", \"services/auth\" or \"edge/node-1/cache\"";

impl Document<'_> {
    pub(super) fn databases(
        &self,
        raw: &[Spanned<RawDatabase>],
        globals: &Globals,
    ) -> Result<Vec<DatabaseConfig>, ConfigError> {
        let mut databases = Vec::with_capacity(raw.len());
        let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
        let mut by_prefix: HashMap<&str, usize> = HashMap::new();
        for (i, db) in raw.iter().enumerate() {
            let db = db.get_ref();
            let key = |leaf: &str| format!("databases[{i}].{leaf}");
            let path = self.local_path(&db.path, &key("path"))?;
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if let Some(suffix) = ["-wal", "-shm", "-journal"]
                    .iter()
                    .find(|s| name.ends_with(**s))
                {
                    return Err(self.error(
                        Some(db.path.span()),
                        &key("path"),
                        format!(
                            "{:?} is SQLite's {suffix} file, not a database",
                            db.path.get_ref()
                        ),
                        format!("point `path` at the database file itself (without {suffix})"),
                    ));
                }
            }
            if let Some(&first) = by_path.get(&path) {
                return Err(self.error(
                    Some(db.path.span()),
                    &key("path"),
                    format!(
                        "{} is already configured at line {}",
                        path.display(),
                        self.line_of(raw[first].get_ref().path.span().start)
                    ),
                    "back up each database once: remove one of the two [[databases]] tables",
                ));
            }
            by_path.insert(path.clone(), i);
            let prefix = db.prefix.get_ref();
            validate_prefix(prefix).map_err(|problem| {
                self.error(Some(db.prefix.span()), &key("prefix"), problem, PREFIX_FORM)
            })?;
            if let Some(&first) = by_prefix.get(prefix.as_str()) {
                return Err(self.error(
                    Some(db.prefix.span()),
                    &key("prefix"),
                    format!(
                        "prefix {prefix:?} is already used by the database at line {}",
                        self.line_of(raw[first].get_ref().prefix.span().start)
                    ),
                    "give every database its own prefix",
                ));
            }
            by_prefix.insert(prefix, i);
            let resolved = self.overrides(db.overrides(), &key, globals)?;
            databases.push(DatabaseConfig {
                path,
                prefix: prefix.clone(),
                sync_interval: resolved.sync_interval,
                snapshot_interval: resolved.snapshot_interval,
                checkpoint_threshold: resolved.checkpoint_threshold,
                truncate_threshold: resolved.truncate_threshold,
                retention: resolved.retention,
                encryption: resolved.encryption,
            });
        }
        // A prefix that is a parent of another (by whole components) would
        // make listing the parent return the child's objects.
        for (i, db) in raw.iter().enumerate() {
            let prefix = db.get_ref().prefix.get_ref();
            for (slash, _) in prefix.match_indices('/') {
                let Some(&parent) = by_prefix.get(&prefix[..slash]) else {
                    continue;
                };
                let (blamed, other) = if i > parent { (i, parent) } else { (parent, i) };
                let blamed_prefix = &raw[blamed].get_ref().prefix;
                let other_prefix = &raw[other].get_ref().prefix;
                let relation = if blamed == i { "is inside" } else { "contains" };
                return Err(self.error(
                    Some(blamed_prefix.span()),
                    &format!("databases[{blamed}].prefix"),
                    format!(
                        "prefix {:?} {relation} prefix {:?} of the database at line {}, so listing \
                         one would return the other's objects",
                        blamed_prefix.get_ref(),
                        other_prefix.get_ref(),
                        self.line_of(other_prefix.span().start),
                    ),
                    "give each database a prefix that is not a parent of another, e.g. \
                     \"tenants/main\" beside \"tenants/acme\" instead of \"tenants\"",
                ));
            }
        }
        Ok(databases)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn overrides_apply_to_their_database_only() {
        let text = format!(
            "sync_interval = \"2s\"\nsnapshot_interval = \"6h\"\ncheckpoint_threshold = 1048576\n\
             truncate_threshold = \"8MB\"\nworkers = 8\nrescan_interval = \"1m30s\"\n{STORAGE}\
             [[databases]]\npath = \"/a.db\"\nprefix = \"a\"\n\
             [[databases]]\npath = \"/b.db\"\nprefix = \"b\"\nsync_interval = \"250ms\"\n\
             snapshot_interval = \"1d\"\ncheckpoint_threshold = \"2MiB\"\ntruncate_threshold = \"32MiB\"\n"
        );
        let config = parse(&text).expect("valid");
        assert_eq!(config.workers, 8);
        assert_eq!(config.rescan_interval, Duration::from_secs(90));
        let [a, b] = &config.databases[..] else {
            panic!("two databases")
        };
        assert_eq!(a.sync_interval, Duration::from_secs(2));
        assert_eq!(a.snapshot_interval, Duration::from_secs(6 * 3600));
        assert_eq!(a.checkpoint_threshold, 1 << 20);
        assert_eq!(a.truncate_threshold, 8_000_000);
        assert_eq!(b.sync_interval, Duration::from_millis(250));
        assert_eq!(b.snapshot_interval, Duration::from_secs(86_400));
        assert_eq!(b.checkpoint_threshold, 2 << 20);
        assert_eq!(b.truncate_threshold, 32 << 20);
    }

    #[test]
    fn sibling_prefixes_that_share_text_are_fine() {
        let text = format!(
            "{STORAGE}[[databases]]\npath = \"/1.db\"\nprefix = \"tenants\"\n\
             [[databases]]\npath = \"/2.db\"\nprefix = \"tenants2\"\n\
             [[databases]]\npath = \"/3.db\"\nprefix = \"tenants-x/acme\"\n\
             [[databases]]\npath = \"/4.db\"\nprefix = \"other/tenants\"\n"
        );
        assert_eq!(parse(&text).expect("valid").databases.len(), 4);
    }
}
