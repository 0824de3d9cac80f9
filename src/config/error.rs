//! What goes wrong in a configuration, and where: [`ConfigError`] (every
//! variant names the file, the key, the line and the fix, and never a
//! secret), the [`Document`] being resolved (which turns a value's span into
//! its line), and the mapping of the toml crate's errors (syntax, unknown
//! key, wrong type, missing key) to the dotted key (`databases[1].prefix`)
//! and the form its value should take.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::schema::KNOWN_KEYS;

/// Why the configuration could not be loaded. Every variant is a usage or
/// config error (exit code 2). No message contains a secret.
#[derive(Debug)]
pub enum ConfigError {
    /// No config file was found where we looked.
    NotFound { tried: Vec<PathBuf> },
    /// The config file exists (or was named) but could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Something in the config file is wrong. `line` is 1-based; `None` when
    /// the problem is something missing from the whole file.
    Invalid {
        file: PathBuf,
        line: Option<usize>,
        /// Dotted path of the key, e.g. `storage.endpoint` or
        /// `databases[2].prefix` (0-based index); `None` for a syntax error
        /// on a line with no recognisable key.
        key: Option<String>,
        problem: String,
        fix: String,
    },
    /// A command-line flag or an environment variable is wrong or missing.
    Setting {
        /// e.g. `--endpoint` or `AWS_ENDPOINT_URL_S3`.
        name: String,
        problem: String,
        fix: String,
    },
}

impl ConfigError {
    /// The 1-based line of the offending value, if the error is in the file.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            _ => None,
        }
    }

    /// The key (or flag, or environment variable) the error is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Setting { name, .. } => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotFound { tried } => {
                let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "no config file found (tried {}); fix: pass --config <file> or create one \
                     (see walsync.toml.example)",
                    tried.join(", ")
                )
            }
            ConfigError::Read { path, source } => write!(
                f,
                "{}: cannot read the config file: {source}; fix: check the path and its permissions",
                path.display()
            ),
            ConfigError::Invalid {
                file,
                line,
                key,
                problem,
                fix,
            } => {
                match line {
                    Some(line) => write!(f, "{}:{line}: ", file.display())?,
                    None => write!(f, "{}: ", file.display())?,
                }
                if let Some(key) = key {
                    write!(f, "`{key}`: ")?;
                }
                write!(f, "{problem}; fix: {fix}")
            }
            ConfigError::Setting { name, problem, fix } => {
                write!(f, "{name}: {problem}; fix: {fix}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The config text being resolved, for turning spans into lines in errors.
pub(super) struct Document<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
}

impl Document<'_> {
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(super) fn error(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: span.map(|s| self.line_of(s.start)),
            key: Some(key.to_string()),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// Maps an error from the toml crate (syntax, unknown key, wrong type,
    /// missing key) to a `ConfigError` naming the key and the line.
    pub(super) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let line = err.span().map(|s| self.line_of(s.start));
        let problem = err.message().to_string();
        let table = match toml::de::DeTable::parse(self.text) {
            Ok(table) => table,
            Err(_) => {
                let fix = if problem == "duplicate key" {
                    "a key or table may appear only once; remove or merge the repeated one"
                } else {
                    "correct the TOML syntax (strings need quotes; see https://toml.io)"
                };
                return ConfigError::Invalid {
                    file: self.file.to_path_buf(),
                    line,
                    key: line.and_then(|l| self.key_on_line(l)),
                    problem: format!("TOML syntax error: {problem}"),
                    fix: fix.to_string(),
                };
            }
        };
        let mut key = err
            .span()
            .and_then(|s| key_path_at(table.get_ref(), s.start))
            .unwrap_or_default();
        let (problem, fix) = if problem.starts_with("unknown field") {
            (
                problem,
                "remove the key or correct its spelling (see walsync.toml.example)".to_string(),
            )
        } else if let Some(field) = problem
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            key = if key.is_empty() {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
            let fix = format!("add `{field} = \"...\"` to this table");
            (format!("`{field}` is required"), fix)
        } else {
            let leaf = leaf_key(&key);
            let problem = if matches!(leaf, "secret_access_key" | "access_key_id") {
                // Never echo what was written there.
                "the value is not a string".to_string()
            } else {
                // serde's "expected ..." names Rust types; the fix says it better.
                match problem.split_once(", expected") {
                    Some((found, _)) => found.to_string(),
                    None => problem,
                }
            };
            (problem, format!("write {}", expected_form(leaf)))
        };
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            key: (!key.is_empty()).then_some(key),
            problem,
            fix,
        }
    }

    /// The key on a line of the text (`key = ...` or `[table]`), if it is
    /// one of ours.
    pub(super) fn key_on_line(&self, line: usize) -> Option<String> {
        let text = self.text.lines().nth(line.checked_sub(1)?)?.trim();
        let key = if let Some(header) = text.strip_prefix('[') {
            header.trim_start_matches('[').split(']').next()?.trim()
        } else {
            text.split('=').next()?.trim()
        };
        let leaf = key.rsplit('.').next()?.trim();
        KNOWN_KEYS.contains(&leaf).then(|| key.to_string())
    }
}

/// The dotted path (`storage.endpoint`, `databases[1].prefix`) of the key
/// or value at byte `offset`, the innermost one that contains it.
fn key_path_at(table: &toml::de::DeTable<'_>, offset: usize) -> Option<String> {
    fn contains(span: Range<usize>, offset: usize) -> bool {
        span.start <= offset && (offset < span.end || span.start == span.end)
    }
    fn in_table(table: &toml::de::DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
        table.iter().find_map(|(key, value)| {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            if contains(key.span(), offset) {
                return Some(path);
            }
            in_value(value, offset, &path)
        })
    }
    fn in_value(
        value: &Spanned<toml::de::DeValue<'_>>,
        offset: usize,
        path: &str,
    ) -> Option<String> {
        let inner = match value.get_ref() {
            toml::de::DeValue::Table(table) => in_table(table, offset, path),
            toml::de::DeValue::Array(array) => array
                .iter()
                .enumerate()
                .find_map(|(i, item)| in_value(item, offset, &format!("{path}[{i}]"))),
            _ => None,
        };
        inner.or_else(|| contains(value.span(), offset).then(|| path.to_string()))
    }
    in_table(table, offset, "")
}

/// `databases[1].prefix` → `prefix`; `databases[0]` → `databases`.
fn leaf_key(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

/// What a key's value should look like, for type errors.
fn expected_form(leaf: &str) -> &'static str {
    match leaf {
        "sync_interval" | "snapshot_interval" | "rescan_interval" | "retention"
        | "idle_release_after" | "lease_ttl" => {
            "a quoted duration such as \"500ms\", \"1s\", \"10m\", \"1h30m\" or \"7d\""
        }
        "checkpoint_threshold" | "truncate_threshold" | "idle_release_max_size" => {
            "a size such as \"4MiB\", \"64MB\" or a whole number of bytes"
        }
        "workers" => "a whole number from 1 to 64, e.g. `workers = 2`",
        "listen" => "a quoted address and port such as \"127.0.0.1:9095\"",
        "metrics" => "a [metrics] table with `listen` (and `per_database`)",
        "path_style" | "recursive" | "per_database" => "true or false, without quotes",
        "storage" => "a [storage] table",
        "databases" => "one [[databases]] table per database, each with `path` and `prefix`",
        "directories" => {
            "one [[directories]] table per directory, each with `dir` and `prefix`, e.g. \
             `prefix = \"tenants/{name}\"`"
        }
        "pattern" => "a quoted glob on the file name such as \"*.db\"",
        "endpoint" => "a quoted http(s) URL such as \"http://127.0.0.1:9000\"",
        _ => "a quoted string",
    }
}

#[cfg(test)]
mod tests {
    use super::{key_path_at, leaf_key};
    use crate::config::testing::*;

    #[test]
    fn leaf_keys_drop_the_tables_and_the_index() {
        for (path, leaf) in [
            ("workers", "workers"),
            ("storage.endpoint", "endpoint"),
            ("databases[1].prefix", "prefix"),
            ("databases[0]", "databases"),
            ("directories", "directories"),
            ("", ""),
        ] {
            assert_eq!(leaf_key(path), leaf, "{path:?}");
        }
    }

    #[test]
    fn key_paths_name_the_innermost_key_or_value_at_an_offset() {
        let text = "workers = 2\n[storage]\nbucket = \"b\"\n[[databases]]\npath = \"/a.db\"\n\
                    [[databases]]\npath = \"/b.db\"\nprefix = \"b\"\n";
        let table = toml::de::DeTable::parse(text).expect("valid TOML");
        let at = |needle: &str| {
            let offset = text.find(needle).expect("needle in text");
            key_path_at(table.get_ref(), offset)
        };
        assert_eq!(at("workers").as_deref(), Some("workers"));
        assert_eq!(at("2\n").as_deref(), Some("workers"));
        assert_eq!(at("bucket").as_deref(), Some("storage.bucket"));
        assert_eq!(at("\"b\"\n[[").as_deref(), Some("storage.bucket"));
        assert_eq!(at("\"/a.db\"").as_deref(), Some("databases[0].path"));
        assert_eq!(at("\"/b.db\"").as_deref(), Some("databases[1].path"));
        assert_eq!(at("prefix").as_deref(), Some("databases[1].prefix"));
    }

    #[test]
    fn bad_configs_name_the_key_the_line_and_the_fix() {
        let long_prefix = "a".repeat(MAX_PREFIX_LEN + 1);
        let db = |path: &str, prefix: &str| {
            format!("[[databases]]\npath = \"{path}\"\nprefix = \"{prefix}\"\n")
        };
        let dir = |dir: &str, prefix: &str| {
            format!("[[directories]]\ndir = \"{dir}\"\nprefix = \"{prefix}\"\n")
        };
        // (config text with the offending line marked `# <-`, key the message must name)
        let cases: Vec<(String, &str)> = vec![
            // Syntax.
            (format!("workers =  # <-\n{STORAGE}{DATABASE}"), "workers"),
            (format!("[storage]\nbucket = \"b  # <-\n{DATABASE}"), "bucket"),
            (format!("workers = 1\nworkers = 2 # <-\n{STORAGE}{DATABASE}"), "workers"),
            (format!("{STORAGE}[storage] # <-\n{DATABASE}"), "storage"),
            // Unknown keys anywhere.
            (format!("bogus = 1 # <-\n{STORAGE}{DATABASE}"), "bogus"),
            (format!("[storage]\nbucket = \"b\"\nurl_style = \"path\" # <-\n{DATABASE}"), "storage.url_style"),
            (format!("[storage]\nbucket = \"b\"\nsession_token = \"t\" # <-\n{DATABASE}"), "storage.session_token"),
            (format!("{STORAGE}{DATABASE}retain = \"1d\" # <-\n"), "databases[0].retain"),
            (format!("{STORAGE}{DATABASE}{}sync_intervall = \"1s\" # <-\n", db("/b.db", "b")), "databases[1].sync_intervall"),
            (format!("databases = [{{ path = \"/a.db\", prefix = \"a\", zzz = 1 }}] # <-\n{STORAGE}"), "databases[0].zzz"),
            // Wrong types.
            (format!("workers = \"two\" # <-\n{STORAGE}{DATABASE}"), "workers"),
            (format!("sync_interval = 5 # <-\n{STORAGE}{DATABASE}"), "sync_interval"),
            (format!("truncate_threshold = true # <-\n{STORAGE}{DATABASE}"), "truncate_threshold"),
            (format!("[storage]\nbucket = 5 # <-\n{DATABASE}"), "storage.bucket"),
            (format!("[storage]\nbucket = \"b\"\npath_style = \"yes\" # <-\n{DATABASE}"), "storage.path_style"),
            (format!("storage = 5 # <-\n{DATABASE}"), "storage"),
            (format!("databases = 5 # <-\n{STORAGE}"), "databases"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = 5 # <-\n"), "databases[0].prefix"),
            // Bad values of globals.
            (format!("workers = 0 # <-\n{STORAGE}{DATABASE}"), "workers"),
            (format!("workers = 65 # <-\n{STORAGE}{DATABASE}"), "workers"),
            (format!("workers = -1 # <-\n{STORAGE}{DATABASE}"), "workers"),
            (format!("sync_interval = \"\" # <-\n{STORAGE}{DATABASE}"), "sync_interval"),
            (format!("sync_interval = \"-1s\" # <-\n{STORAGE}{DATABASE}"), "sync_interval"),
            (format!("sync_interval = \"5\" # <-\n{STORAGE}{DATABASE}"), "sync_interval"),
            (format!("sync_interval = \"5x\" # <-\n{STORAGE}{DATABASE}"), "sync_interval"),
            (format!("snapshot_interval = \"0s\" # <-\n{STORAGE}{DATABASE}"), "snapshot_interval"),
            (format!("rescan_interval = \"1.5s\" # <-\n{STORAGE}{DATABASE}"), "rescan_interval"),
            (format!("checkpoint_threshold = \"4MiBs\" # <-\n{STORAGE}{DATABASE}"), "checkpoint_threshold"),
            (format!("checkpoint_threshold = -5 # <-\n{STORAGE}{DATABASE}"), "checkpoint_threshold"),
            (format!("truncate_threshold = 0 # <-\n{STORAGE}{DATABASE}"), "truncate_threshold"),
            (
                format!("checkpoint_threshold = \"64MiB\"\ntruncate_threshold = \"4MiB\" # <-\n{STORAGE}{DATABASE}"),
                "truncate_threshold",
            ),
            // [storage].
            (format!("[storage]\nbucket = \"b\"\ndir = \"/backup\" # <-\n{DATABASE}"), "storage.dir"),
            (format!("[storage] # <-\nregion = \"us-east-1\"\n{DATABASE}"), "storage.bucket"),
            (format!("[storage]\ndir = \"/backup\"\nendpoint = \"http://x\" # <-\n{DATABASE}"), "storage.endpoint"),
            (format!("[storage]\ndir = \"\" # <-\n{DATABASE}"), "storage.dir"),
            (format!("[storage]\nbucket = \"s3://b\" # <-\n{DATABASE}"), "storage.bucket"),
            (format!("[storage]\nbucket = \"b/backups\" # <-\n{DATABASE}"), "storage.bucket"),
            (format!("[storage]\nbucket = \"\" # <-\n{DATABASE}"), "storage.bucket"),
            (format!("[storage]\nbucket = \"b\"\nendpoint = \"ftp://x\" # <-\n{DATABASE}"), "storage.endpoint"),
            (format!("[storage]\nbucket = \"b\"\nendpoint = \"127.0.0.1:9000\" # <-\n{DATABASE}"), "storage.endpoint"),
            (format!("[storage]\nbucket = \"b\"\nendpoint = \"http://:9000\" # <-\n{DATABASE}"), "storage.endpoint"),
            (format!("[storage]\nbucket = \"b\"\nendpoint = \"http://h:99999\" # <-\n{DATABASE}"), "storage.endpoint"),
            (format!("[storage]\nbucket = \"b\"\nregion = \"\" # <-\n{DATABASE}"), "storage.region"),
            (
                format!("[storage]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\npath_style = false # <-\n{DATABASE}"),
                "storage.path_style",
            ),
            (format!("[storage]\nbucket = \"My_Bucket\" # <-\n{DATABASE}"), "storage.bucket"),
            (format!("[storage]\nbucket = \"b\"\nendpoint = \"http://[::1\" # <-\n{DATABASE}"), "storage.endpoint"),
            (format!("[storage]\nbucket = \"b\"\naccess_key_id = \"AKID\" # <-\n{DATABASE}"), "storage.secret_access_key"),
            (format!("[storage]\nbucket = \"b\"\nsecret_access_key = \"s\" # <-\n{DATABASE}"), "storage.access_key_id"),
            (
                format!("[storage]\nbucket = \"b\"\naccess_key_id = \"AK ID\" # <-\nsecret_access_key = \"s\"\n{DATABASE}"),
                "storage.access_key_id",
            ),
            // [[databases]].
            (format!("databases = [] # <-\n{STORAGE}"), "databases"),
            (format!("{STORAGE}[[databases]] # <-\nprefix = \"a\"\n"), "databases[0].path"),
            (format!("{STORAGE}{DATABASE}[[databases]] # <-\npath = \"/b.db\"\n"), "databases[1].prefix"),
            (format!("{STORAGE}[[databases]]\npath = \"\" # <-\nprefix = \"a\"\n"), "databases[0].path"),
            (format!("{STORAGE}[[databases]]\npath = \"~/a.db\" # <-\nprefix = \"a\"\n"), "databases[0].path"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db-wal\" # <-\nprefix = \"a\"\n"), "databases[0].path"),
            (format!("{STORAGE}{DATABASE}[[databases]]\npath = \"/a.db\" # <-\nprefix = \"b\"\n"), "databases[1].path"),
            // The same file after resolving against /etc/walsync.
            (
                format!("{STORAGE}{}[[databases]]\npath = \"./x//./a.db\" # <-\nprefix = \"b\"\n", db("/etc/walsync/x/a.db", "a")),
                "databases[1].path",
            ),
            (format!("{STORAGE}{DATABASE}[[databases]]\npath = \"/b.db\"\nprefix = \"a\" # <-\n"), "databases[1].prefix"),
            (
                format!("{STORAGE}{}[[databases]]\npath = \"/b.db\"\nprefix = \"tenants/acme\" # <-\n", db("/a.db", "tenants")),
                "databases[1].prefix",
            ),
            (
                format!("{STORAGE}{}[[databases]]\npath = \"/b.db\"\nprefix = \"tenants\" # <-\n", db("/a.db", "tenants/acme/x")),
                "databases[1].prefix",
            ),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = \"\" # <-\n"), "databases[0].prefix"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = \"/a\" # <-\n"), "databases[0].prefix"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = \"a/\" # <-\n"), "databases[0].prefix"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = \"a//b\" # <-\n"), "databases[0].prefix"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = \"a/../b\" # <-\n"), "databases[0].prefix"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = \"a/./b\" # <-\n"), "databases[0].prefix"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = \"a b\" # <-\n"), "databases[0].prefix"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = \"café\" # <-\n"), "databases[0].prefix"),
            (format!("{STORAGE}[[databases]]\npath = \"/a.db\"\nprefix = \"{long_prefix}\" # <-\n"), "databases[0].prefix"),
            (format!("{STORAGE}{DATABASE}sync_interval = \"1y\" # <-\n"), "databases[0].sync_interval"),
            (format!("{STORAGE}{DATABASE}snapshot_interval = \"30m30m\" # <-\n"), "databases[0].snapshot_interval"),
            (format!("{STORAGE}{DATABASE}checkpoint_threshold = \"1.5MiB\" # <-\n"), "databases[0].checkpoint_threshold"),
            // Per-database truncate below the global checkpoint threshold (4 MiB).
            (format!("{STORAGE}{DATABASE}truncate_threshold = \"1MiB\" # <-\n"), "databases[0].truncate_threshold"),
            (
                format!("truncate_threshold = \"8MiB\"\n{STORAGE}{DATABASE}checkpoint_threshold = \"16MiB\" # <-\n"),
                "databases[0].checkpoint_threshold",
            ),
            // [[directories]]: the table itself.
            (format!("directories = [] # <-\n{STORAGE}"), "directories"),
            (format!("directories = 5 # <-\n{STORAGE}"), "directories"),
            (format!("{STORAGE}[[directories]] # <-\nprefix = \"t/{{name}}\"\n"), "directories[0].dir"),
            (format!("{STORAGE}[[directories]] # <-\ndir = \"/t\"\n"), "directories[0].prefix"),
            (format!("{STORAGE}[[directories]]\ndir = \"\" # <-\nprefix = \"t/{{name}}\"\n"), "directories[0].dir"),
            (format!("{STORAGE}[[directories]]\ndir = \"~/t\" # <-\nprefix = \"t/{{name}}\"\n"), "directories[0].dir"),
            (format!("{STORAGE}{DIRECTORY}patern = \"*.db\" # <-\n"), "directories[0].patern"),
            (format!("{STORAGE}{DATABASE}{DIRECTORY}{}sync_intervall = \"1s\" # <-\n", dir("/u", "u/{name}")), "directories[1].sync_intervall"),
            // `pattern` and `recursive`.
            (format!("{STORAGE}{DIRECTORY}pattern = \"[abc.db\" # <-\n"), "directories[0].pattern"),
            (format!("{STORAGE}{DIRECTORY}pattern = \"[z-a]*.db\" # <-\n"), "directories[0].pattern"),
            (format!("{STORAGE}{DIRECTORY}pattern = \"\" # <-\n"), "directories[0].pattern"),
            (format!("{STORAGE}{DIRECTORY}pattern = \"eu/*.db\" # <-\n"), "directories[0].pattern"),
            (format!("{STORAGE}{DIRECTORY}pattern = \"*.db-wal\" # <-\n"), "directories[0].pattern"),
            (format!("{STORAGE}{DIRECTORY}pattern = \"*.{{db,sqlite}}\" # <-\n"), "directories[0].pattern"),
            (format!("{STORAGE}{DIRECTORY}pattern = 5 # <-\n"), "directories[0].pattern"),
            (format!("{STORAGE}{DIRECTORY}recursive = \"yes\" # <-\n"), "directories[0].recursive"),
            // The prefix template on its own.
            (format!("{STORAGE}[[directories]]\ndir = \"/t\"\nprefix = \"tenants\" # <-\n"), "directories[0].prefix"),
            (format!("{STORAGE}[[directories]]\ndir = \"/t\"\nprefix = \"tenants/{{foo}}\" # <-\n"), "directories[0].prefix"),
            (format!("{STORAGE}[[directories]]\ndir = \"/t\"\nprefix = \"tenants/{{name}}/{{ext}}\" # <-\n"), "directories[0].prefix"),
            (format!("{STORAGE}[[directories]]\ndir = \"/t\"\nprefix = \"tenants/{{name\" # <-\n"), "directories[0].prefix"),
            (format!("{STORAGE}[[directories]]\ndir = \"/t\"\nprefix = \"/tenants/{{name}}\" # <-\n"), "directories[0].prefix"),
            (format!("{STORAGE}[[directories]]\ndir = \"/t\"\nprefix = \"tenants/{{name}}/\" # <-\n"), "directories[0].prefix"),
            (format!("{STORAGE}[[directories]]\ndir = \"/t\"\nprefix = \"../{{path}}\" # <-\n"), "directories[0].prefix"),
            (format!("{STORAGE}[[directories]]\ndir = \"/t\"\nprefix = \"my tenants/{{name}}\" # <-\n"), "directories[0].prefix"),
            (format!("{STORAGE}[[directories]]\ndir = \"/t\"\nprefix = 5 # <-\n"), "directories[0].prefix"),
            // Overrides.
            (format!("{STORAGE}{DIRECTORY}sync_interval = \"1y\" # <-\n"), "directories[0].sync_interval"),
            (format!("{STORAGE}{DIRECTORY}retention = \"0s\" # <-\n"), "directories[0].retention"),
            (format!("{STORAGE}{DIRECTORY}checkpoint_threshold = \"lots\" # <-\n"), "directories[0].checkpoint_threshold"),
            (format!("{STORAGE}{DIRECTORY}truncate_threshold = \"1MiB\" # <-\n"), "directories[0].truncate_threshold"),
            // Two directories.
            (format!("{STORAGE}{DIRECTORY}[[directories]]\ndir = \"/t\" # <-\nprefix = \"u/{{name}}\"\n"), "directories[1].dir"),
            (
                format!("{STORAGE}{}[[directories]]\ndir = \"./t/\" # <-\nprefix = \"u/{{name}}\"\n", dir("/etc/walsync/t", "t/{name}")),
                "directories[1].dir",
            ),
            (
                format!("{STORAGE}{DIRECTORY}recursive = true\n[[directories]]\ndir = \"/t/eu\" # <-\nprefix = \"u/{{name}}\"\n"),
                "directories[1].dir",
            ),
            (
                format!("{STORAGE}{}[[directories]]\ndir = \"/t\" # <-\nprefix = \"t/{{name}}\"\nrecursive = true\n", dir("/t/eu", "u/{name}")),
                "directories[1].dir",
            ),
            (format!("{STORAGE}{DIRECTORY}[[directories]]\ndir = \"/u\"\nprefix = \"t/{{path}}\" # <-\n"), "directories[1].prefix"),
            (format!("{STORAGE}{DIRECTORY}[[directories]]\ndir = \"/u\"\nprefix = \"t/eu/{{name}}\" # <-\n"), "directories[1].prefix"),
            (format!("{STORAGE}{DIRECTORY}[[directories]]\ndir = \"/u\"\nprefix = \"t{{name}}\" # <-\n"), "directories[1].prefix"),
            // Against [[databases]]: prefixes.
            (
                format!("{STORAGE}{}[[directories]]\ndir = \"/t\"\nprefix = \"tenants/{{name}}\" # <-\n", db("/a.db", "tenants")),
                "directories[0].prefix",
            ),
            (
                format!("{STORAGE}{}[[directories]]\ndir = \"/t\"\nprefix = \"tenants/{{name}}\" # <-\n", db("/a.db", "tenants/acme")),
                "directories[0].prefix",
            ),
            (
                format!("{STORAGE}{}[[directories]]\ndir = \"/t\"\nprefix = \"tenants/eu/{{name}}\" # <-\n", db("/a.db", "tenants")),
                "directories[0].prefix",
            ),
            (
                format!("{STORAGE}{}[[directories]]\ndir = \"/t\"\nprefix = \"t-{{name}}\" # <-\n", db("/a.db", "t-acme")),
                "directories[0].prefix",
            ),
            (
                format!("{STORAGE}{DATABASE}[[directories]]\ndir = \"/t\"\nprefix = \"{{name}}\" # <-\n"),
                "directories[0].prefix",
            ),
            // Against [[databases]]: a listed file that is also discovered.
            (
                format!("{STORAGE}[[databases]]\npath = \"/t/acme.db\" # <-\nprefix = \"acme\"\n{DIRECTORY}"),
                "databases[0].path",
            ),
            (
                format!("{STORAGE}[[databases]]\npath = \"/t/eu/acme.db\" # <-\nprefix = \"acme\"\n{DIRECTORY}recursive = true\n"),
                "databases[0].path",
            ),
            (
                format!("{STORAGE}[[databases]]\npath = \"/t/acme.sqlite\" # <-\nprefix = \"acme\"\n{DIRECTORY}pattern = \"*.sqlite\"\n"),
                "databases[0].path",
            ),
        ];
        assert!(cases.len() >= 30);
        for (text, key) in &cases {
            let line = marked_line(text);
            let err = match parse(text) {
                Ok(_) => panic!("accepted a bad config:\n{text}"),
                Err(err) => err,
            };
            let message = err.to_string();
            assert_eq!(
                err.line(),
                Some(line),
                "wrong line in {message:?} for:\n{text}"
            );
            assert!(
                message.starts_with(&format!("{FILE}:{line}: ")),
                "{message:?}"
            );
            assert_eq!(err.key(), Some(*key), "{message:?}");
            assert!(
                message.contains(&format!("`{key}`")),
                "{message:?} does not name {key:?}"
            );
            assert!(message.contains("; fix: "), "{message:?} has no fix");
        }
    }

    #[test]
    fn missing_tables_are_errors_without_a_line() {
        for (text, key) in [(DATABASE, "storage"), (STORAGE, "databases")] {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line(), None);
            assert_eq!(err.key(), Some(key));
            assert!(
                err.to_string().starts_with(&format!("{FILE}: `{key}`: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug() {
        const SECRET: &str = "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRET";
        let good = format!(
            "[storage]\nbucket = \"b\"\naccess_key_id = \"AKID\"\nsecret_access_key = \"{SECRET}\"\n{DATABASE}"
        );
        let config = parse_with(&good, &[]).expect("valid");
        assert!(!format!("{config:?}").contains(SECRET));
        assert!(!format!("{config:#?}").contains(SECRET));

        let env_config = parse_with(
            &format!("{STORAGE}{DATABASE}"),
            &[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", SECRET),
                ("AWS_SESSION_TOKEN", SECRET),
            ],
        )
        .expect("valid");
        assert!(!format!("{env_config:?}").contains(SECRET));

        let bad = [
            format!("[storage]\nbucket = \"b\"\naccess_key_id = \"AKID\"\nsecret_access_key = \"{SECRET}\n{DATABASE}"),
            format!("[storage]\nbucket = \"b\"\nsecret_access_key = \"{SECRET}\"\n{DATABASE}"),
            format!("[storage]\nbucket = \"b\"\naccess_key_id = \"AKID\"\nsecret_access_key = \"{SECRET} \"\n{DATABASE}"),
            format!("[storage]\nbucket = \"b\"\naccess_key_id = \"AKID\"\nsecret_access_key = [\"{SECRET}\"]\n{DATABASE}"),
            format!("[storage]\nbucket = \"b\"\n{SECRET}\n{DATABASE}"),
            format!("[storage]\nbucket = \"b\"\n{SECRET}=\n{DATABASE}"),
            format!("[storage]\nbucket = \"b\"\nendpoint = \"http://user:{SECRET}@host\"\n{DATABASE}"),
            format!("[storage]\nbucket = \"b\"\naccess_key_id = \"AKID\"\nsecret_access_key = \"{SECRET}\"\n{DATABASE}bogus = 1\n"),
            format!("[storage]\ndir = \"/x\"\nsecret_access_key = \"{SECRET}\"\n{DATABASE}"),
        ];
        for text in &bad {
            let err = parse_with(text, &[]).expect_err(text);
            assert!(!err.to_string().contains(SECRET), "{err}");
            assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        }
        let mut vars = CREDENTIALS.to_vec();
        vars.push((
            "AWS_ENDPOINT_URL_S3",
            "http://user:wJalrXUtnFEMIK7MDENGbPxRfiCYSECRET@host",
        ));
        let err = parse_with(&format!("{STORAGE}{DATABASE}"), &vars).expect_err("userinfo");
        assert!(!err.to_string().contains(SECRET), "{err}");
    }
}
