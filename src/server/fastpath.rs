//! The fast path (`docs/PROTOCOL.md`, "The fast path"): when the client is
//! the helper's own parent on the same kernel, it passes its local file as
//! an fd with the request (PUT_FD, GET_FD), and the helper copies between
//! that fd and the remote file with `copy_file_range(2)`: no byte crosses
//! the channel or user space.
//!
//! The copy runs in steps of [`STEP`] bytes. Before each step the helper
//! looks for the client's STOP without blocking, so a cancel is seen
//! within one step. After each step it sends COPIED with the running
//! total. Where the kernel refuses `copy_file_range` (another filesystem
//! type, a device), the rest is copied with `pread`/`pwrite` in the same
//! steps; the client does not notice.
//!
//! This file is a child module of `session`: it adds the two requests'
//! handlers to [`Session`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::{show, Session};
use crate::atomic_file::AtomicFile;
use crate::discard::{self, Discard};
use crate::server::fs;
use crate::server::{Failure, ServeEnd};
use crate::wire::{Frame, FEATURE_FD_PASSING, HEADER_LEN, MAX_CHUNK, UNKNOWN_SIZE};

/// Bytes copied between two looks for a STOP: small enough that a cancel
/// waits well under a millisecond on page-cache copies, large enough that
/// the per-step system calls cost nothing measurable.
pub(crate) const STEP: usize = 1 << 20;

/// A COPIED goes out after this many bytes (and at the end), so the
/// client wakes up a few hundred times per GiB, not once per step.
const COPIED_EVERY: u64 = 4 << 20;

/// How a copy ended.
enum CopyEnd {
    /// End of the source after this many bytes.
    Done(u64),
    /// The client sent STOP.
    Stopped,
    /// A read or write failed.
    Failed(&'static str, Failure),
}

impl Session<'_, '_> {
    /// The feature bits to grant for the `offered` ones. The fast path is
    /// granted only when the client is this process's parent on the same
    /// kernel (see [`client_is_parent`]), and when no transfer faults are
    /// set, since those act on stream offsets.
    pub(super) fn grant_features(&mut self, offered: u64) -> u64 {
        let mut granted = 0;
        if offered & FEATURE_FD_PASSING != 0
            && self.opts.fault.transfer.is_empty()
            && client_is_parent(self.chan.input(), self.chan.output())
        {
            self.chan.receive_fds();
            granted |= FEATURE_FD_PASSING;
        }
        granted
    }

    /// The fd that came with a PUT_FD or GET_FD, if the helper can use it
    /// (a regular file); otherwise the ERROR `EOPNOTSUPP` that tells the
    /// client to send the transfer as a stream instead.
    fn passed_file(
        &mut self,
        serial: u64,
        what: &str,
        path: &[u8],
    ) -> Result<Option<OwnedFd>, ServeEnd> {
        let fd = self.chan.take_fd();
        let why = match fd {
            _ if self.opts.fault.refuse_fd => "refused by a test fault",
            None => "no file descriptor came with the request",
            Some(fd) => match fs::fstat(fd.as_fd()) {
                Ok(st) if fs::is_regular(&st) => return Ok(Some(fd)),
                Ok(_) => "the passed file is not a regular file",
                Err(_) => "the passed file cannot be examined",
            },
        };
        let message = format!("{what} {}: {why}; send it as a stream", show(path));
        self.reply_error(serial, libc::EOPNOTSUPP, message)?;
        Ok(None)
    }

    /// The final ERROR for an upload cut short, then discard its file.
    /// Closing it frees its page cache, which takes milliseconds for a
    /// large file, and the file can never appear, so neither the client's
    /// cancel nor its next request waits for it (see `discard`). A file
    /// under a hidden name is unlinked first, so that none is left once the
    /// client has the reply.
    pub(super) fn reply_then_discard(
        &mut self,
        file: AtomicFile,
        serial: u64,
        errno: i32,
        message: String,
    ) -> Result<(), ServeEnd> {
        let fd = file.abandon();
        let sent = self.reply_error(serial, errno, message);
        discard::later(Discard::Close(fd), None);
        sent
    }

    /// PUT_FD: copy the client's file into a new remote file that appears
    /// only when the copy is complete.
    pub(super) fn put_fd(
        &mut self,
        serial: u64,
        mode: u32,
        size: u64,
        path: &[u8],
    ) -> Result<(), ServeEnd> {
        let Some(src) = self.passed_file(serial, "PUT_FD", path)? else {
            return Ok(());
        };
        let created = match self.upload_dest(path) {
            Ok(super::dest::UploadDest::Replace(p)) => self.upload_file(p, mode),
            // Written into by the stream path, where a STOP or a hang-up
            // is seen at every chunk: refused before any progress, which
            // sends the client there.
            Ok(super::dest::UploadDest::Special(_)) => {
                let message = format!(
                    "PUT_FD {}: the destination is a FIFO or device; send it as a stream",
                    show(path)
                );
                return self.reply_error(serial, libc::EOPNOTSUPP, message);
            }
            Err(f) => Err(f),
        };
        let file = match created {
            Ok(f) => f,
            Err(f) => return self.fail(serial, "open", path, f),
        };
        match self.copy_steps(serial, src.as_fd(), file.fd(), "PUT_FD")? {
            CopyEnd::Done(total) if size != UNKNOWN_SIZE && total != size => {
                drop(file);
                let message = format!(
                    "upload of {}: the source changed size during the copy ({size} bytes when opened, {total} copied)",
                    show(path)
                );
                self.reply_error(serial, libc::EBADMSG, message)
            }
            CopyEnd::Done(_) => match file.commit() {
                Ok(()) => self.send(&Frame::Ok, serial),
                Err(e) => self.fail(serial, "commit", path, e.into()),
            },
            CopyEnd::Stopped => {
                let message = format!("upload of {} cancelled by the client", show(path));
                self.reply_then_discard(file, serial, libc::ECANCELED, message)
            }
            CopyEnd::Failed(verb, f) => {
                drop(file);
                self.fail(serial, verb, path, f)
            }
        }
    }

    /// GET_FD: SOURCE_INFO, then copy the remote file into the client's
    /// fd (its uncommitted destination), then OK.
    pub(super) fn get_fd(&mut self, serial: u64, path: &[u8]) -> Result<(), ServeEnd> {
        let Some(dst) = self.passed_file(serial, "GET_FD", path)? else {
            return Ok(());
        };
        // Look at the type through O_PATH first: opening a FIFO to read,
        // even briefly, would meet (and lose) a writer meant for the
        // stream that follows.
        let regular = self
            .resolver
            .open(path, libc::O_PATH)
            .ok()
            .and_then(|fd| fs::fstat(fd.as_fd()).ok())
            .is_none_or(|st| fs::is_regular(&st));
        if !regular {
            return self.refuse_non_regular(serial, path);
        }
        let (src, st) = match self.open_download(path) {
            // Replaced by a FIFO since the look: still refused.
            Ok((_, st)) if !fs::is_regular(&st) => return self.refuse_non_regular(serial, path),
            Ok(f) => f,
            Err(f) => return self.fail(serial, "open", path, f),
        };
        let size = st.st_size as u64;
        self.send(
            &Frame::SourceInfo {
                size,
                mode: st.st_mode,
            },
            serial,
        )?;
        let sent = match self.copy_steps(serial, src.as_fd(), dst.as_fd(), "GET_FD")? {
            CopyEnd::Done(_) => return self.send(&Frame::Ok, serial),
            CopyEnd::Stopped => {
                let message = format!("download of {} cancelled by the client", show(path));
                self.reply_error(serial, libc::ECANCELED, message)
            }
            CopyEnd::Failed(verb, f) => self.fail(serial, verb, path, f),
        };
        // The client discards its uncommitted file on this reply. Freeing
        // the pages copied so far takes milliseconds for a large file; the
        // discard thread empties it while we still hold it, so the
        // client's close is cheap and its cancel returns at once.
        discard::later(Discard::Empty(dst), None);
        sent
    }

    /// A FIFO or device reads only forward and may never end: the stream
    /// path serves it, where a STOP is seen at every chunk.
    fn refuse_non_regular(&mut self, serial: u64, path: &[u8]) -> Result<(), ServeEnd> {
        let message = format!(
            "GET_FD {}: not a regular file; send it as a stream",
            show(path)
        );
        self.reply_error(serial, libc::EOPNOTSUPP, message)
    }

    /// Copy `src` to `dst` from offset 0 to the end of `src`, one [`STEP`]
    /// at a time, with a COPIED after each step and a last one at the end.
    fn copy_steps(
        &mut self,
        serial: u64,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        during: &str,
    ) -> Result<CopyEnd, ServeEnd> {
        let mut total: u64 = 0;
        let mut reported: u64 = 0;
        let mut in_kernel = true;
        loop {
            if self.stop_requested(serial, during)? {
                return Ok(CopyEnd::Stopped);
            }
            let buf = &mut self.chunk[HEADER_LEN..HEADER_LEN + (MAX_CHUNK as usize).min(STEP)];
            let n = match copy_step(src, dst, total, &mut in_kernel, buf) {
                Ok(n) => n,
                Err((verb, e)) => return Ok(CopyEnd::Failed(verb, e.into())),
            };
            total += n as u64;
            if n == 0 || total - reported >= COPIED_EVERY {
                self.send(&Frame::Copied { total }, serial)?;
                reported = total;
            }
            if n == 0 {
                return Ok(CopyEnd::Done(total));
            }
        }
    }
}

/// Copy up to one step at `offset` (the same in both files). 0 at the end
/// of `src`. Falls back from `copy_file_range` to `pread`/`pwrite` for good
/// when the kernel refuses it for this pair of files.
fn copy_step(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    offset: u64,
    in_kernel: &mut bool,
    buf: &mut [u8],
) -> Result<usize, (&'static str, io::Error)> {
    while *in_kernel {
        let mut off_in = offset as libc::loff_t;
        let mut off_out = offset as libc::loff_t;
        // SAFETY: two open fds and two live offsets; no other pointers.
        let r = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                STEP,
                0,
            )
        };
        if r > 0 {
            return Ok(r as usize);
        }
        if r == 0 {
            // End of file, or a file whose size the kernel does not know
            // (some procfs and sysfs files): a read tells which.
            *in_kernel = false;
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::EPERM) => {
                *in_kernel = false;
            }
            _ => return Err(("copy", e)),
        }
    }
    let n = loop {
        // SAFETY: buf is writable for its whole length.
        let r = unsafe {
            libc::pread(
                src.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset as libc::off_t,
            )
        };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(("read", e));
        }
    };
    let mut done = 0;
    while done < n {
        // SAFETY: writes from the filled part of buf.
        let r = unsafe {
            libc::pwrite(
                dst.as_raw_fd(),
                buf[done..n].as_ptr().cast(),
                n - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if r > 0 {
            done += r as usize;
            continue;
        }
        let e = if r == 0 {
            io::Error::from_raw_os_error(libc::EIO)
        } else {
            io::Error::last_os_error()
        };
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(("write", e));
        }
    }
    Ok(n)
}

/// Whether the client is this process's parent on the same kernel: the
/// input and output are one Unix stream socket, and the process that
/// created its other end (SO_PEERCRED) is our parent with our uid. Through
/// ssh, sudo or a container runtime the peer is that launcher, or sits in
/// another pid namespace (where the parent reads as 0), so the check fails
/// and the transfer uses the stream path.
fn client_is_parent(input: BorrowedFd<'_>, output: BorrowedFd<'_>) -> bool {
    let same_file = match (fs::fstat(input), fs::fstat(output)) {
        (Ok(a), Ok(b)) => {
            a.st_dev == b.st_dev
                && a.st_ino == b.st_ino
                && a.st_mode & libc::S_IFMT == libc::S_IFSOCK
        }
        _ => false,
    };
    if !same_file {
        return false;
    }
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `domain`.
    let r = unsafe {
        libc::getsockopt(
            input.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || domain != libc::AF_UNIX {
        return false;
    }
    // SAFETY: a zeroed ucred is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            input.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: no pointers.
    let (parent, uid) = unsafe { (libc::getppid(), libc::getuid()) };
    r == 0 && parent > 1 && cred.pid == parent && cred.uid == uid
}
