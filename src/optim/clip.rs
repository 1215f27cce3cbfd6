//! Gradient clipping against exploding gradients: by global norm (the chapter's rule, as
//! `torch.nn.utils.clip_grad_norm_`) and by value.

use crate::tape::Grads;
use crate::tensor::{Float, sum_f64};
use crate::{Error, Result};

/// The global L2 norm of all parameter gradients, `sqrt(sum over params of ||g||^2)`,
/// accumulated in f64.
pub fn grad_norm<T: Float>(grads: &Grads<'_, T>) -> f64 {
    grads
        .param_ids()
        .into_iter()
        .filter_map(|id| grads.param(id))
        .map(|g| sum_f64(g.data(), |x| x * x))
        .sum::<f64>()
        .sqrt()
}

/// Rescales all parameter gradients together when their global L2 norm exceeds `max_norm`:
/// `g <- g * max_norm / (norm + 1e-6)` when that factor is below 1, as
/// `torch.nn.utils.clip_grad_norm_` does. Returns the norm *before* clipping.
///
/// This is the chapter's remedy for exploding gradients (if `||g|| > tau`, rescale `g` to norm
/// `tau`), with PyTorch's `1e-6` guard in the denominator: the clipped norm is
/// `tau * norm / (norm + 1e-6)`, below `tau` by a relative `1e-6 / norm` at most.
///
/// A non-finite norm (a NaN or infinite gradient) is an [`Error::NonFinite`] and leaves the
/// gradients unchanged; a `max_norm` that is not finite and positive is [`Error::Invalid`].
///
/// ```
/// use recur::optim::clip_grad_norm;
/// use recur::{ParamStore, Tape, Tensor};
/// let mut ps = ParamStore::<f64>::new();
/// let w = ps.add("w", Tensor::from_vec(vec![3.0, 4.0], &[2])?)?;
/// let mut tape = Tape::new();
/// let wv = tape.param(&ps, w)?;
/// let sq = tape.mul(wv, wv)?;
/// let loss = tape.sum(sq)?; // gradient 2w = [6, 8], norm 10
/// let mut grads = tape.backward(loss)?;
/// let norm = clip_grad_norm(&mut grads, 5.0)?;
/// assert_eq!(norm, 10.0);
/// assert!((grads.param(w).unwrap().norm() - 5.0).abs() < 1e-6);
/// # Ok::<(), recur::Error>(())
/// ```
pub fn clip_grad_norm<T: Float>(grads: &mut Grads<'_, T>, max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::invalid(
            "clip_grad_norm",
            format!("max_norm must be finite and positive, got {max_norm}"),
        ));
    }
    let norm = grad_norm(grads);
    if !norm.is_finite() {
        return Err(Error::NonFinite {
            op: "clip_grad_norm (global gradient norm)".into(),
            index: 0,
            value: norm,
        });
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = T::from_f64(coef);
        for id in grads.param_ids() {
            if let Some(g) = grads.param_mut(id) {
                g.data_mut().iter_mut().for_each(|x| *x *= c);
            }
        }
    }
    Ok(norm)
}

/// Clamps every parameter-gradient element to `[-clip, clip]`
/// (`torch.nn.utils.clip_grad_value_`). `clip` must be finite and positive. NaNs are left as
/// they are.
pub fn clip_grad_value<T: Float>(grads: &mut Grads<'_, T>, clip: f64) -> Result<()> {
    if !(clip.is_finite() && clip > 0.0) {
        return Err(Error::invalid(
            "clip_grad_value",
            format!("clip must be finite and positive, got {clip}"),
        ));
    }
    let (lo, hi) = (T::from_f64(-clip), T::from_f64(clip));
    for id in grads.param_ids() {
        if let Some(g) = grads.param_mut(id) {
            for x in g.data_mut() {
                if *x < lo {
                    *x = lo;
                } else if *x > hi {
                    *x = hi;
                }
            }
        }
    }
    Ok(())
}
