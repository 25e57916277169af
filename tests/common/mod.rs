//! Shared support for the integration tests: a handle on the freshly built
//! helper, fault injection, temporary trees, and fd/zombie accounting.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use barge::Handle;

pub mod hostile;

pub fn helper_path() -> &'static str {
    env!("CARGO_BIN_EXE_barge-helper")
}

/// A handle on the bundled helper, with chunks small enough that a few
/// hundred KiB make many frames.
pub fn handle() -> Handle {
    let mut h = Handle::new().unwrap();
    h.set_helper([helper_path()]).unwrap();
    h.set_chunk_size(16 << 10).unwrap();
    h
}

/// A handle whose helper runs with `BARGE_HELPER_FAULT=spec`, limited to
/// paths containing `only` when given.
pub fn handle_with_fault(spec: &str, only: Option<&str>) -> Handle {
    let mut h = handle();
    h.set_helper(fault_argv(spec, only)).unwrap();
    h
}

pub fn fault_argv(spec: &str, only: Option<&str>) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![
        "/usr/bin/env".into(),
        format!("BARGE_HELPER_FAULT={spec}").into(),
    ];
    if let Some(p) = only {
        argv.push(format!("BARGE_HELPER_FAULT_PATH={p}").into());
    }
    argv.push(helper_path().into());
    argv
}

/// Deterministic pseudo-random numbers (xorshift64*), so failures replay.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Every name under `dir`, recursively, relative to it, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Assert that no barge temporary file is left anywhere under `dir`.
pub fn assert_no_temp(dir: &Path) {
    for name in tree(dir) {
        let base = name.rsplit('/').next().unwrap();
        assert!(
            !barge::atomic_file::is_hidden_temp_name(base.as_bytes()),
            "temporary file left behind: {name}"
        );
    }
}

pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Pids of this process's children that are zombies.
pub fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut z = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let mut f = after.split_whitespace();
        let state = f.next().unwrap_or("");
        let ppid: i32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me && state == "Z" {
            z.push(pid);
        }
    }
    z
}

/// Whether a process exists. A child of ours that has fully exited (it
/// could be reaped now) counts as gone; so does anyone else's zombie.
pub fn alive(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is valid for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOWAIT leaves the child for its owner to reap; info is live.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r == 0 {
        // SAFETY: waitid filled info.
        return unsafe { info.si_pid() } == 0;
    }
    // Not our child (or already reaped): ask /proc.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|x| x.1.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Run `f` on a thread and fail the test if it takes longer than `limit`:
/// a hang becomes a failure instead of a stuck test run.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {limit:?} (hang)"),
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("barge-test-")
        .tempdir()
        .unwrap()
}

pub fn write_file(p: &Path, data: &[u8]) -> PathBuf {
    std::fs::write(p, data).unwrap();
    p.to_path_buf()
}

/// A pipe as (read end, write end), both CLOEXEC.
pub fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two fds pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two fresh fds owned by nobody else.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}
