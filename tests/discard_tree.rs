//! A tree copy cancelled in the middle of a large file lets go of that
//! file as a cancelled download does: the unnamed file goes to the discard
//! thread (src/discard.rs) of whichever end was writing it, the client for
//! `copy_out` and the helper for `copy_in`, and closing the handle waits
//! for the client's. This binary holds a single test, so that no other
//! test starts the client's discard thread first or blurs the fd count.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use barge::{Error, Event, EventMask, Handle};
use common::*;

/// The names of the threads of process `pid`.
fn thread_names(pid: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

/// A handle that cancels itself once a tree copy has moved `at` bytes.
fn cancelling_handle(root: &Path, at: u64) -> Handle {
    let mut h = handle();
    h.set_root(Some(root)).unwrap();
    h.set_progress_interval(Duration::ZERO);
    let at = Arc::new(AtomicU64::new(at));
    let c = h.canceller();
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::TreeProgress { bytes_done, .. } = ev {
            if *bytes_done >= at.load(Ordering::SeqCst) {
                c.cancel();
            }
        }
    });
    h
}

#[test]
fn a_cancelled_tree_copy_hands_its_unfinished_file_to_the_discard_thread() {
    let remote = tempdir();
    let local = tempdir();
    let top = remote.path().join("t");
    std::fs::create_dir(&top).unwrap();
    // Far past the size the discard thread takes (1 MiB), and cancelled
    // at 4 MiB, well before its end.
    let data = Rng::new(11).bytes(32 << 20);
    write_file(&top.join("big.bin"), &data);
    let fds_before = fd_count();

    // copy_out: the client writes the file.
    assert!(!thread_names("self").contains(&"barge-discard".to_string()));
    let mut h = cancelling_handle(remote.path(), 4 << 20);
    let r = h.copy_out("/t", local.path());
    assert!(matches!(r, Err(Error::Cancelled)), "copy_out: {r:?}");
    assert!(!local.path().join("t/big.bin").exists());
    assert_no_temp(local.path());
    // Closing waits until the discard thread has closed the file.
    drop(h);
    assert_eq!(fd_count(), fds_before, "fd count after close");
    assert!(
        thread_names("self").contains(&"barge-discard".to_string()),
        "the cancelled copy_out closed its file without the discard thread"
    );

    // copy_in: a new helper writes the file. Besides its main thread it
    // runs only its watchdog, so one more task is its discard thread,
    // whose clone(2) returned before the helper answered the cancel. (The
    // count, not the names: a thread names itself once it runs.)
    let up = remote.path().join("up");
    std::fs::create_dir(&up).unwrap();
    let mut h = cancelling_handle(remote.path(), 4 << 20);
    h.stat("/").unwrap();
    let helper = h.helper_pid().unwrap().to_string();
    let before = thread_names(&helper).len();
    let r = h.copy_in(&top, "/up");
    assert!(matches!(r, Err(Error::Cancelled)), "copy_in: {r:?}");
    assert!(!up.join("t/big.bin").exists());
    assert_no_temp(remote.path());
    assert_eq!(
        thread_names(&helper).len(),
        before + 1,
        "the helper closed the cancelled file without its discard thread"
    );
}
