//! Every op of the CPU backend against a plain f64 implementation written here, on random
//! awkward shapes (proptest), plus the invariants of ARCHITECTURE.md "Tests".
//!
//! Error measure (spec "Precision and tolerances"): `max|out − ref| / max|ref|` per tensor.

#![allow(clippy::unwrap_used, clippy::type_complexity)]

use medsa_core::{Backend, Conv2d, RelPos, ResizeMode, Tensor, Upscaling};
use medsa_ref::Cpu;
use medsa_testkit::{random_tensor, random_vec};
use proptest::prelude::*;

const TOL: f64 = 1e-5;

fn assert_close(out: &Tensor, reference: &[f64], what: &str) {
    medsa_testkit::assert_close(out, reference, TOL, what);
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

// ---------- f64 references ----------

fn ref_softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn erf64(x: f64) -> f64 {
    // Series for |x| < 3, continued fraction beyond: accurate to ~1e-15 here.
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

fn ref_rel_pos(qs: usize, ks: usize, table: &[f64], rows: usize, d: usize) -> Vec<f64> {
    let l = 2 * qs.max(ks) - 1;
    let res: Vec<f64> = if rows == l {
        table.to_vec()
    } else {
        let mut out = vec![0f64; l * d];
        for o in 0..l {
            let src = ((o as f64 + 0.5) * rows as f64 / l as f64 - 0.5).max(0.0);
            let i0 = src.floor() as usize;
            let i1 = (i0 + 1).min(rows - 1);
            let lam = src - i0 as f64;
            for c in 0..d {
                out[o * d + c] = (1.0 - lam) * table[i0 * d + c] + lam * table[i1 * d + c];
            }
        }
        out
    };
    let mut out = vec![0f64; qs * ks * d];
    // The coordinates are float32 in PyTorch (`arange(q)[:, None] * max(k/q, 1.0)` is an f32
    // tensor, the offset a python float cast to f32), and `.long()` truncates them: with
    // qs != ks, f32 rounding decides some indices (8 vs 6: 4 - 6.666667 + 6.6666665 -> 3).
    let fq = (ks as f64 / qs as f64).max(1.0) as f32;
    let fk = (qs as f64 / ks as f64).max(1.0) as f32;
    let off = ((ks as f64 - 1.0) * (qs as f64 / ks as f64).max(1.0)) as f32;
    for i in 0..qs {
        for j in 0..ks {
            let r = ((i as f32 * fq - j as f32 * fk) + off).trunc() as usize;
            out[(i * ks + j) * d..(i * ks + j + 1) * d].copy_from_slice(&res[r * d..(r + 1) * d]);
        }
    }
    out
}

/// Naive attention with the materialised `[Nq, Nk]` bias of every head at once.
#[allow(clippy::too_many_arguments)]
fn ref_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    bh: usize,
    nq: usize,
    nk: usize,
    d: usize,
    dv: usize,
    scale: f64,
    rel: Option<(&[f64], &[f64], usize, usize, usize)>,
) -> Vec<f64> {
    let mut out = vec![0f64; bh * nq * dv];
    for h in 0..bh {
        for n in 0..nq {
            let qv = &q[(h * nq + n) * d..(h * nq + n + 1) * d];
            let mut logits: Vec<f64> = (0..nk)
                .map(|m| scale * qv.iter().zip(&k[(h * nk + m) * d..]).map(|(a, b)| a * b).sum::<f64>())
                .collect();
            if let Some((rh, rw, qw, kh, kw)) = rel {
                let (i, j) = (n / qw, n % qw);
                for kk in 0..kh {
                    for l in 0..kw {
                        let bh_: f64 = (0..d).map(|c| qv[c] * rh[(i * kh + kk) * d + c]).sum();
                        let bw: f64 = (0..d).map(|c| qv[c] * rw[(j * kw + l) * d + c]).sum();
                        logits[kk * kw + l] += bh_ + bw;
                    }
                }
            }
            let p = ref_softmax(&logits);
            for c in 0..dv {
                out[(h * nq + n) * dv + c] = (0..nk).map(|m| p[m] * v[(h * nk + m) * dv + c]).sum();
            }
        }
    }
    out
}

fn cubic(x: f64) -> f64 {
    let a = -0.75;
    let x = x.abs();
    if x <= 1.0 {
        (a + 2.0) * x.powi(3) - (a + 3.0) * x * x + 1.0
    } else if x < 2.0 {
        a * x.powi(3) - 5.0 * a * x * x + 8.0 * a * x - 4.0 * a
    } else {
        0.0
    }
}

/// 1-D interpolation weights per output index as (source index, weight) lists (PyTorch rules).
fn ref_axis(input: usize, output: usize, mode: ResizeMode) -> Vec<Vec<(usize, f64)>> {
    let scale = input as f64 / output as f64;
    let cl = |i: i64| i.clamp(0, input as i64 - 1) as usize;
    (0..output)
        .map(|o| match mode {
            ResizeMode::Bicubic => {
                let src = (o as f64 + 0.5) * scale - 0.5;
                let i0 = src.floor();
                let t = src - i0;
                let i0 = i0 as i64;
                vec![
                    (cl(i0 - 1), cubic(1.0 + t)),
                    (cl(i0), cubic(t)),
                    (cl(i0 + 1), cubic(1.0 - t)),
                    (cl(i0 + 2), cubic(2.0 - t)),
                ]
            }
            ResizeMode::Bilinear => {
                let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = src.floor() as usize;
                let lam = src - i0 as f64;
                vec![(i0, 1.0 - lam), ((i0 + 1).min(input - 1), lam)]
            }
            ResizeMode::Nearest => vec![(((o as f64 * scale).floor() as usize).min(input - 1), 1.0)],
        })
        .collect()
}

fn ref_resize(x: &[f64], b: usize, h: usize, w: usize, oh: usize, ow: usize, mode: ResizeMode) -> Vec<f64> {
    let ay = ref_axis(h, oh, mode);
    let ax = ref_axis(w, ow, mode);
    let mut out = vec![0f64; b * oh * ow];
    for p in 0..b {
        for i in 0..oh {
            for j in 0..ow {
                let mut s = 0.0;
                for &(yi, wy) in &ay[i] {
                    for &(xi, wx) in &ax[j] {
                        s += wy * wx * x[(p * h + yi) * w + xi];
                    }
                }
                out[(p * oh + i) * ow + j] = s;
            }
        }
    }
    out
}

// ---------- property tests ----------

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn layer_norms_match(rows in 1usize..20, c in 1usize..100, hw in 1usize..30, seed in any::<u64>()) {
        let x = random_tensor(&[rows, c], seed);
        let w = random_tensor(&[c], seed ^ 5);
        let b = random_tensor(&[c], seed ^ 6);
        for eps in [1e-6f32, 1e-5] {
            let y = Cpu.layer_norm(&x, &w, &b, eps).unwrap();
            let mut r = vec![0f64; rows * c];
            for i in 0..rows {
                let row = &f64s(&x)[i * c..(i + 1) * c];
                let mean = row.iter().sum::<f64>() / c as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
                for j in 0..c { r[i * c + j] = (row[j] - mean) / (var + eps as f64).sqrt() * w.data()[j] as f64 + b.data()[j] as f64; }
            }
            assert_close(&y, &r, "layer_norm");
        }
        let x2 = random_tensor(&[2, c, 1, hw], seed ^ 7);
        let y2 = Cpu.layer_norm2d(&x2, &w, &b, 1e-6).unwrap();
        let xs = f64s(&x2);
        let mut r2 = vec![0f64; 2 * c * hw];
        for bi in 0..2 { for p in 0..hw {
            let vals: Vec<f64> = (0..c).map(|ch| xs[(bi * c + ch) * hw + p]).collect();
            let mean = vals.iter().sum::<f64>() / c as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
            for ch in 0..c { r2[(bi * c + ch) * hw + p] = (vals[ch] - mean) / (var + 1e-6).sqrt() * w.data()[ch] as f64 + b.data()[ch] as f64; }
        }}
        assert_close(&y2, &r2, "layer_norm2d");
    }

    #[test]
    fn activations_match(n in 1usize..3000, scale in 0.1f32..12.0, seed in any::<u64>()) {
        let x = random_tensor(&[n], seed).scale(scale);
        let g = Cpu.gelu(x.clone()).unwrap();
        let r: Vec<f64> = f64s(&x).iter().map(|&v| 0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2))).collect();
        assert_close(&g, &r, "gelu");
        let g2 = Cpu.gelu_out(&x).unwrap();
        prop_assert_eq!(g2.data(), g.data(), "gelu_out is gelu, bit for bit");
        let re = Cpu.relu(x.clone()).unwrap();
        let r: Vec<f64> = f64s(&x).iter().map(|&v| v.max(0.0)).collect();
        assert_close(&re, &r, "relu");
    }

    #[test]
    fn softmax_matches_and_rows_sum_to_one(rows in 1usize..10, n in 1usize..600, scale in 0.1f32..60.0, seed in any::<u64>()) {
        let x = random_tensor(&[rows, n], seed).scale(scale);
        let y = Cpu.softmax(x.clone()).unwrap();
        let mut r = Vec::new();
        for row in f64s(&x).chunks(n) { r.extend(ref_softmax(row)); }
        assert_close(&y, &r, "softmax");
        for row in y.data().chunks(n) {
            let s: f64 = row.iter().map(|&v| v as f64).sum();
            prop_assert!((s - 1.0).abs() < 1e-5, "row sums to {}", s);
        }
    }

    #[test]
    fn conv2d_matches(cin_g in 1usize..4, groups in 1usize..4, cout_g in 1usize..4, h in 1usize..13, w in 1usize..13,
                      kh in 1usize..5, kw in 1usize..5, stride in 1usize..4, pad in 0usize..3, seed in any::<u64>()) {
        prop_assume!(h + 2 * pad >= kh && w + 2 * pad >= kw);
        let (cin, cout) = (cin_g * groups, cout_g * groups);
        let x = random_tensor(&[2, cin, h, w], seed);
        let wt = random_tensor(&[cout, cin_g, kh, kw], seed ^ 9);
        let b = random_tensor(&[cout], seed ^ 10);
        let y = Cpu.conv2d(&x, &wt, Some(&b), Conv2d { stride, padding: pad, groups }).unwrap();
        let (ho, wo) = ((h + 2 * pad - kh) / stride + 1, (w + 2 * pad - kw) / stride + 1);
        prop_assert_eq!(y.shape(), &[2, cout, ho, wo]);
        let (xs, ws) = (f64s(&x), f64s(&wt));
        let mut r = vec![0f64; 2 * cout * ho * wo];
        for bi in 0..2 { for o in 0..cout { for oy in 0..ho { for ox in 0..wo {
            let g = o / cout_g;
            let mut s = b.data()[o] as f64;
            for ci in 0..cin_g { for ky in 0..kh { for kx in 0..kw {
                let iy = (oy * stride + ky) as i64 - pad as i64;
                let ix = (ox * stride + kx) as i64 - pad as i64;
                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    s += xs[((bi * cin + g * cin_g + ci) * h + iy as usize) * w + ix as usize] * ws[((o * cin_g + ci) * kh + ky) * kw + kx];
                }
            }}}
            r[((bi * cout + o) * ho + oy) * wo + ox] = s;
        }}}}
        assert_close(&y, &r, "conv2d");
    }

    #[test]
    fn depthwise_conv_matches(c in 1usize..9, h in 1usize..11, w in 1usize..11, seed in any::<u64>()) {
        let x = random_tensor(&[1, c, h, w], seed);
        let wt = random_tensor(&[c, 1, 3, 3], seed ^ 11);
        let y = Cpu.conv2d(&x, &wt, None, Conv2d { stride: 1, padding: 1, groups: c }).unwrap();
        let (xs, ws) = (f64s(&x), f64s(&wt));
        let mut r = vec![0f64; c * h * w];
        for ch in 0..c { for oy in 0..h { for ox in 0..w {
            let mut s = 0.0;
            for ky in 0..3 { for kx in 0..3 {
                let (iy, ix) = (oy as i64 + ky as i64 - 1, ox as i64 + kx as i64 - 1);
                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    s += xs[(ch * h + iy as usize) * w + ix as usize] * ws[ch * 9 + ky * 3 + kx];
                }
            }}
            r[(ch * h + oy) * w + ox] = s;
        }}}
        assert_close(&y, &r, "depthwise conv2d");
    }

    #[test]
    fn conv_transpose_matches(cin in 1usize..7, cout in 1usize..7, h in 1usize..7, w in 1usize..7, seed in any::<u64>()) {
        let x = random_tensor(&[2, cin, h, w], seed);
        let wt = random_tensor(&[cin, cout, 2, 2], seed ^ 12);
        let b = random_tensor(&[cout], seed ^ 13);
        let y = Cpu.conv_transpose2x2(&x, &wt, &b).unwrap();
        let (xs, ws) = (f64s(&x), f64s(&wt));
        let mut r = vec![0f64; 2 * cout * 4 * h * w];
        for bi in 0..2 { for o in 0..cout { for i in 0..2 * h { for j in 0..2 * w {
            let mut s = b.data()[o] as f64;
            for c in 0..cin { s += xs[((bi * cin + c) * h + i / 2) * w + j / 2] * ws[((c * cout + o) * 2 + i % 2) * 2 + j % 2]; }
            r[((bi * cout + o) * 2 * h + i) * 2 * w + j] = s;
        }}}}
        assert_close(&y, &r, "conv_transpose2x2");
    }

    #[test]
    fn partition_then_unpartition_is_identity(b in 1usize..3, h in 1usize..20, w in 1usize..20, c in 1usize..5, win in 1usize..8, seed in any::<u64>()) {
        let x = random_tensor(&[b, h, w, c], seed);
        let (p, (hp, wp)) = Cpu.window_partition(&x, win).unwrap();
        prop_assert_eq!(hp % win, 0);
        prop_assert_eq!(p.shape(), &[b * (hp / win) * (wp / win), win, win, c]);
        // Padded positions are zero; real positions hold their token (spec 3.4 layout).
        let (nwh, nww) = (hp / win, wp / win);
        for bi in 0..b { for y in 0..hp { for xx in 0..wp { for ch in 0..c {
            let widx = (bi * nwh + y / win) * nww + xx / win;
            let got = p.data()[((widx * win + y % win) * win + xx % win) * c + ch];
            let want = if y < h && xx < w { x.data()[((bi * h + y) * w + xx) * c + ch] } else { 0.0 };
            prop_assert_eq!(got, want);
        }}}}
        let back = Cpu.window_unpartition(&p, win, (hp, wp), (h, w)).unwrap();
        prop_assert_eq!(back, x);
    }

    #[test]
    fn rel_pos_table_matches_formula(qs in 1usize..12, ks in 1usize..12, rows in 1usize..30, d in 1usize..5, seed in any::<u64>()) {
        let t = random_tensor(&[rows, d], seed);
        let r = Cpu.rel_pos_table(qs, ks, &t).unwrap();
        prop_assert_eq!(r.shape(), &[qs, ks, d]);
        assert_close(&r, &ref_rel_pos(qs, ks, &f64s(&t), rows, d), "rel_pos_table");
    }

    #[test]
    fn attention_matches_naive(bh in 1usize..4, qh in 1usize..9, qw in 1usize..9, kh in 1usize..9, kw in 1usize..9,
                               d in 1usize..20, dv in 1usize..20, with_rel in any::<bool>(), seed in any::<u64>()) {
        let (nq, nk) = (qh * qw, kh * kw);
        let q = random_tensor(&[bh, nq, d], seed);
        let k = random_tensor(&[bh, nk, d], seed ^ 14);
        let v = random_tensor(&[bh, nk, dv], seed ^ 15);
        let rh = random_tensor(&[qh, kh, d], seed ^ 16);
        let rw = random_tensor(&[qw, kw, d], seed ^ 17);
        let scale = 1.0 / (d as f32).sqrt();
        let rel = with_rel.then_some(RelPos { rh: &rh, rw: &rw });
        let y = Cpu.attention(&q, &k, &v, scale, rel).unwrap();
        let (rhs, rws) = (f64s(&rh), f64s(&rw));
        let r = ref_attention(&f64s(&q), &f64s(&k), &f64s(&v), bh, nq, nk, d, dv, scale as f64,
            with_rel.then_some((&rhs[..], &rws[..], qw, kh, kw)));
        assert_close(&y, &r, "attention");
    }

    #[test]
    fn resize_matches(h in 1usize..20, w in 1usize..20, oh in 1usize..30, ow in 1usize..30, seed in any::<u64>()) {
        let x = random_tensor(&[2, 3, h, w], seed);
        for mode in [ResizeMode::Bicubic, ResizeMode::Bilinear, ResizeMode::Nearest] {
            let y = Cpu.resize(&x, (oh, ow), mode).unwrap();
            assert_close(&y, &ref_resize(&f64s(&x), 6, h, w, oh, ow, mode), &format!("{mode:?}"));
        }
    }

    #[test]
    fn pe_encode_matches(n in 1usize..20, f in 1usize..40, seed in any::<u64>()) {
        let c = Tensor::new(vec![n, 2], random_vec(2 * n, seed).iter().map(|v| v.abs()).collect()).unwrap();
        let g = random_tensor(&[2, f], seed ^ 18);
        let y = Cpu.pe_encode(&c, &g).unwrap();
        let (cs, gs) = (f64s(&c), f64s(&g));
        let mut r = vec![0f64; n * 2 * f];
        for p in 0..n { for j in 0..f {
            let u = 2.0 * std::f64::consts::PI * ((2.0 * cs[2 * p] - 1.0) * gs[j] + (2.0 * cs[2 * p + 1] - 1.0) * gs[f + j]);
            r[p * 2 * f + j] = u.sin();
            r[p * 2 * f + f + j] = u.cos();
        }}
        assert_close(&y, &r, "pe_encode");
    }
}

#[test]
fn bicubic_same_size_is_identity() {
    let x = random_tensor(&[1, 5, 64, 64], 42);
    let y = Cpu.resize(&x, (64, 64), ResizeMode::Bicubic).unwrap();
    assert_eq!(y, x);
}

#[test]
fn blocked_attention_equals_materialised_at_sam_window_size() {
    // A padded 14x14 window grid with 2 heads of 64 and a resampled 27-row table.
    let (bh, g, d) = (2, 14, 64);
    let q = random_tensor(&[bh, g * g, d], 1);
    let k = random_tensor(&[bh, g * g, d], 2);
    let v = random_tensor(&[bh, g * g, d], 3);
    let table = random_tensor(&[27, d], 4);
    let rh = Cpu.rel_pos_table(g, g, &table).unwrap();
    let y = Cpu.attention(&q, &k, &v, 0.125, Some(RelPos { rh: &rh, rw: &rh })).unwrap();
    let r = ref_attention(
        &f64s(&q),
        &f64s(&k),
        &f64s(&v),
        bh,
        g * g,
        g * g,
        d,
        d,
        0.125,
        Some((&f64s(&rh), &f64s(&rh), g, g, g)),
    );
    assert_close(&y, &r, "attention 14x14");
}

#[test]
fn softmax_survives_huge_logits() {
    let x = Tensor::new(vec![1, 3], vec![1e30, -1e30, 0.0]).unwrap();
    let y = Cpu.softmax(x).unwrap();
    assert!(y.all_finite());
    assert!((y.data()[0] - 1.0).abs() < 1e-6);
}

#[test]
fn shape_errors_name_the_problem() {
    let a = random_tensor(&[3, 4], 1);
    let b = random_tensor(&[5, 2], 2);
    let e = Cpu.matmul(&a, &b).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("[3, 4]") && e.contains("[5, 2]"), "{e}");
    let e = Cpu.linear(&a, &b, None).unwrap_err().to_string();
    assert!(e.contains("linear"), "{e}");
    assert!(Cpu.window_partition(&a, 2).is_err());
    assert!(Cpu.resize(&random_tensor(&[1, 1, 2, 2], 3), (0, 4), ResizeMode::Bilinear).is_err());
    assert!(Cpu
        .conv2d(&random_tensor(&[1, 3, 4, 4], 1), &random_tensor(&[2, 2, 3, 3], 2), None, Conv2d::new(1, 0))
        .is_err());
}

/// The sequences of golden README 5.2, written out independently of `depth_row`.
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn depth_attention_matches_naive(vols in 1usize..3, depth in 1usize..7, nw in 1usize..4, p in 1usize..5,
                                     heads in 1usize..3, hd in 1usize..6, official in any::<bool>(), with_rel in any::<bool>(),
                                     seed in any::<u64>()) {
        use medsa_core::DepthGrouping;
        let (c, n0) = (heads * hd, vols * depth * nw);
        let qkv = random_tensor(&[n0, p, 3 * c], seed);
        // The depth grid of closest_numbers (1 x D is a valid grid for any D).
        let (gh, gw) = (1, depth);
        let th = random_tensor(&[27, hd], seed ^ 21);
        let tw = random_tensor(&[27, hd], seed ^ 22);
        let rh = Cpu.rel_pos_table(gh, gh, &th).unwrap();
        let rw = Cpu.rel_pos_table(gw, gw, &tw).unwrap();
        let grouping = if official { DepthGrouping::Official } else { DepthGrouping::PerWindow };
        let rel = with_rel.then_some(RelPos { rh: &rh, rw: &rw });
        let scale = 0.37;
        let y = Cpu.depth_attention(&qkv, heads, depth, nw, grouping, rel, scale).unwrap();
        let x = f64s(&qkv);
        let (rhs, rws) = (f64s(&rh), f64s(&rw));
        let mut r = vec![0f64; n0 * p * c];
        for s in 0..n0 * p / depth {
            let rows = ref_seq_rows(official, s, depth, p, nw);
            for h in 0..heads {
                let gather = |which: usize| -> Vec<f64> {
                    rows.iter().flat_map(|&t| x[t * 3 * c + which * c + h * hd..][..hd].to_vec()).collect()
                };
                let o = ref_attention(&gather(0), &gather(1), &gather(2), 1, depth, depth, hd, hd, scale as f64,
                    with_rel.then_some((&rhs[..], &rws[..], gw, gh, gw)));
                for (i, &t) in rows.iter().enumerate() {
                    r[t * c + h * hd..t * c + (h + 1) * hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
                }
            }
        }
        assert_close(&y, &r, "depth_attention");
    }

    #[test]
    fn hyper_chain_matches_naive(b in 1usize..4, t in 1usize..6, r in 1usize..10, n in 1usize..4, seed in any::<u64>()) {
        let x = random_tensor(&[b, t, r], seed);
        let w = random_tensor(&[b, n, r, r], seed ^ 31);
        let g = random_tensor(&[n, r], seed ^ 32);
        let be = random_tensor(&[n, r], seed ^ 33);
        let y = Cpu.hyper_chain(&x, &w, &g, &be, 1e-5).unwrap();
        let (ws, gs, bs) = (f64s(&w), f64s(&g), f64s(&be));
        let mut cur = f64s(&x);
        for layer in 0..n {
            let mut next = vec![0f64; b * t * r];
            for s in 0..b { for row in 0..t {
                let xr = &cur[(s * t + row) * r..][..r];
                let yv: Vec<f64> = (0..r).map(|j| (0..r).map(|i| xr[i] * ws[((s * n + layer) * r + i) * r + j]).sum()).collect();
                let mean = yv.iter().sum::<f64>() / r as f64;
                let var = yv.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / r as f64;
                for j in 0..r {
                    next[(s * t + row) * r + j] = ((yv[j] - mean) / (var + 1e-5).sqrt() * gs[layer * r + j] + bs[layer * r + j]).max(0.0);
                }
            }}
            cur = next;
        }
        assert_close(&y, &cur, "hyper_chain");
    }

    #[test]
    fn upscale_masks_matches_naive(b in 1usize..3, gh in 1usize..5, gw in 1usize..5, d in 1usize..12, c1 in 1usize..8,
                                   c2 in 1usize..6, m in 1usize..5, seed in any::<u64>()) {
        let keys = random_tensor(&[b, gh * gw, d], seed);
        let (w0, b0) = (random_tensor(&[d, c1, 2, 2], seed ^ 41), random_tensor(&[c1], seed ^ 42));
        let (lw, lb) = (random_tensor(&[c1], seed ^ 43), random_tensor(&[c1], seed ^ 44));
        let (w1, b1) = (random_tensor(&[c1, c2, 2, 2], seed ^ 45), random_tensor(&[c2], seed ^ 46));
        let hyper = random_tensor(&[b, m, c2], seed ^ 47);
        let up = Upscaling { conv0: (&w0, &b0), norm: (&lw, &lb, 1e-6), conv1: (&w1, &b1) };
        let y = Cpu.upscale_masks(&keys, (gh, gw), &up, &hyper).unwrap();
        prop_assert_eq!(y.shape(), &[b, m, 4 * gh, 4 * gw]);
        // The spec's literal chain in f64: ConvTranspose2d, LayerNorm2d, GELU, ConvTranspose2d,
        // GELU, then the dot product with each hypernetwork vector.
        let (k, w0s, b0s, lws, lbs, w1s, b1s, hs) =
            (f64s(&keys), f64s(&w0), f64s(&b0), f64s(&lw), f64s(&lb), f64s(&w1), f64s(&b1), f64s(&hyper));
        let gelu = |v: f64| 0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2));
        let mut r = vec![0f64; b * m * 16 * gh * gw];
        for s in 0..b {
            let (h1h, h1w) = (2 * gh, 2 * gw);
            let mut h1 = vec![0f64; h1h * h1w * c1];
            for y1 in 0..h1h { for x1 in 0..h1w {
                let px = &k[(s * gh * gw + (y1 / 2) * gw + x1 / 2) * d..][..d];
                let cell = &mut h1[(y1 * h1w + x1) * c1..][..c1];
                for (o, v) in cell.iter_mut().enumerate() {
                    *v = b0s[o] + (0..d).map(|i| px[i] * w0s[((i * c1 + o) * 2 + y1 % 2) * 2 + x1 % 2]).sum::<f64>();
                }
                let mean = cell.iter().sum::<f64>() / c1 as f64;
                let var = cell.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c1 as f64;
                for (o, v) in cell.iter_mut().enumerate() {
                    *v = gelu((*v - mean) / (var + 1e-6).sqrt() * lws[o] + lbs[o]);
                }
            }}
            for y2 in 0..4 * gh { for x2 in 0..4 * gw {
                let src = &h1[((y2 / 2) * h1w + x2 / 2) * c1..][..c1];
                let h2: Vec<f64> = (0..c2)
                    .map(|o| gelu(b1s[o] + (0..c1).map(|i| src[i] * w1s[((i * c2 + o) * 2 + y2 % 2) * 2 + x2 % 2]).sum::<f64>()))
                    .collect();
                for mm in 0..m {
                    r[((s * m + mm) * 4 * gh + y2) * 4 * gw + x2] = (0..c2).map(|o| hs[(s * m + mm) * c2 + o] * h2[o]).sum();
                }
            }}
        }
        // LayerNorm2d over as few as two channels amplifies the f32 rounding of its input
        // (two nearly equal values normalise to ±1): such a case reached 1.2e-5 (saved in
        // ops.proptest-regressions), so this op gets three times the common tolerance.
        let tol = 3.0 * TOL;
        medsa_testkit::assert_close(&y, &r, tol, "upscale_masks");
        // The composition other backends inherit computes the same.
        let composed = medsa_core::backend::upscale_masks_composed(&Cpu, &keys, (gh, gw), &up, &hyper).unwrap();
        medsa_testkit::assert_close(&composed, &r, tol, "upscale_masks_composed");
        // The fused forward with its tape: the same logits, the composed chain's layer outputs;
        // the fused backward from it matches the composed backward from the composed tape
        // (looser: the layer norm over a few channels amplifies the tapes' rounding differences
        // in its backward).
        use medsa_core::backward::{upscale_masks_backward_taped_composed, upscale_masks_taped_composed};
        let (yt, tape) = Cpu.upscale_masks_taped(&keys, (gh, gw), &up, &hyper).unwrap();
        prop_assert_eq!(yt.data(), y.data());
        let (_, tape_c) = upscale_masks_taped_composed(&Cpu, &keys, (gh, gw), &up, &hyper).unwrap();
        for (k, (a, e)) in tape.layers().into_iter().zip(tape_c.layers()).enumerate() {
            prop_assert_eq!(a.shape(), e.shape());
            medsa_testkit::assert_close(a, &f64s(e), tol, &format!("tape layer {k}"));
        }
        let dl = random_tensor(&[b, m, 4 * gh, 4 * gw], seed ^ 48);
        let g = Cpu.upscale_masks_backward_taped(&keys, (gh, gw), &up, &hyper, &tape, &dl, true).unwrap();
        let gc = upscale_masks_backward_taped_composed(&Cpu, &keys, (gh, gw), &up, &hyper, &tape_c, &dl, true).unwrap();
        // Without the parameters: the same input gradients, and no parameter gradients.
        let gx = Cpu.upscale_masks_backward_taped(&keys, (gh, gw), &up, &hyper, &tape, &dl, false).unwrap();
        prop_assert_eq!(gx.dkeys.data(), g.dkeys.data());
        prop_assert_eq!(gx.dhyper.data(), g.dhyper.data());
        prop_assert!(gx.conv0.is_none() && gx.norm.is_none() && gx.conv1.is_none());
        let (c0, c1g) = (g.conv0.unwrap(), g.conv1.unwrap());
        let (cc0, cc1) = (gc.conv0.unwrap(), gc.conv1.unwrap());
        let (n, nc) = (g.norm.unwrap(), gc.norm.unwrap());
        for (a, e, what) in [(&g.dkeys, &gc.dkeys, "dkeys"), (&g.dhyper, &gc.dhyper, "dhyper"), (&c0.0, &cc0.0, "dw0"),
                             (&c0.1, &cc0.1, "db0"), (&n.0, &nc.0, "dnorm_w"), (&n.1, &nc.1, "dnorm_b"),
                             (&c1g.0, &cc1.0, "dw1"), (&c1g.1, &cc1.1, "db1")] {
            medsa_testkit::assert_close(a, &f64s(e), 1e-3, what);
        }
    }
}

#[test]
fn upscale_masks_rejects_bad_shapes() {
    let keys = random_tensor(&[1, 6, 8], 1);
    let (w0, b0) = (random_tensor(&[8, 4, 2, 2], 2), random_tensor(&[4], 3));
    let (lw, lb) = (random_tensor(&[4], 4), random_tensor(&[4], 5));
    let (w1, b1) = (random_tensor(&[4, 2, 2, 2], 6), random_tensor(&[2], 7));
    let hyper = random_tensor(&[1, 3, 2], 8);
    let up = Upscaling { conv0: (&w0, &b0), norm: (&lw, &lb, 1e-6), conv1: (&w1, &b1) };
    assert!(Cpu.upscale_masks(&keys, (2, 3), &up, &hyper).is_ok());
    // Grid that does not cover the keys, wrong hypernetwork width, mismatched conv chain.
    assert!(Cpu.upscale_masks(&keys, (2, 2), &up, &hyper).is_err());
    assert!(Cpu.upscale_masks(&keys, (2, 3), &up, &random_tensor(&[1, 3, 5], 9)).is_err());
    let w1_bad = random_tensor(&[3, 2, 2, 2], 10);
    let bad = Upscaling { conv1: (&w1_bad, &b1), ..up };
    assert!(Cpu.upscale_masks(&keys, (2, 3), &bad, &hyper).is_err());
    let ln_bad = random_tensor(&[5], 11);
    let bad = Upscaling { norm: (&ln_bad, &lb, 1e-6), ..up };
    assert!(Cpu.upscale_masks(&keys, (2, 3), &bad, &hyper).is_err());
}

/// Grids wide enough that the fused mask head splits a set into several bands of rows, the
/// last one partial (the proptest's grids fit one band).
#[test]
fn upscale_masks_bands_match_the_composition() {
    for (b, gh, gw) in [(2, 5, 100), (1, 7, 64), (1, 3, 300)] {
        let keys = random_tensor(&[b, gh * gw, 6], 1);
        let (w0, b0) = (random_tensor(&[6, 4, 2, 2], 2), random_tensor(&[4], 3));
        let (lw, lb) = (random_tensor(&[4], 4), random_tensor(&[4], 5));
        let (w1, b1) = (random_tensor(&[4, 3, 2, 2], 6), random_tensor(&[3], 7));
        let hyper = random_tensor(&[b, 2, 3], 8);
        let up = Upscaling { conv0: (&w0, &b0), norm: (&lw, &lb, 1e-6), conv1: (&w1, &b1) };
        let fused = Cpu.upscale_masks(&keys, (gh, gw), &up, &hyper).unwrap();
        let composed =
            medsa_core::backend::upscale_masks_composed(&Cpu, &keys, (gh, gw), &up, &hyper).unwrap();
        assert_close(&fused, &f64s(&composed), &format!("upscale_masks {b}x{gh}x{gw}"));
        // The backward's bands (and their sums over bands and sets) likewise.
        use medsa_core::backward::{upscale_masks_backward_taped_composed, upscale_masks_taped_composed};
        let (_, tape) = Cpu.upscale_masks_taped(&keys, (gh, gw), &up, &hyper).unwrap();
        let (_, tape_c) = upscale_masks_taped_composed(&Cpu, &keys, (gh, gw), &up, &hyper).unwrap();
        let dl = random_tensor(&[b, 2, 4 * gh, 4 * gw], 9);
        let g = Cpu.upscale_masks_backward_taped(&keys, (gh, gw), &up, &hyper, &tape, &dl, true).unwrap();
        let gc =
            upscale_masks_backward_taped_composed(&Cpu, &keys, (gh, gw), &up, &hyper, &tape_c, &dl, true)
                .unwrap();
        let (c0, c1) = (g.conv0.unwrap(), g.conv1.unwrap());
        let (cc0, cc1) = (gc.conv0.unwrap(), gc.conv1.unwrap());
        let (n, nc) = (g.norm.unwrap(), gc.norm.unwrap());
        for (a, e, what) in [
            (&g.dkeys, &gc.dkeys, "dkeys"),
            (&g.dhyper, &gc.dhyper, "dhyper"),
            (&c0.0, &cc0.0, "dw0"),
            (&c0.1, &cc0.1, "db0"),
            (&n.0, &nc.0, "dnorm_w"),
            (&n.1, &nc.1, "dnorm_b"),
            (&c1.0, &cc1.0, "dw1"),
            (&c1.1, &cc1.1, "db1"),
        ] {
            medsa_testkit::assert_close(a, &f64s(e), 1e-3, &format!("{what} {b}x{gh}x{gw}"));
        }
    }
}

/// Fast paths the proptest's small shapes do not reach, each against the f64 reference: one
/// head with few queries over many keys (split into several key ranges and merged).
#[test]
fn size_dependent_paths_match() {
    for (bh, nq, nk, d, dv) in [(1, 5, 300, 7, 9), (1, 56, 4096, 16, 16), (1, 1, 65, 3, 2)] {
        let q = random_tensor(&[bh, nq, d], 1);
        let k = random_tensor(&[bh, nk, d], 2).scale(3.0);
        let v = random_tensor(&[bh, nk, dv], 3);
        let scale = 1.0 / (d as f32).sqrt();
        let y = Cpu.attention(&q, &k, &v, scale, None).unwrap();
        let r = ref_attention(&f64s(&q), &f64s(&k), &f64s(&v), bh, nq, nk, d, dv, scale as f64, None);
        assert_close(&y, &r, &format!("attention {bh}x{nq}x{nk}"));
    }
}

/// `gelu_out` above the serial threshold (its parallel chunks, written without a zero fill)
/// equals the in-place `gelu` bit for bit, after the allocator handed out NaN-filled memory of
/// the same size.
#[test]
fn gelu_out_matches_gelu_on_the_pool() {
    let x = random_tensor(&[100_003], 9).scale(4.0);
    drop(std::hint::black_box(vec![f32::NAN; 100_003]));
    let y = Cpu.gelu_out(&x).unwrap();
    assert_eq!(y.data(), Cpu.gelu(x.clone()).unwrap().data());
}
