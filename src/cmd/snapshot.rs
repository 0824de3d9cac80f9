//! `walsync snapshot`: take a snapshot of one or every database now.

use std::path::PathBuf;

use argh::FromArgs;

use super::{check_storage, load_config, open_storage, replica_options, select, CliError};
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
    let storage = open_storage(&cfg.storage)?;
    let dbs = select(&cfg, args.prefix.as_deref())?;
    if let Some(db) = dbs.first() {
        check_storage(&*storage, &db.prefix).map_err(CliError::runtime)?;
    }
    let mut failed = 0;
    for db in dbs {
        let mut r = Replica::new(replica_options(&db));
        match r.sync(&*storage, true) {
            Ok(rep) => println!(
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
            Err(e) => {
                eprintln!("{}: {e}", db.prefix);
                failed += 1;
            }
        }
        r.close();
    }
    if failed > 0 {
        return Err(CliError::runtime(format!("{failed} snapshot(s) failed")));
    }
    Ok(())
}
