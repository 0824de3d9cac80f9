//! `walsync keygen`, run as users run it: a new key on standard output or in
//! a new file of mode 0600, never over an existing file, in the key file
//! format that walsync's key loader reads.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use walsync::keyfile::{self, Key};

fn walsync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walsync"))
        .args(args)
        .output()
        .expect("the walsync binary built for the tests runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("walsync-keygen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

#[test]
fn keygen_prints_a_new_key_line_each_time() {
    let (a, b) = (walsync(&["keygen"]), walsync(&["keygen"]));
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "exit {}: {}",
            out.status,
            text(&out.stderr)
        );
        assert_eq!(
            text(&out.stdout).lines().count(),
            1,
            "{}",
            text(&out.stdout)
        );
    }
    let ka = Key::parse_line(&text(&a.stdout)).expect("the line parses as a key");
    let kb = Key::parse_line(&text(&b.stdout)).expect("the line parses as a key");
    assert_ne!(ka.id(), kb.id(), "two runs made the same key");
    assert_ne!(text(&a.stdout), text(&b.stdout));
    assert!(
        text(&a.stderr).contains("keep a copy"),
        "{}",
        text(&a.stderr)
    );
}

#[test]
fn keygen_writes_a_private_file_the_loader_reads() {
    let dir = scratch("write");
    let path = dir.join("walsync.key");
    let out = walsync(&["keygen", "-o", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        text(&out.stderr)
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let key = keyfile::load(&path).expect("the key file loads");
    let said = text(&out.stdout);
    assert_eq!(
        said.trim(),
        format!("wrote key id {} to {}", key.id(), path.display())
    );
    // The key itself is only in the file, never on the terminal.
    let line = std::fs::read_to_string(&path).unwrap();
    let secret = line.trim().rsplit(':').next().unwrap();
    assert!(!said.contains(secret) && !text(&out.stderr).contains(secret));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keygen_never_overwrites_a_file() {
    let dir = scratch("refuse");
    let path = dir.join("walsync.key");
    let first = walsync(&["keygen", "--output", path.to_str().unwrap()]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let before = std::fs::read(&path).unwrap();
    let again = walsync(&["keygen", "-o", path.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    let err = text(&again.stderr);
    assert!(
        err.contains(&path.display().to_string()) && err.contains("already exists"),
        "{err}"
    );
    assert!(again.stdout.is_empty());
    assert_eq!(std::fs::read(&path).unwrap(), before, "the key was changed");

    // Not even a file that holds no key, nor a directory.
    let other = dir.join("notes.txt");
    std::fs::write(&other, "keep me\n").unwrap();
    let out = walsync(&["keygen", "-o", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me\n");
    let out = walsync(&["keygen", "-o", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // A directory that does not exist: named, exit 2, nothing created.
    let missing = dir.join("no/such/dir/walsync.key");
    let out = walsync(&["keygen", "-o", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot create"),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
