//! `walsync restore-all`: restore every database, for cron jobs that prove
//! the backups work and for rebuilding a lost machine.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use argh::FromArgs;
use rayon::prelude::*;

use super::restore::target_of;
use super::{check_prefix, human_bytes, json_string, CliError};
use crate::keys;
use crate::restore::{output_path_for, remove_leftover_temps, restore_listed, How, RestoreReport};
use crate::storage::{ObjectMeta, Storage};
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
    /// restores to run at once (default: 16)
    #[argh(option)]
    pub jobs: Option<usize>,
    /// restore every commit made at or before this time (RFC 3339), the same moment for all databases
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
pub fn under(prefix: &str, parent: &str) -> bool {
    let parent = parent.trim_end_matches('/');
    parent.is_empty() || prefix == parent || prefix.starts_with(&format!("{parent}/"))
}

pub fn run(args: RestoreAllArgs) -> Result<(), CliError> {
    let target = target_of(args.timestamp.as_deref(), args.txid)?;
    if let Some(p) = &args.prefix {
        check_prefix(p.trim_end_matches('/'))?;
    }
    let jobs = jobs(args.jobs)?;
    let (storage, cfg) = args.target().resolve()?;
    let keys = args.target().keys(cfg.as_ref())?;
    std::fs::create_dir_all(&args.output_dir)
        .map_err(|e| CliError::runtime(format!("{}: {e}", args.output_dir.display())))?;

    let started = Instant::now();
    let pool = super::thread_pool(jobs)?;
    let fleet = select(&*storage, cfg.as_ref(), args.prefix.as_deref(), &pool)?;
    let how = How {
        force: args.force,
        durable: true,
        limits: crate::fleet::fetch_limits(jobs),
        keys: &keys,
    };
    let output_dir = args.output_dir.clone();
    let cleaned = std::sync::Mutex::new(std::collections::HashSet::new());
    run_all(&fleet.prefixes, &pool, args.json, started, |prefix| {
        let listing = crate::fleet::slice(&fleet.listing, prefix);
        let output = output_path_for(&output_dir, prefix);
        // What killed restores left, once per output folder (not once per
        // database: one folder may hold thousands).
        if let Some(parent) = output.as_ref().ok().and_then(|o| o.parent()) {
            let first = cleaned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(parent.to_path_buf());
            if first {
                remove_leftover_temps(parent, None);
            }
        }
        let result = output.as_ref().map_err(|e| e.to_string()).and_then(|out| {
            restore_listed(&*storage, prefix, listing, out, target, how).map_err(|e| e.to_string())
        });
        Outcome {
            prefix: prefix.to_string(),
            output: output.ok(),
            result,
        }
    })
}

/// Restores (or verifications) run at once: `--jobs`, else
/// [`DEFAULT_JOBS`].
pub fn jobs(flag: Option<usize>) -> Result<usize, CliError> {
    match flag {
        Some(0) => Err(CliError::usage("--jobs must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(DEFAULT_JOBS),
    }
}

/// Default `--jobs` of `restore-all` and `verify`. A small restore waits on
/// the storage (a GET, then fsyncs) far more than it computes, so more run
/// at once than there are cores; 16 is also the S3 client's pool of idle
/// connections per host, and `fleet::fetch_limits` keeps their memory to
/// that of about two restores.
pub const DEFAULT_JOBS: usize = 16;

/// The databases a fleet command works on, and one listing holding every
/// object under each of them (`fleet::slice` cuts out one database's).
pub struct Fleet {
    pub prefixes: Vec<String>,
    pub listing: Vec<ObjectMeta>,
}

/// The databases to work on: those of the config (under `parent` if
/// given), or, with no config, those found by listing the bucket under
/// `parent`; with their objects, listed once per parent prefix
/// (`fleet::listing_roots`) on `pool`, not once per database.
pub fn select(
    storage: &dyn Storage,
    cfg: Option<&crate::config::Config>,
    parent: Option<&str>,
    pool: &rayon::ThreadPool,
) -> Result<Fleet, CliError> {
    let parent = parent.unwrap_or_default().trim_end_matches('/');
    let (prefixes, listing) = match cfg {
        Some(cfg) => {
            // Listed databases, those found on disk now, and those backed up
            // under a directory's prefix whose file is gone (the machine may
            // be the one that was lost).
            let mut set: std::collections::BTreeSet<String> = super::all_databases(cfg)
                .into_iter()
                .map(|d| d.prefix)
                .filter(|p| under(p, parent))
                .collect();
            let templates: Vec<(&str, &str)> = cfg
                .directories
                .iter()
                .map(|d| {
                    let t = d.prefix_template.as_str();
                    (t, crate::discovery::check_template(t).unwrap_or_default())
                })
                .collect();
            let fixed: Vec<String> = templates.iter().map(|t| t.1.to_string()).collect();
            let configured: Vec<String> = set.iter().cloned().collect();
            let roots = crate::fleet::listing_roots(&configured, &fixed);
            let listing = list_roots(storage, roots, &configured, pool)?;
            if !templates.is_empty() {
                set.extend(keys::discover_prefixes(&listing).into_iter().filter(|p| {
                    under(p, parent)
                        && templates.iter().any(|(t, f)| {
                            p.starts_with(f) && crate::discovery::template_matches(t, p)
                        })
                }));
            }
            (set.into_iter().collect(), listing)
        }
        None => {
            let fleet = discover(storage, parent, pool)?;
            (fleet.prefixes, fleet.listing)
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
    Ok(Fleet { prefixes, listing })
}

/// The databases with objects under `parent` (the whole bucket if empty),
/// found by listing it once: every key that parses as
/// `<prefix>/generations/...`. None found is no error here.
pub fn discover(
    storage: &dyn Storage,
    parent: &str,
    pool: &rayon::ThreadPool,
) -> Result<Fleet, CliError> {
    let parent = parent.trim_end_matches('/');
    let root = if parent.is_empty() {
        String::new()
    } else {
        keys::database_root(parent)
    };
    let listing = list_in_parts_as_found(storage, &root, pool)?;
    Ok(Fleet {
        prefixes: keys::discover_prefixes(&listing),
        listing,
    })
}

/// The listing of `root`, in parts listed at once on `pool` as the
/// folders under it are found (`fleet::Cutter`; inside its only folder,
/// e.g. `tenants/` under the bucket's root): a config-less command knows
/// no database before listing, and a listing's own pages come one after
/// another. The folders are only a hint: if finding them fails, the rest
/// is one part; a store that gives none (a directory) is listed whole.
fn list_in_parts_as_found(
    storage: &dyn Storage,
    root: &str,
    pool: &rayon::ThreadPool,
) -> Result<Vec<ObjectMeta>, CliError> {
    type Part = (usize, Result<Vec<ObjectMeta>, CliError>);
    let parts: std::sync::Mutex<Vec<Part>> = Default::default();
    pool.scope(|s| {
        let mut count = 0;
        let mut list = |after: Option<String>, through: Option<String>| {
            let i = count;
            count += 1;
            let parts = &parts;
            s.spawn(move |_| {
                let listed = list_part(
                    storage,
                    &crate::fleet::ListRange {
                        root: root.to_string(),
                        after,
                        through,
                    },
                );
                parts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((i, listed));
            });
        };
        let mut at = root.to_string();
        let mut rest = None;
        for _ in 0..crate::fleet::MAX_LOOKS {
            let mut cutter = crate::fleet::Cutter::new(crate::fleet::DATABASES_PER_RANGE);
            let found = storage.list_children(&at, &mut |folders| {
                for folder in folders {
                    if let Some((after, through)) = cutter.folder(&folder) {
                        list(after, Some(through));
                    }
                }
                true
            });
            if let Err(e) = &found {
                log::debug!(
                    "the folders under {at:?} are not all known ({e}): the rest is listed whole"
                );
            }
            match cutter.only_folder() {
                Some(folder) if found.is_ok() => at = folder.to_string(),
                _ => {
                    rest = cutter.rest();
                    break;
                }
            }
        }
        list(rest, None);
    });
    let mut parts = parts.into_inner().unwrap_or_else(|e| e.into_inner());
    parts.sort_by_key(|p| p.0);
    let mut all = Vec::new();
    for (_, listed) in parts {
        all.extend(listed?);
    }
    Ok(all)
}

/// One part of a listing (`fleet::ListRange`), listed with the prefix its
/// bounds share; a failure names the root it is part of.
fn list_part(
    storage: &dyn Storage,
    r: &crate::fleet::ListRange,
) -> Result<Vec<ObjectMeta>, CliError> {
    storage
        .list_range(r.prefix(), r.after.as_deref(), r.through.as_deref())
        .map_err(|e| CliError::runtime(format!("cannot list {:?}: {e}", r.root)))
}

/// Lists every root into one listing, in parallel on `pool`, a root with
/// many of the `known` databases under it in ranges of them
/// (`fleet::listing_ranges`). A failed listing ends the command: it names
/// the root, and a problem with the storage as a whole is one line, not one
/// per database.
pub fn list_roots(
    storage: &dyn Storage,
    roots: Vec<String>,
    known: &[String],
    pool: &rayon::ThreadPool,
) -> Result<Vec<ObjectMeta>, CliError> {
    let per_range = if storage.lists_in_parts() {
        crate::fleet::DATABASES_PER_RANGE
    } else {
        usize::MAX
    };
    let ranges = crate::fleet::listing_ranges(&roots, known, per_range);
    // Sorted roots, none inside another (`fleet::listing_roots`), and each
    // one's ranges in order: their listings, in that order, make one
    // sorted listing.
    let mut all = Vec::new();
    for listing in par_map(pool, ranges.len(), |i| list_part(storage, &ranges[i])) {
        all.extend(listing?);
    }
    Ok(all)
}

/// `f(0)`, …, `f(n - 1)`, run on `pool`.
pub fn par_map<R: Send>(
    pool: &rayon::ThreadPool,
    n: usize,
    f: impl Fn(usize) -> R + Sync,
) -> Vec<R> {
    let slots: Vec<std::sync::Mutex<Option<R>>> = (0..n).map(|_| Default::default()).collect();
    on_pool(pool, n, &|i| {
        let r = f(i);
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    });
    slots
        .into_iter()
        .map(|s| {
            s.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("invariant: on_pool ran every index")
        })
        .collect()
}

/// Runs `each(i)` for every `i` in `0..n` on `pool`. Not generic, so every
/// command shares one copy of rayon's machinery in the (size-capped) binary.
fn on_pool(pool: &rayon::ThreadPool, n: usize, each: &(dyn Fn(usize) + Sync)) {
    pool.install(|| (0..n).into_par_iter().for_each(each));
}

/// Runs `one` for every prefix on `pool`, prints a line per database as
/// it finishes (or JSON at the end) and a total; an error (exit 1) if any
/// failed.
pub fn run_all(
    prefixes: &[String],
    pool: &rayon::ThreadPool,
    json: bool,
    started: Instant,
    one: impl Fn(&str) -> Outcome + Sync,
) -> Result<(), CliError> {
    // A progress line on a terminal only: cron logs get the summary lines.
    let progress = std::io::stderr().is_terminal();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let outcomes: Vec<Outcome> = par_map(pool, prefixes.len(), |i| {
        let o = one(&prefixes[i]);
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
