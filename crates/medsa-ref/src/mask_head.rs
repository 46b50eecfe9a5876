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
    let (w0, b0) = conv_transpose_taps(up.conv0.0, up.conv0.1)?;
    let (w1, b1) = conv_transpose_taps(up.conv1.0, up.conv1.1)?;
    let (ln_w, ln_b, eps) = (up.norm.0.data(), up.norm.1.data(), up.norm.2);
    // Per (set, image row): its four output rows of every mask, [M, 4, 4·G_w].
    let item = m * 4 * ow;
    let mut rows_out = vec![0f32; b * gh * item];
    rows_out.par_chunks_mut(item.max(1)).enumerate().for_each(|(task, dst)| {
        let (s, i) = (task / gh, task % gh);
        let x = &keys.data()[(s * gh + i) * gw * d..][..gw * d];
        // Stage 1: [G_w, D] → [G_w, 4·C1] = [4·G_w, C1] rows (j, di, dj).
        let mut h1 = repeat_rows(b0.data(), gw);
        matmul_into(
            &mut h1,
            MatRef::row_major(x, gw, d),
            MatRef::transposed(w0.data(), d, 4 * c1),
            true,
            Par::Seq,
        );
        h1.chunks_exact_mut(c1).for_each(|r| normalize_row(r, ln_w, ln_b, eps));
        gelu_inplace(&mut h1);
        // Stage 2: [4·G_w, C1] → [16·G_w, C2] rows (j, di, dj, ei, ej).
        let mut h2 = repeat_rows(b1.data(), 4 * gw);
        matmul_into(
            &mut h2,
            MatRef::row_major(&h1, 4 * gw, c1),
            MatRef::transposed(w1.data(), c1, 4 * c2),
            true,
            Par::Seq,
        );
        gelu_inplace(&mut h2);
        // Logits [16·G_w, M] = h2 · hyper[s]ᵀ.
        let mut logits = vec![0f32; 16 * gw * m];
        matmul_into(
            &mut logits,
            MatRef::row_major(&h2, 16 * gw, c2),
            MatRef::transposed(&hyper.data()[s * m * c2..(s + 1) * m * c2], c2, m),
            false,
            Par::Seq,
        );
        // Row ((j·2 + di)·2 + dj)·4 + ei·2 + ej is pixel (2di + ei, 4j + 2dj + ej) of this band.
        for (r, px) in logits.chunks_exact(m).enumerate() {
            let (ej, ei, dj, di, j) = (r & 1, (r >> 1) & 1, (r >> 2) & 1, (r >> 3) & 1, r >> 4);
            let (y, xo) = (2 * di + ei, 4 * j + 2 * dj + ej);
            for (mm, &v) in px.iter().enumerate() {
                dst[(mm * 4 + y) * ow + xo] = v;
            }
        }
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
