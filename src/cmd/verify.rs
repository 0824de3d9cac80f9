//! `walsync verify`: prove each backup restores, without keeping the files.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Instant;

use argh::FromArgs;

use super::restore::target_of;
use super::restore_all::{jobs, run_all, select, Outcome};
use super::{check_prefix, CliError};
use crate::restore::{restore_listed, How};
args_with_target! {

/// download and replay each backup into a temporary file, check every CRC32 and integrity_check, delete it
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
pub struct VerifyArgs {
    bucket: "bucket to verify, without a config file: every database found under --prefix",
    /// only databases under this prefix
    #[argh(option)]
    pub prefix: Option<String>,
    /// verify the point at this time (RFC 3339) instead of the newest
    #[argh(option)]
    pub timestamp: Option<String>,
    /// verifications to run at once (default: 16)
    #[argh(option)]
    pub jobs: Option<usize>,
    /// where the temporary files go (default: the system temp directory)
    #[argh(option)]
    pub temp_dir: Option<PathBuf>,
    /// print the summary as JSON
    #[argh(switch)]
    pub json: bool,
}
}

pub fn run(args: VerifyArgs) -> Result<(), CliError> {
    let target = target_of(args.timestamp.as_deref(), None)?;
    if let Some(p) = &args.prefix {
        check_prefix(p.trim_end_matches('/'))?;
    }
    let jobs = jobs(args.jobs)?;
    let (storage, cfg) = args.target().resolve()?;
    let started = Instant::now();
    let pool = super::thread_pool(jobs)?;
    let fleet = select(&*storage, cfg.as_ref(), args.prefix.as_deref(), &pool)?;
    // The copies are deleted at once: fsyncing them would only wait on the disk.
    let how = How {
        force: false,
        durable: false,
        limits: crate::fleet::fetch_limits(jobs),
    };
    // A private directory (mode 0700, a name nobody can guess or plant
    // first), so no name can clash with anything, no other user can read
    // the restored copies, and everything in it can go at the end.
    let base = args.temp_dir.unwrap_or_else(std::env::temp_dir);
    let scratch = base.join(format!("walsync-verify-{}", crate::spool::token()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&scratch)
        .map_err(|e| CliError::runtime(format!("{}: {e}", scratch.display())))?;
    let index: std::collections::HashMap<&str, usize> = fleet
        .prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), i))
        .collect();
    let result = run_all(&fleet.prefixes, &pool, args.json, started, |prefix| {
        // Numbered, not named after the prefix: no two can collide.
        let out = scratch.join(format!("{}.db", index[prefix]));
        let listing = crate::fleet::slice(&fleet.listing, prefix);
        let result = restore_listed(&*storage, prefix, listing, &out, target, how)
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&out);
        Outcome {
            prefix: prefix.to_string(),
            output: None,
            result,
        }
    });
    let _ = std::fs::remove_dir_all(&scratch);
    // Whether the server checks upload checksums: where it does not, this
    // command is what finds an upload damaged on the way.
    super::report_upload_check(
        &*storage,
        fleet
            .prefixes
            .first()
            .map(String::as_str)
            .or(args.prefix.as_deref().map(|p| p.trim_end_matches('/'))),
    );
    result
}
