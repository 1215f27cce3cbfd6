//! The fused layers against the reference built from primitive tape ops: outputs and every
//! gradient, on random shapes (B = 1, T = 1, H not a multiple of 8, several layers,
//! bidirectional, ragged lengths), f64 to 1e-10 and f32 to 1e-5 relative; and gradcheck of the
//! fused layers in f64.

use crate::support::{Case, KINDS, compare, gradcheck_case, random_case};
use recur::nn::{CellKind, ForwardOptions, Implementation, Recurrent, RecurrentConfig};
use recur::{ParamStore, Rng, Tape, Tensor};

#[test]
fn fused_equals_reference_f64() {
    let mut rng = Rng::new(11);
    for kind in KINDS {
        for k in 0..12 {
            let c = random_case(&mut rng, kind, 100 + k, 1);
            compare::<f64>(&c, 1e-10);
        }
    }
}

#[test]
fn fused_equals_reference_f32() {
    let mut rng = Rng::new(12);
    for kind in KINDS {
        for k in 0..12 {
            let c = random_case(&mut rng, kind, 200 + k, 1);
            compare::<f32>(&c, 1e-5);
        }
    }
}

#[test]
fn fused_equals_reference_on_named_edge_cases() {
    for kind in KINDS {
        // B = 1, T = 1
        let base = Case {
            kind,
            cfg: RecurrentConfig::new(3, 9),
            t: 1,
            b: 1,
            lengths: None,
            with_h0: true,
            train: None,
            seed: 5,
        };
        compare::<f64>(&base, 1e-10);
        // several layers, bidirectional, ragged lengths including a full-length one
        let c = Case {
            cfg: RecurrentConfig::new(4, 13)
                .num_layers(3)
                .bidirectional(true),
            t: 7,
            b: 4,
            lengths: Some(vec![7, 1, 4, 2]),
            seed: 6,
            ..base.clone()
        };
        compare::<f64>(&c, 1e-10);
        compare::<f32>(&c, 1e-5);
        // several shards (a batch of 40 runs as two), both directions, without and with
        // lengths
        let c = Case {
            cfg: RecurrentConfig::new(3, 6).bidirectional(true),
            t: 5,
            b: 40,
            lengths: None,
            seed: 8,
            ..base.clone()
        };
        compare::<f64>(&c, 1e-10);
        let c = Case {
            lengths: Some((0..40).map(|i| 1 + i % 5).collect()),
            ..c
        };
        compare::<f64>(&c, 1e-10);
        // long sequence
        let c = Case {
            cfg: RecurrentConfig::new(2, 5),
            t: 60,
            b: 2,
            lengths: Some(vec![60, 37]),
            seed: 7,
            ..base
        };
        compare::<f64>(&c, 1e-10);
    }
}

#[test]
fn gradcheck_passes_on_the_fused_layers() {
    for kind in KINDS {
        let c = Case {
            kind,
            cfg: RecurrentConfig::new(2, 3).num_layers(2).bidirectional(true),
            t: 3,
            b: 2,
            lengths: Some(vec![3, 2]),
            with_h0: true,
            train: None,
            seed: 9,
        };
        let report = gradcheck_case(&c, Implementation::Fused);
        assert!(report.passed(), "{kind:?}: {report:#?}");
        assert!(report.max_rel_err < 1e-6, "{kind:?}: {report:#?}");
    }
}

/// LSTM cases with a projection: random sizes with `proj_size` in `1..H`, several layers,
/// bidirectional, ragged lengths, batch-first.
fn projected_case(rng: &mut Rng, seed: u64) -> Case {
    let mut c = random_case(rng, CellKind::Lstm, seed, 1);
    c.cfg.hidden_size = 2 + rng.below(10);
    c.cfg.proj_size = 1 + rng.below(c.cfg.hidden_size - 1);
    c
}

#[test]
fn fused_equals_reference_with_projection() {
    let mut rng = Rng::new(13);
    let mut seen = (false, false, false);
    for k in 0..16 {
        let c = projected_case(&mut rng, 300 + k);
        seen.0 |= c.cfg.num_layers > 1;
        seen.1 |= c.cfg.bidirectional;
        seen.2 |= c.lengths.is_some();
        compare::<f64>(&c, 1e-10);
        compare::<f32>(&c, 1e-5);
    }
    assert!(
        seen.0 && seen.1 && seen.2,
        "cases cover layers, directions, lengths"
    );
    let c = Case {
        kind: CellKind::Lstm,
        cfg: RecurrentConfig::new(4, 9)
            .num_layers(3)
            .bidirectional(true)
            .proj_size(5),
        t: 7,
        b: 4,
        lengths: Some(vec![7, 1, 4, 2]),
        with_h0: true,
        train: None,
        seed: 16,
    };
    compare::<f64>(&c, 1e-10);
    compare::<f32>(&c, 1e-5);
}

#[test]
fn projection_changes_the_outputs_and_shapes() {
    // The projection is applied: the outputs have P features and differ from an unprojected
    // run by exactly the product with W_hr.
    let cfg = RecurrentConfig::new(3, 6).proj_size(2).bidirectional(true);
    let mut ps = ParamStore::<f64>::new();
    let layer = Recurrent::new(&mut ps, "", CellKind::Lstm, cfg, &mut Rng::new(1)).unwrap();
    assert_eq!(ps.get(ps.find("weight_hr_l0").unwrap()).dims(), &[2, 6]);
    assert_eq!(
        ps.get(ps.find("weight_hh_l0_reverse").unwrap()).dims(),
        &[24, 2]
    );
    let mut tape = Tape::new();
    let x = tape.constant(Tensor::from_fn(&[5, 2, 3], |k| (k as f64 * 0.3).sin()).unwrap());
    let out = layer
        .forward(&mut tape, &ps, x, ForwardOptions::default())
        .unwrap();
    assert_eq!(tape.shape(out.y).unwrap().dims(), &[5, 2, 4]);
    assert_eq!(tape.shape(out.h_n).unwrap().dims(), &[2, 2, 2]);
    assert_eq!(tape.shape(out.c_n.unwrap()).unwrap().dims(), &[2, 2, 6]);
    // Zeroing W_hr zeroes every output.
    ps.get_mut(ps.find("weight_hr_l0").unwrap())
        .data_mut()
        .fill(0.0);
    let mut tape = Tape::new();
    let x = tape.constant(Tensor::from_fn(&[5, 2, 3], |k| (k as f64 * 0.3).sin()).unwrap());
    let out = layer
        .forward(&mut tape, &ps, x, ForwardOptions::default())
        .unwrap();
    let y = tape.value(out.y).unwrap();
    for t in 0..5 {
        for b in 0..2 {
            for f in 0..2 {
                assert_eq!(y.get(&[t, b, f]).unwrap(), 0.0);
            }
            assert!(y.get(&[t, b, 2]).unwrap() != 0.0);
        }
    }
}

#[test]
fn gradcheck_passes_with_projection() {
    for (imp, lengths) in [
        (Implementation::Fused, Some(vec![3, 2])),
        (Implementation::Fused, None),
        (Implementation::Reference, Some(vec![1, 3])),
    ] {
        let c = Case {
            kind: CellKind::Lstm,
            cfg: RecurrentConfig::new(2, 4)
                .num_layers(2)
                .bidirectional(true)
                .proj_size(3),
            t: 3,
            b: 2,
            lengths,
            with_h0: true,
            train: None,
            seed: 10,
        };
        let report = gradcheck_case(&c, imp);
        assert!(report.passed(), "{imp:?}: {report:#?}");
        assert!(report.max_rel_err < 1e-6, "{imp:?}: {report:#?}");
    }
}

#[test]
fn projection_is_refused_where_it_is_not_supported() {
    let mut ps = ParamStore::<f32>::new();
    let mut rng = Rng::new(0);
    let err = |r: recur::Result<Recurrent>| r.unwrap_err().to_string();
    let e = err(Recurrent::new(
        &mut ps,
        "",
        CellKind::Gru,
        RecurrentConfig::new(3, 4).proj_size(2),
        &mut rng,
    ));
    assert!(
        e.contains("proj_size (2) is for LSTM layers only, not gru"),
        "{e}"
    );
    let e = err(Recurrent::new(
        &mut ps,
        "",
        CellKind::Lstm,
        RecurrentConfig::new(3, 4).proj_size(4),
        &mut rng,
    ));
    assert!(
        e.contains("proj_size (4) must be smaller than hidden_size (4)"),
        "{e}"
    );
    let cfg = RecurrentConfig::new(3, 4).proj_size(2).num_layers(2);
    let layer = Recurrent::new(&mut ps, "", CellKind::Lstm, cfg, &mut rng).unwrap();
    let e = match layer.inference_step(&ps, 0, 0, 1) {
        Ok(_) => panic!("a tape-free step over a projection"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("no LSTM projection (proj_size 2)"), "{e}");
    let e = recur::nn::Cell::from_layer(&layer, 1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("proj_size 2"), "{e}");
    // h0 has P features, c0 has H.
    let mut tape = Tape::new();
    let x = tape.constant(Tensor::zeros(&[2, 1, 3]).unwrap());
    let h0 = tape.constant(Tensor::zeros(&[2, 1, 4]).unwrap());
    let opts = ForwardOptions {
        h0: Some(h0),
        ..Default::default()
    };
    let e = layer
        .forward(&mut tape, &ps, x, opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("h0"), "{e}");
    let h0 = tape.constant(Tensor::zeros(&[2, 1, 2]).unwrap());
    let c0 = tape.constant(Tensor::zeros(&[2, 1, 4]).unwrap());
    let opts = ForwardOptions {
        h0: Some(h0),
        c0: Some(c0),
        ..Default::default()
    };
    let out = layer.forward(&mut tape, &ps, x, opts).unwrap();
    assert_eq!(tape.shape(out.y).unwrap().dims(), &[2, 1, 2]);
    let names: Vec<String> = ps.iter().map(|(_, n, _)| n.to_string()).collect();
    assert!(names.contains(&"weight_hr_l1".to_string()), "{names:?}");
}
