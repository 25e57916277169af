//! A helper that answers with what a compromised server might send: STOP
//! floods, endless listings, error numbers that are none, escape sequences
//! and names that leave the directory. Each gives a clear error within a
//! bounded time, with bounded memory, and nothing raw reaches the terminal.
//!
//! The helper is `tests/hostile/peer.py` running a scenario (see
//! `tests/common/hostile.rs`).

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use barge::{Error, Handle};
use common::hostile::{has_raw_control, hostile_handle, CliRun, Outcome};

/// A library call that has not returned by then has hung.
const HANG: Duration = Duration::from_secs(20);

/// Run `f` on its own thread and fail the test if it does not return
/// within [`HANG`] (a hung call is left behind; the test fails anyway).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(HANG) {
        Ok(v) => (v, start.elapsed()),
        Err(_) => panic!("the call did not return within {HANG:?} (a hang)"),
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Answer the first `request` with an endless run of STOP frames for its
/// serial, after `before` (Python expressions of frames, may be empty).
fn stop_flood(request: &str, before: &str) -> String {
    format!(
        "kind, serial, _ = until({request})\n\
         for f in [{before}]:\n    send(f)\n\
         burst = frame(STOP, serial) * 4096\n\
         while True:\n    send(burst)\n"
    )
}

/// Answer the first LIST with the same DIRENTS frame of 1000 entries
/// (52 kB), forever, ignoring STOP.
const ENDLESS_DIRENTS: &str = "\
kind, serial, _ = until(LIST)
one = dirents(serial, [('e%07d' % i, stat_record()) for i in range(1000)])
burst = one * 16
while True:
    send(burst)
";

/// `s` as a Python bytes literal.
fn py(s: &str) -> String {
    let hex: String = s.bytes().map(|b| format!("\\x{b:02x}")).collect();
    format!("b'{hex}'")
}

fn assert_eproto(e: &Error, what: &str) {
    assert_eq!(e.errno(), libc::EPROTO, "{e:?}");
    assert!(e.to_string().contains(what), "{e}");
}

// ---- STOP floods and cancel ----

#[test]
fn a_stop_for_stat_is_a_protocol_error_not_a_spin() {
    let dir = tmp();
    let mut h = hostile_handle(dir.path(), 0, &stop_flood("STAT", ""));
    let (r, took) = bounded(move || h.stat("/x"));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    assert_eproto(&e, "STOP for STAT");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_stop_for_list_is_a_protocol_error_not_a_spin() {
    let dir = tmp();
    let mut h = hostile_handle(dir.path(), 0, &stop_flood("LIST", ""));
    let (r, _) = bounded(move || h.list("/d"));
    assert_eproto(&r.unwrap_err(), "STOP for LIST");
}

#[test]
fn a_stop_for_get_before_its_stream_is_a_protocol_error() {
    let dir = tmp();
    let mut h = hostile_handle(dir.path(), 0, &stop_flood("GET", ""));
    let out = dir.path().join("out");
    let (r, _) = bounded(move || h.download("/f", out));
    assert_eproto(&r.unwrap_err(), "STOP for GET");
    assert!(!dir.path().join("out").exists());
}

/// Cancel the handle's running call after `after`, from another thread.
fn cancel_after(h: &Handle, after: Duration) {
    let c = h.canceller();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        c.cancel();
    });
}

#[test]
fn a_cancel_ends_a_get_that_a_stop_flood_holds() {
    let dir = tmp();
    let scenario = stop_flood("GET", "source_info(serial, 1 << 20)");
    let mut h = hostile_handle(dir.path(), 0, &scenario);
    h.launch().unwrap();
    let pid = h.helper_pid().unwrap();
    cancel_after(&h, Duration::from_millis(300));
    let out = dir.path().join("out");
    let (r, took) = bounded(move || {
        let r = h.download("/f", out);
        (r, h)
    });
    let (r, h) = r;
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    // 300 ms, then the cancel timeout (500 ms), then the kill.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // It never answered the STOP: killed, not trusted again.
    assert_ne!(h.helper_pid(), Some(pid));
    assert!(!dir.path().join("out").exists());
}

#[test]
fn a_cancel_ends_a_listing_that_never_pauses() {
    let dir = tmp();
    let mut h = hostile_handle(dir.path(), 0, ENDLESS_DIRENTS);
    h.launch().unwrap();
    // 100 ms of listing is far below the default million entries.
    cancel_after(&h, Duration::from_millis(100));
    let (r, took) = bounded(move || h.list("/d"));
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn sigint_ends_a_cli_get_that_a_stop_flood_holds() {
    let dir = tmp();
    let scenario = stop_flood("GET", "source_info(serial, 1 << 20)");
    let mut run = CliRun::new(dir.path(), 0, &scenario, &["get", "/f", "out"]);
    run.sigint_after = Some(Duration::from_millis(500));
    run.limit = Duration::from_secs(15);
    let o = run.run();
    assert_eq!(o.code, Some(130), "{o:?}\n{}", o.stderr());
    // 0.5 s, the CLI's cancel timeout (2 s), the kill: well under 6 s.
    assert!(o.elapsed < Duration::from_secs(6), "took {:?}", o.elapsed);
    assert!(!dir.path().join("out").exists());
}

#[test]
fn cli_stat_and_ls_against_a_stop_flood_fail_at_once() {
    for (op, request) in [("stat", "STAT"), ("ls", "LIST")] {
        let dir = tmp();
        let scenario = stop_flood(request, "");
        let args = [op, "/x"];
        let mut run = CliRun::new(dir.path(), 0, &scenario, &args);
        run.limit = Duration::from_secs(15);
        let o = run.run();
        assert_eq!(o.code, Some(1), "{op}: {o:?}");
        assert!(o.stderr().contains("STOP"), "{op}: {}", o.stderr());
        assert!(
            o.stderr().contains("Protocol error"),
            "{op}: {}",
            o.stderr()
        );
    }
}

// ---- bounded listings ----

#[test]
fn an_endless_listing_stops_at_the_default_bound_with_bounded_memory() {
    let dir = tmp();
    let mut run = CliRun::new(dir.path(), 0, ENDLESS_DIRENTS, &["ls", "/d"]);
    // No abort under `ulimit -v` 1 GiB: the bound comes first.
    run.address_space = Some(1 << 30);
    run.limit = Duration::from_secs(60);
    let o = run.run();
    assert_eq!(o.code, Some(1), "{o:?}\n{}", o.stderr());
    let err = o.stderr();
    assert!(err.contains("more than 1000000 entries"), "{err}");
    assert!(err.contains("/d"), "{err}");
    assert!(err.contains("Argument list too long"), "{err}"); // E2BIG
    assert!(o.stdout.is_empty());
    // A million entries cost 64 bytes each (name, stat) plus the smallest
    // heap block (32 bytes) for the name: 96 MB, and the vector's spare
    // room while it doubles. 256 MiB leaves room for the binary and
    // allocator slack (measured: 97 MiB); without the bound, it grew past
    // 3 GB in 15 s.
    eprintln!("peak RSS {} MiB in {:?}", o.peak_rss_kib >> 10, o.elapsed);
    assert!(
        o.peak_rss_kib < 256 << 10,
        "peak RSS {} KiB",
        o.peak_rss_kib
    );
    // The bound, then the cancel timeout (2 s) for the ignored STOP.
    assert!(o.elapsed < Duration::from_secs(30), "took {:?}", o.elapsed);
}

#[test]
fn the_library_honours_smaller_list_limits() {
    let dir = tmp();
    let mut h = hostile_handle(dir.path(), 0, ENDLESS_DIRENTS);
    h.set_list_limits(10, 1 << 20);
    let (r, took) = bounded(move || h.list("/big"));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Limit { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::E2BIG);
    assert!(e.to_string().contains("/big"), "{e}");
    assert!(e.to_string().contains("more than 10 entries"), "{e}");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    let mut h = hostile_handle(dir.path(), 0, ENDLESS_DIRENTS);
    h.set_list_limits(1 << 20, 4000);
    let (r, _) = bounded(move || h.list("/big"));
    let e = r.unwrap_err();
    assert_eq!(e.errno(), libc::E2BIG);
    assert!(
        e.to_string().contains("more than 4000 bytes of names"),
        "{e}"
    );
}

#[test]
fn a_helper_that_honours_the_stop_after_a_limit_stays_in_use() {
    // It answers STOP as the real helper does: ERROR ECANCELED.
    let scenario = "\
import select
kind, serial, _ = until(LIST)
one = dirents(serial, [('e%07d' % i, stat_record()) for i in range(1000)])
while True:
    send(one)
    if select.select([0], [], [], 0)[0]:
        f = read_frame()
        if f is None:
            sys.exit(0)
        if f[0] == STOP and f[1] == serial:
            send(error(serial, 125, 'listing cancelled'))
            break
serve_shutdown()
";
    let dir = tmp();
    let mut h = hostile_handle(dir.path(), 0, scenario);
    h.set_list_limits(100, 1 << 20);
    h.launch().unwrap();
    let pid = h.helper_pid();
    let (r, h) = bounded(move || {
        let r = h.list("/d");
        (r, h)
    })
    .0;
    assert_eq!(r.unwrap_err().errno(), libc::E2BIG);
    let mut h = h;
    assert_eq!(h.helper_pid(), pid, "the helper was replaced");
    // The same helper answers the next request.
    let e = h.stat("/x").unwrap_err();
    assert_eq!(e.errno(), libc::EOPNOTSUPP, "{e:?}");
}

// ---- the peer's words ----

fn error_reply(errno: i32, message: &str) -> String {
    format!(
        "kind, serial, _ = until(STAT, LIST)\n\
         send(error(serial, {errno}, {message}))\n\
         serve_shutdown()\n",
        message = py(message)
    )
}

#[test]
fn an_errno_that_is_no_error_number_is_eproto() {
    for errno in [0, -5, 100_000, i32::MIN] {
        let dir = tmp();
        let mut h = hostile_handle(dir.path(), 0, &error_reply(errno, "it went fine"));
        let e = h.stat("/x").unwrap_err();
        assert!(
            matches!(e, Error::Remote { errno, .. } if errno == libc::EPROTO),
            "{errno}: {e:?}"
        );
        assert_eq!(e.errno(), libc::EPROTO);
        assert!(e.to_string().contains(&format!("errno {errno}")), "{e}");

        let scenario = error_reply(errno, "it went fine");
        let o = CliRun::new(dir.path(), 0, &scenario, &["stat", "/x"]).run();
        assert_eq!(o.code, Some(1), "{o:?}");
        let err = o.stderr();
        assert!(!err.contains("Success"), "{errno}: {err}");
        assert!(!err.contains("Unknown error"), "{errno}: {err}");
        assert!(err.contains("Protocol error"), "{errno}: {err}");
    }
}

fn assert_escaped(o: &Outcome, shown: &str) {
    assert!(!has_raw_control(&o.stdout), "stdout: {:?}", o.stdout());
    assert!(!has_raw_control(&o.stderr), "stderr: {:?}", o.stderr());
    let all = o.stdout() + &o.stderr();
    assert!(all.contains(shown), "{shown} not in {all:?}");
}

const NASTY: &str = "\x1b]0;owned\x07\x1b[2J\rfake\x7f";
const NASTY_SHOWN: &str = "\\e]0;owned\\a\\e[2J\\rfake\\177";

#[test]
fn escape_sequences_in_an_error_message_are_escaped() {
    let dir = tmp();
    let scenario = error_reply(libc::ENOENT, NASTY);
    let o = CliRun::new(dir.path(), 0, &scenario, &["stat", "/x"]).run();
    assert_eq!(o.code, Some(1), "{o:?}");
    // Error lines fold CR and LF into spaces; the rest is escaped.
    assert_escaped(&o, "\\e]0;owned\\a\\e[2J fake\\177");
}

#[test]
fn escape_sequences_in_the_helpers_stderr_are_escaped() {
    let dir = tmp();
    // A LOG line (printed with -v), and the same line in the error of a
    // helper that dies, which quotes its last stderr.
    let scenario = format!(
        "kind, serial, _ = until(STAT)\n\
         sys.stderr.buffer.write({nasty} + b'\\n')\n\
         sys.stderr.flush()\n\
         sys.exit(3)\n",
        nasty = py(NASTY)
    );
    let o = CliRun::new(dir.path(), 0, &scenario, &["-v", "stat", "/x"]).run();
    assert_eq!(o.code, Some(1), "{o:?}");
    assert_escaped(&o, &format!("helper: {NASTY_SHOWN}"));
    assert!(o.stderr().contains("its last stderr"), "{}", o.stderr());
}

#[test]
fn escape_sequences_in_listed_names_are_escaped() {
    let dir = tmp();
    let scenario = format!(
        "kind, serial, _ = until(LIST)\n\
         send(dirents(serial, [({nasty}, stat_record()), (b'bad\\xff', stat_record())]))\n\
         send(ok(serial))\n\
         serve_shutdown()\n",
        nasty = py(NASTY)
    );
    let o = CliRun::new(dir.path(), 0, &scenario, &["ls", "/d"]).run();
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_escaped(&o, NASTY_SHOWN);
    assert!(o.stdout().contains("bad\\xff"), "{}", o.stdout());
}

#[test]
fn listed_names_that_leave_the_directory_are_protocol_errors() {
    for name in ["a/../../etc/passwd", "..", ".", "", "/etc"] {
        let scenario = format!(
            "kind, serial, _ = until(LIST)\n\
             send(dirents(serial, [('fine', stat_record()), ({name}, stat_record())]))\n\
             send(ok(serial))\n\
             serve_shutdown()\n",
            name = py(name)
        );
        let dir = tmp();
        let mut h = hostile_handle(dir.path(), 0, &scenario);
        let e = h.list("/d").unwrap_err();
        assert!(matches!(e, Error::Protocol { .. }), "{name:?}: {e:?}");
        assert_eproto(&e, "DIRENTS");

        let o = CliRun::new(dir.path(), 0, &scenario, &["ls", "/d"]).run();
        assert_eq!(o.code, Some(1), "{name:?}: {o:?}");
        assert!(o.stdout.is_empty(), "{name:?}: {}", o.stdout());
        assert!(o.stderr().contains("Protocol error"), "{}", o.stderr());
    }
}

#[test]
fn an_endless_run_of_empty_listings_is_a_protocol_error() {
    // Empty DIRENTS frames pass every bound on entries and bytes, and
    // would keep `ls` busy forever at no cost to the helper.
    let scenario = "\
kind, serial, _ = until(LIST)
burst = dirents(serial, []) * 4096
while True:
    send(burst)
";
    let dir = tmp();
    let mut h = hostile_handle(dir.path(), 0, scenario);
    let (r, _) = bounded(move || h.list("/d"));
    assert_eproto(&r.unwrap_err(), "empty DIRENTS");
}

#[test]
fn a_stop_for_a_fast_path_get_before_it_started_is_a_protocol_error() {
    // The peer is the handle's own child, so with the fast path offered
    // and granted (feature 0x1) the download goes as GET_FD (0x41).
    let dir = tmp();
    let mut h = hostile_handle(dir.path(), 0x1, &stop_flood("0x41", ""));
    h.set_fast_path(true);
    h.launch().unwrap();
    assert!(h.uses_fast_path());
    let out = dir.path().join("out");
    let (r, _) = bounded(move || h.download("/f", out));
    assert_eproto(&r.unwrap_err(), "STOP for fast-path");
}

// ---- numbers from the peer ----

/// TREE_FAIL carries an errno too: one that is no error number reaches
/// neither `Error::Incomplete` nor `barge_get_tree_errors` as it came.
#[test]
fn a_tree_fail_errno_that_is_no_error_number_is_eproto() {
    let dir = tmp();
    let scenario = "\
kind, serial, _ = until(TREE_OUT)
send(tree_dir(serial, 'photos'))
for i, errno in enumerate([0, -5, 100000]):
    send(tree_fail(serial, 'photos/f%d' % i, errno, 'all is well'))
send(tree_done(serial), ok(serial))
serve_shutdown()
";
    let mut h = hostile_handle(dir.path(), common::hostile::FEATURE_TREES, scenario);
    h.set_keep_going(true);
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let (r, _) = bounded(move || h.copy_out("/photos", &dest));
    let Err(Error::Incomplete { errors, .. }) = r else {
        panic!("expected Incomplete, got {r:?}");
    };
    assert_eq!(errors.len(), 3, "{errors:?}");
    for e in &errors {
        assert_eq!(e.errno, libc::EPROTO, "{e:?}");
        assert!(e.message.contains("not an error number"), "{e:?}");
    }
}

/// An mtime far in the future (a year just past `i32::MAX`) is printed, not
/// a panic of the CLI (overflow checks are on in the debug build the
/// tests run).
#[test]
fn ls_l_and_stat_print_an_mtime_far_in_the_future() {
    let dir = tmp();
    let record = "stat_record(mtime=67768006196851380)";
    let scenario = format!(
        "while True:\n\
         \x20   f = read_frame()\n\
         \x20   if f is None: break\n\
         \x20   kind, serial, _ = f\n\
         \x20   if kind == LIST: send(dirents(serial, [('far', {record})]), ok(serial))\n\
         \x20   elif kind == STAT: send(frame(STAT_INFO, serial, {record}))\n\
         \x20   elif kind == SHUTDOWN:\n\
         \x20       send(ok(serial))\n\
         \x20       break\n"
    );
    for args in [&["ls", "-l", "/d"][..], &["stat", "/d/far"][..]] {
        let o = CliRun::new(dir.path(), 0, &scenario, args).run();
        assert_eq!(o.code, Some(0), "barge {args:?}: {o:?} {}", o.stderr());
        assert!(
            o.stdout().contains("far") || args[0] == "stat",
            "{}",
            o.stdout()
        );
    }
}

// ---- trees ----

/// A TREE_OUT has no stream from the client, so the helper has nothing to
/// STOP; and a helper that CANCELs its stream cannot then call the copy a
/// success.
#[test]
fn tree_out_refuses_a_stop_and_an_ok_after_the_helpers_cancel() {
    for (what, answer) in [
        ("STOP", "send(frame(STOP, serial))"),
        ("OK", "send(frame(CANCEL, serial), ok(serial))"),
    ] {
        let dir = tmp();
        let scenario = format!(
            "kind, serial, _ = until(TREE_OUT)\n\
             send(tree_dir(serial, 'photos'))\n\
             {answer}\n\
             serve_shutdown()\n"
        );
        let mut h = hostile_handle(dir.path(), common::hostile::FEATURE_TREES, &scenario);
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let (r, _) = bounded(move || h.copy_out("/photos", &dest));
        let e = r.expect_err(what);
        assert_eproto(&e, "TREE_OUT");
    }
}
