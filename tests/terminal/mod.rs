//! A pseudo-terminal driver for the CLI tests: runs a command as the
//! session leader of a new pty, the way a terminal emulator runs a shell,
//! and reads what it draws.
//!
//! Input goes through the pty's line discipline, so writing the byte 0x03
//! makes the kernel send SIGINT to the terminal's foreground process
//! group, exactly as a person's ^C does. Output is kept raw (for failure
//! messages) and as text with escape sequences and carriage returns
//! removed (for matching).
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const CTRL_C: u8 = 0x03;
pub const CTRL_D: u8 = 0x04;

/// Which of the child's standard streams are the terminal. The others
/// must have been set on the command by the caller.
#[derive(Clone, Copy)]
pub struct Attach {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Attach {
    pub const ALL: Attach = Attach {
        stdin: true,
        stdout: true,
        stderr: true,
    };
}

pub struct Terminal {
    master: OwnedFd,
    child: Child,
    status: Option<ExitStatus>,
    raw: Vec<u8>,
    text: String,
    escape: Escape,
    /// Where the next `expect` starts searching in `text`.
    cursor: usize,
    eof: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Escape {
    None,
    /// After ESC.
    Esc,
    /// In `ESC [ ... final`.
    Csi,
    /// In `ESC ] ... BEL` or `ESC ] ... ESC \`.
    Osc,
    OscEsc,
}

fn check(r: libc::c_int, what: &str) -> libc::c_int {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

impl Terminal {
    pub fn spawn(cmd: Command) -> Terminal {
        Terminal::spawn_with(cmd, Attach::ALL)
    }

    pub fn spawn_with(mut cmd: Command, attach: Attach) -> Terminal {
        // SAFETY: the path is a NUL-terminated literal; the result is checked.
        let master = check(
            unsafe {
                libc::open(
                    c"/dev/ptmx".as_ptr(),
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                )
            },
            "open /dev/ptmx",
        );
        // SAFETY: a fresh fd that nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads an int from a live local.
        check(
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) },
            "unlock pty",
        );
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a live local.
        check(
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) },
            "set the window size",
        );
        // SAFETY: TIOCGPTPEER opens the pty's other end with these flags
        // (CLOEXEC, so no other test's child inherits it); checked below.
        let slave = check(
            unsafe {
                libc::ioctl(
                    master.as_raw_fd(),
                    libc::TIOCGPTPEER,
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                )
            },
            "open the pty's peer",
        );
        // SAFETY: a fresh fd that nothing else owns.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let stdio = || Stdio::from(slave.try_clone().expect("dup the pty"));
        if attach.stdin {
            cmd.stdin(stdio());
        }
        if attach.stdout {
            cmd.stdout(stdio());
        }
        if attach.stderr {
            cmd.stderr(stdio());
        }
        cmd.env("TERM", "xterm");
        let slave_fd = slave.as_raw_fd();
        // SAFETY: setsid and ioctl are async-signal-safe system calls. The
        // child becomes a session leader, and the pty its controlling
        // terminal with the child's group in the foreground. slave_fd is
        // still open in the child here: CLOEXEC closes it only at exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn the command in the pty");
        drop(slave);
        set_nonblocking(&master);
        Terminal {
            master,
            child,
            status: None,
            raw: Vec::new(),
            text: String::new(),
            escape: Escape::None,
            cursor: 0,
            eof: false,
        }
    }

    /// Resize the terminal, as a window manager does; the kernel sends
    /// SIGWINCH to the foreground process group.
    pub fn resize(&self, rows: u16, cols: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a live local.
        check(
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) },
            "resize the terminal",
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Type bytes into the terminal.
    pub fn send(&self, bytes: &[u8]) {
        let mut off = 0;
        while off < bytes.len() {
            // SAFETY: writes from a live slice to our own fd.
            let n = unsafe {
                libc::write(
                    self.master.as_raw_fd(),
                    bytes[off..].as_ptr().cast(),
                    bytes.len() - off,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EAGAIN) || e.raw_os_error() == Some(libc::EINTR) {
                    std::thread::yield_now();
                    continue;
                }
                panic!("write to the pty: {e}");
            }
            off += n as usize;
        }
    }

    /// Type a line, as if followed by Enter.
    pub fn line(&self, s: &str) {
        self.send(format!("{s}\r").as_bytes());
    }

    /// Read what is available within `wait`; false at end of output.
    fn pump(&mut self, wait: Duration) -> bool {
        if self.eof {
            std::thread::sleep(wait.min(Duration::from_millis(5)));
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let mut buf = [0u8; 65536];
        loop {
            // SAFETY: reads into a live buffer from our own fd.
            let n =
                unsafe { libc::read(self.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.absorb(&buf[..n as usize]);
                continue;
            }
            if n == 0 {
                self.eof = true;
                return false;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => return true,
                // EIO: every process holding the terminal has gone.
                Some(libc::EIO) => {
                    self.eof = true;
                    return false;
                }
                _ => panic!("read from the pty: {e}"),
            }
        }
    }

    fn absorb(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        let mut plain = Vec::with_capacity(bytes.len());
        for &b in bytes {
            self.escape = match (self.escape, b) {
                (Escape::None, 0x1b) => Escape::Esc,
                (Escape::None, b'\n' | b'\t') => {
                    plain.push(b);
                    Escape::None
                }
                (Escape::None, b) if b < 0x20 || b == 0x7f => Escape::None,
                (Escape::None, b) => {
                    plain.push(b);
                    Escape::None
                }
                (Escape::Esc, b'[') => Escape::Csi,
                (Escape::Esc, b']') => Escape::Osc,
                (Escape::Esc, _) => Escape::None,
                (Escape::Csi, 0x40..=0x7e) => Escape::None,
                (Escape::Csi, _) => Escape::Csi,
                (Escape::Osc, 0x07) => Escape::None,
                (Escape::Osc, 0x1b) => Escape::OscEsc,
                (Escape::Osc, _) => Escape::Osc,
                (Escape::OscEsc, _) => Escape::None,
            };
        }
        self.text.push_str(&String::from_utf8_lossy(&plain));
    }

    /// Everything shown so far, without escape sequences.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What has been shown since the last match.
    pub fn pending(&self) -> &str {
        &self.text[self.cursor..]
    }

    /// Wait until `needle` appears after the last match; returns when the
    /// output that completed it was read. Panics with the screen's text on
    /// timeout.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Instant {
        self.expect_where(needle, timeout, |_| true)
    }

    /// Like `expect`, and `accept` must also approve the text up to and
    /// including the match.
    pub fn expect_where(
        &mut self,
        needle: &str,
        timeout: Duration,
        mut accept: impl FnMut(&str) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.text[self.cursor..].find(needle) {
                let end = self.cursor + i + needle.len();
                if accept(&self.text[self.cursor..end]) {
                    self.cursor = end;
                    return Instant::now();
                }
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "no {needle:?} on the terminal within {timeout:?}; after the last match it shows:\n{}\n---- full text ----\n{}",
                    &self.text[self.cursor..],
                    self.text
                );
            }
            if self.eof {
                panic!(
                    "the terminal closed without showing {needle:?}; after the last match:\n{}\n---- full text ----\n{}",
                    &self.text[self.cursor..],
                    self.text
                );
            }
            self.pump((deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// Wait for a complete line that starts with `prefix`, and return the
    /// rest of it.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let pending = &self.text[self.cursor..];
            if let Some(i) = pending.find(prefix) {
                let rest = &pending[i + prefix.len()..];
                if let Some(nl) = rest.find('\n') {
                    let value = rest[..nl].trim_end().to_string();
                    self.cursor += i + prefix.len() + nl + 1;
                    return value;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "no line starting {prefix:?} within {timeout:?}; after the last match:\n{}",
                    &self.text[self.cursor..]
                );
            }
            self.pump(Duration::from_millis(20));
        }
    }

    /// Keep reading until `done` approves everything shown since the last
    /// match, polling every few milliseconds; panics on timeout.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&str) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.text[self.cursor..]) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{what}: not within {timeout:?}; the terminal shows after the last match:\n{}",
                    &self.text[self.cursor..]
                );
            }
            self.pump(Duration::from_millis(10));
        }
    }

    /// Move the match position to the end of what has been read.
    pub fn skip_shown(&mut self) {
        self.pump(Duration::ZERO);
        self.cursor = self.text.len();
    }

    /// Wait for the command to exit, reading its output meanwhile.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status {
                return s;
            }
            if let Some(s) = self.child.try_wait().expect("wait for the command") {
                self.status = Some(s);
                self.pump(Duration::ZERO);
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the command did not exit within {timeout:?}; the terminal shows:\n{}",
                    self.text
                );
            }
            self.pump(Duration::from_millis(10));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on our own fd; no pointers.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// A byte count as indicatif's `{bytes}` shows it ("12.50 MiB", "512 B"),
/// parsed back to bytes (approximately).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let (num, unit) = s.trim().split_once(' ')?;
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// The last "DONE/TOTAL" byte pair a progress bar drew in `text`, for a
/// bar whose total shows as `total`.
pub fn last_progress(text: &str, total: &str) -> Option<u64> {
    let marker = format!("/{total}");
    let i = text.rfind(&marker)?;
    let before = &text[..i];
    // "... ] 12.50 MiB" -> the last two words before the marker.
    let mut words = before.rsplit(' ');
    let unit = words.next()?;
    let num = words.next()?;
    parse_bytes(&format!("{num} {unit}"))
}
