//! Bad shapes and arguments give errors that name the op and the offending shapes, never a panic.

use recur::{Error, ParamStore, Shape, Tape, Tensor};

fn msg<T>(r: recur::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn has(m: &str, parts: &[&str]) {
    for p in parts {
        assert!(m.contains(p), "`{m}` should mention `{p}`");
    }
}

#[test]
fn tensor_constructors_validate() {
    has(
        &msg(Tensor::<f32>::from_vec(vec![1.0; 5], &[2, 3])),
        &["Tensor::from_vec", "5 elements", "[2, 3]", "needs 6"],
    );
    has(
        &msg(Tensor::<f32>::zeros(&[3, 0])),
        &["zero-size dimension", "[3, 0]"],
    );
    has(
        &msg(Tensor::<f64>::full(&[1, 2, 3, 4, 5], 0.0)),
        &["rank 5 exceeds"],
    );
    has(
        &msg(Tensor::<f64>::from_fn(&[usize::MAX, 4], |_| 0.0)),
        &["overflows"],
    );
    has(&msg(Shape::new(&[0])), &["zero-size"]);
    let t = Tensor::<f64>::zeros(&[2, 3]).unwrap();
    has(&msg(t.get(&[2, 0])), &["index 2 out of range for size 2"]);
    has(&msg(t.get(&[0])), &["rank 1", "[2, 3]"]);
    has(&msg(t.clone().reshape(&[4])), &["reshape", "[2, 3] vs [4]"]);
    has(
        &msg(t.max_abs_diff(&Tensor::zeros(&[3, 2]).unwrap())),
        &["[2, 3] vs [3, 2]"],
    );
}

#[test]
fn param_store_rejects_duplicates_and_foreign_ids() {
    let mut ps = ParamStore::<f64>::new();
    ps.add("w", Tensor::zeros(&[1]).unwrap()).unwrap();
    has(
        &msg(ps.add("w", Tensor::zeros(&[1]).unwrap())),
        &["duplicate parameter name `w`"],
    );
    let mut other = ParamStore::<f64>::new();
    other.add("a", Tensor::zeros(&[1]).unwrap()).unwrap();
    let id = other.add("b", Tensor::zeros(&[1]).unwrap()).unwrap();
    let mut tape = Tape::new();
    has(
        &msg(tape.param(&ps, id)),
        &["index 1 out of range for size 1"],
    );
}

#[test]
fn every_op_names_its_shapes() {
    let mut tape = Tape::<f64>::new();
    let a = tape.input(Tensor::zeros(&[2, 3]).unwrap());
    let b = tape.input(Tensor::zeros(&[4, 5]).unwrap());
    let v = tape.input(Tensor::zeros(&[3]).unwrap());
    let seq = tape.input(Tensor::zeros(&[4, 2, 3]).unwrap());
    has(&msg(tape.matmul(a, b)), &["matmul", "[2, 3] vs [4, 5]"]);
    has(
        &msg(tape.matmul(a, v)),
        &["matmul", "expected a matrix", "[3]"],
    );
    has(&msg(tape.matmul_t(a, true, b, false)), &["matmul"]);
    has(&msg(tape.add(a, b)), &["add", "[2, 3] vs [4, 5]"]);
    has(&msg(tape.sub(b, v)), &["sub", "[4, 5] vs [3]"]);
    has(&msg(tape.mul(a, seq)), &["mul", "[2, 3] vs [4, 2, 3]"]);
    has(&msg(tape.concat(&[a, b])), &["concat", "[2, 3] vs [4, 5]"]);
    has(&msg(tape.concat(&[])), &["concat", "no tensors"]);
    has(&msg(tape.slice(a, 2, 4)), &["slice", "2..4", "[2, 3]"]);
    has(&msg(tape.slice(a, 1, 1)), &["slice", "1..1"]);
    has(&msg(tape.stack(&[a, b])), &["stack", "[2, 3] vs [4, 5]"]);
    let r4 = tape.reshape(seq, &[1, 4, 2, 3]).unwrap();
    has(&msg(tape.stack(&[r4, r4])), &["stack", "exceeds rank"]);
    has(
        &msg(tape.select(seq, 4)),
        &["select", "index 4 out of range for size 4"],
    );
    has(&msg(tape.reshape(a, &[5])), &["reshape", "[2, 3] vs [5]"]);
    has(
        &msg(tape.embedding(v, &[0], &[1])),
        &["embedding", "[V, D]", "[3]"],
    );
    has(
        &msg(tape.embedding(b, &[0, 4], &[2])),
        &["embedding", "index 4 out of range for size 4"],
    );
    has(
        &msg(tape.embedding(b, &[0, 1, 2], &[2])),
        &["embedding", "3 ids do not fill shape [2]"],
    );
    has(
        &msg(tape.cross_entropy(a, &[0], None)),
        &["cross_entropy", "1 targets for 2 rows", "[2, 3]"],
    );
    has(
        &msg(tape.cross_entropy(a, &[0, 3], None)),
        &["cross_entropy", "index 3 out of range for size 3"],
    );
    has(
        &msg(tape.cross_entropy_masked(a, &[0, 1], &[true])),
        &["mask has 1 entries for 2 targets"],
    );
    has(&msg(tape.mse(a, b)), &["mse", "[2, 3] vs [4, 5]"]);
    // Nothing above left a half-recorded node behind: the tape still works.
    let s = tape.sum(a).unwrap();
    assert!(tape.backward(s).is_ok());
}

#[test]
fn errors_are_matchable_values() {
    let mut tape = Tape::<f32>::new();
    let a = tape.input(Tensor::zeros(&[2, 3]).unwrap());
    let b = tape.input(Tensor::zeros(&[2, 2]).unwrap());
    match tape.add(a, b) {
        Err(Error::ShapeMismatch { op, lhs, rhs }) => {
            assert_eq!(op, "add");
            assert_eq!(lhs.dims(), &[2, 3]);
            assert_eq!(rhs.dims(), &[2, 2]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_layer_with_a_mis_shaped_parameter_is_an_error_not_a_panic() {
    use recur::nn::{ForwardOptions, Implementation, Lstm, RecurrentConfig};
    for implementation in [Implementation::Fused, Implementation::Reference] {
        let mut ps = recur::ParamStore::<f64>::new();
        let lstm = Lstm::new(
            &mut ps,
            "",
            RecurrentConfig::new(3, 4),
            &mut recur::Rng::new(0),
        )
        .unwrap();
        let p = lstm.direction_params(0, 0).unwrap();
        *ps.get_mut(p.w_hh) = recur::Tensor::zeros(&[16, 5]).unwrap();
        let mut tape = recur::Tape::new();
        let x = tape.constant(recur::Tensor::zeros(&[2, 1, 3]).unwrap());
        let opts = ForwardOptions {
            implementation,
            ..Default::default()
        };
        let e = lstm
            .forward(&mut tape, &ps, x, opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[16, 4]") && e.contains("[16, 5]"), "{e}");
    }
}
