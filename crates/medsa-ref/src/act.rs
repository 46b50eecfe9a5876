//! Elementwise activations and the row softmax, written branch-free so they vectorise.

/// `exp(x)` in f32 with relative error below 2e-7 on the range softmax uses; `-inf` → 0,
/// large arguments saturate to `+inf`.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    // exp(x) = 2^(x·log2 e) = 2^n · 2^f with n = round(.), f in [-0.5, 0.5].
    let x = x.clamp(-87.3, 88.0);
    let t = x * std::f32::consts::LOG2_E;
    // round(t) by the 1.5·2^23 trick (ties to even): pure float/integer lane ops, so the loops
    // that call this vectorise (`f32::round` and a saturating `as i32` do not).
    const MAGIC: f32 = 12_582_912.0;
    let m = t + MAGIC;
    let n = m - MAGIC;
    let ni = (m.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    // f·ln2 computed in two parts (Cody-Waite) to keep precision.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    // exp(r) for |r| <= 0.347 by its Taylor polynomial to degree 7, in fused multiply-adds
    // (one rounding per Horner step; `mul_add` is a single instruction on x86-64-v3).
    let mut p = 1.984_127e-4f32;
    for c in [1.388_889e-3, 8.333_334e-3, 4.166_666_8e-2, 1.666_666_7e-1, 0.5, 1.0, 1.0] {
        p = p.mul_add(r, c);
    }
    let bits = (ni.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `erfc(x)` with fractional error below 1.2e-7 (Chebyshev fit of Numerical Recipes' `erfcc`).
#[inline(always)]
pub(crate) fn erfc(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut poly = 0.170_872_77f32;
    for c in [
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
    ] {
        poly = poly.mul_add(t, c);
    }
    let poly = t.mul_add(poly, (-z).mul_add(z, -1.265_512_2));
    let ans = t * fast_exp(poly);
    if x >= 0.0 {
        ans
    } else {
        2.0 - ans
    }
}

/// Exact GELU, `0.5 x (1 + erf(x/√2)) = 0.5 x erfc(−x/√2)`, in place.
pub(crate) fn gelu_inplace(xs: &mut [f32]) {
    for v in xs {
        *v = 0.5 * *v * erfc(-*v * std::f32::consts::FRAC_1_SQRT_2);
    }
}

/// [`gelu_inplace`] of `xs` in a new vector, each element written once: no zero fill first,
/// which for a fresh allocation of this size also meant faulting its pages in (a zeroed 8 MB
/// buffer cost more than the GELU itself).
pub(crate) fn gelu_new(xs: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    const CHUNK: usize = 1 << 14;
    let into = |out: &mut [MaybeUninit<f32>], xs: &[f32]| {
        for (o, &v) in out.iter_mut().zip(xs) {
            o.write(0.5 * v * erfc(-v * std::f32::consts::FRAC_1_SQRT_2));
        }
    };
    let mut y = Vec::with_capacity(xs.len());
    let out = &mut y.spare_capacity_mut()[..xs.len()];
    if xs.len() < medsa_core::par::SERIAL_BELOW {
        into(out, xs);
    } else {
        out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(o, x)| into(o, x));
    }
    // SAFETY: `into` wrote every one of the `xs.len()` elements (the chunks cover `out`).
    unsafe { y.set_len(xs.len()) };
    y
}

/// Dot product with 8 independent accumulators, so it vectorises.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ x` with eight independent partial sums, so that the loop vectorises.
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    let c = x.chunks_exact(L);
    let tail: f32 = c.remainder().iter().sum();
    for v in c {
        for i in 0..L {
            acc[i] += v[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Softmax of one row in place: max-subtracted, so no overflow for any finite input. Returns
/// the row's log-sum-exp `max + ln Σ exp(x − max)` (what an attention backward keeps).
pub(crate) fn softmax_row(row: &mut [f32]) -> f32 {
    // Lane-wise max and sum (16 independent accumulators) so the loops vectorise: a single
    // float accumulator is a serial dependency the compiler may not reorder.
    const L: usize = 16;
    let mut mx = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for i in 0..L {
            mx[i] = if c[i] > mx[i] { c[i] } else { mx[i] };
        }
    }
    let m = chunks.remainder().iter().chain(&mx).fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut acc = [0f32; L];
    let mut chunks = row.chunks_exact_mut(L);
    for c in &mut chunks {
        for i in 0..L {
            let e = fast_exp(c[i] - m);
            c[i] = e;
            acc[i] += e;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = fast_exp(*v - m);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
    m + sum.ln()
}

/// Softmax of every `n`-wide row of `rows` in place, for short rows (`n` below the 16 lanes
/// [`softmax_row`] works in): the exponentials run over the whole slice at once so they
/// vectorise across rows.
pub(crate) fn softmax_short_rows(rows: &mut [f32], n: usize) {
    for row in rows.chunks_exact_mut(n) {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
        row.iter_mut().for_each(|v| *v -= m);
    }
    rows.iter_mut().for_each(|v| *v = fast_exp(*v));
    for row in rows.chunks_exact_mut(n) {
        let inv = 1.0 / row.iter().sum::<f32>();
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let e = (x as f64).exp();
            worst = worst.max(((fast_exp(x) as f64 - e) / e).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst rel error {worst}");
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
        assert!(fast_exp(100.0).is_finite());
    }

    #[test]
    fn erfc_is_accurate() {
        // Reference values of erfc.
        for (x, e) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122),
            (1.0, 0.157_299_207),
            (-1.0, 1.842_700_79),
            (2.0, 4.677_734_98e-3),
            (3.0, 2.209_049_7e-5),
        ] {
            let got = erfc(x) as f64;
            assert!(((got - e) / e).abs() < 5e-7, "erfc({x}) = {got}, want {e}");
        }
    }
}
