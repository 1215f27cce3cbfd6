//! Sequence losses: values against a direct computation, gradients against finite differences.

#![allow(clippy::needless_range_loop)] // index loops mirror the [T, B, F] formulas

use recur::diagnostics::{GradcheckOptions, gradcheck};
use recur::nn::loss::{
    last_step_cross_entropy, last_step_mse, sequence_cross_entropy, sequence_mse,
};
use recur::nn::{ForwardOptions, Lstm, RecurrentConfig};
use recur::{ParamStore, Rng, Tape, Tensor};

const T: usize = 4;
const B: usize = 3;
const V: usize = 5;

fn random(dims: &[usize], seed: u64) -> Tensor<f64> {
    let mut r = Rng::new(seed);
    Tensor::from_fn(dims, |_| r.normal()).unwrap()
}

/// `-log softmax(row)[c]`.
fn nll(row: &[f64], c: usize) -> f64 {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
    z.ln() + m - row[c]
}

const TARGETS: [usize; T * B] = [0, 4, 2, 1, 1, 3, 2, 0, 4, 3, 2, 1];
const LENGTHS: [usize; B] = [4, 2, 1];

#[test]
fn sequence_cross_entropy_counts_real_steps_only() {
    let x = random(&[T, B, V], 1);
    let mut tape = Tape::new();
    let l = tape.input(x.clone());
    let mut targets = TARGETS;
    targets[3 * B + 2] = 99; // a padded step: any value is accepted
    let loss = sequence_cross_entropy(&mut tape, l, &targets, Some(&LENGTHS)).unwrap();
    let mut want = 0.0;
    let mut n = 0;
    for t in 0..T {
        for b in 0..B {
            if t < LENGTHS[b] {
                let i = t * B + b;
                want += nll(&x.data()[i * V..(i + 1) * V], TARGETS[i]);
                n += 1;
            }
        }
    }
    assert_eq!(n, 7);
    let got = tape.value(loss).unwrap().data()[0];
    assert!(
        (got - want / n as f64).abs() < 1e-12,
        "{got} vs {}",
        want / n as f64
    );
    // Without lengths every step counts.
    let loss = sequence_cross_entropy(&mut tape, l, &TARGETS, None).unwrap();
    let all: f64 = (0..T * B)
        .map(|i| nll(&x.data()[i * V..(i + 1) * V], TARGETS[i]))
        .sum::<f64>()
        / (T * B) as f64;
    assert!((tape.value(loss).unwrap().data()[0] - all).abs() < 1e-12);
}

#[test]
fn last_step_cross_entropy_scores_the_last_real_step() {
    let x = random(&[T, B, V], 2);
    let targets = [3, 0, 2];
    let mut tape = Tape::new();
    let l = tape.input(x.clone());
    let loss = last_step_cross_entropy(&mut tape, l, &targets, Some(&LENGTHS)).unwrap();
    let want: f64 = (0..B)
        .map(|b| {
            let i = (LENGTHS[b] - 1) * B + b;
            nll(&x.data()[i * V..(i + 1) * V], targets[b])
        })
        .sum::<f64>()
        / B as f64;
    assert!((tape.value(loss).unwrap().data()[0] - want).abs() < 1e-12);
}

#[test]
fn mse_losses_match_direct_sums() {
    let (p, y) = (random(&[T, B, 2], 3), random(&[T, B, 2], 4));
    let mut tape = Tape::new();
    let pv = tape.input(p.clone());
    let yv = tape.constant(y.clone());
    let loss = sequence_mse(&mut tape, pv, yv, Some(&LENGTHS)).unwrap();
    let mut s = 0.0;
    for t in 0..T {
        for b in 0..B {
            if t < LENGTHS[b] {
                for f in 0..2 {
                    let i = (t * B + b) * 2 + f;
                    s += (p.data()[i] - y.data()[i]).powi(2);
                }
            }
        }
    }
    assert!((tape.value(loss).unwrap().data()[0] - s / 14.0).abs() < 1e-12);

    let yb = random(&[B, 2], 5);
    let loss = last_step_mse(&mut tape, pv, &yb, Some(&LENGTHS)).unwrap();
    let mut s = 0.0;
    for b in 0..B {
        for f in 0..2 {
            s += (p.data()[((LENGTHS[b] - 1) * B + b) * 2 + f] - yb.data()[b * 2 + f]).powi(2);
        }
    }
    assert!((tape.value(loss).unwrap().data()[0] - s / 6.0).abs() < 1e-12);
}

#[test]
fn gradients_match_finite_differences() {
    let mut ps = ParamStore::<f64>::new();
    let opts = GradcheckOptions::default();
    let x = random(&[T, B, V], 6);
    let r = gradcheck(
        &mut ps,
        std::slice::from_ref(&x),
        opts.clone(),
        |tape, _, xs| sequence_cross_entropy(tape, xs[0], &TARGETS, Some(&LENGTHS)),
    )
    .unwrap();
    assert!(r.passed() && r.checked == T * B * V, "{r:?}");
    let r = gradcheck(&mut ps, &[x], opts.clone(), |tape, _, xs| {
        last_step_cross_entropy(tape, xs[0], &[1, 4, 0], Some(&LENGTHS))
    })
    .unwrap();
    assert!(r.passed(), "{r:?}");
    let (p, y) = (random(&[T, B, 2], 7), random(&[T, B, 2], 8));
    let r = gradcheck(&mut ps, &[p.clone(), y], opts.clone(), |tape, _, xs| {
        sequence_mse(tape, xs[0], xs[1], Some(&LENGTHS))
    })
    .unwrap();
    assert!(r.passed(), "{r:?}");
    let yb = random(&[B, 2], 9);
    let r = gradcheck(&mut ps, &[p], opts, |tape, _, xs| {
        last_step_mse(tape, xs[0], &yb, Some(&LENGTHS))
    })
    .unwrap();
    assert!(r.passed(), "{r:?}");
}

#[test]
fn gradients_through_an_lstm_match_finite_differences() {
    // Many-to-one classification with padded sequences: the loss sees only the last real step.
    let mut ps = ParamStore::<f64>::new();
    let mut rng = Rng::new(10);
    let lstm = Lstm::new(&mut ps, "lstm.", RecurrentConfig::new(2, V), &mut rng).unwrap();
    let x = random(&[T, B, 2], 11);
    let r = gradcheck(
        &mut ps,
        &[x],
        GradcheckOptions::default(),
        |tape, ps, xs| {
            let opts = ForwardOptions {
                lengths: Some(&LENGTHS),
                ..Default::default()
            };
            let out = lstm.forward(tape, ps, xs[0], opts)?;
            last_step_cross_entropy(tape, out.y, &[1, 4, 0], Some(&LENGTHS))
        },
    )
    .unwrap();
    assert!(r.passed(), "{r:?}");
}

#[test]
fn bad_inputs_are_errors() {
    let mut tape = Tape::<f64>::new();
    let l = tape.input(random(&[T, B, V], 12));
    let flat = tape.input(random(&[T * B, V], 12));
    assert!(sequence_cross_entropy(&mut tape, flat, &TARGETS, None).is_err());
    assert!(sequence_cross_entropy(&mut tape, l, &TARGETS[..5], None).is_err());
    assert!(sequence_cross_entropy(&mut tape, l, &TARGETS, Some(&[4, 0, 1])).is_err());
    assert!(sequence_cross_entropy(&mut tape, l, &TARGETS, Some(&[4, 5, 1])).is_err());
    assert!(sequence_cross_entropy(&mut tape, l, &TARGETS, Some(&[4, 4])).is_err());
    let mut bad = TARGETS;
    bad[0] = V;
    assert!(sequence_cross_entropy(&mut tape, l, &bad, Some(&LENGTHS)).is_err());
    assert!(last_step_cross_entropy(&mut tape, l, &[0, 1], None).is_err());
    assert!(last_step_cross_entropy(&mut tape, l, &[0, 1, V], None).is_err());
    let y = tape.input(random(&[T, B, 4], 13));
    assert!(sequence_mse(&mut tape, l, y, None).is_err());
    assert!(last_step_mse(&mut tape, l, &random(&[B, 4], 14), None).is_err());
}

/// A vocabulary of words, not characters: 96 rows of 2,000 logits, whose rows the loss spreads
/// over the pool's threads. The value and the gradient against the formula in f64, and the
/// same bits on one thread and on two.
#[test]
fn cross_entropy_over_a_large_vocabulary_is_the_formula_on_any_thread_count() {
    let (rows, v) = (96, 2000);
    let logits = {
        let mut r = Rng::new(3);
        Tensor::from_fn(&[rows, v], |_| 4.0 * r.normal()).unwrap()
    };
    let targets: Vec<usize> = (0..rows).map(|i| (i * 7919) % v).collect();
    let run = |threads: usize| {
        recur::with_threads(threads, || {
            let mut tape = Tape::<f64>::new();
            let x = tape.input(logits.clone());
            // Row 5 is padding: it counts for nothing.
            let loss = tape.cross_entropy(x, &targets, Some(targets[5])).unwrap();
            let l = tape.value(loss).unwrap().data()[0];
            let g = tape.backward(loss).unwrap();
            (l, g.wrt(x).unwrap().data().to_vec())
        })
        .unwrap()
    };
    let (l1, g1) = run(1);
    let (l2, g2) = run(2);
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert!(g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()));
    let counted: Vec<usize> = (0..rows).filter(|&r| targets[r] != targets[5]).collect();
    let n = counted.len() as f64;
    let x = logits.data();
    let want: f64 = counted
        .iter()
        .map(|&r| nll(&x[r * v..(r + 1) * v], targets[r]))
        .sum::<f64>()
        / n;
    assert!((l1 - want).abs() < 1e-12 * want, "{l1} against {want}");
    for r in 0..rows {
        let row = &x[r * v..(r + 1) * v];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
        for k in 0..v {
            let want = if counted.contains(&r) {
                ((row[k] - m).exp() / z - if k == targets[r] { 1.0 } else { 0.0 }) / n
            } else {
                0.0
            };
            let got = g1[r * v + k];
            assert!(
                (got - want).abs() < 1e-15,
                "d[{r}][{k}] = {got:e}, want {want:e}"
            );
        }
    }
}
