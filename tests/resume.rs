//! Resumable transfers (`keep_partial`) against the real helper.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use barge::partial::{is_partial_name, partial_name};
use barge::{Error, Event, EventMask, Handle};
use common::*;

/// The last PROGRESS event's (done, total).
type LastProgress = Arc<Mutex<Option<(u64, Option<u64>)>>>;

/// A handle that cancels once PROGRESS reports `target` bytes, and records
/// the last PROGRESS event and the LOG lines.
struct Rig {
    h: Handle,
    target: Arc<AtomicU64>,
    last: LastProgress,
    logs: Arc<Mutex<Vec<String>>>,
}

fn rig(root: &Path) -> Rig {
    let mut h = handle();
    h.set_root(Some(root)).unwrap();
    h.set_keep_partial(true);
    h.set_progress_interval(Duration::ZERO);
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let last = Arc::new(Mutex::new(None));
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (t, l, c) = (target.clone(), last.clone(), h.canceller());
    h.add_event_callback(EventMask::PROGRESS, move |ev| {
        if let Event::Progress { done, total } = *ev {
            *l.lock().unwrap() = Some((done, total));
            if done >= t.load(Ordering::SeqCst) {
                c.cancel();
            }
        }
    });
    let lg = logs.clone();
    h.add_event_callback(EventMask::LOG, move |ev| {
        if let Event::Log { line } = ev {
            lg.lock()
                .unwrap()
                .push(String::from_utf8_lossy(line).into_owned());
        }
    });
    Rig {
        h,
        target,
        last,
        logs,
    }
}

fn partial_of(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(std::ffi::OsStr::new(
        std::str::from_utf8(&partial_name(name.as_bytes())).unwrap(),
    ))
}

/// Wait (with a deadline) for a LOG line containing `needle`; the helper's
/// stderr may trail its reply.
fn wait_log(r: &mut Rig, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !r.logs.lock().unwrap().iter().any(|l| l.contains(needle)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {needle:?}: {:?}",
            r.logs.lock().unwrap()
        );
        r.h.stat("/").unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Cancel an upload and a download at random offsets, then resume each:
/// the result is byte-identical, the partial data sat only under the
/// hidden name, and the resumed call moved about the remainder.
#[test]
fn cancel_at_a_random_offset_then_resume_in_both_directions() {
    let root = tempdir();
    let local = tempdir();
    let mut rng = Rng::new(0x5e5u64);
    let mut r = rig(root.path());
    for round in 0..6 {
        let size = (1 << 20) + rng.below(1 << 20) as usize;
        let data = rng.bytes(size);
        let at = 64 * 1024 + rng.below(size as u64 - 128 * 1024);
        let upload = round % 2 == 0;
        let (dest_dir, name) = if upload {
            (root.path().to_path_buf(), format!("up{round}.bin"))
        } else {
            (local.path().to_path_buf(), format!("down{round}.bin"))
        };
        let src = if upload {
            write_file(&local.path().join(format!("src{round}")), &data)
        } else {
            write_file(&root.path().join(format!("src{round}")), &data)
        };
        let go = |r: &mut Rig| {
            if upload {
                r.h.upload(&src, format!("/{name}"))
            } else {
                r.h.download(format!("/src{round}"), dest_dir.join(&name))
            }
        };
        r.target.store(at, Ordering::SeqCst);
        match go(&mut r) {
            Err(Error::Cancelled) => {}
            other => panic!("round {round}: expected Cancelled, got {other:?}"),
        }
        r.target.store(u64::MAX, Ordering::SeqCst);
        assert!(
            !dest_dir.join(&name).exists(),
            "partial data under the final name"
        );
        let partial = partial_of(&dest_dir, &name);
        let kept = std::fs::read(&partial).expect("partial data kept");
        assert!(
            kept.len() as u64 >= at.min(size as u64) - (16 << 10),
            "kept {} of {at}",
            kept.len()
        );
        assert_eq!(&data[..kept.len()], &kept[..], "partial data is a prefix");

        *r.last.lock().unwrap() = None;
        go(&mut r).unwrap_or_else(|e| panic!("round {round}: resume: {e}"));
        assert_eq!(std::fs::read(dest_dir.join(&name)).unwrap(), data);
        assert!(!partial.exists(), "partial file left after success");
        let (done, total) = r.last.lock().unwrap().expect("progress events");
        let remainder = (size - kept.len()) as u64;
        assert_eq!(done, remainder, "round {round}: bytes moved on resume");
        assert_eq!(total, Some(remainder));
        assert!(done < size as u64, "round {round}: started over");
        wait_log(
            &mut r,
            &format!(
                "resuming {} of /{} at byte {}",
                if upload { "upload" } else { "download" },
                if upload {
                    name.clone()
                } else {
                    format!("src{round}")
                },
                kept.len()
            ),
        );
    }
}

/// Partial data that does not match the source (bytes flipped) is
/// detected by the checksum and the transfer starts over.
#[test]
fn a_corrupted_partial_is_detected_and_restarted() {
    let root = tempdir();
    let local = tempdir();
    let mut rng = Rng::new(0xbad);
    let data = rng.bytes(700_000);
    let src = write_file(&local.path().join("src"), &data);
    write_file(&root.path().join("src"), &data);
    let mut r = rig(root.path());
    for upload in [true, false] {
        let dest_dir = if upload { root.path() } else { local.path() };
        let go = |r: &mut Rig| {
            if upload {
                r.h.upload(&src, "/dst")
            } else {
                r.h.download("/src", local.path().join("dst"))
            }
        };
        r.target.store(300_000, Ordering::SeqCst);
        assert!(matches!(go(&mut r), Err(Error::Cancelled)));
        r.target.store(u64::MAX, Ordering::SeqCst);
        let partial = partial_of(dest_dir, "dst");
        let mut kept = std::fs::read(&partial).unwrap();
        assert!(kept.len() > 1000);
        let i = rng.below(kept.len() as u64) as usize;
        kept[i] ^= 0xff;
        std::fs::write(&partial, &kept).unwrap();
        *r.last.lock().unwrap() = None;
        go(&mut r).unwrap();
        assert_eq!(std::fs::read(dest_dir.join("dst")).unwrap(), data);
        assert!(!partial.exists());
        let (done, _) = r.last.lock().unwrap().unwrap();
        assert_eq!(
            done,
            data.len() as u64,
            "a corrupted partial must not be used"
        );
        wait_log(&mut r, "does not match");
        r.logs.lock().unwrap().clear();
        std::fs::remove_file(dest_dir.join("dst")).unwrap();
    }
}

/// With keep_partial off (the default), a cancel leaves nothing partial.
#[test]
fn without_keep_partial_nothing_partial_is_left() {
    let root = tempdir();
    let local = tempdir();
    let data = Rng::new(9).bytes(900_000);
    let src = write_file(&local.path().join("src"), &data);
    write_file(&root.path().join("src"), &data);
    let mut r = rig(root.path());
    r.h.set_keep_partial(false);
    r.h.set_fast_path(false);
    r.target.store(200_000, Ordering::SeqCst);
    assert!(matches!(r.h.upload(&src, "/dst"), Err(Error::Cancelled)));
    assert!(matches!(
        r.h.download("/src", local.path().join("dst")),
        Err(Error::Cancelled)
    ));
    for dir in [root.path(), local.path()] {
        for n in tree(dir) {
            assert!(!is_partial_name(n.as_bytes()), "{n} left behind");
        }
        assert_no_temp(dir);
        assert!(!dir.join("dst").exists());
    }
}

/// A source whose read fails while its prefix is checked against the
/// helper's partial data: the request still ends with CANCEL and its
/// reply, so the same helper serves the next one, and the partial data
/// stays for a later attempt.
#[test]
fn a_read_error_while_checking_the_partial_ends_the_request_cleanly() {
    // A "regular file" of 4096 bytes whose read fails with EINVAL.
    let src = Path::new("/sys/class/net/lo/speed");
    if !src.is_file() || std::fs::read(src).is_ok() {
        eprintln!("skipped: {} is missing or readable here", src.display());
        return;
    }
    let root = tempdir();
    let partial = partial_of(root.path(), "x");
    std::fs::write(&partial, b"0123456789").unwrap();
    let mut r = rig(root.path());
    r.h.stat("/").unwrap();
    let pid = r.h.helper_pid();
    let e = r.h.upload(src, "/x").unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    assert!(e.to_string().contains("speed"), "{e}");
    r.h.stat("/").unwrap();
    assert_eq!(r.h.helper_pid(), pid, "the helper was replaced");
    assert_eq!(std::fs::read(&partial).unwrap(), b"0123456789");
    assert!(!root.path().join("x").exists());
}
