//! GRU step kernels, row by row over the batch, two vectors of hidden units at a time
//! (`kernels::block`).
//!
//! Gates r, z, n (PyTorch's order), the reset gate applied after the hidden product:
//! `n = tanh(xn + r * hn)` with `hn = W_hn h + b_hn`, `h' = (1 - z) * n + z * h`.

use std::ops::Range;

use super::block::{Block, Units, checked_rows, for_each_block, row_blocks, row_blocks_mut};
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
    let bufs = [(xp.len(), 3), (hp.len(), 3), (h.len(), 1), (saved.len(), 4)];
    let rows = checked_rows("gru_forward", h_prev.len(), hidden, &bufs);
    assert!(
        b_ih.is_none_or(|b| b.len() >= 3 * hidden),
        "gru_forward: b_ih too small"
    );
    for b in 0..rows {
        let r0 = b * hidden..(b + 1) * hidden;
        let mut row = ForwardRow {
            x: row_blocks(xp, b, hidden),
            b_ih: b_ih.map(|v| row_blocks(v, 0, hidden)),
            hh: row_blocks(hp, b, hidden),
            h_prev: &h_prev[r0.clone()],
            h: &mut h[r0],
            saved: row_blocks_mut(saved, b, hidden),
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
        // uninlined by the compiler, a call per gate and block in the step's hottest loop.
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
    let bufs = [
        (saved.len(), 4),
        (dh.len(), 1),
        (dxp.len(), 3),
        (dhp.len(), 3),
        (dh_prev.len(), 1),
    ];
    let rows = checked_rows("gru_backward", h_prev.len(), hidden, &bufs);
    for b in 0..rows {
        let r0 = b * hidden..(b + 1) * hidden;
        let mut row = BackwardRow {
            saved: row_blocks(saved, b, hidden),
            h_prev: &h_prev[r0.clone()],
            dh: &dh[r0.clone()],
            dxp: row_blocks_mut(dxp, b, hidden),
            dhp: row_blocks_mut(dhp, b, hidden),
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
    use crate::kernels::testutil::{
        HIDDEN_SIZES, assert_close, set_unit_gates, simd_matches_scalar_in_both_precisions, tol,
        unit_gates, values,
    };

    /// One unit of [`gru_forward`] in scalar code: from the `[r, z, n]` parts of the input
    /// projection and of the hidden product, and `h_prev`, the new `h` and the saved
    /// `[r, z, n, hn]`.
    fn forward_unit<T: Float>(
        [xr, xz, xn]: [T; 3],
        [hr, hz, hn]: [T; 3],
        h_prev: T,
    ) -> (T, [T; 4]) {
        let r = (xr + hr).sigmoid();
        let z = (xz + hz).sigmoid();
        let n = (xn + r * hn).tanh();
        ((T::ONE - z) * n + z * h_prev, [r, z, n, hn])
    }

    /// One unit of [`gru_backward`] in scalar code: the `[r, z, n]` gradients of the input
    /// projection and of the hidden product, and the direct gradient reaching `h_{t-1}`.
    fn backward_unit<T: Float>([r, z, n, hn]: [T; 4], h_prev: T, d: T) -> ([T; 3], [T; 3], T) {
        let dn_pre = d * (T::ONE - z) * (T::ONE - n * n);
        let dz_pre = d * (h_prev - n) * z * (T::ONE - z);
        let dr_pre = dn_pre * hn * r * (T::ONE - r);
        (
            [dr_pre, dz_pre, dn_pre],
            [dr_pre, dz_pre, dn_pre * r],
            d * z,
        )
    }

    fn check<T: Float>() {
        let rows = 3;
        for hidden in HIDDEN_SIZES {
            let n = rows * hidden;
            let xp: Vec<T> = values(hidden as u64, 3 * n, 3.0);
            let hp: Vec<T> = values(hidden as u64 + 1, 3 * n, 3.0);
            let h_prev: Vec<T> = values(hidden as u64 + 2, n, 1.0);
            let (mut h, mut saved) = (vec![T::ZERO; n], vec![T::ZERO; 4 * n]);
            gru_forward(&xp, None, &hp, &h_prev, &mut h, &mut saved, hidden);
            let (mut want_h, mut want_s) = (vec![T::ZERO; n], vec![T::ZERO; 4 * n]);
            for k in 0..n {
                let (x, hh) = (unit_gates(&xp, k, hidden), unit_gates(&hp, k, hidden));
                let (hk, s) = forward_unit(x, hh, h_prev[k]);
                want_h[k] = hk;
                set_unit_gates(&mut want_s, k, hidden, s);
            }
            assert_close(&h, &want_h, tol::<T>(), "gru h");
            assert_close(&saved, &want_s, tol::<T>(), "gru saved");
            // A bias given apart is added to the projection as if it held it: same bits.
            let b_ih: Vec<T> = values(hidden as u64 + 4, 3 * hidden, 1.0);
            let xp_b: Vec<T> = (xp.chunks_exact(3 * hidden))
                .flat_map(|row| row.iter().zip(&b_ih).map(|(&x, &b)| x + b))
                .collect();
            let (mut h3, mut s3) = (h.clone(), saved.clone());
            gru_forward(&xp, Some(&b_ih), &hp, &h_prev, &mut h, &mut saved, hidden);
            gru_forward(&xp_b, None, &hp, &h_prev, &mut h3, &mut s3, hidden);
            assert_eq!(h, h3, "gru h with b_ih apart");
            assert_eq!(saved, s3, "gru saved with b_ih apart");

            let dh: Vec<T> = values(hidden as u64 + 3, n, 1.0);
            let (mut dxp, mut dhp) = (vec![T::ZERO; 3 * n], vec![T::ZERO; 3 * n]);
            let mut dh_prev = vec![T::ZERO; n];
            gru_backward(
                &want_s,
                &h_prev,
                &dh,
                &mut dxp,
                &mut dhp,
                &mut dh_prev,
                hidden,
            );
            let (mut want_dx, mut want_dhp) = (vec![T::ZERO; 3 * n], vec![T::ZERO; 3 * n]);
            let mut want_dp = vec![T::ZERO; n];
            for k in 0..n {
                let (dx, dhh, dp) = backward_unit(unit_gates(&want_s, k, hidden), h_prev[k], dh[k]);
                set_unit_gates(&mut want_dx, k, hidden, dx);
                set_unit_gates(&mut want_dhp, k, hidden, dhh);
                want_dp[k] = dp;
            }
            assert_close(&dxp, &want_dx, tol::<T>(), "gru dxp");
            assert_close(&dhp, &want_dhp, tol::<T>(), "gru dhp");
            assert_close(&dh_prev, &want_dp, tol::<T>(), "gru dh_prev");
        }
    }

    simd_matches_scalar_in_both_precisions!(check);
}
