//! The adding problem as a training job: a recurrent layer reads the `[T, B, 2]` sequence, a
//! linear head maps its last hidden state to the predicted sum, trained with Adam on the MSE.

use std::time::Instant;

use recur::data::{AddingBatch, DataSource, adding_problem};
use recur::diagnostics::{FlowOptions, gradient_flow};
use recur::models::{Control, Event, Objective, Trainer, TrainerConfig, evaluate};
use recur::nn::{CellKind, Ctx, Linear, Recurrent, RecurrentConfig};
use recur::optim::{Adam, AdamConfig};
use recur::{Error, ParamStore, Result, Rng, Tape, Tensor, Var};

/// Refuses sizes far beyond what the adding problem needs, before anything is allocated or
/// written.
pub fn check_sizes(seq_len: usize, batch: usize, hidden: usize) -> std::result::Result<(), String> {
    for (name, v, max) in [
        ("--seq-len", seq_len, 100_000),
        ("--batch", batch, 100_000),
        ("--hidden", hidden, 8_192),
    ] {
        if v > max {
            return Err(format!("{name} {v} is too large (at most {max})"));
        }
    }
    Ok(())
}

/// What one training run is asked to do.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub kind: CellKind,
    pub hidden: usize,
    pub seq_len: usize,
    pub batch: usize,
    pub steps: usize,
    pub lr: f64,
    /// Global-norm clipping threshold tau, if any.
    pub clip: Option<f64>,
    pub eval_every: usize,
    pub seed: u64,
}

/// What one training run measured.
pub struct RunResult {
    /// (step, validation MSE), starting at step 0.
    pub curve: Vec<(usize, f64)>,
    /// (step, gradient norm before clipping), every step.
    pub grad_norms: Vec<f64>,
    pub final_mse: f64,
    /// Training stopped at a non-finite gradient.
    pub diverged: bool,
    pub seconds: f64,
    /// ||dL/dh_t|| of the first layer (index t - 1) at initialisation and after training, on
    /// the validation batch.
    pub flow_init: Vec<f64>,
    pub flow_trained: Vec<f64>,
}

/// The model: recurrent stack + linear head on the last hidden state.
pub struct AddingModel {
    pub rnn: Recurrent,
    pub head: Linear,
}

impl AddingModel {
    pub fn new(store: &mut ParamStore<f32>, spec: &RunSpec, rng: &mut Rng) -> Result<Self> {
        let cfg = RecurrentConfig::new(2, spec.hidden);
        let rnn = Recurrent::new(store, "rnn.", spec.kind, cfg, rng)?;
        if spec.kind == CellKind::Lstm {
            // The usual LSTM choice: forget gates open at the start (bias 1.0).
            recur::nn::init::lstm_forget_bias(store, &rnn, 1.0)?;
        }
        let head = Linear::new(store, "head.", spec.hidden, 1, true, rng)?;
        Ok(AddingModel { rnn, head })
    }

    /// The prediction `[B, 1]` from the last hidden state `[B, H]`.
    fn predict<F: recur::Float>(
        &self,
        tape: &mut Tape<F>,
        store: &ParamStore<F>,
        h_last: Var,
    ) -> Result<Var> {
        self.head.forward(tape, store, h_last)
    }

    /// ||dL/dh_t|| of the first layer for the MSE of the whole batch at the last step, measured
    /// in f64.
    ///
    /// The measurement unrolls the sequence step by step, so its memory grows with T times the
    /// number of sequences measured at once: it runs over slices of [`FLOW_SLICE`] sequences and
    /// combines them exactly. The MSE is a mean over the batch and sequence b's loss depends on
    /// its own states only, so the gradient of the whole batch's loss with respect to h_t is,
    /// row by row, (b_s / B) times that of a slice's own MSE, and its norm is
    /// sqrt(sum over slices of (b_s / B)^2 ||dL_s/dh_t||^2).
    pub fn flow(&self, store: &ParamStore<f32>, batch: &AddingBatch<f32>) -> Result<Vec<f64>> {
        let mut s64 = ParamStore::<f64>::new();
        for (_, name, t) in store.iter() {
            s64.add(name, t.cast())?;
        }
        let x: Tensor<f64> = batch.x.cast();
        let y: Tensor<f64> = batch.y.cast();
        let (t_len, b_all, inputs) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let opts = FlowOptions {
            max_full_jacobian: 0,
            probes: 4,
            ..Default::default()
        };
        let mut sq = vec![0.0f64; t_len];
        let mut start = 0;
        while start < b_all {
            let b = FLOW_SLICE.min(b_all - start);
            let xs = Tensor::from_fn(&[t_len, b, inputs], |k| {
                let (t, rest) = (k / (b * inputs), k % (b * inputs));
                x.data()[t * b_all * inputs + start * inputs + rest]
            })?;
            let ys = Tensor::from_vec(y.data()[start..start + b].to_vec(), &[b, 1])?;
            let f = gradient_flow(&self.rnn, &s64, &xs, opts, |tape, h_t| {
                let pred = self.predict(tape, &s64, h_t)?;
                let y = tape.constant(ys);
                tape.mse(pred, y)
            })?;
            let w = b as f64 / b_all as f64;
            for (acc, g) in sq.iter_mut().zip(&f.layers[0].dl_dh) {
                *acc += (w * g) * (w * g);
            }
            start += b;
        }
        Ok(sq.into_iter().map(f64::sqrt).collect())
    }
}

/// Sequences measured at once by [`AddingModel::flow`].
pub const FLOW_SLICE: usize = 8;

/// Sequences in the validation batch.
pub const VAL_BATCH: usize = 256;

/// An upper bound of the peak memory of [`train`] with `spec`, in bytes (see [`crate::memory`]).
/// The terms: the training step's tape (the gate activations, states and their gradients of B
/// sequences of T steps, in f32), the validation batch's forward pass, and the gradient-flow
/// measurement (a step-by-step f64 tape over [`FLOW_SLICE`] sequences, about 100 values of H per
/// sequence and step, measured).
pub fn estimate_bytes(spec: &RunSpec) -> u64 {
    let (t, b, h) = (spec.seq_len as f64, spec.batch as f64, spec.hidden as f64);
    let g = spec.kind.gates() as f64;
    let train = t * b * (4.0 * g * h + 6.0 * h + 8.0) * 4.0 * 2.0;
    let val = t * VAL_BATCH as f64 * ((2.0 * g * h + 4.0 * h + 4.0) * 4.0 + 2.0 * 8.0);
    let flow = t * FLOW_SLICE as f64 * (100.0 * h + 16.0) * 8.0;
    let params = 8.0 * g * h * (h + 3.0) * 4.0;
    crate::memory::BASE + crate::memory::bytes(train + val + flow + params)
}

/// The MSE of the prediction from the last hidden state.
impl Objective<f32> for AddingModel {
    type Batch = AddingBatch<f32>;

    fn loss(&mut self, cx: &mut Ctx<'_, f32>, batch: &AddingBatch<f32>) -> Result<Var> {
        let x = cx.tape.constant_copy(&batch.x);
        let out = cx.recurrent(&self.rnn, x, None)?;
        let b = batch.y.dims()[0];
        let h_last = cx
            .tape
            .reshape(out.h_n, &[b, self.rnn.config().hidden_size])?;
        let pred = self.predict(cx.tape, cx.store, h_last)?;
        let y = cx.tape.constant_copy(&batch.y);
        cx.tape.mse(pred, y)
    }
}

/// Fresh batches, one per step, drawn in turn from one generator (the training loop asks for
/// them in order).
struct Batches {
    rng: Rng,
    batch: usize,
    seq_len: usize,
}

impl DataSource for Batches {
    type Batch = AddingBatch<f32>;

    fn batches_per_epoch(&self) -> usize {
        1
    }

    fn batch(&mut self, _epoch: usize, _index: usize) -> Result<AddingBatch<f32>> {
        adding_problem(&mut self.rng, self.batch, self.seq_len)
    }
}

/// One fixed batch.
struct Fixed(AddingBatch<f32>);

impl DataSource for Fixed {
    type Batch = AddingBatch<f32>;

    fn batches_per_epoch(&self) -> usize {
        1
    }

    fn batch(&mut self, _epoch: usize, _index: usize) -> Result<AddingBatch<f32>> {
        Ok(self.0.clone())
    }
}

/// Trains one model with the library's trainer; `progress` is called after every evaluation
/// with (step, mse).
pub fn train(spec: &RunSpec, mut progress: impl FnMut(usize, f64)) -> Result<RunResult> {
    let mut rng = Rng::new(spec.seed);
    let mut store = ParamStore::<f32>::new();
    let mut model = AddingModel::new(&mut store, spec, &mut rng)?;
    let mut data = Batches {
        rng: rng.fork(),
        batch: spec.batch,
        seq_len: spec.seq_len,
    };
    let val_batch =
        adding_problem::<f32>(&mut Rng::new(spec.seed ^ 0x5eed), VAL_BATCH, spec.seq_len)?;
    let flow_init = model.flow(&store, &val_batch)?;
    let mut val = Fixed(val_batch);
    let mut opt = Adam::<f32>::new(AdamConfig::default().lr(spec.lr))?;
    let mut curve = vec![(0, evaluate(&mut model, &store, &mut val)?)];
    progress(0, curve[0].1);
    let mut grad_norms = Vec::with_capacity(spec.steps);
    let mut config = TrainerConfig::steps(spec.steps).eval_every(spec.eval_every);
    if let Some(tau) = spec.clip {
        config = config.clip(tau);
    }
    let start = Instant::now();
    let fit = Trainer::new(config)
        .on_event(|e, _| {
            match *e {
                Event::Step { grad_norm, .. } => grad_norms.push(grad_norm),
                Event::Eval {
                    step,
                    val_loss: Some(mse),
                    ..
                } => {
                    curve.push((step, mse));
                    progress(step, mse);
                }
                _ => {}
            }
            Control::Continue
        })
        .fit(&mut model, &mut store, &mut opt, &mut data, Some(&mut val));
    // A non-finite gradient ends the run: it has diverged.
    let diverged = match fit {
        Ok(_) => false,
        Err(Error::NotFiniteStep { grad_norm, .. }) => {
            grad_norms.push(if grad_norm.is_nan() {
                grad_norm
            } else {
                f64::INFINITY
            });
            true
        }
        Err(e) => return Err(e),
    };
    let seconds = start.elapsed().as_secs_f64();
    let final_mse = curve.last().map_or(f64::NAN, |c| c.1);
    let flow_trained = model.flow(&store, &val.0)?;
    Ok(RunResult {
        curve,
        grad_norms,
        final_mse,
        diverged,
        seconds,
        flow_init,
        flow_trained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_measured_in_slices_equals_the_whole_batch_s() {
        for kind in [CellKind::Lstm, CellKind::Gru] {
            let spec = RunSpec {
                kind,
                hidden: 6,
                seq_len: 7,
                batch: 4,
                steps: 1,
                lr: 0.01,
                clip: None,
                eval_every: 1,
                seed: 3,
            };
            let mut store = ParamStore::<f32>::new();
            let model = AddingModel::new(&mut store, &spec, &mut Rng::new(1)).unwrap();
            // 21 sequences: two full slices and a short one.
            let batch = adding_problem::<f32>(&mut Rng::new(2), 2 * FLOW_SLICE + 5, 7).unwrap();
            let sliced = model.flow(&store, &batch).unwrap();
            let mut s64 = ParamStore::<f64>::new();
            for (_, name, t) in store.iter() {
                s64.add(name, t.cast()).unwrap();
            }
            let y: Tensor<f64> = batch.y.cast();
            let whole = gradient_flow(
                &model.rnn,
                &s64,
                &batch.x.cast(),
                FlowOptions {
                    max_full_jacobian: 0,
                    probes: 4,
                    ..Default::default()
                },
                |tape, h_t| {
                    let pred = model.predict(tape, &s64, h_t)?;
                    let y = tape.constant(y);
                    tape.mse(pred, y)
                },
            )
            .unwrap();
            let want = &whole.layers[0].dl_dh;
            assert_eq!(sliced.len(), want.len());
            for (a, b) in sliced.iter().zip(want) {
                assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-300), "{a} vs {b}");
            }
        }
    }
}
