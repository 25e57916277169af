//! Request paths to file descriptors, confined beneath the connection's
//! root when it has one.
//!
//! With a root, `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` does the
//! work: symlinks are followed as if the root were `/`, and `/proc` magic
//! links give `ELOOP`. Paths whose `..` would climb above the root are
//! refused with `EXDEV` before any system call. Kernels without openat2
//! (before 5.6) get [`walk_in_root`], which follows symlinks by hand and
//! never lets the kernel resolve more than one plain name at a time.
//!
//! Requests that create, replace or remove an entry resolve the parent
//! directory and act on the final name with an `*at` call, so the final
//! name is never followed out of the root either.

use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::fs;
use super::Failure;
use crate::sys;

/// Symlinks followed in one resolution before giving `ELOOP`, as the
/// kernel does.
pub(super) const MAX_SYMLINKS: u32 = 40;

/// How the paths of one connection are resolved.
pub(super) struct Resolver {
    root: Option<OwnedFd>,
    /// Set when openat2 turned out to be missing (ENOSYS), or by tests.
    walk_by_hand: Cell<bool>,
}

/// The directory holding a request's final name, and that name.
pub(super) struct Parent {
    pub dir: OwnedFd,
    pub name: CString,
}

/// Open a connection's root: a directory, following symlinks in its own
/// path.
pub(super) fn open_root(path: &[u8]) -> io::Result<OwnedFd> {
    let path = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::openat(sys::cwd(), &path, libc::O_PATH | libc::O_DIRECTORY, 0)
}

impl Resolver {
    /// Paths are used as given, relative to the current directory.
    pub fn unrooted() -> Resolver {
        Resolver {
            root: None,
            walk_by_hand: Cell::new(false),
        }
    }

    /// Paths resolve beneath `root`, an `O_PATH` directory fd.
    pub fn rooted(root: OwnedFd) -> Resolver {
        Resolver {
            root: Some(root),
            walk_by_hand: Cell::new(false),
        }
    }

    /// Use [`walk_in_root`] even where openat2 exists.
    #[cfg(test)]
    pub fn walking_by_hand(self) -> Resolver {
        self.walk_by_hand.set(true);
        self
    }

    /// Open `path` with `flags` (O_CLOEXEC is added), following symlinks.
    pub fn open(&self, path: &[u8], flags: i32) -> Result<OwnedFd, Failure> {
        match &self.root {
            None => Ok(sys::openat(sys::cwd(), &c_path(path)?, flags, 0)?),
            Some(root) => self.open_beneath(root.as_fd(), beneath_root(path)?, flags),
        }
    }

    fn open_beneath(
        &self,
        root: BorrowedFd<'_>,
        rest: &[u8],
        flags: i32,
    ) -> Result<OwnedFd, Failure> {
        if !self.walk_by_hand.get() {
            let rest_c = if rest.is_empty() {
                c".".to_owned()
            } else {
                c_path(rest)?
            };
            let resolve = sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS;
            match sys::openat2(root, &rest_c, flags, 0, resolve) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => self.walk_by_hand.set(true),
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return Err(Failure::escapes()),
                r => return Ok(r?),
            }
        }
        Ok(walk_in_root(root, rest, flags)?)
    }

    /// The parent directory of `path` (an `O_PATH` fd) and its final name.
    /// Trailing slashes are part of the final name's check: `a/` names no
    /// entry and is refused like `/` (EISDIR); `.` and `..` give EINVAL.
    pub fn parent(&self, path: &[u8]) -> Result<Parent, Failure> {
        if self.root.is_some() {
            beneath_root(path)?;
        }
        let (dir, name) = split_last(path);
        let name = plain_name(name)?;
        let dir: &[u8] = if self.root.is_none() && dir.is_empty() {
            b"."
        } else {
            dir
        };
        let dir = self.open(dir, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok(Parent { dir, name })
    }
}

fn c_path(path: &[u8]) -> Result<CString, Failure> {
    CString::new(path).map_err(|_| Failure::new(libc::EINVAL, "path contains a NUL byte"))
}

/// The part of a rooted request path below the root: leading slashes
/// stripped, refused if its `..` components would climb above the root.
pub(super) fn beneath_root(path: &[u8]) -> Result<&[u8], Failure> {
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    let rest = &path[start..];
    let mut depth: usize = 0;
    for comp in rest.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => depth = depth.checked_sub(1).ok_or_else(Failure::escapes)?,
            _ => depth += 1,
        }
    }
    Ok(rest)
}

/// Split at the last slash. The directory part of `/x` is `/`; of `x`, empty.
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => (b"/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

fn plain_name(name: &[u8]) -> Result<CString, Failure> {
    match name {
        b"" => Err(Failure::from_errno(libc::EISDIR)),
        b"." | b".." => Err(Failure::new(
            libc::EINVAL,
            "the last component must be a file name, not . or ..",
        )),
        _ => c_path(name),
    }
}

/// Resolve `rest` beneath `root` without openat2: one plain name per
/// `openat(O_PATH | O_NOFOLLOW)`, symlinks read and followed by hand.
/// `..` pops a stack of directories this walk opened, so it stops at the
/// root; an absolute link target restarts at the root; more than
/// [`MAX_SYMLINKS`] links give ELOOP. A symlink on procfs whose target is
/// not a plain relative path (`/...`, `pipe:[…]`, …) is a magic link and
/// gives ELOOP, as RESOLVE_NO_MAGICLINKS does. `rest` has passed
/// [`beneath_root`].
pub(super) fn walk_in_root(root: BorrowedFd<'_>, rest: &[u8], flags: i32) -> io::Result<OwnedFd> {
    // A trailing slash asks for a directory, as it does of the kernel.
    let flags = if rest.ends_with(b"/") {
        flags | libc::O_DIRECTORY
    } else {
        flags
    };
    // Directories entered so far, innermost last; empty means the root.
    let mut entered: Vec<OwnedFd> = Vec::new();
    // Components still to resolve, next one last.
    let mut pending: Vec<Vec<u8>> = components_reversed(rest);
    let mut links_followed = 0;
    while let Some(comp) = pending.pop() {
        match &comp[..] {
            b"" | b"." => continue,
            b".." => {
                entered.pop();
                continue;
            }
            _ => {}
        }
        let cur = entered.last().map_or(root, |d| d.as_fd());
        let name = CString::new(comp).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = sys::openat(cur, &name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = fs::fstat(fd.as_fd())?;
        if fs::is_symlink(&st) {
            links_followed += 1;
            if links_followed > MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = fs::read_link_fd(fd.as_fd())?;
            if fs::fs_type(fd.as_fd())? == fs::PROC_SUPER_MAGIC && !plain_relative(&target) {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            if target.first() == Some(&b'/') {
                entered.clear();
            }
            pending.extend(components_reversed(&target));
            continue;
        }
        if pending.is_empty() {
            // O_NOFOLLOW: if the name became a symlink since the check
            // above, fail rather than follow it.
            return sys::openat(cur, &name, flags | libc::O_NOFOLLOW, 0);
        }
        if !fs::is_dir(&st) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        entered.push(fd);
    }
    // The path ended in the root, or in `.` or `..`.
    let cur = entered.last().map_or(root, |d| d.as_fd());
    sys::openat(cur, c".", flags, 0)
}

fn components_reversed(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}

/// Whether a procfs link target is an ordinary relative path (`self` →
/// `1234`, `mounts` → `self/mounts`) rather than a magic link's text.
fn plain_relative(target: &[u8]) -> bool {
    !target.is_empty() && target[0] != b'/' && !target.contains(&b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_above_the_root_is_refused_lexically() {
        for p in [&b"../x"[..], b"/..", b"a/../../x", b"/a/b/../../.."] {
            let e = beneath_root(p).expect_err("should be refused");
            assert_eq!(e.errno, libc::EXDEV, "{:?}", String::from_utf8_lossy(p));
        }
        assert_eq!(beneath_root(b"/a/../b").unwrap(), b"a/../b");
        assert_eq!(beneath_root(b"//").unwrap(), b"");
        assert_eq!(beneath_root(b"a/./b/..").unwrap(), b"a/./b/..");
    }

    #[test]
    fn split_last_keeps_the_root_slash() {
        assert_eq!(split_last(b"/x"), (&b"/"[..], &b"x"[..]));
        assert_eq!(split_last(b"x"), (&b""[..], &b"x"[..]));
        assert_eq!(split_last(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_last(b"a/"), (&b"a"[..], &b""[..]));
    }

    #[test]
    fn final_names_must_be_plain() {
        assert_eq!(plain_name(b"").err().unwrap().errno, libc::EISDIR);
        assert_eq!(plain_name(b".").err().unwrap().errno, libc::EINVAL);
        assert_eq!(plain_name(b"..").err().unwrap().errno, libc::EINVAL);
        assert_eq!(plain_name(b"f").unwrap().as_bytes(), b"f");
    }

    #[test]
    fn procfs_targets_that_are_not_plain_paths_count_as_magic() {
        assert!(plain_relative(b"1234"));
        assert!(plain_relative(b"self/mounts"));
        assert!(!plain_relative(b"/"));
        assert!(!plain_relative(b"pipe:[1234]"));
        assert!(!plain_relative(b""));
    }
}
