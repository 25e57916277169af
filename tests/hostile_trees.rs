//! A hostile helper answering `get -r` (TREE_OUT): entries outside the
//! requested tree, setuid modes, symlink tricks, TREE_FAIL floods and a
//! directory repeated without end. Each ends with a clear error within a
//! bounded time and a bounded peak RSS, under an address-space limit, and
//! nothing is written outside the destination.
//!
//! The RSS bound, [`RSS_BOUND_KIB`]: the `barge` CLI peaks at 14-16 MiB
//! in these runs (measured with wait4); a tree copy keeps one frame buffer
//! (64 KiB control, 4 MiB DATA at most), one writer and at most 1,000
//! failures of about 1 KiB each. 48 MiB leaves room for allocator slack
//! and is far below what the unbounded versions reached (357 MB for the
//! repeated TREE_DIR, 3.5 GB for the TREE_FAIL flood in the issue's runs).

mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::hostile::{hostile_handle, CliRun, Outcome, FEATURE_TREES};
use common::tempdir;

const RSS_BOUND_KIB: u64 = 48 << 10;

/// Frame builders `peer.py` lacks, put before each scenario.
const PRELUDE: &str = r#"
def tree_link(serial, path, target):
    return frame(TREE_LINK, serial, meta(S_IFLNK | 0o777) + pstr(path) + pstr(target))

def tree_file(serial, path, size, mode=S_IFREG | 0o644):
    return frame(TREE_FILE, serial, meta(mode) + struct.pack(">Q", size) + pstr(path))

def data(serial, b):
    return frame(DATA, serial, b)

def flood(f, seconds=60):
    """Send frame bytes `f` over and over, for at most `seconds`."""
    blob = f * max(1, (256 << 10) // len(f))
    t = time.time()
    while time.time() - t < seconds:
        send(blob)
"#;

fn scenario(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// `barge get -r /photos H` (plus `extra` flags) against `body`, run in
/// `dir`, with H = `dir/H`.
fn get_r(dir: &Path, body: &str, extra: &[&str]) -> Outcome {
    let script = scenario(body);
    let mut args = vec!["get", "-r"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["/photos", "H"]);
    let out = CliRun::new(dir, FEATURE_TREES, &script, &args).run();
    eprintln!(
        "barge {args:?}: code {:?}, peak RSS {} KiB, {:?}\nstderr: {}",
        out.code,
        out.peak_rss_kib,
        out.elapsed,
        tail(&out.stderr())
    );
    assert_eq!(out.signal, None, "barge died of a signal: {}", out.stderr());
    assert!(
        out.peak_rss_kib < RSS_BOUND_KIB,
        "peak RSS {} KiB",
        out.peak_rss_kib
    );
    out
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[track_caller]
fn assert_no_setid(dir: &Path) {
    for p in common::tree(dir) {
        let m = std::fs::symlink_metadata(dir.join(&p)).unwrap();
        if !m.file_type().is_symlink() {
            assert_eq!(m.mode() & 0o7000, 0, "{p} has mode {:o}", m.mode());
        }
    }
}

#[track_caller]
fn assert_failed_with(out: &Outcome, text: &str) {
    assert_ne!(out.code, Some(0), "barge succeeded: {}", out.stderr());
    assert!(out.stderr().contains(text), "stderr: {}", out.stderr());
}

/// The issue's run: `get -r /photos H` answered with `.ssh`,
/// `.ssh/authorized_keys` and a setuid `evil_sibling`, none of them under
/// `photos`.
#[test]
fn entries_outside_the_requested_tree_are_a_protocol_error() {
    let dir = tempdir();
    let h = dir.path().join("H");
    std::fs::create_dir_all(h.join(".ssh")).unwrap();
    std::fs::write(h.join(".ssh/authorized_keys"), b"GOOD\n").unwrap();
    let out = get_r(
        dir.path(),
        r#"
kind, serial, body = until(TREE_OUT)
send(tree_totals(serial, 2, 30),
     tree_dir(serial, ".ssh"),
     tree_file_whole(serial, ".ssh/authorized_keys", b"ssh-ed25519 EVIL\n"),
     tree_file_whole(serial, "evil_sibling", b"exec sh\n", mode=S_IFREG | 0o4755),
     tree_done(serial), ok(serial))
serve_shutdown()
"#,
        &[],
    );
    assert_failed_with(&out, "TREE_DIR .ssh lies outside the tree");
    assert_eq!(
        std::fs::read(h.join(".ssh/authorized_keys")).unwrap(),
        b"GOOD\n"
    );
    assert_eq!(common::tree(&h), [".ssh", ".ssh/authorized_keys"]);
    assert_no_setid(dir.path());
}

/// The top is right, then a sibling follows: what lies under `photos`
/// may be written, the sibling never is.
#[test]
fn a_sibling_after_the_top_is_a_protocol_error() {
    let dir = tempdir();
    let h = dir.path().join("H");
    std::fs::create_dir(&h).unwrap();
    let out = get_r(
        dir.path(),
        r#"
kind, serial, body = until(TREE_OUT)
send(tree_dir(serial, "photos"),
     tree_file_whole(serial, "photos/a.jpg", b"jpeg"),
     tree_file_whole(serial, "evil_sibling", b"exec sh\n", mode=S_IFREG | 0o4755),
     tree_dir(serial, "photos2"),
     tree_done(serial), ok(serial))
serve_shutdown()
"#,
        &[],
    );
    assert_failed_with(&out, "TREE_FILE_WHOLE evil_sibling lies outside the tree");
    assert!(out.stderr().contains("photos"), "{}", out.stderr());
    for p in common::tree(&h) {
        assert!(p == "photos" || p.starts_with("photos/"), "{p} written");
    }
    assert_no_setid(dir.path());
}

/// A file as the top has nothing beneath it; a first entry below the top,
/// or the top sent twice, are outside the tree too.
#[test]
fn a_file_top_has_no_entries_and_the_top_comes_once() {
    for (body, text) in [
        (
            r#"send(tree_file_whole(serial, "photos", b"x"), tree_file_whole(serial, "photos/y", b"y"))"#,
            "TREE_FILE_WHOLE photos/y lies outside the tree",
        ),
        (
            r#"send(tree_dir(serial, "photos/inner"))"#,
            "the first entry must be photos",
        ),
        (
            r#"send(tree_dir(serial, "photos"), tree_dir(serial, "photos"))"#,
            "TREE_DIR photos lies outside the tree",
        ),
    ] {
        let dir = tempdir();
        std::fs::create_dir(dir.path().join("H")).unwrap();
        let body = format!(
            "kind, serial, body = until(TREE_OUT)\n{body}\nsend(tree_done(serial), ok(serial))\nserve_shutdown()\n"
        );
        let out = get_r(dir.path(), &body, &[]);
        assert_failed_with(&out, text);
        assert!(!dir.path().join("H/photos/y").exists());
        assert!(!dir.path().join("H/photos/inner").exists());
    }
}

const SETID_TREE: &str = r#"
kind, serial, body = until(TREE_OUT)
send(tree_dir(serial, "photos", mode=S_IFDIR | 0o3775),
     tree_file_whole(serial, "photos/suid", b"exec sh\n", mode=S_IFREG | 0o4755),
     tree_file_whole(serial, "photos/sgid", b"exec sh\n", mode=S_IFREG | 0o2755),
     tree_file(serial, "photos/big-suid", 100000, mode=S_IFREG | 0o6755),
     data(serial, b"z" * 100000), end(serial, b"z" * 100000),
     tree_dir(serial, "photos/sticky", mode=S_IFDIR | 0o1777),
     tree_done(serial), ok(serial))
serve_shutdown()
"#;

/// Setuid, setgid and sticky bits from the helper are dropped, with or
/// without preserve, and kept only with --preserve-setid.
#[test]
fn setid_bits_are_kept_only_when_asked() {
    for flags in [&[][..], &["--no-preserve"]] {
        let dir = tempdir();
        std::fs::create_dir(dir.path().join("H")).unwrap();
        let out = get_r(dir.path(), SETID_TREE, flags);
        assert_eq!(out.code, Some(0), "{}", out.stderr());
        let h = dir.path().join("H");
        assert_eq!(common::tree(&h).len(), 5);
        assert_no_setid(&h);
    }
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("H")).unwrap();
    let out = get_r(dir.path(), SETID_TREE, &["--preserve-setid"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr());
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join("H").join(p))
            .unwrap()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("photos/suid"), 0o4755);
    assert_eq!(mode("photos/sgid"), 0o2755);
    assert_eq!(mode("photos/big-suid"), 0o6755);
    assert_eq!(mode("photos/sticky"), 0o1777);
    assert_eq!(mode("photos"), 0o3775);
}

/// No entry is written through a symlink: one the stream made, one that
/// was in the destination, or one standing where a directory is sent.
/// Keep-going, so that every trick is tried in one run.
#[test]
fn nothing_is_written_through_a_symlink() {
    let dir = tempdir();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("target"), b"untouched").unwrap();
    let h = dir.path().join("H");
    std::fs::create_dir_all(h.join("photos")).unwrap();
    symlink(&outside, h.join("photos/y")).unwrap();
    symlink(outside.join("target"), h.join("photos/z")).unwrap();
    let o = outside.to_str().unwrap();
    let body = format!(
        r#"
kind, serial, body = until(TREE_OUT)
send(tree_dir(serial, "photos"),
     tree_link(serial, "photos/x", "{o}"),
     tree_file_whole(serial, "photos/x/passwd", b"root::0:0::/:/bin/sh\n"),
     tree_file(serial, "photos/x/big", 70000), data(serial, b"b" * 70000), end(serial, b"b" * 70000),
     tree_dir(serial, "photos/x/sub"),
     tree_link(serial, "photos/x/l", "/"),
     tree_file_whole(serial, "photos/y/f", b"through an old link"),
     tree_dir(serial, "photos/y"),
     tree_dir(serial, "photos/y/sub"),
     tree_file_whole(serial, "photos/z", b"replaces the link, not its target"),
     tree_done(serial), ok(serial))
serve_shutdown()
"#
    );
    let out = get_r(dir.path(), &body, &["--keep-going"]);
    assert_failed_with(&out, "photos/x/passwd");
    assert_eq!(common::tree(&outside), ["target"]);
    assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"untouched");
    // The links are still links; z became the file the helper sent.
    assert!(std::fs::symlink_metadata(h.join("photos/x"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::symlink_metadata(h.join("photos/y"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(h.join("photos/z")).unwrap(),
        b"replaces the link, not its target"
    );
}

/// The destination's top is itself a symlink out: TREE_DIR on it fails,
/// and nothing goes through it.
#[test]
fn a_top_that_is_a_symlink_is_not_followed() {
    let dir = tempdir();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let h = dir.path().join("H");
    std::fs::create_dir(&h).unwrap();
    symlink(&outside, h.join("photos")).unwrap();
    let out = get_r(
        dir.path(),
        r#"
kind, serial, body = until(TREE_OUT)
send(tree_dir(serial, "photos"),
     tree_file_whole(serial, "photos/f", b"f"),
     tree_dir(serial, "photos/d"),
     tree_done(serial), ok(serial))
serve_shutdown()
"#,
        &["--keep-going"],
    );
    assert_failed_with(&out, "photos");
    assert!(
        common::tree(&outside).is_empty(),
        "{:?}",
        common::tree(&outside)
    );
}

/// Without keep-going the helper never sends TREE_FAIL: an endless flood
/// of them is a protocol error at the first.
#[test]
fn a_tree_fail_without_keep_going_is_a_protocol_error() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("H")).unwrap();
    let out = get_r(
        dir.path(),
        r#"
kind, serial, body = until(TREE_OUT)
send(tree_dir(serial, "photos"))
flood(tree_fail(serial, "photos/x", 5, "failed"))
"#,
        &[],
    );
    assert_failed_with(
        &out,
        "TREE_FAIL photos/x during TREE_OUT without KEEP_GOING",
    );
    assert!(out.elapsed < Duration::from_secs(15), "{:?}", out.elapsed);
}

/// With keep-going, a flood of 300,000 TREE_FAIL frames is counted: the
/// first 1,000 are listed, the rest reported as a number.
#[test]
fn tree_fails_with_keep_going_are_counted_and_the_first_thousand_kept() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("H")).unwrap();
    let out = get_r(
        dir.path(),
        r#"
kind, serial, body = until(TREE_OUT)
f = tree_fail(serial, "photos/x", 5, "read photos/x: " + "x" * 2000)
send(tree_dir(serial, "photos"))
for _ in range(300):
    send(f * 1000)
send(tree_done(serial), ok(serial))
serve_shutdown()
"#,
        &["--keep-going"],
    );
    assert_failed_with(&out, "299000 more entries of H failed");
    // The CLI prints one line per failure kept, each message cut to 1 KiB,
    // and the first again in the final error.
    let listed = out.stderr().matches("read photos/x: ").count();
    assert_eq!(listed, 1001);
    assert!(
        out.stderr().len() < 1100 * 1024,
        "{} bytes",
        out.stderr().len()
    );
}

/// An endless TREE_FAIL flood with keep-going: ^C still ends it.
#[test]
fn a_tree_fail_flood_with_keep_going_still_cancels() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("H")).unwrap();
    let script = scenario(
        r#"
kind, serial, body = until(TREE_OUT)
send(tree_dir(serial, "photos"))
flood(tree_fail(serial, "photos/x", 5, "failed"))
"#,
    );
    let mut run = CliRun::new(
        dir.path(),
        FEATURE_TREES,
        &script,
        &["get", "-r", "--keep-going", "/photos", "H"],
    );
    run.sigint_after = Some(Duration::from_secs(2));
    let out = run.run();
    eprintln!(
        "code {:?}, peak RSS {} KiB, {:?}",
        out.code, out.peak_rss_kib, out.elapsed
    );
    assert_ne!(out.code, Some(0));
    assert_eq!(out.signal, None);
    assert!(out.peak_rss_kib < RSS_BOUND_KIB, "{}", out.peak_rss_kib);
    // 2 s, then the 2 s cancel timeout and the helper's kill.
    assert!(out.elapsed < Duration::from_secs(15), "{:?}", out.elapsed);
}

/// The same TREE_DIR without end: the second is a protocol error.
#[test]
fn a_repeated_tree_dir_is_a_protocol_error() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("H")).unwrap();
    let out = get_r(
        dir.path(),
        r#"
kind, serial, body = until(TREE_OUT)
send(tree_dir(serial, "photos"))
flood(tree_dir(serial, "photos/a"))
"#,
        &[],
    );
    assert_failed_with(&out, "TREE_DIR photos/a sent again");
    assert!(out.elapsed < Duration::from_secs(15), "{:?}", out.elapsed);
    assert_eq!(common::tree(&dir.path().join("H")), ["photos", "photos/a"]);
}

/// Distinct directories, far more than the bound: past it, E2BIG naming
/// the bound and the directory, and the stream is stopped (the helper,
/// which never ends its stream, is cut off at the cancel timeout).
#[test]
fn directories_past_the_bound_end_the_tree_with_e2big() {
    let dir = tempdir();
    let dest = dir.path().join("H");
    std::fs::create_dir(&dest).unwrap();
    let script = scenario(
        r#"
kind, serial, body = until(TREE_OUT)
send(tree_dir(serial, "photos"))
# 20,000 (ten times the bound below), then silence: enough to pass the
# bound, few enough that a run without it ends and cleans up.
for i in range(0, 20000, 1000):
    send(b"".join(tree_dir(serial, "photos/d%d" % (i + j)) for j in range(1000)))
until(SHUTDOWN)
"#,
    );
    let mut h = hostile_handle(dir.path(), FEATURE_TREES, &script);
    h.set_max_tree_dirs(2000);
    let to = dest.clone();
    // Without a bound this would make directories until the disk is full:
    // fail the test first.
    let h = common::within(Duration::from_secs(15), "copy_out", move || {
        let e = h.copy_out("/photos", &to).unwrap_err();
        (e.errno(), e.to_string(), h)
    });
    let (errno, text, _h) = h;
    assert_eq!(errno, libc::E2BIG, "{text}");
    assert!(text.contains("more than 2000 directories"), "{text}");
    assert!(text.contains("photos/d1999"), "{text}");
    let made = std::fs::read_dir(dest.join("photos")).unwrap().count();
    assert_eq!(made, 1999);
    // Created directories were given their mode at the end all the same.
    let m = std::fs::metadata(dest.join("photos/d0")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
}

/// A FIFO, or a socket, where the tree puts a file: that entry fails, the
/// node stays, the rest is copied.
#[test]
fn special_files_at_a_file_entry_are_never_replaced() {
    let dir = tempdir();
    let h = dir.path().join("H");
    std::fs::create_dir_all(h.join("photos")).unwrap();
    let fifo =
        std::ffi::CString::new(h.join("photos/fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: fifo is NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(h.join("photos/sock")).unwrap();
    let out = get_r(
        dir.path(),
        r#"
kind, serial, body = until(TREE_OUT)
send(tree_dir(serial, "photos"),
     tree_file_whole(serial, "photos/fifo", b"into the fifo?"),
     tree_file(serial, "photos/sock", 50000), data(serial, b"s" * 50000), end(serial, b"s" * 50000),
     tree_link(serial, "photos/fifo", "elsewhere"),
     tree_file_whole(serial, "photos/ok", b"fine"),
     tree_done(serial), ok(serial))
serve_shutdown()
"#,
        &["--keep-going"],
    );
    assert_failed_with(
        &out,
        "a FIFO is there, and a tree copy never replaces a special file",
    );
    assert!(
        out.stderr().contains("a socket is there"),
        "{}",
        out.stderr()
    );
    use std::os::unix::fs::FileTypeExt;
    let ft = |p: &str| std::fs::symlink_metadata(h.join(p)).unwrap().file_type();
    assert!(ft("photos/fifo").is_fifo());
    assert!(ft("photos/sock").is_socket());
    assert_eq!(std::fs::read(h.join("photos/ok")).unwrap(), b"fine");
}

/// A chain of 4,000 nested directories: the deferred mode and mtime pass
/// once reopened every directory's path from the base (quadratic: 35 s at
/// this depth in a debug build, and deaf to ^C). It now reaches each
/// directory from its parent's fd, well inside the run's 20 s bound.
#[test]
fn a_deep_chain_of_directories_finishes_in_linear_time() {
    let dir = tempdir();
    let script = scenario(
        r#"kind, serial, _ = until(TREE_OUT)
path = "photos"
frames = [tree_dir(serial, path)]
for i in range(4000):
    path += "/a"
    frames.append(tree_dir(serial, path))
send(*frames)
send(tree_done(serial), ok(serial))
serve_shutdown()
"#,
    );
    std::fs::create_dir(dir.path().join("H")).unwrap();
    let mut run = CliRun::new(
        dir.path(),
        FEATURE_TREES,
        &script,
        &["get", "-r", "/photos", "H"],
    );
    run.limit = Duration::from_secs(20);
    let out = run.run();
    assert_eq!(out.code, Some(0), "{}", tail(&out.stderr()));
    assert!(dir.path().join("H/photos/a/a").is_dir());
    eprintln!("4000-deep tree: {:?}", out.elapsed);
}
