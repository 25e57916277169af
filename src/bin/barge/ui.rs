//! What barge shows on the terminal besides command output: progress bars
//! driven by the handle's PROGRESS events, `-v` reports, and error lines.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::escape::escape;
use barge::{strerror, Error, Event, EventMask, Handle};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress bars (only when both stdout and stderr are terminals and not
/// `-q`) and `-v` reports, shared with the handle's event callbacks.
#[derive(Clone)]
pub struct Ui {
    bars: bool,
    verbose: bool,
    active: Arc<Mutex<Option<Transfer>>>,
}

/// The transfer that is running, and its bar once the first PROGRESS event
/// has told whether its size is known.
struct Transfer {
    label: String,
    bar: Option<ProgressBar>,
}

impl Ui {
    pub fn new(quiet: bool, verbose: bool) -> Ui {
        Ui {
            bars: !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
            verbose,
            active: Arc::new(Mutex::new(None)),
        }
    }

    /// Register the callbacks that draw the bars and print `-v` reports.
    pub fn attach(&self, h: &mut Handle) {
        if self.bars {
            let ui = self.clone();
            h.add_event_callback(EventMask::PROGRESS, move |ev| {
                match *ev {
                    Event::Progress { done, total } => ui.progress(done, total),
                    // A tree's bar counts the bytes of the whole tree.
                    Event::TreeProgress {
                        bytes_done,
                        bytes_total,
                        ..
                    } => ui.progress(bytes_done, Some(bytes_total)),
                    _ => {}
                }
            });
        }
        if self.verbose {
            let ui = self.clone();
            h.add_event_callback(
                EventMask::LAUNCHED | EventMask::LOG | EventMask::SHUTDOWN,
                move |ev| match ev {
                    Event::Launched { pid } => ui.note(&format!("helper pid {pid} started")),
                    Event::Log { line } => ui.note_bytes(&[&b"helper: "[..], line].concat()),
                    Event::Shutdown {
                        pid,
                        status,
                        graceful,
                    } => ui.note(&format!(
                        "helper pid {pid} {}{}",
                        status.map_or("could not be reaped".into(), |s| s.to_string()),
                        if *graceful {
                            " (graceful shutdown)"
                        } else {
                            ""
                        }
                    )),
                    _ => {}
                },
            );
        }
    }

    pub fn verbose(&self) -> bool {
        self.verbose
    }

    fn lock(&self) -> MutexGuard<'_, Option<Transfer>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A transfer starts; its bar appears with its first PROGRESS event.
    /// `show` is false when the transfer's data goes to the terminal.
    pub fn begin(&self, label: String, show: bool) {
        if self.bars && show {
            *self.lock() = Some(Transfer { label, bar: None });
        }
    }

    /// The transfer ended: leave a completed bar on screen, freeze one that
    /// was cancelled or failed (the error line follows it).
    pub fn end(&self, ok: bool) {
        if let Some(Transfer { bar: Some(bar), .. }) = self.lock().take() {
            if ok {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
    }

    fn progress(&self, done: u64, total: Option<u64>) {
        let mut guard = self.lock();
        let Some(t) = guard.as_mut() else { return };
        let bar = t.bar.get_or_insert_with(|| new_bar(&t.label, total));
        if total.is_some() && bar.length() != total {
            if let Some(len) = total {
                bar.set_length(len);
            }
        }
        bar.set_position(done);
    }

    /// A line for stderr that must not tear a bar being drawn. Its control
    /// characters are escaped: error messages and LOG lines carry the
    /// helper's words (see `escape`).
    pub fn note(&self, line: &str) {
        self.note_bytes(line.as_bytes());
    }

    /// [`Ui::note`] for bytes that may not be UTF-8 (a LOG line).
    pub fn note_bytes(&self, line: &[u8]) {
        let line = escape(line);
        let guard = self.lock();
        match guard.as_ref().and_then(|t| t.bar.as_ref()) {
            Some(bar) => bar.suspend(|| eprintln!("barge: {line}")),
            None => eprintln!("barge: {line}"),
        }
    }
}

fn new_bar(label: &str, total: Option<u64>) -> ProgressBar {
    let (bar, template) = match total {
        Some(len) => (
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()),
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            "{prefix} {spinner} {bytes} {binary_bytes_per_sec}",
        ),
    };
    let style = ProgressStyle::with_template(template)
        .expect("the templates above are valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(escape(label.as_bytes()));
    bar
}

/// One line for an error: the error's own text, plus the meaning of its
/// errno when the text does not already carry it.
pub fn error_line(e: &Error) -> String {
    if matches!(e, Error::Cancelled) {
        return "cancelled".into();
    }
    let text = e
        .to_string()
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let meaning = strerror(e.errno());
    if text.contains(&meaning) {
        text
    } else {
        format!("{text} ({meaning})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_carry_the_errno_meaning_once() {
        let e = Error::Remote {
            errno: libc::ENOENT,
            message: "open /x: No such file or directory".into(),
        };
        assert_eq!(error_line(&e), "open /x: No such file or directory");
        let e = Error::HelperDied {
            message: "the helper (pid 7) was killed by signal 9\r\nand more\r\n".into(),
        };
        assert_eq!(
            error_line(&e),
            "the helper (pid 7) was killed by signal 9 and more (Connection reset by peer)"
        );
        assert_eq!(error_line(&Error::Cancelled), "cancelled");
    }
}
