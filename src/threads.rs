//! The number of threads recur's kernels use, set from code.

use crate::{Error, Result};

/// Sets the number of threads of the global pool that recur's parallel kernels run on (rayon's
/// global pool; the same as `RAYON_NUM_THREADS`). Call it once, before the first training step:
/// the pool can be built only once per process, so a second call, or a call after recur has
/// already run parallel work, is an error (the pool keeps its size). Results do not depend on
/// the number of threads.
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
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| {
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
