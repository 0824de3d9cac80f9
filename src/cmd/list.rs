//! `walsync list`: what the bucket holds for each database.

use std::path::{Path, PathBuf};

use argh::FromArgs;

use super::restore_all::{discover, list_roots, par_map, under, DEFAULT_JOBS};
use super::{check_prefix, human_bytes, json_string, select, CliError};
use crate::format::sealed;
use crate::keyfile::KeyId;
use crate::keys::{self, ObjectKind};
use crate::lease::{FreeBecause, Holder, Seen, Standing};
use crate::plan;
use crate::storage::{ObjectMeta, Storage};
use crate::time::format_rfc3339;
args_with_target! {

/// list the backups: generations, snapshots, newest restorable txid and time
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    bucket: "bucket to list, without a config file",
    /// only the database with this prefix, or those under it (default: all of the config, or every database found in the bucket or directory)
    #[argh(option)]
    pub prefix: Option<String>,
    /// print JSON (an array with one object per database)
    #[argh(switch)]
    pub json: bool,
    /// also read the first bytes of every object and show which encryption keys (by key id) the prefix still needs
    #[argh(switch)]
    pub keys: bool,
}
}

pub fn run(args: ListArgs) -> Result<(), CliError> {
    let parent = args.prefix.as_deref().map(|p| p.trim_end_matches('/'));
    if let Some(p) = parent {
        check_prefix(p)?;
    }
    let (storage, cfg) = args.target().resolve()?;
    let keys = args.target().keys(cfg.as_ref())?;
    let pool = super::thread_pool(DEFAULT_JOBS)?;
    let (databases, listing): (Vec<(String, Option<PathBuf>)>, _) = match &cfg {
        Some(cfg) => {
            let databases: Vec<(String, Option<PathBuf>)> = select(cfg, None)?
                .into_iter()
                .filter(|d| parent.is_none_or(|p| under(&d.prefix, p)))
                .map(|d| (d.prefix, Some(d.path)))
                .collect();
            if let (Some(p), true) = (parent, databases.is_empty()) {
                return Err(CliError::usage(format!(
                    "no database with prefix {p:?} (or under it) in {}",
                    cfg.source.display()
                )));
            }
            let prefixes: Vec<String> = databases.iter().map(|d| d.0.clone()).collect();
            let roots = crate::fleet::listing_roots(&prefixes, &[]);
            (databases, list_roots(&*storage, roots, &prefixes, &pool)?)
        }
        None => {
            let found = discover(&*storage, parent.unwrap_or_default(), &pool)?;
            let mut databases: Vec<(String, Option<PathBuf>)> =
                found.prefixes.into_iter().map(|p| (p, None)).collect();
            match parent {
                // A prefix that holds nothing is shown as such.
                Some(p) if databases.is_empty() => databases.push((p.to_string(), None)),
                None if databases.is_empty() => {
                    errln!("no databases found in {}", storage.location())
                }
                _ => {}
            }
            (databases, found.listing)
        }
    };
    let report = |(prefix, path): &(String, Option<PathBuf>)| {
        let objects = crate::fleet::slice(&listing, prefix);
        let mut s = summarize(prefix, objects);
        if args.keys {
            s.keys = Some(keys_needed(&*storage, prefix, objects)?);
        }
        let lease_key = crate::lease::lease_key(prefix);
        if objects.iter().any(|o| o.key == lease_key) {
            s.lease = Some(read_lease(&*storage, &lease_key));
        }
        if let Some(p) = path.as_deref().filter(|p| p.exists()) {
            s.lag = Some(
                crate::replica::local_lag(&*storage, prefix, objects, p, &keys)
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok::<_, String>(s)
    };
    let mut failed = 0;
    let mut json_items = Vec::new();
    // A batch at a time, in parallel (the lag of each reads one object),
    // printed in order.
    for batch in databases.chunks(64) {
        if super::output::stdout_stopped() {
            // The reader went away (`list | head`): listing on is wasted.
            break;
        }
        let summaries = par_map(&pool, batch.len(), |i| report(&batch[i]));
        for ((prefix, path), summary) in batch.iter().zip(summaries) {
            if let Ok(s) = &summary {
                for o in &s.stray {
                    log::warn!("prefix {prefix:?}: {o}");
                }
            }
            match summary {
                Ok(summary) if args.json => {
                    json_items.push(to_json(prefix, path.as_deref(), &summary))
                }
                Ok(summary) => print_human(prefix, path.as_deref(), &summary),
                Err(e) => {
                    errln!("{prefix}: {e}");
                    failed += 1;
                }
            }
        }
    }
    if args.json {
        outln!("[{}]", json_items.join(","));
    }
    // Whether the server checks upload checksums (README "Storage providers").
    super::report_upload_check(
        &*storage,
        databases.first().map(|d| d.0.as_str()).or(parent),
    );
    if failed > 0 {
        return Err(CliError::runtime(format!(
            "{failed} database(s) could not be listed"
        )));
    }
    Ok(())
}

/// One generation as `list` shows it.
struct GenerationSummary {
    id: u64,
    snapshots: usize,
    segments: usize,
    newest_snapshot: Option<(u64, u64)>,
    newest_txid: Option<u64>,
    newest_time_ms: Option<u64>,
    bytes: u64,
}

struct Summary {
    objects: usize,
    bytes: u64,
    generations: Vec<GenerationSummary>,
    /// With a local file: how far it is ahead of the backup (`Some(None)`:
    /// cannot be told from the files).
    lag: Option<Option<crate::replica::Lag>>,
    /// Objects under the prefix that are not walsync's.
    stray: Vec<keys::StrayObject>,
    /// With `--keys`: the objects sealed by each key id, then the plain ones.
    keys: Option<KeysNeeded>,
    /// The prefix's lease, if it has one (one GET): who holds it, or why
    /// it cannot be read.
    lease: Option<Result<(Holder, Standing), String>>,
}

/// Which keys the objects of a prefix need: (key id, objects) in order of
/// first use, and how many need none.
struct KeysNeeded {
    sealed: Vec<(KeyId, usize)>,
    plain: usize,
}

/// Reads the header of every walsync object of `prefix` (one ranged GET each).
fn keys_needed(
    storage: &dyn Storage,
    prefix: &str,
    listing: &[ObjectMeta],
) -> Result<KeysNeeded, String> {
    let (objects, _) = keys::parse_listing_lenient(prefix, listing);
    let mut needed = KeysNeeded {
        sealed: Vec::new(),
        plain: 0,
    };
    for o in &objects {
        let len = o.size.min(sealed::HEADER_SIZE as u64);
        let head = storage
            .get_range(&o.key, 0, len)
            .map_err(|e| e.to_string())?;
        match sealed::sealed_by(&head).map_err(|e| format!("object {:?}: {e}", o.key))? {
            None => needed.plain += 1,
            Some(id) => match needed.sealed.iter_mut().find(|(k, _)| *k == id) {
                Some((_, n)) => *n += 1,
                None => needed.sealed.push((id, 1)),
            },
        }
    }
    Ok(needed)
}

/// Who holds the lease under `key` and whether it is still in force, as
/// another walsync would judge it (on the server's clock).
fn read_lease(storage: &dyn Storage, key: &str) -> Result<(Holder, Standing), String> {
    let found = storage.get_tagged(key).map_err(|e| e.to_string())?;
    let lease = crate::lease::decode(&found.bytes)?;
    let seen = Seen {
        lease,
        modified_ms: found.modified_ms,
        server_now_ms: found.server_now_ms,
        local_now_ms: crate::time::now_ms(),
        holder_alive: None,
    };
    // Nobody: `list` holds no lease.
    let nobody = Holder {
        host: String::new(),
        pid: 0,
        machine: String::new(),
        since_ms: 0,
    };
    let standing = crate::lease::standing(&seen, &nobody);
    Ok((seen.lease.holder, standing))
}

/// The lease's state in words, and its seconds left while held.
fn lease_state(standing: &Standing) -> (&'static str, Option<u64>) {
    match standing {
        Standing::Held { expires_in } => ("held", Some(expires_in.as_secs().max(1))),
        Standing::Free(FreeBecause::Released) => ("given up", None),
        _ => ("expired", None),
    }
}

fn summarize(prefix: &str, listing: &[ObjectMeta]) -> Summary {
    // Objects walsync did not write are named (by `run`) and not counted.
    let stray = keys::stray_objects(prefix, listing);
    let (objects, _) = keys::parse_listing_lenient(prefix, listing);
    let generations = plan::generations(&objects)
        .iter()
        .map(|(&id, gen)| {
            let times = gen
                .snapshots
                .iter()
                .chain(gen.segments.iter())
                .map(|o| o.kind.time_ms());
            GenerationSummary {
                id,
                snapshots: gen.snapshots.len(),
                segments: gen.segments.len(),
                newest_snapshot: gen.snapshots.last().and_then(|s| match s.kind {
                    ObjectKind::Snapshot { txid, time_ms } => Some((txid, time_ms)),
                    _ => None,
                }),
                newest_txid: gen.newest_txid(),
                newest_time_ms: times.max(),
                bytes: gen
                    .snapshots
                    .iter()
                    .chain(gen.segments.iter())
                    .map(|o| o.size)
                    .sum(),
            }
        })
        .collect();
    Summary {
        objects: objects.len(),
        bytes: objects.iter().map(|o| o.size).sum(),
        generations,
        lag: None,
        stray,
        keys: None,
        lease: None,
    }
}

fn print_human(prefix: &str, path: Option<&Path>, s: &Summary) {
    match path {
        Some(p) => outln!("{prefix} ({})", p.display()),
        None => outln!("{prefix}"),
    }
    match &s.lease {
        Some(Ok((holder, standing))) => match lease_state(standing) {
            (state, Some(left)) => {
                outln!("  lease: {state} by {holder}; expires in {left}s unless renewed")
            }
            (state, None) => outln!("  lease: {state} (last held by {holder})"),
        },
        Some(Err(e)) => outln!("  lease: unreadable ({e})"),
        None => {}
    }
    if s.generations.is_empty() {
        outln!("  no backup yet");
        return;
    }
    match s.lag {
        Some(Some(l)) if l.commits == 0 => outln!("  local file: in step with the backup"),
        Some(Some(l)) => outln!(
            "  local file: {} commits ({}) of its WAL not yet in the backup",
            l.commits,
            human_bytes(l.wal_bytes)
        ),
        Some(None) => {
            outln!("  local file: lag unknown (its WAL cannot be placed against the newest backup)")
        }
        None => {}
    }
    outln!(
        "  {} generations, {} objects, {}",
        s.generations.len(),
        s.objects,
        human_bytes(s.bytes)
    );
    if let Some(k) = &s.keys {
        let ids: Vec<String> = k
            .sealed
            .iter()
            .map(|(id, n)| format!("{id} ({n} objects)"))
            .collect();
        outln!(
            "  keys needed: {}; {} objects not encrypted",
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            },
            k.plain
        );
    }
    for g in &s.generations {
        outln!(
            "  generation {:016x}: {} snapshots (newest {}), {} segments, newest txid {}{}, {}",
            g.id,
            g.snapshots,
            g.newest_snapshot
                .map_or("none".to_string(), |(t, ms)| format!(
                    "txid {t} at {}",
                    format_rfc3339(ms)
                )),
            g.segments,
            g.newest_txid.map_or("none".to_string(), |t| t.to_string()),
            g.newest_time_ms
                .map_or(String::new(), |t| format!(" at {}", format_rfc3339(t))),
            human_bytes(g.bytes)
        );
    }
}

fn opt_u64(v: Option<u64>) -> String {
    v.map_or("null".to_string(), |n| n.to_string())
}

fn opt_time(v: Option<u64>) -> String {
    v.map_or("null".to_string(), |t| json_string(&format_rfc3339(t)))
}

fn to_json(prefix: &str, path: Option<&Path>, s: &Summary) -> String {
    let gens: Vec<String> = s
        .generations
        .iter()
        .map(|g| {
            format!(
                "{{\"generation\":\"{:016x}\",\"snapshots\":{},\"segments\":{},\"newest_snapshot_txid\":{},\"newest_snapshot_time\":{},\"newest_txid\":{},\"newest_time\":{},\"bytes\":{}}}",
                g.id,
                g.snapshots,
                g.segments,
                opt_u64(g.newest_snapshot.map(|s| s.0)),
                opt_time(g.newest_snapshot.map(|s| s.1)),
                opt_u64(g.newest_txid),
                opt_time(g.newest_time_ms),
                g.bytes
            )
        })
        .collect();
    let stray: Vec<String> = s
        .stray
        .iter()
        .map(|o| format!("{{\"key\":{},\"bytes\":{}}}", json_string(&o.key), o.size))
        .collect();
    let newest = s.generations.last();
    let keys = s.keys.as_ref().map_or(String::new(), |k| {
        let ids: Vec<String> = k
            .sealed
            .iter()
            .map(|(id, n)| format!("{{\"key_id\":\"{id}\",\"objects\":{n}}}"))
            .collect();
        format!(
            ",\"keys\":[{}],\"plain_objects\":{}",
            ids.join(","),
            k.plain
        )
    });
    let lease = match &s.lease {
        None => "null".to_string(),
        Some(Ok((holder, standing))) => {
            let (state, left) = lease_state(standing);
            format!(
                "{{\"state\":{},\"host\":{},\"pid\":{},\"since\":{},\"expires_in_seconds\":{}}}",
                json_string(state),
                json_string(&holder.host),
                holder.pid,
                opt_time(Some(holder.since_ms)),
                opt_u64(left)
            )
        }
        Some(Err(e)) => format!("{{\"error\":{}}}", json_string(e)),
    };
    format!(
        "{{\"prefix\":{},\"path\":{},\"objects\":{},\"bytes\":{},\"newest_txid\":{},\"newest_time\":{},\"lag_commits\":{},\"lag_wal_bytes\":{},\"lease\":{lease},\"generations\":[{}],\"stray\":[{}]{}}}",
        json_string(prefix),
        path.map_or("null".to_string(), |p| json_string(&p.display().to_string())),
        s.objects,
        s.bytes,
        opt_u64(newest.and_then(|g| g.newest_txid)),
        opt_time(newest.and_then(|g| g.newest_time_ms)),
        opt_u64(s.lag.flatten().map(|l| l.commits)),
        opt_u64(s.lag.flatten().map(|l| l.wal_bytes)),
        gens.join(","),
        stray.join(","),
        keys
    )
}
