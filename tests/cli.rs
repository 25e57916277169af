//! The `barge` command without a terminal: every command, help, exit
//! statuses and error lines. The terminal behaviour (^C, progress bars,
//! line editing) is in `shell_pty.rs`; ssh in `sshd.rs`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{assert_no_temp, tempdir};

fn barge(cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_barge"));
    c.args(args)
        .current_dir(cwd)
        .env("BARGE_HELPER", common::helper_path())
        .env_remove("BARGE_HELPER_FAULT")
        .stdin(Stdio::null());
    c
}

fn run(cwd: &Path, args: &[&str]) -> Output {
    barge(cwd, args).output().unwrap()
}

fn run_in(root: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    run(root, &all)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    assert_eq!(stderr(o), "", "a successful command printed to stderr");
}

/// Exit status 1 and exactly one line on stderr, which contains `parts`.
#[track_caller]
fn assert_error_line(o: &Output, parts: &[&str]) {
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("barge: "), "{err:?}");
    for p in parts {
        assert!(err.contains(p), "{err:?} lacks {p:?}");
    }
}

const COMMANDS: [&str; 8] = ["put", "get", "ls", "stat", "mkdir", "rm", "mv", "shell"];

/// The names listed in a help text's `Commands:` section.
fn listed_commands(help: &str) -> BTreeSet<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn help_lists_every_command_and_global_option() {
    let d = tempdir();
    let o = run(d.path(), &["--help"]);
    assert_ok(&o);
    let help = stdout(&o);
    let mut expected: BTreeSet<String> = COMMANDS.iter().map(|s| s.to_string()).collect();
    expected.insert("help".into());
    assert_eq!(listed_commands(&help), expected, "{help}");
    for opt in [
        "-q, --quiet",
        "-v, --verbose",
        "--root <DIR>",
        "--helper <CMD>",
        "--ssh <[USER@]HOST[:PORT]>",
        "--ssh-command <CMD>",
        "--remote-helper <CMD>",
        "-h, --help",
        "-V, --version",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}:\n{help}");
    }
    for claim in [
        "0 success, 1 error, 2 usage error, 130 cancelled by ^C",
        "BatchMode=yes",
    ] {
        assert!(help.contains(claim), "--help lacks {claim:?}");
    }
    // -h is the same text, and `help` too.
    assert_eq!(stdout(&run(d.path(), &["-h"])), help);
    assert_eq!(stdout(&run(d.path(), &["help"])), help);
    let v = run(d.path(), &["--version"]);
    assert_ok(&v);
    assert_eq!(stdout(&v), format!("barge {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn each_command_has_accurate_help() {
    let d = tempdir();
    let usage = [
        (
            "put",
            "Usage: barge put [OPTIONS] <LOCAL> <REMOTE>",
            &[
                "- for standard input",
                "-r, --recursive",
                "--resume",
                "--keep-going",
            ][..],
        ),
        (
            "get",
            "Usage: barge get [OPTIONS] <REMOTE> <LOCAL>",
            &[
                "- for standard output",
                "-r, --recursive",
                "--resume",
                "--no-preserve",
            ][..],
        ),
        (
            "ls",
            "Usage: barge ls [OPTIONS] [PATH]",
            &["-l, --long", "[default: .]"][..],
        ),
        ("stat", "Usage: barge stat <PATH>", &[][..]),
        (
            "mkdir",
            "Usage: barge mkdir [OPTIONS] <PATH>",
            &["-p, --parents"][..],
        ),
        ("rm", "Usage: barge rm <PATH>", &[][..]),
        ("mv", "Usage: barge mv <FROM> <TO>", &[][..]),
        (
            "shell",
            "Usage: barge shell",
            &["^C cancels the running transfer"][..],
        ),
    ];
    for (cmd, line, extra) in usage {
        let o = run(d.path(), &[cmd, "--help"]);
        assert_ok(&o);
        let help = stdout(&o);
        assert!(
            help.lines().any(|l| l == line),
            "{cmd} --help lacks {line:?}:\n{help}"
        );
        for e in extra {
            assert!(help.contains(e), "{cmd} --help lacks {e:?}:\n{help}");
        }
        assert_eq!(stdout(&run(d.path(), &["help", cmd])), help, "help {cmd}");
    }
}

#[test]
fn the_options_the_help_lists_work() {
    let d = tempdir();
    let r = d.path();
    assert_ok(&run_in(r, &["mkdir", "-p", "/a/b/c"]));
    assert_ok(&run_in(r, &["mkdir", "--parents", "/a/b/c"]));
    assert!(r.join("a/b/c").is_dir());
    let plain = run_in(r, &["ls", "/a"]);
    assert_ok(&plain);
    assert_eq!(stdout(&plain), "b\n");
    for flag in ["-l", "--long"] {
        let long = run_in(r, &["ls", flag, "/a"]);
        assert_ok(&long);
        let line = stdout(&long);
        assert!(
            line.starts_with("drwx") && line.ends_with(" b\n"),
            "{line:?}"
        );
    }
    let q = run_in(r, &["-q", "ls", "/a"]);
    assert_ok(&q);
    assert_eq!(stdout(&q), "b\n");
    let v = run_in(r, &["-v", "ls", "/a"]);
    assert_eq!(v.status.code(), Some(0));
    let err = stderr(&v);
    assert!(
        err.contains("barge: helper pid ") && err.contains(" started"),
        "{err}"
    );
    assert!(
        err.contains("exited with status 0 (graceful shutdown)"),
        "{err}"
    );
    // --helper takes a whole command line.
    let h = run(
        r,
        &[
            "--root",
            r.to_str().unwrap(),
            "--helper",
            &format!("/usr/bin/env BARGE_X=1 '{}'", common::helper_path()),
            "ls",
            "/a",
        ],
    );
    assert_ok(&h);
    assert_eq!(stdout(&h), "b\n");
}

#[test]
fn usage_errors_exit_2() {
    let d = tempdir();
    for args in [
        &[][..],
        &["frobnicate"][..],
        &["--frobnicate", "ls"][..],
        &["put", "only-one"][..],
        &["get", "a", "b", "c"][..],
        &["mv", "a"][..],
        &["mkdir", "-x", "a"][..],
        &["-q", "-v", "ls"][..],
        &["--helper", "x", "--ssh", "h", "ls"][..],
        &["--ssh-command", "ssh", "ls"][..],
        &["--remote-helper", "x", "ls"][..],
        &["--ssh=-oProxyCommand=x", "ls"][..],
        &["--ssh", "host:99999", "ls"][..],
        &["--helper", "sh -c 'unclosed", "ls"][..],
        &["--helper", "", "ls"][..],
        &["ls", "--root", "/"][..],
    ] {
        let o = run(d.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "{args:?}: no message");
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
    }
}

#[test]
fn errors_are_one_line_with_the_errno_meaning() {
    let d = tempdir();
    let r = d.path();
    std::fs::create_dir(r.join("full")).unwrap();
    std::fs::write(r.join("full/f"), b"x").unwrap();
    assert_error_line(
        &run_in(r, &["get", "/nope", "out"]),
        &["/nope", "No such file or directory"],
    );
    assert_error_line(
        &run_in(r, &["stat", "/nope"]),
        &["/nope", "No such file or directory"],
    );
    assert_error_line(
        &run_in(r, &["rm", "/full"]),
        &["/full", "Directory not empty"],
    );
    assert_error_line(
        &run_in(r, &["ls", "/full/f"]),
        &["/full/f", "Not a directory"],
    );
    assert_error_line(&run_in(r, &["mkdir", "/full"]), &["/full", "File exists"]);
    assert_error_line(
        &run_in(r, &["put", "missing.txt", "/x"]),
        &["missing.txt", "No such file or directory"],
    );
    assert_error_line(
        &run(r, &["--helper", "/nonexistent/helper", "ls"]),
        &["/nonexistent/helper", "No such file or directory"],
    );
    assert_error_line(
        &run(r, &["--helper", "sh -c 'echo refusing >&2; exit 3'", "ls"]),
        &["status 3", "refusing", "Connection reset by peer"],
    );
    assert!(!r.join("out").exists());
    assert_no_temp(r);
}

#[test]
fn put_get_and_the_remote_commands() {
    let local = tempdir();
    let root = tempdir();
    let (l, r) = (local.path(), root.path());
    let data = common::Rng::new(9).bytes(3 << 20);
    std::fs::write(l.join("data.bin"), &data).unwrap();
    let put = |args: &[&str]| {
        let mut all = vec!["--root", r.to_str().unwrap()];
        all.extend_from_slice(args);
        run(l, &all)
    };

    assert_ok(&put(&["put", "data.bin", "/up.bin"]));
    assert_eq!(std::fs::read(r.join("up.bin")).unwrap(), data);
    assert_ok(&put(&["get", "/up.bin", "down.bin"]));
    assert_eq!(std::fs::read(l.join("down.bin")).unwrap(), data);

    // Into an existing directory, or one named with a trailing slash.
    assert_ok(&put(&["mkdir", "/in"]));
    assert_ok(&put(&["put", "data.bin", "/in"]));
    assert_eq!(std::fs::read(r.join("in/data.bin")).unwrap(), data);
    std::fs::create_dir(l.join("got")).unwrap();
    assert_ok(&put(&["get", "/in/data.bin", "got"]));
    assert_ok(&put(&["get", "/up.bin", "got/"]));
    assert_eq!(std::fs::read(l.join("got/data.bin")).unwrap(), data);
    assert_eq!(std::fs::read(l.join("got/up.bin")).unwrap(), data);

    let st = put(&["stat", "/up.bin"]);
    assert_ok(&st);
    let text = stdout(&st);
    assert!(text.contains("type: regular file"), "{text}");
    assert!(text.contains(&format!("size: {}", 3 << 20)), "{text}");

    assert_ok(&put(&["mv", "/up.bin", "/moved.bin"]));
    assert!(!r.join("up.bin").exists() && r.join("moved.bin").exists());
    let ls = put(&["ls"]);
    assert_ok(&ls);
    assert_eq!(stdout(&ls), "in\nmoved.bin\n");
    assert_ok(&put(&["rm", "/moved.bin"]));
    assert_ok(&put(&["rm", "/in/data.bin"]));
    assert_ok(&put(&["rm", "/in"]));
    assert_eq!(common::tree(r), Vec::<String>::new());
    assert_no_temp(l);
}

#[test]
fn dash_is_standard_input_and_output() {
    let local = tempdir();
    let root = tempdir();
    let (l, r) = (local.path(), root.path());
    let data = common::Rng::new(3).bytes(1 << 20);
    let mut child = barge(l, &["--root", r.to_str().unwrap(), "put", "-", "/piped"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_ok(&o);
    assert_eq!(std::fs::read(r.join("piped")).unwrap(), data);

    let o = run_in(r, &["get", "/piped", "-"]);
    assert_ok(&o);
    assert_eq!(o.stdout, data);
}

#[test]
fn the_shell_reads_commands_from_a_pipe() {
    let root = tempdir();
    let r = root.path();
    std::fs::write(r.join("f"), b"hello\n").unwrap();
    let script = "mkdir -p /d\nmv /f /d/g\nls /d\nstatus\nstat /missing\n";
    let mut child = barge(r, &["--root", r.to_str().unwrap(), "shell"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    // The exit status is the last command's.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("g"));
    assert!(lines.next().unwrap().starts_with("helper pid "), "{out}");
    assert_eq!(
        stderr(&o),
        "barge: stat /missing: No such file or directory\n"
    );
    assert!(r.join("d/g").exists());
}

/// `put` into a remote directory first STATs the destination. A ^C during
/// that STAT is consumed by it (it completes anyway), yet it cancels the
/// command: no upload follows, and the exit status is 130. The helper is a
/// script that answers the STAT only once barge has taken the SIGINT.
#[test]
fn ctrl_c_during_the_destination_stat_of_put_cancels_the_command() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(d.join("f"), b"data").unwrap();
    let fake = d.join("fake.py");
    std::fs::write(
        &fake,
        r#"import os, struct, sys, time
def frame(kind, serial, body=b""):
    return struct.pack(">IBBHQ", len(body), kind, 0, 0, serial) + body
def read_frame():
    head = sys.stdin.buffer.read(16)
    n, kind, _, _, serial = struct.unpack(">IBBHQ", head)
    sys.stdin.buffer.read(n)
    return kind, serial
out = sys.stdout.buffer
out.write(frame(2, 0, b"BARGE\0\r\n" + struct.pack(">HQI", 1, 0, os.getpid())))
out.flush()
read_frame()                      # HELLO
kind, serial = read_frame()       # STAT
open(sys.argv[1], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.005)
# STAT_INFO: /dest is a directory, so the upload would go to /dest/f.
out.write(frame(0x32, serial, struct.pack(">QIIIQqI", 0, 0o40755, 0, 0, 2, 0, 0)))
out.flush()
while True:
    kind, serial = read_frame()
    if kind == 0x15:              # PUT: the command went on
        open(sys.argv[2], "w").close()
    if kind == 0x17:              # SHUTDOWN
        out.write(frame(0x30, serial))
        out.flush()
        sys.exit(0)
"#,
    )
    .unwrap();
    let (asked, put, answer) = (d.join("asked"), d.join("put"), d.join("answer"));
    let helper = format!(
        "python3 {} {} {} {}",
        fake.display(),
        asked.display(),
        put.display(),
        answer.display()
    );
    let mut child = barge(d, &["--helper", &helper, "put", "f", "/dest"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !asked.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no STAT reached the helper"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: signals our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    // Answer once SIGINT is no longer pending: barge's handler has run.
    let status_file = format!("/proc/{}/status", child.id());
    let pending = |line: &str, field: &str| {
        line.strip_prefix(field)
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
    };
    while std::fs::read_to_string(&status_file)
        .unwrap()
        .lines()
        .any(|l| pending(l, "SigPnd:") || pending(l, "ShdPnd:"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGINT never delivered"
        );
        std::thread::yield_now();
    }
    std::fs::write(&answer, b"").unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("barge did not end after ^C (PUT sent: {})", put.exists());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(!put.exists(), "the upload went on after ^C");
}
