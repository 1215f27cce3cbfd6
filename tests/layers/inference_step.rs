//! `InferenceStep` (plain slices, nothing recorded) against the fused layer run over the same
//! sequence, and its argument checks.

use recur::nn::{Activation, CellKind, ForwardOptions, InferenceStep, Recurrent, RecurrentConfig};
use recur::{ParamStore, Rng, Tape, Tensor};

#[test]
fn steps_match_the_layer() {
    let (t_len, b, i, h) = (4, 3, 5, 19);
    for kind in [
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::Rnn(Activation::Tanh),
        CellKind::Rnn(Activation::Relu),
    ] {
        for bias in [true, false] {
            let mut ps = ParamStore::<f64>::new();
            let cfg = RecurrentConfig::new(i, h).bias(bias);
            let layer = Recurrent::new(&mut ps, "", kind, cfg, &mut Rng::new(3)).unwrap();
            let mut rng = Rng::new(4);
            let x = Tensor::from_fn(&[t_len, b, i], |_| rng.uniform_range(-1.0, 1.0)).unwrap();
            let mut tape = Tape::new();
            let xv = tape.constant(x.clone());
            let out = layer
                .forward(&mut tape, &ps, xv, ForwardOptions::default())
                .unwrap();
            let y = tape.value(out.y).unwrap().data().to_vec();

            let p = layer.direction_params(0, 0).unwrap();
            let bias_s = p
                .b_ih
                .zip(p.b_hh)
                .map(|(a, c)| (ps.get(a).data(), ps.get(c).data()));
            let (w_ih, w_hh) = (ps.get(p.w_ih).data(), ps.get(p.w_hh).data());
            let mut step = InferenceStep::<f64>::new(kind, i, h, b).unwrap();
            let mut packed = InferenceStep::<f64>::new(kind, i, h, b).unwrap();
            packed.pack_weights(w_ih, w_hh, bias_s).unwrap();
            let (mut hs, mut cs) = (vec![0.0; b * h], vec![0.0; b * h]);
            let (mut hp, mut cp) = (vec![0.0; b * h], vec![0.0; b * h]);
            for t in 0..t_len {
                let xt = &x.data()[t * b * i..(t + 1) * b * i];
                step.step(w_ih, w_hh, bias_s, xt, &mut hs, &mut cs).unwrap();
                packed.step_packed(xt, &mut hp, &mut cp).unwrap();
                let want = &y[t * b * h..(t + 1) * b * h];
                for (k, ((&a, &q), &e)) in hs.iter().zip(&hp).zip(want).enumerate() {
                    assert!(
                        (a - e).abs() < 1e-12 && (q - e).abs() < 1e-12,
                        "{kind:?} bias={bias} t={t} [{k}]: {a} (step), {q} (packed) vs {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn wrong_lengths_are_errors_and_change_nothing() {
    let mut step = InferenceStep::<f32>::new(CellKind::Gru, 2, 3, 1).unwrap();
    let (w_ih, w_hh) = (vec![0.1f32; 9 * 2], vec![0.1f32; 9 * 3]);
    let mut h = vec![0.5f32; 3];
    let err = step
        .step(&w_ih, &w_hh[1..], None, &[1.0, 2.0], &mut h, &mut [])
        .unwrap_err();
    assert!(err.to_string().contains("w_hh"), "{err}");
    assert_eq!(h, vec![0.5; 3]);
    assert!(
        step.step(&w_ih, &w_hh, None, &[1.0], &mut h, &mut [])
            .is_err()
    );
    assert!(InferenceStep::<f32>::new(CellKind::Lstm, 0, 3, 1).is_err());

    // Packed steps: none before pack_weights, which checks lengths and keeps its last packing.
    let err = step.step_packed(&[1.0, 2.0], &mut h, &mut []).unwrap_err();
    assert!(err.to_string().contains("pack_weights"), "{err}");
    let err = step.pack_weights(&w_ih[1..], &w_hh, None).unwrap_err();
    assert!(
        err.to_string().contains("w_ih has 17 values, expected 18"),
        "{err}"
    );
    step.pack_weights(&w_ih, &w_hh, None).unwrap();
    assert!(step.pack_weights(&w_ih, &w_hh[2..], None).is_err());
    let err = step.step_packed(&[1.0], &mut h, &mut []).unwrap_err();
    assert!(
        err.to_string().contains("x has 1 values, expected 2"),
        "{err}"
    );
    assert_eq!(h, vec![0.5; 3]);
    step.step_packed(&[1.0, 2.0], &mut h, &mut []).unwrap();
    assert_ne!(h, vec![0.5; 3]);
}
