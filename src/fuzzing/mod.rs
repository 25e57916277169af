//! Fuzz target bodies, always compiled so `cargo test` can replay the
//! committed corpora (`tests/fuzz_replay.rs`). The libFuzzer binaries in
//! `fuzz/` call the same functions; `RELIABILITY.md` says how to run them.
//! Not part of the library's API.
//!
//! Targets:
//! - [`wire`]: the codec. Every frame in the input is decoded (header,
//!   then payload, tree and resume frames included) and what decodes is
//!   encoded again and must give the same bytes and the same frame.
//! - [`client`]: a [`crate::Handle`] runs one operation against a fake
//!   helper in this process that answers a valid WELCOME and then the
//!   frames the input describes (see [`Script`]).
//! - [`server`]: [`crate::server::serve`] on a thread, rooted in a
//!   temporary directory, gets a valid HELLO and then the frames the input
//!   describes; every frame it sends back must decode.
//!
//! Each target must return for every input: a panic, an abort of the
//! [`CappedAlloc`] allocator, or a call that does not return within the
//! fuzzer's timeout is a finding.

mod alloc;
mod client;
mod script;
mod server;
mod wire;

pub use alloc::{CappedAlloc, MAX_LIVE_BYTES, MAX_SINGLE_ALLOC};
pub use client::client;
pub use script::{Script, ALL_TYPES};
pub use server::server;
pub use wire::wire;

/// A target body: runs one input.
pub type Target = fn(&[u8]);

/// The targets by name, as the corpus directories and fuzz binaries are
/// named.
pub const TARGETS: [(&str, Target); 3] = [("wire", wire), ("client", client), ("server", server)];

/// Seed inputs for every target, built from the codec and from recorded
/// sessions between the real client and the real helper: `(target, name,
/// bytes)`. The ignored test `write_seeds` in `tests/fuzz_replay.rs` writes
/// them to `fuzz/seeds/`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in wire::seeds() {
        out.push(("wire", name, bytes));
    }
    for (name, bytes) in client::seeds() {
        out.push(("client", name, bytes));
    }
    for (name, bytes) in server::seeds() {
        out.push(("server", name, bytes));
    }
    out
}

/// 256 KiB of fixed, non-repeating-looking bytes, made once: file
/// contents and generated DATA payloads are slices of it (a loop per
/// execution would cost more than the target under coverage
/// instrumentation).
fn pattern(len: usize) -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let p = PATTERN.get_or_init(|| (0..256u32 << 10).map(|i| (i % 251) as u8).collect());
    &p[..len.min(p.len())]
}

/// A fresh directory under `$TMPDIR` for one execution, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("barge-fuzz-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        Scratch(dir)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The helper's root for the server target and the recorded sessions: a
/// few small files, a directory, links, and a partial upload.
fn populate_root(root: &std::path::Path) {
    use std::os::unix::fs::symlink;
    let w = |p: &str, len: usize| {
        std::fs::write(root.join(p), pattern(len)).expect("write a fuzz root file");
    };
    w("f", 100);
    w("big", 9000);
    std::fs::create_dir_all(root.join("d/e")).expect("mkdir fuzz root dir");
    std::fs::create_dir_all(root.join("dst")).expect("mkdir fuzz root dir");
    w("d/g", 10);
    w(".big.barge-partial", 5000);
    let _ = symlink("f", root.join("l"));
    let _ = symlink("/etc", root.join("out"));
}

/// A pipe with both ends non-blocking and CLOEXEC: (read, write).
fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two fds pipe2 writes.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: two new fds owned by nobody else.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}
