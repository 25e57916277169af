//! The Python binding (bindings/python), proven through Python itself:
//!
//! - the binding's unittest suite (bindings/python/tests: round trips,
//!   errnos, ^C in the main thread, 50 random cancels from a second
//!   thread, a real subprocess interrupted with SIGINT), run against the
//!   libbarge.so and helper `cargo test` just built;
//! - `pip install bindings/python` into a fresh venv, and the installed
//!   package used with nothing but an installed C library on
//!   LD_LIBRARY_PATH.
//!
//! The interpreter is `python3` from PATH, or `$BARGE_PYTHON`; it needs
//! venv (Debian: python3-venv). The tests take one
//! lock: the cancel-latency bounds (100 ms) must not compete with each
//! other for the 2 CPUs of a CI machine.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
