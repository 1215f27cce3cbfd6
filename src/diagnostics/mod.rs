//! Diagnostics: checking gradients by finite differences, and measuring how gradients flow
//! through time.

mod flow;
mod gradcheck;
mod linalg;

pub use flow::{FlowOptions, GradientFlow, JacobianProduct, LayerFlow, gradient_flow};
pub use gradcheck::{GradcheckOptions, GradcheckReport, gradcheck};
