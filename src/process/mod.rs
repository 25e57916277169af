//! Process control for the helper: spawn it in its own process group,
//! signal it (and its group), wait for it with a timeout, reap it.
//!
//! Nothing here knows the protocol. The client decides when to escalate.
//! This module gives it the steps: [`HelperProcess::wait_exit`] with a
//! deadline, [`HelperProcess::signal`], and [`HelperProcess::terminate`],
//! which runs SIGTERM, a wait and then SIGKILL.
//!
//! Rules kept here:
//! - The child is started by `std::process::Command`, which calls only
//!   async-signal-safe functions between fork and exec. With a process group
//!   it uses `setpgid(0, 0)` in the child, and this module also calls
//!   `setpgid(pid, pid)` in the parent, so the group exists before either
//!   side goes on.
//! - Every fd is CLOEXEC. The channel is a socketpair, so the client can
//!   send with `MSG_NOSIGNAL`.
//! - Only this child's pid is ever waited for, through a pidfd where the
//!   kernel has them. A group signal goes only to a group this module
//!   created, never to the caller's.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cancel::CancelState;
use crate::sys;

/// How long to wait for a SIGKILLed process to be reaped before giving up
/// on it. A process can only outlast SIGKILL while stuck in the kernel.
pub const KILL_REAP_LIMIT: Duration = Duration::from_secs(2);

/// How a helper ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
    /// It ended, but another waiter of this process collected its status
    /// first: SIGCHLD set to SIG_IGN or SA_NOCLDWAIT (the kernel then reaps
    /// children itself), or a `waitpid(-1)` of the caller's.
    Unknown,
}

impl ExitStatus {
    fn from_wait(status: libc::c_int) -> ExitStatus {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        }
    }

    /// Exited with status 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(c) => write!(f, "exited with status {c}"),
            ExitStatus::Signaled(s) => write!(f, "was killed by signal {s} ({})", signal_name(s)),
            ExitStatus::Unknown => write!(
                f,
                "exited; its status went to another waiter (is SIGCHLD ignored?)"
            ),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGHUP => "SIGHUP",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

/// The result of a bounded wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
}

/// A started helper and the parent's ends of its channel and stderr.
#[derive(Debug)]
pub struct Spawned {
    pub process: HelperProcess,
    /// The parent's end of the socketpair that is the helper's stdin and
    /// stdout. Non-blocking.
    pub channel: OwnedFd,
    /// The read end of the helper's stderr pipe. Non-blocking.
    pub stderr: OwnedFd,
}

/// A helper process this library started and has not yet reaped.
#[derive(Debug)]
pub struct HelperProcess {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    /// Signals go to the whole group: the helper leads a group of its own.
    signal_group: bool,
    status: Option<ExitStatus>,
    /// SIGKILL did not end it within [`KILL_REAP_LIMIT`]: it is stuck in
    /// the kernel, and nothing waits for it again.
    abandoned: bool,
}

/// Start `argv` with a socketpair as its stdin and stdout and a pipe as its
/// stderr, in a process group of its own when `own_group` is set.
pub fn spawn(argv: &[OsString], own_group: bool) -> io::Result<Spawned> {
    let Some((program, args)) = argv.split_first() else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let (ours, theirs) = socketpair()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::from(theirs.try_clone()?))
        .stdout(Stdio::from(theirs))
        .stderr(Stdio::piped());
    if own_group {
        cmd.process_group(0);
    }
    // The helper starts with every signal unblocked and at its default
    // action, whatever the calling thread blocks or the process ignores:
    // a helper that inherited a blocked or ignored SIGTERM would sit out
    // the SIGTERM of a shutdown until the SIGKILL. Only a caller that does
    // block or ignore something pays for the reset: a `pre_exec` makes std
    // fork instead of using posix_spawn.
    if let Some(last_signal) = inherited_signal_state() {
        // SAFETY: the closure runs between fork and exec and makes only
        // async-signal-safe calls (sigaction, sigprocmask) on local data.
        unsafe {
            cmd.pre_exec(move || {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                for sig in 1..=last_signal {
                    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                        // Fails harmlessly for the C library's own signals.
                        libc::sigaction(sig, &default, std::ptr::null_mut());
                    }
                }
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn()?;
    // The Command still holds the child's ends of the channel; close them
    // now so EOF reaches us when the helper exits.
    drop(cmd);
    let pid = child.id() as libc::pid_t;
    let stderr: OwnedFd = child.stderr.take().expect("stderr was piped").into();
    // std's Child does not reap or kill on drop; HelperProcess owns the pid.
    drop(child);

    let mut signal_group = false;
    if own_group {
        // The child did setpgid(0, 0) before exec. Doing it here too closes
        // the window on systems where spawn returns before that. EACCES means
        // the child has already exec'd, which is fine.
        // SAFETY: no pointers.
        unsafe { libc::setpgid(pid, pid) };
        // SAFETY: no pointers.
        signal_group = unsafe { libc::getpgid(pid) } == pid && pid != unsafe { libc::getpgrp() };
    }
    let process = HelperProcess {
        pid,
        pidfd: sys::pidfd_open(pid).ok(),
        signal_group,
        status: None,
        abandoned: false,
    };
    sys::set_nonblocking(ours.as_fd(), true)?;
    sys::set_nonblocking(stderr.as_fd(), true)?;
    Ok(Spawned {
        process,
        channel: ours,
        stderr,
    })
}

/// `Some(highest signal number)` when the calling thread blocks a signal
/// or the process ignores one that a child would inherit; `None` when a
/// child starts clean anyway. SIGPIPE is left out: std resets it in the
/// child, and the helper never raises it.
fn inherited_signal_state() -> Option<i32> {
    let last_signal = libc::SIGRTMAX();
    // SAFETY: all-zero sigset_t and sigaction are valid out-parameters;
    // both calls only fill them.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        for sig in 1..=last_signal {
            if libc::sigismember(&mask, sig) == 1 {
                return Some(last_signal);
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            if sig != libc::SIGPIPE
                && libc::sigaction(sig, std::ptr::null(), &mut action) == 0
                && action.sa_sigaction == libc::SIG_IGN
            {
                return Some(last_signal);
            }
        }
    }
    None
}

fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two fds socketpair writes.
    sys::cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: two new fds owned by nobody else.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Buffers of a few chunks let the sender run ahead while the other
    // side is busy. They are also what a cancel must drain: every byte
    // queued when the user cancels is still read (and, for an upload,
    // written) before the peer sees the CANCEL or STOP, so they are kept
    // to 1 MiB (the kernel doubles it). Failure only costs speed.
    for fd in [&pair.0, &pair.1] {
        for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
            let size: libc::c_int = 1 << 20;
            // SAFETY: passes a live c_int and its size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
    }
    Ok(pair)
}

impl HelperProcess {
    /// A stand-in for a peer that runs in this process (the fuzz targets'
    /// fake helpers, `crate::fuzzing`): pid 0, nothing to signal or reap.
    /// It counts as running until it is killed; [`Self::kill`] ends it at
    /// once.
    pub(crate) fn in_process() -> HelperProcess {
        HelperProcess {
            pid: 0,
            pidfd: None,
            signal_group: false,
            status: None,
            abandoned: false,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The helper's process group, when it leads one of its own.
    pub fn pgid(&self) -> Option<libc::pid_t> {
        self.signal_group.then_some(self.pid)
    }

    /// The exit status, once reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Send `sig` to the helper, or to its whole group when it has its own.
    /// Does nothing once the helper has been reaped, so a recycled pid is
    /// never signalled.
    pub fn signal(&self, sig: libc::c_int) {
        // pid 0 (in_process) would be this process's own group.
        if self.status.is_some() || self.pid == 0 {
            return;
        }
        // The group id is the helper's pid, which cannot be reused until the
        // helper is reaped, so the group is still ours.
        // SAFETY: no pointers.
        if self.signal_group && unsafe { libc::kill(-self.pid, sig) } == 0 {
            return;
        }
        // SAFETY: no pointers; the pid is our unreaped child.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Reap the helper if it has exited.
    pub fn try_reap(&mut self) -> Option<ExitStatus> {
        // pid 0 (in_process): waitpid(0) would reap any child of the group.
        if self.status.is_some() || self.pid == 0 {
            return self.status;
        }
        let reaped = match &self.pidfd {
            Some(p) => match reap_pidfd(p) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.reap_pid(),
                r => r,
            },
            None => self.reap_pid(),
        };
        match reaped {
            Ok(s) => self.status = s,
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                // Another waiter collected it (see ExitStatus::Unknown).
                // It is gone: nothing is signalled or waited for again.
                self.status = Some(ExitStatus::Unknown);
            }
            // EINTR: the next call tries again.
            Err(_) => {}
        }
        self.status
    }

    /// `waitpid` on the helper's pid: for kernels without pidfds. After
    /// another waiter collected the helper, the pid may name someone else.
    fn reap_pid(&self) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        // SAFETY: waits only for our own child's pid; status is a live local.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        match r {
            r if r == self.pid => Ok(Some(ExitStatus::from_wait(status))),
            0 => Ok(None),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Wait up to `timeout` for the helper to exit, waking early for a
    /// cancel when `cancel` is given.
    pub fn wait_exit(&mut self, timeout: Duration, cancel: Option<&CancelState>) -> WaitOutcome {
        let deadline = Instant::now() + timeout;
        let mut step = Duration::from_millis(1);
        loop {
            if let Some(s) = self.try_reap() {
                return WaitOutcome::Exited(s);
            }
            if cancel.is_some_and(|c| c.is_requested()) {
                return WaitOutcome::Cancelled;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WaitOutcome::TimedOut;
            }
            let mut fds = [sys::pollfd(-1, 0), sys::pollfd(-1, 0)];
            let wait = match &self.pidfd {
                Some(p) => {
                    fds[0] = sys::pollfd(p.as_raw_fd(), libc::POLLIN);
                    left
                }
                None => {
                    // No pidfd: poll the child with a growing step.
                    step = (step * 2).min(Duration::from_millis(50));
                    left.min(step)
                }
            };
            if let Some(c) = cancel {
                fds[1] = sys::pollfd(c.wake_fd().as_raw_fd(), libc::POLLIN);
            }
            // Errors other than EINTR cannot happen with valid fds; the loop
            // re-checks everything either way.
            let _ = sys::poll(&mut fds, Some(wait));
            if let (Some(c), true) = (cancel, fds[1].revents != 0) {
                // A stale wake-up is drained, or the loop would spin; a
                // pending cancel is seen at the top of the loop.
                c.settle_wake();
            }
        }
    }

    /// SIGTERM, wait up to `term_wait` (cut short by a cancel when `cancel`
    /// is given), then SIGKILL and reap. Returns the exit status, or `None`
    /// if the process survived even SIGKILL for [`KILL_REAP_LIMIT`] (stuck
    /// in the kernel).
    pub fn terminate(
        &mut self,
        term_wait: Duration,
        cancel: Option<&CancelState>,
    ) -> Option<ExitStatus> {
        if let Some(s) = self.try_reap() {
            return Some(s);
        }
        self.signal(libc::SIGTERM);
        self.exit_or_kill(term_wait, cancel)
    }

    /// Wait up to `timeout` for the process to exit (cut short by a cancel
    /// when `cancel` is given), then SIGKILL and reap it.
    pub fn exit_or_kill(
        &mut self,
        timeout: Duration,
        cancel: Option<&CancelState>,
    ) -> Option<ExitStatus> {
        match self.wait_exit(timeout, cancel) {
            WaitOutcome::Exited(s) => Some(s),
            WaitOutcome::Cancelled | WaitOutcome::TimedOut => self.kill(),
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.try_reap() {
            return Some(s);
        }
        if self.abandoned {
            return None;
        }
        if self.pid == 0 {
            self.status = Some(ExitStatus::Signaled(libc::SIGKILL));
            return self.status;
        }
        self.signal(libc::SIGKILL);
        match self.wait_exit(KILL_REAP_LIMIT, None) {
            WaitOutcome::Exited(s) => Some(s),
            _ => {
                self.abandoned = true;
                None
            }
        }
    }
}

/// `waitid(P_PIDFD)`: reaps exactly the process the pidfd names, never a
/// process that reused its pid. EINVAL on kernels before 5.4.
fn reap_pidfd(pidfd: &OwnedFd) -> io::Result<Option<ExitStatus>> {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a live siginfo_t and a pidfd we own.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled info for a child event (or left the zeroes of
    // "none yet"); si_pid and si_status read its SIGCHLD fields.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    }))
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        // The owner normally reaps first; this is the path for panics and
        // early returns, so no zombie is left behind.
        if self.status.is_none() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, own_group: bool) -> Spawned {
        spawn(&["/bin/sh".into(), "-c".into(), script.into()], own_group).unwrap()
    }

    #[test]
    fn wait_exit_drains_a_stale_cancel_wake_up_instead_of_spinning() {
        let mut s = sh("sleep 30", true);
        let cancel = CancelState::new().unwrap();
        // A token with no cancel behind it, as a handler run in a forked
        // child before exec leaves (see `cancel`).
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live local to the eventfd.
        let n =
            unsafe { libc::write(cancel.wake_fd().as_raw_fd(), (&one as *const u64).cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(
            s.process
                .wait_exit(Duration::from_millis(50), Some(&cancel)),
            WaitOutcome::TimedOut
        );
        let mut p = [sys::pollfd(cancel.wake_fd().as_raw_fd(), libc::POLLIN)];
        assert_eq!(
            sys::poll(&mut p, Some(Duration::ZERO)).unwrap(),
            0,
            "the stale wake-up is still there: the wait polled it in a busy loop"
        );
        s.process.kill();
    }

    #[test]
    fn a_process_given_up_after_sigkill_is_not_waited_for_again() {
        let mut s = sh("sleep 30", true);
        // As kill() leaves it when SIGKILL did not end it in time.
        s.process.abandoned = true;
        let start = Instant::now();
        assert_eq!(s.process.kill(), None);
        // Drop would otherwise spend another KILL_REAP_LIMIT here.
        assert!(start.elapsed() < KILL_REAP_LIMIT / 2);
        s.process.abandoned = false;
        assert!(s.process.kill().is_some());
    }

    #[test]
    fn exit_status_is_reaped() {
        let mut s = sh("exit 3", true);
        assert_eq!(
            s.process.wait_exit(Duration::from_secs(10), None),
            WaitOutcome::Exited(ExitStatus::Exited(3))
        );
    }

    #[test]
    fn own_group_differs_from_ours_and_opt_out_shares_it() {
        let mut s = sh("sleep 10", true);
        // SAFETY: no pointers.
        let (theirs, ours) = unsafe { (libc::getpgid(s.process.pid()), libc::getpgrp()) };
        assert_eq!(theirs, s.process.pid());
        assert_ne!(theirs, ours);
        assert_eq!(s.process.pgid(), Some(s.process.pid()));
        s.process.kill();

        let mut s = sh("sleep 10", false);
        // SAFETY: no pointers.
        let (theirs, ours) = unsafe { (libc::getpgid(s.process.pid()), libc::getpgrp()) };
        assert_eq!(theirs, ours);
        assert_eq!(s.process.pgid(), None);
        s.process.kill();
    }

    #[test]
    fn terminate_escalates_to_sigkill() {
        // The shell ignores TERM, so only KILL ends it.
        let mut s = sh("trap '' TERM; echo ready; while :; do sleep 1; done", true);
        let mut buf = [0u8; 6];
        let mut p = [sys::pollfd(s.channel.as_raw_fd(), libc::POLLIN)];
        sys::poll(&mut p, Some(Duration::from_secs(10))).unwrap();
        // SAFETY: reads into a live buffer.
        unsafe { libc::read(s.channel.as_raw_fd(), buf.as_mut_ptr().cast(), 6) };
        assert_eq!(&buf, b"ready\n");
        let st = s.process.terminate(Duration::from_millis(200), None);
        assert_eq!(st, Some(ExitStatus::Signaled(libc::SIGKILL)));
    }

    #[test]
    fn wait_exit_times_out_and_cancels() {
        let mut s = sh("sleep 10", true);
        assert_eq!(
            s.process.wait_exit(Duration::from_millis(50), None),
            WaitOutcome::TimedOut
        );
        let c = CancelState::new().unwrap();
        c.request();
        assert_eq!(
            s.process.wait_exit(Duration::from_secs(10), Some(&c)),
            WaitOutcome::Cancelled
        );
        assert_eq!(s.process.kill(), Some(ExitStatus::Signaled(libc::SIGKILL)));
    }

    #[test]
    fn group_signal_reaches_grandchildren() {
        let s = sh("sleep 30 & echo $!; wait", true);
        let mut p = [sys::pollfd(s.channel.as_raw_fd(), libc::POLLIN)];
        sys::poll(&mut p, Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 32];
        // SAFETY: reads into a live buffer.
        let n = unsafe { libc::read(s.channel.as_raw_fd(), buf.as_mut_ptr().cast(), 32) };
        let grandchild: i32 = std::str::from_utf8(&buf[..n as usize])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut proc_ = s.process;
        proc_.kill();
        // The grandchild got SIGKILL too; init reaps it. Wait for it to go.
        let deadline = Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie waiting for whoever reaps orphans here.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        };
        while alive() {
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived the group kill"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn missing_program_fails_to_spawn() {
        let e = spawn(&["/nonexistent/barge-helper".into()], true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
