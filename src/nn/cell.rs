//! Single-step recurrent cells, PyTorch's `nn.RNNCell`, `nn.LSTMCell` and `nn.GRUCell`: for
//! loops written by hand (sampling, custom unrolling, attention over states).
//!
//! Every cell has one output convention, [`CellState`]: the new hidden state `h` `[B, H]` and,
//! for the LSTM, the new cell state `c` `[B, H]`. A cell steps either on the tape
//! ([`RecurrentCell::step`], differentiable, built from primitive ops) or on plain tensors
//! without recording anything ([`RecurrentCell::step_inference`], the fused kernels; for
//! sampling). The same cell also runs one direction of one layer of a trained [`Recurrent`]
//! stack ([`Cell::from_layer`]), sharing its parameters.

use std::ops::Deref;

use super::direction::{CellKind, DirectionParams};
use super::inference::InferenceStep;
use super::init::uniform_tensor;
use super::linear::param_value;
use super::recurrent::{Recurrent, config_setters};
use super::reference::cell_step;
use crate::kernels::rnn::Activation;
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Shape, Tensor};
use crate::{Error, Result};

/// The state a cell carries from step to step, on the tape: `h` `[B, H]` and, for the LSTM,
/// `c` `[B, H]`. A step takes one and returns the next.
#[derive(Clone, Copy, Debug)]
pub struct CellState {
    /// Hidden state `[B, H]` (also the cell's output).
    pub h: Var,
    /// Cell state `[B, H]` (LSTM only).
    pub c: Option<Var>,
}

/// The state of a cell on plain tensors (no tape): `h` `[B, H]` and, for the LSTM, `c`.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensors<T: Float> {
    /// Hidden state `[B, H]` (also the cell's output).
    pub h: Tensor<T>,
    /// Cell state `[B, H]` (LSTM only).
    pub c: Option<Tensor<T>>,
}

/// Sizes and options of a cell, as PyTorch's cell constructors take them.
///
/// ```
/// use recur::nn::CellConfig;
/// let cfg = CellConfig::new(3, 8).bias(false);
/// assert_eq!((cfg.input_size, cfg.hidden_size, cfg.bias), (3, 8, false));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellConfig {
    /// Features per input step `I`.
    pub input_size: usize,
    /// Hidden units `H`.
    pub hidden_size: usize,
    /// Use `bias_ih` and `bias_hh` (default true).
    pub bias: bool,
}

impl CellConfig {
    /// A configuration with biases.
    pub fn new(input_size: usize, hidden_size: usize) -> Self {
        CellConfig {
            input_size,
            hidden_size,
            bias: true,
        }
    }

    config_setters!(
        /// Sets `bias`.
        bias: bool,
    );
}

/// One recurrent cell of any kind: the engine behind [`RnnCell`], [`LstmCell`] and [`GruCell`].
#[derive(Clone, Debug)]
pub struct Cell {
    kind: CellKind,
    input_size: usize,
    hidden_size: usize,
    params: DirectionParams,
}

impl Cell {
    /// Registers a cell's parameters in `store` under PyTorch's cell names, prefixed by `prefix`:
    /// `weight_ih` `[G*H, I]`, `weight_hh` `[G*H, H]` and, with biases, `bias_ih` and `bias_hh`
    /// `[G*H]`, all drawn from `U(-1/sqrt(H), 1/sqrt(H))` as PyTorch does.
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        prefix: &str,
        kind: CellKind,
        config: CellConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        super::check_prefix(prefix)?;
        let (i, h, g) = (config.input_size, config.hidden_size, kind.gates());
        if i == 0 || h == 0 {
            return Err(Error::invalid(
                "Cell::new",
                format!("input_size ({i}) and hidden_size ({h}) must be positive"),
            ));
        }
        let mut names = vec![format!("{prefix}weight_ih"), format!("{prefix}weight_hh")];
        if config.bias {
            names.push(format!("{prefix}bias_ih"));
            names.push(format!("{prefix}bias_hh"));
        }
        if let Some(n) = names.iter().find(|n| store.find(n).is_some()) {
            return Err(Error::invalid(
                "Cell::new",
                format!("parameter name `{n}` is already taken"),
            ));
        }
        let bound = 1.0 / (h as f64).sqrt();
        let mut uniform = |dims: &[usize]| uniform_tensor::<T>(dims, bound, rng);
        let mut ids = Vec::with_capacity(4);
        for (k, name) in names.into_iter().enumerate() {
            let value = match k {
                0 => uniform(&[g * h, i])?,
                1 => uniform(&[g * h, h])?,
                _ => uniform(&[g * h])?,
            };
            ids.push(store.add(name, value)?);
        }
        let params = DirectionParams {
            w_ih: ids[0],
            w_hh: ids[1],
            b_ih: ids.get(2).copied(),
            b_hh: ids.get(3).copied(),
            w_hr: None,
            ln: None,
        };
        Ok(Cell {
            kind,
            input_size: i,
            hidden_size: h,
            params,
        })
    }

    /// The cell that runs direction `dir` (0 forward, 1 reverse) of `layer` of a layer stack,
    /// sharing its parameters (`weight_ih_l{layer}[_reverse]`, ...). Stepping it over a
    /// sequence (in reverse time for `dir` 1) reproduces that part of the stack. A stack with
    /// an LSTM projection (`proj_size`) has no such cell: that is an error.
    pub fn from_layer(stack: &Recurrent, layer: usize, dir: usize) -> Result<Self> {
        let cfg = stack.config();
        if cfg.proj_size > 0 {
            return Err(Error::invalid(
                "Cell::from_layer",
                format!(
                    "the stack projects its hidden state (proj_size {}); a cell has no projection",
                    cfg.proj_size
                ),
            ));
        }
        if cfg.layer_norm {
            return Err(Error::invalid(
                "Cell::from_layer",
                "the stack is layer-normalized (layer_norm); a cell has no layer normalization: \
                 run Recurrent::forward instead",
            ));
        }
        if cfg.regularized() {
            return Err(Error::invalid(
                "Cell::from_layer",
                format!(
                    "the stack is regularized (recurrent_dropout {}, weight_drop {}, zoneout {}); \
                     a cell has none of these: run Recurrent::forward, or \
                     Recurrent::inference_step to evaluate",
                    cfg.recurrent_dropout, cfg.weight_drop, cfg.zoneout
                ),
            ));
        }
        let params = stack.direction_params(layer, dir).ok_or_else(|| {
            Error::invalid(
                "Cell::from_layer",
                format!(
                    "no layer {layer} direction {dir} in a stack of {} layers and {} directions",
                    cfg.num_layers,
                    cfg.directions()
                ),
            )
        })?;
        let input_size = if layer == 0 {
            cfg.input_size
        } else {
            cfg.hidden_size * cfg.directions()
        };
        Ok(Cell {
            kind: stack.kind(),
            input_size,
            hidden_size: cfg.hidden_size,
            params,
        })
    }

    /// The cell kind.
    pub fn kind(&self) -> CellKind {
        self.kind
    }

    /// Features per input step.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// Hidden units.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The parameter ids.
    pub fn params(&self) -> DirectionParams {
        self.params
    }

    /// Every parameter id, in registration order.
    pub fn param_ids(&self) -> Vec<ParamId> {
        let p = self.params;
        [Some(p.w_ih), Some(p.w_hh), p.b_ih, p.b_hh]
            .into_iter()
            .flatten()
            .collect()
    }

    /// All-zero state for a batch of `batch` (with `c` for the LSTM).
    pub fn zero_state<T: Float>(&self, batch: usize) -> Result<StateTensors<T>> {
        let h = Tensor::zeros(&[batch, self.hidden_size])?;
        let c = self.kind.has_cell_state().then(|| h.clone());
        Ok(StateTensors { h, c })
    }

    /// Puts a tensor state on the tape as differentiable inputs (see [`Tape::input`]).
    pub fn state_input<T: Float>(&self, tape: &mut Tape<T>, s: &StateTensors<T>) -> CellState {
        CellState {
            h: tape.input(s.h.clone()),
            c: s.c.as_ref().map(|c| tape.input(c.clone())),
        }
    }

    /// Checks `x` `[B, I]` and the state `[B, H]`; returns `B`.
    fn check_shapes(
        &self,
        op: &'static str,
        x: Shape,
        h: Shape,
        c: Option<Shape>,
    ) -> Result<usize> {
        let &[batch, i] = x.dims() else {
            return Err(Error::invalid(
                op,
                format!("input must be [B, I], got shape {x}"),
            ));
        };
        if i != self.input_size {
            return Err(Error::invalid(
                op,
                format!(
                    "input has {i} features but input_size is {} (shape {x})",
                    self.input_size
                ),
            ));
        }
        let want = Shape::new(&[batch, self.hidden_size])?;
        if h != want {
            return Err(Error::ShapeMismatch {
                op: "cell step (h)",
                lhs: want,
                rhs: h,
            });
        }
        match (self.kind.has_cell_state(), c) {
            (true, None) => Err(Error::invalid(op, "an LSTM cell needs a cell state c")),
            (false, Some(_)) => Err(Error::invalid(
                op,
                format!(
                    "c given to a {} cell, which has no cell state",
                    self.kind.name()
                ),
            )),
            (true, Some(c)) if c != want => Err(Error::ShapeMismatch {
                op: "cell step (c)",
                lhs: want,
                rhs: c,
            }),
            _ => Ok(batch),
        }
    }

    /// One step on the tape: `x` `[B, I]` and `state` give the next state. Built from primitive
    /// ops (matmul, add, sigmoid, tanh, mul, slice), so every gradient flows through it.
    pub fn step<T: Float>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        state: CellState,
    ) -> Result<CellState> {
        let cs = state.c.map(|c| tape.shape(c)).transpose()?;
        let (xs, hs) = (tape.shape(x)?, tape.shape(state.h)?);
        self.check_shapes("cell step", xs, hs, cs)?;
        self.check_params(store, "cell step")?;
        let w = self.params.vars(tape, store)?;
        let (h, c) = cell_step(tape, self.kind, self.hidden_size, x, state.h, state.c, &w)?;
        Ok(CellState { h, c })
    }

    /// Checks that the parameters in `store` have this cell's shapes.
    fn check_params<T: Float>(&self, store: &ParamStore<T>, op: &'static str) -> Result<()> {
        let (i, h, gh) = (
            self.input_size,
            self.hidden_size,
            self.kind.gates() * self.hidden_size,
        );
        param_value(store, self.params.w_ih, &[gh, i], op)?;
        param_value(store, self.params.w_hh, &[gh, h], op)?;
        for b in [self.params.b_ih, self.params.b_hh].into_iter().flatten() {
            param_value(store, b, &[gh], op)?;
        }
        Ok(())
    }

    /// One step on plain tensors, recording nothing: the fused kernels, for sampling and other
    /// inference loops. Gives the same numbers as [`Cell::step`].
    pub fn step_inference<T: Float>(
        &self,
        store: &ParamStore<T>,
        x: &Tensor<T>,
        state: &StateTensors<T>,
    ) -> Result<StateTensors<T>> {
        let batch = self.check_shapes(
            "cell step_inference",
            x.shape(),
            state.h.shape(),
            state.c.as_ref().map(Tensor::shape),
        )?;
        self.check_params(store, "cell step_inference")?;
        let p = self.params;
        let bias = p
            .b_ih
            .zip(p.b_hh)
            .map(|(a, b)| (store.get(a).data(), store.get(b).data()));
        let (w_ih, w_hh) = (store.get(p.w_ih).data(), store.get(p.w_hh).data());
        let mut h = state.h.clone();
        let mut c = state.c.clone();
        let mut step = InferenceStep::new(self.kind, self.input_size, self.hidden_size, batch)?;
        let c_data = c.as_mut().map_or(&mut [][..], |c| c.data_mut());
        step.step(w_ih, w_hh, bias, x.data(), h.data_mut(), c_data)?;
        Ok(StateTensors { h, c })
    }
}

/// What every cell does: step on the tape, step without one, and say its sizes. Implemented by
/// [`Cell`], [`RnnCell`], [`LstmCell`] and [`GruCell`], so code can be written once for all.
pub trait RecurrentCell {
    /// The underlying cell.
    fn cell(&self) -> &Cell;

    /// The cell kind.
    fn kind(&self) -> CellKind {
        self.cell().kind()
    }

    /// Hidden units.
    fn hidden_size(&self) -> usize {
        self.cell().hidden_size()
    }

    /// All-zero state for `batch` sequences; see [`Cell::zero_state`].
    fn zero_state<T: Float>(&self, batch: usize) -> Result<StateTensors<T>> {
        self.cell().zero_state(batch)
    }

    /// One differentiable step; see [`Cell::step`].
    fn step<T: Float>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        state: CellState,
    ) -> Result<CellState> {
        self.cell().step(tape, store, x, state)
    }

    /// One step without a tape; see [`Cell::step_inference`].
    fn step_inference<T: Float>(
        &self,
        store: &ParamStore<T>,
        x: &Tensor<T>,
        state: &StateTensors<T>,
    ) -> Result<StateTensors<T>> {
        self.cell().step_inference(store, x, state)
    }
}

impl RecurrentCell for Cell {
    fn cell(&self) -> &Cell {
        self
    }
}

/// What the typed cells share: each is a [`RecurrentCell`] through the [`Cell`] it holds, and
/// derefs to it; given its kind, `new` registers its parameters.
macro_rules! typed_cell {
    ($name:ident, $kind:expr, $what:literal) => {
        impl $name {
            #[doc = concat!("Registers a new ", $what, " in `store` under PyTorch's cell names, prefixed by `prefix`; see [`Cell::new`].")]
            pub fn new<T: Float>(
                store: &mut ParamStore<T>,
                prefix: &str,
                config: CellConfig,
                rng: &mut Rng,
            ) -> Result<Self> {
                let cell = Cell::new(store, prefix, $kind, config, rng)?;
                Ok($name { cell })
            }
        }

        typed_cell!($name);
    };
    ($name:ident) => {
        impl RecurrentCell for $name {
            fn cell(&self) -> &Cell {
                &self.cell
            }
        }

        impl Deref for $name {
            type Target = Cell;

            fn deref(&self) -> &Cell {
                &self.cell
            }
        }
    };
}

/// An LSTM cell, PyTorch's `nn.LSTMCell`: gates `i, f, g, o`, `c' = f * c + i * g`,
/// `h' = o * tanh(c')`.
///
/// ```
/// use recur::nn::{CellConfig, LstmCell, RecurrentCell};
/// use recur::{ParamStore, Rng, Tape, Tensor};
/// let mut ps = ParamStore::<f32>::new();
/// let cell = LstmCell::new(&mut ps, "cell.", CellConfig::new(3, 4), &mut Rng::new(0))?;
/// assert_eq!(ps.get(ps.find("cell.weight_ih").unwrap()).dims(), &[16, 3]);
/// // Sampling loop, no tape:
/// let mut s = cell.zero_state::<f32>(2)?;
/// for _ in 0..5 {
///     s = cell.step_inference(&ps, &Tensor::zeros(&[2, 3])?, &s)?;
/// }
/// assert_eq!(s.c.unwrap().dims(), &[2, 4]);
/// // Differentiable step:
/// let mut tape = Tape::new();
/// let s0 = cell.state_input(&mut tape, &cell.zero_state(2)?);
/// let x = tape.constant(Tensor::zeros(&[2, 3])?);
/// let s1 = cell.step(&mut tape, &ps, x, s0)?;
/// assert_eq!(tape.shape(s1.h)?.dims(), &[2, 4]);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LstmCell {
    cell: Cell,
}

typed_cell!(LstmCell, CellKind::Lstm, "LSTM cell");

/// A GRU cell, PyTorch's `nn.GRUCell`: gates `r, z, n`,
/// `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`, `h' = (1 - z) * n + z * h`.
#[derive(Clone, Debug)]
pub struct GruCell {
    cell: Cell,
}

typed_cell!(GruCell, CellKind::Gru, "GRU cell");

/// An Elman RNN cell, PyTorch's `nn.RNNCell`: `h' = act(W_ih x + b_ih + W_hh h + b_hh)` with
/// tanh or relu.
#[derive(Clone, Debug)]
pub struct RnnCell {
    cell: Cell,
}

impl RnnCell {
    /// Registers a new RNN cell with the given nonlinearity; see [`Cell::new`].
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        prefix: &str,
        config: CellConfig,
        nonlinearity: Activation,
        rng: &mut Rng,
    ) -> Result<Self> {
        let cell = Cell::new(store, prefix, CellKind::Rnn(nonlinearity), config, rng)?;
        Ok(RnnCell { cell })
    }
}

typed_cell!(RnnCell);
