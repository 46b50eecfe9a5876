//! Convolutions: im2col + GEMM, a direct depthwise path, and the 2x2/stride-2 transposed conv.

use crate::gemm::{matmul_into, MatRef, Par};
use medsa_core::{Conv2d, Error, Result, Tensor};
use rayon::prelude::*;

pub(crate) fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: Conv2d) -> Result<Tensor> {
    const OP: &str = "conv2d";
    x.expect_rank(OP, "input", 4)?;
    w.expect_rank(OP, "weight", 4)?;
    let (n, cin, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (cout, cpg, kh, kw) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
    if g.stride == 0 || g.groups == 0 || kh == 0 || kw == 0 {
        return Err(Error::arg(OP, format!("stride {}, groups {}, kernel {kh}x{kw}", g.stride, g.groups)));
    }
    if cin % g.groups != 0 || cout % g.groups != 0 || cpg != cin / g.groups {
        return Err(Error::shape(
            OP,
            format!("input {:?} and weight {:?} do not fit groups {}", x.shape(), w.shape(), g.groups),
        ));
    }
    if let Some(b) = b {
        b.expect_shape(OP, "bias", &[cout])?;
    }
    let (hp, wp) = (h + 2 * g.padding, wd + 2 * g.padding);
    if hp < kh || wp < kw {
        return Err(Error::shape(OP, format!("kernel {kh}x{kw} larger than padded input {hp}x{wp}")));
    }
    let (ho, wo) = ((hp - kh) / g.stride + 1, (wp - kw) / g.stride + 1);
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
            ob.par_chunks_mut(npix).enumerate().for_each(|(c, oc)| {
                let xc = &xb[c * h * wd..(c + 1) * h * wd];
                let wc = &ws[c * kh * kw..(c + 1) * kh * kw];
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = 0f32;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                if let Some((iy, ix)) = src(oy, ox, ky, kx) {
                                    acc += xc[iy * wd + ix] * wc[ky * kw + kx];
                                }
                            }
                        }
                        oc[oy * wo + ox] = acc;
                    }
                }
            });
        } else {
            for gi in 0..g.groups {
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
                let wg = &ws[gi * coutg * kdim..(gi + 1) * coutg * kdim];
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
    const OP: &str = "conv_transpose2x2";
    x.expect_rank(OP, "input", 4)?;
    let (n, cin, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    w.expect_rank(OP, "weight", 4)?;
    let cout = w.dim(1);
    w.expect_shape(OP, "weight", &[cin, cout, 2, 2])?;
    b.expect_shape(OP, "bias", &[cout])?;
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
        for o in 0..cout {
            let bo = b.data()[o];
            for d in 0..4 {
                let (di, dj) = (d / 2, d % 2);
                let src = &prod[(o * 4 + d) * hw..(o * 4 + d + 1) * hw];
                for i in 0..h {
                    for j in 0..wd {
                        ob[(o * 2 * h + 2 * i + di) * 2 * wd + 2 * j + dj] = src[i * wd + j] + bo;
                    }
                }
            }
        }
    });
    Ok(out)
}
