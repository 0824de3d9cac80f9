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
