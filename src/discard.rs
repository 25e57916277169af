//! Files nobody will read again, closed on a background thread.
//!
//! Closing the last fd of an unlinked file frees its page cache, about
//! 0.04 ms per MiB written on the machines barge is measured on: 40 ms for
//! a 1 GiB download cancelled near its end. That work is owed to nobody:
//! the file never had a name (an `O_TMPFILE`), or its hidden name is
//! already unlinked. Handing it to this thread keeps a cancel's latency,
//! and the helper's answer to the next request, independent of how much
//! was written.
//!
//! - One thread per process, started the first time a file of at least
//!   [`BACKGROUND_MIN`] bytes is handed over; smaller files are closed at
//!   once, where that costs less than the hand-over.
//! - The thread blocks every signal, so a signal sent to the process (^C
//!   from a terminal) is still delivered to one of the caller's threads.
//! - In a child forked after the thread started, the thread does not
//!   exist: files are closed at once there.
//! - A client handle passes a [`WaitGroup`] with each file and waits on it
//!   when it closes, so a closed handle leaves no fd behind.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;

use crate::sys;

pub(crate) use crossbeam_utils::sync::WaitGroup;

/// Files smaller than this are closed in the caller's thread.
pub(crate) const BACKGROUND_MIN: u64 = 1 << 20;

/// Something to let go of.
pub(crate) enum Discard {
    /// An unnamed or already unlinked file: close it.
    Close(OwnedFd),
    /// A file shared with another process that will close its own fd (the
    /// client's download file on the fast path): empty it, so its pages
    /// are freed here whoever closes last, then close it.
    Empty(OwnedFd),
}

impl Discard {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Discard::Close(fd) | Discard::Empty(fd) => fd.as_fd(),
        }
    }

    fn finish(self) {
        match self {
            Discard::Close(fd) => drop(fd),
            Discard::Empty(fd) => {
                // SAFETY: ftruncate on an fd we own; no pointers.
                unsafe { libc::ftruncate(fd.as_raw_fd(), 0) };
                drop(fd);
            }
        }
    }
}

struct Job {
    discard: Discard,
    /// Dropped once the file is closed.
    _done: Option<WaitGroup>,
}

struct Worker {
    tx: Sender<Job>,
    /// The process the thread runs in.
    pid: u32,
}

static WORKER: OnceLock<Option<Worker>> = OnceLock::new();

/// Let go of `d`: on the background thread when it holds at least
/// [`BACKGROUND_MIN`] bytes, else here. `done`, when given, is dropped once
/// the file is closed.
pub(crate) fn later(d: Discard, done: Option<&WaitGroup>) {
    let big = crate::sys::fstat(d.fd()).is_ok_and(|st| st.st_size as u64 >= BACKGROUND_MIN);
    if !big {
        return d.finish();
    }
    let worker = WORKER.get_or_init(start);
    let job = Job {
        discard: d,
        _done: done.cloned(),
    };
    match worker {
        Some(w) if w.pid == std::process::id() => {
            if let Err(mpsc::SendError(job)) = w.tx.send(job) {
                job.discard.finish();
            }
        }
        _ => job.discard.finish(),
    }
}

/// Start the thread with every signal blocked. `None` when it cannot be
/// started; files are then closed where they are handed over.
fn start() -> Option<Worker> {
    let (tx, rx) = mpsc::channel::<Job>();
    let spawned = sys::spawn_with_signals_blocked("barge-discard", move || {
        for job in rx {
            job.discard.finish();
        }
    });
    spawned.ok().map(|_| Worker {
        tx,
        pid: std::process::id(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    fn tmpfile_of(len: u64) -> OwnedFd {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())
            .unwrap();
        f.set_len(len).unwrap();
        f.into()
    }

    #[test]
    fn a_small_file_is_closed_before_later_returns() {
        // An empty pipe is below the threshold: its write end closes here,
        // so the read end sees end of file at once.
        let (r, w) = nix::unistd::pipe().unwrap();
        later(Discard::Close(w), None);
        let mut buf = [0u8; 1];
        assert_eq!(std::fs::File::from(r).read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_big_file_is_handled_on_the_thread_before_the_wait_group_is_done() {
        let wg = WaitGroup::new();
        let big = tmpfile_of(BACKGROUND_MIN);
        let other = big.try_clone().unwrap();
        later(Discard::Empty(big), Some(&wg));
        wg.wait();
        // The thread emptied the file (through the fd it was given) before
        // it closed that fd and let the wait group go.
        let st = crate::sys::fstat(other.as_fd()).unwrap();
        assert_eq!(st.st_size, 0);
        let thread = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .find(|c| c.trim() == "barge-discard");
        assert!(thread.is_some(), "no barge-discard thread");
    }
}
