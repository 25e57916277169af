//! Small wrappers over Linux system calls that std and nix do not cover the
//! way barge needs. Each returns `io::Error` with the raw errno.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Turn a -1 return into the thread's errno.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Set or clear O_NONBLOCK on an fd's open file description.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a borrowed, open fd; no pointers.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let new = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, new) })?;
    }
    Ok(())
}

/// `poll(2)` with a timeout that may be infinite (`None`). EINTR returns
/// `Ok(0)`, so callers re-check their flags and deadlines and loop.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = match timeout {
        None => -1,
        // Round up so a 0.3 ms remainder does not spin at timeout 0.
        Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
    };
    // SAFETY: fds is a valid slice of pollfd for its whole length.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// Time left until `deadline`, or `None` for no deadline.
pub fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// `openat2(2)`. Fails with ENOSYS on kernels before 5.6.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: mode as u64,
        resolve,
    };
    loop {
        // SAFETY: path is NUL-terminated; how is a live struct whose size is
        // passed with it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            // SAFETY: a new fd returned by the kernel, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        // RESOLVE_IN_ROOT resolution may ask for a retry when a rename
        // raced with it.
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// `openat(2)` with O_CLOEXEC added.
pub fn openat(dir: BorrowedFd<'_>, path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: path is NUL-terminated; the result is checked.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            path.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: a new fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The current directory as a borrowed fd, for `*at` calls.
pub fn cwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a valid "fd" for every *at call for the life of
    // the process; it is never closed.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

/// `pidfd_open(2)`; ENOSYS before Linux 5.3.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: no pointers; the result is checked.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd owned by nobody else; pidfds are always CLOEXEC.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Eight random hex digits for temporary names.
pub fn random_suffix() -> String {
    let mut v: u32 = 0;
    // SAFETY: writes at most 4 bytes into a live local.
    let n = unsafe { libc::getrandom((&mut v as *mut u32).cast(), 4, libc::GRND_NONBLOCK) };
    if n != 4 {
        // No entropy yet: mix the clock and pid, good enough for a name
        // that is created with O_EXCL and retried.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        v = t ^ std::process::id().rotate_left(16);
    }
    format!("{v:08x}")
}

/// Read this thread's errno.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `fstat` of an open fd (O_PATH fds included).
pub fn fstat(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<libc::stat> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a live, writable stat; fd is open.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// A pipe that payloads pass through on their way from a file's page
/// cache to a socket or pipe with splice(2): the pages move by reference,
/// without a copy through user space.
pub(crate) struct SplicePipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
}

impl SplicePipe {
    /// `None` when no pipe can be made; callers then write from memory.
    pub fn new() -> Option<SplicePipe> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        // 1 MiB: room for a whole payload of the default 256 KiB chunk
        // (and of any chunk up to 1 MiB), so one splice in and one out
        // usually move it; the default 64 KiB works, with more calls,
        // where the limit (/proc/sys/fs/pipe-max-size) is lower.
        // SAFETY: fcntl on a pipe we own; no pointers.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        Some(SplicePipe { read, write })
    }

    /// Splice up to `len` bytes of the regular file `file` from `offset`
    /// into the pipe, which the caller has emptied. Returns the bytes
    /// moved: 0 at the end of the file, or when the file cannot be
    /// spliced, which callers treat alike (the rest goes from memory).
    pub fn splice_in(&self, file: RawFd, offset: u64, len: usize) -> usize {
        let mut off = offset as libc::loff_t;
        loop {
            // SAFETY: splice between fds the caller holds; `off` is a live
            // loff_t.
            let r = unsafe {
                libc::splice(
                    file,
                    &mut off,
                    self.write.as_raw_fd(),
                    std::ptr::null_mut(),
                    len,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            if r >= 0 || errno() != libc::EINTR {
                return r.max(0) as usize;
            }
        }
    }
}

/// Run one non-blocking call until it is not interrupted: `Some(n)` for
/// its result, `None` when it would block (EAGAIN).
pub fn nonblocking(mut call: impl FnMut() -> libc::ssize_t) -> io::Result<Option<usize>> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        match errno() {
            libc::EINTR => {}
            libc::EAGAIN => return Ok(None),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Start a thread with every signal blocked, so that no signal meant for
/// the caller's threads is ever delivered to it. A new thread inherits its
/// creator's mask: block everything around the spawn, then restore ours.
pub(crate) fn spawn_with_signals_blocked<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<std::thread::JoinHandle<T>> {
    // SAFETY: sigset_t is plain data, filled by sigfillset before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid for writing and reading.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
    }
    let spawned = std::thread::Builder::new().name(name.into()).spawn(f);
    // SAFETY: `old` was filled by the call above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    spawned
}

/// `lstat` of `name` in `dir`.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: name is NUL-terminated and st is a writable stat buffer.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled the buffer.
    Ok(unsafe { st.assume_init() })
}

/// `readlinkat` of `name` in `dir`: the link's text, up to twice PATH_MAX
/// (longer is `ENAMETOOLONG`).
pub fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: name is NUL-terminated; buf is writable for its length.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if (n as usize) < buf.len() {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        if buf.len() >= libc::PATH_MAX as usize * 2 {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        buf.resize(buf.len() * 2, 0);
    }
}
