//! A small, seeded, reproducible random number generator.
//!
//! recur takes all its randomness (initialisation, dropout, batching, sampling) from an [`Rng`]
//! passed explicitly. The stream for a seed is fixed by this crate (xoshiro256** seeded through
//! SplitMix64), not by a dependency's version, and the state is four `u64`s that a checkpoint can
//! store and restore exactly.

/// A seeded xoshiro256** generator.
///
/// ```
/// use recur::Rng;
/// let mut a = Rng::new(42);
/// let mut b = Rng::new(42);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let x = a.uniform(); // in [0, 1)
/// assert!((0.0..1.0).contains(&x));
/// let saved = a.state();
/// let next = a.next_u64();
/// assert_eq!(Rng::from_state(saved).next_u64(), next);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    /// The internal state, to save in a checkpoint.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// A generator continuing exactly from a saved state. An all-zero state (which xoshiro
    /// cannot leave) is replaced by the state of seed 0.
    pub fn from_state(s: [u64; 4]) -> Self {
        if s == [0; 4] { Rng::new(0) } else { Rng { s } }
    }

    /// An independent generator derived from this one's next output (for per-thread streams).
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box-Muller; two uniforms per call, nothing cached).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in [0, n).
    ///
    /// # Panics
    /// If `n` is 0 (the range is empty).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        // Lemire's multiply-shift; the bias is below 2^-64 * n, irrelevant here.
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Shuffles a slice in place (Fisher-Yates).
    pub fn shuffle<X>(&mut self, xs: &mut [X]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}

/// Counter-based draws, uniform in [0, 1) with 53 bits: each is a pure function of a `key` and
/// three counters `(a, b, c)`, `KeyedRow::new(key, a, b).uniform(c)`, so a value can be drawn
/// for any coordinate in any order, on any thread, and the result never depends on which draws
/// came before. The recurrent regularizers take their masks from it, keyed on one word drawn
/// per training step from the training [`Rng`] and on the layer, direction, time step and unit
/// (see [`crate::nn::RecurrentConfig::recurrent_dropout`]). Fixing the key and the first two
/// counters does the hashing they share once: each draw of a row costs one SplitMix64 round.
#[derive(Clone, Copy)]
pub(crate) struct KeyedRow {
    h: u64,
}

impl KeyedRow {
    /// Mixes each counter into the running hash through a full SplitMix64 round.
    fn round(h: u64, w: u64) -> u64 {
        let mut y = h ^ w.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        splitmix64(&mut y)
    }

    pub(crate) fn new(key: u64, a: u64, b: u64) -> Self {
        let mut x = key;
        let h = splitmix64(&mut x);
        KeyedRow {
            h: Self::round(Self::round(h, a), b),
        }
    }

    /// The draw of counter `c`.
    pub(crate) fn uniform(self, c: u64) -> f64 {
        (Self::round(self.h, c) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_and_normal_have_the_right_moments() {
        let mut r = Rng::new(1);
        let n = 200_000;
        let (mut s, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let x = r.normal();
            s += x;
            s2 += x * x;
        }
        assert!((s / n as f64).abs() < 0.01);
        assert!((s2 / n as f64 - 1.0).abs() < 0.02);
        let m: f64 = (0..n).map(|_| r.uniform()).sum::<f64>() / n as f64;
        assert!((m - 0.5).abs() < 0.005);
    }

    fn keyed_uniform(key: u64, a: u64, b: u64, c: u64) -> f64 {
        KeyedRow::new(key, a, b).uniform(c)
    }

    #[test]
    fn keyed_uniform_has_the_right_moments_and_changes_with_every_counter() {
        let n = 100_000u64;
        let m: f64 = (0..n).map(|k| keyed_uniform(5, 0, 0, k)).sum::<f64>() / n as f64;
        assert!((m - 0.5).abs() < 0.005, "mean {m}");
        let base = keyed_uniform(1, 2, 3, 4);
        for other in [
            keyed_uniform(0, 2, 3, 4),
            keyed_uniform(1, 0, 3, 4),
            keyed_uniform(1, 2, 0, 4),
            keyed_uniform(1, 2, 3, 0),
            keyed_uniform(1, 3, 2, 4),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn below_stays_in_range_and_hits_everything() {
        let mut r = Rng::new(3);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[r.below(7)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
