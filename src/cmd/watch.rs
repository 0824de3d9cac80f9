//! `walsync watch`: replicate every database of the config until stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;

use super::{check_storage, load_config, open_storage, CliError};
use crate::config;
use crate::daemon::{self, Catalog, ConfigCatalog, WatchOptions};
use crate::lease::claim::Leases;
use crate::metrics::{self, Registry};
use crate::storage::StorageError;

/// replicate every database in the config continuously (until SIGINT/SIGTERM; SIGHUP reloads the config)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "watch")]
pub struct WatchArgs {
    /// config file (default: ./walsync.toml, then /etc/walsync.toml)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
}

pub fn run(args: WatchArgs) -> Result<(), CliError> {
    let path = config::find_config(args.config.as_deref()).map_err(CliError::usage)?;
    let cfg = load_config(Some(&path))?;
    let keys = super::load_keys(&cfg)?;
    let storage = open_storage(&cfg.storage)?;
    super::prepare_spool()?;
    let metrics = match cfg.metrics_listen {
        Some(listen) => {
            let registry = Arc::new(Registry::with_per_database(
                crate::time::now_ms(),
                cfg.metrics_per_database,
            ));
            // Blocks the stop signals first, so the metrics thread inherits
            // the mask (the daemon takes them with sigwait).
            crate::signals::block()
                .map_err(|e| CliError::runtime(format!("cannot block signals: {e}")))?;
            let addr = metrics::serve(listen, Arc::clone(&registry))
                .map_err(|e| CliError::runtime(format!("[metrics] listen {listen}: {e}")))?;
            log::info!("metrics at http://{addr}/metrics");
            Some(registry)
        }
        None => None,
    };
    let mut opts = WatchOptions {
        workers: cfg.workers,
        rescan_interval: cfg.rescan_interval,
        shutdown_timeout: Duration::from_secs(60),
        metrics,
        idle_release_after: Some(cfg.idle_release_after),
        idle_release_max_bytes: cfg.idle_release_max_size,
        leases: Some(Leases::for_this_process(cfg.lease_ttl)),
        checksum_probe_root: None,
    };
    let mut catalog = ConfigCatalog::new(path, cfg, keys);
    // A wrong bucket, region, endpoint or key would make every database fail
    // forever: refuse to start. A server that does not answer yet (at boot,
    // or down for a while) is waited for, as during an outage.
    if let Some(db) = catalog.databases().first() {
        match check_storage(&*storage, &db.replica.prefix) {
            // Whether the server checks upload checksums is found out once
            // the daemon has started (README "Storage providers").
            Ok(()) => {
                opts.checksum_probe_root = Some(crate::keys::database_root(&db.replica.prefix))
            }
            Err(e @ StorageError::Transport { .. }) => {
                log::warn!("{e}; starting anyway, each database retries until it answers")
            }
            Err(e) => return Err(CliError::runtime(e)),
        }
    }
    daemon::run(storage, &mut catalog, opts).map_err(CliError::runtime)
}
