//! Convolutions: im2col + GEMM, a direct depthwise path, and the 2x2/stride-2 transposed conv.

use crate::gemm::{matmul_into, MatRef, Par};
use medsa_core::{Conv2d, Result, Tensor};
use rayon::prelude::*;

pub(crate) fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: Conv2d) -> Result<Tensor> {
    let [n, cout, ho, wo] = medsa_core::backend::conv2d_shape(x, w, b, g)?;
    let (cin, h, wd) = (x.dim(1), x.dim(2), x.dim(3));
    let (cpg, kh, kw) = (w.dim(1), w.dim(2), w.dim(3));
    let npix = ho * wo;
    let mut out = Tensor::zeros(vec![n, cout, ho, wo])?;
    let coutg = cout / g.groups;
    let kdim = cpg * kh * kw;
    let xs = x.data();
    let ws = w.data();
    // Source index of tap (ky, kx) for output (oy, ox), or None in the zero padding.
    let src = |oy: usize, ox: usize, ky: usize, kx: usize| -> Option<(usize, usize)> {
        let iy = (oy * g.stride + ky).checked_sub(g.padding)?;
        let ix = (ox * g.stride + kx).checked_sub(g.padding)?;
        (iy < h && ix < wd).then_some((iy, ix))
    };
    out.data_mut().par_chunks_mut(cout * npix).enumerate().for_each(|(bi, ob)| {
        let xb = &xs[bi * cin * h * wd..(bi + 1) * cin * h * wd];
        if g.groups == cin && cpg == 1 && coutg == 1 {
            // Depthwise: a direct loop beats a GEMM with k = kh·kw.
            // Row-wise accumulation: for each tap, the valid output columns form one range, so
            // the inner loop is a bounds-check-free axpy. Every output still sums its taps in
            // (ky, kx) order starting from 0, as the per-pixel loop would.
            ob.par_chunks_mut(npix).enumerate().for_each(|(c, oc)| {
                let xc = &xb[c * h * wd..(c + 1) * h * wd];
                let wc = &ws[c * kh * kw..(c + 1) * kh * kw];
                let (s, p) = (g.stride, g.padding);
                for (oy, orow) in oc.chunks_exact_mut(wo).enumerate() {
                    orow.fill(0.0);
                    for ky in 0..kh {
                        let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&iy| iy < h) else { continue };
                        let xrow = &xc[iy * wd..(iy + 1) * wd];
                        for kx in 0..kw {
                            let wv = wc[ky * kw + kx];
                            // ox valid iff 0 <= ox·s + kx − p < wd.
                            let lo = if p > kx { (p - kx).div_ceil(s) } else { 0 };
                            let hi = if wd + p > kx { ((wd + p - kx - 1) / s + 1).min(wo) } else { 0 };
                            if lo >= hi {
                                continue;
                            }
                            if s == 1 {
                                let start = lo + kx - p;
                                for (o, &xv) in orow[lo..hi].iter_mut().zip(&xrow[start..start + (hi - lo)]) {
                                    *o += xv * wv;
                                }
                            } else {
                                for (ox, o) in orow.iter_mut().enumerate().take(hi).skip(lo) {
                                    *o += xrow[ox * s + kx - p] * wv;
                                }
                            }
                        }
                    }
                }
            });
        } else {
            for gi in 0..g.groups {
                let wg = &ws[gi * coutg * kdim..(gi + 1) * coutg * kdim];
                if kh == 1 && kw == 1 && g.stride == 1 && g.padding == 0 {
                    // A 1x1 conv: the im2col matrix is the input itself.
                    let og = &mut ob[gi * coutg * npix..(gi + 1) * coutg * npix];
                    let xg = &xb[gi * cpg * npix..(gi + 1) * cpg * npix];
                    matmul_into(
                        og,
                        MatRef::row_major(wg, coutg, kdim),
                        MatRef::row_major(xg, kdim, npix),
                        false,
                        Par::Auto,
                    );
                    continue;
                }
                // col [kdim, npix]: row (ci, ky, kx), column (oy, ox).
                let mut col = vec![0f32; kdim * npix];
                col.par_chunks_mut(npix).enumerate().for_each(|(r, crow)| {
                    let ci = gi * cpg + r / (kh * kw);
                    let (ky, kx) = ((r / kw) % kh, r % kw);
                    let xc = &xb[ci * h * wd..(ci + 1) * h * wd];
                    for oy in 0..ho {
                        for ox in 0..wo {
                            if let Some((iy, ix)) = src(oy, ox, ky, kx) {
                                crow[oy * wo + ox] = xc[iy * wd + ix];
                            }
                        }
                    }
                });
                let og = &mut ob[gi * coutg * npix..(gi + 1) * coutg * npix];
                matmul_into(
                    og,
                    MatRef::row_major(wg, coutg, kdim),
                    MatRef::row_major(&col, kdim, npix),
                    false,
                    Par::Auto,
                );
            }
        }
        if let Some(b) = b {
            for (oc, &bv) in ob.chunks_exact_mut(npix).zip(b.data()) {
                oc.iter_mut().for_each(|v| *v += bv);
            }
        }
    });
    Ok(out)
}

pub(crate) fn conv_transpose2x2(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let [n, cout, _, _] = medsa_core::backend::conv_transpose2x2_shape(x, w, b)?;
    let (cin, h, wd) = (x.dim(1), x.dim(2), x.dim(3));
    let hw = h * wd;
    let mut out = Tensor::zeros(vec![n, cout, 2 * h, 2 * wd])?;
    out.data_mut().par_chunks_mut(cout * 4 * hw).enumerate().for_each(|(bi, ob)| {
        let xb = &x.data()[bi * cin * hw..(bi + 1) * cin * hw];
        // prod [(o, di, dj), (i, j)] = Wᵀ [cout·4, cin] · x [cin, h·w]
        let mut prod = vec![0f32; cout * 4 * hw];
        matmul_into(
            &mut prod,
            MatRef::transposed(w.data(), cout * 4, cin),
            MatRef::row_major(xb, cin, hw),
            false,
            Par::Auto,
        );
        // Scatter the four taps of each output channel into its 2H x 2W plane, in parallel.
        ob.par_chunks_mut(4 * hw).enumerate().for_each(|(o, plane)| {
            let bo = b.data()[o];
            for d in 0..4 {
                let (di, dj) = (d / 2, d % 2);
                let src = &prod[(o * 4 + d) * hw..(o * 4 + d + 1) * hw];
                for i in 0..h {
                    let row = &mut plane[(2 * i + di) * 2 * wd..(2 * i + di + 1) * 2 * wd];
                    for j in 0..wd {
                        row[2 * j + dj] = src[i * wd + j] + bo;
                    }
                }
            }
        });
    });
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The depthwise fast path against a per-pixel loop, over strides, paddings and kernels
    /// (bit-identical: same summation order).
    #[test]
    fn depthwise_matches_naive_loop() {
        for (h, w, k, s, p) in [
            (7, 9, 3, 1, 1),
            (8, 8, 3, 2, 1),
            (9, 5, 3, 2, 0),
            (6, 7, 5, 1, 2),
            (5, 5, 1, 2, 0),
            (4, 6, 3, 3, 2),
        ] {
            let c = 3;
            let x = Tensor::from_fn(vec![2, c, h, w], |i| ((i * 37) % 23) as f32 * 0.1 - 1.0).unwrap();
            let wt = Tensor::from_fn(vec![c, 1, k, k], |i| ((i * 11) % 7) as f32 * 0.3 - 0.9).unwrap();
            let y = conv2d(&x, &wt, None, Conv2d { stride: s, padding: p, groups: c }).unwrap();
            let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            assert_eq!(y.shape(), &[2, c, ho, wo]);
            for b in 0..2 {
                for ch in 0..c {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let mut acc = 0f32;
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (
                                        (oy * s + ky) as isize - p as isize,
                                        (ox * s + kx) as isize - p as isize,
                                    );
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                        acc += x.data()[((b * c + ch) * h + iy as usize) * w + ix as usize]
                                            * wt.data()[(ch * k + ky) * k + kx];
                                    }
                                }
                            }
                            assert_eq!(
                                y.data()[((b * c + ch) * ho + oy) * wo + ox],
                                acc,
                                "{h}x{w} k{k} s{s} p{p}"
                            );
                        }
                    }
                }
            }
        }
    }
}
