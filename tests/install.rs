//! Installation as C users expect: scripts/install.sh into a temporary
//! prefix, then examples/c/put.c compiled with nothing but
//! `pkg-config --cflags --libs barge`, run with no configuration (the
//! installed library finds the installed helper by itself), and cancelled
//! with ^C.

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory holding the freshly built library and helper, as
/// install.sh --from expects. `cargo test` builds libbarge.so and .a in
/// target/debug/deps (only `cargo build` copies them up a level, so the
/// copies there may be stale), and the helper in target/debug.
fn build_dir(work: &Path) -> PathBuf {
    let helper = Path::new(env!("CARGO_BIN_EXE_barge-helper"));
    let deps = helper.parent().unwrap().join("deps");
    let dir = work.join("built");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, from) in [
        ("libbarge.so", deps.join("libbarge.so")),
        ("libbarge.a", deps.join("libbarge.a")),
        ("barge-helper", helper.to_path_buf()),
    ] {
        std::os::unix::fs::symlink(from, dir.join(name)).unwrap();
    }
    dir
}

fn check(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Install into `prefix` and build put.c against it; returns put's path.
fn install_and_build_put(prefix: &Path, work: &Path) -> PathBuf {
    check(
        Command::new("sh")
            .arg(manifest_dir().join("scripts/install.sh"))
            .arg("--no-build")
            .arg("--from")
            .arg(build_dir(work))
            .arg(prefix),
    );
    let pc_path = prefix.join("lib/pkgconfig");
    let flags = check(
        Command::new("pkg-config")
            .args(["--cflags", "--libs", "barge"])
            .env("PKG_CONFIG_PATH", &pc_path),
    );
    let put = work.join("put");
    check(
        Command::new("cc")
            .args(["-Wall", "-Wextra", "-Werror"])
            .arg(manifest_dir().join("examples/c/put.c"))
            .arg("-o")
            .arg(&put)
            .args(flags.split_whitespace()),
    );
    put
}

/// put, run as a user would: only the library path set, no BARGE_HELPER,
/// no helper on PATH or next to the program.
fn put_command(put: &Path, prefix: &Path) -> Command {
    let mut cmd = Command::new(put);
    cmd.env("LD_LIBRARY_PATH", prefix.join("lib"))
        .env("PATH", "/usr/bin:/bin")
        .env_remove("BARGE_HELPER");
    cmd
}

#[test]
fn installed_tree_builds_put_with_pkg_config_and_finds_its_helper() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let put = install_and_build_put(&prefix, &work);

    // The layout, with the SONAME link and the helper in libexec.
    let version = env!("CARGO_PKG_VERSION");
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    for f in [
        "include/barge.h".to_string(),
        format!("lib/libbarge.so.{version}"),
        "lib/libbarge.a".to_string(),
        "lib/pkgconfig/barge.pc".to_string(),
        "libexec/barge/barge-helper".to_string(),
    ] {
        assert!(prefix.join(&f).is_file(), "{f} not installed");
    }
    assert_eq!(
        std::fs::read_link(prefix.join(format!("lib/libbarge.so.{major}"))).unwrap(),
        PathBuf::from(format!("libbarge.so.{version}"))
    );
    let ldd = check(
        Command::new("ldd")
            .arg(&put)
            .env("LD_LIBRARY_PATH", prefix.join("lib")),
    );
    assert!(
        ldd.contains(&format!(
            "libbarge.so.{major} => {}",
            prefix.join("lib").display()
        )),
        "put does not use the installed library:\n{ldd}"
    );

    // An upload with no configuration at all.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let src = work.join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let dst = work.join("dst.bin");
    let out = put_command(&put, &prefix)
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "put failed ({}): {}\n(the installed library must find \
         PREFIX/libexec/barge/barge-helper: helper_path::installed_helper())",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&dst).unwrap(), data);
}

#[test]
fn ctrl_c_cancels_puts_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let put = install_and_build_put(&prefix, &work);

    // The source is a FIFO that we feed a little and then leave open, so
    // the upload blocks until ^C.
    let fifo = work.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // Hold a write end open (O_RDWR does not wait for a reader) before put
    // starts: barge opens the source without blocking, and a FIFO with no
    // writer at all reads as empty.
    let mut writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    writer.write_all(&[7u8; 50_000]).unwrap();
    let dst = work.join("dst.bin");
    let mut child = put_command(&put, &prefix)
        .arg(&fifo)
        .arg(&dst)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // put installs its ^C handler before barge_upload opens the FIFO: once
    // the FIFO is open in put, a SIGINT reaches the handler mid-upload.
    let opened = Instant::now();
    while !std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .map(|d| {
            d.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == fifo))
        })
        .unwrap_or(false)
    {
        assert!(child.try_wait().unwrap().is_none(), "put ended early");
        assert!(
            opened.elapsed() < Duration::from_secs(10),
            "put never opened the FIFO"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "put ended early");

    let sent = Instant::now();
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "put ignored ^C");
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(writer);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(130), "put: {stderr}");
    assert!(stderr.contains("cancelled"), "put: {stderr}");
    assert!(
        !dst.exists(),
        "a partial upload was left at {}",
        dst.display()
    );
}
