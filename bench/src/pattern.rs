//! The bulk payload: a pseudo-random stream with a prime period, so that a
//! lost, repeated or reordered chunk shows as a mismatch, checked with
//! `memcmp` at memory speed instead of a hash.

/// Bytes before the stream repeats: prime, so no power-of-two chunking aligns with it.
const PERIOD: usize = 1_048_573;
/// The most a single `expected` call returns.
pub const MAX_CHUNK: usize = 256 << 10;

pub struct Pattern {
    bytes: Vec<u8>,
}

impl Default for Pattern {
    fn default() -> Self {
        Self::new()
    }
}

impl Pattern {
    pub fn new() -> Self {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut bytes = Vec::with_capacity(PERIOD + MAX_CHUNK);
        while bytes.len() < PERIOD {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        bytes.truncate(PERIOD);
        let head = bytes[..MAX_CHUNK].to_vec();
        bytes.extend_from_slice(&head);
        Pattern { bytes }
    }

    /// The `len` bytes (at most MAX_CHUNK) of the stream at `offset`.
    pub fn at(&self, offset: u64, len: usize) -> &[u8] {
        assert!(len <= MAX_CHUNK);
        let start = (offset % PERIOD as u64) as usize;
        &self.bytes[start..start + len]
    }

    /// Whether `data` is the stream at `offset` (any length).
    pub fn matches(&self, offset: u64, data: &[u8]) -> bool {
        data.chunks(MAX_CHUNK)
            .enumerate()
            .all(|(i, c)| self.at(offset + (i * MAX_CHUNK) as u64, c.len()) == c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_shifts_and_wraps_around() {
        let p = Pattern::new();
        let whole: Vec<u8> = (0..8)
            .flat_map(|i| p.at(i * MAX_CHUNK as u64, MAX_CHUNK).to_vec())
            .collect();
        assert!(p.matches(0, &whole));
        assert!(p.matches(PERIOD as u64, &whole[..1000]));
        assert!(!p.matches(1, &whole[..1000]));
        assert!(!p.matches(0, &whole[8..1008]));
    }
}
