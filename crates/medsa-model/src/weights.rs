//! Checkpoint tensors by name, with bookkeeping so that every key is either used or reported
//! (STYLE.md: no silent key drops).
//!
//! Modules take their tensors from a [`WeightLoader`] while they are built. A missing or wrongly
//! shaped tensor does not stop the build: it is recorded, a zero tensor stands in, and
//! [`WeightLoader::finish`] returns one [`Error::Checkpoint`] that lists every problem.

use crate::{error::CheckpointReport, Error, Result};
use medsa_core::{dtype::decode_le, DType, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Named f32 tensors, as read from a checkpoint.
pub type TensorMap = BTreeMap<String, Tensor>;

/// Reads every floating-point tensor of a safetensors file (F32/F16/BF16, computed in f32).
/// Integer tensors named `*.num_batches_tracked` (BatchNorm counters) are skipped; any other
/// non-float tensor is an error.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    parse_safetensors(&bytes).map_err(|e| match e {
        Error::NotSafetensors { msg, .. } => Error::NotSafetensors { path: path.into(), msg },
        other => other,
    })
}

/// [`read_safetensors`] on bytes in memory.
pub fn parse_safetensors(bytes: &[u8]) -> Result<TensorMap> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::NotSafetensors { path: "<memory>".into(), msg: e.to_string() })?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            _ if name.ends_with("num_batches_tracked") => continue,
            other => return Err(Error::UnsupportedDtype { name, dtype: format!("{other:?}") }),
        };
        let data = decode_le(dtype, view.data())?;
        out.insert(name, Tensor::new(view.shape().to_vec(), data)?);
    }
    Ok(out)
}

/// Hands out checkpoint tensors to the modules being built and records what went wrong.
pub struct WeightLoader {
    tensors: TensorMap,
    used: BTreeSet<String>,
    report: CheckpointReport,
    /// Tensors the model may create itself when the file lacks them (see [`Self::allow_init`]).
    init: Option<InitPolicy>,
    initialised: Vec<String>,
}

/// How a tensor missing from the checkpoint may be initialised instead of being an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitPolicy {
    /// Adapters and other tensors SAM lacks start from zero: an adapter with a zero
    /// up-projection is the identity (skip) or adds nothing, so the model equals SAM exactly.
    Zeros,
}

impl WeightLoader {
    /// A loader over `tensors`.
    pub fn new(tensors: TensorMap) -> Self {
        WeightLoader {
            tensors,
            used: BTreeSet::new(),
            report: CheckpointReport::default(),
            init: None,
            initialised: Vec::new(),
        }
    }

    /// Lets tensors whose name contains one of the adapter markers be missing: they are
    /// initialised by `policy` and listed by [`Self::initialised`] (loading SAM into Med-SA).
    pub fn allow_init(&mut self, policy: InitPolicy) {
        self.init = Some(policy);
    }

    /// Names of the tensors created by the init policy.
    pub fn initialised(&self) -> &[String] {
        &self.initialised
    }

    /// True if the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The checkpoint's names (for detection).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Shape of `name` in the checkpoint.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(Tensor::shape)
    }

    /// Takes `name`, which must have `shape`. The first of `aliases` present is used instead
    /// when `name` is absent (e.g. `rel_h` for `rel_pos_h`).
    pub fn take_aliased(&mut self, name: &str, aliases: &[&str], shape: &[usize]) -> Tensor {
        let found =
            std::iter::once(name).chain(aliases.iter().copied()).find(|n| self.tensors.contains_key(*n));
        match found {
            Some(n) => {
                let n = n.to_string();
                self.used.insert(n.clone());
                let t = &self.tensors[&n];
                if t.shape() == shape {
                    return t.clone();
                }
                self.report.wrong_shape.push(format!("{n}: file {:?}, model {shape:?}", t.shape()));
            }
            None => {
                let is_adapter = ["Adapter", "HyP_"].iter().any(|m| name.contains(m));
                if self.init.is_some() && is_adapter {
                    self.initialised.push(name.to_string());
                } else {
                    self.report.missing.push(name.to_string());
                }
            }
        }
        Tensor::zeros(shape.to_vec()).unwrap_or_else(|_| Tensor::new(vec![0], vec![]).expect("empty tensor"))
    }

    /// Takes `name` with the expected `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Tensor {
        self.take_aliased(name, &[], shape)
    }

    /// Marks `name` as known and intentionally unused (e.g. `Depth_Adapter` of a 2D model).
    pub fn skip(&mut self, name_prefix: &str) {
        let names: Vec<String> =
            self.tensors.keys().filter(|k| k.starts_with(name_prefix)).cloned().collect();
        self.used.extend(names);
    }

    /// Ends loading: every unused tensor and every missing or misshapen one is an error.
    pub fn finish(mut self) -> Result<Vec<String>> {
        self.report.unexpected = self.tensors.keys().filter(|k| !self.used.contains(*k)).cloned().collect();
        if self.report.is_empty() {
            Ok(self.initialised)
        } else {
            Err(Error::Checkpoint(self.report))
        }
    }
}
