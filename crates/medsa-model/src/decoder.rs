//! SAM's mask decoder with its two-way transformer (spec 5.1, 5.2), the official Med-SA variant
//! (5.3), and the paper's decoder adapters: HyP-Adpt, MLP_Adapter and Image_Adapter (5.4).

use crate::config::{DecoderConfig, DecoderVariant, HypConfig};
use crate::nn::{Adapter, LayerNorm, Linear, Mlp, Trace};
use crate::prompt::PromptEmbeddings;
use crate::weights::WeightLoader;
use crate::{Error, Result};
use medsa_core::{Backend, Tensor};

/// The decoder's multi-head attention with optional internal downsampling (spec 5.2).
#[derive(Clone, Debug)]
pub struct DecoderAttention {
    /// Query projection D → D/r.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection D/r → D.
    pub out: Linear,
    /// Heads.
    pub num_heads: usize,
}

impl DecoderAttention {
    fn load(wl: &mut WeightLoader, p: &str, d: usize, heads: usize, down: usize) -> Self {
        let inner = d / down;
        DecoderAttention {
            q: Linear::load(wl, &format!("{p}.q_proj"), d, inner, true),
            k: Linear::load(wl, &format!("{p}.k_proj"), d, inner, true),
            v: Linear::load(wl, &format!("{p}.v_proj"), d, inner, true),
            out: Linear::load(wl, &format!("{p}.out_proj"), inner, d, true),
            num_heads: heads,
        }
    }

    /// `q [B, Nq, D]`, `k, v [B, Nk, D]` → `[B, Nq, D]`.
    pub fn forward(&self, be: &dyn Backend, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let nh = self.num_heads;
        let split = |t: Tensor| -> Result<Tensor> {
            let (b, n, c) = (t.dim(0), t.dim(1), t.dim(2));
            Ok(t.reshape(vec![b, n, nh, c / nh])?.permute(&[0, 2, 1, 3])?.reshape(vec![b * nh, n, c / nh])?)
        };
        let (b, nq) = (q.dim(0), q.dim(1));
        let qh = split(self.q.forward(be, q)?)?;
        let kh = split(self.k.forward(be, k)?)?;
        let vh = split(self.v.forward(be, v)?)?;
        let c = qh.dim(2);
        let o = be.attention(&qh, &kh, &vh, 1.0 / (c as f32).sqrt(), None)?;
        let o = o.reshape(vec![b, nh, nq, c])?.permute(&[0, 2, 1, 3])?.reshape(vec![b, nq, nh * c])?;
        self.out.forward(be, &o)
    }
}

/// HyP-Adpt (spec 5.4): weights generated from the prompt, applied on a bottleneck.
#[derive(Clone, Debug)]
pub struct HyperPromptAdapter {
    /// Down-projection D → r.
    pub down: Linear,
    /// Generator hidden layer D → gen_hidden (ReLU).
    pub gen0: Linear,
    /// Generator output gen_hidden → N·r·r.
    pub gen2: Linear,
    /// LayerNorm weights of the N generated layers, stacked `[N, r]`.
    pub gamma: Tensor,
    /// LayerNorm biases, stacked `[N, r]`.
    pub beta: Tensor,
    /// Up-projection r → D (zero-initialised in training).
    pub up: Linear,
    /// Settings.
    pub cfg: HypConfig,
}

impl HyperPromptAdapter {
    fn load(wl: &mut WeightLoader, p: &str, d: usize, cfg: &HypConfig) -> Self {
        let r = cfg.r;
        HyperPromptAdapter {
            down: Linear::load(wl, &format!("{p}.D_fc1"), d, r, true),
            gen0: Linear::load(wl, &format!("{p}.gen.0"), d, cfg.gen_hidden, true),
            gen2: Linear::load(wl, &format!("{p}.gen.2"), cfg.gen_hidden, cfg.n_layers * r * r, true),
            gamma: stack((0..cfg.n_layers).map(|i| wl.take(&format!("{p}.norms.{i}.weight"), &[r]))),
            beta: stack((0..cfg.n_layers).map(|i| wl.take(&format!("{p}.norms.{i}.bias"), &[r]))),
            up: Linear::load(wl, &format!("{p}.D_fc2"), r, d, true),
            cfg: cfg.clone(),
        }
    }

    /// Generated weights `[B, N, r, r]` for the pooled prompt vectors `e [B, D]`.
    pub fn generate(&self, be: &dyn Backend, e: &Tensor) -> Result<Tensor> {
        let h = be.relu(self.gen0.forward(be, e)?)?;
        let w = self.gen2.forward(be, &h)?;
        let r = self.cfg.r;
        Ok(w.reshape(vec![e.dim(0), self.cfg.n_layers, r, r])?)
    }

    /// `a [B, T, D]` with weights `w [B, N, r, r]` → `[B, T, D]`:
    /// `up(chain(down(a)))`, chain = N × (per-set matmul, LayerNorm, ReLU) as one backend op.
    pub fn forward(&self, be: &dyn Backend, a: &Tensor, w: &Tensor) -> Result<Tensor> {
        let d = self.down.forward(be, a)?;
        let d = be.hyper_chain(&d, w, &self.gamma, &self.beta, self.cfg.norm_eps)?;
        self.up.forward(be, &d)
    }
}

/// The paper's three decoder adapters of one two-way layer.
#[derive(Clone, Debug)]
pub struct DecoderAdapters {
    /// HyP-Adpt after the token→image cross-attention.
    pub hyp: HyperPromptAdapter,
    /// Parallel to the MLP, scaled.
    pub mlp: Adapter,
    /// After the image→token residual.
    pub image: Adapter,
}

/// One two-way attention block (spec 5.2 / 5.3 / 5.4).
#[derive(Clone, Debug)]
pub struct TwoWayBlock {
    /// Token self-attention.
    pub self_attn: DecoderAttention,
    /// `norm1`.
    pub norm1: LayerNorm,
    /// Tokens → image.
    pub cross_t2i: DecoderAttention,
    /// `norm2`.
    pub norm2: LayerNorm,
    /// MLP first layer.
    pub lin1: Linear,
    /// MLP second layer.
    pub lin2: Linear,
    /// `norm3`.
    pub norm3: LayerNorm,
    /// Image → tokens.
    pub cross_i2t: DecoderAttention,
    /// `norm4`.
    pub norm4: LayerNorm,
    /// The paper's adapters.
    pub adapters: Option<DecoderAdapters>,
    /// Layer index (0 skips the PE in self-attention).
    pub index: usize,
}

/// The mask decoder.
#[derive(Clone, Debug)]
pub struct MaskDecoder {
    /// Configuration.
    pub cfg: DecoderConfig,
    /// Two-way layers.
    pub layers: Vec<TwoWayBlock>,
    /// Final token→image attention.
    pub final_attn: DecoderAttention,
    /// `norm_final_attn`.
    pub norm_final: LayerNorm,
    /// `iou_token` `[1, D]`.
    pub iou_token: Tensor,
    /// `mask_tokens` `[M, D]`.
    pub mask_tokens: Tensor,
    /// `output_upscaling.0` ConvT weight and bias.
    pub up0: (Tensor, Tensor),
    /// `output_upscaling.1` LayerNorm2d.
    pub up1: LayerNorm,
    /// `output_upscaling.3` ConvT weight and bias.
    pub up3: (Tensor, Tensor),
    /// Hypernetwork MLPs, one per mask token.
    pub hyper_mlps: Vec<Mlp>,
    /// IoU prediction head.
    pub iou_head: Mlp,
}

/// Decoder outputs for a batch of prompt sets, before mask selection.
#[derive(Clone, Debug)]
pub struct DecoderOutput {
    /// Low-res mask logits `[B, M, 4G, 4G]`.
    pub masks: Tensor,
    /// Predicted IoU `[B, M]`.
    pub iou: Tensor,
}

impl MaskDecoder {
    /// Loads `mask_decoder.*`.
    pub fn load(wl: &mut WeightLoader, cfg: &DecoderConfig) -> Result<Self> {
        let d = cfg.transformer_dim;
        if !d.is_multiple_of(8)
            || cfg.num_heads == 0
            || !(d / cfg.downsample_rate.max(1)).is_multiple_of(cfg.num_heads)
        {
            return Err(Error::Config(format!("decoder width {d} does not fit {} heads", cfg.num_heads)));
        }
        let p = "mask_decoder.transformer";
        let eps = cfg.ln_eps;
        let (mlp1, mlp2) = match cfg.variant {
            DecoderVariant::Sam => ("mlp.lin1", "mlp.lin2"),
            DecoderVariant::MedsaOfficial => ("mlp.layers.0.0", "mlp.fc"),
        };
        let layers = (0..cfg.depth)
            .map(|l| {
                let lp = format!("{p}.layers.{l}");
                let adapters = cfg.hyp.as_ref().map(|h| DecoderAdapters {
                    hyp: HyperPromptAdapter::load(wl, &format!("{lp}.HyP_Adapter"), d, h),
                    mlp: Adapter::load(wl, &format!("{lp}.MLP_Adapter"), d, h.adapter_hidden, h.act),
                    image: Adapter::load(wl, &format!("{lp}.Image_Adapter"), d, h.adapter_hidden, h.act),
                });
                TwoWayBlock {
                    self_attn: DecoderAttention::load(wl, &format!("{lp}.self_attn"), d, cfg.num_heads, 1),
                    norm1: LayerNorm::load(wl, &format!("{lp}.norm1"), d, eps),
                    cross_t2i: DecoderAttention::load(
                        wl,
                        &format!("{lp}.cross_attn_token_to_image"),
                        d,
                        cfg.num_heads,
                        cfg.downsample_rate,
                    ),
                    norm2: LayerNorm::load(wl, &format!("{lp}.norm2"), d, eps),
                    lin1: Linear::load(wl, &format!("{lp}.{mlp1}"), d, cfg.mlp_dim, true),
                    lin2: Linear::load(wl, &format!("{lp}.{mlp2}"), cfg.mlp_dim, d, true),
                    norm3: LayerNorm::load(wl, &format!("{lp}.norm3"), d, eps),
                    cross_i2t: DecoderAttention::load(
                        wl,
                        &format!("{lp}.cross_attn_image_to_token"),
                        d,
                        cfg.num_heads,
                        cfg.downsample_rate,
                    ),
                    norm4: LayerNorm::load(wl, &format!("{lp}.norm4"), d, eps),
                    adapters,
                    index: l,
                }
            })
            .collect();
        let m = cfg.num_mask_tokens;
        let q = "mask_decoder";
        Ok(MaskDecoder {
            cfg: cfg.clone(),
            layers,
            final_attn: DecoderAttention::load(
                wl,
                &format!("{p}.final_attn_token_to_image"),
                d,
                cfg.num_heads,
                cfg.downsample_rate,
            ),
            norm_final: LayerNorm::load(wl, &format!("{p}.norm_final_attn"), d, eps),
            iou_token: wl.take(&format!("{q}.iou_token.weight"), &[1, d]),
            mask_tokens: wl.take(&format!("{q}.mask_tokens.weight"), &[m, d]),
            up0: (
                wl.take(&format!("{q}.output_upscaling.0.weight"), &[d, d / 4, 2, 2]),
                wl.take(&format!("{q}.output_upscaling.0.bias"), &[d / 4]),
            ),
            up1: LayerNorm::load(wl, &format!("{q}.output_upscaling.1"), d / 4, 1e-6),
            up3: (
                wl.take(&format!("{q}.output_upscaling.3.weight"), &[d / 4, d / 8, 2, 2]),
                wl.take(&format!("{q}.output_upscaling.3.bias"), &[d / 8]),
            ),
            hyper_mlps: (0..m)
                .map(|i| Mlp::load(wl, &format!("{q}.output_hypernetworks_mlps.{i}"), d, d, d / 8, 3))
                .collect(),
            iou_head: Mlp::load(
                wl,
                &format!("{q}.iou_prediction_head"),
                d,
                cfg.iou_head_hidden,
                m,
                cfg.iou_head_depth,
            ),
        })
    }

    /// Runs the decoder for B prompt sets on `image [N, D, G, G]` (N = 1 is repeated over the
    /// sets; N = B pairs set i with image i) with `dense_pe [1, D, G, G]`.
    pub fn forward(
        &self,
        be: &dyn Backend,
        image: &Tensor,
        dense_pe: &Tensor,
        prompts: &PromptEmbeddings,
        trace: &mut Trace,
    ) -> Result<DecoderOutput> {
        let d = self.cfg.transformer_dim;
        let b = prompts.sparse.dim(0);
        let (gh, gw) = (image.dim(2), image.dim(3));
        let n_img = image.dim(0);
        if image.dim(1) != d || (n_img != 1 && n_img != b) {
            return Err(Error::Config(format!(
                "image embeddings {:?} do not fit {b} prompt sets of width {d}",
                image.shape()
            )));
        }
        let _span = tracing::debug_span!("mask_decoder", sets = b).entered();
        // tokens = [iou_token; mask_tokens; sparse] per set.
        let m = self.cfg.num_mask_tokens;
        let ns = prompts.sparse.dim(1);
        let t = 1 + m + ns;
        let mut tokens = Vec::with_capacity(b * t * d);
        for s in 0..b {
            tokens.extend_from_slice(self.iou_token.data());
            tokens.extend_from_slice(self.mask_tokens.data());
            tokens.extend_from_slice(&prompts.sparse.data()[s * ns * d..(s + 1) * ns * d]);
        }
        let tokens = Tensor::new(vec![b, t, d], tokens)?;
        // src = image (repeated per set) + dense; pos = dense_pe repeated.
        let gg = gh * gw;
        let mut src = prompts.dense.clone();
        for s in 0..b {
            let img = &image.data()[(if n_img == 1 { 0 } else { s }) * d * gg..][..d * gg];
            src.data_mut()[s * d * gg..(s + 1) * d * gg].iter_mut().zip(img).for_each(|(a, v)| *a += v);
        }
        let keys = src.reshape(vec![b, d, gg])?.permute(&[0, 2, 1])?;
        let pe_one = dense_pe.clone().reshape(vec![1, d, gg])?.permute(&[0, 2, 1])?;
        let key_pe = Tensor::cat(&vec![&pe_one; b], 0)?;

        // The paper's HyP-Adpt: pooled prompt vector e = mean of the valid sparse tokens.
        let hyp_e = if self.cfg.hyp.is_some() { Some(pooled_prompt(prompts)?) } else { None };
        if let Some(e) = &hyp_e {
            trace.record("hyp.prompt", e);
        }

        let (hs, keys) = self.transformer(be, &tokens, keys, &key_pe, hyp_e.as_ref(), trace)?;

        // Heads.
        let upscaled = self.upscale(be, &keys.permute(&[0, 2, 1])?.reshape(vec![b, d, gh, gw])?)?;
        let (uh, uw) = (upscaled.dim(2), upscaled.dim(3));
        let c8 = d / 8;
        let mut hyper = Vec::with_capacity(b * m * c8);
        let mut per_token = Vec::with_capacity(m);
        for (k, mlp) in self.hyper_mlps.iter().enumerate() {
            per_token.push(mlp.forward(be, &hs.narrow(1, 1 + k, 1)?.reshape(vec![b, d])?)?);
        }
        for s in 0..b {
            for pt in &per_token {
                hyper.extend_from_slice(&pt.data()[s * c8..(s + 1) * c8]);
            }
        }
        let hyper = Tensor::new(vec![b, m, c8], hyper)?;
        let masks = be.bmm(&hyper, &upscaled.reshape(vec![b, c8, uh * uw])?)?.reshape(vec![b, m, uh, uw])?;
        let iou = self.iou_head.forward(be, &hs.narrow(1, 0, 1)?.reshape(vec![b, d])?)?;
        Ok(DecoderOutput { masks, iou })
    }

    fn upscale(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let h = be.conv_transpose2x2(x, &self.up0.0, &self.up0.1)?;
        let h = be.gelu(self.up1.forward2d(be, &h)?)?;
        Ok(be.gelu(be.conv_transpose2x2(&h, &self.up3.0, &self.up3.1)?)?)
    }

    /// The two-way transformer: returns the final queries `[B, T, D]` and keys `[B, G², D]`.
    fn transformer(
        &self,
        be: &dyn Backend,
        tokens: &Tensor,
        mut keys: Tensor,
        key_pe: &Tensor,
        hyp_e: Option<&Tensor>,
        trace: &mut Trace,
    ) -> Result<(Tensor, Tensor)> {
        let query_pe = tokens;
        let mut queries = tokens.clone();
        for layer in &self.layers {
            let hyp_w = match (&layer.adapters, hyp_e) {
                (Some(a), Some(e)) => {
                    let w = a.hyp.generate(be, e)?;
                    trace.record(&format!("transformer.layers.{}.hyp_weights", layer.index), &w);
                    Some(w)
                }
                _ => None,
            };
            (queries, keys) =
                layer.forward(be, self.cfg.variant, queries, keys, query_pe, key_pe, hyp_w.as_ref())?;
            trace.record(&format!("transformer.layers.{}.queries", layer.index), &queries);
            trace.record(&format!("transformer.layers.{}.keys", layer.index), &keys);
        }
        let q = queries.add(query_pe)?;
        let k = keys.add(key_pe)?;
        let a = self.final_attn.forward(be, &q, &k, &keys)?;
        queries.add_assign(&a)?;
        let queries = self.norm_final.forward(be, &queries)?;
        trace.record("transformer.queries", &queries);
        Ok((queries, keys))
    }
}

/// Stacks `[r]` tensors into `[N, r]` (empty placeholders stay empty in a dry run).
fn stack(parts: impl Iterator<Item = Tensor>) -> Tensor {
    let parts: Vec<Tensor> = parts.collect();
    let n = parts.len();
    let data: Vec<f32> = parts.iter().flat_map(|t| t.data().iter().copied()).collect();
    let r = data.len() / n.max(1);
    Tensor::new(vec![n, r], data).unwrap_or_else(|_| Tensor::new(vec![0], Vec::new()).expect("empty tensor"))
}

/// Mean of the valid sparse tokens per prompt set, `[B, D]` (golden README 5.3); a set without
/// valid tokens gets zeros.
pub fn pooled_prompt(p: &PromptEmbeddings) -> Result<Tensor> {
    let (b, ns, d) = (p.sparse.dim(0), p.sparse.dim(1), p.sparse.dim(2));
    let mut e = vec![0f32; b * d];
    for s in 0..b {
        let mut count = 0usize;
        for t in 0..ns {
            if p.valid[s * ns + t] {
                count += 1;
                let row = &p.sparse.data()[(s * ns + t) * d..(s * ns + t + 1) * d];
                e[s * d..(s + 1) * d].iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
        }
        if count > 0 {
            e[s * d..(s + 1) * d].iter_mut().for_each(|v| *v /= count as f32);
        }
    }
    Ok(Tensor::new(vec![b, d], e)?)
}

impl TwoWayBlock {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        be: &dyn Backend,
        variant: DecoderVariant,
        mut queries: Tensor,
        keys: Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
        hyp_w: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        // 1. Self-attention.
        match variant {
            DecoderVariant::Sam => {
                if self.index == 0 {
                    queries = self.self_attn.forward(be, &queries, &queries, &queries)?;
                } else {
                    let q = queries.add(query_pe)?;
                    let a = self.self_attn.forward(be, &q, &q, &queries)?;
                    queries.add_assign(&a)?;
                }
            }
            DecoderVariant::MedsaOfficial => {
                if self.index > 0 {
                    queries.add_assign(query_pe)?;
                }
                let a = self.self_attn.forward(be, &queries, &queries, &queries)?;
                queries.add_assign(&a)?;
            }
        }
        queries = self.norm1.forward(be, &queries)?;
        // 2. Tokens → image (+ HyP-Adpt).
        let q = queries.add(query_pe)?;
        let k = keys.add(key_pe)?;
        let a = self.cross_t2i.forward(be, &q, &k, &keys)?;
        queries.add_assign(&a)?;
        if let (Some(ad), Some(w)) = (&self.adapters, hyp_w) {
            queries.add_assign(&ad.hyp.forward(be, &a, w)?)?;
        }
        queries = self.norm2.forward(be, &queries)?;
        // 3. MLP (+ MLP_Adapter).
        let mlp = self.lin2.forward(be, &be.relu(self.lin1.forward(be, &queries)?)?)?;
        let mut next = queries.add(&mlp)?;
        if let Some(ad) = &self.adapters {
            next.add_assign(&ad.mlp.forward(be, &queries)?.scale(ad.hyp.cfg.mlp_scale))?;
        }
        queries = self.norm3.forward(be, &next)?;
        // 4. Image → tokens (+ Image_Adapter).
        let q = queries.add(query_pe)?;
        let k = keys.add(key_pe)?;
        let a = self.cross_i2t.forward(be, &k, &q, &queries)?;
        let mut k1 = keys.add(&a)?;
        if let Some(ad) = &self.adapters {
            let ia = ad.image.forward(be, &k1)?;
            k1.add_assign(&ia)?;
        }
        let keys = self.norm4.forward(be, &k1)?;
        Ok((queries, keys))
    }
}
