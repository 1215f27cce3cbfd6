//! Extreme inputs: inputs of ±1e4 and saturated gates give finite outputs and gradients in every
//! cell; a 10,000-step sequence trains without overflowing the stack; a NaN input is reported by
//! anomaly mode at the first op that reads it.

use recur::nn::{Activation, CellKind, ForwardOptions, Implementation, Recurrent, RecurrentConfig};
use recur::optim::{Adam, AdamConfig};
use recur::{Error, Float, Optimizer, ParamStore, Rng, Tape, Tensor};

const KINDS: [CellKind; 4] = [
    CellKind::Lstm,
    CellKind::Gru,
    CellKind::Rnn(Activation::Tanh),
    CellKind::Rnn(Activation::Relu),
];

/// Forward and backward of `sum(y) + sum(h_n) (+ sum(c_n))` on the fused path; asserts every
/// output and every gradient is finite and returns the outputs.
fn finite_run<T: Float>(
    kind: CellKind,
    cfg: RecurrentConfig,
    x: Tensor<T>,
    weight_scale: f64,
    bias_value: Option<f64>,
) -> Vec<Tensor<T>> {
    let mut ps = ParamStore::<T>::new();
    let layer = Recurrent::new(&mut ps, "", kind, cfg, &mut Rng::new(3)).unwrap();
    let ids: Vec<_> = ps
        .iter()
        .map(|(id, name, _)| (id, name.to_string()))
        .collect();
    for (id, name) in &ids {
        let t = ps.get_mut(*id);
        for v in t.data_mut() {
            *v = match bias_value {
                Some(b) if name.starts_with("bias") => T::from_f64(b),
                _ => T::from_f64(v.to_f64() * weight_scale),
            };
        }
    }
    let mut tape = Tape::new();
    let xv = tape.input(x);
    let out = layer
        .forward(&mut tape, &ps, xv, ForwardOptions::default())
        .unwrap();
    let what = format!("{kind:?} ({})", T::DTYPE);
    let mut loss = tape.sum(out.y).unwrap();
    let hs = tape.sum(out.h_n).unwrap();
    loss = tape.add(loss, hs).unwrap();
    if let Some(c) = out.c_n {
        let cs = tape.sum(c).unwrap();
        loss = tape.add(loss, cs).unwrap();
    }
    let mut values = vec![tape.value(out.y).unwrap().clone()];
    values.push(tape.value(out.h_n).unwrap().clone());
    if let Some(c) = out.c_n {
        values.push(tape.value(c).unwrap().clone());
    }
    for v in &values {
        assert!(v.all_finite(), "{what}: non-finite output {:?}", v.data());
    }
    let g = tape.backward(loss).unwrap();
    for (id, name) in &ids {
        let grad = g.param(*id).unwrap();
        assert!(grad.all_finite(), "{what}: gradient of {name} not finite");
    }
    assert!(
        g.wrt(xv).unwrap().all_finite(),
        "{what}: gradient of x not finite"
    );
    values
}

/// `[T, B, I]` alternating between `+big` and `-big`.
fn alternating<T: Float>(dims: &[usize], big: f64) -> Tensor<T> {
    Tensor::from_fn(dims, |i| {
        T::from_f64(if (i * 7 + i / 3) % 2 == 0 { big } else { -big })
    })
    .unwrap()
}

fn large_inputs<T: Float>() {
    for kind in KINDS {
        let cfg = RecurrentConfig::new(3, 9).num_layers(2).bidirectional(true);
        let values = finite_run::<T>(kind, cfg, alternating(&[5, 2, 3], 1e4), 1.0, None);
        if kind != CellKind::Rnn(Activation::Relu) {
            // Bounded cells: h in [-1, 1].
            for &h in values[1].data() {
                assert!(h.to_f64().abs() <= 1.0, "{kind:?}: |h| = {h:?}");
            }
        }
    }
}

#[test]
fn inputs_of_1e4_give_finite_outputs_and_gradients_f64() {
    large_inputs::<f64>();
}

#[test]
fn inputs_of_1e4_give_finite_outputs_and_gradients_f32() {
    large_inputs::<f32>();
}

/// Gates driven far into saturation by the parameters themselves (pre-activations of order
/// 1e3 to 1e5, both signs) and by the biases alone.
fn saturated_gates<T: Float>() {
    for kind in KINDS {
        let relu = kind == CellKind::Rnn(Activation::Relu);
        for (scale, bias) in [(300.0, None), (1.0, Some(1e4)), (1.0, Some(-1e4))] {
            // A relu cell has no saturation; its activations grow with the weights, so keep the
            // sequence short enough that they stay representable in f32.
            let t = if relu { 2 } else { 6 };
            let cfg = RecurrentConfig::new(4, 8);
            let x =
                Tensor::from_fn(&[t, 3, 4], |i| T::from_f64(((i % 9) as f64 - 4.0) * 0.5)).unwrap();
            let values = finite_run::<T>(kind, cfg.clone(), x, scale, bias);
            if !relu {
                for &h in values[1].data() {
                    assert!(h.to_f64().abs() <= 1.0, "{kind:?}: |h| = {h:?}");
                }
            }
        }
    }
}

#[test]
fn saturated_gate_pre_activations_give_finite_gradients_f64() {
    saturated_gates::<f64>();
}

#[test]
fn saturated_gate_pre_activations_give_finite_gradients_f32() {
    saturated_gates::<f32>();
}

/// Forward, backward and one Adam step over `t_len` steps; returns the loss and whether the
/// parameters moved.
fn train_long<T: Float>(kind: CellKind, imp: Implementation, t_len: usize) {
    let mut ps = ParamStore::<T>::new();
    let cfg = RecurrentConfig::new(2, 4);
    let layer = Recurrent::new(&mut ps, "", kind, cfg, &mut Rng::new(7)).unwrap();
    let before: Vec<Tensor<T>> = ps.iter().map(|(_, _, t)| t.clone()).collect();
    let mut rng = Rng::new(8);
    let x = Tensor::from_fn(&[t_len, 1, 2], |_| {
        T::from_f64(rng.uniform_range(-1.0, 1.0))
    })
    .unwrap();
    let target = Tensor::from_fn(&[t_len, 1, 4], |i| T::from_f64(((i % 5) as f64) * 0.1)).unwrap();
    let mut opt = Adam::new(AdamConfig::default()).unwrap();
    let mut tape = Tape::new();
    let xv = tape.input(x);
    let out = layer
        .forward(
            &mut tape,
            &ps,
            xv,
            ForwardOptions {
                implementation: imp,
                ..Default::default()
            },
        )
        .unwrap();
    let tv = tape.constant(target);
    let loss = tape.mse(out.y, tv).unwrap();
    let l = tape.value(loss).unwrap().data()[0].to_f64();
    assert!(l.is_finite() && l > 0.0, "{kind:?}: loss {l}");
    let grads = tape.backward(loss).unwrap();
    assert!(grads.wrt(xv).unwrap().all_finite());
    opt.step(&mut ps, &grads).unwrap();
    for ((_, name, t), b) in ps.iter().zip(&before) {
        assert!(t.all_finite(), "{kind:?}: {name} not finite after the step");
        assert!(
            t.max_abs_diff(b).unwrap() > 0.0,
            "{kind:?}: {name} did not move"
        );
    }
}

#[test]
fn a_10000_step_sequence_trains_without_stack_overflow() {
    // Run on a thread with a small stack: backward is a loop, not a recursion, so its depth does
    // not grow with the sequence.
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            for kind in KINDS {
                train_long::<f32>(kind, Implementation::Fused, 10_000);
            }
            // The reference path records several nodes per step: about 10^5 nodes.
            train_long::<f64>(CellKind::Lstm, Implementation::Reference, 10_000);
        })
        .unwrap()
        .join()
        .unwrap();
}

fn with_nan<T: Float>(dims: &[usize], at: usize) -> Tensor<T> {
    Tensor::from_fn(dims, |i| {
        if i == at {
            T::from_f64(f64::NAN)
        } else {
            T::from_f64(0.1 * i as f64)
        }
    })
    .unwrap()
}

fn non_finite_op(e: Error) -> String {
    match e {
        Error::NonFinite { op, value, .. } => {
            assert!(value.is_nan());
            op
        }
        other => panic!("expected NonFinite, got {other}"),
    }
}

#[test]
fn anomaly_mode_reports_a_nan_input_at_the_first_op_that_reads_it() {
    // A primitive op.
    let mut tape = Tape::<f64>::new();
    tape.set_anomaly_detection(true);
    let x = tape.input(with_nan(&[2, 3], 4));
    let w = tape.constant(Tensor::full(&[4, 3], 0.5).unwrap());
    let e = tape.matmul_t(x, false, w, true).unwrap_err();
    assert!(e.to_string().contains("matmul"), "{e}");
    assert_eq!(non_finite_op(e), "matmul");

    // Every fused layer, both precisions: the layer's own node names itself.
    for kind in KINDS {
        let name = match kind {
            CellKind::Lstm => "fused_lstm",
            CellKind::Gru => "fused_gru",
            _ => "fused_rnn",
        };
        let mut ps = ParamStore::<f32>::new();
        let layer = Recurrent::new(
            &mut ps,
            "",
            kind,
            RecurrentConfig::new(3, 5),
            &mut Rng::new(1),
        )
        .unwrap();
        let mut tape = Tape::new();
        tape.set_anomaly_detection(true);
        let x = tape.input(with_nan(&[4, 2, 3], 7));
        let e = layer
            .forward(&mut tape, &ps, x, ForwardOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains(name), "{kind:?}: {e}");
        assert_eq!(non_finite_op(e), name);

        let mut ps = ParamStore::<f64>::new();
        let layer = Recurrent::new(
            &mut ps,
            "",
            kind,
            RecurrentConfig::new(3, 5),
            &mut Rng::new(1),
        )
        .unwrap();
        let mut tape = Tape::new();
        tape.set_anomaly_detection(true);
        let x = tape.input(with_nan(&[4, 2, 3], 0));
        let opts = ForwardOptions {
            implementation: Implementation::Reference,
            ..Default::default()
        };
        // The reference path's first op on x selects step 0, which holds the NaN.
        let e = layer.forward(&mut tape, &ps, x, opts).unwrap_err();
        assert_eq!(non_finite_op(e), "select", "{kind:?}");
    }

    // A NaN parameter is reported where it is first used as well.
    let mut ps = ParamStore::<f64>::new();
    let p = ps.add("w", with_nan(&[2, 2], 1)).unwrap();
    let mut tape = Tape::new();
    tape.set_anomaly_detection(true);
    let w = tape.param(&ps, p).unwrap();
    let e = tape.tanh(w).unwrap_err();
    assert_eq!(non_finite_op(e), "tanh");
}

/// Regression: with anomaly mode on, `Tape::input` and `Tape::constant` panicked on a
/// non-finite value (the leaf's own check failed inside a call that cannot return an error).
#[test]
fn anomaly_mode_accepts_non_finite_leaves_and_reports_their_first_use() {
    let mut tape = Tape::<f64>::new();
    tape.set_anomaly_detection(true);
    let a = tape.input(Tensor::from_vec(vec![1.0, f64::INFINITY], &[2]).unwrap());
    let b = tape.constant(Tensor::from_vec(vec![f64::NAN, 2.0], &[2]).unwrap());
    let mut ps = ParamStore::<f64>::new();
    let p = ps.add("p", Tensor::scalar(f64::NEG_INFINITY)).unwrap();
    let c = tape.param(&ps, p).unwrap();
    assert!(tape.value(a).unwrap().data()[1].is_infinite());
    let e = tape.add(a, b).unwrap_err();
    assert!(
        matches!(e, Error::NonFinite { ref op, index: 0, .. } if op == "add"),
        "{e}"
    );
    let r = tape.relu(c).unwrap(); // relu(-inf) = 0: nothing to report
    assert_eq!(tape.value(r).unwrap().data(), &[0.0]);
    let e = tape.scale(c, 2.0).unwrap_err();
    assert!(
        matches!(e, Error::NonFinite { ref op, .. } if op == "scale"),
        "{e}"
    );
}
