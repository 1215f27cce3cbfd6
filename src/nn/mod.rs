//! Neural-network layers: recurrent layers (RNN, LSTM, GRU) with PyTorch's options, parameter
//! names and layouts.

mod fused;
mod recurrent;
mod reference;

pub use crate::kernels::rnn::Activation;
pub use fused::InferenceStep;
pub use recurrent::{
    CellKind, DirectionParams, ForwardOptions, Gru, Implementation, Lstm, Recurrent,
    RecurrentConfig, RecurrentOutput, Rnn,
};
