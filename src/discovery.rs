//! `[[directories]]`: which databases a directory holds now, and under
//! which prefix.
//!
//! The rules are pure and live where `config` can use them too, without
//! depending on this module: [`crate::file_pattern`] decides from a file's
//! name whether it is a database to back up ([`is_candidate`] applies a
//! table's `pattern` and `recursive`), and [`crate::keys::prefix`] fills in
//! the table's `prefix` template for it ([`prefix_for`]). The only I/O is
//! [`scan`], a thin walk of one directory that never follows a symlinked
//! directory, never panics on what it finds, and returns problems as lines
//! for the caller to log instead of failing.
//!
//! It upholds ARCHITECTURE.md invariant 13 for discovered databases: one
//! database per prefix, no prefix inside another. `config` rules out
//! collisions between directories and with `[[databases]]`; [`scan`] rules
//! out collisions between two files of the same directory by backing up
//! neither.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::DirectoryConfig;
use crate::file_pattern;
use crate::keys::prefix::prefix_for;
// Used from here by `cmd`.
pub use crate::keys::prefix::{check_template, template_matches};

/// Whether the file at `relative` (below `dir.dir`) is a database to back
/// up, by its name alone: [`file_pattern::is_candidate`] with the table's
/// `pattern` and `recursive`.
pub fn is_candidate(dir: &DirectoryConfig, relative: &Path) -> bool {
    file_pattern::is_candidate(&dir.pattern, dir.recursive, relative)
}

/// The databases in `dir` now: every regular file that [`is_candidate`]
/// accepts, with its absolute path (when `dir.dir` is absolute, as it is in
/// a loaded config) and its prefix from [`prefix_for`], sorted by path.
/// Subdirectories are searched when `dir.recursive`, hidden ones and
/// symlinked ones never. The second list holds one human-readable line per
/// problem for the caller to log: a missing or unreadable directory, a file
/// whose name gives no valid prefix, a symlink that matches the pattern,
/// files whose prefixes collide (none of those is backed up: which one owns
/// the prefix cannot be known).
pub fn scan(dir: &DirectoryConfig) -> (Vec<(PathBuf, String)>, Vec<String>) {
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    let mut problems = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(below) = pending.pop() {
        let here = dir.dir.join(&below);
        let entries = match std::fs::read_dir(&here) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && below.as_os_str().is_empty() => {
                problems.push(format!(
                    "{}: the directory does not exist; nothing is discovered there until it is \
                     created",
                    here.display()
                ));
                continue;
            }
            Err(e) => {
                problems.push(format!(
                    "{}: cannot read the directory: {e}",
                    here.display()
                ));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    problems.push(format!(
                        "{}: cannot read the directory: {e}",
                        here.display()
                    ));
                    continue;
                }
            };
            let relative = below.join(entry.file_name());
            let path = here.join(entry.file_name());
            // `DirEntry::file_type` does not follow symlinks.
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(e) => {
                    problems.push(format!("{}: cannot stat: {e}", path.display()));
                    continue;
                }
            };
            if file_type.is_dir() {
                let hidden = entry.file_name().to_string_lossy().starts_with('.');
                if dir.recursive && !hidden {
                    pending.push(relative);
                }
            } else if !is_candidate(dir, &relative) {
                continue;
            } else if file_type.is_file() {
                match prefix_for(&dir.prefix_template, &relative) {
                    Ok(prefix) => found.push((path, prefix)),
                    Err(problem) => {
                        problems.push(format!("{} is not backed up: {problem}", path.display()))
                    }
                }
            } else if file_type.is_symlink() {
                problems.push(format!(
                    "{} is a symbolic link and is not backed up; list its target in \
                     [[databases]] instead",
                    path.display()
                ));
            }
        }
    }
    let kept = drop_colliding(found, &mut problems);
    (kept, problems)
}

/// Removes every file whose prefix equals another's or is a parent of it
/// (by whole components), reporting each pair; sorts the rest by path.
fn drop_colliding(
    mut found: Vec<(PathBuf, String)>,
    problems: &mut Vec<String>,
) -> Vec<(PathBuf, String)> {
    found.sort();
    let mut by_prefix: HashMap<&str, usize> = HashMap::new();
    let mut colliding = vec![false; found.len()];
    let mut pairs = Vec::new();
    for (i, (_, prefix)) in found.iter().enumerate() {
        if let Some(&first) = by_prefix.get(prefix.as_str()) {
            pairs.push((first, i));
        } else {
            by_prefix.insert(prefix, i);
        }
    }
    for (i, (_, prefix)) in found.iter().enumerate() {
        for (slash, _) in prefix.match_indices('/') {
            if let Some(&parent) = by_prefix.get(&prefix[..slash]) {
                pairs.push((parent, i));
            }
        }
    }
    pairs.sort();
    for &(a, b) in &pairs {
        colliding[a] = true;
        colliding[b] = true;
        let relation = if found[a].1 == found[b].1 {
            "the same prefix"
        } else {
            "prefixes one inside the other"
        };
        problems.push(format!(
            "{} ({:?}) and {} ({:?}) would have {relation}, so neither is backed up; rename one, \
             or use {{path}} in the template",
            found[a].0.display(),
            found[a].1,
            found[b].0.display(),
            found[b].1,
        ));
    }
    found
        .into_iter()
        .zip(colliding)
        .filter_map(|(entry, colliding)| (!colliding).then_some(entry))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn directory(dir: &Path, pattern: &str, recursive: bool, template: &str) -> DirectoryConfig {
        DirectoryConfig {
            dir: dir.to_path_buf(),
            pattern: pattern.to_string(),
            recursive,
            prefix_template: template.to_string(),
            sync_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(3600),
            checkpoint_threshold: 4 << 20,
            truncate_threshold: 64 << 20,
            retention: None,
            encryption: None,
        }
    }

    #[test]
    fn candidates_follow_pattern_recursion_and_skip_side_and_hidden_files() {
        let flat = directory(Path::new("/d"), "*.db", false, "t/{name}");
        let deep = directory(Path::new("/d"), "*.db", true, "t/{path}");
        let every = directory(Path::new("/d"), "*", true, "t/{path}");
        for (dir, relative, expected) in [
            (&flat, "a.db", true),
            (&flat, "a.sqlite", false),
            (&flat, "sub/a.db", false),
            (&deep, "sub/a.db", true),
            (&deep, "sub/deeper/a.db", true),
            (&flat, ".a.db", false),
            (&deep, ".git/a.db", false),
            (&deep, "sub/.hidden.db", false),
            (&every, "a.db-wal", false),
            (&every, "a.db-shm", false),
            (&every, "a.db-journal", false),
            (&every, "a.db-mj1A2B3C901", false),
            (&every, "a.db-mj", true),
            (&every, "a-wal.db", true),
            (&every, "anything", true),
            (&every, "", false),
            (&every, "../a.db", false),
            (&every, "/d/a.db", false),
            (&every, "./a.db", false),
        ] {
            assert_eq!(
                is_candidate(dir, Path::new(relative)),
                expected,
                "{relative:?} with {:?} recursive={}",
                dir.pattern,
                dir.recursive
            );
        }
    }

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            Scratch(crate::testing::fresh_dir(&format!("discovery-{name}")))
        }

        fn touch(&self, relative: &str) -> PathBuf {
            let path = self.0.join(relative);
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&path, b"").expect("write");
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tree(scratch: &Scratch) {
        for file in [
            "acme.db",
            "acme.db-wal",
            "acme.db-shm",
            "globex.db",
            "globex.db-journal",
            "notes.txt",
            ".hidden.db",
            "my db.db",
            "eu/initech.db",
            "eu/deeper/umbrella.db",
            ".snapshots/old.db",
        ] {
            scratch.touch(file);
        }
    }

    fn prefixes(found: &[(PathBuf, String)]) -> Vec<&str> {
        found.iter().map(|(_, p)| p.as_str()).collect()
    }

    #[test]
    fn scan_finds_matching_files_in_the_directory_only() {
        let scratch = Scratch::new("flat");
        tree(&scratch);
        let dir = directory(&scratch.0, "*.db", false, "tenants/{name}");
        let (found, problems) = scan(&dir);
        assert_eq!(
            found,
            vec![
                (scratch.0.join("acme.db"), "tenants/acme".to_string()),
                (scratch.0.join("globex.db"), "tenants/globex".to_string()),
            ]
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("my db.db"), "{problems:?}");
    }

    #[test]
    fn scan_recurses_when_asked_and_sorts_by_path() {
        let scratch = Scratch::new("deep");
        tree(&scratch);
        let dir = directory(&scratch.0, "*.db", true, "tenants/{path}");
        let (found, problems) = scan(&dir);
        assert_eq!(
            prefixes(&found),
            [
                "tenants/acme",
                "tenants/eu/deeper/umbrella",
                "tenants/eu/initech",
                "tenants/globex",
            ]
        );
        let paths: Vec<&PathBuf> = found.iter().map(|(p, _)| p).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        assert!(found.iter().all(|(p, _)| p.is_absolute()));
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn scan_reports_colliding_prefixes_and_keeps_neither() {
        let scratch = Scratch::new("collide");
        for file in ["a.db", "eu/a.db", "b.db", "b/c.db", "ok.db"] {
            scratch.touch(file);
        }
        let by_name = directory(&scratch.0, "*.db", true, "t/{name}");
        let (found, problems) = scan(&by_name);
        // Sorted by path, component by component: b/c.db before b.db.
        assert_eq!(prefixes(&found), ["t/c", "t/b", "t/ok"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("a.db") && problems[0].contains("the same prefix"),
            "{problems:?}"
        );

        let by_path = directory(&scratch.0, "*.db", true, "t/{path}");
        let (found, problems) = scan(&by_path);
        assert_eq!(prefixes(&found), ["t/a", "t/eu/a", "t/ok"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("one inside the other"), "{problems:?}");

        scratch.touch("a.sqlite");
        let any = directory(&scratch.0, "*", false, "t/{name}");
        let (found, problems) = scan(&any);
        assert_eq!(prefixes(&found), ["t/b", "t/ok"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_missing_directory_is_a_problem_not_a_panic() {
        let scratch = Scratch::new("missing");
        let dir = directory(&scratch.0.join("nope"), "*.db", true, "t/{name}");
        let (found, problems) = scan(&dir);
        assert!(found.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("does not exist"), "{problems:?}");

        let file = scratch.touch("plain-file");
        let (found, problems) = scan(&directory(&file, "*", false, "t/{name}"));
        assert!(found.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[cfg(unix)]
    #[test]
    fn scan_follows_no_symlinks() {
        let scratch = Scratch::new("symlinks");
        let elsewhere = Scratch::new("symlinks-target");
        let target = elsewhere.touch("sub/outside.db");
        scratch.touch("real.db");
        std::os::unix::fs::symlink(elsewhere.0.join("sub"), scratch.0.join("linked")).unwrap();
        std::os::unix::fs::symlink(&target, scratch.0.join("link.db")).unwrap();
        std::os::unix::fs::symlink(&target, scratch.0.join("link.txt")).unwrap();
        let dir = directory(&scratch.0, "*.db", true, "t/{path}");
        let (found, problems) = scan(&dir);
        assert_eq!(prefixes(&found), ["t/real"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("link.db"), "{problems:?}");
    }

    #[cfg(unix)]
    #[test]
    fn an_unreadable_subdirectory_is_a_problem() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = Scratch::new("unreadable");
        scratch.touch("a.db");
        scratch.touch("locked/b.db");
        let locked = scratch.0.join("locked");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let readable_anyway = std::fs::read_dir(&locked).is_ok(); // e.g. running as root
        let (found, problems) = scan(&directory(&scratch.0, "*.db", true, "t/{path}"));
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        if readable_anyway {
            assert_eq!(prefixes(&found), ["t/a", "t/locked/b"]);
        } else {
            assert_eq!(prefixes(&found), ["t/a"]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("locked"), "{problems:?}");
        }
    }
}
