//! Passes over long buffers (copies, fills, sums) spread over the rayon pool's threads.
//!
//! A training step makes a few such passes outside the fused layers' recurrences: the input
//! copied onto the tape, the loss `sum(y)`, and its gradient, a buffer of ones, and the batch
//! shards' weight gradients added up. Each streams megabytes, and on one thread they hold the
//! other idle for a noticeable part of a step.
//!
//! Buffers are cut into chunks of [`CHUNK`] values, a rule of the length alone: a pass shorter
//! than two chunks stays on the calling thread, and a sum adds the same partial sums in the same
//! order whatever the number of threads, so its result never depends on it.

use rayon::prelude::*;

use super::Float;

/// Values per chunk: 128 KiB of `f32`.
const CHUNK: usize = 1 << 15;

/// Chunks whose sums one round of [`sum_f64`] keeps on the stack.
const GROUP: usize = 64;

/// Whether a pass over `len` values goes to the pool.
fn spread(len: usize) -> bool {
    len >= 2 * CHUNK && crate::threads::parallel()
}

/// `dst = src`. Panics if the lengths differ.
pub(crate) fn copy<T: Float>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "bulk::copy: length mismatch");
    if spread(dst.len()) {
        (dst.par_chunks_mut(CHUNK))
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
    } else {
        dst.copy_from_slice(src);
    }
}

/// Every value of `dst` set to `v`.
pub(crate) fn fill<T: Float>(dst: &mut [T], v: T) {
    if spread(dst.len()) {
        dst.par_chunks_mut(CHUNK).for_each(|d| d.fill(v));
    } else {
        dst.fill(v);
    }
}

/// `dst += src` value by value. Panics if the lengths differ.
pub(crate) fn add<T: Float>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "bulk::add: length mismatch");
    let add = |(d, s): (&mut [T], &[T])| d.iter_mut().zip(s).for_each(|(d, &s)| *d += s);
    if spread(dst.len()) {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(add);
    } else {
        add((dst, src));
    }
}

/// `dst +=` the column sums of `rows`, a row-major buffer of rows as long as `dst`, added row by
/// row in order (nothing for an empty `dst`).
pub(crate) fn add_col_sums<T: Float>(dst: &mut [T], rows: &[T]) {
    if dst.is_empty() {
        return;
    }
    for row in rows.chunks_exact(dst.len()) {
        for (d, &x) in dst.iter_mut().zip(row) {
            *d += x;
        }
    }
}

/// `v` added to every value of `dst`.
pub(crate) fn add_scalar<T: Float>(dst: &mut [T], v: T) {
    let add = |d: &mut [T]| d.iter_mut().for_each(|d| *d += v);
    if spread(dst.len()) {
        dst.par_chunks_mut(CHUNK).for_each(add);
    } else {
        add(dst);
    }
}

/// `sum f(x)` over `xs` in f64, in a fixed order that depends only on the length: each chunk of
/// [`CHUNK`] values is summed by [`chunk_sum`], and the chunks' sums are added in order. (A buffer
/// of at most one chunk is summed as one chunk.)
pub(crate) fn sum_f64<T: Float>(xs: &[T], f: impl Fn(f64) -> f64 + Sync) -> f64 {
    let mut total = 0.0;
    for group in xs.chunks(GROUP * CHUNK) {
        let mut sums = [0.0f64; GROUP];
        let sums = &mut sums[..group.len().div_ceil(CHUNK)];
        if spread(group.len()) {
            (sums.par_iter_mut())
                .zip(group.par_chunks(CHUNK))
                .for_each(|(s, c)| *s = chunk_sum(c, &f));
        } else {
            for (s, c) in sums.iter_mut().zip(group.chunks(CHUNK)) {
                *s = chunk_sum(c, &f);
            }
        }
        total = sums.iter().fold(total, |t, s| t + s);
    }
    total
}

/// `sum f(x)` over one chunk: element `j` goes to partial sum `j % 8`, and the eight partial
/// sums are added pairwise at the end. Independent partial sums let the compiler vectorise the
/// loop (one sequential chain of additions is bound by the adder's latency, which over the
/// outputs of a medium-shape training step is a noticeable delay).
fn chunk_sum<T: Float>(xs: &[T], f: &impl Fn(f64) -> f64) -> f64 {
    const W: usize = 8;
    let mut part = [0.0f64; W];
    let chunks = xs.chunks_exact(W);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..W {
            part[j] += f(c[j].to_f64());
        }
    }
    for (j, x) in tail.iter().enumerate() {
        part[j] += f(x.to_f64());
    }
    ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::values;

    #[test]
    fn sum_f64_covers_every_element_whatever_the_length() {
        // Whole chunks of eight, a tail, both and neither: integers sum exactly.
        for n in (0..=20).chain([64, 1001]) {
            let xs: Vec<f32> = (1..=n).map(|i| i as f32).collect();
            assert_eq!(sum_f64(&xs, |x| x), (n * (n + 1) / 2) as f64, "n = {n}");
            let sq = (n * (n + 1) * (2 * n + 1) / 6) as f64;
            assert_eq!(sum_f64(&xs, |x| x * x), sq, "n = {n}");
        }
    }

    /// The same buffers on one thread and on three: past two chunks the passes split, and past
    /// a group of chunks the sum takes several rounds.
    #[test]
    fn long_passes_give_the_same_values_on_any_number_of_threads() {
        let n = GROUP * CHUNK + 3 * CHUNK + 17;
        let xs: Vec<f64> = values(3, n, 1.0);
        let run = || {
            let sum = sum_f64(&xs, |x| x);
            let sq = sum_f64(&xs, |x| x * x);
            let mut copied = vec![0.0; n];
            copy(&mut copied, &xs);
            let mut filled = vec![0.0; n];
            fill(&mut filled, 0.5);
            add_scalar(&mut filled, 0.25);
            add(&mut copied, &xs);
            (sum, sq, copied, filled)
        };
        let pool = |t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        };
        let one = pool(1).install(run);
        let three = pool(3).install(run);
        assert_eq!(one.0.to_bits(), three.0.to_bits());
        assert_eq!(one.1.to_bits(), three.1.to_bits());
        let doubled: Vec<f64> = xs.iter().map(|x| 2.0 * x).collect();
        assert!(one.2 == doubled && three.2 == doubled);
        assert!(one.3.iter().chain(&three.3).all(|&v| v == 0.75));
        // The chunked sum is a sum: against a plain sequential one.
        let seq: f64 = xs.iter().sum();
        let mag: f64 = xs.iter().map(|x| x.abs()).sum();
        assert!((one.0 - seq).abs() <= 1e-12 * mag, "{} vs {seq}", one.0);
    }
}
