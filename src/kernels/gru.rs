//! GRU step kernels, row by row over the batch, two vectors of hidden units at a time
//! ([`super::block`]).
//!
//! Gates r, z, n (PyTorch's order), the reset gate applied after the hidden product:
//! `n = tanh(xn + r * hn)` with `hn = W_hn h + b_hn`, `h' = (1 - z) * n + z * h`.

use std::ops::Range;

use super::block::{Block, Units, for_each_block};
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
    let gates = |v| split_gates(v, hidden);
    for b in 0..rows {
        let sv = &mut saved[b * 4 * hidden..(b + 1) * 4 * hidden];
        let (r, rest) = sv.split_at_mut(hidden);
        let (z, rest) = rest.split_at_mut(hidden);
        let (n, hn) = rest.split_at_mut(hidden);
        let r0 = b * hidden..(b + 1) * hidden;
        let mut row = ForwardRow {
            x: gates(&xp[b * 3 * hidden..(b + 1) * 3 * hidden]),
            b_ih: b_ih.map(gates),
            hh: gates(&hp[b * 3 * hidden..(b + 1) * 3 * hidden]),
            h_prev: &h_prev[r0.clone()],
            h: &mut h[r0],
            saved: [r, z, n, hn],
        };
        for_each_block(hidden, &mut row);
    }
}

/// One row of [`gru_forward`]: the r, z, n parts of the projections and of `b_ih`, the
/// states, and the saved `r, z, n, hn`.
struct ForwardRow<'a, T> {
    x: [&'a [T]; 3],
    b_ih: Option<[&'a [T]; 3]>,
    hh: [&'a [T]; 3],
    h_prev: &'a [T],
    h: &'a mut [T],
    saved: [&'a mut [T]; 4],
}

impl<T: Float> Units<T> for ForwardRow<'_, T> {
    #[inline(always)]
    fn units<B: Block<T>>(&mut self, u: Range<usize>) {
        // Written out gate by gate: a closure per gate, or `map` over the arrays, was left
        // uninlined by the compiler (5 % of the small GRU's step spent in `try_map` alone).
        let (x, hh) = (&self.x, &self.hh);
        let [xr, xz, xn] = match self.b_ih {
            Some([br, bz, bn]) => [
                B::load(&x[0][u.clone()]) + B::load(&br[u.clone()]),
                B::load(&x[1][u.clone()]) + B::load(&bz[u.clone()]),
                B::load(&x[2][u.clone()]) + B::load(&bn[u.clone()]),
            ],
            None => [
                B::load(&x[0][u.clone()]),
                B::load(&x[1][u.clone()]),
                B::load(&x[2][u.clone()]),
            ],
        };
        let r = (xr + B::load(&hh[0][u.clone()])).sigmoid();
        let z = (xz + B::load(&hh[1][u.clone()])).sigmoid();
        let hn = B::load(&hh[2][u.clone()]);
        let n = r.mul_add(hn, xn).tanh();
        let h_prev = B::load(&self.h_prev[u.clone()]);
        z.mul_add(h_prev - n, n).store(&mut self.h[u.clone()]);
        let [sr, sz, sn, shn] = &mut self.saved;
        r.store(&mut sr[u.clone()]);
        z.store(&mut sz[u.clone()]);
        n.store(&mut sn[u.clone()]);
        hn.store(&mut shn[u]);
    }
}

/// The r, z, n parts `[H]` of a row `[3H]`.
fn split_gates<T>(row: &[T], hidden: usize) -> [&[T]; 3] {
    let (r, rest) = row.split_at(hidden);
    let (z, n) = rest.split_at(hidden);
    [r, z, &n[..hidden]]
}

/// [`split_gates`] for a row to write.
fn split_gates_mut<T>(row: &mut [T], hidden: usize) -> [&mut [T]; 3] {
    let (r, rest) = row.split_at_mut(hidden);
    let (z, n) = rest.split_at_mut(hidden);
    [r, z, &mut n[..hidden]]
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
    for b in 0..rows {
        let sv = &saved[b * 4 * hidden..(b + 1) * 4 * hidden];
        let (r, rest) = sv.split_at(hidden);
        let (z, rest) = rest.split_at(hidden);
        let (n, hn) = rest.split_at(hidden);
        let r0 = b * hidden..(b + 1) * hidden;
        let mut row = BackwardRow {
            saved: [r, z, n, &hn[..hidden]],
            h_prev: &h_prev[r0.clone()],
            dh: &dh[r0.clone()],
            dxp: split_gates_mut(&mut dxp[b * 3 * hidden..(b + 1) * 3 * hidden], hidden),
            dhp: split_gates_mut(&mut dhp[b * 3 * hidden..(b + 1) * 3 * hidden], hidden),
            dh_prev: &mut dh_prev[r0],
        };
        for_each_block(hidden, &mut row);
    }
}

/// One row of [`gru_backward`]: the saved `r, z, n, hn`, the state and gradient in, and the
/// r, z, n parts of both gradients out.
struct BackwardRow<'a, T> {
    saved: [&'a [T]; 4],
    h_prev: &'a [T],
    dh: &'a [T],
    dxp: [&'a mut [T]; 3],
    dhp: [&'a mut [T]; 3],
    dh_prev: &'a mut [T],
}

impl<T: Float> Units<T> for BackwardRow<'_, T> {
    #[inline(always)]
    fn units<B: Block<T>>(&mut self, u: Range<usize>) {
        let one = B::splat(T::ONE);
        let [sr, sz, sn, shn] = self.saved;
        let (r, z) = (B::load(&sr[u.clone()]), B::load(&sz[u.clone()]));
        let (n, hn) = (B::load(&sn[u.clone()]), B::load(&shn[u.clone()]));
        let d = B::load(&self.dh[u.clone()]);
        let dn_pre = d * (one - z) * (one - n * n);
        let dz_pre = d * (B::load(&self.h_prev[u.clone()]) - n) * z * (one - z);
        let dr_pre = dn_pre * hn * r * (one - r);
        let [dxr, dxz, dxn] = &mut self.dxp;
        dr_pre.store(&mut dxr[u.clone()]);
        dz_pre.store(&mut dxz[u.clone()]);
        dn_pre.store(&mut dxn[u.clone()]);
        let [dhr, dhz, dhn] = &mut self.dhp;
        dr_pre.store(&mut dhr[u.clone()]);
        dz_pre.store(&mut dhz[u.clone()]);
        (dn_pre * r).store(&mut dhn[u.clone()]);
        (d * z).store(&mut self.dh_prev[u]);
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
        hidden: usize,
    ) {
        for b in 0..h_prev.len() / hidden {
            let (x, hh) = (&xp[b * 3 * hidden..], &hp[b * 3 * hidden..]);
            let s = &mut sv[b * 4 * hidden..(b + 1) * 4 * hidden];
            for j in 0..hidden {
                let r = (x[j] + hh[j]).sigmoid();
                let z = (x[hidden + j] + hh[hidden + j]).sigmoid();
                let hn = hh[2 * hidden + j];
                let n = (x[2 * hidden + j] + r * hn).tanh();
                h[b * hidden + j] = (T::ONE - z) * n + z * h_prev[b * hidden + j];
                (s[j], s[hidden + j], s[2 * hidden + j], s[3 * hidden + j]) = (r, z, n, hn);
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
        hidden: usize,
    ) {
        for b in 0..h_prev.len() / hidden {
            let s = &sv[b * 4 * hidden..(b + 1) * 4 * hidden];
            let o = b * 3 * hidden;
            for j in 0..hidden {
                let k = b * hidden + j;
                let (r, z, n, hn) = (s[j], s[hidden + j], s[2 * hidden + j], s[3 * hidden + j]);
                let d = dh[k];
                let dn_pre = d * (T::ONE - z) * (T::ONE - n * n);
                let dz_pre = d * (h_prev[k] - n) * z * (T::ONE - z);
                let dr_pre = dn_pre * hn * r * (T::ONE - r);
                (dxp[o + j], dxp[o + hidden + j], dxp[o + 2 * hidden + j]) =
                    (dr_pre, dz_pre, dn_pre);
                (dhp[o + j], dhp[o + hidden + j], dhp[o + 2 * hidden + j]) =
                    (dr_pre, dz_pre, dn_pre * r);
                dh_prev[k] = d * z;
            }
        }
    }

    fn check<T: Float>() {
        let rows = 3;
        for hidden in HIDDEN_SIZES {
            let xp: Vec<T> = values(hidden as u64, rows * 3 * hidden, 3.0);
            let hp: Vec<T> = values(hidden as u64 + 1, rows * 3 * hidden, 3.0);
            let h_prev: Vec<T> = values(hidden as u64 + 2, rows * hidden, 1.0);
            let (mut h1, mut h2) = (vec![T::ZERO; rows * hidden], vec![T::ZERO; rows * hidden]);
            let (mut s1, mut s2) = (
                vec![T::ZERO; rows * 4 * hidden],
                vec![T::ZERO; rows * 4 * hidden],
            );
            gru_forward(&xp, None, &hp, &h_prev, &mut h1, &mut s1, hidden);
            forward_scalar(&xp, &hp, &h_prev, &mut h2, &mut s2, hidden);
            assert_close(&h1, &h2, tol::<T>(), "gru h");
            assert_close(&s1, &s2, tol::<T>(), "gru saved");
            // A bias given apart is added to the projection as if it held it: same bits.
            let b_ih: Vec<T> = values(hidden as u64 + 4, 3 * hidden, 1.0);
            let xp_b: Vec<T> = (xp.chunks_exact(3 * hidden))
                .flat_map(|row| row.iter().zip(&b_ih).map(|(&x, &b)| x + b))
                .collect();
            let (mut h3, mut s3) = (h1.clone(), s1.clone());
            gru_forward(&xp, Some(&b_ih), &hp, &h_prev, &mut h1, &mut s1, hidden);
            gru_forward(&xp_b, None, &hp, &h_prev, &mut h3, &mut s3, hidden);
            assert_eq!(h1, h3, "gru h with b_ih apart");
            assert_eq!(s1, s3, "gru saved with b_ih apart");

            let dh: Vec<T> = values(hidden as u64 + 3, rows * hidden, 1.0);
            let z3 = vec![T::ZERO; rows * 3 * hidden];
            let (mut dx1, mut dx2, mut dh1, mut dh2) = (z3.clone(), z3.clone(), z3.clone(), z3);
            let (mut p1, mut p2) = (vec![T::ZERO; rows * hidden], vec![T::ZERO; rows * hidden]);
            gru_backward(&s2, &h_prev, &dh, &mut dx1, &mut dh1, &mut p1, hidden);
            backward_scalar(&s2, &h_prev, &dh, &mut dx2, &mut dh2, &mut p2, hidden);
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
