//! Adagrad with learning-rate decay and an initial accumulator value.

use super::Optimizer;
use super::state::{StateTable, check_nonneg, config_setters, grads_to_apply};
use crate::Result;
use crate::params::ParamStore;
use crate::tape::Grads;
use crate::tensor::{Float, Tensor};

/// Settings of [`Adagrad`], with PyTorch's defaults.
///
/// ```
/// use recur::optim::AdagradConfig;
/// let cfg = AdagradConfig::default().initial_accumulator_value(0.1);
/// assert_eq!((cfg.lr, cfg.lr_decay, cfg.eps), (1e-2, 0.0, 1e-10));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Decay of the learning rate with the step count (default 0).
    pub lr_decay: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Starting value of the sum of squared gradients (default 0).
    pub initial_accumulator_value: f64,
    /// Added to the denominator (default 1e-10).
    pub eps: f64,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
        }
    }
}

config_setters!(AdagradConfig {
    lr: f64,
    lr_decay: f64,
    weight_decay: f64,
    initial_accumulator_value: f64,
    eps: f64,
});

/// Adagrad as `torch.optim.Adagrad`:
///
/// ```text
/// g = grad + weight_decay * p
/// clr = lr / (1 + (t - 1) * lr_decay)
/// sum = sum + g^2                      (sum starts at initial_accumulator_value)
/// p = p - clr * g / (sqrt(sum) + eps)
/// ```
#[derive(Clone, Debug)]
pub struct Adagrad<T: Float> {
    cfg: AdagradConfig,
    state: StateTable<T>,
}

impl<T: Float> Adagrad<T> {
    /// A new optimizer; fails on a hyper-parameter that is negative or not finite.
    pub fn new(cfg: AdagradConfig) -> Result<Self> {
        const OP: &str = "Adagrad::new";
        check_nonneg(OP, "lr", cfg.lr)?;
        check_nonneg(OP, "lr_decay", cfg.lr_decay)?;
        check_nonneg(OP, "weight_decay", cfg.weight_decay)?;
        check_nonneg(
            OP,
            "initial_accumulator_value",
            cfg.initial_accumulator_value,
        )?;
        check_nonneg(OP, "eps", cfg.eps)?;
        let mut state = StateTable::new();
        state.set_names(vec!["sum"]);
        Ok(Adagrad { cfg, state })
    }

    /// The settings.
    pub fn config(&self) -> &AdagradConfig {
        &self.cfg
    }
}

impl<T: Float> Optimizer<T> for Adagrad<T> {
    fn name(&self) -> &'static str {
        "adagrad"
    }

    fn step(&mut self, store: &mut ParamStore<T>, grads: &Grads<'_, T>) -> Result<()> {
        let ids = grads_to_apply("Adagrad::step", store, grads)?;
        let c = &self.cfg;
        let (wd, eps) = (T::from_f64(c.weight_decay), T::from_f64(c.eps));
        let init = T::from_f64(c.initial_accumulator_value);
        for id in ids {
            let g = grads.param(id).expect("checked by grads_to_apply");
            let p = store.get_mut(id);
            let st = self.state.get_or_init(id, p, init);
            st.step += 1;
            let clr = T::from_f64(c.lr / (1.0 + (st.step - 1) as f64 * c.lr_decay));
            let sum = st.bufs[0].data_mut();
            for ((pi, &gi), s) in p.data_mut().iter_mut().zip(g.data()).zip(sum) {
                let gi = if c.weight_decay != 0.0 {
                    gi + wd * *pi
                } else {
                    gi
                };
                *s += gi * gi;
                *pi -= clr * gi / (s.sqrt() + eps);
            }
        }
        Ok(())
    }

    lr_and_state_methods!("Adagrad::load_state");
}
