//! Object keys: where each object of a database's backup lives in the bucket.
//!
//! ```text
//! <prefix>/generations/<generation>/snapshots/<txid>-<time_ms>.snap
//! <prefix>/generations/<generation>/segments/<first_txid>-<last_txid>-<first_time_ms>-<last_time_ms>.seg
//! <prefix>/generations/<generation>/marks/<txid>-<time_ms>.mark
//! ```
//! Every number is 16 lower-case hex digits, so keys sort in replay order
//! (ARCHITECTURE.md invariant 5) and a restore to a time or a txid is planned from
//! the listing alone. A generation is named by the txid of the snapshot that
//! starts it; txids grow by one per commit across generations, so every txid
//! belongs to exactly one generation. Pure: no I/O.

use std::fmt;

use crate::storage::ObjectMeta;

pub mod prefix;

/// What one object of a backup is, as its key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    Snapshot {
        txid: u64,
        time_ms: u64,
    },
    Segment {
        first_txid: u64,
        last_txid: u64,
        first_time_ms: u64,
        last_time_ms: u64,
    },
    /// An idle mark (`format::mark`): not part of any restore.
    Mark {
        txid: u64,
        time_ms: u64,
    },
}

impl ObjectKind {
    /// The newest txid the object stands for.
    pub fn txid(&self) -> u64 {
        match *self {
            ObjectKind::Snapshot { txid, .. } | ObjectKind::Mark { txid, .. } => txid,
            ObjectKind::Segment { last_txid, .. } => last_txid,
        }
    }

    /// The newest commit time the object stands for.
    pub fn time_ms(&self) -> u64 {
        match *self {
            ObjectKind::Snapshot { time_ms, .. } | ObjectKind::Mark { time_ms, .. } => time_ms,
            ObjectKind::Segment { last_time_ms, .. } => last_time_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupObject {
    pub generation: u64,
    pub kind: ObjectKind,
    pub key: String,
    pub size: u64,
}

/// A key under `<prefix>/generations/` that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKey(pub String);

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "object {:?} is not a walsync object name; remove it or check that nothing else writes under this prefix",
            self.0
        )
    }
}

impl std::error::Error for BadKey {}

/// The listing prefix of everything one database owns.
pub fn database_root(prefix: &str) -> String {
    format!("{prefix}/")
}

pub fn generations_root(prefix: &str) -> String {
    format!("{prefix}/generations/")
}

pub fn snapshot_key(prefix: &str, generation: u64, txid: u64, time_ms: u64) -> String {
    format!("{prefix}/generations/{generation:016x}/snapshots/{txid:016x}-{time_ms:016x}.snap")
}

pub fn mark_key(prefix: &str, generation: u64, txid: u64, time_ms: u64) -> String {
    format!("{prefix}/generations/{generation:016x}/marks/{txid:016x}-{time_ms:016x}.mark")
}

pub fn segment_key(
    prefix: &str,
    generation: u64,
    first_txid: u64,
    last_txid: u64,
    first_time_ms: u64,
    last_time_ms: u64,
) -> String {
    format!(
        "{prefix}/generations/{generation:016x}/segments/\
         {first_txid:016x}-{last_txid:016x}-{first_time_ms:016x}-{last_time_ms:016x}.seg"
    )
}

fn hex16(s: &str) -> Option<u64> {
    if s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn hex_fields<const N: usize>(s: &str) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    let mut parts = s.split('-');
    for slot in out.iter_mut() {
        *slot = hex16(parts.next()?)?;
    }
    parts.next().is_none().then_some(out)
}

/// Parses one key of the database at `prefix`. `Ok(None)` for keys outside
/// `<prefix>/generations/` (not ours to judge); `Err` for keys inside it that
/// are not walsync object names.
pub fn parse_key(prefix: &str, key: &str) -> Result<Option<(u64, ObjectKind)>, BadKey> {
    let Some(rest) = key.strip_prefix(&generations_root(prefix)) else {
        return Ok(None);
    };
    let bad = || BadKey(key.to_string());
    let mut parts = rest.split('/');
    let (Some(gen), Some(dir), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let generation = hex16(gen).ok_or_else(bad)?;
    let kind = match dir {
        "snapshots" => {
            let [txid, time_ms] = name
                .strip_suffix(".snap")
                .and_then(hex_fields)
                .ok_or_else(bad)?;
            ObjectKind::Snapshot { txid, time_ms }
        }
        "segments" => {
            let [first_txid, last_txid, first_time_ms, last_time_ms] = name
                .strip_suffix(".seg")
                .and_then(hex_fields)
                .ok_or_else(bad)?;
            if last_txid < first_txid || last_time_ms < first_time_ms {
                return Err(bad());
            }
            ObjectKind::Segment {
                first_txid,
                last_txid,
                first_time_ms,
                last_time_ms,
            }
        }
        "marks" => {
            let [txid, time_ms] = name
                .strip_suffix(".mark")
                .and_then(hex_fields)
                .ok_or_else(bad)?;
            ObjectKind::Mark { txid, time_ms }
        }
        _ => return Err(bad()),
    };
    Ok(Some((generation, kind)))
}

/// Parses a listing of `database_root(prefix)` into backup objects, sorted
/// by generation, then snapshots and segments in txid order.
pub fn parse_listing(prefix: &str, listing: &[ObjectMeta]) -> Result<Vec<BackupObject>, BadKey> {
    let (good, bad) = parse_listing_lenient(prefix, listing);
    match bad.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(good),
    }
}

/// `parse_listing`, keeping going past keys that are not walsync's: the
/// objects, and the bad keys.
pub fn parse_listing_lenient(
    prefix: &str,
    listing: &[ObjectMeta],
) -> (Vec<BackupObject>, Vec<BadKey>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for o in listing {
        match parse_key(prefix, &o.key) {
            Ok(Some((generation, kind))) => good.push(BackupObject {
                generation,
                kind,
                key: o.key.clone(),
                size: o.size,
            }),
            Ok(None) => {}
            Err(e) => bad.push(e),
        }
    }
    good.sort_by_key(|o| (o.generation, o.kind));
    (good, bad)
}

/// An object under a database's prefix that is not one of walsync's: a key
/// under `<prefix>/generations/` that is not a walsync object name, or any
/// other key under `<prefix>/` but the lease (`crate::lease`). Commands name each one and otherwise ignore
/// it: no restore reads it, no retention deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrayObject {
    pub key: String,
    pub size: u64,
}

impl fmt::Display for StrayObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "object {:?} ({} bytes) is not a walsync object and is ignored; remove it, or check              what else writes under this prefix",
            self.key, self.size
        )
    }
}

/// The stray objects in a listing of `database_root(prefix)`, in listing
/// order. The objects of another database whose prefix lies inside this one
/// (`<prefix>/x/generations/...`, which `--bucket`/`--dir` listings of a
/// parent can show) are that database's, not strays.
pub fn stray_objects(prefix: &str, listing: &[ObjectMeta]) -> Vec<StrayObject> {
    let root = database_root(prefix);
    listing
        .iter()
        .filter(|o| o.key.starts_with(&root))
        .filter(|o| !crate::lease::is_lease_object(prefix, &o.key))
        .filter(|o| !matches!(parse_key(prefix, &o.key), Ok(Some(_))))
        .filter(|o| {
            let nested = o.key[root.len()..]
                .rfind("/generations/")
                .map(|i| &o.key[..root.len() + i]);
            !nested.is_some_and(|p| matches!(parse_key(p, &o.key), Ok(Some(_))))
        })
        .map(|o| StrayObject {
            key: o.key.clone(),
            size: o.size,
        })
        .collect()
}

/// The database prefixes that have objects in a listing (of a bucket, or
/// of a parent prefix): every key of the form
/// `<prefix>/generations/<generation>/...` that parses as a walsync object.
/// Used by `restore-all` to find what to restore when there is no config.
pub fn discover_prefixes(listing: &[ObjectMeta]) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    for o in listing {
        // The last "/generations/" is the one that belongs to walsync: a
        // prefix may itself contain a component named "generations".
        if let Some(i) = o.key.rfind("/generations/") {
            let prefix = &o.key[..i];
            if !prefix.is_empty() && matches!(parse_key(prefix, &o.key), Ok(Some(_))) {
                found.insert(prefix.to_string());
            }
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strays_are_every_key_of_the_prefix_that_is_not_a_walsync_object() {
        let meta = |key: &str| ObjectMeta {
            key: key.to_string(),
            size: 3,
        };
        let snap = snapshot_key("db", 1, 1, 10);
        let nested = snapshot_key("db/inner", 1, 1, 10);
        let listing = [
            meta("db/lease"),
            meta("db/lease.probe"),
            meta("db/notes.txt"),
            meta(&snap),
            meta("db/generations/0000000000000001/snapshots/x.snap"),
            meta("db/generations/0000000000000001/README"),
            meta(&mark_key("db", 1, 2, 11)),
            meta(&segment_key("db", 1, 2, 3, 11, 12)),
            meta(&nested),
            meta("db/inner/generations/0000000000000001/snapshots/junk"),
            meta("db2/notes.txt"),
        ];
        let keys: Vec<String> = stray_objects("db", &listing)
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(
            keys,
            [
                "db/notes.txt",
                "db/generations/0000000000000001/snapshots/x.snap",
                "db/generations/0000000000000001/README",
                "db/inner/generations/0000000000000001/snapshots/junk",
            ]
        );
        // What restore uses is unchanged by them.
        let (objects, _) = parse_listing_lenient("db", &listing);
        assert_eq!(objects.len(), 3);
        let stray = &stray_objects("db", &listing)[0];
        assert!(
            stray.to_string().contains("\"db/notes.txt\" (3 bytes)"),
            "{stray}"
        );
        assert!(stray_objects("db", &listing[3..4]).is_empty());
        // The lease and its probe are walsync's, outside the backup.
        assert!(stray_objects("db", &listing[..2]).is_empty());
    }

    #[test]
    fn keys_round_trip() {
        let k = snapshot_key("tenants/acme", 1, 7, 0x18f0_0000_0000);
        assert_eq!(
            k,
            "tenants/acme/generations/0000000000000001/snapshots/0000000000000007-000018f000000000.snap"
        );
        assert_eq!(
            parse_key("tenants/acme", &k),
            Ok(Some((
                1,
                ObjectKind::Snapshot {
                    txid: 7,
                    time_ms: 0x18f0_0000_0000
                }
            )))
        );
        let s = segment_key("a", 2, 3, 4, 5, 6);
        assert_eq!(
            parse_key("a", &s),
            Ok(Some((
                2,
                ObjectKind::Segment {
                    first_txid: 3,
                    last_txid: 4,
                    first_time_ms: 5,
                    last_time_ms: 6
                }
            )))
        );
        assert_eq!(parse_key("a", "b/generations/x"), Ok(None));
        assert_eq!(parse_key("a", "a/other"), Ok(None));
    }

    #[test]
    fn keys_sort_in_replay_order() {
        let mut seed = 99u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 20
        };
        for _ in 0..1000 {
            let (a, b) = (next(), next());
            let ka = segment_key("p", 1, a, a, 0, 0);
            let kb = segment_key("p", 1, b, b, 0, 0);
            assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }
    }

    #[test]
    fn bad_keys_are_named() {
        for k in [
            "p/generations/zz/snapshots/0000000000000001-0000000000000001.snap",
            "p/generations/0000000000000001/snapshots/1-1.snap",
            "p/generations/0000000000000001/snapshots/0000000000000001-0000000000000001.seg",
            "p/generations/0000000000000001/segments/0000000000000002-0000000000000001-0000000000000000-0000000000000000.seg",
            "p/generations/0000000000000001/other/x",
            "p/generations/0000000000000001",
            "p/generations/0000000000000001/snapshots/0000000000000001-000000000000000A.snap",
            "p/generations/0000000000000001/snapshots/a/b",
        ] {
            let e = parse_key("p", k).unwrap_err();
            assert!(e.to_string().contains(k));
        }
    }

    #[test]
    fn prefixes_are_discovered_from_a_listing() {
        let keys = [
            snapshot_key("edge/node-1/cache", 1, 1, 5),
            segment_key("edge/node-1/cache", 1, 2, 3, 6, 7),
            snapshot_key("edge/node-1/generations/x", 4, 4, 5),
            snapshot_key("tenants/acme", 9, 9, 9),
            "tenants/acme/generations/junk".to_string(),
            "other/file.txt".to_string(),
            "generations/0000000000000001/snapshots/0000000000000001-0000000000000001.snap"
                .to_string(),
        ];
        let listing: Vec<ObjectMeta> = keys
            .iter()
            .map(|k| ObjectMeta {
                key: k.clone(),
                size: 1,
            })
            .collect();
        assert_eq!(
            discover_prefixes(&listing),
            vec![
                "edge/node-1/cache",
                "edge/node-1/generations/x",
                "tenants/acme"
            ]
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! Keys come from bucket listings, which anything may have written to.
    use super::*;
    use crate::testing::fuzz_text;

    #[test]
    fn listed_keys_never_panic() {
        let keys = [
            snapshot_key("tenants/acme", 1, 1, 5),
            segment_key("tenants/acme", 1, 2, 3, 6, 7),
            mark_key("tenants/acme", 1, 3, 7),
            snapshot_key("a/generations/b", 4, 4, 5),
        ];
        let valid: Vec<&str> = keys.iter().map(String::as_str).collect();
        fuzz_text("object key parser", 0x6e75_0001, 3000, &valid, |key| {
            let listing = [ObjectMeta {
                key: key.to_string(),
                size: 1,
            }];
            let parsed = parse_key("tenants/acme", key).is_ok_and(|k| k.is_some());
            let _ = parse_listing("tenants/acme", &listing);
            !discover_prefixes(&listing).is_empty() | parsed
        });
    }
}
