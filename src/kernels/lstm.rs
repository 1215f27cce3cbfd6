//! LSTM step kernels (scalar placeholder).
use crate::tensor::Float;
/// Forward step.
pub fn lstm_forward<T: Float>(
    gates: &mut [T],
    c_prev: &[T],
    c: &mut [T],
    h: &mut [T],
    hidden: usize,
) {
    let b_n = c_prev.len() / hidden;
    for b in 0..b_n {
        let g = &mut gates[b * 4 * hidden..(b + 1) * 4 * hidden];
        for j in 0..hidden {
            let i = g[j].sigmoid();
            let f = g[hidden + j].sigmoid();
            let gg = g[2 * hidden + j].tanh();
            let o = g[3 * hidden + j].sigmoid();
            g[j] = i;
            g[hidden + j] = f;
            g[2 * hidden + j] = gg;
            g[3 * hidden + j] = o;
            let cn = f * c_prev[b * hidden + j] + i * gg;
            c[b * hidden + j] = cn;
            h[b * hidden + j] = o * cn.tanh();
        }
    }
}
/// Backward step.
pub fn lstm_backward<T: Float>(
    gates: &[T],
    c_prev: &[T],
    c: &[T],
    dh: &[T],
    dc: &mut [T],
    dgates: &mut [T],
    hidden: usize,
) {
    let b_n = c_prev.len() / hidden;
    for b in 0..b_n {
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
