//! The gradients the backward ops of [`crate::Backend`] return, and the backward passes that are
//! compositions of other backward ops ([`upscale_masks_backward_composed`], and the mask head's
//! taped forward and backward for training, [`upscale_masks_taped_composed`]).
//!
//! Training is written the way llm.c trains GPT-2 (ARCHITECTURE.md, "Training"): each module's
//! forward keeps what its backward needs, and each backward op takes the forward's inputs (and,
//! for attention, its saved log-sum-exp) plus the gradient of its output. A backward op computes
//! parameter gradients only when asked (`params = true`): frozen weights get none.

use crate::backend::{conv_transpose_taps, upscale_masks_dims, Backend, Upscaling};
use crate::{Result, Tensor};

/// Gradients of [`Backend::linear`]: `dx` always, `dw` / `db` when parameters were asked for.
#[derive(Clone, Debug)]
pub struct LinearGrads {
    /// `[..., in]`, the shape of `x`.
    pub dx: Tensor,
    /// `[out, in]`.
    pub dw: Option<Tensor>,
    /// `[out]` (the sum of `dy` over every row).
    pub db: Option<Tensor>,
}

/// Gradients of [`Backend::layer_norm`] (and of `LayerNorm2d`, which is the same per pixel).
#[derive(Clone, Debug)]
pub struct NormGrads {
    /// The shape of `x`.
    pub dx: Tensor,
    /// `[C]`, when parameters were asked for.
    pub dw: Option<Tensor>,
    /// `[C]`, when parameters were asked for.
    pub db: Option<Tensor>,
}

/// Gradients of [`Backend::attention`] with respect to its three operands. The relative-position
/// tables are frozen in every trainable set, so their gradient is not formed; the bias's
/// dependence on q flows into `dq` through the tables.
#[derive(Clone, Debug)]
pub struct AttentionGrads {
    /// `[BH, Nq, d]`.
    pub dq: Tensor,
    /// `[BH, Nk, d]`.
    pub dk: Tensor,
    /// `[BH, Nk, dv]`.
    pub dv: Tensor,
}

/// Gradients of [`Backend::hyper_chain`].
#[derive(Clone, Debug)]
pub struct HyperChainGrads {
    /// `[B, T, r]`.
    pub dx: Tensor,
    /// The generated weights `[B, N, r, r]`.
    pub dw: Tensor,
    /// `[N, r]`.
    pub dgamma: Tensor,
    /// `[N, r]`.
    pub dbeta: Tensor,
}

/// Gradients of [`Backend::conv2d`].
#[derive(Clone, Debug)]
pub struct ConvGrads {
    /// The shape of `x`.
    pub dx: Tensor,
    /// The shape of `w`, when parameters were asked for.
    pub dw: Option<Tensor>,
}

/// Gradients of [`Backend::upscale_masks`]; the parameter gradients are `None` unless asked for.
#[derive(Clone, Debug)]
pub struct UpscaleGrads {
    /// `[B, G_h·G_w, D]`.
    pub dkeys: Tensor,
    /// `[B, M, C2]`.
    pub dhyper: Tensor,
    /// First transposed convolution `[D, C1, 2, 2]` and its bias `[C1]`.
    pub conv0: Option<(Tensor, Tensor)>,
    /// LayerNorm2d weight and bias `[C1]`.
    pub norm: Option<(Tensor, Tensor)>,
    /// Second transposed convolution `[C1, C2, 2, 2]` and its bias `[C2]`.
    pub conv1: Option<(Tensor, Tensor)>,
}

/// The gradient of the tap-weight layout of [`conv_transpose_taps`] `[4·Cout, Cin]` (and its
/// bias `[4·Cout]`) mapped back to the transposed convolution's `[Cin, Cout, 2, 2]` and `[Cout]`.
pub fn taps_to_conv_transpose(dw: &Tensor, db: &Tensor, cin: usize, cout: usize) -> Result<(Tensor, Tensor)> {
    let w = dw.clone().reshape(vec![4, cout, cin])?.permute(&[2, 1, 0])?.reshape(vec![cin, cout, 2, 2])?;
    let mut b = vec![0f32; cout];
    for tap in db.data().chunks_exact(cout.max(1)) {
        b.iter_mut().zip(tap).for_each(|(a, v)| *a += v);
    }
    Ok((w, Tensor::new(vec![cout], b)?))
}

/// Mask-logit gradients `[B, M, 4G_h, 4G_w]` in the upscaling's tap order: row
/// `((((i·G_w + j)·2 + di)·2 + dj)·2 + ei)·2 + ej` is pixel `(4i + 2di + ei, 4j + 2dj + ej)`.
/// Returns them transposed, `[B, M, 16·G²]`.
fn pixels_to_taps(d: &Tensor, (b, m): (usize, usize), (gh, gw): (usize, usize)) -> Result<Tensor> {
    let (h, w, rows) = (4 * gh, 4 * gw, 16 * gh * gw);
    let mut dlt = vec![0f32; b * m * rows];
    let src = d.data();
    for (bm, out) in dlt.chunks_exact_mut(rows.max(1)).enumerate() {
        let plane = &src[bm * h * w..(bm + 1) * h * w];
        for (y, line) in plane.chunks_exact(w.max(1)).enumerate() {
            let (i, di, ei) = (y / 4, y / 2 % 2, y % 2);
            for (x, &v) in line.iter().enumerate() {
                let (j, dj, ej) = (x / 4, x / 2 % 2, x % 2);
                out[(((((i * gw + j) * 2 + di) * 2 + dj) * 2 + ei) * 2) + ej] = v;
            }
        }
    }
    Tensor::new(vec![b, m, rows], dlt)
}

/// What the mask head's backward needs of its forward: each layer's output, channels-last in
/// tap order (`[B, 4·G², C1]` for the first three, `[B, 16·G², C2]` for the last two).
#[derive(Clone, Debug)]
pub struct UpscaleTape {
    h0: Tensor,
    n0: Tensor,
    g0: Tensor,
    h1: Tensor,
    g1: Tensor,
}

impl UpscaleTape {
    /// A tape from the layers' outputs `h0, n0, g0 [B, 4·G², C1]` (the first transposed
    /// convolution, its norm, its GELU) and `h1, g1 [B, 16·G², C2]` (the second and its GELU),
    /// rows in the taps' order: for a backend that computes them fused.
    pub fn from_layers(h0: Tensor, n0: Tensor, g0: Tensor, h1: Tensor, g1: Tensor) -> UpscaleTape {
        UpscaleTape { h0, n0, g0, h1, g1 }
    }

    /// The layers' outputs in the order of [`UpscaleTape::from_layers`].
    pub fn layers(&self) -> [&Tensor; 5] {
        [&self.h0, &self.n0, &self.g0, &self.h1, &self.g1]
    }
}

/// The mask head's layers up to the last GELU, keeping each output.
fn upscale_activations<B: Backend + ?Sized>(
    be: &B,
    keys: &Tensor,
    grid: (usize, usize),
    up: &Upscaling<'_>,
    hyper: &Tensor,
) -> Result<UpscaleTape> {
    let (b, _, c1, c2, _) = upscale_masks_dims(keys, grid, up, hyper)?;
    let gg = grid.0 * grid.1;
    let (w0, b0) = conv_transpose_taps(be, up.conv0.0, up.conv0.1)?;
    let (w1, b1) = conv_transpose_taps(be, up.conv1.0, up.conv1.1)?;
    let h0 = be.linear(keys, &w0, Some(&b0))?.reshape(vec![b, 4 * gg, c1])?;
    let n0 = be.layer_norm(&h0, up.norm.0, up.norm.1, up.norm.2)?;
    let g0 = be.gelu_out(&n0)?;
    let h1 = be.linear(&g0, &w1, Some(&b1))?.reshape(vec![b, 16 * gg, c2])?;
    let g1 = be.gelu_out(&h1)?;
    Ok(UpscaleTape { h0, n0, g0, h1, g1 })
}

/// [`Backend::upscale_masks`] as the composition of
/// [`crate::backend::upscale_masks_composed`], keeping what
/// [`upscale_masks_backward_taped_composed`] needs: the logits `[B, M, 4G_h, 4G_w]` and the tape
/// (the default of [`Backend::upscale_masks_taped`]).
pub fn upscale_masks_taped_composed<B: Backend + ?Sized>(
    be: &B,
    keys: &Tensor,
    grid: (usize, usize),
    up: &Upscaling<'_>,
    hyper: &Tensor,
) -> Result<(Tensor, UpscaleTape)> {
    let tape = upscale_activations(be, keys, grid, up, hyper)?;
    Ok((taps_to_pixels(be, be.bmm_nt(&tape.g1, hyper)?, grid)?, tape))
}

/// Mask logits in the upscaling's tap order `[B, 16·G², M]` put on the image grid
/// `[B, M, 4G_h, 4G_w]` (the inverse of [`pixels_to_taps`]).
pub(crate) fn taps_to_pixels<B: Backend + ?Sized>(
    be: &B,
    logits: Tensor,
    (gh, gw): (usize, usize),
) -> Result<Tensor> {
    let (b, m) = (logits.dim(0), logits.dim(2));
    // Row ((((i·G_w + j)·2 + di)·2 + dj)·2 + ei)·2 + ej is pixel (4i + 2di + ei, 4j + 2dj + ej):
    // the masks first, then (i, j, di, dj, ei, ej) → (i, di, ei, j, dj, ej), two permutes of
    // rank at most 6 (what a device copy kernel takes).
    let logits = be.permute(&logits, &[0, 2, 1])?.reshape(vec![b * m * gh, gw, 2, 2, 2, 2])?;
    be.permute(&logits, &[0, 2, 4, 1, 3, 5])?.reshape(vec![b, m, 4 * gh, 4 * gw])
}

/// [`Backend::upscale_masks_backward`] by the backward ops of the layers
/// [`crate::backend::upscale_masks_composed`] is made of: the forward is recomputed
/// channels-last ([`upscale_masks_taped_composed`] without the logits), then reversed by
/// [`upscale_masks_backward_taped_composed`].
pub fn upscale_masks_backward_composed<B: Backend + ?Sized>(
    be: &B,
    keys: &Tensor,
    grid: (usize, usize),
    up: &Upscaling<'_>,
    hyper: &Tensor,
    dlogits: &Tensor,
    params: bool,
) -> Result<UpscaleGrads> {
    let tape = upscale_activations(be, keys, grid, up, hyper)?;
    upscale_masks_backward_taped_composed(be, keys, grid, up, hyper, &tape, dlogits, params)
}

/// The backward of [`Backend::upscale_masks_taped`] from its tape: each layer reversed by its backward op.
#[allow(clippy::too_many_arguments)]
pub fn upscale_masks_backward_taped_composed<B: Backend + ?Sized>(
    be: &B,
    keys: &Tensor,
    grid: (usize, usize),
    up: &Upscaling<'_>,
    hyper: &Tensor,
    tape: &UpscaleTape,
    dlogits: &Tensor,
    params: bool,
) -> Result<UpscaleGrads> {
    let (b, d, c1, c2, m) = upscale_masks_dims(keys, grid, up, hyper)?;
    let gg = grid.0 * grid.1;
    dlogits.expect_shape("upscale_masks_backward", "dlogits", &[b, m, 4 * grid.0, 4 * grid.1])?;
    tape.g1.expect_shape("upscale_masks_backward", "tape", &[b, 16 * gg, c2])?;
    let UpscaleTape { h0, n0, g0, h1, g1 } = tape;
    let (w0, _) = conv_transpose_taps(be, up.conv0.0, up.conv0.1)?;
    let (w1, _) = conv_transpose_taps(be, up.conv1.0, up.conv1.1)?;
    // dlogits [B, M, 4G_h, 4G_w] back to tap order (the inverse of the forward's pixel
    // placement): `dlt [B, M, 16·G²]`, the transpose of the logits' gradient in tap order.
    let dlt = pixels_to_taps(dlogits, (b, m), grid)?;
    // logits = g1 · hyperᵀ: dg1 = dltᵀ · hyper, dhyper = dlt · g1.
    let dg1 = be.bmm_tn(&dlt, hyper)?;
    let dhyper = be.bmm(&dlt, g1)?;
    let dh1 = be.gelu_backward(h1, dg1)?;
    let l1 = be.linear_backward(g0, &w1, &dh1.reshape(vec![b, 4 * gg, 4 * c2])?, params)?;
    let dn0 = be.gelu_backward(n0, l1.dx)?;
    let ln = be.layer_norm_backward(h0, up.norm.0, up.norm.2, &dn0, params)?;
    let l0 = be.linear_backward(keys, &w0, &ln.dx.reshape(vec![b, gg, 4 * c1])?, params)?;
    let pair = |w: Option<Tensor>,
                bb: Option<Tensor>,
                cin: usize,
                cout: usize|
     -> Result<Option<(Tensor, Tensor)>> {
        match (w, bb) {
            (Some(w), Some(bb)) => Ok(Some(taps_to_conv_transpose(&w, &bb, cin, cout)?)),
            _ => Ok(None),
        }
    };
    Ok(UpscaleGrads {
        dkeys: l0.dx,
        dhyper,
        conv0: pair(l0.dw, l0.db, d, c1)?,
        norm: ln.dw.zip(ln.db),
        conv1: pair(l1.dw, l1.db, c1, c2)?,
    })
}
