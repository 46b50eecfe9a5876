//! Typed errors of the evaluation crate.

/// Result alias of `medsa-eval`.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// Everything that can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A mask shape is unusable (zero rank, a zero-sized axis, too many elements, data length).
    #[error("invalid mask shape {shape:?}: {msg}")]
    InvalidShape {
        /// The offending shape.
        shape: Vec<usize>,
        /// What was wrong with it.
        msg: String,
    },
    /// Two masks (or a mask and its spacing) that must agree do not.
    #[error("{what}: shape mismatch {a:?} vs {b:?}")]
    ShapeMismatch {
        /// What was being compared.
        what: &'static str,
        /// The first shape.
        a: Vec<usize>,
        /// The second shape.
        b: Vec<usize>,
    },
    /// Pixel or voxel spacing is not one finite positive number per axis.
    #[error("invalid spacing {spacing:?} for a mask of rank {rank}: need one finite value > 0 per axis")]
    InvalidSpacing {
        /// The spacing given.
        spacing: Vec<f64>,
        /// The rank of the mask.
        rank: usize,
    },
    /// The operation needs at least one foreground pixel (e.g. simulating a prompt from an empty
    /// ground truth).
    #[error("{what}: the mask has no foreground pixel")]
    EmptyMask {
        /// The operation that needed a foreground.
        what: &'static str,
    },
    /// The operation is defined for 2D masks only and got another rank.
    #[error("{what}: needs a 2D mask [height, width], got shape {shape:?}")]
    Not2d {
        /// The operation.
        what: &'static str,
        /// The shape received.
        shape: Vec<usize>,
    },
    /// A scalar argument is out of its domain.
    #[error("{what}: invalid argument: {msg}")]
    InvalidArgument {
        /// The function or parameter.
        what: &'static str,
        /// What was wrong.
        msg: String,
    },
    /// A prompt specification string could not be parsed.
    #[error("unknown prompt type {0:?}: expected 1pt, 3pt, bbox0.5, bbox0.75, jitterbox or iterative:N")]
    PromptParse(String),
    /// Reading or writing a report file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding the chart failed.
    #[error("writing chart {path}: {source}")]
    Image {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: image::ImageError,
    },
    /// Serialising a report to JSON failed.
    #[error("report JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// An error of the numeric layer (converting a tensor to a mask).
    #[error(transparent)]
    Core(#[from] medsa_core::Error),
}

impl EvalError {
    /// Shorthand for [`EvalError::InvalidArgument`].
    pub fn arg(what: &'static str, msg: impl Into<String>) -> Self {
        EvalError::InvalidArgument { what, msg: msg.into() }
    }
}
