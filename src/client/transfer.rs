//! The request loops: PUT (upload), GET (download), LIST, and the simple
//! requests with one reply. Each loop is driven by [`Connection::wait`],
//! which polls the cancel fd with everything else.
//!
//! Cancel rules, shared by every loop:
//! - A user cancel ends the request's stream from our side: CANCEL when we
//!   send (PUT), STOP when we receive (GET, LIST). The loop then waits for
//!   the request's one final reply, for at most `cancel_timeout`. If the
//!   reply does not come in time, the helper is killed.
//! - The final reply decides the result. An operation that completed
//!   before the cancel took effect returns its result. One that was cut
//!   short returns `Error::Cancelled`.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, Instant};

use crate::cancel::CancelState;
use crate::client::conn::{Broken, Connection, Incoming, SpliceFailed};
use crate::client::events::{Events, Progress};
use crate::client::local::{LocalFile, SigpipeGuard};
use crate::client::DirEntry;
use crate::error::Error;
use crate::file_sink::FileSink;
use crate::wire::{Frame, StatRecord, StreamChecksum, UNKNOWN_SIZE};

/// What an operation needs from its handle besides the connection.
pub(crate) struct OpCtx<'a> {
    pub cancel: &'a CancelState,
    pub events: &'a mut Events,
    pub cancel_timeout: Duration,
    pub progress_interval: Duration,
    pub chunk: u32,
}

/// Why our side ended a stream early.
enum Stopped {
    User,
    Local(Error),
    Helper,
}

/// The final reply of a request.
pub(crate) enum Reply {
    Ok,
    Stat(StatRecord),
}

fn remote_error(errno: i32, message: String) -> Error {
    Error::Remote { errno, message }
}

/// Kill-and-report when the helper does not answer a cancel in time.
fn unresponsive(conn: &mut Connection, stopped: Option<Stopped>) -> Error {
    let err = match stopped {
        Some(Stopped::Local(e)) => e,
        _ => Error::Cancelled,
    };
    conn.fail(Broken::Unresponsive, err)
}

/// Wait for the channel alone (no local file): a frame to read, room to
/// write, the cancel fd until the operation has acted on a cancel (then
/// `deadline` is set), or `deadline`. `true` when the deadline passed: the
/// helper did not answer in time.
pub(crate) fn wait_channel(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    deadline: Option<Instant>,
) -> Result<bool, Error> {
    let ready = conn.wait(
        ctx.cancel,
        deadline.is_some(),
        true,
        None,
        deadline,
        ctx.events,
    )?;
    Ok(ready.timed_out)
}

/// Upload `src` to `remote` with a PUT stream.
pub(crate) fn put(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    src: &mut LocalFile<'_>,
    remote: &[u8],
    mode: u32,
    size: Option<u64>,
    local_name: &str,
) -> Result<(), Error> {
    let serial = conn.next_serial();
    conn.queue(
        &Frame::Put {
            mode,
            size: size.unwrap_or(UNKNOWN_SIZE),
            path: remote,
        },
        serial,
    )?;
    let mut sum = StreamChecksum::new();
    let mut progress = Progress::new(ctx.events, size, ctx.progress_interval);
    // A regular file's payloads are spliced from its page cache (see
    // OutBuf): where the next read starts. Splicing into the channel can
    // raise SIGPIPE when the helper is gone; the guard keeps it from the
    // caller.
    let mut splice_at = src.regular_fd().and_then(|fd| {
        // SAFETY: lseek on an open fd; no pointers.
        let pos = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) };
        u64::try_from(pos).ok().map(|pos| (fd.as_raw_fd(), pos))
    });
    let mut sigpipe = splice_at.is_some().then(SigpipeGuard::new);
    let mut stopped: Option<Stopped> = None;
    // The terminator (END or CANCEL) has been queued.
    let mut ended_with_end: Option<bool> = None;
    let mut deadline: Option<Instant> = None;
    // Whether a read may be tried now without blocking.
    let mut src_ready = !src.needs_poll_before_io();

    loop {
        if ctx.cancel.is_requested() && deadline.is_none() {
            // After END we cannot take the stream back, but the wait for
            // the reply is still bounded.
            deadline = Some(Instant::now() + ctx.cancel_timeout);
            if ended_with_end.is_none() && stopped.is_none() {
                stopped = Some(Stopped::User);
            }
        }
        if ended_with_end.is_none() && stopped.is_some() && conn.out.data_is_empty() {
            conn.queue(&Frame::Cancel, serial)?;
            ended_with_end = Some(false);
        }
        // Read the next chunk straight into the send buffer.
        if ended_with_end.is_none() && stopped.is_none() && conn.out.is_empty() && src_ready {
            let room = conn.out.payload_room(ctx.chunk);
            match src.read(room, src_ready) {
                Ok(Some(0)) => {
                    conn.queue(
                        &Frame::End {
                            len: sum.len(),
                            checksum: sum.digest(),
                        },
                        serial,
                    )?;
                    ended_with_end = Some(true);
                }
                Ok(Some(n)) => {
                    sum.update(conn.out.payload(n));
                    let from = splice_at;
                    if let Some((_, at)) = splice_at.as_mut() {
                        *at += n as u64;
                    }
                    conn.out.commit_data(n, serial, from);
                    progress.add(n as u64, ctx.events);
                    if src.needs_poll_before_io() {
                        src_ready = false;
                    }
                    // Progress callbacks may cancel: look again first.
                    continue;
                }
                Ok(None) => src_ready = false,
                Err(e) => {
                    stopped = Some(Stopped::Local(Error::local(
                        format!("read {local_name}"),
                        e,
                    )));
                    deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                    continue;
                }
            }
        }
        if let Err(e) = conn.flush() {
            // A splice into a channel the helper closed raised SIGPIPE.
            if let Some(g) = sigpipe.as_mut() {
                g.raised = true;
            }
            return Err(e);
        }
        while let Some(msg) = conn.read_frame(serial)? {
            match msg {
                Incoming::Stop => {
                    if ended_with_end.is_none() && stopped.is_none() {
                        stopped = Some(Stopped::Helper);
                    }
                }
                Incoming::Ok | Incoming::Error { .. } => {
                    if ended_with_end.is_none() || !conn.out.is_empty() {
                        return Err(conn.fail_protocol(format!(
                            "helper replied to PUT {} before the stream ended",
                            String::from_utf8_lossy(remote)
                        )));
                    }
                    return match (msg, ended_with_end) {
                        (Incoming::Ok, Some(true)) => {
                            progress.finish(ctx.events);
                            Ok(())
                        }
                        (Incoming::Ok, _) => {
                            Err(conn.fail_protocol("helper committed a cancelled upload".into()))
                        }
                        (Incoming::Error { errno, message }, _) => Err(match stopped {
                            Some(Stopped::User) => Error::Cancelled,
                            Some(Stopped::Local(e)) => e,
                            _ => remote_error(errno, message),
                        }),
                        _ => unreachable!(),
                    };
                }
                other => {
                    return Err(conn.fail_protocol(format!("helper sent {other:?} during PUT")));
                }
            }
        }
        // Wait only when there is nothing to do: the channel is full, the
        // source has no bytes, or the stream has ended and the reply is due.
        let sending = ended_with_end.is_none() && stopped.is_none();
        let can_fill = sending && conn.out.is_empty() && src_ready;
        let can_terminate =
            ended_with_end.is_none() && stopped.is_some() && conn.out.data_is_empty();
        if can_fill || can_terminate {
            continue;
        }
        let want_src = sending && conn.out.is_empty() && !src_ready;
        let local = if want_src { src.poll_for(false) } else { None };
        let ready = conn.wait(
            ctx.cancel,
            deadline.is_some(),
            true,
            local,
            deadline,
            ctx.events,
        )?;
        if ready.timed_out {
            return Err(unresponsive(conn, stopped));
        }
        if ready.local || !src.needs_poll_before_io() {
            src_ready = true;
        }
    }
}

/// Download `remote` into `dst` with a GET stream. `on_source` receives the
/// SOURCE_INFO (size, mode) before any data.
///
/// With a `sink` (an unnamed file barge created: see `file_sink`), DATA
/// payloads go from the channel into the file by splice and are hashed
/// through a mapping of the file; `dst` must then be that same file, and
/// is not written directly.
pub(crate) fn get(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    dst: &mut LocalFile<'_>,
    sink: Option<&mut FileSink>,
    remote: &[u8],
    local_name: &str,
    on_source: &mut dyn FnMut(u64, u32),
) -> Result<(), Error> {
    conn.splice_data(sink.is_some());
    let result = get_stream(conn, ctx, dst, sink, remote, local_name, on_source);
    conn.splice_data(false);
    result
}

fn get_stream(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    dst: &mut LocalFile<'_>,
    mut sink: Option<&mut FileSink>,
    remote: &[u8],
    local_name: &str,
    on_source: &mut dyn FnMut(u64, u32),
) -> Result<(), Error> {
    let serial = conn.next_serial();
    conn.queue(
        &Frame::Get {
            chunk: ctx.chunk,
            path: remote,
        },
        serial,
    )?;
    let mut sigpipe = dst.may_raise_sigpipe().then(SigpipeGuard::new);
    let mut sum = StreamChecksum::new();
    let mut progress = Progress::new(ctx.events, None, ctx.progress_interval);
    // Why we stopped the stream; once set, DATA is discarded and the
    // request can no longer succeed.
    let mut stopped: Option<Stopped> = None;
    let mut stop_sent = false;
    let mut deadline: Option<Instant> = None;
    // The helper's END or CANCEL has arrived.
    let mut stream_over = false;
    let mut end_matched = false;
    // Bytes of the DATA frame in hand already written to dst.
    let mut pending: Option<usize> = None;
    // SOURCE_INFO or DATA has come: the helper's stream has begun.
    let mut streaming = false;
    let mut dst_ready = !dst.needs_poll_before_io();

    loop {
        if ctx.cancel.is_requested() && deadline.is_none() {
            deadline = Some(Instant::now() + ctx.cancel_timeout);
            if stopped.is_none() && !stream_over {
                stopped = Some(Stopped::User);
            }
        }
        if stopped.is_some() {
            if pending.take().is_some() {
                conn.consume();
            }
            if !stop_sent && !stream_over {
                conn.queue(&Frame::Stop, serial)?;
                stop_sent = true;
            }
        }
        conn.flush()?;

        // A spliced DATA frame in hand: move what the channel has of it.
        if let (Some(done), Some(sink)) = (pending, sink.as_deref_mut()) {
            if conn.data_in_channel() > 0 {
                match conn.splice_data_into(sink) {
                    // The channel refused splice: the frame comes again,
                    // received into memory.
                    Ok(Some(0)) => pending = None,
                    Ok(Some(n)) if conn.data_in_channel() == 0 => {
                        conn.consume();
                        pending = None;
                        progress.add((done + n) as u64, ctx.events);
                    }
                    Ok(Some(n)) => pending = Some(done + n),
                    Ok(None) => {}
                    Err(SpliceFailed::Channel(e)) => return Err(e),
                    Err(SpliceFailed::File(e)) => {
                        stopped = Some(Stopped::Local(Error::local(
                            format!("write {local_name}"),
                            e,
                        )));
                        deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                    }
                }
                if pending.is_none() || stopped.is_some() {
                    // Progress callbacks may cancel: look again first.
                    continue;
                }
            } else {
                // Received into memory (the channel refused splice).
                let data_len = conn.data().len();
                match sink.write_bytes(&conn.data()[done..]) {
                    Ok(()) => {
                        conn.consume();
                        pending = None;
                        progress.add(data_len as u64, ctx.events);
                    }
                    Err(e) => {
                        stopped = Some(Stopped::Local(Error::local(
                            format!("write {local_name}"),
                            e,
                        )));
                        deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                    }
                }
                continue;
            }
        }

        // Write out the DATA frame in hand.
        if let (Some(mut done), None) = (pending, sink.as_deref()) {
            let data_len = conn.data().len();
            while done < data_len && dst_ready {
                match dst.write(&conn.data()[done..], dst_ready) {
                    Ok(Some(n)) => {
                        done += n;
                        if dst.needs_poll_before_io() {
                            dst_ready = false;
                        }
                    }
                    Ok(None) => dst_ready = false,
                    Err(e) => {
                        if e.raw_os_error() == Some(libc::EPIPE) {
                            if let Some(g) = sigpipe.as_mut() {
                                g.raised = true;
                            }
                        }
                        stopped = Some(Stopped::Local(Error::local(
                            format!("write {local_name}"),
                            e,
                        )));
                        deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                        break;
                    }
                }
            }
            if stopped.is_some() {
                continue;
            }
            if done < data_len {
                pending = Some(done);
            } else {
                conn.consume();
                pending = None;
                progress.add(data_len as u64, ctx.events);
                // Progress callbacks may cancel: look again first.
                continue;
            }
        }

        while pending.is_none() {
            let Some(msg) = conn.read_frame(serial)? else {
                break;
            };
            match msg {
                Incoming::SourceInfo { size, mode } => {
                    streaming = true;
                    progress.set_total((size != UNKNOWN_SIZE).then_some(size));
                    on_source(size, mode);
                }
                Incoming::Data => {
                    streaming = true;
                    if stopped.is_some() || stream_over {
                        conn.consume();
                    } else {
                        // A sink hashes what it writes.
                        if sink.is_none() {
                            sum.update(conn.data());
                        }
                        pending = Some(0);
                    }
                }
                Incoming::End { len, checksum } => {
                    stream_over = true;
                    if let Some(sink) = sink.as_deref() {
                        sum = sink.checksum();
                    }
                    end_matched = sum.matches(len, checksum);
                }
                Incoming::Cancel => stream_over = true,
                Incoming::Stop if !streaming => {
                    return Err(conn.fail_protocol(format!(
                        "helper sent STOP for GET {} before its stream began; there is nothing to stop",
                        String::from_utf8_lossy(remote)
                    )));
                }
                // The client sends nothing on a GET: a STOP from the helper
                // means nothing, and READ_BURST keeps a run of them from
                // holding the loop away from the cancel and the deadline.
                Incoming::Stop => {}
                Incoming::Ok if !stream_over => {
                    return Err(
                        conn.fail_protocol("helper finished GET without ending its stream".into())
                    );
                }
                Incoming::Ok => {
                    return match stopped {
                        Some(Stopped::User) => Err(Error::Cancelled),
                        Some(Stopped::Local(e)) => Err(e),
                        _ if end_matched => {
                            progress.finish(ctx.events);
                            Ok(())
                        }
                        _ => Err(Error::Remote {
                            errno: libc::EBADMSG,
                            message: format!(
                                "download of {}: length or checksum mismatch; data discarded",
                                String::from_utf8_lossy(remote)
                            ),
                        }),
                    };
                }
                Incoming::Error { errno, message } => {
                    return Err(match stopped {
                        Some(Stopped::User) => Error::Cancelled,
                        Some(Stopped::Local(e)) => e,
                        _ => remote_error(errno, message),
                    });
                }
                other => {
                    return Err(conn.fail_protocol(format!("helper sent {other:?} during GET")));
                }
            }
        }

        // A DATA frame in hand and a destination ready for it: write now.
        // A spliced one waits for the channel instead.
        let splicing = pending.is_some() && conn.data_in_channel() > 0;
        if pending.is_some() && dst_ready && !splicing {
            continue;
        }
        let local = match pending {
            Some(_) if !splicing => dst.poll_for(true),
            _ => None,
        };
        let ready = conn.wait(
            ctx.cancel,
            deadline.is_some(),
            pending.is_none() || splicing,
            local,
            deadline,
            ctx.events,
        )?;
        if ready.timed_out {
            return Err(unresponsive(conn, stopped));
        }
        if ready.local || !dst.needs_poll_before_io() {
            dst_ready = true;
        }
    }
}

/// What a listing may make the client keep (see
/// [`crate::Handle::set_list_limits`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListLimits {
    pub max_entries: usize,
    pub max_name_bytes: usize,
}

/// LIST `remote`: collect DIRENTS until the final reply, within `limits`.
///
/// Past a limit (or when memory for the entries cannot be had) the listing
/// is stopped as a user cancel stops it: STOP, then further DIRENTS are
/// dropped unread until the helper's final reply, for at most the cancel
/// timeout. An honest helper answers within one frame and stays usable (a
/// large directory is no fault of its own); one that keeps sending is
/// killed at the deadline. Either way the call returns the limit's error.
pub(crate) fn list(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    remote: &[u8],
    limits: ListLimits,
) -> Result<Vec<DirEntry>, Error> {
    let serial = conn.next_serial();
    conn.queue(&Frame::List { path: remote }, serial)?;
    let mut entries: Vec<DirEntry> = Vec::new();
    let mut name_bytes = 0usize;
    let mut stopped: Option<Stopped> = None;
    let mut stop_sent = false;
    let mut deadline: Option<Instant> = None;
    loop {
        if ctx.cancel.is_requested() && deadline.is_none() {
            deadline = Some(Instant::now() + ctx.cancel_timeout);
            stopped.get_or_insert(Stopped::User);
        }
        if stopped.is_some() && !stop_sent {
            deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
            conn.queue(&Frame::Stop, serial)?;
            stop_sent = true;
        }
        conn.flush()?;
        while let Some(msg) = conn.read_frame(serial)? {
            match msg {
                Incoming::Dirents => {
                    if conn.dirents().is_empty() {
                        // The helper sends only full batches; empty ones
                        // could keep a listing going forever at no cost
                        // and under every bound.
                        return Err(conn.fail_protocol(format!(
                            "helper sent an empty DIRENTS for LIST {}",
                            String::from_utf8_lossy(remote)
                        )));
                    }
                    if stopped.is_none() {
                        let batch = conn.dirents();
                        if let Err(e) =
                            keep_dirents(&mut entries, &mut name_bytes, batch, remote, limits)
                        {
                            // Nothing more is kept: free what was.
                            entries = Vec::new();
                            stopped = Some(Stopped::Local(e));
                        }
                    }
                    conn.consume();
                    if stopped.is_some() && !stop_sent {
                        break;
                    }
                }
                Incoming::Stop => {
                    return Err(conn.fail_protocol(format!(
                        "helper sent STOP for LIST {}, which has no stream of the client's to stop",
                        String::from_utf8_lossy(remote)
                    )));
                }
                Incoming::Ok | Incoming::Error { .. } => {
                    return match (stopped, msg) {
                        (Some(Stopped::Local(e)), _) => Err(e),
                        (Some(_), _) => Err(Error::Cancelled),
                        (None, Incoming::Error { errno, message }) => {
                            Err(remote_error(errno, message))
                        }
                        (None, _) => Ok(entries),
                    };
                }
                other => {
                    return Err(conn.fail_protocol(format!("helper sent {other:?} during LIST")))
                }
            }
        }
        if stopped.is_some() && !stop_sent {
            continue;
        }
        if wait_channel(conn, ctx, deadline)? {
            return Err(unresponsive(conn, stopped.or(Some(Stopped::User))));
        }
    }
}

/// Append one DIRENTS frame's entries to `entries`, within `limits`. The
/// memory is reserved fallibly: running out is an error, not an abort.
fn keep_dirents(
    entries: &mut Vec<DirEntry>,
    name_bytes: &mut usize,
    batch: crate::wire::Dirents<'_>,
    remote: &[u8],
    limits: ListLimits,
) -> Result<(), Error> {
    let path = String::from_utf8_lossy(remote);
    if entries.len() + batch.len() > limits.max_entries {
        return Err(Error::Limit {
            errno: libc::E2BIG,
            message: format!(
                "listing of {path} has more than {} entries, the limit (see set_list_limits)",
                limits.max_entries
            ),
        });
    }
    let out_of_memory = |what: &str, kept: usize| Error::Local {
        errno: libc::ENOMEM,
        message: format!("listing of {path}: no memory for {what} after {kept} entries"),
    };
    entries
        .try_reserve(batch.len())
        .map_err(|_| out_of_memory("the entries", entries.len()))?;
    for (name, stat) in batch.iter() {
        *name_bytes += name.len();
        if *name_bytes > limits.max_name_bytes {
            return Err(Error::Limit {
                errno: libc::E2BIG,
                message: format!(
                    "listing of {path} has more than {} bytes of names, the limit (see set_list_limits)",
                    limits.max_name_bytes
                ),
            });
        }
        let mut owned = Vec::new();
        owned
            .try_reserve_exact(name.len())
            .map_err(|_| out_of_memory("a name", entries.len()))?;
        owned.extend_from_slice(name);
        entries.push(DirEntry {
            name: OsString::from_vec(owned),
            stat,
        });
    }
    Ok(())
}

/// A request with one final reply and no stream: STAT, MKDIR, REMOVE,
/// RENAME. A cancel cannot undo such a request once sent. It only bounds
/// the wait for the reply.
pub(crate) fn simple(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    frame: &Frame<'_>,
) -> Result<Reply, Error> {
    let serial = conn.next_serial();
    conn.queue(frame, serial)?;
    let mut deadline: Option<Instant> = None;
    loop {
        if ctx.cancel.is_requested() && deadline.is_none() {
            deadline = Some(Instant::now() + ctx.cancel_timeout);
        }
        conn.flush()?;
        // Every frame ends the request: its one reply, or a protocol error.
        if let Some(msg) = conn.read_frame(serial)? {
            let name = frame.kind().name();
            return match msg {
                Incoming::Stop => Err(conn.fail_protocol(format!(
                    "helper sent STOP for {name} (serial {serial}), which has no stream to stop"
                ))),
                Incoming::Ok => Ok(Reply::Ok),
                Incoming::StatInfo(st) => Ok(Reply::Stat(st)),
                Incoming::Error { errno, message } => Err(remote_error(errno, message)),
                other => {
                    Err(conn.fail_protocol(format!("helper sent {other:?} in reply to {name}")))
                }
            };
        }
        if wait_channel(conn, ctx, deadline)? {
            return Err(unresponsive(conn, Some(Stopped::User)));
        }
    }
}
