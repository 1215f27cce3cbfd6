//! `CharLm`: the character language model, embedding -> recurrent stack -> linear head over
//! the vocabulary, trained on [`LmStreams`](crate::data::LmStreams) chunks with the state carried
//! across them, and generating without a tape.

use serde::{Deserialize, Serialize};

use std::path::Path;

use super::{Objective, RunInfo, cell_from_name};
use crate::data::{CharVocab, LmChunk};
use crate::io::checkpoint::load_checkpoint_params;
use crate::kernels::gemv::{AlignedMatrix, gemv_rows_acc};
use crate::kernels::sweep::Sweep;
use crate::nn::{
    CarriedState, CellKind, Ctx, Embedding, InferenceStep, Linear, Module, Recurrent,
    RecurrentConfig, named_children, scope,
};
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// The shape of a [`CharLm`], stored as JSON with its checkpoints (the fields of `recur
/// train`'s model configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CharLmConfig {
    /// `rnn`, `rnn-relu`, `lstm` or `gru`.
    pub cell: String,
    /// Hidden units per layer.
    pub hidden: usize,
    /// Recurrent layers.
    pub layers: usize,
    /// Embedding size of the characters.
    pub embed: usize,
    /// Dropout between recurrent layers, in training.
    pub dropout: f64,
    /// The vocabulary, in id order.
    pub vocab: String,
    /// Recurrent (variational) dropout, see [`RecurrentConfig::recurrent_dropout`] (0 in files
    /// written before it existed).
    #[serde(default)]
    pub recurrent_dropout: f64,
    /// Weight drop on `W_hh`, see [`RecurrentConfig::weight_drop`].
    #[serde(default)]
    pub weight_drop: f64,
    /// Zoneout, see [`RecurrentConfig::zoneout`].
    #[serde(default)]
    pub zoneout: f64,
    /// LSTM only: the projection of the hidden state, [`RecurrentConfig::proj_size`] (0: none).
    #[serde(default)]
    pub proj: usize,
    /// Layer-normalized LSTM or GRU layers, see [`RecurrentConfig::layer_norm`] (false in files
    /// written before it existed).
    #[serde(default)]
    pub layer_norm: bool,
}

impl CharLmConfig {
    /// A model of `cell` with `layers` layers of `hidden` units over `embed`-wide character
    /// embeddings of `vocab`, without dropout, regularizers or projection (set the fields).
    ///
    /// ```
    /// use recur::models::CharLmConfig;
    /// let cfg = CharLmConfig::new("lstm", 8, 2, 4, "abc");
    /// assert_eq!((cfg.dropout, cfg.zoneout, cfg.proj), (0.0, 0.0, 0));
    /// ```
    pub fn new(cell: &str, hidden: usize, layers: usize, embed: usize, vocab: &str) -> Self {
        CharLmConfig {
            cell: cell.to_string(),
            hidden,
            layers,
            embed,
            dropout: 0.0,
            vocab: vocab.to_string(),
            recurrent_dropout: 0.0,
            weight_drop: 0.0,
            zoneout: 0.0,
            proj: 0,
            layer_norm: false,
        }
    }

    /// The recurrent stack's configuration.
    pub fn recurrent(&self) -> RecurrentConfig {
        RecurrentConfig::new(self.embed, self.hidden)
            .num_layers(self.layers)
            .dropout(self.dropout)
            .recurrent_dropout(self.recurrent_dropout)
            .weight_drop(self.weight_drop)
            .zoneout(self.zoneout)
            .proj_size(self.proj)
            .layer_norm(self.layer_norm)
    }

    /// Features of each step's output, what the head reads: `proj` with a projection, else
    /// `hidden`.
    pub fn output_size(&self) -> usize {
        if self.proj > 0 {
            self.proj
        } else {
            self.hidden
        }
    }
}

impl CharLmConfig {
    /// The cell kind `cell` names.
    pub fn kind(&self) -> Result<CellKind> {
        cell_from_name(&self.cell)
    }

    /// The number of parameter values of a model of this shape; `None` if the cell is unknown,
    /// there are no layers, or the count overflows. Lets a stored configuration be checked
    /// against the stored tensors before the model it describes is allocated.
    ///
    /// ```
    /// use recur::models::CharLmConfig;
    /// let cfg = CharLmConfig::new("gru", 4, 1, 2, "abc");
    /// // embedding 3x2, W_ih 12x2, W_hh 12x4, two biases of 12, head 3x4 and 3
    /// assert_eq!(cfg.param_count(), Some(6 + 24 + 48 + 24 + 12 + 3));
    /// // An LSTM projecting its 4 units to 3: W_ih 16x2, W_hh 16x3, biases, W_hr 3x4, head 3x3
    /// let cfg = CharLmConfig { proj: 3, ..CharLmConfig::new("lstm", 4, 1, 2, "abc") };
    /// assert_eq!(cfg.param_count(), Some(6 + 32 + 48 + 32 + 12 + 9 + 3));
    /// // Layer-normalized: gains γ_x and γ_h of 16 each, and the cell's γ_c and β_c of 4 each
    /// let cfg = CharLmConfig { layer_norm: true, ..CharLmConfig::new("lstm", 4, 1, 2, "abc") };
    /// assert_eq!(cfg.param_count(), Some(6 + 32 + 64 + 32 + 32 + 8 + 12 + 3));
    /// ```
    pub fn param_count(&self) -> Option<u128> {
        let g = self.kind().ok()?.gates() as u128;
        let (v, e, h, l) = (
            self.vocab.chars().count() as u128,
            self.embed as u128,
            self.hidden as u128,
            self.layers as u128,
        );
        // The state and the outputs have `o` features: P with a projection (W_hr [P, H]).
        let o = self.output_size() as u128;
        let proj = if self.proj > 0 { o.checked_mul(h)? } else { 0 };
        // Layer normalization: the gains γ_x and γ_h [G*H], and the LSTM's γ_c and β_c [H].
        let ln = if self.layer_norm {
            let cell = if g == 4 { 2 * h } else { 0 };
            g.checked_mul(h)?.checked_mul(2)?.checked_add(cell)?
        } else {
            0
        };
        let layer = |input: u128| {
            g.checked_mul(h)?
                .checked_mul(input.checked_add(o)?.checked_add(2)?)?
                .checked_add(proj)?
                .checked_add(ln)
        };
        let stack = layer(e)?.checked_add(l.checked_sub(1)?.checked_mul(layer(o)?)?)?;
        v.checked_mul(e)?
            .checked_add(stack)?
            .checked_add(o.checked_mul(v)?)?
            .checked_add(v)
    }

    /// The configuration of the model a [`Trainer`](super::Trainer) checkpoint holds (`info`,
    /// read from `path`), checked against the number of stored parameters.
    pub fn from_run(info: &RunInfo, path: &Path) -> Result<CharLmConfig> {
        let bad = |msg: String| Error::format(format!("checkpoint {}", path.display()), msg);
        let cfg: CharLmConfig = serde_json::from_value(info.model.clone()).map_err(|e| {
            bad(format!(
                "not a `recur train` checkpoint (not a CharLm: {e})"
            ))
        })?;
        if cfg.param_count() != Some(info.param_count) {
            return Err(bad(format!(
                "the model config ({} {}x{}, embedding {}, {} characters) does not match the {} \
                 stored parameters",
                cfg.cell,
                cfg.layers,
                cfg.hidden,
                cfg.embed,
                cfg.vocab.chars().count(),
                info.param_count
            )));
        }
        Ok(cfg)
    }
}

/// Embedding -> recurrent stack -> linear head over the characters, named as in PyTorch
/// (`embed.weight`, `rnn.weight_ih_l0`, ..., `head.weight`, `head.bias`).
///
/// As an [`Objective`] over [`LmChunk`]s it carries its recurrent state from one chunk to the
/// next (reset where a chunk says so) and exposes it as [`Objective::state_tensors`]
/// (`h`, and `c` for an LSTM), so the [`super::Trainer`] checkpoints it.
///
/// ```
/// use recur::data::{CharVocab, LmStreams};
/// use recur::models::{CharLm, CharLmConfig, Trainer, TrainerConfig};
/// use recur::optim::{Adam, AdamConfig};
/// use recur::{ParamStore, Rng};
///
/// let text = "abcabcabcabc".repeat(20);
/// let vocab = CharVocab::from_text(&text)?;
/// let chars: String = vocab.chars().iter().collect();
/// let cfg = CharLmConfig::new("gru", 16, 1, 8, &chars);
/// let mut ps = ParamStore::<f32>::new();
/// let mut lm = CharLm::new(&mut ps, cfg, &mut Rng::new(0))?;
/// let mut data = LmStreams::new(&vocab.encode(&text)?, 4, 10)?;
/// let mut opt = Adam::new(AdamConfig::default().lr(0.02))?;
/// Trainer::new(TrainerConfig::epochs(20)).fit(&mut lm, &mut ps, &mut opt, &mut data, None)?;
/// // Greedy generation (temperature 0) continues the pattern.
/// assert_eq!(lm.generate(&ps, "ab", 7, 0.0, None, &mut Rng::new(1))?, "cabcabc");
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct CharLm<T: Float> {
    config: CharLmConfig,
    vocab: CharVocab,
    embed: Embedding,
    rnn: Recurrent,
    head: Linear,
    carry: CarriedState<T>,
}

impl<T: Float> CharLm<T> {
    /// Registers a freshly initialised model in `store`.
    pub fn new(store: &mut ParamStore<T>, config: CharLmConfig, rng: &mut Rng) -> Result<Self> {
        let vocab = CharVocab::from_chars(config.vocab.chars().collect())?;
        let kind = cell_from_name(&config.cell)?;
        let embed = Embedding::new(store, &scope("", "embed")?, vocab.len(), config.embed, rng)?;
        let rnn = Recurrent::new(store, &scope("", "rnn")?, kind, config.recurrent(), rng)?;
        let head = Linear::new(
            store,
            &scope("", "head")?,
            config.output_size(),
            vocab.len(),
            true,
            rng,
        )?;
        Ok(CharLm {
            config,
            vocab,
            embed,
            rnn,
            head,
            carry: CarriedState::new(),
        })
    }

    /// Rebuilds the model saved in a checkpoint written by a [`Trainer`](super::Trainer)
    /// (`recur train`'s `best.safetensors` or `last.safetensors`): its configuration, checked
    /// against the stored tensors before anything is allocated, and its parameters, validated.
    /// The optimizer state in the file is not read.
    pub fn load(path: &Path) -> Result<(Self, ParamStore<T>)> {
        let config = CharLmConfig::from_run(&RunInfo::read(path)?, path)?;
        let mut store = ParamStore::new();
        let model = CharLm::new(&mut store, config, &mut Rng::new(0))?;
        load_checkpoint_params(path, &mut store)?;
        Ok((model, store))
    }

    /// The configuration.
    pub fn config(&self) -> &CharLmConfig {
        &self.config
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &CharVocab {
        &self.vocab
    }

    /// The state carried between chunks.
    pub fn carried(&mut self) -> &mut CarriedState<T> {
        &mut self.carry
    }

    /// Logits `[T*B, V]` for ids `[T, B]`, from the carried state, which then holds the final
    /// state.
    pub fn logits(
        &mut self,
        cx: &mut Ctx<'_, T>,
        ids: &[usize],
        t_len: usize,
        batch: usize,
    ) -> Result<Var> {
        let x = cx.embed(&self.embed, ids, &[t_len, batch])?;
        let out = cx.recurrent_carry(&self.rnn, x, &mut self.carry)?;
        // The head's rows are the T*B positions; a reshape copies its input, so the narrower
        // of the hidden states and the logits is made rows (the logits at a vocabulary of
        // characters, the states at one of words).
        let v = self.head.out_features();
        if v > self.head.in_features() {
            let rows = cx
                .tape
                .reshape(out.y, &[t_len * batch, self.head.in_features()])?;
            cx.linear(&self.head, rows)
        } else {
            let logits = cx.linear(&self.head, out.y)?;
            cx.tape.reshape(logits, &[t_len * batch, v])
        }
    }

    /// Generates `length` characters after `prime` (non-empty, in the vocabulary), sampling from
    /// `softmax(logits / temperature)` restricted to the `top_k` most likely characters when
    /// given; temperature 0 picks the most likely. Runs without a tape: one
    /// [`InferenceStep`] per layer over weights packed once (an LSTM with a projection, or
    /// layer-normalized layers, which the tape-free step lacks, step their layers in evaluation
    /// mode on a tape instead). Where the thread pool has two threads or more, layers of
    /// 256 KiB of weights or more step in two shares of their units on two threads
    /// ([`InferenceStep::with_threads_all`]), each core reading half of the weights: the same
    /// text, and a second thread busy while it runs.
    pub fn generate(
        &self,
        store: &ParamStore<T>,
        prime: &str,
        length: usize,
        temperature: f64,
        top_k: Option<usize>,
        rng: &mut Rng,
    ) -> Result<String> {
        let prime = self.vocab.encode(prime)?;
        if prime.is_empty() {
            return Err(Error::invalid(
                "CharLm::generate",
                "the prime text is empty",
            ));
        }
        if !(temperature.is_finite() && temperature >= 0.0) || top_k == Some(0) {
            return Err(Error::invalid(
                "CharLm::generate",
                format!("temperature must be >= 0 and top_k >= 1 (got {temperature}, {top_k:?})"),
            ));
        }
        if self.config.proj > 0 || self.config.layer_norm {
            // The tape-free step has no projection and no layer normalization: step the layers
            // on a tape instead.
            let mut carry = CarriedState::new();
            let mut tape = Tape::new();
            let p = self.config.output_size();
            let advance = |token: usize| -> Result<Tensor<T>> {
                tape.clear();
                let mut cx = Ctx::eval(&mut tape, store);
                let x = cx.embed(&self.embed, &[token], &[1, 1])?;
                let out = cx.recurrent_carry(&self.rnn, x, &mut carry)?;
                let y = cx.tape.reshape(out.y, &[1, p])?;
                let logits = cx.linear(&self.head, y)?;
                Ok(tape.value(logits)?.clone())
            };
            return self.sample_text(&prime, length, temperature, top_k, rng, advance);
        }
        let (h, kind) = (self.config.hidden, self.rnn.kind());
        let steps: Result<Vec<InferenceStep<T>>> = (0..self.config.layers)
            .map(|layer| self.rnn.inference_step(store, layer, 0, 1))
            .collect();
        let mut steps = steps?;
        let lstm = kind.has_cell_state();
        let mut hs = vec![vec![T::ZERO; h]; steps.len()];
        let mut cs = vec![vec![T::ZERO; if lstm { h } else { 0 }]; steps.len()];
        // The head as one matrix-vector product per character over its weights aligned once.
        let v = self.vocab.len();
        let (w_id, b_id) = (self.head.weight(), self.head.bias());
        store.check(w_id)?;
        let w = store.get(w_id);
        if w.dims() != [v, h] {
            return Err(Error::invalid(
                "CharLm::generate",
                format!("head.weight has shape {:?}, expected [{v}, {h}]", w.dims()),
            ));
        }
        let mut head = AlignedMatrix::from_buffer(Vec::new());
        head.copy_from(w.data(), v, h);
        let bias = match b_id {
            Some(b) => {
                store.check(b)?;
                let b = store.get(b).data().to_vec();
                if b.len() != v {
                    return Err(Error::invalid(
                        "CharLm::generate",
                        format!("head.bias has {} values, expected {v}", b.len()),
                    ));
                }
                b
            }
            None => vec![T::ZERO; v],
        };
        InferenceStep::with_threads_all(&mut steps, |steps| {
            let advance = |token: usize| -> Result<Tensor<T>> {
                let mut x = self.embed.lookup(store, &[token], &[1])?.into_vec();
                for (l, s) in steps.iter_mut().enumerate() {
                    s.step_packed(&x, &mut hs[l], &mut cs[l])?;
                    x.clone_from(&hs[l]);
                }
                let mut logits = bias.clone();
                gemv_rows_acc(&head, &x, &mut logits, 0..v, Sweep::Ascending);
                Tensor::from_vec(logits, &[1, v])
            };
            self.sample_text(&prime, length, temperature, top_k, rng, advance)
        })
    }

    /// Feeds the ids of `prime` (not empty) to `advance`, which steps the model by one
    /// character and returns the logits `[1, V]`, then samples `length` characters.
    fn sample_text(
        &self,
        prime: &[usize],
        length: usize,
        temperature: f64,
        top_k: Option<usize>,
        rng: &mut Rng,
        mut advance: impl FnMut(usize) -> Result<Tensor<T>>,
    ) -> Result<String> {
        let mut logits = None;
        for &t in prime {
            logits = Some(advance(t)?);
        }
        let mut logits = logits.expect("the prime is not empty");
        let mut out = String::with_capacity(length);
        for k in 0..length {
            let next = sample(logits.data(), temperature, top_k, rng);
            out.push(self.vocab.char(next)?);
            if k + 1 < length {
                logits = advance(next)?;
            }
        }
        Ok(out)
    }
}

/// Draws an index from `softmax(logits / temperature)` over the `top_k` largest logits;
/// temperature 0 gives the argmax.
fn sample<T: Float>(logits: &[T], temperature: f64, top_k: Option<usize>, rng: &mut Rng) -> usize {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| {
        logits[b]
            .to_f64()
            .total_cmp(&logits[a].to_f64())
            .then(a.cmp(&b))
    });
    if temperature == 0.0 {
        return idx[0];
    }
    idx.truncate(top_k.unwrap_or(idx.len()));
    let m = logits[idx[0]].to_f64();
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i].to_f64() - m) / temperature).exp())
        .collect();
    let mut u = rng.uniform() * w.iter().sum::<f64>();
    for (&i, wi) in idx.iter().zip(&w) {
        if u < *wi {
            return i;
        }
        u -= wi;
    }
    idx[0]
}

impl<T: Float> Module for CharLm<T> {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        named_children(&[
            ("embed", &self.embed),
            ("rnn", &self.rnn),
            ("head", &self.head),
        ])
    }
}

/// Mean cross-entropy (nats per character) of the next characters, with the state carried
/// from the previous chunk (zeros where `reset`).
impl<T: Float> Objective<T> for CharLm<T> {
    type Batch = LmChunk;

    fn loss(&mut self, cx: &mut Ctx<'_, T>, batch: &LmChunk) -> Result<Var> {
        if batch.reset {
            self.carry.reset();
        }
        let logits = self.logits(cx, &batch.x, batch.t_len, batch.batch)?;
        cx.tape.cross_entropy(logits, &batch.y, None)
    }

    fn config_json(&self) -> String {
        serde_json::to_string(&self.config).expect("a plain struct serialises")
    }

    fn state_tensors(&self) -> Vec<(String, Tensor<T>)> {
        let mut out = Vec::new();
        out.extend(self.carry.h().map(|h| ("h".to_string(), h.clone())));
        out.extend(self.carry.c().map(|c| ("c".to_string(), c.clone())));
        out
    }

    fn load_state_tensors(&mut self, tensors: Vec<(String, Tensor<T>)>) -> Result<()> {
        let (mut h, mut c) = (None, None);
        for (name, t) in tensors {
            match name.as_str() {
                "h" => h = Some(t),
                "c" => c = Some(t),
                other => {
                    return Err(Error::format(
                        "CharLm state",
                        format!("unexpected state tensor `{other}`"),
                    ));
                }
            }
        }
        self.carry = match h {
            Some(h) => CarriedState::from_tensors(h, c),
            None => CarriedState::new(),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration stored before the regularizers and the projection existed loads with
    /// them off; a new one keeps them.
    #[test]
    fn configs_without_the_regularizers_load_with_them_off() {
        let old = r#"{"cell":"lstm","hidden":8,"layers":2,"embed":4,"dropout":0.1,"vocab":"ab"}"#;
        let cfg: CharLmConfig = serde_json::from_str(old).unwrap();
        assert_eq!(
            (
                cfg.recurrent_dropout,
                cfg.weight_drop,
                cfg.zoneout,
                cfg.proj,
                cfg.layer_norm
            ),
            (0.0, 0.0, 0.0, 0, false)
        );
        let new = CharLmConfig {
            recurrent_dropout: 0.25,
            weight_drop: 0.5,
            zoneout: 0.125,
            proj: 3,
            layer_norm: true,
            ..cfg
        };
        let back: CharLmConfig =
            serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back, new);
        let rc = back.recurrent();
        assert_eq!(
            (
                rc.recurrent_dropout,
                rc.weight_drop,
                rc.zoneout,
                rc.proj_size,
                rc.layer_norm
            ),
            (0.25, 0.5, 0.125, 3, true)
        );
    }
}
