//! Layer norms: over the last axis, and SAM's `LayerNorm2d` over channels (spec 2, 3.7).

use rayon::prelude::*;

/// Normalises each `row` of `c` values: biased variance, `eps` inside the root, sums in f64.
pub(crate) fn layer_norm_rows(data: &mut [f32], c: usize, w: &[f32], b: &[f32], eps: f32) {
    if c == 0 {
        return;
    }
    medsa_core::par::for_chunks(data, c * 64, |rows| {
        rows.chunks_exact_mut(c).for_each(|r| normalize_row(r, w, b, eps))
    });
}

/// LayerNorm of one row in place: biased variance, `eps` inside the root, sums in f64.
#[inline]
pub(crate) fn normalize_row(row: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let c = row.len() as f64;
    let mean = lane_sum(row, |v| v) / c;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / c;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for ((v, &g), &bb) in row.iter_mut().zip(w).zip(b) {
        *v = ((*v as f64 - mean) * inv) as f32 * g + bb;
    }
}

/// `Σ f(v)` over `row` in f64 with 8 independent accumulators, so that it vectorises.
#[inline]
fn lane_sum(row: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    const L: usize = 8;
    let mut acc = [0f64; L];
    let chunks = row.chunks_exact(L);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    for ch in chunks {
        for i in 0..L {
            acc[i] += f(ch[i] as f64);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `LayerNorm2d` on `[B, C, H·W]` data: per pixel, across channels.
pub(crate) fn layer_norm_channels(data: &mut [f32], c: usize, hw: usize, w: &[f32], b: &[f32], eps: f32) {
    if c == 0 || hw == 0 {
        return;
    }
    data.par_chunks_mut(c * hw).for_each(|img| {
        let mut mean = vec![0f64; hw];
        let mut var = vec![0f64; hw];
        for ch in img.chunks_exact(hw) {
            mean.iter_mut().zip(ch).for_each(|(m, &v)| *m += v as f64);
        }
        mean.iter_mut().for_each(|m| *m /= c as f64);
        for ch in img.chunks_exact(hw) {
            var.iter_mut().zip(ch).zip(&mean).for_each(|((s, &v), &m)| *s += (v as f64 - m).powi(2));
        }
        let inv: Vec<f64> = var.iter().map(|s| 1.0 / (s / c as f64 + eps as f64).sqrt()).collect();
        for (ci, ch) in img.chunks_exact_mut(hw).enumerate() {
            for p in 0..hw {
                ch[p] = ((ch[p] as f64 - mean[p]) * inv[p]) as f32 * w[ci] + b[ci];
            }
        }
    });
}
