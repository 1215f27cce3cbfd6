//! The per-timestep recurrent product of a batch of one row, over `W_hh` as stored.
//!
//! With one row, the product is a matrix-vector product whose cost is reading the matrix, in
//! forward and again in backward. Packing it ([`super::gemm_nn`]) costs a pass of its own per
//! sequence (the transposed packing for forward is the slower one), and a second copy for
//! backward; the packed single-row tile then reads it faster from L2 than these kernels do,
//! so the fused layers pack a `W_hh` that stays in L2 and read a larger one, which streams
//! from L3 at every step either way, from one aligned copy of `W_hh` (`[G*H, H]`, PyTorch's
//! layout) that serves both directions:
//!
//! - forward, `y += W h`: each output is the dot product of a row of `W` with `h`
//!   ([`gemv_rows_acc`]);
//! - backward, `dh += dG W`: each output is a column of `W` weighted by `dG`, accumulated row
//!   by row of `W`, which streams through memory in order ([`gemv_cols_acc`]).
//!
//! Either way an output's value never depends on which other outputs share its call, so a
//! product split between threads (by rows in forward, by columns in backward) is bit-identical
//! to the whole one.

// Register tiles are fixed-size arrays indexed by row and accumulator: clearer than iterators.
#![allow(clippy::needless_range_loop)]

use super::aligned::AlignedBuf;
use super::simd::SimdFloat;
use super::sweep::Sweep;

/// A row-major `rows x cols` matrix copied onto a cache-line boundary ([`AlignedBuf`]).
#[derive(Debug, Default)]
pub struct AlignedMatrix<T> {
    rows: usize,
    cols: usize,
    buf: AlignedBuf<T>,
}

impl<T: SimdFloat> AlignedMatrix<T> {
    /// An empty matrix (0 x 0) that will reuse `buf`'s memory (its contents do not matter).
    pub fn from_buffer(buf: Vec<T>) -> Self {
        AlignedMatrix {
            rows: 0,
            cols: 0,
            buf: AlignedBuf::from_buffer(buf),
        }
    }

    /// The matrix's memory, for reuse.
    pub fn into_buffer(self) -> Vec<T> {
        self.buf.into_buffer()
    }

    /// The length of a buffer that holds a `rows x cols` matrix with room to align it, so a
    /// buffer for [`AlignedMatrix::from_buffer`] can be sized to need no growth. Panics if it
    /// overflows `usize`.
    pub fn buffer_len(rows: usize, cols: usize) -> usize {
        let len = rows
            .checked_mul(cols)
            .expect("AlignedMatrix: size overflows usize");
        AlignedBuf::<T>::buffer_len(len)
    }

    /// Copies `w`, a row-major `rows x cols` matrix. Panics if `w` is shorter than that.
    pub fn copy_from(&mut self, w: &[T], rows: usize, cols: usize) {
        let len = rows
            .checked_mul(cols)
            .expect("AlignedMatrix: size overflows usize");
        assert!(w.len() >= len, "AlignedMatrix::copy_from: buffer too small");
        self.buf.resize(len);
        self.buf.values_mut().copy_from_slice(&w[..len]);
        (self.rows, self.cols) = (rows, cols);
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The values, row-major.
    pub fn values(&self) -> &[T] {
        self.buf.values()
    }
}

/// `y[j - rows.start] += W[j] . x` for the rows `j` of `rows`: `y += W x` over those rows, `x`
/// of `W.cols()` values.
///
/// Rows go four at a time, each with two accumulators of `LANES` values (alternate vectors of
/// `k`), reduced in a fixed order; a row's arithmetic is the same in whatever tile it falls,
/// and in either order of the rows (`sweep`).
///
/// Panics if `rows` ends past `W.rows()`, `x` is shorter than a row or `y` than `rows`.
pub fn gemv_rows_acc<T: SimdFloat + std::ops::AddAssign>(
    w: &AlignedMatrix<T>,
    x: &[T],
    y: &mut [T],
    rows: std::ops::Range<usize>,
    sweep: Sweep,
) {
    assert!(
        rows.start <= rows.end && rows.end <= w.rows && x.len() >= w.cols && y.len() >= rows.len(),
        "gemv_rows_acc: rows {rows:?} of a {}x{} matrix do not fit x ({}) or y ({})",
        w.rows,
        w.cols,
        x.len(),
        y.len()
    );
    if sweep == Sweep::Descending {
        let mut j = rows.end;
        while j >= rows.start + DOT_ROWS {
            j -= DOT_ROWS;
            dot_tile::<T, DOT_ROWS>(w, x, j, &mut y[j - rows.start..]);
        }
        while j > rows.start {
            j -= 1;
            dot_tile::<T, 1>(w, x, j, &mut y[j - rows.start..]);
        }
        return;
    }
    let mut j = rows.start;
    while j + DOT_ROWS <= rows.end {
        dot_tile::<T, DOT_ROWS>(w, x, j, &mut y[j - rows.start..]);
        j += DOT_ROWS;
    }
    while j < rows.end {
        dot_tile::<T, 1>(w, x, j, &mut y[j - rows.start..]);
        j += 1;
    }
}

/// Rows of `W` per tile of [`gemv_rows_acc`]: 4 rows of 2 accumulators each are 8 vectors, 8
/// of AVX-512's 32 registers but 16 of AVX2's 16 (an `f32x16` is two 256-bit registers there),
/// which spill; 2 rows fit.
const DOT_ROWS: usize = if cfg!(target_feature = "avx512f") {
    4
} else {
    2
};

/// `y[r] += W[j + r] . x` for `r < R`.
#[inline(always)]
fn dot_tile<T: SimdFloat + std::ops::AddAssign, const R: usize>(
    w: &AlignedMatrix<T>,
    x: &[T],
    j: usize,
    y: &mut [T],
) {
    let (k, l) = (w.cols, T::LANES);
    let values = w.values();
    assert!((j + R) * k <= values.len() && x.len() >= k && y.len() >= R);
    let (wp, xp) = (values.as_ptr(), x.as_ptr());
    // Row `j + r` is `values[(j + r) k..(j + r + 1) k]` (asserted above): every load below
    // reads `LANES` values at `p < k` with `p + LANES <= k`.
    let zero = T::splat(T::default());
    let mut acc = [[zero; 2]; R];
    let mut p = 0;
    while p + 2 * l <= k {
        for a in 0..2 {
            // SAFETY: `p + (a + 1) LANES <= k <= x.len()`.
            let xv = unsafe { T::load_ptr(xp.add(p + a * l)) };
            for r in 0..R {
                // SAFETY: `(j + r) k + p + (a + 1) LANES <= (j + r + 1) k <= values.len()`.
                let wv = unsafe { T::load_ptr(wp.add((j + r) * k + p + a * l)) };
                acc[r][a] = T::mul_add(xv, wv, acc[r][a]);
            }
        }
        p += 2 * l;
    }
    if p + l <= k {
        // SAFETY: `p + LANES <= k`, as above.
        let xv = unsafe { T::load_ptr(xp.add(p)) };
        for r in 0..R {
            // SAFETY: as above.
            let wv = unsafe { T::load_ptr(wp.add((j + r) * k + p)) };
            acc[r][0] = T::mul_add(xv, wv, acc[r][0]);
        }
        p += l;
    }
    if p < k {
        // The ragged end of the rows, zero-padded: the padding adds exact zeros.
        let xv = T::load_n(&x[p..k]);
        for r in 0..R {
            let row = (j + r) * k;
            acc[r][1] = T::mul_add(xv, T::load_n(&values[row + p..row + k]), acc[r][1]);
        }
    }
    for r in 0..R {
        y[r] += T::reduce_add(acc[r][0] + acc[r][1]);
    }
}

/// Vectors of columns per block of [`gemv_cols_acc`]: 16 accumulators, which with a broadcast
/// and the loads fit AVX-512's 32 vector registers; without AVX-512 an `f32x16` takes two of
/// the 16 registers, and 6 accumulators (12 registers) leave room for the broadcast and a load.
const COL_VECTORS: usize = if cfg!(target_feature = "avx512f") {
    16
} else {
    6
};

/// `y[j - cols.start] += sum_p x[p] W[p][j]` for the columns `j` of `cols`: `y += x W` over those
/// columns, `x` of `W.rows()` values.
///
/// Each value accumulates its terms by fused multiply-adds in the order `p = 0, 1, ...`, as the
/// packed kernel's single-row tile does, in blocks of up to 16 vectors of columns held in
/// registers while `W` streams past row by row.
///
/// Panics if `cols` ends past `W.cols()`, `x` is shorter than a column or `y` than `cols`.
pub fn gemv_cols_acc<T: SimdFloat>(
    x: &[T],
    w: &AlignedMatrix<T>,
    y: &mut [T],
    cols: std::ops::Range<usize>,
) {
    assert!(
        cols.start <= cols.end && cols.end <= w.cols && x.len() >= w.rows && y.len() >= cols.len(),
        "gemv_cols_acc: columns {cols:?} of a {}x{} matrix do not fit x ({}) or y ({})",
        w.rows,
        w.cols,
        x.len(),
        y.len()
    );
    let l = T::LANES;
    let mut j = cols.start;
    let y = &mut y[..cols.len()];
    while j + COL_VECTORS * l <= cols.end {
        axpy_block::<T, COL_VECTORS>(x, w, j, &mut y[j - cols.start..]);
        j += COL_VECTORS * l;
    }
    while j + 4 * l <= cols.end {
        axpy_block::<T, 4>(x, w, j, &mut y[j - cols.start..]);
        j += 4 * l;
    }
    while j + l <= cols.end {
        axpy_block::<T, 1>(x, w, j, &mut y[j - cols.start..]);
        j += l;
    }
    if j < cols.end {
        axpy_tail(x, w, j..cols.end, &mut y[j - cols.start..]);
    }
}

/// `y[c] += sum_p x[p] W[p][j + c]` for `c < V LANES`.
#[inline(always)]
fn axpy_block<T: SimdFloat, const V: usize>(x: &[T], w: &AlignedMatrix<T>, j: usize, y: &mut [T]) {
    let (k, n, l) = (w.rows, w.cols, T::LANES);
    let values = w.values();
    assert!(j + V * l <= n && values.len() >= k * n && x.len() >= k && y.len() >= V * l);
    let (wp, yp) = (values.as_ptr(), y.as_mut_ptr());
    // SAFETY: vector `v < V` of `y` is `y[v LANES..(v + 1) LANES]`, within `y` (asserted).
    let mut acc: [T::V; V] = std::array::from_fn(|v| unsafe { T::load_ptr(yp.add(v * l)) });
    for (p, &xp) in x[..k].iter().enumerate() {
        let xv = T::splat(xp);
        for (v, a) in acc.iter_mut().enumerate() {
            // SAFETY: `p n + j + (v + 1) LANES <= p n + n <= k n <= values.len()` (asserted).
            let wv = unsafe { T::load_ptr(wp.add(p * n + j + v * l)) };
            *a = T::mul_add(xv, wv, *a);
        }
    }
    for (v, a) in acc.into_iter().enumerate() {
        // SAFETY: as for the loads of `y`.
        unsafe { T::store_ptr(a, yp.add(v * l)) };
    }
}

/// [`axpy_block`] for the last columns `cols`, fewer than a vector: zero-padded loads, the
/// padding's lanes discarded.
#[cold]
#[inline(never)]
fn axpy_tail<T: SimdFloat>(
    x: &[T],
    w: &AlignedMatrix<T>,
    cols: std::ops::Range<usize>,
    y: &mut [T],
) {
    let (k, n) = (w.rows, w.cols);
    let values = w.values();
    let width = cols.len();
    let mut acc = T::load_n(&y[..width]);
    for (p, &xp) in x[..k].iter().enumerate() {
        let row = &values[p * n..(p + 1) * n];
        acc = T::mul_add(T::splat(xp), T::load_n(&row[cols.clone()]), acc);
    }
    T::store_n(acc, &mut y[..width]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::aligned::ALIGN;
    use crate::kernels::testutil::values;
    use crate::tensor::Float;

    fn matrix<T: Float>(rows: usize, cols: usize, seed: u64) -> (Vec<T>, AlignedMatrix<T>) {
        let w: Vec<T> = values(seed, rows * cols, 1.0);
        let mut m = AlignedMatrix::from_buffer(Vec::new());
        m.copy_from(&w, rows, cols);
        (w, m)
    }

    /// Shapes (rows, cols): ragged in both directions, a single vector, whole blocks of
    /// columns (f32: 256 per block of 16 vectors) with a tail.
    const SHAPES: [(usize, usize); 7] = [
        (1, 1),
        (3, 5),
        (7, 16),
        (9, 33),
        (5, 70),
        (6, 300),
        (13, 271),
    ];

    /// Checks one kernel against a scalar sum in f64 on every shape: the outputs are the rows
    /// of `W` (`y += W x`, [`gemv_rows_acc`]) or, without `by_rows`, its columns (`y += x W`,
    /// [`gemv_cols_acc`]).
    fn matches_scalar<T: Float>(by_rows: bool, tol: f64) {
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            let (w, m) = matrix::<T>(rows, cols, i as u64 + 1);
            let (outs, inner) = if by_rows { (rows, cols) } else { (cols, rows) };
            let x: Vec<T> = values(i as u64 + 50, inner, 1.0);
            let y0: Vec<T> = values(i as u64 + 90, outs, 1.0);
            let mut got = y0.clone();
            if by_rows {
                gemv_rows_acc(&m, &x, &mut got, 0..rows, Sweep::Ascending);
            } else {
                gemv_cols_acc(&x, &m, &mut got, 0..cols);
            }
            for j in 0..outs {
                let w_at = |p: usize| {
                    if by_rows {
                        w[j * cols + p]
                    } else {
                        w[p * cols + j]
                    }
                };
                let want: f64 = y0[j].to_f64()
                    + (0..inner)
                        .map(|p| w_at(p).to_f64() * x[p].to_f64())
                        .sum::<f64>();
                let d = (got[j].to_f64() - want).abs();
                assert!(
                    d <= tol * (1.0 + want.abs()),
                    "{rows}x{cols} output {j} (by rows: {by_rows}): {d}"
                );
            }
        }
    }

    #[test]
    fn the_row_products_match_a_scalar_sum() {
        matches_scalar::<f64>(true, 1e-13);
        matches_scalar::<f32>(true, 1e-5);
    }

    #[test]
    fn the_column_products_match_a_scalar_sum() {
        matches_scalar::<f64>(false, 1e-13);
        matches_scalar::<f32>(false, 1e-5);
    }

    #[test]
    fn a_column_product_is_the_sequential_sum_of_fused_multiply_adds() {
        // The order the packed kernel's single row uses: bit for bit.
        let (rows, cols) = (9, 300);
        let (w, m) = matrix::<f32>(rows, cols, 3);
        let x: Vec<f32> = values(4, rows, 1.0);
        let mut got = vec![0.5f32; cols];
        gemv_cols_acc(&x, &m, &mut got, 0..cols);
        for j in 0..cols {
            let want = (0..rows).fold(0.5f32, |acc, p| x[p].mul_add(w[p * cols + j], acc));
            assert_eq!(got[j].to_bits(), want.to_bits(), "col {j}");
        }
    }

    #[test]
    fn split_products_equal_the_whole_bit_for_bit() {
        let (rows, cols) = (13, 271);
        let (_, m) = matrix::<f32>(rows, cols, 7);
        let xr: Vec<f32> = values(8, cols, 1.0);
        let xc: Vec<f32> = values(9, rows, 1.0);
        let mut whole_r = vec![0.25f32; rows];
        gemv_rows_acc(&m, &xr, &mut whole_r, 0..rows, Sweep::Ascending);
        let mut backwards = vec![0.25f32; rows];
        gemv_rows_acc(&m, &xr, &mut backwards, 0..rows, Sweep::Descending);
        assert_eq!(backwards, whole_r, "rows in descending order");
        let mut whole_c = vec![0.25f32; cols];
        gemv_cols_acc(&xc, &m, &mut whole_c, 0..cols);
        for cut in [1, 5, 6, 12] {
            let mut parts = vec![0.25f32; rows];
            let (a, b) = parts.split_at_mut(cut);
            gemv_rows_acc(&m, &xr, a, 0..cut, Sweep::Ascending);
            gemv_rows_acc(&m, &xr, b, cut..rows, Sweep::Descending);
            assert_eq!(parts, whole_r, "rows cut at {cut}");
        }
        for cut in [1, 16, 17, 64, 256, 270] {
            let mut parts = vec![0.25f32; cols];
            let (a, b) = parts.split_at_mut(cut);
            gemv_cols_acc(&xc, &m, a, 0..cut);
            gemv_cols_acc(&xc, &m, b, cut..cols);
            assert_eq!(parts, whole_c, "columns cut at {cut}");
        }
    }

    #[test]
    fn the_copy_is_aligned_and_reuses_its_buffer() {
        let (rows, cols) = (8, 40);
        let buf = vec![0.0f32; AlignedMatrix::<f32>::buffer_len(rows, cols)];
        let start = buf.as_ptr();
        let mut m = AlignedMatrix::from_buffer(buf);
        let w: Vec<f32> = values(1, rows * cols, 1.0);
        m.copy_from(&w, rows, cols);
        assert_eq!((m.rows(), m.cols()), (rows, cols));
        assert_eq!(m.values(), &w[..]);
        if !cfg!(miri) {
            assert_eq!(m.values().as_ptr() as usize % ALIGN, 0);
        }
        let back = m.into_buffer();
        assert_eq!(back.as_ptr(), start);
    }
}
