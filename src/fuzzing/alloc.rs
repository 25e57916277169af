//! A counting global allocator for the fuzz binaries and the replay test.
//! It turns an allocation the peer should not be able to cause into a
//! crash the fuzzer reports, with a message saying which cap was crossed.
//!
//! The caps:
//! - [`MAX_SINGLE_ALLOC`], 16 MiB for one allocation. The largest buffer
//!   the protocol needs is one frame: a DATA payload of at most
//!   [`crate::wire::MAX_CHUNK`] (4 MiB) plus its header, and a `Vec` that
//!   grew by doubling to hold it may have twice that. Anything larger is a
//!   size the peer chose without a bound.
//! - [`MAX_LIVE_BYTES`], 256 MiB live in the whole process. A fuzz input is
//!   at most a few hundred KiB, and an execution holds a few frame buffers;
//!   more live memory than this is an amplification (or a leak across
//!   executions).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Largest single allocation allowed.
pub const MAX_SINGLE_ALLOC: usize = 16 << 20;
/// Most bytes live at once.
pub const MAX_LIVE_BYTES: usize = 256 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// `#[global_allocator] static A: CappedAlloc = CappedAlloc;`
pub struct CappedAlloc;

impl CappedAlloc {
    /// Bytes live now.
    pub fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }
}

/// Write the message and abort, without allocating (this runs inside the
/// allocator).
fn over_cap(what: &str, size: usize, cap: usize) -> ! {
    let mut buf = [0u8; 256];
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    };
    let num = |mut v: usize, out: &mut [u8; 24]| -> usize {
        let mut i = out.len();
        loop {
            i -= 1;
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                return i;
            }
        }
    };
    let mut digits = [0u8; 24];
    put(b"\n==barge-fuzz== ALLOCATION OVER CAP: ");
    put(what.as_bytes());
    put(b" of ");
    let i = num(size, &mut digits);
    put(&digits[i..]);
    put(b" bytes exceeds the cap of ");
    let i = num(cap, &mut digits);
    put(&digits[i..]);
    put(b" bytes\n");
    // SAFETY: writes our own stack buffer to fd 2; abort takes no pointers.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::abort();
    }
}

fn charge(size: usize) {
    if size > MAX_SINGLE_ALLOC {
        over_cap("a single allocation", size, MAX_SINGLE_ALLOC);
    }
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    if live > MAX_LIVE_BYTES {
        over_cap("live memory", live, MAX_LIVE_BYTES);
    }
}

// SAFETY: every call forwards to System with the caller's layout; the
// counting only adds checks before it.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            charge(new_size - layout.size());
            if new_size > MAX_SINGLE_ALLOC {
                over_cap("a single allocation", new_size, MAX_SINGLE_ALLOC);
            }
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is System's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            // The old block stays: undo the change.
            if new_size > layout.size() {
                LIVE.fetch_sub(new_size - layout.size(), Ordering::Relaxed);
            } else {
                LIVE.fetch_add(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}
