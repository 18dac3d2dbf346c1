//! A stable hash for tokens that must not change between builds or machines (chunk and
//! insert-deduplication tokens): 128-bit FNV-1a.

/// A stable 128-bit FNV-1a hash.
#[derive(Debug, Clone, Copy)]
pub struct Fnv128(pub u128);

impl Default for Fnv128 {
    fn default() -> Self {
        Fnv128::new()
    }
}

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    /// The hash of nothing.
    pub fn new() -> Self {
        Fnv128(Self::OFFSET)
    }

    /// Hashes `b` in.
    pub fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u128::from(x);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// Hashes a string in, its length first (so "ab","c" and "a","bc" differ).
    pub fn str(&mut self, s: &str) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s.as_bytes());
    }

    /// Hashes a number in (little endian).
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}
