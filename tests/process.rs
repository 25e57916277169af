//! Process hygiene: process groups, helper death, crash-loop back-off,
//! shutdown escalation, events, the helper's watchdog.

mod common;

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use barge::client::CRASH_WINDOW;
use barge::{Error, Event, EventMask, ExitStatus};
use common::*;

fn pgid(pid: u32) -> i32 {
    // SAFETY: no pointers.
    unsafe { libc::getpgid(pid as i32) }
}

fn our_pgrp() -> i32 {
    // SAFETY: no pointers.
    unsafe { libc::getpgrp() }
}

#[test]
fn the_helper_runs_in_its_own_process_group_by_default() {
    let mut h = handle();
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    assert_eq!(pgid(pid), pid as i32);
    assert_ne!(pgid(pid), our_pgrp());
    assert_eq!(h.helper_pgid(), Some(pid));
}

#[test]
fn set_pgroup_false_keeps_the_helper_in_our_group() {
    let mut h = handle();
    h.set_pgroup(false);
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    assert_eq!(pgid(pid), our_pgrp());
    assert_eq!(h.helper_pgid(), None);
}

/// Wait until the running helper is past the crash window, so its death
/// is not treated as a crash loop.
fn outlive_crash_window() {
    std::thread::sleep(CRASH_WINDOW + Duration::from_millis(100));
}

#[test]
fn a_helper_killed_mid_transfer_gives_its_stderr_and_the_next_operation_works() {
    let root = tempdir();
    let local = tempdir();
    let src = write_file(&local.path().join("s.bin"), &Rng::new(3).bytes(1 << 20));
    let mut h = handle_with_fault("die@200000", Some("victim"));
    h.set_root(Some(root.path())).unwrap();
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = logs.clone();
    h.add_event_callback(EventMask::LOG, move |ev| {
        if let Event::Log { line } = ev {
            l.lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).into_owned());
        }
    });
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    outlive_crash_window();
    let e = h.upload(&src, "/victim.bin").unwrap_err();
    assert!(matches!(e, Error::HelperDied { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::ECONNRESET);
    let msg = e.to_string();
    assert!(msg.contains("signal 9"), "{msg}");
    assert!(msg.contains("test fault: dying"), "{msg}");
    assert!(logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("test fault: dying")));
    assert!(!alive(pid));
    assert_eq!(tree(root.path()), Vec::<String>::new(), "nothing partial");
    h.upload(&src, "/fine.bin").unwrap();
    assert_ne!(h.helper_pid(), Some(pid));
}

#[test]
fn an_external_sigkill_mid_transfer_is_reported_and_recovered_from() {
    let root = tempdir();
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    h.set_progress_interval(Duration::ZERO);
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    outlive_crash_window();
    let mut killed = false;
    let killer = move |ev: &Event<'_>| {
        if let Event::Progress { done, .. } = ev {
            if *done > (1 << 20) && !killed {
                killed = true;
                // SAFETY: signals our own child.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    };
    let id = h.add_event_callback(EventMask::PROGRESS, killer);
    let e = h.upload("/dev/zero", "/z.bin").unwrap_err();
    assert!(matches!(e, Error::HelperDied { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("pid {pid}")), "{e}");
    h.remove_event_callback(id);
    assert_eq!(tree(root.path()), Vec::<String>::new());
    h.stat("/").unwrap();
}

#[test]
fn helpers_that_die_at_once_back_off_and_a_healthy_run_resets() {
    let mut h = handle();
    h.set_helper(["/bin/sh", "-c", "echo going down >&2; exit 7"])
        .unwrap();
    let e = h.launch().unwrap_err();
    assert!(matches!(e, Error::HelperDied { .. }), "{e:?}");
    assert!(e.to_string().contains("going down"), "{e}");
    assert!(e.to_string().contains("status 7"), "{e}");

    let e = h.launch().unwrap_err();
    assert_eq!(e.errno(), libc::EAGAIN, "{e}");
    assert!(
        e.to_string().starts_with("helper restarting, retry in 1 s"),
        "{e}"
    );

    std::thread::sleep(Duration::from_millis(1050));
    let e = h.launch().unwrap_err();
    assert!(matches!(e, Error::HelperDied { .. }), "{e:?}");
    let e = h.launch().unwrap_err();
    assert!(
        e.to_string().starts_with("helper restarting, retry in 2 s"),
        "{e}"
    );

    // A helper that stays up for the crash window resets the back-off.
    h.set_helper([helper_path()]).unwrap();
    std::thread::sleep(Duration::from_millis(2050));
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    outlive_crash_window();
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    while alive(pid) {
        std::thread::sleep(Duration::from_millis(1));
    }
    h.stat("/").unwrap();
    assert_ne!(h.helper_pid(), Some(pid));
}

#[test]
fn graceful_shutdown_returns_ok_and_reports_one_shutdown_event() {
    let mut h = handle();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    h.add_event_callback(EventMask::LAUNCHED | EventMask::SHUTDOWN, move |ev| {
        s.lock().unwrap().push(format!("{ev:?}"));
    });
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    h.shutdown().unwrap();
    assert!(!alive(pid));
    assert_eq!(h.helper_pid(), None);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with("Launched"));
    assert_eq!(
        seen[1],
        format!(
            "{:?}",
            Event::Shutdown {
                pid,
                status: Some(ExitStatus::Exited(0)),
                graceful: true
            }
        )
    );
    // Nothing to stop twice.
    h.shutdown().unwrap();
}

#[test]
fn a_helper_that_ignores_shutdown_is_terminated_and_reaped() {
    let mut h = handle_with_fault("ignore-shutdown", None);
    h.set_shutdown_timeout(Duration::from_millis(200));
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    let e = h.shutdown().unwrap_err();
    assert!(matches!(e, Error::AbnormalShutdown { .. }), "{e:?}");
    assert!(e.to_string().contains("SIGTERM"), "{e}");
    assert!(!alive(pid));
    assert!(zombie_children().iter().all(|z| *z != pid as i32));
}

#[test]
fn a_helper_that_ignores_sigterm_too_is_killed() {
    let mut h = handle_with_fault("ignore-shutdown,ignore-sigterm", None);
    h.set_shutdown_timeout(Duration::from_millis(200));
    h.set_kill_timeout(Duration::from_millis(200));
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    let e = h.shutdown().unwrap_err();
    assert!(e.to_string().contains("SIGKILL"), "{e}");
    assert!(!alive(pid));
}

#[test]
fn dropping_a_handle_is_bounded_by_the_two_timeouts() {
    let mut h = handle_with_fault("ignore-shutdown,ignore-sigterm", None);
    h.set_shutdown_timeout(Duration::from_millis(200));
    h.set_kill_timeout(Duration::from_millis(200));
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    let start = Instant::now();
    drop(h);
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(400 + 500),
        "drop took {took:?}"
    );
    assert!(!alive(pid));
}

#[test]
fn kill_is_immediate() {
    let mut h = handle_with_fault("ignore-shutdown,ignore-sigterm", None);
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    let start = Instant::now();
    h.kill().unwrap();
    assert!(start.elapsed() < Duration::from_millis(500));
    assert!(!alive(pid));
    h.stat("/").unwrap();
}

#[test]
fn shutdown_callbacks_run_in_reverse_order_also_after_a_crash() {
    let mut h = handle();
    let order = Arc::new(Mutex::new(Vec::new()));
    for n in 0..3 {
        let o = order.clone();
        h.add_event_callback(EventMask::SHUTDOWN, move |_| o.lock().unwrap().push(n));
    }
    h.launch().unwrap();
    h.shutdown().unwrap();
    assert_eq!(*order.lock().unwrap(), vec![2, 1, 0]);

    order.lock().unwrap().clear();
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    outlive_crash_window();
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    while alive(pid) {
        std::thread::sleep(Duration::from_millis(1));
    }
    h.stat("/").unwrap();
    assert_eq!(*order.lock().unwrap(), vec![2, 1, 0]);
}

#[test]
fn progress_is_monotonic_and_ends_at_the_total() {
    let root = tempdir();
    let local = tempdir();
    let data = Rng::new(11).bytes(1 << 20);
    let src = write_file(&local.path().join("p.bin"), &data);
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    h.set_progress_interval(Duration::ZERO);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::Progress { done, total } = ev {
            s.lock().unwrap().push((*done, *total));
        }
    });
    for direction in ["up", "down"] {
        seen.lock().unwrap().clear();
        if direction == "up" {
            h.upload(&src, "/p.bin").unwrap();
        } else {
            h.download("/p.bin", local.path().join("back.bin")).unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        assert!(seen.len() > 10, "{direction}: {} events", seen.len());
        assert!(
            seen.windows(2).all(|w| w[0].0 <= w[1].0),
            "{direction}: not monotonic"
        );
        assert!(seen.iter().all(|(_, t)| *t == Some(data.len() as u64)));
        assert_eq!(seen.last().unwrap().0, data.len() as u64);
    }
    assert_eq!(std::fs::read(local.path().join("back.bin")).unwrap(), data);
}

#[test]
fn progress_is_rate_limited_by_default() {
    let local = tempdir();
    let root = tempdir();
    let src = write_file(&local.path().join("r.bin"), &vec![1u8; 8 << 20]);
    let mut h = handle();
    h.set_root(Some(root.path())).unwrap();
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = times.clone();
    h.add_event_callback(EventMask::PROGRESS, move |_| {
        t.lock().unwrap().push(Instant::now())
    });
    h.upload(&src, "/r.bin").unwrap();
    let times = times.lock().unwrap().clone();
    // All but the final event are at least 100 ms apart.
    let gaps: Vec<_> = times[..times.len() - 1]
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(100)),
        "{gaps:?}"
    );
}

#[test]
fn the_helper_exits_when_its_client_goes_away_even_when_stuck() {
    use barge::wire::{self, Frame};
    // Start the helper by hand, make it stall mid-upload, and hang up.
    let argv = fault_argv("stall@0", None);
    let mut argv = argv;
    argv.insert(1, "BARGE_HELPER_GRACE_MS=300".into());
    let s = barge::process::spawn(&argv, true).unwrap();
    let mut out = Vec::new();
    wire::encode_frame(
        &Frame::Hello {
            version_min: 1,
            version_max: 1,
            features: 0,
            root: b"",
        },
        0,
        &mut out,
    )
    .unwrap();
    let dir = tempdir();
    let target = dir.path().join("stuck.bin");
    let target = target.to_str().unwrap().as_bytes().to_vec();
    wire::encode_frame(
        &Frame::Put {
            mode: 0o644,
            size: 10,
            path: &target,
        },
        1,
        &mut out,
    )
    .unwrap();
    wire::encode_frame(&Frame::Data(b"0123456789"), 1, &mut out).unwrap();
    let fd = s.channel.as_raw_fd();
    // SAFETY: writes from a live buffer to our socket.
    let n = unsafe { libc::send(fd, out.as_ptr().cast(), out.len(), libc::MSG_NOSIGNAL) };
    assert_eq!(n as usize, out.len());
    // Wait until the helper says it is stuck in the stall.
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&said).contains("fault: stalling") {
        assert!(
            Instant::now() < deadline,
            "the helper never stalled: {said:?}"
        );
        let mut pfd = libc::pollfd {
            fd: s.stderr.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is a live pollfd for an fd we own.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        let mut buf = [0u8; 512];
        // SAFETY: reads into a live buffer from our non-blocking pipe.
        let r = unsafe { libc::read(s.stderr.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r > 0 {
            said.extend_from_slice(&buf[..r as usize]);
        }
    }
    let mut p = s.process;
    let pid = p.pid();
    drop(s.channel);
    let start = Instant::now();
    let outcome = p.wait_exit(Duration::from_secs(5), None);
    assert!(
        matches!(outcome, barge::process::WaitOutcome::Exited(_)),
        "the stuck helper outlived its client: {outcome:?}"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "exited before the grace period: {took:?}"
    );
    assert!(!alive(pid as u32));
    assert_eq!(tree(dir.path()), Vec::<String>::new());
}

/// The signal mask and ignored set of `pid`, from /proc.
fn blocked_and_ignored(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    (field("SigBlk:"), field("SigIgn:"))
}

#[test]
fn the_helper_starts_with_no_blocked_or_ignored_signals() {
    // A caller whose thread blocks SIGINT and SIGTERM and whose process
    // ignores SIGTERM: a helper that inherited either would sit out the
    // SIGTERM of a shutdown until the SIGKILL.
    let bit = |sig: i32| 1u64 << (sig - 1);
    // SAFETY: sets a disposition to SIG_IGN; no handler code runs.
    let old_term = unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    let (status, masks) = std::thread::spawn(move || {
        // SAFETY: an all-zero sigset_t is valid input for sigemptyset,
        // and every set is a live local.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let mut h = handle_with_fault("ignore-shutdown", None);
        h.set_shutdown_timeout(Duration::from_millis(100));
        let status = Arc::new(Mutex::new(None));
        let s = status.clone();
        h.add_event_callback(EventMask::SHUTDOWN, move |ev| {
            if let Event::Shutdown { status, .. } = ev {
                *s.lock().unwrap() = *status;
            }
        });
        h.launch().unwrap();
        let masks = blocked_and_ignored(h.helper_pid().unwrap());
        let _ = h.shutdown();
        let status = *status.lock().unwrap();
        (status, masks)
    })
    .join()
    .unwrap();
    // SAFETY: restores the disposition saved above.
    unsafe { libc::signal(libc::SIGTERM, old_term) };
    let (blocked, ignored) = masks;
    assert_eq!(blocked, 0, "the helper started with signals blocked");
    assert_eq!(
        ignored & (bit(libc::SIGTERM) | bit(libc::SIGINT)),
        0,
        "the helper started ignoring SIGTERM or SIGINT: {ignored:#x}"
    );
    assert_eq!(
        status,
        Some(ExitStatus::Signaled(libc::SIGTERM)),
        "SIGTERM did not stop the helper"
    );
}
