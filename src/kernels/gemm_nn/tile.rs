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

/// Rows of `C` per [`Tiles::Wide`] register tile: 5 rows by one panel of 4 vectors is 20
/// accumulators, which with the 4 vectors of `B` and one broadcast of `A` fits the 32 vector
/// registers of AVX-512. A 6-row tile would need 29 of them, and in practice the compiler then
/// keeps some accumulators in memory.
pub(super) const MR: usize = 5;

/// Rows of `C` per [`Tiles::Narrow`] register tile: 6 rows by one vector is 6 accumulators of
/// two registers each, which with the vector of `B` (two more) and one broadcast of `A` takes 15
/// of AVX2's 16 registers.
pub(super) const NARROW_MR: usize = 6;

/// The shape of the register tile, which must fit the vector registers of the build.
///
/// The SIMD types (`f32x16`, `f64x8`) are one register each where the build has AVX-512 and two
/// where it has AVX2 (or less), and the register file is 32 wide registers against 16 narrow
/// ones: the tile that keeps AVX-512's FMA units busy from registers (5 rows by a whole panel,
/// 40 AVX2 registers' worth) spills on AVX2 and runs at a fraction of the peak there. Both
/// shapes compute every value of `C` by the same fused multiply-adds in the same order, so they
/// give the same results bit for bit; only the speed differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiles {
    /// `MR` rows by a whole panel (`NV` vectors); a single row by up to four panels.
    Wide,
    /// `NARROW_MR` rows by one vector of a panel, the panel's vectors one after another (each
    /// reads a quarter of the panel's slice of `B`, for all of a block's tiles); a single row
    /// by one panel.
    Narrow,
}

thread_local! {
    /// The shape forced on this thread by [`Tiles::forced`], if any.
    static FORCED: std::cell::Cell<Option<Tiles>> = const { std::cell::Cell::new(None) };
}

impl Tiles {
    /// The shape for the vector registers this build was compiled for (`target-cpu=native`
    /// makes that the CPU it is built on): [`Tiles::Wide`] with AVX-512, else
    /// [`Tiles::Narrow`].
    pub const NATIVE: Tiles = if cfg!(target_feature = "avx512f") {
        Tiles::Wide
    } else {
        Tiles::Narrow
    };

    /// The shape this thread's products use: [`Tiles::forced`]'s on this thread, else the one
    /// the environment variable `RECUR_TILES` names (`wide` or `narrow`, read once; for
    /// measuring one shape against the other), else [`Tiles::NATIVE`].
    pub fn current() -> Tiles {
        static FROM_ENV: std::sync::OnceLock<Option<Tiles>> = std::sync::OnceLock::new();
        FORCED.with(|f| f.get()).unwrap_or_else(|| {
            FROM_ENV
                .get_or_init(|| {
                    let names = [("wide", Tiles::Wide), ("narrow", Tiles::Narrow)];
                    crate::cpu::env_choice("RECUR_TILES", &names)
                })
                .unwrap_or(Tiles::NATIVE)
        })
    }

    /// Runs `f` with this thread's products on shape `self` (the tests run each shape on any
    /// machine this way; the products of other threads keep theirs).
    pub fn forced<R>(self, f: impl FnOnce() -> R) -> R {
        let before = FORCED.with(|c| c.replace(Some(self)));
        let out = f();
        FORCED.with(|c| c.set(before));
        out
    }

    /// Rows per whole tile.
    pub(super) fn rows(self) -> usize {
        match self {
            Tiles::Wide => MR,
            Tiles::Narrow => NARROW_MR,
        }
    }

    /// The fewest rows a tile may take where a block has more rows than one whole tile: enough
    /// accumulators to cover the FMA latency on both FMA units (8 chains). A narrow tile of 2
    /// rows has 4 (it ran at about half the rate of a whole one), a wide tile of 2 rows has 8.
    pub(super) fn min_rows(self) -> usize {
        match self {
            Tiles::Wide => 2,
            Tiles::Narrow => 4,
        }
    }

    /// Tiles across one panel (the vectors a tile covers one after another).
    pub(super) fn across(self) -> usize {
        match self {
            Tiles::Wide => 1,
            Tiles::Narrow => NV,
        }
    }
}

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
    /// The cache block of `A` the tiles read, copied ([`PackedA`]); `None` reads `A` where it
    /// is stored.
    pub(super) packed: Option<PackedA<'r, T>>,
}

/// A cache block of `A` (rows `i0..i0 + ld`, steps `k0..k0 + kl` of k) copied column by
/// column, `A[i][s]` at `a[(i - i0) + (s - k0) ld]`: the steps of a column-major `A` that lie
/// a page or more apart in memory are then `ld` values apart (see [`super::AStorage`]).
#[derive(Clone, Copy)]
pub(super) struct PackedA<'p, T> {
    pub(super) a: &'p [T],
    pub(super) i0: usize,
    pub(super) ld: usize,
    pub(super) k0: usize,
    pub(super) kl: usize,
}

/// Rows `i..i+R` of `C` by panels `q..q+Q` (with `NVT < NV`: by vectors `v0..v0+NVT` of panel
/// `q` alone), over the steps `ks` of k; with `PF`, asking for `pf`'s lines as it goes. Columns
/// that end past the product's last column (the zero-padded end of B) run on a padded copy of
/// their part of `C`, so that the register tile itself only ever loads and stores whole vectors.
#[inline(always)]
pub(super) fn tile<
    T: SimdFloat,
    const R: usize,
    const Q: usize,
    const NVT: usize,
    const PF: bool,
>(
    g: &mut Operands<'_, '_, T>,
    i: usize,
    q: usize,
    v0: usize,
    ks: std::ops::Range<usize>,
    pf: Prefetch,
) {
    let (b, out) = (g.b, g.out);
    let p = panel::<T>();
    assert!(NVT == NV && v0 == 0 || Q == 1 && v0 + NVT <= NV);
    let col = q * p + v0 * T::LANES;
    let width = (Q - 1) * p + NVT * T::LANES;
    if col >= out.end {
        // Vectors of the last panel's zero padding alone (narrow tiles): no column of `C`.
        return;
    }
    assert!(i + R <= g.g.m && col >= out.col0);
    let a = match g.packed {
        Some(pa) => {
            assert!(i >= pa.i0 && ks.start == pa.k0 && ks.len() == pa.kl);
            StridedA {
                a: &pa.a[i - pa.i0..],
                strides: (1, pa.ld),
                s0: pa.k0,
            }
        }
        None => {
            let strides = g.g.storage.strides(b.k);
            StridedA {
                a: &g.g.a[i * strides.0..],
                strides,
                s0: 0,
            }
        }
    };
    let off = i * out.ldc + col - out.col0;
    let zero = g.fresh && ks.start == 0;
    let c = &mut g.g.c[off..];
    if col + width <= out.end {
        register_tile::<T, R, Q, NVT, PF>(a, c, out.ldc, b, (q, v0), ks, pf, zero);
    } else {
        clipped_tile::<T, R, Q, NVT>(a, c, out, col, b, (q, v0), ks, zero);
    }
}

/// Most values of `C` one tile covers: [`MR`] rows by one panel (or one row by 4 panels) of
/// f32, whose 16 lanes make the widest panel; a [`Tiles::Narrow`] tile covers fewer.
pub(super) const TILE_VALUES: usize = MR * NV * 16;
const _: () = assert!(NARROW_MR * 16 <= TILE_VALUES);

/// [`register_tile`] for panels that end past column `out.end`: their columns of `C` up to it
/// are copied into a padded buffer, multiplied there and copied back (the padding's values are
/// discarded; with `zero`, the tile starts from zero and `C` is only written). Only the last
/// panels of a product take this path.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub(super) fn clipped_tile<T: SimdFloat, const R: usize, const Q: usize, const NVT: usize>(
    a: StridedA<'_, T>,
    c: &mut [T],
    out: Layout,
    col: usize,
    b: &PackedB<T>,
    at: (usize, usize),
    ks: std::ops::Range<usize>,
    zero: bool,
) {
    let width = (Q - 1) * panel::<T>() + NVT * T::LANES;
    let have = out.end.saturating_sub(col).min(width);
    let mut pad = [T::default(); TILE_VALUES];
    assert!(R * width <= TILE_VALUES);
    for r in (0..R).filter(|_| !zero) {
        pad[r * width..r * width + have].copy_from_slice(&c[r * out.ldc..r * out.ldc + have]);
    }
    register_tile::<T, R, Q, NVT, false>(a, &mut pad, width, b, at, ks, Prefetch::none(), zero);
    for r in 0..R {
        c[r * out.ldc..r * out.ldc + have].copy_from_slice(&pad[r * width..r * width + have]);
    }
}

/// A tile's rows of `A`: value `(r, s)` at `a[r * strides.0 + (s - s0) * strides.1]`, for
/// steps `s >= s0`.
#[derive(Clone, Copy)]
pub(super) struct StridedA<'a, T> {
    pub(super) a: &'a [T],
    pub(super) strides: (usize, usize),
    pub(super) s0: usize,
}

/// The register tile: `C[r][j] += sum_{s in ks} A[r][s] B[s][q p + v0 LANES + j]` for rows
/// `r < R` and columns `j < (Q - 1) p + NVT LANES` (`at = (q, v0)`), with `A[r][s]` as `a`
/// places it and row `r` of `C` at `c[r ldc..]`. The accumulators stay in registers from the
/// loads of `C` to its stores.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn register_tile<
    T: SimdFloat,
    const R: usize,
    const Q: usize,
    const NVT: usize,
    const PF: bool,
>(
    a: StridedA<'_, T>,
    c: &mut [T],
    ldc: usize,
    b: &PackedB<T>,
    (q, v0): (usize, usize),
    ks: std::ops::Range<usize>,
    pf: Prefetch,
    zero: bool,
) {
    let (k, p) = (b.k, panel::<T>());
    let values = b.values();
    assert!(R > 0 && ks.end <= k && (q + Q) * k * p <= values.len());
    assert!(NVT == NV && v0 == 0 || Q == 1 && v0 + NVT <= NV);
    let ((rs, cs), s0) = (a.strides, a.s0);
    assert!(ks.is_empty() || ks.start >= s0 && (R - 1) * rs + (ks.end - 1 - s0) * cs < a.a.len());
    assert!(c.len() >= (R - 1) * ldc + (Q - 1) * p + NVT * T::LANES);
    let (a, c, base) = (a.a.as_ptr(), c.as_mut_ptr(), values.as_ptr());
    // The asserts above bound every pointer below (the SAFETY notes refer to them): row
    // `r < R` of `C` holds `(Q - 1) p + NVT LANES` values from `c + r ldc`, of which vector
    // `(qq, v)` is `LANES` of them from `qq p + v LANES`; `A[r][s]` is read at
    // `a + r rs + (s - s0) cs` with `s0 <= s < ks.end`, at most the last index asserted; panel
    // `q + qq` of B occupies `[(q + qq) k p, (q + qq + 1) k p)` of `values`, and row `s < k` of
    // it `p` values, of which vector `v0 + v < NV` reads `LANES`.
    let at = |r: usize, qq: usize, v: usize| r * ldc + qq * p + v * T::LANES;
    // From zero (`zero`: C is being set), else from C's values.
    let mut acc = [[[T::splat(T::default()); NVT]; Q]; R];
    for r in (0..R).filter(|_| !zero) {
        for qq in 0..Q {
            for v in 0..NVT {
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
        let bv: [[T::V; NVT]; Q] = std::array::from_fn(|qq| {
            // SAFETY: vector `v0 + v` of row `s` of panel `q + qq`, within `values` (see above).
            std::array::from_fn(|v| unsafe {
                T::load_ptr(base.add(((q + qq) * k + s) * p + (v0 + v) * T::LANES))
            })
        });
        for r in 0..R {
            // SAFETY: `A[r][s]`, `r < R` and `s0 <= s < ks.end`, within `a` (see above).
            let av = T::splat(unsafe { *a.add(r * rs + (s - s0) * cs) });
            for qq in 0..Q {
                for v in 0..NVT {
                    acc[r][qq][v] = T::mul_add(av, bv[qq][v], acc[r][qq][v]);
                }
            }
        }
    }
    for r in 0..R {
        for qq in 0..Q {
            for v in 0..NVT {
                // SAFETY: as for the loads of `C`.
                unsafe { T::store_ptr(acc[r][qq][v], c.add(at(r, qq, v))) };
            }
        }
    }
}
