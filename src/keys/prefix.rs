//! Prefixes: the part of every object key that says which database the
//! object belongs to, and the `prefix` templates of `[[directories]]` that
//! make one prefix per discovered database.
//!
//! [`validate_prefix`] is the one rule every prefix obeys, wherever it comes
//! from (a `[[databases]]` table, a filled-in template, a flag): no prefix can
//! escape a directory (`..`) or hold a character some storage cannot. The
//! template rules ([`check_template`], [`prefix_for`], [`template_matches`])
//! build on it. Shared by `config` (checks the file), `discovery` (names what
//! it finds), `restore` and `cmd` (check what the user typed). Pure: no I/O.

use std::collections::HashSet;
use std::path::{Component, Path};

/// Longest accepted prefix, in bytes (S3 keys may be 1024 bytes; the rest is
/// left for walsync's own names below the prefix).
pub const MAX_PREFIX_LEN: usize = 512;

/// Checks a database prefix: non-empty, at most [`MAX_PREFIX_LEN`] bytes,
/// `/`-separated components of `[A-Za-z0-9._-]` (at most 255 bytes each),
/// no leading or trailing `/`, no empty, `.` or `..` component. The error
/// says what is wrong and how to write it instead.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("the prefix is empty".to_string());
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "the prefix is {} bytes long; the limit is {MAX_PREFIX_LEN}",
            prefix.len()
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(format!(
            "{prefix:?} contains {bad:?}; only letters, digits, '.', '_', '-' and '/' are allowed"
        ));
    }
    if prefix.starts_with('/') {
        return Err(format!(
            "{prefix:?} starts with '/'; prefixes are relative (drop the '/')"
        ));
    }
    if prefix.ends_with('/') {
        return Err(format!("{prefix:?} ends with '/'; drop the trailing '/'"));
    }
    if prefix.contains("//") {
        return Err(format!(
            "{prefix:?} contains \"//\"; separate names with a single '/'"
        ));
    }
    for component in prefix.split('/') {
        if component == "." || component == ".." {
            return Err(format!(
                "{prefix:?} contains a {component:?} component; prefixes cannot refer to other prefixes"
            ));
        }
        if component.len() > 255 {
            return Err(format!(
                "{prefix:?} has a component of {} bytes; the limit is 255",
                component.len()
            ));
        }
    }
    Ok(())
}

/// One piece of a parsed `prefix` template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    /// `{name}`: the file name without its last extension.
    Name,
    /// `{path}`: the path below the directory without the last extension.
    Path,
}

fn parse_template(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        let Some(open) = rest.find(['{', '}']) else {
            pieces.push(Piece::Text(rest));
            break;
        };
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        if rest[open..].starts_with('}') {
            return Err(format!(
                "template {template:?} has a '}}' without a '{{'; placeholders are {{name}} and \
                 {{path}}"
            ));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!(
                "template {template:?} has a '{{' that is not closed by '}}'"
            ));
        };
        let placeholder = &rest[open + 1..open + close];
        pieces.push(match placeholder {
            "name" => Piece::Name,
            "path" => Piece::Path,
            other => {
                return Err(format!(
                    "template {template:?} has the unknown placeholder {{{other}}}; the only \
                     placeholders are {{name}} and {{path}}"
                ))
            }
        });
        rest = &rest[open + close + 1..];
    }
    if !pieces
        .iter()
        .any(|p| matches!(p, Piece::Name | Piece::Path))
    {
        return Err(format!(
            "template {template:?} has neither {{name}} nor {{path}}, so every database found \
             would get the same prefix"
        ));
    }
    Ok(pieces)
}

fn fill(pieces: &[Piece<'_>], name: &str, path: &str) -> String {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => *text,
            Piece::Name => name,
            Piece::Path => path,
        })
        .collect()
}

/// Checks a `prefix` template of `[[directories]]`: placeholders `{name}`
/// and `{path}` only, at least one of them, braces balanced, and with `x`
/// for every placeholder the result passes [`validate_prefix`]. Returns the
/// fixed text before the first placeholder, with which every prefix the
/// template produces starts (`"tenants/"` for `"tenants/{name}"`).
pub fn check_template(template: &str) -> Result<&str, String> {
    let pieces = parse_template(template)?;
    let sample = fill(&pieces, "x", "x");
    validate_prefix(&sample).map_err(|problem| {
        format!("template {template:?} does not give a valid prefix (with \"x\" for each placeholder): {problem}")
    })?;
    let fixed = template
        .find('{')
        .map_or(template, |open| &template[..open]);
    Ok(fixed)
}

/// Whether `prefix` is one that `template` can produce: its fixed text in
/// place, `{name}` standing for one non-empty component, `{path}` for one or
/// more. Used to recognise, in a bucket listing, the backups of databases a
/// directory once held (the files themselves may be gone).
pub fn template_matches(template: &str, prefix: &str) -> bool {
    /// Whether `pieces[p..]` match `s[at..]`. `failed` holds the (piece,
    /// offset) pairs already known not to, so each is tried once and
    /// `{path}-{path}-{path}` stays polynomial on a long prefix.
    fn go(
        pieces: &[Piece<'_>],
        p: usize,
        s: &str,
        at: usize,
        failed: &mut HashSet<(usize, usize)>,
    ) -> bool {
        if failed.contains(&(p, at)) {
            return false;
        }
        let rest = &s[at..];
        // Cut only at character boundaries: a prefix from a bucket listing
        // may hold any character (`tenants/é`), and slicing a `str` inside
        // one panics.
        let mut rest_from = |p: usize, ends: &mut dyn Iterator<Item = usize>| {
            ends.filter(|&i| rest.is_char_boundary(i))
                .any(|i| go(pieces, p, s, at + i, failed))
        };
        let found = match pieces.get(p) {
            None => rest.is_empty(),
            Some(Piece::Text(t)) => {
                rest.starts_with(t) && rest_from(p + 1, &mut std::iter::once(t.len()))
            }
            Some(Piece::Name) => {
                let component = rest.find('/').unwrap_or(rest.len());
                rest_from(p + 1, &mut (1..=component))
            }
            Some(Piece::Path) => rest_from(p + 1, &mut (1..=rest.len())),
        };
        if !found {
            failed.insert((p, at));
        }
        found
    }
    parse_template(template).is_ok_and(|pieces| go(&pieces, 0, prefix, 0, &mut HashSet::new()))
}

/// The plain components of a relative path, as UTF-8; `Err` names the first
/// one that is not.
fn plain_components(relative: &Path) -> Result<Vec<&str>, String> {
    relative
        .components()
        .map(|component| match component {
            Component::Normal(name) => name
                .to_str()
                .ok_or_else(|| format!("{:?} is not valid UTF-8", name.to_string_lossy())),
            _ => Err(format!(
                "{} is not a plain path below the directory",
                relative.display()
            )),
        })
        .collect()
}

/// The prefix `template` gives the file at `relative` (below the
/// directory): `{name}` is the file name without its last extension
/// (`acme` for `eu/acme.db`, `a.b` for `a.b.db`, `acme` for `acme`), `{path}`
/// the whole relative path without it (`eu/acme`). The result is checked by
/// [`validate_prefix`]; an error names the file, e.g. for `my db.db`, whose
/// space no prefix can carry.
pub fn prefix_for(template: &str, relative: &Path) -> Result<String, String> {
    let file = relative.display();
    let pieces = parse_template(template)?;
    let components = plain_components(relative).map_err(|problem| format!("{file}: {problem}"))?;
    let Some((file_name, parents)) = components.split_last() else {
        return Err("the path of the file is empty".to_string());
    };
    // `Path::file_stem` drops the last extension but keeps a leading dot.
    let name = Path::new(file_name)
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or(file_name);
    let mut path = parents.join("/");
    if !path.is_empty() {
        path.push('/');
    }
    path.push_str(name);
    let prefix = fill(&pieces, name, &path);
    validate_prefix(&prefix).map_err(|problem| {
        format!(
            "{file}: cannot be backed up under template {template:?}: {problem}; rename the file"
        )
    })?;
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        for good in [
            "a",
            "tenants/acme",
            "services/auth",
            "edge/node-1/cache",
            "A.b_c-9",
            ".hidden/x",
            "a..b",
        ] {
            assert_eq!(validate_prefix(good), Ok(()), "{good:?}");
        }
        let max: String = (0..MAX_PREFIX_LEN)
            .map(|i| if i % 100 == 99 { '/' } else { 'a' })
            .collect();
        let long_component = format!("{}/b", "a".repeat(256));
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "a/./b",
            "a/../b",
            "../a",
            "a/..",
            "a b",
            "a\\b",
            "a:b",
            "ä",
            "a\0b",
            "a\nb",
            &long_component,
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(validate_prefix(&max), Ok(()));
        assert!(validate_prefix(&format!("{max}a")).is_err());
    }

    #[test]
    fn templates_are_checked_and_give_their_fixed_part() {
        for (template, fixed) in [
            ("tenants/{name}", "tenants/"),
            ("{name}", ""),
            ("t-{name}", "t-"),
            ("eu/{path}/db", "eu/"),
            ("a/{name}.{path}", "a/"),
        ] {
            assert_eq!(check_template(template), Ok(fixed), "{template:?}");
        }
        for (bad, says) in [
            ("tenants", "neither"),
            ("", "neither"),
            ("tenants/{foo}", "{foo}"),
            ("tenants/{}", "{}"),
            ("tenants/{Name}", "{Name}"),
            ("tenants/{name", "not closed"),
            ("tenants/name}", "without a '{'"),
            ("/{name}", "starts with '/'"),
            ("{name}/", "ends with '/'"),
            ("a//{name}", "//"),
            ("../{name}", ".."),
            ("a b/{name}", "' '"),
        ] {
            let err = check_template(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn prefixes_fill_in_name_and_path() {
        for (template, relative, prefix) in [
            ("tenants/{name}", "acme.db", "tenants/acme"),
            ("tenants/{path}", "acme.db", "tenants/acme"),
            ("tenants/{name}", "eu/acme.db", "tenants/acme"),
            ("tenants/{path}", "eu/acme.db", "tenants/eu/acme"),
            ("tenants/{path}", "eu/west/acme.db", "tenants/eu/west/acme"),
            ("t/{name}", "a.b.db", "t/a.b"),
            ("t/{name}", "noext", "t/noext"),
            ("t/{name}-{name}", "x.db", "t/x-x"),
            ("{path}/main", "eu/x.sqlite3", "eu/x/main"),
        ] {
            assert_eq!(
                prefix_for(template, Path::new(relative)),
                Ok(prefix.to_string()),
                "{template:?} {relative:?}"
            );
        }
    }

    #[test]
    fn prefixes_that_cannot_be_made_name_the_file() {
        for (template, relative, says) in [
            ("t/{name}", "my db.db", "my db.db"),
            ("t/{name}", "café.db", "café.db"),
            ("t/{path}", "e u/a.db", "e u/a.db"),
            ("t/{name}", "../a.db", "not a plain path"),
            ("t/{name}", "/abs/a.db", "not a plain path"),
            ("t/{foo}", "a.db", "unknown placeholder"),
        ] {
            let err = prefix_for(template, Path::new(relative)).expect_err(relative);
            assert!(err.contains(says), "{relative:?}: {err}");
        }
        let long = format!("{}.db", "a".repeat(300));
        let err = prefix_for("t/{name}", Path::new(&long)).expect_err("too long");
        assert!(err.contains(&long), "{err}");
        assert!(prefix_for("t/{name}", Path::new("")).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_is_an_error_naming_it() {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.db");
        let err = prefix_for("t/{name}", Path::new(name)).expect_err("not UTF-8");
        assert!(err.contains("caf"), "{err}");
    }

    #[test]
    fn template_matching_with_many_paths_is_fast() {
        let template = "t/{path}-{path}-{path}-{path}-{path}-{path}-{path}/db";
        let prefix = format!("t/{}", "a-".repeat(300));
        assert!(!template_matches(template, &prefix));
        assert!(template_matches(template, &format!("{prefix}a/db")));
    }

    #[test]
    fn templates_recognise_their_prefixes() {
        assert!(template_matches("tenants/{name}", "tenants/acme"));
        assert!(!template_matches("tenants/{name}", "tenants/eu/acme"));
        assert!(!template_matches("tenants/{name}", "tenants/"));
        assert!(!template_matches("tenants/{name}", "other/acme"));
        assert!(template_matches("shops/{path}", "shops/eu/acme"));
        assert!(template_matches("t/{name}/db", "t/acme/db"));
        assert!(!template_matches("t/{name}/db", "t/acme/x"));
        assert!(!template_matches("t/{bogus}", "t/x"));
        // Prefixes from a bucket listing may hold any character (issue 10).
        assert!(template_matches("tenants/{name}", "tenants/é"));
        assert!(template_matches("tenants/{name}", "tenants/a😀b"));
        assert!(!template_matches("tenants/{name}", "tenants/é/x"));
        assert!(template_matches("t/{name}-{name}", "t/é-€"));
        assert!(template_matches("t/{path}/db", "t/é/€/db"));
        assert!(!template_matches("t/{name}/db", "t/é"));
    }
}

#[cfg(test)]
mod fuzz {
    //! Prefixes come from the config, from flags and from bucket listings,
    //! templates from the config, file names from the disk: none may make
    //! these rules panic.
    use super::*;
    use crate::testing::fuzz_text;

    const TEMPLATES: &[&str] = &[
        "tenants/{name}",
        "eu/{path}/db",
        "t/{name}-{name}",
        "a/{name}.{path}",
        "{path}",
    ];
    const NAMES: &[&str] = &[
        "acme.db",
        "eu/acme.db",
        "a.b.db",
        "x.db-mj1A2B3C901",
        "é.db",
    ];
    const PREFIXES: &[&str] = &["tenants/acme", "eu/x/y/db", "t/a-b", "a/b.c/d", "tenants/é"];

    #[test]
    fn prefixes_never_panic() {
        let prefixes = ["tenants/acme", "a", "edge/node-1/cache", "a.b_c/d"];
        fuzz_text("prefix check", 0xc0f1_0003, 3000, &prefixes, |s| {
            validate_prefix(s).is_ok()
        });
    }

    #[test]
    fn prefix_templates_never_panic() {
        fuzz_text("prefix template check", 0xd15c_0004, 3000, TEMPLATES, |t| {
            check_template(t).is_ok()
        });
        fuzz_text("prefix template fill", 0xd15c_0005, 3000, TEMPLATES, |t| {
            prefix_for(t, Path::new("eu/acme.db")).is_ok()
        });
        fuzz_text("prefix for file name", 0xd15c_0006, 3000, NAMES, |name| {
            prefix_for("t/{path}", Path::new(name)).is_ok()
                | prefix_for("t/{name}", Path::new(name)).is_ok()
        });
    }

    #[test]
    fn template_matching_of_listed_prefixes_never_panics() {
        fuzz_text(
            "template matcher (prefixes)",
            0xd15c_0008,
            3000,
            PREFIXES,
            |prefix| TEMPLATES.iter().any(|t| template_matches(t, prefix)),
        );
        fuzz_text(
            "template matcher (templates)",
            0xd15c_0009,
            3000,
            TEMPLATES,
            |t| PREFIXES.iter().any(|prefix| template_matches(t, prefix)),
        );
    }
}
