//! Choosing an optimizer on the command line.

use clap::ValueEnum;
use recur::Result;
use recur::optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, AdamW, Optimizer, RmsProp, RmsPropConfig, Sgd,
    SgdConfig,
};

/// An optimizer named on the command line (PyTorch's defaults apart from the learning rate;
/// SGD uses momentum 0.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptArg {
    /// Adam.
    Adam,
    /// Adam with decoupled weight decay (0.01).
    Adamw,
    /// SGD with momentum 0.9.
    Sgd,
    /// RMSprop.
    Rmsprop,
    /// Adagrad.
    Adagrad,
}

/// Builds the optimizer.
pub fn make_optimizer(kind: OptArg, lr: f64) -> Result<Box<dyn Optimizer<f32>>> {
    Ok(match kind {
        OptArg::Adam => Box::new(Adam::new(AdamConfig::default().lr(lr))?),
        OptArg::Adamw => Box::new(AdamW::new(AdamConfig::adamw().lr(lr))?),
        OptArg::Sgd => Box::new(Sgd::new(SgdConfig::default().lr(lr).momentum(0.9))?),
        OptArg::Rmsprop => Box::new(RmsProp::new(RmsPropConfig::default().lr(lr))?),
        OptArg::Adagrad => Box::new(Adagrad::new(AdagradConfig::default().lr(lr))?),
    })
}

/// The optimizer a checkpoint names (its `name()`), rebuilt with learning rate `lr`.
pub fn optimizer_by_name(name: &str, lr: f64) -> Option<Result<Box<dyn Optimizer<f32>>>> {
    let kind = match name {
        "adam" => OptArg::Adam,
        "adamw" => OptArg::Adamw,
        "sgd" => OptArg::Sgd,
        "rmsprop" => OptArg::Rmsprop,
        "adagrad" => OptArg::Adagrad,
        _ => return None,
    };
    Some(make_optimizer(kind, lr))
}
