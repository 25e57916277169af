//! `barge --ssh` through a real OpenSSH server on 127.0.0.1.
//!
//! Each test starts its own `/usr/sbin/sshd -D` on a free port, with a
//! throwaway host key, client key, `authorized_keys`, `known_hosts` and
//! client config in a temporary directory. The client side is given as
//! `--ssh-command "ssh -F DIR/ssh_config"`; the far side runs the freshly
//! built helper through `--remote-helper PATH`. sshd must be installed
//! (`.ci/run` installs Debian's openssh-server): when it is missing, the
//! tests fail and say so. They never skip.

mod common;
mod terminal;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{alive, assert_no_temp, tempdir};
use terminal::{last_progress, Terminal, CTRL_C};

const SSHD: &str = "/usr/sbin/sshd";
const SLOW: Duration = Duration::from_secs(30);
/// A 4 GiB sparse file: seconds of transfer, so ^C lands mid-way.
const BIG: u64 = 4 << 30;

struct Sshd {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    user: String,
}

fn user_name() -> String {
    // SAFETY: getpwuid returns a pointer to static storage or NULL; it is
    // read at once, on this thread.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null(), "no passwd entry for uid {}", libc::geteuid());
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "barge-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(st.success(), "ssh-keygen failed");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// Start sshd; `password_auth` lets the server offer passwords too
    /// (for the BatchMode test).
    fn start(password_auth: bool) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "sshd is not installed at {SSHD}: install Debian's openssh-server \
             (.ci/run does). The --ssh tests need it and do not skip."
        );
        let dir = tempdir();
        let d = dir.path().to_path_buf();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // sshd running as root insists on its privilege separation
            // directory, which Debian creates only when the service starts.
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let user = user_name();
        for _attempt in 0..5 {
            let port = free_port();
            let config = format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {d}/host_key\n\
                 PidFile none\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 StrictModes no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication {pw}\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 PermitRootLogin {root}\n\
                 AllowUsers {user}\n\
                 LogLevel VERBOSE\n",
                d = d.display(),
                pw = if password_auth { "yes" } else { "no" },
                root = if password_auth {
                    "yes"
                } else {
                    "prohibit-password"
                },
            );
            std::fs::write(d.join("sshd_config"), config).unwrap();
            let log = std::fs::File::create(d.join("sshd.log")).unwrap();
            let child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            let mut child = child;
            if wait_ready(&mut child, port, &d) {
                let sshd = Sshd {
                    dir,
                    child,
                    port,
                    user,
                };
                sshd.write_client_files();
                return sshd;
            }
            let _ = child.wait();
            let log = read_log(&d);
            assert!(
                log.contains("Address already in use"),
                "sshd did not start:\n{log}"
            );
            // Another process took the port: try another.
        }
        panic!("could not find a free port for sshd");
    }

    fn write_client_files(&self) {
        let d = self.dir.path();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{} {host_pub}", self.port),
        )
        .unwrap();
        let config = format!(
            "Host *\n\
             \x20 IdentityFile {d}/client_key\n\
             \x20 IdentitiesOnly yes\n\
             \x20 UserKnownHostsFile {d}/known_hosts\n\
             \x20 GlobalKnownHostsFile /dev/null\n\
             \x20 StrictHostKeyChecking yes\n\
             \x20 LogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("ssh_config"), config).unwrap();
        // The same, but with no usable key: only a password could log in.
        let no_key = format!(
            "Host *\n\
             \x20 IdentityFile {d}/no_such_key\n\
             \x20 IdentitiesOnly yes\n\
             \x20 UserKnownHostsFile {d}/known_hosts\n\
             \x20 GlobalKnownHostsFile /dev/null\n\
             \x20 StrictHostKeyChecking yes\n",
            d = d.display()
        );
        std::fs::write(d.join("ssh_config_no_key"), no_key).unwrap();
    }

    fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// The `barge` options that reach this server with `config`.
    fn args(&self, config: &str, root: &Path) -> Vec<String> {
        vec![
            "--ssh".into(),
            format!("{}@127.0.0.1:{}", self.user, self.port),
            "--ssh-command".into(),
            format!("ssh -F {}", self.dir.path().join(config).display()),
            "--remote-helper".into(),
            helper_exe().display().to_string(),
            "--root".into(),
            root.display().to_string(),
        ]
    }

    /// Helpers running beneath this sshd.
    fn helpers(&self) -> Vec<u32> {
        let helper = helper_exe();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if std::fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .as_deref()
                != Some(&helper)
            {
                continue;
            }
            if descends_from(pid, self.child.id()) && alive(pid) {
                found.push(pid);
            }
        }
        found
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
}

/// Wait until sshd greets on its port; false if it exited.
fn wait_ready(child: &mut Child, port: u16, dir: &Path) -> bool {
    let deadline = Instant::now() + SLOW;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut banner = [0u8; 8];
            if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-" {
                return true;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sshd not ready:\n{}",
            read_log(dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // SAFETY: kill with the pid of our own, unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn helper_exe() -> PathBuf {
    Path::new(common::helper_path()).canonicalize().unwrap()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        match parent_of(pid) {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

fn barge(cwd: &Path, args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_barge"));
    c.args(args)
        .current_dir(cwd)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("BARGE_HELPER");
    c
}

fn with(mut base: Vec<String>, more: &[&str]) -> Vec<String> {
    base.extend(more.iter().map(|s| s.to_string()));
    base
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn put_and_get_through_sshd() {
    let sshd = Sshd::start(false);
    let local = tempdir();
    let root = tempdir();
    let data = common::Rng::new(21).bytes(5 << 20);
    std::fs::write(local.path().join("data.bin"), &data).unwrap();
    let base = sshd.args("ssh_config", root.path());

    let o = barge(
        local.path(),
        &with(base.clone(), &["-v", "put", "data.bin", "/up.bin"]),
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(0),
        "put: {err}\nsshd log:\n{}",
        sshd.log()
    );
    // -v shows the command line (quoted as a shell would need it).
    let launch = err
        .lines()
        .find(|l| l.starts_with("barge: helper command: "))
        .unwrap_or("");
    assert!(
        launch.contains(" -T -o ")
            && launch.contains("BatchMode=yes")
            && launch.contains(&format!(" -p {} {}@127.0.0.1 ", sshd.port, sshd.user)),
        "{err}"
    );
    assert!(err.contains("(graceful shutdown)"), "{err}");
    assert_eq!(std::fs::read(root.path().join("up.bin")).unwrap(), data);

    let o = barge(
        local.path(),
        &with(base.clone(), &["get", "/up.bin", "down.bin"]),
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "get: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read(local.path().join("down.bin")).unwrap(), data);

    let o = barge(local.path(), &with(base, &["ls", "/"]))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "up.bin\n");
    wait_for("no helper left under sshd", SLOW, || {
        sshd.helpers().is_empty()
    });
    // The log proves the logins went through this sshd with the key.
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[test]
fn ctrl_c_cancels_a_put_through_sshd_in_band() {
    let sshd = Sshd::start(false);
    let local = tempdir();
    let root = tempdir();
    std::fs::File::create(local.path().join("big.img"))
        .unwrap()
        .set_len(BIG)
        .unwrap();
    let args = with(
        sshd.args("ssh_config", root.path()),
        &["-v", "put", "big.img", "/big.img"],
    );
    let mut t = Terminal::spawn(barge(local.path(), &args));
    let ssh: i32 = t
        .expect_line("barge: helper pid ", SLOW)
        .trim_end_matches(" started")
        .parse()
        .unwrap();
    // ssh leads a process group of its own, outside the terminal's
    // foreground group (barge's), so the ^C below reaches only barge.
    // SAFETY: getpgid takes no pointers.
    let (ssh_group, barge_group) = unsafe { (libc::getpgid(ssh), libc::getpgid(t.pid() as i32)) };
    assert_eq!(ssh_group, ssh, "ssh is not a process group leader");
    assert_ne!(ssh_group, barge_group);
    t.wait_until(SLOW, "the progress bar shows bytes moving", |s| {
        last_progress(s, "4.00 GiB").unwrap_or(0) >= 4 << 20
    });
    let remote = sshd.helpers();
    assert_eq!(remote.len(), 1, "helpers under sshd: {remote:?}");
    let remote = remote[0];
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{remote}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    let root_prefix = format!("{}/", root.path().canonicalize().unwrap().display());
    assert!(
        fds.iter()
            .any(|f| f.starts_with(&root_prefix) && f.ends_with(" (deleted)")),
        "the remote helper holds no unfinished upload: {fds:?}"
    );
    let shown = last_progress(t.text(), "4.00 GiB").unwrap();
    assert!(shown < BIG, "finished before ^C");

    t.skip_shown();
    let typed = Instant::now();
    t.send(&[CTRL_C]);
    let cancelled = t.expect("barge: cancelled", SLOW);
    eprintln!(
        "put through sshd cancelled {:?} after ^C",
        cancelled - typed
    );
    let status = t.wait_exit(SLOW);
    assert_eq!(status.code(), Some(130), "{}", t.text());
    // In band: the helper answered the cancel and then the SHUTDOWN, so
    // ssh exited 0; a helper that had to be killed shows otherwise.
    t.expect("exited with status 0 (graceful shutdown)", SLOW);
    assert!(!t.text().contains("killed"), "{}", t.text());

    assert_eq!(
        common::tree(root.path()),
        Vec::<String>::new(),
        "partial upload left"
    );
    assert_no_temp(local.path());
    wait_for("the remote helper exits", SLOW, || !alive(remote));
    wait_for("no helper left under sshd", SLOW, || {
        sshd.helpers().is_empty()
    });
}

/// Read lines of a shell's stdout until one starts with `prefix`.
fn read_until(out: &mut impl BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "stdout ended before a line starting {prefix:?}");
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim_end().to_string();
        }
    }
}

#[test]
fn the_remote_helper_exits_when_the_handle_closes() {
    let sshd = Sshd::start(false);
    let local = tempdir();
    let root = tempdir();
    std::fs::write(local.path().join("a"), b"a\n").unwrap();
    let args = with(sshd.args("ssh_config", root.path()), &["shell"]);

    for killed in [false, true] {
        let mut child = barge(local.path(), &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        stdin.write_all(b"put a /a\nstatus\n").unwrap();
        let ssh_pid: u32 = read_until(&mut out, "helper pid ").parse().unwrap();
        assert!(alive(ssh_pid));
        let remote = sshd.helpers();
        assert_eq!(remote.len(), 1, "helpers under sshd: {remote:?}");
        assert_eq!(std::fs::read(root.path().join("a")).unwrap(), b"a\n");
        if killed {
            // No graceful close: the helper sees its input end.
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            stdin.write_all(b"exit\n").unwrap();
            drop(stdin);
            let status = common::within(SLOW, "the shell exits", move || child.wait().unwrap());
            assert_eq!(status.code(), Some(0));
            assert!(!alive(ssh_pid), "ssh outlived the handle");
        }
        wait_for("the remote helper exits", SLOW, || !alive(remote[0]));
        std::fs::remove_file(root.path().join("a")).unwrap();
    }
}

#[test]
fn batch_mode_fails_at_once_instead_of_asking_for_a_password() {
    // The server would take a password; the client has no key. Without
    // BatchMode, ssh would try to prompt on the terminal from a background
    // process group and stop there.
    let sshd = Sshd::start(true);
    let root = tempdir();
    let args = with(sshd.args("ssh_config_no_key", root.path()), &["ls"]);
    let mut t = Terminal::spawn(barge(root.path(), &args));
    let status = t.wait_exit(SLOW);
    assert_eq!(status.code(), Some(1), "{}", t.text());
    let text = t.text().to_string();
    assert!(
        !text.contains("password:"),
        "ssh asked for a password: {text}"
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one error line: {text:?}");
    assert!(lines[0].starts_with("barge: "), "{text}");
    assert!(lines[0].contains("Permission denied"), "{text}");
}

/// The fast path (fds passed with SCM_RIGHTS) must never be used through
/// ssh, even when the library is asked to offer it and sshd runs on the
/// same kernel: the helper's parent is sshd's session, and the WELCOME's
/// pid is not the pid of the local ssh. The transfer goes as a stream.
#[test]
fn the_fast_path_is_never_used_through_ssh() {
    let sshd = Sshd::start(false);
    let local = tempdir();
    let root = tempdir();
    let data: Vec<u8> = (0..(3u32 << 20)).map(|i| ((i * 31) >> 7) as u8).collect();
    std::fs::write(local.path().join("f.bin"), &data).unwrap();
    let mut h = barge::Handle::new().unwrap();
    h.set_helper([
        "ssh".to_string(),
        "-F".into(),
        sshd.dir.path().join("ssh_config").display().to_string(),
        "-T".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-p".into(),
        sshd.port.to_string(),
        format!("{}@127.0.0.1", sshd.user),
        helper_exe().display().to_string(),
    ])
    .unwrap();
    h.set_fast_path(true);
    h.set_root(Some(root.path())).unwrap();
    h.upload(local.path().join("f.bin"), "/f.bin").unwrap();
    assert!(!h.uses_fast_path(), "the fast path was used through ssh");
    assert_eq!(std::fs::read(root.path().join("f.bin")).unwrap(), data);
    h.download("/f.bin", local.path().join("back.bin")).unwrap();
    assert_eq!(std::fs::read(local.path().join("back.bin")).unwrap(), data);
    h.shutdown().unwrap();
    assert_no_temp(root.path());
}
