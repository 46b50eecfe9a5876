//! Typed errors of the numeric layer.

/// Result alias used across medsa's numeric crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside a tensor op.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes do not fit the op.
    #[error("{op}: shape mismatch: {msg}")]
    Shape {
        /// The op that rejected its operands.
        op: &'static str,
        /// What did not fit, with the shapes.
        msg: String,
    },
    /// A scalar argument is out of its domain (zero stride, negative size, ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// The op that rejected its argument.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// The element count of a shape does not fit in memory (or overflows `usize`).
    #[error("shape {shape:?} is too large ({what})")]
    TooLarge {
        /// The offending shape.
        shape: Vec<usize>,
        /// Why it was rejected.
        what: &'static str,
    },
    /// Raw bytes could not be read as the stated dtype.
    #[error("dtype {dtype}: {msg}")]
    DType {
        /// The dtype name.
        dtype: String,
        /// What was wrong.
        msg: String,
    },
    /// A backend failure (driver, compiler, device memory).
    #[error("backend {backend}: {msg}")]
    Backend {
        /// The backend name (`cpu`, `cuda`).
        backend: &'static str,
        /// The failure.
        msg: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn arg(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { op, msg: msg.into() }
    }
}
