//! `Trainer`: the training loop for any [`Objective`].

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::run::{self, Progress, RESERVED, RunInfo};
use super::{History, Objective};
use crate::data::DataSource;
use crate::dist::{DataParallel, MicroBatch, MicroSteps, StepPlan, Whole};
use crate::nn::Ctx;
use crate::optim::{LrSchedule, Optimizer, clip_grad_norm, grad_norm};
use crate::params::ParamStore;
use crate::rng::Rng;
use crate::tape::Tape;
use crate::tensor::Float;
use crate::{Error, Precision, Result};

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
    /// The seed of the dropout generator (see also [`Trainer::rng`]).
    pub seed: u64,
    /// What the products compute in, training and validation alike (see [`Precision`]):
    /// [`Precision::Bf16`] needs an `f32` model and a CPU with AVX512_BF16, else the run stops
    /// with an error before its first step.
    pub precision: Precision,
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
            precision: Precision::F32,
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

    /// Sets the precision of the products (see [`Precision`]).
    ///
    /// ```
    /// use recur::Precision;
    /// use recur::models::TrainerConfig;
    /// let cfg = TrainerConfig::steps(1000).clip(5.0).precision(Precision::Bf16);
    /// assert_eq!(cfg.precision, Precision::Bf16);
    /// // Checked when the run starts: on a CPU without AVX512_BF16, `Trainer::fit` returns an
    /// // error before the first step; `Precision::Bf16.supported::<f32>()` tells in advance.
    /// ```
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
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
    /// A validation ran; its checkpoints are written next, unless the callback answers
    /// [`Control::Abort`].
    Eval {
        /// At this step.
        step: usize,
        /// Mean training loss since the previous validation.
        train_loss: f64,
        /// Mean validation loss (of the batch losses), when there is validation data.
        val_loss: Option<f64>,
        /// Whether this is the best validation loss so far (or, without validation data, the
        /// best training loss). A NaN is never the best.
        improved: bool,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// At this step.
        step: usize,
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
    /// Stop soon, resumably: after a step, `last.safetensors` is written (with no validation
    /// unless one is due); after a validation, once its checkpoints are written.
    Stop,
    /// Stop at once and write nothing more (for example when a validation loss shows the run
    /// diverging: the checkpoints on disk stay those of the last good validation).
    Abort,
}

/// How a [`Trainer::fit`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// All steps were taken.
    Finished,
    /// `patience` validations without improvement.
    EarlyStopped,
    /// A callback answered [`Control::Stop`].
    Stopped,
    /// A callback answered [`Control::Abort`].
    Aborted,
}

/// How a [`Trainer::fit`] went.
#[derive(Clone, Debug, PartialEq)]
pub struct FitSummary {
    /// Steps taken, counted from the start of the run.
    pub steps: usize,
    /// The best validation loss (or training-interval loss without validation data); infinite
    /// if none was finite.
    pub best: f64,
    /// The last validation loss, if any.
    pub last_val: Option<f64>,
    /// Why training ended.
    pub ended: Ended,
    /// The losses at every validation of the run (a resumed run's included).
    pub history: History,
}

type Callback<'c, T> = Box<dyn FnMut(&Event, &ParamStore<T>) -> Control + 'c>;

/// The training loop: steps or epochs over a [`DataSource`], any [`Optimizer`], gradient
/// clipping, a learning-rate schedule, validation every N steps, best and last checkpoints
/// (written atomically, with the optimizer's and the dropout generator's state), resume,
/// early stopping, and events for progress displays. f32 and f64.
///
/// Batch `k` of the run is batch `k % n` of epoch `k / n` of the data source (`n` batches per
/// epoch), a function of the step alone; with the checkpointed parameters, optimizer state,
/// dropout generator and the state the model carries ([`Objective::state_tensors`]), a run
/// resumed from `last.safetensors` takes the same steps as an uninterrupted one, bit for bit,
/// and reports the same losses.
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
pub struct Trainer<'c, T: Float> {
    config: TrainerConfig,
    schedule: Option<Box<dyn LrSchedule + 'c>>,
    callback: Option<Callback<'c, T>>,
    resume: Option<PathBuf>,
    restored: Option<Progress>,
    meta: Map<String, Value>,
    rng: Option<Rng>,
    fresh_best: bool,
}

impl<'c, T: Float> Trainer<'c, T> {
    /// A trainer with these settings, the optimizer's own learning rate and no callback.
    pub fn new(config: TrainerConfig) -> Self {
        Trainer {
            config,
            schedule: None,
            callback: None,
            resume: None,
            restored: None,
            meta: Map::new(),
            rng: None,
            fresh_best: false,
        }
    }

    /// Sets the learning rate before every step to `schedule.lr_at(step)` (step counted from 0).
    pub fn schedule(mut self, schedule: impl LrSchedule + 'c) -> Self {
        self.schedule = Some(Box::new(schedule));
        self
    }

    /// Calls `f` on every [`Event`] with the current parameters (after the step's update):
    /// for progress displays, logs, or work that needs the model, such as writing a sample.
    /// Its [`Control`] answer can stop or abort training.
    pub fn on_event(mut self, f: impl FnMut(&Event, &ParamStore<T>) -> Control + 'c) -> Self {
        self.callback = Some(Box::new(f));
        self
    }

    /// Records `value` under `key` in the checkpoints' configuration, beside the trainer's own
    /// entries (which `key` must not name: `model`, `best_val`, `bad_evals`, `history`,
    /// `interval_loss`, `interval_steps`). A resumed run keeps the stored metadata, with the
    /// keys given here replaced. Read it back with [`RunInfo::read`].
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Draws dropout from `rng` instead of a generator seeded with [`TrainerConfig::seed`]
    /// (ignored when resuming: the checkpoint's generator continues).
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = Some(rng);
        self
    }

    /// On resuming, starts the best validation loss and the early-stopping count afresh (when
    /// the validation data is not the checkpoint's).
    pub fn forget_best(mut self) -> Self {
        self.fresh_best = true;
        self
    }

    /// Continues the run saved in the checkpoint `path` (a `last.safetensors` or
    /// `best.safetensors` written by a trainer) when [`Trainer::fit`] starts: parameters,
    /// optimizer state, dropout generator, the model's carried state, step, best loss,
    /// early-stopping count and loss history come from it. The model's configuration must
    /// match; on any mismatch nothing is changed and `fit` fails. See [`Trainer::restore`] to
    /// load it at once.
    pub fn resume_from(mut self, path: impl Into<PathBuf>) -> Self {
        self.resume = Some(path.into());
        self
    }

    /// Loads the checkpoint `path` into `model`, `store` and `opt` now (as
    /// [`Trainer::resume_from`] does when `fit` starts), so that everything is checked before
    /// the caller writes anything; the next `fit` continues from it. Returns what the file
    /// records of the run.
    pub fn restore<M: Objective<T>>(
        &mut self,
        path: &Path,
        model: &mut M,
        store: &mut ParamStore<T>,
        opt: &mut dyn Optimizer<T>,
    ) -> Result<RunInfo> {
        let info = RunInfo::read(path)?;
        let progress = run::restore(path, model, &model_config(model)?, store, opt)?;
        self.resume = None;
        self.restored = Some(progress);
        Ok(info)
    }

    /// Trains `model` (parameters in `store`) with `opt` on `train`, validating on `valid` (the
    /// whole of its epoch 0, in evaluation mode, the model's carried state put aside) every
    /// `eval_every` steps and at the end.
    pub fn fit<M, D>(
        &mut self,
        model: &mut M,
        store: &mut ParamStore<T>,
        opt: &mut dyn Optimizer<T>,
        train: &mut D,
        valid: Option<&mut dyn DataSource<Batch = M::Batch>>,
    ) -> Result<FitSummary>
    where
        M: Objective<T>,
        D: DataSource<Batch = M::Batch>,
    {
        self.fit_with(model, store, opt, train, valid, &mut Whole)
    }

    /// Trains as [`Trainer::fit`] does, with every batch cut into `parallel`'s micro-batches
    /// and their gradients combined in one fixed order, in this process or across the ranks of
    /// an MPI job (see [`crate::dist`]): every rank must call it with the same arguments, and
    /// every rank ends with the same parameters, which do not depend on the number of ranks.
    /// Rank 0 alone writes checkpoints (and sees [`Event::Checkpoint`]); every rank validates
    /// on the whole validation data, and the callbacks' answers are agreed (the strongest wins).
    /// When it returns, the model carries the whole batch's state.
    ///
    /// ```
    /// use recur::data::{CharVocab, LmStreams};
    /// use recur::dist::{DataParallel, SingleProcess};
    /// use recur::models::{CharLm, CharLmConfig, Trainer, TrainerConfig};
    /// use recur::optim::{Sgd, SgdConfig};
    /// use recur::{ParamStore, Rng};
    ///
    /// let text = "abcd".repeat(50);
    /// let vocab = CharVocab::from_text(&text)?;
    /// let chars: String = vocab.chars().iter().collect();
    /// let cfg = CharLmConfig::new("lstm", 8, 1, 4, &chars);
    /// let mut ps = ParamStore::<f32>::new();
    /// let mut lm = CharLm::new(&mut ps, cfg, &mut Rng::new(0))?;
    /// let mut data = LmStreams::new(&vocab.encode(&text)?, 4, 10)?;
    /// let mut opt = Sgd::new(SgdConfig::default().lr(0.5))?;
    /// let mut par = DataParallel::new(2, &SingleProcess)?; // 2 micro-batches of 2 streams
    /// let s = Trainer::new(TrainerConfig::steps(8))
    ///     .fit_parallel(&mut lm, &mut ps, &mut opt, &mut data, None, &mut par)?;
    /// assert_eq!(s.steps, 8);
    /// assert_eq!(par.timing().steps, 8);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn fit_parallel<M, D>(
        &mut self,
        model: &mut M,
        store: &mut ParamStore<T>,
        opt: &mut dyn Optimizer<T>,
        train: &mut D,
        valid: Option<&mut dyn DataSource<Batch = M::Batch>>,
        parallel: &mut DataParallel<'_>,
    ) -> Result<FitSummary>
    where
        M: Objective<T>,
        M::Batch: MicroBatch,
        D: DataSource<Batch = M::Batch>,
    {
        let mut plan = MicroSteps::new(parallel);
        let summary = self.fit_with(model, store, opt, train, valid, &mut plan)?;
        StepPlan::<T, M>::gather_state(&mut plan, model)?;
        Ok(summary)
    }

    fn fit_with<M, D>(
        &mut self,
        model: &mut M,
        store: &mut ParamStore<T>,
        opt: &mut dyn Optimizer<T>,
        train: &mut D,
        mut valid: Option<&mut dyn DataSource<Batch = M::Batch>>,
        plan: &mut dyn StepPlan<T, M>,
    ) -> Result<FitSummary>
    where
        M: Objective<T>,
        D: DataSource<Batch = M::Batch>,
    {
        self.config.check()?;
        if let Some(key) = self.meta.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(Error::invalid(
                "Trainer::meta",
                format!("`{key}` is the trainer's own entry"),
            ));
        }
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
        let model_json = model_config(model)?;

        let mut p = match (self.restored.take(), self.resume.take()) {
            (Some(p), _) => p,
            (None, Some(path)) => run::restore(&path, model, &model_json, store, opt)?,
            (None, None) => Progress::new(
                self.rng
                    .clone()
                    .unwrap_or_else(|| Rng::new(self.config.seed)),
            ),
        };
        if self.fresh_best {
            (p.best, p.bad_evals) = (f64::INFINITY, 0);
        }
        p.meta.extend(self.meta.clone());
        let mut tape = Tape::new();
        // Validation records on its own tape, which keeps its buffers from one validation to the
        // next (a tape's pool lets go of buffers unused for two steps).
        let mut val_tape = Tape::new();
        tape.set_precision(self.config.precision)?;
        val_tape.set_precision(self.config.precision)?;
        if let Some(dir) = self.config.out_dir.as_ref().filter(|_| plan.writes()) {
            std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        }
        plan.start(model)?;

        let mut stop = false;
        let ended = loop {
            if p.step >= total {
                break Ended::Finished;
            }
            let lr = match &self.schedule {
                Some(s) => {
                    let lr = s.lr_at(p.step);
                    opt.set_lr(lr);
                    lr
                }
                None => opt.lr(),
            };
            let batch = train.batch(p.step / per_epoch, p.step % per_epoch)?;
            let (loss_value, mut grads) =
                plan.grads(model, store, &mut tape, &mut p.rng, &batch)?;
            let norm = match self.config.clip {
                Some(c) => match clip_grad_norm(&mut grads, c) {
                    Ok(norm) => norm,
                    Err(Error::NonFinite { value, .. }) => value,
                    Err(e) => return Err(e),
                },
                None => grad_norm(&grads),
            };
            if !loss_value.is_finite() || !norm.is_finite() {
                return Err(Error::NotFiniteStep {
                    step: p.step + 1,
                    loss: loss_value,
                    grad_norm: norm,
                });
            }
            opt.step(store, &grads)?;
            p.step += 1;
            p.interval_loss += loss_value;
            p.interval_steps += 1;
            let step = p.step;
            match plan.agree(self.emit(
                &Event::Step {
                    step,
                    total_steps: total,
                    epoch: step as f64 / per_epoch as f64,
                    loss: loss_value,
                    grad_norm: norm,
                    lr,
                },
                store,
            ))? {
                Control::Abort => break Ended::Aborted,
                Control::Stop => stop = true,
                Control::Continue => {}
            }
            if !step.is_multiple_of(eval_every) && step != total {
                if stop {
                    // Saved between validations: the interval's losses go with it.
                    if self.save(model, &model_json, store, opt, &p, false, plan)? == Control::Abort
                    {
                        break Ended::Aborted;
                    }
                    break Ended::Stopped;
                }
                continue;
            }

            let train_loss = p.interval_loss / p.interval_steps.max(1) as f64;
            (p.interval_loss, p.interval_steps) = (0.0, 0);
            let val = match valid.as_deref_mut() {
                Some(v) => {
                    // Validation must not disturb the state the model carries between batches.
                    let kept = model.state_tensors();
                    let val = evaluate_on(model, store, &mut val_tape, v)?;
                    model.load_state_tensors(kept)?;
                    Some(val)
                }
                None => None,
            };
            let score = val.unwrap_or(train_loss);
            let improved = score < p.best;
            if improved {
                (p.best, p.bad_evals) = (score, 0);
            } else {
                p.bad_evals += 1;
            }
            p.history.train.push((step, train_loss));
            if let Some(v) = val {
                p.history.val.push((step, v));
            }
            model.on_eval(store, step, val)?;
            match plan.agree(self.emit(
                &Event::Eval {
                    step,
                    train_loss,
                    val_loss: val,
                    improved,
                },
                store,
            ))? {
                Control::Abort => break Ended::Aborted,
                Control::Stop => stop = true,
                Control::Continue => {}
            }
            match self.save(model, &model_json, store, opt, &p, improved, plan)? {
                Control::Abort => break Ended::Aborted,
                Control::Stop => stop = true,
                Control::Continue => {}
            }
            if self.config.patience.is_some_and(|n| p.bad_evals >= n) {
                self.emit(&Event::EarlyStop { step }, store);
                break Ended::EarlyStopped;
            }
            if stop {
                break Ended::Stopped;
            }
        };
        Ok(FitSummary {
            steps: p.step,
            best: p.best,
            last_val: p.history.val.last().map(|v| v.1),
            ended,
            history: p.history,
        })
    }

    /// Writes `last.safetensors`, and `best.safetensors` if `best`, when there is an output
    /// directory (and `plan` says this process writes); returns the callback's strongest answer
    /// to the checkpoint events (agreed by every process).
    #[allow(clippy::too_many_arguments)]
    fn save<M: Objective<T>>(
        &mut self,
        model: &mut M,
        model_json: &Value,
        store: &ParamStore<T>,
        opt: &dyn Optimizer<T>,
        p: &Progress,
        best: bool,
        plan: &mut dyn StepPlan<T, M>,
    ) -> Result<Control> {
        let Some(dir) = self.config.out_dir.clone() else {
            return Ok(Control::Continue);
        };
        plan.gather_state(model)?;
        if !plan.writes() {
            return plan.agree(Control::Continue);
        }
        let answer = self.write_checkpoints(&dir, model, model_json, store, opt, p, best)?;
        plan.agree(answer)
    }

    /// Writes the checkpoints of [`Trainer::save`] into `dir`.
    #[allow(clippy::too_many_arguments)]
    fn write_checkpoints<M: Objective<T>>(
        &mut self,
        dir: &Path,
        model: &M,
        model_json: &Value,
        store: &ParamStore<T>,
        opt: &dyn Optimizer<T>,
        p: &Progress,
        best: bool,
    ) -> Result<Control> {
        let mut answer = Control::Continue;
        for name in ["last.safetensors", "best.safetensors"]
            .into_iter()
            .take(1 + best as usize)
        {
            let path = dir.join(name);
            run::save(&path, model, model_json, store, opt, p)?;
            match self.emit(&Event::Checkpoint { path, step: p.step }, store) {
                Control::Abort => return Ok(Control::Abort),
                Control::Stop => answer = Control::Stop,
                Control::Continue => {}
            }
        }
        Ok(answer)
    }

    fn emit(&mut self, e: &Event, store: &ParamStore<T>) -> Control {
        match &mut self.callback {
            Some(f) => f(e, store),
            None => Control::Continue,
        }
    }
}

/// The model's configuration as a JSON value.
fn model_config<T: Float, M: Objective<T>>(model: &M) -> Result<Value> {
    serde_json::from_str(&model.config_json())
        .map_err(|e| Error::invalid("Objective::config_json", format!("not JSON: {e}")))
}

/// The mean loss of `model` over the batches of epoch 0 of `data`, in evaluation mode (no
/// dropout, nothing kept for backward): what the [`Trainer`] reports as the validation loss.
///
/// ```
/// use recur::data::SeqDataset;
/// use recur::models::{evaluate, SequenceClassifier, SequenceClassifierConfig};
/// use recur::{ParamStore, Rng};
///
/// let mut ps = ParamStore::<f64>::new();
/// let cfg = SequenceClassifierConfig::tokens(4, 4, 8, 2);
/// let mut model = SequenceClassifier::new(&mut ps, "", cfg, &mut Rng::new(0))?;
/// let mut data = SeqDataset::new(vec![vec![1, 2], vec![3]], vec![0, 1], 2)?;
/// // An untrained classifier of two classes: about ln 2 nats.
/// assert!((evaluate(&mut model, &ps, &mut data)? - 2f64.ln()).abs() < 0.2);
/// # Ok::<(), recur::Error>(())
/// ```
pub fn evaluate<T: Float, M: Objective<T>>(
    model: &mut M,
    store: &ParamStore<T>,
    data: &mut dyn DataSource<Batch = M::Batch>,
) -> Result<f64> {
    evaluate_on(model, store, &mut Tape::new(), data)
}

/// [`evaluate`] on the caller's tape.
fn evaluate_on<T: Float, M: Objective<T>>(
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
