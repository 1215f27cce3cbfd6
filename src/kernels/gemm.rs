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
    /// Panics unless `a` and `b` values are enough for `op(A)` and `op(B)` (`C` is checked
    /// against the rows a call computes).
    fn check_inputs(&self, a: usize, b: usize) {
        // Checked products: a shape whose element count overflows must not pass as a small one.
        let need = |x: usize, y: usize| x.checked_mul(y).expect("gemm: shape overflows usize");
        assert!(
            a >= need(self.m, self.k) && b >= need(self.k, self.n),
            "gemm: buffers too small for {self:?} (a={a}, b={b})"
        );
    }
}

/// Rows of `C` that matrixmultiply computes as one block (its `MC`, a multiple of its register
/// tiles' rows): a product cut into row ranges starting at multiples of it gives every row the
/// values of the whole product.
pub const ROW_BLOCK: usize = 64;

/// Safe wrappers around one of matrixmultiply's products (`sgemm`, `dgemm`) for contiguous
/// row-major slices.
macro_rules! gemm_wrapper {
    ($(#[$doc:meta])* $name:ident, $(#[$rows_doc:meta])* $rows_name:ident, $t:ty, $mm:path) => {
        $(#[$doc])*
        pub fn $name(s: GemmShape, alpha: $t, a: &[$t], b: &[$t], beta: $t, c: &mut [$t]) {
            $rows_name(s, 0..s.m, alpha, a, b, beta, c);
        }

        $(#[$rows_doc])*
        pub fn $rows_name(
            s: GemmShape,
            rows: std::ops::Range<usize>,
            alpha: $t,
            a: &[$t],
            b: &[$t],
            beta: $t,
            c: &mut [$t],
        ) {
            s.check_inputs(a.len(), b.len());
            let need = rows.len().checked_mul(s.n).expect("gemm: shape overflows usize");
            assert!(
                rows.start <= rows.end && rows.end <= s.m && c.len() >= need,
                "gemm: rows {rows:?} of {s:?} do not fit (c={})",
                c.len()
            );
            if rows.is_empty() || s.n == 0 {
                return;
            }
            let (rsa, csa) = s.strides_a();
            let (rsb, csb) = s.strides_b();
            // SAFETY: `check_inputs` proved `a` and `b` hold the m*k and k*n elements that the strides
            // above address (every index i*rs + j*cs stays below rows*cols); row `i` of op(A)
            // starts at `i * rsa`, so from row `rows.start` on the call addresses rows
            // `rows.start..rows.end < m` only; the assert proved `c` holds their
            // `rows.len() * n` values. The slices are valid for the call's duration, and `c` is
            // uniquely borrowed so it aliases neither input.
            unsafe {
                $mm(
                    rows.len(),
                    s.k,
                    s.n,
                    alpha,
                    a.as_ptr().offset(rows.start as isize * rsa),
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
    /// Rows `rows` of [`sgemm`]'s product: `C[rows] = alpha * op(A)[rows] op(B) + beta *
    /// C[rows]`, with `c` holding just those rows (`rows.len() x n`). Where `rows.start` is a
    /// multiple of [`ROW_BLOCK`], each row gets the values the whole product gives it (the
    /// same blocks and register tiles over the same sums), so a product split there between
    /// threads equals the unsplit one bit for bit.
    sgemm_rows,
    f32,
    matrixmultiply::sgemm
);
gemm_wrapper!(
    /// `C = alpha * op(A) op(B) + beta * C` in f64; see [`sgemm`].
    dgemm,
    /// Rows `rows` of [`dgemm`]'s product; see [`sgemm_rows`].
    dgemm_rows,
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

    /// A split of `C`'s rows at a multiple of [`ROW_BLOCK`] gives each row the values of the
    /// whole product, bit for bit, in every transposition (the halves of a product run on two
    /// threads rely on it), for shapes past matrixmultiply's cache blocks in every dimension
    /// and ragged against its tiles.
    #[test]
    fn rows_of_a_product_equal_the_whole_bit_for_bit() {
        let mut seed = 11;
        // Under Miri one shape past a block of rows, small in k and n.
        let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(1, 3, 2), (70, 3, 5)]
        } else {
            &[(1, 3, 2), (86, 300, 86), (150, 700, 129), (203, 33, 1100)]
        };
        for &shape in shapes {
            each_transposition(shape, &mut seed, |s, a, b, c0| {
                let (m, n) = (s.m, s.n);
                let af: Vec<f32> = a.iter().map(|&x| x as f32).collect();
                let bf: Vec<f32> = b.iter().map(|&x| x as f32).collect();
                let cf: Vec<f32> = c0.iter().map(|&x| x as f32).collect();
                let (mut whole, mut wholef) = (c0.to_vec(), cf.clone());
                dgemm(s, 0.7, a, b, 0.3, &mut whole);
                sgemm(s, 0.7, &af, &bf, 0.3, &mut wholef);
                for cut in (0..=m).step_by(ROW_BLOCK).chain([m]) {
                    let (mut parts, mut partsf) = (c0.to_vec(), cf.clone());
                    let (top, bottom) = parts.split_at_mut(cut * n);
                    dgemm_rows(s, 0..cut, 0.7, a, b, 0.3, top);
                    dgemm_rows(s, cut..m, 0.7, a, b, 0.3, bottom);
                    let (top, bottom) = partsf.split_at_mut(cut * n);
                    sgemm_rows(s, 0..cut, 0.7, &af, &bf, 0.3, top);
                    sgemm_rows(s, cut..m, 0.7, &af, &bf, 0.3, bottom);
                    assert_eq!(parts, whole, "dgemm {s:?} cut at row {cut}");
                    assert_eq!(partsf, wholef, "sgemm {s:?} cut at row {cut}");
                }
            });
        }
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn rows_past_the_product_are_refused() {
        let s = GemmShape {
            m: 4,
            k: 2,
            n: 3,
            trans_a: false,
            trans_b: false,
        };
        let mut c = [0.0; 6];
        dgemm_rows(s, 3..5, 1.0, &[1.0; 8], &[1.0; 6], 0.0, &mut c);
    }
}
