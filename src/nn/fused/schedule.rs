//! How the work is cut and spread: the batch into shards (a rule of the batch size alone, so
//! results never depend on the number of threads), shards into groups stepped in lockstep on
//! one thread, and, for a batch too small for two shards, each step's product split by columns
//! with a helper thread.

use std::ops::Range;

use rayon::prelude::*;

use super::Config;
use super::weights::StepWeight;
use crate::kernels::Sweep;
use crate::kernels::gemm_nn::{Rows, panel};
use crate::kernels::handoff::Helper;
use crate::tape::Workspace;
use crate::tensor::Float;

/// Rows per shard at least, but for a shorter last shard: a batch of at most this many rows is
/// one shard.
pub const MIN_SHARD_ROWS: usize = 16;
/// Most batch rows per shard.
pub const MAX_SHARD_ROWS: usize = 32;

/// The shards of a batch of `batch` rows: consecutive runs of `ceil(batch / 2)` rows, clamped
/// to [`MIN_SHARD_ROWS`, `MAX_SHARD_ROWS`]; the last run may be shorter.
///
/// A rule of the batch size alone, so results never depend on the number of threads. Larger
/// shards read the recurrent weights fewer times per step (they stream from L3 once `W_hh` no
/// longer fits in L2); at least two shards from 32 rows up keep two cores busy.
pub fn shard_ranges(batch: usize) -> Vec<Range<usize>> {
    let rows = batch.div_ceil(2).clamp(MIN_SHARD_ROWS, MAX_SHARD_ROWS);
    (0..batch)
        .step_by(rows)
        .map(|s| s..(s + rows).min(batch))
        .collect()
}

/// Most shards one thread steps together (a bound that keeps each step's list of row blocks
/// on the stack; past 128 rows a larger product gains little).
pub(super) const GROUP_SHARDS: usize = 4;

/// How many consecutive shards each task steps in lockstep: all of them on one thread (up to
/// [`GROUP_SHARDS`]), else as evenly as the threads of the current rayon pool allow. Which
/// shards share a task changes how fast, never what, they compute.
pub(super) fn group_len(shards: usize) -> usize {
    shards
        .div_ceil(rayon::current_num_threads().max(1))
        .clamp(1, GROUP_SHARDS)
}

/// Runs `f` on every group of `len` consecutive pairs, in parallel where there is more than
/// one group.
pub(super) fn for_each_group<A: Send, B: Send>(
    a: &mut [A],
    b: &mut [B],
    len: usize,
    f: impl Fn(&mut [A], &mut [B]) + Sync,
) {
    if a.len() <= len {
        f(a, b);
    } else if !crate::threads::parallel() {
        a.chunks_mut(len)
            .zip(b.chunks_mut(len))
            .for_each(|(x, y)| f(x, y));
    } else {
        a.par_chunks_mut(len)
            .zip(b.par_chunks_mut(len))
            .for_each(|(x, y)| f(x, y));
    }
}

/// Fewest multiply-adds in one step's recurrent product for which splitting its columns
/// between two threads pays for the handoff (the tiny-batch RNN's product, below it, ran
/// slower split; see BENCHMARKS.md).
pub(super) const SPLIT_MIN_WORK: usize = 1 << 17;

/// Fewest multiply-adds per value of `A` and `C` that crosses between the two cores
/// (`k n / (k + n)` for a product `[m, k] x [k, n]`, `H G / (1 + G)` for a layer's) for which
/// a split product pays for moving them: measured at 16 rows, the RNN at H = 128 (64) ran
/// slower split, the GRU (96) and the LSTM (102) faster (see BENCHMARKS.md).
pub(super) const SPLIT_MIN_INTENSITY: usize = 80;

/// A buffer for the right halves of each step's recurrent products and the helper thread that
/// computes them (see [`step_product`]).
pub(super) type Split<'a, T> = Option<(&'a mut [T], &'a Helper)>;

/// A shorter-lived copy of a split, for one step.
pub(super) fn reborrow<'s, T>(split: &'s mut Split<'_, T>) -> Split<'s, T> {
    split.as_mut().map(|(buf, h)| (&mut **buf, *h))
}

/// One step's recurrent product `C += A B` of a group of shards. With a split, the columns of
/// `B` are cut in two: this thread takes the left half in place while the helper takes the
/// right half into the split's buffer (room for every block's right half of `C`), copied back
/// after. Each value is computed as in the whole product, so splitting changes how fast, never
/// what, the step computes.
pub(super) fn step_product<T: Float>(
    blocks: &mut [Rows<'_, T>],
    b: StepWeight<'_, T>,
    split: Split<'_, T>,
    sweep: Sweep,
) {
    let n = b.n();
    let c1 = b.split_point();
    let Some((buf, helper)) = split.filter(|_| c1 < n) else {
        b.product(blocks, 0..n, n, sweep);
        return;
    };
    let w2 = n - c1;
    let mut halves: [Rows<'_, T>; GROUP_SHARDS] = std::array::from_fn(|_| Rows::empty());
    let mut rest = buf;
    for (g, half) in blocks.iter().zip(halves.iter_mut()) {
        let (c, tail) = rest.split_at_mut(g.m * w2);
        rest = tail;
        for (dst, src) in c.chunks_exact_mut(w2).zip(g.c.chunks_exact(n)) {
            dst.copy_from_slice(&src[c1..]);
        }
        *half = Rows {
            m: g.m,
            a: g.a,
            storage: g.storage,
            c,
            bias: g.bias,
        };
    }
    let halves = &mut halves[..blocks.len()];
    helper.join(
        || b.product(blocks, 0..c1, n, sweep),
        || b.product(halves, c1..n, w2, sweep),
    );
    for (g, half) in blocks.iter_mut().zip(halves.iter()) {
        for (dst, src) in g.c.chunks_exact_mut(n).zip(half.c.chunks_exact(w2)) {
            dst[c1..].copy_from_slice(src);
        }
    }
}

impl Config {
    /// Room for the right halves of each step's recurrent products with `n` columns (see
    /// [`step_product`]) when they are split between two threads: when every shard runs in one
    /// group (a batch too small for two shards) while the rayon pool has more threads, and the
    /// products are large enough to pay for the handoffs.
    pub(super) fn split_buffer<T: Float>(
        &self,
        shards: usize,
        n: usize,
        ws: &mut Workspace<'_, T>,
    ) -> Option<Vec<T>> {
        let (h, gh) = (self.hidden, self.kind.gates() * self.hidden);
        let one_group = group_len(shards) >= shards;
        let work = self.batch * h * gh;
        let intensity = h * gh / (h + gh).max(1);
        // A single panel has no halves.
        let wide = n > panel::<T>();
        let pays = work >= SPLIT_MIN_WORK && intensity >= SPLIT_MIN_INTENSITY;
        (crate::threads::parallel() && one_group && wide && pays)
            .then(|| ws.scratch(self.batch * n))
    }
}
