//! SD-Trans depth attention (spec 3.6): attention over each depth sequence of a volume's slices.

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
