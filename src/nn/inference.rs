//! One step of a cell at a time, outside the tape: for sampling from a trained model one symbol
//! at a time.

use super::fused::{fill_rows, init_input_projection};
use super::recurrent::CellKind;
use crate::Result;
use crate::kernels::gemm_nn::{PackedB, gemm_packed_acc};
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
    /// `W_ih^T` `[I, G*H]` and `W_hh^T` `[H, G*H]`.
    w_ih_t: PackedB<T>,
    w_hh_t: PackedB<T>,
    /// The biases, when the cell has them.
    bias: Option<(Vec<T>, Vec<T>)>,
}

/// Which weight a product reads.
#[derive(Clone, Copy)]
enum Weight {
    Ih,
    Hh,
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
        self.advance(bias, x, h, c, |which, a, out| match which {
            Weight::Ih => gemm_nt_acc(b, gh, i, a, w_ih, out),
            Weight::Hh => gemm_nt_acc(b, gh, hd, a, w_hh, out),
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
        let gh = self.kind.gates() * self.hidden;
        let mut p = self.packed.take().unwrap_or_else(|| Packed {
            w_ih_t: PackedB::new(),
            w_hh_t: PackedB::new(),
            bias: None,
        });
        p.w_ih_t.pack_transposed(w_ih, gh, self.input);
        p.w_hh_t.pack_transposed(w_hh, gh, self.hidden);
        p.bias = bias.map(|(b_ih, b_hh)| (b_ih.to_vec(), b_hh.to_vec()));
        self.packed = Some(p);
        Ok(())
    }

    /// [`InferenceStep::step`] over the weights given to [`InferenceStep::pack_weights`]. Fails,
    /// changing nothing, if no weights were packed or a slice has the wrong length.
    pub fn step_packed(&mut self, x: &[T], h: &mut [T], c: &mut [T]) -> Result<()> {
        const OP: &str = "InferenceStep::step_packed";
        self.check_state(OP, x, h, c)?;
        let Some(p) = self.packed.take() else {
            return Err(crate::Error::invalid(
                OP,
                "no packed weights: call pack_weights first",
            ));
        };
        let b = self.batch;
        let bias = p.bias.as_ref().map(|(i, h)| (&i[..], &h[..]));
        self.advance(bias, x, h, c, |which, a, out| match which {
            Weight::Ih => gemm_packed_acc(b, a, &p.w_ih_t, out),
            Weight::Hh => gemm_packed_acc(b, a, &p.w_hh_t, out),
        });
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

    /// The step itself, with the two products `out += a W^T` done by `product`.
    fn advance(
        &mut self,
        bias: Option<(&[T], &[T])>,
        x: &[T],
        h: &mut [T],
        c: &mut [T],
        product: impl Fn(Weight, &[T], &mut [T]),
    ) {
        let hd = self.hidden;
        init_input_projection(&mut self.xp, bias, self.kind);
        product(Weight::Ih, x, &mut self.xp);
        match self.kind {
            CellKind::Lstm => {
                product(Weight::Hh, h, &mut self.xp);
                lstm::lstm_forward(&mut self.xp, c, &mut self.c_new, &mut self.h_new, hd);
                c.copy_from_slice(&self.c_new);
            }
            CellKind::Gru => {
                fill_rows(&mut self.hp, bias.map(|(_, b_hh)| b_hh));
                product(Weight::Hh, h, &mut self.hp);
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
                product(Weight::Hh, h, &mut self.xp);
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
