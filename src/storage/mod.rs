//! Object storage: one `Storage` trait with an S3 implementation (`s3`) and a
//! local-directory implementation (`dir`).
//!
//! This layer moves opaque bytes under keys; it knows nothing of WAL frames,
//! generations or snapshots. It upholds ARCHITECTURE.md invariant 4 on the way up:
//! every `put` carries the CRC32 of the whole object, which the S3 backend sends
//! as `x-amz-checksum-crc32` for the server to check (a multipart upload
//! sends one per part, and checks the whole object's CRC32 itself before it
//! completes the upload; a server that refuses the header gets `Content-MD5`
//! instead). Whether the server really checks is found out, not assumed
//! (`Storage::upload_check`). Verifying objects on the
//! way down is the job of the decoders (`crate::format`), which check the CRC32
//! stored inside every object. Secrets never appear in an error or a log line.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

pub mod dir;
pub mod fetch;
pub mod s3;

/// One object as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// Whether `key` lies after `after` (if given) and not after `through` (if
/// given): in the part `Storage::list_range` lists.
pub fn in_range(key: &str, after: Option<&str>, through: Option<&str>) -> bool {
    after.is_none_or(|a| key > a) && through.is_none_or(|t| key <= t)
}

/// The bytes of an object to upload. Both kinds can be read again from the
/// start, which is what lets `put` retry.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    Bytes(&'a [u8]),
    /// A local file whose first `len` bytes are the object (e.g. a spooled snapshot).
    File {
        path: &'a Path,
        len: u64,
    },
}

impl Body<'_> {
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fresh reader over the body, from its first byte.
    pub fn open(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        match self {
            Body::Bytes(b) => Ok(Box::new(*b)),
            Body::File { path, len } => Ok(Box::new(std::fs::File::open(path)?.take(*len))),
        }
    }
}

/// A reader over an object's bytes as they arrive.
pub type ObjectReader = Box<dyn Read + Send>;

/// The condition of a conditional put (`Storage::put_if`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutIf<'a> {
    /// No object under the key (`If-None-Match: *`).
    Absent,
    /// The object under the key has this ETag (`If-Match`).
    Matches(&'a str),
}

/// What a conditional put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutIfOutcome {
    /// Stored; the new object's ETag.
    Written { etag: String },
    /// The condition did not hold (412): nothing was stored.
    Refused,
    /// This storage cannot write conditionally.
    Unsupported,
}

/// A small object read whole, with what the storage says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub bytes: Vec<u8>,
    pub etag: String,
    /// When it was written (`Last-Modified`), on the storage's clock.
    pub modified_ms: Option<u64>,
    /// The storage's time when it answered (`Date`).
    pub server_now_ms: Option<u64>,
}

/// Where objects live.
///
/// Implementations are shared by every thread of the process (`Send + Sync`)
/// and retry transient failures themselves; an `Err` is final for that call.
pub trait Storage: Send + Sync {
    /// Stores `body` under `key`, replacing any object there. `crc32` is the
    /// CRC32 (crc32fast) of the body's bytes; a backend that can have the server
    /// check it does so.
    fn put(&self, key: &str, body: Body<'_>, crc32: u32) -> Result<(), StorageError>;

    /// Streams the object under `key`; `StorageError::NotFound` if there is none.
    fn get(&self, key: &str) -> Result<ObjectReader, StorageError>;

    /// Exactly `len` bytes of the object under `key`, from byte `start` on.
    /// Errors if the object is shorter. Unlike a `get` stream, a broken
    /// transfer is retried as a whole, which is what lets a restore fetch one
    /// object as many ranges at once (`fetch`). This default reads through
    /// `get`; backends override it with a real ranged read.
    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        let mut reader = self.get(key)?;
        let short = |detail: String| StorageError::BadResponse {
            location: self.location(),
            detail: format!("object {key:?}: {detail}"),
        };
        let skipped = std::io::copy(&mut (&mut reader).take(start), &mut std::io::sink())
            .map_err(|e| short(e.to_string()))?;
        let mut out = Vec::with_capacity(len as usize);
        (&mut reader)
            .take(len)
            .read_to_end(&mut out)
            .map_err(|e| short(e.to_string()))?;
        if skipped != start || out.len() as u64 != len {
            return Err(short(range_short(start, len, skipped + out.len() as u64)));
        }
        Ok(out)
    }

    /// Every object whose key starts with `prefix`, in ascending key order
    /// (all pages of the listing).
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// The objects of `list(prefix)` whose keys come after `after` (if
    /// given) and not after `through` (if given): one part of a listing,
    /// so that the parts of a large one can be listed at once
    /// (`fleet::listing_ranges`). A store whose listing can start at a key
    /// (S3's `start-after`) lists only that part.
    fn list_range(
        &self,
        prefix: &str,
        after: Option<&str>,
        through: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut objects = self.list(prefix)?;
        objects.retain(|o| in_range(&o.key, after, through));
        Ok(objects)
    }

    /// Whether a large listing is quicker as parts listed at once
    /// (`list_range`, `fleet::listing_ranges`): on S3 each page is a round
    /// trip that needs the one before's continuation token. A directory is
    /// walked once (the default).
    fn lists_in_parts(&self) -> bool {
        false
    }

    /// Gives `each` the "folders" right under `prefix` (empty or ending in
    /// `/`), page after page, while it answers `true`: each distinct
    /// `<prefix><part>/` that keys under it start with. Only a hint, for
    /// where to cut a listing into parts (`fleet::Cutter`): a store that
    /// cannot tell cheaply gives none (the default, for stores that do not
    /// list in parts).
    fn list_children(
        &self,
        _prefix: &str,
        _each: &mut dyn FnMut(Vec<String>) -> bool,
    ) -> Result<(), StorageError> {
        Ok(())
    }

    /// Deletes the objects; keys that do not exist are not an error.
    fn delete(&self, keys: &[String]) -> Result<(), StorageError>;

    /// Stores a small object only if `condition` holds, atomically (the
    /// lease, `crate::lease`). A storage that cannot says `Unsupported`.
    fn put_if(
        &self,
        _key: &str,
        _bytes: &[u8],
        _condition: PutIf<'_>,
    ) -> Result<PutIfOutcome, StorageError> {
        Ok(PutIfOutcome::Unsupported)
    }

    /// Reads a small object whole (at most 64 KiB) with its ETag and times;
    /// `StorageError::NotFound` if there is none. Only for storages whose
    /// `put_if` is supported.
    fn get_tagged(&self, key: &str) -> Result<Tagged, StorageError> {
        Err(StorageError::NotFound {
            key: key.to_owned(),
        })
    }

    /// Where this storage points, for messages (e.g. `s3://bucket` or a
    /// directory path). Never contains secrets.
    fn location(&self) -> String;

    /// What `put` does with an object, as log lines say it: "uploaded",
    /// unless this only keeps objects to upload later (the spool of a
    /// let-go during an outage, `replica::pending`).
    fn put_does(&self) -> &'static str {
        "uploaded"
    }

    /// What the storage itself checks of the bytes of an upload, found out
    /// at most once per process: S3 writes a probe object with a wrong
    /// checksum under `root` (a prefix walsync owns, ending in `/`, or
    /// empty for the bucket's root) and deletes it again. A directory has
    /// no server in between (the default).
    fn upload_check(&self, _root: &str) -> UploadCheck {
        UploadCheck::Local
    }
}

/// What the storage checks of the bytes walsync uploads (see
/// `Storage::upload_check`). Whatever it is, restore and `verify` check
/// every object's own CRC32 trailer when they read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadCheck {
    /// The server refused a probe object whose checksum (sent in the
    /// header `header`) did not match its bytes.
    Checked { header: &'static str },
    /// The server stored a probe object whose checksum (in `header`) did
    /// not match its bytes.
    NotChecked { header: &'static str },
    /// Not found out, and why (credentials that may not write, …).
    Unknown { reason: String },
    /// A local directory: no server in between.
    Local,
}

impl UploadCheck {
    /// One word for JSON: `checked`, `not_checked`, `unknown`, `local`.
    pub fn word(&self) -> &'static str {
        match self {
            UploadCheck::Checked { .. } => "checked",
            UploadCheck::NotChecked { .. } => "not_checked",
            UploadCheck::Unknown { .. } => "unknown",
            UploadCheck::Local => "local",
        }
    }
}

impl fmt::Display for UploadCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const TRAILERS: &str = "restore and verify check every object's CRC32 trailer";
        match self {
            UploadCheck::Checked { header } => write!(
                f,
                "the server checks every upload's {header} (it refused a probe object whose {header} was wrong); {TRAILERS} too"
            ),
            UploadCheck::NotChecked { header } => write!(
                f,
                "the server does not check upload checksums (it stored a probe object whose {header} was wrong): \
                 bytes damaged on the way are caught only when read back: {TRAILERS}"
            ),
            UploadCheck::Unknown { reason } => write!(
                f,
                "whether the server checks upload checksums is not known ({reason}); {TRAILERS}"
            ),
            UploadCheck::Local => write!(f, "a local directory, no server in between; {TRAILERS}"),
        }
    }
}

/// Why a ranged read came back short: the object is smaller than the
/// listing said (it changed, or the listing lied).
pub(crate) fn range_short(start: u64, len: u64, got_to: u64) -> String {
    format!(
        "bytes {start}..{} were asked for but the object ends at byte {got_to}; \
         it is shorter than its listing says",
        start + len
    )
}

/// What went wrong talking to storage. Every message names the object key or
/// the location and, where there is one, what to check.
#[derive(Debug)]
pub enum StorageError {
    /// No object under that key.
    NotFound { key: String },
    /// The server refused our credentials or signature (401/403, or a
    /// SignatureDoesNotMatch / InvalidAccessKeyId style code).
    Auth { location: String, detail: String },
    /// The bucket does not exist.
    NoSuchBucket { location: String },
    /// The server answered with an error status we do not retry (or that
    /// stayed after all retries).
    Server {
        location: String,
        key: String,
        status: u16,
        detail: String,
    },
    /// The server could not be reached or the connection broke (after retries).
    /// `os_error`: the OS error number, when a local I/O error caused it
    /// (EMFILE: the process is out of descriptors).
    Transport {
        location: String,
        detail: String,
        os_error: Option<i32>,
    },
    /// A local file or directory could not be read or written.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The storage answered something that is not what the protocol says.
    BadResponse { location: String, detail: String },
    /// The server says the bucket lives in another region or behind
    /// another endpoint (a redirect, or a signature scoped to the wrong
    /// region).
    WrongRegion { location: String, detail: String },
    /// A key that this storage cannot hold (empty, absolute, `..`, …).
    InvalidKey { key: String, reason: String },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::NotFound { key } => write!(f, "object {key:?} not found"),
            StorageError::Auth { location, detail } => write!(
                f,
                "{location}: authentication failed ({detail}); check the access key, the secret key \
                 (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or [storage] in the config) and the region"
            ),
            StorageError::NoSuchBucket { location } => write!(
                f,
                "{location}: the bucket does not exist; create it, or fix the bucket name \
                 ([storage] bucket or --bucket) or the endpoint"
            ),
            StorageError::Server {
                location,
                key,
                status,
                detail,
            } => write!(f, "{location}: object {key:?}: server answered {status}: {detail}"),
            StorageError::Transport {
                location, detail, ..
            } => write!(
                f,
                "{location}: cannot reach the storage server ({detail}); check the endpoint and the network"
            ),
            StorageError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StorageError::BadResponse { location, detail } => write!(
                f,
                "{location}: unexpected answer from the storage server ({detail}); is the endpoint an S3-compatible server?"
            ),
            StorageError::WrongRegion { location, detail } => write!(
                f,
                "{location}: the server says the bucket is in another region or behind another \
                 endpoint ({detail}); check the region ([storage] region, --region or AWS_REGION) \
                 and the endpoint"
            ),
            StorageError::InvalidKey { key, reason } => write!(f, "invalid object key {key:?}: {reason}"),
        }
    }
}

impl StorageError {
    /// Whether the error is about the storage as a whole (credentials,
    /// bucket, region, endpoint, a server that cannot be reached) rather
    /// than one object: every other request would fail the same way, so a
    /// command stops at the first instead of repeating it per database.
    pub fn is_storage_wide(&self) -> bool {
        matches!(
            self,
            StorageError::Auth { .. }
                | StorageError::NoSuchBucket { .. }
                | StorageError::Transport { .. }
                | StorageError::BadResponse { .. }
                | StorageError::WrongRegion { .. }
        )
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
