//! Every primitive op of the tape, gradchecked against central differences in f64 on random
//! shapes, to a relative error below 1e-6.

use recur::diagnostics::{GradcheckOptions, GradcheckReport, gradcheck};
use recur::{ParamStore, Result, Rng, Tape, Tensor, Var};

fn rand_tensor(rng: &mut Rng, dims: &[usize], lo: f64, hi: f64) -> Tensor<f64> {
    Tensor::from_fn(dims, |_| rng.uniform_range(lo, hi)).unwrap()
}

fn check<F>(inputs: Vec<Tensor<f64>>, f: F) -> GradcheckReport
where
    F: FnMut(&mut Tape<f64>, &ParamStore<f64>, &[Var]) -> Result<Var>,
{
    let mut ps = ParamStore::new();
    let report = gradcheck(&mut ps, &inputs, GradcheckOptions::default(), f).unwrap();
    assert!(report.passed(), "{report:#?}");
    assert!(report.max_rel_err < 1e-6, "{report:#?}");
    assert!(report.checked > 0);
    report
}

/// Random small dimensions for `n` trials.
fn dims(rng: &mut Rng) -> (usize, usize, usize) {
    (1 + rng.below(4), 1 + rng.below(5), 1 + rng.below(6))
}

#[test]
fn matmul_all_transpositions() {
    let mut rng = Rng::new(1);
    for _ in 0..4 {
        let (m, k, n) = dims(&mut rng);
        for ta in [false, true] {
            for tb in [false, true] {
                let da = if ta { [k, m] } else { [m, k] };
                let db = if tb { [n, k] } else { [k, n] };
                let a = rand_tensor(&mut rng, &da, -1.0, 1.0);
                let b = rand_tensor(&mut rng, &db, -1.0, 1.0);
                check(vec![a, b], |t, _, x| t.matmul_t(x[0], ta, x[1], tb));
            }
        }
    }
}

#[test]
fn linear_over_any_leading_dimensions_with_and_without_bias() {
    let mut rng = Rng::new(21);
    for lead in [vec![], vec![3], vec![2, 3]] {
        let (_, k, n) = dims(&mut rng);
        let xd: Vec<usize> = lead.iter().copied().chain([k]).collect();
        let x = rand_tensor(&mut rng, &xd, -1.0, 1.0);
        let w = rand_tensor(&mut rng, &[n, k], -1.0, 1.0);
        let b = rand_tensor(&mut rng, &[n], -1.0, 1.0);
        check(vec![x.clone(), w.clone(), b], |t, _, v| {
            let y = t.linear(v[0], v[1], Some(v[2]))?;
            t.tanh(y)
        });
        // x and W each feed two nodes: the second contribution adds to the first.
        check(vec![x, w], |t, _, v| {
            let y = t.linear(v[0], v[1], None)?;
            let z = t.tanh(v[0])?;
            let z = t.linear(z, v[1], None)?;
            let s = t.add(y, z)?;
            t.tanh(s)
        });
    }
}

#[test]
fn add_sub_mul_with_broadcasts() {
    let mut rng = Rng::new(2);
    for _ in 0..3 {
        let (b, m, n) = dims(&mut rng);
        let a = rand_tensor(&mut rng, &[b, m, n], -1.0, 1.0);
        for other in [vec![b, m, n], vec![n], vec![]] {
            let o = rand_tensor(&mut rng, &other, -1.0, 1.0);
            check(vec![a.clone(), o.clone()], |t, _, x| t.add(x[0], x[1]));
            check(vec![a.clone(), o.clone()], |t, _, x| t.sub(x[0], x[1]));
            check(vec![a.clone(), o.clone()], |t, _, x| t.mul(x[0], x[1]));
        }
    }
}

#[test]
fn scale_and_unary_activations() {
    let mut rng = Rng::new(3);
    for _ in 0..3 {
        let (b, m, _) = dims(&mut rng);
        let a = rand_tensor(&mut rng, &[b, m], -2.0, 2.0);
        check(vec![a.clone()], |t, _, x| t.scale(x[0], -1.7));
        check(vec![a.clone()], |t, _, x| t.sigmoid(x[0]));
        check(vec![a.clone()], |t, _, x| t.tanh(x[0]));
        check(vec![a.clone()], |t, _, x| t.exp(x[0]));
        // relu: keep away from the kink, where finite differences are not defined
        let r = Tensor::from_fn(&[b, m], |i| {
            if i % 2 == 0 {
                0.3 + i as f64 * 0.1
            } else {
                -0.5 - i as f64 * 0.1
            }
        })
        .unwrap();
        check(vec![r], |t, _, x| t.relu(x[0]));
        let pos = rand_tensor(&mut rng, &[b, m], 0.2, 3.0);
        check(vec![pos], |t, _, x| t.log(x[0]));
    }
}

#[test]
fn sum_and_mean() {
    let mut rng = Rng::new(4);
    let (b, m, n) = dims(&mut rng);
    let a = rand_tensor(&mut rng, &[b, m, n], -1.0, 1.0);
    let r = check(vec![a.clone()], |t, _, x| t.sum(x[0]));
    assert_eq!(r.checked, b * m * n);
    check(vec![a], |t, _, x| t.mean(x[0]));
}

#[test]
fn concat_slice_stack_select_reshape() {
    let mut rng = Rng::new(5);
    for _ in 0..3 {
        let (b, m, n) = dims(&mut rng);
        let a = rand_tensor(&mut rng, &[b, m], -1.0, 1.0);
        let c = rand_tensor(&mut rng, &[b, n], -1.0, 1.0);
        check(vec![a.clone(), c.clone()], |t, _, x| {
            t.concat(&[x[0], x[1], x[0]])
        });
        let start = rng.below(m);
        let end = start + 1 + rng.below(m - start);
        check(vec![a.clone()], |t, _, x| t.slice(x[0], start, end));
        let a2 = rand_tensor(&mut rng, &[b, m], -1.0, 1.0);
        check(vec![a.clone(), a2], |t, _, x| t.stack(&[x[0], x[1], x[0]]));
        let seq = rand_tensor(&mut rng, &[n, b, m], -1.0, 1.0);
        let idx = rng.below(n);
        check(vec![seq.clone()], |t, _, x| t.select(x[0], idx));
        check(vec![seq.clone()], |t, _, x| t.reshape(x[0], &[n * b, m]));
        check(vec![seq], |t, _, x| t.swap01(x[0]));
    }
}

#[test]
fn embedding_lookup_with_repeated_ids() {
    let mut rng = Rng::new(6);
    let table = rand_tensor(&mut rng, &[5, 3], -1.0, 1.0);
    let ids = [4, 0, 4, 2, 1, 4];
    check(vec![table], |t, _, x| t.embedding(x[0], &ids, &[2, 3]));
}

#[test]
fn cross_entropy_plain_ignored_and_masked() {
    let mut rng = Rng::new(7);
    for _ in 0..3 {
        let (_, rows, c) = dims(&mut rng);
        let c = c + 1;
        let logits = rand_tensor(&mut rng, &[rows, c], -3.0, 3.0);
        let targets: Vec<usize> = (0..rows).map(|_| rng.below(c)).collect();
        check(vec![logits.clone()], |t, _, x| {
            t.cross_entropy(x[0], &targets, None)
        });
        let ignore = targets[0];
        check(vec![logits.clone()], |t, _, x| {
            t.cross_entropy(x[0], &targets, Some(ignore))
        });
        let mask: Vec<bool> = (0..rows).map(|i| i % 2 == 0).collect();
        check(vec![logits], |t, _, x| {
            t.cross_entropy_masked(x[0], &targets, &mask)
        });
    }
}

#[test]
fn cross_entropy_is_stable_for_huge_logits() {
    let mut tape = Tape::<f64>::new();
    let x = tape.input(Tensor::from_vec(vec![1000.0, -1000.0, 999.0], &[1, 3]).unwrap());
    let loss = tape.cross_entropy(x, &[2], None).unwrap();
    let l = tape.value(loss).unwrap().data()[0];
    // -log softmax_2 = log(e^0 + e^-2000 + e^-1) - (999 - 1000)
    assert!(
        (l - (1.0 + (1.0 + (-1.0f64).exp()).ln())).abs() < 1e-12,
        "{l}"
    );
    let g = tape.backward(loss).unwrap();
    assert!(g.wrt(x).unwrap().all_finite());
}

#[test]
fn mse_both_sides() {
    let mut rng = Rng::new(8);
    let (b, m, _) = dims(&mut rng);
    let a = rand_tensor(&mut rng, &[b, m], -1.0, 1.0);
    let y = rand_tensor(&mut rng, &[b, m], -1.0, 1.0);
    check(vec![a, y], |t, _, x| t.mse(x[0], x[1]));
}

#[test]
fn composite_expression_with_parameters() {
    let mut rng = Rng::new(9);
    let mut ps = ParamStore::new();
    let w = ps
        .add("w", rand_tensor(&mut rng, &[3, 4], -1.0, 1.0))
        .unwrap();
    let bias = ps.add("b", rand_tensor(&mut rng, &[4], -1.0, 1.0)).unwrap();
    let x = rand_tensor(&mut rng, &[2, 3], -1.0, 1.0);
    let report = gradcheck(&mut ps, &[x], GradcheckOptions::default(), |t, ps, xs| {
        let (w, b) = (t.param(ps, w)?, t.param(ps, bias)?);
        let y = t.matmul(xs[0], w)?;
        let y = t.add(y, b)?;
        let g = t.sigmoid(y)?;
        let h = t.tanh(y)?;
        let z = t.mul(g, h)?; // y used three times: gradients accumulate
        t.mean(z)
    })
    .unwrap();
    assert!(report.passed() && report.max_rel_err < 1e-6, "{report:#?}");
    assert_eq!(report.checked, 12 + 4 + 6);
}

#[test]
fn gradcheck_catches_a_wrong_gradient() {
    // A custom op whose backward is deliberately off by a factor: gradcheck must fail.
    struct Wrong;
    impl recur::CustomOp<f64> for Wrong {
        fn name(&self) -> &str {
            "wrong_square"
        }
        fn backward(
            &mut self,
            inputs: &[&Tensor<f64>],
            _: &[&Tensor<f64>],
            gy: &[Option<&Tensor<f64>>],
            gx: &mut [Option<Tensor<f64>>],
            _: &mut recur::tape::Workspace<'_, f64>,
        ) -> Result<()> {
            let g = gy[0].unwrap();
            if let Some(d) = gx[0].as_mut() {
                for i in 0..d.numel() {
                    d.data_mut()[i] += 3.0 * inputs[0].data()[i] * g.data()[i]; // should be 2x
                }
            }
            Ok(())
        }
    }
    let mut ps = ParamStore::new();
    let x = Tensor::from_vec(vec![0.5, -1.0], &[2]).unwrap();
    let report = gradcheck(&mut ps, &[x], GradcheckOptions::default(), |t, _, xs| {
        let v = t.value(xs[0])?.clone();
        let sq = Tensor::from_fn(&[2], |i| v.data()[i] * v.data()[i])?;
        let [y] = t.custom(Box::new(Wrong), &[xs[0]], [sq])?;
        t.sum(y)
    })
    .unwrap();
    assert!(!report.passed());
    assert_eq!(report.failures.len(), 2);
}
