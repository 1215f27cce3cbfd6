//! A whole recurrent stack over a batch of sequences without a tape: an
//! [`crate::nn::InferenceStep`] per layer and direction over weights packed once, with lengths.

use crate::nn::Recurrent;
use crate::params::ParamStore;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// What [`run_stack`] returns: the last layer's outputs `y` `[T, B, D*H]` (zero past each
/// length) and the final hidden state of every layer and direction `h_n` `[D*L, B, H]`.
pub(crate) struct StackOutput<T: Float> {
    pub y: Tensor<T>,
    pub h_n: Tensor<T>,
}

/// Runs `rnn` over `x` `[T, B, I]` (time-major) from zeros, in evaluation mode, without a tape.
/// Each sequence stops at its length (any order); the reverse direction starts at each
/// sequence's last real step, as the fused layers do.
pub(crate) fn run_stack<T: Float>(
    rnn: &Recurrent,
    store: &ParamStore<T>,
    x: &Tensor<T>,
    lengths: &[usize],
) -> Result<StackOutput<T>> {
    const OP: &str = "predict";
    let cfg = rnn.config();
    let (h, d, layers) = (cfg.hidden_size, cfg.directions(), cfg.num_layers);
    let (t_len, b, i0) = match *x.dims() {
        [t, b, i] => (t, b, i),
        _ => {
            return Err(Error::invalid(
                OP,
                format!("input must be [T, B, I], got {}", x.shape()),
            ));
        }
    };
    if i0 != cfg.input_size {
        return Err(Error::invalid(
            OP,
            format!(
                "input has {i0} features, the layer takes {}",
                cfg.input_size
            ),
        ));
    }
    if lengths.len() != b || lengths.iter().any(|&l| l == 0 || l > t_len) {
        return Err(Error::invalid(
            OP,
            format!("needs {b} lengths in 1..={t_len}, got {lengths:?}"),
        ));
    }
    let lstm = rnn.kind().has_cell_state();
    let mut input = x.data().to_vec();
    let mut in_size = i0;
    let mut h_n = vec![T::ZERO; d * layers * b * h];
    for layer in 0..layers {
        let mut y = vec![T::ZERO; t_len * b * d * h];
        for dir in 0..d {
            let mut step = rnn.inference_step(store, layer, dir, b)?;
            let mut hs = vec![T::ZERO; b * h];
            let mut cs = vec![T::ZERO; if lstm { b * h } else { 0 }];
            let (mut saved_h, mut saved_c) = (hs.clone(), cs.clone());
            let mut xs = vec![T::ZERO; b * in_size];
            for s in 0..t_len {
                for (row, &len) in lengths.iter().enumerate() {
                    let dst = &mut xs[row * in_size..(row + 1) * in_size];
                    if s < len {
                        let t = if dir == 0 { s } else { len - 1 - s };
                        let at = (t * b + row) * in_size;
                        dst.copy_from_slice(&input[at..at + in_size]);
                    }
                }
                saved_h.copy_from_slice(&hs);
                saved_c.copy_from_slice(&cs);
                step.step_packed(&xs, &mut hs, &mut cs)?;
                for (row, &len) in lengths.iter().enumerate() {
                    let r = row * h..(row + 1) * h;
                    if s < len {
                        let t = if dir == 0 { s } else { len - 1 - s };
                        let at = (t * b + row) * d * h + dir * h;
                        y[at..at + h].copy_from_slice(&hs[r]);
                    } else {
                        hs[r.clone()].copy_from_slice(&saved_h[r.clone()]);
                        if lstm {
                            cs[r.clone()].copy_from_slice(&saved_c[r]);
                        }
                    }
                }
            }
            let at = (layer * d + dir) * b * h;
            h_n[at..at + b * h].copy_from_slice(&hs);
        }
        input = y;
        in_size = d * h;
    }
    Ok(StackOutput {
        y: Tensor::from_vec(input, &[t_len, b, d * h])?,
        h_n: Tensor::from_vec(h_n, &[d * layers, b, h])?,
    })
}
