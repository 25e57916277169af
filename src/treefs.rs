//! Directory trees on a local file system, for both ends of a tree copy:
//! the client uploading (`copy_in`) and the helper downloading
//! (`copy_out`) read a tree with [`walk`] and [`TreeSender`]; the helper
//! receiving an upload and the client receiving a download write one with
//! [`TreeWriter`].
//!
//! Nothing here follows a symlink below the tree's top: every component is
//! opened relative to its parent's fd with `O_NOFOLLOW`, so a link in the
//! tree (or one planted in the destination while the copy runs) never
//! leads a read or a write outside it. Links are copied as links.
//!
//! Regular files are written through [`AtomicFile`]: a file appears under
//! its name only when complete and verified, and an abandoned one leaves
//! nothing behind. An abandoned file's fd is handed to `discard`, so a
//! cancel does not wait while the pages of a large one are freed.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::atomic_file::AtomicFile;
use crate::discard::{self, Discard, WaitGroup};
use crate::sys::{self, cvt, fstat};
use crate::wire::{
    encode_frame, encode_header, EntryMeta, Frame, FrameType, StreamChecksum, TreeFrame,
};

/// Files at most this long travel in one FILE_WHOLE frame (and never more
/// than the chunk size).
pub(crate) const INLINE_MAX: usize = 32 << 10;

/// The longest entry path a tree copy sends. Any tree frame for it fits in
/// a control frame ([`crate::wire::MAX_CONTROL`], 64 KiB), a symlink's
/// target (at most PATH_MAX) included. The walk reports a longer one as an
/// entry error (ENAMETOOLONG) and leaves it and what is beneath it out.
pub(crate) const MAX_TREE_PATH: usize = 60 << 10;

/// A failure about one entry of a tree: its path (relative to the tree's
/// parent), the errno, and a message naming the operation and the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EntryError {
    pub rel: Vec<u8>,
    pub errno: i32,
    pub message: String,
}

impl EntryError {
    pub fn new(verb: &str, rel: &[u8], errno: i32) -> EntryError {
        EntryError {
            rel: rel.to_vec(),
            errno,
            message: format!(
                "{verb} {}: {}",
                String::from_utf8_lossy(rel),
                crate::strerror(errno)
            ),
        }
    }

    pub fn io(verb: &str, rel: &[u8], e: &io::Error) -> EntryError {
        EntryError::new(verb, rel, e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// What an entry of a walked tree is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Dir,
    File { size: u64 },
    Link { target: Vec<u8> },
}

/// One entry of a walked tree, in the order it is sent: a directory comes
/// before everything inside it, and a directory's files and links come
/// before its subdirectories, so a receiver finds each entry's parent
/// among the directories it just made.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub rel: Vec<u8>,
    pub kind: EntryKind,
    pub meta: EntryMeta,
}

/// A walked tree.
#[derive(Default)]
pub(crate) struct Walk {
    pub entries: Vec<Entry>,
    pub files: u64,
    pub bytes: u64,
    /// Special files (FIFOs, sockets, devices) left out, as log lines.
    pub skipped: Vec<String>,
    /// Entries that could not be read (keep-going mode only).
    pub errors: Vec<EntryError>,
}

fn cstring(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value for fstatat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: name is NUL-terminated and st is a live, writable stat.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

fn meta_of(st: &libc::stat) -> EntryMeta {
    EntryMeta {
        mode: st.st_mode,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
    }
}

/// The names in an open directory, without `.` and `..`.
pub(crate) fn read_names(dir: OwnedFd) -> io::Result<Vec<CString>> {
    let raw = dir.as_raw_fd();
    // fdopendir takes the fd over; keep ours apart so both close cleanly.
    // SAFETY: F_DUPFD_CLOEXEC on an open fd; no pointers.
    let dup = cvt(unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: dup is an open directory fd whose ownership passes to the
    // DIR on success.
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so dup is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        // readdir reports errors only through errno, so clear it first.
        // SAFETY: __errno_location returns this thread's errno slot.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: d is a live DIR from fdopendir.
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            break match sys::errno() {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        // SAFETY: readdir returned a valid entry whose d_name is
        // NUL-terminated and valid until the next readdir; copied now.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: d came from fdopendir and is closed only here.
    unsafe { libc::closedir(d) };
    drop(dir);
    result.map(|()| names)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        v.extend_from_slice(parent);
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Walk the tree whose top is `name` in the directory `parent`, without
/// following symlinks (the top included). Its entries' paths start with
/// `top` (the name the tree gets at the destination). With `keep_going`,
/// unreadable directories are recorded in [`Walk::errors`] and the walk
/// goes on; otherwise the first one is returned.
pub(crate) fn walk(
    parent: BorrowedFd<'_>,
    name: &[u8],
    top: &[u8],
    keep_going: bool,
) -> Result<Walk, EntryError> {
    let mut w = Walk::default();
    let c = cstring(name).map_err(|e| EntryError::io("stat", top, &e))?;
    let st = lstat_at(parent, &c).map_err(|e| EntryError::io("stat", top, &e))?;
    match classify(parent, &c, &st, top) {
        Ok(Some(kind)) => {
            let is_dir = kind == EntryKind::Dir;
            w.push(Entry {
                rel: top.to_vec(),
                kind,
                meta: meta_of(&st),
            });
            if is_dir {
                walk_tree(parent, name, top, keep_going, &mut w)?;
            }
        }
        Ok(None) => w.skipped.push(special_line(top, &st)),
        Err(e) => return Err(e),
    }
    Ok(w)
}

impl Walk {
    fn push(&mut self, e: Entry) {
        if let EntryKind::File { size } = e.kind {
            self.files += 1;
            self.bytes += size;
        }
        self.entries.push(e);
    }
}

fn special_line(rel: &[u8], st: &libc::stat) -> String {
    let what = match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "special file",
    };
    format!(
        "barge: skipping {what} {} (only files, directories and symlinks are copied)",
        String::from_utf8_lossy(rel)
    )
}

/// The kind of a stat'ed entry; `None` for a special file.
fn classify(
    dir: BorrowedFd<'_>,
    name: &CStr,
    st: &libc::stat,
    rel: &[u8],
) -> Result<Option<EntryKind>, EntryError> {
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Some(EntryKind::Dir),
        libc::S_IFREG => Some(EntryKind::File {
            size: st.st_size as u64,
        }),
        libc::S_IFLNK => Some(EntryKind::Link {
            target: sys::read_link_at(dir, name)
                .map_err(|e| EntryError::io("readlink", rel, &e))?,
        }),
        _ => None,
    })
}

/// Walk beneath the directory `name` in `parent`, whose entry (path
/// `top`) is already in `w`, depth first without recursion: a stack of
/// the directories whose subdirectories are still to walk, each the index
/// of its entry in `w` and its subdirectories left (last first). Levels
/// are reached through [`PathFds`], so the fds held stay few however deep
/// the tree is; its depth is bounded by [`MAX_TREE_PATH`], checked before
/// a directory is entered.
fn walk_tree(
    parent: BorrowedFd<'_>,
    name: &[u8],
    top: &[u8],
    keep_going: bool,
    w: &mut Walk,
) -> Result<(), EntryError> {
    let mut fds = PathFds::new();
    // A directory's path on disk: `name` in place of `top`.
    let on_disk = |rel: &[u8]| [name, &rel[top.len()..]].concat();
    let mut stack: Vec<(usize, Vec<(CString, EntryMeta)>)> = Vec::new();
    let mut index = w.entries.len() - 1;
    loop {
        let rel = w.entries[index].rel.clone();
        let disk = on_disk(&rel);
        let (dir, last) = split_rel(&disk);
        let listed = cstring(last)
            .and_then(|last| Ok((fds.open(parent, dir)?, last)))
            .and_then(|(from, last)| {
                sys::openat(
                    from,
                    &last,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
            });
        let subdirs = match listed {
            Ok(fd) => list_dir(fd, &rel, keep_going, w)?,
            Err(e) => {
                let err = EntryError::io("open directory", &rel, &e);
                if !keep_going {
                    return Err(err);
                }
                w.errors.push(err);
                None
            }
        };
        if let Some(mut subdirs) = subdirs {
            subdirs.reverse();
            stack.push((index, subdirs));
        }
        // The next subdirectory: of the innermost directory with one left.
        let next = loop {
            let Some((at, subdirs)) = stack.last_mut() else {
                break None;
            };
            match subdirs.pop() {
                Some((n, meta)) => break Some((*at, n, meta)),
                None => {
                    stack.pop();
                }
            }
        };
        let Some((at, n, meta)) = next else {
            return Ok(());
        };
        let child = join(&w.entries[at].rel, n.to_bytes());
        w.push(Entry {
            rel: child,
            kind: EntryKind::Dir,
            meta,
        });
        index = w.entries.len() - 1;
    }
}

/// List the directory `rel`, open as `fd`: its files and links go into
/// `w`, its subdirectories are returned (sorted by name) for the caller to
/// walk. `None` when it could not be read and `keep_going` recorded that.
fn list_dir(
    fd: OwnedFd,
    rel: &[u8],
    keep_going: bool,
    w: &mut Walk,
) -> Result<Option<Vec<(CString, EntryMeta)>>, EntryError> {
    let listed = (|| {
        // SAFETY: F_DUPFD_CLOEXEC on an open fd; no pointers.
        let keep = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: a new fd owned by nobody else.
        let keep = unsafe { OwnedFd::from_raw_fd(keep) };
        Ok((keep, read_names(fd)?))
    })();
    let (dir, mut names) = match listed {
        Ok(x) => x,
        Err(e) => {
            let err = EntryError::io("open directory", rel, &e);
            if keep_going {
                w.errors.push(err);
                return Ok(None);
            }
            return Err(err);
        }
    };
    names.sort();
    let mut subdirs = Vec::new();
    for n in names {
        let child = join(rel, n.to_bytes());
        if child.len() > MAX_TREE_PATH {
            let err = EntryError::new("copy", &child, libc::ENAMETOOLONG);
            if keep_going {
                w.errors.push(err);
                continue;
            }
            return Err(err);
        }
        let st = match lstat_at(dir.as_fd(), &n) {
            Ok(st) => st,
            // Removed since readdir saw it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => {
                let err = EntryError::io("stat", &child, &e);
                if keep_going {
                    w.errors.push(err);
                    continue;
                }
                return Err(err);
            }
        };
        match classify(dir.as_fd(), &n, &st, &child) {
            Ok(Some(EntryKind::Dir)) => subdirs.push((n, meta_of(&st))),
            Ok(Some(kind)) => w.push(Entry {
                rel: child,
                kind,
                meta: meta_of(&st),
            }),
            Ok(None) => w.skipped.push(special_line(&child, &st)),
            Err(e) if keep_going => w.errors.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(subdirs))
}

/// Split `a/b/c` into `a/b` and `c`; a single name has an empty parent.
pub(crate) fn split_rel(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}

/// The directory of the last entry, kept open: entries arrive grouped by
/// directory, so most lookups cost no system call.
struct DirCache {
    rel: Vec<u8>,
    fd: Option<OwnedFd>,
}

impl DirCache {
    fn new() -> DirCache {
        DirCache {
            rel: Vec::new(),
            fd: None,
        }
    }

    /// The directory `rel` beneath `base`, opened one name at a time with
    /// `O_NOFOLLOW`, so a symlink anywhere on the way gives an error
    /// instead of being followed.
    fn get<'a>(&'a mut self, base: BorrowedFd<'a>, rel: &[u8]) -> io::Result<BorrowedFd<'a>> {
        if rel.is_empty() {
            return Ok(base);
        }
        if self.fd.is_none() || self.rel != rel {
            // Start from the cached directory when `rel` lies beneath it.
            let (mut cur, rest): (Option<OwnedFd>, &[u8]) = match &self.fd {
                Some(_)
                    if rel.len() > self.rel.len()
                        && rel.starts_with(&self.rel)
                        && rel[self.rel.len()] == b'/' =>
                {
                    (self.fd.take(), &rel[self.rel.len() + 1..])
                }
                _ => (None, rel),
            };
            self.fd = None;
            for comp in rest.split(|&b| b == b'/') {
                let name = cstring(comp)?;
                let from = cur.as_ref().map_or(base, |f| f.as_fd());
                let next = sys::openat(
                    from,
                    &name,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )?;
                cur = Some(next);
            }
            self.fd = cur;
            self.rel = rel.to_vec();
        }
        Ok(self.fd.as_ref().expect("opened above").as_fd())
    }

    fn forget(&mut self) {
        self.fd = None;
        self.rel.clear();
    }
}

/// Directory fds along one path beneath a base directory, for walking
/// deep trees without one fd per level: the directory at level `l` (the
/// first `l` components) is held only while `l` is `d` with some of its
/// lowest set bits cleared, `d` being the deepest level opened, so at
/// most about log2(depth) + 1 fds are held (16 at the 30k levels
/// MAX_TREE_PATH allows). A level dropped is reopened from the nearest
/// one held, one name at a time with `O_NOFOLLOW` (a symlink on the way
/// gives an error instead of being followed): moving along a tree in
/// depth-first order opens each level O(log depth) times in all, not
/// O(depth) times as reopening from the base would.
pub(crate) struct PathFds {
    /// The path whose levels are held, and where each component ends.
    path: Vec<u8>,
    ends: Vec<usize>,
    /// `(level, fd)`, ascending by level; level 0 is the base, never held.
    held: Vec<(usize, OwnedFd)>,
}

/// Whether level `p` is `l` with some of its lowest set bits cleared
/// (`l` itself included).
fn is_kept(p: usize, l: usize) -> bool {
    let t = p.trailing_zeros();
    p <= l && (l >> t) << t == p
}

impl PathFds {
    pub fn new() -> PathFds {
        PathFds {
            path: Vec::new(),
            ends: Vec::new(),
            held: Vec::new(),
        }
    }

    /// The directory `rel` beneath `base` (`base` itself when empty),
    /// opened `O_PATH`.
    pub fn open<'a>(&'a mut self, base: BorrowedFd<'a>, rel: &[u8]) -> io::Result<BorrowedFd<'a>> {
        // How many leading components `rel` shares with the path held.
        let mut same = 0;
        for (i, &end) in self.ends.iter().enumerate() {
            let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
            let matches = rel.len() >= end
                && rel[start..end] == self.path[start..end]
                && (rel.len() == end || rel[end] == b'/');
            if !matches {
                break;
            }
            same = i + 1;
        }
        self.held.retain(|&(l, _)| l <= same);
        self.ends.truncate(same);
        self.path.clear();
        self.path.extend_from_slice(rel);
        if !rel.is_empty() && rel.len() > self.ends.last().copied().unwrap_or(0) {
            let from = self.ends.last().map_or(0, |&e| e + 1);
            let mut at = from;
            for comp in rel[from..].split(|&b| b == b'/') {
                at += comp.len();
                self.ends.push(at);
                at += 1;
            }
        }
        let want = self.ends.len();
        let mut level = self.held.last().map_or(0, |&(l, _)| l);
        while level < want {
            let start = if level == 0 {
                0
            } else {
                self.ends[level - 1] + 1
            };
            let name = cstring(&self.path[start..self.ends[level]]);
            let from = self.held.last().map_or(base, |(_, f)| f.as_fd());
            let next = name.and_then(|name| {
                sys::openat(
                    from,
                    &name,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
            });
            let next = match next {
                Ok(fd) => fd,
                Err(e) => {
                    // Hold only what was opened.
                    self.ends.truncate(level);
                    self.path
                        .truncate(if level == 0 { 0 } else { self.ends[level - 1] });
                    return Err(e);
                }
            };
            level += 1;
            self.held.retain(|&(l, _)| is_kept(l, level));
            self.held.push((level, next));
        }
        Ok(self.held.last().map_or(base, |(_, f)| f.as_fd()))
    }

    /// How many fds are held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.len()
    }
}

// ---- sending ----

/// A file being streamed as FILE, DATA*, END.
struct Streaming {
    file: std::fs::File,
    rel_index: usize,
    sum: StreamChecksum,
}

/// Reads a walked tree and encodes it as tree frames, batch by batch.
pub(crate) struct TreeSender {
    /// The directory holding the tree's top.
    base: OwnedFd,
    /// The top's name in `base`; entries' paths start with `top` instead.
    top_name: Vec<u8>,
    top: Vec<u8>,
    entries: Vec<Entry>,
    next: usize,
    cache: DirCache,
    streaming: Option<Streaming>,
    chunk: usize,
    inline_max: usize,
    scratch: Vec<u8>,
    pub files_done: u64,
    pub bytes_done: u64,
    done: bool,
}

impl TreeSender {
    pub fn new(base: OwnedFd, top_name: &[u8], walk: Walk, chunk: usize) -> TreeSender {
        let top = walk
            .entries
            .first()
            .map(|e| e.rel.clone())
            .unwrap_or_default();
        TreeSender {
            base,
            top_name: top_name.to_vec(),
            top,
            entries: walk.entries,
            next: 0,
            cache: DirCache::new(),
            streaming: None,
            chunk,
            inline_max: INLINE_MAX.min(chunk),
            scratch: vec![0; chunk.max(INLINE_MAX) + 1],
            files_done: 0,
            bytes_done: 0,
            done: false,
        }
    }

    /// Whether DONE has been encoded.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The path an entry has in the source, relative to `base`.
    fn source_rel(&self, rel: &[u8]) -> Vec<u8> {
        let rest = &rel[self.top.len()..];
        let mut v = self.top_name.clone();
        v.extend_from_slice(rest);
        v
    }

    /// Open an entry's file for reading, never following a symlink.
    fn open_file(&mut self, rel: &[u8]) -> io::Result<(std::fs::File, libc::stat)> {
        let src = self.source_rel(rel);
        let (dir, name) = split_rel(&src);
        let name = cstring(name)?;
        let dir = self.cache.get(self.base.as_fd(), dir)?;
        let fd = sys::openat(
            dir,
            &name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )?;
        let st = fstat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            // Replaced by something else since the walk.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok((std::fs::File::from(fd), st))
    }

    /// Append frames with `serial` to `out` until it holds at least
    /// `budget` bytes or the tree is done. An entry that cannot be read is
    /// returned as an error after the stream has been left consistent (a
    /// SKIP appended for a file in flight); calling again goes on with the
    /// next entry.
    pub fn fill(
        &mut self,
        serial: u64,
        out: &mut Vec<u8>,
        budget: usize,
    ) -> Result<(), EntryError> {
        while out.len() < budget && !self.done {
            if let Some(s) = self.streaming.as_mut() {
                let chunk = self.chunk;
                match read_some(&mut s.file, &mut self.scratch[..chunk]) {
                    Ok(0) => {
                        push_frame(
                            out,
                            &Frame::End {
                                len: s.sum.len(),
                                checksum: s.sum.digest(),
                            },
                            serial,
                        );
                        self.streaming = None;
                        self.files_done += 1;
                    }
                    Ok(n) => {
                        s.sum.update(&self.scratch[..n]);
                        out.extend_from_slice(&encode_header(FrameType::Data, n as u32, serial));
                        out.extend_from_slice(&self.scratch[..n]);
                        self.bytes_done += n as u64;
                    }
                    Err(e) => {
                        let rel = self.entries[s.rel_index].rel.clone();
                        self.streaming = None;
                        self.files_done += 1;
                        push_frame(out, &Frame::Tree(TreeFrame::Skip), serial);
                        return Err(EntryError::io("read", &rel, &e));
                    }
                }
                continue;
            }
            let Some(entry) = self.entries.get(self.next) else {
                push_frame(out, &Frame::Tree(TreeFrame::Done), serial);
                self.done = true;
                break;
            };
            let index = self.next;
            self.next += 1;
            match &entry.kind {
                EntryKind::Dir => push_frame(
                    out,
                    &Frame::Tree(TreeFrame::Dir {
                        meta: entry.meta,
                        path: &entry.rel,
                    }),
                    serial,
                ),
                EntryKind::Link { target } => push_frame(
                    out,
                    &Frame::Tree(TreeFrame::Link {
                        meta: entry.meta,
                        path: &entry.rel,
                        target,
                    }),
                    serial,
                ),
                EntryKind::File { .. } => {
                    let rel = entry.rel.clone();
                    let (mut file, st) = match self.open_file(&rel) {
                        Ok(x) => x,
                        Err(e) => {
                            self.files_done += 1;
                            return Err(EntryError::io("open", &rel, &e));
                        }
                    };
                    let meta = meta_of(&st);
                    // Small files: read whole, send in one frame.
                    let mut got = 0;
                    let whole = if (st.st_size as u64) <= self.inline_max as u64 {
                        let limit = self.inline_max + 1;
                        loop {
                            match read_some(&mut file, &mut self.scratch[got..limit]) {
                                Ok(0) => break got <= self.inline_max,
                                Ok(n) => {
                                    got += n;
                                    if got == limit {
                                        break false;
                                    }
                                }
                                Err(e) => {
                                    self.files_done += 1;
                                    return Err(EntryError::io("read", &rel, &e));
                                }
                            }
                        }
                    } else {
                        false
                    };
                    if whole && crate::wire::tree::file_whole_fits(&rel, got) {
                        let data = &self.scratch[..got];
                        push_frame(
                            out,
                            &Frame::Tree(TreeFrame::FileWhole {
                                meta,
                                checksum: whole_checksum(data),
                                path: &rel,
                                data,
                            }),
                            serial,
                        );
                        self.files_done += 1;
                        self.bytes_done += got as u64;
                        continue;
                    }
                    push_frame(
                        out,
                        &Frame::Tree(TreeFrame::File {
                            meta,
                            size: st.st_size as u64,
                            path: &rel,
                        }),
                        serial,
                    );
                    let mut sum = StreamChecksum::new();
                    if got > 0 {
                        let data = &self.scratch[..got];
                        sum.update(data);
                        out.extend_from_slice(&encode_header(FrameType::Data, got as u32, serial));
                        out.extend_from_slice(data);
                        self.bytes_done += got as u64;
                    }
                    self.streaming = Some(Streaming {
                        file,
                        rel_index: index,
                        sum,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The checksum (CRC-64/NVME) of `data`, as END and FILE_WHOLE carry it.
fn whole_checksum(data: &[u8]) -> u64 {
    let mut sum = StreamChecksum::new();
    sum.update(data);
    sum.digest()
}

fn read_some(file: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Append one encoded frame. Tree frames are built from checked paths and
/// sizes, so encoding cannot fail; if it ever did, the frame would be
/// missing and the receiver would report the stream as broken.
pub(crate) fn push_frame(out: &mut Vec<u8>, frame: &Frame<'_>, serial: u64) {
    let r = encode_frame(frame, serial, out);
    debug_assert!(r.is_ok(), "tree frame failed to encode: {r:?}");
}

// ---- receiving ----

/// A file being written: an anonymous `O_TMPFILE` in its directory, or,
/// where the file system has no `O_TMPFILE`, an [`AtomicFile`] under a
/// hidden name.
enum NewFile {
    Anonymous(File),
    Atomic(AtomicFile),
}

impl NewFile {
    fn file(&mut self) -> &mut File {
        match self {
            NewFile::Anonymous(f) => f,
            NewFile::Atomic(a) => a.file(),
        }
    }

    /// Give up on the file: it never gets its name (a hidden one is
    /// unlinked), and what is left is its fd, whose close frees the data.
    fn abandon(self) -> OwnedFd {
        match self {
            NewFile::Anonymous(f) => f.into(),
            NewFile::Atomic(a) => a.abandon(),
        }
    }
}

/// Give the anonymous file `file` the name `name` in `dir`: linked
/// straight to it when the name is free (one system call, and the file
/// appears whole), else linked under a hidden name and renamed over what
/// is there.
fn place_anonymous(file: &File, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match link_anonymous(file, dir, name) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        r => return r,
    }
    let mut tries = 0;
    let hidden = loop {
        let stem = &name.to_bytes()[..name.to_bytes().len().min(200)];
        let mut h = vec![b'.'];
        h.extend_from_slice(stem);
        h.extend_from_slice(crate::atomic_file::HIDDEN_MARK.as_bytes());
        h.extend_from_slice(sys::random_suffix().as_bytes());
        let hidden = cstring(&h)?;
        match link_anonymous(file, dir, &hidden) {
            Ok(()) => break hidden,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && tries < 16 => tries += 1,
            Err(e) => return Err(e),
        }
    };
    // SAFETY: both names are NUL-terminated; dir is open.
    let r = unsafe {
        libc::renameat(
            dir.as_raw_fd(),
            hidden.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: as above; failure leaves nothing more to do.
        unsafe { libc::unlinkat(dir.as_raw_fd(), hidden.as_ptr(), 0) };
        return Err(e);
    }
    Ok(())
}

/// `linkat` an anonymous file to `name` in `dir`: by fd (AT_EMPTY_PATH,
/// which older kernels allow only with CAP_DAC_READ_SEARCH), else through
/// its `/proc/self/fd` link.
fn link_anonymous(file: &File, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: c"" and name are NUL-terminated; both fds are open.
    let r = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EPERM)) {
        return Err(e);
    }
    let proc_path = cstring(format!("/proc/self/fd/{}", file.as_raw_fd()).as_bytes())?;
    // SAFETY: both paths are NUL-terminated; dir is open.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })?;
    Ok(())
}

/// A file being received as FILE, DATA*, END.
struct InFlight {
    file: NewFile,
    rel: Vec<u8>,
    meta: EntryMeta,
    sum: StreamChecksum,
}

/// The file being received.
enum Receiving {
    None,
    File(Box<InFlight>),
    /// A file whose creation or writing failed: its data is discarded up
    /// to its END or SKIP.
    Discarding,
}

/// Why a tree stream must end as a whole, not one entry: the peer broke
/// a rule of the stream (`EPROTO`: an entry outside the tree, a directory
/// sent twice) or went past a bound (`E2BIG`; `ENOMEM` if even the bounded
/// record could not be allocated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamError {
    pub errno: i32,
    pub message: String,
}

/// What a tree entry frame can come to besides success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// This entry failed; the tree can go on (keep-going).
    Entry(EntryError),
    /// The stream must end.
    Stream(StreamError),
}

impl From<EntryError> for Refused {
    fn from(e: EntryError) -> Refused {
        Refused::Entry(e)
    }
}

/// How many directories a tree receiver records by default for their
/// deferred mode and mtime (see [`TreeLimits`]).
pub const DEFAULT_MAX_TREE_DIRS: usize = 1_000_000;

/// Bytes of recorded directory paths allowed per directory of
/// [`TreeLimits::max_dirs`]: 256 MiB at the default million.
const DIR_PATH_BYTES_EACH: usize = 256;

/// Bounds on what a tree receiver keeps while the stream runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeLimits {
    /// The most directories one tree may create: each is recorded until
    /// the stream ends, for its mode and mtime. Their paths may take
    /// `max_dirs * 256` bytes in all. Past either: `E2BIG`.
    pub max_dirs: usize,
}

impl Default for TreeLimits {
    fn default() -> TreeLimits {
        TreeLimits {
            max_dirs: DEFAULT_MAX_TREE_DIRS,
        }
    }
}

/// Which name the first entry of a received tree must have.
#[derive(Clone, Debug)]
pub(crate) enum Top {
    /// Exactly this one (the last component of the path the client asked
    /// the helper for).
    Named(Vec<u8>),
    /// Any single name (the helper receiving an upload).
    AnyName,
}

/// The directories a tree created, awaiting their mode and mtime: paths
/// packed in one buffer, each with where it ends and its metadata, and
/// the identity of each so that a repeat is recognised. Bounded by
/// [`TreeLimits`]; every allocation is fallible.
#[derive(Default)]
struct CreatedDirs {
    paths: Vec<u8>,
    records: Vec<(usize, EntryMeta)>,
    ids: std::collections::HashSet<(u64, u64)>,
}

impl CreatedDirs {
    fn iter_rev(&self) -> impl Iterator<Item = (&[u8], &EntryMeta)> {
        (0..self.records.len()).rev().map(move |i| {
            let start = if i == 0 { 0 } else { self.records[i - 1].0 };
            let (end, ref meta) = self.records[i];
            (&self.paths[start..end], meta)
        })
    }
}

/// Writes a received tree beneath a destination directory.
///
/// The receiver of a tree trusts nothing in it: [`TreeWriter::admit`]
/// holds every entry to the tree that was asked for (the first entry is
/// the top, every later one lies beneath it), a directory sent twice ends
/// the stream, and what the writer records per entry is bounded.
pub(crate) struct TreeWriter {
    base: OwnedFd,
    preserve: bool,
    /// Keep setuid, setgid and sticky bits (TREE_SETID).
    setid: bool,
    umask: u32,
    limits: TreeLimits,
    /// The name the first entry must have; then the top that was seen,
    /// and whether it is a directory (only a directory has entries below).
    top: Top,
    seen_top: Option<(Vec<u8>, bool)>,
    cache: DirCache,
    /// Directories this tree created, whose mode and mtime are set when
    /// the tree is done, after everything inside them was written.
    /// Directories that were there already are merged into and keep
    /// their own, so they are not recorded.
    dirs: CreatedDirs,
    receiving: Receiving,
    /// Held by each abandoned file until the discard thread has closed it
    /// (the client's handle waits on it when it closes).
    discards: Option<WaitGroup>,
    /// Files committed and bytes received so far.
    pub files_done: u64,
    pub bytes_done: u64,
}

/// How a tree's receiver treats modes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ModePolicy {
    /// Give entries the source's permission bits and mtime.
    pub preserve: bool,
    /// Keep setuid, setgid and sticky bits.
    pub setid: bool,
    /// The receiving process's umask (applied when `preserve` is off).
    pub umask: u32,
}

impl TreeWriter {
    pub fn new(
        base: OwnedFd,
        top: Top,
        modes: ModePolicy,
        limits: TreeLimits,
        discards: Option<&WaitGroup>,
    ) -> TreeWriter {
        TreeWriter {
            base,
            preserve: modes.preserve,
            setid: modes.setid,
            umask: modes.umask,
            limits,
            top,
            seen_top: None,
            cache: DirCache::new(),
            dirs: CreatedDirs::default(),
            receiving: Receiving::None,
            discards: discards.cloned(),
            files_done: 0,
            bytes_done: 0,
        }
    }

    /// Check that an entry `rel` (of frame `kind`) belongs to the tree:
    /// the first entry is the top (named as [`Top`] says), every later one
    /// lies beneath a top that is a directory. Anything else is `EPROTO`,
    /// and nothing of it is written.
    fn admit(&mut self, kind: FrameType, rel: &[u8]) -> Result<(), StreamError> {
        let outside = |why: String| StreamError {
            errno: libc::EPROTO,
            message: format!(
                "{} {} lies outside the tree: {why}",
                kind.name(),
                String::from_utf8_lossy(rel)
            ),
        };
        match &self.seen_top {
            None => {
                let ok = match &self.top {
                    Top::Named(name) => rel == name.as_slice(),
                    Top::AnyName => !rel.contains(&b'/'),
                };
                if !ok {
                    return Err(outside(match &self.top {
                        Top::Named(name) => {
                            format!("the first entry must be {}", String::from_utf8_lossy(name))
                        }
                        Top::AnyName => "the first entry must be a single name".into(),
                    }));
                }
                self.seen_top = Some((rel.to_vec(), kind == FrameType::TreeDir));
            }
            Some((top, is_dir)) => {
                let below =
                    rel.len() > top.len() + 1 && rel.starts_with(top) && rel[top.len()] == b'/';
                if !below || !is_dir {
                    return Err(outside(format!(
                        "every entry after the first must lie beneath the directory {}",
                        String::from_utf8_lossy(top)
                    )));
                }
            }
        }
        Ok(())
    }

    /// The permission bits an entry gets from the source's `mode`: the
    /// source's (PRESERVE) or the source's less the umask, without setuid,
    /// setgid and sticky unless asked for.
    fn kept_mode(&self, mode: u32) -> u32 {
        let perm = if self.preserve {
            mode & 0o777
        } else {
            mode & 0o777 & !self.umask
        };
        if self.setid {
            perm | (mode & 0o7000)
        } else {
            perm
        }
    }

    /// Make room to record one more created directory, within the bounds.
    fn reserve_dir(&mut self, rel: &[u8]) -> Result<(), StreamError> {
        let max = self.limits.max_dirs;
        let max_bytes = max.saturating_mul(DIR_PATH_BYTES_EACH);
        let d = &mut self.dirs;
        if d.records.len() >= max || d.paths.len() + rel.len() > max_bytes {
            return Err(StreamError {
                errno: libc::E2BIG,
                message: format!(
                    "TREE_DIR {}: the tree makes more than {max} directories \
                     (or {max_bytes} bytes of their paths), the bound of one tree copy",
                    String::from_utf8_lossy(rel)
                ),
            });
        }
        let recorded = d.records.len();
        let oom = |_| StreamError {
            errno: libc::ENOMEM,
            message: format!(
                "TREE_DIR {}: no memory to record the tree's directories ({recorded} so far)",
                String::from_utf8_lossy(rel)
            ),
        };
        d.paths.try_reserve(rel.len()).map_err(oom)?;
        d.records.try_reserve(1).map_err(oom)?;
        d.ids.try_reserve(1).map_err(oom)?;
        Ok(())
    }

    /// Let go of an unfinished file: closed on the discard thread once it
    /// holds enough data for its close to take time (see `discard`).
    fn let_go(&self, file: NewFile) {
        discard::later(Discard::Close(file.abandon()), self.discards.as_ref());
    }

    /// Stop receiving the file in flight, if any, and enter `next`.
    fn stop_receiving(&mut self, next: Receiving) {
        if let Receiving::File(f) = std::mem::replace(&mut self.receiving, next) {
            self.let_go(f.file);
        }
    }

    /// Whether a FILE is open (its END or SKIP is due).
    pub fn in_file(&self) -> bool {
        !matches!(self.receiving, Receiving::None)
    }

    fn parent<'a>(&'a mut self, rel: &'a [u8]) -> Result<(BorrowedFd<'a>, CString), EntryError> {
        let (dir, name) = split_rel(rel);
        let name = cstring(name).map_err(|e| EntryError::io("create", rel, &e))?;
        let base = self.base.as_fd();
        // A symlink or a file where a directory is expected gives ENOTDIR
        // or ELOOP here: links are never followed.
        let fd = self
            .cache
            .get(base, dir)
            .map_err(|e| EntryError::io("open parent directory of", rel, &e))?;
        Ok((fd, name))
    }

    /// Make the directory `rel` (an entry of frame TREE_DIR), or merge
    /// into the one that is there. A directory this tree already made,
    /// sent again, ends the stream: an honest sender sends each once.
    pub fn dir(&mut self, rel: &[u8], meta: EntryMeta) -> Result<(), Refused> {
        self.admit(FrameType::TreeDir, rel)
            .map_err(Refused::Stream)?;
        self.reserve_dir(rel).map_err(Refused::Stream)?;
        // Owner rwx, so that the tree can be written into; the kept mode
        // (never setid bits unless asked) is set when the tree is done.
        let create_mode = (self.kept_mode(meta.mode) & 0o7777) | 0o700;
        let (parent, name) = self.parent(rel)?;
        // SAFETY: name is NUL-terminated; parent is open.
        let r = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), create_mode) };
        let made = r == 0;
        if !made {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(EntryError::io("mkdir", rel, &e).into());
            }
        }
        let st = match lstat_at(parent, &name) {
            Ok(st) => st,
            Err(e) => return Err(EntryError::io("mkdir", rel, &e).into()),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            // A file, a link or a special file is in the way: never
            // followed, never replaced.
            return Err(EntryError::new("mkdir", rel, libc::EEXIST).into());
        }
        let id = (st.st_dev, st.st_ino);
        if !made {
            if self.dirs.ids.contains(&id) {
                return Err(Refused::Stream(StreamError {
                    errno: libc::EPROTO,
                    message: format!(
                        "TREE_DIR {} sent again: each directory comes once in a tree",
                        String::from_utf8_lossy(rel)
                    ),
                }));
            }
            // There before the copy: merged into, and it keeps its own
            // mode and mtime.
            return Ok(());
        }
        // Room was reserved above: these do not allocate.
        let d = &mut self.dirs;
        d.paths.extend_from_slice(rel);
        d.records.push((d.paths.len(), meta));
        d.ids.insert(id);
        Ok(())
    }

    /// Make the symlink `rel` (TREE_LINK), replacing a file or link that
    /// is there; the link is never followed.
    pub fn link(&mut self, rel: &[u8], target: &[u8], meta: EntryMeta) -> Result<(), Refused> {
        self.admit(FrameType::TreeLink, rel)
            .map_err(Refused::Stream)?;
        Ok(self.make_link(rel, target, meta)?)
    }

    fn make_link(&mut self, rel: &[u8], target: &[u8], meta: EntryMeta) -> Result<(), EntryError> {
        let preserve = self.preserve;
        let target_c = cstring(target).map_err(|e| EntryError::io("symlink", rel, &e))?;
        let (parent, name) = self.parent(rel)?;
        // SAFETY: both strings are NUL-terminated; parent is open.
        let r = unsafe { libc::symlinkat(target_c.as_ptr(), parent.as_raw_fd(), name.as_ptr()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(EntryError::io("symlink", rel, &e));
            }
            refuse_special(parent, &name, "symlink", rel)?;
            // Replace what is there (not a directory) in one rename.
            let tmp = cstring(
                format!(
                    ".{}{}{}",
                    String::from_utf8_lossy(&name.as_bytes()[..name.as_bytes().len().min(200)]),
                    crate::atomic_file::HIDDEN_MARK,
                    sys::random_suffix()
                )
                .as_bytes(),
            )
            .map_err(|e| EntryError::io("symlink", rel, &e))?;
            // SAFETY: as above.
            let r = unsafe { libc::symlinkat(target_c.as_ptr(), parent.as_raw_fd(), tmp.as_ptr()) };
            if r < 0 {
                return Err(EntryError::io("symlink", rel, &io::Error::last_os_error()));
            }
            // SAFETY: both names are NUL-terminated; parent is open.
            let r = unsafe {
                libc::renameat(
                    parent.as_raw_fd(),
                    tmp.as_ptr(),
                    parent.as_raw_fd(),
                    name.as_ptr(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                // SAFETY: as above; failure leaves nothing more to do.
                unsafe { libc::unlinkat(parent.as_raw_fd(), tmp.as_ptr(), 0) };
                return Err(EntryError::io("symlink", rel, &e));
            }
        }
        if preserve {
            let times = mtime_times(&meta);
            // SAFETY: name is NUL-terminated; times is a live 2-array.
            let r = unsafe {
                libc::utimensat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if r < 0 {
                return Err(EntryError::io(
                    "set times of",
                    rel,
                    &io::Error::last_os_error(),
                ));
            }
        }
        Ok(())
    }

    fn create_file(&mut self, rel: &[u8], meta: &EntryMeta) -> Result<NewFile, EntryError> {
        let mode = self.kept_mode(meta.mode);
        let (parent, name) = self.parent(rel)?;
        // Checked again just before the rename, in `commit`.
        refuse_special(parent, &name, "create", rel)?;
        match sys::openat(parent, c".", libc::O_TMPFILE | libc::O_WRONLY, mode) {
            Ok(fd) => return Ok(NewFile::Anonymous(File::from(fd))),
            Err(e)
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR) | Some(libc::EINVAL)
                ) =>
            {
                return Err(EntryError::io("create", rel, &e))
            }
            Err(_) => {}
        }
        // No O_TMPFILE here: AtomicFile's hidden-name fallback, which
        // keeps its own fd of the directory.
        // SAFETY: F_DUPFD_CLOEXEC on an open fd; no pointers.
        let dup = cvt(unsafe { libc::fcntl(parent.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })
            .map_err(|e| EntryError::io("create", rel, &e))?;
        // SAFETY: a new fd owned by nobody else.
        let dir = unsafe { OwnedFd::from_raw_fd(dup) };
        AtomicFile::create(dir, name.as_bytes(), mode)
            .map(NewFile::Atomic)
            .map_err(|e| EntryError::io("create", rel, &e))
    }

    /// Set the file's exact mode (the umask may have cut bits at creation)
    /// and its mtime, then put it in place.
    fn commit(
        &mut self,
        mut file: NewFile,
        rel: &[u8],
        meta: &EntryMeta,
    ) -> Result<(), EntryError> {
        let mode = self.kept_mode(meta.mode);
        let fd = file.file().as_raw_fd();
        // The file was created with `mode`, less the umask; setid bits
        // (asked for) may not survive creation either.
        if (self.preserve && mode & self.umask != 0) || mode & 0o7000 != 0 {
            // SAFETY: fchmod on our own open fd.
            cvt(unsafe { libc::fchmod(fd, mode) }).map_err(|e| EntryError::io("chmod", rel, &e))?;
        }
        if self.preserve {
            let times = mtime_times(meta);
            // SAFETY: times is a live 2-array; fd is open.
            cvt(unsafe { libc::futimens(fd, times.as_ptr()) })
                .map_err(|e| EntryError::io("set times of", rel, &e))?;
        }
        // A special file that appeared since `create_file` looked is not
        // renamed over either (a narrow race remains: rename(2) cannot
        // ask for "only over a regular file").
        let in_way = {
            let (parent, name) = self.parent(rel)?;
            refuse_special(parent, &name, "create", rel)
        };
        if let Err(e) = in_way {
            self.let_go(file);
            return Err(e);
        }
        let placed = match file {
            NewFile::Atomic(f) => f.commit(),
            NewFile::Anonymous(f) => {
                let (parent, name) = self.parent(rel)?;
                place_anonymous(&f, parent, &name)
            }
        };
        placed.map_err(|e| {
            self.cache.forget();
            EntryError::io("rename into", rel, &e)
        })?;
        self.files_done += 1;
        Ok(())
    }

    /// A whole small file (TREE_FILE_WHOLE).
    pub fn file_whole(
        &mut self,
        rel: &[u8],
        meta: EntryMeta,
        checksum: u64,
        data: &[u8],
    ) -> Result<(), Refused> {
        self.admit(FrameType::TreeFileWhole, rel)
            .map_err(Refused::Stream)?;
        Ok(self.write_whole(rel, meta, checksum, data)?)
    }

    fn write_whole(
        &mut self,
        rel: &[u8],
        meta: EntryMeta,
        checksum: u64,
        data: &[u8],
    ) -> Result<(), EntryError> {
        if whole_checksum(data) != checksum {
            return Err(EntryError::new("checksum of", rel, libc::EBADMSG));
        }
        let mut file = self.create_file(rel, &meta)?;
        file.file()
            .write_all(data)
            .map_err(|e| EntryError::io("write", rel, &e))?;
        self.bytes_done += data.len() as u64;
        self.commit(file, rel, &meta)
    }

    /// Start a FILE. On error its data is discarded up to END or SKIP.
    pub fn begin_file(&mut self, rel: &[u8], meta: EntryMeta) -> Result<(), Refused> {
        self.admit(FrameType::TreeFile, rel)
            .map_err(Refused::Stream)?;
        match self.create_file(rel, &meta) {
            Ok(file) => {
                self.receiving = Receiving::File(Box::new(InFlight {
                    file,
                    rel: rel.to_vec(),
                    meta,
                    sum: StreamChecksum::new(),
                }));
                Ok(())
            }
            Err(e) => {
                self.receiving = Receiving::Discarding;
                Err(e.into())
            }
        }
    }

    /// Bytes of the FILE in flight.
    pub fn data(&mut self, bytes: &[u8]) -> Result<(), EntryError> {
        if let Receiving::File(f) = &mut self.receiving {
            f.sum.update(bytes);
            if let Err(e) = f.file.file().write_all(bytes) {
                let err = EntryError::io("write", &f.rel, &e);
                self.stop_receiving(Receiving::Discarding);
                return Err(err);
            }
            self.bytes_done += bytes.len() as u64;
        }
        Ok(())
    }

    /// The FILE's END: commit it if length and checksum match.
    pub fn end_file(&mut self, len: u64, checksum: u64) -> Result<(), EntryError> {
        match std::mem::replace(&mut self.receiving, Receiving::None) {
            Receiving::File(f) => {
                let InFlight {
                    file,
                    rel,
                    meta,
                    sum,
                } = *f;
                if !sum.matches(len, checksum) {
                    self.let_go(file);
                    return Err(EntryError::new("checksum of", &rel, libc::EBADMSG));
                }
                self.commit(file, &rel, &meta)
            }
            _ => Ok(()),
        }
    }

    /// The sender gave up the FILE in flight (SKIP), or the tree stopped:
    /// drop its data.
    pub fn abandon_file(&mut self) {
        self.stop_receiving(Receiving::None);
    }

    /// Give the directories this tree made their mode and mtime, innermost
    /// first (the reverse of the order they were made in, so each comes
    /// after everything in it was written), reaching them through a
    /// [`PathFds`]: a tree sent depth first costs O(log depth) opens per
    /// directory and few fds, however deep. Runs when the tree ends,
    /// cancelled or not; `stop` is asked every [`STOP_EVERY`] directories
    /// (and first), and once it says so the rest keep the modes they were
    /// made with: this is best effort, and a cancelled tree leaves what
    /// was written. Returns the failures.
    pub fn finish(&mut self, stop: &mut dyn FnMut() -> bool) -> Vec<EntryError> {
        self.abandon_file();
        let mut errors = Vec::new();
        let dirs = std::mem::take(&mut self.dirs);
        let mut fds = PathFds::new();
        for (i, (rel, meta)) in dirs.iter_rev().enumerate() {
            if i % STOP_EVERY == 0 && stop() {
                break;
            }
            let mode = self.kept_mode(meta.mode);
            if let Err(e) = self.set_dir_meta(&mut fds, rel, mode, meta) {
                errors.push(e);
            }
        }
        errors
    }

    fn set_dir_meta(
        &self,
        fds: &mut PathFds,
        rel: &[u8],
        mode: u32,
        meta: &EntryMeta,
    ) -> Result<(), EntryError> {
        let (dir, name) = split_rel(rel);
        let name = cstring(name).map_err(|e| EntryError::io("create", rel, &e))?;
        let parent = fds
            .open(self.base.as_fd(), dir)
            .map_err(|e| EntryError::io("open parent directory of", rel, &e))?;
        let fd = sys::openat(
            parent,
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| EntryError::io("open directory", rel, &e))?;
        // SAFETY: fchmod on our own open fd.
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
            .map_err(|e| EntryError::io("chmod", rel, &e))?;
        if self.preserve {
            let times = mtime_times(meta);
            // SAFETY: times is a live 2-array; fd is open.
            cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
                .map_err(|e| EntryError::io("set times of", rel, &e))?;
        }
        Ok(())
    }
}

/// [`TreeWriter::finish`] asks whether to stop once per this many
/// directories: each costs a few system calls, so a cancel is seen within
/// a few milliseconds while a check that polls costs little.
pub(crate) const STOP_EVERY: usize = 64;

impl Drop for TreeWriter {
    /// A tree that ends early (a lost channel) lets go of its file in
    /// flight like a cancelled one.
    fn drop(&mut self) {
        self.abandon_file();
    }
}

/// An entry error if a FIFO, socket or device is at `name` in `dir`: a
/// tree copy replaces regular files and links, never a special file (its
/// readers and writers, or the system, depend on the node).
fn refuse_special(
    dir: BorrowedFd<'_>,
    name: &CStr,
    verb: &str,
    rel: &[u8],
) -> Result<(), EntryError> {
    let st = match lstat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(EntryError::io(verb, rel, &e)),
    };
    let what = match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        _ => return Ok(()),
    };
    Err(EntryError {
        rel: rel.to_vec(),
        errno: libc::EEXIST,
        message: format!(
            "{verb} {}: {what} is there, and a tree copy never replaces a special file",
            String::from_utf8_lossy(rel)
        ),
    })
}

/// `[atime, mtime]` for utimensat: atime left alone, mtime from `meta`.
fn mtime_times(meta: &EntryMeta) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: meta.mtime_sec as libc::time_t,
            tv_nsec: meta.mtime_nsec as libc::c_long,
        },
    ]
}

/// The process umask, read without changing it (Linux 4.7+), or 022.
pub(crate) fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `top` with directories of 250-byte names nested `depth` deep
    /// beneath it, made relative to each other's fds (the whole path is
    /// longer than PATH_MAX). Returns the directory holding `top`.
    fn deep_tree(depth: usize) -> (std::path::PathBuf, OwnedFd) {
        let root = std::env::temp_dir().join(format!(
            "barge-treefs-deep-{}-{}",
            std::process::id(),
            sys::random_suffix()
        ));
        std::fs::create_dir_all(root.join("top")).unwrap();
        let base: OwnedFd = File::open(&root).unwrap().into();
        let name = cstring(&[b'd'; 250]).unwrap();
        let mut dir =
            sys::openat(base.as_fd(), c"top", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        for _ in 0..depth {
            // SAFETY: name is NUL-terminated; dir is open.
            assert_eq!(
                unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) },
                0
            );
            dir = sys::openat(dir.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        }
        (root, base)
    }

    /// Removes a tree deeper than PATH_MAX when dropped, with `rm -rf`.
    struct Removed(std::path::PathBuf);

    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::process::Command::new("rm")
                .arg("-rf")
                .arg(&self.0)
                .status();
        }
    }

    fn writer(
        top: Top,
        preserve: bool,
        setid: bool,
        max_dirs: usize,
    ) -> (tempfile_dir::Dir, TreeWriter) {
        let d = tempfile_dir::Dir::new();
        let base: OwnedFd = File::open(&d.0).unwrap().into();
        let modes = ModePolicy {
            preserve,
            setid,
            umask: 0o022,
        };
        let w = TreeWriter::new(base, top, modes, TreeLimits { max_dirs }, None);
        (d, w)
    }

    mod tempfile_dir {
        /// A scratch directory removed when dropped.
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "barge-treefs-w-{}-{}",
                    std::process::id(),
                    crate::sys::random_suffix()
                ));
                std::fs::create_dir(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const DIR: EntryMeta = EntryMeta {
        mode: libc::S_IFDIR | 0o755,
        mtime_sec: 0,
        mtime_nsec: 0,
    };

    fn stream_errno(r: Result<(), Refused>) -> i32 {
        match r {
            Err(Refused::Stream(e)) => e.errno,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_first_entry_is_the_top_and_the_rest_lie_beneath_it() {
        let (_d, mut w) = writer(Top::Named(b"photos".to_vec()), true, false, 10);
        assert_eq!(stream_errno(w.dir(b"other", DIR)), libc::EPROTO);
        assert_eq!(stream_errno(w.dir(b"photos/a", DIR)), libc::EPROTO);
        w.dir(b"photos", DIR).unwrap();
        for bad in [&b"photos"[..], b"photosx", b"photosx/a", b"x/photos/a"] {
            assert_eq!(stream_errno(w.dir(bad, DIR)), libc::EPROTO);
        }
        w.dir(b"photos/a", DIR).unwrap();
        assert_eq!(stream_errno(w.dir(b"photos/a", DIR)), libc::EPROTO);

        let (_d, mut w) = writer(Top::AnyName, true, false, 10);
        assert_eq!(stream_errno(w.dir(b"a/b", DIR)), libc::EPROTO);
        w.file_whole(b"f", DIR, whole_checksum(b""), b"").unwrap();
        // Nothing lies beneath a file.
        assert_eq!(stream_errno(w.dir(b"f/x", DIR)), libc::EPROTO);
    }

    #[test]
    fn kept_modes_drop_setid_bits_unless_asked() {
        for (preserve, setid, want) in [
            (true, false, 0o777),
            (false, false, 0o755),
            (true, true, 0o7777),
            (false, true, 0o7755),
        ] {
            let (_d, w) = writer(Top::AnyName, preserve, setid, 10);
            assert_eq!(
                w.kept_mode(0o7777),
                want,
                "preserve {preserve} setid {setid}"
            );
        }
    }

    #[test]
    fn created_directories_are_bounded_and_merged_ones_not_recorded() {
        let (d, mut w) = writer(Top::AnyName, true, false, 3);
        std::fs::create_dir_all(d.0.join("t/old")).unwrap();
        w.dir(b"t", DIR).unwrap();
        // Merged into: not recorded, and not a repeat.
        w.dir(b"t/old", DIR).unwrap();
        for i in 0..3 {
            w.dir(format!("t/n{i}").as_bytes(), DIR).unwrap();
        }
        assert_eq!(w.dirs.records.len(), 3);
        assert_eq!(stream_errno(w.dir(b"t/n3", DIR)), libc::E2BIG);
        assert!(w.finish(&mut || false).is_empty());
    }

    #[test]
    fn entries_too_long_for_a_tree_frame_are_entry_errors_and_the_rest_all_encode() {
        // 250 levels of 251 bytes: past MAX_TREE_PATH (61,440) at about 245.
        let (root, base) = deep_tree(250);
        let _removed = Removed(root);
        let Err(e) = walk(base.as_fd(), b"top", b"top", false) else {
            panic!("the walk took a path longer than MAX_TREE_PATH");
        };
        assert_eq!(e.errno, libc::ENAMETOOLONG, "{}", e.message);
        assert!(e.rel.len() > MAX_TREE_PATH);

        let w = walk(base.as_fd(), b"top", b"top", true).unwrap();
        assert_eq!(w.errors.len(), 1);
        assert_eq!(w.errors[0].errno, libc::ENAMETOOLONG);
        let dirs = w.entries.len();
        assert!(dirs > 200, "{dirs} entries");
        assert!(w.entries.iter().all(|e| e.rel.len() <= MAX_TREE_PATH));
        // Every entry becomes a frame: one TREE_DIR each, then DONE.
        let mut s = TreeSender::new(base, b"top", w, 1 << 20);
        let mut out = Vec::new();
        while !s.is_done() {
            s.fill(1, &mut out, 1 << 30).unwrap();
        }
        let mut at = 0;
        let mut sent = 0;
        while at < out.len() {
            let raw: &[u8; crate::wire::HEADER_LEN] =
                out[at..at + crate::wire::HEADER_LEN].try_into().unwrap();
            let h = crate::wire::decode_header(raw).unwrap();
            if h.kind == FrameType::TreeDir {
                sent += 1;
            }
            at += crate::wire::HEADER_LEN + h.len as usize;
        }
        assert_eq!(sent, dirs);
    }

    /// A chain `top/a/a/...` `depth` deep, made with mkdirat relative to
    /// each level's fd. Returns the directory holding `top`.
    fn chain(depth: usize) -> (std::path::PathBuf, OwnedFd) {
        let root = std::env::temp_dir().join(format!(
            "barge-treefs-chain-{}-{}",
            std::process::id(),
            sys::random_suffix()
        ));
        std::fs::create_dir_all(root.join("top")).unwrap();
        let base: OwnedFd = File::open(&root).unwrap().into();
        let mut dir =
            sys::openat(base.as_fd(), c"top", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        for _ in 0..depth {
            // SAFETY: the name is NUL-terminated; dir is open.
            assert_eq!(
                unsafe { libc::mkdirat(dir.as_raw_fd(), c"a".as_ptr(), 0o755) },
                0
            );
            dir = sys::openat(dir.as_fd(), c"a", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        }
        (root, base)
    }

    #[test]
    fn a_deep_tree_is_walked_without_recursion_or_an_fd_per_level() {
        // The recursive walk overflowed a 256 KiB stack within a few
        // hundred levels (an abort) and held 6,000 fds here.
        let (root, base) = chain(6000);
        let _removed = Removed(root);
        let w = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || walk(base.as_fd(), b"top", b"top", false).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(w.entries.len(), 6001);
        assert!(w.errors.is_empty());
        let mut want = b"top".to_vec();
        for e in &w.entries {
            assert_eq!(e.rel, want);
            want.extend_from_slice(b"/a");
        }
    }

    #[test]
    fn path_fds_hold_few_fds_and_reopen_a_level_rarely() {
        let (root, base) = chain(3000);
        let _removed = Removed(root);
        let mut fds = PathFds::new();
        let mut path = b"top".to_vec();
        path.extend(b"/a".repeat(3000));
        let mut most = 0;
        // Innermost first, as finish goes.
        while !path.is_empty() {
            fds.open(base.as_fd(), &path).unwrap();
            most = most.max(fds.held());
            path.truncate(split_rel(&path).0.len());
        }
        assert!(most <= 13, "{most} fds held");
    }

    #[test]
    fn finish_is_linear_in_a_deep_tree_and_stops_when_asked() {
        let depth: usize = 3000;
        let mut rels = vec![b"t".to_vec()];
        for _ in 0..depth {
            let mut r = rels.last().unwrap().clone();
            r.extend_from_slice(b"/a");
            rels.push(r);
        }
        let deep_mtime = |d: &tempfile_dir::Dir| {
            let mut p = d.0.join("t");
            for _ in 0..depth {
                p.push("a");
            }
            // The path is 6 KiB: go there one level at a time.
            let mut fd: OwnedFd = File::open(&d.0).unwrap().into();
            for c in p.strip_prefix(&d.0).unwrap().iter() {
                let c = cstring(c.as_encoded_bytes()).unwrap();
                fd = sys::openat(fd.as_fd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
            }
            fstat(fd.as_fd()).unwrap().st_mtime
        };
        let meta = EntryMeta {
            mtime_sec: 1_000_000,
            ..DIR
        };

        let (d, mut w) = writer(Top::AnyName, true, false, 100_000);
        let _removed = Removed(d.0.clone());
        for r in &rels {
            w.dir(r, meta).unwrap();
        }
        let t = std::time::Instant::now();
        let mut asked = 0;
        assert!(w
            .finish(&mut || {
                asked += 1;
                false
            })
            .is_empty());
        let took = t.elapsed();
        // Reopening every parent from the base took 7 s here (4.5M opens).
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
        assert_eq!(asked, (depth + 1).div_ceil(STOP_EVERY));
        assert_eq!(deep_mtime(&d), 1_000_000);

        // Asked to stop: nothing more gets its mode.
        let (d, mut w) = writer(Top::AnyName, true, false, 100_000);
        let _removed = Removed(d.0.clone());
        for r in &rels {
            w.dir(r, meta).unwrap();
        }
        assert!(w.finish(&mut || true).is_empty());
        assert_ne!(deep_mtime(&d), 1_000_000);
    }
}
