//! `walsync history`: the commits a backup holds, one line each (txid,
//! time, pages changed, bytes, generation), with its snapshots and
//! generation breaks marked: what a user looks at before choosing a
//! `restore --timestamp` or `--txid`.
//!
//! Which objects to read is decided from the listing alone (`steps`, pure);
//! a segment's commit records are read by streaming it through its decoder
//! (its CRC32 checked, nothing kept), a snapshot's header from the start of its stream.

use argh::FromArgs;

use super::{check_prefix, check_storage, json_string, CliError};
use std::io::Read;

use crate::format::sealed;
use crate::format::segment::SegmentDecoder;
use crate::format::snapshot::SnapshotDecoder;
use crate::keyfile::Key;
use crate::keys::{self, BackupObject, ObjectKind};
use crate::storage::Storage;
use crate::time::{format_rfc3339, parse_rfc3339};
args_with_target! {

/// list the commits a backup holds (txid, time, pages, bytes, generation), with snapshots and generation breaks
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "history")]
pub struct HistoryArgs {
    bucket: "bucket to read, without a config file",
    /// prefix of the database in the bucket, e.g. services/auth
    #[argh(option)]
    pub prefix: String,
    /// only what was made at or after this time (RFC 3339)
    #[argh(option)]
    pub since: Option<String>,
    /// only what was made at or before this time (RFC 3339)
    #[argh(option)]
    pub until: Option<String>,
    /// print JSON (an array with one object per line)
    #[argh(switch)]
    pub json: bool,
}
}

/// What to read, in the order of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// A generation starts (`first`: the oldest in the backup; any other
    /// began where the one before it could not be continued).
    Generation {
        id: u64,
        first: bool,
    },
    Snapshot(&'a BackupObject),
    Segment(&'a BackupObject),
}

/// The objects of a history between `since` and `until` (ms), in txid
/// order: each generation, then its snapshots and segments, a segment
/// before the snapshot taken at its last commit. Objects wholly outside
/// the window are left out (no download); a generation with nothing in it
/// is left out too.
pub fn steps(objects: &[BackupObject], since: u64, until: u64) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    let gens = crate::plan::generations(objects);
    let oldest = gens.keys().next().copied();
    for (&id, gen) in &gens {
        // Both lists are in txid order (`generations`): merged, a segment
        // goes before the snapshot taken at its last commit.
        let mut snaps = gen
            .snapshots
            .iter()
            .copied()
            .filter(|s| (since..=until).contains(&s.kind.time_ms()))
            .peekable();
        let mut items = Vec::new();
        for s in &gen.segments {
            if let ObjectKind::Segment {
                last_txid,
                first_time_ms,
                last_time_ms,
                ..
            } = s.kind
            {
                if last_time_ms >= since && first_time_ms <= until {
                    while let Some(p) = snaps.next_if(|p| p.kind.txid() < last_txid) {
                        items.push(Step::Snapshot(p));
                    }
                    items.push(Step::Segment(s));
                }
            }
        }
        items.extend(snaps.map(Step::Snapshot));
        if items.is_empty() {
            continue;
        }
        let first = Some(id) == oldest;
        out.push(Step::Generation { id, first });
        out.extend(items);
    }
    out
}

/// One line of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub generation: u64,
    pub txid: u64,
    pub time_ms: u64,
    /// Pages the commit wrote (a snapshot: every page of the database).
    pub pages: u32,
    pub bytes: u64,
    pub snapshot: bool,
}

fn text_header() -> String {
    format!(
        "{:>8}  {:<24}  {:>8}  {:>11}  GENERATION",
        "TXID", "TIME", "PAGES", "BYTES"
    )
}

fn text_generation(id: u64, first: bool) -> String {
    if first {
        format!("generation {id:016x}")
    } else {
        format!(
            "generation {id:016x}: a new history (a gap: walsync could not continue the one above)"
        )
    }
}

fn text_entry(e: &Entry) -> String {
    format!(
        "{:>8}  {}  {:>8}  {:>11}  {:016x}{}",
        e.txid,
        format_rfc3339(e.time_ms),
        e.pages,
        e.bytes,
        e.generation,
        if e.snapshot { "  snapshot" } else { "" }
    )
}

fn json_generation(id: u64, first: bool) -> String {
    format!(
        "{{\"kind\":\"generation\",\"generation\":\"{id:016x}\",\"break\":{}}}",
        !first
    )
}

fn json_entry(e: &Entry) -> String {
    format!(
        "{{\"kind\":{},\"txid\":{},\"time\":{},\"pages\":{},\"bytes\":{},\"generation\":\"{:016x}\"}}",
        json_string(if e.snapshot { "snapshot" } else { "commit" }),
        e.txid,
        json_string(&format_rfc3339(e.time_ms)),
        e.pages,
        e.bytes,
        e.generation
    )
}

/// Writes the lines of the history, JSON items separated by commas.
struct Printer {
    json: bool,
    items: usize,
}

impl Printer {
    fn line(&mut self, text: String, json: String) {
        if self.json {
            outln!("{}{json}", if self.items == 0 { "[" } else { "," });
        } else {
            outln!("{text}");
        }
        self.items += 1;
    }
}

fn time_flag(name: &str, v: Option<&str>, default: u64) -> Result<u64, CliError> {
    v.map_or(Ok(default), |t| {
        parse_rfc3339(t).map_err(|e| CliError::usage(format!("--{name}: {e}")))
    })
}

pub fn run(args: HistoryArgs) -> Result<(), CliError> {
    check_prefix(&args.prefix)?;
    let since = time_flag("since", args.since.as_deref(), 0)?;
    let until = time_flag("until", args.until.as_deref(), u64::MAX)?;
    if since > until {
        return Err(CliError::usage("--since is after --until"));
    }
    let (storage, cfg) = args.target().resolve()?;
    let keys = args.target().keys(cfg.as_ref())?;
    let prefix = args.prefix.as_str();
    check_storage(&*storage, prefix).map_err(CliError::runtime)?;
    let listing = storage
        .list(&keys::generations_root(prefix))
        .map_err(|e| CliError::runtime(format!("{prefix}: {e}")))?;
    let (objects, _) = keys::parse_listing_lenient(prefix, &listing);
    let restorable = |o: &BackupObject| !matches!(o.kind, ObjectKind::Mark { .. });
    if !objects.iter().any(restorable) {
        return Err(CliError::runtime(format!(
            "{prefix}: no backup found (no snapshot or segment under {prefix}/generations/)"
        )));
    }
    let mut out = Printer {
        json: args.json,
        items: 0,
    };
    if !args.json {
        outln!("{}", text_header());
    }
    let mut shown = 0u64;
    for step in steps(&objects, since, until) {
        if super::output::stdout_stopped() {
            break;
        }
        match step {
            Step::Generation { id, first } => {
                out.line(text_generation(id, first), json_generation(id, first));
                shown = 0;
            }
            Step::Snapshot(o) => {
                let e =
                    snapshot_entry(&*storage, o, &keys).map_err(|e| object_error(prefix, o, e))?;
                out.line(text_entry(&e), json_entry(&e));
            }
            Step::Segment(o) => {
                shown = print_segment(&*storage, o, &keys, since, until, shown, &mut out)
                    .map_err(|e| object_error(prefix, o, e))?;
            }
        }
    }
    if args.json {
        outln!("{}]", if out.items == 0 { "[" } else { "" });
    }
    Ok(())
}

fn object_error(prefix: &str, o: &BackupObject, e: String) -> CliError {
    CliError::runtime(format!("{prefix}: object {}: {e}", o.key))
}

/// The object `o`, opened with `keys` if sealed.
fn open(storage: &dyn Storage, o: &BackupObject, keys: &[Key]) -> Result<impl Read, String> {
    let reader = storage.get(&o.key).map_err(|e| e.to_string())?;
    sealed::open(reader, keys, &o.key).map_err(|e| e.to_string())
}

fn snapshot_entry(storage: &dyn Storage, o: &BackupObject, keys: &[Key]) -> Result<Entry, String> {
    // Only the header is read; the rest of the stream is dropped.
    let reader = open(storage, o, keys)?;
    let h = SnapshotDecoder::new(reader)
        .map_err(|e| e.to_string())?
        .header;
    Ok(Entry {
        generation: o.generation,
        txid: h.txid,
        time_ms: h.time_ms,
        pages: h.page_count,
        bytes: u64::from(h.page_count) * u64::from(h.page_size),
        snapshot: true,
    })
}

/// Prints the commits of one segment above txid `shown` (an overlapping
/// segment repeats none) within the window; checks the whole object.
/// Returns the newest txid shown.
fn print_segment(
    storage: &dyn Storage,
    o: &BackupObject,
    keys: &[Key],
    since: u64,
    until: u64,
    mut shown: u64,
    out: &mut Printer,
) -> Result<u64, String> {
    let reader = open(storage, o, keys)?;
    let mut d = SegmentDecoder::new(reader).map_err(|e| e.to_string())?;
    let page_size = u64::from(d.header.page_size);
    while let Some(c) = d.next_commit().map_err(|e| e.to_string())? {
        if c.txid <= shown || !(since..=until).contains(&c.time_ms) {
            continue;
        }
        shown = c.txid;
        let e = Entry {
            generation: o.generation,
            txid: c.txid,
            time_ms: c.time_ms,
            pages: c.page_count,
            bytes: u64::from(c.page_count) * page_size,
            snapshot: false,
        };
        out.line(text_entry(&e), json_entry(&e));
    }
    d.finish().map_err(|e| e.to_string())?;
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(generation: u64, txid: u64, time_ms: u64) -> BackupObject {
        BackupObject {
            generation,
            kind: ObjectKind::Snapshot { txid, time_ms },
            key: format!("s{txid}"),
            size: 1,
        }
    }

    fn seg(generation: u64, first_txid: u64, last_txid: u64, t0: u64, t1: u64) -> BackupObject {
        BackupObject {
            generation,
            kind: ObjectKind::Segment {
                first_txid,
                last_txid,
                first_time_ms: t0,
                last_time_ms: t1,
            },
            key: format!("g{first_txid}-{last_txid}"),
            size: 1,
        }
    }

    fn names(steps: &[Step<'_>]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Generation { id, first } => format!("G{id}{}", if *first { "" } else { "!" }),
                Step::Snapshot(o) | Step::Segment(o) => o.key.clone(),
            })
            .collect()
    }

    #[test]
    fn steps_follow_txid_order_and_mark_generation_breaks() {
        let objects = vec![
            seg(1, 2, 5, 100, 140),
            snap(1, 1, 90),
            snap(1, 5, 150),
            seg(1, 6, 9, 160, 200),
            snap(10, 10, 300),
            seg(10, 11, 12, 310, 320),
        ];
        let all = steps(&objects, 0, u64::MAX);
        assert_eq!(
            names(&all),
            ["G1", "s1", "g2-5", "s5", "g6-9", "G10!", "s10", "g11-12"]
        );
        // (since, until) -> steps
        let rows: &[(u64, u64, &[&str])] = &[
            (145, 170, &["G1", "s5", "g6-9"]),
            (0, 95, &["G1", "s1"]),
            (201, 299, &[]),
            (201, 305, &["G10!", "s10"]),
            (315, u64::MAX, &["G10!", "g11-12"]),
            (140, 140, &["G1", "g2-5"]),
        ];
        for (since, until, want) in rows {
            assert_eq!(
                names(&steps(&objects, *since, *until)),
                *want,
                "{since}..={until}"
            );
        }
    }

    #[test]
    fn lines_name_every_field() {
        let e = Entry {
            generation: 0x1f,
            txid: 42,
            time_ms: 1_764_417_600_123,
            pages: 3,
            bytes: 12_288,
            snapshot: false,
        };
        assert_eq!(
            text_entry(&e),
            "      42  2025-11-29T12:00:00.123Z         3        12288  000000000000001f"
        );
        assert_eq!(
            json_entry(&e),
            "{\"kind\":\"commit\",\"txid\":42,\"time\":\"2025-11-29T12:00:00.123Z\",\"pages\":3,\"bytes\":12288,\"generation\":\"000000000000001f\"}"
        );
        let s = Entry {
            snapshot: true,
            ..e
        };
        assert!(text_entry(&s).ends_with("  snapshot"));
        assert!(json_entry(&s).starts_with("{\"kind\":\"snapshot\""));
        assert_eq!(
            json_generation(0x1f, false),
            "{\"kind\":\"generation\",\"generation\":\"000000000000001f\",\"break\":true}"
        );
        assert!(text_generation(2, false).contains("a new history"));
    }
}
