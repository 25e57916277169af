//! The server target: [`crate::server::serve`] on a thread, rooted in a
//! fresh temporary directory (see `populate_root`), gets a valid HELLO and
//! then a [`Script`] of frames, then end of input. The target sends and
//! reads at once, so the helper never blocks on a full socket, and checks
//! that every frame the helper sends decodes.
//!
//! Input layout: `features` (0x01 FD_PASSING, 0x02 TREES, 0x04 RESUME
//! offered in HELLO), then the script.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;

use super::script::{split_frames, Cursor, Script};
use super::{populate_root, Scratch};
use crate::server::{serve, ServeEnd, ServerOptions};
use crate::wire::{self, decode_frame, decode_header, encode_frame, Frame, HEADER_LEN};

/// The server target.
pub fn server(data: &[u8]) {
    let mut cur = Cursor::new(data);
    let features = cur.byte() as u64 & 0x7;
    let script = Script::parse(&mut cur);
    let scratch = Scratch::new("server");
    let root = scratch.path().join("root");
    std::fs::create_dir(&root).expect("mkdir root");
    populate_root(&root);
    let end = run_server(&root, features, &script.bytes);
    let _ = end;
}

fn run_server(root: &std::path::Path, features: u64, script: &[u8]) -> ServeEnd {
    use std::os::unix::ffi::OsStrExt;
    let mut bytes = Vec::new();
    encode_frame(
        &Frame::Hello {
            version_min: wire::VERSION,
            version_max: wire::VERSION,
            features,
            root: root.as_os_str().as_bytes(),
        },
        0,
        &mut bytes,
    )
    .expect("HELLO encodes");
    bytes.extend_from_slice(script);

    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let helper = std::thread::spawn(move || {
        crate::server::QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
        let end = serve(theirs.as_fd(), theirs.as_fd(), &ServerOptions::default());
        drop(theirs);
        end
    });
    drive(&ours, &bytes);
    drop(ours);
    helper.join().expect("the helper thread")
}

/// Send `bytes` and read the helper's frames at the same time; after the
/// last byte, shut down the sending side and read until the helper
/// closes. Panics on a frame from the helper that does not decode.
fn drive(sock: &UnixStream, bytes: &[u8]) {
    sock.set_nonblocking(true).expect("non-blocking");
    let fd = sock.as_raw_fd();
    let mut written = 0;
    let mut shut = false;
    let mut inbuf: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if !shut && written == bytes.len() {
            let _ = sock.shutdown(std::net::Shutdown::Write);
            shut = true;
        }
        let events = libc::POLLIN | if shut { 0 } else { libc::POLLOUT };
        let mut fds = [crate::sys::pollfd(fd, events)];
        // The helper closes its end when serve returns, which wakes this.
        let _ = crate::sys::poll(&mut fds, None);
        let rev = fds[0].revents;
        if rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match crate::sys::nonblocking(|| {
                // SAFETY: reads into our own buffer.
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) }
            }) {
                Ok(Some(0)) | Err(_) => break,
                Ok(Some(n)) => {
                    inbuf.extend_from_slice(&buf[..n]);
                    check_replies(&mut inbuf);
                }
                Ok(None) => {}
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
                // The helper stopped reading (a protocol error ends it):
                // keep reading what it sent.
                Err(_) => {
                    let _ = sock.shutdown(std::net::Shutdown::Write);
                    shut = true;
                }
            }
        }
    }
}

/// Decode and drop the whole frames at the front of `inbuf`.
fn check_replies(inbuf: &mut Vec<u8>) {
    let mut at = 0;
    while inbuf.len() - at >= HEADER_LEN {
        let raw: &[u8; HEADER_LEN] = inbuf[at..at + HEADER_LEN].try_into().expect("16 bytes");
        let header = decode_header(raw)
            .unwrap_or_else(|e| panic!("the helper sent a bad header {raw:02x?}: {e}"));
        let end = at + HEADER_LEN + header.len as usize;
        if end > inbuf.len() {
            break;
        }
        if let Err(e) = decode_frame(&header, &inbuf[at + HEADER_LEN..end]) {
            panic!(
                "the helper sent a {} that does not decode: {e}",
                header.kind
            );
        }
        at = end;
    }
    inbuf.drain(..at);
}

/// Seeds: the real client's requests in recorded sessions (see
/// `client::record`), one per client operation.
pub(super) fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for op in 0..13u8 {
        let (requests, _) = super::client::record(op, 0x26);
        let frames = split_frames(&requests);
        // The target sends its own HELLO.
        let mut input = vec![0x06];
        for f in frames.iter().skip(1) {
            input.extend_from_slice(&Script::item_for_frame(f));
        }
        out.push((format!("op{op}"), input));
    }
    out
}
