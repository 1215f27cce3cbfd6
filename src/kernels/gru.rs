//! GRU step kernels, row by row over the batch, `T::LANES` hidden units at a time.
//!
//! Gates r, z, n (PyTorch's order), the reset gate applied after the hidden product:
//! `n = tanh(xn + r * hn)` with `hn = W_hn h + b_hn`, `h' = (1 - z) * n + z * h`.

use crate::tensor::Float;

/// Forward step for `B = h_prev.len() / hidden` rows.
///
/// `xp` `[B, 3H]` is the input projection `X W_ih^T`, to which `b_ih` `[3H]` (when given) is
/// added here (else `xp` holds it already), `hp` `[B, 3H]` the hidden product (with `b_hh`).
/// Writes `h` `[B, H]` and keeps `r, z, n, hn` in `saved` `[B, 4H]` for backward.
pub fn gru_forward<T: Float>(
    xp: &[T],
    b_ih: Option<&[T]>,
    hp: &[T],
    h_prev: &[T],
    h: &mut [T],
    saved: &mut [T],
    hidden: usize,
) {
    let rows = h_prev.len() / hidden;
    assert!(
        xp.len() >= rows * 3 * hidden
            && hp.len() >= rows * 3 * hidden
            && h.len() >= rows * hidden
            && saved.len() >= rows * 4 * hidden
            && b_ih.is_none_or(|b| b.len() >= 3 * hidden),
        "gru_forward: buffers too small"
    );
    // `xp[r]` plus the bias's values at `r`, where there is a bias.
    let with_bias = |xp: &[T], r: std::ops::Range<usize>| match b_ih {
        Some(b) => T::load_n(&xp[r.clone()]) + T::load_n(&b[r]),
        None => T::load_n(&xp[r]),
    };
    for b in 0..rows {
        let x = &xp[b * 3 * hidden..(b + 1) * 3 * hidden];
        let hh = &hp[b * 3 * hidden..(b + 1) * 3 * hidden];
        let sv = &mut saved[b * 4 * hidden..(b + 1) * 4 * hidden];
        let (sr, rest) = sv.split_at_mut(hidden);
        let (sz, rest) = rest.split_at_mut(hidden);
        let (sn, shn) = rest.split_at_mut(hidden);
        let r0 = b * hidden..(b + 1) * hidden;
        let (hpr, hr) = (&h_prev[r0.clone()], &mut h[r0]);
        let (h2, h3) = (hidden, 2 * hidden);
        let mut j = 0;
        while j < hidden {
            let e = (j + T::LANES).min(hidden);
            let xr = with_bias(x, j..e);
            let xz = with_bias(x, h2 + j..h2 + e);
            let xn = with_bias(x, h3 + j..h3 + e);
            let r = T::sigmoid_v(xr + T::load_n(&hh[j..e]));
            let z = T::sigmoid_v(xz + T::load_n(&hh[h2 + j..h2 + e]));
            let hn = T::load_n(&hh[h3 + j..h3 + e]);
            let n = T::tanh_v(T::mul_add(r, hn, xn));
            let hp_ = T::load_n(&hpr[j..e]);
            T::store_n(T::mul_add(z, hp_ - n, n), &mut hr[j..e]);
            T::store_n(r, &mut sr[j..e]);
            T::store_n(z, &mut sz[j..e]);
            T::store_n(n, &mut sn[j..e]);
            T::store_n(hn, &mut shn[j..e]);
            j = e;
        }
    }
}

/// Backward step for `B = h_prev.len() / hidden` rows.
///
/// From `saved` (`r, z, n, hn`), `h_prev` and the gradient `dh` reaching `h_t`, writes the
/// gradients of the input projection `dxp` and of the hidden product `dhp` (both `[B, 3H]`) and
/// the direct part of the gradient reaching `h_{t-1}` (`dh * z`, to which the caller adds
/// `dhp W_hh`) into `dh_prev`.
pub fn gru_backward<T: Float>(
    saved: &[T],
    h_prev: &[T],
    dh: &[T],
    dxp: &mut [T],
    dhp: &mut [T],
    dh_prev: &mut [T],
    hidden: usize,
) {
    let rows = h_prev.len() / hidden;
    assert!(
        saved.len() >= rows * 4 * hidden
            && dh.len() >= rows * hidden
            && dxp.len() >= rows * 3 * hidden
            && dhp.len() >= rows * 3 * hidden
            && dh_prev.len() >= rows * hidden,
        "gru_backward: buffers too small"
    );
    let one = T::splat(T::ONE);
    for b in 0..rows {
        let sv = &saved[b * 4 * hidden..(b + 1) * 4 * hidden];
        let (sr, rest) = sv.split_at(hidden);
        let (sz, rest) = rest.split_at(hidden);
        let (sn, shn) = rest.split_at(hidden);
        let dx = &mut dxp[b * 3 * hidden..(b + 1) * 3 * hidden];
        let (dxr, rest) = dx.split_at_mut(hidden);
        let (dxz, dxn) = rest.split_at_mut(hidden);
        let dhh = &mut dhp[b * 3 * hidden..(b + 1) * 3 * hidden];
        let (dhr, rest) = dhh.split_at_mut(hidden);
        let (dhz, dhn) = rest.split_at_mut(hidden);
        let r0 = b * hidden..(b + 1) * hidden;
        let (hpr, dhv_r, dpr) = (&h_prev[r0.clone()], &dh[r0.clone()], &mut dh_prev[r0]);
        let mut j = 0;
        while j < hidden {
            let e = (j + T::LANES).min(hidden);
            let (r, z) = (T::load_n(&sr[j..e]), T::load_n(&sz[j..e]));
            let (n, hn) = (T::load_n(&sn[j..e]), T::load_n(&shn[j..e]));
            let d = T::load_n(&dhv_r[j..e]);
            let dn_pre = d * (one - z) * (one - n * n);
            let dz_pre = d * (T::load_n(&hpr[j..e]) - n) * z * (one - z);
            let dr_pre = dn_pre * hn * r * (one - r);
            T::store_n(dr_pre, &mut dxr[j..e]);
            T::store_n(dz_pre, &mut dxz[j..e]);
            T::store_n(dn_pre, &mut dxn[j..e]);
            T::store_n(dr_pre, &mut dhr[j..e]);
            T::store_n(dz_pre, &mut dhz[j..e]);
            T::store_n(dn_pre * r, &mut dhn[j..e]);
            T::store_n(d * z, &mut dpr[j..e]);
            j = e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{HIDDEN_SIZES, assert_close, tol, values};

    fn forward_scalar<T: Float>(
        xp: &[T],
        hp: &[T],
        h_prev: &[T],
        h: &mut [T],
        sv: &mut [T],
        hd: usize,
    ) {
        for b in 0..h_prev.len() / hd {
            let (x, hh) = (&xp[b * 3 * hd..], &hp[b * 3 * hd..]);
            let s = &mut sv[b * 4 * hd..(b + 1) * 4 * hd];
            for j in 0..hd {
                let r = (x[j] + hh[j]).sigmoid();
                let z = (x[hd + j] + hh[hd + j]).sigmoid();
                let hn = hh[2 * hd + j];
                let n = (x[2 * hd + j] + r * hn).tanh();
                h[b * hd + j] = (T::ONE - z) * n + z * h_prev[b * hd + j];
                (s[j], s[hd + j], s[2 * hd + j], s[3 * hd + j]) = (r, z, n, hn);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_scalar<T: Float>(
        sv: &[T],
        h_prev: &[T],
        dh: &[T],
        dxp: &mut [T],
        dhp: &mut [T],
        dh_prev: &mut [T],
        hd: usize,
    ) {
        for b in 0..h_prev.len() / hd {
            let s = &sv[b * 4 * hd..(b + 1) * 4 * hd];
            let o = b * 3 * hd;
            for j in 0..hd {
                let k = b * hd + j;
                let (r, z, n, hn) = (s[j], s[hd + j], s[2 * hd + j], s[3 * hd + j]);
                let d = dh[k];
                let dn_pre = d * (T::ONE - z) * (T::ONE - n * n);
                let dz_pre = d * (h_prev[k] - n) * z * (T::ONE - z);
                let dr_pre = dn_pre * hn * r * (T::ONE - r);
                (dxp[o + j], dxp[o + hd + j], dxp[o + 2 * hd + j]) = (dr_pre, dz_pre, dn_pre);
                (dhp[o + j], dhp[o + hd + j], dhp[o + 2 * hd + j]) = (dr_pre, dz_pre, dn_pre * r);
                dh_prev[k] = d * z;
            }
        }
    }

    fn check<T: Float>() {
        let rows = 3;
        for hd in HIDDEN_SIZES {
            let xp: Vec<T> = values(hd as u64, rows * 3 * hd, 3.0);
            let hp: Vec<T> = values(hd as u64 + 1, rows * 3 * hd, 3.0);
            let h_prev: Vec<T> = values(hd as u64 + 2, rows * hd, 1.0);
            let (mut h1, mut h2) = (vec![T::ZERO; rows * hd], vec![T::ZERO; rows * hd]);
            let (mut s1, mut s2) = (vec![T::ZERO; rows * 4 * hd], vec![T::ZERO; rows * 4 * hd]);
            gru_forward(&xp, None, &hp, &h_prev, &mut h1, &mut s1, hd);
            forward_scalar(&xp, &hp, &h_prev, &mut h2, &mut s2, hd);
            assert_close(&h1, &h2, tol::<T>(), "gru h");
            assert_close(&s1, &s2, tol::<T>(), "gru saved");
            // A bias given apart is added to the projection as if it held it: same bits.
            let b_ih: Vec<T> = values(hd as u64 + 4, 3 * hd, 1.0);
            let xp_b: Vec<T> = (xp.chunks_exact(3 * hd))
                .flat_map(|row| row.iter().zip(&b_ih).map(|(&x, &b)| x + b))
                .collect();
            let (mut h3, mut s3) = (h1.clone(), s1.clone());
            gru_forward(&xp, Some(&b_ih), &hp, &h_prev, &mut h1, &mut s1, hd);
            gru_forward(&xp_b, None, &hp, &h_prev, &mut h3, &mut s3, hd);
            assert_eq!(h1, h3, "gru h with b_ih apart");
            assert_eq!(s1, s3, "gru saved with b_ih apart");

            let dh: Vec<T> = values(hd as u64 + 3, rows * hd, 1.0);
            let z3 = vec![T::ZERO; rows * 3 * hd];
            let (mut dx1, mut dx2, mut dh1, mut dh2) = (z3.clone(), z3.clone(), z3.clone(), z3);
            let (mut p1, mut p2) = (vec![T::ZERO; rows * hd], vec![T::ZERO; rows * hd]);
            gru_backward(&s2, &h_prev, &dh, &mut dx1, &mut dh1, &mut p1, hd);
            backward_scalar(&s2, &h_prev, &dh, &mut dx2, &mut dh2, &mut p2, hd);
            assert_close(&dx1, &dx2, tol::<T>(), "gru dxp");
            assert_close(&dh1, &dh2, tol::<T>(), "gru dhp");
            assert_close(&p1, &p2, tol::<T>(), "gru dh_prev");
        }
    }

    #[test]
    fn simd_matches_scalar_f32() {
        check::<f32>();
    }

    #[test]
    fn simd_matches_scalar_f64() {
        check::<f64>();
    }
}
