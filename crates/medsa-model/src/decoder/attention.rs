//! The decoder's multi-head attention with internal downsampling (spec 5.2), evaluated by the
//! cheapest of three orders of its products ([`AttentionPath`]), and the prepared-image forms the
//! first two-way block uses.

use crate::nn::Linear;
use crate::weights::WeightLoader;
use crate::{Error, Result};
use medsa_core::{Backend, Tensor};

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
    pub(super) fn load(wl: &mut WeightLoader, p: &str, d: usize, heads: usize, down: usize) -> Self {
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
            let t = be.permute(&t.reshape(vec![b, n, nh, c / nh])?, &[0, 2, 1, 3])?;
            Ok(t.reshape(vec![b * nh, n, c / nh])?)
        };
        let (b, nq) = (q.dim(0), q.dim(1));
        let qh = split(self.q.forward(be, q)?)?;
        let kh = split(self.k.forward(be, k)?)?;
        let vh = split(self.v.forward(be, v)?)?;
        let c = qh.dim(2);
        let o = be.attention(&qh, &kh, &vh, scale, None)?;
        let o = be.permute(&o.reshape(vec![b, nh, nq, c])?, &[0, 2, 1, 3])?.reshape(vec![b, nq, nh * c])?;
        self.out.forward(be, &o)
    }

    fn few_queries(&self, be: &dyn Backend, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (h, hd, scale) = self.heads();
        let (b, nq) = (q.dim(0), q.dim(1));
        let (dk, dv) = (self.k.w.dim(1), self.v.w.dim(1));
        // qt[b, (h, i)] = q_h[b, i] · W_k,h: [H, B·Nq, hd] · [H, hd, Dk].
        let qh = per_head(be, self.q.forward(be, q)?, h)?;
        let qt = be.bmm(&qh, &self.k.w.clone().reshape(vec![h, hd, dk])?)?;
        let qt = be.permute(&qt.reshape(vec![h, b, nq, dk])?, &[1, 0, 2, 3])?.reshape(vec![b, h * nq, dk])?;
        // One softmax row per (head, query) over the raw keys, weighting the raw values.
        let o = be.attention(&qt, k, v, scale, None)?;
        // Value projection after the sum: [H, B·Nq, Dv] · W_v,hᵀ [H, Dv, hd], plus its bias.
        let o = be.permute(&o.reshape(vec![b, h, nq, dv])?, &[1, 0, 2, 3])?.reshape(vec![h, b * nq, dv])?;
        let wvt = be.permute(&self.v.w.clone().reshape(vec![h, hd, dv])?, &[0, 2, 1])?;
        let heads = be.permute(&be.bmm(&o, &wvt)?.reshape(vec![h, b, nq, hd])?, &[1, 2, 0, 3])?;
        let mut heads = heads.reshape(vec![b, nq, h * hd])?;
        if let Some(bv) = &self.v.b {
            heads = be.add_scaled(heads, bv, 1.0)?;
        }
        self.out.forward(be, &heads)
    }

    fn few_keys(&self, be: &dyn Backend, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (h, hd, scale) = self.heads();
        let (b, nq, nk) = (q.dim(0), q.dim(1), k.dim(1));
        let dq = self.q.w.dim(1);
        let kp = per_head(be, self.k.forward(be, k)?, h)?;
        // kt[b, :, (h, j)] = scale · W_q,hᵀ k_h[b, j]: [H, B·Nk, hd] · [H, hd, Dq], laid out as
        // [B, Dq, H·Nk] so that q · kt gives every head's logits at once.
        let kt = be.bmm(&kp, &self.q.w.clone().reshape(vec![h, hd, dq])?)?;
        let kt = be.permute(&kt.reshape(vec![h, b, nk, dq])?, &[1, 3, 0, 2])?.reshape(vec![b, dq, h * nk])?;
        let mut logits = be.bmm(q, &be.scale(kt, scale)?)?;
        // The query bias contributes scale · b_q,h · k_h[b, j], the same for every query row:
        // [H, B·Nk, hd] · [H, hd, 1], laid out as one [B, 1, H·Nk] row per set.
        if let Some(bq) = &self.q.b {
            let shift = be.bmm(&kp, &bq.clone().reshape(vec![h, hd, 1])?)?;
            let shift =
                be.permute(&shift.reshape(vec![h, b, nk])?, &[1, 0, 2])?.reshape(vec![b, 1, h * nk])?;
            logits = be.add_scaled(logits, &shift, scale)?;
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
        let vh = per_head(be, self.v.forward(be, v)?, h)?;
        let wot = be.permute(&self.out.w.clone().reshape(vec![dout, h, hd])?, &[1, 2, 0])?;
        let vo = be.permute(&be.bmm(&vh, &wot)?.reshape(vec![h, b, nk, dout])?, &[1, 0, 2, 3])?;
        let mut out = be.bmm(p, &vo.reshape(vec![b, h * nk, dout])?)?;
        if let Some(bo) = &self.out.b {
            out = be.add_scaled(out, bo, 1.0)?;
        }
        Ok(out)
    }

    /// Tokens → image with the image side projected in advance (`k`, `v` per head
    /// `[H, N, hd]`, shared by every set): only the token queries `q [B, T, D]` are projected,
    /// and all sets' queries of a head attend together.
    pub(super) fn forward_projected_kv(
        &self,
        be: &dyn Backend,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let (h, hd, scale) = self.heads();
        let (b, t) = (q.dim(0), q.dim(1));
        let o = be.attention(&per_head(be, self.q.forward(be, q)?, h)?, k, v, scale, None)?;
        let o = be.permute(&o.reshape(vec![h, b, t, hd])?, &[1, 2, 0, 3])?.reshape(vec![b, t, h * hd])?;
        self.out.forward(be, &o)
    }

    /// Image → tokens with the image queries projected in advance (`q` per head `[H, N, hd]`,
    /// shared by every set); the token keys `k` and values `v` `[B, T, D]` are projected here.
    pub(super) fn forward_projected_q(
        &self,
        be: &dyn Backend,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let (h, _, scale) = self.heads();
        let (n, b, t) = (q.dim(1), k.dim(0), k.dim(1));
        let kt = be.scale(be.permute(&per_head(be, self.k.forward(be, k)?, h)?, &[0, 2, 1])?, scale)?;
        let logits = be.permute(&be.bmm(q, &kt)?.reshape(vec![h, n, b, t])?, &[2, 1, 0, 3])?;
        let p = be.softmax(logits.reshape(vec![b * n * h, t])?)?.reshape(vec![b, n, h * t])?;
        self.weigh_values(be, &p, v)
    }
}

/// `[B, N, H·hd]` → `[H, B·N, hd]`.
pub(crate) fn per_head(be: &dyn Backend, t: Tensor, h: usize) -> Result<Tensor> {
    let (b, n, c) = (t.dim(0), t.dim(1), t.dim(2));
    Ok(be.permute(&t.reshape(vec![b * n, h, c / h])?, &[1, 0, 2])?)
}
