//! Next-value prediction of a noisy multi-frequency series with a `SequenceRegressor` (an LSTM
//! with a linear output at every step), against the naive forecast "the next value is the last
//! one". `cargo run --release --example forecast`
use std::time::Instant;

use recur::models::{DenseDataset, SequenceRegressor, SequenceRegressorConfig};
use recur::prelude::*;

/// Windows of `len` steps from `series[range]`, every `stride` steps: inputs and next values.
fn windows(series: &[f32], len: usize, stride: usize) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    (0..series.len() - len - 1)
        .step_by(stride)
        .map(|s| {
            (
                series[s..s + len].to_vec(),
                series[s + 1..s + len + 1].to_vec(),
            )
        })
        .unzip()
}

fn main() -> Result<()> {
    let mut rng = Rng::new(0);
    let series: Vec<f32> = (0..6000)
        .map(|t| {
            let t = t as f64;
            let clean = (0.07 * t).sin() + 0.5 * (0.23 * t + 1.0).sin() + 0.2 * (0.61 * t).sin();
            (clean + 0.05 * rng.normal()) as f32
        })
        .collect();
    let (train_x, train_y) = windows(&series[..4800], 50, 7);
    let (test_x, test_y) = windows(&series[4800..], 50, 25);
    let naive: f64 = test_x
        .iter()
        .zip(&test_y)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)))
        .sum::<f64>()
        / (test_x.len() * 50) as f64;

    let mut train = DenseDataset::new(train_x, train_y, 1, 1, 32)?.with_plan(|p| p.shuffle(1));
    let test = DenseDataset::new(test_x, test_y, 1, 1, 32)?;
    let mut ps = ParamStore::<f32>::new();
    let cfg = SequenceRegressorConfig::new(1, 32, 1);
    let mut model = SequenceRegressor::new(&mut ps, "", cfg, &mut rng)?;
    let mut opt = Adam::new(AdamConfig::default().lr(1e-2))?;
    let start = Instant::now();
    Trainer::new(TrainerConfig::epochs(100).clip(1.0))
        .fit(&mut model, &mut ps, &mut opt, &mut train, None)?;
    let secs = start.elapsed().as_secs_f64();

    let all: Vec<usize> = (0..test.len()).collect();
    let b = test.gather(&all)?;
    let mut tape = Tape::new();
    let mut cx = Ctx::eval(&mut tape, &ps);
    let pred = model.forward(&mut cx, &b.x, &b.lengths)?;
    let mse = model.masked_mse(&mut cx, pred, &b)?;
    let mse = tape.value(mse)?.data()[0];
    println!(
        "test mean squared error {mse:.5} against {naive:.5} for the last value \
         ({:.1}x lower), trained in {secs:.1} s",
        naive / mse as f64
    );
    Ok(())
}
