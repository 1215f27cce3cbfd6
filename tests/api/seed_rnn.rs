//! The chapter's worked RNN example: its three states, and its backward pass checked by gradcheck.

#[allow(dead_code)]
#[path = "../../examples/seed_rnn.rs"]
mod example;

use example::{INPUTS, chapter_params, gradcheck_last_state, hand_trace, input_tensors, unroll};
use recur::{ParamId, Tape, Var};

const CHAPTER: [[f64; 2]; 3] = [[0.291, 0.380], [-0.115, -0.114], [0.486, 0.610]];

/// The chapter's RNN unrolled over its inputs on a fresh tape: the tape, the parameter ids, the
/// states h_1..h_3 and their values.
fn unrolled() -> (Tape<f64>, [ParamId; 3], Vec<Var>, Vec<Vec<f64>>) {
    let (ps, ids) = chapter_params().unwrap();
    let mut tape = Tape::new();
    let xs: Vec<Var> = input_tensors()
        .unwrap()
        .into_iter()
        .map(|t| tape.input(t))
        .collect();
    let states = unroll(&mut tape, &ps, ids, &xs).unwrap();
    let values = states
        .iter()
        .map(|&h| tape.value(h).unwrap().data().to_vec())
        .collect();
    (tape, ids, states, values)
}

#[test]
fn hand_trace_reproduces_the_chapter_states() {
    let trace = hand_trace();
    for (t, (got, want)) in trace.iter().zip(CHAPTER).enumerate() {
        for k in 0..2 {
            assert_eq!(got[k] as f64 / 1000.0, want[k], "h_{}[{k}]", t + 1);
        }
    }
}

#[test]
fn tape_states_match_the_chapter_to_its_precision() {
    let (_, _, _, exact) = unrolled();
    // h_1 and h_3 agree with the text to three decimals.
    for t in [0, 2] {
        for k in 0..2 {
            assert!(
                (exact[t][k] - CHAPTER[t][k]).abs() < 5e-4,
                "h_{}[{k}] = {}",
                t + 1,
                exact[t][k]
            );
        }
    }
    // h_2: the text rounds h_1 to three decimals before reusing it, which moves the third decimal
    // by one unit; the exact value is within that.
    for k in 0..2 {
        assert!((exact[1][k] - CHAPTER[1][k]).abs() < 1.5e-3);
    }
    assert!((exact[0][0] - 0.3f64.tanh()).abs() < 1e-15);
    assert!((exact[0][1] - 0.4f64.tanh()).abs() < 1e-15);
}

#[test]
fn backpropagation_through_time_passes_gradcheck() {
    let (mut ps, ids) = chapter_params().unwrap();
    let report = gradcheck_last_state(&mut ps, ids).unwrap();
    assert!(report.passed(), "{report:?}");
    assert_eq!(report.checked, 4 + 2 + 2 + 3);
    assert!(report.max_rel_err < 1e-6, "{report:?}");
}

#[test]
fn gradient_of_sum_h3_by_hand_for_w_x() {
    // dL/dW_x = sum_t delta_t x_t where delta_T = 1 - h_T^2 and delta_{t-1} = (W_h^T delta_t) * (1 - h_{t-1}^2).
    let (mut tape, ids, states, h) = unrolled();
    let loss = tape.sum(states[2]).unwrap();
    let grads = tape.backward(loss).unwrap();
    let w_h = [[0.5, 0.1], [0.2, 0.6]];
    let mut delta = [1.0 - h[2][0] * h[2][0], 1.0 - h[2][1] * h[2][1]];
    let mut dwx = [0.0, 0.0];
    for t in (0..3).rev() {
        for k in 0..2 {
            dwx[k] += delta[k] * INPUTS[t];
        }
        if t > 0 {
            let back = [
                w_h[0][0] * delta[0] + w_h[1][0] * delta[1],
                w_h[0][1] * delta[0] + w_h[1][1] * delta[1],
            ];
            delta = [
                back[0] * (1.0 - h[t - 1][0].powi(2)),
                back[1] * (1.0 - h[t - 1][1].powi(2)),
            ];
        }
    }
    let g = grads.param(ids[1]).unwrap().data();
    assert!(
        (g[0] - dwx[0]).abs() < 1e-14 && (g[1] - dwx[1]).abs() < 1e-14,
        "{g:?} vs {dwx:?}"
    );
}
