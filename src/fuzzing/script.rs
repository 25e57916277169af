//! The structured input of the client and server targets: a list of
//! frames with correct headers, generated frames, and raw bytes, so the
//! fuzzer spends its time on payloads and sequences rather than on
//! finding header layouts.

use crate::wire::{FrameType, StreamChecksum, HEADER_LEN};

/// Every frame type, in wire order: a structured item names its type by
/// an index into this table.
pub const ALL_TYPES: [FrameType; 37] = {
    use FrameType::*;
    [
        Hello,
        Welcome,
        Stat,
        List,
        Mkdir,
        Remove,
        Rename,
        Put,
        Get,
        Shutdown,
        Data,
        End,
        Cancel,
        Stop,
        SourceInfo,
        Ok,
        Error,
        StatInfo,
        Dirents,
        PutFd,
        GetFd,
        Copied,
        TreeIn,
        TreeOut,
        TreeDir,
        TreeLink,
        TreeFile,
        TreeFileWhole,
        TreeSkip,
        TreeFail,
        TreeTotals,
        TreeDone,
        PutPartial,
        PartialAt,
        PrefixSum,
        ResumeAt,
        GetPartial,
    ]
};

/// A byte cursor that yields zeroes (and empty slices) past the end.
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Cursor<'a> {
        Cursor { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// Up to `n` bytes: fewer at the end of the input.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let t = self.take(8);
        b[..t.len()].copy_from_slice(t);
        u64::from_be_bytes(b)
    }

    /// A length: one byte below 254, or 254 and a u16, or 255 and a
    /// 24-bit number.
    fn len(&mut self) -> usize {
        match self.byte() {
            254 => u16::from_be_bytes([self.byte(), self.byte()]) as usize,
            255 => u32::from_be_bytes([0, self.byte(), self.byte(), self.byte()]) as usize,
            n => n as usize,
        }
    }

    /// A serial: a byte below 0xf0 gives 0..=3 (the handshake's 0 and the
    /// first requests'), 0xf0 and above is followed by a raw u64.
    fn serial(&mut self) -> u64 {
        match self.byte() {
            s if s < 0xf0 => (s % 4) as u64,
            _ => self.u64(),
        }
    }
}

/// Frames for one peer to send, decoded from fuzz input.
///
/// Items, each opened by a tag byte `t`:
/// - `t % 8` in 0..=4: a frame of type `ALL_TYPES[b % 37]` (`b` the next
///   byte), a serial (see `Cursor::serial`), a length and that many
///   payload bytes. The header is built for the payload actually present,
///   even over the type's limit.
/// - 5: the same with a raw type byte and raw flag bytes (unknown types,
///   reserved bits).
/// - 6: raw bytes, a length and the bytes, sent as they are.
/// - 7: a generated frame, by `t / 8 % 3`: END carrying the length and
///   checksum of the DATA payloads since the last END (what a receiver
///   verifies); DATA of `(b + 1) * 1 KiB` pattern bytes; or TREE_FILE_WHOLE
///   of the next byte's length with a right checksum. Each takes a serial.
pub struct Script {
    /// The bytes to send.
    pub bytes: Vec<u8>,
    /// Where each item ends in `bytes`.
    pub ends: Vec<usize>,
}

/// A script stops growing past this many bytes.
const MAX_SCRIPT: usize = 4 << 20;

fn header(kind: u8, flags: [u8; 3], len: usize, serial: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    h[4] = kind;
    h[5..8].copy_from_slice(&flags);
    h[8..16].copy_from_slice(&serial.to_be_bytes());
    h
}

impl Script {
    pub(crate) fn parse(cur: &mut Cursor<'_>) -> Script {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        let mut sum = StreamChecksum::new();
        // Generated DATA frames make up to 256 KiB of one input byte: stop
        // at a few MiB, so the script itself stays far below the
        // allocation caps.
        while !cur.is_empty() && bytes.len() < MAX_SCRIPT {
            let tag = cur.byte();
            match tag % 8 {
                0..=5 => {
                    let (kind, flags) = if tag % 8 == 5 {
                        (cur.byte(), [cur.byte(), cur.byte(), cur.byte()])
                    } else {
                        (
                            ALL_TYPES[cur.byte() as usize % ALL_TYPES.len()] as u8,
                            [0; 3],
                        )
                    };
                    let serial = cur.serial();
                    let n = cur.len();
                    let payload = cur.take(n);
                    bytes.extend_from_slice(&header(kind, flags, payload.len(), serial));
                    bytes.extend_from_slice(payload);
                    match FrameType::from_u8(kind) {
                        Some(FrameType::Data) => sum.update(payload),
                        Some(FrameType::End | FrameType::TreeFile) => sum = StreamChecksum::new(),
                        _ => {}
                    }
                }
                6 => {
                    let n = cur.len();
                    bytes.extend_from_slice(cur.take(n));
                }
                _ => match tag / 8 % 3 {
                    0 => {
                        let serial = cur.serial();
                        let mut p = Vec::with_capacity(16);
                        p.extend_from_slice(&sum.len().to_be_bytes());
                        p.extend_from_slice(&sum.digest().to_be_bytes());
                        bytes.extend_from_slice(&header(FrameType::End as u8, [0; 3], 16, serial));
                        bytes.extend_from_slice(&p);
                        sum = StreamChecksum::new();
                    }
                    1 => {
                        let len = (cur.byte() as usize + 1) * 1024;
                        let serial = cur.serial();
                        let data = super::pattern(len);
                        bytes.extend_from_slice(&header(
                            FrameType::Data as u8,
                            [0; 3],
                            len,
                            serial,
                        ));
                        bytes.extend_from_slice(data);
                        sum.update(data);
                    }
                    _ => {
                        // TREE_FILE_WHOLE: meta (mode u32, mtime i64, nsec
                        // u32), checksum, path, data.
                        let serial = cur.serial();
                        let plen = cur.len();
                        let path = cur.take(plen);
                        let dlen = cur.byte() as usize;
                        let data = cur.take(dlen);
                        let mut s = StreamChecksum::new();
                        s.update(data);
                        let mut p = Vec::new();
                        p.extend_from_slice(&0o100644u32.to_be_bytes());
                        p.extend_from_slice(&0i64.to_be_bytes());
                        p.extend_from_slice(&0u32.to_be_bytes());
                        p.extend_from_slice(&s.digest().to_be_bytes());
                        p.extend_from_slice(&(path.len() as u32).to_be_bytes());
                        p.extend_from_slice(path);
                        p.extend_from_slice(&(data.len() as u32).to_be_bytes());
                        p.extend_from_slice(data);
                        bytes.extend_from_slice(&header(
                            FrameType::TreeFileWhole as u8,
                            [0; 3],
                            p.len(),
                            serial,
                        ));
                        bytes.extend_from_slice(&p);
                    }
                },
            }
            ends.push(bytes.len());
        }
        Script { bytes, ends }
    }

    /// The input item that sends one whole, well-formed frame (for seeds).
    pub fn item_for_frame(frame: &[u8]) -> Vec<u8> {
        let kind = frame[4];
        let serial = u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes"));
        let payload = &frame[HEADER_LEN..];
        let mut out = Vec::with_capacity(frame.len() + 16);
        match ALL_TYPES.iter().position(|t| *t as u8 == kind) {
            Some(i) => {
                out.push(0);
                out.push(i as u8);
            }
            None => {
                out.extend_from_slice(&[5, kind, frame[5], frame[6], frame[7]]);
            }
        }
        if serial < 4 {
            out.push(serial as u8);
        } else {
            out.push(0xf0);
            out.extend_from_slice(&serial.to_be_bytes());
        }
        match payload.len() {
            n if n < 254 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(254);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(255);
                out.extend_from_slice(&(n as u32).to_be_bytes()[1..]);
            }
        }
        out.extend_from_slice(payload);
        out
    }
}

/// Split a byte stream into whole frames by their headers (for seeds).
pub(crate) fn split_frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while bytes.len() >= HEADER_LEN {
        let len = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
        let end = HEADER_LEN + len;
        if end > bytes.len() {
            break;
        }
        out.push(&bytes[..end]);
        bytes = &bytes[end..];
    }
    out
}
