//! Adapter checkpoints: the tensors a fine-tuning run trained, saved apart from the frozen base
//! they go on top of.
//!
//! A file is safetensors (f32) holding exactly the trainable tensors under their official names
//! (`mask_decoder.transformer.layers.0.HyP_Adapter.gen.0.weight`, ...), a few MB, and a header
//! ([`AdapterMeta`]) with the base checkpoint's sha256, the trainable rule, the step and the
//! metrics at save time. Loading ([`AdapterFile::merge_into`]) checks the base's sha256, puts the
//! adapter tensors into the base's tensor map (replacing a base tensor of the same name and
//! shape, adding new ones) and leaves the model's configuration to [`crate::detect`], which reads
//! the inserted adapters from their names and shapes, so the file never has to describe the
//! architecture in a second language.

use crate::sam::Sam;
use crate::train::params::{visit_trainable, Trainable};
use crate::weights::{parse_safetensors, write_safetensors, TensorMap};
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// The header format tag.
pub const FORMAT: &str = "medsa-adapters/1";

/// What an adapter file says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterMeta {
    /// sha256 (hex) of the base checkpoint file the adapters were trained on.
    pub base_sha256: String,
    /// The base checkpoint's file name (informative).
    pub base_file: String,
    /// The trainable rule of the run (`paper`, `official`, `decoder` or globs).
    pub trainable_rule: String,
    /// Optimizer steps taken when the file was written.
    pub step: u64,
    /// The model configuration, for people reading the header (loading re-detects it).
    pub model: String,
    /// Metrics at save time (JSON object; may be empty).
    pub metrics: serde_json::Value,
}

/// An adapter checkpoint read from disk.
#[derive(Clone, Debug)]
pub struct AdapterFile {
    /// Its header.
    pub meta: AdapterMeta,
    /// The trained tensors by official name.
    pub tensors: TensorMap,
}

/// Writes the `trainable` tensors of `model` with `meta` to `path` (temporary file, fsync,
/// rename: a crash never leaves a partial file).
pub fn save(path: &Path, model: &mut Sam, trainable: &Trainable, meta: &AdapterMeta) -> Result<()> {
    let mut tensors = Vec::new();
    visit_trainable(model, &mut |n, t| {
        if trainable.contains(n) {
            tensors.push((n.to_string(), t.clone()));
        }
        Ok(())
    })?;
    if tensors.len() != trainable.len() {
        return Err(Error::Adapters {
            path: path.into(),
            msg: format!("{} trainable names but the model has {} of them", trainable.len(), tensors.len()),
        });
    }
    let mut h = HashMap::new();
    h.insert("format".to_string(), FORMAT.to_string());
    h.insert("base_sha256".to_string(), meta.base_sha256.clone());
    h.insert("base_file".to_string(), meta.base_file.clone());
    h.insert("trainable_rule".to_string(), meta.trainable_rule.clone());
    h.insert("step".to_string(), meta.step.to_string());
    h.insert("model".to_string(), meta.model.clone());
    h.insert("metrics".to_string(), meta.metrics.to_string());
    write_safetensors(path, &tensors, Some(h))
}

/// Reads an adapter checkpoint; a file that is not one (no header, another format, a bad
/// field) is [`Error::Adapters`] naming what is wrong.
pub fn read(path: &Path) -> Result<AdapterFile> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let bad = |msg: String| Error::Adapters { path: path.into(), msg };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let h = header.metadata().clone().unwrap_or_default();
    let field = |k: &str| {
        h.get(k).cloned().ok_or_else(|| bad(format!("header has no `{k}` (is it a {FORMAT} file?)")))
    };
    let format = field("format")?;
    if format != FORMAT {
        return Err(bad(format!("format `{format}`, expected `{FORMAT}`")));
    }
    let step = field("step")?.parse().map_err(|_| bad("header `step` is not a number".into()))?;
    let metrics =
        serde_json::from_str(&field("metrics")?).map_err(|e| bad(format!("header `metrics`: {e}")))?;
    let meta = AdapterMeta {
        base_sha256: field("base_sha256")?,
        base_file: field("base_file")?,
        trainable_rule: field("trainable_rule")?,
        step,
        model: field("model")?,
        metrics,
    };
    let tensors = parse_safetensors(&bytes).map_err(|e| bad(e.to_string()))?;
    if tensors.is_empty() {
        return Err(bad("holds no tensors".into()));
    }
    Ok(AdapterFile { meta, tensors })
}

impl AdapterFile {
    /// Puts the adapter tensors into `base` (the tensors of the base checkpoint whose sha256 is
    /// `base_sha256`). A different base, or an adapter tensor whose name the base has with
    /// another shape, is [`Error::Adapters`] (`path` names the adapter file in the message).
    pub fn merge_into(&self, base: &mut TensorMap, base_sha256: &str, path: &Path) -> Result<()> {
        let bad = |msg: String| Error::Adapters { path: path.into(), msg };
        if !self.meta.base_sha256.eq_ignore_ascii_case(base_sha256) {
            return Err(bad(format!(
                "trained on a base checkpoint with sha256 {} ({}), but the base given has sha256 {base_sha256}",
                self.meta.base_sha256, self.meta.base_file
            )));
        }
        let mut wrong = Vec::new();
        for (name, t) in &self.tensors {
            if let Some(b) = base.get(name) {
                if b.shape() != t.shape() {
                    wrong.push(format!(
                        "{name}: {:?} in the adapters, {:?} in the base",
                        t.shape(),
                        b.shape()
                    ));
                }
            }
        }
        if !wrong.is_empty() {
            return Err(bad(format!("tensors do not fit the base: {}", wrong.join("; "))));
        }
        base.extend(self.tensors.iter().map(|(n, t)| (n.clone(), t.clone())));
        Ok(())
    }
}
