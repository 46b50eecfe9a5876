//! Resizes with PyTorch `F.interpolate` semantics, align_corners False, no antialias
//! (spec 3.2 bicubic, 6.1 bilinear, 6.2 nearest).

use medsa_core::{Error, ResizeMode, Result, Tensor};
use rayon::prelude::*;

/// Per-output-index source taps and weights along one axis.
struct Axis {
    taps: Vec<[usize; 4]>,
    weights: Vec<[f32; 4]>,
}

fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

fn axis(input: usize, output: usize, mode: ResizeMode) -> Axis {
    let scale = input as f32 / output as f32;
    let last = input as isize - 1;
    let clamp = |i: isize| i.clamp(0, last) as usize;
    let mut taps = Vec::with_capacity(output);
    let mut weights = Vec::with_capacity(output);
    for o in 0..output {
        match mode {
            ResizeMode::Bicubic => {
                let src = scale * (o as f32 + 0.5) - 0.5;
                let i0 = src.floor();
                let t = src - i0;
                let i0 = i0 as isize;
                taps.push([clamp(i0 - 1), clamp(i0), clamp(i0 + 1), clamp(i0 + 2)]);
                weights.push(cubic_weights(t));
            }
            ResizeMode::Bilinear => {
                let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src as usize).min(input - 1);
                let i1 = if (i0 as isize) < last { i0 + 1 } else { i0 };
                let l1 = (src - i0 as f32).clamp(0.0, 1.0);
                taps.push([i0, i1, i0, i0]);
                weights.push([1.0 - l1, l1, 0.0, 0.0]);
            }
            ResizeMode::Nearest => {
                let src =
                    if input == output { o } else { ((o as f32 * scale).floor() as usize).min(input - 1) };
                taps.push([src; 4]);
                weights.push([1.0, 0.0, 0.0, 0.0]);
            }
        }
    }
    Axis { taps, weights }
}

pub(crate) fn resize(x: &Tensor, out: (usize, usize), mode: ResizeMode) -> Result<Tensor> {
    const OP: &str = "resize";
    x.expect_rank(OP, "input", 4)?;
    let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (oh, ow) = out;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(Error::arg(OP, format!("cannot resize {h}x{w} to {oh}x{ow}")));
    }
    let ay = axis(h, oh, mode);
    let ax = axis(w, ow, mode);
    let mut y = Tensor::zeros(vec![b, c, oh, ow])?;
    y.data_mut().par_chunks_mut(oh * ow).zip(x.data().par_chunks(h * w)).for_each(|(o, src)| {
        // Along W into a [h, ow] buffer, then along H: separable as in spec 3.2.
        let mut tmp = vec![0f32; h * ow];
        for r in 0..h {
            let row = &src[r * w..(r + 1) * w];
            for (j, (t, wt)) in ax.taps.iter().zip(&ax.weights).enumerate() {
                tmp[r * ow + j] = (0..4).map(|i| row[t[i]] * wt[i]).sum();
            }
        }
        for (i, (t, wt)) in ay.taps.iter().zip(&ay.weights).enumerate() {
            for j in 0..ow {
                o[i * ow + j] = (0..4).map(|k| tmp[t[k] * ow + j] * wt[k]).sum();
            }
        }
    });
    Ok(y)
}
