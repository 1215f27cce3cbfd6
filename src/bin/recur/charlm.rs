//! The character language model the `train` and `sample` commands use: an embedding, a stack of
//! recurrent layers and a linear head over the vocabulary.

use recur::data::CharVocab;
use recur::models::{CharLm, CharLmConfig, cell_from_name};
use recur::nn::{CellKind, Embedding, ForwardOptions, Linear, Recurrent, RecurrentConfig};
use recur::{Error, ParamStore, Result, Rng, Tape, Tensor, Var};

/// Everything needed to rebuild the model; stored as JSON in checkpoints. The library's
/// [`CharLmConfig`], whose JSON layout is the one `recur train` has always written.
pub type ModelConfig = CharLmConfig;

/// What the command-line tool asks of a model configuration besides its fields.
pub trait ModelConfigExt {
    /// The cell kind named by `cell`.
    fn kind(&self) -> Result<CellKind>;
    /// The number of parameters this config describes (`None` if it overflows), to check a
    /// stored config against its tensors before allocating anything.
    fn param_count(&self) -> Option<u128>;
    /// The vocabulary.
    fn vocab(&self) -> Result<CharVocab>;
}

impl ModelConfigExt for ModelConfig {
    fn kind(&self) -> Result<CellKind> {
        cell_from_name(&self.cell)
    }

    fn param_count(&self) -> Option<u128> {
        let g = self.kind().ok()?.gates() as u128;
        let (v, e, h, l) = (
            self.vocab.chars().count() as u128,
            self.embed as u128,
            self.hidden as u128,
            self.layers as u128,
        );
        let layer = |input: u128| g * h * (input + h) + 2 * g * h;
        let stack = layer(e) + l.checked_sub(1)? * layer(h);
        Some(v * e + stack + h * v + v)
    }

    /// The vocabulary.
    fn vocab(&self) -> Result<CharVocab> {
        CharVocab::from_chars(self.vocab.chars().collect())
    }
}

/// The recurrent state carried from one chunk to the next: `[L, B, H]` each.
#[derive(Clone, Debug)]
pub struct State {
    pub h: Tensor<f32>,
    pub c: Option<Tensor<f32>>,
}

/// Embedding -> recurrent stack -> linear head.
pub struct CharModel {
    pub config: ModelConfig,
    pub vocab: CharVocab,
    pub embed: Embedding,
    pub rnn: Recurrent,
    pub head: Linear,
}

impl CharModel {
    /// Registers a freshly initialised model in `store` (names `embed.weight`, `rnn.weight_ih_l0`,
    /// ..., `head.weight`, `head.bias`).
    pub fn new(store: &mut ParamStore<f32>, config: ModelConfig, rng: &mut Rng) -> Result<Self> {
        let vocab = config.vocab()?;
        let kind = config.kind()?;
        let embed = Embedding::new(store, "embed.", vocab.len(), config.embed, rng)?;
        let rc = RecurrentConfig::new(config.embed, config.hidden)
            .num_layers(config.layers)
            .dropout(config.dropout);
        let rnn = Recurrent::new(store, "rnn.", kind, rc, rng)?;
        let head = Linear::new(store, "head.", config.hidden, vocab.len(), true, rng)?;
        Ok(CharModel {
            config,
            vocab,
            embed,
            rnn,
            head,
        })
    }

    /// A zero state for `batch` streams.
    pub fn zero_state(&self, batch: usize) -> Result<State> {
        let dims = [self.config.layers, batch, self.config.hidden];
        Ok(State {
            h: Tensor::zeros(&dims)?,
            c: self
                .rnn
                .kind()
                .has_cell_state()
                .then(|| Tensor::zeros(&dims))
                .transpose()?,
        })
    }

    /// Logits `[T*B, V]` for the ids `[T, B]` from `state`; returns them and the final state.
    #[allow(clippy::too_many_arguments)]
    pub fn logits(
        &self,
        tape: &mut Tape<f32>,
        store: &ParamStore<f32>,
        ids: &[usize],
        t_len: usize,
        batch: usize,
        state: &State,
        dropout_rng: Option<&mut Rng>,
    ) -> Result<(Var, State)> {
        let x = self.embed.forward(tape, store, ids, &[t_len, batch])?;
        let h0 = tape.constant_copy(&state.h);
        let c0 = state.c.as_ref().map(|c| tape.constant_copy(c));
        let out = self.rnn.forward(
            tape,
            store,
            x,
            ForwardOptions {
                h0: Some(h0),
                c0,
                dropout_rng,
                ..Default::default()
            },
        )?;
        let next = State {
            h: tape.value(out.h_n)?.clone(),
            c: out.c_n.map(|c| tape.value(c).cloned()).transpose()?,
        };
        let y = tape.reshape(out.y, &[t_len * batch, self.config.hidden])?;
        Ok((self.head.forward(tape, store, y)?, next))
    }

    /// Mean cross-entropy (nats per character) of predicting `targets` from `ids`.
    #[allow(clippy::too_many_arguments)]
    pub fn loss(
        &self,
        tape: &mut Tape<f32>,
        store: &ParamStore<f32>,
        ids: &[usize],
        targets: &[usize],
        t_len: usize,
        batch: usize,
        state: &State,
        dropout_rng: Option<&mut Rng>,
    ) -> Result<(Var, State)> {
        let (logits, next) = self.logits(tape, store, ids, t_len, batch, state, dropout_rng)?;
        Ok((tape.cross_entropy(logits, targets, None)?, next))
    }

    /// The library's [`CharLm`] of the same shape, with a copy of the parameters in `store`:
    /// what generates text (without a tape, over weights packed once).
    pub fn to_lm(&self, store: &ParamStore<f32>) -> Result<(CharLm<f32>, ParamStore<f32>)> {
        let config = self.config.clone();
        let mut lm_store = ParamStore::new();
        let lm = CharLm::new(&mut lm_store, config, &mut Rng::new(0))?;
        let ids: Vec<_> = lm_store.ids().collect();
        for id in ids {
            let name = lm_store.name(id).to_string();
            let src = store
                .find(&name)
                .ok_or_else(|| Error::format("model", format!("no parameter `{name}` to copy")))?;
            *lm_store.get_mut(id) = store.get(src).clone();
        }
        Ok((lm, lm_store))
    }
}
