//! Ready-made models, each a short composition of the public API ([`crate::nn`]), and a
//! training loop for any model ([`Trainer`]).
//!
//! * [`CharLm`]: the character language model, trained on stream chunks with the state carried
//!   across them; `generate` (temperature, top-k, seed) runs without a tape.
//! * [`SequenceClassifier`]: tokens or feature vectors -> stacked, optionally bidirectional
//!   RNN/LSTM/GRU -> last real state or mean over the real steps -> linear classes; `predict`
//!   runs without a tape.
//! * [`TextClassifier`]: a [`SequenceClassifier`] over texts with its vocabulary and labels,
//!   saved with its checkpoints and loaded from them alone ([`TextClassifier::load`]).
//! * [`SequenceRegressor`]: many-to-many, one output vector per step, trained on the real steps.
//! * [`Trainer`]: steps or epochs over a [`crate::data::DataSource`], any optimizer, gradient
//!   clipping, a learning-rate schedule, validation every N steps, best/last checkpoints written
//!   atomically, resume, early stopping and progress events; f32 or f64.
//!
//! A model trains with the [`Trainer`] once it implements [`Objective`]: its loss on a batch.

mod charlm;
mod classifier;
mod history;
mod infer;
mod regressor;
mod run;
mod text;
mod trainer;

pub use charlm::{CharLm, CharLmConfig};
pub use classifier::{Pooling, SequenceClassifier, SequenceClassifierConfig};
pub use history::History;
pub use regressor::{DenseBatch, DenseDataset, SequenceRegressor, SequenceRegressorConfig};
pub use run::RunInfo;
pub use text::{ClassStats, TextClassifier, TextClassifierConfig, class_report};
pub use trainer::{Control, Ended, Event, FitSummary, Trainer, TrainerConfig, evaluate};

use crate::nn::{CellKind, Ctx};
use crate::params::ParamStore;
use crate::tape::Var;
use crate::tensor::{Float, Tensor};
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

    /// Tensors the model keeps from one batch to the next (a recurrent state carried across
    /// chunks), by name: saved in checkpoints so that a resumed run continues exactly, and kept
    /// aside while the [`Trainer`] validates. Default: none.
    fn state_tensors(&self) -> Vec<(String, Tensor<T>)> {
        Vec::new()
    }

    /// Called by the [`Trainer`] after each validation (before the checkpoints are written) with
    /// the current parameters, the step and the validation loss: for work that needs the
    /// trained model, such as writing a sample. An error stops training. Default: nothing.
    fn on_eval(&mut self, store: &ParamStore<T>, step: usize, val_loss: Option<f64>) -> Result<()> {
        let _ = (store, step, val_loss);
        Ok(())
    }

    /// Restores what [`Objective::state_tensors`] returned. Default: nothing to restore.
    fn load_state_tensors(&mut self, tensors: Vec<(String, Tensor<T>)>) -> Result<()> {
        let _ = tensors;
        Ok(())
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
    CellKind::from_name(name).ok_or_else(|| {
        Error::invalid(
            "cell",
            format!("unknown cell `{name}` (expected rnn, rnn-relu, lstm or gru)"),
        )
    })
}
