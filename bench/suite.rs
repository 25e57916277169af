//! The benchmark suite: barge and its peers side by side, in one run, as
//! ratios to `cp` of the same data. `bench/run.sh` runs it and writes
//! `BENCHMARKS.md`; see that file for what each table means.
//!
//! Modes:
//! - `cargo bench --bench suite` (what `bench/run.sh` does): the full suite.
//!   Flags after `--`: `--quick` (small sizes, few runs), `--dir DIR`
//!   (scratch directory, default `/tmp/barge-bench`), `--out FILE`
//!   (default `BENCHMARKS.md` in the source tree), `--only a,b` (groups:
//!   file, launch, cancel, memory, many, checksum, tree).
//! - `cargo test` runs this file as a test binary without `--bench`: a smoke
//!   run of every group at tiny sizes in a temporary directory, which fails
//!   on any failed command or wrong output and writes nothing to the tree.
//!
//! Commands alternate (A B C A B C ...), the first round is a warm-up, and
//! every destination is removed before each run. Timing regressions are
//! caught by comparing the ratios within one run, never by absolute times.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use barge::{Error, Handle};

const BARGE: &str = env!("CARGO_BIN_EXE_barge");
const HELPER: &str = env!("CARGO_BIN_EXE_barge-helper");
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Sizes and counts of one run of the suite.
#[derive(Clone)]
struct Plan {
    quick: bool,
    smoke: bool,
    dir: PathBuf,
    out: Option<PathBuf>,
    groups: Vec<String>,
    file_size: u64,
    warmup: usize,
    runs: usize,
    launch_runs: usize,
    cancels_per_direction: usize,
    cancel_file: u64,
    memory_sizes: Vec<u64>,
    many_threads: usize,
    many_each: u64,
    tree_files: usize,
}

impl Plan {
    fn from_args() -> Plan {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench = args.iter().any(|a| a == "--bench");
        let quick = args.iter().any(|a| a == "--quick");
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let smoke = !bench;
        let small = smoke || quick;
        let dir = match value("--dir") {
            Some(d) => PathBuf::from(d),
            None if smoke => {
                std::env::temp_dir().join(format!("barge-bench-smoke-{}", std::process::id()))
            }
            None => PathBuf::from("/tmp/barge-bench"),
        };
        let out = if smoke {
            None
        } else {
            Some(value("--out").map(PathBuf::from).unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(if quick {
                    "target/BENCHMARKS-quick.md"
                } else {
                    "BENCHMARKS.md"
                })
            }))
        };
        // Empty: every group (the list in `run`).
        let groups = value("--only")
            .map(|g| g.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        Plan {
            quick,
            smoke,
            dir,
            out,
            groups,
            file_size: if small { 8 * MIB } else { GIB },
            warmup: 1,
            runs: if smoke { 2 } else { 5 },
            launch_runs: if smoke {
                10
            } else if quick {
                50
            } else {
                200
            },
            cancels_per_direction: if smoke {
                10
            } else if quick {
                50
            } else {
                500
            },
            cancel_file: if small { 16 * MIB } else { 64 * MIB },
            memory_sizes: if small {
                vec![MIB, 16 * MIB]
            } else {
                vec![64 * MIB, 4 * GIB]
            },
            many_threads: if smoke { 4 } else { 32 },
            many_each: if smoke {
                MIB
            } else if quick {
                4 * MIB
            } else {
                64 * MIB
            },
            tree_files: if small { 200 } else { 5000 },
        }
    }

    fn wants(&self, group: &str) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }
}

// ---------------------------------------------------------------- commands

/// One command of a group: how it is shown, and how it runs once.
struct Bench {
    name: String,
    /// The exact shell command, or a description of the library calls.
    shown: String,
    /// Runs before the timer starts: removes the destination.
    prepare: Box<dyn FnMut()>,
    run: Box<dyn FnMut() -> Result<(), String>>,
}

/// An external command: argv, optional stdin text and environment.
#[derive(Clone)]
struct Ext {
    argv: Vec<OsString>,
    stdin: Option<String>,
    env: Vec<(String, String)>,
    stdout_null: bool,
}

impl Ext {
    fn new<S: Into<OsString>>(argv: impl IntoIterator<Item = S>) -> Ext {
        Ext {
            argv: argv.into_iter().map(Into::into).collect(),
            stdin: None,
            env: Vec::new(),
            stdout_null: true,
        }
    }

    fn stdin(mut self, s: String) -> Ext {
        self.stdin = Some(s);
        self
    }

    fn env(mut self, k: &str, v: &str) -> Ext {
        self.env.push((k.into(), v.into()));
        self
    }

    fn shown(&self) -> String {
        let mut s = String::new();
        if let Some(input) = &self.stdin {
            let _ = write!(s, "echo {:?} | ", input.trim_end());
        }
        for (k, v) in &self.env {
            let _ = write!(s, "{k}={v} ");
        }
        let words: Vec<String> = self
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        match &words[..] {
            // A shell pipeline is shown as the pipeline itself.
            [sh, c, script] if sh == "sh" && c == "-c" => s.push_str(script),
            _ => s.push_str(&words.join(" ")),
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        if self.stdout_null {
            c.stdout(Stdio::null());
        }
        c.stderr(Stdio::piped());
        c
    }

    /// Run to completion; returns the peak RSS (KiB) of the process.
    fn run(&self) -> Result<u64, String> {
        let mut child = self
            .command()
            .spawn()
            .map_err(|e| format!("{}: {e}", self.shown()))?;
        if let Some(input) = &self.stdin {
            let mut w = child.stdin.take().expect("piped");
            w.write_all(input.as_bytes())
                .map_err(|e| format!("{}: stdin: {e}", self.shown()))?;
        }
        let mut err = child.stderr.take().expect("piped");
        let pid = child.id() as libc::pid_t;
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child, with live out-parameters. The
        // std Child is not waited on afterwards.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let stderr = reader.join().unwrap_or_default();
        if r != pid {
            return Err(format!("{}: wait4 failed", self.shown()));
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(format!(
                "{} failed (wait status {status:#x}): {}",
                self.shown(),
                stderr.trim()
            ));
        }
        Ok(usage.ru_maxrss as u64)
    }
}

fn ext_bench(name: &str, cmd: Ext, before: impl FnMut() + 'static) -> Bench {
    Bench {
        name: name.into(),
        shown: cmd.shown(),
        prepare: Box::new(before),
        run: Box::new(move || cmd.run().map(|_| ())),
    }
}

fn remove(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

fn remover(p: &Path) -> impl FnMut() + 'static {
    let p = p.to_path_buf();
    move || remove(&p)
}

fn remover_box(p: &Path) -> Box<dyn FnMut()> {
    Box::new(remover(p))
}

/// A handle on the helper built with this suite, with the fast path as
/// asked.
fn handle() -> Result<Handle, String> {
    let h = Handle::new().map_err(|e| e.to_string())?;
    Ok(h)
}

fn sftp(script: String) -> Ext {
    Ext::new(["sftp", "-q", "-b", "-", "-D", SFTP_SERVER]).stdin(script)
}

// ---------------------------------------------------------------- timing

struct Timed {
    name: String,
    shown: String,
    secs: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

fn min(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
}

/// Run the commands alternately, in an order that rotates by one each
/// round: a warm-up round, then `runs` counted rounds. `check` runs after every run of every command. Before each
/// run, outside the timing, the destination is removed and the page
/// cache's dirty data written back (sync), so no run pays for the
/// writeback of the one before it.
fn alternate(
    plan: &Plan,
    benches: Vec<Bench>,
    check: &mut dyn FnMut(&str) -> Result<(), String>,
) -> Result<Vec<Timed>, String> {
    let mut benches = benches;
    let mut timed: Vec<Timed> = benches
        .iter()
        .map(|b| Timed {
            name: b.name.clone(),
            shown: b.shown.clone(),
            secs: Vec::new(),
        })
        .collect();
    let n = benches.len();
    for round in 0..plan.warmup + plan.runs {
        // Each round starts one command later (A B C, B C A, C A B, ...):
        // a run can be slowed by the one before it (a stream-path upload
        // right after a `copy_file_range` copy of the same size has run
        // two to four times slower on this machine), so no command always
        // follows the same one.
        for k in 0..n {
            let i = (round + k) % n;
            let (b, t) = (&mut benches[i], &mut timed[i]);
            (b.prepare)();
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            let start = Instant::now();
            (b.run)()?;
            let took = start.elapsed().as_secs_f64();
            check(&b.name)?;
            if round >= plan.warmup {
                t.secs.push(took);
            }
        }
        eprint!(".");
    }
    eprintln!();
    Ok(timed)
}

/// A table of times as ratios to the first row (the limit). Each run is
/// divided by the limit's run of the same round, so load that changes from
/// round to round cancels out; the headline is the median of those ratios
/// and the range their min–max. The plain ratio of medians is shown too.
fn ratio_table(out: &mut String, timed: &[Timed]) -> Vec<(String, f64)> {
    let base = median(&timed[0].secs);
    let _ = writeln!(
        out,
        "| command | median s | ratio to `{0}`, median of rounds | min–max | ratio of medians |",
        timed[0].name
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for t in timed {
        let m = median(&t.secs);
        let paired: Vec<f64> = t
            .secs
            .iter()
            .zip(&timed[0].secs)
            .map(|(a, b)| a / b)
            .collect();
        let r = median(&paired);
        let _ = writeln!(
            out,
            "| {} | {:.3} | **{:.2}** | {:.2}–{:.2} | {:.2} |",
            t.name.replace('|', "\\|"),
            m,
            r,
            min(&paired),
            max(&paired),
            m / base
        );
        ratios.push((t.name.clone(), r));
    }
    ratios
}

fn commands_list(out: &mut String, timed: &[Timed]) {
    let _ = writeln!(out, "\nExact commands:\n");
    for t in timed {
        let _ = writeln!(out, "- {}: `{}`", t.name, t.shown);
    }
}

// ---------------------------------------------------------------- files

/// A source file held in the page cache: mapped and locked while this
/// lives. Without it, memory reclaim running between the runs (DAMON
/// pageout on the machines barge is measured on) drops cold file pages,
/// and whichever run comes next reads the source from disk.
struct Pinned {
    addr: *mut libc::c_void,
    len: usize,
}

impl Pinned {
    fn new(path: &Path) -> Result<Pinned, String> {
        use std::os::fd::AsRawFd;
        let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
        if len == 0 {
            return Ok(Pinned {
                addr: std::ptr::null_mut(),
                len,
            });
        }
        // SAFETY: a read-only shared mapping of a file we opened; it is
        // never read through, only locked, and unmapped in drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!(
                "mmap {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let pinned = Pinned { addr, len };
        // SAFETY: the range is the mapping made above.
        if unsafe { libc::mlock(addr, len) } != 0 {
            return Err(format!(
                "mlock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(pinned)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in new(), unmapped once.
            unsafe { libc::munmap(self.addr, self.len) };
        }
    }
}

/// Make `path` hold `size` pseudo-random bytes (unless it already does),
/// and hold it in the page cache until the returned guard is dropped.
fn random_source(path: &Path, size: u64) -> Result<Pinned, String> {
    make_random_file(path, size)?;
    Pinned::new(path)
}

fn make_random_file(path: &Path, size: u64) -> Result<(), String> {
    if fs::metadata(path).map(|m| m.len() == size).unwrap_or(false) {
        return Ok(());
    }
    let mut f = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            w.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    f.sync_all().map_err(|e| e.to_string())
}

fn make_sparse_file(path: &Path, size: u64) -> Result<(), String> {
    let f = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(size).map_err(|e| e.to_string())
}

fn hash_file(path: &Path) -> Result<(u64, u64), String> {
    let mut f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = barge::wire::StreamChecksum::new();
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut len = 0u64;
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok((len, h.digest()));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}

// ---------------------------------------------------------------- machine

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine(plan: &Plan) -> String {
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let fstype = sh(&format!("findmnt -no FSTYPE -T {}", plan.dir.display()));
    let mount = sh(&format!(
        "df -P {} | tail -1 | awk '{{print $1\" on \"$6}}'",
        plan.dir.display()
    ));
    format!(
        "- cores: {} ({})\n- kernel: {}\n- memory: {}\n- scratch directory: `{}`, filesystem {} ({})\n- peers: {}; {}\n- barge: {} built with `cargo bench` (release profile)\n",
        sh("nproc"),
        cpu.trim(),
        sh("uname -sr"),
        sh("grep MemTotal /proc/meminfo | awk '{print $2/1048576 \" GiB\"}'"),
        plan.dir.display(),
        fstype,
        mount,
        sh("ssh -V 2>&1"),
        sh("rsync --version | head -1"),
        sh(&format!("{BARGE} --version 2>/dev/null || echo barge {}", env!("CARGO_PKG_VERSION"))),
    )
}

fn load() -> String {
    sh("cat /proc/loadavg | cut -d' ' -f1-3")
}

/// Install the peers when missing (as root, from Debian's packages).
fn ensure_peers() {
    let have = Path::new(SFTP_SERVER).exists()
        && Command::new("rsync").arg("--version").output().is_ok()
        && Command::new("sftp").arg("-h").output().is_ok();
    if !have {
        eprintln!("bench: installing openssh-sftp-server, openssh-client and rsync");
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "openssh-sftp-server",
                "openssh-client",
                "rsync",
            ])
            .status();
    }
}

fn main() {
    let plan = Plan::from_args();
    // Every handle, and the CLI, use the helper built with this suite.
    std::env::set_var("BARGE_HELPER", HELPER);
    if let Err(e) = run(&plan) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
    if plan.smoke {
        let _ = fs::remove_dir_all(&plan.dir);
    }
}

/// What the summary table says about one target.
struct Verdict {
    target: &'static str,
    bound: String,
    measured: String,
    holds: Option<bool>,
}

/// Free page reporting (virtio-balloon) hands memory the guest frees to
/// the host, which unmaps it; the next page cache a writer allocates there
/// costs a host page fault per page, which under nested virtualization
/// made 1 GiB writes two to four times slower whenever the run before had
/// freed its destination. While this lives, reporting is suspended: its
/// minimum block order is set one above the largest order the buddy
/// allocator has (so no free block qualifies), and restored on drop.
struct PageReportingSuspended {
    knob: PathBuf,
    was: String,
}

impl PageReportingSuspended {
    /// `Err` with what the Machine section says when reporting is absent or
    /// cannot be changed (not root).
    fn new() -> Result<PageReportingSuspended, String> {
        let knob = PathBuf::from("/sys/module/page_reporting/parameters/page_reporting_order");
        let was = fs::read_to_string(&knob)
            .map_err(|_| "free page reporting: not present".to_string())?
            .trim()
            .to_string();
        // /proc/buddyinfo has one column per order, after four words.
        let orders = fs::read_to_string("/proc/buddyinfo")
            .ok()
            .and_then(|b| {
                b.lines()
                    .next()
                    .map(|l| l.split_whitespace().count().saturating_sub(4))
            })
            .filter(|&n| n > 0)
            .ok_or("free page reporting: present, left on (no /proc/buddyinfo)")?;
        fs::write(&knob, orders.to_string()).map_err(|e| {
            format!("free page reporting: present, left on (page_reporting_order {was}: {e})")
        })?;
        Ok(PageReportingSuspended { knob, was })
    }
}

impl Drop for PageReportingSuspended {
    fn drop(&mut self) {
        let _ = fs::write(&self.knob, &self.was);
    }
}

fn run(plan: &Plan) -> Result<(), String> {
    ensure_peers();
    fs::create_dir_all(&plan.dir).map_err(|e| format!("{}: {e}", plan.dir.display()))?;
    // Not for the smoke run inside `cargo test`: that must not touch the
    // machine's settings.
    let reporting = match plan.smoke {
        true => Err("free page reporting: left as it is (smoke run)".to_string()),
        false => PageReportingSuspended::new(),
    };
    let reporting_line = match &reporting {
        Ok(r) => format!(
            "free page reporting: suspended during the run (page_reporting_order {} raised to {}, restored after), see \"Reading these figures\"",
            r.was,
            fs::read_to_string(&r.knob).unwrap_or_default().trim()
        ),
        Err(why) => why.clone(),
    };
    let load_before = load();
    let started = Instant::now();
    let mut body = String::new();
    let mut verdicts: Vec<Verdict> = Vec::new();

    type Group = fn(&Plan, &mut String, &mut Vec<Verdict>) -> Result<(), String>;
    let groups: [(&str, Group); 7] = [
        ("file", file_groups),
        ("launch", launch_group),
        ("cancel", cancel_group),
        ("memory", memory_group),
        ("many", many_group),
        ("checksum", checksum_group),
        ("tree", tree_group),
    ];
    // A group that fails is reported in the document and fails the run,
    // but the other groups still run.
    let mut failures = Vec::new();
    for (name, group) in groups {
        if !plan.wants(name) {
            continue;
        }
        let mut section = String::new();
        match group(plan, &mut section, &mut verdicts) {
            Ok(()) => body.push_str(&section),
            Err(e) => {
                eprintln!("bench: group {name} failed: {e}");
                let _ = writeln!(
                    body,
                    "## Group `{name}` failed\n\n`{}`\n",
                    e.replace('`', "'")
                );
                verdicts.push(Verdict {
                    target: "a group of the suite",
                    bound: format!("`{name}` runs to the end"),
                    measured: "failed, see its section".into(),
                    holds: Some(false),
                });
                failures.push(format!("{name}: {e}"));
            }
        }
    }

    let mut doc = String::new();
    let _ = writeln!(doc, "# barge benchmarks\n");
    let _ = writeln!(
        doc,
        "Written by `bench/run.sh{}` ({}). Every figure comes from {} counted rounds after {} warm-up round; in each round the commands run one after another, and each round starts one command later than the one before (A B C, B C A, C A B, …: a run can be slowed by the one before it, see \"Reading these figures\"); before each run, outside the timing, its destination is removed and the page cache's dirty data written back (`sync`), so no run pays for the writeback of another. Ratios are to the limit (`cp` of the same data) in the same round: each run is divided by that round's `cp`, and the table gives the median and min–max of those ratios, with the ratio of the median times beside them. Absolute times on this shared machine move from run to run, so compare ratios, never single times.\n",
        if plan.quick { " --quick" } else { "" },
        sh("date -u +%Y-%m-%dT%H:%MZ"),
        plan.runs,
        plan.warmup
    );
    let _ = writeln!(doc, "## Machine\n");
    doc.push_str(&machine(plan));
    let _ = writeln!(
        doc,
        "- {reporting_line}\n- load (1/5/15-minute averages): {} at the start, {} at the end (the suite itself keeps up to 2 processes busy; more means other work shared the cores)\n- suite took {:.0} s\n",
        load_before,
        load(),
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(doc, "## Targets\n");
    let _ = writeln!(doc, "| target | bound | measured | holds |");
    let _ = writeln!(doc, "|---|---|---|---|");
    for v in &verdicts {
        let _ = writeln!(
            doc,
            "| {} | {} | {} | {} |",
            v.target,
            v.bound,
            v.measured,
            match v.holds {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        );
    }
    doc.push('\n');
    doc.push_str(&body);
    // What the figures mean, maintained by hand.
    let notes = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/notes.md");
    if let Ok(text) = fs::read_to_string(&notes) {
        doc.push_str(&text);
    }
    if let Some(out) = &plan.out {
        fs::write(out, &doc).map_err(|e| format!("{}: {e}", out.display()))?;
        eprintln!("bench: wrote {}", out.display());
    } else {
        println!("{doc}");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("groups failed: {}", failures.join("; ")))
    }
}

// ---------------------------------------------------------------- 1 GiB files

fn file_groups(plan: &Plan, body: &mut String, verdicts: &mut Vec<Verdict>) -> Result<(), String> {
    let d = &plan.dir;
    let src = d.join("src.bin");
    eprintln!("bench: preparing a {} MiB source", plan.file_size / MIB);
    let _pinned = random_source(&src, plan.file_size)?;
    let (len, sum) = hash_file(&src)?;
    let dst = d.join("dst.bin");
    let s = |p: &Path| p.to_string_lossy().into_owned();

    // Upload: local SRC to DST through the helper.
    let mut up = vec![
        ext_bench("cp", Ext::new(["cp", &s(&src), &s(&dst)]), remover(&dst)),
        ext_bench(
            "barge put",
            Ext::new([BARGE, "put", &s(&src), &s(&dst)]),
            remover(&dst),
        ),
        ext_bench(
            "barge put, stream path",
            Ext::new([BARGE, "put", &s(&src), &s(&dst)]).env("BARGE_FASTPATH", "0"),
            remover(&dst),
        ),
        lib_bench("library upload", &src, &dst, true, true),
        lib_bench("library upload, stream path", &src, &dst, true, false),
        ext_bench(
            "sftp -D put",
            sftp(format!("put {} {}\n", s(&src), s(&dst))),
            remover(&dst),
        ),
        ext_bench(
            "rsync --whole-file",
            Ext::new(["rsync", "--whole-file", &s(&src), &s(&dst)]),
            remover(&dst),
        ),
        ext_bench(
            "cat | cat",
            Ext::new([
                "sh".to_string(),
                "-c".to_string(),
                format!("cat {} | cat > {}", s(&src), s(&dst)),
            ]),
            remover(&dst),
        ),
    ];
    if plan.smoke {
        up.truncate(5);
    }
    let check_dst = |dst: PathBuf| {
        move |name: &str| -> Result<(), String> {
            let m = fs::metadata(&dst).map_err(|e| format!("{name}: {}: {e}", dst.display()))?;
            if m.len() != len {
                return Err(format!(
                    "{name}: {} has {} bytes, not {len}",
                    dst.display(),
                    m.len()
                ));
            }
            Ok(())
        }
    };
    let size_label = if plan.file_size >= GIB {
        format!("{} GiB", plan.file_size / GIB)
    } else {
        format!("{} MiB", plan.file_size / MIB)
    };
    eprintln!("bench: upload, {size_label}");
    let timed = alternate(plan, up, &mut check_dst(dst.clone()))?;
    if hash_file(&dst)? != (len, sum) {
        return Err("the last upload's content differs from the source".into());
    }
    let _ = writeln!(
        body,
        "## One {size_label} file, upload (local file → helper)\n"
    );
    let ratios = ratio_table(body, &timed);
    commands_list(body, &timed);
    body.push('\n');
    let up_ratios = ratios;

    // Download: the helper's SRC to a local DST.
    let mut down = vec![
        ext_bench("cp", Ext::new(["cp", &s(&src), &s(&dst)]), remover(&dst)),
        ext_bench(
            "barge get",
            Ext::new([BARGE, "get", &s(&src), &s(&dst)]),
            remover(&dst),
        ),
        ext_bench(
            "barge get, stream path",
            Ext::new([BARGE, "get", &s(&src), &s(&dst)]).env("BARGE_FASTPATH", "0"),
            remover(&dst),
        ),
        lib_bench("library download", &src, &dst, false, true),
        lib_bench("library download, stream path", &src, &dst, false, false),
        lib_fd_download(
            "library download into an fd, stream path (recv + write)",
            &src,
            &dst,
        ),
        ext_bench(
            "sftp -D get",
            sftp(format!("get {} {}\n", s(&src), s(&dst))),
            remover(&dst),
        ),
    ];
    if plan.smoke {
        // The CLI's rows and the copying receiver's, which no other group
        // runs.
        down.retain(|b| {
            b.name == "cp" || b.name.starts_with("barge") || b.name.contains("into an fd")
        });
    }
    eprintln!("bench: download, {size_label}");
    let timed = alternate(plan, down, &mut check_dst(dst.clone()))?;
    if hash_file(&dst)? != (len, sum) {
        return Err("the last download's content differs from the source".into());
    }
    remove(&dst);
    let _ = writeln!(
        body,
        "## One {size_label} file, download (helper → local file)\n"
    );
    let down_ratios = ratio_table(body, &timed);
    commands_list(body, &timed);
    body.push('\n');

    let find = |r: &[(String, f64)], n: &str| r.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
    for (dir, ratios, verb) in [
        ("upload", &up_ratios, "put"),
        ("download", &down_ratios, "get"),
    ] {
        if let Some(f) = find(ratios, &format!("barge {verb}")) {
            verdicts.push(Verdict {
                target: "fast path (CLI)",
                bound: format!("{dir} ≤ 1.1× cp"),
                measured: format!("{f:.2}×"),
                holds: Some(f <= 1.1),
            });
        }
        if let Some(f) = find(ratios, &format!("barge {verb}, stream path")) {
            verdicts.push(Verdict {
                target: "stream path (CLI)",
                bound: format!("{dir} ≤ 1.3× cp"),
                measured: format!("{f:.2}×"),
                holds: Some(f <= 1.3),
            });
        }
    }
    Ok(())
}

/// A whole library session in-process: create, upload or download, shut
/// down.
fn lib_bench(name: &str, src: &Path, dst: &Path, upload: bool, fast: bool) -> Bench {
    let src = src.to_path_buf();
    let dst = dst.to_path_buf();
    let verb = if upload { "upload" } else { "download" };
    Bench {
        name: name.into(),
        shown: format!(
            "in-process: Handle::new(){}; h.{verb}(SRC, DST); h.shutdown()",
            if fast { "" } else { "; h.set_fast_path(false)" }
        ),
        prepare: remover_box(&dst),
        run: Box::new(move || {
            let mut h = handle()?;
            set_fast(&mut h, fast);
            let r = if upload {
                h.upload(&src, &dst)
            } else {
                h.download(&src, &dst)
            };
            r.map_err(|e| format!("{verb}: {e}"))?;
            h.shutdown().map_err(|e| format!("shutdown: {e}"))
        }),
    }
}

/// A stream-path download into a file the caller opened: the client
/// receives it the copying way (`recv`, then `write`), where a path gets
/// the one-copy receiver. The pair shows what the one copy saves, in the
/// real pipeline.
fn lib_fd_download(name: &str, src: &Path, dst: &Path) -> Bench {
    let src = src.to_path_buf();
    let dst = dst.to_path_buf();
    Bench {
        name: name.into(),
        shown: "in-process: Handle::new(); h.set_fast_path(false); fd = open(DST, O_WRONLY|O_CREAT|O_EXCL); h.download_fd(SRC, fd); h.shutdown()".into(),
        prepare: remover_box(&dst),
        run: Box::new(move || {
            use std::os::fd::AsFd;
            let mut h = handle()?;
            set_fast(&mut h, false);
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dst)
                .map_err(|e| format!("{}: {e}", dst.display()))?;
            h.download_fd(&src, f.as_fd())
                .map_err(|e| format!("download_fd: {e}"))?;
            h.shutdown().map_err(|e| format!("shutdown: {e}"))
        }),
    }
}

fn set_fast(h: &mut Handle, fast: bool) {
    if !fast {
        h.set_fast_path(false);
    }
}

// ---------------------------------------------------------------- launch

fn launch_group(plan: &Plan, body: &mut String, verdicts: &mut Vec<Verdict>) -> Result<(), String> {
    eprintln!("bench: launch");
    let d = &plan.dir;
    let empty = d.join("empty");
    fs::write(&empty, b"").map_err(|e| e.to_string())?;
    let dst = d.join("empty.copy");
    let n = plan.launch_runs;
    // In-process: create + launch + one stat + close.
    let mut lib = Vec::with_capacity(n);
    let mut cli = Vec::with_capacity(n);
    let mut sftp_pwd = Vec::with_capacity(n);
    let cli_cmd = Ext::new([
        BARGE.to_string(),
        "put".into(),
        empty.to_string_lossy().into_owned(),
        dst.to_string_lossy().into_owned(),
    ]);
    let sftp_cmd = sftp("pwd\n".into());
    for i in 0..n + 5 {
        let t = Instant::now();
        let mut h = handle()?;
        h.launch().map_err(|e| e.to_string())?;
        h.stat("/").map_err(|e| e.to_string())?;
        drop(h);
        let a = t.elapsed().as_secs_f64();
        remove(&dst);
        let t = Instant::now();
        cli_cmd.run()?;
        let b = t.elapsed().as_secs_f64();
        let t = Instant::now();
        sftp_cmd.run()?;
        let c = t.elapsed().as_secs_f64();
        if i >= 5 {
            lib.push(a * 1e3);
            cli.push(b * 1e3);
            sftp_pwd.push(c * 1e3);
        }
    }
    remove(&dst);
    let _ = writeln!(
        body,
        "## Launch and one round trip\n\n{n} counted runs after 5 warm-ups, alternating. Milliseconds.\n"
    );
    let _ = writeln!(body, "| what | median | p90 | p99 | min | max |");
    let _ = writeln!(body, "|---|---:|---:|---:|---:|---:|");
    for (what, v) in [
        (
            "library: `Handle::new`, `launch`, `stat(\"/\")`, drop (graceful shutdown)",
            &lib,
        ),
        (
            "CLI: `barge put EMPTY DST` (whole process: launch, PUT, shutdown)",
            &cli,
        ),
        (
            "OpenSSH: `echo pwd | sftp -q -b - -D /usr/lib/openssh/sftp-server`",
            &sftp_pwd,
        ),
    ] {
        let _ = writeln!(
            body,
            "| {what} | **{:.2}** | {:.2} | {:.2} | {:.2} | {:.2} |",
            median(v),
            percentile(v, 90.0),
            percentile(v, 99.0),
            min(v),
            max(v)
        );
    }
    body.push('\n');
    verdicts.push(Verdict {
        target: "launch (library)",
        bound: "median ≤ 5 ms".into(),
        measured: format!(
            "{:.2} ms (sftp -D pwd: {:.2} ms)",
            median(&lib),
            median(&sftp_pwd)
        ),
        holds: Some(median(&lib) <= 5.0),
    });
    Ok(())
}

// ---------------------------------------------------------------- cancel

struct CancelStats {
    latencies_ms: Vec<f64>,
    next_op_ms: Vec<f64>,
    completed: usize,
}

/// `count` cancels at random points of transfers of `src`: the time from
/// `cancel()` to the call's return, and from then to the next successful
/// operation (a STAT).
fn cancels(
    src: &Path,
    dst: &Path,
    upload: bool,
    fast: bool,
    count: usize,
    seed: u64,
) -> Result<CancelStats, String> {
    let mut h = handle()?;
    set_fast(&mut h, fast);
    let op = |h: &mut Handle| {
        if upload {
            h.upload(src, dst)
        } else {
            h.download(src, dst)
        }
    };
    // Calibrate: the median time of a whole transfer.
    let mut whole = Vec::new();
    for _ in 0..3 {
        remove(dst);
        let t = Instant::now();
        op(&mut h).map_err(|e| e.to_string())?;
        whole.push(t.elapsed().as_secs_f64());
    }
    remove(dst);
    let span = median(&whole);
    let mut rng = seed | 1;
    let mut stats = CancelStats {
        latencies_ms: Vec::new(),
        next_op_ms: Vec::new(),
        completed: 0,
    };
    let mut attempts = 0;
    while stats.latencies_ms.len() < count {
        attempts += 1;
        if attempts > count * 4 {
            return Err(format!(
                "only {} of {attempts} cancels landed inside a transfer",
                stats.latencies_ms.len()
            ));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at = Duration::from_secs_f64(span * (rng % 1000) as f64 / 1000.0 * 0.9);
        let c = h.canceller();
        let go = Arc::new(Barrier::new(2));
        let g = go.clone();
        let canceller = std::thread::spawn(move || {
            g.wait();
            std::thread::sleep(at);
            let t0 = Instant::now();
            c.cancel();
            t0
        });
        go.wait();
        let r = op(&mut h);
        let returned = Instant::now();
        let t0 = canceller.join().expect("canceller thread");
        match r {
            Err(Error::Cancelled) => {
                stats
                    .latencies_ms
                    .push(returned.saturating_duration_since(t0).as_secs_f64() * 1e3);
                let t = Instant::now();
                h.stat("/")
                    .map_err(|e| format!("the operation after a cancel: {e}"))?;
                stats.next_op_ms.push(t.elapsed().as_secs_f64() * 1e3);
                if dst.exists() && upload {
                    return Err(format!("a cancelled upload left {}", dst.display()));
                }
            }
            Ok(()) => {
                stats.completed += 1;
                h.clear_cancel();
                remove(dst);
            }
            Err(e) => return Err(format!("a cancelled transfer failed otherwise: {e}")),
        }
        if !upload && dst.exists() {
            return Err(format!("a cancelled download left {}", dst.display()));
        }
    }
    h.shutdown().map_err(|e| e.to_string())?;
    Ok(stats)
}

fn cancel_group(plan: &Plan, body: &mut String, verdicts: &mut Vec<Verdict>) -> Result<(), String> {
    let d = &plan.dir;
    let src = d.join("cancel-src.bin");
    let _pinned = random_source(&src, plan.cancel_file)?;
    let dst = d.join("cancel-dst.bin");
    let n = plan.cancels_per_direction;
    let _ = writeln!(
        body,
        "## Cancel latency\n\n{} cancels per path ({n} uploads and {n} downloads of a {} MiB file), each at a uniformly random time within the transfer, from another thread. Latency is from `cancel()` to the call's return; \"next op\" is the time of the STAT that follows on the same handle. Milliseconds.\n",
        2 * n,
        plan.cancel_file / MIB
    );
    let _ = writeln!(
        body,
        "| path | cancels | p50 | p90 | p99 | max | next op p50 | next op p99 | transfers that finished first |"
    );
    let _ = writeln!(body, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for fast in [true, false] {
        eprintln!("bench: cancel, fast path {fast}");
        let up = cancels(&src, &dst, true, fast, n, 0x5eed_0001)?;
        let down = cancels(&src, &dst, false, fast, n, 0x5eed_0002)?;
        let mut lat = up.latencies_ms.clone();
        lat.extend(&down.latencies_ms);
        let mut next = up.next_op_ms.clone();
        next.extend(&down.next_op_ms);
        let name = if fast {
            "default (fast path when available)"
        } else {
            "stream path"
        };
        let _ = writeln!(
            body,
            "| {name} | {} | **{:.3}** | {:.3} | **{:.3}** | {:.3} | {:.3} | {:.3} | {} |",
            lat.len(),
            median(&lat),
            percentile(&lat, 90.0),
            percentile(&lat, 99.0),
            max(&lat),
            median(&next),
            percentile(&next, 99.0),
            up.completed + down.completed
        );
        for (dir, s) in [("uploads", &up), ("downloads", &down)] {
            let _ = writeln!(
                body,
                "| — {dir} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
                s.latencies_ms.len(),
                median(&s.latencies_ms),
                percentile(&s.latencies_ms, 90.0),
                percentile(&s.latencies_ms, 99.0),
                max(&s.latencies_ms),
                median(&s.next_op_ms),
                percentile(&s.next_op_ms, 99.0),
                s.completed
            );
        }
        verdicts.push(Verdict {
            target: if fast {
                "cancel latency (default path)"
            } else {
                "cancel latency (stream path)"
            },
            bound: "p50 ≤ 1 ms, p99 ≤ 5 ms".into(),
            measured: format!(
                "p50 {:.3} ms, p99 {:.3} ms over {}",
                median(&lat),
                percentile(&lat, 99.0),
                lat.len()
            ),
            holds: Some(median(&lat) <= 1.0 && percentile(&lat, 99.0) <= 5.0),
        });
    }
    body.push('\n');
    remove(&dst);
    Ok(())
}

// ---------------------------------------------------------------- memory

fn memory_group(plan: &Plan, body: &mut String, verdicts: &mut Vec<Verdict>) -> Result<(), String> {
    let d = &plan.dir;
    let _ = writeln!(
        body,
        "## Peak memory of the CLI process\n\nPeak RSS (`ru_maxrss` from `wait4`) of the `barge` process, for a sparse source file (read through the same paths as any regular file). Downloads write to standard output, which is `/dev/null`. A spawned child's `ru_maxrss` starts from its parent's peak (the child begins as a vfork of the suite), so the suite resets its own peak before each run (`/proc/self/clear_refs`), and each figure is the larger of the CLI's peak and the suite's size at that moment: an upper bound for the CLI. KiB.\n"
    );
    let sizes = &plan.memory_sizes;
    let _ = write!(body, "| command |");
    for s in sizes {
        let _ = write!(body, " {} |", human(*s));
    }
    let _ = writeln!(body);
    let _ = write!(body, "|---|");
    for _ in sizes {
        let _ = write!(body, "---:|");
    }
    let _ = writeln!(body);
    let mut worst_big = 0u64;
    let mut rows: Vec<(String, Vec<u64>)> = Vec::new();
    let dst = d.join("mem-dst.bin");
    for (name, get, fast) in [
        ("barge put SRC DST", false, true),
        ("BARGE_FASTPATH=0 barge put SRC DST", false, false),
        ("barge get SRC - > /dev/null", true, true),
        ("BARGE_FASTPATH=0 barge get SRC - > /dev/null", true, false),
    ] {
        let mut row = Vec::new();
        for &size in sizes {
            let src = d.join(format!("sparse-{size}.bin"));
            make_sparse_file(&src, size)?;
            let s = src.to_string_lossy().into_owned();
            let t = dst.to_string_lossy().into_owned();
            let mut cmd = if get {
                Ext::new([BARGE, "get", &s, "-"])
            } else {
                Ext::new([BARGE, "put", &s, &t])
            };
            if !fast {
                cmd = cmd.env("BARGE_FASTPATH", "0");
            }
            eprintln!("bench: memory, {}", cmd.shown());
            // The child starts as a vfork of this process, and exec keeps
            // the larger of its peak RSS and this process's (the sources
            // other groups locked in memory count here). Reset this
            // process's peak to its current size first.
            let _ = fs::write("/proc/self/clear_refs", "5");
            let rss = cmd.run()?;
            if !get {
                let got = fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
                if got != size {
                    return Err(format!("{name}: {got} bytes arrived, not {size}"));
                }
            }
            remove(&dst);
            row.push(rss);
        }
        worst_big = worst_big.max(*row.last().unwrap());
        rows.push((name.to_string(), row));
    }
    for (name, row) in &rows {
        let _ = write!(body, "| `{name}` |");
        for r in row {
            let _ = write!(body, " {r} |");
        }
        let _ = writeln!(body);
    }
    body.push('\n');
    verdicts.push(Verdict {
        target: "peak RSS of the CLI",
        bound: format!("≤ 32 MiB at {}", human(*sizes.last().unwrap())),
        measured: format!(
            "{:.1} MiB (worst of the four commands)",
            worst_big as f64 / 1024.0
        ),
        holds: Some(worst_big <= 32 * 1024),
    });
    Ok(())
}

fn human(b: u64) -> String {
    if b >= GIB {
        format!("{} GiB", b / GIB)
    } else if b >= MIB {
        format!("{} MiB", b / MIB)
    } else {
        format!("{} KiB", b / KIB)
    }
}

// ---------------------------------------------------------------- many handles

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Our children in any state, and how many are zombies.
fn children() -> (usize, usize) {
    let me = std::process::id().to_string();
    let mut all = 0;
    let mut zombies = 0;
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            if fields.get(1) == Some(&me.as_str()) {
                all += 1;
                if fields[0] == "Z" {
                    zombies += 1;
                }
            }
        }
    }
    (all, zombies)
}

fn many_group(plan: &Plan, body: &mut String, verdicts: &mut Vec<Verdict>) -> Result<(), String> {
    let d = &plan.dir;
    let threads = plan.many_threads;
    let each = plan.many_each;
    let small = d.join("many-src.bin");
    let _pinned_small = random_source(&small, each)?;
    let big = d.join("many-big.bin");
    let big_size = each * threads as u64;
    let _pinned_big = random_source(&big, big_size)?;
    let out = d.join("many-out");
    let fds_before = open_fds();
    let mut rows = Vec::new();
    for fast in [true, false] {
        let mut single = Vec::new();
        let mut many = Vec::new();
        eprintln!("bench: many handles, fast path {fast}");
        for round in 0..plan.warmup + plan.runs {
            remove(&out);
            fs::create_dir_all(&out).map_err(|e| e.to_string())?;
            let t = Instant::now();
            {
                let mut h = handle()?;
                set_fast(&mut h, fast);
                h.upload(&big, out.join("big")).map_err(|e| e.to_string())?;
                h.shutdown().map_err(|e| e.to_string())?;
            }
            let a = t.elapsed().as_secs_f64();
            remove(&out);
            fs::create_dir_all(&out).map_err(|e| e.to_string())?;
            let go = Arc::new(Barrier::new(threads));
            let t = Instant::now();
            let workers: Vec<_> = (0..threads)
                .map(|i| {
                    let go = go.clone();
                    let small = small.clone();
                    let dst = out.join(format!("f{i}"));
                    std::thread::spawn(move || -> Result<(), String> {
                        let mut h = handle()?;
                        set_fast(&mut h, fast);
                        go.wait();
                        h.upload(&small, &dst).map_err(|e| e.to_string())?;
                        h.shutdown().map_err(|e| e.to_string())
                    })
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| "a worker panicked".to_string())??;
            }
            let b = t.elapsed().as_secs_f64();
            for i in 0..threads {
                let got = fs::metadata(out.join(format!("f{i}")))
                    .map(|m| m.len())
                    .unwrap_or(0);
                if got != each {
                    return Err(format!("handle {i} moved {got} bytes, not {each}"));
                }
            }
            if round >= plan.warmup {
                single.push(big_size as f64 / a);
                many.push(big_size as f64 / b);
            }
            eprint!(".");
        }
        eprintln!();
        remove(&out);
        rows.push((fast, single, many));
    }
    let fds_after = open_fds();
    let (kids, zombies) = children();
    let _ = writeln!(
        body,
        "## Many handles\n\n{threads} handles in {threads} threads, each uploading {} (create, upload, shutdown), against one handle uploading the same {} total as one file; alternating, throughput in MiB/s.\n",
        human(each),
        human(big_size)
    );
    let _ = writeln!(
        body,
        "| path | one transfer, median | {threads} handles, median (min–max) | ratio |"
    );
    let _ = writeln!(body, "|---|---:|---:|---:|");
    for (fast, single, many) in &rows {
        let ratio = median(many) / median(single);
        let name = if *fast {
            "default (fast path when available)"
        } else {
            "stream path"
        };
        let _ = writeln!(
            body,
            "| {name} | {:.0} | {:.0} ({:.0}–{:.0}) | **{:.2}** |",
            median(single) / MIB as f64,
            median(many) / MIB as f64,
            min(many) / MIB as f64,
            max(many) / MIB as f64,
            ratio
        );
        verdicts.push(Verdict {
            target: if *fast {
                "many handles (default path)"
            } else {
                "many handles (stream path)"
            },
            bound: "≥ 0.70 of one transfer; no fd leak, no zombie".into(),
            measured: format!(
                "{ratio:.2}; fds {fds_before} before, {fds_after} after; {zombies} zombies"
            ),
            holds: Some(ratio >= 0.7 && fds_after <= fds_before && zombies == 0),
        });
    }
    let _ = writeln!(
        body,
        "\nOpen fds of the bench process: {fds_before} before, {fds_after} after. Children left: {kids} ({zombies} zombies).\n"
    );
    if fds_after > fds_before || zombies > 0 || kids > 0 {
        return Err(format!(
            "many handles leaked: fds {fds_before} -> {fds_after}, children {kids}, zombies {zombies}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- checksum

fn checksum_group(
    plan: &Plan,
    body: &mut String,
    verdicts: &mut Vec<Verdict>,
) -> Result<(), String> {
    eprintln!("bench: checksum");
    // The CRC as the stream path runs it: over a chunk just read, still
    // in the cache.
    let chunk = barge::wire::DEFAULT_CHUNK as usize;
    let buf: Vec<u8> = (0..chunk)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8)
        .collect();
    let total = if plan.smoke { 64 * MIB } else { 4 * GIB };
    let mut rates = Vec::new();
    for _ in 0..plan.warmup + plan.runs {
        let t = Instant::now();
        let mut sum = barge::wire::StreamChecksum::new();
        for _ in 0..total / chunk as u64 {
            sum.update(std::hint::black_box(&buf));
        }
        std::hint::black_box(sum.digest());
        rates.push(total as f64 / t.elapsed().as_secs_f64());
    }
    let rate = median(&rates[plan.warmup..]);
    let per_side = plan.file_size as f64 / rate;
    let _ = writeln!(
        body,
        "## Cost of the checksum\n\nCRC-64/NVME over {} KiB chunks in the cache, as the sender hashes each chunk it has just read: median {:.1} GiB/s on one core, so {:.1} ms for {}. The receiver hashes what it wrote, read back through a mapping of the file, more slowly; the rows below measure what the checksum costs the whole transfer.\n",
        chunk / 1024,
        rate / GIB as f64,
        per_side * 1e3,
        human(plan.file_size)
    );

    // The stream path with and without the checksum, alternating: the
    // second build (bench/run.sh makes it) hashes nothing on either side.
    let Some(skip_dir) = std::env::var_os("BARGE_BENCH_SKIP_CHECKSUM_DIR").map(PathBuf::from)
    else {
        let _ = writeln!(
            body,
            "(No build without the checksum was given, so only the hash's speed is shown; `bench/run.sh` makes one.)\n"
        );
        return Ok(());
    };
    let unchecked = skip_dir.join("barge");
    let unchecked_helper = skip_dir.join("barge-helper");
    let d = &plan.dir;
    let src = d.join("src.bin");
    let _pinned = random_source(&src, plan.file_size)?;
    let dst = d.join("ck-dst.bin");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut benches = vec![ext_bench(
        "cp",
        Ext::new(["cp", &s(&src), &s(&dst)]),
        remover(&dst),
    )];
    for verb in ["put", "get"] {
        benches.push(ext_bench(
            &format!("barge {verb}, stream path"),
            Ext::new([BARGE, verb, &s(&src), &s(&dst)]).env("BARGE_FASTPATH", "0"),
            remover(&dst),
        ));
        benches.push(ext_bench(
            &format!("barge {verb}, stream path, no checksum"),
            Ext::new([s(&unchecked), verb.into(), s(&src), s(&dst)])
                .env("BARGE_FASTPATH", "0")
                .env("BARGE_HELPER", &s(&unchecked_helper)),
            remover(&dst),
        ));
    }
    // A difference of a few percent between two pipelines that the
    // scheduler sometimes serializes: three times the usual rounds, and
    // the cost taken round by round, from neighbouring runs.
    let rounds = Plan {
        runs: plan.runs * 3,
        ..plan.clone()
    };
    let timed = alternate(&rounds, benches, &mut |_| Ok(()))?;
    remove(&dst);
    let _ = writeln!(
        body,
        "The stream path with and without the checksum, alternating, {} counted rounds (the second build is `cargo build --release --features bench-skip-checksum`, whose ends hash nothing):\n",
        rounds.runs
    );
    ratio_table(body, &timed);
    commands_list(body, &timed);
    // Per round: (with - without) / with, of the two runs of that round,
    // and (with - without) in ms per GiB.
    let gib = plan.file_size as f64 / GIB as f64;
    let mut costs = Vec::new();
    for pair in timed[1..].chunks(2) {
        let rounds = pair[0].secs.iter().zip(&pair[1].secs);
        let share: Vec<f64> = rounds.clone().map(|(w, wo)| (w - wo) / w).collect();
        let ms_per_gib: Vec<f64> = rounds.map(|(w, wo)| (w - wo) * 1e3 / gib).collect();
        let of_medians = (median(&pair[0].secs) - median(&pair[1].secs)) / median(&pair[0].secs);
        costs.push((
            pair[0].name.clone(),
            median(&share),
            of_medians,
            median(&ms_per_gib),
        ));
    }
    let _ = writeln!(body);
    for (name, share, of_medians, ms) in &costs {
        let _ = writeln!(
            body,
            "- {name}: the checksum is **{:.1}%** of the time (median over rounds of (with − without) / with; from the two medians: {:.1}%), **{ms:.0} ms per GiB**",
            share * 100.0,
            of_medians * 100.0
        );
    }
    body.push('\n');
    let worst = costs.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let worst_ms = costs.iter().map(|c| c.3).fold(f64::NEG_INFINITY, f64::max);
    verdicts.push(Verdict {
        target: "checksum cost (stream path)",
        bound: "≤ 5% of the transfer".into(),
        measured: format!(
            "{:.1}%, {worst_ms:.0} ms per GiB (worst of put and get; CRC-64 at {:.1} GiB/s)",
            worst * 100.0,
            rate / GIB as f64
        ),
        holds: Some(worst <= 0.05),
    });
    Ok(())
}

// ---------------------------------------------------------------- small-file tree

fn tree_group(plan: &Plan, body: &mut String, verdicts: &mut Vec<Verdict>) -> Result<(), String> {
    eprintln!("bench: small-file tree");
    let d = &plan.dir;
    let parent = d.join("tree-src");
    let tree = parent.join("tree");
    let files = plan.tree_files;
    let dirs = 50.min(files);
    if !tree
        .join(format!("d{}", dirs - 1))
        .join(format!("f{}", files - 1))
        .exists()
    {
        remove(&parent);
        for i in 0..files {
            let sub = tree.join(format!("d{}", i % dirs));
            fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
            fs::write(sub.join(format!("f{i}")), vec![(i % 251) as u8; 4096])
                .map_err(|e| e.to_string())?;
        }
    }
    let dst = d.join("tree-dst");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    // Removing a copy of 5000 files costs about as much as making one, so
    // it happens before each run, outside the timing: the destination is
    // removed and, for the commands that copy into an existing directory
    // (tar, rsync, barge), made again empty.
    let fresh = |with_dir: bool| {
        let dst = dst.clone();
        move || {
            remove(&dst);
            if with_dir {
                let _ = fs::create_dir_all(&dst);
            }
        }
    };
    let benches = vec![
        ext_bench(
            "cp -r",
            Ext::new(["cp", "-r", &s(&tree), &s(&dst)]),
            fresh(false),
        ),
        ext_bench(
            "tar | tar",
            Ext::new([
                "sh".to_string(),
                "-c".into(),
                format!("tar cf - -C {} tree | tar xf - -C {}", s(&parent), s(&dst)),
            ]),
            fresh(true),
        ),
        ext_bench(
            "rsync -r",
            Ext::new([
                "rsync".to_string(),
                "-r".into(),
                "--whole-file".into(),
                format!("{}/", s(&tree)),
                format!("{}/", s(&dst)),
            ]),
            fresh(true),
        ),
        ext_bench(
            "sftp -D put -r",
            sftp(format!("put -r {} {}\n", s(&tree), s(&dst))),
            fresh(false),
        ),
        tree_bench(&tree, &dst, fresh(true)),
    ];
    let count_dst = dst.join("tree");
    let timed = alternate(plan, benches, &mut |name| {
        // Every barge run must have copied the whole tree.
        if name == "barge copy_in" {
            let copied: usize = fs::read_dir(&count_dst)
                .and_then(|dirs| {
                    dirs.map(|d| fs::read_dir(d?.path()).map(|f| f.count()))
                        .sum::<std::io::Result<usize>>()
                })
                .map_err(|e| format!("barge copy_in: {e}"))?;
            if copied != files {
                return Err(format!("barge copy_in: {copied} of {files} files copied"));
            }
        }
        Ok(())
    })?;
    remove(&dst);
    let _ = writeln!(
        body,
        "## Small-file tree ({files} files × 4 KiB in {dirs} directories)\n\nbarge copies the tree with `copy_in`: every entry streamed in one TREE_IN request, no round trip per file. Its row is a whole session (start the helper, copy, shut down), like the other commands' whole processes. The destination is removed between runs, outside the timing.\n"
    );
    let ratios = ratio_table(body, &timed);
    commands_list(body, &timed);
    body.push('\n');
    if let Some((_, r)) = ratios.iter().find(|(n, _)| n == "barge copy_in") {
        verdicts.push(Verdict {
            target: "small-file tree copy in",
            bound: "≤ 1.5× `cp -r`".into(),
            measured: format!("{r:.2}× `cp -r`"),
            holds: Some(*r <= 1.5),
        });
    }
    Ok(())
}

/// A whole library session that copies a tree in: create, copy_in, shut
/// down. `dst` must exist.
fn tree_bench(tree: &Path, dst: &Path, prepare: impl FnMut() + 'static) -> Bench {
    let tree = tree.to_path_buf();
    let dst = dst.to_path_buf();
    Bench {
        name: "barge copy_in".into(),
        shown: "in-process: Handle::new(); h.copy_in(TREE, DST); h.shutdown()".into(),
        prepare: Box::new(prepare),
        run: Box::new(move || {
            let mut h = handle()?;
            h.copy_in(&tree, &dst)
                .map_err(|e| format!("copy_in: {e}"))?;
            h.shutdown().map_err(|e| format!("shutdown: {e}"))
        }),
    }
}
