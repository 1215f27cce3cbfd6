//! `C += A B^T` for a few rows of `A`: the per-timestep recurrent product.
//!
//! `A` is `m x k` (the hidden states of a batch, `m` small), `B` is `n x k` (a weight matrix in
//! PyTorch's `[out, in]` layout, read as it is stored: no packing, no allocation), `C` is
//! `m x n`. Every `C[i][j]` gets one dot product of two contiguous rows, accumulated `LANES` wide
//! over `k` in order and reduced in a fixed order, so a result never depends on which other rows
//! share its tile: splitting `A` by rows (batch shards) gives bit-identical results.
//!
//! For `m` up to a few dozen this beats a general GEMM, which packs both operands on every call;
//! tiles of [`TILE`] rows of `A` by [`TILE`] rows of `B` keep their accumulators in registers.

use super::simd::SimdFloat;

/// `C += A B^T` with `A` `m x k`, `B` `n x k`, `C` `m x n`, all row-major and contiguous.
///
/// Panics if a slice is shorter than its shape needs.
pub fn gemm_nt_acc<T: SimdFloat + std::ops::AddAssign>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && c.len() >= m * n,
        "gemm_nt_acc: buffers too small for {m}x{n}x{k}"
    );
    if k == 0 {
        return;
    }
    let (m4, n4) = (m / TILE * TILE, n / TILE * TILE);
    for i in (0..m4).step_by(TILE) {
        for j in (0..n4).step_by(TILE) {
            tile::<T, TILE, TILE>(i, j, n, k, a, b, c);
        }
        for j in n4..n {
            tile::<T, TILE, 1>(i, j, n, k, a, b, c);
        }
    }
    for i in m4..m {
        for j in (0..n4).step_by(TILE) {
            tile::<T, 1, TILE>(i, j, n, k, a, b, c);
        }
        for j in n4..n {
            tile::<T, 1, 1>(i, j, n, k, a, b, c);
        }
    }
}

/// Rows of `A` and of `B` per tile: 4 by 4 is 16 accumulators, half of AVX-512's 32 vector
/// registers; without AVX-512 each `f32x16` takes two of the 16 registers, so 4 by 4 would
/// need 32 for the accumulators alone and spill, while 2 by 2 takes 8 and leaves room for the
/// loads.
const TILE: usize = if cfg!(target_feature = "avx512f") {
    4
} else {
    2
};

/// `C[i..i+MR][j..j+NR] += A[i..i+MR] . B[j..j+NR]`.
#[inline(always)]
fn tile<T: SimdFloat + std::ops::AddAssign, const MR: usize, const NR: usize>(
    i: usize,
    j: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
) {
    let zero = T::splat(T::default());
    let mut acc = [[zero; NR]; MR];
    let a_rows: [&[T]; MR] = std::array::from_fn(|r| &a[(i + r) * k..(i + r + 1) * k]);
    let b_rows: [&[T]; NR] = std::array::from_fn(|s| &b[(j + s) * k..(j + s + 1) * k]);
    let full = k / T::LANES * T::LANES;
    let a_ptr: [*const T; MR] = std::array::from_fn(|r| a_rows[r].as_ptr());
    let b_ptr: [*const T; NR] = std::array::from_fn(|s| b_rows[s].as_ptr());
    let mut p = 0;
    while p < full {
        // SAFETY: every row slice above is exactly `k` long and `p + LANES <= full <= k`, so
        // each pointer offset by `p` has `LANES` readable values.
        let av: [T::V; MR] = std::array::from_fn(|r| unsafe { T::load_ptr(a_ptr[r].add(p)) });
        // SAFETY: as above.
        let bv: [T::V; NR] = std::array::from_fn(|s| unsafe { T::load_ptr(b_ptr[s].add(p)) });
        for r in 0..MR {
            for s in 0..NR {
                acc[r][s] = T::mul_add(av[r], bv[s], acc[r][s]);
            }
        }
        p += T::LANES;
    }
    if full < k {
        // The ragged end of k, zero-padded: the padding adds exact zeros.
        let av: [T::V; MR] = std::array::from_fn(|r| T::load_n(&a_rows[r][full..]));
        let bv: [T::V; NR] = std::array::from_fn(|s| T::load_n(&b_rows[s][full..]));
        for r in 0..MR {
            for s in 0..NR {
                acc[r][s] = T::mul_add(av[r], bv[s], acc[r][s]);
            }
        }
    }
    for r in 0..MR {
        for s in 0..NR {
            c[(i + r) * n + j + s] += T::reduce_add(acc[r][s]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{Product, rounded, values};

    #[test]
    fn matches_the_reference_product() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 9, 7),
            (3, 5, 8),
            (4, 4, 9),
            (5, 13, 33),
            (8, 64, 64),
        ] {
            let p = Product::new(m, n, k, true);
            let mut got = p.c0.clone();
            gemm_nt_acc(m, n, k, &p.a, &p.b, &mut got);
            p.assert_matches(&got, 1e-12);
            let (af, bf): (Vec<f32>, Vec<f32>) = (rounded(&p.a), rounded(&p.b));
            let mut gotf: Vec<f32> = rounded(&p.c0);
            gemm_nt_acc(m, n, k, &af, &bf, &mut gotf);
            p.assert_matches(&gotf, 1e-5);
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_neighbours() {
        let (m, n, k) = (7, 11, 29);
        let a: Vec<f32> = values(1, m * k, 1.0);
        let b: Vec<f32> = values(2, n * k, 1.0);
        let mut whole = vec![0.0f32; m * n];
        gemm_nt_acc(m, n, k, &a, &b, &mut whole);
        for i in 0..m {
            let mut one = vec![0.0f32; n];
            gemm_nt_acc(1, n, k, &a[i * k..(i + 1) * k], &b, &mut one);
            for j in 0..n {
                assert_eq!(one[j].to_bits(), whole[i * n + j].to_bits());
            }
        }
    }
}
