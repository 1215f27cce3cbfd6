//! One direction of one recurrent layer: the contract that every implementation of the
//! recurrence shares. [`super::recurrent`] builds a [`DirectionRun`] for each layer and
//! direction and hands it to the fused kernels ([`super::fused`]) or to the reference built
//! from tape ops ([`super::reference`]); the single-step paths ([`super::cell`],
//! [`super::inference`]) use the same [`CellKind`] and [`DirectionParams`].

use super::regularize::DirectionMasks;
use crate::Result;
use crate::kernels::rnn::Activation;
use crate::params::ParamId;
use crate::params::ParamStore;
use crate::tape::{Tape, Var};
use crate::tensor::Float;

/// Which recurrent cell a layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// Vanilla RNN, `h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)` with tanh or relu.
    Rnn(Activation),
    /// LSTM with gates in PyTorch's order i, f, g, o.
    Lstm,
    /// GRU with gates r, z, n and the reset gate applied after the hidden product.
    Gru,
}

impl CellKind {
    /// Number of gate blocks `G` in `weight_ih` (`[G*H, I]`): 1, 4 or 3.
    pub fn gates(self) -> usize {
        match self {
            CellKind::Rnn(_) => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// Whether the cell carries a cell state `c` besides `h`.
    pub fn has_cell_state(self) -> bool {
        self == CellKind::Lstm
    }

    /// The cell's name, the same in files, in the library and on the command line: `rnn`,
    /// `rnn-relu`, `lstm`, `gru`.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Rnn(Activation::Tanh) => "rnn",
            CellKind::Rnn(Activation::Relu) => "rnn-relu",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }

    /// The kind named `name` (see [`CellKind::name`]); `rnn_relu`, the spelling of earlier
    /// files, is read too.
    ///
    /// ```
    /// use recur::nn::CellKind;
    /// for kind in [CellKind::Lstm, CellKind::Gru, CellKind::Rnn(recur::nn::Activation::Relu)] {
    ///     assert_eq!(CellKind::from_name(kind.name()), Some(kind));
    /// }
    /// assert_eq!(CellKind::from_name("transformer"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<CellKind> {
        Some(match name {
            "rnn" => CellKind::Rnn(Activation::Tanh),
            "rnn-relu" | "rnn_relu" => CellKind::Rnn(Activation::Relu),
            "lstm" => CellKind::Lstm,
            "gru" => CellKind::Gru,
            _ => return None,
        })
    }
}

/// The parameters of one direction of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectionParams {
    /// `weight_ih_l{k}[_reverse]`: `[G*H, in]`.
    pub w_ih: ParamId,
    /// `weight_hh_l{k}[_reverse]`: `[G*H, H]`.
    pub w_hh: ParamId,
    /// `bias_ih_l{k}[_reverse]`: `[G*H]`, when the layer has biases.
    pub b_ih: Option<ParamId>,
    /// `bias_hh_l{k}[_reverse]`: `[G*H]`.
    pub b_hh: Option<ParamId>,
    /// `weight_hr_l{k}[_reverse]`: `[P, H]`, the LSTM's projection of its hidden state to
    /// `proj_size` features (`h_t = W_hr (o_t * tanh(c_t))`), when the layer has one. `W_hh` is
    /// then `[4H, P]`.
    pub w_hr: Option<ParamId>,
    /// The layer normalization's gains and bias, when the layer has them (see
    /// [`RecurrentConfig::layer_norm`](super::RecurrentConfig::layer_norm)).
    pub ln: Option<LayerNormParams>,
}

/// The parameters of a layer-normalized direction (see
/// [`RecurrentConfig::layer_norm`](super::RecurrentConfig::layer_norm)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNormParams {
    /// `ln_ih_weight_l{k}[_reverse]`: `γ_x` `[G*H]`, the gain of `LN(W_ih x_t)`.
    pub gamma_ih: ParamId,
    /// `ln_hh_weight_l{k}[_reverse]`: `γ_h` `[G*H]`, the gain of `LN(W_hh h_{t-1})`.
    pub gamma_hh: ParamId,
    /// LSTM: `ln_c_weight_l{k}[_reverse]` and `ln_c_bias_l{k}[_reverse]`: `γ_c` and `β_c`
    /// `[H]`, of `LN(c_t)` in `h_t = o * tanh(LN(c_t))`.
    pub cell: Option<(ParamId, ParamId)>,
}

impl DirectionParams {
    /// The parameters as tape variables (see [`Tape::param`]).
    pub(crate) fn vars<T: Float>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
    ) -> Result<StepWeights> {
        Ok(StepWeights {
            w_ih: tape.param(store, self.w_ih)?,
            w_hh: tape.param(store, self.w_hh)?,
            b_ih: self.b_ih.map(|id| tape.param(store, id)).transpose()?,
            b_hh: self.b_hh.map(|id| tape.param(store, id)).transpose()?,
            w_hr: self.w_hr.map(|id| tape.param(store, id)).transpose()?,
            ln: self
                .ln
                .map(|ln| -> Result<LayerNormVars> {
                    Ok(LayerNormVars {
                        gamma_ih: tape.param(store, ln.gamma_ih)?,
                        gamma_hh: tape.param(store, ln.gamma_hh)?,
                        cell: match ln.cell {
                            Some((g, b)) => Some((tape.param(store, g)?, tape.param(store, b)?)),
                            None => None,
                        },
                    })
                })
                .transpose()?,
        })
    }
}

/// The weights of one layer and direction, as tape variables.
pub(crate) struct StepWeights {
    pub(crate) w_ih: Var,
    pub(crate) w_hh: Var,
    pub(crate) b_ih: Option<Var>,
    pub(crate) b_hh: Option<Var>,
    /// The LSTM's projection `W_hr` `[P, H]`, when the layer has one.
    pub(crate) w_hr: Option<Var>,
    /// The layer normalization's parameters, when the layer has them.
    pub(crate) ln: Option<LayerNormVars>,
}

/// [`LayerNormParams`] as tape variables.
#[derive(Clone, Copy)]
pub(crate) struct LayerNormVars {
    pub(crate) gamma_ih: Var,
    pub(crate) gamma_hh: Var,
    /// LSTM: `γ_c`, `β_c`.
    pub(crate) cell: Option<(Var, Var)>,
}

/// One direction of one layer, as the implementations see it: the cell, its parameters, its
/// direction, the sequences' lengths and its inputs `x` `[T, B, I]`, `h0` `[B, H]` (`[B, P]`
/// with a projection) and (LSTM) `c0` `[B, H]`.
pub(crate) struct DirectionRun<'a> {
    pub(crate) kind: CellKind,
    pub(crate) params: DirectionParams,
    pub(crate) reverse: bool,
    pub(crate) lengths: Option<&'a [usize]>,
    pub(crate) x: Var,
    pub(crate) h0: Var,
    pub(crate) c0: Option<Var>,
    /// The regularizers' masks (none off training, but zoneout's expectation).
    pub(crate) masks: DirectionMasks,
}

impl DirectionRun<'_> {
    /// The weights as the recurrence reads them: the parameters, with `W_hh` masked when
    /// weight drop is on.
    pub(crate) fn weights<T: Float>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
    ) -> Result<StepWeights> {
        let mut w = self.params.vars(tape, store)?;
        if let Some(masked) = self.masks.w_hh {
            w.w_hh = masked;
        }
        Ok(w)
    }

    /// Whether batch entry `b` is inside its sequence at time `t`.
    pub(crate) fn active(&self, t: usize, b: usize) -> bool {
        is_active(self.lengths, t, b)
    }

    /// The time index of processing step `s` out of `t_len`.
    pub(crate) fn time(&self, s: usize, t_len: usize) -> usize {
        step_time(self.reverse, s, t_len)
    }
}

/// Whether batch entry `b` is inside its sequence at time `t` (every entry is, without
/// lengths): past its length a sequence's state is frozen and its output is zero.
pub(crate) fn is_active(lengths: Option<&[usize]>, t: usize, b: usize) -> bool {
    lengths.is_none_or(|l| t < l[b])
}

/// The time index of processing step `s` out of `t_len`: `s`, or `t_len - 1 - s` for the
/// reverse direction.
pub(crate) fn step_time(reverse: bool, s: usize, t_len: usize) -> usize {
    if reverse { t_len - 1 - s } else { s }
}

/// The outputs of one direction: `y` `[T, B, H]`, `h_n` and `c_n` `[B, H]` (with a
/// projection, `y` and `h_n` have `P` features).
pub(crate) struct DirectionOutput {
    pub(crate) y: Var,
    pub(crate) h_n: Var,
    pub(crate) c_n: Option<Var>,
}
