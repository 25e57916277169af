//! The thread's last error, as libnbd keeps it: a failing call records its
//! message and errno in thread-local storage, so errors work even when
//! `barge_create` fails and no handle exists.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};

use super::guarded;

/// An error on its way out through the boundary.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub errno: i32,
    pub message: String,
}

impl FfiError {
    pub fn new(errno: i32, message: impl Into<String>) -> FfiError {
        FfiError {
            errno,
            message: message.into(),
        }
    }

    pub fn from_panic(payload: &(dyn Any + Send)) -> FfiError {
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("unknown panic");
        FfiError::new(libc::EIO, format!("internal error (panic): {what}"))
    }
}

impl From<crate::Error> for FfiError {
    fn from(e: crate::Error) -> FfiError {
        FfiError::new(e.errno(), e.to_string())
    }
}

struct LastError {
    errno: c_int,
    message: Option<CString>,
}

thread_local! {
    static LAST: RefCell<LastError> = const {
        RefCell::new(LastError { errno: 0, message: None })
    };
}

/// Record `e` as this thread's last error, prefixed with the failing
/// function's name, and set C `errno` to its errno.
pub(crate) fn record(func: &str, e: FfiError) {
    let text = format!("{func}: {}", e.message).replace('\0', "\\0");
    let message = CString::new(text).unwrap_or_default();
    // A thread that is exiting has no slot left; the errno below still
    // tells the caller what happened.
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.errno = e.errno;
            l.message = Some(message);
        }
    });
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = e.errno };
}

/// The message of the last error of a barge call on this thread, or NULL
/// when no barge call on this thread has failed yet.
///
/// The string belongs to barge. It stays valid until the next barge call
/// on this thread (in practice until the next one that fails), and must not
/// be freed. This call does not change the last error.
#[no_mangle]
pub extern "C" fn barge_get_error() -> *const c_char {
    guarded(|| {
        LAST.try_with(|l| match l.try_borrow() {
            Ok(l) => l.message.as_ref().map_or(std::ptr::null(), |m| m.as_ptr()),
            Err(_) => std::ptr::null(),
        })
        .unwrap_or(std::ptr::null())
    })
}

/// The errno of the last error of a barge call on this thread: for
/// example `ECANCELED` after `barge_user_cancel`, `EINVAL` for a NULL
/// handle, `EFAULT` for a NULL pointer argument. 0 when no barge call on
/// this thread has failed yet. This call does not change the last error.
#[no_mangle]
pub extern "C" fn barge_get_errno() -> c_int {
    guarded(|| {
        LAST.try_with(|l| l.try_borrow().map_or(0, |l| l.errno))
            .unwrap_or(0)
    })
}
