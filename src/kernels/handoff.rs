//! A second thread that takes one half of each step's work while the caller does the other:
//! the per-step recurrent product of a batch too small to shard, split by columns.
//!
//! A step lasts a few microseconds, less than it takes to wake a sleeping thread, so rayon's
//! `join` (which wakes a worker for each handoff) costs more than it saves there. Instead the
//! helper spins between steps on one atomic word, and each step is handed over by a store and
//! taken by a compare-and-swap. Whichever thread claims a posted job runs it: if the helper is
//! late (not yet started, or descheduled), the caller takes the job back and runs it itself, so
//! a step never waits on a thread that is not running.
//!
//! While idle, the helper now and then runs other work of the rayon pool (when a caller
//! parallelises over several small batches itself, say), so it never holds a thread the pool
//! needs; the caller meanwhile takes back the jobs it does not claim.
//!
//! The job lives on the caller's stack; the helper reaches it through a raw pointer. The caller
//! does not return from [`Helper::join`], even by unwinding, until the job is finished or taken
//! back, so the pointer never outlives what it points to.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, Ordering};

/// Nothing posted: a caller may post.
const IDLE: u8 = 0;
/// A caller is writing its job.
const POSTING: u8 = 1;
/// A job is posted and unclaimed.
const POSTED: u8 = 2;
/// The helper is running the job.
const TAKEN: u8 = 3;
/// The helper finished the job.
const DONE: u8 = 4;
/// The job panicked on the helper.
const FAILED: u8 = 5;

/// Idle turns of the helper's loop between looks for other work of the pool (a few
/// microseconds: longer than the gap between two steps' jobs).
const YIELD_EVERY: u32 = 256;

/// A type-erased `FnOnce` on the caller's stack: `call(data)` runs it.
struct Job {
    data: *mut (),
    call: unsafe fn(*mut ()) -> bool,
}

/// Runs the `Option<F>` at `p` once; `false` if it panicked.
///
/// # Safety
/// `p` must point to a live `Option<F>` that no other thread accesses during the call.
unsafe fn call_once<F: FnOnce()>(p: *mut ()) -> bool {
    // SAFETY: the caller guarantees `p` is a live, exclusively accessed `Option<F>`.
    let f = unsafe { (*p.cast::<Option<F>>()).take() };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(f) = f {
            f();
        }
    }))
    .is_ok()
}

/// The runner for an `Option<F>`, inferred from a reference to it.
fn runner<F: FnOnce()>(_: &Option<F>) -> unsafe fn(*mut ()) -> bool {
    call_once::<F>
}

/// The word a caller and its helper share: one job at a time. See the module's notes.
#[derive(Default)]
pub struct Helper {
    state: AtomicU8,
    job: AtomicPtr<Job>,
    /// Set by [`Helper::stop`]: the helper returns once it holds no job.
    stopped: AtomicBool,
    /// Set when [`Helper::serve`] starts.
    serving: AtomicBool,
}

impl Helper {
    /// A helper with nothing posted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `a` on this thread and `b` on the helper thread if it claims it in time (else on
    /// this thread after `a`), and returns once both are done. While the helper is stopped or
    /// busy with another job (another caller's, or this one's from a join around this one),
    /// both run on this thread.
    ///
    /// Panics if `b` panicked on the helper thread.
    pub fn join(&self, a: impl FnOnce(), b: impl FnOnce() + Send) {
        if self.stopped.load(Ordering::Relaxed)
            || self
                .state
                .compare_exchange(IDLE, POSTING, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            a();
            b();
            return;
        }
        let mut b = Some(b);
        let call = runner(&b);
        let mut job = Job {
            data: (&raw mut b).cast(),
            call,
        };
        self.job.store(&raw mut job, Ordering::Relaxed);
        // Release: the job (and everything `b` reads) is visible to whoever claims it.
        self.state.store(POSTED, Ordering::Release);
        // However `a` ends, the job must be finished or taken back before `b` leaves scope.
        let settle = Settle {
            helper: self,
            settled: false,
        };
        a();
        if settle.finish() {
            panic!("Helper::join: the job panicked on the helper thread");
        }
        // If the helper never claimed it, `b` is still here: run it now.
        if let Some(b) = b.take() {
            b();
        }
    }

    /// Ends the posted job's turn: takes it back if unclaimed, else waits for the helper to
    /// finish it; frees the word for the next job. Returns whether the job panicked there.
    fn settle(&self) -> bool {
        // Unclaimed: take it back (its closure then stays in the caller's `Option`).
        if self
            .state
            .compare_exchange(POSTED, IDLE, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return false;
        }
        // Claimed: wait for it. Acquire pairs with the helper's release of DONE or FAILED.
        loop {
            match self.state.load(Ordering::Acquire) {
                DONE => break,
                FAILED => {
                    self.state.store(IDLE, Ordering::Release);
                    return true;
                }
                _ => std::hint::spin_loop(),
            }
        }
        self.state.store(IDLE, Ordering::Release);
        false
    }

    /// Takes and runs posted jobs until [`Helper::stop`]. Call it on the helper thread.
    pub fn serve(&self) {
        self.serving.store(true, Ordering::Release);
        let mut idle = 0u32;
        loop {
            match self.state.load(Ordering::Acquire) {
                POSTED => {
                    if self
                        .state
                        .compare_exchange(POSTED, TAKEN, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        let job = self.job.load(Ordering::Relaxed);
                        // SAFETY: the job was written before POSTED was released, and its
                        // caller stays in `join` (its `Settle` waits for DONE or FAILED) while
                        // the state is TAKEN, so `job` and the closure it points to are live;
                        // only this thread touches the closure until then.
                        let ok = unsafe { ((*job).call)((*job).data) };
                        // Release: the job's writes are visible to the caller that sees it.
                        let end = if ok { DONE } else { FAILED };
                        self.state.store(end, Ordering::Release);
                    }
                    idle = 0;
                }
                // Holding no job: a stop takes effect (a job posted after it is taken back).
                _ if self.stopped.load(Ordering::Acquire) => return,
                _ => {
                    idle = idle.saturating_add(1);
                    // Now and then, run the pool's other work here rather than hold a thread it
                    // could use (the caller takes back what this thread is too busy to claim).
                    if idle.is_multiple_of(YIELD_EVERY)
                        && rayon::yield_now() == Some(rayon::Yield::Executed)
                    {
                        idle = 0;
                    } else if idle < 1 << 16 {
                        // Spin while jobs come often; past a while without one, let others run.
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    /// Whether a thread has started serving this helper (and it has not been stopped): until
    /// then every join runs both halves on its caller.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.stopped.load(Ordering::Acquire)
    }

    /// Tells [`Helper::serve`] to return once it holds no job; later joins run both halves on
    /// their caller. Never waits, so it may be called from either half of a join.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}

/// Settles the posted job when the caller is done with its own half, or, if that half
/// panicked, on drop: either way before the job's closure leaves scope.
struct Settle<'h> {
    helper: &'h Helper,
    settled: bool,
}

impl Settle<'_> {
    /// Settles the job; whether it panicked on the helper.
    fn finish(mut self) -> bool {
        self.settled = true;
        self.helper.settle()
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.helper.settle();
        }
    }
}

/// Runs `f` with a helper on a second rayon thread, if one is free to claim it; `f`'s joins run
/// both halves on this thread while none is. (The module is private to the crate, so the
/// example is not compiled as a doc test; `tests::with_helper_returns_the_result` runs one like
/// it.)
///
/// ```ignore
/// use crate::kernels::handoff::with_helper;
///
/// let (mut left, mut right) = (vec![0u32; 4], vec![0u32; 4]);
/// with_helper(|helper| {
///     for step in 1..=3 {
///         // Each step's two halves, the second on the helper if it is there to take it.
///         helper.join(
///             || left.iter_mut().for_each(|x| *x += step),
///             || right.iter_mut().for_each(|x| *x += step),
///         );
///     }
/// });
/// assert_eq!((left[0], right[3]), (6, 6));
/// ```
pub fn with_helper<R: Send>(f: impl FnOnce(&Helper) -> R + Send) -> R {
    let helper = Helper::new();
    serve_during(&helper, || f(&helper))
}

/// Runs `f` while `helper` serves on a second rayon thread (if one is free to claim it), then
/// stops it for good: for a caller that keeps the helper somewhere `f` reaches it.
pub fn serve_during<R: Send>(helper: &Helper, f: impl FnOnce() -> R + Send) -> R {
    let (r, ()) = rayon::join(
        || {
            // The helper stops however `f` ends: a panic must not leave it spinning.
            let _stop = Stop(helper);
            f()
        },
        || helper.serve(),
    );
    r
}

/// Stops a helper on drop.
struct Stop<'h>(&'h Helper);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rayon pool of two threads: the caller's and one for the helper.
    fn two_threads() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    }

    /// Runs 50 steps of a join that adds to both halves. `wait`: every step's left half waits
    /// until the helper has claimed the right half, so all of them run on the helper thread.
    fn steps(served: bool, wait: bool) {
        let h = Helper::new();
        let mut left = [0u32; 8];
        let mut right = [0u32; 8];
        std::thread::scope(|s| {
            if served {
                s.spawn(|| h.serve());
            }
            for step in 1..=50u32 {
                h.join(
                    || {
                        while wait && h.state.load(Ordering::Acquire) == POSTED {
                            std::thread::yield_now();
                        }
                        left.iter_mut().for_each(|x| *x += step)
                    },
                    || right.iter_mut().for_each(|x| *x += 2 * step),
                );
                // Both halves of this step are visible once join returns.
                assert_eq!(left[0] * 2, right[7]);
            }
            h.stop();
        });
        assert!(left.iter().all(|&x| x == 1275));
        assert!(right.iter().all(|&x| x == 2550));
    }

    #[test]
    fn both_halves_run_on_the_helper_or_the_caller() {
        steps(true, true);
        steps(true, false);
        steps(false, false);
    }

    #[test]
    fn serving_from_the_first_look_for_jobs_until_the_stop() {
        let h = Helper::new();
        assert!(!h.is_serving());
        std::thread::scope(|s| {
            s.spawn(|| h.serve());
            while !h.is_serving() {
                std::thread::yield_now();
            }
            h.stop();
            assert!(!h.is_serving());
        });
    }

    #[test]
    fn a_join_inside_a_join_runs_on_its_caller() {
        let h = Helper::new();
        let mut got = [0; 4];
        let [w, x, y, z] = &mut got;
        std::thread::scope(|s| {
            s.spawn(|| h.serve());
            h.join(
                || h.join(|| *w = 1, || *x = 2),
                || {
                    // On the helper (or the caller): the word is busy with this very job.
                    h.join(|| *y = 3, || *z = 4)
                },
            );
            h.stop();
        });
        assert_eq!(got, [1, 2, 3, 4]);
    }

    #[test]
    fn a_stop_from_inside_a_join_does_not_wait_for_it() {
        let h = Helper::new();
        let mut got = [0; 3];
        let [x, y, z] = &mut got;
        std::thread::scope(|s| {
            s.spawn(|| h.serve());
            // Wait in the first half until the helper holds the second, then stop from both.
            h.join(
                || {
                    while h.state.load(Ordering::Acquire) == POSTED {
                        std::thread::yield_now();
                    }
                    h.stop();
                    *x = 1;
                },
                || {
                    h.stop();
                    *y = 2;
                },
            );
            // Stopped: both halves run here.
            h.join(|| (), || *z = 3);
        });
        assert_eq!(got, [1, 2, 3]);
    }

    #[test]
    fn a_panic_on_the_helper_reaches_the_caller() {
        let h = Helper::new();
        std::thread::scope(|s| {
            s.spawn(|| h.serve());
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                h.join(
                    || {
                        while h.state.load(Ordering::Acquire) == POSTED {
                            std::thread::yield_now();
                        }
                    },
                    || panic!("a job that fails"),
                )
            }));
            // The word is free again: a later job runs.
            let mut ran = false;
            h.join(|| (), || ran = true);
            h.stop();
            assert!(r.is_err());
            assert!(ran);
        });
    }

    #[test]
    // rayon's work-stealing deques (crossbeam-epoch) do not pass Miri's aliasing checks; the
    // tests above run the helper on a plain thread.
    #[cfg_attr(miri, ignore)]
    fn an_idle_helper_runs_other_work_of_the_pool() {
        use std::sync::atomic::AtomicUsize;
        let pool = two_threads();
        let ran = AtomicUsize::new(0);
        pool.install(|| {
            with_helper(|_| {
                rayon::scope(|s| {
                    s.spawn(|_| {
                        ran.store(1, Ordering::Release);
                    });
                    // This thread does not run the job itself: only the helper's thread can.
                    let start = std::time::Instant::now();
                    while ran.load(Ordering::Acquire) == 0 {
                        assert!(
                            start.elapsed().as_secs() < 20,
                            "the idle helper never ran the pool's pending job"
                        );
                        std::hint::spin_loop();
                    }
                });
            });
        });
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn a_panic_in_the_caller_stops_the_helper() {
        let pool = two_threads();
        let r = pool.install(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_helper(|h| {
                    h.join(|| (), || ());
                    panic!("the caller fails");
                })
            }))
        });
        assert!(r.is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn with_helper_returns_the_result() {
        let pool = two_threads();
        let sum = pool.install(|| {
            with_helper(|h| {
                let (mut a, mut b) = (0u64, 0u64);
                for i in 0..100u64 {
                    h.join(|| a += i, || b += 2 * i);
                }
                a + b
            })
        });
        assert_eq!(sum, 3 * 4950);
    }
}
