//! The helper's side of the protocol, run by `barge-helper`.
//!
//! [`serve`] answers one connection: the handshake, then requests one at a
//! time until SHUTDOWN, end of input or a protocol error. It installs no
//! signal handlers and never exits the process, so tests run it on a
//! thread over a socketpair. [`main_from_env`] is the binary's entry: it
//! reads the environment, starts the hang-up watchdog and serves fds 0
//! and 1.
//!
//! Where things live:
//! - `session`: the request loop and every request's final reply.
//! - `channel`: reading and writing whole frames on the two fds.
//! - `resolve`: paths to fds, confined beneath the root.
//! - `fs`: the `*at` calls the requests make.
//! - `fault`: test faults from `BARGE_HELPER_FAULT`.
//! - `fastpath`: PUT_FD and GET_FD, copies in the kernel (a child of
//!   `session`). Uncommitted files of cancelled uploads (PUT, PUT_FD and
//!   TREE_IN) are closed off the main thread by `crate::discard`.

/// A line on stderr. A failed write is ignored: `eprintln!` would panic,
/// and a helper whose stderr is gone still has work to finish. Nothing is
/// written while [`QUIET`] is set.
#[cfg(not(test))]
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if !$crate::server::QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = writeln!(std::io::stderr(), $($arg)*);
        }
    }};
}

/// Set by the fuzz targets, which run [`serve`] in their own process
/// millions of times: the helper's log lines about their malformed
/// requests would bury the fuzzer's own output (and `cargo test`'s, where
/// the corpora are replayed). The helper binary never sets it.
#[doc(hidden)]
pub static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In tests, through the test harness's output capture.
#[cfg(test)]
macro_rules! log_line {
    ($($arg:tt)*) => {
        eprintln!($($arg)*)
    };
}

mod channel;
mod fault;
mod fs;
mod resolve;
mod session;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

pub use fault::{Fault, FaultAction, TransferFault};

use crate::sys;

/// How long the watchdog lets the helper live after its input hangs up.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Exit code when the watchdog ends the process.
pub const WATCHDOG_EXIT_CODE: i32 = 3;

/// How a connection is served.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    pub fault: Fault,
    /// Log every request to stderr, not only failed ones.
    pub debug: bool,
}

impl ServerOptions {
    /// Options from `BARGE_HELPER_FAULT`, `BARGE_HELPER_FAULT_PATH` and
    /// `BARGE_HELPER_DEBUG`. The error says what is malformed.
    pub fn from_env() -> Result<ServerOptions, String> {
        let mut fault = match std::env::var_os("BARGE_HELPER_FAULT") {
            None => Fault::default(),
            Some(spec) => Fault::parse(
                spec.to_str()
                    .ok_or("BARGE_HELPER_FAULT is not valid UTF-8")?,
            )?,
        };
        fault.path_filter =
            std::env::var_os("BARGE_HELPER_FAULT_PATH").map(|p| OsStr::as_bytes(&p).to_vec());
        let debug =
            std::env::var_os("BARGE_HELPER_DEBUG").is_some_and(|v| v != "0" && !v.is_empty());
        Ok(ServerOptions { fault, debug })
    }
}

/// Why [`serve`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeEnd {
    /// SHUTDOWN was answered with OK.
    Shutdown,
    /// The input ended between requests.
    Eof,
    /// The handshake was answered with ERROR (no common version, bad root).
    Refused,
    /// The input ended, or a read or write failed, in the middle of a
    /// request: the client is gone.
    ChannelLost,
    /// The client broke the protocol. ERROR `EPROTO` was sent if the output
    /// still worked.
    ProtocolError,
}

impl ServeEnd {
    /// The helper's exit code for this ending: 0 for SHUTDOWN and end of
    /// input, 1 for a refused handshake or a lost channel, 2 for a protocol
    /// error.
    pub fn exit_code(self) -> i32 {
        match self {
            ServeEnd::Shutdown | ServeEnd::Eof => 0,
            ServeEnd::Refused | ServeEnd::ChannelLost => 1,
            ServeEnd::ProtocolError => 2,
        }
    }
}

/// Serve one connection: requests from `input`, replies to `output` (they
/// may be the same socket). Returns at SHUTDOWN, at end of input, or after
/// a protocol error. Blocks; never exits the process except through the
/// `die@N` test fault.
pub fn serve(input: BorrowedFd<'_>, output: BorrowedFd<'_>, opts: &ServerOptions) -> ServeEnd {
    session::Session::new(input, output, opts).run()
}

/// The `barge-helper` binary's body: read the environment, start the
/// watchdog, serve fds 0 and 1. Returns the exit code.
pub fn main_from_env() -> i32 {
    let opts = match ServerOptions::from_env() {
        Ok(o) => o,
        Err(e) => {
            log_line!("barge-helper: {e}");
            return 2;
        }
    };
    let grace = match std::env::var("BARGE_HELPER_GRACE_MS") {
        Err(_) => DEFAULT_GRACE,
        Ok(ms) => {
            match ms.parse() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => {
                    log_line!("barge-helper: BARGE_HELPER_GRACE_MS={ms:?} is not a number of milliseconds");
                    return 2;
                }
            }
        }
    };
    if opts.fault.ignore_sigterm {
        // SAFETY: setting a disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    if let Err(e) = start_watchdog(grace) {
        log_line!("barge-helper: cannot start the watchdog thread: {e}");
        return 1;
    }
    // SAFETY: fds 0 and 1 stay open for the life of the process.
    let (input, output) = unsafe { (BorrowedFd::borrow_raw(0), BorrowedFd::borrow_raw(1)) };
    serve(input, output, &opts).exit_code()
}

/// A thread that waits for the client to hang up fd 0, then gives the main
/// thread `grace` to finish on its own before ending the process. The main
/// thread may be stuck in a system call (a stalled disk, a full pipe) where
/// it would never see the end of input.
fn start_watchdog(grace: Duration) -> io::Result<()> {
    std::thread::Builder::new()
        .name("barge-watchdog".into())
        .spawn(move || {
            // POLLIN is not asked for: only a hang-up wakes this thread.
            let mut fds = [sys::pollfd(0, libc::POLLRDHUP)];
            loop {
                fds[0].revents = 0;
                match sys::poll(&mut fds, None) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(_) => return,
                }
                let revents = fds[0].revents;
                if revents & libc::POLLNVAL != 0 {
                    return;
                }
                if revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
                    break;
                }
            }
            std::thread::sleep(grace);
            // SAFETY: _exit ends the process at once; it is safe from any
            // thread and runs no Rust code.
            unsafe { libc::_exit(WATCHDOG_EXIT_CODE) };
        })?;
    Ok(())
}

/// Why a request failed: its errno and the text that follows `VERB PATH: `
/// in the ERROR message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub errno: i32,
    pub reason: Cow<'static, str>,
}

impl Failure {
    fn new(errno: i32, reason: impl Into<Cow<'static, str>>) -> Failure {
        Failure {
            errno,
            reason: reason.into(),
        }
    }

    /// The C library's text for `errno`.
    fn from_errno(errno: i32) -> Failure {
        Failure::new(errno, crate::strerror(errno))
    }

    fn escapes() -> Failure {
        Failure::new(libc::EXDEV, "path escapes the root")
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::from_errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}
