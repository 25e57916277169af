//! 1000 operations, with cancels and a helper crash among them, leave the
//! process's fd count as it was and no zombie. This binary holds a single
//! test so no other test's fds or children blur the count.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use barge::{Error, Event, EventMask};
use common::*;

#[test]
fn a_thousand_operations_leak_no_fd_and_leave_no_zombie() {
    let root = tempdir();
    let local = tempdir();
    let data = Rng::new(5).bytes(200 << 10);
    let src = write_file(&local.path().join("s.bin"), &data);
    let fds_before = fd_count();

    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    h.set_progress_interval(Duration::ZERO);
    let cancel_at = Arc::new(AtomicU64::new(u64::MAX));
    let t = cancel_at.clone();
    let c = h.canceller();
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::Progress { done, .. } = ev {
            if *done >= t.load(Ordering::SeqCst) {
                c.cancel();
            }
        }
    });
    let mut crashed = false;
    for i in 0..1000u64 {
        match i % 5 {
            0 => {
                cancel_at.store(50 << 10, Ordering::SeqCst);
                let r = h.upload(&src, "/c.bin");
                cancel_at.store(u64::MAX, Ordering::SeqCst);
                assert!(matches!(r, Err(Error::Cancelled)), "#{i}: {r:?}");
            }
            1 => h.upload(&src, "/u.bin").unwrap(),
            2 => h.download("/u.bin", local.path().join("d.bin")).unwrap(),
            3 => {
                h.stat("/u.bin").unwrap();
            }
            _ => {
                assert!(h.stat("/missing").is_err());
            }
        }
        if i == 500 {
            // A crash: kill the helper once it has run past the crash
            // window, so the next operation relaunches at once.
            let pid = h.helper_pid().unwrap();
            std::thread::sleep(barge::client::CRASH_WINDOW);
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            // The crash happens while idle: wait for it to land, so the next
            // operation finds a dead helper rather than racing with it.
            while alive(pid) {
                std::thread::sleep(Duration::from_millis(1));
            }
            crashed = true;
        }
    }
    assert!(crashed);
    assert!(
        zombie_children().is_empty(),
        "zombies while the handle lives"
    );
    drop(h);
    assert_eq!(fd_count(), fds_before, "fd count changed");
    assert!(zombie_children().is_empty(), "zombies after close");
    assert_no_temp(root.path());
    assert_no_temp(local.path());
}
