//! Conditional writes and tagged reads, for the lease (`crate::lease`):
//! PutObject with `If-None-Match: *` or `If-Match: <etag>` (a 412 is the
//! condition refused, not an error), and a GET of a small object that keeps
//! its ETag, `Last-Modified` and the server's `Date`. Apart from the
//! other requests so that the put path of the backup stays as it is; the
//! retry loop and the classification of errors are the same.

use std::io::{self, Read};
use std::time::Duration;

use rusty_s3::S3Action;
use ureq::http::Response;

use super::answers::{classify_status, classify_transport, Failure};
use super::S3Storage;
use crate::storage::{PutIf, PutIfOutcome, StorageError, Tagged};

const SIGN_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// The largest object `get_tagged` reads.
const TAGGED_LIMIT: u64 = 64 * 1024;

fn header(response: &Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The header and value a condition is sent as.
fn condition_header(condition: PutIf<'_>) -> (&'static str, &str) {
    match condition {
        PutIf::Absent => ("if-none-match", "*"),
        PutIf::Matches(etag) => ("if-match", etag),
    }
}

/// What a conditional put's status means: `Some` for an answer that is
/// the outcome (412: refused), `None` for one to classify as any other.
/// 409 (`ConditionalRequestConflict`: another conditional write of the
/// key is under way, AWS) is classified, and retried as a conflict.
fn conditional_status(status: u16) -> Option<PutIfOutcome> {
    (status == 412).then_some(PutIfOutcome::Refused)
}

impl S3Storage {
    fn put_if_url(&self, key: &str, condition: PutIf<'_>) -> String {
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        let (name, value) = condition_header(condition);
        action.headers_mut().insert(name, value);
        action.sign(SIGN_EXPIRY).into()
    }

    pub(super) fn put_if_once(
        &self,
        key: &str,
        bytes: &[u8],
        condition: PutIf<'_>,
    ) -> Result<PutIfOutcome, Failure> {
        let url = self.put_if_url(key, condition);
        let (name, value) = condition_header(condition);
        log::debug!("{}: PUT {key:?} ({name}: {value})", self.location);
        let response = self
            .agent
            .put(&url)
            .header(name, value)
            // s3s-fs 0.14.1 closes the connection after a 412 without
            // saying so; the next request on it failed (and was retried).
            .header("connection", "close")
            .send(bytes)
            .map_err(|e| classify_transport(e, &self.location))?;
        let status = response.status().as_u16();
        let etag = header(&response, "etag");
        let body = read_some(response);
        if let Some(outcome) = conditional_status(status) {
            return Ok(outcome);
        }
        if status == 409 {
            return Err(Failure::retryable(StorageError::Server {
                location: self.location.clone(),
                key: key.to_owned(),
                status,
                detail: "another conditional write of the object is under way".to_owned(),
            }));
        }
        if !(200..300).contains(&status) {
            return Err(classify_status(status, &body, &self.location, key));
        }
        match etag {
            Some(etag) => Ok(PutIfOutcome::Written { etag }),
            None => Err(Failure::fatal(StorageError::BadResponse {
                location: self.location.clone(),
                detail: format!("PutObject of {key:?} answered success without an ETag header"),
            })),
        }
    }

    pub(super) fn get_tagged_once(&self, key: &str) -> Result<Tagged, Failure> {
        let url = self.get_url(key);
        log::debug!("{}: GET {key:?} (tagged)", self.location);
        let response = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| classify_transport(e, &self.location))?;
        let status = response.status().as_u16();
        let etag = header(&response, "etag");
        let modified_ms = header(&response, "last-modified")
            .as_deref()
            .and_then(crate::time::parse_http_date);
        let server_now_ms = header(&response, "date")
            .as_deref()
            .and_then(crate::time::parse_http_date);
        let bytes = read_some(response);
        if !(200..300).contains(&status) {
            return Err(classify_status(status, &bytes, &self.location, key));
        }
        let bad = |detail: String| {
            Failure::fatal(StorageError::BadResponse {
                location: self.location.clone(),
                detail,
            })
        };
        if bytes.len() as u64 > TAGGED_LIMIT {
            return Err(bad(format!(
                "object {key:?} is larger than {TAGGED_LIMIT} bytes; it is not a lease"
            )));
        }
        let etag = etag.ok_or_else(|| {
            bad(format!(
                "GetObject of {key:?} answered success without an ETag header"
            ))
        })?;
        Ok(Tagged {
            bytes,
            etag,
            modified_ms,
            server_now_ms,
        })
    }
}

/// Up to `TAGGED_LIMIT` + 1 bytes of a body (read errors end it), the rest
/// drained so the connection can be reused.
fn read_some(response: Response<ureq::Body>) -> Vec<u8> {
    let mut reader = response.into_body().into_reader();
    let mut bytes = Vec::new();
    let _ = (&mut reader).take(TAGGED_LIMIT + 1).read_to_end(&mut bytes);
    let _ = io::copy(&mut reader.take(1024 * 1024), &mut io::sink());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::s3::tests::settings;

    #[test]
    fn conditions_are_sent_as_signed_headers_and_412_is_a_refusal() {
        let storage =
            S3Storage::new(settings(Some("http://127.0.0.1:9000"), true)).expect("valid settings");
        let url = storage.put_if_url("db/lease", PutIf::Absent);
        assert!(
            url.contains("X-Amz-SignedHeaders=host%3Bif-none-match"),
            "{url}"
        );
        let url = storage.put_if_url("db/lease", PutIf::Matches("\"abc\""));
        assert!(url.contains("X-Amz-SignedHeaders=host%3Bif-match"), "{url}");
        assert_eq!(condition_header(PutIf::Absent), ("if-none-match", "*"));
        assert_eq!(
            condition_header(PutIf::Matches("\"e\"")),
            ("if-match", "\"e\"")
        );
        assert_eq!(conditional_status(412), Some(PutIfOutcome::Refused));
        for status in [200, 304, 400, 409, 500] {
            assert_eq!(conditional_status(status), None, "{status}");
        }
    }
}
