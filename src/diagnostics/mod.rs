//! Diagnostics: checking gradients by finite differences.

mod gradcheck;

pub use gradcheck::{GradcheckOptions, GradcheckReport, gradcheck};
