//! Private temporary files: the spool files that hold snapshots and large
//! segments before upload, and the objects a let-go during a storage outage
//! keeps for upload (`replica/pending.rs`), and the creation and clean-up rules that restore's
//! temporary output and the `dir` backend's temporary objects share.
//!
//! A spool file is a full copy of a database, so it must be as private as the
//! database. The rules, in one place:
//! - Spool files live in `<TMPDIR>/walsync-<uid>/`, a directory walsync
//!   creates with mode 0700. Before every use it is checked with `lstat`: a
//!   directory, not a symlink, owned by walsync's effective uid, mode exactly
//!   0700. Anything else is refused with an error that says what to fix; it
//!   is never followed, chmod'ed or taken over.
//! - Every temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW`,
//!   mode 0600, under a name with 64 unguessable bits (`token`): nothing at
//!   the name beforehand, a planted symlink included, is ever opened,
//!   followed or truncated.
//! - Every temporary file is removed when its owner is done with it, on
//!   success and on error (`SpoolFile` removes it on drop). A process killed
//!   in between leaves it behind, so each one is held under an exclusive
//!   `flock` for its whole life, and a clean-up (`remove_stale`, at the start
//!   of `watch` and `snapshot`; `remove_if_unlocked` for the others) removes
//!   only files it can lock: those no live process holds, whatever the pid,
//!   pid namespace or host (on a filesystem that shares `flock`) of the one
//!   that made them. A file whose lock cannot be taken is left alone.
//!
//! Never holds data: callers write through the descriptor they get and read
//! the file back by its path (the directory is private, so the path cannot
//! be swapped under them).

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How a spool file's name ends: `<what>-<token>.spool`.
const SPOOL_SUFFIX: &str = ".spool";

/// Names tried before `create_locked` gives up (each is a fresh 64-bit
/// token, so only a planted file or a clean-up racing the creation makes
/// one fail).
const CREATE_ATTEMPTS: usize = 8;

/// A spool file or the private directory could not be used.
#[derive(Debug)]
pub struct SpoolError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<SpoolError> for crate::replica::ReplicaError {
    fn from(e: SpoolError) -> Self {
        crate::replica::ReplicaError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// 16 lower-case hex digits nobody else can predict: SipHash under the
/// process's random `RandomState` keys (seeded by the OS) of a counter, the
/// pid and the time.
pub fn token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    format!("{:016x}", h.finish())
}

/// Whether `s` is a `token()`.
pub fn is_token(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What `lstat` says the would-be private directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Symlink,
    Other,
}

/// Why a directory cannot be walsync's private spool directory (`None`: it
/// can). `owner` and `mode` as `lstat` reports them, `uid` walsync's
/// effective uid.
fn judge_private_dir(kind: Kind, owner: u32, mode: u32, uid: u32) -> Option<String> {
    const FIX: &str = "remove it, or set TMPDIR to a directory other users cannot write";
    match kind {
        Kind::Symlink => Some(format!(
            "is a symbolic link, not walsync's private spool directory; refusing to follow it \
             ({FIX})"
        )),
        Kind::Other => Some(format!(
            "is not a directory; walsync keeps its spool files in a private directory of this \
             name ({FIX})"
        )),
        Kind::Dir if owner != uid => Some(format!(
            "belongs to uid {owner}, not to walsync's uid {uid}; refusing to spool copies of \
             databases into it ({FIX})"
        )),
        Kind::Dir if mode & 0o7777 != 0o700 => Some(format!(
            "has mode {:04o}, not 0700; refusing to spool copies of databases into a \
             directory others may read or write (chmod 700 it if it is yours, or remove it)",
            mode & 0o7777
        )),
        Kind::Dir => None,
    }
}

/// walsync's private spool directory under `base` (the system temp
/// directory): `<base>/walsync-<uid>`, created mode 0700 if missing, and
/// refused unless it is a real directory of ours with mode 0700.
pub fn private_dir(base: &Path) -> Result<PathBuf, SpoolError> {
    // SAFETY: geteuid cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    let dir = base.join(format!("walsync-{uid}"));
    let fail = |source| SpoolError {
        path: dir.clone(),
        source,
    };
    match DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {
            // A umask may have taken bits we need from 0700. Fixed through
            // a descriptor of the directory we just made, never by path.
            let d = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&dir)
                .map_err(fail)?;
            if d.metadata().map_err(fail)?.mode() & 0o7777 != 0o700 {
                d.set_permissions(Permissions::from_mode(0o700))
                    .map_err(fail)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e)),
    }
    let m = fs::symlink_metadata(&dir).map_err(fail)?;
    let kind = if m.file_type().is_symlink() {
        Kind::Symlink
    } else if m.is_dir() {
        Kind::Dir
    } else {
        Kind::Other
    };
    match judge_private_dir(kind, m.uid(), m.mode(), uid) {
        None => Ok(dir),
        Some(reason) => Err(fail(io::Error::other(reason))),
    }
}

/// A spool file: created private (see the module doc), held under an
/// exclusive `flock`, and removed when dropped.
#[derive(Debug)]
pub struct SpoolFile {
    /// The descriptor that holds the lock, until the file is removed.
    file: File,
    path: PathBuf,
}

impl SpoolFile {
    /// A new, empty spool file for `what` (`snapshot`, `segment`) in the
    /// private directory under `base`.
    pub fn create(base: &Path, what: &str) -> Result<SpoolFile, SpoolError> {
        let dir = private_dir(base)?;
        let (file, path) = create_locked(&dir, &|t| format!("{what}-{t}{SPOOL_SUFFIX}"))
            .map_err(|source| SpoolError { path: dir, source })?;
        Ok(SpoolFile { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A descriptor to write the file through (it shares the lock; the
    /// file stays locked until the `SpoolFile` drops, whatever happens to
    /// this one).
    pub fn writer(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        // Removed before the lock goes with `file`: a clean-up never sees it
        // unlocked.
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether `name` is the name of a spool file.
fn is_spool_name(name: &str) -> bool {
    let Some((what, t)) = name
        .strip_suffix(SPOOL_SUFFIX)
        .and_then(|n| n.rsplit_once('-'))
    else {
        return false;
    };
    !what.is_empty() && what.bytes().all(|b| b.is_ascii_lowercase()) && is_token(t)
}

/// Removes the spool files that earlier walsync processes left in the
/// private directory under `base` when they were killed (those no live
/// process holds). Returns how many went. A file that cannot be removed is
/// logged and left; only an unusable directory is an error.
pub fn remove_stale(base: &Path) -> Result<usize, SpoolError> {
    let dir = private_dir(base)?;
    let entries = fs::read_dir(&dir).map_err(|source| SpoolError {
        path: dir.clone(),
        source,
    })?;
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_spool_name) {
            continue;
        }
        let path = entry.path();
        match remove_if_unlocked(&path) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => log::warn!(
                "{}: cannot remove a leftover spool file: {e}",
                path.display()
            ),
        }
    }
    Ok(removed)
}

/// What a non-blocking `flock` got.
#[derive(Debug, PartialEq, Eq)]
enum Lock {
    Held,
    /// Another descriptor holds it.
    Busy,
    /// The filesystem does not do `flock`.
    Unsupported,
}

fn try_lock(file: &File) -> Lock {
    loop {
        // std's try_lock is flock(2) with LOCK_EX | LOCK_NB on Linux.
        match file.try_lock() {
            Ok(()) => return Lock::Held,
            Err(fs::TryLockError::WouldBlock) => return Lock::Busy,
            Err(fs::TryLockError::Error(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(fs::TryLockError::Error(_)) => return Lock::Unsupported,
        }
    }
}

fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Creates a new file in `dir` named `name_of(token())`: exclusively,
/// without following a symlink, mode 0600, readable and writable, and
/// holds an exclusive `flock` on it. Returns the descriptor (which holds the
/// lock) and the path.
pub fn create_locked(dir: &Path, name_of: &dyn Fn(&str) -> String) -> io::Result<(File, PathBuf)> {
    for _ in 0..CREATE_ATTEMPTS {
        let path = dir.join(name_of(&token()));
        if let Some(file) = create_locked_at(&path)? {
            return Ok((file, path));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no new temporary file could be created after {CREATE_ATTEMPTS} attempts"),
    ))
}

/// `create_locked` for one name; `None` if the name is taken (whatever is
/// there, a symlink included, is left untouched) or a clean-up removed the
/// file before the lock was taken.
fn create_locked_at(path: &Path) -> io::Result<Option<File>> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(e),
    };
    match try_lock(&file) {
        Lock::Held => {}
        // A clean-up locked it in the instant before us; it removes it.
        Lock::Busy => return Ok(None),
        // No clean-up can lock it either, so none removes it.
        Lock::Unsupported => return Ok(Some(file)),
    }
    // A clean-up may have locked, removed and let go of it just before we
    // locked: then the name no longer leads to our file.
    match fs::symlink_metadata(path) {
        Ok(m) if same_inode(&m, &file.metadata()?) => Ok(Some(file)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the temporary file at `path` if it is a regular file that no
/// process holds locked (its maker died). `Ok(true)` if it was removed;
/// a symlink or anything else at the path is left alone and opened no
/// further than `O_NOFOLLOW` allows.
pub fn remove_if_unlocked(path: &Path) -> io::Result<bool> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || try_lock(&file) != Lock::Held {
        return Ok(false);
    }
    match fs::symlink_metadata(path) {
        Ok(m) if same_inode(&m, &meta) => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    fn temp_base(name: &str) -> PathBuf {
        crate::testing::fresh_dir(&format!("spool-{name}"))
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn spool_files_are_0600_in_a_0700_directory_and_go_when_dropped() {
        let base = temp_base("modes");
        let spool = SpoolFile::create(&base, "snapshot").unwrap();
        let dir = spool.path().parent().unwrap().to_path_buf();
        // SAFETY: geteuid cannot fail.
        assert_eq!(
            dir,
            base.join(format!("walsync-{}", unsafe { libc::geteuid() }))
        );
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(spool.path()), 0o600);
        let name = spool.path().file_name().unwrap().to_str().unwrap();
        assert!(is_spool_name(name), "{name}");
        spool
            .writer()
            .unwrap()
            .write_all(b"copy of a database")
            .unwrap();
        assert_eq!(fs::read(spool.path()).unwrap(), b"copy of a database");
        let other = SpoolFile::create(&base, "snapshot").unwrap();
        assert_ne!(other.path(), spool.path(), "names are not reused");
        let path = spool.path().to_path_buf();
        drop(spool);
        assert!(!path.exists());
        drop(other);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_symlink_at_the_name_is_never_followed() {
        let base = temp_base("symlink-file");
        let dir = private_dir(&base).unwrap();
        let target = base.join("target");
        fs::write(&target, b"precious").unwrap();
        let planted = dir.join("snapshot-0123456789abcdef.spool");
        symlink(&target, &planted).unwrap();
        assert!(create_locked_at(&planted).unwrap().is_none());
        // Every attempt lands on the planted name: an error, not the target.
        let err = create_locked(&dir, &|_| "snapshot-0123456789abcdef.spool".into()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        // A clean-up neither follows nor removes it.
        assert!(!remove_if_unlocked(&planted).unwrap());
        assert_eq!(remove_stale(&base).unwrap(), 0);
        assert!(fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&target).unwrap(), b"precious");
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_symlink_or_a_shared_directory_is_refused_as_the_private_directory() {
        let base = temp_base("symlink-dir");
        // SAFETY: geteuid cannot fail.
        let name = format!("walsync-{}", unsafe { libc::geteuid() });
        let elsewhere = base.join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, Permissions::from_mode(0o700)).unwrap();
        symlink(&elsewhere, base.join(&name)).unwrap();
        let err = SpoolFile::create(&base, "snapshot").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(err.to_string().contains(&name), "{err}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert!(remove_stale(&base).is_err());

        fs::remove_file(base.join(&name)).unwrap();
        fs::create_dir(base.join(&name)).unwrap();
        fs::set_permissions(base.join(&name), Permissions::from_mode(0o755)).unwrap();
        let err = SpoolFile::create(&base, "snapshot").unwrap_err();
        assert!(err.to_string().contains("mode 0755"), "{err}");
        // Refused, not repaired behind the owner's back.
        assert_eq!(mode_of(&base.join(&name)), 0o755);

        fs::remove_dir(base.join(&name)).unwrap();
        fs::write(base.join(&name), b"").unwrap();
        let err = SpoolFile::create(&base, "snapshot").unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn directories_are_judged_by_kind_owner_and_mode() {
        assert_eq!(judge_private_dir(Kind::Dir, 1000, 0o40700, 1000), None);
        assert_eq!(judge_private_dir(Kind::Dir, 0, 0o700, 0), None);
        let refused = [
            (Kind::Dir, 1001, 0o700, 1000, "belongs to uid 1001"),
            (Kind::Dir, 0, 0o700, 1000, "belongs to uid 0"),
            (Kind::Dir, 1000, 0o755, 1000, "mode 0755"),
            (Kind::Dir, 1000, 0o1777, 1000, "mode 1777"),
            (Kind::Dir, 1000, 0o500, 1000, "mode 0500"),
            (Kind::Symlink, 1000, 0o777, 1000, "symbolic link"),
            (Kind::Other, 1000, 0o700, 1000, "not a directory"),
        ];
        for (kind, owner, mode, uid, says) in refused {
            let why = judge_private_dir(kind, owner, mode, uid)
                .unwrap_or_else(|| panic!("{kind:?} {owner} {mode:o} accepted"));
            assert!(why.contains(says), "{why}");
        }
    }

    #[test]
    fn leftovers_of_dead_processes_go_and_live_files_stay() {
        let base = temp_base("stale");
        let dir = private_dir(&base).unwrap();
        // What a killed process leaves: a spool file nobody holds.
        let dead = dir.join(format!("snapshot-{}.spool", token()));
        fs::write(&dead, b"old copy").unwrap();
        // Another name in the directory is not ours to judge.
        let foreign = dir.join("notes.txt");
        fs::write(&foreign, b"x").unwrap();
        // A live one, held by this process (as by another walsync).
        let live = SpoolFile::create(&base, "segment").unwrap();
        assert_eq!(remove_stale(&base).unwrap(), 1);
        assert!(!dead.exists());
        assert!(foreign.exists());
        assert!(live.path().exists(), "a held spool file is not stale");
        // Held through its writer alone too (the lock is the descriptor's).
        let w = live.writer().unwrap();
        assert!(!remove_if_unlocked(live.path()).unwrap());
        drop(w);
        drop(live);
        assert_eq!(remove_stale(&base).unwrap(), 0);
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_locked_file_is_kept_and_an_unlocked_one_removed() {
        let base = temp_base("race");
        let dir = private_dir(&base).unwrap();
        let path = dir.join(format!("segment-{}.spool", token()));
        let file = create_locked_at(&path).unwrap().unwrap();
        // Its lock is held: no clean-up can take it.
        assert!(!remove_if_unlocked(&path).unwrap());
        drop(file);
        // Unlocked now: stale.
        assert!(remove_if_unlocked(&path).unwrap());
        assert!(!path.exists());
        fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn tokens_are_sixteen_hex_digits_and_differ() {
        let a = token();
        let b = token();
        assert!(is_token(&a) && is_token(&b), "{a} {b}");
        assert_ne!(a, b);
        assert!(!is_token("0123456789ABCDEF"));
        assert!(!is_token("0123456789abcde"));
        assert!(is_spool_name("snapshot-0123456789abcdef.spool"));
        assert!(!is_spool_name("snapshot-0123456789abcdef.tmp"));
        assert!(!is_spool_name("-0123456789abcdef.spool"));
        assert!(!is_spool_name("walsync-snapshot-123-0.tmp"));
    }
}
