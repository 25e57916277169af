//! Transfers and remote file operations. Each is cancellable with
//! `barge_user_cancel`, and starts the helper if none runs.

use std::ffi::{c_char, c_int, CString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use super::error::FfiError;
use super::handle::{barge_h, with_handle};
use super::{arg_out, arg_path, boundary};
use crate::RemoteStat;

/// Metadata of a remote file.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct barge_stat {
    /// Size in bytes.
    pub size: u64,
    /// File type and permission bits, as in `st_mode` (S_ISDIR etc. apply).
    pub mode: u32,
    /// Nanoseconds of the modification time, 0 to 999999999.
    pub mtime_nsec: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Owner and group ids on the helper's side.
    pub uid: u32,
    pub gid: u32,
    /// Number of hard links.
    pub nlink: u64,
}

impl From<&RemoteStat> for barge_stat {
    fn from(s: &RemoteStat) -> barge_stat {
        barge_stat {
            size: s.size,
            mode: s.mode,
            mtime_nsec: s.mtime_nsec,
            mtime_sec: s.mtime_sec,
            uid: s.uid,
            gid: s.gid,
            nlink: s.nlink,
        }
    }
}

/// One entry of a remote directory listing, from `barge_list`.
#[repr(C)]
pub struct barge_dirent {
    /// The entry's name (no directory part), NUL-terminated; not UTF-8 in
    /// general. Owned by the array: freed by `barge_free_dirents`.
    pub name: *mut c_char,
    /// The length of `name` in bytes.
    pub name_len: usize,
    /// The entry itself; a symlink is reported as a symlink.
    pub st: barge_stat,
}

fn fd_arg<'a>(fd: c_int) -> Result<BorrowedFd<'a>, FfiError> {
    if fd < 0 {
        return Err(FfiError::new(libc::EBADF, format!("fd {fd} is negative")));
    }
    // SAFETY: fd is not -1. The caller keeps it open for the call, as the
    // API documents; the handle borrows it only for the call's length.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Upload the local file `local_path` to `remote_path`. The local file may
/// be any readable file (regular, FIFO, character device), read to end of
/// file. The remote file appears only when complete: after a cancel or an
/// error nothing partial is left, and an existing file is untouched.
#[no_mangle]
pub unsafe extern "C" fn barge_upload(
    h: *mut barge_h,
    local_path: *const c_char,
    remote_path: *const c_char,
) -> c_int {
    boundary("barge_upload", || {
        // SAFETY: the pointers per this function's contract.
        let local = unsafe { arg_path(local_path, "local_path") }?;
        // SAFETY: as above.
        let remote = unsafe { arg_path(remote_path, "remote_path") }?;
        // SAFETY: as above.
        unsafe { with_handle(h, |hd| Ok(hd.upload(local, remote)?)) }?;
        Ok(0)
    })
}

/// Download `remote_path` to the local file `local_path`. The local file
/// appears only when complete and verified: after a cancel or an error
/// nothing partial is left, and an existing file is untouched.
#[no_mangle]
pub unsafe extern "C" fn barge_download(
    h: *mut barge_h,
    remote_path: *const c_char,
    local_path: *const c_char,
) -> c_int {
    boundary("barge_download", || {
        // SAFETY: the pointers per this function's contract.
        let remote = unsafe { arg_path(remote_path, "remote_path") }?;
        // SAFETY: as above.
        let local = unsafe { arg_path(local_path, "local_path") }?;
        // SAFETY: as above.
        unsafe { with_handle(h, |hd| Ok(hd.download(remote, local)?)) }?;
        Ok(0)
    })
}

/// Upload everything readable from `fd` (until end of file) to
/// `remote_path`. `fd` may be a pipe or socket; it is neither closed nor
/// changed (its flags stay as they are). The remote file appears only when
/// complete. EBADF for a negative fd.
#[no_mangle]
pub unsafe extern "C" fn barge_upload_fd(
    h: *mut barge_h,
    fd: c_int,
    remote_path: *const c_char,
) -> c_int {
    boundary("barge_upload_fd", || {
        // SAFETY: the pointer per this function's contract.
        let remote = unsafe { arg_path(remote_path, "remote_path") }?;
        let fd = fd_arg(fd)?;
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.upload_fd(fd, remote)?)) }?;
        Ok(0)
    })
}

/// Download `remote_path` into `fd`, which may be a pipe or socket. `fd`
/// is neither closed nor changed. Bytes reach `fd` as they arrive, so after
/// an error or a cancel it may hold a prefix of the file. EBADF for a
/// negative fd.
#[no_mangle]
pub unsafe extern "C" fn barge_download_fd(
    h: *mut barge_h,
    remote_path: *const c_char,
    fd: c_int,
) -> c_int {
    boundary("barge_download_fd", || {
        // SAFETY: the pointer per this function's contract.
        let remote = unsafe { arg_path(remote_path, "remote_path") }?;
        let fd = fd_arg(fd)?;
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.download_fd(remote, fd)?)) }?;
        Ok(0)
    })
}

/// Metadata of `path`, following symlinks. `*out` is written only on
/// success.
#[no_mangle]
pub unsafe extern "C" fn barge_stat(
    h: *mut barge_h,
    path: *const c_char,
    out: *mut barge_stat,
) -> c_int {
    boundary("barge_stat", || {
        // SAFETY: the pointer per this function's contract.
        let path = unsafe { arg_path(path, "path") }?;
        let out = arg_out(out, "out")?;
        // SAFETY: h per this function's contract.
        let st = unsafe { with_handle(h, |hd| Ok(hd.stat(path)?)) }?;
        // SAFETY: out is non-NULL and writable per this function's contract.
        unsafe { out.write(barge_stat::from(&st)) };
        Ok(0)
    })
}

/// Create the remote directory `path` (mode 0777 less the helper's umask).
/// With `parents` nonzero, create missing parents too and accept an
/// existing directory.
#[no_mangle]
pub unsafe extern "C" fn barge_mkdir(
    h: *mut barge_h,
    path: *const c_char,
    parents: c_int,
) -> c_int {
    boundary("barge_mkdir", || {
        // SAFETY: the pointer per this function's contract.
        let path = unsafe { arg_path(path, "path") }?;
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.mkdir(path, parents != 0)?)) }?;
        Ok(0)
    })
}

/// Remove the remote file, symlink or empty directory `path`.
#[no_mangle]
pub unsafe extern "C" fn barge_remove(h: *mut barge_h, path: *const c_char) -> c_int {
    boundary("barge_remove", || {
        // SAFETY: the pointer per this function's contract.
        let path = unsafe { arg_path(path, "path") }?;
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.remove(path)?)) }?;
        Ok(0)
    })
}

/// Rename the remote entry `from` to `to`, replacing `to` if it exists.
#[no_mangle]
pub unsafe extern "C" fn barge_rename(
    h: *mut barge_h,
    from: *const c_char,
    to: *const c_char,
) -> c_int {
    boundary("barge_rename", || {
        // SAFETY: the pointers per this function's contract.
        let from = unsafe { arg_path(from, "from") }?;
        // SAFETY: as above.
        let to = unsafe { arg_path(to, "to") }?;
        // SAFETY: h per this function's contract.
        unsafe { with_handle(h, |hd| Ok(hd.rename(from, to)?)) }?;
        Ok(0)
    })
}

/// List the remote directory `path`, without "." and "..", in no
/// particular order. On success `*entries` points to an array of `*count`
/// entries that the caller owns and frees with
/// `barge_free_dirents(*entries, *count)`; an empty directory gives
/// `*entries == NULL` and `*count == 0`. `*entries` and `*count` are
/// written only on success. A listing past `barge_set_list_limits` fails
/// with E2BIG; a name from the helper that is empty, "." or "..", or
/// holds '/', fails with EPROTO.
#[no_mangle]
pub unsafe extern "C" fn barge_list(
    h: *mut barge_h,
    path: *const c_char,
    entries: *mut *mut barge_dirent,
    count: *mut usize,
) -> c_int {
    boundary("barge_list", || {
        // SAFETY: the pointer per this function's contract.
        let path = unsafe { arg_path(path, "path") }?;
        let entries = arg_out(entries, "entries")?;
        let count = arg_out(count, "count")?;
        // SAFETY: h per this function's contract.
        let list = unsafe { with_handle(h, |hd| Ok(hd.list(path)?)) }?;
        // The caller's copy is reserved fallibly: a listing within the
        // handle's limits may still not fit in memory, which is ENOMEM,
        // not an abort.
        let no_memory = || FfiError::new(libc::ENOMEM, "no memory for the listing's copy");
        let mut out = Vec::new();
        out.try_reserve_exact(list.len()).map_err(|_| no_memory())?;
        for e in &list {
            let bytes = e.name.as_bytes();
            let mut owned = Vec::new();
            let name = match owned.try_reserve_exact(bytes.len() + 1) {
                Ok(()) => {
                    owned.extend_from_slice(bytes);
                    // With room for the NUL already, this does not allocate.
                    CString::new(owned).map_err(|_| {
                        FfiError::new(libc::EPROTO, "the helper sent a name with a NUL byte")
                    })
                }
                Err(_) => Err(no_memory()),
            };
            let name = match name {
                Ok(n) => n,
                Err(err) => {
                    free_dirents(out);
                    return Err(err);
                }
            };
            out.push(barge_dirent {
                name_len: name.as_bytes().len(),
                name: name.into_raw(),
                st: barge_stat::from(&e.stat),
            });
        }
        let n = out.len();
        let array = if n == 0 {
            std::ptr::null_mut()
        } else {
            Box::into_raw(out.into_boxed_slice()).cast::<barge_dirent>()
        };
        // SAFETY: both are non-NULL and writable per this function's
        // contract.
        unsafe {
            entries.write(array);
            count.write(n);
        }
        Ok(0)
    })
}

fn free_dirents(entries: Vec<barge_dirent>) {
    for e in entries {
        if !e.name.is_null() {
            // SAFETY: every name was made by CString::into_raw in barge_list.
            drop(unsafe { CString::from_raw(e.name) });
        }
    }
}

/// Free an array from `barge_list`, with the count `barge_list` gave.
/// NULL is allowed and does nothing.
#[no_mangle]
pub unsafe extern "C" fn barge_free_dirents(entries: *mut barge_dirent, count: usize) {
    boundary("barge_free_dirents", || {
        if entries.is_null() || count == 0 {
            return Ok(());
        }
        // SAFETY: entries and count describe a boxed slice made by
        // barge_list, per this function's contract.
        let slice = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(entries, count)) };
        free_dirents(slice.into_vec());
        Ok(())
    })
}
