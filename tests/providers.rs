//! Providers' documented departures from AWS that no local server has,
//! played by a scripted bucket (`common::fakeserver::scripted_bucket`),
//! against the real `S3Storage`: one test per documented answer, each with
//! a link to where it is documented. (GCS's XML API without DeleteObjects
//! is in tests/s3_storage.rs:
//! `a_server_without_delete_objects_gets_single_deletes_from_then_on`, and
//! Tigris's 408 on a LIST: `load_shedding_408_and_429_are_retried_until_they_pass`.)

mod common;

use std::sync::{Mutex, Once};

use common::fakeserver::{content_md5, scripted_bucket, Departure, FakeServer, Held};
use common::s3client::fast_retry;
use walsync::storage::s3::{S3Settings, S3Storage};
use walsync::storage::{Body, Storage, UploadCheck};

const MIB: usize = 1024 * 1024;

/// Every line logged at DEBUG or above by this test binary.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Debug
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            if let Ok(mut lines) = LINES.lock() {
                lines.push(format!("{} {}", record.level(), record.args()));
            }
        }
    }
    fn flush(&self) {}
}

/// The lines logged at `level` that name `server` (tests run in parallel
/// in one process; each server has its own port).
fn logged(level: &str, server: &FakeServer) -> Vec<String> {
    let port = server.endpoint.rsplit(':').next().unwrap_or_default();
    LINES
        .lock()
        .map(|lines| {
            lines
                .iter()
                .filter(|l| l.starts_with(level) && l.contains(&format!(":{port})")))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn capture_log() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        static CAPTURE: Capture = Capture;
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    });
}

fn storage_at(server: &FakeServer) -> S3Storage {
    capture_log();
    S3Storage::new(S3Settings {
        bucket: "bucket".to_owned(),
        endpoint: Some(server.endpoint.clone()),
        region: "auto".to_owned(),
        path_style: true,
        access_key_id: "AKID".to_owned(),
        secret_access_key: "SECRET".to_owned(),
        session_token: None,
    })
    .expect("settings")
    .with_retry(fast_retry())
}

/// The request lines (method and path, no query) the server received.
fn lines(server: &FakeServer) -> Vec<String> {
    server
        .heads()
        .iter()
        .map(|h| h.split('?').next().unwrap_or_default().to_owned())
        .collect()
}

/// What the bucket holds under `key`, which must be `bytes` sent with a
/// right `Content-MD5` and no CRC32 header.
fn assert_held_with_md5(held: Option<&Held>, bytes: &[u8]) {
    let held = held.expect("the object is stored");
    assert!(held.bytes == bytes, "the bytes stored are the bytes put");
    assert_eq!(
        held.sent,
        vec![("content-md5".to_owned(), content_md5(bytes))],
        "sent with Content-MD5 alone"
    );
}

/// Puts two objects on a server that refuses the CRC32 header: the first
/// goes up twice (refused, then with Content-MD5 at once, no retry), the
/// second once with Content-MD5; one WARN says so.
fn puts_fall_back_once(departure: Departure, refusal: &str) {
    let (server, objects) = scripted_bucket(departure);
    let storage = storage_at(&server);
    assert!(!storage.uploads_with_content_md5());
    let (a, b) = (b"first object".as_slice(), b"second object".as_slice());
    storage
        .put("db/a", Body::Bytes(a), crc32fast::hash(a))
        .expect("stored with Content-MD5");
    storage
        .put("db/b", Body::Bytes(b), crc32fast::hash(b))
        .expect("stored with Content-MD5");
    assert!(storage.uploads_with_content_md5());
    assert_eq!(
        lines(&server),
        vec!["PUT /bucket/db/a", "PUT /bucket/db/a", "PUT /bucket/db/b"],
        "the refused PUT is sent again once, at once; the next goes with Content-MD5"
    );
    let heads = server.heads();
    assert!(
        heads[0].contains("\r\nx-amz-checksum-crc32: "),
        "{}",
        heads[0]
    );
    let objects = objects.lock().expect("objects");
    assert_held_with_md5(objects.get("db/a"), a);
    assert_held_with_md5(objects.get("db/b"), b);
    let warnings = logged("WARN", &server);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains(refusal) && warnings[0].contains("Content-MD5 instead"),
        "{}",
        warnings[0]
    );
}

/// R2 answered 501 NotImplemented to the CRC32 header until January 2025,
/// when the AWS SDKs began sending it by default:
/// <https://github.com/cloudflare/cloudflare-docs/pull/19236> ("Many
/// commands, such as PutObject are now failing with error 501:
/// NotImplemented: Header 'x-amz-checksum-crc32' with value (***) not
/// implemented").
#[test]
fn r2_refusing_the_crc32_header_gets_content_md5_from_then_on() {
    puts_fall_back_once(
        Departure::R2RefusesChecksumHeaders,
        "Header 'x-amz-checksum-crc32' with value",
    );
}

/// B2 answers 400 InvalidArgument to it: "Unsupported Features" of
/// <https://www.backblaze.com/docs/cloud-storage-s3-compatible-api>; the
/// whole answer, to an UploadPart, in
/// <https://github.com/timmyomahony/craft-remote-backup/issues/63>.
#[test]
fn b2_refusing_the_crc32_header_gets_content_md5_from_then_on() {
    puts_fall_back_once(
        Departure::B2RefusesChecksumHeaders,
        "Unsupported header 'x-amz-checksum-crc32'",
    );
}

/// R2 refused `x-amz-checksum-algorithm` on CreateMultipartUpload too
/// (<https://github.com/cloudflare/cloudflare-docs/issues/4508>: "Header
/// 'x-amz-checksum-algorithm' with value 'SHA256' not implemented"; the
/// R2 API page listed it as not implemented). The upload is created again
/// without it, every part carries its Content-MD5, the completion lists
/// no CRC32s, and the object holds every byte.
#[test]
fn r2_multipart_upload_falls_back_to_content_md5_parts() {
    let (server, objects) = scripted_bucket(Departure::R2RefusesChecksumHeaders);
    let storage = storage_at(&server).with_multipart(MIB as u64, 5 * MIB as u64);
    let bytes: Vec<u8> = (0..6 * MIB).map(|i| b"walsync!"[i % 8]).collect();
    storage
        .put("db/big", Body::Bytes(&bytes), crc32fast::hash(&bytes))
        .expect("a multipart upload with Content-MD5 parts");
    assert_eq!(
        lines(&server),
        vec![
            "POST /bucket/db/big",
            "POST /bucket/db/big",
            "PUT /bucket/db/big",
            "PUT /bucket/db/big",
            "POST /bucket/db/big",
        ],
        "create refused, created again, two parts, complete"
    );
    let heads = server.heads();
    assert!(
        heads[0].contains("x-amz-checksum-algorithm: crc32"),
        "{}",
        heads[0]
    );
    assert!(!heads[1].contains("x-amz-checksum"), "{}", heads[1]);
    for (head, part) in [
        (&heads[2], &bytes[..5 * MIB]),
        (&heads[3], &bytes[5 * MIB..]),
    ] {
        // The scripted bucket refuses a part whose Content-MD5 is wrong;
        // its header lines here are lower-cased.
        let md5 = content_md5(part).to_ascii_lowercase();
        assert!(
            head.contains(&format!("\r\ncontent-md5: {md5}\r\n")),
            "{head}"
        );
        assert!(!head.contains("x-amz-checksum"), "{head}");
    }
    let objects = objects.lock().expect("objects");
    assert!(objects.get("db/big").is_some_and(|o| o.bytes == bytes));
    assert_eq!(logged("WARN", &server).len(), 1);
}

/// The checksum probe on a server that refuses the CRC32 header: it falls
/// back, probes again with a wrong Content-MD5, which the bucket refuses
/// as S3 does (400 BadDigest), and deletes the probe: three requests.
#[test]
fn the_probe_finds_what_a_server_refusing_the_crc32_header_checks() {
    let (server, objects) = scripted_bucket(Departure::B2RefusesChecksumHeaders);
    let storage = storage_at(&server);
    let check = storage.upload_check("db/");
    assert_eq!(
        check,
        UploadCheck::Checked {
            header: "content-md5"
        }
    );
    assert_eq!(
        lines(&server),
        vec![
            "PUT /bucket/db/walsync-upload-probe",
            "PUT /bucket/db/walsync-upload-probe",
            "DELETE /bucket/db/walsync-upload-probe",
        ]
    );
    assert!(storage.uploads_with_content_md5());
    assert!(objects.lock().expect("objects").is_empty());
    // Once per process: asking again sends nothing.
    assert_eq!(storage.upload_check("db/"), check);
    assert_eq!(server.requests(), 3);
    assert!(
        check
            .to_string()
            .starts_with("the server checks every upload's content-md5"),
        "{check}"
    );
}

/// DeleteObjects goes with Content-MD5 alone, so a server that refuses the
/// CRC32 header takes it (and older MinIO, which insists on Content-MD5:
/// "Missing required header for this request: Content-Md5.",
/// <https://github.com/apache/arrow-rs/issues/5414>): one request for three
/// keys, no fallback to single DELETEs.
#[test]
fn delete_objects_is_taken_by_a_server_refusing_the_crc32_header() {
    let (server, objects) = scripted_bucket(Departure::R2RefusesChecksumHeaders);
    let storage = storage_at(&server);
    let keys: Vec<String> = ["a", "b", "c"].iter().map(|k| format!("db/{k}")).collect();
    for key in &keys {
        storage
            .put(key, Body::Bytes(b"x"), crc32fast::hash(b"x"))
            .expect("put");
    }
    let before = server.requests();
    storage.delete(&keys).expect("one DeleteObjects");
    assert!(storage.deletes_in_batches());
    assert_eq!(server.requests(), before + 1);
    assert!(objects.lock().expect("objects").is_empty());
}

/// Tigris sheds load with 408 `RequestCanceled`
/// (<https://github.com/earth-mover/icechunk/issues/1563>): a PUT so
/// answered is retried with backoff (a line per retry: a WARN for the
/// first in a minute of the process, the others at DEBUG) until it passes,
/// and stored with its CRC32. (A LIST under 408 and 429:
/// `load_shedding_408_and_429_are_retried_until_they_pass` in
/// tests/s3_storage.rs.)
#[test]
fn tigris_shedding_a_put_with_408_is_retried_until_it_is_stored() {
    let server = FakeServer::start(|n| match n {
        0 | 1 => (
            "408 Request Timeout",
            "content-type: application/xml\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>RequestCanceled</Code>\
             <Message>Request canceled</Message></Error>"
                .to_owned(),
        ),
        _ => ("200 OK", "etag: \"e\"\r\n", String::new()),
    });
    let storage = storage_at(&server);
    let bytes = b"a segment";
    storage
        .put("db/seg", Body::Bytes(bytes), crc32fast::hash(bytes))
        .expect("the third try is stored");
    assert_eq!(
        lines(&server),
        vec!["PUT /bucket/db/seg"; 3],
        "two 408s retried"
    );
    for head in server.heads() {
        assert!(head.contains("\r\nx-amz-checksum-crc32: "), "{head}");
    }
    assert!(
        !storage.uploads_with_content_md5(),
        "a 408 is no refusal of the header"
    );
    let mut retries = logged("WARN", &server);
    assert!(retries.len() <= 1, "{retries:#?}");
    retries.extend(logged("DEBUG", &server));
    retries.retain(|l| l.contains("attempt"));
    retries.sort_by_key(|l| l.split_once(' ').map(|(_, rest)| rest.to_owned()));
    assert_eq!(retries.len(), 2, "{retries:#?}");
    for (n, retry) in retries.iter().enumerate() {
        let line = retry.split_once(' ').unwrap().1;
        assert!(
            line.starts_with(&format!("put \"db/seg\": attempt {}/3", n + 1))
                && line.contains("RequestCanceled"),
            "{retry}"
        );
    }
}

/// Credentials that may read but not write (a key for `verify` alone):
/// the probe says it cannot tell, in the server's words, without the
/// advice to fix the key an authentication error gives; two requests.
#[test]
fn the_probe_with_a_read_only_key_says_it_cannot_tell() {
    let server = FakeServer::start(|_| {
        (
            "403 Forbidden",
            "content-type: application/xml\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>\
             <Message>Access Denied</Message></Error>"
                .to_owned(),
        )
    });
    let storage = storage_at(&server);
    let check = storage.upload_check("");
    match &check {
        UploadCheck::Unknown { reason } => assert!(
            reason
                .contains("\"walsync-upload-probe\" was refused: 403 AccessDenied: Access Denied")
                && !reason.contains("check the access key"),
            "{reason}"
        ),
        other => panic!("expected Unknown, got {other:?}"),
    }
    assert_eq!(
        lines(&server),
        vec![
            "PUT /bucket/walsync-upload-probe",
            "DELETE /bucket/walsync-upload-probe"
        ]
    );
    assert!(check
        .to_string()
        .starts_with("whether the server checks upload checksums is not known"));
}
