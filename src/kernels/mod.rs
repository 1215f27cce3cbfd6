//! The only place in recur with `unsafe` code and SIMD.
//!
//! Every unsafe block carries a `// SAFETY:` comment, and every kernel is tested against a plain
//! scalar version of itself.

pub mod gemm;
pub mod gemm_nn;
pub mod gemm_nt;

pub use gemm::GemmShape;
pub mod gru;
pub mod lstm;
pub mod rnn;
pub mod simd;

pub use simd::SimdFloat;

#[cfg(test)]
mod testutil;
