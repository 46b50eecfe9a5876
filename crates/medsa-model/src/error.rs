//! Typed errors of the model layer.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor op rejected its operands.
    #[error(transparent)]
    Tensor(#[from] medsa_core::Error),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{path} is not a safetensors file: {msg}")]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        msg: String,
    },
    /// A checkpoint tensor has a dtype the model cannot use.
    #[error("checkpoint tensor {name} has dtype {dtype}; only F32, F16 and BF16 are supported")]
    UnsupportedDtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// The checkpoint does not fit the model: every problem is listed.
    #[error("checkpoint does not fit the model ({}):{}", .0.summary(), .0.details())]
    Checkpoint(CheckpointReport),
    /// Model weights are missing or cannot be read; the message says how to get them.
    #[error("weights {path}: {msg}")]
    Weights {
        /// The weights file (or the folder that should hold it).
        path: PathBuf,
        /// What is wrong and how to fix it.
        msg: String,
    },
    /// The checkpoint's family or sizes cannot be recognised from its keys.
    #[error("cannot detect the model from the checkpoint: {0}")]
    Detect(String),
    /// A configuration is inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// An image cannot be segmented (empty, wrong channels, NaN ...).
    #[error("invalid image: {0}")]
    Image(String),
    /// A prompt is malformed or outside the image.
    #[error("invalid prompt: {0}")]
    Prompt(String),
    /// A volume cannot be segmented (a zero-size dimension, NaN voxels, values outside [0, 1]).
    #[error("invalid volume: {0}")]
    Volume(String),
    /// Training met a NaN or infinite loss or gradient; `what` names it (`loss`,
    /// `gradient of mask_decoder.iou_token.weight`, ...).
    #[error("training diverged: {what} is not finite at step {step}")]
    NonFinite {
        /// The loss or the parameter whose gradient it is.
        what: String,
        /// The optimizer step (0-based).
        step: u64,
    },
    /// A trainable-set pattern selects no parameter of the model.
    #[error("trainable pattern `{pattern}` matches no parameter of the model")]
    NoTrainableMatch {
        /// The pattern as given.
        pattern: String,
    },
    /// A parameter was selected for training that has no backward pass here.
    #[error("{name} cannot be trained: {why}")]
    NotTrainable {
        /// The parameter (official key).
        name: String,
        /// Why not.
        why: String,
    },
    /// A saved optimizer state does not fit the parameters it is resumed on.
    #[error("optimizer state for {name} does not fit: {msg}")]
    OptimizerState {
        /// The parameter (official key).
        name: String,
        /// The mismatch.
        msg: String,
    },
    /// An adapter checkpoint is unreadable or does not belong on the base it is loaded onto.
    #[error("adapter checkpoint {path}: {msg}")]
    Adapters {
        /// The adapter file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A prompt names a slice the volume does not have.
    #[error("prompt on slice {slice}, but the volume has {slices} slices along the slice axis")]
    NoSuchSlice {
        /// The slice the prompt names.
        slice: usize,
        /// Slices along the slice axis.
        slices: usize,
    },
}

/// Everything wrong between a checkpoint and a model, for [`Error::Checkpoint`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CheckpointReport {
    /// Tensors the model needs and the file lacks.
    pub missing: Vec<String>,
    /// Tensors in the file the model does not use.
    pub unexpected: Vec<String>,
    /// `name: file shape vs expected shape`.
    pub wrong_shape: Vec<String>,
}

impl CheckpointReport {
    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty()
    }
    fn summary(&self) -> String {
        format!(
            "{} missing, {} unexpected, {} wrongly shaped",
            self.missing.len(),
            self.unexpected.len(),
            self.wrong_shape.len()
        )
    }
    fn details(&self) -> String {
        let mut s = String::new();
        for (what, list) in
            [("missing", &self.missing), ("unexpected", &self.unexpected), ("wrong shape", &self.wrong_shape)]
        {
            for item in list.iter().take(20) {
                s.push_str(&format!("\n  {what}: {item}"));
            }
            if list.len() > 20 {
                s.push_str(&format!("\n  ... and {} more {what}", list.len() - 20));
            }
        }
        s
    }
}
