//! `walsync watch`: replicate every database of the config until stopped.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::{load_config, open_storage, replica_options, CliError};
use crate::daemon::{self, WatchOptions, WatchedDatabase};

/// replicate every database in the config continuously (until SIGINT/SIGTERM)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "watch")]
pub struct WatchArgs {
    /// config file (default: ./walsync.toml, then /etc/walsync.toml)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
}

pub fn run(args: WatchArgs) -> Result<(), CliError> {
    let cfg = load_config(args.config.as_deref())?;
    let storage = open_storage(&cfg.storage)?;
    let databases = cfg
        .databases
        .iter()
        .map(|d| WatchedDatabase {
            replica: replica_options(d),
            sync_interval: d.sync_interval,
        })
        .collect();
    daemon::run(
        storage,
        databases,
        WatchOptions {
            workers: cfg.workers,
            rescan_interval: cfg.rescan_interval,
            shutdown_timeout: Duration::from_secs(60),
        },
    )
    .map_err(CliError::runtime)
}
