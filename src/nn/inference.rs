//! One step of a cell at a time, outside the tape: for sampling from a trained model one symbol
//! at a time.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::direction::CellKind;
use super::fused::{fill_rows, init_input_projection};
use super::split_tuner::SplitTuner;
use crate::Result;
use crate::kernels::Sweep;
use crate::kernels::gemm_nn::{AStorage, PackedB, Rows, gemm_packed_acc_cols};
use crate::kernels::gemm_nt::gemm_nt_acc;
use crate::kernels::handoff::{Helper, serve_during};
use crate::kernels::{gru, lstm, rnn};
use crate::tensor::Float;

/// One step of a cell on plain slices, for inference: nothing is recorded, and after
/// [`InferenceStep::new`] (and [`InferenceStep::pack_weights`]) nothing is allocated. The same
/// kernels as the fused layers.
///
/// Two ways to step: [`InferenceStep::step`] reads the weights as they are stored, on every
/// call; [`InferenceStep::step_packed`] reads them from a copy packed once by
/// [`InferenceStep::pack_weights`] for the kernel that streams them in order, which is faster
/// when many steps share the weights (sampling a sequence).
///
/// ```
/// use recur::nn::{CellKind, InferenceStep};
/// let (i, h) = (3, 4);
/// let w_ih = vec![0.1f32; 4 * h * i];
/// let w_hh = vec![0.05f32; 4 * h * h];
/// let mut step = InferenceStep::new(CellKind::Lstm, i, h, 1)?;
/// let (mut hs, mut cs) = (vec![0.0f32; h], vec![0.0f32; h]);
/// step.step(&w_ih, &w_hh, None, &[1.0, 0.5, -1.0], &mut hs, &mut cs)?;
/// assert!(hs.iter().all(|&v| v > 0.0 && v < 1.0));
///
/// // The same step over weights packed once.
/// step.pack_weights(&w_ih, &w_hh, None)?;
/// let (mut h2, mut c2) = (vec![0.0f32; h], vec![0.0f32; h]);
/// step.step_packed(&[1.0, 0.5, -1.0], &mut h2, &mut c2)?;
/// assert!(hs.iter().zip(&h2).all(|(a, b)| (a - b).abs() < 1e-6));
/// # Ok::<(), recur::Error>(())
/// ```
pub struct InferenceStep<T> {
    kind: CellKind,
    input: usize,
    hidden: usize,
    batch: usize,
    /// The buffers of [`InferenceStep::step`] (all units at once).
    bufs: Buffers<T>,
    packed: Option<Packed<T>>,
    /// The helper thread that takes one share of each packed step, inside
    /// [`InferenceStep::with_threads`].
    helper: Option<Arc<Helper>>,
    /// Whether a step with the helper splits its shares between the two threads.
    tuner: SplitTuner,
    /// Zoneout's probability, when the layer was trained with it (see
    /// [`InferenceStep::set_zoneout`]).
    zoneout: Option<T>,
}

/// Fewest bytes of packed weights for which [`InferenceStep::pack_weights`] cuts the units in
/// two shares, so that two threads can each step one ([`InferenceStep::with_threads`]). The
/// handoff between the cores costs a fraction of a microsecond a step, depending on where the
/// machine places them: smaller weights gained little from a second thread, larger ones much
/// (see BENCHMARKS.md).
const SPLIT_BYTES: usize = 256 << 10;

/// Weights packed by [`InferenceStep::pack_weights`]: one share of the units, or two.
struct Packed<T> {
    shares: Vec<Share<T>>,
    /// The order of the next step's panels: each step reverses it, so that it starts on the
    /// weights the previous step read last, still in cache ([`Sweep`]).
    order: Sweep,
    /// `[x h]`, row by row, for the LSTM's and the RNN's stacked product.
    xh: Vec<T>,
}

/// The units `units` of every gate: their rows of the weights, packed, and the buffers of a
/// step over them. A step over each share of a cell's units computes what one step over all
/// of them does, value for value: each unit's pre-activations are sums over the same `[x h]`
/// in the same order, and its gates read nothing of other units.
struct Share<T> {
    units: Range<usize>,
    /// The LSTM's and the RNN's `[W_ih^T; W_hh^T]` `[I + H, G*u]`, one product over `[x h]`
    /// (both products add onto the same pre-activations); the GRU's `W_ih^T` `[I, G*u]`.
    w_t: PackedB<T>,
    /// The GRU's `W_hh^T` `[H, G*u]` (whose product stays apart: `r` gates its `n` part).
    w_hh_t: PackedB<T>,
    /// The biases' values for these units, when the cell has them.
    bias: Option<(Vec<T>, Vec<T>)>,
    bufs: Buffers<T>,
}

/// A step's buffers for `u` units of `batch` rows.
struct Buffers<T> {
    /// Pre-activations `[batch, G*u]`: input side (or, LSTM and RNN, both sides).
    xp: Vec<T>,
    /// The GRU's hidden-side pre-activations `[batch, 3u]`.
    hp: Vec<T>,
    /// The GRU kernel's saved values `[batch, 4u]`.
    saved: Vec<T>,
    /// These units' `c` (LSTM) or `h` (GRU) before the step `[batch, u]`.
    prev: Vec<T>,
    /// These units' `h` (and `c`) after the step `[batch, u]` (the RNN's stays in `xp`).
    h_new: Vec<T>,
    c_new: Vec<T>,
    /// Zoneout's probability `p` (evaluation's expectation), when on; for the LSTM also `d`, `p`
    /// in every place of `[batch, u]`, its keep weights of `c`.
    zone: Option<T>,
    d: Vec<T>,
}

/// What a step reads, shared by the threads stepping the shares.
struct Inputs<'a, T> {
    x: &'a [T],
    h: &'a [T],
    c: &'a [T],
    /// `[x h]` (LSTM, RNN) or empty (GRU).
    xh: &'a [T],
    order: Sweep,
}

impl<T: Float> InferenceStep<T> {
    /// Buffers for steps of `batch` rows of a `kind` cell with `input` features and `hidden`
    /// units. Fails if a size is zero.
    pub fn new(kind: CellKind, input: usize, hidden: usize, batch: usize) -> Result<Self> {
        if input == 0 || hidden == 0 || batch == 0 {
            return Err(crate::Error::invalid(
                "InferenceStep::new",
                format!("sizes must be positive (input {input}, hidden {hidden}, batch {batch})"),
            ));
        }
        Ok(InferenceStep {
            kind,
            input,
            hidden,
            batch,
            bufs: Buffers::new(kind, batch, 0..hidden, hidden),
            packed: None,
            helper: None,
            tuner: SplitTuner::new(),
            zoneout: None,
        })
    }

    /// Steps with zoneout's expectation, as a layer trained with zoneout probability `p`
    /// evaluates: `h_t = p h_{t-1} + (1 - p) h~_t` (and the LSTM's `c_t` likewise, before
    /// `h~_t = o * tanh(c_t)`); `p = 0` turns it off. Fails if `p` is not in [0, 1).
    ///
    /// ```
    /// use recur::nn::{Activation, CellKind, InferenceStep};
    /// let mut step = InferenceStep::<f64>::new(CellKind::Rnn(Activation::Tanh), 1, 1, 1)?;
    /// step.set_zoneout(0.25)?;
    /// let mut h = vec![0.5];
    /// step.step(&[0.0], &[0.0], None, &[0.0], &mut h, &mut [])?; // h~ = tanh(0) = 0
    /// assert_eq!(h, vec![0.125]);
    /// assert!(step.set_zoneout(1.0).is_err());
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn set_zoneout(&mut self, p: f64) -> Result<()> {
        if !(0.0..1.0).contains(&p) {
            return Err(crate::Error::invalid(
                "InferenceStep::set_zoneout",
                format!("zoneout must be in [0, 1), got {p}"),
            ));
        }
        self.zoneout = (p > 0.0).then(|| T::from_f64(p));
        let zone = self.zoneout;
        self.bufs.set_zone(zone);
        if let Some(packed) = self.packed.as_mut() {
            for s in &mut packed.shares {
                s.bufs.set_zone(zone);
            }
        }
        Ok(())
    }

    /// Advances `h` (and for the LSTM `c`; ignored otherwise) `[batch, hidden]` by one step
    /// on `x` `[batch, input]`, with weights in PyTorch's layout (`w_ih` `[G*H, I]`, `w_hh`
    /// `[G*H, H]`, biases `[G*H]`). Fails, changing nothing, if a slice has the wrong length.
    pub fn step(
        &mut self,
        w_ih: &[T],
        w_hh: &[T],
        bias: Option<(&[T], &[T])>,
        x: &[T],
        h: &mut [T],
        c: &mut [T],
    ) -> Result<()> {
        self.check_weights("InferenceStep::step", w_ih, w_hh, bias)?;
        self.check_state("InferenceStep::step", x, h, c)?;
        let (kind, i, hidden, b) = (self.kind, self.input, self.hidden, self.batch);
        let gh = kind.gates() * hidden;
        let all = 0..hidden;
        self.bufs
            .advance(kind, all.clone(), hidden, bias, h, c, |xp, hp| {
                gemm_nt_acc(b, gh, i, x, w_ih, xp);
                gemm_nt_acc(b, gh, hidden, h, w_hh, hp.unwrap_or(xp));
            });
        self.bufs.store(kind, all, hidden, h, c);
        Ok(())
    }

    /// Packs the weights (PyTorch's layout, as for [`InferenceStep::step`]) for
    /// [`InferenceStep::step_packed`]; call it again whenever they change. Fails, keeping the
    /// previous packing, if a slice has the wrong length.
    ///
    /// Weights of 256 KiB or more are packed in two shares of the units, each with its own rows
    /// of every gate, for [`InferenceStep::with_threads`] to step on two threads.
    pub fn pack_weights(
        &mut self,
        w_ih: &[T],
        w_hh: &[T],
        bias: Option<(&[T], &[T])>,
    ) -> Result<()> {
        self.check_weights("InferenceStep::pack_weights", w_ih, w_hh, bias)?;
        let (i, hidden) = (self.input, self.hidden);
        let bytes = (i + hidden) * self.kind.gates() * hidden * std::mem::size_of::<T>();
        // Two shares of whole SIMD vectors of units where there are enough.
        let cut = (hidden / 2).next_multiple_of(T::LANES);
        let split = bytes >= SPLIT_BYTES && cut < hidden;
        self.pack_shares(w_ih, w_hh, bias, if split { cut } else { hidden });
        Ok(())
    }

    /// Packs units `..cut` in one share and `cut..` (if any) in another.
    fn pack_shares(&mut self, w_ih: &[T], w_hh: &[T], bias: Option<(&[T], &[T])>, cut: usize) {
        let (kind, i, hidden, b) = (self.kind, self.input, self.hidden, self.batch);
        let mut p = self.packed.take().unwrap_or_else(|| Packed {
            shares: Vec::new(),
            order: Sweep::Ascending,
            xh: Vec::new(),
        });
        let ranges = [0..cut, cut..hidden];
        let ranges = ranges.iter().filter(|r| !r.is_empty());
        p.shares = ranges
            .map(|units| Share::pack(kind, i, hidden, b, units.clone(), w_ih, w_hh, bias))
            .collect();
        if kind != CellKind::Gru {
            p.xh.resize(b * (i + hidden), T::ZERO);
        }
        for s in &mut p.shares {
            s.bufs.set_zone(self.zoneout);
        }
        self.packed = Some(p);
    }

    /// [`InferenceStep::step`] over the weights given to [`InferenceStep::pack_weights`]. Fails,
    /// changing nothing, if no weights were packed or a slice has the wrong length.
    pub fn step_packed(&mut self, x: &[T], h: &mut [T], c: &mut [T]) -> Result<()> {
        const OP: &str = "InferenceStep::step_packed";
        self.check_state(OP, x, h, c)?;
        let Some(p) = self.packed.as_mut() else {
            return Err(crate::Error::invalid(
                OP,
                "no packed weights: call pack_weights first",
            ));
        };
        let (kind, i, hidden) = (self.kind, self.input, self.hidden);
        if kind != CellKind::Gru {
            for ((row, x), h) in
                p.xh.chunks_exact_mut(i + hidden)
                    .zip(x.chunks_exact(i))
                    .zip(h.chunks_exact(hidden))
            {
                row[..i].copy_from_slice(x);
                row[i..].copy_from_slice(h);
            }
        }
        let order = p.order;
        // With a helper, the tuner says whether this step splits and times it now and then;
        // until the helper's thread has started, steps split untimed (each join then runs
        // both shares here), so that a trial does not time a helper still waking up.
        let helper = self.helper.as_ref().filter(|_| p.shares.len() == 2);
        let tuned = helper.is_some_and(|h| h.is_serving());
        let (split, timed) = match helper {
            Some(_) if tuned => self.tuner.next(),
            Some(_) => (true, false),
            None => (false, false),
        };
        let started = timed.then(Instant::now);
        let inputs = Inputs {
            x,
            h,
            c,
            xh: &p.xh,
            order,
        };
        match (helper.filter(|_| split), &mut p.shares[..]) {
            (Some(helper), [first, second]) => helper.join(
                || first.advance(kind, hidden, &inputs),
                || second.advance(kind, hidden, &inputs),
            ),
            // In turn, in the order of the panels, so that the weights read last by one step
            // are read first by the next.
            (_, shares) if order == Sweep::Ascending => shares
                .iter_mut()
                .for_each(|s| s.advance(kind, hidden, &inputs)),
            (_, shares) => shares
                .iter_mut()
                .rev()
                .for_each(|s| s.advance(kind, hidden, &inputs)),
        }
        for s in &p.shares {
            s.bufs.store(kind, s.units.clone(), hidden, h, c);
        }
        p.order = order.reversed();
        if tuned {
            self.tuner.record(started.map(|t| t.elapsed()));
        }
        Ok(())
    }

    /// Runs `f` (which steps this cell, say sampling a sequence) with a second thread of the
    /// current rayon pool stepping one of the two shares of the units that
    /// [`InferenceStep::pack_weights`] packs large weights in: each thread then reads half of
    /// the weights, from its own core's cache. The second thread spins between steps for as
    /// long as `f` runs. With one share, or on a pool of one thread, this is `f(self)`. The
    /// values are the same either way, bit for bit.
    ///
    /// How much the second thread saves depends on how fast the two cores hand data to each
    /// other, which on a shared virtual machine changes from minute to minute: now and then
    /// (the last 16 of the first 64 steps, then of periods of 256, 1024 and then 4096 steps)
    /// steps run both ways, timed, and the faster way is kept until the next such trial.
    ///
    /// ```
    /// use recur::nn::{CellKind, InferenceStep};
    /// let (i, h) = (64, 256);
    /// let (w_ih, w_hh) = (vec![0.01f32; 4 * h * i], vec![0.01f32; 4 * h * h]);
    /// let mut step = InferenceStep::new(CellKind::Lstm, i, h, 1)?;
    /// step.pack_weights(&w_ih, &w_hh, None)?;
    /// let (x, mut hs, mut cs) = (vec![1.0f32; i], vec![0.0f32; h], vec![0.0f32; h]);
    /// let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    /// pool.install(|| {
    ///     step.with_threads(|step| {
    ///         for _ in 0..10 {
    ///             step.step_packed(&x, &mut hs, &mut cs)?;
    ///         }
    ///         Ok::<(), recur::Error>(())
    ///     })
    /// })?;
    /// assert!(hs.iter().all(|&v| v > 0.0 && v < 1.0));
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn with_threads<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        Self::with_threads_all(std::slice::from_mut(self), |steps| f(&mut steps[0]))
    }

    /// [`InferenceStep::with_threads`] for several steps at once, as the layers of a stack
    /// step one after another: one helper thread takes one share of each packed step of any of
    /// `steps` that has two (each keeps its own choice of splitting or not), for as long as `f`
    /// runs. The values are the same as on one thread, bit for bit.
    ///
    /// ```
    /// use recur::nn::{CellKind, InferenceStep};
    /// let (i, h) = (64, 256);
    /// let (w_ih, w_hh) = (vec![0.01f32; 4 * h * i], vec![0.01f32; 4 * h * h]);
    /// let (w_ih2, w_hh2) = (vec![0.01f32; 4 * h * h], vec![0.01f32; 4 * h * h]);
    /// let mut steps = vec![InferenceStep::new(CellKind::Lstm, i, h, 1)?];
    /// steps.push(InferenceStep::new(CellKind::Lstm, h, h, 1)?);
    /// steps[0].pack_weights(&w_ih, &w_hh, None)?;
    /// steps[1].pack_weights(&w_ih2, &w_hh2, None)?;
    /// let mut hs = vec![vec![0.0f32; h]; 2];
    /// let mut cs = vec![vec![0.0f32; h]; 2];
    /// InferenceStep::with_threads_all(&mut steps, |steps| {
    ///     let mut x = vec![1.0f32; i];
    ///     for (l, step) in steps.iter_mut().enumerate() {
    ///         step.step_packed(&x, &mut hs[l], &mut cs[l])?;
    ///         x.clone_from(&hs[l]);
    ///     }
    ///     Ok::<(), recur::Error>(())
    /// })?;
    /// assert!(hs[1].iter().all(|&v| v > 0.0 && v < 1.0));
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn with_threads_all<R: Send>(
        steps: &mut [Self],
        f: impl FnOnce(&mut [Self]) -> R + Send,
    ) -> R {
        let two_shares = |s: &Self| s.packed.as_ref().is_some_and(|p| p.shares.len() == 2);
        let any = steps.iter().any(two_shares);
        if !any || !crate::threads::parallel() || steps.iter().any(|s| s.helper.is_some()) {
            return f(steps);
        }
        let helper = Arc::new(Helper::new());
        for s in steps.iter_mut().filter(|s| two_shares(s)) {
            s.helper = Some(Arc::clone(&helper));
            // The cores may not be those of the last time: try both ways again first.
            s.tuner = SplitTuner::new();
        }
        let r = serve_during(&helper, || f(&mut *steps));
        for s in steps.iter_mut() {
            s.helper = None;
        }
        r
    }

    fn check_weights(
        &self,
        op: &'static str,
        w_ih: &[T],
        w_hh: &[T],
        bias: Option<(&[T], &[T])>,
    ) -> Result<()> {
        let gh = self.kind.gates() * self.hidden;
        check_lengths(
            op,
            &[
                ("w_ih", w_ih.len(), gh * self.input),
                ("w_hh", w_hh.len(), gh * self.hidden),
                ("b_ih", bias.map_or(gh, |b| b.0.len()), gh),
                ("b_hh", bias.map_or(gh, |b| b.1.len()), gh),
            ],
        )
    }

    fn check_state(&self, op: &'static str, x: &[T], h: &[T], c: &[T]) -> Result<()> {
        let (b, hidden) = (self.batch, self.hidden);
        let c_len = if self.kind == CellKind::Lstm {
            c.len()
        } else {
            b * hidden
        };
        check_lengths(
            op,
            &[
                ("x", x.len(), b * self.input),
                ("h", h.len(), b * hidden),
                ("c", c_len, b * hidden),
            ],
        )
    }
}

impl<T: Float> Share<T> {
    /// Packs units `units` of every gate of weights in PyTorch's layout.
    #[allow(clippy::too_many_arguments)]
    fn pack<'a>(
        kind: CellKind,
        input: usize,
        hidden: usize,
        batch: usize,
        units: Range<usize>,
        w_ih: &'a [T],
        w_hh: &'a [T],
        bias: Option<(&'a [T], &'a [T])>,
    ) -> Self {
        let gu = kind.gates() * units.len();
        // The rows of `w` (`[G*H, k]`) of these units, gate by gate: all of `w` for all units.
        let rows = |w: &'a [T], k: usize| -> Cow<'a, [T]> {
            if units.len() == hidden {
                return Cow::Borrowed(w);
            }
            let cols = units.start * k..units.end * k;
            w.chunks_exact(hidden * k)
                .flat_map(|gate| &gate[cols.clone()])
                .copied()
                .collect()
        };
        let (mut w_t, mut w_hh_t) = (PackedB::new(), PackedB::new());
        let (ih, hh) = (rows(w_ih, input), rows(w_hh, hidden));
        if kind == CellKind::Gru {
            w_t.pack_transposed(&ih, gu, input);
            w_hh_t.pack_transposed(&hh, gu, hidden);
        } else {
            w_t.pack_transposed_stacked(&[(&ih, input), (&hh, hidden)], gu);
        }
        Share {
            bias: bias.map(|(b_ih, b_hh)| (rows(b_ih, 1).into_owned(), rows(b_hh, 1).into_owned())),
            bufs: Buffers::new(kind, batch, units.clone(), hidden),
            units,
            w_t,
            w_hh_t,
        }
    }

    /// This share's part of a step, into its buffers.
    fn advance(&mut self, kind: CellKind, hidden: usize, inp: &Inputs<'_, T>) {
        let bias = self.bias.as_ref().map(|(i, h)| (&i[..], &h[..]));
        let (w_t, w_hh_t, order) = (&self.w_t, &self.w_hh_t, inp.order);
        let product = |w: &PackedB<T>, a: &[T], out: &mut [T]| {
            let mut rows = [Rows {
                m: a.len() / w.k(),
                a,
                storage: AStorage::RowMajor,
                c: out,
                bias: None,
            }];
            gemm_packed_acc_cols(&mut rows, w, 0..w.n(), w.n(), order);
        };
        let (x, h) = (inp.x, inp.h);
        self.bufs.advance(
            kind,
            self.units.clone(),
            hidden,
            bias,
            h,
            inp.c,
            |xp, hp| {
                match hp {
                    // The GRU's products write apart, so their order changes no value: the
                    // second product of one step is the first of the next.
                    Some(hp) if order == Sweep::Ascending => {
                        product(w_t, x, xp);
                        product(w_hh_t, h, hp);
                    }
                    Some(hp) => {
                        product(w_hh_t, h, hp);
                        product(w_t, x, xp);
                    }
                    None => product(w_t, inp.xh, xp),
                }
            },
        );
    }
}

impl<T: Float> Buffers<T> {
    /// Buffers for units `units` of `hidden`: the state before the step needs a buffer of its
    /// own only for a part of the units ([`columns`]).
    fn new(kind: CellKind, batch: usize, units: Range<usize>, hidden: usize) -> Self {
        let gu = batch * kind.gates() * units.len();
        let bu = batch * units.len();
        let part = units.len() < hidden;
        let (gru, lstm) = (kind == CellKind::Gru, kind == CellKind::Lstm);
        let zeros = |n: usize, keep: bool| vec![T::ZERO; if keep { n } else { 0 }];
        Buffers {
            xp: zeros(gu, true),
            hp: zeros(gu, gru),
            saved: zeros(4 * bu, gru),
            prev: zeros(bu, part && (gru || lstm)),
            h_new: zeros(bu, gru || lstm),
            c_new: zeros(bu, lstm),
            zone: None,
            d: Vec::new(),
        }
    }

    /// Turns zoneout's expectation on (`Some(p)`) or off.
    fn set_zone(&mut self, zone: Option<T>) {
        self.zone = zone;
        self.d = match zone {
            Some(p) if !self.c_new.is_empty() => vec![p; self.c_new.len()],
            _ => Vec::new(),
        };
    }

    /// Units `units` of a step from `h` and `c` (`[batch, hidden]`), with the two products
    /// done by `products` onto the pre-activations (`xp` and, for the GRU, `hp`, which start
    /// from the biases): the new values stay here for [`Buffers::store`].
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &mut self,
        kind: CellKind,
        units: Range<usize>,
        hidden: usize,
        bias: Option<(&[T], &[T])>,
        h: &[T],
        c: &[T],
        products: impl FnOnce(&mut [T], Option<&mut [T]>),
    ) {
        let u = units.len();
        init_input_projection(&mut self.xp, bias, kind);
        let gather = |dst, src| columns(dst, src, units.clone(), hidden);
        match kind {
            CellKind::Lstm => {
                products(&mut self.xp, None);
                let c_prev = gather(&mut self.prev, c);
                if self.zone.is_some() {
                    let (c, h) = (&mut self.c_new, &mut self.h_new);
                    lstm::lstm_forward_zoneout(&mut self.xp, c_prev, &self.d, c, h, u);
                } else {
                    lstm::lstm_forward(&mut self.xp, c_prev, &mut self.c_new, &mut self.h_new, u);
                }
            }
            CellKind::Gru => {
                fill_rows(&mut self.hp, bias.map(|(_, b_hh)| b_hh));
                products(&mut self.xp, Some(&mut self.hp));
                let h_prev = gather(&mut self.prev, h);
                gru::gru_forward(
                    &self.xp,
                    None,
                    &self.hp,
                    h_prev,
                    &mut self.h_new,
                    &mut self.saved,
                    u,
                );
            }
            CellKind::Rnn(act) => {
                products(&mut self.xp, None);
                rnn::rnn_forward(&mut self.xp, act);
            }
        }
    }

    /// Writes the new values of units `units` into `h` (and `c`).
    fn store(&self, kind: CellKind, units: Range<usize>, hidden: usize, h: &mut [T], c: &mut [T]) {
        let u = units.len();
        let scatter = |dst: &mut [T], src: &[T]| {
            for (row, s) in dst.chunks_exact_mut(hidden).zip(src.chunks_exact(u)) {
                row[units.clone()].copy_from_slice(s);
            }
        };
        // Zoneout's expectation: h_t = (1 - p) h~_t + p h_{t-1} (`h` still holds h_{t-1}).
        let scatter_h = |dst: &mut [T], src: &[T]| match self.zone {
            Some(p) => {
                for (row, s) in dst.chunks_exact_mut(hidden).zip(src.chunks_exact(u)) {
                    for (hv, &nv) in row[units.clone()].iter_mut().zip(s) {
                        *hv = (T::ONE - p) * nv + p * *hv;
                    }
                }
            }
            None => scatter(dst, src),
        };
        match kind {
            CellKind::Lstm => {
                scatter_h(h, &self.h_new);
                scatter(c, &self.c_new);
            }
            CellKind::Gru => scatter_h(h, &self.h_new),
            CellKind::Rnn(_) => scatter_h(h, &self.xp),
        }
    }
}

/// Columns `units` of the rows of `src` (`[rows, hidden]`), copied into `dst`; `src` itself when
/// they are all of its columns.
fn columns<'a, T: Copy>(
    dst: &'a mut [T],
    src: &'a [T],
    units: Range<usize>,
    hidden: usize,
) -> &'a [T] {
    if units.len() == hidden {
        return src;
    }
    for (d, row) in dst
        .chunks_exact_mut(units.len())
        .zip(src.chunks_exact(hidden))
    {
        d.copy_from_slice(&row[units.clone()]);
    }
    dst
}

/// Fails naming the first `(name, got, want)` whose lengths differ.
fn check_lengths(op: &'static str, checks: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, got, want) in checks {
        if got != want {
            return Err(crate::Error::invalid(
                op,
                format!("{name} has {got} values, expected {want}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use crate::nn::Activation;

    const KINDS: [CellKind; 3] = [
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::Rnn(Activation::Tanh),
    ];

    fn uniform(n: usize, scale: f64, rng: &mut Rng) -> Vec<f32> {
        (0..n)
            .map(|_| rng.uniform_range(-scale, scale) as f32)
            .collect()
    }

    /// Random weights and biases of a cell, and the inputs of `steps` steps.
    struct Case {
        w_ih: Vec<f32>,
        w_hh: Vec<f32>,
        b: (Vec<f32>, Vec<f32>),
        xs: Vec<Vec<f32>>,
    }

    fn case(kind: CellKind, i: usize, h: usize, batch: usize, steps: usize) -> Case {
        let mut rng = Rng::new(11);
        let gh = kind.gates() * h;
        let s = 1.0 / (h as f64).sqrt();
        Case {
            w_ih: uniform(gh * i, s, &mut rng),
            w_hh: uniform(gh * h, s, &mut rng),
            b: (uniform(gh, s, &mut rng), uniform(gh, s, &mut rng)),
            xs: (0..steps)
                .map(|_| uniform(batch * i, 1.0, &mut rng))
                .collect(),
        }
    }

    /// `h` and `c` after every step, packed with the units cut at `cut`, stepped inside
    /// `with_threads` on a pool of `threads`.
    fn run(
        kind: CellKind,
        (i, h, batch): (usize, usize, usize),
        c: &Case,
        bias: bool,
        cut: usize,
        threads: usize,
    ) -> Vec<Vec<f32>> {
        let mut step = InferenceStep::new(kind, i, h, batch).unwrap();
        let b = bias.then_some((&c.b.0[..], &c.b.1[..]));
        step.pack_shares(&c.w_ih, &c.w_hh, b, cut);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (mut hs, mut cs) = (vec![0.1f32; batch * h], vec![-0.2f32; batch * h]);
        pool.install(|| {
            step.with_threads(|step| {
                // The helper's thread up first, so that the steps do split.
                while step.helper.as_ref().is_some_and(|h| !h.is_serving()) {
                    std::thread::yield_now();
                }
                c.xs.iter()
                    .map(|x| {
                        step.step_packed(x, &mut hs, &mut cs).unwrap();
                        [&hs[..], &cs[..]].concat()
                    })
                    .collect()
            })
        })
    }

    #[test]
    fn shares_of_the_units_step_as_one_bit_for_bit_on_one_thread_or_two() {
        // 37 units cut at 16: a share of whole vectors and one with a tail; batches of one
        // row (the latency case) and of three.
        for (kind, bias, batch) in KINDS
            .into_iter()
            .flat_map(|k| [(k, true, 1), (k, false, 1), (k, true, 3)])
        {
            let dims = (5, 37, batch);
            // On two threads every one of these steps splits: the tuner's first trial of one
            // thread against two comes at step 48.
            let c = case(kind, 5, 37, batch, 20);
            let whole = run(kind, dims, &c, bias, 37, 1);
            for threads in [1, 2] {
                assert_eq!(
                    run(kind, dims, &c, bias, 16, threads),
                    whole,
                    "{kind:?} bias {bias} batch {batch}, {threads} threads"
                );
            }
            // And the unpacked step agrees to rounding.
            let mut step = InferenceStep::new(kind, 5, 37, batch).unwrap();
            let (mut hs, mut cs) = (vec![0.1f32; batch * 37], vec![-0.2f32; batch * 37]);
            for (x, want) in c.xs.iter().zip(&whole) {
                let b = bias.then_some((&c.b.0[..], &c.b.1[..]));
                step.step(&c.w_ih, &c.w_hh, b, x, &mut hs, &mut cs).unwrap();
                for (a, e) in [&hs[..], &cs[..]].concat().iter().zip(want) {
                    assert!((a - e).abs() < 1e-5, "{kind:?}: {a} vs {e}");
                }
            }
        }
    }

    #[test]
    fn large_weights_are_packed_in_two_shares_and_small_in_one() {
        for (kind, h, shares) in [
            (CellKind::Lstm, 256, 2),
            (CellKind::Gru, 256, 2),
            (CellKind::Rnn(Activation::Tanh), 256, 2),
            (CellKind::Rnn(Activation::Tanh), 128, 1),
        ] {
            let c = case(kind, 64, h, 1, 0);
            let mut step = InferenceStep::new(kind, 64, h, 1).unwrap();
            step.pack_weights(&c.w_ih, &c.w_hh, None).unwrap();
            let p = step.packed.as_ref().unwrap();
            assert_eq!(p.shares.len(), shares, "{kind:?} H={h}");
            assert_eq!(p.shares.last().unwrap().units.end, h);
        }
    }
}
