//! Whole frames in from the helper's input fd and out to its output fd.
//!
//! Reads keep a small look-ahead buffer so a header usually costs no system
//! call of its own. Payloads are read straight into the caller's buffer,
//! together with the next frame's header (one `readv`), so a stream of DATA
//! frames costs one `readv` per chunk and no copying. Writes go out whole,
//! with `send(MSG_NOSIGNAL)` on sockets so a vanished client gives EPIPE
//! rather than SIGPIPE even where SIGPIPE is not ignored. Both directions
//! retry EINTR and wait in `poll` on EAGAIN, since the fds may have been
//! left non-blocking by ssh, sudo or podman.
//!
//! The payload of a download's DATA frame leaves with splice(2) from the
//! file's page cache, through a pipe, to the output (see
//! [`Channel::write_data_from_file`]): the bytes are read once into user
//! space for the checksum, but not copied out of it again.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::file_sink::{FileSink, SinkError};
use crate::sys::{self, SplicePipe};
use crate::wire::HEADER_LEN;

/// Look-ahead size. Small, so that bytes of a DATA payload read ahead with
/// a header (and then copied) stay few.
const LOOKAHEAD_LEN: usize = 4096;

pub(super) struct Channel<'fd> {
    input: BorrowedFd<'fd>,
    output: BorrowedFd<'fd>,
    output_is_socket: bool,
    /// Read with `recvmsg` and keep an fd passed with SCM_RIGHTS (the fast
    /// path). Off, `read` lets the kernel close any fd that comes along.
    receive_fds: bool,
    /// The last fd the client passed, until a request takes it.
    received_fd: Option<OwnedFd>,
    lookahead: Box<[u8; LOOKAHEAD_LEN]>,
    /// Unread bytes are `lookahead[start..end]`.
    start: usize,
    end: usize,
    /// The pipe payloads are spliced through: made at the first download,
    /// `Some(None)` when that failed.
    splice_pipe: Option<Option<SplicePipe>>,
    /// Read headers without look-ahead (see [`Self::read_headers_only`]).
    headers_only: bool,
}

impl<'fd> Channel<'fd> {
    pub fn new(input: BorrowedFd<'fd>, output: BorrowedFd<'fd>) -> Channel<'fd> {
        let output_is_socket = super::fs::fstat(output)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
            .unwrap_or(false);
        Channel {
            input,
            output,
            output_is_socket,
            receive_fds: false,
            received_fd: None,
            lookahead: Box::new([0; LOOKAHEAD_LEN]),
            start: 0,
            end: 0,
            splice_pipe: None,
            headers_only: false,
        }
    }

    /// From now on, keep fds the client passes with SCM_RIGHTS. Only for
    /// an input that is a Unix socket.
    pub fn receive_fds(&mut self) {
        self.receive_fds = true;
    }

    /// Read each header with no look-ahead (on), or with it (off): on
    /// while DATA payloads are spliced from the input.
    pub fn read_headers_only(&mut self, on: bool) {
        self.headers_only = on;
    }

    pub fn input(&self) -> BorrowedFd<'fd> {
        self.input
    }

    pub fn output(&self) -> BorrowedFd<'fd> {
        self.output
    }

    pub fn receives_fds(&self) -> bool {
        self.receive_fds
    }

    /// The fd that came with the frames read so far, if any.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.received_fd.take()
    }

    /// One `readv` of the input, or `recvmsg` when fds are received.
    fn read_input(&mut self, iov: &[libc::iovec]) -> io::Result<usize> {
        if !self.receive_fds {
            // SAFETY: the iovecs point into live, writable buffers.
            return retry(self.input, libc::POLLIN, || unsafe {
                libc::readv(self.input.as_raw_fd(), iov.as_ptr(), iov.len() as i32)
            });
        }
        // Room for a few fds; a client passes one per request.
        let mut control = [0u64; 8];
        let mut control_len: usize = 0;
        let n = retry(self.input, libc::POLLIN, || {
            // SAFETY: msghdr is zeroed, then points at live iovecs and at a
            // live, aligned control buffer of the length given.
            unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = iov.len() as _;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&control) as _;
                let r = libc::recvmsg(self.input.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
                control_len = msg.msg_controllen as usize;
                r
            }
        })?;
        if control_len > 0 {
            self.collect_fds(&mut control, control_len);
        }
        Ok(n)
    }

    /// Keep the first fd of the SCM_RIGHTS messages in `control` and close
    /// the rest.
    fn collect_fds(&mut self, control: &mut [u64; 8], len: usize) {
        // SAFETY: a msghdr describing the control bytes recvmsg wrote; the
        // CMSG_* macros only walk within msg_controllen, and each fd read
        // is a new fd this process now owns.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = len as _;
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                    let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                    for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                        let fd = OwnedFd::from_raw_fd(data.add(i).read_unaligned());
                        if self.received_fd.is_none() {
                            self.received_fd = Some(fd);
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }

    /// The next frame header. `None` at end of input on a frame boundary;
    /// end of input inside a header is `UnexpectedEof`.
    pub fn read_header(&mut self) -> io::Result<Option<[u8; HEADER_LEN]>> {
        while self.end - self.start < HEADER_LEN {
            if self.start > 0 {
                self.lookahead.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // While payloads are spliced, read no further than the
            // header: bytes read ahead would be copied, and would leave the
            // spliced rest off the file's page boundaries.
            let room = match self.headers_only {
                true => &mut self.lookahead[self.end..self.start + HEADER_LEN],
                false => &mut self.lookahead[self.end..],
            };
            let iov = [libc::iovec {
                iov_base: room.as_mut_ptr().cast(),
                iov_len: room.len(),
            }];
            let n = self.read_input(&iov)?;
            if n == 0 {
                if self.end == 0 {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.lookahead[self.start..self.start + HEADER_LEN]);
        self.consume(HEADER_LEN);
        Ok(Some(header))
    }

    /// Fill `buf` with the payload of the frame whose header was just read.
    pub fn read_payload(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let buffered = (self.end - self.start).min(buf.len());
        buf[..buffered].copy_from_slice(&self.lookahead[self.start..self.start + buffered]);
        self.consume(buffered);
        let mut filled = buffered;
        while filled < buf.len() {
            // The look-ahead is empty here. Read the rest of the payload and
            // at most the next header, so no later payload gets copied.
            let want = buf.len() - filled;
            let iov = [
                libc::iovec {
                    iov_base: buf[filled..].as_mut_ptr().cast(),
                    iov_len: want,
                },
                libc::iovec {
                    iov_base: self.lookahead.as_mut_ptr().cast(),
                    iov_len: HEADER_LEN,
                },
            ];
            // Both iovecs point into live, writable buffers of the lengths
            // given.
            let n = self.read_input(&iov)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if n <= want {
                filled += n;
            } else {
                filled = buf.len();
                self.start = 0;
                self.end = n - want;
            }
        }
        Ok(())
    }

    /// Move the payload of the frame whose header was just read into
    /// `sink`: bytes read ahead with the header are
    /// written from memory, the rest is spliced. `left` is the payload's
    /// length, and on return what of it is still in the input: 0 when it
    /// all moved; more when the input cannot be spliced from (`Ok`, and
    /// the caller reads the rest with [`Self::read_payload`]) or a step
    /// failed (`Err`).
    pub fn splice_payload(
        &mut self,
        left: &mut usize,
        sink: &mut FileSink,
    ) -> Result<(), SinkError> {
        let buffered = (self.end - self.start).min(*left);
        let ahead = &self.lookahead[self.start..self.start + buffered];
        sink.write_bytes(ahead).map_err(SinkError::File)?;
        self.consume(buffered);
        *left -= buffered;
        while *left > 0 {
            match sink.splice_from(self.input.as_raw_fd(), left) {
                Ok(true) => {}
                Ok(false) => {
                    let mut fds = [sys::pollfd(self.input.as_raw_fd(), libc::POLLIN)];
                    sys::poll(&mut fds, None).map_err(SinkError::Source)?;
                }
                Err(SinkError::Source(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether a read would not block: bytes are buffered, or the input fd
    /// is readable or hung up.
    pub fn input_pending(&self) -> io::Result<bool> {
        if self.end > self.start {
            return Ok(true);
        }
        let mut fds = [sys::pollfd(self.input.as_raw_fd(), libc::POLLIN)];
        loop {
            // SAFETY: fds is a valid one-element pollfd array.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
            if r >= 0 {
                return Ok(r > 0);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// Write the concatenation of `parts` (at most 3) as one whole frame.
    pub fn write_all(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 3];
        assert!(parts.len() <= iov.len());
        for (v, p) in iov.iter_mut().zip(parts) {
            // The kernel only reads through these pointers.
            v.iov_base = p.as_ptr() as *mut libc::c_void;
            v.iov_len = p.len();
        }
        let mut first = 0;
        let count = parts.len();
        while first < count && iov[first].iov_len == 0 {
            first += 1;
        }
        while first < count {
            let live = &iov[first..count];
            let n = if self.output_is_socket {
                // SAFETY: msghdr is zeroed (no name, no control data) and
                // points at live iovecs for the call's duration.
                retry(self.output, libc::POLLOUT, || unsafe {
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = live.as_ptr() as *mut libc::iovec;
                    msg.msg_iovlen = live.len() as _;
                    libc::sendmsg(self.output.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
                })?
            } else {
                // SAFETY: live holds valid iovecs over the caller's slices.
                retry(self.output, libc::POLLOUT, || unsafe {
                    libc::writev(self.output.as_raw_fd(), live.as_ptr(), live.len() as i32)
                })?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let mut left = n;
            while left > 0 {
                let v = &mut iov[first];
                if left >= v.iov_len {
                    left -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: left < iov_len, so the pointer stays inside
                    // the same slice.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left).cast() };
                    v.iov_len -= left;
                    left = 0;
                }
            }
            while first < count && iov[first].iov_len == 0 {
                first += 1;
            }
        }
        Ok(())
    }
}

impl Channel<'_> {
    /// Write a DATA frame: `header`, then the payload `data`, which was just
    /// read from the regular file `src` at `offset` (and checksummed). The
    /// payload moves from the page cache to the output with splice(2),
    /// through a pipe, not through `data`. Where splice fails or moves less
    /// than `data` (the file shrank since it was read), the rest is written
    /// from `data`. Bytes that changed in the file since they were read make
    /// the client's checksum fail: the download is refused, never wrong.
    /// A closed output gives EPIPE: the helper ignores SIGPIPE (Rust's
    /// runtime does), as for writes to a pipe.
    pub fn write_data_from_file(
        &mut self,
        header: &[u8],
        src: BorrowedFd<'_>,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        self.write_all(&[header])?;
        let mut spliced = 0;
        if let Some(pipe) = self.splice_pipe.get_or_insert_with(SplicePipe::new) {
            match splice_out(src, offset, data.len(), pipe, self.output) {
                Ok(n) => spliced = n,
                // The output takes no splice (EINVAL): drop the pipe with
                // the bytes it holds, write them from `data`, and write
                // every later payload too.
                Err(Refused(n)) => {
                    spliced = n;
                    self.splice_pipe = Some(None);
                }
                Err(Failed(e)) => return Err(e),
            }
        }
        self.write_all(&[&data[spliced..]])
    }
}

/// Why [`splice_out`] stopped before its end.
enum SpliceEnd {
    /// The output cannot be spliced into; this many bytes reached it.
    Refused(usize),
    /// Writing to the output failed.
    Failed(io::Error),
}
use SpliceEnd::{Failed, Refused};

/// Splice up to `len` bytes of `src` from `offset` through `pipe` to
/// `output`, and return how many reached `output`. Stops early, with the
/// pipe empty, when the file has no more bytes or cannot be spliced.
fn splice_out(
    src: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    pipe: &SplicePipe,
    output: BorrowedFd<'_>,
) -> Result<usize, SpliceEnd> {
    let mut sent = 0;
    while sent < len {
        let moved = pipe.splice_in(src.as_raw_fd(), offset + sent as u64, len - sent);
        if moved == 0 {
            return Ok(sent);
        }
        let mut left = moved;
        while left > 0 {
            // SAFETY: splice between fds we hold; no offsets.
            let n = retry(output, libc::POLLOUT, || unsafe {
                libc::splice(
                    pipe.read.as_raw_fd(),
                    std::ptr::null_mut(),
                    output.as_raw_fd(),
                    std::ptr::null_mut(),
                    left,
                    libc::SPLICE_F_MOVE,
                )
            });
            let n = match n {
                Ok(0) => return Err(Failed(io::ErrorKind::WriteZero.into())),
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return Err(Refused(sent + moved - left))
                }
                Err(e) => return Err(Failed(e)),
            };
            left -= n;
        }
        sent += moved;
    }
    Ok(sent)
}

/// Run one read or write call until it neither is interrupted nor would
/// block, waiting for `events` on `fd` when it would.
fn retry(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    mut call: impl FnMut() -> libc::ssize_t,
) -> io::Result<usize> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                let mut fds = [sys::pollfd(fd.as_raw_fd(), events)];
                sys::poll(&mut fds, None)?;
            }
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    const HEADER: &[u8] = b"0123456789abcdef";

    fn data_file(len: usize) -> (std::fs::File, Vec<u8>) {
        let data: Vec<u8> = (0..len as u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    /// Run `send` with a channel whose output is one end of a socketpair,
    /// and return everything the other end received.
    fn received(send: impl FnOnce(&mut Channel<'_>) + Send) -> Vec<u8> {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).unwrap();
            got
        });
        {
            let mut chan = Channel::new(ours.as_fd(), ours.as_fd());
            send(&mut chan);
        }
        drop(ours);
        reader.join().unwrap()
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        [HEADER, payload].concat()
    }

    #[test]
    fn a_payload_leaves_from_the_file_not_from_memory() {
        // The payload in memory differs from the file (as when the file
        // changed after it was read): what arrives is the file's bytes,
        // so splice moved them, and a changed file fails the checksum.
        let (f, data) = data_file(3 << 20);
        let len = (1 << 20) + 17;
        let stale = vec![0xAAu8; len];
        let got = received(|chan| {
            chan.write_data_from_file(HEADER, f.as_fd(), 1000, &stale)
                .unwrap();
        });
        assert!(got == frame(&data[1000..1000 + len]));
    }

    #[test]
    fn bytes_missing_from_a_shrunken_file_are_written_from_the_payload() {
        // The file holds 100 KiB; the payload read earlier held 300 KiB.
        let (f, data) = data_file(300 << 10);
        f.set_len(100 << 10).unwrap();
        let earlier = vec![0x55u8; 300 << 10];
        let got = received(|chan| {
            chan.write_data_from_file(HEADER, f.as_fd(), 0, &earlier)
                .unwrap()
        });
        assert!(got == frame(&[&data[..100 << 10], &earlier[100 << 10..]].concat()));
    }

    #[test]
    fn a_source_that_cannot_be_spliced_is_written_from_the_payload() {
        // A pipe has no offsets: splice refuses it (ESPIPE).
        let (r, _w) = nix::unistd::pipe().unwrap();
        let data = vec![5u8; 70_000];
        let got = received(|chan| {
            chan.write_data_from_file(HEADER, r.as_fd(), 0, &data)
                .unwrap()
        });
        assert!(got == frame(&data));
    }

    #[test]
    fn an_output_that_refuses_splice_gets_every_payload_written() {
        // A file opened for appending refuses splice (EINVAL).
        let (f, data) = data_file(200 << 10);
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut appending = std::fs::OpenOptions::new()
            .append(true)
            .open(out.path())
            .unwrap();
        {
            let mut chan = Channel::new(appending.as_fd(), appending.as_fd());
            for _ in 0..2 {
                chan.write_data_from_file(HEADER, f.as_fd(), 0, &data)
                    .unwrap();
                assert!(matches!(chan.splice_pipe, Some(None)));
            }
        }
        appending.flush().unwrap();
        let mut written = Vec::new();
        let mut back = std::fs::File::open(out.path()).unwrap();
        back.rewind().unwrap();
        back.read_to_end(&mut written).unwrap();
        assert!(written == [frame(&data), frame(&data)].concat());
    }

    /// A channel reading from one end of a socketpair that holds `bytes`.
    fn spliced_payload(bytes: Vec<u8>, len: usize, headers_only: bool) -> (Vec<u8>, u64, usize) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || theirs.write_all(&bytes).unwrap());
        let mut chan = Channel::new(ours.as_fd(), ours.as_fd());
        chan.read_headers_only(headers_only);
        chan.read_header().unwrap().unwrap();
        let ahead = chan.end - chan.start;
        let mut f = tempfile::tempfile().unwrap();
        let mut sink = FileSink::new(f.as_fd(), 0).unwrap();
        let mut left = len;
        chan.splice_payload(&mut left, &mut sink).unwrap();
        assert_eq!(left, 0);
        writer.join().unwrap();
        let mut got = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut got).unwrap();
        (got, sink.checksum().digest(), ahead)
    }

    #[test]
    fn a_spliced_payload_lands_whole_with_or_without_bytes_read_ahead() {
        let (_, data) = data_file(300_000);
        let mut sum = crate::wire::StreamChecksum::new();
        sum.update(&data);
        for headers_only in [false, true] {
            let (got, digest, ahead) = spliced_payload(frame(&data), data.len(), headers_only);
            assert_eq!(got, data);
            assert_eq!(digest, sum.digest());
            // Reading headers only leaves every payload byte to splice.
            assert_eq!(ahead == 0, headers_only, "read ahead {ahead} bytes");
        }
    }
}
