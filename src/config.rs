//! `walsync.toml`: reading, checking and resolving the configuration.
//!
//! This module turns the text of the config file plus the `AWS_*` environment
//! into a [`Config`] in which every value has been checked and every default
//! and per-database override resolved, so nothing downstream validates again.
//! It never talks to storage, never reads the process environment itself (the
//! caller passes `env`, so [`Config::parse`] is a pure function) and touches the
//! filesystem only in [`Config::load`] and [`find_config`].
//!
//! It upholds DESIGN.md "Configuration" (unknown keys are errors naming the
//! key and its line; secrets are never logged: no error message and no `Debug`
//! output contains a credential) and invariant 9 (bad input gets a clear
//! error): every [`ConfigError`] names the file, the key, the line and the fix.
//! Prefixes are checked here ([`validate_prefix`]) so that no prefix can
//! escape a directory (`..`) and no database's prefix is a parent of another's,
//! which would make listing one database return the other's objects. The same
//! rule covers `[[directories]]`: a directory's prefix template must not be
//! able to produce a prefix that equals, contains or sits inside a listed
//! database's prefix or another directory's, and no database may be both
//! listed and discovered (see [`crate::discovery`] for the discovery itself).

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::file_pattern;
use crate::keys::prefix::check_template;
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
/// Size of the upload/sync thread pool.
pub const DEFAULT_WORKERS: usize = 2;
/// Largest accepted `workers`.
pub const MAX_WORKERS: usize = 64;
/// How often every WAL is stat'ed in case file events were missed.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// A database with no commits for this long is released (its connections
/// closed) until it changes again.
pub const DEFAULT_IDLE_RELEASE_AFTER: Duration = Duration::from_secs(60);
/// Larger databases are never released: waking one reads the whole file.
pub const DEFAULT_IDLE_RELEASE_MAX_SIZE: u64 = 64 << 20;
/// File-name glob of a `[[directories]]` table without `pattern`.
pub const DEFAULT_PATTERN: &str = "*.db";
/// Region used when neither the config nor `AWS_REGION`/`AWS_DEFAULT_REGION` names one.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Config file looked up in the working directory when no flag names one.
pub const LOCAL_CONFIG: &str = "walsync.toml";
/// Config file looked up last.
pub const SYSTEM_CONFIG: &str = "/etc/walsync.toml";

const DURATION_FORM: &str =
    "write a quoted duration such as \"500ms\", \"1s\", \"10m\", \"1h30m\" or \"7d\"";
const SIZE_FORM: &str =
    "write a size such as \"4MiB\", \"64MB\" or a whole number of bytes such as 1048576";
const PREFIX_FORM: &str = "use '/'-separated names made of letters, digits, '.', '_' and '-', \
     e.g. \"tenants/acme\", \"services/auth\" or \"edge/node-1/cache\"";
const PATTERN_FORM: &str =
    "write a glob on the file name such as \"*.db\", \"tenant-*.sqlite3\" or \
     \"[a-m]*.db\" (`*` any run, `?` one character, `[abc]`, `[a-z]`, `[!a]` one of a set)";
const TEMPLATE_FORM: &str = "write a prefix with {name} (the file name without its extension) or \
     {path} (its path below `dir` without the extension), e.g. \"tenants/{name}\"; the rest uses \
     '/'-separated names of letters, digits, '.', '_' and '-'";
const CREDENTIALS_FIX: &str = "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus \
     AWS_SESSION_TOKEN for temporary credentials), or set access_key_id and secret_access_key \
     in [storage]";

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
        }
    }
}

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

/// S3 settings from command-line flags alone, for when there is no config
/// file (disaster recovery). A flag wins over the environment:
/// `--endpoint` over `AWS_ENDPOINT_URL_S3`, `--region` over `AWS_REGION`
/// then `AWS_DEFAULT_REGION` (else `us-east-1`). Path-style URLs default to
/// on when there is an endpoint. Credentials come from `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and, if set, `AWS_SESSION_TOKEN`.
pub fn s3_from_flags(
    bucket: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
    path_style: Option<bool>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<S3Settings, ConfigError> {
    let setting = |name: &str, problem: String, fix: &str| ConfigError::Setting {
        name: name.to_string(),
        problem,
        fix: fix.to_string(),
    };
    validate_bucket(bucket).map_err(|p| {
        setting(
            "--bucket",
            p,
            "pass the bucket name, e.g. --bucket my-backups",
        )
    })?;
    let endpoint = match endpoint {
        Some(url) => Some(validate_endpoint(url).map_err(|p| {
            setting(
                "--endpoint",
                p,
                "pass an http(s) URL, e.g. --endpoint http://127.0.0.1:9000",
            )
        })?),
        None => endpoint_from_env(env)?,
    };
    let region = match region {
        Some(region) => {
            validate_region(region)
                .map_err(|p| setting("--region", p, "pass e.g. --region us-east-1"))?;
            region.to_string()
        }
        None => region_from_env(env)?,
    };
    let credentials = credentials_from_env(env, |missing| {
        setting(
            missing.first().copied().unwrap_or("AWS_ACCESS_KEY_ID"),
            format!(
                "{} not set; with no config file, credentials come from the environment",
                missing.join(" and ")
            ),
            "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for \
             temporary credentials)",
        )
    })?;
    let use_path_style = path_style.unwrap_or(endpoint.is_some());
    if !use_path_style {
        if let Some(problem) = virtual_host_problem(bucket, endpoint.as_deref()) {
            let name = if path_style.is_some() {
                "--path-style"
            } else {
                "--bucket"
            };
            return Err(setting(name, problem, "use path-style URLs"));
        }
    }
    Ok(S3Settings {
        bucket: bucket.to_string(),
        path_style: use_path_style,
        endpoint,
        region,
        access_key_id: credentials.access_key_id,
        secret_access_key: credentials.secret_access_key,
        session_token: credentials.session_token,
    })
}

/// The config file to use: `flag` if given (it must exist), else
/// `./walsync.toml`, else `/etc/walsync.toml`.
pub fn find_config(flag: Option<&Path>) -> Result<PathBuf, ConfigError> {
    find_config_among(
        flag,
        &[PathBuf::from(LOCAL_CONFIG), PathBuf::from(SYSTEM_CONFIG)],
    )
}

fn find_config_among(flag: Option<&Path>, candidates: &[PathBuf]) -> Result<PathBuf, ConfigError> {
    let tried: Vec<PathBuf> = match flag {
        Some(path) => vec![path.to_path_buf()],
        None => candidates.to_vec(),
    };
    match tried.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(ConfigError::NotFound { tried }),
    }
}

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

// ---------------------------------------------------------------------------
// The file as written. Every value keeps its span so errors can name its line.
// No `Debug`: these hold secrets.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    retention: Option<Spanned<String>>,
    sync_interval: Option<Spanned<String>>,
    snapshot_interval: Option<Spanned<String>>,
    checkpoint_threshold: Option<Spanned<RawSize>>,
    truncate_threshold: Option<Spanned<RawSize>>,
    workers: Option<Spanned<i64>>,
    rescan_interval: Option<Spanned<String>>,
    idle_release_after: Option<Spanned<String>>,
    idle_release_max_size: Option<Spanned<RawSize>>,
    storage: Option<Spanned<RawStorage>>,
    databases: Option<Spanned<Vec<Spanned<RawDatabase>>>>,
    directories: Option<Spanned<Vec<Spanned<RawDirectory>>>>,
    metrics: Option<Spanned<RawMetrics>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    bucket: Option<Spanned<String>>,
    dir: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    path_style: Option<Spanned<bool>>,
    access_key_id: Option<Spanned<String>>,
    secret_access_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    path: Spanned<String>,
    prefix: Spanned<String>,
    retention: Option<Spanned<String>>,
    sync_interval: Option<Spanned<String>>,
    snapshot_interval: Option<Spanned<String>>,
    checkpoint_threshold: Option<Spanned<RawSize>>,
    truncate_threshold: Option<Spanned<RawSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    dir: Spanned<String>,
    pattern: Option<Spanned<String>>,
    recursive: Option<Spanned<bool>>,
    prefix: Spanned<String>,
    retention: Option<Spanned<String>>,
    sync_interval: Option<Spanned<String>>,
    snapshot_interval: Option<Spanned<String>>,
    checkpoint_threshold: Option<Spanned<RawSize>>,
    truncate_threshold: Option<Spanned<RawSize>>,
}

/// The per-database overrides as written, in a `[[databases]]` or a
/// `[[directories]]` table.
struct RawOverrides<'a> {
    retention: &'a Option<Spanned<String>>,
    sync_interval: &'a Option<Spanned<String>>,
    snapshot_interval: &'a Option<Spanned<String>>,
    checkpoint_threshold: &'a Option<Spanned<RawSize>>,
    truncate_threshold: &'a Option<Spanned<RawSize>>,
}

impl RawDatabase {
    fn overrides(&self) -> RawOverrides<'_> {
        RawOverrides {
            retention: &self.retention,
            sync_interval: &self.sync_interval,
            snapshot_interval: &self.snapshot_interval,
            checkpoint_threshold: &self.checkpoint_threshold,
            truncate_threshold: &self.truncate_threshold,
        }
    }
}

impl RawDirectory {
    fn overrides(&self) -> RawOverrides<'_> {
        RawOverrides {
            retention: &self.retention,
            sync_interval: &self.sync_interval,
            snapshot_interval: &self.snapshot_interval,
            checkpoint_threshold: &self.checkpoint_threshold,
            truncate_threshold: &self.truncate_threshold,
        }
    }
}

/// The global values the overrides fall back to.
struct Globals {
    retention: Option<Duration>,
    sync_interval: Duration,
    snapshot_interval: Duration,
    checkpoint_threshold: Sourced<u64>,
    truncate_threshold: Sourced<u64>,
}

/// The overrides of one table, resolved.
struct Resolved {
    retention: Option<Duration>,
    sync_interval: Duration,
    snapshot_interval: Duration,
    checkpoint_threshold: u64,
    truncate_threshold: u64,
}

/// A size as written: an integer, or a string for [`parse_size`].
enum RawSize {
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
const KNOWN_KEYS: [&str; 25] = [
    "idle_release_after",
    "idle_release_max_size",
    "metrics",
    "listen",
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
];

/// Where a resolved value came from, for messages comparing two values.
#[derive(Clone)]
struct Sourced<T> {
    value: T,
    key: String,
    span: Option<Range<usize>>,
}

/// The config text being resolved, for turning spans into lines in errors.
struct Document<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Document<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(
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
    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
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
    fn key_on_line(&self, line: usize) -> Option<String> {
        let text = self.text.lines().nth(line.checked_sub(1)?)?.trim();
        let key = if let Some(header) = text.strip_prefix('[') {
            header.trim_start_matches('[').split(']').next()?.trim()
        } else {
            text.split('=').next()?.trim()
        };
        let leaf = key.rsplit('.').next()?.trim();
        KNOWN_KEYS.contains(&leaf).then(|| key.to_string())
    }

    fn resolve(
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
        let globals = Globals {
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
        Ok(Config {
            storage,
            workers,
            rescan_interval,
            idle_release_after,
            idle_release_max_size,
            databases,
            directories,
            source: self.file.to_path_buf(),
            metrics_listen,
        })
    }

    /// At least one `[[databases]]` or `[[directories]]` table.
    fn check_something_to_back_up(
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

    fn duration(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => parse_duration(v.get_ref())
                .map_err(|problem| self.error(Some(v.span()), key, problem, DURATION_FORM)),
        }
    }

    fn size(
        &self,
        value: &Option<Spanned<RawSize>>,
        key: String,
        default: u64,
    ) -> Result<Sourced<u64>, ConfigError> {
        let Some(v) = value else {
            return Ok(Sourced {
                value: default,
                key,
                span: None,
            });
        };
        let bytes = match v.get_ref() {
            RawSize::Integer(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
            RawSize::Text(text) => parse_size(text),
        }
        .and_then(|bytes| match bytes {
            0 => Err("a threshold of zero bytes would checkpoint on every sync".to_string()),
            _ => Ok(bytes),
        })
        .map_err(|problem| self.error(Some(v.span()), &key, problem, SIZE_FORM))?;
        Ok(Sourced {
            value: bytes,
            key,
            span: Some(v.span()),
        })
    }

    /// A TRUNCATE threshold below the PASSIVE one would make the PASSIVE
    /// checkpoint unreachable, which is surely not what was meant.
    fn check_thresholds(
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

    fn storage(
        &self,
        raw: Option<Spanned<RawStorage>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<StorageConfig, ConfigError> {
        let Some(raw) = raw else {
            return Err(self.error(
                None,
                "storage",
                "there is no [storage] table",
                "add [storage] with bucket = \"...\" (S3) or dir = \"...\" (a local directory)",
            ));
        };
        let header = raw.span();
        let raw = raw.into_inner();
        let bucket = match (raw.bucket, raw.dir) {
            (Some(_), Some(dir)) => {
                return Err(self.error(
                    Some(dir.span()),
                    "storage.dir",
                    "both `bucket` and `dir` are set",
                    "keep exactly one: bucket for S3, dir for a local directory",
                ));
            }
            (None, None) => {
                return Err(self.error(
                    Some(header),
                    "storage.bucket",
                    "[storage] has neither `bucket` nor `dir`",
                    "add bucket = \"...\" (S3) or dir = \"...\" (a local directory)",
                ));
            }
            (None, Some(dir)) => {
                let s3_only = [
                    ("endpoint", raw.endpoint.map(|v| v.span())),
                    ("region", raw.region.map(|v| v.span())),
                    ("path_style", raw.path_style.map(|v| v.span())),
                    ("access_key_id", raw.access_key_id.map(|v| v.span())),
                    ("secret_access_key", raw.secret_access_key.map(|v| v.span())),
                ];
                if let Some((key, span)) = s3_only.into_iter().find_map(|(k, s)| Some((k, s?))) {
                    return Err(self.error(
                        Some(span),
                        &format!("storage.{key}"),
                        format!("`{key}` only applies to an S3 bucket, but [storage] sets `dir`"),
                        format!("remove `{key}`, or replace `dir` with `bucket`"),
                    ));
                }
                let path = self.local_path(&dir, "storage.dir")?;
                return Ok(StorageConfig::Dir(path));
            }
            (Some(bucket), None) => bucket,
        };
        validate_bucket(bucket.get_ref()).map_err(|problem| {
            self.error(
                Some(bucket.span()),
                "storage.bucket",
                problem,
                "write just the bucket name, e.g. bucket = \"my-backups\"",
            )
        })?;
        let endpoint = match endpoint_from_env(env)? {
            Some(url) => Some(url),
            None => match &raw.endpoint {
                Some(url) => Some(validate_endpoint(url.get_ref()).map_err(|problem| {
                    self.error(
                        Some(url.span()),
                        "storage.endpoint",
                        problem,
                        "write an http(s) URL such as \"http://127.0.0.1:9000\", or remove it for AWS",
                    )
                })?),
                None => None,
            },
        };
        let region = match &raw.region {
            Some(region) => {
                validate_region(region.get_ref()).map_err(|problem| {
                    self.error(
                        Some(region.span()),
                        "storage.region",
                        problem,
                        "write a region name such as \"us-east-1\"",
                    )
                })?;
                region.get_ref().clone()
            }
            None => region_from_env(env)?,
        };
        let credentials_given = (raw.access_key_id.is_some(), raw.secret_access_key.is_some());
        let credentials = match (raw.access_key_id, raw.secret_access_key) {
            (Some(id), Some(secret)) => {
                for (key, value) in [("access_key_id", &id), ("secret_access_key", &secret)] {
                    check_credential(value.get_ref()).map_err(|problem| {
                        self.error(
                            Some(value.span()),
                            &format!("storage.{key}"),
                            problem,
                            format!("copy the {key} again, without spaces or line breaks"),
                        )
                    })?;
                }
                Credentials {
                    access_key_id: id.into_inner(),
                    secret_access_key: secret.into_inner(),
                    // A token in the environment belongs to the environment's keys.
                    session_token: None,
                }
            }
            (Some(set), None) | (None, Some(set)) => {
                let present = if credentials_given.0 {
                    "access_key_id"
                } else {
                    "secret_access_key"
                };
                let absent = if credentials_given.0 {
                    "secret_access_key"
                } else {
                    "access_key_id"
                };
                return Err(self.error(
                    Some(set.span()),
                    &format!("storage.{absent}"),
                    format!("[storage] sets `{present}` but not `{absent}`"),
                    "set both access_key_id and secret_access_key in [storage], or neither to use \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                ));
            }
            (None, None) => credentials_from_env(env, |missing| {
                let key = if missing.first() != Some(&"AWS_SECRET_ACCESS_KEY") {
                    "storage.access_key_id"
                } else {
                    "storage.secret_access_key"
                };
                self.error(
                    Some(header.clone()),
                    key,
                    format!(
                        "no credentials for bucket {:?}: {} not set and [storage] has no access_key_id \
                         or secret_access_key",
                        bucket.get_ref(),
                        missing.join(" and ")
                    ),
                    CREDENTIALS_FIX,
                )
            })?,
        };
        let path_style = raw
            .path_style
            .as_ref()
            .map_or(endpoint.is_some(), |p| *p.get_ref());
        if !path_style {
            if let Some(problem) = virtual_host_problem(bucket.get_ref(), endpoint.as_deref()) {
                let (key, span) = match &raw.path_style {
                    Some(p) => ("storage.path_style", p.span()),
                    None => ("storage.bucket", bucket.span()),
                };
                return Err(self.error(
                    Some(span),
                    key,
                    problem,
                    "set path_style = true in [storage]",
                ));
            }
        }
        Ok(StorageConfig::S3(S3Settings {
            bucket: bucket.into_inner(),
            path_style,
            endpoint,
            region,
            access_key_id: credentials.access_key_id,
            secret_access_key: credentials.secret_access_key,
            session_token: credentials.session_token,
        }))
    }

    fn databases(
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

    /// The `[[directories]]` tables, checked on their own and against the
    /// already checked `[[databases]]` (`databases[i]` resolves `raw_databases[i]`).
    fn directories(
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

    /// The optional per-database settings of one table, falling back to
    /// the globals. `key` turns a leaf into the table's dotted key.
    fn overrides(
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
        })
    }

    /// A local path from the file: checked, resolved against the config
    /// file's directory, lexically normalised.
    fn local_path(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let text = value.get_ref();
        let problem = if text.is_empty() {
            Some("the path is empty".to_string())
        } else if text.contains('\0') {
            Some("the path contains a NUL character".to_string())
        } else if text.starts_with('~') {
            Some(format!("{text:?} starts with '~', which is not expanded"))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(self.error(
                Some(value.span()),
                key,
                problem,
                "write an absolute path, or one relative to the config file's directory",
            ));
        }
        let path = Path::new(text);
        let base = self.file.parent().unwrap_or(Path::new(""));
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        Ok(joined.components().collect())
    }
}

struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// Reads a variable, treating an empty value as unset.
fn env_var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN`; `missing` builds the error from the names of the
/// required variables that are not set.
fn credentials_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    missing: impl FnOnce(&[&str]) -> ConfigError,
) -> Result<Credentials, ConfigError> {
    let id = env_var(env, "AWS_ACCESS_KEY_ID");
    let secret = env_var(env, "AWS_SECRET_ACCESS_KEY");
    let (Some(id), Some(secret)) = (&id, &secret) else {
        let names: Vec<&str> = [
            ("AWS_ACCESS_KEY_ID", &id),
            ("AWS_SECRET_ACCESS_KEY", &secret),
        ]
        .into_iter()
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| name)
        .collect();
        return Err(missing(&names));
    };
    for (name, value) in [("AWS_ACCESS_KEY_ID", id), ("AWS_SECRET_ACCESS_KEY", secret)] {
        check_credential(value).map_err(|problem| ConfigError::Setting {
            name: name.to_string(),
            problem,
            fix: format!("set {name} again, without spaces or line breaks"),
        })?;
    }
    Ok(Credentials {
        access_key_id: id.clone(),
        secret_access_key: secret.clone(),
        session_token: env_var(env, "AWS_SESSION_TOKEN"),
    })
}

/// `AWS_ENDPOINT_URL_S3`, checked, if set.
fn endpoint_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
    env_var(env, "AWS_ENDPOINT_URL_S3")
        .map(|url| {
            validate_endpoint(&url).map_err(|problem| ConfigError::Setting {
                name: "AWS_ENDPOINT_URL_S3".to_string(),
                problem,
                fix: "set it to an http(s) URL such as http://127.0.0.1:9000, or unset it"
                    .to_string(),
            })
        })
        .transpose()
}

/// `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
fn region_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    for name in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Some(region) = env_var(env, name) {
            validate_region(&region).map_err(|problem| ConfigError::Setting {
                name: name.to_string(),
                problem,
                fix: "set it to a region name such as us-east-1, or unset it".to_string(),
            })?;
            return Ok(region);
        }
    }
    Ok(DEFAULT_REGION.to_string())
}

/// Bucket names: no URL, no path, only characters S3-compatible servers
/// accept (`[A-Za-z0-9._-]`, lenient enough for legacy names).
fn validate_bucket(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the bucket name is empty".to_string());
    }
    if name.contains("://") {
        return Err(format!(
            "{name:?} is a URL; the bucket is just its name (the server goes in `endpoint`)"
        ));
    }
    if name.contains('/') {
        return Err(format!(
            "{name:?} contains '/'; a path inside the bucket belongs in each database's prefix"
        ));
    }
    if name.len() > 255 {
        return Err(format!(
            "the bucket name is {} bytes long; the limit is 255",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {bad:?}, which bucket names cannot contain"
        ));
    }
    Ok(())
}

/// An endpoint must be `http://` or `https://` with a host, and no
/// credentials, query or fragment. Returns it without a trailing `/`. The
/// value is never echoed (it could hold `user:password@`).
fn validate_endpoint(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| "the endpoint must start with http:// or https://".to_string())?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the endpoint contains whitespace".to_string());
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "the endpoint contains credentials (user@); they are not allowed in the URL"
                .to_string(),
        );
    }
    if rest.contains('?') || rest.contains('#') {
        return Err("the endpoint has a query or fragment ('?' or '#')".to_string());
    }
    let (host, port) = split_authority(authority)
        .ok_or_else(|| "the endpoint's host is not closed by ']'".to_string())?;
    if host.is_empty() || host == "[]" {
        return Err("the endpoint has no host".to_string());
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("the endpoint's port is not a number from 1 to 65535".to_string());
        }
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// `host:port` → (`host`, `Some("port")`); an IPv6 host keeps its brackets.
/// `None` if a `[` is not closed or is followed by something but a port.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let (host, rest) = authority.split_at(end);
        match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        }
    } else {
        Some(match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        })
    }
}

/// Why virtual-host style URLs (`bucket.host/key`) cannot work with this
/// bucket and endpoint, if they cannot: the bucket becomes part of a host
/// name, so it must be a valid one, and an IP address cannot take a
/// subdomain. (`S3Storage::new` would refuse these later, without a line.)
fn virtual_host_problem(bucket: &str, endpoint: Option<&str>) -> Option<String> {
    if !bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    {
        return Some(format!(
            "virtual-host style URLs put the bucket in the host name, and {bucket:?} is not a \
             valid host name"
        ));
    }
    let authority = endpoint?
        .split_once("://")?
        .1
        .split('/')
        .next()
        .unwrap_or_default();
    let (host, _) = split_authority(authority)?;
    (host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()).then(|| {
        "virtual-host style URLs put the bucket in the host name, and the endpoint's host is \
         an IP address"
            .to_string()
    })
}

fn validate_region(region: &str) -> Result<(), String> {
    if region.is_empty() {
        return Err("the region is empty".to_string());
    }
    if region.len() > 64
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("{region:?} is not a region name"));
    }
    Ok(())
}

/// Never echoes the value.
fn check_credential(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the value is empty".to_string());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the value contains whitespace or control characters".to_string());
    }
    Ok(())
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
        | "idle_release_after" => {
            "a quoted duration such as \"500ms\", \"1s\", \"10m\", \"1h30m\" or \"7d\""
        }
        "checkpoint_threshold" | "truncate_threshold" | "idle_release_max_size" => {
            "a size such as \"4MiB\", \"64MB\" or a whole number of bytes"
        }
        "workers" => "a whole number from 1 to 64, e.g. `workers = 2`",
        "listen" => "a quoted address and port such as \"127.0.0.1:9095\"",
        "metrics" => "a [metrics] table with `listen`",
        "path_style" | "recursive" => "true or false, without quotes",
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

/// `4194304` → `4 MiB`; sizes that are not whole MiB/KiB stay in bytes.
fn show_size(bytes: u64) -> String {
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

    const FILE: &str = "/etc/walsync/walsync.toml";
    const STORAGE: &str = "[storage]\nbucket = \"b\"\n";
    const DATABASE: &str = "[[databases]]\npath = \"/a.db\"\nprefix = \"a\"\n";
    const DIRECTORY: &str = "[[directories]]\ndir = \"/t\"\nprefix = \"t/{name}\"\n";

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const CREDENTIALS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AKIDENV"),
        ("AWS_SECRET_ACCESS_KEY", "env-secret-value"),
    ];

    fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(FILE), &env_of(vars))
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_with(text, &CREDENTIALS)
    }

    fn s3(config: &Config) -> &S3Settings {
        match &config.storage {
            StorageConfig::S3(settings) => settings,
            other => panic!("expected S3 storage, got {other:?}"),
        }
    }

    /// The 1-based line holding the marker `# <-`.
    fn marked_line(text: &str) -> usize {
        text.lines()
            .position(|l| l.contains("# <-"))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("test case has no `# <-` marker:\n{text}"))
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
            }]
        );
        let config = parse(&format!("databases = []\n{STORAGE}{DIRECTORY}")).expect("valid");
        assert_eq!(config.directories.len(), 1);
        let config = parse(&format!("directories = []\n{STORAGE}{DATABASE}")).expect("valid");
        assert_eq!(config.directories, vec![]);
    }

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

    #[test]
    fn missing_credentials_name_the_environment_variables() {
        let text = format!("workers = 2\n{STORAGE}{DATABASE}");
        let err = parse_with(&text, &[]).expect_err("no credentials");
        let message = err.to_string();
        assert_eq!(err.line(), Some(2), "the [storage] line: {message}");
        assert!(
            message.contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set"),
            "{message}"
        );
        assert!(message.contains("storage.access_key_id"), "{message}");

        let err = parse_with(
            &text,
            &[("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "")],
        )
        .expect_err("empty secret counts as unset");
        let message = err.to_string();
        assert!(
            message.contains("AWS_SECRET_ACCESS_KEY not set"),
            "{message}"
        );
        assert!(!message.contains("AWS_ACCESS_KEY_ID not set"), "{message}");
        assert_eq!(err.key(), Some("storage.secret_access_key"));
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let text = format!("{STORAGE}{DATABASE}");
        for (name, value) in [
            ("AWS_ENDPOINT_URL_S3", "minio:9000"),
            ("AWS_REGION", "us east"),
            ("AWS_DEFAULT_REGION", "a/b"),
            ("AWS_SECRET_ACCESS_KEY", "with space"),
        ] {
            let mut vars = CREDENTIALS.to_vec();
            vars.retain(|(k, _)| *k != name);
            vars.push((name, value));
            let err = parse_with(&text, &vars).expect_err(name);
            assert_eq!(err.key(), Some(name), "{err}");
            assert!(err.to_string().starts_with(&format!("{name}: ")), "{err}");
            assert!(err.to_string().contains("; fix: "), "{err}");
        }
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
    fn sizes_may_be_integers_or_strings() {
        for (value, bytes) in [
            ("1048576", 1 << 20),
            ("\"1048576\"", 1 << 20),
            ("\"4 MiB\"", 4 << 20),
            ("\"1GB\"", 1_000_000_000),
        ] {
            let text = format!("checkpoint_threshold = {value}\ntruncate_threshold = \"1TiB\"\n{STORAGE}{DATABASE}");
            let config = parse(&text).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(config.databases[0].checkpoint_threshold, bytes, "{value}");
        }
    }

    #[test]
    fn endpoint_env_overrides_the_file_and_turns_on_path_style() {
        let text = format!(
            "[storage]\nbucket = \"b\"\nendpoint = \"https://s3.example.com/\"\n{DATABASE}"
        );
        let config = parse(&text).expect("valid");
        assert_eq!(
            s3(&config).endpoint.as_deref(),
            Some("https://s3.example.com")
        );
        assert!(s3(&config).path_style);

        let mut vars = CREDENTIALS.to_vec();
        vars.push(("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000"));
        let config = parse_with(&text, &vars).expect("valid");
        assert_eq!(
            s3(&config).endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );

        let config = parse_with(&format!("{STORAGE}{DATABASE}"), &vars).expect("valid");
        assert!(
            s3(&config).path_style,
            "an endpoint from the environment also means path style"
        );

        let text = format!("[storage]\nbucket = \"b\"\nendpoint = \"http://minio.internal:9000\"\npath_style = false\n{DATABASE}");
        let config = parse(&text).expect("valid");
        assert!(!s3(&config).path_style);
    }

    #[test]
    fn region_comes_from_the_file_then_aws_region_then_aws_default_region() {
        let with_region = format!("[storage]\nbucket = \"b\"\nregion = \"eu-west-3\"\n{DATABASE}");
        let without = format!("{STORAGE}{DATABASE}");
        let mut vars = CREDENTIALS.to_vec();
        vars.push(("AWS_DEFAULT_REGION", "ap-south-1"));
        assert_eq!(
            s3(&parse_with(&without, &vars).unwrap()).region,
            "ap-south-1"
        );
        vars.push(("AWS_REGION", "us-west-2"));
        assert_eq!(
            s3(&parse_with(&without, &vars).unwrap()).region,
            "us-west-2"
        );
        assert_eq!(
            s3(&parse_with(&with_region, &vars).unwrap()).region,
            "eu-west-3"
        );
        vars.push(("AWS_REGION", ""));
        vars.retain(|(k, v)| *k != "AWS_REGION" || v.is_empty());
        assert_eq!(
            s3(&parse_with(&without, &vars).unwrap()).region,
            "ap-south-1",
            "empty AWS_REGION is unset"
        );
    }

    #[test]
    fn session_token_goes_with_environment_credentials_only() {
        let mut vars = CREDENTIALS.to_vec();
        vars.push(("AWS_SESSION_TOKEN", "env-token"));
        let config = parse_with(&format!("{STORAGE}{DATABASE}"), &vars).unwrap();
        assert_eq!(s3(&config).session_token.as_deref(), Some("env-token"));

        let text = format!(
            "[storage]\nbucket = \"b\"\naccess_key_id = \"AKIDFILE\"\nsecret_access_key = \"file-secret\"\n{DATABASE}"
        );
        let config = parse_with(&text, &vars).unwrap();
        let settings = s3(&config);
        assert_eq!(settings.access_key_id, "AKIDFILE");
        assert_eq!(settings.secret_access_key, "file-secret");
        assert_eq!(settings.session_token, None);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = "[storage]\ndir = \"backup\"\n\
                    [[databases]]\npath = \"./data//a.db\"\nprefix = \"a\"\n\
                    [[databases]]\npath = \"/var/lib/b.db\"\nprefix = \"b\"\n";
        let config = parse_with(text, &[]).expect("a directory needs no credentials");
        assert_eq!(
            config.storage,
            StorageConfig::Dir(PathBuf::from("/etc/walsync/backup"))
        );
        assert_eq!(
            config.databases[0].path,
            Path::new("/etc/walsync/data/a.db")
        );
        assert_eq!(config.databases[1].path, Path::new("/var/lib/b.db"));
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
    fn example_file_parses() {
        let text = include_str!("../walsync.toml.example");
        let config = Config::parse(text, Path::new("/etc/walsync.toml"), &env_of(&CREDENTIALS))
            .unwrap_or_else(|e| panic!("walsync.toml.example: {e}"));
        assert_eq!(config.workers, 2);
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
    fn resolved_s3_settings_are_accepted_by_the_s3_backend() {
        let mut vars = CREDENTIALS.to_vec();
        vars.push(("AWS_SESSION_TOKEN", "token"));
        for text in [
            include_str!("../walsync.toml.example").to_string(),
            format!("{STORAGE}{DATABASE}"),
            format!("[storage]\nbucket = \"b\"\nendpoint = \"http://[::1]:9000/\"\n{DATABASE}"),
        ] {
            let config = parse_with(&text, &vars).expect("valid");
            let settings = s3(&config).clone();
            if let Err(e) = crate::storage::s3::S3Storage::new(settings) {
                panic!("S3Storage refused {:?}: {e}", s3(&config));
            }
        }
    }

    #[test]
    fn example_file_documents_every_key() {
        let text = include_str!("../walsync.toml.example");
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

    #[test]
    fn flags_build_s3_settings() {
        let settings = s3_from_flags(
            "b",
            Some("http://127.0.0.1:9000/"),
            None,
            None,
            &env_of(&CREDENTIALS),
        )
        .unwrap();
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(settings.path_style);
        assert_eq!(settings.region, "us-east-1");

        let mut vars = CREDENTIALS.to_vec();
        vars.extend([
            ("AWS_ENDPOINT_URL_S3", "http://env:9000"),
            ("AWS_REGION", "eu-north-1"),
            ("AWS_SESSION_TOKEN", "tok"),
        ]);
        let settings = s3_from_flags("b", None, None, Some(false), &env_of(&vars)).unwrap();
        assert_eq!(settings.endpoint.as_deref(), Some("http://env:9000"));
        assert!(!settings.path_style);
        assert_eq!(settings.region, "eu-north-1");
        assert_eq!(settings.session_token.as_deref(), Some("tok"));

        let settings =
            s3_from_flags("b", Some("https://flag"), Some("r1"), None, &env_of(&vars)).unwrap();
        assert_eq!(
            settings.endpoint.as_deref(),
            Some("https://flag"),
            "the flag wins over the environment"
        );
        assert_eq!(settings.region, "r1");

        let aws = s3_from_flags("b", None, None, None, &env_of(&CREDENTIALS)).unwrap();
        assert_eq!(aws.endpoint, None);
        assert!(!aws.path_style);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let env = env_of(&CREDENTIALS);
        let cases: [(Result<S3Settings, ConfigError>, &str); 7] = [
            (s3_from_flags("", None, None, None, &env), "--bucket"),
            (s3_from_flags("s3://b", None, None, None, &env), "--bucket"),
            (
                s3_from_flags("b", Some("localhost:9000"), None, None, &env),
                "--endpoint",
            ),
            (s3_from_flags("b", None, Some(""), None, &env), "--region"),
            (
                s3_from_flags("b", None, None, None, &env_of(&[])),
                "AWS_ACCESS_KEY_ID",
            ),
            (
                s3_from_flags("b", Some("http://10.0.0.1"), None, Some(false), &env),
                "--path-style",
            ),
            (s3_from_flags("B_b", None, None, None, &env), "--bucket"),
        ];
        for (result, name) in cases {
            let err = result.expect_err(name);
            assert_eq!(err.key(), Some(name), "{err}");
            assert!(err.to_string().starts_with(name), "{err}");
        }
        let err = s3_from_flags("b", None, None, None, &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("walsync-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    #[test]
    fn find_config_tries_the_flag_then_the_candidates_in_order() {
        let dir = scratch_dir("find");
        let local = dir.join("walsync.toml");
        let system = dir.join("etc-walsync.toml");
        let candidates = [local.clone(), system.clone()];

        let err = find_config_among(None, &candidates).expect_err("nothing there");
        let message = err.to_string();
        assert!(
            message.contains(&local.display().to_string())
                && message.contains(&system.display().to_string()),
            "{message}"
        );

        std::fs::write(&system, "").unwrap();
        assert_eq!(find_config_among(None, &candidates).unwrap(), system);
        std::fs::write(&local, "").unwrap();
        assert_eq!(find_config_among(None, &candidates).unwrap(), local);

        let flag = dir.join("missing.toml");
        let err =
            find_config_among(Some(&flag), &candidates).expect_err("the flag is not a fallback");
        assert!(err.to_string().contains("missing.toml"), "{err}");
        assert_eq!(
            find_config_among(Some(&system), &candidates).unwrap(),
            system
        );
        let _ = std::fs::remove_dir_all(&dir);
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
    use crate::testing::{fuzz_text, text_input, Rng};

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

    fn env(name: &str) -> Option<String> {
        match name {
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
            _ => None,
        }
    }

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

    #[test]
    fn names_prefixes_and_endpoints_never_panic() {
        let buckets = ["my-backups", "b", "a.b_c-d"];
        fuzz_text("bucket check", 0xc0f1_0004, 3000, &buckets, |s| {
            validate_bucket(s).is_ok() && virtual_host_problem(s, None).is_none()
        });
        let endpoints = [
            "http://127.0.0.1:9000",
            "https://s3.eu-west-1.amazonaws.com/",
            "http://[::1]:9000/",
            "https://minio.internal",
        ];
        fuzz_text("endpoint check", 0xc0f1_0005, 3000, &endpoints, |s| {
            let ok = validate_endpoint(s).is_ok();
            let _ = virtual_host_problem("my-backups", Some(s));
            ok
        });
        let regions = ["us-east-1", "eu-west-3", "auto"];
        fuzz_text("region check", 0xc0f1_0006, 3000, &regions, |s| {
            validate_region(s).is_ok() && check_credential(s).is_ok()
        });
        fuzz_text(
            "flags to S3 settings",
            0xc0f1_0008,
            3000,
            &endpoints,
            |endpoint| {
                let mut rng = rng_for(endpoint);
                let bucket = text_input(&mut rng, &buckets);
                let region = text_input(&mut rng, &regions);
                s3_from_flags(&bucket, Some(endpoint), Some(&region), None, &env).is_ok()
            },
        );
        // The same from the environment.
        let variables = ["AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_ACCESS_KEY_ID"];
        fuzz_text("AWS_* variables", 0xc0f1_0009, 3000, &endpoints, |value| {
            let fuzzed = variables[rng_for(value).below(variables.len())];
            let env = |name: &str| {
                if name == fuzzed {
                    Some(value.to_string())
                } else {
                    env(name)
                }
            };
            s3_from_flags("b", None, None, None, &env).is_ok()
        });
    }

    /// A generator seeded from an input, for the other arguments of a call.
    fn rng_for(s: &str) -> Rng {
        Rng(s.bytes().fold(0x9e37_79b9_7f4a_7c15, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) | 1)
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
