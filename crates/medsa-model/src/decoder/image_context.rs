//! What the decoder computes once per image: the embeddings and dense PE in token layout
//! ([`ImageContext`]) and, for prompts without a mask, the first two-way block's image side
//! ([`FirstLayer`]), so that each prompt runs only the prompt-dependent work.

use super::attention::per_head;
use super::two_way::with_pe;
use super::MaskDecoder;
use crate::prompt::DenseEmbedding;
use crate::{Error, Result};
use medsa_core::{Backend, Tensor};

/// The decoder's prompt-independent inputs for one image (or N images), prepared once: SAM's
/// `image_embeddings` and `image_pe` in the token layout of the two-way transformer. Built only by
/// [`ImageContext::new`] and [`MaskDecoder::prepare`], so its tokens, PE and grid always agree.
#[derive(Clone, Debug)]
pub struct ImageContext {
    /// Image embeddings as tokens `[N, G_h·G_w, D]`.
    pub(crate) tokens: Tensor,
    /// Dense positional encoding as tokens `[G_h·G_w, D]`.
    pub(crate) pe: Tensor,
    /// The embedding grid `(G_h, G_w)`.
    pub(super) grid: (usize, usize),
    /// The first two-way block's prompt-independent work, if prepared
    /// ([`MaskDecoder::prepare`]).
    pub(super) first_layer: Option<FirstLayer>,
}

/// What the first two-way block computes from the image alone, for prompts without a mask:
/// its keys (image tokens plus `no_mask_embed`) are then the same for every prompt, and so are
/// the key and value projections of tokens → image and the query projection of image → tokens.
#[derive(Clone, Debug)]
pub struct FirstLayer {
    /// The `no_mask_embed` it was prepared with `[D]` (a prompt's no-mask embedding uses the
    /// shared work when it is this tensor: [`Tensor::same_data`]).
    pub(super) no_mask: Tensor,
    /// Keys `[G², D]`.
    pub(super) keys: Tensor,
    /// Tokens → image key projection of `keys + pe`, per head `[H, G², hd]`.
    pub(super) t2i_k: Tensor,
    /// Tokens → image value projection of `keys`, per head `[H, G², hd]`.
    pub(super) t2i_v: Tensor,
    /// Image → tokens query projection of `keys + pe`, per head `[H, G², hd]`.
    pub(super) i2t_q: Tensor,
}

impl ImageContext {
    /// From `image [N, D, G_h, G_w]` and the prompt encoder's `dense_pe [1, D, G_h, G_w]`, laid
    /// out where `be` computes.
    pub fn new(be: &dyn Backend, image: &Tensor, dense_pe: &Tensor) -> Result<Self> {
        if image.rank() != 4 || dense_pe.shape() != [1, image.dim(1), image.dim(2), image.dim(3)] {
            return Err(Error::Config(format!(
                "image embeddings {:?} with dense PE {:?}: want [N, D, H, W] and [1, D, H, W]",
                image.shape(),
                dense_pe.shape()
            )));
        }
        let (n, d, gh, gw) = (image.dim(0), image.dim(1), image.dim(2), image.dim(3));
        Ok(ImageContext {
            tokens: be.permute(&image.clone().reshape(vec![n, d, gh * gw])?, &[0, 2, 1])?,
            pe: be.permute(&dense_pe.clone().reshape(vec![d, gh * gw])?, &[1, 0])?,
            grid: (gh, gw),
            first_layer: None,
        })
    }

    /// The embedding grid `(G_h, G_w)`.
    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }

    /// Number of images N.
    pub fn images(&self) -> usize {
        self.tokens.dim(0)
    }

    /// Embedding width D.
    pub fn width(&self) -> usize {
        self.tokens.dim(2)
    }

    /// True when the first block's prompt-independent work is prepared ([`MaskDecoder::prepare`]).
    pub fn is_prepared(&self) -> bool {
        self.first_layer.is_some()
    }

    /// The keys `[B, G², D]` of `b` prompt sets: image tokens plus the dense prompt embedding.
    pub(crate) fn keys(&self, be: &dyn Backend, dense: &DenseEmbedding, b: usize) -> Result<Tensor> {
        let (n, gg, d) = (self.tokens.dim(0), self.tokens.dim(1), self.tokens.dim(2));
        // One image shared by the sets is added as a table; N = B images pair up.
        let image = if n == 1 { self.tokens.clone().reshape(vec![gg, d])? } else { self.tokens.clone() };
        match dense {
            DenseEmbedding::NoMask(v) => {
                if v.numel() != d {
                    return Err(Error::Config(format!(
                        "no-mask embedding of {} values for width {d}",
                        v.numel()
                    )));
                }
                let sets = if n == 1 { be.cat(&vec![&image; b], 0)?.reshape(vec![b, gg, d])? } else { image };
                Ok(be.add_scaled(sets, &v.clone().reshape(vec![d])?, 1.0)?)
            }
            DenseEmbedding::Masks(t) => {
                if t.shape() != [b, d, self.grid.0, self.grid.1] {
                    return Err(Error::Config(format!(
                        "dense prompt {:?} does not fit {b} sets on a {:?} grid of width {d}",
                        t.shape(),
                        self.grid
                    )));
                }
                let dense = be.permute(&t.clone().reshape(vec![b, d, gg])?, &[0, 2, 1])?;
                Ok(be.add_scaled(dense, &image, 1.0)?)
            }
        }
    }
}

impl MaskDecoder {
    /// The [`ImageContext`] of one image with its [`FirstLayer`] prepared for prompts without a
    /// mask (`no_mask` = the prompt encoder's `no_mask_embed` `[D]`): what a predictor computes
    /// once per image. Several images (`N > 1`) get the layouts only.
    pub fn prepare(
        &self,
        be: &dyn Backend,
        image: &Tensor,
        dense_pe: &Tensor,
        no_mask: &Tensor,
    ) -> Result<ImageContext> {
        let mut ctx = ImageContext::new(be, image, dense_pe)?;
        let (n, gg, d) = (ctx.tokens.dim(0), ctx.tokens.dim(1), ctx.tokens.dim(2));
        if let (Some(layer), 1) = (self.layers.first(), n) {
            let keys = ctx.keys(be, &DenseEmbedding::NoMask(no_mask.clone()), 1)?;
            let x = with_pe(be, &keys, &ctx.pe)?;
            let (t2i, i2t) = (&layer.cross_t2i, &layer.cross_i2t);
            ctx.first_layer = Some(FirstLayer {
                no_mask: no_mask.clone(),
                t2i_k: per_head(be, t2i.k.forward(be, &x)?, t2i.num_heads)?,
                t2i_v: per_head(be, t2i.v.forward(be, &keys)?, t2i.num_heads)?,
                i2t_q: per_head(be, i2t.q.forward(be, &x)?, i2t.num_heads)?,
                keys: keys.reshape(vec![gg, d])?,
            });
        }
        Ok(ctx)
    }
}
