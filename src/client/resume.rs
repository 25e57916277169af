//! Resumable uploads and downloads (`keep_partial`) on the client's side:
//! PUT_PARTIAL and GET_PARTIAL (docs/PROTOCOL.md, "Resume").
//!
//! An interrupted transfer leaves its data in `.NAME.barge-partial` in the
//! destination directory (the helper's for an upload, the local one for a
//! download). The next transfer to the same destination continues after
//! it once the helper has checked it against the source's prefix with a
//! checksum, and starts over when they differ. END covers the whole file,
//! so the result is verified end to end either way.
//!
//! PROGRESS during a resumed transfer counts the bytes this call moves,
//! out of the bytes that were left to move.
//!
//! The loops follow the rules of `transfer.rs`: [`Connection::wait`] is the
//! only wait, a user cancel ends our half of the stream, and the one final
//! reply decides the result.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use crate::client::conn::{Broken, Connection, Incoming};
use crate::client::events::Progress;
use crate::client::transfer::{wait_channel, OpCtx};
use crate::error::Error;
use crate::partial::PartialFile;
use crate::treefs::push_frame;
use crate::wire::resume::FEATURE_RESUME;
use crate::wire::{encode_header, Frame, FrameType, ResumeFrame, StreamChecksum, UNKNOWN_SIZE};

fn require_resume(conn: &Connection) -> Result<(), Error> {
    if conn.features & FEATURE_RESUME == 0 {
        return Err(Error::Remote {
            errno: libc::EOPNOTSUPP,
            message: "the helper does not support resumable transfers (feature 0x4)".into(),
        });
    }
    Ok(())
}

fn remote_error(errno: i32, message: String) -> Error {
    Error::Remote { errno, message }
}

fn unresponsive(conn: &mut Connection, local: Option<Error>) -> Error {
    conn.fail(Broken::Unresponsive, local.unwrap_or(Error::Cancelled))
}

/// Where an upload stands.
#[derive(PartialEq, Eq)]
enum Upload {
    /// Waiting for PARTIAL_AT.
    AwaitPartial,
    /// PREFIX_SUM sent; waiting for RESUME_AT.
    AwaitResume,
    Streaming,
    /// END or CANCEL queued; waiting for the final reply.
    Ended {
        with_end: bool,
    },
}

/// Upload the local file `local` to `remote`, keeping partial data on
/// failure and continuing an earlier attempt's.
pub(crate) fn upload(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    local: &Path,
    remote: &[u8],
) -> Result<(), Error> {
    require_resume(conn)?;
    let name = local.display().to_string();
    let mut src = File::open(local).map_err(|e| Error::local(format!("open {name}"), e))?;
    let meta = src
        .metadata()
        .map_err(|e| Error::local(format!("stat {name}"), e))?;
    if meta.is_dir() {
        return Err(Error::local(
            format!("open {name}"),
            std::io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    let regular = meta.is_file();
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
    let serial = conn.next_serial();
    conn.queue(
        &Frame::Resume(ResumeFrame::Put {
            mode,
            size: if regular { meta.len() } else { UNKNOWN_SIZE },
            path: remote,
        }),
        serial,
    )?;
    let mut state = Upload::AwaitPartial;
    let mut sum = StreamChecksum::new();
    let mut prefix: Option<StreamChecksum> = None;
    let mut progress: Option<Progress> = None;
    let mut user_cancel = false;
    let mut local_error: Option<Error> = None;
    let mut helper_stopped = false;
    let mut deadline: Option<Instant> = None;
    let mut buf = vec![0u8; ctx.chunk as usize];
    let mut batch = Vec::with_capacity(ctx.chunk as usize + 64);

    loop {
        if ctx.cancel.is_requested() && deadline.is_none() {
            deadline = Some(Instant::now() + ctx.cancel_timeout);
            if !matches!(state, Upload::Ended { .. }) {
                user_cancel = true;
            }
        }
        let stop_now = user_cancel || local_error.is_some() || helper_stopped;
        if stop_now && !matches!(state, Upload::Ended { .. }) && conn.out.is_empty() {
            // CANCEL is valid at any point after the request: the helper
            // keeps its partial data.
            conn.queue(&Frame::Cancel, serial)?;
            state = Upload::Ended { with_end: false };
        }
        if state == Upload::Streaming && !stop_now && conn.out.is_empty() {
            let n = loop {
                match src.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            match n {
                Ok(0) => {
                    conn.queue(
                        &Frame::End {
                            len: sum.len(),
                            checksum: sum.digest(),
                        },
                        serial,
                    )?;
                    state = Upload::Ended { with_end: true };
                }
                Ok(n) => {
                    sum.update(&buf[..n]);
                    batch.clear();
                    batch.extend_from_slice(&encode_header(FrameType::Data, n as u32, serial));
                    batch.extend_from_slice(&buf[..n]);
                    conn.queue_encoded(&batch);
                    if let Some(p) = progress.as_mut() {
                        p.add(n as u64, ctx.events);
                    }
                    // Progress callbacks may cancel: look again first.
                    continue;
                }
                Err(e) => {
                    local_error = Some(Error::local(format!("read {name}"), e));
                    deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                    continue;
                }
            }
        }
        conn.flush()?;
        while let Some(msg) = conn.read_frame(serial)? {
            match msg {
                Incoming::Ext(FrameType::PartialAt) if state == Upload::AwaitPartial => {
                    let held = match conn.ext_frame() {
                        Frame::Resume(ResumeFrame::PartialAt { len }) => len,
                        _ => unreachable!("checked when read"),
                    };
                    conn.consume();
                    // Checksum as much of our source as the helper holds;
                    // a cancel stops the hashing.
                    let cancel = ctx.cancel;
                    let hashed = if held > 0 && regular && meta.len() >= held {
                        crate::partial::checksum_prefix(&mut src, held, &mut || {
                            !cancel.is_requested()
                        })
                    } else {
                        Ok(None)
                    };
                    let hashed = match hashed {
                        Ok(h) => h,
                        Err(e) => {
                            // The helper awaits PREFIX_SUM: end the
                            // request with CANCEL and read its reply.
                            local_error = Some(Error::local(format!("read {name}"), e));
                            deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                            break;
                        }
                    };
                    let (len, checksum) = hashed.as_ref().map_or((0, 0), |s| (s.len(), s.digest()));
                    prefix = hashed;
                    if ctx.cancel.is_requested() {
                        break;
                    }
                    push_frame(
                        &mut batch,
                        &Frame::Resume(ResumeFrame::PrefixSum { len, checksum }),
                        serial,
                    );
                    conn.queue_encoded(&batch);
                    batch.clear();
                    state = Upload::AwaitResume;
                }
                Incoming::Ext(FrameType::ResumeAt) if state == Upload::AwaitResume => {
                    let offset = match conn.ext_frame() {
                        Frame::Resume(ResumeFrame::ResumeAt { offset }) => offset,
                        _ => unreachable!("checked when read"),
                    };
                    conn.consume();
                    let resumed = prefix.take().filter(|p| p.len() == offset && offset > 0);
                    if offset > 0 && resumed.is_none() {
                        return Err(conn.fail_protocol(format!(
                            "helper resumed PUT_PARTIAL at byte {offset}, which the client did not offer"
                        )));
                    }
                    sum = resumed.unwrap_or_default();
                    let total = regular.then(|| meta.len().saturating_sub(offset));
                    progress = Some(Progress::new(ctx.events, total, ctx.progress_interval));
                    state = Upload::Streaming;
                    if regular {
                        if let Err(e) = src.seek(SeekFrom::Start(offset)) {
                            // Streaming, so nothing is read; the stream
                            // ends with CANCEL.
                            local_error = Some(Error::local(format!("seek {name}"), e));
                            deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                            break;
                        }
                    }
                }
                Incoming::Stop => {
                    if !matches!(state, Upload::Ended { .. }) {
                        helper_stopped = true;
                    }
                }
                Incoming::Ok | Incoming::Error { .. } => {
                    let ended = matches!(state, Upload::Ended { .. }) && conn.out.is_empty();
                    return match msg {
                        Incoming::Ok if state == (Upload::Ended { with_end: true }) && ended => {
                            if let Some(p) = progress.as_mut() {
                                p.finish(ctx.events);
                            }
                            Ok(())
                        }
                        Incoming::Ok => Err(conn.fail_protocol(format!(
                            "helper completed PUT_PARTIAL {} before its stream ended",
                            String::from_utf8_lossy(remote)
                        ))),
                        Incoming::Error { errno, message } => {
                            // Before the stream starts, an ERROR is final
                            // at once; after it, only once we ended ours.
                            if matches!(state, Upload::Streaming)
                                || (!ended && matches!(state, Upload::Ended { .. }))
                            {
                                return Err(conn.fail_protocol(format!(
                                    "helper replied to PUT_PARTIAL {} before the stream ended",
                                    String::from_utf8_lossy(remote)
                                )));
                            }
                            Err(if user_cancel {
                                Error::Cancelled
                            } else if let Some(e) = local_error {
                                e
                            } else {
                                remote_error(errno, message)
                            })
                        }
                        _ => unreachable!(),
                    };
                }
                other => {
                    return Err(
                        conn.fail_protocol(format!("helper sent {other:?} during PUT_PARTIAL"))
                    );
                }
            }
        }
        let busy = state == Upload::Streaming && conn.out.is_empty() && !stop_now;
        let must_end = (user_cancel || local_error.is_some() || helper_stopped)
            && !matches!(state, Upload::Ended { .. })
            && conn.out.is_empty();
        if busy || must_end || (ctx.cancel.is_requested() && deadline.is_none()) {
            continue;
        }
        if wait_channel(conn, ctx, deadline)? {
            return Err(unresponsive(conn, local_error));
        }
    }
}

/// Download `remote` to the local path `local`, keeping partial data in
/// `.NAME.barge-partial` on failure and continuing an earlier attempt's.
pub(crate) fn download(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    remote: &[u8],
    local: &Path,
) -> Result<(), Error> {
    require_resume(conn)?;
    let name = local.display().to_string();
    let (dir, file_name) = match super::local::destination(local)? {
        super::local::Destination::Replace { dir, name } => (dir, name),
        super::local::Destination::Special { path } => {
            return Err(Error::Local {
                errno: libc::EINVAL,
                message: format!(
                    "{name}: cannot resume into {}, which is not a regular file (resume needs one)",
                    path.display()
                ),
            });
        }
    };
    let mut part = PartialFile::open(dir, &file_name)
        .map_err(|e| Error::local(format!("open partial file for {name}"), e))?;
    let held = part.held;
    let cancel = ctx.cancel;
    let prefix = part
        .checksum_prefix(held, &mut || !cancel.is_requested())
        .map_err(|e| Error::local(format!("read partial file for {name}"), e))?;
    let Some(prefix) = prefix else {
        return Err(Error::Cancelled);
    };
    let serial = conn.next_serial();
    conn.queue(
        &Frame::Resume(ResumeFrame::Get {
            chunk: ctx.chunk,
            offset: held,
            checksum: prefix.digest(),
            path: remote,
        }),
        serial,
    )?;
    let mut prefix = Some(prefix);
    let mut sum = StreamChecksum::new();
    let mut started = false;
    let mut mode = 0o644;
    let mut size: Option<u64> = None;
    let mut progress: Option<Progress> = None;
    let mut user_cancel = false;
    let mut local_error: Option<Error> = None;
    let mut stop_sent = false;
    let mut stream_over = false;
    let mut end_matched = false;
    let mut deadline: Option<Instant> = None;

    loop {
        if ctx.cancel.is_requested() && deadline.is_none() {
            deadline = Some(Instant::now() + ctx.cancel_timeout);
            if !stream_over {
                user_cancel = true;
            }
        }
        if (user_cancel || local_error.is_some()) && !stop_sent && !stream_over {
            conn.queue(&Frame::Stop, serial)?;
            stop_sent = true;
        }
        conn.flush()?;
        let discarding = user_cancel || local_error.is_some() || stream_over;
        while let Some(msg) = conn.read_frame(serial)? {
            match msg {
                Incoming::SourceInfo { size: s, mode: m } => {
                    size = (s != UNKNOWN_SIZE).then_some(s);
                    mode = m;
                }
                Incoming::Ext(FrameType::ResumeAt) if !started => {
                    let offset = match conn.ext_frame() {
                        Frame::Resume(ResumeFrame::ResumeAt { offset }) => offset,
                        _ => unreachable!("checked when read"),
                    };
                    conn.consume();
                    if offset != 0 && offset != held {
                        return Err(conn.fail_protocol(format!(
                            "helper resumed GET_PARTIAL at byte {offset}; the client holds {held}"
                        )));
                    }
                    if offset > 0 {
                        sum = prefix.take().unwrap_or_default();
                    }
                    started = true;
                    progress = Some(Progress::new(
                        ctx.events,
                        size.map(|s| s.saturating_sub(offset)),
                        ctx.progress_interval,
                    ));
                    if let Err(e) = part.continue_at(offset) {
                        local_error = Some(partial_write_error(&name, e));
                        deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                        break;
                    }
                }
                Incoming::Data => {
                    if !started {
                        // A plain GET stream (the source is not a regular
                        // file): it starts at 0.
                        started = true;
                        progress = Some(Progress::new(ctx.events, size, ctx.progress_interval));
                        if let Err(e) = part.continue_at(0) {
                            local_error = Some(partial_write_error(&name, e));
                            deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                            conn.consume();
                            break;
                        }
                    }
                    if !discarding {
                        sum.update(conn.data());
                        if let Err(e) = part.write_all(conn.data()) {
                            local_error = Some(Error::local(format!("write {name}"), e));
                            deadline.get_or_insert(Instant::now() + ctx.cancel_timeout);
                        } else if let Some(p) = progress.as_mut() {
                            p.add(conn.data().len() as u64, ctx.events);
                        }
                    }
                    conn.consume();
                    if ctx.cancel.is_requested() || local_error.is_some() {
                        break;
                    }
                }
                Incoming::End { len, checksum } => {
                    stream_over = true;
                    if !started && !discarding {
                        if let Err(e) = part.continue_at(0) {
                            // The final reply follows: it reports this.
                            local_error = Some(partial_write_error(&name, e));
                        }
                    }
                    end_matched = sum.matches(len, checksum);
                }
                Incoming::Cancel => stream_over = true,
                Incoming::Stop => {}
                Incoming::Ok if !stream_over => {
                    return Err(conn.fail_protocol(
                        "helper finished GET_PARTIAL without ending its stream".into(),
                    ));
                }
                Incoming::Ok => {
                    if user_cancel {
                        return Err(Error::Cancelled);
                    }
                    if let Some(e) = local_error {
                        return Err(e);
                    }
                    if !end_matched {
                        part.discard();
                        return Err(remote_error(
                            libc::EBADMSG,
                            format!(
                                "download of {}: length or checksum mismatch; data discarded",
                                String::from_utf8_lossy(remote)
                            ),
                        ));
                    }
                    let umask = crate::treefs::current_umask();
                    part.commit(mode & 0o777 & !umask)
                        .map_err(|e| Error::local(format!("rename into {name}"), e))?;
                    if let Some(p) = progress.as_mut() {
                        p.finish(ctx.events);
                    }
                    return Ok(());
                }
                Incoming::Error { errno, message } => {
                    return Err(if user_cancel {
                        Error::Cancelled
                    } else if let Some(e) = local_error {
                        e
                    } else {
                        remote_error(errno, message)
                    });
                }
                other => {
                    return Err(
                        conn.fail_protocol(format!("helper sent {other:?} during GET_PARTIAL"))
                    );
                }
            }
        }
        if (ctx.cancel.is_requested() && deadline.is_none())
            || ((user_cancel || local_error.is_some()) && !stop_sent && !stream_over)
        {
            continue;
        }
        if wait_channel(conn, ctx, deadline)? {
            return Err(unresponsive(conn, local_error));
        }
    }
}

fn partial_write_error(name: &str, e: std::io::Error) -> Error {
    Error::local(format!("write partial file for {name}"), e)
}
