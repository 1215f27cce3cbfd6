//! Helpers shared by the kernels' tests.

use crate::tensor::Float;

/// The hidden sizes every kernel is tested at: below, at and around the vector widths.
#[cfg(not(miri))]
pub const HIDDEN_SIZES: [usize; 6] = [1, 7, 8, 9, 33, 64];
/// Under Miri (an interpreter, thousands of times slower): one and two vectors with tails.
#[cfg(miri)]
pub const HIDDEN_SIZES: [usize; 5] = [1, 7, 8, 9, 17];

/// `n` pseudo-random values in `[-scale, scale]`.
pub fn values<T: Float>(seed: u64, n: usize, scale: f64) -> Vec<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            T::from_f64((2.0 * u - 1.0) * scale)
        })
        .collect()
}

/// Asserts `|got - want| <= tol * (1 + |want|)` element by element.
pub fn assert_close<T: Float>(got: &[T], want: &[T], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f64(), w.to_f64());
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{k}]: got {g}, want {w}"
        );
    }
}

/// The tolerance for comparing a kernel with its scalar version in `T`.
pub fn tol<T: Float>() -> f64 {
    T::EPSILON.to_f64() * 16.0
}
