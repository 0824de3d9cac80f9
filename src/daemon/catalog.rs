//! The catalog of databases: those a config file lists, and those found
//! now in its `[[directories]]`. `walsync watch` asks it again whenever a
//! discovery directory changes and re-reads it on SIGHUP (`ConfigCatalog`);
//! the other commands take it once (`config_databases`). Both go through
//! the same scan, so every command sees the same set of databases.
//!
//! The daemon only knows the `Catalog` trait: which databases to replicate
//! now, where new ones may appear, and how to reload.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, DatabaseConfig};
use crate::discovery;
use crate::keyfile::{KeyFileError, LoadedKeys};
use crate::replica::ReplicaOptions;

/// One database to watch.
#[derive(Debug, Clone)]
pub struct WatchedDatabase {
    pub replica: ReplicaOptions,
    pub sync_interval: Duration,
}

impl WatchedDatabase {
    pub fn from_config(db: &DatabaseConfig, keys: &LoadedKeys) -> WatchedDatabase {
        WatchedDatabase {
            replica: replica_options(db, keys),
            sync_interval: db.sync_interval,
        }
    }
}

/// What a replica of a configured database is made with; `keys` holds
/// every key file of its config (`load_keys`).
pub fn replica_options(db: &DatabaseConfig, keys: &LoadedKeys) -> ReplicaOptions {
    let enc = db.encryption.as_ref();
    ReplicaOptions {
        path: db.path.clone(),
        prefix: db.prefix.clone(),
        snapshot_interval: db.snapshot_interval,
        checkpoint_threshold: db.checkpoint_threshold,
        truncate_threshold: db.truncate_threshold,
        max_segment_bytes: 16 << 20,
        spool_dir: std::env::temp_dir(),
        retention: db.retention,
        keys: keys.keyring(
            enc.map(|e| e.key_file.as_path()),
            enc.into_iter()
                .flat_map(|e| e.old_key_files.iter().map(PathBuf::as_path)),
        ),
    }
}

/// Reads every key file `cfg` names (a problem with one is a configuration
/// error naming the file).
pub fn load_keys(cfg: &Config) -> Result<LoadedKeys, KeyFileError> {
    LoadedKeys::load(cfg.key_files())
}

/// Where the daemon learns which databases to replicate.
pub trait Catalog {
    /// Every database that should be replicated now (configured and
    /// discovered). Called at start, after a discovery directory changed,
    /// on the periodic rescan when there are discovery directories, and
    /// after a reload.
    fn databases(&mut self) -> Vec<WatchedDatabase>;
    /// Directories in which new databases may appear, and whether their
    /// subdirectories count.
    fn discovery_dirs(&self) -> Vec<(PathBuf, bool)>;
    /// Re-reads the configuration (SIGHUP). On `Err` the current one stays.
    fn reload(&mut self) -> Result<(), String>;
}

/// Every database of `cfg`: those listed, and those found now in its
/// `[[directories]]`. What a directory scan could not use is logged,
/// unless it is in `logged` already; returns the databases and every such
/// problem of this scan.
fn scan(cfg: &Config, logged: &BTreeSet<String>) -> (Vec<DatabaseConfig>, BTreeSet<String>) {
    let mut all = cfg.databases.clone();
    let mut problems = BTreeSet::new();
    for dir in &cfg.directories {
        let (found, trouble) = discovery::scan(dir);
        for p in trouble {
            let line = format!("{}: {p}", dir.dir.display());
            if !logged.contains(&line) {
                log::warn!("{line}");
            }
            problems.insert(line);
        }
        all.extend(
            found
                .into_iter()
                .map(|(path, prefix)| dir.database(path, prefix)),
        );
    }
    (all, problems)
}

/// Every database of the config: those listed, and those found now in its
/// `[[directories]]` (what a directory scan could not use is logged).
pub fn config_databases(cfg: &Config) -> Vec<DatabaseConfig> {
    scan(cfg, &BTreeSet::new()).0
}

/// The databases of a config file, re-read on SIGHUP.
pub struct ConfigCatalog {
    path: PathBuf,
    config: Config,
    /// Its key files, read.
    keys: LoadedKeys,
    /// What the last directory scans could not use, so each problem is
    /// logged once, not on every rescan.
    problems: BTreeSet<String>,
}

impl ConfigCatalog {
    /// The catalog of `config`, read from `path`.
    pub fn new(path: PathBuf, config: Config, keys: LoadedKeys) -> ConfigCatalog {
        ConfigCatalog {
            path,
            config,
            keys,
            problems: BTreeSet::new(),
        }
    }
}

impl Catalog for ConfigCatalog {
    fn databases(&mut self) -> Vec<WatchedDatabase> {
        let (all, problems) = scan(&self.config, &self.problems);
        self.problems = problems;
        all.iter()
            .map(|db| WatchedDatabase::from_config(db, &self.keys))
            .collect()
    }

    fn discovery_dirs(&self) -> Vec<(PathBuf, bool)> {
        self.config
            .directories
            .iter()
            .map(|d| (d.dir.clone(), d.recursive))
            .collect()
    }

    fn reload(&mut self) -> Result<(), String> {
        let env = |key: &str| std::env::var(key).ok();
        let new = Config::load(&self.path, &env).map_err(|e| e.to_string())?;
        let keys = load_keys(&new).map_err(|e| e.to_string())?;
        if new.storage != self.config.storage {
            log::warn!(
                "SIGHUP: [storage] changed; that takes effect at the next start, the rest now"
            );
        }
        if new.metrics_listen != self.config.metrics_listen {
            log::warn!(
                "SIGHUP: [metrics] changed; that takes effect at the next start, the rest now"
            );
        }
        if new.workers != self.config.workers {
            log::warn!(
                "SIGHUP: workers changed; that takes effect at the next start, the rest now"
            );
        }
        self.config = new;
        self.keys = keys;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config listing one database and discovering `*.db` in two
    /// directories, one of which does not exist.
    fn setup() -> (PathBuf, Config) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("walsync-catalog-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("tenants")).unwrap();
        for file in ["a.db", "b.db", "notes.txt"] {
            std::fs::write(dir.join("tenants").join(file), b"x").unwrap();
        }
        let path = dir.join("walsync.toml");
        std::fs::write(
            &path,
            "[storage]\ndir = \"backup\"\n\
             [[databases]]\npath = \"app.db\"\nprefix = \"app\"\n\
             [[directories]]\ndir = \"tenants\"\npattern = \"*.db\"\nprefix = \"tenants/{name}\"\n\
             [[directories]]\ndir = \"later\"\nprefix = \"later/{name}\"\n",
        )
        .unwrap();
        let config = Config::load(&path, &|_: &str| None).unwrap();
        (path, config)
    }

    #[test]
    fn watch_and_the_other_commands_see_the_same_databases() {
        let (path, config) = setup();
        let once: Vec<(PathBuf, String)> = config_databases(&config)
            .into_iter()
            .map(|d| (d.path, d.prefix))
            .collect();
        let root = path.parent().unwrap();
        assert_eq!(
            once,
            vec![
                (root.join("app.db"), "app".to_string()),
                (root.join("tenants/a.db"), "tenants/a".to_string()),
                (root.join("tenants/b.db"), "tenants/b".to_string()),
            ]
        );
        let mut catalog = ConfigCatalog::new(path.clone(), config, LoadedKeys::default());
        let watched: Vec<(PathBuf, String)> = catalog
            .databases()
            .into_iter()
            .map(|d| (d.replica.path, d.replica.prefix))
            .collect();
        assert_eq!(watched, once);
        assert_eq!(
            catalog.discovery_dirs(),
            vec![(root.join("tenants"), false), (root.join("later"), false)]
        );
        // The missing directory is a problem remembered, so that a rescan
        // does not log it again.
        assert_eq!(catalog.problems.len(), 1);
        assert!(catalog.problems.iter().all(|p| p.contains("later")));
        std::fs::remove_dir_all(root).unwrap();
    }
}
