//! Helpers shared by several integration tests.

use std::path::PathBuf;

use recur::nn::{CellKind, ForwardOptions};
use recur::{Float, Grads, ParamStore, Tape, Tensor, Var};

/// A layer's inputs `x`, `h0` and (for the LSTM only) `c0` put on `tape`, and forward options
/// that pass them with `lengths`; the other options keep their defaults.
#[allow(dead_code)] // not every test that includes this module uses it
pub fn layer_inputs<'a, T: Float>(
    tape: &mut Tape<T>,
    kind: CellKind,
    (x, h0, c0): (Tensor<T>, Tensor<T>, Tensor<T>),
    lengths: Option<&'a [usize]>,
) -> (Var, Var, Option<Var>, ForwardOptions<'a>) {
    let x = tape.input(x);
    let h0 = tape.input(h0);
    let c0 = (kind == CellKind::Lstm).then(|| tape.input(c0));
    let opts = ForwardOptions {
        h0: Some(h0),
        c0,
        lengths,
        ..ForwardOptions::default()
    };
    (x, h0, c0, opts)
}

#[allow(dead_code)]
/// Appends every parameter's gradient (as `grad.<name>`) and those of the layer's inputs `x`,
/// `h0` and, when given, `c0` to `res`.
pub fn push_grads<T: Float>(
    res: &mut Vec<(String, Tensor<T>)>,
    g: &Grads<'_, T>,
    ps: &ParamStore<T>,
    x: Var,
    h0: Var,
    c0: Option<Var>,
) {
    for (id, name, _) in ps.iter() {
        res.push((format!("grad.{name}"), g.param(id).unwrap().clone()));
    }
    res.push(("grad.x".into(), g.wrt(x).unwrap().clone()));
    res.push(("grad.h0".into(), g.wrt(h0).unwrap().clone()));
    if let Some(c0) = c0 {
        res.push(("grad.c0".into(), g.wrt(c0).unwrap().clone()));
    }
}

/// A fresh, empty directory for one test: `recur-test-{tag}-{pid}` in the system's temporary
/// directory (emptied first if an earlier run of this process id left it).
#[allow(dead_code)] // not every test that includes this module uses it
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("recur-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A process's output as text.
#[allow(dead_code)]
pub fn output_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
