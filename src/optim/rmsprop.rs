//! RMSprop, optionally centered and with momentum.

use super::Optimizer;
use super::state::{StateTable, check_nonneg, config_setters, grads_to_apply};
use crate::Result;
use crate::params::ParamStore;
use crate::tape::Grads;
use crate::tensor::{Float, Tensor};

/// Settings of [`RmsProp`], with PyTorch's defaults.
///
/// ```
/// use recur::optim::RmsPropConfig;
/// let cfg = RmsPropConfig::default().centered(true);
/// assert_eq!((cfg.lr, cfg.alpha, cfg.eps, cfg.momentum), (1e-2, 0.99, 1e-8, 0.0));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RmsPropConfig {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Smoothing constant of the squared-gradient average (default 0.99).
    pub alpha: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Normalise by the variance estimate `E[g^2] - E[g]^2` instead of `E[g^2]` (default false).
    pub centered: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    }
}

config_setters!(RmsPropConfig {
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
});

/// RMSprop as `torch.optim.RMSprop`:
///
/// ```text
/// g = grad + weight_decay * p
/// sq = alpha * sq + (1 - alpha) * g^2
/// avg = sqrt(sq - ga^2) + eps, with ga = alpha * ga + (1 - alpha) * g   if centered
/// avg = sqrt(sq) + eps                                                  otherwise
/// buf = momentum * buf + g / avg;  p = p - lr * buf                      if momentum > 0
/// p = p - lr * g / avg                                                   otherwise
/// ```
#[derive(Clone, Debug)]
pub struct RmsProp<T: Float> {
    cfg: RmsPropConfig,
    state: StateTable<T>,
}

impl<T: Float> RmsProp<T> {
    /// A new optimizer; fails on a hyper-parameter that is negative or not finite.
    pub fn new(cfg: RmsPropConfig) -> Result<Self> {
        const OP: &str = "RmsProp::new";
        check_nonneg(OP, "lr", cfg.lr)?;
        check_nonneg(OP, "alpha", cfg.alpha)?;
        check_nonneg(OP, "eps", cfg.eps)?;
        check_nonneg(OP, "weight_decay", cfg.weight_decay)?;
        check_nonneg(OP, "momentum", cfg.momentum)?;
        let mut names = vec!["square_avg"];
        if cfg.momentum > 0.0 {
            names.push("momentum_buffer");
        }
        if cfg.centered {
            names.push("grad_avg");
        }
        let mut state = StateTable::new();
        state.set_names(names);
        Ok(RmsProp { cfg, state })
    }

    /// The settings.
    pub fn config(&self) -> &RmsPropConfig {
        &self.cfg
    }
}

impl<T: Float> Optimizer<T> for RmsProp<T> {
    fn name(&self) -> &'static str {
        "rmsprop"
    }

    fn step(&mut self, store: &mut ParamStore<T>, grads: &Grads<'_, T>) -> Result<()> {
        let ids = grads_to_apply("RmsProp::step", store, grads)?;
        let c = &self.cfg;
        let (lr, alpha, oma) = (
            T::from_f64(c.lr),
            T::from_f64(c.alpha),
            T::from_f64(1.0 - c.alpha),
        );
        let (wd, eps, mom) = (
            T::from_f64(c.weight_decay),
            T::from_f64(c.eps),
            T::from_f64(c.momentum),
        );
        let has_mom = c.momentum > 0.0;
        for id in ids {
            let g = grads.param(id).expect("checked by grads_to_apply");
            let p = store.get_mut(id);
            let st = self.state.get_or_init(id, p, T::ZERO);
            st.step += 1;
            let mut bufs = st.bufs.iter_mut();
            let sq = bufs.next().expect("square_avg").data_mut();
            let mut buf = if has_mom {
                Some(bufs.next().expect("momentum_buffer").data_mut())
            } else {
                None
            };
            let mut ga = if c.centered {
                Some(bufs.next().expect("grad_avg").data_mut())
            } else {
                None
            };
            for (k, (pi, &gi)) in p.data_mut().iter_mut().zip(g.data()).enumerate() {
                let gi = if c.weight_decay != 0.0 {
                    gi + wd * *pi
                } else {
                    gi
                };
                sq[k] = alpha * sq[k] + oma * gi * gi;
                let avg = match ga.as_deref_mut() {
                    Some(ga) => {
                        ga[k] = alpha * ga[k] + oma * gi;
                        (sq[k] - ga[k] * ga[k]).sqrt() + eps
                    }
                    None => sq[k].sqrt() + eps,
                };
                match buf.as_deref_mut() {
                    Some(b) => {
                        b[k] = mom * b[k] + gi / avg;
                        *pi -= lr * b[k];
                    }
                    None => *pi -= lr * gi / avg,
                }
            }
        }
        Ok(())
    }

    lr_and_state_methods!("RmsProp::load_state");
}
