//! Optimizers, schedules and clipping against PyTorch (fixtures from
//! `tests/fixtures/gen_optim.py`, float64): the recorded gradients are replayed through recur's
//! optimizers and the parameters must match PyTorch's after every step.

use std::path::{Path, PathBuf};

use recur::io::Archive;
use recur::optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, CosineAnnealingLr, LrSchedule, Optimizer,
    RmsProp, RmsPropConfig, Sgd, SgdConfig, StepLr, WarmupCosine, WarmupLinear, clip_grad_norm,
    clip_grad_value,
};
use recur::{ParamId, ParamStore, Tape, Tensor};
use serde_json::Value;

const NAMES: [&str; 3] = ["a", "b", "c"];

fn fixture(name: &str) -> Archive {
    let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/optim")
        .join(format!("{name}.safetensors"));
    Archive::read(&p).unwrap_or_else(|e| panic!("{e}"))
}

/// Sets each listed field of the config `c` to the fixture config's value under the same name,
/// read with `get` (`as_f64` or `as_bool`), and leaves the fields the fixture omits at their
/// defaults.
macro_rules! override_fields {
    ($c:ident, $get:ident: $($field:ident),+ $(,)?) => {
        $($c.$field = $get(stringify!($field)).unwrap_or($c.$field);)+
    };
}

fn build(cfg: &Value) -> Box<dyn Optimizer<f64>> {
    let f = |k: &str| cfg.get(k).and_then(Value::as_f64);
    let b = |k: &str| cfg.get(k).and_then(Value::as_bool);
    match cfg["optimizer"].as_str().unwrap() {
        "sgd" => {
            let mut c = SgdConfig::default();
            override_fields!(c, f: lr, momentum, dampening, weight_decay);
            override_fields!(c, b: nesterov);
            Box::new(Sgd::new(c).unwrap())
        }
        name @ ("adam" | "adamw") => {
            let mut c = if name == "adam" {
                AdamConfig::default()
            } else {
                AdamConfig::adamw()
            };
            override_fields!(c, f: lr, beta1, beta2, eps, weight_decay);
            override_fields!(c, b: amsgrad);
            if name == "adam" {
                Box::new(Adam::new(c).unwrap())
            } else {
                Box::new(AdamW::new(c).unwrap())
            }
        }
        "rmsprop" => {
            let mut c = RmsPropConfig::default();
            override_fields!(c, f: lr, alpha, eps, weight_decay, momentum);
            override_fields!(c, b: centered);
            Box::new(RmsProp::new(c).unwrap())
        }
        "adagrad" => {
            let mut c = AdagradConfig::default();
            override_fields!(c, f: lr, lr_decay, weight_decay, initial_accumulator_value, eps);
            Box::new(Adagrad::new(c).unwrap())
        }
        other => panic!("unknown optimizer {other}"),
    }
}

fn assert_close(what: &str, got: &Tensor<f64>, want: &Tensor<f64>, rtol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    for (i, (&g, &w)) in got.data().iter().zip(want.data()).enumerate() {
        assert!(
            (g - w).abs() <= rtol * w.abs() + 1e-12,
            "{what}[{i}]: recur {g:e} vs PyTorch {w:e}"
        );
    }
}

/// Records `loss = sum_p sum(p * G_p)` so that the gradient of each listed parameter is exactly
/// the recorded `G_p`.
fn replay_grads<'t>(
    tape: &'t mut Tape<f64>,
    ps: &ParamStore<f64>,
    grads: &[(ParamId, Tensor<f64>)],
) -> recur::Grads<'t, f64> {
    tape.clear();
    let mut total = None;
    for (id, g) in grads {
        let p = tape.param(ps, *id).unwrap();
        let c = tape.constant(g.clone());
        let prod = tape.mul(p, c).unwrap();
        let s = tape.sum(prod).unwrap();
        total = Some(match total {
            None => s,
            Some(t) => tape.add(t, s).unwrap(),
        });
    }
    tape.backward(total.unwrap()).unwrap()
}

fn run_case(name: &str) {
    let ar = fixture(name);
    let cfg: Value = serde_json::from_str(ar.meta("config").unwrap()).unwrap();
    let steps: usize = ar.meta("steps").unwrap().parse().unwrap();
    let mut ps = ParamStore::<f64>::new();
    let ids: Vec<ParamId> = NAMES
        .iter()
        .map(|n| ps.add(*n, ar.tensor(&format!("p0.{n}")).unwrap()).unwrap())
        .collect();
    let mut opt = build(&cfg);
    let mut tape = Tape::new();
    let mut skipped = 0;
    for k in 1..=steps {
        let grads: Vec<(ParamId, Tensor<f64>)> = NAMES
            .iter()
            .zip(&ids)
            .filter_map(|(n, &id)| Some((id, ar.tensor(&format!("g{k}.{n}")).ok()?)))
            .collect();
        skipped += NAMES.len() - grads.len();
        let g = replay_grads(&mut tape, &ps, &grads);
        opt.step(&mut ps, &g).unwrap();
        for (n, &id) in NAMES.iter().zip(&ids) {
            let want: Tensor<f64> = ar.tensor(&format!("p{k}.{n}")).unwrap();
            assert_close(
                &format!("{name} step {k} param {n}"),
                ps.get(id),
                &want,
                1e-6,
            );
        }
    }
    assert!(
        skipped > 0,
        "the fixture should include steps without a gradient"
    );
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run_case(stringify!($name)); })*
    };
}

cases!(
    sgd_plain,
    sgd_momentum,
    sgd_dampening_wd,
    sgd_nesterov_wd,
    adam_default,
    adam_lr_wd,
    adam_amsgrad_betas,
    adamw_default,
    adamw_amsgrad_wd,
    rmsprop_default,
    rmsprop_momentum_alpha,
    rmsprop_centered_momentum_wd,
    rmsprop_centered,
    adagrad_default,
    adagrad_options,
);

fn check_schedule(key: &str, s: &dyn LrSchedule) {
    let ar = fixture("schedules");
    let want: Tensor<f64> = ar.tensor(key).unwrap();
    for (t, &w) in want.data().iter().enumerate() {
        let g = s.lr_at(t);
        assert!(
            (g - w).abs() <= 1e-9 * w.abs() + 1e-12,
            "{key} step {t}: recur {g} vs PyTorch {w}"
        );
    }
}

#[test]
fn schedules_match_pytorch() {
    check_schedule("step_lr", &StepLr::new(0.1, 3, 0.5).unwrap());
    let cos = CosineAnnealingLr::new(0.1, 10, 0.001).unwrap();
    check_schedule("cosine", &cos);
    check_schedule("cosine_closed_form", &cos);
    check_schedule("linear", &WarmupLinear::new(0.1, 0.25, 1.0, 4).unwrap());
    check_schedule(
        "warmup_cosine",
        &WarmupCosine::new(1.0, 0.1, 4, 14, 0.0).unwrap(),
    );
}

#[test]
fn clipping_matches_pytorch() {
    let ar = fixture("clip");
    let mut ps = ParamStore::<f64>::new();
    let ids: Vec<ParamId> = NAMES
        .iter()
        .map(|n| {
            ps.add(
                *n,
                Tensor::zeros(ar.get(&format!("grad.{n}")).unwrap().dims()).unwrap(),
            )
        })
        .collect::<Result<_, _>>()
        .unwrap();
    let grads: Vec<(ParamId, Tensor<f64>)> = NAMES
        .iter()
        .zip(&ids)
        .map(|(n, &id)| (id, ar.tensor(&format!("grad.{n}")).unwrap()))
        .collect();
    let mut tape = Tape::new();
    for (label, max_norm) in [("clip1", 1.0), ("clip100", 100.0)] {
        let mut g = replay_grads(&mut tape, &ps, &grads);
        let norm = clip_grad_norm(&mut g, max_norm).unwrap();
        let want_norm = ar.tensor::<f64>(&format!("{label}.norm")).unwrap().data()[0];
        assert!(
            (norm - want_norm).abs() <= 1e-12 * want_norm,
            "{norm} vs {want_norm}"
        );
        for (n, &id) in NAMES.iter().zip(&ids) {
            let want = ar.tensor(&format!("{label}.{n}")).unwrap();
            assert_close(&format!("{label} {n}"), g.param(id).unwrap(), &want, 1e-12);
        }
    }
    let mut g = replay_grads(&mut tape, &ps, &grads);
    clip_grad_value(&mut g, 0.5).unwrap();
    for (n, &id) in NAMES.iter().zip(&ids) {
        let want = ar.tensor(&format!("value0.5.{n}")).unwrap();
        assert_close(&format!("clip value {n}"), g.param(id).unwrap(), &want, 0.0);
    }
}
