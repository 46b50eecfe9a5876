//! `medsa eval`: the paper's evaluation protocol (spec 7.2, 7.3 and 8) run end to end with
//! LiteMedSAM.
//!
//! Two kinds of dataset:
//!
//! - **2D** (`--data MANIFEST`): the `cases2d` manifest of `../shared/data` — a JSON array (or
//!   an object with a `cases` array) of cases with `image` and `mask` (paths relative to the
//!   manifest, or absolute), an optional `case` id (default: the image's file stem) and an
//!   optional pixel spacing `pixel_spacing_mm` (alias `spacing`) as `[row, column]` in mm
//!   (default 1 mm, the PNG convention). Masks are foreground where the pixel is non-zero.
//! - **3D** (`--volume VOL --labels LABELS --label-ids 77,78 [--axis z]`): for each structure,
//!   every slice along `--axis` where the structure is present is segmented in 2D from prompts
//!   simulated on that slice's ground truth; the predictions are written back into a volume and
//!   Dice, IoU, HD95 and ASSD are computed in 3D with the NIfTI voxel spacing. Slices without
//!   the structure are predicted empty (the protocol only prompts where the target is, as a
//!   user would). Intensities go through `--window` (default: the MRI percentile window) to
//!   8-bit slices. Structure names come from `--label-names` or, when present, the atlas's
//!   `<labels>.txt` beside it (`aal.nii.txt`: `id name ...` per line).
//!
//! Prompts (`--prompt`, repeatable), simulated with `medsa-eval` from the ground truth, seeded
//! per case: the generator of case `i` is `case_rng(seed, i)` and is restarted for every
//! prompt type, so `1pt`, the first point of `3pt` and the first click of `iterative:N` are the
//! same pixel (3D: stream `(structure index << 32) | slice`).
//! - `1pt`, `3pt`: random positive points; `bbox0.5`, `bbox0.75` (any `bbox<τ>`): a box with IoU
//!   τ against the tight box; `jitterbox`: SAM's jittered box; `box`: the tight box itself
//!   (the prompt of `litemedsam_reference.json`);
//! - `iterative:N`: one random positive point, then N − 1 corrective clicks, each at the
//!   interior of the largest error region of the previous prediction
//!   ([`medsa_eval::prompts::next_click`]: positive in a missed region, negative in a false
//!   one), with all clicks so far and the previous low-res logits as the mask prompt. The final
//!   round is reported; per-round Dice / IoU go to `iterative_rounds.csv` and `report.md`.
//!
//! **Multimask policy** (as SAM): a prompt made of one click (`1pt`, the first round of
//! `iterative:N`) asks for SAM's three candidate masks and keeps the one with the highest
//! predicted IoU; every other prompt (several points, boxes, corrective rounds with a mask
//! prompt) asks for the single-mask output. Masks are logits > 0 at the original resolution.
//!
//! **Inference** goes through [`Predictor`] (one embedding per image, then the prompt encoder
//! and decoder per prompt) on the CPU reference backend. The model comes from `--weights` as for
//! `medsa segment` (default LiteMedSAM with the official LiteMedSAM inference convention that
//! `medsa-model` validates against `litemedsam_reference.json`: longest side to 256 with PIL's
//! BOX filter, min-max to [0, 1], zero pad; points and boxes scaled by 256 / max(H, W); low-res
//! logits cropped and resized back; `--preprocess package` for the package's pipeline).
//!
//! Outputs in `--out`: `report.md` (settings, summary with 95 % bootstrap intervals, per-case
//! table), `report.csv`, `report.json`, `dice_by_prompt.png`, `iterative_rounds.csv` (with an
//! `iterative:N` prompt), for 3D `slices.csv` (per-slice 2D Dice) and, with `--save-pred`, the
//! predicted masks (`pred_<label>_<prompt>.nii.gz` on the label map's grid). A summary table goes
//! to stdout, a progress bar to stderr.

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use medsa_eval::metrics::{self, SegMetrics};
use medsa_eval::prompts::{self, case_rng, next_click, PromptKind};
use medsa_eval::report::{BootstrapConfig, CaseRecord, Report};
use medsa_eval::Mask;
use medsa_io::image::{load_image, ColorMode};
use medsa_io::label_names::{label_names_beside, read_label_names};
use medsa_io::nifti::{extract_slice, insert_slice, Axis, Labels, Slice, Volume};
use medsa_model::predictor::{embed_image, BoxPrompt, Point, Prediction, Predictor, Prompt};
use medsa_model::preprocess::ImageU8;
use medsa_model::propagate::{Follow, PropagateOptions};
use serde::Deserialize;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::args::Window;
use crate::model::WeightsArgs;

/// Arguments of `medsa eval`.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("dataset").required(true).args(["data", "volume"])))]
pub struct EvalArgs {
    /// 2D dataset: a `cases2d`-style manifest.json (image, mask, optional pixel_spacing_mm).
    #[arg(long, value_name = "MANIFEST")]
    pub data: Option<PathBuf>,

    /// 3D dataset: the intensity volume (.nii / .nii.gz); needs --labels and --label-ids.
    #[arg(long, value_name = "VOL", requires_all = ["labels", "label_ids"])]
    pub volume: Option<PathBuf>,

    /// 3D: the label map on the volume's grid (.nii / .nii.gz).
    #[arg(long, value_name = "LABELS", requires = "volume")]
    pub labels: Option<PathBuf>,

    /// 3D: label ids of the structures to evaluate, comma separated (e.g. 77,78), or `nonzero`:
    /// every non-zero voxel of the label map as one structure (a binary mask, or a skull-stripped
    /// image as the brain mask).
    #[arg(long, value_name = "IDS", value_delimiter = ',', requires = "volume", value_parser = parse_label_id)]
    pub label_ids: Vec<i64>,

    /// 3D: slicing axis, x|y|z (or sagittal|coronal|axial).
    #[arg(long, default_value = "z", value_parser = crate::args::parse_axis)]
    pub axis: Axis,

    /// 3D: intensity window, mapped to 8-bit slices: mri (0.5-99.5 % of the non-zero voxels),
    /// ct-abdomen, ct-brain, ct-bone or LO,HI in Hounsfield units.
    #[arg(long, default_value = "mri", value_name = "WINDOW", value_parser = crate::args::parse_window)]
    pub window: Window,

    /// 3D: evaluate only the slices FIRST-LAST (inclusive) along --axis, e.g. a held-out slab:
    /// labels outside it are ignored, so the 3-D metrics are the slab's.
    #[arg(long, value_name = "FIRST-LAST", requires = "volume", value_parser = parse_range)]
    pub slices: Option<(usize, usize)>,

    /// 3D: structure names, `id name` per line (default: `<labels>.txt` beside the label map).
    #[arg(long, value_name = "FILE", requires = "volume")]
    pub label_names: Option<PathBuf>,

    /// The model (default LiteMedSAM, found or fetched as for `medsa segment`).
    #[command(flatten)]
    pub model: WeightsArgs,

    /// Prompt type, repeatable: 1pt, 3pt, bbox<τ> (bbox0.5, bbox0.75), jitterbox, box (tight
    /// box on every slice), iterative:N; for volumes also keybox (the largest cross-section's
    /// tight box reused on every slice of the structure), propagate (from that key slice outward,
    /// each slice's box from the previous mask + 3 mm), propagate:mask (plus the previous logits
    /// as mask prompt), propagate:click (a click at the previous mask's interior).
    #[arg(long = "prompt", value_name = "KIND", required = true, value_parser = parse_prompt)]
    pub prompts: Vec<EvalPrompt>,

    /// Multimask output: `auto` (SAM's rule: three candidates, best predicted IoU kept, for a
    /// one-click prompt; single mask otherwise), `always` or `never`.
    #[arg(long, value_enum, default_value_t = Multimask::Auto)]
    pub multimask: Multimask,

    /// Seed of the prompt simulation and of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Bootstrap resamples of the 95 % intervals.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub bootstrap: u64,

    /// Evaluate only the first N cases of a manifest.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// 3D: also write each predicted mask as NIfTI in the output folder.
    #[arg(long)]
    pub save_pred: bool,

    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Output folder (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// When to ask the decoder for SAM's three candidate masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Multimask {
    /// One-click prompts (`1pt`, the first round of `iterative:N`) only, as SAM.
    Auto,
    /// Every prediction without a mask prompt.
    Always,
    /// Never: always the single-mask output.
    Never,
}

/// One prompt type of the evaluation: a `medsa-eval` protocol or the tight box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EvalPrompt {
    /// A simulated prompt of `medsa-eval` (`1pt`, `3pt`, `bbox<τ>`, `jitterbox`, `iterative:N`).
    Sim(PromptKind),
    /// The tight box of the ground truth (`box`).
    TightBox,
    /// 3D: the tight box of the structure's largest cross-section (the key slice), reused
    /// unchanged on every slice of the structure's extent (`keybox`).
    KeyBox,
    /// 3D: from the key slice (largest cross-section, its tight box) outward, each slice
    /// prompted from the previous slice's mask ([`medsa_model::propagate`]); the options are
    /// written as suffixes: `propagate`, `:click`, `:mask`, `:clip`, `:margin=MM`, `:growth=R`,
    /// `:shrink=MM`, `:leak=R`.
    Propagate(PropagateOptions),
}

impl std::fmt::Display for EvalPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalPrompt::Sim(k) => write!(f, "{k}"),
            EvalPrompt::TightBox => write!(f, "box"),
            EvalPrompt::KeyBox => write!(f, "keybox"),
            EvalPrompt::Propagate(o) => {
                let d = PropagateOptions::default();
                write!(f, "propagate")?;
                if o.follow == Follow::Click {
                    write!(f, ":click")?;
                }
                if o.mask_feedback {
                    write!(f, ":mask")?;
                }
                if o.clip_to_box {
                    write!(f, ":clip")?;
                }
                if o.margin_mm != d.margin_mm {
                    write!(f, ":margin={}", o.margin_mm)?;
                }
                if o.max_shrink_mm != d.max_shrink_mm {
                    write!(f, ":shrink={}", o.max_shrink_mm)?;
                }
                if o.max_growth != d.max_growth {
                    write!(f, ":growth={}", o.max_growth)?;
                }
                if o.max_key_growth != d.max_key_growth {
                    write!(f, ":leak={}", o.max_key_growth)?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for EvalPrompt {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "box" | "tightbox" => Ok(EvalPrompt::TightBox),
            "keybox" => Ok(EvalPrompt::KeyBox),
            p if p == "propagate" || p.starts_with("propagate:") => {
                parse_propagate(p).map(EvalPrompt::Propagate)
            }
            _ => s.parse::<PromptKind>().map(EvalPrompt::Sim).map_err(|_| {
                format!(
                    "unknown prompt kind {s:?}: expected 1pt, 3pt, bbox<τ> with τ in (0, 1] (bbox0.5, \
                     bbox0.75), jitterbox, box, iterative:N with N >= 1, or for volumes keybox, propagate, \
                     propagate:mask, propagate:click"
                )
            }),
        }
    }
}

/// `propagate[:click][:mask][:clip][:margin=MM][:shrink=MM][:growth=R][:leak=R]`.
fn parse_propagate(s: &str) -> std::result::Result<PropagateOptions, String> {
    let mut o = PropagateOptions::default();
    for part in s.split(':').skip(1) {
        let num = |v: &str| -> std::result::Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{s}: `{v}` is not a number >= 0"))
        };
        match part.split_once('=') {
            None if part == "click" => o.follow = Follow::Click,
            None if part == "mask" => o.mask_feedback = true,
            None if part == "clip" => o.clip_to_box = true,
            Some(("margin", v)) => o.margin_mm = num(v)?,
            Some(("shrink", v)) => o.max_shrink_mm = num(v)?,
            Some(("growth", v)) => o.max_growth = num(v)?,
            Some(("leak", v)) => o.max_key_growth = num(v)?,
            _ => return Err(format!("{s}: unknown propagate option `{part}` (click, mask, clip, margin=MM, shrink=MM, growth=R, leak=R)")),
        }
    }
    Ok(o)
}

/// `--label-ids nonzero`: every non-zero voxel (no real label map uses this id).
const NONZERO: i64 = i64::MIN;

fn parse_label_id(s: &str) -> std::result::Result<i64, String> {
    match s.trim() {
        "nonzero" => Ok(NONZERO),
        t => t.parse().map_err(|_| format!("`{t}` is not a label id (an integer, or nonzero)")),
    }
}

fn parse_range(s: &str) -> std::result::Result<(usize, usize), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("`{s}`: expected FIRST-LAST, e.g. 64-73"))?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| format!("`{a}` is not a slice index"))?,
        b.trim().parse().map_err(|_| format!("`{b}` is not a slice index"))?,
    );
    if a > b {
        return Err(format!("`{s}`: FIRST must not be after LAST"));
    }
    Ok((a, b))
}

fn parse_prompt(s: &str) -> std::result::Result<EvalPrompt, String> {
    s.parse()
}

impl EvalPrompt {
    /// Whether SAM would ask for the multimask output (one click).
    fn multimask(&self) -> bool {
        matches!(self, EvalPrompt::Sim(PromptKind::OnePoint | PromptKind::Iterative { .. }))
    }

    /// Whether the rule works on a whole structure (3D) rather than slice by slice.
    fn volumetric(&self) -> bool {
        matches!(self, EvalPrompt::KeyBox | EvalPrompt::Propagate { .. })
    }

    fn clicks(&self) -> Option<usize> {
        match self {
            EvalPrompt::Sim(PromptKind::Iterative { clicks }) => Some(*clicks),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inference

fn to_model_point(p: &prompts::Point) -> Point {
    Point { x: p.x, y: p.y, foreground: p.is_positive() }
}

fn to_model_box(b: &prompts::BoxPrompt) -> BoxPrompt {
    BoxPrompt { x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1 }
}

/// Result of one prompt type on one 2D ground truth.
struct Outcome {
    /// Final prediction mask `[H, W]`.
    pred: Mask,
    /// Per-round (mask, clicks so far) for `iterative:N`; one entry otherwise.
    rounds: Vec<Round>,
}

struct Round {
    pred: Mask,
    click: Option<prompts::Point>,
    pred_iou: f32,
}

/// Runs one prompt type on one embedded image against ground truth `gt` (`[H, W]`).
/// The predictor must hold the image's embedding ([`Predictor::set_image`]).
fn run_prompt(
    predictor: &Predictor<'_>,
    gt: &Mask,
    kind: EvalPrompt,
    policy: Multimask,
    seed: u64,
    stream: u64,
) -> Result<Outcome> {
    let shape = gt.shape().to_vec();
    let mut rng = case_rng(seed, stream);
    let to_mask = |p: &Prediction, k: usize| Mask::new(&shape, p.mask(k)).map_err(anyhow::Error::from);
    let initial = match kind {
        EvalPrompt::TightBox => prompts::Prompt { points: Vec::new(), bbox: Some(prompts::tight_box(gt)?) },
        EvalPrompt::KeyBox | EvalPrompt::Propagate { .. } => bail!("{kind} needs a volume (--volume)"),
        EvalPrompt::Sim(k) => prompts::simulate(k, gt, &mut rng)?,
    };
    let mut prompt = Prompt {
        points: initial.points.iter().map(to_model_point).collect(),
        bbox: initial.bbox.as_ref().map(to_model_box),
        mask: None,
    };
    let multimask = match policy {
        Multimask::Auto => kind.multimask() && prompt.points.len() == 1 && prompt.bbox.is_none(),
        Multimask::Always => true,
        Multimask::Never => false,
    };
    let mut pred = predictor.predict(&prompt, multimask)?;
    let mut k = if multimask { pred.best() } else { 0 };
    let mut mask = to_mask(&pred, k)?;
    let mut rounds =
        vec![Round { pred: mask.clone(), click: initial.points.first().copied(), pred_iou: pred.iou[k] }];
    if let Some(n) = kind.clicks() {
        for _ in 1..n {
            let Some(click) = next_click(gt, &mask)? else {
                // Perfect prediction: nothing left to correct; later rounds keep it.
                rounds.push(Round { pred: mask.clone(), click: None, pred_iou: pred.iou[k] });
                continue;
            };
            prompt.points.push(to_model_point(&click));
            prompt.mask = Some(pred.low_res(k)?);
            pred = predictor.predict(&prompt, false)?;
            k = 0;
            mask = to_mask(&pred, k)?;
            rounds.push(Round { pred: mask.clone(), click: Some(click), pred_iou: pred.iou[k] });
        }
    }
    Ok(Outcome { pred: mask, rounds })
}

// ---------------------------------------------------------------------------------------------
// Datasets

#[derive(Deserialize)]
#[serde(untagged)]
enum ManifestFile {
    List(Vec<ManifestCase>),
    Object { cases: Vec<ManifestCase> },
}

#[derive(Deserialize)]
struct ManifestCase {
    case: Option<String>,
    image: String,
    mask: String,
    #[serde(default, alias = "spacing")]
    pixel_spacing_mm: Option<Vec<f64>>,
}

struct Case2d {
    id: String,
    image: ImageU8,
    gt: Mask,
    spacing: [f64; 2],
}

fn gray(path: &Path) -> Result<ImageU8> {
    let img =
        load_image(path, ColorMode::Gray).with_context(|| format!("reading image {}", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    ImageU8::new(w, h, 1, img.into_data()).with_context(|| format!("image {}", path.display()))
}

/// Reads and checks a 2D manifest and every image and mask it names.
fn load_manifest(path: &Path, limit: Option<usize>) -> Result<Vec<Case2d>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading manifest {}", path.display()))?;
    let file: ManifestFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "parsing manifest {}: expected a JSON array of cases (or {{\"cases\": [...]}}) with \
             \"image\" and \"mask\" paths",
            path.display()
        )
    })?;
    let list = match file {
        ManifestFile::List(v) | ManifestFile::Object { cases: v } => v,
    };
    if list.is_empty() {
        bail!("manifest {} lists no cases", path.display());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let n = limit.unwrap_or(list.len()).min(list.len());
    let mut out = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    for (i, c) in list.into_iter().take(n).enumerate() {
        let image_path = dir.join(&c.image);
        let mask_path = dir.join(&c.mask);
        let id = c.case.clone().unwrap_or_else(|| {
            image_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("case{i}"))
        });
        if !seen.insert(id.clone()) {
            bail!("manifest {}: case id {id:?} appears twice", path.display());
        }
        let image = gray(&image_path)?;
        let m = gray(&mask_path)?;
        if (m.width, m.height) != (image.width, image.height) {
            bail!(
                "case {id}: mask {} is {}x{} but image {} is {}x{}",
                mask_path.display(),
                m.width,
                m.height,
                image_path.display(),
                image.width,
                image.height
            );
        }
        let gt = Mask::new(&[m.height, m.width], m.data.iter().map(|&v| v > 0).collect())?;
        if !gt.any() {
            bail!("case {id}: mask {} is empty; prompts cannot be simulated", mask_path.display());
        }
        let spacing = match c.pixel_spacing_mm.as_deref() {
            None => [1.0, 1.0],
            Some(&[r, col]) if r.is_finite() && r > 0.0 && col.is_finite() && col > 0.0 => [r, col],
            Some(s) => bail!("case {id}: pixel_spacing_mm {s:?} is not two positive numbers [row, column]"),
        };
        out.push(Case2d { id, image, gt, spacing });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Running

fn progress(len: u64, hidden: bool, what: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
    {
        pb.set_style(style);
    }
    pb.set_prefix(what.to_string());
    pb
}

/// Per-round rows of the iterative protocol.
#[derive(Default)]
struct RoundLog {
    csv: String,
    /// (prompt, round) -> Dice values.
    dice: Vec<(String, usize, Vec<f64>)>,
}

impl RoundLog {
    fn push(&mut self, case: &str, structure: &str, prompt: &str, round: usize, r: &Round, m: &SegMetrics) {
        if self.csv.is_empty() {
            self.csv.push_str(
                "case,structure,prompt,round,click_x,click_y,click_label,pred_iou,dice,iou,hd95_mm\n",
            );
        }
        let (cx, cy, cl) = match r.click {
            Some(c) => (format!("{}", c.x), format!("{}", c.y), if c.is_positive() { "1" } else { "0" }),
            None => (String::new(), String::new(), ""),
        };
        let _ = writeln!(
            self.csv,
            "{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{}",
            csv_field(case),
            csv_field(structure),
            prompt,
            round,
            cx,
            cy,
            cl,
            r.pred_iou,
            m.dice,
            m.iou,
            m.hd95.map(|v| format!("{v:.6}")).unwrap_or_default()
        );
        match self.dice.iter_mut().find(|(p, k, _)| p == prompt && *k == round) {
            Some((_, _, v)) => v.push(m.dice),
            None => self.dice.push((prompt.to_string(), round, vec![m.dice])),
        }
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        if self.dice.is_empty() {
            return s;
        }
        let _ = writeln!(s, "| prompt | round (clicks) | n | mean Dice |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for (p, k, v) in &self.dice {
            let _ =
                writeln!(s, "| {p} | {k} | {} | {:.4} |", v.len(), v.iter().sum::<f64>() / v.len() as f64);
        }
        s
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Runs `medsa eval` (module docs).
pub fn run(args: &EvalArgs) -> Result<()> {
    // Check every input before the (slow) model load.
    let prompts_list = dedup(&args.prompts);
    let dataset = match (&args.data, &args.volume) {
        (Some(m), None) => Dataset::Cases(load_manifest(m, args.limit)?),
        (None, Some(v)) => Dataset::Volume(Box::new(load_volume(args, v)?)),
        (Some(_), Some(_)) => bail!("give either --data (2D manifest) or --volume (3D), not both"),
        (None, None) => {
            bail!("give --data MANIFEST (2D) or --volume VOL --labels LABELS --label-ids IDS (3D)")
        }
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;
    let model = crate::model::load(&args.model)?;
    let mut predictor =
        Predictor::new(&model.sam, model.backend.as_ref()).context("building the predictor")?;
    let model_line = format!(
        "- model: {} from `{}` (preprocessing {:?}), {}\n",
        model.detected.family,
        model.path.display(),
        model.sam.cfg.preprocess,
        model.backend_line
    );
    let started = std::time::Instant::now();
    let mut rounds = RoundLog::default();
    let mut extra_md = String::new();
    let (records, what) = match &dataset {
        Dataset::Cases(cases) => {
            (run_2d(args, &mut predictor, cases, &prompts_list, &mut rounds)?, describe_2d(args, cases))
        }
        Dataset::Volume(v) => {
            let (recs, slice_md) = run_3d(args, &model.sam, &mut predictor, v, &prompts_list, &mut rounds)?;
            extra_md = slice_md;
            (recs, describe_3d(args, v))
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cfg = BootstrapConfig { resamples: args.bootstrap as usize, confidence: 0.95, seed: args.seed };
    let report = Report::new(records, cfg)?;
    write_outputs(args, &report, &rounds, &model_line, &what, &extra_md, elapsed)?;
    print_summary(&report, &args.out)?;
    Ok(())
}

fn dedup(v: &[EvalPrompt]) -> Vec<EvalPrompt> {
    let mut out: Vec<EvalPrompt> = Vec::new();
    for p in v {
        if !out.contains(p) {
            out.push(*p);
        }
    }
    out
}

enum Dataset {
    Cases(Vec<Case2d>),
    Volume(Box<VolumeData>),
}

fn describe_2d(args: &EvalArgs, cases: &[Case2d]) -> String {
    let data = args.data.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
    let spacing: Vec<String> = {
        let mut v: Vec<String> =
            cases.iter().map(|c| format!("{} x {} mm", c.spacing[0], c.spacing[1])).collect();
        v.dedup();
        v
    };
    format!("- dataset: 2D manifest `{data}`, {} cases; pixel spacing {}\n", cases.len(), spacing.join(", "))
}

fn run_2d(
    args: &EvalArgs,
    predictor: &mut Predictor<'_>,
    cases: &[Case2d],
    prompts_list: &[EvalPrompt],
    rounds: &mut RoundLog,
) -> Result<Vec<CaseRecord>> {
    let pb = progress((cases.len() * prompts_list.len()) as u64, args.no_progress, "eval");
    let mut records = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        pb.set_message(format!("{}: embedding", case.id));
        predictor.set_image(&case.image).with_context(|| format!("case {}: image embedding", case.id))?;
        for kind in prompts_list {
            pb.set_message(format!("{} {kind}", case.id));
            let out = run_prompt(predictor, &case.gt, *kind, args.multimask, args.seed, i as u64)
                .with_context(|| format!("case {} prompt {kind}", case.id))?;
            let m = metrics::evaluate(&out.pred, &case.gt, &case.spacing)?;
            if kind.clicks().is_some() {
                for (r, round) in out.rounds.iter().enumerate() {
                    let rm = metrics::evaluate(&round.pred, &case.gt, &case.spacing)?;
                    rounds.push(&case.id, "fg", &kind.to_string(), r + 1, round, &rm);
                }
            }
            records.push(CaseRecord::new(case.id.clone(), "fg", kind.to_string(), &m));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(records)
}

struct VolumeData {
    /// 8-bit intensities, x fastest.
    image: Vec<u8>,
    /// Label values, x fastest.
    labels: Vec<i64>,
    /// The label map (grid and header for the written predictions).
    label_volume: Volume,
    dims: [usize; 3],
    spacing: [f64; 3],
    structures: Vec<(i64, String)>,
}

fn load_volume(args: &EvalArgs, vol_path: &Path) -> Result<VolumeData> {
    let labels_path = args.labels.as_deref().ok_or_else(|| anyhow!("--volume needs --labels"))?;
    if args.label_ids.is_empty() {
        bail!("--volume needs --label-ids (e.g. --label-ids 77)");
    }
    let vol = Volume::read(vol_path).with_context(|| format!("reading volume {}", vol_path.display()))?;
    let lab =
        Volume::read(labels_path).with_context(|| format!("reading label map {}", labels_path.display()))?;
    if vol.dims() != lab.dims() {
        bail!(
            "volume {} is {:?} but label map {} is {:?}",
            vol_path.display(),
            vol.dims(),
            labels_path.display(),
            lab.dims()
        );
    }
    let image = args.window.to_u8(vol.data()).with_context(|| format!("windowing {}", vol_path.display()))?;
    let mut labels: Vec<i64> = lab.data().iter().map(|&v| v.round() as i64).collect();
    if let Some((first, last)) = args.slices {
        let n = lab.dims()[args.axis.index()];
        if last >= n {
            bail!("--slices {first}-{last}: the volume has {n} slices along {:?}", args.axis);
        }
        let dims = lab.dims();
        for (i, l) in labels.iter_mut().enumerate() {
            let c = [i % dims[0], (i / dims[0]) % dims[1], i / (dims[0] * dims[1])];
            if !(first..=last).contains(&c[args.axis.index()]) {
                *l = 0;
            }
        }
    }
    let names_path = args.label_names.clone().or_else(|| label_names_beside(labels_path));
    let names = match &names_path {
        Some(p) => read_label_names(p).with_context(|| format!("reading label names {}", p.display()))?,
        None => Default::default(),
    };
    let mut structures = Vec::new();
    if args.label_ids.contains(&NONZERO) {
        if args.label_ids.len() > 1 {
            bail!("--label-ids nonzero stands alone (it makes the label map binary)");
        }
        labels.iter_mut().for_each(|l| *l = i64::from(*l != 0));
        if !labels.contains(&1) {
            bail!("{} has no non-zero voxel", labels_path.display());
        }
        structures.push((1, "non-zero".to_string()));
    }
    for &id in args.label_ids.iter().filter(|&&i| i != NONZERO) {
        if structures.iter().any(|(i, _)| *i == id) {
            continue;
        }
        if !labels.contains(&id) {
            bail!("label {id} does not occur in {}", labels_path.display());
        }
        let name = names.get(&id).map(|n| format!("{id} {n}")).unwrap_or_else(|| id.to_string());
        structures.push((id, name));
    }
    let s = lab.spacing();
    let spacing = [s[0] as f64, s[1] as f64, s[2] as f64];
    if spacing.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        bail!("label map {} has voxel spacing {s:?}; need positive pixdim", labels_path.display());
    }
    Ok(VolumeData { image, labels, dims: lab.dims(), spacing, structures, label_volume: lab })
}

fn describe_3d(args: &EvalArgs, v: &VolumeData) -> String {
    format!(
        "- dataset: 3D volume `{}`, labels `{}` ({} x {} x {} voxels, spacing {} x {} x {} mm), slicing axis {:?}{}, \
         window `{}`; structures: {}\n",
        args.volume.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
        args.labels.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
        v.dims[0],
        v.dims[1],
        v.dims[2],
        v.spacing[0],
        v.spacing[1],
        v.spacing[2],
        args.axis,
        args.slices.map(|(a, b)| format!(" (slices {a}-{b} only)")).unwrap_or_default(),
        args.window.describe(),
        v.structures.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
    )
}

fn run_3d(
    args: &EvalArgs,
    model: &medsa_model::Sam,
    predictor: &mut Predictor<'_>,
    v: &VolumeData,
    prompts_list: &[EvalPrompt],
    rounds: &mut RoundLog,
) -> Result<(Vec<CaseRecord>, String)> {
    let axis = args.axis;
    let n_slices = v.dims[axis.index()];
    let (col_ax, row_ax) = axis.in_plane();
    let spacing2 = [v.spacing[row_ax], v.spacing[col_ax]];
    let case = args
        .volume
        .as_deref()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().trim_end_matches(".gz").trim_end_matches(".nii").to_string())
        .unwrap_or_else(|| "volume".into());
    // Slices where at least one structure is present.
    let mut todo = Vec::new();
    for z in 0..n_slices {
        let sl = extract_slice(&v.labels, v.dims, axis, z)?;
        let present: Vec<usize> =
            (0..v.structures.len()).filter(|&s| sl.data.contains(&v.structures[s].0)).collect();
        if !present.is_empty() {
            todo.push((z, sl, present));
        }
    }
    let n = v.labels.len();
    // Predicted volumes per (structure, prompt), x fastest.
    let mut preds: Vec<Vec<Vec<u8>>> = vec![vec![vec![0u8; n]; prompts_list.len()]; v.structures.len()];
    let mut slice_csv = String::from("structure,prompt,slice,gt_pixels,pred_pixels,dice,iou\n");
    let mut slice_dice: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); prompts_list.len()]; v.structures.len()];
    // Every slice is embedded once, whichever rules visit it.
    let mut cache: std::collections::HashMap<usize, medsa_core::Tensor> = Default::default();
    let be = predictor.backend();
    let mut embedding = |z: usize| -> Result<medsa_core::Tensor> {
        if let Some(e) = cache.get(&z) {
            return Ok(e.clone());
        }
        let img = extract_slice(&v.image, v.dims, axis, z)?;
        let image = ImageU8::new(img.width, img.height, 1, img.data)?;
        let e = embed_image(model, be, &image).with_context(|| format!("slice {z}: image embedding"))?;
        cache.insert(z, e.clone());
        Ok(e)
    };
    let per_slice = prompts_list.iter().any(|k| !k.volumetric());
    let pb =
        progress(if per_slice { todo.len() as u64 } else { 0 }, args.no_progress || !per_slice, "slices");
    for (z, lab_slice, present) in todo.iter().filter(|_| per_slice) {
        pb.set_message(format!("slice {z}"));
        predictor.set_embedding(embedding(*z)?, (lab_slice.height, lab_slice.width))?;
        for &s in present {
            let (id, name) = &v.structures[s];
            let gt = Mask::new(
                &[lab_slice.height, lab_slice.width],
                lab_slice.data.iter().map(|l| l == id).collect(),
            )?;
            for (pi, kind) in prompts_list.iter().enumerate().filter(|(_, k)| !k.volumetric()) {
                let stream = ((s as u64) << 32) | *z as u64;
                let out = run_prompt(predictor, &gt, *kind, args.multimask, args.seed, stream)
                    .with_context(|| format!("structure {name}, slice {z}, prompt {kind}"))?;
                let m2 = metrics::evaluate(&out.pred, &gt, &spacing2)?;
                let _ = writeln!(
                    slice_csv,
                    "{},{kind},{z},{},{},{:.6},{:.6}",
                    csv_field(name),
                    gt.count(),
                    out.pred.count(),
                    m2.dice,
                    m2.iou
                );
                slice_dice[s][pi].push(m2.dice);
                if kind.clicks().is_some() {
                    for (r, round) in out.rounds.iter().enumerate() {
                        let rm = metrics::evaluate(&round.pred, &gt, &spacing2)?;
                        rounds.push(&format!("{case} slice {z}"), name, &kind.to_string(), r + 1, round, &rm);
                    }
                }
                let sl = Slice {
                    data: out.pred.data().iter().map(|&b| u8::from(b)).collect(),
                    width: lab_slice.width,
                    height: lab_slice.height,
                };
                insert_slice(&mut preds[s][pi], v.dims, axis, *z, &sl)?;
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    // The volume rules: per structure, from its largest cross-section.
    let (h, w) = (todo.first().map_or(0, |t| t.1.height), todo.first().map_or(0, |t| t.1.width));
    let mut propagation_md = String::new();
    for (pi, kind) in prompts_list.iter().enumerate().filter(|(_, k)| k.volumetric()) {
        for (s, (id, name)) in v.structures.iter().enumerate() {
            let gts: Vec<(usize, Mask)> = todo
                .iter()
                .filter(|t| t.2.contains(&s))
                .map(|(z, sl, _)| {
                    Ok((*z, Mask::new(&[sl.height, sl.width], sl.data.iter().map(|l| l == id).collect())?))
                })
                .collect::<Result<_>>()?;
            let Some((key, key_gt)) = gts.iter().max_by_key(|(z, m)| (m.count(), std::cmp::Reverse(*z)))
            else {
                continue;
            };
            let tb = prompts::tight_box(key_gt)?;
            let key_box = BoxPrompt { x0: tb.x0, y0: tb.y0, x1: tb.x1, y1: tb.y1 };
            let masks: std::collections::BTreeMap<usize, Vec<bool>> = match kind {
                EvalPrompt::KeyBox => {
                    let (first, last) = (gts[0].0, gts[gts.len() - 1].0);
                    let mut out = std::collections::BTreeMap::new();
                    for z in first..=last {
                        predictor.set_embedding(embedding(z)?, (h, w))?;
                        out.insert(z, predictor.predict(&Prompt::bbox(key_box), false)?.mask(0));
                    }
                    out
                }
                EvalPrompt::Propagate(opts) => {
                    let click = opts.follow == Follow::Click;
                    let key_prompt = if click {
                        let (x, y) =
                            prompts::interior_point(key_gt)?.ok_or_else(|| anyhow!("empty key slice"))?;
                        Prompt::points(vec![Point::foreground(x as f32, y as f32)])
                    } else {
                        Prompt::bbox(key_box)
                    };
                    // One click: SAM's three candidates, best predicted IoU kept (as for `1pt`).
                    let mut seg =
                        medsa_model::propagate::ModelSegmenter::new(model, be, (h, w), click, |z| {
                            embedding(z).map_err(|e| medsa_model::Error::Volume(format!("{e:#}")))
                        })?;
                    let keys = std::collections::BTreeMap::from([(*key, key_prompt)]);
                    let p =
                        medsa_model::propagate::propagate(&mut seg, n_slices, (h, w), spacing2, &keys, opts)
                            .with_context(|| format!("structure {name}, {kind}"))?;
                    let (lo, hi) = (
                        p.masks.keys().next().copied().unwrap_or(*key),
                        p.masks.keys().last().copied().unwrap_or(*key),
                    );
                    let ends: Vec<String> = p
                        .ends
                        .iter()
                        .map(|e| {
                            format!(
                                "{} at {}: {}",
                                if e.direction < 0 { "down" } else { "up" },
                                e.last,
                                e.stop
                            )
                        })
                        .collect();
                    let _ = writeln!(
                        propagation_md,
                        "| {name} | {kind} | {key} | {lo}-{hi} | {}-{} | {} |",
                        gts[0].0,
                        gts[gts.len() - 1].0,
                        ends.join("; ")
                    );
                    p.masks
                }
                _ => unreachable!("only volume rules here"),
            };
            for (z, m) in &masks {
                let sl = Slice { data: m.iter().map(|&b| u8::from(b)).collect(), width: w, height: h };
                insert_slice(&mut preds[s][pi], v.dims, axis, *z, &sl)?;
            }
            for (z, gt) in &gts {
                let pred = match masks.get(z) {
                    Some(m) => Mask::new(&[h, w], m.clone())?,
                    None => Mask::zeros(&[h, w])?,
                };
                let m2 = metrics::evaluate(&pred, gt, &spacing2)?;
                let _ = writeln!(
                    slice_csv,
                    "{},{kind},{z},{},{},{:.6},{:.6}",
                    csv_field(name),
                    gt.count(),
                    pred.count(),
                    m2.dice,
                    m2.iou
                );
                slice_dice[s][pi].push(m2.dice);
            }
        }
    }
    std::fs::write(args.out.join("slices.csv"), &slice_csv)
        .with_context(|| format!("writing {}", args.out.join("slices.csv").display()))?;
    // 3D metrics on the native grid: Mask shape [nz, ny, nx] (x fastest), spacing [sz, sy, sx].
    let shape = [v.dims[2], v.dims[1], v.dims[0]];
    let spacing3 = [v.spacing[2], v.spacing[1], v.spacing[0]];
    let mut records = Vec::new();
    let mut md = String::new();
    let _ = writeln!(md, "| structure | prompt | slices prompted | mean 2D Dice per slice |");
    let _ = writeln!(md, "|---|---|---:|---:|");
    for (s, (id, name)) in v.structures.iter().enumerate() {
        let gt = Mask::new(&shape, v.labels.iter().map(|l| l == id).collect())?;
        for (pi, kind) in prompts_list.iter().enumerate() {
            let pred = Mask::new(&shape, preds[s][pi].iter().map(|&b| b != 0).collect())?;
            let m = metrics::evaluate(&pred, &gt, &spacing3)?;
            records.push(CaseRecord::new(case.clone(), name.clone(), kind.to_string(), &m));
            let d = &slice_dice[s][pi];
            let _ = writeln!(
                md,
                "| {name} | {kind} | {} | {:.4} |",
                d.len(),
                if d.is_empty() { f64::NAN } else { d.iter().sum::<f64>() / d.len() as f64 }
            );
            if args.save_pred {
                let file = args.out.join(format!("pred_{id}_{}.nii.gz", kind.to_string().replace(':', "-")));
                v.label_volume
                    .write_labels(&file, Labels::U8(&preds[s][pi]))
                    .with_context(|| format!("writing {}", file.display()))?;
            }
        }
    }
    if !propagation_md.is_empty() {
        let _ = writeln!(md, "\n## Propagation\n\n| structure | rule | key slice | slices written | true extent | chain ends |\n|---|---|---:|---|---|---|");
        md.push_str(&propagation_md);
    }
    Ok((records, md))
}

fn write_outputs(
    args: &EvalArgs,
    report: &Report,
    rounds: &RoundLog,
    model_line: &str,
    what: &str,
    extra_md: &str,
    elapsed: f64,
) -> Result<()> {
    let out = &args.out;
    let mut md = String::new();
    let _ = writeln!(md, "# medsa eval\n");
    let _ = write!(md, "{what}{model_line}");
    let _ = writeln!(
        md,
        "- prompts: {}; seed {}",
        dedup(&args.prompts).iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "),
        args.seed
    );
    let _ = writeln!(
        md,
        "- inference: mask = logits > 0 at the original size; {}; `iterative:N` reports round N, each \
         correction at the interior of the largest error region with all clicks so far and the previous \
         low-res logits as mask prompt (single mask)",
        match args.multimask {
            Multimask::Auto =>
                "multimask (best predicted IoU of 3) for one-click prompts (`1pt`, first round of \
                                `iterative:N`), single mask otherwise (SAM's rule)",
            Multimask::Always => "multimask (best predicted IoU of 3) for every prompt without a mask prompt",
            Multimask::Never => "single-mask output for every prompt",
        }
    );
    let _ = writeln!(
        md,
        "- metrics: Dice, IoU, HD95 / ASSD in mm (surface = mask minus its erosion); HD95 undefined \
         when exactly one mask is empty (left out of the mean, counted as excluded); mean [95 % percentile \
         bootstrap CI, {} resamples]",
        report.bootstrap.resamples
    );
    let _ = writeln!(md, "- wall time: {elapsed:.1} s\n");
    md.push_str(&report.to_markdown());
    if !rounds.dice.is_empty() {
        let _ = writeln!(md, "\n## Iterative protocol: mean Dice per round\n");
        md.push_str(&rounds.markdown());
    }
    if !extra_md.is_empty() {
        let _ = writeln!(md, "\n## Per-slice 2D Dice (slices where the structure is present)\n");
        md.push_str(extra_md);
    }
    let w = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    w("report.md", md.as_bytes())?;
    w("report.csv", report.to_csv().as_bytes())?;
    w("report.json", report.to_json()?.as_bytes())?;
    if !rounds.csv.is_empty() {
        w("iterative_rounds.csv", rounds.csv.as_bytes())?;
    }
    let chart = out.join("dice_by_prompt.png");
    report.write_chart(&chart).with_context(|| format!("writing {}", chart.display()))?;
    Ok(())
}

fn print_summary(report: &Report, out: &Path) -> Result<()> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:<22} {:>4}  {:<26} {:<26} {:<24}",
        "prompt", "structure", "n", "Dice [95% CI]", "IoU [95% CI]", "HD95 mm [95% CI]"
    );
    for m in &report.summaries {
        let ci = |c: &medsa_eval::MeanCi, p: usize| format!("{:.p$} [{:.p$}, {:.p$}]", c.mean, c.lo, c.hi);
        let _ = writeln!(
            s,
            "{:<14} {:<22} {:>4}  {:<26} {:<26} {:<24}",
            m.prompt,
            m.structure,
            m.n,
            ci(&m.dice, 4),
            ci(&m.iou, 4),
            m.hd95.as_ref().map(|c| ci(c, 2)).unwrap_or_else(|| "n/a".into())
        );
    }
    let _ = writeln!(s, "report: {}", out.join("report.md").display());
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    lock.write_all(s.as_bytes()).context("writing to stdout")?;
    Ok(())
}
