//! SD-Trans depth attention (spec 3.6) and HyP-Adpt's generated-weight chain (spec 5.4).

use crate::act::{dot, softmax_row};
use medsa_core::backend::{depth_attention_dims, depth_row};
use medsa_core::{DepthGrouping, RelPos, Result, Tensor};
use rayon::prelude::*;

/// Attention over each depth sequence, gathered from `qkv [N0, P, 3C]` by index.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depth_attention(
    qkv: &Tensor,
    heads: usize,
    depth: usize,
    nw: usize,
    grouping: DepthGrouping,
    rel: Option<RelPos<'_>>,
    scale: f32,
) -> Result<Tensor> {
    let dims = depth_attention_dims(qkv, heads, depth, nw, rel)?;
    let (n0, p, c3, c, hd) = (dims.n0, dims.p, 3 * dims.c, dims.c, dims.hd);
    let grid = rel.map(|r| (r.rh.data(), r.rw.data(), dims.grid.1));
    let nseq = n0 * p / depth;
    let src = qkv.data();
    // Each sequence's output rows, computed in parallel, then scattered.
    let results: Vec<Vec<f32>> = (0..nseq)
        .into_par_iter()
        .map(|s| {
            let rows: Vec<usize> =
                (0..depth).map(|d| (depth_row(grouping, s, d, p, depth, nw) * p + s % p) * c3).collect();
            let mut out = vec![0f32; depth * c];
            let mut logits = vec![0f32; depth];
            for h in 0..heads {
                for (i, &qi) in rows.iter().enumerate() {
                    let q = &src[qi + h * hd..qi + (h + 1) * hd];
                    for (j, &kj) in rows.iter().enumerate() {
                        let k = &src[kj + c + h * hd..kj + c + (h + 1) * hd];
                        let mut v = dot(q, k) * scale;
                        if let Some((rh, rw, gw)) = grid {
                            let (ai, bi, aj, bj) = (i / gw, i % gw, j / gw, j % gw);
                            let th = &rh[((ai * (depth / gw)) + aj) * hd..][..hd];
                            let tw = &rw[(bi * gw + bj) * hd..][..hd];
                            v += dot(q, th);
                            v += dot(q, tw);
                        }
                        logits[j] = v;
                    }
                    softmax_row(&mut logits);
                    let o = &mut out[i * c + h * hd..i * c + (h + 1) * hd];
                    for (j, &vj) in rows.iter().enumerate() {
                        let v = &src[vj + 2 * c + h * hd..vj + 2 * c + (h + 1) * hd];
                        o.iter_mut().zip(v).for_each(|(a, b)| *a += logits[j] * b);
                    }
                }
            }
            out
        })
        .collect();
    let mut out = Tensor::zeros(vec![n0, p, c])?;
    let od = out.data_mut();
    for (s, r) in results.iter().enumerate() {
        for d in 0..depth {
            let tok = depth_row(grouping, s, d, p, depth, nw) * p + s % p;
            od[tok * c..(tok + 1) * c].copy_from_slice(&r[d * c..(d + 1) * c]);
        }
    }
    Ok(out)
}

/// `x ← ReLU(LN_n(x · W[:, n]))` per prompt set, in parallel over the sets.
pub(crate) fn hyper_chain(x: &Tensor, w: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "hyper_chain";
    x.expect_rank(OP, "x", 3)?;
    w.expect_rank(OP, "w", 4)?;
    let (b, t, r) = (x.dim(0), x.dim(1), x.dim(2));
    let n = w.dim(1);
    w.expect_shape(OP, "w", &[b, n, r, r])?;
    gamma.expect_shape(OP, "gamma", &[n, r])?;
    beta.expect_shape(OP, "beta", &[n, r])?;
    let mut out = x.clone();
    if t * r == 0 {
        return Ok(out);
    }
    out.data_mut().par_chunks_mut(t * r).enumerate().for_each(|(set, xs)| {
        let mut y = vec![0f32; r];
        for layer in 0..n {
            let wn = &w.data()[(set * n + layer) * r * r..][..r * r];
            let (g, bb) = (&gamma.data()[layer * r..][..r], &beta.data()[layer * r..][..r]);
            for row in xs.chunks_exact_mut(r) {
                y.fill(0.0);
                for (i, &xi) in row.iter().enumerate() {
                    y.iter_mut().zip(&wn[i * r..(i + 1) * r]).for_each(|(a, wv)| *a += xi * wv);
                }
                let mean = y.iter().map(|&v| v as f64).sum::<f64>() / r as f64;
                let var = y.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / r as f64;
                let inv = 1.0 / (var + eps as f64).sqrt();
                for k in 0..r {
                    row[k] = (((y[k] as f64 - mean) * inv) as f32 * g[k] + bb[k]).max(0.0);
                }
            }
        }
    });
    Ok(out)
}
