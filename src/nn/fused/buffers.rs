//! The buffers of one shard: the activations its backward needs ([`Shard`]) and the working
//! buffers of its forward and backward, all taken from and given back to the tape's workspace.

use std::ops::Range;

use super::Config;
use super::backward::Wanted;
use crate::kernels::gemm_nn::{PackedB, blocked_b_len};
use crate::nn::direction::CellKind;
use crate::tape::{Scratch, Workspace};
use crate::tensor::Float;

/// The activations one shard's backward needs, in the shard's own time-major layout
/// `[T, rows, .]`.
pub(super) struct Shard<T> {
    pub(super) rows: Range<usize>,
    /// Per time step: LSTM activated gates `[n, 4H]`; GRU `r, z, n, W_hn h + b_hn` `[n, 4H]`;
    /// RNN none (its pre-activations are summed in its output slots `y_t` and activated there,
    /// and its backward reads `h_t` from them).
    pub(super) gates: Scratch<T>,
    /// With sequence lengths: `h_{t-1}` for every time step `[T, n, H]`, time-indexed (a
    /// finished sequence keeps its state while its output is zero). Without, it is empty:
    /// `h_{t-1}` is the previous step's output, or `h0` at the first step.
    pub(super) h_prev: Scratch<T>,
    /// The shard's outputs `h_t` `[T, n, H]` when it is not the whole batch (a single shard
    /// writes the layer's output in place, which backward reads from the node's outputs).
    pub(super) ys: Scratch<T>,
    /// LSTM: `c_t` for every time step (for a sequence past its length, the state it keeps), and
    /// the shard's rows of `c0`: `c_{t-1}` is the previous step's entry, or `c0` at the first.
    pub(super) c_new: Scratch<T>,
    pub(super) c0: Scratch<T>,
    /// In bf16, the shard's rows of the input `[T, n, I]` when it is not the whole batch (its
    /// weight gradient packs them whole); else empty: the input is read in place.
    pub(super) xs: Scratch<T>,
    /// With recurrent dropout: `a_t = m * h_{t-1}` of every step `[T, n, H]`, time-indexed,
    /// what each step's product reads and `dW_hh = sum_t dG_t^T a_t` packs.
    pub(super) h_drop: Scratch<T>,
    /// RNN with zoneout: the new values `h~_t` `[T, n, H]` (its output is the blend; its
    /// backward needs `act'` at `h~_t`).
    pub(super) h_new: Scratch<T>,
}

impl<T: Float> Shard<T> {
    /// The shard's saved buffers, from the pool (every one is overwritten in full by forward).
    pub(super) fn take(cfg: &Config, rows: Range<usize>, ws: &mut Workspace<'_, T>) -> Self {
        let (tl, n, h) = (cfg.t_len, rows.len(), cfg.hidden);
        let lstm = cfg.kind.has_cell_state();
        let part = n < cfg.batch;
        Shard {
            gates: ws.lend(tl * n * cfg.saved_width()),
            h_prev: ws.lend(if cfg.lengths.is_some() { tl * n * h } else { 0 }),
            ys: ws.lend(if part { tl * n * h } else { 0 }),
            c_new: ws.lend(if lstm { tl * n * h } else { 0 }),
            c0: ws.lend(if lstm { n * h } else { 0 }),
            xs: ws.lend(if part && cfg.bf16 {
                tl * n * cfg.in_size
            } else {
                0
            }),
            h_drop: ws.lend(if cfg.h_drop { tl * n * h } else { 0 }),
            h_new: ws.lend(if cfg.zone_h && !lstm && cfg.kind != CellKind::Gru {
                tl * n * h
            } else {
                0
            }),
            rows,
        }
    }

    pub(super) fn give(self, ws: &mut Workspace<'_, T>) {
        for v in [
            self.ys,
            self.gates,
            self.h_prev,
            self.c_new,
            self.c0,
            self.xs,
            self.h_drop,
            self.h_new,
        ] {
            ws.give_back(v);
        }
    }

    /// LSTM: the shard's final cell state `[n, H]`, the last step's saved `c_t` (`c0` for an
    /// empty sequence).
    pub(super) fn c_final(&self, cfg: &Config) -> &[T] {
        let nh = self.rows.len() * cfg.hidden;
        match cfg.t_len {
            0 => &self.c0,
            tl => {
                let t = cfg.time(tl - 1);
                &self.c_new[t * nh..(t + 1) * nh]
            }
        }
    }

    /// The shard's rows of the input `x` `[T, B, I]` as one `[T, n, I]` buffer: its copy (in
    /// bf16), or the input itself when the shard is the whole batch.
    pub(super) fn x<'a>(&'a self, x: &'a [T]) -> &'a [T] {
        if self.xs.is_empty() { x } else { &self.xs }
    }

    /// The shard's outputs `[T, n, H]` after forward: its own buffer, or for a single shard
    /// the layer's output `y`.
    pub(super) fn outputs<'a>(&'a self, y: &'a [T]) -> &'a [T] {
        if self.ys.is_empty() { y } else { &self.ys }
    }
}

/// A shard's working buffers for the forward, given back once it has run.
pub(super) struct ForwardScratch<T> {
    /// GRU: the input projection `Xp = X W_ih^T` of every step `[T, n, 3H]`, without `b_ih`
    /// (the LSTM and the RNN write theirs straight into the saved gates).
    pub(super) xp: Scratch<T>,
    /// The shard's final state `h_n` `[n, H]`.
    pub(super) h_cur: Scratch<T>,
    /// GRU: `W_hh h + b_hh` of one step `[n, 3H]`.
    pub(super) hp: Scratch<T>,
    /// LSTM and RNN with biases: `b_ih + b_hh` `[G*H]`, which each step's recurrent product
    /// adds to the projection.
    pub(super) bias: Scratch<T>,
}

impl<T: Float> ForwardScratch<T> {
    pub(super) fn take(cfg: &Config, n: usize, ws: &mut Workspace<'_, T>) -> Self {
        let (tl, h) = (cfg.t_len, cfg.hidden);
        let gh = cfg.kind.gates() * h;
        let gru = cfg.kind == CellKind::Gru;
        ForwardScratch {
            xp: ws.lend(if gru { tl * n * gh } else { 0 }),
            h_cur: ws.lend(n * h),
            hp: ws.lend(if gru { n * gh } else { 0 }),
            bias: ws.lend(if cfg.has_bias() && !gru { gh } else { 0 }),
        }
    }

    pub(super) fn give(self, ws: &mut Workspace<'_, T>) {
        for v in [self.xp, self.h_cur, self.hp, self.bias] {
            ws.give_back(v);
        }
    }
}

/// A shard's working buffers for the backward; after the parallel part they hold its
/// gradients, which are then added up in shard order.
pub(super) struct BackwardScratch<T> {
    /// `dh` carried back through time; at the end, the shard's rows of `dh0`.
    pub(super) dh: Scratch<T>,
    /// LSTM: `dc` likewise; at the end, the rows of `dc0`.
    pub(super) dc: Scratch<T>,
    /// The gradient of the gate pre-activations of every step `[T, n, G*H]` (GRU: of `Xp`).
    pub(super) dg: Scratch<T>,
    /// GRU: the gradient of `Hp = W_hh h + b_hh` of every step `[T, n, 3H]`.
    pub(super) dhp: Scratch<T>,
    pub(super) dh_t: Scratch<T>,
    pub(super) keep: Scratch<T>,
    /// Recurrent dropout: one step's `dG W_hh` `[n, H]`, the gradient of `m * h_{t-1}`.
    pub(super) da: Scratch<T>,
    /// Zoneout: one step's `d_t * dh_t` `[n, H]`, what reaches `h_{t-1}` directly.
    pub(super) kept: Scratch<T>,
    /// The shard's rows of `dX` `[T, n, I]`, and its parts of `dW_ih`, `dW_hh`, `db_ih` and
    /// `db_hh`.
    pub(super) dx: Scratch<T>,
    pub(super) dw_ih: Vec<T>,
    pub(super) dw_hh: Vec<T>,
    pub(super) db_ih: Vec<T>,
    pub(super) db_hh: Vec<T>,
    /// Where the weight gradients `dG^T X` and `dG^T H` pack the shard's `X` `[T n, I]` and
    /// `h_{t-1}` `[T n, H]`, a cache block of rows at a time (empty in bf16).
    pub(super) x_packed: PackedB<T>,
    pub(super) h_packed: PackedB<T>,
}

impl<T: Float> BackwardScratch<T> {
    pub(super) fn take(cfg: &Config, n: usize, want: Wanted, ws: &mut Workspace<'_, T>) -> Self {
        let (tl, h, i) = (cfg.t_len, cfg.hidden, cfg.in_size);
        let gh = cfg.kind.gates() * h;
        let lstm = cfg.kind.has_cell_state();
        let gru = cfg.kind == CellKind::Gru;
        let size = |wanted: bool, len: usize| if wanted { len } else { 0 };
        BackwardScratch {
            dh: ws.lend(n * h),
            dc: ws.lend(size(lstm, n * h)),
            dg: ws.lend(tl * n * gh),
            dhp: ws.lend(size(gru, tl * n * gh)),
            dh_t: ws.lend(n * h),
            keep: ws.lend(size(lstm, n * h)),
            da: ws.lend(size(cfg.h_drop, n * h)),
            kept: ws.lend(size(cfg.zone_h, n * h)),
            dx: ws.lend(size(want.x, tl * n * i)),
            dw_ih: ws.scratch(size(want.w_ih, gh * i)),
            dw_hh: ws.scratch(size(want.w_hh, gh * h)),
            db_ih: ws.scratch(size(want.b_ih, gh)),
            db_hh: ws.scratch(size(want.b_hh, gh)),
            // In bf16 the weight gradients pack their inputs in bf16 instead.
            // Whole lent buffers: a packing keeps its buffer's length, so one that served a
            // longer sequence is not zeroed again for a shorter one.
            x_packed: PackedB::from_buffer(
                ws.lend(size(want.w_ih && !cfg.bf16, blocked_b_len::<T>(tl * n, i)))
                    .into_buffer(),
            ),
            h_packed: PackedB::from_buffer(
                ws.lend(size(want.w_hh && !cfg.bf16, blocked_b_len::<T>(tl * n, h)))
                    .into_buffer(),
            ),
        }
    }

    pub(super) fn give(self, ws: &mut Workspace<'_, T>) {
        let bufs = [
            self.dh, self.dc, self.dg, self.dhp, self.dh_t, self.keep, self.da, self.kept, self.dx,
        ];
        for v in bufs {
            ws.give_back(v);
        }
        for v in [self.dw_ih, self.dw_hh, self.db_ih, self.db_hh] {
            ws.give(v);
        }
        ws.give_back(Scratch::whole(self.x_packed.into_buffer()));
        ws.give_back(Scratch::whole(self.h_packed.into_buffer()));
    }
}

/// Copies rows `rows` of every time step of a `[T, b, w]` buffer into `out` `[T, n, w]`.
pub(super) fn gather<T: Float>(src: &[T], out: &mut [T], b: usize, rows: &Range<usize>, w: usize) {
    let n = rows.len();
    for (t, dst) in out.chunks_exact_mut(n * w).enumerate() {
        dst.copy_from_slice(&src[(t * b + rows.start) * w..(t * b + rows.end) * w]);
    }
}

/// Block `read` of `buf` (blocks of `len` values) to read and a different block `write` to
/// write.
pub(super) fn read_write<T>(
    buf: &mut [T],
    read: usize,
    write: usize,
    len: usize,
) -> (&[T], &mut [T]) {
    assert_ne!(read, write, "read_write: the two blocks must differ");
    if read < write {
        let (lo, hi) = buf.split_at_mut(write * len);
        (&lo[read * len..(read + 1) * len], &mut hi[..len])
    } else {
        let (lo, hi) = buf.split_at_mut(read * len);
        (&hi[..len], &mut lo[write * len..(write + 1) * len])
    }
}
