//! Cells, `Linear` and `Embedding` against PyTorch's `nn.RNNCell`, `nn.LSTMCell`, `nn.GRUCell`,
//! `nn.Linear` and `nn.Embedding` (`tests/fixtures/parity/modules/modules_f64.safetensors`,
//! written by `tests/fixtures/gen_parity.py`): parameters loaded by their PyTorch names, outputs
//! and gradients to 1e-9 relative (`max|a - b| / max(max|b|, 1e-6)`), on the tape and, for the
//! cells, without one.

use std::path::Path;

use recur::io::Archive;
use recur::nn::parity::relative_error;
use recur::nn::{
    Activation, CellConfig, CellState, Embedding, GruCell, Linear, LstmCell, Module, RecurrentCell,
    RnnCell, StateTensors, load_state_dict,
};
use recur::{ParamStore, Rng, Tape, Tensor, Var};

const TOL: f64 = 1e-9;

fn archive() -> Archive {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity/modules/modules_f64.safetensors");
    Archive::read(&p).unwrap()
}

fn close(name: &str, got: &Tensor<f64>, want: &Tensor<f64>) {
    let e = relative_error(got, want).unwrap();
    assert!(e <= TOL, "{name}: relative error {e:e}");
}

/// `sum(v * r)`.
fn wsum(tape: &mut Tape<f64>, v: Var, r: Tensor<f64>) -> Var {
    let r = tape.constant(r);
    let m = tape.mul(v, r).unwrap();
    tape.sum(m).unwrap()
}

fn check_cell<C: RecurrentCell + Module>(
    a: &Archive,
    prefix: &str,
    cell: &C,
    ps: &mut ParamStore<f64>,
) {
    load_state_dict(cell, ps, a, &format!("{prefix}."), false).unwrap();
    let t = |n: &str| a.tensor::<f64>(&format!("{prefix}.{n}")).unwrap();
    let x = t("x");
    let (t_len, b, i) = (x.dims()[0], x.dims()[1], x.dims()[2]);
    let h = cell.hidden_size();
    let lstm = cell.kind().has_cell_state();
    let want_h = t("h");

    // On the tape.
    let mut tape = Tape::new();
    let xv = tape.input(x.clone());
    let h0 = tape.input(t("h0"));
    let c0 = lstm.then(|| tape.input(t("c0")));
    let mut s = CellState { h: h0, c: c0 };
    let mut hs = Vec::new();
    for k in 0..t_len {
        let xk = tape.select(xv, k).unwrap();
        s = cell.step(&mut tape, ps, xk, s).unwrap();
        hs.push(s.h);
    }
    let hseq = tape.stack(&hs).unwrap();
    close(&format!("{prefix}.h"), tape.value(hseq).unwrap(), &want_h);
    let mut loss = wsum(&mut tape, hseq, t("r"));
    if let Some(c) = s.c {
        close(
            &format!("{prefix}.c_last"),
            tape.value(c).unwrap(),
            &t("c_last"),
        );
        let lc = wsum(&mut tape, c, t("rc"));
        loss = tape.add(loss, lc).unwrap();
    }
    let g = tape.backward(loss).unwrap();
    for (name, id) in cell.named_params() {
        close(
            &format!("{prefix}.grad.{name}"),
            g.param(id).unwrap(),
            &t(&format!("grad.{name}")),
        );
    }
    close(
        &format!("{prefix}.grad.x"),
        g.wrt(xv).unwrap(),
        &t("grad.x"),
    );
    close(
        &format!("{prefix}.grad.h0"),
        g.wrt(h0).unwrap(),
        &t("grad.h0"),
    );
    if let Some(c0) = c0 {
        close(
            &format!("{prefix}.grad.c0"),
            g.wrt(c0).unwrap(),
            &t("grad.c0"),
        );
    }

    // Without a tape.
    let mut st = StateTensors {
        h: t("h0"),
        c: lstm.then(|| t("c0")),
    };
    for k in 0..t_len {
        let xk = Tensor::from_slice(&x.data()[k * b * i..(k + 1) * b * i], &[b, i]).unwrap();
        st = cell.step_inference(ps, &xk, &st).unwrap();
        let wk = Tensor::from_slice(&want_h.data()[k * b * h..(k + 1) * b * h], &[b, h]).unwrap();
        close(&format!("{prefix}.h[{k}] (inference)"), &st.h, &wk);
    }
    if let Some(c) = &st.c {
        close(&format!("{prefix}.c_last (inference)"), c, &t("c_last"));
    }
}

#[test]
fn cells_match_pytorch_cells() {
    let a = archive();
    let mut ps = ParamStore::<f64>::new();
    let mut rng = Rng::new(0);
    let cfg = CellConfig::new(3, 5);
    let rnn = RnnCell::new(&mut ps, "rnn.", cfg, Activation::Relu, &mut rng).unwrap();
    check_cell(&a, "rnn_cell", &rnn, &mut ps);
    let lstm = LstmCell::new(&mut ps, "lstm.", cfg, &mut rng).unwrap();
    check_cell(&a, "lstm_cell", &lstm, &mut ps);
    let gru = GruCell::new(&mut ps, "gru.", cfg, &mut rng).unwrap();
    check_cell(&a, "gru_cell", &gru, &mut ps);
    let gru_nb = GruCell::new(&mut ps, "gru_nb.", cfg.bias(false), &mut rng).unwrap();
    check_cell(&a, "gru_cell_nobias", &gru_nb, &mut ps);
}

#[test]
fn linear_matches_pytorch_linear() {
    let a = archive();
    let t = |n: &str| a.tensor::<f64>(&format!("linear.{n}")).unwrap();
    let mut ps = ParamStore::<f64>::new();
    let fc = Linear::new(&mut ps, "", 3, 5, true, &mut Rng::new(0)).unwrap();
    load_state_dict(&fc, &mut ps, &a, "linear.", false).unwrap();
    let mut tape = Tape::new();
    let x = tape.input(t("x"));
    let y = fc.forward(&mut tape, &ps, x).unwrap();
    close("linear.y", tape.value(y).unwrap(), &t("y"));
    close(
        "linear.y (apply)",
        &fc.apply(&ps, &t("x")).unwrap(),
        &t("y"),
    );
    let l = wsum(&mut tape, y, t("r"));
    let g = tape.backward(l).unwrap();
    close(
        "linear.grad.weight",
        g.param(fc.weight()).unwrap(),
        &t("grad.weight"),
    );
    close(
        "linear.grad.bias",
        g.param(fc.bias().unwrap()).unwrap(),
        &t("grad.bias"),
    );
    close("linear.grad.x", g.wrt(x).unwrap(), &t("grad.x"));
}

#[test]
fn embedding_matches_pytorch_embedding() {
    let a = archive();
    let t = |n: &str| a.tensor::<f64>(&format!("embedding.{n}")).unwrap();
    let ids_t = a.get("embedding.ids").unwrap();
    let dims = ids_t.dims().to_vec();
    let ids: Vec<usize> = ids_t
        .to_i64("embedding.ids")
        .unwrap()
        .into_iter()
        .map(|i| usize::try_from(i).unwrap())
        .collect();
    let mut ps = ParamStore::<f64>::new();
    let emb = Embedding::new(&mut ps, "", 7, 5, &mut Rng::new(0)).unwrap();
    load_state_dict(&emb, &mut ps, &a, "embedding.", false).unwrap();
    let mut tape = Tape::new();
    let y = emb.forward(&mut tape, &ps, &ids, &dims).unwrap();
    close("embedding.y", tape.value(y).unwrap(), &t("y"));
    close(
        "embedding.y (lookup)",
        &emb.lookup(&ps, &ids, &dims).unwrap(),
        &t("y"),
    );
    let l = wsum(&mut tape, y, t("r"));
    let g = tape.backward(l).unwrap();
    close(
        "embedding.grad.weight",
        g.param(emb.weight()).unwrap(),
        &t("grad.weight"),
    );
}
