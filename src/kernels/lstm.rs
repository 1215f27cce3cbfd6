//! LSTM step kernels, row by row over the batch, two vectors of hidden units at a time
//! ([`super::block`]).
//!
//! Gates are laid out per row as `[i | f | g | o]`, each block `H` wide (PyTorch's order).

use std::ops::Range;

use super::block::{Block, Units, for_each_block};
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
        let (i, rest) = g.split_at_mut(hidden);
        let (f, rest) = rest.split_at_mut(hidden);
        let (g, o) = rest.split_at_mut(hidden);
        let r = b * hidden..(b + 1) * hidden;
        let mut row = ForwardRow {
            i,
            f,
            g,
            o,
            c_prev: &c_prev[r.clone()],
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
        let c = f.mul_add(B::load(&self.c_prev[r.clone()]), i * g);
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
    let rows = c_prev.len() / hidden;
    assert!(
        gates.len() >= rows * 4 * hidden
            && dgates.len() >= rows * 4 * hidden
            && c.len() >= rows * hidden
            && dh.len() >= rows * hidden
            && dc.len() >= rows * hidden,
        "lstm_backward: buffers too small"
    );
    for b in 0..rows {
        let g = &gates[b * 4 * hidden..(b + 1) * 4 * hidden];
        let (i, rest) = g.split_at(hidden);
        let (f, rest) = rest.split_at(hidden);
        let (g, o) = rest.split_at(hidden);
        let dg = &mut dgates[b * 4 * hidden..(b + 1) * 4 * hidden];
        let (di, rest) = dg.split_at_mut(hidden);
        let (df, rest) = rest.split_at_mut(hidden);
        let (dg, do_) = rest.split_at_mut(hidden);
        let r = b * hidden..(b + 1) * hidden;
        let mut row = BackwardRow {
            i,
            f,
            g,
            o,
            c_prev: &c_prev[r.clone()],
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
        (dc * g * i * (one - i)).store(&mut self.di[r.clone()]);
        let c_prev = B::load(&self.c_prev[r.clone()]);
        (dc * c_prev * f * (one - f)).store(&mut self.df[r.clone()]);
        (dc * i * (one - g * g)).store(&mut self.dg[r.clone()]);
        (dh * tc * o * (one - o)).store(&mut self.do_[r.clone()]);
        (dc * f).store(&mut self.dc[r]);
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
        hidden: usize,
    ) {
        for b in 0..c_prev.len() / hidden {
            let g = &mut gates[b * 4 * hidden..(b + 1) * 4 * hidden];
            for j in 0..hidden {
                let i = g[j].sigmoid();
                let f = g[hidden + j].sigmoid();
                let gg = g[2 * hidden + j].tanh();
                let o = g[3 * hidden + j].sigmoid();
                (g[j], g[hidden + j], g[2 * hidden + j], g[3 * hidden + j]) = (i, f, gg, o);
                let cn = f * c_prev[b * hidden + j] + i * gg;
                c[b * hidden + j] = cn;
                h[b * hidden + j] = o * cn.tanh();
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
        hidden: usize,
    ) {
        for b in 0..c_prev.len() / hidden {
            let g = &gates[b * 4 * hidden..(b + 1) * 4 * hidden];
            let dg = &mut dgates[b * 4 * hidden..(b + 1) * 4 * hidden];
            for j in 0..hidden {
                let k = b * hidden + j;
                let (i, f, gg, o) = (g[j], g[hidden + j], g[2 * hidden + j], g[3 * hidden + j]);
                let tc = c[k].tanh();
                let dct = dc[k] + dh[k] * o * (T::ONE - tc * tc);
                dg[j] = dct * gg * i * (T::ONE - i);
                dg[hidden + j] = dct * c_prev[k] * f * (T::ONE - f);
                dg[2 * hidden + j] = dct * i * (T::ONE - gg * gg);
                dg[3 * hidden + j] = dh[k] * tc * o * (T::ONE - o);
                dc[k] = dct * f;
            }
        }
    }

    fn check<T: Float>() {
        let rows = 3;
        for hidden in HIDDEN_SIZES {
            let pre: Vec<T> = values(hidden as u64, rows * 4 * hidden, 4.0);
            let c_prev: Vec<T> = values(hidden as u64 + 1, rows * hidden, 2.0);
            let (mut g1, mut g2) = (pre.clone(), pre);
            let (mut c1, mut c2) = (vec![T::ZERO; rows * hidden], vec![T::ZERO; rows * hidden]);
            let (mut h1, mut h2) = (c1.clone(), c1.clone());
            lstm_forward(&mut g1, &c_prev, &mut c1, &mut h1, hidden);
            forward_scalar(&mut g2, &c_prev, &mut c2, &mut h2, hidden);
            assert_close(&g1, &g2, tol::<T>(), "lstm gates");
            assert_close(&c1, &c2, tol::<T>(), "lstm c");
            assert_close(&h1, &h2, tol::<T>(), "lstm h");

            let dh: Vec<T> = values(hidden as u64 + 2, rows * hidden, 1.0);
            let dc0: Vec<T> = values(hidden as u64 + 3, rows * hidden, 1.0);
            let (mut dc1, mut dc2) = (dc0.clone(), dc0);
            let (mut d1, mut d2) = (
                vec![T::ZERO; rows * 4 * hidden],
                vec![T::ZERO; rows * 4 * hidden],
            );
            lstm_backward(&g2, &c_prev, &c2, &dh, &mut dc1, &mut d1, hidden);
            backward_scalar(&g2, &c_prev, &c2, &dh, &mut dc2, &mut d2, hidden);
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
