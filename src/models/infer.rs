//! A whole recurrent stack over a batch of sequences without a tape: an
//! [`crate::nn::InferenceStep`] per layer, direction and shard of rows (each packing the
//! layer's weights for itself), with lengths; the shards on separate threads where the pool
//! has them.

use std::ops::Range;

use crate::nn::{InferenceStep, Recurrent};
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
    // Where the pool has more than one thread, the rows in shards as the fused layers cut
    // them, each stepped on its own on separate threads; else all rows at once. Each row is
    // computed as it would be alone, so the cut changes how fast, never what, it computes.
    let shards: Vec<Range<usize>> = if crate::threads::parallel() {
        crate::nn::shard_ranges(b)
    } else {
        std::iter::once(0..b).collect()
    };
    let mut input = x.data().to_vec();
    let mut in_size = i0;
    let mut h_n = vec![T::ZERO; d * layers * b * h];
    for layer in 0..layers {
        let mut y = vec![T::ZERO; t_len * b * d * h];
        for dir in 0..d {
            let shard = |rows: &Range<usize>| Shard {
                input: &input,
                in_size,
                hidden: h,
                batch: b,
                rows: rows.clone(),
                lengths: &lengths[rows.clone()],
                reverse: dir == 1,
                lstm,
            };
            let step = |rows: &Range<usize>| rnn.inference_step(store, layer, dir, rows.len());
            let at = (layer * d + dir) * b * h;
            if let [rows] = &shards[..] {
                // One shard: straight into this direction's columns of y.
                let out = Out {
                    buf: &mut y,
                    rows: b,
                    first_row: rows.start,
                    width: d * h,
                    offset: dir * h,
                };
                let hs = shard(rows).run(step(rows)?, out)?;
                h_n[at..at + b * h].copy_from_slice(&hs);
                continue;
            }
            // Several: each into a buffer of its own, side by side on the pool's threads,
            // then into y.
            use rayon::prelude::*;
            let outs: Vec<Result<(Vec<T>, Vec<T>)>> = shards
                .par_iter()
                .map(|rows| {
                    let n = rows.len();
                    let mut ys = vec![T::ZERO; t_len * n * h];
                    let out = Out {
                        buf: &mut ys,
                        rows: n,
                        first_row: 0,
                        width: h,
                        offset: 0,
                    };
                    let hs = shard(rows).run(step(rows)?, out)?;
                    Ok((ys, hs))
                })
                .collect();
            for (rows, out) in shards.iter().zip(outs) {
                let (ys, hs) = out?;
                let n = rows.len();
                for t in 0..t_len {
                    for (k, row) in rows.clone().enumerate() {
                        let to = (t * b + row) * d * h + dir * h;
                        y[to..to + h].copy_from_slice(&ys[(t * n + k) * h..][..h]);
                    }
                }
                h_n[at + rows.start * h..at + rows.end * h].copy_from_slice(&hs);
            }
        }
        input = y;
        in_size = d * h;
    }
    Ok(StackOutput {
        y: Tensor::from_vec(input, &[t_len, b, d * h])?,
        h_n: Tensor::from_vec(h_n, &[d * layers, b, h])?,
    })
}

/// One direction of one layer over a shard of the batch's rows: their inputs within the
/// layer's input `[T, batch, in_size]` and their lengths.
struct Shard<'a, T> {
    input: &'a [T],
    in_size: usize,
    hidden: usize,
    batch: usize,
    rows: Range<usize>,
    lengths: &'a [usize],
    reverse: bool,
    lstm: bool,
}

impl<T: Float> Shard<'_, T> {
    /// Steps the shard's rows with `step` (made for as many rows): writes their outputs into
    /// `out` in time order, zero past each length (the reverse direction starts at each
    /// sequence's last real step), and returns their final states `[n, H]`.
    fn run(&self, mut step: InferenceStep<T>, out: Out<'_, T>) -> Result<Vec<T>> {
        let (n, i, h) = (self.rows.len(), self.in_size, self.hidden);
        let mut hs = vec![T::ZERO; n * h];
        let mut cs = vec![T::ZERO; if self.lstm { n * h } else { 0 }];
        let (mut saved_h, mut saved_c) = (hs.clone(), cs.clone());
        let mut xs = vec![T::ZERO; n * i];
        // Steps past every row's length change nothing: the shard stops at its longest.
        let steps = self.lengths.iter().copied().max().unwrap_or(0);
        let time = |s: usize, len: usize| if self.reverse { len - 1 - s } else { s };
        for s in 0..steps {
            for (k, &len) in self.lengths.iter().enumerate() {
                if s < len {
                    let at = (time(s, len) * self.batch + self.rows.start + k) * i;
                    xs[k * i..(k + 1) * i].copy_from_slice(&self.input[at..at + i]);
                }
            }
            saved_h.copy_from_slice(&hs);
            saved_c.copy_from_slice(&cs);
            step.step_packed(&xs, &mut hs, &mut cs)?;
            for (k, &len) in self.lengths.iter().enumerate() {
                let r = k * h..(k + 1) * h;
                if s < len {
                    let row = out.first_row + k;
                    let at = (time(s, len) * out.rows + row) * out.width + out.offset;
                    out.buf[at..at + h].copy_from_slice(&hs[r]);
                } else {
                    // Past its length a sequence keeps its state.
                    hs[r.clone()].copy_from_slice(&saved_h[r.clone()]);
                    if self.lstm {
                        cs[r.clone()].copy_from_slice(&saved_c[r]);
                    }
                }
            }
        }
        Ok(hs)
    }
}

/// Where a shard writes its outputs: `buf` `[T, rows, width]`, the shard's `k`-th row at row
/// `first_row + k`, each output's `H` values at `offset` in its row.
struct Out<'a, T> {
    buf: &'a mut [T],
    rows: usize,
    first_row: usize,
    width: usize,
    offset: usize,
}
