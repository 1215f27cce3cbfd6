//! Layer-normalized LSTM and GRU layers (`RecurrentConfig::layer_norm`): the fused layers
//! against the reference built from primitive ops (f64 to 1e-12 and f32 to 2e-4 relative),
//! gradcheck in f64 (every weight, gain and bias, and the inputs), results bit-identical for 1,
//! 2 and 3 threads, the parameters' names and initial values, what the normalization does, and
//! the combinations that are refused.

use crate::support::{Case, assert_bit_identical, compare, gradcheck_case, random_case, run};
use recur::nn::{
    Activation, Cell, CellKind, ForwardOptions, Implementation, Recurrent, RecurrentConfig,
};
use recur::{ParamStore, Rng, Tape, Tensor};

/// The f32 tolerance: the normalization divides differences of nearly equal values by `σ`
/// (forward, `x - mean(x)`; backward, `γ dy - mean(γ dy) - x^ mean(γ dy x^)`), which raises the
/// difference between the fused path's vectorised sigmoid and tanh (within 2 ulps) and the
/// reference's, and f32's rounding, above the plain layers' 1e-5 (the f64 comparison, to 1e-12,
/// is the sharp one).
const F32_TOL: f64 = 2e-4;

const LN_KINDS: [CellKind; 2] = [CellKind::Lstm, CellKind::Gru];

/// A random shape with layer normalization on. At least two input features and two hidden
/// units: with one, `LN(W_ih x_t)` (or `LN(W_hh h_{t-1})`) does not depend on `|x_t|` (on
/// `|h_{t-1}|`), so the gradient reaching `x` (`h0`) is rounding noise, which f32 cannot
/// compare.
fn random_ln_case(rng: &mut Rng, kind: CellKind, seed: u64) -> Case {
    let mut c = random_case(rng, kind, seed, 2);
    c.cfg = c.cfg.layer_norm(true);
    c.train = (rng.below(2) == 1).then_some(seed);
    c
}

#[test]
fn fused_equals_reference_with_layer_norm() {
    let mut rng = Rng::new(31);
    for kind in LN_KINDS {
        for k in 0..16 {
            let c = random_ln_case(&mut rng, kind, 500 + k);
            compare::<f64>(&c, 1e-12);
            compare::<f32>(&c, F32_TOL);
        }
        // Three layers, both directions, ragged lengths, dropout between layers in training.
        let c = Case {
            kind,
            cfg: RecurrentConfig::new(4, 13)
                .num_layers(3)
                .bidirectional(true)
                .dropout(0.3)
                .layer_norm(true),
            t: 7,
            b: 4,
            lengths: Some(vec![7, 1, 4, 2]),
            with_h0: true,
            train: Some(2),
            seed: 6,
        };
        compare::<f64>(&c, 1e-12);
        compare::<f32>(&c, F32_TOL);
        // A batch of 40 (two shards in the other fused layers), a long sequence.
        let c = Case {
            cfg: RecurrentConfig::new(3, 6).layer_norm(true),
            t: 30,
            b: 40,
            lengths: Some((0..40).map(|i| 1 + i % 30).collect()),
            ..c
        };
        compare::<f64>(&c, 1e-12);
    }
}

#[test]
fn gradcheck_passes_with_layer_norm() {
    for kind in LN_KINDS {
        for (imp, lengths, bidirectional) in [
            (Implementation::Fused, Some(vec![3, 2]), true),
            (Implementation::Fused, None, false),
            (Implementation::Reference, Some(vec![1, 3]), true),
        ] {
            let c = Case {
                kind,
                cfg: RecurrentConfig::new(2, 3)
                    .num_layers(2)
                    .bidirectional(bidirectional)
                    .layer_norm(true),
                t: 3,
                b: 2,
                lengths,
                with_h0: true,
                train: None,
                seed: 9,
            };
            let report = gradcheck_case(&c, imp);
            assert!(report.passed(), "{kind:?} {imp:?}: {report:#?}");
            assert!(report.max_rel_err < 1e-6, "{kind:?} {imp:?}: {report:#?}");
        }
    }
}

fn check_bits<T: recur::Float>(to_bits: fn(T) -> u64) {
    for (b, h) in [(70, 11), (16, 40)] {
        for kind in LN_KINDS {
            let c = Case {
                kind,
                cfg: RecurrentConfig::new(5, h)
                    .num_layers(2)
                    .bidirectional(true)
                    .layer_norm(true),
                t: 6,
                b,
                lengths: Some((0..b).map(|i| 6 - (i * 7) % 6).collect()),
                with_h0: true,
                train: None,
                seed: 5,
            };
            assert_bit_identical::<T>(&c, to_bits);
        }
    }
}

#[test]
fn layer_norm_is_bit_identical_across_thread_counts_f32() {
    check_bits::<f32>(|x| u64::from(x.to_bits()));
}

#[test]
fn layer_norm_is_bit_identical_across_thread_counts_f64() {
    check_bits::<f64>(f64::to_bits);
}

#[test]
fn layer_norm_parameters_are_named_and_initialised() {
    for (kind, g) in [(CellKind::Lstm, 4), (CellKind::Gru, 3)] {
        let cfg = RecurrentConfig::new(3, 5)
            .num_layers(2)
            .bidirectional(true)
            .layer_norm(true);
        let mut ps = ParamStore::<f32>::new();
        Recurrent::new(&mut ps, "rnn.", kind, cfg, &mut Rng::new(0)).unwrap();
        for l in 0..2 {
            for sfx in ["", "_reverse"] {
                for (name, n, v) in [("ln_ih_weight", g * 5, 1.0), ("ln_hh_weight", g * 5, 1.0)]
                    .into_iter()
                    .chain(
                        (kind == CellKind::Lstm)
                            .then_some([("ln_c_weight", 5, 1.0), ("ln_c_bias", 5, 0.0)])
                            .into_iter()
                            .flatten(),
                    )
                {
                    let full = format!("rnn.{name}_l{l}{sfx}");
                    let id = ps.find(&full).unwrap_or_else(|| panic!("{full} missing"));
                    assert_eq!(ps.get(id).dims(), &[n], "{full}");
                    assert!(ps.get(id).data().iter().all(|&x| x == v), "{full}");
                }
            }
        }
        let has_c = ps.iter().any(|(_, n, _)| n.starts_with("rnn.ln_c_"));
        assert_eq!(has_c, kind == CellKind::Lstm);
    }
}

/// The outputs `y` of a one-layer stack over a fixed input, after `edit` changes its
/// parameters.
fn outputs(kind: CellKind, cfg: RecurrentConfig, edit: impl Fn(&mut ParamStore<f64>)) -> Vec<f64> {
    let mut ps = ParamStore::<f64>::new();
    let layer = Recurrent::new(&mut ps, "", kind, cfg, &mut Rng::new(3)).unwrap();
    edit(&mut ps);
    let mut tape = Tape::new();
    let x = tape.constant(Tensor::from_fn(&[6, 2, 3], |k| (k as f64 * 0.7).sin()).unwrap());
    let out = layer
        .forward(&mut tape, &ps, x, ForwardOptions::default())
        .unwrap();
    tape.value(out.y).unwrap().data().to_vec()
}

/// The normalization acts: the outputs differ from the plain layer's with the same weights,
/// and scaling `W_ih` or `W_hh` by a positive factor (which the normalization divides out)
/// leaves them unchanged up to `eps` (which weighs on the first steps, where `W_hh h` is
/// small), which it does not without layer normalization.
#[test]
fn layer_norm_divides_out_the_scale_of_the_products() {
    let scale = |name: &'static str| {
        move |ps: &mut ParamStore<f64>| {
            let id = ps.find(name).unwrap();
            for v in ps.get_mut(id).data_mut() {
                *v *= 3.0;
            }
        }
    };
    for kind in [CellKind::Lstm, CellKind::Gru] {
        let ln = RecurrentConfig::new(3, 6).layer_norm(true);
        let plain = outputs(kind, RecurrentConfig::new(3, 6), |_| {});
        let base = outputs(kind, ln.clone(), |_| {});
        let far = plain
            .iter()
            .zip(&base)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(far > 1e-3, "{kind:?}: layer norm changed nothing ({far})");
        for name in ["weight_ih_l0", "weight_hh_l0"] {
            let scaled = outputs(kind, ln.clone(), scale(name));
            let d = base
                .iter()
                .zip(&scaled)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(d < 1e-3, "{kind:?} {name}: {d}");
            let unnormalized = outputs(kind, RecurrentConfig::new(3, 6), scale(name));
            let d = plain
                .iter()
                .zip(&unnormalized)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                d > 1e-3,
                "{kind:?} {name}: scaling acts without layer norm ({d})"
            );
        }
    }
}

/// Evaluation and training give the same outputs (layer normalization has no mode), and the
/// fused and reference implementations agree in both.
#[test]
fn layer_norm_is_the_same_in_training_and_evaluation() {
    for kind in LN_KINDS {
        let c = Case {
            kind,
            cfg: RecurrentConfig::new(3, 5).layer_norm(true),
            t: 4,
            b: 3,
            lengths: None,
            with_h0: false,
            train: None,
            seed: 12,
        };
        let eval = run::<f64>(&c, Implementation::Fused);
        let train = run::<f64>(
            &Case {
                train: Some(1),
                ..c
            },
            Implementation::Fused,
        );
        assert_eq!(eval[1], train[1], "{kind:?}: y");
    }
}

#[test]
fn unsupported_layer_norm_combinations_are_refused_by_name() {
    let mut ps = ParamStore::<f32>::new();
    let mut rng = Rng::new(0);
    let ln = RecurrentConfig::new(3, 4).layer_norm(true);
    for (kind, cfg, want) in [
        (
            CellKind::Rnn(Activation::Tanh),
            ln.clone(),
            "layer_norm is for LSTM and GRU layers, not rnn",
        ),
        (
            CellKind::Rnn(Activation::Relu),
            ln.clone(),
            "layer_norm is for LSTM and GRU layers, not rnn-relu",
        ),
        (
            CellKind::Lstm,
            ln.clone().proj_size(2),
            "layer_norm is not supported with proj_size (2)",
        ),
        (
            CellKind::Gru,
            ln.clone().recurrent_dropout(0.25),
            "layer_norm is not supported with recurrent_dropout (0.25)",
        ),
        (
            CellKind::Lstm,
            ln.clone().weight_drop(0.5),
            "layer_norm is not supported with weight_drop (0.5)",
        ),
        (
            CellKind::Gru,
            ln.clone().zoneout(0.1),
            "layer_norm is not supported with zoneout (0.1)",
        ),
    ] {
        let e = Recurrent::new(&mut ps, "", kind, cfg, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{kind:?}: {e}");
    }
    // The single-step paths have no layer normalization: they refuse a normalized stack.
    for kind in LN_KINDS {
        let mut ps = ParamStore::<f32>::new();
        let layer = Recurrent::new(&mut ps, "", kind, ln.clone(), &mut rng).unwrap();
        let e = match layer.inference_step(&ps, 0, 0, 1) {
            Ok(_) => panic!("a tape-free step over a layer-normalized stack"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("no layer normalization (layer_norm)"), "{e}");
        let e = Cell::from_layer(&layer, 0, 0).unwrap_err().to_string();
        assert!(e.contains("layer-normalized"), "{e}");
    }
}
