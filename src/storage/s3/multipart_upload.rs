//! The multipart upload of one large body: create it, upload each part
//! (read twice, never held in memory), check the CRC32 of all bytes read,
//! complete it and check the checksum the server reports, and abort it on
//! any failure so that no object appears under the key.

use std::io;

use super::integrity::{Digest, UploadDigest};
use super::md5::Md5;
use super::multipart::{
    completed_checksum_matches, composite_checksum, part_crc32, plan_parts, PartSpan, UploadedPart,
};
use super::S3Storage;
use crate::storage::{Body, StorageError};

impl S3Storage {
    /// Uploads `body` as a multipart upload (see the documentation of `s3`);
    /// `crc32` is the CRC32 of the whole body, which the bytes read for the
    /// parts must have. Any failure after CreateMultipartUpload aborts the
    /// upload, so no object appears under `key`.
    pub(super) fn put_multipart(
        &self,
        key: &str,
        body: Body<'_>,
        crc32: u32,
    ) -> Result<(), StorageError> {
        self.check_body_len(key, body)?;
        let parts = plan_parts(body.len(), self.multipart.part_bytes);
        log::debug!(
            "{}: multipart PUT {key:?} ({} bytes in {} parts)",
            self.location,
            body.len(),
            parts.len()
        );
        // Declared with CRC32 unless the server has refused that header:
        // then the parts carry Content-MD5 and the completion no CRC32s.
        let mut with_crc32 = true;
        let upload_id = self.retry("create multipart upload", key, || {
            with_crc32 = self.upload_digest() == UploadDigest::Crc32;
            self.create_upload_once(key, with_crc32)
        })?;
        let completed = self
            .upload_parts(key, &upload_id, body, crc32, &parts)
            .and_then(|uploaded| {
                let with_crc32 = with_crc32 && self.upload_digest() == UploadDigest::Crc32;
                let reported = self.retry("complete multipart upload", key, || {
                    self.complete_upload_once(key, &upload_id, &uploaded, with_crc32)
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
    /// its CRC32, and its MD5 when parts carry `Content-MD5`, which must be
    /// signed before sending, then to send it), never held in memory.
    /// Checks the CRC32 of all bytes read against `crc32`.
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
            let mut md5 = (self.upload_digest() == UploadDigest::ContentMd5).then(Md5::new);
            let part_crc32 = part_crc32(body, part, &mut whole, md5.as_mut())
                .map_err(|e| self.body_error(body, e))?;
            let mut cached = md5.map(|m| Digest::md5(m.finalize()));
            let what = format!("upload part {}/{}", part.number, parts.len());
            let etag = self.retry(&what, key, || {
                let digest = self.digest_of(body, part, part_crc32, &mut cached)?;
                self.upload_part_once(key, upload_id, body, part, &digest, part_crc32)
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
}
