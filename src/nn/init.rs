//! Parameter initialisation: PyTorch's default uniform, Xavier (Glorot) uniform and normal,
//! orthogonal (per gate block for recurrent weights) and the LSTM forget-gate bias.
//!
//! Every function takes the generator explicitly, so a seed fixes the result. The functions act on
//! one [`ParamStore`] entry; [`init_recurrent`] applies a [`RecurrentInit`] scheme to a whole
//! [`Recurrent`] layer stack.
//!
//! ```
//! use recur::nn::init::{init_recurrent, RecurrentInit};
//! use recur::nn::{Lstm, RecurrentConfig};
//! use recur::{ParamStore, Rng};
//!
//! let mut ps = ParamStore::<f32>::new();
//! let mut rng = Rng::new(0);
//! let lstm = Lstm::new(&mut ps, "lstm.", RecurrentConfig::new(8, 16), &mut rng)?;
//! // Xavier-uniform input weights, orthogonal recurrent gate blocks, zero biases, forget bias 1.
//! init_recurrent(&mut ps, &lstm, &RecurrentInit::orthogonal(), &mut rng)?;
//! let b = ps.get(ps.find("lstm.bias_ih_l0").unwrap());
//! assert_eq!(&b.data()[16..32], &[1.0; 16]); // the f block
//! # Ok::<(), recur::Error>(())
//! ```

use super::direction::CellKind;
use super::recurrent::Recurrent;
use crate::params::{ParamId, ParamStore};
use crate::rng::Rng;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// Fills the parameter with samples of `U(-bound, bound)`.
pub fn uniform<T: Float>(
    store: &mut ParamStore<T>,
    id: ParamId,
    bound: f64,
    rng: &mut Rng,
) -> Result<()> {
    store.check(id)?;
    let dims = store.get(id).dims().to_vec();
    *store.get_mut(id) = uniform_tensor(&dims, bound, rng)?;
    Ok(())
}

/// A new tensor of samples of `U(-bound, bound)`, drawn in row-major order: what every layer's
/// constructor draws its parameters with (bound `1/sqrt(fan)`, as PyTorch does).
pub(crate) fn uniform_tensor<T: Float>(
    dims: &[usize],
    bound: f64,
    rng: &mut Rng,
) -> Result<Tensor<T>> {
    if !(bound.is_finite() && bound >= 0.0) {
        return Err(Error::invalid(
            "init::uniform",
            format!("bound must be finite and >= 0, got {bound}"),
        ));
    }
    Tensor::from_fn(dims, |_| T::from_f64(rng.uniform_range(-bound, bound)))
}

/// PyTorch's default for recurrent layers: `U(-1/sqrt(H), 1/sqrt(H))` with `H` the hidden size.
pub fn pytorch_default<T: Float>(
    store: &mut ParamStore<T>,
    id: ParamId,
    hidden_size: usize,
    rng: &mut Rng,
) -> Result<()> {
    if hidden_size == 0 {
        return Err(Error::invalid(
            "init::pytorch_default",
            "hidden_size must be positive",
        ));
    }
    uniform(store, id, 1.0 / (hidden_size as f64).sqrt(), rng)
}

/// Every element `value`.
pub fn constant<T: Float>(store: &mut ParamStore<T>, id: ParamId, value: f64) -> Result<()> {
    store.check(id)?;
    store.get_mut(id).data_mut().fill(T::from_f64(value));
    Ok(())
}

/// `(fan_in, fan_out)` of a weight `[out, in, ...]` as PyTorch computes them.
fn fans(op: &'static str, t: &Tensor<impl Float>) -> Result<(usize, usize)> {
    let d = t.dims();
    if d.len() < 2 {
        return Err(Error::invalid(
            op,
            format!("needs a weight of rank >= 2, got shape {}", t.shape()),
        ));
    }
    let receptive: usize = d[2..].iter().product();
    Ok((d[1] * receptive, d[0] * receptive))
}

/// The Xavier scale `gain * sqrt(numerator / (fan_in + fan_out))` of weight `id`: the bound of
/// the uniform version (numerator 6) or the standard deviation of the normal one (numerator 2).
fn xavier_scale<T: Float>(
    op: &'static str,
    store: &ParamStore<T>,
    id: ParamId,
    gain: f64,
    numerator: f64,
) -> Result<f64> {
    store.check(id)?;
    let (fi, fo) = fans(op, store.get(id))?;
    Ok(gain * (numerator / (fi + fo) as f64).sqrt())
}

/// Xavier (Glorot) uniform, as `torch.nn.init.xavier_uniform_`:
/// `U(-a, a)` with `a = gain * sqrt(6 / (fan_in + fan_out))`, over the whole matrix (for a
/// stacked gate weight `[G*H, in]`, `fan_out = G*H`, as PyTorch computes it on that parameter).
pub fn xavier_uniform<T: Float>(
    store: &mut ParamStore<T>,
    id: ParamId,
    gain: f64,
    rng: &mut Rng,
) -> Result<()> {
    let bound = xavier_scale("init::xavier_uniform", store, id, gain, 6.0)?;
    uniform(store, id, bound, rng)
}

/// Xavier (Glorot) normal, as `torch.nn.init.xavier_normal_`:
/// `N(0, std^2)` with `std = gain * sqrt(2 / (fan_in + fan_out))`.
pub fn xavier_normal<T: Float>(
    store: &mut ParamStore<T>,
    id: ParamId,
    gain: f64,
    rng: &mut Rng,
) -> Result<()> {
    let std = xavier_scale("init::xavier_normal", store, id, gain, 2.0)?;
    if !std.is_finite() {
        return Err(Error::invalid(
            "init::xavier_normal",
            format!("gain must be finite, got {gain}"),
        ));
    }
    for x in store.get_mut(id).data_mut() {
        *x = T::from_f64(std * rng.normal());
    }
    Ok(())
}

/// A `rows x cols` matrix (row-major) with orthonormal rows (`rows <= cols`) or columns
/// (`rows >= cols`), times `gain`: the Q factor of the QR decomposition of a standard-normal
/// matrix with the signs fixed so that R has a positive diagonal, as `torch.nn.init.orthogonal_`.
///
/// The QR is modified Gram-Schmidt with one re-orthogonalisation pass, which gives R a positive
/// diagonal directly.
fn orthogonal_matrix(rows: usize, cols: usize, gain: f64, rng: &mut Rng) -> Result<Vec<f64>> {
    let normal: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
    // Orthonormalise the columns of a tall matrix A [m, n], m >= n, stored column by column.
    let (m, n, transpose) = if rows >= cols {
        (rows, cols, false)
    } else {
        (cols, rows, true)
    };
    let mut q: Vec<Vec<f64>> = (0..n)
        .map(|j| {
            (0..m)
                .map(|i| {
                    if transpose {
                        normal[j * cols + i] // A = normal^T: column j of A is row j of normal
                    } else {
                        normal[i * cols + j]
                    }
                })
                .collect()
        })
        .collect();
    for j in 0..n {
        for _pass in 0..2 {
            for i in 0..j {
                let dot: f64 = q[i].iter().zip(&q[j]).map(|(a, b)| a * b).sum();
                let (qi, qj) = {
                    let (lo, hi) = q.split_at_mut(j);
                    (&lo[i], &mut hi[0])
                };
                for (x, &y) in qj.iter_mut().zip(qi) {
                    *x -= dot * y;
                }
            }
        }
        let norm = q[j].iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm.is_nan() || norm < 1e-12 {
            return Err(Error::invalid(
                "init::orthogonal",
                "the random matrix was numerically rank deficient",
            ));
        }
        q[j].iter_mut().for_each(|x| *x /= norm);
    }
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[r * cols + c] = gain * if transpose { q[r][c] } else { q[c][r] };
        }
    }
    Ok(out)
}

/// Orthogonal initialisation of each of `blocks` equal row blocks of a 2-D weight separately:
/// with `blocks = G` on `weight_hh` (`[G*H, H]`) every gate's `H x H` block is an orthogonal
/// matrix times `gain`. `blocks = 1` is `torch.nn.init.orthogonal_` on the whole matrix.
pub fn orthogonal_blocks<T: Float>(
    store: &mut ParamStore<T>,
    id: ParamId,
    blocks: usize,
    gain: f64,
    rng: &mut Rng,
) -> Result<()> {
    const OP: &str = "init::orthogonal";
    store.check(id)?;
    let t = store.get(id);
    let &[rows, cols] = t.dims() else {
        return Err(Error::invalid(
            OP,
            format!("needs a 2-D weight, got shape {}", t.shape()),
        ));
    };
    if blocks == 0 || rows % blocks != 0 {
        return Err(Error::invalid(
            OP,
            format!("{rows} rows do not split into {blocks} equal blocks"),
        ));
    }
    if !gain.is_finite() {
        return Err(Error::invalid(
            OP,
            format!("gain must be finite, got {gain}"),
        ));
    }
    let br = rows / blocks;
    let mut values = Vec::with_capacity(rows * cols);
    for _ in 0..blocks {
        values.extend(orthogonal_matrix(br, cols, gain, rng)?);
    }
    for (x, v) in store.get_mut(id).data_mut().iter_mut().zip(values) {
        *x = T::from_f64(v);
    }
    Ok(())
}

/// Sets gate `gate` (of `gates` equal blocks) of a bias vector to `value`.
pub fn gate_bias<T: Float>(
    store: &mut ParamStore<T>,
    id: ParamId,
    gates: usize,
    gate: usize,
    value: f64,
) -> Result<()> {
    store.check(id)?;
    let t = store.get_mut(id);
    let n = t.numel();
    if t.dims().len() != 1 || gates == 0 || !n.is_multiple_of(gates) || gate >= gates {
        return Err(Error::invalid(
            "init::gate_bias",
            format!(
                "cannot take gate {gate} of {gates} from a bias of shape {}",
                t.shape()
            ),
        ));
    }
    let h = n / gates;
    t.data_mut()[gate * h..(gate + 1) * h].fill(T::from_f64(value));
    Ok(())
}

/// Sets the forget-gate bias of every layer and direction of an LSTM: the f block (the second of
/// i, f, g, o) of `bias_ih` becomes `value` and that of `bias_hh` becomes 0, so the effective
/// forget bias `b_ih + b_hh` is exactly `value` (1.0 is the usual choice, which keeps the cell
/// state flowing early in training). Fails for a non-LSTM layer or one without biases.
pub fn lstm_forget_bias<T: Float>(
    store: &mut ParamStore<T>,
    layer: &Recurrent,
    value: f64,
) -> Result<()> {
    const OP: &str = "init::lstm_forget_bias";
    if layer.kind() != CellKind::Lstm {
        return Err(Error::invalid(
            OP,
            format!("needs an LSTM layer, got {}", layer.kind().name()),
        ));
    }
    let cfg = layer.config();
    let mut targets = Vec::new();
    for l in 0..cfg.num_layers {
        for d in 0..cfg.directions() {
            let p = layer
                .direction_params(l, d)
                .ok_or_else(|| Error::invalid(OP, "layer without parameters"))?;
            match (p.b_ih, p.b_hh) {
                (Some(bi), Some(bh)) => targets.push((bi, bh)),
                _ => return Err(Error::invalid(OP, "the LSTM has no biases (bias = false)")),
            }
        }
    }
    for (bi, bh) in targets {
        gate_bias(store, bi, 4, 1, value)?;
        gate_bias(store, bh, 4, 1, 0.0)?;
    }
    Ok(())
}

/// How to initialise a weight matrix of a recurrent layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightInit {
    /// PyTorch's default `U(-1/sqrt(H), 1/sqrt(H))`.
    PyTorchDefault,
    /// [`xavier_uniform`] with this gain, over the whole stacked matrix.
    XavierUniform(f64),
    /// [`xavier_normal`] with this gain, over the whole stacked matrix.
    XavierNormal(f64),
    /// Orthogonal with this gain, each gate block separately ([`orthogonal_blocks`]).
    Orthogonal(f64),
}

/// How to initialise the biases of a recurrent layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BiasInit {
    /// PyTorch's default `U(-1/sqrt(H), 1/sqrt(H))`.
    PyTorchDefault,
    /// Every bias `value`.
    Constant(f64),
}

/// An initialisation scheme for a whole [`Recurrent`] layer stack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecurrentInit {
    /// For every `weight_ih_l{k}`.
    pub input_weights: WeightInit,
    /// For every `weight_hh_l{k}`, and the LSTM's projections `weight_hr_l{k}` (one block).
    pub hidden_weights: WeightInit,
    /// For every `bias_ih_l{k}` and `bias_hh_l{k}`.
    pub biases: BiasInit,
    /// LSTM only: the effective forget-gate bias set by [`lstm_forget_bias`] after the biases
    /// (ignored for other cells).
    pub lstm_forget_bias: Option<f64>,
}

impl RecurrentInit {
    /// PyTorch's default: everything `U(-1/sqrt(H), 1/sqrt(H))`.
    pub fn pytorch() -> Self {
        RecurrentInit {
            input_weights: WeightInit::PyTorchDefault,
            hidden_weights: WeightInit::PyTorchDefault,
            biases: BiasInit::PyTorchDefault,
            lstm_forget_bias: None,
        }
    }

    /// A common recipe for long sequences: Xavier-uniform input weights, orthogonal recurrent
    /// gate blocks (gain 1), zero biases and an LSTM forget bias of 1.
    pub fn orthogonal() -> Self {
        RecurrentInit {
            input_weights: WeightInit::XavierUniform(1.0),
            hidden_weights: WeightInit::Orthogonal(1.0),
            biases: BiasInit::Constant(0.0),
            lstm_forget_bias: Some(1.0),
        }
    }
}

fn init_weight<T: Float>(
    store: &mut ParamStore<T>,
    id: ParamId,
    how: WeightInit,
    gates: usize,
    hidden: usize,
    rng: &mut Rng,
) -> Result<()> {
    match how {
        WeightInit::PyTorchDefault => pytorch_default(store, id, hidden, rng),
        WeightInit::XavierUniform(g) => xavier_uniform(store, id, g, rng),
        WeightInit::XavierNormal(g) => xavier_normal(store, id, g, rng),
        WeightInit::Orthogonal(g) => orthogonal_blocks(store, id, gates, g, rng),
    }
}

/// Re-initialises every parameter of `layer` with `scheme`, layer by layer and direction by
/// direction in registration order (`weight_ih`, `weight_hh`, then with a projection
/// `weight_hr`, then `bias_ih`, `bias_hh`).
pub fn init_recurrent<T: Float>(
    store: &mut ParamStore<T>,
    layer: &Recurrent,
    scheme: &RecurrentInit,
    rng: &mut Rng,
) -> Result<()> {
    let cfg = layer.config();
    let (g, h) = (layer.kind().gates(), cfg.hidden_size);
    for id in layer.param_ids() {
        store.check(id)?;
    }
    if let (Some(_), CellKind::Lstm) = (scheme.lstm_forget_bias, layer.kind())
        && !cfg.bias
    {
        return Err(Error::invalid(
            "init::init_recurrent",
            "an LSTM forget bias was requested but the layer has no biases",
        ));
    }
    for l in 0..cfg.num_layers {
        for d in 0..cfg.directions() {
            let p = layer
                .direction_params(l, d)
                .ok_or_else(|| Error::invalid("init::init_recurrent", "missing parameters"))?;
            init_weight(store, p.w_ih, scheme.input_weights, g, h, rng)?;
            init_weight(store, p.w_hh, scheme.hidden_weights, g, h, rng)?;
            if let Some(w_hr) = p.w_hr {
                init_weight(store, w_hr, scheme.hidden_weights, 1, h, rng)?;
            }
            for b in [p.b_ih, p.b_hh].into_iter().flatten() {
                match scheme.biases {
                    BiasInit::PyTorchDefault => pytorch_default(store, b, h, rng)?,
                    BiasInit::Constant(v) => constant(store, b, v)?,
                }
            }
        }
    }
    if let (Some(v), CellKind::Lstm) = (scheme.lstm_forget_bias, layer.kind()) {
        lstm_forget_bias(store, layer, v)?;
    }
    Ok(())
}
