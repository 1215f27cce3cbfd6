//! Nodes with a backward of their own: fused layers and user-defined ops.

use crate::Result;
use crate::tensor::{Float, Tensor};

/// A node whose forward was computed outside the tape and whose backward it supplies itself.
///
/// Fused layers are custom ops: the layer runs its kernels, keeps what backward needs inside the
/// op value, and records the node with [`crate::Tape::custom`], which returns one `Var` per output
/// (y, h_n, c_n). The op set of the tape is thereby open.
pub trait CustomOp<T: Float>: Send {
    /// A short name, used in error and anomaly messages.
    fn name(&self) -> &str;

    /// Adds the gradient of the loss with respect to each input into `grad_inputs`.
    ///
    /// - `inputs` and `outputs`: the values the node read and produced.
    /// - `grad_outputs[j]`: the gradient of the loss with respect to output `j`, or `None` where
    ///   that output did not reach the loss (treat it as zeros).
    /// - `grad_inputs[i]`: `Some` zero-filled tensor shaped like input `i` where that input needs a
    ///   gradient, `None` where it does not (skip that work). Add into it (`+=`).
    fn backward(
        &mut self,
        inputs: &[&Tensor<T>],
        outputs: &[&Tensor<T>],
        grad_outputs: &[Option<&Tensor<T>>],
        grad_inputs: &mut [Option<Tensor<T>>],
    ) -> Result<()>;
}
