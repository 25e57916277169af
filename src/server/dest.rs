//! Where an upload lands (docs/PROTOCOL.md, "Special files at the
//! destination"), and uploads into special files.
//!
//! - A symlink at the final name is followed, as `cp` does, one link at a
//!   time: its text is joined to the link's directory and resolved again
//!   by the connection's [`Resolver`], so it stays within the root. A
//!   `/proc` magic link is not followed (ELOOP), as the resolver refuses
//!   them everywhere else.
//! - A regular file (or no entry) is replaced atomically in the directory
//!   that holds it: through a link, the link stays a link.
//! - An existing FIFO or device is opened and written into, never
//!   replaced. Opening a FIFO for writing waits for a reader; the helper
//!   retries a non-blocking open while watching its input for the client's
//!   hang-up. Writes wait for room the same way.
//! - A dangling symlink and a socket are refused, and nothing is created.
//!
//! A child module of `session`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::resolve::{Parent, MAX_SYMLINKS};
use super::{show, Incoming, Session};
use crate::server::{fs, Failure, ServeEnd};
use crate::wire::{Frame, StreamChecksum, HEADER_LEN};

/// Where an upload to a path writes.
pub(super) enum UploadDest {
    /// Replace the entry in `dir` atomically: a regular file, nothing yet,
    /// or something the final rename refuses (a directory).
    Replace(Parent),
    /// An existing FIFO or device: opened and written into.
    Special(Parent),
}

impl Session<'_, '_> {
    /// Where an upload to `path` writes, following symlinks at the final
    /// name within the root.
    pub(super) fn upload_dest(&self, path: &[u8]) -> Result<UploadDest, Failure> {
        let mut cur = path.to_vec();
        let mut followed = 0;
        loop {
            let p = self.resolver.parent(&cur)?;
            let st = match fs::lstat_at(p.dir.as_fd(), &p.name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && followed > 0 => {
                    return Err(Failure::new(
                        libc::ENOENT,
                        format!(
                            "not writing through dangling symlink (it leads to {}, which does not exist)",
                            show(&cur)
                        ),
                    ));
                }
                // Nothing there, or nothing that can be examined: creating
                // the new file reports any error.
                Err(_) => return Ok(UploadDest::Replace(p)),
            };
            match st.st_mode & libc::S_IFMT {
                libc::S_IFLNK => {}
                libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => return Ok(UploadDest::Special(p)),
                libc::S_IFSOCK => {
                    return Err(Failure::new(
                        libc::ENXIO,
                        format!(
                            "{} is a socket, which cannot be opened for writing",
                            show(&cur)
                        ),
                    ))
                }
                _ => return Ok(UploadDest::Replace(p)),
            }
            followed += 1;
            if followed > MAX_SYMLINKS {
                return Err(Failure::from_errno(libc::ELOOP));
            }
            let target = crate::sys::read_link_at(p.dir.as_fd(), &p.name)?;
            if fs::fs_type(p.dir.as_fd())? == fs::PROC_SUPER_MAGIC && target.contains(&b':') {
                return Err(Failure::new(
                    libc::ELOOP,
                    format!("{} is a /proc magic link, not followed", show(&cur)),
                ));
            }
            cur = join_link(&cur, &target);
        }
    }

    /// PUT into an existing FIFO or device: each payload is written into
    /// it as it comes. The FIFO is opened at the first DATA or END, so a
    /// refused request never opens it (its reader would see an empty
    /// stream). Not atomic: a failure or a cancel leaves what was written.
    pub(super) fn put_special(
        &mut self,
        serial: u64,
        path: &[u8],
        dest: Parent,
    ) -> Result<(), ServeEnd> {
        let mut out: Option<OwnedFd> = None;
        let mut sum = StreamChecksum::new();
        loop {
            let Some(incoming) = self.next_incoming()? else {
                return Err(ServeEnd::ChannelLost);
            };
            // The DATA payload's length, or END's count and checksum.
            let step = match incoming {
                Incoming::Data { serial: s, len } if s == serial => {
                    sum.update(&self.chunk[HEADER_LEN..HEADER_LEN + len]);
                    Err(len)
                }
                Incoming::End {
                    serial: s,
                    len,
                    checksum,
                } if s == serial => Ok((len, checksum)),
                Incoming::Cancel { serial: s } if s == serial => {
                    let message = format!(
                        "upload into {} cancelled by the client; {} bytes were written into it",
                        show(path),
                        sum.len()
                    );
                    return self.reply_error(serial, libc::ECANCELED, message);
                }
                Incoming::Stop { .. } => continue,
                other => {
                    return Err(self.unexpected(&other, &format!("during PUT serial {serial}")))
                }
            };
            if out.is_none() {
                match self.open_special(&dest)? {
                    Ok(fd) => out = Some(fd),
                    Err(f) => {
                        let message = format!("open {}: {}", show(path), f.reason);
                        return match step {
                            Ok(_) => self.reply_error(serial, f.errno, message),
                            Err(_) => self.refuse_upload(serial, f.errno, message),
                        };
                    }
                }
            }
            let fd = out.as_ref().expect("opened above");
            let (len, checksum) = match step {
                Ok(end) => end,
                Err(len) => {
                    // A FIFO whose reader left gives EPIPE: the helper
                    // ignores SIGPIPE (Rust's runtime does), as for its
                    // output.
                    if let Err(e) = self.write_special(fd.as_fd(), len)? {
                        let f = Failure::from(e);
                        let message = format!("write into {}: {}", show(path), f.reason);
                        return self.refuse_upload(serial, f.errno, message);
                    }
                    continue;
                }
            };
            if !sum.matches(len, checksum) {
                let message = format!(
                    "upload into {}: checksum mismatch: received {} bytes with checksum {:016x}, END says {len} bytes with {checksum:016x}; what was received was written into it",
                    show(path),
                    sum.len(),
                    sum.digest(),
                );
                return self.reply_error(serial, libc::EBADMSG, message);
            }
            return self.send(&Frame::Ok, serial);
        }
    }

    /// Open the special file `dest` for writing without blocking: a FIFO
    /// with no reader (ENXIO) is tried again after a poll of the input,
    /// whose timeout grows from 1 to 50 ms, so that the client's hang-up
    /// ends the wait. `Ok(Err)`: the open failed.
    fn open_special(&mut self, dest: &Parent) -> Result<Result<OwnedFd, Failure>, ServeEnd> {
        let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW;
        let mut wait_ms = 1;
        loop {
            match crate::sys::openat(dest.dir.as_fd(), &dest.name, flags, 0) {
                Ok(fd) => {
                    let st = match fs::fstat(fd.as_fd()) {
                        Ok(st) => st,
                        Err(e) => return Ok(Err(e.into())),
                    };
                    return Ok(match st.st_mode & libc::S_IFMT {
                        libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK => Ok(fd),
                        // Replaced since the look: neither written into nor
                        // replaced.
                        _ => Err(Failure::new(
                            libc::EAGAIN,
                            "changed while it was being opened; try again",
                        )),
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && self.is_fifo(dest) => {
                    self.wait_for_hangup(None, wait_ms)?;
                    wait_ms = (wait_ms * 2).min(50);
                }
                Err(e) => return Ok(Err(e.into())),
            }
        }
    }

    fn is_fifo(&self, dest: &Parent) -> bool {
        fs::lstat_at(dest.dir.as_fd(), &dest.name)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO)
    }

    /// Write the payload in the chunk buffer (`len` bytes) into `fd`,
    /// waiting for room with a poll that also watches the input for the
    /// client's hang-up. `Ok(Err)`: the write failed.
    fn write_special(
        &mut self,
        fd: BorrowedFd<'_>,
        len: usize,
    ) -> Result<io::Result<()>, ServeEnd> {
        let mut done = 0;
        while done < len {
            let bytes = &self.chunk[HEADER_LEN + done..HEADER_LEN + len];
            // SAFETY: writes from a live slice of the given length.
            let r = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            if r > 0 {
                done += r as usize;
                continue;
            }
            let e = match r {
                0 => io::Error::from_raw_os_error(libc::EIO),
                _ => io::Error::last_os_error(),
            };
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => self.wait_for_hangup(Some(fd), -1)?,
                _ => return Ok(Err(e)),
            }
        }
        Ok(Ok(()))
    }

    /// Wait until `out` has room (POLLOUT, or an error for the write to
    /// report), `timeout_ms` passes, or the input hangs up
    /// (`ChannelLost`). The input is polled for a hang-up only: the frames
    /// waiting in it belong to the upload and are read once this one is
    /// written.
    fn wait_for_hangup(
        &mut self,
        out: Option<BorrowedFd<'_>>,
        timeout_ms: i32,
    ) -> Result<(), ServeEnd> {
        let mut fds = [
            crate::sys::pollfd(self.chan.input().as_raw_fd(), 0),
            crate::sys::pollfd(out.map_or(-1, |fd| fd.as_raw_fd()), libc::POLLOUT),
        ];
        // SAFETY: fds is a live two-element pollfd array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(());
            }
            return Err(self.channel_lost(e));
        }
        if fds[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            log_line!("barge-helper: the client hung up while a special file was being written");
            return Err(ServeEnd::ChannelLost);
        }
        Ok(())
    }
}

/// The path a symlink at `link` with text `target` leads to: `target`
/// when absolute (the root, for a rooted connection), else `target` in the
/// link's directory. `..` in the result is resolved by the kernel, from
/// the directory the link is really in.
fn join_link(link: &[u8], target: &[u8]) -> Vec<u8> {
    if target.first() == Some(&b'/') {
        return target.to_vec();
    }
    match link.iter().rposition(|&b| b == b'/') {
        Some(i) => {
            let mut v = link[..=i].to_vec();
            v.extend_from_slice(target);
            v
        }
        None => target.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::join_link;

    #[test]
    fn link_targets_join_the_links_directory() {
        assert_eq!(join_link(b"a/b/l", b"t"), b"a/b/t");
        assert_eq!(join_link(b"l", b"../t"), b"../t");
        assert_eq!(join_link(b"/l", b"t"), b"/t");
        assert_eq!(join_link(b"a/l", b"/x/t"), b"/x/t");
    }
}
