//! One direction of a layer-normalized LSTM or GRU layer (see
//! [`RecurrentConfig::layer_norm`](crate::nn::RecurrentConfig::layer_norm)) as a single fused
//! tape node.
//!
//! Forward: one product gives `W_ih x_t` of every step, and each of its `T*B` rows is
//! normalized at once (the input side does not depend on `h`). Per step, the recurrent product
//! `h_{t-1} W_hh^T` (over `W_hh^T` packed once per pass), each of its rows normalized, then the
//! cell: the LSTM's gates, `c_t`, `LN(c_t)` and `h_t = o * tanh(LN(c_t))`, or the GRU's `r`,
//! `z`, `n` and `h_t`. The normalized rows and their inverse standard deviations are kept for
//! the backward, which needs no statistics again.
//!
//! Backward, in reverse time: per step the cell's gradient gives the gradients of both
//! normalized sides; the recurrent side goes back through its normalization and
//! `dh_{t-1} = dHp W_hh` (over `W_hh` packed once). After the loop the input side goes back
//! through its normalization over all rows at once, and one product each gives `dX`, `dW_ih`
//! and `dW_hh`. The gains' and biases' gradients are sums over the rows in a fixed order (time
//! step by time step, row by row).
//!
//! The batch runs as one block (no shards); with a second thread in the pool its products
//! split by rows (the input projection, each step's recurrent product) or run side by side
//! (`dX`, `dW_ih`, `dW_hh`), and each forward step's per-row work runs in two halves of the
//! rows. Each row is computed as it is alone, so the results do not depend on the number of
//! threads. (The backward's per-row work stays on one thread: its gains' gradients are sums
//! over the rows in one fixed order.) With sequence lengths, a sequence past its length keeps its state `h` and `c` while
//! its output is zero, as in the other fused layers.

use super::bf16::StepPacked;
use super::buffers::read_write;
use super::weights::by_row_halves;
use crate::kernels::bf16::Bf16Kernel;
use crate::kernels::gemm_nn::PackedB;
use crate::kernels::layer_norm as ln;
use crate::kernels::simd::map_inplace;
use crate::nn::direction::{CellKind, DirectionOutput, DirectionRun, is_active, step_time};
use crate::params::ParamStore;
use crate::precision::gemm;
use crate::tape::{CustomOp, Tape, Workspace};
use crate::tensor::{Float, Shape, Tensor};
use crate::{Error, Result};

/// Where each input sits in the node's list: `x`, `h0`, (LSTM) `c0`, `W_ih`, `W_hh`, `γ_x`,
/// `γ_h`, (LSTM) `γ_c`, `β_c`, (with biases) `b_ih`, `b_hh`.
#[derive(Clone, Copy, Debug)]
struct Slots {
    c0: Option<usize>,
    w_ih: usize,
    w_hh: usize,
    gamma_x: usize,
    gamma_h: usize,
    /// `γ_c`, `β_c`.
    cell: Option<(usize, usize)>,
    /// `b_ih`, `b_hh`.
    bias: Option<(usize, usize)>,
}

const X: usize = 0;
const H0: usize = 1;

impl Slots {
    fn new(lstm: bool, bias: bool) -> Self {
        let w_ih = if lstm { 3 } else { 2 };
        let after = w_ih + 4 + if lstm { 2 } else { 0 };
        Slots {
            c0: lstm.then_some(2),
            w_ih,
            w_hh: w_ih + 1,
            gamma_x: w_ih + 2,
            gamma_h: w_ih + 3,
            cell: lstm.then_some((w_ih + 4, w_ih + 5)),
            bias: bias.then_some((after, after + 1)),
        }
    }
}

/// Sizes and options of one direction.
#[derive(Clone, Debug)]
struct Dims {
    lstm: bool,
    reverse: bool,
    lengths: Option<Vec<usize>>,
    t_len: usize,
    batch: usize,
    in_size: usize,
    hidden: usize,
    /// The kernel of the products on a bf16 tape.
    bf16: Option<Bf16Kernel>,
}

impl Dims {
    fn time(&self, s: usize) -> usize {
        step_time(self.reverse, s, self.t_len)
    }

    fn active(&self, t: usize, b: usize) -> bool {
        is_active(self.lengths.as_deref(), t, b)
    }

    /// Gate blocks `G`: 4 for the LSTM, 3 for the GRU.
    fn gates(&self) -> usize {
        if self.lstm { 4 } else { 3 }
    }
}

/// The node: its sizes and what its backward reads, all `[T, B, .]` time-indexed.
struct LayerNormDirection<T> {
    dims: Dims,
    slots: Slots,
    /// `x^` of `W_ih x_t` `[T, B, G*H]` and the rows' inverse standard deviations `[T, B]`.
    xhat_x: Vec<T>,
    inv_x: Vec<T>,
    /// `x^` of `W_hh h_{t-1}` `[T, B, G*H]` and the inverse standard deviations `[T, B]`.
    xhat_h: Vec<T>,
    inv_h: Vec<T>,
    /// The state `h_{t-1}` each step starts from `[T, B, H]`.
    h_prev: Vec<T>,
    /// LSTM: the activated gates `i, f, g, o`; GRU: `r, z, n` and `h_n = γ_h x^_n + b_hn`
    /// `[T, B, 4H]`.
    acts: Vec<T>,
    /// LSTM: `c_t` `[T, B, H]` (for a sequence past its length, the `c` it keeps), `x^` of
    /// `c_t` `[T, B, H]`, its inverse standard deviations `[T, B]` and `tanh(LN(c_t))`
    /// `[T, B, H]`.
    c: Vec<T>,
    chat: Vec<T>,
    inv_c: Vec<T>,
    tc: Vec<T>,
    /// `W_hh^T` (forward) or `W_hh` (backward), packed for each step's product.
    w_hh: StepPacked<T>,
}

/// Fewest rows a product, or a step's per-row work, is split over two threads for: below, the
/// split costs more than it saves.
const SPLIT_ROWS: usize = 8;

/// Whether work over `m` rows runs as two halves side by side: with a second thread in the
/// pool and at least [`SPLIT_ROWS`] rows.
fn halves(m: usize) -> bool {
    m >= SPLIT_ROWS && crate::threads::parallel()
}

/// `c = a B` for `m` rows of `a` against `B` packed, by [`halves`] of the rows where it pays.
fn rows_product<T: Float>(m: usize, a: &[T], b: &StepPacked<T>, c: &mut [T]) {
    let (k, n) = b.k_n();
    by_row_halves((m, k, n), a, c, halves(m), |m, a, c| b.set(m, a, c));
}

/// The gains and biases a forward step reads (empty where the cell has none).
struct Gates<'a, T> {
    gamma_x: &'a [T],
    gamma_h: &'a [T],
    b_ih: &'a [T],
    b_hh: &'a [T],
    gamma_c: &'a [T],
    beta_c: &'a [T],
}

/// What one forward step's rows read, for the whole batch: `LN(W_ih x_t)`'s normalized rows
/// `xx` `[B, G*H]`, `h_{t-1}` and (LSTM) `c_{t-1}` `[B, H]`.
struct StepInputs<'a, T> {
    d: &'a Dims,
    t: usize,
    g: &'a Gates<'a, T>,
    xx: &'a [T],
    h_in: &'a [T],
    c_prev: &'a [T],
}

/// What one forward step writes, for a run of consecutive batch rows: `W_hh h_{t-1}` (to be
/// normalized in place) `[n, G*H]` and its inverse standard deviations `[n]`, the activations
/// `[n, 4H]`, (LSTM) `c_t`, `x^` of `c_t`, its inverse standard deviations and
/// `tanh(LN(c_t))`, and `h_t` into both the next state and the output `[n, H]`.
struct StepRows<'a, T> {
    xh: &'a mut [T],
    inv_h: &'a mut [T],
    acts: &'a mut [T],
    c_t: &'a mut [T],
    chat: &'a mut [T],
    inv_c: &'a mut [T],
    tc: &'a mut [T],
    h_next: &'a mut [T],
    y: &'a mut [T],
}

impl<'a, T> StepRows<'a, T> {
    /// The first `m` rows and the rest.
    fn split_at(self, m: usize) -> (Self, Self) {
        let n = self.inv_h.len();
        // Each buffer holds `n` rows of its own width (the GRU's cell buffers none).
        let cut = |v: &'a mut [T]| {
            let w = v.len() / n;
            v.split_at_mut(m * w)
        };
        let (xh, xh2) = cut(self.xh);
        let (inv_h, inv_h2) = cut(self.inv_h);
        let (acts, acts2) = cut(self.acts);
        let (c_t, c_t2) = cut(self.c_t);
        let (chat, chat2) = cut(self.chat);
        let (inv_c, inv_c2) = cut(self.inv_c);
        let (tc, tc2) = cut(self.tc);
        let (h_next, h_next2) = cut(self.h_next);
        let (y, y2) = cut(self.y);
        (
            StepRows {
                xh,
                inv_h,
                acts,
                c_t,
                chat,
                inv_c,
                tc,
                h_next,
                y,
            },
            StepRows {
                xh: xh2,
                inv_h: inv_h2,
                acts: acts2,
                c_t: c_t2,
                chat: chat2,
                inv_c: inv_c2,
                tc: tc2,
                h_next: h_next2,
                y: y2,
            },
        )
    }
}

/// Block `t` of `len` values of an LSTM-only buffer, or nothing for the GRU.
fn lstm_block<T>(buf: &mut [T], lstm: bool, t: usize, len: usize) -> &mut [T] {
    if lstm {
        &mut buf[t * len..(t + 1) * len]
    } else {
        &mut []
    }
}

/// Forward step `k.t` for the batch rows `b0..b0 + n` that `o` holds: `LN(W_hh h_{t-1})`, the
/// gates and the new state of each row, as the module docs give them.
fn step_rows<T: Float>(k: &StepInputs<'_, T>, b0: usize, o: StepRows<'_, T>) {
    let (d, t, g) = (k.d, k.t, k.g);
    let (h, gh) = (d.hidden, d.gates() * d.hidden);
    for (row, inv) in o.xh.chunks_exact_mut(gh).zip(o.inv_h.iter_mut()) {
        *inv = ln::normalize_in_place(row);
    }
    for li in 0..o.inv_h.len() {
        let bi = b0 + li;
        let (rh, gr) = (li * h..(li + 1) * h, bi * h..(bi + 1) * h);
        let hp = &k.h_in[gr.clone()];
        let out = &mut o.h_next[rh.clone()];
        if !d.active(t, bi) {
            // Past its length a sequence keeps its state; its output stays zero.
            out.copy_from_slice(hp);
            if d.lstm {
                o.c_t[rh].copy_from_slice(&k.c_prev[gr]);
            }
            continue;
        }
        let xx = &k.xx[bi * gh..(bi + 1) * gh];
        let xh = &o.xh[li * gh..(li + 1) * gh];
        let acts = &mut o.acts[li * 4 * h..(li + 1) * 4 * h];
        if d.lstm {
            for j in 0..gh {
                acts[j] = g.gamma_x[j] * xx[j] + g.gamma_h[j] * xh[j] + g.b_ih[j] + g.b_hh[j];
            }
            // i, f, o = σ(.), g = tanh(.), vector by vector.
            map_inplace(&mut acts[..2 * h], T::sigmoid_v);
            map_inplace(&mut acts[2 * h..3 * h], T::tanh_v);
            map_inplace(&mut acts[3 * h..], T::sigmoid_v);
            let (c_prev, c_t) = (&k.c_prev[gr], &mut o.c_t[rh.clone()]);
            for j in 0..h {
                c_t[j] = acts[h + j] * c_prev[j] + acts[j] * acts[2 * h + j];
            }
            let chat = &mut o.chat[rh.clone()];
            chat.copy_from_slice(c_t);
            o.inv_c[li] = ln::normalize_in_place(chat);
            // tanh(LN(c_t)), and h_t = o * tanh(LN(c_t)).
            let tc = &mut o.tc[rh.clone()];
            for j in 0..h {
                tc[j] = g.gamma_c[j] * chat[j] + g.beta_c[j];
            }
            map_inplace(tc, T::tanh_v);
            for j in 0..h {
                out[j] = acts[3 * h + j] * tc[j];
            }
        } else {
            // r, z = σ(x + h) and h_n = γ_h x^_n + b_hn.
            for j in 0..2 * h {
                acts[j] = g.gamma_x[j] * xx[j] + g.b_ih[j] + g.gamma_h[j] * xh[j] + g.b_hh[j];
            }
            map_inplace(&mut acts[..2 * h], T::sigmoid_v);
            for j in 2 * h..gh {
                acts[h + j] = g.gamma_h[j] * xh[j] + g.b_hh[j];
            }
            // n = tanh(x_n + r * h_n).
            for j in 0..h {
                let xn = g.gamma_x[2 * h + j] * xx[2 * h + j] + g.b_ih[2 * h + j];
                acts[2 * h + j] = xn + acts[j] * acts[3 * h + j];
            }
            map_inplace(&mut acts[2 * h..3 * h], T::tanh_v);
            for j in 0..h {
                let (z, n) = (acts[h + j], acts[2 * h + j]);
                out[j] = n + z * (hp[j] - n);
            }
        }
        o.y[rh].copy_from_slice(out);
    }
}

/// Runs one direction of a layer-normalized LSTM or GRU layer as one fused tape node (see the
/// [module docs](self)). `run.params.ln` must be set.
pub(crate) fn run<T: Float>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    run: &DirectionRun<'_>,
) -> Result<DirectionOutput> {
    let w = run.weights(tape, store)?;
    let lstm = match run.kind {
        CellKind::Lstm => true,
        CellKind::Gru => false,
        CellKind::Rnn(_) => {
            return Err(Error::invalid(
                "fused layer-normalized layer",
                "layer_norm is for LSTM and GRU layers, not rnn",
            ));
        }
    };
    let Some(lnv) = w.ln else {
        return Err(Error::invalid(
            "fused layer-normalized layer",
            "the layer has no layer normalization parameters",
        ));
    };
    let bias = w.b_ih.zip(w.b_hh);
    let slots = Slots::new(lstm, bias.is_some());
    let mut inputs = vec![run.x, run.h0];
    match (lstm, run.c0, lnv.cell) {
        (true, Some(c0), Some(_)) => inputs.push(c0),
        (false, None, None) => {}
        _ => {
            return Err(Error::invalid(
                "fused layer-normalized layer",
                "an LSTM needs c0 and the cell's gain and bias; a GRU has neither",
            ));
        }
    }
    inputs.extend([w.w_ih, w.w_hh, lnv.gamma_ih, lnv.gamma_hh]);
    if let Some((gc, bc)) = lnv.cell {
        inputs.extend([gc, bc]);
    }
    if let Some((bi, bh)) = bias {
        inputs.extend([bi, bh]);
    }
    let xs = tape.shape(run.x)?;
    let (t_len, batch, in_size) = (xs.dims()[0], xs.dims()[1], xs.dims()[2]);
    let hidden = tape.shape(run.h0)?.dims()[1];
    let dims = Dims {
        lstm,
        reverse: run.reverse,
        lengths: run.lengths.map(<[usize]>::to_vec),
        t_len,
        batch,
        in_size,
        hidden,
        bf16: tape.bf16_kernel(),
    };
    let gh = dims.gates() * hidden;
    let (rows, bh) = (t_len * batch, batch * hidden);
    let cell = |n: usize| if lstm { n } else { 0 };
    let mut ws = tape.workspace();
    let mut node = LayerNormDirection {
        xhat_x: ws.scratch(rows * gh),
        inv_x: ws.scratch(rows),
        xhat_h: ws.scratch(rows * gh),
        inv_h: ws.scratch(rows),
        h_prev: ws.scratch(rows * hidden),
        acts: ws.scratch(rows * 4 * hidden),
        c: ws.scratch(cell(rows * hidden)),
        chat: ws.scratch(cell(rows * hidden)),
        inv_c: ws.scratch(cell(rows)),
        tc: ws.scratch(cell(rows * hidden)),
        w_hh: StepPacked::new(dims.bf16, || {
            let len =
                PackedB::<T>::packed_len(hidden, gh).max(PackedB::<T>::packed_len(gh, hidden));
            PackedB::from_buffer(ws.scratch(len))
        }),
        dims,
        slots,
    };
    let mut y = ws.zeroed(rows * hidden);
    let mut h_n = ws.scratch(bh);
    let mut c_n = ws.scratch(cell(bh));
    {
        let vals: Vec<&Tensor<T>> = inputs
            .iter()
            .map(|&v| tape.value(v))
            .collect::<Result<_>>()?;
        node.forward(&vals, &mut y, &mut h_n, &mut c_n);
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

impl<T: Float> LayerNormDirection<T> {
    /// The forward recurrence into `y` `[T, B, H]` (zero-filled on entry), `h_n` `[B, H]` and
    /// (LSTM) `c_n` `[B, H]`.
    fn forward(&mut self, inp: &[&Tensor<T>], y: &mut [T], h_n: &mut [T], c_n: &mut [T]) {
        let d = self.dims.clone();
        let sl = self.slots;
        let (tl, b, h) = (d.t_len, d.batch, d.hidden);
        let gh = d.gates() * h;
        let bh = b * h;
        let (x, h0) = (inp[X].data(), inp[H0].data());
        let (w_ih, w_hh) = (inp[sl.w_ih].data(), inp[sl.w_hh].data());
        let (gamma_x, gamma_h) = (inp[sl.gamma_x].data(), inp[sl.gamma_h].data());
        let zeros = vec![T::ZERO; gh];
        let (b_ih, b_hh) = match sl.bias {
            Some((bi, bh)) => (inp[bi].data(), inp[bh].data()),
            None => (&zeros[..], &zeros[..]),
        };
        // W_ih x_t of every step at once, each row normalized: LN(W_ih x_t) does not depend on h.
        let (m, i_sz) = (tl * b, d.in_size);
        by_row_halves(
            (m, i_sz, gh),
            x,
            &mut self.xhat_x,
            halves(m),
            |m, x, out| gemm(d.bf16, (m, i_sz, gh), (false, true), x, w_ih, T::ZERO, out),
        );
        for (row, inv) in self.xhat_x.chunks_exact_mut(gh).zip(&mut self.inv_x) {
            *inv = ln::normalize_in_place(row);
        }
        if tl == 0 {
            h_n.copy_from_slice(h0);
            if let Some(c0) = sl.c0 {
                c_n.copy_from_slice(inp[c0].data());
            }
            return;
        }
        let t0 = d.time(0);
        self.h_prev[t0 * bh..(t0 + 1) * bh].copy_from_slice(h0);
        self.w_hh.pack_transposed(w_hh, gh, h);
        let mut h_next = vec![T::ZERO; bh];
        let c0 = sl.c0.map_or(&[][..], |k| inp[k].data());
        let (gamma_c, beta_c) = match sl.cell {
            Some((g, be)) => (inp[g].data(), inp[be].data()),
            None => (&[][..], &[][..]),
        };
        let gates = Gates {
            gamma_x,
            gamma_h,
            b_ih,
            b_hh,
            gamma_c,
            beta_c,
        };
        for s in 0..tl {
            let t = d.time(s);
            let h_in = &self.h_prev[t * bh..(t + 1) * bh];
            // W_hh h_{t-1}, normalized row by row below.
            let xh = &mut self.xhat_h[t * b * gh..(t + 1) * b * gh];
            rows_product(b, h_in, &self.w_hh, xh);
            // LSTM: c_{t-1} (c0 at the first step) and c_t, `[B, H]` each.
            let (c_prev, c_t) = if !d.lstm {
                (&[][..], &mut [][..])
            } else if s == 0 {
                (c0, &mut self.c[t * bh..(t + 1) * bh])
            } else {
                read_write(&mut self.c, d.time(s - 1), t, bh)
            };
            let rows = StepRows {
                xh,
                inv_h: &mut self.inv_h[t * b..(t + 1) * b],
                acts: &mut self.acts[t * b * 4 * h..(t + 1) * b * 4 * h],
                c_t,
                chat: lstm_block(&mut self.chat, d.lstm, t, bh),
                inv_c: lstm_block(&mut self.inv_c, d.lstm, t, b),
                tc: lstm_block(&mut self.tc, d.lstm, t, bh),
                h_next: &mut h_next,
                y: &mut y[t * bh..(t + 1) * bh],
            };
            let inputs = StepInputs {
                d: &d,
                t,
                g: &gates,
                xx: &self.xhat_x[t * b * gh..(t + 1) * b * gh],
                h_in,
                c_prev,
            };
            // The rows are independent: two halves side by side where the pool has a second
            // thread, each row computed as it is alone.
            if halves(b) {
                let (lo, hi) = rows.split_at(b / 2);
                rayon::join(
                    || step_rows(&inputs, 0, lo),
                    || step_rows(&inputs, b / 2, hi),
                );
            } else {
                step_rows(&inputs, 0, rows);
            }
            if s + 1 < tl {
                let tn = d.time(s + 1);
                self.h_prev[tn * bh..(tn + 1) * bh].copy_from_slice(&h_next);
            } else {
                h_n.copy_from_slice(&h_next);
            }
        }
        if d.lstm {
            let last = d.time(tl - 1);
            c_n.copy_from_slice(&self.c[last * bh..(last + 1) * bh]);
        }
    }
}

impl<T: Float> CustomOp<T> for LayerNormDirection<T> {
    fn name(&self) -> &str {
        if self.dims.lstm {
            "fused layer-normalized lstm"
        } else {
            "fused layer-normalized gru"
        }
    }

    fn backward(
        &mut self,
        inp: &[&Tensor<T>],
        _outputs: &[&Tensor<T>],
        gout: &[Option<&Tensor<T>>],
        gin: &mut [Option<Tensor<T>>],
        ws: &mut Workspace<'_, T>,
    ) -> Result<()> {
        let d = self.dims.clone();
        let sl = self.slots;
        let (tl, b, h, i_sz) = (d.t_len, d.batch, d.hidden, d.in_size);
        let gh = d.gates() * h;
        let (bh, rows) = (b * h, tl * b);
        let (x, w_ih, w_hh) = (inp[X].data(), inp[sl.w_ih].data(), inp[sl.w_hh].data());
        let (gamma_x, gamma_h) = (inp[sl.gamma_x].data(), inp[sl.gamma_h].data());
        // W_hh [G*H, H] as stored, packed once for every step.
        self.w_hh.pack(w_hh, gh, h);
        let gy = gout[0].map(Tensor::data);
        let mut dh = ws.zeroed(bh);
        if let Some(g) = gout[1] {
            dh.copy_from_slice(g.data());
        }
        let mut dc = ws.zeroed(if d.lstm { bh } else { 0 });
        if let (true, Some(g)) = (d.lstm, gout.get(2).copied().flatten()) {
            dc.copy_from_slice(g.data());
        }
        // The gradients of the normalized input side `[T, B, G*H]` and of the recurrent side
        // (then, in place, of W_hh h_{t-1}); zero in the rows of finished sequences.
        let mut dgx = ws.zeroed(rows * gh);
        let mut dgh = ws.zeroed(rows * gh);
        let mut dgamma_x = ws.zeroed(gh);
        let mut dgamma_h = ws.zeroed(gh);
        let mut db_ih = ws.zeroed(gh);
        let mut db_hh = ws.zeroed(gh);
        let mut dgamma_c = ws.zeroed(if d.lstm { h } else { 0 });
        let mut dbeta_c = ws.zeroed(if d.lstm { h } else { 0 });
        let mut direct = ws.zeroed(bh);
        let mut dh_prev = ws.scratch(bh);
        let mut dyc = ws.scratch(h);
        let c0 = sl.c0.map(|k| inp[k].data());
        let gamma_c = sl.cell.map(|(g, _)| inp[g].data());
        for s in (0..tl).rev() {
            let t = d.time(s);
            for bi in 0..b {
                if !d.active(t, bi) {
                    // The state passes through unchanged: dh and dc carry on as they are.
                    continue;
                }
                let r = t * b + bi;
                let rh = bi * h..(bi + 1) * h;
                let mut dh_t: Vec<T> = dh[rh.clone()].to_vec();
                if let Some(gy) = gy {
                    for (a, &g) in dh_t.iter_mut().zip(&gy[r * h..(r + 1) * h]) {
                        *a += g;
                    }
                }
                let acts = &self.acts[r * 4 * h..(r + 1) * 4 * h];
                let dx_row = &mut dgx[r * gh..(r + 1) * gh];
                if d.lstm {
                    let tc = &self.tc[r * h..(r + 1) * h];
                    for j in 0..h {
                        let o = acts[3 * h + j];
                        // d(tanh(LN(c_t))) through tanh.
                        dyc[j] = dh_t[j] * o * (T::ONE - tc[j] * tc[j]);
                        dx_row[3 * h + j] = dh_t[j] * tc[j] * o * (T::ONE - o);
                    }
                    ln::backward_in_place(
                        &mut dyc,
                        gamma_c.expect("an LSTM has γ_c"),
                        &self.chat[r * h..(r + 1) * h],
                        self.inv_c[r],
                        &mut dgamma_c,
                        Some(&mut dbeta_c),
                    );
                    let c_prev = if s == 0 {
                        &c0.expect("an LSTM has c0")[rh.clone()]
                    } else {
                        let tp = d.time(s - 1);
                        &self.c[(tp * b + bi) * h..(tp * b + bi + 1) * h]
                    };
                    let dc_row = &mut dc[rh.clone()];
                    for j in 0..h {
                        let (i, f, g) = (acts[j], acts[h + j], acts[2 * h + j]);
                        let dct = dc_row[j] + dyc[j];
                        dx_row[j] = dct * g * i * (T::ONE - i);
                        dx_row[h + j] = dct * c_prev[j] * f * (T::ONE - f);
                        dx_row[2 * h + j] = dct * i * (T::ONE - g * g);
                        dc_row[j] = dct * f;
                    }
                    dgh[r * gh..(r + 1) * gh].copy_from_slice(dx_row);
                } else {
                    let hp = &self.h_prev[r * h..(r + 1) * h];
                    let dh_row = &mut dgh[r * gh..(r + 1) * gh];
                    for j in 0..h {
                        let (rg, z, n, hn) =
                            (acts[j], acts[h + j], acts[2 * h + j], acts[3 * h + j]);
                        let dn = dh_t[j] * (T::ONE - z) * (T::ONE - n * n);
                        let dz = dh_t[j] * (hp[j] - n) * z * (T::ONE - z);
                        let dr = dn * hn * rg * (T::ONE - rg);
                        dx_row[j] = dr;
                        dx_row[h + j] = dz;
                        dx_row[2 * h + j] = dn;
                        dh_row[j] = dr;
                        dh_row[h + j] = dz;
                        dh_row[2 * h + j] = dn * rg;
                        direct[bi * h + j] = dh_t[j] * z;
                    }
                }
                // The recurrent side: the bias and gain gradients, then back through LN.
                let dh_row = &mut dgh[r * gh..(r + 1) * gh];
                for (a, &v) in db_hh.iter_mut().zip(dh_row.iter()) {
                    *a += v;
                }
                ln::backward_in_place(
                    dh_row,
                    gamma_h,
                    &self.xhat_h[r * gh..(r + 1) * gh],
                    self.inv_h[r],
                    &mut dgamma_h,
                    None,
                );
            }
            rows_product(
                b,
                &dgh[t * b * gh..(t + 1) * b * gh],
                &self.w_hh,
                &mut dh_prev,
            );
            for bi in (0..b).filter(|&bi| d.active(t, bi)) {
                let rh = bi * h..(bi + 1) * h;
                for j in rh {
                    dh[j] = dh_prev[j] + if d.lstm { T::ZERO } else { direct[j] };
                }
            }
        }
        // The input side over every row at once: the bias and gain gradients, then back
        // through LN (rows of finished sequences are zero and stay so).
        for (r, row) in dgx.chunks_exact_mut(gh).enumerate() {
            for (a, &v) in db_ih.iter_mut().zip(row.iter()) {
                *a += v;
            }
            ln::backward_in_place(
                row,
                gamma_x,
                &self.xhat_x[r * gh..(r + 1) * gh],
                self.inv_x[r],
                &mut dgamma_x,
                None,
            );
        }
        // dX, dW_ih and dW_hh are independent: side by side (each writes its own gradient, so
        // the result does not depend on how they are scheduled).
        let (before, from_w_ih) = gin.split_at_mut(sl.w_ih);
        let (g_w_ih, after) = from_w_ih.split_first_mut().expect("W_ih and W_hh follow x");
        let (g_x, g_w_hh) = (before[X].as_mut(), after[0].as_mut());
        let (dg_x, dg_h, h_prev, bf16) = (&dgx, &dgh, &self.h_prev, d.bf16);
        let dx_job = || {
            if let Some(g) = g_x {
                let s = (rows, gh, i_sz);
                gemm(bf16, s, (false, false), dg_x, w_ih, T::ONE, g.data_mut());
            }
        };
        let dw_ih_job = || {
            if let Some(g) = g_w_ih.as_mut() {
                let s = (gh, rows, i_sz);
                gemm(bf16, s, (true, false), dg_x, x, T::ONE, g.data_mut());
            }
        };
        let dw_hh_job = || {
            if let Some(g) = g_w_hh {
                let s = (gh, rows, h);
                gemm(bf16, s, (true, false), dg_h, h_prev, T::ONE, g.data_mut());
            }
        };
        crate::threads::join(dx_job, || crate::threads::join(dw_ih_job, dw_hh_job));
        let mut sums = vec![(sl.gamma_x, &dgamma_x), (sl.gamma_h, &dgamma_h)];
        if let Some((gc, bc)) = sl.cell {
            sums.extend([(gc, &dgamma_c), (bc, &dbeta_c)]);
        }
        if let Some((bi, bhh)) = sl.bias {
            sums.extend([(bi, &db_ih), (bhh, &db_hh)]);
        }
        for (k, v) in sums {
            if let Some(g) = gin[k].as_mut() {
                for (a, &v) in g.data_mut().iter_mut().zip(v.iter()) {
                    *a += v;
                }
            }
        }
        if let Some(g) = gin[H0].as_mut() {
            for (a, &v) in g.data_mut().iter_mut().zip(&dh) {
                *a += v;
            }
        }
        if let Some(g) = sl.c0.and_then(|k| gin[k].as_mut()) {
            for (a, &v) in g.data_mut().iter_mut().zip(&dc) {
                *a += v;
            }
        }
        for v in [
            dh, dc, dgx, dgh, dgamma_x, dgamma_h, db_ih, db_hh, dgamma_c, dbeta_c, direct, dh_prev,
            dyc,
        ] {
            ws.give(v);
        }
        Ok(())
    }

    fn recycle(&mut self, ws: &mut Workspace<'_, T>) {
        for v in [
            std::mem::take(&mut self.xhat_x),
            std::mem::take(&mut self.inv_x),
            std::mem::take(&mut self.xhat_h),
            std::mem::take(&mut self.inv_h),
            std::mem::take(&mut self.h_prev),
            std::mem::take(&mut self.acts),
            std::mem::take(&mut self.c),
            std::mem::take(&mut self.chat),
            std::mem::take(&mut self.inv_c),
            std::mem::take(&mut self.tc),
            std::mem::take(&mut self.w_hh).into_buffer(),
        ] {
            ws.give(v);
        }
    }
}
