//! `S3Storage` against a real S3 server (s3s-fs), a fake non-S3 HTTP server
//! and a closed port.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::fakeserver::FakeServer;
use common::s3client::{fast_retry, fast_storage, get_bytes, put_bytes};
use common::s3server::{free_port, S3Server, REGION};
use rusty_s3::S3Action;
use walsync::storage::s3::{RetryPolicy, S3Settings, S3Storage};
use walsync::storage::{Body, ObjectMeta, Storage, StorageError};

/// Retries that would be obvious in the elapsed time if they happened.
fn slow_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(2),
    }
}

fn storage(server: &S3Server) -> S3Storage {
    fast_storage(server.settings())
}

const MIB: usize = 1024 * 1024;

/// A storage that uploads bodies over `threshold` bytes in parts of
/// `part_bytes`.
fn multipart_storage(server: &S3Server, threshold: usize, part_bytes: usize) -> S3Storage {
    storage(server).with_multipart(threshold as u64, part_bytes as u64)
}

/// The ETag the server reports for `key`; a multipart upload's is
/// `<hash>-<part count>`, a single PutObject's has no `-`.
fn etag_of(server: &S3Server, key: &str) -> String {
    let endpoint = server
        .endpoint
        .parse()
        .unwrap_or_else(|e| panic!("the endpoint is a URL: {e}"));
    let bucket = rusty_s3::Bucket::new(
        endpoint,
        rusty_s3::UrlStyle::Path,
        server.bucket.clone(),
        REGION,
    )
    .unwrap_or_else(|e| panic!("bucket of the test server: {e}"));
    let credentials =
        rusty_s3::Credentials::new(server.access_key.clone(), server.secret_key.clone());
    let url = bucket
        .head_object(Some(&credentials), key)
        .sign(Duration::from_secs(60));
    let response = ureq::head(url.as_str())
        .call()
        .unwrap_or_else(|e| panic!("HEAD {key}: {e}"));
    response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("HEAD {key} has no ETag"))
        .trim_matches('"')
        .to_owned()
}

/// What s3s-fs keeps for multipart uploads that are neither completed nor
/// aborted (`.upload-<id>.json`, `.upload_id-<id>.part-<n>` and per-upload
/// metadata, all in its root directory). s3s-fs 0.14.1 has no
/// ListMultipartUploads, so this is how a test sees unfinished uploads.
fn unfinished_uploads(server: &S3Server) -> Vec<String> {
    let entries = std::fs::read_dir(&server.root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", server.root.display()));
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".upload"))
        .collect()
}

/// Deterministic, incompressible-looking bytes.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn small_object_round_trips_and_can_be_replaced() {
    let server = S3Server::start();
    let storage = storage(&server);

    put_bytes(&storage, "db/one", b"hello, world");
    assert_eq!(get_bytes(&storage, "db/one"), b"hello, world");

    put_bytes(&storage, "db/one", b"second version");
    assert_eq!(get_bytes(&storage, "db/one"), b"second version");

    put_bytes(&storage, "db/empty", b"");
    assert_eq!(get_bytes(&storage, "db/empty"), b"");

    assert_eq!(
        storage.list("db/").expect("list"),
        vec![
            ObjectMeta {
                key: "db/empty".to_owned(),
                size: 0
            },
            ObjectMeta {
                key: "db/one".to_owned(),
                size: 14
            },
        ]
    );
}

#[test]
fn multi_megabyte_file_body_round_trips() {
    let server = S3Server::start();
    let storage = storage(&server);
    let bytes = pseudo_random_bytes(5 * 1024 * 1024 + 123);
    let path = server.scratch_dir("spool").join("snapshot.bin");
    std::fs::write(&path, &bytes).expect("write the spool file");

    let body = Body::File {
        path: &path,
        len: bytes.len() as u64,
    };
    storage
        .put("db/snapshot", body, crc32fast::hash(&bytes))
        .expect("put the whole file");
    assert!(
        get_bytes(&storage, "db/snapshot") == bytes,
        "downloaded bytes differ"
    );

    // Only the first `len` bytes of the file are the object.
    let prefix_len = 3 * 1024 * 1024 + 7;
    let body = Body::File {
        path: &path,
        len: prefix_len as u64,
    };
    storage
        .put("db/prefix", body, crc32fast::hash(&bytes[..prefix_len]))
        .expect("put a prefix of the file");
    assert!(
        get_bytes(&storage, "db/prefix") == bytes[..prefix_len],
        "prefix differs"
    );

    let listed = storage.list("db/").expect("list");
    let sizes: Vec<(String, u64)> = listed.into_iter().map(|o| (o.key, o.size)).collect();
    assert_eq!(
        sizes,
        vec![
            ("db/prefix".to_owned(), prefix_len as u64),
            ("db/snapshot".to_owned(), bytes.len() as u64)
        ]
    );
}

#[test]
fn file_shorter_than_its_length_is_an_io_error_naming_the_file() {
    let server = S3Server::start();
    let storage = storage(&server);
    let path = server.scratch_dir("spool").join("short.bin");
    std::fs::write(&path, b"only ten b").expect("write the spool file");

    let err = storage
        .put(
            "db/short",
            Body::File {
                path: &path,
                len: 100,
            },
            0,
        )
        .expect_err("a short file is refused");
    assert!(
        matches!(&err, StorageError::Io { path: p, .. } if p == &path),
        "{err:?}"
    );
}

#[test]
fn listing_follows_continuation_tokens_and_filters_by_prefix() {
    let server = S3Server::start();
    let storage = storage(&server);
    let keys: Vec<String> = (0..1105).map(|i| format!("many/{i:06}")).collect();

    thread::scope(|scope| {
        for chunk in keys.chunks(150) {
            let storage = &storage;
            scope.spawn(move || {
                for key in chunk {
                    put_bytes(storage, key, key.as_bytes());
                }
            });
        }
    });
    put_bytes(&storage, "other/x", b"x");
    put_bytes(&storage, "manyfold", b"y");

    let listed = storage.list("many/").expect("list many/");
    assert_eq!(listed.len(), 1105);
    let listed_keys: Vec<String> = listed.iter().map(|o| o.key.clone()).collect();
    assert_eq!(listed_keys, keys, "every key once, in order");
    assert!(listed.iter().all(|o| o.size == 11));

    assert_eq!(storage.list("").expect("list all").len(), 1107);
    assert_eq!(storage.list("many").expect("list many").len(), 1106);
    assert_eq!(
        storage.list("other/").expect("list other/"),
        vec![ObjectMeta {
            key: "other/x".to_owned(),
            size: 1
        }]
    );
    assert_eq!(storage.list("many/0011").expect("list many/0011").len(), 5);
    assert!(storage.list("nothing/").expect("list nothing/").is_empty());
}

/// Checks `get_range` against the whole object: ranges anywhere, the whole
/// object, one past the end (an error naming the key), a missing key.
fn check_ranges(storage: &dyn Storage, key: &str, whole: &[u8]) {
    let n = whole.len() as u64;
    for (start, len) in [
        (0, 1),
        (0, n),
        (1, n - 1),
        (n - 1, 1),
        (n / 3, n / 3),
        (4096, 65536),
    ] {
        let got = storage
            .get_range(key, start, len)
            .unwrap_or_else(|e| panic!("{}: range {start}+{len}: {e}", storage.location()));
        assert!(
            got == whole[start as usize..(start + len) as usize],
            "{}: range {start}+{len} differs",
            storage.location()
        );
    }
    for (start, len) in [(0, n + 1), (n - 10, 11), (n, 1), (n + 100, 5)] {
        match storage.get_range(key, start, len) {
            Err(e @ StorageError::BadResponse { .. }) => {
                assert!(e.to_string().contains(key), "{e}")
            }
            other => panic!(
                "{}: range {start}+{len} past the end: {other:?}",
                storage.location()
            ),
        }
    }
    assert!(matches!(
        storage.get_range("db/missing", 0, 1),
        Err(StorageError::NotFound { .. })
    ));
}

/// A backend with only `get`: exercises the trait's default `get_range`.
struct GetOnly<'a>(&'a dyn Storage);

impl Storage for GetOnly<'_> {
    fn put(&self, key: &str, body: Body<'_>, crc32: u32) -> Result<(), StorageError> {
        self.0.put(key, body, crc32)
    }
    fn get(&self, key: &str) -> Result<walsync::storage::ObjectReader, StorageError> {
        self.0.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.0.list(prefix)
    }
    fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        self.0.delete(keys)
    }
    fn location(&self) -> String {
        format!("get-only {}", self.0.location())
    }
}

#[test]
fn ranged_reads_agree_with_the_whole_object_on_every_backend() {
    let server = S3Server::start();
    let s3 = storage(&server);
    let dir_root = std::env::temp_dir().join(format!("walsync-ranges-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir_root);
    let dir = walsync::storage::dir::DirStorage::new(&dir_root).expect("dir storage");
    let whole = pseudo_random_bytes(3 * MIB + 17);
    for backend in [&s3 as &dyn Storage, &dir] {
        put_bytes(backend, "db/ranged", &whole);
        check_ranges(backend, "db/ranged", &whole);
        check_ranges(&GetOnly(backend), "db/ranged", &whole);
    }
    std::fs::remove_dir_all(dir_root).unwrap();
}

/// A ranged read whose response is cut inside the body is retried, never
/// handed back short; once the link is sound again the same read succeeds.
#[test]
fn a_ranged_read_cut_mid_body_is_retried_never_returned_short() {
    use common::faultproxy::{Fault, FaultProxy};
    let server = S3Server::start();
    let whole = pseudo_random_bytes(MIB);
    put_bytes(&storage(&server), "db/cut", &whole);
    let proxy = FaultProxy::start(server.endpoint.trim_start_matches("http://"));
    let via_proxy = S3Storage::new(S3Settings {
        endpoint: Some(proxy.endpoint.clone()),
        ..server.settings()
    })
    .expect("settings")
    .with_retry(fast_retry());
    proxy.set(Fault::TruncateBody);
    match via_proxy.get_range("db/cut", 1000, 300_000) {
        Err(e @ StorageError::Transport { .. }) => {
            assert!(e.to_string().contains("attempt"), "{e}")
        }
        other => panic!("a cut body must be an error after retries: {other:?}"),
    }
    // The link heals while the read is retrying: the retried range is whole.
    let patient = S3Storage::new(S3Settings {
        endpoint: Some(proxy.endpoint.clone()),
        ..server.settings()
    })
    .expect("settings")
    .with_retry(RetryPolicy {
        max_attempts: 10,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(200),
    });
    let got = thread::scope(|scope| {
        scope.spawn(|| {
            thread::sleep(Duration::from_millis(300));
            proxy.set(Fault::None);
        });
        patient.get_range("db/cut", 1000, 300_000)
    })
    .expect("the healed link serves the range");
    assert!(got == whole[1000..301_000], "the range differs");
}

#[test]
fn missing_key_is_not_found() {
    let server = S3Server::start();
    let storage = storage(&server);
    match storage.get("db/missing") {
        Err(StorageError::NotFound { key }) => assert_eq!(key, "db/missing"),
        Err(e) => panic!("expected NotFound, got {e:?}"),
        Ok(_) => panic!("expected NotFound, got an object"),
    }
}

#[test]
fn delete_removes_objects_and_ignores_missing_ones() {
    let server = S3Server::start();
    let storage = storage(&server);
    put_bytes(&storage, "db/a", b"a");
    put_bytes(&storage, "db/b", b"b");
    put_bytes(&storage, "db/c", b"c");

    storage
        .delete(&[
            "db/a".to_owned(),
            "db/never-existed".to_owned(),
            "db/c".to_owned(),
        ])
        .expect("delete");
    let keys: Vec<String> = storage
        .list("db/")
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, vec!["db/b".to_owned()]);
    assert!(matches!(
        storage.get("db/a"),
        Err(StorageError::NotFound { .. })
    ));

    storage
        .delete(&["db/a".to_owned()])
        .expect("deleting again is fine");
    storage.delete(&[]).expect("deleting nothing is fine");
}

#[test]
fn wrong_secret_is_an_auth_error_without_retries() {
    let server = S3Server::start();
    let settings = S3Settings {
        secret_access_key: "not-the-secret".to_owned(),
        ..server.settings()
    };
    let storage = S3Storage::new(settings)
        .expect("settings")
        .with_retry(slow_retry());

    let start = Instant::now();
    let err = storage
        .put("db/x", Body::Bytes(b"x"), crc32fast::hash(b"x"))
        .expect_err("a wrong secret is refused");
    assert!(matches!(&err, StorageError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert!(!text.contains("not-the-secret") && !text.contains(&server.secret_key));

    assert!(matches!(storage.list(""), Err(StorageError::Auth { .. })));
    assert!(matches!(
        storage.get("db/x"),
        Err(StorageError::Auth { .. })
    ));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "retried: {:?}",
        start.elapsed()
    );

    let settings = S3Settings {
        access_key_id: "AKNOBODY".to_owned(),
        ..server.settings()
    };
    let storage = S3Storage::new(settings)
        .expect("settings")
        .with_retry(slow_retry());
    assert!(matches!(storage.list(""), Err(StorageError::Auth { .. })));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "retried: {:?}",
        start.elapsed()
    );
}

#[test]
fn wrong_checksum_is_refused_by_the_server() {
    let server = S3Server::start();
    let storage = storage(&server);
    let bytes = b"these bytes do not match the checksum";

    let start = Instant::now();
    let err = storage
        .put("db/corrupt", Body::Bytes(bytes), crc32fast::hash(bytes) ^ 1)
        .expect_err("a wrong CRC32 is refused");
    match &err {
        StorageError::Server {
            status,
            key,
            detail,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(key, "db/corrupt");
            assert!(detail.contains("BadDigest"), "{detail}");
        }
        other => panic!("expected Server(400 BadDigest), got {other:?}"),
    }
    assert!(err.to_string().contains("x-amz-checksum-crc32"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "a bad digest is not retried"
    );
    // s3s-fs 0.14.1 writes the object before it compares checksums, so the
    // bad bytes are stored anyway (S3 stores nothing); not asserted either way.
}

#[test]
fn missing_bucket_is_reported_by_list_and_delete() {
    let server = S3Server::start();
    let settings = S3Settings {
        bucket: "no-such-bucket".to_owned(),
        ..server.settings()
    };
    let storage = S3Storage::new(settings)
        .expect("settings")
        .with_retry(slow_retry());
    assert!(matches!(
        storage.list(""),
        Err(StorageError::NoSuchBucket { .. })
    ));
    let err = storage.delete(&["k".to_owned()]).expect_err("no bucket");
    assert!(matches!(err, StorageError::NoSuchBucket { .. }), "{err:?}");
    // s3s-fs 0.14.1 differs from S3 here: GetObject answers NoSuchKey and
    // PutObject succeeds (it creates the directory), so neither is asserted.
}

#[test]
fn keys_with_unusual_characters_round_trip() {
    let server = S3Server::start();
    let storage = storage(&server);
    let keys = [
        "odd/plus+sign",
        "odd/percent%41",
        "odd/with space",
        "odd/ünïcödé",
        "odd/semi;colon=eq&amp",
        "odd/tilde~dash-under_",
    ];
    for key in keys {
        put_bytes(&storage, key, key.as_bytes());
        assert_eq!(get_bytes(&storage, key), key.as_bytes(), "{key}");
    }
    let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    let listed: Vec<String> = storage
        .list("odd/")
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, expected);
}

#[test]
fn large_bodies_go_up_in_parts_and_round_trip_byte_for_byte() {
    let server = S3Server::start();
    let storage = multipart_storage(&server, 5 * MIB, 5 * MIB);
    let bytes = pseudo_random_bytes(12 * MIB + 345);
    let path = server.scratch_dir("spool").join("snapshot.bin");
    std::fs::write(&path, &bytes).expect("write the spool file");

    let body = Body::File {
        path: &path,
        len: bytes.len() as u64,
    };
    storage
        .put("db/big", body, crc32fast::hash(&bytes))
        .expect("multipart put of a file");
    assert!(
        get_bytes(&storage, "db/big") == bytes,
        "downloaded bytes differ"
    );
    let etag = etag_of(&server, "db/big");
    assert!(etag.ends_with("-3"), "three parts: {etag}");

    // Bytes in memory, and a prefix of a file, go up in parts too.
    let in_memory = &bytes[..7 * MIB];
    storage
        .put(
            "db/bytes",
            Body::Bytes(in_memory),
            crc32fast::hash(in_memory),
        )
        .expect("multipart put of bytes");
    assert!(get_bytes(&storage, "db/bytes") == in_memory, "bytes differ");
    assert!(etag_of(&server, "db/bytes").ends_with("-2"));
    let prefix_len = 10 * MIB + 1;
    let body = Body::File {
        path: &path,
        len: prefix_len as u64,
    };
    storage
        .put("db/prefix", body, crc32fast::hash(&bytes[..prefix_len]))
        .expect("multipart put of a file prefix");
    assert!(
        get_bytes(&storage, "db/prefix") == bytes[..prefix_len],
        "prefix differs"
    );
    assert!(etag_of(&server, "db/prefix").ends_with("-3"));

    let sizes: Vec<(String, u64)> = storage
        .list("db/")
        .expect("list")
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(
        sizes,
        vec![
            ("db/big".to_owned(), bytes.len() as u64),
            ("db/bytes".to_owned(), in_memory.len() as u64),
            ("db/prefix".to_owned(), prefix_len as u64),
        ]
    );
    assert_eq!(unfinished_uploads(&server), Vec::<String>::new());
}

#[test]
fn bodies_up_to_the_threshold_go_up_in_one_put() {
    let server = S3Server::start();
    let storage = multipart_storage(&server, 6 * MIB, 5 * MIB);
    let bytes = pseudo_random_bytes(6 * MIB + 1);

    put_bytes(&storage, "db/at", &bytes[..6 * MIB]);
    let etag = etag_of(&server, "db/at");
    assert!(!etag.contains('-'), "a single PutObject: {etag}");
    assert!(get_bytes(&storage, "db/at") == bytes[..6 * MIB]);

    put_bytes(&storage, "db/above", &bytes);
    let etag = etag_of(&server, "db/above");
    assert!(etag.ends_with("-2"), "a multipart upload: {etag}");
    assert!(get_bytes(&storage, "db/above") == bytes);

    // The default threshold is 64 MiB.
    let storage = self::storage(&server);
    put_bytes(&storage, "db/default", &bytes);
    assert!(!etag_of(&server, "db/default").contains('-'));
}

#[test]
fn failed_multipart_upload_is_aborted_and_leaves_no_object() {
    let server = S3Server::start();
    let storage = multipart_storage(&server, 5 * MIB, 5 * MIB);
    put_bytes(&storage, "db/kept", b"the old version");
    let bytes = pseudo_random_bytes(12 * MIB);
    let path = server.scratch_dir("spool").join("changed.bin");
    std::fs::write(&path, &bytes).expect("write the spool file");
    let body = Body::File {
        path: &path,
        len: bytes.len() as u64,
    };

    // A CRC32 that is not that of the bytes read (as if the file changed
    // under the upload): every part goes up, then the upload is aborted
    // instead of completed.
    for key in ["db/kept", "db/fresh"] {
        let err = storage
            .put(key, body, crc32fast::hash(&bytes) ^ 1)
            .expect_err("the CRC32 of the whole body does not match");
        match &err {
            StorageError::Io { path: p, source } => {
                assert_eq!(p, &path);
                assert!(source.to_string().contains("CRC32"), "{source}");
            }
            other => panic!("expected Io naming the file, got {other:?}"),
        }
    }
    assert_eq!(get_bytes(&storage, "db/kept"), b"the old version");
    assert!(matches!(
        storage.get("db/fresh"),
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(
        storage.list("db/").expect("list"),
        vec![ObjectMeta {
            key: "db/kept".to_owned(),
            size: 15
        }]
    );
    assert_eq!(
        unfinished_uploads(&server),
        Vec::<String>::new(),
        "the uploads were aborted"
    );
}

#[test]
fn file_shorter_than_its_length_starts_no_multipart_upload() {
    let server = S3Server::start();
    let storage = multipart_storage(&server, 5 * MIB, 5 * MIB);
    let path = server.scratch_dir("spool").join("short.bin");
    std::fs::write(&path, pseudo_random_bytes(7 * MIB)).expect("write the spool file");

    let err = storage
        .put(
            "db/short",
            Body::File {
                path: &path,
                len: 12 * MIB as u64,
            },
            0,
        )
        .expect_err("a short file is refused");
    assert!(
        matches!(&err, StorageError::Io { path: p, .. } if p == &path),
        "{err:?}"
    );
    assert!(matches!(
        storage.get("db/short"),
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(unfinished_uploads(&server), Vec::<String>::new());
}

const NGINX_PAGE: &str =
    "<!DOCTYPE html><html><head><title>Welcome to nginx!</title></head><body>hi</body></html>";

fn slow_down_xml() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
     <Message>Please reduce your request rate.</Message></Error>"
        .to_owned()
}

fn listing_xml() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
     <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
     <Name>bucket</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>\
     <IsTruncated>false</IsTruncated><Contents><Key>db/a</Key><Size>3</Size></Contents>\
     </ListBucketResult>"
        .to_owned()
}

fn storage_at(endpoint: &str) -> S3Storage {
    let settings = S3Settings {
        bucket: "bucket".to_owned(),
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".to_owned(),
        path_style: true,
        access_key_id: "AKID".to_owned(),
        secret_access_key: "SECRET".to_owned(),
        session_token: None,
    };
    S3Storage::new(settings)
        .expect("settings")
        .with_retry(fast_retry())
}

#[test]
fn html_endpoint_answering_200_is_a_bad_response() {
    let server = FakeServer::start(|_| {
        (
            "200 OK",
            "content-type: text/html\r\n",
            NGINX_PAGE.to_owned(),
        )
    });
    let storage = storage_at(&server.endpoint);
    for result in [
        storage.list("db/").map(|_| ()),
        storage.get("db/x").map(|_| ()),
        storage.put("db/x", Body::Bytes(b"x"), crc32fast::hash(b"x")),
    ] {
        match result {
            Err(StorageError::BadResponse { detail, .. }) => assert!(!detail.is_empty()),
            other => panic!("expected BadResponse, got {other:?}"),
        }
    }
    assert_eq!(server.requests(), 3, "no retries");
    assert_eq!(
        server.connections(),
        1,
        "bodies are drained and the connection reused"
    );
}

#[test]
fn html_endpoint_answering_404_is_a_bad_response() {
    let server = FakeServer::start(|_| {
        (
            "404 Not Found",
            "content-type: text/html\r\n",
            NGINX_PAGE.to_owned(),
        )
    });
    let storage = storage_at(&server.endpoint);
    for result in [
        storage.list("db/").map(|_| ()),
        storage.get("db/x").map(|_| ()),
        storage.put("db/x", Body::Bytes(b"x"), crc32fast::hash(b"x")),
        storage.delete(&["db/x".to_owned()]),
    ] {
        match result {
            Err(StorageError::BadResponse { detail, .. }) => {
                assert!(
                    detail.contains("nginx"),
                    "the excerpt shows what answered: {detail}"
                )
            }
            other => panic!("expected BadResponse, got {other:?}"),
        }
    }
    assert_eq!(server.requests(), 4, "no retries");
    assert_eq!(
        server.connections(),
        1,
        "error bodies are drained and the connection reused"
    );
}

#[test]
fn put_sends_a_content_length_and_the_signed_checksum() {
    let server = FakeServer::start(|_| ("200 OK", "etag: \"0123\"\r\n", String::new()));
    let storage = storage_at(&server.endpoint);
    let bytes = pseudo_random_bytes(300_000);
    let dir = common::unique_temp_dir("walsync-put-head");
    let path = dir.join("body.bin");
    std::fs::write(&path, &bytes).expect("write the body file");
    let crc = crc32fast::hash(&bytes);

    storage
        .put(
            "db/x",
            Body::File {
                path: &path,
                len: bytes.len() as u64,
            },
            crc,
        )
        .expect("put");
    let _ = std::fs::remove_dir_all(&dir);

    let heads = server.heads();
    assert_eq!(heads.len(), 1);
    let head = &heads[0];
    assert!(head.starts_with("PUT /bucket/db/x?"), "{head}");
    assert!(
        head.contains("X-Amz-SignedHeaders=host%3Bx-amz-checksum-crc32"),
        "{head}"
    );
    assert!(head.contains("\r\ncontent-length: 300000\r\n"), "{head}");
    let checksum = walsync::storage::s3::checksum_header_value(crc).to_ascii_lowercase();
    assert!(
        head.contains(&format!("\r\nx-amz-checksum-crc32: {checksum}\r\n")),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
}

#[test]
fn put_whose_stored_checksum_differs_is_a_bad_response() {
    let server = FakeServer::start(|_| {
        (
            "200 OK",
            "etag: \"0123\"\r\nx-amz-checksum-crc32: AAAAAA==\r\n",
            String::new(),
        )
    });
    let storage = storage_at(&server.endpoint);
    let err = storage
        .put("db/x", Body::Bytes(b"x"), crc32fast::hash(b"x"))
        .expect_err("the echoed checksum differs");
    assert!(
        matches!(&err, StorageError::BadResponse { detail, .. } if detail.contains("AAAAAA==")),
        "{err:?}"
    );
}

#[test]
fn wrong_region_redirect_is_reported_not_followed() {
    let server = FakeServer::start(|_| {
        (
            "301 Moved Permanently",
            "content-type: application/xml\r\nx-amz-bucket-region: eu-west-1\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>PermanentRedirect</Code>\
             <Message>The bucket you are attempting to access must be addressed using the \
             specified endpoint.</Message><Endpoint>bucket.s3.eu-west-1.amazonaws.com</Endpoint>\
             </Error>"
                .to_owned(),
        )
    });
    let storage = storage_at(&server.endpoint);
    match storage.list("db/") {
        Err(e @ StorageError::WrongRegion { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("region") && text.contains("eu-west-1"),
                "{text}"
            );
        }
        other => panic!("expected WrongRegion, got {other:?}"),
    }
    assert_eq!(server.requests(), 1);
}

#[test]
fn slow_down_is_retried_until_it_passes() {
    let server = FakeServer::start(|n| match n {
        0 | 1 => (
            "503 Slow Down",
            "content-type: application/xml\r\n",
            slow_down_xml(),
        ),
        _ => ("200 OK", "content-type: application/xml\r\n", listing_xml()),
    });
    let storage = storage_at(&server.endpoint);
    let listed = storage.list("").expect("the third try succeeds");
    assert_eq!(
        listed,
        vec![ObjectMeta {
            key: "db/a".to_owned(),
            size: 3
        }]
    );
    assert_eq!(server.requests(), 3);
    assert_eq!(server.connections(), 1);
}

/// Two pages as s3rver 3.7.1 writes them: its own namespace, entries
/// without `<ETag>`. rusty-s3's parser refused both ("unexpected root
/// element"), so every walsync command failed at start against s3rver.
fn s3rver_listing_page(n: usize) -> (&'static str, &'static str, String) {
    let body = match n {
        0 => {
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
              <ListBucketResult xmlns=\"http://doc.s3.amazonaws.com/2006-03-01/\">\
              <IsTruncated>true</IsTruncated><NextContinuationToken>page2</NextContinuationToken>\
              <Contents><Key>db/a</Key><Size>3</Size></Contents></ListBucketResult>"
        }
        _ => {
            "<ListBucketResult><IsTruncated>false</IsTruncated>\
              <Contents><Key>db/b</Key><LastModified>2026-11-29T10:00:00.000Z</LastModified>\
              <Size>5</Size></Contents></ListBucketResult>"
        }
    };
    (
        "200 OK",
        "content-type: application/xml\r\n",
        body.to_owned(),
    )
}

#[test]
fn listings_in_another_or_no_namespace_and_without_etags_are_read() {
    let server = FakeServer::start(s3rver_listing_page);
    let storage = storage_at(&server.endpoint);
    let listed = storage.list("db/").expect("both pages");
    let meta = |key: &str, size| ObjectMeta {
        key: key.to_owned(),
        size,
    };
    assert_eq!(listed, vec![meta("db/a", 3), meta("db/b", 5)]);
    let heads = server.heads();
    assert_eq!(heads.len(), 2);
    assert!(
        heads[1].contains("continuation-token=page2"),
        "{}",
        heads[1]
    );
}

/// Tigris sheds load with 408 `RequestCanceled`
/// (<https://github.com/earth-mover/icechunk/issues/1563>); 429 is the
/// throttling answer of other providers. Both are retried with backoff.
#[test]
fn load_shedding_408_and_429_are_retried_until_they_pass() {
    let server = FakeServer::start(|n| match n {
        0 => (
            "408 Request Timeout",
            "content-type: application/xml\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>RequestCanceled</Code>\
             <Message>Request canceled</Message></Error>"
                .to_owned(),
        ),
        1 => ("429 Too Many Requests", "", String::new()),
        _ => ("200 OK", "content-type: application/xml\r\n", listing_xml()),
    });
    let storage = storage_at(&server.endpoint);
    let listed = storage.list("").expect("the third try succeeds");
    assert_eq!(
        listed,
        vec![ObjectMeta {
            key: "db/a".to_owned(),
            size: 3
        }]
    );
    assert_eq!(server.requests(), 3);
}

#[test]
fn lasting_slow_down_gives_up_after_max_attempts() {
    let server = FakeServer::start(|_| {
        (
            "503 Slow Down",
            "content-type: application/xml\r\n",
            slow_down_xml(),
        )
    });
    let storage = storage_at(&server.endpoint);
    match storage.get("db/x") {
        Err(StorageError::Server {
            status,
            key,
            detail,
            ..
        }) => {
            assert_eq!((status, key.as_str()), (503, "db/x"));
            assert!(
                detail.contains("SlowDown") && detail.contains("after 3 attempts"),
                "{detail}"
            );
        }
        Err(other) => panic!("expected Server(503), got {other:?}"),
        Ok(_) => panic!("expected Server(503), got an object"),
    }
    assert_eq!(server.requests(), 3);
}

#[test]
fn unreachable_endpoint_is_a_transport_error_after_retries() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let storage = storage_at(&endpoint);
    let start = Instant::now();
    match storage.list("") {
        Err(StorageError::Transport {
            detail, location, ..
        }) => {
            assert!(detail.contains("after 3 attempts"), "{detail}");
            assert!(location.contains("127.0.0.1"), "{location}");
        }
        other => panic!("expected Transport, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    let err = storage
        .put("db/x", Body::Bytes(b"x"), crc32fast::hash(b"x"))
        .expect_err("nobody listens");
    assert!(matches!(err, StorageError::Transport { .. }), "{err:?}");
    assert!(!err.to_string().contains("SECRET"));
}

fn initiate_xml() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
     <InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
     <Bucket>bucket</Bucket><Key>db/x</Key><UploadId>UP-1</UploadId></InitiateMultipartUploadResult>"
        .to_owned()
}

/// Puts a 6 MiB body, which goes up as parts of 5 MiB and 1 MiB when the
/// threshold is below it.
fn two_part_put(storage: &S3Storage) -> Result<(), StorageError> {
    let bytes = pseudo_random_bytes(6 * MIB);
    storage.put("db/x", Body::Bytes(&bytes), crc32fast::hash(&bytes))
}

#[test]
fn part_refused_by_the_server_aborts_the_upload() {
    let server = FakeServer::start(|n| {
        match n {
        0 => ("200 OK", "content-type: application/xml\r\n", initiate_xml()),
        1 => ("200 OK", "etag: \"p1\"\r\n", String::new()),
        2 => (
            "400 Bad Request",
            "content-type: application/xml\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>BadDigest</Code>\
             <Message>The CRC32 you specified did not match the calculated checksum.</Message></Error>"
                .to_owned(),
        ),
        _ => ("204 No Content", "", String::new()),
    }
    });
    let storage = storage_at(&server.endpoint).with_multipart(MIB as u64, 5 * MIB as u64);
    let err = two_part_put(&storage).expect_err("part 2 is refused");
    match &err {
        StorageError::Server { status, detail, .. } => {
            assert_eq!(*status, 400);
            assert!(detail.contains("BadDigest"), "{detail}");
        }
        other => panic!("expected Server(400 BadDigest), got {other:?}"),
    }

    let heads = server.heads();
    assert_eq!(heads.len(), 4, "create, two parts, abort: {heads:#?}");
    let create = &heads[0];
    assert!(create.starts_with("POST /bucket/db/x?"), "{create}");
    assert!(create.contains("uploads="), "{create}");
    assert!(
        create.contains("X-Amz-SignedHeaders=host%3Bx-amz-checksum-algorithm"),
        "{create}"
    );
    assert!(
        create.contains("\r\nx-amz-checksum-algorithm: crc32\r\n"),
        "{create}"
    );
    let bytes = pseudo_random_bytes(6 * MIB);
    for (number, head, part) in [
        (1, &heads[1], &bytes[..5 * MIB]),
        (2, &heads[2], &bytes[5 * MIB..]),
    ] {
        assert!(head.starts_with("PUT /bucket/db/x?"), "{head}");
        assert!(head.contains(&format!("partNumber={number}&")), "{head}");
        assert!(head.contains("uploadId=UP-1"), "{head}");
        assert!(
            head.contains("X-Amz-SignedHeaders=host%3Bx-amz-checksum-crc32"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", part.len())),
            "{head}"
        );
        let checksum =
            walsync::storage::s3::checksum_header_value(crc32fast::hash(part)).to_ascii_lowercase();
        assert!(
            head.contains(&format!("\r\nx-amz-checksum-crc32: {checksum}\r\n")),
            "{head}"
        );
        assert!(!head.contains("transfer-encoding"), "{head}");
    }
    let abort = &heads[3];
    assert!(abort.starts_with("DELETE /bucket/db/x?"), "{abort}");
    assert!(abort.contains("uploadId=UP-1"), "{abort}");
}

#[test]
fn complete_answering_200_with_an_error_is_retried_then_aborted() {
    let server = FakeServer::start(|n| match n {
        0 => (
            "200 OK",
            "content-type: application/xml\r\n",
            initiate_xml(),
        ),
        1 | 2 => ("200 OK", "etag: \"p\"\r\n", String::new()),
        3..=5 => (
            "200 OK",
            "content-type: application/xml\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\n<Error><Code>InternalError</Code>\
             <Message>We encountered an internal error. Please try again.</Message></Error>"
                .to_owned(),
        ),
        _ => ("204 No Content", "", String::new()),
    });
    let storage = storage_at(&server.endpoint).with_multipart(MIB as u64, 5 * MIB as u64);
    let err = two_part_put(&storage).expect_err("the completion keeps failing");
    match &err {
        StorageError::Server { detail, .. } => {
            assert!(
                detail.contains("InternalError") && detail.contains("after 3 attempts"),
                "{detail}"
            );
        }
        other => panic!("expected Server(InternalError), got {other:?}"),
    }
    let heads = server.heads();
    assert_eq!(heads.len(), 7, "create, two parts, three completes, abort");
    for complete in &heads[3..6] {
        assert!(complete.starts_with("POST /bucket/db/x?"), "{complete}");
        assert!(complete.contains("uploadId=UP-1"), "{complete}");
        assert!(
            complete.contains("\r\ncontent-type: application/xml\r\n"),
            "{complete}"
        );
    }
    assert!(heads[6].starts_with("DELETE /bucket/db/x?"), "{}", heads[6]);
    assert!(heads[6].contains("uploadId=UP-1"), "{}", heads[6]);
}

#[test]
fn completed_object_with_a_wrong_checksum_is_deleted() {
    let server = FakeServer::start(|n| match n {
        0 => (
            "200 OK",
            "content-type: application/xml\r\n",
            initiate_xml(),
        ),
        1 | 2 => ("200 OK", "etag: \"p\"\r\n", String::new()),
        3 => (
            "200 OK",
            "content-type: application/xml\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Bucket>bucket</Bucket><Key>db/x</Key><ETag>\"e-2\"</ETag>\
             <ChecksumCRC32>AAAAAA==-2</ChecksumCRC32></CompleteMultipartUploadResult>"
                .to_owned(),
        ),
        _ => ("204 No Content", "", String::new()),
    });
    let storage = storage_at(&server.endpoint).with_multipart(MIB as u64, 5 * MIB as u64);
    let err = two_part_put(&storage).expect_err("the stored checksum differs");
    assert!(
        matches!(&err, StorageError::BadResponse { detail, .. } if detail.contains("AAAAAA==-2")),
        "{err:?}"
    );
    let heads = server.heads();
    assert_eq!(heads.len(), 5, "create, two parts, complete, delete");
    assert!(heads[4].starts_with("DELETE /bucket/db/x?"), "{}", heads[4]);
    assert!(
        !heads[4].contains("uploadId"),
        "the object is deleted: {}",
        heads[4]
    );
}

/// GCS's XML API has no DeleteObjects ("Multi-object delete" is listed
/// among the unsupported S3 features:
/// <https://cloud.google.com/storage/docs/migrating#methods-comparison>);
/// a server without it answers 501 NotImplemented.
fn not_implemented_xml() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code>\
     <Message>A header you provided implies functionality that is not implemented</Message></Error>"
        .to_owned()
}

#[test]
fn a_server_without_delete_objects_gets_single_deletes_from_then_on() {
    let server = FakeServer::start(|n| match n {
        0 => ("501 Not Implemented", "", not_implemented_xml()),
        _ => ("204 No Content", "", String::new()),
    });
    let storage = storage_at(&server.endpoint);
    assert!(storage.deletes_in_batches());
    let keys = |names: &[&str]| names.iter().map(|n| format!("db/{n}")).collect::<Vec<_>>();
    storage
        .delete(&keys(&["a", "b", "c"]))
        .expect("falls back to single deletes");
    assert!(!storage.deletes_in_batches());
    storage
        .delete(&keys(&["d", "e"]))
        .expect("single deletes from the start");
    let heads = server.heads();
    let lines: Vec<&str> = heads
        .iter()
        .map(|h| h.split('?').next().unwrap_or_default())
        .collect();
    assert_eq!(
        lines,
        vec![
            "POST /bucket/",
            "DELETE /bucket/db/a",
            "DELETE /bucket/db/b",
            "DELETE /bucket/db/c",
            "DELETE /bucket/db/d",
            "DELETE /bucket/db/e",
        ],
        "one DeleteObjects, not retried, then one DELETE per key"
    );
    assert!(heads[0].contains("delete=1"), "{}", heads[0]);
}

#[test]
fn delete_objects_sends_signed_content_md5_and_names_a_key_it_left() {
    let server = FakeServer::start(|_| {
        (
            "200 OK",
            "content-type: application/xml\r\n",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <DeleteResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Error><Key>db/a</Key><Code>NoSuchKey</Code><Message>gone</Message></Error>\
             <Error><Key>db/b</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>\
             </DeleteResult>"
                .to_owned(),
        )
    });
    let storage = storage_at(&server.endpoint);
    let err = storage
        .delete(&["db/a".to_owned(), "db/b".to_owned()])
        .expect_err("db/b was not deleted");
    match &err {
        StorageError::Server { key, detail, .. } => {
            assert_eq!(key, "db/b");
            assert!(detail.contains("AccessDenied"), "{detail}");
        }
        other => panic!("expected a Server error naming db/b, got {other:?}"),
    }
    let heads = server.heads();
    assert_eq!(heads.len(), 1, "AccessDenied is not retried: {heads:?}");
    let head = &heads[0];
    assert!(head.starts_with("POST /bucket/?"), "{head}");
    // Content-MD5, which DeleteObjects has always taken (older MinIO
    // refuses the request without it); not the CRC32 header, which some
    // servers refuse (see `integrity`).
    assert!(
        head.contains("X-Amz-SignedHeaders=content-md5%3Bhost"),
        "{head}"
    );
    assert!(head.contains("\r\ncontent-md5: "), "{head}");
    assert!(!head.contains("x-amz-checksum"), "{head}");
    assert!(head.contains("\r\ncontent-type: application/xml"), "{head}");
    assert!(storage.deletes_in_batches());
}

#[test]
fn a_full_batch_of_long_keys_is_deleted_though_the_answer_lists_every_key() {
    // s3s-fs 0.14.1 ignores <Quiet> and lists every deleted key: for 1,000
    // keys of 150 bytes the answer is about 190 KB, more than an error body.
    let server = S3Server::start();
    let storage = storage(&server);
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("db/{}/{i:06}", "long-name-".repeat(14)))
        .collect();
    thread::scope(|scope| {
        for chunk in keys.chunks(125) {
            let storage = &storage;
            scope.spawn(move || {
                for key in chunk {
                    put_bytes(storage, key, b"x");
                }
            });
        }
    });
    assert_eq!(storage.list("db/").expect("list").len(), 1000);
    storage.delete(&keys).expect("one full batch");
    assert_eq!(storage.list("db/").expect("list"), vec![]);
    assert!(storage.deletes_in_batches());
}

#[test]
fn a_server_that_ignores_conditional_writes_is_found_out_by_the_probe() {
    use walsync::lease::claim::probe;
    let server = FakeServer::start(common::fakeserver::ignores_conditional_writes);
    let storage = storage_at(&server.endpoint);
    let answers = probe(&storage, "db")
        .expect("the probe")
        .expect("an S3 server has conditional writes, honoured or not");
    assert_eq!(
        walsync::lease::ignored_condition(answers),
        Some("If-None-Match: * and If-Match")
    );
    // What was asked: a create, a create over it, a wrong ETag, then the
    // probe object removed.
    let heads = server.heads();
    assert_eq!(heads.len(), 4, "{heads:?}");
    for head in &heads[..2] {
        assert!(
            head.starts_with("PUT /bucket/db/lease.probe?") && head.contains("if-none-match: *"),
            "{head}"
        );
    }
    assert!(
        heads[2].contains("if-match: \"walsync-no-such-etag\""),
        "{}",
        heads[2]
    );
    assert!(
        heads[3].starts_with("DELETE /bucket/db/lease.probe?"),
        "{}",
        heads[3]
    );
}
