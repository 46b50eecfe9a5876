//! Typed errors of training runs.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a training run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model layer failed (shapes, checkpoints, non-finite losses ...).
    #[error(transparent)]
    Model(#[from] medsa_model::Error),
    /// A tensor op failed.
    #[error(transparent)]
    Tensor(#[from] medsa_core::Error),
    /// Reading a volume or an image failed.
    #[error(transparent)]
    Io(#[from] medsa_io::Error),
    /// The evaluation layer failed (masks, metrics, charts).
    #[error(transparent)]
    Eval(#[from] medsa_eval::EvalError),
    /// The manifest is malformed or names something that is not there.
    #[error("manifest {path}: {msg}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A training setting is inconsistent.
    #[error("invalid training config: {0}")]
    Config(String),
    /// The run folder or its state cannot be used (resume of another run, a corrupt state).
    #[error("run {path}: {msg}")]
    Run {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file of the run could not be written or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}
