//! The `barge` CLI and shell in a real pseudo-terminal, driven as a person
//! would: typed lines, ^C as the byte 0x03 through the line discipline (so
//! the kernel sends SIGINT to the foreground process group), ^D.
//!
//! Transfers that must be interrupted use a 4 GiB sparse file, which takes
//! seconds to move here, or a FIFO that the test feeds slowly and never
//! closes, which cannot finish at any speed. Each test waits until the
//! progress bar shows bytes moving and the far end holds its unfinished
//! file open before it types ^C, so the ^C provably lands mid-transfer.

mod common;
mod terminal;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{alive, assert_no_temp, tempdir};
use terminal::{last_progress, Attach, Terminal, CTRL_C, CTRL_D};

/// The size of the large files: 4 GiB, sparse.
const BIG: u64 = 4 << 30;
const BIG_SHOWN: &str = "4.00 GiB";
/// Generous bounds for things that have no latency promise.
const SLOW: Duration = Duration::from_secs(20);
/// The promise: ^C to `cancelled` on the screen.
const CANCEL_LIMIT: Duration = Duration::from_millis(100);
const PROMPT: &str = "barge> ";

fn barge(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_barge"));
    c.args(args)
        .current_dir(cwd)
        .env("BARGE_HELPER", common::helper_path())
        .env_remove("BARGE_HELPER_FAULT");
    c
}

fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// The targets of `pid`'s open fds that lie beneath `dir`.
fn fds_under(pid: u32, dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    let prefix = format!("{}/", dir.display());
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

/// An O_TMPFILE shows in /proc as `DIR/#INODE (deleted)`.
fn holds_unnamed_file(pid: u32, dir: &Path) -> bool {
    fds_under(pid, dir)
        .iter()
        .any(|p| p.ends_with(" (deleted)"))
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Wait until the bar for a transfer of `total` shows at least `min`
/// bytes done and not all of them; returns the bytes shown.
fn wait_mid_transfer(t: &mut Terminal, total: &str, total_bytes: u64, min: u64) -> u64 {
    let mut shown = 0;
    t.wait_until(SLOW, "the progress bar shows bytes moving", |s| {
        shown = last_progress(s, total).unwrap_or(0);
        shown >= min
    });
    assert!(
        shown < total_bytes,
        "the transfer finished ({shown} bytes) before ^C could be typed"
    );
    shown
}

/// Type `status` and read the helper's pid.
fn helper_pid(t: &mut Terminal) -> u32 {
    t.line("status");
    let pid = t.expect_line("helper pid ", SLOW);
    t.expect(PROMPT, SLOW);
    pid.parse().unwrap_or_else(|_| panic!("bad pid {pid:?}"))
}

fn assert_cancelled_quickly(t: &mut Terminal) -> Duration {
    t.skip_shown();
    let typed = Instant::now();
    t.send(&[CTRL_C]);
    let shown = t.expect("barge: cancelled", SLOW);
    let took = shown - typed;
    assert!(
        took < CANCEL_LIMIT,
        "^C took {took:?} to cancel (limit {CANCEL_LIMIT:?})"
    );
    took
}

fn start_shell(cwd: &Path, root: &Path) -> (Terminal, u32) {
    let mut t = Terminal::spawn(barge(cwd, &["--root", root.to_str().unwrap(), "shell"]));
    t.expect(PROMPT, SLOW);
    let pid = helper_pid(&mut t);
    (t, pid)
}

/// Leave the shell; its exit status is the last command's.
fn exit_shell(mut t: Terminal, helper: u32, how: &[u8], status: i32) {
    t.send(how);
    let exit = t.wait_exit(SLOW);
    assert_eq!(exit.code(), Some(status), "shell exit: {}", t.text());
    wait_for("the helper exits with the shell", SLOW, || !alive(helper));
}

#[test]
fn shell_ctrl_c_cancels_a_put_and_the_same_helper_serves_the_next() {
    let local = tempdir();
    let root = tempdir();
    sparse(&local.path().join("big.img"), BIG);
    std::fs::write(local.path().join("small.txt"), b"after the cancel\n").unwrap();
    let (mut t, helper) = start_shell(local.path(), root.path());

    t.line("put big.img /big.img");
    wait_mid_transfer(&mut t, BIG_SHOWN, BIG, 1 << 20);
    assert!(
        holds_unnamed_file(helper, root.path()),
        "the helper holds no unfinished upload: {:?}",
        fds_under(helper, root.path())
    );
    let took = assert_cancelled_quickly(&mut t);
    eprintln!("put cancelled {took:?} after ^C");
    t.expect(PROMPT, SLOW);

    assert!(!root.path().join("big.img").exists(), "partial upload left");
    assert_no_temp(root.path());
    wait_for("the helper drops the unfinished upload", SLOW, || {
        fds_under(helper, root.path()).is_empty()
    });
    assert_eq!(helper_pid(&mut t), helper, "a new helper after the cancel");
    assert!(alive(helper));

    t.line("put small.txt /small.txt");
    t.expect(PROMPT, SLOW);
    assert!(!t.text().contains("barge: error"));
    assert_eq!(
        std::fs::read(root.path().join("small.txt")).unwrap(),
        b"after the cancel\n"
    );
    assert_eq!(helper_pid(&mut t), helper);
    exit_shell(t, helper, b"exit\r", 0);
}

#[test]
fn shell_ctrl_c_cancels_a_get_and_leaves_nothing_locally() {
    let local = tempdir();
    let root = tempdir();
    sparse(&root.path().join("big.img"), BIG);
    std::fs::write(root.path().join("small.txt"), b"small\n").unwrap();
    let (mut t, helper) = start_shell(local.path(), root.path());

    t.line("get /big.img big.copy");
    wait_mid_transfer(&mut t, BIG_SHOWN, BIG, 1 << 20);
    assert!(
        holds_unnamed_file(t.pid(), local.path()),
        "barge holds no unfinished download: {:?}",
        fds_under(t.pid(), local.path())
    );
    assert!(
        !fds_under(helper, root.path()).is_empty(),
        "the helper is not reading"
    );
    let took = assert_cancelled_quickly(&mut t);
    eprintln!("get cancelled {took:?} after ^C");
    t.expect(PROMPT, SLOW);

    assert_eq!(
        common::tree(local.path()),
        Vec::<String>::new(),
        "partial download left"
    );
    // The unnamed download file holds at least 1 MiB by now, so barge's
    // discard thread closes it (its page cache is freed off the caller's
    // thread): its fd goes away shortly after the prompt, not before it.
    wait_for("barge closes the abandoned download", SLOW, || {
        fds_under(t.pid(), local.path()).is_empty()
    });
    // The helper sends its final reply, then closes the source.
    wait_for("the helper closes the source", SLOW, || {
        fds_under(helper, root.path()).is_empty()
    });
    assert_eq!(helper_pid(&mut t), helper, "a new helper after the cancel");

    t.line("get /small.txt small.txt");
    t.expect(PROMPT, SLOW);
    assert_eq!(
        std::fs::read(local.path().join("small.txt")).unwrap(),
        b"small\n"
    );
    assert_eq!(helper_pid(&mut t), helper);
    exit_shell(t, helper, &[CTRL_D], 0);
}

/// Whether SIGINT is pending for `pid` (not yet handled).
fn sigint_pending(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        .any(|l| {
            let mask = u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap();
            mask & (1 << (libc::SIGINT - 1)) != 0
        })
}

#[test]
fn shell_ctrl_c_at_the_prompt_clears_the_line_and_a_stray_sigint_cancels_nothing() {
    let local = tempdir();
    let root = tempdir();
    std::fs::write(local.path().join("a.txt"), b"a\n").unwrap();
    let (mut t, helper) = start_shell(local.path(), root.path());

    // Half a command, then ^C: the line is dropped and a new prompt shows.
    t.send(b"rm /does-not-matter");
    t.expect("rm /does-not-matter", SLOW);
    t.send(&[CTRL_C]);
    t.expect(PROMPT, SLOW);
    // Had the line survived, this would run "rm /does-not-matterstatus".
    assert_eq!(helper_pid(&mut t), helper);
    assert!(!t.text().contains("No such file"), "{}", t.text());

    // A SIGINT between commands (as from a ^C typed while output was
    // printing) leaves a pending cancel in the library; the next command
    // must clear it, not be cancelled by it.
    // SAFETY: kill with a pid we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(t.pid() as i32, libc::SIGINT) }, 0);
    wait_for("barge handles the SIGINT", SLOW, || {
        !sigint_pending(t.pid())
    });
    t.line("put a.txt /a.txt");
    t.expect(PROMPT, SLOW);
    assert!(
        !t.pending().contains("cancelled") && !t.text().contains("cancelled"),
        "{}",
        t.text()
    );
    assert_eq!(std::fs::read(root.path().join("a.txt")).unwrap(), b"a\n");

    // History: Up brings back the last command.
    std::fs::remove_file(root.path().join("a.txt")).unwrap();
    t.send(b"\x1b[A");
    t.expect("put a.txt /a.txt", SLOW);
    t.send(b"\r");
    wait_for("the recalled put runs", SLOW, || {
        root.path().join("a.txt").exists()
    });
    t.expect(PROMPT, SLOW);

    assert_eq!(helper_pid(&mut t), helper);
    exit_shell(t, helper, &[CTRL_D], 0);
}

#[test]
fn shell_help_lists_every_command() {
    let local = tempdir();
    let (mut t, helper) = start_shell(local.path(), local.path());
    t.line("help");
    t.expect(PROMPT, SLOW);
    let help = t.text().to_string();
    for cmd in [
        "put", "get", "ls", "stat", "mkdir", "rm", "mv", "status", "exit", "help",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "shell help lacks {cmd}:\n{help}"
        );
    }
    t.skip_shown();
    t.line("help mkdir");
    t.expect(PROMPT, SLOW);
    assert!(t.text().contains("-p, --parents"), "{}", t.text());
    t.line("frobnicate");
    t.expect("unrecognized subcommand", SLOW);
    t.expect(PROMPT, SLOW);
    t.line("put - /x");
    t.expect("standard input is the shell's own input", SLOW);
    t.expect(PROMPT, SLOW);
    exit_shell(t, helper, b"quit\r", 2);
}

#[test]
fn one_shot_put_interrupted_by_ctrl_c_exits_130_and_leaves_nothing() {
    let local = tempdir();
    let root = tempdir();
    sparse(&local.path().join("big.img"), BIG);
    let mut t = Terminal::spawn(barge(
        local.path(),
        &[
            "-v",
            "--root",
            root.path().to_str().unwrap(),
            "put",
            "big.img",
            "/big.img",
        ],
    ));
    let helper: u32 = t
        .expect_line("barge: helper pid ", SLOW)
        .trim_end_matches(" started")
        .parse()
        .unwrap();
    wait_mid_transfer(&mut t, BIG_SHOWN, BIG, 1 << 20);
    assert!(holds_unnamed_file(helper, root.path()));
    assert_cancelled_quickly(&mut t);
    let status = t.wait_exit(SLOW);
    assert_eq!(status.code(), Some(130), "{}", t.text());
    // The helper answered the cancel and then shut down gracefully.
    t.expect(
        &format!("helper pid {helper} exited with status 0 (graceful shutdown)"),
        SLOW,
    );
    assert!(!alive(helper));
    assert_eq!(common::tree(root.path()), Vec::<String>::new());
    assert_no_temp(local.path());
}

#[test]
fn one_shot_put_from_a_stalled_pipe_is_cancelled_by_ctrl_c() {
    let local = tempdir();
    let root = tempdir();
    let (read_end, write_end) = common::pipe();
    let mut cmd = barge(
        local.path(),
        &[
            "--root",
            root.path().to_str().unwrap(),
            "put",
            "-",
            "/piped",
        ],
    );
    cmd.stdin(Stdio::from(read_end));
    let mut t = Terminal::spawn_with(
        cmd,
        Attach {
            stdin: false,
            stdout: true,
            stderr: true,
        },
    );
    // 4 MiB through a 64 KiB pipe: the write completes only once barge
    // has read nearly all of it.
    let w = common::within(SLOW, "barge reads 4 MiB from the pipe", move || {
        let mut w = std::fs::File::from(write_end);
        std::io::Write::write_all(&mut w, &vec![7u8; 4 << 20]).unwrap();
        w
    });
    t.wait_until(SLOW, "the progress spinner shows", |s| {
        s.contains("stdin ") && s.contains(" MiB")
    });
    // Now barge waits on an empty pipe that stays open.
    assert_cancelled_quickly(&mut t);
    assert_eq!(t.wait_exit(SLOW).code(), Some(130), "{}", t.text());
    assert_eq!(common::tree(root.path()), Vec::<String>::new());
    drop(w);
}

const BAR_FILE_MIB: u64 = 48;

fn bar_file(dir: &Path) -> PathBuf {
    let p = dir.join("data.bin");
    let mut rng = common::Rng::new(4);
    std::fs::write(&p, rng.bytes((BAR_FILE_MIB << 20) as usize)).unwrap();
    p
}

#[test]
fn progress_bar_shows_bytes_rate_and_time_left() {
    let local = tempdir();
    let root = tempdir();
    bar_file(local.path());
    let mut t = Terminal::spawn(barge(
        local.path(),
        &[
            "--root",
            root.path().to_str().unwrap(),
            "put",
            "data.bin",
            "/data.bin",
        ],
    ));
    assert_eq!(t.wait_exit(SLOW).code(), Some(0), "{}", t.text());
    let text = t.text().to_string();
    let total = format!("{BAR_FILE_MIB}.00 MiB");
    assert_eq!(
        last_progress(&text, &total),
        Some(BAR_FILE_MIB << 20),
        "{text}"
    );
    assert!(text.contains("data.bin ["), "no label: {text}");
    assert!(
        text.contains("MiB/s") || text.contains("KiB/s") || text.contains("GiB/s"),
        "no rate: {text}"
    );
    assert!(text.contains(" eta "), "no time left: {text}");
    assert_eq!(
        std::fs::metadata(root.path().join("data.bin"))
            .unwrap()
            .len(),
        BAR_FILE_MIB << 20
    );
}

#[test]
fn no_progress_bar_with_quiet_or_without_a_terminal_on_stdout_and_stderr() {
    let local = tempdir();
    let root = tempdir();
    bar_file(local.path());
    let out = local.path().join("captured");
    let root_arg = root.path().to_str().unwrap().to_string();
    type Setup = fn(&mut Command, &Path) -> Attach;
    let cases: [(&str, &[&str], Setup); 3] = [
        ("-q", &["-q"], |_, _| Attach::ALL),
        ("stdout redirected", &[], |c, out| {
            c.stdout(std::fs::File::create(out).unwrap());
            Attach {
                stdin: true,
                stdout: false,
                stderr: true,
            }
        }),
        ("stderr redirected", &[], |c, out| {
            c.stderr(std::fs::File::create(out).unwrap());
            Attach {
                stdin: true,
                stdout: true,
                stderr: false,
            }
        }),
    ];
    for (name, flags, setup) in cases {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["--root", &root_arg, "put", "data.bin", "/data.bin"]);
        let mut cmd = barge(local.path(), &args);
        let attach = setup(&mut cmd, &out);
        let mut t = Terminal::spawn_with(cmd, attach);
        let status = t.wait_exit(SLOW);
        assert_eq!(status.code(), Some(0), "{name}: {}", t.text());
        let captured = std::fs::read_to_string(&out).unwrap_or_default();
        for shown in [t.text(), captured.as_str()] {
            assert!(
                !shown.contains("MiB"),
                "{name}: a progress bar was drawn: {shown:?}"
            );
        }
        assert_eq!(
            std::fs::metadata(root.path().join("data.bin"))
                .unwrap()
                .len(),
            BAR_FILE_MIB << 20
        );
        std::fs::remove_file(root.path().join("data.bin")).unwrap();
    }
}

/// A FIFO that a thread feeds 64 KiB at a time, a few milliseconds apart,
/// until stopped. It is opened read-write first, so a reader never sees
/// end of file before the feeding starts, and the writes never block.
struct Feeder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    fed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    fn start(path: &Path) -> Feeder {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; results checked.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // SAFETY: as above.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        assert!(
            fd >= 0,
            "open the FIFO: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let stop = Arc::new(AtomicBool::new(false));
        let fed = Arc::new(AtomicU64::new(0));
        let (s, f) = (stop.clone(), fed.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let chunk = vec![b'x'; 64 << 10];
            while !s.load(Ordering::SeqCst) {
                // SAFETY: writes from a live buffer to our own fd.
                let n = unsafe { libc::write(fd.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) };
                if n > 0 {
                    f.fetch_add(n as u64, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        Feeder {
            stop,
            fed,
            thread: Some(thread),
        }
    }

    fn fed(&self) -> u64 {
        self.fed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stop feeding and close the FIFO's write end; returns the bytes fed.
    fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.fed()
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn shell_ctrl_c_cancels_a_put_from_a_fifo_that_never_ends() {
    let local = tempdir();
    let root = tempdir();
    std::fs::write(local.path().join("small.txt"), b"next\n").unwrap();
    let feeder = Feeder::start(&local.path().join("feed"));
    let (mut t, helper) = start_shell(local.path(), root.path());

    t.line("put feed /fed");
    // The FIFO holds at most 64 KiB, so 2 MiB fed means barge has read
    // nearly all of it; the feeder never closes, so the upload cannot end.
    wait_for("barge reads 2 MiB from the FIFO", SLOW, || {
        feeder.fed() >= 2 << 20
    });
    t.wait_until(SLOW, "the progress spinner shows", |s| {
        s.contains("feed ") && s.contains(" MiB")
    });
    assert!(
        holds_unnamed_file(helper, root.path()),
        "the helper holds no unfinished upload"
    );
    let took = assert_cancelled_quickly(&mut t);
    eprintln!("FIFO put cancelled {took:?} after ^C");
    t.expect(PROMPT, SLOW);
    let fed_at_cancel = feeder.fed();

    assert_eq!(
        common::tree(root.path()),
        Vec::<String>::new(),
        "partial upload left"
    );
    wait_for("the helper drops the unfinished upload", SLOW, || {
        fds_under(helper, root.path()).is_empty()
    });
    assert_eq!(helper_pid(&mut t), helper, "a new helper after the cancel");
    // barge stopped reading: the FIFO fills and the feeder stalls.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        feeder.fed() <= fed_at_cancel + (64 << 10),
        "barge still reads the FIFO"
    );
    drop(feeder);

    t.line("put small.txt /small.txt");
    t.expect(PROMPT, SLOW);
    assert_eq!(
        std::fs::read(root.path().join("small.txt")).unwrap(),
        b"next\n"
    );
    assert_eq!(helper_pid(&mut t), helper);
    exit_shell(t, helper, b"exit\r", 0);
}

#[test]
fn resizing_the_terminal_during_a_transfer_is_harmless() {
    let local = tempdir();
    let root = tempdir();
    let feeder = Feeder::start(&local.path().join("feed"));
    let (mut t, helper) = start_shell(local.path(), root.path());
    t.line("put feed /fed");
    // Every resize makes the kernel send SIGWINCH to barge, interrupting
    // whatever wait the transfer is in.
    let mut resizes = 0u32;
    while feeder.fed() < 4 << 20 {
        t.resize(30 + (resizes % 20) as u16, 100 + (resizes % 60) as u16);
        resizes += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let fed = feeder.finish();
    t.expect(PROMPT, SLOW);
    assert!(!t.text().contains("barge: "), "{}", t.text());
    let got = std::fs::read(root.path().join("fed")).unwrap();
    assert_eq!(got.len() as u64, fed);
    assert!(got.iter().all(|&b| b == b'x'));
    assert!(resizes > 10, "only {resizes} resizes");
    // And at the prompt: the line editor redraws, the shell goes on.
    t.resize(40, 160);
    assert_eq!(helper_pid(&mut t), helper);
    exit_shell(t, helper, b"exit\r", 0);
}
