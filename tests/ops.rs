//! Round trips and remote operations against the bundled helper.

mod common;

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use common::*;

#[test]
fn upload_and_download_round_trip_byte_for_byte() {
    let root = tempdir();
    let local = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    let mut rng = Rng::new(99);
    for size in [0usize, 1, 4095, 16 << 10, (16 << 10) + 1, 3 << 20] {
        let data = rng.bytes(size);
        let src = write_file(&local.path().join("src"), &data);
        h.upload(&src, "/f").unwrap();
        assert_eq!(
            std::fs::read(root.path().join("f")).unwrap(),
            data,
            "upload {size}"
        );
        h.download("/f", local.path().join("back")).unwrap();
        assert_eq!(
            std::fs::read(local.path().join("back")).unwrap(),
            data,
            "download {size}"
        );
    }
    assert_no_temp(root.path());
    assert_no_temp(local.path());
}

#[test]
fn fd_transfers_work_with_pipes_of_unknown_length() {
    let root = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    let data = Rng::new(1).bytes(700_000);
    let (r, w) = pipe();
    let d = data.clone();
    let feeder = std::thread::spawn(move || {
        let mut f = std::fs::File::from(w);
        std::io::Write::write_all(&mut f, &d).unwrap();
    });
    h.upload_fd(r.as_fd(), "/piped").unwrap();
    feeder.join().unwrap();
    assert_eq!(std::fs::read(root.path().join("piped")).unwrap(), data);

    let (r, w) = pipe();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v).unwrap();
        v
    });
    h.download_fd("/piped", w.as_fd()).unwrap();
    drop(w);
    assert_eq!(reader.join().unwrap(), data);
}

#[test]
fn upload_keeps_the_mode_and_replaces_atomically() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempdir();
    let local = tempdir();
    let src = write_file(&local.path().join("x.sh"), b"#!/bin/sh\n");
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    std::fs::write(root.path().join("x.sh"), b"old").unwrap();
    h.upload(&src, "/x.sh").unwrap();
    let meta = std::fs::metadata(root.path().join("x.sh")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o750);
    let st = h.stat("/x.sh").unwrap();
    assert!(st.is_file());
    assert_eq!(st.mode & 0o777, 0o750);
    assert_eq!(st.size, 10);
}

#[test]
fn remote_operations_work_and_fail_with_the_right_errno() {
    let root = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    h.mkdir("/a/b/c", true).unwrap();
    h.mkdir("/a/b/c", true).unwrap();
    assert_eq!(h.mkdir("/a", false).unwrap_err().errno(), libc::EEXIST);
    assert_eq!(h.mkdir("/x/y", false).unwrap_err().errno(), libc::ENOENT);
    assert!(h.stat("/a/b/c").unwrap().is_dir());

    std::fs::write(root.path().join("a/f1"), b"1").unwrap();
    std::os::unix::fs::symlink("f1", root.path().join("a/link")).unwrap();
    let mut names: Vec<_> = h
        .list("/a")
        .unwrap()
        .into_iter()
        .map(|e| (e.name.to_string_lossy().into_owned(), e.stat.is_symlink()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("b".into(), false),
            ("f1".into(), false),
            ("link".into(), true)
        ]
    );

    h.rename("/a/f1", "/a/f2").unwrap();
    assert!(root.path().join("a/f2").exists());
    assert_eq!(
        h.rename("/a/nope", "/a/z").unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(h.remove("/a/b").unwrap_err().errno(), libc::ENOTEMPTY);
    h.remove("/a/b/c").unwrap();
    h.remove("/a/f2").unwrap();
    assert_eq!(h.remove("/a/f2").unwrap_err().errno(), libc::ENOENT);
    assert_eq!(h.list("/nope").unwrap_err().errno(), libc::ENOENT);
}

#[test]
fn a_directory_with_thousands_of_entries_lists_completely() {
    let root = tempdir();
    for i in 0..3000 {
        std::fs::write(
            root.path()
                .join(format!("entry-with-a-longish-name-{i:05}")),
            b"",
        )
        .unwrap();
    }
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    let list = h.list("/").unwrap();
    assert_eq!(list.len(), 3000);
}

#[test]
fn non_utf8_names_work() {
    let root = tempdir();
    let local = tempdir();
    let name = OsStr::from_bytes(b"caf\xe9-\xff.bin");
    let src = write_file(&local.path().join(name), b"bytes");
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    let mut remote = b"/".to_vec();
    remote.extend_from_slice(name.as_bytes());
    let remote = OsStr::from_bytes(&remote);
    h.upload(&src, remote).unwrap();
    assert_eq!(std::fs::read(root.path().join(name)).unwrap(), b"bytes");
    assert_eq!(h.list("/").unwrap()[0].name, name);
    h.download(remote, local.path().join("back")).unwrap();
}

#[test]
fn the_default_helper_is_found_next_to_the_test_binary() {
    // Cargo puts test binaries in target/*/deps and the helper one level
    // up; the default lookup checks both.
    let p = barge::default_helper();
    assert!(p.is_absolute() && p.ends_with("barge-helper"), "{p:?}");
    let mut h = barge::Handle::new().unwrap();
    h.launch().unwrap();
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Wait until process `pid` has `path` open (one of /proc/PID/fd links to it).
fn wait_until_open_by(pid: u32, path: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == path))
            })
            .unwrap_or(false);
        if open {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} never opened {}",
            path.display()
        );
        std::thread::yield_now();
    }
}

/// Write `data` into a FIFO that a reader already has open, then close it.
fn feed_fifo(path: &std::path::Path, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
}

#[test]
fn a_fifo_source_waits_for_its_writer_like_cat() {
    // barge opens the FIFO before any writer has: its first read returns 0
    // bytes, which is not the end until a writer has come and gone.
    let root = tempdir();
    let local = tempdir();
    let fifo = local.path().join("late-writer");
    mkfifo(&fifo);
    let data = Rng::new(5).bytes(300_000);
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    h.launch().unwrap();
    let (f, d) = (fifo.clone(), data.clone());
    let writer = std::thread::spawn(move || {
        wait_until_open_by(std::process::id(), &f);
        feed_fifo(&f, &d);
    });
    h.upload(&fifo, "/from-fifo").unwrap();
    writer.join().unwrap();
    assert_eq!(std::fs::read(root.path().join("from-fifo")).unwrap(), data);
}

#[test]
fn a_remote_fifo_downloads_through_the_stream_path() {
    // With and without the fast path: GET_FD refuses a FIFO without opening
    // it, and the stream GET waits for the FIFO's writer.
    for fast_path in [true, false] {
        let root = tempdir();
        let local = tempdir();
        let fifo = root.path().join("remote-fifo");
        mkfifo(&fifo);
        let data = Rng::new(6).bytes(200_000);
        let mut h = handle();
        h.set_root(Some(root.path())).unwrap();
        h.set_fast_path(fast_path);
        h.launch().unwrap();
        let pid = h.helper_pid().unwrap();
        let (f, d) = (fifo.clone(), data.clone());
        let writer = std::thread::spawn(move || {
            wait_until_open_by(pid, &f);
            feed_fifo(&f, &d);
        });
        let dst = local.path().join("from-remote-fifo");
        h.download("/remote-fifo", &dst).unwrap();
        writer.join().unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data, "fast path {fast_path}");
        assert_no_temp(local.path());
    }
}

#[test]
fn a_download_waiting_for_a_fifo_writer_is_cancellable_and_the_helper_survives() {
    let root = tempdir();
    let local = tempdir();
    mkfifo(&root.path().join("silent"));
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    let c = h.canceller();
    let fifo = root.path().join("silent");
    let canceller = std::thread::spawn(move || {
        wait_until_open_by(pid, &fifo);
        c.cancel();
    });
    let r = h.download("/silent", local.path().join("never"));
    canceller.join().unwrap();
    assert!(matches!(r, Err(barge::Error::Cancelled)), "{r:?}");
    assert_eq!(h.helper_pid(), Some(pid), "the helper was replaced");
    assert_eq!(tree(local.path()), Vec::<String>::new());
    h.stat("/silent").unwrap();
}

/// Setuid, setgid and sticky bits never travel with a single file: the
/// helper keeps only the permission bits of an upload's mode, and the
/// client only those of a download's. The tests run as root, whose writes
/// keep a set-id bit, so without the masks the bits would arrive.
#[test]
fn single_file_transfers_drop_setid_and_sticky_bits() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempdir();
    let local = tempdir();
    let src = write_file(&local.path().join("tool"), b"#!/bin/sh\n");
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o7755)).unwrap();
    assert_eq!(
        std::fs::metadata(&src).unwrap().permissions().mode() & 0o7777,
        0o7755
    );
    let mode_of = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for (fast, partial) in [(true, false), (false, false), (false, true)] {
        let mut h = handle();
        h.set_root(Some(root.path())).unwrap();
        h.set_fast_path(fast);
        h.set_keep_partial(partial);
        let how = format!("fast path {fast}, resumable {partial}");
        h.upload(&src, "/tool").unwrap();
        let up = mode_of(&root.path().join("tool"));
        assert_eq!(up & 0o7000, 0, "upload ({how}) kept {up:o}");
        assert_eq!(
            up & 0o700,
            0o700,
            "upload ({how}) lost the owner bits: {up:o}"
        );

        std::fs::set_permissions(
            root.path().join("tool"),
            std::fs::Permissions::from_mode(0o7755),
        )
        .unwrap();
        let back = local.path().join("back");
        let _ = std::fs::remove_file(&back);
        h.download("/tool", &back).unwrap();
        let down = mode_of(&back);
        assert_eq!(down & 0o7000, 0, "download ({how}) kept {down:o}");
        std::fs::remove_file(root.path().join("tool")).unwrap();
        h.shutdown().unwrap();
    }
}
