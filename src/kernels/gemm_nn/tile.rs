//! The register tile: the only code of the product with `unsafe`. A tile of up to [`MR`] rows of
//! `C` by one panel (or one row by up to four panels) accumulates in registers, reading `A`, `B`
//! and `C` through pointers whose bounds its asserts check once.

// Register tiles are fixed-size arrays indexed by row, panel and vector: clearer than iterators.
#![allow(clippy::needless_range_loop)]

use super::Rows;
use super::packing::{NV, PackedB, panel};
use super::prefetch::Prefetch;
use crate::kernels::simd::SimdFloat;

/// Hints the CPU to bring the cache line holding `p` into L2. Any address is allowed: a prefetch
/// never faults and changes no value.
#[inline(always)]
pub(super) fn prefetch_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only needs SSE, part of every x86_64 target; it reads no memory
    // that a program can observe and cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Rows of `C` per register tile: 5 rows by one panel of 4 vectors is 20 accumulators, which
/// with the 4 vectors of `B` and one broadcast of `A` fits the 32 vector registers of AVX-512
/// (on AVX2's 16, the compiler spills some; the results are the same). A 6-row tile would need
/// 29 of them, and in practice the compiler then keeps some accumulators in memory.
pub(super) const MR: usize = 5;

/// Where a block's `C` holds the product's columns `col0..end`: column `j` of row `i` at
/// `c[i * ldc + j - col0]`.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    pub(super) col0: usize,
    pub(super) end: usize,
    pub(super) ldc: usize,
}

/// The operands of one product `C += A B`: a block of rows of `A` and `C`; `B` packed.
pub(super) struct Operands<'r, 'a, T> {
    pub(super) g: &'r mut Rows<'a, T>,
    pub(super) b: &'r PackedB<T>,
    pub(super) out: Layout,
    /// `C` is set, not added to: the first block over k starts from zero, not from `C`.
    pub(super) fresh: bool,
}

/// Rows `i..i+R` of `C` by panels `q..q+Q`, over the steps `ks` of k; with `PF`, asking for
/// `pf`'s lines as it goes. Panels that end past the product's last column (the zero-padded
/// end of B) run on a padded copy of their part of `C`, so that the register tile itself only
/// ever loads and stores whole vectors.
#[inline(always)]
pub(super) fn tile<T: SimdFloat, const R: usize, const Q: usize, const PF: bool>(
    g: &mut Operands<'_, '_, T>,
    i: usize,
    q: usize,
    ks: std::ops::Range<usize>,
    pf: Prefetch,
) {
    let (b, out) = (g.b, g.out);
    let p = panel::<T>();
    let col = q * p;
    let width = Q * p;
    assert!(i + R <= g.g.m && col >= out.col0);
    let strides = g.g.storage.strides(b.k);
    let a = StridedA {
        a: &g.g.a[i * strides.0..],
        strides,
    };
    let off = i * out.ldc + col - out.col0;
    let zero = g.fresh && ks.start == 0;
    if col + width <= out.end {
        register_tile::<T, R, Q, PF>(a, &mut g.g.c[off..], out.ldc, b, q, ks, pf, zero);
    } else {
        clipped_tile::<T, R, Q>(a, &mut g.g.c[off..], out, col, b, q, ks, zero);
    }
}

/// Most values of `C` one tile covers: [`MR`] rows by one panel (or one row by 4 panels) of
/// f32, whose 16 lanes make the widest panel.
pub(super) const TILE_VALUES: usize = MR * NV * 16;

/// [`register_tile`] for panels that end past column `out.end`: their columns of `C` up to it
/// are copied into a padded buffer, multiplied there and copied back (the padding's values are
/// discarded; with `zero`, the tile starts from zero and `C` is only written). Only the last
/// panels of a product take this path.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub(super) fn clipped_tile<T: SimdFloat, const R: usize, const Q: usize>(
    a: StridedA<'_, T>,
    c: &mut [T],
    out: Layout,
    col: usize,
    b: &PackedB<T>,
    q: usize,
    ks: std::ops::Range<usize>,
    zero: bool,
) {
    let width = Q * panel::<T>();
    let have = out.end.saturating_sub(col).min(width);
    let mut pad = [T::default(); TILE_VALUES];
    assert!(R * width <= TILE_VALUES);
    for r in (0..R).filter(|_| !zero) {
        pad[r * width..r * width + have].copy_from_slice(&c[r * out.ldc..r * out.ldc + have]);
    }
    register_tile::<T, R, Q, false>(a, &mut pad, width, b, q, ks, Prefetch::none(), zero);
    for r in 0..R {
        c[r * out.ldc..r * out.ldc + have].copy_from_slice(&pad[r * width..r * width + have]);
    }
}

/// A tile's rows of `A`: value `(r, s)` at `a[r * strides.0 + s * strides.1]`.
#[derive(Clone, Copy)]
pub(super) struct StridedA<'a, T> {
    pub(super) a: &'a [T],
    pub(super) strides: (usize, usize),
}

/// The register tile: `C[r][j] += sum_{s in ks} A[r][s] B[s][q p + j]` for rows `r < R` and
/// columns `j < Q p`, with `A[r][s]` as `a` places it and row `r` of `C` at `c[r ldc..]`. The
/// accumulators stay in registers from the loads of `C` to its stores.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn register_tile<T: SimdFloat, const R: usize, const Q: usize, const PF: bool>(
    a: StridedA<'_, T>,
    c: &mut [T],
    ldc: usize,
    b: &PackedB<T>,
    q: usize,
    ks: std::ops::Range<usize>,
    pf: Prefetch,
    zero: bool,
) {
    let (k, p) = (b.k, panel::<T>());
    let values = b.values();
    assert!(R > 0 && ks.end <= k && (q + Q) * k * p <= values.len());
    let (rs, cs) = a.strides;
    assert!(ks.is_empty() || (R - 1) * rs + (ks.end - 1) * cs < a.a.len());
    assert!(c.len() >= (R - 1) * ldc + Q * p);
    let (a, c, base) = (a.a.as_ptr(), c.as_mut_ptr(), values.as_ptr());
    // The asserts above bound every pointer below (the SAFETY notes refer to them): row
    // `r < R` of `C` holds `Q p = Q NV LANES` values from `c + r ldc`, of which vector `(qq, v)`
    // is `LANES` of them from `qq p + v LANES`; `A[r][s]` is read at `a + r rs + s cs` with
    // `s < ks.end`, at most the last index asserted; panel `q + qq` of B occupies
    // `[(q + qq) k p, (q + qq + 1) k p)` of `values`, and row `s < k` of it `p` values, of which
    // vector `v` reads `LANES`.
    let at = |r: usize, qq: usize, v: usize| r * ldc + qq * p + v * T::LANES;
    // From zero (`zero`: C is being set), else from C's values.
    let mut acc = [[[T::splat(T::default()); NV]; Q]; R];
    for r in (0..R).filter(|_| !zero) {
        for qq in 0..Q {
            for v in 0..NV {
                // SAFETY: vector `(qq, v)` of row `r` of `C`, within `c` (see above).
                acc[r][qq][v] = unsafe { T::load_ptr(c.add(at(r, qq, v))) };
            }
        }
    }
    let k0 = ks.start;
    for s in ks {
        if PF {
            pf.at(s - k0);
        }
        let bv: [[T::V; NV]; Q] = std::array::from_fn(|qq| {
            // SAFETY: vector `v` of row `s` of panel `q + qq`, within `values` (see above).
            std::array::from_fn(|v| unsafe {
                T::load_ptr(base.add(((q + qq) * k + s) * p + v * T::LANES))
            })
        });
        for r in 0..R {
            // SAFETY: `A[r][s]`, `r < R` and `s < ks.end`, within `a` (see above).
            let av = T::splat(unsafe { *a.add(r * rs + s * cs) });
            for qq in 0..Q {
                for v in 0..NV {
                    acc[r][qq][v] = T::mul_add(av, bv[qq][v], acc[r][qq][v]);
                }
            }
        }
    }
    for r in 0..R {
        for qq in 0..Q {
            for v in 0..NV {
                // SAFETY: as for the loads of `C`.
                unsafe { T::store_ptr(acc[r][qq][v], c.add(at(r, qq, v))) };
            }
        }
    }
}
