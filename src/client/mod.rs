//! The client side: [`Handle`] and its operations.
//!
//! A handle owns at most one helper at a time. The first operation (or
//! [`Handle::launch`]) starts it. After the helper dies, the next operation
//! starts a new one, unless helpers keep dying within a second of launch.
//! Then operations fail fast with [`Error::Restarting`] during a back-off
//! that doubles from 1 s to 60 s. A helper that runs for 1 s or more resets
//! the back-off.

mod conn;
mod events;
mod fastpath;
mod local;
mod resume;
mod transfer;
mod tree;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::atomic_file::AtomicFile;
use crate::cancel::{CancelState, Canceller};
use crate::discard::{self, Discard, WaitGroup};
use crate::error::{Error, Result};
use crate::file_sink::FileSink;
use crate::process::{self, WaitOutcome};
use crate::wire::{self, Frame, StatRecord};

use conn::{Broken, Connection, Incoming};
use events::Events;
pub use events::{CallbackId, Event, EventMask};
use local::LocalFile;
use transfer::{OpCtx, Reply};

pub use crate::process::ExitStatus;
/// Metadata of a remote file.
pub type RemoteStat = StatRecord;

/// One entry of a remote directory listing. `stat` describes the entry
/// itself: a symlink is reported as a symlink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub stat: RemoteStat,
}

impl StatRecord {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// Default for [`Handle::set_shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Default for [`Handle::set_kill_timeout`].
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`Handle::set_cancel_timeout`].
pub const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for [`Handle::set_launch_timeout`].
pub const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default entry limit of [`Handle::set_list_limits`]: a million entries,
/// far beyond any directory a person browses, and about 100 MiB of memory.
pub const DEFAULT_LIST_MAX_ENTRIES: usize = 1_000_000;
/// Default name-byte limit of [`Handle::set_list_limits`]: 256 MiB, room
/// for a million names of 255 bytes (NAME_MAX) each.
pub const DEFAULT_LIST_MAX_NAME_BYTES: usize = 256 << 20;
/// Default for [`Handle::set_progress_interval`].
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// A helper that dies sooner than this after launch counts as a crash loop.
pub const CRASH_WINDOW: Duration = Duration::from_secs(1);
/// Longest restart back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Config {
    helper: Option<Vec<OsString>>,
    root: Vec<u8>,
    pgroup: bool,
    chunk: u32,
    shutdown_timeout: Duration,
    kill_timeout: Duration,
    cancel_timeout: Duration,
    launch_timeout: Duration,
    progress_interval: Duration,
    /// Offer the fast path: `None` means only with the default helper.
    fast_path: Option<bool>,
    tree: tree::TreeOptions,
    keep_partial: bool,
    list_limits: transfer::ListLimits,
}

/// The feature bits this client offers in HELLO.
const OFFERED_FEATURES: u64 = wire::tree::FEATURE_TREES | wire::resume::FEATURE_RESUME;

#[derive(Default)]
struct Backoff {
    delay: Duration,
    retry_at: Option<Instant>,
}

impl Backoff {
    fn check(&self) -> Result<()> {
        match self.retry_at {
            Some(t) if t > Instant::now() => Err(Error::Restarting {
                retry_in: t - Instant::now(),
            }),
            _ => Ok(()),
        }
    }

    /// Note a helper that ended on its own after running `ran_for`.
    fn helper_died(&mut self, ran_for: Duration) {
        if ran_for < CRASH_WINDOW {
            self.delay = (self.delay * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
            self.retry_at = Some(Instant::now() + self.delay);
        } else {
            self.delay = Duration::ZERO;
            self.retry_at = None;
        }
    }
}

/// A connection to a helper, and the operations that run over it.
///
/// Operations take `&mut self`: one runs at a time. To cancel from another
/// thread or a signal handler, take a [`Canceller`] first with
/// [`Handle::canceller`].
///
/// Cancel semantics:
/// - A cancel makes the running operation return [`Error::Cancelled`].
///   The handle and its helper stay usable.
/// - A cancel that arrives while no operation runs is kept. The next
///   operation fails at once with `Cancelled`, so a cancel is never lost.
///   [`Handle::clear_cancel`] drops a pending cancel.
/// - An operation that had already completed when the cancel took effect
///   (its last byte was sent and the helper was committing, or a STAT whose
///   reply was on its way) returns its real result. The cancel is consumed
///   either way.
/// - If the helper does not answer a cancel within the cancel timeout, the
///   helper (and its process group) is killed and the call still returns
///   `Cancelled`. The next operation starts a new helper.
///
/// Dropping a handle shuts the helper down as [`Handle::shutdown`] does.
pub struct Handle {
    config: Config,
    cancel: Arc<CancelState>,
    events: Events,
    conn: Option<Connection>,
    backoff: Backoff,
    /// Set while an operation runs; still set at the next operation's start
    /// only if a callback panicked through the last one.
    in_op: bool,
    /// Held by the discard thread for each uncommitted download file this
    /// handle gave it, until the file is closed.
    discards: WaitGroup,
}

impl Handle {
    /// A handle with default settings. Starts nothing yet.
    pub fn new() -> Result<Handle> {
        Ok(Handle {
            config: Config {
                helper: None,
                root: Vec::new(),
                pgroup: true,
                chunk: wire::DEFAULT_CHUNK,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                kill_timeout: DEFAULT_KILL_TIMEOUT,
                cancel_timeout: DEFAULT_CANCEL_TIMEOUT,
                launch_timeout: DEFAULT_LAUNCH_TIMEOUT,
                progress_interval: DEFAULT_PROGRESS_INTERVAL,
                fast_path: std::env::var_os("BARGE_FASTPATH")
                    .filter(|v| v == "0")
                    .map(|_| false),
                tree: tree::TreeOptions {
                    preserve: true,
                    keep_going: false,
                    setid: false,
                    limits: crate::treefs::TreeLimits::default(),
                },
                keep_partial: false,
                list_limits: transfer::ListLimits {
                    max_entries: DEFAULT_LIST_MAX_ENTRIES,
                    max_name_bytes: DEFAULT_LIST_MAX_NAME_BYTES,
                },
            },
            cancel: Arc::new(CancelState::new().map_err(|e| Error::local("eventfd", e))?),
            events: Events::default(),
            conn: None,
            backoff: Backoff::default(),
            in_op: false,
            discards: WaitGroup::new(),
        })
    }

    /// The command that starts the helper, e.g. `["ssh", "-T", "host",
    /// "barge-helper"]`. Default: the bundled helper (see
    /// [`default_helper`]). Takes effect at the next launch.
    pub fn set_helper<I, S>(&mut self, argv: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        if argv.is_empty() {
            return Err(Error::InvalidArgument("the helper command is empty".into()));
        }
        if argv.iter().any(|a| a.as_bytes().contains(&0)) {
            return Err(Error::InvalidArgument(
                "the helper command contains a NUL byte".into(),
            ));
        }
        self.config.helper = Some(argv);
        Ok(())
    }

    /// Confine every remote path beneath `dir` on the helper's side, or
    /// remove the confinement with `None`. Takes effect at the next launch.
    pub fn set_root(&mut self, dir: Option<&Path>) -> Result<()> {
        let root = dir
            .map(|d| d.as_os_str().as_bytes().to_vec())
            .unwrap_or_default();
        if root.contains(&0) {
            return Err(Error::InvalidArgument(
                "the root contains a NUL byte".into(),
            ));
        }
        self.config.root = root;
        Ok(())
    }

    /// Whether to offer the fast path: local files passed to the helper as
    /// fds and copied in the kernel (`docs/PROTOCOL.md`, "The fast path").
    /// By default it is offered only to the default helper, and
    /// `BARGE_FASTPATH=0` in the environment turns it off for handles
    /// created afterwards. `true` offers it to any helper command; it is
    /// still used only when the helper is this process's own child on the
    /// same kernel and says so, never through ssh, sudo or a container.
    /// Either way, results and guarantees are those of the stream path.
    /// Takes effect at the next launch.
    pub fn set_fast_path(&mut self, enable: bool) {
        self.config.fast_path = Some(enable);
    }

    /// Whether the running helper uses the fast path.
    pub fn uses_fast_path(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.fast_path)
    }

    /// Start the helper in its own process group (default `true`), so a
    /// terminal's ^C reaches only the caller.
    pub fn set_pgroup(&mut self, enable: bool) {
        self.config.pgroup = enable;
    }

    /// Bytes per DATA frame: 4 KiB to 4 MiB, default 256 KiB.
    pub fn set_chunk_size(&mut self, bytes: u32) -> Result<()> {
        if !(wire::MIN_CHUNK..=wire::MAX_CHUNK).contains(&bytes) {
            return Err(Error::InvalidArgument(format!(
                "chunk size {bytes} is outside {}..={}",
                wire::MIN_CHUNK,
                wire::MAX_CHUNK
            )));
        }
        self.config.chunk = bytes;
        Ok(())
    }

    /// How long [`Handle::shutdown`] waits for the helper to exit after
    /// SHUTDOWN before it sends SIGTERM. Default 3 s.
    pub fn set_shutdown_timeout(&mut self, t: Duration) {
        self.config.shutdown_timeout = t;
    }

    /// How long to wait after SIGTERM before SIGKILL. Default 5 s.
    pub fn set_kill_timeout(&mut self, t: Duration) {
        self.config.kill_timeout = t;
    }

    /// How long to wait for the helper to answer a cancel before killing
    /// it. Default 2 s.
    pub fn set_cancel_timeout(&mut self, t: Duration) {
        self.config.cancel_timeout = t;
    }

    /// How long the helper may take to complete the handshake. Default 30 s,
    /// since ssh can be slow.
    pub fn set_launch_timeout(&mut self, t: Duration) {
        self.config.launch_timeout = t;
    }

    /// Least time between two PROGRESS events of a transfer. Default
    /// 100 ms. Zero sends one per chunk.
    pub fn set_progress_interval(&mut self, t: Duration) {
        self.config.progress_interval = t;
    }

    /// Whether tree copies ([`Handle::copy_in`], [`Handle::copy_out`]) give
    /// files, directories and symlinks the source's mode and mtime (default
    /// `true`). When off, modes are the source's permission bits less the
    /// umask of the side that writes (as `cp -r` does) and mtimes are the
    /// time of the copy.
    pub fn set_preserve_metadata(&mut self, enable: bool) {
        self.config.tree.preserve = enable;
    }

    /// What a tree copy does when an entry fails (an unreadable file, a
    /// directory it may not write). Off (the default): it stops at the
    /// first failure and returns its error, naming the path. On: it
    /// copies everything else and then returns [`Error::Incomplete`] with
    /// every failed path.
    pub fn set_keep_going(&mut self, enable: bool) {
        self.config.tree.keep_going = enable;
    }

    /// Whether tree copies keep the setuid, setgid and sticky bits of
    /// the source's modes (default `false`). When off, the side that
    /// writes clears them, whatever [`Handle::set_preserve_metadata`]
    /// says: a helper, or a tree uploaded to one, never makes a setuid
    /// file unless the caller asked for it. A helper keeps them only when
    /// the request carries this setting (TREE flag 0x4), and a helper
    /// that runs as root only when its operator also set
    /// `BARGE_HELPER_ALLOW_SETID=1`; otherwise [`Handle::copy_in`] fails
    /// with `EPERM`.
    pub fn set_preserve_setid(&mut self, enable: bool) {
        self.config.tree.setid = enable;
    }

    /// The most directories a [`Handle::copy_out`] may create (default
    /// 1,000,000). Each is recorded until the tree ends, for its mode and
    /// mtime, with its path (at most 256 bytes each on average). A tree
    /// that makes more ends with `E2BIG`, naming the directory. The
    /// helper applies its own bound, the same by default, to uploads.
    pub fn set_max_tree_dirs(&mut self, dirs: usize) {
        self.config.tree.limits.max_dirs = dirs;
    }

    /// Keep the data of an interrupted [`Handle::upload`] or
    /// [`Handle::download`] for a later attempt (default `false`).
    ///
    /// When on, a cancelled or failed transfer leaves what it moved in
    /// `.NAME.barge-partial` in the destination directory (the helper's for
    /// an upload, the local one for a download), never under NAME. The next
    /// transfer to the same destination continues after that data once the
    /// helper has checked it against the same prefix of the source with a
    /// checksum, and starts over when they differ; the whole file's
    /// checksum is verified at the end either way. PROGRESS then counts the
    /// bytes this call moves, out of those left to move. See
    /// [`crate::partial::partial_name`].
    ///
    /// Applies to path transfers of regular files; `upload_fd`,
    /// `download_fd`, uploads from FIFOs and devices, and tree copies keep
    /// nothing partial whatever this says. When off, nothing partial is
    /// ever left.
    pub fn set_keep_partial(&mut self, enable: bool) {
        self.config.keep_partial = enable;
    }

    /// How much one [`Handle::list`] may keep: at most `max_entries`
    /// entries and `max_name_bytes` bytes of names (defaults
    /// [`DEFAULT_LIST_MAX_ENTRIES`] and [`DEFAULT_LIST_MAX_NAME_BYTES`]).
    /// These bound the memory a helper can make the client use; past
    /// either, the listing is stopped and fails with [`Error::Limit`]
    /// (`E2BIG`), naming the path and the bound.
    pub fn set_list_limits(&mut self, max_entries: usize, max_name_bytes: usize) {
        self.config.list_limits = transfer::ListLimits {
            max_entries,
            max_name_bytes,
        };
    }

    /// A canceller for this handle, usable from any thread and from signal
    /// handlers.
    pub fn canceller(&self) -> Canceller {
        Canceller::new(self.cancel.clone())
    }

    /// Cancel the running operation, or the next one if none runs.
    /// Async-signal-safe. Same as `self.canceller().cancel()`.
    pub fn cancel(&self) {
        self.cancel.request();
    }

    /// Drop a pending cancel, so the next operation runs.
    pub fn clear_cancel(&self) {
        self.cancel.clear();
    }

    /// The shared cancel state, for the C ABI's lock-free cancel.
    pub(crate) fn cancel_state(&self) -> &Arc<CancelState> {
        &self.cancel
    }

    /// Register a callback for the events in `mask`. See [`Event`].
    pub fn add_event_callback<F>(&mut self, mask: EventMask, callback: F) -> CallbackId
    where
        F: FnMut(&Event<'_>) + Send + 'static,
    {
        self.events.add(mask, Box::new(callback))
    }

    /// Remove a callback; false if no callback has this id.
    pub fn remove_event_callback(&mut self, id: CallbackId) -> bool {
        self.events.remove(id)
    }

    /// The running helper's pid, if one runs.
    pub fn helper_pid(&self) -> Option<u32> {
        self.conn.as_ref().map(|c| c.process.pid() as u32)
    }

    /// The running helper's process group, when it leads one of its own.
    pub fn helper_pgid(&self) -> Option<u32> {
        self.conn
            .as_ref()
            .and_then(|c| c.process.pgid())
            .map(|p| p as u32)
    }

    /// Start the helper now. Optional: every operation launches when no
    /// helper runs. Does nothing when one already runs.
    pub fn launch(&mut self) -> Result<()> {
        self.run(|_, _| Ok(()))
    }

    /// Upload the local file `local` to `remote`. `local` may be any
    /// readable file: a regular file, a FIFO, or a character device, read
    /// until end of file. The remote file appears only when complete.
    pub fn upload(&mut self, local: impl AsRef<Path>, remote: impl AsRef<Path>) -> Result<()> {
        let local = local.as_ref();
        let remote = remote.as_ref().as_os_str().as_bytes();
        // Resuming needs a source that can be read again from its start.
        if self.config.keep_partial && std::fs::metadata(local).is_ok_and(|m| m.is_file()) {
            return self.run(|conn, ctx| resume::upload(conn, ctx, local, remote));
        }
        self.run(|conn, ctx| {
            let name = local.display().to_string();
            let (mut src, info) = LocalFile::open_source(local)
                .map_err(|e| Error::local(format!("open {name}"), e))?;
            if let (true, Some(fd), Some(size)) = (conn.fast_path, src.regular_fd(), info.size) {
                let mode = info.mode & 0o7777;
                if let fastpath::Outcome::Done = fastpath::put(conn, ctx, fd, remote, mode, size)? {
                    return Ok(());
                }
            }
            transfer::put(
                conn,
                ctx,
                &mut src,
                remote,
                info.mode & 0o7777,
                info.size,
                &name,
            )
        })
    }

    /// Upload everything readable from `fd` (until end of file) to `remote`.
    /// The fd is not closed, and its flags are not changed.
    pub fn upload_fd(&mut self, fd: BorrowedFd<'_>, remote: impl AsRef<Path>) -> Result<()> {
        let remote = remote.as_ref().as_os_str().as_bytes();
        self.run(|conn, ctx| {
            let name = format!("fd {}", fd.as_raw_fd());
            let (mut src, info) =
                LocalFile::from_fd(fd, false).map_err(|e| Error::local(&name, e))?;
            let mode = if info.size.is_some() {
                info.mode & 0o7777
            } else {
                0o644
            };
            transfer::put(conn, ctx, &mut src, remote, mode, info.size, &name)
        })
    }

    /// Download `remote` to the local path `local`. The local file appears
    /// only when complete and verified; a cancel or error leaves an existing
    /// file untouched and nothing partial.
    ///
    /// The data goes to an unnamed file until then. Freeing the pages of a
    /// large one after a cancel takes milliseconds (about 0.04 ms per MiB),
    /// so once it holds 1 MiB or more it is closed on a background thread,
    /// which blocks all signals and is started the first time it is needed,
    /// and the call returns without waiting. [`Handle::shutdown`] (and so
    /// dropping the handle) waits for it.
    pub fn download(&mut self, remote: impl AsRef<Path>, local: impl AsRef<Path>) -> Result<()> {
        let remote = remote.as_ref().as_os_str().as_bytes();
        let local = local.as_ref();
        if self.config.keep_partial {
            return self.run(|conn, ctx| resume::download(conn, ctx, remote, local));
        }
        let discards = self.discards.clone();
        self.run(|conn, ctx| {
            let name = local.display().to_string();
            let (dir, file_name) = match local::destination(local)? {
                local::Destination::Replace { dir, name } => (dir, name),
                // Written into, never replaced (and never by the fast path).
                local::Destination::Special { path } => {
                    let mut dst = local::open_special(&path, ctx.cancel)?;
                    return transfer::get(conn, ctx, &mut dst, None, remote, &name, &mut |_, _| {});
                }
            };
            let file = AtomicFile::create(dir, &file_name, 0o600)
                .map_err(|e| Error::local(format!("create {name}"), e))?;
            let umask = crate::treefs::current_umask();
            let fd = file.fd().as_raw_fd();
            let mut on_source = |_size: u64, mode: u32| {
                // The temporary file is private until the mode is known.
                // SAFETY: fchmod on our own open fd; failure keeps 0600.
                unsafe { libc::fchmod(fd, (mode & 0o777 & !umask) as libc::mode_t) };
            };
            let transferred = (|| {
                let borrowed = file.fd();
                // SAFETY: the AtomicFile outlives this borrow; it is only
                // given up or committed after the transfer returns.
                let borrowed = unsafe { BorrowedFd::borrow_raw(borrowed.as_raw_fd()) };
                let fast = match conn.fast_path {
                    true => fastpath::get(conn, ctx, borrowed, remote, &mut on_source)?,
                    false => fastpath::Outcome::Refused,
                };
                if let fastpath::Outcome::Refused = fast {
                    let (mut dst, _) =
                        LocalFile::from_fd(borrowed, true).map_err(|e| Error::local(&name, e))?;
                    // An unnamed file takes the data with one copy (see
                    // file_sink); a hidden name could be truncated by
                    // another process while mapped.
                    let mut sink = match file.is_hidden_file() {
                        false => FileSink::new(borrowed, 0),
                        true => None,
                    };
                    transfer::get(
                        conn,
                        ctx,
                        &mut dst,
                        sink.as_mut(),
                        remote,
                        &name,
                        &mut on_source,
                    )?;
                }
                Ok(())
            })();
            if let Err(e) = transferred {
                discard::later(Discard::Close(file.abandon()), Some(&discards));
                return Err(e);
            }
            file.commit()
                .map_err(|e| Error::local(format!("rename into {name}"), e))
        })
    }

    /// Download `remote` into `fd`, which may be a pipe or socket. The fd
    /// is not closed and its flags are not changed. Bytes reach the fd as
    /// they arrive, so after an error it may hold a prefix of the file.
    pub fn download_fd(&mut self, remote: impl AsRef<Path>, fd: BorrowedFd<'_>) -> Result<()> {
        let remote = remote.as_ref().as_os_str().as_bytes();
        self.run(|conn, ctx| {
            let name = format!("fd {}", fd.as_raw_fd());
            let (mut dst, _) = LocalFile::from_fd(fd, true).map_err(|e| Error::local(&name, e))?;
            transfer::get(conn, ctx, &mut dst, None, remote, &name, &mut |_, _| {})
        })
    }

    /// Copy the local file or directory `local` into the remote directory
    /// `remote_dir`, recursively, as `remote_dir/NAME` (`NAME` is the last
    /// component of `local`): like `cp -r local remote_dir/`. Existing
    /// directories are merged and existing files replaced.
    ///
    /// - Regular files, directories and symlinks are copied; symlinks as
    ///   links, never followed (nor is `local` itself when it is one).
    ///   Special files (FIFOs, sockets, devices) are skipped, each with a
    ///   LOG event.
    /// - Mode and mtime are kept unless [`Handle::set_preserve_metadata`]
    ///   turned that off.
    /// - Every entry is streamed in one request, with no round trip per
    ///   file. PROGRESS callbacks get [`Event::TreeProgress`] for the whole
    ///   tree.
    /// - Each file appears only when complete and verified. A cancel
    ///   returns [`Error::Cancelled`]: files already copied stay, the file
    ///   in flight is removed, nothing partial is left.
    /// - Errors: see [`Handle::set_keep_going`].
    pub fn copy_in(&mut self, local: impl AsRef<Path>, remote_dir: impl AsRef<Path>) -> Result<()> {
        let local = local.as_ref();
        let remote = remote_dir.as_ref().as_os_str().as_bytes();
        let opts = self.config.tree;
        self.run(|conn, ctx| tree::copy_in(conn, ctx, opts, local, remote))
    }

    /// Copy the remote file or directory `remote` into the local directory
    /// `local_dir`, recursively, as `local_dir/NAME`. The counterpart of
    /// [`Handle::copy_in`], with the same rules; special files are skipped
    /// by the helper, which logs each (a LOG event). A file left unfinished
    /// by a cancel or an error is closed as [`Handle::download`]'s is.
    pub fn copy_out(
        &mut self,
        remote: impl AsRef<Path>,
        local_dir: impl AsRef<Path>,
    ) -> Result<()> {
        let remote = remote.as_ref().as_os_str().as_bytes();
        let local = local_dir.as_ref();
        let opts = self.config.tree;
        let discards = self.discards.clone();
        self.run(|conn, ctx| tree::copy_out(conn, ctx, opts, remote, local, &discards))
    }

    /// Metadata of `remote`, following symlinks.
    pub fn stat(&mut self, remote: impl AsRef<Path>) -> Result<RemoteStat> {
        let path = remote.as_ref().as_os_str().as_bytes();
        match self.run(|conn, ctx| transfer::simple(conn, ctx, &Frame::Stat { path }))? {
            Reply::Stat(st) => Ok(st),
            Reply::Ok => Err(Error::protocol("helper answered STAT with OK")),
        }
    }

    /// The entries of the remote directory `remote`, without `.` and `..`.
    ///
    /// At most the entries and name bytes [`Handle::set_list_limits`]
    /// allows are kept; a longer listing is stopped and fails with
    /// [`Error::Limit`] (`E2BIG`). A name that is empty, `.`, `..`, or
    /// holds `/` or NUL is a protocol error (`EPROTO`): a helper cannot
    /// make a caller that joins names to the path leave the directory.
    pub fn list(&mut self, remote: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        let path = remote.as_ref().as_os_str().as_bytes();
        let limits = self.config.list_limits;
        self.run(|conn, ctx| transfer::list(conn, ctx, path, limits))
    }

    /// Create a remote directory (mode 0777 less the helper's umask). With
    /// `parents`, create missing parents too and accept an existing
    /// directory.
    pub fn mkdir(&mut self, remote: impl AsRef<Path>, parents: bool) -> Result<()> {
        let path = remote.as_ref().as_os_str().as_bytes();
        let frame = Frame::Mkdir {
            mode: 0o777,
            parents,
            path,
        };
        self.run(|conn, ctx| transfer::simple(conn, ctx, &frame))
            .map(|_| ())
    }

    /// Remove a remote file, symlink or empty directory.
    pub fn remove(&mut self, remote: impl AsRef<Path>) -> Result<()> {
        let path = remote.as_ref().as_os_str().as_bytes();
        self.run(|conn, ctx| transfer::simple(conn, ctx, &Frame::Remove { path }))
            .map(|_| ())
    }

    /// Rename a remote entry, replacing `to` if it exists.
    pub fn rename(&mut self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        let from = from.as_ref().as_os_str().as_bytes();
        let to = to.as_ref().as_os_str().as_bytes();
        self.run(|conn, ctx| transfer::simple(conn, ctx, &Frame::Rename { from, to }))
            .map(|_| ())
    }

    /// Stop the helper: SHUTDOWN and a wait of up to the shutdown timeout,
    /// then SIGTERM (to its group when it has its own) and a wait of up to
    /// the kill timeout, then SIGKILL. Reaps the helper (unless it outlives
    /// SIGKILL by [`KILL_REAP_LIMIT`](crate::process::KILL_REAP_LIMIT),
    /// stuck in the kernel) and closes its fds. Returns
    /// [`Error::AbnormalShutdown`] when the graceful step failed. A cancel
    /// during the graceful wait skips to the signals, and one during the
    /// wait after SIGTERM skips to SIGKILL.
    /// Also waits until the files of cancelled downloads are closed (see
    /// [`Handle::download`]), so no fd of this handle's is left open.
    pub fn shutdown(&mut self) -> Result<()> {
        let stopped = self.stop_helper();
        self.wait_for_discards();
        stopped
    }

    fn stop_helper(&mut self) -> Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let graceful = self.graceful_stop(&mut conn);
        let status = match graceful {
            Ok(status) => Some(status),
            Err(_) => conn
                .process
                .terminate(self.config.kill_timeout, Some(&self.cancel)),
        };
        // A status another waiter collected (SIGCHLD ignored) is no sign
        // of trouble once the helper answered SHUTDOWN and exited.
        let clean = |s: ExitStatus| s.success() || s == ExitStatus::Unknown;
        let ok = graceful.is_ok() && status.is_some_and(clean);
        self.finish_conn(conn, status, ok);
        match graceful {
            Ok(s) if clean(s) => Ok(()),
            Ok(s) => Err(Error::AbnormalShutdown {
                cause: format!("the helper {s} after SHUTDOWN"),
            }),
            Err(cause) => Err(Error::AbnormalShutdown {
                cause: format!(
                    "{cause}; it {}",
                    status.map_or("could not be reaped".to_string(), |s| s.to_string())
                ),
            }),
        }
    }

    /// Stop the helper at once with SIGKILL (to its group when it has its
    /// own), and reap it. Like [`Handle::shutdown`], waits until the files
    /// of cancelled downloads are closed.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut conn) = self.conn.take() {
            let status = conn.process.kill();
            self.finish_conn(conn, status, false);
        }
        self.wait_for_discards();
        Ok(())
    }

    /// Wait until the discard thread has closed every file this handle
    /// handed to it.
    fn wait_for_discards(&mut self) {
        std::mem::take(&mut self.discards).wait();
    }

    /// SHUTDOWN, then wait for the helper's exit. Returns its status, or
    /// why the graceful path failed.
    fn graceful_stop(&mut self, conn: &mut Connection) -> std::result::Result<ExitStatus, String> {
        let limit = self.config.shutdown_timeout;
        let deadline = Instant::now() + limit;
        if conn.broken.is_none() && conn.out.is_empty() {
            let serial = conn.next_serial();
            conn.queue(&Frame::Shutdown, serial)
                .map_err(|e| e.to_string())?;
            // Wait for the channel to close: the helper answers OK and exits.
            loop {
                if conn.flush().is_err() {
                    break;
                }
                match conn.read_frame(serial) {
                    Ok(Some(Incoming::Ok)) | Ok(Some(Incoming::Stop)) => continue,
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => {}
                }
                if self.cancel.is_requested() {
                    return Err("cancelled during the graceful shutdown".into());
                }
                match conn.wait(
                    &self.cancel,
                    false,
                    true,
                    None,
                    Some(deadline),
                    &mut self.events,
                ) {
                    Ok(r) if r.timed_out => {
                        return Err(format!(
                            "the helper did not exit within {} ms of SHUTDOWN",
                            limit.as_millis()
                        ))
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.process.wait_exit(left, Some(&self.cancel)) {
            WaitOutcome::Exited(s) => Ok(s),
            WaitOutcome::Cancelled => Err("cancelled during the graceful shutdown".into()),
            WaitOutcome::TimedOut => Err(format!(
                "the helper did not exit within {} ms of SHUTDOWN",
                limit.as_millis()
            )),
        }
    }

    /// Close a connection whose helper is gone: collect its last stderr,
    /// and send SHUTDOWN to the callbacks.
    fn finish_conn(&mut self, mut conn: Connection, status: Option<ExitStatus>, graceful: bool) {
        conn.collect_stderr(Duration::from_millis(100), &mut self.events);
        let pid = conn.process.pid() as u32;
        drop(conn);
        self.events.emit(&Event::Shutdown {
            pid,
            status,
            graceful,
        });
    }

    /// Run one operation: check the cancel and back-off, launch if needed,
    /// run `op`, and clean up after a broken connection.
    fn run<T>(
        &mut self,
        op: impl FnOnce(&mut Connection, &mut OpCtx<'_>) -> Result<T>,
    ) -> Result<T> {
        if self.cancel.take() {
            return Err(Error::Cancelled);
        }
        if self.in_op {
            // A callback panicked through the last operation: its request
            // may still be half done, so this connection cannot be trusted.
            self.kill()?;
            self.in_op = false;
        }
        self.in_op = true;
        let result = self.ensure_launched().and_then(|()| {
            let conn = self.conn.as_mut().expect("launched");
            let mut ctx = OpCtx {
                cancel: &self.cancel,
                events: &mut self.events,
                cancel_timeout: self.config.cancel_timeout,
                progress_interval: self.config.progress_interval,
                chunk: self.config.chunk,
            };
            op(conn, &mut ctx)
        });
        let result = match self.conn.as_ref().and_then(|c| c.broken.clone()) {
            Some(how) => self.drop_broken(how, result),
            None => result,
        };
        // A cancel that arrived during the operation belonged to it.
        self.cancel.take();
        self.in_op = false;
        result
    }

    /// Tear down a connection that broke during an operation, and turn a
    /// provisional "helper died" error into one with the exit status and
    /// the helper's last stderr lines.
    fn drop_broken<T>(&mut self, how: Broken, result: Result<T>) -> Result<T> {
        let mut conn = self.conn.take().expect("broken connection present");
        let ran_for = conn.launched_at.elapsed();
        let status = match how {
            // The channel is closed but the process may live on (a
            // launcher such as ssh): give it the kill timeout, or until a
            // cancel, to exit by itself.
            Broken::HelperGone => conn
                .process
                .exit_or_kill(self.config.kill_timeout, Some(&self.cancel)),
            Broken::Protocol | Broken::Unresponsive => conn.process.kill(),
        };
        conn.collect_stderr(Duration::from_millis(200), &mut self.events);
        if how == Broken::HelperGone {
            self.backoff.helper_died(ran_for);
        }
        let pid = conn.process.pid();
        let tail = conn.stderr_tail();
        self.finish_conn(conn, status, false);
        match result {
            Err(Error::HelperDied { .. }) => {
                let status = status.map_or("could not be reaped".to_string(), |s| s.to_string());
                let mut message = format!("the helper (pid {pid}) {status}");
                if !tail.is_empty() {
                    message.push_str("; its last stderr: ");
                    message.push_str(&tail);
                }
                Err(Error::HelperDied { message })
            }
            other => other,
        }
    }

    fn ensure_launched(&mut self) -> Result<()> {
        if let Some(conn) = self.conn.as_mut() {
            if conn.process.try_reap().is_none() {
                return Ok(());
            }
            // It died while idle.
            let conn = self.conn.take().expect("checked");
            self.backoff.helper_died(conn.launched_at.elapsed());
            let status = conn.process.status();
            self.finish_conn(conn, status, false);
        }
        self.backoff.check()?;
        self.start_helper()
    }

    fn start_helper(&mut self) -> Result<()> {
        let argv = match &self.config.helper {
            Some(a) => a.clone(),
            None => vec![default_helper().into_os_string()],
        };
        let program = argv[0].to_string_lossy().into_owned();
        let spawned = process::spawn(&argv, self.config.pgroup)
            .map_err(|e| Error::local(format!("start helper {program}"), e))?;
        let mut conn = Connection::new(
            spawned.process,
            spawned.channel,
            spawned.stderr,
            self.config.chunk,
        );
        match self.handshake(&mut conn) {
            Ok(()) => {
                let pid = conn.process.pid() as u32;
                self.conn = Some(conn);
                self.events.emit(&Event::Launched { pid });
                Ok(())
            }
            Err(e) => {
                let exited_by_itself = conn.process.try_reap().is_some()
                    || matches!(conn.broken, Some(Broken::HelperGone));
                let refused = matches!(e, Error::Protocol { errno, .. } if errno != libc::EPROTO);
                // A helper that hung up or refused the handshake is on its
                // way out: give it a moment to exit by itself. Otherwise
                // (cancel, timeout, garbage) kill it now.
                let status = if exited_by_itself || refused {
                    conn.process
                        .exit_or_kill(Duration::from_millis(200), Some(&self.cancel))
                } else {
                    conn.process.kill()
                };
                conn.collect_stderr(Duration::from_millis(200), &mut self.events);
                if exited_by_itself && !refused && !matches!(e, Error::Cancelled) {
                    self.backoff.helper_died(conn.launched_at.elapsed());
                }
                let tail = conn.stderr_tail();
                Err(match e {
                    Error::HelperDied { .. } => Error::HelperDied {
                        message: format!(
                            "helper {program} {} during the handshake{}",
                            status.map_or("could not be reaped".into(), |s| s.to_string()),
                            if tail.is_empty() {
                                String::new()
                            } else {
                                format!("; its stderr: {tail}")
                            }
                        ),
                    },
                    Error::Timeout(m) if !tail.is_empty() => {
                        Error::Timeout(format!("{m}; its stderr: {tail}"))
                    }
                    other => other,
                })
            }
        }
    }

    /// Connect over `channel` to a peer that runs in this process, with no
    /// helper process: for `crate::fuzzing`'s fake helpers. The handshake
    /// runs as at a launch. `stderr` stands for the helper's stderr and
    /// must be non-blocking. After the connection breaks, the next
    /// operation launches the configured helper as usual.
    pub(crate) fn connect_in_process(&mut self, channel: OwnedFd, stderr: OwnedFd) -> Result<()> {
        let process = process::HelperProcess::in_process();
        let mut conn = Connection::new(process, channel, stderr, self.config.chunk);
        self.handshake(&mut conn)?;
        self.conn = Some(conn);
        Ok(())
    }

    fn handshake(&mut self, conn: &mut Connection) -> Result<()> {
        let offered = match self.config.fast_path {
            Some(enable) => enable,
            None => self.config.helper.is_none(),
        };
        let offered = if offered { wire::FEATURE_FD_PASSING } else { 0 } | OFFERED_FEATURES;
        conn.queue(
            &Frame::Hello {
                version_min: wire::VERSION,
                version_max: wire::VERSION,
                features: offered,
                root: &self.config.root,
            },
            0,
        )?;
        let deadline = Instant::now() + self.config.launch_timeout;
        loop {
            if self.cancel.is_requested() {
                return Err(Error::Cancelled);
            }
            conn.flush()?;
            if let Some(msg) = conn.read_frame(0)? {
                return match msg {
                    Incoming::Welcome {
                        version,
                        features,
                        pid,
                    } => {
                        if version != wire::VERSION {
                            return Err(conn.fail_protocol(format!(
                                "the helper chose protocol version {version}; this library speaks version {}",
                                wire::VERSION
                            )));
                        }
                        if features & !offered != 0 {
                            return Err(conn.fail_protocol(format!(
                                "the helper accepted feature bits {features:#x} that were not offered"
                            )));
                        }
                        // The fast path needs the helper to be our own child:
                        // through a launcher (ssh, sudo) the WELCOME's pid is
                        // not the pid we started.
                        conn.fast_path = features & wire::FEATURE_FD_PASSING != 0
                            && pid == conn.process.pid() as u32;
                        conn.features = features;
                        Ok(())
                    }
                    Incoming::Error { errno, message } => Err(Error::Protocol {
                        errno,
                        message: format!("the helper refused the handshake: {message}"),
                    }),
                    other => {
                        Err(conn
                            .fail_protocol(format!("the helper sent {other:?} instead of WELCOME")))
                    }
                };
            }
            let ready = conn.wait(
                &self.cancel,
                false,
                true,
                None,
                Some(deadline),
                &mut self.events,
            )?;
            if ready.timed_out {
                return Err(Error::Timeout(format!(
                    "the helper did not complete the handshake within {} ms",
                    self.config.launch_timeout.as_millis()
                )));
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The helper a handle starts by default:
/// 1. `$BARGE_HELPER`, when set;
/// 2. the helper installed beside the library, `PREFIX/libexec/barge/
///    barge-helper` (see `helper_path`);
/// 3. `barge-helper` next to the running executable, or in its parent
///    directory (Cargo puts test binaries in `target/*/deps`);
/// 4. `barge-helper` on `$PATH`.
pub fn default_helper() -> PathBuf {
    if let Some(p) = std::env::var_os("BARGE_HELPER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = crate::helper_path::installed_helper() {
        return p;
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("barge-helper");
            if crate::helper_path::is_executable(&candidate) {
                return candidate;
            }
        }
    }
    PathBuf::from("barge-helper")
}
