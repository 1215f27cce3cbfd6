//! `recur example`: the chapter's worked example, forward and backward.

use std::process::ExitCode;

use recur::{ParamStore, Result, Tape, Tensor};

use crate::CmdResult;

/// Runs the worked example and prints its states and gradients.
pub fn run() -> CmdResult {
    worked_example().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// The chapter's worked example: a 2-unit tanh RNN over the inputs 1, -1, 2.
fn worked_example() -> Result<()> {
    let mut ps = ParamStore::<f64>::new();
    let w_h = ps.add("W_h", Tensor::from_vec(vec![0.5, 0.1, 0.2, 0.6], &[2, 2])?)?;
    let w_x = ps.add("W_x", Tensor::from_vec(vec![0.3, 0.4], &[2, 1])?)?;
    let mut tape = Tape::new();
    let (wh, wx) = (tape.param(&ps, w_h)?, tape.param(&ps, w_x)?);
    let mut h = tape.constant(Tensor::zeros(&[1, 2])?);
    for (t, x) in [1.0, -1.0, 2.0].into_iter().enumerate() {
        let x_t = tape.constant(Tensor::from_vec(vec![x], &[1, 1])?);
        let z = tape.matmul_t(h, false, wh, true)?;
        let zx = tape.matmul_t(x_t, false, wx, true)?;
        let z = tape.add(z, zx)?;
        h = tape.tanh(z)?;
        let v = tape.value(h)?.data();
        println!("h_{} = [{:.6}, {:.6}]", t + 1, v[0], v[1]);
    }
    let loss = tape.sum(h)?;
    let grads = tape.backward(loss)?;
    println!(
        "dL/dW_h = {:?}",
        grads.param(w_h).expect("W_h is used").data()
    );
    println!(
        "dL/dW_x = {:?}",
        grads.param(w_x).expect("W_x is used").data()
    );
    Ok(())
}
