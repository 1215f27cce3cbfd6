//! `SequenceClassifier`: tokens (or feature vectors) -> stacked recurrent layers -> one vector
//! per sequence (the last real state, or the mean over the real steps) -> linear classes.

use serde::{Deserialize, Serialize};

use super::infer::run_stack;
use super::{Objective, cell_from_name};
use crate::data::SeqBatch;
use crate::nn::{
    Ctx, Embedding, Linear, Module, Recurrent, RecurrentConfig, named_children, scope,
};
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::Var;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// How a sequence's outputs become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The final hidden state of the last layer at each sequence's last real step (both
    /// directions' final states, concatenated, when bidirectional), as PyTorch's `h_n[-1]` over a
    /// packed sequence.
    Last,
    /// The mean of the last layer's outputs over each sequence's real steps.
    Mean,
}

/// The shape of a [`SequenceClassifier`], stored as JSON with its checkpoints.
///
/// ```
/// use recur::models::{Pooling, SequenceClassifierConfig};
/// let cfg = SequenceClassifierConfig::tokens(100, 32, 64, 5).cell("lstm").layers(2).pooling(Pooling::Mean);
/// assert_eq!(cfg.embed, Some(32));
/// # let _ = cfg;
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequenceClassifierConfig {
    /// Token ids below `inputs` when `embed` is set (the vocabulary size); otherwise features per
    /// step of dense inputs.
    pub inputs: usize,
    /// Embedding size for token inputs; `None` for dense inputs `[T, B, inputs]`.
    pub embed: Option<usize>,
    /// `rnn`, `rnn_relu`, `lstm` or `gru`.
    pub cell: String,
    /// Hidden units per layer and direction.
    pub hidden: usize,
    /// Stacked recurrent layers.
    pub layers: usize,
    /// Run both directions.
    pub bidirectional: bool,
    /// Dropout between recurrent layers and before the head, in training.
    pub dropout: f64,
    /// How the outputs become one vector per sequence.
    pub pooling: Pooling,
    /// The number of classes.
    pub classes: usize,
}

impl SequenceClassifierConfig {
    /// Token inputs: a vocabulary of `vocab` ids embedded in `embed` dimensions, one GRU layer of
    /// `hidden` units, last-state pooling, `classes` classes, no dropout.
    pub fn tokens(vocab: usize, embed: usize, hidden: usize, classes: usize) -> Self {
        SequenceClassifierConfig {
            inputs: vocab,
            embed: Some(embed),
            cell: "gru".into(),
            hidden,
            layers: 1,
            bidirectional: false,
            dropout: 0.0,
            pooling: Pooling::Last,
            classes,
        }
    }

    /// Dense inputs of `features` per step; otherwise as [`SequenceClassifierConfig::tokens`].
    pub fn dense(features: usize, hidden: usize, classes: usize) -> Self {
        SequenceClassifierConfig {
            embed: None,
            ..Self::tokens(features, 0, hidden, classes)
        }
    }

    /// Sets the cell (`rnn`, `rnn_relu`, `lstm`, `gru`).
    pub fn cell(mut self, cell: &str) -> Self {
        self.cell = cell.to_string();
        self
    }

    /// Sets the number of layers.
    pub fn layers(mut self, n: usize) -> Self {
        self.layers = n;
        self
    }

    /// Sets bidirectional.
    pub fn bidirectional(mut self, on: bool) -> Self {
        self.bidirectional = on;
        self
    }

    /// Sets dropout.
    pub fn dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    /// Sets the pooling.
    pub fn pooling(mut self, p: Pooling) -> Self {
        self.pooling = p;
        self
    }
}

/// Embedding (or dense input) -> stacked, optionally bidirectional RNN/LSTM/GRU -> last real
/// state or mean over real steps -> [`Linear`] to class logits.
///
/// Parameters are named as the same model in PyTorch with attributes `embed`, `rnn` and `head`
/// (`embed.weight`, `rnn.weight_ih_l0`, `head.bias`), under the prefix given to `new`.
///
/// ```
/// use recur::data::SeqDataset;
/// use recur::models::{SequenceClassifier, SequenceClassifierConfig};
/// use recur::nn::Ctx;
/// use recur::{ParamStore, Rng, Tape};
///
/// let mut ps = ParamStore::<f32>::new();
/// let cfg = SequenceClassifierConfig::tokens(10, 8, 16, 3).bidirectional(true);
/// let model = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(0))?;
/// let data = SeqDataset::new(vec![vec![2, 3, 4], vec![5, 6]], vec![0, 2], 2)?;
/// let batch = data.gather(&[0, 1])?;
/// // On the tape, for training ...
/// let mut tape = Tape::new();
/// let logits = model.forward(&mut Ctx::eval(&mut tape, &ps), &batch.ids, batch.t_len, &batch.lengths)?;
/// assert_eq!(tape.shape(logits)?.dims(), &[2, 3]);
/// // ... and without one, for prediction: the same logits.
/// let p = model.predict(&ps, &batch.ids, batch.t_len, &batch.lengths)?;
/// assert!(p.max_abs_diff(tape.value(logits)?)? < 1e-5);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SequenceClassifier {
    config: SequenceClassifierConfig,
    embed: Option<Embedding>,
    rnn: Recurrent,
    head: Linear,
}

impl SequenceClassifier {
    /// Registers a new model in `store` under `prefix` (empty or ending with a dot).
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        prefix: &str,
        config: SequenceClassifierConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        let kind = cell_from_name(&config.cell)?;
        if config.classes == 0 || config.inputs == 0 {
            return Err(Error::invalid(
                "SequenceClassifier::new",
                "inputs and classes must be positive",
            ));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::invalid(
                "SequenceClassifier::new",
                format!("dropout must be in [0, 1), got {}", config.dropout),
            ));
        }
        let embed = config
            .embed
            .map(|e| Embedding::new(store, &scope(prefix, "embed")?, config.inputs, e, rng))
            .transpose()?;
        let rc = RecurrentConfig::new(config.embed.unwrap_or(config.inputs), config.hidden)
            .num_layers(config.layers)
            .bidirectional(config.bidirectional)
            .dropout(config.dropout);
        let rnn = Recurrent::new(store, &scope(prefix, "rnn")?, kind, rc, rng)?;
        let d = if config.bidirectional { 2 } else { 1 };
        let head = Linear::new(
            store,
            &scope(prefix, "head")?,
            d * config.hidden,
            config.classes,
            true,
            rng,
        )?;
        Ok(SequenceClassifier {
            config,
            embed,
            rnn,
            head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SequenceClassifierConfig {
        &self.config
    }

    /// Class logits `[B, C]` for token ids `[T, B]` (time-major, `ids.len() == t_len * B`) with
    /// one length per sequence, in any order.
    pub fn forward<T: Float>(
        &self,
        cx: &mut Ctx<'_, T>,
        ids: &[usize],
        t_len: usize,
        lengths: &[usize],
    ) -> Result<Var> {
        let Some(embed) = &self.embed else {
            return Err(Error::invalid(
                "SequenceClassifier::forward",
                "the model takes dense inputs: use forward_dense",
            ));
        };
        let x = cx.embed(embed, ids, &[t_len, lengths.len()])?;
        self.forward_dense(cx, x, lengths)
    }

    /// Class logits `[B, C]` for inputs `x` `[T, B, F]` (after the embedding, or dense).
    pub fn forward_dense<T: Float>(
        &self,
        cx: &mut Ctx<'_, T>,
        x: Var,
        lengths: &[usize],
    ) -> Result<Var> {
        let out = cx.recurrent(&self.rnn, x, Some(lengths))?;
        let (h, d, l) = (
            self.config.hidden,
            self.rnn.config().directions(),
            self.config.layers,
        );
        let b = lengths.len();
        let pooled = match self.config.pooling {
            Pooling::Last => {
                let last: Vec<Var> = (0..d)
                    .map(|dir| cx.tape.select(out.h_n, (l - 1) * d + dir))
                    .collect::<Result<_>>()?;
                if d == 1 {
                    last[0]
                } else {
                    cx.tape.concat(&last)?
                }
            }
            Pooling::Mean => {
                // y is zero past each length: sum over time, then scale each row by 1/length.
                let t_len = cx.tape.shape(out.y)?.dims()[0];
                let y2 = cx.tape.reshape(out.y, &[t_len, b * d * h])?;
                let ones = cx.constant(Tensor::full(&[1, t_len], T::ONE)?);
                let sum = cx.tape.matmul(ones, y2)?;
                let sum = cx.tape.reshape(sum, &[b, d * h])?;
                let inv = Tensor::from_fn(&[b, d * h], |i| {
                    T::from_f64(1.0 / lengths[i / (d * h)] as f64)
                })?;
                let inv = cx.constant(inv);
                cx.tape.mul(sum, inv)?
            }
        };
        let pooled =
            crate::nn::Layer::forward(&crate::nn::Dropout::new(self.config.dropout)?, cx, pooled)?;
        cx.linear(&self.head, pooled)
    }

    /// Class logits `[B, C]` without a tape (evaluation mode): the recurrent stack runs step by
    /// step over weights packed once ([`crate::nn::InferenceStep`]). Same inputs as
    /// [`SequenceClassifier::forward`].
    pub fn predict<T: Float>(
        &self,
        store: &ParamStore<T>,
        ids: &[usize],
        t_len: usize,
        lengths: &[usize],
    ) -> Result<Tensor<T>> {
        let Some(embed) = &self.embed else {
            return Err(Error::invalid(
                "SequenceClassifier::predict",
                "the model takes dense inputs: use predict_dense",
            ));
        };
        let x = embed.lookup(store, ids, &[t_len, lengths.len()])?;
        self.predict_dense(store, &x, lengths)
    }

    /// [`SequenceClassifier::predict`] for inputs `[T, B, F]`.
    pub fn predict_dense<T: Float>(
        &self,
        store: &ParamStore<T>,
        x: &Tensor<T>,
        lengths: &[usize],
    ) -> Result<Tensor<T>> {
        let out = run_stack(&self.rnn, store, x, lengths)?;
        let (h, d, l) = (
            self.config.hidden,
            self.rnn.config().directions(),
            self.config.layers,
        );
        let b = lengths.len();
        let mut pooled = vec![T::ZERO; b * d * h];
        match self.config.pooling {
            Pooling::Last => {
                for dir in 0..d {
                    let layer = &out.h_n.data()[((l - 1) * d + dir) * b * h..][..b * h];
                    for (row, src) in layer.chunks_exact(h).enumerate() {
                        pooled[row * d * h + dir * h..][..h].copy_from_slice(src);
                    }
                }
            }
            Pooling::Mean => {
                for (k, v) in out.y.data().iter().enumerate() {
                    pooled[k % (b * d * h)] += *v;
                }
                for (row, &len) in pooled.chunks_exact_mut(d * h).zip(lengths) {
                    let inv = T::from_f64(1.0 / len as f64);
                    row.iter_mut().for_each(|v| *v *= inv);
                }
            }
        }
        self.head
            .apply(store, &Tensor::from_vec(pooled, &[b, d * h])?)
    }

    /// The predicted class of each sequence of a batch, without a tape.
    pub fn classify<T: Float>(
        &self,
        store: &ParamStore<T>,
        batch: &SeqBatch,
    ) -> Result<Vec<usize>> {
        self.predict(store, &batch.ids, batch.t_len, &batch.lengths)?
            .argmax_rows()
    }
}

impl Module for SequenceClassifier {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        let mut children: Vec<(&str, &dyn Module)> = Vec::new();
        if let Some(e) = &self.embed {
            children.push(("embed", e));
        }
        children.push(("rnn", &self.rnn));
        children.push(("head", &self.head));
        named_children(&children)
    }
}

/// Mean cross-entropy of the batch's targets.
impl<T: Float> Objective<T> for SequenceClassifier {
    type Batch = SeqBatch;

    fn loss(&mut self, cx: &mut Ctx<'_, T>, batch: &SeqBatch) -> Result<Var> {
        let logits = self.forward(cx, &batch.ids, batch.t_len, &batch.lengths)?;
        cx.tape.cross_entropy(logits, &batch.targets, None)
    }

    fn config_json(&self) -> String {
        serde_json::to_string(&self.config).expect("a plain struct serialises")
    }
}
