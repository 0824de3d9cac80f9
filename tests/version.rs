//! `walsync --version` and `walsync version`, run as users run them: the
//! walsync version, the target triple, the git commit and the SQLite version
//! of the binary, one fact per line.

use std::process::{Command, Output};

fn walsync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walsync"))
        .args(args)
        .output()
        .expect("the walsync binary built for the tests runs")
}

/// The `key: value` lines after the first.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:` line in:\n{text}"))
}

/// The commit of this checkout, when the tests run in one.
fn head_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `name` is a commit of this repository.
fn is_commit(name: &str) -> bool {
    name.len() == 40
        && Command::new("git")
            .args(["cat-file", "-e", &format!("{name}^{{commit}}")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .is_ok_and(|s| s.success())
}

fn check_version_text(how: &str, out: &Output) {
    assert!(out.status.success(), "{how}: exit status {}", out.status);
    let text = String::from_utf8(out.stdout.clone()).expect("UTF-8 output");
    assert_eq!(
        text.lines().next(),
        Some(format!("walsync {}", env!("CARGO_PKG_VERSION")).as_str()),
        "{how}: first line"
    );
    let target = field(&text, "target");
    assert!(
        target.starts_with(std::env::consts::ARCH) && target.contains("-linux-"),
        "{how}: target {target:?} is not a {} Linux triple",
        std::env::consts::ARCH
    );
    let commit = field(&text, "commit");
    match (std::env::var("WALSYNC_BUILD_COMMIT"), head_commit()) {
        (Ok(given), _) if !given.trim().is_empty() => assert_eq!(commit, given.trim(), "{how}"),
        // The commit HEAD was when the binary was built (the tests are built
        // with it, so they know it too): a commit made while the tests run
        // must not fail them. It is a commit of this repository.
        (_, Some(_)) => {
            assert_eq!(commit, env!("WALSYNC_COMMIT"), "{how}: commit");
            assert!(is_commit(commit), "{how}: {commit:?} is not a commit here");
        }
        (_, None) => assert_eq!(commit, "unknown", "{how}: commit without git"),
    }
    assert_eq!(field(&text, "sqlite"), rusqlite::version(), "{how}: SQLite");
    assert!(out.stderr.is_empty(), "{how}: stderr {:?}", out.stderr);
}

#[test]
fn version_flag_and_command_print_version_target_commit_and_sqlite() {
    let flag = walsync(&["--version"]);
    check_version_text("walsync --version", &flag);
    let command = walsync(&["version"]);
    check_version_text("walsync version", &command);
    assert_eq!(flag.stdout, command.stdout, "both print the same");
}

#[test]
fn the_version_flag_and_command_are_in_the_help() {
    let help = walsync(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--version"), "{text}");
    assert!(text.contains("\n  version "), "{text}");
}

#[test]
fn no_command_is_a_usage_error_that_lists_the_commands() {
    let out = walsync(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for name in ["watch", "restore", "restore-all", "verify", "version"] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
    assert!(out.stdout.is_empty());
}
