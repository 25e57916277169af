//! Faults the helper injects into itself so the client's tests can drive
//! cancels, I/O errors, stalls and deaths from the far end.
//!
//! The binary reads them from `BARGE_HELPER_FAULT` (a comma-separated list)
//! and `BARGE_HELPER_FAULT_PATH`. In-process tests build them with
//! [`Fault::parse`] and pass them in [`super::ServerOptions`].

/// What to do when a transfer reaches a fault's byte count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Cancel the stream from the helper's side, with `ECANCELED`.
    Cancel,
    /// Fail the stream as if an I/O call had returned this errno.
    Fail(i32),
    /// Stop reading and writing forever.
    Stall,
    /// Kill the helper with SIGKILL.
    Die,
}

/// A fault that fires once a transfer stream has carried at least `at`
/// bytes, just before the helper handles the next chunk of data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferFault {
    pub at: u64,
    pub action: FaultAction,
}

/// All the faults of one helper. The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub transfer: Vec<TransferFault>,
    /// When set, transfer faults apply only to requests whose path contains
    /// these bytes.
    pub path_filter: Option<Vec<u8>>,
    /// Read SHUTDOWN and neither answer it nor exit.
    pub ignore_shutdown: bool,
    /// `main_from_env` ignores SIGTERM.
    pub ignore_sigterm: bool,
    /// Read HELLO and never answer it.
    pub stall_handshake: bool,
    /// Speak only this protocol version.
    pub version: Option<u16>,
    /// Grant the fast path but refuse every PUT_FD and GET_FD with
    /// `EOPNOTSUPP`, as a helper that cannot use the passed fd would.
    pub refuse_fd: bool,
    /// Write uploads as if the filesystem had no O_TMPFILE: under a
    /// hidden name from the start.
    pub no_tmpfile: bool,
}

impl Fault {
    /// Parse a `BARGE_HELPER_FAULT` value, e.g. `cancel@65536,ignore-sigterm`.
    /// The error names the item that is wrong.
    pub fn parse(spec: &str) -> Result<Fault, String> {
        let mut fault = Fault::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            parse_item(item, &mut fault)
                .map_err(|why| format!("bad BARGE_HELPER_FAULT item {item:?}: {why}"))?;
        }
        Ok(fault)
    }

    /// The transfer faults that apply to a request on `path`.
    pub(super) fn transfer_faults_for(&self, path: &[u8]) -> &[TransferFault] {
        let applies = match &self.path_filter {
            None => true,
            Some(needle) => contains(path, needle),
        };
        if applies {
            &self.transfer
        } else {
            &[]
        }
    }
}

/// The first fault due once `done` bytes have passed.
pub(super) fn due(faults: &[TransferFault], done: u64) -> Option<TransferFault> {
    faults.iter().find(|f| done >= f.at).copied()
}

fn parse_item(item: &str, fault: &mut Fault) -> Result<(), String> {
    match item {
        "ignore-shutdown" => fault.ignore_shutdown = true,
        "ignore-sigterm" => fault.ignore_sigterm = true,
        "stall-handshake" => fault.stall_handshake = true,
        "refuse-fd" => fault.refuse_fd = true,
        "no-tmpfile" => fault.no_tmpfile = true,
        _ => {
            if let Some(v) = item.strip_prefix("version=") {
                let v = v.parse().map_err(|_| "the version is not a number")?;
                fault.version = Some(v);
            } else if let Some((name, arg)) = item.split_once('@') {
                let (at, action) = match name {
                    "cancel" => (parse_bytes(arg)?, FaultAction::Cancel),
                    "stall" => (parse_bytes(arg)?, FaultAction::Stall),
                    "die" => (parse_bytes(arg)?, FaultAction::Die),
                    "fail" => {
                        let (at, errno) = arg.split_once(':').ok_or("expected fail@BYTES:ERRNO")?;
                        (parse_bytes(at)?, FaultAction::Fail(parse_errno(errno)?))
                    }
                    _ => return Err(format!("unknown fault {name:?}")),
                };
                fault.transfer.push(TransferFault { at, action });
            } else {
                return Err("unknown fault".into());
            }
        }
    }
    Ok(())
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("{s:?} is not a byte count"))
}

fn parse_errno(s: &str) -> Result<i32, String> {
    let errno = match s {
        "ENOSPC" => libc::ENOSPC,
        "EIO" => libc::EIO,
        "EACCES" => libc::EACCES,
        "EDQUOT" => libc::EDQUOT,
        "EPERM" => libc::EPERM,
        "EROFS" => libc::EROFS,
        "EFBIG" => libc::EFBIG,
        _ => s
            .parse()
            .map_err(|_| format!("{s:?} is not an errno number or a known errno name"))?,
    };
    if errno <= 0 {
        return Err(format!("errno {errno} is not positive"));
    }
    Ok(errno)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_item() {
        let f = Fault::parse(
            "cancel@10, fail@20:ENOSPC,fail@5:13,stall@7,die@0,ignore-shutdown,ignore-sigterm,stall-handshake,version=2",
        )
        .unwrap();
        assert_eq!(
            f.transfer,
            vec![
                TransferFault {
                    at: 10,
                    action: FaultAction::Cancel
                },
                TransferFault {
                    at: 20,
                    action: FaultAction::Fail(libc::ENOSPC)
                },
                TransferFault {
                    at: 5,
                    action: FaultAction::Fail(libc::EACCES)
                },
                TransferFault {
                    at: 7,
                    action: FaultAction::Stall
                },
                TransferFault {
                    at: 0,
                    action: FaultAction::Die
                },
            ]
        );
        assert!(f.ignore_shutdown && f.ignore_sigterm && f.stall_handshake);
        assert_eq!(f.version, Some(2));
        assert_eq!(Fault::parse("").unwrap(), Fault::default());
    }

    #[test]
    fn malformed_items_are_refused() {
        for bad in [
            "cancel",
            "cancel@",
            "cancel@x",
            "fail@3",
            "fail@3:ENOPE",
            "fail@3:0",
            "boom",
            "version=x",
            "explode@3",
        ] {
            let e = Fault::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn path_filter_limits_transfer_faults() {
        let mut f = Fault::parse("cancel@0").unwrap();
        f.path_filter = Some(b"slow".to_vec());
        assert!(f.transfer_faults_for(b"/tmp/fast.bin").is_empty());
        assert_eq!(f.transfer_faults_for(b"/tmp/slow.bin").len(), 1);
    }

    #[test]
    fn fault_is_due_at_its_byte_count() {
        let f = Fault::parse("cancel@100").unwrap();
        assert_eq!(due(&f.transfer, 99), None);
        assert!(due(&f.transfer, 100).is_some());
    }
}
