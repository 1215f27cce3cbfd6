//! The backward recurrence, in reverse time: per step the fused gate kernels turn `dh`, `dc`
//! and the saved gates into `dG`, one product gives `dh_{t-1} = dG W_hh`, and the step's rows of
//! `dG` join the bias gradients; after the loop, products over all time steps give `dX`,
//! `dW_ih` and `dW_hh`, added up in shard order.

use super::bf16;
use super::buffers::{BackwardScratch, Shard};
use super::schedule::{GROUP_SHARDS, Split, for_each_group, group_len, reborrow, step_product};
use super::weights::{RecurrentWeight, StepWeight, Weights};
use super::{Config, FusedDirection, Inputs, Reg};
use crate::Result;
use crate::kernels::Sweep;
use crate::kernels::gemm_nn::{
    AStorage, PackedB, RowRuns, Rows, gemm_packed_set, gemm_set_blocked_b, gemm_set_blocked_b_runs,
};
use crate::kernels::handoff::with_helper;
use crate::kernels::{gru, lstm, regularize, rnn};
use crate::nn::direction::CellKind;
use crate::tape::{CustomOp, Workspace};
use crate::tensor::{self, Float, Tensor};

/// Which gradients the backward must produce.
#[derive(Clone, Copy)]
pub(super) struct Wanted {
    pub(super) x: bool,
    pub(super) w_ih: bool,
    pub(super) w_hh: bool,
    pub(super) b_ih: bool,
    pub(super) b_hh: bool,
}

/// What every shard's backward reads: the node's inputs (with `W_ih` packed when `dX` is
/// wanted), its output `y` `[T, B, H]`, `W_hh` as each step's product reads it, the gradients
/// reaching the outputs (`None` for an output that was not used) and which gradients to give.
#[derive(Clone, Copy)]
pub(super) struct BackwardCtx<'a, T> {
    pub(super) inp: Inputs<'a, T>,
    pub(super) y: &'a [T],
    pub(super) w_hh_p: StepWeight<'a, T>,
    /// `dL/dy` `[T, B, H]`, `dL/dh_n` and `dL/dc_n` `[B, H]`.
    pub(super) gy: Option<&'a [T]>,
    pub(super) gh_n: Option<&'a [T]>,
    pub(super) gc_n: Option<&'a [T]>,
    pub(super) want: Wanted,
}

impl Config {
    /// Backward through the recurrence of a group of shards, in lockstep as in
    /// [`Config::forward_group`] (see [`BackwardCtx`] for what it reads). Leaves each shard's gradients in its `bs`
    /// (`dh`, `dc`, `dg`, `dhp`, `dx`, `dw_ih`, `dw_hh`, the bias parts). `split` as in
    /// [`Config::forward_group`].
    pub(super) fn backward_group<T: Float>(
        &self,
        group: &[&Shard<T>],
        bss: &mut [BackwardScratch<T>],
        ctx: &BackwardCtx<'_, T>,
        split: Option<&mut [T]>,
    ) {
        let (gh_n, gc_n) = (ctx.gh_n, ctx.gc_n);
        assert!(
            group.len() <= GROUP_SHARDS,
            "backward_group: too many shards"
        );
        let h = self.hidden;
        for (sh, bs) in group.iter().zip(bss.iter_mut()) {
            let rows = &sh.rows;
            let state_rows = |dst: &mut [T], g: Option<&[T]>| match g {
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
                self.backward_steps(group, bss, ctx, Some((buf, helper)));
            }),
            None => self.backward_steps(group, bss, ctx, None),
        }
        for (sh, bs) in group.iter().zip(bss.iter_mut()) {
            self.backward_products(sh, bs, ctx);
        }
    }

    /// Backward through the recurrence of a group of shards (see [`Config::backward_group`]),
    /// each step's products split with a helper where `split` says so.
    pub(super) fn backward_steps<T: Float>(
        &self,
        group: &[&Shard<T>],
        bss: &mut [BackwardScratch<T>],
        ctx: &BackwardCtx<'_, T>,
        mut split: Split<'_, T>,
    ) {
        let want = ctx.want;
        let gh = self.kind.gates() * self.hidden;
        for bs in bss.iter_mut() {
            bs.db_ih.fill(T::ZERO);
            bs.db_hh.fill(T::ZERO);
        }
        for s in (0..self.t_len).rev() {
            let t = self.time(s);
            for (sh, bs) in group.iter().zip(bss.iter_mut()) {
                self.backward_gates(sh, bs, ctx, s);
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
                // With recurrent dropout the product gives the gradient of a_t = m * h_{t-1},
                // masked into dh below.
                let c = if self.h_drop {
                    bs.da.fill(T::ZERO);
                    &mut bs.da
                } else {
                    &mut bs.dh
                };
                *blk = Rows {
                    m: n,
                    a: &dg[t * n * gh..(t + 1) * n * gh],
                    storage: AStorage::RowMajor,
                    c,
                    bias: None,
                };
            }
            let sweep = Sweep::alternate(s);
            step_product(
                &mut blocks[..group.len()],
                ctx.w_hh_p,
                reborrow(&mut split),
                sweep,
            );
            for (sh, bs) in group.iter().zip(bss.iter_mut()) {
                if self.h_drop {
                    let m = ctx.inp.reg.h_drop_rows(&sh.rows, self.hidden);
                    regularize::add_masked(&mut bs.dh, &bs.da, m);
                }
                self.backward_finished(sh, bs, s);
                self.add_bias_grads(sh.rows.len(), bs, t, want);
            }
        }
    }

    /// Step `s` of a shard's backward up to its recurrent product: the total gradient reaching
    /// `h_t` (from the next step and from the output `y_t`), then the fused kernel that turns
    /// it and the saved gates into `dG`; leaves in `dh` what the product adds to (zeros, or
    /// for the GRU its direct part of `dh_{t-1}`).
    pub(super) fn backward_gates<T: Float>(
        &self,
        sh: &Shard<T>,
        bs: &mut BackwardScratch<T>,
        ctx: &BackwardCtx<'_, T>,
        s: usize,
    ) {
        let (h0, y, gy) = (ctx.inp.h0, ctx.y, ctx.gy);
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
            kept,
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
        // Zoneout: dh~_t = (1 - d_t) dh_t reaches the cell, d_t dh_t goes to h_{t-1} (added
        // after the kernel). A finished sequence's rows pass dh_t through whole (see
        // `backward_finished`).
        if self.zone_h {
            let d = Reg::zone_rows(ctx.inp.reg.zone_h, t, b, &rows, h);
            if all_active {
                regularize::zoneout_backward(dh_t, kept, d);
            } else {
                for bi in 0..n {
                    let r = bi * h..(bi + 1) * h;
                    if self.active(t, rows.start + bi) {
                        regularize::zoneout_backward(
                            &mut dh_t[r.clone()],
                            &mut kept[r.clone()],
                            &d[r],
                        );
                    } else {
                        kept[r].fill(T::ZERO);
                    }
                }
            }
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
                let c_t = &sh.c_new[st..sb];
                if self.zone_c {
                    let d = Reg::zone_rows(ctx.inp.reg.zone_c, t, b, &rows, h);
                    lstm::lstm_backward_zoneout(saved, c_prev, d, c_t, dh_t, dc, dg_t, h);
                } else {
                    lstm::lstm_backward(saved, c_prev, c_t, dh_t, dc, dg_t, h);
                }
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
                // With zoneout the output is the blend: act' is taken at the new value h~_t.
                let h_t = if self.zone_h {
                    &sh.h_new[st..sb]
                } else {
                    &sh.outputs(y)[st..sb]
                };
                rnn::rnn_backward(h_t, dh_t, dg_t, act);
                dh.fill(T::ZERO);
            }
        }
        if self.zone_h {
            tensor::add(dh, kept);
        }
    }

    /// Step `s` of a shard's backward after its recurrent product: a finished sequence passes
    /// its gradient straight through the step.
    pub(super) fn backward_finished<T: Float>(
        &self,
        sh: &Shard<T>,
        bs: &mut BackwardScratch<T>,
        s: usize,
    ) {
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
    /// would read them back from memory). The GRU's `b_hh` takes the hidden-side `dG`; the
    /// LSTM and the RNN add both biases to the same pre-activations, so their gradients are
    /// equal, summed once (into `db_ih`, copied after the steps) unless only `b_hh` is wanted.
    pub(super) fn add_bias_grads<T: Float>(
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
            tensor::add_col_sums(&mut bs.db_ih, &bs.dg[rows.clone()]);
        }
        if want.b_hh && (gru || !want.b_ih) {
            let dg_h = if gru { &bs.dhp } else { &bs.dg };
            tensor::add_col_sums(&mut bs.db_hh, &dg_h[rows]);
        }
    }

    /// A shard's products over all its time steps once its recurrence is done: its rows of
    /// `dX = dG W_ih` and its parts of `dW_ih = dG^T X` and `dW_hh = dG^T H_prev` (the bias
    /// gradients are summed during the recurrence, [`Config::add_bias_grads`]).
    pub(super) fn backward_products<T: Float>(
        &self,
        sh: &Shard<T>,
        bs: &mut BackwardScratch<T>,
        ctx: &BackwardCtx<'_, T>,
    ) {
        let (x, h0, y, w, want) = (ctx.inp.x, ctx.inp.h0, ctx.y, &ctx.inp.w, ctx.want);
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
        // gradient reads dG in place as `dG^T` and packs the shard's inputs to the weight a
        // block of rows at a time.
        let (dx, dw_ih, dw_hh) = (&mut bs.dx, &mut bs.dw_ih, &mut bs.dw_hh);
        let (x_packed, h_packed) = (&mut bs.x_packed, &mut bs.h_packed);
        // The shard's rows of each step of `X`, read where they lie (in bf16 copied out).
        let x_runs = RowRuns {
            src: x.get(rows.start * i_sz..).unwrap_or(&[]),
            rows: n,
            stride: self.batch * i_sz,
            runs: tl,
        };
        let dx_job = || {
            if let (true, Some(b)) = (want.x, w.bf16) {
                let dg = (tl * n, dg, AStorage::RowMajor);
                bf16::product(b.kernel, dg, &b.w_ih, dx, true);
            } else if want.x {
                let w_ih = w
                    .w_ih_packed
                    .expect("backward: W_ih is packed when dX is wanted");
                gemm_packed_set(tl * n, dg, w_ih, dx);
            }
        };
        // dW = dG^T A, `[G*H, cols]`, with `A` `[rows, cols]` (row blocks stacked in order)
        // packed into `packed` a cache block of rows at a time, and `dG` `[rows, G*H]` read in
        // place.
        let weight_grad =
            |dg: &[T], parts: &[&[T]], cols: usize, packed: &mut PackedB<T>, dw: &mut [T]| {
                if let Some(b) = w.bf16 {
                    return bf16::weight_grad(b.kernel, (dg, gh), parts, cols, dw);
                }
                gemm_set_blocked_b(dg_transposed(gh, dg, dw), parts, cols, packed);
            };
        // In bf16 the LSTM's and the RNN's two weight gradients read one packing of `dG^T`.
        let dg_t = match w.bf16 {
            Some(b) if self.kind != CellKind::Gru && want.w_ih && want.w_hh && tl > 0 => {
                Some(bf16::PackedDgT::new(b.kernel, &dg[..tl * n * gh], gh))
            }
            _ => None,
        };
        let dw_ih_job = || {
            if !want.w_ih {
                return;
            }
            // In bf16 the weight gradient packs the shard's rows whole, from its copy.
            if w.bf16.is_some() {
                let xs: &[&[T]] = &[&sh.x(x)[..tl * n * i_sz]];
                if let Some(p) = &dg_t
                    && p.weight_grad(0..tl * n, xs, i_sz, dw_ih)
                {
                    return;
                }
                return weight_grad(dg, xs, i_sz, x_packed, dw_ih);
            }
            gemm_set_blocked_b_runs(dg_transposed(gh, dg, dw_ih), x_runs, i_sz, x_packed);
        };
        let dw_hh_job = || {
            if !want.w_hh {
                return;
            }
            // dW_hh over rows `rows` of `dg_h` (those steps' `dG`), from the shared packing
            // where it has them as whole pairs.
            let mut grad_hh = |rows: std::ops::Range<usize>, parts: &[&[T]], dw: &mut [T]| {
                if let Some(p) = &dg_t
                    && p.weight_grad(rows.clone(), parts, h, dw)
                {
                    return;
                }
                let dg_rows = &dg_h[rows.start * gh..rows.end * gh];
                weight_grad(dg_rows, parts, h, h_packed, dw);
            };
            // With recurrent dropout the product read a_t = m * h_{t-1}, kept time-indexed as
            // the states are with lengths.
            if self.h_drop {
                return grad_hh(0..tl * n, &[&sh.h_drop[..tl * nh]], dw_hh);
            }
            if keep_prev || tl == 0 {
                return grad_hh(0..tl * n, &[&sh.h_prev[..tl * nh]], dw_hh);
            }
            // Step 0 starts from h0; every later step from the previous step's output, which
            // in time order is the next output (reverse) or the one before. A zero initial
            // state (the default) adds nothing: its rows are left out (at B = 1 they were a
            // rank-one update of 0.11 ms in a 3 ms tiny-batch LSTM step).
            let with_h0 = h0.iter().any(|&v| v != T::ZERO);
            let (rows, parts): (_, [&[T]; 2]) = match (self.reverse, with_h0) {
                (false, true) => (0..tl * n, [h0, &hs[..(tl - 1) * nh]]),
                (false, false) => (n..tl * n, [&hs[..(tl - 1) * nh], &[]]),
                (true, true) => (0..tl * n, [&hs[nh..tl * nh], h0]),
                (true, false) => (0..(tl - 1) * n, [&hs[nh..tl * nh], &[]]),
            };
            grad_hh(rows, &parts, dw_hh);
        };
        crate::threads::join(dx_job, || crate::threads::join(dw_ih_job, dw_hh_job));
        // The bias gradients were summed step by step (`add_bias_grads`); the LSTM's and the
        // RNN's are one sum.
        if want.b_ih && want.b_hh && self.kind != CellKind::Gru {
            bs.db_hh.copy_from_slice(&bs.db_ih);
        }
    }
}

/// The fused node on the tape: its backward runs the shards' backward recurrences and adds
/// their weight gradients up in shard order.
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
        // Shards run on every thread: wake the others while this one packs the weights.
        if self.shards.len() > 1 {
            crate::threads::wake();
        }
        let cfg = &self.cfg;
        let (b, h, i_sz) = (cfg.batch, cfg.hidden, cfg.in_size);
        let gh = cfg.kind.gates() * h;
        let slots = cfg.slots;
        let inp = Inputs::new(&slots, inp, &self.reg);
        let w = inp.w;
        let lstm = cfg.kind == CellKind::Lstm;
        // W_hh [G*H, H] packed once: dh_{t-1} = dG W_hh at every step reads it (a single row
        // over a large W_hh reads the forward's copy as stored).
        let want_x = gin[slots.x].is_some();
        // In bf16, W_hh (and for dX, W_ih) packed once in bf16 for every product.
        let bf16 = self.bf16.as_mut().map(|b| {
            b.pack_backward(want_x.then_some(w.w_ih), w.w_hh, (gh, i_sz, h));
            &*b
        });
        let w_hh_p = match (bf16, &mut self.w_hh) {
            (Some(b), _) => StepWeight::Bf16(&b.w_hh, b.kernel),
            (None, RecurrentWeight::Packed(p)) => {
                p.pack(w.w_hh, gh, h);
                StepWeight::Packed(&*p)
            }
            (None, RecurrentWeight::Stored(m)) => StepWeight::Cols(&*m),
        };
        let wanted = |slot: Option<usize>| slot.is_some_and(|k| gin[k].is_some());
        let want = Wanted {
            x: wanted(Some(slots.x)),
            w_ih: wanted(Some(slots.w_ih)),
            w_hh: wanted(Some(slots.w_hh)),
            b_ih: wanted(slots.bias.map(|b| b.0)),
            b_hh: wanted(slots.bias.map(|b| b.1)),
        };
        let gy = gout[0].map(Tensor::data);
        let gh_n = gout[1].map(Tensor::data);
        let gc_n = if lstm {
            gout.get(2).copied().flatten().map(Tensor::data)
        } else {
            None
        };
        // W_ih packed once for every shard's dX = dG W_ih.
        let w = if bf16.is_some() {
            Weights { bf16, ..w }
        } else if want.x {
            self.w_ih.pack(w.w_ih, gh, i_sz);
            Weights {
                w_ih_packed: Some(&self.w_ih),
                ..w
            }
        } else {
            w
        };
        let ctx = BackwardCtx {
            inp: Inputs { w, ..inp },
            y: outputs[0].data(),
            w_hh_p,
            gy,
            gh_n,
            gc_n,
            want,
        };
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
                cfg.backward_group(g, bs, &ctx, Some(buf));
            }
            None => {
                let len = group_len(shards.len());
                for_each_group(&mut shards, &mut scratch, len, |g, bs| {
                    cfg.backward_group(g, bs, &ctx, None);
                });
            }
        }
        if let Some(v) = split {
            ws.give(v);
        }
        // The tape hands this op stale gradient buffers (`overwrites_grad_inputs`): every
        // element below is written, not added to. The gradients of X, h0 and c0 are the shards'
        // rows side by side; dX in parallel over time steps.
        if let Some(gx) = gin[slots.x].as_mut() {
            let (shards, scratch) = (&self.shards, &scratch);
            let row = b * i_sz;
            crate::threads::for_each_chunk(gx.data_mut(), row, |t, gx_t| {
                for (sh, g) in shards.iter().zip(scratch) {
                    let (rows, n) = (&sh.rows, sh.rows.len());
                    gx_t[rows.start * i_sz..rows.end * i_sz]
                        .copy_from_slice(&g.dx[t * n * i_sz..(t + 1) * n * i_sz]);
                }
            });
        }
        for (sh, g) in self.shards.iter().zip(&scratch) {
            let rows = sh.rows.start * h..sh.rows.end * h;
            if let Some(g0) = gin[slots.h0].as_mut() {
                g0.data_mut()[rows.clone()].copy_from_slice(&g.dh);
            }
            if let Some(g0) = slots.c0.and_then(|k| gin[k].as_mut()) {
                g0.data_mut()[rows].copy_from_slice(&g.dc);
            }
        }
        // The weights' gradients are sums over the shards, added in shard order: the sums never
        // depend on which thread ran which shard. The first shard's parts become the gradients
        // themselves (the buffers trade places); the others' are added, spread over the pool.
        let parts = |g: &mut BackwardScratch<T>| {
            [
                (Some(slots.w_ih), std::mem::take(&mut g.dw_ih)),
                (Some(slots.w_hh), std::mem::take(&mut g.dw_hh)),
                (slots.bias.map(|b| b.0), std::mem::take(&mut g.db_ih)),
                (slots.bias.map(|b| b.1), std::mem::take(&mut g.db_hh)),
            ]
        };
        for (s, g) in scratch.iter_mut().enumerate() {
            for (slot, mut part) in parts(g) {
                match slot.and_then(|k| gin[k].as_mut()) {
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

/// A weight gradient's product block: `A = dG^T`, `dG` `[rows, gh]` read in place (by
/// columns, `gh` apart), and `C = dW` `[gh, cols]`.
fn dg_transposed<'a, T>(gh: usize, dg: &'a [T], dw: &'a mut [T]) -> Rows<'a, T> {
    Rows {
        m: gh,
        a: dg,
        storage: AStorage::ColMajor { ld: gh },
        c: dw,
        bias: None,
    }
}
