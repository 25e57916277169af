//! Event callbacks: LAUNCHED, PROGRESS, LOG and SHUTDOWN.
//!
//! Callbacks run on the thread that called the handle's operation, inside
//! that operation. SHUTDOWN callbacks run in reverse order of registration
//! (last registered, first called), so a layer registered on top of
//! another is told first. The others run in registration order.

use std::time::{Duration, Instant};

use crate::process::ExitStatus;

/// Something that happened on a handle.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A helper was started and completed the handshake.
    Launched { pid: u32 },
    /// Bytes done in the running transfer. `total` is `None` when the size
    /// is unknown (a pipe, a character device). Sent at most once per
    /// progress interval (default 100 ms), plus once when the transfer
    /// ends.
    Progress { done: u64, total: Option<u64> },
    /// Progress of a tree copy (`copy_in`, `copy_out`), for the whole
    /// tree: files and bytes done out of the totals the walk found. Sent
    /// to PROGRESS callbacks instead of [`Event::Progress`], under the
    /// same rate limit, and once when the copy ends.
    TreeProgress {
        files_done: u64,
        files_total: u64,
        bytes_done: u64,
        bytes_total: u64,
    },
    /// One line the helper wrote to stderr, without the newline.
    Log { line: &'a [u8] },
    /// The helper of a successful launch is gone: stopped gracefully,
    /// killed, or crashed. Exactly one per LAUNCHED. `status` is `None` when
    /// it could not be reaped.
    Shutdown {
        pid: u32,
        status: Option<ExitStatus>,
        graceful: bool,
    },
}

/// A set of event kinds, for filtering callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventMask(pub u64);

impl EventMask {
    pub const LAUNCHED: EventMask = EventMask(1 << 0);
    pub const PROGRESS: EventMask = EventMask(1 << 1);
    pub const LOG: EventMask = EventMask(1 << 2);
    pub const SHUTDOWN: EventMask = EventMask(1 << 3);
    pub const ALL: EventMask = EventMask(0xf);

    pub fn contains(self, other: EventMask) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for EventMask {
    type Output = EventMask;
    fn bitor(self, rhs: EventMask) -> EventMask {
        EventMask(self.0 | rhs.0)
    }
}

impl Event<'_> {
    pub fn mask(&self) -> EventMask {
        match self {
            Event::Launched { .. } => EventMask::LAUNCHED,
            Event::Progress { .. } | Event::TreeProgress { .. } => EventMask::PROGRESS,
            Event::Log { .. } => EventMask::LOG,
            Event::Shutdown { .. } => EventMask::SHUTDOWN,
        }
    }
}

/// A registered callback's id, for removing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallbackId(pub u32);

type Callback = Box<dyn FnMut(&Event<'_>) + Send>;

#[derive(Default)]
pub(crate) struct Events {
    callbacks: Vec<(CallbackId, EventMask, Callback)>,
    next_id: u32,
}

impl Events {
    pub fn add(&mut self, mask: EventMask, cb: Callback) -> CallbackId {
        let id = CallbackId(self.next_id);
        self.next_id += 1;
        self.callbacks.push((id, mask, cb));
        id
    }

    pub fn remove(&mut self, id: CallbackId) -> bool {
        let before = self.callbacks.len();
        self.callbacks.retain(|(i, _, _)| *i != id);
        self.callbacks.len() != before
    }

    pub fn wants(&self, mask: EventMask) -> bool {
        self.callbacks.iter().any(|(_, m, _)| m.contains(mask))
    }

    pub fn emit(&mut self, ev: &Event<'_>) {
        let mask = ev.mask();
        if mask == EventMask::SHUTDOWN {
            for (_, m, cb) in self.callbacks.iter_mut().rev() {
                if m.contains(mask) {
                    cb(ev);
                }
            }
        } else {
            for (_, m, cb) in self.callbacks.iter_mut() {
                if m.contains(mask) {
                    cb(ev);
                }
            }
        }
    }
}

/// Rate-limits PROGRESS events for one transfer.
pub(crate) struct Progress {
    done: u64,
    total: Option<u64>,
    interval: Duration,
    last: Option<Instant>,
    enabled: bool,
}

impl Progress {
    pub fn new(events: &Events, total: Option<u64>, interval: Duration) -> Progress {
        Progress {
            done: 0,
            total,
            interval,
            last: None,
            enabled: events.wants(EventMask::PROGRESS),
        }
    }

    pub fn set_total(&mut self, total: Option<u64>) {
        self.total = total;
    }

    /// Count `n` more bytes and emit an event if the interval has passed.
    pub fn add(&mut self, n: u64, events: &mut Events) {
        self.done += n;
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= self.interval)
        {
            self.last = Some(now);
            events.emit(&Event::Progress {
                done: self.done,
                total: self.total,
            });
        }
    }

    /// The last event of a transfer that completed.
    pub fn finish(&mut self, events: &mut Events) {
        if self.enabled {
            events.emit(&Event::Progress {
                done: self.done,
                total: self.total.or(Some(self.done)),
            });
        }
    }
}
