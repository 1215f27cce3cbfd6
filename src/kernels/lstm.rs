//! LSTM step kernels, row by row over the batch, two vectors of hidden units at a time
//! (`kernels::block`).
//!
//! Gates are laid out per row as `[i | f | g | o]`, each block `H` wide (PyTorch's order).

use std::ops::Range;

use super::block::{Block, Units, checked_rows, for_each_block, row_blocks, row_blocks_mut};
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
    forward_rows(gates, c_prev, None, c, h, hidden);
}

/// [`lstm_forward`] with zoneout on `c`: `d` `[B, H]` holds each unit's keep weight (1 keeps
/// `c_{t-1}`, 0 takes the new value; in evaluation the probability `p`), and
/// `c = d * c_prev + (1 - d) * (f * c_prev + i * g)`, `h = o * tanh(c)`.
pub fn lstm_forward_zoneout<T: Float>(
    gates: &mut [T],
    c_prev: &[T],
    d: &[T],
    c: &mut [T],
    h: &mut [T],
    hidden: usize,
) {
    assert_eq!(
        d.len(),
        c_prev.len(),
        "lstm_forward_zoneout: d and c_prev differ"
    );
    forward_rows(gates, c_prev, Some(d), c, h, hidden);
}

fn forward_rows<T: Float>(
    gates: &mut [T],
    c_prev: &[T],
    d: Option<&[T]>,
    c: &mut [T],
    h: &mut [T],
    hidden: usize,
) {
    let bufs = [(gates.len(), 4), (c.len(), 1), (h.len(), 1)];
    let rows = checked_rows("lstm_forward", c_prev.len(), hidden, &bufs);
    for b in 0..rows {
        let [i, f, g, o] = row_blocks_mut(gates, b, hidden);
        let r = b * hidden..(b + 1) * hidden;
        let mut row = ForwardRow {
            i,
            f,
            g,
            o,
            c_prev: &c_prev[r.clone()],
            d: d.map(|d| &d[r.clone()]),
            c: &mut c[r.clone()],
            h: &mut h[r],
        };
        for_each_block(hidden, &mut row);
    }
}

/// One row of [`lstm_forward`]: the gate blocks, activated in place, and the row's states.
struct ForwardRow<'a, T> {
    i: &'a mut [T],
    f: &'a mut [T],
    g: &'a mut [T],
    o: &'a mut [T],
    c_prev: &'a [T],
    /// Zoneout's keep weights of `c`, when on.
    d: Option<&'a [T]>,
    c: &'a mut [T],
    h: &'a mut [T],
}

impl<T: Float> Units<T> for ForwardRow<'_, T> {
    #[inline(always)]
    fn units<B: Block<T>>(&mut self, r: Range<usize>) {
        let i = B::load(&self.i[r.clone()]).sigmoid();
        let f = B::load(&self.f[r.clone()]).sigmoid();
        let g = B::load(&self.g[r.clone()]).tanh();
        let o = B::load(&self.o[r.clone()]).sigmoid();
        let c_prev = B::load(&self.c_prev[r.clone()]);
        let c = f.mul_add(c_prev, i * g);
        // Zoneout: c = (1 - d) * c~ + d * c_prev.
        let c = match self.d {
            Some(d) => {
                let d = B::load(&d[r.clone()]);
                (B::splat(T::ONE) - d) * c + d * c_prev
            }
            None => c,
        };
        let h = o * c.tanh();
        i.store(&mut self.i[r.clone()]);
        f.store(&mut self.f[r.clone()]);
        g.store(&mut self.g[r.clone()]);
        o.store(&mut self.o[r.clone()]);
        c.store(&mut self.c[r.clone()]);
        h.store(&mut self.h[r]);
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
    backward_rows(gates, c_prev, None, c, dh, dc, dgates, hidden);
}

/// [`lstm_backward`] of [`lstm_forward_zoneout`]: with `dc_t` the gradient reaching the
/// zoned-out `c_t` (from `c_{t+1}` and through `h_t = o * tanh(c_t)`), the new value's share
/// `dc~ = (1 - d) * dc_t` gives the gates' gradients and `dc_{t-1} = d * dc_t + f * dc~`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward_zoneout<T: Float>(
    gates: &[T],
    c_prev: &[T],
    d: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
    dgates: &mut [T],
    hidden: usize,
) {
    assert_eq!(
        d.len(),
        c_prev.len(),
        "lstm_backward_zoneout: d and c_prev differ"
    );
    backward_rows(gates, c_prev, Some(d), c, dh, dc, dgates, hidden);
}

#[allow(clippy::too_many_arguments)]
fn backward_rows<T: Float>(
    gates: &[T],
    c_prev: &[T],
    d: Option<&[T]>,
    c: &[T],
    dh: &[T],
    dc: &mut [T],
    dgates: &mut [T],
    hidden: usize,
) {
    let bufs = [
        (gates.len(), 4),
        (dgates.len(), 4),
        (c.len(), 1),
        (dh.len(), 1),
        (dc.len(), 1),
    ];
    let rows = checked_rows("lstm_backward", c_prev.len(), hidden, &bufs);
    for b in 0..rows {
        let [i, f, g, o] = row_blocks(gates, b, hidden);
        let [di, df, dg, do_] = row_blocks_mut(dgates, b, hidden);
        let r = b * hidden..(b + 1) * hidden;
        let mut row = BackwardRow {
            i,
            f,
            g,
            o,
            c_prev: &c_prev[r.clone()],
            d: d.map(|d| &d[r.clone()]),
            c: &c[r.clone()],
            dh: &dh[r.clone()],
            dc: &mut dc[r],
            di,
            df,
            dg,
            do_,
        };
        for_each_block(hidden, &mut row);
    }
}

/// One row of [`lstm_backward`]: the saved gates and states, the gradients in and out.
struct BackwardRow<'a, T> {
    i: &'a [T],
    f: &'a [T],
    g: &'a [T],
    o: &'a [T],
    c_prev: &'a [T],
    /// Zoneout's keep weights of `c`, when on.
    d: Option<&'a [T]>,
    c: &'a [T],
    dh: &'a [T],
    dc: &'a mut [T],
    di: &'a mut [T],
    df: &'a mut [T],
    dg: &'a mut [T],
    do_: &'a mut [T],
}

impl<T: Float> Units<T> for BackwardRow<'_, T> {
    #[inline(always)]
    fn units<B: Block<T>>(&mut self, r: Range<usize>) {
        let one = B::splat(T::ONE);
        let (i, f) = (B::load(&self.i[r.clone()]), B::load(&self.f[r.clone()]));
        let (g, o) = (B::load(&self.g[r.clone()]), B::load(&self.o[r.clone()]));
        let tc = B::load(&self.c[r.clone()]).tanh();
        let dh = B::load(&self.dh[r.clone()]);
        // The gradient reaching c_t: from h_t through tanh, and from c_{t+1}.
        let dc = (dh * o).mul_add(one - tc * tc, B::load(&self.dc[r.clone()]));
        // Zoneout: the new value's share dc~ = (1 - d) dc reaches the gates; d dc goes straight
        // on to c_{t-1}.
        let (dct, kept) = match self.d {
            Some(d) => {
                let d = B::load(&d[r.clone()]);
                ((one - d) * dc, Some(d * dc))
            }
            None => (dc, None),
        };
        (dct * g * i * (one - i)).store(&mut self.di[r.clone()]);
        let c_prev = B::load(&self.c_prev[r.clone()]);
        (dct * c_prev * f * (one - f)).store(&mut self.df[r.clone()]);
        (dct * i * (one - g * g)).store(&mut self.dg[r.clone()]);
        (dh * tc * o * (one - o)).store(&mut self.do_[r.clone()]);
        match kept {
            Some(k) => (dct * f + k).store(&mut self.dc[r]),
            None => (dct * f).store(&mut self.dc[r]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{
        HIDDEN_SIZES, assert_close, set_unit_gates, simd_matches_scalar_in_both_precisions, tol,
        unit_gates, values,
    };

    /// One unit of [`lstm_forward`] in scalar code: from the pre-activations `[i, f, g, o]` and
    /// `c_prev`, the activated gates, `c` and `h`.
    fn forward_unit<T: Float>(pre: [T; 4], c_prev: T) -> ([T; 4], T, T) {
        let [i, f, g, o] = [
            pre[0].sigmoid(),
            pre[1].sigmoid(),
            pre[2].tanh(),
            pre[3].sigmoid(),
        ];
        let c = f * c_prev + i * g;
        ([i, f, g, o], c, o * c.tanh())
    }

    /// One unit of [`lstm_backward`] in scalar code: the gradients of the pre-activations
    /// `[i, f, g, o]` and the one reaching `c_{t-1}`.
    fn backward_unit<T: Float>([i, f, g, o]: [T; 4], c_prev: T, c: T, dh: T, dc: T) -> ([T; 4], T) {
        let tc = c.tanh();
        let dc = dc + dh * o * (T::ONE - tc * tc);
        let dgates = [
            dc * g * i * (T::ONE - i),
            dc * c_prev * f * (T::ONE - f),
            dc * i * (T::ONE - g * g),
            dh * tc * o * (T::ONE - o),
        ];
        (dgates, dc * f)
    }

    fn check<T: Float>() {
        let rows = 3;
        for hidden in HIDDEN_SIZES {
            let n = rows * hidden;
            let pre: Vec<T> = values(hidden as u64, 4 * n, 4.0);
            let c_prev: Vec<T> = values(hidden as u64 + 1, n, 2.0);
            let mut gates = pre.clone();
            let (mut c, mut h) = (vec![T::ZERO; n], vec![T::ZERO; n]);
            lstm_forward(&mut gates, &c_prev, &mut c, &mut h, hidden);
            let mut want_g = vec![T::ZERO; 4 * n];
            let (mut want_c, mut want_h) = (vec![T::ZERO; n], vec![T::ZERO; n]);
            for k in 0..n {
                let (g, ck, hk) = forward_unit(unit_gates(&pre, k, hidden), c_prev[k]);
                set_unit_gates(&mut want_g, k, hidden, g);
                (want_c[k], want_h[k]) = (ck, hk);
            }
            assert_close(&gates, &want_g, tol::<T>(), "lstm gates");
            assert_close(&c, &want_c, tol::<T>(), "lstm c");
            assert_close(&h, &want_h, tol::<T>(), "lstm h");

            let dh: Vec<T> = values(hidden as u64 + 2, n, 1.0);
            let dc0: Vec<T> = values(hidden as u64 + 3, n, 1.0);
            let (mut dc, mut dgates) = (dc0.clone(), vec![T::ZERO; 4 * n]);
            lstm_backward(&want_g, &c_prev, &want_c, &dh, &mut dc, &mut dgates, hidden);
            let (mut want_dg, mut want_dc) = (vec![T::ZERO; 4 * n], vec![T::ZERO; n]);
            for k in 0..n {
                let g = unit_gates(&want_g, k, hidden);
                let (dg, dck) = backward_unit(g, c_prev[k], want_c[k], dh[k], dc0[k]);
                set_unit_gates(&mut want_dg, k, hidden, dg);
                want_dc[k] = dck;
            }
            assert_close(&dgates, &want_dg, tol::<T>(), "lstm dgates");
            assert_close(&dc, &want_dc, tol::<T>(), "lstm dc");
        }
    }

    simd_matches_scalar_in_both_precisions!(check);

    /// The zoneout variants against scalar code: keep weights 0, 1 and (evaluation) 0.3.
    fn check_zoneout<T: Float>() {
        let rows = 3;
        for hidden in HIDDEN_SIZES {
            let n = rows * hidden;
            let pre: Vec<T> = values(hidden as u64 + 7, 4 * n, 4.0);
            let c_prev: Vec<T> = values(hidden as u64 + 8, n, 2.0);
            let d: Vec<T> = (0..n)
                .map(|k| T::from_f64([0.0, 1.0, 0.3][k % 3]))
                .collect();
            let mut gates = pre.clone();
            let (mut c, mut h) = (vec![T::ZERO; n], vec![T::ZERO; n]);
            lstm_forward_zoneout(&mut gates, &c_prev, &d, &mut c, &mut h, hidden);
            let (mut want_c, mut want_h) = (vec![T::ZERO; n], vec![T::ZERO; n]);
            for k in 0..n {
                let ([_, _, _, o], ck, _) = forward_unit(unit_gates(&pre, k, hidden), c_prev[k]);
                want_c[k] = (T::ONE - d[k]) * ck + d[k] * c_prev[k];
                want_h[k] = o * want_c[k].tanh();
            }
            assert_close(&c, &want_c, tol::<T>(), "zoneout c");
            assert_close(&h, &want_h, tol::<T>(), "zoneout h");

            let dh: Vec<T> = values(hidden as u64 + 9, n, 1.0);
            let dc0: Vec<T> = values(hidden as u64 + 10, n, 1.0);
            let (mut dc, mut dgates) = (dc0.clone(), vec![T::ZERO; 4 * n]);
            lstm_backward_zoneout(&gates, &c_prev, &d, &c, &dh, &mut dc, &mut dgates, hidden);
            let (mut want_dg, mut want_dc) = (vec![T::ZERO; 4 * n], vec![T::ZERO; n]);
            for k in 0..n {
                let [i, f, g, o] = unit_gates(&gates, k, hidden);
                let tc = c[k].tanh();
                let dct = dc0[k] + dh[k] * o * (T::ONE - tc * tc);
                let dnew = (T::ONE - d[k]) * dct;
                let dgk = [
                    dnew * g * i * (T::ONE - i),
                    dnew * c_prev[k] * f * (T::ONE - f),
                    dnew * i * (T::ONE - g * g),
                    dh[k] * tc * o * (T::ONE - o),
                ];
                set_unit_gates(&mut want_dg, k, hidden, dgk);
                want_dc[k] = d[k] * dct + f * dnew;
            }
            assert_close(&dgates, &want_dg, tol::<T>(), "zoneout dgates");
            assert_close(&dc, &want_dc, tol::<T>(), "zoneout dc");
        }
    }

    #[test]
    fn zoneout_simd_matches_scalar_f32() {
        check_zoneout::<f32>();
    }

    #[test]
    fn zoneout_simd_matches_scalar_f64() {
        check_zoneout::<f64>();
    }
}
