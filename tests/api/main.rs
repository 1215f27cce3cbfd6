//! The library's API: tensors, the tape and its ops, losses, initialisers, optimizers, checkpoints
//! and state dicts, and the chapter's worked example and gradients.

#[path = "../common/mod.rs"]
mod common;

mod chapter_gradients;
mod checkpoint;
mod errors;
mod extremes;
mod init;
mod library;
mod linear_embedding;
mod loss;
mod micro_batches;
mod ops_gradcheck;
mod optim_pytorch;
mod optim_state;
mod seed_rnn;
mod state_dict;
mod tape;
