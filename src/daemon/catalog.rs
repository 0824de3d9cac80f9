//! The catalog of databases: what the daemon learns about which databases
//! to replicate (`Catalog`), and each one's options (`WatchedDatabase`).

use std::path::PathBuf;
use std::time::Duration;

use crate::replica::ReplicaOptions;

/// One database to watch.
#[derive(Debug, Clone)]
pub struct WatchedDatabase {
    pub replica: ReplicaOptions,
    pub sync_interval: Duration,
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
