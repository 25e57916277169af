//! The receiving end of a stream into a regular file, with one copy.
//!
//! A DATA payload goes from the channel into a pipe with splice(2), which
//! moves the socket's pages by reference, and from the pipe into the file,
//! which is the one copy (into the page cache). The checksum then reads the
//! bytes back through a read-only mapping of the file. The receiver touches
//! each byte once in user space, to hash it, and copies it nowhere. With
//! `recv` and `write` it would copy each byte twice and hash it once.
//!
//! The checksum covers what is in the file, so it also checks the write.
//! It is computed in line, right after each write, while the pages are
//! still in the cache. A thread of its own that hashed behind the writes
//! made transfers 20 to 40% slower on two cores (bench/notes.md).
//!
//! Only for files that barge itself created unnamed (O_TMPFILE), so that
//! only this process's own fd reaches them. A process that truncates a
//! mapped file makes the next access to the lost pages raise SIGBUS, so a
//! file other processes can open by name (a caller's fd, a hidden
//! temporary name, a resume's partial file) is written with `write` and
//! hashed from memory instead.
//!
//! Where the kernel refuses a step, the sink does that step the copying
//! way and says nothing: a file whose filesystem cannot take splice gets
//! the pipe's bytes by `read` and `pwrite`. A file that cannot be mapped
//! is hashed through a small buffer filled by `pread`. A channel that
//! cannot be spliced is the caller's to handle (see [`SinkError::Source`]),
//! since the bytes are still in it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;

use crate::sys::{self, SplicePipe};
use crate::wire::StreamChecksum;

/// Size of the file window mapped for the checksum. One mapping per
/// window, not per chunk: a `mmap` and `munmap` per 256 KiB chunk costs
/// about a tenth of the whole transfer. The pages read through the window
/// count in the process's resident size, so the window bounds what the
/// sink adds to it (a 64 MiB window took the CLI's peak RSS to 66 MiB).
const WINDOW: u64 = 8 << 20;

/// Buffer for the copying fallbacks.
const SCRATCH_LEN: usize = 64 << 10;

/// Why a splice into the sink stopped.
#[derive(Debug)]
pub(crate) enum SinkError {
    /// The channel failed, ended (`UnexpectedEof`), or cannot be spliced
    /// from (EINVAL). Nothing of the failed call reached the pipe, so the
    /// caller can still read the payload the ordinary way.
    Source(io::Error),
    /// The file could not take the bytes (ENOSPC, EIO, EFBIG …). The sink
    /// is unusable afterwards.
    File(io::Error),
}

/// Receives a stream's payloads into a regular file at increasing offsets,
/// and computes the stream checksum of what it wrote.
pub(crate) struct FileSink {
    /// A duplicate of the caller's fd: the mapping and the sink's life do
    /// not depend on how long the caller keeps its own.
    file: File,
    /// Where the next byte goes.
    offset: u64,
    pipe: SplicePipe,
    /// The file refused splice: drain the pipe by read and pwrite.
    copy_into_file: bool,
    reader: FileReader,
    /// The checksum of every byte written so far.
    sum: StreamChecksum,
}

impl FileSink {
    /// A sink writing `file` from `offset` on. `file` must be a regular
    /// file open for reading and writing, reachable by no name (see the
    /// module notes). `None` when no pipe or fd can be made: the caller
    /// receives the copying way.
    pub fn new(file: BorrowedFd<'_>, offset: u64) -> Option<FileSink> {
        Some(FileSink {
            file: File::from(file.try_clone_to_owned().ok()?),
            offset,
            pipe: SplicePipe::new()?,
            copy_into_file: false,
            reader: FileReader::default(),
            sum: StreamChecksum::new(),
        })
    }

    /// Where the next byte goes.
    #[cfg(test)]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Move up to `*left` bytes from `src` into the file, and take the
    /// bytes that left `src` off `*left`, whatever the result. `Ok(false)`
    /// when `src` has no bytes now (it is non-blocking, or the call would
    /// block).
    pub fn splice_from(&mut self, src: RawFd, left: &mut usize) -> Result<bool, SinkError> {
        // SAFETY: splice between fds the caller and the sink hold; no
        // offsets (a socket or pipe has none, the pipe end neither).
        let moved = sys::nonblocking(|| unsafe {
            libc::splice(
                src,
                std::ptr::null_mut(),
                self.pipe.write.as_raw_fd(),
                std::ptr::null_mut(),
                *left,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            ) as libc::ssize_t
        });
        let n = match moved {
            Ok(Some(0)) => return Err(SinkError::Source(io::ErrorKind::UnexpectedEof.into())),
            Ok(Some(n)) => n,
            Ok(None) => return Ok(false),
            Err(e) => return Err(SinkError::Source(e)),
        };
        *left -= n;
        let start = self.offset;
        self.drain_pipe(n).map_err(SinkError::File)?;
        self.reader
            .hash(&self.file, start, n, &mut self.sum)
            .map_err(SinkError::File)?;
        Ok(true)
    }

    /// Write bytes that are already in memory after those written so far.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pwrite_all(bytes)?;
        self.sum.update(bytes);
        Ok(())
    }

    /// The checksum of every byte written, in order.
    pub fn checksum(&self) -> StreamChecksum {
        self.sum.clone()
    }

    /// Move the `n` bytes in the pipe into the file.
    fn drain_pipe(&mut self, mut n: usize) -> io::Result<()> {
        while n > 0 && !self.copy_into_file {
            let mut off = self.offset as libc::loff_t;
            // SAFETY: splice from our pipe into our file; `off` is a live
            // loff_t the kernel advances.
            let r = unsafe {
                libc::splice(
                    self.pipe.read.as_raw_fd(),
                    std::ptr::null_mut(),
                    self.file.as_raw_fd(),
                    &mut off,
                    n,
                    libc::SPLICE_F_MOVE,
                )
            };
            match r {
                r if r > 0 => {
                    self.offset += r as u64;
                    n -= r as usize;
                }
                // The pipe holds n bytes; taking none would loop forever.
                0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
                _ => match sys::errno() {
                    libc::EINTR => {}
                    libc::EINVAL | libc::ENOSYS => self.copy_into_file = true,
                    e => return Err(io::Error::from_raw_os_error(e)),
                },
            }
        }
        // The filesystem takes no splice: copy the pipe's bytes.
        let mut buf = vec![0u8; n.min(SCRATCH_LEN)];
        while n > 0 {
            let want = n.min(SCRATCH_LEN);
            // SAFETY: reads into a live buffer of at least `want` bytes.
            let r =
                unsafe { libc::read(self.pipe.read.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            match r {
                r if r > 0 => {
                    self.pwrite_all(&buf[..r as usize])?;
                    n -= r as usize;
                }
                0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
                _ if sys::errno() == libc::EINTR => {}
                _ => return Err(io::Error::last_os_error()),
            }
        }
        Ok(())
    }

    fn pwrite_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.offset)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// Reads what was written back for the hash: through a mapped window of
/// the file, or with `pread` where the file cannot be mapped.
#[derive(Default)]
struct FileReader {
    window: Option<Window>,
    /// The file refused a mapping: hash through `scratch`.
    by_read: bool,
    scratch: Vec<u8>,
}

/// One mapped window of the file.
struct Window {
    start: u64,
    ptr: *mut libc::c_void,
}

impl FileReader {
    /// Add the file's bytes `at..at + n`, already written, to `sum`.
    fn hash(
        &mut self,
        file: &File,
        mut at: u64,
        mut n: usize,
        sum: &mut StreamChecksum,
    ) -> io::Result<()> {
        while n > 0 {
            if self.by_read {
                return self.hash_by_read(file, at, n, sum);
            }
            let start = at - at % WINDOW;
            let Some(ptr) = self.window_at(file, start) else {
                self.by_read = true;
                continue;
            };
            let skip = (at - start) as usize;
            let take = n.min(WINDOW as usize - skip);
            // SAFETY: the window maps WINDOW bytes of the file from
            // `start`, and `at..at + take` lies inside it. Those bytes
            // were just written, so the file is at least that long, and
            // no other process can shorten it (the module notes say why),
            // so reading them raises no SIGBUS. Nothing writes them again
            // while the slice lives.
            let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>().add(skip), take) };
            sum.update(bytes);
            at += take as u64;
            n -= take;
        }
        Ok(())
    }

    /// The mapping of the window that starts at `start`, made if needed.
    /// `None` when the file cannot be mapped.
    fn window_at(&mut self, file: &File, start: u64) -> Option<*const libc::c_void> {
        if let Some(w) = &self.window {
            if w.start == start {
                return Some(w.ptr);
            }
        }
        self.unmap();
        // SAFETY: a new shared, read-only mapping of an fd we hold; the
        // kernel picks the address. It is unmapped in unmap().
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                WINDOW as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        self.window = Some(Window { start, ptr });
        Some(ptr)
    }

    fn hash_by_read(
        &mut self,
        file: &File,
        mut at: u64,
        mut n: usize,
        sum: &mut StreamChecksum,
    ) -> io::Result<()> {
        self.scratch.resize(SCRATCH_LEN, 0);
        while n > 0 {
            let want = n.min(SCRATCH_LEN);
            // Bytes already written that are missing (the file was
            // shortened) are an error, not the end.
            file.read_exact_at(&mut self.scratch[..want], at)?;
            sum.update(&self.scratch[..want]);
            at += want as u64;
            n -= want;
        }
        Ok(())
    }

    fn unmap(&mut self) {
        if let Some(w) = self.window.take() {
            // SAFETY: unmaps exactly a mapping made in window_at; no slice
            // into it outlives hash().
            unsafe { libc::munmap(w.ptr, WINDOW as usize) };
        }
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        self.unmap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn checksum_of(parts: &[&[u8]]) -> StreamChecksum {
        let mut s = StreamChecksum::new();
        for p in parts {
            s.update(p);
        }
        s
    }

    fn file() -> std::fs::File {
        // An unnamed file, like the sink's real users.
        tempfile::tempfile().unwrap()
    }

    /// Send `data` on a socket pair; splice all of it into `sink`.
    fn splice_all(sink: &mut FileSink, data: &[u8]) {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let owned = data.to_vec();
        let writer = std::thread::spawn(move || tx.write_all(&owned).unwrap());
        let mut left = data.len();
        while left > 0 {
            if !sink.splice_from(rx.as_raw_fd(), &mut left).unwrap() {
                let mut fds = [sys::pollfd(rx.as_raw_fd(), libc::POLLIN)];
                sys::poll(&mut fds, None).unwrap();
            }
        }
        writer.join().unwrap();
    }

    fn contents(f: &mut std::fs::File) -> Vec<u8> {
        let mut v = Vec::new();
        std::io::Seek::rewind(f).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn spliced_bytes_land_in_the_file_and_in_the_checksum() {
        let mut f = file();
        let data = bytes(3 << 20, 7);
        let sum = {
            let mut sink = FileSink::new(f.as_fd(), 0).unwrap();
            splice_all(&mut sink, &data);
            assert_eq!(sink.offset(), data.len() as u64);
            assert!(!sink.copy_into_file, "took the copying fallback");
            assert!(!sink.reader.by_read, "took the reading fallback");
            sink.checksum()
        };
        assert_eq!(contents(&mut f), data);
        assert_eq!(sum.digest(), checksum_of(&[&data]).digest());
        assert_eq!(sum.len(), data.len() as u64);
    }

    #[test]
    fn bytes_from_memory_and_from_the_channel_follow_each_other() {
        let mut f = file();
        let (a, b, c) = (bytes(100, 1), bytes(70_000, 2), bytes(5, 3));
        let sum = {
            let mut sink = FileSink::new(f.as_fd(), 0).unwrap();
            sink.write_bytes(&a).unwrap();
            splice_all(&mut sink, &b);
            sink.write_bytes(&c).unwrap();
            sink.checksum()
        };
        assert_eq!(contents(&mut f), [&a[..], &b, &c].concat());
        assert_eq!(sum.digest(), checksum_of(&[&a, &b, &c]).digest());
    }

    #[test]
    fn a_payload_across_a_window_boundary_is_hashed_whole() {
        // Start just before the first window's end: the hash reads from
        // two mappings.
        let mut f = file();
        let start = WINDOW - 1000;
        f.set_len(start).unwrap();
        let data = bytes(300_000, 9);
        let sum = {
            let mut sink = FileSink::new(f.as_fd(), start).unwrap();
            splice_all(&mut sink, &data);
            assert_eq!(sink.reader.window.as_ref().map(|w| w.start), Some(WINDOW));
            sink.checksum()
        };
        assert_eq!(&contents(&mut f)[start as usize..], &data[..]);
        assert_eq!(sum.digest(), checksum_of(&[&data]).digest());
    }

    #[test]
    fn an_empty_non_blocking_channel_moves_nothing() {
        let f = file();
        let (_tx, rx) = UnixStream::pair().unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut sink = FileSink::new(f.as_fd(), 0).unwrap();
        let mut left = 4096;
        assert!(matches!(
            sink.splice_from(rx.as_raw_fd(), &mut left),
            Ok(false)
        ));
        assert_eq!((sink.offset(), left), (0, 4096));
    }

    #[test]
    fn a_closed_channel_is_an_unexpected_end_of_the_source() {
        let f = file();
        let (tx, rx) = UnixStream::pair().unwrap();
        drop(tx);
        let mut sink = FileSink::new(f.as_fd(), 0).unwrap();
        match sink.splice_from(rx.as_raw_fd(), &mut 4096) {
            Err(SinkError::Source(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_source_splice_refuses_is_reported_with_nothing_taken() {
        // An eventfd can be read but not spliced from.
        let f = file();
        let efd = nix::sys::eventfd::EventFd::from_value(1).unwrap();
        let mut sink = FileSink::new(f.as_fd(), 0).unwrap();
        let mut left = 4096;
        match sink.splice_from(efd.as_fd().as_raw_fd(), &mut left) {
            Err(SinkError::Source(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL)),
            other => panic!("{other:?}"),
        }
        assert_eq!((sink.offset(), left), (0, 4096));
    }

    #[test]
    fn the_copying_fallbacks_give_the_same_file_and_checksum() {
        let mut f = file();
        let data = bytes(200_000, 5);
        let sum = {
            let mut sink = FileSink::new(f.as_fd(), 0).unwrap();
            // As when the filesystem refuses splice and mapping.
            sink.copy_into_file = true;
            sink.reader.by_read = true;
            splice_all(&mut sink, &data);
            assert!(sink.reader.window.is_none());
            sink.checksum()
        };
        assert_eq!(contents(&mut f), data);
        assert_eq!(sum.digest(), checksum_of(&[&data]).digest());
    }

    #[test]
    fn a_file_that_refuses_the_bytes_is_an_error_of_the_file() {
        // A file opened read-only fails the file's side with EBADF, as a
        // full disk does with ENOSPC. The bytes did leave the channel,
        // and `left` says so: the caller skips only the rest.
        let ro = std::fs::File::open("/proc/self/exe").unwrap();
        let mut sink = FileSink::new(ro.as_fd(), 0).unwrap();
        let (mut tx, rx) = UnixStream::pair().unwrap();
        tx.write_all(b"abc").unwrap();
        let mut left = 10;
        match sink.splice_from(rx.as_raw_fd(), &mut left) {
            Err(SinkError::File(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADF)),
            other => panic!("{other:?}"),
        }
        assert_eq!(left, 7);
    }
}
