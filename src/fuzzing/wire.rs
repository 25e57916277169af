//! The codec target. One codec serves both directions: the helper decodes
//! requests with it and the client decodes replies with it, and each side
//! checks the header before it reads a payload. The input is a stream of
//! frames read the way both readers read it: 16 header bytes through
//! `decode_header`, then the payload the header announces (or what is
//! left) through `decode_frame`. Which frames each side accepts in which
//! state is the business of the client and server targets, which run the
//! real readers.
//!
//! Properties checked for what decodes:
//! - the header encodes back to the same 16 bytes;
//! - the frame encodes back to the same bytes, and they decode to the same
//!   frame;
//! - DIRENTS records iterate to exactly their count.

use crate::wire::{
    decode_frame, decode_header, encode_frame, encode_header, Frame, StatRecord, TreeFrame,
    HEADER_LEN,
};

/// The codec target.
pub fn wire(data: &[u8]) {
    let mut rest = data;
    while rest.len() >= HEADER_LEN {
        let raw: &[u8; HEADER_LEN] = rest[..HEADER_LEN].try_into().expect("16 bytes");
        rest = &rest[HEADER_LEN..];
        let header = match decode_header(raw) {
            Ok(h) => h,
            // A reader drops the connection here; go on with the next 16
            // bytes to reach more of the input.
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        assert!(header.len <= header.kind.max_payload());
        assert_eq!(
            &encode_header(header.kind, header.len, header.serial),
            raw,
            "header does not round-trip"
        );
        let n = (header.len as usize).min(rest.len());
        let payload = &rest[..n];
        rest = &rest[n..];
        let frame = match decode_frame(&header, payload) {
            Ok(f) => f,
            Err(e) => {
                // Error messages are built for logs; they must not panic.
                let _ = e.to_string();
                continue;
            }
        };
        assert_eq!(frame.kind(), header.kind);
        if let Frame::Dirents(d) = &frame {
            assert_eq!(d.iter().count(), d.len(), "DIRENTS count");
        }
        let mut out = Vec::new();
        encode_frame(&frame, header.serial, &mut out)
            .unwrap_or_else(|e| panic!("a decoded {:?} does not encode: {e}", frame.kind()));
        let mut expect = raw.to_vec();
        expect[0..4].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        expect.extend_from_slice(payload);
        assert_eq!(
            out,
            expect,
            "{:?} does not encode to its bytes",
            frame.kind()
        );
        let again = decode_header(out[..HEADER_LEN].try_into().expect("16 bytes"))
            .expect("re-encoded header decodes");
        let again = decode_frame(&again, &out[HEADER_LEN..]).expect("re-encoded frame decodes");
        assert_eq!(again, frame, "decode(encode(frame)) differs");
    }
}

/// Seeds: one of every frame type, encoded by the codec, in one stream,
/// and each alone.
pub(super) fn seeds() -> Vec<(String, Vec<u8>)> {
    use crate::wire::{DirentsBuilder, EntryMeta, ResumeFrame};
    let st = StatRecord {
        size: 5,
        mode: 0o100644,
        uid: 1,
        gid: 2,
        nlink: 1,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 5,
    };
    let meta = EntryMeta {
        mode: 0o755,
        mtime_sec: 1,
        mtime_nsec: 2,
    };
    let frames: Vec<Frame<'_>> = vec![
        Frame::Hello {
            version_min: 1,
            version_max: 1,
            features: 7,
            root: b"/srv",
        },
        Frame::Welcome {
            version: 1,
            features: 6,
            pid: 42,
        },
        Frame::Stat { path: b"a/b" },
        Frame::List { path: b"d" },
        Frame::Mkdir {
            mode: 0o777,
            parents: true,
            path: b"x/y",
        },
        Frame::Remove { path: b"f" },
        Frame::Rename {
            from: b"a",
            to: b"b",
        },
        Frame::Put {
            mode: 0o644,
            size: 3,
            path: b"p",
        },
        Frame::Get {
            chunk: 4096,
            path: b"g",
        },
        Frame::Shutdown,
        Frame::Data(b"abc"),
        Frame::End {
            len: 3,
            checksum: 9,
        },
        Frame::Cancel,
        Frame::Stop,
        Frame::SourceInfo {
            size: 3,
            mode: 0o644,
        },
        Frame::Ok,
        Frame::Error {
            errno: 2,
            message: b"STAT x: No such file",
        },
        Frame::StatInfo(st),
        Frame::PutFd {
            mode: 0o600,
            size: 9,
            path: b"q",
        },
        Frame::GetFd { path: b"r" },
        Frame::Copied { total: 77 },
        Frame::Tree(TreeFrame::In {
            flags: 3,
            path: b"dst",
        }),
        Frame::Tree(TreeFrame::Out {
            flags: 1,
            chunk: 4096,
            path: b"src",
        }),
        Frame::Tree(TreeFrame::Dir { meta, path: b"t" }),
        Frame::Tree(TreeFrame::Link {
            meta,
            path: b"t/l",
            target: b"../x",
        }),
        Frame::Tree(TreeFrame::File {
            meta,
            size: 3,
            path: b"t/f",
        }),
        Frame::Tree(TreeFrame::FileWhole {
            meta,
            checksum: 1,
            path: b"t/w",
            data: b"hi",
        }),
        Frame::Tree(TreeFrame::Skip),
        Frame::Tree(TreeFrame::Fail {
            errno: 13,
            path: b"t/z",
            message: b"denied",
        }),
        Frame::Tree(TreeFrame::Totals { files: 2, bytes: 5 }),
        Frame::Tree(TreeFrame::Done),
        Frame::Resume(ResumeFrame::Put {
            mode: 0o644,
            size: 10,
            path: b"p",
        }),
        Frame::Resume(ResumeFrame::PartialAt { len: 4 }),
        Frame::Resume(ResumeFrame::PrefixSum {
            len: 4,
            checksum: 5,
        }),
        Frame::Resume(ResumeFrame::ResumeAt { offset: 4 }),
        Frame::Resume(ResumeFrame::Get {
            chunk: 4096,
            offset: 4,
            checksum: 5,
            path: b"g",
        }),
    ];
    let mut all = Vec::new();
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut one = Vec::new();
        encode_frame(f, i as u64, &mut one).expect("seed frame encodes");
        all.extend_from_slice(&one);
        out.push((format!("frame-{}", f.kind().name().to_lowercase()), one));
    }
    let mut b = DirentsBuilder::new();
    b.push(b"a", &st);
    b.push(b"bb", &st);
    let mut d = Vec::new();
    b.finish_into(3, &mut d);
    all.extend_from_slice(&d);
    out.push(("frame-dirents".into(), d));
    out.push(("all-frames".into(), all));
    out
}
