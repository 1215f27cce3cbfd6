//! Neural-network layers: recurrent layers (RNN, LSTM, GRU) with PyTorch's options, parameter
//! names and layouts.

mod embedding;
mod fused;
pub mod init;
mod linear;
pub mod loss;
mod recurrent;
pub(crate) mod reference;

pub use crate::kernels::rnn::Activation;
pub use embedding::Embedding;
pub use linear::Linear;
pub use recurrent::{
    CellKind, DirectionParams, ForwardOptions, Gru, Implementation, Lstm, Recurrent,
    RecurrentConfig, RecurrentOutput, Rnn,
};
