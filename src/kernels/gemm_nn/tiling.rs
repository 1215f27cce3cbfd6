//! The loops around the register tile: cache blocks of [`KB`] (or [`NARROW_KB`]) steps of `k`
//! by [`MB`] rows of `A`, the cut of each block's rows into tiles, the single-row path, and the
//! order the panels are walked in ([`Sweep`]).

use super::packing::NV;
use super::packing::{PackedB, panel};
use super::prefetch::{Prefetch, STREAMED_BYTES};
use super::tile::{Layout, Operands, PackedA, Tiles, tile};
use super::{AStorage, Rows};
use crate::kernels::simd::SimdFloat;
use crate::kernels::sweep::Sweep;

/// Steps of k per cache block.
pub(super) const KB: usize = 128;
/// Steps of k per cache block for [`Tiles::Narrow`] tiles over an `A` stored by rows. With
/// AVX2 on AMD Zen 3 (32 KiB L1d, 512 KiB L2), one thread, f32, the best of 3-4 alternating
/// runs, % of the FMA peak at `KB` = 128 / 256 / 512: 6400x256x1024 (an input projection) 73 /
/// 81 / 81, 3200x512x2048 70 / 78 / 83, 64x256x1024 (a step's product) 83 / 90 / 88,
/// 64x512x2048 77 / 84 / 87, 32x384x128 91 / 94 / 96; 768 and 1024 gave the same as 512.
/// Fewer trips of C through memory outweigh the slice of B that no longer stays in L1. An `A`
/// stored by columns keeps [`KB`]: there it went the other way (1024x6400x256 62 / 61 / 54).
pub(super) const NARROW_KB: usize = 512;
/// Rows of A per cache block.
pub(super) const MB: usize = 40;

/// [`gemm_packed_acc_cols`](super::gemm_packed_acc_cols), or with `set` [`gemm_packed_set_rows`](super::gemm_packed_set_rows) over columns `cols`.
pub(super) fn product_cols<T: SimdFloat>(
    blocks: &mut [Rows<'_, T>],
    b: &PackedB<T>,
    cols: std::ops::Range<usize>,
    ldc: usize,
    order: Sweep,
    set: bool,
) {
    let k = b.k;
    let p = panel::<T>();
    assert!(
        cols.start.is_multiple_of(p)
            && cols.start <= cols.end
            && cols.end <= b.n
            && ldc >= cols.len(),
        "gemm_packed_acc: columns {cols:?} (row stride {ldc}) do not fit {} panels of {p}",
        b.n
    );
    let width = cols.len();
    for g in blocks.iter() {
        let need = |x: usize| {
            g.m.checked_mul(x)
                .expect("gemm_packed_acc: shape overflows usize")
        };
        assert!(
            g.storage.fits(g.m, k, g.a.len()) && g.c.len() >= need(ldc),
            "gemm_packed_acc: buffers too small for {}x{width}x{k} (row stride {ldc})",
            g.m
        );
        assert!(
            g.bias.is_none_or(|r| r.len() >= b.n),
            "gemm_packed_acc: bias shorter than {}",
            b.n
        );
    }
    let rows: usize = blocks.iter().map(|g| g.m).sum();
    let empty = width == 0 || rows == 0 || k == 0;
    // Setting C where the tiles will not start it from zero: blocks with a bias (added below,
    // then accumulated onto) and a product with no steps of k.
    if set {
        for g in blocks.iter_mut().filter(|g| g.bias.is_some() || empty) {
            for i in 0..g.m {
                g.c[i * ldc..i * ldc + width].fill(T::default());
            }
        }
    }
    // The bias joins C first, row by row (the rows are about to be loaded anyway; adding it
    // inside the register tiles slowed them down).
    for g in blocks.iter_mut() {
        if let Some(bias) = g.bias {
            let bias = &bias[cols.clone()];
            for i in 0..g.m {
                let row = &mut g.c[i * ldc..i * ldc + width];
                for (x, y) in row.chunks_mut(T::LANES).zip(bias.chunks(T::LANES)) {
                    T::store_n(T::load_n(x) + T::load_n(y), x);
                }
            }
        }
    }
    if empty {
        return;
    }
    let out = Layout {
        col0: cols.start,
        end: cols.end,
        ldc,
    };
    products(blocks, b, out, order, set);
}

/// The loops of [`gemm_packed_acc_cols`](super::gemm_packed_acc_cols) over validated operands; with `set`, the blocks
/// without a bias start from zero instead of from `C`.
pub(super) fn products<T: SimdFloat>(
    blocks: &mut [Rows<'_, T>],
    b: &PackedB<T>,
    out: Layout,
    order: Sweep,
    set: bool,
) {
    let (k, p) = (b.k, panel::<T>());
    let rows: usize = blocks.iter().map(|g| g.m).sum();
    let panels = (out.col0 / p)..out.end.div_ceil(p);
    let width = out.end - out.col0;
    let shape = Tiles::current();
    let mr = shape.rows();
    // Cache blocking for large products: a block of KB steps of k by MB rows of each A stays in
    // cache while each panel's KB x PANEL slice of B is reused by every tile of the block (from
    // L1 with wide tiles; narrow tiles over a row-major A take longer blocks, NARROW_KB, whose
    // slices of B come from L2).
    // Splitting k only stores and reloads C between blocks (exact), so the accumulation order
    // of every element is unchanged.
    // Fewer rows than a tile reuse no slice of B: no k blocks, C loaded once.
    let streamed = k * width * std::mem::size_of::<T>() > STREAMED_BYTES;
    let by_rows = blocks.iter().all(|g| g.storage == AStorage::RowMajor);
    let kb = match shape {
        _ if rows < mr => k,
        Tiles::Narrow if by_rows => NARROW_KB,
        _ => KB,
    };
    let row_blocks = blocks.iter().map(|g| g.m.div_ceil(MB)).max().unwrap_or(0);
    // Whether a block's A is copied block by block (`packs_a`); where any is, a buffer of
    // MB x KB values for each block.
    let packs = |g: &Rows<'_, T>| kb == KB && packs_a::<T>(shape, g.storage, width);
    let any_packs = blocks.iter().any(packs);
    let mut apack = vec![T::default(); if any_packs { blocks.len() * MB * KB } else { 0 }];
    // Which loop runs outside: row blocks where all of B stays in L2 (C's row block then stays
    // in cache across the blocks of k), else blocks of k (each slice of B is read from L2 by
    // every row block while C goes out to memory and back between slices). Every value is
    // accumulated in the same order either way.
    let rows_outer =
        LoopOrder::current(k * width * std::mem::size_of::<T>()) == LoopOrder::RowsOuter;
    let k_blocks = k.div_ceil(kb.max(1));
    let (outer, inner) = if rows_outer {
        (row_blocks, k_blocks)
    } else {
        (k_blocks, row_blocks)
    };
    for o in 0..outer {
        for i in 0..inner {
            let (j, kq) = if rows_outer { (o, i) } else { (i, o) };
            let k0 = kq * kb;
            let ks = k0..(k0 + kb).min(k);
            // Row block `j` of every block of rows that has one.
            let tiling = |g: &Rows<'_, T>| (j * MB < g.m).then(|| Tiling::new(j * MB, g.m, shape));
            // Whether a block's row block `j` (its tiling `tl`) has its A copied.
            let copied = |g: &Rows<'_, T>, tl: &Tiling| packs(g) && tl.end > tl.i0;
            if any_packs {
                for (g, buf) in blocks.iter().zip(apack.chunks_exact_mut(MB * KB)) {
                    if let Some(tl) = tiling(g).filter(|tl| copied(g, tl)) {
                        pack_a(g, &tl, &ks, buf);
                    }
                }
            }
            // The copy of block `n`'s row block `j`, from the tiling the tile loop already has.
            let packed = |n: usize, g: &Rows<'_, T>, tl: &Tiling| {
                copied(g, tl).then(|| PackedA {
                    a: &apack[n * MB * KB..][..(tl.end - tl.i0) * ks.len()],
                    i0: tl.i0,
                    ld: tl.end - tl.i0,
                    k0: ks.start,
                    kl: ks.len(),
                })
            };
            let tiles: usize = blocks.iter().filter_map(tiling).map(|t| t.tiles).sum();
            let tiles = tiles * shape.across();
            for i in 0..panels.len() {
                let q = order.nth(&panels, i);
                let mut t = 0;
                let next = if streamed && i + 1 < panels.len() {
                    Prefetch::new(b, order.nth(&panels, i + 1), ks.clone(), tiles)
                } else {
                    Prefetch::none()
                };
                // Narrow tiles take the panel's vectors one after another, each over every
                // block's rows, so that its quarter of the panel's slice of B stays in cache.
                for v in 0..shape.across() {
                    for (n, g) in blocks.iter_mut().enumerate() {
                        if let Some(tl) = tiling(g) {
                            let fresh = set && g.bias.is_none();
                            let packed = packed(n, g, &tl);
                            let ops = &mut Operands {
                                g,
                                b,
                                out,
                                fresh,
                                packed,
                            };
                            let at = (q, v, t, next);
                            match (shape, streamed) {
                                (Tiles::Wide, true) => {
                                    panel_tiles::<T, NV, true>(ops, &tl, at, &ks)
                                }
                                (Tiles::Wide, false) => {
                                    panel_tiles::<T, NV, false>(ops, &tl, at, &ks)
                                }
                                (Tiles::Narrow, true) => {
                                    panel_tiles::<T, 1, true>(ops, &tl, at, &ks)
                                }
                                (Tiles::Narrow, false) => {
                                    panel_tiles::<T, 1, false>(ops, &tl, at, &ks)
                                }
                            }
                            t += tl.tiles;
                        }
                    }
                }
            }
            for g in blocks.iter_mut() {
                match tiling(g) {
                    Some(tl) if tl.single => {
                        let fresh = set && g.bias.is_none();
                        let ops = &mut Operands {
                            g,
                            b,
                            out,
                            fresh,
                            packed: None,
                        };
                        match shape {
                            Tiles::Wide => {
                                single_row(ops, tl.end, panels.clone(), ks.clone(), order)
                            }
                            Tiles::Narrow => {
                                single_row_narrow(ops, tl.end, panels.clone(), ks.clone(), order)
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The order of the loops over row blocks of `A` and blocks of k ([`LoopOrder::current`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoopOrder {
    /// Row blocks outside: each row block's `C` stays in cache through every block of k, and
    /// all of `B` is read again for each row block.
    RowsOuter,
    /// Blocks of k outside: each slice of `B` is read by every row block, and `C` is stored and
    /// loaded again between slices (through memory when it is megabytes).
    KOuter,
}

thread_local! {
    static ORDER_FORCED: std::cell::Cell<Option<LoopOrder>> = const { std::cell::Cell::new(None) };
}

impl LoopOrder {
    /// The order for a packed `B` of `b_bytes` on a CPU with `l2` bytes of L2 per core: rows
    /// outside while `B` takes at most five eighths of the L2, so that reading it again for
    /// each row block costs what the other order's slices cost; else k outside (a `B` streamed
    /// from L3 once per row block would cost more than `C`'s trips).
    ///
    /// One thread, f32, alternating runs, the products of the medium and large steps:
    ///
    /// - Intel Xeon, family 6 model 207 (2 MiB L2), best of 15 runs, % of the FMA peak with k
    ///   outside / rows outside: 3200x1024x256 (the `dX` of a medium LSTM, `B` 1 MiB) 81.4 /
    ///   87.0, 3200x768x256 82.2 / 87.9, 3200x256x256 (an input projection) 87.1 / 89.1;
    ///   6400x512x2048 (`B` 4 MiB) 75.2 / 76.6, kept k outside.
    /// - Intel Xeon, family 6 model 106 (1.25 MiB L2), rate with rows outside / k outside,
    ///   median of 7 rounds (range): 3200x768x256 (`B` 768 KiB, 60 % of the L2) 1.10
    ///   (1.05-1.13, rows outside faster in every round); 3200x1024x256 (80 %) 0.99, 96x1024x256
    ///   0.97, 64x1024x256 0.98, 64x2048x512 (`B` 4 MiB) 0.99 (rounds 0.6-1.5 apart on this
    ///   shared machine). Half the L2, the bound before, left 768 KiB with k outside.
    /// - AMD Zen 3 (512 KiB L2), Zen 5 (1 MiB) and the Intel model 207 (2 MiB): no packed `B`
    ///   of the benchmark shapes or of the character model (128 KiB to 4 MiB) lies between
    ///   half and five eighths of their L2 (256-320 KiB, 512-640 KiB, 1-1.25 MiB), so the
    ///   order there is the one measured before.
    pub(crate) fn choose(b_bytes: usize, l2: usize) -> LoopOrder {
        if b_bytes.saturating_mul(8) <= l2.saturating_mul(5) {
            LoopOrder::RowsOuter
        } else {
            LoopOrder::KOuter
        }
    }

    /// The order for a packed `B` of `b_bytes` on this CPU: the one the tests force on this
    /// thread, else the one the environment variable `RECUR_LOOP_ORDER` names (`rows` or `k`,
    /// read once; for measuring one order against the other), else [`LoopOrder::choose`]'s for
    /// one core's L2 as the CPU reports it (1 MiB where it does not, and under Miri).
    pub(crate) fn current(b_bytes: usize) -> LoopOrder {
        if let Some(o) = ORDER_FORCED.with(|c| c.get()) {
            return o;
        }
        static FROM_ENV: std::sync::OnceLock<Option<LoopOrder>> = std::sync::OnceLock::new();
        let named = FROM_ENV.get_or_init(|| {
            let names = [("rows", LoopOrder::RowsOuter), ("k", LoopOrder::KOuter)];
            crate::cpu::env_choice("RECUR_LOOP_ORDER", &names)
        });
        if let Some(o) = *named {
            return o;
        }
        static L2: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let l2 = *L2.get_or_init(|| {
            let reported = if cfg!(miri) {
                None
            } else {
                crate::cpu::CpuInfo::get().caches.l2
            };
            reported.unwrap_or(STREAMED_BYTES)
        });
        LoopOrder::choose(b_bytes, l2)
    }

    /// Runs `f` with this thread's products in order `self` (the tests run both orders on any
    /// machine this way).
    #[cfg(test)]
    pub(crate) fn forced<R>(self, f: impl FnOnce() -> R) -> R {
        let before = ORDER_FORCED.with(|c| c.replace(Some(self)));
        let out = f();
        ORDER_FORCED.with(|c| c.set(before));
        out
    }
}

/// Whether the tiles of `shape` read an `A` stored so from a copy of each cache block
/// ([`PackedA`]) in a product `width` columns wide: [`copies_a`]'s rule, unless the
/// environment variable `RECUR_COPY_A` says `1` (copy every column-major `A`) or `0` (none),
/// read once, for measuring one against the other.
fn packs_a<T: SimdFloat>(shape: Tiles, storage: AStorage, width: usize) -> bool {
    let AStorage::ColMajor { ld } = storage else {
        return false;
    };
    static FROM_ENV: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let named = FROM_ENV
        .get_or_init(|| crate::cpu::env_choice("RECUR_COPY_A", &[("1", true), ("0", false)]));
    let panels = width.div_ceil(panel::<T>());
    named.unwrap_or_else(|| copies_a(shape, ld * std::mem::size_of::<T>(), panels))
}

/// The rule of [`packs_a`] for a column-major `A` whose columns lie `ld_bytes` apart, read by
/// `panels` panels of `B`: narrow tiles copy from 2 KiB apart; wide tiles from 4 KiB, or from
/// 2 KiB where more than one panel reads each copy.
///
/// There each step of k that a tile reads lies in a page of its own, and 4 KiB apart they
/// all fall in one set of L1: a weight gradient `dG^T X` of an LSTM at `H = 256` (`ld` = 1024
/// f32) ran at about 64 % of the FMA peak against 85 % with `A` stored by rows.
///
/// - Narrow tiles, AVX2 on AMD Zen 3, one thread, f32, best of 3 alternating runs, % of the
///   peak before / after: 1024x6400x256 (`ld` 1024) 64 / 69, 1024x6400x128 64 / 69,
///   1024x640x256 68 / 75, 2048x3200x512 (`ld` 2048) 51 / 72, 2048x3200x64 58 / 62;
///   1024x6400x64 unchanged (62). At `ld` = 768 (3 KiB apart, a GRU at `H = 256`) the product
///   alone was unchanged (70 / 69), while the GRU's medium training step gained 1.16x with the
///   copy.
/// - Wide tiles, AVX-512 on an Intel Xeon family 6 model 106 (48 KiB L1d), one thread, f32,
///   5 alternating runs, rate copied / in place (`m x n x k`, the weight gradients of the
///   benchmark's and the character model's shards): 4 KiB apart, 1024x256x1600 1.22,
///   1024x256x3200 1.20, 1024x64x1600 1.05; 8 KiB apart, 2048x512x1600 1.33, 2048x256x1600
///   1.20, 2048x64x1600 1.09; 3 KiB apart, 768x256x3200 1.13 but 768x64x1600 0.98; 2 KiB
///   apart, 512x256x1024 1.13, 512x128x1024 1.04, but 512x64x1024 0.95 and 512x64x3200 0.94:
///   with one panel the copy is read too few times to pay for itself until the columns are a
///   page apart. Not measured on the AMD Zen 5 or the Intel model 207 (not available), whose
///   L1d has the same 64 sets of 64-byte lines, each 4 KiB apart.
pub(crate) fn copies_a(shape: Tiles, ld_bytes: usize, panels: usize) -> bool {
    match shape {
        Tiles::Narrow => ld_bytes >= 2048,
        Tiles::Wide => ld_bytes >= 4096 || (ld_bytes >= 2048 && panels > 1),
    }
}

/// Copies rows `tl.i0..tl.end` of a column-major `A` over the steps `ks` into the start of
/// `buf` as [`PackedA`] lays them out: each step's rows are contiguous in `A` too.
fn pack_a<T: SimdFloat>(g: &Rows<'_, T>, tl: &Tiling, ks: &std::ops::Range<usize>, buf: &mut [T]) {
    let AStorage::ColMajor { ld: stride } = g.storage else {
        unreachable!("pack_a: only a column-major A is copied (packs_a)");
    };
    let (i0, rows) = (tl.i0, tl.end - tl.i0);
    for (s, col) in ks.clone().zip(buf.chunks_exact_mut(rows)) {
        col.copy_from_slice(&g.a[i0 + s * stride..][..rows]);
    }
}

/// How rows `i0..min(i0 + MB, m)` are cut into register tiles of `mr` rows ([`Tiles::rows`]):
/// whole tiles up to `full`; a remainder of fewer rows than [`Tiles::min_rows`] makes the last
/// `mr + r` rows two tiles of about half each (a lone row would stream every panel of B once
/// more, a tile of 2 narrow rows keeps too few FMAs in flight, and a tile of more than `mr` rows
/// leaves the compiler too few registers), other remainders take one tile of `min_rows` to
/// `mr - 1` rows, up to `end`. Only a block of one row (`single`) is left for the single-row
/// path, row `end`.
pub(super) struct Tiling {
    pub(super) i0: usize,
    pub(super) full: usize,
    pub(super) end: usize,
    pub(super) single: bool,
    pub(super) mr: usize,
    /// Register tiles by each panel, or by each vector of it for narrow tiles (the single row
    /// not counted).
    pub(super) tiles: usize,
}

impl Tiling {
    pub(super) fn new(i0: usize, m: usize, shape: Tiles) -> Self {
        let (mr, min_rows) = (shape.rows(), shape.min_rows());
        let i1 = (i0 + MB).min(m);
        let len = i1 - i0;
        let single = len == 1;
        let split = len > mr && !len.is_multiple_of(mr) && len % mr < min_rows;
        let full = i0 + (len / mr - usize::from(split)) * mr;
        let end = i1 - usize::from(single);
        let tiles = (full - i0) / mr + (end - full).div_ceil(mr);
        Tiling {
            i0,
            full,
            end,
            single,
            mr,
            tiles,
        }
    }
}

/// Row `i` by every panel of `panels`, up to four panels at a time, in `order`.
///
/// Exactly four panels run as two tiles of two: a single tile of four would read `B` in the
/// same order whichever the sweep, and a `B` about as large as L2 then misses all the way
/// through at every step; in two halves taken in alternate order, each step starts on the half
/// the previous one read last. This shortens the product both for a `B` of about L2's size
/// (the backward `W_hh` of an LSTM at `H = 256`) and for a smaller one that stays in L2.
pub(super) fn single_row<T: SimdFloat>(
    g: &mut Operands<'_, '_, T>,
    i: usize,
    panels: std::ops::Range<usize>,
    ks: std::ops::Range<usize>,
    order: Sweep,
) {
    let none = Prefetch::none();
    if panels.len() == 4 {
        let (a, b) = (panels.start, panels.start + 2);
        let (first, second) = match order {
            Sweep::Ascending => (a, b),
            Sweep::Descending => (b, a),
        };
        tile::<T, 1, 2, NV, false>(g, i, first, 0, ks.clone(), none);
        tile::<T, 1, 2, NV, false>(g, i, second, 0, ks, none);
        return;
    }
    if order == Sweep::Descending {
        let mut q = panels.end;
        while q >= panels.start + 4 {
            q -= 4;
            tile::<T, 1, 4, NV, false>(g, i, q, 0, ks.clone(), none);
        }
        while q >= panels.start + 2 {
            q -= 2;
            tile::<T, 1, 2, NV, false>(g, i, q, 0, ks.clone(), none);
        }
        if q > panels.start {
            tile::<T, 1, 1, NV, false>(g, i, panels.start, 0, ks, none);
        }
        return;
    }
    let mut q = panels.start;
    while q + 4 <= panels.end {
        tile::<T, 1, 4, NV, false>(g, i, q, 0, ks.clone(), none);
        q += 4;
    }
    while q + 2 <= panels.end {
        tile::<T, 1, 2, NV, false>(g, i, q, 0, ks.clone(), none);
        q += 2;
    }
    if q < panels.end {
        tile::<T, 1, 1, NV, false>(g, i, q, 0, ks, none);
    }
}

/// Row `i` by every panel of `panels` in `order`, one panel at a time: a [`Tiles::Narrow`]
/// build's single row, whose one panel of accumulators (8 of AVX2's registers) already keeps
/// the FMA units busy; two panels would spill.
pub(super) fn single_row_narrow<T: SimdFloat>(
    g: &mut Operands<'_, '_, T>,
    i: usize,
    panels: std::ops::Range<usize>,
    ks: std::ops::Range<usize>,
    order: Sweep,
) {
    for n in 0..panels.len() {
        let q = order.nth(&panels, n);
        tile::<T, 1, 1, NV, false>(g, i, q, 0, ks.clone(), Prefetch::none());
    }
}

/// The tiles of one row block `tl` of C by panel `q` (by its vectors `v NVT..(v + 1) NVT`):
/// `at = (q, v, t0, next)`, where tile `t` of the block is tile `t0 + t` of all the blocks'
/// tiles by this panel and prefetches `next.part(t0 + t)`.
#[inline(always)]
pub(super) fn panel_tiles<T: SimdFloat, const NVT: usize, const PF: bool>(
    g: &mut Operands<'_, '_, T>,
    tl: &Tiling,
    (q, v, t0, next): (usize, usize, usize, Prefetch),
    ks: &std::ops::Range<usize>,
) {
    let (full, end, mr) = (tl.full, tl.end, tl.mr);
    let v0 = v * NVT;
    let mut t = t0;
    let mut rows = |g: &mut Operands<'_, '_, T>, i: usize, r: usize| {
        let pf = next.part(t);
        let ks = ks.clone();
        match r {
            1 => tile::<T, 1, 1, NVT, PF>(g, i, q, v0, ks, pf),
            2 => tile::<T, 2, 1, NVT, PF>(g, i, q, v0, ks, pf),
            3 => tile::<T, 3, 1, NVT, PF>(g, i, q, v0, ks, pf),
            4 => tile::<T, 4, 1, NVT, PF>(g, i, q, v0, ks, pf),
            5 => tile::<T, 5, 1, NVT, PF>(g, i, q, v0, ks, pf),
            _ => tile::<T, 6, 1, NVT, PF>(g, i, q, v0, ks, pf),
        }
        t += 1;
    };
    for i in (tl.i0..full).step_by(mr) {
        rows(g, i, mr);
    }
    match end - full {
        0 => {}
        // `mr + r` rows, `r < min_rows`: two tiles.
        r if r > mr => {
            let first = r.div_ceil(2);
            rows(g, full, first);
            rows(g, full + first, r - first);
        }
        r => rows(g, full, r),
    }
}
