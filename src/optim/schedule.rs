//! Learning-rate schedules as pure functions of the step: `lr_at(step)`.
//!
//! `step` counts scheduler steps as PyTorch's schedulers do (`scheduler.step()` calls, usually
//! one per epoch or per optimizer step); `lr_at(0)` is the learning rate before the first call.
//! Being pure, a schedule needs no state in a checkpoint beyond the step.

use super::state::check_nonneg;
use crate::{Error, Result};

/// A learning rate as a function of the step.
pub trait LrSchedule {
    /// The learning rate at `step`.
    fn lr_at(&self, step: usize) -> f64;
}

/// The same learning rate at every step.
#[derive(Clone, Debug, PartialEq)]
pub struct ConstantLr {
    /// The learning rate.
    pub lr: f64,
}

impl LrSchedule for ConstantLr {
    fn lr_at(&self, _step: usize) -> f64 {
        self.lr
    }
}

/// Step decay (`torch.optim.lr_scheduler.StepLR`): `base_lr * gamma^floor(step / step_size)`.
///
/// ```
/// use recur::optim::{LrSchedule, StepLr};
/// let s = StepLr::new(0.1, 3, 0.5)?;
/// assert_eq!(s.lr_at(2), 0.1);
/// assert_eq!(s.lr_at(3), 0.05);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct StepLr {
    base_lr: f64,
    step_size: usize,
    gamma: f64,
}

impl StepLr {
    /// `base_lr` decayed by `gamma` every `step_size` steps (PyTorch's default gamma is 0.1).
    pub fn new(base_lr: f64, step_size: usize, gamma: f64) -> Result<Self> {
        check_nonneg("StepLr::new", "base_lr", base_lr)?;
        check_nonneg("StepLr::new", "gamma", gamma)?;
        if step_size == 0 {
            return Err(Error::invalid("StepLr::new", "step_size must be positive"));
        }
        Ok(StepLr {
            base_lr,
            step_size,
            gamma,
        })
    }
}

impl LrSchedule for StepLr {
    fn lr_at(&self, step: usize) -> f64 {
        let k = (step / self.step_size).min(i32::MAX as usize) as i32;
        self.base_lr * self.gamma.powi(k)
    }
}

/// Cosine annealing (`CosineAnnealingLR`, closed form):
/// `eta_min + (base_lr - eta_min) * (1 + cos(pi * step / t_max)) / 2`.
///
/// Past `t_max` the closed form keeps following the cosine (it rises again), as PyTorch's
/// closed form does.
#[derive(Clone, Debug, PartialEq)]
pub struct CosineAnnealingLr {
    base_lr: f64,
    t_max: usize,
    eta_min: f64,
}

impl CosineAnnealingLr {
    /// From `base_lr` down to `eta_min` (PyTorch's default 0) over `t_max` steps.
    pub fn new(base_lr: f64, t_max: usize, eta_min: f64) -> Result<Self> {
        check_nonneg("CosineAnnealingLr::new", "base_lr", base_lr)?;
        check_nonneg("CosineAnnealingLr::new", "eta_min", eta_min)?;
        if t_max == 0 {
            return Err(Error::invalid(
                "CosineAnnealingLr::new",
                "t_max must be positive",
            ));
        }
        Ok(CosineAnnealingLr {
            base_lr,
            t_max,
            eta_min,
        })
    }
}

impl LrSchedule for CosineAnnealingLr {
    fn lr_at(&self, step: usize) -> f64 {
        let x = std::f64::consts::PI * step as f64 / self.t_max as f64;
        self.eta_min + (self.base_lr - self.eta_min) * (1.0 + x.cos()) / 2.0
    }
}

/// Linear warm-up (`LinearLR`): the factor goes linearly from `start_factor` to `end_factor`
/// over `total_iters` steps and stays there:
/// `base_lr * (start + (end - start) * min(step, total_iters) / total_iters)`.
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupLinear {
    base_lr: f64,
    start_factor: f64,
    end_factor: f64,
    total_iters: usize,
}

impl WarmupLinear {
    /// PyTorch's defaults are `start_factor = 1/3`, `end_factor = 1`, `total_iters = 5`.
    pub fn new(
        base_lr: f64,
        start_factor: f64,
        end_factor: f64,
        total_iters: usize,
    ) -> Result<Self> {
        const OP: &str = "WarmupLinear::new";
        check_nonneg(OP, "base_lr", base_lr)?;
        let ok = start_factor > 0.0 && start_factor <= 1.0 && (0.0..=1.0).contains(&end_factor);
        if !ok {
            return Err(Error::invalid(
                OP,
                format!(
                    "start_factor must be in (0, 1] and end_factor in [0, 1], got {start_factor} \
                     and {end_factor}"
                ),
            ));
        }
        if total_iters == 0 {
            return Err(Error::invalid(OP, "total_iters must be positive"));
        }
        Ok(WarmupLinear {
            base_lr,
            start_factor,
            end_factor,
            total_iters,
        })
    }
}

impl LrSchedule for WarmupLinear {
    fn lr_at(&self, step: usize) -> f64 {
        let t = step.min(self.total_iters) as f64 / self.total_iters as f64;
        self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * t)
    }
}

/// Linear warm-up, then cosine annealing: PyTorch's
/// `SequentialLR([LinearLR(start_factor, 1.0, warmup), CosineAnnealingLR(total - warmup,
/// eta_min)], milestones=[warmup])`, in closed form.
///
/// ```
/// use recur::optim::{LrSchedule, WarmupCosine};
/// let s = WarmupCosine::new(1.0, 0.1, 4, 14, 0.0)?;
/// assert!((s.lr_at(0) - 0.1).abs() < 1e-15);
/// assert!((s.lr_at(2) - 0.55).abs() < 1e-15);
/// assert_eq!(s.lr_at(4), 1.0);
/// assert!(s.lr_at(14).abs() < 1e-15);
/// # Ok::<(), recur::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct WarmupCosine {
    warmup: usize,
    linear: Option<WarmupLinear>,
    cosine: CosineAnnealingLr,
}

impl WarmupCosine {
    /// Warm up from `base_lr * start_factor` to `base_lr` over `warmup_steps`, then anneal to
    /// `eta_min` at `total_steps` (which must exceed `warmup_steps`).
    pub fn new(
        base_lr: f64,
        start_factor: f64,
        warmup_steps: usize,
        total_steps: usize,
        eta_min: f64,
    ) -> Result<Self> {
        if total_steps <= warmup_steps {
            return Err(Error::invalid(
                "WarmupCosine::new",
                format!("total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})"),
            ));
        }
        let linear = if warmup_steps > 0 {
            Some(WarmupLinear::new(base_lr, start_factor, 1.0, warmup_steps)?)
        } else {
            None
        };
        Ok(WarmupCosine {
            warmup: warmup_steps,
            linear,
            cosine: CosineAnnealingLr::new(base_lr, total_steps - warmup_steps, eta_min)?,
        })
    }
}

impl LrSchedule for WarmupCosine {
    fn lr_at(&self, step: usize) -> f64 {
        match &self.linear {
            Some(l) if step < self.warmup => l.lr_at(step),
            _ => self.cosine.lr_at(step - self.warmup),
        }
    }
}
