//! Tree copies on the client's side: `copy_in` streams a local tree to the
//! helper with TREE_IN, `copy_out` receives one with TREE_OUT
//! (docs/PROTOCOL.md, "Directory trees"). Every entry goes out back to
//! back, so a tree of many small files costs no round trip per file.
//!
//! Both loops follow the rules of `transfer.rs`: [`Connection::wait`] is
//! the only wait, a user cancel ends our half of the stream (CANCEL when
//! we send, STOP when we receive), and the request's one final reply
//! decides the result, waited for at most `cancel_timeout` after a cancel.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::conn::{Broken, Connection, Incoming};
use crate::client::events::{Event, EventMask, Events};
use crate::client::transfer::{wait_channel, OpCtx};
use crate::discard::WaitGroup;
use crate::error::{Error, PathError};
use crate::sys;
use crate::treefs::{
    self, EntryError, ModePolicy, Refused, Top, TreeLimits, TreeSender, TreeWriter,
};
use crate::wire::tree::{FEATURE_TREES, TREE_KEEP_GOING, TREE_PRESERVE, TREE_SETID};
use crate::wire::{Frame, FrameType, TreeFrame};

/// `copy_in` queues frames in batches of about this many bytes.
const SEND_BATCH: usize = 256 << 10;

/// How a tree copy runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TreeOptions {
    pub preserve: bool,
    pub keep_going: bool,
    /// Keep setuid, setgid and sticky bits (off by default).
    pub setid: bool,
    /// Bounds on what receiving a tree keeps.
    pub limits: TreeLimits,
}

impl TreeOptions {
    fn flags(self) -> u32 {
        let mut f = 0;
        if self.preserve {
            f |= TREE_PRESERVE;
        }
        if self.keep_going {
            f |= TREE_KEEP_GOING;
        }
        if self.setid {
            f |= TREE_SETID;
        }
        f
    }
}

/// A keep-going copy lists at most this many failed entries; it counts
/// the rest.
pub(crate) const MAX_KEPT_FAILURES: usize = 1000;
/// ... and keeps at most this many bytes of their paths and messages.
const MAX_KEPT_FAILURE_BYTES: usize = 8 << 20;
/// A failure's message is cut to this many bytes.
const MAX_FAILURE_MESSAGE: usize = 1024;

/// The failed entries of a tree copy, bounded: a peer can send TREE_FAIL
/// frames without end, so only the first [`MAX_KEPT_FAILURES`] are kept
/// and the rest are counted.
struct Failures {
    kept: Vec<PathError>,
    bytes: usize,
    more: u64,
}

impl Failures {
    fn new() -> Failures {
        Failures {
            kept: Vec::new(),
            bytes: 0,
            more: 0,
        }
    }

    fn push(&mut self, mut e: PathError) {
        if e.message.len() > MAX_FAILURE_MESSAGE {
            let mut cut = MAX_FAILURE_MESSAGE;
            while !e.message.is_char_boundary(cut) {
                cut -= 1;
            }
            e.message.truncate(cut);
            e.message.push_str("...");
        }
        let size = e.message.len() + e.path.as_os_str().len();
        if self.kept.len() < MAX_KEPT_FAILURES
            && self.bytes + size <= MAX_KEPT_FAILURE_BYTES
            && self.kept.try_reserve(1).is_ok()
        {
            self.bytes += size;
            self.kept.push(e);
        } else {
            self.more = self.more.saturating_add(1);
        }
    }

    fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.more == 0
    }

    /// The list for [`Error::Incomplete`]: the failures kept, then, if
    /// some were only counted, one entry for `path` saying how many.
    fn into_list(mut self, path: &Path) -> Vec<PathError> {
        if self.more > 0 {
            self.kept.push(PathError {
                path: path.to_path_buf(),
                errno: libc::E2BIG,
                message: format!(
                    "{} more entries of {} failed; only the first {} are listed",
                    self.more,
                    path.display(),
                    self.kept.len()
                ),
            });
        }
        self.kept
    }
}

/// Why our side ended a tree stream early.
enum Stopped {
    User,
    Local(Error),
    Helper,
}

/// Rate-limited TREE_PROGRESS events.
struct TreeProgress {
    files_total: u64,
    bytes_total: u64,
    interval: Duration,
    last: Option<Instant>,
    enabled: bool,
}

impl TreeProgress {
    fn new(events: &Events, interval: Duration) -> TreeProgress {
        TreeProgress {
            files_total: 0,
            bytes_total: 0,
            interval,
            last: None,
            enabled: events.wants(EventMask::PROGRESS),
        }
    }

    fn update(&mut self, files: u64, bytes: u64, events: &mut Events, last: bool) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if last
            || self
                .last
                .is_none_or(|t| now.duration_since(t) >= self.interval)
        {
            self.last = Some(now);
            events.emit(&Event::TreeProgress {
                files_done: files,
                files_total: self.files_total.max(files),
                bytes_done: bytes,
                bytes_total: self.bytes_total.max(bytes),
            });
        }
    }
}

fn require_trees(conn: &Connection) -> Result<(), Error> {
    if conn.features & FEATURE_TREES == 0 {
        return Err(Error::Remote {
            errno: libc::EOPNOTSUPP,
            message: "the helper does not support directory trees (feature 0x2)".into(),
        });
    }
    Ok(())
}

fn path_of(base: &Path, rel: &[u8]) -> PathBuf {
    base.join(OsStr::from_bytes(rel))
}

fn local_error(base: &Path, e: EntryError) -> PathError {
    let path = path_of(base, &e.rel);
    // The message names the path relative to `base`; name it whole.
    let message = match e.message.split_once(": ") {
        Some((verb_rel, reason)) => {
            let verb = verb_rel.rsplit_once(' ').map_or("", |(v, _)| v);
            format!("{verb} {}: {reason}", path.display())
        }
        None => e.message,
    };
    PathError {
        path,
        errno: e.errno,
        message,
    }
}

fn into_error(p: PathError) -> Error {
    Error::Local {
        errno: p.errno,
        message: p.message,
    }
}

/// The helper's FAIL frame as a path error; its path is relative to the
/// remote directory `base`.
fn remote_fail(base: &[u8], errno: i32, rel: &[u8], message: &[u8]) -> PathError {
    let path = path_of(Path::new(OsStr::from_bytes(base)), rel);
    let mut message = String::from_utf8_lossy(message).into_owned();
    // As for ERROR: an errno that is no error number (0 would read as
    // success in C) is the peer's protocol error, reported as EPROTO.
    let errno = if crate::error::is_errno(errno) {
        errno
    } else {
        message.push_str(&format!(
            " (the helper's TREE_FAIL carried errno {errno}, which is not an error number)"
        ));
        libc::EPROTO
    };
    PathError {
        path,
        errno,
        message,
    }
}

/// Open a local directory for `*at` calls.
fn open_dir(dir: &Path) -> Result<OwnedFd, Error> {
    let c = crate::client::local::path_cstring(dir).map_err(|e| Error::local(dir.display(), e))?;
    sys::openat(sys::cwd(), &c, libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(|e| Error::local(format!("open directory {}", dir.display()), e))
}

/// The directory holding `local` and the name `local` has in it. A path
/// without a final name (`.`, `/`) is resolved first.
fn split_top(local: &Path) -> Result<(PathBuf, Vec<u8>), Error> {
    let resolved;
    let path = if local.file_name().is_none() {
        resolved = std::fs::canonicalize(local)
            .map_err(|e| Error::local(format!("resolve {}", local.display()), e))?;
        &resolved
    } else {
        local
    };
    let name = path.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!("{} has no name to copy as", local.display()))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.as_bytes().to_vec()))
}

/// Checked before each frame an inner read loop handles, so that a peer
/// that never lets the channel run dry cannot hide a cancel or the
/// deadline: `Some(true)` when a cancel is pending that the outer loop has
/// not acted on (leave the inner loop), `None` when the deadline after a
/// cancel or stop has passed.
fn flooded(ctx: &OpCtx<'_>, deadline: Option<Instant>) -> Option<bool> {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return None;
    }
    Some(ctx.cancel.is_requested() && deadline.is_none())
}

fn unresponsive(conn: &mut Connection, stopped: Option<Stopped>) -> Error {
    let err = match stopped {
        Some(Stopped::Local(e)) => e,
        _ => Error::Cancelled,
    };
    conn.fail(Broken::Unresponsive, err)
}

/// The result of a tree copy whose final reply was OK; `path` names the
/// tree in the note on failures that were only counted.
fn finished(errors: Failures, path: &Path) -> Result<(), Error> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Incomplete {
            errors: errors.into_list(path),
        })
    }
}

/// A TREE_FAIL from the helper: a failure to keep in keep-going mode, and
/// a protocol error otherwise (the helper then stops at its first failed
/// entry with an ERROR instead).
fn helper_fail(
    conn: &mut Connection,
    opts: TreeOptions,
    errors: &mut Failures,
    base: &[u8],
    request: &str,
) -> Result<(), Error> {
    let Frame::Tree(TreeFrame::Fail {
        errno,
        path,
        message,
    }) = conn.ext_frame()
    else {
        return Err(conn.fail_protocol(format!(
            "helper sent a malformed TREE_FAIL during {request}"
        )));
    };
    if !opts.keep_going {
        let message = format!(
            "helper sent TREE_FAIL {} during {request} without KEEP_GOING",
            String::from_utf8_lossy(path)
        );
        return Err(conn.fail_protocol(message));
    }
    errors.push(remote_fail(base, errno, path, message));
    Ok(())
}

/// Copy the local file or tree `local` into the remote directory
/// `remote_dir`, as `remote_dir/NAME`.
pub(crate) fn copy_in(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    opts: TreeOptions,
    local: &Path,
    remote_dir: &[u8],
) -> Result<(), Error> {
    require_trees(conn)?;
    let (parent, top) = split_top(local)?;
    let base = open_dir(&parent)?;
    let mut walk = treefs::walk(base.as_fd(), &top, &top, opts.keep_going)
        .map_err(|e| into_error(local_error(&parent, e)))?;
    for line in &walk.skipped {
        ctx.events.emit(&Event::Log {
            line: line.as_bytes(),
        });
    }
    let mut errors = Failures::new();
    for e in std::mem::take(&mut walk.errors) {
        errors.push(local_error(&parent, e));
    }
    let mut progress = TreeProgress::new(ctx.events, ctx.progress_interval);
    progress.files_total = walk.files;
    progress.bytes_total = walk.bytes;
    let mut sender = TreeSender::new(base, &top, walk, ctx.chunk as usize);

    let serial = conn.next_serial();
    conn.queue(
        &Frame::Tree(TreeFrame::In {
            flags: opts.flags(),
            path: remote_dir,
        }),
        serial,
    )?;
    let mut stopped: Option<Stopped> = None;
    // DONE or CANCEL has been queued.
    let mut terminated = false;
    let mut deadline: Option<Instant> = None;
    let mut batch = Vec::with_capacity(SEND_BATCH + (64 << 10));

    loop {
        if ctx.cancel.is_requested() && deadline.is_none() {
            deadline = Some(Instant::now() + ctx.cancel_timeout);
            if !terminated && stopped.is_none() {
                stopped = Some(Stopped::User);
            }
        }
        if !terminated && stopped.is_some() {
            // Frames are queued whole, so CANCEL may follow at once; the
            // helper drops the file in flight.
            conn.queue(&Frame::Cancel, serial)?;
            terminated = true;
        }
        if !terminated && conn.out.is_empty() {
            batch.clear();
            let filled = sender.fill(serial, &mut batch, SEND_BATCH);
            conn.queue_encoded(&batch);
            if let Err(e) = filled {
                let e = local_error(&parent, e);
                if opts.keep_going {
                    errors.push(e);
                } else {
                    stopped = Some(Stopped::Local(into_error(e)));
                    deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                    continue;
                }
            }
            terminated = sender.is_done();
            progress.update(sender.files_done, sender.bytes_done, ctx.events, false);
            // Progress callbacks may cancel: look again first.
            continue;
        }
        conn.flush()?;
        loop {
            // A peer that never lets the channel run dry must not keep a
            // cancel or the deadline from being seen: look before reading
            // each frame (read_frame consumes some kinds).
            match flooded(ctx, deadline) {
                Some(false) => {}
                Some(true) => break,
                None => return Err(unresponsive(conn, stopped.take())),
            }
            let Some(msg) = conn.read_frame(serial)? else {
                break;
            };
            match msg {
                Incoming::Stop => {
                    if !terminated && stopped.is_none() {
                        stopped = Some(Stopped::Helper);
                    }
                }
                Incoming::Ext(FrameType::TreeFail) => {
                    helper_fail(conn, opts, &mut errors, remote_dir, "TREE_IN")?;
                    conn.consume();
                }
                Incoming::Ok | Incoming::Error { .. } => {
                    if !terminated || !conn.out.is_empty() {
                        return Err(conn.fail_protocol(format!(
                            "helper replied to TREE_IN {} before the stream ended",
                            String::from_utf8_lossy(remote_dir)
                        )));
                    }
                    return match (msg, stopped) {
                        (Incoming::Ok, None) => {
                            progress.update(sender.files_done, sender.bytes_done, ctx.events, true);
                            finished(errors, Path::new(OsStr::from_bytes(remote_dir)))
                        }
                        (Incoming::Ok, Some(_)) => {
                            Err(conn.fail_protocol("helper completed a cancelled TREE_IN".into()))
                        }
                        (Incoming::Error { .. }, Some(Stopped::User)) => Err(Error::Cancelled),
                        (Incoming::Error { .. }, Some(Stopped::Local(e))) => Err(e),
                        (Incoming::Error { errno, message }, _) => {
                            Err(Error::Remote { errno, message })
                        }
                        _ => unreachable!(),
                    };
                }
                other => {
                    return Err(conn.fail_protocol(format!("helper sent {other:?} during TREE_IN")));
                }
            }
        }
        // Wait only when there is nothing to do: the channel is full, or
        // the stream has ended and the reply is due.
        if !terminated && (conn.out.is_empty() || stopped.is_some()) {
            continue;
        }
        if wait_channel(conn, ctx, deadline)? {
            return Err(unresponsive(conn, stopped));
        }
    }
}

/// Copy the remote file or tree `remote` into the local directory
/// `local_dir`, as `local_dir/NAME`. A file left unfinished is closed
/// through `discard`, holding `discards` until it is.
pub(crate) fn copy_out(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    opts: TreeOptions,
    remote: &[u8],
    local_dir: &Path,
    discards: &WaitGroup,
) -> Result<(), Error> {
    require_trees(conn)?;
    let base = open_dir(local_dir)?;
    let modes = ModePolicy {
        preserve: opts.preserve,
        setid: opts.setid,
        umask: treefs::current_umask(),
    };
    // The helper names the tree's top after the last component of
    // `remote`, and may write nothing else: not beside it, not above it.
    let mut writer = TreeWriter::new(
        base,
        Top::Named(top_name(remote).to_vec()),
        modes,
        opts.limits,
        Some(discards),
    );
    let serial = conn.next_serial();
    conn.queue(
        &Frame::Tree(TreeFrame::Out {
            flags: opts.flags(),
            chunk: ctx.chunk,
            path: remote,
        }),
        serial,
    )?;
    let mut progress = TreeProgress::new(ctx.events, ctx.progress_interval);
    let mut errors = Failures::new();
    let mut stopped: Option<Stopped> = None;
    let mut stop_sent = false;
    let mut stream_over = false;
    // The helper ended its stream with CANCEL: its final reply must be ERROR.
    let mut helper_cancelled = false;
    let mut deadline: Option<Instant> = None;

    loop {
        if ctx.cancel.is_requested() && deadline.is_none() {
            deadline = Some(Instant::now() + ctx.cancel_timeout);
            if stopped.is_none() && !stream_over {
                stopped = Some(Stopped::User);
            }
        }
        if stopped.is_some() && !stop_sent && !stream_over {
            writer.abandon_file();
            conn.queue(&Frame::Stop, serial)?;
            stop_sent = true;
        }
        conn.flush()?;
        let mut progressed = false;
        loop {
            // A peer that never lets the channel run dry must not keep a
            // cancel or the deadline from being seen: look before reading
            // each frame (read_frame consumes some kinds).
            match flooded(ctx, deadline) {
                Some(false) => {}
                Some(true) => break,
                None => return Err(unresponsive(conn, stopped.take())),
            }
            let Some(msg) = conn.read_frame(serial)? else {
                break;
            };
            let discarding = stopped.is_some() || stream_over;
            let applied: Result<(), EntryError> = match msg {
                Incoming::Data => {
                    let r = if discarding {
                        Ok(())
                    } else {
                        writer.data(conn.data())
                    };
                    conn.consume();
                    progressed = true;
                    r
                }
                Incoming::End { len, checksum } => {
                    if discarding {
                        Ok(())
                    } else {
                        writer.end_file(len, checksum)
                    }
                }
                Incoming::Cancel => {
                    stream_over = true;
                    helper_cancelled = true;
                    writer.abandon_file();
                    Ok(())
                }
                Incoming::Stop => {
                    // The client sends no stream in TREE_OUT: there is
                    // nothing for the helper to stop.
                    return Err(conn.fail_protocol(format!(
                        "helper sent STOP for serial {serial} during TREE_OUT, which has no stream from the client"
                    )));
                }
                Incoming::Ext(FrameType::TreeFail) => {
                    // The helper's paths are relative to the remote tree's
                    // parent.
                    let parent = Path::new(OsStr::from_bytes(remote))
                        .parent()
                        .map(|p| p.as_os_str().as_bytes().to_vec())
                        .unwrap_or_default();
                    helper_fail(conn, opts, &mut errors, &parent, "TREE_OUT")?;
                    conn.consume();
                    Ok(())
                }
                Incoming::Ext(kind) => {
                    let r = apply_entry(
                        conn.ext_frame(),
                        &mut writer,
                        discarding,
                        &mut stream_over,
                        &mut progress,
                    );
                    conn.consume();
                    progressed = true;
                    match r {
                        Some(Ok(())) => Ok(()),
                        Some(Err(Refused::Entry(e))) => Err(e),
                        Some(Err(Refused::Stream(e))) if e.errno == libc::EPROTO => {
                            return Err(conn.fail_protocol(format!(
                                "helper sent {} during TREE_OUT {}",
                                e.message,
                                String::from_utf8_lossy(remote)
                            )));
                        }
                        Some(Err(Refused::Stream(e))) => {
                            // A bound: stop the stream as for a local
                            // error; a helper that goes on regardless is
                            // cut off at the deadline.
                            let e = Error::Local {
                                errno: e.errno,
                                message: format!(
                                    "copy {} into {}: {}",
                                    String::from_utf8_lossy(remote),
                                    local_dir.display(),
                                    e.message
                                ),
                            };
                            if stopped.is_none() {
                                stopped = Some(Stopped::Local(e));
                                deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                            }
                            break;
                        }
                        None => {
                            return Err(conn.fail_protocol(format!(
                                "helper sent {} out of place during TREE_OUT",
                                kind.name()
                            )))
                        }
                    }
                }
                Incoming::Ok | Incoming::Error { .. } => {
                    // A cancel stops the directories' modes and mtimes.
                    let dir_errors = writer.finish(&mut || ctx.cancel.is_requested());
                    return match (msg, stopped) {
                        (_, Some(Stopped::User)) => Err(Error::Cancelled),
                        (_, None) if ctx.cancel.is_requested() => Err(Error::Cancelled),
                        (_, Some(Stopped::Local(e))) => Err(e),
                        (Incoming::Ok, _) if !stream_over => Err(conn.fail_protocol(
                            "helper finished TREE_OUT without ending its stream".into(),
                        )),
                        (Incoming::Ok, _) if helper_cancelled => Err(conn.fail_protocol(
                            "helper answered OK to a TREE_OUT it had cancelled".into(),
                        )),
                        (Incoming::Ok, _) => {
                            let mut dir_errors =
                                dir_errors.into_iter().map(|e| local_error(local_dir, e));
                            if !opts.keep_going {
                                if let Some(e) = dir_errors.next() {
                                    return Err(into_error(e));
                                }
                            }
                            for e in dir_errors {
                                errors.push(e);
                            }
                            progress.update(writer.files_done, writer.bytes_done, ctx.events, true);
                            finished(errors, local_dir)
                        }
                        (Incoming::Error { errno, message }, _) => {
                            Err(Error::Remote { errno, message })
                        }
                        _ => unreachable!(),
                    };
                }
                other => {
                    return Err(
                        conn.fail_protocol(format!("helper sent {other:?} during TREE_OUT"))
                    );
                }
            };
            if let Err(e) = applied {
                let e = local_error(local_dir, e);
                if opts.keep_going {
                    errors.push(e);
                } else if stopped.is_none() {
                    stopped = Some(Stopped::Local(into_error(e)));
                    deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                    break;
                }
            }
            if progressed {
                progress.update(writer.files_done, writer.bytes_done, ctx.events, false);
                progressed = false;
                if ctx.cancel.is_requested() {
                    // A progress callback cancelled: act on it first.
                    break;
                }
            }
        }
        if (ctx.cancel.is_requested() && deadline.is_none())
            || (stopped.is_some() && !stop_sent && !stream_over)
        {
            continue;
        }
        if wait_channel(conn, ctx, deadline)? {
            return Err(unresponsive(conn, stopped));
        }
    }
}

/// The name a tree copied from `remote` has: its last component, as the
/// helper names the top of the tree it sends.
fn top_name(remote: &[u8]) -> &[u8] {
    let end = remote.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let trimmed = &remote[..end];
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// Apply one tree frame (not TREE_FAIL) of a TREE_OUT stream to
/// `writer`. `None` when the frame does not belong there (a protocol
/// error).
fn apply_entry(
    frame: Frame<'_>,
    writer: &mut TreeWriter,
    discarding: bool,
    stream_over: &mut bool,
    progress: &mut TreeProgress,
) -> Option<Result<(), Refused>> {
    let Frame::Tree(t) = frame else {
        return None;
    };
    let in_file = writer.in_file();
    Some(match t {
        TreeFrame::Totals { files, bytes } => {
            progress.files_total = files;
            progress.bytes_total = bytes;
            Ok(())
        }
        TreeFrame::Done if !in_file => {
            *stream_over = true;
            Ok(())
        }
        TreeFrame::Skip if in_file || discarding => {
            writer.abandon_file();
            Ok(())
        }
        _ if discarding => Ok(()),
        TreeFrame::Dir { meta, path } if !in_file => writer.dir(path, meta),
        TreeFrame::Link { meta, path, target } if !in_file => writer.link(path, target, meta),
        TreeFrame::FileWhole {
            meta,
            checksum,
            path,
            data,
        } if !in_file => writer.file_whole(path, meta, checksum, data),
        TreeFrame::File { meta, path, .. } if !in_file => writer.begin_file(path, meta),
        _ => return None,
    })
}
