//! HyP-Adpt's generated-weight chain (spec 5.4) and its backward: per prompt set,
//! `x ← ReLU(LN_n(x · W[:, n]))` for each of the N generated layers.

use medsa_core::backward::HyperChainGrads;
use medsa_core::{Result, Tensor};
use rayon::prelude::*;

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

pub(crate) fn hyper_chain_backward(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    dy: &Tensor,
) -> Result<HyperChainGrads> {
    const OP: &str = "hyper_chain_backward";
    x.expect_rank(OP, "x", 3)?;
    w.expect_rank(OP, "w", 4)?;
    let (b, t, r) = (x.dim(0), x.dim(1), x.dim(2));
    let nl = w.dim(1);
    w.expect_shape(OP, "w", &[b, nl, r, r])?;
    gamma.expect_shape(OP, "gamma", &[nl, r])?;
    beta.expect_shape(OP, "beta", &[nl, r])?;
    dy.expect_shape(OP, "output gradient", x.shape())?;
    let (g, bt) = (gamma.data(), beta.data());
    // Per set: (dx rows, dw, dgamma, dbeta).
    type SetGrads = (Vec<f32>, Vec<f32>, Vec<f64>, Vec<f64>);
    let per_set: Vec<SetGrads> = (0..b)
        .into_par_iter()
        .map(|set| {
            let ws = &w.data()[set * nl * r * r..(set + 1) * nl * r * r];
            let mut dxs = vec![0f32; t * r];
            let mut dw = vec![0f64; nl * r * r];
            let (mut dg, mut db) = (vec![0f64; nl * r], vec![0f64; nl * r]);
            for tok in 0..t {
                // Forward of one row, keeping each layer's input, x̂, 1/σ and output.
                let mut inputs = Vec::with_capacity(nl);
                let mut xhats = Vec::with_capacity(nl);
                let mut invs = Vec::with_capacity(nl);
                let mut outs = Vec::with_capacity(nl);
                let mut cur: Vec<f64> =
                    x.data()[(set * t + tok) * r..][..r].iter().map(|&v| v as f64).collect();
                for l in 0..nl {
                    let wl = &ws[l * r * r..(l + 1) * r * r];
                    let mut y = vec![0f64; r];
                    for (i, &xi) in cur.iter().enumerate() {
                        y.iter_mut().zip(&wl[i * r..(i + 1) * r]).for_each(|(a, &wv)| *a += xi * wv as f64);
                    }
                    let mean = y.iter().sum::<f64>() / r as f64;
                    let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / r as f64;
                    let inv = 1.0 / (var + eps as f64).sqrt();
                    let xh: Vec<f64> = y.iter().map(|v| (v - mean) * inv).collect();
                    let out: Vec<f64> = (0..r)
                        .map(|k| (xh[k] * g[l * r + k] as f64 + bt[l * r + k] as f64).max(0.0))
                        .collect();
                    inputs.push(std::mem::replace(&mut cur, out.clone()));
                    xhats.push(xh);
                    invs.push(inv);
                    outs.push(out);
                }
                let mut d: Vec<f64> =
                    dy.data()[(set * t + tok) * r..][..r].iter().map(|&v| v as f64).collect();
                for l in (0..nl).rev() {
                    let (xh, inv, out) = (&xhats[l], invs[l], &outs[l]);
                    // ReLU, then the affine of the norm.
                    let dn: Vec<f64> = (0..r).map(|k| if out[k] > 0.0 { d[k] } else { 0.0 }).collect();
                    let mut dxh = vec![0f64; r];
                    for k in 0..r {
                        dg[l * r + k] += dn[k] * xh[k];
                        db[l * r + k] += dn[k];
                        dxh[k] = dn[k] * g[l * r + k] as f64;
                    }
                    let m1 = dxh.iter().sum::<f64>() / r as f64;
                    let m2 = dxh.iter().zip(xh).map(|(a, b)| a * b).sum::<f64>() / r as f64;
                    let dyl: Vec<f64> = (0..r).map(|k| inv * (dxh[k] - m1 - xh[k] * m2)).collect();
                    // y_k = Σ_i in_i · W[i, k].
                    let wl = &ws[l * r * r..(l + 1) * r * r];
                    let inp = &inputs[l];
                    let mut dinp = vec![0f64; r];
                    for i in 0..r {
                        let row = &wl[i * r..(i + 1) * r];
                        let mut acc = 0f64;
                        for k in 0..r {
                            dw[l * r * r + i * r + k] += inp[i] * dyl[k];
                            acc += row[k] as f64 * dyl[k];
                        }
                        dinp[i] = acc;
                    }
                    d = dinp;
                }
                dxs[tok * r..(tok + 1) * r].iter_mut().zip(&d).for_each(|(a, &v)| *a = v as f32);
            }
            (dxs, dw.into_iter().map(|v| v as f32).collect(), dg, db)
        })
        .collect();
    let mut dx = Vec::with_capacity(b * t * r);
    let mut dw = Vec::with_capacity(b * nl * r * r);
    let (mut dg, mut db) = (vec![0f64; nl * r], vec![0f64; nl * r]);
    for (sx, sw, sg, sb) in per_set {
        dx.extend(sx);
        dw.extend(sw);
        dg.iter_mut().zip(&sg).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(&sb).for_each(|(a, v)| *a += v);
    }
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    Ok(HyperChainGrads {
        dx: Tensor::new(vec![b, t, r], dx)?,
        dw: Tensor::new(vec![b, nl, r, r], dw)?,
        dgamma: Tensor::new(vec![nl, r], f32s(dg))?,
        dbeta: Tensor::new(vec![nl, r], f32s(db))?,
    })
}
