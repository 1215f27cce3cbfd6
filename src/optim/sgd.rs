//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay.

use super::Optimizer;
use super::state::{StateTable, check_nonneg, config_setters, grads_to_apply};
use crate::params::ParamStore;
use crate::tape::Grads;
use crate::tensor::{Float, Tensor};
use crate::{Error, Result};

/// Settings of [`Sgd`], with PyTorch's defaults.
///
/// ```
/// use recur::optim::SgdConfig;
/// let cfg = SgdConfig::default().lr(0.1).momentum(0.9).nesterov(true);
/// assert_eq!((cfg.lr, cfg.momentum, cfg.dampening, cfg.weight_decay), (0.1, 0.9, 0.0, 0.0));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Momentum factor (default 0: plain SGD).
    pub momentum: f64,
    /// Dampening of the momentum (default 0).
    pub dampening: f64,
    /// L2 penalty added to the gradient, `g + weight_decay * p` (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (default false; needs momentum > 0 and dampening 0).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

config_setters!(SgdConfig {
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
});

/// SGD as `torch.optim.SGD`:
///
/// ```text
/// g = grad + weight_decay * p
/// if momentum != 0:
///     buf = g                                        (first step)
///     buf = momentum * buf + (1 - dampening) * g     (later steps)
///     g = g + momentum * buf   if nesterov   else   buf
/// p = p - lr * g
/// ```
#[derive(Clone, Debug)]
pub struct Sgd<T: Float> {
    cfg: SgdConfig,
    state: StateTable<T>,
}

impl<T: Float> Sgd<T> {
    /// A new optimizer; fails on a negative or non-finite hyper-parameter, or on Nesterov
    /// momentum without momentum or with dampening.
    pub fn new(cfg: SgdConfig) -> Result<Self> {
        const OP: &str = "Sgd::new";
        check_nonneg(OP, "lr", cfg.lr)?;
        check_nonneg(OP, "momentum", cfg.momentum)?;
        check_nonneg(OP, "dampening", cfg.dampening)?;
        check_nonneg(OP, "weight_decay", cfg.weight_decay)?;
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            return Err(Error::invalid(
                OP,
                "Nesterov momentum requires a momentum and zero dampening",
            ));
        }
        let mut state = StateTable::new();
        if cfg.momentum != 0.0 {
            state.set_names(vec!["momentum_buffer"]);
        }
        Ok(Sgd { cfg, state })
    }

    /// The settings.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl<T: Float> Optimizer<T> for Sgd<T> {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn step(&mut self, store: &mut ParamStore<T>, grads: &Grads<'_, T>) -> Result<()> {
        let ids = grads_to_apply("Sgd::step", store, grads)?;
        let c = &self.cfg;
        let (lr, wd, mom) = (
            T::from_f64(c.lr),
            T::from_f64(c.weight_decay),
            T::from_f64(c.momentum),
        );
        let damp = T::from_f64(1.0 - c.dampening);
        for id in ids {
            let g = grads.param(id).expect("checked by grads_to_apply");
            let p = store.get_mut(id);
            if c.momentum == 0.0 {
                for (pi, &gi) in p.data_mut().iter_mut().zip(g.data()) {
                    let d = if c.weight_decay != 0.0 {
                        gi + wd * *pi
                    } else {
                        gi
                    };
                    *pi -= lr * d;
                }
                continue;
            }
            let st = self.state.get_or_init(id, p, T::ZERO);
            let first = st.step == 0;
            st.step += 1;
            let buf = st.bufs[0].data_mut();
            for ((pi, &gi), bi) in p.data_mut().iter_mut().zip(g.data()).zip(buf) {
                let d = if c.weight_decay != 0.0 {
                    gi + wd * *pi
                } else {
                    gi
                };
                *bi = if first { d } else { mom * *bi + damp * d };
                let upd = if c.nesterov { d + mom * *bi } else { *bi };
                *pi -= lr * upd;
            }
        }
        Ok(())
    }

    lr_and_state_methods!("Sgd::load_state");
}
