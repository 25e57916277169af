//! The Python binding (bindings/python), proven through Python itself:
//!
//! - the binding's unittest suite (bindings/python/tests: round trips,
//!   errnos, ^C in the main thread, 50 random cancels from a second
//!   thread, a real subprocess interrupted with SIGINT), run against the
//!   libbarge.so and helper `cargo test` just built;
//! - `pip install bindings/python` into a fresh venv, and the installed
//!   package used with nothing but an installed C library on
//!   LD_LIBRARY_PATH;
//! - the tkinter example (examples/python/gui_upload.py) under Xvfb, its
//!   buttons clicked with xdotool.
//!
//! The interpreter is `python3` from PATH, or `$BARGE_PYTHON`; it needs
//! venv and tkinter (Debian: python3-venv, python3-tk). The tests take one
//! lock: the cancel-latency bounds (100 ms) must not compete with each
//! other for the 2 CPUs of a CI machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A Python run that takes longer than this has hung.
const RUN_LIMIT: Duration = Duration::from_secs(600);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_barge-helper"))
}

/// target/debug/deps/libbarge.so: what `cargo test` just built (the copy
/// in target/debug is only refreshed by `cargo build`).
fn library() -> PathBuf {
    helper().parent().unwrap().join("deps/libbarge.so")
}

fn python() -> String {
    std::env::var("BARGE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn work_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("python")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A Python command with the binding's source on PYTHONPATH and the
/// library and helper under test.
fn python_command(tmp: &Path) -> Command {
    let mut cmd = Command::new(python());
    cmd.env("BARGE_LIBRARY", library())
        .env("BARGE_HELPER", helper())
        .env("PYTHONPATH", manifest_dir().join("bindings/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("TMPDIR", tmp)
        .stdin(Stdio::null());
    cmd
}

/// Run `cmd` to completion within `limit`; its status and output.
fn run(cmd: &mut Command, limit: Duration) -> (ExitStatus, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let status = wait_within(&mut child, limit)
        .unwrap_or_else(|| panic!("{cmd:?} ran longer than {limit:?}; killed"));
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    (status, text)
}

fn collect(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Wait for `child` up to `limit`; kill it and return None after that.
fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(cmd: &mut Command) -> String {
    let (status, out) = run(cmd, RUN_LIMIT);
    assert!(status.success(), "{cmd:?} failed ({status}):\n{out}");
    out
}

#[test]
fn python_unittest_suite() {
    let _lock = one_at_a_time();
    let tmp = work_dir("suite");
    let (status, out) = run(
        python_command(&tmp)
            .args(["-m", "unittest", "discover", "-v", "-s"])
            .arg(manifest_dir().join("bindings/python/tests"))
            .current_dir(manifest_dir().join("bindings/python/tests")),
        RUN_LIMIT,
    );
    println!("{out}");
    assert!(
        status.success(),
        "the Python suite failed ({status}):\n{out}"
    );
    // Every test the suite defines ran: a runner that found nothing says
    // OK too.
    let ran: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .expect("unittest's summary line");
    assert_eq!(
        ran,
        defined_python_tests(),
        "not every Python test ran:\n{out}"
    );
}

/// How many `def test_...` methods bindings/python/tests/test_*.py hold.
fn defined_python_tests() -> usize {
    let dir = manifest_dir().join("bindings/python/tests");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("test_") && name.ends_with(".py") {
            let text = std::fs::read_to_string(&path).unwrap();
            n += text
                .lines()
                .filter(|l| l.trim_start().starts_with("def test_"))
                .count();
        }
    }
    n
}

/// A prefix with the C library and helper installed by scripts/install.sh
/// (from the files `cargo test` just built).
fn install_c_library(work: &Path) -> PathBuf {
    let built = work.join("built");
    std::fs::create_dir_all(&built).unwrap();
    let deps = helper().parent().unwrap().join("deps");
    for (name, from) in [
        ("libbarge.so", deps.join("libbarge.so")),
        ("libbarge.a", deps.join("libbarge.a")),
        ("barge-helper", helper().to_path_buf()),
    ] {
        std::os::unix::fs::symlink(from, built.join(name)).unwrap();
    }
    let prefix = work.join("prefix");
    check(
        Command::new("sh")
            .arg(manifest_dir().join("scripts/install.sh"))
            .arg("--no-build")
            .arg("--from")
            .arg(&built)
            .arg(&prefix),
    );
    prefix
}

/// `pip install bindings/python` into a fresh venv, exactly as a user runs
/// it (pip fetches the setuptools build backend the pyproject names; it
/// may come from PyPI). Then the installed package, run from elsewhere
/// with no PYTHONPATH, no BARGE_LIBRARY and no BARGE_HELPER, finds the
/// installed C library through the loader (LD_LIBRARY_PATH), which finds
/// its installed helper, and does a round trip.
#[test]
fn pip_install_into_a_venv_then_use_an_installed_library() {
    let _lock = one_at_a_time();
    let work = work_dir("pip");
    let venv = work.join("venv");
    check(Command::new(python()).args(["-m", "venv"]).arg(&venv));
    let vpython = venv.join("bin/python");
    let out = check(
        Command::new(&vpython)
            .args(["-m", "pip", "install", "--no-cache-dir", "--no-input"])
            .arg(manifest_dir().join("bindings/python")),
    );
    assert!(out.contains("Successfully installed barge"), "{out}");

    let prefix = install_c_library(&work);
    let script = r#"
import os, sys, barge
assert barge.__file__.startswith(sys.prefix), barge.__file__
src = os.path.join(sys.argv[1], "src.bin")
data = os.urandom(1_000_003)
with open(src, "wb") as f:
    f.write(data)
with barge.Handle(root=sys.argv[1]) as h:
    h.upload(src, "/up.bin")
    h.download("/up.bin", os.path.join(sys.argv[1], "down.bin"))
    print("helper", os.readlink(f"/proc/{h.helper_pid}/exe"))
with open(os.path.join(sys.argv[1], "down.bin"), "rb") as f:
    assert f.read() == data
print("library", barge.library_version())
"#;
    let data_dir = work.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let out = check(
        Command::new(&vpython)
            .arg("-c")
            .arg(script)
            .arg(&data_dir)
            .current_dir(&work)
            .env_remove("PYTHONPATH")
            .env_remove("BARGE_LIBRARY")
            .env_remove("BARGE_HELPER")
            .env("LD_LIBRARY_PATH", prefix.join("lib")),
    );
    let installed_helper = prefix.join("libexec/barge/barge-helper");
    assert!(
        out.contains(&format!("helper {}", installed_helper.display())),
        "the installed library did not run its installed helper:\n{out}"
    );
    assert!(
        out.contains(&format!("library {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
}

/// A virtual X server on a display it picks itself (`-displayfd`), killed
/// on drop.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Xvfb {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fds into the array. Without O_CLOEXEC, so
        // that Xvfb inherits the write end (the tests here run one at a
        // time, so no other child inherits it meanwhile).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are fresh and owned here alone.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let child = Command::new("Xvfb")
            .args(["-displayfd", &write_end.as_raw_fd().to_string()])
            .args(["-screen", "0", "800x600x24", "-nolisten", "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Xvfb (Debian: xvfb)");
        drop(write_end);
        let mut line = String::new();
        BufReader::new(std::fs::File::from(read_end))
            .read_line(&mut line)
            .unwrap();
        let number = line.trim();
        assert!(
            !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()),
            "Xvfb gave no display number: {line:?}"
        );
        Xvfb {
            child,
            display: format!(":{number}"),
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example's trace lines, as they arrive.
struct Trace {
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Trace {
    fn new(stdout: impl Read + Send + 'static) -> Trace {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Trace {
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The fields after `word` of the next line starting with it.
    fn expect(&mut self, word: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    let mut fields = line.split_whitespace().map(str::to_string);
                    if fields.next().as_deref() == Some(word) {
                        return fields.collect();
                    }
                }
                Err(_) => panic!(
                    "no {word:?} line from the example within {within:?}; it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// The centre of the button `name` from the example's `ready` line
/// (`name=X,Y,W,H`).
fn button_centre(ready: &[String], name: &str) -> (i64, i64) {
    let spec = ready
        .iter()
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} button in {ready:?}"));
    let v: Vec<i64> = spec.split(',').map(|n| n.parse().unwrap()).collect();
    (v[0] + v[2] / 2, v[1] + v[3] / 2)
}

fn click(display: &str, (x, y): (i64, i64)) {
    check(
        Command::new("xdotool")
            .args([
                "mousemove",
                "--sync",
                &x.to_string(),
                &y.to_string(),
                "click",
                "1",
            ])
            .env("DISPLAY", display),
    );
}

/// Bytes written to `fifo` that no reader has taken yet.
fn unread(fifo: &std::fs::File) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    assert_eq!(
        unsafe { libc::ioctl(fifo.as_raw_fd(), libc::FIONREAD, &mut n) },
        0
    );
    n
}

fn wait_for(what: &str, within: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// examples/python/gui_upload.py under Xvfb: its upload reads a FIFO that
/// the test feeds, so the upload is blocked in barge when the test clicks
/// Cancel with xdotool. The GUI thread must handle the click while the
/// worker is blocked (it traces it), the upload must end Cancelled within
/// 100 ms of the click with nothing left behind, and the window must go on
/// answering: Upload starts a second upload over the same helper, which
/// completes byte for byte, and Quit closes everything with status 0.
#[test]
fn gui_example_cancel_button_under_xvfb() {
    let _lock = one_at_a_time();
    let tmp = work_dir("gui");
    let root = tmp.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let fifo_path = tmp.join("source.fifo");
    let c = std::ffi::CString::new(fifo_path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // Read-write, so barge's open finds a writer and the upload never sees
    // end of file until this end is closed.
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo_path)
        .unwrap();

    let x = Xvfb::start();
    let mut child = python_command(&tmp)
        .arg(manifest_dir().join("examples/python/gui_upload.py"))
        .arg("--trace")
        .arg("--root")
        .arg(&root)
        .arg(&fifo_path)
        .arg("/uploaded.bin")
        .env("DISPLAY", &x.display)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = collect(child.stderr.take().unwrap());
    let mut trace = Trace::new(child.stdout.take().unwrap());
    let step = Duration::from_secs(20);

    let ready = trace.expect("ready", step);
    let first = trace.expect("started", step);
    assert_eq!(first[0], "1");
    fifo.write_all(&[0x5a; 60_000]).unwrap();
    trace.expect("progress", step);
    // Blocked: barge took everything the FIFO had and waits for more.
    wait_for("the upload to drain the FIFO", step, || unread(&fifo) == 0);

    click(&x.display, button_centre(&ready, "cancel"));
    let clicked: f64 = trace.expect("cancel-clicked", step)[0].parse().unwrap();
    let result = trace.expect("result", step);
    assert_eq!(result[0], "cancelled", "{result:?}");
    let cancelled: f64 = result[1].parse().unwrap();
    let latency = cancelled - clicked;
    println!("Cancel click to Cancelled: {:.1} ms", latency * 1e3);
    assert!(latency < 0.1, "the cancel took {latency:.3} s");
    assert!(
        std::fs::read_dir(&root).unwrap().next().is_none(),
        "the cancelled upload left something in {}",
        root.display()
    );

    // Still answering: a second upload over the same helper.
    click(&x.display, button_centre(&ready, "upload"));
    let second = trace.expect("started", step);
    assert_eq!(
        second,
        vec!["2".to_string(), first[1].clone()],
        "the same helper"
    );
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    fifo.write_all(&data).unwrap();
    wait_for("the second upload to drain the FIFO", step, || {
        unread(&fifo) == 0
    });
    drop(fifo); // end of file
    let result = trace.expect("result", step);
    assert_eq!(result, vec!["done".to_string()]);
    assert_eq!(std::fs::read(root.join("uploaded.bin")).unwrap(), data);

    click(&x.display, button_centre(&ready, "quit"));
    trace.expect("quit", step);
    let status = wait_within(&mut child, step).expect("the example did not exit after Quit");
    let err = stderr.join().unwrap();
    assert!(status.success(), "the example exited with {status}:\n{err}");
}
