//! The register tile: [`MR`] rows of `C` by one panel of [`PANEL`] columns, over a run of pairs
//! of k, with `vdpbf16ps` or its emulation with AVX2 and FMA (the only code of the product
//! with `unsafe`), and the scalar model of the same instruction that the scalar kernel runs.
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

/// One register tile's operands: `a` holds `steps` pairs of k for `MR` rows (`steps * MR`
/// values), `b` the same pairs for a panel (`steps * PANEL`), and `c` rows `0..rows` of
/// `width` columns, `ldc` apart, with `1 <= rows <= MR` and `width <= PANEL`. With `zero` the
/// sums start from zero and overwrite `C` (which is not read); else they add to it.
pub(super) struct TileOps<'a> {
    pub(super) a: &'a [u32],
    pub(super) b: &'a [u32],
    pub(super) steps: usize,
    pub(super) c: &'a mut [f32],
    pub(super) ldc: usize,
    pub(super) rows: usize,
    pub(super) width: usize,
    pub(super) zero: bool,
    /// Where the next tile's `C` starts (rows `ldc` apart), which a tile may ask the cache for
    /// while it runs (a hint: never read); null for none.
    pub(super) ahead: *const f32,
}

/// A tile's operands as one tuple: `(a, b, steps, c, ldc, rows, width, zero)`.
type Parts<'a> = (
    &'a [u32],
    &'a [u32],
    usize,
    &'a mut [f32],
    usize,
    usize,
    usize,
    bool,
);

impl<'a> TileOps<'a> {
    /// The operands, checked to hold what the fields say (panics otherwise).
    fn checked(self) -> Parts<'a> {
        let TileOps {
            a,
            b,
            steps,
            c,
            ldc,
            rows,
            width,
            zero,
            ahead: _,
        } = self;
        assert!(
            (1..=MR).contains(&rows)
                && width <= PANEL
                && a.len() >= steps * MR
                && b.len() >= steps * PANEL
                && c.len() >= (rows - 1) * ldc + width,
            "bf16 tile: operands too small for {rows} x {width} over {steps} pairs"
        );
        (a, b, steps, c, ldc, rows, width, zero)
    }
}

/// The portable tile: `C[r][j] = dot_pair(C[r][j], A[r][p], B[p][j])` for `p = 0..steps` in
/// order, for `r < rows` and `j < width` (from `C[r][j] = 0` with `zero`): the values
/// `vdpbf16ps` gives, bit for bit.
pub(super) fn tile_scalar(t: TileOps<'_>) {
    let (a, b, steps, c, ldc, rows, width, zero) = t.checked();
    for r in 0..rows {
        for j in 0..width {
            let x = &mut c[r * ldc + j];
            if zero {
                *x = 0.0;
            }
            for p in 0..steps {
                *x = dot_pair(*x, a[p * MR + r], b[p * PANEL + j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::{LANES, MR, NV, PANEL, TileOps};
    use std::arch::x86_64::*;

    /// [`tile_scalar`](super::tile_scalar) with `vdpbf16ps`: the accumulators stay in
    /// registers from the loads of `C` (zeros with `zero`) to its stores, and columns past
    /// `width` are masked off. A tile of fewer than [`MR`] rows (the last of a block whose rows
    /// are not a multiple of `MR`: a shard of 32 rows ends with one of 2) computes only those
    /// rows, in the time of its products: a tile of `MR` rows over 2 would take as long as a
    /// whole one.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX512_BF16 and AVX-512F.
    #[target_feature(enable = "avx512bf16,avx512f")]
    pub(in super::super) unsafe fn tile(t: TileOps<'_>) {
        // SAFETY: the CPU has the features (this function's contract); each call's `R` is
        // the tile's `rows` (`rows_of` asserts it).
        unsafe {
            match t.rows {
                1 => rows_of::<1>(t),
                2 => rows_of::<2>(t),
                3 => rows_of::<3>(t),
                4 => rows_of::<4>(t),
                5 => rows_of::<5>(t),
                _ => rows_of::<MR>(t),
            }
        }
    }

    /// [`tile`] for a tile of `R` rows.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX512_BF16 and AVX-512F.
    #[target_feature(enable = "avx512bf16,avx512f")]
    unsafe fn rows_of<const R: usize>(t: TileOps<'_>) {
        let t_ahead = t.ahead;
        let (a, b, steps, c, ldc, rows, width, zero) = t.checked();
        assert!(rows == R && R <= MR);
        // `checked` bounds every access below: `A[r][p]` at `a[p MR + r]`, `r < R <= MR`,
        // `p < steps`; vector `v` of pair `p` of B, `LANES` values from `b[p PANEL + v LANES]`;
        // of row `r < R` of C, the lanes of vector `v` below `width`, from `c[r ldc + v LANES]`.
        // Every vector of each row is loaded and stored under its mask (none for vectors past
        // `width`), so the loops unroll and the accumulators stay in registers; a masked-off
        // lane is neither read nor written (nor can it fault), and the addresses of vectors
        // with no lane in `C` are only computed (`wrapping_add`). With `zero` no lane is
        // loaded: the accumulators start from zero.
        let mask: [__mmask16; NV] = std::array::from_fn(|v| {
            let w = width.saturating_sub(v * LANES).min(LANES);
            ((1u32 << w) - 1) as __mmask16
        });
        let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        // The next tile's rows of C, a cache line at a time, asked for now: when `C` streams
        // from memory (a step's gates, written by the input projection long before), its loads
        // would otherwise wait for memory at the start of every tile.
        if !t_ahead.is_null() {
            for r in 0..MR {
                for v in 0..NV {
                    let line = t_ahead.wrapping_add(r * ldc + v * LANES);
                    _mm_prefetch::<_MM_HINT_T0>(line.cast());
                }
            }
        }
        let load: __mmask16 = if zero { 0 } else { !0 };
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for r in 0..R {
            for v in 0..NV {
                // SAFETY: the lanes of vector `v` of row `r` under its mask (see above); masked
                // lanes are not read.
                acc[r][v] = unsafe {
                    _mm512_maskz_loadu_ps(load & mask[v], cp.wrapping_add(r * ldc + v * LANES))
                };
            }
        }
        for p in 0..steps {
            // SAFETY: vector `v` of pair `p` of the panel (see above).
            let bv: [__m512bh; NV] = std::array::from_fn(|v| unsafe {
                bp.add(p * PANEL + v * LANES)
                    .cast::<__m512bh>()
                    .read_unaligned()
            });
            for r in 0..R {
                // SAFETY: `A[r][p]` (see above).
                let pair = unsafe { *ap.add(p * MR + r) };
                let av = broadcast(pair);
                for v in 0..NV {
                    acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
                }
            }
        }
        for r in 0..R {
            for v in 0..NV {
                // SAFETY: as for the loads of C; masked lanes are not written.
                unsafe {
                    _mm512_mask_storeu_ps(cp.wrapping_add(r * ldc + v * LANES), mask[v], acc[r][v])
                };
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

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    //! `vdpbf16ps` emulated with AVX2 and FMA: each pair of k as two fused multiply-adds, the
    //! odd product first, with the instruction's flushes done with vector masks (not with
    //! MXCSR's DAZ and FTZ, whose detection of tiny results need not match the model's).

    use super::{MR, PANEL, TileOps, flush};
    use std::arch::x86_64::*;

    /// f32 lanes per vector.
    const LANES: usize = 8;
    /// Vectors per row of a chunk: 6 rows by 2 vectors are 12 accumulators. With `B`'s 4
    /// unpacked vectors and `A`'s 2 broadcasts that is more than AVX2's 16 registers, but it
    /// measured a little faster than 1 vector per row, whose 6 chains of dependent fused
    /// multiply-adds and flushes leave the units idle more often.
    const CV: usize = 2;
    /// Columns per chunk: the panel is covered a chunk at a time.
    const CHUNK: usize = CV * LANES;
    const _: () = assert!(PANEL.is_multiple_of(CHUNK));
    /// Pairs of k whose `A` is unpacked at a time (into 3 KiB on the stack).
    const KS: usize = 64;

    /// [`tile_scalar`](super::tile_scalar) emulated: for each chunk of [`CHUNK`] columns, the
    /// accumulators stay in registers from the loads of `C` to its stores, over every pair of
    /// `A` (unpacked and flushed once) and `B` (unpacked and flushed in registers). Rows of `A`
    /// past `rows` are computed but not stored, and columns past `width` are neither read nor
    /// written.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn tile(t: TileOps<'_>) {
        let (a, b, steps, c, ldc, rows, width, zero) = t.checked();
        // `A[r][p]` as two f32, each flushed: the odd step of k at `ahi[(p - p0) MR + r]`, the
        // even one at `alo[(p - p0) MR + r]`.
        let (mut ahi, mut alo) = ([0.0f32; KS * MR], [0.0f32; KS * MR]);
        if steps == 0 && !zero {
            return;
        }
        // With no pairs and `zero`, one empty run stores the zeros.
        for p0 in (0..steps.max(1)).step_by(KS) {
            let ks = KS.min(steps - p0);
            let a = &a[p0 * MR..(p0 + ks) * MR];
            let whole = a.len() / LANES * LANES;
            for ((h, l), x) in ahi
                .chunks_exact_mut(LANES)
                .zip(alo.chunks_exact_mut(LANES))
                .zip(a[..whole].chunks_exact(LANES))
            {
                // SAFETY: `x` holds `LANES` u32, one vector (an unaligned load reads exactly
                // those), and `h` and `l` `LANES` f32 each (which the unaligned stores fill).
                unsafe {
                    let (vh, vl) = unpack(x.as_ptr().cast::<__m256i>().read_unaligned());
                    _mm256_storeu_ps(h.as_mut_ptr(), vh);
                    _mm256_storeu_ps(l.as_mut_ptr(), vl);
                }
            }
            for (i, &x) in a.iter().enumerate().skip(whole) {
                ahi[i] = flush(f32::from_bits(x & 0xFFFF_0000));
                alo[i] = flush(f32::from_bits(x << 16));
            }
            let au = (&ahi[..ks * MR], &alo[..ks * MR]);
            // Only the first run of pairs starts from zero; the later ones add to it.
            let zero = zero && p0 == 0;
            for j0 in (0..width).step_by(CHUNK) {
                chunk(
                    au,
                    &b[p0 * PANEL + j0..],
                    ks,
                    c,
                    ldc,
                    (rows, zero),
                    (j0, width),
                );
            }
        }
    }

    /// `C += A B` (`C = A B` with `zero`) over `steps` pairs for the chunk of columns from `j0`
    /// (below `width`): `ahi` and `alo` the unpacked `A`, `b` the panel's pairs from column
    /// `j0` of pair `p0`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn chunk(
        (ahi, alo): (&[f32], &[f32]),
        b: &[u32],
        steps: usize,
        c: &mut [f32],
        ldc: usize,
        (rows, zero): (usize, bool),
        (j0, width): (usize, usize),
    ) {
        // `tile`'s `checked` bounds every access below: of `B`, vector `v` of pair `p < steps`,
        // `LANES` values from `b[p PANEL + v LANES]`, inside the panel (`j0` is a multiple of
        // `CHUNK`, which divides `PANEL`) and so inside `b`; of row `r < rows` of C, the lanes
        // of vector `v` below `width`, from `c[r ldc + j0 + v LANES]` (vectors with no such
        // lane are skipped, the others masked to those lanes).
        assert!(
            j0 < width
                && j0.is_multiple_of(CHUNK)
                && ahi.len() >= steps * MR
                && alo.len() >= steps * MR
                && b.len() + j0 >= steps * PANEL
        );
        let lanes: [usize; CV] =
            std::array::from_fn(|v| width.saturating_sub(j0 + v * LANES).min(LANES));
        let mask: [__m256i; CV] = std::array::from_fn(|v| {
            let ramp = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes[v] as i32), ramp)
        });
        let (bp, cp) = (b.as_ptr(), c.as_mut_ptr());
        let mut acc = [[_mm256_setzero_ps(); CV]; MR];
        for r in (0..rows).filter(|_| !zero) {
            for v in (0..CV).filter(|&v| lanes[v] > 0) {
                // SAFETY: the lanes of vector `v` of row `r` below `width` (see above); masked
                // lanes are not read.
                let x = unsafe { _mm256_maskload_ps(cp.add(r * ldc + j0 + v * LANES), mask[v]) };
                acc[r][v] = flush_ps(x);
            }
        }
        for p in 0..steps {
            let mut hi = [_mm256_setzero_ps(); CV];
            let mut lo = [_mm256_setzero_ps(); CV];
            for v in 0..CV {
                // SAFETY: vector `v` of pair `p` of the chunk (see above).
                let x = unsafe {
                    bp.add(p * PANEL + v * LANES)
                        .cast::<__m256i>()
                        .read_unaligned()
                };
                (hi[v], lo[v]) = unpack(x);
            }
            for r in 0..MR {
                let (ah, al) = (ahi[p * MR + r], alo[p * MR + r]);
                let (ah, al) = (_mm256_set1_ps(ah), _mm256_set1_ps(al));
                for v in 0..CV {
                    let x = flush_ps(_mm256_fmadd_ps(ah, hi[v], acc[r][v]));
                    acc[r][v] = flush_ps(_mm256_fmadd_ps(al, lo[v], x));
                }
            }
        }
        for r in 0..rows {
            for v in (0..CV).filter(|&v| lanes[v] > 0) {
                // SAFETY: as for the loads of C; masked lanes are not written.
                unsafe {
                    _mm256_maskstore_ps(cp.add(r * ldc + j0 + v * LANES), mask[v], acc[r][v])
                };
            }
        }
    }

    /// Eight pairs of bf16 values as f32, the odd (upper) halves and the even (lower) ones,
    /// each a zero of its sign if it is a bf16 subnormal (its exponent field zero).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn unpack(x: __m256i) -> (__m256, __m256) {
        // Each 16-bit half with its exponent zero keeps only its sign.
        let exponent = _mm256_and_si256(x, _mm256_set1_epi32(0x7F80_7F80));
        let tiny = _mm256_cmpeq_epi16(exponent, _mm256_setzero_si256());
        let x = _mm256_andnot_si256(_mm256_and_si256(tiny, _mm256_set1_epi32(0x7FFF_7FFF)), x);
        let hi = _mm256_and_si256(x, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
        let lo = _mm256_slli_epi32::<16>(x);
        (_mm256_castsi256_ps(hi), _mm256_castsi256_ps(lo))
    }

    /// `x` with each subnormal lane made a zero of its sign ([`flush`] on every lane): a lane
    /// whose magnitude is below `f32::MIN_POSITIVE` keeps only its sign bit (a NaN compares
    /// false and is kept).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn flush_ps(x: __m256) -> __m256 {
        let magnitude = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF)));
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(magnitude, _mm256_set1_ps(f32::MIN_POSITIVE));
        _mm256_blendv_ps(x, _mm256_xor_ps(x, magnitude), tiny)
    }
}
