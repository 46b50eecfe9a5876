//! SAM's mask decoder with its two-way transformer (spec 5.1, 5.2), the official Med-SA variant
//! (5.3), and the paper's decoder adapters: HyP-Adpt, MLP_Adapter and Image_Adapter (5.4).

use crate::config::{DecoderConfig, DecoderVariant, HypConfig};
use crate::nn::{Adapter, LayerNorm, Linear, Mlp, Trace};
use crate::prompt::{DenseEmbedding, PromptEmbeddings};
use crate::weights::WeightLoader;
use crate::{Error, Result};
use medsa_core::{Backend, Tensor, Upscaling};

/// How [`DecoderAttention`] evaluates one call. All three compute the same function; they differ
/// in the order of the products, so in cost and (within f32 rounding) in the last bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    /// The spec's order: project q, k and v, attend per head, project out.
    Direct,
    /// For a few queries over many keys (tokens → image): each query is pulled back through
    /// its head's key projection, `q_h·k_hᵀ = (q_h W_k,h) · k_inᵀ`, so the many keys are never
    /// projected; the value projection is applied after the weighted sum, because softmax rows
    /// sum to one. The key bias only shifts each softmax row and drops out.
    FewQueries,
    /// For many queries over a few keys (image → tokens): each key is pulled back through its
    /// head's query projection, and each value pushed through the output projection, so the
    /// many queries are never projected and the head outputs never materialised.
    FewKeys,
}

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

    /// The cheapest [`AttentionPath`] for `nq` queries and `nk` keys, by multiply-add count.
    pub fn path(&self, nq: usize, nk: usize) -> AttentionPath {
        let (h, di, d) = (self.num_heads, self.q.w.dim(0), self.q.w.dim(1));
        let direct = 2 * (nq + nk) * d * di + 2 * nq * nk * di;
        let few_queries = 4 * nq * d * di + 2 * h * nq * nk * d;
        let few_keys = 4 * nk * d * di + 2 * h * nq * nk * d;
        if few_queries < direct && few_queries <= few_keys {
            AttentionPath::FewQueries
        } else if few_keys < direct {
            AttentionPath::FewKeys
        } else {
            AttentionPath::Direct
        }
    }

    /// `q [B, Nq, D]`, `k, v [B, Nk, D]` → `[B, Nq, D]`, by the cheapest path.
    pub fn forward(&self, be: &dyn Backend, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        self.forward_with(be, q, k, v, self.path(q.dim(1), k.dim(1)))
    }

    /// [`DecoderAttention::forward`] by a chosen path.
    pub fn forward_with(
        &self,
        be: &dyn Backend,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        path: AttentionPath,
    ) -> Result<Tensor> {
        if self.num_heads == 0 || !self.q.w.dim(0).is_multiple_of(self.num_heads) {
            return Err(Error::Config(format!(
                "decoder attention: {} heads do not divide width {}",
                self.num_heads,
                self.q.w.dim(0)
            )));
        }
        let (b, nk) = (k.dim(0), k.dim(1));
        if q.rank() != 3 || k.rank() != 3 || v.shape() != [b, nk, v.dim(2)] || q.dim(0) != b {
            return Err(Error::Config(format!(
                "decoder attention: q {:?}, k {:?}, v {:?} are not [B, N, D] with shared B and keys",
                q.shape(),
                k.shape(),
                v.shape()
            )));
        }
        match path {
            AttentionPath::Direct => self.direct(be, q, k, v),
            AttentionPath::FewQueries => self.few_queries(be, q, k, v),
            AttentionPath::FewKeys => self.few_keys(be, q, k, v),
        }
    }

    /// (heads, head dim, softmax scale).
    fn heads(&self) -> (usize, usize, f32) {
        let h = self.num_heads;
        let hd = self.q.w.dim(0) / h;
        (h, hd, 1.0 / (hd as f32).sqrt())
    }

    fn direct(&self, be: &dyn Backend, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (nh, _, scale) = self.heads();
        let split = |t: Tensor| -> Result<Tensor> {
            let (b, n, c) = (t.dim(0), t.dim(1), t.dim(2));
            Ok(t.reshape(vec![b, n, nh, c / nh])?.permute(&[0, 2, 1, 3])?.reshape(vec![b * nh, n, c / nh])?)
        };
        let (b, nq) = (q.dim(0), q.dim(1));
        let qh = split(self.q.forward(be, q)?)?;
        let kh = split(self.k.forward(be, k)?)?;
        let vh = split(self.v.forward(be, v)?)?;
        let c = qh.dim(2);
        let o = be.attention(&qh, &kh, &vh, scale, None)?;
        let o = o.reshape(vec![b, nh, nq, c])?.permute(&[0, 2, 1, 3])?.reshape(vec![b, nq, nh * c])?;
        self.out.forward(be, &o)
    }

    fn few_queries(&self, be: &dyn Backend, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (h, hd, scale) = self.heads();
        let (b, nq) = (q.dim(0), q.dim(1));
        let (dk, dv) = (self.k.w.dim(1), self.v.w.dim(1));
        // qt[b, (h, i)] = q_h[b, i] · W_k,h: [H, B·Nq, hd] · [H, hd, Dk].
        let qh = per_head(self.q.forward(be, q)?, h)?;
        let qt = be.bmm(&qh, &self.k.w.clone().reshape(vec![h, hd, dk])?)?;
        let qt = qt.reshape(vec![h, b, nq, dk])?.permute(&[1, 0, 2, 3])?.reshape(vec![b, h * nq, dk])?;
        // One softmax row per (head, query) over the raw keys, weighting the raw values.
        let o = be.attention(&qt, k, v, scale, None)?;
        // Value projection after the sum: [H, B·Nq, Dv] · W_v,hᵀ [H, Dv, hd], plus its bias.
        let o = o.reshape(vec![b, h, nq, dv])?.permute(&[1, 0, 2, 3])?.reshape(vec![h, b * nq, dv])?;
        let wvt = self.v.w.clone().reshape(vec![h, hd, dv])?.permute(&[0, 2, 1])?;
        let heads = be.bmm(&o, &wvt)?.reshape(vec![h, b, nq, hd])?.permute(&[1, 2, 0, 3])?;
        let mut heads = heads.reshape(vec![b, nq, h * hd])?;
        if let Some(bv) = &self.v.b {
            heads.add_broadcast_assign(bv)?;
        }
        self.out.forward(be, &heads)
    }

    fn few_keys(&self, be: &dyn Backend, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (h, hd, scale) = self.heads();
        let (b, nq, nk) = (q.dim(0), q.dim(1), k.dim(1));
        let dq = self.q.w.dim(1);
        let kp = self.k.forward(be, k)?;
        // kt[b, :, (h, j)] = scale · W_q,hᵀ k_h[b, j]: [H, B·Nk, hd] · [H, hd, Dq], laid out as
        // [B, Dq, H·Nk] so that q · kt gives every head's logits at once.
        let kt = be.bmm(&per_head(kp.clone(), h)?, &self.q.w.clone().reshape(vec![h, hd, dq])?)?;
        let kt = kt
            .reshape(vec![h, b, nk, dq])?
            .permute(&[1, 3, 0, 2])?
            .reshape(vec![b, dq, h * nk])?
            .scale(scale);
        let mut logits = be.bmm(q, &kt)?;
        // The query bias contributes scale · b_q,h · k_h[b, j], the same for every query row.
        if let Some(bq) = &self.q.b {
            let kpd = kp.data();
            let shift: Vec<f32> = (0..b * h * nk)
                .map(|idx| {
                    let (s, hh, j) = (idx / (h * nk), idx / nk % h, idx % nk);
                    let kv = &kpd[(s * nk + j) * h * hd + hh * hd..][..hd];
                    scale * kv.iter().zip(&bq.data()[hh * hd..(hh + 1) * hd]).map(|(a, c)| a * c).sum::<f32>()
                })
                .collect();
            for (s, rows) in logits.data_mut().chunks_exact_mut(nq * h * nk).enumerate() {
                let add = &shift[s * h * nk..(s + 1) * h * nk];
                rows.chunks_exact_mut(h * nk).for_each(|r| r.iter_mut().zip(add).for_each(|(x, a)| *x += a));
            }
        }
        let p = be.softmax(logits.reshape(vec![b * nq * h, nk])?)?.reshape(vec![b, nq, h * nk])?;
        self.weigh_values(be, &p, v)
    }

    /// `p [B, Nq, H·Nk]` (softmax weights per head over `v`'s Nk tokens) applied to the values
    /// pushed through the output projection: `vo[b, (h, j)] = W_o,h · v_h[b, j]`, so the head
    /// outputs are never formed. Returns `[B, Nq, Dout]` with the output bias.
    fn weigh_values(&self, be: &dyn Backend, p: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (h, hd, _) = self.heads();
        let (b, nk, dout) = (v.dim(0), v.dim(1), self.out.w.dim(0));
        let vh = per_head(self.v.forward(be, v)?, h)?;
        let wot = self.out.w.clone().reshape(vec![dout, h, hd])?.permute(&[1, 2, 0])?;
        let vo = be.bmm(&vh, &wot)?.reshape(vec![h, b, nk, dout])?.permute(&[1, 0, 2, 3])?;
        let mut out = be.bmm(p, &vo.reshape(vec![b, h * nk, dout])?)?;
        if let Some(bo) = &self.out.b {
            out.add_broadcast_assign(bo)?;
        }
        Ok(out)
    }

    /// Tokens → image with the image side projected in advance (`k`, `v` per head
    /// `[H, N, hd]`, shared by every set): only the token queries `q [B, T, D]` are projected,
    /// and all sets' queries of a head attend together.
    fn forward_projected_kv(&self, be: &dyn Backend, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (h, hd, scale) = self.heads();
        let (b, t) = (q.dim(0), q.dim(1));
        let o = be.attention(&per_head(self.q.forward(be, q)?, h)?, k, v, scale, None)?;
        let o = o.reshape(vec![h, b, t, hd])?.permute(&[1, 2, 0, 3])?.reshape(vec![b, t, h * hd])?;
        self.out.forward(be, &o)
    }

    /// Image → tokens with the image queries projected in advance (`q` per head `[H, N, hd]`,
    /// shared by every set); the token keys `k` and values `v` `[B, T, D]` are projected here.
    fn forward_projected_q(&self, be: &dyn Backend, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (h, _, scale) = self.heads();
        let (n, b, t) = (q.dim(1), k.dim(0), k.dim(1));
        let kt = per_head(self.k.forward(be, k)?, h)?.permute(&[0, 2, 1])?.scale(scale);
        let logits = be.bmm(q, &kt)?.reshape(vec![h, n, b, t])?.permute(&[2, 1, 0, 3])?;
        let p = be.softmax(logits.reshape(vec![b * n * h, t])?)?.reshape(vec![b, n, h * t])?;
        self.weigh_values(be, &p, v)
    }
}

/// `[B, N, H·hd]` → `[H, B·N, hd]`.
pub(crate) fn per_head(t: Tensor, h: usize) -> Result<Tensor> {
    let (b, n, c) = (t.dim(0), t.dim(1), t.dim(2));
    Ok(t.reshape(vec![b * n, h, c / h])?.permute(&[1, 0, 2])?)
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

/// The decoder's prompt-independent inputs for one image (or N images), prepared once: SAM's
/// `image_embeddings` and `image_pe` in the token layout of the two-way transformer.
#[derive(Clone, Debug)]
pub struct ImageContext {
    /// Image embeddings as tokens `[N, G_h·G_w, D]`.
    pub tokens: Tensor,
    /// Dense positional encoding as tokens `[G_h·G_w, D]`.
    pub pe: Tensor,
    /// The embedding grid `(G_h, G_w)`.
    pub grid: (usize, usize),
    /// The first two-way block's prompt-independent work, if prepared
    /// ([`MaskDecoder::prepare`]).
    pub first_layer: Option<FirstLayer>,
}

/// What the first two-way block computes from the image alone, for prompts without a mask:
/// its keys (image tokens plus `no_mask_embed`) are then the same for every prompt, and so are
/// the key and value projections of tokens → image and the query projection of image → tokens.
#[derive(Clone, Debug)]
pub struct FirstLayer {
    /// The `no_mask_embed` it was prepared with `[D]`.
    no_mask: Vec<f32>,
    /// Keys `[G², D]`.
    keys: Tensor,
    /// Tokens → image key projection of `keys + pe`, per head `[H, G², hd]`.
    t2i_k: Tensor,
    /// Tokens → image value projection of `keys`, per head `[H, G², hd]`.
    t2i_v: Tensor,
    /// Image → tokens query projection of `keys + pe`, per head `[H, G², hd]`.
    i2t_q: Tensor,
}

/// The image side of a two-way block's input.
enum ImageSide<'a> {
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

impl ImageContext {
    /// From `image [N, D, G_h, G_w]` and the prompt encoder's `dense_pe [1, D, G_h, G_w]`.
    pub fn new(image: &Tensor, dense_pe: &Tensor) -> Result<Self> {
        if image.rank() != 4 || dense_pe.shape() != [1, image.dim(1), image.dim(2), image.dim(3)] {
            return Err(Error::Config(format!(
                "image embeddings {:?} with dense PE {:?}: want [N, D, H, W] and [1, D, H, W]",
                image.shape(),
                dense_pe.shape()
            )));
        }
        let (n, d, gh, gw) = (image.dim(0), image.dim(1), image.dim(2), image.dim(3));
        Ok(ImageContext {
            tokens: image.clone().reshape(vec![n, d, gh * gw])?.permute(&[0, 2, 1])?,
            pe: dense_pe.clone().reshape(vec![d, gh * gw])?.permute(&[1, 0])?,
            grid: (gh, gw),
            first_layer: None,
        })
    }

    /// The keys `[B, G², D]` of `b` prompt sets: image tokens plus the dense prompt embedding.
    fn keys(&self, dense: &DenseEmbedding, b: usize) -> Result<Tensor> {
        let (n, gg, d) = (self.tokens.dim(0), self.tokens.dim(1), self.tokens.dim(2));
        let image = |s: usize| &self.tokens.data()[if n == 1 { 0 } else { s * gg * d }..][..gg * d];
        match dense {
            DenseEmbedding::NoMask(v) => {
                if v.numel() != d {
                    return Err(Error::Config(format!(
                        "no-mask embedding of {} values for width {d}",
                        v.numel()
                    )));
                }
                let mut out = Vec::with_capacity(b * gg * d);
                for s in 0..b {
                    out.extend_from_slice(image(s));
                }
                for row in out.chunks_exact_mut(d.max(1)) {
                    row.iter_mut().zip(v.data()).for_each(|(a, c)| *a += c);
                }
                Ok(Tensor::new(vec![b, gg, d], out)?)
            }
            DenseEmbedding::Masks(t) => {
                if t.shape() != [b, d, self.grid.0, self.grid.1] {
                    return Err(Error::Config(format!(
                        "dense prompt {:?} does not fit {b} sets on a {:?} grid of width {d}",
                        t.shape(),
                        self.grid
                    )));
                }
                let mut keys = t.clone().reshape(vec![b, d, gg])?.permute(&[0, 2, 1])?;
                for (s, set) in keys.data_mut().chunks_exact_mut(gg * d).enumerate() {
                    set.iter_mut().zip(image(s)).for_each(|(a, v)| *a += v);
                }
                Ok(keys)
            }
        }
    }
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
        let (mlp1, mlp2) = cfg.variant.mlp_keys();
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
        let mut ctx = ImageContext::new(image, dense_pe)?;
        let (n, gg, d) = (ctx.tokens.dim(0), ctx.tokens.dim(1), ctx.tokens.dim(2));
        if let (Some(layer), 1) = (self.layers.first(), n) {
            let keys = ctx.keys(&DenseEmbedding::NoMask(no_mask.clone()), 1)?;
            let x = with_pe(&keys, &ctx.pe)?;
            let (t2i, i2t) = (&layer.cross_t2i, &layer.cross_i2t);
            ctx.first_layer = Some(FirstLayer {
                no_mask: no_mask.data().to_vec(),
                t2i_k: per_head(t2i.k.forward(be, &x)?, t2i.num_heads)?,
                t2i_v: per_head(t2i.v.forward(be, &keys)?, t2i.num_heads)?,
                i2t_q: per_head(i2t.q.forward(be, &x)?, i2t.num_heads)?,
                keys: keys.reshape(vec![gg, d])?,
            });
        }
        Ok(ctx)
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
        let (n_img, gg) = (image.tokens.shape().first().copied().unwrap_or(0), gh * gw);
        if image.tokens.shape() != [n_img, gg, d] || image.pe.shape() != [gg, d] || (n_img != 1 && n_img != b)
        {
            return Err(Error::Config(format!(
                "image tokens {:?} and PE {:?} on a {:?} grid do not fit {b} prompt sets of width {d}",
                image.tokens.shape(),
                image.pe.shape(),
                image.grid
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
        // Without a mask prompt the first block's image side is the same for every prompt.
        let side = match (&image.first_layer, &prompts.dense) {
            (Some(f), DenseEmbedding::NoMask(v)) if v.data() == f.no_mask.as_slice() => ImageSide::Shared(f),
            _ => ImageSide::Keys(image.keys(&prompts.dense, b)?),
        };
        let key_pe = &image.pe;

        // The paper's HyP-Adpt: pooled prompt vector e = mean of the valid sparse tokens.
        let hyp_e = if self.cfg.hyp.is_some() { Some(pooled_prompt(prompts)?) } else { None };
        if let Some(e) = &hyp_e {
            trace.record("hyp.prompt", e);
        }

        let (hs, keys) = self.transformer(be, &tokens, side, key_pe, hyp_e.as_ref(), trace)?;

        // Heads.
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
        let masks = self.masks(be, &keys, (gh, gw), &hyper)?;
        let iou = self.iou_head.forward(be, &hs.narrow(1, 0, 1)?.reshape(vec![b, d])?)?;
        Ok(DecoderOutput { masks, iou })
    }

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
        let up = Upscaling {
            conv0: (&self.up0.0, &self.up0.1),
            norm: (&self.up1.w, &self.up1.b, self.up1.eps),
            conv1: (&self.up3.0, &self.up3.1),
        };
        Ok(be.upscale_masks(keys, grid, &up, hyper)?)
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
        let h = be.conv_transpose2x2(&x, &self.up0.0, &self.up0.1)?;
        let h = be.gelu(self.up1.forward2d(be, &h)?)?;
        let up = be.gelu(be.conv_transpose2x2(&h, &self.up3.0, &self.up3.1)?)?;
        let (c8, uh, uw) = (up.dim(1), up.dim(2), up.dim(3));
        Ok(be.bmm(hyper, &up.reshape(vec![b, c8, uh * uw])?)?.reshape(vec![b, hyper.dim(1), uh, uw])?)
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
                Tensor::cat(&sets, 0)?.reshape(vec![queries.dim(0), f.keys.dim(0), f.keys.dim(1)])?
            }
        };
        let q = queries.add(query_pe)?;
        let k = with_pe(&keys, key_pe)?;
        let a = self.final_attn.forward(be, &q, &k, &keys)?;
        queries.add_assign(&a)?;
        let queries = self.norm_final.forward(be, &queries)?;
        trace.record("transformer.queries", &queries);
        Ok((queries, keys))
    }
}

/// `keys [B, G², D]` plus the positional encoding `key_pe [G², D]` of every set.
pub(crate) fn with_pe(keys: &Tensor, key_pe: &Tensor) -> Result<Tensor> {
    let n = key_pe.numel();
    if keys.rank() != 3 || key_pe.shape() != &keys.shape()[1..] {
        return Err(Error::Config(format!("keys {:?} with PE {:?}", keys.shape(), key_pe.shape())));
    }
    let mut sum = keys.clone();
    for set in sum.data_mut().chunks_exact_mut(n.max(1)) {
        set.iter_mut().zip(key_pe.data()).for_each(|(a, b)| *a += b);
    }
    Ok(sum)
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
        // keys + key_pe serves both cross-attentions: the keys change only at the block's end.
        let image = match image {
            ImageSide::Keys(keys) => BlockImage::Own { with_pe: with_pe(&keys, key_pe)?, keys },
            ImageSide::Shared(f) => BlockImage::Shared(f),
        };
        let q = queries.add(query_pe)?;
        let a = match &image {
            BlockImage::Own { keys, with_pe } => self.cross_t2i.forward(be, &q, with_pe, keys)?,
            BlockImage::Shared(f) => self.cross_t2i.forward_projected_kv(be, &q, &f.t2i_k, &f.t2i_v)?,
        };
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
        let mut k1 = match &image {
            BlockImage::Own { keys, with_pe } => {
                let mut k1 = self.cross_i2t.forward(be, with_pe, &q, &queries)?;
                k1.add_assign(keys)?;
                k1
            }
            BlockImage::Shared(f) => {
                let mut k1 = self.cross_i2t.forward_projected_q(be, &f.i2t_q, &q, &queries)?;
                k1.add_broadcast_assign(&f.keys)?;
                k1
            }
        };
        if let Some(ad) = &self.adapters {
            let ia = ad.image.forward(be, &k1)?;
            k1.add_assign(&ia)?;
        }
        let keys = self.norm4.forward(be, &k1)?;
        Ok((queries, keys))
    }
}
