//! `walsync list`: what the bucket holds for each database.

use std::path::PathBuf;

use argh::FromArgs;

use super::{check_prefix, human_bytes, select, CliError, Target};
use crate::keys::{self, ObjectKind};
use crate::plan;
use crate::storage::Storage;
use crate::time::format_rfc3339;

/// list the backups: generations, snapshots, newest restorable txid and time
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    /// config file (default: ./walsync.toml, then /etc/walsync.toml)
    #[argh(option, short = 'c')]
    pub config: Option<PathBuf>,
    /// only this prefix (required with --bucket or --dir)
    #[argh(option)]
    pub prefix: Option<String>,
    /// bucket to list, without a config file
    #[argh(option)]
    pub bucket: Option<String>,
    /// S3 endpoint URL with --bucket
    #[argh(option)]
    pub endpoint: Option<String>,
    /// region with --bucket
    #[argh(option)]
    pub region: Option<String>,
    /// local backup directory, without a config file
    #[argh(option)]
    pub dir: Option<PathBuf>,
}

pub fn run(args: ListArgs) -> Result<(), CliError> {
    if let Some(p) = &args.prefix {
        check_prefix(p)?;
    }
    let (storage, cfg) = Target {
        config: args.config,
        bucket: args.bucket,
        endpoint: args.endpoint,
        region: args.region,
        dir: args.dir,
    }
    .resolve()?;
    let prefixes: Vec<(String, Option<PathBuf>)> = match &cfg {
        Some(cfg) => select(cfg, args.prefix.as_deref())?
            .into_iter()
            .map(|d| (d.prefix.clone(), Some(d.path.clone())))
            .collect(),
        None => match args.prefix {
            Some(p) => vec![(p, None)],
            None => {
                return Err(CliError::usage(
                    "--prefix is required with --bucket or --dir",
                ))
            }
        },
    };
    let mut failed = 0;
    for (prefix, path) in prefixes {
        if let Err(e) = list_one(&*storage, &prefix, path.as_deref()) {
            eprintln!("{prefix}: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(CliError::runtime(format!(
            "{failed} database(s) could not be listed"
        )));
    }
    Ok(())
}

fn list_one(
    storage: &dyn Storage,
    prefix: &str,
    path: Option<&std::path::Path>,
) -> Result<(), String> {
    let listing = storage
        .list(&keys::database_root(prefix))
        .map_err(|e| e.to_string())?;
    let objects = keys::parse_listing(prefix, &listing).map_err(|e| e.to_string())?;
    let total: u64 = objects.iter().map(|o| o.size).sum();
    let gens = plan::generations(&objects);
    match path {
        Some(p) => println!("{prefix} ({})", p.display()),
        None => println!("{prefix}"),
    }
    if gens.is_empty() {
        println!("  no backup yet");
        return Ok(());
    }
    println!(
        "  {} generations, {} objects, {}",
        gens.len(),
        objects.len(),
        human_bytes(total)
    );
    for (g, gen) in &gens {
        let bytes: u64 = gen
            .snapshots
            .iter()
            .chain(gen.segments.iter())
            .map(|o| o.size)
            .sum();
        let newest_snapshot = gen.snapshots.last().map(|s| match s.kind {
            ObjectKind::Snapshot { txid, time_ms } => {
                format!("txid {txid} at {}", format_rfc3339(time_ms))
            }
            _ => String::new(),
        });
        let last_time = gen
            .segments
            .iter()
            .filter_map(|s| match s.kind {
                ObjectKind::Segment { last_time_ms, .. } => Some(last_time_ms),
                _ => None,
            })
            .chain(gen.snapshots.iter().filter_map(|s| match s.kind {
                ObjectKind::Snapshot { time_ms, .. } => Some(time_ms),
                _ => None,
            }))
            .max();
        println!(
            "  generation {g:016x}: {} snapshots (newest {}), {} segments, newest txid {}{}, {}",
            gen.snapshots.len(),
            newest_snapshot.unwrap_or_else(|| "none".into()),
            gen.segments.len(),
            gen.newest_txid()
                .map_or("none".to_string(), |t| t.to_string()),
            last_time.map_or(String::new(), |t| format!(" at {}", format_rfc3339(t))),
            human_bytes(bytes)
        );
    }
    Ok(())
}
