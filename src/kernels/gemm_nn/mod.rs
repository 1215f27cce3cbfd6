//! `C += A B` against a `B` packed once: the per-timestep recurrent product of a few rows
//! (`B = W_hh^T` in forward, `B = W_hh` in backward), and the fused layers' products over all
//! time steps (`X W_ih^T`, `dG W_ih`, and the weight gradients `dG^T X`, `dG^T H`, whose `dG^T`
//! is `dG` read in place by columns, [`AStorage::ColMajor`]).
//!
//! Those used to run on matrixmultiply, which packs both operands at every call; with `B`
//! packed here and `A` read in place, this kernel runs them faster at the small and medium
//! shapes' shards (the weight gradients and the projections), and about as fast at the largest
//! weight gradients, where `dG`'s rows, 8 KiB apart, each lie on a page of their own.
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
//! stack array that was zeroed and filled through memory for every tile, which made the
//! per-step product clearly slower.)
//!
//! Every `C[i][j]` is `C[i][j] + sum_p A[i][p] B[p][j]` accumulated by fused multiply-adds in the
//! order `p = 0, 1, ...`, whichever tile it falls in, so splitting `A` by rows (batch shards)
//! or `B` by panels of columns ([`gemm_packed_acc_cols`], two threads on one small batch) gives
//! bit-identical results.
//!
//! A packed `B` too large to stay in L2 between calls (`W_hh` from `H = 512` in f32) streams
//! from L3 on every call, and the first tile of each panel would wait on it row by row: while a
//! panel's tiles run, they prefetch the next panel's rows into L2, one cache line per step of
//! `k` each, which shortens such products. Smaller packings skip it, as the prefetches would
//! only cost issue slots.

use super::simd::SimdFloat;
use super::sweep::Sweep;

mod packing;
mod prefetch;
#[cfg(test)]
mod tests;
mod tile;
mod tiling;

pub(crate) use packing::stacked_rows;
pub use packing::{PackedB, panel};
pub use tile::Tiles;
use tiling::product_cols;

/// Packings this large or larger are filled by the threads of rayon's pool together: a
/// transposed packing of 1 MiB (`W_hh^T` of an LSTM with `H = 256`) on one thread lies on the
/// critical path of a step whose second thread has nothing else to do then. (At 256 KiB the
/// handoff cost more than it saved.)
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

/// `C = A B` for a block whose `A` is stored by columns ([`AStorage::ColMajor`]), with `B`
/// given as row-major parts of `n` columns stacked along k (as [`PackedB::pack_stacked`] takes
/// them) and packed into `packed` one cache block of k at a time, just before the tiles read
/// that block: a weight gradient `dG^T X`, whose k runs over every time step and row of a
/// shard, then reads `X` from memory once, where packing all of it first wrote it out and
/// read it back again (on an Intel Xeon, family 6 model 207, that pass took 5.6 % of the
/// medium RNN's training step). `packed` needs only `blocked_b_len` values.
///
/// The values are those of `gemm_packed_set_rows` over the whole packing, bit for bit: the
/// tiles store `C` and load it again between blocks of k either way, and every value is
/// accumulated in the order `p = 0, 1, ...`.
///
/// Panics if `block.storage` is not [`AStorage::ColMajor`], if a part is not whole rows of
/// `n`, or if `A` or `C` is shorter than its shape needs.
pub fn gemm_set_blocked_b<T: SimdFloat>(
    block: Rows<'_, T>,
    parts: &[&[T]],
    n: usize,
    packed: &mut PackedB<T>,
) {
    let k = stacked_rows("gemm_set_blocked_b", parts, n);
    let mut slices: Vec<&[T]> = Vec::with_capacity(parts.len());
    blocked_b(block, k, packed, |k0, k1, packed| {
        slices.clear();
        let mut row = 0;
        for part in parts {
            let rows = part.len() / n.max(1);
            let (lo, hi) = (k0.clamp(row, row + rows), k1.clamp(row, row + rows));
            if lo < hi {
                slices.push(&part[(lo - row) * n..(hi - row) * n]);
            }
            row += rows;
        }
        packed.pack_stacked(&slices, n);
    });
}

/// The rows of a `k x n` `B` as runs of rows spaced evenly apart in one buffer: `runs` runs of
/// `rows` rows of `n` values, the first at `src[0]`, each `stride` values after the one before
/// (`k = runs * rows`). A shard's rows of every time step of a layer's input `[T, B, n]` are
/// `runs = T` runs of its `rows` from its first row on, `stride = B n` apart.
#[derive(Clone, Copy, Debug)]
pub struct RowRuns<'a, T> {
    /// The values, from the first run's first row.
    pub src: &'a [T],
    /// Rows per run.
    pub rows: usize,
    /// Values from the start of one run to the start of the next (at least `rows * n`).
    pub stride: usize,
    /// Runs.
    pub runs: usize,
}

/// [`gemm_set_blocked_b`] with `B`'s rows read where they lie, as runs spaced evenly apart
/// ([`RowRuns`]): a shard's weight gradient `dG^T X` packs its rows of every time step of
/// the layer's input in place, where a copy of them into `[T rows, n]` first cost a pass over
/// them (2.4 % of a medium RNN's training step). The values are those of
/// [`gemm_set_blocked_b`] over the runs copied out, bit for bit.
///
/// Panics as [`gemm_set_blocked_b`] does, or if the runs overlap (`stride < rows * n`) or
/// `src` is too short for them.
pub fn gemm_set_blocked_b_runs<T: SimdFloat>(
    block: Rows<'_, T>,
    b: RowRuns<'_, T>,
    n: usize,
    packed: &mut PackedB<T>,
) {
    let RowRuns {
        src,
        rows,
        stride,
        runs,
    } = b;
    let run_len = rows
        .checked_mul(n)
        .expect("gemm_set_blocked_b_runs: shape overflows usize");
    let fits = runs == 0
        || (runs - 1)
            .checked_mul(stride)
            .and_then(|x| x.checked_add(run_len))
            .is_some_and(|end| end <= src.len());
    assert!(
        stride >= run_len || runs < 2,
        "gemm_set_blocked_b_runs: runs of {rows} rows of {n} overlap {stride} values apart"
    );
    assert!(
        fits,
        "gemm_set_blocked_b_runs: {runs} runs of {rows} rows of {n}, {stride} apart, \
         do not fit {} values",
        src.len()
    );
    let k = runs * rows;
    // A block of k touches at most this many runs.
    let mut slices: Vec<&[T]> = Vec::with_capacity(tiling::KB + 2);
    blocked_b(block, k, packed, |k0, k1, packed| {
        slices.clear();
        if let Some(first) = k0.checked_div(rows) {
            for r in first..k1.div_ceil(rows) {
                let (lo, hi) = (
                    k0.max(r * rows) - r * rows,
                    k1.min((r + 1) * rows) - r * rows,
                );
                slices.push(&src[r * stride + lo * n..r * stride + hi * n]);
            }
        }
        packed.pack_stacked(&slices, n);
    });
}

/// The loop of the blocked-`B` products: for each block of k (one at least: a product with
/// no steps of k still sets C), `pack(k0, k1, packed)` packs rows `k0..k1` of `B`, then
/// `C (+)= A B` over them.
fn blocked_b<T: SimdFloat>(
    block: Rows<'_, T>,
    k: usize,
    packed: &mut PackedB<T>,
    mut pack: impl FnMut(usize, usize, &mut PackedB<T>),
) {
    let AStorage::ColMajor { ld } = block.storage else {
        panic!("gemm_set_blocked_b: A must be stored by columns");
    };
    let Rows { m, a, c, bias, .. } = block;
    for k0 in (0..k.max(1)).step_by(tiling::KB) {
        let k1 = (k0 + tiling::KB).min(k);
        pack(k0, k1, packed);
        let n = packed.n();
        let a = a.get(k0 * ld..).unwrap_or(&[]);
        let mut blocks = [Rows {
            m,
            a,
            storage: AStorage::ColMajor { ld },
            c: &mut *c,
            bias: if k0 == 0 { bias } else { None },
        }];
        product_cols(&mut blocks, packed, 0..n, n, Sweep::Ascending, k0 == 0);
    }
}

/// The values a [`PackedB`] for [`gemm_set_blocked_b`] needs (as [`PackedB::packed_len`]):
/// one cache block of k rows of a `k x n` `B` at most.
pub fn blocked_b_len<T: SimdFloat>(k: usize, n: usize) -> usize {
    PackedB::<T>::packed_len(k.min(tiling::KB), n)
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
