//! Sequence losses on the tape, for time-major outputs `[T, B, ...]` with optional per-sequence
//! `lengths` (padded steps past a sequence's length do not count).
//!
//! * many-to-many: [`sequence_cross_entropy`] (one class per step) and [`sequence_mse`];
//! * many-to-one: [`last_step_cross_entropy`] and [`last_step_mse`], which score only the last
//!   real step of each sequence (step `lengths[b] - 1`, or `T - 1` without lengths).
//!
//! Every loss is a mean over the steps that count, so it does not grow with padding.
//!
//! ```
//! use recur::nn::loss::sequence_cross_entropy;
//! use recur::{Tape, Tensor};
//! // T = 2 steps, B = 2 sequences, V = 3 classes; the second sequence has length 1.
//! let mut tape = Tape::<f64>::new();
//! let logits = tape.input(Tensor::zeros(&[2, 2, 3])?);
//! let loss = sequence_cross_entropy(&mut tape, logits, &[0, 1, 2, 0], Some(&[2, 1]))?;
//! // Uniform predictions: every counted step costs ln 3; 3 steps count.
//! assert!((tape.value(loss)?.data()[0] - 3f64.ln()).abs() < 1e-12);
//! # Ok::<(), recur::Error>(())
//! ```

use crate::tape::{Tape, Var};
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// `(T, B)` of a time-major `[T, B, ...]` output (rank 3).
fn time_batch<T: Float>(tape: &Tape<T>, v: Var, op: &'static str) -> Result<(usize, usize, usize)> {
    let s = tape.shape(v)?;
    match *s.dims() {
        [t, b, f] => Ok((t, b, f)),
        _ => Err(Error::invalid(
            op,
            format!("expects a time-major [T, B, F] tensor, got shape {s}"),
        )),
    }
}

fn check_lengths(op: &'static str, lengths: &[usize], t: usize, b: usize) -> Result<()> {
    if lengths.len() != b {
        return Err(Error::invalid(
            op,
            format!("{} lengths for a batch of {b}", lengths.len()),
        ));
    }
    if let Some((k, &l)) = lengths
        .iter()
        .enumerate()
        .find(|(_, l)| **l == 0 || **l > t)
    {
        return Err(Error::invalid(
            op,
            format!("lengths[{k}] = {l} is outside 1..={t}"),
        ));
    }
    Ok(())
}

/// Mean cross-entropy over every real step: `logits` `[T, B, V]`, `targets` the class of each step
/// in time-major order (`targets[t * B + b]`, `T * B` entries; the entries of padded steps are
/// ignored and may be any value), `lengths` the real length of each sequence (all `T` when
/// `None`).
pub fn sequence_cross_entropy<T: Float>(
    tape: &mut Tape<T>,
    logits: Var,
    targets: &[usize],
    lengths: Option<&[usize]>,
) -> Result<Var> {
    const OP: &str = "sequence_cross_entropy";
    let (t_len, b, _) = time_batch(tape, logits, OP)?;
    if targets.len() != t_len * b {
        return Err(Error::invalid(
            OP,
            format!(
                "{} targets for {t_len} steps x {b} sequences (need T * B = {})",
                targets.len(),
                t_len * b
            ),
        ));
    }
    match lengths {
        None => tape.cross_entropy(logits, targets, None),
        Some(l) => {
            check_lengths(OP, l, t_len, b)?;
            let mask: Vec<bool> = (0..t_len * b).map(|i| i / b < l[i % b]).collect();
            // Padded steps may carry any target; give them a valid class so only real ones are
            // range-checked.
            let targets: Vec<usize> = targets
                .iter()
                .zip(&mask)
                .map(|(&c, &m)| if m { c } else { 0 })
                .collect();
            tape.cross_entropy_masked(logits, &targets, &mask)
        }
    }
}

/// Mean cross-entropy at the last real step of each sequence (many-to-one classification):
/// `logits` `[T, B, V]`, `targets` one class per sequence (`B` entries).
pub fn last_step_cross_entropy<T: Float>(
    tape: &mut Tape<T>,
    logits: Var,
    targets: &[usize],
    lengths: Option<&[usize]>,
) -> Result<Var> {
    const OP: &str = "last_step_cross_entropy";
    let (t_len, b, _) = time_batch(tape, logits, OP)?;
    if targets.len() != b {
        return Err(Error::invalid(
            OP,
            format!("{} targets for a batch of {b}", targets.len()),
        ));
    }
    if let Some(l) = lengths {
        check_lengths(OP, l, t_len, b)?;
    }
    let last = |k: usize| lengths.map_or(t_len - 1, |l| l[k] - 1);
    let mut mask = vec![false; t_len * b];
    let mut full = vec![0; t_len * b];
    for (k, &c) in targets.iter().enumerate() {
        let i = last(k) * b + k;
        mask[i] = true;
        full[i] = c;
    }
    tape.cross_entropy_masked(logits, &full, &mask)
}

/// `sum(mask * (pred - target)^2) / count`, with `mask` a constant 0/1 tensor shaped like `pred`.
fn masked_mse<T: Float>(
    tape: &mut Tape<T>,
    pred: Var,
    target: Var,
    mask: Tensor<T>,
    count: usize,
) -> Result<Var> {
    let d = tape.sub(pred, target)?;
    let m = tape.constant(mask);
    let dm = tape.mul(d, m)?;
    let sq = tape.mul(dm, dm)?;
    let s = tape.sum(sq)?;
    tape.scale(s, T::from_f64(1.0 / count as f64))
}

/// Mean squared error over every element of every real step: `pred` and `target` `[T, B, F]`.
pub fn sequence_mse<T: Float>(
    tape: &mut Tape<T>,
    pred: Var,
    target: Var,
    lengths: Option<&[usize]>,
) -> Result<Var> {
    const OP: &str = "sequence_mse";
    let (t_len, b, f) = time_batch(tape, pred, OP)?;
    let (ps, ts) = (tape.shape(pred)?, tape.shape(target)?);
    if ps != ts {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: ps,
            rhs: ts,
        });
    }
    let Some(l) = lengths else {
        return tape.mse(pred, target);
    };
    check_lengths(OP, l, t_len, b)?;
    let mask = Tensor::from_fn(&[t_len, b, f], |i| {
        let (t, k) = (i / (b * f), (i / f) % b);
        if t < l[k] { T::ONE } else { T::ZERO }
    })?;
    let count = l.iter().sum::<usize>() * f;
    masked_mse(tape, pred, target, mask, count)
}

/// Mean squared error at the last real step of each sequence (many-to-one regression): `pred`
/// `[T, B, F]`, `target` `[B, F]`.
pub fn last_step_mse<T: Float>(
    tape: &mut Tape<T>,
    pred: Var,
    target: &Tensor<T>,
    lengths: Option<&[usize]>,
) -> Result<Var> {
    const OP: &str = "last_step_mse";
    let (t_len, b, f) = time_batch(tape, pred, OP)?;
    if target.dims() != [b, f] {
        return Err(Error::invalid(
            OP,
            format!("target must be [B, F] = [{b}, {f}], got {}", target.shape()),
        ));
    }
    if let Some(l) = lengths {
        check_lengths(OP, l, t_len, b)?;
    }
    let last = |k: usize| lengths.map_or(t_len - 1, |l| l[k] - 1);
    let mut mask = Tensor::zeros(&[t_len, b, f])?;
    let mut full = Tensor::zeros(&[t_len, b, f])?;
    for k in 0..b {
        let o = (last(k) * b + k) * f;
        mask.data_mut()[o..o + f].fill(T::ONE);
        full.data_mut()[o..o + f].copy_from_slice(&target.data()[k * f..(k + 1) * f]);
    }
    let full = tape.constant(full);
    masked_mse(tape, pred, full, mask, b * f)
}
