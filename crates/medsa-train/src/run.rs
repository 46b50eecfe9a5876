//! The training loop and its run folder.
//!
//! Each epoch visits the training samples in an order shuffled by `(seed, epoch)`, in batches.
//! Per sample, a random stream keyed by `(seed, epoch, position)` draws the symmetry, the
//! intensity shift and the prompt, so a run is a pure function of its settings and data (the
//! same seed gives bit-identical parameters on the same machine and thread count) and a resumed
//! run continues exactly. With the encoder frozen its embeddings come from the
//! [`EmbeddingCache`]; with trainable encoder adapters every step runs the encoder forward with
//! its tape and the backward through it.
//!
//! The loss is taken on the decoder's first mask token (SAM's single-mask output) against the
//! sample's mask in the model's frame at the low-res size (nearest resize of the original mask
//! into the resized, zero-padded input, then to `4G x 4G`).
//!
//! Run folder (`out`): `settings.json` (settings, base model, command), `split.json` (the
//! training sources and sample count, the validation sets as resolved), `log.jsonl` (one line
//! per step and per validation), `curves.png` (loss and validation Dice), `best.safetensors`
//! and `last.safetensors` (adapter checkpoints, [`medsa_model::adapters`]), `state.safetensors`
//! (exact resume, [`crate::state`]) and `summary.json`. Validation runs before the first step
//! (the base model's scores) and after every epoch; `best` is the epoch with the highest mean
//! Dice on the first validation set.

use crate::augment::{shift_intensity, Augment, Dihedral};
use crate::cache::{EmbeddingCache, Key};
use crate::curves::{History, SetResultRow};
use crate::dataset::{Dataset, Sample};
use crate::prompts::{first_prompt, PromptRule};
use crate::state::RunState;
use crate::validate::{validate, SetResult};
use crate::{Error, Result};
use medsa_core::{Backend, Tensor};
use medsa_eval::prompts::{case_rng, next_click};
use medsa_eval::Mask;
use medsa_model::adapters::{self, AdapterMeta};
use medsa_model::config::DepthSettings;
use medsa_model::nn::Trace;
use medsa_model::predictor::{
    embed_image, encode_prompts, image_frame, preprocess_image, MaskOutput, Point, Predictor,
};
use medsa_model::preprocess::{Frame, ImageU8};
use medsa_model::prompt::PromptBatch;
use medsa_model::train::encoder::Checkpointing;
use medsa_model::train::loss::LossConfig;
use medsa_model::train::optim::{clip_grad_norm, LrSchedule, Optimizer, OptimizerConfig};
use medsa_model::train::params::{trainable_shapes, Trainable, TrainableRule};
use medsa_model::train::step::{apply, forward_backward, StepConfig, StepInput};
use medsa_model::weights::write_atomically;
use medsa_model::Sam;
use rand::seq::SliceRandom;
use serde::Serialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Which parameters train.
    pub rule: TrainableRule,
    /// How samples are prompted.
    pub prompt: PromptRule,
    /// Epochs.
    pub epochs: usize,
    /// Samples per optimizer step (1 with SD-Trans depth: a step is one chunk of D slices).
    pub batch: usize,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule over optimizer steps.
    pub schedule: LrSchedule,
    /// Clip gradients to this global L2 norm.
    pub clip_norm: Option<f64>,
    /// Loss.
    pub loss: LossConfig,
    /// Seed of the data order, augmentation and prompts.
    pub seed: u64,
    /// Augmentation.
    pub augment: Augment,
    /// SD-Trans: chunks of D consecutive slices through the depth branch.
    pub depth: Option<DepthSettings>,
    /// Activation checkpointing in a trainable ViT encoder.
    pub checkpointing: Checkpointing,
    /// Memory bound of the embedding cache, bytes.
    pub cache_bytes: usize,
    /// Disk folder of the embedding cache.
    pub cache_dir: Option<PathBuf>,
}

impl TrainConfig {
    /// The settings a resume must share (everything but the epoch count and the cache), as JSON.
    pub fn settings(&self, data: &Dataset) -> serde_json::Value {
        let o = &self.optimizer;
        serde_json::json!({
            "trainable_rule": self.rule.to_string(),
            "prompt": self.prompt.to_string(),
            "batch": self.batch,
            "optimizer": {"kind": format!("{:?}", o.kind), "lr": o.lr, "betas": [o.betas.0, o.betas.1],
                          "eps": o.eps, "weight_decay": o.weight_decay},
            "schedule": format!("{:?}", self.schedule),
            "clip_norm": self.clip_norm,
            "loss": format!("{:?}", self.loss),
            "seed": self.seed,
            "augment": self.augment,
            "depth": self.depth.map(|d| format!("{d:?}")),
            "checkpointing": format!("{:?}", self.checkpointing),
            "data": {"sources": data.sources.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
                     "axis": format!("{:?}", data.axis), "train": data.train, "validation": data.validation},
        })
    }
}

/// What the run is of, for the run folder and checkpoint headers.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    /// sha256 of the base checkpoint file.
    pub base_sha256: String,
    /// The base checkpoint's file name.
    pub base_file: String,
    /// The command line (or another description of how the run was started).
    pub command: String,
}

/// One optimizer step, as logged.
#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    /// 0-based optimizer step.
    pub step: u64,
    /// 0-based epoch.
    pub epoch: usize,
    /// Loss.
    pub loss: f64,
    /// Dice of the low-res prediction against the target (logits > 0).
    pub dice: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Wall time of the step, s.
    pub seconds: f64,
}

/// Progress callbacks (the command line draws bars from them; the library prints nothing).
pub trait Observer {
    /// A phase begins (`embedding`, `epoch 2/3`, `validating`), with its number of units.
    fn phase(&mut self, _name: &str, _total: u64) {}
    /// One unit of the current phase is done.
    fn tick(&mut self) {}
    /// An optimizer step finished.
    fn step(&mut self, _log: &StepLog) {}
    /// Validation after `epoch` (0 = before training) finished.
    fn validated(&mut self, _epoch: usize, _results: &[SetResult]) {}
    /// Something worth telling the user (skipped sources, resumed state ...).
    fn note(&mut self, _msg: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Optimizer steps taken in all (including before a resume).
    pub steps: u64,
    /// Stopped early by the stop flag (the state is saved; `--resume` continues).
    pub interrupted: bool,
    /// Training samples.
    pub samples: usize,
    /// Selected training sources without any sample (empty masks), skipped.
    pub skipped_sources: Vec<String>,
    /// Validation of the base model (absent on a resumed run).
    pub base: Option<Vec<SetResult>>,
    /// The last validation.
    pub last: Option<Vec<SetResult>>,
    /// Best mean Dice on the first validation set and its step.
    pub best: Option<(f64, u64)>,
    /// Seconds computing embeddings before training.
    pub embedding_seconds: f64,
    /// Seconds in optimizer steps.
    pub training_seconds: f64,
    /// Seconds in validation.
    pub validation_seconds: f64,
    /// Wall time of the whole run, s.
    pub total_seconds: f64,
}

/// One sample made ready for the step.
struct Prepared {
    /// Embeddings `[D, C, G, G]` (frozen encoder) or preprocessed images `[D, 3, S, S]`.
    input: Tensor,
    prompts: PromptBatch,
    target: Tensor,
}

struct Trainer<'a> {
    model: &'a mut Sam,
    be: &'a dyn Backend,
    data: &'a Dataset,
    cfg: &'a TrainConfig,
    trainable: Trainable,
    train_encoder: bool,
    cache: EmbeddingCache,
    dense_pe: Tensor, // the prompt encoder's dense PE: frozen, computed once
    low_res: usize,
}

/// The mask `[H0, W0]` in the model's frame at `side x side`: nearest resize into the resized
/// content, zero in the padding.
fn target_in_frame(gt: &Mask, frame: &Frame, side: usize) -> Result<Vec<f32>> {
    let (h0, w0) = (gt.height()?, gt.width()?);
    let (h, w) = frame.input;
    let s = frame.img_size as f64;
    let mut out = vec![0f32; side * side];
    for i in 0..side {
        let fy = ((i as f64 + 0.5) * s / side as f64) as usize;
        if fy >= h {
            continue;
        }
        let oy = (((fy as f64 + 0.5) * h0 as f64 / h as f64) as usize).min(h0 - 1);
        for j in 0..side {
            let fx = ((j as f64 + 0.5) * s / side as f64) as usize;
            if fx >= w {
                continue;
            }
            let ox = (((fx as f64 + 0.5) * w0 as f64 / w as f64) as usize).min(w0 - 1);
            out[i * side + j] = f32::from(u8::from(gt.data()[oy * w0 + ox]));
        }
    }
    Ok(out)
}

fn dice_of(logits: &Tensor, target: &Tensor) -> f64 {
    let (mut inter, mut sum) = (0usize, 0usize);
    for (&l, &t) in logits.data().iter().zip(target.data()) {
        let (p, t) = (l > 0.0, t > 0.5);
        inter += usize::from(p && t);
        sum += usize::from(p) + usize::from(t);
    }
    if sum == 0 {
        1.0
    } else {
        2.0 * inter as f64 / sum as f64
    }
}

impl Trainer<'_> {
    fn depth(&self) -> usize {
        self.cfg.depth.map_or(1, |d| d.depth)
    }

    fn embedding(&mut self, key: Key, img: &ImageU8) -> Result<Tensor> {
        let (model, be) = (&*self.model, self.be);
        self.cache.get_or_compute(key, || Ok(embed_image(model, be, img)?))
    }

    /// The sample's slices with its draws applied, ready for the step.
    fn prepare(&mut self, s: Sample, stream: u64, epoch: usize) -> Result<Prepared> {
        let mut rng = case_rng(self.cfg.seed, ((epoch as u64) << 40) | stream);
        let sym = self.cfg.augment.draw(&mut rng);
        let shift = self.cfg.augment.draw_shift(&mut rng);
        let src = &self.data.sources[s.source];
        let (mut inputs, mut prompts, mut target) = (Vec::new(), Vec::new(), Vec::new());
        for z in s.slice..s.slice + self.depth() {
            let sl = src.slice(self.data.axis, z)?;
            let (w0, h0) = (sl.image.width, sl.image.height);
            let mut img = sym.apply_image(&sl.image)?;
            let (w, h) = sym.out_size(w0, h0);
            let gt =
                Mask::new(&[h, w], sym.apply(&sl.labels, w0, h0).iter().map(|&l| l == s.label).collect())?;
            if shift != 0 {
                img = shift_intensity(&img, shift);
            }
            let frame = image_frame(self.model, (h, w));
            // The encoder input `[1, 3, S, S]` with a trainable encoder, else the embedding
            // (cached unless the image was shifted): no preprocessing for a cached one.
            let (input, embedded) = if self.train_encoder {
                (preprocess_image(self.model, self.be, &img)?.0, false)
            } else if shift != 0 {
                (embed_image(self.model, self.be, &img)?, true)
            } else {
                (self.embedding(Key { source: s.source, slice: z, symmetry: sym }, &img)?, true)
            };
            let mut prompt = first_prompt(self.cfg.prompt, &gt, &mut rng)?;
            if let PromptRule::Iterative { rounds } = self.cfg.prompt {
                if rounds > 1 {
                    let e = if embedded {
                        input.clone()
                    } else {
                        self.model.embed(self.be, &input, None, &mut Trace::disabled())?
                    };
                    let mut predictor = Predictor::new(self.model, self.be)?;
                    predictor.set_embedding(e, (h, w))?;
                    for _ in 1..rounds {
                        let pred = predictor.predict(&prompt, MaskOutput::Single)?;
                        let mask = Mask::new(&[h, w], pred.mask(0))?;
                        let Some(click) = next_click(&gt, &mask)? else { break };
                        prompt.points.push(Point { x: click.x, y: click.y, foreground: click.is_positive() });
                        prompt.mask = Some(pred.low_res(0)?);
                    }
                }
            }
            prompts.push(encode_prompts(self.model, &frame, std::slice::from_ref(&prompt))?);
            target.extend(target_in_frame(&gt, &frame, self.low_res)?);
            inputs.push(input);
        }
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let n = inputs.len();
        Ok(Prepared {
            input: Tensor::cat(&refs, 0)?,
            prompts: PromptBatch::concat(&prompts)?,
            target: Tensor::new(vec![n, 1, self.low_res, self.low_res], target)?,
        })
    }

    fn step(
        &mut self,
        batch: &[(Sample, u64)],
        epoch: usize,
        step: u64,
        opt: &mut Optimizer,
    ) -> Result<StepLog> {
        let t = Instant::now();
        let mut prepared: Vec<Prepared> =
            batch.iter().map(|&(s, k)| self.prepare(s, k, epoch)).collect::<Result<_>>()?;
        let input = Tensor::cat(&prepared.iter().map(|p| &p.input).collect::<Vec<_>>(), 0)?;
        let target = Tensor::cat(&prepared.iter().map(|p| &p.target).collect::<Vec<_>>(), 0)?;
        let parts: Vec<PromptBatch> = prepared.iter_mut().map(|p| std::mem::take(&mut p.prompts)).collect();
        let prompts = PromptBatch::concat(&parts)?;
        let step_input = if self.train_encoder {
            StepInput::Images(&input, self.cfg.depth)
        } else {
            StepInput::Embeddings { embeddings: &input, dense_pe: &self.dense_pe }
        };
        let sc = StepConfig {
            loss: &self.cfg.loss,
            trainable: &self.trainable,
            mask_index: 0,
            checkpointing: self.cfg.checkpointing,
            every_block: false,
        };
        let mut out = forward_backward(self.be, self.model, step_input, &prompts, &target, sc, step)?;
        if !out.loss.is_finite() {
            return Err(medsa_model::Error::NonFinite { what: "loss".into(), step }.into());
        }
        if let Some(max) = self.cfg.clip_norm {
            let mut gs: Vec<&mut Tensor> = out.grads.iter_mut().map(|(_, g)| g).collect();
            clip_grad_norm(&mut gs, max);
        }
        let lr = self.cfg.schedule.lr(self.cfg.optimizer.lr as f64, step);
        apply(self.model, opt, &out.grads, lr as f32, step)?;
        if self.train_encoder {
            self.cache.clear();
        }
        Ok(StepLog {
            step,
            epoch,
            loss: out.loss,
            dice: dice_of(&out.logits, &target),
            lr,
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    fn validate_all(&mut self, obs: &mut dyn Observer) -> Result<Vec<SetResult>> {
        if self.train_encoder {
            self.cache.clear();
        }
        let mut out = Vec::new();
        let (model, be, data) = (&*self.model, self.be, self.data);
        let cache = &mut self.cache;
        obs.phase("validating", data.validation.len() as u64);
        for set in &data.validation {
            let mut emb = |si: usize, z: usize| -> Result<Tensor> {
                let img = data.sources[si].slice(data.axis, z)?.image;
                cache.get_or_compute(Key { source: si, slice: z, symmetry: Dihedral(0) }, || {
                    Ok(embed_image(model, be, &img)?)
                })
            };
            out.push(validate(model, be, data, set, &mut emb)?);
            obs.tick();
        }
        Ok(out)
    }
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::File { path: path.into(), source }
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Config(e.to_string()))?;
    Ok(write_atomically(path, text.as_bytes())?)
}

/// Trains `model` on `data` (module docs), writing the run folder `out`. With `resume`, the
/// run continues from `out/state.safetensors`, which must come from the same settings and base.
/// The loop checks `stop` after every step; when it is set the state is saved and the run
/// returns with `interrupted`.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut Sam,
    be: &dyn Backend,
    data: &Dataset,
    cfg: &TrainConfig,
    info: &RunInfo,
    out: &Path,
    resume: bool,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<RunSummary> {
    let started = Instant::now();
    cfg.loss.validate()?;
    cfg.augment.validate()?;
    if cfg.epochs == 0 || cfg.batch == 0 {
        return Err(Error::Config(format!(
            "epochs {} and batch {} must be at least 1",
            cfg.epochs, cfg.batch
        )));
    }
    if cfg.depth.is_some() && cfg.batch != 1 {
        return Err(Error::Config("with SD-Trans depth a step is one chunk of D slices: use batch 1".into()));
    }
    let trainable = Trainable::select(&cfg.rule, &trainable_shapes(model)?)?;
    if trainable.is_empty() {
        return Err(Error::Config(format!("trainable rule `{}` selects nothing in this model", cfg.rule)));
    }
    let train_encoder = trainable.any_under("image_encoder.");
    if cfg.depth.is_some() && !train_encoder {
        return Err(Error::Config(
            "SD-Trans chunks need a trainable encoder (the depth branch is in it)".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(file_err(out))?;
    let depth = cfg.depth.map_or(1, |d| d.depth);
    let samples = data.samples(&data.train, depth)?;
    let used: std::collections::BTreeSet<usize> = samples.iter().map(|s| s.source).collect();
    let skipped_sources: Vec<String> = data
        .sources
        .iter()
        .enumerate()
        .filter(|(i, s)| data.train.takes_source(&s.id) && !used.contains(i))
        .map(|(_, s)| s.id.clone())
        .collect();
    if !skipped_sources.is_empty() {
        obs.note(&format!(
            "{} training source(s) have no sample (empty mask or no selected label) and are skipped: {}",
            skipped_sources.len(),
            skipped_sources.join(", ")
        ));
    }
    if samples.is_empty() {
        return Err(Error::Config(
            "the training selection has no sample (no selected label on any selected slice)".into(),
        ));
    }
    let settings = cfg.settings(data).to_string();
    let fingerprint = {
        // What an embedding depends on: the base weights, the encoder and the preprocessing.
        let c = &model.cfg;
        let mut bytes =
            format!("{}|{:?}|{:?}|{:?}|", info.base_sha256, c.encoder, c.preprocess, c.prompt).into_bytes();
        for s in &data.sources {
            bytes.extend(s.id.as_bytes());
            bytes.extend(match &s.pixels {
                crate::dataset::Pixels::Volume { image, .. } => image,
                crate::dataset::Pixels::Image { image, .. } => &image.data,
            });
        }
        medsa_io::fetch::sha256_hex(&bytes)[..16].to_string()
    };
    let cache_dir = if train_encoder { None } else { cfg.cache_dir.clone().map(|d| (d, fingerprint)) };
    let low_res = 4 * model.cfg.prompt.image_embedding_size.0;
    let mut opt = Optimizer::new(cfg.optimizer);
    let state_path = out.join("state.safetensors");
    let (mut step, mut best) = (0u64, None);
    let mut history = History::default();
    let log_path = out.join("log.jsonl");
    let mut kept_log = String::new();
    if resume {
        let st = RunState::load(&state_path)?;
        if st.settings != settings {
            return Err(Error::Run {
                path: state_path.clone(),
                msg: "the run was started with other settings or data (see settings.json); start a new run folder".into(),
            });
        }
        if st.base_sha256 != info.base_sha256 {
            return Err(Error::Run {
                path: state_path.clone(),
                msg: format!(
                    "the run's base model has sha256 {}, this one {}",
                    st.base_sha256, info.base_sha256
                ),
            });
        }
        st.restore(model, &trainable, &mut opt, &state_path)?;
        (step, best) = (st.step, st.best);
        // Keep the log up to the saved step (a crash may have logged steps after it).
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if v["step"].as_u64().is_some_and(|s| s < step)
                || (v["kind"] == "validation" && v["step"].as_u64() == Some(step))
            {
                if v["kind"] == "step" {
                    history
                        .loss
                        .push((v["step"].as_f64().unwrap_or(0.0), v["loss"].as_f64().unwrap_or(f64::NAN)));
                } else if let Ok(r) = serde_json::from_value::<Vec<SetResultRow>>(v["sets"].clone()) {
                    let e = v["epoch"].as_u64().unwrap_or(0) as usize;
                    for s in r {
                        history.add_dice(&s.name, e, s.mean_dice);
                    }
                }
                kept_log.push_str(line);
                kept_log.push('\n');
            }
        }
        obs.note(&format!("resumed at step {step} from {}", state_path.display()));
    }
    write_json(
        &out.join("settings.json"),
        &serde_json::json!({"settings": cfg.settings(data), "epochs": cfg.epochs, "base_sha256": info.base_sha256,
            "base_file": info.base_file, "model": format!("{:?}", model.cfg), "command": info.command,
            "medsa_version": env!("CARGO_PKG_VERSION"), "trainable": trainable.names().collect::<Vec<_>>()}),
    )?;
    write_json(
        &out.join("split.json"),
        &serde_json::json!({"axis": format!("{:?}", data.axis), "train": {"sources": data.source_ids(&data.train),
            "selection": data.train, "samples": samples.len(), "skipped_sources": skipped_sources},
            "validation": data.validation.iter().map(|v| serde_json::json!({"name": v.name,
                "sources": data.source_ids(&v.select), "selection": v.select})).collect::<Vec<_>>()}),
    )?;
    let mut log = std::fs::File::create(&log_path).map_err(file_err(&log_path))?;
    log.write_all(kept_log.as_bytes()).map_err(file_err(&log_path))?;
    let mut t = Trainer {
        dense_pe: model.prompt.dense_pe(be)?,
        model,
        be,
        data,
        cfg,
        trainable,
        train_encoder,
        cache: EmbeddingCache::new(cfg.cache_bytes, cache_dir)?,
        low_res,
    };
    // Embeddings of every slice the run will use, once (frozen encoder only).
    let t_embed = Instant::now();
    if !train_encoder {
        let mut todo: std::collections::BTreeSet<(usize, usize)> =
            samples.iter().flat_map(|s| (s.slice..s.slice + depth).map(move |z| (s.source, z))).collect();
        for v in &data.validation {
            for (si, src) in data.sources.iter().enumerate().filter(|(_, s)| v.select.takes_source(&s.id)) {
                for (z, labels) in src.labels_per_slice(data.axis)?.iter().enumerate() {
                    let wanted = |l: &i64| v.select.label_ids.as_ref().is_none_or(|ids| ids.contains(l));
                    if v.select.takes_slice(z) && labels.iter().any(wanted) {
                        todo.insert((si, z));
                    }
                }
            }
        }
        obs.phase("embedding", todo.len() as u64);
        for (si, z) in todo {
            let img = data.sources[si].slice(data.axis, z)?.image;
            t.embedding(Key { source: si, slice: z, symmetry: Dihedral(0) }, &img)?;
            obs.tick();
        }
    }
    let embedding_seconds = t_embed.elapsed().as_secs_f64();
    let mut validation_seconds = 0.0;
    let log_line = |log: &mut std::fs::File, v: serde_json::Value| -> Result<()> {
        writeln!(log, "{v}").and_then(|_| log.flush()).map_err(file_err(&log_path))
    };
    let meta = |t: &Trainer<'_>, step: u64, metrics: serde_json::Value| AdapterMeta {
        base_sha256: info.base_sha256.clone(),
        base_file: info.base_file.clone(),
        trainable_rule: cfg.rule.to_string(),
        step,
        model: format!("{:?}", t.model.cfg),
        metrics,
    };
    let mut base = None;
    let mut last = None;
    if step == 0 && !data.validation.is_empty() {
        let tv = Instant::now();
        let r = t.validate_all(obs)?;
        validation_seconds += tv.elapsed().as_secs_f64();
        log_line(&mut log, serde_json::json!({"kind": "validation", "epoch": 0, "step": 0, "sets": r}))?;
        obs.validated(0, &r);
        history.add_validation(0, &r);
        base = Some(r);
    }
    let n = samples.len();
    let per_epoch = n.div_ceil(cfg.batch) as u64;
    let total = per_epoch * cfg.epochs as u64;
    let mut order: Option<(usize, Vec<usize>)> = None;
    let mut training_seconds = 0.0;
    let mut interrupted = false;
    while step < total {
        let epoch = (step / per_epoch) as usize;
        let pos = (step % per_epoch) as usize;
        if pos == 0 || order.is_none() {
            obs.phase(&format!("epoch {}/{}", epoch + 1, cfg.epochs), per_epoch);
        }
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut o: Vec<usize> = (0..n).collect();
            o.shuffle(&mut case_rng(cfg.seed ^ 0x6f72_6465_7273, epoch as u64));
            order = Some((epoch, o));
        }
        let o = order.as_ref().map(|(_, o)| o.as_slice()).unwrap_or_default();
        let batch: Vec<(Sample, u64)> =
            (pos * cfg.batch..((pos + 1) * cfg.batch).min(n)).map(|k| (samples[o[k]], k as u64)).collect();
        let s = t.step(&batch, epoch, step, &mut opt)?;
        training_seconds += s.seconds;
        log_line(
            &mut log,
            serde_json::json!({"kind": "step", "step": s.step, "epoch": s.epoch, "loss": s.loss,
            "dice": s.dice, "lr": s.lr, "seconds": s.seconds}),
        )?;
        history.loss.push((s.step as f64, s.loss));
        obs.step(&s);
        obs.tick();
        step += 1;
        let epoch_done = step % per_epoch == 0;
        if epoch_done && !data.validation.is_empty() {
            let tv = Instant::now();
            let r = t.validate_all(obs)?;
            validation_seconds += tv.elapsed().as_secs_f64();
            log_line(
                &mut log,
                serde_json::json!({"kind": "validation", "epoch": epoch + 1, "step": step, "sets": r}),
            )?;
            obs.validated(epoch + 1, &r);
            history.add_validation(epoch + 1, &r);
            let score = r[0].mean_dice;
            let metrics = serde_json::json!({"epoch": epoch + 1,
                "validation": r.iter().map(|s| (s.name.clone(), s.mean_dice)).collect::<std::collections::BTreeMap<_, _>>()});
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, step));
                adapters::save(
                    &out.join("best.safetensors"),
                    t.model,
                    &t.trainable,
                    &meta(&t, step, metrics),
                )?;
            }
            last = Some(r);
        }
        let stopping = stop.load(Ordering::Relaxed);
        if epoch_done || stopping || step == total {
            let m = serde_json::json!({"epoch": step as f64 / per_epoch as f64});
            adapters::save(&out.join("last.safetensors"), t.model, &t.trainable, &meta(&t, step, m))?;
            RunState::capture(t.model, &t.trainable, &opt, step, &settings, &info.base_sha256, best)?
                .save(&state_path)?;
            history.write(&out.join("curves.png"))?;
        }
        if stopping && step < total {
            interrupted = true;
            break;
        }
    }
    let summary = RunSummary {
        steps: step,
        interrupted,
        samples: n,
        skipped_sources,
        base,
        last,
        best,
        embedding_seconds,
        training_seconds,
        validation_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_frame_and_leave_the_padding_empty() {
        // A 4 (rows) x 8 (columns) mask whose right half is set, in a longest-side frame of 16:
        // content 8 x 16, padding below.
        let gt = Mask::from_fn(&[4, 8], |i| i[1] >= 4).unwrap();
        let frame = Frame::longest_side((4, 8), 16);
        assert_eq!(frame.input, (8, 16));
        let t = target_in_frame(&gt, &frame, 16).unwrap();
        for i in 0..16 {
            for j in 0..16 {
                let want = i < 8 && j >= 8;
                assert_eq!(t[i * 16 + j] == 1.0, want, "({i}, {j})");
            }
        }
        // At a quarter of the frame, each target pixel samples the frame's pixel under its centre.
        let q = target_in_frame(&gt, &frame, 4).unwrap();
        assert_eq!(q, vec![0., 0., 1., 1., 0., 0., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0.]);
    }
}
