//! Backward ops of the layers that act per row or per pixel: linear, layer norm, GELU, ReLU,
//! and convolution (HyP-Adpt's chain is in [`crate::hyper_chain`]). Reductions over rows run in f64.

use crate::act::{erfc, fast_exp};
use crate::gemm::{matmul_new, MatRef, Par};
use medsa_core::backward::{ConvGrads, LinearGrads, NormGrads};
use medsa_core::{Conv2d, Error, Result, Tensor};
use rayon::prelude::*;

/// Rows per task of the row-parallel reductions.
const ROWS: usize = 256;

pub(crate) fn linear_backward(x: &Tensor, w: &Tensor, dy: &Tensor, params: bool) -> Result<LinearGrads> {
    const OP: &str = "linear_backward";
    w.expect_rank(OP, "weight", 2)?;
    let (out_f, in_f) = (w.dim(0), w.dim(1));
    if x.rank() == 0 || x.last_dim() != in_f || dy.rank() != x.rank() || dy.last_dim() != out_f {
        return Err(Error::shape(
            OP,
            format!("input {:?}, weight {:?}, output gradient {:?}", x.shape(), w.shape(), dy.shape()),
        ));
    }
    let m = x.numel() / in_f.max(1);
    if dy.shape()[..dy.rank() - 1] != x.shape()[..x.rank() - 1] {
        return Err(Error::shape(OP, format!("input {:?} and output gradient {:?}", x.shape(), dy.shape())));
    }
    let dx = matmul_new(
        MatRef::row_major(dy.data(), m, out_f),
        MatRef::row_major(w.data(), out_f, in_f),
        Par::Auto,
    );
    let dx = Tensor::new(x.shape().to_vec(), dx)?;
    if !params {
        return Ok(LinearGrads { dx, dw: None, db: None });
    }
    let dw =
        matmul_new(MatRef::transposed(dy.data(), out_f, m), MatRef::row_major(x.data(), m, in_f), Par::Auto);
    let dw = Tensor::new(vec![out_f, in_f], dw)?;
    let db = column_sums(dy.data(), out_f, |v| v);
    Ok(LinearGrads { dx, dw: Some(dw), db: Some(Tensor::new(vec![out_f], db)?) })
}

/// `Σ_rows f(v)` per column of a row-major `[rows, c]` slice, in f64.
fn column_sums(data: &[f32], c: usize, f: impl Fn(f64) -> f64 + Sync) -> Vec<f32> {
    if c == 0 {
        return Vec::new();
    }
    let sums = data
        .par_chunks(c * ROWS)
        .map(|rows| {
            let mut acc = vec![0f64; c];
            for r in rows.chunks_exact(c) {
                acc.iter_mut().zip(r).for_each(|(a, &v)| *a += f(v as f64));
            }
            acc
        })
        .reduce(
            || vec![0f64; c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    sums.into_iter().map(|v| v as f32).collect()
}

pub(crate) fn layer_norm_backward(
    x: &Tensor,
    w: &Tensor,
    eps: f32,
    dy: &Tensor,
    params: bool,
) -> Result<NormGrads> {
    const OP: &str = "layer_norm_backward";
    if x.rank() == 0 || dy.shape() != x.shape() {
        return Err(Error::shape(OP, format!("input {:?}, output gradient {:?}", x.shape(), dy.shape())));
    }
    let c = x.last_dim();
    w.expect_shape(OP, "weight", &[c])?;
    let mut dx = Tensor::zeros(x.shape().to_vec())?;
    if c == 0 {
        return Ok(NormGrads { dx, dw: params.then(|| w.clone()), db: params.then(|| w.clone()) });
    }
    let wd = w.data();
    // Per task: (Σ dy·x̂, Σ dy) over its rows, for the parameter gradients.
    let partial = dx
        .data_mut()
        .par_chunks_mut(c * ROWS)
        .zip(x.data().par_chunks(c * ROWS))
        .zip(dy.data().par_chunks(c * ROWS))
        .map(|((dxs, xs), dys)| {
            let (mut gw, mut gb) =
                (vec![0f64; if params { c } else { 0 }], vec![0f64; if params { c } else { 0 }]);
            let mut xhat = vec![0f64; c];
            for ((dxr, xr), dyr) in dxs.chunks_exact_mut(c).zip(xs.chunks_exact(c)).zip(dys.chunks_exact(c)) {
                let n = c as f64;
                let mean = lane_sum(c, |k| xr[k] as f64) / n;
                let var = lane_sum(c, |k| (xr[k] as f64 - mean).powi(2)) / n;
                let inv = 1.0 / (var + eps as f64).sqrt();
                // x̂ and both sums in one pass (eight interleaved partial sums each, as lane_sum).
                let (mut a1, mut a2) = ([0f64; 8], [0f64; 8]);
                for (k, (h, &v)) in xhat.iter_mut().zip(xr).enumerate() {
                    *h = (v as f64 - mean) * inv;
                    let g = dyr[k] as f64 * wd[k] as f64;
                    a1[k % 8] += g;
                    a2[k % 8] += g * *h;
                }
                let fold = |a: [f64; 8]| ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
                let (m1, m2) = (fold(a1) / n, fold(a2) / n);
                for k in 0..c {
                    let (d, h) = (dyr[k] as f64, xhat[k]);
                    dxr[k] = (inv * (d * wd[k] as f64 - m1 - h * m2)) as f32;
                    if params {
                        gw[k] += d * h;
                        gb[k] += d;
                    }
                }
            }
            (gw, gb)
        })
        .reduce(
            || (vec![0f64; if params { c } else { 0 }], vec![0f64; if params { c } else { 0 }]),
            |mut a, b| {
                a.0.iter_mut().zip(&b.0).for_each(|(x, y)| *x += y);
                a.1.iter_mut().zip(&b.1).for_each(|(x, y)| *x += y);
                a
            },
        );
    if !params {
        return Ok(NormGrads { dx, dw: None, db: None });
    }
    let to = |v: Vec<f64>| Tensor::new(vec![c], v.into_iter().map(|x| x as f32).collect());
    Ok(NormGrads { dx, dw: Some(to(partial.0)?), db: Some(to(partial.1)?) })
}

/// `Σ_{k < n} f(k)` in eight interleaved partial sums: eight independent chains of additions
/// instead of one (a row of 256 f64 additions in one chain waits on each addition's latency),
/// in a fixed order, so the result is the same on every run.
#[inline]
fn lane_sum(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let full = n / 8 * 8;
    for k0 in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(k0 + l);
        }
    }
    for (l, k) in (full..n).enumerate() {
        acc[l] += f(k);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// `GELU'(x) = Φ(x) + x·φ(x)`.
#[inline]
fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * erfc(-x * std::f32::consts::FRAC_1_SQRT_2);
    let pdf = fast_exp(-0.5 * x * x) * 0.398_942_3;
    cdf + x * pdf
}

pub(crate) fn gelu_backward(x: &Tensor, mut dy: Tensor) -> Result<Tensor> {
    if x.shape() != dy.shape() {
        return Err(Error::shape(
            "gelu_backward",
            format!("input {:?}, gradient {:?}", x.shape(), dy.shape()),
        ));
    }
    dy.data_mut()
        .par_chunks_mut(1 << 14)
        .zip(x.data().par_chunks(1 << 14))
        .for_each(|(g, xs)| g.iter_mut().zip(xs).for_each(|(g, &x)| *g *= gelu_grad(x)));
    Ok(dy)
}

pub(crate) fn relu_backward(y: &Tensor, mut dy: Tensor) -> Result<Tensor> {
    if y.shape() != dy.shape() {
        return Err(Error::shape(
            "relu_backward",
            format!("output {:?}, gradient {:?}", y.shape(), dy.shape()),
        ));
    }
    dy.data_mut()
        .par_chunks_mut(1 << 14)
        .zip(y.data().par_chunks(1 << 14))
        .for_each(|(g, ys)| g.iter_mut().zip(ys).for_each(|(g, &y)| *g = if y > 0.0 { *g } else { 0.0 }));
    Ok(dy)
}

pub(crate) fn softmax_backward(y: &Tensor, mut dy: Tensor) -> Result<Tensor> {
    if y.shape() != dy.shape() || y.rank() == 0 {
        return Err(Error::shape(
            "softmax_backward",
            format!("output {:?}, gradient {:?}", y.shape(), dy.shape()),
        ));
    }
    let n = y.last_dim().max(1);
    let rows = (8192 / n).max(1);
    dy.data_mut().par_chunks_mut(n * rows).zip(y.data().par_chunks(n * rows)).for_each(|(g, ys)| {
        for (gr, yr) in g.chunks_exact_mut(n).zip(ys.chunks_exact(n)) {
            let s: f64 = gr.iter().zip(yr).map(|(&a, &b)| a as f64 * b as f64).sum();
            gr.iter_mut().zip(yr).for_each(|(a, &b)| *a = b * (*a - s as f32));
        }
    });
    Ok(dy)
}

pub(crate) fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    g: Conv2d,
    dy: &Tensor,
    params: bool,
) -> Result<ConvGrads> {
    const OP: &str = "conv2d_backward";
    // The forward's checks and output shape.
    let y = crate::conv::conv2d(&Tensor::zeros(x.shape().to_vec())?, w, None, g)?;
    dy.expect_shape(OP, "output gradient", y.shape())?;
    let (n, cin, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (cout, cpg, kh, kw) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
    let (ho, wo) = (dy.dim(2), dy.dim(3));
    let (s, p, coutg) = (g.stride, g.padding, cout / g.groups);
    let dx = if s == 1 && g.groups == 1 && kh == kw && p < kh {
        // Stride 1: the input gradient is the convolution of dy with the transposed, flipped
        // kernel and padding k − 1 − p.
        let mut wt = vec![0f32; cin * cout * kh * kw];
        for o in 0..cout {
            for i in 0..cin {
                for a in 0..kh {
                    for b in 0..kw {
                        wt[((i * cout + o) * kh + (kh - 1 - a)) * kw + (kw - 1 - b)] =
                            w.data()[((o * cpg + i) * kh + a) * kw + b];
                    }
                }
            }
        }
        let wt = Tensor::new(vec![cin, cout, kh, kw], wt)?;
        crate::conv::conv2d(dy, &wt, None, Conv2d::new(1, kh - 1 - p))?
    } else {
        // dx[n, c, iy, ix] = Σ_{o in c's group, ky, kx} dy[n, o, oy, ox] · w[o, c mod cpg, ky, kx]
        // with iy = oy·s + ky − p.
        let mut dx = Tensor::zeros(x.shape().to_vec())?;
        let (ws, ds) = (w.data(), dy.data());
        dx.data_mut().par_chunks_mut(h * wd).enumerate().for_each(|(nc, plane)| {
            let (bi, c) = (nc / cin, nc % cin);
            let grp = c / cpg;
            for o in grp * coutg..(grp + 1) * coutg {
                let dyo = &ds[(bi * cout + o) * ho * wo..][..ho * wo];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = ws[((o * cpg + c % cpg) * kh + ky) * kw + kx];
                        for oy in 0..ho {
                            let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&v| v < h) else { continue };
                            for ox in 0..wo {
                                let Some(ix) = (ox * s + kx).checked_sub(p).filter(|&v| v < wd) else {
                                    continue;
                                };
                                plane[iy * wd + ix] += wv * dyo[oy * wo + ox];
                            }
                        }
                    }
                }
            }
        });
        dx
    };
    if !params {
        return Ok(ConvGrads { dx, dw: None });
    }
    // dw[o, c, ky, kx] = Σ_{n, oy, ox} dy[n, o, oy, ox] · x[n, grp·cpg + c, oy·s + ky − p, ...].
    let mut dw = Tensor::zeros(w.shape().to_vec())?;
    let (xs, ds) = (x.data(), dy.data());
    dw.data_mut().par_chunks_mut(cpg * kh * kw).enumerate().for_each(|(o, wo_)| {
        let grp = o / coutg;
        for (idx, slot) in wo_.iter_mut().enumerate() {
            let (c, ky, kx) = (idx / (kh * kw), idx / kw % kh, idx % kw);
            let ci = grp * cpg + c;
            let mut acc = 0f64;
            for bi in 0..n {
                let dyo = &ds[(bi * cout + o) * ho * wo..][..ho * wo];
                let xc = &xs[(bi * cin + ci) * h * wd..][..h * wd];
                for oy in 0..ho {
                    let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&v| v < h) else { continue };
                    for ox in 0..wo {
                        let Some(ix) = (ox * s + kx).checked_sub(p).filter(|&v| v < wd) else { continue };
                        acc += dyo[oy * wo + ox] as f64 * xc[iy * wd + ix] as f64;
                    }
                }
            }
            *slot = acc as f32;
        }
    });
    Ok(ConvGrads { dx, dw: Some(dw) })
}
