//! Matrix products over contiguous row-major slices, on top of matrixmultiply.
//!
//! `C = alpha * op(A) op(B) + beta * C` where `op(X)` is `X` or `X^T`. A transposed operand is
//! the same buffer read with swapped strides, so no copy is made.
//!
//! The fused layers' products over all time steps run on [`super::gemm_nn`]'s kernel instead;
//! these serve the tape's general ops (`matmul`, `Linear`, the unfused cells).

/// Shape and transposition of one product: `op(A)` is `m x k`, `op(B)` is `k x n`, `C` is `m x n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    /// Rows of `op(A)` and of `C`.
    pub m: usize,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: usize,
    /// Columns of `op(B)` and of `C`.
    pub n: usize,
    /// `A` is stored `k x m` (row-major) and read transposed.
    pub trans_a: bool,
    /// `B` is stored `n x k` (row-major) and read transposed.
    pub trans_b: bool,
}

impl GemmShape {
    /// Row and column strides of `A` as stored.
    fn strides_a(&self) -> (isize, isize) {
        if self.trans_a {
            (1, self.m as isize)
        } else {
            (self.k as isize, 1)
        }
    }
    fn strides_b(&self) -> (isize, isize) {
        if self.trans_b {
            (1, self.k as isize)
        } else {
            (self.n as isize, 1)
        }
    }
    fn check(&self, a: usize, b: usize, c: usize) {
        // Checked products: a shape whose element count overflows must not pass as a small one.
        let need = |x: usize, y: usize| x.checked_mul(y).expect("gemm: shape overflows usize");
        assert!(
            a >= need(self.m, self.k) && b >= need(self.k, self.n) && c >= need(self.m, self.n),
            "gemm: buffers too small for {self:?} (a={a}, b={b}, c={c})"
        );
    }
}

/// Safe wrappers around one of matrixmultiply's products (`sgemm`, `dgemm`) for contiguous
/// row-major slices.
macro_rules! gemm_wrapper {
    ($(#[$doc:meta])* $name:ident, $t:ty, $mm:path) => {
        $(#[$doc])*
        pub fn $name(s: GemmShape, alpha: $t, a: &[$t], b: &[$t], beta: $t, c: &mut [$t]) {
            s.check(a.len(), b.len(), c.len());
            if s.m == 0 || s.n == 0 {
                return;
            }
            let (rsa, csa) = s.strides_a();
            let (rsb, csb) = s.strides_b();
            // SAFETY: `check` proved each buffer holds at least the m*k, k*n and m*n elements
            // that the strides above address (every index i*rs + j*cs stays below rows*cols),
            // the slices are valid for the call's duration, and `c` is uniquely borrowed so it
            // aliases neither input.
            unsafe {
                $mm(
                    s.m,
                    s.k,
                    s.n,
                    alpha,
                    a.as_ptr(),
                    rsa,
                    csa,
                    b.as_ptr(),
                    rsb,
                    csb,
                    beta,
                    c.as_mut_ptr(),
                    s.n as isize,
                    1,
                );
            }
        }
    };
}

gemm_wrapper!(
    /// `C = alpha * op(A) op(B) + beta * C` in f32. Panics if a buffer is shorter than the shape
    /// needs (callers validate shapes first; this is the last line of defence before raw
    /// pointers).
    sgemm,
    f32,
    matrixmultiply::sgemm
);
gemm_wrapper!(
    /// `C = alpha * op(A) op(B) + beta * C` in f64; see [`sgemm`].
    dgemm,
    f64,
    matrixmultiply::dgemm
);

/// The plain triple loop, for tests.
#[cfg(test)]
pub fn gemm_reference(s: GemmShape, alpha: f64, a: &[f64], b: &[f64], beta: f64, c: &mut [f64]) {
    for i in 0..s.m {
        for j in 0..s.n {
            let mut acc = 0.0;
            for p in 0..s.k {
                let av = if s.trans_a {
                    a[p * s.m + i]
                } else {
                    a[i * s.k + p]
                };
                let bv = if s.trans_b {
                    b[j * s.k + p]
                } else {
                    b[p * s.n + j]
                };
                acc += av * bv;
            }
            c[i * s.n + j] = alpha * acc + beta * c[i * s.n + j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// Runs `f` on a product of each transposition of an `m x k` by `k x n` shape, with random
    /// `A`, `B` and starting `C`.
    fn each_transposition(
        (m, k, n): (usize, usize, usize),
        seed: &mut u64,
        mut f: impl FnMut(GemmShape, &[f64], &[f64], &[f64]),
    ) {
        for ta in [false, true] {
            for tb in [false, true] {
                let s = GemmShape {
                    m,
                    k,
                    n,
                    trans_a: ta,
                    trans_b: tb,
                };
                let a: Vec<f64> = (0..m * k).map(|_| lcg(seed)).collect();
                let b: Vec<f64> = (0..k * n).map(|_| lcg(seed)).collect();
                let c0: Vec<f64> = (0..m * n).map(|_| lcg(seed)).collect();
                f(s, &a, &b, &c0);
            }
        }
    }

    #[test]
    fn gemm_matches_reference_for_every_transposition() {
        let mut seed = 7;
        for shape in [(1, 1, 1), (3, 5, 2), (17, 9, 33), (64, 3, 1)] {
            each_transposition(shape, &mut seed, |s, a, b, c0| {
                let mut want = c0.to_vec();
                gemm_reference(s, 0.7, a, b, 0.3, &mut want);
                let mut got = c0.to_vec();
                dgemm(s, 0.7, a, b, 0.3, &mut got);
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-12, "dgemm {s:?}");
                }
                let af: Vec<f32> = a.iter().map(|&x| x as f32).collect();
                let bf: Vec<f32> = b.iter().map(|&x| x as f32).collect();
                let mut gotf: Vec<f32> = c0.iter().map(|&x| x as f32).collect();
                sgemm(s, 0.7, &af, &bf, 0.3, &mut gotf);
                for (x, y) in gotf.iter().zip(&want) {
                    assert!((*x as f64 - y).abs() < 1e-4, "sgemm {s:?}");
                }
            });
        }
    }
}
