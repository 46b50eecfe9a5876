//! The op set the network is written against.
//!
//! Every method documents its shapes and the section of `MEDSA_SPEC.md` it implements. Tensors
//! are channel-last `[B,H,W,C]` in the image encoder, channel-first `[B,C,H,W]` in the neck and
//! decoder, and `[B,T,C]` for tokens (spec 2). All ops compute in f32; a backend that stores bf16
//! documents its tolerance (ARCHITECTURE.md, "Precision and tolerances").

use crate::{Result, Tensor};

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

/// The op set of the network (ARCHITECTURE.md, "Tensors and the Backend").
///
/// Implementations: `medsa_ref::Cpu` (the reference, f32) and `medsa_kernels::Cuda`.
/// Every method validates its operand shapes and returns [`crate::Error::Shape`] on mismatch.
pub trait Backend: Send + Sync {
    /// Short name for messages and reports (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// `y = x · wᵀ + b` over the last axis (spec 2): `x [..., in]`, `w [out, in]`,
    /// `b [out]` → `[..., out]`.
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor>;

    /// Matrix product `a [M, K] · b [K, N]` → `[M, N]`.
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// Batched matrix product `a [B, M, K] · b [B, K, N]` → `[B, M, N]`.
    fn bmm(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;

    /// Layer norm over the last axis with biased variance and `eps` inside the square root
    /// (spec 2: 1e-6 in the encoder, 1e-5 in the decoder): `x [..., C]`, `w, b [C]`.
    fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor>;

    /// SAM's `LayerNorm2d` over the channel axis of `x [B, C, H, W]` (spec 3.7), `w, b [C]`.
    fn layer_norm2d(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor>;

    /// Exact (erf) GELU, elementwise (spec 2).
    fn gelu(&self, x: Tensor) -> Result<Tensor>;

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

    /// Resize `x [B, C, H, W]` to `[B, C, out.0, out.1]` (spec 3.2, 6.1, 6.2).
    fn resize(&self, x: &Tensor, out: (usize, usize), mode: ResizeMode) -> Result<Tensor>;

    /// Random-Fourier positional encoding (spec 4): coordinates `c [..., 2]` in `[0, 1]` (x, y),
    /// `gaussian [2, F]` → `[..., 2F]` = `concat(sin(2π u), cos(2π u))` with `u = (2c − 1) G`.
    fn pe_encode(&self, coords: &Tensor, gaussian: &Tensor) -> Result<Tensor>;
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
/// `(1, 1)` (the official loop never ends there); D = 0 has no grid.
pub fn closest_numbers(d: usize) -> Option<(usize, usize)> {
    match d {
        0 => None,
        1 => Some((1, 1)),
        _ => {
            let mut a = (d as f64).sqrt().floor() as usize;
            let mut b = a + 1;
            loop {
                match (a * b).cmp(&d) {
                    std::cmp::Ordering::Equal => return Some((a, b)),
                    std::cmp::Ordering::Less => b += 1,
                    std::cmp::Ordering::Greater => a -= 1,
                }
            }
        }
    }
}

/// Checked dimensions of a [`Backend::attention`] call, shared by every backend so that they
/// accept and reject the same operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch × heads.
    pub bh: usize,
    /// Queries.
    pub nq: usize,
    /// Keys (at least one).
    pub nk: usize,
    /// Query/key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
    /// Query and key grids `((qh, qw), (kh, kw))` of the relative-position bias.
    pub grids: Option<((usize, usize), (usize, usize))>,
}

/// Validates the operands of [`Backend::attention`].
pub fn attention_dims(q: &Tensor, k: &Tensor, v: &Tensor, rel: Option<RelPos<'_>>) -> Result<AttentionDims> {
    const OP: &str = "attention";
    q.expect_rank(OP, "q", 3)?;
    k.expect_rank(OP, "k", 3)?;
    v.expect_rank(OP, "v", 3)?;
    let (bh, nq, d) = (q.dim(0), q.dim(1), q.dim(2));
    let (nk, dv) = (k.dim(1), v.dim(2));
    k.expect_shape(OP, "k", &[bh, nk, d])?;
    v.expect_shape(OP, "v", &[bh, nk, dv])?;
    if nk == 0 {
        return Err(crate::Error::shape(OP, "no keys"));
    }
    let grids = match rel {
        Some(r) => {
            r.rh.expect_rank(OP, "Rh", 3)?;
            r.rw.expect_rank(OP, "Rw", 3)?;
            let (qh, kh) = (r.rh.dim(0), r.rh.dim(1));
            let (qw, kw) = (r.rw.dim(0), r.rw.dim(1));
            if qh * qw != nq || kh * kw != nk || r.rh.dim(2) != d || r.rw.dim(2) != d {
                return Err(crate::Error::shape(
                    OP,
                    format!(
                        "Rh {:?} / Rw {:?} do not fit q {:?}, k {:?}",
                        r.rh.shape(),
                        r.rw.shape(),
                        q.shape(),
                        k.shape()
                    ),
                ));
            }
            Some(((qh, qw), (kh, kw)))
        }
        None => None,
    };
    Ok(AttentionDims { bh, nq, nk, d, dv, grids })
}

/// Checked dimensions of a [`Backend::depth_attention`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthDims {
    /// Entries of the window-partitioned batch.
    pub n0: usize,
    /// Tokens per entry.
    pub p: usize,
    /// Channels C.
    pub c: usize,
    /// Head width.
    pub hd: usize,
    /// The depth grid `(dh, dw)`, `dh·dw = depth`.
    pub grid: (usize, usize),
}

/// Validates the operands of [`Backend::depth_attention`]; without tables the grid is
/// [`closest_numbers`]`(depth)`.
pub fn depth_attention_dims(
    qkv: &Tensor,
    heads: usize,
    depth: usize,
    nw: usize,
    rel: Option<RelPos<'_>>,
) -> Result<DepthDims> {
    const OP: &str = "depth_attention";
    qkv.expect_rank(OP, "qkv", 3)?;
    let (n0, p, c3) = (qkv.dim(0), qkv.dim(1), qkv.dim(2));
    if c3 % 3 != 0 || heads == 0 || (c3 / 3) % heads != 0 || depth == 0 || nw == 0 || n0 % (depth * nw) != 0 {
        return Err(crate::Error::shape(
            OP,
            format!("qkv {:?}, heads {heads}, depth {depth}, windows {nw}", qkv.shape()),
        ));
    }
    let (c, hd) = (c3 / 3, c3 / 3 / heads);
    let grid = match rel {
        Some(r) => {
            let (gh, gw) = (r.rh.dim(0), r.rw.dim(0));
            if r.rh.shape() != [gh, gh, hd] || r.rw.shape() != [gw, gw, hd] || gh * gw != depth {
                return Err(crate::Error::shape(
                    OP,
                    format!(
                        "tables {:?} / {:?} do not describe a grid of {depth} tokens",
                        r.rh.shape(),
                        r.rw.shape()
                    ),
                ));
            }
            (gh, gw)
        }
        None => closest_numbers(depth).unwrap_or((1, depth)),
    };
    Ok(DepthDims { n0, p, c, hd, grid })
}
