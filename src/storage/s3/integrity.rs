//! What a server checks of the bytes walsync uploads, as values: the
//! integrity header an upload carries (`x-amz-checksum-crc32`, or
//! `Content-MD5` once the server has refused the first), which answers
//! mean a server refuses the CRC32 header itself, and what the answer to
//! the checksum probe says (`S3Storage::upload_check`). Pure: nothing here
//! sends anything.
//!
//! The answers are those providers document or were seen giving:
//! - Cloudflare R2, until January 2025: 501 `NotImplemented`, "Header
//!   'x-amz-checksum-crc32' with value '…' not implemented"
//!   (<https://github.com/cloudflare/cloudflare-docs/pull/19236>), and the
//!   same for `x-amz-checksum-algorithm`
//!   (<https://github.com/cloudflare/cloudflare-docs/issues/4508>);
//! - Backblaze B2: 400 `InvalidArgument`, "Unsupported header
//!   'x-amz-checksum-crc32' received for this API call."
//!   (<https://www.backblaze.com/docs/cloud-storage-s3-compatible-api>,
//!   "Unsupported Features"; the whole answer to an UploadPart in
//!   <https://github.com/timmyomahony/craft-remote-backup/issues/63>).

use super::answers::{xml_text, CHECKSUM_CODES};
use super::md5::md5;
use super::requests::{base64_encode, checksum_header_value, CHECKSUM_HEADER};

/// The header that carries the checksum of `Content-MD5` uploads.
pub(super) const CONTENT_MD5_HEADER: &str = "content-md5";

/// Which integrity header uploads carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UploadDigest {
    /// `x-amz-checksum-crc32` (and `x-amz-checksum-algorithm: CRC32` on
    /// multipart uploads): the default.
    Crc32,
    /// `Content-MD5`, for a server that refused the CRC32 header.
    ContentMd5,
}

/// A checksum header and its value, signed and sent with a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Digest {
    pub(super) header: &'static str,
    pub(super) value: String,
}

impl Digest {
    pub(super) fn crc32(crc32: u32) -> Digest {
        Digest {
            header: CHECKSUM_HEADER,
            value: checksum_header_value(crc32),
        }
    }

    pub(super) fn md5(md5: [u8; 16]) -> Digest {
        Digest {
            header: CONTENT_MD5_HEADER,
            value: base64_encode(&md5),
        }
    }

    /// The `Content-MD5` digest of `bytes`.
    pub(super) fn md5_of(bytes: &[u8]) -> Digest {
        Digest::md5(md5(bytes))
    }
}

/// Whether an unsuccessful answer (`status`, the start of its body) to an
/// upload (PutObject, UploadPart, CreateMultipartUpload) that carried the
/// CRC32 header says the server refuses that header itself, rather than
/// the bytes: a 400 or 501 whose error names an `x-amz-checksum` or
/// `x-amz-sdk-checksum` header as not implemented or unsupported, or a 501
/// `NotImplemented` naming nothing (on an upload, walsync sends no other
/// header a server could lack). A checksum mismatch (`BadDigest`, …) is
/// not one. `Some` holds the server's words, to log.
pub(super) fn refuses_checksum_header(status: u16, body: &[u8]) -> Option<String> {
    if status != 400 && status != 501 {
        return None;
    }
    let text = String::from_utf8_lossy(body);
    let code = xml_text(&text, "Code").unwrap_or_default();
    let message = xml_text(&text, "Message").unwrap_or_default();
    if CHECKSUM_CODES.contains(&code.as_str()) {
        return None;
    }
    let lower = format!("{code} {message}").to_ascii_lowercase();
    let names_header = lower.contains("x-amz-checksum") || lower.contains("x-amz-sdk-checksum");
    let says_unsupported = ["not implemented", "unsupported", "not supported"]
        .iter()
        .any(|words| lower.contains(words));
    let refused = (names_header && says_unsupported)
        || (status == 501 && code == "NotImplemented" && !lower.contains("content-md5"));
    refused.then(|| {
        let said = if message.is_empty() {
            code
        } else {
            format!("{code}: {message}")
        };
        let said: String = said.chars().take(160).collect();
        format!("status {status}, {said}")
    })
}

/// What the answer to the checksum probe (an upload whose checksum is
/// deliberately wrong) says about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ProbeAnswer {
    /// It stored the bytes: it does not check that header.
    Stored,
    /// It refused the bytes as not matching their checksum: it checks.
    Mismatch,
    /// It refused the header itself (`refuses_checksum_header`).
    HeaderRefused(String),
    /// Something else (credentials that may not write, a full bucket, …):
    /// the probe says nothing about checksums.
    Other,
}

/// The meaning of the answer `status` (and the start of its body) to the
/// checksum probe.
pub(super) fn probe_answer(status: u16, body: &[u8]) -> ProbeAnswer {
    if (200..300).contains(&status) {
        return ProbeAnswer::Stored;
    }
    if let Some(said) = refuses_checksum_header(status, body) {
        return ProbeAnswer::HeaderRefused(said);
    }
    let text = String::from_utf8_lossy(body);
    match xml_text(&text, "Code") {
        Some(code) if status == 400 && CHECKSUM_CODES.contains(&code.as_str()) => {
            ProbeAnswer::Mismatch
        }
        _ => ProbeAnswer::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(code: &str, message: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error>"
        )
    }

    #[test]
    fn answers_refusing_the_crc32_header_are_told_from_others() {
        // (status, body, refuses the header)
        #[rustfmt::skip]
        let cases = [
            // R2 until January 2025 (cloudflare-docs PR 19236, issue 4508).
            (501, doc("NotImplemented", "Header 'x-amz-checksum-crc32' with value 'y/Q5Jg==' not implemented"), true),
            (501, doc("NotImplemented", "Header 'x-amz-checksum-algorithm' with value 'CRC32' not implemented"), true),
            // B2 (its "Unsupported Features"; craft-remote-backup issue 63).
            (400, doc("InvalidArgument", "Unsupported header 'x-amz-checksum-crc32' received for this API call."), true),
            (400, doc("InvalidArgument", "Unsupported header 'x-amz-sdk-checksum-algorithm' received for this API call."), true),
            (400, doc("InvalidRequest", "x-amz-checksum-crc32 is not supported"), true),
            // AWS's words for a header it lacks: on an upload, only ours.
            (501, doc("NotImplemented", "A header you provided implies functionality that is not implemented"), true),
            // Not a refusal of the header: the bytes, the value, the rest.
            (400, doc("BadDigest", "The CRC32 you specified did not match the calculated checksum."), false),
            (400, doc("InvalidDigest", "Unsupported x-amz-checksum-crc32 digest"), false),
            (400, doc("XAmzContentChecksumMismatch", "The provided 'x-amz-content-checksum' header does not match"), false),
            (400, doc("InvalidRequest", "Value for x-amz-checksum-crc32 header is invalid."), false),
            (400, doc("InvalidArgument", "Unsupported header 'x-amz-meta-foo'"), false),
            (501, doc("NotImplemented", "Content-MD5 not implemented"), false),
            (501, String::new(), false),
            (503, doc("NotImplemented", "Header 'x-amz-checksum-crc32' not implemented"), false),
            (403, doc("AccessDenied", "Unsupported header 'x-amz-checksum-crc32'"), false),
            (400, "Unsupported header 'x-amz-checksum-crc32'".to_owned(), false),
        ];
        for (status, body, refuses) in cases {
            let said = refuses_checksum_header(status, body.as_bytes());
            assert_eq!(said.is_some(), refuses, "{status} {body}");
            if let Some(said) = said {
                assert!(said.starts_with(&format!("status {status}, ")), "{said}");
            }
        }
    }

    #[test]
    fn probe_answers_say_whether_the_server_checks() {
        use ProbeAnswer::*;
        // (status, body, meaning)
        #[rustfmt::skip]
        let cases = [
            (200, String::new(), Stored),
            (204, String::new(), Stored),
            (400, doc("BadDigest", "The CRC32 you specified did not match the calculated checksum."), Mismatch),
            (400, doc("InvalidDigest", "The Content-MD5 you specified was invalid."), Mismatch),
            (400, doc("XAmzContentChecksumMismatch", "mismatch"), Mismatch),
            (403, doc("AccessDenied", "Access Denied"), Other),
            (404, doc("NoSuchBucket", "The specified bucket does not exist"), Other),
            (400, doc("EntityTooSmall", "x"), Other),
            (500, doc("BadDigest", "odd"), Other),
        ];
        for (status, body, expected) in cases {
            assert_eq!(
                probe_answer(status, body.as_bytes()),
                expected,
                "{status} {body}"
            );
        }
        let refused = probe_answer(
            501,
            doc(
                "NotImplemented",
                "Header 'x-amz-checksum-crc32' with value 'x' not implemented",
            )
            .as_bytes(),
        );
        assert!(matches!(refused, HeaderRefused(said) if said.contains("not implemented")));
    }

    #[test]
    fn digests_are_base64_of_the_big_endian_crc32_or_the_md5() {
        assert_eq!(
            Digest::crc32(0xCBF4_3926),
            Digest {
                header: "x-amz-checksum-crc32",
                value: "y/Q5Jg==".to_owned()
            }
        );
        // RFC 1864's example of a Content-MD5 value is of its own text; the
        // MD5 of "" is d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(
            Digest::md5_of(b""),
            Digest {
                header: "content-md5",
                value: "1B2M2Y8AsgTpgAmY7PhCfg==".to_owned()
            }
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::testing::fuzz_text;

    #[test]
    fn refusal_and_probe_answers_never_panic() {
        fuzz_text(
            "checksum refusal answer",
            0x53_0c5c,
            3000,
            &[
                "<Error><Code>NotImplemented</Code><Message>Header 'x-amz-checksum-crc32' with value 'x' not implemented</Message></Error>",
                "<Error><Code>BadDigest</Code></Error>",
            ],
            |text| {
                let _ = probe_answer(400, text.as_bytes());
                refuses_checksum_header(501, text.as_bytes()).is_some()
            },
        );
    }
}
