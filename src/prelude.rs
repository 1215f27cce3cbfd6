//! The common types and traits in one import: `use recur::prelude::*;`.
//!
//! It brings the [`Optimizer`] trait (so `opt.step(...)` works), the
//! tensor, tape and parameter types, the layers and the forward context, the data pipeline types,
//! and the models and training loop.

pub use crate::data::{
    BatchPlan, DataSource, Labels, LmChunk, LmStreams, SeqBatch, SeqDataset, Tokenizer, Vocab,
};
pub use crate::models::{
    Event, Objective, Pooling, SequenceClassifier, SequenceClassifierConfig, SequenceRegressor,
    SequenceRegressorConfig, Trainer, TrainerConfig,
};
pub use crate::nn::{
    CarriedState, CellKind, Ctx, Dropout, Embedding, Gru, Layer, Linear, Lstm, Module,
    RecurrentConfig, Rnn, Sequential, backward_loss, scope,
};
pub use crate::optim::{
    Adam, AdamConfig, AdamW, LrSchedule, Optimizer, Sgd, SgdConfig, clip_grad_norm,
};
pub use crate::{
    Error, Float, ParamId, ParamStore, Result, Rng, Tape, Tensor, Var, set_threads, with_threads,
};
