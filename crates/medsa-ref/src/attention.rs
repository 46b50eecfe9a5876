//! Attention with SAM's decomposed relative-position bias (spec 3.3), blocked by head and query
//! block so that at most one `QUERY_BLOCK × Nk` logit tile per worker is alive.

use crate::act::{dot, fast_exp, softmax_row};
use crate::gemm::{matmul_into, matmul_new, MatRef, Par};
use medsa_core::backend::{attention_dims, AttentionDims};
use medsa_core::{RelPos, Result, Tensor};
use rayon::prelude::*;

/// Query rows per work item. 64 rows × 4096 keys × 4 B = 1 MiB of logits per worker.
pub const QUERY_BLOCK: usize = 64;

pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    rel: Option<RelPos<'_>>,
) -> Result<Tensor> {
    Ok(attention_impl(q, k, v, scale, rel, false)?.0)
}

/// [`attention`] with the log-sum-exp of every softmax row `[BH, Nq]`, for the backward.
pub(crate) fn attention_lse(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    rel: Option<RelPos<'_>>,
) -> Result<(Tensor, Tensor)> {
    let (o, lse) = attention_impl(q, k, v, scale, rel, true)?;
    Ok((o, lse.expect("asked for")))
}

fn attention_impl(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    rel: Option<RelPos<'_>>,
    want_lse: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let dims = attention_dims(q, k, v, rel)?;
    let (bh, nq, nk, d, dv) = (dims.bh, dims.nq, dims.nk, dims.d, dims.dv);
    let mut out = Tensor::zeros(vec![bh, nq, dv])?;
    // Kept for every row (bh·nq values) and dropped unless asked for.
    let mut lse = Tensor::zeros(vec![bh, nq])?;
    if nq == 0 || bh == 0 {
        return Ok((out, want_lse.then_some(lse)));
    }
    let (qs, ks, vs) = (q.data(), k.data(), v.data());
    if !want_lse && dims.grids.is_none() && bh * nq.div_ceil(QUERY_BLOCK) < rayon::current_num_threads() {
        // Too few query blocks to occupy every thread (e.g. the decoder's few token queries
        // over 4096 image keys): split each head's keys instead.
        for (h, oh) in out.data_mut().chunks_exact_mut(nq * dv).enumerate() {
            split_keys(
                &qs[h * nq * d..(h + 1) * nq * d],
                &ks[h * nk * d..(h + 1) * nk * d],
                &vs[h * nk * dv..(h + 1) * nk * dv],
                oh,
                (nq, nk, d, dv),
                scale,
            );
        }
        return Ok((out, None));
    }
    let kt = k.permute(&[0, 2, 1])?;
    let kts = kt.data();
    out.data_mut().par_chunks_mut(nq * dv).zip(lse.data_mut().par_chunks_mut(nq)).enumerate().for_each(
        |(h, (oh, lh))| {
            let qh_ = &qs[h * nq * d..(h + 1) * nq * d];
            let kth = &kts[h * nk * d..(h + 1) * nk * d];
            let vh_ = &vs[h * nk * dv..(h + 1) * nk * dv];
            oh.par_chunks_mut(QUERY_BLOCK * dv).zip(lh.par_chunks_mut(QUERY_BLOCK)).enumerate().for_each(
                |(blk, (ob, lb))| {
                    let n0 = blk * QUERY_BLOCK;
                    let rows = ob.len() / dv.max(1);
                    let mut logits =
                        logits_block(&qh_[n0 * d..(n0 + rows) * d], kth, n0, &dims, scale, rel, None);
                    for (row, l) in logits.chunks_exact_mut(nk).zip(lb.iter_mut()) {
                        *l = softmax_row(row);
                    }
                    matmul_into(
                        ob,
                        MatRef::row_major(&logits, rows, nk),
                        MatRef::row_major(vh_, nk, dv),
                        false,
                        Par::Seq,
                    );
                },
            );
        },
    );
    Ok((out, want_lse.then_some(lse)))
}

/// The scaled, biased logits `[rows, Nk]` of one head's query rows `n0..n0 + rows`
/// (`qb` = those rows of q, `kt` = the head's keys transposed, `[D, Nk]`, which `gemm` packs
/// with contiguous reads). With `lse` (one value per row), the softmax weights
/// `exp(logit − lse)` instead, in the same pass over the tile.
pub(crate) fn logits_block(
    qb: &[f32],
    kt: &[f32],
    n0: usize,
    dims: &AttentionDims,
    scale: f32,
    rel: Option<RelPos<'_>>,
    lse: Option<&[f32]>,
) -> Vec<f32> {
    let (nk, d) = (dims.nk, dims.d);
    let rows = qb.len() / d.max(1);
    let mut logits = matmul_new(MatRef::row_major(qb, rows, d), MatRef::row_major(kt, d, nk), Par::Seq);
    let shift = |ri: usize| lse.map_or(0.0, |l| l[ri]);
    match rel.zip(dims.grids) {
        Some((r, ((_, qw), (kh, kw)))) => {
            let (rh, rw) = (r.rh.data(), r.rw.data());
            let (mut bias_h, mut bias_w) = (vec![0f32; kh], vec![0f32; kw]);
            for (ri, row) in logits.chunks_exact_mut(nk).enumerate() {
                let n = n0 + ri;
                let (i, j) = (n / qw, n % qw);
                let qv = &qb[ri * d..(ri + 1) * d];
                let l = shift(ri);
                for (kk, bv) in bias_h.iter_mut().enumerate() {
                    *bv = dot(qv, &rh[(i * kh + kk) * d..][..d]) - l;
                }
                for (c, bv) in bias_w.iter_mut().enumerate() {
                    *bv = dot(qv, &rw[(j * kw + c) * d..][..d]);
                }
                for (kk, seg) in row.chunks_exact_mut(kw).enumerate() {
                    let bh_ = bias_h[kk];
                    if lse.is_some() {
                        seg.iter_mut().zip(&bias_w).for_each(|(x, &bw)| *x = fast_exp(*x * scale + bh_ + bw));
                    } else {
                        seg.iter_mut().zip(&bias_w).for_each(|(x, &bw)| *x = *x * scale + bh_ + bw);
                    }
                }
            }
        }
        None => {
            for (ri, row) in logits.chunks_exact_mut(nk).enumerate() {
                let l = shift(ri);
                if lse.is_some() {
                    row.iter_mut().for_each(|x| *x = fast_exp(*x * scale - l));
                } else {
                    row.iter_mut().for_each(|x| *x *= scale);
                }
            }
        }
    }
    logits
}

/// One head without relative positions, its keys split into ranges that run in parallel (as in
/// flash decoding): each range yields per-query maxima, sums of exponentials and unnormalised
/// outputs, merged by rescaling to the overall maxima. Each range's products are one-threaded
/// and its logits are computed transposed, `k · qᵀ`, which packs better with few queries.
fn split_keys(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    dims: (usize, usize, usize, usize),
    scale: f32,
) {
    let (nq, nk, d, dv) = dims;
    let ranges = (2 * rayon::current_num_threads()).min(nk.div_ceil(64)).max(1);
    let per = nk.div_ceil(ranges);
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..ranges)
        .into_par_iter()
        .filter(|&r| r * per < nk)
        .map(|r| {
            let (k0, kn) = (r * per, per.min(nk - r * per));
            let mut lt = vec![0f32; kn * nq];
            matmul_into(
                &mut lt,
                MatRef::row_major(&k[k0 * d..(k0 + kn) * d], kn, d),
                MatRef::transposed(q, d, nq),
                false,
                Par::Seq,
            );
            let mut max = vec![f32::NEG_INFINITY; nq];
            for row in lt.chunks_exact_mut(nq) {
                for (m, x) in max.iter_mut().zip(row.iter_mut()) {
                    *x *= scale;
                    *m = if *x > *m { *x } else { *m };
                }
            }
            let mut sum = vec![0f32; nq];
            for row in lt.chunks_exact_mut(nq) {
                for ((x, &m), s) in row.iter_mut().zip(&max).zip(sum.iter_mut()) {
                    *x = fast_exp(*x - m);
                    *s += *x;
                }
            }
            let mut o = vec![0f32; nq * dv];
            matmul_into(
                &mut o,
                MatRef::transposed(&lt, nq, kn),
                MatRef::row_major(&v[k0 * dv..(k0 + kn) * dv], kn, dv),
                false,
                Par::Seq,
            );
            (max, sum, o)
        })
        .collect();
    for (i, row) in out.chunks_exact_mut(dv.max(1)).enumerate().take(nq) {
        let m = parts.iter().fold(f32::NEG_INFINITY, |a, p| if p.0[i] > a { p.0[i] } else { a });
        row.fill(0.0);
        let mut denom = 0f32;
        for (pm, ps, po) in &parts {
            let w = fast_exp(pm[i] - m);
            denom += w * ps[i];
            row.iter_mut().zip(&po[i * dv..(i + 1) * dv]).for_each(|(a, &b)| *a += w * b);
        }
        let inv = 1.0 / denom;
        row.iter_mut().for_each(|a| *a *= inv);
    }
}
