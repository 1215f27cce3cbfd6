//! `Trainer`: the training loop for any [`Objective`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Objective;
use crate::data::DataSource;
use crate::io::Archive;
use crate::io::checkpoint::{CheckpointInfo, EXTRA, load_checkpoint, save_checkpoint_with_extras};
use crate::nn::Ctx;
use crate::optim::{LrSchedule, Optimizer, clip_grad_norm, grad_norm};
use crate::params::ParamStore;
use crate::rng::Rng;
use crate::tape::Tape;
use crate::tensor::Float;
use crate::{Error, Result};

/// The settings of a [`Trainer`].
///
/// ```
/// use recur::models::TrainerConfig;
/// let cfg = TrainerConfig::epochs(10).clip(1.0).eval_every(200).patience(5).out_dir("run");
/// assert_eq!(cfg.max_epochs, Some(10));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerConfig {
    /// Train until this step, counted from the start of the run (also when resuming).
    pub max_steps: Option<usize>,
    /// Or for this many epochs (passes over the training data).
    pub max_epochs: Option<usize>,
    /// Clip the global gradient norm at this value.
    pub clip: Option<f64>,
    /// Validate (and write checkpoints) every this many steps, and at the end. `None`: once per
    /// epoch.
    pub eval_every: Option<usize>,
    /// Stop after this many validations without a better validation loss.
    pub patience: Option<usize>,
    /// Where `best.safetensors` and `last.safetensors` are written (atomically); none if `None`.
    pub out_dir: Option<PathBuf>,
    /// The seed of the dropout generator.
    pub seed: u64,
}

impl TrainerConfig {
    /// Train for `steps` steps; no clipping, validation once per epoch, no early stopping, no
    /// checkpoints, seed 0.
    pub fn steps(steps: usize) -> Self {
        TrainerConfig {
            max_steps: Some(steps),
            max_epochs: None,
            clip: None,
            eval_every: None,
            patience: None,
            out_dir: None,
            seed: 0,
        }
    }

    /// Train for `epochs` epochs; otherwise as [`TrainerConfig::steps`].
    pub fn epochs(epochs: usize) -> Self {
        TrainerConfig {
            max_steps: None,
            max_epochs: Some(epochs),
            ..Self::steps(0)
        }
    }

    /// Sets gradient-norm clipping.
    pub fn clip(mut self, max_norm: f64) -> Self {
        self.clip = Some(max_norm);
        self
    }

    /// Sets the validation interval in steps.
    pub fn eval_every(mut self, steps: usize) -> Self {
        self.eval_every = Some(steps);
        self
    }

    /// Sets early stopping.
    pub fn patience(mut self, evals: usize) -> Self {
        self.patience = Some(evals);
        self
    }

    /// Sets the checkpoint directory.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Sets the dropout seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid("TrainerConfig", m));
        match (self.max_steps, self.max_epochs) {
            (Some(0), _) | (_, Some(0)) => return bad("steps and epochs must be positive".into()),
            (None, None) => return bad("set max_steps or max_epochs".into()),
            _ => {}
        }
        if self.eval_every == Some(0) {
            return bad("eval_every must be positive".into());
        }
        if let Some(c) = self.clip.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return bad(format!("clip must be a positive number, got {c}"));
        }
        Ok(())
    }
}

/// What happened, for progress displays and logs ([`Trainer::on_event`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A training step was taken.
    Step {
        /// Steps taken so far (this one included).
        step: usize,
        /// Steps of the whole run.
        total_steps: usize,
        /// Epochs done, fractional.
        epoch: f64,
        /// The batch's loss.
        loss: f64,
        /// The gradient norm before clipping.
        grad_norm: f64,
        /// The learning rate used.
        lr: f64,
    },
    /// A validation ran.
    Eval {
        /// At this step.
        step: usize,
        /// Mean training loss since the previous validation.
        train_loss: f64,
        /// Mean validation loss (of the batch losses), when there is validation data.
        val_loss: Option<f64>,
        /// Whether this is the best validation loss so far (or, without validation data, the
        /// best training loss).
        improved: bool,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The file.
        path: PathBuf,
    },
    /// Training stopped early: `patience` validations without improvement.
    EarlyStop {
        /// At this step.
        step: usize,
    },
}

/// What a callback tells the [`Trainer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop after this event, writing `last.safetensors` (as for an interruption).
    Stop,
}

/// How a [`Trainer::fit`] ended.
#[derive(Clone, Debug, PartialEq)]
pub struct FitSummary {
    /// Steps taken, counted from the start of the run.
    pub steps: usize,
    /// The best validation loss (or training-interval loss without validation data).
    pub best: f64,
    /// The last validation loss, if any.
    pub last_val: Option<f64>,
    /// Whether training stopped early, or on a callback's request.
    pub stopped_early: bool,
}

/// The trainer's own state, saved with checkpoints so that a resumed run continues exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct TrainerState {
    best: Option<f64>,
    bad_evals: usize,
    last_val: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct StoredConfig {
    model: serde_json::Value,
    trainer: TrainerState,
}

/// The prefix, after [`EXTRA`], of the model's own state tensors in a checkpoint.
const MODEL_STATE: &str = "model_state.";

type Callback<'c> = Box<dyn FnMut(&Event) -> Control + 'c>;

/// The training loop: steps or epochs over a [`DataSource`], any [`Optimizer`], gradient
/// clipping, a learning-rate schedule, validation every N steps, best and last checkpoints
/// (written atomically, with the optimizer's and the dropout generator's state), resume,
/// early stopping, and events for progress displays. f32 and f64.
///
/// Batch `k` of the run is batch `k % n` of epoch `k / n` of the data source (`n` batches per
/// epoch), a function of the step alone; with the checkpointed parameters, optimizer state and
/// dropout generator, a run resumed from `last.safetensors` takes the same steps as an
/// uninterrupted one, bit for bit.
///
/// ```
/// use recur::data::SeqDataset;
/// use recur::models::{SequenceClassifier, SequenceClassifierConfig, Trainer, TrainerConfig};
/// use recur::optim::{Adam, AdamConfig};
/// use recur::{ParamStore, Rng};
///
/// // Class 1 iff the sequence holds token 3.
/// let seqs: Vec<Vec<usize>> = (0..64).map(|i| vec![2, 2 + (i % 2), 2, 2][..1 + i % 4].to_vec()).collect();
/// let targets: Vec<usize> = seqs.iter().map(|s| s.contains(&3) as usize).collect();
/// let mut data = SeqDataset::new(seqs, targets, 16)?.with_plan(|p| p.shuffle(1));
///
/// let mut ps = ParamStore::<f32>::new();
/// let cfg = SequenceClassifierConfig::tokens(4, 4, 8, 2);
/// let mut model = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(0))?;
/// let mut opt = Adam::new(AdamConfig::default().lr(0.05))?;
/// let summary = Trainer::new(TrainerConfig::epochs(30))
///     .fit(&mut model, &mut ps, &mut opt, &mut data, None)?;
/// assert_eq!(summary.steps, 30 * 4);
/// let b = data.gather(&(0..64).collect::<Vec<_>>())?;
/// let acc = recur::tensor::accuracy(&model.classify(&ps, &b)?, &b.targets)?;
/// assert!(acc > 0.95, "{acc}");
/// # Ok::<(), recur::Error>(())
/// ```
pub struct Trainer<'c> {
    config: TrainerConfig,
    schedule: Option<Box<dyn LrSchedule + 'c>>,
    callback: Option<Callback<'c>>,
    resume: Option<PathBuf>,
}

impl<'c> Trainer<'c> {
    /// A trainer with these settings, the optimizer's own learning rate and no callback.
    pub fn new(config: TrainerConfig) -> Self {
        Trainer {
            config,
            schedule: None,
            callback: None,
            resume: None,
        }
    }

    /// Sets the learning rate before every step to `schedule.lr_at(step)` (step counted from 0).
    pub fn schedule(mut self, schedule: impl LrSchedule + 'c) -> Self {
        self.schedule = Some(Box::new(schedule));
        self
    }

    /// Calls `f` on every [`Event`]; returning [`Control::Stop`] ends training after writing
    /// the last checkpoint.
    pub fn on_event(mut self, f: impl FnMut(&Event) -> Control + 'c) -> Self {
        self.callback = Some(Box::new(f));
        self
    }

    /// Continues the run saved in the checkpoint `path` (a `last.safetensors` or
    /// `best.safetensors` written by a trainer): parameters, optimizer state, dropout generator,
    /// step, best loss and early-stopping count come from it. The model's configuration must
    /// match; on any mismatch nothing is changed and `fit` fails.
    pub fn resume_from(mut self, path: impl Into<PathBuf>) -> Self {
        self.resume = Some(path.into());
        self
    }

    /// Trains `model` (parameters in `store`) with `opt` on `train`, validating on `valid` (the
    /// whole of its epoch 0, in evaluation mode) every `eval_every` steps and at the end.
    pub fn fit<T, M, D>(
        &mut self,
        model: &mut M,
        store: &mut ParamStore<T>,
        opt: &mut dyn Optimizer<T>,
        train: &mut D,
        mut valid: Option<&mut dyn DataSource<Batch = M::Batch>>,
    ) -> Result<FitSummary>
    where
        T: Float,
        M: Objective<T>,
        D: DataSource<Batch = M::Batch>,
    {
        self.config.check()?;
        let per_epoch = train.batches_per_epoch();
        if per_epoch == 0 {
            return Err(Error::invalid(
                "Trainer::fit",
                "the training data has no batches",
            ));
        }
        let total = match (self.config.max_steps, self.config.max_epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => e.checked_mul(per_epoch).ok_or_else(|| {
                Error::invalid("Trainer::fit", format!("{e} epochs are too many"))
            })?,
            (None, None) => unreachable!("checked"),
        };
        let eval_every = self.config.eval_every.unwrap_or(per_epoch);
        let model_json: serde_json::Value = serde_json::from_str(&model.config_json())
            .map_err(|e| Error::invalid("Objective::config_json", format!("not JSON: {e}")))?;

        let mut rng = Rng::new(self.config.seed);
        let mut ts = TrainerState::default();
        let mut step = 0usize;
        if let Some(path) = &self.resume {
            // The model's own state first (nothing is changed if the checkpoint is refused).
            let archive = Archive::read(path)?;
            let mut model_state = Vec::new();
            for name in archive.tensors.keys() {
                if let Some(local) = name
                    .strip_prefix(EXTRA)
                    .and_then(|n| n.strip_prefix(MODEL_STATE))
                {
                    model_state.push((local.to_string(), archive.tensor::<T>(name)?));
                }
            }
            let mut stored: Option<TrainerState> = None;
            let info = load_checkpoint(path, store, opt, &mut rng, |json| {
                let s: StoredConfig = serde_json::from_str(json).map_err(|e| {
                    Error::format(
                        "checkpoint config",
                        format!("not a trainer checkpoint: {e}"),
                    )
                })?;
                if s.model != model_json {
                    return Err(Error::format(
                        "checkpoint config",
                        format!("the model differs: stored {}, here {model_json}", s.model),
                    ));
                }
                stored = Some(s.trainer);
                Ok(())
            })?;
            ts = stored.expect("set by the check");
            model.load_state_tensors(model_state)?;
            step = usize::try_from(info.step)
                .map_err(|_| Error::format(path.display().to_string(), "step out of range"))?;
        }
        if let Some(dir) = &self.config.out_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }

        let mut tape = Tape::new();
        let (mut interval_loss, mut interval_steps) = (0.0, 0usize);
        let mut stopped = false;
        while step < total && !stopped {
            let lr = match &self.schedule {
                Some(s) => {
                    let lr = s.lr_at(step);
                    opt.set_lr(lr);
                    lr
                }
                None => opt.lr(),
            };
            let batch = train.batch(step / per_epoch, step % per_epoch)?;
            tape.clear();
            let loss = model.loss(&mut Ctx::train(&mut tape, store, &mut rng), &batch)?;
            let (loss_value, mut grads) = crate::nn::backward_loss(&mut tape, loss)?;
            let norm = match self.config.clip {
                Some(c) => clip_grad_norm(&mut grads, c)?,
                None => grad_norm(&grads),
            };
            if !loss_value.is_finite() || !norm.is_finite() {
                return Err(Error::invalid(
                    "Trainer::fit",
                    format!(
                        "step {}: the loss or gradient is not finite (loss {loss_value}, \
                         gradient norm {norm}); try a smaller learning rate or clipping",
                        step + 1
                    ),
                ));
            }
            opt.step(store, &grads)?;
            step += 1;
            interval_loss += loss_value;
            interval_steps += 1;
            stopped |= self.emit(&Event::Step {
                step,
                total_steps: total,
                epoch: step as f64 / per_epoch as f64,
                loss: loss_value,
                grad_norm: norm,
                lr,
            }) == Control::Stop;
            if !step.is_multiple_of(eval_every) && step != total && !stopped {
                continue;
            }
            let train_loss = interval_loss / interval_steps.max(1) as f64;
            (interval_loss, interval_steps) = (0.0, 0);
            let val = match valid.as_deref_mut() {
                Some(v) => {
                    // Validation must not disturb the state the model carries between batches.
                    let kept = model.state_tensors();
                    let val = evaluate(model, store, &mut tape, v)?;
                    model.load_state_tensors(kept)?;
                    Some(val)
                }
                None => None,
            };
            let score = val.unwrap_or(train_loss);
            let improved = ts.best.is_none_or(|b| score < b);
            if improved {
                ts.best = Some(score);
                ts.bad_evals = 0;
            } else {
                ts.bad_evals += 1;
            }
            ts.last_val = val;
            model.on_eval(store, step, val)?;
            stopped |= self.emit(&Event::Eval {
                step,
                train_loss,
                val_loss: val,
                improved,
            }) == Control::Stop;
            let early = self.config.patience.is_some_and(|p| ts.bad_evals >= p);
            if let Some(dir) = self.config.out_dir.clone() {
                let cfg = serde_json::to_string(&StoredConfig {
                    model: model_json.clone(),
                    trainer: ts.clone(),
                })
                .expect("plain data serialises");
                let info = CheckpointInfo {
                    config: cfg,
                    step: step as u64,
                    schedule_step: step as u64,
                };
                let kept: Vec<(String, crate::Tensor<T>)> = model
                    .state_tensors()
                    .into_iter()
                    .map(|(n, t)| (format!("{MODEL_STATE}{n}"), t))
                    .collect();
                let extras: Vec<(&str, &crate::Tensor<T>)> =
                    kept.iter().map(|(n, t)| (n.as_str(), t)).collect();
                let mut names = vec!["last.safetensors"];
                if improved {
                    names.push("best.safetensors");
                }
                for name in names {
                    let path = dir.join(name);
                    save_checkpoint_with_extras(&path, store, opt, &rng, &info, &extras)?;
                    stopped |= self.emit(&Event::Checkpoint { path }) == Control::Stop;
                }
            }
            if early {
                self.emit(&Event::EarlyStop { step });
                stopped = true;
            }
        }
        Ok(FitSummary {
            steps: step,
            best: ts.best.unwrap_or(f64::NAN),
            last_val: ts.last_val,
            stopped_early: stopped,
        })
    }

    fn emit(&mut self, e: &Event) -> Control {
        match &mut self.callback {
            Some(f) => f(e),
            None => Control::Continue,
        }
    }
}

/// The mean loss over the batches of epoch 0 of `data`, in evaluation mode (no dropout).
pub(crate) fn evaluate<T: Float, M: Objective<T>>(
    model: &mut M,
    store: &ParamStore<T>,
    tape: &mut Tape<T>,
    data: &mut dyn DataSource<Batch = M::Batch>,
) -> Result<f64> {
    let n = data.batches_per_epoch();
    if n == 0 {
        return Err(Error::invalid(
            "Trainer::fit",
            "the validation data has no batches",
        ));
    }
    let mut total = 0.0;
    for k in 0..n {
        let batch = data.batch(0, k)?;
        tape.clear();
        let loss = model.loss(&mut Ctx::eval(tape, store), &batch)?;
        total += tape.value(loss)?.data()[0].to_f64();
    }
    Ok(total / n as f64)
}
