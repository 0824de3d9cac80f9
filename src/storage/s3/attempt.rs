//! One attempt of each S3 request: send it with the pooled agent, read the
//! answer, and turn it into a value or a `Failure` (classified by
//! `answers`). The retry loop (`retry`) repeats these; nothing here sleeps
//! or retries. Reads no more of a body than it needs, and drains a short
//! rest so the connection goes back to the pool.

use std::io::{self, Read};

use ureq::http::Response;
use ureq::SendBody;

use super::answers::{
    classify_status, classify_transport, completed_upload, listing_page, range_answer, stored_etag,
    upload_id, Failure, RangeAnswer, LIST_PAGE_LIMIT,
};
use super::delete_objects::{
    batch_failure, delete_objects_xml, lacks_delete_objects, parse_delete_result,
};
use super::integrity::{refuses_checksum_header, Digest};
use super::listing::ListingPage;
use super::multipart::{
    complete_upload_xml, open_part, short_part, PartReader, PartSpan, UploadedPart,
};
use super::requests::{checksum_header_value, CHECKSUM_ALGORITHM_HEADER, CHECKSUM_HEADER};
use super::S3Storage;
use crate::storage::{Body, ObjectReader, StorageError};

/// How much of an error body is kept to classify it.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// The longest DeleteObjects answer read: one `<Deleted>` entry per key
/// (servers that ignore quiet mode send them) of 1,000 keys of up to 1,024
/// bytes, escaped, is under 8 MiB.
const DELETE_ANSWER_LIMIT: u64 = 8 * 1024 * 1024;
/// How much of a body we read only to reuse the connection; past this, the
/// connection is dropped instead.
const DRAIN_LIMIT: u64 = 1024 * 1024;

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

impl S3Storage {
    fn transport(&self, err: ureq::Error) -> Failure {
        classify_transport(err, &self.location)
    }

    fn rejected(&self, response: Response<ureq::Body>, key: &str) -> Failure {
        let status = response.status().as_u16();
        let body = read_error_body(response);
        classify_status(status, &body, &self.location, key)
    }

    /// `rejected` for an upload that carried a checksum header: an answer
    /// refusing the header itself is final here, and marked for the retry
    /// loop, which falls back to `Content-MD5`.
    fn rejected_upload(&self, response: Response<ureq::Body>, key: &str) -> Failure {
        let status = response.status().as_u16();
        let body = read_error_body(response);
        let mut failure = classify_status(status, &body, &self.location, key);
        if let Some(said) = refuses_checksum_header(status, &body) {
            failure.retryable = false;
            failure.checksum_header_refused = Some(said);
        }
        failure
    }

    fn bad_response(&self, detail: String) -> Failure {
        Failure::fatal(StorageError::BadResponse {
            location: self.location.clone(),
            detail,
        })
    }

    /// The error for a body that cannot be read as declared: an `Io` error
    /// naming the file, or for bytes in memory (which cannot fail to read, so
    /// only a caller's mistake gets here) a `Transport` error with the detail.
    pub(super) fn body_error(&self, body: Body<'_>, source: io::Error) -> StorageError {
        match body {
            Body::File { path, .. } => StorageError::Io {
                path: path.to_owned(),
                source,
            },
            Body::Bytes(_) => StorageError::Transport {
                location: self.location.clone(),
                detail: source.to_string(),
                os_error: source.raw_os_error(),
            },
        }
    }

    /// Refuses a file body whose file is shorter than the length to upload.
    pub(super) fn check_body_len(&self, key: &str, body: Body<'_>) -> Result<(), StorageError> {
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
                    os_error: e.raw_os_error(),
                })
            })?;
        let _ = io::copy(&mut reader.take(DRAIN_LIMIT), &mut io::sink());
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Sends `body` under `key` with `digest` (its integrity header);
    /// `crc32` is the body's CRC32, which a server that echoes one must
    /// echo.
    pub(super) fn put_once(
        &self,
        key: &str,
        body: Body<'_>,
        digest: &Digest,
        crc32: u32,
    ) -> Result<(), Failure> {
        let io_error = |source: io::Error| Failure::fatal(self.body_error(body, source));
        self.check_body_len(key, body).map_err(Failure::fatal)?;
        let mut reader = body.open().map_err(io_error)?;

        let url = self.put_url(key, digest);
        log::debug!("{}: PUT {key:?} ({} bytes)", self.location, body.len());
        let response = self
            .agent
            .put(&url)
            .header("content-length", body.len().to_string())
            .header(digest.header, &digest.value)
            .send(SendBody::from_reader(&mut reader))
            .map_err(|e| self.transport(e))?;

        if !response.status().is_success() {
            return Err(self.rejected_upload(response, key));
        }
        let etag = header(&response, "etag").map(str::to_owned);
        let echoed = header(&response, CHECKSUM_HEADER).map(str::to_owned);
        drain(response);
        stored_etag(
            &format!("PutObject of {key:?}"),
            etag,
            echoed.as_deref(),
            &checksum_header_value(crc32),
        )
        .map_err(|detail| self.bad_response(detail))?;
        Ok(())
    }

    /// Sends the checksum probe: `bytes` under `key` with a `digest` that
    /// does not match them. Gives the status and the start of the body of
    /// any answer but a transient one, which is a retryable `Failure`.
    pub(super) fn put_probe_once(
        &self,
        key: &str,
        bytes: &[u8],
        digest: &Digest,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let url = self.put_url(key, digest);
        log::debug!("{}: PUT {key:?} (checksum probe)", self.location);
        let response = self
            .agent
            .put(&url)
            .header(digest.header, &digest.value)
            .send(bytes)
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let body = read_error_body(response);
        if !(200..300).contains(&status) {
            let failure = classify_status(status, &body, &self.location, key);
            if failure.retryable {
                return Err(failure);
            }
        }
        Ok((status, body))
    }

    /// Creates a multipart upload; with `crc32`, declaring CRC32 as the
    /// checksum of every part.
    pub(super) fn create_upload_once(&self, key: &str, crc32: bool) -> Result<String, Failure> {
        let url = self.create_upload_url(key, crc32);
        log::debug!("{}: create multipart upload {key:?}", self.location);
        let mut request = self.agent.post(&url);
        if crc32 {
            request = request.header(CHECKSUM_ALGORITHM_HEADER, "CRC32");
        }
        let response = request.send_empty().map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.rejected_upload(response, key));
        }
        let text = self.read_answer(response, "CreateMultipartUpload", key)?;
        upload_id(key, &text).map_err(|detail| self.bad_response(detail))
    }

    /// Sends one part with `digest` (its integrity header); returns its
    /// ETag. `crc32` is the part's CRC32, which a server that echoes one
    /// must echo.
    pub(super) fn upload_part_once(
        &self,
        key: &str,
        upload_id: &str,
        body: Body<'_>,
        part: &PartSpan,
        digest: &Digest,
        crc32: u32,
    ) -> Result<String, Failure> {
        let inner = open_part(body, part.offset, part.len)
            .map_err(|e| Failure::fatal(self.body_error(body, e)))?;
        let mut reader = PartReader {
            inner,
            remaining: part.len,
            ended_early: false,
        };
        let url = self.upload_part_url(key, part.number, upload_id, digest);
        log::debug!(
            "{}: PUT {key:?} part {} ({} bytes)",
            self.location,
            part.number,
            part.len
        );
        let sent = self
            .agent
            .put(&url)
            .header("content-length", part.len.to_string())
            .header(digest.header, &digest.value)
            .send(SendBody::from_reader(&mut reader));
        if reader.ended_early {
            let read = part.len - reader.remaining;
            return Err(Failure::fatal(
                self.body_error(body, short_part(part, read)),
            ));
        }
        let response = sent.map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.rejected_upload(response, key));
        }
        let etag = header(&response, "etag").map(str::to_owned);
        let echoed = header(&response, CHECKSUM_HEADER).map(str::to_owned);
        drain(response);
        stored_etag(
            &format!("UploadPart {} of {key:?}", part.number),
            etag,
            echoed.as_deref(),
            &checksum_header_value(crc32),
        )
        .map_err(|detail| self.bad_response(detail))
    }

    /// Completes the upload; returns the object's `ChecksumCRC32` if the
    /// server reports one.
    pub(super) fn complete_upload_once(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        crc32: bool,
    ) -> Result<Option<String>, Failure> {
        let url = self.complete_upload_url(key, upload_id);
        let xml = complete_upload_xml(parts, crc32);
        log::debug!(
            "{}: complete multipart upload {key:?} ({} parts)",
            self.location,
            parts.len()
        );
        let response = self
            .agent
            .post(&url)
            .header("content-type", "application/xml")
            .send(xml.as_bytes())
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        let text = self.read_answer(response, "CompleteMultipartUpload", key)?;
        completed_upload(status, &text, &self.location, key)
    }

    pub(super) fn abort_upload_once(&self, key: &str, upload_id: &str) -> Result<(), Failure> {
        log::debug!("{}: abort multipart upload {key:?}", self.location);
        self.send_delete(&self.abort_upload_url(key, upload_id), key)
    }

    pub(super) fn get_once(&self, key: &str) -> Result<ObjectReader, Failure> {
        let url = self.get_url(key);
        log::debug!("{}: GET {key:?}", self.location);
        let response = self.agent.get(&url).call().map_err(|e| self.transport(e))?;
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

    pub(super) fn get_range_once(
        &self,
        key: &str,
        start: u64,
        len: u64,
    ) -> Result<Vec<u8>, Failure> {
        let url = self.get_url(key);
        let last = start + len - 1;
        log::debug!("{}: GET {key:?} bytes {start}-{last}", self.location);
        let response = self
            .agent
            .get(&url)
            .header("range", format!("bytes={start}-{last}"))
            .call()
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let content_length =
            header(&response, "content-length").and_then(|v| v.parse::<u64>().ok());
        match range_answer(key, status, start, len, content_length) {
            RangeAnswer::Holds => {}
            RangeAnswer::Unsuccessful => return Err(self.rejected(response, key)),
            RangeAnswer::Unusable(detail) => {
                drain(response);
                return Err(self.bad_response(detail));
            }
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
                crate::storage::range_short(start, len, start + body.len() as u64)
            )));
        }
        Ok(body)
    }

    pub(super) fn delete_once(&self, key: &str) -> Result<(), Failure> {
        log::debug!("{}: DELETE {key:?}", self.location);
        self.send_delete(&self.delete_url(key), key)
    }

    /// One DELETE request (an object, or a multipart upload) about `key`.
    fn send_delete(&self, url: &str, key: &str) -> Result<(), Failure> {
        let response = self
            .agent
            .delete(url)
            .call()
            .map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(self.rejected(response, key));
        }
        drain(response);
        Ok(())
    }

    /// Sends one DeleteObjects request for `keys` (at most
    /// `MAX_KEYS_PER_BATCH`). `Ok(Some(said))` when the answer means the
    /// server lacks the operation (`lacks_delete_objects`); keys it reports
    /// as not deleted, other than missing ones, are a `Failure`.
    pub(super) fn delete_batch_once(&self, keys: &[String]) -> Result<Option<String>, Failure> {
        let first = keys.first().map(String::as_str).unwrap_or_default();
        let xml = delete_objects_xml(keys);
        let digest = Digest::md5_of(xml.as_bytes());
        let url = self.delete_objects_url(&digest);
        log::debug!(
            "{}: DeleteObjects of {} keys from {first:?}",
            self.location,
            keys.len()
        );
        let response = self
            .agent
            .post(&url)
            .header("content-type", "application/xml")
            .header(digest.header, &digest.value)
            .send(xml.as_bytes())
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            let body = read_error_body(response);
            if let Some(said) = lacks_delete_objects(status, &body) {
                return Ok(Some(said));
            }
            return Err(classify_status(status, &body, &self.location, first));
        }
        // Not `read_answer`: servers that ignore `<Quiet>` (s3s-fs 0.14.1)
        // list every deleted key, up to about 1 MiB for 1,000 long keys.
        let mut bytes = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(DELETE_ANSWER_LIMIT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Failure::retryable(StorageError::Transport {
                    location: self.location.clone(),
                    detail: format!("reading the answer to DeleteObjects from {first:?}: {e}"),
                    os_error: e.raw_os_error(),
                })
            })?;
        if bytes.len() as u64 > DELETE_ANSWER_LIMIT {
            return Err(self.bad_response(format!(
                "the answer to DeleteObjects of {} keys from {first:?} is longer than {DELETE_ANSWER_LIMIT} bytes",
                keys.len()
            )));
        }
        let text = String::from_utf8_lossy(&bytes);
        let errors = parse_delete_result(&text).map_err(|detail| {
            self.bad_response(format!(
                "the answer to DeleteObjects of {} keys from {first:?} is not a DeleteResult: {detail}",
                keys.len()
            ))
        })?;
        match batch_failure(&errors, status, &self.location) {
            Some(failure) => Err(failure),
            None => Ok(None),
        }
    }

    pub(super) fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        token: Option<&str>,
        children: bool,
    ) -> Result<ListingPage, Failure> {
        let url = self.list_url(prefix, after, token, children);
        match after {
            Some(after) => log::debug!("{}: LIST {prefix:?} after {after:?}", self.location),
            None if children => log::debug!("{}: LIST {prefix:?} by \"/\"", self.location),
            None => log::debug!("{}: LIST {prefix:?}", self.location),
        }
        let response = self.agent.get(&url).call().map_err(|e| self.transport(e))?;
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
                    os_error: e.raw_os_error(),
                })
            })?;
        listing_page(prefix, bytes).map_err(|detail| self.bad_response(detail))
    }
}
