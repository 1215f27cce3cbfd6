//! `SequenceRegressor`: many-to-many regression over time series, one output vector per step.

use serde::{Deserialize, Serialize};

use super::{Objective, cell_from_name};
use crate::data::{BatchPlan, DataSource, pad_dense};
use crate::nn::{Ctx, Linear, Module, Recurrent, RecurrentConfig, named_children, scope};
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tape::Var;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// The shape of a [`SequenceRegressor`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequenceRegressorConfig {
    /// Features per input step.
    pub inputs: usize,
    /// Values per output step.
    pub outputs: usize,
    /// `rnn`, `rnn_relu`, `lstm` or `gru`.
    pub cell: String,
    /// Hidden units per layer.
    pub hidden: usize,
    /// Stacked layers.
    pub layers: usize,
    /// Dropout between recurrent layers, in training.
    pub dropout: f64,
}

impl SequenceRegressorConfig {
    /// One LSTM layer of `hidden` units from `inputs` features to `outputs` values per step.
    pub fn new(inputs: usize, hidden: usize, outputs: usize) -> Self {
        SequenceRegressorConfig {
            inputs,
            outputs,
            cell: "lstm".into(),
            hidden,
            layers: 1,
            dropout: 0.0,
        }
    }

    /// Sets the cell.
    pub fn cell(mut self, cell: &str) -> Self {
        self.cell = cell.into();
        self
    }

    /// Sets the number of layers.
    pub fn layers(mut self, n: usize) -> Self {
        self.layers = n;
        self
    }
}

/// A batch of padded time series: inputs `[T, B, F]`, per-step targets `[T, B, O]` and lengths.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseBatch<T: Float> {
    /// Inputs `[T, B, F]`, zero past each length.
    pub x: Tensor<T>,
    /// Targets `[T, B, O]`, zero past each length (not counted).
    pub y: Tensor<T>,
    /// Each series' length, in any order.
    pub lengths: Vec<usize>,
}

/// Time series with per-step targets, batched by a [`BatchPlan`] (a [`DataSource`] of
/// [`DenseBatch`]es). Series `k` is `x[k]` (`len * F` values, step after step) with targets
/// `y[k]` (`len * O`).
///
/// ```
/// use recur::data::DataSource;
/// use recur::models::DenseDataset;
/// let x = vec![vec![1.0f64, 2.0, 3.0], vec![4.0]];
/// let y = vec![vec![2.0, 3.0, 4.0], vec![5.0]];
/// let mut data = DenseDataset::new(x, y, 1, 1, 2)?;
/// let b = data.batch(0, 0)?;
/// assert_eq!(b.x.dims(), &[3, 2, 1]);
/// assert_eq!(b.lengths, [3, 1]);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct DenseDataset<T: Float> {
    x: Vec<Vec<T>>,
    y: Vec<Vec<T>>,
    features: usize,
    outputs: usize,
    plan: BatchPlan,
}

impl<T: Float> DenseDataset<T> {
    /// Series `x` of `features` per step with targets `y` of `outputs` per step, in batches of
    /// `batch`. Each series must be non-empty and its targets as long (in steps) as its inputs.
    pub fn new(
        x: Vec<Vec<T>>,
        y: Vec<Vec<T>>,
        features: usize,
        outputs: usize,
        batch: usize,
    ) -> Result<Self> {
        const OP: &str = "DenseDataset::new";
        if x.len() != y.len() || features == 0 || outputs == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} input series and {} target series, features {features}, outputs \
                     {outputs}",
                    x.len(),
                    y.len()
                ),
            ));
        }
        let mut lengths = Vec::with_capacity(x.len());
        for (k, (xs, ys)) in x.iter().zip(&y).enumerate() {
            let steps = xs.len() / features;
            if xs.is_empty() || xs.len() % features != 0 || ys.len() != steps * outputs {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "series {k}: {} inputs and {} targets do not make whole steps of \
                         {features} and {outputs}",
                        xs.len(),
                        ys.len()
                    ),
                ));
            }
            lengths.push(steps);
        }
        let plan = BatchPlan::new(&lengths, batch)?;
        Ok(DenseDataset {
            x,
            y,
            features,
            outputs,
            plan,
        })
    }

    /// Replaces the batch plan by `f(plan)` (shuffling, bucketing).
    pub fn with_plan(mut self, f: impl FnOnce(BatchPlan) -> BatchPlan) -> Self {
        self.plan = f(self.plan);
        self
    }

    /// The number of series.
    pub fn len(&self) -> usize {
        self.x.len()
    }

    /// Whether there are no series (never: construction needs one).
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    /// The series `indices` as one padded batch.
    pub fn gather(&self, indices: &[usize]) -> Result<DenseBatch<T>> {
        fn get<T>(v: &[Vec<T>], i: usize) -> Result<&[T]> {
            v.get(i).map(Vec::as_slice).ok_or(Error::IndexOutOfRange {
                op: "DenseDataset::gather",
                index: i,
                size: v.len(),
            })
        }
        let xs: Vec<&[T]> = indices
            .iter()
            .map(|&i| get(&self.x, i))
            .collect::<Result<_>>()?;
        let ys: Vec<&[T]> = indices
            .iter()
            .map(|&i| get(&self.y, i))
            .collect::<Result<_>>()?;
        let (x, lengths) = pad_dense(&xs, self.features)?;
        let (y, _) = pad_dense(&ys, self.outputs)?;
        Ok(DenseBatch { x, y, lengths })
    }
}

impl<T: Float> DataSource for DenseDataset<T> {
    type Batch = DenseBatch<T>;

    fn batches_per_epoch(&self) -> usize {
        self.plan.batches_per_epoch()
    }

    fn batch(&mut self, epoch: usize, index: usize) -> Result<DenseBatch<T>> {
        let batches = self.plan.epoch(epoch);
        let idx = batches.get(index).ok_or(Error::IndexOutOfRange {
            op: "DenseDataset::batch",
            index,
            size: batches.len(),
        })?;
        self.gather(idx)
    }
}

/// Stacked RNN/LSTM/GRU -> [`Linear`] at every step: a many-to-many model for time series
/// (per-step targets, or next-value prediction with the series shifted by one). Parameters are
/// named `rnn.*` and `head.*` as in PyTorch.
///
/// ```
/// use recur::models::{DenseDataset, SequenceRegressor, SequenceRegressorConfig};
/// use recur::nn::Ctx;
/// use recur::{ParamStore, Rng, Tape};
/// let mut ps = ParamStore::<f64>::new();
/// let model = SequenceRegressor::new(&mut ps, "", SequenceRegressorConfig::new(1, 8, 1), &mut Rng::new(0))?;
/// let data = DenseDataset::new(vec![vec![0.5; 4], vec![0.1; 2]], vec![vec![1.0; 4], vec![0.0; 2]], 1, 1, 2)?;
/// let b = data.gather(&[0, 1])?;
/// let mut tape = Tape::new();
/// let mut cx = Ctx::eval(&mut tape, &ps);
/// let y = model.forward(&mut cx, &b.x, &b.lengths)?;
/// let loss = model.masked_mse(&mut cx, y, &b)?;
/// assert_eq!(tape.shape(y)?.dims(), &[4, 2, 1]);
/// assert!(tape.value(loss)?.data()[0] > 0.0);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SequenceRegressor {
    config: SequenceRegressorConfig,
    rnn: Recurrent,
    head: Linear,
}

impl SequenceRegressor {
    /// Registers a new model in `store` under `prefix`.
    pub fn new<T: Float>(
        store: &mut ParamStore<T>,
        prefix: &str,
        config: SequenceRegressorConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        let kind = cell_from_name(&config.cell)?;
        let rc = RecurrentConfig::new(config.inputs, config.hidden)
            .num_layers(config.layers)
            .dropout(config.dropout);
        let rnn = Recurrent::new(store, &scope(prefix, "rnn")?, kind, rc, rng)?;
        let head = Linear::new(
            store,
            &scope(prefix, "head")?,
            config.hidden,
            config.outputs,
            true,
            rng,
        )?;
        Ok(SequenceRegressor { config, rnn, head })
    }

    /// The configuration.
    pub fn config(&self) -> &SequenceRegressorConfig {
        &self.config
    }

    /// Outputs `[T, B, O]` for inputs `[T, B, F]` with one length per series.
    pub fn forward<T: Float>(
        &self,
        cx: &mut Ctx<'_, T>,
        x: &Tensor<T>,
        lengths: &[usize],
    ) -> Result<Var> {
        let xv = cx.tape.constant_copy(x);
        let out = cx.recurrent(&self.rnn, xv, Some(lengths))?;
        cx.linear(&self.head, out.y)
    }

    /// The mean squared error of `pred` `[T, B, O]` against the batch's targets over the real
    /// steps only.
    pub fn masked_mse<T: Float>(
        &self,
        cx: &mut Ctx<'_, T>,
        pred: Var,
        batch: &DenseBatch<T>,
    ) -> Result<Var> {
        let dims = batch.y.dims().to_vec();
        let (b, o) = (dims[1], dims[2]);
        let mask = Tensor::from_fn(&dims, |i| {
            let (t, row) = (i / (b * o), (i / o) % b);
            if t < batch.lengths[row] {
                T::ONE
            } else {
                T::ZERO
            }
        })?;
        let count: usize = batch.lengths.iter().sum::<usize>() * o;
        let y = cx.tape.constant_copy(&batch.y);
        let diff = cx.tape.sub(pred, y)?;
        let m = cx.constant(mask);
        let diff = cx.tape.mul(diff, m)?;
        let sq = cx.tape.mul(diff, diff)?;
        let total = cx.tape.sum(sq)?;
        cx.tape.scale(total, T::from_f64(1.0 / count as f64))
    }
}

impl Module for SequenceRegressor {
    fn named_params(&self) -> Vec<(String, ParamId)> {
        named_children(&[("rnn", &self.rnn), ("head", &self.head)])
    }
}

/// The masked mean squared error over the real steps.
impl<T: Float> Objective<T> for SequenceRegressor {
    type Batch = DenseBatch<T>;

    fn loss(&mut self, cx: &mut Ctx<'_, T>, batch: &DenseBatch<T>) -> Result<Var> {
        let pred = self.forward(cx, &batch.x, &batch.lengths)?;
        self.masked_mse(cx, pred, batch)
    }

    fn config_json(&self) -> String {
        serde_json::to_string(&self.config).expect("a plain struct serialises")
    }
}
