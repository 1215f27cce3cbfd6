//! Initialisation: orthogonality per gate block, bounds, moments, determinism, forget bias.

use recur::nn::init::{
    self, BiasInit, RecurrentInit, WeightInit, init_recurrent, lstm_forget_bias, orthogonal_blocks,
    xavier_normal, xavier_uniform,
};
use recur::nn::{Activation, Gru, Lstm, RecurrentConfig, Rnn};
use recur::{ParamStore, Rng, Tensor};

/// `max |B B^T - I|` for the `rows x cols` row-major matrix B (rows <= cols), or of `B^T B`
/// when rows > cols.
fn orthonormality_error(b: &[f64], rows: usize, cols: usize) -> f64 {
    let mut worst: f64 = 0.0;
    if rows <= cols {
        for i in 0..rows {
            for j in 0..rows {
                let d: f64 = (0..cols).map(|k| b[i * cols + k] * b[j * cols + k]).sum();
                worst = worst.max((d - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
    } else {
        for i in 0..cols {
            for j in 0..cols {
                let d: f64 = (0..rows).map(|k| b[k * cols + i] * b[k * cols + j]).sum();
                worst = worst.max((d - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
    }
    worst
}

#[test]
fn orthogonal_gate_blocks_are_orthogonal() {
    let (h, i_size) = (12, 5);
    let mut ps = ParamStore::<f64>::new();
    let mut rng = Rng::new(7);
    let lstm = Lstm::new(&mut ps, "", RecurrentConfig::new(i_size, h), &mut rng).unwrap();
    let p = lstm.direction_params(0, 0).unwrap();
    orthogonal_blocks(&mut ps, p.w_hh, 4, 1.0, &mut rng).unwrap();
    let w = ps.get(p.w_hh).data().to_vec();
    for g in 0..4 {
        let block = &w[g * h * h..(g + 1) * h * h];
        let e = orthonormality_error(block, h, h);
        assert!(e < 1e-12, "gate {g}: |Q^T Q - I| = {e}");
    }
    // The whole stacked matrix is not orthogonal (the blocks are independent): only each block is.
    assert!(orthonormality_error(&w, 4 * h, h) > 0.1);
    // Blocks differ from one another.
    assert_ne!(&w[..h * h], &w[h * h..2 * h * h]);

    // Non-square: W_ih blocks [H, I] with I < H have orthonormal columns; with I > H, rows.
    orthogonal_blocks(&mut ps, p.w_ih, 4, 2.0, &mut rng).unwrap();
    let w = ps.get(p.w_ih).data().to_vec();
    for g in 0..4 {
        let block: Vec<f64> = w[g * h * i_size..(g + 1) * h * i_size]
            .iter()
            .map(|x| x / 2.0)
            .collect();
        assert!(orthonormality_error(&block, h, i_size) < 1e-12);
    }
    let mut ps2 = ParamStore::<f64>::new();
    let wide = ps2.add("w", Tensor::zeros(&[3, 10]).unwrap()).unwrap();
    orthogonal_blocks(&mut ps2, wide, 1, 1.0, &mut rng).unwrap();
    assert!(orthonormality_error(ps2.get(wide).data(), 3, 10) < 1e-12);
}

#[test]
fn orthogonal_has_positive_r_diagonal() {
    // Q = QR(A) with diag(R) > 0 means Q^T A is upper triangular with a positive diagonal. The
    // normal matrix A is the first draw of the same seed.
    let n = 6;
    let mut ps = ParamStore::<f64>::new();
    let w = ps.add("w", Tensor::zeros(&[n, n]).unwrap()).unwrap();
    orthogonal_blocks(&mut ps, w, 1, 1.0, &mut Rng::new(3)).unwrap();
    let mut r = Rng::new(3);
    let a: Vec<f64> = (0..n * n).map(|_| r.normal()).collect();
    let q = ps.get(w).data();
    for i in 0..n {
        for j in 0..n {
            let rij: f64 = (0..n).map(|k| q[k * n + i] * a[k * n + j]).sum();
            if i > j {
                assert!(rij.abs() < 1e-10, "R[{i},{j}] = {rij}");
            } else if i == j {
                assert!(rij > 0.0, "R[{i},{i}] = {rij}");
            }
        }
    }
}

#[test]
fn bounds_and_moments() {
    let mut ps = ParamStore::<f32>::new();
    let mut rng = Rng::new(11);
    let w = ps.add("w", Tensor::zeros(&[200, 300]).unwrap()).unwrap();
    xavier_uniform(&mut ps, w, 2.0, &mut rng).unwrap();
    let a = 2.0 * (6.0f64 / 500.0).sqrt();
    let d = ps.get(w).data();
    assert!(d.iter().all(|&x| (x as f64).abs() <= a));
    let max = d.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    assert!(
        max > 0.99 * a,
        "samples should reach the bound: {max} vs {a}"
    );

    xavier_normal(&mut ps, w, 1.0, &mut rng).unwrap();
    let d = ps.get(w).data();
    let n = d.len() as f64;
    let mean = d.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = d.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let want = 2.0 / 500.0;
    assert!(
        mean.abs() < 3e-3 && (var / want - 1.0).abs() < 0.03,
        "{mean} {var} vs {want}"
    );

    init::pytorch_default(&mut ps, w, 64, &mut rng).unwrap();
    assert!(ps.get(w).data().iter().all(|&x| x.abs() <= 0.125));

    let b = ps.add("b", Tensor::zeros(&[5]).unwrap()).unwrap();
    assert!(xavier_uniform(&mut ps, b, 1.0, &mut rng).is_err());
    assert!(orthogonal_blocks(&mut ps, w, 7, 1.0, &mut rng).is_err());
    assert!(init::uniform(&mut ps, w, f64::NAN, &mut rng).is_err());
}

fn build_and_init(seed: u64, scheme: &RecurrentInit) -> ParamStore<f64> {
    let mut ps = ParamStore::<f64>::new();
    let mut rng = Rng::new(seed);
    let cfg = RecurrentConfig::new(3, 4).num_layers(2).bidirectional(true);
    let lstm = Lstm::new(&mut ps, "lstm.", cfg, &mut rng).unwrap();
    init_recurrent(&mut ps, &lstm, scheme, &mut rng).unwrap();
    ps
}

#[test]
fn same_seed_same_values_other_seed_other_values() {
    for scheme in [RecurrentInit::pytorch(), RecurrentInit::orthogonal()] {
        let (a, b, c) = (
            build_and_init(5, &scheme),
            build_and_init(5, &scheme),
            build_and_init(6, &scheme),
        );
        for (id, name, t) in a.iter() {
            assert_eq!(t.data(), b.get(id).data(), "{name}");
            if name.contains("weight") {
                assert_ne!(t.data(), c.get(id).data(), "{name}");
            }
        }
    }
}

#[test]
fn forget_bias_and_whole_layer_scheme() {
    let scheme = RecurrentInit::orthogonal();
    let ps = build_and_init(1, &scheme);
    let h = 4;
    for (_, name, t) in ps.iter() {
        let d = t.data();
        if name.contains("bias_ih") {
            for (k, &x) in d.iter().enumerate() {
                let want = if (h..2 * h).contains(&k) { 1.0 } else { 0.0 };
                assert_eq!(x, want, "{name}[{k}]");
            }
        } else if name.contains("bias_hh") {
            assert!(d.iter().all(|&x| x == 0.0), "{name}");
        } else if name.contains("weight_hh") {
            for g in 0..4 {
                let e = orthonormality_error(&d[g * h * h..(g + 1) * h * h], h, h);
                assert!(e < 1e-12, "{name} gate {g}");
            }
        }
    }

    // Forget bias keeps the other gates' biases.
    let mut ps = ParamStore::<f64>::new();
    let mut rng = Rng::new(2);
    let lstm = Lstm::new(&mut ps, "", RecurrentConfig::new(2, 3), &mut rng).unwrap();
    let p = lstm.direction_params(0, 0).unwrap();
    let before = ps.get(p.b_ih.unwrap()).clone();
    lstm_forget_bias(&mut ps, &lstm, 2.5).unwrap();
    let after = ps.get(p.b_ih.unwrap()).data();
    assert_eq!(&after[..3], &before.data()[..3]);
    assert_eq!(&after[3..6], &[2.5; 3]);
    assert_eq!(&after[6..], &before.data()[6..]);
    assert_eq!(&ps.get(p.b_hh.unwrap()).data()[3..6], &[0.0; 3]);

    // Not an LSTM, or no biases: errors.
    let gru = Gru::new(&mut ps, "gru.", RecurrentConfig::new(2, 3), &mut rng).unwrap();
    assert!(lstm_forget_bias(&mut ps, &gru, 1.0).is_err());
    let nob = Lstm::new(
        &mut ps,
        "nob.",
        RecurrentConfig::new(2, 3).bias(false),
        &mut rng,
    )
    .unwrap();
    assert!(lstm_forget_bias(&mut ps, &nob, 1.0).is_err());
    assert!(init_recurrent(&mut ps, &nob, &RecurrentInit::orthogonal(), &mut rng).is_err());

    // Other cells take the scheme too (forget bias ignored); a GRU's 3 blocks are orthogonal.
    let rnn = Rnn::new(
        &mut ps,
        "rnn.",
        RecurrentConfig::new(2, 3),
        Activation::Tanh,
        &mut rng,
    )
    .unwrap();
    let scheme = RecurrentInit {
        input_weights: WeightInit::XavierNormal(1.0),
        hidden_weights: WeightInit::Orthogonal(1.0),
        biases: BiasInit::Constant(0.25),
        lstm_forget_bias: Some(1.0),
    };
    init_recurrent(&mut ps, &rnn, &scheme, &mut rng).unwrap();
    init_recurrent(&mut ps, &gru, &scheme, &mut rng).unwrap();
    let w = ps.get(ps.find("gru.weight_hh_l0").unwrap()).data().to_vec();
    for g in 0..3 {
        assert!(orthonormality_error(&w[g * 9..(g + 1) * 9], 3, 3) < 1e-12);
    }
    assert!(
        ps.get(ps.find("gru.bias_ih_l0").unwrap())
            .data()
            .iter()
            .all(|&x| x == 0.25)
    );
}

#[test]
fn projection_weights_follow_the_hidden_scheme() {
    let mut ps = ParamStore::<f64>::new();
    let mut rng = Rng::new(3);
    let cfg = RecurrentConfig::new(3, 6)
        .num_layers(2)
        .bidirectional(true)
        .proj_size(4);
    let lstm = Lstm::new(&mut ps, "", cfg, &mut rng).unwrap();
    let hr = ps.find("weight_hr_l1_reverse").unwrap();
    assert_eq!(ps.get(hr).dims(), &[4, 6]);
    assert!(lstm.param_ids().contains(&hr));
    // PyTorch's default bound 1/sqrt(H).
    let bound = 1.0 / 6f64.sqrt();
    assert!(ps.get(hr).data().iter().all(|&x| x.abs() <= bound));
    // Orthogonal: the [P, H] projection has orthonormal rows.
    init_recurrent(&mut ps, &lstm, &RecurrentInit::orthogonal(), &mut rng).unwrap();
    for name in ["weight_hr_l0", "weight_hr_l1_reverse"] {
        let w = ps.get(ps.find(name).unwrap()).data().to_vec();
        assert!(orthonormality_error(&w, 4, 6) < 1e-12, "{name}");
    }
}
