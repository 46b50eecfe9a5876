//! Every backward op of [`medsa_core::Backend`] as `medsa_ref::Cpu` implements it, against
//! central finite differences of an f64 forward written here, on small awkward random shapes.
//!
//! Method: for each op, `L = Σ forward(inputs) ∘ R` for a fixed random `R`, so `dL/doutput = R`;
//! the reference gradient of `L` with respect to every differentiable input (and parameter, when
//! asked for) is `(L(x + h) − L(x − h)) / 2h` in f64 with `h = 1e-5·max(1, |x|)`, and the op's f32
//! gradient for `dy = R` must be within `max|cand − ref| / max(max|ref|, 1e-6) ≤ 1e-3`.
//! Where a perturbation only reaches part of the output (one attention row, one depth sequence,
//! one row of a linear layer), the loss is restricted to that part: the difference is the same.

#![allow(clippy::unwrap_used, clippy::type_complexity, clippy::too_many_arguments)]

use medsa_core::backend::closest_numbers;
use medsa_core::{Backend, Conv2d, DepthGrouping, Error, RelPos, Tensor, Upscaling};
use medsa_ref::Cpu;
use medsa_testkit::{random_tensor, random_vec, rel_err};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Relative error bound of every gradient (see the module docs).
const TOL: f64 = 1e-3;
/// Relative finite-difference step.
const STEP: f64 = 1e-5;

// ---------- helpers ----------

fn f64s(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fails the test case when `cand` is further than `tol` from `reference` (or has another shape),
/// relative to `max(max|ref|, 1e-6)`.
fn close(
    cand: &Tensor,
    shape: &[usize],
    reference: &[f64],
    tol: f64,
    what: &str,
) -> Result<(), TestCaseError> {
    close_floor(cand, shape, reference, 1e-6, tol, what)
}

/// [`close`] relative to `max(max|ref|, floor)`.
fn close_floor(
    cand: &Tensor,
    shape: &[usize],
    reference: &[f64],
    floor: f64,
    tol: f64,
    what: &str,
) -> Result<(), TestCaseError> {
    if cand.shape() != shape {
        return Err(TestCaseError::fail(format!("{what}: shape {:?}, expected {shape:?}", cand.shape())));
    }
    let e = rel_err(cand, reference, floor);
    if e <= tol {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!("{what}: relative error {e:e} > {tol:e}")))
    }
}

/// Central differences of `f` at every element of `x`; `f` also gets the index of the perturbed
/// element so that it may evaluate only the part of the loss that element reaches.
fn fd_local(x: &[f64], step: f64, mut f: impl FnMut(&[f64], usize) -> f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xs[i];
            let h = step * x0.abs().max(1.0);
            xs[i] = x0 + h;
            let lp = f(&xs, i);
            xs[i] = x0 - h;
            let lm = f(&xs, i);
            xs[i] = x0;
            (lp - lm) / (2.0 * h)
        })
        .collect()
}

/// Central differences of `f` at every element of `x` (the whole loss each time).
fn fd(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    fd_local(x, STEP, |xs, _| f(xs))
}

/// Central differences with respect to input `j` of a loss of several inputs.
fn fd_of(inputs: &[Vec<f64>], j: usize, step: f64, mut f: impl FnMut(&[Vec<f64>]) -> f64) -> Vec<f64> {
    let mut cur = inputs.to_vec();
    fd_local(&inputs[j], step, |xs, _| {
        cur[j].copy_from_slice(xs);
        f(&cur)
    })
}

fn erf64(x: f64) -> f64 {
    // Series for |x| < 3, continued fraction beyond: accurate to ~1e-15 here (ops.rs).
    if x.abs() < 3.0 {
        let mut sum = x;
        let mut term = x;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x * x / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let z = x.abs();
        let mut f = z;
        for k in (1..60).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        let erfc = (-z * z).exp() / (f * std::f64::consts::PI.sqrt());
        x.signum() * (1.0 - erfc)
    }
}

fn gelu64(v: f64) -> f64 {
    0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2))
}

fn softmax64(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Mean and biased variance of a row.
fn moments(row: &[f64]) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    (mean, row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n)
}

/// The first element where two tensors of one shape differ in their bits.
fn first_bit_diff(a: &Tensor, b: &Tensor) -> Option<usize> {
    assert_eq!(a.shape(), b.shape(), "shapes");
    a.data().iter().zip(b.data()).position(|(x, y)| x.to_bits() != y.to_bits())
}

fn describe_bit_diff(a: &Tensor, b: &Tensor) -> String {
    match first_bit_diff(a, b) {
        None => "no difference".into(),
        Some(i) => {
            let n = a.data().iter().zip(b.data()).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            format!(
                "{n} of {} elements differ, first at {i}: {:e} vs {:e}",
                a.numel(),
                a.data()[i],
                b.data()[i]
            )
        }
    }
}

fn is_shape_err<T: std::fmt::Debug>(r: medsa_core::Result<T>) -> bool {
    matches!(r, Err(Error::Shape { .. }))
}

// ---------- f64 forwards ----------

/// `Σ_{i in rows, o in cols} (x_i · w_o + b_o) R_io` of a linear layer `x [m, k]`, `w [n, k]`.
fn linear_loss(
    x: &[f64],
    w: &[f64],
    b: &[f64],
    r: &[f64],
    k: usize,
    n: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> f64 {
    let mut l = 0.0;
    for i in rows {
        for o in cols.clone() {
            l += (dot(&x[i * k..(i + 1) * k], &w[o * k..(o + 1) * k]) + b[o]) * r[i * n + o];
        }
    }
    l
}

/// `Σ LayerNorm(x) ∘ R` over rows of `c`.
fn layer_norm_loss(x: &[f64], w: &[f64], b: &[f64], r: &[f64], c: usize, eps: f64) -> f64 {
    let mut l = 0.0;
    for (row, rr) in x.chunks_exact(c).zip(r.chunks_exact(c)) {
        let (mean, var) = moments(row);
        let inv = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            l += ((row[j] - mean) * inv * w[j] + b[j]) * rr[j];
        }
    }
    l
}

/// Geometry of one head of attention with the decomposed bias `(rh, rw, qw, kh, kw)`.
#[derive(Clone, Copy)]
struct Att<'a> {
    nk: usize,
    d: usize,
    dv: usize,
    scale: f64,
    rel: Option<(&'a [f64], &'a [f64], usize, usize, usize)>,
}

/// Logits of query `n` (row `qv`) of one head: `scale·q·k + q·Rh[n_h, m_h] + q·Rw[n_w, m_w]`.
fn att_logits(qv: &[f64], k: &[f64], n: usize, a: &Att<'_>) -> Vec<f64> {
    let d = a.d;
    (0..a.nk)
        .map(|m| {
            let mut s = a.scale * dot(qv, &k[m * d..(m + 1) * d]);
            if let Some((rh, rw, qw, kh, kw)) = a.rel {
                let (i, j) = (n / qw, n % qw);
                let (kk, l) = (m / kw, m % kw);
                s += dot(qv, &rh[(i * kh + kk) * d..][..d]) + dot(qv, &rw[(j * kw + l) * d..][..d]);
            }
            s
        })
        .collect()
}

/// `Σ_c out[n, c] R[n, c]` of query row `n` of one head.
fn att_row_loss(qv: &[f64], k: &[f64], v: &[f64], rr: &[f64], n: usize, a: &Att<'_>) -> f64 {
    let p = softmax64(&att_logits(qv, k, n, a));
    (0..a.dv).map(|c| rr[c] * (0..a.nk).map(|m| p[m] * v[m * a.dv + c]).sum::<f64>()).sum()
}

/// The loss of one head `q [nq, d]`, `k [nk, d]`, `v [nk, dv]`, `r [nq, dv]`.
fn att_head_loss(q: &[f64], k: &[f64], v: &[f64], r: &[f64], a: &Att<'_>) -> f64 {
    let nq = q.len() / a.d;
    (0..nq).map(|n| att_row_loss(&q[n * a.d..(n + 1) * a.d], k, v, &r[n * a.dv..(n + 1) * a.dv], n, a)).sum()
}

/// Finite-difference `(dq, dk, dv)` of attention over `bh` heads.
fn att_fd(q: &[f64], k: &[f64], v: &[f64], r: &[f64], bh: usize, nq: usize, a: &Att<'_>) -> [Vec<f64>; 3] {
    let (nk, d, dv) = (a.nk, a.d, a.dv);
    let (mut gq, mut gk, mut gv) = (Vec::new(), Vec::new(), Vec::new());
    for h in 0..bh {
        let qh = &q[h * nq * d..(h + 1) * nq * d];
        let kh = &k[h * nk * d..(h + 1) * nk * d];
        let vh = &v[h * nk * dv..(h + 1) * nk * dv];
        let rh = &r[h * nq * dv..(h + 1) * nq * dv];
        // A query element reaches only its own output row.
        gq.extend(fd_local(qh, STEP, |xs, i| {
            let n = i / d;
            att_row_loss(&xs[n * d..(n + 1) * d], kh, vh, &rh[n * dv..(n + 1) * dv], n, a)
        }));
        gk.extend(fd(kh, |xs| att_head_loss(qh, xs, vh, rh, a)));
        gv.extend(fd(vh, |xs| att_head_loss(qh, kh, xs, rh, a)));
    }
    [gq, gk, gv]
}

/// The op's attention gradients against [`att_fd`]'s. With a single key the weights are exactly
/// 1, so dq = dk = 0 in exact arithmetic while the op's `P ∘ (dP − rowsum(dO ∘ O))` leaves f32
/// rounding (~1e-8 here): dq and dk are measured against at least 1e-3 of the dv scale.
fn check_attention(
    g: &medsa_core::backward::AttentionGrads,
    want: &[Vec<f64>; 3],
    bh: usize,
    nq: usize,
    a: &Att<'_>,
    what: &str,
) -> Result<(), TestCaseError> {
    let (nk, d, dv) = (a.nk, a.d, a.dv);
    let floor = (1e-3 * want[2].iter().fold(0f64, |m, v| m.max(v.abs()))).max(1e-6);
    close_floor(&g.dq, &[bh, nq, d], &want[0], floor, TOL, &format!("attention dq ({what})"))?;
    close_floor(&g.dk, &[bh, nk, d], &want[1], floor, TOL, &format!("attention dk ({what})"))?;
    close(&g.dv, &[bh, nk, dv], &want[2], TOL, &format!("attention dv ({what})"))
}

/// The depth sequences of golden README 5.2 as token indices (`entry·p + position`), written out
/// independently of `depth_row` (ops.rs).
fn ref_seq_rows(official: bool, s: usize, depth: usize, p: usize, nw: usize) -> Vec<usize> {
    (0..depth)
        .map(|d| {
            if official {
                let j = s / p;
                (j * depth + d) * p + s % p
            } else {
                let (bwin, pos) = (s / p, s % p);
                let (b, win) = (bwin / nw, bwin % nw);
                ((b * depth + d) * nw + win) * p + pos
            }
        })
        .collect()
}

/// `Σ out ∘ R` of one depth sequence (its tokens `toks`) of `qkv [N0·P, 3C]`, every head.
fn depth_seq_loss(
    qkv: &[f64],
    r: &[f64],
    toks: &[usize],
    heads: usize,
    hd: usize,
    scale: f64,
    rel: Option<(&[f64], &[f64], usize, usize)>,
) -> f64 {
    let (c, depth) = (heads * hd, toks.len());
    let mut l = 0.0;
    for h in 0..heads {
        let gather = |which: usize| -> Vec<f64> {
            toks.iter().flat_map(|&t| qkv[t * 3 * c + which * c + h * hd..][..hd].to_vec()).collect()
        };
        let (q, k, v) = (gather(0), gather(1), gather(2));
        let rr: Vec<f64> = toks.iter().flat_map(|&t| r[t * c + h * hd..][..hd].to_vec()).collect();
        // The depth grid (gh, gw) is both the query and the key grid.
        let a =
            Att { nk: depth, d: hd, dv: hd, scale, rel: rel.map(|(rh, rw, gh, gw)| (rh, rw, gw, gh, gw)) };
        l += att_head_loss(&q, &k, &v, &rr, &a);
    }
    l
}

/// HyP-Adpt's chain in f64: the output, the smallest |pre-activation| of any ReLU and each
/// ReLU's sign pattern (a finite difference that flips one is across a kink), and the smallest
/// nonzero variance any norm saw (0 is a dead row: all its inputs 0, its output constant).
fn hyper_fwd(
    x: &[f64],
    w: &[f64],
    g: &[f64],
    be: &[f64],
    b: usize,
    t: usize,
    r: usize,
    n: usize,
    eps: f64,
) -> (Vec<f64>, f64, Vec<bool>, f64) {
    let mut cur = x.to_vec();
    let mut min_pre = f64::INFINITY;
    let mut min_var = f64::INFINITY;
    let mut pattern = Vec::with_capacity(b * t * n * r);
    for layer in 0..n {
        let mut next = vec![0f64; b * t * r];
        for s in 0..b {
            for row in 0..t {
                let xr = &cur[(s * t + row) * r..][..r];
                let yv: Vec<f64> = (0..r)
                    .map(|j| (0..r).map(|i| xr[i] * w[((s * n + layer) * r + i) * r + j]).sum())
                    .collect();
                let (mean, var) = moments(&yv);
                if var > 0.0 {
                    min_var = min_var.min(var);
                }
                for j in 0..r {
                    let pre = (yv[j] - mean) / (var + eps).sqrt() * g[layer * r + j] + be[layer * r + j];
                    min_pre = min_pre.min(pre.abs());
                    pattern.push(pre > 0.0);
                    next[(s * t + row) * r + j] = pre.max(0.0);
                }
            }
        }
        cur = next;
    }
    (cur, min_pre, pattern, min_var)
}

/// Dense, grouped or depthwise convolution without bias in f64, `x [B, Cin, H, W]`,
/// `w [Cout, Cin/groups, kh, kw]`.
fn conv_fwd(
    x: &[f64],
    w: &[f64],
    dims: (usize, usize, usize, usize),
    wdims: (usize, usize, usize, usize),
    g: Conv2d,
) -> Vec<f64> {
    let (bs, cin, h, wd) = dims;
    let (cout, cpg, kh, kw) = wdims;
    let (s, p) = (g.stride, g.padding);
    let (ho, wo) = ((h + 2 * p - kh) / s + 1, (wd + 2 * p - kw) / s + 1);
    let coutg = cout / g.groups;
    let mut y = vec![0f64; bs * cout * ho * wo];
    for bi in 0..bs {
        for o in 0..cout {
            let grp = o / coutg;
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0.0;
                    for ci in 0..cpg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s + ky) as i64 - p as i64;
                                let ix = (ox * s + kx) as i64 - p as i64;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    acc += x
                                        [((bi * cin + grp * cpg + ci) * h + iy as usize) * wd + ix as usize]
                                        * w[((o * cpg + ci) * kh + ky) * kw + kx];
                                }
                            }
                        }
                    }
                    y[((bi * cout + o) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

/// The mask head in f64 (spec 5.1, as ops.rs's naive test): ConvTranspose2d, LayerNorm2d, GELU,
/// ConvTranspose2d, GELU, then the dot product with each hypernetwork vector. `p` = keys, hyper,
/// w0, b0, norm w, norm b, w1, b1. Returns the logits `[B, M, 4G_h, 4G_w]` and the smallest
/// variance LayerNorm2d saw.
fn upscale_fwd(
    p: &[Vec<f64>],
    b: usize,
    (gh, gw): (usize, usize),
    d: usize,
    c1: usize,
    c2: usize,
    m: usize,
    eps: f64,
) -> (Vec<f64>, f64) {
    let [k, hs, w0s, b0s, lws, lbs, w1s, b1s] = [&p[0], &p[1], &p[2], &p[3], &p[4], &p[5], &p[6], &p[7]];
    let mut min_var = f64::INFINITY;
    let mut r = vec![0f64; b * m * 16 * gh * gw];
    for s in 0..b {
        let (h1h, h1w) = (2 * gh, 2 * gw);
        let mut h1 = vec![0f64; h1h * h1w * c1];
        for y1 in 0..h1h {
            for x1 in 0..h1w {
                let px = &k[(s * gh * gw + (y1 / 2) * gw + x1 / 2) * d..][..d];
                let cell = &mut h1[(y1 * h1w + x1) * c1..][..c1];
                for (o, v) in cell.iter_mut().enumerate() {
                    *v = b0s[o]
                        + (0..d).map(|i| px[i] * w0s[((i * c1 + o) * 2 + y1 % 2) * 2 + x1 % 2]).sum::<f64>();
                }
                let (mean, var) = moments(cell);
                min_var = min_var.min(var);
                for (o, v) in cell.iter_mut().enumerate() {
                    *v = gelu64((*v - mean) / (var + eps).sqrt() * lws[o] + lbs[o]);
                }
            }
        }
        for y2 in 0..4 * gh {
            for x2 in 0..4 * gw {
                let src = &h1[((y2 / 2) * h1w + x2 / 2) * c1..][..c1];
                let h2: Vec<f64> = (0..c2)
                    .map(|o| {
                        gelu64(
                            b1s[o]
                                + (0..c1)
                                    .map(|i| src[i] * w1s[((i * c2 + o) * 2 + y2 % 2) * 2 + x2 % 2])
                                    .sum::<f64>(),
                        )
                    })
                    .collect();
                for mm in 0..m {
                    r[((s * m + mm) * 4 * gh + y2) * 4 * gw + x2] = dot(&hs[(s * m + mm) * c2..][..c2], &h2);
                }
            }
        }
    }
    (r, min_var)
}

// ---------- property tests ----------

proptest! {
    // No regression file: the failing case is printed, and its seed is the input `seed`.
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn linear_backward_matches_fd(rank3 in any::<bool>(), a in 1usize..5, m in 1usize..23, k in 1usize..41,
                                  n in 1usize..31, seed in any::<u64>()) {
        let lead = if rank3 { vec![a, m] } else { vec![a * m] };
        let rows = a * m;
        let x = random_tensor(&[lead.clone(), vec![k]].concat(), seed);
        let w = random_tensor(&[n, k], seed ^ 1);
        let b = random_tensor(&[n], seed ^ 2);
        let dy = random_tensor(&[lead.clone(), vec![n]].concat(), seed ^ 3);
        let (xs, ws, bs, rs) = (f64s(&x), f64s(&w), f64s(&b), f64s(&dy));
        let g = Cpu.linear_backward(&x, &w, &dy, true).unwrap();
        // An element of row i of x reaches row i of y; one of row o of w (or b_o) column o.
        let dx = fd_local(&xs, STEP, |p, i| linear_loss(p, &ws, &bs, &rs, k, n, i / k..i / k + 1, 0..n));
        let dw = fd_local(&ws, STEP, |p, i| linear_loss(&xs, p, &bs, &rs, k, n, 0..rows, i / k..i / k + 1));
        let db = fd_local(&bs, STEP, |p, i| linear_loss(&xs, &ws, p, &rs, k, n, 0..rows, i..i + 1));
        close(&g.dx, x.shape(), &dx, TOL, "linear dx")?;
        close(g.dw.as_ref().unwrap(), &[n, k], &dw, TOL, "linear dw")?;
        close(g.db.as_ref().unwrap(), &[n], &db, TOL, "linear db")?;
        let g2 = Cpu.linear_backward(&x, &w, &dy, false).unwrap();
        prop_assert!(g2.dw.is_none() && g2.db.is_none(), "params = false returned parameter gradients");
        prop_assert_eq!(g2.dx, g.dx);
    }

    #[test]
    fn layer_norm_backward_matches_fd(rows in 1usize..20, c in 1usize..70, eps_small in any::<bool>(),
                                      spread in 0.05f32..4.0, offset in -3.0f32..3.0, seed in any::<u64>()) {
        let eps = if eps_small { 1e-6f32 } else { 1e-5 };
        let x = Tensor::new(vec![rows, c], random_vec(rows * c, seed).iter().map(|v| v * spread + offset).collect()).unwrap();
        let w = random_tensor(&[c], seed ^ 5);
        let b = random_tensor(&[c], seed ^ 6);
        let dy = random_tensor(&[rows, c], seed ^ 7);
        let (xs, ws, bs, rs) = (f64s(&x), f64s(&w), f64s(&b), f64s(&dy));
        // A nearly constant row (σ ≲ 1e-2) makes the difference quotient itself inaccurate.
        prop_assume!(c == 1 || xs.chunks_exact(c).all(|row| moments(row).1 > 1e-4));
        let e = eps as f64;
        let g = Cpu.layer_norm_backward(&x, &w, eps, &dy, true).unwrap();
        let dx = fd_local(&xs, STEP, |p, i| {
            let r0 = i / c * c;
            layer_norm_loss(&p[r0..r0 + c], &ws, &bs, &rs[r0..r0 + c], c, e)
        });
        let dw = fd(&ws, |p| layer_norm_loss(&xs, p, &bs, &rs, c, e));
        let db = fd(&bs, |p| layer_norm_loss(&xs, &ws, p, &rs, c, e));
        prop_assert!(g.dx.all_finite());
        close(&g.dx, &[rows, c], &dx, TOL, "layer_norm dx")?;
        close(g.dw.as_ref().unwrap(), &[c], &dw, TOL, "layer_norm dw")?;
        close(g.db.as_ref().unwrap(), &[c], &db, TOL, "layer_norm db")?;
        let g2 = Cpu.layer_norm_backward(&x, &w, eps, &dy, false).unwrap();
        prop_assert!(g2.dw.is_none() && g2.db.is_none(), "params = false returned parameter gradients");
        prop_assert_eq!(g2.dx, g.dx);
    }

    #[test]
    fn gelu_backward_matches_fd(n in 1usize..600, scale in 0.1f32..8.0, seed in any::<u64>()) {
        let x = random_tensor(&[n], seed).scale(scale);
        let dy = random_tensor(&[n], seed ^ 8);
        let (xs, rs) = (f64s(&x), f64s(&dy));
        let g = Cpu.gelu_backward(&x, dy.clone()).unwrap();
        let want = fd_local(&xs, STEP, |p, i| gelu64(p[i]) * rs[i]);
        close(&g, &[n], &want, TOL, "gelu dx")?;
    }

    #[test]
    fn relu_backward_matches_fd(n in 1usize..600, scale in 0.1f32..8.0, seed in any::<u64>()) {
        // No point within 1e-3 of the kink (nudged away from it).
        let xv: Vec<f32> = random_vec(n, seed)
            .iter()
            .map(|v| v * scale)
            .map(|v| if v.abs() < 1e-3 { if v < 0.0 { v - 2e-3 } else { v + 2e-3 } } else { v })
            .collect();
        let x = Tensor::new(vec![n], xv).unwrap();
        let y = Cpu.relu(x.clone()).unwrap();
        let dy = random_tensor(&[n], seed ^ 9);
        let (xs, rs) = (f64s(&x), f64s(&dy));
        let g = Cpu.relu_backward(&y, dy.clone()).unwrap();
        let want = fd_local(&xs, STEP, |p, i| p[i].max(0.0) * rs[i]);
        close(&g, &[n], &want, TOL, "relu dx")?;
    }

    #[test]
    fn softmax_backward_matches_fd(rows in 1usize..6, n in 1usize..70, scale in 0.1f32..6.0, seed in any::<u64>()) {
        let x = random_tensor(&[rows, n], seed).scale(scale);
        let y = Cpu.softmax(x.clone()).unwrap();
        let dy = random_tensor(&[rows, n], seed ^ 21);
        let (xs, rs) = (f64s(&x), f64s(&dy));
        let g = Cpu.softmax_backward(&y, dy.clone()).unwrap();
        let want = fd(&xs, |p| {
            (0..rows).map(|r| dot(&softmax64(&p[r * n..(r + 1) * n]), &rs[r * n..(r + 1) * n])).sum()
        });
        close(&g, &[rows, n], &want, TOL, "softmax dx")?;
    }

    #[test]
    fn attention_lse_matches_attention_and_f64_logsumexp(
        bh in 1usize..4, with_rel in any::<bool>(), qh in 1usize..14, qw in 1usize..12, kh in 1usize..9,
        kw in 1usize..9, nq_flat in 1usize..140, nk_flat in 1usize..80, d in 1usize..8, dv in 1usize..8,
        seed in any::<u64>())
    {
        let (nq, nk) = if with_rel { (qh * qw, kh * kw) } else { (nq_flat, nk_flat) };
        let q = random_tensor(&[bh, nq, d], seed);
        let k = random_tensor(&[bh, nk, d], seed ^ 14).scale(2.0);
        let v = random_tensor(&[bh, nk, dv], seed ^ 15);
        let rh = random_tensor(&[qh, kh, d], seed ^ 16);
        let rw = random_tensor(&[qw, kw, d], seed ^ 17);
        let scale = 1.0 / (d as f32).sqrt();
        let rel = with_rel.then_some(RelPos { rh: &rh, rw: &rw });
        let (o, lse) = Cpu.attention_lse(&q, &k, &v, scale, rel).unwrap();
        let y = Cpu.attention(&q, &k, &v, scale, rel).unwrap();
        // Bit for bit where `attention` runs query blocks (always with the bias); without it,
        // `attention` splits the keys of a head when there are fewer query blocks than threads
        // (bh = 1, nq <= 64 on two threads), which attention_lse does not: that path is pinned by
        // `attention_lse_output_is_attention_bit_for_bit`, here it only has to be close.
        if with_rel {
            prop_assert!(first_bit_diff(&o, &y).is_none(), "attention_lse output differs from attention: {}",
                describe_bit_diff(&o, &y));
        } else {
            close(&o, y.shape(), &f64s(&y), 1e-5, "attention_lse output")?;
        }
        prop_assert_eq!(lse.shape(), &[bh, nq]);
        let (qs, ks, rhs, rws) = (f64s(&q), f64s(&k), f64s(&rh), f64s(&rw));
        let a = Att { nk, d, dv, scale: scale as f64, rel: with_rel.then_some((&rhs[..], &rws[..], qw, kh, kw)) };
        for h in 0..bh {
            for n in 0..nq {
                let logits = att_logits(&qs[(h * nq + n) * d..][..d], &ks[h * nk * d..(h + 1) * nk * d], n, &a);
                let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let want = mx + logits.iter().map(|l| (l - mx).exp()).sum::<f64>().ln();
                let got = lse.data()[h * nq + n] as f64;
                prop_assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "lse[{}, {}] = {} vs f64 {}", h, n, got, want);
            }
        }
    }

    #[test]
    fn attention_backward_matches_fd(
        bh in 1usize..4, with_rel in any::<bool>(), qh in 1usize..20, qw in 1usize..14, kh in 1usize..9,
        kw in 1usize..9, nq_flat in 1usize..300, nk_flat in 1usize..80, d in 1usize..7, dv in 1usize..7,
        seed in any::<u64>())
    {
        let (nq, nk) = if with_rel { (qh * qw, kh * kw) } else { (nq_flat, nk_flat) };
        let q = random_tensor(&[bh, nq, d], seed);
        let k = random_tensor(&[bh, nk, d], seed ^ 14).scale(2.0);
        let v = random_tensor(&[bh, nk, dv], seed ^ 15);
        let rh = random_tensor(&[qh, kh, d], seed ^ 16);
        let rw = random_tensor(&[qw, kw, d], seed ^ 17);
        let dout = random_tensor(&[bh, nq, dv], seed ^ 18);
        let scale = 1.0 / (d as f32).sqrt();
        let rel = with_rel.then_some(RelPos { rh: &rh, rw: &rw });
        let (o, lse) = Cpu.attention_lse(&q, &k, &v, scale, rel).unwrap();
        let g = Cpu.attention_backward(&q, &k, &v, scale, rel, &o, &lse, &dout).unwrap();
        let (rhs, rws) = (f64s(&rh), f64s(&rw));
        let a = Att { nk, d, dv, scale: scale as f64, rel: with_rel.then_some((&rhs[..], &rws[..], qw, kh, kw)) };
        let want = att_fd(&f64s(&q), &f64s(&k), &f64s(&v), &f64s(&dout), bh, nq, &a);
        check_attention(&g, &want, bh, nq, &a, &format!("bh {bh}, nq {nq}, nk {nk}, rel {with_rel}"))?;
    }

    #[test]
    fn depth_attention_backward_matches_fd(vols in 1usize..3, depth in 1usize..7, nw in 1usize..4, p in 1usize..5,
                                           heads in 1usize..4, hd in 1usize..5, with_rel in any::<bool>(),
                                           seed in any::<u64>()) {
        let (c, n0) = (heads * hd, vols * depth * nw);
        let (gh, gw) = closest_numbers(depth).unwrap();
        let qkv = random_tensor(&[n0, p, 3 * c], seed).scale(1.5);
        let rh = random_tensor(&[gh, gh, hd], seed ^ 21);
        let rw = random_tensor(&[gw, gw, hd], seed ^ 22);
        let dout = random_tensor(&[n0, p, c], seed ^ 23);
        let rel = with_rel.then_some(RelPos { rh: &rh, rw: &rw });
        let scale = 1.0 / (hd as f32).sqrt();
        let (x, rs, rhs, rws) = (f64s(&qkv), f64s(&dout), f64s(&rh), f64s(&rw));
        let tables = with_rel.then_some((&rhs[..], &rws[..], gh, gw));
        for grouping in [DepthGrouping::PerWindow, DepthGrouping::Official] {
            let official = grouping == DepthGrouping::Official;
            let g = Cpu.depth_attention_backward(&qkv, heads, depth, nw, grouping, rel, scale, &dout).unwrap();
            // Every token lies in exactly one sequence; a perturbation reaches only that one.
            let seqs: Vec<Vec<usize>> = (0..n0 * p / depth).map(|s| ref_seq_rows(official, s, depth, p, nw)).collect();
            let mut owner = vec![usize::MAX; n0 * p];
            for (s, toks) in seqs.iter().enumerate() {
                for &t in toks {
                    prop_assert_eq!(owner[t], usize::MAX, "token {} in two sequences", t);
                    owner[t] = s;
                }
            }
            prop_assert!(owner.iter().all(|&s| s != usize::MAX));
            let want = fd_local(&x, STEP, |xs, i| {
                depth_seq_loss(xs, &rs, &seqs[owner[i / (3 * c)]], heads, hd, scale as f64, tables)
            });
            close(&g, &[n0, p, 3 * c], &want, TOL, &format!("depth_attention dqkv ({grouping:?}, D {depth})"))?;
        }
    }

    #[test]
    fn hyper_chain_backward_matches_fd(b in 1usize..4, t in 1usize..6, r in 1usize..9, n in 1usize..4,
                                       eps_small in any::<bool>(), seed in any::<u64>()) {
        let eps = if eps_small { 1e-6f32 } else { 1e-5 };
        let x = random_tensor(&[b, t, r], seed);
        let w = random_tensor(&[b, n, r, r], seed ^ 31);
        let gamma = random_tensor(&[n, r], seed ^ 32);
        let beta = random_tensor(&[n, r], seed ^ 33);
        let dy = random_tensor(&[b, t, r], seed ^ 34);
        let inputs = vec![f64s(&x), f64s(&w), f64s(&gamma), f64s(&beta)];
        let rs = f64s(&dy);
        let e = eps as f64;
        let (_, min_pre, pattern, min_var) = hyper_fwd(&inputs[0], &inputs[1], &inputs[2], &inputs[3], b, t, r, n, e);
        // Away from every ReLU kink, and no norm of a nearly constant row (σ ≲ 1e-2: with r = 2
        // the norm is then a steep sigmoid of width √eps, which the difference quotient cannot
        // resolve; a dead row, σ = 0 exactly, is constant and fine).
        prop_assume!(min_pre > 1e-4 && min_var > 1e-4);
        let g = Cpu.hyper_chain_backward(&x, &w, &gamma, &beta, eps, &dy).unwrap();
        let mut crossed = false;
        let mut want = Vec::new();
        for j in 0..4 {
            // A perturbation that moves a pre-activation across 0 is detected, the case skipped.
            want.push(fd_of(&inputs, j, STEP, |p| {
                let (out, _, pat, _) = hyper_fwd(&p[0], &p[1], &p[2], &p[3], b, t, r, n, e);
                crossed |= pat != pattern;
                dot(&out, &rs)
            }));
        }
        prop_assume!(!crossed);
        close(&g.dx, &[b, t, r], &want[0], TOL, "hyper_chain dx")?;
        close(&g.dw, &[b, n, r, r], &want[1], TOL, "hyper_chain dw")?;
        close(&g.dgamma, &[n, r], &want[2], TOL, "hyper_chain dgamma")?;
        close(&g.dbeta, &[n, r], &want[3], TOL, "hyper_chain dbeta")?;
    }

    #[test]
    fn conv2d_backward_matches_fd(bs in 1usize..3, kind in 0usize..3, cin_g in 1usize..4, cout_g in 1usize..4,
                                  h in 1usize..10, w in 1usize..10, kh in prop::sample::select(vec![1usize, 2, 3]),
                                  square in any::<bool>(), kw_other in prop::sample::select(vec![1usize, 2, 3]),
                                  stride in 1usize..3, pad in 0usize..2, seed in any::<u64>()) {
        let kw = if square { kh } else { kw_other };
        prop_assume!(h + 2 * pad >= kh && w + 2 * pad >= kw);
        // Dense, depthwise (groups = Cin = Cout), grouped (2 groups).
        let (groups, cin, cout) = match kind {
            0 => (1, cin_g, cout_g),
            1 => (cin_g + 1, cin_g + 1, cin_g + 1),
            _ => (2, 2 * cin_g, 2 * cout_g),
        };
        let cpg = cin / groups;
        let geom = Conv2d { stride, padding: pad, groups };
        let x = random_tensor(&[bs, cin, h, w], seed);
        let wt = random_tensor(&[cout, cpg, kh, kw], seed ^ 41);
        let (ho, wo) = ((h + 2 * pad - kh) / stride + 1, (w + 2 * pad - kw) / stride + 1);
        let dy = random_tensor(&[bs, cout, ho, wo], seed ^ 42);
        let g = Cpu.conv2d_backward(&x, &wt, geom, &dy, true).unwrap();
        let (xs, ws, rs) = (f64s(&x), f64s(&wt), f64s(&dy));
        let (dims, wdims) = ((bs, cin, h, w), (cout, cpg, kh, kw));
        let dx = fd(&xs, |p| dot(&conv_fwd(p, &ws, dims, wdims, geom), &rs));
        let dw = fd(&ws, |p| dot(&conv_fwd(&xs, p, dims, wdims, geom), &rs));
        let what = format!("conv2d {geom:?} k {kh}x{kw}");
        close(&g.dx, &[bs, cin, h, w], &dx, TOL, &format!("{what} dx"))?;
        close(g.dw.as_ref().unwrap(), &[cout, cpg, kh, kw], &dw, TOL, &format!("{what} dw"))?;
        let g2 = Cpu.conv2d_backward(&x, &wt, geom, &dy, false).unwrap();
        prop_assert!(g2.dw.is_none(), "params = false returned dw");
        prop_assert_eq!(g2.dx, g.dx);
    }

    #[test]
    fn upscale_masks_backward_matches_fd(b in 1usize..3, gh in 1usize..4, gw in 1usize..4, d in 1usize..9,
                                         c1 in 1usize..6, c2 in 1usize..5, m in 1usize..4, seed in any::<u64>()) {
        let keys = random_tensor(&[b, gh * gw, d], seed);
        let hyper = random_tensor(&[b, m, c2], seed ^ 47);
        let (w0, b0) = (random_tensor(&[d, c1, 2, 2], seed ^ 41), random_tensor(&[c1], seed ^ 42));
        let (lw, lb) = (random_tensor(&[c1], seed ^ 43), random_tensor(&[c1], seed ^ 44));
        let (w1, b1) = (random_tensor(&[c1, c2, 2, 2], seed ^ 45), random_tensor(&[c2], seed ^ 46));
        let eps = 1e-6f32;
        let up = Upscaling { conv0: (&w0, &b0), norm: (&lw, &lb, eps), conv1: (&w1, &b1) };
        let dl = random_tensor(&[b, m, 4 * gh, 4 * gw], seed ^ 48);
        let ts = [&keys, &hyper, &w0, &b0, &lw, &lb, &w1, &b1];
        let inputs: Vec<Vec<f64>> = ts.iter().map(|t| f64s(t)).collect();
        let rs = f64s(&dl);
        let dims = |p: &[Vec<f64>]| upscale_fwd(p, b, (gh, gw), d, c1, c2, m, eps as f64);
        let (logits, min_var) = dims(&inputs);
        // The op under test composes the forward from the fused one's parts; check that the
        // forward differentiated here is the op's.
        let y = Cpu.upscale_masks(&keys, (gh, gw), &up, &hyper).unwrap();
        close(&y, &[b, m, 4 * gh, 4 * gw], &logits, 1e-4, "upscale_masks forward")?;
        // A nearly constant pixel before LayerNorm2d (σ ≲ 1e-2) makes the difference quotient
        // itself inaccurate.
        prop_assume!(c1 == 1 || min_var > 1e-4);
        let g = Cpu.upscale_masks_backward(&keys, (gh, gw), &up, &hyper, &dl, true).unwrap();
        let want: Vec<Vec<f64>> = (0..8).map(|j| fd_of(&inputs, j, STEP, |p| dot(&dims(p).0, &rs))).collect();
        let (conv0, norm, conv1) = (g.conv0.clone().unwrap(), g.norm.clone().unwrap(), g.conv1.clone().unwrap());
        let names = ["dkeys", "dhyper", "conv0 dw", "conv0 db", "norm dw", "norm db", "conv1 dw", "conv1 db"];
        let cands = [&g.dkeys, &g.dhyper, &conv0.0, &conv0.1, &norm.0, &norm.1, &conv1.0, &conv1.1];
        // A one-element parameter gradient (c1 = 1 or c2 = 1 biases, the c1 = 1 norm) is a sum
        // over every pixel that can cancel to ~1e-5 of its terms, and the composed backward
        // sums it in f32 (the bmm and linear_backward dx): such a tensor is measured against at
        // least 1e-2 of the largest gradient of the layer stack instead of its own size.
        let scale = want.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
        let floor = (1e-2 * scale).max(1e-6);
        for j in 0..8 {
            close_floor(cands[j], ts[j].shape(), &want[j], floor, TOL, &format!("upscale_masks {}", names[j]))?;
        }
        let g2 = Cpu.upscale_masks_backward(&keys, (gh, gw), &up, &hyper, &dl, false).unwrap();
        prop_assert!(g2.conv0.is_none() && g2.norm.is_none() && g2.conv1.is_none(),
            "params = false returned parameter gradients");
        prop_assert_eq!(g2.dkeys, g.dkeys);
        prop_assert_eq!(g2.dhyper, g.dhyper);
    }
}

// ---------- fixed cases ----------

/// The fused attention backward (weights recomputed block by block from the log-sum-exp)
/// against its plain composition with the weights materialised: `S = scale·q kᵀ`, `P =
/// softmax(S)`, `dv = Pᵀ dO`, `dS = softmax_backward(P, dO vᵀ)`, `dq = scale·dS k`,
/// `dk = scale·dSᵀ q`, all through Backend ops.
#[test]
fn attention_backward_equals_its_plain_composition() {
    for (bh, nq, nk, d, dv) in [(3, 70, 45, 8, 5), (2, 7, 130, 16, 16), (1, 129, 3, 4, 9)] {
        let q = random_tensor(&[bh, nq, d], 301);
        let k = random_tensor(&[bh, nk, d], 302).scale(2.0);
        let v = random_tensor(&[bh, nk, dv], 303);
        let dout = random_tensor(&[bh, nq, dv], 304);
        let scale = 1.0 / (d as f32).sqrt();
        let (o, lse) = Cpu.attention_lse(&q, &k, &v, scale, None).unwrap();
        let g = Cpu.attention_backward(&q, &k, &v, scale, None, &o, &lse, &dout).unwrap();
        let p = Cpu.softmax(Cpu.bmm(&q, &k.permute(&[0, 2, 1]).unwrap()).unwrap().scale(scale)).unwrap();
        let dv_plain = Cpu.bmm(&p.permute(&[0, 2, 1]).unwrap(), &dout).unwrap();
        let dp = Cpu.bmm(&dout, &v.permute(&[0, 2, 1]).unwrap()).unwrap();
        let ds = Cpu.softmax_backward(&p, dp).unwrap().scale(scale);
        let dq_plain = Cpu.bmm(&ds, &k).unwrap();
        let dk_plain = Cpu.bmm(&ds.permute(&[0, 2, 1]).unwrap(), &q).unwrap();
        for (what, fused, plain) in
            [("dq", &g.dq, &dq_plain), ("dk", &g.dk, &dk_plain), ("dv", &g.dv, &dv_plain)]
        {
            let err = fused.data().iter().zip(plain.data()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= 1e-5 * plain.max_abs().max(1e-3), "{what} ({bh}, {nq}, {nk}, {d}, {dv}): {err:e}");
        }
    }
}

/// Several query blocks of 64 rows (130 = 2·64 + 2 and 131 queries), with and without the bias,
/// so the block loop of the backward and its last partial block always run.
#[test]
fn attention_backward_spans_several_query_blocks() {
    for (with_rel, bh, (qh, qw), (kh, kw), d, dv) in [
        (true, 2, (13, 10), (7, 10), 5, 3),
        (false, 2, (131, 1), (67, 1), 4, 6),
        (true, 1, (10, 13), (9, 8), 3, 2),
    ] {
        let (nq, nk) = (qh * qw, kh * kw);
        let q = random_tensor(&[bh, nq, d], 101);
        let k = random_tensor(&[bh, nk, d], 102).scale(2.0);
        let v = random_tensor(&[bh, nk, dv], 103);
        let rh = random_tensor(&[qh, kh, d], 104);
        let rw = random_tensor(&[qw, kw, d], 105);
        let dout = random_tensor(&[bh, nq, dv], 106);
        let scale = 1.0 / (d as f32).sqrt();
        let rel = with_rel.then_some(RelPos { rh: &rh, rw: &rw });
        let (o, lse) = Cpu.attention_lse(&q, &k, &v, scale, rel).unwrap();
        let g = Cpu.attention_backward(&q, &k, &v, scale, rel, &o, &lse, &dout).unwrap();
        let (rhs, rws) = (f64s(&rh), f64s(&rw));
        let a =
            Att { nk, d, dv, scale: scale as f64, rel: with_rel.then_some((&rhs[..], &rws[..], qw, kh, kw)) };
        let want = att_fd(&f64s(&q), &f64s(&k), &f64s(&v), &f64s(&dout), bh, nq, &a);
        check_attention(&g, &want, bh, nq, &a, &format!("bh {bh}, nq {nq}, nk {nk}, rel {with_rel}"))
            .unwrap();
    }
}

/// `attention_lse` is `attention` that also returns the log-sum-exp. On the query-block path
/// (with and without the bias, several blocks) its output is the same bits. Without the bias and
/// with fewer query blocks than threads, `attention` splits the keys instead (flash decoding),
/// which sums in another order; `attention_lse` keeps the query blocks there, so the two agree
/// to f32 rounding (relative 1e-5).
#[test]
fn attention_lse_output_is_attention() {
    let mut bad = Vec::new();
    for (with_rel, bh, (qh, qw), (kh, kw), d, dv) in [
        (true, 1, (1, 1), (1, 2), 1, 1),
        (true, 2, (13, 10), (7, 10), 5, 3),
        (false, 8, (131, 1), (67, 1), 4, 6),
        (false, 1, (1, 1), (2, 1), 1, 1),
        (false, 1, (5, 1), (300, 1), 7, 9),
        (false, 1, (56, 1), (130, 1), 16, 16),
    ] {
        let (nq, nk) = (qh * qw, kh * kw);
        let q = random_tensor(&[bh, nq, d], 201);
        let k = random_tensor(&[bh, nk, d], 202).scale(2.0);
        let v = random_tensor(&[bh, nk, dv], 203);
        let rh = random_tensor(&[qh, kh, d], 204);
        let rw = random_tensor(&[qw, kw, d], 205);
        let scale = 1.0 / (d as f32).sqrt();
        let rel = with_rel.then_some(RelPos { rh: &rh, rw: &rw });
        let (o, _) = Cpu.attention_lse(&q, &k, &v, scale, rel).unwrap();
        let y = Cpu.attention(&q, &k, &v, scale, rel).unwrap();
        let split_keys = !with_rel && bh * nq.div_ceil(64) < rayon::current_num_threads();
        if split_keys {
            let err = o.data().iter().zip(y.data()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            if err > 1e-5 * y.max_abs().max(1e-6) {
                bad.push(format!("bh {bh}, nq {nq}, nk {nk} (split keys): max diff {err:e}"));
            }
        } else if first_bit_diff(&o, &y).is_some() {
            bad.push(format!("bh {bh}, nq {nq}, nk {nk}, rel {with_rel}: {}", describe_bit_diff(&o, &y)));
        }
    }
    assert!(bad.is_empty(), "attention_lse output is not attention's:\n{}", bad.join("\n"));
}

/// LayerNorm over a single channel: x̂ = 0 whatever x, so dx = 0, dw = 0, db = Σ dy, all finite,
/// even for large inputs and the encoder's eps.
#[test]
fn layer_norm_backward_single_channel_is_finite() {
    let x = Tensor::new(vec![4, 1], vec![0.0, 1e4, -3.5, 1e-20]).unwrap();
    let w = Tensor::new(vec![1], vec![0.7]).unwrap();
    let dy = Tensor::new(vec![4, 1], vec![1.0, -2.0, 0.5, 3.0]).unwrap();
    for eps in [1e-6f32, 1e-5] {
        let g = Cpu.layer_norm_backward(&x, &w, eps, &dy, true).unwrap();
        assert!(g.dx.all_finite() && g.dx.max_abs() == 0.0, "dx {:?}", g.dx.data());
        assert_eq!(g.dw.unwrap().data(), &[0.0]);
        assert_eq!(g.db.unwrap().data(), &[2.5]);
    }
}

/// Every backward op rejects a wrong-shaped output gradient with a shape error, not a panic.
#[test]
fn backward_ops_reject_wrong_shaped_gradients() {
    let x = random_tensor(&[3, 4], 1);
    let w = random_tensor(&[5, 4], 2);
    let ok = |r: bool, what: &str| assert!(r, "{what}: wrong-shaped gradient not rejected with Error::Shape");
    ok(Cpu.linear_backward(&x, &w, &random_tensor(&[3, 5], 3), true).is_ok(), "linear (control)");
    ok(is_shape_err(Cpu.linear_backward(&x, &w, &random_tensor(&[3, 4], 3), true)), "linear, last axis");
    ok(is_shape_err(Cpu.linear_backward(&x, &w, &random_tensor(&[2, 5], 3), true)), "linear, rows");
    ok(is_shape_err(Cpu.linear_backward(&x, &w, &random_tensor(&[1, 3, 5], 3), false)), "linear, rank");
    let lw = random_tensor(&[4], 4);
    ok(is_shape_err(Cpu.layer_norm_backward(&x, &lw, 1e-6, &random_tensor(&[4, 3], 5), true)), "layer_norm");
    ok(
        is_shape_err(Cpu.layer_norm_backward(&x, &lw, 1e-6, &random_tensor(&[12], 5), false)),
        "layer_norm, rank",
    );
    ok(is_shape_err(Cpu.gelu_backward(&x, random_tensor(&[4, 3], 6))), "gelu");
    ok(is_shape_err(Cpu.relu_backward(&x, random_tensor(&[3, 5], 6))), "relu");
    ok(is_shape_err(Cpu.softmax_backward(&x, random_tensor(&[3, 5], 6))), "softmax");

    let (q, k, v) =
        (random_tensor(&[2, 6, 3], 7), random_tensor(&[2, 5, 3], 8), random_tensor(&[2, 5, 4], 9));
    let (o, lse) = Cpu.attention_lse(&q, &k, &v, 0.5, None).unwrap();
    let dout = random_tensor(&[2, 6, 4], 10);
    ok(Cpu.attention_backward(&q, &k, &v, 0.5, None, &o, &lse, &dout).is_ok(), "attention (control)");
    ok(
        is_shape_err(Cpu.attention_backward(&q, &k, &v, 0.5, None, &o, &lse, &random_tensor(&[2, 6, 3], 10))),
        "attention dout",
    );
    ok(
        is_shape_err(Cpu.attention_backward(&q, &k, &v, 0.5, None, &o, &random_tensor(&[2, 5], 11), &dout)),
        "attention lse",
    );
    ok(
        is_shape_err(Cpu.attention_backward(
            &q,
            &k,
            &v,
            0.5,
            None,
            &random_tensor(&[2, 6, 3], 12),
            &lse,
            &dout,
        )),
        "attention o",
    );
    let (rh, rw) = (random_tensor(&[2, 5, 3], 13), random_tensor(&[3, 2, 3], 14));
    ok(
        is_shape_err(Cpu.attention_lse(&q, &k, &v, 0.5, Some(RelPos { rh: &rh, rw: &rw }))),
        "attention_lse tables",
    );

    let qkv = random_tensor(&[4, 3, 12], 15);
    let dd = Cpu.depth_attention_backward(
        &qkv,
        2,
        2,
        1,
        DepthGrouping::PerWindow,
        None,
        0.5,
        &random_tensor(&[4, 3, 4], 16),
    );
    ok(dd.is_ok(), "depth_attention (control)");
    for bad in [&[4, 3, 12][..], &[4, 2, 4], &[2, 3, 4]] {
        for grouping in [DepthGrouping::PerWindow, DepthGrouping::Official] {
            let r = Cpu.depth_attention_backward(&qkv, 2, 2, 1, grouping, None, 0.5, &random_tensor(bad, 16));
            ok(is_shape_err(r), &format!("depth_attention dout {bad:?}"));
        }
    }

    let (hx, hw, hg, hb) = (
        random_tensor(&[2, 3, 4], 17),
        random_tensor(&[2, 2, 4, 4], 18),
        random_tensor(&[2, 4], 19),
        random_tensor(&[2, 4], 20),
    );
    ok(
        Cpu.hyper_chain_backward(&hx, &hw, &hg, &hb, 1e-5, &random_tensor(&[2, 3, 4], 21)).is_ok(),
        "hyper_chain (control)",
    );
    ok(
        is_shape_err(Cpu.hyper_chain_backward(&hx, &hw, &hg, &hb, 1e-5, &random_tensor(&[2, 4, 4], 21))),
        "hyper_chain dy",
    );
    ok(
        is_shape_err(Cpu.hyper_chain_backward(&hx, &hw, &hg, &hb, 1e-5, &random_tensor(&[6, 4], 21))),
        "hyper_chain dy rank",
    );

    let (cx, cw) = (random_tensor(&[1, 2, 5, 6], 22), random_tensor(&[3, 2, 3, 3], 23));
    let geom = Conv2d::new(2, 1);
    ok(
        Cpu.conv2d_backward(&cx, &cw, geom, &random_tensor(&[1, 3, 3, 3], 24), true).is_ok(),
        "conv2d (control)",
    );
    ok(
        is_shape_err(Cpu.conv2d_backward(&cx, &cw, geom, &random_tensor(&[1, 3, 5, 6], 24), true)),
        "conv2d dy",
    );
    ok(
        is_shape_err(Cpu.conv2d_backward(&cx, &cw, geom, &random_tensor(&[1, 2, 3, 3], 24), false)),
        "conv2d dy channels",
    );

    let keys = random_tensor(&[1, 6, 8], 25);
    let (w0, b0) = (random_tensor(&[8, 4, 2, 2], 26), random_tensor(&[4], 27));
    let (nw_, nb) = (random_tensor(&[4], 28), random_tensor(&[4], 29));
    let (w1, b1) = (random_tensor(&[4, 2, 2, 2], 30), random_tensor(&[2], 31));
    let hyper = random_tensor(&[1, 3, 2], 32);
    let up = Upscaling { conv0: (&w0, &b0), norm: (&nw_, &nb, 1e-6), conv1: (&w1, &b1) };
    ok(
        Cpu.upscale_masks_backward(&keys, (2, 3), &up, &hyper, &random_tensor(&[1, 3, 8, 12], 33), true)
            .is_ok(),
        "upscale (control)",
    );
    ok(
        is_shape_err(Cpu.upscale_masks_backward(
            &keys,
            (2, 3),
            &up,
            &hyper,
            &random_tensor(&[1, 3, 12, 8], 33),
            true,
        )),
        "upscale dlogits",
    );
    ok(
        is_shape_err(Cpu.upscale_masks_backward(
            &keys,
            (2, 3),
            &up,
            &hyper,
            &random_tensor(&[1, 2, 8, 12], 33),
            false,
        )),
        "upscale dlogits masks",
    );
}
