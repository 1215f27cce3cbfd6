//! Telling a diverging run from a training run: [`DivergenceGuard`] judges each validation (or
//! training) loss against a bound, so that a loop can stop before it overwrites its best model
//! with one far worse than a guess.
//!
//! The bound is stated in terms of a *reference* loss, the loss of a model that knows nothing:
//! for a classifier over `n` classes trained with cross-entropy, the uniform guess costs
//! `ln n` nats ([`DivergenceGuard::for_classes`]). A loss is divergent when it is
//!
//! * not finite (NaN or an infinity), or
//! * above `ceiling x reference` (default 3: three times worse than guessing uniformly), or
//! * once a best loss below the reference has been seen, above both the reference and
//!   `growth x best` (default 2): a model that had learned something and is now worse than the
//!   guess and twice its best.
//!
//! ```
//! use recur::optim::DivergenceGuard;
//!
//! let mut guard = DivergenceGuard::for_classes(64)?; // reference ln 64 = 4.16 nats
//! assert!((guard.bound() - 3.0 * 64f64.ln()).abs() < 1e-12);
//! guard.check(4.0)?; // about the guess: fine
//! guard.check(1.5)?; // learning: the best so far
//! assert_eq!(guard.best(), 1.5);
//! assert!((guard.bound() - 64f64.ln()).abs() < 1e-12); // max(reference, 2 x 1.5)
//! guard.check(3.9)?; // worse, but still better than guessing
//! let err = guard.check(4.5).unwrap_err(); // worse than guessing, and 3x the best
//! assert!(err.to_string().contains("4.5"));
//! assert!(guard.check(f64::NAN).is_err());
//! assert_eq!(guard.best(), 1.5); // divergent losses never become the best
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::{Error, Result};

/// Default factor over the reference loss above which any loss is divergent.
pub const DEFAULT_CEILING: f64 = 3.0;
/// Default factor over the best loss (once below the reference) above which a loss that is also
/// above the reference is divergent.
pub const DEFAULT_GROWTH: f64 = 2.0;

/// Judges losses against the bound described in the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct DivergenceGuard {
    reference: f64,
    ceiling: f64,
    growth: f64,
    best: f64,
}

/// A loss that [`DivergenceGuard::check`] refused: the loss, the bound it broke and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// The refused loss.
    pub loss: f64,
    /// The bound in force when it was checked (`NaN` losses break any bound).
    pub bound: f64,
    /// The reference (uniform-guess) loss.
    pub reference: f64,
    /// The best loss seen before (`inf` when none).
    pub best: f64,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loss = if self.loss.abs() >= 1e6 {
            format!("{:.4e}", self.loss)
        } else {
            format!("{}", self.loss)
        };
        if !self.loss.is_finite() {
            return write!(f, "loss {loss} is not finite");
        }
        write!(
            f,
            "loss {loss} is above the divergence bound {:.4} (uniform guess {:.4}",
            self.bound, self.reference
        )?;
        if self.best.is_finite() {
            write!(f, ", best so far {:.4}", self.best)?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for Divergence {}

impl DivergenceGuard {
    /// A guard whose reference loss (that of a model that knows nothing) is `reference`, with
    /// the default factors. Fails unless `reference` is finite and positive.
    pub fn new(reference: f64) -> Result<Self> {
        if !(reference.is_finite() && reference > 0.0) {
            return Err(Error::invalid(
                "DivergenceGuard::new",
                format!("the reference loss must be finite and positive, got {reference}"),
            ));
        }
        Ok(DivergenceGuard {
            reference,
            ceiling: DEFAULT_CEILING,
            growth: DEFAULT_GROWTH,
            best: f64::INFINITY,
        })
    }

    /// A guard for the cross-entropy over `classes` classes: the reference is `ln classes`, the
    /// loss of the uniform guess. Fails for fewer than 2 classes.
    pub fn for_classes(classes: usize) -> Result<Self> {
        if classes < 2 {
            return Err(Error::invalid(
                "DivergenceGuard::for_classes",
                format!("needs at least 2 classes, got {classes}"),
            ));
        }
        Self::new((classes as f64).ln())
    }

    /// Sets the factor over the reference above which any loss is divergent (at least 1).
    pub fn ceiling(mut self, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(Error::invalid(
                "DivergenceGuard::ceiling",
                format!("the factor must be finite and at least 1, got {factor}"),
            ));
        }
        self.ceiling = factor;
        Ok(self)
    }

    /// Sets the factor over the best loss that, with a loss above the reference, is divergent
    /// (at least 1).
    pub fn growth(mut self, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(Error::invalid(
                "DivergenceGuard::growth",
                format!("the factor must be finite and at least 1, got {factor}"),
            ));
        }
        self.growth = factor;
        Ok(self)
    }

    /// Starts from a best loss seen earlier (a resumed run); non-finite values mean none.
    pub fn with_best(mut self, best: f64) -> Self {
        self.best = if best.is_finite() {
            best
        } else {
            f64::INFINITY
        };
        self
    }

    /// The reference loss.
    pub fn reference(&self) -> f64 {
        self.reference
    }

    /// The best accepted loss so far (`inf` before the first).
    pub fn best(&self) -> f64 {
        self.best
    }

    /// The largest loss [`check`](Self::check) accepts now.
    pub fn bound(&self) -> f64 {
        let ceiling = self.ceiling * self.reference;
        if self.best < self.reference {
            ceiling.min(self.reference.max(self.growth * self.best))
        } else {
            ceiling
        }
    }

    /// Accepts `loss` (and records it as the best if it is) or returns the [`Divergence`] it
    /// shows. A refused loss changes nothing.
    pub fn check(&mut self, loss: f64) -> std::result::Result<(), Divergence> {
        let bound = self.bound();
        if !loss.is_finite() || loss > bound {
            return Err(Divergence {
                loss,
                bound,
                reference: self.reference,
                best: self.best,
            });
        }
        if loss < self.best {
            self.best = loss;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_documented_rule() {
        let mut g = DivergenceGuard::new(4.0).unwrap();
        assert_eq!(g.bound(), 12.0);
        g.check(12.0).unwrap();
        assert_eq!(g.best(), 12.0);
        assert!(g.check(12.000001).is_err());
        g.check(5.0).unwrap(); // best above the reference: only the ceiling applies
        assert_eq!(g.bound(), 12.0);
        g.check(3.0).unwrap(); // best below the reference: max(4, 6)
        assert_eq!(g.bound(), 6.0);
        g.check(1.0).unwrap(); // max(4, 2): the reference
        assert_eq!(g.bound(), 4.0);
        assert!(g.check(4.5).is_err());
        g.check(3.9).unwrap();
        assert_eq!(g.best(), 1.0);
    }

    #[test]
    fn non_finite_losses_always_diverge_and_change_nothing() {
        let mut g = DivergenceGuard::for_classes(10).unwrap().with_best(1.0);
        let before = g.clone();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e30] {
            let d = g.check(bad).unwrap_err();
            assert!(d.loss.is_nan() || d.loss == bad);
            assert_eq!(g, before);
        }
        assert!(
            g.check(f64::NAN)
                .unwrap_err()
                .to_string()
                .contains("not finite")
        );
    }

    #[test]
    fn factors_and_references_are_validated() {
        assert!(DivergenceGuard::new(0.0).is_err());
        assert!(DivergenceGuard::new(f64::NAN).is_err());
        assert!(DivergenceGuard::for_classes(1).is_err());
        let g = DivergenceGuard::new(1.0).unwrap();
        assert!(g.clone().ceiling(0.5).is_err());
        assert!(g.clone().growth(f64::INFINITY).is_err());
        let g = g.ceiling(10.0).unwrap().growth(1.5).unwrap().with_best(0.5);
        assert_eq!(g.bound(), 1.0);
        assert_eq!(
            DivergenceGuard::new(1.0)
                .unwrap()
                .with_best(f64::NAN)
                .best(),
            f64::INFINITY
        );
    }
}
