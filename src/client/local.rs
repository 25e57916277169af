//! The local end of a transfer: a file, FIFO, socket or device that is read
//! or written without ever blocking the operation's wait.
//!
//! - Regular files are read and written directly. Disk I/O does not wait
//!   for a peer.
//! - Sockets use `recv`/`send` with `MSG_DONTWAIT` (and `MSG_NOSIGNAL`), so
//!   the caller's fd flags are never changed.
//! - Pipes, FIFOs, ttys and devices are reopened through `/proc/self/fd/N`.
//!   That gives barge its own open file description, which can be made
//!   non-blocking without touching the caller's. Where that fails, barge
//!   polls before every read, and writes at most `PIPE_BUF` bytes after each
//!   POLLOUT, which a pipe accepts without blocking.
//!
//! A download to a path goes where [`destination`] says: a regular file is
//! replaced atomically (see `atomic_file`); an existing FIFO or device,
//! directly or through symlinks, is opened by [`open_special`] and written
//! into, never replaced.
//!
//! Writes to pipes can raise SIGPIPE. [`SigpipeGuard`] blocks it for the
//! calling thread during a transfer, and consumes a SIGPIPE that barge
//! itself raised, so the caller never sees one.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::cancel::CancelState;
use crate::error::Error;
use crate::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Regular,
    Socket,
    /// Our own non-blocking open file description.
    Reopened,
    /// The caller's blocking description: poll first, write small.
    Polled,
}

pub(crate) struct LocalFile<'a> {
    fd: RawFd,
    kind: Kind,
    /// A FIFO or pipe: a read of 0 bytes is the end only once a writer has
    /// come and gone (see [`LocalFile::read`]).
    fifo: bool,
    /// Keeps the fd open when barge opened or reopened it.
    _owned: Option<OwnedFd>,
    _borrow: std::marker::PhantomData<BorrowedFd<'a>>,
}

/// What an `fstat` of the local end says about the transfer.
pub(crate) struct LocalInfo {
    pub size: Option<u64>,
    pub mode: u32,
}

impl<'a> LocalFile<'a> {
    /// Open a local path to read from. FIFOs open without waiting for a
    /// writer.
    pub fn open_source(path: &std::path::Path) -> io::Result<(LocalFile<'static>, LocalInfo)> {
        let c = path_cstring(path)?;
        let fd = sys::openat(
            sys::cwd(),
            &c,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )?;
        let st = fstat(fd.as_raw_fd())?;
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::Regular,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFDIR => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
            _ => Kind::Reopened,
        };
        let info = info_of(&st);
        Ok((
            LocalFile {
                fd: fd.as_raw_fd(),
                kind,
                fifo: is_fifo(&st),
                _owned: Some(fd),
                _borrow: std::marker::PhantomData,
            },
            info,
        ))
    }

    /// Use a caller's fd. `write` says which direction the transfer uses.
    pub fn from_fd(fd: BorrowedFd<'a>, write: bool) -> io::Result<(LocalFile<'a>, LocalInfo)> {
        let st = fstat(fd.as_raw_fd())?;
        let info = info_of(&st);
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::Regular,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFDIR => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
            _ => {
                if let Some(own) = reopen_nonblocking(fd.as_raw_fd(), write) {
                    return Ok((
                        LocalFile {
                            fd: own.as_raw_fd(),
                            kind: Kind::Reopened,
                            fifo: is_fifo(&st),
                            _owned: Some(own),
                            _borrow: std::marker::PhantomData,
                        },
                        info,
                    ));
                }
                Kind::Polled
            }
        };
        Ok((
            LocalFile {
                fd: fd.as_raw_fd(),
                kind,
                fifo: is_fifo(&st),
                _owned: None,
                _borrow: std::marker::PhantomData,
            },
            info,
        ))
    }

    /// The fd, when it is a regular file (which the fast path can pass to
    /// the helper).
    pub fn regular_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: self.fd stays open as long as self (owned or borrowed).
        (self.kind == Kind::Regular).then(|| unsafe { BorrowedFd::borrow_raw(self.fd) })
    }

    /// The fd and events to poll before the next read or write, or `None`
    /// when the file is always ready (regular files).
    pub fn poll_for(&self, write: bool) -> Option<(RawFd, libc::c_short)> {
        match self.kind {
            Kind::Regular => None,
            _ => Some((self.fd, if write { libc::POLLOUT } else { libc::POLLIN })),
        }
    }

    /// Whether every read or write must wait for poll to report the fd
    /// ready first (the caller's own blocking pipe).
    pub fn needs_poll_before_io(&self) -> bool {
        self.kind == Kind::Polled
    }

    /// Whether a write may raise SIGPIPE (pipes and FIFOs).
    pub fn may_raise_sigpipe(&self) -> bool {
        matches!(self.kind, Kind::Reopened | Kind::Polled)
    }

    /// Read some bytes. `Ok(None)`: nothing available now; poll first.
    /// `Ok(Some(0))`: end of file.
    pub fn read(&mut self, buf: &mut [u8], polled_ready: bool) -> io::Result<Option<usize>> {
        if self.kind == Kind::Polled && !polled_ready {
            return Ok(None);
        }
        loop {
            // SAFETY: reads into a live mutable slice of the given length.
            let n = unsafe {
                match self.kind {
                    Kind::Socket => libc::recv(
                        self.fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    ),
                    _ => libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()),
                }
            };
            if n == 0 && self.fifo && !self.writer_has_gone() {
                // A FIFO that no writer has opened yet reads as empty;
                // `cat` would wait for one, and so does barge: poll
                // reports the FIFO only once a writer has come.
                return Ok(None);
            }
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            match sys::errno() {
                libc::EINTR => continue,
                libc::EAGAIN => return Ok(None),
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }

    /// After a read of 0 bytes from a FIFO: whether that is its end. Linux
    /// reports POLLHUP on a FIFO's read end only after a writer has opened
    /// and closed it, never while none has come yet. POLLIN means a writer
    /// came and wrote since the read: read again.
    fn writer_has_gone(&self) -> bool {
        let mut pfd = sys::pollfd(self.fd, libc::POLLIN);
        // SAFETY: one live pollfd; zero timeout.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        r > 0 && pfd.revents & libc::POLLHUP != 0 && pfd.revents & libc::POLLIN == 0
    }

    /// Write some bytes. `Ok(None)`: no room now; poll first.
    pub fn write(&mut self, buf: &[u8], polled_ready: bool) -> io::Result<Option<usize>> {
        let buf = match self.kind {
            Kind::Polled if !polled_ready => return Ok(None),
            // A pipe with POLLOUT takes PIPE_BUF bytes without blocking.
            Kind::Polled => &buf[..buf.len().min(libc::PIPE_BUF)],
            _ => buf,
        };
        // SAFETY: writes from a live slice of the given length.
        sys::nonblocking(|| unsafe {
            match self.kind {
                Kind::Socket => libc::send(
                    self.fd,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                ),
                _ => libc::write(self.fd, buf.as_ptr().cast(), buf.len()),
            }
        })
    }
}

/// Where a download to a local path writes (docs/PROTOCOL.md, "Special
/// files at the destination").
pub(crate) enum Destination {
    /// The entry `name` in `dir` is replaced atomically: a regular file,
    /// nothing yet, or something the final rename refuses (a directory).
    Replace { dir: OwnedFd, name: Vec<u8> },
    /// An existing FIFO or device, reached through `path`, is opened and
    /// written into, as `cp` does; never replaced.
    Special { path: PathBuf },
}

/// Symlinks followed at the final name before giving `ELOOP`, as the
/// kernel does.
const MAX_SYMLINKS: u32 = 40;

/// Where a download to `path` writes. A symlink at the final name is
/// followed, as `cp` does: the regular file it leads to is replaced in its
/// own directory (the link stays a link), and a FIFO or device it leads to
/// is written into. A dangling symlink or a socket is an error, and
/// nothing is created.
pub(crate) fn destination(path: &Path) -> Result<Destination, Error> {
    let mut cur = path.to_path_buf();
    let mut followed = 0;
    loop {
        let st = match std::fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && followed > 0 => {
                return Err(Error::Local {
                    errno: libc::ENOENT,
                    message: format!(
                        "not writing through dangling symlink {} (it leads to {}, which does not exist)",
                        path.display(),
                        cur.display()
                    ),
                });
            }
            // Nothing there (or nothing that can be examined): a new file,
            // whose creation reports any error.
            Err(_) => return replace(&cur),
        };
        let kind = st.file_type();
        if kind.is_symlink() {
            followed += 1;
            if followed > MAX_SYMLINKS {
                let e = io::Error::from_raw_os_error(libc::ELOOP);
                return Err(Error::local(format!("follow {}", path.display()), e));
            }
            let target = std::fs::read_link(&cur)
                .map_err(|e| Error::local(format!("read symlink {}", cur.display()), e))?;
            if is_magic_link(&cur, &target) {
                // A /proc magic link (/dev/stdout -> /proc/self/fd/1 ->
                // pipe:[…]): only the kernel can follow it. What it opens
                // is written into.
                return Ok(Destination::Special {
                    path: path.to_path_buf(),
                });
            }
            cur = match cur.parent() {
                Some(dir) => dir.join(&target),
                None => target,
            };
            continue;
        }
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
            return Ok(Destination::Special { path: cur });
        }
        if kind.is_socket() {
            return Err(Error::Local {
                errno: libc::ENXIO,
                message: format!(
                    "{}: a socket cannot be opened for writing (no such device or address)",
                    cur.display()
                ),
            });
        }
        return replace(&cur);
    }
}

fn replace(path: &Path) -> Result<Destination, Error> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::local(path.display(), io::Error::from_raw_os_error(libc::EISDIR)))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let c = path_cstring(dir).map_err(|e| Error::local(dir.display(), e))?;
    let fd = sys::openat(sys::cwd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(|e| Error::local(format!("open directory {}", dir.display()), e))?;
    Ok(Destination::Replace {
        dir: fd,
        name: name.as_bytes().to_vec(),
    })
}

/// Whether the symlink `link` with text `target` is a procfs magic link,
/// whose text is no path (`pipe:[1234]`, `socket:[…]`, `anon_inode:…`).
fn is_magic_link(link: &Path, target: &Path) -> bool {
    let bytes = target.as_os_str().as_bytes();
    if bytes.first() == Some(&b'/') || !bytes.contains(&b':') {
        return false;
    }
    let Some(dir) = link.parent() else {
        return false;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(c) = path_cstring(dir) else {
        return false;
    };
    let mut sfs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c is NUL-terminated and sfs is a writable statfs buffer.
    if unsafe { libc::statfs(c.as_ptr(), sfs.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs succeeded, so it filled the buffer.
    let f_type = unsafe { sfs.assume_init() }.f_type;
    // The statfs word is i32 on some architectures.
    #[allow(clippy::unnecessary_cast)]
    let on_proc = f_type as i64 == PROC_SUPER_MAGIC;
    on_proc
}

/// procfs's `f_type`.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// Open the special file a download writes into: non-blocking, so that
/// neither the open nor a write ever waits without seeing `cancel`.
///
/// Opening a FIFO for writing waits for a reader, as `cp` would. With
/// `O_NONBLOCK` the open fails with `ENXIO` while there is none; it is
/// tried again after a poll of the cancel fd whose timeout grows from 1 to
/// 50 ms (nothing signals a reader's arrival to a process without the
/// FIFO open). A cancel ends the wait with [`Error::Cancelled`].
pub(crate) fn open_special(path: &Path, cancel: &CancelState) -> Result<LocalFile<'static>, Error> {
    let name = path.display();
    let c = path_cstring(path).map_err(|e| Error::local(&name, e))?;
    let mut wait_ms = 1;
    let fd = loop {
        if cancel.is_requested() {
            return Err(Error::Cancelled);
        }
        let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        match sys::openat(sys::cwd(), &c, flags, 0) {
            Ok(fd) => break fd,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && is_fifo_path(&c) => {
                let mut pfd = sys::pollfd(cancel.wake_fd().as_raw_fd(), libc::POLLIN);
                // SAFETY: one live pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
                if r > 0 && cancel.settle_wake() {
                    return Err(Error::Cancelled);
                }
                wait_ms = (wait_ms * 2).min(50);
            }
            Err(e) => return Err(Error::local(format!("open {name}"), e)),
        }
    };
    let st = fstat(fd.as_raw_fd()).map_err(|e| Error::local(format!("examine {name}"), e))?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => {}
        _ => {
            // Replaced by something else between the look and the open.
            return Err(Error::Local {
                errno: libc::EAGAIN,
                message: format!("{name} changed while it was being opened; try again"),
            });
        }
    }
    Ok(LocalFile {
        fd: fd.as_raw_fd(),
        kind: Kind::Reopened,
        fifo: is_fifo(&st),
        _owned: Some(fd),
        _borrow: std::marker::PhantomData,
    })
}

/// Whether `path` (followed) is a FIFO.
fn is_fifo_path(path: &CStr) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: path is NUL-terminated and st is a writable stat buffer.
    let r = unsafe { libc::stat(path.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: stat succeeded, so it filled the buffer.
    r == 0 && is_fifo(&unsafe { st.assume_init() })
}

fn reopen_nonblocking(fd: RawFd, write: bool) -> Option<OwnedFd> {
    let path = CString::new(format!("/proc/self/fd/{fd}")).ok()?;
    let access = if write {
        libc::O_WRONLY
    } else {
        libc::O_RDONLY
    };
    // SAFETY: path is NUL-terminated; the result is checked.
    let r = unsafe {
        libc::open(
            path.as_ptr(),
            access | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if r < 0 {
        return None;
    }
    // SAFETY: a new fd owned by nobody else.
    let own = unsafe { OwnedFd::from_raw_fd(r) };
    // Only keep it if it is the same file (a FIFO reopened by path could
    // in theory be a different one).
    match (fstat(fd), fstat(r)) {
        (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino => Some(own),
        _ => None,
    }
}

pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: callers pass an fd that is open for the call.
    sys::fstat(unsafe { BorrowedFd::borrow_raw(fd) })
}

fn is_fifo(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFIFO
}

fn info_of(st: &libc::stat) -> LocalInfo {
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    LocalInfo {
        size: regular.then_some(st.st_size as u64),
        mode: st.st_mode,
    }
}

pub(crate) fn path_cstring(path: &std::path::Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Blocks SIGPIPE in the calling thread while it lives. A SIGPIPE that
/// barge's own writes raised is consumed before the mask is restored; one
/// that was already pending is left for the caller.
pub(crate) struct SigpipeGuard {
    old: libc::sigset_t,
    was_pending: bool,
    pub raised: bool,
}

impl SigpipeGuard {
    pub fn new() -> SigpipeGuard {
        // SAFETY: sigset_t values are initialised by sigemptyset before use;
        // pthread_sigmask and sigpending write only into the given sets.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGPIPE);
            libc::sigemptyset(&mut pending);
            libc::sigpending(&mut pending);
            let was_pending = libc::sigismember(&pending, libc::SIGPIPE) == 1;
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            SigpipeGuard {
                old,
                was_pending,
                raised: false,
            }
        }
    }
}

impl Drop for SigpipeGuard {
    fn drop(&mut self) {
        // SAFETY: as in new(); sigtimedwait with a zero timeout only takes
        // a pending SIGPIPE and never blocks.
        unsafe {
            if self.raised && !self.was_pending {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGPIPE);
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) < 0
                    && sys::errno() == libc::EINTR
                {}
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two fds.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn flags(fd: RawFd) -> i32 {
        // SAFETY: fcntl on an open fd.
        unsafe { libc::fcntl(fd, libc::F_GETFL) }
    }

    #[test]
    fn empty_pipe_read_does_not_block_and_callers_flags_are_unchanged() {
        let (r, _w) = pipe();
        let before = flags(r.as_raw_fd());
        let (mut lf, info) = LocalFile::from_fd(r.as_fd(), false).unwrap();
        assert_eq!(info.size, None);
        let mut buf = [0u8; 16];
        assert!(lf.read(&mut buf, true).unwrap().is_none());
        assert_eq!(flags(r.as_raw_fd()), before);
        assert_eq!(before & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn full_pipe_write_does_not_block() {
        let (_r, w) = pipe();
        let (mut lf, _) = LocalFile::from_fd(w.as_fd(), true).unwrap();
        let big = vec![7u8; 1 << 20];
        let mut total = 0;
        while let Some(n) = lf.write(&big, true).unwrap() {
            total += n;
        }
        assert!(total > 0 && total < big.len());
    }

    fn sigpipe_pending() -> bool {
        // SAFETY: sigpending writes into a live, initialised set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigpending(&mut set);
            libc::sigismember(&set, libc::SIGPIPE) == 1
        }
    }

    #[test]
    fn write_to_closed_pipe_gives_epipe_and_the_guard_consumes_sigpipe() {
        let (r, w) = pipe();
        drop(r);
        let mut guard = SigpipeGuard::new();
        let (mut lf, _) = LocalFile::from_fd(w.as_fd(), true).unwrap();
        let e = lf.write(b"x", true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
        assert!(
            sigpipe_pending(),
            "the write raised SIGPIPE, held by the mask"
        );
        guard.raised = true;
        drop(guard);
        assert!(!sigpipe_pending(), "the guard took the SIGPIPE it caused");
    }
}
