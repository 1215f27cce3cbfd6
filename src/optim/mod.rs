//! Optimizers, learning-rate schedules and gradient clipping.
//!
//! The optimizers follow PyTorch's update rules and default hyper-parameters exactly
//! ([`Sgd`], [`Adam`], [`AdamW`], [`RmsProp`], [`Adagrad`]); they update a [`ParamStore`] from the
//! [`Grads`] of one [`crate::Tape::backward`] call. A parameter without a gradient is skipped,
//! state and all, as PyTorch skips a parameter whose `.grad` is `None`.
//!
//! ```
//! use recur::optim::{clip_grad_norm, Adam, AdamConfig, Optimizer};
//! use recur::{ParamStore, Tape, Tensor};
//!
//! let mut ps = ParamStore::<f64>::new();
//! let w = ps.add("w", Tensor::from_vec(vec![1.0, -2.0], &[2])?)?;
//! let mut opt = Adam::new(AdamConfig::default().lr(0.1))?;
//! let mut tape = Tape::new();
//! for _ in 0..100 {
//!     tape.clear();
//!     let wv = tape.param(&ps, w)?;
//!     let sq = tape.mul(wv, wv)?;
//!     let loss = tape.sum(sq)?;
//!     let mut grads = tape.backward(loss)?;
//!     clip_grad_norm(&mut grads, 1.0)?;
//!     opt.step(&mut ps, &grads)?;
//! }
//! assert!(ps.get(w).norm() < 0.1);
//! # Ok::<(), recur::Error>(())
//! ```

/// The [`Optimizer`] methods every optimizer here shares: the learning rate lives in
/// `cfg.lr` (under the optional field given, e.g. `core`), the per-parameter tensors in a
/// [`state::StateTable`] named `state` beside it, and the learning rate is the only scalar saved.
/// `$ctx` names the optimizer in `load_state`'s errors.
macro_rules! lr_and_state_methods {
    ($ctx:expr $(, $inner:ident)?) => {
        fn lr(&self) -> f64 {
            self$(.$inner)?.cfg.lr
        }

        fn set_lr(&mut self, lr: f64) {
            self$(.$inner)?.cfg.lr = lr;
        }

        fn state_tensors(&self, store: &ParamStore<T>) -> Vec<(String, Tensor<T>)> {
            self$(.$inner)?.state.export(store)
        }

        fn state_scalars(&self) -> Vec<(String, f64)> {
            vec![("lr".into(), self$(.$inner)?.cfg.lr)]
        }

        fn load_state(
            &mut self,
            store: &ParamStore<T>,
            tensors: &[(String, Tensor<T>)],
            scalars: &[(String, f64)],
        ) -> Result<()> {
            self$(.$inner)?.cfg.lr = self$(.$inner)?
                .state
                .load_with_lr($ctx, store, tensors, scalars)?;
            Ok(())
        }
    };
}

mod adagrad;
mod adam;
mod clip;
pub mod divergence;
mod rmsprop;
mod schedule;
mod sgd;
mod state;

pub use adagrad::{Adagrad, AdagradConfig};
pub use adam::{Adam, AdamConfig, AdamW};
pub use clip::{clip_grad_norm, clip_grad_value, grad_norm};
pub use divergence::DivergenceGuard;
pub use rmsprop::{RmsProp, RmsPropConfig};
pub use schedule::{ConstantLr, CosineAnnealingLr, LrSchedule, StepLr, WarmupCosine, WarmupLinear};
pub use sgd::{Sgd, SgdConfig};

use crate::Result;
use crate::params::ParamStore;
use crate::tape::Grads;
use crate::tensor::{Float, Tensor};

/// An optimizer: updates parameters from their gradients, and can save and restore its state.
///
/// State is exported as named tensors, `"{param name}.{buffer}"` (for example
/// `weight_hh_l0.exp_avg`), plus named `f64` scalars (the learning rate and any counters), so a
/// checkpoint can store it beside the parameters ([`crate::io::checkpoint`]).
pub trait Optimizer<T: Float> {
    /// The optimizer's name (`"sgd"`, `"adam"`, ...), recorded in checkpoints.
    fn name(&self) -> &'static str;

    /// One update of every parameter in `store` that has a gradient in `grads`. Fails (changing
    /// nothing) when a gradient's shape differs from its parameter's.
    fn step(&mut self, store: &mut ParamStore<T>, grads: &Grads<'_, T>) -> Result<()>;

    /// The current learning rate.
    fn lr(&self) -> f64;

    /// Sets the learning rate (a schedule calls this before each step).
    fn set_lr(&mut self, lr: f64);

    /// The per-parameter state, named `"{param name}.{buffer}"`. Parameters that never had a
    /// gradient have no state.
    fn state_tensors(&self, store: &ParamStore<T>) -> Vec<(String, Tensor<T>)>;

    /// Scalars of the optimizer as a whole (at least `"lr"`).
    fn state_scalars(&self) -> Vec<(String, f64)>;

    /// Restores state exported by [`Optimizer::state_tensors`] and
    /// [`Optimizer::state_scalars`] for the parameters of `store`. Everything is validated first:
    /// an unknown name, a missing buffer of a parameter that has state, a buffer whose shape
    /// differs from its parameter's or a missing scalar is an error naming it, and then nothing is
    /// changed.
    fn load_state(
        &mut self,
        store: &ParamStore<T>,
        tensors: &[(String, Tensor<T>)],
        scalars: &[(String, f64)],
    ) -> Result<()>;
}
