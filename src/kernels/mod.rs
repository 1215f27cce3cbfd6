//! The only place in recur with `unsafe` code and SIMD.
//!
//! Every unsafe block carries a `// SAFETY:` comment, and every kernel is tested against a plain
//! scalar version of itself.
//!
//! - [`simd`]: the [`SimdFloat`] trait, vectorised `exp`, `sigmoid`, `tanh` (`f32x16`, `f64x8`).
//! - [`gemm`]: large products over matrixmultiply (all timesteps at once).
//! - [`gemm_nn`]: the per-timestep recurrent product over a weight packed once per sequence.
//! - [`gemm_nt`]: the same product over a weight as stored (for single inference steps).
//! - [`handoff`]: a spinning helper thread that takes half of each step's product (small batches).
//! - [`rnn`], [`lstm`], [`gru`]: the fused gate kernels, forward and backward, one file per cell.

pub mod gemm;
pub mod gemm_nn;
pub mod gemm_nt;
pub mod handoff;

pub use gemm::GemmShape;
pub mod gru;
pub mod lstm;
pub mod rnn;
pub mod simd;

pub use simd::SimdFloat;

#[cfg(test)]
pub(crate) mod testutil;
