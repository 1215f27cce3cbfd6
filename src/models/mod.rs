//! Ready-made models, each a short composition of the public API ([`crate::nn`]), and a
//! training loop for any model ([`Trainer`]).
//!
//! * [`SequenceClassifier`]: tokens or feature vectors -> stacked, optionally bidirectional
//!   RNN/LSTM/GRU -> last real state or mean over the real steps -> linear classes; `predict`
//!   runs without a tape.
//! * [`SequenceRegressor`]: many-to-many, one output vector per step, trained on the real steps.
//! * [`Trainer`]: steps or epochs over a [`crate::data::DataSource`], any optimizer, gradient
//!   clipping, a learning-rate schedule, validation every N steps, best/last checkpoints written
//!   atomically, resume, early stopping and progress events; f32 or f64.
//!
//! A model trains with the [`Trainer`] once it implements [`Objective`]: its loss on a batch.

mod classifier;
mod infer;
mod regressor;
mod trainer;

pub use classifier::{Pooling, SequenceClassifier, SequenceClassifierConfig};
pub use regressor::{DenseBatch, DenseDataset, SequenceRegressor, SequenceRegressorConfig};
pub use trainer::{Control, Event, FitSummary, Trainer, TrainerConfig};

use crate::nn::{Activation, CellKind, Ctx};
use crate::tape::Var;
use crate::tensor::Float;
use crate::{Error, Result};

/// What the [`Trainer`] trains: a model's scalar loss on one batch.
pub trait Objective<T: Float> {
    /// What one batch is.
    type Batch;

    /// The loss of `batch`, recorded on `cx`'s tape (training or evaluation mode, as `cx` says).
    /// `&mut self` lets a model keep state between batches (a state carried across chunks).
    fn loss(&mut self, cx: &mut Ctx<'_, T>, batch: &Self::Batch) -> Result<Var>;

    /// The model's configuration as a JSON value, recorded in checkpoints and checked on resume
    /// (default: `{}`).
    fn config_json(&self) -> String {
        "{}".into()
    }
}

/// The cell kind named `rnn` (tanh), `rnn_relu` (also `rnn-relu`), `lstm` or `gru`.
///
/// ```
/// use recur::models::cell_from_name;
/// use recur::nn::CellKind;
/// assert_eq!(cell_from_name("lstm")?, CellKind::Lstm);
/// assert!(cell_from_name("transformer").is_err());
/// # Ok::<(), recur::Error>(())
/// ```
pub fn cell_from_name(name: &str) -> Result<CellKind> {
    Ok(match name {
        "rnn" => CellKind::Rnn(Activation::Tanh),
        "rnn_relu" | "rnn-relu" => CellKind::Rnn(Activation::Relu),
        "lstm" => CellKind::Lstm,
        "gru" => CellKind::Gru,
        other => {
            return Err(Error::invalid(
                "cell",
                format!("unknown cell `{other}` (expected rnn, rnn_relu, lstm or gru)"),
            ));
        }
    })
}
