//! The elementwise parts of the recurrent regularizers (see `nn::RecurrentConfig`): recurrent
//! dropout's masked state and masked gradient, and zoneout's blend of the previous and new
//! state, forward and backward side by side. Plain loops over slices, which the compiler
//! vectorizes; the fused layers call them once per step on `[rows, H]` blocks.

use crate::tensor::Float;

/// Recurrent dropout, forward: `a = m * h` (the state entering the recurrent product).
///
/// Panics if the slices differ in length.
pub fn mask<T: Float>(a: &mut [T], h: &[T], m: &[T]) {
    assert!(
        a.len() == h.len() && h.len() == m.len(),
        "mask: lengths differ"
    );
    for ((a, &h), &m) in a.iter_mut().zip(h).zip(m) {
        *a = m * h;
    }
}

/// Recurrent dropout, backward: `dh += m * da` (the gradient of `a = m * h` reaching `h`).
///
/// Panics if the slices differ in length.
pub fn add_masked<T: Float>(dh: &mut [T], da: &[T], m: &[T]) {
    assert!(
        dh.len() == da.len() && da.len() == m.len(),
        "add_masked: lengths differ"
    );
    for ((dh, &da), &m) in dh.iter_mut().zip(da).zip(m) {
        *dh += m * da;
    }
}

/// Zoneout, forward: `h = (1 - d) * h~ + d * h_prev`, with `h` holding `h~` on entry and `d`
/// the keep weights (0 or 1 in training, the probability in evaluation).
///
/// Panics if the slices differ in length.
pub fn zoneout_forward<T: Float>(h: &mut [T], h_prev: &[T], d: &[T]) {
    assert!(
        h.len() == h_prev.len() && h.len() == d.len(),
        "zoneout_forward: lengths differ"
    );
    for ((h, &hp), &d) in h.iter_mut().zip(h_prev).zip(d) {
        *h = (T::ONE - d) * *h + d * hp;
    }
}

/// Zoneout, backward: from the gradient `dh` reaching `h_t`, `kept = d * dh` (what reaches
/// `h_{t-1}` directly) and `dh = (1 - d) * dh` (what reaches the new value `h~_t`).
///
/// Panics if the slices differ in length.
pub fn zoneout_backward<T: Float>(dh: &mut [T], kept: &mut [T], d: &[T]) {
    assert!(
        dh.len() == kept.len() && dh.len() == d.len(),
        "zoneout_backward: lengths differ"
    );
    for ((g, k), &d) in dh.iter_mut().zip(kept.iter_mut()).zip(d) {
        *k = d * *g;
        *g = (T::ONE - d) * *g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::values;

    /// Forward and backward agree with the derivative: for `L = sum(r * h)`, `dL/dh~ = (1 - d)
    /// r` and `dL/dh_prev = d r`; and a keep weight of 1 returns `h_prev` exactly.
    #[test]
    fn zoneout_forward_and_backward_agree() {
        let n = 37;
        let h_new: Vec<f64> = values(1, n, 1.0);
        let h_prev: Vec<f64> = values(2, n, 1.0);
        let r: Vec<f64> = values(3, n, 1.0);
        let d: Vec<f64> = (0..n).map(|k| [0.0, 1.0, 0.25][k % 3]).collect();
        let mut h = h_new.clone();
        zoneout_forward(&mut h, &h_prev, &d);
        for k in 0..n {
            let want = (1.0 - d[k]) * h_new[k] + d[k] * h_prev[k];
            assert_eq!(h[k], want);
            if d[k] == 1.0 {
                assert_eq!(h[k], h_prev[k]);
            }
        }
        let (mut g, mut kept) = (r.clone(), vec![0.0; n]);
        zoneout_backward(&mut g, &mut kept, &d);
        for k in 0..n {
            assert_eq!(g[k], (1.0 - d[k]) * r[k]);
            assert_eq!(kept[k], d[k] * r[k]);
        }
    }

    #[test]
    fn masking_and_its_gradient() {
        let n = 19;
        let h: Vec<f32> = values(4, n, 1.0);
        let m: Vec<f32> = (0..n).map(|k| if k % 3 == 0 { 0.0 } else { 2.0 }).collect();
        let mut a = vec![0.0; n];
        mask(&mut a, &h, &m);
        let mut dh = vec![1.0f32; n];
        add_masked(&mut dh, &h, &m);
        for k in 0..n {
            assert_eq!(a[k], m[k] * h[k]);
            assert_eq!(dh[k], 1.0 + m[k] * h[k]);
        }
    }
}
