//! A fake HTTP server for answers a real S3 server does not give: what
//! AWS says to a request for another region, a web server or proxy that
//! answers HTML, canned errors in a given order. std only.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// What a fake server answers: status line, extra header lines (each ending
/// in `\r\n`) and body.
pub type Answer = fn(usize) -> (&'static str, &'static str, String);

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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (connections.clone(), heads.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                thread::spawn(move || serve(stream, &h, answer));
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

fn serve(stream: TcpStream, heads: &Mutex<Vec<String>>, answer: Answer) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut content_length = 0usize;
        let mut head = String::new();
        if reader.read_line(&mut head).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
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
        let (status_line, headers, page) = answer(n);
        let response = format!(
            "HTTP/1.1 {status_line}\r\n{headers}content-length: {}\r\n\r\n{page}",
            page.len()
        );
        if reader.get_mut().write_all(response.as_bytes()).is_err() {
            return;
        }
    }
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
