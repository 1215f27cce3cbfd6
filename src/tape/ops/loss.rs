//! Losses. Softmax cross-entropy from logits, computed stably (the max is subtracted before
//! exponentiating), with targets that can be ignored; mean squared error.

use super::{GradAcc, Op};
use crate::kernels::softmax::{softmax_row, softmax_row_backward};
use crate::tape::{Tape, Var};
use crate::tensor::{Float, Shape, Tensor};
use crate::{Error, Result};

/// Marks a row that does not count towards the loss.
const SKIP: usize = usize::MAX;

/// A row of the cross-entropy's forward: its logits, its probabilities (written), its target
/// and its loss (written).
type RowItem<'a, T> = ((&'a [T], &'a mut [T]), (&'a usize, &'a mut f64));

impl<T: Float> Tape<T> {
    /// Mean softmax cross-entropy of `logits` (`[..., C]`, one row per prediction) against class
    /// `targets` (one per row). Rows whose target equals `ignore_index` do not count (as padding in
    /// PyTorch's `ignore_index`); the mean is over counted rows, and is 0 if none count.
    ///
    /// ```
    /// # use recur::{Tape, Tensor};
    /// let mut tape = Tape::<f64>::new();
    /// let logits = tape.input(Tensor::from_vec(vec![0.0, 0.0, 0.0, 5.0, 0.0, 0.0], &[2, 3])?);
    /// let loss = tape.cross_entropy(logits, &[1, 0], None)?;
    /// let l = tape.value(loss)?.data()[0];
    /// let want = (3f64.ln() + (5f64.exp() + 2.0).ln() - 5.0) / 2.0;
    /// assert!((l - want).abs() < 1e-12);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn cross_entropy(
        &mut self,
        logits: Var,
        targets: &[usize],
        ignore_index: Option<usize>,
    ) -> Result<Var> {
        self.cross_entropy_inner(logits, targets, |i| Some(targets[i]) == ignore_index)
    }

    /// Like [`Tape::cross_entropy`] with a mask: rows where `mask` is `false` (padded steps) do
    /// not count.
    pub fn cross_entropy_masked(
        &mut self,
        logits: Var,
        targets: &[usize],
        mask: &[bool],
    ) -> Result<Var> {
        if mask.len() != targets.len() {
            return Err(Error::invalid(
                "cross_entropy_masked",
                format!(
                    "mask has {} entries for {} targets",
                    mask.len(),
                    targets.len()
                ),
            ));
        }
        self.cross_entropy_inner(logits, targets, |i| !mask[i])
    }

    fn cross_entropy_inner(
        &mut self,
        logits: Var,
        targets: &[usize],
        skip: impl Fn(usize) -> bool,
    ) -> Result<Var> {
        let il = self.check("cross_entropy", logits)?;
        let s = self.slots[il as usize].value.shape();
        if s.rank() < 1 {
            return Err(Error::invalid(
                "cross_entropy",
                "logits must have a class axis",
            ));
        }
        let (rows, c) = (s.rows(), s.last());
        if targets.len() != rows {
            return Err(Error::invalid(
                "cross_entropy",
                format!("{} targets for {rows} rows of logits {s}", targets.len()),
            ));
        }
        let start = self.aux.len();
        let mut count = 0;
        for (i, &t) in targets.iter().enumerate() {
            if skip(i) {
                self.aux.push(SKIP);
            } else if t >= c {
                self.aux.truncate(start);
                return Err(Error::IndexOutOfRange {
                    op: "cross_entropy (target class)",
                    index: t,
                    size: c,
                });
            } else {
                self.aux.push(t);
                count += 1;
            }
        }
        let mut probs = self.alloc(s);
        let x = self.slots[il as usize].value.data();
        let targets = &self.aux[start..];
        // Each row's -log softmax at its target, ln z - (x_t - m), summed in row order
        // afterwards: the same loss whatever the number of threads.
        let mut row_loss = vec![0.0f64; rows];
        let row = |((x, p), (&t, l)): RowItem<'_, T>| {
            let (m, z) = softmax_row(x, p);
            if t != SKIP {
                *l = z.ln().to_f64() - (x[t] - m).to_f64();
            }
        };
        if spread_rows(rows, c) {
            use rayon::prelude::*;
            (x.par_chunks_exact(c)
                .zip(probs.data_mut().par_chunks_exact_mut(c)))
            .zip(targets.par_iter().zip(row_loss.par_iter_mut()))
            .with_min_len(ROWS_MIN_VALUES.div_ceil(c))
            .for_each(row);
        } else {
            (x.chunks_exact(c).zip(probs.data_mut().chunks_exact_mut(c)))
                .zip(targets.iter().zip(row_loss.iter_mut()))
                .for_each(row);
        }
        let total: f64 = row_loss.iter().sum();
        let mut out = self.alloc(Shape::scalar());
        out.data_mut()[0] = T::from_f64(if count > 0 { total / count as f64 } else { 0.0 });
        let targets = start..self.aux.len();
        let first = self.push_node(Op::CrossEntropy { targets, count }, &[il], [out, probs])?;
        Ok(self.var(first))
    }

    /// Mean squared error `mean((a - b)^2)`; `a` and `b` must have the same shape.
    pub fn mse(&mut self, a: Var, b: Var) -> Result<Var> {
        let ia = self.check("mse", a)?;
        let ib = self.check("mse", b)?;
        let (va, vb) = (
            &self.slots[ia as usize].value,
            &self.slots[ib as usize].value,
        );
        if va.shape() != vb.shape() {
            return Err(Error::ShapeMismatch {
                op: "mse",
                lhs: va.shape(),
                rhs: vb.shape(),
            });
        }
        let n = va.numel() as f64;
        let s: f64 = va
            .data()
            .iter()
            .zip(vb.data())
            .map(|(&x, &y)| (x - y).to_f64().powi(2))
            .sum();
        let mut out = self.alloc(Shape::scalar());
        out.data_mut()[0] = T::from_f64(s / n);
        self.push1(Op::Mse, &[ia, ib], out)
    }
}

pub(super) fn cross_entropy_backward<T: Float>(
    logits: u32,
    probs: &Tensor<T>,
    targets: &[usize],
    count: usize,
    gy: &Tensor<T>,
    acc: &mut GradAcc<'_, T>,
) {
    if !acc.needs(logits) || count == 0 {
        return;
    }
    let c = probs.shape().last();
    let g = gy.data()[0] / T::from_usize(count);
    let d = acc.buf(logits);
    let row = |((p, d), &t): ((&[T], &mut [T]), &usize)| {
        if t != SKIP {
            softmax_row_backward(p, t, g, d);
        }
    };
    if spread_rows(targets.len(), c) {
        use rayon::prelude::*;
        (probs
            .data()
            .par_chunks_exact(c)
            .zip(d.par_chunks_exact_mut(c)))
        .zip(targets.par_iter())
        .with_min_len(ROWS_MIN_VALUES.div_ceil(c))
        .for_each(row);
    } else {
        (probs.data().chunks_exact(c).zip(d.chunks_exact_mut(c)))
            .zip(targets)
            .for_each(row);
    }
}

/// Fewest logits per task when the rows of a cross-entropy are spread over the pool's threads:
/// 32K exponentials, some tens of microseconds, far above what handing out a task costs (the
/// character model's 3,200 positions of 86 characters make eight such tasks).
const ROWS_MIN_VALUES: usize = 1 << 15;

/// Whether `rows` rows of `c` logits are spread over the pool's threads: at least two tasks'
/// worth, on a pool of more than one thread.
fn spread_rows(rows: usize, c: usize) -> bool {
    rows.saturating_mul(c) >= 2 * ROWS_MIN_VALUES && crate::threads::parallel()
}

pub(super) fn mse_backward<T: Float>(a: u32, b: u32, gy: &Tensor<T>, acc: &mut GradAcc<'_, T>) {
    let slots = acc.slots;
    let (va, vb) = (
        slots[a as usize].value.data(),
        slots[b as usize].value.data(),
    );
    let g = T::from_f64(2.0) * gy.data()[0] / T::from_usize(va.len());
    if acc.needs(a) {
        for (i, d) in acc.buf(a).iter_mut().enumerate() {
            *d += g * (va[i] - vb[i]);
        }
    }
    if acc.needs(b) {
        for (i, d) in acc.buf(b).iter_mut().enumerate() {
            *d -= g * (va[i] - vb[i]);
        }
    }
}
