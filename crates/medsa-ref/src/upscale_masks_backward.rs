//! The backward of the fused mask head ([`crate::upscale_masks`]) from its tape. The four
//! products (each transposed convolution's input and weight gradients) run over the whole image,
//! where the GEMM is fastest; everything between them is fused into two passes over bands of
//! rows, each a single fork-join: (1) the logits' gradient put in tap order, its products with
//! the mask tokens' vectors (`dhyper`, and the second GELU's output gradient: a product with
//! only M terms, done row by row) and the second GELU's derivative; (2) the first GELU's
//! derivative and LayerNorm2d's backward. Each GELU's derivative comes from the tape's input and
//! output of it ([`crate::backward::gelu_grad_from_output`]), without an `erfc`. Sums over pixels
//! run per band and are added in band order, so the result is the same on every run. Tested
//! against the op-by-op composition
//! [`medsa_core::backward::upscale_masks_backward_taped_composed`].

use crate::backward::{gelu_grad_from_output, layer_norm_backward_row};
use crate::gemm::{matmul_new, MatRef, Par};
use medsa_core::backend::{conv_transpose_taps, upscale_masks_dims};
use medsa_core::backward::{
    taps_to_conv_transpose, upscale_masks_backward_taped_composed, UpscaleGrads, UpscaleTape,
};
use medsa_core::{Result, Tensor, Upscaling};
use rayon::prelude::*;

const OP: &str = "upscale_masks_backward";

/// Pixels per task of the two fused passes (as in the forward's bands).
const BAND_PIXELS: usize = 256;

/// `acc[k] += Σ_rows x[row, k]` for the row-major `[rows, acc.len()]` slice `x`.
fn add_column_sums(acc: &mut [f64], x: &[f32]) {
    for row in x.chunks_exact(acc.len().max(1)) {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
    }
}

/// The per-band sums, added in band order.
fn total(parts: impl Iterator<Item = Vec<f64>>, n: usize) -> Result<Tensor> {
    let mut acc = vec![0f64; n];
    for p in parts {
        acc.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
    }
    Tensor::new(vec![n], acc.into_iter().map(|v| v as f32).collect())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn upscale_masks_backward(
    keys: &Tensor,
    grid: (usize, usize),
    up: &Upscaling<'_>,
    hyper: &Tensor,
    tape: &UpscaleTape,
    dlogits: &Tensor,
    params: bool,
) -> Result<UpscaleGrads> {
    let (b, d, c1, c2, m) = upscale_masks_dims(keys, grid, up, hyper)?;
    let (gh, gw) = grid;
    let gg = gh * gw;
    dlogits.expect_shape(OP, "dlogits", &[b, m, 4 * gh, 4 * gw])?;
    let [h0, n0, g0, h1, g1] = tape.layers();
    for (t, what) in [(h0, "tape h0"), (n0, "tape n0"), (g0, "tape g0")] {
        t.expect_shape(OP, what, &[b, 4 * gg, c1])?;
    }
    for (t, what) in [(h1, "tape h1"), (g1, "tape g1")] {
        t.expect_shape(OP, what, &[b, 16 * gg, c2])?;
    }
    if b * gg * m == 0 {
        // Nothing to cut into bands: the plain composition.
        return upscale_masks_backward_taped_composed(
            &crate::Cpu,
            keys,
            grid,
            up,
            hyper,
            tape,
            dlogits,
            params,
        );
    }
    // Tap weights `[4·Cout, Cin]`: the input gradient of a tap product is `dy · W`.
    let (w0, _) = conv_transpose_taps(&crate::Cpu, up.conv0.0, up.conv0.1)?;
    let (w1, _) = conv_transpose_taps(&crate::Cpu, up.conv1.0, up.conv1.1)?;
    let (ln_w, eps) = (up.norm.0.data(), up.norm.2);
    let (oh, ow) = (4 * gh, 4 * gw);
    let rows = b * gg;
    // Pass 1, per (set, band of image rows): dh1 `[16·np, C2]` = (dlt · hyper) ∘ GELU'(h1),
    // with dlt the logits' gradient in tap order, and the band's `dlt_ᵀ · g1` and Σ dh1.
    let band = (BAND_PIXELS / gw).max(1);
    let mut dh1 = vec![0f32; rows * 16 * c2];
    let tasks: Vec<(usize, usize, &mut [f32])> = dh1
        .chunks_mut(16 * gg * c2)
        .enumerate()
        .flat_map(|(s, set)| set.chunks_mut(16 * band * gw * c2).enumerate().map(move |(bi, p)| (s, bi, p)))
        .collect();
    let pass1: Vec<(Vec<f32>, Vec<f64>)> = tasks
        .into_par_iter()
        .map(|(s, bi, out)| {
            let (i0, np) = (bi * band, out.len() / (16 * c2));
            let at = (s * gg + i0 * gw) * 16 * c2;
            let (h1b, g1b) = (&h1.data()[at..][..16 * np * c2], &g1.data()[at..][..16 * np * c2]);
            // Row (((p·2 + di)·2 + dj)·2 + ei)·2 + ej, p = i·G_w + j, is pixel
            // (4(i0 + i) + 2di + ei, 4j + 2dj + ej).
            let mut dlt = vec![0f32; 16 * np * m];
            for mm in 0..m {
                let plane = &dlogits.data()[(s * m + mm) * oh * ow..][..oh * ow];
                for i in 0..np / gw {
                    for y in 0..4 {
                        let (di, ei) = (y / 2, y % 2);
                        for (x, &v) in plane[(4 * (i0 + i) + y) * ow..][..ow].iter().enumerate() {
                            let (j, dj, ej) = (x / 4, x / 2 % 2, x % 2);
                            dlt[((((((i * gw + j) * 2 + di) * 2 + dj) * 2 + ei) * 2) + ej) * m + mm] = v;
                        }
                    }
                }
            }
            let hyper_s = &hyper.data()[s * m * c2..][..m * c2];
            let mut dhyper = vec![0f32; m * c2];
            for (((o, dl), x), y) in out
                .chunks_exact_mut(c2)
                .zip(dlt.chunks_exact(m))
                .zip(h1b.chunks_exact(c2))
                .zip(g1b.chunks_exact(c2))
            {
                for ((&g, hrow), dh) in
                    dl.iter().zip(hyper_s.chunks_exact(c2)).zip(dhyper.chunks_exact_mut(c2))
                {
                    o.iter_mut().zip(hrow).for_each(|(o, &h)| *o += g * h);
                    dh.iter_mut().zip(y).for_each(|(d, &v)| *d += g * v);
                }
                o.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (&x, &y))| *o *= gelu_grad_from_output(x, y));
            }
            let mut db1 = vec![0f64; if params { 4 * c2 } else { 0 }];
            if params {
                add_column_sums(&mut db1, out);
            }
            (dhyper, db1)
        })
        .collect();
    // The second transposed convolution: dg0 = dh1 · W1 `[4·rows, C1]`, dW1 = dh1ᵀ · g0.
    let dh1_m = MatRef::row_major(&dh1, 4 * rows, 4 * c2);
    let mut dh0 = matmul_new(dh1_m, MatRef::row_major(w1.data(), 4 * c2, c1), Par::Auto);
    let dw1 = params.then(|| {
        matmul_new(
            MatRef::transposed(&dh1, 4 * c2, 4 * rows),
            MatRef::row_major(g0.data(), 4 * rows, c1),
            Par::Auto,
        )
    });
    drop(dh1);
    // Pass 2, per band of pixels, in place: GELU'(n0), then LayerNorm2d's backward row by row;
    // the band's LayerNorm sums and Σ dh0.
    let chunk = BAND_PIXELS * 4 * c1;
    let pass2: Vec<[Vec<f64>; 3]> = dh0
        .par_chunks_mut(chunk)
        .zip(h0.data().par_chunks(chunk).zip(n0.data().par_chunks(chunk).zip(g0.data().par_chunks(chunk))))
        .map(|(d, (x, (n, g)))| {
            let zeros = |k: usize| vec![0f64; if params { k } else { 0 }];
            let (mut nw, mut nb, mut db0) = (zeros(c1), zeros(c1), zeros(4 * c1));
            let (mut xhat, mut dy) = (vec![0f64; c1], vec![0f32; c1]);
            for (((dr, xr), nr), gr) in
                d.chunks_exact_mut(c1).zip(x.chunks_exact(c1)).zip(n.chunks_exact(c1)).zip(g.chunks_exact(c1))
            {
                dy.iter_mut().zip(dr.iter().zip(nr.iter().zip(gr))).for_each(|(o, (&d, (&x, &y)))| {
                    *o = d * gelu_grad_from_output(x, y);
                });
                let sums = params.then_some((nw.as_mut_slice(), nb.as_mut_slice()));
                layer_norm_backward_row((xr, &dy, ln_w, eps), &mut xhat, dr, sums);
            }
            if params {
                add_column_sums(&mut db0, d);
            }
            [nw, nb, db0]
        })
        .collect();
    // The first transposed convolution: dkeys = dh0 · W0 `[rows, D]`, dW0 = dh0ᵀ · keys.
    let dh0_m = MatRef::row_major(&dh0, rows, 4 * c1);
    let dkeys =
        Tensor::new(vec![b, gg, d], matmul_new(dh0_m, MatRef::row_major(w0.data(), 4 * c1, d), Par::Auto))?;
    let mut dhyper = vec![0f32; b * m * c2];
    let per_set = gh.div_ceil(band);
    for (k, (part, _)) in pass1.iter().enumerate() {
        let set = &mut dhyper[k / per_set * m * c2..][..m * c2];
        set.iter_mut().zip(part).for_each(|(a, v)| *a += v);
    }
    let dhyper = Tensor::new(vec![b, m, c2], dhyper)?;
    let Some(dw1) = dw1 else {
        return Ok(UpscaleGrads { dkeys, dhyper, conv0: None, norm: None, conv1: None });
    };
    let dw0 = matmul_new(
        MatRef::transposed(&dh0, 4 * c1, rows),
        MatRef::row_major(keys.data(), rows, d),
        Par::Auto,
    );
    let [nw, nb, db0] =
        std::array::from_fn(|k| total(pass2.iter().map(|p| p[k].clone()), [c1, c1, 4 * c1][k]));
    let db1 = total(pass1.into_iter().map(|p| p.1), 4 * c2)?;
    let conv0 = taps_to_conv_transpose(&Tensor::new(vec![4 * c1, d], dw0)?, &db0?, d, c1)?;
    let conv1 = taps_to_conv_transpose(&Tensor::new(vec![4 * c2, c1], dw1)?, &db1, c1, c2)?;
    Ok(UpscaleGrads { dkeys, dhyper, conv0: Some(conv0), norm: Some((nw?, nb?)), conv1: Some(conv1) })
}
