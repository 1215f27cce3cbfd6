//! One step of a cell at a time, outside the tape: for sampling from a trained model one symbol
//! at a time.

use super::fused::{fill_rows, init_input_projection};
use super::recurrent::CellKind;
use crate::Result;
use crate::kernels::Sweep;
use crate::kernels::gemm_nn::{PackedB, Rows, gemm_packed_acc_cols};
use crate::kernels::gemm_nt::gemm_nt_acc;
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
    xp: Vec<T>,
    hp: Vec<T>,
    saved: Vec<T>,
    h_new: Vec<T>,
    c_new: Vec<T>,
    packed: Option<Packed<T>>,
}

/// Weights packed by [`InferenceStep::pack_weights`].
struct Packed<T> {
    /// The LSTM's and the RNN's `[W_ih^T; W_hh^T]` `[I + H, G*H]`, one product over `[x h]`
    /// (both products add onto the same pre-activations); the GRU's `W_ih^T` `[I, G*H]` (its
    /// `W_hh^T` is in `w_hh_t`).
    w_t: PackedB<T>,
    /// The GRU's `W_hh^T` `[H, G*H]` (whose product stays apart: `r` gates its `n` part).
    w_hh_t: PackedB<T>,
    /// The biases, when the cell has them.
    bias: Option<(Vec<T>, Vec<T>)>,
    /// The order of the next step's panels: each step reverses it, so that it starts on the
    /// weights the previous step read last, still in cache ([`Sweep`]).
    order: Sweep,
    /// `[x h]`, row by row, for the stacked product.
    xh: Vec<T>,
}

/// Where a step's two products go: `x W_ih^T` onto the input side's pre-activations, and
/// `h W_hh^T` onto the same ones (`hp` is `None`) or, for the GRU, onto `hp`.
type Products<'a, T> = (&'a [T], &'a [T], &'a mut [T], Option<&'a mut [T]>);

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
        let gh = kind.gates() * hidden;
        Ok(InferenceStep {
            kind,
            input,
            hidden,
            batch,
            xp: vec![T::ZERO; batch * gh],
            hp: vec![T::ZERO; batch * gh],
            saved: vec![T::ZERO; batch * 4 * hidden],
            h_new: vec![T::ZERO; batch * hidden],
            c_new: vec![T::ZERO; batch * hidden],
            packed: None,
        })
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
        let (i, hd, b) = (self.input, self.hidden, self.batch);
        let gh = self.kind.gates() * hd;
        self.advance(bias, x, h, c, |(x, h, xp, hp)| {
            gemm_nt_acc(b, gh, i, x, w_ih, xp);
            gemm_nt_acc(b, gh, hd, h, w_hh, hp.unwrap_or(xp));
        });
        Ok(())
    }

    /// Packs the weights (PyTorch's layout, as for [`InferenceStep::step`]) for
    /// [`InferenceStep::step_packed`]; call it again whenever they change. Fails, keeping the
    /// previous packing, if a slice has the wrong length.
    pub fn pack_weights(
        &mut self,
        w_ih: &[T],
        w_hh: &[T],
        bias: Option<(&[T], &[T])>,
    ) -> Result<()> {
        self.check_weights("InferenceStep::pack_weights", w_ih, w_hh, bias)?;
        let (i, hd) = (self.input, self.hidden);
        let gh = self.kind.gates() * hd;
        let mut p = self.packed.take().unwrap_or_else(|| Packed {
            w_t: PackedB::new(),
            w_hh_t: PackedB::new(),
            bias: None,
            order: Sweep::Ascending,
            xh: Vec::new(),
        });
        if self.kind == CellKind::Gru {
            p.w_t.pack_transposed(w_ih, gh, i);
            p.w_hh_t.pack_transposed(w_hh, gh, hd);
        } else {
            p.w_t.pack_transposed_stacked(&[(w_ih, i), (w_hh, hd)], gh);
            p.xh.resize(self.batch * (i + hd), T::ZERO);
        }
        p.bias = bias.map(|(b_ih, b_hh)| (b_ih.to_vec(), b_hh.to_vec()));
        self.packed = Some(p);
        Ok(())
    }

    /// [`InferenceStep::step`] over the weights given to [`InferenceStep::pack_weights`]. Fails,
    /// changing nothing, if no weights were packed or a slice has the wrong length.
    pub fn step_packed(&mut self, x: &[T], h: &mut [T], c: &mut [T]) -> Result<()> {
        const OP: &str = "InferenceStep::step_packed";
        self.check_state(OP, x, h, c)?;
        let Some(mut p) = self.packed.take() else {
            return Err(crate::Error::invalid(
                OP,
                "no packed weights: call pack_weights first",
            ));
        };
        let (b, i) = (self.batch, self.input);
        let order = p.order;
        let bias = p.bias.as_ref().map(|(i, h)| (&i[..], &h[..]));
        let product = |w: &PackedB<T>, a: &[T], out: &mut [T]| {
            let mut rows = [Rows {
                m: b,
                a,
                c: out,
                bias: None,
            }];
            gemm_packed_acc_cols(&mut rows, w, 0..w.n(), w.n(), order);
        };
        self.advance(bias, x, h, c, |(x, h, xp, hp)| match hp {
            // The GRU's products write apart, so their order changes no value: the second
            // product of one step is the first of the next.
            Some(hp) if order == Sweep::Ascending => {
                product(&p.w_t, x, xp);
                product(&p.w_hh_t, h, hp);
            }
            Some(hp) => {
                product(&p.w_hh_t, h, hp);
                product(&p.w_t, x, xp);
            }
            None => {
                let k = p.w_t.k();
                for ((row, x), h) in
                    p.xh.chunks_exact_mut(k)
                        .zip(x.chunks_exact(i))
                        .zip(h.chunks_exact(k - i))
                {
                    row[..i].copy_from_slice(x);
                    row[i..].copy_from_slice(h);
                }
                product(&p.w_t, &p.xh, xp);
            }
        });
        p.order = order.reversed();
        self.packed = Some(p);
        Ok(())
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
        let (b, hd) = (self.batch, self.hidden);
        let c_len = if self.kind == CellKind::Lstm {
            c.len()
        } else {
            b * hd
        };
        check_lengths(
            op,
            &[
                ("x", x.len(), b * self.input),
                ("h", h.len(), b * hd),
                ("c", c_len, b * hd),
            ],
        )
    }

    /// The step itself, with the two products done by `products` ([`Products`]).
    fn advance(
        &mut self,
        bias: Option<(&[T], &[T])>,
        x: &[T],
        h: &mut [T],
        c: &mut [T],
        products: impl FnOnce(Products<'_, T>),
    ) {
        let hd = self.hidden;
        init_input_projection(&mut self.xp, bias, self.kind);
        if self.kind == CellKind::Gru {
            fill_rows(&mut self.hp, bias.map(|(_, b_hh)| b_hh));
            products((x, h, &mut self.xp, Some(&mut self.hp)));
        } else {
            products((x, h, &mut self.xp, None));
        }
        match self.kind {
            CellKind::Lstm => {
                lstm::lstm_forward(&mut self.xp, c, &mut self.c_new, &mut self.h_new, hd);
                c.copy_from_slice(&self.c_new);
            }
            CellKind::Gru => {
                gru::gru_forward(
                    &self.xp,
                    None,
                    &self.hp,
                    h,
                    &mut self.h_new,
                    &mut self.saved,
                    hd,
                );
            }
            CellKind::Rnn(act) => {
                rnn::rnn_forward(&mut self.xp, act);
                self.h_new.copy_from_slice(&self.xp);
            }
        }
        h.copy_from_slice(&self.h_new);
    }
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
