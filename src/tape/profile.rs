//! Where a step's time goes, op by op: [`Tape::set_profiling`].

use std::time::{Duration, Instant};

use super::Tape;
use crate::tensor::Float;

/// The time recorded for one kind of op ([`Tape::profile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OpProfile {
    /// The op's name (`matmul`, `embedding`, `lstm`, `cross_entropy`, ...).
    pub name: String,
    /// Ops of this kind recorded.
    pub calls: usize,
    /// Time in their forward computations.
    pub forward: Duration,
    /// Time in their backward computations.
    pub backward: Duration,
}

/// The profiler's state: the rows and when the last op was recorded.
#[derive(Debug)]
pub(crate) struct Profiler {
    rows: Vec<OpProfile>,
    last: Instant,
}

impl Profiler {
    fn row(&mut self, name: &str) -> &mut OpProfile {
        let i = match self.rows.iter().position(|r| r.name == name) {
            Some(i) => i,
            None => {
                self.rows.push(OpProfile {
                    name: name.to_string(),
                    calls: 0,
                    forward: Duration::ZERO,
                    backward: Duration::ZERO,
                });
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    /// An op was recorded: the time since the previous record (or since the tape was cleared)
    /// was its forward computation.
    pub(crate) fn forward(&mut self, name: &str) {
        let now = Instant::now();
        let spent = now - self.last;
        let row = self.row(name);
        row.calls += 1;
        row.forward += spent;
        self.last = now;
    }

    pub(crate) fn backward(&mut self, name: &str, spent: Duration) {
        self.row(name).backward += spent;
    }

    /// Starts the forward clock afresh (a new step, or the end of a backward pass).
    pub(crate) fn restart(&mut self) {
        self.last = Instant::now();
    }
}

impl<T: Float> Tape<T> {
    /// Turns op-by-op timing on or off (off by default; turning it on clears what was
    /// recorded). While on, each recorded op is charged the time since the previous op was
    /// recorded (or the tape cleared, or a backward pass ended) as its forward time, and the
    /// time of its backward rule as its backward time: a profile of the whole step, the work
    /// between ops on the caller's side included in the next op's forward time.
    ///
    /// ```
    /// use recur::{Tape, Tensor};
    /// let mut tape = Tape::<f64>::new();
    /// tape.set_profiling(true);
    /// let a = tape.input(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2])?);
    /// let b = tape.matmul(a, a)?;
    /// let loss = tape.sum(b)?;
    /// tape.backward(loss)?;
    /// let profile = tape.profile();
    /// let matmul = profile.iter().find(|p| p.name == "matmul").unwrap();
    /// assert_eq!(matmul.calls, 1);
    /// # Ok::<(), recur::Error>(())
    /// ```
    pub fn set_profiling(&mut self, on: bool) {
        self.profiler = on.then(|| {
            Box::new(Profiler {
                rows: Vec::new(),
                last: Instant::now(),
            })
        });
    }

    /// The time recorded per kind of op since profiling was turned on (across
    /// [`Tape::clear`]s), the most expensive first; empty when profiling is off.
    pub fn profile(&self) -> Vec<OpProfile> {
        let mut rows = self
            .profiler
            .as_ref()
            .map_or_else(Vec::new, |p| p.rows.clone());
        rows.sort_by_key(|r| std::cmp::Reverse(r.forward + r.backward));
        rows
    }
}
