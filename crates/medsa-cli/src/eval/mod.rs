//! `medsa eval`: the paper's evaluation protocol (spec 7.2, 7.3 and 8) run end to end with
//! LiteMedSAM. This file holds the command's arguments ([`EvalArgs`]) and its entry point
//! ([`run`](fn@run)); the work is split by job:
//!
//! - [`dataset`]: loading and checking a 2-D manifest or a 3-D volume with its label map;
//! - [`prompt`]: the prompt types, the multimask policy, one prompt run on one slice;
//! - [`run`](mod@run): the 2-D and 3-D loops over cases, slices, structures and prompts;
//! - [`output`]: the report files and the summary on stdout.
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
//! Which predictions take SAM's three candidate masks is `--multimask`, decided in one place:
//! [`Multimask::wants`]. Masks are logits > 0 at the original resolution.
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

mod dataset;
mod output;
mod prompt;
mod run;

use anyhow::{bail, Context, Result};
use medsa_eval::report::{BootstrapConfig, Report};
use medsa_io::nifti::Axis;
use medsa_model::predictor::Predictor;
use std::path::PathBuf;

use crate::args::Window;
use crate::model::WeightsArgs;
use dataset::{load_manifest, load_volume, Dataset};
use output::RoundLog;
pub use prompt::{EvalPrompt, Multimask};

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
    #[arg(long, value_name = "FIRST-LAST", requires = "volume", value_parser = crate::args::parse_range)]
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
    /// each slice's box from the previous mask + 2 mm), propagate:extent (the chains kept inside
    /// the structure's slice range, the information keybox gets), propagate:mask (plus the
    /// previous logits as mask prompt), propagate:click (a click at the previous mask's
    /// interior); the options combine, e.g. propagate:extent:mask.
    #[arg(long = "prompt", value_name = "KIND", required = true, value_parser = parse_prompt)]
    pub prompts: Vec<EvalPrompt>,

    /// When to take SAM's multimask output (three candidates, the best predicted IoU kept)
    /// instead of the single mask: `auto`, `always` or `never`.
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

    /// 3D: keep every slice's image embedding in this folder (safetensors, written atomically),
    /// so a later `medsa eval` of the same volume, window, axis and model skips the encoder.
    /// The file names carry a fingerprint of all four; another model or window gets new files.
    #[arg(long, value_name = "DIR", requires = "volume")]
    pub cache_dir: Option<PathBuf>,

    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Output folder (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `--label-ids nonzero`: every non-zero voxel (no real label map uses this id).
const NONZERO: i64 = i64::MIN;

fn parse_label_id(s: &str) -> std::result::Result<i64, String> {
    match s.trim() {
        "nonzero" => Ok(NONZERO),
        t => t.parse().map_err(|_| format!("`{t}` is not a label id (an integer, or nonzero)")),
    }
}

fn parse_prompt(s: &str) -> std::result::Result<EvalPrompt, String> {
    s.parse()
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
        Dataset::Cases(cases) => (
            run::run_2d(args, &mut predictor, cases, &prompts_list, &mut rounds)?,
            dataset::describe_2d(args, cases),
        ),
        Dataset::Volume(v) => {
            let (recs, slice_md) = run::run_3d(args, &model, &mut predictor, v, &prompts_list, &mut rounds)?;
            extra_md = slice_md;
            (recs, dataset::describe_3d(args, v))
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cfg = BootstrapConfig { resamples: args.bootstrap as usize, confidence: 0.95, seed: args.seed };
    let report = Report::new(records, cfg)?;
    output::write_outputs(args, &report, &rounds, &model_line, &what, &extra_md, elapsed)?;
    output::print_summary(&report, &args.out)?;
    Ok(())
}

/// The prompt types in their first order of appearance, each once.
fn dedup(v: &[EvalPrompt]) -> Vec<EvalPrompt> {
    let mut out: Vec<EvalPrompt> = Vec::new();
    for p in v {
        if !out.contains(p) {
            out.push(*p);
        }
    }
    out
}
