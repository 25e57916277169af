//! Event callbacks: `struct barge_event` and its kinds.

use std::ffi::{c_char, c_int, c_void};

use super::boundary;
use super::error::FfiError;
use super::handle::{barge_h, with_handle};
use crate::{CallbackId, Event, EventMask, ExitStatus};

/// A helper was started and completed the handshake. `pid` is set.
pub const BARGE_EVENT_LAUNCHED: u64 = 1;
/// Bytes done in the running transfer: `done`, and `total` (-1 when the
/// size is unknown, as for a pipe). Sent at most once per progress
/// interval, and once when a transfer completes, with `done == total`.
pub const BARGE_EVENT_PROGRESS: u64 = 2;
/// One line the helper wrote to its stderr: `line`, `line_len`.
pub const BARGE_EVENT_LOG: u64 = 4;
/// The helper of a successful launch is gone: stopped, killed or crashed.
/// Exactly one per LAUNCHED. `pid`, `exit_status`, `term_signal` and
/// `graceful` are set. SHUTDOWN callbacks run in reverse registration order.
pub const BARGE_EVENT_SHUTDOWN: u64 = 8;
/// Every event kind.
pub const BARGE_EVENT_ALL: u64 = 15;

/// One event, passed to a callback. Valid only during the callback: copy
/// what you need to keep.
#[repr(C)]
pub struct barge_event {
    /// One of the BARGE_EVENT_* values.
    pub kind: u64,
    /// LAUNCHED and SHUTDOWN: the helper's pid. Otherwise -1.
    pub pid: i64,
    /// PROGRESS: bytes done so far. Otherwise 0.
    pub done: u64,
    /// PROGRESS: the transfer's size, or -1 when unknown. Otherwise -1.
    pub total: i64,
    /// LOG: the line, without its newline, NUL-terminated; it may contain
    /// other NUL bytes, so `line_len` is its true length. Otherwise NULL.
    pub line: *const c_char,
    /// LOG: the length of `line` in bytes. Otherwise 0.
    pub line_len: usize,
    /// SHUTDOWN: the exit status when the helper exited, else -1.
    pub exit_status: c_int,
    /// SHUTDOWN: the signal that killed the helper, else 0. With
    /// `exit_status == -1` too, its status is unknown: it could not be
    /// reaped (stuck in the kernel), or another waiter of this process
    /// collected it first (SIGCHLD set to SIG_IGN, for one; `graceful`
    /// then still says whether it stopped when asked).
    pub term_signal: c_int,
    /// SHUTDOWN: 1 when the helper stopped gracefully when asked, else 0.
    pub graceful: c_int,
    /// PROGRESS of a tree copy (`barge_copy_in`, `barge_copy_out`): files
    /// done so far; `done` and `total` then count the bytes of the whole
    /// tree. -1 for other events and single-file transfers.
    pub files_done: i64,
    /// PROGRESS of a tree copy: files in the tree. Otherwise -1.
    pub files_total: i64,
}

/// An event callback. `opaque` is the pointer given at registration; `ev`
/// is valid only during the call. The callback runs on the thread that
/// called the operation, inside that call. It may call `barge_user_cancel`,
/// `barge_clear_cancel`, `barge_helper_pid`, `barge_get_error` and
/// `barge_get_errno` on the same handle; any other call on the same handle
/// fails with EDEADLK. It must not unwind (C++ exceptions, longjmp) through
/// barge.
pub type barge_event_callback =
    Option<unsafe extern "C" fn(opaque: *mut c_void, ev: *const barge_event)>;

struct CCallback {
    func: unsafe extern "C" fn(*mut c_void, *const barge_event),
    opaque: *mut c_void,
}

// SAFETY: the callback and its opaque pointer are the caller's; the C API
// documents that callbacks run on whichever thread calls the operation.
unsafe impl Send for CCallback {}

impl CCallback {
    fn call(&self, ev: &Event<'_>) {
        let mut out = barge_event {
            kind: 0,
            pid: -1,
            done: 0,
            total: -1,
            line: std::ptr::null(),
            line_len: 0,
            exit_status: -1,
            term_signal: 0,
            graceful: 0,
            files_done: -1,
            files_total: -1,
        };
        let mut line = Vec::new();
        match *ev {
            Event::Launched { pid } => {
                out.kind = BARGE_EVENT_LAUNCHED;
                out.pid = pid.into();
            }
            Event::Progress { done, total } => {
                out.kind = BARGE_EVENT_PROGRESS;
                out.done = done;
                out.total = total.map_or(-1, |t| i64::try_from(t).unwrap_or(i64::MAX));
            }
            Event::TreeProgress {
                files_done,
                files_total,
                bytes_done,
                bytes_total,
            } => {
                out.kind = BARGE_EVENT_PROGRESS;
                out.done = bytes_done;
                out.total = i64::try_from(bytes_total).unwrap_or(i64::MAX);
                out.files_done = i64::try_from(files_done).unwrap_or(i64::MAX);
                out.files_total = i64::try_from(files_total).unwrap_or(i64::MAX);
            }
            Event::Log { line: bytes } => {
                out.kind = BARGE_EVENT_LOG;
                line.extend_from_slice(bytes);
                line.push(0);
                out.line = line.as_ptr().cast();
                out.line_len = bytes.len();
            }
            Event::Shutdown {
                pid,
                status,
                graceful,
            } => {
                out.kind = BARGE_EVENT_SHUTDOWN;
                out.pid = pid.into();
                match status {
                    Some(ExitStatus::Exited(code)) => out.exit_status = code,
                    Some(ExitStatus::Signaled(sig)) => out.term_signal = sig,
                    Some(ExitStatus::Unknown) | None => {}
                }
                out.graceful = graceful.into();
            }
        }
        // SAFETY: the caller registered func with opaque; out (and line)
        // live until the call returns.
        unsafe { (self.func)(self.opaque, &out) };
    }
}

/// Register `cb` for the event kinds in `events` (BARGE_EVENT_* bits
/// or'ed together). Returns an id >= 0 for `barge_delete_event_callback`,
/// or -1: EFAULT when `cb` is NULL, EINVAL when `events` has no known bit
/// or an unknown one. `opaque` is passed to every call and never
/// dereferenced by barge; it must stay valid until the callback is deleted
/// or the handle closed (SHUTDOWN callbacks run inside `barge_close`).
#[no_mangle]
pub unsafe extern "C" fn barge_set_event_callback(
    h: *mut barge_h,
    cb: barge_event_callback,
    events: u64,
    opaque: *mut c_void,
) -> c_int {
    boundary("barge_set_event_callback", || {
        let Some(func) = cb else {
            return Err(FfiError::new(libc::EFAULT, "the callback is NULL"));
        };
        if events == 0 || events & !BARGE_EVENT_ALL != 0 {
            return Err(FfiError::new(
                libc::EINVAL,
                format!("event mask {events:#x} is empty or has unknown bits"),
            ));
        }
        let callback = CCallback { func, opaque };
        // SAFETY: h per this function's contract.
        unsafe {
            with_handle(h, |hd| {
                let id = hd.add_event_callback(EventMask(events), move |ev| callback.call(ev));
                c_int::try_from(id.0).map_err(|_| {
                    hd.remove_event_callback(id);
                    FfiError::new(libc::EOVERFLOW, "no callback ids left")
                })
            })
        }
    })
}

/// Remove the callback with this id. Returns 0, or -1 with ENOENT when no
/// callback has this id. The callback is not called after this returns.
#[no_mangle]
pub unsafe extern "C" fn barge_delete_event_callback(h: *mut barge_h, id: c_int) -> c_int {
    boundary("barge_delete_event_callback", || {
        // SAFETY: h per this function's contract.
        let handle = unsafe { super::handle::handle_ref(h) }?;
        let mut locked = handle.lock()?;
        let found = u32::try_from(id)
            .ok()
            .map(CallbackId)
            .filter(|&cid| cid != handle.pid_callback)
            .is_some_and(|cid| locked.remove_event_callback(cid));
        if !found {
            return Err(FfiError::new(
                libc::ENOENT,
                format!("no event callback has id {id}"),
            ));
        }
        Ok(0)
    })
}
