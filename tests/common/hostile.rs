//! A scripted hostile helper (`tests/hostile/peer.py`) and a way to run
//! barge against it with a measured peak RSS, an address-space limit and
//! a hang bound.
//!
//! A scenario is Python code run by `peer.py` after the handshake, with
//! `read_frame`, `send`, `frame` and the frame builders in scope; see that
//! file.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use barge::Handle;

/// Feature bits for the WELCOME (docs/PROTOCOL.md).
pub const FEATURE_TREES: u64 = 0x2;
pub const FEATURE_RESUME: u64 = 0x4;

pub fn peer_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/peer.py")
}

/// Write `scenario` into `dir` and return the helper's argv.
pub fn peer_argv(dir: &Path, features: u64, scenario: &str) -> Vec<OsString> {
    let script = dir.join(format!("scenario-{}.py", std::process::id()));
    std::fs::write(&script, scenario).unwrap();
    vec![
        "python3".into(),
        peer_py().into(),
        format!("{features:#x}").into(),
        script.into(),
    ]
}

/// A handle whose helper is the hostile peer running `scenario`.
pub fn hostile_handle(dir: &Path, features: u64, scenario: &str) -> Handle {
    let mut h = Handle::new().unwrap();
    h.set_helper(peer_argv(dir, features, scenario)).unwrap();
    h.set_launch_timeout(Duration::from_secs(10));
    h.set_cancel_timeout(Duration::from_millis(500));
    h
}

/// How a CLI run against the hostile peer went.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Peak resident set of the `barge` process, from wait4's rusage.
    pub peak_rss_kib: u64,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Options of a hostile CLI run.
pub struct CliRun<'a> {
    /// The working directory, which also holds the scenario file.
    pub dir: &'a Path,
    pub features: u64,
    pub scenario: &'a str,
    pub args: &'a [&'a str],
    /// RLIMIT_AS for barge (and so its helper), as `ulimit -v` sets it.
    pub address_space: Option<u64>,
    /// Send SIGINT this long after the start.
    pub sigint_after: Option<Duration>,
    /// Fail the test if barge has not exited by then (a hang).
    pub limit: Duration,
}

impl CliRun<'_> {
    pub fn new<'a>(
        dir: &'a Path,
        features: u64,
        scenario: &'a str,
        args: &'a [&'a str],
    ) -> CliRun<'a> {
        CliRun {
            dir,
            features,
            scenario,
            args,
            address_space: Some(1 << 30),
            sigint_after: None,
            limit: Duration::from_secs(30),
        }
    }

    /// Run `barge --helper PEER ARGS...` and wait for it; a run that
    /// outlives `limit` is killed and fails the test.
    pub fn run(&self) -> Outcome {
        let argv = peer_argv(self.dir, self.features, self.scenario);
        let helper = argv
            .iter()
            .map(|a| shell_words::quote(&a.to_string_lossy()).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_barge"));
        cmd.current_dir(self.dir)
            .arg("--helper")
            .arg(helper)
            .args(self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(limit) = self.address_space {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let start = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let read_all = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let out = read_all(Box::new(out));
        let err = read_all(Box::new(err));
        let mut sigint_sent = self.sigint_after.is_none();
        let (status, rusage) = loop {
            let mut status = 0;
            // SAFETY: zeroed rusage is a valid out-parameter.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waits for our own child, without blocking.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid {
                break (status, ru);
            }
            assert_eq!(r, 0, "wait4: {}", std::io::Error::last_os_error());
            let elapsed = start.elapsed();
            if !sigint_sent && elapsed >= self.sigint_after.unwrap() {
                // SAFETY: signals our own, unreaped child.
                unsafe { libc::kill(pid, libc::SIGINT) };
                sigint_sent = true;
            }
            if elapsed > self.limit {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = child.wait();
                let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
                panic!(
                    "barge {:?} still running after {:?} (a hang); stderr: {stderr}",
                    self.args, self.limit
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The child is reaped by wait4; std's Child must not wait again.
        std::mem::forget(child);
        Outcome {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
            peak_rss_kib: rusage.ru_maxrss as u64,
            elapsed: start.elapsed(),
        }
    }
}

/// Whether `bytes` hold a control character other than newline (an
/// escape sequence, a carriage return, a bell...).
pub fn has_raw_control(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| (b < 0x20 && b != b'\n') || b == 0x7f)
}
