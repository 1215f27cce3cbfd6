//! `TextClassifier`: a [`SequenceClassifier`] over texts, with the vocabulary and labels it was
//! trained with, so that one checkpoint holds everything needed to classify new texts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Objective, SequenceClassifier, SequenceClassifierConfig};
use crate::data::{Example, Labels, SeqBatch, SeqDataset, Tokenizer, Vocab, pad_ids};
use crate::io::checkpoint::load_checkpoint_params;
use crate::nn::{Ctx, Module};
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::Var;
use crate::tensor::Float;
use crate::{Error, Result};

/// The shape of a [`TextClassifier`] with its vocabulary and labels, stored as JSON with its
/// checkpoints (the [`Trainer`](super::Trainer) records it as the model's configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextClassifierConfig {
    /// Always [`TextClassifier::KIND`]: tells these checkpoints from other models'.
    pub kind: String,
    /// How texts are cut into tokens: `char` or `word` ([`Tokenizer::name`]).
    pub tokens: String,
    /// The vocabulary's tokens after the special ids, in id order ([`Vocab::tokens`]).
    pub vocab: Vec<String>,
    /// The class labels in id order ([`Labels::names`]).
    pub labels: Vec<String>,
    /// The network; its `inputs` is the vocabulary's size and `classes` the number of labels.
    pub model: SequenceClassifierConfig,
}

/// A text classifier: texts cut into characters or words ([`Vocab`]) -> [`SequenceClassifier`]
/// -> one of the [`Labels`]. Trains with the [`Trainer`](super::Trainer) on the
/// [`SeqDataset`] of [`TextClassifier::dataset`]; its checkpoints record the vocabulary and the
/// labels, so [`TextClassifier::load`] rebuilds it from the file alone.
///
/// ```
/// use recur::data::{parse_labelled, Labels, Tokenizer, Vocab};
/// use recur::models::{SequenceClassifierConfig, TextClassifier, Trainer, TrainerConfig};
/// use recur::optim::{Adam, AdamConfig};
/// use recur::{ParamStore, Rng};
///
/// let ex = parse_labelled("a\txx\nb\tyy\na\txxx\nb\tyyy\n", "inline")?;
/// let vocab = Vocab::build(Tokenizer::Chars, ex.iter().map(|e| e.text.as_str()), 1)?;
/// let labels = Labels::new(ex.iter().map(|e| e.label.as_str()))?;
/// let mut ps = ParamStore::<f32>::new();
/// let net = SequenceClassifierConfig::tokens(0, 4, 8, 0); // inputs and classes are set by `new`
/// let mut model = TextClassifier::new(&mut ps, vocab, labels, net, &mut Rng::new(0))?;
/// let mut data = model.dataset(&ex, 4)?;
/// let mut opt = Adam::new(AdamConfig::default().lr(0.05))?;
/// Trainer::new(TrainerConfig::epochs(30)).fit(&mut model, &mut ps, &mut opt, &mut data, None)?;
/// assert_eq!(model.predict(&ps, &["xxxx", "yy"], 32)?, [0, 1]);
/// assert_eq!(model.labels().name(1)?, "b");
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct TextClassifier {
    config: TextClassifierConfig,
    vocab: Vocab,
    labels: Labels,
    net: SequenceClassifier,
}

impl TextClassifier {
    /// The `kind` of [`TextClassifierConfig`].
    pub const KIND: &'static str = "text-classifier";

    /// Registers a new model in `store` for texts of `vocab` and classes `labels`; `net` gives
    /// the network (cell, sizes, ...), its `inputs`, `embed` (at least 1) and `classes` are
    /// taken from `vocab` and `labels`.
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        vocab: Vocab,
        labels: Labels,
        mut net: SequenceClassifierConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        net.inputs = vocab.len();
        net.classes = labels.len();
        let config = TextClassifierConfig {
            kind: Self::KIND.into(),
            tokens: vocab.tokenizer().name().into(),
            vocab: vocab.tokens().to_vec(),
            labels: labels.names().to_vec(),
            model: net,
        };
        Self::from_config(store, config, rng)
    }

    /// Registers a new model in `store` as `config` describes (for instance one read back with
    /// [`TextClassifier::read_config`]). An inconsistent configuration is an error.
    pub fn from_config<T: Float>(
        store: &mut ParamStore<T>,
        config: TextClassifierConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        const OP: &str = "TextClassifier";
        if config.kind != Self::KIND {
            return Err(Error::invalid(
                OP,
                format!("kind is {:?}, expected {:?}", config.kind, Self::KIND),
            ));
        }
        let tokenizer = match config.tokens.as_str() {
            "char" => Tokenizer::Chars,
            "word" => Tokenizer::Words,
            other => {
                return Err(Error::invalid(
                    OP,
                    format!("unknown tokens {other:?} (expected char or word)"),
                ));
            }
        };
        let vocab = Vocab::from_tokens(tokenizer, config.vocab.iter().cloned())?;
        let labels = Labels::new(config.labels.iter().map(String::as_str))?;
        if labels.names() != config.labels.as_slice() {
            return Err(Error::invalid(OP, "labels must be sorted and distinct"));
        }
        let m = &config.model;
        if m.embed.is_none_or(|e| e == 0) || m.inputs != vocab.len() || m.classes != labels.len() {
            return Err(Error::invalid(
                OP,
                format!(
                    "the network must embed tokens, with {} inputs and {} classes",
                    vocab.len(),
                    labels.len()
                ),
            ));
        }
        let net = SequenceClassifier::new(store, "", config.model.clone(), rng)?;
        Ok(TextClassifier {
            config,
            vocab,
            labels,
            net,
        })
    }

    /// The configuration stored in a checkpoint written by a [`Trainer`](super::Trainer) for a
    /// `TextClassifier`. A checkpoint of another model is an error that says so.
    pub fn read_config(path: &Path) -> Result<TextClassifierConfig> {
        let archive = crate::io::Archive::read(path)?;
        let config = archive.meta("config")?;
        Self::config_from_json(config, path)
    }

    fn config_from_json(json: &str, path: &Path) -> Result<TextClassifierConfig> {
        let not_ours = || {
            Error::format(
                path.display().to_string(),
                "not a text classifier checkpoint (it holds another kind of model)",
            )
        };
        let value: serde_json::Value = serde_json::from_str(json).map_err(|_| not_ours())?;
        let model = value.get("model").ok_or_else(not_ours)?;
        if model.get("kind").and_then(|k| k.as_str()) != Some(Self::KIND) {
            return Err(not_ours());
        }
        serde_json::from_value(model.clone()).map_err(|e| {
            Error::format(
                path.display().to_string(),
                format!("the text classifier's configuration is malformed: {e}"),
            )
        })
    }

    /// Rebuilds the model saved in a checkpoint (`best.safetensors` or `last.safetensors`)
    /// written by a [`Trainer`](super::Trainer): its configuration, vocabulary, labels and
    /// parameters, validated. The optimizer state in the file is not read.
    pub fn load<T: Float>(path: &Path) -> Result<(Self, ParamStore<T>)> {
        let config = Self::read_config(path)?;
        let mut store = ParamStore::new();
        let model = Self::from_config(&mut store, config, &mut Rng::new(0))
            .map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
        load_checkpoint_params(path, &mut store)?;
        Ok((model, store))
    }

    /// The configuration.
    pub fn config(&self) -> &TextClassifierConfig {
        &self.config
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The class labels.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// The network.
    pub fn network(&self) -> &SequenceClassifier {
        &self.net
    }

    /// `examples` encoded with this model's vocabulary and labels, in batches of `batch` (in
    /// order; shuffle with [`SeqDataset::with_plan`]). A label the model does not know is an
    /// error naming the example's line and the known labels.
    pub fn dataset(&self, examples: &[Example], batch: usize) -> Result<SeqDataset> {
        let mut seqs = Vec::with_capacity(examples.len());
        let mut targets = Vec::with_capacity(examples.len());
        for e in examples {
            let target = self.labels.id(&e.label).map_err(|_| {
                Error::invalid(
                    "TextClassifier::dataset",
                    format!(
                        "line {}: unknown label {:?} (the model knows {})",
                        e.line,
                        e.label,
                        self.labels.names().join(", ")
                    ),
                )
            })?;
            seqs.push(self.encode(&e.text, e.line)?);
            targets.push(target);
        }
        SeqDataset::new(seqs, targets, batch)
    }

    fn encode(&self, text: &str, line: usize) -> Result<Vec<usize>> {
        let ids = self.vocab.encode(text);
        if ids.is_empty() {
            return Err(Error::invalid(
                "TextClassifier",
                format!("line {line}: the text has no {} tokens", self.config.tokens),
            ));
        }
        Ok(ids)
    }

    /// The predicted class id of each text ([`Labels::name`] gives its label), without a tape,
    /// in batches of `batch`. A text without a token is an error naming it (counted from 1).
    pub fn predict<T: Float>(
        &self,
        store: &ParamStore<T>,
        texts: &[&str],
        batch: usize,
    ) -> Result<Vec<usize>> {
        if batch == 0 {
            return Err(Error::invalid(
                "TextClassifier::predict",
                "batch must be positive",
            ));
        }
        let seqs: Vec<Vec<usize>> = texts
            .iter()
            .enumerate()
            .map(|(k, t)| self.encode(t, k + 1))
            .collect::<Result<_>>()?;
        // Batches of similar lengths pad less: predict in length order, answer in input order.
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut out = vec![0; seqs.len()];
        for chunk in order.chunks(batch) {
            let refs: Vec<&[usize]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
            let (ids, lengths, t_len) = pad_ids(&refs, Vocab::PAD)?;
            let pred = self
                .net
                .predict(store, &ids, t_len, &lengths)?
                .argmax_rows()?;
            for (&i, p) in chunk.iter().zip(pred) {
                out[i] = p;
            }
        }
        Ok(out)
    }
}

impl Module for TextClassifier {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        self.net.named_params()
    }
}

/// The network's mean cross-entropy; the configuration recorded in checkpoints is the whole
/// [`TextClassifierConfig`], vocabulary and labels included.
impl<T: Float> Objective<T> for TextClassifier {
    type Batch = SeqBatch;

    fn loss(&mut self, cx: &mut Ctx<'_, T>, batch: &SeqBatch) -> Result<Var> {
        Objective::<T>::loss(&mut self.net, cx, batch)
    }

    fn config_json(&self) -> String {
        serde_json::to_string(&self.config).expect("a plain struct serialises")
    }
}

/// Precision, recall and support of one class ([`class_report`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassStats {
    /// Of the examples predicted as this class, the fraction that are (0 when none is).
    pub precision: f64,
    /// Of the examples of this class, the fraction predicted as it (0 when there are none).
    pub recall: f64,
    /// Examples of this class.
    pub count: usize,
    /// Examples predicted as this class.
    pub predicted: usize,
}

/// Per-class precision, recall and counts of `predictions` against `targets` (class ids below
/// `classes`, as many of each).
///
/// ```
/// use recur::models::class_report;
/// let r = class_report(&[0, 1, 1, 1], &[0, 0, 1, 1], 2)?;
/// assert_eq!((r[0].precision, r[0].recall, r[0].count), (1.0, 0.5, 2));
/// assert_eq!((r[1].precision, r[1].recall, r[1].count), (2.0 / 3.0, 1.0, 2));
/// # Ok::<(), recur::Error>(())
/// ```
pub fn class_report(
    predictions: &[usize],
    targets: &[usize],
    classes: usize,
) -> Result<Vec<ClassStats>> {
    if predictions.len() != targets.len()
        || predictions.iter().chain(targets).any(|&c| c >= classes)
    {
        return Err(Error::invalid(
            "class_report",
            format!(
                "needs as many predictions as targets ({} and {}), all below {classes}",
                predictions.len(),
                targets.len()
            ),
        ));
    }
    let (mut hit, mut count, mut predicted) =
        (vec![0; classes], vec![0; classes], vec![0; classes]);
    for (&p, &t) in predictions.iter().zip(targets) {
        count[t] += 1;
        predicted[p] += 1;
        if p == t {
            hit[t] += 1;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok((0..classes)
        .map(|c| ClassStats {
            precision: ratio(hit[c], predicted[c]),
            recall: ratio(hit[c], count[c]),
            count: count[c],
            predicted: predicted[c],
        })
        .collect())
}
