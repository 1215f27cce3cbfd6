//! Softmax cross-entropy over the rows of a matrix of logits, forward and backward side by
//! side: the loss of a model with a class (or next-symbol) head at every position.
//!
//! For a row `x` of `C` logits and its target class `t`, with `m = max_k x_k`:
//!
//! - forward: `p_k = exp(x_k - m) / z` with `z = sum_k exp(x_k - m)`, and the row's loss
//!   `-log p_t = ln z - (x_t - m)`;
//! - backward: `dL/dx_k = g (p_k - [k = t])` for the row's share `g` of the loss's gradient.
//!
//! The exponentials run on the vector `exp` of [`super::simd`] (1 ulp): with a vocabulary of
//! thousands of symbols they are most of the loss's time. Each row's values depend on that row
//! alone, so spreading rows over threads changes nothing in them.

use crate::tensor::Float;

/// `max(x)`, by eight independent running maxima (the compiler keeps them in vector lanes).
/// `-inf` for an empty `x`.
fn row_max<T: Float>(x: &[T]) -> T {
    let neg_inf = T::from_f64(f64::NEG_INFINITY);
    let mut acc = [neg_inf; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let tail = chunks.remainder().iter().copied();
    acc.into_iter().chain(tail).fold(neg_inf, T::max)
}

/// The softmax of one row of logits `x` into `p` (the same length), returning `(m, z)`: the
/// row's largest logit and the sum of `exp(x_k - m)`, from which its loss is `ln z - (x_t -
/// m)`. Panics if the lengths differ.
pub fn softmax_row<T: Float>(x: &[T], p: &mut [T]) -> (T, T) {
    assert_eq!(x.len(), p.len(), "softmax_row: lengths differ");
    let m = row_max(x);
    let ms = T::splat(m);
    let l = T::LANES;
    let whole = x.len() / l * l;
    let mut acc = T::splat(T::ZERO);
    for (xc, pc) in x[..whole]
        .chunks_exact(l)
        .zip(p[..whole].chunks_exact_mut(l))
    {
        let e = T::exp_v(T::load_n(xc) - ms);
        T::store_n(e, pc);
        acc = acc + e;
    }
    // The tail's padded lanes would add exp(-m): its values are summed one by one.
    let (xt, pt) = (&x[whole..], &mut p[whole..]);
    T::store_n(T::exp_v(T::load_n(xt) - ms), pt);
    let z = pt.iter().fold(T::reduce_add(acc), |s, &v| s + v);
    let zs = T::splat(z);
    for pc in p.chunks_mut(l) {
        T::store_n(T::load_n(pc) / zs, pc);
    }
    (m, z)
}

/// The gradient of one row's loss: `d_k += g (p_k - [k = t])`. Panics if the lengths differ or
/// `t` is not a class of the row.
pub fn softmax_row_backward<T: Float>(p: &[T], t: usize, g: T, d: &mut [T]) {
    assert_eq!(p.len(), d.len(), "softmax_row_backward: lengths differ");
    assert!(
        t < p.len(),
        "softmax_row_backward: class {t} of {}",
        p.len()
    );
    for (d, &p) in d.iter_mut().zip(p) {
        *d += g * p;
    }
    d[t] -= g;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row as the chapter writes it, in f64 with `std`'s `exp`.
    fn scalar(x: &[f64]) -> (Vec<f64>, f64, f64) {
        let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|&v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        (e.iter().map(|v| v / z).collect(), m, z)
    }

    fn row(c: usize, seed: u64, scale: f64) -> Vec<f64> {
        let mut rng = crate::Rng::new(seed);
        (0..c).map(|_| rng.uniform_range(-scale, scale)).collect()
    }

    /// Checks rows against [`scalar`] on the same (rounded) logits. Bounds, relative, with
    /// `eps` the type's epsilon: `exp` 1 ulp plus the rounding of `x_k - m` (`|x_k - m| eps` in
    /// the exponent), the sum `C eps` more, the division one more.
    fn check<T: Float>(eps: f64) {
        // Every tail length, one value to a few vectors, and logits far apart (no long rows
        // under Miri: the code has no `unsafe`, and Miri interprets each `exp` slowly).
        let (vectors, long): (usize, &[usize]) = if cfg!(miri) {
            (1, &[])
        } else {
            (3, &[86, 1000])
        };
        let widths = (1..=vectors * T::LANES + 1).chain(long.iter().copied());
        for (i, c) in widths.enumerate() {
            for scale in [1.0, 30.0] {
                let x: Vec<T> = row(c, i as u64, scale)
                    .iter()
                    .map(|&v| T::from_f64(v))
                    .collect();
                let x64: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
                let (want, m_want, z_want) = scalar(&x64);
                let mut p = vec![T::ZERO; c];
                let (m, z) = softmax_row(&x, &mut p);
                assert_eq!(m.to_f64(), m_want, "max, C = {c}");
                let term = |k: usize| eps * (2.0 + (x64[k] - m_want).abs());
                let z_tol = eps * (2.0 + 2.0 * scale + c as f64);
                assert!((z.to_f64() - z_want).abs() <= z_tol * z_want, "z, C = {c}");
                for (k, (&g, &w)) in p.iter().zip(&want).enumerate() {
                    let e = (g.to_f64() - w).abs();
                    let tol = term(k) + z_tol + eps;
                    assert!(e <= tol * w, "p[{k}], C = {c}: {g:?} against {w:e}");
                }
                let sum: f64 = p.iter().map(|v| v.to_f64()).sum();
                assert!((sum - 1.0).abs() <= z_tol * 2.0, "sum {sum}, C = {c}");
            }
        }
    }

    #[test]
    fn softmax_rows_match_the_scalar_formula() {
        check::<f64>(f64::EPSILON);
        check::<f32>(f64::from(f32::EPSILON));
    }

    #[test]
    fn large_and_infinite_logits_stay_finite() {
        let x = [1e30f32, 1e30, -1e30, f32::NEG_INFINITY];
        let mut p = [0f32; 4];
        let (m, z) = softmax_row(&x, &mut p);
        assert_eq!((m, z), (1e30, 2.0));
        assert_eq!(p, [0.5, 0.5, 0.0, 0.0]);
        // A row of one class is certain.
        let mut q = [0f64];
        assert_eq!(softmax_row(&[-7.5f64], &mut q), (-7.5, 1.0));
        assert_eq!(q, [1.0]);
    }

    #[test]
    fn the_backward_adds_g_times_p_minus_onehot() {
        let p = [0.1f64, 0.2, 0.3, 0.4];
        let mut d = [1.0f64, 1.0, 1.0, 1.0];
        softmax_row_backward(&p, 2, 0.5, &mut d);
        let want = [1.05, 1.1, 1.0 + 0.5 * (0.3 - 1.0), 1.2];
        for (g, w) in d.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{d:?}");
        }
    }
}
