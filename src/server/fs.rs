//! The `*at` file system calls the requests need, on fds the resolver
//! opened. Each returns `io::Error` with the raw errno.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};

use crate::sys::cvt;
use crate::wire::StatRecord;

/// procfs's `f_type`, for telling magic links from ordinary symlinks.
pub(super) const PROC_SUPER_MAGIC: i64 = 0x9fa0;

pub(super) use crate::sys::fstat;

pub(super) use crate::sys::lstat_at;

// nlink_t is u32 on some architectures.
#[allow(clippy::unnecessary_cast)]
pub(super) fn stat_record(st: &libc::stat) -> StatRecord {
    StatRecord {
        size: st.st_size as u64,
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: st.st_nlink as u64,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
    }
}

pub(super) fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(super) fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

pub(super) fn is_regular(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

pub(super) fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: name is NUL-terminated; dir is open.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

pub(super) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: name is NUL-terminated; dir is open.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

pub(super) fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated; both dirs are open.
    cvt(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
        )
    })?;
    Ok(())
}

/// The target of the symlink an `O_PATH | O_NOFOLLOW` fd refers to.
pub(super) fn read_link_fd(link: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    loop {
        // SAFETY: c"" is NUL-terminated; buf is writable for its length.
        // An empty path reads the link the fd itself refers to.
        let n = unsafe {
            libc::readlinkat(
                link.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        // Possibly truncated: try again with more room.
        buf.resize(buf.len() * 2, 0);
    }
}

/// The `f_type` of the file system an fd is on.
// The statfs word is i32 on some architectures.
#[allow(clippy::unnecessary_cast)]
pub(super) fn fs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let mut sfs = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: sfs is a writable statfs buffer; fstatfs works on O_PATH fds.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), sfs.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded, so it filled the buffer.
    Ok(unsafe { sfs.assume_init() }.f_type as i64)
}

/// A directory being read with `readdir`.
pub(super) struct DirStream {
    dir: *mut libc::DIR,
}

impl DirStream {
    pub fn new(fd: OwnedFd) -> io::Result<DirStream> {
        let raw = fd.into_raw_fd();
        // SAFETY: raw is an open directory fd whose ownership passes to the
        // DIR on success.
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so raw is still ours to close.
            unsafe { libc::close(raw) };
            return Err(e);
        }
        Ok(DirStream { dir })
    }

    /// The directory's fd, for `*at` calls on its entries.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the DIR owns this fd and keeps it open while self lives.
        unsafe { BorrowedFd::borrow_raw(libc::dirfd(self.dir)) }
    }

    /// The next entry's name, `None` at the end.
    pub fn next_name(&mut self) -> io::Result<Option<CString>> {
        // readdir reports errors only through errno, so clear it first.
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: self.dir is a live DIR from fdopendir.
        let ent = unsafe { libc::readdir(self.dir) };
        if ent.is_null() {
            return match crate::sys::errno() {
                0 => Ok(None),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        // SAFETY: readdir returned a valid entry whose d_name is
        // NUL-terminated; it stays valid until the next readdir call, and
        // we copy it out before then.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        Ok(Some(name.to_owned()))
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: self.dir came from fdopendir and is closed only here.
        unsafe { libc::closedir(self.dir) };
    }
}
