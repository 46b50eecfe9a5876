//! CPU references for the CUDA ops that lie outside the `Backend` trait (SD-Trans depth
//! attention, the HyP-Adpt chain), built from `medsa_ref::Cpu`'s ops so the GPU is checked
//! against the same truth as everything else.

use crate::geometry::depth_row;
use medsa_core::{Backend, DepthGrouping, Error, RelPos, Result, Tensor};

/// Depth attention by explicit regrouping: gathers each depth sequence into `[nseq*heads, D, hd]`,
/// runs `cpu.attention` (with the depth-grid tables `rel`), and scatters back to `[N0, P, C]`.
#[allow(clippy::too_many_arguments)]
pub fn depth_attention(
    cpu: &dyn Backend,
    qkv: &Tensor,
    heads: usize,
    depth: usize,
    nw: usize,
    grouping: DepthGrouping,
    rel: Option<RelPos<'_>>,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "depth_attention_ref";
    qkv.expect_rank(OP, "qkv", 3)?;
    let (n0, p, c3) = (qkv.dim(0), qkv.dim(1), qkv.dim(2));
    if c3 % 3 != 0 || heads == 0 || (c3 / 3) % heads != 0 || depth == 0 || nw == 0 || n0 % (depth * nw) != 0 {
        return Err(Error::shape(
            OP,
            format!("qkv {:?}, heads {heads}, depth {depth}, nw {nw}", qkv.shape()),
        ));
    }
    let c = c3 / 3;
    let hd = c / heads;
    let nseq = n0 * p / depth;
    let mut parts = [
        vec![0f32; nseq * heads * depth * hd],
        vec![0f32; nseq * heads * depth * hd],
        vec![0f32; nseq * heads * depth * hd],
    ];
    let src = qkv.data();
    for s in 0..nseq {
        for d in 0..depth {
            let tok = depth_row(grouping, s, d, p, depth, nw) * p + s % p;
            for h in 0..heads {
                let dst = ((s * heads + h) * depth + d) * hd;
                for (which, part) in parts.iter_mut().enumerate() {
                    let from = tok * c3 + which * c + h * hd;
                    part[dst..dst + hd].copy_from_slice(&src[from..from + hd]);
                }
            }
        }
    }
    let [q, k, v] = parts;
    let shape = vec![nseq * heads, depth, hd];
    let q = Tensor::new(shape.clone(), q)?;
    let k = Tensor::new(shape.clone(), k)?;
    let v = Tensor::new(shape, v)?;
    let o = cpu.attention(&q, &k, &v, scale, rel)?;
    let mut out = vec![0f32; n0 * p * c];
    for s in 0..nseq {
        for d in 0..depth {
            let tok = depth_row(grouping, s, d, p, depth, nw) * p + s % p;
            for h in 0..heads {
                let from = ((s * heads + h) * depth + d) * hd;
                out[tok * c + h * hd..tok * c + (h + 1) * hd].copy_from_slice(&o.data()[from..from + hd]);
            }
        }
    }
    Tensor::new(vec![n0, p, c], out)
}

/// The HyP-Adpt chain with `cpu.bmm`, `cpu.layer_norm`, `cpu.relu`: `x [B, T, r]`,
/// `w [B, L, r, r]`, `gamma, beta [L, r]`.
pub fn hyp_chain(
    cpu: &dyn Backend,
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    const OP: &str = "hyp_chain_ref";
    x.expect_rank(OP, "x", 3)?;
    let (b, _t, r) = (x.dim(0), x.dim(1), x.dim(2));
    w.expect_rank(OP, "w", 4)?;
    let layers = w.dim(1);
    w.expect_shape(OP, "w", &[b, layers, r, r])?;
    let mut d = x.clone();
    for n in 0..layers {
        let wn = w.narrow(1, n, 1)?.reshape(vec![b, r, r])?;
        let y = cpu.bmm(&d, &wn)?;
        let g = gamma.narrow(0, n, 1)?.reshape(vec![r])?;
        let bb = beta.narrow(0, n, 1)?.reshape(vec![r])?;
        d = cpu.relu(cpu.layer_norm(&y, &g, &bb, eps)?)?;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_blocks_agree_across_groupings() {
        // nw = 1 (global block): both groupings are the same computation.
        let cpu = medsa_ref::Cpu;
        let (n0, p, c) = (6, 5, 8);
        let qkv = Tensor::from_fn(vec![n0, p, 3 * c], |i| ((i * 37 % 101) as f32 / 50.0) - 1.0).unwrap();
        let a = depth_attention(&cpu, &qkv, 2, 3, 1, DepthGrouping::Official, None, 0.5).unwrap();
        let b = depth_attention(&cpu, &qkv, 2, 3, 1, DepthGrouping::PerWindow, None, 0.5).unwrap();
        assert_eq!(a, b);
        // D = 1: every token attends only to itself, so the output is v.
        let o = depth_attention(&cpu, &qkv, 2, 1, 1, DepthGrouping::Official, None, 0.5).unwrap();
        for t in 0..n0 * p {
            for ch in 0..c {
                assert!((o.data()[t * c + ch] - qkv.data()[t * 3 * c + 2 * c + ch]).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn hyp_chain_is_nonnegative_and_normalised() {
        let cpu = medsa_ref::Cpu;
        let (b, t, r) = (2, 3, 8);
        let x = Tensor::from_fn(vec![b, t, r], |i| (i as f32 * 0.37).sin()).unwrap();
        let w = Tensor::from_fn(vec![b, 3, r, r], |i| (i as f32 * 0.11).cos()).unwrap();
        let g = Tensor::full(vec![3, r], 1.0).unwrap();
        let z = Tensor::zeros(vec![3, r]).unwrap();
        let y = hyp_chain(&cpu, &x, &w, &g, &z, 1e-5).unwrap();
        assert_eq!(y.shape(), &[b, t, r]);
        assert!(y.data().iter().all(|&v| v >= 0.0 && v.is_finite()));
    }
}
