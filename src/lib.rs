//! # recur
//!
//! Train recurrent sequence models (vanilla RNN, LSTM, GRU) on CPUs, fast and with gradients
//! proven right. recur is a small numerics engine of its own: a [`Tensor`] type, a tape-based
//! reverse-mode autodiff ([`Tape`]), fused SIMD gate kernels, a cache-tiled matrix product and
//! rayon across the batch.
//!
//! The chapter's worked example, a 2-unit tanh RNN `h_t = tanh(W_h h_{t-1} + W_x x_t + b)`, on
//! the tape:
//!
//! ```
//! use recur::{ParamStore, Tape, Tensor};
//!
//! let mut ps = ParamStore::<f64>::new();
//! let w_h = ps.add("W_h", Tensor::from_vec(vec![0.5, 0.1, 0.2, 0.6], &[2, 2])?)?;
//! let w_x = ps.add("W_x", Tensor::from_vec(vec![0.3, 0.4], &[2, 1])?)?;
//!
//! let mut tape = Tape::new();
//! let (wh, wx) = (tape.param(&ps, w_h)?, tape.param(&ps, w_x)?);
//! let mut h = tape.constant(Tensor::zeros(&[1, 2])?); // h_0, as a row
//! for x in [1.0, -1.0, 2.0] {
//!     let x_t = tape.constant(Tensor::from_vec(vec![x], &[1, 1])?);
//!     let z = tape.matmul_t(h, false, wh, true)?;          // h W_h^T
//!     let zx = tape.matmul_t(x_t, false, wx, true)?;       // x W_x^T
//!     let z = tape.add(z, zx)?;
//!     h = tape.tanh(z)?;
//! }
//! let h3 = tape.value(h)?.data().to_vec();
//! assert!((h3[0] - 0.486).abs() < 5e-4 && (h3[1] - 0.610).abs() < 5e-4);
//!
//! let loss = tape.sum(h)?;
//! let grads = tape.backward(loss)?;
//! assert_eq!(grads.param(w_h).unwrap().dims(), &[2, 2]);
//! # Ok::<(), recur::Error>(())
//! ```
//!
//! Models are plain structs of layers with a short forward ([`nn::Ctx`], [`nn::Layer`]); the
//! ready-made ones, a training loop and data pipelines are in [`models`] and [`data`]; the
//! [`guide`] walks from a `label<TAB>text` file to a saved model and predictions, and
//! [`prelude`] imports the common names at once.
//!
//! Build with `-C target-cpu=native` (this crate's `.cargo/config.toml` does) so the SIMD kernels
//! use the machine's widest vectors. [`cpu`] tells what the machine reports about itself (the
//! kernels choose from it) and measures one core's peak rate, to quote timings against.

pub mod cpu;
pub mod data;
pub mod diagnostics;
pub mod dist;
mod error;
pub mod guide;
pub mod io;
pub(crate) mod kernels;
pub mod models;
pub mod nn;
pub mod optim;
mod params;
mod precision;
pub mod prelude;
mod rng;
pub mod tape;
pub mod tensor;
mod threads;

pub use error::{Error, Result};
pub use optim::Optimizer;
pub use params::{ParamId, ParamStore};
pub use precision::Precision;
pub use rng::Rng;
pub use tape::{CustomOp, Grads, Tape, Var, Workspace};
pub use tensor::{Float, Shape, Tensor};
pub use threads::{set_threads, threads, with_threads};

/// The SIMD kernels, products and packings behind the layers, for this crate's own benchmarks
/// and fuzz targets. Not part of the public API: anything here may change in any release.
#[doc(hidden)]
pub mod internals {
    pub use crate::kernels::aligned::AlignedBuf;
    pub use crate::kernels::bf16;
    pub use crate::kernels::gemm::{GemmShape, dgemm, sgemm};
    pub use crate::kernels::gemm_nn::{
        AStorage, PackedB, Rows, Tiles, gemm_packed_acc, gemm_packed_acc_rows, gemm_set_blocked_b,
    };
    pub use crate::kernels::gemm_nt::gemm_nt_acc;
    pub use crate::kernels::gemv::{AlignedMatrix, gemv_cols_acc, gemv_rows_acc};
    pub use crate::kernels::peak::{fma_chains, fma_chains_flops};
    pub use crate::kernels::simd::{SimdFloat, map_inplace};
    pub use crate::kernels::sweep::Sweep;
    pub use crate::kernels::{gru, lstm, rnn};
    pub use crate::nn::SingleRow;
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
