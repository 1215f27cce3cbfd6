//! Matrix products over contiguous row-major slices, on top of matrixmultiply.
//!
//! `C = alpha * op(A) op(B) + beta * C` where `op(X)` is `X` or `X^T`. A transposed operand is
//! the same buffer read with swapped strides, so no copy is made.
//!
//! A product may also run on two threads split by columns of `C` ([`sgemm_cols_join`]): each
//! side writes its own columns of every row, so neither needs `C` whole, and each reads only its
//! columns of `B`. matrixmultiply computes every value of `C` from its row of `A` and its column
//! of `B` alone, blocked over `k` the same way whatever the columns around it, so the split
//! product's values are the whole product's, bit for bit (tested below).

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

/// A raw pointer that may cross to the other side of a `rayon::join`.
#[derive(Clone, Copy)]
struct SendPtr<P>(P);
// SAFETY: only the column-split products below send these pointers, to the two sides of a
// join, which read `A` and `B` (shared, never written) and write disjoint columns of `C`.
unsafe impl<P> Send for SendPtr<P> {}
// SAFETY: as above.
unsafe impl<P> Sync for SendPtr<P> {}

/// Runs `a` here and `b` beside it on rayon's pool; under Miri, whose aliasing checks rayon's
/// work-stealing deques (crossbeam-epoch) do not pass, on a plain second thread, so that Miri
/// still checks the two sides' accesses against each other.
fn join_halves(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
    #[cfg(not(miri))]
    rayon::join(a, b);
    #[cfg(miri)]
    std::thread::scope(|s| {
        s.spawn(b);
        a();
    });
}

/// Safe wrappers around one of matrixmultiply's products (`sgemm`, `dgemm`) for contiguous
/// row-major slices: `$name` on the calling thread, `$split` on two threads split by columns.
macro_rules! gemm_wrapper {
    ($(#[$doc:meta])* $name:ident, $(#[$sdoc:meta])* $split:ident, $t:ty, $mm:path) => {
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

        $(#[$sdoc])*
        pub fn $split(
            s: GemmShape,
            alpha: $t,
            a: &[$t],
            b: &[$t],
            beta: $t,
            c: &mut [$t],
            split: usize,
        ) {
            s.check(a.len(), b.len(), c.len());
            assert!(split <= s.n, "gemm: split {split} past the {} columns", s.n);
            if s.m == 0 || s.n == 0 {
                return;
            }
            let (rsa, csa) = s.strides_a();
            let (rsb, csb) = s.strides_b();
            let (a_ptr, b_ptr, c_ptr) = (
                SendPtr(a.as_ptr()),
                SendPtr(b.as_ptr()),
                SendPtr(c.as_mut_ptr()),
            );
            // Columns `j0..j1` of C: op(B)'s columns from the j0-th, C's rows `n` apart.
            let cols = |j0: usize, j1: usize| {
                if j0 == j1 {
                    return;
                }
                let (a_ptr, b_ptr, c_ptr) = (a_ptr, b_ptr, c_ptr);
                // SAFETY: as in the whole product: `check` proved the buffers hold what the
                // strides address, and a block of columns `j0..j1` (j1 <= n) addresses a subset
                // of it (B's indices i*rsb + j*csb and C's i*n + j for j0 <= j < j1). `a` and `b`
                // are only read, on both sides; the two sides write C's columns below and from
                // `split` respectively, disjoint elements of the uniquely borrowed `c`, which
                // both calls finish with before `join` returns.
                unsafe {
                    $mm(
                        s.m,
                        s.k,
                        j1 - j0,
                        alpha,
                        a_ptr.0,
                        rsa,
                        csa,
                        b_ptr.0.offset(j0 as isize * csb),
                        rsb,
                        csb,
                        beta,
                        c_ptr.0.add(j0),
                        s.n as isize,
                        1,
                    );
                }
            };
            join_halves(|| cols(0, split), || cols(split, s.n));
        }
    };
}

gemm_wrapper!(
    /// `C = alpha * op(A) op(B) + beta * C` in f32. Panics if a buffer is shorter than the shape
    /// needs (callers validate shapes first; this is the last line of defence before raw
    /// pointers).
    sgemm,
    /// [`sgemm`] on the two sides of a `rayon::join`: one computes the columns of `C` below
    /// `split`, the other the rest. The values are [`sgemm`]'s (see the module's notes).
    /// Panics as [`sgemm`] does, or if `split > n`.
    sgemm_cols_join,
    f32,
    matrixmultiply::sgemm
);
gemm_wrapper!(
    /// `C = alpha * op(A) op(B) + beta * C` in f64; see [`sgemm`].
    dgemm,
    /// [`dgemm`] split by columns between two threads; see [`sgemm_cols_join`].
    dgemm_cols_join,
    f64,
    matrixmultiply::dgemm
);

/// The plain triple loop, for tests.
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
    fn a_product_split_by_columns_equals_the_whole_bit_for_bit() {
        let mut seed = 11;
        // k past matrixmultiply's blocks over k, splits on and off its panels' edges (under
        // Miri, small sizes only).
        let cases: &[((usize, usize, usize), usize)] = if cfg!(miri) {
            &[((5, 3, 7), 3), ((3, 2, 4), 0)]
        } else {
            &[
                ((5, 3, 7), 3),
                ((37, 300, 70), 16),
                ((64, 40, 96), 48),
                ((9, 9, 9), 0),
            ]
        };
        for &(shape, split) in cases {
            each_transposition(shape, &mut seed, |s, a, b, c0| {
                let (mut whole, mut halves) = (c0.to_vec(), c0.to_vec());
                dgemm(s, 0.7, a, b, 0.3, &mut whole);
                dgemm_cols_join(s, 0.7, a, b, 0.3, &mut halves, split);
                assert_eq!(whole, halves, "dgemm {s:?} split at {split}");
                let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
                let (af, bf) = (f(a), f(b));
                let (mut whole, mut halves) = (f(c0), f(c0));
                sgemm(s, 0.7, &af, &bf, 0.3, &mut whole);
                sgemm_cols_join(s, 0.7, &af, &bf, 0.3, &mut halves, split);
                assert_eq!(whole, halves, "sgemm {s:?} split at {split}");
            });
        }
    }

    #[test]
    #[should_panic(expected = "split 8 past the 7 columns")]
    fn a_split_past_the_last_column_is_refused() {
        let s = GemmShape {
            m: 2,
            k: 2,
            n: 7,
            trans_a: false,
            trans_b: false,
        };
        sgemm_cols_join(s, 1.0, &[0.0; 4], &[0.0; 14], 0.0, &mut [0.0; 14], 8);
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
