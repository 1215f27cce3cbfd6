//! The weights as the products read them: `W_hh` packed (or, for a single row, as stored) for
//! each step's product, and the input projection `X W_ih^T` over all time steps with its
//! biases.

use std::ops::Range;

use super::bf16::{self, Bf16Weights};
use crate::kernels::Sweep;
use crate::kernels::bf16::{Bf16Kernel, PackedBf16B};
use crate::kernels::gemm_nn::{
    AStorage, PackedB, Rows, Tiles, gemm_packed_acc_cols, gemm_packed_set, panel,
};
use crate::kernels::gemm_nt::gemm_nt_acc;
use crate::kernels::gemv::{AlignedMatrix, gemv_cols_acc, gemv_rows_acc};
use crate::nn::direction::CellKind;
use crate::tensor::{self, Float};

/// `W_hh` `[G*H, H]` as the per-step products read it.
pub(super) enum RecurrentWeight<T> {
    /// Packed in panels: `W_hh^T` in forward, `W_hh` in backward.
    Packed(PackedB<T>),
    /// For a batch of one row: an aligned copy as stored, made in forward and read again by
    /// the backward (the node's weights do not change in between).
    Stored(AlignedMatrix<T>),
}

/// How a batch of one row reads `W_hh` at each step: packed in panels (`W_hh^T` for forward,
/// `W_hh` again for backward: two packings a sequence) for the packed product's single-row
/// tile, or as stored, in one aligned copy, by the matrix-vector kernels of
/// `kernels::gemv`.
///
/// [`SingleRow::choose`] picks from the register tiles the build uses and the CPU's vendor and
/// L2 ([`crate::cpu::CpuInfo`]); [`SingleRow::forced`] sets the choice on a thread, so that tests
/// run both paths on any machine. Both read the same weights in the same order of
/// multiply-adds per output, so the choice changes the speed, not the values beyond rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SingleRow {
    /// `W_hh` packed for the single-row tile.
    Packed,
    /// `W_hh` read as stored.
    Stored,
}

/// The L2 size taken where the system reports none: the 1 MiB per core of the AVX-512 CPUs
/// these choices were first measured on.
const ASSUMED_L2: usize = 1 << 20;

thread_local! {
    /// The choice forced on this thread by [`SingleRow::forced`], if any.
    static FORCED_SINGLE_ROW: std::cell::Cell<Option<SingleRow>> =
        const { std::cell::Cell::new(None) };
}

impl SingleRow {
    /// The choice for a `W_hh` of `bytes` bytes, given the build's register tiles, the CPU's
    /// vendor (CPUID's string, as [`CpuInfo::vendor`](crate::cpu::CpuInfo::vendor)) and its L2
    /// size per core (`None`: not known). Measured in training steps at `B = 1`, `T = 100`,
    /// `I = 128`, alternating runs:
    ///
    /// - [`Tiles::Narrow`] (AVX2): packed at every size. On AMD Zen 3 (512 KiB L2), one
    ///   thread: a packed `W_hh` of 768 KiB (GRU, `H = 256`) and 1 MiB (LSTM) took 0.92x and
    ///   0.89x the time of the stored one, 3 MiB (GRU, `H = 512`) 0.86-0.98x and 4 MiB (LSTM)
    ///   0.73-0.84x; at two threads 0.74-0.97x for three of the four. The matrix-vector
    ///   kernels' AVX2 tiles (two rows, six vectors) read more values per multiply-add than
    ///   the packed tile, from L2 as from L3.
    /// - [`Tiles::Wide`] (AVX-512) on an Intel CPU: as stored up to half the L2, packed above.
    ///   On an Intel Xeon (family 6 model 207, 2 MiB L2), medians of three rounds, stored /
    ///   packed time at one / two threads: 0.56-1 MiB (LSTM `H` = 192, 256; GRU 256; RNN 512)
    ///   0.94-0.99 / 0.90-0.95; 1.17 MiB (GRU 320) 0.96 / 1.01; 1.56-2.3 MiB (LSTM 320, 384;
    ///   GRU 384, 448; RNN 768) 1.04-1.39 / 1.06-1.09; 3-4 MiB (LSTM 448, 512; GRU 512)
    ///   1.19-1.28 / 1.08-1.55. (Past 1 MiB the packed product prefetches the next panel in
    ///   software; the matrix-vector kernels leave it to the hardware's prefetchers.)
    /// - [`Tiles::Wide`] on other CPUs: packed while `W_hh` fits in L2, where the packed tile
    ///   read it 1.1-1.9x faster than the stored kernels (AMD Zen 5, 1 MiB L2); larger, it
    ///   streams from L3 at every step either way, and packing it twice a sequence only costs.
    pub fn choose(bytes: usize, tiles: Tiles, vendor: &str, l2: Option<usize>) -> SingleRow {
        let l2 = l2.unwrap_or(ASSUMED_L2);
        match tiles {
            Tiles::Narrow => SingleRow::Packed,
            Tiles::Wide if vendor == "GenuineIntel" => {
                if bytes <= l2 / 2 {
                    SingleRow::Stored
                } else {
                    SingleRow::Packed
                }
            }
            Tiles::Wide if bytes > l2 => SingleRow::Stored,
            Tiles::Wide => SingleRow::Packed,
        }
    }

    /// The choice on this thread: [`SingleRow::forced`]'s, else the one the environment
    /// variable `RECUR_SINGLE_ROW` names (`packed` or `stored`, read once; for measuring one
    /// against the other), else [`SingleRow::choose`]'s for this thread's tiles
    /// ([`Tiles::current`]) and this CPU's L2.
    pub fn current(bytes: usize) -> SingleRow {
        static FROM_ENV: std::sync::OnceLock<Option<SingleRow>> = std::sync::OnceLock::new();
        FORCED_SINGLE_ROW.with(|f| f.get()).unwrap_or_else(|| {
            FROM_ENV
                .get_or_init(|| crate::cpu::env_choice("RECUR_SINGLE_ROW", &SingleRow::NAMES))
                .unwrap_or_else(|| {
                    let cpu = crate::cpu::CpuInfo::get();
                    SingleRow::choose(bytes, Tiles::current(), &cpu.vendor, cpu.caches.l2)
                })
        })
    }

    /// The values of `RECUR_SINGLE_ROW` that name a choice.
    const NAMES: [(&'static str, SingleRow); 2] =
        [("packed", SingleRow::Packed), ("stored", SingleRow::Stored)];

    /// Runs `f` with every batch of one row that starts on this thread reading `W_hh` the
    /// way `self` says (layers started by other threads keep theirs).
    pub fn forced<R>(self, f: impl FnOnce() -> R) -> R {
        let before = FORCED_SINGLE_ROW.with(|c| c.replace(Some(self)));
        let out = f();
        FORCED_SINGLE_ROW.with(|c| c.set(before));
        out
    }
}

impl<T: Float> RecurrentWeight<T> {
    pub(super) fn into_buffer(self) -> Vec<T> {
        match self {
            RecurrentWeight::Packed(p) => p.into_buffer(),
            RecurrentWeight::Stored(m) => m.into_buffer(),
        }
    }
}

/// One step's recurrent product `C += A B` against `W_hh`, as laid out for it.
#[derive(Clone, Copy)]
pub(super) enum StepWeight<'a, T> {
    /// `B` packed (`W_hh^T` in forward, `W_hh` in backward), any number of rows.
    Packed(&'a PackedB<T>),
    /// `B = W_hh^T` over `W_hh` as stored, a single row: forward, `C += W_hh h`.
    Rows(&'a AlignedMatrix<T>),
    /// `B = W_hh` as stored, a single row: backward, `dh += dG W_hh`.
    Cols(&'a AlignedMatrix<T>),
    /// `B` packed in bf16 (`W_hh^T` in forward, `W_hh` in backward), any number of rows: the
    /// product in [`crate::Precision::Bf16`].
    Bf16(&'a PackedBf16B, Bf16Kernel),
}

impl<T: Float> StepWeight<'_, T> {
    /// Columns of `B` (of `C`).
    pub(super) fn n(self) -> usize {
        match self {
            StepWeight::Packed(b) => b.n(),
            StepWeight::Rows(w) => w.rows(),
            StepWeight::Cols(w) => w.cols(),
            StepWeight::Bf16(b, _) => b.n(),
        }
    }

    /// Where a product split in two cuts its columns: the first half of the panels (rounded
    /// up, of the bf16 packing's in bf16); of the vectors, over `W_hh` as stored.
    pub(super) fn split_point(self) -> usize {
        let n = self.n();
        let unit = match self {
            StepWeight::Packed(_) => panel::<T>(),
            StepWeight::Rows(_) | StepWeight::Cols(_) => T::LANES,
            StepWeight::Bf16(..) => crate::kernels::bf16::PANEL,
        };
        (n.div_ceil(unit).div_ceil(2) * unit).min(n)
    }

    /// Columns `cols` of `C += A B` (each block's `C` holding just those, row stride `ldc`),
    /// walking `B` in `sweep`'s order where that changes no value (not `W_hh` as stored in
    /// backward, whose rows are the terms of each sum).
    pub(super) fn product(
        self,
        blocks: &mut [Rows<'_, T>],
        cols: Range<usize>,
        ldc: usize,
        sweep: Sweep,
    ) {
        let w = match self {
            StepWeight::Packed(b) => return gemm_packed_acc_cols(blocks, b, cols, ldc, sweep),
            StepWeight::Bf16(b, kernel) => return bf16::step_product(kernel, blocks, b, cols, ldc),
            StepWeight::Rows(w) | StepWeight::Cols(w) => w,
        };
        let [g] = blocks else {
            panic!("step product: W_hh as stored serves a single block")
        };
        assert_eq!(g.m, 1, "step product: W_hh as stored serves a single row");
        let c = &mut g.c[..cols.len()];
        if let Some(bias) = g.bias {
            tensor::add(c, &bias[cols.clone()]);
        }
        match self {
            StepWeight::Rows(_) => gemv_rows_acc(w, g.a, c, cols, sweep),
            _ => gemv_cols_acc(g.a, w, c, cols),
        }
    }
}

/// The weights, as slices.
#[derive(Clone, Copy)]
pub(super) struct Weights<'a, T> {
    pub(super) w_ih: &'a [T],
    /// `W_ih` packed for the products over all time steps (`W_ih^T` in forward, `W_ih` in
    /// backward), where they use it.
    pub(super) w_ih_packed: Option<&'a PackedB<T>>,
    pub(super) w_hh: &'a [T],
    pub(super) bias: Option<(&'a [T], &'a [T])>,
    /// The weights packed in bf16, when the products run in bf16 (for the pass at hand, as
    /// `w_ih_packed`).
    pub(super) bf16: Option<&'a Bf16Weights>,
}

/// Up to this many rows, `X W^T` runs on the small-batch kernel over `W` as stored instead of
/// against `W^T` packed.
pub(super) const SMALL_ROWS: usize = 32;

/// Whether an input projection over `rows` rows runs against `W_ih^T` packed (more than
/// [`SMALL_ROWS`]): the forward packs it when any shard's projection does.
pub(super) fn projects_packed(rows: usize) -> bool {
    rows > SMALL_ROWS
}

/// `xp = X W^T`, for `X` `[m, k]` and `W = W_ih` `[n, k]` (`dims` = `(m, k, n)`): in bf16
/// against `w.bf16`'s packing where set; else up to
/// [`SMALL_ROWS`] rows on the small-batch kernel over `W` as stored, more against `W^T` packed
/// (`w.w_ih_packed`, required then); with `halves` on two threads, split by rows. The kernel is chosen
/// by the whole product's rows, and either computes each row of `xp` as in the whole product,
/// so the split changes how fast, never what, it computes.
pub(super) fn project<T: Float>(
    (m, k, n): (usize, usize, usize),
    x: &[T],
    w: &Weights<'_, T>,
    xp: &mut [T],
    halves: bool,
) {
    if let Some(b) = w.bf16 {
        let rows = |m: usize, x: &[T], xp: &mut [T]| {
            bf16::product(b.kernel, (m, x, AStorage::RowMajor), &b.w_ih, xp, true);
        };
        return by_row_halves((m, k, n), x, xp, halves, rows);
    }
    let packed = projection_packing(m, w);
    let rows = |m: usize, x: &[T], xp: &mut [T]| project_rows((m, k, n), x, packed, w.w_ih, xp);
    by_row_halves((m, k, n), x, xp, halves, rows);
}

/// `xp = X W^T` over `m` rows (`xp` `[m, n]`, values past them untouched): against `W^T`
/// packed where given ([`projection_packing`]), else on the small-batch kernel over `W` as
/// stored. Each row of `xp` is computed as in a product over more rows.
fn project_rows<T: Float>(
    (m, k, n): (usize, usize, usize),
    x: &[T],
    packed: Option<&PackedB<T>>,
    w: &[T],
    xp: &mut [T],
) {
    let xp = &mut xp[..m * n];
    match packed {
        Some(b) => gemm_packed_set(m, x, b, xp),
        None => {
            xp.fill(T::ZERO);
            gemm_nt_acc(m, n, k, x, w, xp)
        }
    }
}

/// `W^T` packed for an input projection over `m` rows in all ([`projects_packed`]), else
/// `None` (the small-batch kernel reads `W` as stored).
fn projection_packing<'a, T: Float>(m: usize, w: &Weights<'a, T>) -> Option<&'a PackedB<T>> {
    projects_packed(m).then(|| {
        w.w_ih_packed
            .expect("project: W^T is packed for a product over more than SMALL_ROWS rows")
    })
}

/// [`project`] (in `T`, not bf16) over a shard's rows of each time step, read where they lie:
/// `x_t(t)` is step `t`'s `[m, k]` (a run of rows of the layer's input `[T, B, k]`) and `xp`
/// `[T, m, n]`. The kernel is chosen by all `T m` rows, and every row of the result is the
/// one [`project`] gives over the shard's rows copied out into `[T m, k]`, so reading them in
/// place changes how fast, never what, it computes. With `halves`, two threads each take
/// half of the time steps.
///
/// One call a step: on an Intel Xeon (family 6 model 207), one thread, f32, best of 25
/// alternating runs, `T = 100` steps of 32 rows of a 64-row batch, `k = 256`, % of the FMA
/// peak one call a step / four steps a call / the rows copied out and one call over all
/// 3200: `n = 256` 88.2 / 87.9 / 79.8, `n = 768` 86.0 / 82.6 / 83.3, `n = 1024` 86.2 / 83.2
/// / 83.1.
pub(super) fn project_steps<'x, T: Float>(
    (m, k, n): (usize, usize, usize),
    x_t: impl Fn(usize) -> &'x [T] + Sync,
    w: &Weights<'_, T>,
    xp: &mut [T],
    halves: bool,
) {
    debug_assert!(w.bf16.is_none(), "project_steps: not in bf16");
    let len = m * n;
    let tl = xp.len().checked_div(len).unwrap_or(0);
    let packed = projection_packing(tl * m, w);
    // Steps `t0..` into `xp`, `[steps, m, n]`.
    let run = |t0: usize, xp: &mut [T]| {
        for (t, out) in (t0..).zip(xp.chunks_exact_mut(len)) {
            project_rows((m, k, n), x_t(t), packed, w.w_ih, out);
        }
    };
    if !halves || tl < 2 {
        return run(0, &mut xp[..tl * len]);
    }
    let t1 = tl / 2;
    let (p0, p1) = xp[..tl * len].split_at_mut(t1 * len);
    crate::threads::join(|| run(0, p0), || run(t1, p1));
}

/// Runs `f(rows, x, out)` over the `m` rows of `x` `[m, k]` and `out` `[m, n]`: at once, or
/// with `halves` (and at least two rows) as its two halves of rows side by side on two
/// threads. For an `f` that computes each row of `out` as it would in the whole, the split
/// changes how fast, never what, it computes.
pub(super) fn by_row_halves<T: Float>(
    (m, k, n): (usize, usize, usize),
    x: &[T],
    out: &mut [T],
    halves: bool,
    f: impl Fn(usize, &[T], &mut [T]) + Sync,
) {
    if !halves || m < 2 {
        return f(m, x, out);
    }
    let m1 = m / 2;
    let (x0, x1) = x[..m * k].split_at(m1 * k);
    let (p0, p1) = out[..m * n].split_at_mut(m1 * n);
    crate::threads::join(|| f(m1, x0, p0), || f(m - m1, x1, p1));
}

/// Fills every row of `[rows, w]` with `init` (or zeros).
pub(crate) fn fill_rows<T: Float>(buf: &mut [T], init: Option<&[T]>) {
    match init {
        Some(row0) => buf
            .chunks_exact_mut(row0.len())
            .for_each(|r| r.copy_from_slice(row0)),
        None => buf.fill(T::ZERO),
    }
}

/// Sets every row of the input projection `[rows, G*H]` to the bias it starts from:
/// `b_ih + b_hh`, or for the GRU `b_ih` alone (it keeps `b_hh` apart: its n gate scales
/// `W_hn h + b_hn` by r); zeros without biases.
pub(crate) fn init_input_projection<T: Float>(
    xp: &mut [T],
    bias: Option<(&[T], &[T])>,
    kind: CellKind,
) {
    match bias {
        Some((b_ih, b_hh)) if !xp.is_empty() => {
            // The first row, then copies of it.
            let (first, rest) = xp.split_at_mut(b_ih.len());
            if kind == CellKind::Gru {
                first.copy_from_slice(b_ih);
            } else {
                for ((r, &bi), &bh) in first.iter_mut().zip(b_ih).zip(b_hh) {
                    *r = bi + bh;
                }
            }
            fill_rows(rest, Some(first));
        }
        Some(_) => {}
        None => xp.fill(T::ZERO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_row_reads_w_hh_as_the_cpu_suits() {
        let mib = 1 << 20;
        // AVX2 tiles: packed at any size, on any CPU.
        for bytes in [64 << 10, mib, 4 * mib, 64 * mib] {
            for l2 in [None, Some(512 << 10), Some(2 * mib)] {
                for vendor in ["AuthenticAMD", "GenuineIntel", ""] {
                    assert_eq!(
                        SingleRow::choose(bytes, Tiles::Narrow, vendor, l2),
                        SingleRow::Packed
                    );
                }
            }
        }
        // AVX-512 tiles on an Intel CPU: as stored up to half the L2, packed above.
        let intel = |bytes, l2| SingleRow::choose(bytes, Tiles::Wide, "GenuineIntel", l2);
        assert_eq!(intel(mib, Some(2 * mib)), SingleRow::Stored);
        assert_eq!(intel(mib + 64, Some(2 * mib)), SingleRow::Packed);
        assert_eq!(intel(4 * mib, Some(2 * mib)), SingleRow::Packed);
        assert_eq!(intel(64 << 10, Some(2 * mib)), SingleRow::Stored);
        assert_eq!(intel(mib / 2, None), SingleRow::Stored);
        assert_eq!(intel(mib, None), SingleRow::Packed);
        // Elsewhere: packed while W_hh fits in L2, as stored past it.
        for vendor in ["AuthenticAMD", ""] {
            let wide = |bytes, l2| SingleRow::choose(bytes, Tiles::Wide, vendor, l2);
            assert_eq!(wide(mib, Some(mib)), SingleRow::Packed);
            assert_eq!(wide(mib + 64, Some(mib)), SingleRow::Stored);
            assert_eq!(wide(3 * mib / 2, Some(2 * mib)), SingleRow::Packed);
            assert_eq!(wide(3 * mib, Some(2 * mib)), SingleRow::Stored);
            assert_eq!(wide(768 << 10, Some(512 << 10)), SingleRow::Stored);
            // An L2 the system does not report is taken as 1 MiB.
            assert_eq!(wide(mib, None), SingleRow::Packed);
            assert_eq!(wide(2 * mib, None), SingleRow::Stored);
        }
    }

    #[test]
    fn the_environment_names_a_choice_or_none() {
        let named = |v: Option<&str>| crate::cpu::named_choice(v, &SingleRow::NAMES);
        assert_eq!(named(Some("packed")), Some(SingleRow::Packed));
        assert_eq!(named(Some("stored")), Some(SingleRow::Stored));
        for other in [None, Some(""), Some("Stored"), Some("wide")] {
            assert_eq!(named(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_forced_choice_holds_on_its_thread_only() {
        let natural = SingleRow::current(64 << 20);
        for choice in [SingleRow::Packed, SingleRow::Stored] {
            let (here, elsewhere) = choice.forced(|| {
                let elsewhere = std::thread::spawn(|| SingleRow::current(64 << 20))
                    .join()
                    .unwrap();
                (SingleRow::current(64 << 20), elsewhere)
            });
            assert_eq!(here, choice);
            assert_eq!(elsewhere, natural);
        }
        assert_eq!(SingleRow::current(64 << 20), natural);
    }
}
