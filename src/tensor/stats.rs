//! Row-wise conveniences on tensors of scores (logits): argmax, softmax, top-k, accuracy. A
//! tensor `[..., C]` is read as rows of `C` scores.

use super::{Float, Tensor};
use crate::{Error, Result};

impl<T: Float> Tensor<T> {
    /// The rows of a tensor `[..., C]` as `(rows, C)`; a scalar or an empty last axis is an
    /// error.
    fn score_rows(&self, op: &'static str) -> Result<(usize, usize)> {
        let s = self.shape();
        if s.rank() == 0 || s.last() == 0 {
            return Err(Error::invalid(
                op,
                format!("needs a non-empty last axis of scores, got shape {s}"),
            ));
        }
        Ok((s.rows(), s.last()))
    }

    /// The index of the largest value in each row of `[..., C]` (the first one on ties; NaN
    /// counts as largest, by `total_cmp`).
    ///
    /// ```
    /// use recur::Tensor;
    /// let t = Tensor::from_vec(vec![0.1f32, 0.7, 0.2, 3.0, -1.0, 0.0], &[2, 3])?;
    /// assert_eq!(t.argmax_rows()?, vec![1, 0]);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn argmax_rows(&self) -> Result<Vec<usize>> {
        let (_, c) = self.score_rows("Tensor::argmax_rows")?;
        Ok(self
            .data()
            .chunks_exact(c)
            .map(|row| {
                let mut best = 0;
                for (i, v) in row.iter().enumerate() {
                    if v.to_f64().total_cmp(&row[best].to_f64()).is_gt() {
                        best = i;
                    }
                }
                best
            })
            .collect())
    }

    /// Softmax over the last axis, computed stably (each row's maximum is subtracted first).
    ///
    /// ```
    /// use recur::Tensor;
    /// let p = Tensor::from_vec(vec![0.0f64, 0.0, 1000.0, 1000.0], &[2, 2])?.softmax_rows()?;
    /// assert_eq!(p.data(), &[0.5, 0.5, 0.5, 0.5]);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn softmax_rows(&self) -> Result<Tensor<T>> {
        let (_, c) = self.score_rows("Tensor::softmax_rows")?;
        let mut out = self.clone();
        for row in out.data_mut().chunks_exact_mut(c) {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
            let mut total = 0.0;
            for v in row.iter_mut() {
                let e = (v.to_f64() - m).exp();
                total += e;
                *v = T::from_f64(e);
            }
            for v in row.iter_mut() {
                *v = T::from_f64(v.to_f64() / total);
            }
        }
        Ok(out)
    }

    /// The `k` largest values of each row with their indices, largest first (ties in index
    /// order); `k` larger than the row is cut to the row.
    ///
    /// ```
    /// use recur::Tensor;
    /// let t = Tensor::from_vec(vec![0.1f32, 0.7, 0.2, 0.5], &[1, 4])?;
    /// assert_eq!(t.top_k_rows(2)?, vec![vec![(1, 0.7), (3, 0.5)]]);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn top_k_rows(&self, k: usize) -> Result<Vec<Vec<(usize, T)>>> {
        let (_, c) = self.score_rows("Tensor::top_k_rows")?;
        Ok(self
            .data()
            .chunks_exact(c)
            .map(|row| {
                let mut idx: Vec<usize> = (0..c).collect();
                idx.sort_by(|&a, &b| row[b].to_f64().total_cmp(&row[a].to_f64()).then(a.cmp(&b)));
                idx.truncate(k);
                idx.into_iter().map(|i| (i, row[i])).collect()
            })
            .collect())
    }

    /// The fraction of rows whose argmax is the target (one target per row).
    ///
    /// ```
    /// use recur::Tensor;
    /// let logits = Tensor::from_vec(vec![2.0f32, 1.0, 0.0, 3.0, 5.0, 1.0], &[3, 2])?;
    /// assert_eq!(logits.accuracy(&[0, 1, 1])?, 2.0 / 3.0);
    /// assert!(logits.accuracy(&[0]).is_err());
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn accuracy(&self, targets: &[usize]) -> Result<f64> {
        let pred = self.argmax_rows()?;
        accuracy(&pred, targets)
    }
}

/// The fraction of `predictions` equal to `targets` (of the same, non-zero, length).
///
/// ```
/// assert_eq!(recur::tensor::accuracy(&[1, 2, 3, 4], &[1, 2, 0, 4])?, 0.75);
/// # Ok::<(), recur::Error>(())
/// ```
pub fn accuracy(predictions: &[usize], targets: &[usize]) -> Result<f64> {
    if predictions.len() != targets.len() || targets.is_empty() {
        return Err(Error::invalid(
            "accuracy",
            format!(
                "{} predictions for {} targets (need as many, at least one)",
                predictions.len(),
                targets.len()
            ),
        ));
    }
    let right = predictions
        .iter()
        .zip(targets)
        .filter(|(p, t)| p == t)
        .count();
    Ok(right as f64 / targets.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, -50.0, 0.0, 50.0], &[2, 3]).unwrap();
        let p = t.softmax_rows().unwrap();
        for row in p.data().chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(row[0] < row[1] && row[1] < row[2]);
        }
        assert_eq!(p.argmax_rows().unwrap(), t.argmax_rows().unwrap());
        assert!(Tensor::<f32>::scalar(1.0).argmax_rows().is_err());
        assert_eq!(t.top_k_rows(9).unwrap()[1].len(), 3);
    }
}
