//! The chapter's worked example: a 2-unit tanh RNN, h_t = tanh(W_h h_{t-1} + W_x x_t + b),
//! unrolled over the inputs 1, -1, 2 from h_0 = 0, then backpropagated through time.
//!
//! Run with `cargo run --release --example seed_rnn`.

use recur::diagnostics::{GradcheckOptions, GradcheckReport, gradcheck};
use recur::{ParamId, ParamStore, Result, Tape, Tensor, Var};

/// The chapter's parameters: W_h (2x2), W_x (2x1), b (2).
pub fn chapter_params() -> Result<(ParamStore<f64>, [ParamId; 3])> {
    let mut ps = ParamStore::new();
    let w_h = ps.add("W_h", Tensor::from_vec(vec![0.5, 0.1, 0.2, 0.6], &[2, 2])?)?;
    let w_x = ps.add("W_x", Tensor::from_vec(vec![0.3, 0.4], &[2, 1])?)?;
    let b = ps.add("b", Tensor::from_vec(vec![0.0, 0.0], &[2])?)?;
    Ok((ps, [w_h, w_x, b]))
}

/// The chapter's inputs x_1, x_2, x_3.
pub const INPUTS: [f64; 3] = [1.0, -1.0, 2.0];

/// The chapter's inputs as `[1, 1]` tensors, one per step.
pub fn input_tensors() -> Result<Vec<Tensor<f64>>> {
    INPUTS
        .iter()
        .map(|&x| Tensor::from_vec(vec![x], &[1, 1]))
        .collect()
}

/// Unrolls the RNN over `xs` (one `[1, 1]` input per step); returns h_1..h_T as `[1, 2]` rows.
pub fn unroll(
    tape: &mut Tape<f64>,
    ps: &ParamStore<f64>,
    ids: [ParamId; 3],
    xs: &[Var],
) -> Result<Vec<Var>> {
    let [w_h, w_x, b] = ids.map(|id| tape.param(ps, id));
    let (w_h, w_x, b) = (w_h?, w_x?, b?);
    let mut h = tape.constant(Tensor::zeros(&[1, 2])?); // h_0 = 0
    let mut states = Vec::with_capacity(xs.len());
    for &x_t in xs {
        let recurrent = tape.matmul_t(h, false, w_h, true)?; // W_h h_{t-1}, as a row
        let input = tape.matmul_t(x_t, false, w_x, true)?; // W_x x_t
        let z = tape.add(recurrent, input)?;
        let z = tape.add(z, b)?;
        h = tape.tanh(z)?;
        states.push(h);
    }
    Ok(states)
}

/// Checks backpropagation through time for `L = sum(h_T)` against central differences, over
/// every parameter and input.
pub fn gradcheck_last_state(
    ps: &mut ParamStore<f64>,
    ids: [ParamId; 3],
) -> Result<GradcheckReport> {
    gradcheck(
        ps,
        &input_tensors()?,
        GradcheckOptions::default(),
        |tape, ps, xs| {
            let states = unroll(tape, ps, ids, xs)?;
            tape.sum(*states.last().expect("three steps"))
        },
    )
}

/// The chapter's hand computation: every product and every state rounded to three decimals
/// (half away from zero), as written out in the text. Values are kept as integer thousandths so
/// the rounding is exact. Returns h_1, h_2, h_3 in thousandths.
pub fn hand_trace() -> Vec<[i64; 2]> {
    const W_H: [[i64; 2]; 2] = [[500, 100], [200, 600]];
    const W_X: [i64; 2] = [300, 400];
    // round(a * b / 1000) for thousandths a, b, half away from zero.
    let mul = |a: i64, b: i64| {
        let p = a * b;
        (p.abs() + 500) / 1000 * p.signum()
    };
    let tanh3 = |z: i64| ((z as f64 / 1000.0).tanh() * 1000.0).round() as i64;
    let mut h = [0i64; 2];
    let mut out = Vec::new();
    for x in [1000i64, -1000, 2000] {
        let z: [i64; 2] =
            std::array::from_fn(|r| mul(W_H[r][0], h[0]) + mul(W_H[r][1], h[1]) + mul(W_X[r], x));
        h = [tanh3(z[0]), tanh3(z[1])];
        out.push(h);
    }
    out
}

fn main() -> Result<()> {
    let (mut ps, ids) = chapter_params()?;
    let mut tape = Tape::new();
    let xs: Vec<Var> = input_tensors()?
        .into_iter()
        .map(|t| tape.input(t))
        .collect();
    let states = unroll(&mut tape, &ps, ids, &xs)?;
    println!("The chapter's trace (each product and state rounded to 3 decimals, as in the text):");
    for (t, h) in hand_trace().iter().enumerate() {
        println!(
            "h_{} = [{:.3}, {:.3}]",
            t + 1,
            h[0] as f64 / 1000.0,
            h[1] as f64 / 1000.0
        );
    }
    println!("\nThe same RNN in full f64 precision on the tape:");
    for (t, &h) in states.iter().enumerate() {
        let v = tape.value(h)?.data();
        println!("h_{} = [{:.6}, {:.6}]", t + 1, v[0], v[1]);
    }
    println!(
        "(h_2 differs in the third decimal only because the text rounds h_1 before using it.)"
    );

    let h_3 = *states.last().expect("three steps");
    let loss = tape.sum(h_3)?;
    let grads = tape.backward(loss)?;
    println!("\nBackpropagation through time, L = sum(h_3):");
    for id in ids {
        println!(
            "dL/d{} = {:?}",
            ps.name(id),
            grads.param(id).expect("used").data()
        );
    }
    let dx: Vec<f64> = xs
        .iter()
        .map(|&x| grads.wrt(x).expect("used").data()[0])
        .collect();
    println!("dL/dx   = {dx:?}");

    let report = gradcheck_last_state(&mut ps, ids)?;
    println!(
        "\ngradcheck against central differences: {} derivatives, max relative error {:.1e}: {}",
        report.checked,
        report.max_rel_err,
        if report.passed() { "ok" } else { "FAILED" }
    );
    Ok(())
}
