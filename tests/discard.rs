//! A cancelled download's unnamed local file is closed on the discard
//! thread (src/discard.rs), and closing the handle waits for that thread:
//! afterwards the process has exactly the fds it had before. This binary
//! holds a single test so no other test's fds blur the count.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use barge::{Error, Event, EventMask};
use common::*;

#[test]
fn cancelled_downloads_leave_no_file_and_no_fd_once_the_handle_is_closed() {
    let root = tempdir();
    let local = tempdir();
    write_file(&root.path().join("big.bin"), &Rng::new(9).bytes(64 << 20));
    let fds_before = fd_count();

    // Both paths: the stream path writes the file here; on the fast path
    // the helper copies into it and empties it after a cancel.
    for fast_path in [false, true] {
        for round in 0..5u64 {
            let mut h = handle();
            h.set_root(Some(root.path())).unwrap();
            h.set_fast_path(fast_path);
            h.set_progress_interval(Duration::ZERO);
            // Past the size the discard thread takes (1 MiB), at a
            // different point each round, and far from the end: on the
            // fast path the helper copies ahead of the progress the client
            // sees, and a 16 MiB file could finish before the cancel.
            let cancel_at = Arc::new(AtomicU64::new((2 + 2 * round) << 20));
            let (c, at) = (h.canceller(), cancel_at.clone());
            h.add_event_callback(EventMask::PROGRESS, move |ev| {
                if let Event::Progress { done, .. } = ev {
                    if *done >= at.load(Ordering::SeqCst) {
                        c.cancel();
                    }
                }
            });
            let dst = local.path().join("d.bin");
            let r = h.download("/big.bin", &dst);
            assert!(
                matches!(r, Err(Error::Cancelled)),
                "fast path {fast_path}, round {round}: {r:?}"
            );
            assert!(!dst.exists());
            assert_no_temp(local.path());
            drop(h);
            assert_eq!(
                fd_count(),
                fds_before,
                "fast path {fast_path}, round {round}: fd count after close"
            );
        }
    }
}
