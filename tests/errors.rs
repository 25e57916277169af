//! Bad peers, bad paths and failing filesystems: each gives a clear error
//! with the right errno, and leaves nothing partial.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use barge::{Error, Handle};
use common::*;

fn fake_helper(script: &str) -> Handle {
    let mut h = Handle::new().unwrap();
    h.set_helper(["/bin/sh", "-c", script]).unwrap();
    h.set_launch_timeout(Duration::from_secs(5));
    h
}

fn launch_fails_fast(mut h: Handle) -> Error {
    let start = Instant::now();
    let e = h.launch().unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    e
}

#[test]
fn garbage_from_the_helper_is_a_protocol_error() {
    let e = launch_fails_fast(fake_helper("echo 'Welcome to the machine!'; sleep 30"));
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::EPROTO);
}

#[test]
fn an_oversized_frame_is_refused_before_allocation() {
    // A DATA header claiming almost 4 GiB.
    let e = launch_fails_fast(fake_helper(
        r"printf '\377\377\377\360\040\000\000\000\000\000\000\000\000\000\000\000'; sleep 30",
    ));
    assert_eq!(e.errno(), libc::EPROTO, "{e}");
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
}

#[test]
fn a_helper_of_another_version_is_a_clear_error() {
    let mut h = handle_with_fault("version=2", None);
    h.set_launch_timeout(Duration::from_secs(5));
    let e = launch_fails_fast(h);
    assert_eq!(e.errno(), libc::EPROTONOSUPPORT, "{e}");
    assert!(e.to_string().contains("version"), "{e}");
}

#[test]
fn a_welcome_for_another_version_is_refused() {
    // A hand-made WELCOME choosing version 2 (python3 writes the bytes).
    let script = r#"python3 -c '
import struct, sys
body = b"BARGE\0\r\n" + struct.pack(">HQI", 2, 0, 1)
sys.stdout.buffer.write(struct.pack(">IBBHQ", len(body), 2, 0, 0, 0) + body)
sys.stdout.flush()
import time; time.sleep(30)'"#;
    let e = launch_fails_fast(fake_helper(script));
    assert_eq!(e.errno(), libc::EPROTO, "{e}");
    assert!(e.to_string().contains("version 2"), "{e}");
    assert!(e.to_string().contains("version 1"), "{e}");
}

/// A hand-made helper: python3 writes a WELCOME (version 1, no features),
/// then runs `then`, with `frame(kind, serial)` at hand.
fn scripted_helper(then: &str) -> Handle {
    let script = format!(
        r#"exec python3 -c '
import os, struct, sys, time
def frame(kind, serial, body=b""):
    return struct.pack(">IBBHQ", len(body), kind, 0, 0, serial) + body
out = sys.stdout.buffer
out.write(frame(2, 0, b"BARGE\0\r\n" + struct.pack(">HQI", 1, 0, os.getpid())))
out.flush()
{then}'"#
    );
    let mut h = fake_helper(&script);
    h.set_cancel_timeout(Duration::from_millis(500));
    h
}

/// Run a STAT that cannot be answered, cancel it after 200 ms, and return
/// its result; a hang fails the test.
fn cancelled_stat(mut h: Handle) -> barge::Result<barge::RemoteStat> {
    h.launch().unwrap();
    let c = h.canceller();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c.cancel();
    });
    let r = within(Duration::from_secs(10), "a cancelled STAT", move || {
        h.stat("/")
    });
    canceller.join().unwrap();
    r
}

#[test]
fn a_flood_of_late_stop_frames_is_read_in_bounded_steps_and_cancel_ends_it() {
    // STOP frames for another serial are ignored by the protocol; an
    // endless run of them once overflowed the client's stack.
    let h = scripted_helper(
        r#"blob = frame(0x23, 99) * 4096
while True:
    out.write(blob)
    out.flush()"#,
    );
    let r = cancelled_stat(h);
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
}

#[test]
fn a_helper_writing_stderr_without_pause_cannot_hold_off_a_cancel() {
    let h = scripted_helper(
        r#"blob = b"y\n" * 32768
while True:
    os.write(2, blob)"#,
    );
    let r = cancelled_stat(h);
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
}

#[test]
fn a_cancel_cuts_short_the_wait_for_a_helper_that_hung_up_but_lives_on() {
    // Like a launcher that outlives its closed channel: the helper closes
    // its end and sleeps. The handle waits up to the kill timeout for it
    // to exit by itself, and a cancel ends that wait.
    let mut h = scripted_helper(
        r#"sys.stdin.buffer.read(16)
os.close(1)
os.close(0)
time.sleep(30)"#,
    );
    h.set_kill_timeout(Duration::from_secs(5));
    let start = Instant::now();
    let r = cancelled_stat(h);
    let took = start.elapsed();
    assert!(matches!(r, Err(Error::HelperDied { .. })), "{r:?}");
    assert!(
        took < Duration::from_secs(2),
        "the cancel at 200 ms was ignored: STAT returned after {took:?}"
    );
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: fills a live timespec.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn a_download_into_a_full_pipe_waits_without_spinning_once_the_helper_is_gone() {
    // The helper dies after 128 KiB; the pipe, which nobody reads, is full
    // before that. The download then waits for room in the pipe (or a
    // cancel), and the channel's hang-up must not wake that wait again and
    // again.
    let root = tempdir();
    write_file(&root.path().join("f"), &Rng::new(3).bytes(4 << 20));
    let mut h = handle_with_fault("die@131072", None);
    h.set_root(Some(root.path())).unwrap();
    let (_unread, w) = pipe();
    let c = h.canceller();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        c.cancel();
    });
    let (cpu, wall) = (thread_cpu(), Instant::now());
    let r = h.download_fd("/f", std::os::fd::AsFd::as_fd(&w));
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    canceller.join().unwrap();
    assert!(r.is_err(), "{r:?}");
    assert!(cpu < wall / 4, "the wait spun: {cpu:?} of CPU in {wall:?}");
}

#[test]
fn a_missing_helper_program_is_enoent() {
    let mut h = Handle::new().unwrap();
    h.set_helper(["/nonexistent/barge-helper"]).unwrap();
    let e = h.launch().unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert!(e.to_string().contains("/nonexistent/barge-helper"), "{e}");
}

fn rooted(root: &Path) -> Handle {
    let mut h = handle();
    h.set_root(Some(root)).unwrap();
    h
}

#[test]
fn paths_cannot_escape_the_root() {
    let base = tempdir();
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("rel")).unwrap();
    let local = tempdir();
    let src = write_file(&local.path().join("x"), b"payload");
    let mut h = rooted(&root);

    // `..` above the root is refused outright.
    for p in ["../x", "/../x", "a/../../x", "../outside/secret"] {
        let e = h.upload(&src, p).unwrap_err();
        assert_eq!(e.errno(), libc::EXDEV, "upload {p}: {e}");
        assert_eq!(h.stat(p).unwrap_err().errno(), libc::EXDEV, "stat {p}");
    }
    // Symlinks resolve inside the root, so the outside stays untouched.
    for p in ["/abs/x", "abs/secret", "/rel/x", "rel/secret"] {
        let _ = h.upload(&src, p);
        let _ = h.stat(p);
    }
    assert_eq!(tree(&outside), vec!["secret"]);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    assert!(h.download("abs/secret", local.path().join("got")).is_err());
    assert!(!local.path().join("got").exists());
    // An absolute path names a file in the root.
    h.upload(&src, "/inside.bin").unwrap();
    assert_eq!(std::fs::read(root.join("inside.bin")).unwrap(), b"payload");
}

#[test]
fn proc_magic_links_are_refused() {
    // /proc/self/root is a magic link to the helper's root directory.
    let mut h = rooted(Path::new("/proc/self"));
    let e = h.stat("root/etc/passwd").unwrap_err();
    assert_eq!(e.errno(), libc::ELOOP, "{e}");
    assert!(h.stat("status").is_ok());
}

#[test]
fn an_unknown_remote_path_is_enoent_and_creates_nothing_locally() {
    let root = tempdir();
    let local = tempdir();
    let mut h = rooted(root.path());
    let e = h.stat("/nope").unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    assert!(e.to_string().contains("nope"), "{e}");
    let e = h.download("/nope", local.path().join("nope")).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    assert_eq!(tree(local.path()), Vec::<String>::new());
    let src = write_file(&local.path().join("s"), b"abc");
    let e = h.upload(&src, "/no/such/dir/f").unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert_eq!(tree(root.path()), Vec::<String>::new());
    // The handle is fine afterwards.
    h.upload(&src, "/f").unwrap();
}

#[test]
fn a_missing_local_file_is_a_local_enoent() {
    let mut h = handle();
    let e = h.upload("/nonexistent/local/file", "/tmp/x").unwrap_err();
    assert!(matches!(e, Error::Local { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::ENOENT);
    assert!(e.to_string().contains("/nonexistent/local/file"), "{e}");
}

#[test]
fn a_bad_root_fails_the_launch_with_its_errno() {
    let mut h = handle();
    h.set_root(Some(Path::new("/nonexistent/root"))).unwrap();
    let e = h.launch().unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert!(e.to_string().contains("/nonexistent/root"), "{e}");
}

/// Runs as root here; permission checks only bite an unprivileged helper,
/// so the helper drops to `nobody` with setpriv.
#[test]
fn eacces_is_reported_with_nothing_partial() {
    let root = tempdir();
    let locked = root.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("old"), b"old").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut h = handle();
    // SAFETY: no pointers.
    if unsafe { libc::geteuid() } == 0 {
        h.set_helper([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            helper_path(),
        ])
        .unwrap();
    }
    h.set_root(Some(root.path())).unwrap();
    let local = tempdir();
    let src = write_file(&local.path().join("s"), &vec![9u8; 100_000]);
    let e = h.upload(&src, "/locked/new").unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
    let e = h.upload(&src, "/locked/old").unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
    assert_eq!(tree(&locked), vec!["old"]);
    assert_eq!(std::fs::read(locked.join("old")).unwrap(), b"old");
}

/// A 1 MiB tmpfs fills up mid-upload.
#[test]
fn enospc_is_reported_and_the_old_file_survives() {
    // SAFETY: no pointers.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test mounts a tmpfs and must run as root (CI does)");
    }
    let dir = tempdir();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success(), "mount tmpfs failed");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(&mnt);
    std::fs::write(mnt.join("keep"), b"precious").unwrap();
    let local = tempdir();
    let src = write_file(&local.path().join("big"), &vec![1u8; 3 << 20]);
    let mut h = rooted(&mnt);
    let e = h.upload(&src, "/keep").unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    assert!(e.to_string().contains("keep"), "{e}");
    assert_eq!(std::fs::read(mnt.join("keep")).unwrap(), b"precious");
    assert_eq!(tree(&mnt), vec!["keep"]);
    // The space came back: a small upload works on the same handle.
    let small = write_file(&local.path().join("small"), b"fits");
    h.upload(&small, "/other").unwrap();
}

#[test]
fn an_injected_enospc_mid_download_stream_is_reported() {
    let root = tempdir();
    std::fs::write(root.path().join("f"), vec![3u8; 500_000]).unwrap();
    let local = tempdir();
    let mut h = handle_with_fault("fail@100000:EIO", None);
    h.set_root(Some(root.path())).unwrap();
    std::fs::write(local.path().join("f"), b"mine").unwrap();
    let e = h.download("/f", local.path().join("f")).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert_eq!(std::fs::read(local.path().join("f")).unwrap(), b"mine");
    assert_no_temp(local.path());
}

/// The hidden temporary files under `dir` (uploads written without
/// O_TMPFILE).
fn hidden_temps(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|n| barge::atomic_file::is_hidden_temp_name(n.as_bytes()))
        .collect()
}

/// Wait until every file in `names` under `dir` has a ctime at least
/// `age` old: the staleness window of a hidden file nobody holds.
fn wait_until_older_than(dir: &Path, names: &[String], age: Duration) {
    use std::os::unix::fs::MetadataExt;
    for n in names {
        let ctime = std::fs::metadata(dir.join(n)).unwrap().ctime();
        let ready = std::time::UNIX_EPOCH + Duration::from_secs(ctime as u64) + age;
        while std::time::SystemTime::now() < ready {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn without_o_tmpfile_a_killed_helpers_hidden_file_is_removed_by_the_next_upload() {
    let root = tempdir();
    let local = tempdir();
    let data = Rng::new(17).bytes(2 << 20);
    let src = write_file(&local.path().join("src.bin"), &data);
    let mut h = handle_with_fault("no-tmpfile,die@1048576", None);
    h.set_root(Some(root.path())).unwrap();
    let e = h.upload(&src, "/f.bin").unwrap_err();
    assert!(matches!(e, Error::HelperDied { .. }), "{e:?}");
    // The helper died holding its hidden file: nobody could unlink it.
    let left = hidden_temps(root.path());
    assert_eq!(left.len(), 1, "{:?}", tree(root.path()));

    // A live upload's hidden file for the same name is held, and survives.
    let mut busy = handle_with_fault("no-tmpfile,stall@65536", None);
    busy.set_root(Some(root.path())).unwrap();
    busy.set_cancel_timeout(Duration::from_millis(200));
    let (r, w) = pipe();
    let feeder = std::thread::spawn(move || {
        let mut f = std::fs::File::from(w);
        // Ends with EPIPE once the upload is cancelled.
        let _ = std::io::Write::write_all(&mut f, &vec![1u8; 1 << 20]);
    });
    let c = busy.canceller();
    let stalled = std::thread::spawn(move || {
        let r = busy.upload_fd(std::os::fd::AsFd::as_fd(&r), "/f.bin");
        (busy, r)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while hidden_temps(root.path()).len() < 2 {
        assert!(Instant::now() < deadline, "the stalled upload made no file");
        std::thread::sleep(Duration::from_millis(5));
    }
    let live: Vec<String> = hidden_temps(root.path())
        .into_iter()
        .filter(|n| !left.contains(n))
        .collect();
    wait_until_older_than(
        root.path(),
        &hidden_temps(root.path()),
        Duration::from_secs(3),
    );

    h.set_helper(fault_argv("no-tmpfile", None)).unwrap();
    h.upload(&src, "/f.bin").unwrap();
    assert_eq!(std::fs::read(root.path().join("f.bin")).unwrap(), data);
    assert_eq!(
        hidden_temps(root.path()),
        live,
        "the dead helper's file must go, the live one's must stay"
    );

    // The stalled helper cannot answer the cancel and is killed: its file
    // is stale now, and the next upload removes it.
    c.cancel();
    let (_busy, r) = stalled.join().unwrap();
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    feeder.join().unwrap();
    wait_until_older_than(root.path(), &live, Duration::from_secs(3));
    h.upload(&src, "/f.bin").unwrap();
    assert_eq!(hidden_temps(root.path()), Vec::<String>::new());
    assert_eq!(std::fs::read(root.path().join("f.bin")).unwrap(), data);
}
