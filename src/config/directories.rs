//! The `[[directories]]` tables, checked on their own and against the
//! `[[databases]]`: each `dir` scanned once and not inside another that is
//! scanned recursively, a valid `pattern` ([`crate::file_pattern`]) and
//! `prefix` template ([`crate::keys::prefix`]), no template that can produce
//! a prefix that equals, contains or sits inside a listed database's or
//! another directory's, and no database both listed and discovered. Uses the
//! same pure rules as [`crate::discovery`], without depending on it.

use toml::Spanned;

use super::error::Document;
use super::globals::Globals;
use super::schema::{RawDatabase, RawDirectory};
use super::{ConfigError, DatabaseConfig, DirectoryConfig, DEFAULT_PATTERN};
use crate::file_pattern;
use crate::keys::prefix::check_template;

const PATTERN_FORM: &str =
    "write a glob on the file name such as \"*.db\", \"tenant-*.sqlite3\" or \
     \"[a-m]*.db\" (`*` any run, `?` one character, `[abc]`, `[a-z]`, `[!a]` one of a set)";

const TEMPLATE_FORM: &str = "write a prefix with {name} (the file name without its extension) or \
     {path} (its path below `dir` without the extension), e.g. \"tenants/{name}\"; the rest uses \
     '/'-separated names of letters, digits, '.', '_' and '-'";

impl Document<'_> {
    /// The `[[directories]]` tables, checked on their own and against the
    /// already checked `[[databases]]` (`databases[i]` resolves `raw_databases[i]`).
    pub(super) fn directories(
        &self,
        raw: &[Spanned<RawDirectory>],
        raw_databases: &[Spanned<RawDatabase>],
        databases: &[DatabaseConfig],
        globals: &Globals,
    ) -> Result<Vec<DirectoryConfig>, ConfigError> {
        let mut directories: Vec<DirectoryConfig> = Vec::with_capacity(raw.len());
        // The text before each template's first placeholder: every prefix
        // discovered there starts with it.
        let mut fixed_parts: Vec<&str> = Vec::with_capacity(raw.len());
        for (i, table) in raw.iter().enumerate() {
            let table = table.get_ref();
            let key = |leaf: &str| format!("directories[{i}].{leaf}");
            let dir = self.local_path(&table.dir, &key("dir"))?;
            if let Some(first) = directories.iter().position(|d| d.dir == dir) {
                return Err(self.error(
                    Some(table.dir.span()),
                    &key("dir"),
                    format!(
                        "{} is already configured at line {}",
                        dir.display(),
                        self.line_of(raw[first].get_ref().dir.span().start)
                    ),
                    "scan each directory once: remove one of the two [[directories]] tables \
                     (one `pattern` such as \"*\" or \"*.[ds][bq]*\" can match several extensions)",
                ));
            }
            let pattern = match &table.pattern {
                None => DEFAULT_PATTERN.to_string(),
                Some(pattern) => {
                    file_pattern::check_pattern(pattern.get_ref()).map_err(|problem| {
                        self.error(Some(pattern.span()), &key("pattern"), problem, PATTERN_FORM)
                    })?;
                    pattern.get_ref().clone()
                }
            };
            let template = &table.prefix;
            let fixed = check_template(template.get_ref()).map_err(|problem| {
                self.error(
                    Some(template.span()),
                    &key("prefix"),
                    problem,
                    TEMPLATE_FORM,
                )
            })?;
            fixed_parts.push(fixed);
            let resolved = self.overrides(table.overrides(), &key, globals)?;
            directories.push(DirectoryConfig {
                dir,
                pattern,
                recursive: table.recursive.as_ref().is_some_and(|r| *r.get_ref()),
                prefix_template: template.get_ref().clone(),
                sync_interval: resolved.sync_interval,
                snapshot_interval: resolved.snapshot_interval,
                checkpoint_threshold: resolved.checkpoint_threshold,
                truncate_threshold: resolved.truncate_threshold,
                retention: resolved.retention,
                encryption: resolved.encryption,
            });
        }
        // Two directories, one inside the other and scanned recursively,
        // could both discover the same file.
        for (i, inner) in directories.iter().enumerate() {
            for (j, outer) in directories.iter().enumerate() {
                if i == j || !outer.recursive || !inner.dir.starts_with(&outer.dir) {
                    continue;
                }
                let blamed = i.max(j);
                let line = |k: usize| self.line_of(raw[k].get_ref().dir.span().start);
                return Err(self.error(
                    Some(raw[blamed].get_ref().dir.span()),
                    &format!("directories[{blamed}].dir"),
                    format!(
                        "{} (line {}) is inside {} (line {}), which is scanned recursively, so a \
                         database there could be backed up twice",
                        inner.dir.display(),
                        line(i),
                        outer.dir.display(),
                        line(j),
                    ),
                    "remove the inner [[directories]] table, or set `recursive = false` on the \
                     outer one",
                ));
            }
        }
        // Templates whose fixed parts nest can produce the same prefix, or
        // one inside the other.
        for (i, fixed) in fixed_parts.iter().enumerate() {
            for (j, earlier) in fixed_parts[..i].iter().enumerate() {
                if !(fixed.starts_with(earlier) || earlier.starts_with(fixed)) {
                    continue;
                }
                let template = &raw[i].get_ref().prefix;
                let other = &raw[j].get_ref().prefix;
                return Err(self.error(
                    Some(template.span()),
                    &format!("directories[{i}].prefix"),
                    format!(
                        "template {:?} can produce the same prefix as, or one inside or around, \
                         template {:?} of the directory at line {}",
                        template.get_ref(),
                        other.get_ref(),
                        self.line_of(other.span().start),
                    ),
                    "start each directory's template with its own fixed name, e.g. \
                     \"tenants/{name}\" and \"shops/{name}\"",
                ));
            }
        }
        for (d, db) in databases.iter().enumerate() {
            let raw_db = raw_databases[d].get_ref();
            // A listed database that a directory also discovers.
            for (i, directory) in directories.iter().enumerate() {
                let Ok(relative) = db.path.strip_prefix(&directory.dir) else {
                    continue;
                };
                if !file_pattern::is_candidate(&directory.pattern, directory.recursive, relative) {
                    continue;
                }
                return Err(self.error(
                    Some(raw_db.path.span()),
                    &format!("databases[{d}].path"),
                    format!(
                        "{} is also discovered by the [[directories]] table at line {} (pattern \
                         {:?} in {}), so it would be backed up twice",
                        db.path.display(),
                        self.line_of(raw[i].get_ref().dir.span().start),
                        directory.pattern,
                        directory.dir.display(),
                    ),
                    "remove this [[databases]] table, or narrow the directory's `pattern` so it \
                     does not match this file",
                ));
            }
            // A listed prefix that a discovered one could equal, contain or
            // sit inside.
            for (i, fixed) in fixed_parts.iter().enumerate() {
                let prefix = &db.prefix;
                let inside_template = prefix.starts_with(fixed);
                let around_template = fixed.starts_with(&format!("{prefix}/"));
                if !(inside_template || around_template) {
                    continue;
                }
                let template = &raw[i].get_ref().prefix;
                let relation = if around_template {
                    "contains every prefix"
                } else {
                    "could equal, contain or sit inside a prefix"
                };
                return Err(self.error(
                    Some(template.span()),
                    &format!("directories[{i}].prefix"),
                    format!(
                        "prefix {prefix:?} of the database at line {} {relation} that template {:?} \
                         produces, so listing one would return the other's objects",
                        self.line_of(raw_db.prefix.span().start),
                        template.get_ref(),
                    ),
                    "start the template with a name no [[databases]] prefix uses, e.g. \
                     \"tenants/{name}\" beside \"services/auth\"",
                ));
            }
        }
        Ok(directories)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::{DEFAULT_CHECKPOINT_THRESHOLD, DEFAULT_SNAPSHOT_INTERVAL};

    #[test]
    fn directories_alone_are_enough_and_get_the_defaults() {
        let config = parse(&format!("{STORAGE}{DIRECTORY}")).expect("valid");
        assert_eq!(config.databases, vec![]);
        assert_eq!(
            config.directories,
            vec![DirectoryConfig {
                dir: PathBuf::from("/t"),
                pattern: "*.db".to_string(),
                recursive: false,
                prefix_template: "t/{name}".to_string(),
                sync_interval: Duration::from_secs(1),
                snapshot_interval: Duration::from_secs(3600),
                checkpoint_threshold: 4 << 20,
                truncate_threshold: 64 << 20,
                retention: None,
                encryption: None,
            }]
        );
        let config = parse(&format!("databases = []\n{STORAGE}{DIRECTORY}")).expect("valid");
        assert_eq!(config.directories.len(), 1);
        let config = parse(&format!("directories = []\n{STORAGE}{DATABASE}")).expect("valid");
        assert_eq!(config.directories, vec![]);
    }

    #[test]
    fn directory_overrides_resolve_against_the_globals() {
        let text = format!(
            "retention = \"3d\"\nsync_interval = \"2s\"\ntruncate_threshold = \"8MiB\"\n{STORAGE}\
             [[directories]]\ndir = \"tenants\"\nprefix = \"tenants/{{path}}\"\n\
             pattern = \"tenant-?[0-9].sqlite3\"\nrecursive = true\nsync_interval = \"250ms\"\n\
             snapshot_interval = \"6h\"\ncheckpoint_threshold = \"1MiB\"\nretention = \"7d\"\n\
             [[directories]]\ndir = \"/srv/shops/\"\nprefix = \"shops/{{name}}\"\n\
             truncate_threshold = \"16MiB\"\n"
        );
        let config = parse(&text).expect("valid");
        let [tenants, shops] = &config.directories[..] else {
            panic!("two directories")
        };
        assert_eq!(tenants.dir, Path::new("/etc/walsync/tenants"));
        assert_eq!(tenants.pattern, "tenant-?[0-9].sqlite3");
        assert!(tenants.recursive);
        assert_eq!(tenants.prefix_template, "tenants/{path}");
        assert_eq!(tenants.sync_interval, Duration::from_millis(250));
        assert_eq!(tenants.snapshot_interval, Duration::from_secs(6 * 3600));
        assert_eq!(tenants.checkpoint_threshold, 1 << 20);
        assert_eq!(tenants.truncate_threshold, 8 << 20);
        assert_eq!(tenants.retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(shops.dir, Path::new("/srv/shops"));
        assert_eq!(shops.pattern, DEFAULT_PATTERN);
        assert!(!shops.recursive);
        assert_eq!(shops.sync_interval, Duration::from_secs(2));
        assert_eq!(shops.snapshot_interval, DEFAULT_SNAPSHOT_INTERVAL);
        assert_eq!(shops.checkpoint_threshold, DEFAULT_CHECKPOINT_THRESHOLD);
        assert_eq!(shops.truncate_threshold, 16 << 20);
        assert_eq!(shops.retention, Some(Duration::from_secs(3 * 86_400)));

        let db = tenants.database(
            PathBuf::from("/etc/walsync/tenants/eu/tenant-a1.sqlite3"),
            "tenants/eu/tenant-a1".to_string(),
        );
        assert_eq!(db.prefix, "tenants/eu/tenant-a1");
        assert_eq!(db.sync_interval, tenants.sync_interval);
        assert_eq!(db.snapshot_interval, tenants.snapshot_interval);
        assert_eq!(db.checkpoint_threshold, tenants.checkpoint_threshold);
        assert_eq!(db.truncate_threshold, tenants.truncate_threshold);
        assert_eq!(db.retention, tenants.retention);
    }

    #[test]
    fn directories_beside_databases_that_cannot_collide_are_fine() {
        let text = format!(
            "{STORAGE}\
             [[databases]]\npath = \"/t/main.sqlite\"\nprefix = \"tenants\"\n\
             [[databases]]\npath = \"/t/eu/acme.db\"\nprefix = \"tenants2/acme\"\n\
             [[databases]]\npath = \"/t/.hidden.db\"\nprefix = \"hidden\"\n\
             [[databases]]\npath = \"/t/x.db-mj\"\nprefix = \"t-\"\n\
             [[directories]]\ndir = \"/t\"\nprefix = \"tenants-x/{{name}}\"\n\
             [[directories]]\ndir = \"/t/eu/\"\nprefix = \"eu/{{name}}\"\npattern = \"*.sqlite\"\n\
             [[directories]]\ndir = \"/u\"\nprefix = \"u/{{path}}\"\nrecursive = true\n\
             [[directories]]\ndir = \"/w\"\nprefix = \"w/{{name}}\"\n"
        );
        let config = parse(&text).expect("valid");
        assert_eq!(config.databases.len(), 4);
        assert_eq!(config.directories.len(), 4);
    }
}
