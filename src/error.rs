//! barge's error type. Every error has an errno (see [`Error::errno`]) and a
//! message that names the path, frame or process it is about.

use std::io;
use std::time::Duration;

/// Result type of barge operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. New variants may come in later versions; match with a
/// wildcard arm, and use [`Error::errno`] for the kind of failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation was cancelled through a [`crate::Canceller`] (errno
    /// `ECANCELED`). The handle is usable at once.
    #[error("operation cancelled by user")]
    Cancelled,

    /// The helper reported an error for a request.
    #[error("{message}")]
    Remote { errno: i32, message: String },

    /// A local system call failed.
    #[error("{message}")]
    Local { errno: i32, message: String },

    /// The peer broke the protocol (errno `EPROTO`, or the errno the helper
    /// gave during the handshake). The helper has been stopped.
    #[error("protocol error: {message}")]
    Protocol { errno: i32, message: String },

    /// The helper exited or was killed while in use (errno `ECONNRESET`).
    /// The message carries its exit status and last lines of stderr.
    #[error("{message}")]
    HelperDied { message: String },

    /// The helper died soon after launch several times. Operations fail
    /// fast until the back-off ends (errno `EAGAIN`).
    #[error("helper restarting, retry in {} s", retry_in.as_secs_f64().ceil() as u64)]
    Restarting { retry_in: Duration },

    /// A bounded wait ran out (errno `ETIMEDOUT`).
    #[error("{0}")]
    Timeout(String),

    /// The graceful shutdown failed; the helper was stopped by signal.
    #[error("abnormal shutdown: {cause}")]
    AbnormalShutdown { cause: String },

    /// A bad argument (errno `EINVAL`).
    #[error("{0}")]
    InvalidArgument(String),

    /// The peer sent more than a bound allows barge to keep (errno `E2BIG`
    /// or `EFBIG`), e.g. a listing past [`crate::Handle::set_list_limits`].
    /// The message names the path and the bound. The request was stopped;
    /// a helper that did not stop it in time was killed.
    #[error("{message}")]
    Limit { errno: i32, message: String },

    /// A tree copy in keep-going mode finished, but some entries failed;
    /// everything else was copied. `errors` lists each failed path in the
    /// order met (never empty). errno: the first failure's.
    #[error("{} {} of the tree failed; the first: {}", errors.len(), if errors.len() == 1 { "entry" } else { "entries" }, errors[0].message)]
    Incomplete { errors: Vec<PathError> },
}

/// One failed entry of a tree copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathError {
    /// The entry's path: local for a failure on this side, remote for one
    /// on the helper's side.
    pub path: std::path::PathBuf,
    pub errno: i32,
    /// What failed, naming the path.
    pub message: String,
}

impl Error {
    /// The errno that best describes the error: always an error number
    /// (1 to 4095, Linux's `MAX_ERRNO`). A value outside that range, which only a peer
    /// could have supplied, reads as `EPROTO`.
    pub fn errno(&self) -> i32 {
        let errno = self.raw_errno();
        if is_errno(errno) {
            errno
        } else {
            libc::EPROTO
        }
    }

    fn raw_errno(&self) -> i32 {
        match self {
            Error::Cancelled => libc::ECANCELED,
            Error::Remote { errno, .. }
            | Error::Local { errno, .. }
            | Error::Protocol { errno, .. }
            | Error::Limit { errno, .. } => *errno,
            Error::HelperDied { .. } => libc::ECONNRESET,
            Error::Restarting { .. } => libc::EAGAIN,
            Error::Timeout(_) => libc::ETIMEDOUT,
            Error::AbnormalShutdown { .. } => libc::EIO,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::Incomplete { errors } => errors.first().map_or(libc::EIO, |e| e.errno),
        }
    }

    /// A local error from an `io::Error`, with what was being done, e.g.
    /// `open /tmp/x`.
    pub(crate) fn local(what: impl std::fmt::Display, e: io::Error) -> Error {
        Error::Local {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: format!(
                "{what}: {}",
                strerror(e.raw_os_error().unwrap_or(libc::EIO))
            ),
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::Protocol {
            errno: libc::EPROTO,
            message: message.into(),
        }
    }
}

/// The largest errno Linux can report: the kernel returns errors as
/// -1..=-4095 (`MAX_ERRNO`), and no errno lies beyond.
pub(crate) const MAX_ERRNO: i32 = 4095;

/// Whether `errno` is an error number: 1 to [`MAX_ERRNO`]. A peer's errno
/// outside that range (0 "Success", a negative, a huge one) is a protocol
/// error and is reported as `EPROTO`.
pub(crate) fn is_errno(errno: i32) -> bool {
    (1..=MAX_ERRNO).contains(&errno)
}

/// The C library's text for an errno, without Rust's "(os error N)".
pub fn strerror(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
