//! Behaviour of the tape itself: deep chains, accumulation, detaching, clearing and reuse,
//! foreign variables, anomaly mode, multi-output custom nodes.

use recur::{CustomOp, Error, ParamStore, Result, Tape, Tensor};

fn t(data: &[f64], dims: &[usize]) -> Tensor<f64> {
    Tensor::from_slice(data, dims).unwrap()
}

#[test]
fn a_chain_of_100k_ops_backpropagates_without_recursion() -> Result<()> {
    let mut tape = Tape::<f64>::new();
    let x = tape.input(t(&[0.5], &[1]));
    let mut y = x;
    for _ in 0..100_000 {
        y = tape.scale(y, 0.9)?;
        y = tape.tanh(y)?;
    }
    assert_eq!(tape.num_nodes(), 200_001);
    let loss = tape.sum(y)?;
    let g = tape.backward(loss)?;
    let d = g.wrt(x).unwrap().data()[0];
    assert!(d.is_finite() && d >= 0.0);
    Ok(())
}

#[test]
fn a_value_used_twice_gets_both_contributions() -> Result<()> {
    let mut tape = Tape::<f64>::new();
    let x = tape.input(t(&[3.0], &[1]));
    let y = tape.mul(x, x)?; // x^2
    let z = tape.add(y, x)?; // x^2 + x
    let g = tape.backward(z)?;
    assert_eq!(g.wrt(x).unwrap().data(), &[7.0]);
    Ok(())
}

#[test]
fn detach_stops_the_gradient() -> Result<()> {
    let mut tape = Tape::<f64>::new();
    let x = tape.input(t(&[2.0], &[1]));
    let y = tape.mul(x, x)?;
    let y_stopped = tape.detach(y)?;
    assert!(!tape.requires_grad(y_stopped)?);
    let z = tape.mul(y_stopped, x)?; // treated as 4 * x
    let g = tape.backward(z)?;
    assert_eq!(g.wrt(x).unwrap().data(), &[4.0]);
    Ok(())
}

#[test]
fn constants_get_no_gradient_and_unused_inputs_get_none() -> Result<()> {
    let mut tape = Tape::<f64>::new();
    let c = tape.constant(t(&[1.0, 2.0], &[2]));
    let x = tape.input(t(&[3.0, 4.0], &[2]));
    let unused = tape.input(t(&[5.0], &[1]));
    let y = tape.mul(c, x)?;
    let s = tape.sum(y)?;
    let g = tape.backward(s)?;
    assert!(g.wrt(c).is_none());
    assert!(g.wrt(unused).is_none());
    assert_eq!(g.wrt(x).unwrap().data(), &[1.0, 2.0]);
    Ok(())
}

#[test]
fn parameters_appear_once_and_gradients_are_keyed_by_id() -> Result<()> {
    let mut ps = ParamStore::<f64>::new();
    let w = ps.add("w", t(&[2.0], &[1]))?;
    let mut tape = Tape::new();
    let a = tape.param(&ps, w)?;
    let b = tape.param(&ps, w)?;
    assert_eq!(a, b);
    assert_eq!(tape.param_of(a), Some(w));
    let y = tape.mul(a, b)?;
    let g = tape.backward(y)?;
    assert_eq!(g.param(w).unwrap().data(), &[4.0]);
    Ok(())
}

#[test]
fn clear_invalidates_old_vars_and_reuses_the_tape() -> Result<()> {
    let mut tape = Tape::<f64>::new();
    let mut results = Vec::new();
    let mut old = None;
    for _ in 0..3 {
        tape.clear();
        let x = tape.input(t(&[0.1, 0.2, 0.3], &[3]));
        let y = tape.sigmoid(x)?;
        let s = tape.sum(y)?;
        let g = tape.backward(s)?.wrt(x).unwrap().clone();
        results.push(g);
        if let Some(v) = old {
            assert!(matches!(tape.value(v), Err(Error::ForeignVar { .. })));
        }
        old = Some(x);
    }
    assert_eq!(results[0], results[2]);
    Ok(())
}

#[test]
fn a_var_from_another_tape_is_an_error() {
    let mut a = Tape::<f64>::new();
    let mut b = Tape::<f64>::new();
    let x = a.input(t(&[1.0], &[1]));
    let _ = b.input(t(&[1.0], &[1]));
    let err = b.tanh(x).unwrap_err();
    assert!(
        err.to_string().contains("does not belong to this tape"),
        "{err}"
    );
}

#[test]
fn backward_needs_a_scalar_loss() {
    let mut tape = Tape::<f64>::new();
    let x = tape.input(t(&[1.0, 2.0], &[2]));
    let err = tape.backward(x).err().unwrap();
    assert!(
        err.to_string()
            .contains("loss must be a scalar, got shape [2]"),
        "{err}"
    );
    let err = tape.backward_with(x, t(&[1.0], &[1])).err().unwrap();
    assert!(err.to_string().contains("[2] vs [1]"), "{err}");
}

#[test]
fn anomaly_mode_names_the_op_that_made_a_nan() -> Result<()> {
    let mut tape = Tape::<f64>::new();
    tape.set_anomaly_detection(true);
    let x = tape.input(t(&[1.0, -1.0], &[2]));
    let y = tape.tanh(x)?;
    let err = tape.log(y).unwrap_err();
    match err {
        Error::NonFinite { op, index, value } => {
            assert_eq!(op, "log");
            assert_eq!(index, 1);
            assert!(value.is_nan());
        }
        e => panic!("unexpected {e}"),
    }
    // Without anomaly mode the NaN passes through silently.
    tape.set_anomaly_detection(false);
    let z = tape.log(y)?;
    assert!(tape.value(z)?.data()[1].is_nan());
    Ok(())
}

#[test]
fn anomaly_mode_checks_gradients_too() -> Result<()> {
    let mut tape = Tape::<f64>::new();
    let x = tape.input(t(&[0.0], &[1]));
    let y = tape.log(x)?; // -inf, allowed while anomaly mode is off
    tape.set_anomaly_detection(true);
    let zero = tape.constant(t(&[0.0], &[1]));
    let err = tape.mul(y, zero).unwrap_err(); // -inf * 0 = NaN: caught at mul
    assert!(err.to_string().contains("`mul`"), "{err}");
    // A finite forward whose backward overflows: d/dx log(x) at x = 1e-320 is 1e320 = inf.
    let tiny = tape.input(t(&[1e-320], &[1]));
    let l = tape.log(tiny)?;
    let err = tape.backward(l).err().unwrap();
    assert!(err.to_string().contains("backward of log"), "{err}");
    Ok(())
}

/// A two-output node: (x + 1, 2x). Its backward is the sum of both contributions.
struct TwoOut;
impl CustomOp<f64> for TwoOut {
    fn name(&self) -> &str {
        "two_out"
    }
    fn backward(
        &mut self,
        _: &[&Tensor<f64>],
        _: &[&Tensor<f64>],
        gy: &[Option<&Tensor<f64>>],
        gx: &mut [Option<Tensor<f64>>],
        _: &mut recur::tape::Workspace<'_, f64>,
    ) -> Result<()> {
        let d = gx[0].as_mut().expect("input needs grad");
        for i in 0..d.numel() {
            let g0 = gy[0].map_or(0.0, |g| g.data()[i]);
            let g1 = gy[1].map_or(0.0, |g| g.data()[i]);
            d.data_mut()[i] += g0 + 2.0 * g1;
        }
        Ok(())
    }
}

#[test]
fn multi_output_custom_nodes_gather_all_output_gradients() -> Result<()> {
    let mut tape = Tape::<f64>::new();
    let x = tape.input(t(&[1.0, 2.0], &[2]));
    let xv = tape.value(x)?.clone();
    let o1 = Tensor::from_fn(&[2], |i| xv.data()[i] + 1.0)?;
    let o2 = Tensor::from_fn(&[2], |i| 2.0 * xv.data()[i])?;
    let [a, b] = tape.custom(Box::new(TwoOut), &[x], [o1, o2])?;
    assert_eq!(tape.value(b)?.data(), &[2.0, 4.0]);
    // Only the second output reaches the loss; the first gets "None" (zeros).
    let s = tape.sum(b)?;
    assert_eq!(tape.backward(s)?.wrt(x).unwrap().data(), &[2.0, 2.0]);
    // Both outputs, and x used directly as well.
    let ab = tape.add(a, b)?;
    let abx = tape.add(ab, x)?;
    let s = tape.sum(abx)?;
    assert_eq!(tape.backward(s)?.wrt(x).unwrap().data(), &[4.0, 4.0]);
    Ok(())
}

#[test]
fn sum_and_mean_gradients_on_a_reused_tape_ignore_stale_buffers() -> Result<()> {
    // The first round leaves buffers of the same length full of other values in the pool; a
    // sum's gradient set (not added) into one of them must still be exactly `factor`.
    let mut tape = Tape::<f64>::new();
    for round in 0..3 {
        tape.clear();
        let x = tape.input(t(&[1.5, -2.0, 0.25, 4.0], &[4]));
        let sq = tape.mul(x, x)?;
        let s = tape.sum(sq)?; // d/dx = 2x, through a sum over sq
        let m = tape.mean(x)?; // d/dx = 1/4
        let loss = tape.add(s, m)?;
        let g = tape.backward(loss)?;
        let want = [3.0 + 0.25, -4.0 + 0.25, 0.5 + 0.25, 8.0 + 0.25];
        assert_eq!(g.wrt(x).unwrap().data(), &want, "round {round}");
        // A lone sum: its gradient is the first and only contribution.
        let sum_only = tape.sum(sq)?;
        let g = tape.backward(sum_only)?;
        assert_eq!(g.wrt(sq).unwrap().data(), &[1.0; 4], "round {round}");
    }
    Ok(())
}

/// `linear` is `matmul_t(x, W^T) + b` in one node: the same values and gradients to the last
/// bit, over `[T, B, in]` without reshaping; shapes that do not fit are errors naming the op.
#[test]
fn linear_equals_the_product_plus_bias_and_checks_its_shapes() -> Result<()> {
    let (steps, batch, k, n) = (3, 4, 5, 6);
    let val = |i: usize, s: usize| ((i * 37 + s) % 17) as f64 / 17.0 - 0.5;
    let x = Tensor::from_fn(&[steps, batch, k], |i| val(i, 1))?;
    let w = Tensor::from_fn(&[n, k], |i| val(i, 2))?;
    let b = Tensor::from_fn(&[n], |i| val(i, 3))?;
    let run = |fused: bool| -> Result<(Tensor<f64>, Vec<Tensor<f64>>)> {
        let mut tape = Tape::<f64>::new();
        let (xv, wv, bv) = (
            tape.input(x.clone()),
            tape.input(w.clone()),
            tape.input(b.clone()),
        );
        let y = if fused {
            let y = tape.linear(xv, wv, Some(bv))?;
            tape.reshape(y, &[steps * batch, n])?
        } else {
            let x2 = tape.reshape(xv, &[steps * batch, k])?;
            let y = tape.matmul_t(x2, false, wv, true)?;
            tape.add(y, bv)?
        };
        let loss = tape.tanh(y)?;
        let loss = tape.sum(loss)?;
        let value = tape.value(y)?.clone();
        let grads = tape.backward(loss)?;
        let g = [xv, wv, bv].map(|v| grads.wrt(v).expect("a gradient").clone());
        Ok((value, g.to_vec()))
    };
    let (fused, unfused) = (run(true)?, run(false)?);
    assert_eq!(fused.0.data(), unfused.0.data());
    for (f, u) in fused.1.iter().zip(&unfused.1) {
        assert_eq!(f.dims(), u.dims());
        assert_eq!(f.data(), u.data());
    }

    let mut tape = Tape::<f64>::new();
    let xv = tape.constant(x.clone());
    let wv = tape.constant(w.clone());
    let short_w = tape.constant(Tensor::zeros(&[n, k - 1])?);
    let short_b = tape.constant(Tensor::zeros(&[n - 1])?);
    let scalar = tape.constant(Tensor::zeros(&[])?);
    for (x, w, b) in [
        (xv, short_w, None),
        (xv, wv, Some(short_b)),
        (scalar, wv, None),
        (xv, xv, None),
    ] {
        let e = tape.linear(x, w, b).unwrap_err();
        assert!(e.to_string().contains("linear"), "{e}");
    }
    Ok(())
}
