//! barge: a file-transfer client library with a C ABI.
//!
//! A [`Handle`] starts a helper process, `barge-helper`, and runs chunked
//! uploads and downloads with it over barge's wire protocol
//! (`docs/PROTOCOL.md`). Any thread, or a signal handler, can cancel the
//! running operation through a [`Canceller`]. The helper survives the cancel
//! and the handle stays usable.
//!
//! Where things live:
//! - `wire`: the protocol codec, with no I/O.
//! - `cancel`: the cancel flag and the eventfd that wakes every wait.
//! - `process`: spawning the helper in its own process group, signalling,
//!   reaping and shutdown escalation.
//! - `client`: the [`Handle`] and the transfer loops.
//! - `server`: the helper's side, run by the `barge-helper` binary.
//! - `atomic_file`: files that appear only when complete, for both sides.

pub mod atomic_file;
pub mod cancel;
pub mod client;
mod discard;
mod error;
pub mod ffi;
mod file_sink;
#[doc(hidden)]
pub mod fuzzing;
mod helper_path;
pub mod partial;
pub mod process;
pub mod server;
mod sys;
mod treefs;
pub mod wire;

pub use cancel::Canceller;
pub use client::{
    default_helper, CallbackId, DirEntry, Event, EventMask, ExitStatus, Handle, RemoteStat,
};
pub use error::{strerror, Error, PathError, Result};
