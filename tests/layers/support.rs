//! What the tests of the recurrent layers share: a case (cell, configuration, shape, lengths,
//! mode), its random inputs, the loss `sum(y * ry) + sum(h_n * rh) (+ sum(c_n * rc))`, one
//! implementation's outputs and gradients, the fused-against-reference comparison, gradcheck
//! in f64, and runs on pools of a given number of threads.

use recur::diagnostics::{GradcheckOptions, GradcheckReport, gradcheck};
use recur::nn::{Activation, CellKind, ForwardOptions, Implementation, Recurrent, RecurrentConfig};
use recur::{Float, ParamStore, Rng, Tape, Tensor, Var};

/// Every cell kind.
pub const KINDS: [CellKind; 4] = [
    CellKind::Lstm,
    CellKind::Gru,
    CellKind::Rnn(Activation::Tanh),
    CellKind::Rnn(Activation::Relu),
];

/// A random layer configuration: `min`..6 input features and `min`..12 hidden units (`min` is
/// 1, or 2 where a single unit makes a gradient pure rounding noise), 1 or 2 layers, one or
/// both directions, biases most of the time, batch-first a third of the time.
pub fn random_config(rng: &mut Rng, min: usize) -> RecurrentConfig {
    RecurrentConfig::new(min + rng.below(6 - min), min + rng.below(12 - min))
        .num_layers(1 + rng.below(2))
        .bidirectional(rng.below(2) == 1)
        .bias(rng.below(4) != 0)
        .batch_first(rng.below(3) == 0)
}

/// Ragged sequence lengths (1..=t) for a batch of `b`, half of the time; else none.
pub fn random_lengths(rng: &mut Rng, t: usize, b: usize) -> Option<Vec<usize>> {
    (rng.below(2) == 1).then(|| (0..b).map(|_| 1 + rng.below(t)).collect())
}

/// A random case of `kind`: 1..=6 steps, a batch of 1..=4, [`random_config`] with `min`,
/// [`random_lengths`], `h0` given half of the time, evaluation mode; parameters and inputs
/// from `seed`.
pub fn random_case(rng: &mut Rng, kind: CellKind, seed: u64, min: usize) -> Case {
    let t = 1 + rng.below(6);
    let b = 1 + rng.below(4);
    let cfg = random_config(rng, min);
    let lengths = random_lengths(rng, t, b);
    Case {
        kind,
        cfg,
        t,
        b,
        lengths,
        with_h0: rng.below(2) == 1,
        train: None,
        seed,
    }
}

/// One layer stack and its inputs' shape.
#[derive(Clone, Debug)]
pub struct Case {
    pub kind: CellKind,
    pub cfg: RecurrentConfig,
    pub t: usize,
    pub b: usize,
    pub lengths: Option<Vec<usize>>,
    /// Pass `h0` (and the LSTM's `c0`); zeros inside the layer when false.
    pub with_h0: bool,
    /// Training mode, with the generator seeded by this (every evaluation of the loss draws
    /// the same masks); evaluation when `None`.
    pub train: Option<u64>,
    pub seed: u64,
}

/// Inputs of one case: x, h0, c0 and the loss weights ry, rh, rc.
pub struct Data<T> {
    pub x: Tensor<T>,
    pub h0: Tensor<T>,
    pub c0: Tensor<T>,
    pub ry: Tensor<T>,
    pub rh: Tensor<T>,
    pub rc: Tensor<T>,
}

/// The random inputs of a case, from its seed.
pub fn data<T: Float>(c: &Case) -> Data<T> {
    let mut rng = Rng::new(c.seed ^ 0xdead);
    let mut r = |dims: &[usize]| {
        Tensor::from_fn(dims, |_| T::from_f64(rng.uniform_range(-1.0, 1.0))).unwrap()
    };
    // The hidden state and the outputs have P features with a projection; the cell state H.
    let (d, l, h, o) = (
        c.cfg.directions(),
        c.cfg.num_layers,
        c.cfg.hidden_size,
        c.cfg.output_size(),
    );
    let (xd, yd) = if c.cfg.batch_first {
        ([c.b, c.t, c.cfg.input_size], [c.b, c.t, d * o])
    } else {
        ([c.t, c.b, c.cfg.input_size], [c.t, c.b, d * o])
    };
    Data {
        x: r(&xd),
        h0: r(&[d * l, c.b, o]),
        c0: r(&[d * l, c.b, h]),
        ry: r(&yd),
        rh: r(&[d * l, c.b, o]),
        rc: r(&[d * l, c.b, h]),
    }
}

/// loss = sum(y * ry) + sum(h_n * rh) (+ sum(c_n * rc)), and the outputs `y`; in training the
/// generator is seeded afresh, so every evaluation draws the same masks.
pub fn loss<T: Float>(
    tape: &mut Tape<T>,
    (layer, ps): (&Recurrent, &ParamStore<T>),
    c: &Case,
    d: &Data<T>,
    (x, h0, c0): (Var, Option<Var>, Option<Var>),
    imp: Implementation,
) -> recur::Result<(Var, Var)> {
    let mut rng = c.train.map(Rng::new);
    let opts = ForwardOptions {
        h0,
        c0,
        lengths: c.lengths.as_deref(),
        dropout_rng: rng.as_mut(),
        implementation: imp,
    };
    let out = layer.forward(tape, ps, x, opts)?;
    let mut terms = vec![(out.y, &d.ry), (out.h_n, &d.rh)];
    if let Some(cn) = out.c_n {
        terms.push((cn, &d.rc));
    }
    let mut l = None;
    for (v, w) in terms {
        let w = tape.constant(w.clone());
        let m = tape.mul(v, w)?;
        let s = tape.sum(m)?;
        l = Some(match l {
            None => s,
            Some(l) => tape.add(l, s)?,
        });
    }
    Ok((l.expect("y is always a term"), out.y))
}

/// A layer of the case's configuration, its parameters drawn from the case's seed; the layer
/// normalization's gains and biases (`ln_*`, which start at 1 and 0) are moved off their
/// initial values, so that the tests see them act.
pub fn layer<T: Float>(c: &Case) -> (Recurrent, ParamStore<T>) {
    let mut ps = ParamStore::<T>::new();
    let layer = Recurrent::new(&mut ps, "", c.kind, c.cfg.clone(), &mut Rng::new(c.seed)).unwrap();
    let mut rng = Rng::new(c.seed ^ 0x1a7e);
    let ln: Vec<_> = ps
        .iter()
        .filter(|(_, name, _)| name.starts_with("ln_"))
        .map(|(id, _, _)| id)
        .collect();
    for id in ln {
        for v in ps.get_mut(id).data_mut() {
            *v += T::from_f64(rng.uniform_range(-0.5, 0.5));
        }
    }
    (layer, ps)
}

/// Forward and backward of one implementation: the loss, the outputs `y` and every gradient
/// (`grad.<parameter>`, `grad.x`, `grad.h0`, `grad.c0`).
pub fn run<T: Float>(c: &Case, imp: Implementation) -> Vec<(String, Tensor<T>)> {
    run_on(c, imp, Tape::new())
}

/// [`run`] on `tape` (set up beforehand, e.g. with a precision).
pub fn run_on<T: Float>(
    c: &Case,
    imp: Implementation,
    mut tape: Tape<T>,
) -> Vec<(String, Tensor<T>)> {
    let (layer, ps) = layer::<T>(c);
    let d = data::<T>(c);
    let x = tape.input(d.x.clone());
    let h0 = c.with_h0.then(|| tape.input(d.h0.clone()));
    let c0 = (c.with_h0 && c.kind == CellKind::Lstm).then(|| tape.input(d.c0.clone()));
    let (l, y) = loss(&mut tape, (&layer, &ps), c, &d, (x, h0, c0), imp).unwrap();
    let mut out = vec![
        ("loss".to_string(), tape.value(l).unwrap().clone()),
        ("y".to_string(), tape.value(y).unwrap().clone()),
    ];
    let g = tape.backward(l).unwrap();
    for (id, name, _) in ps.iter() {
        out.push((
            format!("grad.{name}"),
            g.param(id).expect("every parameter is used").clone(),
        ));
    }
    let inputs = [("x", Some(x)), ("h0", h0), ("c0", c0)];
    for (name, v) in inputs {
        if let Some(v) = v {
            out.push((format!("grad.{name}"), g.wrt(v).unwrap().clone()));
        }
    }
    out
}

/// The largest difference between `a` and `b`, relative to the largest magnitude in `b` (at
/// least 1e-3).
pub fn max_rel<T: Float>(a: &Tensor<T>, b: &Tensor<T>) -> f64 {
    let scale = b
        .data()
        .iter()
        .map(|x| x.to_f64().abs())
        .fold(1e-3, f64::max);
    a.max_abs_diff(b).unwrap() / scale
}

/// The fused layers against the reference: the loss, the outputs and every gradient within
/// `tol` relative.
pub fn compare<T: Float>(c: &Case, tol: f64) {
    let fused = run::<T>(c, Implementation::Fused);
    let reference = run::<T>(c, Implementation::Reference);
    assert_eq!(fused.len(), reference.len());
    for ((n, a), (m, b)) in fused.iter().zip(&reference) {
        assert_eq!(n, m);
        let e = max_rel(a, b);
        assert!(e < tol, "{n}: relative error {e:e} in {c:?} ({})", T::DTYPE);
    }
}

/// Gradcheck in f64 of the case's loss with respect to every parameter, `x`, `h0` and (LSTM)
/// `c0`, run by `imp`.
pub fn gradcheck_case(c: &Case, imp: Implementation) -> GradcheckReport {
    let (layer, mut ps) = layer::<f64>(c);
    let d = data::<f64>(c);
    let mut inputs = vec![d.x.clone(), d.h0.clone()];
    if c.kind == CellKind::Lstm {
        inputs.push(d.c0.clone());
    }
    gradcheck(
        &mut ps,
        &inputs,
        GradcheckOptions::default(),
        |tape, ps, xs| {
            let vars = (xs[0], Some(xs[1]), xs.get(2).copied());
            Ok(loss(tape, (&layer, ps), c, &d, vars, imp)?.0)
        },
    )
    .unwrap()
}

/// Runs `f` on a pool of `threads` threads.
pub fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// The fused case's outputs and gradients are bit-identical on 1, 2 and 3 threads.
pub fn assert_bit_identical<T: Float>(c: &Case, to_bits: fn(T) -> u64) {
    let one = in_pool(1, || run::<T>(c, Implementation::Fused));
    let two = in_pool(2, || run::<T>(c, Implementation::Fused));
    let three = in_pool(3, || run::<T>(c, Implementation::Fused));
    for (((name, a), (_, b)), (_, d)) in one.iter().zip(&two).zip(&three) {
        for (k, ((&p, &q), &r)) in a.data().iter().zip(b.data()).zip(d.data()).enumerate() {
            assert_eq!(
                (to_bits(p), to_bits(p)),
                (to_bits(q), to_bits(r)),
                "{:?} {name}[{k}] ({}): {p} with 1 thread, {q} with 2, {r} with 3",
                c.kind,
                T::DTYPE
            );
        }
    }
}
