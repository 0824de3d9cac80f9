//! `[[directories]]`: which files in a directory are databases to back up, and
//! under which prefix.
//!
//! The pure part decides from names alone: [`glob_match`] (the `pattern` on a
//! file name), [`is_candidate`] (pattern, `recursive`, and the files that are
//! never databases: SQLite's `-wal`, `-shm`, `-journal` and super-journal
//! files and hidden dot-files), and [`prefix_for`] (the `prefix` template
//! filled in for one file; the prefix and template rules live with the
//! object keys, in [`crate::keys::prefix`]). [`check_pattern`]
//! and [`check_template`] are what `config` uses to reject bad tables before
//! anything runs. The only I/O is [`scan`], a thin walk of one directory
//! that never follows a symlinked directory, never panics on what it finds,
//! and returns problems as lines for the caller to log instead of failing.
//!
//! It upholds DESIGN.md's prefix rule for discovered databases: one
//! database per prefix, no prefix inside another. `config` rules out
//! collisions between directories and with `[[databases]]`; [`scan`] rules
//! out collisions between two files of the same directory by backing up
//! neither.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::config::DirectoryConfig;
pub use crate::keys::prefix::{check_template, prefix_for, template_matches};

/// Name endings of SQLite's side files, which are never databases whatever
/// the pattern says.
const SIDE_FILE_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// One element of a compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This character exactly.
    Literal(char),
    /// `*`: any run of characters, including none.
    AnyRun,
    /// `?`: exactly one character.
    AnyOne,
    /// `[...]`: one character in (or, negated, not in) the inclusive ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Token {
    fn matches_one(&self, c: char) -> bool {
        match self {
            Token::Literal(l) => *l == c,
            Token::AnyRun | Token::AnyOne => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// Compiles a glob: `*`, `?`, `[abc]`, `[a-z]`, `[!a]`; a `]` right after
/// `[` or `[!` is a member, a `-` first or last in a class is literal.
/// Everything else is literal except `{`, `}` and `\`, which are rejected
/// because users expect them to mean something they do not here.
fn compile(pattern: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                // `**` means the same as `*`; one token keeps matching linear.
                if tokens.last() != Some(&Token::AnyRun) {
                    tokens.push(Token::AnyRun);
                }
            }
            '?' => tokens.push(Token::AnyOne),
            '[' => {
                let open = i - 1;
                let negated = chars.get(i) == Some(&'!');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&member) = chars.get(i) else {
                        return Err(format!(
                            "{pattern:?} has a '[' (character {}) that is not closed by ']'",
                            open + 1
                        ));
                    };
                    i += 1;
                    if member == ']' && !first {
                        break;
                    }
                    first = false;
                    let is_range = chars.get(i) == Some(&'-')
                        && chars.get(i + 1).is_some_and(|&end| end != ']');
                    if is_range {
                        let end = chars[i + 1];
                        i += 2;
                        if end < member {
                            return Err(format!(
                                "{pattern:?} has the range {member}-{end}, which is backwards; \
                                 write {end}-{member}"
                            ));
                        }
                        ranges.push((member, end));
                    } else {
                        ranges.push((member, member));
                    }
                }
                tokens.push(Token::Class { negated, ranges });
            }
            '{' | '}' => {
                return Err(format!(
                    "{pattern:?} contains {c:?}; alternatives such as {{db,sqlite}} are not \
                     supported (use `*` or a class such as `[ds]*`)"
                ))
            }
            '\\' => {
                return Err(format!(
                    "{pattern:?} contains '\\\\', which is not an escape here; match a special \
                     character with a class, e.g. `[*]` or `[?]`"
                ))
            }
            other => tokens.push(Token::Literal(other)),
        }
    }
    Ok(tokens)
}

/// Whether the compiled glob matches all of `name` (backtracking only to
/// the last `*`, so linear in practice and never exponential).
fn matches(tokens: &[Token], name: &[char]) -> bool {
    let (mut t, mut n) = (0, 0);
    // Where the last `*` was, and how much of the name it has eaten so far.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::AnyRun) => {
                star = Some((t, n));
                t += 1;
                continue;
            }
            Some(token) if token.matches_one(name[n]) => {
                t += 1;
                n += 1;
                continue;
            }
            _ => {}
        }
        let Some((star_t, star_n)) = star else {
            return false;
        };
        // Let the `*` eat one more character and try again after it.
        t = star_t + 1;
        n = star_n + 1;
        star = Some((star_t, star_n + 1));
    }
    tokens[t..].iter().all(|token| *token == Token::AnyRun)
}

/// Whether the glob `pattern` matches the whole file name `name`:
/// `*` any run of characters (including none), `?` one character, `[abc]`
/// one of a set, `[a-z]` one of a range, `[!a]` anything but. Case
/// sensitive. An invalid pattern (see [`check_pattern`]) matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match compile(pattern) {
        Ok(tokens) => matches(&tokens, &name.chars().collect::<Vec<_>>()),
        Err(_) => false,
    }
}

/// Checks a `pattern` of `[[directories]]`: a valid glob (see
/// [`glob_match`]) on a file name, which is not empty, has no `/`, and
/// could match something discovery keeps: a pattern ending in `-wal`,
/// `-shm` or `-journal`, or starting with `.`, could only match files that
/// are always skipped.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("the pattern is empty".to_string());
    }
    if pattern.contains('/') {
        return Err(format!(
            "{pattern:?} contains '/'; the pattern applies to the file name only (set \
             `recursive = true` to look in subdirectories)"
        ));
    }
    compile(pattern)?;
    if let Some(suffix) = SIDE_FILE_SUFFIXES.iter().find(|s| pattern.ends_with(**s)) {
        return Err(format!(
            "{pattern:?} only matches SQLite {suffix} files, which are never databases and are \
             always skipped"
        ));
    }
    if pattern.starts_with('.') {
        return Err(format!(
            "{pattern:?} only matches hidden files, which discovery always skips"
        ));
    }
    Ok(())
}

/// Whether `name` is one of SQLite's side files: `-wal`, `-shm`, `-journal`,
/// or a super-journal (`<db>-mj` + 9 hex digits, made by transactions over
/// several attached databases).
fn is_side_file(name: &str) -> bool {
    if SIDE_FILE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return true;
    }
    name.len() >= 12
        && name.is_char_boundary(name.len() - 12)
        && name[name.len() - 12..]
            .strip_prefix("-mj")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether the file at `relative` (below `dir.dir`) is a database to back
/// up, by its name alone: a plain relative path, in `dir.dir` itself unless
/// `dir.recursive`, no hidden (dot) component, not a SQLite side file, and
/// a file name that `dir.pattern` matches. Names that are not UTF-8 are
/// matched lossily, so that [`prefix_for`] can report them instead of their
/// being skipped in silence.
pub fn is_candidate(dir: &DirectoryConfig, relative: &Path) -> bool {
    let mut names = Vec::new();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return false;
        };
        names.push(name.to_string_lossy());
    }
    let Some(file_name) = names.last() else {
        return false;
    };
    if names.len() > 1 && !dir.recursive {
        return false;
    }
    if names.iter().any(|name| name.starts_with('.')) || is_side_file(file_name) {
        return false;
    }
    glob_match(&dir.pattern, file_name)
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
        }
    }

    #[test]
    fn glob_matches_what_it_should() {
        for (pattern, name) in [
            ("*.db", "acme.db"),
            ("*.db", ".db"),
            ("*.db", "a.b.db"),
            ("*", "anything"),
            ("*", ""),
            ("**", "x"),
            ("*.*", "a.b"),
            ("acme.db", "acme.db"),
            ("?", "a"),
            ("???.db", "abc.db"),
            ("a?c", "abc"),
            ("a*c", "ac"),
            ("a*c", "abbbc"),
            ("a*b*c", "aXbYbZc"),
            ("*b", "bbb"),
            ("*ab", "aab"),
            ("[abc].db", "b.db"),
            ("[a-z]*.db", "m1.db"),
            ("[a-cx-z]", "y"),
            ("[!a]", "b"),
            ("[!a-c]x", "dx"),
            ("[]]", "]"),
            ("[!]]", "a"),
            ("[-a]", "-"),
            ("[a-]", "-"),
            ("[*]", "*"),
            ("[?]", "?"),
            ("x]", "x]"),
            ("t-*.sqlite3", "t-1.sqlite3"),
            ("é*.db", "éa.db"),
            ("?.db", "é.db"),
            ("*.db", "tenant.db.db"),
        ] {
            assert!(
                glob_match(pattern, name),
                "{pattern:?} should match {name:?}"
            );
        }
    }

    #[test]
    fn glob_rejects_what_it_should() {
        for (pattern, name) in [
            ("*.db", "acme.sqlite"),
            ("*.db", "acme.db-wal"),
            ("*.db", "acme.DB"),
            ("*.db", "acme.dbx"),
            ("acme.db", "acme.db2"),
            ("acme.db", "xacme.db"),
            ("?", ""),
            ("?", "ab"),
            ("a*c", "abcd"),
            ("a*b*c", "aXbYb"),
            ("[abc].db", "d.db"),
            ("[a-z]", "A"),
            ("[a-z]", "ab"),
            ("[!a]", "a"),
            ("[!a-c]x", "bx"),
            ("[]]", "a"),
            ("", "a"),
            ("a", ""),
            // Invalid patterns match nothing.
            ("[abc", "a"),
            ("[z-a]", "m"),
            ("{a,b}", "a"),
        ] {
            assert!(
                !glob_match(pattern, name),
                "{pattern:?} should not match {name:?}"
            );
        }
    }

    #[test]
    fn glob_with_many_stars_is_fast() {
        let pattern = "*a*a*a*a*a*a*a*a*a*a*b";
        let name = "a".repeat(5_000);
        assert!(!glob_match(pattern, &name));
        assert!(glob_match(pattern, &format!("{name}b")));
    }

    #[test]
    fn patterns_are_checked() {
        for good in ["*.db", "*", "tenant-?.sqlite3", "[a-m]*.db", "[!.]*", "x]"] {
            assert_eq!(check_pattern(good), Ok(()), "{good:?}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("[abc", "not closed"),
            ("*.[db", "not closed"),
            ("[!]", "not closed"),
            ("[]", "not closed"),
            ("[z-a]", "backwards"),
            ("sub/*.db", "file name only"),
            ("*.{db,sqlite}", "alternatives"),
            ("\\*.db", "not an escape"),
            ("*-wal", "-wal"),
            ("*.db-shm", "-shm"),
            ("*-journal", "-journal"),
            (".*.db", "hidden"),
        ] {
            let err = check_pattern(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
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
            let dir = std::env::temp_dir()
                .join(format!("walsync-discovery-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
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

#[cfg(test)]
mod fuzz {
    //! Patterns come from the config, file names from the disk: neither may
    //! make discovery panic.
    use super::*;
    use crate::testing::fuzz_text;

    const PATTERNS: &[&str] = &[
        "*.db",
        "[a-m]*.db",
        "[!.]*",
        "tenant-?.sqlite3",
        "x]",
        "[]a-]",
    ];
    const NAMES: &[&str] = &[
        "acme.db",
        "eu/acme.db",
        "a.b.db",
        "x.db-mj1A2B3C901",
        "é.db",
    ];

    #[test]
    fn glob_patterns_never_panic() {
        fuzz_text("glob pattern check", 0xd15c_0001, 3000, PATTERNS, |p| {
            check_pattern(p).is_ok()
        });
        fuzz_text("glob matcher", 0xd15c_0002, 3000, PATTERNS, |p| {
            glob_match(p, "acme.db") | glob_match(p, "é€😀.db") | glob_match(p, p)
        });
        fuzz_text("glob matcher (names)", 0xd15c_0003, 3000, NAMES, |name| {
            PATTERNS.iter().any(|p| glob_match(p, name))
        });
    }

    #[test]
    fn candidates_never_panic() {
        fuzz_text("candidate check", 0xd15c_0007, 3000, NAMES, |name| {
            let dir = DirectoryConfig {
                dir: PathBuf::from("/d"),
                pattern: "*".to_string(),
                recursive: true,
                prefix_template: "t/{path}".to_string(),
                sync_interval: std::time::Duration::from_secs(1),
                snapshot_interval: std::time::Duration::from_secs(1),
                checkpoint_threshold: 1,
                truncate_threshold: 1,
                retention: None,
            };
            is_candidate(&dir, Path::new(name))
        });
    }
}
