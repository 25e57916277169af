//! A file that appears under its final name only when complete.
//!
//! The data goes to an anonymous `O_TMPFILE` in the destination directory.
//! [`AtomicFile::commit`] links it under a hidden name and renames that over
//! the destination, so the final name holds either the old file or the whole
//! new one. Where the filesystem lacks `O_TMPFILE`, the data goes to the
//! hidden name from the start, and dropping an uncommitted file unlinks it.
//! A process killed before that drop cannot unlink it, so a hidden file is
//! held with `flock` while in use, and the next hidden file for the same
//! name removes the ones nobody holds (see [`remove_stale_hidden`]).
//! Both the helper (uploads) and the client (downloads) use this, for a
//! destination that is a regular file or does not exist yet. A FIFO or
//! device at the destination is written into instead and never replaced,
//! and a symlink there is followed first (docs/PROTOCOL.md, "Special files
//! at the destination").

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::sys;

/// Prefix of every hidden temporary name: `.NAME.barge-XXXXXXXX`.
pub const HIDDEN_MARK: &str = ".barge-";

/// An uncommitted file in a directory.
pub struct AtomicFile {
    dir: OwnedFd,
    name: CString,
    file: File,
    /// The hidden name holding the data when O_TMPFILE was not available.
    hidden: Option<CString>,
    committed: bool,
}

impl AtomicFile {
    /// Create an uncommitted file that will become `dir/name`. `name` is a
    /// single path component. `mode` is subject to the umask.
    pub fn create(dir: OwnedFd, name: &[u8], mode: u32) -> io::Result<AtomicFile> {
        let name = check_name(name)?;
        // Readable too: a stream's receiver hashes what it wrote through a
        // mapping of the file (see file_sink).
        match sys::openat(dir.as_fd(), c".", libc::O_TMPFILE | libc::O_RDWR, mode) {
            Ok(fd) => Ok(AtomicFile {
                dir,
                name,
                file: File::from(fd),
                hidden: None,
                committed: false,
            }),
            Err(e) if tmpfile_unsupported(&e) => Self::create_hidden(dir, name, mode),
            Err(e) => Err(e),
        }
    }

    /// Create the file under a hidden name, for filesystems without
    /// O_TMPFILE.
    pub(crate) fn create_hidden(dir: OwnedFd, name: CString, mode: u32) -> io::Result<AtomicFile> {
        remove_stale_hidden(dir.as_fd(), &name);
        let mut tries = 0;
        loop {
            let hidden = hidden_name(&name);
            match sys::openat(
                dir.as_fd(),
                &hidden,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                mode,
            ) {
                Ok(fd) => {
                    // Held until the fd closes, by drop or by death.
                    // SAFETY: flock on our own open fd; no pointers.
                    unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                    return Ok(AtomicFile {
                        dir,
                        name,
                        file: File::from(fd),
                        hidden: Some(hidden),
                        committed: false,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Whether the data sits under a hidden name (no O_TMPFILE).
    pub fn is_hidden_file(&self) -> bool {
        self.hidden.is_some()
    }

    /// Put the file in place under its final name, replacing what was
    /// there: a regular file, a symlink (the link itself) or nothing.
    ///
    /// A FIFO, socket or device at the name is never replaced: callers
    /// write into such a node instead (see docs/PROTOCOL.md, "Special files
    /// at the destination"), so one found here appeared while the file was
    /// written, and the commit fails with `EEXIST`, leaving it alone. The
    /// look and the rename are two calls; rename(2) cannot be told to
    /// replace only regular files.
    pub fn commit(mut self) -> io::Result<()> {
        if let Ok(st) = sys::lstat_at(self.dir.as_fd(), &self.name) {
            if matches!(
                st.st_mode & libc::S_IFMT,
                libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK
            ) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
        }
        let hidden = match self.hidden.take() {
            Some(h) => h,
            None => self.link_hidden()?,
        };
        // SAFETY: both names are NUL-terminated and dir is an open fd.
        let r = unsafe {
            libc::renameat(
                self.dir.as_raw_fd(),
                hidden.as_ptr(),
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            unlink(self.dir.as_fd(), &hidden);
            return Err(e);
        }
        self.committed = true;
        Ok(())
    }

    /// Give the anonymous file a hidden name in its directory.
    fn link_hidden(&self) -> io::Result<CString> {
        let mut tries = 0;
        loop {
            let hidden = hidden_name(&self.name);
            match self.link_as(&hidden) {
                Ok(()) => return Ok(hidden),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn link_as(&self, hidden: &CStr) -> io::Result<()> {
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH on older kernels; the
        // /proc path works for anyone where /proc is mounted.
        // SAFETY: c"" and hidden are NUL-terminated; fds are open.
        let r = unsafe {
            libc::linkat(
                self.file.as_raw_fd(),
                c"".as_ptr(),
                self.dir.as_raw_fd(),
                hidden.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::ENOENT) | Some(libc::EPERM) | Some(libc::EINVAL)
        ) {
            return Err(e);
        }
        let proc_path = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd())).unwrap();
        // SAFETY: as above.
        sys::cvt(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc_path.as_ptr(),
                self.dir.as_raw_fd(),
                hidden.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })?;
        Ok(())
    }
}

impl AtomicFile {
    /// Give up on the file: unlink its hidden name, if it has one, and
    /// return its fd, whose close frees the data (see `discard`).
    pub(crate) fn abandon(self) -> OwnedFd {
        let mut this = std::mem::ManuallyDrop::new(self);
        if let Some(h) = this.hidden.take() {
            unlink(this.dir.as_fd(), &h);
        }
        // SAFETY: `this` is never dropped, and each field is read out of it
        // once; `hidden` is None and `committed` is plain data.
        let (dir, name, file) = unsafe {
            (
                std::ptr::read(&this.dir),
                std::ptr::read(&this.name),
                std::ptr::read(&this.file),
            )
        };
        drop((dir, name));
        file.into()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            if let Some(h) = &self.hidden {
                unlink(self.dir.as_fd(), h);
            }
        }
    }
}

fn unlink(dir: BorrowedFd<'_>, name: &CStr) {
    // SAFETY: name is NUL-terminated; dir is open. Failure leaves nothing
    // more to do.
    unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
}

fn tmpfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
    )
}

/// Check that `name` is one usable path component.
pub fn check_name(name: &[u8]) -> io::Result<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `.NAME.barge-XXXXXXXX`, kept under NAME_MAX by shortening NAME.
fn hidden_name(name: &CStr) -> CString {
    let bytes = name.to_bytes();
    let room = 255 - 1 - HIDDEN_MARK.len() - 8 - 1;
    let stem = &bytes[..bytes.len().min(room)];
    let mut v = Vec::with_capacity(255);
    v.push(b'.');
    v.extend_from_slice(stem);
    v.push(b'.');
    v.extend_from_slice(&HIDDEN_MARK.as_bytes()[1..]);
    v.extend_from_slice(sys::random_suffix().as_bytes());
    CString::new(v).expect("no NUL: built from a CString and hex digits")
}

/// How old an unlocked hidden file must be before it counts as stale: a
/// file is locked right after it is created, so only one younger than
/// this can be unlocked and alive.
const STALE_AFTER_SECS: i64 = 2;

/// Remove the hidden temporary files for `name` in `dir` that no live
/// process holds: left by a process killed mid-transfer. Best effort; a
/// file that cannot be examined is left alone.
pub(crate) fn remove_stale_hidden(dir: BorrowedFd<'_>, name: &CStr) {
    let Ok(listing) = sys::openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0) else {
        return;
    };
    let Ok(names) = crate::treefs::read_names(listing) else {
        return;
    };
    // hidden_name without its random suffix.
    let pattern = hidden_name(name);
    let prefix = &pattern.as_bytes()[..pattern.as_bytes().len() - 8];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for entry in names {
        let bytes = entry.as_bytes();
        if bytes.len() != prefix.len() + 8
            || !bytes.starts_with(prefix)
            || !is_hidden_temp_name(bytes)
        {
            continue;
        }
        let Ok(fd) = sys::openat(
            dir,
            &entry,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        ) else {
            continue;
        };
        let Ok(st) = sys::fstat(fd.as_fd()) else {
            continue;
        };
        let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        // SAFETY: flock on our own open fd; no pointers.
        let unheld = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if regular && unheld && now - st.st_ctime >= STALE_AFTER_SECS {
            unlink(dir, &entry);
        }
    }
}

/// Whether a directory entry name is one of barge's hidden temporary names.
pub fn is_hidden_temp_name(name: &[u8]) -> bool {
    name.starts_with(b".")
        && name.len() > HIDDEN_MARK.len() + 8
        && name[name.len() - 8..].iter().all(u8::is_ascii_hexdigit)
        && name[..name.len() - 8].ends_with(HIDDEN_MARK.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("barge-af-{tag}-{}", sys::random_suffix()));
        std::fs::create_dir(&d).unwrap();
        d
    }

    fn open_dir(p: &Path) -> OwnedFd {
        File::open(p).unwrap().into()
    }

    fn names(p: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_is_visible_before_commit() {
        let d = tempdir("vis");
        let mut f = AtomicFile::create(open_dir(&d), b"out.bin", 0o644).unwrap();
        f.file().write_all(b"hello").unwrap();
        assert!(names(&d).is_empty(), "O_TMPFILE data has no name yet");
        f.commit().unwrap();
        assert_eq!(names(&d), vec!["out.bin"]);
        assert_eq!(std::fs::read(d.join("out.bin")).unwrap(), b"hello");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dropping_leaves_existing_file_alone() {
        let d = tempdir("drop");
        std::fs::write(d.join("keep"), b"old").unwrap();
        let mut f = AtomicFile::create(open_dir(&d), b"keep", 0o644).unwrap();
        f.file().write_all(b"new data that must not land").unwrap();
        drop(f);
        assert_eq!(names(&d), vec!["keep"]);
        assert_eq!(std::fs::read(d.join("keep")).unwrap(), b"old");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn commit_never_replaces_a_fifo_that_appeared_meanwhile() {
        use std::os::unix::fs::FileTypeExt;
        for hidden in [false, true] {
            let d = tempdir("fifo");
            let mut f = match hidden {
                false => AtomicFile::create(open_dir(&d), b"f", 0o600).unwrap(),
                true => AtomicFile::create_hidden(open_dir(&d), c"f".into(), 0o600).unwrap(),
            };
            f.file().write_all(b"new").unwrap();
            let c = CString::new(d.join("f").as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: c is NUL-terminated.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let e = f.commit().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
            let kind = std::fs::symlink_metadata(d.join("f")).unwrap().file_type();
            assert!(kind.is_fifo(), "replaced (hidden: {hidden})");
            assert_eq!(
                names(&d),
                vec!["f"],
                "a temporary was left (hidden: {hidden})"
            );
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn commit_replaces_existing_file() {
        let d = tempdir("repl");
        std::fs::write(d.join("f"), b"old").unwrap();
        let mut f = AtomicFile::create(open_dir(&d), b"f", 0o600).unwrap();
        f.file().write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(d.join("f")).unwrap(), b"new");
        assert_eq!(names(&d), vec!["f"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hidden_fallback_is_removed_on_drop_and_renamed_on_commit() {
        let d = tempdir("hid");
        let mut f =
            AtomicFile::create_hidden(open_dir(&d), CString::new("x").unwrap(), 0o644).unwrap();
        f.file().write_all(b"partial").unwrap();
        let n = names(&d);
        assert_eq!(n.len(), 1);
        assert!(is_hidden_temp_name(n[0].as_bytes()), "{n:?}");
        assert!(n[0].starts_with(".x.barge-"));
        drop(f);
        assert!(names(&d).is_empty());

        let mut f =
            AtomicFile::create_hidden(open_dir(&d), CString::new("x").unwrap(), 0o644).unwrap();
        f.file().write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(names(&d), vec!["x"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_names_are_refused() {
        let d = tempdir("bad");
        for n in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(AtomicFile::create(open_dir(&d), n, 0o644).is_err(), "{n:?}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn hidden_name_fits_name_max() {
        let long = CString::new(vec![b'a'; 255]).unwrap();
        let h = hidden_name(&long);
        assert!(h.to_bytes().len() <= 255);
        assert!(is_hidden_temp_name(h.to_bytes()));
        assert!(!is_hidden_temp_name(b"plain.txt"));
    }
}
