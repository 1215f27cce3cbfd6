//! `Linear` and `Embedding`: PyTorch names and shapes, initialisation statistics, forward values
//! against a hand-written loop, gradcheck in f64, and shape errors.

use recur::diagnostics::{GradcheckOptions, gradcheck};
use recur::nn::{Embedding, Linear};
use recur::{Error, ParamStore, Rng, Tape, Tensor};

#[test]
fn linear_names_shapes_and_init_bounds() {
    let mut ps = ParamStore::<f64>::new();
    let fc = Linear::new(&mut ps, "head.", 16, 300, true, &mut Rng::new(3)).unwrap();
    assert_eq!(ps.name(fc.weight()), "head.weight");
    assert_eq!(ps.name(fc.bias().unwrap()), "head.bias");
    assert_eq!(ps.get(fc.weight()).dims(), &[300, 16]);
    assert_eq!(ps.get(fc.bias().unwrap()).dims(), &[300]);
    let bound = 1.0 / 16f64.sqrt();
    let w = ps.get(fc.weight()).data();
    assert!(w.iter().all(|x| x.abs() <= bound));
    // 4800 draws from U(-b, b): the extremes come close to the bound and the mean is near 0.
    let max = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(max > 0.95 * bound, "{max}");
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    assert!(mean.abs() < 0.02, "{mean}");

    let nb = Linear::new(&mut ps, "nb.", 2, 3, false, &mut Rng::new(0)).unwrap();
    assert!(nb.bias().is_none() && ps.find("nb.bias").is_none());
    assert_eq!(nb.param_ids().len(), 1);
    // A name clash is an error and registers nothing.
    let before = ps.len();
    assert!(Linear::new(&mut ps, "head.", 2, 2, true, &mut Rng::new(0)).is_err());
    assert_eq!(ps.len(), before);
    assert!(Linear::new(&mut ps, "z.", 0, 2, true, &mut Rng::new(0)).is_err());
}

#[test]
fn linear_forward_matches_loop_for_2d_and_3d() {
    let mut ps = ParamStore::<f64>::new();
    let (i, o) = (3, 4);
    let fc = Linear::new(&mut ps, "", i, o, true, &mut Rng::new(7)).unwrap();
    let w = ps.get(fc.weight()).clone();
    let b = ps.get(fc.bias().unwrap()).clone();
    let mut rng = Rng::new(1);
    let x = Tensor::from_fn(&[2, 5, i], |_| rng.uniform_range(-1.0, 1.0)).unwrap();
    let mut tape = Tape::new();
    let xv = tape.constant(x.clone());
    let y = fc.forward(&mut tape, &ps, xv).unwrap();
    let y = tape.value(y).unwrap().clone();
    assert_eq!(y.dims(), &[2, 5, o]);
    for r in 0..10 {
        for k in 0..o {
            let mut want = b.data()[k];
            for j in 0..i {
                want += x.data()[r * i + j] * w.data()[k * i + j];
            }
            assert!((y.data()[r * o + k] - want).abs() < 1e-12);
        }
    }
    // 2-D input and the tape-free path give the same numbers.
    let x2 = x.clone().reshape(&[10, i]).unwrap();
    let xv2 = tape.constant(x2.clone());
    let y2 = fc.forward(&mut tape, &ps, xv2).unwrap();
    assert_eq!(tape.value(y2).unwrap().dims(), &[10, o]);
    assert_eq!(tape.value(y2).unwrap().data(), y.data());
    let y3 = fc.apply(&ps, &x).unwrap();
    assert_eq!(y3.dims(), &[2, 5, o]);
    assert!(y3.max_abs_diff(&y).unwrap() < 1e-12);
}

/// As in PyTorch, any number of leading axes: one row `[in]` and `[A, B, C, in]` give the
/// values of the same rows as `[N, in]`, on the tape and off it.
#[test]
fn linear_takes_any_leading_axes() {
    let mut ps = ParamStore::<f64>::new();
    let fc = Linear::new(&mut ps, "", 3, 2, true, &mut Rng::new(4)).unwrap();
    let mut rng = Rng::new(2);
    let x = Tensor::from_fn(&[2, 1, 2, 3], |_| rng.uniform_range(-1.0, 1.0)).unwrap();
    let rows = fc.apply(&ps, &x.clone().reshape(&[4, 3]).unwrap()).unwrap();
    let mut tape = Tape::new();
    let xv = tape.constant(x.clone());
    let y = fc.forward(&mut tape, &ps, xv).unwrap();
    let y = tape.value(y).unwrap().clone();
    assert_eq!(y.dims(), &[2, 1, 2, 2]);
    assert_eq!(y.data(), rows.data());
    let off = fc.apply(&ps, &x).unwrap();
    assert_eq!(off.dims(), &[2, 1, 2, 2]);
    assert!(off.max_abs_diff(&y).unwrap() < 1e-12);
    for r in 0..4 {
        let one = Tensor::from_vec(x.data()[3 * r..3 * r + 3].to_vec(), &[3]).unwrap();
        let v = tape.constant(one.clone());
        let y1 = fc.forward(&mut tape, &ps, v).unwrap();
        assert_eq!(tape.value(y1).unwrap().dims(), &[2]);
        assert_eq!(
            tape.value(y1).unwrap().data(),
            &rows.data()[2 * r..2 * r + 2]
        );
        assert_eq!(fc.apply(&ps, &one).unwrap().dims(), &[2]);
    }
}

#[test]
fn linear_shape_errors() {
    let mut ps = ParamStore::<f32>::new();
    let fc = Linear::new(&mut ps, "", 3, 2, true, &mut Rng::new(0)).unwrap();
    let mut tape = Tape::new();
    for dims in [&[4, 5][..], &[2, 2, 2], &[4], &[1, 1, 1, 2]] {
        let x = tape.constant(Tensor::zeros(dims).unwrap());
        let e = fc.forward(&mut tape, &ps, x).unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("Linear::forward"), "{e}");
        assert!(text.contains("features but the layer expects 3"), "{e}");
        assert!(fc.apply(&ps, &Tensor::zeros(dims).unwrap()).is_err());
    }
    let x = tape.constant(Tensor::zeros(&[]).unwrap());
    let e = fc.forward(&mut tape, &ps, x).unwrap_err();
    assert!(e.to_string().contains("a scalar"), "{e}");
    // A weight replaced by one of the wrong shape is caught, not a panic.
    let mut bad = ps.clone();
    *bad.get_mut(fc.weight()) = Tensor::zeros(&[2, 4]).unwrap();
    let e = fc
        .apply(&bad, &Tensor::zeros(&[1, 3]).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("weight"), "{e}");
    let x = tape.constant(Tensor::zeros(&[1, 3]).unwrap());
    assert!(fc.forward(&mut tape, &bad, x).is_err());
}

#[test]
fn linear_gradcheck_2d_and_3d() {
    for (bias, dims) in [
        (true, vec![4, 3]),
        (false, vec![3, 2, 3]),
        (true, vec![2, 3, 3]),
    ] {
        let mut ps = ParamStore::<f64>::new();
        let fc = Linear::new(&mut ps, "fc.", 3, 5, bias, &mut Rng::new(11)).unwrap();
        let mut rng = Rng::new(5);
        let x = Tensor::from_fn(&dims, |_| rng.uniform_range(-1.0, 1.0)).unwrap();
        let report = gradcheck(&mut ps, &[x], GradcheckOptions::default(), |t, ps, xs| {
            let y = fc.forward(t, ps, xs[0])?;
            t.tanh(y)
        })
        .unwrap();
        assert!(report.passed(), "{report:#?}");
        let n_params = 15 + if bias { 5 } else { 0 };
        assert_eq!(report.checked, n_params + dims.iter().product::<usize>());
    }
}

#[test]
fn embedding_names_init_lookup_and_errors() {
    let mut ps = ParamStore::<f64>::new();
    let emb = Embedding::new(&mut ps, "tok.", 500, 8, &mut Rng::new(2)).unwrap();
    assert_eq!(ps.name(emb.weight()), "tok.weight");
    let w = ps.get(emb.weight()).clone();
    assert_eq!(w.dims(), &[500, 8]);
    // N(0, 1): sample mean and variance of 4000 draws.
    let n = w.numel() as f64;
    let mean = w.sum() / n;
    let var = w.data().iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 0.06, "{mean}");
    assert!((var - 1.0).abs() < 0.08, "{var}");

    let mut tape = Tape::new();
    let ids = [4, 0, 499, 4];
    let y = emb.forward(&mut tape, &ps, &ids, &[2, 2]).unwrap();
    let y = tape.value(y).unwrap().clone();
    assert_eq!(y.dims(), &[2, 2, 8]);
    for (r, &id) in ids.iter().enumerate() {
        assert_eq!(
            &y.data()[r * 8..(r + 1) * 8],
            &w.data()[id * 8..(id + 1) * 8]
        );
    }
    assert_eq!(emb.lookup(&ps, &ids, &[2, 2]).unwrap(), y);

    let e = emb.forward(&mut tape, &ps, &[500], &[1]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::IndexOutOfRange {
                index: 500,
                size: 500,
                ..
            }
        ),
        "{e}"
    );
    assert!(emb.lookup(&ps, &[500], &[1]).is_err());
    assert!(emb.forward(&mut tape, &ps, &[1, 2, 3], &[2, 2]).is_err());
    assert!(emb.lookup(&ps, &[1, 2, 3], &[2, 2]).is_err());
    assert!(Embedding::new(&mut ps, "e.", 0, 3, &mut Rng::new(0)).is_err());
}

#[test]
fn embedding_gradcheck_with_repeated_ids() {
    let mut ps = ParamStore::<f64>::new();
    let emb = Embedding::new(&mut ps, "", 5, 3, &mut Rng::new(4)).unwrap();
    let ids = [1, 3, 1, 1, 0, 4];
    let report = gradcheck(&mut ps, &[], GradcheckOptions::default(), |t, ps, _| {
        let y = emb.forward(t, ps, &ids, &[3, 2])?;
        t.tanh(y)
    })
    .unwrap();
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.checked, 15);
    // Row 2 is never read: its gradient is zero, and that must match the finite differences.
    let mut tape = Tape::new();
    let y = emb.forward(&mut tape, &ps, &ids, &[3, 2]).unwrap();
    let l = tape.sum(y).unwrap();
    let g = tape.backward(l).unwrap();
    let gw = g.param(emb.weight()).unwrap();
    assert_eq!(&gw.data()[6..9], &[0.0; 3]);
    assert_eq!(&gw.data()[3..6], &[3.0; 3]); // id 1 read three times
}
