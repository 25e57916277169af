//! Files the helper no longer needs, closed on a thread of their own.
//!
//! Closing an uncommitted file frees its page cache, about 0.04 ms per MiB
//! written on the machines barge is measured on, so tens of milliseconds
//! for a large cancelled upload. That work is owed to nobody: the file
//! can never appear (an anonymous `O_TMPFILE`, or a download file the
//! client has already given up). Handing it to this thread lets the
//! helper answer the next request at once. Files under a hidden name are
//! never sent here: they are unlinked before the final reply.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

use crate::atomic_file::AtomicFile;

/// Something to let go of.
pub(super) enum Discard {
    /// An uncommitted anonymous file.
    File(AtomicFile),
    /// The client's uncommitted download file: emptied, then closed, so
    /// its pages are freed here whoever closes it last.
    Emptied(OwnedFd),
}

impl Discard {
    fn finish(self) {
        match self {
            Discard::File(f) => drop(f),
            Discard::Emptied(fd) => {
                // SAFETY: ftruncate on an fd we own; no pointers.
                unsafe { libc::ftruncate(fd.as_raw_fd(), 0) };
                drop(fd);
            }
        }
    }
}

static QUEUE: OnceLock<Option<Mutex<Sender<Discard>>>> = OnceLock::new();

/// Let go of `d` on the discard thread, or here when that thread cannot
/// be started.
pub(super) fn later(d: Discard) {
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Discard>();
        std::thread::Builder::new()
            .name("barge-discard".into())
            .spawn(move || {
                for d in rx {
                    d.finish();
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let d = match queue {
        Some(tx) => match tx.lock().map(|tx| tx.send(d)) {
            Ok(Ok(())) => return,
            Ok(Err(mpsc::SendError(d))) => d,
            Err(_) => return,
        },
        None => d,
    };
    d.finish();
}
