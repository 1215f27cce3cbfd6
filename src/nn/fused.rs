//! The fused recurrence: one tape node per layer and direction.
//!
//! Forward: one GEMM projects the inputs of all timesteps at once (`Xp = X W_ih^T + b`); then per
//! step one GEMM adds the recurrent product `h_{t-1} W_hh^T` and one fused kernel applies the
//! gate activations, updates `c` and `h`, and keeps what backward needs.
//!
//! Backward, in reverse time: per step one fused kernel turns `dh`, `dc` and the saved gates into
//! `dG` (the gradient of the gate pre-activations) and one GEMM gives `dh_{t-1} = dG W_hh`; after
//! the loop three large GEMMs over all timesteps give `dW_hh = dG^T H_prev`, `dW_ih = dG^T X`,
//! `dX = dG W_ih`, and the bias gradients are column sums of `dG`.

use super::recurrent::{CellKind, DirectionOutput, DirectionRun};
use crate::Result;
use crate::kernels::GemmShape;
use crate::kernels::{gru, lstm, rnn};
use crate::params::ParamStore;
use crate::tape::{CustomOp, Tape, Var};
use crate::tensor::{Float, Shape, Tensor};

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
    let mut node = FusedDirection::<T> {
        kind: run.kind,
        reverse: run.reverse,
        lengths: run.lengths.map(<[usize]>::to_vec),
        t_len,
        batch,
        in_size,
        hidden,
        has_bias: p.b_ih.is_some(),
        gates: Vec::new(),
        h_prev: Vec::new(),
        c_prev: Vec::new(),
        c_new: Vec::new(),
    };
    let (y, h_n, c_n) = {
        let vals: Vec<&Tensor<T>> = inputs
            .iter()
            .map(|&v| tape.value(v))
            .collect::<Result<_>>()?;
        node.forward(&vals)
    };
    let y = Tensor::from_vec_shape(y, Shape::new(&[t_len, batch, hidden])?)?;
    let state = Shape::new(&[batch, hidden])?;
    let h_n = Tensor::from_vec_shape(h_n, state)?;
    match c_n {
        Some(c_n) => {
            let c_n = Tensor::from_vec_shape(c_n, state)?;
            let [y, h_n, c_n] = tape.custom(Box::new(node), &inputs, [y, h_n, c_n])?;
            Ok(DirectionOutput {
                y,
                h_n,
                c_n: Some(c_n),
            })
        }
        None => {
            let [y, h_n] = tape.custom(Box::new(node), &inputs, [y, h_n])?;
            Ok(DirectionOutput { y, h_n, c_n: None })
        }
    }
}

/// One direction of one layer, with the activations its backward needs.
struct FusedDirection<T> {
    kind: CellKind,
    reverse: bool,
    lengths: Option<Vec<usize>>,
    t_len: usize,
    batch: usize,
    in_size: usize,
    hidden: usize,
    has_bias: bool,
    /// Per time step: LSTM activated gates `[B, 4H]`; GRU `r, z, n, W_hn h + b_hn` `[B, 4H]`;
    /// RNN the new hidden state before masking `[B, H]`.
    gates: Vec<T>,
    /// `h_{t-1}` for every time step `[T, B, H]`, time-indexed.
    h_prev: Vec<T>,
    /// LSTM: `c_{t-1}` and `c_t` for every time step.
    c_prev: Vec<T>,
    c_new: Vec<T>,
}

/// Positions of the node's inputs.
const X: usize = 0;
const H0: usize = 1;

impl<T: Float> FusedDirection<T> {
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

    /// Width of the per-step saved block.
    fn saved_width(&self) -> usize {
        match self.kind {
            CellKind::Rnn(_) => self.hidden,
            CellKind::Lstm | CellKind::Gru => 4 * self.hidden,
        }
    }

    /// Runs the recurrence; returns `y` `[T, B, H]`, `h_n` and (LSTM) `c_n` `[B, H]`.
    fn forward(&mut self, inp: &[&Tensor<T>]) -> (Vec<T>, Vec<T>, Option<Vec<T>>) {
        let (tl, b, h, i_sz) = (self.t_len, self.batch, self.hidden, self.in_size);
        let gh = self.kind.gates() * h;
        let wi = self.w_ih_index();
        let (w_ih, w_hh) = (inp[wi].data(), inp[wi + 1].data());
        let bias = if self.has_bias {
            Some((inp[wi + 2].data(), inp[wi + 3].data()))
        } else {
            None
        };

        // Input projection of every step at once: Xp = X W_ih^T + b.
        let mut xp = vec![T::ZERO; tl * b * gh];
        if let Some((b_ih, b_hh)) = bias {
            for row in xp.chunks_exact_mut(gh) {
                for k in 0..gh {
                    // The GRU keeps b_hh apart: its n gate scales (W_hn h + b_hn) by r.
                    row[k] = if self.kind == CellKind::Gru {
                        b_ih[k]
                    } else {
                        b_ih[k] + b_hh[k]
                    };
                }
            }
        }
        let proj = GemmShape {
            m: tl * b,
            k: i_sz,
            n: gh,
            trans_a: false,
            trans_b: true,
        };
        T::gemm(proj, T::ONE, inp[X].data(), w_ih, T::ONE, &mut xp);

        let sw = self.saved_width();
        self.gates = vec![T::ZERO; tl * b * sw];
        self.h_prev = vec![T::ZERO; tl * b * h];
        let lstm = self.kind == CellKind::Lstm;
        if lstm {
            self.c_prev = vec![T::ZERO; tl * b * h];
            self.c_new = vec![T::ZERO; tl * b * h];
        }
        let mut y = vec![T::ZERO; tl * b * h];
        let mut h_cur = inp[H0].data().to_vec();
        let mut c_cur = if lstm {
            inp[2].data().to_vec()
        } else {
            Vec::new()
        };
        let mut h_new = vec![T::ZERO; b * h];
        let mut hp = vec![T::ZERO; b * gh]; // GRU: W_hh h + b_hh
        let rec = GemmShape {
            m: b,
            k: h,
            n: gh,
            trans_a: false,
            trans_b: true,
        };
        for s in 0..tl {
            let t = self.time(s);
            let (st, sb) = (t * b * h, (t + 1) * b * h);
            self.h_prev[st..sb].copy_from_slice(&h_cur);
            let xp_t = &xp[t * b * gh..(t + 1) * b * gh];
            let saved = &mut self.gates[t * b * sw..(t + 1) * b * sw];
            match self.kind {
                CellKind::Lstm => {
                    saved.copy_from_slice(xp_t);
                    T::gemm(rec, T::ONE, &h_cur, w_hh, T::ONE, saved);
                    self.c_prev[st..sb].copy_from_slice(&c_cur);
                    lstm::lstm_forward(saved, &c_cur, &mut self.c_new[st..sb], &mut h_new, h);
                }
                CellKind::Gru => {
                    match bias {
                        Some((_, b_hh)) => hp
                            .chunks_exact_mut(gh)
                            .for_each(|r| r.copy_from_slice(b_hh)),
                        None => hp.fill(T::ZERO),
                    }
                    T::gemm(rec, T::ONE, &h_cur, w_hh, T::ONE, &mut hp);
                    gru::gru_forward(xp_t, &hp, &h_cur, &mut h_new, saved, h);
                }
                CellKind::Rnn(act) => {
                    saved.copy_from_slice(xp_t);
                    T::gemm(rec, T::ONE, &h_cur, w_hh, T::ONE, saved);
                    rnn::rnn_forward(saved, act);
                    h_new.copy_from_slice(saved);
                }
            }
            for bi in 0..b {
                let r = bi * h..(bi + 1) * h;
                if self.active(t, bi) {
                    y[st + r.start..st + r.end].copy_from_slice(&h_new[r.clone()]);
                    h_cur[r.clone()].copy_from_slice(&h_new[r.clone()]);
                    if lstm {
                        c_cur[r.clone()].copy_from_slice(&self.c_new[st + r.start..st + r.end]);
                    }
                }
                // Past its length a sequence keeps its state; its output stays zero.
            }
        }
        (y, h_cur, if lstm { Some(c_cur) } else { None })
    }
}

/// `dst += src^T`-style helpers over row-major buffers.
fn add_col_sums<T: Float>(dst: &mut [T], rows: &[T]) {
    let n = dst.len();
    for row in rows.chunks_exact(n) {
        for (d, &x) in dst.iter_mut().zip(row) {
            *d += x;
        }
    }
}

impl<T: Float> CustomOp<T> for FusedDirection<T> {
    fn name(&self) -> &str {
        match self.kind {
            CellKind::Rnn(_) => "fused_rnn",
            CellKind::Lstm => "fused_lstm",
            CellKind::Gru => "fused_gru",
        }
    }

    fn backward(
        &mut self,
        inp: &[&Tensor<T>],
        _outputs: &[&Tensor<T>],
        gout: &[Option<&Tensor<T>>],
        gin: &mut [Option<Tensor<T>>],
    ) -> Result<()> {
        let (tl, b, h, i_sz) = (self.t_len, self.batch, self.hidden, self.in_size);
        let gh = self.kind.gates() * h;
        let sw = self.saved_width();
        let wi = self.w_ih_index();
        let (w_ih, w_hh) = (inp[wi].data(), inp[wi + 1].data());
        let lstm = self.kind == CellKind::Lstm;

        let mut dh = gout[1].map_or_else(|| vec![T::ZERO; b * h], |g| g.data().to_vec());
        let mut dc = if lstm {
            gout.get(2)
                .copied()
                .flatten()
                .map_or_else(|| vec![T::ZERO; b * h], |g| g.data().to_vec())
        } else {
            Vec::new()
        };
        // dG: gradient of the gate pre-activations for every time step (GRU: of Xp), and for the
        // GRU separately of Hp = W_hh h + b_hh.
        let mut dg = vec![T::ZERO; tl * b * gh];
        let mut dhp = if self.kind == CellKind::Gru {
            vec![T::ZERO; tl * b * gh]
        } else {
            Vec::new()
        };
        let mut dh_t = vec![T::ZERO; b * h];
        let mut keep = vec![T::ZERO; b * h];
        let back = GemmShape {
            m: b,
            k: gh,
            n: h,
            trans_a: false,
            trans_b: false,
        };
        for s in (0..tl).rev() {
            let t = self.time(s);
            let (st, sb) = (t * b * h, (t + 1) * b * h);
            // Total gradient reaching h_t: from the next step and from the output y_t.
            dh_t.copy_from_slice(&dh);
            if let Some(dy) = gout[0] {
                for bi in 0..b {
                    if self.active(t, bi) {
                        for j in 0..h {
                            dh_t[bi * h + j] += dy.data()[st + bi * h + j];
                        }
                    }
                }
            }
            let saved = &self.gates[t * b * sw..(t + 1) * b * sw];
            let dg_t = &mut dg[t * b * gh..(t + 1) * b * gh];
            match self.kind {
                CellKind::Lstm => {
                    keep.copy_from_slice(&dc);
                    lstm::lstm_backward(
                        saved,
                        &self.c_prev[st..sb],
                        &self.c_new[st..sb],
                        &dh_t,
                        &mut dc,
                        dg_t,
                        h,
                    );
                    T::gemm(back, T::ONE, dg_t, w_hh, T::ZERO, &mut dh);
                }
                CellKind::Gru => {
                    let dhp_t = &mut dhp[t * b * gh..(t + 1) * b * gh];
                    gru::gru_backward(saved, &self.h_prev[st..sb], &dh_t, dg_t, dhp_t, &mut dh, h);
                    T::gemm(back, T::ONE, dhp_t, w_hh, T::ONE, &mut dh);
                }
                CellKind::Rnn(act) => {
                    rnn::rnn_backward(saved, &dh_t, dg_t, act);
                    T::gemm(back, T::ONE, dg_t, w_hh, T::ZERO, &mut dh);
                }
            }
            // A finished sequence passes its gradient straight through this step.
            for bi in 0..b {
                if !self.active(t, bi) {
                    let r = bi * h..(bi + 1) * h;
                    dh[r.clone()].copy_from_slice(&dh_t[r.clone()]);
                    if lstm {
                        dc[r.clone()].copy_from_slice(&keep[r]);
                    }
                    dg[t * b * gh + bi * gh..t * b * gh + (bi + 1) * gh].fill(T::ZERO);
                    if self.kind == CellKind::Gru {
                        dhp[t * b * gh + bi * gh..t * b * gh + (bi + 1) * gh].fill(T::ZERO);
                    }
                    // The GEMM above already used the zeroed rows only for this row's dh,
                    // which was just overwritten.
                }
            }
        }
        // dG for the recurrent weights: the GRU's hidden-side gradient, else dG itself.
        let dg_h = if self.kind == CellKind::Gru {
            &dhp
        } else {
            &dg
        };
        if let Some(gx) = gin[X].as_mut() {
            let s = GemmShape {
                m: tl * b,
                k: gh,
                n: i_sz,
                trans_a: false,
                trans_b: false,
            };
            T::gemm(s, T::ONE, &dg, w_ih, T::ONE, gx.data_mut());
        }
        if let Some(g) = gin[H0].as_mut() {
            g.data_mut().copy_from_slice(&dh);
        }
        if lstm {
            if let Some(g) = gin[2].as_mut() {
                g.data_mut().copy_from_slice(&dc);
            }
        }
        if let Some(g) = gin[wi].as_mut() {
            let s = GemmShape {
                m: gh,
                k: tl * b,
                n: i_sz,
                trans_a: true,
                trans_b: false,
            };
            T::gemm(s, T::ONE, &dg, inp[X].data(), T::ONE, g.data_mut());
        }
        if let Some(g) = gin[wi + 1].as_mut() {
            let s = GemmShape {
                m: gh,
                k: tl * b,
                n: h,
                trans_a: true,
                trans_b: false,
            };
            T::gemm(s, T::ONE, dg_h, &self.h_prev, T::ONE, g.data_mut());
        }
        if self.has_bias {
            if let Some(g) = gin[wi + 2].as_mut() {
                add_col_sums(g.data_mut(), &dg);
            }
            if let Some(g) = gin[wi + 3].as_mut() {
                add_col_sums(g.data_mut(), dg_h);
            }
        }
        Ok(())
    }
}
