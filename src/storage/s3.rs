//! S3-compatible storage: rusty-s3 signs, one shared ureq agent sends.
//!
//! This module owns everything between the `Storage` trait and the wire for S3:
//! building and presigning each request (rusty-s3, signed right before it is
//! sent), the one pooled `ureq::Agent` with its timeouts and TLS roots
//! (`AWS_CA_BUNDLE` / `SSL_CERT_FILE`), the single retry loop with jittered
//! exponential backoff that every call goes through, and the mapping of S3
//! answers (status and XML error code) to `StorageError`.
//!
//! It upholds DESIGN.md invariant 4 on the way up: every `put` sends the
//! object's CRC32 as a signed `x-amz-checksum-crc32` header, so the server
//! refuses bytes that changed on the way. It must never log or return a
//! secret or a full signed URL: messages name the bucket, the endpoint and the
//! object key only.
//!
//! Bodies larger than the multipart threshold (`S3Storage::with_multipart`)
//! go up as a multipart upload declared with `x-amz-checksum-algorithm:
//! CRC32`: each part carries its own signed `x-amz-checksum-crc32`, which the
//! server checks, and CompleteMultipartUpload lists every part's CRC32 again.
//! The whole-object CRC32 given to `put` is still honoured: the CRC32 of the
//! bytes read for the parts must equal it, or the upload is aborted before it
//! is completed. (S3 then reports the object's checksum as a CRC32 of the
//! parts' CRC32s, `xxx-N`, not as the CRC32 of the whole object.) Any failure
//! after the upload is created aborts it, so an interrupted multipart upload
//! never leaves an object under the key: S3 makes the object appear only on
//! CompleteMultipartUpload.

use std::ffi::OsString;
use std::fmt;
use std::fmt::Write as _;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use rusty_s3::actions::{ListObjectsV2, ListObjectsV2Response};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use ureq::http::Response;
use ureq::tls::{PemItem, RootCerts, TlsConfig};
use ureq::{Agent, SendBody};

use super::{Body, ObjectMeta, ObjectReader, Storage, StorageError};
use crate::backoff::{self, Jitter};

/// How long a presigned URL stays valid. Each request is signed right before
/// it is sent, so this only has to cover clock skew and a slow start.
const SIGN_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Establishing a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// From the end of the request body to the response headers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// Any single read or write on the socket (so a stalled transfer fails, while
/// a long but progressing one does not).
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error body is kept to classify it.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// How much of a body we read only to reuse the connection; past this, the
/// connection is dropped instead.
const DRAIN_LIMIT: u64 = 1024 * 1024;
/// Largest ListObjectsV2 page we accept (1000 keys are far below this).
const LIST_PAGE_LIMIT: u64 = 32 * 1024 * 1024;
/// The signed checksum header of every PutObject and UploadPart.
const CHECKSUM_HEADER: &str = "x-amz-checksum-crc32";
/// The signed header of CreateMultipartUpload that makes S3 expect (and
/// check) a CRC32 with every part.
const CHECKSUM_ALGORITHM_HEADER: &str = "x-amz-checksum-algorithm";
/// Bodies larger than this go up as a multipart upload by default.
pub const DEFAULT_MULTIPART_THRESHOLD_BYTES: u64 = 64 * 1024 * 1024;
/// The default size of each part but the last.
pub const DEFAULT_PART_BYTES: u64 = 16 * 1024 * 1024;
/// S3's smallest part (every part but the last).
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// S3's largest part, and its largest single PutObject.
const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// S3's largest object.
const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// Buffer for reading a part to compute its CRC32.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Everything needed to talk to one bucket. Built by `crate::config` from the
/// config file, CLI flags and the `AWS_*` environment.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// Base URL of the server, e.g. `http://127.0.0.1:9000`. `None` means AWS:
    /// `https://s3.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style URLs (`endpoint/bucket/key`) instead of virtual-host style
    /// (`bucket.endpoint/key`).
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Settings {
    // Hand-written so that secrets never reach a log line or an error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How often and how patiently a failed request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in total, the first one included (0 counts as 1).
    pub max_attempts: u32,
    /// The delay before the first retry, doubled for each further one.
    pub base_delay: Duration,
    /// No delay is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 for the first retry), given a
    /// random `unit` in `[0, 1)`: "equal jitter", i.e. between half and all of
    /// `min(max_delay, base_delay * 2^(retry-1))`.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let cap = backoff::exponential(self.base_delay, retry.saturating_sub(1), self.max_delay);
        backoff::down_to_half(cap, unit)
    }
}

/// The value of `x-amz-checksum-crc32`: base64 of the big-endian CRC32.
pub fn checksum_header_value(crc32: u32) -> String {
    base64_encode(&crc32.to_be_bytes())
}

/// Standard base64 with padding (RFC 4648), enough for checksum headers.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// When and how `put` splits a body into the parts of a multipart upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MultipartPolicy {
    /// Bodies larger than this (or than S3's 5 GiB PutObject limit) go up in
    /// parts.
    threshold_bytes: u64,
    /// The size of each part but the last, before `plan_parts` adjusts it.
    part_bytes: u64,
}

impl MultipartPolicy {
    fn applies_to(&self, len: u64) -> bool {
        len > self.threshold_bytes.min(MAX_PART_BYTES)
    }
}

/// One part of a multipart upload: bytes `offset..offset + len` of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartSpan {
    /// From 1.
    number: u16,
    offset: u64,
    len: u64,
}

/// Splits a `len`-byte body into parts of `wanted_part_bytes` (the last one
/// shorter), keeping to S3's rules: the size is raised to the 5 MiB minimum,
/// lowered to the 5 GiB maximum, and raised again until the body fits in
/// 10,000 parts. (Only a body over ~48.8 TiB would then need parts over 5 GiB;
/// S3 refuses objects over 5 TiB anyway.)
fn plan_parts(len: u64, wanted_part_bytes: u64) -> Vec<PartSpan> {
    let part_bytes = wanted_part_bytes
        .clamp(MIN_PART_BYTES, MAX_PART_BYTES)
        .max(len.div_ceil(MAX_PARTS));
    (0..len.div_ceil(part_bytes))
        .map(|index| {
            let offset = index * part_bytes;
            PartSpan {
                number: u16::try_from(index + 1)
                    .expect("plan_parts makes at most 10,000 parts, which fit in u16"),
                offset,
                len: part_bytes.min(len - offset),
            }
        })
        .collect()
}

/// A part the server has stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UploadedPart {
    number: u16,
    /// As the server gave it, quotes included.
    etag: String,
    crc32: u32,
}

/// Escapes text for an XML element.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The body of CompleteMultipartUpload: every part's number, ETag and CRC32.
/// (rusty-s3's own body has no checksums, which S3 requires when the upload
/// was created with a checksum algorithm.)
fn complete_upload_xml(parts: &[UploadedPart]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
    );
    for part in parts {
        let _ = write!(
            xml,
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumCRC32>{}</ChecksumCRC32></Part>",
            part.number,
            xml_escape(&part.etag),
            checksum_header_value(part.crc32)
        );
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

/// The checksum S3 gives an object uploaded in `parts` with CRC32: base64 of
/// the CRC32 of the parts' big-endian CRC32s, then `-` and the part count.
fn composite_checksum(parts: &[UploadedPart]) -> String {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(&part.crc32.to_be_bytes());
    }
    format!(
        "{}-{}",
        checksum_header_value(hasher.finalize()),
        parts.len()
    )
}

/// Whether the `ChecksumCRC32` that CompleteMultipartUpload reports agrees
/// with what was sent: the composite checksum (with or without its `-N`), or
/// the CRC32 of the whole object (servers that compute that instead).
fn completed_checksum_matches(reported: &str, parts: &[UploadedPart], whole_crc32: u32) -> bool {
    let composite = composite_checksum(parts);
    let without_count = composite.split('-').next().unwrap_or_default();
    reported == composite
        || reported == without_count
        || reported == checksum_header_value(whole_crc32)
}

/// A reader over bytes `offset..offset + len` of a body.
fn open_part(body: Body<'_>, offset: u64, len: u64) -> io::Result<Box<dyn Read + Send + '_>> {
    match body {
        Body::Bytes(bytes) => {
            let range = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(offset + len).ok())
                .and_then(|(start, end)| bytes.get(start..end))
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "part beyond the body's bytes")
                })?;
            Ok(Box::new(range))
        }
        Body::File { path, .. } => {
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(offset))?;
            Ok(Box::new(file.take(len)))
        }
    }
}

/// The error for a body that ended after `read` of the `len` bytes expected.
fn short_part(part: &PartSpan, read: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "part {} (bytes {}..{}) ended after {read} of its {} bytes: the file is shorter than the length to upload",
            part.number,
            part.offset,
            part.offset + part.len,
            part.len
        ),
    )
}

/// Reads a part once, streaming, and returns its CRC32; also feeds every
/// byte to `whole`, the CRC32 of the object so far.
fn part_crc32(body: Body<'_>, part: &PartSpan, whole: &mut crc32fast::Hasher) -> io::Result<u32> {
    let mut reader = open_part(body, part.offset, part.len)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0; READ_BUFFER_BYTES];
    let mut read = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        whole.update(&buffer[..n]);
        read += n as u64;
    }
    if read != part.len {
        return Err(short_part(part, read));
    }
    Ok(hasher.finalize())
}

/// Hands a part's bytes to ureq and notices when they end before the
/// declared content-length (the file shrank), which is then a local error
/// rather than a broken connection worth retrying.
struct PartReader<R> {
    inner: R,
    remaining: u64,
    ended_early: bool,
}

impl<R: Read> Read for PartReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            self.ended_early = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the part ended before its content-length",
            ));
        }
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

/// One failed attempt: the error to report and whether trying again may help.
#[derive(Debug)]
struct Failure {
    error: StorageError,
    retryable: bool,
}

impl Failure {
    fn fatal(error: StorageError) -> Failure {
        Failure {
            error,
            retryable: false,
        }
    }

    fn retryable(error: StorageError) -> Failure {
        Failure {
            error,
            retryable: true,
        }
    }
}

/// S3 error codes that mean our credentials or signature were refused.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccountProblem",
    "AllAccessDisabled",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidSecurity",
    "InvalidToken",
    "MissingSecurityHeader",
    "NotSignedUp",
    "RequestTimeTooSkewed",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "AuthorizationQueryParametersError",
];

/// S3 error codes worth retrying whatever their status.
const RETRY_CODES: &[&str] = &[
    "InternalError",
    "OperationAborted",
    "RequestTimeout",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
];

/// S3 error codes saying the bytes did not match their declared checksum.
const CHECKSUM_CODES: &[&str] = &[
    "BadDigest",
    "InvalidDigest",
    "XAmzContentChecksumMismatch",
    "InvalidChecksum",
];

/// S3 error codes saying the bucket is in another region or behind another
/// endpoint.
const REGION_CODES: &[&str] = &[
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "TemporaryRedirect",
];

/// The text of the first `<tag>…</tag>` in `xml`, with the five predefined
/// entities decoded. Enough for S3 error documents (`<Code>`, `<Message>`).
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    let raw = xml[start..start + len].trim();
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// If `text` is an HTML page (a web server, a console or a proxy answered
/// instead of the S3 API), a short description naming its title.
fn html_page(text: &str) -> Option<String> {
    let head: String = text
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    let head = head.trim_start();
    if !(head.starts_with("<!doctype html") || head.starts_with("<html")) {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let title = lower
        .find("<title>")
        .map(|start| start + "<title>".len())
        .and_then(|start| {
            let len = lower[start..].find("</title>")?;
            text.get(start..start + len)
        })
        .map(excerpt)
        .filter(|t| !t.is_empty());
    Some(match title {
        Some(t) => format!("an HTML page titled {t:?}"),
        None => "an HTML page".to_owned(),
    })
}

/// A short single-line excerpt of a body that is not an S3 error document.
fn excerpt(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if cleaned.chars().count() > 80 {
        let cut: String = cleaned.chars().take(80).collect();
        format!("{cut}…")
    } else {
        cleaned
    }
}

/// Turns an unsuccessful answer (`status` and up to `ERROR_BODY_LIMIT` of its
/// body) into the error to report and whether to retry. `key` is the object
/// key (or the listed prefix) the request was about.
fn classify_status(status: u16, body: &[u8], location: &str, key: &str) -> Failure {
    let text = String::from_utf8_lossy(body);
    let is_s3_error = text.contains("<Error>");
    let code = if is_s3_error {
        xml_text(&text, "Code")
    } else {
        None
    };
    let location = location.to_owned();

    let Some(code) = code else {
        let server = |detail: String| StorageError::Server {
            location: location.clone(),
            key: key.to_owned(),
            status,
            detail,
        };
        return match status {
            401 | 403 => Failure::fatal(StorageError::Auth {
                location,
                detail: format!("status {status} without an S3 error code"),
            }),
            404 if text.trim().is_empty() => Failure::fatal(StorageError::NotFound {
                key: key.to_owned(),
            }),
            429 | 500..=599 => Failure::retryable(server(if text.trim().is_empty() {
                "no error details".to_owned()
            } else {
                format!("not an S3 error body: {}", excerpt(&text))
            })),
            _ => Failure::fatal(StorageError::BadResponse {
                location,
                detail: match html_page(&text) {
                    Some(page) => format!("status {status} for {key:?} with {page}, not S3 XML"),
                    None => format!(
                        "status {status} for {key:?} with a body that is not an S3 error: {:?}",
                        excerpt(&text)
                    ),
                },
            }),
        };
    };

    let message = xml_text(&text, "Message").unwrap_or_default();
    let detail = if message.is_empty() {
        code.clone()
    } else {
        format!("{code}: {message}")
    };
    let server = |detail: String| StorageError::Server {
        location: location.clone(),
        key: key.to_owned(),
        status,
        detail,
    };
    let code = code.as_str();
    // AWS names the bucket's region in the error of a request signed for
    // another one (AuthorizationHeaderMalformed, or
    // AuthorizationQueryParametersError for a presigned URL like ours).
    let region = xml_text(&text, "Region").filter(|r| !r.is_empty());
    if REGION_CODES.contains(&code) || region.is_some() {
        let mut detail = detail;
        if let Some(region) = region {
            let _ = write!(detail, "; the bucket is in region {region:?}");
        }
        if let Some(endpoint) = xml_text(&text, "Endpoint") {
            let _ = write!(detail, "; the server suggests endpoint {endpoint}");
        }
        return Failure::fatal(StorageError::WrongRegion { location, detail });
    }
    if AUTH_CODES.contains(&code) {
        let detail = if code == "RequestTimeTooSkewed" {
            format!("{detail}; check this machine's clock")
        } else {
            detail
        };
        Failure::fatal(StorageError::Auth { location, detail })
    } else if code == "NoSuchBucket" {
        Failure::fatal(StorageError::NoSuchBucket { location })
    } else if code == "NoSuchKey" {
        Failure::fatal(StorageError::NotFound {
            key: key.to_owned(),
        })
    } else if RETRY_CODES.contains(&code) || status == 429 || status >= 500 {
        Failure::retryable(server(detail))
    } else if CHECKSUM_CODES.contains(&code) {
        Failure::fatal(server(format!(
            "{detail}; the bytes sent do not match their CRC32 ({CHECKSUM_HEADER}): the local data changed while uploading or is corrupt"
        )))
    } else if status == 401 || status == 403 {
        Failure::fatal(StorageError::Auth { location, detail })
    } else {
        Failure::fatal(server(detail))
    }
}

/// Turns a transport error (no HTTP answer) into the error to report and
/// whether to retry. Never includes the URL.
fn classify_transport(err: ureq::Error, location: &str) -> Failure {
    let transport = |detail: String| StorageError::Transport {
        location: location.to_owned(),
        detail,
    };
    match err {
        ureq::Error::Timeout(t) => Failure::retryable(transport(format!("timed out ({t})"))),
        ureq::Error::Io(e) => Failure::retryable(transport(e.to_string())),
        ureq::Error::ConnectionFailed => {
            Failure::retryable(transport("connection failed".to_owned()))
        }
        ureq::Error::HostNotFound => Failure::retryable(transport("host not found".to_owned())),
        ureq::Error::Protocol(e) => Failure::fatal(StorageError::BadResponse {
            location: location.to_owned(),
            detail: format!("not a valid HTTP answer: {e}"),
        }),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => Failure::fatal(transport(
            "the endpoint does not give a valid request URL".to_owned(),
        )),
        e @ (ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_)) => {
            Failure::fatal(transport(format!(
                "TLS: {e}; if the server uses a private CA, point AWS_CA_BUNDLE at its PEM bundle"
            )))
        }
        e => Failure::fatal(transport(e.to_string())),
    }
}

/// Rejects keys that would not name one object under the bucket's URL
/// (rusty-s3 resolves `.` and `..` segments like a path, and an empty key is
/// the bucket itself).
fn check_key(key: &str) -> Result<(), StorageError> {
    let invalid = |reason: &str| {
        Err(StorageError::InvalidKey {
            key: key.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if key.is_empty() {
        return invalid("it is empty");
    }
    if key.starts_with('/') {
        return invalid("it starts with '/'");
    }
    if key.split('/').any(|s| s == "." || s == "..") {
        return invalid("it has a '.' or '..' segment");
    }
    if key.split('/').any(str::is_empty) {
        return invalid("it has an empty segment ('//' or a trailing '/')");
    }
    if key.chars().any(char::is_control) {
        return invalid("it contains a control character");
    }
    Ok(())
}

/// The TLS roots: a PEM bundle named by `AWS_CA_BUNDLE` (first) or
/// `SSL_CERT_FILE`, else the bundled webpki roots. `var` reads the environment.
fn root_certs_from_env(var: impl Fn(&str) -> Option<OsString>) -> Result<RootCerts, StorageError> {
    for name in ["AWS_CA_BUNDLE", "SSL_CERT_FILE"] {
        if let Some(path) = var(name).filter(|p| !p.is_empty()) {
            return load_ca_bundle(name, Path::new(&path));
        }
    }
    Ok(RootCerts::WebPki)
}

fn load_ca_bundle(var_name: &str, path: &Path) -> Result<RootCerts, StorageError> {
    let fail = |kind: io::ErrorKind, what: String| StorageError::Io {
        path: path.to_owned(),
        source: io::Error::new(kind, format!("{var_name} names this CA bundle, but {what}")),
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.kind(), format!("it cannot be read: {e}")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => {
                return Err(fail(
                    io::ErrorKind::InvalidData,
                    format!("it is not a valid PEM file: {e}"),
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(fail(
            io::ErrorKind::InvalidData,
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(RootCerts::from(certs))
}

/// Reads up to `limit` bytes of a body, ignoring read errors (the caller only
/// wants a description), then drains the rest so the connection can be reused.
fn read_error_body(response: Response<ureq::Body>) -> Vec<u8> {
    let mut reader = response.into_body().into_reader();
    let mut bytes = Vec::new();
    let _ = (&mut reader).take(ERROR_BODY_LIMIT).read_to_end(&mut bytes);
    let _ = io::copy(&mut reader.take(DRAIN_LIMIT), &mut io::sink());
    bytes
}

/// Reads and discards a (small) body so the connection goes back to the pool.
fn drain(response: Response<ureq::Body>) {
    let _ = io::copy(
        &mut response.into_body().into_reader().take(DRAIN_LIMIT),
        &mut io::sink(),
    );
}

fn header<'r>(response: &'r Response<ureq::Body>, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// An S3 bucket reached through one pooled HTTP agent.
pub struct S3Storage {
    bucket: Bucket,
    credentials: Credentials,
    agent: Agent,
    retry: RetryPolicy,
    multipart: MultipartPolicy,
    location: String,
}

impl fmt::Debug for S3Storage {
    // Hand-written: `Credentials` must not be printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("location", &self.location)
            .field("retry", &self.retry)
            .field("multipart", &self.multipart)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// Checks the settings, loads the TLS roots and builds the agent. Sends
    /// nothing.
    pub fn new(settings: S3Settings) -> Result<S3Storage, StorageError> {
        let S3Settings {
            bucket,
            endpoint,
            region,
            path_style,
            access_key_id,
            secret_access_key,
            session_token,
        } = settings;

        let endpoint_text =
            endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let config_error = |detail: String| StorageError::Transport {
            location: format!("s3://{bucket}"),
            detail,
        };
        let endpoint_url = endpoint_text.parse().map_err(|e| {
            config_error(format!("the endpoint {endpoint_text:?} is not a URL: {e}"))
        })?;
        let style = if path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint_url, style, bucket.clone(), region).map_err(|e| {
            let hint = match e {
                rusty_s3::BucketError::UnsupportedScheme => "the endpoint must start with http:// or https://",
                rusty_s3::BucketError::MissingHost => "the endpoint has no host",
                rusty_s3::BucketError::ParseError(_) if !path_style => {
                    "virtual-host style needs a bucket name that is a valid DNS label and an endpoint \
                     that is a host name, not an IP address; use path-style URLs instead"
                }
                rusty_s3::BucketError::ParseError(_) => "the bucket name does not fit in a URL",
            };
            config_error(format!("invalid endpoint {endpoint_text:?} or bucket: {hint}"))
        })?;
        let location = location_of(&bucket, path_style);

        let credentials = match session_token {
            Some(token) => Credentials::new_with_token(access_key_id, secret_access_key, token),
            None => Credentials::new(access_key_id, secret_access_key),
        };

        let root_certs = root_certs_from_env(|name| std::env::var_os(name))?;
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_read(Some(IO_TIMEOUT))
            .timeout_per_write(Some(IO_TIMEOUT))
            .max_idle_connections(32)
            .max_idle_connections_per_host(16)
            .user_agent(concat!("walsync/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().root_certs(root_certs).build())
            .build()
            .new_agent();

        Ok(S3Storage {
            bucket,
            credentials,
            agent,
            retry: RetryPolicy::default(),
            multipart: MultipartPolicy {
                threshold_bytes: DEFAULT_MULTIPART_THRESHOLD_BYTES,
                part_bytes: DEFAULT_PART_BYTES,
            },
            location,
        })
    }

    /// Replaces the retry policy (tests use a fast one).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Makes `put` upload bodies larger than `threshold_bytes` as a multipart
    /// upload in parts of `part_bytes` (defaults: 64 MiB and 16 MiB). S3's
    /// rules win over both: bodies over 5 GiB always go in parts, and the part
    /// size is kept between 5 MiB and 5 GiB and raised so that no upload needs
    /// more than 10,000 parts.
    pub fn with_multipart(mut self, threshold_bytes: u64, part_bytes: u64) -> Self {
        self.multipart = MultipartPolicy {
            threshold_bytes,
            part_bytes,
        };
        self
    }

    /// The one retry loop of every S3 call: runs `attempt` until it succeeds,
    /// fails for good, or `max_attempts` are used, sleeping a jittered
    /// exponential backoff between tries. `what` and `key` are for log lines.
    fn retry<T>(
        &self,
        what: &str,
        key: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, StorageError> {
        let max_attempts = self.retry.max_attempts.max(1);
        let jitter = Jitter::seeded();
        let mut tries = 1;
        loop {
            match attempt() {
                Ok(value) => return Ok(value),
                Err(failure) if failure.retryable && tries < max_attempts => {
                    let delay = self.retry.backoff(tries, jitter.next_unit());
                    log::warn!(
                        "{what} {key:?}: attempt {tries}/{max_attempts} failed: {}; retrying in {delay:?}",
                        failure.error
                    );
                    std::thread::sleep(delay);
                    tries += 1;
                }
                Err(failure) => {
                    let mut error = failure.error;
                    if failure.retryable && tries > 1 {
                        note_attempts(&mut error, tries);
                    }
                    return Err(error);
                }
            }
        }
    }

    fn transport(&self, err: ureq::Error) -> Failure {
        classify_transport(err, &self.location)
    }

    fn rejected(&self, response: Response<ureq::Body>, key: &str) -> Failure {
        let status = response.status().as_u16();
        let body = read_error_body(response);
        classify_status(status, &body, &self.location, key)
    }

    fn bad_response(&self, detail: String) -> Failure {
        Failure::fatal(StorageError::BadResponse {
            location: self.location.clone(),
            detail,
        })
    }

    /// The presigned PutObject URL, with the checksum header among the signed
    /// headers (the request must then carry it with the same value).
    fn put_url(&self, key: &str, checksum: &str) -> String {
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        action.headers_mut().insert(CHECKSUM_HEADER, checksum);
        action.sign(SIGN_EXPIRY).into()
    }

    /// The error for a body that cannot be read as declared: an `Io` error
    /// naming the file, or for bytes in memory (which cannot fail to read, so
    /// only a caller's mistake gets here) a `Transport` error with the detail.
    fn body_error(&self, body: Body<'_>, source: io::Error) -> StorageError {
        match body {
            Body::File { path, .. } => StorageError::Io {
                path: path.to_owned(),
                source,
            },
            Body::Bytes(_) => StorageError::Transport {
                location: self.location.clone(),
                detail: source.to_string(),
            },
        }
    }

    /// Refuses a file body whose file is shorter than the length to upload.
    fn check_body_len(&self, key: &str, body: Body<'_>) -> Result<(), StorageError> {
        if let Body::File { path, len } = body {
            let on_disk = std::fs::metadata(path)
                .map_err(|e| self.body_error(body, e))?
                .len();
            if on_disk < len {
                return Err(self.body_error(
                    body,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the file has {on_disk} bytes, fewer than the {len} to upload as {key:?}"
                        ),
                    ),
                ));
            }
        }
        Ok(())
    }

    fn put_once(&self, key: &str, body: Body<'_>, checksum: &str) -> Result<(), Failure> {
        let io_error = |source: io::Error| Failure::fatal(self.body_error(body, source));
        self.check_body_len(key, body).map_err(Failure::fatal)?;
        let mut reader = body.open().map_err(io_error)?;

        let url = self.put_url(key, checksum);
        log::debug!("{}: PUT {key:?} ({} bytes)", self.location, body.len());
        let response = self
            .agent
            .put(&url)
            .header("content-length", body.len().to_string())
            .header(CHECKSUM_HEADER, checksum)
            .send(SendBody::from_reader(&mut reader))
            .map_err(|e| self.transport(e))?;

        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        let etag = header(&response, "etag").is_some();
        let echoed = header(&response, CHECKSUM_HEADER).map(str::to_owned);
        drain(response);
        if !etag {
            return Err(self.bad_response(format!(
                "PutObject of {key:?} answered success without an ETag header"
            )));
        }
        if let Some(echoed) = echoed.filter(|e| e != checksum) {
            return Err(self.bad_response(format!(
                "PutObject of {key:?} stored CRC32 {echoed}, but we sent {checksum}"
            )));
        }
        Ok(())
    }

    /// Uploads `body` as a multipart upload (see the module documentation);
    /// `crc32` is the CRC32 of the whole body, which the bytes read for the
    /// parts must have. Any failure after CreateMultipartUpload aborts the
    /// upload, so no object appears under `key`.
    fn put_multipart(&self, key: &str, body: Body<'_>, crc32: u32) -> Result<(), StorageError> {
        self.check_body_len(key, body)?;
        let parts = plan_parts(body.len(), self.multipart.part_bytes);
        log::debug!(
            "{}: multipart PUT {key:?} ({} bytes in {} parts)",
            self.location,
            body.len(),
            parts.len()
        );
        let upload_id = self.retry("create multipart upload", key, || {
            self.create_upload_once(key)
        })?;
        let completed = self
            .upload_parts(key, &upload_id, body, crc32, &parts)
            .and_then(|uploaded| {
                let reported = self.retry("complete multipart upload", key, || {
                    self.complete_upload_once(key, &upload_id, &uploaded)
                })?;
                Ok((uploaded, reported))
            });
        let (uploaded, reported) = match completed {
            Ok(done) => done,
            Err(error) => {
                self.abort_upload(key, &upload_id, &error);
                return Err(error);
            }
        };
        if let Some(reported) =
            reported.filter(|r| !completed_checksum_matches(r, &uploaded, crc32))
        {
            // The object exists, but the server's checksum of it is not that
            // of the parts we sent: remove it rather than leave it behind.
            let error = StorageError::BadResponse {
                location: self.location.clone(),
                detail: format!(
                    "CompleteMultipartUpload of {key:?} reports CRC32 {reported}, but the parts sent \
                     give {}",
                    composite_checksum(&uploaded)
                ),
            };
            if let Err(e) = self.retry("delete", key, || self.delete_once(key)) {
                log::warn!("cannot delete {key:?} after its checksum mismatch ({error}): {e}");
            }
            return Err(error);
        }
        Ok(())
    }

    /// Reads and uploads each part in turn; a part is read twice (once for
    /// its CRC32, which must be signed before sending, then to send it), never
    /// held in memory. Checks the CRC32 of all bytes read against `crc32`.
    fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        body: Body<'_>,
        crc32: u32,
        parts: &[PartSpan],
    ) -> Result<Vec<UploadedPart>, StorageError> {
        let mut whole = crc32fast::Hasher::new();
        let mut uploaded = Vec::with_capacity(parts.len());
        for part in parts {
            let part_crc32 =
                part_crc32(body, part, &mut whole).map_err(|e| self.body_error(body, e))?;
            let checksum = checksum_header_value(part_crc32);
            let what = format!("upload part {}/{}", part.number, parts.len());
            let etag = self.retry(&what, key, || {
                self.upload_part_once(key, upload_id, body, part, &checksum)
            })?;
            uploaded.push(UploadedPart {
                number: part.number,
                etag,
                crc32: part_crc32,
            });
        }
        let read_crc32 = whole.finalize();
        if read_crc32 != crc32 {
            return Err(self.body_error(
                body,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the {} bytes uploaded in parts as {key:?} have CRC32 {read_crc32:08x}, not \
                         the {crc32:08x} expected: the data changed while uploading, or the CRC32 is wrong",
                        body.len()
                    ),
                ),
            ));
        }
        Ok(uploaded)
    }

    /// Reads a short XML answer (at most `ERROR_BODY_LIMIT` bytes kept), then
    /// drains the rest so the connection can be reused.
    fn read_answer(
        &self,
        response: Response<ureq::Body>,
        what: &str,
        key: &str,
    ) -> Result<String, Failure> {
        let mut reader = response.into_body().into_reader();
        let mut bytes = Vec::new();
        (&mut reader)
            .take(ERROR_BODY_LIMIT)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Failure::retryable(StorageError::Transport {
                    location: self.location.clone(),
                    detail: format!("reading the answer to {what} of {key:?}: {e}"),
                })
            })?;
        let _ = io::copy(&mut reader.take(DRAIN_LIMIT), &mut io::sink());
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn create_upload_once(&self, key: &str) -> Result<String, Failure> {
        let mut action = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key);
        action
            .headers_mut()
            .insert(CHECKSUM_ALGORITHM_HEADER, "CRC32");
        let url = action.sign(SIGN_EXPIRY);
        log::debug!("{}: create multipart upload {key:?}", self.location);
        let response = self
            .agent
            .post(url.as_str())
            .header(CHECKSUM_ALGORITHM_HEADER, "CRC32")
            .send_empty()
            .map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        let text = self.read_answer(response, "CreateMultipartUpload", key)?;
        match xml_text(&text, "UploadId") {
            Some(id) if !id.is_empty() => Ok(id),
            _ => Err(self.bad_response(format!(
                "CreateMultipartUpload of {key:?} answered without an UploadId: {:?}",
                excerpt(&text)
            ))),
        }
    }

    /// Sends one part; returns its ETag.
    fn upload_part_once(
        &self,
        key: &str,
        upload_id: &str,
        body: Body<'_>,
        part: &PartSpan,
        checksum: &str,
    ) -> Result<String, Failure> {
        let inner = open_part(body, part.offset, part.len)
            .map_err(|e| Failure::fatal(self.body_error(body, e)))?;
        let mut reader = PartReader {
            inner,
            remaining: part.len,
            ended_early: false,
        };
        let mut action =
            self.bucket
                .upload_part(Some(&self.credentials), key, part.number, upload_id);
        action.headers_mut().insert(CHECKSUM_HEADER, checksum);
        let url = action.sign(SIGN_EXPIRY);
        log::debug!(
            "{}: PUT {key:?} part {} ({} bytes)",
            self.location,
            part.number,
            part.len
        );
        let sent = self
            .agent
            .put(url.as_str())
            .header("content-length", part.len.to_string())
            .header(CHECKSUM_HEADER, checksum)
            .send(SendBody::from_reader(&mut reader));
        if reader.ended_early {
            let read = part.len - reader.remaining;
            return Err(Failure::fatal(
                self.body_error(body, short_part(part, read)),
            ));
        }
        let response = sent.map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        let etag = header(&response, "etag").map(str::to_owned);
        let echoed = header(&response, CHECKSUM_HEADER).map(str::to_owned);
        drain(response);
        let Some(etag) = etag else {
            return Err(self.bad_response(format!(
                "UploadPart {} of {key:?} answered success without an ETag header",
                part.number
            )));
        };
        if let Some(echoed) = echoed.filter(|e| e != checksum) {
            return Err(self.bad_response(format!(
                "UploadPart {} of {key:?} stored CRC32 {echoed}, but we sent {checksum}",
                part.number
            )));
        }
        Ok(etag)
    }

    /// Completes the upload; returns the object's `ChecksumCRC32` if the
    /// server reports one.
    fn complete_upload_once(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<Option<String>, Failure> {
        let url = self
            .bucket
            .complete_multipart_upload(
                Some(&self.credentials),
                key,
                upload_id,
                std::iter::empty::<&str>(),
            )
            .sign(SIGN_EXPIRY);
        let xml = complete_upload_xml(parts);
        log::debug!(
            "{}: complete multipart upload {key:?} ({} parts)",
            self.location,
            parts.len()
        );
        let response = self
            .agent
            .post(url.as_str())
            .header("content-type", "application/xml")
            .send(xml.as_bytes())
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        let text = self.read_answer(response, "CompleteMultipartUpload", key)?;
        // S3 may answer 200 and report an error in the body.
        if text.contains("<Error>") {
            return Err(classify_status(
                status,
                text.as_bytes(),
                &self.location,
                key,
            ));
        }
        if !text.contains("<CompleteMultipartUploadResult") {
            return Err(self.bad_response(format!(
                "CompleteMultipartUpload of {key:?} answered {:?}",
                excerpt(&text)
            )));
        }
        Ok(xml_text(&text, "ChecksumCRC32").filter(|c| !c.is_empty()))
    }

    /// Best effort: aborts the upload so its parts go away, and logs how it
    /// went; `cause` is why.
    fn abort_upload(&self, key: &str, upload_id: &str, cause: &StorageError) {
        match self.retry("abort multipart upload", key, || {
            self.abort_upload_once(key, upload_id)
        }) {
            Ok(()) => log::info!("aborted the multipart upload of {key:?}: {cause}"),
            Err(e) => log::warn!(
                "cannot abort the multipart upload {upload_id:?} of {key:?} ({e}) after: {cause}; \
                 its parts stay stored until the bucket's AbortIncompleteMultipartUpload \
                 lifecycle rule (if any) removes them"
            ),
        }
    }

    fn abort_upload_once(&self, key: &str, upload_id: &str) -> Result<(), Failure> {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), key, upload_id)
            .sign(SIGN_EXPIRY);
        log::debug!("{}: abort multipart upload {key:?}", self.location);
        let response = self
            .agent
            .delete(url.as_str())
            .call()
            .map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        drain(response);
        Ok(())
    }

    fn get_once(&self, key: &str) -> Result<ObjectReader, Failure> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(SIGN_EXPIRY);
        log::debug!("{}: GET {key:?}", self.location);
        let response = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        if header(&response, "etag").is_none() {
            drain(response);
            return Err(self.bad_response(format!(
                "GetObject of {key:?} answered success without an ETag header"
            )));
        }
        Ok(Box::new(response.into_body().into_reader()))
    }

    fn get_range_once(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, Failure> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(SIGN_EXPIRY);
        let last = start + len - 1;
        log::debug!("{}: GET {key:?} bytes {start}-{last}", self.location);
        let response = self
            .agent
            .get(url.as_str())
            .header("range", format!("bytes={start}-{last}"))
            .call()
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        if status == 416 {
            drain(response);
            return Err(self.bad_response(format!(
                "object {key:?}: {}",
                super::range_short(start, len, start)
            )));
        }
        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        // 206 with exactly the range; a server that ignores `Range` answers
        // 200 with the whole object, usable only when the range is all of it.
        let whole = header(&response, "content-length").and_then(|v| v.parse::<u64>().ok());
        if status != 206 && (start != 0 || whole != Some(len)) {
            drain(response);
            return Err(self.bad_response(format!(
                "GetObject of {key:?} with a Range header answered {status}, not 206 Partial Content"
            )));
        }
        // Sized once: no doubling of a multi-MiB buffer while it fills.
        let mut body = Vec::with_capacity(len as usize);
        response
            .into_body()
            .into_reader()
            .take(len + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.transport(ureq::Error::Io(e)))?;
        if body.len() as u64 != len {
            // The body is all the server sent (a cut transfer is a transport
            // error, retried): the object is shorter than the listing said.
            return Err(self.bad_response(format!(
                "object {key:?}: {}",
                super::range_short(start, len, start + body.len() as u64)
            )));
        }
        Ok(body)
    }

    fn delete_once(&self, key: &str) -> Result<(), Failure> {
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), key)
            .sign(SIGN_EXPIRY);
        log::debug!("{}: DELETE {key:?}", self.location);
        let response = self
            .agent
            .delete(url.as_str())
            .call()
            .map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        drain(response);
        Ok(())
    }

    fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<ListObjectsV2Response, Failure> {
        let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
        // rusty-s3 asks for `encoding-type=url` and decodes the keys when the
        // answer says so; s3s-fs echoes the parameter without encoding, which
        // turns `+` into a space. Raw (XML-escaped) keys are right everywhere
        // for keys without control characters, which `check_key` refuses.
        action.query_mut().remove("encoding-type");
        if !prefix.is_empty() {
            action.with_prefix(prefix);
        }
        if let Some(token) = token {
            action.with_continuation_token(token);
        }
        let url = action.sign(SIGN_EXPIRY);
        log::debug!("{}: LIST {prefix:?}", self.location);
        let response = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.rejected(response, prefix));
        }
        let mut bytes = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(LIST_PAGE_LIMIT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Failure::retryable(StorageError::Transport {
                    location: self.location.clone(),
                    detail: format!("reading the listing of {prefix:?}: {e}"),
                })
            })?;
        if bytes.len() as u64 > LIST_PAGE_LIMIT {
            return Err(self.bad_response(format!(
                "a listing page of {prefix:?} is larger than {LIST_PAGE_LIMIT} bytes"
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| self.bad_response(format!("the listing of {prefix:?} is not UTF-8")))?;
        ListObjectsV2::parse_response(&text).map_err(|e| {
            self.bad_response(match html_page(&text) {
                Some(page) => {
                    format!("the listing of {prefix:?} is {page}, not a ListObjectsV2 result")
                }
                None => format!(
                    "the listing of {prefix:?} is not a ListObjectsV2 result ({e}): {:?}",
                    excerpt(&text)
                ),
            })
        })
    }
}

/// The size a listing gives `key`, if it is one an S3 object can have. A
/// restore plans its downloads from these sizes (a list of 2 MiB ranges), so
/// a server claiming 16 EiB would make it allocate without end.
fn listed_size(prefix: &str, key: &str, size: Option<u64>) -> Result<u64, String> {
    match size {
        None => Err(format!(
            "the listing of {prefix:?} gives no size for {key:?}"
        )),
        Some(size) if size > MAX_OBJECT_BYTES => Err(format!(
            "the listing of {prefix:?} gives {key:?} a size of {size} bytes, more than an S3 \
             object can have (5 TiB); check that the endpoint is an S3 server"
        )),
        Some(size) => Ok(size),
    }
}

/// Adds "after N attempts" to the detail of an error that was retried.
fn note_attempts(error: &mut StorageError, tries: u32) {
    match error {
        StorageError::Transport { detail, .. }
        | StorageError::Server { detail, .. }
        | StorageError::BadResponse { detail, .. } => {
            detail.push_str(&format!(", after {tries} attempts"))
        }
        _ => {}
    }
}

impl Storage for S3Storage {
    fn put(&self, key: &str, body: Body<'_>, crc32: u32) -> Result<(), StorageError> {
        check_key(key)?;
        if self.multipart.applies_to(body.len()) {
            return self.put_multipart(key, body, crc32);
        }
        let checksum = checksum_header_value(crc32);
        self.retry("put", key, || self.put_once(key, body, &checksum))
    }

    fn get(&self, key: &str) -> Result<ObjectReader, StorageError> {
        check_key(key)?;
        self.retry("get", key, || self.get_once(key))
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StorageError> {
        check_key(key)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        self.retry("get", key, || self.get_range_once(key, start, len))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.retry("list", prefix, || self.list_page(prefix, token.as_deref()))?;
            for object in page.contents {
                let size = listed_size(prefix, &object.key, object.size).map_err(|detail| {
                    StorageError::BadResponse {
                        location: self.location.clone(),
                        detail,
                    }
                })?;
                objects.push(ObjectMeta {
                    key: object.key,
                    size,
                });
            }
            match page.next_continuation_token {
                Some(next) if token.as_deref() == Some(next.as_str()) => {
                    return Err(StorageError::BadResponse {
                        location: self.location.clone(),
                        detail: format!("the listing of {prefix:?} repeats its continuation token"),
                    });
                }
                Some(next) => token = Some(next),
                None => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.dedup_by(|a, b| a.key == b.key);
        Ok(objects)
    }

    fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            check_key(key)?;
            match self.retry("delete", key, || self.delete_once(key)) {
                Ok(()) | Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}

/// `s3://bucket` for AWS, plus the endpoint (scheme, host, port; never a
/// user or password) for any other server.
fn location_of(bucket: &Bucket, path_style: bool) -> String {
    let base = bucket.base_url();
    let host = base.host_str().unwrap_or_default();
    let host = if path_style {
        host
    } else {
        host.strip_prefix(&format!("{}.", bucket.name()))
            .unwrap_or(host)
    };
    if host.ends_with(".amazonaws.com") {
        format!("s3://{}", bucket.name())
    } else {
        let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "s3://{} (endpoint {}://{host}{port})",
            bucket.name(),
            base.scheme()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCATION: &str = "s3://b (endpoint http://127.0.0.1:1)";

    fn s3_error(code: &str, message: &str) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
             <RequestId>1</RequestId></Error>"
        )
        .into_bytes()
    }

    #[test]
    fn checksum_header_is_base64_of_big_endian_crc32() {
        // CRC32 ("123456789") = 0xCBF43926, the standard check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(checksum_header_value(0xCBF4_3926), "y/Q5Jg==");
        assert_eq!(checksum_header_value(0), "AAAAAA==");
        assert_eq!(checksum_header_value(u32::MAX), "/////w==");
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn parts_cover_the_body_in_order_with_a_short_last_part() {
        let parts = plan_parts(12 * MIB + 5, 5 * MIB);
        let spans: Vec<(u16, u64, u64)> =
            parts.iter().map(|p| (p.number, p.offset, p.len)).collect();
        assert_eq!(
            spans,
            vec![
                (1, 0, 5 * MIB),
                (2, 5 * MIB, 5 * MIB),
                (3, 10 * MIB, 2 * MIB + 5)
            ]
        );
        // An exact multiple gives no empty trailing part.
        let parts = plan_parts(32 * MIB, 16 * MIB);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len == 16 * MIB));
        assert!(plan_parts(0, 16 * MIB).is_empty());
    }

    #[test]
    fn part_size_keeps_to_s3_limits() {
        // Below S3's minimum: raised to 5 MiB.
        let parts = plan_parts(11 * MIB, MIB);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].len, 5 * MIB);
        // Above the maximum: lowered to 5 GiB.
        let parts = plan_parts(12 * 1024 * MIB, 8 * 1024 * MIB);
        assert_eq!(parts[0].len, 5 * 1024 * MIB);
        // Too many parts: the size grows so that 10,000 are enough.
        for len in [
            200 * 1024 * MIB,
            5 * 1024 * 1024 * MIB,
            5 * 1024 * 1024 * MIB + 1,
        ] {
            let parts = plan_parts(len, 16 * MIB);
            assert!(parts.len() <= 10_000, "{len}: {} parts", parts.len());
            assert!(parts[..parts.len() - 1]
                .iter()
                .all(|p| p.len >= MIN_PART_BYTES && p.len == parts[0].len));
            let last = parts.last().expect("a non-empty body has parts");
            assert_eq!(last.offset + last.len, len);
            assert_eq!(usize::from(last.number), parts.len());
        }
    }

    #[test]
    fn multipart_is_used_above_the_threshold_and_above_5_gib() {
        let policy = MultipartPolicy {
            threshold_bytes: 64 * MIB,
            part_bytes: 16 * MIB,
        };
        assert!(!policy.applies_to(0));
        assert!(!policy.applies_to(64 * MIB));
        assert!(policy.applies_to(64 * MIB + 1));
        let policy = MultipartPolicy {
            threshold_bytes: u64::MAX,
            part_bytes: 16 * MIB,
        };
        assert!(!policy.applies_to(5 * 1024 * MIB));
        assert!(
            policy.applies_to(5 * 1024 * MIB + 1),
            "S3 refuses a larger PutObject"
        );
    }

    fn uploaded(number: u16, etag: &str, data: &[u8]) -> UploadedPart {
        UploadedPart {
            number,
            etag: etag.to_owned(),
            crc32: crc32fast::hash(data),
        }
    }

    #[test]
    fn complete_body_lists_number_etag_and_crc32_of_each_part() {
        let parts = [
            uploaded(1, "\"abc\"", b"123456789"),
            uploaded(2, "d<&>e", b""),
        ];
        let xml = complete_upload_xml(&parts);
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Part><PartNumber>1</PartNumber><ETag>&quot;abc&quot;</ETag><ChecksumCRC32>y/Q5Jg==</ChecksumCRC32></Part>\
             <Part><PartNumber>2</PartNumber><ETag>d&lt;&amp;&gt;e</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part>\
             </CompleteMultipartUpload>"
        );
        assert_eq!(xml_text(&xml, "ETag").as_deref(), Some("\"abc\""));
    }

    #[test]
    fn composite_checksum_is_crc32_of_part_crc32s_with_count() {
        let parts = [uploaded(1, "a", b"hello, "), uploaded(2, "b", b"world")];
        let mut concatenated = Vec::new();
        concatenated.extend_from_slice(&crc32fast::hash(b"hello, ").to_be_bytes());
        concatenated.extend_from_slice(&crc32fast::hash(b"world").to_be_bytes());
        let expected = format!(
            "{}-2",
            checksum_header_value(crc32fast::hash(&concatenated))
        );
        assert_eq!(composite_checksum(&parts), expected);

        let whole = crc32fast::hash(b"hello, world");
        assert!(completed_checksum_matches(&expected, &parts, whole));
        assert!(completed_checksum_matches(
            expected.trim_end_matches("-2"),
            &parts,
            whole
        ));
        assert!(completed_checksum_matches(
            &checksum_header_value(whole),
            &parts,
            whole
        ));
        assert!(!completed_checksum_matches("AAAAAA==-2", &parts, whole));
        assert!(!completed_checksum_matches(&expected, &parts[..1], whole));
    }

    #[test]
    fn part_crc32_reads_one_part_and_feeds_the_whole() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let path =
            std::env::temp_dir().join(format!("walsync-s3-{}-parts.bin", std::process::id()));
        std::fs::write(&path, &data).expect("temp dir is writable");
        for body in [
            Body::Bytes(&data),
            Body::File {
                path: &path,
                len: 10_000,
            },
        ] {
            let mut whole = crc32fast::Hasher::new();
            let spans = [
                PartSpan {
                    number: 1,
                    offset: 0,
                    len: 6_000,
                },
                PartSpan {
                    number: 2,
                    offset: 6_000,
                    len: 4_000,
                },
            ];
            let first = part_crc32(body, &spans[0], &mut whole).expect("part 1");
            let second = part_crc32(body, &spans[1], &mut whole).expect("part 2");
            assert_eq!(first, crc32fast::hash(&data[..6_000]));
            assert_eq!(second, crc32fast::hash(&data[6_000..]));
            assert_eq!(whole.finalize(), crc32fast::hash(&data));
        }

        // A file shorter than the part: an error saying so, not a short CRC.
        let body = Body::File {
            path: &path,
            len: 12_000,
        };
        let span = PartSpan {
            number: 2,
            offset: 8_000,
            len: 4_000,
        };
        let err = part_crc32(body, &span, &mut crc32fast::Hasher::new()).expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            err.to_string().contains("after 2000 of its 4000 bytes"),
            "{err}"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn part_reader_notices_a_body_that_ends_early() {
        let mut reader = PartReader {
            inner: &b"abc"[..],
            remaining: 5,
            ended_early: false,
        };
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).expect_err("ends early");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(reader.ended_early);
        assert_eq!(out, b"abc");

        let mut reader = PartReader {
            inner: &b"abc"[..],
            remaining: 3,
            ended_early: false,
        };
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("exact length");
        assert!(!reader.ended_early);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input.as_bytes()), expected, "{input:?}");
        }
    }

    #[test]
    fn backoff_doubles_within_half_and_full_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        };
        for retry in 1..=12 {
            let cap = Duration::from_millis(100 * 2u64.pow(retry - 1)).min(Duration::from_secs(5));
            assert_eq!(policy.backoff(retry, 0.0), cap / 2, "retry {retry}");
            assert!(policy.backoff(retry, 0.999_999) <= cap, "retry {retry}");
            assert!(policy.backoff(retry, 0.5) >= cap / 2, "retry {retry}");
        }
        assert_eq!(policy.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(u32::MAX, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn signature_mismatch_is_auth_and_final() {
        let f = classify_status(
            403,
            &s3_error("SignatureDoesNotMatch", "nope"),
            LOCATION,
            "k",
        );
        assert!(!f.retryable);
        assert!(
            matches!(&f.error, StorageError::Auth { detail, .. } if detail.contains("SignatureDoesNotMatch"))
        );
        let f = classify_status(403, &s3_error("InvalidAccessKeyId", "who"), LOCATION, "k");
        assert!(!f.retryable && matches!(f.error, StorageError::Auth { .. }));
        let f = classify_status(401, b"", LOCATION, "k");
        assert!(!f.retryable && matches!(f.error, StorageError::Auth { .. }));
        let f = classify_status(
            403,
            &s3_error("RequestTimeTooSkewed", "late"),
            LOCATION,
            "k",
        );
        assert!(f.error.to_string().contains("clock"));
    }

    #[test]
    fn throttling_and_server_errors_are_retried() {
        for (status, body) in [
            (
                503,
                s3_error("SlowDown", "Please reduce your request rate."),
            ),
            (500, s3_error("InternalError", "oops")),
            (429, Vec::new()),
            (502, b"<html><body>Bad Gateway</body></html>".to_vec()),
            (400, s3_error("RequestTimeout", "socket idle")),
        ] {
            let f = classify_status(status, &body, LOCATION, "k");
            assert!(f.retryable, "{status}");
            assert!(matches!(f.error, StorageError::Server { status: s, .. } if s == status));
        }
    }

    #[test]
    fn missing_key_and_bucket_are_told_apart() {
        let f = classify_status(404, &s3_error("NoSuchKey", "gone"), LOCATION, "a/b");
        assert!(!f.retryable && matches!(&f.error, StorageError::NotFound { key } if key == "a/b"));
        let f = classify_status(404, b"", LOCATION, "a/b");
        assert!(matches!(f.error, StorageError::NotFound { .. }));
        let f = classify_status(404, &s3_error("NoSuchBucket", "none"), LOCATION, "a/b");
        assert!(!f.retryable && matches!(f.error, StorageError::NoSuchBucket { .. }));
    }

    #[test]
    fn html_answers_are_bad_responses() {
        let html = b"<!DOCTYPE html><html><head><title>Not Found</title></head></html>";
        let f = classify_status(404, html, LOCATION, "k");
        assert!(!f.retryable);
        assert!(matches!(&f.error, StorageError::BadResponse { detail, .. }
                if detail.contains("an HTML page titled \"Not Found\"")));
        assert_eq!(
            html_page("<html><body>x</body></html>").as_deref(),
            Some("an HTML page")
        );
        assert_eq!(html_page("<?xml version=\"1.0\"?><Error/>"), None);
        let f = classify_status(400, b"plain text", LOCATION, "k");
        assert!(matches!(f.error, StorageError::BadResponse { .. }));
    }

    #[test]
    fn checksum_and_region_errors_say_what_to_check() {
        let f = classify_status(
            400,
            &s3_error("BadDigest", "checksum_crc32 mismatch"),
            LOCATION,
            "k",
        );
        assert!(!f.retryable);
        assert!(f.error.to_string().contains("CRC32"), "{}", f.error);
        let body = b"<Error><Code>PermanentRedirect</Code><Message>m</Message>\
                     <Endpoint>b.s3.eu-west-1.amazonaws.com</Endpoint></Error>";
        let f = classify_status(301, body, LOCATION, "k");
        assert!(!f.retryable);
        let text = f.error.to_string();
        assert!(
            text.contains("region") && text.contains("eu-west-1"),
            "{text}"
        );
        // AWS's answer to a presigned URL scoped to the wrong region is an
        // authorization error that names the bucket's region.
        let body =
            b"<Error><Code>AuthorizationQueryParametersError</Code><Message>Error parsing the \
                     X-Amz-Credential parameter; the region 'us-east-1' is wrong; expecting \
                     'eu-west-3'</Message><Region>eu-west-3</Region></Error>";
        let f = classify_status(400, body, LOCATION, "k");
        assert!(!f.retryable && f.error.is_storage_wide());
        assert!(matches!(f.error, StorageError::WrongRegion { .. }));
        let text = f.error.to_string();
        assert!(
            text.contains("in region \"eu-west-3\"") && text.contains("AWS_REGION"),
            "{text}"
        );
    }

    #[test]
    fn xml_text_decodes_entities() {
        let xml = "<Error><Code>X</Code><Message>a &lt;b&gt; &amp; &quot;c&quot;</Message></Error>";
        assert_eq!(xml_text(xml, "Code").as_deref(), Some("X"));
        assert_eq!(xml_text(xml, "Message").as_deref(), Some("a <b> & \"c\""));
        assert_eq!(xml_text(xml, "Missing"), None);
    }

    #[test]
    fn transport_errors_are_retried_but_tls_errors_are_not() {
        let f = classify_transport(ureq::Error::ConnectionFailed, LOCATION);
        assert!(f.retryable && matches!(f.error, StorageError::Transport { .. }));
        let io = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert!(classify_transport(ureq::Error::Io(io), LOCATION).retryable);
        let f = classify_transport(ureq::Error::Tls("bad certificate"), LOCATION);
        assert!(!f.retryable);
        assert!(f.error.to_string().contains("AWS_CA_BUNDLE"));
        let f = classify_transport(
            ureq::Error::BadUri("http://h/b/k?X-Amz-Signature=abc".to_owned()),
            LOCATION,
        );
        assert!(!f.error.to_string().contains("Signature"));
    }

    #[test]
    fn listed_sizes_are_those_of_s3_objects() {
        assert_eq!(listed_size("p", "p/k", Some(0)), Ok(0));
        assert_eq!(
            listed_size("p", "p/k", Some(MAX_OBJECT_BYTES)),
            Ok(MAX_OBJECT_BYTES)
        );
        let err = listed_size("p", "p/k", Some(u64::MAX)).expect_err("16 EiB");
        assert!(err.contains("\"p/k\"") && err.contains("5 TiB"), "{err}");
        let err = listed_size("p", "p/k", None).expect_err("no size");
        assert!(err.contains("no size"), "{err}");
    }

    #[test]
    fn keys_that_do_not_name_one_object_are_refused() {
        for key in ["", "/abs", "a/../b", "./a", "a//b", "a/", "a\nb"] {
            assert!(
                matches!(check_key(key), Err(StorageError::InvalidKey { .. })),
                "{key:?}"
            );
        }
        for key in ["a", "db/gen-1/000001.seg", "with space", "plus+sign", "ünï"] {
            assert!(check_key(key).is_ok(), "{key:?}");
        }
    }

    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUQIIS7uu6cklgvqIFNkPoavPlZ/IwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPd2Fsc3luYyB0ZXN0IENBMCAXDTI2MTEyNTIwNTAzM1oYDzIx
MjYxMTAxMjA1MDMzWjAaMRgwFgYDVQQDDA93YWxzeW5jIHRlc3QgQ0EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAASkbHdVvL/brQNSn0PMbOO+BZKJvdGr58rg8cEF
xOI7NwfNpdggbId9HmkHwyVuPUtD3F14+WCi2nDnA6S5+K3mo1MwUTAdBgNVHQ4E
FgQUVhmfz2MaUySKhHnNIZo0omTnEOwwHwYDVR0jBBgwFoAUVhmfz2MaUySKhHnN
IZo0omTnEOwwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAtDkH
896avKbO7sXDnXcTSbI/cjKKV1IGhG9kx+tH8mICIH4ItINDAORREvOjXj9QODa0
n88mt2TK+7GHU3TH4s4O
-----END CERTIFICATE-----
";

    fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("walsync-s3-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("temp dir is writable");
        path
    }

    #[test]
    fn ca_bundle_from_env_is_loaded_or_named_in_the_error() {
        assert!(matches!(
            root_certs_from_env(|_| None),
            Ok(RootCerts::WebPki)
        ));

        let good = temp_file("good.pem", TEST_CA);
        let roots =
            root_certs_from_env(|name| (name == "SSL_CERT_FILE").then(|| good.clone().into()));
        assert!(matches!(roots, Ok(RootCerts::Specific(certs)) if certs.len() == 1));

        let bad = temp_file("bad.pem", "not a certificate\n");
        let err = root_certs_from_env(|name| (name == "AWS_CA_BUNDLE").then(|| bad.clone().into()))
            .expect_err("a file without certificates is refused");
        let text = err.to_string();
        assert!(
            text.contains("AWS_CA_BUNDLE") && text.contains("bad.pem"),
            "{text}"
        );

        let missing = std::env::temp_dir().join("walsync-no-such-bundle.pem");
        let err =
            root_certs_from_env(|name| (name == "AWS_CA_BUNDLE").then(|| missing.clone().into()))
                .expect_err("a missing file is refused");
        assert!(err.to_string().contains("AWS_CA_BUNDLE"), "{err}");

        let _ = std::fs::remove_file(good);
        let _ = std::fs::remove_file(bad);
    }

    fn settings(endpoint: Option<&str>, path_style: bool) -> S3Settings {
        S3Settings {
            bucket: "my-bucket".to_owned(),
            endpoint: endpoint.map(str::to_owned),
            region: "eu-west-1".to_owned(),
            path_style,
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "SUPERSECRET".to_owned(),
            session_token: Some("SESSIONTOKEN".to_owned()),
        }
    }

    #[test]
    fn location_names_bucket_and_endpoint_but_no_secret() {
        let aws = S3Storage::new(settings(None, false)).expect("valid settings");
        assert_eq!(aws.location(), "s3://my-bucket");
        let local = S3Storage::new(settings(Some("http://user:pw@127.0.0.1:9000/"), true))
            .expect("valid settings");
        assert_eq!(
            local.location(),
            "s3://my-bucket (endpoint http://127.0.0.1:9000)"
        );
        for text in [format!("{aws:?}"), format!("{local:?}"), local.location()] {
            assert!(
                !text.contains("SUPERSECRET")
                    && !text.contains("SESSIONTOKEN")
                    && !text.contains("pw")
            );
        }
    }

    #[test]
    fn put_url_signs_the_checksum_header() {
        let storage =
            S3Storage::new(settings(Some("http://127.0.0.1:9000"), true)).expect("valid settings");
        let url = storage.put_url("db/key", &checksum_header_value(0xCBF4_3926));
        assert!(
            url.starts_with("http://127.0.0.1:9000/my-bucket/db/key?"),
            "{url}"
        );
        assert!(
            url.contains("X-Amz-SignedHeaders=host%3Bx-amz-checksum-crc32"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Security-Token=SESSIONTOKEN"), "{url}");
        assert!(!url.contains("SUPERSECRET"));
    }

    #[test]
    fn bad_endpoints_are_refused_with_a_hint() {
        let err =
            S3Storage::new(settings(Some("ftp://example.com"), true)).expect_err("ftp is refused");
        assert!(err.to_string().contains("http://"), "{err}");
        let err =
            S3Storage::new(settings(Some("not a url"), true)).expect_err("garbage is refused");
        assert!(err.to_string().contains("not a URL"), "{err}");
        let err = S3Storage::new(settings(Some("http://127.0.0.1:9000"), false))
            .expect_err("IP + virtual host");
        assert!(err.to_string().contains("path-style"), "{err}");
    }
}

#[cfg(test)]
mod fuzz {
    //! What a server answers is input from outside: listings, error
    //! documents, HTML pages from proxies. Object keys come from listings.
    use super::*;
    use crate::testing::fuzz_text;

    const LISTING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>t/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>tok</NextContinuationToken><EncodingType>url</EncodingType><Contents><Key>t/a%C3%A9/generations/x</Key><LastModified>2026-11-25T20:43:16.000Z</LastModified><ETag>&quot;e&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>t/b&amp;c</Key><Size>0</Size></Contents><CommonPrefixes><Prefix>t/x/</Prefix></CommonPrefixes></ListBucketResult>"#;

    #[test]
    fn listings_never_panic() {
        assert!(ListObjectsV2::parse_response(LISTING).is_ok());
        fuzz_text("listing parser", 0x53_0001, 3000, &[LISTING], |text| {
            ListObjectsV2::parse_response(text).is_ok()
        });
    }

    #[test]
    fn error_answers_never_panic() {
        let bodies = [
            "<?xml version=\"1.0\"?><Error><Code>PermanentRedirect</Code><Message>a &amp; b</Message><Region>eu-west-1</Region><Endpoint>s3.eu-west-1.amazonaws.com</Endpoint></Error>",
            "<Error><Code>SlowDown</Code></Error>",
            "<!DOCTYPE html><html><head><title>Console – Login</title></head></html>",
            "<html><TITLE>é</TITLE>",
        ];
        fuzz_text(
            "error answer classifier",
            0x53_0002,
            3000,
            &bodies,
            |text| {
                let status = [301, 400, 403, 404, 416, 500, 503][text.len() % 7];
                let failure = classify_status(status, text.as_bytes(), "s3://b", "t/k");
                let _ = failure.error.to_string();
                failure.retryable
            },
        );
    }

    #[test]
    fn object_keys_never_panic() {
        fuzz_text(
            "S3 key check",
            0x53_0003,
            3000,
            &["t/a/generations/x", "a"],
            |key| check_key(key).is_ok(),
        );
    }
}
