//! The `pattern` of a `[[directories]]` table: which file names in a
//! directory are databases to back up.
//!
//! A glob on the file name ([`glob_match`], checked by [`check_pattern`])
//! plus the names that are never databases whatever the pattern says:
//! SQLite's `-wal`, `-shm`, `-journal` and super-journal files and hidden
//! dot-files ([`is_candidate`]). Pure: decides from names alone, never
//! touches the filesystem, so `config` can ask it whether a listed database
//! would also be discovered, and `discovery` whether a file it walks past is
//! one to back up.

use std::path::{Component, Path};

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

/// Whether the file at `relative` (below a `[[directories]]` `dir`) is a
/// database to back up, by its name alone: a plain relative path, in the
/// directory itself unless `recursive`, no hidden (dot) component, not a
/// SQLite side file, and a file name that `pattern` matches. Names that are
/// not UTF-8 are matched lossily, so that [`crate::keys::prefix::prefix_for`]
/// can report them instead of their being skipped in silence.
pub fn is_candidate(pattern: &str, recursive: bool, relative: &Path) -> bool {
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
    if names.len() > 1 && !recursive {
        return false;
    }
    if names.iter().any(|name| name.starts_with('.')) || is_side_file(file_name) {
        return false;
    }
    glob_match(pattern, file_name)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn side_files_are_the_wal_shm_journal_and_super_journal() {
        for (name, side) in [
            ("a.db-wal", true),
            ("a.db-shm", true),
            ("a.db-journal", true),
            ("-wal", true),
            ("a.db-mj1A2B3C901", true),
            ("a.db-mj012345678", true),
            ("a.db-mjXA2B3C901", false),
            ("a.db-mj1A2B3C90", false),
            ("a.db-mj", false),
            ("a-wal.db", false),
            ("a.db", false),
            ("éa.db-mj1A2B3C901", true),
            ("é-mj12345678", false),
            ("", false),
        ] {
            assert_eq!(is_side_file(name), side, "{name:?}");
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
            is_candidate("*", true, Path::new(name))
        });
    }
}
