//! The mask head (spec 5.1): SAM's `output_upscaling` of the final keys and the dot product with
//! each mask token's hypernetwork vector, fused ([`Backend::upscale_masks`]) and literal.

use super::MaskDecoder;
use crate::nn::LayerNorm;
use crate::weights::WeightLoader;
use crate::Result;
use medsa_core::{Backend, Tensor, Upscaling};

/// SAM's `output_upscaling` (`Sequential(ConvTranspose2d, LayerNorm2d, GELU, ConvTranspose2d,
/// GELU)`): the final keys `[B, D, G, G]` to `[B, D/8, 4G, 4G]`.
#[derive(Clone, Debug)]
pub struct OutputUpscaling {
    /// First 2×2 transposed conv D → D/4: weight `[D, D/4, 2, 2]`, bias `[D/4]`.
    pub conv0: (Tensor, Tensor),
    /// LayerNorm2d over D/4 channels (eps 1e-6).
    pub norm: LayerNorm,
    /// Second 2×2 transposed conv D/4 → D/8: weight `[D/4, D/8, 2, 2]`, bias `[D/8]`.
    pub conv1: (Tensor, Tensor),
}

impl OutputUpscaling {
    /// The checkpoint prefixes of `conv0`, `norm` and `conv1` under `root` (`mask_decoder`):
    /// `{root}.output_upscaling.{0,1,3}`, the `Sequential` indices. The one place they are named.
    pub fn keys(root: &str) -> [String; 3] {
        ["0", "1", "3"].map(|i| format!("{root}.output_upscaling.{i}"))
    }

    /// Loads `{root}.output_upscaling.{0,1,3}` for width `d`.
    pub(super) fn load(wl: &mut WeightLoader, root: &str, d: usize) -> Self {
        let keys = Self::keys(root);
        let key = |i: usize| keys[i].as_str();
        OutputUpscaling {
            conv0: (
                wl.take(&format!("{}.weight", key(0)), &[d, d / 4, 2, 2]),
                wl.take(&format!("{}.bias", key(0)), &[d / 4]),
            ),
            norm: LayerNorm::load(wl, key(1), d / 4, 1e-6),
            conv1: (
                wl.take(&format!("{}.weight", key(2)), &[d / 4, d / 8, 2, 2]),
                wl.take(&format!("{}.bias", key(2)), &[d / 8]),
            ),
        }
    }

    /// The operands of [`Backend::upscale_masks`].
    pub fn op(&self) -> Upscaling<'_> {
        Upscaling {
            conv0: (&self.conv0.0, &self.conv0.1),
            norm: (&self.norm.w, &self.norm.b, self.norm.eps),
            conv1: (&self.conv1.0, &self.conv1.1),
        }
    }
}

impl MaskDecoder {
    /// Low-res mask logits `[B, M, 4G, 4G]` from the final keys `[B, G², D]` (grid `(G, G)`)
    /// and the hypernetwork outputs `hyper [B, M, D/8]`: the keys upscaled by two 2×2 transposed
    /// convolutions (with LayerNorm2d and GELU, spec 5.1), dotted with each mask token's vector
    /// ([`Backend::upscale_masks`]). [`MaskDecoder::masks_reference`] is the spec's literal
    /// version it is tested against.
    pub fn masks(
        &self,
        be: &dyn Backend,
        keys: &Tensor,
        grid: (usize, usize),
        hyper: &Tensor,
    ) -> Result<Tensor> {
        Ok(be.upscale_masks(keys, grid, &self.upscaling.op(), hyper)?)
    }

    /// [`MaskDecoder::masks`] by the spec's literal ops on `[B, C, H, W]` images
    /// (`ConvTranspose2d`, `LayerNorm2d`).
    pub fn masks_reference(
        &self,
        be: &dyn Backend,
        keys: &Tensor,
        grid: (usize, usize),
        hyper: &Tensor,
    ) -> Result<Tensor> {
        let (b, d) = (keys.dim(0), keys.dim(2));
        let x = keys.permute(&[0, 2, 1])?.reshape(vec![b, d, grid.0, grid.1])?;
        let u = &self.upscaling;
        let h = be.conv_transpose2x2(&x, &u.conv0.0, &u.conv0.1)?;
        let h = be.gelu(u.norm.forward2d(be, &h)?)?;
        let up = be.gelu(be.conv_transpose2x2(&h, &u.conv1.0, &u.conv1.1)?)?;
        let (c8, uh, uw) = (up.dim(1), up.dim(2), up.dim(3));
        Ok(be.bmm(hyper, &up.reshape(vec![b, c8, uh * uw])?)?.reshape(vec![b, hyper.dim(1), uh, uw])?)
    }
}
