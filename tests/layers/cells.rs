//! Recurrent cells: stepped by hand over a sequence, layer by layer, they reproduce a `Recurrent`
//! stack (outputs and every gradient, both directions, several layers); the tape-free step gives
//! the same numbers as the tape step; gradcheck of the step in f64; PyTorch cell names; shape
//! errors.

use crate::common;

use recur::diagnostics::{GradcheckOptions, gradcheck};
use recur::nn::{
    Activation, Cell, CellConfig, CellKind, CellState, ForwardOptions, GruCell, LstmCell,
    Recurrent, RecurrentCell, RecurrentConfig, RnnCell, StateTensors,
};
use recur::{Error, Float, ParamStore, Rng, Tape, Tensor, Var};

const KINDS: [CellKind; 4] = [
    CellKind::Lstm,
    CellKind::Gru,
    CellKind::Rnn(Activation::Tanh),
    CellKind::Rnn(Activation::Relu),
];

fn rand<T: Float>(rng: &mut Rng, dims: &[usize]) -> Tensor<T> {
    Tensor::from_fn(dims, |_| T::from_f64(rng.uniform_range(-1.0, 1.0))).unwrap()
}

/// Relative difference, max|a-b| / max(max|b|, 1e-30).
fn rel<T: Float>(a: &Tensor<T>, b: &Tensor<T>) -> f64 {
    let scale = b
        .data()
        .iter()
        .fold(1e-30f64, |m, x| m.max(x.to_f64().abs()));
    a.max_abs_diff(b).unwrap() / scale
}

struct Inputs<T: Float> {
    x: Tensor<T>,
    h0: Tensor<T>,
    c0: Tensor<T>,
    ry: Tensor<T>,
    rh: Tensor<T>,
    rc: Tensor<T>,
}

fn inputs<T: Float>(
    seed: u64,
    t: usize,
    b: usize,
    i: usize,
    h: usize,
    d: usize,
    l: usize,
) -> Inputs<T> {
    let mut rng = Rng::new(seed);
    Inputs {
        x: rand(&mut rng, &[t, b, i]),
        h0: rand(&mut rng, &[d * l, b, h]),
        c0: rand(&mut rng, &[d * l, b, h]),
        ry: rand(&mut rng, &[t, b, d * h]),
        rh: rand(&mut rng, &[d * l, b, h]),
        rc: rand(&mut rng, &[d * l, b, h]),
    }
}

/// sum(y * ry) + sum(h_n * rh) (+ sum(c_n * rc)).
fn weighted_loss<T: Float>(
    tape: &mut Tape<T>,
    d: &Inputs<T>,
    y: Var,
    h_n: Var,
    c_n: Option<Var>,
) -> Var {
    let mut terms = vec![(y, d.ry.clone()), (h_n, d.rh.clone())];
    if let Some(c) = c_n {
        terms.push((c, d.rc.clone()));
    }
    let mut total = None;
    for (v, r) in terms {
        let r = tape.constant(r);
        let m = tape.mul(v, r).unwrap();
        let s = tape.sum(m).unwrap();
        total = Some(match total {
            None => s,
            Some(t) => tape.add(t, s).unwrap(),
        });
    }
    total.unwrap()
}

/// The layer's outputs and gradients, named, from the fused layer (`by_cells` false) or from
/// its cells stepped by hand.
fn outputs<T: Float>(
    layer: &Recurrent,
    ps: &ParamStore<T>,
    d: &Inputs<T>,
    by_cells: bool,
) -> Vec<(String, Tensor<T>)> {
    let lstm = layer.kind() == CellKind::Lstm;
    let mut tape = Tape::new();
    let x = tape.input(d.x.clone());
    let h0 = tape.input(d.h0.clone());
    let c0 = lstm.then(|| tape.input(d.c0.clone()));
    let (y, h_n, c_n) = if by_cells {
        let t_len = d.x.dims()[0];
        let dirs = layer.config().directions();
        let (mut input, mut hs, mut cs) = (x, Vec::new(), Vec::new());
        for l in 0..layer.config().num_layers {
            let mut ys = Vec::new();
            for dir in 0..dirs {
                let cell = Cell::from_layer(layer, l, dir).unwrap();
                let k = l * dirs + dir;
                let mut s = CellState {
                    h: tape.select(h0, k).unwrap(),
                    c: c0.map(|c| tape.select(c, k).unwrap()),
                };
                let mut out = vec![None; t_len];
                for step in 0..t_len {
                    let t = if dir == 1 { t_len - 1 - step } else { step };
                    let x_t = tape.select(input, t).unwrap();
                    s = cell.step(&mut tape, ps, x_t, s).unwrap();
                    out[t] = Some(s.h);
                }
                let out: Vec<Var> = out.into_iter().map(Option::unwrap).collect();
                ys.push(tape.stack(&out).unwrap());
                hs.push(s.h);
                cs.extend(s.c);
            }
            input = if dirs == 1 {
                ys[0]
            } else {
                tape.concat(&ys).unwrap()
            };
        }
        let h_n = tape.stack(&hs).unwrap();
        let c_n = lstm.then(|| tape.stack(&cs).unwrap());
        (input, h_n, c_n)
    } else {
        let o = layer
            .forward(
                &mut tape,
                ps,
                x,
                ForwardOptions {
                    h0: Some(h0),
                    c0,
                    ..Default::default()
                },
            )
            .unwrap();
        (o.y, o.h_n, o.c_n)
    };
    let mut res = vec![
        ("y".to_string(), tape.value(y).unwrap().clone()),
        ("h_n".to_string(), tape.value(h_n).unwrap().clone()),
    ];
    if let Some(c) = c_n {
        res.push(("c_n".into(), tape.value(c).unwrap().clone()));
    }
    let l = weighted_loss(&mut tape, d, y, h_n, c_n);
    let g = tape.backward(l).unwrap();
    common::push_grads(&mut res, &g, ps, x, h0, c0);
    res
}

fn cells_match_layer<T: Float>(tol: f64) {
    let mut rng = Rng::new(42);
    for kind in KINDS {
        let cases = [
            (true, false, 1, 1),
            (true, true, 7, 1),
            (false, false, 5, 1),
            (true, true, 4, 2),
            (false, false, 3, 3),
        ];
        for (bias, bidir, t_len, layers) in cases {
            let (b, i, h) = (1 + rng.below(3), 1 + rng.below(4), 1 + rng.below(9));
            let cfg = RecurrentConfig::new(i, h)
                .bias(bias)
                .bidirectional(bidir)
                .num_layers(layers);
            let mut ps = ParamStore::<T>::new();
            let layer = Recurrent::new(&mut ps, "rnn.", kind, cfg.clone(), &mut rng).unwrap();
            let d = inputs::<T>(rng.next_u64(), t_len, b, i, h, cfg.directions(), layers);
            let want = outputs(&layer, &ps, &d, false);
            let got = outputs(&layer, &ps, &d, true);
            assert_eq!(want.len(), got.len());
            for ((n, a), (_, b)) in got.iter().zip(&want) {
                assert_eq!(a.dims(), b.dims(), "{kind:?} {n}");
                let e = rel(a, b);
                assert!(
                    e < tol,
                    "{kind:?} bias={bias} bidir={bidir} {n}: rel err {e:e}"
                );
            }
        }
    }
}

#[test]
fn cells_stepped_by_hand_match_the_layer_f64() {
    cells_match_layer::<f64>(1e-12);
}

#[test]
fn cells_stepped_by_hand_match_the_layer_f32() {
    cells_match_layer::<f32>(1e-5);
}

/// A cell registered on its own under PyTorch's cell names, given the layer's weights, gives the
/// layer's outputs; the tape-free step gives the tape step's numbers.
#[test]
fn standalone_cells_and_inference_step_match_layer() {
    let mut rng = Rng::new(9);
    // Batches of 3 and 7 take the two paths of the tape-free product (rows, blocked GEMM).
    for (kind, b) in KINDS.iter().flat_map(|&k| [(k, 3), (k, 7)]) {
        let (t_len, i, h) = (6, 4, 5);
        let mut lps = ParamStore::<f64>::new();
        let cfg = RecurrentConfig::new(i, h);
        let layer = Recurrent::new(&mut lps, "", kind, cfg, &mut rng).unwrap();
        let mut ps = ParamStore::<f64>::new();
        let cc = CellConfig::new(i, h);
        let cell: Cell = match kind {
            CellKind::Lstm => Cell::clone(&LstmCell::new(&mut ps, "c.", cc, &mut rng).unwrap()),
            CellKind::Gru => Cell::clone(&GruCell::new(&mut ps, "c.", cc, &mut rng).unwrap()),
            CellKind::Rnn(a) => Cell::clone(&RnnCell::new(&mut ps, "c.", cc, a, &mut rng).unwrap()),
        };
        assert_eq!(cell.kind(), kind);
        let names: Vec<&str> = ps.iter().map(|(_, n, _)| n).collect();
        assert_eq!(
            names,
            ["c.weight_ih", "c.weight_hh", "c.bias_ih", "c.bias_hh"]
        );
        let g = kind.gates();
        assert_eq!(ps.get(cell.params().w_ih).dims(), &[g * h, i]);
        assert_eq!(ps.get(cell.params().w_hh).dims(), &[g * h, h]);
        let bound = 1.0 / (h as f64).sqrt();
        assert!(
            ps.iter()
                .all(|(_, _, t)| t.data().iter().all(|x| x.abs() <= bound))
        );
        for (id, name, _) in lps.iter() {
            let cell_name = format!("c.{}", name.trim_end_matches("_l0"));
            let cid = ps.find(&cell_name).unwrap();
            *ps.get_mut(cid) = lps.get(id).clone();
        }

        let mut drng = Rng::new(3);
        let x = rand::<f64>(&mut drng, &[t_len, b, i]);
        let mut tape = Tape::new();
        let xv = tape.constant(x.clone());
        let out = layer
            .forward(&mut tape, &lps, xv, ForwardOptions::default())
            .unwrap();
        let y = tape.value(out.y).unwrap().clone();

        let mut st = cell.zero_state::<f64>(b).unwrap();
        let mut s = cell.state_input(&mut tape, &st);
        for t in 0..t_len {
            let xt = Tensor::from_slice(&x.data()[t * b * i..(t + 1) * b * i], &[b, i]).unwrap();
            let xv = tape.constant(xt.clone());
            s = cell.step(&mut tape, &ps, xv, s).unwrap();
            st = cell.step_inference(&ps, &xt, &st).unwrap();
            let want = Tensor::from_slice(&y.data()[t * b * h..(t + 1) * b * h], &[b, h]).unwrap();
            assert!(
                rel(tape.value(s.h).unwrap(), &want) < 1e-12,
                "{kind:?} t={t}"
            );
            assert!(rel(&st.h, &want) < 1e-12, "{kind:?} t={t} (inference)");
            if let (Some(c), Some(ci)) = (s.c, &st.c) {
                assert!(rel(ci, tape.value(c).unwrap()) < 1e-12, "{kind:?} c t={t}");
            }
        }
    }
}

#[test]
fn f32_inference_step_matches_f64() {
    let mut rng = Rng::new(5);
    for kind in KINDS {
        let mut ps = ParamStore::<f64>::new();
        let cell = Cell::new(&mut ps, "", kind, CellConfig::new(3, 6), &mut rng).unwrap();
        let ps32 = {
            let mut p = ParamStore::<f32>::new();
            for (_, n, t) in ps.iter() {
                p.add(n, t.cast()).unwrap();
            }
            p
        };
        let mut s = StateTensors {
            h: rand::<f64>(&mut rng, &[2, 6]),
            c: kind.has_cell_state().then(|| rand(&mut rng, &[2, 6])),
        };
        let mut s32 = StateTensors {
            h: s.h.cast::<f32>(),
            c: s.c.as_ref().map(Tensor::cast),
        };
        for _ in 0..20 {
            let x = rand::<f64>(&mut rng, &[2, 3]);
            s = cell.step_inference(&ps, &x, &s).unwrap();
            s32 = cell.step_inference(&ps32, &x.cast(), &s32).unwrap();
        }
        assert!(rel(&s32.h.cast::<f64>(), &s.h) < 1e-5, "{kind:?}");
    }
}

#[test]
fn cell_step_gradcheck() {
    let mut rng = Rng::new(17);
    for kind in KINDS {
        for bias in [true, false] {
            let (b, i, h) = (2, 3, 4);
            let mut ps = ParamStore::<f64>::new();
            let cell = Cell::new(
                &mut ps,
                "",
                kind,
                CellConfig::new(i, h).bias(bias),
                &mut rng,
            )
            .unwrap();
            let lstm = kind.has_cell_state();
            let mut xs = vec![
                rand::<f64>(&mut rng, &[b, i]),
                rand(&mut rng, &[b, i]),
                rand(&mut rng, &[b, h]),
            ];
            if lstm {
                xs.push(rand(&mut rng, &[b, h]));
            }
            let report = gradcheck(&mut ps, &xs, GradcheckOptions::default(), |t, ps, v| {
                let mut s = CellState {
                    h: v[2],
                    c: lstm.then(|| v[3]),
                };
                s = cell.step(t, ps, v[0], s)?;
                s = cell.step(t, ps, v[1], s)?;
                match s.c {
                    Some(c) => t.concat(&[s.h, c]),
                    None => Ok(s.h),
                }
            })
            .unwrap();
            assert!(report.passed(), "{kind:?} bias={bias}: {report:#?}");
            let n_params: usize = ps.iter().map(|(_, _, t)| t.numel()).sum();
            let n_inputs: usize = xs.iter().map(Tensor::numel).sum();
            assert_eq!(report.checked, n_params + n_inputs);
        }
    }
}

#[test]
fn cell_shape_errors() {
    let mut ps = ParamStore::<f64>::new();
    let mut rng = Rng::new(0);
    let lstm = LstmCell::new(&mut ps, "l.", CellConfig::new(3, 4), &mut rng).unwrap();
    let gru = GruCell::new(&mut ps, "g.", CellConfig::new(3, 4), &mut rng).unwrap();
    let mut tape = Tape::<f64>::new();
    let z = |tape: &mut Tape<f64>, d: &[usize]| tape.constant(Tensor::zeros(d).unwrap());
    let (x, h, c) = (
        z(&mut tape, &[2, 3]),
        z(&mut tape, &[2, 4]),
        z(&mut tape, &[2, 4]),
    );
    let bad_x = z(&mut tape, &[2, 5]);
    let bad_h = z(&mut tape, &[3, 4]);
    let x3 = z(&mut tape, &[1, 2, 3]);
    let ok = CellState { h, c: Some(c) };
    assert!(lstm.step(&mut tape, &ps, x, ok).is_ok());
    let e = lstm.step(&mut tape, &ps, bad_x, ok).unwrap_err();
    assert!(e.to_string().contains("input_size is 3"), "{e}");
    assert!(lstm.step(&mut tape, &ps, x3, ok).is_err());
    let e = lstm
        .step(
            &mut tape,
            &ps,
            x,
            CellState {
                h: bad_h,
                c: Some(c),
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let e = lstm
        .step(&mut tape, &ps, x, CellState { h, c: None })
        .unwrap_err();
    assert!(e.to_string().contains("cell state"), "{e}");
    let e = gru.step(&mut tape, &ps, x, ok).unwrap_err();
    assert!(e.to_string().contains("no cell state"), "{e}");
    assert!(
        gru.step(&mut tape, &ps, x, CellState { h, c: None })
            .is_ok()
    );

    let s = lstm.zero_state::<f64>(2).unwrap();
    assert!(
        lstm.step_inference(&ps, &Tensor::zeros(&[2, 5]).unwrap(), &s)
            .is_err()
    );
    assert!(
        gru.step_inference(&ps, &Tensor::zeros(&[2, 3]).unwrap(), &s)
            .is_err()
    );
    // Parameters of the wrong shape in the store: an error, not a panic.
    let mut bad = ps.clone();
    *bad.get_mut(lstm.params().w_hh) = Tensor::zeros(&[16, 5]).unwrap();
    let e = lstm
        .step_inference(&bad, &Tensor::zeros(&[2, 3]).unwrap(), &s)
        .unwrap_err();
    assert!(e.to_string().contains("l.weight_hh"), "{e}");
    assert!(lstm.step(&mut tape, &bad, x, ok).is_err());

    // Names taken, zero sizes, a layer that does not exist.
    let n = ps.len();
    assert!(LstmCell::new(&mut ps, "l.", CellConfig::new(3, 4), &mut rng).is_err());
    assert!(GruCell::new(&mut ps, "z.", CellConfig::new(0, 4), &mut rng).is_err());
    assert_eq!(ps.len(), n);
    let layer = Recurrent::new(
        &mut ps,
        "r.",
        CellKind::Gru,
        RecurrentConfig::new(3, 4).num_layers(2),
        &mut rng,
    )
    .unwrap();
    assert!(Cell::from_layer(&layer, 2, 0).is_err());
    assert!(Cell::from_layer(&layer, 0, 1).is_err());
    assert_eq!(Cell::from_layer(&layer, 1, 0).unwrap().input_size(), 4);
}
