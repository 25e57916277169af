//! Frames 0x5A–0x5E: resumable transfers (feature bit [`FEATURE_RESUME`]).
//! `docs/PROTOCOL.md`, "Resume", is the specification.
//!
//! Upload: PUT_PARTIAL; the helper answers PARTIAL_AT (bytes it kept from
//! an earlier attempt); the client answers PREFIX_SUM (the checksum of
//! its source's first bytes); the helper compares it with its own checksum of
//! the partial data and answers RESUME_AT (the offset the stream starts
//! at: the partial length, or 0 to start over). Then DATA* (END | CANCEL)
//! as for PUT, with END covering the whole file.
//!
//! Download: GET_PARTIAL carries the client's partial length and checksum;
//! the helper verifies them against its source and answers SOURCE_INFO,
//! RESUME_AT and the stream from that offset, END covering the whole file.

use super::{put_path, DecodeError, EncodeError, FrameType, Reader};

/// The handshake feature bit for resumable transfers.
pub const FEATURE_RESUME: u64 = 0x4;

/// A decoded resume frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeFrame<'a> {
    /// PUT_PARTIAL request: an upload that keeps its partial data on
    /// failure and continues an earlier attempt's.
    Put {
        mode: u32,
        size: u64,
        path: &'a [u8],
    },
    /// Bytes of partial data the helper holds for the upload (0 for none).
    PartialAt { len: u64 },
    /// The client's checksum (as END's) of the first `len` bytes of its
    /// source. `len` is less than PARTIAL_AT's when the source is shorter or cannot be
    /// read again from its start; the helper then starts over.
    PrefixSum { len: u64, checksum: u64 },
    /// Where the stream starts: the verified partial length, or 0.
    ResumeAt { offset: u64 },
    /// GET_PARTIAL request: the client holds `offset` bytes of the file
    /// whose checksum (as END's) is `checksum`.
    Get {
        chunk: u32,
        offset: u64,
        checksum: u64,
        path: &'a [u8],
    },
}

impl ResumeFrame<'_> {
    pub fn kind(&self) -> FrameType {
        use FrameType as T;
        match self {
            ResumeFrame::Put { .. } => T::PutPartial,
            ResumeFrame::PartialAt { .. } => T::PartialAt,
            ResumeFrame::PrefixSum { .. } => T::PrefixSum,
            ResumeFrame::ResumeAt { .. } => T::ResumeAt,
            ResumeFrame::Get { .. } => T::GetPartial,
        }
    }
}

pub(super) fn decode<'a>(
    kind: FrameType,
    rd: &mut Reader<'a>,
) -> Result<ResumeFrame<'a>, DecodeError> {
    use FrameType as T;
    Ok(match kind {
        T::PutPartial => ResumeFrame::Put {
            mode: rd.u32()?,
            size: rd.u64()?,
            path: rd.path()?,
        },
        T::PartialAt => ResumeFrame::PartialAt { len: rd.u64()? },
        T::PrefixSum => ResumeFrame::PrefixSum {
            len: rd.u64()?,
            checksum: rd.u64()?,
        },
        T::ResumeAt => ResumeFrame::ResumeAt { offset: rd.u64()? },
        T::GetPartial => {
            let chunk = rd.u32()?;
            if !(super::MIN_CHUNK..=super::MAX_CHUNK).contains(&chunk) {
                return Err(DecodeError::Invalid {
                    kind,
                    what: "chunk size out of range",
                });
            }
            ResumeFrame::Get {
                chunk,
                offset: rd.u64()?,
                checksum: rd.u64()?,
                path: rd.path()?,
            }
        }
        _ => unreachable!("decode is called for resume frame types only"),
    })
}

pub(super) fn encode(frame: &ResumeFrame<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let kind = frame.kind();
    let path = |out: &mut Vec<u8>, p: &[u8]| put_path(out, p, kind);
    match *frame {
        ResumeFrame::Put {
            mode,
            size,
            path: p,
        } => {
            out.extend_from_slice(&mode.to_be_bytes());
            out.extend_from_slice(&size.to_be_bytes());
            path(out, p)?;
        }
        ResumeFrame::PartialAt { len } => out.extend_from_slice(&len.to_be_bytes()),
        ResumeFrame::PrefixSum { len, checksum } => {
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&checksum.to_be_bytes());
        }
        ResumeFrame::ResumeAt { offset } => out.extend_from_slice(&offset.to_be_bytes()),
        ResumeFrame::Get {
            chunk,
            offset,
            checksum,
            path: p,
        } => {
            out.extend_from_slice(&chunk.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&checksum.to_be_bytes());
            path(out, p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_frame, decode_header, encode_frame, Frame, HEADER_LEN};

    #[test]
    fn every_resume_frame_round_trips() {
        for f in [
            ResumeFrame::Put {
                mode: 0o644,
                size: 77,
                path: b"/x",
            },
            ResumeFrame::PartialAt { len: 5 },
            ResumeFrame::PrefixSum {
                len: 5,
                checksum: 9,
            },
            ResumeFrame::ResumeAt { offset: 5 },
            ResumeFrame::Get {
                chunk: 1 << 16,
                offset: 3,
                checksum: 4,
                path: b"y",
            },
        ] {
            let mut out = Vec::new();
            encode_frame(&Frame::Resume(f.clone()), 3, &mut out).unwrap();
            let h = decode_header(out[..HEADER_LEN].try_into().unwrap()).unwrap();
            assert_eq!(h.kind, f.kind());
            assert_eq!(
                decode_frame(&h, &out[HEADER_LEN..]).unwrap(),
                Frame::Resume(f)
            );
        }
    }
}
