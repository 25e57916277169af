//! Cancel: an atomic flag plus an eventfd that wakes every wait.
//!
//! [`Canceller::cancel`] is the only code in barge that may run in a signal
//! handler. It stores `true` into the flag, then writes 1 to the eventfd with
//! one `write(2)`. It takes no lock, allocates nothing and restores `errno`.
//! Every wait of an operation polls [`CancelState::wake_fd`] next to its data
//! fds and then checks the flag, so a cancel wakes a blocked wait at once.
//!
//! A cancel is never lost. The flag stays set until an operation consumes
//! it with [`CancelState::take`], or the caller clears it with
//! [`CancelState::clear`]. So a cancel that arrives while no operation runs
//! makes the next operation fail at once. `take` clears the flag first and
//! then drains the eventfd: a cancel whose store lands after the clear
//! leaves the flag set, and the next check sees it. Draining first could
//! lose it.
//!
//! The eventfd can be readable with no cancel pending: a `request` whose
//! store `take` or `clear` consumed can write after their drain, and a
//! caller's handler that runs in a forked child before exec writes to the
//! shared eventfd but stores into the child's copy of the flag. A wait
//! that finds the eventfd readable calls [`CancelState::settle_wake`],
//! which drains such a stale wake-up so the next poll blocks instead of
//! returning at once. Every wait's loop checks the flag before it polls,
//! so a cancel whose write that drain swallowed is still seen.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The shared cancel state of one handle.
#[derive(Debug)]
pub struct CancelState {
    requested: AtomicBool,
    wake: OwnedFd,
}

impl CancelState {
    pub fn new() -> io::Result<CancelState> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(CancelState {
            requested: AtomicBool::new(false),
            // SAFETY: fd is a fresh eventfd that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Request a cancel. Async-signal-safe: one atomic store and one
    /// `write(2)` to a non-blocking eventfd; `errno` is preserved.
    pub fn request(&self) {
        // SAFETY: __errno_location returns this thread's errno slot, valid
        // for the thread's lifetime; reading and writing it is what every
        // signal-safe function that preserves errno does.
        let errno = unsafe { *libc::__errno_location() };
        self.requested.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to an fd this state owns.
        // A failure (EAGAIN when the counter is saturated) still leaves the
        // eventfd readable, which is all the waiters need.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
            *libc::__errno_location() = errno;
        }
    }

    /// Whether a cancel is pending.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Consume a pending cancel: returns true and clears it if one was
    /// pending.
    pub fn take(&self) -> bool {
        if self.requested.swap(false, Ordering::SeqCst) {
            self.drain();
            true
        } else {
            false
        }
    }

    /// For a wait whose poll found the eventfd readable: returns whether a
    /// cancel is pending, and drains the eventfd when none is (a stale
    /// wake-up, see the module notes), so that polling it again blocks.
    pub fn settle_wake(&self) -> bool {
        if self.is_requested() {
            return true;
        }
        self.drain();
        false
    }

    /// Drop any pending cancel.
    pub fn clear(&self) {
        self.requested.store(false, Ordering::SeqCst);
        self.drain();
    }

    /// The fd every wait polls for readability.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live local from our non-blocking
        // eventfd; EAGAIN (nothing to drain) is fine.
        unsafe {
            libc::read(
                self.wake.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

/// Cancels the operation running on a handle, from any thread or from a
/// signal handler.
///
/// Get one from `Handle::canceller`. Clones share the handle's state, and a
/// `Canceller` stays valid after its handle is dropped. It then does
/// nothing useful.
#[derive(Clone, Debug)]
pub struct Canceller {
    state: Arc<CancelState>,
}

impl Canceller {
    pub(crate) fn new(state: Arc<CancelState>) -> Self {
        Canceller { state }
    }

    /// Cancel the running operation, or the next one if none is running.
    ///
    /// Async-signal-safe and thread-safe: no lock, no allocation, `errno`
    /// unchanged. The cancelled call returns `Error::Cancelled`.
    pub fn cancel(&self) {
        self.state.request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn readable(fd: BorrowedFd<'_>, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    #[test]
    fn request_sets_flag_and_wakes_fd() {
        let s = CancelState::new().unwrap();
        assert!(!s.is_requested());
        assert!(!readable(s.wake_fd(), 0));
        s.request();
        assert!(s.is_requested());
        assert!(readable(s.wake_fd(), 0));
    }

    #[test]
    fn take_consumes_once() {
        let s = CancelState::new().unwrap();
        s.request();
        s.request();
        assert!(s.take());
        assert!(!s.take());
        assert!(!readable(s.wake_fd(), 0));
    }

    #[test]
    fn request_preserves_errno() {
        let s = CancelState::new().unwrap();
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::EBADF };
        for _ in 0..3 {
            s.request();
        }
        assert_eq!(unsafe { *libc::__errno_location() }, libc::EBADF);
    }

    #[test]
    fn cancel_from_another_thread_wakes_a_blocked_poll() {
        let s = Arc::new(CancelState::new().unwrap());
        let c = Canceller::new(s.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c.cancel();
        });
        assert!(readable(s.wake_fd(), 5000));
        assert!(s.take());
        t.join().unwrap();
    }

    /// The state a `request` racing with `take` can leave: the flag
    /// consumed, the eventfd still readable.
    fn stale(s: &CancelState) {
        s.request();
        s.requested.store(false, Ordering::SeqCst);
    }

    #[test]
    fn settle_wake_drains_a_stale_wake_up() {
        let s = CancelState::new().unwrap();
        stale(&s);
        assert!(readable(s.wake_fd(), 0));
        assert!(!s.settle_wake());
        assert!(!readable(s.wake_fd(), 0));
    }

    #[test]
    fn settle_wake_keeps_a_pending_cancel() {
        let s = CancelState::new().unwrap();
        s.request();
        assert!(s.settle_wake());
        assert!(s.is_requested());
        assert!(readable(s.wake_fd(), 0));
    }

    #[test]
    fn clear_drops_a_pending_cancel() {
        let s = CancelState::new().unwrap();
        s.request();
        s.clear();
        assert!(!s.is_requested());
        assert!(!readable(s.wake_fd(), 0));
    }
}
