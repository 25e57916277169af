//! `barge`: the command-line client and interactive shell.
//!
//! ^C cancels the running operation: the SIGINT handler calls the handle's
//! canceller, which is async-signal-safe (one atomic store and one eventfd
//! write). The library installs no signal handlers; barge, as the
//! application, does. The helper runs in its own process group, so the
//! terminal's SIGINT reaches only barge. See `shell.rs` for how the
//! handler and the line editor share the terminal.

mod args;
mod escape;
mod launcher;
mod ops;
mod shell;
mod ui;

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use barge::{Canceller, Error, Handle};
use clap::Parser;

use args::{Cli, Command};
use ops::{Failure, Mode};
use ui::Ui;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CANCELLED: u8 = 130;

static CANCELLER: OnceLock<Canceller> = OnceLock::new();

/// SIGINTs received. An operation consumes the cancel that arrived during
/// it, also when it completed anyway; a command made of several operations
/// compares this count before and after each to stop between them.
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// How many SIGINTs have arrived.
pub fn interrupts() -> u32 {
    INTERRUPTS.load(Ordering::SeqCst)
}

extern "C" fn on_sigint(_: libc::c_int) {
    // A lock-free atomic add, OnceLock::get (one atomic load) and cancel()
    // are all async-signal-safe.
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    if let Some(c) = CANCELLER.get() {
        c.cancel();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(run(cli))
}

fn run(cli: Cli) -> u8 {
    let ui = Ui::new(cli.quiet, cli.verbose);
    let mut h = match new_handle(&cli, &ui) {
        Ok(h) => h,
        Err(f) => return exit_status(Err(f), &ui),
    };
    let _ = CANCELLER.set(h.canceller());
    install_sigint_handler();

    let mut status = match &cli.command {
        Command::Op(op) => exit_status(ops::run(&mut h, op, &ui, Mode::OneShot), &ui),
        Command::Shell => shell::run(&mut h, &ui),
    };
    // A ^C during the graceful shutdown skips to SIGTERM; the library still
    // reaps the helper.
    if let Err(e) = h.shutdown() {
        ui.note(&ui::error_line(&e));
        if status == 0 {
            status = EXIT_ERROR;
        }
    }
    status
}

fn new_handle(cli: &Cli, ui: &Ui) -> Result<Handle, Failure> {
    let mut h = Handle::new()?;
    h.set_root(cli.root.as_deref())?;
    let argv: Option<Vec<OsString>> = if let Some(cmd) = &cli.helper {
        let words = launcher::split_command("--helper", cmd).map_err(Failure::Usage)?;
        Some(words.into_iter().map(OsString::from).collect())
    } else if let Some(spec) = &cli.ssh {
        let target = launcher::parse_ssh_target(spec).map_err(Failure::Usage)?;
        Some(
            launcher::ssh_argv(
                &target,
                cli.ssh_command.as_deref().unwrap_or("ssh"),
                cli.remote_helper.as_deref().unwrap_or("barge-helper"),
            )
            .map_err(Failure::Usage)?,
        )
    } else {
        None
    };
    if let Some(argv) = argv {
        if ui.verbose() {
            let shown: Vec<_> = argv.iter().map(|a| a.to_string_lossy()).collect();
            ui.note(&format!(
                "helper command: {}",
                shell_words::join(shown.iter().map(|s| s.as_ref()))
            ));
        }
        h.set_helper(argv)?;
    }
    ui.attach(&mut h);
    Ok(h)
}

/// Print what went wrong, as one line, and give the exit status.
pub fn exit_status(result: Result<(), Failure>, ui: &Ui) -> u8 {
    match result {
        Ok(()) => 0,
        Err(Failure::Usage(m)) => {
            ui.note(&m);
            EXIT_USAGE
        }
        Err(Failure::Op(e)) => {
            ui.note(&ui::error_line(&e));
            if matches!(e, Error::Cancelled) {
                EXIT_CANCELLED
            } else {
                EXIT_ERROR
            }
        }
    }
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
