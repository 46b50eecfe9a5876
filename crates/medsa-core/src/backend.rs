//! The op set the network is written against.
//!
//! Every method documents its shapes and the section of `MEDSA_SPEC.md` it implements. Tensors
//! are channel-last `[B,H,W,C]` in the image encoder, channel-first `[B,C,H,W]` in the neck and
//! the prompt encoder's mask path, and `[B,T,C]` for tokens (spec 2): the mask decoder works on
//! the image embedding as tokens `[B, H·W, C]` throughout, up to [`Backend::upscale_masks`]. All ops compute in f32; a backend that stores bf16
//! documents its tolerance (ARCHITECTURE.md, "Precision and tolerances").

use crate::backward::{
    upscale_masks_backward_composed, AttentionGrads, ConvGrads, HyperChainGrads, LinearGrads, NormGrads,
    UpscaleGrads,
};
use crate::{Error, Result, Tensor};

pub use crate::shape::*;

/// Decomposed relative-position bias of SAM's attention (spec 3.3), already expanded by
/// [`Backend::rel_pos_table`] for the query and key grids.
#[derive(Clone, Copy, Debug)]
pub struct RelPos<'a> {
    /// `Rh`, shape `[qh, kh, hd]`.
    pub rh: &'a Tensor,
    /// `Rw`, shape `[qw, kw, hd]`.
    pub rw: &'a Tensor,
}

/// Interpolation mode of [`Backend::resize`]; every mode follows PyTorch's `F.interpolate`
/// with `align_corners=False` and no antialiasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Cubic convolution, A = -0.75, taps clamped at the border (spec 3.2).
    Bicubic,
    /// Linear in each axis, source index clamped at 0 (spec 6.1).
    Bilinear,
    /// `src = floor(o * in / out)` (spec 6.2).
    Nearest,
}

/// Geometry of [`Backend::conv2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Stride in both axes.
    pub stride: usize,
    /// Zero padding on each side, both axes.
    pub padding: usize,
    /// Channel groups (1 = dense, `Cin` = depthwise).
    pub groups: usize,
}

impl Conv2d {
    /// A dense convolution with the given stride and padding.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2d { stride, padding, groups: 1 }
    }
}

/// How SD-Trans groups the slices of the encoder batch into depth sequences (spec 3.6,
/// golden README 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DepthGrouping {
    /// The paper's intent: a sequence is one token position of one window across the D slices
    /// of one volume. Default for new models.
    PerWindow,
    /// The official code: D consecutive entries of the window-partitioned batch (mixes windows
    /// of one slice in windowed blocks). Needed for official 3D checkpoints.
    Official,
}

/// An activation fused after a layer ([`Backend::linear_act`]); also the adapters' bottleneck
/// activation (spec 1 row 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact-erf GELU: the official code.
    Gelu,
    /// ReLU: the paper.
    Relu,
}

/// The weights of SAM's mask upscaling (spec 5.1, `output_upscaling`): two 2×2 stride-2
/// transposed convolutions with a LayerNorm2d and GELU between them and a GELU after.
#[derive(Clone, Copy, Debug)]
pub struct Upscaling<'a> {
    /// First transposed convolution `[D, C1, 2, 2]` and its bias `[C1]`.
    pub conv0: (&'a Tensor, &'a Tensor),
    /// LayerNorm2d weight and bias `[C1]` and its epsilon.
    pub norm: (&'a Tensor, &'a Tensor, f32),
    /// Second transposed convolution `[C1, C2, 2, 2]` and its bias `[C2]`.
    pub conv1: (&'a Tensor, &'a Tensor),
}

/// The op set of the network (ARCHITECTURE.md, "Tensors and the Backend").
///
/// Implementations: `medsa_ref::Cpu` (the reference, f32) and `medsa_kernels::Cuda`.
/// Every method validates its operand shapes and returns [`crate::Error::Shape`] on mismatch.
pub trait Backend: Send + Sync {
    /// Short name for messages and reports (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    // ---- Placement and data movement (ARCHITECTURE.md, "Tensors and the Backend"). ----

    /// `t` placed where this backend computes: a device backend uploads it once (weights when a
    /// model is prepared, an image before the encoder) and returns a device tensor; the default
    /// (a host backend) returns it in host memory.
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        t.clone().into_host()
    }

    /// `t` in host memory (one download if it is on a device): the explicit end of a chain of
    /// device ops, with the device's error instead of [`Tensor::data`]'s panic.
    fn download(&self, t: Tensor) -> Result<Tensor> {
        t.into_host()
    }

    /// [`Tensor::permute`] where the tensor lives.
    fn permute(&self, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
        x.permute(perm)
    }

    /// [`Tensor::narrow`] where the tensor lives.
    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        x.narrow(dim, start, len)
    }

    /// [`Tensor::cat`] where the tensors live: `parts` joined along `dim` (the decoder's tokens,
    /// its stacked hypernetwork outputs).
    fn cat(&self, parts: &[&Tensor], dim: usize) -> Result<Tensor> {
        Tensor::cat(parts, dim)
    }

    /// `x · s` elementwise, where the tensor lives.
    fn scale(&self, x: Tensor, s: f32) -> Result<Tensor> {
        Ok(x.scale(s))
    }

    /// `a + s·b` elementwise, `b` broadcast onto `a` by [`broadcast_run`] (a residual add, a
    /// position table on a batch, a per-set row on every query). Each element is `a + (s·b)`
    /// rounded twice, so `s = 1` is exactly `a + b`.
    fn add_scaled(&self, a: Tensor, b: &Tensor, s: f32) -> Result<Tensor> {
        let mut a = a;
        a.add_scaled_assign(b, s)?;
        Ok(a)
    }

    /// The host backend that computes beside this one: itself for a CPU backend, the CPU
    /// reference for a device backend. Small host-side work (the prompt encoder's few point
    /// and box tokens) runs there, then goes up in one [`Backend::upload`].
    fn host(&self) -> &dyn Backend;

    /// `y = x · wᵀ + b` over the last axis (spec 2): `x [..., in]`, `w [out, in]`,
    /// `b [out]` → `[..., out]`.
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor>;

    /// `act(x · wᵀ + b)`: [`Backend::linear`] then [`Backend::gelu`] / [`Backend::relu`] (the
    /// default, exactly); a device backend applies bias and activation in one pass after its
    /// GEMM (the MLPs' hidden layers, the adapters' bottlenecks).
    fn linear_act(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
        let y = self.linear(x, w, b)?;
        match act {
            Activation::Gelu => self.gelu(y),
            Activation::Relu => self.relu(y),
        }
    }

    /// `r + s·(x · wᵀ + b)`: a layer writing into the residual stream `r` (the MLPs' second
    /// layer, the adapters' up-projection), `r` of exactly the layer's output shape. The default
    /// is [`Backend::linear`] then [`Backend::add_scaled`], exactly; a device backend adds bias,
    /// scale and residual in one pass after its GEMM.
    fn linear_add(&self, r: Tensor, x: &Tensor, w: &Tensor, b: Option<&Tensor>, s: f32) -> Result<Tensor> {
        crate::shape::linear_add_residual(&r, x, w)?;
        let y = self.linear(x, w, b)?;
        self.add_scaled(r, &y, s)
    }

    /// Matrix product `a [M, K] · b [K, N]` → `[M, N]`.
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// Batched matrix product `a [B, M, K] · b [B, K, N]` → `[B, M, N]`.
    fn bmm(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// Batched product with the second operand transposed, `a [B, M, K] · b [B, N, K]ᵀ`
    /// → `[B, M, N]`: a product against keys or values stored one row per token, without a
    /// transposed copy of them. The default transposes `b` and calls [`Backend::bmm`].
    fn bmm_nt(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        b.expect_rank("bmm_nt", "b", 3)?;
        self.bmm(a, &self.permute(b, &[0, 2, 1])?)
    }

    /// Batched product with the first operand transposed, `a [B, K, M]ᵀ · b [B, K, N]`
    /// → `[B, M, N]`: a weight or input gradient summed over the rows both operands share
    /// (tokens), without a transposed copy of `a`. The default transposes `a` and calls
    /// [`Backend::bmm`].
    fn bmm_tn(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.expect_rank("bmm_tn", "a", 3)?;
        self.bmm(&self.permute(a, &[0, 2, 1])?, b)
    }

    /// Layer norm over the last axis with biased variance and `eps` inside the square root
    /// (spec 2: 1e-6 in the encoder, 1e-5 in the decoder): `x [..., C]`, `w, b [C]`.
    fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor>;

    /// SAM's `LayerNorm2d` over the channel axis of `x [B, C, H, W]` (spec 3.7), `w, b [C]`.
    fn layer_norm2d(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor>;

    /// Exact (erf) GELU, elementwise (spec 2).
    fn gelu(&self, x: Tensor) -> Result<Tensor>;

    /// [`Backend::gelu`] of a borrowed input, into a new tensor: for training, which keeps the
    /// input for the backward (the default clones it first).
    fn gelu_out(&self, x: &Tensor) -> Result<Tensor> {
        self.gelu(x.clone())
    }

    /// ReLU, elementwise.
    fn relu(&self, x: Tensor) -> Result<Tensor>;

    /// Numerically stable softmax over the last axis.
    fn softmax(&self, x: Tensor) -> Result<Tensor>;

    /// 2-D convolution, `x [B, Cin, H, W]`, `w [Cout, Cin/groups, kh, kw]`, `b [Cout]`
    /// → `[B, Cout, (H + 2p - kh)/s + 1, (W + 2p - kw)/s + 1]` (patch embed 3.2, neck 3.7,
    /// mask downscaling 4).
    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, geom: Conv2d) -> Result<Tensor>;

    /// Transposed convolution with kernel 2 and stride 2 (spec 5.1 step 5): `x [B, Cin, H, W]`,
    /// `w [Cin, Cout, 2, 2]`, `b [Cout]` → `[B, Cout, 2H, 2W]`.
    fn conv_transpose2x2(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// Window partition (spec 3.4): `x [B, H, W, C]` zero-padded bottom/right to multiples of
    /// `window`, returned as `[B·nWh·nWw, window, window, C]` (window index row-major, batch
    /// slowest) together with the padded size `(Hp, Wp)`.
    fn window_partition(&self, x: &Tensor, window: usize) -> Result<(Tensor, (usize, usize))>;

    /// Inverse of [`Backend::window_partition`]: `x [B·nW, w, w, C]` → `[B, H, W, C]`, cropping
    /// the padding of the `(Hp, Wp)` grid to `(H, W)`.
    fn window_unpartition(
        &self,
        x: &Tensor,
        window: usize,
        padded: (usize, usize),
        hw: (usize, usize),
    ) -> Result<Tensor>;

    /// SAM's `get_rel_pos` (spec 3.3): the table `[rows, hd]`, linearly resampled to
    /// `2·max(qs, ks) − 1` rows when it has another size, gathered to `[qs, ks, hd]`.
    fn rel_pos_table(&self, qs: usize, ks: usize, table: &Tensor) -> Result<Tensor>;

    /// Scaled dot-product attention with optional decomposed relative-position bias
    /// (spec 3.3 steps 2-4, decoder attention 5.2):
    /// `q [BH, Nq, d]`, `k [BH, Nk, d]`, `v [BH, Nk, dv]` → `[BH, Nq, dv]`,
    /// `softmax(scale · q kᵀ + bias) v`. With `rel`, the queries lie on a `qh × qw` grid and the
    /// keys on `kh × kw` (the shapes of `rel.rh` / `rel.rw`), and the bias uses the unscaled q.
    /// Implementations never hold all heads' `Nq × Nk` logits at once.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> Result<Tensor>;

    /// [`Backend::attention`] of SAM's encoder straight from its packed qkv projection:
    /// `qkv [B, N, 3·C]` (each token `[q | k | v]`, each `[heads, hd]`, `C = heads·hd`) →
    /// `[B, N, C]` with the heads merged back (spec 3.3). The default unpacks with
    /// [`Backend::permute`] / [`Backend::narrow`] and packs the result back; a device backend
    /// reads q, k, v and writes the output through strides, without those copies.
    fn attention_qkv(
        &self,
        qkv: &Tensor,
        heads: usize,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> Result<Tensor> {
        let (b, n, hd) = attention_qkv_dims(qkv, heads, rel)?;
        let packed = self.permute(&qkv.clone().reshape(vec![b, n, 3, heads, hd])?, &[2, 0, 3, 1, 4])?;
        let part =
            |i: usize| -> Result<Tensor> { self.narrow(&packed, 0, i, 1)?.reshape(vec![b * heads, n, hd]) };
        let o = self.attention(&part(0)?, &part(1)?, &part(2)?, scale, rel)?;
        self.permute(&o.reshape(vec![b, heads, n, hd])?, &[0, 2, 1, 3])?.reshape(vec![b, n, heads * hd])
    }

    /// SD-Trans depth attention (spec 3.6, golden README 5.2). `qkv [N0, P, 3C]` is the qkv
    /// projection of the window-partitioned batch (`N0 = slices·nw` entries of `P` tokens, leading
    /// index `slice·nw + window`); each depth sequence is `depth` entries chosen by `grouping`
    /// ([`depth_row`]), laid on the `closest_numbers(depth)` grid whose expanded tables are
    /// `rel`. Returns the attention output `[N0, P, C]` in the layout of the input, before `proj`.
    /// Implementations read the grouped layout through indices; nothing transposed is written.
    #[allow(clippy::too_many_arguments)]
    fn depth_attention(
        &self,
        qkv: &Tensor,
        heads: usize,
        depth: usize,
        nw: usize,
        grouping: DepthGrouping,
        rel: Option<RelPos<'_>>,
        scale: f32,
    ) -> Result<Tensor>;

    /// HyP-Adpt's generated-weight chain (spec 5.4): for `n` in `0..N`,
    /// `x ← ReLU(LayerNorm_n(x · W[:, n]))` with `x [B, T, r]`, `w [B, N, r, r]` (one weight set
    /// per prompt set), `gamma, beta [N, r]`. Prompt sets never mix.
    fn hyper_chain(&self, x: &Tensor, w: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor>;

    /// SAM's mask head (spec 5.1): the decoder's final keys `[B, G_h·G_w, D]` (tokens, row
    /// `i·G_w + j`) upscaled 4× by `up`, then dotted with each mask token's hypernetwork output
    /// `hyper [B, M, C2]` → low-res mask logits `[B, M, 4G_h, 4G_w]`.
    ///
    /// The provided method composes other ops ([`upscale_masks_composed`]); a backend may fuse it.
    fn upscale_masks(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
    ) -> Result<Tensor> {
        upscale_masks_composed(self, keys, grid, up, hyper)
    }

    /// [`Backend::upscale_masks`] for training: the logits and the tape of the layers' outputs
    /// that [`Backend::upscale_masks_backward_taped`] needs. The provided method
    /// composes other ops ([`crate::backward::upscale_masks_taped_composed`]); a backend may
    /// fuse it.
    fn upscale_masks_taped(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
    ) -> Result<(Tensor, crate::backward::UpscaleTape)> {
        crate::backward::upscale_masks_taped_composed(self, keys, grid, up, hyper)
    }

    /// Backward of [`Backend::upscale_masks_taped`] from its tape for the logit gradient
    /// `dlogits [B, M, 4G_h, 4G_w]`; with `params`, also the gradients of the upscaling's
    /// weights. The provided method reverses the layers op by op
    /// ([`crate::backward::upscale_masks_backward_taped_composed`]); a backend may fuse it.
    #[allow(clippy::too_many_arguments)]
    fn upscale_masks_backward_taped(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
        tape: &crate::backward::UpscaleTape,
        dlogits: &Tensor,
        params: bool,
    ) -> Result<UpscaleGrads> {
        crate::backward::upscale_masks_backward_taped_composed(
            self, keys, grid, up, hyper, tape, dlogits, params,
        )
    }

    /// Resize `x [B, C, H, W]` to `[B, C, out.0, out.1]` (spec 3.2, 6.1, 6.2).
    fn resize(&self, x: &Tensor, out: (usize, usize), mode: ResizeMode) -> Result<Tensor>;

    /// Random-Fourier positional encoding (spec 4): coordinates `c [..., 2]` in `[0, 1]` (x, y),
    /// `gaussian [2, F]` → `[..., 2F]` = `concat(sin(2π u), cos(2π u))` with `u = (2c − 1) G`.
    fn pe_encode(&self, coords: &Tensor, gaussian: &Tensor) -> Result<Tensor>;

    // ---- Backward ops (ARCHITECTURE.md, "Training"; gradients in [`crate::backward`]). ----

    /// Backward of [`Backend::linear`]: `dx = dy · w`; with `params`, `dw = Σ_rows dyᵀ x` and
    /// `db = Σ_rows dy`. `x [..., in]`, `w [out, in]`, `dy [..., out]`.
    fn linear_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, params: bool) -> Result<LinearGrads>;

    /// Backward of [`Backend::layer_norm`] over the last axis of `x [..., C]` (the forward's
    /// input), `w [C]`, `dy` shaped like `x`. With `params`, also `dw` and `db`.
    fn layer_norm_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        eps: f32,
        dy: &Tensor,
        params: bool,
    ) -> Result<NormGrads>;

    /// Backward of [`Backend::gelu`]: `dy · GELU'(x)` for the forward's input `x`.
    fn gelu_backward(&self, x: &Tensor, dy: Tensor) -> Result<Tensor>;

    /// Backward of [`Backend::relu`]: `dy` where the forward's output `y` is positive, else 0.
    fn relu_backward(&self, y: &Tensor, dy: Tensor) -> Result<Tensor>;

    /// Backward of [`Backend::softmax`] over the last axis from its output `y`:
    /// `dx = y ∘ (dy − Σ_row y ∘ dy)`.
    fn softmax_backward(&self, y: &Tensor, dy: Tensor) -> Result<Tensor>;

    /// [`Backend::attention`] that also returns the log-sum-exp of every softmax row
    /// `[BH, Nq]` (natural log, of the scaled and biased logits), which is all
    /// [`Backend::attention_backward`] keeps of the `Nq × Nk` weights.
    fn attention_lse(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> Result<(Tensor, Tensor)>;

    /// Backward of [`Backend::attention`] from the forward's output `o` and log-sum-exp `lse`
    /// ([`Backend::attention_lse`]) and the output gradient `dout [BH, Nq, dv]`, computed block
    /// by block in the manner of FlashAttention-2 (the weights are recomputed from `lse`, never
    /// all heads' `Nq × Nk` at once). With `rel`, the bias's dependence on q adds
    /// `Σ_j dS_ij (Rh[qh_i, kh_j] + Rw[qw_i, kw_j])` to `dq`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
        o: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
    ) -> Result<AttentionGrads>;

    /// Backward of [`Backend::depth_attention`]: the gradient `[N0, P, 3C]` of `qkv` for the
    /// output gradient `dout [N0, P, C]` (the depth sequences are short, so each one's weights
    /// are recomputed in place).
    #[allow(clippy::too_many_arguments)]
    fn depth_attention_backward(
        &self,
        qkv: &Tensor,
        heads: usize,
        depth: usize,
        nw: usize,
        grouping: DepthGrouping,
        rel: Option<RelPos<'_>>,
        scale: f32,
        dout: &Tensor,
    ) -> Result<Tensor>;

    /// Backward of [`Backend::hyper_chain`] for the forward's operands and the output gradient
    /// `dy [B, T, r]` (the chain is recomputed: it is `N` tiny layers).
    fn hyper_chain_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<HyperChainGrads>;

    /// Backward of [`Backend::conv2d`] (without the bias, whose gradient is `Σ dy` per channel):
    /// `dx` always, `dw` with `params`. `dy` has the forward output's shape.
    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        geom: Conv2d,
        dy: &Tensor,
        params: bool,
    ) -> Result<ConvGrads>;

    /// Backward of [`Backend::upscale_masks`] for the logit gradient `dlogits [B, M, 4G_h, 4G_w]`.
    /// The provided method recomputes the forward and reverses it op by op
    /// ([`upscale_masks_backward_composed`]).
    #[allow(clippy::too_many_arguments)]
    fn upscale_masks_backward(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
        dlogits: &Tensor,
        params: bool,
    ) -> Result<UpscaleGrads> {
        upscale_masks_backward_composed(self, keys, grid, up, hyper, dlogits, params)
    }
}

/// Shapes of [`Backend::upscale_masks`]: `(B, D, C1, C2, M)`, after checking every operand.
pub fn upscale_masks_dims(
    keys: &Tensor,
    grid: (usize, usize),
    up: &Upscaling<'_>,
    hyper: &Tensor,
) -> Result<(usize, usize, usize, usize, usize)> {
    const OP: &str = "upscale_masks";
    keys.expect_rank(OP, "keys", 3)?;
    let (b, d) = (keys.dim(0), keys.dim(2));
    if keys.dim(1) != grid.0 * grid.1 {
        return Err(Error::shape(OP, format!("keys {:?} on a {grid:?} grid", keys.shape())));
    }
    up.conv0.0.expect_rank(OP, "first transposed conv", 4)?;
    let c1 = up.conv0.0.dim(1);
    up.conv0.0.expect_shape(OP, "first transposed conv", &[d, c1, 2, 2])?;
    up.conv0.1.expect_shape(OP, "first transposed conv bias", &[c1])?;
    up.norm.0.expect_shape(OP, "norm weight", &[c1])?;
    up.norm.1.expect_shape(OP, "norm bias", &[c1])?;
    up.conv1.0.expect_rank(OP, "second transposed conv", 4)?;
    let c2 = up.conv1.0.dim(1);
    up.conv1.0.expect_shape(OP, "second transposed conv", &[c1, c2, 2, 2])?;
    up.conv1.1.expect_shape(OP, "second transposed conv bias", &[c2])?;
    hyper.expect_rank(OP, "hypernetwork outputs", 3)?;
    let m = hyper.dim(1);
    hyper.expect_shape(OP, "hypernetwork outputs", &[b, m, c2])?;
    Ok((b, d, c1, c2, m))
}

/// A 2×2 stride-2 transposed convolution `(w [Cin, Cout, 2, 2], b [Cout])` as a linear layer
/// from a pixel's channels to its four output taps: weight `[4·Cout, Cin]` with row
/// `(di·2 + dj)·Cout + o`, bias `[4·Cout]`.
pub fn conv_transpose_taps<B: Backend + ?Sized>(be: &B, w: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let (cin, cout) = (w.dim(0), w.dim(1));
    let wt = be.permute(&w.clone().reshape(vec![cin, cout, 4])?, &[2, 1, 0])?.reshape(vec![4 * cout, cin])?;
    Ok((wt, be.cat(&[b, b, b, b], 0)?))
}

/// [`Backend::upscale_masks`] from `linear`, `layer_norm`, `gelu` and `bmm`, channels-last:
/// each transposed convolution is one linear layer from a pixel to its four taps, so
/// LayerNorm2d is a row LayerNorm and the pixels stay in tap order until the logits are put on
/// the image grid.
pub fn upscale_masks_composed<B: Backend + ?Sized>(
    be: &B,
    keys: &Tensor,
    grid: (usize, usize),
    up: &Upscaling<'_>,
    hyper: &Tensor,
) -> Result<Tensor> {
    // The layers of `backward::upscale_masks_taped_composed` without keeping their outputs: each GELU
    // works in place on the tensor before it.
    let (b, _, c1, c2, _) = upscale_masks_dims(keys, grid, up, hyper)?;
    let gg = grid.0 * grid.1;
    let (w0, b0) = conv_transpose_taps(be, up.conv0.0, up.conv0.1)?;
    let (w1, b1) = conv_transpose_taps(be, up.conv1.0, up.conv1.1)?;
    let h = be.linear(keys, &w0, Some(&b0))?.reshape(vec![b, 4 * gg, c1])?;
    let h = be.gelu(be.layer_norm(&h, up.norm.0, up.norm.1, up.norm.2)?)?;
    let h = be.linear(&h, &w1, Some(&b1))?.reshape(vec![b, 16 * gg, c2])?;
    crate::backward::taps_to_pixels(be, be.bmm_nt(&be.gelu(h)?, hyper)?, grid)
}

/// Leading index in the window-partitioned batch of token `d` of depth sequence `s`
/// (golden README 5.2). `p` = tokens per window, `nw` = windows per slice. Sequence
/// `s = group·p + position`; `official` groups `depth` consecutive entries, `per_window` the same
/// window of the `depth` slices of one volume.
pub fn depth_row(grouping: DepthGrouping, s: usize, d: usize, p: usize, depth: usize, nw: usize) -> usize {
    let group = s / p;
    match grouping {
        DepthGrouping::Official => group * depth + d,
        DepthGrouping::PerWindow => {
            let (volume, window) = (group / nw, group % nw);
            (volume * depth + d) * nw + window
        }
    }
}

/// `closest_numbers(D)` of the official code (spec 3.6): the factor pair `(a, b)`, `a·b = D`,
/// found by walking from `⌊√D⌋`; SD-Trans lays a depth sequence on this `a × b` grid. D = 1 gives
/// `(1, 1)` (the official loop never ends there); D = 0 has no grid: an invalid-argument error.
/// The one version every crate uses.
pub fn closest_numbers(d: usize) -> Result<(usize, usize)> {
    match d {
        0 => Err(crate::Error::arg("closest_numbers", "depth D must be at least 1")),
        1 => Ok((1, 1)),
        _ => {
            let mut a = (d as f64).sqrt().floor() as usize;
            let mut b = a + 1;
            loop {
                match (a * b).cmp(&d) {
                    std::cmp::Ordering::Equal => return Ok((a, b)),
                    std::cmp::Ordering::Less => b += 1,
                    std::cmp::Ordering::Greater => a -= 1,
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::closest_numbers;

    #[test]
    fn closest_numbers_matches_the_official_table() {
        let table = [
            (2, (1, 2)),
            (4, (1, 4)),
            (8, (2, 4)),
            (9, (1, 9)),
            (12, (3, 4)),
            (16, (2, 8)),
            (32, (4, 8)),
            (48, (6, 8)),
            (64, (4, 16)),
            (96, (8, 12)),
            (1, (1, 1)),
            (7, (1, 7)),
        ];
        for (d, want) in table {
            assert_eq!(closest_numbers(d).unwrap(), want, "D = {d}");
        }
        assert!(closest_numbers(0).is_err());
    }
}
