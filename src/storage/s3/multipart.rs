//! The multipart upload, as values: when `put` uses one
//! (`MultipartPolicy`), how a body is cut into parts (`plan_parts`), the
//! body of CompleteMultipartUpload and the checksum S3 reports for the
//! object, and the readers over one part of a body (to compute its CRC32,
//! then to send it). Sends nothing: `multipart_upload` does.

use std::fmt::Write as _;
use std::io::{self, Read, Seek, SeekFrom};

use super::md5::Md5;
use super::requests::checksum_header_value;
use crate::storage::Body;

/// Bodies larger than this go up as a multipart upload by default.
pub const DEFAULT_MULTIPART_THRESHOLD_BYTES: u64 = 64 * 1024 * 1024;
/// The default size of each part but the last.
pub const DEFAULT_PART_BYTES: u64 = 16 * 1024 * 1024;
/// S3's smallest part (every part but the last).
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// S3's largest part, and its largest single PutObject.
const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// Buffer for reading a part to compute its CRC32.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// When and how `put` splits a body into the parts of a multipart upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MultipartPolicy {
    /// Bodies larger than this (or than S3's 5 GiB PutObject limit) go up in
    /// parts.
    pub(super) threshold_bytes: u64,
    /// The size of each part but the last, before `plan_parts` adjusts it.
    pub(super) part_bytes: u64,
}

impl MultipartPolicy {
    pub(super) fn applies_to(&self, len: u64) -> bool {
        len > self.threshold_bytes.min(MAX_PART_BYTES)
    }
}

/// One part of a multipart upload: bytes `offset..offset + len` of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PartSpan {
    /// From 1.
    pub(super) number: u16,
    pub(super) offset: u64,
    pub(super) len: u64,
}

/// Splits a `len`-byte body into parts of `wanted_part_bytes` (the last one
/// shorter), keeping to S3's rules: the size is raised to the 5 MiB minimum,
/// lowered to the 5 GiB maximum, and raised again until the body fits in
/// 10,000 parts. (Only a body over ~48.8 TiB would then need parts over 5 GiB;
/// S3 refuses objects over 5 TiB anyway.)
pub(super) fn plan_parts(len: u64, wanted_part_bytes: u64) -> Vec<PartSpan> {
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
pub(super) struct UploadedPart {
    pub(super) number: u16,
    /// As the server gave it, quotes included.
    pub(super) etag: String,
    pub(super) crc32: u32,
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

/// The body of CompleteMultipartUpload: every part's number, ETag and, with
/// `crc32` (the upload was created with that checksum algorithm), its
/// CRC32. (rusty-s3's own body has no checksums, which S3 requires when the
/// upload was created with a checksum algorithm.)
pub(super) fn complete_upload_xml(parts: &[UploadedPart], crc32: bool) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
    );
    for part in parts {
        let _ = write!(
            xml,
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag>",
            part.number,
            xml_escape(&part.etag),
        );
        if crc32 {
            let _ = write!(
                xml,
                "<ChecksumCRC32>{}</ChecksumCRC32>",
                checksum_header_value(part.crc32)
            );
        }
        xml.push_str("</Part>");
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

/// The checksum S3 gives an object uploaded in `parts` with CRC32: base64 of
/// the CRC32 of the parts' big-endian CRC32s, then `-` and the part count.
pub(super) fn composite_checksum(parts: &[UploadedPart]) -> String {
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
pub(super) fn completed_checksum_matches(
    reported: &str,
    parts: &[UploadedPart],
    whole_crc32: u32,
) -> bool {
    let composite = composite_checksum(parts);
    let without_count = composite.split('-').next().unwrap_or_default();
    reported == composite
        || reported == without_count
        || reported == checksum_header_value(whole_crc32)
}

/// A reader over bytes `offset..offset + len` of a body.
pub(super) fn open_part(
    body: Body<'_>,
    offset: u64,
    len: u64,
) -> io::Result<Box<dyn Read + Send + '_>> {
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
pub(super) fn short_part(part: &PartSpan, read: u64) -> io::Error {
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
/// byte to `whole`, the CRC32 of the object so far, and to `md5` if given.
pub(super) fn part_crc32(
    body: Body<'_>,
    part: &PartSpan,
    whole: &mut crc32fast::Hasher,
    mut md5: Option<&mut Md5>,
) -> io::Result<u32> {
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
        if let Some(md5) = md5.as_deref_mut() {
            md5.update(&buffer[..n]);
        }
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
pub(super) struct PartReader<R> {
    pub(super) inner: R,
    pub(super) remaining: u64,
    pub(super) ended_early: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::s3::answers::xml_text;

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
        let xml = complete_upload_xml(&parts, true);
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Part><PartNumber>1</PartNumber><ETag>&quot;abc&quot;</ETag><ChecksumCRC32>y/Q5Jg==</ChecksumCRC32></Part>\
             <Part><PartNumber>2</PartNumber><ETag>d&lt;&amp;&gt;e</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part>\
             </CompleteMultipartUpload>"
        );
        assert_eq!(xml_text(&xml, "ETag").as_deref(), Some("\"abc\""));
        // An upload created without a checksum algorithm (Content-MD5
        // parts) lists none.
        assert_eq!(
            complete_upload_xml(&parts[..1], false),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Part><PartNumber>1</PartNumber><ETag>&quot;abc&quot;</ETag></Part>\
             </CompleteMultipartUpload>"
        );
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
            let mut md5 = Md5::new();
            let first = part_crc32(body, &spans[0], &mut whole, Some(&mut md5)).expect("part 1");
            let second = part_crc32(body, &spans[1], &mut whole, None).expect("part 2");
            assert_eq!(md5.finalize(), super::super::md5::md5(&data[..6_000]));
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
        let err = part_crc32(body, &span, &mut crc32fast::Hasher::new(), None).expect_err("short");
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
}
