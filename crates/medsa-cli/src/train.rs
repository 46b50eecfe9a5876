//! `medsa train`: fine-tune adapters (or the mask decoder) on a manifest's data, with a
//! progress bar, validation every epoch, a log, curves, and best / last / resumable checkpoints
//! in the run folder (see `medsa_train::run`).

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use medsa_core::DepthGrouping;
use medsa_model::config::TinyVitAdapters;
use medsa_model::config::{
    DepthSettings, EncoderAdapters, EncoderConfig, HypConfig, ModelConfig, Preprocess, VitSize,
};
use medsa_model::detect::Family;
use medsa_model::train::encoder::Checkpointing;
use medsa_model::train::loss::LossConfig;
use medsa_model::train::optim::{LrSchedule, OptimizerConfig, OptimizerKind};
use medsa_model::train::params::TrainableRule;
use medsa_model::weights::{InitPolicy, TensorMap};
use medsa_model::{LoadOptions, Sam};
use medsa_train::augment::Augment;
use medsa_train::dataset::Dataset;
use medsa_train::prompts::PromptRule;
use medsa_train::run::{train, Observer, RunInfo, RunSummary, StepLog, TrainConfig};
use medsa_train::validate::SetResult;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Arguments of `medsa train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training manifest (JSON): volumes or 2-D cases, training and validation selections
    /// (format in the README, "Fine-tuning", and `examples/colin27-aal.json`).
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,

    /// Base checkpoint (.pth / .safetensors; default LiteMedSAM, found or fetched as for
    /// `medsa segment`), or `random:vit-b|vit-l|vit-h` for a Med-SA ViT with a random backbone.
    #[arg(long, value_name = "FILE|random:SIZE")]
    pub base: Option<String>,

    /// What trains: `paper` (every *Adapter*: the paper's PEFT), `official` (encoder adapters +
    /// the whole mask decoder, as the official train.py), `decoder` (the mask decoder only), or
    /// comma-separated globs over the checkpoint names.
    #[arg(long = "adapters", value_name = "RULE", default_value = "paper")]
    pub rule: String,

    /// Adapters to insert into the base, comma separated: `hyp` (HyP-Adpt + MLP / Image adapters
    /// in the decoder, zero-initialised up-projections), `encoder` (Space / MLP adapters in each
    /// TinyViT or ViT block), `none`. Default: `hyp` for the paper rule, none otherwise.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub insert: Vec<String>,

    /// HyP-Adpt bottleneck width r.
    #[arg(long, default_value_t = 8)]
    pub hyp_r: usize,

    /// Prompt simulation: `box:N` (tight box, each side grown by up to N px: MedSAM), `box`
    /// (= box:5), `click` (one random foreground click: official Med-SA), `iterative:N` (N
    /// error-region clicks with the previous mask fed back: SAM-Med2D).
    #[arg(long, default_value = "box:5")]
    pub prompt: String,

    /// Epochs.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,

    /// Samples per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// Learning rate (default 1e-3 for the paper rule, 1e-4 otherwise).
    #[arg(long)]
    pub lr: Option<f32>,

    /// Weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f32,

    /// Optimizer: adamw or adam.
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,

    /// Learning-rate schedule: `constant`, `cosine` (to 0 at the last step), `cosine:WARMUP`,
    /// or `step:EVERY:GAMMA` (in optimizer steps).
    #[arg(long, default_value = "constant")]
    pub schedule: String,

    /// Clip gradients to this global L2 norm.
    #[arg(long, value_name = "NORM")]
    pub clip: Option<f64>,

    /// BCE `pos_weight`.
    #[arg(long, default_value_t = 1.0)]
    pub pos_weight: f32,

    /// Weight of the IoU-head MSE term (LiteMedSAM trained with 1; the paper with 0).
    #[arg(long, default_value_t = 0.0)]
    pub iou_weight: f32,

    /// Seed of the data order, augmentation and prompts (and of fresh adapters).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Augment with random flips.
    #[arg(long)]
    pub flips: bool,

    /// Augment with random 90-degree rotations.
    #[arg(long)]
    pub rot90: bool,

    /// Augment with an intensity shift of up to this fraction of the 8-bit range (each shifted
    /// image is embedded afresh).
    #[arg(long, default_value_t = 0.0)]
    pub intensity_shift: f32,

    /// SD-Trans: train on chunks of D consecutive slices (Med-SA ViT with Depth adapters).
    #[arg(long, value_name = "D")]
    pub depth: Option<usize>,

    /// SD-Trans grouping: per-window (the paper) or official.
    #[arg(long, default_value = "per-window")]
    pub grouping: String,

    /// Input side of a random ViT base.
    #[arg(long, default_value_t = 1024)]
    pub image_size: usize,

    /// Recompute each encoder block in the backward (less memory, about one more forward).
    #[arg(long)]
    pub checkpointing: bool,

    /// Memory for cached image embeddings, MB.
    #[arg(long, default_value_t = 4096)]
    pub cache_mb: usize,

    /// Also keep the embeddings on disk here (reused by later runs on the same base and data).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Continue the run in --out from its state.safetensors (same settings).
    #[arg(long)]
    pub resume: bool,

    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Where the model runs (on CUDA the forward ops use the kernels; the backward ops run on
    /// the CPU reference for now).
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,

    /// Run folder (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

fn parse_schedule(s: &str, total: u64) -> Result<LrSchedule> {
    let parts: Vec<&str> = s.split(':').collect();
    Ok(match parts[..] {
        ["constant"] => LrSchedule::Constant,
        ["cosine"] => LrSchedule::WarmupCosine { warmup: 0, total, min_lr: 0.0 },
        ["cosine", w] => {
            LrSchedule::WarmupCosine { warmup: w.parse().context("cosine:WARMUP")?, total, min_lr: 0.0 }
        }
        ["step", e, g] => LrSchedule::Step {
            every: e.parse().context("step:EVERY:GAMMA")?,
            gamma: g.parse().context("step:EVERY:GAMMA")?,
        },
        _ => bail!("schedule `{s}`: expected constant, cosine, cosine:WARMUP or step:EVERY:GAMMA"),
    })
}

/// The base model with the inserted adapters, and what it is.
fn build_model(args: &TrainArgs, rule: &TrainableRule) -> Result<(Sam, RunInfo)> {
    let mut insert: Vec<String> = args.insert.iter().map(|s| s.trim().to_ascii_lowercase()).collect();
    if insert.is_empty() && *rule == TrainableRule::Paper {
        insert.push("hyp".into());
    }
    for i in &insert {
        if !["hyp", "encoder", "none"].contains(&i.as_str()) {
            bail!("--insert `{i}`: expected hyp, encoder or none");
        }
    }
    let want = |k: &str| insert.iter().any(|i| i == k);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Some(size) = args.base.as_deref().and_then(|b| b.strip_prefix("random:")) {
        let size = match size {
            "vit-b" => VitSize::B,
            "vit-l" => VitSize::L,
            "vit-h" => VitSize::H,
            _ => bail!("--base random:{size}: expected random:vit-b, random:vit-l or random:vit-h"),
        };
        let hyp = want("hyp").then(|| HypConfig::paper(256, args.hyp_r));
        let cfg = ModelConfig::medsa(size, args.image_size, hyp);
        let sam = Sam::from_tensors(
            &cfg,
            TensorMap::new(),
            LoadOptions { init: Some(InitPolicy::Random { seed: args.seed }) },
        )?
        .model;
        let info = RunInfo {
            base_sha256: format!("random-{size:?}-{}-seed{}", args.image_size, args.seed),
            base_file: "random".into(),
            command,
        };
        return Ok((sam, info));
    }
    let path = match &args.base {
        Some(p) => PathBuf::from(p),
        None => crate::model::lite_weights()?,
    };
    let tensors = crate::model::read_tensors(&path)?;
    let detected = crate::model::detect_tensors(&tensors, &path)?;
    let mut cfg = detected.config.clone();
    if detected.family == Family::LiteMedSam {
        cfg.preprocess = Preprocess::LiteMedsamOfficial;
    }
    if want("hyp") && cfg.decoder.hyp.is_none() {
        cfg.decoder.hyp = Some(HypConfig::paper(cfg.decoder.transformer_dim, args.hyp_r));
    }
    if want("encoder") {
        match &mut cfg.encoder {
            EncoderConfig::TinyVit(t) if t.adapters.is_none() => {
                t.adapters = Some(TinyVitAdapters::default())
            }
            EncoderConfig::Vit(v) if v.adapters.is_none() => {
                v.adapters = Some(EncoderAdapters::medsa(v.embed_dim))
            }
            _ => {}
        }
    }
    let loaded = Sam::from_tensors(
        &cfg,
        tensors,
        LoadOptions { init: Some(InitPolicy::Training { seed: args.seed }) },
    )
    .with_context(|| format!("building the model from {}", path.display()))?;
    if !loaded.initialised.is_empty() {
        eprintln!(
            "inserted {} fresh adapter tensors (up-projections zero: the model starts as the base)",
            loaded.initialised.len()
        );
    }
    let sha = medsa_io::fetch::sha256_file(&path).with_context(|| format!("hashing {}", path.display()))?;
    let base_file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok((loaded.model, RunInfo { base_sha256: sha, base_file, command }))
}

struct Bars {
    bar: ProgressBar,
    hidden: bool,
    recent: Vec<(f64, f64)>,
}

impl Bars {
    fn new(hidden: bool) -> Self {
        Bars { bar: ProgressBar::hidden(), hidden, recent: Vec::new() }
    }
}

impl Observer for Bars {
    fn phase(&mut self, name: &str, total: u64) {
        self.bar.finish_and_clear();
        self.recent.clear();
        self.bar = if self.hidden { ProgressBar::hidden() } else { ProgressBar::new(total) };
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
        ) {
            self.bar.set_style(style);
        }
        self.bar.set_prefix(name.to_string());
    }
    fn tick(&mut self) {
        self.bar.inc(1);
    }
    fn step(&mut self, s: &StepLog) {
        self.recent.push((s.loss, s.dice));
        let n = self.recent.len() as f64;
        let (l, d) = self.recent.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        self.bar.set_message(format!("loss {:.4} dice {:.3} (epoch mean)", l / n, d / n));
    }
    fn validated(&mut self, epoch: usize, results: &[SetResult]) {
        let line: Vec<String> = results.iter().map(|r| format!("{} {:.4}", r.name, r.mean_dice)).collect();
        self.bar.println(format!("validation after epoch {epoch}: mean Dice {}", line.join(", ")));
    }
    fn note(&mut self, msg: &str) {
        self.bar.println(msg);
    }
}

fn summary_table(s: &RunSummary) -> String {
    let mut out = String::new();
    let (Some(last), base) = (&s.last, &s.base) else {
        return out;
    };
    let _ = writeln!(out, "3-D Dice per label (and the mean 2-D Dice over prompted slices), base -> tuned:");
    let _ = writeln!(out, "{:<12} {:<10} {:<24} {:>8} {:>8}", "set", "source", "label", "base", "tuned");
    for set in last {
        let b = base.as_ref().and_then(|b| b.iter().find(|x| x.name == set.name));
        for l in &set.labels {
            let bd = b
                .and_then(|b| b.labels.iter().find(|x| x.source == l.source && x.label == l.label))
                .map(|x| x.dice);
            let _ = writeln!(
                out,
                "{:<12} {:<10} {:<24} {:>8} {:>8.4}",
                set.name,
                l.source,
                l.name,
                bd.map(|d| format!("{d:.4}")).unwrap_or_default(),
                l.dice
            );
        }
        let bm = b.map(|b| format!("{:.4}", b.mean_dice)).unwrap_or_default();
        let _ = writeln!(out, "{:<12} {:<10} {:<24} {:>8} {:>8.4}", set.name, "", "mean", bm, set.mean_dice);
        let bs = b.map(|b| format!("{:.4}", b.mean_slice_dice)).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:<24} {:>8} {:>8.4}",
            set.name, "", "mean 2-D (slices)", bs, set.mean_slice_dice
        );
    }
    out
}

/// Runs `medsa train` (module docs).
pub fn run(args: &TrainArgs) -> Result<()> {
    let rule: TrainableRule = args.rule.parse()?;
    let prompt: PromptRule = args.prompt.parse()?;
    let data = Dataset::load(&args.manifest)?;
    let (mut model, info) = build_model(args, &rule)?;
    let kind = match args.optimizer.as_str() {
        "adamw" => OptimizerKind::AdamW,
        "adam" => OptimizerKind::Adam,
        o => bail!("--optimizer {o}: expected adamw or adam"),
    };
    let lr = args.lr.unwrap_or(if rule == TrainableRule::Paper { 1e-3 } else { 1e-4 });
    let depth = args
        .depth
        .map(|d| -> Result<DepthSettings> {
            let grouping = match args.grouping.as_str() {
                "per-window" => DepthGrouping::PerWindow,
                "official" => DepthGrouping::Official,
                g => bail!("--grouping {g}: expected per-window or official"),
            };
            Ok(DepthSettings { depth: d, grouping })
        })
        .transpose()?;
    let depth_n = depth.map_or(1, |d| d.depth);
    let n_samples = data.samples(&data.train, depth_n)?.len() as u64;
    let total = n_samples.div_ceil(args.batch.max(1) as u64) * args.epochs as u64;
    let cfg = TrainConfig {
        rule,
        prompt,
        epochs: args.epochs,
        batch: args.batch,
        optimizer: OptimizerConfig {
            kind,
            lr,
            weight_decay: args.weight_decay,
            ..OptimizerConfig::default()
        },
        schedule: parse_schedule(&args.schedule, total)?,
        clip_norm: args.clip,
        loss: LossConfig {
            bce_pos_weight: args.pos_weight,
            iou_weight: args.iou_weight,
            ..LossConfig::default()
        },
        seed: args.seed,
        augment: Augment { flips: args.flips, rot90: args.rot90, intensity_shift: args.intensity_shift },
        depth,
        checkpointing: if args.checkpointing { Checkpointing::PerBlock } else { Checkpointing::Off },
        cache_bytes: args.cache_mb << 20,
        cache_dir: args.cache_dir.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let first = AtomicBool::new(true);
        ctrlc::set_handler(move || {
            if first.swap(false, Ordering::SeqCst) {
                eprintln!(
                    "\ninterrupted: saving a resumable state after this step (Ctrl-C again to quit now)"
                );
                stop.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let mut bars = Bars::new(args.no_progress);
    let be = args.device.open()?;
    // On the pool: the run's thousands of parallel ops then start without a hand-over each.
    let summary = medsa_core::par::on_pool(|| {
        train(&mut model, be.as_ref(), &data, &cfg, &info, &args.out, args.resume, &stop, &mut bars)
    })?;
    bars.bar.finish_and_clear();
    let mut text = summary_table(&summary);
    let _ = writeln!(
        text,
        "{} samples, {} steps{}; embedding {:.1} s, training {:.1} s, validation {:.1} s, total {:.1} s",
        summary.samples,
        summary.steps,
        if summary.interrupted { " (interrupted: continue with --resume)" } else { "" },
        summary.embedding_seconds,
        summary.training_seconds,
        summary.validation_seconds,
        summary.total_seconds
    );
    let _ =
        writeln!(text, "run folder: {} (best.safetensors for `medsa eval --adapters`)", args.out.display());
    crate::say(text.trim_end());
    Ok(())
}
