//! Composing layers into models: a forward context that carries the tape, the parameters and the
//! training mode ([`Ctx`]); the [`Layer`] trait for layers that map one tensor to another;
//! [`Dropout`], [`Act`] and [`Sequential`]; and PyTorch-style dotted names for nested modules
//! ([`scope`], [`named_children`]).
//!
//! A model is a plain struct of layers, registered under the names PyTorch would give them, with
//! a short forward:
//!
//! ```
//! use recur::nn::{Ctx, Embedding, Gru, Linear, Module, RecurrentConfig, named_children, scope};
//! use recur::{ParamId, ParamStore, Result, Rng, Tape, Var};
//!
//! struct Tagger { embed: Embedding, rnn: Gru, head: Linear }
//!
//! impl Tagger {
//!     fn new(ps: &mut ParamStore<f32>, prefix: &str, rng: &mut Rng) -> Result<Self> {
//!         Ok(Tagger {
//!             embed: Embedding::new(ps, &scope(prefix, "embed")?, 20, 8, rng)?,
//!             rnn: Gru::new(ps, &scope(prefix, "rnn")?, RecurrentConfig::new(8, 16), rng)?,
//!             head: Linear::new(ps, &scope(prefix, "head")?, 16, 3, true, rng)?,
//!         })
//!     }
//!     /// Logits `[T, B, 3]` for token ids `[T, B]`.
//!     fn forward(&self, cx: &mut Ctx<'_, f32>, ids: &[usize], t: usize, b: usize) -> Result<Var> {
//!         let x = cx.embed(&self.embed, ids, &[t, b])?;
//!         let out = cx.recurrent(&self.rnn, x, None)?;
//!         cx.linear(&self.head, out.y)
//!     }
//! }
//!
//! impl Module for Tagger {
//!     fn named_params(&self) -> Vec<(String, ParamId)> {
//!         named_children(&[("embed", &self.embed), ("rnn", &self.rnn), ("head", &self.head)])
//!     }
//! }
//!
//! let mut ps = ParamStore::new();
//! let model = Tagger::new(&mut ps, "", &mut Rng::new(0))?;
//! let names: Vec<String> = model.named_params().into_iter().map(|(n, _)| n).collect();
//! assert_eq!(names[0], "embed.weight");
//! assert_eq!(names[1], "rnn.weight_ih_l0");
//! assert_eq!(names.last().unwrap(), "head.bias");
//!
//! let mut tape = Tape::new();
//! let mut cx = Ctx::eval(&mut tape, &ps);
//! let logits = model.forward(&mut cx, &[1, 2, 3, 4, 5, 6], 3, 2)?;
//! assert_eq!(tape.shape(logits)?.dims(), &[3, 2, 3]);
//! # Ok::<(), recur::Error>(())
//! ```

use super::{Embedding, ForwardOptions, Linear, Module, Recurrent, RecurrentOutput};
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::{Grads, Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// Checks a parameter-name prefix: empty, or dotted segments that each are non-empty, ending
/// with a dot (`"encoder."`, `"encoder.rnn."`). `"embed"` (which would register `embedweight`),
/// `".x."` and `"a..b."` are errors naming the prefix.
///
/// ```
/// use recur::nn::check_prefix;
/// assert!(check_prefix("").is_ok() && check_prefix("encoder.rnn.").is_ok());
/// assert!(check_prefix("embed").is_err());
/// assert!(check_prefix("a..b.").is_err());
/// ```
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    let Some(body) = prefix.strip_suffix('.') else {
        return Err(Error::invalid(
            "parameter prefix",
            format!(
                "`{prefix}` must be empty or end with a dot (`{prefix}.`), else names run into \
                 it (`{prefix}weight`)"
            ),
        ));
    };
    check_name("parameter prefix", body)
}

/// Checks a dotted name: non-empty segments without whitespace.
fn check_name(op: &'static str, name: &str) -> Result<()> {
    if name.split('.').any(str::is_empty) || name.chars().any(char::is_whitespace) {
        return Err(Error::invalid(
            op,
            format!("`{name}` has an empty segment or whitespace"),
        ));
    }
    Ok(())
}

/// The prefix of child `name` inside a module registered under `prefix`:
/// `scope("encoder.", "rnn")` is `"encoder.rnn."`, as PyTorch names nested modules.
///
/// ```
/// use recur::nn::scope;
/// assert_eq!(scope("", "head")?, "head.");
/// assert_eq!(scope("encoder.", "rnn")?, "encoder.rnn.");
/// assert_eq!(scope("layers.", "0")?, "layers.0.");
/// assert!(scope("encoder", "rnn").is_err());
/// assert!(scope("", "").is_err());
/// # Ok::<(), recur::Error>(())
/// ```
pub fn scope(prefix: &str, name: &str) -> Result<String> {
    check_prefix(prefix)?;
    check_name("scope", name)?;
    Ok(format!("{prefix}{name}."))
}

/// The parameters of a module made of named children, each under `child.` + its own name, in
/// the order given: what a model's [`Module::named_params`] returns. A malformed child name is
/// caught when the names are used ([`crate::nn::state_dict`] and its relatives check every name).
pub fn named_children(children: &[(&str, &dyn Module)]) -> Vec<(String, ParamId)> {
    children
        .iter()
        .flat_map(|(child, m)| {
            m.named_params()
                .into_iter()
                .map(move |(n, id)| (format!("{child}.{n}"), id))
        })
        .collect()
}

/// Checks every full parameter name a module gives (see [`check_prefix`]): `op` names the caller.
pub(crate) fn check_param_names(op: &'static str, names: &[(String, ParamId)]) -> Result<()> {
    for (n, _) in names {
        check_name(op, n)?;
    }
    Ok(())
}

/// What a forward pass runs in: the tape it records on, the parameters it reads and the mode.
///
/// In training mode ([`Ctx::train`]) dropout draws its masks from the given generator; in
/// evaluation mode ([`Ctx::eval`]) dropout is the identity. The fields are public so that a
/// forward can also call any [`Tape`] op directly.
pub struct Ctx<'a, T: Float> {
    /// The tape the forward records on.
    pub tape: &'a mut Tape<T>,
    /// The parameters.
    pub store: &'a ParamStore<T>,
    rng: Option<&'a mut Rng>,
}

impl<'a, T: Float> Ctx<'a, T> {
    /// Training mode: dropout is active, with masks drawn from `rng`.
    pub fn train(tape: &'a mut Tape<T>, store: &'a ParamStore<T>, rng: &'a mut Rng) -> Self {
        Ctx {
            tape,
            store,
            rng: Some(rng),
        }
    }

    /// Evaluation mode: dropout is the identity.
    pub fn eval(tape: &'a mut Tape<T>, store: &'a ParamStore<T>) -> Self {
        Ctx {
            tape,
            store,
            rng: None,
        }
    }

    /// Whether this is training mode.
    pub fn is_training(&self) -> bool {
        self.rng.is_some()
    }

    /// The dropout generator, in training mode.
    pub fn rng(&mut self) -> Option<&mut Rng> {
        self.rng.as_deref_mut()
    }

    /// A constant (no gradient) on the tape.
    pub fn constant(&mut self, value: Tensor<T>) -> Var {
        self.tape.constant(value)
    }

    /// [`Embedding::forward`]: looks up `ids` laid out as `dims` (e.g. `[T, B]`).
    pub fn embed(&mut self, layer: &Embedding, ids: &[usize], dims: &[usize]) -> Result<Var> {
        layer.forward(self.tape, self.store, ids, dims)
    }

    /// [`Linear::forward`] on `x` `[..., in]`.
    pub fn linear(&mut self, layer: &Linear, x: Var) -> Result<Var> {
        layer.forward(self.tape, self.store, x)
    }

    /// Runs a recurrent layer stack ([`Recurrent::forward`], also for [`crate::nn::Lstm`],
    /// [`crate::nn::Gru`], [`crate::nn::Rnn`]) from a zero state, with dropout between layers in
    /// training mode. `lengths` gives each sequence's length (in any order, need not be sorted).
    pub fn recurrent(
        &mut self,
        layer: &Recurrent,
        x: Var,
        lengths: Option<&[usize]>,
    ) -> Result<RecurrentOutput> {
        self.recurrent_from(layer, x, lengths, None, None)
    }

    /// [`Ctx::recurrent`] from the initial states `h0` (and `c0`, LSTM) `[D*L, B, H]` (`h0`
    /// `[D*L, B, P]` for an LSTM with a projection).
    pub fn recurrent_from(
        &mut self,
        layer: &Recurrent,
        x: Var,
        lengths: Option<&[usize]>,
        h0: Option<Var>,
        c0: Option<Var>,
    ) -> Result<RecurrentOutput> {
        let opts = ForwardOptions {
            h0,
            c0,
            lengths,
            dropout_rng: self.rng.as_deref_mut(),
            ..Default::default()
        };
        layer.forward(self.tape, self.store, x, opts)
    }

    /// [`Ctx::recurrent`] for truncated backpropagation through time: starts from the state in
    /// `carry` (zeros when it is empty or was reset), then stores the final state there for the
    /// next chunk. The gradient does not flow into the carried state (it enters as a constant).
    pub fn recurrent_carry(
        &mut self,
        layer: &Recurrent,
        x: Var,
        carry: &mut CarriedState<T>,
    ) -> Result<RecurrentOutput> {
        let h0 = carry.h.as_ref().map(|h| self.tape.constant_copy(h));
        let c0 = carry.c.as_ref().map(|c| self.tape.constant_copy(c));
        let out = self.recurrent_from(layer, x, None, h0, c0)?;
        carry.h = Some(self.tape.value(out.h_n)?.clone());
        carry.c = out.c_n.map(|c| self.tape.value(c).cloned()).transpose()?;
        Ok(out)
    }

    /// Runs any [`Layer`].
    pub fn apply(&mut self, layer: &(impl Layer<T> + ?Sized), x: Var) -> Result<Var> {
        layer.forward(self, x)
    }
}

/// The recurrent state `[D*L, B, H]` (and the LSTM's cell state) carried from one chunk of a
/// stream to the next, for [`Ctx::recurrent_carry`]; empty means zeros.
///
/// ```
/// use recur::nn::{CarriedState, Ctx, Lstm, RecurrentConfig};
/// use recur::{ParamStore, Rng, Tape, Tensor};
/// let mut ps = ParamStore::<f64>::new();
/// let lstm = Lstm::new(&mut ps, "", RecurrentConfig::new(2, 3), &mut Rng::new(0))?;
/// let x = Tensor::from_fn(&[8, 1, 2], |i| (i as f64 * 0.3).sin())?; // one stream, 8 steps
/// // The whole stream at once ...
/// let mut tape = Tape::new();
/// let xv = tape.constant_copy(&x);
/// let whole = Ctx::eval(&mut tape, &ps).recurrent(&lstm, xv, None)?;
/// let want = tape.value(whole.h_n)?.clone();
/// // ... and in two chunks of 4 with the state carried give the same final state.
/// let mut carry = CarriedState::new();
/// for half in [&x.data()[..8], &x.data()[8..]] {
///     tape.clear();
///     let xv = tape.constant(Tensor::from_slice(half, &[4, 1, 2])?);
///     Ctx::eval(&mut tape, &ps).recurrent_carry(&lstm, xv, &mut carry)?;
/// }
/// assert!(carry.h().unwrap().max_abs_diff(&want)? < 1e-15);
/// carry.reset();
/// assert!(carry.h().is_none());
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CarriedState<T: Float> {
    h: Option<Tensor<T>>,
    c: Option<Tensor<T>>,
}

impl<T: Float> Default for CarriedState<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> CarriedState<T> {
    /// Empty: the next chunk starts from zeros.
    pub fn new() -> Self {
        CarriedState { h: None, c: None }
    }

    /// A given state (`h`, and `c` for an LSTM), e.g. restored from a checkpoint.
    pub fn from_tensors(h: Tensor<T>, c: Option<Tensor<T>>) -> Self {
        CarriedState { h: Some(h), c }
    }

    /// Back to zeros (at the start of an epoch, when the streams start over).
    pub fn reset(&mut self) {
        self.h = None;
        self.c = None;
    }

    /// The carried hidden state, if any.
    pub fn h(&self) -> Option<&Tensor<T>> {
        self.h.as_ref()
    }

    /// The carried cell state (LSTM), if any.
    pub fn c(&self) -> Option<&Tensor<T>> {
        self.c.as_ref()
    }
}

/// A layer that maps one tensor to another, in a [`Ctx`]: what [`Sequential`] chains.
pub trait Layer<T: Float> {
    /// The layer's output for `x`.
    fn forward(&self, cx: &mut Ctx<'_, T>, x: Var) -> Result<Var>;
}

impl<T: Float> Layer<T> for Linear {
    fn forward(&self, cx: &mut Ctx<'_, T>, x: Var) -> Result<Var> {
        cx.linear(self, x)
    }
}

/// The outputs `y` of the whole stack for `x` `[T, B, I]`, from a zero state.
impl<T: Float> Layer<T> for Recurrent {
    fn forward(&self, cx: &mut Ctx<'_, T>, x: Var) -> Result<Var> {
        Ok(cx.recurrent(self, x, None)?.y)
    }
}

macro_rules! layer_via_deref {
    ($($t:ty),*) => {$(
        /// The outputs `y` of the whole stack, as for [`Recurrent`].
        impl<T: Float> Layer<T> for $t {
            fn forward(&self, cx: &mut Ctx<'_, T>, x: Var) -> Result<Var> {
                Layer::<T>::forward(&**self, cx, x)
            }
        }
    )*};
}
layer_via_deref!(super::Lstm, super::Gru, super::Rnn);

/// Inverted dropout, PyTorch's `nn.Dropout`: in training mode each element is zeroed with
/// probability `p` and the rest are scaled by `1 / (1 - p)`; in evaluation mode it is the
/// identity. It has no parameters.
///
/// ```
/// use recur::nn::{Ctx, Dropout, Layer};
/// use recur::{ParamStore, Rng, Tape, Tensor};
/// let drop = Dropout::new(0.5)?;
/// let (ps, mut tape, mut rng) = (ParamStore::<f64>::new(), Tape::new(), Rng::new(3));
/// let x = tape.constant(Tensor::full(&[4, 100], 1.0)?);
/// let y = drop.forward(&mut Ctx::train(&mut tape, &ps, &mut rng), x)?;
/// let kept = tape.value(y)?.data().iter().filter(|&&v| v == 2.0).count();
/// assert!(kept > 150 && kept < 250);
/// let y = drop.forward(&mut Ctx::eval(&mut tape, &ps), x)?;
/// assert_eq!(y, x);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// Dropout with probability `p` in `[0, 1)`.
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid(
                "Dropout::new",
                format!("p must be in [0, 1), got {p}"),
            ));
        }
        Ok(Dropout { p })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }
}

impl Module for Dropout {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        Vec::new()
    }
}

impl<T: Float> Layer<T> for Dropout {
    fn forward(&self, cx: &mut Ctx<'_, T>, x: Var) -> Result<Var> {
        let p = self.p;
        let Some(rng) = cx.rng.as_deref_mut().filter(|_| p > 0.0) else {
            return Ok(x);
        };
        let dims = cx.tape.shape(x)?;
        let keep = T::from_f64(1.0 / (1.0 - p));
        let mask = Tensor::from_fn(
            dims.dims(),
            |_| {
                if rng.uniform() < p { T::ZERO } else { keep }
            },
        )?;
        let m = cx.tape.constant(mask);
        cx.tape.mul(x, m)
    }
}

/// An elementwise activation as a layer (PyTorch's `nn.Tanh`, `nn.ReLU`, `nn.Sigmoid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `tanh(x)`.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
}

impl Module for Act {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        Vec::new()
    }
}

impl<T: Float> Layer<T> for Act {
    fn forward(&self, cx: &mut Ctx<'_, T>, x: Var) -> Result<Var> {
        match self {
            Act::Tanh => cx.tape.tanh(x),
            Act::Relu => cx.tape.relu(x),
            Act::Sigmoid => cx.tape.sigmoid(x),
        }
    }
}

/// A layer that is also a [`Module`]: what [`Sequential`] holds.
pub trait ModuleLayer<T: Float>: Layer<T> + Module {}
impl<T: Float, L: Layer<T> + Module> ModuleLayer<T> for L {}

/// Layers applied one after the other, PyTorch's `nn.Sequential`: the parameters of layer `k`
/// are named `k.` + its own names (`0.weight`, `2.bias`), counting layers without parameters
/// too, so register layer `k` under `scope(prefix, "k")`.
///
/// ```
/// use recur::nn::{Act, Ctx, Dropout, Layer, Linear, Module, Sequential, scope};
/// use recur::{ParamStore, Rng, Tape, Tensor};
/// let (mut ps, mut rng) = (ParamStore::<f32>::new(), Rng::new(0));
/// let mlp = Sequential::new()
///     .push(Linear::new(&mut ps, &scope("mlp.", "0")?, 4, 8, true, &mut rng)?)
///     .push(Act::Tanh)
///     .push(Dropout::new(0.1)?)
///     .push(Linear::new(&mut ps, &scope("mlp.", "3")?, 8, 2, true, &mut rng)?);
/// let names: Vec<_> = mlp.named_params().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["0.weight", "0.bias", "3.weight", "3.bias"]);
/// let mut tape = Tape::new();
/// let x = tape.constant(Tensor::zeros(&[5, 4])?);
/// let y = mlp.forward(&mut Ctx::eval(&mut tape, &ps), x)?;
/// assert_eq!(tape.shape(y)?.dims(), &[5, 2]);
/// # Ok::<(), recur::Error>(())
/// ```
pub struct Sequential<T: Float> {
    layers: Vec<Box<dyn ModuleLayer<T>>>,
}

impl<T: Float> Default for Sequential<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> Sequential<T> {
    /// No layers (the identity).
    pub fn new() -> Self {
        Sequential { layers: Vec::new() }
    }

    /// Appends a layer.
    pub fn push(mut self, layer: impl ModuleLayer<T> + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl<T: Float> Module for Sequential<T> {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        let names: Vec<String> = (0..self.layers.len()).map(|k| k.to_string()).collect();
        let children: Vec<(&str, &dyn Module)> = names
            .iter()
            .zip(&self.layers)
            .map(|(n, l)| (n.as_str(), &**l as &dyn Module))
            .collect();
        named_children(&children)
    }
}

impl<T: Float> Layer<T> for Sequential<T> {
    fn forward(&self, cx: &mut Ctx<'_, T>, mut x: Var) -> Result<Var> {
        for l in &self.layers {
            x = l.forward(cx, x)?;
        }
        Ok(x)
    }
}

/// Backward from a scalar loss that also returns the loss's value, since the [`Grads`] borrow
/// the tape (no `tape.value` while they are alive).
///
/// ```
/// use recur::nn::backward_loss;
/// use recur::{Tape, Tensor};
/// let mut tape = Tape::<f64>::new();
/// let x = tape.input(Tensor::from_vec(vec![1.0, 2.0], &[2])?);
/// let sq = tape.mul(x, x)?;
/// let loss = tape.sum(sq)?;
/// let (value, grads) = backward_loss(&mut tape, loss)?;
/// assert_eq!(value, 5.0);
/// assert_eq!(grads.wrt(x).unwrap().data(), &[2.0, 4.0]);
/// # Ok::<(), recur::Error>(())
/// ```
pub fn backward_loss<T: Float>(tape: &mut Tape<T>, loss: Var) -> Result<(f64, Grads<'_, T>)> {
    let v = tape.value(loss)?;
    if v.numel() != 1 {
        return Err(Error::invalid(
            "backward_loss",
            format!("loss must be a scalar, got shape {}", v.shape()),
        ));
    }
    let value = v.data()[0].to_f64();
    Ok((value, tape.backward(loss)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_names() {
        for bad in ["embed", ".", "a..", ".a.", "a b."] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
        let e = check_prefix("embed").unwrap_err().to_string();
        assert!(e.contains("embedweight"), "{e}");
        assert!(scope("a.", "b.c").is_ok());
        assert!(scope("a.", "b..c").is_err());
        let ids = vec![("a.weight".to_string(), ParamId(0))];
        assert!(check_param_names("t", &ids).is_ok());
        let ids = vec![(".weight".to_string(), ParamId(0))];
        assert!(check_param_names("t", &ids).is_err());
    }
}
