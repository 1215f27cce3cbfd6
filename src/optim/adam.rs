//! Adam (with optional AMSGrad) and AdamW (decoupled weight decay).

use super::Optimizer;
use super::state::{StateTable, check_nonneg, check_unit, config_setters, grads_to_apply};
use crate::Result;
use crate::params::ParamStore;
use crate::tape::Grads;
use crate::tensor::{Float, Tensor};

/// Settings of [`Adam`] and [`AdamW`], with PyTorch's defaults. `weight_decay` defaults to 0 for
/// Adam; [`AdamConfig::adamw`] gives AdamW's default of 1e-2.
///
/// ```
/// use recur::optim::AdamConfig;
/// let cfg = AdamConfig::default().lr(3e-4).amsgrad(true);
/// assert_eq!((cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay), (0.9, 0.999, 1e-8, 0.0));
/// assert_eq!(AdamConfig::adamw().weight_decay, 1e-2);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decay of the first-moment average (default 0.9).
    pub beta1: f64,
    /// Decay of the second-moment average (default 0.999).
    pub beta2: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Adam: L2 penalty added to the gradient; AdamW: decoupled decay `p *= 1 - lr * wd`
    /// (default 0 for Adam, 1e-2 for AdamW).
    pub weight_decay: f64,
    /// Use the maximum of past second moments (AMSGrad; default false).
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }
}

impl AdamConfig {
    /// PyTorch's AdamW defaults (Adam's, with `weight_decay` 1e-2).
    pub fn adamw() -> Self {
        AdamConfig {
            weight_decay: 1e-2,
            ..Self::default()
        }
    }
    /// Sets `beta1` and `beta2`.
    pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    fn validate(&self, op: &'static str) -> Result<()> {
        check_nonneg(op, "lr", self.lr)?;
        check_unit(op, "beta1", self.beta1)?;
        check_unit(op, "beta2", self.beta2)?;
        check_nonneg(op, "eps", self.eps)?;
        check_nonneg(op, "weight_decay", self.weight_decay)
    }
}

config_setters!(AdamConfig {
    lr: f64,
    eps: f64,
    weight_decay: f64,
    amsgrad: bool,
});

/// The update shared by Adam and AdamW.
#[derive(Clone, Debug)]
struct AdamCore<T: Float> {
    cfg: AdamConfig,
    decoupled: bool,
    state: StateTable<T>,
}

impl<T: Float> AdamCore<T> {
    fn new(cfg: AdamConfig, decoupled: bool, op: &'static str) -> Result<Self> {
        cfg.validate(op)?;
        let mut state = StateTable::new();
        let mut names = vec!["exp_avg", "exp_avg_sq"];
        if cfg.amsgrad {
            names.push("max_exp_avg_sq");
        }
        state.set_names(names);
        Ok(AdamCore {
            cfg,
            decoupled,
            state,
        })
    }

    fn step(
        &mut self,
        op: &'static str,
        store: &mut ParamStore<T>,
        grads: &Grads<'_, T>,
    ) -> Result<()> {
        let ids = grads_to_apply(op, store, grads)?;
        let c = &self.cfg;
        let l2 = c.weight_decay != 0.0 && !self.decoupled;
        let decay = (c.weight_decay != 0.0 && self.decoupled)
            .then(|| T::from_f64(1.0 - c.lr * c.weight_decay));
        for id in ids {
            let g = grads.param(id).expect("checked by grads_to_apply");
            let p = store.get_mut(id);
            let st = self.state.get_or_init(id, p, T::ZERO);
            st.step += 1;
            let t = st.step as i32;
            let bc1 = 1.0 - c.beta1.powi(t);
            let h = Hyper {
                b1: T::from_f64(c.beta1),
                b2: T::from_f64(c.beta2),
                omb1: T::from_f64(1.0 - c.beta1),
                omb2: T::from_f64(1.0 - c.beta2),
                wd: T::from_f64(c.weight_decay),
                eps: T::from_f64(c.eps),
                bc2_sqrt: T::from_f64((1.0 - c.beta2.powi(t)).sqrt()),
                step_size: T::from_f64(c.lr / bc1),
            };
            let (m, rest) = st.bufs.split_at_mut(1);
            let (v, vmax) = rest.split_at_mut(1);
            let (p, g) = (p.data_mut(), g.data());
            if let Some(decay) = decay {
                // AdamW: the decay first, then the update from the decayed weights.
                p.iter_mut().for_each(|pi| *pi *= decay);
            }
            let (m, v) = (m[0].data_mut(), v[0].data_mut());
            // One loop per case, free of branches, so that the compiler vectorizes it.
            match (vmax.first_mut().map(|t| t.data_mut()), l2) {
                (None, false) => update::<T, false, false>(&h, p, g, m, v, &mut []),
                (None, true) => update::<T, true, false>(&h, p, g, m, v, &mut []),
                (Some(mx), false) => update::<T, false, true>(&h, p, g, m, v, mx),
                (Some(mx), true) => update::<T, true, true>(&h, p, g, m, v, mx),
            }
        }
        Ok(())
    }
}

/// The constants of one parameter's update at step `t`.
struct Hyper<T> {
    b1: T,
    b2: T,
    omb1: T,
    omb2: T,
    wd: T,
    eps: T,
    /// `sqrt(1 - beta2^t)`.
    bc2_sqrt: T,
    /// `lr / (1 - beta1^t)`.
    step_size: T,
}

/// One parameter's Adam update, element by element: with `L2` the weight decay joins the
/// gradient (`g + wd p`), with `AMSGRAD` the second moment is the running maximum `vmax`.
fn update<T: Float, const L2: bool, const AMSGRAD: bool>(
    h: &Hyper<T>,
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    vmax: &mut [T],
) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    let vmax = if AMSGRAD { &mut vmax[..n] } else { vmax };
    for k in 0..n {
        let gi = if L2 { g[k] + h.wd * p[k] } else { g[k] };
        m[k] = h.b1 * m[k] + h.omb1 * gi;
        v[k] = h.b2 * v[k] + h.omb2 * gi * gi;
        let second = if AMSGRAD {
            vmax[k] = vmax[k].max(v[k]);
            vmax[k]
        } else {
            v[k]
        };
        let denom = second.sqrt() / h.bc2_sqrt + h.eps;
        p[k] -= h.step_size * m[k] / denom;
    }
}

macro_rules! adam_variant {
    ($name:ident, $str:literal, $decoupled:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug)]
        pub struct $name<T: Float> {
            core: AdamCore<T>,
        }

        impl<T: Float> $name<T> {
            /// A new optimizer; fails on a hyper-parameter out of range (betas in `[0, 1)`,
            /// `lr`, `eps` and `weight_decay` finite and `>= 0`).
            pub fn new(cfg: AdamConfig) -> Result<Self> {
                Ok($name {
                    core: AdamCore::new(cfg, $decoupled, concat!(stringify!($name), "::new"))?,
                })
            }

            /// The settings.
            pub fn config(&self) -> &AdamConfig {
                &self.core.cfg
            }
        }

        impl<T: Float> Optimizer<T> for $name<T> {
            fn name(&self) -> &'static str {
                $str
            }

            fn step(&mut self, store: &mut ParamStore<T>, grads: &Grads<'_, T>) -> Result<()> {
                self.core
                    .step(concat!(stringify!($name), "::step"), store, grads)
            }

            lr_and_state_methods!(concat!(stringify!($name), "::load_state"), core);
        }
    };
}

adam_variant!(
    Adam,
    "adam",
    false,
    "Adam as `torch.optim.Adam` (the weight decay is an L2 term added to the gradient):\n\n\
```text\n\
g = grad + weight_decay * p\n\
m = beta1 * m + (1 - beta1) * g\n\
v = beta2 * v + (1 - beta2) * g^2\n\
v_hat = max(v_hat, v) if amsgrad else v\n\
p = p - lr / (1 - beta1^t) * m / (sqrt(v_hat) / sqrt(1 - beta2^t) + eps)\n\
```\n\n\
`t` counts the updates of each parameter (a step without its gradient does not count)."
);

adam_variant!(
    AdamW,
    "adamw",
    true,
    "AdamW as `torch.optim.AdamW`: Adam with decoupled weight decay, `p = p * (1 - lr * \
weight_decay)` before the Adam update of the undecayed gradient. Build it with \
[`AdamConfig::adamw`] for PyTorch's default decay of 1e-2."
);
