//! The C ABI: `include/barge.h` is generated from this module by build.rs
//! (cbindgen), and the rules it follows are written down once, in the
//! README's "C API conventions".
//!
//! This layer holds no transfer logic. Each export converts its C arguments,
//! calls one [`crate::Handle`] method and converts the result:
//! - `boundary` (the one export boundary) wraps every export that can fail. It catches panics, turns
//!   errors into -1 or NULL, and records the thread's last error and errno.
//! - `guarded` wraps the few exports that must not touch the last error:
//!   `barge_user_cancel` (async-signal-safe), `barge_get_error` and
//!   `barge_get_errno`. It only catches panics.
//! - No export takes `&T` or `&mut T`. Pointers arrive raw and are checked
//!   for NULL by `handle::handle_ref` and the `arg_*` helpers before use.
//!
//! Where things live:
//! - `error`: the thread-local last error, `barge_get_error`, `barge_get_errno`.
//! - `handle`: `barge_h`, its settings, launch/shutdown/kill, cancel, version.
//! - `ops`: transfers and remote file operations, listing.
//! - `events`: `struct barge_event` and event callbacks.
//! - `tree`: `barge_copy_in`, `barge_copy_out`, their settings and errors,
//!   and `barge_set_keep_partial`.

// C names: barge_h, struct barge_stat, barge_event_callback.
#![allow(non_camel_case_types)]
// Every export takes raw pointers under the same rules (NULL or valid for
// the call; handles not yet closed), stated once in the README's "C API
// conventions" rather than in each header comment.
#![allow(clippy::missing_safety_doc)]

// Declared in the order the header lists them.
pub mod handle;

pub mod ops;

pub mod tree;

pub mod events;

pub mod error;

use std::ffi::{c_char, c_int, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use self::error::FfiError;

/// The value an export returns when it fails.
pub(crate) trait Fallback {
    const FAILED: Self;
}

impl Fallback for c_int {
    const FAILED: c_int = -1;
}

impl Fallback for i64 {
    const FAILED: i64 = -1;
}

impl Fallback for () {
    const FAILED: () = ();
}

impl<T> Fallback for *mut T {
    const FAILED: *mut T = std::ptr::null_mut();
}

impl<T> Fallback for *const T {
    const FAILED: *const T = std::ptr::null();
}

/// Run the body of the export `func`. An `Err` or a panic becomes
/// `T::FAILED`, and is recorded as this thread's last error (message
/// prefixed with `func`) and in C `errno`.
pub(crate) fn boundary<T: Fallback>(
    func: &'static str,
    body: impl FnOnce() -> Result<T, FfiError>,
) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            error::record(func, e);
            T::FAILED
        }
        Err(payload) => {
            error::record(func, FfiError::from_panic(payload.as_ref()));
            T::FAILED
        }
    }
}

/// Run the body of an export that must leave the last error alone. A panic
/// becomes `T::FAILED` and nothing else. Adds no allocation, lock or errno
/// change of its own, so it is fit for `barge_user_cancel`.
pub(crate) fn guarded<T: Fallback>(body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(T::FAILED)
}

/// A NUL-terminated C string argument as bytes; EFAULT when NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
pub(crate) unsafe fn arg_bytes<'a>(p: *const c_char, what: &str) -> Result<&'a [u8], FfiError> {
    if p.is_null() {
        return Err(FfiError::new(libc::EFAULT, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL, and NUL-terminated and live per this function's
    // contract.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// A path argument. Any bytes but NUL are allowed: paths need not be UTF-8.
///
/// # Safety
/// As for [`arg_bytes`].
pub(crate) unsafe fn arg_path<'a>(p: *const c_char, what: &str) -> Result<&'a Path, FfiError> {
    // SAFETY: passed through from the caller's contract.
    let bytes = unsafe { arg_bytes(p, what) }?;
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// A pointer to an out-parameter; EFAULT when NULL.
pub(crate) fn arg_out<T>(p: *mut T, what: &str) -> Result<*mut T, FfiError> {
    if p.is_null() {
        Err(FfiError::new(libc::EFAULT, format!("{what} is NULL")))
    } else {
        Ok(p)
    }
}
