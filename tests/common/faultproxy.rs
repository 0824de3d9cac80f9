//! A fault-injecting TCP proxy between walsync and the S3 server, written
//! with std only. Its mode applies to every connection: switching it cuts
//! the connections already open, so a keep-alive pool cannot dodge a fault.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Forward everything.
    None = 0,
    /// Close every connection at once (like a server that is down).
    Reset = 1,
    /// Answer every request 503 SlowDown without forwarding it.
    Unavailable = 2,
    /// Forward, but hold every chunk for a while.
    Slow = 3,
    /// Forward the request, then cut the response after a few bytes.
    TruncateResponse = 4,
    /// Answer 500 InternalError to every request.
    InternalError = 5,
    /// Forward the request, then cut the response a few bytes into its body
    /// (the head, with its Content-Length, goes through whole).
    TruncateBody = 6,
}

/// How a response is cut.
#[derive(Clone, Copy)]
enum Cut {
    /// After this many bytes of the response.
    After(usize),
    /// After this many bytes past the end of the head (`\r\n\r\n`).
    IntoBody(usize),
}

pub struct FaultProxy {
    pub endpoint: String,
    fault: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        {
            let (fault, stop, open) = (fault.clone(), stop.clone(), open.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            let mode = fault.load(Ordering::Relaxed);
                            handle(client, &upstream, mode, &open);
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            fault,
            stop,
            open,
        }
    }

    /// Switches the fault and cuts every open connection.
    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::Relaxed);
        let mut open = self.open.lock().expect("proxy connection list");
        for s in open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set(Fault::None);
    }
}

fn canned(mut client: TcpStream, status: &str, code: &str) {
    // Read the request head so the client is not cut off mid-write.
    let mut buf = [0u8; 8192];
    let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = client.read(&mut buf);
    let body = format!(
        "<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
    );
    let _ = write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}

fn handle(client: TcpStream, upstream: &str, mode: u8, open: &Arc<Mutex<Vec<TcpStream>>>) {
    match mode {
        m if m == Fault::Reset as u8 => {
            let _ = client.shutdown(Shutdown::Both);
        }
        m if m == Fault::Unavailable as u8 => {
            thread::spawn(move || canned(client, "503 Service Unavailable", "SlowDown"));
        }
        m if m == Fault::InternalError as u8 => {
            thread::spawn(move || canned(client, "500 Internal Server Error", "InternalError"));
        }
        _ => {
            let Ok(server) = TcpStream::connect(upstream) else {
                let _ = client.shutdown(Shutdown::Both);
                return;
            };
            if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                let mut list = open.lock().expect("proxy connection list");
                list.push(c);
                list.push(s);
            }
            let slow = mode == Fault::Slow as u8;
            let cut = match mode {
                m if m == Fault::TruncateResponse as u8 => Some(Cut::After(40)),
                m if m == Fault::TruncateBody as u8 => Some(Cut::IntoBody(100)),
                _ => None,
            };
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => return,
            };
            thread::spawn(move || pump(client, server, slow, None));
            thread::spawn(move || pump(s2, c2, slow, cut));
        }
    }
}

/// Copies `from` to `to` until either side closes; with `cut`, closes both
/// at that point.
fn pump(mut from: TcpStream, mut to: TcpStream, slow: bool, cut: Option<Cut>) {
    let mut buf = [0u8; 16384];
    let mut seen: Vec<u8> = Vec::new();
    let mut limit = match cut {
        Some(Cut::After(n)) => Some(n),
        _ => None,
    };
    let mut sent = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if slow {
            thread::sleep(Duration::from_millis(300));
        }
        if let (Some(Cut::IntoBody(extra)), None) = (cut, limit) {
            seen.extend_from_slice(&buf[..n]);
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                limit = Some(end + 4 + extra);
            }
        }
        let n = match limit {
            Some(l) => n.min(l.saturating_sub(sent)),
            None => n,
        };
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        if limit.is_some_and(|l| sent >= l) {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
