//! Forward-with-tape and backward of the decoder attention in its two factored orders
//! ([`crate::decoder::AttentionPath::FewQueries`] for tokens → image and
//! [`crate::decoder::AttentionPath::FewKeys`] for image → tokens): the many image tokens are
//! never projected, forward or backward, and each product over them is one GEMM the backend runs
//! on every core.
//!
//! With T prompt tokens and N image tokens, the softmax weights `[B, H·T, N]` (or `[B, N, H·T]`)
//! are kept from the forward. This is the one place training keeps attention weights between
//! forward and backward (the encoder's attentions keep only the log-sum-exp): here they are
//! linear in N, not quadratic, and for a handful of tokens smaller than one projection of the
//! image tokens (H·T = 56 for LiteMedSAM with a box, against N x 128), so keeping them costs
//! less than recomputing the logits. Both orders equal the spec's direct order
//! ([`crate::train::layers::attention_forward`]) within f32 rounding; the tests compare the
//! three.

use crate::decoder::attention::per_head;
use crate::decoder::DecoderAttention;
use crate::train::layers::Ctx;
use crate::Result;
use medsa_core::{Backend, Tensor};

/// `[H, B·N, hd]` → `[B, N, H·hd]` (the inverse of [`per_head`]).
fn merge_per_head(t: Tensor, b: usize) -> Result<Tensor> {
    let (h, bn, hd) = (t.dim(0), t.dim(1), t.dim(2));
    Ok(t.permute(&[1, 0, 2])?.reshape(vec![b, bn / b.max(1), h * hd])?)
}

/// `[H, B·T, C]` ↔ `[B, H·T, C]`: the per-head layout of the small products and the per-set
/// layout of the products over image tokens.
fn heads_to_sets(t: Tensor, b: usize) -> Result<Tensor> {
    let (h, bt, c) = (t.dim(0), t.dim(1), t.dim(2));
    let tt = bt / b.max(1);
    Ok(t.reshape(vec![h, b, tt, c])?.permute(&[1, 0, 2, 3])?.reshape(vec![b, h * tt, c])?)
}

/// The inverse of [`heads_to_sets`].
fn sets_to_heads(t: Tensor, h: usize) -> Result<Tensor> {
    let (b, ht, c) = (t.dim(0), t.dim(1), t.dim(2));
    let tt = ht / h.max(1);
    Ok(t.reshape(vec![b, h, tt, c])?.permute(&[1, 0, 2, 3])?.reshape(vec![h, b * tt, c])?)
}

/// The sum of the rows of `t [..., C]`: a bias gradient.
fn row_sum(t: &Tensor) -> Result<Tensor> {
    let c = t.last_dim();
    let mut g = vec![0f32; c];
    for row in t.data().chunks_exact(c.max(1)) {
        g.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
    Ok(Tensor::new(vec![c], g)?)
}

/// (heads, head dim, softmax scale) of `a`.
fn heads(a: &DecoderAttention) -> (usize, usize, f32) {
    let h = a.num_heads;
    let hd = a.q.w.dim(0) / h.max(1);
    (h, hd, 1.0 / (hd as f32).sqrt())
}

/// What the tokens → image attention's backward needs. Its inputs are kept so that callers can
/// hand them over and borrow them back ([`FewQueriesTape::inputs`]) instead of keeping copies.
pub struct FewQueriesTape {
    q_in: Tensor,
    k_in: Tensor,
    v_in: Tensor,
    /// Projected queries per head `[H, B·T, hd]`.
    qh: Tensor,
    /// Queries pulled back through the key projection `[B, H·T, Dk]`.
    qt: Tensor,
    /// Softmax weights `[B, H·T, N]`.
    p: Tensor,
    /// Weighted raw values per head `[H, B·T, Dv]`.
    o2: Tensor,
    /// Head outputs `[B, T, H·hd]` (the output projection's input).
    heads: Tensor,
}

impl FewQueriesTape {
    /// The forward's inputs `(q, k, v)`.
    pub fn inputs(&self) -> (&Tensor, &Tensor, &Tensor) {
        (&self.q_in, &self.k_in, &self.v_in)
    }
}

/// The decoder attention for a few queries `q [B, T, D]` over many keys `k [B, N, Dk]`,
/// `v [B, N, Dv]`: each head's queries pulled back through its key projection, the values
/// projected after the weighted sum (softmax rows sum to one; the key bias drops out).
pub fn few_queries_forward(
    be: &dyn Backend,
    a: &DecoderAttention,
    q_in: Tensor,
    k_in: Tensor,
    v_in: Tensor,
) -> Result<(Tensor, FewQueriesTape)> {
    let (h, hd, scale) = heads(a);
    let b = q_in.dim(0);
    let (dk, dv) = (a.k.w.dim(1), a.v.w.dim(1));
    let qh = per_head(be, a.q.forward(be, &q_in)?, h)?;
    let qt = heads_to_sets(be.bmm(&qh, &a.k.w.clone().reshape(vec![h, hd, dk])?)?, b)?;
    let p = be.softmax(be.bmm_nt(&qt, &k_in)?.scale(scale))?;
    let o2 = sets_to_heads(be.bmm(&p, &v_in)?, h)?;
    let wv = a.v.w.clone().reshape(vec![h, hd, dv])?;
    let mut heads = merge_per_head(be.bmm_nt(&o2, &wv)?, b)?;
    if let Some(bv) = &a.v.b {
        heads.add_broadcast_assign(bv)?;
    }
    let y = a.out.forward(be, &heads)?;
    Ok((y, FewQueriesTape { q_in, k_in, v_in, qh, qt, p, o2, heads }))
}

/// Backward of [`few_queries_forward`] (named `name`): the gradients of `q_in` and, with
/// `image_grads`, of `k_in` and `v_in` (without it, the two products over the image tokens that
/// only they need are skipped).
pub fn few_queries_backward(
    c: &mut Ctx<'_>,
    a: &DecoderAttention,
    name: &str,
    t: &FewQueriesTape,
    dy: &Tensor,
    image_grads: bool,
) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let be = c.be;
    let (h, hd, scale) = heads(a);
    let b = t.q_in.dim(0);
    let (dk, dv) = (a.k.w.dim(1), a.v.w.dim(1));
    let dheads = c.linear(&a.out, &format!("{name}.out_proj"), &t.heads, dy)?;
    c.param(format!("{name}.v_proj.bias"), || row_sum(&dheads))?;
    // heads_h = o2_h · W_v,hᵀ.
    let dh = per_head(be, dheads, h)?;
    let do2 = be.bmm(&dh, &a.v.w.clone().reshape(vec![h, hd, dv])?)?;
    c.param(format!("{name}.v_proj.weight"), || Ok(be.bmm_tn(&dh, &t.o2)?.reshape(vec![h * hd, dv])?))?;
    // o = p · v over the image tokens; p = softmax(scale · qt · kᵀ).
    let d_o = heads_to_sets(do2, b)?;
    let dp = be.bmm_nt(&d_o, &t.v_in)?;
    let ds = be.softmax_backward(&t.p, dp)?.scale(scale);
    let dqt = sets_to_heads(be.bmm(&ds, &t.k_in)?, h)?;
    let image = if image_grads {
        let dk_in = be.bmm_tn(&ds, &t.qt)?;
        let dv_in = be.bmm_tn(&t.p, &d_o)?;
        Some((dk_in, dv_in))
    } else {
        None
    };
    // qt_h = qh_h · W_k,h; the key bias drops out of the softmax.
    let wk = a.k.w.clone().reshape(vec![h, hd, dk])?;
    let dqh = be.bmm_nt(&dqt, &wk)?;
    c.param(format!("{name}.k_proj.weight"), || Ok(be.bmm_tn(&t.qh, &dqt)?.reshape(vec![h * hd, dk])?))?;
    c.param(format!("{name}.k_proj.bias"), || Ok(Tensor::zeros(vec![h * hd])?))?;
    let dq = c.linear(&a.q, &format!("{name}.q_proj"), &t.q_in, &merge_per_head(dqh, b)?)?;
    Ok((dq, image))
}

/// What the image → tokens attention's backward needs besides its image-side input, which the
/// caller keeps anyway (it is the token → image attention's key input): the token inputs, kept
/// as in [`FewQueriesTape`].
pub struct FewKeysTape {
    k_in: Tensor,
    v_in: Tensor,
    /// Projected keys per head `[H, B·T, hd]`.
    kh: Tensor,
    /// Projected values per head `[H, B·T, hd]`.
    vh: Tensor,
    /// Keys pulled back through the query projection, scaled `[B, H·T, Dq]`.
    kt: Tensor,
    /// Softmax weights `[B, N, H·T]` (a softmax over T per head).
    p: Tensor,
    /// Values pushed through the output projection `[B, H·T, Dout]`.
    vo: Tensor,
}

/// The decoder attention for many queries `q [B, N, Dq]` over a few keys `k [B, T, D]`,
/// `v [B, T, D]`: each head's keys pulled back through its query projection (the query bias
/// adds `scale · b_q,h · k_h` to every row of a head's logits), each value pushed through the
/// output projection, so the image tokens are never projected and the head outputs never formed.
pub fn few_keys_forward(
    be: &dyn Backend,
    a: &DecoderAttention,
    q_in: &Tensor,
    k_in: Tensor,
    v_in: Tensor,
) -> Result<(Tensor, FewKeysTape)> {
    let (h, hd, scale) = heads(a);
    let (b, n, tt) = (q_in.dim(0), q_in.dim(1), k_in.dim(1));
    let (dq, dout) = (a.q.w.dim(1), a.out.w.dim(0));
    let kh = per_head(be, a.k.forward(be, &k_in)?, h)?;
    let kt = heads_to_sets(be.bmm(&kh, &a.q.w.clone().reshape(vec![h, hd, dq])?)?.scale(scale), b)?;
    let mut logits = be.bmm_nt(q_in, &kt)?;
    if let Some(bq) = &a.q.b {
        let shift = query_bias_shift(&kh, bq, scale, b)?;
        for (s, rows) in logits.data_mut().chunks_exact_mut((n * h * tt).max(1)).enumerate() {
            let add = &shift[s * h * tt..(s + 1) * h * tt];
            rows.chunks_exact_mut(h * tt).for_each(|r| r.iter_mut().zip(add).for_each(|(x, v)| *x += v));
        }
    }
    let p = be.softmax(logits.reshape(vec![b * n * h, tt])?)?.reshape(vec![b, n, h * tt])?;
    let vh = per_head(be, a.v.forward(be, &v_in)?, h)?;
    let wot = a.out.w.clone().reshape(vec![dout, h, hd])?.permute(&[1, 2, 0])?;
    let vo = heads_to_sets(be.bmm(&vh, &wot)?, b)?;
    let mut y = be.bmm(&p, &vo)?;
    if let Some(bo) = &a.out.b {
        y.add_broadcast_assign(bo)?;
    }
    Ok((y, FewKeysTape { k_in, v_in, kh, vh, kt, p, vo }))
}

/// `scale · b_q,h · k_h[s, j]` for every set `s`, head `h` and token `j`, laid out `[B, H·T]`.
fn query_bias_shift(kh: &Tensor, bq: &Tensor, scale: f32, b: usize) -> Result<Vec<f32>> {
    let (h, bt, hd) = (kh.dim(0), kh.dim(1), kh.dim(2));
    let tt = bt / b.max(1);
    let mut shift = vec![0f32; b * h * tt];
    for hh in 0..h {
        let bias = &bq.data()[hh * hd..(hh + 1) * hd];
        for (r, k) in kh.data()[hh * bt * hd..(hh + 1) * bt * hd].chunks_exact(hd.max(1)).enumerate() {
            let (s, j) = (r / tt.max(1), r % tt.max(1));
            shift[(s * h + hh) * tt + j] = scale * k.iter().zip(bias).map(|(x, y)| x * y).sum::<f32>();
        }
    }
    Ok(shift)
}

/// Backward of [`few_keys_forward`] at the same `q_in` (named `name`): the gradients of `q_in`
/// with `image_grads` (without it, the product over the image tokens only it needs is skipped),
/// and of `k_in` and `v_in`.
pub fn few_keys_backward(
    c: &mut Ctx<'_>,
    a: &DecoderAttention,
    name: &str,
    t: &FewKeysTape,
    q_in: &Tensor,
    dy: &Tensor,
    image_grads: bool,
) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    let be = c.be;
    let (h, hd, scale) = heads(a);
    let (b, n, tt) = (q_in.dim(0), q_in.dim(1), t.k_in.dim(1));
    let (dq, dout) = (a.q.w.dim(1), a.out.w.dim(0));
    c.param(format!("{name}.out_proj.bias"), || row_sum(dy))?;
    // y = p · vo over the tokens.
    let dp = be.bmm_nt(dy, &t.vo)?;
    let dvo = sets_to_heads(be.bmm_tn(&t.p, dy)?, h)?;
    let dl = be
        .softmax_backward(&t.p.clone().reshape(vec![b * n * h, tt])?, dp.reshape(vec![b * n * h, tt])?)?
        .reshape(vec![b, n, h * tt])?;
    let dq_in = if image_grads { Some(be.bmm(&dl, &t.kt)?) } else { None };
    let dkt = sets_to_heads(be.bmm_tn(&dl, q_in)?.scale(scale), h)?;
    // vo_h = vh_h · W_o,hᵀ.
    let wo = a.out.w.clone().reshape(vec![dout, h, hd])?.permute(&[1, 0, 2])?;
    let dvh = be.bmm(&dvo, &wo)?;
    c.param(format!("{name}.out_proj.weight"), || {
        Ok(be.bmm_tn(&dvo, &t.vh)?.permute(&[1, 0, 2])?.reshape(vec![dout, h * hd])?)
    })?;
    // kt_h = scale · kh_h · W_q,h (dkt is scaled above); the query bias shift is
    // scale · b_q,h · kh_h, whose gradient is the sum of each logit column's gradient.
    let wq = a.q.w.clone().reshape(vec![h, hd, dq])?;
    let mut dkh = be.bmm_nt(&dkt, &wq)?;
    c.param(format!("{name}.q_proj.weight"), || Ok(be.bmm_tn(&t.kh, &dkt)?.reshape(vec![h * hd, dq])?))?;
    if let Some(bq) = &a.q.b {
        let mut dshift = vec![0f32; b * h * tt];
        for (s, rows) in dl.data().chunks_exact((n * h * tt).max(1)).enumerate() {
            let acc = &mut dshift[s * h * tt..(s + 1) * h * tt];
            rows.chunks_exact(h * tt).for_each(|r| acc.iter_mut().zip(r).for_each(|(a, v)| *a += v));
        }
        let mut dbq = vec![0f32; h * hd];
        let bt = b * tt;
        let kd = t.kh.data();
        for (idx, k) in dkh.data_mut().chunks_exact_mut(hd.max(1)).enumerate() {
            let (hh, r) = (idx / bt.max(1), idx % bt.max(1));
            let g = scale * dshift[(r / tt.max(1) * h + hh) * tt + r % tt.max(1)];
            let bias = &bq.data()[hh * hd..(hh + 1) * hd];
            k.iter_mut().zip(bias).for_each(|(x, y)| *x += g * y);
            let kv = &kd[idx * hd..(idx + 1) * hd];
            dbq[hh * hd..(hh + 1) * hd].iter_mut().zip(kv).for_each(|(x, y)| *x += g * y);
        }
        c.param(format!("{name}.q_proj.bias"), || Ok(Tensor::new(vec![h * hd], dbq)?))?;
    }
    let dk = c.linear(&a.k, &format!("{name}.k_proj"), &t.k_in, &merge_per_head(dkh, b)?)?;
    let dv = c.linear(&a.v, &format!("{name}.v_proj"), &t.v_in, &merge_per_head(dvh, b)?)?;
    Ok((dq_in, dk, dv))
}
