//! `C += A B` against a `B` packed once: the per-timestep recurrent product of a few rows
//! (`B = W_hh^T` in forward, `B = W_hh` in backward), and the fused layers' products over all
//! time steps (`X W_ih^T`, `dG W_ih`, and the weight gradients `dG^T X`, `dG^T H`, whose `dG^T`
//! is `dG` read in place by columns, [`AStorage::ColMajor`]).
//!
//! Those used to run on matrixmultiply, which packs both operands at every call; with `B`
//! packed here and `A` read in place, this kernel ran them faster at the small and medium
//! shapes' shards (a weight gradient of `[512, 1024] x [1024, 64 or 128]`: 1.2 to 1.5x; of
//! `[1024, 3200] x [3200, 256]`: 1.07 to 1.1x; the projections 1.06 to 1.27x), and about as fast
//! at `[2048, 1600] x [1600, 512]` (0.97 to 1.0x), where `dG`'s rows, 8 KiB apart, each lie on
//! a page of their own.
//!
//! [`PackedB`] stores `B` (`k x n`) as panels of [`panel`]`::<T>()` columns, each panel `k` rows of
//! contiguous values (the last panel zero-padded), so the kernel streams memory in order instead
//! of striding by `n` (which, for `n` a multiple of 1024, maps every row to the same cache set).
//! Packing costs one pass over `B`, once per sequence rather than once per step.
//!
//! A tile keeps 5 rows of `C` by one panel in registers (2 to 4 for the last rows; a single row by
//! up to four panels), broadcasting one value of `A` per row and step of `k`: no horizontal sums,
//! no allocation. The register tile reads and writes through pointers that its asserts bound
//! once, so its accumulators stay in registers from the loads of `C` to its stores; panels that
//! end past the last column run on a padded copy of their part of `C`. (Indexing `C` by slices
//! per vector, with a clipped vector's path beside the whole one, kept the accumulators in a
//! stack array that was zeroed and filled through memory for every tile: the per-step product
//! ran 1.20-1.31x slower, medians of 41 alternating rounds at 1 to 64 rows.)
//!
//! Every `C[i][j]` is `C[i][j] + sum_p A[i][p] B[p][j]` accumulated by fused multiply-adds in the
//! order `p = 0, 1, ...`, whichever tile it falls in, so splitting `A` by rows (batch shards)
//! or `B` by panels of columns ([`gemm_packed_acc_cols`], two threads on one small batch) gives
//! bit-identical results.
//!
//! A packed `B` too large to stay in L2 between calls (`W_hh` from `H = 512` in f32) streams
//! from L3 on every call, and the first tile of each panel would wait on it row by row: while a
//! panel's tiles run, they prefetch the next panel's rows into L2, one cache line per step of
//! `k` each (measured on 32 x 512 x 2048: 10-17 % faster). Smaller packings skip it, as the
//! prefetches would only cost issue slots.

// Register tiles are fixed-size arrays indexed by row, panel and vector: clearer than iterators.
#![allow(clippy::needless_range_loop)]

use super::aligned::AlignedBuf;
use super::simd::SimdFloat;
use super::sweep::Sweep;

/// Vectors per panel.
const NV: usize = 4;

/// Columns per panel for element type `T`.
pub fn panel<T: SimdFloat>() -> usize {
    NV * T::LANES
}

/// A `k x n` matrix packed in column panels for [`gemm_packed_acc`].
///
/// The values start on a cache-line boundary inside the buffer ([`AlignedBuf`]): the single-row
/// product, bound by the rate at which `B` streams from L2, ran 1.6 to 1.8x slower on values 16
/// bytes off a line. A clone is packed into a buffer of its own, aligned the same way.
#[derive(Debug, Default)]
pub struct PackedB<T> {
    k: usize,
    n: usize,
    buf: AlignedBuf<T>,
}

impl<T: SimdFloat> Clone for PackedB<T> {
    fn clone(&self) -> Self {
        PackedB {
            k: self.k,
            n: self.n,
            buf: self.buf.clone(),
        }
    }
}

impl<T: SimdFloat> PackedB<T> {
    /// An empty packing (0 x 0); fill it with [`PackedB::pack`] or [`PackedB::pack_transposed`].
    pub fn new() -> Self {
        Self::from_buffer(Vec::new())
    }

    /// An empty packing that will reuse `buf`'s memory (its contents do not matter).
    pub fn from_buffer(buf: Vec<T>) -> Self {
        PackedB {
            k: 0,
            n: 0,
            buf: AlignedBuf::from_buffer(buf),
        }
    }

    /// The packing's memory, for reuse.
    pub fn into_buffer(self) -> Vec<T> {
        self.buf.into_buffer()
    }

    /// Rows `k` of the packed matrix.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns `n` of the packed matrix.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The length of a buffer that holds a packing of a `k x n` matrix (`n` rounded up to whole
    /// panels, and room to align the values), so a buffer for [`PackedB::from_buffer`] can be
    /// sized to need no growth. Panics if it overflows `usize`.
    pub fn packed_len(k: usize, n: usize) -> usize {
        AlignedBuf::<T>::buffer_len(Self::values_len(k, n))
    }

    /// The number of packed values of a `k x n` matrix: `n` rounded up to whole panels.
    fn values_len(k: usize, n: usize) -> usize {
        let p = panel::<T>();
        // Checked: every later bound on panel offsets, `(q + Q) * k * p` with `q + Q <= panels`,
        // is then free of overflow too.
        n.div_ceil(p)
            .checked_mul(k)
            .and_then(|x| x.checked_mul(p))
            .expect("PackedB: packed size overflows usize")
    }

    /// Sets the shape and makes room for its packed values (stale values may stay: packing
    /// overwrites every value it uses, the padding included).
    fn resize(&mut self, k: usize, n: usize) {
        self.k = k;
        self.n = n;
        self.buf.resize(Self::values_len(k, n));
    }

    /// The packed values: `n.div_ceil(panel)` panels of `k` rows of `panel` values.
    fn values(&self) -> &[T] {
        self.buf.values()
    }

    /// The packed values, to be written.
    fn values_mut(&mut self) -> &mut [T] {
        self.buf.values_mut()
    }

    /// Runs `fill(q, values)` for every panel `q` of the packing: on rayon's pool, a panel a
    /// task, when the packing is [`PARALLEL_PACK_BYTES`] or more and the pool has more than one
    /// thread (each panel's values are the same either way).
    fn fill_panels(&mut self, fill: impl Fn(usize, &mut [T]) + Sync) {
        let len = (self.k * panel::<T>()).max(1);
        let values = self.values_mut();
        let bytes = std::mem::size_of_val(values);
        if bytes >= PARALLEL_PACK_BYTES && rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            values
                .par_chunks_exact_mut(len)
                .enumerate()
                .for_each(|(q, pd)| fill(q, pd));
        } else {
            for (q, pd) in values.chunks_exact_mut(len).enumerate() {
                fill(q, pd);
            }
        }
    }

    /// Packs `b`, a row-major `k x n` matrix. Panics if `b` is shorter than `k * n`.
    pub fn pack(&mut self, b: &[T], k: usize, n: usize) {
        let len = k
            .checked_mul(n)
            .expect("PackedB: packed size overflows usize");
        assert!(b.len() >= len, "PackedB::pack: buffer too small");
        self.pack_stacked(&[&b[..len]], n);
    }

    /// Packs `[b_1; b_2; ...]`, row-major matrices of `n` columns (`b_i.len() / n` rows each)
    /// stacked along k: the rows of `b_1`, then of `b_2`, and so on. Panics if `n` is zero while
    /// a part is not empty, or a part's length is not a multiple of `n`.
    pub fn pack_stacked(&mut self, parts: &[&[T]], n: usize) {
        assert!(
            parts.iter().all(|b| if n == 0 {
                b.is_empty()
            } else {
                b.len() % n == 0
            }),
            "PackedB::pack_stacked: a part is not whole rows of {n}"
        );
        let k = parts.iter().map(|b| b.len() / n.max(1)).sum();
        self.resize(k, n);
        let p = panel::<T>();
        self.fill_panels(|q, pd| {
            let (j0, w) = (q * p, p.min(n - q * p));
            let rows = parts.iter().flat_map(|b| b.chunks_exact(n.max(1)));
            for (row, out) in rows.zip(pd.chunks_exact_mut(p)) {
                out[..w].copy_from_slice(&row[j0..j0 + w]);
                out[w..].fill(T::default());
            }
        });
    }

    /// Packs `w^T`, where `w` is a row-major `n x k` matrix (a weight in `[out, in]` layout), so
    /// that `A B = A w^T`. Panics if `w` is shorter than `n * k`.
    pub fn pack_transposed(&mut self, w: &[T], n: usize, k: usize) {
        self.pack_transposed_stacked(&[(w, k)], n);
    }

    /// Packs `[w_1^T; w_2^T; ...]`, the transposes of weights `w_i` (row-major `n x k_i`, the
    /// same `n` outputs) stacked along k, `k = k_1 + k_2 + ...`: with `A = [a_1 a_2 ...]`,
    /// `A B = a_1 w_1^T + a_2 w_2^T + ...` in one product, each value accumulated over the
    /// parts in order, as the products one after another onto the same `C` would. Panics if a
    /// `w_i` is shorter than `n * k_i`.
    pub fn pack_transposed_stacked(&mut self, parts: &[(&[T], usize)], n: usize) {
        let k = parts
            .iter()
            .try_fold(0usize, |k, &(_, ki)| k.checked_add(ki))
            .expect("PackedB: packed size overflows usize");
        self.resize(k, n);
        for &(w, ki) in parts {
            assert!(
                w.len() >= n * ki,
                "PackedB::pack_transposed: buffer too small"
            );
        }
        let (p, l) = (panel::<T>(), T::LANES);
        self.fill_panels(|q, pd| {
            let (j0, wd) = (q * p, p.min(n - q * p));
            let mut rows = pd;
            for &(w, ki) in parts {
                let part;
                (part, rows) = rows.split_at_mut(ki * p);
                // A whole panel by blocks of LANES x LANES, each transposed in registers
                // (`SimdFloat::transpose_block`): rows `r..r + LANES` of the packing, columns
                // `g..g + LANES` of the panel, from as many rows of `w`.
                let blocked = if wd == p { ki / l * l } else { 0 };
                for r in (0..blocked).step_by(l) {
                    for g in (0..p).step_by(l) {
                        let src = &w[(j0 + g) * ki + r..];
                        T::transpose_block(src, ki, &mut part[r * p + g..], p);
                    }
                }
                // The rest value by value: contiguous writes, the reads walking `wd` rows of
                // `w` side by side.
                for (r, out) in part.chunks_exact_mut(p).enumerate().skip(blocked) {
                    for (jj, o) in out[..wd].iter_mut().enumerate() {
                        *o = w[(j0 + jj) * ki + r];
                    }
                    out[wd..].fill(T::default());
                }
            }
        });
    }
}

/// Packings this large or larger are filled by the threads of rayon's pool together: a
/// transposed packing of 1 MiB (`W_hh^T` of an LSTM with `H = 256`) took 100 us on one thread,
/// on the critical path of a step whose second thread had nothing else to do then. (At 256 KiB
/// the handoff cost more than it saved.)
pub const PARALLEL_PACK_BYTES: usize = 1 << 20;

/// `C += A B` with `A` `m x k` and `C` `m x n` row-major, `B` packed (`k x n`).
///
/// Panics if `A` or `C` is shorter than its shape needs.
pub fn gemm_packed_acc<T: SimdFloat>(m: usize, a: &[T], b: &PackedB<T>, c: &mut [T]) {
    gemm_packed_acc_rows(
        &mut [Rows {
            m,
            a,
            storage: AStorage::RowMajor,
            c,
            bias: None,
        }],
        b,
    );
}

/// How a block's `A` (`m x k`) is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AStorage {
    /// Row by row: value `(i, s)` at `a[i * k + s]`, `m * k` values.
    #[default]
    RowMajor,
    /// Column by column, `ld >= m` apart: value `(i, s)` at `a[s * ld + i]`, so that `A` is the
    /// transpose of a row-major `k x ld` matrix read in place (a weight gradient's `dG^T`,
    /// with `dG` `[rows, G*H]`): `(k - 1) * ld + m` values.
    ColMajor {
        /// Values between the starts of two columns.
        ld: usize,
    },
}

impl AStorage {
    /// The offsets between rows and between columns of `A`, for `k` columns.
    fn strides(self, k: usize) -> (usize, usize) {
        match self {
            AStorage::RowMajor => (k, 1),
            AStorage::ColMajor { ld } => (1, ld),
        }
    }

    /// Whether `len` values hold an `m x k` `A` stored so (any length does for no values).
    fn fits(self, m: usize, k: usize, len: usize) -> bool {
        if m == 0 || k == 0 {
            return true;
        }
        let (rs, cs) = self.strides(k);
        let ld_ok = match self {
            AStorage::RowMajor => true,
            AStorage::ColMajor { ld } => ld >= m,
        };
        // The last value, (m - 1, k - 1), is within `len`; checked, so no size wraps around.
        let last = (m - 1)
            .checked_mul(rs)
            .and_then(|x| (k - 1).checked_mul(cs).and_then(|y| x.checked_add(y)));
        ld_ok && last.is_some_and(|l| l < len)
    }
}

/// One block of rows of a product against a packed `B`: `A` `m x k` (row-major unless
/// `storage` says otherwise) and `C` `m x n`, row-major.
#[derive(Debug)]
pub struct Rows<'a, T> {
    /// Rows in the block.
    pub m: usize,
    /// `A`, at least `m * k` values (row-major; see [`AStorage`] for the other layout).
    pub a: &'a [T],
    /// How `A` is laid out in `a`.
    pub storage: AStorage,
    /// `C`, at least `m * n` values.
    pub c: &'a mut [T],
    /// A row of `n` values added to every row of `C` before the product: `C + bias + A B`,
    /// the products accumulated onto `C + bias` (as if `bias` had been added to `C` first).
    pub bias: Option<&'a [T]>,
}

impl<T> Rows<'_, T> {
    /// A block of no rows (a placeholder in a fixed-size array of blocks).
    pub fn empty() -> Self {
        Rows {
            m: 0,
            a: &[],
            storage: AStorage::RowMajor,
            c: &mut [],
            bias: None,
        }
    }
}

/// `C += A B` for several blocks of rows, each with its own `A` and `C`, against one packed
/// `B`: the same values as [`gemm_packed_acc`] on each block alone, but every slice of `B`
/// brought into cache serves the rows of all blocks (the batch shards a thread steps together
/// read `W_hh` once per step instead of once per shard).
///
/// Panics if a block's `A` or `C` is shorter than its shape needs.
pub fn gemm_packed_acc_rows<T: SimdFloat>(blocks: &mut [Rows<'_, T>], b: &PackedB<T>) {
    gemm_packed_acc_cols(blocks, b, 0..b.n, b.n, Sweep::Ascending);
}

/// `C = A B` (`C = bias + A B` for a block with a bias) for several blocks of rows, as
/// [`gemm_packed_acc_rows`] computes `C += A B` onto a `C` of zeros, bit for bit, without
/// reading `C`'s values before the call: the register tiles start their first block over k
/// from zero instead of loading it, and no pass zeroes `C` first.
///
/// Panics as [`gemm_packed_acc_rows`] does.
pub fn gemm_packed_set_rows<T: SimdFloat>(blocks: &mut [Rows<'_, T>], b: &PackedB<T>) {
    product_cols(blocks, b, 0..b.n, b.n, Sweep::Ascending, true);
}

/// [`gemm_packed_set_rows`] for one block: `C = A B`, `A` `m x k` row-major.
pub fn gemm_packed_set<T: SimdFloat>(m: usize, a: &[T], b: &PackedB<T>, c: &mut [T]) {
    gemm_packed_set_rows(
        &mut [Rows {
            m,
            a,
            storage: AStorage::RowMajor,
            c,
            bias: None,
        }],
        b,
    );
}

/// Columns `cols` of `C += A B` for several blocks of rows, as [`gemm_packed_acc_rows`]: each
/// block's `C` holds only those columns, row `i` at `c[i * ldc..]`, and its `bias` (if any) is
/// still a whole row of `n` values. Every value is the one the whole product gives, bit for bit,
/// so the columns of one product can be split between threads, each its own `cols` and `C`;
/// the panels are visited in `order` ([`Sweep`]), which changes no value either.
///
/// Panics if `cols` does not start on a panel boundary ([`panel`]) or ends past `n`, if
/// `ldc < cols.len()`, or if a block's `A` or `C` is shorter than its shape needs.
pub fn gemm_packed_acc_cols<T: SimdFloat>(
    blocks: &mut [Rows<'_, T>],
    b: &PackedB<T>,
    cols: std::ops::Range<usize>,
    ldc: usize,
    order: Sweep,
) {
    product_cols(blocks, b, cols, ldc, order, false);
}

/// [`gemm_packed_acc_cols`], or with `set` [`gemm_packed_set_rows`] over columns `cols`.
fn product_cols<T: SimdFloat>(
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

/// The loops of [`gemm_packed_acc_cols`] over validated operands; with `set`, the blocks
/// without a bias start from zero instead of from `C`.
fn products<T: SimdFloat>(
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
    // Cache blocking for large products: a block of KB steps of k by MB rows of each A stays in
    // L2 while each panel's KB x PANEL slice of B is reused from L1 by every tile of the block.
    // Splitting k only stores and reloads C between blocks (exact), so the accumulation order
    // of every element is unchanged.
    // Fewer rows than a tile reuse no slice of B from L1: no k blocks, C loaded once.
    let streamed = k * width * std::mem::size_of::<T>() > STREAMED_BYTES;
    let kb = if rows < MR { k } else { KB };
    let row_blocks = blocks.iter().map(|g| g.m.div_ceil(MB)).max().unwrap_or(0);
    for k0 in (0..k).step_by(kb) {
        let ks = k0..(k0 + kb).min(k);
        for j in 0..row_blocks {
            // Row block `j` of every block of rows that has one.
            let tiling = |g: &Rows<'_, T>| (j * MB < g.m).then(|| Tiling::new(j * MB, g.m));
            let tiles: usize = blocks.iter().filter_map(tiling).map(|t| t.tiles).sum();
            for i in 0..panels.len() {
                let q = order.nth(&panels, i);
                let mut t = 0;
                let next = if streamed && i + 1 < panels.len() {
                    Prefetch::new(b, order.nth(&panels, i + 1), ks.clone(), tiles)
                } else {
                    Prefetch::none()
                };
                for g in blocks.iter_mut() {
                    if let Some(tl) = tiling(g) {
                        let fresh = set && g.bias.is_none();
                        let ops = &mut Operands { g, b, out, fresh };
                        if streamed {
                            panel_tiles::<T, true>(ops, &tl, q, ks.clone(), next, t);
                        } else {
                            panel_tiles::<T, false>(ops, &tl, q, ks.clone(), next, t);
                        }
                        t += tl.tiles;
                    }
                }
            }
            // A block of a single row (B = 1) takes up to four panels at a time: 16
            // independent accumulators instead of 4 keep the FMA units busy.
            for g in blocks.iter_mut() {
                match tiling(g) {
                    Some(tl) if tl.single => {
                        let fresh = set && g.bias.is_none();
                        let ops = &mut Operands { g, b, out, fresh };
                        single_row(ops, tl.end, panels.clone(), ks.clone(), order);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// How rows `i0..min(i0 + MB, m)` are cut into register tiles: tiles of [`MR`] rows up to
/// `full`; a remainder of one row makes the last MR + 1 rows two tiles of 3 (a lone row would
/// stream every panel of B once more, and a tile of 6 rows leaves the compiler too few
/// registers), other remainders take one tile of 2 to 4 rows, up to `end`. Only a block of one
/// row (`single`) is left for the single-row path, row `end`.
struct Tiling {
    i0: usize,
    full: usize,
    end: usize,
    single: bool,
    /// Register tiles by each panel (the single row not counted).
    tiles: usize,
}

impl Tiling {
    fn new(i0: usize, m: usize) -> Self {
        let i1 = (i0 + MB).min(m);
        let len = i1 - i0;
        let single = len == 1;
        let split = len > MR && len % MR == 1;
        let full = i0 + (len / MR - usize::from(split)) * MR;
        let end = i1 - usize::from(single);
        let tiles = (full - i0) / MR + (end - full).div_ceil(MR);
        Tiling {
            i0,
            full,
            end,
            single,
            tiles,
        }
    }
}

/// Row `i` by every panel of `panels`, up to four panels at a time, in `order`.
///
/// Exactly four panels run as two tiles of two: a single tile of four would read `B` in the
/// same order whichever the sweep, and a `B` about as large as L2 then misses all the way
/// through at every step; in two halves taken in alternate order, each step starts on the half
/// the previous one read last. (1024 x 256 f32, 1 MiB, the backward `W_hh` of an LSTM at
/// H = 256: 5.7 to 5.9 us a product against 6.8 to 7.2; 512 x 256, in L2: 2.2 against 2.4.)
fn single_row<T: SimdFloat>(
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
        tile::<T, 1, 2, false>(g, i, first, ks.clone(), none);
        tile::<T, 1, 2, false>(g, i, second, ks, none);
        return;
    }
    if order == Sweep::Descending {
        let mut q = panels.end;
        while q >= panels.start + 4 {
            q -= 4;
            tile::<T, 1, 4, false>(g, i, q, ks.clone(), none);
        }
        while q >= panels.start + 2 {
            q -= 2;
            tile::<T, 1, 2, false>(g, i, q, ks.clone(), none);
        }
        if q > panels.start {
            tile::<T, 1, 1, false>(g, i, panels.start, ks, none);
        }
        return;
    }
    let mut q = panels.start;
    while q + 4 <= panels.end {
        tile::<T, 1, 4, false>(g, i, q, ks.clone(), none);
        q += 4;
    }
    while q + 2 <= panels.end {
        tile::<T, 1, 2, false>(g, i, q, ks.clone(), none);
        q += 2;
    }
    if q < panels.end {
        tile::<T, 1, 1, false>(g, i, q, ks, none);
    }
}

/// The tiles of one row block `tl` of C by panel `q`; its tile `t` is tile `t0 + t` of all
/// the blocks' tiles by this panel, and prefetches `next.part(t0 + t)`.
#[inline(always)]
fn panel_tiles<T: SimdFloat, const PF: bool>(
    g: &mut Operands<'_, '_, T>,
    tl: &Tiling,
    q: usize,
    ks: std::ops::Range<usize>,
    next: Prefetch,
    t0: usize,
) {
    let (full, end) = (tl.full, tl.end);
    let mut t = 0;
    for i in (tl.i0..full).step_by(MR) {
        tile::<T, MR, 1, PF>(g, i, q, ks.clone(), next.part(t0 + t));
        t += 1;
    }
    let pf = next.part(t0 + t);
    match end - full {
        0 => {}
        2 => tile::<T, 2, 1, PF>(g, full, q, ks, pf),
        3 => tile::<T, 3, 1, PF>(g, full, q, ks, pf),
        4 => tile::<T, 4, 1, PF>(g, full, q, ks, pf),
        // `MR + 1` rows.
        _ => {
            tile::<T, 3, 1, PF>(g, full, q, ks.clone(), pf);
            tile::<T, 3, 1, PF>(g, full + 3, q, ks, next.part(t0 + t + 1));
        }
    }
}

/// Above this size a packed B is taken not to stay in L2 between calls (L2 is 1-2 MiB per core
/// on current x86 CPUs, shared with the rest of a step's data): its tiles then prefetch.
pub const STREAMED_BYTES: usize = 1 << 20;

/// Bytes per cache line, the unit of a prefetch.
const LINE: usize = 64;

/// The cache lines one tile asks for ahead of use: lines `first`, `first + stride`, ... below
/// `lines`, of the contiguous run of B that starts at `base`, one per step of k.
#[derive(Clone, Copy)]
struct Prefetch {
    base: *const u8,
    lines: usize,
    first: usize,
    stride: usize,
}

impl Prefetch {
    fn none() -> Self {
        Prefetch {
            base: std::ptr::null(),
            lines: 0,
            first: 0,
            stride: 1,
        }
    }

    /// Rows `ks` of panel `q` of `b` (none past its last panel), shared by `tiles` tiles.
    fn new<T: SimdFloat>(
        b: &PackedB<T>,
        q: usize,
        ks: std::ops::Range<usize>,
        tiles: usize,
    ) -> Self {
        let p = panel::<T>();
        if q >= b.n.div_ceil(p) {
            return Prefetch::none();
        }
        let start = (q * b.k + ks.start) * p;
        let bytes = ks.len() * p * std::mem::size_of::<T>();
        Prefetch {
            // In bounds: the run `[start, start + ks.len() p)` lies in panel `q` of the values.
            base: b.values()[start..].as_ptr().cast(),
            lines: bytes.div_ceil(LINE),
            first: 0,
            stride: tiles,
        }
    }

    /// The share of tile `t`: every `stride`-th line from line `t`.
    fn part(self, t: usize) -> Self {
        Prefetch { first: t, ..self }
    }

    /// Asks for the line of step `r` (counted from the tile's first step of k), if any.
    #[inline(always)]
    fn at(self, r: usize) {
        let line = self.first + r * self.stride;
        if line < self.lines {
            prefetch_l2(self.base.wrapping_add(line * LINE));
        }
    }
}

/// Hints the CPU to bring the cache line holding `p` into L2. Any address is allowed: a prefetch
/// never faults and changes no value.
#[inline(always)]
fn prefetch_l2(p: *const u8) {
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
const MR: usize = 5;
/// Steps of k per cache block.
const KB: usize = 128;
/// Rows of A per cache block.
const MB: usize = 40;

/// Where a block's `C` holds the product's columns `col0..end`: column `j` of row `i` at
/// `c[i * ldc + j - col0]`.
#[derive(Clone, Copy)]
struct Layout {
    col0: usize,
    end: usize,
    ldc: usize,
}

/// The operands of one product `C += A B`: a block of rows of `A` and `C`; `B` packed.
struct Operands<'r, 'a, T> {
    g: &'r mut Rows<'a, T>,
    b: &'r PackedB<T>,
    out: Layout,
    /// `C` is set, not added to: the first block over k starts from zero, not from `C`.
    fresh: bool,
}

/// Rows `i..i+R` of `C` by panels `q..q+Q`, over the steps `ks` of k; with `PF`, asking for
/// `pf`'s lines as it goes. Panels that end past the product's last column (the zero-padded
/// end of B) run on a padded copy of their part of `C`, so that the register tile itself only
/// ever loads and stores whole vectors.
#[inline(always)]
fn tile<T: SimdFloat, const R: usize, const Q: usize, const PF: bool>(
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
const TILE_VALUES: usize = MR * NV * 16;

/// [`register_tile`] for panels that end past column `out.end`: their columns of `C` up to it
/// are copied into a padded buffer, multiplied there and copied back (the padding's values are
/// discarded; with `zero`, the tile starts from zero and `C` is only written). Only the last
/// panels of a product take this path.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn clipped_tile<T: SimdFloat, const R: usize, const Q: usize>(
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
struct StridedA<'a, T> {
    a: &'a [T],
    strides: (usize, usize),
}

/// The register tile: `C[r][j] += sum_{s in ks} A[r][s] B[s][q p + j]` for rows `r < R` and
/// columns `j < Q p`, with `A[r][s]` as `a` places it and row `r` of `C` at `c[r ldc..]`. The
/// accumulators stay in registers from the loads of `C` to its stores.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn register_tile<T: SimdFloat, const R: usize, const Q: usize, const PF: bool>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::aligned::ALIGN;
    use crate::kernels::gemm::{GemmShape, gemm_reference};
    use crate::kernels::testutil::values;

    #[test]
    fn matches_the_reference_product() {
        let shapes = [
            (1, 1, 1),
            (1, 9, 7),
            (3, 5, 8),
            (4, 32, 9),
            (5, 77, 33),
            (6, 40, 20),
            (11, 70, 33),
            (9, 64, 64),
            (16, 512, 128),
            (130, 70, 600),
            // A single row by groups of four panels, the last group clipped.
            (1, 250, 33),
            // Packings over `STREAMED_BYTES` (f32 and f64), whose tiles prefetch: 5 + 5 + 2
            // rows and 5 + 5 + 3 + 3 rows.
            (12, 520, 600),
            (16, 600, 520),
        ];
        // Under Miri only the first six: the larger ones (the cache-blocked loop order and the
        // prefetching tiles, with the same loads) would take many minutes to interpret.
        let shapes = if cfg!(miri) {
            &shapes[..6]
        } else {
            &shapes[..]
        };
        for &(m, n, k) in shapes {
            for trans in [false, true] {
                let a: Vec<f64> = values(m as u64, m * k, 1.0);
                let b: Vec<f64> = values(n as u64 + 7, n * k, 1.0);
                let c0: Vec<f64> = values(k as u64 + 3, m * n, 1.0);
                let s = GemmShape {
                    m,
                    k,
                    n,
                    trans_a: false,
                    trans_b: trans,
                };
                let mut want = c0.clone();
                gemm_reference(s, 1.0, &a, &b, 1.0, &mut want);
                // A reused buffer full of stale values, longer than the packing: packing must
                // overwrite every value the kernel reads.
                let len = PackedB::<f64>::packed_len(k, n) + 3 * m + 7;
                let mut pb = PackedB::from_buffer(vec![f64::NAN; len]);
                if trans {
                    pb.pack_transposed(&b, n, k);
                } else {
                    pb.pack(&b, k, n);
                }
                let mut got = c0.clone();
                gemm_packed_acc(m, &a, &pb, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-12, "f64 {m}x{n}x{k}: {g} vs {w}");
                }
                let af: Vec<f32> = a.iter().map(|&x| x as f32).collect();
                let bf: Vec<f32> = b.iter().map(|&x| x as f32).collect();
                let mut pf = PackedB::new();
                if trans {
                    pf.pack_transposed(&bf, n, k);
                } else {
                    pf.pack(&bf, k, n);
                }
                let mut gotf: Vec<f32> = c0.iter().map(|&x| x as f32).collect();
                gemm_packed_acc(m, &af, &pf, &mut gotf);
                for (g, w) in gotf.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 1e-4, "f32 {m}x{n}x{k}: {g} vs {w}");
                }
            }
        }
    }

    /// Operands of products over blocks of rows: `B` (`k x n`) and its packing, each block's
    /// `A` and starting `C`, and a bias row.
    struct Case {
        b: Vec<f32>,
        pb: PackedB<f32>,
        a: Vec<Vec<f32>>,
        c0: Vec<Vec<f32>>,
        bias: Vec<f32>,
    }

    impl Case {
        fn new(ms: &[usize], n: usize, k: usize) -> Self {
            let b: Vec<f32> = values(1, k * n, 1.0);
            let mut pb = PackedB::new();
            pb.pack(&b, k, n);
            let per_block = |seed: u64, cols: usize| -> Vec<Vec<f32>> {
                ms.iter()
                    .enumerate()
                    .map(|(i, &m)| values(seed + i as u64, m * cols, 1.0))
                    .collect()
            };
            Case {
                b,
                pb,
                a: per_block(2, k),
                c0: per_block(20, n),
                bias: values(9, n, 1.0),
            }
        }

        /// The blocks over `cs` (each block's `C`), block `biased` adding the bias row.
        fn rows<'a>(
            &'a self,
            cs: &'a mut [Vec<f32>],
            ms: &[usize],
            biased: usize,
        ) -> Vec<Rows<'a, f32>> {
            cs.iter_mut()
                .zip(&self.a)
                .zip(ms)
                .enumerate()
                .map(|(i, ((c, a), &m))| Rows {
                    m,
                    a,
                    storage: AStorage::RowMajor,
                    c,
                    bias: (i == biased).then_some(&self.bias[..]),
                })
                .collect()
        }
    }

    #[test]
    fn blocks_of_rows_match_each_block_alone() {
        // Blocks of 32, 6, 1 and 11 rows (tiles of 5, two of 3, the single-row path, and 5 + 3
        // + 3) over k > KB, and more than MB rows in one block; in f32 a packing over
        // `STREAMED_BYTES` (prefetching tiles) and a small one; a single row by exactly four
        // panels (two tiles of two), the last ragged. Under Miri only small cases.
        let p = panel::<f32>();
        let cases: &[(&[usize], usize, usize)] = if cfg!(miri) {
            &[(&[6, 1, 3], 20, 9), (&[1], 4 * p - 3, 5)]
        } else {
            &[
                (&[32, 6, 1, 11], 600, 520),
                (&[45, 1, 6], 75, 300),
                (&[1], 4 * p - 3, 40),
            ]
        };
        for &(ms, n, k) in cases {
            let case = Case::new(ms, n, k);
            // The second block adds a bias row: the same as adding it to C first.
            let biased = 1;
            let mut alone = case.c0.clone();
            for (i, ((c, a), &m)) in alone.iter_mut().zip(&case.a).zip(ms).enumerate() {
                if i == biased {
                    for row in c.chunks_exact_mut(n) {
                        for (x, &y) in row.iter_mut().zip(&case.bias) {
                            *x += y;
                        }
                    }
                }
                gemm_packed_acc(m, a, &case.pb, c);
            }
            let mut together = case.c0.clone();
            gemm_packed_acc_rows(&mut case.rows(&mut together, ms, biased), &case.pb);
            for (i, (x, y)) in alone.iter().zip(&together).enumerate() {
                for (j, (p, q)) in x.iter().zip(y).enumerate() {
                    assert_eq!(p.to_bits(), q.to_bits(), "{ms:?} block {i} value {j}");
                }
            }
            // Against the reference too: a block that was skipped would still match itself.
            for (i, ((c, a), (&m, c0))) in together
                .iter()
                .zip(&case.a)
                .zip(ms.iter().zip(&case.c0))
                .enumerate()
            {
                let s = GemmShape {
                    m,
                    k,
                    n,
                    trans_a: false,
                    trans_b: false,
                };
                let wide = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| f64::from(x)).collect() };
                let mut want = wide(c0);
                if i == biased {
                    for row in want.chunks_exact_mut(n) {
                        for (x, &y) in row.iter_mut().zip(&case.bias) {
                            *x += f64::from(y);
                        }
                    }
                }
                gemm_reference(s, 1.0, &wide(a), &wide(&case.b), 1.0, &mut want);
                for (g, w) in c.iter().zip(&want) {
                    assert!((f64::from(*g) - w).abs() < 1e-3, "{ms:?}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn column_ranges_match_the_whole_product() {
        // The columns of a product cut into ranges of whole panels, each range computed into a
        // buffer of its own (one with a wider row stride than it needs), in either order of
        // the panels, give the whole product's values bit for bit, bias included; the last
        // panel is ragged. A single row of 7 panels runs groups of 4, 2 and 1; of exactly 4,
        // two groups of 2, whose order the sweep reverses. Under Miri only small cases.
        let p = panel::<f32>();
        let cases: &[(&[usize], usize, usize, &[usize])] = if cfg!(miri) {
            &[(&[6, 1, 3], p + 6, 9, &[p]), (&[1], 4 * p - 3, 5, &[])]
        } else {
            &[
                (&[32, 6, 1, 11], 600, 520, &[2 * p, 7 * p]),
                (&[1], 300, 75, &[2 * p]),
                (&[1], 7 * p - 5, 30, &[]),
                (&[1], 9 * p, 12, &[4 * p]),
            ]
        };
        let orders = [Sweep::Ascending, Sweep::Descending];
        for (&(ms, n, k, cuts), order) in cases.iter().flat_map(|c| orders.map(|o| (c, o))) {
            let case = Case::new(ms, n, k);
            let mut whole = case.c0.clone();
            gemm_packed_acc_rows(&mut case.rows(&mut whole, ms, 0), &case.pb);
            let bounds: Vec<usize> = [0].iter().chain(cuts).chain(&[n]).copied().collect();
            for (r, w) in bounds.windows(2).enumerate() {
                let cols = w[0]..w[1];
                // The middle range keeps 3 values of padding after each row.
                let ldc = cols.len() + if r == 1 { 3 } else { 0 };
                let mut parts: Vec<Vec<f32>> = case
                    .c0
                    .iter()
                    .zip(ms)
                    .map(|(c, &m)| {
                        let mut part = vec![f32::NAN; m * ldc];
                        for (dst, src) in part.chunks_exact_mut(ldc).zip(c.chunks_exact(n)) {
                            dst[..cols.len()].copy_from_slice(&src[cols.clone()]);
                        }
                        part
                    })
                    .collect();
                let mut blocks = case.rows(&mut parts, ms, 0);
                gemm_packed_acc_cols(&mut blocks, &case.pb, cols.clone(), ldc, order);
                for (i, (part, full)) in parts.iter().zip(&whole).enumerate() {
                    for (row, (got, want)) in
                        part.chunks_exact(ldc).zip(full.chunks_exact(n)).enumerate()
                    {
                        for (j, (x, y)) in got.iter().zip(&want[cols.clone()]).enumerate() {
                            let at = cols.start + j;
                            assert_eq!(
                                x.to_bits(),
                                y.to_bits(),
                                "{ms:?} {order:?} block {i} ({row}, {at})"
                            );
                        }
                        // The padding is left alone.
                        assert!(got[cols.len()..].iter().all(|x| x.is_nan()));
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn column_ranges_start_on_a_panel() {
        let (k, n) = (2, 2 * panel::<f32>());
        let mut pb = PackedB::new();
        pb.pack(&vec![1.0f32; k * n], k, n);
        let a = vec![1.0f32; k];
        let mut c = vec![0.0f32; n];
        let mut blocks = [Rows {
            m: 1,
            a: &a,
            storage: AStorage::RowMajor,
            c: &mut c,
            bias: None,
        }];
        gemm_packed_acc_cols(&mut blocks, &pb, 1..n, n, Sweep::Ascending);
    }

    #[test]
    fn a_stored_by_columns_gives_the_row_major_values() {
        // Each block's `A` also stored column by column, `ld` = m + 3 apart (the transpose of a
        // wider row-major matrix, read in place): every value the same bit for bit, over tiles
        // of 5, 3 + 3 and 2 rows, the single-row path and k > KB. Under Miri only small cases.
        let cases: &[(&[usize], usize, usize)] = if cfg!(miri) {
            &[(&[6, 1, 3], 20, 9)]
        } else {
            &[(&[32, 6, 1, 11], 150, 300), (&[45, 2], 64, 130)]
        };
        for &(ms, n, k) in cases {
            let case = Case::new(ms, n, k);
            let mut by_rows = case.c0.clone();
            gemm_packed_acc_rows(&mut case.rows(&mut by_rows, ms, 0), &case.pb);
            // Column s of block i's A at `cols[i][s * (m + 3)..]`; the padding is NaN, which
            // would show in any value that read it.
            let cols: Vec<Vec<f32>> = case
                .a
                .iter()
                .zip(ms)
                .map(|(a, &m)| {
                    let mut t = vec![f32::NAN; k * (m + 3)];
                    for (i, row) in a.chunks_exact(k).enumerate() {
                        for (s, &v) in row.iter().enumerate() {
                            t[s * (m + 3) + i] = v;
                        }
                    }
                    t
                })
                .collect();
            let mut by_cols = case.c0.clone();
            let mut blocks: Vec<Rows<'_, f32>> = by_cols
                .iter_mut()
                .zip(&cols)
                .zip(ms)
                .enumerate()
                .map(|(i, ((c, a), &m))| Rows {
                    m,
                    a,
                    storage: AStorage::ColMajor { ld: m + 3 },
                    c,
                    bias: (i == 0).then_some(&case.bias[..]),
                })
                .collect();
            gemm_packed_acc_rows(&mut blocks, &case.pb);
            for (i, (x, y)) in by_rows.iter().zip(&by_cols).enumerate() {
                for (j, (p, q)) in x.iter().zip(y).enumerate() {
                    assert_eq!(p.to_bits(), q.to_bits(), "{ms:?} block {i} value {j}");
                }
            }
        }
    }

    #[test]
    fn setting_c_equals_adding_onto_zeros() {
        // C full of NaN beforehand, which any value read from it would carry: blocks of 32, 6,
        // 1 and 11 rows (the second with a bias) over k > KB, the last panel ragged (a clipped
        // tile); then no steps of k at all, which sets C to zero or the bias. Under Miri small.
        let cases: &[(&[usize], usize, usize)] = if cfg!(miri) {
            &[(&[6, 1], 20, 9), (&[3], 20, 0)]
        } else {
            &[(&[32, 6, 1, 11], 150, 300), (&[6, 1], 70, 0)]
        };
        for &(ms, n, k) in cases {
            let case = Case::new(ms, n, k);
            let zeros: Vec<Vec<f32>> = ms.iter().map(|&m| vec![0.0; m * n]).collect();
            let mut added = zeros.clone();
            gemm_packed_acc_rows(&mut case.rows(&mut added, ms, 1), &case.pb);
            let mut set: Vec<Vec<f32>> = ms.iter().map(|&m| vec![f32::NAN; m * n]).collect();
            gemm_packed_set_rows(&mut case.rows(&mut set, ms, 1), &case.pb);
            for (i, (x, y)) in added.iter().zip(&set).enumerate() {
                for (j, (p, q)) in x.iter().zip(y).enumerate() {
                    assert_eq!(p.to_bits(), q.to_bits(), "{ms:?} k {k} block {i} value {j}");
                }
            }
        }
        // One block of one row, through the single-block form.
        let case = Case::new(&[1], 70, 40);
        let mut added = vec![0.0f32; 70];
        gemm_packed_acc(1, &case.a[0], &case.pb, &mut added);
        let mut set = vec![f32::NAN; 70];
        gemm_packed_set(1, &case.a[0], &case.pb, &mut set);
        assert_eq!(added, set);
    }

    #[test]
    fn stacked_parts_pack_as_their_rows_in_turn() {
        // Parts of 3, 0 and 5 rows of a ragged width pack as the one matrix of their 8 rows.
        let n = panel::<f32>() + 5;
        let b: Vec<f32> = values(4, 8 * n, 1.0);
        let (mut whole, mut stacked) = (PackedB::new(), PackedB::new());
        whole.pack(&b, 8, n);
        stacked.pack_stacked(&[&b[..3 * n], &[], &b[3 * n..]], n);
        assert_eq!((stacked.k(), stacked.n()), (8, n));
        assert_eq!(whole.values(), stacked.values());
    }

    #[test]
    #[should_panic(expected = "not whole rows")]
    fn stacked_parts_are_whole_rows() {
        PackedB::<f32>::new().pack_stacked(&[&[1.0; 7]], 3);
    }

    #[test]
    #[should_panic(expected = "buffers too small")]
    fn a_stored_by_columns_needs_room_for_its_rows() {
        // `ld` below the rows: columns would overlap.
        let (k, n) = (3, panel::<f32>());
        let mut pb = PackedB::new();
        pb.pack(&vec![1.0f32; k * n], k, n);
        let a = vec![1.0f32; 4 * k];
        let mut c = vec![0.0f32; 4 * n];
        let mut blocks = [Rows {
            m: 4,
            a: &a,
            storage: AStorage::ColMajor { ld: 3 },
            c: &mut c,
            bias: None,
        }];
        gemm_packed_acc_rows(&mut blocks, &pb);
    }

    #[test]
    fn a_transposed_packing_places_every_value() {
        // Whole panels go by blocks transposed in registers, a ragged one and the rows past the
        // last whole block value by value: every value where the definition puts it, the
        // padding zero. Parts of 37 and 16 rows (one of 16 under Miri).
        let p = panel::<f32>();
        let (n, ks): (usize, &[usize]) = if cfg!(miri) {
            (p + 3, &[16])
        } else {
            (2 * p + 7, &[37, 16])
        };
        let ws: Vec<Vec<f32>> = ks
            .iter()
            .enumerate()
            .map(|(i, &ki)| values(i as u64 + 3, n * ki, 1.0))
            .collect();
        let parts: Vec<(&[f32], usize)> = ws
            .iter()
            .map(Vec::as_slice)
            .zip(ks.iter().copied())
            .collect();
        let mut pb = PackedB::new();
        pb.pack_transposed_stacked(&parts, n);
        let k: usize = ks.iter().sum();
        assert_eq!((pb.k(), pb.n()), (k, n));
        let mut row = 0;
        for (w, &ki) in ws.iter().zip(ks) {
            for r in 0..ki {
                for j in 0..n.div_ceil(p) * p {
                    let got = pb.values()[((j / p) * k + row + r) * p + j % p];
                    let want = if j < n { w[j * ki + r] } else { 0.0 };
                    assert_eq!(got.to_bits(), want.to_bits(), "row {} column {j}", row + r);
                }
            }
            row += ki;
        }
    }

    #[test]
    fn stacked_weights_give_the_products_in_turn() {
        // `[x h] [W_ih^T; W_hh^T]` in one product is `x W_ih^T` then `h W_hh^T` onto the same
        // C, bit for bit: a single row and a tile of rows, the last panel ragged.
        let (n, ki, kh) = if cfg!(miri) {
            (20, 3, 5)
        } else {
            (150, 37, 64)
        };
        let w_ih: Vec<f32> = values(1, n * ki, 1.0);
        let w_hh: Vec<f32> = values(2, n * kh, 1.0);
        let mut stacked = PackedB::new();
        stacked.pack_transposed_stacked(&[(&w_ih, ki), (&w_hh, kh)], n);
        assert_eq!((stacked.k(), stacked.n()), (ki + kh, n));
        let (mut pi, mut ph) = (PackedB::new(), PackedB::new());
        pi.pack_transposed(&w_ih, n, ki);
        ph.pack_transposed(&w_hh, n, kh);
        for m in [1, 7] {
            let x: Vec<f32> = values(3, m * ki, 1.0);
            let h: Vec<f32> = values(4, m * kh, 1.0);
            let xh: Vec<f32> = x
                .chunks_exact(ki)
                .zip(h.chunks_exact(kh))
                .flat_map(|(a, b)| a.iter().chain(b).copied())
                .collect();
            let c0: Vec<f32> = values(5, m * n, 1.0);
            let mut in_turn = c0.clone();
            gemm_packed_acc(m, &x, &pi, &mut in_turn);
            gemm_packed_acc(m, &h, &ph, &mut in_turn);
            let mut once = c0.clone();
            gemm_packed_acc(m, &xh, &stacked, &mut once);
            for (j, (a, b)) in in_turn.iter().zip(&once).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{m} rows, value {j}");
            }
        }
    }

    #[test]
    fn packed_values_start_on_a_cache_line() {
        // Small buffers (from the heap's bins) and large ones (mapped pages, 16 bytes past a
        // page boundary with glibc), fresh, reused for another shape and cloned, f32 and f64.
        fn check<T: crate::tensor::Float>(shapes: &[(usize, usize)]) {
            let mut reused = PackedB::<T>::new();
            for &(k, n) in shapes {
                let b: Vec<T> = values(k as u64, k * n, 1.0);
                let buf = vec![T::default(); PackedB::<T>::packed_len(k, n)];
                let start = buf.as_ptr();
                let mut fresh = PackedB::from_buffer(buf);
                fresh.pack(&b, k, n);
                reused.pack_transposed(&b, n, k);
                let copy = reused.clone();
                assert_eq!(copy.values(), reused.values(), "{k}x{n}: clone");
                for pb in [&fresh, &reused, &copy] {
                    let at = pb.values().as_ptr() as usize;
                    if !cfg!(miri) {
                        assert_eq!(at % ALIGN, 0, "{k}x{n}: values at {at:#x}");
                    }
                    assert_eq!(
                        pb.values().len(),
                        n.div_ceil(panel::<T>()) * k * panel::<T>()
                    );
                }
                // A buffer of `packed_len` values is used as it is, whatever its alignment.
                let back = fresh.into_buffer();
                assert_eq!(back.as_ptr(), start, "{k}x{n} grew its buffer");
            }
        }
        // Under Miri (which does not model the allocator's alignment anyway) only small ones.
        let shapes: &[(usize, usize)] = if cfg!(miri) {
            &[(1, 1), (3, 7), (9, 33)]
        } else {
            &[(1, 1), (3, 7), (64, 100), (512, 2048), (256, 1024), (9, 33)]
        };
        check::<f32>(shapes);
        check::<f64>(shapes);
    }

    #[test]
    fn a_row_does_not_depend_on_its_neighbours() {
        // k > KB: the 11-row product (tiles of 5, 3 and 3 rows) is cut into k blocks, a single
        // row is not.
        let (m, n, k) = (11, 75, 300);
        let a: Vec<f32> = values(1, m * k, 1.0);
        let b: Vec<f32> = values(2, n * k, 1.0);
        let mut pb = PackedB::new();
        pb.pack(&b, k, n);
        let mut whole = vec![0.0f32; m * n];
        gemm_packed_acc(m, &a, &pb, &mut whole);
        for i in 0..m {
            let mut one = vec![0.0f32; n];
            gemm_packed_acc(1, &a[i * k..(i + 1) * k], &pb, &mut one);
            for j in 0..n {
                assert_eq!(
                    one[j].to_bits(),
                    whole[i * n + j].to_bits(),
                    "row {i} col {j}"
                );
            }
        }
    }
}
