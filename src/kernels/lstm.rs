//! LSTM step kernels, row by row over the batch, `T::LANES` hidden units at a time.
//!
//! Gates are laid out per row as `[i | f | g | o]`, each block `H` wide (PyTorch's order).

use crate::tensor::Float;

/// Forward step for `B = c_prev.len() / hidden` rows.
///
/// On entry `gates` `[B, 4H]` holds the pre-activations; on return the activated gates
/// `i = sigmoid, f = sigmoid, g = tanh, o = sigmoid` (what backward needs), with
/// `c = f * c_prev + i * g` and `h = o * tanh(c)` written to `c` and `h` `[B, H]`.
pub fn lstm_forward<T: Float>(
    gates: &mut [T],
    c_prev: &[T],
    c: &mut [T],
    h: &mut [T],
    hidden: usize,
) {
    let rows = c_prev.len() / hidden;
    assert!(
        gates.len() >= rows * 4 * hidden && c.len() >= rows * hidden && h.len() >= rows * hidden,
        "lstm_forward: buffers too small"
    );
    for b in 0..rows {
        let g = &mut gates[b * 4 * hidden..(b + 1) * 4 * hidden];
        let (gi, rest) = g.split_at_mut(hidden);
        let (gf, rest) = rest.split_at_mut(hidden);
        let (gg, go) = rest.split_at_mut(hidden);
        let r = b * hidden..(b + 1) * hidden;
        let (cp, cr, hr) = (&c_prev[r.clone()], &mut c[r.clone()], &mut h[r]);
        let mut j = 0;
        while j < hidden {
            let e = (j + T::LANES).min(hidden);
            let i = T::sigmoid_v(T::load_n(&gi[j..e]));
            let f = T::sigmoid_v(T::load_n(&gf[j..e]));
            let gv = T::tanh_v(T::load_n(&gg[j..e]));
            let o = T::sigmoid_v(T::load_n(&go[j..e]));
            let cn = T::mul_add(f, T::load_n(&cp[j..e]), i * gv);
            let hn = o * T::tanh_v(cn);
            T::store_n(i, &mut gi[j..e]);
            T::store_n(f, &mut gf[j..e]);
            T::store_n(gv, &mut gg[j..e]);
            T::store_n(o, &mut go[j..e]);
            T::store_n(cn, &mut cr[j..e]);
            T::store_n(hn, &mut hr[j..e]);
            j = e;
        }
    }
}

/// Backward step for `B = c_prev.len() / hidden` rows.
///
/// From the activated `gates`, `c_prev`, `c`, the gradient `dh` reaching `h_t` and `dc` reaching
/// `c_t`, writes the gate pre-activation gradients `dgates` `[B, 4H]` and replaces `dc` with the
/// gradient reaching `c_{t-1}`.
pub fn lstm_backward<T: Float>(
    gates: &[T],
    c_prev: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
    dgates: &mut [T],
    hidden: usize,
) {
    let rows = c_prev.len() / hidden;
    assert!(
        gates.len() >= rows * 4 * hidden
            && dgates.len() >= rows * 4 * hidden
            && c.len() >= rows * hidden
            && dh.len() >= rows * hidden
            && dc.len() >= rows * hidden,
        "lstm_backward: buffers too small"
    );
    let one = T::splat(T::ONE);
    for b in 0..rows {
        let g = &gates[b * 4 * hidden..(b + 1) * 4 * hidden];
        let (gi, rest) = g.split_at(hidden);
        let (gf, rest) = rest.split_at(hidden);
        let (gg, go) = rest.split_at(hidden);
        let dg = &mut dgates[b * 4 * hidden..(b + 1) * 4 * hidden];
        let (di, rest) = dg.split_at_mut(hidden);
        let (df, rest) = rest.split_at_mut(hidden);
        let (dgg, dgo) = rest.split_at_mut(hidden);
        let r = b * hidden..(b + 1) * hidden;
        let (cp, cr, dhr, dcr) = (
            &c_prev[r.clone()],
            &c[r.clone()],
            &dh[r.clone()],
            &mut dc[r],
        );
        let mut j = 0;
        while j < hidden {
            let e = (j + T::LANES).min(hidden);
            let (i, f) = (T::load_n(&gi[j..e]), T::load_n(&gf[j..e]));
            let (gv, o) = (T::load_n(&gg[j..e]), T::load_n(&go[j..e]));
            let tc = T::tanh_v(T::load_n(&cr[j..e]));
            let dhv = T::load_n(&dhr[j..e]);
            let dct = T::mul_add(dhv * o, one - tc * tc, T::load_n(&dcr[j..e]));
            T::store_n(dct * gv * i * (one - i), &mut di[j..e]);
            T::store_n(dct * T::load_n(&cp[j..e]) * f * (one - f), &mut df[j..e]);
            T::store_n(dct * i * (one - gv * gv), &mut dgg[j..e]);
            T::store_n(dhv * tc * o * (one - o), &mut dgo[j..e]);
            T::store_n(dct * f, &mut dcr[j..e]);
            j = e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{HIDDEN_SIZES, assert_close, tol, values};

    fn forward_scalar<T: Float>(
        gates: &mut [T],
        c_prev: &[T],
        c: &mut [T],
        h: &mut [T],
        hd: usize,
    ) {
        for b in 0..c_prev.len() / hd {
            let g = &mut gates[b * 4 * hd..(b + 1) * 4 * hd];
            for j in 0..hd {
                let i = g[j].sigmoid();
                let f = g[hd + j].sigmoid();
                let gg = g[2 * hd + j].tanh();
                let o = g[3 * hd + j].sigmoid();
                (g[j], g[hd + j], g[2 * hd + j], g[3 * hd + j]) = (i, f, gg, o);
                let cn = f * c_prev[b * hd + j] + i * gg;
                c[b * hd + j] = cn;
                h[b * hd + j] = o * cn.tanh();
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_scalar<T: Float>(
        gates: &[T],
        c_prev: &[T],
        c: &[T],
        dh: &[T],
        dc: &mut [T],
        dgates: &mut [T],
        hd: usize,
    ) {
        for b in 0..c_prev.len() / hd {
            let g = &gates[b * 4 * hd..(b + 1) * 4 * hd];
            let dg = &mut dgates[b * 4 * hd..(b + 1) * 4 * hd];
            for j in 0..hd {
                let k = b * hd + j;
                let (i, f, gg, o) = (g[j], g[hd + j], g[2 * hd + j], g[3 * hd + j]);
                let tc = c[k].tanh();
                let dct = dc[k] + dh[k] * o * (T::ONE - tc * tc);
                dg[j] = dct * gg * i * (T::ONE - i);
                dg[hd + j] = dct * c_prev[k] * f * (T::ONE - f);
                dg[2 * hd + j] = dct * i * (T::ONE - gg * gg);
                dg[3 * hd + j] = dh[k] * tc * o * (T::ONE - o);
                dc[k] = dct * f;
            }
        }
    }

    fn check<T: Float>() {
        let rows = 3;
        for hd in HIDDEN_SIZES {
            let pre: Vec<T> = values(hd as u64, rows * 4 * hd, 4.0);
            let c_prev: Vec<T> = values(hd as u64 + 1, rows * hd, 2.0);
            let (mut g1, mut g2) = (pre.clone(), pre);
            let (mut c1, mut c2) = (vec![T::ZERO; rows * hd], vec![T::ZERO; rows * hd]);
            let (mut h1, mut h2) = (c1.clone(), c1.clone());
            lstm_forward(&mut g1, &c_prev, &mut c1, &mut h1, hd);
            forward_scalar(&mut g2, &c_prev, &mut c2, &mut h2, hd);
            assert_close(&g1, &g2, tol::<T>(), "lstm gates");
            assert_close(&c1, &c2, tol::<T>(), "lstm c");
            assert_close(&h1, &h2, tol::<T>(), "lstm h");

            let dh: Vec<T> = values(hd as u64 + 2, rows * hd, 1.0);
            let dc0: Vec<T> = values(hd as u64 + 3, rows * hd, 1.0);
            let (mut dc1, mut dc2) = (dc0.clone(), dc0);
            let (mut d1, mut d2) = (vec![T::ZERO; rows * 4 * hd], vec![T::ZERO; rows * 4 * hd]);
            lstm_backward(&g2, &c_prev, &c2, &dh, &mut dc1, &mut d1, hd);
            backward_scalar(&g2, &c_prev, &c2, &dh, &mut dc2, &mut d2, hd);
            assert_close(&d1, &d2, tol::<T>(), "lstm dgates");
            assert_close(&dc1, &dc2, tol::<T>(), "lstm dc");
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
