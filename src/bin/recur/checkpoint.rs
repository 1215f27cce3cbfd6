//! The training checkpoint of `recur train`: model, optimizer state, step, generator state, the
//! hidden state carried between chunks and the loss history, in one safetensors file written
//! atomically. Loading checks everything before anything is used.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use recur::io::{Archive, Entry, Metadata, atomic_write, load_params_from, to_bytes};
use recur::optim::Optimizer;
use recur::{Error, ParamStore, Result, Rng, Tensor};

use crate::charlm::{CharModel, ModelConfig, State};
use crate::optimizer::optimizer_by_name;

const FORMAT: &str = "recur-charlm-checkpoint";
const VERSION: &str = "1";

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

#[derive(Serialize, Deserialize)]
struct TrainMeta {
    step: usize,
    batch: usize,
    seq_len: usize,
    clip: f64,
    /// `None` when no validation has run yet (JSON has no infinity).
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
    let opt_tensors = opt.state_tensors(store);
    let rng: Vec<i64> = ts.dropout_rng.state().iter().map(|&w| w as i64).collect();
    let mut entries: Vec<(String, Entry<'_, f32>)> = Vec::new();
    for (_, name, t) in store.iter() {
        entries.push((format!("model.{name}"), Entry::Float(t)));
    }
    for (name, t) in &opt_tensors {
        entries.push((format!("optim.{name}"), Entry::Float(t)));
    }
    entries.push(("state.h".into(), Entry::Float(&ts.carried.h)));
    if let Some(c) = &ts.carried.c {
        entries.push(("state.c".into(), Entry::Float(c)));
    }
    entries.push(("rng.dropout".into(), Entry::I64(&rng)));
    let scalars: BTreeMap<String, f64> = opt.state_scalars().into_iter().collect();
    let meta = TrainMeta {
        step: ts.step,
        batch: ts.batch,
        seq_len: ts.seq_len,
        clip: ts.clip,
        best_val: ts.best_val.is_finite().then_some(ts.best_val),
        history: ts.history.clone(),
    };
    let mut md = Metadata::new();
    md.insert("format".into(), FORMAT.into());
    md.insert("version".into(), VERSION.into());
    md.insert("config".into(), to_json(&model.config)?);
    md.insert("optimizer".into(), opt.name().into());
    md.insert("optimizer_scalars".into(), to_json(&scalars)?);
    md.insert("train".into(), to_json(&meta)?);
    atomic_write(path, &to_bytes(&entries, &md)?)
}

/// Serialises a metadata value as JSON.
fn to_json<V: Serialize>(v: &V) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::format("checkpoint metadata", e.to_string()))
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::format(format!("checkpoint {}", path.display()), msg)
}

/// Reads a checkpoint written by [`save`]; every part is validated and a problem is named.
pub fn load(path: &Path) -> Result<Resumed> {
    let archive = Archive::read(path)?;
    let meta = |k: &str| -> Result<&str> {
        archive.metadata.get(k).map(String::as_str).ok_or_else(|| {
            bad(
                path,
                format!("metadata key `{k}` is missing (not a recur train checkpoint?)"),
            )
        })
    };
    if meta("format")? != FORMAT {
        return Err(bad(
            path,
            format!("format is `{}`, expected `{FORMAT}`", meta("format")?),
        ));
    }
    if meta("version")? != VERSION {
        return Err(bad(
            path,
            format!(
                "version {} is not supported (expected {VERSION})",
                meta("version")?
            ),
        ));
    }
    let config: ModelConfig = serde_json::from_str(meta("config")?)
        .map_err(|e| bad(path, format!("model config: {e}")))?;
    let tm: TrainMeta = serde_json::from_str(meta("train")?)
        .map_err(|e| bad(path, format!("training state: {e}")))?;
    let scalars: BTreeMap<String, f64> = serde_json::from_str(meta("optimizer_scalars")?)
        .map_err(|e| bad(path, format!("optimizer scalars: {e}")))?;

    // The model, rebuilt from its config, then loaded strictly.
    let mut store = ParamStore::new();
    let model = CharModel::new(&mut store, config.clone(), &mut Rng::new(0))
        .map_err(|e| bad(path, format!("model config: {e}")))?;
    let mut params = Archive::default();
    for (name, t) in &archive.tensors {
        if let Some(rest) = name.strip_prefix("model.") {
            params.tensors.insert(rest.to_string(), t.clone());
        }
    }
    load_params_from(&mut store, &params, &[])
        .map_err(|e| bad(path, format!("model parameters: {e}")))?;

    // The optimizer and its state.
    let lr = *scalars
        .get("lr")
        .ok_or_else(|| bad(path, "optimizer state: scalar `lr` is missing"))?;
    let name = meta("optimizer")?;
    let mut optimizer = optimizer_by_name(name, lr)
        .ok_or_else(|| bad(path, format!("unknown optimizer `{name}`")))?
        .map_err(|e| bad(path, format!("optimizer: {e}")))?;
    let opt_tensors: Vec<(String, Tensor<f32>)> = archive
        .tensors
        .iter()
        .filter_map(|(n, t)| n.strip_prefix("optim.").map(|r| (r, n, t)))
        .map(|(r, n, t)| t.to_tensor(n).map(|v| (r.to_string(), v)))
        .collect::<Result<_>>()
        .map_err(|e| bad(path, format!("optimizer state: {e}")))?;
    let scalar_list: Vec<(String, f64)> = scalars.into_iter().collect();
    if opt_tensors.is_empty() && tm.step > 0 {
        return Err(bad(
            path,
            format!("optimizer state is missing (step {} needs it)", tm.step),
        ));
    }
    optimizer
        .load_state(&store, &opt_tensors, &scalar_list)
        .map_err(|e| bad(path, format!("optimizer state: {e}")))?;

    // The carried state and the generator.
    let want = [config.layers, tm.batch, config.hidden];
    let state_tensor = |n: &str| -> Result<Tensor<f32>> {
        let t: Tensor<f32> = archive.tensor(n).map_err(|e| bad(path, e.to_string()))?;
        if t.dims() != want {
            return Err(bad(
                path,
                format!("`{n}` has shape {:?}, expected {want:?}", t.dims()),
            ));
        }
        Ok(t)
    };
    let carried = State {
        h: state_tensor("state.h")?,
        c: model
            .rnn
            .kind()
            .has_cell_state()
            .then(|| state_tensor("state.c"))
            .transpose()?,
    };
    let words = archive
        .get("rng.dropout")
        .and_then(|t| t.to_i64("rng.dropout"))
        .map_err(|e| bad(path, e.to_string()))?;
    let words: [u64; 4] = words
        .iter()
        .map(|&w| w as u64)
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| bad(path, "`rng.dropout` must hold 4 words"))?;
    if words == [0; 4] {
        return Err(bad(
            path,
            "`rng.dropout` is all zeros (not a valid generator state)",
        ));
    }
    Ok(Resumed {
        model,
        store,
        optimizer,
        state: TrainState {
            step: tm.step,
            batch: tm.batch,
            seq_len: tm.seq_len,
            clip: tm.clip,
            dropout_rng: Rng::from_state(words),
            carried,
            best_val: tm.best_val.unwrap_or(f64::INFINITY),
            history: tm.history,
        },
    })
}
