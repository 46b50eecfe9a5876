//! Attention backward in the manner of FlashAttention-2: the forward saves only the output and
//! the log-sum-exp of each softmax row (`attention::attention_lse`); the backward recomputes one query
//! block's weights at a time from it, so at most two `BACKWARD_BLOCK × Nk` tiles (the weights and
//! their gradient) per worker are alive.
//! The decomposed relative-position bias (spec 3.3) depends on q, so its gradient reaches `dq`
//! through the two small tables. Also the SD-Trans depth attention backward.

use crate::act::{dot, lane_sum, softmax_row};
use crate::attention::logits_block;
use crate::gemm::{matmul_into, matmul_new, MatRef, Par};
use medsa_core::backend::{attention_dims, depth_attention_dims, depth_row};
use medsa_core::backward::AttentionGrads;
use medsa_core::{DepthGrouping, Error, RelPos, Result, Tensor};
use rayon::prelude::*;

/// Query rows per backward block: twice the forward's, so that the two products that add into
/// the head's whole `dK` and `dV` (inner dimension = rows) run half as often (about 5 % faster
/// than 64 rows for ViT-B's global attention, measured interleaved on an AVX2 machine).
const BACKWARD_BLOCK: usize = 128;

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    rel: Option<RelPos<'_>>,
    o: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
) -> Result<AttentionGrads> {
    const OP: &str = "attention_backward";
    let dims = attention_dims(q, k, v, rel)?;
    let (bh, nq, nk, d, dv) = (dims.bh, dims.nq, dims.nk, dims.d, dims.dv);
    o.expect_shape(OP, "output", &[bh, nq, dv])?;
    dout.expect_shape(OP, "output gradient", &[bh, nq, dv])?;
    lse.expect_shape(OP, "log-sum-exp", &[bh, nq])?;
    let mut dq = Tensor::zeros(vec![bh, nq, d])?;
    let mut dk = Tensor::zeros(vec![bh, nk, d])?;
    let mut dvt = Tensor::zeros(vec![bh, nk, dv])?;
    if nq == 0 || bh == 0 {
        return Ok(AttentionGrads { dq, dk, dv: dvt });
    }
    let (qs, ks, os, ls, gs) = (q.data(), k.data(), o.data(), lse.data(), dout.data());
    // Keys and values transposed, `[D, Nk]` per head, for the two products with them on the right.
    let (kt, vt) = (k.permute(&[0, 2, 1])?, v.permute(&[0, 2, 1])?);
    let (kts, vts) = (kt.data(), vt.data());
    let block = BACKWARD_BLOCK;
    dq.data_mut()
        .par_chunks_mut(nq * d)
        .zip(dk.data_mut().par_chunks_mut(nk * d))
        .zip(dvt.data_mut().par_chunks_mut(nk * dv))
        .enumerate()
        .for_each(|(h, ((dqh, dkh), dvh))| {
            let qh_ = &qs[h * nq * d..(h + 1) * nq * d];
            let kh_ = &ks[h * nk * d..(h + 1) * nk * d];
            let kth = &kts[h * nk * d..(h + 1) * nk * d];
            let vth = &vts[h * nk * dv..(h + 1) * nk * dv];
            let grids = rel.zip(dims.grids);
            let (gh, gw) = grids.map_or((0, 0), |(_, (_, (kh, kw)))| (kh, kw));
            let (mut sh, mut sw) = (vec![0f32; block * gh], vec![0f32; block * gw]);
            for n0 in (0..nq).step_by(block) {
                let rows = block.min(nq - n0);
                let qb = &qh_[n0 * d..(n0 + rows) * d];
                let gb = &gs[(h * nq + n0) * dv..][..rows * dv];
                let ob = &os[(h * nq + n0) * dv..][..rows * dv];
                // P = exp(S − lse).
                let p = logits_block(qb, kth, n0, &dims, scale, rel, Some(&ls[h * nq + n0..][..rows]));
                // dV += Pᵀ dO.
                matmul_into(
                    dvh,
                    MatRef::transposed(&p, nk, rows),
                    MatRef::row_major(gb, rows, dv),
                    true,
                    Par::Seq,
                );
                // dP = dO Vᵀ, then dS = P ∘ (dP − rowsum(dO ∘ O)), with the bias tables'
                // row and column sums of dS in the same pass.
                let mut ds =
                    matmul_new(MatRef::row_major(gb, rows, dv), MatRef::row_major(vth, dv, nk), Par::Seq);
                for ri in 0..rows {
                    let di = dot(&gb[ri * dv..(ri + 1) * dv], &ob[ri * dv..(ri + 1) * dv]);
                    let (prow, srow) = (&p[ri * nk..(ri + 1) * nk], &mut ds[ri * nk..(ri + 1) * nk]);
                    if grids.is_some() {
                        let (shr, swr) = (&mut sh[ri * gh..(ri + 1) * gh], &mut sw[ri * gw..(ri + 1) * gw]);
                        swr.fill(0.0);
                        for ((seg, pseg), t) in srow.chunks_exact_mut(gw).zip(prow.chunks_exact(gw)).zip(shr)
                        {
                            for ((s, &pv), a) in seg.iter_mut().zip(pseg).zip(swr.iter_mut()) {
                                *s = pv * (*s - di);
                                *a += *s;
                            }
                            *t = lane_sum(seg);
                        }
                    } else {
                        srow.iter_mut().zip(prow).for_each(|(s, &pv)| *s = pv * (*s - di));
                    }
                }
                // dK += scale · dSᵀ Q; dQ = scale · dS K (+ the bias term).
                let dqb = &mut dqh[n0 * d..(n0 + rows) * d];
                matmul_into(
                    dqb,
                    MatRef::row_major(&ds, rows, nk),
                    MatRef::row_major(kh_, nk, d),
                    false,
                    Par::Seq,
                );
                dqb.iter_mut().for_each(|x| *x *= scale);
                let scaled: Vec<f32> = qb.iter().map(|x| x * scale).collect();
                matmul_into(
                    dkh,
                    MatRef::transposed(&ds, nk, rows),
                    MatRef::row_major(&scaled, rows, d),
                    true,
                    Par::Seq,
                );
                if let Some((r, ((_, qw), (kh, kw)))) = grids {
                    let (rh, rw) = (r.rh.data(), r.rw.data());
                    for ri in 0..rows {
                        let n = n0 + ri;
                        let (i, j) = (n / qw, n % qw);
                        let dqr = &mut dqb[ri * d..(ri + 1) * d];
                        for (kk, &s) in sh[ri * kh..(ri + 1) * kh].iter().enumerate() {
                            let t = &rh[(i * kh + kk) * d..][..d];
                            dqr.iter_mut().zip(t).for_each(|(a, &b)| *a += s * b);
                        }
                        for (l, &s) in sw[ri * kw..(ri + 1) * kw].iter().enumerate() {
                            let t = &rw[(j * kw + l) * d..][..d];
                            dqr.iter_mut().zip(t).for_each(|(a, &b)| *a += s * b);
                        }
                    }
                }
            }
        });
    Ok(AttentionGrads { dq, dk, dv: dvt })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn depth_attention_backward(
    qkv: &Tensor,
    heads: usize,
    depth: usize,
    nw: usize,
    grouping: DepthGrouping,
    rel: Option<RelPos<'_>>,
    scale: f32,
    dout: &Tensor,
) -> Result<Tensor> {
    let dims = depth_attention_dims(qkv, heads, depth, nw, rel)?;
    let (n0, p, c, hd) = (dims.n0, dims.p, dims.c, dims.hd);
    let c3 = 3 * c;
    if dout.shape() != [n0, p, c] {
        return Err(Error::shape(
            "depth_attention_backward",
            format!("output gradient {:?} for qkv {:?}", dout.shape(), qkv.shape()),
        ));
    }
    let (gh, gw) = dims.grid;
    let tables = rel.map(|r| (r.rh.data(), r.rw.data()));
    let nseq = n0 * p / depth;
    let (src, gsrc) = (qkv.data(), dout.data());
    // Each sequence's gradient rows `[depth, 3C]`, computed in parallel, then scattered.
    let results: Vec<Vec<f32>> = (0..nseq)
        .into_par_iter()
        .map(|s| {
            let toks: Vec<usize> =
                (0..depth).map(|t| depth_row(grouping, s, t, p, depth, nw) * p + s % p).collect();
            let mut g = vec![0f32; depth * c3];
            let mut pm = vec![0f32; depth * depth];
            let mut dp = vec![0f32; depth];
            for h in 0..heads {
                let qv = |i: usize| &src[toks[i] * c3 + h * hd..][..hd];
                let kv = |j: usize| &src[toks[j] * c3 + c + h * hd..][..hd];
                let vv = |j: usize| &src[toks[j] * c3 + 2 * c + h * hd..][..hd];
                let bias = |i: usize, j: usize| -> Option<(&[f32], &[f32])> {
                    tables.map(|(rh, rw)| {
                        let (ai, bi, aj, bj) = (i / gw, i % gw, j / gw, j % gw);
                        (&rh[(ai * gh + aj) * hd..][..hd], &rw[(bi * gw + bj) * hd..][..hd])
                    })
                };
                for i in 0..depth {
                    let row = &mut pm[i * depth..(i + 1) * depth];
                    for (j, x) in row.iter_mut().enumerate() {
                        *x = dot(qv(i), kv(j)) * scale;
                        if let Some((th, tw)) = bias(i, j) {
                            *x += dot(qv(i), th) + dot(qv(i), tw);
                        }
                    }
                    softmax_row(row);
                }
                for i in 0..depth {
                    let go = &gsrc[toks[i] * c + h * hd..][..hd];
                    for (j, x) in dp.iter_mut().enumerate() {
                        *x = dot(go, vv(j));
                    }
                    let prow = &pm[i * depth..(i + 1) * depth];
                    let di: f32 = prow.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for j in 0..depth {
                        let pij = prow[j];
                        let dsij = pij * (dp[j] - di);
                        // dv_j += P_ij · dO_i; dq_i += dS_ij (scale k_j + bias tables); dk_j += scale dS_ij q_i.
                        for e in 0..hd {
                            g[j * c3 + 2 * c + h * hd + e] += pij * go[e];
                            g[i * c3 + h * hd + e] += dsij * scale * kv(j)[e];
                            g[j * c3 + c + h * hd + e] += dsij * scale * qv(i)[e];
                        }
                        if let Some((th, tw)) = bias(i, j) {
                            for e in 0..hd {
                                g[i * c3 + h * hd + e] += dsij * (th[e] + tw[e]);
                            }
                        }
                    }
                }
            }
            g
        })
        .collect();
    let mut out = Tensor::zeros(vec![n0, p, c3])?;
    let od = out.data_mut();
    for (s, r) in results.iter().enumerate() {
        for t in 0..depth {
            let tok = depth_row(grouping, s, t, p, depth, nw) * p + s % p;
            od[tok * c3..(tok + 1) * c3].copy_from_slice(&r[t * c3..(t + 1) * c3]);
        }
    }
    Ok(out)
}
