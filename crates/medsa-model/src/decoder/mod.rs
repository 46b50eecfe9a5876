//! SAM's mask decoder (spec 5.1, 5.2), the official Med-SA variant (5.3), and the paper's decoder
//! adapters: HyP-Adpt, MLP_Adapter and Image_Adapter (5.4). One file per job:
//!
//! - [`attention`]: the decoder's attention and the three orders it can be evaluated in;
//! - [`hyp_adapter`]: HyP-Adpt and the other decoder adapters;
//! - [`two_way`]: one two-way block;
//! - [`mask_head`]: `output_upscaling` and the mask logits;
//! - [`image_context`]: the per-image work done once and shared by every prompt;
//! - here: the decoder itself (loading, the two-way transformer, the heads).

pub mod attention;
pub mod hyp_adapter;
pub mod image_context;
pub mod mask_head;
pub mod two_way;

pub use attention::{AttentionPath, DecoderAttention};
pub use hyp_adapter::{pooled_prompt, DecoderAdapters, HyperPromptAdapter};
pub use image_context::{FirstLayer, ImageContext};
pub use mask_head::OutputUpscaling;
pub use two_way::TwoWayBlock;

use crate::config::DecoderConfig;
use crate::nn::{Adapter, LayerNorm, Linear, Mlp, Trace};
use crate::prompt::{DenseEmbedding, PromptEmbeddings};
use crate::weights::WeightLoader;
use crate::{Error, Result};
use medsa_core::{Backend, Tensor};
use two_way::{with_pe, ImageSide};

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
    /// `output_upscaling`: the final keys to the mask resolution.
    pub upscaling: OutputUpscaling,
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
        let transformer = "mask_decoder.transformer";
        let eps = cfg.ln_eps;
        let (mlp1, mlp2) = cfg.variant.mlp_keys();
        let layers = (0..cfg.depth)
            .map(|l| {
                let lp = format!("{transformer}.layers.{l}");
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
        let root = "mask_decoder";
        Ok(MaskDecoder {
            cfg: cfg.clone(),
            layers,
            final_attn: DecoderAttention::load(
                wl,
                &format!("{transformer}.final_attn_token_to_image"),
                d,
                cfg.num_heads,
                cfg.downsample_rate,
            ),
            norm_final: LayerNorm::load(wl, &format!("{transformer}.norm_final_attn"), d, eps),
            iou_token: wl.take(&format!("{root}.iou_token.weight"), &[1, d]),
            mask_tokens: wl.take(&format!("{root}.mask_tokens.weight"), &[m, d]),
            upscaling: OutputUpscaling::load(wl, root, d),
            hyper_mlps: (0..m)
                .map(|i| Mlp::load(wl, &format!("{root}.output_hypernetworks_mlps.{i}"), d, d, d / 8, 3))
                .collect(),
            iou_head: Mlp::load(
                wl,
                &format!("{root}.iou_prediction_head"),
                d,
                cfg.iou_head_hidden,
                m,
                cfg.iou_head_depth,
            ),
        })
    }

    /// Runs the decoder for B prompt sets on a prepared image (N = 1 image is shared by the
    /// sets; N = B pairs set i with image i).
    pub fn forward(
        &self,
        be: &dyn Backend,
        image: &ImageContext,
        prompts: &PromptEmbeddings,
        trace: &mut Trace,
    ) -> Result<DecoderOutput> {
        let d = self.cfg.transformer_dim;
        let b = prompts.sparse.dim(0);
        let (gh, gw) = image.grid;
        let n_img = image.images();
        if image.width() != d || (n_img != 1 && n_img != b) {
            return Err(Error::Config(format!(
                "{n_img} image(s) of width {} do not fit {b} prompt sets of a decoder of width {d}",
                image.width()
            )));
        }
        let _span = tracing::debug_span!("mask_decoder", sets = b).entered();
        let tokens = self.tokens(be, &prompts.sparse)?;
        // Without a mask prompt the first block's image side is the same for every prompt.
        let side = match (&image.first_layer, &prompts.dense) {
            (Some(f), DenseEmbedding::NoMask(v)) if v.same_data(&f.no_mask) => ImageSide::Shared(f),
            _ => ImageSide::Keys(image.keys(be, &prompts.dense, b)?),
        };
        let key_pe = &image.pe;

        // The paper's HyP-Adpt: pooled prompt vector e = mean of the valid sparse tokens.
        let hyp_e = match self.cfg.hyp {
            Some(_) => Some(be.upload(&pooled_prompt(prompts)?)?),
            None => None,
        };
        if let Some(e) = &hyp_e {
            trace.record("hyp.prompt", e);
        }

        let (hs, keys) = self.transformer(be, &tokens, side, key_pe, hyp_e.as_ref(), trace)?;

        // Heads: one hypernetwork MLP per mask token, stacked to [B, M, D/8].
        let per_token = self
            .hyper_mlps
            .iter()
            .enumerate()
            .map(|(k, mlp)| {
                let token = be.narrow(&hs, 1, 1 + k, 1)?.reshape(vec![b, d])?;
                Ok(mlp.forward(be, &token)?.reshape(vec![b, 1, d / 8])?)
            })
            .collect::<Result<Vec<Tensor>>>()?;
        let hyper = be.cat(&per_token.iter().collect::<Vec<_>>(), 1)?;
        let masks = self.masks(be, &keys, (gh, gw), &hyper)?;
        let iou = self.iou_head.forward(be, &be.narrow(&hs, 1, 0, 1)?.reshape(vec![b, d])?)?;
        Ok(DecoderOutput { masks, iou })
    }

    /// The decoder's input tokens `[B, 1 + M + Ns, D]`: `[iou_token; mask_tokens; sparse]` per
    /// prompt set, from the sparse prompt embeddings `[B, Ns, D]`.
    pub(crate) fn tokens(&self, be: &dyn Backend, sparse: &Tensor) -> Result<Tensor> {
        let (b, d) = (sparse.dim(0), self.cfg.transformer_dim);
        let head = be.cat(&[&self.iou_token, &self.mask_tokens], 0)?;
        let heads = be.cat(&vec![&head; b], 0)?.reshape(vec![b, 1 + self.cfg.num_mask_tokens, d])?;
        Ok(be.cat(&[&heads, sparse], 1)?)
    }

    /// The two-way transformer: returns the final queries `[B, T, D]` and keys `[B, G², D]`.
    fn transformer(
        &self,
        be: &dyn Backend,
        tokens: &Tensor,
        mut image: ImageSide<'_>,
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
            let keys;
            (queries, keys) =
                layer.forward(be, self.cfg.variant, queries, image, query_pe, key_pe, hyp_w.as_ref())?;
            trace.record(&format!("transformer.layers.{}.queries", layer.index), &queries);
            trace.record(&format!("transformer.layers.{}.keys", layer.index), &keys);
            image = ImageSide::Keys(keys);
        }
        let keys = match image {
            ImageSide::Keys(keys) => keys,
            ImageSide::Shared(f) => {
                let sets = vec![&f.keys; queries.dim(0)];
                be.cat(&sets, 0)?.reshape(vec![queries.dim(0), f.keys.dim(0), f.keys.dim(1)])?
            }
        };
        let q = be.add_scaled(queries.clone(), query_pe, 1.0)?;
        let k = with_pe(be, &keys, key_pe)?;
        let a = self.final_attn.forward(be, &q, &k, &keys)?;
        let queries = be.add_scaled(queries, &a, 1.0)?;
        let queries = self.norm_final.forward(be, &queries)?;
        trace.record("transformer.queries", &queries);
        Ok((queries, keys))
    }
}
