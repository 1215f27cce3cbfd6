//! Single-step recurrent cells, PyTorch's `nn.RNNCell`, `nn.LSTMCell` and `nn.GRUCell`: for
//! loops written by hand (sampling, custom unrolling, attention over states).
//!
//! Every cell has one output convention, [`CellState`]: the new hidden state `h` `[B, H]` and,
//! for the LSTM, the new cell state `c` `[B, H]`. A cell steps either on the tape
//! ([`RecurrentCell::step`], differentiable, built from primitive ops) or on plain tensors
//! without recording anything ([`RecurrentCell::step_inference`], the fused kernels; for
//! sampling). The same cell also runs one direction of one layer of a trained [`Recurrent`]
//! stack ([`Cell::from_layer`]), sharing its parameters.

use super::direction::{CellKind, DirectionParams};
use super::linear::param_value;
use super::recurrent::{Recurrent, deref_newtype};
use crate::kernels::rnn::Activation;
use crate::kernels::{GemmShape, gru, lstm, rnn};
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

    /// Sets `bias`.
    pub fn bias(mut self, on: bool) -> Self {
        self.bias = on;
        self
    }
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
        let mut uniform = |dims: &[usize]| -> Result<Tensor<T>> {
            Tensor::from_fn(dims, |_| T::from_f64(rng.uniform_range(-bound, bound)))
        };
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
    /// sequence (in reverse time for `dir` 1) reproduces that part of the stack.
    pub fn from_layer(stack: &Recurrent, layer: usize, dir: usize) -> Result<Self> {
        let cfg = stack.config();
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
        let p = self.params;
        let w_ih = tape.param(store, p.w_ih)?;
        let w_hh = tape.param(store, p.w_hh)?;
        let b_ih = p.b_ih.map(|id| tape.param(store, id)).transpose()?;
        let b_hh = p.b_hh.map(|id| tape.param(store, id)).transpose()?;
        let hsz = self.hidden_size;
        let xp = affine(tape, x, w_ih, b_ih)?;
        let hp = affine(tape, state.h, w_hh, b_hh)?;
        match self.kind {
            CellKind::Rnn(act) => {
                let pre = tape.add(xp, hp)?;
                let h = match act {
                    Activation::Tanh => tape.tanh(pre)?,
                    Activation::Relu => tape.relu(pre)?,
                };
                Ok(CellState { h, c: None })
            }
            CellKind::Lstm => {
                let gates = tape.add(xp, hp)?;
                let i = tape.slice(gates, 0, hsz)?;
                let i = tape.sigmoid(i)?;
                let f = tape.slice(gates, hsz, 2 * hsz)?;
                let f = tape.sigmoid(f)?;
                let g = tape.slice(gates, 2 * hsz, 3 * hsz)?;
                let g = tape.tanh(g)?;
                let o = tape.slice(gates, 3 * hsz, 4 * hsz)?;
                let o = tape.sigmoid(o)?;
                let c_prev = state.c.expect("checked: an LSTM state has c");
                let fc = tape.mul(f, c_prev)?;
                let ig = tape.mul(i, g)?;
                let c = tape.add(fc, ig)?; // c' = f * c + i * g
                let tc = tape.tanh(c)?;
                let h = tape.mul(o, tc)?; // h' = o * tanh(c')
                Ok(CellState { h, c: Some(c) })
            }
            CellKind::Gru => {
                let (xr, hr) = (tape.slice(xp, 0, hsz)?, tape.slice(hp, 0, hsz)?);
                let r = tape.add(xr, hr)?;
                let r = tape.sigmoid(r)?;
                let (xz, hz) = (tape.slice(xp, hsz, 2 * hsz)?, tape.slice(hp, hsz, 2 * hsz)?);
                let z = tape.add(xz, hz)?;
                let z = tape.sigmoid(z)?;
                let xn = tape.slice(xp, 2 * hsz, 3 * hsz)?;
                let hn = tape.slice(hp, 2 * hsz, 3 * hsz)?;
                let rhn = tape.mul(r, hn)?;
                let n = tape.add(xn, rhn)?;
                let n = tape.tanh(n)?; // n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
                let h_minus_n = tape.sub(state.h, n)?;
                let zd = tape.mul(z, h_minus_n)?;
                let h = tape.add(n, zd)?; // h' = (1 - z) * n + z * h
                Ok(CellState { h, c: None })
            }
        }
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
        let (hsz, gh) = (self.hidden_size, self.kind.gates() * self.hidden_size);
        let p = self.params;
        let (w_ih, w_hh) = (store.get(p.w_ih).data(), store.get(p.w_hh).data());
        let bias = p
            .b_ih
            .zip(p.b_hh)
            .map(|(a, b)| (store.get(a).data(), store.get(b).data()));
        // xp = x W_ih^T + b_ih (+ b_hh, except for the GRU, whose n gate scales W_hn h + b_hn).
        let mut xp = vec![T::ZERO; batch * gh];
        if let Some((b_ih, b_hh)) = bias {
            for row in xp.chunks_exact_mut(gh) {
                for k in 0..gh {
                    row[k] = if self.kind == CellKind::Gru {
                        b_ih[k]
                    } else {
                        b_ih[k] + b_hh[k]
                    };
                }
            }
        }
        let proj = GemmShape {
            m: batch,
            k: self.input_size,
            n: gh,
            trans_a: false,
            trans_b: true,
        };
        add_x_wt(proj, x.data(), w_ih, &mut xp);
        let rec = GemmShape {
            m: batch,
            k: hsz,
            n: gh,
            trans_a: false,
            trans_b: true,
        };
        let h_prev = state.h.data();
        let mut h = vec![T::ZERO; batch * hsz];
        let mut c_out = None;
        match self.kind {
            CellKind::Rnn(act) => {
                add_x_wt(rec, h_prev, w_hh, &mut xp);
                rnn::rnn_forward(&mut xp, act);
                h.copy_from_slice(&xp);
            }
            CellKind::Lstm => {
                add_x_wt(rec, h_prev, w_hh, &mut xp);
                let c_prev = state.c.as_ref().expect("checked: an LSTM state has c");
                let mut c = vec![T::ZERO; batch * hsz];
                lstm::lstm_forward(&mut xp, c_prev.data(), &mut c, &mut h, hsz);
                c_out = Some(Tensor::from_vec(c, &[batch, hsz])?);
            }
            CellKind::Gru => {
                let mut hp = vec![T::ZERO; batch * gh];
                if let Some((_, b_hh)) = bias {
                    for row in hp.chunks_exact_mut(gh) {
                        row.copy_from_slice(b_hh);
                    }
                }
                add_x_wt(rec, h_prev, w_hh, &mut hp);
                let mut saved = vec![T::ZERO; batch * 4 * hsz];
                gru::gru_forward(&xp, None, &hp, h_prev, &mut h, &mut saved, hsz);
            }
        }
        Ok(StateTensors {
            h: Tensor::from_vec(h, &[batch, hsz])?,
            c: c_out,
        })
    }
}

/// Batches up to this size take the row-by-row product in [`add_x_wt`].
const SMALL_BATCH: usize = 4;

/// `out += x W^T` for `x` `[m, k]`, `W` `[n, k]` (both row-major), `out` `[m, n]`.
///
/// For the few rows of a sampling step, each output is a dot product of two contiguous rows:
/// the weights stream through once, unpacked. Larger batches go to the blocked GEMM, whose
/// packing pays off there.
fn add_x_wt<T: Float>(s: GemmShape, x: &[T], w: &[T], out: &mut [T]) {
    debug_assert!(!s.trans_a && s.trans_b);
    if s.m > SMALL_BATCH {
        T::gemm(s, T::ONE, x, w, T::ONE, out);
        return;
    }
    // Weight rows outside, batch rows inside: the weights stream through once per step.
    for (j, w_row) in w.chunks_exact(s.k).enumerate() {
        for (b, x_row) in x.chunks_exact(s.k).enumerate() {
            out[b * s.n + j] += dot(x_row, w_row);
        }
    }
}

/// Dot product with eight independent partial sums, so the compiler can keep them in one
/// vector register and the additions do not wait on each other.
fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut tail = T::ZERO;
    for (x, y) in ar.iter().zip(br) {
        tail += *x * *y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

/// `x W^T + b` for `[B, in]` rows.
fn affine<T: Float>(tape: &mut Tape<T>, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
    let y = tape.matmul_t(x, false, w, true)?;
    match b {
        Some(b) => tape.add(y, b),
        None => Ok(y),
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

/// A cell type for one cell kind: the newtype over [`Cell`] with its [`RecurrentCell`] impl, and,
/// when the kind is fixed, its `new`.
macro_rules! cell_type {
    ($(#[$doc:meta])* $name:ident) => {
        deref_newtype!($(#[$doc])* $name(Cell));

        impl RecurrentCell for $name {
            fn cell(&self) -> &Cell {
                &self.0
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, $kind:expr, $what:literal) => {
        cell_type!($(#[$doc])* $name);

        impl $name {
            #[doc = concat!("Registers a new ", $what, " in `store` under PyTorch's cell names, prefixed by `prefix`; see [`Cell::new`].")]
            pub fn new<T: Float>(store: &mut ParamStore<T>, prefix: &str, config: CellConfig, rng: &mut Rng) -> Result<Self> {
                Ok($name(Cell::new(store, prefix, $kind, config, rng)?))
            }
        }
    };
}

cell_type!(
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
    LstmCell, CellKind::Lstm, "LSTM cell"
);
cell_type!(
    /// A GRU cell, PyTorch's `nn.GRUCell`: gates `r, z, n`,
    /// `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`, `h' = (1 - z) * n + z * h`.
    GruCell, CellKind::Gru, "GRU cell"
);

cell_type!(
    /// An Elman RNN cell, PyTorch's `nn.RNNCell`: `h' = act(W_ih x + b_ih + W_hh h + b_hh)` with
    /// tanh or relu.
    RnnCell
);

impl RnnCell {
    /// Registers a new RNN cell with the given nonlinearity; see [`Cell::new`].
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        prefix: &str,
        config: CellConfig,
        nonlinearity: Activation,
        rng: &mut Rng,
    ) -> Result<Self> {
        Ok(RnnCell(Cell::new(
            store,
            prefix,
            CellKind::Rnn(nonlinearity),
            config,
            rng,
        )?))
    }
}
