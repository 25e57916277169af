//! The fast path: local files passed to the helper as fds and copied in
//! the kernel in bounded steps. These tests check that it is used only
//! when it should be, that it copies exactly, that a refusal or a kernel
//! that cannot copy falls back without the caller noticing, that a cancel
//! is seen within a step and leaves nothing partial, and that the length
//! guarantee that replaces the stream checksum holds.

mod common;

use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use barge::wire::{self, Frame, FrameType, FEATURE_FD_PASSING, HEADER_LEN};
use barge::{Error, Event, EventMask, Handle};
use common::*;

/// A handle on the freshly built helper, offering the fast path.
fn fast_handle() -> Handle {
    let mut h = Handle::new().unwrap();
    h.set_helper([helper_path()]).unwrap();
    h.set_fast_path(true);
    h
}

#[test]
fn the_fast_path_copies_files_exactly_both_ways() {
    let local = tempdir();
    let root = tempdir();
    let mut h = fast_handle();
    h.set_root(Some(root.path())).unwrap();
    h.launch().unwrap();
    assert!(
        h.uses_fast_path(),
        "the bundled helper, our child, grants it"
    );
    let mut rng = Rng::new(0xfa57);
    // Empty, small, exactly two steps, and a few steps plus a tail.
    for size in [0usize, 1, 4 << 20, (5 << 20) + 12345] {
        let data = rng.bytes(size);
        let src = write_file(&local.path().join("src.bin"), &data);
        h.upload(&src, "/up.bin").unwrap();
        assert_eq!(
            std::fs::read(root.path().join("up.bin")).unwrap(),
            data,
            "upload of {size}"
        );
        let back = local.path().join("back.bin");
        h.download("/up.bin", &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), data, "download of {size}");
    }
    assert!(h.uses_fast_path());
    assert_no_temp(root.path());
    assert_no_temp(local.path());
}

#[test]
fn the_fast_path_keeps_the_mode_and_reports_monotonic_progress_to_the_total() {
    use std::os::unix::fs::PermissionsExt;
    let local = tempdir();
    let root = tempdir();
    let data = Rng::new(3).bytes((12 << 20) + 7);
    let src = write_file(&local.path().join("p.bin"), &data);
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut h = fast_handle();
    h.set_root(Some(root.path())).unwrap();
    h.set_progress_interval(Duration::ZERO);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::Progress { done, total } = ev {
            s.lock().unwrap().push((*done, *total));
        }
    });
    for up in [true, false] {
        seen.lock().unwrap().clear();
        if up {
            h.upload(&src, "/p.bin").unwrap();
        } else {
            h.download("/p.bin", local.path().join("q.bin")).unwrap();
        }
        assert!(h.uses_fast_path());
        let seen = seen.lock().unwrap().clone();
        assert!(seen.len() >= 4, "an event every few MiB: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
        assert!(
            seen.iter().all(|(_, t)| *t == Some(data.len() as u64)),
            "{seen:?}"
        );
        assert_eq!(seen.last().unwrap().0, data.len() as u64);
    }
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root.path().join("p.bin")), 0o640);
    assert_eq!(std::fs::read(local.path().join("q.bin")).unwrap(), data);
}

#[test]
fn a_launcher_between_client_and_helper_means_the_stream_path() {
    // sh forks the helper instead of exec'ing it: the helper's parent is
    // sh, not the client, so it must not grant the fast path (as through
    // ssh or sudo), even though the client offers it.
    let local = tempdir();
    let root = tempdir();
    let mut h = Handle::new().unwrap();
    h.set_helper([
        "/bin/sh".to_string(),
        "-c".into(),
        format!("{}; exit $?", helper_path()),
    ])
    .unwrap();
    h.set_fast_path(true);
    h.set_root(Some(root.path())).unwrap();
    let data = Rng::new(5).bytes(3 << 20);
    let src = write_file(&local.path().join("s.bin"), &data);
    h.upload(&src, "/s.bin").unwrap();
    assert!(!h.uses_fast_path());
    assert_eq!(std::fs::read(root.path().join("s.bin")).unwrap(), data);
}

#[test]
fn the_default_is_the_fast_path_only_for_the_default_helper() {
    // An explicit helper command gets the stream path unless asked.
    let mut h = handle();
    h.launch().unwrap();
    assert!(!h.uses_fast_path());
    h.shutdown().unwrap();
    h.set_fast_path(true);
    h.launch().unwrap();
    assert!(h.uses_fast_path());
    h.shutdown().unwrap();
    h.set_fast_path(false);
    h.launch().unwrap();
    assert!(!h.uses_fast_path());
}

#[test]
fn a_helper_that_refuses_the_fd_gets_the_same_transfer_as_a_stream() {
    let local = tempdir();
    let root = tempdir();
    let mut h = Handle::new().unwrap();
    h.set_helper([
        "/usr/bin/env",
        "BARGE_HELPER_FAULT=refuse-fd",
        helper_path(),
    ])
    .unwrap();
    h.set_fast_path(true);
    h.set_root(Some(root.path())).unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let l = logs.clone();
    h.add_event_callback(EventMask::LOG, move |ev| {
        if let Event::Log { line } = ev {
            l.lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).into_owned());
        }
    });
    let data = Rng::new(9).bytes((2 << 20) + 99);
    let src = write_file(&local.path().join("r.bin"), &data);
    h.upload(&src, "/r.bin").unwrap();
    assert!(h.uses_fast_path(), "granted, then refused per request");
    assert_eq!(std::fs::read(root.path().join("r.bin")).unwrap(), data);
    let back = local.path().join("back.bin");
    h.download("/r.bin", &back).unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
    h.shutdown().unwrap();
    let logs = logs.lock().unwrap().join("\n");
    assert!(logs.contains("PUT_FD /r.bin: refused"), "{logs}");
    assert!(logs.contains("GET_FD /r.bin: refused"), "{logs}");
    assert_no_temp(root.path());
    assert_no_temp(local.path());
}

#[test]
fn across_filesystems_the_helper_copies_without_copy_file_range() {
    // tmpfs to the test directory's filesystem: copy_file_range refuses
    // (EXDEV) when the two are of different types, and the helper carries
    // on with read and write. Where both are tmpfs it simply copies.
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm; skipped");
        return;
    }
    let far = tempfile::Builder::new()
        .prefix("barge-test-")
        .tempdir_in(shm)
        .unwrap();
    let near = tempdir();
    let mut h = fast_handle();
    let data = Rng::new(12).bytes((3 << 20) + 5);
    let src = write_file(&near.path().join("x.bin"), &data);
    let remote = far.path().join("x.bin");
    h.upload(&src, &remote).unwrap();
    assert_eq!(std::fs::read(&remote).unwrap(), data);
    let back = near.path().join("y.bin");
    h.download(&remote, &back).unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
    assert!(h.uses_fast_path());
}

#[test]
fn a_cancel_is_seen_within_a_step_and_leaves_nothing() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let local = tempdir();
    let root = tempdir();
    let size: u64 = 96 << 20;
    let data = Rng::new(21).bytes(size as usize);
    let src = write_file(&local.path().join("big.bin"), &data);
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    let existing = b"the existing destination".to_vec();
    std::fs::write(root.path().join("old.bin"), &existing).unwrap();
    let mut h = fast_handle();
    h.set_root(Some(root.path())).unwrap();
    h.launch().unwrap();
    assert!(h.uses_fast_path());
    let pid = h.helper_pid().unwrap();
    // Cancel from the PROGRESS callback once a random byte count is
    // reached, and note when: the cancel lands inside the copy whatever
    // the machine's load.
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let fired: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let (t, f, c) = (target.clone(), fired.clone(), h.canceller());
    h.set_progress_interval(Duration::ZERO);
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::Progress { done, .. } = ev {
            let mut f = f.lock().unwrap();
            if *done >= t.load(Ordering::SeqCst) && f.is_none() {
                *f = Some(Instant::now());
                c.cancel();
            }
        }
    });
    let mut rng = Rng::new(77);
    let mut cancelled = 0;
    let mut worst = Duration::ZERO;
    for i in 0..40 {
        let upload = i % 2 == 0;
        // At least 16 steps before the end, so the helper is still copying
        // when the STOP arrives.
        target.store(rng.below(size - (16 << 20)), Ordering::SeqCst);
        *fired.lock().unwrap() = None;
        let r = if upload {
            h.upload(&src, "/old.bin")
        } else {
            h.download("/big.bin", local.path().join("down.bin"))
        };
        let returned = Instant::now();
        let t0 = fired.lock().unwrap().expect("the cancel fired");
        match r {
            Err(Error::Cancelled) => {
                cancelled += 1;
                worst = worst.max(returned - t0);
                assert_eq!(
                    std::fs::read(root.path().join("old.bin")).unwrap(),
                    existing,
                    "a cancelled upload changed the destination"
                );
                assert!(
                    !local.path().join("down.bin").exists(),
                    "a cancelled download left a file"
                );
            }
            Ok(()) => {
                // The copy outran the STOP (a very slow wake-up): the
                // result is real. Put things back.
                std::fs::write(root.path().join("old.bin"), &existing).unwrap();
                let _ = std::fs::remove_file(local.path().join("down.bin"));
            }
            Err(e) => panic!("transfer {i}: {e}"),
        }
        // The same helper serves the next operation at once.
        h.stat("/big.bin").unwrap();
        assert_eq!(h.helper_pid(), Some(pid), "the helper was replaced");
    }
    assert!(
        cancelled >= 30,
        "only {cancelled} of 40 cancels stopped the copy"
    );
    // A promise, with room for a loaded machine: one step of a page-cache
    // copy takes well under a millisecond.
    assert!(
        worst < Duration::from_millis(100),
        "slowest cancel took {worst:?}"
    );
    assert_no_temp(root.path());
    assert_no_temp(local.path());
}

/// Speak to a helper by hand over a socketpair, as its parent, and pass a
/// file whose size is not what PUT_FD says: the helper must refuse to
/// commit it (the fast path's stand-in for the stream checksum).
#[test]
fn a_source_whose_length_differs_from_put_fd_is_never_committed() {
    let root = tempdir();
    let local = tempdir();
    let data = Rng::new(4).bytes(3 << 20);
    let src = write_file(&local.path().join("s.bin"), &data);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = Command::new(helper_path())
        .stdin(Stdio::from(OwnedFd::from(theirs.try_clone().unwrap())))
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ours = ours;
    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = Vec::new();
    wire::encode_frame(
        &Frame::Hello {
            version_min: 1,
            version_max: 1,
            features: FEATURE_FD_PASSING,
            root: root.path().as_os_str().as_encoded_bytes(),
        },
        0,
        &mut out,
    )
    .unwrap();
    ours.write_all(&out).unwrap();
    let (h, payload) = read_frame(&mut ours);
    let Ok(Frame::Welcome { features, .. }) = wire::decode_frame(&h, &payload) else {
        panic!("expected WELCOME");
    };
    assert_eq!(
        features, FEATURE_FD_PASSING,
        "our own child grants the fast path"
    );

    let file = std::fs::File::open(&src).unwrap();
    for (serial, claimed) in [(1u64, data.len() as u64 + 1), (2, data.len() as u64 - 1)] {
        out.clear();
        wire::encode_frame(
            &Frame::PutFd {
                mode: 0o644,
                size: claimed,
                path: b"/claimed.bin",
            },
            serial,
            &mut out,
        )
        .unwrap();
        send_with_fd(&ours, &out, file.as_raw_fd());
        let mut last_copied = 0;
        loop {
            let (h, payload) = read_frame(&mut ours);
            assert_eq!(h.serial, serial);
            match wire::decode_frame(&h, &payload).unwrap() {
                Frame::Copied { total } => last_copied = total,
                Frame::Error { errno, message } => {
                    assert_eq!(errno, libc::EBADMSG, "{}", String::from_utf8_lossy(message));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(last_copied, data.len() as u64);
        assert!(!root.path().join("claimed.bin").exists());
        assert_no_temp(root.path());
    }

    // A PUT_FD without an fd is refused with EOPNOTSUPP, before any copy.
    out.clear();
    wire::encode_frame(
        &Frame::PutFd {
            mode: 0o644,
            size: 1,
            path: b"/nofd.bin",
        },
        3,
        &mut out,
    )
    .unwrap();
    ours.write_all(&out).unwrap();
    let (h, payload) = read_frame(&mut ours);
    assert_eq!(h.kind, FrameType::Error);
    let Ok(Frame::Error { errno, .. }) = wire::decode_frame(&h, &payload) else {
        unreachable!()
    };
    assert_eq!(errno, libc::EOPNOTSUPP);
    drop(ours);
    assert!(child.wait().unwrap().success());
}

fn read_frame(s: &mut UnixStream) -> (wire::Header, Vec<u8>) {
    use std::io::Read as _;
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let h = wire::decode_header(&head).unwrap();
    let mut payload = vec![0u8; h.len as usize];
    s.read_exact(&mut payload).unwrap();
    (h, payload)
}

fn send_with_fd(s: &UnixStream, bytes: &[u8], fd: i32) {
    let mut control = [0u64; 4];
    // SAFETY: the msghdr points at a live iovec and a zeroed, aligned
    // control buffer large enough for one SCM_RIGHTS int.
    let n = unsafe {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
        libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(fd);
        libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    assert_eq!(n, bytes.len() as isize);
}
