//! The number of threads recur's kernels use, set from code.

use crate::{Error, Result};

/// Sets the number of threads recur's parallel kernels use (rayon's global pool; the same as
/// `RAYON_NUM_THREADS`), the calling thread being one of them. Call it once, from the thread
/// that will train, before the first training step: the pool can be built only once per
/// process, so a second call, or a call after recur has already run parallel work, is an error
/// (the pool keeps its size). Results do not depend on the number of threads.
///
/// The calling thread joins the pool: a kernel called from it runs one share of its work there
/// and hands the others to the `n - 1` threads the pool starts, instead of handing all of it
/// over and waking the caller at the end. With `n = 1` the kernels run on the calling thread
/// alone and never hand work over (BENCHMARKS.md measures both against a pool of `n` threads
/// of its own). Work started from another thread still runs: on the `n - 1` others, or with
/// `n = 1` on the thread that started it.
///
/// ```no_run
/// recur::set_threads(2)?;
/// # Ok::<(), recur::Error>(())
/// ```
///
/// To use a different number of threads for one piece of work, see [`with_threads`].
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("set_threads", "needs at least one thread"));
    }
    let builder = rayon::ThreadPoolBuilder::new().num_threads(n);
    // With one thread the kernels never enter the pool (`parallel`), so the pool's one thread
    // is started but idle; the caller is not made a pool thread then, so that work started
    // from any other thread still has a thread to run on.
    let builder = if n > 1 {
        builder.use_current_thread()
    } else {
        builder
    };
    builder.build_global().map_err(|e| {
        Error::invalid(
            "set_threads",
            format!(
                "cannot set {n} threads: {e} (the pool already runs with {})",
                rayon::current_num_threads()
            ),
        )
    })
}

/// Runs `f` with recur's kernels on a pool of `n` threads of its own (built for the call), for
/// example to compare thread counts in one process.
///
/// ```
/// let threads = recur::with_threads(1, || rayon::current_num_threads())?;
/// assert_eq!(threads, 1);
/// # Ok::<(), recur::Error>(())
/// ```
pub fn with_threads<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    if n == 0 {
        return Err(Error::invalid("with_threads", "needs at least one thread"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|e| Error::invalid("with_threads", format!("cannot start {n} threads: {e}")))?;
    Ok(pool.install(f))
}

/// The number of threads recur's kernels run on here (the current pool's size).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Whether parallel work can pay here: the current pool has more than one thread. With one,
/// the kernels run their work on the calling thread and never enter the pool, which would
/// only hand the work to the pool's thread and wake the caller when it is done.
pub(crate) fn parallel() -> bool {
    rayon::current_num_threads() > 1
}

/// Wakes a sleeping thread of the pool ahead of parallel work, where the pool has more than one
/// thread ([`parallel`]): called where some tens of microseconds of serial work (taking
/// buffers, packing the weights) precede a parallel region, so that another thread is awake and
/// looking for work when the region starts instead of being woken by it. It posts a job that
/// does nothing, which whichever thread finds it runs.
///
/// A thread of rayon's pool sleeps after a few tens of microseconds without work, and waking it
/// takes about as long again: in the classifier's training at two threads, the other thread
/// started its shards 67 us after a fused layer's parallel region began, 15.5 us with the hint.
pub(crate) fn wake() {
    if parallel() {
        rayon::spawn(|| {});
    }
}

/// `rayon::join(a, b)` where the pool has more than one thread ([`parallel`]), else `a` then
/// `b` on the calling thread.
pub(crate) fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    if parallel() {
        rayon::join(a, b)
    } else {
        (a(), b())
    }
}

/// Runs `f(i, chunk)` on every `len`-value chunk of `buf` (the last possibly shorter), in
/// parallel where the pool has more than one thread ([`parallel`]), else in order on the
/// calling thread. For an `f` that computes each chunk on its own, the choice changes how
/// fast, never what, it computes.
pub(crate) fn for_each_chunk<T: Send>(
    buf: &mut [T],
    len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    use rayon::prelude::*;
    if parallel() {
        buf.par_chunks_mut(len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        buf.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_and_joins_run_once_each_on_one_thread_or_several() {
        for n in [1, 3] {
            let (buf, joined, split) = with_threads(n, || {
                let mut buf = vec![0usize; 103];
                for_each_chunk(&mut buf, 10, |i, c| c.iter_mut().for_each(|v| *v += i + 1));
                (buf, join(|| 1, || 2), parallel())
            })
            .unwrap();
            let want: Vec<usize> = (0..103).map(|j| j / 10 + 1).collect();
            assert_eq!(buf, want, "{n} threads");
            assert_eq!(joined, (1, 2));
            assert_eq!(split, n > 1);
        }
    }
}
