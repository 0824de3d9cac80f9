//! `walsync snapshot`: take a snapshot of one or every database now.

use std::path::PathBuf;
use std::sync::Arc;

use argh::FromArgs;

use super::{check_storage, load_config, open_storage, replica_options, select, CliError};
use crate::lease::claim::Leases;
use crate::replica::Replica;

/// ship what is committed and upload a full snapshot now
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "snapshot")]
pub struct SnapshotArgs {
    /// config file (default: ./walsync.toml, then /etc/walsync.toml)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// only the database with this prefix
    #[argh(option)]
    pub prefix: Option<String>,
}

pub fn run(args: SnapshotArgs) -> Result<(), CliError> {
    let cfg = load_config(args.config.as_deref())?;
    let keys = super::load_keys(&cfg)?;
    let storage = open_storage(&cfg.storage)?;
    let dbs = select(&cfg, args.prefix.as_deref())?;
    super::prepare_spool()?;
    if let Some(db) = dbs.first() {
        check_storage(&*storage, &db.prefix).map_err(CliError::runtime)?;
    }
    // One database per job, `workers` at a time (as `watch` would run
    // them): a snapshot mostly waits on the disk and the storage.
    let pool = super::thread_pool(cfg.workers.max(1))?;
    // As `watch`: nothing goes into a prefix another walsync holds, and
    // the lease is given up at the end (`Replica::stop`).
    let leases = Leases::for_this_process(cfg.lease_ttl);
    let failed = super::restore_all::par_map(&pool, dbs.len(), |i| {
        let db = &dbs[i];
        let mut r = Replica::new(replica_options(db, &keys));
        r.set_leases(Arc::clone(&leases));
        // Left with a mark, so that a `watch` started later goes
        // on with this generation (README "Restarts").
        let result = r
            .sync(&*storage, true)
            .and_then(|rep| r.stop(&*storage).map(|()| rep));
        match &result {
            Ok(rep) => outln!(
                "{}: snapshot at txid {}{} ({} commits shipped first)",
                db.prefix,
                r.last_txid(),
                if rep.new_generation {
                    ", new generation"
                } else {
                    ""
                },
                rep.commits
            ),
            Err(e) => errln!("{}: {e}", db.prefix),
        }
        r.close();
        result.is_err()
    })
    .into_iter()
    .filter(|&failed| failed)
    .count();
    if failed > 0 {
        return Err(CliError::runtime(format!("{failed} snapshot(s) failed")));
    }
    Ok(())
}
