//! `barge`: command-line client. This is the minimal form: `put` and `get`.
//!
//! ^C cancels the running transfer: the SIGINT handler calls the handle's
//! canceller, which is async-signal-safe. The helper runs in its own
//! process group, so the terminal's SIGINT reaches only this process.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use barge::{Canceller, Error, Handle};

static CANCELLER: OnceLock<Canceller> = OnceLock::new();

extern "C" fn on_sigint(_: libc::c_int) {
    // OnceLock::get is one atomic load; cancel() is async-signal-safe.
    if let Some(c) = CANCELLER.get() {
        c.cancel();
    }
}

const USAGE: &str = "\
usage: barge [--root DIR] [--helper CMD] COMMAND ARGS
commands:
  put LOCAL REMOTE   upload LOCAL (a file, FIFO or device; - for stdin)
  get REMOTE LOCAL   download REMOTE (- for stdout)
exit status: 0 success, 1 error, 2 usage error, 130 cancelled by ^C";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("barge: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Op(Error::Cancelled)) => {
            eprintln!("barge: cancelled");
            ExitCode::from(130)
        }
        Err(Failure::Op(e)) => {
            eprintln!("barge: {e}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Op(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Op(e)
    }
}

fn run(args: Vec<OsString>) -> Result<(), Failure> {
    let mut root: Option<PathBuf> = None;
    let mut helper: Option<String> = None;
    let mut it = args.into_iter();
    let command = loop {
        let Some(a) = it.next() else {
            return Err(Failure::Usage("no command given".into()));
        };
        match a.to_str() {
            Some("--root") => {
                root = Some(
                    it.next()
                        .ok_or(Failure::Usage("--root needs a directory".into()))?
                        .into(),
                )
            }
            Some("--helper") => {
                let cmd = it
                    .next()
                    .ok_or(Failure::Usage("--helper needs a command".into()))?;
                helper = Some(cmd.to_string_lossy().into_owned());
            }
            Some("-h") | Some("--help") => {
                println!("{USAGE}");
                return Ok(());
            }
            Some(s) if s.starts_with('-') => {
                return Err(Failure::Usage(format!("unknown option {s}")))
            }
            _ => break a,
        }
    };
    let rest: Vec<OsString> = it.collect();
    let [a, b] = rest.as_slice() else {
        return Err(Failure::Usage(format!(
            "{} takes two arguments",
            command.to_string_lossy()
        )));
    };

    let mut h = Handle::new()?;
    h.set_root(root.as_deref())?;
    if let Some(cmd) = helper {
        h.set_helper(cmd.split_whitespace())?;
    }
    let _ = CANCELLER.set(h.canceller());
    install_sigint_handler();

    match command.to_str() {
        Some("put") if a == "-" => h.upload_fd(std::io::stdin().as_fd(), b)?,
        Some("put") => h.upload(a, b)?,
        Some("get") if b == "-" => h.download_fd(a, std::io::stdout().as_fd())?,
        Some("get") => h.download(a, b)?,
        _ => {
            return Err(Failure::Usage(format!(
                "unknown command {}",
                command.to_string_lossy()
            )))
        }
    }
    h.shutdown()?;
    Ok(())
}

fn install_sigint_handler() {
    // SAFETY: sa is fully initialised; on_sigint only does async-signal-safe
    // work. No SA_RESTART: nothing here depends on restarting, and the
    // library wakes through its cancel fd either way.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}
