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

/// Writes f32 tensors and optional header metadata to a safetensors file without ever leaving a
/// partial file at `path`: the bytes go to a temporary file beside it, which is flushed to disk
/// and then renamed over `path`. The file is a function of its contents alone: tensors are laid
/// out by name and the header's keys are sorted (the metadata's too), so two runs that produce
/// the same tensors write the same bytes.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let bad = |msg: String| Error::NotSafetensors { path: path.into(), msg };
    let mut names = BTreeSet::new();
    if let Some((dup, _)) = tensors.iter().find(|(n, _)| !names.insert(n.as_str())) {
        return Err(bad(format!("duplicate tensor name {dup}")));
    }
    let mut order: Vec<&(String, Tensor)> = tensors.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = BTreeMap::<&str, serde_json::Value>::new();
    if let Some(m) = metadata {
        header.insert("__metadata__", serde_json::json!(m.into_iter().collect::<BTreeMap<_, _>>()));
    }
    let mut offset = 0usize;
    for (n, t) in &order {
        let end = offset + 4 * t.numel();
        header.insert(
            n,
            serde_json::json!({ "dtype": "F32", "shape": t.shape(), "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    // The data starts 8-byte aligned, as safetensors writers pad the header with spaces.
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut bytes = Vec::with_capacity(8 + head.len() + offset);
    bytes.extend_from_slice(&(head.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&head);
    for (_, t) in &order {
        t.data().iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    }
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder: write, fsync, rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| Error::Io { path: path.into(), source };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
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
    /// Shape-only mode for parameter accounting: nothing is allocated, every request is recorded.
    dry: Option<Vec<(String, usize)>>,
}

/// How a tensor missing from the checkpoint may be initialised instead of being an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitPolicy {
    /// Adapter tensors (names with `Adapter` / `HyP_`) start at zero: every adapter adds nothing
    /// (or is the identity with its skip), so the model computes exactly what SAM computes.
    Zeros,
    /// Adapter tensors are initialised for training: up-projections (`D_fc2`) zero, so the fresh
    /// model still equals SAM bit for bit, everything else uniform in ±1/√fan_in (PyTorch's
    /// default), LayerNorms at weight 1 / bias 0. Seeded and reproducible.
    Training {
        /// Seed of the random stream.
        seed: u64,
    },
    /// Every missing tensor (not only adapters) gets seeded random values: a complete random
    /// model for benchmarks and tests.
    Random {
        /// Seed of the random stream.
        seed: u64,
    },
}

/// Deterministic values in [-1, 1) for `name` (splitmix64 over the name's hash and `seed`).
fn seeded_uniform(name: &str, seed: u64, n: usize) -> Vec<f32> {
    let mut s =
        name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The initial value of a missing tensor under `policy`, or None if it must be loaded.
fn initial(policy: InitPolicy, name: &str, shape: &[usize]) -> Option<Vec<f32>> {
    let n: usize = shape.iter().product();
    let is_adapter = ["Adapter", "HyP_"].iter().any(|m| name.contains(m));
    let is_norm = name.contains("norm") || name.contains("neck.1") || name.contains("neck.3");
    let random = |seed: u64| {
        // BatchNorm statistics: a unit variance (a random one could be negative).
        if name.ends_with("running_var") {
            return vec![1.0; n];
        }
        if is_norm || name.contains(".bn.") {
            return vec![if name.ends_with(".weight") { 1.0 } else { 0.0 }; n];
        }
        let fan_in =
            if shape.len() >= 2 { shape[1..].iter().product::<usize>().max(1) } else { shape[0].max(1) };
        let bound = 1.0 / (fan_in as f32).sqrt();
        seeded_uniform(name, seed, n).into_iter().map(|v| v * bound).collect()
    };
    match policy {
        InitPolicy::Zeros if is_adapter => Some(vec![0.0; n]),
        InitPolicy::Training { .. } if is_adapter && name.contains("D_fc2") => Some(vec![0.0; n]),
        InitPolicy::Training { seed } if is_adapter => Some(random(seed)),
        InitPolicy::Random { seed } => Some(random(seed)),
        _ => None,
    }
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
            dry: None,
        }
    }

    /// A loader that allocates nothing and records the name and size of every tensor a model
    /// asks for. The modules it builds hold empty placeholders and must not be run: it exists
    /// for parameter accounting ([`crate::params`]).
    pub(crate) fn dry_run() -> Self {
        WeightLoader { dry: Some(Vec::new()), ..WeightLoader::new(TensorMap::new()) }
    }

    /// The requests recorded by a [`Self::dry_run`] loader.
    pub(crate) fn into_requests(self) -> Vec<(String, usize)> {
        self.dry.unwrap_or_default()
    }

    /// Lets tensors be missing from the checkpoint: `policy` initialises them and
    /// [`Self::initialised`] lists them (loading SAM into Med-SA, fresh adapters for training).
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
        if let Some(requests) = &mut self.dry {
            // Saturating: a config detected from absurd file shapes must not overflow here.
            let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
            requests.push((name.to_string(), n));
            return Tensor::new(vec![0], Vec::new()).expect("empty tensor");
        }
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
            None => match self.init.and_then(|p| initial(p, name, shape)) {
                Some(values) => {
                    self.initialised.push(name.to_string());
                    if let Ok(t) = Tensor::new(shape.to_vec(), values) {
                        return t;
                    }
                }
                None => self.report.missing.push(name.to_string()),
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn safetensors_files_depend_only_on_their_contents() {
        let dir = std::env::temp_dir().join(format!("medsa-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t =
            |n: usize, v: f32| Tensor::new(vec![n, 2], (0..2 * n).map(|i| v + i as f32).collect()).unwrap();
        let tensors = vec![("b.weight".to_string(), t(3, 1.0)), ("a.bias".to_string(), t(1, -2.5))];
        let meta = |keys: &[&str]| Some(keys.iter().map(|k| (k.to_string(), format!("{k}-value"))).collect());
        let (p1, p2) = (dir.join("one.safetensors"), dir.join("two.safetensors"));
        let reversed: Vec<_> = tensors.iter().rev().cloned().collect();
        write_safetensors(&p1, &tensors, meta(&["step", "base_sha256", "rule", "model"])).unwrap();
        write_safetensors(&p2, &reversed, meta(&["model", "rule", "base_sha256", "step"])).unwrap();
        let (b1, b2) = (std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        assert_eq!(b1, b2, "same tensors and metadata, same bytes");
        // A valid safetensors file for the crate that reads it, with every tensor and key back.
        let st = safetensors::SafeTensors::deserialize(&b1).unwrap();
        assert_eq!(st.len(), 2);
        let (_, m) = safetensors::SafeTensors::read_metadata(&b1).unwrap();
        assert_eq!(m.metadata().as_ref().unwrap()["rule"], "rule-value");
        assert_eq!((8 + u64::from_le_bytes(b1[..8].try_into().unwrap())) % 8, 0, "data 8-byte aligned");
        let back = read_safetensors(&p1).unwrap();
        for (n, t) in &tensors {
            assert_eq!(back[n].data(), t.data(), "{n}");
            assert_eq!(back[n].shape(), t.shape(), "{n}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
