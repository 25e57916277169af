//! `barge_h`: a [`Handle`] behind a mutex, plus what must work without
//! that mutex (cancel, the helper's pid).

use std::ffi::{c_char, c_int, OsStr, OsString};
use std::ops::{Deref, DerefMut};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::error::FfiError;
use super::{arg_bytes, boundary, guarded};
use crate::cancel::CancelState;
use crate::{CallbackId, Event, EventMask, Handle};

/// A barge handle: one connection to a helper process, and the operations
/// that run over it.
///
/// Create it with `barge_create` and free it with `barge_close`. Calls on
/// one handle are serialized: a call made while another thread runs an
/// operation on the same handle waits for it. `barge_user_cancel`,
/// `barge_clear_cancel` and `barge_helper_pid` never wait. See
/// "C API conventions" in README.md for the threading and signal rules.
#[allow(non_camel_case_types)]
pub struct barge_h {
    pub(crate) handle: Mutex<Handle>,
    /// The handle's cancel state, reachable without the mutex.
    cancel: Arc<CancelState>,
    /// The running helper's pid, or -1; kept by an event callback and
    /// after every call, so it is readable while an operation runs.
    helper_pid: Arc<AtomicI64>,
    /// The thread id of the thread inside a call on this handle, or 0.
    /// A call from that same thread (an event callback calling back into
    /// the handle) fails with EDEADLK instead of deadlocking.
    owner: AtomicI32,
    /// The callback that keeps `helper_pid`; not removable by the caller.
    pub(crate) pid_callback: CallbackId,
    /// The failed entries of the last keep-going tree copy, for
    /// `barge_get_tree_errors`.
    pub(crate) tree_errors: Mutex<Vec<crate::PathError>>,
}

/// A locked handle. Dropping it refreshes the pid and releases the owner.
pub(crate) struct Locked<'a> {
    h: &'a barge_h,
    guard: MutexGuard<'a, Handle>,
}

impl Deref for Locked<'_> {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.guard
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Handle {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let pid = self.guard.helper_pid().map_or(-1, i64::from);
        self.h.helper_pid.store(pid, Ordering::SeqCst);
        self.h.owner.store(0, Ordering::SeqCst);
    }
}

fn this_thread() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

impl barge_h {
    /// Take the handle's mutex, waiting for another thread's call to end.
    /// EDEADLK when this thread already holds it (from an event callback).
    pub(crate) fn lock(&self) -> Result<Locked<'_>, FfiError> {
        let me = this_thread();
        if self.owner.load(Ordering::SeqCst) == me {
            return Err(FfiError::new(
                libc::EDEADLK,
                "called from an event callback of the same handle; only \
                 barge_user_cancel, barge_clear_cancel and barge_helper_pid \
                 may be called there",
            ));
        }
        // A panic inside an earlier call poisons the mutex. The handle
        // itself recovers from that (it kills a connection left mid-request).
        let guard = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        self.owner.store(me, Ordering::SeqCst);
        Ok(Locked { h: self, guard })
    }
}

/// The handle behind `h`; EINVAL when NULL.
///
/// # Safety
/// `h` is NULL or a handle from `barge_create` not yet closed.
pub(crate) unsafe fn handle_ref<'a>(h: *mut barge_h) -> Result<&'a barge_h, FfiError> {
    if h.is_null() {
        return Err(FfiError::new(libc::EINVAL, "the handle is NULL"));
    }
    // SAFETY: non-NULL, and a live handle per this function's contract.
    // Only shared references are made; all mutation goes through the
    // mutex or atomics.
    Ok(unsafe { &*h })
}

/// Run `f` on the locked handle behind `h`.
///
/// # Safety
/// As for [`handle_ref`].
pub(crate) unsafe fn with_handle<T>(
    h: *mut barge_h,
    f: impl FnOnce(&mut Handle) -> Result<T, FfiError>,
) -> Result<T, FfiError> {
    // SAFETY: passed through from the caller's contract.
    let h = unsafe { handle_ref(h) }?;
    let mut locked = h.lock()?;
    f(&mut locked)
}

/// Create a handle with default settings. Starts no helper yet: the first
/// operation (or `barge_launch`) does. Returns NULL on error, with the
/// error in `barge_get_error` and `barge_get_errno`.
#[no_mangle]
pub extern "C" fn barge_create() -> *mut barge_h {
    boundary("barge_create", || {
        let mut handle = Handle::new()?;
        let cancel = handle.cancel_state().clone();
        let helper_pid = Arc::new(AtomicI64::new(-1));
        let pid = helper_pid.clone();
        let pid_callback = handle.add_event_callback(
            EventMask::LAUNCHED | EventMask::SHUTDOWN,
            move |ev| match *ev {
                Event::Launched { pid: p } => pid.store(i64::from(p), Ordering::SeqCst),
                Event::Shutdown { pid: p, .. } => {
                    let _ =
                        pid.compare_exchange(i64::from(p), -1, Ordering::SeqCst, Ordering::SeqCst);
                }
                _ => {}
            },
        );
        Ok(Box::into_raw(Box::new(barge_h {
            handle: Mutex::new(handle),
            cancel,
            helper_pid,
            owner: AtomicI32::new(0),
            pid_callback,
            tree_errors: Mutex::new(Vec::new()),
        })))
    })
}

/// Shut the helper down as `barge_shutdown` does (bounded by the shutdown
/// and kill timeouts), then free the handle. SHUTDOWN callbacks run during
/// this call. A pending cancel is dropped first, so the graceful step is
/// tried. NULL is allowed and does nothing.
///
/// After this call `h` is invalid. Calling this while another thread uses
/// `h` (including `barge_user_cancel`) is the caller's bug. Called from an
/// event callback of `h`, it does nothing and records EDEADLK.
#[no_mangle]
pub unsafe extern "C" fn barge_close(h: *mut barge_h) {
    boundary("barge_close", || {
        if h.is_null() {
            return Ok(());
        }
        {
            // SAFETY: non-NULL and live per this function's contract.
            let handle = unsafe { handle_ref(h) }?;
            let mut locked = handle.lock()?;
            handle.cancel.clear();
            let _ = locked.shutdown();
        }
        // SAFETY: h came from Box::into_raw in barge_create, and the
        // caller gives up its last use of it here.
        drop(unsafe { Box::from_raw(h) });
        Ok(())
    })
}

/// Set the command that starts the helper: a NULL-terminated argv, e.g.
/// `{"ssh", "-T", "host", "barge-helper", NULL}`. The strings are copied.
/// Default: the bundled helper, found with no configuration (see
/// "C API conventions" in README.md). Takes effect at the next launch.
/// EFAULT when `argv` is NULL, EINVAL when it is empty.
#[no_mangle]
pub unsafe extern "C" fn barge_set_helper(h: *mut barge_h, argv: *const *const c_char) -> c_int {
    boundary("barge_set_helper", || {
        if argv.is_null() {
            return Err(FfiError::new(libc::EFAULT, "argv is NULL"));
        }
        let mut args: Vec<OsString> = Vec::new();
        loop {
            // SAFETY: argv is a NULL-terminated array; we stop at the NULL.
            let p = unsafe { *argv.add(args.len()) };
            if p.is_null() {
                break;
            }
            // SAFETY: each element before the NULL is a C string.
            let arg = unsafe { arg_bytes(p, "argv element") }?;
            args.push(OsStr::from_bytes(arg).to_os_string());
        }
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.set_helper(args)?)) }?;
        Ok(0)
    })
}

/// Confine every remote path beneath `dir` on the helper's side; "" removes
/// the confinement. Takes effect at the next launch. EFAULT when `dir` is
/// NULL.
#[no_mangle]
pub unsafe extern "C" fn barge_set_root(h: *mut barge_h, dir: *const c_char) -> c_int {
    boundary("barge_set_root", || {
        // SAFETY: dir per this function's contract.
        let dir = unsafe { super::arg_path(dir, "dir") }?;
        let dir = (!dir.as_os_str().is_empty()).then_some(dir);
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.set_root(dir)?)) }?;
        Ok(0)
    })
}

/// Start the helper in its own process group (nonzero, the default) or in
/// the caller's (0). In its own group, a terminal's ^C reaches only the
/// caller. Takes effect at the next launch.
#[no_mangle]
pub unsafe extern "C" fn barge_set_pgroup(h: *mut barge_h, enable: c_int) -> c_int {
    boundary("barge_set_pgroup", || {
        // SAFETY: h per this function's contract.
        unsafe {
            with_handle(h, |hd| {
                hd.set_pgroup(enable != 0);
                Ok(())
            })
        }?;
        Ok(0)
    })
}

/// Offer the fast path (nonzero) or not (0): when the helper is this
/// process's own child on the same kernel, local files are passed to it as
/// fds and copied in the kernel instead of streamed. Default: offered to
/// the default helper only, unless `BARGE_FASTPATH=0` is set. It is never
/// used through ssh, sudo or a container, whatever this says; results and
/// guarantees are those of the stream path. Takes effect at the next
/// launch.
#[no_mangle]
pub unsafe extern "C" fn barge_set_fast_path(h: *mut barge_h, enable: c_int) -> c_int {
    boundary("barge_set_fast_path", || {
        // SAFETY: h per this function's contract.
        unsafe {
            with_handle(h, |hd| {
                hd.set_fast_path(enable != 0);
                Ok(())
            })
        }?;
        Ok(0)
    })
}

/// 1 when the running helper uses the fast path, 0 when it does not or no
/// helper runs.
#[no_mangle]
pub unsafe extern "C" fn barge_uses_fast_path(h: *mut barge_h) -> c_int {
    boundary("barge_uses_fast_path", || {
        // SAFETY: h per this function's contract.
        let uses = unsafe { with_handle(h, |hd| Ok(hd.uses_fast_path())) }?;
        Ok(c_int::from(uses))
    })
}

/// Bytes per data frame: 4 KiB to 4 MiB, default 256 KiB. EINVAL outside
/// that range.
#[no_mangle]
pub unsafe extern "C" fn barge_set_chunk_size(h: *mut barge_h, bytes: u32) -> c_int {
    boundary("barge_set_chunk_size", || {
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.set_chunk_size(bytes)?)) }?;
        Ok(0)
    })
}

/// How much one `barge_list` may keep: at most `max_entries` entries and
/// `max_name_bytes` bytes of names. Defaults: 1000000 entries and 256 MiB
/// of names, which bound the memory a helper can make the caller use.
/// Past either, `barge_list` stops the listing and fails with `E2BIG`,
/// its message naming the path and the bound. A listing larger than
/// SIZE_MAX is impossible anyway, so any value is accepted.
#[no_mangle]
pub unsafe extern "C" fn barge_set_list_limits(
    h: *mut barge_h,
    max_entries: usize,
    max_name_bytes: usize,
) -> c_int {
    boundary("barge_set_list_limits", || {
        // SAFETY: h per this function's contract.
        unsafe {
            with_handle(h, |hd| {
                hd.set_list_limits(max_entries, max_name_bytes);
                Ok(())
            })
        }?;
        Ok(0)
    })
}

/// How long `barge_shutdown` waits for the helper to exit after asking it
/// to, before SIGTERM. Default 3000 ms.
#[no_mangle]
pub unsafe extern "C" fn barge_set_shutdown_timeout_ms(h: *mut barge_h, ms: u32) -> c_int {
    boundary("barge_set_shutdown_timeout_ms", || {
        // SAFETY: h per this function's contract.
        unsafe { set_duration(h, ms, Handle::set_shutdown_timeout) }
    })
}

/// How long to wait after SIGTERM before SIGKILL. Default 5000 ms.
#[no_mangle]
pub unsafe extern "C" fn barge_set_kill_timeout_ms(h: *mut barge_h, ms: u32) -> c_int {
    boundary("barge_set_kill_timeout_ms", || {
        // SAFETY: h per this function's contract.
        unsafe { set_duration(h, ms, Handle::set_kill_timeout) }
    })
}

/// How long the helper may take to answer a cancel before it is killed
/// (the cancelled call still returns ECANCELED, and the next operation
/// starts a new helper). Default 2000 ms.
#[no_mangle]
pub unsafe extern "C" fn barge_set_cancel_timeout_ms(h: *mut barge_h, ms: u32) -> c_int {
    boundary("barge_set_cancel_timeout_ms", || {
        // SAFETY: h per this function's contract.
        unsafe { set_duration(h, ms, Handle::set_cancel_timeout) }
    })
}

/// How long the helper may take to start and complete the handshake.
/// Default 30000 ms.
#[no_mangle]
pub unsafe extern "C" fn barge_set_launch_timeout_ms(h: *mut barge_h, ms: u32) -> c_int {
    boundary("barge_set_launch_timeout_ms", || {
        // SAFETY: h per this function's contract.
        unsafe { set_duration(h, ms, Handle::set_launch_timeout) }
    })
}

/// Least time between two PROGRESS events of one transfer. Default 100 ms;
/// 0 sends one per data frame.
#[no_mangle]
pub unsafe extern "C" fn barge_set_progress_interval_ms(h: *mut barge_h, ms: u32) -> c_int {
    boundary("barge_set_progress_interval_ms", || {
        // SAFETY: h per this function's contract.
        unsafe { set_duration(h, ms, Handle::set_progress_interval) }
    })
}

/// The body of the `barge_set_*_timeout_ms` setters.
///
/// # Safety
/// `h` is NULL or a live handle.
unsafe fn set_duration(
    h: *mut barge_h,
    ms: u32,
    set: fn(&mut Handle, Duration),
) -> Result<c_int, FfiError> {
    // SAFETY: per this function's contract.
    unsafe {
        with_handle(h, |hd| {
            set(hd, Duration::from_millis(ms.into()));
            Ok(())
        })
    }?;
    Ok(0)
}

/// Start the helper now, if none runs. Optional: every operation launches
/// when no helper runs. Cancellable.
#[no_mangle]
pub unsafe extern "C" fn barge_launch(h: *mut barge_h) -> c_int {
    boundary("barge_launch", || {
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.launch()?)) }?;
        Ok(0)
    })
}

/// Stop the helper: ask it to exit and wait up to the shutdown timeout,
/// then SIGTERM (to its process group when it has its own) and wait up to
/// the kill timeout, then SIGKILL. `barge_user_cancel` cuts either wait
/// short. The helper is always reaped, unless it outlives SIGKILL by 2 s
/// (stuck in the kernel): the call then returns without it. Returns -1
/// (errno EIO, message "abnormal shutdown: ...") when the graceful step
/// failed, although the helper is gone then too. Returns 0 when no helper
/// runs. The next operation starts a new helper.
#[no_mangle]
pub unsafe extern "C" fn barge_shutdown(h: *mut barge_h) -> c_int {
    boundary("barge_shutdown", || {
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.shutdown()?)) }?;
        Ok(0)
    })
}

/// Stop the helper at once with SIGKILL (to its process group when it has
/// its own) and reap it. Returns 0, also when no helper runs.
#[no_mangle]
pub unsafe extern "C" fn barge_kill(h: *mut barge_h) -> c_int {
    boundary("barge_kill", || {
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.kill()?)) }?;
        Ok(0)
    })
}

/// The running helper's pid, or -1 when none runs (and -1 with EINVAL for
/// a NULL handle). Never waits for a running operation: during one it
/// reports the helper that operation uses.
#[no_mangle]
pub unsafe extern "C" fn barge_helper_pid(h: *mut barge_h) -> i64 {
    boundary("barge_helper_pid", || {
        // SAFETY: h per this function's contract.
        let h = unsafe { handle_ref(h) }?;
        Ok(h.helper_pid.load(Ordering::SeqCst))
    })
}

/// Cancel the running operation on `h`, or the next one if none runs. The
/// cancelled call returns -1 with errno ECANCELED, and the handle and its
/// helper stay usable.
///
/// Async-signal-safe and thread-safe: one atomic store and one `write(2)`.
/// It takes no lock, allocates nothing, and leaves `errno` and the last
/// error unchanged. May be called at any time while `h` is open, from any
/// thread or signal handler, but never concurrently with or after
/// `barge_close(h)`. NULL does nothing.
#[no_mangle]
pub unsafe extern "C" fn barge_user_cancel(h: *mut barge_h) {
    guarded(|| {
        if !h.is_null() {
            // SAFETY: non-NULL and live per this function's contract; only
            // the Arc'd cancel state is touched, never the mutex.
            unsafe { (*h).cancel.request() };
        }
    })
}

/// Drop a pending cancel, so the next operation runs. A cancel that
/// arrives during this call may or may not be dropped. Never waits for a
/// running operation; called during one, it may drop that operation's
/// cancel. Not async-signal-safe. NULL records EINVAL.
#[no_mangle]
pub unsafe extern "C" fn barge_clear_cancel(h: *mut barge_h) {
    boundary("barge_clear_cancel", || {
        // SAFETY: h per this function's contract.
        let h = unsafe { handle_ref(h) }?;
        h.cancel.clear();
        Ok(())
    })
}

/// The library's version, "MAJOR.MINOR.PATCH", equal to
/// `BARGE_VERSION_STRING` of the header it was built with. Static: do not
/// free.
#[no_mangle]
pub extern "C" fn barge_version() -> *const c_char {
    boundary("barge_version", || {
        Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast())
    })
}
