//! The adding problem as a training job: a recurrent layer reads the `[T, B, 2]` sequence, a
//! linear head maps its last hidden state to the predicted sum, trained with Adam on the MSE.

use std::time::Instant;

use recur::data::{AddingBatch, adding_problem};
use recur::diagnostics::{FlowOptions, gradient_flow};
use recur::nn::{CellKind, Linear, Recurrent, RecurrentConfig};
use recur::optim::{Adam, AdamConfig, Optimizer, clip_grad_norm};
use recur::{ParamStore, Result, Rng, Tape, Tensor, Var};

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

    /// The MSE loss of a batch on the tape.
    pub fn loss(
        &self,
        tape: &mut Tape<f32>,
        store: &ParamStore<f32>,
        batch: &AddingBatch<f32>,
    ) -> Result<Var> {
        let x = tape.constant_copy(&batch.x);
        let out = self.rnn.forward(tape, store, x, Default::default())?;
        let b = batch.y.dims()[0];
        let h_last = tape.reshape(out.h_n, &[b, self.rnn.config().hidden_size])?;
        let pred = self.predict(tape, store, h_last)?;
        let y = tape.constant_copy(&batch.y);
        tape.mse(pred, y)
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

/// Evaluates the MSE on `batch` without building gradients.
fn evaluate(
    model: &AddingModel,
    store: &ParamStore<f32>,
    tape: &mut Tape<f32>,
    batch: &AddingBatch<f32>,
) -> Result<f64> {
    tape.clear();
    let loss = model.loss(tape, store, batch)?;
    Ok(tape.value(loss)?.data()[0] as f64)
}

/// Trains one model; `progress` is called after every evaluation with (step, mse).
pub fn train(spec: &RunSpec, mut progress: impl FnMut(usize, f64)) -> Result<RunResult> {
    let mut rng = Rng::new(spec.seed);
    let mut store = ParamStore::<f32>::new();
    let model = AddingModel::new(&mut store, spec, &mut rng)?;
    let mut data_rng = rng.fork();
    let val = adding_problem::<f32>(&mut Rng::new(spec.seed ^ 0x5eed), VAL_BATCH, spec.seq_len)?;
    let flow_init = model.flow(&store, &val)?;
    let mut opt = Adam::<f32>::new(AdamConfig::default().lr(spec.lr))?;
    let mut tape = Tape::new();
    let mut curve = vec![(0, evaluate(&model, &store, &mut tape, &val)?)];
    progress(0, curve[0].1);
    let mut grad_norms = Vec::with_capacity(spec.steps);
    let mut diverged = false;
    let start = Instant::now();
    for step in 1..=spec.steps {
        let batch = adding_problem::<f32>(&mut data_rng, spec.batch, spec.seq_len)?;
        tape.clear();
        let loss = model.loss(&mut tape, &store, &batch)?;
        let mut grads = tape.backward(loss)?;
        // A non-finite norm is reported by clipping as an error: the run has diverged.
        let norm = match spec.clip {
            Some(tau) => clip_grad_norm(&mut grads, tau).unwrap_or(f64::INFINITY),
            None => recur::optim::grad_norm(&grads),
        };
        grad_norms.push(norm);
        if !norm.is_finite() {
            diverged = true;
            break;
        }
        opt.step(&mut store, &grads)?;
        if step % spec.eval_every == 0 || step == spec.steps {
            let mse = evaluate(&model, &store, &mut tape, &val)?;
            curve.push((step, mse));
            progress(step, mse);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let final_mse = curve.last().map_or(f64::NAN, |c| c.1);
    let flow_trained = model.flow(&store, &val)?;
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
