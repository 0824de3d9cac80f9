//! A real S3 server for integration tests: one `s3s-fs` child process per
//! test, on a free port, with random credentials, serving a fresh temporary
//! directory that holds one bucket.
//!
//! The binary is `$WALSYNC_S3S_FS` if set, else
//! `~/.cache/walsync-tools/s3s-fs-0.14.1/bin/s3s-fs` (where CI installs it).
//! If it is missing or does not come up, the test panics with the reason:
//! nothing is skipped silently.

use std::fs::{self, File};
use std::hash::{BuildHasher, RandomState};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use walsync::storage::s3::S3Settings;

/// The s3s-fs version the harness is written against.
pub fn s3s_fs_version() -> &'static str {
    super::tool_version("S3S_FS_VERSION")
}

/// How long the server may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Region we sign for; s3s-fs accepts any.
pub const REGION: &str = "us-east-1";

/// A running s3s-fs, killed and cleaned up on drop.
pub struct S3Server {
    /// e.g. `http://127.0.0.1:40123`
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// The directory s3s-fs serves; the bucket is `root/<bucket>` and each
    /// object a file under it.
    pub root: PathBuf,
    /// Holds `root` and the server's logs.
    dir: PathBuf,
    port: u16,
    /// `None` between `stop` and `restart`.
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server with one empty bucket. Panics with the reason if it
    /// cannot.
    pub fn start() -> S3Server {
        let binary = s3s_fs_binary();
        if !binary.is_file() {
            let v = s3s_fs_version();
            panic!(
                "s3s-fs not found at {} (set WALSYNC_S3S_FS or install it with \
                 `cargo install s3s-fs --version {v} --features binary --root ~/.cache/walsync-tools/s3s-fs-{v}`)",
                binary.display()
            );
        }

        let dir = super::unique_temp_dir("walsync-s3s");
        let root = dir.join("data");
        let bucket = "walsync-test".to_owned();
        fs::create_dir_all(root.join(&bucket))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        let access_key = format!("AK{}", random_hex(18).to_uppercase());
        let secret_key = random_hex(40);

        // The port is free when we look, but another process may take it
        // before s3s-fs binds it: then the child exits and we try another.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            match spawn(&binary, &dir, &root, port, &access_key, &secret_key) {
                Ok(child) => {
                    return S3Server {
                        endpoint: format!("http://127.0.0.1:{port}"),
                        bucket,
                        access_key,
                        secret_key,
                        root,
                        dir,
                        port,
                        child: Some(child),
                    }
                }
                Err(reason) => failures.push(reason),
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!(
            "s3s-fs ({}) did not start:\n{}",
            binary.display(),
            failures.join("\n")
        );
    }

    /// Kills the s3s-fs process (SIGKILL, like a crash or a power cut of
    /// the server): from now on connections to the endpoint are refused. The
    /// bucket's files stay where they are.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts s3s-fs again after `stop`, on the same port, with the same
    /// credentials and the same data directory, so clients find the server
    /// where it was with every object it had. Panics with the reason if it
    /// does not come up (e.g. another process took the port meanwhile).
    pub fn restart(&mut self) {
        self.stop();
        let binary = s3s_fs_binary();
        match spawn(
            &binary,
            &self.dir,
            &self.root,
            self.port,
            &self.access_key,
            &self.secret_key,
        ) {
            Ok(child) => self.child = Some(child),
            Err(reason) => panic!("s3s-fs did not start again: {reason}"),
        }
    }

    /// Settings for `S3Storage` pointing at this server's bucket.
    pub fn settings(&self) -> S3Settings {
        settings(
            &self.endpoint,
            &self.bucket,
            &self.access_key,
            &self.secret_key,
        )
    }

    /// The `AWS_*` environment for a child process (e.g. the walsync binary)
    /// that should use this server.
    pub fn env(&self) -> Vec<(String, String)> {
        env(&self.endpoint, &self.access_key, &self.secret_key)
    }

    /// The directory holding the bucket's objects.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.join(&self.bucket)
    }

    /// A fresh directory for the test's own files, removed with the server.
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs s3s-fs on `port` serving `root`, logging to a new file in `dir`,
/// and waits until it accepts connections; on failure the reason, with the
/// end of its log.
fn spawn(
    binary: &Path,
    dir: &Path,
    root: &Path,
    port: u16,
    access_key: &str,
    secret_key: &str,
) -> Result<Child, String> {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let n = STARTS.fetch_add(1, Ordering::Relaxed);
    let log_path = dir.join(format!("s3s-fs-{port}-{n}.log"));
    let log = File::create(&log_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
    let log_err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot clone the log file handle: {e}"));
    let mut child = Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    match wait_until_listening(&mut child, port) {
        Ok(()) => Ok(child),
        Err(reason) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "port {port}: {reason}; log: {}",
                log_tail(&log_path)
            ))
        }
    }
}

fn s3s_fs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WALSYNC_S3S_FS").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .unwrap_or_else(|| panic!("HOME is not set; set WALSYNC_S3S_FS instead"));
    Path::new(&home).join(format!(
        ".cache/walsync-tools/s3s-fs-{}/bin/s3s-fs",
        s3s_fs_version()
    ))
}

/// Settings for `S3Storage` pointing at `bucket` of the server at
/// `endpoint` (any of the test servers: path style, `REGION`).
pub fn settings(endpoint: &str, bucket: &str, access_key: &str, secret_key: &str) -> S3Settings {
    S3Settings {
        bucket: bucket.to_owned(),
        endpoint: Some(endpoint.to_owned()),
        region: REGION.to_owned(),
        path_style: true,
        access_key_id: access_key.to_owned(),
        secret_access_key: secret_key.to_owned(),
        session_token: None,
    }
}

/// The `AWS_*` environment for a child process that should use the server
/// at `endpoint` with these credentials.
pub fn env(endpoint: &str, access_key: &str, secret_key: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", access_key),
        ("AWS_SECRET_ACCESS_KEY", secret_key),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_ENDPOINT_URL", endpoint),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("bound socket has no address: {e}"))
        .port()
}

/// Waits until `child` accepts connections on `port`, or says why not.
pub fn wait_until_listening(child: &mut Child, port: u16) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while start.elapsed() < STARTUP_TIMEOUT {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!(
        "not accepting connections after {STARTUP_TIMEOUT:?}"
    ))
}

/// The last 20 lines of the log at `path`.
pub fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail
    }
}

/// `len` random lower-case hex digits (not cryptographic; test credentials).
pub fn random_hex(len: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let word = RandomState::new().hash_one((n, SystemTime::now(), std::process::id()));
        out.push_str(&format!("{word:016x}"));
    }
    out.truncate(len);
    out
}
