//! Layer normalization of one row, forward and backward side by side (see
//! `nn::RecurrentConfig::layer_norm`): `LN(z; γ, β) = γ * x^ + β` with
//! `x^ = (z - mean(z)) / sqrt(var(z) + eps)`, the variance biased (divided by the row's length)
//! and `eps = 1e-5`. Plain loops over slices: a row costs `O(n)` against the `O(n H)` of the
//! product that made it.

use crate::tensor::Float;

/// The `eps` under the square root of the variance.
pub const EPS: f64 = 1e-5;

/// Normalizes `row` in place, `row = (row - mean) / sqrt(var + eps)`, and returns the inverse
/// standard deviation `1 / sqrt(var + eps)`, what [`backward_in_place`] needs beside the
/// normalized row. The mean and the variance are two passes over the row.
///
/// Panics if `row` is empty.
pub fn normalize_in_place<T: Float>(row: &mut [T]) -> T {
    assert!(!row.is_empty(), "normalize_in_place: empty row");
    let n = T::from_usize(row.len());
    let mean = row.iter().fold(T::ZERO, |s, &v| s + v) / n;
    let var = row
        .iter()
        .fold(T::ZERO, |s, &v| s + (v - mean) * (v - mean))
        / n;
    let inv = T::ONE / (var + T::from_f64(EPS)).sqrt();
    for v in row.iter_mut() {
        *v = (*v - mean) * inv;
    }
    inv
}

/// Backward of `y = γ * x^ + β` for one row: `d` holds `dy` on entry and `dz` on return,
/// `dz = inv * (γ dy - mean(γ dy) - x^ * mean(γ dy * x^))`; `dγ += dy * x^` and (when given)
/// `dβ += dy`. `xhat` is the row normalized by [`normalize_in_place`], `inv` what it returned.
///
/// Panics if the slices differ in length.
pub fn backward_in_place<T: Float>(
    d: &mut [T],
    gamma: &[T],
    xhat: &[T],
    inv: T,
    dgamma: &mut [T],
    dbeta: Option<&mut [T]>,
) {
    let n = d.len();
    assert!(
        gamma.len() == n && xhat.len() == n && dgamma.len() == n,
        "layer_norm backward: lengths differ"
    );
    let (mut m1, mut m2) = (T::ZERO, T::ZERO);
    for ((&dy, &g), (&x, dg)) in d.iter().zip(gamma).zip(xhat.iter().zip(dgamma.iter_mut())) {
        let gd = g * dy;
        m1 += gd;
        m2 += gd * x;
        *dg += dy * x;
    }
    if let Some(db) = dbeta {
        assert_eq!(db.len(), n, "layer_norm backward: lengths differ");
        for (b, &dy) in db.iter_mut().zip(d.iter()) {
            *b += dy;
        }
    }
    let nt = T::from_usize(n);
    let (m1, m2) = (m1 / nt, m2 / nt);
    for ((v, &g), &x) in d.iter_mut().zip(gamma).zip(xhat) {
        *v = inv * (g * *v - m1 - x * m2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `LN(z; γ, β)` straight from the formula, in f64.
    fn layer_norm(z: &[f64], gamma: &[f64], beta: &[f64]) -> Vec<f64> {
        let n = z.len() as f64;
        let mean = z.iter().sum::<f64>() / n;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        z.iter()
            .zip(gamma.iter().zip(beta))
            .map(|(v, (g, b))| g * (v - mean) / (var + EPS).sqrt() + b)
            .collect()
    }

    #[test]
    fn forward_matches_the_formula() {
        let z = [0.3, -1.2, 2.5, 0.0, 0.7];
        let mut row = z.to_vec();
        let inv = normalize_in_place(&mut row);
        let want = layer_norm(&z, &[1.0; 5], &[0.0; 5]);
        for (a, b) in row.iter().zip(&want) {
            assert!((a - b).abs() < 1e-14, "{a} vs {b}");
        }
        let var = want
            .iter()
            .zip(&z)
            .map(|(x, v)| v - x / inv)
            .collect::<Vec<_>>();
        // z - x^ / inv is the mean, the same for every entry.
        assert!(var.iter().all(|m| (m - var[0]).abs() < 1e-12));
        // A constant row normalizes to zeros (eps keeps it finite).
        let mut flat = [2.0f32; 4];
        normalize_in_place(&mut flat);
        assert_eq!(flat, [0.0; 4]);
    }

    /// The analytic gradients of `sum(w * LN(z; γ, β))` against central differences.
    #[test]
    fn backward_matches_finite_differences() {
        let z = [0.3, -1.2, 2.5, 0.1, 0.7, -0.4];
        let gamma = [1.1, 0.9, -0.5, 1.3, 0.2, 0.8];
        let beta = [0.1, -0.2, 0.3, 0.0, 0.5, -0.1];
        let w = [0.7, -0.3, 0.2, 1.0, -0.8, 0.4];
        let f = |z: &[f64], g: &[f64], b: &[f64]| -> f64 {
            layer_norm(z, g, b).iter().zip(&w).map(|(y, w)| y * w).sum()
        };
        let mut xhat = z.to_vec();
        let inv = normalize_in_place(&mut xhat);
        let mut d = w.to_vec();
        let (mut dg, mut db) = (vec![0.0; 6], vec![0.0; 6]);
        backward_in_place(&mut d, &gamma, &xhat, inv, &mut dg, Some(&mut db));
        let e = 1e-6;
        for k in 0..6 {
            let bump = |v: &[f64], s: f64| {
                let mut v = v.to_vec();
                v[k] += s;
                v
            };
            let num_z =
                (f(&bump(&z, e), &gamma, &beta) - f(&bump(&z, -e), &gamma, &beta)) / (2.0 * e);
            let num_g =
                (f(&z, &bump(&gamma, e), &beta) - f(&z, &bump(&gamma, -e), &beta)) / (2.0 * e);
            let num_b =
                (f(&z, &gamma, &bump(&beta, e)) - f(&z, &gamma, &bump(&beta, -e))) / (2.0 * e);
            assert!((d[k] - num_z).abs() < 1e-8, "dz[{k}] {} vs {num_z}", d[k]);
            assert!((dg[k] - num_g).abs() < 1e-8, "dγ[{k}] {} vs {num_g}", dg[k]);
            assert!((db[k] - num_b).abs() < 1e-8, "dβ[{k}] {} vs {num_b}", db[k]);
        }
    }
}
