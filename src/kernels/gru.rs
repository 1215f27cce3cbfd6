//! GRU step kernels (scalar placeholder).
use crate::tensor::Float;
/// Forward step.
pub fn gru_forward<T: Float>(
    xp: &[T],
    hp: &[T],
    h_prev: &[T],
    h: &mut [T],
    saved: &mut [T],
    hidden: usize,
) {
    let b_n = h_prev.len() / hidden;
    for b in 0..b_n {
        let (x, hh) = (&xp[b * 3 * hidden..], &hp[b * 3 * hidden..]);
        let sv = &mut saved[b * 4 * hidden..(b + 1) * 4 * hidden];
        for j in 0..hidden {
            let r = (x[j] + hh[j]).sigmoid();
            let z = (x[hidden + j] + hh[hidden + j]).sigmoid();
            let hn = hh[2 * hidden + j];
            let n = (x[2 * hidden + j] + r * hn).tanh();
            let hp_ = h_prev[b * hidden + j];
            h[b * hidden + j] = n + z * (hp_ - n);
            sv[j] = r;
            sv[hidden + j] = z;
            sv[2 * hidden + j] = n;
            sv[3 * hidden + j] = hn;
        }
    }
}
/// Backward step.
pub fn gru_backward<T: Float>(
    saved: &[T],
    h_prev: &[T],
    dh: &[T],
    dxp: &mut [T],
    dhp: &mut [T],
    dh_prev: &mut [T],
    hidden: usize,
) {
    let b_n = h_prev.len() / hidden;
    for b in 0..b_n {
        let sv = &saved[b * 4 * hidden..(b + 1) * 4 * hidden];
        for j in 0..hidden {
            let k = b * hidden + j;
            let (r, z, n, hn) = (
                sv[j],
                sv[hidden + j],
                sv[2 * hidden + j],
                sv[3 * hidden + j],
            );
            let d = dh[k];
            let dn = d * (T::ONE - z);
            let dz = d * (h_prev[k] - n);
            let dn_pre = dn * (T::ONE - n * n);
            let dr = dn_pre * hn;
            let dr_pre = dr * r * (T::ONE - r);
            let dz_pre = dz * z * (T::ONE - z);
            let o = b * 3 * hidden;
            dxp[o + j] = dr_pre;
            dxp[o + hidden + j] = dz_pre;
            dxp[o + 2 * hidden + j] = dn_pre;
            dhp[o + j] = dr_pre;
            dhp[o + hidden + j] = dz_pre;
            dhp[o + 2 * hidden + j] = dn_pre * r;
            dh_prev[k] = d * z;
        }
    }
}
