//! The checkpoint of `recur train`: a library checkpoint ([`recur::io::checkpoint`]) whose
//! config JSON holds the model's configuration and the training state (step, batch, sequence
//! length, clipping, best validation loss, loss history), with the hidden state carried between
//! chunks stored as extra tensors. Written atomically; loading validates everything first.

use std::path::Path;

use serde::{Deserialize, Serialize};

use recur::io::Archive;
use recur::io::checkpoint::{CheckpointInfo, EXTRA, load_checkpoint, save_checkpoint_with_extras};
use recur::optim::Optimizer;
use recur::{Error, ParamStore, Result, Rng, Tensor};

use crate::charlm::{CharModel, ModelConfig, State};
use crate::optimizer::optimizer_by_name;

/// Loss history: (step, loss) pairs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub train: Vec<(usize, f64)>,
    pub val: Vec<(usize, f64)>,
}

/// Where training stands.
pub struct TrainState {
    pub step: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub clip: f64,
    pub dropout_rng: Rng,
    pub carried: State,
    pub best_val: f64,
    pub history: History,
}

/// The checkpoint's config JSON.
#[derive(Serialize, Deserialize)]
struct RunConfig {
    model: ModelConfig,
    batch: usize,
    seq_len: usize,
    clip: f64,
    /// `None` before the first validation (JSON has no infinity).
    best_val: Option<f64>,
    history: History,
}

/// A checkpoint read back.
pub struct Resumed {
    pub model: CharModel,
    pub store: ParamStore<f32>,
    pub optimizer: Box<dyn Optimizer<f32>>,
    pub state: TrainState,
}

/// Writes the checkpoint to `path` (via a temporary file and a rename).
pub fn save(
    path: &Path,
    model: &CharModel,
    store: &ParamStore<f32>,
    opt: &dyn Optimizer<f32>,
    ts: &TrainState,
) -> Result<()> {
    let run = RunConfig {
        model: model.config.clone(),
        batch: ts.batch,
        seq_len: ts.seq_len,
        clip: ts.clip,
        best_val: ts.best_val.is_finite().then_some(ts.best_val),
        history: ts.history.clone(),
    };
    let config = serde_json::to_string(&run)
        .map_err(|e| Error::format("checkpoint config", e.to_string()))?;
    let info = CheckpointInfo {
        config,
        step: ts.step as u64,
        schedule_step: ts.step as u64,
    };
    let mut extras = vec![("state.h", &ts.carried.h)];
    if let Some(c) = &ts.carried.c {
        extras.push(("state.c", c));
    }
    save_checkpoint_with_extras(path, store, opt, &ts.dropout_rng, &info, &extras)
}

/// Reads a checkpoint written by [`save`]; every part is validated and a problem is named.
pub fn load(path: &Path) -> Result<Resumed> {
    let bad = |msg: String| Error::format(format!("checkpoint {}", path.display()), msg);
    // The header says which model to build; the library then loads into it strictly.
    let archive = Archive::read(path)?;
    let config = archive.metadata.get("config").ok_or_else(|| {
        bad("no `config` metadata: not a checkpoint written by `recur train`".into())
    })?;
    let run: RunConfig = serde_json::from_str(config)
        .map_err(|e| bad(format!("not a `recur train` checkpoint (config: {e})")))?;
    // Check the config against the stored tensors before allocating the model it describes.
    let stored: u128 = archive
        .tensors
        .iter()
        .filter(|(n, _)| n.starts_with("model."))
        .map(|(_, t)| t.dims().iter().product::<usize>() as u128)
        .sum();
    if run.model.param_count() != Some(stored) {
        return Err(bad(format!(
            "the model config ({} {}x{}, embedding {}, {} characters) does not match the {stored} stored parameters",
            run.model.cell,
            run.model.layers,
            run.model.hidden,
            run.model.embed,
            run.model.vocab.chars().count()
        )));
    }
    let mut store = ParamStore::new();
    let model = CharModel::new(&mut store, run.model.clone(), &mut Rng::new(0))
        .map_err(|e| bad(format!("model config: {e}")))?;
    let opt_name = archive
        .metadata
        .get("optimizer")
        .ok_or_else(|| bad("no `optimizer` metadata".into()))?;
    let mut optimizer = optimizer_by_name(opt_name, 1e-3)
        .ok_or_else(|| bad(format!("unknown optimizer `{opt_name}`")))??;
    let mut rng = Rng::new(0);
    let info = load_checkpoint(path, &mut store, optimizer.as_mut(), &mut rng, |_| Ok(()))?;
    if info.step > 0 && optimizer.state_tensors(&store).is_empty() {
        return Err(bad(format!(
            "optimizer state is missing (step {} needs it)",
            info.step
        )));
    }
    let want = [run.model.layers, run.batch, run.model.hidden];
    let carried = |name: &str| -> Result<Tensor<f32>> {
        let key = format!("{EXTRA}{name}");
        let t: Tensor<f32> = archive.tensor(&key).map_err(|e| bad(e.to_string()))?;
        if t.dims() != want {
            return Err(bad(format!(
                "`{key}` has shape {:?}, expected {want:?}",
                t.dims()
            )));
        }
        Ok(t)
    };
    let state = TrainState {
        step: info.step as usize,
        batch: run.batch,
        seq_len: run.seq_len,
        clip: run.clip,
        dropout_rng: rng,
        carried: State {
            h: carried("state.h")?,
            c: model
                .rnn
                .kind()
                .has_cell_state()
                .then(|| carried("state.c"))
                .transpose()?,
        },
        best_val: run.best_val.unwrap_or(f64::INFINITY),
        history: run.history,
    };
    Ok(Resumed {
        model,
        store,
        optimizer,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_history_survives_its_json_bit_for_bit() {
        // 2.4236041174994574 is a validation loss that serde_json's default float parser read
        // back one ulp off, so a resumed run's checkpoint differed from the uninterrupted one's.
        let mut val = vec![(20, 2.4236041174994574)];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for step in 0..1000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            val.push((step, (seed >> 11) as f64 / (1u64 << 53) as f64 * 8.0));
        }
        let history = History {
            train: val.iter().map(|&(s, v)| (s, v / 3.0)).collect(),
            val,
        };
        let text = serde_json::to_string(&history).unwrap();
        let back: History = serde_json::from_str(&text).unwrap();
        let bits =
            |h: &[(usize, f64)]| h.iter().map(|&(s, v)| (s, v.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&back.train), bits(&history.train));
        assert_eq!(bits(&back.val), bits(&history.val));
    }
}
