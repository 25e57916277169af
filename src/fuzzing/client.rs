//! The client target: one [`Handle`] operation against a fake helper.
//!
//! Input layout: `op`, `flags`, `cancel_at`, `chunk`, then (when flag 0x40
//! is set) a length byte and that many bytes for the helper's stderr, then
//! a [`Script`] of frames. The fake helper runs on a thread over a
//! socketpair (no child process, see `Handle::connect_in_process`). It
//! sends a valid WELCOME whose features come from `flags`, then the
//! script, then closes its sending side; it reads and drops whatever the
//! client sends until the client closes. With flag 0x08, the handle's
//! canceller fires once the first `cancel_at % (items + 1)` items are
//! sent.
//!
//! `flags`: 0x01 offer and grant the fast path (FD_PASSING, with the
//! WELCOME's pid matching the in-process helper's), 0x02 grant TREES,
//! 0x04 grant RESUME, 0x08 cancel, 0x10 keep-going, 0x20 preserve,
//! 0x40 stderr bytes follow, 0x80 a partial download already exists
//! (op 7).
//!
//! Timeouts are short (cancel 50 ms, launch 2 s, kill and shutdown
//! 10 ms), so an input that makes the client wait for nothing shows as a
//! hang (the fuzzer's `-timeout`), not as a slow input.

use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use super::script::{split_frames, Cursor, Script};
use super::{pipe, populate_root, Scratch};
use crate::cancel::Canceller;
use crate::client::{EventMask, Handle};
use crate::wire::{self, encode_frame, Frame};

/// Number of operations the first byte chooses from.
const OPS: u8 = 13;

/// The client target.
pub fn client(data: &[u8]) {
    let mut cur = Cursor::new(data);
    let op = cur.byte() % OPS;
    let flags = cur.byte();
    let cancel_at = cur.byte();
    let chunk = chunk_size(cur.byte());
    let stderr = if flags & 0x40 != 0 {
        let n = cur.byte() as usize;
        cur.take(n).to_vec()
    } else {
        Vec::new()
    };
    let script = Script::parse(&mut cur);

    let scratch = Scratch::new("client");
    populate_local(scratch.path(), flags & 0x80 != 0);
    let mut h = new_handle(flags, chunk);
    let mut granted = 0;
    if flags & 0x01 != 0 {
        granted |= wire::FEATURE_FD_PASSING;
    }
    if flags & 0x02 != 0 {
        granted |= wire::tree::FEATURE_TREES;
    }
    if flags & 0x04 != 0 {
        granted |= wire::resume::FEATURE_RESUME;
    }
    let mut bytes = Vec::new();
    encode_frame(
        &Frame::Welcome {
            version: wire::VERSION,
            features: granted,
            pid: 0,
        },
        0,
        &mut bytes,
    )
    .expect("WELCOME encodes");
    let welcome_len = bytes.len();
    bytes.extend_from_slice(&script.bytes);
    let mut ends: Vec<usize> = vec![welcome_len];
    ends.extend(script.ends.iter().map(|e| e + welcome_len));
    let cancel = (flags & 0x08 != 0).then(|| {
        let at = cancel_at as usize % ends.len() + 1;
        (at, h.canceller())
    });

    let (chan, peer) = UnixStream::pair().expect("socketpair");
    let peer = spawn_peer(peer, bytes, ends, cancel);
    // The helper's stderr: the input's bytes, then end of file (as when
    // a helper exits), or the client waits for more at every teardown.
    let (err_r, err_w) = pipe();
    // At most 255 bytes: the pipe takes them at once.
    let _ = std::fs::File::from(err_w).write_all(&stderr);
    if h.connect_in_process(OwnedFd::from(chan), err_r).is_ok() {
        let _ = run_op(&mut h, op, flags, scratch.path());
    }
    let _ = h.kill();
    drop(h);
    peer.join().expect("the fake helper thread");
}

fn chunk_size(b: u8) -> u32 {
    match b % 4 {
        0 => wire::MIN_CHUNK,
        1 => 3 * wire::MIN_CHUNK,
        2 => wire::DEFAULT_CHUNK,
        _ => wire::MAX_CHUNK,
    }
}

fn new_handle(flags: u8, chunk: u32) -> Handle {
    let mut h = Handle::new().expect("a handle");
    // Never start a real helper: a second operation after a broken
    // connection fails to launch at once.
    h.set_helper(["/nonexistent/barge-fuzz-no-helper"])
        .expect("helper argv");
    h.set_fast_path(flags & 0x01 != 0);
    h.set_chunk_size(chunk).expect("chunk size");
    h.set_cancel_timeout(Duration::from_millis(50));
    h.set_launch_timeout(Duration::from_secs(2));
    h.set_shutdown_timeout(Duration::ZERO);
    h.set_kill_timeout(Duration::ZERO);
    h.set_keep_going(flags & 0x10 != 0);
    h.set_preserve_metadata(flags & 0x20 != 0);
    h.set_progress_interval(Duration::ZERO);
    h.add_event_callback(EventMask::ALL, |e| {
        let _ = format!("{e:?}");
    });
    h
}

/// The local side of the operations: a source file, a source tree, and
/// (with `partial`) the partial data of an earlier download of `out`.
fn populate_local(dir: &Path, partial: bool) {
    let data = super::pattern(5000);
    std::fs::write(dir.join("src"), data).expect("write src");
    std::fs::create_dir_all(dir.join("tree/sub")).expect("mkdir tree");
    std::fs::write(dir.join("tree/a"), b"0123456789").expect("write tree/a");
    std::fs::write(dir.join("tree/sub/b"), data).expect("write tree/sub/b");
    let _ = std::os::unix::fs::symlink("a", dir.join("tree/link"));
    std::fs::create_dir_all(dir.join("dst")).expect("mkdir dst");
    if partial {
        let name = crate::partial::partial_name(b"out");
        let name = std::ffi::OsStr::new(std::str::from_utf8(&name).expect("ASCII name"));
        std::fs::write(dir.join(name), &data[..3000]).expect("write partial");
    }
}

/// Run operation `op` (see the module doc's list in `client`).
fn run_op(h: &mut Handle, op: u8, flags: u8, dir: &Path) -> crate::Result<()> {
    match op {
        0 => h.stat("f").map(|_| ()),
        1 => h.list("d").map(|_| ()),
        2 => h.download("f", dir.join("out")),
        3 => {
            let f = tempfile_in(dir);
            h.download_fd("f", f.as_fd())
        }
        4 => h.upload(dir.join("src"), "up"),
        5 => {
            let (r, w) = pipe();
            let _ = std::fs::File::from(w).write_all(b"bytes from a pipe");
            h.upload_fd(r.as_fd(), "up")
        }
        6 => h.copy_out("d", dir.join("dst")),
        7 => {
            h.set_keep_partial(true);
            h.download("big", dir.join("out"))
        }
        8 => {
            h.set_keep_partial(true);
            h.upload(dir.join("src"), "big")
        }
        9 => h.copy_in(dir.join("tree"), "dst"),
        10 => h.mkdir("m", flags & 0x10 != 0),
        11 => h.remove("f"),
        _ => h.rename("f", "g"),
    }
}

fn tempfile_in(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("fd-out"))
        .expect("open the download_fd destination")
}

/// The fake helper: send `bytes`, firing `cancel` once `cancel.0` items
/// (ending at `ends`) are out, then shut down the sending side; read and
/// drop what arrives until the client closes.
fn spawn_peer(
    sock: UnixStream,
    bytes: Vec<u8>,
    ends: Vec<usize>,
    cancel: Option<(usize, Canceller)>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        sock.set_nonblocking(true).expect("non-blocking");
        let fd = sock.as_raw_fd();
        let mut written = 0;
        let mut items_out = 0;
        let mut cancel = cancel;
        let mut shut = false;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            while items_out < ends.len() && ends[items_out] <= written {
                items_out += 1;
            }
            if cancel.as_ref().is_some_and(|(at, _)| items_out >= *at) {
                cancel.take().expect("checked").1.cancel();
            }
            if !shut && written == bytes.len() {
                let _ = sock.shutdown(std::net::Shutdown::Write);
                shut = true;
            }
            let events = libc::POLLIN | if shut { 0 } else { libc::POLLOUT };
            let mut fds = [crate::sys::pollfd(fd, events)];
            // The client closes its end at the latest when the target
            // kills the connection, which wakes this poll.
            let _ = crate::sys::poll(&mut fds, None);
            let rev = fds[0].revents;
            if rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match crate::sys::nonblocking(|| {
                    // SAFETY: reads into our own buffer.
                    unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) }
                }) {
                    Ok(Some(0)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            if !shut && rev & libc::POLLOUT != 0 {
                let rest = &bytes[written..];
                match crate::sys::nonblocking(|| {
                    // SAFETY: sends from our own buffer.
                    unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) }
                }) {
                    Ok(Some(n)) => written += n,
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        }
    })
}

/// Forward both ways between `client` and `helper` until both directions
/// end; returns (client to helper, helper to client).
fn proxy(client: UnixStream, helper: UnixStream) -> (Vec<u8>, Vec<u8>) {
    fn pump(mut from: UnixStream, mut to: UnixStream) -> Vec<u8> {
        use std::io::Read as _;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
        seen
    }
    let c2 = client.try_clone().expect("clone");
    let h2 = helper.try_clone().expect("clone");
    let up = std::thread::spawn(move || pump(client, helper));
    let down = pump(h2, c2);
    (up.join().expect("proxy thread"), down)
}

/// One real session: the real client runs `op` against the real helper
/// (rooted in a directory like the server target's), through a proxy
/// that records both directions. Returns (client to helper, helper to
/// client).
pub(super) fn record(op: u8, flags: u8) -> (Vec<u8>, Vec<u8>) {
    let scratch = Scratch::new("record");
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).expect("mkdir root");
    populate_root(&root);
    let local = scratch.path().join("local");
    std::fs::create_dir(&local).expect("mkdir local");
    populate_local(&local, flags & 0x80 != 0);

    let (chan, proxy_c) = UnixStream::pair().expect("socketpair");
    let (proxy_h, helper) = UnixStream::pair().expect("socketpair");
    let serve = std::thread::spawn(move || {
        crate::server::serve(helper.as_fd(), helper.as_fd(), &Default::default())
    });
    let recorder = std::thread::spawn(move || proxy(proxy_c, proxy_h));
    let mut h = new_handle(flags & !0x01, chunk_size(0));
    h.set_root(Some(&root)).expect("root");
    let (err_r, _) = pipe();
    h.connect_in_process(OwnedFd::from(chan), err_r)
        .expect("handshake with the real helper");
    let _ = run_op(&mut h, op, flags, &local);
    let _ = h.kill();
    drop(h);
    let recorded = recorder.join().expect("recorder");
    serve.join().expect("helper thread");
    recorded
}

/// Seeds: for every operation, the real helper's replies in a recorded
/// session, with and without a cancel, and a STAT answered by ERROR.
pub(super) fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for op in 0..OPS {
        for (tag, flags) in [("", 0x26u8), ("-partial", 0xa6u8)] {
            if !tag.is_empty() && op != 7 {
                continue;
            }
            let (_, replies) = record(op, flags);
            let frames = split_frames(&replies);
            // The target sends its own WELCOME.
            let mut input = vec![op, flags, 0, 0];
            for f in frames.iter().skip(1) {
                input.extend_from_slice(&Script::item_for_frame(f));
            }
            out.push((format!("op{op}{tag}"), input.clone()));
            input[1] |= 0x08;
            input[2] = (frames.len() / 2) as u8;
            out.push((format!("op{op}{tag}-cancel"), input));
        }
    }
    out
}
