//! SIGINT, SIGTERM and SIGHUP as messages on a channel.
//!
//! `block` must run on the main thread before any other thread starts, so
//! every thread inherits the blocked mask; then one thread waits for them
//! with `sigwait` and forwards each as a message. No handler runs in signal
//! context, so nothing here needs to be async-signal-safe. (ARCHITECTURE.md
//! invariant 8: a stop request becomes an ordinary event of the dispatcher.)

use std::io;
use std::sync::mpsc::Sender;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    Hangup,
}

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, libc::SIGINT);
        libc::sigaddset(&mut s, libc::SIGTERM);
        libc::sigaddset(&mut s, libc::SIGHUP);
        s
    }
}

/// Blocks the three signals for this thread and every thread started after.
pub fn block() -> io::Result<()> {
    let s = set();
    // SAFETY: `s` is a valid, initialised sigset_t; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Starts the thread that turns signals into messages built by `wrap`.
pub fn forward<M: Send + 'static>(tx: Sender<M>, wrap: fn(Signal) -> M) -> io::Result<()> {
    std::thread::Builder::new()
        .name("walsync-signals".into())
        .spawn(move || loop {
            let s = set();
            let mut sig: libc::c_int = 0;
            // SAFETY: `s` is initialised; `sig` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&s, &mut sig) };
            if rc != 0 {
                continue;
            }
            let signal = match sig {
                libc::SIGINT => Signal::Interrupt,
                libc::SIGTERM => Signal::Terminate,
                _ => Signal::Hangup,
            };
            if tx.send(wrap(signal)).is_err() {
                return;
            }
        })?;
    Ok(())
}

/// Raises the soft open-file limit to the hard limit (each database holds a
/// few descriptors). Returns (soft, hard) after the change.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return Err(io::Error::last_os_error());
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                l = want;
            }
        }
        Ok((l.rlim_cur as u64, l.rlim_max as u64))
    }
}

/// How many descriptors this process has open, where the system can tell
/// (`/proc/self/fd` on Linux). An error when it cannot: EMFILE or ENFILE
/// when not even the one descriptor that counting takes is left.
pub fn open_fd_count() -> std::io::Result<u64> {
    let entries = std::fs::read_dir("/proc/self/fd")?;
    // Minus the one read_dir itself holds.
    Ok((entries.count() as u64).saturating_sub(1))
}

/// Whether an error says the process (EMFILE) or the system (ENFILE) has
/// no descriptor left.
pub fn is_out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
