//! The recurrence's regularizers (recurrent dropout, weight drop, zoneout): the fused layers
//! against the reference built from primitive ops (f64 to 1e-10 and f32 to 1e-5 relative, as the
//! unregularized layers), gradcheck of each in f64 with the masks held fixed (the same
//! generator state for every evaluation), results bit-identical for 1, 2 and 3 threads, and the
//! semantics of training and evaluation.

use crate::support::{
    Case, KINDS, assert_bit_identical, compare, gradcheck_case, random_config, random_lengths, run,
};
use recur::nn::{Activation, CellKind, ForwardOptions, Implementation, Recurrent, RecurrentConfig};
use recur::{ParamStore, Rng, Tape, Tensor};

/// A random shape with each regularizer off or on at a random probability, in training or
/// evaluation.
fn random_case(rng: &mut Rng, kind: CellKind, seed: u64) -> Case {
    let t = 1 + rng.below(6);
    let b = 1 + rng.below(4);
    let mut p = || {
        if rng.below(3) == 0 {
            0.0
        } else {
            0.1 + 0.6 * rng.uniform()
        }
    };
    let (rd, wd, zo) = (p(), p(), p());
    let cfg = random_config(rng, 1)
        .recurrent_dropout(rd)
        .weight_drop(wd)
        .zoneout(zo);
    let lengths = random_lengths(rng, t, b);
    Case {
        kind,
        cfg,
        t,
        b,
        lengths,
        with_h0: true,
        train: (rng.below(4) != 0).then_some(seed ^ 0x5eed),
        seed,
    }
}

#[test]
fn fused_equals_reference_with_regularizers() {
    let mut rng = Rng::new(21);
    let mut seen = [false; 4];
    for kind in KINDS {
        for k in 0..12 {
            let c = random_case(&mut rng, kind, 400 + k);
            seen[0] |= c.train.is_some() && c.cfg.recurrent_dropout > 0.0;
            seen[1] |= c.train.is_some() && c.cfg.weight_drop > 0.0;
            seen[2] |= c.train.is_some() && c.cfg.zoneout > 0.0;
            seen[3] |= c.train.is_none() && c.cfg.zoneout > 0.0;
            compare::<f64>(&c, 1e-10);
            compare::<f32>(&c, 1e-5);
        }
    }
    assert_eq!(seen, [true; 4], "the cases cover every regularizer");
}

#[test]
fn fused_equals_reference_with_regularizers_on_named_cases() {
    for kind in KINDS {
        let cfg = RecurrentConfig::new(3, 6)
            .num_layers(2)
            .bidirectional(true)
            .recurrent_dropout(0.4)
            .weight_drop(0.3)
            .zoneout(0.25);
        // Several shards (a batch of 40 runs as two), with and without lengths, in training.
        let c = Case {
            kind,
            cfg,
            t: 5,
            b: 40,
            lengths: None,
            with_h0: true,
            train: Some(3),
            seed: 8,
        };
        compare::<f64>(&c, 1e-10);
        compare::<f32>(&c, 1e-5);
        let c = Case {
            lengths: Some((0..40).map(|i| 1 + i % 5).collect()),
            ..c
        };
        compare::<f64>(&c, 1e-10);
        // Evaluation: zoneout's expectation.
        let c = Case { train: None, ..c };
        compare::<f64>(&c, 1e-10);
    }
    // Weight drop on a projected LSTM.
    let c = Case {
        kind: CellKind::Lstm,
        cfg: RecurrentConfig::new(4, 9)
            .num_layers(2)
            .bidirectional(true)
            .proj_size(5)
            .weight_drop(0.5),
        t: 6,
        b: 3,
        lengths: Some(vec![6, 1, 4]),
        with_h0: true,
        train: Some(4),
        seed: 16,
    };
    compare::<f64>(&c, 1e-10);
    compare::<f32>(&c, 1e-5);
}

/// Gradcheck in f64 of one regularizer at a time (and all together), fused, with the masks
/// fixed by the generator's seed; the reference once with all of them.
#[test]
fn gradcheck_passes_with_each_regularizer() {
    let base = RecurrentConfig::new(2, 3).num_layers(2).bidirectional(true);
    let configs = [
        ("recurrent_dropout", base.clone().recurrent_dropout(0.4)),
        ("weight_drop", base.clone().weight_drop(0.4)),
        ("zoneout", base.clone().zoneout(0.4)),
        (
            "all",
            base.clone()
                .recurrent_dropout(0.3)
                .weight_drop(0.3)
                .zoneout(0.3),
        ),
    ];
    for kind in KINDS {
        for (name, cfg) in &configs {
            for (train, imp) in [
                (Some(7), Implementation::Fused),
                (None, Implementation::Fused),
                (Some(7), Implementation::Reference),
            ] {
                if imp == Implementation::Reference && *name != "all" {
                    continue;
                }
                let c = Case {
                    kind,
                    cfg: cfg.clone(),
                    t: 3,
                    b: 2,
                    lengths: Some(vec![3, 2]),
                    with_h0: true,
                    train,
                    seed: 9,
                };
                let report = gradcheck_case(&c, imp);
                let what = format!("{kind:?} {name} train {train:?} {imp:?}");
                assert!(report.passed(), "{what}: {report:#?}");
                assert!(report.max_rel_err < 1e-6, "{what}: {report:#?}");
            }
        }
    }
}

fn check_bits<T: recur::Float>(to_bits: fn(T) -> u64) {
    // A batch of 70 runs as three shards; one of 16 splits each step's product by columns
    // on more than one thread.
    for (b, h) in [(70, 11), (16, 200)] {
        for kind in KINDS {
            let c = Case {
                kind,
                cfg: RecurrentConfig::new(5, h)
                    .num_layers(2)
                    .bidirectional(true)
                    .recurrent_dropout(0.3)
                    .weight_drop(0.2)
                    .zoneout(0.2),
                t: 6,
                b,
                lengths: Some((0..b).map(|i| 6 - (i * 7) % 6).collect()),
                with_h0: true,
                train: Some(11),
                seed: 5,
            };
            assert_bit_identical::<T>(&c, to_bits);
        }
    }
}

#[test]
fn regularized_layers_are_bit_identical_across_thread_counts_f32() {
    check_bits::<f32>(|x| u64::from(x.to_bits()));
}

#[test]
fn regularized_layers_are_bit_identical_across_thread_counts_f64() {
    check_bits::<f64>(f64::to_bits);
}

/// The outputs `y` of one forward pass in training (generator seeded with `train`) or
/// evaluation.
fn outputs(kind: CellKind, cfg: RecurrentConfig, train: Option<u64>) -> Tensor<f64> {
    let c = Case {
        kind,
        cfg,
        t: 8,
        b: 5,
        lengths: None,
        with_h0: true,
        train,
        seed: 3,
    };
    run::<f64>(&c, Implementation::Fused)
        .into_iter()
        .find(|(n, _)| n == "y")
        .unwrap()
        .1
}

#[test]
fn evaluation_is_deterministic_and_only_zoneout_acts_in_it() {
    let base = RecurrentConfig::new(3, 7).num_layers(2);
    for kind in KINDS {
        let plain = outputs(kind, base.clone(), None);
        let dropped = base.clone().recurrent_dropout(0.5).weight_drop(0.5);
        // Dropout and weight drop leave evaluation alone.
        assert_eq!(outputs(kind, dropped.clone(), None), plain, "{kind:?}");
        // In training they act, the same for the same generator and not for another.
        let a = outputs(kind, dropped.clone(), Some(1));
        assert_ne!(a, plain, "{kind:?}");
        assert_eq!(a, outputs(kind, dropped.clone(), Some(1)), "{kind:?}");
        assert_ne!(a, outputs(kind, dropped, Some(2)), "{kind:?}");
        // Zoneout's expectation acts in evaluation, deterministically.
        let zoned = base.clone().zoneout(0.3);
        let e = outputs(kind, zoned.clone(), None);
        assert_ne!(e, plain, "{kind:?}");
        assert_eq!(e, outputs(kind, zoned, None), "{kind:?}");
    }
}

/// In training zoneout keeps a fraction `p` of the units' previous values exactly; in
/// evaluation, a one-layer RNN's `h_t = p h_{t-1} + (1 - p) h~_t` is checked against the
/// unregularized cell step by step.
#[test]
fn zoneout_keeps_previous_values_in_training_and_blends_in_evaluation() {
    let p = 0.4;
    let kind = CellKind::Gru;
    let cfg = RecurrentConfig::new(3, 50).zoneout(p);
    let y = outputs(kind, cfg.clone(), Some(5));
    let (t_len, b, h) = (8, 5, 50);
    let (mut kept, mut total) = (0, 0);
    for t in 1..t_len {
        for k in 0..b * h {
            let (prev, cur) = (y.data()[(t - 1) * b * h + k], y.data()[t * b * h + k]);
            kept += usize::from(prev == cur);
            total += 1;
        }
    }
    let frac = kept as f64 / total as f64;
    assert!((frac - p).abs() < 0.05, "kept {frac}");

    // Evaluation: step the plain RNN cell from h_{t-1} and blend.
    let kind = CellKind::Rnn(Activation::Tanh);
    let cfg = RecurrentConfig::new(3, 4).zoneout(p);
    let mut ps = ParamStore::<f64>::new();
    let layer = Recurrent::new(&mut ps, "", kind, cfg, &mut Rng::new(3)).unwrap();
    let plain_cfg = RecurrentConfig::new(3, 4);
    let mut ps_plain = ParamStore::<f64>::new();
    let plain = Recurrent::new(&mut ps_plain, "", kind, plain_cfg, &mut Rng::new(3)).unwrap();
    let x = Tensor::from_fn(&[4, 1, 3], |k| (k as f64 * 0.7).sin()).unwrap();
    let mut tape = Tape::new();
    let xv = tape.constant(x.clone());
    let out = layer
        .forward(&mut tape, &ps, xv, ForwardOptions::default())
        .unwrap();
    let y = tape.value(out.y).unwrap().clone();
    let mut h_prev = vec![0.0; 4];
    for t in 0..4 {
        // One plain step from h_{t-1}.
        let mut tape = Tape::new();
        let x_t = Tensor::from_fn(&[1, 1, 3], |k| x.data()[t * 3 + k]).unwrap();
        let xv = tape.constant(x_t);
        let h0 = tape.constant(Tensor::from_vec(h_prev.clone(), &[1, 1, 4]).unwrap());
        let opts = ForwardOptions {
            h0: Some(h0),
            ..Default::default()
        };
        let o = plain.forward(&mut tape, &ps_plain, xv, opts).unwrap();
        let h_new = tape.value(o.y).unwrap().data().to_vec();
        for u in 0..4 {
            let want = (1.0 - p) * h_new[u] + p * h_prev[u];
            let got = y.data()[t * 4 + u];
            assert!(
                (got - want).abs() < 1e-14,
                "t {t} unit {u}: {got} vs {want}"
            );
            h_prev[u] = got;
        }
    }
}

#[test]
fn bad_regularizer_settings_are_refused_by_name() {
    let mut ps = ParamStore::<f32>::new();
    let mut rng = Rng::new(0);
    let err = |cfg: RecurrentConfig, kind: CellKind, ps: &mut ParamStore<f32>, rng: &mut Rng| {
        Recurrent::new(ps, "", kind, cfg, rng)
            .unwrap_err()
            .to_string()
    };
    for (cfg, want) in [
        (
            RecurrentConfig::new(3, 4).recurrent_dropout(1.0),
            "recurrent_dropout must be in [0, 1), got 1",
        ),
        (
            RecurrentConfig::new(3, 4).weight_drop(-0.1),
            "weight_drop must be in [0, 1), got -0.1",
        ),
        (
            RecurrentConfig::new(3, 4).zoneout(f64::NAN),
            "zoneout must be in [0, 1), got NaN",
        ),
        (
            RecurrentConfig::new(3, 4).proj_size(2).zoneout(0.1),
            "zoneout (0.1) is not supported with proj_size (2)",
        ),
        (
            RecurrentConfig::new(3, 4)
                .proj_size(2)
                .recurrent_dropout(0.2),
            "recurrent_dropout (0.2) is not supported with proj_size (2)",
        ),
    ] {
        let e = err(cfg, CellKind::Lstm, &mut ps, &mut rng);
        assert!(e.contains(want), "{e}");
    }
    // A single-step cell has no regularizers: taking one from a regularized stack is refused.
    let cfg = RecurrentConfig::new(3, 4).zoneout(0.1);
    let layer = Recurrent::new(&mut ps, "", CellKind::Gru, cfg, &mut rng).unwrap();
    let e = recur::nn::Cell::from_layer(&layer, 0, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the stack is regularized"), "{e}");
}

/// The tape-free step (sampling) of a layer trained with zoneout steps with its expectation, as
/// the layer's forward in evaluation does.
#[test]
fn inference_step_applies_zoneout_expectation() {
    for kind in KINDS {
        let cfg = RecurrentConfig::new(3, 6).zoneout(0.3);
        let mut ps = ParamStore::<f64>::new();
        let layer = Recurrent::new(&mut ps, "", kind, cfg, &mut Rng::new(4)).unwrap();
        let x = Tensor::from_fn(&[5, 1, 3], |k| (k as f64 * 0.9).cos()).unwrap();
        let mut tape = Tape::new();
        let xv = tape.constant(x.clone());
        let out = layer
            .forward(&mut tape, &ps, xv, ForwardOptions::default())
            .unwrap();
        let y = tape.value(out.y).unwrap();
        let mut step = layer.inference_step(&ps, 0, 0, 1).unwrap();
        let (mut h, mut c) = (vec![0.0; 6], vec![0.0; 6]);
        for t in 0..5 {
            step.step_packed(&x.data()[t * 3..(t + 1) * 3], &mut h, &mut c)
                .unwrap();
            for (got, want) in h.iter().zip(&y.data()[t * 6..(t + 1) * 6]) {
                assert!(
                    (got - want).abs() < 1e-12,
                    "{kind:?} t {t}: {got} vs {want}"
                );
            }
        }
    }
}
