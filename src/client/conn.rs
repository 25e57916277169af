//! One connection to a running helper: the non-blocking channel, the frame
//! reader and writer, the helper's stderr, and the single wait that every
//! operation uses.
//!
//! [`Connection::wait`] is where cancel wakes the loop. It polls the
//! handle's cancel eventfd together with the channel, the helper's stderr
//! and, when the operation has one, the local file. Nothing in the client
//! blocks anywhere else, except writes to regular files.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::cancel::CancelState;
use crate::client::events::{Event, Events};
use crate::error::Error;
use crate::file_sink::{FileSink, SinkError};
use crate::process::HelperProcess;
use crate::sys;
use crate::wire::{self, Frame, FrameType, Header, StatRecord, HEADER_LEN};

/// How many lines of the helper's stderr are kept for error messages.
const STDERR_TAIL_LINES: usize = 8;
/// Longest stderr line kept; longer lines are cut.
const STDERR_LINE_MAX: usize = 1024;
/// Most of the helper's stderr read in one wait.
const STDERR_DRAIN_MAX: usize = 64 << 10;
/// Most frames [`Connection::read_frame`] returns between two waits. The
/// next call then reports "nothing now" (`Ok(None)`), so a caller's read
/// loop goes back to its own loop, which looks at the cancel flag and the
/// deadline. Without it, a helper that never pauses (an endless run of
/// STOP or DIRENTS frames) would keep a read loop spinning past ^C and
/// past `cancel_timeout`. 64 frames of even the smallest kind are read
/// in microseconds; 64 DATA frames are megabytes, so a healthy transfer
/// pays one extra poll per many megabytes.
const READ_BURST: u32 = 64;

/// Why a connection can no longer be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Broken {
    /// The helper closed the channel or reset it: it exited or was killed.
    HelperGone,
    /// The peer broke the protocol; the helper must be killed.
    Protocol,
    /// The helper did not answer in time; it must be killed.
    Unresponsive,
}

/// What one wait saw.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    /// The local fd is ready for the requested direction.
    pub local: bool,
    pub timed_out: bool,
}

/// A frame read from the channel, with the payload of DATA left in the
/// reader until [`Connection::consume`].
#[derive(Debug)]
pub(crate) enum Incoming {
    Welcome {
        version: u16,
        features: u64,
        pid: u32,
    },
    Data,
    End {
        len: u64,
        checksum: u64,
    },
    Cancel,
    Stop,
    SourceInfo {
        size: u64,
        mode: u32,
    },
    Ok,
    Error {
        errno: i32,
        message: String,
    },
    StatInfo(StatRecord),
    /// A DIRENTS frame; its payload stays in the reader until
    /// [`Connection::consume`], read through [`Connection::dirents`], so
    /// the caller copies the names under its own bounds.
    Dirents,
    /// The fast path's running total (COPIED).
    Copied(u64),
    /// A tree or resume frame; its payload stays in the reader until
    /// [`Connection::consume`], decoded by [`Connection::ext_frame`].
    Ext(wire::FrameType),
}

pub(crate) struct Connection {
    pub process: HelperProcess,
    channel: OwnedFd,
    stderr: Option<OwnedFd>,
    stderr_partial: Vec<u8>,
    stderr_tail: VecDeque<String>,
    reader: FrameReader,
    pub out: OutBuf,
    pub launched_at: Instant,
    next_serial: u64,
    pub broken: Option<Broken>,
    /// The helper closed its end of the channel. Its last frames may still
    /// be unread, but a wait that does not read the channel no longer
    /// polls it: the hang-up would wake every such poll at once.
    hung_up: bool,
    /// The helper granted the fast path, and it is our own child: local
    /// files may be passed to it as fds (see `fastpath`).
    pub fast_path: bool,
    /// The feature bits the handshake agreed on.
    pub features: u64,
    /// Frames returned since the last wait (see [`READ_BURST`]).
    burst: u32,
}

impl Connection {
    pub fn new(
        process: HelperProcess,
        channel: OwnedFd,
        stderr: OwnedFd,
        chunk: u32,
    ) -> Connection {
        // Every call on the channel is non-blocking already (MSG_DONTWAIT);
        // splice(2) into it honours only the file's own flag. Failure
        // cannot happen on a socket we own.
        let _ = sys::set_nonblocking(channel.as_fd(), true);
        Connection {
            process,
            channel,
            stderr: Some(stderr),
            stderr_partial: Vec::new(),
            stderr_tail: VecDeque::new(),
            reader: FrameReader::default(),
            out: OutBuf::new(chunk),
            launched_at: Instant::now(),
            next_serial: 1,
            broken: None,
            hung_up: false,
            fast_path: false,
            features: 0,
            burst: 0,
        }
    }

    pub fn next_serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial += 1;
        s
    }

    /// Mark the connection broken and return the error an operation should
    /// report for it (refined by the handle once the helper is reaped).
    pub fn fail(&mut self, how: Broken, error: Error) -> Error {
        if self.broken.is_none() {
            self.broken = Some(how);
        }
        error
    }

    pub fn fail_protocol(&mut self, message: String) -> Error {
        self.fail(Broken::Protocol, Error::protocol(message))
    }

    fn gone(&mut self) -> Error {
        self.fail(
            Broken::HelperGone,
            Error::HelperDied {
                message: "the helper closed the connection".into(),
            },
        )
    }

    /// Queue a control frame. Only while no DATA frame is partly sent, so
    /// frames are never interleaved.
    pub fn queue(&mut self, frame: &Frame<'_>, serial: u64) -> Result<(), Error> {
        debug_assert!(self.out.data_is_empty());
        wire::encode_frame(frame, serial, &mut self.out.ctrl).map_err(|e| {
            Error::InvalidArgument(format!("cannot send {}: {e}", frame.kind().name()))
        })
    }

    /// Queue a control frame that carries `fd` (SCM_RIGHTS) with its
    /// first byte. Keeps a duplicate of the fd until the frame is sent.
    pub fn queue_with_fd(
        &mut self,
        frame: &Frame<'_>,
        serial: u64,
        fd: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| Error::local("duplicate the file descriptor to pass", e))?;
        let at = self.out.ctrl.len();
        self.queue(frame, serial)?;
        self.out.fd = Some((at, dup));
        Ok(())
    }

    /// Send what is queued, without blocking.
    pub fn flush(&mut self) -> Result<(), Error> {
        match self.out.send(self.channel.as_raw_fd()) {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Err(self.gone()),
            Err(e) => Err(self.fail(Broken::HelperGone, Error::local("send to the helper", e))),
        }
    }

    /// Read one whole frame if one is available, without blocking.
    ///
    /// `Ok(None)` means "nothing to act on now": the channel has no whole
    /// frame yet, or [`READ_BURST`] frames came since the last
    /// [`Self::wait`] (the caller's loop must then get back to its cancel
    /// and deadline checks; its wait returns at once, the channel being
    /// readable).
    pub fn read_frame(&mut self, serial: u64) -> Result<Option<Incoming>, Error> {
        if self.burst >= READ_BURST {
            self.burst = 0;
            return Ok(None);
        }
        self.burst += 1;
        let header = match self.reader.fill(self.channel.as_raw_fd()) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(ReadError::Eof) => return Err(self.gone()),
            Err(ReadError::Io(e)) if is_gone(&e) => return Err(self.gone()),
            Err(ReadError::Io(e)) => {
                return Err(self.fail(Broken::HelperGone, Error::local("read from the helper", e)))
            }
            Err(ReadError::Decode(e)) => {
                return Err(self.fail_protocol(format!("from the helper: {e}")))
            }
        };
        if self.reader.data_left > 0 {
            // A spliced DATA frame: its payload is still in the channel.
            if header.serial != serial {
                let msg = format!(
                    "helper sent DATA for serial {} during request {serial}",
                    header.serial
                );
                return Err(self.fail_protocol(msg));
            }
            return Ok(Some(Incoming::Data));
        }
        let frame = match wire::decode_frame(&header, self.reader.payload()) {
            Ok(f) => f,
            Err(e) => return Err(self.fail_protocol(format!("from the helper: {e}"))),
        };
        if header.serial != serial && !matches!(frame, Frame::Stop) {
            let msg = format!(
                "helper sent {} for serial {} during request {}",
                header.kind, header.serial, serial
            );
            return Err(self.fail_protocol(msg));
        }
        let incoming = match frame {
            Frame::Welcome {
                version,
                features,
                pid,
            } => Incoming::Welcome {
                version,
                features,
                pid,
            },
            Frame::Data(_) => {
                // The payload stays in the reader until consume().
                return Ok(Some(Incoming::Data));
            }
            Frame::Tree(_) | Frame::Resume(_) => {
                // The payload stays in the reader until consume().
                return Ok(Some(Incoming::Ext(header.kind)));
            }
            Frame::Dirents(_) => {
                // The payload stays in the reader until consume().
                return Ok(Some(Incoming::Dirents));
            }
            Frame::End { len, checksum } => Incoming::End { len, checksum },
            Frame::Cancel => Incoming::Cancel,
            Frame::Stop if header.serial != serial => {
                // A late STOP for a finished request: ignored by protocol.
                // Nothing is read ahead of it, so the caller's poll sees
                // whatever follows; a helper that sends nothing else gets
                // no further than a cancel's deadline.
                self.reader.consume();
                return Ok(None);
            }
            Frame::Stop => Incoming::Stop,
            Frame::SourceInfo { size, mode } => Incoming::SourceInfo { size, mode },
            Frame::Ok => Incoming::Ok,
            Frame::Error { errno, message } => {
                // At most MAX_CONTROL bytes: the frame's own bound.
                let message = String::from_utf8_lossy(message).into_owned();
                if crate::error::is_errno(errno) {
                    Incoming::Error { errno, message }
                } else {
                    // errno 0 would read as success ("(Success)", a C
                    // caller's errno 0 after -1), a negative or huge one
                    // as nothing at all: the peer broke the protocol.
                    Incoming::Error {
                        errno: libc::EPROTO,
                        message: format!(
                            "{message} (the helper's ERROR for serial {serial} carried errno {errno}, which is not an error number)"
                        ),
                    }
                }
            }
            Frame::StatInfo(st) => Incoming::StatInfo(st),
            Frame::Copied { total } => Incoming::Copied(total),
            other => {
                let msg = format!(
                    "helper sent unexpected {} for serial {}",
                    other.kind(),
                    header.serial
                );
                return Err(self.fail_protocol(msg));
            }
        };
        self.reader.consume();
        Ok(Some(incoming))
    }

    /// The payload of the DATA frame last returned by [`Self::read_frame`].
    pub fn data(&self) -> &[u8] {
        self.reader.payload()
    }

    /// The tree or resume frame last returned by [`Self::read_frame`] as
    /// [`Incoming::Ext`]. It was checked when read.
    pub fn ext_frame(&self) -> Frame<'_> {
        let header = self.reader.header.expect("a frame is in hand");
        wire::decode_frame(&header, self.reader.payload()).expect("decoded once already")
    }

    /// The DIRENTS frame last returned by [`Self::read_frame`] as
    /// [`Incoming::Dirents`]. It was checked when read.
    pub fn dirents(&self) -> wire::Dirents<'_> {
        match self.ext_frame() {
            Frame::Dirents(d) => d,
            _ => unreachable!("read_frame returned Incoming::Dirents"),
        }
    }

    /// Queue frames that are already encoded, whole. Only while no DATA
    /// frame is partly sent.
    pub fn queue_encoded(&mut self, frames: &[u8]) {
        debug_assert!(self.out.data_is_empty());
        self.out.ctrl.extend_from_slice(frames);
    }

    /// Release the DATA frame last returned by [`Self::read_frame`]. Its
    /// payload bytes still in the channel, if it was spliced, are skipped.
    pub fn consume(&mut self) {
        self.reader.consume();
    }

    /// Leave DATA payloads in the channel from now on (or no longer), for
    /// [`Self::splice_data_into`]. Only between frames.
    pub fn splice_data(&mut self, on: bool) {
        debug_assert!(self.reader.header.is_none() || !on);
        self.reader.splice_data = on;
    }

    /// Payload bytes of the DATA frame in hand that are still in the
    /// channel: all of it when DATA is spliced, until
    /// [`Self::splice_data_into`] moves them. 0 when it is buffered, in
    /// [`Self::data`].
    pub fn data_in_channel(&self) -> usize {
        self.reader.data_left
    }

    /// Move payload bytes of the DATA frame in hand from the channel into
    /// `sink`. `Ok(None)` when the channel
    /// has none now. A channel that cannot be spliced turns splicing off:
    /// the frame is then received into the buffer, and read_frame returns
    /// it again, whole, as DATA (`Ok(Some(0))`).
    pub fn splice_data_into(&mut self, sink: &mut FileSink) -> Result<Option<usize>, SpliceFailed> {
        let left = self.reader.data_left;
        match sink.splice_from(self.channel.as_raw_fd(), &mut self.reader.data_left) {
            Ok(true) => Ok(Some(left - self.reader.data_left)),
            Ok(false) => Ok(None),
            Err(SinkError::File(e)) => Err(SpliceFailed::File(e)),
            Err(SinkError::Source(e))
                if e.raw_os_error() == Some(libc::EINVAL)
                    && self.reader.header.is_some_and(|h| h.len as usize == left) =>
            {
                self.reader.buffer_data();
                Ok(Some(0))
            }
            Err(SinkError::Source(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(SpliceFailed::Channel(self.gone()))
            }
            Err(SinkError::Source(e)) if is_gone(&e) => Err(SpliceFailed::Channel(self.gone())),
            Err(SinkError::Source(e)) => Err(SpliceFailed::Channel(self.fail(
                Broken::HelperGone,
                Error::local("splice from the helper", e),
            ))),
        }
    }

    /// Wait until the channel or local fd is ready, a cancel arrives, or the
    /// deadline passes. Drains the helper's stderr into LOG events on the
    /// way.
    ///
    /// The cancel fd is polled until the operation has seen the cancel
    /// (`cancel_seen`). From then on the eventfd stays readable until the
    /// operation ends, so polling it would spin; the operation is then
    /// waiting for the helper's answer, bounded by its cancel deadline.
    #[allow(clippy::too_many_arguments)]
    pub fn wait(
        &mut self,
        cancel: &CancelState,
        cancel_seen: bool,
        want_channel_in: bool,
        local: Option<(RawFd, libc::c_short)>,
        deadline: Option<Instant>,
        events: &mut Events,
    ) -> Result<Ready, Error> {
        let cancel_fd = if cancel_seen {
            -1
        } else {
            cancel.wake_fd().as_raw_fd()
        };
        let mut channel_events = 0;
        if want_channel_in {
            channel_events |= libc::POLLIN;
        }
        if !self.out.is_empty() {
            channel_events |= libc::POLLOUT;
        }
        // With no events asked for, the channel is polled only for a
        // hang-up, which is noticed once (a full local pipe can then hold
        // the wait without the hang-up waking it again and again).
        let channel_fd = if channel_events == 0 && self.hung_up {
            -1
        } else {
            self.channel.as_raw_fd()
        };
        let mut fds = [
            sys::pollfd(cancel_fd, libc::POLLIN),
            sys::pollfd(channel_fd, channel_events),
            sys::pollfd(-1, 0),
            sys::pollfd(-1, 0),
        ];
        if let Some(e) = &self.stderr {
            fds[2] = sys::pollfd(e.as_raw_fd(), libc::POLLIN);
        }
        if let Some((fd, ev)) = local {
            fds[3] = sys::pollfd(fd, ev);
        }
        let timeout = sys::remaining(deadline);
        self.burst = 0;
        sys::poll(&mut fds, timeout).map_err(|e| Error::local("poll", e))?;
        if fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            self.hung_up = true;
        }
        if fds[0].revents != 0 {
            // The caller's loop acts on a pending cancel; a stale wake-up
            // is drained here, or every later poll would return at once.
            cancel.settle_wake();
        }
        if fds[2].revents != 0 {
            self.drain_stderr(events);
        }
        Ok(Ready {
            local: fds[3].revents != 0,
            timed_out: deadline.is_some_and(|d| Instant::now() >= d),
        })
    }

    /// Read what the helper has written to stderr, as LOG events: up to
    /// [`STDERR_DRAIN_MAX`] bytes a call, so a helper that writes without
    /// pause cannot keep a wait from returning.
    pub fn drain_stderr(&mut self, events: &mut Events) {
        let Some(fd) = self.stderr.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < STDERR_DRAIN_MAX {
            // SAFETY: reads into a live stack buffer of the given length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                drained += n as usize;
                self.stderr_partial.extend_from_slice(&buf[..n as usize]);
                while let Some(i) = self.stderr_partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.stderr_partial.drain(..=i).take(i).collect();
                    self.push_stderr_line(&line, events);
                }
                if self.stderr_partial.len() > STDERR_LINE_MAX {
                    let line = std::mem::take(&mut self.stderr_partial);
                    self.push_stderr_line(&line, events);
                }
                continue;
            }
            if n == 0 || sys::errno() != libc::EINTR {
                if n == 0 {
                    // EOF: flush a last unterminated line and stop polling.
                    if !self.stderr_partial.is_empty() {
                        let line = std::mem::take(&mut self.stderr_partial);
                        self.push_stderr_line(&line, events);
                    }
                    self.stderr = None;
                }
                return;
            }
        }
    }

    fn push_stderr_line(&mut self, line: &[u8], events: &mut Events) {
        let line = &line[..line.len().min(STDERR_LINE_MAX)];
        events.emit(&Event::Log { line });
        if self.stderr_tail.len() == STDERR_TAIL_LINES {
            self.stderr_tail.pop_front();
        }
        self.stderr_tail
            .push_back(String::from_utf8_lossy(line).into_owned());
    }

    /// The helper's last stderr lines, joined for an error message.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Wait for the helper's stderr to reach EOF, up to `limit`, so its last
    /// words make it into an error message.
    pub fn collect_stderr(&mut self, limit: Duration, events: &mut Events) {
        let deadline = Instant::now() + limit;
        while let Some(fd) = &self.stderr {
            let mut p = [sys::pollfd(fd.as_raw_fd(), libc::POLLIN)];
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || sys::poll(&mut p, Some(left)).unwrap_or(0) == 0 {
                return;
            }
            self.drain_stderr(events);
        }
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
    )
}

/// Outgoing bytes: queued control frames, then at most one DATA frame
/// whose payload was read straight into this buffer.
///
/// A payload read from a regular file leaves by splice(2) from the file's
/// page cache (see [`OutBuf::commit_data`]): it was read once, to be
/// checksummed, and is not copied out of user space again. Where splice
/// fails or finds fewer bytes (the file shrank), the rest of the payload is
/// sent from the buffer. Bytes changed in the file between the read and
/// the splice make the helper's checksum fail: the upload is refused,
/// never committed wrong.
pub(crate) struct OutBuf {
    ctrl: Vec<u8>,
    ctrl_pos: usize,
    /// An fd to pass with the control byte at this offset.
    fd: Option<(usize, OwnedFd)>,
    /// `[header | payload]`, allocated once at the chunk size.
    data: Box<[u8]>,
    data_pos: usize,
    data_end: usize,
    /// Where the queued payload is spliced from: a regular file, and the
    /// offset of the payload's first byte in it.
    splice_from: Option<(RawFd, u64)>,
    /// The pipe payloads are spliced through; `Some(None)` when none could
    /// be made.
    pipe: Option<Option<crate::sys::SplicePipe>>,
    /// Payload bytes in the pipe, not yet sent.
    in_pipe: usize,
}

impl OutBuf {
    fn new(chunk: u32) -> OutBuf {
        OutBuf {
            ctrl: Vec::with_capacity(256),
            ctrl_pos: 0,
            fd: None,
            data: Box::default(),
            data_pos: 0,
            data_end: 0,
            splice_from: None,
            pipe: None,
            in_pipe: 0,
        }
        .with_chunk(chunk)
    }

    fn with_chunk(mut self, chunk: u32) -> OutBuf {
        self.data = vec![0u8; HEADER_LEN + chunk as usize].into_boxed_slice();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ctrl_pos == self.ctrl.len() && self.data_is_empty()
    }

    pub fn data_is_empty(&self) -> bool {
        self.data_pos == self.data_end
    }

    /// Room for the next DATA payload, at most `chunk` bytes. Only while
    /// the buffer is empty.
    pub fn payload_room(&mut self, chunk: u32) -> &mut [u8] {
        debug_assert!(self.is_empty());
        if self.data.len() < HEADER_LEN + chunk as usize {
            self.data = vec![0u8; HEADER_LEN + chunk as usize].into_boxed_slice();
        }
        &mut self.data[HEADER_LEN..HEADER_LEN + chunk as usize]
    }

    /// The payload just filled through [`Self::payload_room`].
    pub fn payload(&self, len: usize) -> &[u8] {
        &self.data[HEADER_LEN..HEADER_LEN + len]
    }

    /// Turn the first `len` bytes of the payload room into a DATA frame.
    /// `file`: the regular file and offset the payload was read from, to
    /// send it by splice; the file must stay open until the frame is sent.
    pub fn commit_data(&mut self, len: usize, serial: u64, file: Option<(RawFd, u64)>) {
        let h = wire::encode_header(wire::FrameType::Data, len as u32, serial);
        self.data[..HEADER_LEN].copy_from_slice(&h);
        self.data_pos = 0;
        self.data_end = HEADER_LEN + len;
        self.splice_from = file;
    }

    fn send(&mut self, fd: RawFd) -> io::Result<()> {
        while self.ctrl_pos < self.ctrl.len() {
            let sent = match &self.fd {
                Some((at, pass)) if *at == self.ctrl_pos => {
                    let n = send_with_fd(fd, &self.ctrl[self.ctrl_pos..], pass.as_raw_fd())?;
                    if n.is_some() {
                        self.fd = None;
                    }
                    n
                }
                Some((at, _)) => send_some(fd, &self.ctrl[self.ctrl_pos..*at])?,
                None => send_some(fd, &self.ctrl[self.ctrl_pos..])?,
            };
            match sent {
                Some(n) => self.ctrl_pos += n,
                None => return Ok(()),
            }
        }
        self.ctrl.clear();
        self.ctrl_pos = 0;
        while self.data_pos < self.data_end {
            let sent = if self.splice_from.is_some() || self.in_pipe > 0 {
                self.splice_some(fd)?
            } else {
                send_some(fd, &self.data[self.data_pos..self.data_end])?
            };
            match sent {
                Some(n) => self.data_pos += n,
                None => return Ok(()),
            }
        }
        self.data_pos = 0;
        self.data_end = 0;
        self.splice_from = None;
        Ok(())
    }

    /// When the pipe is empty, put the rest of the frame in it: what is
    /// left of the header (written: it goes through the pipe too, so one
    /// splice sends it with its payload), then the payload from the file.
    /// Then move bytes from the pipe to `sock`. `Some(0)` when splicing
    /// stopped and the rest goes from the buffer; `None` when the socket is
    /// full.
    fn splice_some(&mut self, sock: RawFd) -> io::Result<Option<usize>> {
        let Some(pipe) = self.pipe.get_or_insert_with(crate::sys::SplicePipe::new) else {
            self.splice_from = None;
            return Ok(Some(0));
        };
        if self.in_pipe == 0 {
            let Some((file, offset)) = self.splice_from else {
                return Ok(Some(0));
            };
            if self.data_pos < HEADER_LEN {
                let header = &self.data[self.data_pos..HEADER_LEN];
                // An empty pipe takes these few bytes whole, at once.
                // SAFETY: writes from a live slice of the given length.
                let n = unsafe {
                    libc::write(pipe.write.as_raw_fd(), header.as_ptr().cast(), header.len())
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                self.in_pipe = n as usize;
            }
            let next = self.data_pos + self.in_pipe;
            let want = self.data_end - next;
            let moved = match want {
                0 => 0,
                _ => pipe.splice_in(file, offset + (next - HEADER_LEN) as u64, want),
            };
            if moved > 0 {
                self.in_pipe += moved;
            } else if want > 0 {
                // End of file (it shrank) or no splice from this file: the
                // rest of the payload goes from the buffer, after the pipe.
                self.splice_from = None;
            }
            if self.in_pipe == 0 {
                return Ok(Some(0));
            }
        }
        // SAFETY: splice between fds we hold; no offsets.
        let sent = sys::nonblocking(|| unsafe {
            libc::splice(
                pipe.read.as_raw_fd(),
                std::ptr::null_mut(),
                sock,
                std::ptr::null_mut(),
                self.in_pipe,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        })?;
        if sent == Some(0) {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if let Some(n) = sent {
            self.in_pipe -= n;
        }
        Ok(sent)
    }
}

/// One non-blocking `send(2)` with MSG_NOSIGNAL; `None` when the socket is
/// full.
fn send_some(fd: RawFd, buf: &[u8]) -> io::Result<Option<usize>> {
    // SAFETY: sends from a live slice of the given length.
    sys::nonblocking(|| unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

/// Like [`send_some`], with `pass` attached as SCM_RIGHTS to the first
/// byte. A send that takes any byte has passed the fd.
fn send_with_fd(fd: RawFd, buf: &[u8], pass: RawFd) -> io::Result<Option<usize>> {
    // Aligned room for one cmsghdr and one int.
    let mut control = [0u64; 4];
    sys::nonblocking(|| {
        // SAFETY: msghdr and the control buffer are zeroed and live for
        // the call; the cmsg written fits in the buffer (CMSG_SPACE of one
        // int is at most 24 bytes, the buffer is 32), and iov points at
        // the caller's live slice.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
            debug_assert!(space <= std::mem::size_of_val(&control));
            let mut iov = libc::iovec {
                iov_base: buf.as_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            libc::CMSG_DATA(cmsg)
                .cast::<libc::c_int>()
                .write_unaligned(pass);
            libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
        }
    })
}

/// Why [`Connection::splice_data_into`] stopped.
pub(crate) enum SpliceFailed {
    /// The channel failed; the connection is broken and this is its error.
    Channel(Error),
    /// The file could not take the bytes.
    File(io::Error),
}

enum ReadError {
    Eof,
    Io(io::Error),
    Decode(wire::DecodeError),
}

/// Reads frames from a non-blocking socket: the header first, checked
/// before anything is allocated, then the payload into a buffer that only
/// ever grows to the largest frame seen (at most `MAX_CHUNK`).
///
/// With `splice_data` on, a DATA frame is returned as soon as its header
/// is in: its payload stays in the socket for the caller to splice into a
/// file (see [`Connection::splice_data_into`]). Whatever of it the caller
/// leaves there is skipped before the next frame.
#[derive(Default)]
struct FrameReader {
    head: [u8; HEADER_LEN],
    head_got: usize,
    header: Option<Header>,
    payload: Vec<u8>,
    payload_got: usize,
    splice_data: bool,
    /// Payload bytes of the DATA frame in hand still in the socket.
    data_left: usize,
    /// Payload bytes of a consumed DATA frame still in the socket.
    skip: usize,
}

impl FrameReader {
    /// Read until a whole frame is buffered, or a DATA header when DATA
    /// is spliced. `Ok(None)` when the socket has no more bytes for now.
    fn fill(&mut self, fd: RawFd) -> Result<Option<Header>, ReadError> {
        while self.skip > 0 {
            let room = self.skip.min(64 << 10);
            if self.payload.len() < room {
                self.payload.resize(room, 0);
            }
            match recv_some(fd, &mut self.payload[..room])? {
                Some(n) => self.skip -= n,
                None => return Ok(None),
            }
        }
        if self.header.is_none() {
            while self.head_got < HEADER_LEN {
                match recv_some(fd, &mut self.head[self.head_got..])? {
                    Some(n) => self.head_got += n,
                    None => return Ok(None),
                }
            }
            let h = wire::decode_header(&self.head).map_err(ReadError::Decode)?;
            self.header = Some(h);
            self.payload_got = 0;
            if self.splice_data && h.kind == FrameType::Data {
                self.data_left = h.len as usize;
                return Ok(Some(h));
            }
            if self.payload.len() < h.len as usize {
                self.payload.resize(h.len as usize, 0);
            }
        }
        let h = self.header.expect("set above");
        let len = h.len as usize;
        while self.payload_got < len {
            match recv_some(fd, &mut self.payload[self.payload_got..len])? {
                Some(n) => self.payload_got += n,
                None => return Ok(None),
            }
        }
        Ok(Some(h))
    }

    fn payload(&self) -> &[u8] {
        let len = self.header.map_or(0, |h| h.len as usize);
        &self.payload[..len]
    }

    /// Receive the rest of the DATA frame in hand into the buffer, as if
    /// it had been read without splicing. Only before any of its payload
    /// was taken from the socket.
    fn buffer_data(&mut self) {
        let len = self.header.map_or(0, |h| h.len as usize);
        debug_assert_eq!(self.data_left, len);
        self.splice_data = false;
        self.data_left = 0;
        if self.payload.len() < len {
            self.payload.resize(len, 0);
        }
    }

    fn consume(&mut self) {
        self.header = None;
        self.head_got = 0;
        self.payload_got = 0;
        self.skip += std::mem::take(&mut self.data_left);
    }
}

fn recv_some(fd: RawFd, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
    loop {
        // SAFETY: receives into a live mutable slice of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            return Ok(Some(n as usize));
        }
        if n == 0 {
            return Err(ReadError::Eof);
        }
        match sys::errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(None),
            e => return Err(ReadError::Io(io::Error::from_raw_os_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn data_file(len: usize) -> (std::fs::File, Vec<u8>) {
        let data: Vec<u8> = (0..len as u32).map(|i| (i * 13 + i / 509) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    /// Queue one DATA frame whose buffered payload is `buffered`, spliced
    /// from `file` at `offset` when given, and send it all through a
    /// non-blocking socketpair whose far end is read only when the near
    /// end is full. Returns (what arrived, whether the socket filled up).
    fn send_frame(buffered: &[u8], file: Option<(RawFd, u64)>) -> (Vec<u8>, bool) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut out = OutBuf::new(buffered.len() as u32);
        out.payload_room(buffered.len() as u32)
            .copy_from_slice(buffered);
        out.commit_data(buffered.len(), 7, file);
        let mut got = Vec::new();
        let mut filled = false;
        loop {
            out.send(ours.as_raw_fd()).unwrap();
            if out.is_empty() {
                break;
            }
            filled = true;
            let mut buf = vec![0u8; 1 << 16];
            let n = theirs.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        drop(ours);
        theirs.read_to_end(&mut got).unwrap();
        (got, filled)
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let h = wire::encode_header(wire::FrameType::Data, payload.len() as u32, 7);
        [&h[..], payload].concat()
    }

    #[test]
    fn a_payload_from_a_regular_file_is_spliced_from_the_file() {
        // The buffer differs from the file, as when the file changed after
        // the read: the file's bytes arrive, so splice sent them (and the
        // helper's checksum would refuse them). The payload is larger than
        // the socket's buffers, so sends resume with bytes in the pipe.
        let (f, data) = data_file(3 << 20);
        let len = (2 << 20) + 5;
        let stale = vec![0xAAu8; len];
        let (got, filled) = send_frame(&stale, Some((f.as_raw_fd(), 100)));
        assert!(
            filled,
            "the socket never filled; the resume path was not taken"
        );
        assert!(got == frame(&data[100..100 + len]));
    }

    #[test]
    fn bytes_a_shrunken_file_no_longer_has_come_from_the_buffer() {
        let (f, data) = data_file(300 << 10);
        f.set_len(100 << 10).unwrap();
        let earlier = vec![0x55u8; 300 << 10];
        let (got, _) = send_frame(&earlier, Some((f.as_raw_fd(), 0)));
        assert!(got == frame(&[&data[..100 << 10], &earlier[100 << 10..]].concat()));
    }

    #[test]
    fn a_source_that_cannot_be_spliced_is_sent_from_the_buffer() {
        // A pipe has no offsets: splice refuses it (ESPIPE).
        let (r, _w) = nix::unistd::pipe().unwrap();
        let payload = vec![9u8; 70_000];
        let (got, _) = send_frame(&payload, Some((r.as_raw_fd(), 0)));
        assert!(got == frame(&payload));
    }

    fn encoded(kind: FrameType, payload: &[u8], serial: u64) -> Vec<u8> {
        let mut v = wire::encode_header(kind, payload.len() as u32, serial).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn with_splicing_on_a_data_payload_stays_in_the_socket_until_taken() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        theirs
            .write_all(&encoded(FrameType::Data, &payload, 3))
            .unwrap();
        theirs.write_all(&encoded(FrameType::Ok, &[], 3)).unwrap();
        let mut reader = FrameReader {
            splice_data: true,
            ..FrameReader::default()
        };
        let h = reader.fill(ours.as_raw_fd()).ok().flatten().unwrap();
        assert_eq!((h.kind, h.len as usize), (FrameType::Data, payload.len()));
        // Nothing of the payload was received into memory.
        assert_eq!((reader.data_left, reader.payload.len()), (payload.len(), 0));
        let f = tempfile::tempfile().unwrap();
        let mut sink = FileSink::new(f.as_fd(), 0).unwrap();
        while reader.data_left > 0 {
            sink.splice_from(ours.as_raw_fd(), &mut reader.data_left)
                .unwrap();
        }
        reader.consume();
        let mut expected = wire::StreamChecksum::new();
        expected.update(&payload);
        assert_eq!(sink.checksum().digest(), expected.digest());
        let mut written = Vec::new();
        std::io::Seek::rewind(&mut &f).unwrap();
        (&f).read_to_end(&mut written).unwrap();
        assert_eq!(written, payload);
        // The next frame follows on.
        let h = reader.fill(ours.as_raw_fd()).ok().flatten().unwrap();
        assert_eq!(h.kind, FrameType::Ok);
    }

    #[test]
    fn the_rest_of_a_spliced_payload_is_skipped_when_the_frame_is_consumed() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let payload = vec![7u8; 100_000];
        theirs
            .write_all(&encoded(FrameType::Data, &payload, 3))
            .unwrap();
        theirs
            .write_all(&encoded(FrameType::Cancel, &[], 3))
            .unwrap();
        let mut reader = FrameReader {
            splice_data: true,
            ..FrameReader::default()
        };
        reader.fill(ours.as_raw_fd()).ok().flatten().unwrap();
        // Take a little of it, then give the frame up (a cancel, a full
        // disk): the reader skips the rest and finds the next header.
        let f = tempfile::tempfile().unwrap();
        let mut sink = FileSink::new(f.as_fd(), 0).unwrap();
        let mut some = 1000;
        sink.splice_from(ours.as_raw_fd(), &mut some).unwrap();
        reader.data_left -= 1000 - some;
        reader.consume();
        let h = loop {
            if let Some(h) = reader.fill(ours.as_raw_fd()).ok().flatten() {
                break h;
            }
        };
        assert_eq!(h.kind, FrameType::Cancel);
    }

    /// An eventfd token with no cancel behind it, as a handler run in a
    /// forked child before exec leaves (see `cancel`).
    fn stale_wake(cancel: &CancelState) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live local to the eventfd.
        let n =
            unsafe { libc::write(cancel.wake_fd().as_raw_fd(), (&one as *const u64).cast(), 8) };
        assert_eq!(n, 8);
    }

    fn wake_readable(cancel: &CancelState) -> bool {
        let mut p = [sys::pollfd(cancel.wake_fd().as_raw_fd(), libc::POLLIN)];
        sys::poll(&mut p, Some(Duration::ZERO)).unwrap() == 1
    }

    #[test]
    fn wait_drains_a_stale_cancel_wake_up_instead_of_returning_at_once_forever() {
        let spawned =
            crate::process::spawn(&["/bin/sh".into(), "-c".into(), "sleep 30".into()], true)
                .unwrap();
        let mut conn = Connection::new(spawned.process, spawned.channel, spawned.stderr, 1 << 16);
        let cancel = CancelState::new().unwrap();
        let mut events = Events::default();
        stale_wake(&cancel);
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        conn.wait(&cancel, false, true, None, deadline, &mut events)
            .unwrap();
        assert!(!cancel.is_requested());
        assert!(
            !wake_readable(&cancel),
            "the stale wake-up is still there: every wait would return at once"
        );
        // A real cancel still wakes the wait and stays pending.
        cancel.request();
        let ready = conn
            .wait(&cancel, false, true, None, deadline, &mut events)
            .unwrap();
        assert!(!ready.timed_out);
        assert!(cancel.is_requested() && wake_readable(&cancel));
        conn.process.kill();
    }
}
