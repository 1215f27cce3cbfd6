//! Nodes with a backward of their own: fused layers and user-defined ops.

use super::pool::{Pool, Scratch};
use crate::Result;
use crate::tensor::{Float, Tensor};

/// A node whose forward was computed outside the tape and whose backward it supplies itself.
///
/// Fused layers are custom ops: the layer runs its kernels, keeps what backward needs inside the
/// op value, and records the node with [`crate::Tape::custom`], which returns one `Var` per output
/// (y, h_n, c_n). The op set of the tape is thereby open.
///
/// Large buffers should come from the tape's [`Workspace`] ([`crate::Tape::workspace`] in the
/// forward, the `ws` argument in the backward) and go back to it, in the backward or in
/// [`CustomOp::recycle`]: a training loop that clears its tape each step then reuses the same
/// memory every step instead of allocating (and page-faulting) it anew.
pub trait CustomOp<T: Float>: Send {
    /// A short name, used in error and anomaly messages.
    fn name(&self) -> &str;

    /// Adds the gradient of the loss with respect to each input into `grad_inputs`.
    ///
    /// - `inputs` and `outputs`: the values the node read and produced.
    /// - `grad_outputs[j]`: the gradient of the loss with respect to output `j`, or `None` where
    ///   that output did not reach the loss (treat it as zeros).
    /// - `grad_inputs[i]`: `Some` zero-filled tensor shaped like input `i` where that input needs a
    ///   gradient, `None` where it does not (skip that work). Add into it (`+=`); an op whose
    ///   [`CustomOp::overwrites_grad_inputs`] is `true` gets stale contents instead and must
    ///   write every element.
    /// - `ws`: the tape's buffer pool, for temporaries.
    fn backward(
        &mut self,
        inputs: &[&Tensor<T>],
        outputs: &[&Tensor<T>],
        grad_outputs: &[Option<&Tensor<T>>],
        grad_inputs: &mut [Option<Tensor<T>>],
        ws: &mut Workspace<'_, T>,
    ) -> Result<()>;

    /// Whether [`CustomOp::backward`] writes every element of each `grad_inputs` tensor it is
    /// given (`=`) instead of adding into it. The tape then hands it buffers with stale
    /// contents, saving a pass that zeroes them. The default, `false`, keeps the contract
    /// above: zero-filled tensors to add into.
    fn overwrites_grad_inputs(&self) -> bool {
        false
    }

    /// Hands the op's buffers back to the tape when it is cleared ([`crate::Tape::clear`]).
    /// The default keeps nothing back: the op's memory is simply freed.
    fn recycle(&mut self, ws: &mut Workspace<'_, T>) {
        let _ = ws;
    }
}

/// The tape's pool of buffers, lent to custom ops: buffers taken here and given back are reused
/// by later ops and later steps.
pub struct Workspace<'a, T> {
    pub(crate) pool: &'a mut Pool<T>,
}

impl<T: Float> Workspace<'_, T> {
    /// A zero-filled buffer of length `n`.
    pub fn zeroed(&mut self, n: usize) -> Vec<T> {
        self.pool.take(n)
    }

    /// A buffer of length `n` holding stale values (every element initialised, none meaningful),
    /// for a buffer that will be overwritten in full: it skips the zeroing pass.
    pub fn scratch(&mut self, n: usize) -> Vec<T> {
        self.pool.take_dirty(n)
    }

    /// [`Workspace::scratch`] as a [`Scratch`], whose buffer keeps the values past `n` it
    /// held before: give it back with [`Workspace::give_back`].
    pub(crate) fn lend(&mut self, n: usize) -> Scratch<T> {
        self.pool.lend(n)
    }

    /// Gives a [`Workspace::lend`] buffer back for reuse.
    pub(crate) fn give_back(&mut self, s: Scratch<T>) {
        self.pool.give_back(s);
    }

    /// Gives a buffer back for reuse.
    pub fn give(&mut self, v: Vec<T>) {
        self.pool.give(v);
    }
}
