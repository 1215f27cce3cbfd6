//! The fused recurrence: one tape node per layer and direction.
//!
//! An LSTM with a projection (`proj_size`) runs as its own node, [`projected`], which follows
//! the same schedule over the whole batch at once, and so does a layer-normalized LSTM or GRU
//! (`layer_norm`), [`layer_norm`]; everything below describes the other layers.
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

use super::direction::{CellKind, DirectionOutput, DirectionRun, is_active, step_time};
use crate::Result;
use crate::kernels::gemm_nn::PackedB;
use crate::kernels::gemv::AlignedMatrix;
use crate::params::ParamStore;
use crate::tape::Tape;
use crate::tensor::{Float, Shape, Tensor};

mod backward;
mod bf16;
mod buffers;
mod forward;
mod layer_norm;
mod projected;
mod schedule;
mod weights;

use buffers::{ForwardScratch, Shard};
pub(crate) use layer_norm::run as run_layer_norm;
pub(crate) use projected::run as run_projected;
pub(crate) use schedule::shard_ranges;
pub use weights::SingleRow;
use weights::{RecurrentWeight, Weights};
pub(crate) use weights::{fill_rows, init_input_projection};

/// Runs one direction of one layer as a single fused tape node.
pub(crate) fn run<T: Float>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    run: &DirectionRun<'_>,
) -> Result<DirectionOutput> {
    let (x, h0, c0) = (run.x, run.h0, run.c0);
    let bf16_kernel = tape.bf16_kernel();
    let w = run.weights(tape, store)?;
    let bias = w.b_ih.zip(w.b_hh);
    let slots = Slots::new(c0.is_some(), bias.is_some());
    let mut inputs = vec![x, h0];
    inputs.extend(c0);
    inputs.extend([w.w_ih, w.w_hh]);
    if let Some((bi, bh)) = bias {
        inputs.extend([bi, bh]);
    }
    debug_assert_eq!(inputs.len(), slots.count());
    let xs = tape.shape(x)?;
    let (t_len, batch, in_size) = (xs.dims()[0], xs.dims()[1], xs.dims()[2]);
    let hidden = tape.shape(h0)?.dims()[1];
    // The regularizers' masks, copied out of the tape: the node owns them.
    let mask_of = |tape: &Tape<T>, v: Option<crate::tape::Var>| -> Result<Vec<T>> {
        Ok(match v {
            Some(v) => tape.value(v)?.data().to_vec(),
            None => Vec::new(),
        })
    };
    let reg = RegMasks {
        h_drop: mask_of(tape, run.masks.h_drop)?,
        zone_h: mask_of(tape, run.masks.zone_h)?,
        zone_c: mask_of(tape, run.masks.zone_c)?,
    };
    let cfg = Config {
        kind: run.kind,
        reverse: run.reverse,
        lengths: run.lengths.map(<[usize]>::to_vec),
        t_len,
        batch,
        in_size,
        hidden,
        slots,
        h_drop: !reg.h_drop.is_empty(),
        zone_h: !reg.zone_h.is_empty(),
        zone_c: !reg.zone_c.is_empty(),
        bf16: bf16_kernel.is_some(),
    };
    let lstm = cfg.kind.has_cell_state();
    let gates_h = cfg.kind.gates() * hidden;
    // Room for a packing in `T`, which the products in bf16 do not use.
    let room = |len: usize| if cfg.bf16 { 0 } else { len };
    // Shards run on every thread: wake the others while this one takes the buffers and packs
    // the weights.
    let shards = shard_ranges(batch);
    if shards.len() > 1 {
        crate::threads::wake();
    }
    // Every buffer first, from the tape's pool; then the values, which borrow the tape.
    let mut ws = tape.workspace();
    let mut node = FusedDirection::<T> {
        shards: shards
            .into_iter()
            .map(|rows| Shard::take(&cfg, rows, &mut ws))
            .collect(),
        // A single row reads W_hh packed or as stored, whichever is faster on this machine
        // (`SingleRow::choose`); in bf16 always packed.
        w_hh: if batch == 1
            && !cfg.bf16
            && SingleRow::current(gates_h * hidden * std::mem::size_of::<T>()) == SingleRow::Stored
        {
            RecurrentWeight::Stored(AlignedMatrix::from_buffer(
                ws.scratch(AlignedMatrix::<T>::buffer_len(gates_h, hidden)),
            ))
        } else {
            // W_hh^T packed in forward, W_hh in backward: room for both, so neither grows it.
            RecurrentWeight::Packed(PackedB::from_buffer(
                ws.scratch(room(
                    PackedB::<T>::packed_len(hidden, gates_h)
                        .max(PackedB::<T>::packed_len(gates_h, hidden)),
                )),
            ))
        },
        // W_ih^T packed in forward (the input projection), W_ih in backward (dX): room for both.
        w_ih: PackedB::from_buffer(
            ws.scratch(room(
                PackedB::<T>::packed_len(in_size, gates_h)
                    .max(PackedB::<T>::packed_len(gates_h, in_size)),
            )),
        ),
        cfg,
        reg: RegMasks::default(),
        bf16: bf16_kernel.map(bf16::Bf16Weights::new),
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
        let inp = Inputs::new(&node.cfg.slots, &vals, &reg);
        let split = split.as_deref_mut();
        node.forward(&inp, &mut scratch, split, &mut y, &mut h_n, &mut c_n);
    }
    node.reg = reg;
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

/// What every shard of one direction shares.
struct Config {
    kind: CellKind,
    reverse: bool,
    lengths: Option<Vec<usize>>,
    t_len: usize,
    batch: usize,
    in_size: usize,
    hidden: usize,
    /// Where each input sits in the node's list of inputs.
    slots: Slots,
    /// Recurrent dropout is on: each step's product reads `m * h_{t-1}`.
    h_drop: bool,
    /// Zoneout on `h` is on.
    zone_h: bool,
    /// Zoneout on the LSTM's `c` is on.
    zone_c: bool,
    /// The products run in bf16, on the weights and inputs packed in bf16: the packings in
    /// `T` stay empty.
    bf16: bool,
}

impl Config {
    /// The time index of processing step `s`.
    fn time(&self, s: usize) -> usize {
        step_time(self.reverse, s, self.t_len)
    }

    /// Whether batch entry `b` is inside its sequence at time `t`.
    fn active(&self, t: usize, b: usize) -> bool {
        is_active(self.lengths.as_deref(), t, b)
    }

    /// Whether the layer has the biases `b_ih` and `b_hh`.
    fn has_bias(&self) -> bool {
        self.slots.bias.is_some()
    }

    /// Width of the per-step saved block (none for the RNN: what its backward needs, `h_t`,
    /// is its output).
    fn saved_width(&self) -> usize {
        match self.kind {
            CellKind::Rnn(_) => 0,
            CellKind::Lstm | CellKind::Gru => 4 * self.hidden,
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
    /// The regularizers' masks.
    reg: RegMasks<T>,
    /// The weights packed in bf16 when the tape's products are ([`crate::Precision::Bf16`]).
    bf16: Option<bf16::Bf16Weights>,
}

/// The regularizers' masks of one direction (each empty when its regularizer is off): the
/// recurrent dropout mask `m` `[B, H]` and zoneout's keep weights of `h` and (LSTM) `c`
/// `[T, B, H]`.
#[derive(Default)]
struct RegMasks<T> {
    h_drop: Vec<T>,
    zone_h: Vec<T>,
    zone_c: Vec<T>,
}

/// The regularizers' masks, as slices (see [`RegMasks`]).
#[derive(Clone, Copy)]
struct Reg<'a, T> {
    h_drop: &'a [T],
    zone_h: &'a [T],
    zone_c: &'a [T],
}

impl<'a, T> Reg<'a, T> {
    fn of(m: &'a RegMasks<T>) -> Self {
        Reg {
            h_drop: &m.h_drop,
            zone_h: &m.zone_h,
            zone_c: &m.zone_c,
        }
    }

    /// The recurrent dropout mask of a shard's rows `[n, H]`.
    fn h_drop_rows(&self, rows: &Range<usize>, h: usize) -> &'a [T] {
        &self.h_drop[rows.start * h..rows.end * h]
    }

    /// Zoneout's keep weights of a shard's rows at time `t`, `[n, H]`, of `h` or of `c`, in a
    /// batch of `b` rows.
    fn zone_rows(zone: &'a [T], t: usize, b: usize, rows: &Range<usize>, h: usize) -> &'a [T] {
        &zone[(t * b + rows.start) * h..(t * b + rows.end) * h]
    }
}

/// Where each of the node's inputs sits in its list of inputs, in the tape's order:
/// `x`, `h0`, (LSTM) `c0`, `W_ih`, `W_hh`, (with biases) `b_ih`, `b_hh`.
#[derive(Clone, Copy, Debug)]
struct Slots {
    x: usize,
    h0: usize,
    c0: Option<usize>,
    w_ih: usize,
    w_hh: usize,
    /// `b_ih` and `b_hh`.
    bias: Option<(usize, usize)>,
}

impl Slots {
    fn new(cell_state: bool, bias: bool) -> Self {
        let w_ih = if cell_state { 3 } else { 2 };
        Slots {
            x: 0,
            h0: 1,
            c0: cell_state.then_some(2),
            w_ih,
            w_hh: w_ih + 1,
            bias: bias.then_some((w_ih + 2, w_ih + 3)),
        }
    }

    /// How many inputs the node has.
    fn count(&self) -> usize {
        self.w_hh + 1 + if self.bias.is_some() { 2 } else { 0 }
    }
}

/// The node's inputs by name, read once from the tape's list.
#[derive(Clone, Copy)]
struct Inputs<'a, T> {
    /// `[T, B, I]`.
    x: &'a [T],
    /// `[B, H]`.
    h0: &'a [T],
    /// `[B, H]` (LSTM).
    c0: Option<&'a [T]>,
    w: Weights<'a, T>,
    /// The regularizers' masks.
    reg: Reg<'a, T>,
}

impl<'a, T: Float> Inputs<'a, T> {
    fn new(slots: &Slots, inp: &[&'a Tensor<T>], reg: &'a RegMasks<T>) -> Self {
        Inputs {
            reg: Reg::of(reg),
            x: inp[slots.x].data(),
            h0: inp[slots.h0].data(),
            c0: slots.c0.map(|k| inp[k].data()),
            w: Weights {
                w_ih: inp[slots.w_ih].data(),
                w_ih_packed: None,
                w_hh: inp[slots.w_hh].data(),
                bias: slots.bias.map(|(bi, bh)| (inp[bi].data(), inp[bh].data())),
                bf16: None,
            },
        }
    }
}
