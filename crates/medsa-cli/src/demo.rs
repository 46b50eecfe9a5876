//! `medsa demo`: LiteMedSAM on the five bundled Colin27 brain-MRI slices, Dice against the reference masks
//! and against the official LiteMedSAM figures.

use crate::model::{self, LitePreprocess, WeightsArgs};
use crate::segment::{decode, write_overlay};
use anyhow::{bail, Context, Result};
use medsa_eval::mask::Mask;
use medsa_eval::metrics::dice;
use medsa_io::image::{load_image, save_mask_png, ColorMode};
use medsa_model::predictor::{BoxPrompt, MaskOutput, Predictor, Prompt};
use medsa_model::preprocess::ImageU8;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Allowed |Dice − reference Dice| (issue 7: within 0.01 of the official figures).
pub const TOLERANCE: f64 = 0.01;

/// Arguments of `medsa demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Folder for the masks, overlays and results.json.
    #[arg(long, value_name = "DIR", default_value = "out/demo")]
    pub out: PathBuf,
    /// Folder with cases.json and the slices (default: the bundled crates/medsa-cli/data/demo).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Checkpoint (default: LiteMedSAM, fetched on first use). The reference figures are
    /// LiteMedSAM's with official preprocessing.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Where the model runs.
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
}

/// `cases.json` of the demo folder.
#[derive(Deserialize, Debug)]
pub struct Cases {
    /// The cases.
    pub cases: Vec<Case>,
}

/// One bundled case.
#[derive(Deserialize, Debug, Clone)]
pub struct Case {
    /// Name.
    pub case: String,
    /// Image file (8-bit gray PNG).
    pub image: String,
    /// Reference mask (0/255 PNG).
    pub mask: String,
    /// What is segmented.
    pub target: String,
    /// Tight box `[x0, y0, x1, y1]`, inclusive pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The official LiteMedSAM figures for the tight box.
    pub reference: Reference,
}

/// Official LiteMedSAM figures.
#[derive(Deserialize, Debug, Clone, Copy)]
pub struct Reference {
    /// Dice against the reference mask.
    pub dice: f64,
    /// Predicted IoU.
    pub pred_iou: f64,
}

/// The bundled demo folder.
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/demo")
}

/// Reads `dir/cases.json`.
pub fn read_cases(dir: &Path) -> Result<Vec<Case>> {
    let path = dir.join("cases.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let c: Cases = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(c.cases)
}

/// A gray PNG as an 8-bit image.
pub fn read_gray(path: &Path) -> Result<ImageU8> {
    let img = load_image(path, ColorMode::Gray).with_context(|| format!("reading {}", path.display()))?;
    Ok(ImageU8::new(img.width() as usize, img.height() as usize, 1, img.into_data())?)
}

/// Dice of two 0/non-zero masks of the same size.
pub fn mask_dice(pred: &[u8], truth: &[u8], (h, w): (usize, usize)) -> Result<f64> {
    let a = Mask::new(&[h, w], pred.iter().map(|&v| v != 0).collect())?;
    let b = Mask::new(&[h, w], truth.iter().map(|&v| v != 0).collect())?;
    Ok(dice(&a, &b)?)
}

/// Runs `medsa demo`.
pub fn run(args: &DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let dir = args.data.clone().unwrap_or_else(default_data_dir);
    let cases = read_cases(&dir)?;
    let weights = WeightsArgs {
        weights: args.weights.clone(),
        preprocess: LitePreprocess::Official,
        adapters: None,
        device: args.device.clone(),
    };
    let model = model::load(&weights)?;
    let load_s = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    crate::say(format!(
        "{} ({}), official LiteMedSAM preprocessing, tight box, single mask, {}; loaded in {load_s:.2} s",
        model.detected.family,
        model.path.display(),
        model.backend_line
    ));
    crate::say(format!(
        "{:<27} {:<40} {:>7} {:>9} {:>7} {:>8} {:>7}",
        "case", "target", "Dice", "official", "diff", "pred IoU", "ms"
    ));
    let mut results = Vec::new();
    let mut worst: f64 = 0.0;
    let mut predictor = Predictor::new(&model.sam, model.backend.as_ref())?;
    // Cases on the same slice share one image embedding.
    let mut embeddings: Vec<(ImageU8, medsa_core::Tensor)> = Vec::new();
    for c in &cases {
        let img = read_gray(&dir.join(&c.image))?;
        let truth = read_gray(&dir.join(&c.mask))?;
        if (truth.width, truth.height) != (img.width, img.height) {
            bail!("{}: mask {} is not the image's size", c.case, c.mask);
        }
        let [x0, y0, x1, y1] = c.bbox;
        let prompt = Prompt::bbox(BoxPrompt { x0, y0, x1, y1 });
        let t = Instant::now();
        match embeddings.iter().find(|(i, _)| *i == img) {
            Some((_, e)) => predictor.set_embedding(e.clone(), (img.height, img.width))?,
            None => {
                predictor.set_image(&img).with_context(|| format!("case {}: image embedding", c.case))?;
                if let Some(e) = predictor.embedding() {
                    embeddings.push((img.clone(), e.clone()));
                }
            }
        }
        let mut seg =
            decode(&predictor, &prompt, MaskOutput::Single).with_context(|| format!("case {}", c.case))?;
        seg.ms = t.elapsed().as_secs_f64() * 1e3;
        let d = mask_dice(&seg.mask, &truth.data, (img.height, img.width))?;
        let diff = d - c.reference.dice;
        worst = worst.max(diff.abs());
        let mask_path = args.out.join(format!("{}_mask.png", c.case));
        save_mask_png(&mask_path, &seg.mask, img.width as u32, img.height as u32)
            .with_context(|| format!("writing {}", mask_path.display()))?;
        write_overlay(&args.out.join(format!("{}_overlay.png", c.case)), &img, &seg.mask, &prompt)?;
        crate::say(format!(
            "{:<27} {:<40} {:>7.4} {:>9.4} {:>+7.4} {:>8.4} {:>7.0}",
            c.case, c.target, d, c.reference.dice, diff, seg.iou, seg.ms
        ));
        results.push(serde_json::json!({
            "case": c.case, "target": c.target, "box": c.bbox,
            "dice": (d * 1e4).round() / 1e4, "reference_dice": c.reference.dice,
            "pred_iou": (seg.iou as f64 * 1e4).round() / 1e4, "reference_pred_iou": c.reference.pred_iou,
            "ms": seg.ms.round(),
        }));
    }
    let mean =
        |k: &str| results.iter().filter_map(|r| r[k].as_f64()).sum::<f64>() / results.len().max(1) as f64;
    crate::say(format!("{:<27} {:<40} {:>7.4} {:>9.4}", "mean", "", mean("dice"), mean("reference_dice")));
    let summary = serde_json::json!({
        "weights": model.path.display().to_string(),
        "preprocess": "official",
        "tolerance": TOLERANCE,
        "max_abs_diff": (worst * 1e4).round() / 1e4,
        "cases": results,
    });
    let json_path = args.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    crate::say(format!(
        "masks, overlays and results.json in {}; total {:.1} s",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    ));
    if worst > TOLERANCE {
        bail!("a case's Dice differs from the official LiteMedSAM figure by {worst:.4} (> {TOLERANCE})");
    }
    crate::say(format!(
        "every case within {TOLERANCE} Dice of the official LiteMedSAM figure (max |diff| {worst:.4})"
    ));
    Ok(())
}
