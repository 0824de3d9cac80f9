//! Fleet listings: which LISTs a command over many databases (`restore-all`,
//! `verify`, `list`) makes, and how their keys are cut into each database's
//! own listing.
//!
//! A LIST is the dear request: on AWS it costs ten GETs, and some servers
//! (s3s-fs) walk the whole bucket for every page. So a command over many
//! databases lists each parent prefix once (`tenants/` for `tenants/a`,
//! `tenants/b`, …) instead of each database, and then gives every database
//! [`slice`] of that listing: exactly the objects `Storage::list` of its
//! root (`<prefix>/`) would have returned, so restore, `list` and the stray
//! rules see what they saw before. [`listing_roots`] decides what to list.
//! Pure: no I/O, the caller lists.

use crate::storage::fetch::{self, Limits};
use crate::storage::ObjectMeta;

/// Fewest databases sharing a parent for which the parent is listed once
/// rather than each of them. Fewer cost few LISTs anyway (made in
/// parallel); from this many on, listing the parent costs fewer requests
/// unless it holds more than about a thousand objects per selected database
/// that are not theirs (one page holds 1,000 keys).
pub const GROUP_MIN: usize = 8;

/// The key prefixes to list so that every database of `prefixes` is
/// covered, and so is each root of `more` (e.g. the fixed part of a
/// `[[directories]]` template, listed to discover backups of databases
/// whose files are gone). Databases are grouped by parent (what comes
/// before their last `/`): a parent with at least [`GROUP_MIN`] of them is
/// listed once (`<parent>/`), otherwise each database is (`<prefix>/`).
/// Top-level prefixes are always listed one by one: the bucket as a whole
/// may hold anything. A root inside another root is dropped (its keys are
/// in the other's listing). Sorted, and none starts with another, so their
/// listings, one after the other in this order, are one sorted listing.
pub fn listing_roots(prefixes: &[String], more: &[String]) -> Vec<String> {
    let mut by_parent: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for p in prefixes {
        let parent = p.rfind('/').map_or("", |i| &p[..i]);
        by_parent.entry(parent).or_default().push(p);
    }
    let mut roots: Vec<String> = more.to_vec();
    for (parent, group) in by_parent {
        if parent.is_empty() || group.len() < GROUP_MIN {
            roots.extend(group.iter().map(|p| format!("{p}/")));
        } else {
            roots.push(format!("{parent}/"));
        }
    }
    roots.sort();
    // Sorted, a root that starts with another comes after it, with only
    // roots that also start with it in between.
    let mut kept: Vec<String> = Vec::new();
    for root in roots {
        if !kept.last().is_some_and(|k| root.starts_with(k.as_str())) {
            kept.push(root);
        }
    }
    kept
}

/// Databases whose keys one range of a split listing covers: about 900
/// keys (a snapshot, a mark and a lease each), one page of 1,000; more
/// with segments. A page is what a server serves at once: on s3s-fs each
/// walks the whole bucket, so fewer, fuller ranges cost it less.
pub const DATABASES_PER_RANGE: usize = 300;

/// One part of the listing of `root`: the keys under it after `after` (if
/// any) up to and including `through` (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRange {
    pub root: String,
    pub after: Option<String>,
    pub through: Option<String>,
}

impl ListRange {
    /// The prefix to list the range with: the root, or, between two bounds,
    /// what the bounds have in common (every key after the one and not
    /// after the other starts with it). A server that filters by prefix
    /// before anything else (s3s-fs reads the size of every key under the
    /// prefix for each page) then does the work of this range only.
    pub fn prefix(&self) -> &str {
        let (Some(after), Some(through)) = (&self.after, &self.through) else {
            return &self.root;
        };
        let mut same = after
            .bytes()
            .zip(through.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        while !after.is_char_boundary(same) {
            same -= 1;
        }
        if same > self.root.len() {
            &after[..same]
        } else {
            &self.root
        }
    }
}

/// Deepest a config-less command looks for where to cut its listing
/// ([`Cutter::only_folder`]): `""` → `tenants/` → `tenants/eu/` → ….
pub const MAX_LOOKS: usize = 4;

/// Cuts the listing of a root into parts at the "folders" under it as they
/// are found (`Storage::list_children`, page after page), every
/// `per_range` of them, so that each part can be listed while the folders
/// are still being found: a config-less command knows no database before
/// it lists. Where the cuts fall never decides what is listed: the parts,
/// with the rest after the last cut, hold every key under the root once.
#[derive(Debug)]
pub struct Cutter {
    per_range: usize,
    found: usize,
    since_cut: usize,
    last_cut: Option<String>,
    only: Option<String>,
}

impl Cutter {
    pub fn new(per_range: usize) -> Cutter {
        Cutter {
            per_range: per_range.max(1),
            found: 0,
            since_cut: 0,
            last_cut: None,
            only: None,
        }
    }

    /// A folder found (`tenants/db00042/`): the bounds (after, through) of
    /// a part to list now, once every `per_range` folders, cut at the
    /// database the folder would be (`tenants/db00042`). A folder that does
    /// not come after the last cut is passed over, so the cuts only ever
    /// grow, whatever order a server gives them in: parts never overlap
    /// nor leave a gap.
    pub fn folder(&mut self, folder: &str) -> Option<(Option<String>, String)> {
        let at = folder.strip_suffix('/').unwrap_or(folder);
        if at.is_empty() || self.last_cut.as_deref().is_some_and(|c| at <= c) {
            return None;
        }
        self.found += 1;
        self.only = (self.found == 1).then(|| folder.to_string());
        self.since_cut += 1;
        if self.since_cut < self.per_range {
            return None;
        }
        self.since_cut = 0;
        let after = self.last_cut.replace(at.to_string());
        Some((after, at.to_string()))
    }

    /// The one folder found, if it was only one and not a database's own
    /// (`<prefix>/generations/`): look inside it rather than list whole
    /// (the bucket's root often holds one, `tenants/`). Nothing was cut
    /// then (unless `per_range` is 1).
    pub fn only_folder(&self) -> Option<&str> {
        self.only
            .as_deref()
            .filter(|f| self.last_cut.is_none() && f.rsplit('/').nth(1) != Some("generations"))
    }

    /// Where the last part starts: after the last cut, to the end.
    pub fn rest(self) -> Option<String> {
        self.last_cut
    }
}

/// The listings that cover `roots` (from [`listing_roots`]), each root cut
/// into ranges of about `per_range` of the known databases (`prefixes`)
/// under it when it holds at least two ranges' worth, so that they can be
/// listed at once: a listing's pages come one after another (each needs
/// the last one's continuation token), and a root with 10,000 databases
/// is 30 of them. The ranges of a root meet at a database's prefix and
/// together hold every key under it once, whatever keys there are (also
/// of databases not in `prefixes`). In order: their listings, one after
/// the other, are one sorted listing.
pub fn listing_ranges(roots: &[String], prefixes: &[String], per_range: usize) -> Vec<ListRange> {
    let mut sorted: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let per_range = per_range.max(1);
    let mut ranges = Vec::new();
    for root in roots {
        let start = sorted.partition_point(|p| *p < root.as_str());
        let under = &sorted[start..];
        let under = &under[..under.partition_point(|p| p.starts_with(root.as_str()))];
        let mut after: Option<String> = None;
        if under.len() >= per_range.saturating_mul(2) {
            for bound in under.iter().step_by(per_range).skip(1) {
                let through = Some(bound.to_string());
                ranges.push(ListRange {
                    root: root.clone(),
                    after: after.replace(bound.to_string()),
                    through,
                });
            }
        }
        ranges.push(ListRange {
            root: root.clone(),
            after,
            through: None,
        });
    }
    ranges
}

/// The objects of `listing` (sorted by key, covering `<prefix>/`) that a
/// listing of `<prefix>/` holds.
pub fn slice<'a>(listing: &'a [ObjectMeta], prefix: &str) -> &'a [ObjectMeta] {
    let root = format!("{prefix}/");
    let start = listing.partition_point(|o| o.key.as_str() < root.as_str());
    let len = listing[start..].partition_point(|o| o.key.starts_with(&root));
    &listing[start..start + len]
}

/// How each of `jobs` restores running at once downloads: one restore
/// alone gets `fetch::DEFAULT`; many share about twice its read-ahead and
/// eight ranges in flight between them, at least one chunk and one worker
/// each, so memory stays bounded whatever `--jobs` is.
pub fn fetch_limits(jobs: usize) -> Limits {
    let d = fetch::DEFAULT;
    let jobs = jobs.max(1);
    Limits {
        workers: (8 / jobs).clamp(1, d.workers),
        ahead_bytes: (2 * d.ahead_bytes / jobs as u64).clamp(d.chunk_bytes, d.ahead_bytes),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parents_with_many_databases_are_listed_once_the_rest_one_by_one() {
        let tenants: Vec<String> = (0..GROUP_MIN).map(|i| format!("tenants/t{i}")).collect();
        let few: Vec<String> = (0..GROUP_MIN - 1).map(|i| format!("svc/s{i}")).collect();
        let top: Vec<String> = (0..GROUP_MIN).map(|i| format!("app{i}")).collect();
        let roots = |p: &[&[String]], more: &[&str]| listing_roots(&p.concat(), &strings(more));
        for (prefixes, more, expected) in [
            (vec![&tenants[..]], vec![], vec!["tenants/".to_string()]),
            (vec![&tenants[..1]], vec![], vec!["tenants/t0/".to_string()]),
            (
                vec![&few[..]],
                vec![],
                few.iter().map(|p| format!("{p}/")).collect(),
            ),
            // The bucket root is never listed for a config's databases.
            (
                vec![&top[..]],
                vec![],
                top.iter().map(|p| format!("{p}/")).collect(),
            ),
            // A deep database alone is listed alone, and one under a listed
            // parent or directory root is not listed again.
            (
                vec![&tenants[..], &strings(&["tenants/eu/x", "a/b/c/d"])[..]],
                vec![],
                strings(&["a/b/c/d/", "tenants/"]),
            ),
            (
                vec![&few[..2]],
                vec!["svc/", "svc/s0/x"],
                strings(&["svc/"]),
            ),
            // Directory roots need not end at a '/'.
            (
                vec![&strings(&["t/db-1", "u/v"])[..]],
                vec!["t/db-"],
                strings(&["t/db-", "u/v/"]),
            ),
            (vec![&tenants[..]], vec![""], strings(&[""])),
            (vec![], vec![], vec![]),
        ] {
            assert_eq!(roots(&prefixes, &more), expected, "{prefixes:?} {more:?}");
        }
    }

    /// The keys of `bucket` (sorted) that listing `ranges` one after the
    /// other gives, as a store would list each (`ListRange::prefix`, then
    /// the bounds).
    fn listed_by<'a>(ranges: &[ListRange], bucket: &'a [String]) -> Vec<&'a String> {
        ranges
            .iter()
            .flat_map(|r| {
                bucket.iter().filter(move |k| {
                    k.starts_with(r.prefix())
                        && crate::storage::in_range(k, r.after.as_deref(), r.through.as_deref())
                })
            })
            .collect()
    }

    #[test]
    fn every_database_is_covered_by_one_root() {
        let mut rng = crate::testing::Rng(7);
        let mut next = |n: u64| rng.below(n as usize) as u64;
        for _ in 0..300 {
            let prefixes: Vec<String> = (0..next(40))
                .map(|_| {
                    let depth = 1 + next(3);
                    (0..depth)
                        .map(|_| format!("p{}", next(4)))
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .collect();
            let roots = listing_roots(&prefixes, &[]);
            for p in &prefixes {
                let covering = roots
                    .iter()
                    .filter(|r| format!("{p}/").starts_with(r.as_str()))
                    .count();
                assert_eq!(covering, 1, "{p} in {roots:?}");
            }
            assert!(roots.windows(2).all(|w| !w[1].starts_with(&w[0])));
            // Their listings, one after the other, are one sorted listing
            // holding every object of every database.
            let mut bucket: Vec<String> = prefixes
                .iter()
                .map(|p| keys::snapshot_key(p, 1, 1, 1))
                .chain(["p0-x/y".to_string(), "p1/p2/z".to_string()])
                .collect();
            bucket.sort();
            bucket.dedup();
            let listed: Vec<&String> = roots
                .iter()
                .flat_map(|r| bucket.iter().filter(move |k| k.starts_with(r.as_str())))
                .collect();
            assert!(listed.windows(2).all(|w| w[0] < w[1]), "{roots:?}");
            for p in &prefixes {
                assert!(listed.contains(&&keys::snapshot_key(p, 1, 1, 1)));
            }
            // Cut into ranges of a few of the databases (some of them not
            // under any root, one with a name that is another's plus more):
            // the same keys in the same order.
            let mut known = prefixes.clone();
            known.extend(["p0-x".to_string(), "p3/p0/".to_string(), "zz".to_string()]);
            let per_range = 1 + next(3) as usize;
            let ranges = listing_ranges(&roots, &known, per_range);
            assert_eq!(listed_by(&ranges, &bucket), listed, "{ranges:?}");
            assert!(ranges.iter().all(|r| r.prefix().starts_with(&r.root)));
            for root in &roots {
                let under = known
                    .iter()
                    .filter(|p| p.starts_with(root.as_str()))
                    .count();
                let cut = ranges.iter().filter(|r| &r.root == root).count();
                assert!(cut == 1 || under >= 2 * per_range, "{root}: {ranges:?}");
            }
        }
    }

    #[test]
    fn a_root_with_many_databases_is_listed_in_ranges_that_meet_at_one() {
        let tenants: Vec<String> = (0..1000).map(|i| format!("tenants/t{i:04}")).collect();
        let roots = vec!["solo/".to_string(), "tenants/".to_string()];
        let range = |after: Option<&str>, through: Option<&str>| ListRange {
            root: "tenants/".into(),
            after: after.map(str::to_string),
            through: through.map(str::to_string),
        };
        let solo = ListRange {
            root: "solo/".into(),
            after: None,
            through: None,
        };
        assert_eq!(
            listing_ranges(&roots, &tenants, 400),
            vec![
                solo.clone(),
                range(None, Some("tenants/t0400")),
                range(Some("tenants/t0400"), Some("tenants/t0800")),
                range(Some("tenants/t0800"), None),
            ]
        );
        // Fewer than two ranges' worth: listed whole.
        assert_eq!(
            listing_ranges(&roots, &tenants, 501),
            vec![solo, range(None, None)]
        );
    }

    #[test]
    fn a_range_is_listed_by_what_its_bounds_share() {
        let range = |after: Option<&str>, through: Option<&str>| ListRange {
            root: "t/".into(),
            after: after.map(str::to_string),
            through: through.map(str::to_string),
        };
        // (after, through, the prefix listed)
        #[rustfmt::skip]
        let cases = [
            (None, None, "t/"),
            (None, Some("t/d01000"), "t/"),
            (Some("t/d01000"), None, "t/"),
            (Some("t/d01000"), Some("t/d01500"), "t/d01"),
            (Some("t/d00500"), Some("t/d01000"), "t/d0"),
            (Some("t/a"), Some("t/b"), "t/"),
            (Some("t/a"), Some("t/a/b"), "t/a"),
            (Some("t/\u{e9}1"), Some("t/\u{e9}2"), "t/\u{e9}"),
            // é and è share their first byte: cut at a character.
            (Some("t/\u{e9}"), Some("t/\u{e8}"), "t/"),
        ];
        for (after, through, prefix) in cases {
            assert_eq!(
                range(after, through).prefix(),
                prefix,
                "{after:?} {through:?}"
            );
        }
    }

    /// The parts a cutter makes of `folders` (with the rest), as ranges.
    fn cut(folders: &[&str], per_range: usize) -> Vec<ListRange> {
        let mut cutter = Cutter::new(per_range);
        let range = |after: Option<String>, through: Option<String>| ListRange {
            root: "t/".into(),
            after,
            through,
        };
        let mut parts: Vec<ListRange> = folders
            .iter()
            .filter_map(|f| cutter.folder(f))
            .map(|(after, through)| range(after, Some(through)))
            .collect();
        parts.push(range(cutter.rest(), None));
        parts
    }

    #[test]
    fn folders_cut_a_listing_every_few_as_they_come() {
        let bounds = |parts: Vec<ListRange>| -> Vec<(Option<String>, Option<String>)> {
            parts.into_iter().map(|r| (r.after, r.through)).collect()
        };
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            bounds(cut(&["t/a/", "t/b/", "t/c/", "t/d/", "t/e/"], 2)),
            vec![(None, s("t/b")), (s("t/b"), s("t/d")), (s("t/d"), None)]
        );
        // Out of order or repeated (a hostile server): passed over.
        assert_eq!(
            bounds(cut(&["t/c/", "t/d/", "t/a/", "t/d/", "t/e/", "t/f/"], 2)),
            vec![(None, s("t/d")), (s("t/d"), s("t/f")), (s("t/f"), None)]
        );
        assert_eq!(bounds(cut(&["t/a/"], 2)), vec![(None, None)]);
        assert_eq!(bounds(cut(&[], 2)), vec![(None, None)]);
    }

    #[test]
    fn one_folder_is_looked_inside_unless_it_is_a_databases_own() {
        let only = |folders: &[&str]| {
            let mut c = Cutter::new(500);
            for f in folders {
                c.folder(f);
            }
            c.only_folder().map(str::to_string)
        };
        assert_eq!(only(&["tenants/"]), Some("tenants/".into()));
        assert_eq!(only(&["tenants/eu/"]), Some("tenants/eu/".into()));
        assert_eq!(only(&["t/a/generations/"]), None);
        assert_eq!(only(&["generations/"]), None);
        assert_eq!(only(&["t/a/", "t/b/"]), None);
        assert_eq!(only(&[]), None);
    }

    #[test]
    fn parts_cut_at_any_folders_hold_every_key_once_in_order() {
        let mut rng = crate::testing::Rng(11);
        let mut next = |n: u64| rng.below(n as usize) as u64;
        let names = ["a", "b", "b0", "b/c", "é", "z", "a-"];
        for _ in 0..500 {
            let mut bucket: Vec<String> = (0..next(30))
                .map(|_| {
                    let name = names[next(names.len() as u64) as usize];
                    format!("t/{name}{}/k{}", next(3), next(2))
                })
                .chain(["t/x".to_string(), "s/y".to_string(), "u/z".to_string()])
                .collect();
            bucket.sort();
            bucket.dedup();
            // Folders the server says, in any order, some not in the bucket.
            let folders: Vec<String> = (0..next(12))
                .map(|_| {
                    let name = names[next(names.len() as u64) as usize];
                    format!("t/{name}{}/", next(4))
                })
                .collect();
            let folders: Vec<&str> = folders.iter().map(String::as_str).collect();
            let parts = cut(&folders, 1 + next(3) as usize);
            let under: Vec<&String> = bucket.iter().filter(|k| k.starts_with("t/")).collect();
            assert_eq!(listed_by(&parts, &bucket), under, "{folders:?}: {parts:?}");
        }
    }

    #[test]
    fn a_slice_is_what_listing_the_database_would_give() {
        let meta = |key: &str| ObjectMeta {
            key: key.to_string(),
            size: 1,
        };
        let keys = [
            keys::snapshot_key("t/a", 1, 1, 1),
            "t/a/notes.txt".to_string(),
            keys::snapshot_key("t/a/inner", 1, 1, 1),
            keys::snapshot_key("t/a-b", 1, 1, 1),
            keys::snapshot_key("t/a.b", 1, 1, 1),
            keys::snapshot_key("t/ab", 1, 1, 1),
            "t/a".to_string(),
            keys::snapshot_key("t/b", 1, 1, 1),
        ];
        let mut one: Vec<ObjectMeta> = keys.iter().map(|k| meta(k)).collect();
        one.sort_by(|a, b| a.key.cmp(&b.key));
        for prefix in ["t/a", "t/a/inner", "t/a-b", "t/ab", "t/b", "t/c", "t", "u"] {
            let root = keys::database_root(prefix);
            let want: Vec<&ObjectMeta> = one.iter().filter(|o| o.key.starts_with(&root)).collect();
            let got: Vec<&ObjectMeta> = slice(&one, prefix).iter().collect();
            assert_eq!(got, want, "{prefix}");
        }
        assert_eq!(slice(&one, "t/a").len(), 3);
        assert!(slice(&[], "t/a").is_empty());
    }

    #[test]
    fn many_restores_share_the_read_ahead_of_one() {
        let d = fetch::DEFAULT;
        assert_eq!(fetch_limits(1), d);
        assert_eq!(fetch_limits(0), d);
        let two = fetch_limits(2);
        assert_eq!((two.workers, two.ahead_bytes), (4, d.ahead_bytes));
        let many = fetch_limits(16);
        assert_eq!((many.workers, many.ahead_bytes), (1, d.chunk_bytes));
        for jobs in 1..200u64 {
            let l = fetch_limits(jobs as usize);
            assert!(l.workers >= 1 && l.ahead_bytes >= l.chunk_bytes);
            assert!(jobs * l.ahead_bytes <= (2 * d.ahead_bytes).max(jobs * d.chunk_bytes));
        }
    }
}
