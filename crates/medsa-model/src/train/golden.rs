//! Parity runner for the golden training cases (format `medsa-golden-train/1`,
//! `../shared/golden/README-train.md`): step-0 gradients, the loss over a few Adam / AdamW
//! steps and the parameters after them, against PyTorch autograd.

use crate::golden::{
    depth_settings, encoder_input, float_in, floats_only, read_io, CaseReport, Check, Produced, Stored,
};
use crate::prompt::PromptBatch;
use crate::sam::Sam;
use crate::train::encoder::Checkpointing;
use crate::train::loss::LossConfig;
use crate::train::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::train::params::{trainable_shapes, visit_trainable, Trainable, TrainableRule};
use crate::train::step::{apply, forward_backward, StepConfig, StepInput};
use crate::weights::{read_safetensors, TensorMap};
use crate::{Error, LoadOptions, Result};
use medsa_core::{Backend, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The case names listed in `dir/index-train.json` (empty when the file is absent).
pub fn list_cases(dir: &Path) -> Result<Vec<String>> {
    if !dir.join("index-train.json").is_file() {
        return Ok(Vec::new());
    }
    crate::golden::list_index(dir, "index-train.json")
}

fn f(v: &Value, key: &str) -> Result<f32> {
    v[key]
        .as_f64()
        .map(|x| x as f32)
        .ok_or_else(|| Error::Config(format!("train config field `{key}` missing")))
}

/// The loss of a case's `train.loss`.
fn loss_config(l: &Value) -> Result<LossConfig> {
    Ok(LossConfig {
        bce_weight: f(l, "bce_weight")?,
        bce_pos_weight: f(l, "bce_pos_weight")?,
        dice_weight: f(l, "dice_weight")?,
        dice_squared_pred: l["dice_squared_pred"].as_bool().unwrap_or(true),
        dice_smooth: f(l, "dice_smooth")?,
        iou_weight: 0.0,
    })
}

/// The optimizer of a case's `train.optimizer`.
fn optimizer_config(o: &Value) -> Result<OptimizerConfig> {
    let betas =
        o["betas"].as_array().filter(|b| b.len() == 2).ok_or_else(|| Error::Config("`betas`".into()))?;
    Ok(OptimizerConfig {
        kind: match o["kind"].as_str() {
            Some("adam") => OptimizerKind::Adam,
            Some("adamw") => OptimizerKind::AdamW,
            other => return Err(Error::Config(format!("optimizer kind {other:?}"))),
        },
        lr: f(o, "lr")?,
        betas: (betas[0].as_f64().unwrap_or(0.9) as f32, betas[1].as_f64().unwrap_or(0.999) as f32),
        eps: f(o, "eps")?,
        weight_decay: f(o, "weight_decay")?,
    })
}

/// Runs one training case `dir/name` on `be` and compares every stored output by the rules of
/// README-train.md section 5.
pub fn run_case(dir: &Path, name: &str, be: &dyn Backend) -> CaseReport {
    let mut report =
        CaseReport { name: name.to_string(), checks: Vec::new(), error: None, outputs: BTreeMap::new() };
    match run_inner(dir, name, be) {
        Ok((produced, refs, lr_steps)) => {
            report.checks = compare_all(&produced, &refs, lr_steps);
            report.outputs = floats_only(produced);
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

type Refs = BTreeMap<String, Stored>;

fn run_inner(dir: &Path, name: &str, be: &dyn Backend) -> Result<(Produced, Refs, f64)> {
    let (io, cfg) = read_io(&dir.join(format!("{name}.io.safetensors")))?;
    let model_cfg = crate::golden::model_config(&cfg)?;
    let wfile = dir.join(format!("{name}.weights.safetensors"));
    let tensors: TensorMap = match cfg["kind"].as_str() {
        Some("train_medsa") => read_safetensors(&wfile)?,
        Some("train_lite_medsam") => {
            // LiteMedSAM's weights with the case's adapter tensors on top.
            let mut t = crate::lite::read_weights(&crate::lite::find_weights()?)?;
            if wfile.is_file() {
                t.extend(read_safetensors(&wfile)?);
            }
            t
        }
        other => return Err(Error::Config(format!("not a training case kind: {other:?}"))),
    };
    let mut model = Sam::from_tensors(&model_cfg, tensors, LoadOptions::default())?.model;
    let tc = &cfg["train"];
    let mut scratch = Produced::new();
    let x = encoder_input(&io, &cfg, &model_cfg, be, &mut scratch)?;
    let depth = depth_settings(&cfg)?;
    // The trainable set: the case's list, which the named rule must reproduce.
    let listed: Vec<String> = tc["trainable"]
        .as_array()
        .ok_or_else(|| Error::Config("train.trainable missing".into()))?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let shapes = trainable_shapes(&mut model)?;
    let rule: TrainableRule = tc["trainable_rule"].as_str().unwrap_or("").parse()?;
    let trainable = Trainable::select(&rule, &shapes)?;
    let ours: Vec<&str> = trainable.names().collect();
    let mut theirs: Vec<&str> = listed.iter().map(String::as_str).collect();
    theirs.sort_unstable();
    if ours != theirs {
        let extra: Vec<_> = ours.iter().filter(|n| !theirs.contains(n)).collect();
        let missing: Vec<_> = theirs.iter().filter(|n| !ours.contains(n)).collect();
        return Err(Error::Config(format!(
            "rule `{rule}` selects a different set than the case: extra {extra:?}, missing {missing:?}"
        )));
    }
    let loss_cfg = loss_config(&tc["loss"])?;
    let opt_cfg = optimizer_config(&tc["optimizer"])?;
    let steps = tc["steps"].as_u64().unwrap_or(1);
    let labels = match io.get("in.train.point_labels") {
        Some(Stored::Int(_, l)) => l.clone(),
        _ => Vec::new(),
    };
    let batch = PromptBatch {
        coords: float_in(&io, "in.train.point_coords").ok().cloned(),
        labels,
        boxes: float_in(&io, "in.train.boxes").ok().cloned(),
        masks: float_in(&io, "in.train.mask_input").ok().cloned(),
    };
    let target = float_in(&io, "in.target")?.clone();
    let mut out = Produced::new();
    let mut opt = Optimizer::new(opt_cfg);
    for step in 0..steps {
        let cfg = StepConfig {
            loss: &loss_cfg,
            trainable: &trainable,
            mask_index: 0,
            checkpointing: Checkpointing::Off,
            every_block: step == 0,
        };
        let r = forward_backward(be, &model, StepInput::Images(&x, depth), &batch, &target, cfg, step)?;
        out.insert(format!("loss.{step}"), Stored::Float(Tensor::new(vec![1], vec![r.loss as f32])?));
        if step == 0 {
            out.insert("logits".into(), Stored::Float(r.logits));
            if let Some(d) = r.d_embedding {
                out.insert("grad.image_embedding".into(), Stored::Float(d));
            }
            for (i, g) in r.d_blocks.into_iter().enumerate() {
                if let Some(g) = g {
                    out.insert(format!("grad.enc.blocks.{i}"), Stored::Float(g));
                }
            }
            for (n, g) in r.grads.iter() {
                out.insert(format!("grad.{n}"), Stored::Float(g.clone()));
            }
        }
        apply(&mut model, &mut opt, &r.grads, opt_cfg.lr, step)?;
    }
    visit_trainable(&mut model, &mut |n, p| {
        if trainable.contains(n) {
            out.insert(format!("after.{n}"), Stored::Float(p.clone()));
        }
        Ok(())
    })?;
    let refs: Refs = io.into_iter().filter(|(k, _)| k.starts_with("out.")).collect();
    Ok((out, refs, opt_cfg.lr as f64 * steps as f64))
}

/// The checks of README-train.md section 5; `lr_steps` = `lr · steps`.
fn compare_all(produced: &Produced, refs: &Refs, lr_steps: f64) -> Vec<Check> {
    let floats = |k: &str| match refs.get(k) {
        Some(Stored::Float(t)) => Some(t),
        _ => None,
    };
    // G: the largest max|ref| over every gradient.
    let g_all = refs
        .iter()
        .filter(|(k, _)| k.starts_with("out.grad."))
        .filter_map(|(k, _)| floats(k).map(|t| t.max_abs() as f64))
        .fold(0f64, f64::max);
    let mut checks = Vec::new();
    for (key, r) in refs {
        let Some(name) = key.strip_prefix("out.") else { continue };
        let Stored::Float(r) = r else { continue };
        let fail = |note: String| Check {
            name: name.into(),
            max_abs_err: f64::INFINITY,
            limit: 0.0,
            pass: false,
            note: Some(note),
        };
        let cand = match produced.get(name) {
            Some(Stored::Float(t)) => t,
            _ => {
                checks.push(fail("not produced".into()));
                continue;
            }
        };
        if cand.shape() != r.shape() {
            checks.push(fail(format!("shape {:?}, reference {:?}", cand.shape(), r.shape())));
            continue;
        }
        let scale = r.max_abs() as f64;
        let errs: Vec<f64> =
            cand.data().iter().zip(r.data()).map(|(a, b)| (*a as f64 - *b as f64).abs()).collect();
        if errs.iter().any(|e| !e.is_finite()) {
            checks.push(Check {
                name: name.into(),
                max_abs_err: f64::NAN,
                limit: 0.0,
                pass: false,
                note: Some("NaN or Inf".into()),
            });
            continue;
        }
        let err = errs.iter().copied().fold(0f64, f64::max);
        let check = if let Some(param) = name.strip_prefix("after.") {
            let bound = 2.0 * lr_steps + 1e-4 * scale;
            let close = 0.02 * lr_steps + 1e-4 * scale;
            let structurally_zero =
                floats(&format!("out.grad.{param}")).is_some_and(|g| (g.max_abs() as f64) <= 1e-12 * g_all);
            let frac = errs.iter().filter(|&&e| e <= close).count() as f64 / errs.len().max(1) as f64;
            let pass = err <= bound && (structurally_zero || frac >= 0.999);
            Check {
                name: name.into(),
                max_abs_err: err,
                limit: bound,
                pass,
                note: (!structurally_zero).then(|| format!("{:.2}% within {close:.2e}", 100.0 * frac)),
            }
        } else if name.starts_with("grad.") {
            let limit = 1e-4 * scale + 1e-6 * g_all;
            Check { name: name.into(), max_abs_err: err, limit, pass: err <= limit, note: None }
        } else {
            let limit = 1e-4 * scale;
            Check { name: name.into(), max_abs_err: err, limit, pass: err <= limit, note: None }
        };
        checks.push(check);
    }
    checks
}
