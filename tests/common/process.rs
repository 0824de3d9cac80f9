//! The walsync binary as a child process of a test.

use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

/// A walsync child process, killed if the test ends without stopping it
/// (a failing assertion must not leave daemons behind).
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends SIGTERM and waits (up to 60 s) for walsync to exit.
pub fn sigterm(child: &mut Running) -> std::process::ExitStatus {
    // SAFETY: kill(2) with the pid of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "walsync did not stop after SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
