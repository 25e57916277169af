//! `barge shell`: the commands at a prompt, with line editing and history.
//!
//! Signals and the terminal:
//! - While rustyline reads a line, the terminal is in raw mode with ISIG
//!   off, so ^C is a key: rustyline returns `Interrupted` and the shell
//!   shows a fresh prompt. No SIGINT is raised.
//! - While a command runs, the terminal is back in its normal mode: ^C
//!   makes the kernel send SIGINT to the foreground process group, which
//!   holds barge but not the helper (it has a group of its own). barge's
//!   handler cancels the running operation; the helper answers in band and
//!   serves the next command.
//! - rustyline is built with its `signal-hook` feature, so it only ever
//!   registers a SIGWINCH handler and leaves barge's SIGINT handler in place.
//! - A SIGINT that arrives between commands (e.g. ^C typed while output was
//!   printing) leaves a pending cancel, which the library keeps for the next
//!   operation. Each command clears it before it starts, so it cancels
//!   nothing.

use barge::Handle;
use clap::Parser;
use rustyline::error::ReadlineError;
use rustyline::history::MemHistory;
use rustyline::{Config, Editor};

use crate::args::{ShellCommand, ShellLine};
use crate::ops::{self, Mode};
use crate::ui::Ui;
use crate::{exit_status, EXIT_ERROR, EXIT_USAGE};

const PROMPT: &str = "barge> ";

/// Run the shell until `exit`, ^D or end of input. Returns the exit status
/// of the last command (0 when there was none).
pub fn run(h: &mut Handle, ui: &Ui) -> u8 {
    // Start the helper now, so that one that cannot start (an ssh login
    // refused, a wrong --helper) is reported before the first prompt.
    if let Err(e) = h.launch() {
        return exit_status(Err(e.into()), ui);
    }
    let config = Config::builder().auto_add_history(true).build();
    let mut editor: Editor<(), MemHistory> = match Editor::with_history(config, MemHistory::new()) {
        Ok(e) => e,
        Err(e) => {
            ui.note(&format!("cannot start the line editor: {e}"));
            return EXIT_ERROR;
        }
    };
    let mut status = 0;
    loop {
        let line = match editor.readline(PROMPT) {
            Ok(line) => line,
            // ^C at the prompt: drop the line, prompt again.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                ui.note(&format!("reading the command line: {e}"));
                status = EXIT_ERROR;
                break;
            }
        };
        let words = match shell_words::split(&line) {
            Ok(w) => w,
            Err(e) => {
                ui.note(&format!("{e}"));
                status = EXIT_USAGE;
                continue;
            }
        };
        if words.is_empty() {
            continue;
        }
        let parsed = match ShellLine::try_parse_from(&words) {
            Ok(p) => p,
            Err(e) => {
                // Help and usage errors alike; help is not an error.
                let _ = e.print();
                status = if e.use_stderr() { EXIT_USAGE } else { 0 };
                continue;
            }
        };
        status = match parsed.command {
            ShellCommand::Exit => break,
            ShellCommand::Status => {
                match h.helper_pid() {
                    Some(pid) => println!("helper pid {pid}"),
                    None => println!("no helper running"),
                }
                0
            }
            ShellCommand::Op(op) => {
                h.clear_cancel();
                exit_status(ops::run(h, &op, ui, Mode::Shell), ui)
            }
        };
    }
    status
}
