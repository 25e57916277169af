//! A hostile client driving the real `barge-helper`: TREE_IN streams that
//! repeat a directory, leave the tree, make directories without end or
//! send oversized frames. The helper refuses each with a clear error and
//! its peak RSS (from wait4) stays bounded.
//!
//! The bound, [`HELPER_RSS_BOUND_KIB`]: the helper holds a 4 MiB chunk
//! buffer (touched only as DATA fills it), a 64 KiB control buffer and one
//! tree writer; it peaks at 3-5 MiB in these runs (measured). 32 MiB
//! leaves room for allocator slack and a few recorded directories, and is
//! far below the 466 MB the repeated TREE_DIR grew it to in the issue's
//! run.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use barge::wire::tree::{EntryMeta, TreeFrame, TREE_KEEP_GOING, TREE_SETID};
use barge::wire::{
    decode_frame, decode_header, encode_frame, Frame, FrameType, Header, HEADER_LEN, MAX_CHUNK,
    MAX_CONTROL,
};
use common::tempdir;

const HELPER_RSS_BOUND_KIB: u64 = 32 << 10;

/// A frame from the helper: header and payload.
struct Reply {
    header: Header,
    payload: Vec<u8>,
}

impl Reply {
    fn frame(&self) -> Frame<'_> {
        decode_frame(&self.header, &self.payload).unwrap()
    }
}

/// The helper, fed by a writer thread, read by a reader thread.
struct Helper {
    pid: libc::pid_t,
    replies: Receiver<Reply>,
    stop_writing: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    /// Shared with the writer thread, batch by batch.
    stdin: Arc<Mutex<Option<ChildStdin>>>,
}

fn frame(f: &Frame<'_>, serial: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(f, serial, &mut out).unwrap();
    out
}

fn dir(path: &[u8]) -> Frame<'_> {
    Frame::Tree(TreeFrame::Dir {
        meta: EntryMeta {
            mode: libc::S_IFDIR | 0o755,
            mtime_sec: 0,
            mtime_nsec: 0,
        },
        path,
    })
}

fn whole<'a>(path: &'a [u8], mode: u32, data: &'a [u8]) -> Frame<'a> {
    let mut sum = barge::wire::StreamChecksum::new();
    sum.update(data);
    Frame::Tree(TreeFrame::FileWhole {
        meta: EntryMeta {
            mode: libc::S_IFREG | mode,
            mtime_sec: 0,
            mtime_nsec: 0,
        },
        checksum: sum.digest(),
        path,
        data,
    })
}

impl Helper {
    /// Start the helper rooted at `root`, with `env`, and shake hands.
    fn start(root: &Path, env: &[(&str, &str)]) -> Helper {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_barge-helper"));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env_remove("BARGE_HELPER_FAULT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        // wait4 below reaps it.
        std::mem::forget(child);
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut head = [0u8; HEADER_LEN];
            if stdout.read_exact(&mut head).is_err() {
                return;
            }
            let header = decode_header(&head).unwrap();
            let mut payload = vec![0u8; header.len as usize];
            if stdout.read_exact(&mut payload).is_err() {
                return;
            }
            if tx.send(Reply { header, payload }).is_err() {
                return;
            }
        });
        let root = root.as_os_str().as_encoded_bytes();
        let hello = frame(
            &Frame::Hello {
                version_min: 1,
                version_max: 1,
                features: barge::wire::tree::FEATURE_TREES,
                root,
            },
            0,
        );
        stdin.write_all(&hello).unwrap();
        let h = Helper {
            pid,
            replies,
            stop_writing: Arc::new(AtomicBool::new(false)),
            writer: None,
            stdin: Arc::new(Mutex::new(Some(stdin))),
        };
        let w = h.next(Duration::from_secs(10)).expect("WELCOME");
        assert_eq!(w.header.kind, FrameType::Welcome);
        h
    }

    fn send(&mut self, bytes: &[u8]) {
        let mut stdin = self.stdin.lock().unwrap();
        stdin.as_mut().unwrap().write_all(bytes).unwrap();
    }

    /// Write what `next` produces, batch after batch, until it returns
    /// false, the helper stops reading, or [`Helper::stop`].
    fn stream(&mut self, mut next: impl FnMut(&mut Vec<u8>) -> bool + Send + 'static) {
        let stdin = self.stdin.clone();
        let stop = self.stop_writing.clone();
        self.writer = Some(std::thread::spawn(move || {
            let mut buf = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                buf.clear();
                let more = next(&mut buf);
                let mut stdin = stdin.lock().unwrap();
                if stdin.as_mut().unwrap().write_all(&buf).is_err() || !more {
                    break;
                }
            }
        }));
    }

    fn stop(&mut self) {
        self.stop_writing.store(true, Ordering::SeqCst);
        if let Some(w) = self.writer.take() {
            w.join().unwrap();
        }
    }

    fn next(&self, limit: Duration) -> Option<Reply> {
        match self.replies.recv_timeout(limit) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The first reply of `kind` within `limit`, skipping others.
    fn expect(&self, kind: FrameType, limit: Duration) -> Reply {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(r) if r.header.kind == kind => return r,
                Some(_) => {}
                None => panic!("no {kind:?} from the helper within {limit:?}"),
            }
        }
    }

    /// Stop writing, close its input, and wait for it: its peak RSS in
    /// KiB. A helper still running 10 s after its input closed is a hang.
    fn finish(mut self) -> u64 {
        self.stop();
        drop(self.stdin.lock().unwrap().take());
        let start = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: a zeroed rusage is a valid out-parameter.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waits for our own child without blocking.
            let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == self.pid {
                assert!(
                    !libc::WIFSIGNALED(status),
                    "helper died of signal {}",
                    libc::WTERMSIG(status)
                );
                eprintln!("helper peak RSS {} KiB", ru.ru_maxrss);
                return ru.ru_maxrss as u64;
            }
            if start.elapsed() > Duration::from_secs(10) {
                // SAFETY: signals our own unreaped child.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                panic!("the helper did not exit");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[track_caller]
fn assert_error(r: &Reply, errno: i32, text: &str) {
    let Frame::Error { errno: e, message } = r.frame() else {
        panic!("not an ERROR: {:?}", r.header.kind);
    };
    let message = String::from_utf8_lossy(message);
    assert_eq!(e, errno, "{message}");
    assert!(message.contains(text), "{message}");
}

fn tree_in(flags: u32) -> Vec<u8> {
    frame(&Frame::Tree(TreeFrame::In { flags, path: b"/" }), 1)
}

/// The same TREE_DIR without end: the second is refused (EPROTO) and the
/// helper stops serving.
#[test]
fn a_repeated_tree_dir_is_refused() {
    let root = tempdir();
    let mut h = Helper::start(root.path(), &[]);
    h.send(&tree_in(0));
    h.send(&frame(&dir(b"top"), 1));
    let one = frame(&dir(b"top/a"), 1);
    let batch = one.repeat(4096);
    let start = Instant::now();
    h.stream(move |buf| {
        buf.extend_from_slice(&batch);
        start.elapsed() < Duration::from_secs(20)
    });
    let r = h.expect(FrameType::Error, Duration::from_secs(20));
    assert_error(&r, libc::EPROTO, "TREE_DIR top/a sent again");
    assert!(h.finish() < HELPER_RSS_BOUND_KIB);
    assert_eq!(common::tree(root.path()), ["top", "top/a"]);
}

/// Entries outside the tree: a sibling of the top, a first entry that is
/// not a single name. Refused, and nothing of them written.
#[test]
fn entries_outside_the_tree_are_refused() {
    for (entries, text) in [
        (
            vec![
                frame(&dir(b"top"), 1),
                frame(&whole(b"evil", 0o4755, b"x"), 1),
            ],
            "TREE_FILE_WHOLE evil lies outside the tree",
        ),
        (
            vec![frame(&dir(b"a/b"), 1)],
            "the first entry must be a single name",
        ),
        (
            vec![
                frame(&whole(b"top", 0o644, b"file"), 1),
                frame(&dir(b"top/below-a-file"), 1),
            ],
            "TREE_DIR top/below-a-file lies outside the tree",
        ),
    ] {
        let root = tempdir();
        std::fs::create_dir(root.path().join("a")).unwrap();
        let mut h = Helper::start(root.path(), &[]);
        h.send(&tree_in(0));
        for e in &entries {
            h.send(e);
        }
        h.send(&frame(&Frame::Tree(TreeFrame::Done), 1));
        let r = h.expect(FrameType::Error, Duration::from_secs(10));
        assert_error(&r, libc::EPROTO, text);
        assert!(h.finish() < HELPER_RSS_BOUND_KIB);
        assert!(!root.path().join("evil").exists());
        assert!(!root.path().join("a/b").exists());
    }
}

/// Through a link the stream made, a link already there, or a link where
/// a directory is sent: never. Setuid bits: only with TREE_SETID.
#[test]
fn no_write_through_symlinks_and_no_setid_unasked() {
    for setid in [false, true] {
        let root = tempdir();
        let outside = tempdir();
        std::fs::create_dir(root.path().join("top")).unwrap();
        symlink(outside.path(), root.path().join("top/old-link")).unwrap();
        // The tests run as root: such a helper keeps set-id bits only
        // when its operator allows it.
        let mut h = Helper::start(root.path(), &[("BARGE_HELPER_ALLOW_SETID", "1")]);
        let flags = TREE_KEEP_GOING | if setid { TREE_SETID } else { 0 };
        h.send(&tree_in(flags));
        let out = outside.path().as_os_str().as_encoded_bytes();
        let link = Frame::Tree(TreeFrame::Link {
            meta: EntryMeta::default(),
            path: b"top/x",
            target: out,
        });
        for f in [
            dir(b"top"),
            link,
            whole(b"top/x/passwd", 0o644, b"root::0:0"),
            dir(b"top/x/d"),
            whole(b"top/old-link/f", 0o644, b"f"),
            dir(b"top/old-link"),
            whole(b"top/suid", 0o4755, b"s"),
            Frame::Tree(TreeFrame::Done),
        ] {
            h.send(&frame(&f, 1));
        }
        let mut fails = Vec::new();
        loop {
            let r = h.next(Duration::from_secs(10)).expect("a reply");
            match r.frame() {
                Frame::Tree(TreeFrame::Fail { path, .. }) => fails.push(path.to_vec()),
                Frame::Ok => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            fails,
            [
                &b"top/x/passwd"[..],
                b"top/x/d",
                b"top/old-link/f",
                b"top/old-link"
            ]
        );
        assert!(h.finish() < HELPER_RSS_BOUND_KIB);
        assert!(common::tree(outside.path()).is_empty());
        let mode = std::fs::metadata(root.path().join("top/suid"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o7000, if setid { 0o4000 } else { 0 }, "{mode:o}");
    }
}

/// Directories without end: past the helper's bound (lowered here), the
/// helper stops the stream and answers E2BIG naming the bound.
#[test]
fn endless_directories_stop_at_the_bound() {
    let root = tempdir();
    let mut h = Helper::start(root.path(), &[("BARGE_HELPER_MAX_TREE_DIRS", "2000")]);
    h.send(&tree_in(0));
    h.send(&frame(&dir(b"top"), 1));
    let mut i = 0u64;
    let start = Instant::now();
    h.stream(move |buf| {
        for _ in 0..1000 {
            buf.extend_from_slice(&frame(&dir(format!("top/d{i}").as_bytes()), 1));
            i += 1;
        }
        start.elapsed() < Duration::from_secs(20)
    });
    h.expect(FrameType::Stop, Duration::from_secs(20));
    // Answer the STOP as a client does: end our stream. The helper drains
    // it to this DONE, then replies.
    h.stop();
    h.send(&frame(&Frame::Tree(TreeFrame::Done), 1));
    let r = h.expect(FrameType::Error, Duration::from_secs(10));
    assert_error(&r, libc::E2BIG, "more than 2000 directories");
    assert!(h.finish() < HELPER_RSS_BOUND_KIB);
    assert_eq!(
        std::fs::read_dir(root.path().join("top")).unwrap().count(),
        1999
    );
}

/// Many entries, all legitimate (the same small file rewritten): the
/// helper's memory does not grow with them.
#[test]
fn endless_entries_keep_the_helper_flat() {
    let root = tempdir();
    let mut h = Helper::start(root.path(), &[]);
    h.send(&tree_in(0));
    h.send(&frame(&dir(b"top"), 1));
    let one = frame(&whole(b"top/f", 0o644, &[7u8; 1024]), 1);
    for _ in 0..20 {
        h.send(&one.repeat(1000));
    }
    h.send(&frame(&Frame::Tree(TreeFrame::Done), 1));
    let r = h.expect(FrameType::Ok, Duration::from_secs(60));
    assert_eq!(r.header.serial, 1);
    assert!(h.finish() < HELPER_RSS_BOUND_KIB);
}

/// Frames larger than their type allows are refused from the header,
/// before any payload is read or allocated.
#[test]
fn oversized_frames_are_refused() {
    let file = Frame::Tree(TreeFrame::File {
        meta: EntryMeta {
            mode: libc::S_IFREG | 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
        },
        size: 1 << 40,
        path: b"top/f",
    });
    let header = |kind: u8, len: u32| {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&len.to_be_bytes());
        h[4] = kind;
        h[8..16].copy_from_slice(&1u64.to_be_bytes());
        h.to_vec()
    };
    for (prefix, raw) in [
        (vec![], header(FrameType::TreeDir as u8, MAX_CONTROL + 1)),
        (vec![], header(FrameType::TreeFileWhole as u8, u32::MAX)),
        (
            vec![frame(&dir(b"top"), 1), frame(&file, 1)],
            header(FrameType::Data as u8, MAX_CHUNK + 1),
        ),
    ] {
        let root = tempdir();
        let mut h = Helper::start(root.path(), &[]);
        h.send(&tree_in(0));
        for p in &prefix {
            h.send(p);
        }
        h.send(&raw);
        let r = h.expect(FrameType::Error, Duration::from_secs(10));
        assert_error(&r, libc::EPROTO, "exceeds the limit");
        assert!(h.finish() < HELPER_RSS_BOUND_KIB);
    }
}

/// A helper that runs as root refuses a client's request to keep set-id
/// bits unless its operator allowed it, and writes nothing of that tree.
#[test]
fn a_root_helper_refuses_setid_unless_its_operator_allows_it() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root, as the suite does (the helper it starts must run as root)"
    );
    let root = tempdir();
    let mut h = Helper::start(root.path(), &[]);
    h.send(&tree_in(TREE_SETID));
    let refused = loop {
        let r = h.next(Duration::from_secs(10)).expect("a reply");
        match r.frame() {
            // The helper stops the stream first; the client ends it.
            Frame::Stop => h.send(&frame(&Frame::Tree(TreeFrame::Done), 1)),
            Frame::Error { .. } => break r,
            other => panic!("{other:?}"),
        }
    };
    assert_error(&refused, libc::EPERM, "BARGE_HELPER_ALLOW_SETID");
    h.finish();
    assert!(common::tree(root.path()).is_empty());
}
