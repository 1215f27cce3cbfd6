//! The reference recurrence: each step written with primitive tape ops, exactly as the formulas
//! read. It is slow (many small nodes per step) and obviously right; the fused kernels are tested
//! against it, and it shows how to build a custom cell from tape ops.

use super::direction::{CellKind, DirectionOutput, DirectionRun, StepWeights};
use crate::Result;
use crate::kernels::rnn::Activation;
use crate::params::ParamStore;
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Tensor};

/// `x W^T + b` for a `[B, in]` input, `[out, in]` weight and optional `[out]` bias.
fn affine<T: Float>(tape: &mut Tape<T>, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
    let y = tape.matmul_t(x, false, w, true)?;
    match b {
        Some(b) => tape.add(y, b),
        None => Ok(y),
    }
}

/// One side of a gate's pre-activations: `LN(x W^T; γ) + b` for a `[B, in]`
/// input when `gamma` is given, else `x W^T + b`.
fn normalized_affine<T: Float>(
    tape: &mut Tape<T>,
    x: Var,
    w: Var,
    b: Option<Var>,
    gamma: Option<Var>,
) -> Result<Var> {
    let Some(gamma) = gamma else {
        return affine(tape, x, w, b);
    };
    let y = tape.matmul_t(x, false, w, true)?;
    let y = layer_norm(tape, y, gamma, None)?;
    match b {
        Some(b) => tape.add(y, b),
        None => Ok(y),
    }
}

/// `LN(z; γ, β) = γ * (z - mean(z)) / sqrt(var(z) + eps) + β` over the last axis of `z`
/// `[B, n]` (biased variance, `eps = 1e-5`), from primitive ops: the row means broadcast by a
/// product with the `[n, n]` matrix of `1/n`, and `1 / sqrt(v)` as `exp(-log(v) / 2)`.
pub(crate) fn layer_norm<T: Float>(
    tape: &mut Tape<T>,
    z: Var,
    gamma: Var,
    beta: Option<Var>,
) -> Result<Var> {
    let n = tape.shape(z)?.last();
    let avg = tape.constant(Tensor::full(&[n, n], T::ONE / T::from_usize(n))?);
    let eps = tape.constant(Tensor::full(
        &[1],
        T::from_f64(crate::kernels::layer_norm::EPS),
    )?);
    let mean = tape.matmul(z, avg)?;
    let centred = tape.sub(z, mean)?;
    let sq = tape.mul(centred, centred)?;
    let var = tape.matmul(sq, avg)?;
    let var = tape.add(var, eps)?;
    let log_var = tape.log(var)?;
    let half = tape.scale(log_var, T::from_f64(-0.5))?;
    let inv_std = tape.exp(half)?;
    let xhat = tape.mul(centred, inv_std)?;
    let y = tape.mul(xhat, gamma)?;
    match beta {
        Some(b) => tape.add(y, b),
        None => Ok(y),
    }
}

/// Runs one direction of one layer over its `x` (`[T, B, I]`) from its `h0` (`[B, H]`, or
/// `[B, P]` with a projection) and (LSTM) `c0` (`[B, H]`).
pub(crate) fn run<T: Float>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    run: &DirectionRun<'_>,
) -> Result<DirectionOutput> {
    let dims = tape.shape(run.x)?;
    let (t_len, batch) = (dims.dims()[0], dims.dims()[1]);
    let state = tape.shape(run.h0)?.dims()[1];
    // The cell state is H wide; the hidden state too, unless the LSTM projects it.
    let hidden = match run.c0 {
        Some(c0) => tape.shape(c0)?.dims()[1],
        None => state,
    };
    let w = run.weights(tape, store)?;
    let reg = &run.masks;
    // Zoneout's keep weights d and 1 - d, `[T, B, H]`.
    let zone_h = reg.zone_h.map(|z| keep_and_update(tape, z)).transpose()?;
    let zone_c = reg.zone_c.map(|z| keep_and_update(tape, z)).transpose()?;

    let (mut h, mut c) = (run.h0, run.c0);
    let mut ys: Vec<Option<Var>> = vec![None; t_len];
    for s in 0..t_len {
        let t = run.time(s, t_len);
        let x_t = tape.select(run.x, t)?;
        // Recurrent dropout: a_t = m * h_{t-1} enters the recurrent product.
        let h_rec = match reg.h_drop {
            Some(m) => tape.mul(h, m)?,
            None => h,
        };
        let zc = zone_c
            .map(|(d, u)| Ok::<_, crate::Error>((tape.select(d, t)?, tape.select(u, t)?)))
            .transpose()?;
        let (h_new, c_new) = regularized_step(tape, run.kind, hidden, x_t, (h, h_rec), c, zc, &w)?;
        // Zoneout: h_t = d_t * h_{t-1} + (1 - d_t) * h~_t.
        let h_new = match zone_h {
            Some((d, u)) => {
                let (d, u) = (tape.select(d, t)?, tape.select(u, t)?);
                blend(tape, u, d, h_new, h)?
            }
            None => h_new,
        };
        match run.lengths {
            None => {
                ys[t] = Some(h_new);
                h = h_new;
                c = c_new;
            }
            Some(_) => {
                // m = 1 where the sequence is still running at time t, else 0 (state frozen).
                let (m, not_m) = masks(tape, run, t, batch, state)?;
                ys[t] = Some(tape.mul(m, h_new)?);
                h = blend(tape, m, not_m, h_new, h)?;
                if let (Some(cn), Some(cp)) = (c_new, c) {
                    let (m, not_m) = if hidden == state {
                        (m, not_m)
                    } else {
                        masks(tape, run, t, batch, hidden)?
                    };
                    c = Some(blend(tape, m, not_m, cn, cp)?);
                }
            }
        }
    }
    let ys: Vec<Var> = ys.into_iter().map(|y| y.expect("every step ran")).collect();
    let y = tape.stack(&ys)?;
    Ok(DirectionOutput { y, h_n: h, c_n: c })
}

/// Zoneout's keep weights `d` `[T, B, H]` and `1 - d`, as tape constants.
fn keep_and_update<T: Float>(tape: &mut Tape<T>, d: Var) -> Result<(Var, Var)> {
    let dv = tape.value(d)?;
    let u = Tensor::from_fn(dv.dims(), |k| T::ONE - dv.data()[k])?;
    Ok((d, tape.constant(u)))
}

/// One step of a cell from primitive ops: `x_t` `[B, I]`, `h` (and `c`) `[B, H]` to the next
/// `h` (and `c`). The formulas are the chapter's (and PyTorch's gate orders). An LSTM with a
/// projection `W_hr` `[P, H]` carries `h` `[B, P]`: `h_t = (o * tanh(c_t)) W_hr^T`.
pub(crate) fn cell_step<T: Float>(
    tape: &mut Tape<T>,
    kind: CellKind,
    hidden: usize,
    x_t: Var,
    h: Var,
    c: Option<Var>,
    w: &StepWeights,
) -> Result<(Var, Option<Var>)> {
    regularized_step(tape, kind, hidden, x_t, (h, h), c, None, w)
}

/// [`cell_step`] with the regularizers inside a cell: `h_rec` is what enters the recurrent
/// product (`m * h_{t-1}` with recurrent dropout, else `h`; the GRU's `z * h` reads `h`), and
/// `zone_c` the LSTM's zoneout weights `(d_t, 1 - d_t)` of `c`:
/// `c_t = d_t * c_{t-1} + (1 - d_t) * (f * c_{t-1} + i * g)`, whose `tanh` gives `h_t`.
#[allow(clippy::too_many_arguments)]
fn regularized_step<T: Float>(
    tape: &mut Tape<T>,
    kind: CellKind,
    hidden: usize,
    x_t: Var,
    (h, h_rec): (Var, Var),
    c: Option<Var>,
    zone_c: Option<(Var, Var)>,
    w: &StepWeights,
) -> Result<(Var, Option<Var>)> {
    Ok(match kind {
        CellKind::Rnn(act) => {
            let a = affine(tape, x_t, w.w_ih, w.b_ih)?;
            let r = affine(tape, h_rec, w.w_hh, w.b_hh)?;
            let pre = tape.add(a, r)?;
            let h_new = match act {
                Activation::Tanh => tape.tanh(pre)?,
                Activation::Relu => tape.relu(pre)?,
            };
            (h_new, None)
        }
        CellKind::Lstm => {
            // With layer normalization: LN(W_ih x_t; γ_x) + b_ih + LN(W_hh h_{t-1}; γ_h) + b_hh.
            let a = normalized_affine(tape, x_t, w.w_ih, w.b_ih, w.ln.map(|l| l.gamma_ih))?;
            let r = normalized_affine(tape, h_rec, w.w_hh, w.b_hh, w.ln.map(|l| l.gamma_hh))?;
            let gates = tape.add(a, r)?;
            let i = tape.slice(gates, 0, hidden)?;
            let i = tape.sigmoid(i)?;
            let f = tape.slice(gates, hidden, 2 * hidden)?;
            let f = tape.sigmoid(f)?;
            let g = tape.slice(gates, 2 * hidden, 3 * hidden)?;
            let g = tape.tanh(g)?;
            let o = tape.slice(gates, 3 * hidden, 4 * hidden)?;
            let o = tape.sigmoid(o)?;
            let c_prev = c.expect("an LSTM carries a cell state");
            let fc = tape.mul(f, c_prev)?;
            let ig = tape.mul(i, g)?;
            let c_new = tape.add(fc, ig)?; // c_t = f * c_{t-1} + i * g
            // Zoneout: c_t = d_t * c_{t-1} + (1 - d_t) * c~_t.
            let c_new = match zone_c {
                Some((d, u)) => blend(tape, u, d, c_new, c_prev)?,
                None => c_new,
            };
            // With layer normalization: h_t = o * tanh(LN(c_t; γ_c, β_c)).
            let c_out = match w.ln.and_then(|l| l.cell) {
                Some((gc, bc)) => layer_norm(tape, c_new, gc, Some(bc))?,
                None => c_new,
            };
            let tc = tape.tanh(c_out)?;
            let h_new = tape.mul(o, tc)?; // h_t = o * tanh(c_t)
            let h_new = match w.w_hr {
                Some(w_hr) => tape.matmul_t(h_new, false, w_hr, true)?, // h_t = W_hr h_t
                None => h_new,
            };
            (h_new, Some(c_new))
        }
        CellKind::Gru => {
            // With layer normalization: LN(W_ih x_t; γ_x) + b_ih and LN(W_hh h; γ_h) + b_hh.
            let xp = normalized_affine(tape, x_t, w.w_ih, w.b_ih, w.ln.map(|l| l.gamma_ih))?;
            let hp = normalized_affine(tape, h_rec, w.w_hh, w.b_hh, w.ln.map(|l| l.gamma_hh))?;
            let (xr, hr) = (tape.slice(xp, 0, hidden)?, tape.slice(hp, 0, hidden)?);
            let r = tape.add(xr, hr)?;
            let r = tape.sigmoid(r)?;
            let (xz, hz) = (
                tape.slice(xp, hidden, 2 * hidden)?,
                tape.slice(hp, hidden, 2 * hidden)?,
            );
            let z = tape.add(xz, hz)?;
            let z = tape.sigmoid(z)?;
            let (xn, hn) = (
                tape.slice(xp, 2 * hidden, 3 * hidden)?,
                tape.slice(hp, 2 * hidden, 3 * hidden)?,
            );
            let rhn = tape.mul(r, hn)?;
            let n = tape.add(xn, rhn)?;
            let n = tape.tanh(n)?; // n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
            // h' = (1 - z) * n + z * h, computed as n + z * (h - n)
            let h_minus_n = tape.sub(h, n)?;
            let zd = tape.mul(z, h_minus_n)?;
            (tape.add(n, zd)?, None)
        }
    })
}

/// The masks `m` and `1 - m` `[B, width]` of step time `t`: 1 in the rows whose sequence is
/// still running, 0 in the rest.
fn masks<T: Float>(
    tape: &mut Tape<T>,
    run: &DirectionRun<'_>,
    t: usize,
    batch: usize,
    width: usize,
) -> Result<(Var, Var)> {
    let m = Tensor::from_fn(&[batch, width], |k| {
        if run.active(t, k / width) {
            T::ONE
        } else {
            T::ZERO
        }
    })?;
    let not_m = Tensor::from_fn(&[batch, width], |k| T::ONE - m.data()[k])?;
    Ok((tape.constant(m), tape.constant(not_m)))
}

/// `m * new + (1 - m) * old` (with `not_m = 1 - m`), exact for a 0/1 mask.
fn blend<T: Float>(tape: &mut Tape<T>, m: Var, not_m: Var, new: Var, old: Var) -> Result<Var> {
    let a = tape.mul(m, new)?;
    let b = tape.mul(not_m, old)?;
    tape.add(a, b)
}
