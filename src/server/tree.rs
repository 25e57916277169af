//! TREE_IN and TREE_OUT on the helper's side: a whole directory tree in one
//! request, every entry streamed back to back (docs/PROTOCOL.md,
//! "Directory trees").
//!
//! A child module of `session`, so it works on the session's buffers
//! directly. [`crate::treefs`] does the file system work; this module is
//! the protocol around it: which frame may come when, what ends the
//! stream, and the one final reply.

use std::os::fd::AsFd;

use super::{show, trim_trailing_slashes, Incoming, Session};
use crate::server::ServeEnd;
use crate::treefs::{
    self, EntryError, ModePolicy, Refused, StreamError, Top, TreeLimits, TreeSender, TreeWriter,
};
use crate::wire::tree::{TREE_KEEP_GOING, TREE_PRESERVE, TREE_SETID};
use crate::wire::{decode_frame, Frame, FrameType, Header, TreeFrame, HEADER_LEN};

/// TREE_OUT sends frames in batches of about this many bytes, one write
/// each.
const SEND_BATCH: usize = 128 << 10;

/// What a TREE_IN stream frame asks for, copied out of the control buffer
/// only where it has to be.
enum Step {
    Entry(Result<(), EntryError>),
    /// The client broke a rule of the stream, or went past a bound.
    Stream(StreamError),
    Done,
}

impl Step {
    fn of(r: Result<(), Refused>) -> Step {
        match r {
            Ok(()) => Step::Entry(Ok(())),
            Err(Refused::Entry(e)) => Step::Entry(Err(e)),
            Err(Refused::Stream(e)) => Step::Stream(e),
        }
    }
}

/// The environment variable that lowers (or raises) the helper's bound on
/// the directories one TREE_IN may create (default
/// [`treefs::DEFAULT_MAX_TREE_DIRS`]).
pub const MAX_TREE_DIRS_ENV: &str = "BARGE_HELPER_MAX_TREE_DIRS";

/// The environment variable with which the operator of a helper that runs
/// as root lets clients keep set-id bits (TREE flag SETID): `1` allows.
pub const ALLOW_SETID_ENV: &str = "BARGE_HELPER_ALLOW_SETID";

/// Whether this helper keeps the setuid, setgid and sticky bits a client
/// asks it to keep. A helper that runs as an ordinary user does: the bits
/// give a client nothing that user could not do with `chmod`. A helper
/// that runs as root (under sudo, or in a container) does only when its
/// operator set [`ALLOW_SETID_ENV`]: otherwise any client allowed to write
/// beneath the root could make a setuid-root program there.
fn setid_allowed() -> bool {
    // SAFETY: geteuid cannot fail and has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    !root || std::env::var_os(ALLOW_SETID_ENV).is_some_and(|v| v == "1")
}

fn helper_limits() -> TreeLimits {
    let mut limits = TreeLimits::default();
    if let Some(n) = std::env::var(MAX_TREE_DIRS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        limits.max_dirs = n;
    }
    limits
}

impl Session<'_, '_> {
    /// Receive a tree into the directory `path`.
    pub(super) fn tree_in(&mut self, serial: u64, flags: u32, path: &[u8]) -> Result<(), ServeEnd> {
        let keep_going = flags & TREE_KEEP_GOING != 0;
        let base = match self.resolver.open(path, libc::O_PATH | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(f) => {
                let message = format!("copy into {}: {}", show(path), f.reason);
                return self.refuse_tree(serial, f.errno, message);
            }
        };
        if flags & TREE_SETID != 0 && !setid_allowed() {
            let message = format!(
                "copy into {}: keeping set-id bits refused: the helper runs as root, and its operator has not set {ALLOW_SETID_ENV}=1",
                show(path)
            );
            return self.refuse_tree(serial, libc::EPERM, message);
        }
        let modes = ModePolicy {
            preserve: flags & TREE_PRESERVE != 0,
            setid: flags & TREE_SETID != 0,
            umask: treefs::current_umask(),
        };
        // The tree's top is one name in `path`, and every later entry lies
        // beneath it.
        let mut w = TreeWriter::new(base, Top::AnyName, modes, helper_limits(), None);
        loop {
            let Some(incoming) = self.next_incoming()? else {
                return Err(ServeEnd::ChannelLost);
            };
            let step = match incoming {
                Incoming::Ext {
                    serial: s,
                    kind,
                    len,
                } if s == serial => {
                    let header = Header {
                        kind,
                        len: len as u32,
                        serial,
                    };
                    let in_file = w.in_file();
                    match decode_frame(&header, &self.control[..len]) {
                        Ok(Frame::Tree(t)) => match t {
                            TreeFrame::Dir { meta, path } if !in_file => {
                                Some(Step::of(w.dir(path, meta)))
                            }
                            TreeFrame::Link { meta, path, target } if !in_file => {
                                Some(Step::of(w.link(path, target, meta)))
                            }
                            TreeFrame::FileWhole {
                                meta,
                                checksum,
                                path,
                                data,
                            } if !in_file => {
                                Some(Step::of(w.file_whole(path, meta, checksum, data)))
                            }
                            TreeFrame::File { meta, path, .. } if !in_file => {
                                Some(Step::of(w.begin_file(path, meta)))
                            }
                            TreeFrame::Skip if in_file => {
                                w.abandon_file();
                                Some(Step::Entry(Ok(())))
                            }
                            TreeFrame::Done if !in_file => Some(Step::Done),
                            _ => None,
                        },
                        _ => None,
                    }
                    .ok_or(incoming)
                }
                Incoming::Data { serial: s, len } if s == serial && w.in_file() => Ok(Step::Entry(
                    w.data(&self.chunk[HEADER_LEN..HEADER_LEN + len]),
                )),
                Incoming::End {
                    serial: s,
                    len,
                    checksum,
                } if s == serial && w.in_file() => Ok(Step::Entry(w.end_file(len, checksum))),
                Incoming::Cancel { serial: s } if s == serial => {
                    // Cancelled: what was written stays as it is.
                    w.finish(&mut || true);
                    let message = format!("copy into {} cancelled by the client", show(path));
                    return self.reply_error(serial, libc::ECANCELED, message);
                }
                Incoming::Stop { .. } => Ok(Step::Entry(Ok(()))),
                other => Err(other),
            };
            let step = match step {
                Ok(s) => s,
                Err(other) => {
                    return Err(self.unexpected(&other, &format!("during TREE_IN serial {serial}")))
                }
            };
            match step {
                Step::Entry(Ok(())) => {}
                Step::Entry(Err(e)) if keep_going => self.send_tree_fail(serial, &e)?,
                Step::Entry(Err(e)) => {
                    // Stop the client's stream, then report this entry.
                    w.abandon_file();
                    self.send(&Frame::Stop, serial)?;
                    self.drain_tree(serial)?;
                    w.finish(&mut || self.client_waiting());
                    let message = format!("copy into {}: {}", show(path), e.message);
                    return self.reply_error(serial, e.errno, message);
                }
                Step::Stream(e) if e.errno == libc::EPROTO => {
                    w.finish(&mut || self.client_waiting());
                    return Err(self.protocol_error(
                        serial,
                        format!("client sent {} during TREE_IN serial {serial}", e.message),
                    ));
                }
                Step::Stream(e) => {
                    // A bound: end the client's stream as for a failed
                    // entry, whatever KEEP_GOING says.
                    w.abandon_file();
                    self.send(&Frame::Stop, serial)?;
                    self.drain_tree(serial)?;
                    w.finish(&mut || self.client_waiting());
                    let message = format!("copy into {}: {}", show(path), e.message);
                    return self.reply_error(serial, e.errno, message);
                }
                Step::Done => {
                    let errors = w.finish(&mut || self.client_waiting());
                    if let (false, Some(e)) = (keep_going, errors.first()) {
                        let message = format!("copy into {}: {}", show(path), e.message);
                        return self.reply_error(serial, e.errno, message);
                    }
                    for e in &errors {
                        self.send_tree_fail(serial, e)?;
                    }
                    return self.send(&Frame::Ok, serial);
                }
            }
        }
    }

    /// Whether the client sent something (a CANCEL: it waits for the final
    /// reply otherwise) or hung up, polled without waiting: the end of a
    /// TREE_IN then stops giving directories their modes.
    fn client_waiting(&self) -> bool {
        self.chan.input_pending().unwrap_or(true)
    }

    /// The helper refuses a tree upload before any entry: STOP, discard
    /// the client's stream, then the final ERROR.
    fn refuse_tree(&mut self, serial: u64, errno: i32, message: String) -> Result<(), ServeEnd> {
        self.send(&Frame::Stop, serial)?;
        self.drain_tree(serial)?;
        self.reply_error(serial, errno, message)
    }

    /// Read and discard the client's tree stream up to its DONE or CANCEL.
    fn drain_tree(&mut self, serial: u64) -> Result<(), ServeEnd> {
        loop {
            let Some(incoming) = self.next_incoming()? else {
                return Err(ServeEnd::ChannelLost);
            };
            match incoming {
                Incoming::Ext {
                    serial: s, kind, ..
                } if s == serial => {
                    if kind == FrameType::TreeDone {
                        return Ok(());
                    }
                }
                Incoming::Cancel { serial: s } if s == serial => return Ok(()),
                Incoming::Data { serial: s, .. } | Incoming::End { serial: s, .. }
                    if s == serial => {}
                Incoming::Stop { .. } => {}
                other => {
                    return Err(self.unexpected(&other, &format!("during TREE_IN serial {serial}")))
                }
            }
        }
    }

    fn send_tree_fail(&mut self, serial: u64, e: &EntryError) -> Result<(), ServeEnd> {
        log_line!("barge-helper: {}", e.message);
        self.send(
            &Frame::Tree(TreeFrame::Fail {
                errno: e.errno,
                path: &e.rel,
                message: e.message.as_bytes(),
            }),
            serial,
        )
    }

    /// Send the tree at `path` (a file, a symlink or a directory).
    pub(super) fn tree_out(
        &mut self,
        serial: u64,
        flags: u32,
        chunk: usize,
        path: &[u8],
    ) -> Result<(), ServeEnd> {
        let keep_going = flags & TREE_KEEP_GOING != 0;
        let parent = match self.resolver.parent(trim_trailing_slashes(path)) {
            Ok(p) => p,
            Err(f) => return self.fail(serial, "copy from", path, f),
        };
        let top = parent.name.as_bytes().to_vec();
        let mut walk = match treefs::walk(parent.dir.as_fd(), &top, &top, keep_going) {
            Ok(w) => w,
            Err(e) => {
                let message = format!("copy from {}: {}", show(path), e.message);
                return self.reply_error(serial, e.errno, message);
            }
        };
        for line in &walk.skipped {
            log_line!("barge-helper: {line}");
        }
        self.send(
            &Frame::Tree(TreeFrame::Totals {
                files: walk.files,
                bytes: walk.bytes,
            }),
            serial,
        )?;
        for e in std::mem::take(&mut walk.errors) {
            self.send_tree_fail(serial, &e)?;
        }
        let mut sender = TreeSender::new(parent.dir, &top, walk, chunk);
        loop {
            if self.stop_requested(serial, "TREE_OUT")? {
                let message = format!("copy from {} cancelled by the client", show(path));
                return self.cancel_download(serial, libc::ECANCELED, message);
            }
            self.out.clear();
            let filled = sender.fill(serial, &mut self.out, SEND_BATCH);
            self.write_out()?;
            if let Err(e) = filled {
                if !keep_going {
                    let message = format!("copy from {}: {}", show(path), e.message);
                    return self.cancel_download(serial, e.errno, message);
                }
                self.send_tree_fail(serial, &e)?;
            }
            if sender.is_done() {
                return self.send(&Frame::Ok, serial);
            }
        }
    }
}
