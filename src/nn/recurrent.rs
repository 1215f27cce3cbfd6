//! The recurrent layers `Rnn`, `Lstm` and `Gru`: PyTorch's options, names and layouts, run
//! either by the fused kernels or by the reference built from primitive tape ops.

use std::ops::Deref;

use super::direction::{CellKind, DirectionParams, DirectionRun, LayerNormParams};
use super::inference::InferenceStep;
use super::init::uniform_tensor;
use super::regularize::StepMasks;
use super::{fused, reference};
use crate::kernels::rnn::Activation;
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Shape, Tensor};
use crate::{Error, Result};

/// Builder methods of a configuration: `field(value)` returns the configuration with `field`
/// set to `value`.
macro_rules! config_setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $field(mut self, $field: $ty) -> Self {
            self.$field = $field;
            self
        }
    )*};
}
pub(crate) use config_setters;

/// Options of a recurrent layer, as in PyTorch's `nn.RNN`, `nn.LSTM` and `nn.GRU`.
///
/// ```
/// use recur::nn::RecurrentConfig;
/// let cfg = RecurrentConfig::new(64, 128).num_layers(2).bidirectional(true).dropout(0.1);
/// assert_eq!(cfg.hidden_size, 128);
/// assert!(cfg.bias && !cfg.batch_first);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RecurrentConfig {
    /// Features per input step `I`.
    pub input_size: usize,
    /// Hidden units `H`.
    pub hidden_size: usize,
    /// Stacked layers `L` (default 1).
    pub num_layers: usize,
    /// Use `bias_ih` and `bias_hh` (default true).
    pub bias: bool,
    /// Inputs and outputs are `[B, T, F]` instead of `[T, B, F]` (default false).
    pub batch_first: bool,
    /// Dropout probability on the outputs of every layer but the last, in training (default 0).
    pub dropout: f64,
    /// Run a second direction over the reversed sequence (default false).
    pub bidirectional: bool,
    /// LSTM only: project each step's hidden state to `P = proj_size` features,
    /// `h_t = W_hr (o_t * tanh(c_t))` with `weight_hr_l{k}` `[P, H]`, as PyTorch's `proj_size`
    /// (default 0: no projection). The hidden state, `h0`, `h_n` and the outputs then have `P`
    /// features, `weight_hh_l{k}` is `[4H, P]`, and the cell state keeps `H`. Must be below
    /// `hidden_size`.
    pub proj_size: usize,
    /// Variational (recurrent) dropout probability `p` on the state entering the recurrent
    /// product, in training (default 0; Gal and Ghahramani, 2016): each layer, direction and
    /// sequence of the batch draws one mask `m` `[B, H]` per training step, `m = 0` with
    /// probability `p` and `1/(1-p)` otherwise, and every step of the sequence uses it:
    /// `W_hh h_{t-1}` becomes `W_hh (m * h_{t-1})` in the chapter's `h_t` (and in each LSTM and
    /// GRU gate); the rest of the cell (the GRU's `z * h_{t-1}`) reads `h_{t-1}` unmasked. Not
    /// with `proj_size`.
    pub recurrent_dropout: f64,
    /// Weight drop (DropConnect on `W_hh`, as in AWD-LSTM) probability `p`, in training
    /// (default 0): each training step masks every layer's and direction's `W_hh` once,
    /// `W_hh' = M * W_hh` with `M = 0` with probability `p` and `1/(1-p)` otherwise, and every
    /// time step of the sequence reads `W_hh'`; the gradient reaching `W_hh` is
    /// `M * dL/dW_hh'`.
    pub weight_drop: f64,
    /// Zoneout probability `p` on `h` (and the LSTM's `c`; Krueger et al., 2017), default 0.
    /// In training each unit keeps its previous value with probability `p`, one draw per unit,
    /// row and time step: `h_t = d_t * h_{t-1} + (1 - d_t) * h~_t` with `d_t` in {0, 1} and
    /// `h~_t` the cell's new state (likewise `c_t` with its own draws, and `h~_t = o_t *
    /// tanh(c_t)` reads the zoned-out `c_t`). In evaluation the expectation,
    /// `h_t = p h_{t-1} + (1 - p) h~_t` (haste's semantics). Not with `proj_size`.
    pub zoneout: f64,
    /// Layer normalization inside the cell (Ba et al., 2016, with haste's `LayerNormLSTM` and
    /// `LayerNormGRU` semantics), default false. With `LN(z; γ, β) = γ * (z - mean(z)) /
    /// sqrt(var(z) + 1e-5) + β` over the features of each row (biased variance):
    ///
    /// - LSTM: `gates_t = LN(W_ih x_t; γ_x) + LN(W_hh h_{t-1}; γ_h) + b_ih + b_hh` (over all
    ///   `4H` pre-activations of a row, gains only: the biases play `β`'s part), `i, f, g, o` as
    ///   usual, `c_t = f * c_{t-1} + i * g`, and `h_t = o * tanh(LN(c_t; γ_c, β_c))` (over `H`);
    ///   `c_t` itself is not normalized.
    /// - GRU: `x_r, x_z, x_n = LN(W_ih x_t; γ_x) + b_ih` and `h_r, h_z, h_n = LN(W_hh h_{t-1};
    ///   γ_h) + b_hh` (each over `3H`, gains only), then `r = σ(x_r + h_r)`, `z = σ(x_z + h_z)`,
    ///   `n = tanh(x_n + r * h_n)`, `h_t = (1 - z) * n + z * h_{t-1}`.
    ///
    /// The parameters, per layer `k` (with `_reverse` for the second direction), after the
    /// layer's weights and biases: `ln_ih_weight_l{k}` (`γ_x`, `[G*H]`), `ln_hh_weight_l{k}`
    /// (`γ_h`, `[G*H]`) and for the LSTM `ln_c_weight_l{k}` and `ln_c_bias_l{k}` (`γ_c`, `β_c`,
    /// `[H]`); gains start at 1 and `β_c` at 0. LSTM and GRU only, and not with `proj_size`,
    /// `recurrent_dropout`, `weight_drop` or `zoneout`.
    ///
    /// ```
    /// use recur::nn::{ForwardOptions, Lstm, RecurrentConfig};
    /// use recur::{ParamStore, Rng, Tape, Tensor};
    /// let mut ps = ParamStore::<f32>::new();
    /// let cfg = RecurrentConfig::new(3, 5).layer_norm(true);
    /// let lstm = Lstm::new(&mut ps, "", cfg, &mut Rng::new(0))?;
    /// assert_eq!(ps.get(ps.find("ln_ih_weight_l0").unwrap()).dims(), &[20]); // γ_x, [4H]
    /// assert_eq!(ps.get(ps.find("ln_c_bias_l0").unwrap()).dims(), &[5]); // β_c, [H]
    /// let mut tape = Tape::new();
    /// let x = tape.constant(Tensor::zeros(&[7, 2, 3])?); // [T, B, I]
    /// let out = lstm.forward(&mut tape, &ps, x, ForwardOptions::default())?;
    /// assert_eq!(tape.shape(out.y)?.dims(), &[7, 2, 5]);
    /// // Not with a projection: the configuration is refused.
    /// let cfg = RecurrentConfig::new(3, 5).layer_norm(true).proj_size(2);
    /// assert!(Lstm::new(&mut ParamStore::<f32>::new(), "", cfg, &mut Rng::new(0)).is_err());
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub layer_norm: bool,
}

impl RecurrentConfig {
    /// A one-layer, unidirectional configuration with biases.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        RecurrentConfig {
            input_size,
            hidden_size,
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
            proj_size: 0,
            recurrent_dropout: 0.0,
            weight_drop: 0.0,
            zoneout: 0.0,
            layer_norm: false,
        }
    }
    config_setters!(
        /// Sets `num_layers`.
        num_layers: usize,
        /// Sets `bias`.
        bias: bool,
        /// Sets `batch_first`.
        batch_first: bool,
        /// Sets `dropout`.
        dropout: f64,
        /// Sets `bidirectional`.
        bidirectional: bool,
        /// Sets `proj_size` (LSTM only; 0 for none).
        proj_size: usize,
        /// Sets `recurrent_dropout`.
        recurrent_dropout: f64,
        /// Sets `weight_drop`.
        weight_drop: f64,
        /// Sets `zoneout`.
        zoneout: f64,
        /// Sets `layer_norm`.
        layer_norm: bool,
    );

    /// Whether any regularizer of the recurrence (`recurrent_dropout`, `weight_drop`,
    /// `zoneout`) is on.
    pub fn regularized(&self) -> bool {
        self.recurrent_dropout > 0.0 || self.weight_drop > 0.0 || self.zoneout > 0.0
    }

    /// Number of directions `D` (1 or 2).
    pub fn directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// Features of the hidden state, of `h0` and `h_n` and of each direction's outputs:
    /// `proj_size` when the LSTM projects its state, else `hidden_size`.
    ///
    /// ```
    /// use recur::nn::RecurrentConfig;
    /// assert_eq!(RecurrentConfig::new(3, 8).output_size(), 8);
    /// assert_eq!(RecurrentConfig::new(3, 8).proj_size(5).output_size(), 5);
    /// ```
    pub fn output_size(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }

    /// Features of the input of `layer`: `input_size` for the first, then the previous layer's
    /// outputs of every direction.
    fn layer_input(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.output_size() * self.directions()
        }
    }

    fn validate(&self, kind: CellKind) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("RecurrentConfig", m));
        if self.input_size == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return bad(format!(
                "input_size ({}), hidden_size ({}) and num_layers ({}) must be positive",
                self.input_size, self.hidden_size, self.num_layers
            ));
        }
        for (name, p) in [
            ("dropout", self.dropout),
            ("recurrent_dropout", self.recurrent_dropout),
            ("weight_drop", self.weight_drop),
            ("zoneout", self.zoneout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        if self.proj_size > 0 {
            for (name, p) in [
                ("recurrent_dropout", self.recurrent_dropout),
                ("zoneout", self.zoneout),
            ] {
                if p > 0.0 {
                    return bad(format!(
                        "{name} ({p}) is not supported with proj_size ({}); weight_drop is",
                        self.proj_size
                    ));
                }
            }
        }
        if self.proj_size > 0 && kind != CellKind::Lstm {
            return bad(format!(
                "proj_size ({}) is for LSTM layers only, not {}",
                self.proj_size,
                kind.name()
            ));
        }
        if self.layer_norm {
            if let CellKind::Rnn(_) = kind {
                return bad(format!(
                    "layer_norm is for LSTM and GRU layers, not {}",
                    kind.name()
                ));
            }
            if self.proj_size > 0 {
                return bad(format!(
                    "layer_norm is not supported with proj_size ({})",
                    self.proj_size
                ));
            }
            for (name, p) in [
                ("recurrent_dropout", self.recurrent_dropout),
                ("weight_drop", self.weight_drop),
                ("zoneout", self.zoneout),
            ] {
                if p > 0.0 {
                    return bad(format!("layer_norm is not supported with {name} ({p})"));
                }
            }
        }
        if self.proj_size > 0 && self.proj_size >= self.hidden_size {
            return bad(format!(
                "proj_size ({}) must be smaller than hidden_size ({})",
                self.proj_size, self.hidden_size
            ));
        }
        Ok(())
    }
}

/// Which implementation runs the recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Implementation {
    /// Fused kernels: one GEMM for all input projections, a recurrent GEMM and a fused gate
    /// kernel per step, one tape node per layer and direction (the default).
    #[default]
    Fused,
    /// Built from primitive tape ops (matmul, add, sigmoid, tanh, mul, slice) step by step: the
    /// reference the fused kernels are tested against.
    Reference,
}

/// Optional inputs of a forward pass.
#[derive(Default)]
pub struct ForwardOptions<'a> {
    /// Initial hidden state `[D*L, B, H]` (`[D*L, B, P]` with a projection; zeros when absent).
    pub h0: Option<Var>,
    /// Initial cell state `[D*L, B, H]` (LSTM only; zeros when absent).
    pub c0: Option<Var>,
    /// Length of each sequence in the batch (each in `1..=T`): past its length a sequence's
    /// state is frozen and its outputs are zero.
    pub lengths: Option<&'a [usize]>,
    /// Training mode: the generator for dropout masks between layers, and (with
    /// `recurrent_dropout`, `weight_drop` or `zoneout` on) the one word per pass that keys the
    /// regularizers' masks. `None` is evaluation mode.
    pub dropout_rng: Option<&'a mut Rng>,
    /// Which implementation to run.
    pub implementation: Implementation,
}

/// What a recurrent layer returns, the same for every cell.
#[derive(Clone, Copy, Debug)]
pub struct RecurrentOutput {
    /// Outputs of the last layer for every step: `[T, B, D*H]` (`[B, T, D*H]` if batch-first;
    /// `P` in place of `H` with a projection).
    pub y: Var,
    /// Final hidden state of every layer and direction: `[D*L, B, H]` (`[D*L, B, P]` with a
    /// projection).
    pub h_n: Var,
    /// Final cell state `[D*L, B, H]` (LSTM only).
    pub c_n: Option<Var>,
}

/// A stack of recurrent layers of one cell kind: the engine behind [`Rnn`], [`Lstm`], [`Gru`].
#[derive(Clone, Debug)]
pub struct Recurrent {
    kind: CellKind,
    config: RecurrentConfig,
    /// Indexed `[layer * D + direction]`.
    params: Vec<DirectionParams>,
}

impl Recurrent {
    /// Registers the parameters of a new layer stack in `store` under PyTorch's names (prefixed
    /// by `prefix`, e.g. `"rnn."`), initialised as PyTorch does: `U(-1/sqrt(H), 1/sqrt(H))`.
    /// A `proj_size` on a cell other than the LSTM, or not below `hidden_size`, is an error.
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        prefix: &str,
        kind: CellKind,
        config: RecurrentConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        super::check_prefix(prefix)?;
        config.validate(kind)?;
        let (h, g, p) = (config.hidden_size, kind.gates(), config.output_size());
        let bound = 1.0 / (h as f64).sqrt();
        let mut uniform = |dims: &[usize]| uniform_tensor::<T>(dims, bound, rng);
        let mut params = Vec::new();
        for layer in 0..config.num_layers {
            let in_size = config.layer_input(layer);
            for dir in 0..config.directions() {
                let sfx = if dir == 1 { "_reverse" } else { "" };
                let w_ih = store.add(
                    format!("{prefix}weight_ih_l{layer}{sfx}"),
                    uniform(&[g * h, in_size])?,
                )?;
                let w_hh = store.add(
                    format!("{prefix}weight_hh_l{layer}{sfx}"),
                    uniform(&[g * h, p])?,
                )?;
                let (b_ih, b_hh) =
                    if config.bias {
                        (
                            Some(store.add(
                                format!("{prefix}bias_ih_l{layer}{sfx}"),
                                uniform(&[g * h])?,
                            )?),
                            Some(store.add(
                                format!("{prefix}bias_hh_l{layer}{sfx}"),
                                uniform(&[g * h])?,
                            )?),
                        )
                    } else {
                        (None, None)
                    };
                // PyTorch registers the projection after the biases, with the same bound.
                let w_hr = if config.proj_size > 0 {
                    Some(store.add(
                        format!("{prefix}weight_hr_l{layer}{sfx}"),
                        uniform(&[p, h])?,
                    )?)
                } else {
                    None
                };
                let ln = if config.layer_norm {
                    let mut add = |name: &str, n: usize, v: f64| {
                        store.add(
                            format!("{prefix}{name}_l{layer}{sfx}"),
                            Tensor::full(&[n], T::from_f64(v))?,
                        )
                    };
                    Some(LayerNormParams {
                        gamma_ih: add("ln_ih_weight", g * h, 1.0)?,
                        gamma_hh: add("ln_hh_weight", g * h, 1.0)?,
                        cell: if kind.has_cell_state() {
                            Some((add("ln_c_weight", h, 1.0)?, add("ln_c_bias", h, 0.0)?))
                        } else {
                            None
                        },
                    })
                } else {
                    None
                };
                params.push(DirectionParams {
                    w_ih,
                    w_hh,
                    b_ih,
                    b_hh,
                    w_hr,
                    ln,
                });
            }
        }
        Ok(Recurrent {
            kind,
            config,
            params,
        })
    }

    /// The cell kind.
    pub fn kind(&self) -> CellKind {
        self.kind
    }

    /// The configuration.
    pub fn config(&self) -> &RecurrentConfig {
        &self.config
    }

    /// The parameters of `layer`, direction `dir` (0 forward, 1 reverse).
    pub fn direction_params(&self, layer: usize, dir: usize) -> Option<DirectionParams> {
        if dir >= self.config.directions() {
            return None;
        }
        self.params
            .get(layer * self.config.directions() + dir)
            .copied()
    }

    /// A tape-free step of direction `dir` (0 forward, 1 reverse) of `layer`, for batches of
    /// `batch` rows, over this stack's weights in `store` packed once: what sampling and
    /// prediction loops step with (see [`InferenceStep::step_packed`]). Fails if the layer or
    /// direction does not exist, a parameter is missing from `store` or mis-shaped, or the
    /// stack projects its hidden state (`proj_size`), which the tape-free step does not.
    ///
    /// ```
    /// use recur::nn::{Lstm, RecurrentConfig};
    /// use recur::{ParamStore, Rng};
    /// let mut ps = ParamStore::<f32>::new();
    /// let lstm = Lstm::new(&mut ps, "", RecurrentConfig::new(3, 4).num_layers(2), &mut Rng::new(0))?;
    /// let mut step = lstm.inference_step(&ps, 1, 0, 1)?; // layer 1 takes the 4 features of layer 0
    /// let (mut h, mut c) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    /// step.step_packed(&[0.5; 4], &mut h, &mut c)?;
    /// assert!(lstm.inference_step(&ps, 2, 0, 1).is_err());
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn inference_step<T: Float>(
        &self,
        store: &ParamStore<T>,
        layer: usize,
        dir: usize,
        batch: usize,
    ) -> Result<InferenceStep<T>> {
        let cfg = &self.config;
        let p = self.direction_params(layer, dir).ok_or_else(|| {
            Error::invalid(
                "Recurrent::inference_step",
                format!(
                    "no layer {layer} direction {dir} in a stack of {} layers and {} directions",
                    cfg.num_layers,
                    cfg.directions()
                ),
            )
        })?;
        if cfg.layer_norm {
            return Err(Error::invalid(
                "Recurrent::inference_step",
                "the tape-free step has no layer normalization (layer_norm); run \
                 Recurrent::forward instead",
            ));
        }
        if cfg.proj_size > 0 {
            return Err(Error::invalid(
                "Recurrent::inference_step",
                format!(
                    "the tape-free step has no LSTM projection (proj_size {}); run \
                     Recurrent::forward instead",
                    cfg.proj_size
                ),
            ));
        }
        // Mis-shaped weights are caught by `pack_weights`, by their lengths.
        for id in [Some(p.w_ih), Some(p.w_hh), p.b_ih, p.b_hh]
            .into_iter()
            .flatten()
        {
            store.check(id)?;
        }
        let bias = p
            .b_ih
            .zip(p.b_hh)
            .map(|(bi, bh)| (store.get(bi).data(), store.get(bh).data()));
        let input = cfg.layer_input(layer);
        let mut step = InferenceStep::new(self.kind, input, cfg.hidden_size, batch)?;
        // Evaluation's zoneout: the expectation.
        step.set_zoneout(cfg.zoneout)?;
        step.pack_weights(store.get(p.w_ih).data(), store.get(p.w_hh).data(), bias)?;
        Ok(step)
    }

    /// Every parameter id, in registration order.
    pub fn param_ids(&self) -> Vec<ParamId> {
        self.params
            .iter()
            .flat_map(|p| {
                let ln = p.ln.map(|ln| (ln.gamma_ih, ln.gamma_hh, ln.cell));
                [
                    Some(p.w_ih),
                    Some(p.w_hh),
                    p.b_ih,
                    p.b_hh,
                    p.w_hr,
                    ln.map(|l| l.0),
                    ln.map(|l| l.1),
                    ln.and_then(|l| l.2).map(|c| c.0),
                    ln.and_then(|l| l.2).map(|c| c.1),
                ]
            })
            .flatten()
            .collect()
    }

    /// Checks that every parameter of the stack is in `store` with the shape the config gives
    /// (a store whose tensors were replaced, or another store, is an error, not a panic).
    fn check_params<T: Float>(&self, store: &ParamStore<T>) -> Result<()> {
        let cfg = &self.config;
        let (g, h, d_n) = (self.kind.gates(), cfg.hidden_size, cfg.directions());
        let o = cfg.output_size();
        for (k, p) in self.params.iter().enumerate() {
            let in_size = cfg.layer_input(k / d_n);
            let mut expect = vec![(p.w_ih, vec![g * h, in_size]), (p.w_hh, vec![g * h, o])];
            expect.extend(p.b_ih.into_iter().chain(p.b_hh).map(|id| (id, vec![g * h])));
            expect.extend(p.w_hr.map(|id| (id, vec![o, h])));
            if let Some(ln) = p.ln {
                expect.push((ln.gamma_ih, vec![g * h]));
                expect.push((ln.gamma_hh, vec![g * h]));
                expect.extend(
                    ln.cell
                        .into_iter()
                        .flat_map(|(gc, bc)| [(gc, vec![h]), (bc, vec![h])]),
                );
            }
            for (id, dims) in expect {
                store.check(id)?;
                let got = store.get(id).shape();
                if got.dims() != dims.as_slice() {
                    return Err(Error::ShapeMismatch {
                        op: "recurrent forward (parameter)",
                        lhs: Shape::new(&dims)?,
                        rhs: got,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs the layer stack over a batch of sequences `x` (`[T, B, I]`, or `[B, T, I]` when
    /// batch-first).
    pub fn forward<T: Float>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        opts: ForwardOptions<'_>,
    ) -> Result<RecurrentOutput> {
        let cfg = &self.config;
        let (d_n, l_n, h) = (cfg.directions(), cfg.num_layers, cfg.hidden_size);
        let xs = tape.shape(x)?;
        let &[a0, a1, i_size] = xs.dims() else {
            return Err(Error::invalid(
                "recurrent forward",
                format!(
                    "input must be rank 3 ({}), got shape {xs}",
                    if cfg.batch_first {
                        "[B, T, I]"
                    } else {
                        "[T, B, I]"
                    }
                ),
            ));
        };
        let (t_len, batch) = if cfg.batch_first { (a1, a0) } else { (a0, a1) };
        if i_size != cfg.input_size {
            return Err(Error::invalid(
                "recurrent forward",
                format!(
                    "input has {i_size} features per step but input_size is {} (shape {xs})",
                    cfg.input_size
                ),
            ));
        }
        self.check_params(store)?;
        let o = cfg.output_size();
        let h_shape = Shape::new(&[d_n * l_n, batch, o])?;
        let c_shape = Shape::new(&[d_n * l_n, batch, h])?;
        for (name, s, state_shape) in [("h0", opts.h0, h_shape), ("c0", opts.c0, c_shape)] {
            if let Some(v) = s {
                let got = tape.shape(v)?;
                if got != state_shape {
                    return Err(Error::ShapeMismatch {
                        op: if name == "h0" {
                            "recurrent forward (h0)"
                        } else {
                            "recurrent forward (c0)"
                        },
                        lhs: state_shape,
                        rhs: got,
                    });
                }
            }
        }
        if opts.c0.is_some() && !self.kind.has_cell_state() {
            return Err(Error::invalid(
                "recurrent forward",
                format!(
                    "c0 given to a {} layer, which has no cell state",
                    self.kind.name()
                ),
            ));
        }
        let lengths = match opts.lengths {
            Some(l) => Some(validate_lengths(l, batch, t_len)?),
            None => None,
        };
        let lengths = lengths.as_deref();
        let mut rng = opts.dropout_rng;
        // The regularizers' masks of this pass: keyed on one word from the training generator.
        let step_masks = StepMasks::new(
            cfg.recurrent_dropout,
            cfg.weight_drop,
            cfg.zoneout,
            rng.as_deref_mut(),
        );

        let mut input = if cfg.batch_first { tape.swap01(x)? } else { x };
        let mut h_finals = Vec::with_capacity(d_n * l_n);
        let mut c_finals = Vec::with_capacity(d_n * l_n);
        for layer in 0..l_n {
            let mut ys = Vec::with_capacity(d_n);
            for dir in 0..d_n {
                let k = layer * d_n + dir;
                let h0 = match opts.h0 {
                    Some(v) => tape.select(v, k)?,
                    None => tape.zeros_constant(Shape::new(&[batch, o])?),
                };
                let c0 = if self.kind.has_cell_state() {
                    Some(match opts.c0 {
                        Some(v) => tape.select(v, k)?,
                        None => tape.zeros_constant(Shape::new(&[batch, h])?),
                    })
                } else {
                    None
                };
                let w_hh = if step_masks.drops_weights() {
                    Some(tape.param(store, self.params[k].w_hh)?)
                } else {
                    None
                };
                let masks =
                    step_masks.direction(tape, self.kind, (layer, dir), (t_len, batch, o), w_hh)?;
                let run = DirectionRun {
                    kind: self.kind,
                    params: self.params[k],
                    reverse: dir == 1,
                    lengths,
                    x: input,
                    h0,
                    c0,
                    masks,
                };
                let out = match opts.implementation {
                    Implementation::Fused if run.params.w_hr.is_some() => {
                        fused::run_projected(tape, store, &run)?
                    }
                    Implementation::Fused if run.params.ln.is_some() => {
                        fused::run_layer_norm(tape, store, &run)?
                    }
                    Implementation::Fused => fused::run(tape, store, &run)?,
                    Implementation::Reference => reference::run(tape, store, &run)?,
                };
                ys.push(out.y);
                h_finals.push(out.h_n);
                if let Some(c) = out.c_n {
                    c_finals.push(c);
                }
            }
            input = if d_n == 1 { ys[0] } else { tape.concat(&ys)? };
            if layer + 1 < l_n
                && cfg.dropout > 0.0
                && let Some(r) = rng.as_deref_mut()
            {
                input = dropout(tape, input, cfg.dropout, r)?;
            }
        }
        let y = if cfg.batch_first {
            tape.swap01(input)?
        } else {
            input
        };
        let h_n = tape.stack(&h_finals)?;
        let c_n = if c_finals.is_empty() {
            None
        } else {
            Some(tape.stack(&c_finals)?)
        };
        Ok(RecurrentOutput { y, h_n, c_n })
    }
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by 1/(1-p).
pub(crate) fn dropout<T: Float>(tape: &mut Tape<T>, x: Var, p: f64, rng: &mut Rng) -> Result<Var> {
    let s = tape.shape(x)?;
    let keep = 1.0 / (1.0 - p);
    let mask = Tensor::from_fn(s.dims(), |_| {
        T::from_f64(if rng.uniform() < p { 0.0 } else { keep })
    })?;
    let m = tape.constant(mask);
    tape.mul(x, m)
}

fn validate_lengths(l: &[usize], batch: usize, t_len: usize) -> Result<Vec<usize>> {
    if l.len() != batch {
        return Err(Error::invalid(
            "recurrent forward",
            format!("{} lengths given for a batch of {batch}", l.len()),
        ));
    }
    if let Some((b, &bad)) = l.iter().enumerate().find(|(_, n)| **n == 0 || **n > t_len) {
        return Err(Error::invalid(
            "recurrent forward",
            format!("length {bad} of sequence {b} is outside 1..={t_len} (the sequence length)"),
        ));
    }
    Ok(l.to_vec())
}

/// What the typed layers share: each derefs to the [`Recurrent`] stack it holds, whose
/// [`Recurrent::forward`] runs it (and whose methods give its configuration, parameters and
/// kind); given its kind, `new` registers its parameters.
macro_rules! stack_layer {
    ($name:ident, $kind:expr, $what:literal) => {
        impl $name {
            #[doc = concat!("Registers a new ", $what, " in `store` under PyTorch's names, prefixed by `prefix`.")]
            pub fn new<T: Float>(
                store: &mut ParamStore<T>,
                prefix: &str,
                config: RecurrentConfig,
                rng: &mut Rng,
            ) -> Result<Self> {
                let stack = Recurrent::new(store, prefix, $kind, config, rng)?;
                Ok($name { stack })
            }
        }

        stack_layer!($name);
    };
    ($name:ident) => {
        impl Deref for $name {
            type Target = Recurrent;

            fn deref(&self) -> &Recurrent {
                &self.stack
            }
        }
    };
}

/// A multi-layer LSTM, PyTorch's `nn.LSTM`: `i, f, g, o` gates,
/// `c_t = f * c_{t-1} + i * g`, `h_t = o * tanh(c_t)` (projected to `h_t = W_hr (o * tanh(c_t))`
/// with [`RecurrentConfig::proj_size`]).
///
/// ```
/// use recur::nn::{ForwardOptions, Lstm, RecurrentConfig};
/// use recur::{ParamStore, Rng, Tape, Tensor};
/// let mut ps = ParamStore::<f32>::new();
/// let lstm = Lstm::new(&mut ps, "", RecurrentConfig::new(3, 5).num_layers(2), &mut Rng::new(0))?;
/// assert!(ps.find("weight_hh_l1").is_some());
/// let mut tape = Tape::new();
/// let x = tape.constant(Tensor::zeros(&[7, 2, 3])?); // [T, B, I]
/// let out = lstm.forward(&mut tape, &ps, x, ForwardOptions::default())?;
/// assert_eq!(tape.shape(out.y)?.dims(), &[7, 2, 5]);
/// assert_eq!(tape.shape(out.c_n.unwrap())?.dims(), &[2, 2, 5]);
///
/// // With a projection (`proj_size`), h_t = W_hr (o * tanh(c_t)) has P = 2 features.
/// let mut ps = ParamStore::<f32>::new();
/// let cfg = RecurrentConfig::new(3, 5).proj_size(2).bidirectional(true);
/// let lstm = Lstm::new(&mut ps, "", cfg, &mut Rng::new(0))?;
/// assert_eq!(ps.get(ps.find("weight_hr_l0_reverse").unwrap()).dims(), &[2, 5]);
/// let mut tape = Tape::new();
/// let x = tape.constant(Tensor::zeros(&[7, 2, 3])?);
/// let out = lstm.forward(&mut tape, &ps, x, ForwardOptions::default())?;
/// assert_eq!(tape.shape(out.y)?.dims(), &[7, 2, 4]); // [T, B, D*P]
/// assert_eq!(tape.shape(out.h_n)?.dims(), &[2, 2, 2]);
/// assert_eq!(tape.shape(out.c_n.unwrap())?.dims(), &[2, 2, 5]);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Lstm {
    stack: Recurrent,
}

stack_layer!(Lstm, CellKind::Lstm, "LSTM");

/// A multi-layer GRU, PyTorch's `nn.GRU`: `r, z, n` gates,
/// `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`, `h' = (1 - z) * n + z * h`.
#[derive(Clone, Debug)]
pub struct Gru {
    stack: Recurrent,
}

stack_layer!(Gru, CellKind::Gru, "GRU");

/// A multi-layer Elman RNN, PyTorch's `nn.RNN`:
/// `h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`. The chapter's
/// `h_t = tanh(W_h h_{t-1} + W_x x_t + b)` is this cell with `b = b_ih + b_hh`.
#[derive(Clone, Debug)]
pub struct Rnn {
    stack: Recurrent,
}

impl Rnn {
    /// Registers a new RNN with the given nonlinearity (tanh or relu).
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        prefix: &str,
        config: RecurrentConfig,
        nonlinearity: Activation,
        rng: &mut Rng,
    ) -> Result<Self> {
        let stack = Recurrent::new(store, prefix, CellKind::Rnn(nonlinearity), config, rng)?;
        Ok(Rnn { stack })
    }
}

stack_layer!(Rnn);
