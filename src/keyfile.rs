//! Encryption keys and the key files that hold them (issue 15).
//!
//! A key is 256 random bits. Its id is the first 8 bytes of
//! SHA-256("walsync-key-id-v1" || key), written as 16 hex digits: it names
//! the key in object headers and error messages, is the same for every copy
//! of the key, lets a loaded file be checked against the key it holds, and
//! reveals nothing of the key (finding a key from its id means inverting
//! SHA-256 over 2^256 candidates).
//!
//! A key file is one line of text, easy to print, copy and back up:
//! `walsync-key-v1:<id, 16 hex digits>:<key, 64 hex digits>`. Parsing and
//! formatting are pure; `load` is the I/O edge, which also warns about a file
//! that others can read. This module never logs or prints a key.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

pub const KEY_BYTES: usize = 32;
const LINE_PREFIX: &str = "walsync-key-v1:";
const ID_CONTEXT: &[u8] = b"walsync-key-id-v1";

/// The public name of a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 256-bit key and its id. Made only from the key bytes, so the id always
/// belongs to the key.
#[derive(Clone)]
pub struct Key {
    id: KeyId,
    secret: [u8; KEY_BYTES],
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

impl Key {
    pub fn from_secret(secret: [u8; KEY_BYTES]) -> Key {
        let mut input = Vec::with_capacity(ID_CONTEXT.len() + KEY_BYTES);
        input.extend_from_slice(ID_CONTEXT);
        input.extend_from_slice(&secret);
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        Key {
            id: KeyId(id),
            secret,
        }
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Key, String> {
        let mut secret = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| "the operating system's random source failed".to_string())?;
        Ok(Key::from_secret(secret))
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn secret(&self) -> &[u8; KEY_BYTES] {
        &self.secret
    }

    /// The key file line, without a newline.
    pub fn to_line(&self) -> String {
        let mut s = format!("{LINE_PREFIX}{}:", self.id);
        for b in self.secret {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses a key file's text: one line, surrounding whitespace allowed.
    /// The error says what is wrong, never what the key is.
    pub fn parse_line(text: &str) -> Result<Key, String> {
        let line = text.trim();
        let rest = line.strip_prefix(LINE_PREFIX).ok_or_else(|| {
            format!("not a walsync key: it must be one line starting with `{LINE_PREFIX}`")
        })?;
        let (id_hex, key_hex) = rest
            .split_once(':')
            .ok_or("malformed: expected `walsync-key-v1:<id>:<key>`")?;
        let id: [u8; 8] = hex_bytes(id_hex).ok_or("malformed key id: expected 16 hex digits")?;
        let secret: [u8; KEY_BYTES] = hex_bytes(key_hex).ok_or_else(|| {
            format!(
                "malformed key: expected {} hex digits ({} bits), found {} characters",
                KEY_BYTES * 2,
                KEY_BYTES * 8,
                key_hex.len()
            )
        })?;
        let key = Key::from_secret(secret);
        if key.id.0 != id {
            return Err(format!(
                "the key id {} does not match the key (whose id is {}): the file is damaged",
                KeyId(id),
                key.id
            ));
        }
        Ok(key)
    }
}

/// Exactly `N` bytes from `2 * N` hex digits.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Whether a file with these permission bits can be read by anyone but its
/// owner (group or other read, write or execute bits).
pub fn too_open(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// The warning for a key file of mode `mode` that others may read, if any.
pub fn permission_warning(path: &Path, mode: u32) -> Option<String> {
    too_open(mode).then(|| {
        format!(
            "key file {}: group or others may read it (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

/// A key file that could not be used, with what to do about it.
#[derive(Debug)]
pub struct KeyFileError {
    pub path: PathBuf,
    pub problem: String,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key file {}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for KeyFileError {}

/// Reads a key file. Warns (log) if group or others may read it.
pub fn load(path: &Path) -> Result<Key, KeyFileError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let fail = |problem: String| KeyFileError {
        path: path.to_path_buf(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => {
                "not found; give the path of a key written by `walsync keygen -o FILE`".into()
            }
            std::io::ErrorKind::PermissionDenied => {
                "cannot be read by this user (permission denied); run walsync as the key's owner"
                    .into()
            }
            _ => format!("cannot be read: {e}"),
        })
    })?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    // A key line is 97 bytes; read a little more so that a big file is
    // reported as malformed without reading all of it.
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => fail("malformed: not text".into()),
            _ => fail(format!("cannot be read: {e}")),
        })?;
    let key = Key::parse_line(&text).map_err(|p| {
        fail(format!(
            "{p}; use the file written by `walsync keygen`, unchanged"
        ))
    })?;
    if let Some(warning) = permission_warning(path, meta.permissions().mode()) {
        log::warn!("{warning}");
    }
    Ok(key)
}

/// The keys of one database: the one that seals what walsync writes, and
/// every one that opens what is in the bucket.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// Seals every object written; `None`: objects are written as they are.
    pub seal: Option<Key>,
    /// Open objects: the sealing key first, then the older ones.
    pub open: Vec<Key>,
}

/// Key files, each loaded once (`load`), by path.
#[derive(Debug, Clone, Default)]
pub struct LoadedKeys(Vec<(PathBuf, Key)>);

impl LoadedKeys {
    /// Loads every file: the first that cannot be used is the error.
    pub fn load<'a>(files: impl IntoIterator<Item = &'a Path>) -> Result<LoadedKeys, KeyFileError> {
        let mut keys: Vec<(PathBuf, Key)> = Vec::new();
        for f in files {
            if !keys.iter().any(|(p, _)| p == f) {
                keys.push((f.to_path_buf(), load(f)?));
            }
        }
        Ok(LoadedKeys(keys))
    }

    fn get(&self, path: &Path) -> &Key {
        &self
            .0
            .iter()
            .find(|(p, _)| p == path)
            .expect("invariant: every key file of the config is loaded before it is used")
            .1
    }

    /// The keyring of `key_file` (sealing) and `old` (opening only), all
    /// among those loaded; without a key file, none.
    pub fn keyring<'a>(
        &self,
        key_file: Option<&Path>,
        old: impl IntoIterator<Item = &'a Path>,
    ) -> Keyring {
        let Some(key_file) = key_file else {
            return Keyring::default();
        };
        let seal = self.get(key_file).clone();
        let mut open = vec![seal.clone()];
        open.extend(old.into_iter().map(|p| self.get(p).clone()));
        Keyring {
            seal: Some(seal),
            open,
        }
    }

    /// Every key loaded, in the order loaded.
    pub fn all(&self) -> Vec<Key> {
        self.0.iter().map(|(_, k)| k.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Key {
        Key::from_secret([byte; KEY_BYTES])
    }

    #[test]
    fn key_line_round_trips_and_names_the_id() {
        let k = key(7);
        let line = k.to_line();
        assert_eq!(line.len(), LINE_PREFIX.len() + 16 + 1 + 64);
        assert!(line.starts_with(&format!("walsync-key-v1:{}:", k.id())));
        let back = Key::parse_line(&format!("  {line}\n")).unwrap();
        assert_eq!(back.id(), k.id());
        assert_eq!(back.secret(), k.secret());
    }

    #[test]
    fn key_id_is_a_digest_not_the_key() {
        let (a, b) = (key(1), key(2));
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id(), key(1).id());
        // The id is not any 8 bytes of the key.
        let hex = a.to_line();
        let key_hex = hex.rsplit(':').next().unwrap();
        assert!(!key_hex.contains(&a.id().to_string()));
        assert_eq!(format!("{:?}", a), format!("Key({})", a.id()));
    }

    #[test]
    fn malformed_key_lines_say_what_is_wrong() {
        let good = key(9).to_line();
        let (head, secret_hex) = good.rsplit_once(':').unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "not a walsync key"),
            ("walsync-key-v2:00:00".into(), "not a walsync key"),
            ("walsync-key-v1:abc".into(), "malformed: expected"),
            (
                format!("walsync-key-v1:12:{secret_hex}"),
                "malformed key id",
            ),
            (
                format!("{head}:{}", &secret_hex[..62]),
                "found 62 characters",
            ),
            (format!("{head}:{secret_hex}00"), "found 66 characters"),
            (format!("{head}:{}zz", &secret_hex[..62]), "malformed key:"),
            (format!("{head}:{}ü", &secret_hex[..62]), "malformed key:"),
            (
                format!("walsync-key-v1:{}:{secret_hex}", key(8).id()),
                "does not match the key",
            ),
            (format!("{good}\n{good}"), "malformed key:"),
        ];
        for (text, want) in cases {
            let err = Key::parse_line(&text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains(secret_hex), "the error shows the key");
        }
    }

    #[test]
    fn only_owner_only_modes_are_private() {
        for (mode, open) in [
            (0o100600, false),
            (0o400, false),
            (0o700, false),
            (0o640, true),
            (0o604, true),
            (0o644, true),
            (0o660, true),
            (0o610, true),
        ] {
            assert_eq!(too_open(mode), open, "{mode:o}");
        }
        let path = Path::new("/etc/walsync.key");
        assert_eq!(permission_warning(path, 0o100600), None);
        assert_eq!(
            permission_warning(path, 0o100644).as_deref(),
            Some(
                "key file /etc/walsync.key: group or others may read it (mode 644); \
                 run `chmod 600 /etc/walsync.key`"
            )
        );
    }

    #[test]
    fn load_reports_missing_malformed_and_reads_good_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::testing::fresh_dir("keyfile");
        let missing = dir.join("missing.key");
        let err = load(&missing).unwrap_err().to_string();
        assert!(
            err.contains("missing.key") && err.contains("not found"),
            "{err}"
        );

        let bad = dir.join("bad.key");
        std::fs::write(&bad, "hello\n").unwrap();
        let err = load(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.key") && err.contains("not a walsync key"),
            "{err}"
        );

        let binary = dir.join("binary.key");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let err = load(&binary).unwrap_err().to_string();
        assert!(err.contains("not text"), "{err}");

        let err = load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("not a regular file") || err.contains("cannot be read"),
            "{err}"
        );

        let good = dir.join("good.key");
        let k = key(3);
        std::fs::write(&good, format!("{}\n", k.to_line())).unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(&good).unwrap().id(), k.id());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod fuzz {
    //! A key file is outside input: its parser answers any text with a key
    //! or an error, never a panic.
    use super::*;
    use crate::testing::fuzz_text;

    #[test]
    fn key_lines_never_panic() {
        let valid = [
            Key::from_secret([0xa5; KEY_BYTES]).to_line(),
            format!("{}\n", Key::from_secret([1; KEY_BYTES]).to_line()),
        ];
        let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
        fuzz_text("key file line", 0xc0f1_0015, 3000, &valid, |s| {
            Key::parse_line(s).is_ok()
        });
    }
}
