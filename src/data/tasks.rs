//! Long-range synthetic tasks: each has a simple baseline that a model without memory can reach,
//! so "beats the baseline" means "learned to carry information across time".

use crate::rng::Rng;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// One batch of the adding problem.
#[derive(Clone, Debug)]
pub struct AddingBatch<T: Float> {
    /// Inputs `[T, B, 2]`: channel 0 a value drawn from U[0, 1], channel 1 the marker (1.0 at
    /// the two marked steps, else 0.0).
    pub x: Tensor<T>,
    /// Targets `[B, 1]`: the sum of the two marked values.
    pub y: Tensor<T>,
}

impl<T: Float> AddingBatch<T> {
    /// The mean squared error of always predicting 1 (the target's mean): its expectation is the
    /// variance of a sum of two U[0, 1] values, 1/6 ≈ 0.167.
    pub const BASELINE_MSE: f64 = 1.0 / 6.0;
}

/// Generates `batch` sequences of the adding problem of length `t_len` (at least 2): values
/// U[0, 1], one marker placed uniformly in each half; the target is the sum of the two marked
/// values.
///
/// ```
/// use recur::{Rng, data::adding_problem};
///
/// let b = adding_problem::<f64>(&mut Rng::new(0), 4, 10)?;
/// assert_eq!(b.x.dims(), &[10, 4, 2]);
/// assert_eq!(b.y.dims(), &[4, 1]);
/// # Ok::<(), recur::Error>(())
/// ```
pub fn adding_problem<T: Float>(
    rng: &mut Rng,
    batch: usize,
    t_len: usize,
) -> Result<AddingBatch<T>> {
    if t_len < 2 || batch == 0 {
        return Err(Error::invalid(
            "adding_problem",
            format!("needs seq_len >= 2 and batch >= 1, got seq_len {t_len}, batch {batch}"),
        ));
    }
    let n = t_len
        .checked_mul(batch)
        .and_then(|v| v.checked_mul(2))
        .ok_or_else(|| {
            Error::invalid(
                "adding_problem",
                format!("seq_len {t_len} x batch {batch} is too large"),
            )
        })?;
    let mut x = vec![T::ZERO; n];
    let mut y = vec![T::ZERO; batch];
    let half = t_len / 2;
    for b in 0..batch {
        for t in 0..t_len {
            x[(t * batch + b) * 2] = T::from_f64(rng.uniform());
        }
        let first = rng.below(half);
        let second = half + rng.below(t_len - half);
        let mut sum = 0.0;
        for t in [first, second] {
            x[(t * batch + b) * 2 + 1] = T::ONE;
            sum += x[(t * batch + b) * 2].to_f64();
        }
        y[b] = T::from_f64(sum);
    }
    Ok(AddingBatch {
        x: Tensor::from_vec(x, &[t_len, batch, 2])?,
        y: Tensor::from_vec(y, &[batch, 1])?,
    })
}

/// One batch of the copy-memory task, as token ids laid out time-major `[L, B]`.
#[derive(Clone, Debug)]
pub struct CopyBatch {
    /// Input ids, `L * B`.
    pub x: Vec<usize>,
    /// Target ids, `L * B`.
    pub y: Vec<usize>,
    /// The sequence length `L = T + 20`.
    pub seq_len: usize,
    /// The batch size.
    pub batch: usize,
}

impl CopyBatch {
    /// Id of the blank symbol.
    pub const BLANK: usize = 0;
    /// Id of the delimiter that asks for the copy.
    pub const DELIMITER: usize = 9;
    /// Number of distinct ids (blank, eight symbols, delimiter).
    pub const VOCAB: usize = 10;
    /// How many symbols are to be remembered.
    pub const COPY_LEN: usize = 10;

    /// The cross-entropy per step of the best model without memory: blanks are certain, and each
    /// of the 10 symbols to recall is a guess among 8: `10 ln 8 / (T + 20)`.
    pub fn baseline(delay: usize) -> f64 {
        10.0 * 8f64.ln() / (delay as f64 + 20.0)
    }
}

/// Generates the copy-memory task with delay `delay` (T): 10 symbols from {1..8}, `T - 1`
/// blanks, the delimiter, then 10 blanks during which the model must output the 10 symbols.
/// Targets are blank everywhere except the last 10 steps.
pub fn copy_memory(rng: &mut Rng, batch: usize, delay: usize) -> Result<CopyBatch> {
    if delay == 0 || batch == 0 {
        return Err(Error::invalid(
            "copy_memory",
            format!("needs delay >= 1 and batch >= 1, got delay {delay}, batch {batch}"),
        ));
    }
    let n = CopyBatch::COPY_LEN;
    let seq_len = delay
        .checked_add(2 * n)
        .filter(|l| l.checked_mul(batch).is_some())
        .ok_or_else(|| {
            Error::invalid(
                "copy_memory",
                format!("delay {delay} x batch {batch} is too large"),
            )
        })?;
    let mut x = vec![CopyBatch::BLANK; seq_len * batch];
    let mut y = vec![CopyBatch::BLANK; seq_len * batch];
    for b in 0..batch {
        for k in 0..n {
            let s = 1 + rng.below(8);
            x[k * batch + b] = s;
            y[(delay + n + k) * batch + b] = s;
        }
        x[(delay + n - 1) * batch + b] = CopyBatch::DELIMITER;
    }
    Ok(CopyBatch {
        x,
        y,
        seq_len,
        batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_predicting_one_scores_about_one_sixth() {
        let mut rng = Rng::new(7);
        let b = adding_problem::<f64>(&mut rng, 20_000, 20).unwrap();
        let mse: f64 = b.y.data().iter().map(|&s| (s - 1.0).powi(2)).sum::<f64>() / 20_000.0;
        // standard error of the mean is about 0.0015 at this sample size
        assert!(
            (mse - AddingBatch::<f64>::BASELINE_MSE).abs() < 0.006,
            "mse {mse}"
        );
        assert!((AddingBatch::<f64>::BASELINE_MSE - 0.167).abs() < 5e-4);
    }

    #[test]
    fn adding_has_one_marker_per_half_and_the_right_target() {
        let (t_len, batch) = (9, 5);
        let b = adding_problem::<f64>(&mut Rng::new(1), batch, t_len).unwrap();
        for s in 0..batch {
            let marked: Vec<usize> = (0..t_len)
                .filter(|&t| b.x.data()[(t * batch + s) * 2 + 1] == 1.0)
                .collect();
            assert_eq!(marked.len(), 2);
            assert!(marked[0] < t_len / 2 && marked[1] >= t_len / 2);
            let sum: f64 = marked
                .iter()
                .map(|&t| b.x.data()[(t * batch + s) * 2])
                .sum();
            assert_eq!(b.y.data()[s], sum);
        }
    }

    #[test]
    fn copy_targets_repeat_the_first_ten_symbols_after_the_delimiter() {
        let (delay, batch) = (30, 3);
        let c = copy_memory(&mut Rng::new(3), batch, delay).unwrap();
        assert_eq!(c.seq_len, delay + 20);
        for b in 0..batch {
            let at = |v: &Vec<usize>, t: usize| v[t * batch + b];
            for k in 0..10 {
                assert!((1..=8).contains(&at(&c.x, k)));
                assert_eq!(at(&c.y, delay + 10 + k), at(&c.x, k));
            }
            assert_eq!(at(&c.x, delay + 9), CopyBatch::DELIMITER);
            let blanks = (0..delay + 10).filter(|&t| at(&c.y, t) == 0).count();
            assert_eq!(blanks, delay + 10);
        }
        // The memoryless predictor: certain blank before the recall window, a uniform guess
        // over the 8 symbols inside it. Its cross-entropy on the batch is the stated baseline.
        let mut ce = 0.0;
        for t in 0..c.seq_len {
            for b in 0..batch {
                let target = c.y[t * batch + b];
                let p: f64 = if t < delay + 10 {
                    if target == CopyBatch::BLANK { 1.0 } else { 0.0 }
                } else if (1..=8).contains(&target) {
                    1.0 / 8.0
                } else {
                    0.0
                };
                ce -= p.ln();
            }
        }
        ce /= (c.seq_len * batch) as f64;
        assert!((ce - CopyBatch::baseline(delay)).abs() < 1e-12, "{ce}");
        assert!(copy_memory(&mut Rng::new(0), 0, 5).is_err());
        assert!(copy_memory(&mut Rng::new(0), 2, usize::MAX).is_err());
        assert!(adding_problem::<f32>(&mut Rng::new(0), usize::MAX, 4).is_err());
    }
}
