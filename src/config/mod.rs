//! `walsync.toml`: reading, checking and resolving the configuration.
//!
//! This module turns the text of the config file plus the `AWS_*` environment
//! into a [`Config`] in which every value has been checked and every default
//! and per-database override resolved, so nothing downstream validates again.
//! It never talks to storage, never reads the process environment itself (the
//! caller passes `env`, so [`Config::parse`] is a pure function) and touches the
//! filesystem only in [`Config::load`] and [`find_config`].
//!
//! It upholds ARCHITECTURE.md invariant 9 (bad input gets a clear error):
//! unknown keys are errors naming the key and its line, every
//! [`ConfigError`] names the file, the key, the line and the fix, and secrets
//! are never logged (no error message and no `Debug` output contains a
//! credential).
//! Prefixes are checked here ([`validate_prefix`]) so that no prefix can
//! escape a directory (`..`) and no database's prefix is a parent of another's,
//! which would make listing one database return the other's objects. The same
//! rule covers `[[directories]]`: a directory's prefix template must not be
//! able to produce a prefix that equals, contains or sits inside a listed
//! database's prefix or another directory's, and no database may be both
//! listed and discovered (see [`crate::discovery`] for the discovery itself).
//!
//! This file holds the resolved model and the entry points; one file per
//! concern holds the rest: `schema` (the file as written), `error` (what
//! goes wrong and where), `globals` (the top-level settings and the
//! overrides), `values` (durations, sizes, paths), `databases`,
//! `directories`, `storage` (the `[storage]` table), `s3_settings` (S3
//! settings from the environment and flags), `units` and `lookup` (which
//! file to read).

mod databases;
mod directories;
mod error;
mod globals;
mod lookup;
mod s3_settings;
mod schema;
mod storage;
mod units;
mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::error::ConfigError;
use self::error::Document;
pub use self::lookup::{find_config, LOCAL_CONFIG, SYSTEM_CONFIG};
pub use self::s3_settings::s3_from_flags;
use self::schema::RawConfig;
pub use self::units::{parse_duration, parse_size};
pub use crate::keys::prefix::{validate_prefix, MAX_PREFIX_LEN};
use crate::storage::s3::S3Settings;

/// How often a changed database ships its new commits, unless overridden.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often each database gets a full snapshot, unless overridden.
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(3600);
/// WAL size at which walsync runs a PASSIVE checkpoint, unless overridden.
pub const DEFAULT_CHECKPOINT_THRESHOLD: u64 = 4 * 1024 * 1024;
/// WAL size at which walsync runs a TRUNCATE checkpoint, unless overridden.
pub const DEFAULT_TRUNCATE_THRESHOLD: u64 = 64 * 1024 * 1024;
/// Size of the upload/sync thread pool. A job mostly waits on the storage
/// (tens of milliseconds a request against a remote store), so many more
/// threads than cores: through a 30 ms link, 2 kept 100 databases that
/// commit every second 1.77 s behind at p99, 16 kept them 0.77 s behind.
pub const DEFAULT_WORKERS: usize = 16;
/// Largest accepted `workers`.
pub const MAX_WORKERS: usize = 64;
/// How often every WAL is stat'ed in case file events were missed.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// A database with no commits for this long is released (its connections
/// closed) until it changes again.
pub const DEFAULT_IDLE_RELEASE_AFTER: Duration = Duration::from_secs(60);
/// How long a prefix's lease holds after its last renewal (README "One
/// writer per prefix"): how long another host waits after a crash.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15 * 60);
/// Larger databases are never released: waking one reads the whole file.
pub const DEFAULT_IDLE_RELEASE_MAX_SIZE: u64 = 64 << 20;
/// File-name glob of a `[[directories]]` table without `pattern`.
pub const DEFAULT_PATTERN: &str = "*.db";
/// Region used when neither the config nor `AWS_REGION`/`AWS_DEFAULT_REGION` names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The whole configuration, checked and resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub storage: StorageConfig,
    /// Size of the upload/sync thread pool (1..=64).
    pub workers: usize,
    /// Interval of the safety-net stat of every WAL.
    pub rescan_interval: Duration,
    /// Release a database's connections after this long without commits.
    pub idle_release_after: Duration,
    /// Databases larger than this stay open.
    pub idle_release_max_size: u64,
    /// How long a prefix's lease holds after it was written (`crate::lease`).
    pub lease_ttl: Duration,
    /// Listed databases: paths and prefixes are unique and no prefix contains
    /// another. Empty only when `directories` is not.
    pub databases: Vec<DatabaseConfig>,
    /// Directories whose databases are discovered at run time
    /// ([`crate::discovery::scan`]). Their `dir`s are unique, none of them
    /// can discover a listed database, and no template can produce a prefix
    /// that collides with a listed database's or another directory's.
    pub directories: Vec<DirectoryConfig>,
    /// The config file this came from (absolute when it came through [`Config::load`]).
    pub source: PathBuf,
    /// `[metrics] listen`: where to serve the Prometheus page; `None` is off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[metrics] per_database` (default true): series per database on the
    /// page; false keeps only totals and a histogram of lag.
    pub metrics_per_database: bool,
}

/// Where backups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// An S3-compatible bucket. `Debug` of the settings redacts the secrets.
    S3(S3Settings),
    /// A local directory (absolute, or relative to the working directory if
    /// the config file's path was).
    Dir(PathBuf),
}

/// One database to back up, with every override resolved against the globals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// The database file, resolved against the config file's directory and
    /// lexically normalised (no `.` components, no doubled `/`).
    pub path: PathBuf,
    /// Where its objects live in storage, checked by [`validate_prefix`].
    pub prefix: String,
    pub sync_interval: Duration,
    pub snapshot_interval: Duration,
    /// WAL size in bytes at which walsync runs a PASSIVE checkpoint.
    pub checkpoint_threshold: u64,
    /// WAL size in bytes at which walsync runs a TRUNCATE checkpoint; never
    /// below `checkpoint_threshold`.
    pub truncate_threshold: u64,
    /// How far back every point stays restorable; `None` keeps everything.
    pub retention: Option<Duration>,
    /// The keys its objects are sealed and opened with; `None` writes them
    /// as they are (README "Encryption").
    pub encryption: Option<EncryptionConfig>,
}

/// `[encryption]`, or a database's or directory's own `encryption`: key
/// files, resolved against the config file's directory; not read yet
/// (`crate::keyfile::load` does, at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionConfig {
    /// Seals every object written, and opens those it sealed.
    pub key_file: PathBuf,
    /// Only open: keys of objects written before a rotation.
    pub old_key_files: Vec<PathBuf>,
}

impl EncryptionConfig {
    /// Every key file named, the sealing key's first.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.key_file.as_path())
            .chain(self.old_key_files.iter().map(PathBuf::as_path))
    }
}

/// A directory whose databases are discovered rather than listed, with every
/// override resolved against the globals. Each discovered file becomes a
/// [`DatabaseConfig`] through [`DirectoryConfig::database`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// The directory, resolved against the config file's directory and
    /// lexically normalised like [`DatabaseConfig::path`].
    pub dir: PathBuf,
    /// Glob on the file name ([`crate::file_pattern::glob_match`]), checked by
    /// [`crate::file_pattern::check_pattern`]. Default [`DEFAULT_PATTERN`].
    pub pattern: String,
    /// Whether subdirectories are searched too (symlinked ones never are).
    pub recursive: bool,
    /// `prefix` as written, e.g. `"tenants/{name}"`: `{name}` is the file name
    /// without its last extension, `{path}` the path below `dir` without it.
    /// Checked by [`crate::keys::prefix::check_template`].
    pub prefix_template: String,
    pub sync_interval: Duration,
    pub snapshot_interval: Duration,
    pub checkpoint_threshold: u64,
    /// Never below `checkpoint_threshold`.
    pub truncate_threshold: u64,
    pub retention: Option<Duration>,
    pub encryption: Option<EncryptionConfig>,
}

impl DirectoryConfig {
    /// The settings of one database discovered here, at `path` under
    /// `prefix` (both as returned by [`crate::discovery::scan`]).
    pub fn database(&self, path: PathBuf, prefix: String) -> DatabaseConfig {
        DatabaseConfig {
            path,
            prefix,
            sync_interval: self.sync_interval,
            snapshot_interval: self.snapshot_interval,
            checkpoint_threshold: self.checkpoint_threshold,
            truncate_threshold: self.truncate_threshold,
            retention: self.retention,
            encryption: self.encryption.clone(),
        }
    }
}

impl Config {
    /// Every key file the config names, each once, in the order written.
    pub fn key_files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = Vec::new();
        let all = self.databases.iter().map(|d| &d.encryption);
        for e in all
            .chain(self.directories.iter().map(|d| &d.encryption))
            .flatten()
        {
            for f in e.files() {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
        }
        files
    }
}

impl Config {
    /// Reads and checks the config file at `path`. Callers pass
    /// `&|k| std::env::var(k).ok()` as `env`.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        // Absolute, so that relative paths inside resolve against the file's
        // directory and not whatever directory later code runs in.
        let source = std::path::absolute(path).map_err(read_error)?;
        let text = std::fs::read_to_string(&source).map_err(read_error)?;
        Config::parse(&text, &source, env)
    }

    /// Checks and resolves the text of a config file. Pure: `source` is only
    /// used for messages and to resolve relative paths; `env` supplies the
    /// `AWS_*` variables.
    pub fn parse(
        text: &str,
        source: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let doc = Document { text, file: source };
        let raw: RawConfig = toml::from_str(text).map_err(|e| doc.toml_error(&e))?;
        doc.resolve(raw, env)
    }
}

/// Helpers shared by the tests of the modules of `config`.
#[cfg(test)]
mod testing {
    pub(super) use super::{Config, ConfigError, StorageConfig, MAX_PREFIX_LEN};
    pub(super) use crate::storage::s3::S3Settings;
    pub(super) use crate::testing::Rng;
    pub(super) use std::path::{Path, PathBuf};
    pub(super) use std::time::Duration;

    pub(super) const FILE: &str = "/etc/walsync/walsync.toml";

    pub(super) const STORAGE: &str = "[storage]\nbucket = \"b\"\n";

    pub(super) const DATABASE: &str = "[[databases]]\npath = \"/a.db\"\nprefix = \"a\"\n";

    pub(super) const DIRECTORY: &str = "[[directories]]\ndir = \"/t\"\nprefix = \"t/{name}\"\n";

    pub(super) fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    pub(super) const CREDENTIALS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AKIDENV"),
        ("AWS_SECRET_ACCESS_KEY", "env-secret-value"),
    ];

    pub(super) fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(FILE), &env_of(vars))
    }

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_with(text, &CREDENTIALS)
    }

    pub(super) fn s3(config: &Config) -> &S3Settings {
        match &config.storage {
            StorageConfig::S3(settings) => settings,
            other => panic!("expected S3 storage, got {other:?}"),
        }
    }

    /// The 1-based line holding the marker `# <-`.
    pub(super) fn marked_line(text: &str) -> usize {
        text.lines()
            .position(|l| l.contains("# <-"))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("test case has no `# <-` marker:\n{text}"))
    }

    pub(super) fn scratch_dir(name: &str) -> PathBuf {
        crate::testing::fresh_dir(&format!("config-{name}"))
    }

    pub(super) fn env(name: &str) -> Option<String> {
        match name {
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
            _ => None,
        }
    }

    /// A generator seeded from an input, for the other arguments of a call.
    pub(super) fn rng_for(s: &str) -> Rng {
        Rng(s.bytes().fold(0x9e37_79b9_7f4a_7c15, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn minimal_config_gets_the_defaults() {
        let config = parse(&format!("{STORAGE}{DATABASE}")).expect("valid");
        assert_eq!(config.workers, DEFAULT_WORKERS);
        assert_eq!(config.rescan_interval, DEFAULT_RESCAN_INTERVAL);
        assert_eq!(config.source, Path::new(FILE));
        assert_eq!(
            config.databases,
            vec![DatabaseConfig {
                path: PathBuf::from("/a.db"),
                prefix: "a".to_string(),
                sync_interval: Duration::from_secs(1),
                snapshot_interval: Duration::from_secs(3600),
                checkpoint_threshold: 4 << 20,
                truncate_threshold: 64 << 20,
                retention: None,
                encryption: None,
            }]
        );
        assert_eq!(
            s3(&config),
            &S3Settings {
                bucket: "b".to_string(),
                endpoint: None,
                region: "us-east-1".to_string(),
                path_style: false,
                access_key_id: "AKIDENV".to_string(),
                secret_access_key: "env-secret-value".to_string(),
                session_token: None,
            }
        );
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../walsync.toml.example");
        let config = Config::parse(text, Path::new("/etc/walsync.toml"), &env_of(&CREDENTIALS))
            .unwrap_or_else(|e| panic!("walsync.toml.example: {e}"));
        assert_eq!(config.workers, DEFAULT_WORKERS);
        let prefixes: Vec<&str> = config.databases.iter().map(|d| d.prefix.as_str()).collect();
        assert!(prefixes.contains(&"tenants/acme"));
        assert!(prefixes.contains(&"services/auth"));
        assert!(prefixes.contains(&"edge/node-1/cache"));
        let edge = config
            .databases
            .iter()
            .find(|d| d.prefix == "edge/node-1/cache")
            .unwrap();
        assert_eq!(edge.path, Path::new("/etc/data/cache.db"));
        assert_eq!(
            s3(&config).endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        let [shops] = &config.directories[..] else {
            panic!("one [[directories]] table in the example")
        };
        assert_eq!(shops.dir, Path::new("/var/lib/shop/stores"));
        assert_eq!(shops.prefix_template, "shops/{path}");
        assert!(shops.recursive);
        assert_eq!(shops.pattern, "*.sqlite3");
    }

    #[test]
    fn load_reads_the_file_and_resolves_against_its_directory() {
        let dir = scratch_dir("load");
        let file = dir.join("walsync.toml");
        std::fs::write(
            &file,
            format!("{STORAGE}[[databases]]\npath = \"app.db\"\nprefix = \"a\"\n"),
        )
        .unwrap();
        let config = Config::load(&file, &env_of(&CREDENTIALS)).expect("valid");
        assert_eq!(config.source, file);
        assert_eq!(config.databases[0].path, dir.join("app.db"));

        let err = Config::load(&dir.join("nope.toml"), &env_of(&CREDENTIALS)).expect_err("missing");
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("nope.toml"), "{err}");

        std::fs::write(&file, "workers = 1\nworkers = 3\n").unwrap();
        let err = Config::load(&file, &env_of(&CREDENTIALS)).expect_err("duplicate key");
        assert!(
            err.to_string()
                .starts_with(&format!("{}:2: `workers`", file.display())),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod fuzz {
    //! Every value of the config file, every `AWS_*` variable and every
    //! `--bucket`/`--endpoint`/`--region` flag is user input: the parsers
    //! must answer with an error for any of it, never panic.
    use super::*;
    use crate::config::testing::*;
    use crate::testing::fuzz_text;

    const CONFIG: &str = r#"sync_interval = "1s"
snapshot_interval = "1h"
checkpoint_threshold = "4MiB"
truncate_threshold = 67108864
workers = 2
retention = "7d"
idle_release_after = "1m"
idle_release_max_size = "64MiB"
rescan_interval = "10s"
[storage]
bucket = "my-backups"
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
path_style = true
access_key_id = "AKID"
secret_access_key = "secret"
[metrics]
listen = "127.0.0.1:9095"
[[databases]]
path = "/var/lib/app/tenants/acme.db"
prefix = "tenants/acme"
sync_interval = "500ms"
[[directories]]
dir = "/var/lib/shop/stores"
pattern = "*.sqlite3"
recursive = true
prefix = "shops/{path}"
snapshot_interval = "6h"
"#;

    /// `s` as a TOML basic string, so that any text reaches the value's parser.
    fn toml_quoted(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn config_files_never_panic() {
        // Whole files, damaged anywhere (syntax, keys, spans, lines).
        fuzz_text("config file", 0xc0f1_000a, 1500, &[CONFIG], |text| {
            Config::parse(text, Path::new("/etc/walsync.toml"), &env).is_ok()
        });
        // One value at a time replaced by any text, quoted, so that it reaches
        // the value's own parser.
        let values: Vec<&str> = CONFIG
            .lines()
            .filter_map(|line| line.split_once(" = ").map(|(_, v)| v.trim_matches('"')))
            .collect();
        fuzz_text("config values", 0xc0f1_000c, 1500, &values, |value| {
            let lines: Vec<&str> = CONFIG.lines().collect();
            let candidates: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains(" = "))
                .collect();
            let target = candidates[rng_for(value).below(candidates.len())];
            let text: String = lines
                .iter()
                .enumerate()
                .map(|(i, line)| match line.split_once(" = ") {
                    Some((key, _)) if i == target => format!("{key} = {}\n", toml_quoted(value)),
                    _ => format!("{line}\n"),
                })
                .collect();
            Config::parse(&text, Path::new("/etc/walsync.toml"), &env).is_ok()
        });
    }
}
