//! PUT_PARTIAL and GET_PARTIAL on the helper's side: transfers that keep
//! their partial data and continue an earlier attempt's, after checking it
//! against the source with a checksum (docs/PROTOCOL.md, "Resume").
//!
//! A child module of `session`, so it works on the session's buffers.

use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;

use super::{show, DownloadStream, Incoming, Session};
use crate::partial::PartialFile;
use crate::server::{Failure, ServeEnd};
use crate::wire::{
    decode_frame, Frame, FrameType, Header, ResumeFrame, StreamChecksum, HEADER_LEN,
};

impl Session<'_, '_> {
    /// An upload into `.NAME.barge-partial` that continues what an earlier
    /// attempt left there, and stays there when this one fails.
    pub(super) fn put_partial(
        &mut self,
        serial: u64,
        mode: u32,
        path: &[u8],
    ) -> Result<(), ServeEnd> {
        let opened = match self.upload_dest(path) {
            Ok(super::dest::UploadDest::Replace(p)) => {
                PartialFile::open(p.dir, p.name.as_bytes()).map_err(Failure::from)
            }
            Ok(super::dest::UploadDest::Special(_)) => Err(Failure::new(
                libc::EINVAL,
                "a FIFO or device cannot be resumed into (resume needs a regular file)",
            )),
            Err(f) => Err(f),
        };
        // The client waits for PARTIAL_AT before it streams, so a failure
        // here is a plain ERROR.
        let mut part = match opened {
            Ok(f) => f,
            Err(f) => return self.fail(serial, "open partial file for", path, f),
        };
        let held = part.held;
        self.send(&Frame::Resume(ResumeFrame::PartialAt { len: held }), serial)?;
        let (len, checksum) = loop {
            let Some(incoming) = self.next_incoming()? else {
                return Err(ServeEnd::ChannelLost);
            };
            match incoming {
                Incoming::Ext {
                    serial: s,
                    kind: FrameType::PrefixSum,
                    len,
                } if s == serial => {
                    let header = Header {
                        kind: FrameType::PrefixSum,
                        len: len as u32,
                        serial,
                    };
                    match decode_frame(&header, &self.control[..len]) {
                        Ok(Frame::Resume(ResumeFrame::PrefixSum { len, checksum })) => {
                            break (len, checksum)
                        }
                        _ => unreachable!("checked when read"),
                    }
                }
                Incoming::Cancel { serial: s } if s == serial => {
                    let message = format!("upload of {} cancelled by the client", show(path));
                    return self.reply_error(serial, libc::ECANCELED, message);
                }
                Incoming::Stop { .. } => {}
                other => {
                    return Err(
                        self.unexpected(&other, &format!("during PUT_PARTIAL serial {serial}"))
                    )
                }
            }
        };
        let mut sum = StreamChecksum::new();
        let mut offset = 0;
        if held > 0 && len == held {
            match part.checksum_prefix(held, &mut || true) {
                Ok(Some(s)) if s.digest() == checksum => {
                    sum = s;
                    offset = held;
                }
                Ok(_) => log_line!(
                    "barge-helper: partial data of {} does not match its source; starting over",
                    show(path)
                ),
                Err(e) => log_line!(
                    "barge-helper: reading partial data of {}: {e}; starting over",
                    show(path)
                ),
            }
        }
        if let Err(e) = part.continue_at(offset) {
            let f = Failure::from(e);
            let message = format!("write {}: {}", show(path), f.reason);
            return self.refuse_upload(serial, f.errno, message);
        }
        if offset > 0 {
            log_line!(
                "barge-helper: resuming upload of {} at byte {offset}",
                show(path)
            );
        }
        self.send(&Frame::Resume(ResumeFrame::ResumeAt { offset }), serial)?;
        loop {
            let Some(incoming) = self.next_incoming()? else {
                return Err(ServeEnd::ChannelLost);
            };
            match incoming {
                Incoming::Data { serial: s, len } if s == serial => {
                    let bytes = &self.chunk[HEADER_LEN..HEADER_LEN + len];
                    sum.update(bytes);
                    if let Err(e) = part.write_all(bytes) {
                        let f = Failure::from(e);
                        let message = format!("write {}: {}", show(path), f.reason);
                        return self.refuse_upload(serial, f.errno, message);
                    }
                }
                Incoming::End {
                    serial: s,
                    len,
                    checksum,
                } if s == serial => {
                    if !sum.matches(len, checksum) {
                        // The partial data cannot be trusted for a retry.
                        part.discard();
                        let message = format!(
                            "upload of {}: checksum mismatch: {} bytes with checksum {:016x}, END says {len} bytes with {checksum:016x}",
                            show(path),
                            sum.len(),
                            sum.digest(),
                        );
                        return self.reply_error(serial, libc::EBADMSG, message);
                    }
                    let mode = super::upload_mode(mode) & !crate::treefs::current_umask();
                    return match part.commit(mode) {
                        Ok(()) => self.send(&Frame::Ok, serial),
                        Err(e) => {
                            let f = Failure::from(e);
                            let message = format!("commit {}: {}", show(path), f.reason);
                            self.reply_error(serial, f.errno, message)
                        }
                    };
                }
                Incoming::Cancel { serial: s } if s == serial => {
                    let message = format!(
                        "upload of {} cancelled by the client; {} bytes kept for a resume",
                        show(path),
                        sum.len(),
                    );
                    return self.reply_error(serial, libc::ECANCELED, message);
                }
                Incoming::Stop { .. } => {}
                other => {
                    return Err(
                        self.unexpected(&other, &format!("during PUT_PARTIAL serial {serial}"))
                    )
                }
            }
        }
    }

    /// A download that continues after the client's partial data when the
    /// same prefix of the source has the same checksum.
    pub(super) fn get_partial(
        &mut self,
        serial: u64,
        chunk: usize,
        offset: u64,
        checksum: u64,
        path: &[u8],
    ) -> Result<(), ServeEnd> {
        let (fd, st) = match self.open_download(path) {
            Ok(f) => f,
            Err(f) => return self.fail(serial, "open", path, f),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            // Only a regular file can be read again from its start: a
            // plain GET, whose stream starts at 0 without RESUME_AT.
            return self.get_opened(serial, chunk, path, fd, &st);
        }
        let size = st.st_size as u64;
        self.send(
            &Frame::SourceInfo {
                size,
                mode: st.st_mode,
            },
            serial,
        )?;
        let mut file = std::fs::File::from(fd);
        let mut sum = StreamChecksum::new();
        let mut start = 0;
        if offset > 0 && offset <= size {
            match crate::partial::checksum_prefix(&mut file, offset, &mut || true) {
                Ok(Some(s)) if s.digest() == checksum => {
                    sum = s;
                    start = offset;
                }
                _ => log_line!(
                    "barge-helper: the client's partial data of {} does not match; starting over",
                    show(path)
                ),
            }
        }
        if let Err(e) = file.seek(SeekFrom::Start(start)) {
            let f = Failure::from(e);
            let message = format!("read {}: {}", show(path), f.reason);
            return self.cancel_download(serial, f.errno, message);
        }
        if start > 0 {
            log_line!(
                "barge-helper: resuming download of {} at byte {start}",
                show(path)
            );
        }
        self.send(
            &Frame::Resume(ResumeFrame::ResumeAt { offset: start }),
            serial,
        )?;
        let stream = DownloadStream {
            chunk,
            polled: false,
            faults: &[],
            during: "GET_PARTIAL",
        };
        self.stream_download(serial, file.as_fd(), path, sum, stream)
    }
}
