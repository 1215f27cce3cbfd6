//! The crate's error type: every failure a user can cause names what was wrong.

use crate::tensor::Shape;

/// Everything that can go wrong at recur's public boundary.
///
/// Each variant carries enough context (the op, the shapes, the names) for the message alone to
/// say what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two shapes that must agree do not.
    #[error("{op}: shape mismatch: {lhs} vs {rhs}")]
    ShapeMismatch {
        /// The operation that checked the shapes.
        op: &'static str,
        /// The first shape.
        lhs: Shape,
        /// The second shape.
        rhs: Shape,
    },
    /// A shape, length or argument is invalid on its own.
    #[error("{op}: {msg}")]
    Invalid {
        /// The operation or constructor that rejected the input.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// An index (a class id, a token id, a timestep) is out of range.
    #[error("{op}: index {index} out of range for size {size}")]
    IndexOutOfRange {
        /// The operation.
        op: &'static str,
        /// The offending index.
        index: usize,
        /// The size it had to be below.
        size: usize,
    },
    /// A `Var` from another tape, or from before the tape was cleared.
    #[error("{op}: variable {var} does not belong to this tape (stale or foreign)")]
    ForeignVar {
        /// The operation.
        op: &'static str,
        /// The variable's index.
        var: u32,
    },
    /// A NaN or infinity appeared where anomaly detection was on.
    #[error("anomaly: op `{op}` produced a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// The op that first produced the value.
        op: String,
        /// Position of the first non-finite element in the op's output.
        index: usize,
        /// The value (NaN or +-inf), as f64.
        value: f64,
    },
    /// A training step whose loss or gradient norm is not finite: the run diverged.
    #[error(
        "step {step}: the loss or gradient is not finite (loss {loss}, gradient norm \
         {grad_norm}); try a smaller learning rate or gradient clipping"
    )]
    NotFiniteStep {
        /// The step, counted from 1 from the start of the run.
        step: usize,
        /// The step's loss.
        loss: f64,
        /// The global gradient norm before clipping.
        grad_norm: f64,
    },
    /// Parameters, checkpoints or fixtures that do not fit the model.
    #[error("{context}: {msg}")]
    Format {
        /// Which file or object.
        context: String,
        /// What was wrong with it.
        msg: String,
    },
    /// An operating-system I/O error, with the path it concerned.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            msg: msg.into(),
        }
    }

    /// Shorthand for [`Error::Format`].
    pub fn format(context: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Format {
            context: context.into(),
            msg: msg.into(),
        }
    }

    /// Wraps an I/O error with the path it concerned.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
