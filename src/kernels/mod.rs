//! The only place in recur with `unsafe` code and SIMD.
//!
//! Every unsafe block carries a `// SAFETY:` comment, and every kernel is tested against a plain
//! scalar version of itself.
//!
//! - [`peak`]: independent chains of fused multiply-adds: the core's own limit.
//! - [`simd`]: the [`SimdFloat`] trait, vectorised `exp`, `sigmoid`, `tanh` (`f32x16`, `f64x8`).
//! - [`aligned`]: buffers whose values start on a cache line, for the streamed weights.
//! - [`gemm`]: products over matrixmultiply, for the tape's general ops.
//! - [`bf16`]: mixed-precision products (bf16 operands, f32 accumulation) on AVX512_BF16, with
//!   a portable scalar model of the same arithmetic.
//! - [`gemm_nn`]: products against a packed operand: the per-timestep recurrent product over a
//!   weight packed once per sequence, and the fused layers' products over all time steps.
//! - [`gemv`]: the same product for a batch of one row, over `W_hh` as stored (no packing).
//! - [`gemm_nt`]: the same product over a weight as stored (for single inference steps).
//! - [`sweep`]: the order a per-step product walks its weight in (alternated to reuse L2).
//! - [`transpose`]: square blocks transposed in registers, for the transposed packing of weights.
//! - [`handoff`]: a spinning helper thread that takes half of each step's product (small batches).
//! - [`rnn`], [`lstm`], [`gru`]: the fused gate kernels, forward and backward, one file per cell.
//! - [`softmax`]: softmax cross-entropy over a row of logits, forward and backward (vector `exp`).
//! - [`regularize`]: the elementwise parts of recurrent dropout and zoneout.
//! - [`layer_norm`]: layer normalization of one row, forward and backward (safe loops).
//! - [`block`]: one or two vectors at a time, so each gate kernel is written once and runs two
//!   independent vectors per round.

pub mod aligned;
pub mod bf16;
pub mod block;
pub mod gemm;
pub mod gemm_nn;
pub mod gemm_nt;
pub mod gemv;
pub mod handoff;

pub use gemm::GemmShape;
pub mod gru;
pub mod layer_norm;
pub mod lstm;
pub mod peak;
pub mod regularize;
pub mod rnn;
pub mod simd;
pub mod softmax;
pub mod sweep;
pub mod transpose;

pub use simd::SimdFloat;
pub use sweep::Sweep;

#[cfg(test)]
pub(crate) mod testutil;
