//! Directory trees and resumable transfers: `barge_copy_in`,
//! `barge_copy_out`, their settings, and the per-path errors of a
//! keep-going copy.

use std::ffi::{c_char, c_int, CString};
use std::os::unix::ffi::OsStrExt;

use super::error::FfiError;
use super::handle::{barge_h, handle_ref, with_handle};
use super::{arg_out, arg_path, boundary, guarded};
use crate::{Error, PathError};

/// One entry that failed in a keep-going tree copy, from
/// `barge_get_tree_errors`.
#[repr(C)]
pub struct barge_path_error {
    /// The entry's path, NUL-terminated (not UTF-8 in general): local for
    /// a failure on this side, remote (as the helper sees it beneath the
    /// root) for one on the helper's side. Owned by the array.
    pub path: *mut c_char,
    /// The length of `path` in bytes.
    pub path_len: usize,
    /// The errno of the failure.
    pub err: c_int,
    /// What failed, naming the path; NUL-terminated. Owned by the array.
    pub message: *mut c_char,
}

fn c_string(bytes: &[u8]) -> CString {
    let clean: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == 0 { b'?' } else { b })
        .collect();
    CString::new(clean).expect("NUL bytes replaced")
}

/// Run a tree copy and keep its per-path errors for
/// `barge_get_tree_errors`.
unsafe fn tree_call(
    h: *mut barge_h,
    f: impl FnOnce(&mut crate::Handle) -> Result<(), Error>,
) -> Result<c_int, FfiError> {
    // SAFETY: h per the caller's contract.
    let handle = unsafe { handle_ref(h) }?;
    let mut locked = handle.lock()?;
    let result = f(&mut locked);
    let errors = match &result {
        Err(Error::Incomplete { errors }) => errors.clone(),
        _ => Vec::new(),
    };
    *handle.tree_errors.lock().unwrap_or_else(|p| p.into_inner()) = errors;
    result?;
    Ok(0)
}

/// Copy the local file or directory `local_path` into the remote directory
/// `remote_dir`, recursively, as `remote_dir/NAME` (NAME: the last
/// component of `local_path`), like `cp -r local_path remote_dir/`.
/// Regular files, directories and symlinks are copied (symlinks as links,
/// never followed); special files are skipped, each with a LOG event.
/// Mode and mtime are kept unless `barge_set_preserve_metadata(h, 0)`.
/// Every entry is streamed in one request. PROGRESS events cover the
/// whole tree: `done`/`total` are bytes, `files_done`/`files_total` files.
/// Each file appears only when complete. A cancel returns -1 with
/// ECANCELED: files already copied stay, the file in flight is removed.
/// On an error the copy stops and reports it (the path in the message),
/// unless `barge_set_keep_going(h, 1)`: then it copies the rest and
/// returns -1 with the first failure's errno, and
/// `barge_get_tree_errors` lists every failed path.
#[no_mangle]
pub unsafe extern "C" fn barge_copy_in(
    h: *mut barge_h,
    local_path: *const c_char,
    remote_dir: *const c_char,
) -> c_int {
    boundary("barge_copy_in", || {
        // SAFETY: the pointers per this function's contract.
        let local = unsafe { arg_path(local_path, "local_path") }?;
        // SAFETY: as above.
        let remote = unsafe { arg_path(remote_dir, "remote_dir") }?;
        // SAFETY: as above.
        unsafe { tree_call(h, |hd| hd.copy_in(local, remote)) }
    })
}

/// Copy the remote file or directory `remote_path` into the local
/// directory `local_dir`, recursively, as `local_dir/NAME`. The
/// counterpart of `barge_copy_in`, with the same rules; special files are
/// skipped by the helper, which logs each (a LOG event).
#[no_mangle]
pub unsafe extern "C" fn barge_copy_out(
    h: *mut barge_h,
    remote_path: *const c_char,
    local_dir: *const c_char,
) -> c_int {
    boundary("barge_copy_out", || {
        // SAFETY: the pointers per this function's contract.
        let remote = unsafe { arg_path(remote_path, "remote_path") }?;
        // SAFETY: as above.
        let local = unsafe { arg_path(local_dir, "local_dir") }?;
        // SAFETY: as above.
        unsafe { tree_call(h, |hd| hd.copy_out(remote, local)) }
    })
}

/// Whether tree copies give entries the source's mode and mtime (1, the
/// default) or not (0: permission bits less the writer's umask, and the
/// time of the copy, as `cp -r` does).
#[no_mangle]
pub unsafe extern "C" fn barge_set_preserve_metadata(h: *mut barge_h, enable: c_int) -> c_int {
    boundary("barge_set_preserve_metadata", || {
        // SAFETY: h per this function's contract.
        unsafe {
            with_handle(h, |hd| {
                hd.set_preserve_metadata(enable != 0);
                Ok(0)
            })
        }
    })
}

/// Whether a tree copy goes on after an entry fails (1) and reports every
/// failure at the end through `barge_get_tree_errors`, or stops at the
/// first (0, the default).
#[no_mangle]
pub unsafe extern "C" fn barge_set_keep_going(h: *mut barge_h, enable: c_int) -> c_int {
    boundary("barge_set_keep_going", || {
        // SAFETY: h per this function's contract.
        unsafe {
            with_handle(h, |hd| {
                hd.set_keep_going(enable != 0);
                Ok(0)
            })
        }
    })
}

/// Whether tree copies keep the setuid, setgid and sticky bits of the
/// source's modes (1) or clear them (0, the default). When 0 the side that
/// writes clears them whatever `barge_set_preserve_metadata` says, so a
/// helper never makes a setuid file unless the caller asked for it. A
/// helper that runs as root keeps them only when its operator set
/// `BARGE_HELPER_ALLOW_SETID=1`; otherwise `barge_copy_in` fails with
/// `EPERM`.
#[no_mangle]
pub unsafe extern "C" fn barge_set_preserve_setid(h: *mut barge_h, enable: c_int) -> c_int {
    boundary("barge_set_preserve_setid", || {
        // SAFETY: h per this function's contract.
        unsafe {
            with_handle(h, |hd| {
                hd.set_preserve_setid(enable != 0);
                Ok(0)
            })
        }
    })
}

/// The most directories a `barge_copy_out` may create (default 1000000).
/// Each is recorded until the tree ends, for its mode and mtime, which
/// bounds the memory a helper can make the caller use. A tree that makes
/// more fails with `E2BIG`, its message naming the directory and the
/// bound. The helper applies its own bound to `barge_copy_in`.
#[no_mangle]
pub unsafe extern "C" fn barge_set_max_tree_dirs(h: *mut barge_h, dirs: usize) -> c_int {
    boundary("barge_set_max_tree_dirs", || {
        // SAFETY: h per this function's contract.
        unsafe {
            with_handle(h, |hd| {
                hd.set_max_tree_dirs(dirs);
                Ok(0)
            })
        }
    })
}

/// Keep the data of an interrupted `barge_upload` or `barge_download` for
/// a later attempt (1), or leave nothing partial (0, the default). When on,
/// a cancelled or failed transfer keeps what it moved in
/// `.NAME.barge-partial` in the destination directory, never under NAME;
/// the next transfer to the same destination continues after it once the
/// helper has verified it against the source's prefix with a checksum,
/// and starts over when they differ. PROGRESS then counts the bytes this
/// call moves. Applies to path transfers of regular files only.
#[no_mangle]
pub unsafe extern "C" fn barge_set_keep_partial(h: *mut barge_h, enable: c_int) -> c_int {
    boundary("barge_set_keep_partial", || {
        // SAFETY: h per this function's contract.
        unsafe {
            with_handle(h, |hd| {
                hd.set_keep_partial(enable != 0);
                Ok(0)
            })
        }
    })
}

/// The entries that failed in the last `barge_copy_in` or `barge_copy_out`
/// on this handle (in keep-going mode; none when it succeeded or stopped
/// at an error). On success, `*errors` is an array of `*count` entries the
/// caller owns and frees with `barge_free_path_errors(*errors, *count)`;
/// no failures give `*errors == NULL, *count == 0`.
#[no_mangle]
pub unsafe extern "C" fn barge_get_tree_errors(
    h: *mut barge_h,
    errors: *mut *mut barge_path_error,
    count: *mut usize,
) -> c_int {
    boundary("barge_get_tree_errors", || {
        let errors = arg_out(errors, "errors")?;
        let count = arg_out(count, "count")?;
        // SAFETY: h per this function's contract.
        let handle = unsafe { handle_ref(h) }?;
        let kept: Vec<PathError> = handle
            .tree_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let array: Vec<barge_path_error> = kept
            .iter()
            .map(|e| {
                let path = e.path.as_os_str().as_bytes();
                barge_path_error {
                    path: c_string(path).into_raw(),
                    path_len: path.len(),
                    err: e.errno,
                    message: c_string(e.message.as_bytes()).into_raw(),
                }
            })
            .collect();
        let n = array.len();
        let ptr = if n == 0 {
            std::ptr::null_mut()
        } else {
            Box::into_raw(array.into_boxed_slice()).cast::<barge_path_error>()
        };
        // SAFETY: both out-pointers were checked non-NULL; the caller
        // provides writable storage per this function's contract.
        unsafe {
            *errors = ptr;
            *count = n;
        }
        Ok(0)
    })
}

/// Free an array from `barge_get_tree_errors`, with the count it gave.
/// NULL does nothing.
#[no_mangle]
pub unsafe extern "C" fn barge_free_path_errors(errors: *mut barge_path_error, count: usize) {
    guarded(|| {
        if errors.is_null() {
            return;
        }
        // SAFETY: errors and count come from barge_get_tree_errors, which
        // made the array from a boxed slice of exactly count entries.
        let array = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(errors, count)) };
        for e in array.iter() {
            // SAFETY: both strings came from CString::into_raw above and are
            // freed once, here.
            unsafe {
                drop(CString::from_raw(e.path));
                drop(CString::from_raw(e.message));
            }
        }
    })
}
