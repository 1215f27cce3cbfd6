//! Helpers shared by several integration tests.

use recur::{Float, Grads, ParamStore, Tensor, Var};

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
