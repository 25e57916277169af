//! The barge wire protocol, version 1, as a pure codec: no I/O, no
//! allocation beyond what the caller's buffers hold. `docs/PROTOCOL.md` is
//! the specification; this module is its executable form.
//!
//! Reading a frame is two steps. [`decode_header`] checks the 16-byte header,
//! including the payload length against the limit for the frame type, before
//! the caller allocates or reads anything. [`decode_frame`] then decodes the
//! payload into a [`Frame`] that borrows from the caller's buffer.
//!
//! Writing: [`encode_frame`] appends a whole frame to a `Vec<u8>`. DATA frames
//! are written as [`encode_header`] followed by the caller's own buffer, so the
//! bytes are never copied into a frame buffer.

mod checksum;
pub mod resume;
pub mod tree;

pub use checksum::StreamChecksum;
pub use resume::ResumeFrame;
pub use tree::{EntryMeta, TreeFrame};

use std::fmt;

/// The eight bytes that open HELLO and WELCOME.
pub const MAGIC: [u8; 8] = *b"BARGE\0\r\n";
/// The protocol version this codec speaks.
pub const VERSION: u16 = 1;
/// Length of every frame header.
pub const HEADER_LEN: usize = 16;
/// Largest DATA payload, and so the largest chunk size a handle may use.
pub const MAX_CHUNK: u32 = 4 << 20;
/// Default chunk size.
pub const DEFAULT_CHUNK: u32 = 256 << 10;
/// Smallest chunk size a handle may use.
pub const MIN_CHUNK: u32 = 4096;
/// Largest payload of any frame other than DATA.
pub const MAX_CONTROL: u32 = 64 << 10;
/// A size field meaning "unknown".
pub const UNKNOWN_SIZE: u64 = u64::MAX;
/// Encoded length of a [`StatRecord`].
pub const STAT_RECORD_LEN: usize = 40;
/// Feature bit: the helper takes local files as fds passed with
/// SCM_RIGHTS (PUT_FD, GET_FD) and copies them in the kernel. See
/// `docs/PROTOCOL.md`, "The fast path".
pub const FEATURE_FD_PASSING: u64 = 0x1;

/// Frame types. The numbers are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Welcome = 0x02,
    Stat = 0x10,
    List = 0x11,
    Mkdir = 0x12,
    Remove = 0x13,
    Rename = 0x14,
    Put = 0x15,
    Get = 0x16,
    Shutdown = 0x17,
    Data = 0x20,
    End = 0x21,
    Cancel = 0x22,
    Stop = 0x23,
    SourceInfo = 0x24,
    Ok = 0x30,
    Error = 0x31,
    StatInfo = 0x32,
    Dirents = 0x33,
    PutFd = 0x40,
    GetFd = 0x41,
    Copied = 0x42,
    // Directory trees (wire::tree), 0x50-0x59.
    TreeIn = 0x50,
    TreeOut = 0x51,
    TreeDir = 0x52,
    TreeLink = 0x53,
    TreeFile = 0x54,
    TreeFileWhole = 0x55,
    TreeSkip = 0x56,
    TreeFail = 0x57,
    TreeTotals = 0x58,
    TreeDone = 0x59,
    // Resumable transfers (wire::resume), 0x5a-0x5e.
    PutPartial = 0x5a,
    PartialAt = 0x5b,
    PrefixSum = 0x5c,
    ResumeAt = 0x5d,
    GetPartial = 0x5e,
}

impl FrameType {
    /// The frame type for a wire byte, if there is one.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        use FrameType::*;
        Some(match b {
            0x01 => Hello,
            0x02 => Welcome,
            0x10 => Stat,
            0x11 => List,
            0x12 => Mkdir,
            0x13 => Remove,
            0x14 => Rename,
            0x15 => Put,
            0x16 => Get,
            0x17 => Shutdown,
            0x20 => Data,
            0x21 => End,
            0x22 => Cancel,
            0x23 => Stop,
            0x24 => SourceInfo,
            0x30 => Ok,
            0x31 => Error,
            0x32 => StatInfo,
            0x33 => Dirents,
            0x40 => PutFd,
            0x41 => GetFd,
            0x42 => Copied,
            0x50 => TreeIn,
            0x51 => TreeOut,
            0x52 => TreeDir,
            0x53 => TreeLink,
            0x54 => TreeFile,
            0x55 => TreeFileWhole,
            0x56 => TreeSkip,
            0x57 => TreeFail,
            0x58 => TreeTotals,
            0x59 => TreeDone,
            0x5a => PutPartial,
            0x5b => PartialAt,
            0x5c => PrefixSum,
            0x5d => ResumeAt,
            0x5e => GetPartial,
            _ => return None,
        })
    }

    /// The protocol's name for this frame type, as used in error messages.
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            Hello => "HELLO",
            Welcome => "WELCOME",
            Stat => "STAT",
            List => "LIST",
            Mkdir => "MKDIR",
            Remove => "REMOVE",
            Rename => "RENAME",
            Put => "PUT",
            Get => "GET",
            Shutdown => "SHUTDOWN",
            Data => "DATA",
            End => "END",
            Cancel => "CANCEL",
            Stop => "STOP",
            SourceInfo => "SOURCE_INFO",
            Ok => "OK",
            Error => "ERROR",
            StatInfo => "STAT_INFO",
            Dirents => "DIRENTS",
            PutFd => "PUT_FD",
            GetFd => "GET_FD",
            Copied => "COPIED",
            TreeIn => "TREE_IN",
            TreeOut => "TREE_OUT",
            TreeDir => "TREE_DIR",
            TreeLink => "TREE_LINK",
            TreeFile => "TREE_FILE",
            TreeFileWhole => "TREE_FILE_WHOLE",
            TreeSkip => "TREE_SKIP",
            TreeFail => "TREE_FAIL",
            TreeTotals => "TREE_TOTALS",
            TreeDone => "TREE_DONE",
            PutPartial => "PUT_PARTIAL",
            PartialAt => "PARTIAL_AT",
            PrefixSum => "PREFIX_SUM",
            ResumeAt => "RESUME_AT",
            GetPartial => "GET_PARTIAL",
        }
    }

    /// Largest payload a frame of this type may carry.
    pub fn max_payload(self) -> u32 {
        match self {
            FrameType::Data => MAX_CHUNK,
            _ => MAX_CONTROL,
        }
    }

    /// True for the frames that end a request: OK, ERROR and STAT_INFO.
    pub fn is_final_reply(self) -> bool {
        matches!(self, FrameType::Ok | FrameType::Error | FrameType::StatInfo)
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02x})", self.name(), *self as u8)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameType,
    pub len: u32,
    pub serial: u64,
}

/// Why bytes from the wire are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame {kind} has non-zero flags or reserved bits (0x{bits:06x})")]
    Reserved { kind: FrameType, bits: u32 },
    #[error("frame {kind} payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { kind: FrameType, len: u32, max: u32 },
    #[error("frame {kind} payload is truncated: {need} bytes needed, {have} present")]
    Truncated {
        kind: FrameType,
        need: usize,
        have: usize,
    },
    #[error("frame {kind} has {extra} unexpected trailing bytes")]
    Trailing { kind: FrameType, extra: usize },
    #[error("frame {kind} does not start with the barge magic")]
    BadMagic { kind: FrameType },
    #[error("frame {kind} carries a path containing a NUL byte")]
    NulInPath { kind: FrameType },
    #[error("frame {kind} has an invalid field: {what}")]
    Invalid { kind: FrameType, what: &'static str },
}

/// Why a frame could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("frame {kind} payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        kind: FrameType,
        len: usize,
        max: u32,
    },
    #[error("a path sent in {kind} contains a NUL byte")]
    NulInPath { kind: FrameType },
}

/// Decode and check a frame header. Fails before any payload is read when
/// the type is unknown, the reserved bits are set, or the length is over the
/// type's limit.
pub fn decode_header(bytes: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
    let len = u32::from_be_bytes(bytes[0..4].try_into().unwrap());
    let kind = FrameType::from_u8(bytes[4]).ok_or(DecodeError::UnknownType(bytes[4]))?;
    let bits = u32::from_be_bytes([0, bytes[5], bytes[6], bytes[7]]);
    if bits != 0 {
        return Err(DecodeError::Reserved { kind, bits });
    }
    let max = kind.max_payload();
    if len > max {
        return Err(DecodeError::TooLarge { kind, len, max });
    }
    let serial = u64::from_be_bytes(bytes[8..16].try_into().unwrap());
    Ok(Header { kind, len, serial })
}

/// Encode a frame header. The caller guarantees `len` is within the type's
/// limit (checked in debug builds).
pub fn encode_header(kind: FrameType, len: u32, serial: u64) -> [u8; HEADER_LEN] {
    debug_assert!(len <= kind.max_payload());
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_be_bytes());
    h[4] = kind as u8;
    h[8..16].copy_from_slice(&serial.to_be_bytes());
    h
}

/// File metadata as carried by STAT_INFO and DIRENTS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatRecord {
    pub size: u64,
    /// File type and permission bits, as in `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

/// One decoded frame. Byte strings borrow from the payload buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello {
        version_min: u16,
        version_max: u16,
        features: u64,
        root: &'a [u8],
    },
    Welcome {
        version: u16,
        features: u64,
        pid: u32,
    },
    Stat {
        path: &'a [u8],
    },
    List {
        path: &'a [u8],
    },
    Mkdir {
        mode: u32,
        parents: bool,
        path: &'a [u8],
    },
    Remove {
        path: &'a [u8],
    },
    Rename {
        from: &'a [u8],
        to: &'a [u8],
    },
    Put {
        mode: u32,
        /// [`UNKNOWN_SIZE`] when the client does not know it.
        size: u64,
        path: &'a [u8],
    },
    Get {
        /// Largest DATA payload the client wants, within
        /// [`MIN_CHUNK`]..=[`MAX_CHUNK`].
        chunk: u32,
        path: &'a [u8],
    },
    Shutdown,
    Data(&'a [u8]),
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
        message: &'a [u8],
    },
    StatInfo(StatRecord),
    Dirents(Dirents<'a>),
    /// PUT with the local source passed as an fd alongside the frame.
    PutFd {
        mode: u32,
        /// The source's size when the client opened it.
        size: u64,
        path: &'a [u8],
    },
    /// GET into the client's destination, passed as an fd alongside the
    /// frame.
    GetFd {
        path: &'a [u8],
    },
    /// Bytes the helper has copied so far in a PUT_FD or GET_FD.
    Copied {
        total: u64,
    },
    /// Frames 0x50-0x59, see [`tree`].
    Tree(TreeFrame<'a>),
    /// Frames 0x5a-0x5e, see [`resume`].
    Resume(ResumeFrame<'a>),
}

impl Frame<'_> {
    /// The frame type this frame encodes as.
    pub fn kind(&self) -> FrameType {
        use FrameType as T;
        match self {
            Frame::Hello { .. } => T::Hello,
            Frame::Welcome { .. } => T::Welcome,
            Frame::Stat { .. } => T::Stat,
            Frame::List { .. } => T::List,
            Frame::Mkdir { .. } => T::Mkdir,
            Frame::Remove { .. } => T::Remove,
            Frame::Rename { .. } => T::Rename,
            Frame::Put { .. } => T::Put,
            Frame::Get { .. } => T::Get,
            Frame::Shutdown => T::Shutdown,
            Frame::Data(_) => T::Data,
            Frame::End { .. } => T::End,
            Frame::Cancel => T::Cancel,
            Frame::Stop => T::Stop,
            Frame::SourceInfo { .. } => T::SourceInfo,
            Frame::Ok => T::Ok,
            Frame::Error { .. } => T::Error,
            Frame::StatInfo(_) => T::StatInfo,
            Frame::Dirents(_) => T::Dirents,
            Frame::PutFd { .. } => T::PutFd,
            Frame::GetFd { .. } => T::GetFd,
            Frame::Copied { .. } => T::Copied,
            Frame::Tree(t) => t.kind(),
            Frame::Resume(r) => r.kind(),
        }
    }
}

/// The records of a DIRENTS frame, checked at decode time and iterated
/// without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirents<'a> {
    count: u32,
    records: &'a [u8],
}

impl<'a> Dirents<'a> {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> DirentIter<'a> {
        DirentIter {
            left: self.count,
            rd: Reader::new(FrameType::Dirents, self.records),
        }
    }
}

/// Iterator over `(name, stat)` pairs of a DIRENTS frame.
pub struct DirentIter<'a> {
    left: u32,
    rd: Reader<'a>,
}

impl<'a> Iterator for DirentIter<'a> {
    type Item = (&'a [u8], StatRecord);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated by decode_frame, so these reads cannot fail.
        let st = self.rd.stat().ok()?;
        let name = self.rd.bytes().ok()?;
        Some((name, st))
    }
}

/// Builds DIRENTS payloads that stay within [`MAX_CONTROL`].
#[derive(Default)]
pub struct DirentsBuilder {
    count: u32,
    records: Vec<u8>,
}

impl DirentsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an entry if it fits; returns false when the frame is full (the
    /// caller sends it and starts another). A name too long for any frame
    /// is refused by [`dirent_fits_alone`].
    pub fn push(&mut self, name: &[u8], st: &StatRecord) -> bool {
        let need = STAT_RECORD_LEN + 4 + name.len();
        if 4 + self.records.len() + need > MAX_CONTROL as usize {
            return false;
        }
        put_stat(&mut self.records, st);
        put_bytes(&mut self.records, name);
        self.count += 1;
        true
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Append the DIRENTS frame to `out` and reset the builder.
    pub fn finish_into(&mut self, serial: u64, out: &mut Vec<u8>) {
        let len = 4 + self.records.len();
        out.extend_from_slice(&encode_header(FrameType::Dirents, len as u32, serial));
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.records);
        self.count = 0;
        self.records.clear();
    }
}

/// Whether one entry with this name fits in a DIRENTS frame at all.
pub fn dirent_fits_alone(name: &[u8]) -> bool {
    4 + STAT_RECORD_LEN + 4 + name.len() <= MAX_CONTROL as usize
}

/// A DIRENTS name must be one plain entry of the listed directory: not
/// empty, not `.` or `..`, without `/` (NUL is refused as in any path).
/// Checked here, where every DIRENTS is decoded, so no caller can meet a
/// name that joined to the directory's path would lead out of it.
fn check_entry_name(kind: FrameType, name: &[u8]) -> Result<(), DecodeError> {
    let what = match name {
        b"" => "an empty entry name",
        b"." | b".." => "an entry name that is '.' or '..'",
        _ if name.contains(&b'/') => "an entry name containing '/'",
        _ => return Ok(()),
    };
    Err(DecodeError::Invalid { kind, what })
}

/// Decode a payload whose header has already passed [`decode_header`].
pub fn decode_frame<'a>(header: &Header, payload: &'a [u8]) -> Result<Frame<'a>, DecodeError> {
    let kind = header.kind;
    let mut rd = Reader::new(kind, payload);
    let frame = match kind {
        FrameType::Hello => {
            rd.magic()?;
            Frame::Hello {
                version_min: rd.u16()?,
                version_max: rd.u16()?,
                features: rd.u64()?,
                root: rd.path()?,
            }
        }
        FrameType::Welcome => {
            rd.magic()?;
            Frame::Welcome {
                version: rd.u16()?,
                features: rd.u64()?,
                pid: rd.u32()?,
            }
        }
        FrameType::Stat => Frame::Stat { path: rd.path()? },
        FrameType::List => Frame::List { path: rd.path()? },
        FrameType::Mkdir => Frame::Mkdir {
            mode: rd.u32()?,
            parents: match rd.u8()? {
                0 => false,
                1 => true,
                _ => {
                    return Err(DecodeError::Invalid {
                        kind,
                        what: "parents must be 0 or 1",
                    })
                }
            },
            path: rd.path()?,
        },
        FrameType::Remove => Frame::Remove { path: rd.path()? },
        FrameType::Rename => Frame::Rename {
            from: rd.path()?,
            to: rd.path()?,
        },
        FrameType::Put => Frame::Put {
            mode: rd.u32()?,
            size: rd.u64()?,
            path: rd.path()?,
        },
        FrameType::Get => {
            let chunk = rd.u32()?;
            if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk) {
                return Err(DecodeError::Invalid {
                    kind,
                    what: "chunk size out of range",
                });
            }
            Frame::Get {
                chunk,
                path: rd.path()?,
            }
        }
        FrameType::Shutdown => Frame::Shutdown,
        FrameType::Data => return Ok(Frame::Data(payload)),
        FrameType::End => Frame::End {
            len: rd.u64()?,
            checksum: rd.u64()?,
        },
        FrameType::Cancel => Frame::Cancel,
        FrameType::Stop => Frame::Stop,
        FrameType::SourceInfo => Frame::SourceInfo {
            size: rd.u64()?,
            mode: rd.u32()?,
        },
        FrameType::Ok => Frame::Ok,
        FrameType::Error => Frame::Error {
            errno: rd.i32()?,
            message: rd.bytes()?,
        },
        FrameType::StatInfo => Frame::StatInfo(rd.stat()?),
        FrameType::Dirents => {
            let count = rd.u32()?;
            let records = rd.rest();
            let mut check = Reader::new(kind, records);
            for _ in 0..count {
                check.stat()?;
                check_entry_name(kind, check.path()?)?;
            }
            check.finish()?;
            return Ok(Frame::Dirents(Dirents { count, records }));
        }
        FrameType::PutFd => Frame::PutFd {
            mode: rd.u32()?,
            size: rd.u64()?,
            path: rd.path()?,
        },
        FrameType::GetFd => Frame::GetFd { path: rd.path()? },
        FrameType::Copied => Frame::Copied { total: rd.u64()? },
        FrameType::TreeIn
        | FrameType::TreeOut
        | FrameType::TreeDir
        | FrameType::TreeLink
        | FrameType::TreeFile
        | FrameType::TreeFileWhole
        | FrameType::TreeSkip
        | FrameType::TreeFail
        | FrameType::TreeTotals
        | FrameType::TreeDone => Frame::Tree(tree::decode(kind, &mut rd)?),
        FrameType::PutPartial
        | FrameType::PartialAt
        | FrameType::PrefixSum
        | FrameType::ResumeAt
        | FrameType::GetPartial => Frame::Resume(resume::decode(kind, &mut rd)?),
    };
    rd.finish()?;
    Ok(frame)
}

/// Append a whole frame (header and payload) to `out`.
///
/// DATA frames may be encoded this way too, but the transfer paths write
/// [`encode_header`] followed by their own buffer instead, to avoid a copy.
pub fn encode_frame(frame: &Frame<'_>, serial: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let kind = frame.kind();
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let r = encode_payload(frame, out);
    let len = out.len() - start - HEADER_LEN;
    let result = r.and_then(|()| {
        if len > kind.max_payload() as usize {
            Err(EncodeError::TooLarge {
                kind,
                len,
                max: kind.max_payload(),
            })
        } else {
            Ok(())
        }
    });
    match result {
        Ok(()) => {
            out[start..start + HEADER_LEN]
                .copy_from_slice(&encode_header(kind, len as u32, serial));
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

fn encode_payload(frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let kind = frame.kind();
    let path = |out: &mut Vec<u8>, p: &[u8]| put_path(out, p, kind);
    match *frame {
        Frame::Hello {
            version_min,
            version_max,
            features,
            root,
        } => {
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&version_min.to_be_bytes());
            out.extend_from_slice(&version_max.to_be_bytes());
            out.extend_from_slice(&features.to_be_bytes());
            path(out, root)?;
        }
        Frame::Welcome {
            version,
            features,
            pid,
        } => {
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&version.to_be_bytes());
            out.extend_from_slice(&features.to_be_bytes());
            out.extend_from_slice(&pid.to_be_bytes());
        }
        Frame::Stat { path: p }
        | Frame::List { path: p }
        | Frame::Remove { path: p }
        | Frame::GetFd { path: p } => path(out, p)?,
        Frame::Get { chunk, path: p } => {
            out.extend_from_slice(&chunk.to_be_bytes());
            path(out, p)?;
        }
        Frame::Mkdir {
            mode,
            parents,
            path: p,
        } => {
            out.extend_from_slice(&mode.to_be_bytes());
            out.push(parents as u8);
            path(out, p)?;
        }
        Frame::Rename { from, to } => {
            path(out, from)?;
            path(out, to)?;
        }
        Frame::Put {
            mode,
            size,
            path: p,
        }
        | Frame::PutFd {
            mode,
            size,
            path: p,
        } => {
            out.extend_from_slice(&mode.to_be_bytes());
            out.extend_from_slice(&size.to_be_bytes());
            path(out, p)?;
        }
        Frame::Shutdown | Frame::Cancel | Frame::Stop | Frame::Ok => {}
        Frame::Data(d) => out.extend_from_slice(d),
        Frame::End { len, checksum } => {
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&checksum.to_be_bytes());
        }
        Frame::SourceInfo { size, mode } => {
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&mode.to_be_bytes());
        }
        Frame::Error { errno, message } => {
            out.extend_from_slice(&errno.to_be_bytes());
            // Messages are cut to fit the control limit rather than failing
            // the reply that carries them.
            let room = MAX_CONTROL as usize - 8;
            put_bytes(out, &message[..message.len().min(room)]);
        }
        Frame::StatInfo(ref st) => put_stat(out, st),
        Frame::Copied { total } => out.extend_from_slice(&total.to_be_bytes()),
        Frame::Dirents(d) => {
            out.extend_from_slice(&d.count.to_be_bytes());
            out.extend_from_slice(d.records);
        }
        Frame::Tree(ref t) => tree::encode(t, out)?,
        Frame::Resume(ref r) => resume::encode(r, out)?,
    }
    Ok(())
}

/// A path field: its bytes with their length. A path never holds a NUL.
fn put_path(out: &mut Vec<u8>, p: &[u8], kind: FrameType) -> Result<(), EncodeError> {
    if p.contains(&0) {
        return Err(EncodeError::NulInPath { kind });
    }
    put_bytes(out, p);
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_stat(out: &mut Vec<u8>, st: &StatRecord) {
    out.extend_from_slice(&st.size.to_be_bytes());
    out.extend_from_slice(&st.mode.to_be_bytes());
    out.extend_from_slice(&st.uid.to_be_bytes());
    out.extend_from_slice(&st.gid.to_be_bytes());
    out.extend_from_slice(&st.nlink.to_be_bytes());
    out.extend_from_slice(&st.mtime_sec.to_be_bytes());
    out.extend_from_slice(&st.mtime_nsec.to_be_bytes());
}

/// Bounds-checked big-endian reader over one payload.
struct Reader<'a> {
    kind: FrameType,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(kind: FrameType, buf: &'a [u8]) -> Self {
        Reader { kind, buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let have = self.buf.len() - self.pos;
        if n > have {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                need: self.pos + n,
                have: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().unwrap())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn magic(&mut self) -> Result<(), DecodeError> {
        if self.buf.len() < MAGIC.len() || self.take(MAGIC.len())? != MAGIC {
            return Err(DecodeError::BadMagic { kind: self.kind });
        }
        Ok(())
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn path(&mut self) -> Result<&'a [u8], DecodeError> {
        let p = self.bytes()?;
        if p.contains(&0) {
            return Err(DecodeError::NulInPath { kind: self.kind });
        }
        Ok(p)
    }

    fn stat(&mut self) -> Result<StatRecord, DecodeError> {
        let st = StatRecord {
            size: self.u64()?,
            mode: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            nlink: self.u64()?,
            mtime_sec: self.i64()?,
            mtime_nsec: self.u32()?,
        };
        if st.mtime_nsec >= 1_000_000_000 {
            return Err(DecodeError::Invalid {
                kind: self.kind,
                what: "mtime_nsec is not below one second",
            });
        }
        Ok(st)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos != self.buf.len() {
            return Err(DecodeError::Trailing {
                kind: self.kind,
                extra: self.buf.len() - self.pos,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
