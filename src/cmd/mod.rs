//! The command line: one module per subcommand. Each parses nothing by hand
//! (argh does), turns flags and the config into library calls, and maps
//! failures to exit codes: 2 for usage and configuration errors, 1 for
//! runtime failures (storage, I/O, corrupt backups).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use argh::FromArgs;

use crate::config::{self, Config, DatabaseConfig, StorageConfig};
use crate::storage::dir::DirStorage;
use crate::storage::s3::S3Storage;
use crate::storage::{Storage, StorageError};

/// walsync: continuous backup of SQLite databases (WAL mode) to S3-compatible
/// storage, and exact restore to the newest transaction or a point in time.
#[derive(FromArgs, Debug)]
pub struct Cli {
    /// print the version, target, git commit and SQLite version, and exit
    #[argh(switch)]
    pub version: bool,
    // Optional only so that `walsync --version` needs no command; `run`
    // refuses a missing one as argh would.
    #[argh(subcommand)]
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Watch(watch::WatchArgs),
    Snapshot(snapshot::SnapshotArgs),
    Restore(restore::RestoreArgs),
    RestoreAll(restore_all::RestoreAllArgs),
    List(list::ListArgs),
    History(history::HistoryArgs),
    Prune(prune::PruneArgs),
    Verify(verify::VerifyArgs),
    Version(version::VersionArgs),
    Keygen(keygen::KeygenArgs),
}

impl Cli {
    pub fn run(self) -> Result<(), CliError> {
        let command = match (self.version, self.command) {
            (true, _) => Command::Version(version::VersionArgs {}),
            (false, Some(command)) => command,
            (false, None) => {
                let names: Vec<&str> = <Command as argh::SubCommands>::COMMANDS
                    .iter()
                    .map(|c| c.name)
                    .collect();
                return Err(CliError::usage(format_args!(
                    "a command is needed, one of: {} (walsync COMMAND --help for its flags)",
                    names.join(", ")
                )));
            }
        };
        match command {
            Command::Watch(a) => watch::run(a),
            Command::Snapshot(a) => snapshot::run(a),
            Command::Restore(a) => restore::run(a),
            Command::RestoreAll(a) => restore_all::run(a),
            Command::List(a) => list::run(a),
            Command::History(a) => history::run(a),
            Command::Prune(a) => prune::run(a),
            Command::Verify(a) => verify::run(a),
            Command::Version(a) => version::run(a),
            Command::Keygen(a) => keygen::run(a),
        }
    }
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl std::fmt::Display) -> CliError {
        CliError {
            code: 2,
            message: message.to_string(),
        }
    }

    pub fn runtime(message: impl std::fmt::Display) -> CliError {
        CliError {
            code: 1,
            message: message.to_string(),
        }
    }
}

pub(crate) fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Loads the config named by `--config`, or the default locations.
pub fn load_config(flag: Option<&Path>) -> Result<Config, CliError> {
    let path = config::find_config(flag).map_err(CliError::usage)?;
    Config::load(&path, &env).map_err(CliError::usage)
}

pub fn open_storage(cfg: &StorageConfig) -> Result<Arc<dyn Storage>, CliError> {
    Ok(match cfg {
        StorageConfig::S3(s) => Arc::new(S3Storage::new(s.clone()).map_err(CliError::usage)?),
        StorageConfig::Dir(d) => Arc::new(DirStorage::new(d).map_err(CliError::runtime)?),
    })
}

/// Declares a subcommand's arguments with the flags that say where the
/// backups are (`--config`, or `--bucket` with `--endpoint`/`--region`, or
/// `--dir`) after its own, and `target()`, which gives them as a `Target`.
/// argh cannot flatten one struct into another; this keeps the four
/// commands that read backups from declaring the same flags four times.
/// `bucket:` is the command's help line for `--bucket`.
macro_rules! args_with_target {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            bucket: $bucket_doc:tt,
            $($fields:tt)*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            // Passed as tokens: a `ty` fragment would hide `bool` from argh.
            $($fields)*
            /// config file (default: ./walsync.toml, then /etc/walsync.toml)
            #[argh(option, short = 'c')]
            pub config: Option<std::path::PathBuf>,
            #[doc = $bucket_doc]
            #[argh(option)]
            pub bucket: Option<String>,
            /// S3 endpoint URL with --bucket (default: AWS, or AWS_ENDPOINT_URL_S3)
            #[argh(option)]
            pub endpoint: Option<String>,
            /// region with --bucket (default: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1)
            #[argh(option)]
            pub region: Option<String>,
            /// local backup directory, without a config file
            #[argh(option)]
            pub dir: Option<std::path::PathBuf>,
        }

        impl $name {
            /// Where the backups are, as the flags say.
            pub fn target(&self) -> $crate::cmd::Target {
                $crate::cmd::Target {
                    config: self.config.clone(),
                    bucket: self.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                    region: self.region.clone(),
                    dir: self.dir.clone(),
                }
            }
        }
    };
}

/// `println!` for the commands: through `output`, so that a closed or
/// failing standard output never panics (which aborts the release build).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cmd::output::stdout_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics (see `output`).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cmd::output::stderr_line(format_args!($($arg)*))
    };
}

/// `eprint!` that never panics (see `output`).
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::cmd::output::stderr(format_args!($($arg)*))
    };
}

// After the macros: the modules use them.
pub mod history;
pub mod keygen;
pub mod list;
pub mod output;
pub mod prune;
pub mod restore;
pub mod restore_all;
pub mod snapshot;
pub mod verify;
pub mod version;
pub mod watch;

/// Asks the storage once for what it holds under `prefix` (a listing the
/// command makes anyway), so that a problem with the storage as a whole
/// (credentials, bucket, region, endpoint, a server that cannot be reached)
/// ends the command with one line instead of one per database. Other
/// failures are left to the command, which names the database.
pub(crate) fn check_storage(storage: &dyn Storage, prefix: &str) -> Result<(), StorageError> {
    match storage.list(&crate::keys::database_root(prefix)) {
        Err(e) if e.is_storage_wide() => Err(e),
        _ => Ok(()),
    }
}

/// Says on stderr (so that stdout stays one line per database, or JSON)
/// what the storage checks of the bytes walsync uploads
/// (`Storage::upload_check`: on S3 a probe object under the root of
/// `prefix`, or of the bucket when there is none, written and deleted once
/// per process; nothing on a directory). For `list` and `verify`.
pub(crate) fn report_upload_check(storage: &dyn Storage, prefix: Option<&str>) {
    let root = prefix.map(crate::keys::database_root).unwrap_or_default();
    errln!("uploads: {}", storage.upload_check(&root));
}

/// Where to find the backups: a config file, or (for disaster recovery on a
/// machine that has none) the bucket or directory given on the command line.
#[derive(Debug, Default)]
pub struct Target {
    pub config: Option<PathBuf>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub dir: Option<PathBuf>,
}

impl Target {
    /// The storage, and the config when one was used.
    pub fn resolve(&self) -> Result<(Arc<dyn Storage>, Option<Config>), CliError> {
        match (&self.bucket, &self.dir) {
            (Some(_), Some(_)) => Err(CliError::usage("give either --bucket or --dir, not both")),
            (Some(bucket), None) => {
                if self.config.is_some() {
                    return Err(CliError::usage(
                        "give either --config or --bucket, not both",
                    ));
                }
                let s = config::s3_from_flags(
                    bucket,
                    self.endpoint.as_deref(),
                    self.region.as_deref(),
                    None,
                    &env,
                )
                .map_err(CliError::usage)?;
                Ok((open_storage(&StorageConfig::S3(s))?, None))
            }
            (None, Some(dir)) => {
                if self.config.is_some() || self.endpoint.is_some() || self.region.is_some() {
                    return Err(CliError::usage(
                        "--dir takes no --config, --endpoint or --region",
                    ));
                }
                Ok((open_storage(&StorageConfig::Dir(dir.clone()))?, None))
            }
            (None, None) => {
                if self.endpoint.is_some() || self.region.is_some() {
                    return Err(CliError::usage("--endpoint and --region go with --bucket"));
                }
                let cfg = load_config(self.config.as_deref())?;
                Ok((open_storage(&cfg.storage)?, Some(cfg)))
            }
        }
    }
}

/// A pool of `threads` threads for a command that works on many databases.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, CliError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| CliError::runtime(format!("cannot start {threads} threads: {e}")))
}

/// What a replica of a configured database is made with (shared with the
/// daemon's catalog).
pub use crate::daemon::replica_options;

/// Checks walsync's private spool directory (`crate::spool`) before any
/// work, so an unsafe `TMPDIR` is one clear error at start rather than a
/// failed snapshot per database, and removes the spool files that walsync
/// processes killed earlier left there.
pub fn prepare_spool() -> Result<(), CliError> {
    let removed = crate::spool::remove_stale(&std::env::temp_dir()).map_err(|e| {
        CliError::runtime(format!(
            "the spool directory under TMPDIR cannot be used: {e}"
        ))
    })?;
    if removed > 0 {
        log::info!("removed {removed} spool file(s) left by walsync processes that were killed");
    }
    Ok(())
}

/// Every database of the config, listed and found in its `[[directories]]`:
/// the daemon's catalog, taken once.
pub use crate::daemon::config_databases as all_databases;

/// The databases of the config, or the one whose prefix is `prefix`.
pub fn select(cfg: &Config, prefix: Option<&str>) -> Result<Vec<DatabaseConfig>, CliError> {
    let all = crate::daemon::config_databases(cfg);
    match prefix {
        None => Ok(all),
        Some(p) => {
            let found: Vec<_> = all.into_iter().filter(|d| d.prefix == p).collect();
            if found.is_empty() {
                Err(CliError::usage(format!(
                    "no database with prefix {p:?} in {}",
                    cfg.source.display()
                )))
            } else {
                Ok(found)
            }
        }
    }
}

pub fn check_prefix(prefix: &str) -> Result<(), CliError> {
    config::validate_prefix(prefix)
        .map_err(|e| CliError::usage(format!("--prefix {prefix:?}: {e}")))
}

/// `12.3 MiB`
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A JSON string literal (for `--json` output, written by hand: one
/// function does not justify a JSON crate in a small static binary).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
