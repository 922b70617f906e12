//! SplitMix64 (Steele, Lea & Flood 2014): a tiny deterministic 64-bit generator.
//!
//! Integer arithmetic only (`no_std`, no float), so a seed gives the same sequence on every
//! platform. The certifier's attacks draw their random starts and square positions from it,
//! the trainer seeds its xoshiro256\*\* generator with it, and the test fixtures
//! (feature `testing`) draw their random weights from it. Changing any output for a given seed
//! changes reports and models: treat it as a breaking change.

/// SplitMix64 generator; the field is the whole state (the seed, at first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `[lo, hi]` (`next_u64() % (hi - lo + 1)`, so very slightly biased
    /// for huge ranges).
    ///
    /// # Panics
    /// If `hi < lo` (a zero-width range would divide by zero).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn pinned_sequence() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
