//! Directory trees: `copy_in` and `copy_out` against the real helper.

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use barge::{Error, Event, EventMask, Handle};
use common::*;

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: c is NUL-terminated; times is a live 2-array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with nested directories, symlinks (inside and pointing out),
/// assorted modes and mtimes (with nanoseconds), empty files, and files
/// larger than the 16 KiB chunk of `common::handle`.
fn make_tree(top: &Path, outside: &Path) {
    let mut rng = Rng::new(0x7EE5);
    std::fs::create_dir_all(top.join("a/b/c")).unwrap();
    std::fs::create_dir_all(top.join("empty-dir")).unwrap();
    std::fs::create_dir_all(top.join("ro-dir")).unwrap();
    std::fs::write(top.join("empty"), b"").unwrap();
    std::fs::write(top.join("a/empty"), b"").unwrap();
    std::fs::write(top.join("small.txt"), b"hello tree\n").unwrap();
    std::fs::write(top.join("a/b/big.bin"), rng.bytes(300_000)).unwrap();
    std::fs::write(top.join("a/b/c/chunk.bin"), rng.bytes(16 << 10)).unwrap();
    std::fs::write(top.join("a/b/c/chunk1.bin"), rng.bytes((16 << 10) + 1)).unwrap();
    std::fs::write(top.join("ro-dir/inside"), rng.bytes(5000)).unwrap();
    for i in 0..20 {
        let n = rng.below(9000) as usize;
        let data = rng.bytes(n);
        std::fs::write(top.join(format!("a/f{i:02}")), data).unwrap();
    }
    std::fs::write(top.join("exec.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    symlink("b/big.bin", top.join("a/rel-link")).unwrap();
    symlink(outside, top.join("a/out-link")).unwrap();
    symlink("../../../../../../etc", top.join("a/b/up-link")).unwrap();
    symlink("dangling-target", top.join("dangling")).unwrap();
    chmod(&top.join("exec.sh"), 0o755);
    chmod(&top.join("small.txt"), 0o600);
    chmod(&top.join("a/f00"), 0o444);
    chmod(&top.join("a/f01"), 0o640);
    chmod(&top.join("a/b/big.bin"), 0o604);
    chmod(&top.join("a/b"), 0o750);
    // Written to before it is locked, as a copy must do too.
    chmod(&top.join("ro-dir"), 0o555);
    let mut n = 0;
    for name in tree(top) {
        n += 1;
        set_mtime(
            &top.join(&name),
            1_500_000_000 + n * 1000,
            (n * 12345) % 1_000_000_000,
        );
    }
    set_mtime(top, 1_400_000_000, 5);
}

/// One entry's kind, permission bits, mtime, and content or link target.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    mtime: (i64, i64),
    content: Vec<u8>,
}

fn describe(p: &Path) -> Seen {
    let m = std::fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let (kind, content) = if ft.is_symlink() {
        (
            "link",
            std::fs::read_link(p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes(),
        )
    } else if ft.is_dir() {
        ("dir", Vec::new())
    } else if ft.is_file() {
        ("file", std::fs::read(p).unwrap())
    } else {
        ("special", Vec::new())
    };
    Seen {
        kind,
        mode: if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        },
        mtime: (m.mtime(), m.mtime_nsec()),
        content,
    }
}

/// Assert two trees hold the same names, kinds, contents, modes and mtimes.
fn assert_same_tree(a: &Path, b: &Path) {
    let names_a = tree(a);
    let names_b = tree(b);
    assert_eq!(names_a, names_b, "{} vs {}", a.display(), b.display());
    assert_eq!(describe(a).mode, describe(b).mode, "top mode");
    assert_eq!(describe(a).mtime, describe(b).mtime, "top mtime");
    for n in names_a {
        let (x, y) = (describe(&a.join(&n)), describe(&b.join(&n)));
        assert_eq!(x.kind, y.kind, "{n}: kind");
        assert_eq!(x.content, y.content, "{n}: content");
        assert_eq!(x.mode, y.mode, "{n}: mode {:o} vs {:o}", x.mode, y.mode);
        assert_eq!(x.mtime, y.mtime, "{n}: mtime");
    }
}

/// (files_done, files_total, bytes_done, bytes_total) of each event.
type ProgressLog = Arc<Mutex<Vec<(u64, u64, u64, u64)>>>;

fn progress_log(h: &mut Handle) -> ProgressLog {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::TreeProgress {
            files_done,
            files_total,
            bytes_done,
            bytes_total,
        } = *ev
        {
            l.lock()
                .unwrap()
                .push((files_done, files_total, bytes_done, bytes_total));
        }
    });
    log
}

#[test]
fn round_trip_keeps_contents_and_metadata() {
    let src = tempdir();
    let outside = tempdir();
    std::fs::write(outside.path().join("secret"), b"outside").unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    make_tree(&top, outside.path());

    let remote = tempdir();
    let back = tempdir();
    let mut h = handle();
    h.set_root(Some(remote.path())).unwrap();
    let progress = progress_log(&mut h);
    h.copy_in(&top, "/").unwrap();
    assert_same_tree(&top, &remote.path().join("top"));
    assert_no_temp(remote.path());

    let last = *progress.lock().unwrap().last().expect("progress events");
    let files = tree(&top)
        .iter()
        .filter(|n| std::fs::symlink_metadata(top.join(n)).unwrap().is_file())
        .count() as u64;
    let bytes: u64 = tree(&top)
        .iter()
        .map(|n| std::fs::symlink_metadata(top.join(n)).unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert_eq!(last, (files, files, bytes, bytes), "final tree progress");

    progress.lock().unwrap().clear();
    h.copy_out("/top", back.path()).unwrap();
    assert_same_tree(&top, &back.path().join("top"));
    assert_no_temp(back.path());
    let last = *progress.lock().unwrap().last().expect("progress events");
    assert_eq!(last, (files, files, bytes, bytes), "final tree progress");

    // The links were copied as links: nothing of `outside` came along.
    let out_link = back.path().join("top/a/out-link");
    assert!(std::fs::symlink_metadata(&out_link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "nothing written outside"
    );
}

#[test]
fn a_single_file_and_a_merge_into_an_existing_tree() {
    let src = tempdir();
    let f = write_file(&src.path().join("one.bin"), &Rng::new(3).bytes(70_000));
    let remote = tempdir();
    let mut h = handle();
    h.copy_in(&f, remote.path()).unwrap();
    assert_eq!(
        std::fs::read(remote.path().join("one.bin")).unwrap(),
        std::fs::read(&f).unwrap()
    );
    // A second copy replaces files and merges directories.
    let top = src.path().join("t");
    std::fs::create_dir_all(top.join("d")).unwrap();
    std::fs::write(top.join("d/x"), b"first").unwrap();
    h.copy_in(&top, remote.path()).unwrap();
    std::fs::write(top.join("d/x"), b"second").unwrap();
    std::fs::write(top.join("d/y"), b"new").unwrap();
    std::fs::write(remote.path().join("t/d/kept"), b"kept").unwrap();
    h.copy_in(&top, remote.path()).unwrap();
    assert_eq!(
        std::fs::read(remote.path().join("t/d/x")).unwrap(),
        b"second"
    );
    assert_eq!(std::fs::read(remote.path().join("t/d/y")).unwrap(), b"new");
    assert_eq!(
        std::fs::read(remote.path().join("t/d/kept")).unwrap(),
        b"kept"
    );
    // A file where the tree has a directory is an error naming the path.
    std::fs::remove_dir_all(remote.path().join("t/d")).unwrap();
    std::fs::write(remote.path().join("t/d"), b"in the way").unwrap();
    let e = h.copy_in(&top, remote.path()).unwrap_err();
    assert!(e.to_string().contains("t/d"), "{e}");
    assert_no_temp(remote.path());
}

#[test]
fn metadata_is_not_kept_when_turned_off() {
    let src = tempdir();
    let top = src.path().join("t");
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("f"), b"x").unwrap();
    chmod(&top.join("f"), 0o777);
    set_mtime(&top.join("f"), 1_000_000_000, 0);
    let remote = tempdir();
    let mut h = handle();
    h.set_preserve_metadata(false);
    h.copy_in(&top, remote.path()).unwrap();
    let m = std::fs::metadata(remote.path().join("t/f")).unwrap();
    assert_ne!(m.mtime(), 1_000_000_000, "mtime was kept");
    // SAFETY: umask(2) has no pointers; the value is put back at once.
    let umask = unsafe {
        let u = libc::umask(0o022);
        libc::umask(u);
        u
    };
    assert_eq!(m.mode() & 0o777, 0o777 & !umask);
}

#[test]
fn special_files_are_skipped_with_a_log_event() {
    let src = tempdir();
    let top = src.path().join("t");
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("f"), b"x").unwrap();
    let fifo = std::ffi::CString::new(top.join("pipe").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: fifo is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let remote = tempdir();
    let back = tempdir();
    let mut h = handle();
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = logs.clone();
    h.add_event_callback(EventMask::LOG, move |ev| {
        if let Event::Log { line } = ev {
            l.lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).into_owned());
        }
    });
    h.copy_in(&top, remote.path()).unwrap();
    assert_eq!(tree(&remote.path().join("t")), vec!["f"]);
    assert!(
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("skipping FIFO t/pipe")),
        "{:?}",
        logs.lock().unwrap()
    );
    logs.lock().unwrap().clear();
    h.copy_out(&top, back.path()).unwrap();
    assert_eq!(tree(&back.path().join("t")), vec!["f"]);
    // The helper's stderr line arrives as a LOG event; it may trail the
    // final reply, so wait for it with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("skipping FIFO t/pipe"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            logs.lock().unwrap()
        );
        h.stat(back.path()).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Links pointing out of the tree and out of the root are copied as links
/// and never followed, in either direction.
#[test]
fn symlinks_out_of_the_tree_or_root_are_not_followed() {
    let outside = tempdir();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    let remote = tempdir();
    let rtree = remote.path().join("t");
    std::fs::create_dir(&rtree).unwrap();
    symlink(outside.path(), rtree.join("abs")).unwrap();
    symlink("../../../../../../../..", rtree.join("up")).unwrap();
    symlink("/", rtree.join("root")).unwrap();
    std::fs::write(rtree.join("plain"), b"p").unwrap();
    let mut h = handle();
    h.set_root(Some(remote.path())).unwrap();

    let back = tempdir();
    h.copy_out("/t", back.path()).unwrap();
    assert_eq!(
        tree(&back.path().join("t")),
        vec!["abs", "plain", "root", "up"]
    );
    for l in ["abs", "up", "root"] {
        assert!(std::fs::symlink_metadata(back.path().join("t").join(l))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    // Copying the link itself copies a link.
    h.copy_out("/t/root", back.path()).unwrap();
    assert!(std::fs::symlink_metadata(back.path().join("root"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Upload: a link to the outside arrives as a link; then a tree whose
    // directory has the link's name cannot be written through it.
    let src = tempdir();
    std::fs::create_dir(src.path().join("t")).unwrap();
    symlink(outside.path(), src.path().join("t/esc")).unwrap();
    let dest = tempdir();
    let mut h2 = handle();
    h2.set_root(Some(dest.path())).unwrap();
    h2.copy_in(src.path().join("t"), "/").unwrap();
    assert_eq!(
        std::fs::read_link(dest.path().join("t/esc")).unwrap(),
        outside.path()
    );
    let src2 = tempdir();
    std::fs::create_dir_all(src2.path().join("t/esc")).unwrap();
    std::fs::write(src2.path().join("t/esc/planted"), b"evil").unwrap();
    let e = h2.copy_in(src2.path().join("t"), "/").unwrap_err();
    assert!(e.to_string().contains("t/esc"), "{e}");
    assert!(
        !outside.path().join("planted").exists(),
        "wrote through a link"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
}

/// 50 cancels at random points, alternating directions: files that made it
/// are intact, nothing partial is anywhere, and the handle keeps working.
#[test]
fn fifty_random_cancels_mid_tree() {
    let src = tempdir();
    let top = src.path().join("t");
    let mut rng = Rng::new(0xc4ce1);
    for d in 0..6 {
        std::fs::create_dir_all(top.join(format!("d{d}/sub"))).unwrap();
        for f in 0..12 {
            let size = match rng.below(10) {
                0 => 40_000 + rng.below(60_000),
                _ => rng.below(6000),
            } as usize;
            let sub = if f % 3 == 0 { "/sub" } else { "" };
            std::fs::write(top.join(format!("d{d}{sub}/f{f}")), rng.bytes(size)).unwrap();
        }
    }
    let remote = tempdir();
    let mut h = handle();
    h.set_root(Some(remote.path())).unwrap();
    h.set_progress_interval(Duration::ZERO);
    // Cancel once this many bytes are done (per the tree progress).
    let threshold = Arc::new(Mutex::new(u64::MAX));
    let t = threshold.clone();
    let cancel = h.canceller();
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::TreeProgress { bytes_done, .. } = *ev {
            if bytes_done >= *t.lock().unwrap() {
                cancel.cancel();
            }
        }
    });
    let total: u64 = tree(&top)
        .iter()
        .map(|n| std::fs::symlink_metadata(top.join(n)).unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    // Downloads read a complete copy; uploads go to /up.
    std::fs::create_dir(remote.path().join("full")).unwrap();
    std::fs::create_dir(remote.path().join("up")).unwrap();
    h.copy_in(&top, "/full").unwrap();
    assert_same_tree(&top, &remote.path().join("full/t"));
    let mut cancelled = 0;
    for round in 0..50 {
        let local = tempdir();
        let upload = round % 2 == 0;
        let dest = if upload {
            let _ = std::fs::remove_dir_all(remote.path().join("up/t"));
            remote.path().join("up/t")
        } else {
            local.path().join("t")
        };
        let by_thread = round % 4 >= 2;
        let at = rng.below(total);
        let thread = if by_thread {
            *threshold.lock().unwrap() = u64::MAX;
            let c = h.canceller();
            let delay = Duration::from_micros(rng.below(20_000));
            Some(std::thread::spawn(move || {
                std::thread::sleep(delay);
                c.cancel();
            }))
        } else {
            *threshold.lock().unwrap() = at;
            None
        };
        let r = if upload {
            h.copy_in(&top, "/up")
        } else {
            h.copy_out("/full/t", local.path())
        };
        if let Some(t) = thread {
            t.join().unwrap();
        }
        h.clear_cancel();
        match r {
            Ok(()) => assert_same_tree(&top, &dest),
            Err(Error::Cancelled) => cancelled += 1,
            Err(e) => panic!("round {round}: {e}"),
        }
        // Every file that exists is whole.
        if dest.exists() {
            for n in tree(&dest) {
                let p = dest.join(&n);
                if std::fs::symlink_metadata(&p).unwrap().is_file() {
                    assert_eq!(
                        std::fs::read(&p).unwrap(),
                        std::fs::read(top.join(&n)).unwrap(),
                        "round {round}: {n} is not whole"
                    );
                }
            }
        }
        assert_no_temp(remote.path());
        assert_no_temp(local.path());
    }
    assert!(
        cancelled >= 10,
        "only {cancelled} of 50 rounds were cancelled"
    );
    // The handle still works.
    *threshold.lock().unwrap() = u64::MAX;
    let _ = std::fs::remove_dir_all(remote.path().join("up/t"));
    h.copy_in(&top, "/up").unwrap();
    assert_same_tree(&top, &remote.path().join("up/t"));
}

/// An unprivileged helper: runs as `nobody` when the tests run as root.
fn nobody_handle(root: &Path) -> Handle {
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
    h.set_root(Some(root)).unwrap();
    h
}

fn chown_nobody(p: &Path) {
    std::os::unix::fs::lchown(p, Some(65534), Some(65534)).unwrap();
}

#[test]
fn errors_stop_by_default_and_keep_going_reports_them_all() {
    let remote = tempdir();
    chmod(remote.path(), 0o755);
    // Upload into a directory the helper owns, where one subdirectory
    // (owned by root, read-only) refuses new files.
    let dst = remote.path().join("dst");
    std::fs::create_dir_all(dst.join("t/locked")).unwrap();
    for p in [&dst, &dst.join("t")] {
        chown_nobody(p);
    }
    chmod(&dst.join("t/locked"), 0o555);
    let src = tempdir();
    let top = src.path().join("t");
    std::fs::create_dir_all(top.join("locked")).unwrap();
    std::fs::create_dir_all(top.join("z")).unwrap();
    std::fs::write(top.join("a"), b"a").unwrap();
    std::fs::write(top.join("locked/x"), b"x").unwrap();
    std::fs::write(top.join("z/y"), b"y").unwrap();

    let mut h = nobody_handle(remote.path());
    let e = h.copy_in(&top, "/dst").unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
    assert!(e.to_string().contains("t/locked/x"), "{e}");
    assert!(
        !dst.join("t/z/y").exists(),
        "the copy went on after the error"
    );
    assert_no_temp(&dst);

    h.set_keep_going(true);
    match h.copy_in(&top, "/dst").unwrap_err() {
        Error::Incomplete { errors } => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].errno, libc::EACCES);
            assert_eq!(errors[0].path, Path::new("/dst/t/locked/x"));
        }
        other => panic!("{other}"),
    }
    assert_eq!(std::fs::read(dst.join("t/a")).unwrap(), b"a");
    assert_eq!(std::fs::read(dst.join("t/z/y")).unwrap(), b"y");
    assert_no_temp(&dst);

    // Download of a tree with an unreadable file and an unreadable
    // directory.
    let rt = remote.path().join("src");
    std::fs::create_dir_all(rt.join("closed")).unwrap();
    std::fs::create_dir_all(rt.join("open")).unwrap();
    std::fs::write(rt.join("closed/x"), b"x").unwrap();
    std::fs::write(rt.join("open/ok"), b"ok").unwrap();
    std::fs::write(rt.join("secret"), b"s").unwrap();
    chmod(&rt.join("secret"), 0o000);
    chmod(&rt.join("closed"), 0o000);
    let local = tempdir();
    h.set_keep_going(false);
    let e = h.copy_out("/src", local.path()).unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
    assert!(e.to_string().contains("src/closed"), "{e}");
    h.set_keep_going(true);
    let mut errors = match h.copy_out("/src", local.path()).unwrap_err() {
        Error::Incomplete { errors } => errors,
        other => panic!("{other}"),
    };
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    let paths: Vec<PathBuf> = errors.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        paths,
        vec![PathBuf::from("/src/closed"), PathBuf::from("/src/secret")]
    );
    assert!(errors.iter().all(|e| e.errno == libc::EACCES), "{errors:?}");
    assert_eq!(
        std::fs::read(local.path().join("src/open/ok")).unwrap(),
        b"ok"
    );
    assert_no_temp(local.path());
    chmod(&rt.join("closed"), 0o755);
}
