//! The fast path's client side (`docs/PROTOCOL.md`, "The fast path"):
//! PUT_FD and GET_FD pass the local file to the helper as an fd, and the
//! helper copies it in the kernel, in bounded steps, reporting COPIED after
//! each. Used only when the connection has `fast_path` set: the helper
//! granted FEATURE_FD_PASSING and is our own child.
//!
//! Cancel: a user cancel sends STOP; the helper sees it before its next
//! step and answers ERROR `ECANCELED`. As on the stream path, the wait for
//! that answer is bounded by `cancel_timeout`, after which the helper is
//! killed. A final OK that crossed our STOP is the real result: the copy
//! had completed (and for PUT_FD, was committed).
//!
//! Refusal: an ERROR `EOPNOTSUPP` before any progress means the helper
//! cannot use the fd; the caller then sends the same transfer as a stream,
//! so the fallback is invisible to the user.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use crate::client::conn::{Broken, Connection, Incoming};
use crate::client::events::Progress;
use crate::client::transfer::{wait_channel, OpCtx};
use crate::error::Error;
use crate::wire::{Frame, UNKNOWN_SIZE};

/// How a fast-path request ended, when it did not fail.
pub(crate) enum Outcome {
    Done,
    /// The helper cannot take the fd: send the transfer as a stream.
    Refused,
}

/// Upload the regular file `src` (of `size` bytes when opened) to
/// `remote` with PUT_FD.
pub(crate) fn put(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    src: BorrowedFd<'_>,
    remote: &[u8],
    mode: u32,
    size: u64,
) -> Result<Outcome, Error> {
    let serial = conn.next_serial();
    conn.queue_with_fd(
        &Frame::PutFd {
            mode,
            size,
            path: remote,
        },
        serial,
        src,
    )?;
    run(conn, ctx, serial, Some(size), &mut |_, _| {}).map(|(o, _)| o)
}

/// Download `remote` into `dst`, an empty regular file opened for writing,
/// with GET_FD. `on_source` receives SOURCE_INFO's size and mode. On
/// `Done`, `dst` holds the whole file and its length has been checked
/// against the helper's count.
pub(crate) fn get(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    dst: BorrowedFd<'_>,
    remote: &[u8],
    on_source: &mut dyn FnMut(u64, u32),
) -> Result<Outcome, Error> {
    let serial = conn.next_serial();
    conn.queue_with_fd(&Frame::GetFd { path: remote }, serial, dst)?;
    let (outcome, copied) = run(conn, ctx, serial, None, on_source)?;
    if let Outcome::Done = outcome {
        // SAFETY: fstat into a zeroed stat, on an fd the caller keeps open.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(dst.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::local(
                "examine the downloaded file",
                std::io::Error::last_os_error(),
            ));
        }
        if st.st_size as u64 != copied {
            return Err(Error::Remote {
                errno: libc::EBADMSG,
                message: format!(
                    "download of {}: the helper copied {copied} bytes but the file holds {}; data discarded",
                    String::from_utf8_lossy(remote),
                    st.st_size
                ),
            });
        }
    }
    Ok(outcome)
}

/// Wait for a fast-path request's final reply, reporting COPIED as
/// progress. Returns the outcome and the last COPIED total.
fn run(
    conn: &mut Connection,
    ctx: &mut OpCtx<'_>,
    serial: u64,
    total: Option<u64>,
    on_source: &mut dyn FnMut(u64, u32),
) -> Result<(Outcome, u64), Error> {
    let mut progress = Progress::new(ctx.events, total, ctx.progress_interval);
    let mut copied = 0u64;
    // Anything but the final reply has arrived: a refusal is no longer
    // possible.
    let mut started = false;
    let mut deadline: Option<Instant> = None;
    loop {
        if ctx.cancel.is_requested() && deadline.is_none() {
            deadline = Some(Instant::now() + ctx.cancel_timeout);
            conn.queue(&Frame::Stop, serial)?;
        }
        conn.flush()?;
        while let Some(msg) = conn.read_frame(serial)? {
            match msg {
                Incoming::Copied(t) => {
                    if t < copied {
                        return Err(conn.fail_protocol(format!(
                            "helper's COPIED went back from {copied} to {t}"
                        )));
                    }
                    started = true;
                    progress.add(t - copied, ctx.events);
                    copied = t;
                }
                Incoming::SourceInfo { size, mode } if !started => {
                    started = true;
                    progress.set_total((size != UNKNOWN_SIZE).then_some(size));
                    on_source(size, mode);
                }
                Incoming::Stop if !started => {
                    return Err(conn.fail_protocol(format!(
                        "helper sent STOP for fast-path request {serial} before it started; there is nothing to stop"
                    )));
                }
                Incoming::Stop => {}
                Incoming::Ok => {
                    progress.finish(ctx.events);
                    return Ok((Outcome::Done, copied));
                }
                Incoming::Error { .. } if deadline.is_some() => return Err(Error::Cancelled),
                Incoming::Error { errno, .. } if errno == libc::EOPNOTSUPP && !started => {
                    return Ok((Outcome::Refused, 0));
                }
                Incoming::Error { errno, message } => {
                    return Err(Error::Remote { errno, message });
                }
                other => {
                    return Err(conn.fail_protocol(format!(
                        "helper sent {other:?} during a fast-path transfer"
                    )));
                }
            }
        }
        if wait_channel(conn, ctx, deadline)? {
            return Err(conn.fail(Broken::Unresponsive, Error::Cancelled));
        }
    }
}
