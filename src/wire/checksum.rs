//! The stream checksum carried by END: XXH3-64 with seed 0 over every byte
//! of the stream, in order.
//!
//! The implementation is twox-hash's, which picks AVX2 or SSE2 at run time:
//! the stream path hashes every byte on both sides, so the checksum's speed
//! is part of the transfer's.

use std::hash::Hasher as _;

use twox_hash::XxHash3_64;

/// Running checksum and length of one stream.
#[derive(Clone)]
pub struct StreamChecksum {
    hasher: XxHash3_64,
    len: u64,
}

impl Default for StreamChecksum {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamChecksum {
    pub fn new() -> Self {
        StreamChecksum {
            hasher: XxHash3_64::new(),
            len: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        // The benchmark builds a copy of barge with this feature to measure
        // what the checksum costs; both ends then send and expect the
        // checksum of nothing. Never enabled otherwise.
        #[cfg(not(feature = "bench-skip-checksum"))]
        self.hasher.write(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum of the bytes seen so far.
    pub fn digest(&self) -> u64 {
        self.hasher.finish()
    }

    /// Whether an END's fields match what was seen.
    pub fn matches(&self, len: u64, checksum: u64) -> bool {
        self.len == len && self.digest() == checksum
    }
}
