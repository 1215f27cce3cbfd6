//! Vanilla RNN step kernels (scalar placeholder).
use crate::tensor::Float;
/// The RNN nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// tanh
    Tanh,
    /// max(x, 0)
    Relu,
}
/// h = act(pre), in place.
pub fn rnn_forward<T: Float>(pre: &mut [T], act: Activation) {
    for x in pre {
        *x = match act {
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(T::ZERO),
        };
    }
}
/// dpre = dh * act'(h).
pub fn rnn_backward<T: Float>(h: &[T], dh: &[T], dpre: &mut [T], act: Activation) {
    for i in 0..h.len() {
        dpre[i] = match act {
            Activation::Tanh => dh[i] * (T::ONE - h[i] * h[i]),
            Activation::Relu => {
                if h[i] > T::ZERO {
                    dh[i]
                } else {
                    T::ZERO
                }
            }
        };
    }
}
