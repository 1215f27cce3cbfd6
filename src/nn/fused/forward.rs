//! The forward recurrence: the input projection of every step at once, then per step the
//! recurrent product and the fused gate kernel, for a group of shards in lockstep.

use super::buffers::{ForwardScratch, Shard, gather, read_write};
use super::schedule::{GROUP_SHARDS, Split, for_each_group, group_len, reborrow, step_product};
use super::weights::{
    RecurrentWeight, StepWeight, Weights, fill_rows, init_input_projection, project, project_steps,
    projects_packed,
};
use super::{Config, FusedDirection, Inputs, Reg};
use crate::kernels::Sweep;
use crate::kernels::gemm_nn::{AStorage, Rows};
use crate::kernels::handoff::with_helper;
use crate::kernels::regularize;
use crate::kernels::{gru, lstm, rnn};
use crate::nn::direction::CellKind;
use crate::tape::Scratch;
use crate::tensor::Float;

impl Config {
    /// Runs the recurrence of a group of shards from the initial state `h0`, `c0` (`[B, H]`,
    /// all rows), in lockstep: each step's recurrent products of all the shards are one call
    /// of the kernel, so `W_hh` streams through the cache once per step for the whole group.
    /// Each shard writes its outputs `[T, n, H]` to its `ys` and its final `h` to `fs.h_cur`
    /// (the final `c` is [`Shard::c_final`]). The kernel's values do not depend on which rows
    /// share a call, so neither do the results. With `split` (room for the right halves of the
    /// products, see [`Config::split_buffer`]), a helper thread takes half of each product.
    pub(super) fn forward_group<T: Float>(
        &self,
        group: &mut [Shard<T>],
        fss: &mut [ForwardScratch<T>],
        inp: &Inputs<'_, T>,
        w_hh_t: StepWeight<'_, T>,
        split: Option<&mut [T]>,
    ) {
        let h0 = inp.h0;
        assert!(
            group.len() <= GROUP_SHARDS,
            "forward_group: too many shards"
        );
        // A split group has the pool's threads to itself: its input projections split too.
        let halves = split.is_some();
        for (sh, fs) in group.iter_mut().zip(fss.iter_mut()) {
            self.forward_begin(sh, fs, inp, halves);
        }
        // The helper spins only through the recurrence.
        match split {
            Some(buf) => with_helper(|helper| {
                self.forward_steps(group, fss, inp, w_hh_t, Some((buf, helper)));
            }),
            None => self.forward_steps(group, fss, inp, w_hh_t, None),
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
    pub(super) fn forward_steps<T: Float>(
        &self,
        group: &mut [Shard<T>],
        fss: &mut [ForwardScratch<T>],
        inp: &Inputs<'_, T>,
        w_hh_t: StepWeight<'_, T>,
        mut split: Split<'_, T>,
    ) {
        let (h0, w) = (inp.h0, &inp.w);
        let sw = self.saved_width();
        let count = group.len();
        for s in 0..self.t_len {
            let t = self.time(s);
            // Recurrent dropout: the product reads a_t = m * h_{t-1}, kept for dW_hh.
            if self.h_drop {
                for sh in group.iter_mut() {
                    let nh = sh.rows.len() * self.hidden;
                    let h_prev = self.state_in(&sh.h_prev, &sh.ys, h0, &sh.rows, s);
                    let m = inp.reg.h_drop_rows(&sh.rows, self.hidden);
                    regularize::mask(&mut sh.h_drop[t * nh..(t + 1) * nh], h_prev, m);
                }
            }
            // The recurrent product of every shard: into its gate pre-activations, which already
            // hold the input projection (the LSTM's saved block, the RNN's output slot y_t), or
            // for the GRU into `W_hh h + b_hh` apart.
            let mut blocks: [Rows<'_, T>; GROUP_SHARDS] = std::array::from_fn(|_| Rows::empty());
            for ((blk, sh), fs) in blocks.iter_mut().zip(group.iter_mut()).zip(fss.iter_mut()) {
                let n = sh.rows.len();
                let nh = n * self.hidden;
                let (a, c): (&[T], &mut [T]) = match self.kind {
                    _ if self.h_drop => {
                        let c = match self.kind {
                            CellKind::Lstm => &mut sh.gates[t * n * sw..(t + 1) * n * sw],
                            CellKind::Gru => {
                                fill_rows(&mut fs.hp, w.bias.map(|(_, b_hh)| b_hh));
                                &mut fs.hp[..]
                            }
                            CellKind::Rnn(_) => &mut sh.ys[t * nh..(t + 1) * nh],
                        };
                        (&sh.h_drop[t * nh..(t + 1) * nh], c)
                    }
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
                self.forward_gates(sh, fs, inp, s);
            }
        }
    }

    /// A shard's work before its recurrence: the input projection of every step at once,
    /// `Xp = X W_ih^T` (the biases join later: the GRU's `b_ih` in its gate kernel, the other
    /// cells' in each step's product), its rows of `c0`, and with lengths the state of the
    /// first step. With `halves`, two threads each project half of the time steps.
    pub(super) fn forward_begin<T: Float>(
        &self,
        sh: &mut Shard<T>,
        fs: &mut ForwardScratch<T>,
        inp: &Inputs<'_, T>,
        halves: bool,
    ) {
        let (x, h0, c0, w) = (inp.x, inp.h0, inp.c0, &inp.w);
        let (tl, b, h, i_sz) = (self.t_len, self.batch, self.hidden, self.in_size);
        let rows = sh.rows.clone();
        let n = rows.len();
        let gh = self.kind.gates() * h;
        // Xp goes straight where each step sums its pre-activations: the LSTM's saved block
        // (the gates, activated in place), the RNN's outputs (likewise), and their biases join
        // in each step's recurrent product (one pass over the projection fewer). The GRU keeps
        // Xp apart from its saved block, and b_ih apart from Xp (its gate kernel adds it); it
        // keeps b_hh apart too (its n gate scales `W_hn h + b_hn` by r).
        // A shard of part of the batch reads its rows of each step where they lie; in bf16 it
        // copies them out (its weight gradient packs them whole).
        if !sh.xs.is_empty() {
            gather(x, &mut sh.xs, b, &rows, i_sz);
        }
        let xp: &mut [T] = match self.kind {
            CellKind::Lstm => &mut sh.gates,
            CellKind::Gru => &mut fs.xp,
            CellKind::Rnn(_) => &mut sh.ys,
        };
        if n == b || !sh.xs.is_empty() {
            // (`Shard::x`, with the fields borrowed apart: `xp` is one of the shard's own.)
            let xs = if sh.xs.is_empty() { x } else { &sh.xs };
            project((tl * n, i_sz, gh), xs, w, xp, halves);
        } else {
            let x_t = |t: usize| &x[(t * b + rows.start) * i_sz..(t * b + rows.end) * i_sz];
            project_steps((n, i_sz, gh), x_t, w, &mut xp[..tl * n * gh], halves);
        }
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
    pub(super) fn forward_gates<T: Float>(
        &self,
        sh: &mut Shard<T>,
        fs: &mut ForwardScratch<T>,
        inp: &Inputs<'_, T>,
        s: usize,
    ) {
        let (h0, w) = (inp.h0, &inp.w);
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
                if self.zone_c {
                    let d = Reg::zone_rows(inp.reg.zone_c, t, self.batch, &rows, h);
                    lstm::lstm_forward_zoneout(saved, c_in, d, c_out, h_out, h);
                } else {
                    lstm::lstm_forward(saved, c_in, c_out, h_out, h);
                }
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
            CellKind::Rnn(act) => {
                rnn::rnn_forward(h_out, act);
                if self.zone_h {
                    sh.h_new[st..sb].copy_from_slice(h_out);
                }
            }
        }
        // Zoneout: h_t = (1 - d_t) * h~_t + d_t * h_{t-1} (a finished sequence's rows are
        // replaced below).
        if self.zone_h {
            let d = Reg::zone_rows(inp.reg.zone_h, t, self.batch, &rows, h);
            regularize::zoneout_forward(h_out, h_in, d);
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
}

impl<T: Float> FusedDirection<T> {
    /// Runs the recurrence into `y` `[T, B, H]`, `h_n` and (LSTM) `c_n` `[B, H]`.
    pub(super) fn forward(
        &mut self,
        inp: &Inputs<'_, T>,
        scratch: &mut [ForwardScratch<T>],
        split: Option<&mut [T]>,
        y: &mut Vec<T>,
        h_n: &mut [T],
        c_n: &mut [T],
    ) {
        let cfg = &self.cfg;
        let (b, h) = (cfg.batch, cfg.hidden);
        let w = inp.w;
        let gh = cfg.kind.gates() * h;
        // In bf16, both weights packed once in bf16 for every product.
        let bf16 = self.bf16.as_mut().map(|b| {
            b.pack_forward(w.w_ih, w.w_hh, (gh, cfg.in_size, h));
            &*b
        });
        // W_ih^T packed once for every shard's input projection over more than SMALL_ROWS rows.
        let w_ih_packed = if bf16.is_none()
            && self
                .shards
                .iter()
                .any(|sh| projects_packed(cfg.t_len * sh.rows.len()))
        {
            self.w_ih.pack_transposed(w.w_ih, gh, cfg.in_size);
            Some(&self.w_ih)
        } else {
            None
        };
        let inp = Inputs {
            w: Weights {
                w_ih_packed,
                bf16,
                ..w
            },
            ..*inp
        };
        let lstm = cfg.kind == CellKind::Lstm;
        // W_hh^T packed once for the whole sequence (a single row over a W_hh larger than
        // L2: W_hh copied as stored): h_{t-1} W_hh^T at every step reads it.
        let w_hh_t = match (bf16, &mut self.w_hh) {
            (Some(b), _) => StepWeight::Bf16(&b.w_hh, b.kernel),
            (None, RecurrentWeight::Packed(p)) => {
                p.pack_transposed(w.w_hh, cfg.kind.gates() * h, h);
                StepWeight::Packed(&*p)
            }
            (None, RecurrentWeight::Stored(m)) => {
                m.copy_from(w.w_hh, cfg.kind.gates() * h, h);
                StepWeight::Rows(&*m)
            }
        };
        // A single shard writes the layer's output in place: lend it the buffer.
        let single = self.shards.len() == 1;
        if single {
            self.shards[0].ys = Scratch::whole(std::mem::take(y));
        }
        match split {
            // One group whose products two threads share.
            Some(buf) => cfg.forward_group(&mut self.shards, scratch, &inp, w_hh_t, Some(buf)),
            None => {
                let len = group_len(self.shards.len());
                for_each_group(&mut self.shards, scratch, len, |g, fs| {
                    cfg.forward_group(g, fs, &inp, w_hh_t, None);
                });
            }
        }
        if single {
            *y = std::mem::take(&mut self.shards[0].ys).into_buffer();
        } else {
            // Each shard's rows into y, in parallel over time steps.
            let shards = &self.shards;
            crate::threads::for_each_chunk(y, b * h, |t, y_t| {
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
