//! The three S3 implementations the suite runs against, each started by a
//! test on a free port with its own data and credentials: s3s-fs
//! (`s3server::S3Server`), moto's server and s3rver. `contrib/test.sh`
//! installs them under `~/.cache/walsync-tools` at the versions
//! `contrib/tools.versions` names; `WALSYNC_MOTO_SERVER` and
//! `WALSYNC_S3RVER` point at other copies. A server that is missing or does
//! not come up fails the test with the reason: nothing is skipped.
//!
//! What each really checks (found by the tests in `tests/s3_servers.rs`,
//! not assumed):
//! - s3s-fs 0.14.1: SigV4 signatures (per-test random keys); the CRC32
//!   header (400 `BadDigest`, though it has stored the bytes by then);
//!   `If-None-Match: *` and `If-Match` on PutObject (412).
//! - moto 5.2.5: no signatures (any key and secret are accepted unless
//!   moto's IAM emulation is set up); the CRC32 header is not checked;
//!   `If-None-Match: *` and `If-Match` on PutObject are (412).
//! - s3rver 3.7.1: only that the access key is its one account's
//!   (`S3RVER`; SigV4 is not computed, so a wrong secret is accepted); the
//!   CRC32 header is not checked; `If-None-Match` and `If-Match` on
//!   PutObject are ignored (the object is replaced); a range ending at byte 0 (`bytes=0-0`)
//!   answers the whole object; listings past the first page need Node's
//!   OpenSSL legacy provider (set here).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rusty_s3::S3Action;
use walsync::storage::s3::S3Settings;

use super::s3server::{free_port, log_tail, wait_until_listening, S3Server, REGION};

/// Which S3 implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    S3sFs,
    Moto,
    S3rver,
}

impl ServerKind {
    pub const ALL: [ServerKind; 3] = [ServerKind::S3sFs, ServerKind::Moto, ServerKind::S3rver];

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::S3sFs => "s3s-fs",
            ServerKind::Moto => "moto",
            ServerKind::S3rver => "s3rver",
        }
    }

    /// What the server checks of a request's signature.
    pub fn signature_check(self) -> SignatureCheck {
        match self {
            ServerKind::S3sFs => SignatureCheck::Full,
            // lib/middleware/authentication.js: "Signature version 4
            // calculation is unimplemeneted"; the access key must be its
            // account's.
            ServerKind::S3rver => SignatureCheck::AccessKeyOnly,
            // moto checks nothing unless its IAM emulation is configured
            // (INITIAL_NO_AUTH_ACTION_COUNT and IAM users), which walsync's
            // users do not run.
            ServerKind::Moto => SignatureCheck::Nothing,
        }
    }

    /// Whether the server honours `If-None-Match: *` and `If-Match` on
    /// PutObject (answers 412 when they do not hold), which the lease needs.
    pub fn honours_conditional_writes(self) -> bool {
        match self {
            ServerKind::S3sFs | ServerKind::Moto => true,
            ServerKind::S3rver => false,
        }
    }

    /// Whether the server refuses a PUT whose `x-amz-checksum-crc32` does
    /// not match its body.
    pub fn checks_crc32(self) -> bool {
        match self {
            ServerKind::S3sFs => true,
            ServerKind::Moto | ServerKind::S3rver => false,
        }
    }
}

/// What a server checks of a request's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The SigV4 signature: a wrong secret or access key is refused.
    Full,
    /// Only that the access key exists: a wrong secret is accepted.
    AccessKeyOnly,
    /// Nothing: any key and secret are accepted.
    Nothing,
}

/// A running S3 server of any kind with one empty bucket; stopped and
/// cleaned up on drop.
pub struct AnyS3Server {
    pub kind: ServerKind,
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// Holds the server's data and logs, and the tests' scratch directories.
    dir: PathBuf,
    process: Process,
}

enum Process {
    S3sFs(S3Server),
    Child(Child),
}

impl AnyS3Server {
    /// Starts a server of `kind`. Panics with the reason if it cannot.
    pub fn start(kind: ServerKind) -> AnyS3Server {
        if kind == ServerKind::S3sFs {
            let server = S3Server::start();
            return AnyS3Server {
                kind,
                endpoint: server.endpoint.clone(),
                bucket: server.bucket.clone(),
                access_key: server.access_key.clone(),
                secret_key: server.secret_key.clone(),
                dir: server.scratch_dir("tests"),
                process: Process::S3sFs(server),
            };
        }
        let program = program(kind);
        if !program.is_file() {
            panic!(
                "{} not found at {} (run contrib/test.sh to install it, or set {})",
                kind.name(),
                program.display(),
                program_variable(kind)
            );
        }
        let dir = super::unique_temp_dir(&format!("walsync-{}", kind.name()));
        let data = dir.join("data");
        fs::create_dir_all(&data)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", data.display()));
        let bucket = "walsync-test".to_owned();
        let (access_key, secret_key) = match kind {
            // The one account s3rver knows.
            ServerKind::S3rver => ("S3RVER".to_owned(), "S3RVER".to_owned()),
            _ => (
                format!("AK{}", super::s3server::random_hex(18).to_uppercase()),
                super::s3server::random_hex(40),
            ),
        };
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let port = free_port();
            let log_path = dir.join(format!("{}-{port}-{attempt}.log", kind.name()));
            let log = File::create(&log_path).unwrap_or_else(|e| panic!("cannot create log: {e}"));
            let log_err = log
                .try_clone()
                .unwrap_or_else(|e| panic!("cannot clone the log file handle: {e}"));
            let mut command = Command::new(&program);
            match kind {
                // moto keeps its state in memory: one process per test is its
                // own data.
                ServerKind::Moto => command.args(["-H", "127.0.0.1", "-p", &port.to_string()]),
                ServerKind::S3rver => command
                    .args(["--address", "127.0.0.1", "--port", &port.to_string()])
                    .arg("--directory")
                    .arg(&data)
                    .args(["--configure-bucket", &bucket, "--no-vhost-buckets"]),
                ServerKind::S3sFs => unreachable!("started above"),
            };
            if kind == ServerKind::S3rver {
                // s3rver's continuation tokens are DES-encrypted, which the
                // OpenSSL 3 of Node 17 and later refuses without the legacy
                // provider: every listing's second page would answer 500.
                command.env("NODE_OPTIONS", "--openssl-legacy-provider");
            }
            let mut child = command
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
            match wait_until_listening(&mut child, port) {
                Ok(()) => {
                    let server = AnyS3Server {
                        kind,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        bucket,
                        access_key,
                        secret_key,
                        dir,
                        process: Process::Child(child),
                    };
                    if kind == ServerKind::Moto {
                        server.create_bucket();
                    }
                    return server;
                }
                Err(reason) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!(
                        "port {port}: {reason}; log: {}",
                        log_tail(&log_path)
                    ));
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!(
            "{} ({}) did not start:\n{}",
            kind.name(),
            program.display(),
            failures.join("\n")
        );
    }

    /// Creates the bucket with a signed CreateBucket.
    fn create_bucket(&self) {
        let bucket = rusty_s3::Bucket::new(
            self.endpoint.parse().expect("the endpoint is a URL"),
            rusty_s3::UrlStyle::Path,
            self.bucket.clone(),
            REGION,
        )
        .unwrap_or_else(|e| panic!("bucket of the test server: {e}"));
        let credentials =
            rusty_s3::Credentials::new(self.access_key.clone(), self.secret_key.clone());
        let url = bucket
            .create_bucket(&credentials)
            .sign(Duration::from_secs(60));
        ureq::put(url.as_str())
            .send_empty()
            .unwrap_or_else(|e| panic!("{}: CreateBucket {}: {e}", self.kind.name(), self.bucket));
    }

    /// Settings for `S3Storage` pointing at this server's bucket.
    pub fn settings(&self) -> S3Settings {
        super::s3server::settings(
            &self.endpoint,
            &self.bucket,
            &self.access_key,
            &self.secret_key,
        )
    }

    /// The `AWS_*` environment for a child process (e.g. the walsync binary)
    /// that should use this server.
    pub fn env(&self) -> Vec<(String, String)> {
        super::s3server::env(&self.endpoint, &self.access_key, &self.secret_key)
    }

    /// A fresh directory for the test's own files, removed with the server.
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }
}

impl Drop for AnyS3Server {
    fn drop(&mut self) {
        match &mut self.process {
            // S3Server cleans up its own directory, which holds `dir`.
            Process::S3sFs(_) => {}
            Process::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
    }
}

fn program_variable(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::S3sFs => "WALSYNC_S3S_FS",
        ServerKind::Moto => "WALSYNC_MOTO_SERVER",
        ServerKind::S3rver => "WALSYNC_S3RVER",
    }
}

/// The program that runs a server of `kind` (not s3s-fs).
fn program(kind: ServerKind) -> PathBuf {
    if let Some(path) = std::env::var_os(program_variable(kind)).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .unwrap_or_else(|| panic!("HOME is not set; set {} instead", program_variable(kind)));
    let tools = Path::new(&home).join(".cache/walsync-tools");
    match kind {
        ServerKind::Moto => tools.join(format!(
            "moto-{}/bin/moto_server",
            super::tool_version("MOTO_VERSION")
        )),
        ServerKind::S3rver => tools.join(format!(
            "s3rver-{}/node_modules/.bin/s3rver",
            super::tool_version("S3RVER_VERSION")
        )),
        ServerKind::S3sFs => unreachable!("s3server.rs finds s3s-fs"),
    }
}
