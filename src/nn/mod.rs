//! Neural-network layers: recurrent layers (RNN, LSTM, GRU) with PyTorch's options, parameter
//! names and layouts.

mod cell;
mod direction;
mod embedding;
mod fused;
/// For this crate's tests and benchmarks (see `recur::internals`).
#[doc(hidden)]
pub use fused::SingleRow;
mod inference;
pub mod init;
mod linear;
pub mod loss;
mod module;
pub mod parity;
mod recurrent;
pub(crate) mod reference;
mod regularize;
mod split_tuner;
mod state_dict;

pub use crate::kernels::rnn::Activation;
pub use cell::{
    Cell, CellConfig, CellState, GruCell, LstmCell, RecurrentCell, RnnCell, StateTensors,
};
pub use direction::{CellKind, DirectionParams, LayerNormParams};
pub use embedding::Embedding;
pub(crate) use fused::shard_ranges;
pub use inference::InferenceStep;
pub use linear::Linear;
pub use module::{
    Act, CarriedState, Ctx, Dropout, Layer, ModuleLayer, Sequential, backward_loss, check_prefix,
    named_children, scope,
};
pub use recurrent::{
    ForwardOptions, Gru, Implementation, Lstm, Recurrent, RecurrentConfig, RecurrentOutput, Rnn,
};
pub use state_dict::{
    Module, load_state_dict, load_state_dict_file, save_state_dict, state_dict, state_dict_bytes,
};
