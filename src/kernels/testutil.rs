//! Helpers shared by the kernels' tests.

use crate::kernels::gemm::{GemmShape, gemm_reference};
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

/// `v` rounded to `T`.
pub fn rounded<T: Float>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// A product `C += A op(B)` to check a kernel on: `A` (`m x k`), `B` (`k x n`, or `n x k` read
/// transposed) and the starting `C` from [`values`], and the result of the plain triple loop.
pub struct Product {
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub c0: Vec<f64>,
    want: Vec<f64>,
    shape: String,
}

impl Product {
    pub fn new(m: usize, n: usize, k: usize, trans_b: bool) -> Self {
        let a = values(m as u64, m * k, 1.0);
        let b = values(n as u64 + 7, n * k, 1.0);
        let c0: Vec<f64> = values(k as u64 + 3, m * n, 1.0);
        let s = GemmShape {
            m,
            k,
            n,
            trans_a: false,
            trans_b,
        };
        let mut want = c0.clone();
        gemm_reference(s, 1.0, &a, &b, 1.0, &mut want);
        let shape = format!("{m}x{n}x{k}");
        Product {
            a,
            b,
            c0,
            want,
            shape,
        }
    }

    /// Asserts that `got`, the product computed in `T`, is within `tol` of the reference value
    /// by value.
    pub fn assert_matches<T: Float>(&self, got: &[T], tol: f64) {
        assert_eq!(
            got.len(),
            self.want.len(),
            "{} {}: lengths",
            T::DTYPE,
            self.shape
        );
        for (g, w) in got.iter().zip(&self.want) {
            let g = g.to_f64();
            assert!(
                (g - w).abs() < tol,
                "{} {}: {g} vs {w}",
                T::DTYPE,
                self.shape
            );
        }
    }
}

/// Unit `k` (unit `k % hidden` of row `k / hidden`) of a buffer whose rows are `N` gate blocks of
/// `hidden` values: its value in each block.
pub fn unit_gates<T: Copy, const N: usize>(buf: &[T], k: usize, hidden: usize) -> [T; N] {
    let at = k / hidden * N * hidden + k % hidden;
    std::array::from_fn(|q| buf[at + q * hidden])
}

/// Writes unit `k`'s value in each gate block (see [`unit_gates`]).
pub fn set_unit_gates<T, const N: usize>(buf: &mut [T], k: usize, hidden: usize, v: [T; N]) {
    let at = k / hidden * N * hidden + k % hidden;
    for (q, x) in v.into_iter().enumerate() {
        buf[at + q * hidden] = x;
    }
}

/// The tests `simd_matches_scalar_f32` and `simd_matches_scalar_f64`: the module's generic
/// `$check::<T>()`, which compares a kernel with its scalar version, in each precision.
macro_rules! simd_matches_scalar_in_both_precisions {
    ($check:ident) => {
        #[test]
        fn simd_matches_scalar_f32() {
            $check::<f32>();
        }

        #[test]
        fn simd_matches_scalar_f64() {
            $check::<f64>();
        }
    };
}
pub(crate) use simd_matches_scalar_in_both_precisions;
