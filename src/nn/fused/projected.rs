//! One direction of an LSTM layer with a projection (`proj_size`) as a single fused tape node:
//! `h_t = W_hr (o_t * tanh(c_t))`, a state of `P` features from a cell of `H` units.
//!
//! The schedule is the fused layers' own: one product gives the input projection of every step,
//! then per step the recurrent product `h_{t-1} W_hh^T` (`W_hh` `[4H, P]`), the fused LSTM gate
//! kernel, and the projection `r_t W_hr^T` of its output `r_t = o_t * tanh(c_t)`. Backward runs
//! in reverse time: per step `dr_t = dh_t W_hr`, the gate kernel's backward and
//! `dh_{t-1} = dG W_hh`; after the loop, one product each over all time steps gives `dX`,
//! `dW_ih`, `dW_hh` and `dW_hr`. The batch runs as one block (no shards). The per-step products
//! read `W_hh` and `W_hr` packed once per pass ([`StepPacked`]: transposed in forward, as
//! stored in backward); the products over all time steps go through `precision::gemm`. On a bf16
//! tape every product is in bf16 ([`crate::Precision::Bf16`]).
//!
//! With sequence lengths, a sequence past its length keeps its state `h` and `c` while its
//! output is zero, as in the other fused layers.

use super::bf16::StepPacked;
use super::buffers::read_write;
use crate::Result;
use crate::kernels::bf16::Bf16Kernel;
use crate::kernels::gemm_nn::PackedB;
use crate::kernels::lstm;
use crate::nn::direction::{DirectionOutput, DirectionRun, is_active, step_time};
use crate::params::ParamStore;
use crate::precision::gemm;
use crate::tape::{CustomOp, Tape, Workspace};
use crate::tensor::{Float, Shape, Tensor};

/// Where each input sits in the node's list: `x`, `h0`, `c0`, `W_ih`, `W_hh`, `W_hr`, then with
/// biases `b_ih`, `b_hh`.
const X: usize = 0;
const H0: usize = 1;
const C0: usize = 2;
const W_IH: usize = 3;
const W_HH: usize = 4;
const W_HR: usize = 5;
const B_IH: usize = 6;
const B_HH: usize = 7;

/// Sizes and options of one direction.
#[derive(Clone, Debug)]
struct Dims {
    reverse: bool,
    lengths: Option<Vec<usize>>,
    t_len: usize,
    batch: usize,
    in_size: usize,
    /// Cell units `H`.
    hidden: usize,
    /// State features `P`.
    proj: usize,
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

    fn all_active(&self, t: usize) -> bool {
        (0..self.batch).all(|b| self.active(t, b))
    }
}

/// The node: its sizes and the activations its backward reads, all `[T, B, .]` time-indexed.
struct ProjectedLstm<T> {
    dims: Dims,
    /// The activated gates `i, f, g, o` of every step `[T, B, 4H]`.
    gates: Vec<T>,
    /// `c_t` of every step `[T, B, H]` (for a sequence past its length, the `c` it keeps).
    c: Vec<T>,
    /// `r_t = o_t * tanh(c_t)` of every step `[T, B, H]`, what `W_hr` projects.
    r: Vec<T>,
    /// The state `h_{t-1}` each step starts from `[T, B, P]`.
    h_prev: Vec<T>,
    /// `W_hh^T` (forward) or `W_hh` (backward), packed for each step's product.
    w_hh: StepPacked<T>,
    /// `W_hr^T` (forward) or `W_hr` (backward), likewise.
    w_hr: StepPacked<T>,
}

/// Room for `w` `[rows, cols]` packed as stored or transposed, so that neither packing grows it.
fn packed_room<T: Float>(ws: &mut Workspace<'_, T>, rows: usize, cols: usize) -> PackedB<T> {
    let len = PackedB::<T>::packed_len(rows, cols).max(PackedB::<T>::packed_len(cols, rows));
    PackedB::from_buffer(ws.scratch(len))
}

/// Runs one direction of an LSTM layer with a projection as one fused tape node (see the
/// [module docs](self)). `run.params.w_hr` must be set.
pub(crate) fn run<T: Float>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    run: &DirectionRun<'_>,
) -> Result<DirectionOutput> {
    let w = run.weights(tape, store)?;
    let (Some(c0), Some(w_hr)) = (run.c0, w.w_hr) else {
        return Err(crate::Error::invalid(
            "fused projected LSTM",
            "needs a cell state c0 and a projection weight_hr",
        ));
    };
    let mut inputs = vec![run.x, run.h0, c0, w.w_ih, w.w_hh, w_hr];
    let bias = w.b_ih.zip(w.b_hh);
    if let Some((bi, bh)) = bias {
        inputs.extend([bi, bh]);
    }
    let xs = tape.shape(run.x)?;
    let (t_len, batch, in_size) = (xs.dims()[0], xs.dims()[1], xs.dims()[2]);
    let proj = tape.shape(run.h0)?.dims()[1];
    let hidden = tape.shape(c0)?.dims()[1];
    let dims = Dims {
        reverse: run.reverse,
        lengths: run.lengths.map(<[usize]>::to_vec),
        t_len,
        batch,
        in_size,
        hidden,
        proj,
        bf16: tape.bf16_kernel(),
    };
    let (bh, bp) = (batch * hidden, batch * proj);
    let mut ws = tape.workspace();
    let mut node = ProjectedLstm {
        gates: ws.scratch(t_len * 4 * bh),
        c: ws.scratch(t_len * bh),
        r: ws.scratch(t_len * bh),
        h_prev: ws.scratch(t_len * bp),
        w_hh: StepPacked::new(dims.bf16, || packed_room(&mut ws, 4 * hidden, proj)),
        w_hr: StepPacked::new(dims.bf16, || packed_room(&mut ws, proj, hidden)),
        dims,
    };
    let mut y = ws.zeroed(t_len * bp);
    let mut h_n = ws.scratch(bp);
    let mut c_n = ws.scratch(bh);
    let mut h_new = ws.scratch(bp);
    {
        let vals: Vec<&Tensor<T>> = inputs
            .iter()
            .map(|&v| tape.value(v))
            .collect::<Result<_>>()?;
        node.forward(&vals, &mut y, &mut h_n, &mut c_n, &mut h_new);
    }
    tape.workspace().give(h_new);
    let y = Tensor::from_vec_shape(y, Shape::new(&[t_len, batch, proj])?)?;
    let h_n = Tensor::from_vec_shape(h_n, Shape::new(&[batch, proj])?)?;
    let c_n = Tensor::from_vec_shape(c_n, Shape::new(&[batch, hidden])?)?;
    let [y, h_n, c_n] = tape.custom(Box::new(node), &inputs, [y, h_n, c_n])?;
    Ok(DirectionOutput {
        y,
        h_n,
        c_n: Some(c_n),
    })
}

impl<T: Float> ProjectedLstm<T> {
    /// The forward recurrence into `y` `[T, B, P]` (zero-filled on entry), `h_n` `[B, P]` and
    /// `c_n` `[B, H]`; `h_new` `[B, P]` is scratch.
    fn forward(
        &mut self,
        inp: &[&Tensor<T>],
        y: &mut [T],
        h_n: &mut [T],
        c_n: &mut [T],
        h_new: &mut [T],
    ) {
        let d = self.dims.clone();
        let (tl, b, h, p) = (d.t_len, d.batch, d.hidden, d.proj);
        let (gh, bh, bp) = (4 * h, b * h, b * p);
        let (x, h0, c0) = (inp[X].data(), inp[H0].data(), inp[C0].data());
        let (w_ih, w_hh, w_hr) = (inp[W_IH].data(), inp[W_HH].data(), inp[W_HR].data());
        // The input projection of every step at once, then both biases on every row.
        let s = (tl * b, d.in_size, gh);
        gemm(d.bf16, s, (false, true), x, w_ih, T::ZERO, &mut self.gates);
        if let (Some(bi), Some(bhh)) = (inp.get(B_IH), inp.get(B_HH)) {
            let (bi, bhh) = (bi.data(), bhh.data());
            for row in self.gates.chunks_exact_mut(gh) {
                for ((g, &u), &v) in row.iter_mut().zip(bi).zip(bhh) {
                    *g += u + v;
                }
            }
        }
        if tl == 0 {
            h_n.copy_from_slice(h0);
            c_n.copy_from_slice(c0);
            return;
        }
        let t0 = d.time(0);
        self.h_prev[t0 * bp..(t0 + 1) * bp].copy_from_slice(h0);
        // W_hh^T [P, 4H] and W_hr^T [H, P], packed once for every step.
        self.w_hh.pack_transposed(w_hh, gh, p);
        self.w_hr.pack_transposed(w_hr, p, h);
        for s in 0..tl {
            let t = d.time(s);
            let gates = &mut self.gates[t * b * gh..(t + 1) * b * gh];
            let h_in = &self.h_prev[t * bp..(t + 1) * bp];
            self.w_hh.acc(b, h_in, gates);
            let (c_prev, c_t) = if s == 0 {
                (c0, &mut self.c[t * bh..(t + 1) * bh])
            } else {
                read_write(&mut self.c, d.time(s - 1), t, bh)
            };
            let r_t = &mut self.r[t * bh..(t + 1) * bh];
            lstm::lstm_forward(gates, c_prev, c_t, r_t, h);
            self.w_hr.set(b, r_t, h_new);
            let (h_in, h_next) = if s + 1 < tl {
                read_write(&mut self.h_prev, t, d.time(s + 1), bp)
            } else {
                (&self.h_prev[t * bp..(t + 1) * bp], &mut h_n[..])
            };
            let y_t = &mut y[t * bp..(t + 1) * bp];
            for bi in 0..b {
                let (rp, rh) = (bi * p..(bi + 1) * p, bi * h..(bi + 1) * h);
                if d.active(t, bi) {
                    h_next[rp.clone()].copy_from_slice(&h_new[rp.clone()]);
                    y_t[rp.clone()].copy_from_slice(&h_new[rp]);
                } else {
                    // Past its length a sequence keeps its state; its output stays zero.
                    h_next[rp.clone()].copy_from_slice(&h_in[rp]);
                    c_t[rh.clone()].copy_from_slice(&c_prev[rh]);
                }
            }
        }
        let last = d.time(tl - 1);
        c_n.copy_from_slice(&self.c[last * bh..(last + 1) * bh]);
    }
}

impl<T: Float> CustomOp<T> for ProjectedLstm<T> {
    fn name(&self) -> &str {
        "fused projected lstm"
    }

    fn backward(
        &mut self,
        inp: &[&Tensor<T>],
        _outputs: &[&Tensor<T>],
        gout: &[Option<&Tensor<T>>],
        gin: &mut [Option<Tensor<T>>],
        ws: &mut Workspace<'_, T>,
    ) -> Result<()> {
        let d = &self.dims;
        let (tl, b, h, p, i_sz) = (d.t_len, d.batch, d.hidden, d.proj, d.in_size);
        let (gh, bh, bp) = (4 * h, b * h, b * p);
        let (x, c0) = (inp[X].data(), inp[C0].data());
        let (w_ih, w_hh, w_hr) = (inp[W_IH].data(), inp[W_HH].data(), inp[W_HR].data());
        // W_hh [4H, P] and W_hr [P, H] as stored, packed once for every step.
        self.w_hh.pack(w_hh, gh, p);
        self.w_hr.pack(w_hr, p, h);
        let gy = gout[0].map(Tensor::data);
        // dh and dc carried back through time, from the gradients reaching h_n and c_n.
        let mut dh = ws.zeroed(bp);
        let mut dc = ws.zeroed(bh);
        if let Some(g) = gout[1] {
            dh.copy_from_slice(g.data());
        }
        if let Some(g) = gout[2] {
            dc.copy_from_slice(g.data());
        }
        // dG of every step, and the gradient reaching each step's projection output.
        let mut dg = ws.zeroed(tl * b * gh);
        let mut dhs = ws.zeroed(tl * bp);
        let mut dr = ws.scratch(bh);
        let mut keep = ws.scratch(bh);
        let mut dh_prev = ws.scratch(bp);
        for s in (0..tl).rev() {
            let t = d.time(s);
            let all_active = d.all_active(t);
            // The gradient reaching this step's new state: from the next step and from y_t;
            // none for a sequence past its length (its state passes through unchanged).
            let dh_t = &mut dhs[t * bp..(t + 1) * bp];
            for bi in 0..b {
                let rp = bi * p..(bi + 1) * p;
                if d.active(t, bi) {
                    dh_t[rp.clone()].copy_from_slice(&dh[rp.clone()]);
                    if let Some(gy) = gy {
                        for (a, &g) in dh_t[rp.clone()].iter_mut().zip(&gy[t * bp + rp.start..]) {
                            *a += g;
                        }
                    }
                } else {
                    dh_t[rp].fill(T::ZERO);
                }
            }
            self.w_hr.set(b, dh_t, &mut dr);
            if !all_active {
                keep.copy_from_slice(&dc);
            }
            let c_prev = if s == 0 {
                c0
            } else {
                let tp = d.time(s - 1);
                &self.c[tp * bh..(tp + 1) * bh]
            };
            let dg_t = &mut dg[t * b * gh..(t + 1) * b * gh];
            let gates = &self.gates[t * b * gh..(t + 1) * b * gh];
            lstm::lstm_backward(
                gates,
                c_prev,
                &self.c[t * bh..(t + 1) * bh],
                &dr,
                &mut dc,
                dg_t,
                h,
            );
            if !all_active {
                for bi in (0..b).filter(|&bi| !d.active(t, bi)) {
                    let rh = bi * h..(bi + 1) * h;
                    dg_t[bi * gh..(bi + 1) * gh].fill(T::ZERO);
                    dc[rh.clone()].copy_from_slice(&keep[rh]);
                }
            }
            self.w_hh.set(b, dg_t, &mut dh_prev);
            for bi in 0..b {
                let rp = bi * p..(bi + 1) * p;
                if d.active(t, bi) {
                    dh[rp.clone()].copy_from_slice(&dh_prev[rp]);
                }
            }
        }
        // The products over every time step at once; gradients add into the tape's buffers.
        let (rows, bf16) = (tl * b, d.bf16);
        if let Some(g) = gin[X].as_mut() {
            let s = (rows, gh, i_sz);
            gemm(bf16, s, (false, false), &dg, w_ih, T::ONE, g.data_mut());
        }
        if let Some(g) = gin[W_IH].as_mut() {
            let s = (gh, rows, i_sz);
            gemm(bf16, s, (true, false), &dg, x, T::ONE, g.data_mut());
        }
        if let Some(g) = gin[W_HH].as_mut() {
            let s = (gh, rows, p);
            gemm(
                bf16,
                s,
                (true, false),
                &dg,
                &self.h_prev,
                T::ONE,
                g.data_mut(),
            );
        }
        if let Some(g) = gin[W_HR].as_mut() {
            let s = (p, rows, h);
            gemm(bf16, s, (true, false), &dhs, &self.r, T::ONE, g.data_mut());
        }
        for k in [B_IH, B_HH] {
            if let Some(g) = gin.get_mut(k).and_then(Option::as_mut) {
                let g = g.data_mut();
                for row in dg.chunks_exact(gh) {
                    for (a, &v) in g.iter_mut().zip(row) {
                        *a += v;
                    }
                }
            }
        }
        if let Some(g) = gin[H0].as_mut() {
            for (a, &v) in g.data_mut().iter_mut().zip(&dh) {
                *a += v;
            }
        }
        if let Some(g) = gin[C0].as_mut() {
            for (a, &v) in g.data_mut().iter_mut().zip(&dc) {
                *a += v;
            }
        }
        for v in [dh, dc, dg, dhs, dr, keep, dh_prev] {
            ws.give(v);
        }
        Ok(())
    }

    fn recycle(&mut self, ws: &mut Workspace<'_, T>) {
        for v in [
            std::mem::take(&mut self.gates),
            std::mem::take(&mut self.c),
            std::mem::take(&mut self.r),
            std::mem::take(&mut self.h_prev),
            std::mem::take(&mut self.w_hh).into_buffer(),
            std::mem::take(&mut self.w_hr).into_buffer(),
        ] {
            ws.give(v);
        }
    }
}
