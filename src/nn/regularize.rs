//! The masks of the recurrence's regularizers: variational (recurrent) dropout, weight drop and
//! zoneout (see [`RecurrentConfig`](super::RecurrentConfig)'s fields of those names).
//!
//! Every mask value is a pure function of the step's key (one word drawn from the training
//! [`Rng`] per forward pass, so a function of the seed and the training step), the layer, the
//! direction, which regularizer, and the value's coordinates ([`crate::rng::KeyedRow`]): the masks do
//! not depend on the number of threads or on the order they are drawn in, and a run resumed
//! from a checkpoint (which stores the generator) draws the same masks as one that never
//! stopped.
//!
//! Each regularizer, as the reference and the fused kernels apply it (forward, backward):
//!
//! * recurrent dropout, `m` `[B, H]`: `a_t = m * h_{t-1}` enters the recurrent product
//!   `W_hh a_t`; backward `dh_{t-1} += m * (dG W_hh)` and `dW_hh = sum_t dG_t^T a_t`;
//! * weight drop, `M` `[G*H, H]`: `W_hh' = M * W_hh` once per step; backward
//!   `dW_hh = M * dW_hh'`;
//! * zoneout, `d_t` `[B, H]` per step: `h_t = d_t * h_{t-1} + (1 - d_t) * h~_t`; backward
//!   `dh~_t = (1 - d_t) * dh_t` and `dh_{t-1} += d_t * dh_t` (the LSTM's `c_t` likewise, inside
//!   its gate kernel).

use super::direction::CellKind;
use crate::Result;
use crate::rng::{KeyedRow, Rng};
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Tensor};

/// Which regularizer a mask is for: part of every draw's counter.
#[derive(Clone, Copy)]
enum Which {
    RecurrentDropout = 0,
    WeightDrop = 1,
    ZoneoutH = 2,
    ZoneoutC = 3,
}

/// The masks of one training step (or of evaluation), for every layer and direction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepMasks {
    /// The step's key; `None` in evaluation.
    key: Option<u64>,
    recurrent_dropout: f64,
    weight_drop: f64,
    zoneout: f64,
}

/// The regularizers' inputs of one layer and direction, as tape constants (the masked `W_hh`
/// is a product on the tape, through which the gradient reaches `W_hh`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DirectionMasks {
    /// `W_hh' = M * W_hh` (weight drop), replacing `W_hh` in the recurrence.
    pub(crate) w_hh: Option<Var>,
    /// The recurrent dropout mask `m` `[B, H]`.
    pub(crate) h_drop: Option<Var>,
    /// Zoneout's keep weights of `h` `[T, B, H]`: `d_t` in {0, 1} in training, `p` in
    /// evaluation.
    pub(crate) zone_h: Option<Var>,
    /// Zoneout's keep weights of the LSTM's `c` `[T, B, H]`.
    pub(crate) zone_c: Option<Var>,
}

impl StepMasks {
    /// The masks of one forward pass: in training (`rng` given and some regularizer on) keyed
    /// on one word drawn from `rng`; in evaluation only zoneout's expectation remains.
    pub(crate) fn new(
        recurrent_dropout: f64,
        weight_drop: f64,
        zoneout: f64,
        rng: Option<&mut Rng>,
    ) -> Self {
        let any = recurrent_dropout > 0.0 || weight_drop > 0.0 || zoneout > 0.0;
        StepMasks {
            key: rng.filter(|_| any).map(|r| r.next_u64()),
            recurrent_dropout,
            weight_drop,
            zoneout,
        }
    }

    /// Whether this pass masks `W_hh` (weight drop, in training).
    pub(crate) fn drops_weights(&self) -> bool {
        self.key.is_some() && self.weight_drop > 0.0
    }

    /// The masks of `layer`, direction `dir`, for a run of `t_len` steps over `batch` rows of
    /// `hidden` units; `w_hh` is the layer's `W_hh` when [`StepMasks::drops_weights`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn direction<T: Float>(
        &self,
        tape: &mut Tape<T>,
        kind: CellKind,
        (layer, dir): (usize, usize),
        (t_len, batch, hidden): (usize, usize, usize),
        w_hh: Option<Var>,
    ) -> Result<DirectionMasks> {
        let stream = |which: Which| ((layer * 2 + dir) * 4 + which as usize) as u64;
        let mut out = DirectionMasks::default();
        if let Some(key) = self.key {
            if let Some(w_hh) = w_hh.filter(|_| self.weight_drop > 0.0) {
                let dims = tape.shape(w_hh)?;
                let m = dropout_mask::<T>(
                    key,
                    stream(Which::WeightDrop),
                    dims.dims(),
                    self.weight_drop,
                )?;
                let m = tape.constant(m);
                out.w_hh = Some(tape.mul(w_hh, m)?);
            }
            if self.recurrent_dropout > 0.0 {
                let s = stream(Which::RecurrentDropout);
                let m = dropout_mask::<T>(key, s, &[batch, hidden], self.recurrent_dropout)?;
                out.h_drop = Some(tape.constant(m));
            }
        }
        if self.zoneout > 0.0 {
            let dims = [t_len, batch, hidden];
            let mut zone = |which: Which| -> Result<Var> {
                let z = match self.key {
                    Some(key) => keep_mask::<T>(key, stream(which), &dims, self.zoneout)?,
                    None => Tensor::full(&dims, T::from_f64(self.zoneout))?,
                };
                Ok(tape.constant(z))
            };
            out.zone_h = Some(zone(Which::ZoneoutH)?);
            if kind.has_cell_state() {
                out.zone_c = Some(zone(Which::ZoneoutC)?);
            }
        }
        Ok(out)
    }
}

/// An inverted-dropout mask of shape `dims` (rank 2: rows, columns): 0 with probability `p`,
/// `1/(1-p)` otherwise; value `(r, j)` drawn from `(key, stream, r, j)`.
fn dropout_mask<T: Float>(key: u64, stream: u64, dims: &[usize], p: f64) -> Result<Tensor<T>> {
    let mut m = Tensor::zeros(dims)?;
    let cols = dims.last().copied().unwrap_or(1).max(1);
    let (zero, keep) = (T::ZERO, T::from_f64(1.0 / (1.0 - p)));
    crate::threads::for_each_chunk(m.data_mut(), cols, |r, row| {
        let draw = KeyedRow::new(key, stream, r as u64);
        for (j, v) in row.iter_mut().enumerate() {
            *v = if draw.uniform(j as u64) < p {
                zero
            } else {
                keep
            };
        }
    });
    Ok(m)
}

/// Zoneout's keep mask `[T, B, H]`: 1 (keep the previous value) with probability `p`, else 0;
/// value `(t, b, j)` drawn from `(key, stream, t, b * H + j)`.
fn keep_mask<T: Float>(key: u64, stream: u64, dims: &[usize; 3], p: f64) -> Result<Tensor<T>> {
    let mut m = Tensor::zeros(dims)?;
    let step = (dims[1] * dims[2]).max(1);
    crate::threads::for_each_chunk(m.data_mut(), step, |t, block| {
        let draw = KeyedRow::new(key, stream, t as u64);
        for (k, v) in block.iter_mut().enumerate() {
            *v = if draw.uniform(k as u64) < p {
                T::ONE
            } else {
                T::ZERO
            };
        }
    });
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_have_the_probability_and_scale_asked_for() {
        let p = 0.3;
        let m = dropout_mask::<f64>(9, 1, &[64, 100], p).unwrap();
        let zeros = m.data().iter().filter(|&&v| v == 0.0).count() as f64 / 6400.0;
        assert!((zeros - p).abs() < 0.03, "dropped {zeros}");
        assert!(m.data().iter().all(|&v| v == 0.0 || v == 1.0 / (1.0 - p)));
        let z = keep_mask::<f32>(9, 2, &[10, 8, 50], p).unwrap();
        let kept = z.data().iter().filter(|&&v| v == 1.0).count() as f64 / 4000.0;
        assert!((kept - p).abs() < 0.03, "kept {kept}");
        // Another key, another stream: other masks.
        assert_ne!(m, dropout_mask::<f64>(10, 1, &[64, 100], p).unwrap());
        assert_ne!(m, dropout_mask::<f64>(9, 5, &[64, 100], p).unwrap());
    }
}
