//! Reverse-mode automatic differentiation on a Wengert list ("tape").
//!
//! Every op appends a node to the tape and returns [`Var`] handles to its outputs. Nodes are
//! appended in the order they are computed, so the list is already topologically sorted and
//! [`Tape::backward`] is a single reverse loop: no recursion (a chain of 10,000 ops cannot
//! overflow the stack) and no visited-set. Gradients always accumulate, so a value used twice
//! receives both contributions.
//!
//! Parameters live outside the tape in a [`ParamStore`]; [`Tape::param`] records a leaf that
//! refers to one, and [`Grads::param`] returns its gradient. Fused layers are nodes with several
//! outputs and a backward of their own ([`CustomOp`]).
//!
//! ```
//! use recur::{ParamStore, Tape, Tensor};
//! let mut ps = ParamStore::<f64>::new();
//! let w = ps.add("w", Tensor::from_vec(vec![2.0, -1.0], &[1, 2])?)?;
//! let mut tape = Tape::new();
//! let x = tape.constant(Tensor::from_vec(vec![3.0, 4.0], &[2, 1])?);
//! let wv = tape.param(&ps, w)?;
//! let y = tape.matmul(wv, x)?;      // [1, 1]: 2*3 - 1*4 = 2
//! let z = tape.tanh(y)?;
//! let loss = tape.sum(z)?;
//! let grads = tape.backward(loss)?;
//! let g = grads.param(w).unwrap();  // dz/dw = (1 - tanh(2)^2) * x^T
//! let d = 1.0 - 2f64.tanh().powi(2);
//! assert!((g.data()[0] - 3.0 * d).abs() < 1e-12 && (g.data()[1] - 4.0 * d).abs() < 1e-12);
//! # Ok::<(), recur::Error>(())
//! ```

mod backward;
mod custom;
pub(crate) mod ops;
mod pool;
mod profile;
mod var;

use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

pub use backward::Grads;
pub use custom::{CustomOp, Workspace};
pub(crate) use pool::Scratch;
pub use profile::OpProfile;
pub use var::Var;

use crate::kernels::bf16::Bf16Kernel;
use crate::params::{ParamId, ParamStore};
use crate::precision::Precision;
use crate::tensor::{self, Float, Shape, Tensor};
use crate::{Error, Result};
use pool::Pool;

/// Source of unique keys: every tape, and every cleared generation of a tape, gets a new one,
/// so a `Var` from elsewhere is detected.
static NEXT_KEY: AtomicU32 = AtomicU32::new(1);

fn fresh_key() -> u32 {
    NEXT_KEY.fetch_add(1, Ordering::Relaxed)
}

/// One recorded value.
pub(crate) struct Slot<T> {
    pub(crate) value: Tensor<T>,
    pub(crate) requires_grad: bool,
}

/// One recorded operation: what it was, which vars it read, which slots it wrote.
pub(crate) struct Node<T: Float> {
    pub(crate) op: ops::Op<T>,
    /// Range into `Tape::input_ids`.
    pub(crate) inputs: Range<u32>,
    /// Range of slot indices this node produced (consecutive).
    pub(crate) outputs: Range<u32>,
}

/// A record of computations for reverse-mode differentiation; see the [module docs](self).
pub struct Tape<T: Float> {
    key: u32,
    pub(crate) slots: Vec<Slot<T>>,
    pub(crate) nodes: Vec<Node<T>>,
    pub(crate) input_ids: Vec<u32>,
    /// Integer payloads of ops (token ids, class targets), referenced by range.
    pub(crate) aux: Vec<usize>,
    /// Slot of each parameter already on the tape, by `ParamId` index.
    pub(crate) param_slots: Vec<Option<u32>>,
    pub(crate) grads: Vec<Option<Tensor<T>>>,
    pub(crate) pool: Pool<T>,
    anomaly: bool,
    pub(crate) profiler: Option<Box<profile::Profiler>>,
    /// The kernel of the products in bf16 ([`Precision::Bf16`]), `None` in the tape's own type.
    bf16: Option<Bf16Kernel>,
}

impl<T: Float> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> Tape<T> {
    /// An empty tape.
    pub fn new() -> Self {
        Tape {
            key: fresh_key(),
            slots: Vec::new(),
            nodes: Vec::new(),
            input_ids: Vec::new(),
            aux: Vec::new(),
            param_slots: Vec::new(),
            grads: Vec::new(),
            pool: Pool::default(),
            anomaly: false,
            profiler: None,
            bf16: None,
        }
    }

    /// Sets the precision of the matrix products recorded from now on (see [`Precision`]);
    /// it stays set when the tape is cleared. [`Precision::Bf16`] needs an `f32` tape and a CPU
    /// with AVX512_BF16: otherwise this returns an error saying which is missing and the tape
    /// keeps its precision.
    ///
    /// ```
    /// use recur::{Precision, Tape};
    ///
    /// let mut tape = Tape::<f64>::new();
    /// let err = tape.set_precision(Precision::Bf16).unwrap_err();
    /// assert!(err.to_string().contains("f32 tape"), "{err}");
    /// assert_eq!(tape.precision(), Precision::F32);
    /// ```
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        self.bf16 = precision.kernel::<T>()?;
        Ok(())
    }

    /// The precision of the products recorded from now on: [`Precision::F32`] (the tape's own
    /// element type, `f32` or `f64`) unless [`Tape::set_precision`] set bf16.
    ///
    /// ```
    /// use recur::{Precision, Tape};
    /// let mut tape = Tape::<f32>::new();
    /// if tape.set_precision(Precision::Bf16).is_ok() {
    ///     assert_eq!(tape.precision(), Precision::Bf16);
    ///     tape.set_precision(Precision::F32)?; // back to f32 products
    /// }
    /// assert_eq!(tape.precision(), Precision::F32);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn precision(&self) -> Precision {
        if self.bf16.is_some() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    /// Products in bf16 on `kernel`, which may be [`Bf16Kernel::portable`] or
    /// [`Bf16Kernel::scalar`] on a CPU without AVX512_BF16 (the same values, more slowly): for
    /// tests of the bf16 path on any machine. Errors unless the tape is `f32`.
    #[doc(hidden)]
    pub fn set_bf16_kernel(&mut self, kernel: Bf16Kernel) -> Result<()> {
        crate::precision::check_f32::<T>()?;
        self.bf16 = Some(kernel);
        Ok(())
    }

    /// The kernel of the products in bf16, when the tape's precision is bf16.
    pub(crate) fn bf16_kernel(&self) -> Option<Bf16Kernel> {
        self.bf16
    }

    /// Empties the tape for the next step, keeping every buffer for reuse. All `Var`s from before
    /// become invalid (using one is an error).
    pub fn clear(&mut self) {
        self.pool.age();
        for node in &mut self.nodes {
            if let ops::Op::Custom(op) = &mut node.op {
                op.recycle(&mut Workspace {
                    pool: &mut self.pool,
                });
            }
        }
        for s in self.slots.drain(..) {
            self.pool.give(s.value.into_vec());
        }
        for g in self.grads.drain(..).flatten() {
            self.pool.give(g.into_vec());
        }
        self.nodes.clear();
        self.input_ids.clear();
        self.aux.clear();
        self.param_slots.clear();
        self.key = fresh_key();
        if let Some(p) = &mut self.profiler {
            p.restart();
        }
    }

    /// Anomaly mode: when on, every op checks its outputs (and backward its gradients) and
    /// returns [`Error::NonFinite`] naming the first op that produced a NaN or infinity. Leaves
    /// (inputs, constants, parameters) may hold anything: the first op that reads a non-finite
    /// value reports it.
    pub fn set_anomaly_detection(&mut self, on: bool) {
        self.anomaly = on;
    }

    /// Whether anomaly mode is on.
    pub fn anomaly_detection(&self) -> bool {
        self.anomaly
    }

    /// Number of recorded values.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No values recorded.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of recorded nodes (ops and leaves).
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Checks that `v` was made by this tape since its last clear.
    pub(crate) fn check(&self, op: &'static str, v: Var) -> Result<u32> {
        if v.key != self.key || v.idx as usize >= self.slots.len() {
            return Err(Error::ForeignVar { op, var: v.idx });
        }
        Ok(v.idx)
    }

    /// The value of a variable.
    pub fn value(&self, v: Var) -> Result<&Tensor<T>> {
        let i = self.check("Tape::value", v)?;
        Ok(&self.slots[i as usize].value)
    }

    /// The shape of a variable.
    pub fn shape(&self, v: Var) -> Result<Shape> {
        Ok(self.value(v)?.shape())
    }

    /// Whether gradients flow into this variable (it depends on a parameter or an input).
    pub fn requires_grad(&self, v: Var) -> Result<bool> {
        let i = self.check("Tape::requires_grad", v)?;
        Ok(self.slots[i as usize].requires_grad)
    }

    /// The tape's buffer pool, for a custom op's forward: buffers taken from it and given back
    /// (by the op's backward or [`CustomOp::recycle`]) are reused step after step.
    pub fn workspace(&mut self) -> Workspace<'_, T> {
        Workspace {
            pool: &mut self.pool,
        }
    }

    /// A zero-filled tensor from the tape's buffer pool (for op outputs).
    pub(crate) fn alloc(&mut self, shape: Shape) -> Tensor<T> {
        Tensor::from_parts(self.pool.take(shape.numel()), shape)
    }

    /// A pooled tensor of `shape` with stale contents, for one that will be overwritten in full.
    pub(crate) fn alloc_dirty(&mut self, shape: Shape) -> Tensor<T> {
        Tensor::from_parts(self.pool.take_dirty(shape.numel()), shape)
    }

    /// A pooled copy of `src`.
    pub(crate) fn alloc_copy(&mut self, src: &Tensor<T>) -> Tensor<T> {
        let mut v = self.pool.take_dirty(src.numel());
        tensor::copy(&mut v, src.data());
        Tensor::from_parts(v, src.shape())
    }

    /// Records a node; `outputs` become consecutive slots. Returns the first output's index.
    pub(crate) fn push_node(
        &mut self,
        op: ops::Op<T>,
        inputs: &[u32],
        outputs: impl IntoIterator<Item = Tensor<T>>,
    ) -> Result<u32> {
        let requires_grad = inputs.iter().any(|&i| self.slots[i as usize].requires_grad)
            || matches!(op, ops::Op::Param(_) | ops::Op::Input);
        let in_start = self.input_ids.len() as u32;
        self.input_ids.extend_from_slice(inputs);
        let out_start = self.slots.len() as u32;
        for value in outputs {
            self.slots.push(Slot {
                value,
                requires_grad,
            });
        }
        let out_end = self.slots.len() as u32;
        // Leaves are not checked: a non-finite input is reported by the first op that reads it
        // (and `input` / `constant` have no error to return).
        if self.anomaly && !op.is_leaf() {
            for s in out_start..out_end {
                check_finite(&self.slots[s as usize].value, || op.name().to_string())?;
            }
        }
        if let Some(p) = &mut self.profiler {
            p.forward(op.name());
        }
        self.nodes.push(Node {
            op,
            inputs: in_start..self.input_ids.len() as u32,
            outputs: out_start..out_end,
        });
        Ok(out_start)
    }

    pub(crate) fn var(&self, idx: u32) -> Var {
        Var { idx, key: self.key }
    }

    /// Records one output and returns its `Var`.
    pub(crate) fn push1(&mut self, op: ops::Op<T>, inputs: &[u32], out: Tensor<T>) -> Result<Var> {
        let i = self.push_node(op, inputs, [out])?;
        Ok(self.var(i))
    }

    /// A differentiable input leaf: [`Grads::wrt`] returns its gradient.
    pub fn input(&mut self, value: Tensor<T>) -> Var {
        self.push1(ops::Op::Input, &[], value)
            .expect("a leaf has no inputs to check")
    }

    /// An input leaf holding a copy of `value`, made in a buffer from the tape's pool: a loop
    /// that feeds a batch of the same shape every step then allocates nothing for it (moving a
    /// fresh tensor in with [`Tape::input`] allocates that tensor).
    pub fn input_copy(&mut self, value: &Tensor<T>) -> Var {
        let v = self.alloc_copy(value);
        self.input(v)
    }

    /// A constant leaf holding a copy of `value`, made in a buffer from the tape's pool (see
    /// [`Tape::input_copy`]): for data that needs no gradient, such as a batch of inputs when
    /// only the weights are trained.
    pub fn constant_copy(&mut self, value: &Tensor<T>) -> Var {
        let v = self.alloc_copy(value);
        self.constant(v)
    }

    /// A zero-filled constant leaf in a buffer from the tape's pool (a default initial state).
    pub(crate) fn zeros_constant(&mut self, shape: Shape) -> Var {
        let v = self.alloc(shape);
        self.constant(v)
    }

    /// A constant leaf: no gradient flows into it.
    pub fn constant(&mut self, value: Tensor<T>) -> Var {
        self.push1(ops::Op::Constant, &[], value)
            .expect("a leaf has no inputs to check")
    }

    /// A leaf holding a parameter's current value. Asking twice for the same parameter returns the
    /// same `Var`, so its gradient is accumulated in one place.
    pub fn param(&mut self, store: &ParamStore<T>, id: ParamId) -> Result<Var> {
        store.check(id)?;
        if let Some(Some(s)) = self.param_slots.get(id.index()) {
            return Ok(self.var(*s));
        }
        let value = self.alloc_copy(store.get(id));
        let v = self.push1(ops::Op::Param(id), &[], value)?;
        if self.param_slots.len() <= id.index() {
            self.param_slots.resize(id.index() + 1, None);
        }
        self.param_slots[id.index()] = Some(v.idx);
        Ok(v)
    }

    /// A copy of `v` that gradients do not flow through (stop-gradient), as used to truncate
    /// backpropagation through time between chunks.
    pub fn detach(&mut self, v: Var) -> Result<Var> {
        let i = self.check("Tape::detach", v)? as usize;
        let mut buf = self.pool.take_dirty(self.slots[i].value.numel());
        tensor::copy(&mut buf, self.slots[i].value.data());
        let value = Tensor::from_parts(buf, self.slots[i].value.shape());
        Ok(self.constant(value))
    }

    /// The parameter a leaf refers to, if `v` is a parameter leaf.
    pub fn param_of(&self, v: Var) -> Option<ParamId> {
        let i = self.check("Tape::param_of", v).ok()?;
        self.nodes
            .iter()
            .find(|n| n.outputs.start == i)
            .and_then(|n| match n.op {
                ops::Op::Param(id) => Some(id),
                _ => None,
            })
    }

    pub(crate) fn param_slot(&self, id: ParamId) -> Option<u32> {
        self.param_slots.get(id.index()).copied().flatten()
    }
}

/// Fails with [`Error::NonFinite`] at the first NaN or infinity in `t`.
pub(crate) fn check_finite<T: Float>(t: &Tensor<T>, op: impl FnOnce() -> String) -> Result<()> {
    if let Some((index, x)) = t.data().iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::NonFinite {
            op: op(),
            index,
            value: x.to_f64(),
        });
    }
    Ok(())
}
