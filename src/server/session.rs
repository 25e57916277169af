//! One connection: the handshake, then requests one at a time.
//!
//! Every request ends with exactly one final reply (OK, ERROR or
//! STAT_INFO) with its serial, in every path: each handler sends it before
//! returning `Ok`. A handler returns `Err(end)` only when serving stops
//! (SHUTDOWN, a lost channel, a protocol error), and then no more frames
//! are owed.

#[path = "tree.rs"]
mod tree;

#[path = "resume.rs"]
mod resume;

// Where an upload lands, and uploads into FIFOs and devices.
#[path = "dest.rs"]
mod dest;

use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::channel::Channel;
use super::fault::{self, FaultAction, TransferFault};
use super::fs::{self, DirStream};
use super::resolve::{self, Resolver};
use super::{Failure, ServeEnd, ServerOptions};
use crate::atomic_file::AtomicFile;
use crate::file_sink::{FileSink, SinkError};
use crate::wire::{
    decode_frame, decode_header, dirent_fits_alone, encode_frame, encode_header, DirentsBuilder,
    Frame, FrameType, ResumeFrame, StreamChecksum, TreeFrame, HEADER_LEN, MAX_CHUNK, MAX_CONTROL,
    UNKNOWN_SIZE, VERSION,
};

// The fast path's requests (PUT_FD, GET_FD) and when it is granted.
#[path = "fastpath.rs"]
mod fastpath;

/// Feature bits granted whenever the client offers them (the fast path's
/// has conditions of its own: `fastpath::grant_features`).
pub(super) const SUPPORTED_FEATURES: u64 =
    crate::wire::tree::FEATURE_TREES | crate::wire::resume::FEATURE_RESUME;

/// A request, copied out of the frame buffer so its handler may use the
/// channel.
enum Request {
    Stat {
        path: Vec<u8>,
    },
    List {
        path: Vec<u8>,
    },
    Mkdir {
        mode: u32,
        parents: bool,
        path: Vec<u8>,
    },
    Remove {
        path: Vec<u8>,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Put {
        mode: u32,
        path: Vec<u8>,
    },
    Get {
        chunk: u32,
        path: Vec<u8>,
    },
    TreeIn {
        flags: u32,
        path: Vec<u8>,
    },
    TreeOut {
        flags: u32,
        chunk: u32,
        path: Vec<u8>,
    },
    PutPartial {
        mode: u32,
        path: Vec<u8>,
    },
    GetPartial {
        chunk: u32,
        offset: u64,
        checksum: u64,
        path: Vec<u8>,
    },
    Shutdown,
    PutFd {
        mode: u32,
        size: u64,
        path: Vec<u8>,
    },
    GetFd {
        path: Vec<u8>,
    },
}

impl Request {
    fn kind(&self) -> FrameType {
        match self {
            Request::Stat { .. } => FrameType::Stat,
            Request::List { .. } => FrameType::List,
            Request::Mkdir { .. } => FrameType::Mkdir,
            Request::Remove { .. } => FrameType::Remove,
            Request::Rename { .. } => FrameType::Rename,
            Request::Put { .. } => FrameType::Put,
            Request::Get { .. } => FrameType::Get,
            Request::TreeIn { .. } => FrameType::TreeIn,
            Request::TreeOut { .. } => FrameType::TreeOut,
            Request::PutPartial { .. } => FrameType::PutPartial,
            Request::GetPartial { .. } => FrameType::GetPartial,
            Request::Shutdown => FrameType::Shutdown,
            Request::PutFd { .. } => FrameType::PutFd,
            Request::GetFd { .. } => FrameType::GetFd,
        }
    }

    /// The path(s) for log lines.
    fn describe(&self) -> String {
        match self {
            Request::Stat { path }
            | Request::List { path }
            | Request::Mkdir { path, .. }
            | Request::Remove { path }
            | Request::Put { path, .. }
            | Request::Get { path, .. }
            | Request::PutFd { path, .. }
            | Request::GetFd { path }
            | Request::TreeIn { path, .. }
            | Request::TreeOut { path, .. }
            | Request::PutPartial { path, .. }
            | Request::GetPartial { path, .. } => show(path).into_owned(),
            Request::Rename { from, to } => format!("{} to {}", show(from), show(to)),
            Request::Shutdown => String::new(),
        }
    }
}

/// A frame from the client. DATA payloads stay in the session's chunk
/// buffer at `HEADER_LEN..HEADER_LEN + len`.
enum Incoming {
    Request {
        serial: u64,
        req: Request,
    },
    Data {
        serial: u64,
        len: usize,
    },
    End {
        serial: u64,
        len: u64,
        checksum: u64,
    },
    Cancel {
        serial: u64,
    },
    Stop {
        serial: u64,
    },
    /// A stream frame of the tree or resume extensions; its payload stays
    /// in the session's control buffer at `..len`.
    Ext {
        serial: u64,
        kind: FrameType,
        len: usize,
    },
    /// A frame the client never sends after the handshake.
    Other {
        serial: u64,
        kind: FrameType,
    },
}

impl Incoming {
    fn kind_and_serial(&self) -> (FrameType, u64) {
        match *self {
            Incoming::Request { serial, ref req } => (req.kind(), serial),
            Incoming::Data { serial, .. } => (FrameType::Data, serial),
            Incoming::End { serial, .. } => (FrameType::End, serial),
            Incoming::Cancel { serial } => (FrameType::Cancel, serial),
            Incoming::Stop { serial } => (FrameType::Stop, serial),
            Incoming::Ext { serial, kind, .. } => (kind, serial),
            Incoming::Other { serial, kind } => (kind, serial),
        }
    }
}

pub(super) struct Session<'fd, 'o> {
    chan: Channel<'fd>,
    opts: &'o ServerOptions,
    resolver: Resolver,
    /// Payloads of control frames.
    control: Vec<u8>,
    /// DATA frames, header included: payloads read from the client land at
    /// `HEADER_LEN..`, and downloads are read from the file there so a
    /// header can go in front and the frame leave in one write.
    chunk: Vec<u8>,
    /// Encoded control frames on their way out.
    out: Vec<u8>,
    /// Return DATA frames with their payload still in the input, for the
    /// request to splice into its file (see `receive_data`).
    leave_data_in_input: bool,
    /// Payload bytes of the last DATA frame still in the input; skipped
    /// before the next frame is read.
    data_in_input: usize,
}

impl<'fd, 'o> Session<'fd, 'o> {
    pub fn new(
        input: BorrowedFd<'fd>,
        output: BorrowedFd<'fd>,
        opts: &'o ServerOptions,
    ) -> Session<'fd, 'o> {
        Session {
            chan: Channel::new(input, output),
            opts,
            resolver: Resolver::unrooted(),
            control: vec![0; MAX_CONTROL as usize],
            // Zeroed allocations this size come from mmap, so pages a
            // connection never touches cost nothing.
            chunk: vec![0; HEADER_LEN + MAX_CHUNK as usize],
            out: Vec::with_capacity(1024),
            leave_data_in_input: false,
            data_in_input: 0,
        }
    }

    pub fn run(mut self) -> ServeEnd {
        match self.handshake().and_then(|()| self.serve_requests()) {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    fn handshake(&mut self) -> Result<(), ServeEnd> {
        let Some(raw) = self.read_header()? else {
            return Err(ServeEnd::Eof);
        };
        let header = match decode_header(&raw) {
            Ok(h) => h,
            Err(e) => return Err(self.protocol_error(0, format!("expected HELLO: {e}"))),
        };
        if header.kind != FrameType::Hello {
            // The client is waiting for the handshake's reply, serial 0.
            return Err(self.protocol_error(
                0,
                format!(
                    "expected HELLO, got {} for serial {}",
                    header.kind, header.serial
                ),
            ));
        }
        let len = header.len as usize;
        if let Err(e) = self.chan.read_payload(&mut self.control[..len]) {
            return Err(self.channel_lost(e));
        }
        let (version_min, version_max, features, root) =
            match decode_frame(&header, &self.control[..len]) {
                Ok(Frame::Hello {
                    version_min,
                    version_max,
                    features,
                    root,
                }) => (version_min, version_max, features, root.to_vec()),
                Ok(other) => {
                    let message = format!("expected HELLO, got {}", other.kind());
                    return Err(self.protocol_error(0, message));
                }
                Err(e) => return Err(self.protocol_error(0, e.to_string())),
            };
        if header.serial != 0 {
            return Err(self.protocol_error(
                0,
                format!("HELLO must carry serial 0, not {}", header.serial),
            ));
        }
        if self.opts.fault.stall_handshake {
            stall_forever();
        }
        let speaks = self.opts.fault.version.unwrap_or(VERSION);
        if !(version_min..=version_max).contains(&speaks) {
            let message = format!(
                "barge-helper speaks protocol version {speaks}; the client asked for {version_min}..{version_max}"
            );
            self.reply_error(0, libc::EPROTONOSUPPORT, message)?;
            return Err(ServeEnd::Refused);
        }
        if !root.is_empty() {
            match resolve::open_root(&root) {
                Ok(fd) => self.resolver = Resolver::rooted(fd),
                Err(e) => {
                    let f = Failure::from(e);
                    let message = format!("root {}: {}", show(&root), f.reason);
                    self.reply_error(0, f.errno, message)?;
                    return Err(ServeEnd::Refused);
                }
            }
        }
        let features = self.grant_features(features) | (features & SUPPORTED_FEATURES);
        self.send(
            &Frame::Welcome {
                version: speaks,
                features,
                pid: std::process::id(),
            },
            0,
        )
    }

    fn serve_requests(&mut self) -> Result<std::convert::Infallible, ServeEnd> {
        loop {
            let Some(incoming) = self.next_incoming()? else {
                return Err(ServeEnd::Eof);
            };
            match incoming {
                Incoming::Request { serial, req } => self.handle(serial, req)?,
                // A STOP that arrived after its stream ended.
                Incoming::Stop { .. } => {}
                other => return Err(self.unexpected(&other, "while idle")),
            }
        }
    }

    fn handle(&mut self, serial: u64, req: Request) -> Result<(), ServeEnd> {
        if self.opts.debug {
            log_line!(
                "barge-helper: #{serial} {} {}",
                req.kind().name(),
                req.describe()
            );
        }
        match req {
            Request::Stat { path } => {
                let result = self.stat(&path);
                match result {
                    Ok(st) => self.send(&Frame::StatInfo(st), serial),
                    Err(f) => self.fail(serial, "stat", &path, f),
                }
            }
            Request::List { path } => self.list(serial, &path),
            Request::Mkdir {
                mode,
                parents,
                path,
            } => match self.mkdir(&path, mode & 0o7777, parents) {
                Ok(()) => self.send(&Frame::Ok, serial),
                Err(f) => self.fail(serial, "mkdir", &path, f),
            },
            Request::Remove { path } => match self.remove(&path) {
                Ok(()) => self.send(&Frame::Ok, serial),
                Err(f) => self.fail(serial, "remove", &path, f),
            },
            Request::Rename { from, to } => match self.rename(&from, &to) {
                Ok(()) => self.send(&Frame::Ok, serial),
                Err(f) => {
                    let message = format!("rename {} to {}: {}", show(&from), show(&to), f.reason);
                    self.reply_error(serial, f.errno, message)
                }
            },
            Request::Put { mode, path } => self.put(serial, mode, &path),
            Request::Get { chunk, path } => self.get(serial, chunk as usize, &path),
            Request::PutFd { mode, size, path } => self.put_fd(serial, mode, size, &path),
            Request::GetFd { path } => self.get_fd(serial, &path),
            Request::TreeIn { flags, path } => self.tree_in(serial, flags, &path),
            Request::TreeOut { flags, chunk, path } => {
                self.tree_out(serial, flags, chunk as usize, &path)
            }
            Request::PutPartial { mode, path } => self.put_partial(serial, mode, &path),
            Request::GetPartial {
                chunk,
                offset,
                checksum,
                path,
            } => self.get_partial(serial, chunk as usize, offset, checksum, &path),
            Request::Shutdown => {
                if self.opts.fault.ignore_shutdown {
                    return Ok(());
                }
                self.send(&Frame::Ok, serial)?;
                Err(ServeEnd::Shutdown)
            }
        }
    }

    // ---- simple requests ----

    fn stat(&self, path: &[u8]) -> Result<crate::wire::StatRecord, Failure> {
        let fd = self.resolver.open(path, libc::O_PATH)?;
        Ok(fs::stat_record(&fs::fstat(fd.as_fd())?))
    }

    fn mkdir(&self, path: &[u8], mode: u32, parents: bool) -> Result<(), Failure> {
        let whole = trim_trailing_slashes(path);
        if !parents {
            let p = self.resolver.parent(whole)?;
            return Ok(fs::mkdir_at(p.dir.as_fd(), &p.name, mode)?);
        }
        // Create each prefix that ends in a name, tolerating those that
        // exist; then check that the whole path is a directory.
        let prefix_ends = whole
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| i)
            .chain(std::iter::once(whole.len()));
        for end in prefix_ends {
            let prefix = &whole[..end];
            let last = prefix.rsplit(|&c| c == b'/').next().unwrap_or(b"");
            if matches!(last, b"" | b"." | b"..") {
                continue;
            }
            let p = self.resolver.parent(prefix)?;
            match fs::mkdir_at(p.dir.as_fd(), &p.name, mode) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // `/` trims to nothing but still names the root.
        let check = if whole.is_empty() && !path.is_empty() {
            b"/"
        } else {
            whole
        };
        match self.resolver.open(check, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(_) => Ok(()),
            Err(f) if f.errno == libc::ENOTDIR => Err(Failure::from_errno(libc::EEXIST)),
            Err(f) => Err(f),
        }
    }

    fn remove(&self, path: &[u8]) -> Result<(), Failure> {
        let p = self.resolver.parent(trim_trailing_slashes(path))?;
        match fs::unlink_at(p.dir.as_fd(), &p.name, 0) {
            Ok(()) => Ok(()),
            // Linux gives EISDIR for unlink on a directory; POSIX allows EPERM.
            Err(e)
                if e.raw_os_error() == Some(libc::EISDIR)
                    || (e.raw_os_error() == Some(libc::EPERM)
                        && fs::lstat_at(p.dir.as_fd(), &p.name)
                            .is_ok_and(|st| fs::is_dir(&st))) =>
            {
                Ok(fs::unlink_at(p.dir.as_fd(), &p.name, libc::AT_REMOVEDIR)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn rename(&self, from: &[u8], to: &[u8]) -> Result<(), Failure> {
        let src = self.resolver.parent(trim_trailing_slashes(from))?;
        let dst = self.resolver.parent(trim_trailing_slashes(to))?;
        Ok(fs::rename_at(
            src.dir.as_fd(),
            &src.name,
            dst.dir.as_fd(),
            &dst.name,
        )?)
    }

    // ---- LIST ----

    fn list(&mut self, serial: u64, path: &[u8]) -> Result<(), ServeEnd> {
        let opened = self
            .resolver
            .open(path, libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|fd| Ok(DirStream::new(fd)?));
        let mut dir = match opened {
            Ok(d) => d,
            Err(f) => return self.fail(serial, "list", path, f),
        };
        let mut batch = DirentsBuilder::new();
        loop {
            let name = match dir.next_name() {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return self.fail(serial, "list", path, e.into()),
            };
            let bytes = name.as_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            if !dirent_fits_alone(bytes) {
                log_line!(
                    "barge-helper: list {}: skipping an entry whose name is too long for a frame",
                    show(path)
                );
                continue;
            }
            let st = match fs::lstat_at(dir.fd(), &name) {
                Ok(st) => fs::stat_record(&st),
                // Removed since readdir saw it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    log_line!(
                        "barge-helper: list {}: lstat {}: {e}",
                        show(path),
                        show(bytes)
                    );
                    continue;
                }
            };
            if !batch.push(bytes, &st) {
                if self.send_dirents(serial, path, &mut batch)? {
                    return Ok(());
                }
                let pushed = batch.push(bytes, &st);
                debug_assert!(pushed, "an entry that fits alone fits an empty frame");
            }
        }
        if !batch.is_empty() && self.send_dirents(serial, path, &mut batch)? {
            return Ok(());
        }
        self.send(&Frame::Ok, serial)
    }

    /// Send one DIRENTS frame, unless the client asked to STOP the listing;
    /// then reply ECANCELED and return true.
    fn send_dirents(
        &mut self,
        serial: u64,
        path: &[u8],
        batch: &mut DirentsBuilder,
    ) -> Result<bool, ServeEnd> {
        if self.stop_requested(serial, "LIST")? {
            let message = format!("listing of {} cancelled by the client", show(path));
            self.reply_error(serial, libc::ECANCELED, message)?;
            return Ok(true);
        }
        self.out.clear();
        batch.finish_into(serial, &mut self.out);
        self.write_out()?;
        Ok(false)
    }

    // ---- PUT ----

    /// The uncommitted file an upload writes, to replace `p` (from
    /// [`Session::upload_dest`]).
    fn upload_file(&self, p: resolve::Parent, mode: u32) -> Result<AtomicFile, Failure> {
        let mode = upload_mode(mode);
        let file = if self.opts.fault.no_tmpfile {
            AtomicFile::create_hidden(
                p.dir,
                crate::atomic_file::check_name(p.name.as_bytes())?,
                mode,
            )
        } else {
            AtomicFile::create(p.dir, p.name.as_bytes(), mode)
        };
        Ok(file?)
    }

    fn put(&mut self, serial: u64, mode: u32, path: &[u8]) -> Result<(), ServeEnd> {
        let created = match self.upload_dest(path) {
            Ok(dest::UploadDest::Replace(p)) => self.upload_file(p, mode),
            Ok(dest::UploadDest::Special(p)) => return self.put_special(serial, path, p),
            Err(f) => Err(f),
        };
        let file = match created {
            Ok(f) => f,
            Err(f) => {
                let message = format!("open {}: {}", show(path), f.reason);
                return self.refuse_upload(serial, f.errno, message);
            }
        };
        // An unnamed file takes the data with one copy (see file_sink); a
        // hidden name could be truncated by another process while mapped.
        let mut sink = match file.is_hidden_file() {
            false => FileSink::new(file.fd(), 0),
            true => None,
        };
        self.leave_data_in_input = sink.is_some();
        self.chan.read_headers_only(sink.is_some());
        let result = self.put_stream(serial, path, file, sink.as_mut());
        self.leave_data_in_input = false;
        self.chan.read_headers_only(false);
        result
    }

    /// The payload of the DATA frame just read, `len` bytes: spliced from
    /// the input into `sink`, which hashes what it writes, or written from
    /// the chunk buffer into `file` and hashed into `sum`. When the input
    /// cannot be spliced, the rest is read into the buffer and the sink
    /// writes it from there.
    fn receive_data(
        &mut self,
        len: usize,
        file: &mut AtomicFile,
        sink: Option<&mut FileSink>,
        sum: &mut StreamChecksum,
    ) -> Result<io::Result<()>, ServeEnd> {
        let Some(sink) = sink else {
            let bytes = &self.chunk[HEADER_LEN..HEADER_LEN + len];
            sum.update(bytes);
            return Ok(file.file().write_all(bytes));
        };
        debug_assert_eq!(self.data_in_input, len);
        match self.chan.splice_payload(&mut self.data_in_input, sink) {
            Ok(()) => {}
            Err(SinkError::File(e)) => return Ok(Err(e)),
            Err(SinkError::Source(e)) => return Err(self.channel_lost(e)),
        }
        let left = std::mem::take(&mut self.data_in_input);
        if left > 0 {
            // The input refused splice: read the rest, and every later
            // payload, the ordinary way.
            self.leave_data_in_input = false;
            self.chan.read_headers_only(false);
            let bytes = &mut self.chunk[HEADER_LEN..HEADER_LEN + left];
            if let Err(e) = self.chan.read_payload(bytes) {
                return Err(self.channel_lost(e));
            }
            return Ok(sink.write_bytes(bytes));
        }
        Ok(Ok(()))
    }

    fn put_stream(
        &mut self,
        serial: u64,
        path: &[u8],
        mut file: AtomicFile,
        mut sink: Option<&mut FileSink>,
    ) -> Result<(), ServeEnd> {
        let opts = self.opts;
        let faults = opts.fault.transfer_faults_for(path);
        // Without a sink: the checksum of what was received.
        let mut sum = StreamChecksum::new();
        let mut received = 0u64;
        loop {
            let Some(incoming) = self.next_incoming()? else {
                return Err(ServeEnd::ChannelLost);
            };
            match incoming {
                Incoming::Data { serial: s, len } if s == serial => {
                    if let Some(f) = fault::due(faults, received) {
                        if matches!(f.action, FaultAction::Die | FaultAction::Stall) {
                            // Like a real death or hang: the file stays as
                            // it is (fire never returns for these).
                            self.fire(f);
                        }
                        drop(file);
                        let (errno, message) = match self.fire(f) {
                            FaultAction::Fail(errno) => (
                                errno,
                                format!("write {}: {}", show(path), crate::strerror(errno)),
                            ),
                            _ => (
                                libc::ECANCELED,
                                format!("upload of {} {}", show(path), FAULT_CANCEL),
                            ),
                        };
                        return self.refuse_upload(serial, errno, message);
                    }
                    received += len as u64;
                    let written =
                        self.receive_data(len, &mut file, sink.as_deref_mut(), &mut sum)?;
                    if let Err(e) = written {
                        drop(file);
                        let f = Failure::from(e);
                        let message = format!("write {}: {}", show(path), f.reason);
                        return self.refuse_upload(serial, f.errno, message);
                    }
                }
                Incoming::End {
                    serial: s,
                    len,
                    checksum,
                } if s == serial => {
                    if let Some(sink) = sink.as_deref() {
                        sum = sink.checksum();
                    }
                    if !sum.matches(len, checksum) {
                        drop(file);
                        let message = format!(
                            "upload of {}: checksum mismatch: received {} bytes with checksum {:016x}, END says {} bytes with {:016x}",
                            show(path),
                            sum.len(),
                            sum.digest(),
                            len,
                            checksum
                        );
                        return self.reply_error(serial, libc::EBADMSG, message);
                    }
                    return match file.commit() {
                        Ok(()) => self.send(&Frame::Ok, serial),
                        Err(e) => {
                            let f = Failure::from(e);
                            let message = format!("commit {}: {}", show(path), f.reason);
                            self.reply_error(serial, f.errno, message)
                        }
                    };
                }
                Incoming::Cancel { serial: s } if s == serial => {
                    let message = format!("upload of {} cancelled by the client", show(path));
                    return self.reply_then_discard(file, serial, libc::ECANCELED, message);
                }
                Incoming::Stop { .. } => {}
                other => {
                    return Err(self.unexpected(&other, &format!("during PUT serial {serial}")))
                }
            }
        }
    }

    /// The helper ends an upload early: STOP, discard the client's stream
    /// up to its END or CANCEL, then the final ERROR.
    fn refuse_upload(&mut self, serial: u64, errno: i32, message: String) -> Result<(), ServeEnd> {
        self.send(&Frame::Stop, serial)?;
        self.drain_upload(serial)?;
        self.reply_error(serial, errno, message)
    }

    /// Read and discard the client's stream up to its END or CANCEL.
    fn drain_upload(&mut self, serial: u64) -> Result<(), ServeEnd> {
        loop {
            let Some(incoming) = self.next_incoming()? else {
                return Err(ServeEnd::ChannelLost);
            };
            match incoming {
                Incoming::Data { serial: s, .. } if s == serial => {}
                Incoming::End { serial: s, .. } | Incoming::Cancel { serial: s } if s == serial => {
                    return Ok(())
                }
                Incoming::Stop { .. } => {}
                other => {
                    return Err(self.unexpected(&other, &format!("during PUT serial {serial}")))
                }
            }
        }
    }

    // ---- GET ----

    fn get(&mut self, serial: u64, chunk: usize, path: &[u8]) -> Result<(), ServeEnd> {
        match self.open_download(path) {
            Ok((fd, st)) => self.get_opened(serial, chunk, path, fd, &st),
            Err(f) => self.fail(serial, "open", path, f),
        }
    }

    /// GET of `path`, already opened as `fd` with status `st`. A FIFO is
    /// never opened twice: a writer released by the first open could
    /// write into it and close before the second, and its data would be
    /// lost.
    pub(super) fn get_opened(
        &mut self,
        serial: u64,
        chunk: usize,
        path: &[u8],
        fd: OwnedFd,
        st: &libc::stat,
    ) -> Result<(), ServeEnd> {
        let size = if fs::is_regular(st) {
            st.st_size as u64
        } else {
            UNKNOWN_SIZE
        };
        self.send(
            &Frame::SourceInfo {
                size,
                mode: st.st_mode,
            },
            serial,
        )?;
        let opts = self.opts;
        let faults = opts.fault.transfer_faults_for(path);
        let polled = !fs::is_regular(st);
        let stream = DownloadStream {
            chunk,
            polled,
            faults,
            during: "GET",
        };
        self.stream_download(serial, fd.as_fd(), path, StreamChecksum::new(), stream)
    }

    /// Send `src` from its current offset to its end as DATA frames, then
    /// END (with `sum`, which may already cover a prefix the client has)
    /// and OK; or CANCEL and the final ERROR on a STOP, a read error or a
    /// test fault.
    pub(super) fn stream_download(
        &mut self,
        serial: u64,
        src: BorrowedFd<'_>,
        path: &[u8],
        mut sum: StreamChecksum,
        stream: DownloadStream<'_>,
    ) -> Result<(), ServeEnd> {
        let chunk = stream.chunk.min(MAX_CHUNK as usize);
        // A regular file's payloads are spliced from its page cache (see
        // Channel::write_data_from_file), at the offset they were read from.
        let mut splice_at = match stream.polled {
            true => None,
            // SAFETY: lseek on an fd we hold; no pointers.
            false => u64::try_from(unsafe { libc::lseek(src.as_raw_fd(), 0, libc::SEEK_CUR) }).ok(),
        };
        loop {
            if self.stop_requested(serial, stream.during)? {
                let message = format!("download of {} cancelled by the client", show(path));
                return self.cancel_download(serial, libc::ECANCELED, message);
            }
            if stream.polled && !self.source_ready(src)? {
                continue;
            }
            let n = match read_retrying(src, &mut self.chunk[HEADER_LEN..HEADER_LEN + chunk]) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                Err(e) => {
                    let f = Failure::from(e);
                    let message = format!("read {}: {}", show(path), f.reason);
                    return self.cancel_download(serial, f.errno, message);
                }
            };
            if n == 0 {
                self.send(
                    &Frame::End {
                        len: sum.len(),
                        checksum: sum.digest(),
                    },
                    serial,
                )?;
                return self.send(&Frame::Ok, serial);
            }
            if let Some(f) = fault::due(stream.faults, sum.len()) {
                let (errno, message) = match self.fire(f) {
                    FaultAction::Fail(errno) => (
                        errno,
                        format!("read {}: {}", show(path), crate::strerror(errno)),
                    ),
                    _ => (
                        libc::ECANCELED,
                        format!("download of {} {}", show(path), FAULT_CANCEL),
                    ),
                };
                return self.cancel_download(serial, errno, message);
            }
            sum.update(&self.chunk[HEADER_LEN..HEADER_LEN + n]);
            self.chunk[..HEADER_LEN].copy_from_slice(&encode_header(
                FrameType::Data,
                n as u32,
                serial,
            ));
            let (header, payload) = self.chunk[..HEADER_LEN + n].split_at(HEADER_LEN);
            let sent = match splice_at.as_mut() {
                Some(offset) => {
                    let at = *offset;
                    *offset += n as u64;
                    self.chan.write_data_from_file(header, src, at, payload)
                }
                None => self.chan.write_all(&[header, payload]),
            };
            if let Err(e) = sent {
                return Err(self.channel_lost(e));
            }
        }
    }

    /// Wait until a FIFO or device being downloaded has data (or its end),
    /// or the client has sent something (a STOP): `false` for the latter.
    /// A FIFO that no writer has opened yet does not poll readable, so the
    /// download waits for a writer, as `cat` would, instead of ending empty.
    fn source_ready(&mut self, src: BorrowedFd<'_>) -> Result<bool, ServeEnd> {
        let mut fds = [
            crate::sys::pollfd(src.as_raw_fd(), libc::POLLIN),
            crate::sys::pollfd(self.chan.input().as_raw_fd(), libc::POLLIN),
        ];
        // SAFETY: fds is a live two-element pollfd array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(false);
            }
            return Err(self.channel_lost(e));
        }
        Ok(fds[0].revents != 0)
    }

    /// Open a download's source without blocking on a FIFO, and refuse
    /// directories before any stream starts.
    fn open_download(&self, path: &[u8]) -> Result<(OwnedFd, libc::stat), Failure> {
        let fd = self
            .resolver
            .open(path, libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK)?;
        let st = fs::fstat(fd.as_fd())?;
        if fs::is_dir(&st) {
            return Err(Failure::from_errno(libc::EISDIR));
        }
        if fs::is_regular(&st) {
            // Regular files never block; reads go straight through.
            crate::sys::set_nonblocking(fd.as_fd(), false)?;
            // SAFETY: advice only; no pointers.
            unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
        }
        // Anything else (a FIFO, a device) stays non-blocking: `get` polls
        // it together with the channel, so a STOP is seen while it waits.
        Ok((fd, st))
    }

    /// The helper ends a download early: CANCEL, then the final ERROR.
    fn cancel_download(
        &mut self,
        serial: u64,
        errno: i32,
        message: String,
    ) -> Result<(), ServeEnd> {
        self.send(&Frame::Cancel, serial)?;
        self.reply_error(serial, errno, message)
    }

    // ---- faults ----

    /// Act on a transfer fault. Stall and die never return; cancel and
    /// fail return for the caller to end the stream.
    fn fire(&self, f: TransferFault) -> FaultAction {
        match f.action {
            FaultAction::Stall => stall_forever(),
            FaultAction::Die => {
                log_line!("barge-helper: test fault: dying at byte {}", f.at);
                // SAFETY: kill with our own pid; no pointers.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                stall_forever()
            }
            action => action,
        }
    }

    // ---- frames in ----

    /// Whether the client sent STOP for `serial`, checked without blocking.
    /// STOPs for other serials are dropped; any other frame is a protocol
    /// error.
    fn stop_requested(&mut self, serial: u64, during: &str) -> Result<bool, ServeEnd> {
        loop {
            match self.chan.input_pending() {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => return Err(self.channel_lost(e)),
            }
            match self.next_incoming()? {
                None => return Err(ServeEnd::ChannelLost),
                Some(Incoming::Stop { serial: s }) if s == serial => return Ok(true),
                Some(Incoming::Stop { .. }) => {}
                Some(other) => {
                    return Err(self.unexpected(&other, &format!("during {during} serial {serial}")))
                }
            }
        }
    }

    fn read_header(&mut self) -> Result<Option<[u8; HEADER_LEN]>, ServeEnd> {
        match self.chan.read_header() {
            Ok(h) => Ok(h),
            Err(e) => Err(self.channel_lost(e)),
        }
    }

    /// The next frame, or `None` at end of input on a frame boundary.
    fn next_incoming(&mut self) -> Result<Option<Incoming>, ServeEnd> {
        while self.data_in_input > 0 {
            let n = self.data_in_input.min(MAX_CHUNK as usize);
            if let Err(e) = self
                .chan
                .read_payload(&mut self.chunk[HEADER_LEN..HEADER_LEN + n])
            {
                return Err(self.channel_lost(e));
            }
            self.data_in_input -= n;
        }
        let Some(raw) = self.read_header()? else {
            return Ok(None);
        };
        let header = match decode_header(&raw) {
            Ok(h) => h,
            Err(e) => return Err(self.protocol_error(raw_serial(&raw), format!("bad frame: {e}"))),
        };
        let serial = header.serial;
        let len = header.len as usize;
        if header.kind == FrameType::Data {
            if self.leave_data_in_input {
                self.data_in_input = len;
                return Ok(Some(Incoming::Data { serial, len }));
            }
            if let Err(e) = self
                .chan
                .read_payload(&mut self.chunk[HEADER_LEN..HEADER_LEN + len])
            {
                return Err(self.channel_lost(e));
            }
            return Ok(Some(Incoming::Data { serial, len }));
        }
        if let Err(e) = self.chan.read_payload(&mut self.control[..len]) {
            return Err(self.channel_lost(e));
        }
        let frame = match decode_frame(&header, &self.control[..len]) {
            Ok(f) => f,
            Err(e) => return Err(self.protocol_error(serial, format!("bad frame: {e}"))),
        };
        let req = |req| Some(Incoming::Request { serial, req });
        Ok(match frame {
            Frame::Stat { path } => req(Request::Stat {
                path: path.to_vec(),
            }),
            Frame::List { path } => req(Request::List {
                path: path.to_vec(),
            }),
            Frame::Mkdir {
                mode,
                parents,
                path,
            } => req(Request::Mkdir {
                mode,
                parents,
                path: path.to_vec(),
            }),
            Frame::Remove { path } => req(Request::Remove {
                path: path.to_vec(),
            }),
            Frame::Rename { from, to } => req(Request::Rename {
                from: from.to_vec(),
                to: to.to_vec(),
            }),
            Frame::Put { mode, path, .. } => req(Request::Put {
                mode,
                path: path.to_vec(),
            }),
            Frame::Get { chunk, path } => req(Request::Get {
                chunk,
                path: path.to_vec(),
            }),
            Frame::Shutdown => req(Request::Shutdown),
            Frame::PutFd { mode, size, path } if self.chan.receives_fds() => req(Request::PutFd {
                mode,
                size,
                path: path.to_vec(),
            }),
            Frame::GetFd { path } if self.chan.receives_fds() => req(Request::GetFd {
                path: path.to_vec(),
            }),
            Frame::End { len, checksum } => Some(Incoming::End {
                serial,
                len,
                checksum,
            }),
            Frame::Cancel => Some(Incoming::Cancel { serial }),
            Frame::Stop => Some(Incoming::Stop { serial }),
            Frame::Tree(TreeFrame::In { flags, path }) => req(Request::TreeIn {
                flags,
                path: path.to_vec(),
            }),
            Frame::Tree(TreeFrame::Out { flags, chunk, path }) => req(Request::TreeOut {
                flags,
                chunk,
                path: path.to_vec(),
            }),
            Frame::Resume(ResumeFrame::Put { mode, path, .. }) => req(Request::PutPartial {
                mode,
                path: path.to_vec(),
            }),
            Frame::Resume(ResumeFrame::Get {
                chunk,
                offset,
                checksum,
                path,
            }) => req(Request::GetPartial {
                chunk,
                offset,
                checksum,
                path: path.to_vec(),
            }),
            Frame::Tree(_) | Frame::Resume(_) => Some(Incoming::Ext {
                serial,
                kind: header.kind,
                len,
            }),
            other => Some(Incoming::Other {
                serial,
                kind: other.kind(),
            }),
        })
    }

    // ---- frames out ----

    fn send(&mut self, frame: &Frame<'_>, serial: u64) -> Result<(), ServeEnd> {
        self.out.clear();
        if let Err(e) = encode_frame(frame, serial, &mut self.out) {
            // Only paths can fail to encode, and the helper sends none.
            log_line!(
                "barge-helper: internal error: cannot encode {}: {e}",
                frame.kind()
            );
            return Err(ServeEnd::ChannelLost);
        }
        self.write_out()
    }

    fn write_out(&mut self) -> Result<(), ServeEnd> {
        match self.chan.write_all(&[&self.out]) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.channel_lost(e)),
        }
    }

    /// The final ERROR for a request, logged to stderr too.
    fn reply_error(&mut self, serial: u64, errno: i32, message: String) -> Result<(), ServeEnd> {
        log_line!("barge-helper: {message}");
        self.send(
            &Frame::Error {
                errno,
                message: message.as_bytes(),
            },
            serial,
        )
    }

    fn fail(&mut self, serial: u64, verb: &str, path: &[u8], f: Failure) -> Result<(), ServeEnd> {
        let message = format!("{verb} {}: {}", show(path), f.reason);
        self.reply_error(serial, f.errno, message)
    }

    /// Report a protocol error to stderr and, if the output still works, to
    /// the client; serving then stops.
    fn protocol_error(&mut self, serial: u64, message: String) -> ServeEnd {
        log_line!("barge-helper: protocol error: {message}");
        let _ = self.send(
            &Frame::Error {
                errno: libc::EPROTO,
                message: message.as_bytes(),
            },
            serial,
        );
        ServeEnd::ProtocolError
    }

    fn unexpected(&mut self, incoming: &Incoming, context: &str) -> ServeEnd {
        let (kind, serial) = incoming.kind_and_serial();
        self.protocol_error(
            serial,
            format!("unexpected {kind} for serial {serial} {context}"),
        )
    }

    fn channel_lost(&mut self, e: io::Error) -> ServeEnd {
        let quiet = matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe
        ) || e.raw_os_error() == Some(libc::ECONNRESET);
        if !quiet || self.opts.debug {
            log_line!("barge-helper: connection to the client lost: {e}");
        }
        ServeEnd::ChannelLost
    }
}

/// The end of the message when a test fault cancels a transfer.
/// The mode an uploaded file gets from the client's: its permission bits
/// only. Setuid, setgid and sticky are dropped: a client must not be able
/// to make a set-id file as the helper's user (root, under sudo), and a
/// single-file upload has no way to ask for them (a tree copy does, with
/// its keep-setid flag).
pub(super) fn upload_mode(mode: u32) -> u32 {
    mode & 0o777
}

const FAULT_CANCEL: &str = "cancelled by barge-helper (test fault)";

fn raw_serial(raw: &[u8; HEADER_LEN]) -> u64 {
    let mut s = [0u8; 8];
    s.copy_from_slice(&raw[8..16]);
    u64::from_be_bytes(s)
}

fn read_retrying(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is writable for its whole length.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn trim_trailing_slashes(path: &[u8]) -> &[u8] {
    let end = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    &path[..end]
}

/// How [`Session::stream_download`] reads and reports its source.
pub(super) struct DownloadStream<'f> {
    /// Bytes per DATA frame, as the request asked (capped at MAX_CHUNK).
    pub chunk: usize,
    /// A FIFO or device: poll it together with the channel before reading.
    pub polled: bool,
    /// Test faults that apply to this download.
    pub faults: &'f [TransferFault],
    /// The request's name, for protocol errors.
    pub during: &'static str,
}

/// A path for messages: bytes that are not UTF-8 shown as U+FFFD.
fn show(path: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(path)
}

/// The `stall` faults: never read or write again. The stderr line lets a
/// test wait until the helper is stuck instead of guessing with a sleep.
fn stall_forever() -> ! {
    log_line!("barge-helper: fault: stalling");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
