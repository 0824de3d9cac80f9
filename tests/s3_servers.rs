//! The core of `S3Storage` (put, get, list across pages, delete, multipart,
//! ranged reads) against each of the three S3 implementations the suite
//! installs: s3s-fs, moto's server and s3rver. Where a server departs from
//! AWS, a test asserts what that server really does and says so.

mod common;

use std::thread;

use common::s3client::{fast_retry, fast_storage, get_bytes, put_bytes};
use common::s3servers::{AnyS3Server, ServerKind, SignatureCheck};
use walsync::storage::s3::{S3Settings, S3Storage};
use walsync::storage::{Body, ObjectMeta, Storage, StorageError};

const MIB: usize = 1024 * 1024;

fn storage(server: &AnyS3Server) -> S3Storage {
    fast_storage(server.settings())
}

/// Deterministic, incompressible-looking bytes.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn meta(key: &str, size: usize) -> ObjectMeta {
    ObjectMeta {
        key: key.to_owned(),
        size: size as u64,
    }
}

#[test]
fn objects_are_stored_replaced_listed_and_deleted_on_every_server() {
    for kind in ServerKind::ALL {
        let server = AnyS3Server::start(kind);
        let storage = storage(&server);
        let name = kind.name();
        put_bytes(&storage, "db/a", b"first");
        put_bytes(&storage, "db/b", b"");
        put_bytes(&storage, "db/c d+e&f", b"odd key");
        put_bytes(&storage, "dbx/other", b"x");
        assert_eq!(get_bytes(&storage, "db/a"), b"first", "{name}");
        put_bytes(&storage, "db/a", b"replaced");
        assert_eq!(get_bytes(&storage, "db/a"), b"replaced", "{name}");
        assert_eq!(get_bytes(&storage, "db/b"), b"", "{name}");
        assert_eq!(get_bytes(&storage, "db/c d+e&f"), b"odd key", "{name}");
        assert_eq!(
            storage.list("db/").expect("list db/"),
            vec![meta("db/a", 8), meta("db/b", 0), meta("db/c d+e&f", 7)],
            "{name}"
        );
        assert!(
            matches!(
                storage.get("db/missing"),
                Err(StorageError::NotFound { .. })
            ),
            "{name}"
        );
        storage
            .delete(&["db/a".to_owned(), "db/missing".to_owned()])
            .unwrap_or_else(|e| panic!("{name}: delete: {e}"));
        assert_eq!(
            storage.list("db/").expect("list db/"),
            vec![meta("db/b", 0), meta("db/c d+e&f", 7)],
            "{name}"
        );
        assert_eq!(storage.list("").expect("list all").len(), 3, "{name}");
        assert!(
            storage.list("none/").expect("list none/").is_empty(),
            "{name}"
        );
    }
}

#[test]
fn listings_span_pages_on_every_server() {
    for kind in ServerKind::ALL {
        let server = AnyS3Server::start(kind);
        let storage = storage(&server);
        // More than one page of 1000 keys, each in a folder of its own.
        let keys: Vec<String> = (0..1003).map(|i| format!("many/{i:06}/k")).collect();
        thread::scope(|scope| {
            for chunk in keys.chunks(126) {
                let storage = &storage;
                scope.spawn(move || {
                    for key in chunk {
                        put_bytes(storage, key, key.as_bytes());
                    }
                });
            }
        });
        let listed = storage
            .list("many/")
            .unwrap_or_else(|e| panic!("{}: list many/: {e}", kind.name()));
        let listed_keys: Vec<String> = listed.iter().map(|o| o.key.clone()).collect();
        assert_eq!(
            listed_keys,
            keys,
            "{}: every key once, in order",
            kind.name()
        );
        assert!(listed.iter().all(|o| o.size == 13), "{}", kind.name());
        // The folders, over more than one page, as a config-less fleet
        // command asks for them; none inside a folder that holds a key.
        let folders: Vec<String> = (0..1003).map(|i| format!("many/{i:06}/")).collect();
        let children = |prefix: &str| {
            let mut found = Vec::new();
            storage
                .list_children(prefix, &mut |page| {
                    found.extend(page);
                    true
                })
                .unwrap_or_else(|e| panic!("{}: list_children {prefix}: {e}", kind.name()));
            found
        };
        assert_eq!(children("many/"), folders, "{}", kind.name());
        // s3rver 3.7.1 does not walk into a folder's folders with a
        // delimiter, so it finds no key to group at the bucket's root: none
        // is a hint like any other (the listing is then made whole).
        let root: &[&str] = match kind {
            ServerKind::S3rver => &[],
            _ => &["many/"],
        };
        assert_eq!(children(""), root, "{}", kind.name());
        assert_eq!(
            children("many/000007/"),
            Vec::<String>::new(),
            "{}",
            kind.name()
        );
        // In ranges (as fleet commands list a large parent): from after a
        // key, through a key, both, and bounds that are no key; one range
        // spans the page boundary.
        for (after, through) in [
            (Some("many/000499"), None),
            (None, Some("many/000010")),
            (Some("many/000004"), Some("many/001001")),
            (Some("many/0004995"), Some("many/000999x")),
            (Some("many/001002"), None),
        ] {
            let part: Vec<String> = storage
                .list_range("many/", after, through)
                .unwrap_or_else(|e| panic!("{}: list_range many/: {e}", kind.name()))
                .into_iter()
                .map(|o| o.key)
                .collect();
            let expected: Vec<String> = keys
                .iter()
                .filter(|k| walsync::storage::in_range(k, after, through))
                .cloned()
                .collect();
            assert_eq!(part, expected, "{}: {after:?}..={through:?}", kind.name());
        }

        // Two DeleteObjects batches (1,000 keys and 3), with a key that
        // needs escaping in the body and one that does not exist.
        put_bytes(&storage, "many/c d+e&f<'\">", b"odd key");
        let mut doomed = keys.clone();
        doomed.push("many/c d+e&f<'\">".to_owned());
        doomed.push("many/missing".to_owned());
        storage
            .delete(&doomed)
            .unwrap_or_else(|e| panic!("{}: delete many/: {e}", kind.name()));
        assert_eq!(
            storage.list("many/").expect("list many/"),
            vec![],
            "{}: every key deleted",
            kind.name()
        );
        assert!(
            storage.deletes_in_batches(),
            "{}: DeleteObjects was taken, not fallen back from",
            kind.name()
        );
    }
}

#[test]
fn multipart_uploads_and_ranged_reads_round_trip_on_every_server() {
    let bytes = pseudo_random_bytes(12 * MIB + 345);
    for kind in ServerKind::ALL {
        let server = AnyS3Server::start(kind);
        let name = kind.name();
        // Parts of 5 MiB, S3's smallest: three for this body.
        let storage = storage(&server).with_multipart(5 * MIB as u64, 5 * MIB as u64);
        let path = server.scratch_dir("spool").join("snapshot.bin");
        std::fs::write(&path, &bytes).expect("write the spool file");
        let body = Body::File {
            path: &path,
            len: bytes.len() as u64,
        };
        storage
            .put("db/big", body, crc32fast::hash(&bytes))
            .unwrap_or_else(|e| panic!("{name}: multipart put: {e}"));
        assert!(
            get_bytes(&storage, "db/big") == bytes,
            "{name}: bytes differ"
        );
        assert_eq!(
            storage.list("db/").expect("list"),
            vec![meta("db/big", bytes.len())],
            "{name}"
        );

        let n = bytes.len() as u64;
        for (start, len) in [
            (0, 2),
            (0, n),
            (1, n - 1),
            (n - 1, 1),
            (n / 3, 5 * MIB as u64),
        ] {
            let got = storage
                .get_range("db/big", start, len)
                .unwrap_or_else(|e| panic!("{name}: range {start}+{len}: {e}"));
            assert!(
                got == bytes[start as usize..(start + len) as usize],
                "{name}: range {start}+{len} differs"
            );
        }
        // s3rver reads `bytes=0-0` as "from 0 to the end" (a falsy end in
        // its lib/stores/filesystem.js) and answers the whole object as if
        // it were the range: walsync sees more bytes than it asked for and
        // refuses them, naming the key. (walsync's own reads are never one
        // byte long.) The other servers answer the one byte.
        let first_byte = storage.get_range("db/big", 0, 1);
        if kind == ServerKind::S3rver {
            match first_byte {
                Err(e @ StorageError::BadResponse { .. }) => {
                    assert!(e.to_string().contains("db/big"), "{name}: {e}")
                }
                other => panic!("{name}: bytes=0-0: {other:?}"),
            }
        } else {
            assert_eq!(first_byte.expect("the first byte"), bytes[..1], "{name}");
        }
        for (start, len) in [(0, n + 1), (n, 1)] {
            match storage.get_range("db/big", start, len) {
                Err(e @ StorageError::BadResponse { .. }) => {
                    assert!(e.to_string().contains("db/big"), "{name}: {e}")
                }
                other => panic!("{name}: range {start}+{len} past the end: {other:?}"),
            }
        }
    }
}

/// A storage for `server` with its settings changed by `change`.
fn storage_with(server: &AnyS3Server, change: impl FnOnce(&mut S3Settings)) -> S3Storage {
    let mut settings = server.settings();
    change(&mut settings);
    S3Storage::new(settings)
        .expect("settings")
        .with_retry(fast_retry())
}

#[test]
fn wrong_credentials_are_refused_as_far_as_each_server_checks() {
    for kind in ServerKind::ALL {
        let name = kind.name();
        let server = AnyS3Server::start(kind);
        let wrong_secret = storage_with(&server, |s| {
            s.secret_access_key = "not-the-secret".to_owned()
        });
        let wrong_key = storage_with(&server, |s| s.access_key_id = "AKNOBODY".to_owned());
        let put =
            |storage: &S3Storage| storage.put("db/x", Body::Bytes(b"x"), crc32fast::hash(b"x"));
        let auth_error = |result: Result<(), StorageError>, code: &str| match result {
            Err(StorageError::Auth { detail, .. }) => assert!(
                detail.contains(code) && !detail.contains("not-the-secret"),
                "{name}: {detail}"
            ),
            other => panic!("{name}: expected Auth ({code}), got {other:?}"),
        };
        match kind.signature_check() {
            SignatureCheck::Full => {
                auth_error(put(&wrong_secret), "SignatureDoesNotMatch");
                auth_error(wrong_secret.list("").map(|_| ()), "SignatureDoesNotMatch");
                // s3s-fs names an unknown key NotSignedUp (AWS:
                // InvalidAccessKeyId); walsync reports both as Auth.
                auth_error(put(&wrong_key), "NotSignedUp");
            }
            SignatureCheck::AccessKeyOnly => {
                // s3rver does not compute SigV4: a wrong secret goes through.
                put(&wrong_secret).unwrap_or_else(|e| panic!("{name}: {e}"));
                auth_error(put(&wrong_key), "InvalidAccessKeyId");
                auth_error(wrong_key.list("").map(|_| ()), "InvalidAccessKeyId");
            }
            SignatureCheck::Nothing => {
                // moto accepts any key and secret.
                put(&wrong_secret).unwrap_or_else(|e| panic!("{name}: {e}"));
                put(&wrong_key).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}

#[test]
fn wrong_checksum_is_refused_only_where_the_server_checks_it() {
    let bytes = b"these bytes do not match the checksum";
    for kind in ServerKind::ALL {
        let server = AnyS3Server::start(kind);
        let storage = storage(&server);
        let result = storage.put("db/corrupt", Body::Bytes(bytes), crc32fast::hash(bytes) ^ 1);
        if kind.checks_crc32() {
            match result {
                Err(StorageError::Server { status, detail, .. }) => {
                    assert_eq!(status, 400, "{}", kind.name());
                    assert!(detail.contains("BadDigest"), "{}: {detail}", kind.name());
                }
                other => panic!("{}: expected 400 BadDigest, got {other:?}", kind.name()),
            }
        } else {
            // moto 5.2.5 and s3rver 3.7.1 ignore x-amz-checksum-crc32: the
            // bytes are stored under the key and nothing says the checksum
            // was wrong. walsync cannot tell from the answer (issue 13).
            result.unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            assert_eq!(get_bytes(&storage, "db/corrupt"), bytes, "{}", kind.name());
        }
    }
}

#[test]
fn conditional_puts_are_honoured_where_the_server_does() {
    use walsync::storage::{PutIf, PutIfOutcome};
    for kind in ServerKind::ALL {
        let server = AnyS3Server::start(kind);
        let storage = storage(&server);
        let name = kind.name();
        let put_if = |bytes: &[u8], condition| {
            storage
                .put_if("db/lease", bytes, condition)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let PutIfOutcome::Written { etag: first } = put_if(b"one", PutIf::Absent) else {
            panic!("{name}: a create of a new key is written")
        };
        let again = put_if(b"two", PutIf::Absent);
        let wrong = put_if(b"three", PutIf::Matches("\"walsync-no-such-etag\""));
        let tagged = storage
            .get_tagged("db/lease")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            tagged.modified_ms.is_some() && tagged.server_now_ms.is_some(),
            "{name}: {tagged:?}"
        );
        if kind.honours_conditional_writes() {
            assert_eq!(
                (&again, &wrong),
                (&PutIfOutcome::Refused, &PutIfOutcome::Refused),
                "{name}"
            );
            assert_eq!(
                (tagged.bytes.as_slice(), tagged.etag.as_str()),
                (&b"one"[..], first.as_str()),
                "{name}"
            );
            let PutIfOutcome::Written { etag: second } = put_if(b"four", PutIf::Matches(&first))
            else {
                panic!("{name}: If-Match on the current ETag is written")
            };
            assert_eq!(
                put_if(b"five", PutIf::Matches(&first)),
                PutIfOutcome::Refused,
                "{name}"
            );
            assert_eq!(get_bytes(&storage, "db/lease"), b"four", "{name}");
            assert_ne!(first, second, "{name}");
        } else {
            // s3rver 3.7.1 stores every PUT whatever its conditions.
            assert!(
                matches!(again, PutIfOutcome::Written { .. }),
                "{name}: {again:?}"
            );
            assert!(
                matches!(wrong, PutIfOutcome::Written { .. }),
                "{name}: {wrong:?}"
            );
            assert_eq!(tagged.bytes, b"three", "{name}");
        }
        assert!(
            matches!(
                storage.get_tagged("db/none"),
                Err(StorageError::NotFound { .. })
            ),
            "{name}"
        );
    }
}
