//! The stream checksum carried by END: XXH3-64 with seed 0 over every byte
//! of the stream, in order.

use xxhash_rust::xxh3::Xxh3;

/// Running checksum and length of one stream.
#[derive(Clone)]
pub struct StreamChecksum {
    hasher: Xxh3,
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
            hasher: Xxh3::new(),
            len: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
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
        self.hasher.digest()
    }

    /// Whether an END's fields match what was seen.
    pub fn matches(&self, len: u64, checksum: u64) -> bool {
        self.len == len && self.digest() == checksum
    }
}
