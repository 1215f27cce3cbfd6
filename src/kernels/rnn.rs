//! Vanilla RNN step kernels: the activation and its gradient, vector by vector.

use crate::tensor::Float;

/// The RNN nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// tanh
    Tanh,
    /// max(x, 0)
    Relu,
}

/// `h = act(pre)`, in place, over any number of rows.
pub fn rnn_forward<T: Float>(pre: &mut [T], act: Activation) {
    for chunk in pre.chunks_mut(T::LANES) {
        let x = T::load_n(chunk);
        let y = match act {
            Activation::Tanh => T::tanh_v(x),
            Activation::Relu => T::relu(x),
        };
        T::store_n(y, chunk);
    }
}

/// `dpre = dh * act'(h)`, where `h` is the activation's output.
///
/// Panics if the slices differ in length.
pub fn rnn_backward<T: Float>(h: &[T], dh: &[T], dpre: &mut [T], act: Activation) {
    assert!(
        h.len() == dh.len() && h.len() == dpre.len(),
        "rnn_backward: lengths differ"
    );
    let one = T::splat(T::ONE);
    for ((hc, gc), out) in h
        .chunks(T::LANES)
        .zip(dh.chunks(T::LANES))
        .zip(dpre.chunks_mut(T::LANES))
    {
        let (hv, gv) = (T::load_n(hc), T::load_n(gc));
        let y = match act {
            Activation::Tanh => gv * (one - hv * hv),
            Activation::Relu => T::relu_grad(hv, gv),
        };
        T::store_n(y, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{
        HIDDEN_SIZES, assert_close, simd_matches_scalar_in_both_precisions, tol, values,
    };

    fn forward_scalar<T: Float>(pre: &mut [T], act: Activation) {
        for x in pre {
            *x = match act {
                Activation::Tanh => x.tanh(),
                Activation::Relu => x.max(T::ZERO),
            };
        }
    }

    fn backward_scalar<T: Float>(h: &[T], dh: &[T], dpre: &mut [T], act: Activation) {
        for k in 0..h.len() {
            dpre[k] = match act {
                Activation::Tanh => dh[k] * (T::ONE - h[k] * h[k]),
                Activation::Relu if h[k] > T::ZERO => dh[k],
                Activation::Relu => T::ZERO,
            };
        }
    }

    fn check<T: Float>() {
        for act in [Activation::Tanh, Activation::Relu] {
            for h in HIDDEN_SIZES {
                let n = 3 * h;
                let pre: Vec<T> = values(h as u64, n, 3.0);
                let (mut got, mut want) = (pre.clone(), pre.clone());
                rnn_forward(&mut got, act);
                forward_scalar(&mut want, act);
                assert_close(&got, &want, tol::<T>(), "rnn forward");
                let dh: Vec<T> = values(h as u64 + 99, n, 1.0);
                let (mut got_d, mut want_d) = (vec![T::ZERO; n], vec![T::ZERO; n]);
                rnn_backward(&want, &dh, &mut got_d, act);
                backward_scalar(&want, &dh, &mut want_d, act);
                assert_close(&got_d, &want_d, tol::<T>(), "rnn backward");
            }
        }
    }

    simd_matches_scalar_in_both_precisions!(check);
}
