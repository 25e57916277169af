//! Special files at the destination (docs/PROTOCOL.md, "Special files at
//! the destination"): a FIFO or device is written into and never replaced,
//! a symlink is followed, a dangling one is refused, on both sides (PUT on
//! the helper, GET on the client), on the fast path and the stream path.
//! The tests run as root (mknod), as CI does.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use barge::{Error, Handle};
use common::*;

/// Generous bound for a transfer of a few hundred KiB: a hang fails.
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Dir {
    Put,
    Get,
}

const BOTH: [Dir; 2] = [Dir::Put, Dir::Get];

fn h(fast: bool) -> Handle {
    let mut h = handle();
    h.set_fast_path(fast);
    h
}

/// Move `src` to `dst` in direction `dir` (the helper runs unrooted, so
/// remote paths are local paths): PUT makes the helper write `dst`, GET
/// makes the client write it.
fn transfer(h: &mut Handle, dir: Dir, src: &Path, dst: &Path) -> barge::Result<()> {
    match dir {
        Dir::Put => h.upload(src, dst),
        Dir::Get => h.download(src, dst),
    }
}

/// The same, on a thread, failing the test after [`LIMIT`]; the handle
/// comes back.
fn transfer_within(mut h: Handle, dir: Dir, src: &Path, dst: &Path) -> (Handle, barge::Result<()>) {
    let (src, dst) = (src.to_path_buf(), dst.to_path_buf());
    within(
        LIMIT,
        &format!("{dir:?} onto {}", dst.display()),
        move || {
            let r = transfer(&mut h, dir, &src, &dst);
            (h, r)
        },
    )
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mkfifo(p: &Path) {
    // SAFETY: a NUL-terminated path; no other pointers.
    assert_eq!(unsafe { libc::mkfifo(cstr(p).as_ptr(), 0o644) }, 0);
}

/// A character device with /dev/null's numbers (1, 3), made with mknod.
fn mknod_null(p: &Path) -> u64 {
    let dev = libc::makedev(1, 3);
    // SAFETY: a NUL-terminated path; no other pointers.
    let r = unsafe { libc::mknod(cstr(p).as_ptr(), libc::S_IFCHR | 0o666, dev) };
    assert_eq!(
        r,
        0,
        "mknod needs root: {}",
        std::io::Error::last_os_error()
    );
    dev
}

/// A thread that opens the FIFO for reading (waiting for a writer, as a
/// reader does) and reads it to its end.
fn reader(fifo: &Path) -> Receiver<Vec<u8>> {
    let fifo = fifo.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(std::fs::read(fifo).unwrap()));
    rx
}

/// What the reader got. A reader left waiting (no writer ever came, or the
/// FIFO was replaced under it) fails the test after [`LIMIT`].
fn read_by(reader: Receiver<Vec<u8>>) -> Vec<u8> {
    reader
        .recv_timeout(LIMIT)
        .expect("the FIFO's reader got no end of data")
}

fn is_fifo(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

fn link_text(p: &Path) -> PathBuf {
    assert!(
        std::fs::symlink_metadata(p)
            .unwrap()
            .file_type()
            .is_symlink(),
        "{} is no longer a symlink",
        p.display()
    );
    std::fs::read_link(p).unwrap()
}

/// The source file, with bytes enough for many chunks.
fn source(dir: &Path, seed: u64) -> (PathBuf, Vec<u8>) {
    let data = Rng::new(seed).bytes(300 << 10);
    (write_file(&dir.join("src.bin"), &data), data)
}

#[test]
fn a_fifo_with_a_reader_gets_the_bytes_and_stays_a_fifo() {
    for fast in [true, false] {
        for dir in BOTH {
            let d = tempdir();
            let (src, data) = source(d.path(), 1);
            let fifo = d.path().join("fifo");
            mkfifo(&fifo);
            let got = reader(&fifo);
            let (h, r) = transfer_within(h(fast), dir, &src, &fifo);
            r.unwrap_or_else(|e| panic!("{dir:?} fast={fast}: {e}"));
            if fast {
                assert!(h.uses_fast_path(), "the fast path was not in use");
            }
            let got = read_by(got);
            assert!(
                got == data,
                "{dir:?} fast={fast}: reader got {} bytes",
                got.len()
            );
            assert!(is_fifo(&fifo), "{dir:?} fast={fast}: FIFO replaced");
            assert_no_temp(d.path());
        }
    }
}

#[test]
fn a_character_device_stays_a_device() {
    for fast in [true, false] {
        for dir in BOTH {
            let d = tempdir();
            let (src, _) = source(d.path(), 2);
            let null = d.path().join("null");
            let rdev = mknod_null(&null);
            let (_h, r) = transfer_within(h(fast), dir, &src, &null);
            r.unwrap_or_else(|e| panic!("{dir:?} fast={fast}: {e}"));
            let m = std::fs::symlink_metadata(&null).unwrap();
            assert!(
                m.file_type().is_char_device(),
                "{dir:?} fast={fast}: device replaced by {:?}",
                m.file_type()
            );
            assert_eq!(m.rdev(), rdev);
            assert_no_temp(d.path());
        }
    }
}

#[test]
fn a_symlink_to_a_regular_file_is_followed_and_the_file_replaced_atomically() {
    for fast in [true, false] {
        for dir in BOTH {
            let d = tempdir();
            let (src, data) = source(d.path(), 3);
            let target = write_file(&d.path().join("target"), b"old contents");
            let old_ino = std::fs::metadata(&target).unwrap().ino();
            std::fs::create_dir(d.path().join("sub")).unwrap();
            let link = d.path().join("sub/link");
            std::os::unix::fs::symlink("../target", &link).unwrap();
            let (_h, r) = transfer_within(h(fast), dir, &src, &link);
            r.unwrap_or_else(|e| panic!("{dir:?} fast={fast}: {e}"));
            assert_eq!(link_text(&link), Path::new("../target"));
            assert!(
                std::fs::read(&target).unwrap() == data,
                "{dir:?} fast={fast}"
            );
            // Replaced by a rename, not written in place.
            assert_ne!(std::fs::metadata(&target).unwrap().ino(), old_ino);
            assert_no_temp(d.path());
        }
    }
}

#[test]
fn a_symlink_to_a_fifo_is_written_through() {
    for fast in [true, false] {
        for dir in BOTH {
            let d = tempdir();
            let (src, data) = source(d.path(), 4);
            let fifo = d.path().join("fifo");
            mkfifo(&fifo);
            let link = d.path().join("link");
            std::os::unix::fs::symlink(&fifo, &link).unwrap();
            let got = reader(&fifo);
            let (_h, r) = transfer_within(h(fast), dir, &src, &link);
            r.unwrap_or_else(|e| panic!("{dir:?} fast={fast}: {e}"));
            assert!(read_by(got) == data, "{dir:?} fast={fast}");
            assert_eq!(link_text(&link), fifo);
            assert!(is_fifo(&fifo));
        }
    }
}

#[test]
fn a_dangling_symlink_is_refused_and_nothing_is_created() {
    for fast in [true, false] {
        for dir in BOTH {
            let d = tempdir();
            let (src, _) = source(d.path(), 5);
            let link = d.path().join("link");
            std::os::unix::fs::symlink("missing", &link).unwrap();
            let (_h, r) = transfer_within(h(fast), dir, &src, &link);
            let e = r.expect_err("a dangling symlink must be refused");
            assert_eq!(e.errno(), libc::ENOENT, "{dir:?} fast={fast}: {e}");
            assert!(e.to_string().contains("dangling symlink"), "{e}");
            assert!(
                !d.path().join("missing").exists(),
                "{dir:?}: target created"
            );
            assert_eq!(link_text(&link), Path::new("missing"));
            assert_no_temp(d.path());
        }
    }
}

#[test]
fn a_socket_is_refused_not_replaced() {
    for dir in BOTH {
        let d = tempdir();
        let (src, _) = source(d.path(), 6);
        let sock = d.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let (_h, r) = transfer_within(h(false), dir, &src, &sock);
        let e = r.expect_err("a socket cannot be written into");
        assert_eq!(e.errno(), libc::ENXIO, "{dir:?}: {e}");
        assert!(e.to_string().contains("sock"), "{e}");
        let m = std::fs::symlink_metadata(&sock).unwrap();
        assert!(m.file_type().is_socket(), "{dir:?}: socket replaced");
    }
}

#[test]
fn a_fifo_without_a_reader_can_be_cancelled_and_the_handle_stays_usable() {
    for fast in [true, false] {
        for dir in BOTH {
            let d = tempdir();
            let (src, data) = source(d.path(), 7);
            let fifo = d.path().join("fifo");
            mkfifo(&fifo);
            let mut h = h(fast);
            h.set_cancel_timeout(Duration::from_millis(500));
            h.launch().unwrap();
            let canceller = h.canceller();
            // Nothing reports that the transfer has reached its wait for a
            // reader, so the cancel comes after a generous delay; an earlier
            // cancel would make the transfer fail the same way.
            let cancel = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                canceller.cancel();
            });
            let started = Instant::now();
            let (h, r) = transfer_within(h, dir, &src, &fifo);
            cancel.join().unwrap();
            let e = r.expect_err("nobody reads the FIFO: the transfer cannot complete");
            assert!(matches!(e, Error::Cancelled), "{dir:?} fast={fast}: {e:?}");
            eprintln!(
                "{dir:?} fast={fast}: cancelled after {:?}",
                started.elapsed()
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{dir:?} fast={fast}: cancel took {:?}",
                started.elapsed()
            );
            assert!(is_fifo(&fifo), "{dir:?} fast={fast}: FIFO replaced");
            // The handle still works, with a reader this time.
            let got = reader(&fifo);
            let (_h, r) = transfer_within(h, dir, &src, &fifo);
            r.unwrap_or_else(|e| panic!("{dir:?} fast={fast} after the cancel: {e}"));
            assert!(read_by(got) == data);
        }
    }
}

#[test]
fn resume_refuses_a_special_destination() {
    for dir in BOTH {
        let d = tempdir();
        let (src, _) = source(d.path(), 8);
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        let link = d.path().join("link");
        std::os::unix::fs::symlink("fifo", &link).unwrap();
        for dst in [&fifo, &link] {
            let mut h = h(false);
            h.set_keep_partial(true);
            let (_h, r) = transfer_within(h, dir, &src, dst);
            let e = r.expect_err("resume needs a regular file");
            assert_eq!(e.errno(), libc::EINVAL, "{dir:?}: {e}");
            assert!(e.to_string().contains("resume"), "{e}");
            assert!(is_fifo(&fifo), "{dir:?}: FIFO replaced");
            let names = tree(d.path());
            assert!(
                !names.iter().any(|n| n.contains("barge-partial")),
                "{dir:?}: partial file left: {names:?}"
            );
        }
    }
}

#[test]
fn a_download_onto_a_proc_magic_link_writes_into_what_it_opens() {
    // /dev/stdout is such a link; a symlink to /proc/self/fd/N for a pipe
    // of ours is the same without touching the test's stdout.
    let d = tempdir();
    let (src, data) = source(d.path(), 9);
    let (r, w) = pipe();
    let link = d.path().join("stdout");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&w);
    std::os::unix::fs::symlink(format!("/proc/self/fd/{fd}"), &link).unwrap();
    let (tx, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut v).unwrap();
        tx.send(v)
    });
    let (hd, res) = transfer_within(h(false), Dir::Get, &src, &link);
    res.unwrap();
    drop(hd);
    drop(w);
    assert!(read_by(got) == data);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn on_the_helpers_side_a_symlink_is_followed_within_the_root() {
    let outside = tempdir();
    let victim = write_file(&outside.path().join("victim"), b"must stay");
    let root = tempdir();
    let (src, data) = source(root.path(), 10);
    write_file(&root.path().join("target"), b"old");
    // An absolute target means the root's /target, not the host's.
    std::os::unix::fs::symlink("/target", root.path().join("abs")).unwrap();
    // A target that climbs out of the root is refused.
    let climb = format!("../../../../../../..{}", victim.display());
    std::os::unix::fs::symlink(&climb, root.path().join("climb")).unwrap();
    let mut h = h(false);
    h.set_root(Some(root.path())).unwrap();
    let (h, r) = transfer_within(h, Dir::Put, &src, Path::new("/abs"));
    r.unwrap();
    assert!(std::fs::read(root.path().join("target")).unwrap() == data);
    assert_eq!(link_text(&root.path().join("abs")), Path::new("/target"));
    let (_h, r) = transfer_within(h, Dir::Put, &src, Path::new("/climb"));
    let e = r.expect_err("a link out of the root must not be followed");
    assert_eq!(e.errno(), libc::EXDEV, "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"must stay");
    assert_eq!(link_text(&root.path().join("climb")), Path::new(&climb));
}
