//! The fused recurrence: one tape node per layer and direction.
//!
//! The batch is split into shards (see [`shard_ranges`]). The shard boundaries depend only on
//! the batch size, never on the number of threads, and each shard runs its whole recurrence
//! without waiting on another (rayon, no synchronisation per time step), so results are
//! bit-identical for any number of threads. A thread that holds several shards (one thread, or
//! more shards than threads) steps them in lockstep: each step's recurrent products of its
//! shards are one call of the kernel, which reads `W_hh` once for all their rows and computes
//! every row as it would alone.
//!
//! A batch too small for two shards (at most 16 rows) would leave the pool's other threads
//! idle. With more than one thread, each step's recurrent product is then split by columns: a
//! helper thread spinning on the pool's second thread takes the right half while the shard's
//! thread takes the left (see [`crate::kernels::handoff`]), handed over through one atomic
//! word per step. Every value is computed as in the whole product, so the results are still
//! bit-identical for any number of threads.
//!
//! Forward, per shard: one product projects the inputs of all timesteps at once
//! (`Xp = X W_ih^T`; over more than 32 rows, against `W_ih^T` packed once per direction);
//! then per step the recurrent product `h_{t-1} W_hh^T` and the biases are added by a
//! small-batch kernel over `W_hh^T` packed once per sequence (no allocation per step; a batch
//! of one row reads an aligned copy of `W_hh` as stored instead, see [`crate::kernels::gemv`],
//! which its backward reuses), and one
//! fused SIMD kernel applies the gate activations, updates `c` and `h`, and keeps what backward
//! needs.
//!
//! Backward, per shard and in reverse time: per step one fused kernel turns `dh`, `dc` and the
//! saved gates into `dG` (the gradient of the gate pre-activations), the same small-batch
//! kernel gives `dh_{t-1} = dG W_hh` (over `W_hh`, packed once per backward), and the step's
//! rows of `dG` join the shard's bias gradients (column sums) while still in cache. After the
//! loop, large products over all of the shard's timesteps give its `dX = dG W_ih` and its parts
//! of `dW_hh = dG^T H_prev` and `dW_ih = dG^T X` (`X` and `H_prev` packed, `dG` read in place by
//! columns); the parts are added into the weight gradients in shard order. Every product runs on
//! the packed kernel of [`crate::kernels::gemm_nn`].
//!
//! Each step's state `h_t` is stored once, as the step's output `y_t` (for a single shard, in
//! the layer's output itself): the next step and the backward read `h_{t-1}` from there. Only
//! with sequence lengths, where a finished sequence keeps its state while its output is zero,
//! are the states kept apart.
//!
//! Every buffer whose size grows with the sequence (saved activations, `dG`, the packed weight,
//! the outputs) comes from the tape's [`Workspace`] and goes back to it, in the backward or when
//! the tape is cleared: a training loop that clears its tape reuses the same memory every step.

use std::ops::Range;

use rayon::prelude::*;

use super::recurrent::{CellKind, DirectionOutput, DirectionRun};
use crate::Result;
use crate::kernels::Sweep;
use crate::kernels::gemm_nn::{
    AStorage, PackedB, Rows, STREAMED_BYTES, gemm_packed_acc_cols, gemm_packed_set,
    gemm_packed_set_rows, panel,
};
use crate::kernels::gemm_nt::gemm_nt_acc;
use crate::kernels::gemv::{AlignedMatrix, gemv_cols_acc, gemv_rows_acc};
use crate::kernels::handoff::{Helper, with_helper};
use crate::kernels::{gru, lstm, rnn};
use crate::params::ParamStore;
use crate::tape::{CustomOp, Tape, Var, Workspace};
use crate::tensor::{self, Float, Shape, Tensor};

/// Rows per shard at least, but for a shorter last shard: a batch of at most this many rows is
/// one shard.
pub const MIN_SHARD_ROWS: usize = 16;
/// Most batch rows per shard.
pub const MAX_SHARD_ROWS: usize = 32;

/// Runs one direction of one layer as a single fused tape node.
pub(crate) fn run<T: Float>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    run: &DirectionRun<'_>,
    x: Var,
    h0: Var,
    c0: Option<Var>,
) -> Result<DirectionOutput> {
    let p = run.params;
    let mut inputs = vec![x, h0];
    inputs.extend(c0);
    inputs.push(tape.param(store, p.w_ih)?);
    inputs.push(tape.param(store, p.w_hh)?);
    if let (Some(bi), Some(bh)) = (p.b_ih, p.b_hh) {
        inputs.push(tape.param(store, bi)?);
        inputs.push(tape.param(store, bh)?);
    }
    let xs = tape.shape(x)?;
    let (t_len, batch, in_size) = (xs.dims()[0], xs.dims()[1], xs.dims()[2]);
    let hidden = tape.shape(h0)?.dims()[1];
    let cfg = Config {
        kind: run.kind,
        reverse: run.reverse,
        lengths: run.lengths.map(<[usize]>::to_vec),
        t_len,
        batch,
        in_size,
        hidden,
        has_bias: p.b_ih.is_some(),
    };
    let lstm = cfg.kind.has_cell_state();
    let gates_h = cfg.kind.gates() * hidden;
    // Every buffer first, from the tape's pool; then the values, which borrow the tape.
    let mut ws = tape.workspace();
    let mut node = FusedDirection::<T> {
        shards: shard_ranges(batch)
            .into_iter()
            .map(|rows| Shard::take(&cfg, rows, &mut ws))
            .collect(),
        // A single row reads W_hh as stored when it streams from L3 at every step anyway (then
        // packing it twice a sequence only costs); smaller, it packs it too: the packed
        // single-row tile reads it from L2 1.1-1.9x faster than the kernels over W_hh as stored.
        w_hh: if batch == 1 && gates_h * hidden * std::mem::size_of::<T>() > STREAMED_BYTES {
            RecurrentWeight::Stored(AlignedMatrix::from_buffer(
                ws.scratch(AlignedMatrix::<T>::buffer_len(gates_h, hidden)),
            ))
        } else {
            // W_hh^T packed in forward, W_hh in backward: room for both, so neither grows it.
            RecurrentWeight::Packed(PackedB::from_buffer(
                ws.scratch(
                    PackedB::<T>::packed_len(hidden, gates_h)
                        .max(PackedB::<T>::packed_len(gates_h, hidden)),
                ),
            ))
        },
        // W_ih^T packed in forward (the input projection), W_ih in backward (dX): room for both.
        w_ih: PackedB::from_buffer(
            ws.scratch(
                PackedB::<T>::packed_len(in_size, gates_h)
                    .max(PackedB::<T>::packed_len(gates_h, in_size)),
            ),
        ),
        cfg,
    };
    let mut scratch: Vec<ForwardScratch<T>> = node
        .shards
        .iter()
        .map(|sh| ForwardScratch::take(&node.cfg, sh.rows.len(), &mut ws))
        .collect();
    let mut y = ws.scratch(t_len * batch * hidden);
    let mut h_n = ws.scratch(batch * hidden);
    let mut c_n = ws.scratch(if lstm { batch * hidden } else { 0 });
    let mut split = node.cfg.split_buffer(node.shards.len(), gates_h, &mut ws);
    {
        let vals: Vec<&Tensor<T>> = inputs
            .iter()
            .map(|&v| tape.value(v))
            .collect::<Result<_>>()?;
        let split = split.as_deref_mut();
        node.forward(&vals, &mut scratch, split, &mut y, &mut h_n, &mut c_n);
    }
    let mut ws = tape.workspace();
    for s in scratch {
        s.give(&mut ws);
    }
    if let Some(v) = split {
        ws.give(v);
    }
    let y = Tensor::from_vec_shape(y, Shape::new(&[t_len, batch, hidden])?)?;
    let state = Shape::new(&[batch, hidden])?;
    let h_n = Tensor::from_vec_shape(h_n, state)?;
    if lstm {
        let c_n = Tensor::from_vec_shape(c_n, state)?;
        let [y, h_n, c_n] = tape.custom(Box::new(node), &inputs, [y, h_n, c_n])?;
        Ok(DirectionOutput {
            y,
            h_n,
            c_n: Some(c_n),
        })
    } else {
        tape.workspace().give(c_n);
        let [y, h_n] = tape.custom(Box::new(node), &inputs, [y, h_n])?;
        Ok(DirectionOutput { y, h_n, c_n: None })
    }
}

/// The shards of a batch of `batch` rows: consecutive runs of `ceil(batch / 2)` rows, clamped
/// to [`MIN_SHARD_ROWS`, `MAX_SHARD_ROWS`]; the last run may be shorter.
///
/// A rule of the batch size alone, so results never depend on the number of threads. Larger
/// shards read the recurrent weights fewer times per step (they stream from L3 once `W_hh` no
/// longer fits in L2); at least two shards from 32 rows up keep two cores busy.
pub fn shard_ranges(batch: usize) -> Vec<Range<usize>> {
    let rows = batch.div_ceil(2).clamp(MIN_SHARD_ROWS, MAX_SHARD_ROWS);
    (0..batch)
        .step_by(rows)
        .map(|s| s..(s + rows).min(batch))
        .collect()
}

/// What every shard of one direction shares.
struct Config {
    kind: CellKind,
    reverse: bool,
    lengths: Option<Vec<usize>>,
    t_len: usize,
    batch: usize,
    in_size: usize,
    hidden: usize,
    has_bias: bool,
}

/// The activations one shard's backward needs, in the shard's own time-major layout
/// `[T, rows, .]`.
struct Shard<T> {
    rows: Range<usize>,
    /// Per time step: LSTM activated gates `[n, 4H]`; GRU `r, z, n, W_hn h + b_hn` `[n, 4H]`;
    /// RNN none (its pre-activations are summed in its output slots `y_t` and activated there,
    /// and its backward reads `h_t` from them).
    gates: Vec<T>,
    /// With sequence lengths: `h_{t-1}` for every time step `[T, n, H]`, time-indexed (a
    /// finished sequence keeps its state while its output is zero). Without, it is empty:
    /// `h_{t-1}` is the previous step's output, or `h0` at the first step.
    h_prev: Vec<T>,
    /// The shard's outputs `h_t` `[T, n, H]` when it is not the whole batch (a single shard
    /// writes the layer's output in place, which backward reads from the node's outputs).
    ys: Vec<T>,
    /// LSTM: `c_t` for every time step (for a sequence past its length, the state it keeps), and
    /// the shard's rows of `c0`: `c_{t-1}` is the previous step's entry, or `c0` at the first.
    c_new: Vec<T>,
    c0: Vec<T>,
    /// The shard's rows of the input `[T, n, I]`; empty when the shard is the whole batch (the
    /// input is then read in place).
    xs: Vec<T>,
}

impl<T: Float> Shard<T> {
    /// The shard's saved buffers, from the pool (every one is overwritten in full by forward).
    fn take(cfg: &Config, rows: Range<usize>, ws: &mut Workspace<'_, T>) -> Self {
        let (tl, n, h) = (cfg.t_len, rows.len(), cfg.hidden);
        let lstm = cfg.kind.has_cell_state();
        let own_x = n < cfg.batch;
        Shard {
            gates: ws.scratch(tl * n * cfg.saved_width()),
            h_prev: ws.scratch(if cfg.lengths.is_some() { tl * n * h } else { 0 }),
            ys: ws.scratch(if own_x { tl * n * h } else { 0 }),
            c_new: ws.scratch(if lstm { tl * n * h } else { 0 }),
            c0: ws.scratch(if lstm { n * h } else { 0 }),
            xs: ws.scratch(if own_x { tl * n * cfg.in_size } else { 0 }),
            rows,
        }
    }

    fn give(self, ws: &mut Workspace<'_, T>) {
        for v in [
            self.gates,
            self.h_prev,
            self.ys,
            self.c_new,
            self.c0,
            self.xs,
        ] {
            ws.give(v);
        }
    }

    /// LSTM: the shard's final cell state `[n, H]`, the last step's saved `c_t` (`c0` for an
    /// empty sequence).
    fn c_final(&self, cfg: &Config) -> &[T] {
        let nh = self.rows.len() * cfg.hidden;
        match cfg.t_len {
            0 => &self.c0,
            tl => {
                let t = cfg.time(tl - 1);
                &self.c_new[t * nh..(t + 1) * nh]
            }
        }
    }

    /// The shard's rows of the input `x` `[T, B, I]`, as `[T, n, I]`.
    fn x<'a>(&'a self, x: &'a [T]) -> &'a [T] {
        if self.xs.is_empty() { x } else { &self.xs }
    }

    /// The shard's outputs `[T, n, H]` after forward: its own buffer, or for a single shard
    /// the layer's output `y`.
    fn outputs<'a>(&'a self, y: &'a [T]) -> &'a [T] {
        if self.ys.is_empty() { y } else { &self.ys }
    }
}

/// A shard's working buffers for the forward, given back once it has run.
struct ForwardScratch<T> {
    /// GRU: the input projection `Xp = X W_ih^T` of every step `[T, n, 3H]`, without `b_ih`
    /// (the LSTM and the RNN write theirs straight into the saved gates).
    xp: Vec<T>,
    /// The shard's final state `h_n` `[n, H]`.
    h_cur: Vec<T>,
    /// GRU: `W_hh h + b_hh` of one step `[n, 3H]`.
    hp: Vec<T>,
    /// LSTM and RNN with biases: `b_ih + b_hh` `[G*H]`, which each step's recurrent product
    /// adds to the projection.
    bias: Vec<T>,
}

impl<T: Float> ForwardScratch<T> {
    fn take(cfg: &Config, n: usize, ws: &mut Workspace<'_, T>) -> Self {
        let (tl, h) = (cfg.t_len, cfg.hidden);
        let gh = cfg.kind.gates() * h;
        let gru = cfg.kind == CellKind::Gru;
        ForwardScratch {
            xp: ws.scratch(if gru { tl * n * gh } else { 0 }),
            h_cur: ws.scratch(n * h),
            hp: ws.scratch(if gru { n * gh } else { 0 }),
            bias: ws.scratch(if cfg.has_bias && !gru { gh } else { 0 }),
        }
    }

    fn give(self, ws: &mut Workspace<'_, T>) {
        for v in [self.xp, self.h_cur, self.hp, self.bias] {
            ws.give(v);
        }
    }
}

/// A shard's working buffers for the backward; after the parallel part they hold its
/// gradients, which are then added up in shard order.
struct BackwardScratch<T> {
    /// `dh` carried back through time; at the end, the shard's rows of `dh0`.
    dh: Vec<T>,
    /// LSTM: `dc` likewise; at the end, the rows of `dc0`.
    dc: Vec<T>,
    /// The gradient of the gate pre-activations of every step `[T, n, G*H]` (GRU: of `Xp`).
    dg: Vec<T>,
    /// GRU: the gradient of `Hp = W_hh h + b_hh` of every step `[T, n, 3H]`.
    dhp: Vec<T>,
    dh_t: Vec<T>,
    keep: Vec<T>,
    /// The shard's rows of `dX` `[T, n, I]`, and its parts of `dW_ih`, `dW_hh`, `db_ih` and
    /// `db_hh`.
    dx: Vec<T>,
    dw_ih: Vec<T>,
    dw_hh: Vec<T>,
    db_ih: Vec<T>,
    db_hh: Vec<T>,
    /// The shard's `X` `[T n, I]` and `h_{t-1}` `[T n, H]` packed for the weight gradients
    /// `dG^T X` and `dG^T H`.
    x_packed: PackedB<T>,
    h_packed: PackedB<T>,
}

impl<T: Float> BackwardScratch<T> {
    fn take(cfg: &Config, n: usize, want: Wanted, ws: &mut Workspace<'_, T>) -> Self {
        let (tl, h, i) = (cfg.t_len, cfg.hidden, cfg.in_size);
        let gh = cfg.kind.gates() * h;
        let lstm = cfg.kind.has_cell_state();
        let gru = cfg.kind == CellKind::Gru;
        let size = |wanted: bool, len: usize| if wanted { len } else { 0 };
        BackwardScratch {
            dh: ws.scratch(n * h),
            dc: ws.scratch(size(lstm, n * h)),
            dg: ws.scratch(tl * n * gh),
            dhp: ws.scratch(size(gru, tl * n * gh)),
            dh_t: ws.scratch(n * h),
            keep: ws.scratch(size(lstm, n * h)),
            dx: ws.scratch(size(want.x, tl * n * i)),
            dw_ih: ws.scratch(size(want.w_ih, gh * i)),
            dw_hh: ws.scratch(size(want.w_hh, gh * h)),
            db_ih: ws.scratch(size(want.b_ih, gh)),
            db_hh: ws.scratch(size(want.b_hh, gh)),
            x_packed: PackedB::from_buffer(
                ws.scratch(size(want.w_ih, PackedB::<T>::packed_len(tl * n, i))),
            ),
            h_packed: PackedB::from_buffer(
                ws.scratch(size(want.w_hh, PackedB::<T>::packed_len(tl * n, h))),
            ),
        }
    }

    fn give(self, ws: &mut Workspace<'_, T>) {
        let bufs = [
            self.dh,
            self.dc,
            self.dg,
            self.dhp,
            self.dh_t,
            self.keep,
            self.dx,
            self.dw_ih,
            self.dw_hh,
            self.db_ih,
            self.db_hh,
            self.x_packed.into_buffer(),
            self.h_packed.into_buffer(),
        ];
        for v in bufs {
            ws.give(v);
        }
    }
}

/// One direction of one layer, with the activations its backward needs.
struct FusedDirection<T> {
    cfg: Config,
    shards: Vec<Shard<T>>,
    /// The recurrent weight as each step's product reads it.
    w_hh: RecurrentWeight<T>,
    /// `W_ih` packed for the products over all time steps: `W_ih^T` in forward, `W_ih` in
    /// backward.
    w_ih: PackedB<T>,
}

/// `W_hh` `[G*H, H]` as the per-step products read it.
enum RecurrentWeight<T> {
    /// Packed in panels: `W_hh^T` in forward, `W_hh` in backward.
    Packed(PackedB<T>),
    /// For a batch of one row: an aligned copy as stored, made in forward and read again by
    /// the backward (the node's weights do not change in between).
    Stored(AlignedMatrix<T>),
}

impl<T: Float> RecurrentWeight<T> {
    fn into_buffer(self) -> Vec<T> {
        match self {
            RecurrentWeight::Packed(p) => p.into_buffer(),
            RecurrentWeight::Stored(m) => m.into_buffer(),
        }
    }
}

/// One step's recurrent product `C += A B` against `W_hh`, as laid out for it.
#[derive(Clone, Copy)]
enum StepWeight<'a, T> {
    /// `B` packed (`W_hh^T` in forward, `W_hh` in backward), any number of rows.
    Packed(&'a PackedB<T>),
    /// `B = W_hh^T` over `W_hh` as stored, a single row: forward, `C += W_hh h`.
    Rows(&'a AlignedMatrix<T>),
    /// `B = W_hh` as stored, a single row: backward, `dh += dG W_hh`.
    Cols(&'a AlignedMatrix<T>),
}

impl<T: Float> StepWeight<'_, T> {
    /// Columns of `B` (of `C`).
    fn n(self) -> usize {
        match self {
            StepWeight::Packed(b) => b.n(),
            StepWeight::Rows(w) => w.rows(),
            StepWeight::Cols(w) => w.cols(),
        }
    }

    /// Where a product split in two cuts its columns: the first half of the panels (rounded
    /// up); of the vectors, over `W_hh` as stored.
    fn split_point(self) -> usize {
        let n = self.n();
        let unit = match self {
            StepWeight::Packed(_) => panel::<T>(),
            StepWeight::Rows(_) | StepWeight::Cols(_) => T::LANES,
        };
        (n.div_ceil(unit).div_ceil(2) * unit).min(n)
    }

    /// Columns `cols` of `C += A B` (each block's `C` holding just those, row stride `ldc`),
    /// walking `B` in `sweep`'s order where that changes no value (not `W_hh` as stored in
    /// backward, whose rows are the terms of each sum).
    fn product(self, blocks: &mut [Rows<'_, T>], cols: Range<usize>, ldc: usize, sweep: Sweep) {
        let w = match self {
            StepWeight::Packed(b) => return gemm_packed_acc_cols(blocks, b, cols, ldc, sweep),
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

/// Positions of the node's inputs.
const X: usize = 0;
const H0: usize = 1;

/// The weights, as slices.
struct Weights<'a, T> {
    w_ih: &'a [T],
    /// `W_ih` packed for the products over all time steps (`W_ih^T` in forward, `W_ih` in
    /// backward), where they use it.
    w_ih_packed: Option<&'a PackedB<T>>,
    w_hh: &'a [T],
    bias: Option<(&'a [T], &'a [T])>,
}

/// Which gradients the backward must produce.
#[derive(Clone, Copy)]
struct Wanted {
    x: bool,
    w_ih: bool,
    w_hh: bool,
    b_ih: bool,
    b_hh: bool,
}

/// Copies rows `rows` of every time step of a `[T, b, w]` buffer into `out` `[T, n, w]`.
fn gather<T: Float>(src: &[T], out: &mut [T], b: usize, rows: &Range<usize>, w: usize) {
    let n = rows.len();
    for (t, dst) in out.chunks_exact_mut(n * w).enumerate() {
        dst.copy_from_slice(&src[(t * b + rows.start) * w..(t * b + rows.end) * w]);
    }
}

/// Block `read` of `buf` (blocks of `len` values) to read and a different block `write` to
/// write.
fn read_write<T>(buf: &mut [T], read: usize, write: usize, len: usize) -> (&[T], &mut [T]) {
    assert_ne!(read, write, "read_write: the two blocks must differ");
    if read < write {
        let (lo, hi) = buf.split_at_mut(write * len);
        (&lo[read * len..(read + 1) * len], &mut hi[..len])
    } else {
        let (lo, hi) = buf.split_at_mut(read * len);
        (&hi[..len], &mut lo[write * len..(write + 1) * len])
    }
}

/// Up to this many rows, `X W^T` runs on the small-batch kernel over `W` as stored instead of
/// against `W^T` packed.
const SMALL_ROWS: usize = 32;

/// Whether an input projection over `rows` rows runs against `W_ih^T` packed (more than
/// [`SMALL_ROWS`]): the forward packs it when any shard's projection does.
fn projects_packed(rows: usize) -> bool {
    rows > SMALL_ROWS
}

/// `xp = X W^T`, for `X` `[m, k]` and `W` `[n, k]`: up to
/// [`SMALL_ROWS`] rows on the small-batch kernel over `W` as stored, more against `W^T` packed
/// (`packed`, required then); with `halves` on two threads, split by rows. The kernel is chosen
/// by the whole product's rows, and either computes each row of `xp` as in the whole product,
/// so the split changes how fast, never what, it computes.
#[allow(clippy::too_many_arguments)]
fn project<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    x: &[T],
    w: &[T],
    packed: Option<&PackedB<T>>,
    xp: &mut [T],
    halves: bool,
) {
    let packed = projects_packed(m).then(|| {
        packed.expect("project: W^T is packed for a product over more than SMALL_ROWS rows")
    });
    let rows = |m: usize, x: &[T], xp: &mut [T]| {
        let xp = &mut xp[..m * n];
        match packed {
            Some(b) => gemm_packed_set(m, x, b, xp),
            None => {
                xp.fill(T::ZERO);
                gemm_nt_acc(m, n, k, x, w, xp)
            }
        }
    };
    if !halves || m < 2 {
        return rows(m, x, xp);
    }
    let m1 = m / 2;
    let (x0, x1) = x.split_at(m1 * k);
    let (p0, p1) = xp[..m * n].split_at_mut(m1 * n);
    rayon::join(|| rows(m1, x0, p0), || rows(m - m1, x1, p1));
}

/// `dst += column sums of rows` over a row-major buffer.
fn add_col_sums<T: Float>(dst: &mut [T], rows: &[T]) {
    let n = dst.len();
    for row in rows.chunks_exact(n) {
        for (d, &x) in dst.iter_mut().zip(row) {
            *d += x;
        }
    }
}

/// Most shards one thread steps together (a bound that keeps each step's list of row blocks
/// on the stack; past 128 rows a larger product gains little).
const GROUP_SHARDS: usize = 4;

/// How many consecutive shards each task steps in lockstep: all of them on one thread (up to
/// [`GROUP_SHARDS`]), else as evenly as the threads of the current rayon pool allow. Which
/// shards share a task changes how fast, never what, they compute.
fn group_len(shards: usize) -> usize {
    shards
        .div_ceil(rayon::current_num_threads().max(1))
        .clamp(1, GROUP_SHARDS)
}

/// Runs `f` on every group of `len` consecutive pairs, in parallel where there is more than
/// one group.
fn for_each_group<A: Send, B: Send>(
    a: &mut [A],
    b: &mut [B],
    len: usize,
    f: impl Fn(&mut [A], &mut [B]) + Sync,
) {
    if a.len() <= len {
        f(a, b);
    } else {
        a.par_chunks_mut(len)
            .zip(b.par_chunks_mut(len))
            .for_each(|(x, y)| f(x, y));
    }
}

/// Fewest multiply-adds in one step's recurrent product for which splitting its columns
/// between two threads pays for the handoff (the tiny-batch RNN's 65K, split, ran 0.92x).
const SPLIT_MIN_WORK: usize = 1 << 17;

/// Fewest multiply-adds per value of `A` and `C` that crosses between the two cores
/// (`k n / (k + n)` for a product `[m, k] x [k, n]`, `H G / (1 + G)` for a layer's) for which
/// a split product pays for moving them: measured at 16 rows, 64 (RNN, H = 128) ran 0.91x,
/// 96 (GRU) and 102 (LSTM) 1.10x and 1.11x.
const SPLIT_MIN_INTENSITY: usize = 80;

/// A buffer for the right halves of each step's recurrent products and the helper thread that
/// computes them (see [`step_product`]).
type Split<'a, T> = Option<(&'a mut [T], &'a Helper)>;

/// A shorter-lived copy of a split, for one step.
fn reborrow<'s, T>(split: &'s mut Split<'_, T>) -> Split<'s, T> {
    split.as_mut().map(|(buf, h)| (&mut **buf, *h))
}

/// One step's recurrent product `C += A B` of a group of shards. With a split, the columns of
/// `B` are cut in two: this thread takes the left half in place while the helper takes the
/// right half into the split's buffer (room for every block's right half of `C`), copied back
/// after. Each value is computed as in the whole product, so splitting changes how fast, never
/// what, the step computes.
fn step_product<T: Float>(
    blocks: &mut [Rows<'_, T>],
    b: StepWeight<'_, T>,
    split: Split<'_, T>,
    sweep: Sweep,
) {
    let n = b.n();
    let c1 = b.split_point();
    let Some((buf, helper)) = split.filter(|_| c1 < n) else {
        b.product(blocks, 0..n, n, sweep);
        return;
    };
    let w2 = n - c1;
    let mut halves: [Rows<'_, T>; GROUP_SHARDS] = std::array::from_fn(|_| Rows::empty());
    let mut rest = buf;
    for (g, half) in blocks.iter().zip(halves.iter_mut()) {
        let (c, tail) = rest.split_at_mut(g.m * w2);
        rest = tail;
        for (dst, src) in c.chunks_exact_mut(w2).zip(g.c.chunks_exact(n)) {
            dst.copy_from_slice(&src[c1..]);
        }
        *half = Rows {
            m: g.m,
            a: g.a,
            storage: g.storage,
            c,
            bias: g.bias,
        };
    }
    let halves = &mut halves[..blocks.len()];
    helper.join(
        || b.product(blocks, 0..c1, n, sweep),
        || b.product(halves, c1..n, w2, sweep),
    );
    for (g, half) in blocks.iter_mut().zip(halves.iter()) {
        for (dst, src) in g.c.chunks_exact_mut(n).zip(half.c.chunks_exact(w2)) {
            dst[c1..].copy_from_slice(src);
        }
    }
}

/// Fills every row of `[rows, w]` with `init` (or zeros).
pub(super) fn fill_rows<T: Float>(buf: &mut [T], init: Option<&[T]>) {
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
pub(super) fn init_input_projection<T: Float>(
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

impl Config {
    /// Room for the right halves of each step's recurrent products with `n` columns (see
    /// [`step_product`]) when they are split between two threads: when every shard runs in one
    /// group (a batch too small for two shards) while the rayon pool has more threads, and the
    /// products are large enough to pay for the handoffs.
    fn split_buffer<T: Float>(
        &self,
        shards: usize,
        n: usize,
        ws: &mut Workspace<'_, T>,
    ) -> Option<Vec<T>> {
        let (h, gh) = (self.hidden, self.kind.gates() * self.hidden);
        let one_group = group_len(shards) >= shards;
        let work = self.batch * h * gh;
        let intensity = h * gh / (h + gh).max(1);
        // A single panel has no halves.
        let wide = n > panel::<T>();
        let pays = work >= SPLIT_MIN_WORK && intensity >= SPLIT_MIN_INTENSITY;
        (rayon::current_num_threads() > 1 && one_group && wide && pays)
            .then(|| ws.scratch(self.batch * n))
    }

    fn time(&self, s: usize) -> usize {
        if self.reverse { self.t_len - 1 - s } else { s }
    }

    fn active(&self, t: usize, b: usize) -> bool {
        self.lengths.as_ref().is_none_or(|l| t < l[b])
    }

    /// Index of `w_ih` among the inputs (after x, h0 and, for the LSTM, c0).
    fn w_ih_index(&self) -> usize {
        if self.kind.has_cell_state() { 3 } else { 2 }
    }

    /// Width of the per-step saved block (none for the RNN: what its backward needs, `h_t`,
    /// is its output).
    fn saved_width(&self) -> usize {
        match self.kind {
            CellKind::Rnn(_) => 0,
            CellKind::Lstm | CellKind::Gru => 4 * self.hidden,
        }
    }

    fn weights<'a, T: Float>(&self, inp: &[&'a Tensor<T>]) -> Weights<'a, T> {
        let wi = self.w_ih_index();
        Weights {
            w_ih: inp[wi].data(),
            w_ih_packed: None,
            w_hh: inp[wi + 1].data(),
            bias: self
                .has_bias
                .then(|| (inp[wi + 2].data(), inp[wi + 3].data())),
        }
    }

    /// `h_{t-1}` of step `s` for a shard's rows: saved in `h_prev` with lengths, else the
    /// output of step `s - 1` in `out`, or the shard's rows of `h0` at step 0.
    fn state_in<'a, T: Float>(
        &self,
        h_prev: &'a [T],
        out: &'a [T],
        h0: &'a [T],
        rows: &Range<usize>,
        s: usize,
    ) -> &'a [T] {
        let nh = rows.len() * self.hidden;
        if !h_prev.is_empty() {
            let t = self.time(s);
            &h_prev[t * nh..(t + 1) * nh]
        } else if s == 0 {
            &h0[rows.start * self.hidden..rows.end * self.hidden]
        } else {
            let tp = self.time(s - 1);
            &out[tp * nh..(tp + 1) * nh]
        }
    }

    /// Runs the recurrence of a group of shards from the initial state `h0`, `c0` (`[B, H]`,
    /// all rows), in lockstep: each step's recurrent products of all the shards are one call
    /// of the kernel, so `W_hh` streams through the cache once per step for the whole group.
    /// Each shard writes its outputs `[T, n, H]` to its `ys` and its final `h` to `fs.h_cur`
    /// (the final `c` is [`Shard::c_final`]). The kernel's values do not depend on which rows
    /// share a call, so neither do the results. With `split` (room for the right halves of the
    /// products, see [`Config::split_buffer`]), a helper thread takes half of each product.
    #[allow(clippy::too_many_arguments)]
    fn forward_group<T: Float>(
        &self,
        group: &mut [Shard<T>],
        fss: &mut [ForwardScratch<T>],
        x: &[T],
        h0: &[T],
        c0: Option<&[T]>,
        w: &Weights<'_, T>,
        w_hh_t: StepWeight<'_, T>,
        split: Option<&mut [T]>,
    ) {
        assert!(
            group.len() <= GROUP_SHARDS,
            "forward_group: too many shards"
        );
        // A split group has the pool's threads to itself: its input projections split too.
        let halves = split.is_some();
        for (sh, fs) in group.iter_mut().zip(fss.iter_mut()) {
            self.forward_begin(sh, fs, x, h0, c0, w, halves);
        }
        // The helper spins only through the recurrence.
        match split {
            Some(buf) => with_helper(|helper| {
                self.forward_steps(group, fss, h0, w, w_hh_t, Some((buf, helper)));
            }),
            None => self.forward_steps(group, fss, h0, w, w_hh_t, None),
        }
        for (sh, fs) in group.iter_mut().zip(fss.iter_mut()) {
            let nh = sh.rows.len() * self.hidden;
            if self.t_len == 0 {
                fs.h_cur
                    .copy_from_slice(&h0[sh.rows.start * self.hidden..sh.rows.end * self.hidden]);
            } else if sh.h_prev.is_empty() {
                let last = self.time(self.t_len - 1);
                fs.h_cur.copy_from_slice(&sh.ys[last * nh..(last + 1) * nh]);
            }
        }
    }

    /// The recurrence of a group of shards (see [`Config::forward_group`]), each step's
    /// products split with a helper where `split` says so.
    #[allow(clippy::too_many_arguments)]
    fn forward_steps<T: Float>(
        &self,
        group: &mut [Shard<T>],
        fss: &mut [ForwardScratch<T>],
        h0: &[T],
        w: &Weights<'_, T>,
        w_hh_t: StepWeight<'_, T>,
        mut split: Split<'_, T>,
    ) {
        let sw = self.saved_width();
        let count = group.len();
        for s in 0..self.t_len {
            let t = self.time(s);
            // The recurrent product of every shard: into its gate pre-activations, which already
            // hold the input projection (the LSTM's saved block, the RNN's output slot y_t), or
            // for the GRU into `W_hh h + b_hh` apart.
            let mut blocks: [Rows<'_, T>; GROUP_SHARDS] = std::array::from_fn(|_| Rows::empty());
            for ((blk, sh), fs) in blocks.iter_mut().zip(group.iter_mut()).zip(fss.iter_mut()) {
                let n = sh.rows.len();
                let nh = n * self.hidden;
                let (a, c): (&[T], &mut [T]) = match self.kind {
                    CellKind::Lstm => (
                        self.state_in(&sh.h_prev, &sh.ys, h0, &sh.rows, s),
                        &mut sh.gates[t * n * sw..(t + 1) * n * sw],
                    ),
                    CellKind::Gru => {
                        fill_rows(&mut fs.hp, w.bias.map(|(_, b_hh)| b_hh));
                        let a = self.state_in(&sh.h_prev, &sh.ys, h0, &sh.rows, s);
                        (a, &mut fs.hp[..])
                    }
                    // h_{t-1} and the result both in the outputs: the previous slot and this.
                    CellKind::Rnn(_) if sh.h_prev.is_empty() && s > 0 => {
                        read_write(&mut sh.ys, self.time(s - 1), t, nh)
                    }
                    CellKind::Rnn(_) => (
                        self.state_in(&sh.h_prev, &[], h0, &sh.rows, s),
                        &mut sh.ys[t * nh..(t + 1) * nh],
                    ),
                };
                let bias = (!fs.bias.is_empty()).then_some(&fs.bias[..]);
                *blk = Rows {
                    m: n,
                    a,
                    storage: AStorage::RowMajor,
                    c,
                    bias,
                };
            }
            // The weight is read in alternate orders, each step starting where the previous
            // one ended (in cache).
            let sweep = Sweep::alternate(s);
            step_product(&mut blocks[..count], w_hh_t, reborrow(&mut split), sweep);
            for (sh, fs) in group.iter_mut().zip(fss.iter_mut()) {
                self.forward_gates(sh, fs, h0, w, s);
            }
        }
    }

    /// A shard's work before its recurrence: the input projection of every step at once,
    /// `Xp = X W_ih^T` (the biases join later: the GRU's `b_ih` in its gate kernel, the other
    /// cells' in each step's product), its rows of `c0`, and with lengths the state of the
    /// first step. With `halves`, two threads each project half of the time steps.
    #[allow(clippy::too_many_arguments)]
    fn forward_begin<T: Float>(
        &self,
        sh: &mut Shard<T>,
        fs: &mut ForwardScratch<T>,
        x: &[T],
        h0: &[T],
        c0: Option<&[T]>,
        w: &Weights<'_, T>,
        halves: bool,
    ) {
        let (tl, b, h, i_sz) = (self.t_len, self.batch, self.hidden, self.in_size);
        let rows = sh.rows.clone();
        let n = rows.len();
        let gh = self.kind.gates() * h;
        // Xp goes straight where each step sums its pre-activations: the LSTM's saved block
        // (the gates, activated in place), the RNN's outputs (likewise), and their biases join
        // in each step's recurrent product (one pass over the projection fewer). The GRU keeps
        // Xp apart from its saved block, and b_ih apart from Xp (its gate kernel adds it); it
        // keeps b_hh apart too (its n gate scales `W_hn h + b_hn` by r).
        if !sh.xs.is_empty() {
            gather(x, &mut sh.xs, b, &rows, i_sz);
        }
        let xs = if sh.xs.is_empty() { x } else { &sh.xs };
        let xp = match self.kind {
            CellKind::Lstm => &mut sh.gates,
            CellKind::Gru => &mut fs.xp,
            CellKind::Rnn(_) => &mut sh.ys,
        };
        project(tl * n, i_sz, gh, xs, w.w_ih, w.w_ih_packed, xp, halves);
        if self.kind != CellKind::Gru {
            // One row of `b_ih + b_hh` (empty without biases).
            init_input_projection(&mut fs.bias, w.bias, self.kind);
        }
        let nh = n * h;
        if let Some(c0) = c0 {
            sh.c0.copy_from_slice(&c0[rows.start * h..rows.end * h]);
        }
        // With lengths, `h_prev[t]` holds the state step t starts from: h0 at the first step.
        if !sh.h_prev.is_empty() && tl > 0 {
            let t0 = self.time(0);
            sh.h_prev[t0 * nh..(t0 + 1) * nh].copy_from_slice(&h0[rows.start * h..rows.end * h]);
        }
    }

    /// Step `s` of a shard once its recurrent product is in: the fused gate kernel, which
    /// writes the new state `h_t` to its output slot `y_t`. Without lengths that is all: the
    /// next step starts from `y_t`. With lengths, a sequence past its length keeps its state
    /// (and, for the LSTM, its saved `c_t` is the `c` it keeps) while its output is zero; the
    /// state goes on to the next step's `h_prev`, or after the last step to `fs.h_cur`.
    fn forward_gates<T: Float>(
        &self,
        sh: &mut Shard<T>,
        fs: &mut ForwardScratch<T>,
        h0: &[T],
        w: &Weights<'_, T>,
        s: usize,
    ) {
        let (tl, h) = (self.t_len, self.hidden);
        let rows = sh.rows.clone();
        let n = rows.len();
        let gh = self.kind.gates() * h;
        let nh = n * h;
        let t = self.time(s);
        let (st, sb) = (t * nh, (t + 1) * nh);
        let all_active = (rows.clone()).all(|r| self.active(t, r));
        let keep_prev = !sh.h_prev.is_empty();
        let y = &mut sh.ys;
        let (h_in, h_out, h_next): (&[T], &mut [T], Option<&mut [T]>) = if keep_prev {
            let (h_in, h_next) = if s + 1 < tl {
                read_write(&mut sh.h_prev, t, self.time(s + 1), nh)
            } else {
                (&sh.h_prev[st..sb], &mut fs.h_cur[..])
            };
            (h_in, &mut y[st..sb], Some(h_next))
        } else if s == 0 {
            (&h0[rows.start * h..rows.end * h], &mut y[st..sb], None)
        } else {
            let (h_in, h_out) = read_write(y, self.time(s - 1), t, nh);
            (h_in, h_out, None)
        };
        let sw = self.saved_width();
        let saved = &mut sh.gates[t * n * sw..(t + 1) * n * sw];
        // The LSTM and the GRU write the new state straight into y_t; the RNN's y_t holds its
        // pre-activation, activated in place.
        match self.kind {
            CellKind::Lstm => {
                let (c_in, c_out) = if s == 0 {
                    (&sh.c0[..], &mut sh.c_new[st..sb])
                } else {
                    read_write(&mut sh.c_new, self.time(s - 1), t, nh)
                };
                lstm::lstm_forward(saved, c_in, c_out, h_out, h);
                if !all_active {
                    for bi in (0..n).filter(|&bi| !self.active(t, rows.start + bi)) {
                        let r = bi * h..(bi + 1) * h;
                        c_out[r.clone()].copy_from_slice(&c_in[r]);
                    }
                }
            }
            CellKind::Gru => {
                let xp_t = &fs.xp[t * n * gh..(t + 1) * n * gh];
                let b_ih = w.bias.map(|(b_ih, _)| b_ih);
                gru::gru_forward(xp_t, b_ih, &fs.hp, h_in, h_out, saved, h);
            }
            CellKind::Rnn(act) => rnn::rnn_forward(h_out, act),
        }
        if let Some(h_next) = h_next {
            for bi in 0..n {
                let r = bi * h..(bi + 1) * h;
                if self.active(t, rows.start + bi) {
                    h_next[r.clone()].copy_from_slice(&h_out[r]);
                } else {
                    // Past its length a sequence keeps its state; its output is zero.
                    h_next[r.clone()].copy_from_slice(&h_in[r.clone()]);
                    h_out[r].fill(T::ZERO);
                }
            }
        }
    }

    /// Backward through the recurrence of a group of shards, in lockstep as in
    /// [`Config::forward_group`]; `w_hh_p` is `W_hh` `[G*H, H]`, packed; `h0` and `y` are the
    /// layer's initial state and output (all rows). Leaves each shard's gradients in its `bs`
    /// (`dh`, `dc`, `dg`, `dhp`, `dx`, `dw_ih`, `dw_hh`, the bias parts). `split` as in
    /// [`Config::forward_group`].
    #[allow(clippy::too_many_arguments)]
    fn backward_group<T: Float>(
        &self,
        group: &[&Shard<T>],
        bss: &mut [BackwardScratch<T>],
        x: &[T],
        h0: &[T],
        y: &[T],
        w: &Weights<'_, T>,
        w_hh_p: StepWeight<'_, T>,
        gy: Option<&[T]>,
        gh_n: Option<&[T]>,
        gc_n: Option<&[T]>,
        want: Wanted,
        split: Option<&mut [T]>,
    ) {
        assert!(
            group.len() <= GROUP_SHARDS,
            "backward_group: too many shards"
        );
        let h = self.hidden;
        for (sh, bs) in group.iter().zip(bss.iter_mut()) {
            let rows = &sh.rows;
            let state_rows = |dst: &mut Vec<T>, g: Option<&[T]>| match g {
                Some(g) => dst.copy_from_slice(&g[rows.start * h..rows.end * h]),
                None => dst.fill(T::ZERO),
            };
            state_rows(&mut bs.dh, gh_n);
            if self.kind == CellKind::Lstm {
                state_rows(&mut bs.dc, gc_n);
            }
        }
        // The helper spins only through the recurrence: the products below split their own
        // work between the pool's threads.
        match split {
            Some(buf) => with_helper(|helper| {
                self.backward_steps(group, bss, h0, y, gy, w_hh_p, want, Some((buf, helper)));
            }),
            None => self.backward_steps(group, bss, h0, y, gy, w_hh_p, want, None),
        }
        for (sh, bs) in group.iter().zip(bss.iter_mut()) {
            self.backward_products(sh, bs, x, h0, y, w, want);
        }
    }

    /// Backward through the recurrence of a group of shards (see [`Config::backward_group`]),
    /// each step's products split with a helper where `split` says so.
    #[allow(clippy::too_many_arguments)]
    fn backward_steps<T: Float>(
        &self,
        group: &[&Shard<T>],
        bss: &mut [BackwardScratch<T>],
        h0: &[T],
        y: &[T],
        gy: Option<&[T]>,
        w_hh_p: StepWeight<'_, T>,
        want: Wanted,
        mut split: Split<'_, T>,
    ) {
        let gh = self.kind.gates() * self.hidden;
        for bs in bss.iter_mut() {
            bs.db_ih.fill(T::ZERO);
            bs.db_hh.fill(T::ZERO);
        }
        for s in (0..self.t_len).rev() {
            let t = self.time(s);
            for (sh, bs) in group.iter().zip(bss.iter_mut()) {
                self.backward_gates(sh, bs, h0, y, gy, s);
            }
            // dh_{t-1} += dG W_hh (GRU: the gradient of `W_hh h + b_hh`) for every shard.
            let mut blocks: [Rows<'_, T>; GROUP_SHARDS] = std::array::from_fn(|_| Rows::empty());
            for ((blk, sh), bs) in blocks.iter_mut().zip(group).zip(bss.iter_mut()) {
                let n = sh.rows.len();
                let dg = if self.kind == CellKind::Gru {
                    &bs.dhp
                } else {
                    &bs.dg
                };
                *blk = Rows {
                    m: n,
                    a: &dg[t * n * gh..(t + 1) * n * gh],
                    storage: AStorage::RowMajor,
                    c: &mut bs.dh,
                    bias: None,
                };
            }
            let sweep = Sweep::alternate(s);
            step_product(
                &mut blocks[..group.len()],
                w_hh_p,
                reborrow(&mut split),
                sweep,
            );
            for (sh, bs) in group.iter().zip(bss.iter_mut()) {
                self.backward_finished(sh, bs, s);
                self.add_bias_grads(sh.rows.len(), bs, t, want);
            }
        }
    }

    /// Step `s` of a shard's backward up to its recurrent product: the total gradient reaching
    /// `h_t` (from the next step and from the output `y_t`), then the fused kernel that turns
    /// it and the saved gates into `dG`; leaves in `dh` what the product adds to (zeros, or
    /// for the GRU its direct part of `dh_{t-1}`).
    fn backward_gates<T: Float>(
        &self,
        sh: &Shard<T>,
        bs: &mut BackwardScratch<T>,
        h0: &[T],
        y: &[T],
        gy: Option<&[T]>,
        s: usize,
    ) {
        let (b, h) = (self.batch, self.hidden);
        let rows = sh.rows.clone();
        let n = rows.len();
        let gh = self.kind.gates() * h;
        let sw = self.saved_width();
        let t = self.time(s);
        let (st, sb) = (t * n * h, (t + 1) * n * h);
        let BackwardScratch {
            dh,
            dc,
            dg,
            dhp,
            dh_t,
            keep,
            ..
        } = bs;
        let all_active = (rows.clone()).all(|r| self.active(t, r));
        match gy {
            Some(dy) if all_active => {
                let dy_t = &dy[(t * b + rows.start) * h..(t * b + rows.end) * h];
                for ((d, &a), &g) in dh_t.iter_mut().zip(dh.iter()).zip(dy_t) {
                    *d = a + g;
                }
            }
            Some(dy) => {
                dh_t.copy_from_slice(dh);
                for bi in 0..n {
                    if self.active(t, rows.start + bi) {
                        let src = (t * b + rows.start + bi) * h;
                        tensor::add(&mut dh_t[bi * h..(bi + 1) * h], &dy[src..src + h]);
                    }
                }
            }
            None => dh_t.copy_from_slice(dh),
        }
        let saved = &sh.gates[t * n * sw..(t + 1) * n * sw];
        let dg_t = &mut dg[t * n * gh..(t + 1) * n * gh];
        match self.kind {
            CellKind::Lstm => {
                // A finished sequence's dc passes through this step unchanged (see
                // `backward_finished`).
                if !all_active {
                    keep.copy_from_slice(dc);
                }
                let c_prev = if s == 0 {
                    &sh.c0[..]
                } else {
                    let tp = self.time(s - 1);
                    &sh.c_new[tp * n * h..(tp + 1) * n * h]
                };
                lstm::lstm_backward(saved, c_prev, &sh.c_new[st..sb], dh_t, dc, dg_t, h);
                dh.fill(T::ZERO);
            }
            CellKind::Gru => {
                let dhp_t = &mut dhp[t * n * gh..(t + 1) * n * gh];
                let h_prev = self.state_in(&sh.h_prev, sh.outputs(y), h0, &rows, s);
                gru::gru_backward(saved, h_prev, dh_t, dg_t, dhp_t, dh, h);
            }
            CellKind::Rnn(act) => {
                // h_t is the output (for a finished sequence zero, but its dG is zeroed in
                // `backward_finished`).
                rnn::rnn_backward(&sh.outputs(y)[st..sb], dh_t, dg_t, act);
                dh.fill(T::ZERO);
            }
        }
    }

    /// Step `s` of a shard's backward after its recurrent product: a finished sequence passes
    /// its gradient straight through the step.
    fn backward_finished<T: Float>(&self, sh: &Shard<T>, bs: &mut BackwardScratch<T>, s: usize) {
        let t = self.time(s);
        let rows = sh.rows.clone();
        if rows.clone().all(|r| self.active(t, r)) {
            return;
        }
        let (n, h) = (rows.len(), self.hidden);
        let gh = self.kind.gates() * h;
        let lstm = self.kind == CellKind::Lstm;
        let gru_cell = self.kind == CellKind::Gru;
        for bi in (0..n).filter(|&bi| !self.active(t, rows.start + bi)) {
            let r = bi * h..(bi + 1) * h;
            bs.dh[r.clone()].copy_from_slice(&bs.dh_t[r.clone()]);
            if lstm {
                bs.dc[r.clone()].copy_from_slice(&bs.keep[r]);
            }
            let g = t * n * gh + bi * gh..t * n * gh + (bi + 1) * gh;
            bs.dg[g.clone()].fill(T::ZERO);
            if gru_cell {
                bs.dhp[g].fill(T::ZERO);
            }
        }
    }

    /// Step `t`'s part of a shard's bias gradients, once its `dG` rows are final: their column
    /// sums, added while the rows are still in cache (a pass over `dG` after the recurrence
    /// read them back from memory: about 1.3 % of the medium LSTM's step and 2.5 % of the
    /// GRU's, at B = 64, T = 100, H = 256). The GRU's `b_hh` takes the hidden-side `dG`; the
    /// LSTM and the RNN add both biases to the same pre-activations, so their gradients are
    /// equal, summed once (into `db_ih`, copied after the steps) unless only `b_hh` is wanted.
    fn add_bias_grads<T: Float>(
        &self,
        n: usize,
        bs: &mut BackwardScratch<T>,
        t: usize,
        want: Wanted,
    ) {
        let gh = self.kind.gates() * self.hidden;
        let rows = t * n * gh..(t + 1) * n * gh;
        let gru = self.kind == CellKind::Gru;
        if want.b_ih {
            add_col_sums(&mut bs.db_ih, &bs.dg[rows.clone()]);
        }
        if want.b_hh && (gru || !want.b_ih) {
            let dg_h = if gru { &bs.dhp } else { &bs.dg };
            add_col_sums(&mut bs.db_hh, &dg_h[rows]);
        }
    }

    /// A shard's products over all its time steps once its recurrence is done: its rows of
    /// `dX = dG W_ih` and its parts of `dW_ih = dG^T X` and `dW_hh = dG^T H_prev` (the bias
    /// gradients are summed during the recurrence, [`Config::add_bias_grads`]).
    #[allow(clippy::too_many_arguments)]
    fn backward_products<T: Float>(
        &self,
        sh: &Shard<T>,
        bs: &mut BackwardScratch<T>,
        x: &[T],
        h0: &[T],
        y: &[T],
        w: &Weights<'_, T>,
        want: Wanted,
    ) {
        let (tl, h, i_sz) = (self.t_len, self.hidden, self.in_size);
        let rows = sh.rows.clone();
        let n = rows.len();
        let nh = n * h;
        let gh = self.kind.gates() * h;
        let h0 = &h0[rows.start * h..rows.end * h];
        let hs = sh.outputs(y);
        let keep_prev = !sh.h_prev.is_empty();
        // dG for the recurrent weights: the GRU's hidden-side gradient, else dG itself.
        let dg_h: &[T] = if self.kind == CellKind::Gru {
            &bs.dhp
        } else {
            &bs.dg
        };
        let dg: &[T] = &bs.dg;
        // The three large products are independent: run them side by side (each writes its
        // own buffer, so the result does not depend on how they are scheduled). Each weight
        // gradient reads dG in place as `dG^T` and packs the shard's inputs to the weight.
        let (dx, dw_ih, dw_hh) = (&mut bs.dx, &mut bs.dw_ih, &mut bs.dw_hh);
        let (x_packed, h_packed) = (&mut bs.x_packed, &mut bs.h_packed);
        let xs = sh.x(x);
        let dx_job = || {
            if want.x {
                let w_ih = w
                    .w_ih_packed
                    .expect("backward: W_ih is packed when dX is wanted");
                gemm_packed_set(tl * n, dg, w_ih, dx);
            }
        };
        // dW = dG^T A, `[G*H, cols]`, with `A` `[rows, cols]` packed in `packed` and `dG`
        // `[rows, G*H]` read in place.
        let weight_grad = |dg: &[T], packed: &PackedB<T>, dw: &mut [T]| {
            let mut blocks = [Rows {
                m: gh,
                a: dg,
                storage: AStorage::ColMajor { ld: gh },
                c: dw,
                bias: None,
            }];
            gemm_packed_set_rows(&mut blocks, packed);
        };
        let dw_ih_job = || {
            if want.w_ih {
                x_packed.pack(xs, tl * n, i_sz);
                weight_grad(dg, x_packed, dw_ih);
            }
        };
        let dw_hh_job = || {
            if !want.w_hh {
                return;
            }
            if keep_prev || tl == 0 {
                h_packed.pack(&sh.h_prev, tl * n, h);
                return weight_grad(dg_h, h_packed, dw_hh);
            }
            // Step 0 starts from h0; every later step from the previous step's output, which
            // in time order is the next output (reverse) or the one before. A zero initial
            // state (the default) adds nothing: its rows are left out (at B = 1 they were a
            // rank-one update of 0.11 ms in a 3 ms tiny-batch LSTM step).
            let with_h0 = h0.iter().any(|&v| v != T::ZERO);
            let (dg_rows, parts): (&[T], [&[T]; 2]) = match (self.reverse, with_h0) {
                (false, true) => (dg_h, [h0, &hs[..(tl - 1) * nh]]),
                (false, false) => (&dg_h[n * gh..], [&hs[..(tl - 1) * nh], &[]]),
                (true, true) => (dg_h, [&hs[nh..tl * nh], h0]),
                (true, false) => (&dg_h[..(tl - 1) * n * gh], [&hs[nh..tl * nh], &[]]),
            };
            h_packed.pack_stacked(&parts, h);
            weight_grad(dg_rows, h_packed, dw_hh);
        };
        rayon::join(dx_job, || rayon::join(dw_ih_job, dw_hh_job));
        // The bias gradients were summed step by step (`add_bias_grads`); the LSTM's and the
        // RNN's are one sum.
        if want.b_ih && want.b_hh && self.kind != CellKind::Gru {
            bs.db_hh.copy_from_slice(&bs.db_ih);
        }
    }
}

impl<T: Float> FusedDirection<T> {
    /// Runs the recurrence into `y` `[T, B, H]`, `h_n` and (LSTM) `c_n` `[B, H]`.
    fn forward(
        &mut self,
        inp: &[&Tensor<T>],
        scratch: &mut [ForwardScratch<T>],
        split: Option<&mut [T]>,
        y: &mut Vec<T>,
        h_n: &mut [T],
        c_n: &mut [T],
    ) {
        let cfg = &self.cfg;
        let (b, h) = (cfg.batch, cfg.hidden);
        let w = cfg.weights(inp);
        // W_ih^T packed once for every shard's input projection over more than SMALL_ROWS rows.
        let w_ih_packed = if self
            .shards
            .iter()
            .any(|sh| projects_packed(cfg.t_len * sh.rows.len()))
        {
            let gh = cfg.kind.gates() * h;
            self.w_ih.pack_transposed(w.w_ih, gh, cfg.in_size);
            Some(&self.w_ih)
        } else {
            None
        };
        let w = Weights { w_ih_packed, ..w };
        let lstm = cfg.kind == CellKind::Lstm;
        let (x, h0) = (inp[X].data(), inp[H0].data());
        let c0 = lstm.then(|| inp[2].data());
        // W_hh^T packed once for the whole sequence (a single row over a W_hh larger than
        // L2: W_hh copied as stored): h_{t-1} W_hh^T at every step reads it.
        let w_hh_t = match &mut self.w_hh {
            RecurrentWeight::Packed(p) => {
                p.pack_transposed(w.w_hh, cfg.kind.gates() * h, h);
                StepWeight::Packed(&*p)
            }
            RecurrentWeight::Stored(m) => {
                m.copy_from(w.w_hh, cfg.kind.gates() * h, h);
                StepWeight::Rows(&*m)
            }
        };
        // A single shard writes the layer's output in place: lend it the buffer.
        let single = self.shards.len() == 1;
        if single {
            std::mem::swap(&mut self.shards[0].ys, y);
        }
        match split {
            // One group whose products two threads share.
            Some(buf) => {
                cfg.forward_group(&mut self.shards, scratch, x, h0, c0, &w, w_hh_t, Some(buf))
            }
            None => {
                let len = group_len(self.shards.len());
                for_each_group(&mut self.shards, scratch, len, |g, fs| {
                    cfg.forward_group(g, fs, x, h0, c0, &w, w_hh_t, None);
                });
            }
        }
        if single {
            std::mem::swap(&mut self.shards[0].ys, y);
        } else {
            // Each shard's rows into y, in parallel over time steps.
            let shards = &self.shards;
            y.par_chunks_mut(b * h).enumerate().for_each(|(t, y_t)| {
                for sh in shards {
                    let n = sh.rows.len();
                    y_t[sh.rows.start * h..sh.rows.end * h]
                        .copy_from_slice(&sh.ys[t * n * h..(t + 1) * n * h]);
                }
            });
        }
        for (sh, fs) in self.shards.iter().zip(scratch.iter()) {
            let r = sh.rows.start * h..sh.rows.end * h;
            h_n[r.clone()].copy_from_slice(&fs.h_cur);
            if lstm {
                c_n[r].copy_from_slice(sh.c_final(cfg));
            }
        }
    }
}

impl<T: Float> CustomOp<T> for FusedDirection<T> {
    fn name(&self) -> &str {
        match self.cfg.kind {
            CellKind::Rnn(_) => "fused_rnn",
            CellKind::Lstm => "fused_lstm",
            CellKind::Gru => "fused_gru",
        }
    }

    fn backward(
        &mut self,
        inp: &[&Tensor<T>],
        outputs: &[&Tensor<T>],
        gout: &[Option<&Tensor<T>>],
        gin: &mut [Option<Tensor<T>>],
        ws: &mut Workspace<'_, T>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (b, h, i_sz) = (cfg.batch, cfg.hidden, cfg.in_size);
        let gh = cfg.kind.gates() * h;
        let wi = cfg.w_ih_index();
        let w = cfg.weights(inp);
        let lstm = cfg.kind == CellKind::Lstm;
        // W_hh [G*H, H] packed once: dh_{t-1} = dG W_hh at every step reads it (a single row
        // over a large W_hh reads the forward's copy as stored).
        let w_hh_p = match &mut self.w_hh {
            RecurrentWeight::Packed(p) => {
                p.pack(w.w_hh, gh, h);
                StepWeight::Packed(&*p)
            }
            RecurrentWeight::Stored(m) => StepWeight::Cols(&*m),
        };
        let want = Wanted {
            x: gin[X].is_some(),
            w_ih: gin[wi].is_some(),
            w_hh: gin[wi + 1].is_some(),
            b_ih: cfg.has_bias && gin[wi + 2].is_some(),
            b_hh: cfg.has_bias && gin[wi + 3].is_some(),
        };
        let gy = gout[0].map(Tensor::data);
        let gh_n = gout[1].map(Tensor::data);
        let gc_n = if lstm {
            gout.get(2).copied().flatten().map(Tensor::data)
        } else {
            None
        };
        // W_ih packed once for every shard's dX = dG W_ih.
        let w = if want.x {
            self.w_ih.pack(w.w_ih, gh, i_sz);
            Weights {
                w_ih_packed: Some(&self.w_ih),
                ..w
            }
        } else {
            w
        };
        let (x, h0, y) = (inp[X].data(), inp[H0].data(), outputs[0].data());
        let mut scratch: Vec<BackwardScratch<T>> = self
            .shards
            .iter()
            .map(|sh| BackwardScratch::take(cfg, sh.rows.len(), want, ws))
            .collect();
        let mut shards: Vec<&Shard<T>> = self.shards.iter().collect();
        let mut split = cfg.split_buffer(shards.len(), h, ws);
        match split.as_deref_mut() {
            // One group whose products two threads share.
            Some(buf) => {
                let (g, bs) = (&shards[..], &mut scratch[..]);
                cfg.backward_group(g, bs, x, h0, y, &w, w_hh_p, gy, gh_n, gc_n, want, Some(buf));
            }
            None => {
                let len = group_len(shards.len());
                for_each_group(&mut shards, &mut scratch, len, |g, bs| {
                    cfg.backward_group(g, bs, x, h0, y, &w, w_hh_p, gy, gh_n, gc_n, want, None);
                });
            }
        }
        if let Some(v) = split {
            ws.give(v);
        }
        // The tape hands this op stale gradient buffers (`overwrites_grad_inputs`): every
        // element below is written, not added to. The gradients of X, h0 and c0 are the shards'
        // rows side by side; dX in parallel over time steps.
        if let Some(gx) = gin[X].as_mut() {
            let (shards, scratch) = (&self.shards, &scratch);
            let row = b * i_sz;
            gx.data_mut()
                .par_chunks_mut(row)
                .enumerate()
                .for_each(|(t, gx_t)| {
                    for (sh, g) in shards.iter().zip(scratch) {
                        let (rows, n) = (&sh.rows, sh.rows.len());
                        gx_t[rows.start * i_sz..rows.end * i_sz]
                            .copy_from_slice(&g.dx[t * n * i_sz..(t + 1) * n * i_sz]);
                    }
                });
        }
        for (sh, g) in self.shards.iter().zip(&scratch) {
            let rows = sh.rows.start * h..sh.rows.end * h;
            if let Some(g0) = gin[H0].as_mut() {
                g0.data_mut()[rows.clone()].copy_from_slice(&g.dh);
            }
            if lstm && let Some(g0) = gin[2].as_mut() {
                g0.data_mut()[rows].copy_from_slice(&g.dc);
            }
        }
        // The weights' gradients are sums over the shards, added in shard order: the sums never
        // depend on which thread ran which shard. The first shard's parts become the gradients
        // themselves (the buffers trade places); the others' are added, spread over the pool.
        let parts = |g: &mut BackwardScratch<T>| {
            [
                (wi, std::mem::take(&mut g.dw_ih)),
                (wi + 1, std::mem::take(&mut g.dw_hh)),
                (wi + 2, std::mem::take(&mut g.db_ih)),
                (wi + 3, std::mem::take(&mut g.db_hh)),
            ]
        };
        for (s, g) in scratch.iter_mut().enumerate() {
            for (slot, mut part) in parts(g) {
                match gin.get_mut(slot).and_then(Option::as_mut) {
                    Some(dst) if !part.is_empty() => {
                        if s > 0 {
                            tensor::add(dst.data_mut(), &part);
                        } else {
                            dst.swap_data(&mut part);
                        }
                    }
                    _ => {}
                }
                ws.give(part);
            }
        }
        for g in scratch {
            g.give(ws);
        }
        Ok(())
    }

    fn overwrites_grad_inputs(&self) -> bool {
        true
    }

    fn recycle(&mut self, ws: &mut Workspace<'_, T>) {
        for sh in self.shards.drain(..) {
            sh.give(ws);
        }
        let w_hh = std::mem::replace(&mut self.w_hh, RecurrentWeight::Packed(PackedB::new()));
        ws.give(w_hh.into_buffer());
        ws.give(std::mem::take(&mut self.w_ih).into_buffer());
    }
}
