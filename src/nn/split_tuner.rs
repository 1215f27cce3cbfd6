//! Whether a step split between two threads runs faster than the same step on one thread:
//! tried both ways now and then, and the faster way kept.
//!
//! How long the two cores take to hand data to each other depends on where the machine places
//! them, and on a shared virtual machine that changes from minute to minute. A step of a few
//! microseconds split in two gains much with a fast handoff and runs slower than on one thread
//! with a slow one, so neither choice made once is right.

use std::time::Duration;

/// Steps taken each way in a trial.
const TRIAL: usize = 8;
/// The first steps of each way in a trial, not counted: they bring the weights into the
/// cache(s) that way reads them from.
const WARM: usize = 2;
/// The first period: its steps split, then a trial ends it. Each period after is four times as
/// long, up to [`PERIOD`]. The first trial waits for the new thread to settle on its core: a
/// trial at the very first steps often chose one thread where splitting was faster a moment
/// later.
const FIRST_PERIOD: usize = 64;
/// The longest period: a trial every this many steps.
const PERIOD: usize = 4096;

/// Chooses, step by step, whether to split ([`SplitTuner::next`]) from the times of the steps
/// it asks to be timed ([`SplitTuner::record`]): each period's steps go the way the last trial
/// found faster (at first, split), and a trial of both ways ends the period.
#[derive(Debug)]
pub(super) struct SplitTuner {
    /// Steps since the current period began.
    step: usize,
    /// The current period's length.
    period: usize,
    /// The way steps go outside trials.
    split: bool,
    /// The counted trial steps' times: on one thread, then split.
    times: [[Duration; TRIAL - WARM]; 2],
}

impl SplitTuner {
    /// A tuner at the start of its first period.
    pub(super) fn new() -> Self {
        SplitTuner {
            step: 0,
            period: FIRST_PERIOD,
            split: true,
            times: [[Duration::ZERO; TRIAL - WARM]; 2],
        }
    }

    /// Whether the next step splits, and whether it should be timed.
    pub(super) fn next(&self) -> (bool, bool) {
        match self.step.checked_sub(self.period - 2 * TRIAL) {
            None => (self.split, false),
            Some(t) if t < TRIAL => (false, t >= WARM),
            Some(t) => (true, t - TRIAL >= WARM),
        }
    }

    /// Records the step [`SplitTuner::next`] asked for: its time, if it asked for one. The
    /// last step of a period's trial settles the way: the one whose median time is lower.
    pub(super) fn record(&mut self, took: Option<Duration>) {
        let (split, _) = self.next();
        if let Some(t) = took {
            let i = (self.step - (self.period - 2 * TRIAL)) % TRIAL - WARM;
            self.times[usize::from(split)][i] = t;
        }
        self.step += 1;
        if self.step == self.period {
            let median = |t: &[Duration; TRIAL - WARM]| {
                let mut t = *t;
                t.sort();
                t[t.len() / 2]
            };
            self.split = median(&self.times[1]) < median(&self.times[0]);
            self.step = 0;
            self.period = (4 * self.period).min(PERIOD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `steps` steps whose time is `alone` on one thread and `split` split (in
    /// microseconds); returns how many of them split.
    fn run(t: &mut SplitTuner, steps: usize, alone: u64, split: u64) -> usize {
        let mut splits = 0;
        for _ in 0..steps {
            let (s, timed) = t.next();
            splits += usize::from(s);
            let us = if s { split } else { alone };
            t.record(timed.then(|| Duration::from_micros(us)));
        }
        splits
    }

    #[test]
    fn keeps_the_faster_way_and_tries_again_each_period() {
        let mut t = SplitTuner::new();
        // The first period splits, then its trial (8 steps each way) finds splitting faster.
        assert_eq!(
            run(&mut t, FIRST_PERIOD, 3, 2),
            FIRST_PERIOD - 2 * TRIAL + TRIAL
        );
        assert!(t.next().0);
        // The next periods are 4x as long, up to PERIOD: 256, 1024, 4096, 4096.
        assert_eq!(run(&mut t, 256 + 1024, 3, 2), 256 + 1024 - 2 * TRIAL);
        // The handoff got slow: the next trial turns splitting off until the one after.
        assert_eq!(run(&mut t, PERIOD, 2, 3), PERIOD - 2 * TRIAL + TRIAL);
        assert!(!t.next().0);
        assert_eq!(run(&mut t, PERIOD, 2, 3), TRIAL);
        assert!(!t.next().0);
        // One fast outlier among the counted steps does not decide it (the median does).
        let mut t = SplitTuner::new();
        for k in 0..FIRST_PERIOD {
            let (s, timed) = t.next();
            let us = match (s, k) {
                (false, 51) => 1,
                (false, _) => 5,
                (true, _) => 4,
            };
            t.record(timed.then(|| Duration::from_micros(us)));
        }
        assert!(t.next().0);
    }
}
