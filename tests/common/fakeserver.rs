//! A fake HTTP server for answers a real S3 server does not give: what
//! AWS says to a request for another region, a web server or proxy that
//! answers HTML, canned errors in a given order, and providers' documented
//! departures from AWS, scripted from what each request carries
//! (`FakeServer::scripted`). std only.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// What a fake server answers: status line, extra header lines (each ending
/// in `\r\n`) and body.
pub type Answer = fn(usize) -> (&'static str, &'static str, String);

/// One request as a scripted server sees it.
pub struct Request<'a> {
    /// Its number, from 0.
    pub n: usize,
    /// The request line and the header lines, as sent.
    pub head: &'a str,
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The request line's method and path, without the query.
    pub fn line(&self) -> &str {
        self.head
            .lines()
            .next()
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default()
    }

    /// The value of a header, if sent (the name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// What a scripted server answers to a request: status line, extra header
/// lines (each ending in `\r\n`) and body.
pub type Reply = (&'static str, String, String);

type Script = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A fake HTTP server on a free port. `answer(n)` gives the answer to the
/// `n`th request (from 0). Counts connections and keeps request heads, to see
/// retries, connection reuse and what was sent.
pub struct FakeServer {
    pub endpoint: String,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl FakeServer {
    pub fn start(answer: Answer) -> FakeServer {
        FakeServer::scripted(move |request| {
            let (status, headers, body) = answer(request.n);
            (status, headers.to_owned(), body)
        })
    }

    /// A server whose answer to each request `script` gives from the
    /// request itself (its method and path, headers and body).
    pub fn scripted(script: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeServer {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (connections.clone(), heads.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let (h, script) = (h.clone(), script.clone());
                thread::spawn(move || serve(stream, &h, &*script));
            }
        });
        FakeServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            connections,
            heads,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.heads().len()
    }

    /// The request line and headers of every request so far, lower-cased.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

fn serve(
    stream: TcpStream,
    heads: &Mutex<Vec<String>>,
    script: &(dyn Fn(&Request) -> Reply + Send + Sync),
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut content_length = 0usize;
        let mut head = String::new();
        if reader.read_line(&mut head).unwrap_or(0) == 0 {
            return;
        }
        let mut raw = head.clone();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            raw.push_str(&line);
            head.push_str(&line.to_ascii_lowercase());
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let n = match heads.lock() {
            Ok(mut heads) => {
                heads.push(head);
                heads.len() - 1
            }
            Err(_) => return,
        };
        let (status_line, headers, page) = script(&Request {
            n,
            head: &raw,
            body: &body,
        });
        let response = format!(
            "HTTP/1.1 {status_line}\r\n{headers}content-length: {}\r\n\r\n{page}",
            page.len()
        );
        if reader.get_mut().write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// `Content-MD5` of `bytes` (base64 of the MD5), by Python's hashlib: an
/// implementation independent of walsync's own.
pub fn content_md5(bytes: &[u8]) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, hashlib, base64; \
             print(base64.b64encode(hashlib.md5(sys.stdin.buffer.read()).digest()).decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 computes MD5s for the scripted servers: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(bytes)
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3 ran");
    assert!(out.status.success(), "python3 failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How a scripted provider departs from AWS. Each is documented where it
/// is used (tests/providers.rs) with a link to where the provider says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Cloudflare R2 until January 2025: 501 `NotImplemented`, "Header
    /// 'x-amz-checksum-crc32' with value '…' not implemented", for any
    /// `x-amz-checksum-*` header.
    R2RefusesChecksumHeaders,
    /// Backblaze B2: 400 `InvalidArgument`, "Unsupported header
    /// 'x-amz-checksum-crc32' received for this API call.", for any
    /// `x-amz-checksum-*` header.
    B2RefusesChecksumHeaders,
}

/// An object the scripted bucket holds, with the integrity header it came
/// with (of its single PUT, or of its last part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub bytes: Vec<u8>,
    /// (header name in lower case, value) of every integrity header sent.
    pub sent: Vec<(String, String)>,
}

/// Objects by key.
pub type Objects = Arc<Mutex<std::collections::BTreeMap<String, Held>>>;

/// The parts of the multipart upload under way: number, bytes, integrity
/// headers.
type Parts = Arc<Mutex<Vec<(u32, Vec<u8>, Vec<(String, String)>)>>>;

fn xml_error(status: &'static str, code: &str, message: &str) -> Reply {
    (
        status,
        "content-type: application/xml\r\n".to_owned(),
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error>"
        ),
    )
}

/// The integrity headers of a request: `content-md5` and `x-amz-checksum-*`.
fn integrity_headers(request: &Request) -> Vec<(String, String)> {
    request
        .head
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = name.trim().to_ascii_lowercase();
            (name == "content-md5" || name.starts_with("x-amz-checksum-"))
                .then(|| (name, value.trim().to_owned()))
        })
        .collect()
}

/// The key in the path of `/bucket/<key>`.
fn key_of(request: &Request) -> String {
    let path = request.line().split(' ').nth(1).unwrap_or_default();
    path.trim_start_matches("/bucket/").to_owned()
}

/// A bucket (`bucket`, path style) held in memory that answers PutObject,
/// multipart uploads, GetObject, DeleteObject and DeleteObjects as S3 does
/// (a `Content-MD5` that does not match the body: 400 `BadDigest`), except
/// for `departure`. Returns the server and what it holds.
pub fn scripted_bucket(departure: Departure) -> (FakeServer, Objects) {
    let objects: Objects = Arc::default();
    let parts: Parts = Arc::default();
    let held = objects.clone();
    let server = FakeServer::scripted(move |request| {
        let sent = integrity_headers(request);
        if let Some((name, value)) = sent.iter().find(|(n, _)| n.starts_with("x-amz-checksum-")) {
            return match departure {
                Departure::R2RefusesChecksumHeaders => xml_error(
                    "501 Not Implemented",
                    "NotImplemented",
                    &format!("Header '{name}' with value '{value}' not implemented"),
                ),
                Departure::B2RefusesChecksumHeaders => xml_error(
                    "400 Bad Request",
                    "InvalidArgument",
                    &format!("Unsupported header '{name}' received for this API call."),
                ),
            };
        }
        if let Some((_, md5)) = sent.iter().find(|(n, _)| n == "content-md5") {
            if *md5 != content_md5(request.body) {
                return xml_error(
                    "400 Bad Request",
                    "BadDigest",
                    "The Content-MD5 you specified did not match what we received.",
                );
            }
        }
        let first = request.head.lines().next().unwrap_or_default();
        let method = first.split(' ').next().unwrap_or_default();
        let key = key_of(request);
        let ok = |headers: &str, body: String| ("200 OK", headers.to_owned(), body);
        let mut objects = held.lock().expect("objects");
        let mut parts = parts.lock().expect("parts");
        match method {
            "PUT" if first.contains("partNumber=") => {
                let number: u32 = first
                    .split("partNumber=")
                    .nth(1)
                    .and_then(|s| s.split('&').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                parts.push((number, request.body.to_vec(), sent));
                ok(&format!("etag: \"p{number}\"\r\n"), String::new())
            }
            "PUT" => {
                objects.insert(
                    key,
                    Held {
                        bytes: request.body.to_vec(),
                        sent,
                    },
                );
                ok("etag: \"e\"\r\n", String::new())
            }
            "POST" if first.contains("uploads") => {
                parts.clear();
                ok(
                    "content-type: application/xml\r\n",
                    format!(
                        "<InitiateMultipartUploadResult><Bucket>bucket</Bucket><Key>{key}</Key>\
                         <UploadId>UP-1</UploadId></InitiateMultipartUploadResult>"
                    ),
                )
            }
            "POST" if first.contains("uploadId=") => {
                parts.sort_by_key(|p| p.0);
                let bytes = parts.iter().flat_map(|p| p.1.clone()).collect();
                let sent = parts.last().map(|p| p.2.clone()).unwrap_or_default();
                objects.insert(key.clone(), Held { bytes, sent });
                ok(
                    "content-type: application/xml\r\n",
                    format!(
                        "<CompleteMultipartUploadResult><Key>{key}</Key><ETag>\"m-{}\"</ETag>\
                         </CompleteMultipartUploadResult>",
                        parts.len()
                    ),
                )
            }
            "POST" if first.contains("delete") => {
                let body = String::from_utf8_lossy(request.body);
                for part in body.split("<Key>").skip(1) {
                    objects.remove(part.split("</Key>").next().unwrap_or_default());
                }
                ok(
                    "content-type: application/xml\r\n",
                    "<DeleteResult></DeleteResult>".to_owned(),
                )
            }
            "DELETE" if first.contains("uploadId=") => {
                parts.clear();
                ("204 No Content", String::new(), String::new())
            }
            "DELETE" => {
                objects.remove(&key);
                ("204 No Content", String::new(), String::new())
            }
            "GET" => match objects.get(&key) {
                Some(o) => ok(
                    "etag: \"e\"\r\n",
                    String::from_utf8_lossy(&o.bytes).into_owned(),
                ),
                None => xml_error("404 Not Found", "NoSuchKey", "no such key"),
            },
            _ => xml_error("501 Not Implemented", "NotImplemented", "not scripted"),
        }
    });
    (server, objects)
}

/// A server that ignores `If-None-Match` and `If-Match` on PutObject and
/// stores every PUT (answering 200 with an ETag), as s3rver 3.7.1 does
/// (tests/s3_servers.rs) and as MinIO did before it implemented them: it
/// failed the conditional-put cases of ceph/s3-tests
/// (<https://github.com/s3gw-tech/s3gw/issues/674>, 2023). AWS documents
/// the 412 such a server never sends:
/// <https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html>.
pub fn ignores_conditional_writes(_: usize) -> (&'static str, &'static str, String) {
    ("200 OK", "etag: \"0123\"\r\n", String::new())
}
