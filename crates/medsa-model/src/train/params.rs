//! Parameters by their official checkpoint names: visiting the ones training can update,
//! trainable sets by name rule, and the gradients of a backward pass.
//!
//! The names are the checkpoint keys the loaders read (`mask_decoder.transformer.layers.0.
//! self_attn.q_proj.weight`, `image_encoder.blocks.3.MLP_Adapter.D_fc1.bias`, ...), so a trainable
//! set, a gradient and an adapter checkpoint all speak the same language as the weights file.
//! Parameters with a backward pass: every mask-decoder parameter and, in the ViT encoder, every
//! block's norms, attention projections, MLP and Med-SA adapters, and the same in TinyViT's
//! attention blocks. Not trainable here: the prompt encoder (it runs without gradient, as in the
//! official code), the relative-position tables, the patch and position embeddings, the neck,
//! TinyViT's convolutional layer 0, folded `Conv2d_BN`s and attention biases.

use crate::decoder::{DecoderAttention, HyperPromptAdapter, MaskDecoder, OutputUpscaling};
use crate::encoder::ImageEncoder;
use crate::nn::{Adapter, LayerNorm, Linear, Mlp};
use crate::sam::{Encoder, Sam};
use crate::tiny_vit::{TinyVitEncoder, TinyVitStage};
use crate::{Error, Result};
use medsa_core::Tensor;
use std::collections::{BTreeMap, BTreeSet};

/// A visitor over named parameters.
pub type Visit<'a> = &'a mut dyn FnMut(&str, &mut Tensor) -> Result<()>;

fn linear(p: &str, l: &mut Linear, f: Visit<'_>) -> Result<()> {
    f(&format!("{p}.weight"), &mut l.w)?;
    if let Some(b) = &mut l.b {
        f(&format!("{p}.bias"), b)?;
    }
    Ok(())
}

fn norm(p: &str, n: &mut LayerNorm, f: Visit<'_>) -> Result<()> {
    f(&format!("{p}.weight"), &mut n.w)?;
    f(&format!("{p}.bias"), &mut n.b)
}

fn adapter(p: &str, a: &mut Adapter, f: Visit<'_>) -> Result<()> {
    linear(&format!("{p}.D_fc1"), &mut a.fc1, f)?;
    linear(&format!("{p}.D_fc2"), &mut a.fc2, f)
}

fn mlp(p: &str, m: &mut Mlp, f: Visit<'_>) -> Result<()> {
    for (i, l) in m.layers.iter_mut().enumerate() {
        linear(&format!("{p}.layers.{i}"), l, f)?;
    }
    Ok(())
}

fn attention(p: &str, a: &mut DecoderAttention, f: Visit<'_>) -> Result<()> {
    linear(&format!("{p}.q_proj"), &mut a.q, f)?;
    linear(&format!("{p}.k_proj"), &mut a.k, f)?;
    linear(&format!("{p}.v_proj"), &mut a.v, f)?;
    linear(&format!("{p}.out_proj"), &mut a.out, f)
}

/// Each row `i` of a stacked `[N, r]` tensor as `{p}.norms.{i}.{what}` `[r]`.
fn stacked_rows(p: &str, what: &str, t: &mut Tensor, f: Visit<'_>) -> Result<()> {
    let r = t.dim(1);
    for (i, row) in t.data_mut().chunks_exact_mut(r.max(1)).enumerate() {
        let mut v = Tensor::new(vec![r], row.to_vec())?;
        f(&format!("{p}.norms.{i}.{what}"), &mut v)?;
        row.copy_from_slice(v.data());
    }
    Ok(())
}

fn hyp(p: &str, h: &mut HyperPromptAdapter, f: Visit<'_>) -> Result<()> {
    linear(&format!("{p}.D_fc1"), &mut h.down, f)?;
    linear(&format!("{p}.gen.0"), &mut h.generator_hidden, f)?;
    linear(&format!("{p}.gen.2"), &mut h.generator_out, f)?;
    stacked_rows(p, "weight", &mut h.gamma, f)?;
    stacked_rows(p, "bias", &mut h.beta, f)?;
    linear(&format!("{p}.D_fc2"), &mut h.up, f)
}

/// Every mask-decoder parameter, in checkpoint order.
pub fn visit_decoder(dec: &mut MaskDecoder, f: Visit<'_>) -> Result<()> {
    let transformer = "mask_decoder.transformer";
    let (lin1, lin2) = dec.cfg.variant.mlp_keys();
    for (l, layer) in dec.layers.iter_mut().enumerate() {
        let lp = format!("{transformer}.layers.{l}");
        attention(&format!("{lp}.self_attn"), &mut layer.self_attn, f)?;
        norm(&format!("{lp}.norm1"), &mut layer.norm1, f)?;
        attention(&format!("{lp}.cross_attn_token_to_image"), &mut layer.cross_t2i, f)?;
        norm(&format!("{lp}.norm2"), &mut layer.norm2, f)?;
        linear(&format!("{lp}.{lin1}"), &mut layer.lin1, f)?;
        linear(&format!("{lp}.{lin2}"), &mut layer.lin2, f)?;
        norm(&format!("{lp}.norm3"), &mut layer.norm3, f)?;
        norm(&format!("{lp}.norm4"), &mut layer.norm4, f)?;
        attention(&format!("{lp}.cross_attn_image_to_token"), &mut layer.cross_i2t, f)?;
        if let Some(a) = &mut layer.adapters {
            hyp(&format!("{lp}.HyP_Adapter"), &mut a.hyp, f)?;
            adapter(&format!("{lp}.MLP_Adapter"), &mut a.mlp, f)?;
            adapter(&format!("{lp}.Image_Adapter"), &mut a.image, f)?;
        }
    }
    attention(&format!("{transformer}.final_attn_token_to_image"), &mut dec.final_attn, f)?;
    norm(&format!("{transformer}.norm_final_attn"), &mut dec.norm_final, f)?;
    let root = "mask_decoder";
    f(&format!("{root}.iou_token.weight"), &mut dec.iou_token)?;
    f(&format!("{root}.mask_tokens.weight"), &mut dec.mask_tokens)?;
    let [conv0, norm1, conv1] = OutputUpscaling::keys(root);
    let up = &mut dec.upscaling;
    f(&format!("{conv0}.weight"), &mut up.conv0.0)?;
    f(&format!("{conv0}.bias"), &mut up.conv0.1)?;
    norm(&norm1, &mut up.norm, f)?;
    f(&format!("{conv1}.weight"), &mut up.conv1.0)?;
    f(&format!("{conv1}.bias"), &mut up.conv1.1)?;
    for (i, m) in dec.hyper_mlps.iter_mut().enumerate() {
        mlp(&format!("{root}.output_hypernetworks_mlps.{i}"), m, f)?;
    }
    mlp(&format!("{root}.iou_prediction_head"), &mut dec.iou_head, f)
}

/// The ViT encoder's block parameters (norms, attention projections, MLP, adapters).
pub fn visit_vit(enc: &mut ImageEncoder, f: Visit<'_>) -> Result<()> {
    for (i, b) in enc.blocks.iter_mut().enumerate() {
        let p = format!("image_encoder.blocks.{i}");
        norm(&format!("{p}.norm1"), &mut b.norm1, f)?;
        linear(&format!("{p}.attn.qkv"), &mut b.attn.qkv, f)?;
        linear(&format!("{p}.attn.proj"), &mut b.attn.proj, f)?;
        norm(&format!("{p}.norm2"), &mut b.norm2, f)?;
        linear(&format!("{p}.mlp.lin1"), &mut b.lin1, f)?;
        linear(&format!("{p}.mlp.lin2"), &mut b.lin2, f)?;
        if let Some(a) = &mut b.adapters {
            adapter(&format!("{p}.Space_Adapter"), &mut a.space, f)?;
            adapter(&format!("{p}.MLP_Adapter"), &mut a.mlp, f)?;
            adapter(&format!("{p}.Depth_Adapter"), &mut a.depth, f)?;
        }
    }
    Ok(())
}

/// TinyViT's attention-block parameters (norms, projections, MLP, Med-SA adapters) from layer
/// 1 on; the convolutional layer 0, the folded `Conv2d_BN`s and the attention biases are not
/// trainable here.
pub fn visit_tiny_vit(enc: &mut TinyVitEncoder, f: Visit<'_>) -> Result<()> {
    for (l, layer) in enc.layers.iter_mut().enumerate() {
        let TinyVitStage::Attn(blocks) = &mut layer.stage else { continue };
        for (i, b) in blocks.iter_mut().enumerate() {
            let p = format!("image_encoder.layers.{l}.blocks.{i}");
            norm(&format!("{p}.attn.norm"), &mut b.attn.norm, f)?;
            linear(&format!("{p}.attn.qkv"), &mut b.attn.qkv, f)?;
            linear(&format!("{p}.attn.proj"), &mut b.attn.proj, f)?;
            norm(&format!("{p}.mlp.norm"), &mut b.mlp_norm, f)?;
            linear(&format!("{p}.mlp.fc1"), &mut b.fc1, f)?;
            linear(&format!("{p}.mlp.fc2"), &mut b.fc2, f)?;
            if let Some(a) = &mut b.adapters {
                adapter(&format!("{p}.Space_Adapter"), &mut a.space, f)?;
                adapter(&format!("{p}.MLP_Adapter"), &mut a.mlp, f)?;
            }
        }
    }
    Ok(())
}

/// Every parameter of `model` that training can update, by official name.
pub fn visit_trainable(model: &mut Sam, f: Visit<'_>) -> Result<()> {
    match &mut model.encoder {
        Encoder::Vit(e) => visit_vit(e, f)?,
        Encoder::TinyVit(e) => visit_tiny_vit(e, f)?,
    }
    visit_decoder(&mut model.decoder, f)
}

/// Names and shapes of the parameters [`visit_trainable`] visits.
pub fn trainable_shapes(model: &mut Sam) -> Result<Vec<(String, Vec<usize>)>> {
    let mut out = Vec::new();
    visit_trainable(model, &mut |n, t| {
        out.push((n.to_string(), t.shape().to_vec()));
        Ok(())
    })?;
    Ok(out)
}

/// Which parameters train: a named rule or glob patterns over the official names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrainableRule {
    /// The paper's parameter-efficient setting: every parameter whose name contains `Adapter`,
    /// in the encoder (Space, MLP, Depth) and the decoder (HyP, MLP, Image).
    Paper,
    /// What the official `train.py` trains: the encoder adapters plus the whole mask decoder.
    Official,
    /// The mask decoder only (the encoder is frozen and can run once per image).
    Decoder,
    /// Glob patterns (`*` any run of characters, `?` one character); every pattern must match
    /// at least one parameter.
    Patterns(Vec<String>),
}

impl std::str::FromStr for TrainableRule {
    type Err = Error;
    /// `paper`, `official`, `decoder`, or comma-separated glob patterns.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "paper" => TrainableRule::Paper,
            "official" => TrainableRule::Official,
            "decoder" => TrainableRule::Decoder,
            _ => {
                let pats: Vec<String> =
                    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
                if pats.is_empty() {
                    return Err(Error::Config(format!("empty trainable rule `{s}`")));
                }
                TrainableRule::Patterns(pats)
            }
        })
    }
}

impl std::fmt::Display for TrainableRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainableRule::Paper => f.write_str("paper"),
            TrainableRule::Official => f.write_str("official"),
            TrainableRule::Decoder => f.write_str("decoder"),
            TrainableRule::Patterns(p) => f.write_str(&p.join(",")),
        }
    }
}

/// `*` / `?` glob match of a whole name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// The set of trainable parameter names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trainable {
    names: BTreeSet<String>,
}

impl Trainable {
    /// Nothing trains (a forward-and-backward pass that only propagates input gradients).
    pub fn none() -> Self {
        Trainable::default()
    }

    /// The names `rule` selects among `params` (as from [`trainable_shapes`]). A pattern that
    /// matches nothing is [`Error::NoTrainableMatch`].
    pub fn select(rule: &TrainableRule, params: &[(String, Vec<usize>)]) -> Result<Self> {
        let names = params.iter().map(|(n, _)| n.as_str());
        let chosen: BTreeSet<String> = match rule {
            TrainableRule::Paper => names.filter(|n| n.contains("Adapter")).map(String::from).collect(),
            TrainableRule::Official => names
                .filter(|n| {
                    (n.starts_with("image_encoder.") && n.contains("Adapter"))
                        || n.starts_with("mask_decoder.")
                })
                .map(String::from)
                .collect(),
            TrainableRule::Decoder => {
                names.filter(|n| n.starts_with("mask_decoder.")).map(String::from).collect()
            }
            TrainableRule::Patterns(pats) => {
                let mut set = BTreeSet::new();
                for pat in pats {
                    let hits: Vec<&str> =
                        params.iter().map(|(n, _)| n.as_str()).filter(|n| glob_match(pat, n)).collect();
                    if hits.is_empty() {
                        return Err(Error::NoTrainableMatch { pattern: pat.clone() });
                    }
                    set.extend(hits.into_iter().map(String::from));
                }
                set
            }
        };
        if chosen.is_empty() {
            return Err(Error::NoTrainableMatch { pattern: rule.to_string() });
        }
        Ok(Trainable { names: chosen })
    }

    /// From an explicit list of names.
    pub fn from_names(names: impl IntoIterator<Item = String>) -> Self {
        Trainable { names: names.into_iter().collect() }
    }

    /// True if `name` trains.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// True if any name starting with `prefix` trains.
    pub fn any_under(&self, prefix: &str) -> bool {
        self.names.range(prefix.to_string()..).next().is_some_and(|n| n.starts_with(prefix))
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Number of trainable tensors.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True if nothing trains.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Gradients of a backward pass, by parameter name; a parameter used twice accumulates.
#[derive(Clone, Debug, Default)]
pub struct Grads {
    map: BTreeMap<String, Tensor>,
}

impl Grads {
    /// No gradients yet.
    pub fn new() -> Self {
        Grads::default()
    }

    /// Adds `g` to the gradient of `name`.
    pub fn add(&mut self, name: String, g: Tensor) -> Result<()> {
        match self.map.get_mut(&name) {
            Some(acc) => Ok(acc.add_assign(&g)?),
            None => {
                self.map.insert(name, g);
                Ok(())
            }
        }
    }

    /// The gradient of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }

    /// Mutable access (for clipping).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Tensor)> {
        self.map.iter_mut()
    }

    /// Every gradient, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.map.iter()
    }

    /// Number of gradients.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
