//! The primitive ops. Each family's file holds the forward (a method on `Tape`) beside its
//! backward rule; this module holds the op list and the short dispatch `Tape::backward` calls.

mod elementwise;
mod embed;
mod linalg;
mod loss;
mod reduce;
mod shape;

pub(crate) use elementwise::Bcast;

use std::ops::Range;

use super::custom::CustomOp;
use super::{Slot, pool::Pool};
use crate::params::ParamId;
use crate::tensor::{Float, Shape, Tensor};

/// What a node computed, with the small payload its backward needs.
pub(crate) enum Op<T: Float> {
    Input,
    Constant,
    Param(ParamId),
    MatMul {
        trans_a: bool,
        trans_b: bool,
        /// The kernel of the products in bf16, when the tape's precision was bf16.
        bf16: Option<crate::kernels::bf16::Bf16Kernel>,
    },
    /// `x W^T + b` over `x`'s rows (`Tape::linear`), with a bias when it has three inputs.
    Linear {
        /// As in `MatMul`.
        bf16: Option<crate::kernels::bf16::Bf16Kernel>,
    },
    Add(Bcast),
    Sub(Bcast),
    Mul(Bcast),
    Scale(T),
    Sigmoid,
    Tanh,
    Relu,
    Exp,
    Log,
    Sum,
    Mean,
    Concat,
    Slice {
        start: usize,
    },
    Stack,
    Select {
        index: usize,
    },
    Reshape,
    Swap01,
    /// Token ids in `Tape::aux[ids]`.
    Embedding {
        ids: Range<usize>,
    },
    /// Targets in `Tape::aux[targets]` (`usize::MAX` = not counted); softmax saved in the
    /// node's second output slot.
    CrossEntropy {
        targets: Range<usize>,
        count: usize,
    },
    Mse,
    Custom(Box<dyn CustomOp<T>>),
}

impl<T: Float> Op<T> {
    pub(crate) fn name(&self) -> &str {
        match self {
            Op::Input => "input",
            Op::Constant => "constant",
            Op::Param(_) => "param",
            Op::MatMul { .. } => "matmul",
            Op::Linear { .. } => "linear",
            Op::Add(_) => "add",
            Op::Sub(_) => "sub",
            Op::Mul(_) => "mul",
            Op::Scale(_) => "scale",
            Op::Sigmoid => "sigmoid",
            Op::Tanh => "tanh",
            Op::Relu => "relu",
            Op::Exp => "exp",
            Op::Log => "log",
            Op::Sum => "sum",
            Op::Mean => "mean",
            Op::Concat => "concat",
            Op::Slice { .. } => "slice",
            Op::Stack => "stack",
            Op::Select { .. } => "select",
            Op::Reshape => "reshape",
            Op::Swap01 => "swap01",
            Op::Embedding { .. } => "embedding",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::Mse => "mse",
            Op::Custom(c) => c.name(),
        }
    }

    pub(crate) fn is_leaf(&self) -> bool {
        matches!(self, Op::Input | Op::Constant | Op::Param(_))
    }
}

/// Gradient buffers during backward: created zero-filled on first use, then accumulated into.
pub(crate) struct GradAcc<'a, T> {
    pub(crate) grads: &'a mut [Option<Tensor<T>>],
    pub(crate) pool: &'a mut Pool<T>,
    pub(crate) slots: &'a [Slot<T>],
}

impl<'a, T: Float> GradAcc<'a, T> {
    /// The value of slot `i`.
    pub(crate) fn value(&self, i: u32) -> &'a Tensor<T> {
        &self.slots[i as usize].value
    }

    /// Whether slot `i` needs a gradient.
    pub(crate) fn needs(&self, i: u32) -> bool {
        self.slots[i as usize].requires_grad
    }

    /// The gradient buffer of slot `i`, zero-filled if this is its first contribution.
    pub(crate) fn buf(&mut self, i: u32) -> &mut [T] {
        self.buf_from(i, Pool::take).0
    }

    /// The gradient buffer of slot `i` and whether this is its first contribution. A first
    /// buffer is not zero-filled: it holds stale values, and the caller must overwrite every one
    /// (saving a pass over large gradients that are set, not added to).
    pub(crate) fn buf_or_new(&mut self, i: u32) -> (&mut [T], bool) {
        self.buf_from(i, Pool::take_dirty)
    }

    /// Slot `i`'s gradient buffer, a new one from `take` on its first contribution (then `true`).
    fn buf_from(&mut self, i: u32, take: fn(&mut Pool<T>, usize) -> Vec<T>) -> (&mut [T], bool) {
        let i = i as usize;
        let new = self.grads[i].is_none();
        if new {
            let shape: Shape = self.slots[i].value.shape();
            self.grads[i] = Some(Tensor::from_parts(take(self.pool, shape.numel()), shape));
        }
        (
            self.grads[i].as_mut().expect("just created").data_mut(),
            new,
        )
    }
}

/// Runs the backward rule of a single-output primitive op. `gy` is the gradient of its (first)
/// output; `outs` its output slots; `aux` the tape's integer payloads.
pub(crate) fn backward<T: Float>(
    op: &Op<T>,
    ins: &[u32],
    outs: Range<u32>,
    gy: &Tensor<T>,
    aux: &[usize],
    acc: &mut GradAcc<'_, T>,
) {
    let slots = acc.slots;
    let val = |i: u32| &slots[i as usize].value;
    let y = val(outs.start);
    match op {
        Op::Input | Op::Constant | Op::Param(_) | Op::Custom(_) => {}
        Op::MatMul {
            trans_a,
            trans_b,
            bf16,
        } => linalg::matmul_backward((*trans_a, *trans_b), *bf16, ins[0], ins[1], gy, acc),
        Op::Linear { bf16 } => linalg::linear_backward(*bf16, ins, gy, acc),
        Op::Add(b) => elementwise::add_backward(*b, ins[0], ins[1], T::ONE, gy, acc),
        Op::Sub(b) => elementwise::add_backward(*b, ins[0], ins[1], -T::ONE, gy, acc),
        Op::Mul(b) => elementwise::mul_backward(*b, ins[0], ins[1], gy, acc),
        Op::Scale(a) => elementwise::scale_backward(*a, ins[0], gy, acc),
        Op::Sigmoid | Op::Tanh | Op::Relu | Op::Exp | Op::Log => {
            elementwise::unary_backward(op, ins[0], y, gy, acc)
        }
        Op::Sum => reduce::sum_backward(ins[0], T::ONE, gy, acc),
        Op::Mean => {
            let n = T::from_usize(val(ins[0]).numel());
            reduce::sum_backward(ins[0], T::ONE / n, gy, acc)
        }
        Op::Concat => shape::concat_backward(ins, gy, acc),
        Op::Slice { start } => shape::slice_backward(ins[0], *start, gy, acc),
        Op::Stack => shape::stack_backward(ins, gy, acc),
        Op::Select { index } => shape::select_backward(ins[0], *index, gy, acc),
        Op::Reshape => shape::reshape_backward(ins[0], gy, acc),
        Op::Swap01 => shape::swap01_backward(ins[0], gy, acc),
        Op::Embedding { ids } => embed::embedding_backward(ins[0], &aux[ids.clone()], gy, acc),
        Op::CrossEntropy { targets, count } => {
            let probs = val(outs.start + 1);
            loss::cross_entropy_backward(ins[0], probs, &aux[targets.clone()], *count, gy, acc)
        }
        Op::Mse => loss::mse_backward(ins[0], ins[1], gy, acc),
    }
}
