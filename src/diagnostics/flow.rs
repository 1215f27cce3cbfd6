//! Gradient flow through time: how much of the loss's gradient reaches each timestep.
//!
//! The chapter's argument in numbers. For a vanilla RNN, `dh_T/dh_1` is a product of `T - 1`
//! Jacobians `diag(tanh'(z_t)) W_h`; its size shrinks or grows geometrically with `T`. The LSTM's
//! cell state adds a path whose Jacobian is `diag(f_t)`, which stays near the identity while the
//! forget gates stay near 1. [`gradient_flow`] measures both on a real model and batch.

use super::linalg::symmetric_eigenvalues;
use crate::nn::reference::cell_step;
use crate::nn::{CellKind, Recurrent};
use crate::params::ParamStore;
use crate::rng::Rng;
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// Options for [`gradient_flow`].
#[derive(Clone, Copy, Debug)]
pub struct FlowOptions {
    /// Largest hidden size for which the full Jacobian product is formed (one backward pass per
    /// unit); above it only an estimate of its Frobenius norm is returned. Default 256.
    pub max_full_jacobian: usize,
    /// Largest hidden size for which singular values are computed. Default 64.
    pub max_singular_values: usize,
    /// Random probes for the Frobenius estimate of large Jacobians. Default 32.
    pub probes: usize,
    /// Seed of the probes.
    pub seed: u64,
}

impl Default for FlowOptions {
    fn default() -> Self {
        FlowOptions {
            max_full_jacobian: 256,
            max_singular_values: 64,
            probes: 32,
            seed: 0,
        }
    }
}

/// The gradient norms of one layer, per timestep.
#[derive(Clone, Debug)]
pub struct LayerFlow {
    /// `||dL/dh_t||` (Frobenius norm over the batch) for t = 1..=T, index t - 1.
    pub dl_dh: Vec<f64>,
    /// `||dL/dc_t||` for an LSTM.
    pub dl_dc: Option<Vec<f64>>,
}

/// A Jacobian product across the whole sequence, for the first sequence of the batch.
#[derive(Clone, Debug)]
pub struct JacobianProduct {
    /// The matrix `[H, H]`, row i = d(state_T)_i / d(state_1), when H is small enough.
    pub matrix: Option<Tensor<f64>>,
    /// Its Frobenius norm (exact with the matrix, else an unbiased random-probe estimate).
    pub frobenius: f64,
    /// Its singular values, largest first, when H is small enough.
    pub singular_values: Option<Vec<f64>>,
}

impl JacobianProduct {
    /// The spectral norm (largest singular value), when computed.
    pub fn spectral_norm(&self) -> Option<f64> {
        self.singular_values.as_ref().map(|s| s[0])
    }
}

/// What [`gradient_flow`] measures.
#[derive(Clone, Debug)]
pub struct GradientFlow {
    /// The cell type.
    pub cell: CellKind,
    /// The sequence length T.
    pub seq_len: usize,
    /// The loss value.
    pub loss: f64,
    /// Per layer, bottom first.
    pub layers: Vec<LayerFlow>,
    /// `dh_T/dh_1` of the first layer (with the cell state c_1 held fixed for an LSTM).
    pub dh_jacobian: JacobianProduct,
    /// `dc_T/dc_1` of the first layer, for an LSTM (with h_1 held fixed).
    pub dc_jacobian: Option<JacobianProduct>,
}

/// Runs `model` over `x` (`[T, B, I]`, time-major, from zero initial states) one step at a time,
/// applies `loss` to the top layer's last hidden state h_T (`[B, H]`), and measures the gradient
/// flow: `||dL/dh_t||` for every t and layer (and `||dL/dc_t||` for an LSTM), and the Jacobian
/// product `dh_T/dh_1` of the first layer (and `dc_T/dc_1`).
///
/// The model must be unidirectional; dropout is not applied.
///
/// ```
/// use recur::{ParamStore, Rng, Tensor};
/// use recur::nn::{Lstm, RecurrentConfig};
/// use recur::diagnostics::{FlowOptions, gradient_flow};
///
/// let mut ps = ParamStore::<f64>::new();
/// let lstm = Lstm::new(&mut ps, "", RecurrentConfig::new(3, 4), &mut Rng::new(0))?;
/// let x = Tensor::from_fn(&[20, 2, 3], |k| (k as f64 * 0.37).sin())?;
/// let flow = gradient_flow(&lstm, &ps, &x, FlowOptions::default(), |tape, h_t| tape.sum(h_t))?;
/// assert_eq!(flow.layers[0].dl_dh.len(), 20);
/// assert!(flow.dc_jacobian.is_some());
/// # Ok::<(), recur::Error>(())
/// ```
pub fn gradient_flow<T: Float>(
    model: &Recurrent,
    store: &ParamStore<T>,
    x: &Tensor<T>,
    options: FlowOptions,
    loss: impl FnOnce(&mut Tape<T>, Var) -> Result<Var>,
) -> Result<GradientFlow> {
    let cfg = model.config();
    if cfg.bidirectional {
        return Err(Error::invalid(
            "gradient_flow",
            "needs a unidirectional model (time flows one way)",
        ));
    }
    if cfg.proj_size > 0 {
        return Err(Error::invalid(
            "gradient_flow",
            format!(
                "does not follow an LSTM projection (proj_size {}) through time",
                cfg.proj_size
            ),
        ));
    }
    let dims = x.dims();
    if dims.len() != 3 || dims[2] != cfg.input_size {
        return Err(Error::invalid(
            "gradient_flow",
            format!(
                "x must be [T, B, {}] (time-major), got {:?}",
                cfg.input_size, dims
            ),
        ));
    }
    let (t_len, batch, hidden) = (dims[0], dims[1], cfg.hidden_size);
    let kind = model.kind();
    let mut tape = Tape::new();
    let xv = tape.constant(x.clone());
    let mut inputs: Vec<Var> = (0..t_len)
        .map(|t| tape.select(xv, t))
        .collect::<Result<_>>()?;
    let mut hs: Vec<Vec<Var>> = Vec::with_capacity(cfg.num_layers);
    let mut cs: Vec<Vec<Var>> = Vec::with_capacity(cfg.num_layers);
    for layer in 0..cfg.num_layers {
        let p = model
            .direction_params(layer, 0)
            .ok_or_else(|| Error::invalid("gradient_flow", format!("no layer {layer}")))?;
        let w = p.vars(&mut tape, store)?;
        let mut h = tape.constant(Tensor::zeros(&[batch, hidden])?);
        let mut c = kind
            .has_cell_state()
            .then(|| Tensor::zeros(&[batch, hidden]).map(|z| tape.constant(z)))
            .transpose()?;
        let (mut h_layer, mut c_layer) = (Vec::with_capacity(t_len), Vec::new());
        for &x_t in &inputs {
            let (h_new, c_new) = cell_step(&mut tape, kind, hidden, x_t, h, c, &w)?;
            h = h_new;
            c = c_new;
            h_layer.push(h);
            c_layer.extend(c);
        }
        inputs = h_layer.clone();
        hs.push(h_layer);
        cs.push(c_layer);
    }
    let top_last = *hs
        .last()
        .and_then(|l| l.last())
        .expect("T >= 1 and layers >= 1");
    let loss_var = loss(&mut tape, top_last)?;
    let loss_value = tape.value(loss_var)?.data()[0].to_f64();

    let norm_of = |grads: &crate::Grads<'_, T>, v: Var| grads.wrt(v).map_or(0.0, |g| g.norm());
    let grads = tape.backward(loss_var)?;
    let layers = hs
        .iter()
        .zip(&cs)
        .map(|(h_layer, c_layer)| LayerFlow {
            dl_dh: h_layer.iter().map(|&v| norm_of(&grads, v)).collect(),
            dl_dc: (!c_layer.is_empty())
                .then(|| c_layer.iter().map(|&v| norm_of(&grads, v)).collect()),
        })
        .collect();

    let dh_jacobian = jacobian_product(&mut tape, &hs[0], batch, hidden, &options)?;
    let dc_jacobian = if cs[0].is_empty() {
        None
    } else {
        Some(jacobian_product(
            &mut tape, &cs[0], batch, hidden, &options,
        )?)
    };
    Ok(GradientFlow {
        cell: kind,
        seq_len: t_len,
        loss: loss_value,
        layers,
        dh_jacobian,
        dc_jacobian,
    })
}

/// `d states[T-1] / d states[0]` for batch entry 0, by one backward pass per output unit (or
/// random probes for a large H).
fn jacobian_product<T: Float>(
    tape: &mut Tape<T>,
    states: &[Var],
    batch: usize,
    hidden: usize,
    options: &FlowOptions,
) -> Result<JacobianProduct> {
    let (first, last) = (states[0], states[states.len() - 1]);
    // Row of batch entry 0 of d(seed . last)/d(first).
    let vjp = |tape: &mut Tape<T>, seed_row: &[f64]| -> Result<Vec<f64>> {
        if states.len() == 1 {
            return Ok(seed_row.to_vec());
        }
        let seed = Tensor::from_fn(&[batch, hidden], |k| {
            if k < hidden {
                T::from_f64(seed_row[k])
            } else {
                T::ZERO
            }
        })?;
        let grads = tape.backward_with(last, seed)?;
        Ok(match grads.wrt(first) {
            Some(g) => g.data()[..hidden].iter().map(|v| v.to_f64()).collect(),
            None => vec![0.0; hidden],
        })
    };
    if hidden <= options.max_full_jacobian {
        let mut m = vec![0.0; hidden * hidden];
        for i in 0..hidden {
            let mut e = vec![0.0; hidden];
            e[i] = 1.0;
            m[i * hidden..(i + 1) * hidden].copy_from_slice(&vjp(tape, &e)?);
        }
        let frobenius = m.iter().map(|v| v * v).sum::<f64>().sqrt();
        let singular_values = (hidden <= options.max_singular_values).then(|| {
            // Singular values of J are the square roots of the eigenvalues of J^T J.
            let mut jtj = vec![0.0; hidden * hidden];
            for a in 0..hidden {
                for b in 0..hidden {
                    jtj[a * hidden + b] = (0..hidden)
                        .map(|r| m[r * hidden + a] * m[r * hidden + b])
                        .sum();
                }
            }
            let mut s: Vec<f64> = symmetric_eigenvalues(&jtj, hidden)
                .into_iter()
                .map(|l| l.max(0.0).sqrt())
                .collect();
            s.sort_by(|a, b| b.total_cmp(a));
            s
        });
        Ok(JacobianProduct {
            matrix: Some(Tensor::from_vec(m, &[hidden, hidden])?),
            frobenius,
            singular_values,
        })
    } else {
        // E ||J^T v||^2 = ||J||_F^2 for v with independent standard normal entries.
        let mut rng = Rng::new(options.seed);
        let probes = options.probes.max(1);
        let mut acc = 0.0;
        for _ in 0..probes {
            let v: Vec<f64> = (0..hidden).map(|_| rng.normal()).collect();
            acc += vjp(tape, &v)?.iter().map(|g| g * g).sum::<f64>();
        }
        Ok(JacobianProduct {
            matrix: None,
            frobenius: (acc / probes as f64).sqrt(),
            singular_values: None,
        })
    }
}
