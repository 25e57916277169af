//! Partial files for resumable transfers (`keep_partial`): the data of an
//! interrupted upload or download kept under a hidden, recognisable name
//! in the destination directory, `.NAME.barge-partial`, never under NAME.
//! A later transfer to the same destination finds it, checks it against
//! the source's prefix, and continues or starts over. The helper uses this
//! for uploads, the client for downloads.
//!
//! The file is locked (`flock`, exclusive) while a transfer uses it, so two
//! transfers never write the same partial file at once.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use crate::sys::{self, cvt};
use crate::wire::StreamChecksum;

/// What ends every partial file's name.
pub const PARTIAL_MARK: &str = ".barge-partial";

/// The hidden name that holds the partial data of `name`:
/// `.NAME.barge-partial`, NAME shortened to keep it within 255 bytes.
pub fn partial_name(name: &[u8]) -> Vec<u8> {
    let room = 255 - 1 - PARTIAL_MARK.len();
    let mut v = Vec::with_capacity(255);
    v.push(b'.');
    v.extend_from_slice(&name[..name.len().min(room)]);
    v.extend_from_slice(PARTIAL_MARK.as_bytes());
    v
}

/// Whether a directory entry name is a partial file's.
pub fn is_partial_name(name: &[u8]) -> bool {
    name.len() > 1 + PARTIAL_MARK.len()
        && name.starts_with(b".")
        && name.ends_with(PARTIAL_MARK.as_bytes())
}

/// An open, locked partial file.
pub(crate) struct PartialFile {
    dir: OwnedFd,
    name: CString,
    hidden: CString,
    file: File,
    /// Bytes it held when opened.
    pub held: u64,
}

impl PartialFile {
    /// Open (or create, empty) the partial file for `dir/name`. `EBUSY`
    /// when another transfer holds it; `EINVAL` when something other than
    /// a regular file has its name.
    pub fn open(dir: OwnedFd, name: &[u8]) -> io::Result<PartialFile> {
        let final_name = crate::atomic_file::check_name(name)?;
        let hidden = CString::new(partial_name(name))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = sys::openat(
            std::os::fd::AsFd::as_fd(&dir),
            &hidden,
            libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0o600,
        )?;
        // SAFETY: flock on our own open fd; no pointers.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            return Err(e);
        }
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        sys::set_nonblocking(std::os::fd::AsFd::as_fd(&file), false)?;
        Ok(PartialFile {
            dir,
            name: final_name,
            hidden,
            file,
            held: meta.len(),
        })
    }

    /// The checksum of the first `len` bytes, read from the start; stops
    /// early (returning `None`) when `keep_on` says so, e.g. on a cancel.
    pub fn checksum_prefix(
        &mut self,
        len: u64,
        keep_on: &mut dyn FnMut() -> bool,
    ) -> io::Result<Option<StreamChecksum>> {
        checksum_prefix(&mut self.file, len, keep_on)
    }

    /// Continue after the first `offset` bytes (0: start over, emptied).
    pub fn continue_at(&mut self, offset: u64) -> io::Result<()> {
        if offset == 0 || offset != self.held {
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
        } else {
            self.file.seek(SeekFrom::Start(offset))?;
        }
        Ok(())
    }

    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    /// Give the data its mode and put it in place under the final name.
    pub fn commit(self, mode: u32) -> io::Result<()> {
        // SAFETY: fchmod on our own open fd.
        cvt(unsafe { libc::fchmod(self.file.as_raw_fd(), mode as libc::mode_t) })?;
        // SAFETY: both names are NUL-terminated; dir is open.
        cvt(unsafe {
            libc::renameat(
                self.dir.as_raw_fd(),
                self.hidden.as_ptr(),
                self.dir.as_raw_fd(),
                self.name.as_ptr(),
            )
        })?;
        Ok(())
    }

    /// Remove the partial data (it proved wrong).
    pub fn discard(self) {
        // SAFETY: the name is NUL-terminated; dir is open. Failure leaves
        // nothing more to do.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.hidden.as_ptr(), 0) };
    }
}

/// The checksum of the first `len` bytes of `file`, read from its start;
/// `None` when `keep_on` returned false between chunks, or the file is
/// shorter than `len`.
pub(crate) fn checksum_prefix(
    file: &mut File,
    len: u64,
    keep_on: &mut dyn FnMut() -> bool,
) -> io::Result<Option<StreamChecksum>> {
    let mut sum = StreamChecksum::new();
    let mut buf = vec![0u8; 1 << 20];
    file.seek(SeekFrom::Start(0))?;
    while sum.len() < len {
        if !keep_on() {
            return Ok(None);
        }
        let want = (len - sum.len()).min(buf.len() as u64) as usize;
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sum.update(&buf[..n]);
    }
    Ok(Some(sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_are_hidden_recognisable_and_fit() {
        assert_eq!(partial_name(b"big.iso"), b".big.iso.barge-partial");
        assert!(is_partial_name(&partial_name(b"x")));
        assert!(!is_partial_name(b"x"));
        assert!(!is_partial_name(b".barge-partial"));
        let long = vec![b'a'; 255];
        assert!(partial_name(&long).len() <= 255);
        assert!(is_partial_name(&partial_name(&long)));
    }
}
