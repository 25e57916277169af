//! Frames 0x50–0x59: directory trees (feature bit [`FEATURE_TREES`]).
//! `docs/PROTOCOL.md`, "Directory trees", is the specification.
//!
//! A tree moves as one request (TREE_IN or TREE_OUT) whose stream carries
//! every entry back to back, so no entry costs a round trip:
//!
//! ```text
//! (DIR | LINK | FILE_WHOLE | FILE DATA* (END | SKIP) | FAIL)* (DONE | CANCEL)
//! ```
//!
//! Entry paths are relative to the destination directory and made of
//! plain names: never empty, `.` or `..`, never absolute.

use super::{put_bytes, put_path, DecodeError, EncodeError, FrameType, Reader};

/// The handshake feature bit for directory trees.
pub const FEATURE_TREES: u64 = 0x2;

/// TREE_IN / TREE_OUT flag: set mode and mtime from the source.
pub const TREE_PRESERVE: u32 = 0x1;
/// TREE_IN / TREE_OUT flag: a failed entry is reported with FAIL and the
/// rest of the tree still copied.
pub const TREE_KEEP_GOING: u32 = 0x2;
/// TREE_IN / TREE_OUT flag: the receiver keeps the setuid, setgid and
/// sticky bits an entry's mode carries. Without it they are cleared,
/// whatever PRESERVE says: a peer never makes a setuid file unasked.
pub const TREE_SETID: u32 = 0x4;
/// Every flag bit this version defines.
pub const TREE_FLAGS: u32 = TREE_PRESERVE | TREE_KEEP_GOING | TREE_SETID;

/// Mode and modification time of a tree entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// File type and permission bits, as in `st_mode`; the receiver uses
    /// the permission bits only.
    pub mode: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

/// A decoded tree frame. Byte strings borrow from the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeFrame<'a> {
    /// TREE_IN request: the client streams a tree into the directory `path`.
    In { flags: u32, path: &'a [u8] },
    /// TREE_OUT request: the helper streams the tree at `path` (a file or
    /// a directory), with DATA frames of at most `chunk` bytes.
    Out {
        flags: u32,
        chunk: u32,
        path: &'a [u8],
    },
    /// A directory. Its mode and mtime are applied once the tree is done.
    Dir { meta: EntryMeta, path: &'a [u8] },
    /// A symbolic link, created as a link and never followed.
    Link {
        meta: EntryMeta,
        path: &'a [u8],
        target: &'a [u8],
    },
    /// A regular file whose bytes follow as DATA frames, ended by END (the
    /// file's length and checksum) or SKIP.
    File {
        meta: EntryMeta,
        /// Size when the walk saw it; informational.
        size: u64,
        path: &'a [u8],
    },
    /// A whole small regular file in one frame, with the checksum (as
    /// END's) of `data`.
    FileWhole {
        meta: EntryMeta,
        checksum: u64,
        path: &'a [u8],
        data: &'a [u8],
    },
    /// The sender gives up the FILE in flight (it could not read it); the
    /// receiver discards it.
    Skip,
    /// One entry failed; the tree goes on (keep-going mode).
    Fail {
        errno: i32,
        path: &'a [u8],
        message: &'a [u8],
    },
    /// TREE_OUT's first stream frame: what the tree holds.
    Totals { files: u64, bytes: u64 },
    /// The end of a tree stream.
    Done,
}

impl TreeFrame<'_> {
    pub fn kind(&self) -> FrameType {
        use FrameType as T;
        match self {
            TreeFrame::In { .. } => T::TreeIn,
            TreeFrame::Out { .. } => T::TreeOut,
            TreeFrame::Dir { .. } => T::TreeDir,
            TreeFrame::Link { .. } => T::TreeLink,
            TreeFrame::File { .. } => T::TreeFile,
            TreeFrame::FileWhole { .. } => T::TreeFileWhole,
            TreeFrame::Skip => T::TreeSkip,
            TreeFrame::Fail { .. } => T::TreeFail,
            TreeFrame::Totals { .. } => T::TreeTotals,
            TreeFrame::Done => T::TreeDone,
        }
    }
}

/// Fixed bytes of a FILE_WHOLE payload besides its path and data.
const FILE_WHOLE_FIXED: usize = 16 + 8 + 4 + 4;

/// Whether a FILE_WHOLE frame with this path and `len` data bytes fits
/// [`super::MAX_CONTROL`].
pub fn file_whole_fits(path: &[u8], len: usize) -> bool {
    FILE_WHOLE_FIXED + path.len() + len <= super::MAX_CONTROL as usize
}

fn meta(rd: &mut Reader<'_>) -> Result<EntryMeta, DecodeError> {
    let m = EntryMeta {
        mode: rd.u32()?,
        mtime_sec: rd.i64()?,
        mtime_nsec: rd.u32()?,
    };
    if m.mtime_nsec >= 1_000_000_000 {
        return Err(DecodeError::Invalid {
            kind: rd.kind,
            what: "mtime_nsec is not below one second",
        });
    }
    Ok(m)
}

fn put_meta(out: &mut Vec<u8>, m: &EntryMeta) {
    out.extend_from_slice(&m.mode.to_be_bytes());
    out.extend_from_slice(&m.mtime_sec.to_be_bytes());
    out.extend_from_slice(&m.mtime_nsec.to_be_bytes());
}

fn flags(rd: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let f = rd.u32()?;
    if f & !TREE_FLAGS != 0 {
        return Err(DecodeError::Invalid {
            kind: rd.kind,
            what: "unknown tree flags",
        });
    }
    Ok(f)
}

/// An entry path: relative, plain names only.
fn entry_path<'a>(rd: &mut Reader<'a>) -> Result<&'a [u8], DecodeError> {
    let p = rd.path()?;
    if !is_entry_path(p) {
        return Err(DecodeError::Invalid {
            kind: rd.kind,
            what: "entry path is empty, absolute, or has an empty, . or .. component",
        });
    }
    Ok(p)
}

/// Whether `p` is a relative path of plain names (`a/b/c`).
pub fn is_entry_path(p: &[u8]) -> bool {
    !p.is_empty()
        && !p.contains(&0)
        && p.split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

pub(super) fn decode<'a>(
    kind: FrameType,
    rd: &mut Reader<'a>,
) -> Result<TreeFrame<'a>, DecodeError> {
    use FrameType as T;
    Ok(match kind {
        T::TreeIn => TreeFrame::In {
            flags: flags(rd)?,
            path: rd.path()?,
        },
        T::TreeOut => {
            let flags = flags(rd)?;
            let chunk = rd.u32()?;
            if !(super::MIN_CHUNK..=super::MAX_CHUNK).contains(&chunk) {
                return Err(DecodeError::Invalid {
                    kind,
                    what: "chunk size out of range",
                });
            }
            TreeFrame::Out {
                flags,
                chunk,
                path: rd.path()?,
            }
        }
        T::TreeDir => TreeFrame::Dir {
            meta: meta(rd)?,
            path: entry_path(rd)?,
        },
        T::TreeLink => {
            let meta = meta(rd)?;
            let path = entry_path(rd)?;
            let target = rd.path()?;
            if target.is_empty() {
                return Err(DecodeError::Invalid {
                    kind,
                    what: "empty symlink target",
                });
            }
            TreeFrame::Link { meta, path, target }
        }
        T::TreeFile => TreeFrame::File {
            meta: meta(rd)?,
            size: rd.u64()?,
            path: entry_path(rd)?,
        },
        T::TreeFileWhole => TreeFrame::FileWhole {
            meta: meta(rd)?,
            checksum: rd.u64()?,
            path: entry_path(rd)?,
            data: rd.bytes()?,
        },
        T::TreeSkip => TreeFrame::Skip,
        T::TreeFail => TreeFrame::Fail {
            errno: rd.i32()?,
            path: rd.path()?,
            message: rd.bytes()?,
        },
        T::TreeTotals => TreeFrame::Totals {
            files: rd.u64()?,
            bytes: rd.u64()?,
        },
        T::TreeDone => TreeFrame::Done,
        _ => unreachable!("decode is called for tree frame types only"),
    })
}

pub(super) fn encode(frame: &TreeFrame<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let kind = frame.kind();
    let path = |out: &mut Vec<u8>, p: &[u8]| put_path(out, p, kind);
    match *frame {
        TreeFrame::In { flags, path: p } => {
            out.extend_from_slice(&flags.to_be_bytes());
            path(out, p)?;
        }
        TreeFrame::Out {
            flags,
            chunk,
            path: p,
        } => {
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&chunk.to_be_bytes());
            path(out, p)?;
        }
        TreeFrame::Dir { ref meta, path: p } => {
            put_meta(out, meta);
            path(out, p)?;
        }
        TreeFrame::Link {
            ref meta,
            path: p,
            target,
        } => {
            put_meta(out, meta);
            path(out, p)?;
            path(out, target)?;
        }
        TreeFrame::File {
            ref meta,
            size,
            path: p,
        } => {
            put_meta(out, meta);
            out.extend_from_slice(&size.to_be_bytes());
            path(out, p)?;
        }
        TreeFrame::FileWhole {
            ref meta,
            checksum,
            path: p,
            data,
        } => {
            put_meta(out, meta);
            out.extend_from_slice(&checksum.to_be_bytes());
            path(out, p)?;
            put_bytes(out, data);
        }
        TreeFrame::Skip | TreeFrame::Done => {}
        TreeFrame::Fail {
            errno,
            path: p,
            message,
        } => {
            out.extend_from_slice(&errno.to_be_bytes());
            path(out, p)?;
            // Cut the message rather than fail the frame.
            let room = (super::MAX_CONTROL as usize).saturating_sub(12 + p.len());
            put_bytes(out, &message[..message.len().min(room)]);
        }
        TreeFrame::Totals { files, bytes } => {
            out.extend_from_slice(&files.to_be_bytes());
            out.extend_from_slice(&bytes.to_be_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_frame, decode_header, encode_frame, Frame, HEADER_LEN};

    fn round_trip(f: TreeFrame<'_>) {
        let mut out = Vec::new();
        encode_frame(&Frame::Tree(f.clone()), 7, &mut out).unwrap();
        let h = decode_header(out[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(h.kind, f.kind());
        let back = decode_frame(&h, &out[HEADER_LEN..]).unwrap();
        assert_eq!(back, Frame::Tree(f));
    }

    #[test]
    fn every_tree_frame_round_trips() {
        let meta = EntryMeta {
            mode: 0o100644,
            mtime_sec: -5,
            mtime_nsec: 999_999_999,
        };
        round_trip(TreeFrame::In {
            flags: TREE_FLAGS,
            path: b"/d",
        });
        round_trip(TreeFrame::Out {
            flags: 0,
            chunk: 4096,
            path: b"x",
        });
        round_trip(TreeFrame::Dir { meta, path: b"a/b" });
        round_trip(TreeFrame::Link {
            meta,
            path: b"a/l",
            target: b"../../etc",
        });
        round_trip(TreeFrame::File {
            meta,
            size: 1 << 40,
            path: b"a/f",
        });
        round_trip(TreeFrame::FileWhole {
            meta,
            checksum: 42,
            path: b"f",
            data: b"bytes",
        });
        round_trip(TreeFrame::Skip);
        round_trip(TreeFrame::Fail {
            errno: 13,
            path: b"a/x",
            message: b"open a/x: Permission denied",
        });
        round_trip(TreeFrame::Totals { files: 3, bytes: 9 });
        round_trip(TreeFrame::Done);
    }

    #[test]
    fn entry_paths_must_be_plain_relative_names() {
        for bad in [
            &b""[..],
            b"/a",
            b"a//b",
            b"a/",
            b"..",
            b"a/../b",
            b"./a",
            b"a/.",
        ] {
            assert!(!is_entry_path(bad), "{:?}", String::from_utf8_lossy(bad));
            let mut out = Vec::new();
            let f = TreeFrame::Dir {
                meta: EntryMeta::default(),
                path: bad,
            };
            encode_frame(&Frame::Tree(f), 1, &mut out).unwrap();
            let h = decode_header(out[..HEADER_LEN].try_into().unwrap()).unwrap();
            assert!(decode_frame(&h, &out[HEADER_LEN..]).is_err());
        }
        assert!(is_entry_path(b"a/b.c/..d"));
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut out = Vec::new();
        let f = TreeFrame::In {
            flags: 0x80,
            path: b"/",
        };
        encode_frame(&Frame::Tree(f), 1, &mut out).unwrap();
        let h = decode_header(out[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert!(decode_frame(&h, &out[HEADER_LEN..]).is_err());
    }
}
