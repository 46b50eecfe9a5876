//! SAM's mask head (spec 5.1) fused: upscaling by two 2×2 transposed convolutions with
//! LayerNorm2d and GELU, then the dot product with each mask token's hypernetwork output.
//!
//! One task per image row of one prompt set runs the whole chain on that row's pixels, so the
//! 16× larger intermediates never leave the cache and the work needs a single fork-join. Each
//! transposed convolution is a product with the pixel's channels on one side and its four taps
//! side by side on the other (as in `medsa_core::backend::upscale_masks_composed`, which this is
//! tested against).

use crate::act::gelu_inplace;
use crate::gemm::{matmul_into, MatRef, Par};
use crate::norm::normalize_row;
use medsa_core::backend::{conv_transpose_taps, upscale_masks_dims};
use medsa_core::{Result, Tensor, Upscaling};
use rayon::prelude::*;

pub(crate) fn upscale_masks(
    keys: &Tensor,
    grid: (usize, usize),
    up: &Upscaling<'_>,
    hyper: &Tensor,
) -> Result<Tensor> {
    let (b, d, c1, c2, m) = upscale_masks_dims(keys, grid, up, hyper)?;
    let (gh, gw) = grid;
    let (oh, ow) = (4 * gh, 4 * gw);
    // Taps weights as [4·Cout, Cin]; the products below read them transposed.
    let (w0, b0) = conv_transpose_taps(&crate::Cpu, up.conv0.0, up.conv0.1)?;
    let (w1, b1) = conv_transpose_taps(&crate::Cpu, up.conv1.0, up.conv1.1)?;
    let (ln_w, ln_b, eps) = (up.norm.0.data(), up.norm.1.data(), up.norm.2);
    // Per (set, image row): its four output rows of every mask, [M, 4, 4·G_w]. A task takes a
    // band of image rows: about 256 pixels, whose largest intermediate (4096 rows of C2) stays
    // in L2 and whose products are big enough to amortise packing the weights.
    let item = m * 4 * ow;
    let band = (256 / gw.max(1)).max(1);
    let mut rows_out = vec![0f32; b * gh * item];
    if item == 0 {
        return Tensor::new(vec![b, m, oh, ow], rows_out);
    }
    rows_out.par_chunks_mut(gh * item).enumerate().for_each(|(s, set_out)| {
        set_out.par_chunks_mut(band * item).enumerate().for_each(|(bi, dst)| {
            let (i0, np) = (bi * band, dst.len() / item * gw);
            let x = &keys.data()[(s * gh + i0) * gw * d..][..np * d];
            // Stage 1: [np, D] → [np, 4·C1] = [4·np, C1] rows (pixel, di, dj).
            let mut h1 = repeat_rows(b0.data(), np);
            matmul_into(
                &mut h1,
                MatRef::row_major(x, np, d),
                MatRef::transposed(w0.data(), d, 4 * c1),
                true,
                Par::Seq,
            );
            h1.chunks_exact_mut(c1).for_each(|r| normalize_row(r, ln_w, ln_b, eps));
            gelu_inplace(&mut h1);
            // Stage 2: [4·np, C1] → [16·np, C2] rows (pixel, di, dj, ei, ej).
            let mut h2 = repeat_rows(b1.data(), 4 * np);
            matmul_into(
                &mut h2,
                MatRef::row_major(&h1, 4 * np, c1),
                MatRef::transposed(w1.data(), c1, 4 * c2),
                true,
                Par::Seq,
            );
            gelu_inplace(&mut h2);
            // Logits [16·np, M] = h2 · hyper[s]ᵀ.
            let mut logits = vec![0f32; 16 * np * m];
            matmul_into(
                &mut logits,
                MatRef::row_major(&h2, 16 * np, c2),
                MatRef::transposed(&hyper.data()[s * m * c2..(s + 1) * m * c2], c2, m),
                false,
                Par::Seq,
            );
            // Row (((p·2 + di)·2 + dj)·2 + ei)·2 + ej, p = i·G_w + j, is pixel
            // (2di + ei, 4j + 2dj + ej) of image row i0 + i.
            for (r, px) in logits.chunks_exact(m).enumerate() {
                let (ej, ei, dj, di, p) = (r & 1, (r >> 1) & 1, (r >> 2) & 1, (r >> 3) & 1, r >> 4);
                let (i, j) = (p / gw, p % gw);
                let (y, xo) = (2 * di + ei, 4 * j + 2 * dj + ej);
                for (mm, &v) in px.iter().enumerate() {
                    dst[((i * m + mm) * 4 + y) * ow + xo] = v;
                }
            }
        });
    });
    // [B, G_h, M, 4·4G_w] → [B, M, G_h, 4·4G_w] = [B, M, 4G_h, 4G_w].
    Tensor::new(vec![b, gh, m, 4 * ow], rows_out)?.permute(&[0, 2, 1, 3])?.reshape(vec![b, m, oh, ow])
}

/// `rows` copies of `row`, back to back.
fn repeat_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows * row.len());
    for _ in 0..rows {
        v.extend_from_slice(row);
    }
    v
}
