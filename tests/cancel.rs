//! Cancel: at random byte positions in both directions, from another
//! thread while blocked, against a stopped helper, from both ends at once,
//! before an operation, and during the handshake.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use barge::{Error, Event, EventMask, Handle};
use common::*;

/// The pipe buffer the download-to-pipe cases use: one page.
const PIPE_SIZE: usize = 4096;

/// Cancel from a PROGRESS callback once `target` bytes are done.
fn cancel_at(h: &mut Handle) -> Arc<AtomicU64> {
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let t = target.clone();
    let c = h.canceller();
    h.set_progress_interval(Duration::ZERO);
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::Progress { done, .. } = ev {
            if *done >= t.load(Ordering::SeqCst) {
                c.cancel();
            }
        }
    });
    target
}

fn assert_cancelled<T: std::fmt::Debug>(r: barge::Result<T>, what: &str) {
    match r {
        Err(Error::Cancelled) => {}
        other => panic!("{what}: expected Cancelled, got {other:?}"),
    }
}

#[test]
fn upload_cancelled_at_random_positions_from_file_and_pipe() {
    let local = tempdir();
    let root = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    let target = cancel_at(&mut h);
    let mut rng = Rng::new(0xb4a6_e001);
    let dst = root.path().join("dst.bin");
    let mut current = b"the existing destination".to_vec();
    std::fs::write(&dst, &current).unwrap();

    for i in 0..200 {
        let size = 1 + rng.below(400 << 10) as usize;
        let data = rng.bytes(size);
        let pos = rng.below(size as u64);
        let from_pipe = i % 2 == 1;
        let result = if from_pipe {
            // The feeder writes `pos` bytes, cancels, and keeps the pipe
            // open until the upload returns, so the upload cannot see EOF
            // and finish first.
            let (r, w) = pipe();
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let c = h.canceller();
            let head = data[..pos as usize].to_vec();
            let feeder = std::thread::spawn(move || {
                let mut f = std::fs::File::from(w);
                std::io::Write::write_all(&mut f, &head).unwrap();
                c.cancel();
                let _ = done_rx.recv();
            });
            let r2 = h.upload_fd(r.as_fd(), "/dst.bin");
            done_tx.send(()).unwrap();
            feeder.join().unwrap();
            r2
        } else {
            let src = write_file(&local.path().join("src.bin"), &data);
            target.store(pos, Ordering::SeqCst);
            let r2 = h.upload(&src, "/dst.bin");
            target.store(u64::MAX, Ordering::SeqCst);
            r2
        };
        assert_cancelled(
            result,
            &format!("upload #{i} size {size} cancel at {pos} pipe={from_pipe}"),
        );
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            current,
            "#{i}: destination changed"
        );
        assert_no_temp(root.path());
        assert_eq!(tree(root.path()), vec!["dst.bin"]);

        // The same handle completes the next transfer.
        let src = write_file(&local.path().join("src.bin"), &data);
        h.upload(&src, "/dst.bin").unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data, "#{i}: follow-up upload");
        current = data;
    }
}

#[test]
fn download_cancelled_at_random_positions_to_file_and_pipe() {
    let local = tempdir();
    let root = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    let target = cancel_at(&mut h);
    let mut rng = Rng::new(0xd0_0a_d5);
    let dst = local.path().join("dst.bin");
    let mut current = b"the existing local file".to_vec();
    std::fs::write(&dst, &current).unwrap();

    for i in 0..200 {
        let to_pipe = i % 2 == 1;
        let size = 1 + rng.below(400 << 10) as usize;
        let size = if to_pipe {
            size.max(PIPE_SIZE + 2)
        } else {
            size
        };
        let data = rng.bytes(size);
        std::fs::write(root.path().join("src.bin"), &data).unwrap();
        if to_pipe {
            // The reader takes `pos` bytes, cancels, then drains to EOF.
            // The writer can be at most one pipe buffer ahead of the
            // reader, so with pos < size - PIPE_SIZE the download cannot
            // have finished when the cancel comes.
            let pos = rng.below((size - PIPE_SIZE) as u64);
            let (r, w) = pipe();
            // SAFETY: fcntl on our own pipe.
            assert_eq!(
                unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as i32) },
                PIPE_SIZE as i32
            );
            let c = h.canceller();
            let reader = std::thread::spawn(move || {
                let mut f = std::fs::File::from(r);
                let mut got = 0u64;
                let mut buf = vec![0u8; 4096];
                let mut cancelled = false;
                loop {
                    if !cancelled && got >= pos {
                        c.cancel();
                        cancelled = true;
                    }
                    // Never read past `pos` before cancelling: a read of a
                    // whole block could take the last bytes, and let the
                    // download finish before the cancel.
                    let want = if cancelled {
                        buf.len()
                    } else {
                        buf.len().min((pos - got) as usize)
                    };
                    match std::io::Read::read(&mut f, &mut buf[..want]).unwrap() {
                        0 => break,
                        n => got += n as u64,
                    }
                }
                assert!(cancelled, "the reader saw EOF before byte {pos}");
            });
            let result = h.download_fd("/src.bin", w.as_fd());
            drop(w);
            reader.join().unwrap();
            assert_cancelled(
                result,
                &format!("download #{i} size {size} cancel at {pos} to pipe"),
            );
        } else {
            let pos = rng.below(size as u64);
            target.store(pos, Ordering::SeqCst);
            let result = h.download("/src.bin", &dst);
            target.store(u64::MAX, Ordering::SeqCst);
            assert_cancelled(
                result,
                &format!("download #{i} size {size} cancel at {pos} to file"),
            );
            assert_eq!(
                std::fs::read(&dst).unwrap(),
                current,
                "#{i}: local file changed"
            );
        }
        assert_no_temp(local.path());
        assert_eq!(tree(local.path()), vec!["dst.bin"]);

        h.download("/src.bin", &dst).unwrap();
        assert_eq!(
            std::fs::read(&dst).unwrap(),
            data,
            "#{i}: follow-up download"
        );
        current = data;
    }
}

#[test]
fn cancel_from_another_thread_unblocks_a_read_of_an_empty_pipe() {
    let root = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    h.launch().unwrap();
    let (r, _w) = pipe();
    let c = h.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        c.cancel();
        t0
    });
    let result = h.upload_fd(r.as_fd(), "/never.bin");
    let returned = Instant::now();
    let t0 = t.join().unwrap();
    assert_cancelled(result, "upload from an empty pipe");
    let latency = returned - t0;
    assert!(
        latency < Duration::from_millis(100),
        "cancel took {latency:?}"
    );
    assert_eq!(tree(root.path()), Vec::<String>::new());
    h.stat("/").unwrap();
}

#[test]
fn cancel_from_another_thread_unblocks_a_write_to_a_full_pipe() {
    let root = tempdir();
    std::fs::write(root.path().join("big.bin"), vec![5u8; 4 << 20]).unwrap();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    h.launch().unwrap();
    let (_r, w) = pipe(); // nobody reads
    let c = h.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        let t0 = Instant::now();
        c.cancel();
        t0
    });
    let result = h.download_fd("/big.bin", w.as_fd());
    let returned = Instant::now();
    let t0 = t.join().unwrap();
    assert_cancelled(result, "download into a full pipe");
    let latency = returned - t0;
    assert!(
        latency < Duration::from_millis(100),
        "cancel took {latency:?}"
    );
    h.stat("/big.bin").unwrap();
}

#[test]
fn cancel_with_the_helper_stopped_kills_it_and_the_next_operation_relaunches() {
    let root = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    let started = Arc::new(AtomicU64::new(0));
    let s = started.clone();
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::Progress { done, total } = ev {
            assert_eq!(*total, None, "/dev/zero has no size");
            s.store(*done, Ordering::SeqCst);
        }
    });
    let c = h.canceller();
    let t = std::thread::spawn(move || {
        while started.load(Ordering::SeqCst) < (1 << 20) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: signals our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        c.cancel();
        t0
    });
    let result = h.upload("/dev/zero", "/zeros.bin");
    let returned = Instant::now();
    let t0 = t.join().unwrap();
    assert_cancelled(result, "upload to a stopped helper");
    let took = returned - t0;
    let bound = barge::client::DEFAULT_CANCEL_TIMEOUT + Duration::from_millis(500);
    assert!(took <= bound, "cancel of a stopped helper took {took:?}");
    assert!(
        took >= barge::client::DEFAULT_CANCEL_TIMEOUT,
        "returned before the cancel timeout: {took:?}"
    );
    assert!(!alive(pid), "the stopped helper was not killed");
    assert_eq!(h.helper_pid(), None);
    h.stat("/").unwrap();
    assert_ne!(h.helper_pid(), Some(pid));
    assert_no_temp(root.path());
    assert_eq!(tree(root.path()), Vec::<String>::new());
}

#[test]
fn both_ends_cancel_at_once_never_hang() {
    let root = tempdir();
    let data = Rng::new(7).bytes(300 << 10);
    std::fs::write(root.path().join("both-src.bin"), &data).unwrap();
    let local = tempdir();
    let src = write_file(&local.path().join("src.bin"), &data);
    for offset in (0..300u64 << 10).step_by(20 << 10) {
        let mut h = handle_with_fault(&format!("cancel@{offset}"), Some("both"));
        h.set_root(Some(root.path())).unwrap();
        let target = cancel_at(&mut h);
        target.store(offset, Ordering::SeqCst);
        h.launch().unwrap();
        let pid = h.helper_pid();
        let (src2, dst) = (src.clone(), local.path().join("both-dst.bin"));
        let (mut h, up, down) =
            within(Duration::from_secs(10), "both ends cancelling", move || {
                let up = h.upload(&src2, "/both-up.bin");
                let down = h.download("/both-src.bin", &dst);
                (h, up, down)
            });
        for (what, r) in [("upload", up), ("download", down)] {
            let e = r.expect_err(what);
            assert_eq!(e.errno(), libc::ECANCELED, "{what} at {offset}: {e}");
        }
        target.store(u64::MAX, Ordering::SeqCst);
        // The helper is the same one, and works.
        h.upload(&src, "/plain.bin").unwrap();
        assert_eq!(h.helper_pid(), pid);
        assert_eq!(std::fs::read(root.path().join("plain.bin")).unwrap(), data);
        assert!(!root.path().join("both-up.bin").exists());
        assert!(!local.path().join("both-dst.bin").exists());
        assert_no_temp(root.path());
        assert_no_temp(local.path());
    }
}

#[test]
fn a_cancel_while_idle_fails_the_next_operation_once() {
    let mut h = handle();
    h.launch().unwrap();
    h.canceller().cancel();
    assert_cancelled(h.stat("/"), "stat after an idle cancel");
    h.stat("/").unwrap();
    h.cancel();
    h.clear_cancel();
    h.stat("/").unwrap();
    // A cancel before the first launch is kept too.
    let h2 = handle();
    h2.cancel();
    let mut h2 = h2;
    assert_cancelled(h2.launch(), "launch after a cancel");
    assert_eq!(h2.helper_pid(), None);
    h2.launch().unwrap();
}

#[test]
fn the_handshake_is_cancellable_and_bounded() {
    let mut h = handle_with_fault("stall-handshake", None);
    let c = h.canceller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        c.cancel();
        t0
    });
    let r = h.launch();
    let returned = Instant::now();
    let t0 = t.join().unwrap();
    assert_cancelled(r, "stalled handshake");
    assert!(returned - t0 < Duration::from_millis(100));

    h.set_launch_timeout(Duration::from_millis(300));
    let start = Instant::now();
    let e = h.launch().unwrap_err();
    assert_eq!(e.errno(), libc::ETIMEDOUT, "{e}");
    assert!(e.to_string().contains("handshake"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn upload_of_dev_zero_streams_until_cancelled() {
    let root = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    let target = cancel_at(&mut h);
    target.store(3 << 20, Ordering::SeqCst);
    // A character device has no size: progress reports an unknown total.
    let totals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let t = totals.clone();
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::Progress { done, total } = ev {
            t.lock().unwrap().push((*done, *total));
        }
    });
    assert_cancelled(h.upload("/dev/zero", "/z.bin"), "/dev/zero");
    assert_eq!(tree(root.path()), Vec::<String>::new());
    let totals = totals.lock().unwrap();
    assert!(
        totals.last().is_some_and(|(done, _)| *done >= 3 << 20),
        "streamed too little: {:?}",
        totals.last()
    );
    assert!(
        totals.iter().all(|(_, total)| total.is_none()),
        "a known total for /dev/zero: {:?}",
        totals.iter().find(|(_, t)| t.is_some())
    );
}
