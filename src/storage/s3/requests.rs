//! The requests walsync sends to S3, as values: each one presigned by
//! rusty-s3 right before it is sent (`SIGN_EXPIRY` only has to cover clock
//! skew and a slow start), with the signed headers it must then carry; the
//! value of the checksum header; and the check that a key names one object.
//! Nothing here sends anything.

use std::time::Duration;

use rusty_s3::S3Action;

use super::integrity::Digest;
use super::S3Storage;
use crate::storage::StorageError;

/// How long a presigned URL stays valid. Each request is signed right before
/// it is sent, so this only has to cover clock skew and a slow start.
const SIGN_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// The signed checksum header of every PutObject and UploadPart.
pub(super) const CHECKSUM_HEADER: &str = "x-amz-checksum-crc32";
/// The signed header of CreateMultipartUpload that makes S3 expect (and
/// check) a CRC32 with every part.
pub(super) const CHECKSUM_ALGORITHM_HEADER: &str = "x-amz-checksum-algorithm";

/// The value of `x-amz-checksum-crc32`: base64 of the big-endian CRC32.
pub fn checksum_header_value(crc32: u32) -> String {
    base64_encode(&crc32.to_be_bytes())
}

/// Standard base64 with padding (RFC 4648), enough for checksum headers.
pub(super) fn base64_encode(bytes: &[u8]) -> String {
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

/// Rejects keys that would not name one object under the bucket's URL
/// (rusty-s3 resolves `.` and `..` segments like a path, and an empty key is
/// the bucket itself).
pub(super) fn check_key(key: &str) -> Result<(), StorageError> {
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

impl S3Storage {
    /// The presigned PutObject URL, with the checksum header among the signed
    /// headers (the request must then carry it with the same value).
    pub(super) fn put_url(&self, key: &str, digest: &Digest) -> String {
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        action.headers_mut().insert(digest.header, &digest.value);
        action.sign(SIGN_EXPIRY).into()
    }

    /// The presigned CreateMultipartUpload URL; with `crc32`, declaring CRC32
    /// as the checksum of every part (a signed header the request must
    /// carry).
    pub(super) fn create_upload_url(&self, key: &str, crc32: bool) -> String {
        let mut action = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key);
        if crc32 {
            action
                .headers_mut()
                .insert(CHECKSUM_ALGORITHM_HEADER, "CRC32");
        }
        action.sign(SIGN_EXPIRY).into()
    }

    /// The presigned UploadPart URL of part `number`, with the part's
    /// checksum header among the signed headers.
    pub(super) fn upload_part_url(
        &self,
        key: &str,
        number: u16,
        upload_id: &str,
        digest: &Digest,
    ) -> String {
        let mut action = self
            .bucket
            .upload_part(Some(&self.credentials), key, number, upload_id);
        action.headers_mut().insert(digest.header, &digest.value);
        action.sign(SIGN_EXPIRY).into()
    }

    /// The presigned CompleteMultipartUpload URL (its body is
    /// `multipart::complete_upload_xml`).
    pub(super) fn complete_upload_url(&self, key: &str, upload_id: &str) -> String {
        self.bucket
            .complete_multipart_upload(
                Some(&self.credentials),
                key,
                upload_id,
                std::iter::empty::<&str>(),
            )
            .sign(SIGN_EXPIRY)
            .into()
    }

    /// The presigned AbortMultipartUpload URL.
    pub(super) fn abort_upload_url(&self, key: &str, upload_id: &str) -> String {
        self.bucket
            .abort_multipart_upload(Some(&self.credentials), key, upload_id)
            .sign(SIGN_EXPIRY)
            .into()
    }

    /// The presigned GetObject URL (a range is a header, unsigned).
    pub(super) fn get_url(&self, key: &str) -> String {
        self.bucket
            .get_object(Some(&self.credentials), key)
            .sign(SIGN_EXPIRY)
            .into()
    }

    /// The presigned DeleteObject URL.
    pub(super) fn delete_url(&self, key: &str) -> String {
        self.bucket
            .delete_object(Some(&self.credentials), key)
            .sign(SIGN_EXPIRY)
            .into()
    }

    /// The presigned DeleteObjects URL (`POST /?delete`), with the body's
    /// `Content-MD5` among the signed headers. rusty-s3 builds this action
    /// only with its "full" feature (which links md-5, serde and
    /// serde_json), so it is signed here with rusty-s3's own `sign`, the
    /// way its action does: the bucket's URL, `delete=1`.
    pub(super) fn delete_objects_url(&self, digest: &Digest) -> String {
        rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Post,
            self.bucket.base_url().clone(),
            self.credentials.key(),
            self.credentials.secret(),
            self.credentials.token(),
            self.bucket.region(),
            SIGN_EXPIRY.as_secs(),
            std::iter::once(("delete", "1")),
            std::iter::once((digest.header, digest.value.as_str())),
        )
        .into()
    }

    /// The presigned ListObjectsV2 URL of the page of `prefix` after
    /// `token` (the first page without one).
    /// A ListObjectsV2 page of `prefix`; with `children`, grouped at the
    /// next `/` (`delimiter=/`: the keys under a "folder" come as one
    /// `CommonPrefixes` entry).
    pub(super) fn list_url(
        &self,
        prefix: &str,
        after: Option<&str>,
        token: Option<&str>,
        children: bool,
    ) -> String {
        let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
        // rusty-s3 asks for `encoding-type=url` and decodes the keys when the
        // answer says so; s3s-fs echoes the parameter without encoding, which
        // turns `+` into a space. Raw (XML-escaped) keys are right everywhere
        // for keys without control characters, which `check_key` refuses.
        action.query_mut().remove("encoding-type");
        if !prefix.is_empty() {
            action.with_prefix(prefix);
        }
        // S3 starts after `start-after` on the first page and follows the
        // token on the others (it ignores the former when given both).
        if let Some(after) = after {
            action.with_start_after(after);
        }
        if let Some(token) = token {
            action.with_continuation_token(token);
        }
        if children {
            action.with_delimiter("/");
        }
        action.sign(SIGN_EXPIRY).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::s3::tests::settings;

    #[test]
    fn checksum_header_is_base64_of_big_endian_crc32() {
        // CRC32 ("123456789") = 0xCBF43926, the standard check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(checksum_header_value(0xCBF4_3926), "y/Q5Jg==");
        assert_eq!(checksum_header_value(0), "AAAAAA==");
        assert_eq!(checksum_header_value(u32::MAX), "/////w==");
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

    #[test]
    fn put_url_signs_the_checksum_header() {
        let storage =
            S3Storage::new(settings(Some("http://127.0.0.1:9000"), true)).expect("valid settings");
        let url = storage.put_url("db/key", &Digest::crc32(0xCBF4_3926));
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
    fn each_request_names_its_object_and_signs_its_headers() {
        let storage =
            S3Storage::new(settings(Some("http://127.0.0.1:9000"), true)).expect("valid settings");
        let checksum = Digest::crc32(0xCBF4_3926);
        let md5 = Digest::md5_of(b"body");
        let object = "http://127.0.0.1:9000/my-bucket/db/key?";
        let bucket = "http://127.0.0.1:9000/my-bucket/?";
        // (request, URL, its start, what it has, what it must not have)
        #[rustfmt::skip]
        let cases = [
            ("create", storage.create_upload_url("db/key", true), object,
             vec!["uploads", "X-Amz-SignedHeaders=host%3Bx-amz-checksum-algorithm"], vec![]),
            ("create without CRC32", storage.create_upload_url("db/key", false), object,
             vec!["uploads", "X-Amz-SignedHeaders=host&"], vec!["checksum"]),
            ("part", storage.upload_part_url("db/key", 3, "up-1", &checksum), object,
             vec!["partNumber=3", "uploadId=up-1", "X-Amz-SignedHeaders=host%3Bx-amz-checksum-crc32"], vec![]),
            ("part with MD5", storage.upload_part_url("db/key", 3, "up-1", &md5), object,
             vec!["partNumber=3", "X-Amz-SignedHeaders=content-md5%3Bhost"], vec!["x-amz-checksum"]),
            ("put with MD5", storage.put_url("db/key", &md5), object,
             vec!["X-Amz-SignedHeaders=content-md5%3Bhost"], vec!["x-amz-checksum", "uploadId"]),
            ("complete", storage.complete_upload_url("db/key", "up-1"), object,
             vec!["uploadId=up-1", "X-Amz-SignedHeaders=host&"], vec!["partNumber"]),
            ("abort", storage.abort_upload_url("db/key", "up-1"), object,
             vec!["uploadId=up-1", "X-Amz-SignedHeaders=host&"], vec![]),
            ("get", storage.get_url("db/key"), object,
             vec!["X-Amz-SignedHeaders=host&"], vec!["uploadId"]),
            ("delete", storage.delete_url("db/key"), object,
             vec!["X-Amz-SignedHeaders=host&"], vec!["uploadId"]),
            ("delete objects", storage.delete_objects_url(&md5), bucket,
             vec!["delete=1", "X-Amz-SignedHeaders=content-md5%3Bhost"], vec!["db%2Fkey", "list-type", "x-amz-checksum"]),
            ("list", storage.list_url("db/", None, Some("tok"), false), bucket,
             vec!["list-type=2", "prefix=db%2F", "continuation-token=tok"], vec!["encoding-type", "start-after", "delimiter"]),
            ("first list page", storage.list_url("", None, None, false), bucket,
             vec!["list-type=2"], vec!["prefix=", "continuation-token", "encoding-type", "start-after"]),
            ("first page of a range", storage.list_url("t/", Some("t/db 7"), None, false), bucket,
             vec!["list-type=2", "prefix=t%2F", "start-after=t%2Fdb%207"], vec!["continuation-token"]),
            ("children", storage.list_url("t/", None, None, true), bucket,
             vec!["list-type=2", "prefix=t%2F", "delimiter=%2F"], vec!["start-after", "encoding-type"]),
        ];
        for (request, url, start, has, has_not) in cases {
            assert!(url.starts_with(start), "{request}: {url}");
            for part in has.iter().chain(&["X-Amz-Security-Token=SESSIONTOKEN"]) {
                assert!(url.contains(part), "{request}: {url} lacks {part}");
            }
            for part in has_not.iter().chain(&["SUPERSECRET"]) {
                assert!(!url.contains(part), "{request}: {url} has {part}");
            }
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Object keys come from listings.
    use super::*;
    use crate::testing::fuzz_text;

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
