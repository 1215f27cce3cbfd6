//! Optimizer state export and import, bad hyper-parameters and clipping edge cases.

use recur::optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, Optimizer, RmsProp, RmsPropConfig, Sgd,
    SgdConfig, clip_grad_norm, clip_grad_value, grad_norm,
};
use recur::{Error, ParamId, ParamStore, Tape, Tensor};

fn store() -> (ParamStore<f64>, ParamId, ParamId) {
    let mut ps = ParamStore::new();
    let a = ps
        .add(
            "layer.weight",
            Tensor::from_fn(&[2, 3], |i| i as f64 * 0.1 - 0.2).unwrap(),
        )
        .unwrap();
    let b = ps
        .add(
            "layer.bias",
            Tensor::from_vec(vec![0.5, -0.5], &[2]).unwrap(),
        )
        .unwrap();
    (ps, a, b)
}

/// One step on the loss `sum(tanh(a)^2) + sum(b^3)` (or without `b`).
fn train_step(opt: &mut dyn Optimizer<f64>, ps: &mut ParamStore<f64>, with_b: bool) {
    let mut tape = Tape::new();
    let a = tape.param(ps, ps.find("layer.weight").unwrap()).unwrap();
    let t = tape.tanh(a).unwrap();
    let sq = tape.mul(t, t).unwrap();
    let mut loss = tape.sum(sq).unwrap();
    if with_b {
        let b = tape.param(ps, ps.find("layer.bias").unwrap()).unwrap();
        let b2 = tape.mul(b, b).unwrap();
        let b3 = tape.mul(b2, b).unwrap();
        let s = tape.sum(b3).unwrap();
        loss = tape.add(loss, s).unwrap();
    }
    let grads = tape.backward(loss).unwrap();
    opt.step(ps, &grads).unwrap();
}

/// Builds a fresh optimizer.
type Make = Box<dyn Fn() -> Box<dyn Optimizer<f64>>>;

fn optimizers() -> Vec<Make> {
    vec![
        Box::new(|| Box::new(Sgd::new(SgdConfig::default().lr(0.1).momentum(0.9)).unwrap())),
        Box::new(|| Box::new(Adam::new(AdamConfig::default().lr(0.05).amsgrad(true)).unwrap())),
        Box::new(|| Box::new(AdamW::new(AdamConfig::adamw().lr(0.05)).unwrap())),
        Box::new(|| {
            Box::new(RmsProp::new(RmsPropConfig::default().momentum(0.5).centered(true)).unwrap())
        }),
        Box::new(|| {
            Box::new(Adagrad::new(AdagradConfig::default().initial_accumulator_value(0.1)).unwrap())
        }),
    ]
}

#[test]
fn exported_state_resumes_exactly() {
    for make in optimizers() {
        let (mut ps, _, _) = store();
        let mut opt = make();
        for k in 0..3 {
            train_step(opt.as_mut(), &mut ps, k != 1);
        }
        let (tensors, scalars) = (opt.state_tensors(&ps), opt.state_scalars());
        assert!(
            tensors.iter().any(|(n, _)| n.starts_with("layer.weight.")),
            "{}: {tensors:?}",
            opt.name()
        );
        let mut resumed = make();
        resumed.set_lr(123.0);
        resumed.load_state(&ps, &tensors, &scalars).unwrap();
        assert_eq!(resumed.lr(), opt.lr());
        let mut ps2 = ps.clone();
        for _ in 0..3 {
            train_step(opt.as_mut(), &mut ps, true);
            train_step(resumed.as_mut(), &mut ps2, true);
        }
        for (id, name, t) in ps.iter() {
            assert_eq!(t.data(), ps2.get(id).data(), "{} {name}", opt.name());
        }
        // And a fresh optimizer without the state diverges (the state matters).
        let mut fresh = make();
        let mut ps3 = ps2.clone();
        train_step(fresh.as_mut(), &mut ps3, true);
        train_step(resumed.as_mut(), &mut ps2, true);
        assert_ne!(
            ps3.get(ps3.find("layer.weight").unwrap()).data(),
            ps2.get(ps2.find("layer.weight").unwrap()).data()
        );
    }
}

#[test]
fn load_state_rejects_bad_state_and_changes_nothing() {
    let (mut ps, _, _) = store();
    let mut opt = Adam::new(AdamConfig::default()).unwrap();
    train_step(&mut opt, &mut ps, true);
    let good = opt.state_tensors(&ps);
    let scalars = opt.state_scalars();
    let before = opt.state_tensors(&ps);

    let mut missing = good.clone();
    missing.retain(|(n, _)| n != "layer.bias.exp_avg_sq");
    let e = opt
        .load_state(&ps, &missing, &scalars)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing `layer.bias.exp_avg_sq`"), "{e}");

    let mut shaped = good.clone();
    for (n, t) in shaped.iter_mut() {
        if n == "layer.weight.exp_avg" {
            *t = Tensor::zeros(&[3, 2]).unwrap();
        }
    }
    let e = opt
        .load_state(&ps, &shaped, &scalars)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer.weight.exp_avg") && e.contains("[3, 2]"),
        "{e}"
    );

    let mut unknown = good.clone();
    unknown.push(("nothing.exp_avg".into(), Tensor::zeros(&[1]).unwrap()));
    let e = opt
        .load_state(&ps, &unknown, &scalars)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing.exp_avg"), "{e}");

    let e = opt.load_state(&ps, &good, &[]).unwrap_err().to_string();
    assert!(e.contains("lr"), "{e}");

    let after = opt.state_tensors(&ps);
    assert_eq!(before.len(), after.len());
    for ((n1, t1), (n2, t2)) in before.iter().zip(&after) {
        assert_eq!((n1, t1.data()), (n2, t2.data()));
    }
}

#[test]
fn bad_hyper_parameters_are_errors() {
    assert!(Sgd::<f64>::new(SgdConfig::default().nesterov(true)).is_err());
    assert!(Sgd::<f64>::new(SgdConfig::default().lr(-1.0)).is_err());
    assert!(Adam::<f64>::new(AdamConfig::default().betas(1.0, 0.9)).is_err());
    assert!(AdamW::<f32>::new(AdamConfig::default().eps(f64::NAN)).is_err());
    assert!(RmsProp::<f64>::new(RmsPropConfig::default().momentum(-0.1)).is_err());
    assert!(Adagrad::<f64>::new(AdagradConfig::default().lr_decay(f64::INFINITY)).is_err());
}

#[test]
fn step_rejects_gradients_of_another_shape() {
    let (ps, a, _) = store();
    let mut other = ParamStore::<f64>::new();
    other.add("x", Tensor::zeros(&[4]).unwrap()).unwrap();
    let mut tape = Tape::new();
    let x = tape.param(&other, a).unwrap();
    let loss = tape.sum(x).unwrap();
    let grads = tape.backward(loss).unwrap();
    let mut ps2 = ps.clone();
    let mut opt = Sgd::new(SgdConfig::default()).unwrap();
    assert!(matches!(
        opt.step(&mut ps2, &grads),
        Err(Error::ShapeMismatch { .. })
    ));
    assert_eq!(ps2.get(a).data(), ps.get(a).data());
}

#[test]
fn clip_grad_norm_scales_only_above_the_threshold_and_rejects_non_finite() {
    let mut ps = ParamStore::<f64>::new();
    let a = ps
        .add("a", Tensor::from_vec(vec![3.0, 4.0], &[2]).unwrap())
        .unwrap();
    let mut tape = Tape::new();
    let loss = tape_loss(&mut tape, &ps, a);
    let mut g = tape.backward(loss).unwrap();
    assert_eq!(grad_norm(&g), 5.0);
    assert_eq!(clip_grad_norm(&mut g, 10.0).unwrap(), 5.0);
    assert_eq!(g.param(a).unwrap().data(), &[3.0, 4.0]);
    assert_eq!(clip_grad_norm(&mut g, 1.0).unwrap(), 5.0);
    let c = 1.0 / (5.0 + 1e-6);
    assert_eq!(g.param(a).unwrap().data(), &[3.0 * c, 4.0 * c]);
    assert!(clip_grad_norm(&mut g, 0.0).is_err());
    assert!(clip_grad_norm(&mut g, f64::NAN).is_err());

    // An infinite gradient: error, gradients unchanged.
    let mut ps = ParamStore::<f64>::new();
    let a = ps
        .add(
            "a",
            Tensor::from_vec(vec![1.0, f64::INFINITY], &[2]).unwrap(),
        )
        .unwrap();
    let mut tape = Tape::new();
    let loss = tape_loss(&mut tape, &ps, a);
    let mut g = tape.backward(loss).unwrap();
    let before = g.param(a).unwrap().clone();
    assert!(matches!(
        clip_grad_norm(&mut g, 1.0),
        Err(Error::NonFinite { .. })
    ));
    assert_eq!(g.param(a).unwrap().data()[0], before.data()[0]);
    assert!(g.param(a).unwrap().data()[1].is_infinite());

    let mut ps = ParamStore::<f64>::new();
    let a = ps
        .add("a", Tensor::from_vec(vec![-3.0, 0.2], &[2]).unwrap())
        .unwrap();
    let mut tape = Tape::new();
    let loss = tape_loss(&mut tape, &ps, a);
    let mut g = tape.backward(loss).unwrap();
    clip_grad_value(&mut g, 1.0).unwrap();
    assert_eq!(g.param(a).unwrap().data(), &[-1.0, 0.2]);
    assert!(clip_grad_value(&mut g, -1.0).is_err());
}

/// `sum(a * a) / 2`: gradient `a`.
fn tape_loss(tape: &mut Tape<f64>, ps: &ParamStore<f64>, a: ParamId) -> recur::Var {
    let v = tape.param(ps, a).unwrap();
    let sq = tape.mul(v, v).unwrap();
    let s = tape.sum(sq).unwrap();
    tape.scale(s, 0.5).unwrap()
}

#[test]
fn schedules_validate_their_settings() {
    use recur::optim::{CosineAnnealingLr, LrSchedule, StepLr, WarmupCosine, WarmupLinear};
    assert!(StepLr::new(0.1, 0, 0.5).is_err());
    assert!(StepLr::new(f64::NAN, 3, 0.5).is_err());
    assert!(CosineAnnealingLr::new(0.1, 0, 0.0).is_err());
    assert!(WarmupLinear::new(0.1, 0.0, 1.0, 5).is_err());
    assert!(WarmupLinear::new(0.1, 0.5, 1.0, 0).is_err());
    assert!(WarmupCosine::new(0.1, 0.1, 10, 10, 0.0).is_err());
    // No warm-up: plain cosine from the first step.
    let s = WarmupCosine::new(0.1, 0.1, 0, 10, 0.0).unwrap();
    let c = CosineAnnealingLr::new(0.1, 10, 0.0).unwrap();
    for t in 0..12 {
        assert_eq!(s.lr_at(t), c.lr_at(t));
    }
    // Step decay far out does not overflow.
    assert_eq!(StepLr::new(0.1, 1, 0.5).unwrap().lr_at(usize::MAX), 0.0);
}
