//! `medsa-train`: fine-tuning runs on real medical data, around the training math of
//! [`medsa_model::train`].
//!
//! - [`manifest`]: the JSON manifest (3-D NIfTI image + label-map pairs or 2-D image / mask
//!   files, training and validation selections by volume, slice range and label id, a seeded
//!   random split);
//! - [`dataset`]: the loaded data, the samples of a selection and their 2-D slices;
//! - [`augment`]: seeded flips, 90-degree rotations and intensity shifts;
//! - [`prompts`]: prompt simulation during training (a random click, a jittered box, iterative
//!   error-region clicks with the previous mask fed back);
//! - [`cache`]: image embeddings computed once per image with the encoder frozen, bounded in
//!   memory and optionally kept on disk;
//! - [`validate`]: the `medsa eval` protocol (tight box per slice, 3-D Dice / IoU / HD95 per
//!   label) on the validation selections;
//! - [`state`]: the resumable run state (trainable tensors, optimizer moments, step);
//! - [`run`]: the training loop and the run folder (log, curves, best / last adapters, state).

pub mod augment;
pub mod cache;
mod curves;
pub mod dataset;
mod error;
pub mod manifest;
pub mod prompts;
pub mod run;
pub mod state;
pub mod validate;

pub use error::{Error, Result};
