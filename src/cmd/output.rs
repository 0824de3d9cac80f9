//! Standard output and standard error of the commands, written so that a
//! reader that goes away never aborts the process.
//!
//! Rust's runtime sets SIGPIPE to "ignore" before `main`, so a write to a
//! pipe whose reader has exited (`walsync list | head -1`) fails with EPIPE
//! instead of killing the process, and `println!`/`eprintln!` panic on any
//! failed write: an abort in the release build (`panic = "abort"`). We keep
//! SIGPIPE ignored (with the default action, a metrics client or an S3
//! connection that closes early could kill `watch`) and write here instead,
//! through `outln!`, `errln!` and `err!` (`cmd/mod.rs`):
//! - standard output closed (`BrokenPipe`): output stops quietly, and the
//!   exit status is what it would have been (0 when the command succeeded),
//!   as README's "Exit codes" says. `list` stops listing; commands that
//!   restore, snapshot or prune finish their work, which does not depend
//!   on anyone reading.
//! - any other failure of standard output (a full disk under `> file`):
//!   output stops too, and `main` reports the error and exits 1, since the
//!   output the user asked for was lost.
//! - failures of standard error are ignored: there is nowhere left to
//!   report them.
//!
//! It must never panic, whatever the descriptors are.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What became of writing lines to one stream.
pub struct Lines {
    /// A write failed: nothing more is written.
    stopped: AtomicBool,
    /// The first failure that was not a closed pipe.
    error: Mutex<Option<String>>,
}

impl Lines {
    pub const fn new() -> Lines {
        Lines {
            stopped: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    /// Writes `args` and a newline to `to` and flushes, unless a write
    /// failed before; a failure stops all later writes.
    pub fn line(&self, to: &mut dyn Write, args: fmt::Arguments<'_>) {
        if self.stopped() {
            return;
        }
        let written = to
            .write_fmt(args)
            .and_then(|()| to.write_all(b"\n"))
            .and_then(|()| to.flush());
        if let Err(e) = written {
            self.stopped.store(true, Ordering::Relaxed);
            if e.kind() != io::ErrorKind::BrokenPipe {
                let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
                error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    /// Whether writes stopped (the reader went away, or a write failed).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The first failure that was not a closed pipe, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Default for Lines {
    fn default() -> Self {
        Lines::new()
    }
}

static STDOUT: Lines = Lines::new();

/// `println!` that never panics (see the module comment).
pub fn stdout_line(args: fmt::Arguments<'_>) {
    STDOUT.line(&mut io::stdout().lock(), args);
}

/// Whether standard output is gone, so that a command that only reports
/// can stop.
pub fn stdout_stopped() -> bool {
    STDOUT.stopped()
}

/// Why writing to standard output failed, unless it was only closed.
pub fn stdout_error() -> Option<String> {
    STDOUT.error()
}

/// `eprintln!` that never panics; a failure is ignored.
pub fn stderr_line(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `eprint!` that never panics; a failure is ignored.
pub fn stderr(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` bytes, then fails every write with `kind`.
    struct Failing {
        room: usize,
        kind: io::ErrorKind,
        written: Vec<u8>,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from(self.kind));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_stops_output_quietly() {
        let lines = Lines::new();
        let mut out = Failing {
            room: 8,
            kind: io::ErrorKind::BrokenPipe,
            written: Vec::new(),
        };
        lines.line(&mut out, format_args!("first"));
        assert!(!lines.stopped());
        lines.line(&mut out, format_args!("second line"));
        assert!(lines.stopped());
        out.room = 100;
        lines.line(&mut out, format_args!("third"));
        assert_eq!(out.written, b"first\nse");
        assert_eq!(lines.error(), None);
    }

    #[test]
    fn other_failures_stop_output_and_are_kept() {
        let lines = Lines::new();
        let mut out = Failing {
            room: 0,
            kind: io::ErrorKind::StorageFull,
            written: Vec::new(),
        };
        lines.line(&mut out, format_args!("lost"));
        lines.line(&mut out, format_args!("lost too"));
        assert!(lines.stopped());
        let error = lines.error().expect("the failure is kept");
        assert!(
            error.contains("storage full") || error.contains("space"),
            "{error}"
        );
    }
}
