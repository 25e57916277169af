//! Running one command on a handle, for the one-shot CLI and the shell.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use barge::{strerror, DirEntry, Error, Handle, RemoteStat};

use crate::args::{Op, TransferOpts};
use crate::escape::escape;
use crate::ui::Ui;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// The command line was wrong (exit status 2).
    Usage(String),
    /// The operation failed or was cancelled.
    Op(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Op(e)
    }
}

/// Where the command runs: the shell's standard input is its own input,
/// so `put -` is refused there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    OneShot,
    Shell,
}

pub fn run(h: &mut Handle, op: &Op, ui: &Ui, mode: Mode) -> Result<(), Failure> {
    match op {
        Op::Put {
            opts,
            local,
            remote,
        } => {
            configure(h, opts);
            if opts.recursive {
                tree(h, local, remote, ui, true)
            } else {
                put(h, local, remote, ui, mode)
            }
        }
        Op::Get {
            opts,
            remote,
            local,
        } => {
            configure(h, opts);
            if opts.recursive {
                tree(h, remote, local, ui, false)
            } else {
                get(h, remote, local, ui)
            }
        }
        Op::Ls { long, path } => {
            let mut entries = h.list(path)?;
            entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
            let mut out = Vec::new();
            for e in &entries {
                if *long {
                    out.extend_from_slice(long_line(e).as_bytes());
                }
                // The helper's names: escaped, as `ls -b` would print them.
                out.extend_from_slice(escape(e.name.as_bytes()).as_bytes());
                out.push(b'\n');
            }
            write_stdout(&out)
        }
        Op::Stat { path } => {
            let st = h.stat(path)?;
            write_stdout(stat_text(path, &st).as_bytes())
        }
        Op::Mkdir { parents, path } => Ok(h.mkdir(path, *parents)?),
        Op::Rm { path } => Ok(h.remove(path)?),
        Op::Mv { from, to } => Ok(h.rename(from, to)?),
    }
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn ends_with_slash(p: &Path) -> bool {
    p.as_os_str().as_bytes().last() == Some(&b'/')
}

fn label(p: &Path) -> String {
    p.file_name()
        .unwrap_or(p.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// Every command sets what it uses, so settings never leak from one
/// shell command into the next.
fn configure(h: &mut Handle, opts: &TransferOpts) {
    h.set_keep_partial(opts.resume);
    h.set_keep_going(opts.keep_going);
    h.set_preserve_metadata(!opts.no_preserve);
    h.set_preserve_setid(opts.preserve_setid);
}

/// `put -r` (`upload`) or `get -r`: copy `from` into the directory `into`.
/// With --keep-going, each failed entry gets a line before the summary.
fn tree(h: &mut Handle, from: &Path, into: &Path, ui: &Ui, upload: bool) -> Result<(), Failure> {
    if is_dash(from) || is_dash(into) {
        return Err(Failure::Usage(
            "-r copies files and directories, not -".into(),
        ));
    }
    ui.begin(label(from), true);
    let r = if upload {
        h.copy_in(from, into)
    } else {
        h.copy_out(from, into)
    };
    ui.end(r.is_ok());
    if let Err(Error::Incomplete { errors }) = &r {
        for e in errors {
            ui.note(&e.message);
        }
    }
    Ok(r?)
}

fn put(h: &mut Handle, local: &Path, remote: &Path, ui: &Ui, mode: Mode) -> Result<(), Failure> {
    if is_dash(local) {
        if mode == Mode::Shell {
            return Err(Failure::Usage(
                "put -: standard input is the shell's own input; give a file".into(),
            ));
        }
        ui.begin("stdin".into(), true);
        let r = h.upload_fd(std::io::stdin().as_fd(), remote);
        ui.end(r.is_ok());
        return Ok(r?);
    }
    let interrupts = crate::interrupts();
    let remote = remote_destination(h, remote, local.file_name())?;
    if crate::interrupts() != interrupts {
        // ^C during the STAT, which completed anyway: the command stops.
        return Err(Failure::Op(Error::Cancelled));
    }
    ui.begin(label(local), true);
    let r = h.upload(local, &remote);
    ui.end(r.is_ok());
    Ok(r?)
}

fn get(h: &mut Handle, remote: &Path, local: &Path, ui: &Ui) -> Result<(), Failure> {
    if is_dash(local) {
        // The data goes to standard output: no bar over it.
        ui.begin(label(remote), false);
        let r = h.download_fd(remote, std::io::stdout().as_fd());
        ui.end(r.is_ok());
        return Ok(r?);
    }
    let into_dir = ends_with_slash(local) || local.is_dir();
    let local = match remote.file_name() {
        Some(name) if into_dir => local.join(name),
        _ => local.to_path_buf(),
    };
    ui.begin(label(remote), true);
    let r = h.download(remote, &local);
    ui.end(r.is_ok());
    Ok(r?)
}

/// REMOTE itself, or REMOTE/NAME when REMOTE is a directory (or ends in
/// '/'). A remote error from the STAT (no such file, ...) leaves REMOTE
/// as given, for the upload to report; a cancel or a lost helper ends the
/// command.
fn remote_destination(
    h: &mut Handle,
    remote: &Path,
    name: Option<&OsStr>,
) -> Result<PathBuf, Error> {
    let Some(name) = name else {
        return Ok(remote.to_path_buf());
    };
    if ends_with_slash(remote) {
        return Ok(remote.join(name));
    }
    match h.stat(remote) {
        Ok(st) if st.is_dir() => Ok(remote.join(name)),
        Ok(_) | Err(Error::Remote { .. }) => Ok(remote.to_path_buf()),
        Err(e) => Err(e),
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            Failure::Op(Error::Local {
                errno,
                message: format!("write standard output: {}", strerror(errno)),
            })
        })
}

/// `drwxr-xr-x`-style type and permissions.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => '-',
    };
    let mut s = String::from(kind);
    for (shift, special, lower, upper) in [
        (6, libc::S_ISUID, 's', 'S'),
        (3, libc::S_ISGID, 's', 'S'),
        (0, libc::S_ISVTX, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn kind_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "directory",
        libc::S_IFREG => "regular file",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "unknown",
    }
}

/// Seconds since the epoch as local time, `YYYY-MM-DD HH:MM:SS`.
fn local_time(sec: i64) -> String {
    let t = sec as libc::time_t;
    // SAFETY: an all-zero tm is a valid value for localtime_r to fill.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; localtime_r is reentrant.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return format!("@{sec}");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        // Widened: a peer's mtime can put tm_year near INT_MAX.
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The `ls -l` columns before the name.
fn long_line(e: &DirEntry) -> String {
    let st = &e.stat;
    format!(
        "{} {:>3} {:>5} {:>5} {:>12} {} ",
        mode_string(st.mode),
        st.nlink,
        st.uid,
        st.gid,
        st.size,
        local_time(st.mtime_sec),
    )
}

fn stat_text(path: &Path, st: &RemoteStat) -> String {
    format!(
        "  path: {}\n  type: {}\n  size: {}\n  mode: {:04o} ({})\n owner: uid {} gid {}\n links: {}\n mtime: {}.{:09}\n",
        path.display(),
        kind_name(st.mode),
        st.size,
        st.mode & 0o7777,
        mode_string(st.mode),
        st.uid,
        st.gid,
        st.nlink,
        local_time(st.mtime_sec),
        st.mtime_nsec,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(mode_string(libc::S_IFREG | 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1770), "drwxrwx--T");
        assert_eq!(mode_string(libc::S_IFLNK | 0o777), "lrwxrwxrwx");
    }
}
