//! One two-way attention block of SAM's decoder (spec 5.2; the official Med-SA variant 5.3; the
//! paper's adapters 5.4): token self-attention, tokens → image, MLP, image → tokens.

use super::attention::DecoderAttention;
use super::hyp_adapter::DecoderAdapters;
use super::image_context::FirstLayer;
use crate::config::DecoderVariant;
use crate::nn::{LayerNorm, Linear};
use crate::{Error, Result};
use medsa_core::{Activation, Backend, Tensor};

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

impl TwoWayBlock {
    /// The block on `queries [B, T, D]` and its image side: returns the new queries and keys.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &self,
        be: &dyn Backend,
        variant: DecoderVariant,
        mut queries: Tensor,
        image: ImageSide<'_>,
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
                    let q = be.add_scaled(queries.clone(), query_pe, 1.0)?;
                    let a = self.self_attn.forward(be, &q, &q, &queries)?;
                    queries = be.add_scaled(queries, &a, 1.0)?;
                }
            }
            DecoderVariant::MedsaOfficial => {
                if self.index > 0 {
                    queries = be.add_scaled(queries, query_pe, 1.0)?;
                }
                let a = self.self_attn.forward(be, &queries, &queries, &queries)?;
                queries = be.add_scaled(queries, &a, 1.0)?;
            }
        }
        queries = self.norm1.forward(be, &queries)?;
        // 2. Tokens → image (+ HyP-Adpt).
        // keys + key_pe serves both cross-attentions: the keys change only at the block's end.
        let image = match image {
            ImageSide::Keys(keys) => BlockImage::Own { with_pe: with_pe(be, &keys, key_pe)?, keys },
            ImageSide::Shared(f) => BlockImage::Shared(f),
        };
        let q = be.add_scaled(queries.clone(), query_pe, 1.0)?;
        let a = match &image {
            BlockImage::Own { keys, with_pe } => self.cross_t2i.forward(be, &q, with_pe, keys)?,
            BlockImage::Shared(f) => self.cross_t2i.forward_projected_kv(be, &q, &f.t2i_k, &f.t2i_v)?,
        };
        queries = be.add_scaled(queries, &a, 1.0)?;
        if let (Some(ad), Some(w)) = (&self.adapters, hyp_w) {
            queries = be.add_scaled(queries, &ad.hyp.forward(be, &a, w)?, 1.0)?;
        }
        queries = self.norm2.forward(be, &queries)?;
        // 3. MLP (+ MLP_Adapter).
        let hidden = self.lin1.forward_act(be, &queries, Activation::Relu)?;
        let mut next = self.lin2.forward_add(be, queries.clone(), &hidden, 1.0)?;
        if let Some(ad) = &self.adapters {
            // next + (s·adapter) rounded as the official `x + s * adapter(x)`.
            next = ad.mlp.forward_add(be, next, &queries, ad.hyp.cfg.mlp_scale)?;
        }
        queries = self.norm3.forward(be, &next)?;
        // 4. Image → tokens (+ Image_Adapter).
        let q = be.add_scaled(queries.clone(), query_pe, 1.0)?;
        let mut k1 = match &image {
            BlockImage::Own { keys, with_pe } => {
                be.add_scaled(self.cross_i2t.forward(be, with_pe, &q, &queries)?, keys, 1.0)?
            }
            BlockImage::Shared(f) => {
                be.add_scaled(self.cross_i2t.forward_projected_q(be, &f.i2t_q, &q, &queries)?, &f.keys, 1.0)?
            }
        };
        if let Some(ad) = &self.adapters {
            let ia = ad.image.forward(be, &k1)?;
            k1 = be.add_scaled(k1, &ia, 1.0)?;
        }
        let keys = self.norm4.forward(be, &k1)?;
        Ok((queries, keys))
    }
}

/// The image side of a two-way block's input.
pub(super) enum ImageSide<'a> {
    /// Keys `[B, G², D]`.
    Keys(Tensor),
    /// The prepared first block, shared by every prompt set.
    Shared(&'a FirstLayer),
}

/// [`ImageSide`] inside a block, with the keys' positional encoding added.
enum BlockImage<'a> {
    Own { keys: Tensor, with_pe: Tensor },
    Shared(&'a FirstLayer),
}

/// `keys [B, G², D]` plus the positional encoding `key_pe [G², D]` of every set.
pub(crate) fn with_pe(be: &dyn Backend, keys: &Tensor, key_pe: &Tensor) -> Result<Tensor> {
    if keys.rank() != 3 || key_pe.shape() != &keys.shape()[1..] {
        return Err(Error::Config(format!("keys {:?} with PE {:?}", keys.shape(), key_pe.shape())));
    }
    Ok(be.add_scaled(keys.clone(), key_pe, 1.0)?)
}
