//! `walsync restore`: rebuild one database from its backup.

use std::path::PathBuf;

use argh::FromArgs;

use super::{check_prefix, human_bytes, CliError};
use crate::plan;
use crate::restore::{remove_leftover_temps, restore, RestoreError};
use crate::time::{format_rfc3339, parse_rfc3339};
args_with_target! {

/// restore one database (to the newest transaction, or to --timestamp / --txid)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restore")]
pub struct RestoreArgs {
    bucket: "bucket to restore from, without a config file (credentials from AWS_* variables)",
    /// prefix of the database in the bucket, e.g. services/auth
    #[argh(option)]
    pub prefix: String,
    /// file to write; must not exist unless --force
    #[argh(option, short = 'o')]
    pub output: PathBuf,
    /// restore every commit made at or before this time (RFC 3339, e.g. 2026-11-25T20:43:16Z)
    #[argh(option)]
    pub timestamp: Option<String>,
    /// restore up to and including this transaction id
    #[argh(option)]
    pub txid: Option<u64>,
    /// replace the output file if it exists
    #[argh(switch)]
    pub force: bool,
}
}

pub fn target_of(timestamp: Option<&str>, txid: Option<u64>) -> Result<plan::Target, CliError> {
    match (timestamp, txid) {
        (Some(_), Some(_)) => Err(CliError::usage(
            "give either --timestamp or --txid, not both",
        )),
        (Some(t), None) => {
            Ok(plan::Target::Time(parse_rfc3339(t).map_err(|e| {
                CliError::usage(format!("--timestamp: {e}"))
            })?))
        }
        (None, Some(0)) => Err(CliError::usage("--txid: transaction ids start at 1")),
        (None, Some(n)) => Ok(plan::Target::Txid(n)),
        (None, None) => Ok(plan::Target::Latest),
    }
}

pub fn run(args: RestoreArgs) -> Result<(), CliError> {
    check_prefix(&args.prefix)?;
    let target = target_of(args.timestamp.as_deref(), args.txid)?;
    let (storage, cfg) = args.target().resolve()?;
    let keys = args.target().keys(cfg.as_ref())?;
    if let Some(name) = args.output.file_name().and_then(|n| n.to_str()) {
        let dir = args
            .output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        remove_leftover_temps(dir, Some(name));
    }
    match restore(
        &*storage,
        &args.prefix,
        &args.output,
        target,
        args.force,
        &keys,
    ) {
        Ok(r) => {
            outln!(
                "restored {} to {}: txid {} ({}), generation {:016x}, {} pages, {}, {} objects ({} downloaded) in {:.2}s",
                args.prefix,
                args.output.display(),
                r.txid,
                format_rfc3339(r.time_ms),
                r.generation,
                r.pages,
                human_bytes(r.bytes),
                r.objects,
                human_bytes(r.downloaded_bytes),
                r.seconds
            );
            Ok(())
        }
        Err(e @ (RestoreError::OutputExists(_) | RestoreError::BadOutput { .. })) => {
            Err(CliError::usage(e))
        }
        Err(e) => Err(CliError::runtime(e)),
    }
}
