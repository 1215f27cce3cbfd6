//! The recurrent layers and cells: fused kernels against the reference, PyTorch parity, the single-
//! step paths, and results independent of the thread count.

#[path = "../common/mod.rs"]
mod common;

mod bf16;
mod cells;
mod inference_step;
mod layer_norm;
mod layers_fused_vs_reference;
mod parity;
mod parity_modules;
mod regularizers;
mod support;
mod threads_bit_identical;
