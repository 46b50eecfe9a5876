//! Backward ops of the layers that act per row or per pixel: linear, layer norm, GELU, ReLU,
//! and convolution (HyP-Adpt's chain is in [`crate::hyper_chain`]). Reductions over rows run in f64.

use crate::act::{erfc, fast_exp};
use crate::gemm::{matmul_new, MatRef, Par};
use medsa_core::backward::{ConvGrads, LinearGrads, NormGrads};
use medsa_core::par::{for_chunks_zip, SERIAL_BELOW};
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
    let part = |rows: &[f32]| {
        let mut acc = vec![0f64; c];
        for r in rows.chunks_exact(c) {
            acc.iter_mut().zip(r).for_each(|(a, &v)| *a += f(v as f64));
        }
        acc
    };
    let add = |mut a: Vec<f64>, b: Vec<f64>| {
        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
        a
    };
    let sums = if data.len() < SERIAL_BELOW {
        data.chunks(c * ROWS).map(part).fold(vec![0f64; c], add)
    } else {
        data.par_chunks(c * ROWS).map(part).reduce(|| vec![0f64; c], add)
    };
    sums.into_iter().map(|v| v as f32).collect()
}

/// One row of [`layer_norm_backward`]: `dx` from the row's statistics (recomputed in f64) and,
/// with `params`, the row's `dy·x̂` and `dy` added to the weight and bias sums.
pub(crate) fn layer_norm_backward_row(
    (xr, dyr, wd, eps): (&[f32], &[f32], &[f32], f32),
    xhat: &mut [f64],
    dxr: &mut [f32],
    params: Option<(&mut [f64], &mut [f64])>,
) {
    let c = xr.len();
    let n = c as f64;
    let fold = |a: [f64; 8]| ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    // Sums in eight interleaved lanes (lane l takes k ≡ l mod 8, in order: eight independent
    // chains, a fixed order), over zipped chunks so the lanes carry no bounds checks.
    let (xs8, dys8, ws8) = (xr.chunks_exact(8), dyr.chunks_exact(8), wd.chunks_exact(8));
    let (mut sx, mut sq) = ([0f64; 8], [0f64; 8]);
    for xc in xs8.clone() {
        for l in 0..8 {
            sx[l] += xc[l] as f64;
        }
    }
    for (l, &v) in xs8.remainder().iter().enumerate() {
        sx[l] += v as f64;
    }
    let mean = fold(sx) / n;
    for xc in xs8.clone() {
        for l in 0..8 {
            sq[l] += (xc[l] as f64 - mean).powi(2);
        }
    }
    for (l, &v) in xs8.remainder().iter().enumerate() {
        sq[l] += (v as f64 - mean).powi(2);
    }
    let var = fold(sq) / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for (h, &v) in xhat.iter_mut().zip(xr) {
        *h = (v as f64 - mean) * inv;
    }
    let (mut a1, mut a2) = ([0f64; 8], [0f64; 8]);
    let hs8 = xhat.chunks_exact(8);
    for ((dc, wc), hc) in dys8.clone().zip(ws8.clone()).zip(hs8.clone()) {
        for l in 0..8 {
            let g = dc[l] as f64 * wc[l] as f64;
            a1[l] += g;
            a2[l] += g * hc[l];
        }
    }
    for (l, ((&d, &w), &h)) in dys8.remainder().iter().zip(ws8.remainder()).zip(hs8.remainder()).enumerate() {
        let g = d as f64 * w as f64;
        a1[l] += g;
        a2[l] += g * h;
    }
    let (m1, m2) = (fold(a1) / n, fold(a2) / n);
    for (((d, &dy), &w), &h) in dxr.iter_mut().zip(dyr).zip(wd).zip(xhat.iter()) {
        *d = (inv * (dy as f64 * w as f64 - m1 - h * m2)) as f32;
    }
    if let Some((gw, gb)) = params {
        for (((w, b), &dy), &h) in gw.iter_mut().zip(gb.iter_mut()).zip(dyr).zip(xhat.iter()) {
            *w += dy as f64 * h;
            *b += dy as f64;
        }
    }
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
    let zeros = || (vec![0f64; if params { c } else { 0 }], vec![0f64; if params { c } else { 0 }]);
    // Per piece of rows: (Σ dy·x̂, Σ dy), for the parameter gradients.
    let part = |((dxs, xs), dys): ((&mut [f32], &[f32]), &[f32])| {
        let (mut gw, mut gb) = zeros();
        let mut xhat = vec![0f64; c];
        for ((dxr, xr), dyr) in dxs.chunks_exact_mut(c).zip(xs.chunks_exact(c)).zip(dys.chunks_exact(c)) {
            layer_norm_backward_row(
                (xr, dyr, wd, eps),
                &mut xhat,
                dxr,
                params.then_some((gw.as_mut_slice(), gb.as_mut_slice())),
            );
        }
        (gw, gb)
    };
    let add = |mut a: (Vec<f64>, Vec<f64>), b: (Vec<f64>, Vec<f64>)| {
        a.0.iter_mut().zip(&b.0).for_each(|(x, y)| *x += y);
        a.1.iter_mut().zip(&b.1).for_each(|(x, y)| *x += y);
        a
    };
    let n = c * ROWS;
    let partial = if x.numel() < SERIAL_BELOW {
        let pieces = dx.data_mut().chunks_mut(n).zip(x.data().chunks(n)).zip(dy.data().chunks(n));
        pieces.map(part).fold(zeros(), add)
    } else {
        let pieces = dx.data_mut().par_chunks_mut(n).zip(x.data().par_chunks(n)).zip(dy.data().par_chunks(n));
        pieces.map(part).reduce(zeros, add)
    };
    if !params {
        return Ok(NormGrads { dx, dw: None, db: None });
    }
    let to = |v: Vec<f64>| Tensor::new(vec![c], v.into_iter().map(|x| x as f32).collect());
    Ok(NormGrads { dx, dw: Some(to(partial.0)?), db: Some(to(partial.1)?) })
}

/// `GELU'(x) = Φ(x) + x·φ(x)`.
#[inline]
fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * erfc(-x * std::f32::consts::FRAC_1_SQRT_2);
    let pdf = fast_exp(-0.5 * x * x) * 0.398_942_3;
    cdf + x * pdf
}

/// `GELU'(x)` from the input `x` and the output `y = x·Φ(x)` of the forward's GELU:
/// `Φ(x) = y / x` (away from 0, where `Φ(x) = ½ + x·φ(0)` to within `x³/15`), so only `φ` needs an
/// exponential. For a backward that has both on its tape ([`crate::upscale_masks_backward`]).
#[inline]
pub(crate) fn gelu_grad_from_output(x: f32, y: f32) -> f32 {
    let cdf = if x.abs() > 1e-3 { y / x } else { 0.5 + 0.398_942_3 * x };
    cdf + x * fast_exp(-0.5 * x * x) * 0.398_942_3
}

pub(crate) fn gelu_backward(x: &Tensor, mut dy: Tensor) -> Result<Tensor> {
    if x.shape() != dy.shape() {
        return Err(Error::shape(
            "gelu_backward",
            format!("input {:?}, gradient {:?}", x.shape(), dy.shape()),
        ));
    }
    for_chunks_zip(dy.data_mut(), x.data(), 1 << 14, |g, xs| {
        g.iter_mut().zip(xs).for_each(|(g, &x)| *g *= gelu_grad(x))
    });
    Ok(dy)
}

pub(crate) fn relu_backward(y: &Tensor, mut dy: Tensor) -> Result<Tensor> {
    if y.shape() != dy.shape() {
        return Err(Error::shape(
            "relu_backward",
            format!("output {:?}, gradient {:?}", y.shape(), dy.shape()),
        ));
    }
    for_chunks_zip(dy.data_mut(), y.data(), 1 << 14, |g, ys| {
        g.iter_mut().zip(ys).for_each(|(g, &y)| *g = if y > 0.0 { *g } else { 0.0 })
    });
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
    for_chunks_zip(dy.data_mut(), y.data(), n * rows, |g, ys| {
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
