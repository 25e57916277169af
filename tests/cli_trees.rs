//! `barge put -r`, `get -r` and `--resume` without a terminal.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{assert_no_temp, tempdir, tree, Rng};

fn run_in(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env("BARGE_HELPER", common::helper_path())
        .env_remove("BARGE_HELPER_FAULT")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
}

#[test]
fn put_r_and_get_r_copy_a_tree_both_ways() {
    let src = tempdir();
    let top = src.path().join("t");
    std::fs::create_dir_all(top.join("a/b")).unwrap();
    std::fs::write(top.join("a/b/f"), Rng::new(1).bytes(100_000)).unwrap();
    std::fs::write(top.join("g"), b"g").unwrap();
    std::os::unix::fs::symlink("a/b/f", top.join("l")).unwrap();
    let root = tempdir();
    std::fs::create_dir(root.path().join("in")).unwrap();
    let o = run_in(root.path(), &["put", "-r", top.to_str().unwrap(), "/in"]);
    assert_ok(&o);
    assert_eq!(tree(&root.path().join("in/t")), tree(&top));
    assert_eq!(
        std::fs::read(root.path().join("in/t/a/b/f")).unwrap(),
        std::fs::read(top.join("a/b/f")).unwrap()
    );
    let back = tempdir();
    let o = run_in(
        root.path(),
        &["get", "-r", "/in/t", back.path().to_str().unwrap()],
    );
    assert_ok(&o);
    assert_eq!(tree(&back.path().join("t")), tree(&top));
    assert_eq!(
        std::fs::read_link(back.path().join("t/l")).unwrap(),
        Path::new("a/b/f")
    );
    assert_no_temp(back.path());

    // --keep-going lists each failure, then the summary; status 1.
    std::fs::remove_dir_all(root.path().join("in/t/a")).unwrap();
    std::fs::write(root.path().join("in/t/a"), b"in the way").unwrap();
    let o = run_in(
        root.path(),
        &["put", "-r", "--keep-going", top.to_str().unwrap(), "/in"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("mkdir t/a"), "{}", stderr(&o));
    assert_eq!(std::fs::read(root.path().join("in/t/g")).unwrap(), b"g");
    // -r without a directory to copy into is an error naming it.
    let o = run_in(
        root.path(),
        &["put", "-r", top.to_str().unwrap(), "/missing"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/missing"), "{}", stderr(&o));
}

/// A partial file left by an interrupted transfer (made here by hand: the
/// first part of the source under the hidden name) is continued by
/// `--resume`, and the result is whole.
#[test]
fn resume_continues_a_partial_file_in_both_directions() {
    let data = Rng::new(2).bytes(500_000);
    let root = tempdir();
    let local = tempdir();
    let src = local.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    std::fs::write(root.path().join(".big.barge-partial"), &data[..123_456]).unwrap();
    let o = run_in(
        root.path(),
        &["-v", "put", "--resume", src.to_str().unwrap(), "/big"],
    );
    assert_ok(&o);
    assert_eq!(std::fs::read(root.path().join("big")).unwrap(), data);
    assert!(
        stderr(&o).contains("resuming upload of /big at byte 123456"),
        "{}",
        stderr(&o)
    );
    assert!(!root.path().join(".big.barge-partial").exists());

    std::fs::write(local.path().join(".got.barge-partial"), &data[..77_777]).unwrap();
    let dst = local.path().join("got");
    let o = run_in(
        root.path(),
        &["-v", "get", "--resume", "/big", dst.to_str().unwrap()],
    );
    assert_ok(&o);
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    assert!(
        stderr(&o).contains("resuming download of /big at byte 77777"),
        "{}",
        stderr(&o)
    );
}

/// The shell takes the same options: a tree in and out, then a resumed
/// upload, one command per line.
#[test]
fn the_shell_copies_trees_and_resumes() {
    use std::io::Write;
    let root = tempdir();
    let local = tempdir();
    let top = local.path().join("t");
    std::fs::create_dir_all(top.join("d")).unwrap();
    std::fs::write(top.join("d/x"), b"x").unwrap();
    let data = Rng::new(3).bytes(200_000);
    std::fs::write(local.path().join("big"), &data).unwrap();
    std::fs::write(root.path().join(".big.barge-partial"), &data[..5000]).unwrap();
    let back = local.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let script = format!(
        "put -r {} /\nget -r /t {}\nput --resume {} /big\n",
        top.display(),
        back.display(),
        local.path().join("big").display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("--root")
        .arg(root.path())
        .arg("-v")
        .arg("shell")
        .env("BARGE_HELPER", common::helper_path())
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
    assert_ok(&o);
    assert_eq!(std::fs::read(root.path().join("t/d/x")).unwrap(), b"x");
    assert_eq!(std::fs::read(back.join("t/d/x")).unwrap(), b"x");
    assert_eq!(std::fs::read(root.path().join("big")).unwrap(), data);
    assert!(
        stderr(&o).contains("resuming upload of /big at byte 5000"),
        "{}",
        stderr(&o)
    );
}
