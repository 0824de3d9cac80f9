//! `walsync restore-all`: restore every database, for cron jobs that prove
//! the backups work and for rebuilding a lost machine.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use argh::FromArgs;
use rayon::prelude::*;

use super::restore::target_of;
use super::{check_prefix, check_storage, human_bytes, json_string, CliError};
use crate::keys;
use crate::restore::{output_path_for, remove_leftover_temps, restore, RestoreReport};
use crate::storage::Storage;
use crate::time::format_rfc3339;
args_with_target! {

/// restore every database to <output-dir>/<prefix>.db (exit 1 if any fails)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "restore-all")]
pub struct RestoreAllArgs {
    bucket: "bucket to restore from, without a config file: every database found under --prefix",
    /// directory to restore into; each database goes to <output-dir>/<prefix>.db
    #[argh(option)]
    pub output_dir: PathBuf,
    /// with a config: only databases under this prefix; without: where to look for databases (default: everywhere)
    #[argh(option)]
    pub prefix: Option<String>,
    /// restores to run at once (default: the config's workers, else 2)
    #[argh(option)]
    pub jobs: Option<usize>,
    /// restore every commit read at or before this time (RFC 3339), the same moment for all databases
    #[argh(option)]
    pub timestamp: Option<String>,
    /// restore up to and including this transaction id (of each database)
    #[argh(option)]
    pub txid: Option<u64>,
    /// replace output files that exist
    #[argh(switch)]
    pub force: bool,
    /// print the summary as JSON
    #[argh(switch)]
    pub json: bool,
}
}

pub struct Outcome {
    pub prefix: String,
    /// Where the database was written (`None` for verify, or when no
    /// output path could be made).
    pub output: Option<PathBuf>,
    pub result: Result<RestoreReport, String>,
}

/// Does `prefix` lie under `parent` by whole `/`-separated components?
fn under(prefix: &str, parent: &str) -> bool {
    let parent = parent.trim_end_matches('/');
    parent.is_empty() || prefix == parent || prefix.starts_with(&format!("{parent}/"))
}

pub fn run(args: RestoreAllArgs) -> Result<(), CliError> {
    let target = target_of(args.timestamp.as_deref(), args.txid)?;
    if let Some(p) = &args.prefix {
        check_prefix(p.trim_end_matches('/'))?;
    }
    if args.jobs == Some(0) {
        return Err(CliError::usage("--jobs must be at least 1"));
    }
    let (storage, cfg) = args.target().resolve()?;
    std::fs::create_dir_all(&args.output_dir)
        .map_err(|e| CliError::runtime(format!("{}: {e}", args.output_dir.display())))?;

    let started = Instant::now();
    let prefixes = select_prefixes(&*storage, cfg.as_ref(), args.prefix.as_deref())?;
    let jobs = args.jobs.or(cfg.as_ref().map(|c| c.workers)).unwrap_or(2);
    let output_dir = args.output_dir.clone();
    let force = args.force;
    let cleaned = std::sync::Mutex::new(std::collections::HashSet::new());
    run_all(&prefixes, jobs, args.json, started, |prefix| {
        restore_one(&*storage, &output_dir, prefix, target, force, &cleaned)
    })
}

/// The databases to work on: those of the config (under `parent` if
/// given), or, with no config, those found by listing the bucket under
/// `parent`.
pub fn select_prefixes(
    storage: &dyn Storage,
    cfg: Option<&crate::config::Config>,
    parent: Option<&str>,
) -> Result<Vec<String>, CliError> {
    let parent = parent.unwrap_or_default();
    let prefixes: Vec<String> = match cfg {
        Some(cfg) => {
            // Listed databases, those found on disk now, and those backed up
            // under a directory's prefix whose file is gone (the machine may
            // be the one that was lost).
            let mut set: std::collections::BTreeSet<String> = super::all_databases(cfg)
                .into_iter()
                .map(|d| d.prefix)
                .collect();
            for dir in &cfg.directories {
                let fixed =
                    crate::discovery::check_template(&dir.prefix_template).unwrap_or_default();
                let listing = storage.list(fixed).map_err(CliError::runtime)?;
                set.extend(keys::discover_prefixes(&listing).into_iter().filter(|p| {
                    p.starts_with(fixed)
                        && crate::discovery::template_matches(&dir.prefix_template, p)
                }));
            }
            set.into_iter().filter(|p| under(p, parent)).collect()
        }
        None => {
            let list_from = if parent.is_empty() {
                String::new()
            } else {
                format!("{}/", parent.trim_end_matches('/'))
            };
            let listing = storage.list(&list_from).map_err(CliError::runtime)?;
            keys::discover_prefixes(&listing)
        }
    };
    if prefixes.is_empty() {
        return Err(CliError::runtime(format!(
            "no databases found{} in {}",
            if parent.is_empty() {
                String::new()
            } else {
                format!(" under {parent:?}")
            },
            storage.location()
        )));
    }
    if cfg.is_some() {
        // Wrong credentials, bucket or endpoint: one line, not one per
        // database. (Without a config the listing above already asked.)
        check_storage(storage, &prefixes[0]).map_err(CliError::runtime)?;
    }
    Ok(prefixes)
}

/// Runs `one` for every prefix on a pool of `jobs` threads, prints a line
/// per database as it finishes (or JSON at the end) and a total; an error
/// (exit 1) if any failed.
pub fn run_all(
    prefixes: &[String],
    jobs: usize,
    json: bool,
    started: Instant,
    one: impl Fn(&str) -> Outcome + Sync,
) -> Result<(), CliError> {
    let pool = super::thread_pool(jobs)?;
    // A progress line on a terminal only: cron logs get the summary lines.
    let progress = std::io::stderr().is_terminal();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let outcomes: Vec<Outcome> = pool.install(|| {
        prefixes
            .par_iter()
            .map(|prefix| {
                let o = one(prefix);
                if !json {
                    outln!("{}", line(&o));
                }
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if progress {
                    err!(
                        "\r[{n}/{}] {:.0}%",
                        prefixes.len(),
                        100.0 * n as f64 / prefixes.len() as f64
                    );
                    if n == prefixes.len() {
                        errln!("");
                    }
                }
                o
            })
            .collect()
    });
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    let seconds = started.elapsed().as_secs_f64();
    if json {
        outln!("{}", to_json(&outcomes, seconds));
    } else {
        let bytes: u64 = outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .map(|r| r.bytes)
            .sum();
        outln!(
            "{} ok, {failed} failed, {} in {seconds:.2}s",
            outcomes.len() - failed,
            human_bytes(bytes)
        );
    }
    if failed > 0 {
        return Err(CliError::runtime(format!(
            "{failed} of {} databases failed",
            outcomes.len()
        )));
    }
    Ok(())
}

fn restore_one(
    storage: &dyn Storage,
    dir: &Path,
    prefix: &str,
    target: crate::plan::Target,
    force: bool,
    cleaned: &std::sync::Mutex<std::collections::HashSet<PathBuf>>,
) -> Outcome {
    let output = match output_path_for(dir, prefix) {
        Ok(p) => p,
        Err(e) => {
            return Outcome {
                prefix: prefix.to_string(),
                output: None,
                result: Err(e.to_string()),
            }
        }
    };
    // What killed restores left, once per output folder (not once per
    // database: one folder may hold thousands).
    if let Some(parent) = output.parent() {
        let first = cleaned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(parent.to_path_buf());
        if first {
            remove_leftover_temps(parent, None);
        }
    }
    let result = restore(storage, prefix, &output, target, force).map_err(|e| e.to_string());
    Outcome {
        prefix: prefix.to_string(),
        output: Some(output),
        result,
    }
}

fn line(o: &Outcome) -> String {
    match &o.result {
        Ok(r) => format!(
            "ok      {}  -> {}  txid {} ({}), {} pages, {}, {:.2}s",
            o.prefix,
            o.output
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            r.txid,
            format_rfc3339(r.time_ms),
            r.pages,
            human_bytes(r.bytes),
            r.seconds
        ),
        Err(e) => format!("FAILED  {}  {e}", o.prefix),
    }
}

fn to_json(outcomes: &[Outcome], seconds: f64) -> String {
    let items: Vec<String> = outcomes
        .iter()
        .map(|o| {
            let output = o
                .output
                .as_deref()
                .map_or("null".to_string(), |p| json_string(&p.display().to_string()));
            match &o.result {
                Ok(r) => format!(
                    "{{\"prefix\":{},\"output\":{output},\"ok\":true,\"generation\":\"{:016x}\",\"txid\":{},\"time\":{},\"pages\":{},\"bytes\":{},\"seconds\":{:.3},\"stray\":[{}]}}",
                    json_string(&o.prefix),
                    r.generation,
                    r.txid,
                    json_string(&format_rfc3339(r.time_ms)),
                    r.pages,
                    r.bytes,
                    r.seconds,
                    r.stray
                        .iter()
                        .map(|o| format!("{{\"key\":{},\"bytes\":{}}}", json_string(&o.key), o.size))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Err(e) => format!(
                    "{{\"prefix\":{},\"output\":{output},\"ok\":false,\"error\":{}}}",
                    json_string(&o.prefix),
                    json_string(e)
                ),
            }
        })
        .collect();
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    format!(
        "{{\"databases\":[{}],\"ok\":{},\"failed\":{failed},\"seconds\":{seconds:.3}}}",
        items.join(","),
        outcomes.len() - failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_under_a_parent_by_whole_components() {
        assert!(under("tenants/acme", "tenants"));
        assert!(under("tenants/acme", "tenants/"));
        assert!(under("tenants", "tenants"));
        assert!(!under("tenants2/x", "tenants"));
        assert!(under("anything", ""));
    }
}
