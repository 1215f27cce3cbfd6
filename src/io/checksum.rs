//! A 64-bit checksum (FNV-1a) for checkpoint tensors and input fingerprints.
//!
//! FNV-1a detects the accidental damage a file meets on disk or in transit (flipped bits,
//! truncated or swapped blocks); it is not a cryptographic hash and does not protect against
//! deliberate tampering.
//!
//! ```
//! use recur::io::checksum::{Fnv64, fingerprint};
//!
//! let mut h = Fnv64::new();
//! h.update(b"hello ");
//! h.update(b"world");
//! assert_eq!(h.finish(), fingerprint(b"hello world"));
//! assert_ne!(fingerprint(b"hello world"), fingerprint(b"hello worle"));
//! ```

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// An incremental FNV-1a 64-bit hasher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv64 {
    /// A hasher with nothing fed yet.
    pub fn new() -> Self {
        Fnv64(OFFSET)
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(PRIME);
        }
        self.0 = h;
    }

    /// Feeds a length-prefixed field, so that ("ab", "c") and ("a", "bc") hash differently.
    pub fn field(&mut self, bytes: &[u8]) {
        self.update(&(bytes.len() as u64).to_le_bytes());
        self.update(bytes);
    }

    /// The hash of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The FNV-1a 64-bit hash of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_test_vectors() {
        // FNV-1a 64 reference values (Fowler, Noll, Vo).
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fingerprint(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fields_are_delimited() {
        let mut a = Fnv64::new();
        a.field(b"ab");
        a.field(b"c");
        let mut b = Fnv64::new();
        b.field(b"a");
        b.field(b"bc");
        assert_ne!(a.finish(), b.finish());
    }
}
