//! S3-compatible storage: rusty-s3 signs, one shared ureq agent sends.
//!
//! This module owns everything between the `Storage` trait and the wire for S3:
//! building and presigning each request (rusty-s3, signed right before it is
//! sent), the one pooled `ureq::Agent` with its timeouts and TLS roots
//! (`AWS_CA_BUNDLE` / `SSL_CERT_FILE`), the single retry loop with jittered
//! exponential backoff that every call goes through, and the mapping of S3
//! answers (status and XML error code) to `StorageError`.
//!
//! It upholds ARCHITECTURE.md invariant 4 on the way up: every `put` sends the
//! object's CRC32 as a signed `x-amz-checksum-crc32` header, so that a server
//! that checks it refuses bytes that changed on the way. A server that
//! refuses the header itself (R2 until 2025, B2) gets the same request once
//! more at once with `Content-MD5`, and every upload after it
//! (`integrity`); whether the server checks at all is found out once, by a
//! probe (`upload_check`). It must never log or return a
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
//!
//! `delete` sends DeleteObjects (`POST /?delete`) in batches of at most
//! 1,000 keys, each body with a signed `Content-MD5`. A server that lacks
//! it (501, 405, or 400 naming it: GCS's XML API) gets one DELETE per key
//! instead, for that call and the rest of the process, with one WARN.
//!
//! One concern per file; the protocol is kept in plain values, the way
//! rusty-s3 keeps it, and the I/O shell around it is thin:
//! - `mod.rs`: `S3Settings`, `S3Storage` (the agent, its timeouts) and its
//!   `Storage` implementation;
//! - `requests`: the presigned requests and their signed headers, the
//!   checksum header's value, the key check (pure);
//! - `answers`: what an answer or a transport error means, as a `Failure`
//!   (the error, whether to retry) (pure);
//! - `retry`: `RetryPolicy` and the one retry loop every call goes through;
//! - `multipart`: the multipart plan, completion body and checksums, and
//!   the part readers (no network);
//! - `delete_objects`: the body of a DeleteObjects batch, its answer, and
//!   which answers mean the server lacks it (pure);
//! - `integrity`: the integrity header an upload carries (CRC32 or
//!   `Content-MD5`), the answers refusing the CRC32 header, what the
//!   probe's answer means (pure); `md5`: MD5 for `Content-MD5` (pure);
//! - `upload_check`: the checksum probe;
//! - `attempt`: one attempt of each request over the agent;
//! - `multipart_upload`: a multipart upload from create to complete or abort;
//! - `conditional`: conditional puts and tagged reads (the lease);
//! - `tls`: the TLS roots from `AWS_CA_BUNDLE` / `SSL_CERT_FILE`.

mod answers;
mod attempt;
mod conditional;
mod delete_objects;
mod integrity;
mod listing;
mod md5;
mod multipart;
mod multipart_upload;
mod requests;
mod retry;
mod tls;
mod upload_check;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, UrlStyle};
use ureq::tls::TlsConfig;
use ureq::Agent;

use super::{
    Body, ObjectMeta, ObjectReader, PutIf, PutIfOutcome, Storage, StorageError, Tagged, UploadCheck,
};
use answers::{listed_size, Failure};
use delete_objects::MAX_KEYS_PER_BATCH;
use integrity::{Digest, UploadDigest};
use md5::Md5;
use multipart::{part_crc32, MultipartPolicy, PartSpan};
use requests::check_key;
use tls::root_certs_from_env;

pub use multipart::{DEFAULT_MULTIPART_THRESHOLD_BYTES, DEFAULT_PART_BYTES};
pub use requests::checksum_header_value;
pub use retry::RetryPolicy;

/// Establishing a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// From the end of the request body to the response headers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// Any single read or write on the socket (so a stalled transfer fails, while
/// a long but progressing one does not).
const IO_TIMEOUT: Duration = Duration::from_secs(60);

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

/// An S3 bucket reached through one pooled HTTP agent.
pub struct S3Storage {
    bucket: Bucket,
    credentials: Credentials,
    agent: Agent,
    retry: RetryPolicy,
    multipart: MultipartPolicy,
    location: String,
    /// Set once the server has answered DeleteObjects as an operation it
    /// lacks: from then on, `delete` sends one DELETE per key.
    batch_delete_lacking: AtomicBool,
    /// Set once the server has refused the `x-amz-checksum-crc32` header
    /// itself: from then on, uploads carry `Content-MD5` instead.
    content_md5: AtomicBool,
    /// What the checksum probe found, once it has run.
    upload_check: OnceLock<UploadCheck>,
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
            os_error: None,
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
            batch_delete_lacking: AtomicBool::new(false),
            content_md5: AtomicBool::new(false),
            upload_check: OnceLock::new(),
        })
    }

    /// Replaces the retry policy (tests use a fast one).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Whether `delete` sends DeleteObjects batches: true until the server
    /// answers DeleteObjects as an operation it lacks, after which `delete`
    /// sends one DELETE per key for the rest of the process.
    pub fn deletes_in_batches(&self) -> bool {
        !self.batch_delete_lacking.load(Ordering::Relaxed)
    }

    /// Whether uploads carry `Content-MD5` rather than
    /// `x-amz-checksum-crc32`: false until the server refuses the CRC32
    /// header itself, after which every upload of the process does.
    pub fn uploads_with_content_md5(&self) -> bool {
        self.content_md5.load(Ordering::Relaxed)
    }

    /// The integrity header uploads carry now.
    fn upload_digest(&self) -> UploadDigest {
        if self.uploads_with_content_md5() {
            UploadDigest::ContentMd5
        } else {
            UploadDigest::Crc32
        }
    }

    /// Makes every upload from now on carry `Content-MD5`, after the server
    /// refused the CRC32 header (`said`: its words); says so once.
    fn fall_back_to_md5(&self, said: &str) {
        if !self.content_md5.swap(true, Ordering::Relaxed) {
            log::warn!(
                "{}: the server refuses the x-amz-checksum-crc32 header ({said}); \
                 uploads carry Content-MD5 instead from now on",
                self.location
            );
        }
    }

    /// The digest the upload of `span` of `body` (whose CRC32 is `crc32`)
    /// carries now; `cached` keeps its MD5 once read, for the next try.
    fn digest_of(
        &self,
        body: Body<'_>,
        span: &PartSpan,
        crc32: u32,
        cached: &mut Option<Digest>,
    ) -> Result<Digest, Failure> {
        if self.upload_digest() == UploadDigest::Crc32 {
            return Ok(Digest::crc32(crc32));
        }
        if let Some(digest) = cached {
            return Ok(digest.clone());
        }
        let mut hasher = Md5::new();
        part_crc32(body, span, &mut crc32fast::Hasher::new(), Some(&mut hasher))
            .map_err(|e| Failure::fatal(self.body_error(body, e)))?;
        let digest = Digest::md5(hasher.finalize());
        *cached = Some(digest.clone());
        Ok(digest)
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
}

impl S3Storage {
    /// Gives `each` the pages of the listing of `prefix` (after `after`,
    /// grouped by `/` with `children`; `S3Storage::list_page`), one after
    /// another, each page retried on its own, until the last page or until
    /// `each` answers `false`.
    fn pages(
        &self,
        prefix: &str,
        after: Option<&str>,
        children: bool,
        mut each: impl FnMut(listing::ListingPage) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let mut token: Option<String> = None;
        loop {
            let mut page = self.retry("list", prefix, || {
                self.list_page(prefix, after, token.as_deref(), children)
            })?;
            let next = page.next_continuation_token.take();
            if !each(page)? {
                return Ok(());
            }
            match next {
                Some(next) if token.as_deref() == Some(next.as_str()) => {
                    return Err(StorageError::BadResponse {
                        location: self.location.clone(),
                        detail: format!("the listing of {prefix:?} repeats its continuation token"),
                    });
                }
                Some(next) => token = Some(next),
                None => return Ok(()),
            }
        }
    }
}

impl Storage for S3Storage {
    fn put(&self, key: &str, body: Body<'_>, crc32: u32) -> Result<(), StorageError> {
        check_key(key)?;
        if self.multipart.applies_to(body.len()) {
            return self.put_multipart(key, body, crc32);
        }
        let whole = PartSpan {
            number: 1,
            offset: 0,
            len: body.len(),
        };
        let mut md5 = None;
        self.retry("put", key, || {
            let digest = self.digest_of(body, &whole, crc32, &mut md5)?;
            self.put_once(key, body, &digest, crc32)
        })
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
        self.list_range(prefix, None, None)
    }

    fn list_range(
        &self,
        prefix: &str,
        after: Option<&str>,
        through: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut objects = Vec::new();
        self.pages(prefix, after, false, |page| {
            // Keys come in order: once one is past `through`, no later page
            // holds one that is not.
            let past = through.is_some_and(|t| page.objects.iter().any(|o| o.key.as_str() > t));
            for object in page.objects {
                if !crate::storage::in_range(&object.key, after, through) {
                    continue;
                }
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
            Ok(!past)
        })?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.dedup_by(|a, b| a.key == b.key);
        Ok(objects)
    }

    fn lists_in_parts(&self) -> bool {
        true
    }

    fn list_children(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<String>) -> bool,
    ) -> Result<(), StorageError> {
        self.pages(prefix, None, true, |page| {
            // A server that ignores the delimiter lists every key: then the
            // folders are not worth the pages of the whole listing.
            let ignored = page.objects.iter().any(|o| {
                o.key
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.contains('/'))
            });
            if ignored {
                log::debug!(
                    "{}: the listing of {prefix:?} ignores its delimiter",
                    self.location
                );
                return Ok(false);
            }
            Ok(each(
                page.prefixes
                    .into_iter()
                    .filter(|p| {
                        p.strip_prefix(prefix)
                            .and_then(|rest| rest.strip_suffix('/'))
                            .is_some_and(|part| !part.is_empty() && !part.contains('/'))
                    })
                    .collect(),
            ))
        })
    }

    fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            check_key(key)?;
        }
        let mut done = 0;
        // One key costs one request either way; a DELETE needs no body.
        while keys.len() - done > 1 && !self.batch_delete_lacking.load(Ordering::Relaxed) {
            let batch = &keys[done..keys.len().min(done + MAX_KEYS_PER_BATCH)];
            let first = &batch[0];
            match self.retry("delete", first, || self.delete_batch_once(batch))? {
                None => done += batch.len(),
                Some(said) => {
                    if !self.batch_delete_lacking.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            "{}: the server does not take DeleteObjects ({said}); \
                             deleting one object per request from now on",
                            self.location
                        );
                    }
                }
            }
        }
        for key in &keys[done..] {
            match self.retry("delete", key, || self.delete_once(key)) {
                Ok(()) | Err(StorageError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn put_if(
        &self,
        key: &str,
        bytes: &[u8],
        condition: PutIf<'_>,
    ) -> Result<PutIfOutcome, StorageError> {
        check_key(key)?;
        self.retry("put", key, || self.put_if_once(key, bytes, condition))
    }

    fn get_tagged(&self, key: &str) -> Result<Tagged, StorageError> {
        check_key(key)?;
        self.retry("get", key, || self.get_tagged_once(key))
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn upload_check(&self, root: &str) -> UploadCheck {
        self.upload_check
            .get_or_init(|| self.probe_upload_check(root))
            .clone()
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

    pub(super) fn settings(endpoint: Option<&str>, path_style: bool) -> S3Settings {
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
