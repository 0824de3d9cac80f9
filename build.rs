//! Build metadata for `walsync --version`: the target triple the binary is
//! built for and the git commit it is built from, as compile-time
//! environment variables (`WALSYNC_TARGET`, `WALSYNC_COMMIT`).
//!
//! The commit is `WALSYNC_BUILD_COMMIT` when set (a build from a source
//! archive, or a container build without `.git`), else `git rev-parse HEAD`
//! of the source tree, else `unknown` (no git, or not a checkout). A failure
//! here never fails the build: the version line only says less.
//!
//! For the x86_64 musl release binary it also hands the linker
//! `contrib/no-eh-frame.ld`, which drops the unwind tables nothing in that
//! binary reads (panic = "abort"; the reasons and the figures are in that
//! file): 365 KB of the 4,000,000-byte budget.

use std::path::Path;
use std::process::Command;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_string());
    println!("cargo:rustc-env=WALSYNC_TARGET={target}");
    println!("cargo:rerun-if-env-changed=WALSYNC_BUILD_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");

    let commit = match std::env::var("WALSYNC_BUILD_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=WALSYNC_COMMIT={commit}");

    // Only where it is checked: GNU ld links this target (contrib/
    // build-musl.sh), and the release profile is the one that aborts on
    // panic. The bins only: tests and the library keep their tables.
    println!("cargo:rerun-if-changed=contrib/no-eh-frame.ld");
    let profile = std::env::var("PROFILE").unwrap_or_default();
    if target == "x86_64-unknown-linux-musl" && profile == "release" {
        if let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") {
            let script = Path::new(&dir).join("contrib/no-eh-frame.ld");
            println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
        }
    }
}

/// The commit of HEAD, and the files to watch so that a new commit (or a
/// checkout of another branch) runs this script again.
fn git_commit() -> Option<String> {
    // Only a checkout of walsync itself: source unpacked inside some other
    // repository must not report that repository's commit.
    let top = git(&["rev-parse", "--show-toplevel"])?;
    let manifest = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    if std::fs::canonicalize(&top).ok()? != std::fs::canonicalize(&manifest).ok()? {
        return None;
    }
    let commit = git(&["rev-parse", "--verify", "HEAD"])?;
    if !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // HEAD itself (a checkout), the branch it points at (a commit), and
    // packed-refs (where `git gc` moves the branch). In a worktree, HEAD is
    // in the worktree's git dir and the refs in the common one.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch(&Path::new(&dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let common = Path::new(&common);
        watch(&common.join("packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(&common.join(branch));
        }
    }
    Some(commit)
}

fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}
