//! `walsync prune`: apply the retention policy now.

use std::path::PathBuf;

use argh::FromArgs;

use super::{human_bytes, load_config, open_storage, select, CliError};
use crate::config;
use crate::retention::prune;

/// delete backups older than the retention window (see `retention` in the config)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "prune")]
pub struct PruneArgs {
    /// config file (default: ./walsync.toml, then /etc/walsync.toml)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// only the database with this prefix
    #[argh(option)]
    pub prefix: Option<String>,
    /// retention window to apply instead of the config's, e.g. 72h
    #[argh(option)]
    pub retention: Option<String>,
    /// show what would be deleted, delete nothing
    #[argh(switch)]
    pub dry_run: bool,
}

pub fn run(args: PruneArgs) -> Result<(), CliError> {
    let cfg = load_config(args.config.as_deref())?;
    let storage = open_storage(&cfg.storage)?;
    let flag = match &args.retention {
        Some(r) => Some(
            config::parse_duration(r).map_err(|e| CliError::usage(format!("--retention: {e}")))?,
        ),
        None => None,
    };
    let now = crate::time::now_ms();
    let mut failed = 0;
    for db in select(&cfg, args.prefix.as_deref())? {
        let Some(retention) = flag.or(db.retention) else {
            outln!("{}: no retention set, keeping everything", db.prefix);
            continue;
        };
        match prune(&*storage, &db.prefix, retention, now, args.dry_run) {
            Ok(r) => {
                for key in &r.deleted {
                    outln!(
                        "{} {key}",
                        if args.dry_run {
                            "would delete"
                        } else {
                            "deleted"
                        }
                    );
                }
                outln!(
                    "{}: {} {} objects ({}), {} kept",
                    db.prefix,
                    if args.dry_run {
                        "would delete"
                    } else {
                        "deleted"
                    },
                    r.deleted.len(),
                    human_bytes(r.bytes),
                    r.kept
                );
            }
            Err(e) => {
                errln!("{}: {e}", db.prefix);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(CliError::runtime(format!(
            "{failed} database(s) could not be pruned"
        )));
    }
    Ok(())
}
