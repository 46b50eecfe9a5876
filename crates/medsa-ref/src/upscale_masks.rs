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
use medsa_core::backward::{upscale_masks_taped_composed, UpscaleTape};
use medsa_core::{Result, Tensor, Upscaling};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The mask logits and, with `taped`, the tape of the layers' outputs
/// ([`medsa_core::backward::UpscaleTape`]): each band writes its rows of them as it goes, so the
/// training forward keeps the fused chain's locality and its single fork-join.
pub(crate) fn upscale_masks(
    keys: &Tensor,
    grid: (usize, usize),
    up: &Upscaling<'_>,
    hyper: &Tensor,
    taped: bool,
) -> Result<(Tensor, Option<UpscaleTape>)> {
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
    // The tape's five tensors, [B, 4·G², C1] three times and [B, 16·G², C2] twice.
    let (n1, n2) =
        (if taped { b * gh * gw * 4 * c1 } else { 0 }, if taped { b * gh * gw * 16 * c2 } else { 0 });
    // Not zero-filled: every element is written once by the band that owns it (a zero fill of
    // these 28 MB at LiteMedSAM's size cost as much as the chain itself).
    let mut tape: [Vec<f32>; 5] = [n1, n1, n1, n2, n2].map(Vec::with_capacity);
    if item == 0 || gw == 0 {
        // No logits to place (no mask or an empty grid): the plain composition.
        if taped {
            let (logits, tape) = upscale_masks_taped_composed(&crate::Cpu, keys, grid, up, hyper)?;
            return Ok((logits, Some(tape)));
        }
        return Ok((Tensor::new(vec![b, m, oh, ow], rows_out)?, None));
    }
    // One task per (set, band): its logits rows and, taped, its rows of each tape tensor.
    /// `v` cut per set, then per band of `band` image rows, `per_px` values per pixel.
    fn split(
        v: &mut [MaybeUninit<f32>],
        (gg, rows): (usize, usize),
        per_px: usize,
    ) -> std::vec::IntoIter<&mut [MaybeUninit<f32>]> {
        let set = (gg * per_px).max(1);
        v.chunks_mut(set).flat_map(|s| s.chunks_mut((rows * per_px).max(1))).collect::<Vec<_>>().into_iter()
    }
    let geom = (gh * gw, band * gw);
    let [t0, t1, t2, t3, t4] = &mut tape;
    let mut parts = [
        split(&mut t0.spare_capacity_mut()[..n1], geom, 4 * c1),
        split(&mut t1.spare_capacity_mut()[..n1], geom, 4 * c1),
        split(&mut t2.spare_capacity_mut()[..n1], geom, 4 * c1),
        split(&mut t3.spare_capacity_mut()[..n2], geom, 16 * c2),
        split(&mut t4.spare_capacity_mut()[..n2], geom, 16 * c2),
    ];
    let mut tasks = Vec::new();
    for (s, set_out) in rows_out.chunks_mut(gh * item).enumerate() {
        for (bi, dst) in set_out.chunks_mut(band * item).enumerate() {
            let t = std::array::from_fn::<_, 5, _>(|k| parts[k].next());
            tasks.push((s, bi, dst, t));
        }
    }
    tasks.into_par_iter().for_each(|(s, bi, dst, mut t)| {
        let (i0, np) = (bi * band, dst.len() / item * gw);
        let x = &keys.data()[(s * gh + i0) * gw * d..][..np * d];
        let mut keep = |k: usize, v: &[f32]| {
            if let Some(t) = t[k].as_deref_mut() {
                assert_eq!(t.len(), v.len(), "a band's tape part has its stage's length");
                t.iter_mut().zip(v).for_each(|(t, &v)| {
                    t.write(v);
                });
            }
        };
        // Stage 1: [np, D] → [np, 4·C1] = [4·np, C1] rows (pixel, di, dj).
        let mut h1 = repeat_rows(b0.data(), np);
        matmul_into(
            &mut h1,
            MatRef::row_major(x, np, d),
            MatRef::transposed(w0.data(), d, 4 * c1),
            true,
            Par::Seq,
        );
        keep(0, &h1);
        h1.chunks_exact_mut(c1).for_each(|r| normalize_row(r, ln_w, ln_b, eps));
        keep(1, &h1);
        gelu_inplace(&mut h1);
        keep(2, &h1);
        // Stage 2: [4·np, C1] → [16·np, C2] rows (pixel, di, dj, ei, ej).
        let mut h2 = repeat_rows(b1.data(), 4 * np);
        matmul_into(
            &mut h2,
            MatRef::row_major(&h1, 4 * np, c1),
            MatRef::transposed(w1.data(), c1, 4 * c2),
            true,
            Par::Seq,
        );
        keep(3, &h2);
        gelu_inplace(&mut h2);
        keep(4, &h2);
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
    // [B, G_h, M, 4·4G_w] → [B, M, G_h, 4·4G_w] = [B, M, 4G_h, 4G_w].
    let logits =
        Tensor::new(vec![b, gh, m, 4 * ow], rows_out)?.permute(&[0, 2, 1, 3])?.reshape(vec![b, m, oh, ow])?;
    if taped {
        for (t, n) in tape.iter_mut().zip([n1, n1, n1, n2, n2]) {
            // SAFETY: the bands' parts cover each buffer's first `n` elements exactly (the
            // buffers are cut per set and band as the logits are), and every band wrote each of
            // its parts whole: the stage outputs have the part's length.
            unsafe { t.set_len(n) };
        }
    }
    let tape = taped.then(|| to_tape(tape, b, gh * gw, c1, c2)).transpose()?;
    Ok((logits, tape))
}

/// The five tape buffers as an [`UpscaleTape`].
fn to_tape(
    [h0, n0, g0, h1, g1]: [Vec<f32>; 5],
    b: usize,
    gg: usize,
    c1: usize,
    c2: usize,
) -> Result<UpscaleTape> {
    let first = |v| Tensor::new(vec![b, 4 * gg, c1], v);
    let second = |v| Tensor::new(vec![b, 16 * gg, c2], v);
    Ok(UpscaleTape::from_layers(first(h0)?, first(n0)?, first(g0)?, second(h1)?, second(g1)?))
}

/// `rows` copies of `row`, back to back.
fn repeat_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows * row.len());
    for _ in 0..rows {
        v.extend_from_slice(row);
    }
    v
}
