//! A caller that ignores SIGCHLD, as many daemons do, has its children
//! reaped by the kernel the moment they exit, so the helper's exit status
//! never reaches barge. A helper that answered SHUTDOWN and exited has
//! still stopped cleanly. This binary holds a single test: SIGCHLD's
//! disposition belongs to the whole process.

mod common;

use std::sync::{Arc, Mutex};

use barge::{Event, EventMask, ExitStatus};
use common::*;

#[test]
fn with_sigchld_ignored_a_graceful_shutdown_is_still_clean() {
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let root = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    h.add_event_callback(EventMask::SHUTDOWN, move |ev| {
        if let Event::Shutdown {
            status, graceful, ..
        } = *ev
        {
            s.lock().unwrap().push((status, graceful));
        }
    });
    h.stat("/").unwrap();
    h.shutdown().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(Some(ExitStatus::Unknown), true)]
    );
    // SIGKILL's path: reaped by the kernel too, and nothing waits forever.
    h.stat("/").unwrap();
    h.kill().unwrap();
    assert_eq!(seen.lock().unwrap()[1], (Some(ExitStatus::Unknown), false));
    assert!(zombie_children().is_empty());
}
