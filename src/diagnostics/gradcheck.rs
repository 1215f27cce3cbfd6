//! `gradcheck`: analytical gradients against central finite differences in f64, as
//! `torch.autograd.gradcheck` does.

use crate::params::ParamStore;
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Settings for [`gradcheck`].
#[derive(Clone, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step (default 1e-6).
    pub eps: f64,
    /// Absolute tolerance (default 1e-9).
    pub atol: f64,
    /// Relative tolerance (default 1e-6): an element passes when
    /// `|analytical - numerical| <= atol + rtol * |numerical|`.
    pub rtol: f64,
    /// Seed of the random projection used when the function's output is not a scalar.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            atol: 1e-9,
            rtol: 1e-6,
            seed: 0,
        }
    }
}

/// What [`gradcheck`] found.
#[derive(Clone, Debug, Default)]
pub struct GradcheckReport {
    /// Number of scalar derivatives compared.
    pub checked: usize,
    /// Largest `|analytical - numerical|`.
    pub max_abs_err: f64,
    /// Largest `|analytical - numerical| / max(|analytical|, |numerical|)` over elements whose
    /// gradient is not negligible (magnitude above `atol / rtol`).
    pub max_rel_err: f64,
    /// Elements outside tolerance, described as `name[index]: analytical vs numerical`.
    pub failures: Vec<String>,
}

impl GradcheckReport {
    /// Every element within tolerance.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Checks the gradients of `f` against central finite differences.
///
/// `f` builds a computation on a fresh tape from the parameters in `params` (read with
/// [`Tape::param`]) and from `inputs` (given to it as differentiable `Var`s, in order), and
/// returns its output. A non-scalar output is reduced to `sum(output * R)` with a fixed random
/// `R`, which checks the vector-Jacobian product in a random direction. Every element of every
/// parameter and input is perturbed by `+-eps`.
///
/// ```
/// use recur::diagnostics::{gradcheck, GradcheckOptions};
/// use recur::{ParamStore, Tensor};
/// let mut ps = ParamStore::<f64>::new();
/// let w = ps.add("w", Tensor::from_vec(vec![0.3, -0.2, 0.5, 0.1], &[2, 2])?)?;
/// let x = Tensor::from_vec(vec![1.0, 2.0], &[1, 2])?;
/// let report = gradcheck(&mut ps, &[x], GradcheckOptions::default(), |tape, ps, xs| {
///     let wv = tape.param(ps, w)?;
///     let y = tape.matmul(xs[0], wv)?;
///     tape.sigmoid(y)
/// })?;
/// assert!(report.passed(), "{report:?}");
/// # Ok::<(), recur::Error>(())
/// ```
pub fn gradcheck<F>(
    params: &mut ParamStore<f64>,
    inputs: &[Tensor<f64>],
    opts: GradcheckOptions,
    mut f: F,
) -> Result<GradcheckReport>
where
    F: FnMut(&mut Tape<f64>, &ParamStore<f64>, &[Var]) -> Result<Var>,
{
    if !(opts.eps > 0.0 && opts.eps.is_finite()) {
        return Err(Error::invalid(
            "gradcheck",
            format!("eps must be positive, got {}", opts.eps),
        ));
    }
    let mut tape = Tape::<f64>::new();
    let mut projection: Option<Tensor<f64>> = None;
    let mut inputs: Vec<Tensor<f64>> = inputs.to_vec();

    // Analytical gradients.
    let mut analytical: Vec<(String, Option<Tensor<f64>>)> = Vec::new();
    {
        let (loss, xs) = build(&mut tape, params, &inputs, &mut projection, &opts, &mut f)?;
        let grads = tape.backward(loss)?;
        for (id, name, _) in params.iter() {
            analytical.push((name.to_string(), grads.param(id).cloned()));
        }
        for (k, &x) in xs.iter().enumerate() {
            analytical.push((format!("input {k}"), grads.wrt(x).cloned()));
        }
    }

    let mut report = GradcheckReport::default();
    let mut eval =
        |tape: &mut Tape<f64>, params: &ParamStore<f64>, inputs: &[Tensor<f64>]| -> Result<f64> {
            tape.clear();
            let (loss, _) = build(tape, params, inputs, &mut projection, &opts, &mut f)?;
            Ok(tape.value(loss)?.data()[0])
        };
    let compare = |name: &str, i: usize, a: f64, n: f64, report: &mut GradcheckReport| {
        let err = (a - n).abs();
        report.checked += 1;
        report.max_abs_err = report.max_abs_err.max(err);
        let scale = a.abs().max(n.abs());
        if scale > opts.atol / opts.rtol {
            report.max_rel_err = report.max_rel_err.max(err / scale);
        }
        if err.is_nan() || err > opts.atol + opts.rtol * n.abs() {
            report
                .failures
                .push(format!("{name}[{i}]: analytical {a:e} vs numerical {n:e}"));
        }
    };

    let ids: Vec<_> = params.ids().collect();
    for (k, &id) in ids.iter().enumerate() {
        let (name, grad) = &analytical[k];
        for i in 0..params.get(id).numel() {
            let orig = params.get(id).data()[i];
            params.get_mut(id).data_mut()[i] = orig + opts.eps;
            let plus = eval(&mut tape, params, &inputs);
            params.get_mut(id).data_mut()[i] = orig - opts.eps;
            let minus = eval(&mut tape, params, &inputs);
            params.get_mut(id).data_mut()[i] = orig;
            let n = (plus? - minus?) / (2.0 * opts.eps);
            let a = grad.as_ref().map_or(0.0, |g| g.data()[i]);
            compare(name, i, a, n, &mut report);
        }
    }
    for k in 0..inputs.len() {
        let (name, grad) = &analytical[ids.len() + k];
        for i in 0..inputs[k].numel() {
            let orig = inputs[k].data()[i];
            inputs[k].data_mut()[i] = orig + opts.eps;
            let plus = eval(&mut tape, params, &inputs);
            inputs[k].data_mut()[i] = orig - opts.eps;
            let minus = eval(&mut tape, params, &inputs);
            inputs[k].data_mut()[i] = orig;
            let n = (plus? - minus?) / (2.0 * opts.eps);
            let a = grad.as_ref().map_or(0.0, |g| g.data()[i]);
            compare(name, i, a, n, &mut report);
        }
    }
    Ok(report)
}

/// Runs `f` on `tape` and reduces its output to a scalar; returns the scalar and the input vars.
fn build<F>(
    tape: &mut Tape<f64>,
    params: &ParamStore<f64>,
    inputs: &[Tensor<f64>],
    projection: &mut Option<Tensor<f64>>,
    opts: &GradcheckOptions,
    f: &mut F,
) -> Result<(Var, Vec<Var>)>
where
    F: FnMut(&mut Tape<f64>, &ParamStore<f64>, &[Var]) -> Result<Var>,
{
    let xs: Vec<Var> = inputs.iter().map(|x| tape.input(x.clone())).collect();
    let out = f(tape, params, &xs)?;
    let shape = tape.shape(out)?;
    if shape.numel() == 1 {
        return Ok((out, xs));
    }
    let r = projection.get_or_insert_with(|| {
        let mut rng = Rng::new(opts.seed);
        let data = (0..shape.numel())
            .map(|_| rng.uniform_range(-1.0, 1.0))
            .collect();
        Tensor::from_vec_shape(data, shape).expect("shape of an existing tensor")
    });
    if r.shape() != shape {
        return Err(Error::ShapeMismatch {
            op: "gradcheck (output shape changed)",
            lhs: r.shape(),
            rhs: shape,
        });
    }
    let rv = tape.constant(r.clone());
    let prod = tape.mul(out, rv)?;
    Ok((tape.sum(prod)?, xs))
}
