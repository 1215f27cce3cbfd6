//! The checkpoints a [`Trainer`](super::Trainer) writes: a library checkpoint
//! ([`crate::io::checkpoint`]) whose config JSON records the model's configuration and where the
//! run stands (best loss, early-stopping count, loss history, the training loss since the last
//! validation, and the caller's own metadata), with the state the model carries between batches
//! as extra tensors `extra.state.{name}`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{History, Objective, history::points};
use crate::io::Archive;
use crate::io::checkpoint::{CheckpointInfo, EXTRA, load_checkpoint, save_checkpoint_with_extras};
use crate::optim::Optimizer;
use crate::params::ParamStore;
use crate::rng::Rng;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// The prefix, after [`EXTRA`], of the model's own state tensors in a checkpoint.
const STATE: &str = "state.";

/// The keys of the config JSON that the trainer owns; the caller's metadata may use any other.
pub(super) const RESERVED: &[&str] = &[
    "model",
    "best_val",
    "bad_evals",
    "history",
    "interval_loss",
    "interval_steps",
];

/// The checkpoint's config JSON.
#[derive(Serialize, Deserialize)]
struct StoredRun {
    model: Value,
    /// `None` before the first validation, or while nothing was finite (JSON has no infinity).
    #[serde(default)]
    best_val: Option<f64>,
    #[serde(default)]
    bad_evals: usize,
    #[serde(default)]
    history: History,
    #[serde(default, with = "points::one")]
    interval_loss: f64,
    #[serde(default)]
    interval_steps: usize,
    /// The caller's metadata ([`super::Trainer::meta`]).
    #[serde(flatten)]
    meta: Map<String, Value>,
}

/// Where a run stands: what a checkpoint records besides parameters and optimizer state.
#[derive(Clone, Debug)]
pub(super) struct Progress {
    pub(super) step: usize,
    /// The best validation loss (or training-interval loss without validation data); infinite
    /// before the first.
    pub(super) best: f64,
    pub(super) bad_evals: usize,
    pub(super) history: History,
    pub(super) interval_loss: f64,
    pub(super) interval_steps: usize,
    /// The generator dropout draws from.
    pub(super) rng: Rng,
    pub(super) meta: Map<String, Value>,
}

impl Progress {
    pub(super) fn new(rng: Rng) -> Self {
        Progress {
            step: 0,
            best: f64::INFINITY,
            bad_evals: 0,
            history: History::default(),
            interval_loss: 0.0,
            interval_steps: 0,
            rng,
            meta: Map::new(),
        }
    }
}

/// What a [`Trainer`](super::Trainer) checkpoint says about its run, read without building the
/// model: to rebuild the model and the optimizer it needs, or to show where the run stands.
///
/// ```no_run
/// use recur::models::RunInfo;
/// let info = RunInfo::read("run/last.safetensors".as_ref())?;
/// println!("step {}, best {:?}, optimizer {}", info.step, info.best, info.optimizer);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    /// Steps taken.
    pub step: usize,
    /// The model's configuration ([`Objective::config_json`]).
    pub model: Value,
    /// The best validation loss so far, if any was finite.
    pub best: Option<f64>,
    /// The losses at each validation.
    pub history: History,
    /// The optimizer's name ([`Optimizer::name`]).
    pub optimizer: String,
    /// The optimizer's learning rate, when it stored one.
    pub lr: Option<f64>,
    /// The number of parameter values stored, to check a configuration against before building
    /// the model it describes.
    pub param_count: u128,
    /// The caller's metadata ([`super::Trainer::meta`]).
    pub meta: Map<String, Value>,
}

impl RunInfo {
    /// Reads the run recorded in the checkpoint `path`. The file must be a valid safetensors
    /// archive with a trainer's config; its tensors are checked when it is loaded.
    pub fn read(path: &Path) -> Result<RunInfo> {
        let archive = Archive::read(path)?;
        let (stored, step) = stored_run(&archive, path)?;
        let param_count = archive
            .tensors
            .iter()
            .filter(|(n, _)| n.starts_with("model."))
            .map(|(_, t)| t.dims().iter().product::<usize>() as u128)
            .sum();
        Ok(RunInfo {
            step,
            model: stored.model,
            best: stored.best_val,
            history: stored.history,
            optimizer: archive.meta("optimizer")?.to_string(),
            lr: archive
                .tensors
                .get("optim_scalar.lr")
                .and_then(|t| t.to_i64("optim_scalar.lr").ok())
                .and_then(|v| (v.len() == 1).then(|| f64::from_bits(v[0] as u64))),
            param_count,
            meta: stored.meta,
        })
    }
}

fn stored_run(archive: &Archive, path: &Path) -> Result<(StoredRun, usize)> {
    let bad = |msg: String| Error::format(path.display().to_string(), msg);
    let config = archive
        .metadata
        .get("config")
        .ok_or_else(|| bad("no `config` metadata: not a checkpoint written by a trainer".into()))?;
    let stored: StoredRun = serde_json::from_str(config)
        .map_err(|e| bad(format!("not a trainer checkpoint (config: {e})")))?;
    let step = match archive.get("progress")?.to_i64("progress")?.first() {
        Some(&s) if s >= 0 => s as usize,
        _ => return Err(bad("`progress` holds no step".into())),
    };
    Ok((stored, step))
}

/// Writes the checkpoint `path` of `model` (configuration `model_json`) at `progress`.
pub(super) fn save<T: Float, M: Objective<T>>(
    path: &Path,
    model: &M,
    model_json: &Value,
    store: &ParamStore<T>,
    opt: &dyn Optimizer<T>,
    progress: &Progress,
) -> Result<()> {
    let stored = StoredRun {
        model: model_json.clone(),
        best_val: progress.best.is_finite().then_some(progress.best),
        bad_evals: progress.bad_evals,
        history: progress.history.clone(),
        interval_loss: progress.interval_loss,
        interval_steps: progress.interval_steps,
        meta: progress.meta.clone(),
    };
    let info = CheckpointInfo {
        config: serde_json::to_string(&stored).expect("plain data serialises"),
        step: progress.step as u64,
        schedule_step: progress.step as u64,
    };
    let kept: Vec<(String, Tensor<T>)> = model
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (format!("{STATE}{n}"), t))
        .collect();
    let extras: Vec<(&str, &Tensor<T>)> = kept.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_checkpoint_with_extras(path, store, opt, &progress.rng, &info, &extras)
}

/// Loads the checkpoint `path` into `model`, `store` and `opt`, and returns where the run
/// stood. The model's configuration must equal `model_json`; on any error in the file `store`
/// and `opt` are unchanged.
pub(super) fn restore<T: Float, M: Objective<T>>(
    path: &Path,
    model: &mut M,
    model_json: &Value,
    store: &mut ParamStore<T>,
    opt: &mut dyn Optimizer<T>,
) -> Result<Progress> {
    let archive = Archive::read(path)?;
    let (stored, _) = stored_run(&archive, path)?;
    if stored.model != *model_json {
        return Err(Error::format(
            path.display().to_string(),
            format!(
                "the model differs: stored {}, here {model_json}",
                stored.model
            ),
        ));
    }
    // The model's own state is read first: nothing is changed if the checkpoint is refused.
    let mut model_state = Vec::new();
    for name in archive.tensors.keys() {
        if let Some(local) = name.strip_prefix(EXTRA).and_then(|n| n.strip_prefix(STATE)) {
            model_state.push((local.to_string(), archive.tensor::<T>(name)?));
        }
    }
    let mut rng = Rng::new(0);
    let info = load_checkpoint(path, store, opt, &mut rng, |_| Ok(()))?;
    model.load_state_tensors(model_state)?;
    let step = usize::try_from(info.step)
        .map_err(|_| Error::format(path.display().to_string(), "step out of range"))?;
    Ok(Progress {
        step,
        best: stored.best_val.unwrap_or(f64::INFINITY),
        bad_evals: stored.bad_evals,
        history: stored.history,
        interval_loss: stored.interval_loss,
        interval_steps: stored.interval_steps,
        rng,
        meta: stored.meta,
    })
}
