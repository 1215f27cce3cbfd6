//! The register tile: [`MR`] rows of `C` by one panel of [`PANEL`] columns, over a run of pairs
//! of k, with `vdpbf16ps` (the only code of the product with `unsafe`), and the scalar model of
//! the same instruction that the portable kernel runs.
//!
//! `vdpbf16ps acc, a, b` adds to each f32 lane `j` the two products `a[2j] b[2j]` and
//! `a[2j+1] b[2j+1]` of bf16 values. Intel's manual specifies it as two fused multiply-adds,
//! the odd pair first, each rounded to nearest even, with denormal inputs read as zero and
//! denormal results flushed to zero, and without consulting MXCSR; [`dot_pair`] is that
//! specification in scalar code, and the tests check the instruction against it bit for bit.

// Register tiles are fixed-size arrays indexed by row and vector: clearer than iterators.
#![allow(clippy::needless_range_loop)]

/// f32 lanes per vector.
pub(super) const LANES: usize = 16;
/// Vectors per panel.
pub(super) const NV: usize = 4;
/// Columns of `B` (and `C`) per panel.
pub const PANEL: usize = NV * LANES;
/// Rows of `C` per register tile: 6 rows by 4 vectors are 24 accumulators, which with the 4
/// vectors of `B` and one broadcast of `A` fit AVX-512's 32 registers.
pub const MR: usize = 6;

/// `x`, or a zero of its sign if it is subnormal (the instruction's DAZ and FTZ).
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// One lane of `vdpbf16ps`: `acc + a.hi b.hi + a.lo b.lo`, where `a` and `b` each hold two
/// bf16 values (the even step of k in the low half, the odd in the high half): the odd
/// product first, then the even one, each a fused multiply-add rounded to nearest even, with
/// subnormal inputs read as zero and subnormal results flushed to zero.
pub fn dot_pair(acc: f32, a: u32, b: u32) -> f32 {
    let lo = |x: u32| flush(f32::from_bits(x << 16));
    let hi = |x: u32| flush(f32::from_bits(x & 0xFFFF_0000));
    let acc = flush(hi(a).mul_add(hi(b), flush(acc)));
    flush(lo(a).mul_add(lo(b), acc))
}

/// Checks a tile's operands: `a` holds `steps` pairs of k for `MR` rows (`steps * MR` values),
/// `b` the same pairs for a panel (`steps * PANEL`), and `c` rows `0..rows` of `width` columns,
/// `ldc` apart, with `1 <= rows <= MR` and `width <= PANEL`.
fn check(a: &[u32], b: &[u32], steps: usize, c: &[f32], ldc: usize, rows: usize, width: usize) {
    assert!(
        (1..=MR).contains(&rows)
            && width <= PANEL
            && a.len() >= steps * MR
            && b.len() >= steps * PANEL
            && c.len() >= (rows - 1) * ldc + width,
        "bf16 tile: operands too small for {rows} x {width} over {steps} pairs"
    );
}

/// The portable tile: `C[r][j] = dot_pair(C[r][j], A[r][p], B[p][j])` for `p = 0..steps` in
/// order, for `r < rows` and `j < width`: the values `vdpbf16ps` gives, bit for bit.
pub(super) fn tile_scalar(
    a: &[u32],
    b: &[u32],
    steps: usize,
    c: &mut [f32],
    ldc: usize,
    rows: usize,
    width: usize,
) {
    check(a, b, steps, c, ldc, rows, width);
    for r in 0..rows {
        for j in 0..width {
            let x = &mut c[r * ldc + j];
            for p in 0..steps {
                *x = dot_pair(*x, a[p * MR + r], b[p * PANEL + j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::{LANES, MR, NV, PANEL, check};
    use std::arch::x86_64::*;

    /// [`tile_scalar`](super::tile_scalar) with `vdpbf16ps`: the accumulators stay in
    /// registers from the loads of `C` to its stores; rows of `A` past `rows` are computed (the
    /// packing zeroes them) but not stored, and columns past `width` are masked off.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX512_BF16 and AVX-512F.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(in super::super) unsafe fn tile(
        a: &[u32],
        b: &[u32],
        steps: usize,
        c: &mut [f32],
        ldc: usize,
        rows: usize,
        width: usize,
    ) {
        check(a, b, steps, c, ldc, rows, width);
        // `check` bounds every access below: `A[r][p]` at `a[p MR + r]`, `r < MR`, `p < steps`;
        // vector `v` of pair `p` of B, `LANES` values from `b[p PANEL + v LANES]`; of row
        // `r < rows` of C, the lanes of vector `v` below `width`, from `c[r ldc + v LANES]`
        // (vectors with no such lane are skipped, so every pointer stays inside its row).
        let mask: [__mmask16; NV] = std::array::from_fn(|v| {
            let w = width.saturating_sub(v * LANES).min(LANES);
            ((1u32 << w) - 1) as __mmask16
        });
        let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for r in 0..rows {
            for v in (0..NV).filter(|&v| mask[v] != 0) {
                // SAFETY: the lanes of vector `v` of row `r` below `width` (see above); masked
                // lanes are not read.
                acc[r][v] = unsafe { _mm512_maskz_loadu_ps(mask[v], cp.add(r * ldc + v * LANES)) };
            }
        }
        for p in 0..steps {
            // SAFETY: vector `v` of pair `p` of the panel (see above).
            let bv: [__m512bh; NV] = std::array::from_fn(|v| unsafe {
                bp.add(p * PANEL + v * LANES)
                    .cast::<__m512bh>()
                    .read_unaligned()
            });
            for r in 0..MR {
                // SAFETY: `A[r][p]` (see above).
                let pair = unsafe { *ap.add(p * MR + r) };
                let av = broadcast(pair);
                for v in 0..NV {
                    acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
                }
            }
        }
        for r in 0..rows {
            for v in (0..NV).filter(|&v| mask[v] != 0) {
                // SAFETY: as for the loads of C; masked lanes are not written.
                unsafe { _mm512_mask_storeu_ps(cp.add(r * ldc + v * LANES), mask[v], acc[r][v]) };
            }
        }
    }

    /// The pair of bf16 values `pair` in every 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx512bf16,avx512f")]
    fn broadcast(pair: u32) -> __m512bh {
        let v = _mm512_set1_epi32(pair as i32);
        // SAFETY: both are 64-byte vector types with no invalid bit patterns.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}
