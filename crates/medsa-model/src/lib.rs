//! `medsa-model`: SAM and Med-SA written once over [`medsa_core::Backend`].
//!
//! - [`config`]: SAM ViT-B/L/H, Med-SA and free-form configurations, with every paper-vs-official
//!   difference as a named switch;
//! - [`weights`]: safetensors reading and the used-or-reported key bookkeeping;
//! - [`encoder`], [`prompt`], [`decoder`]: the three parts of the network (spec 3, 4, 5);
//! - [`tiny_vit`]: LiteMedSAM's TinyViT encoder; [`lite`]: LiteMedSAM's weights (find, fetch, load);
//! - [`preprocess`]: SAM's and Med-SA's pre/post-processing (spec 6);
//! - [`volume`]: the 3-D `VolumePredictor` (chunks of D slices through SD-Trans);
//! - [`propagate`]: 3-D prompting that follows the organ (mask-propagated boxes or clicks);
//! - [`detect`]: family and configuration of a checkpoint from its names and shapes (spec 11);
//! - [`sam`]: the assembled model; [`golden`]: the parity runner over `../shared/golden`;
//! - [`adapters`]: adapter checkpoints (the trained tensors of a run, loaded onto their base);
//! - [`train`]: adapter fine-tuning: explicit backward passes, losses, optimizers, trainable sets.

pub mod adapters;
pub mod config;
pub mod decoder;
pub mod detect;
pub mod encoder;
mod error;
pub mod golden;
pub mod lite;
pub mod nn;
pub mod params;
pub mod predictor;
pub mod preprocess;
pub mod prompt;
pub mod propagate;
pub mod sam;
pub mod tiny_vit;
pub mod train;
pub mod volume;
pub mod weights;

pub use error::{CheckpointReport, Error, Result};
pub use sam::{Encoder, LoadOptions, Loaded, Sam};
