//! Local-directory storage: each object is a file `<root>/<key>`.
//!
//! For users who back up to a mounted disk, and for the README's first
//! command, which runs with no server. Writes are atomic (temp file, fsync,
//! rename, fsync of the directory), so a crash never leaves a half object
//! under a real key. Keys are checked so that none can name a path outside
//! the root (ARCHITECTURE.md invariant 9).
//!
//! Objects are copies of databases, so they are written private: each temp
//! file is made as `crate::spool` makes its files (exclusively, never
//! through a symlink, mode 0600, an unguessable name, locked while written),
//! and keeps mode 0600 as the object. A temp file a killed process left
//! behind is removed by the next listing that walks past it, once no live
//! process holds it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Body, ObjectMeta, ObjectReader, PutIf, PutIfOutcome, Storage, StorageError, Tagged};

const TEMP_SUFFIX: &str = ".walsync-tmp";

pub struct DirStorage {
    root: PathBuf,
}

impl DirStorage {
    /// Uses `root` (created if missing).
    pub fn new(root: &Path) -> Result<DirStorage, StorageError> {
        fs::create_dir_all(root).map_err(|source| StorageError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(DirStorage {
            root: root.to_path_buf(),
        })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidKey {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        if key.is_empty() || key.starts_with('/') {
            return Err(invalid("keys are relative and not empty"));
        }
        let mut path = self.root.clone();
        for part in key.split('/') {
            if part.is_empty()
                || part == "."
                || part == ".."
                || part.contains('\\')
                || part.contains('\0')
            {
                return Err(invalid("a key's parts must be plain names"));
            }
            path.push(part);
        }
        if key.ends_with(TEMP_SUFFIX) {
            return Err(invalid("reserved suffix"));
        }
        Ok(path)
    }

    /// The file of `key` and its directory, made if missing.
    fn object_path(&self, key: &str) -> Result<(PathBuf, PathBuf), StorageError> {
        let path = self.path_of(key)?;
        let parent = path
            .parent()
            .expect("invariant: object paths are below the root")
            .to_path_buf();
        fs::create_dir_all(&parent).map_err(Self::io(&parent))?;
        Ok((path, parent))
    }

    /// A new private temporary file beside `path`, for its next content.
    fn temp_beside(path: &Path, parent: &Path) -> Result<(File, PathBuf), StorageError> {
        let name = path
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("object");
        crate::spool::create_locked(parent, &|t| format!("{name}.{t}{TEMP_SUFFIX}"))
            .map_err(Self::io(parent))
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
        move |source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Storage for DirStorage {
    fn put(&self, key: &str, body: Body<'_>, _crc32: u32) -> Result<(), StorageError> {
        let (path, parent) = self.object_path(key)?;
        let (mut f, tmp) = Self::temp_beside(&path, &parent)?;
        let result = (|| {
            let copied = io::copy(&mut body.open()?, &mut f)?;
            if copied != body.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body shorter than its length",
                ));
            }
            f.flush()?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&parent)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(Self::io(&path))
    }

    fn get(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let path = self.path_of(key)?;
        match File::open(&path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound {
                key: key.to_string(),
            }),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let path = self.path_of(key)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound {
                    key: key.to_string(),
                })
            }
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let mut out = vec![0u8; len as usize];
        let mut got = 0;
        while got < out.len() {
            match file.read_at(&mut out[got..], start + got as u64) {
                Ok(0) => {
                    return Err(StorageError::BadResponse {
                        location: self.location(),
                        detail: format!(
                            "object {key:?}: {}",
                            super::range_short(start, len, start + got as u64)
                        ),
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Self::io(&path)(e)),
            }
        }
        Ok(out)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        // Walk only the directory the prefix points into.
        let start_rel = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if start_rel.is_empty() {
            self.root.clone()
        } else {
            match self.path_of(start_rel) {
                Ok(p) => p,
                Err(_) => return Ok(Vec::new()),
            }
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, start_rel.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Self::io(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(Self::io(&dir))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry.file_type().map_err(Self::io(&entry.path()))?;
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{key}/")) || key.starts_with(prefix) {
                        stack.push((entry.path(), key));
                    }
                } else if ft.is_file() && key.starts_with(prefix) && name.ends_with(TEMP_SUFFIX) {
                    // Left by a killed process if no one holds it. Not
                    // being able to remove it (a read-only backup) is fine.
                    match crate::spool::remove_if_unlocked(&entry.path()) {
                        Ok(true) => log::info!(
                            "removed {}, left by a walsync process that was killed",
                            entry.path().display()
                        ),
                        Ok(false) => {}
                        Err(e) => log::debug!("{}: {e}", entry.path().display()),
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    let size = entry.metadata().map_err(Self::io(&entry.path()))?.len();
                    out.push(ObjectMeta { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            let path = self.path_of(key)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io(&path)(e)),
            }
        }
        Ok(())
    }

    /// Conditional writes for the lease, between processes of one host
    /// (or of hosts sharing the directory, where the filesystem does
    /// `flock`, as NFS v4 does): an exclusive `flock` on the object's
    /// directory while the current object is compared, then a create by
    /// `link` (which fails if the name exists, also on NFS) or a replace by
    /// `rename`. A filesystem without `flock` is `Unsupported`.
    fn put_if(
        &self,
        key: &str,
        bytes: &[u8],
        condition: PutIf<'_>,
    ) -> Result<PutIfOutcome, StorageError> {
        let (path, parent) = self.object_path(key)?;
        let dir = File::open(&parent).map_err(Self::io(&parent))?;
        if let Err(e) = dir.lock() {
            log::debug!("{}: no flock ({e})", parent.display());
            return Ok(PutIfOutcome::Unsupported);
        }
        let current = match fs::read(&path) {
            Ok(b) => Some(etag_of(&b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let holds = match condition {
            PutIf::Absent => current.is_none(),
            PutIf::Matches(etag) => current.as_deref() == Some(etag),
        };
        if !holds {
            return Ok(PutIfOutcome::Refused);
        }
        let (mut f, tmp) = Self::temp_beside(&path, &parent)?;
        let written = (|| {
            f.write_all(bytes)?;
            f.sync_all()?;
            match condition {
                PutIf::Absent => match fs::hard_link(&tmp, &path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                    other => other?,
                },
                PutIf::Matches(_) => fs::rename(&tmp, &path)?,
            }
            sync_dir(&parent)?;
            Ok(true)
        })();
        let _ = fs::remove_file(&tmp);
        match written.map_err(Self::io(&path))? {
            true => Ok(PutIfOutcome::Written {
                etag: etag_of(bytes),
            }),
            false => Ok(PutIfOutcome::Refused),
        }
    }

    fn get_tagged(&self, key: &str) -> Result<Tagged, StorageError> {
        let path = self.path_of(key)?;
        let (bytes, modified) = match fs::read(&path).and_then(|b| Ok((b, fs::metadata(&path)?))) {
            Ok(found) => found,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound {
                    key: key.to_string(),
                })
            }
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let modified_ms = modified
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        Ok(Tagged {
            etag: etag_of(&bytes),
            bytes,
            modified_ms,
            server_now_ms: Some(crate::time::now_ms()),
        })
    }

    fn location(&self) -> String {
        format!("dir {}", self.root.display())
    }
}

/// A directory object's ETag: its CRC32 and length (a lease's text names
/// its holder and the time it was written, so two writes differ).
fn etag_of(bytes: &[u8]) -> String {
    format!("\"{:08x}-{}\"", crc32fast::hash(bytes), bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("walsync-dir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn put_get_list_delete() {
        let root = temp_root("basic");
        let s = DirStorage::new(&root).unwrap();
        s.put("a/b/one", Body::Bytes(b"1"), 0).unwrap();
        s.put("a/b/two", Body::Bytes(b"22"), 0).unwrap();
        s.put("a/bc/three", Body::Bytes(b"333"), 0).unwrap();
        s.put("z", Body::Bytes(b""), 0).unwrap();
        let keys: Vec<_> = s
            .list("a/b/")
            .unwrap()
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        assert_eq!(
            keys,
            vec![("a/b/one".to_string(), 1), ("a/b/two".to_string(), 2)]
        );
        assert_eq!(s.list("a/b").unwrap().len(), 3);
        assert_eq!(s.list("").unwrap().len(), 4);
        let mut out = String::new();
        io::Read::read_to_string(&mut s.get("a/b/two").unwrap(), &mut out).unwrap();
        assert_eq!(out, "22");
        s.delete(&["a/b/two".into(), "missing".into()]).unwrap();
        assert!(matches!(
            s.get("a/b/two"),
            Err(StorageError::NotFound { .. })
        ));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn objects_are_private_and_leftover_temp_files_go() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_root("private");
        let s = DirStorage::new(&root).unwrap();
        s.put("db/generations/x/one", Body::Bytes(b"copy"), 0)
            .unwrap();
        let object = root.join("db/generations/x/one");
        let mode = fs::metadata(&object).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        // A temp file a killed put left behind, and one a live put holds.
        let dir = object.parent().unwrap();
        let dead = dir.join(format!("two.{}{TEMP_SUFFIX}", crate::spool::token()));
        fs::write(&dead, b"half").unwrap();
        let (held, live) =
            crate::spool::create_locked(dir, &|t| format!("three.{t}{TEMP_SUFFIX}")).unwrap();
        let keys: Vec<_> = s.list("db/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["db/generations/x/one"]);
        assert!(!dead.exists(), "a leftover nobody holds is removed");
        assert!(live.exists(), "a temp file being written stays");
        drop(held);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        let root = temp_root("escape");
        let s = DirStorage::new(&root).unwrap();
        for k in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "",
            "a/./b",
            "x.walsync-tmp",
        ] {
            assert!(
                matches!(
                    s.put(k, Body::Bytes(b"x"), 0),
                    Err(StorageError::InvalidKey { .. })
                ),
                "{k:?}"
            );
        }
        fs::remove_dir_all(root).unwrap();
    }
}

#[cfg(test)]
mod fuzz {
    //! Keys come from listings and prefixes from flags and configs; no key
    //! may panic or lead outside the root (ARCHITECTURE.md invariant 9).
    use super::*;
    use crate::testing::fuzz_text;

    #[test]
    fn keys_never_panic_or_leave_the_root() {
        let root = std::env::temp_dir().join(format!("walsync-dir-fuzz-{}", std::process::id()));
        let storage = DirStorage::new(&root).expect("create the root");
        let valid = ["t/a/generations/x", "a", "t/é/b"];
        fuzz_text(
            "dir key check",
            0xd1_0001,
            3000,
            &valid,
            |key| match storage.path_of(key) {
                Ok(path) => {
                    assert!(
                        path.starts_with(&root),
                        "{key:?} leads to {}",
                        path.display()
                    );
                    true
                }
                Err(_) => false,
            },
        );
        // Listing with any prefix reads only below the root (empty here).
        fuzz_text("dir listing prefix", 0xd1_0002, 300, &valid, |prefix| {
            storage.list(prefix).is_ok_and(|l| l.is_empty())
        });
        let _ = fs::remove_dir_all(&root);
    }
}
