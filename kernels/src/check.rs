//! The GPU-vs-reference check suite shared by `cargo xtask gpu-check` and the driver-gated tests:
//! every CUDA op against `medsa_ref::Cpu`
//! on fresh random inputs of awkward sizes (not multiples of the tiles, padded windows,
//! D = 1..7, head dims 64 and 80), in both precisions.

use crate::cuda::{AttentionKernel, AttnLayout, AttnShape, Cuda, Precision};
use crate::device::KernelArgs;
use crate::geometry;
use crate::source::{KernelConfig, Storage};
use medsa_core::backend::closest_numbers;
use medsa_core::{Activation, Backend, Conv2d, DepthGrouping, RelPos, ResizeMode, Tensor};
use medsa_testkit::Rng;
use medsa_testkit::{max_abs_diff, rel_diff};

/// Tolerance of `max|out - ref| / max|ref|` for f32 storage.
pub const TOL_F32: f32 = 1e-4;
/// Tolerance for bf16 storage.
pub const TOL_BF16: f32 = 2e-2;

/// One line of the check table.
#[derive(Clone, Debug)]
pub struct CheckRow {
    /// Op name.
    pub op: String,
    /// Shape description.
    pub shape: String,
    /// Precision of the CUDA backend.
    pub precision: Precision,
    /// `max |out - ref|` (infinite if any output is NaN, NaN if the op failed).
    pub max_abs: f32,
    /// `max |out - ref| / max |ref|`.
    pub rel: f32,
    /// Pass / fail.
    pub pass: bool,
    /// Error text when the op failed.
    pub error: Option<String>,
}

/// `(max abs err, rel err)` (`medsa_testkit`'s measures); infinite when the shapes differ or
/// anything is NaN, so such a row never passes.
pub fn compare(out: &Tensor, reference: &Tensor) -> (f32, f32) {
    (max_abs_diff(out, reference), rel_diff(out, reference))
}

impl CheckRow {
    /// The row comparing `out` with `reference` at precision `p`'s tolerance.
    pub fn compared(op: &str, shape: String, p: Precision, out: &Tensor, reference: &Tensor) -> Self {
        let tol = match p {
            Precision::F32 => TOL_F32,
            Precision::Bf16 => TOL_BF16,
        };
        let (max_abs, rel) = compare(out, reference);
        CheckRow { op: op.into(), shape, precision: p, max_abs, rel, pass: rel <= tol, error: None }
    }

    /// The failed row of an op that returned `error` instead of a result.
    pub fn failed(op: &str, shape: String, p: Precision, error: impl std::fmt::Display) -> Self {
        CheckRow {
            op: op.into(),
            shape,
            precision: p,
            max_abs: f32::NAN,
            rel: f32::NAN,
            pass: false,
            error: Some(error.to_string()),
        }
    }
}

fn row(
    op: &str,
    shape: String,
    p: Precision,
    got: medsa_core::Result<Tensor>,
    want: medsa_core::Result<Tensor>,
) -> CheckRow {
    match (got, want) {
        (Ok(g), Ok(w)) => CheckRow::compared(op, shape, p, &g, &w),
        (g, w) => {
            let e = [g.err().map(|e| format!("cuda: {e}")), w.err().map(|e| format!("ref: {e}"))]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            CheckRow::failed(op, shape, p, e)
        }
    }
}

fn rel_tables(
    cpu: &medsa_ref::Cpu,
    rng: &mut Rng,
    q: (usize, usize),
    k: (usize, usize),
    hd: usize,
) -> medsa_core::Result<(Tensor, Tensor)> {
    let th = rng.tensor(&[2 * q.0.max(k.0) - 1, hd], 0.3);
    let tw = rng.tensor(&[2 * q.1.max(k.1) - 1, hd], 0.3);
    Ok((cpu.rel_pos_table(q.0, k.0, &th)?, cpu.rel_pos_table(q.1, k.1, &tw)?))
}

/// (b*h, query grid, key grid, head dim, with bias).
type AttnCase = (usize, (usize, usize), (usize, usize), usize, bool);

/// Runs the whole suite on `cuda` (one precision) and returns the rows.
pub fn run_suite(cuda: &Cuda, seed: u64) -> Vec<CheckRow> {
    let cpu = medsa_ref::Cpu;
    let p = cuda.precision();
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();

    // Attention: windows (14x14, bias), global grids of awkward sizes, no-bias, decoder dims.
    let attn_cases: [AttnCase; 9] = [
        (6, (14, 14), (14, 14), 64, true),
        (5, (14, 14), (14, 14), 80, true),
        (3, (13, 11), (13, 11), 64, true),
        (2, (37, 29), (37, 29), 64, true),
        (2, (33, 35), (33, 35), 80, true),
        (3, (9, 7), (9, 7), 80, false),
        (2, (67, 1), (300, 1), 64, false),
        (8, (7, 1), (257, 1), 16, false),
        (8, (257, 1), (7, 1), 32, false),
    ];
    for (bh, qg, kg, hd, bias) in attn_cases {
        let (nq, nk) = (qg.0 * qg.1, kg.0 * kg.1);
        let q = rng.tensor(&[bh, nq, hd], 1.0);
        let k = rng.tensor(&[bh, nk, hd], 1.0);
        let v = rng.tensor(&[bh, nk, hd], 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        let tabs = if bias { rel_tables(&cpu, &mut rng, qg, kg, hd).ok() } else { None };
        let rel = tabs.as_ref().map(|(rh, rw)| RelPos { rh, rw });
        let shape =
            format!("bh{bh} q{}x{} k{}x{} d{hd}{}", qg.0, qg.1, kg.0, kg.1, if bias { " bias" } else { "" });
        rows.push(row(
            "attention",
            shape,
            p,
            cuda.attention(&q, &k, &v, scale, rel),
            cpu.attention(&q, &k, &v, scale, rel),
        ));
    }
    if p == Precision::Bf16 {
        rows.extend(tc_kernel_rows(cuda, rng.uniform().to_bits().into(), false));
    }
    let (got, want) = strided_heads(cuda, &mut rng, (2, 3, (9, 7), 64), None);
    rows.push(row("attention_scalar_fwd", "B2 H3 9x7 d64 packed qkv strides".into(), p, got, want));
    // The Backend op reading the packed qkv: windowed-size, flash-size (more than 256 tokens) and
    // a head dim without tensor-core kernels, with the rel-pos bias.
    for (b, heads, (gh, gw), hd) in [(2, 3, (9, 7), 64), (1, 2, (19, 17), 80), (2, 2, (5, 6), 48)] {
        let qkv = rng.tensor(&[b, gh * gw, 3 * heads * hd], 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        let tables = rel_tables(&cpu, &mut rng, (gh, gw), (gh, gw), hd);
        let (got, want) = match &tables {
            Ok((rh, rw)) => {
                let rel = Some(RelPos { rh, rw });
                (cuda.attention_qkv(&qkv, heads, scale, rel), cpu.attention_qkv(&qkv, heads, scale, rel))
            }
            Err(e) => (
                Err(medsa_core::Error::arg("check", e.to_string())),
                Err(medsa_core::Error::arg("check", "no tables")),
            ),
        };
        rows.push(row("attention_qkv", format!("B{b} H{heads} {gh}x{gw} d{hd} bias"), p, got, want));
    }

    // Norms and elementwise.
    let x = rng.tensor(&[5, 13, 77], 2.0);
    let (w, b) = (rng.tensor(&[77], 1.0), rng.tensor(&[77], 1.0));
    rows.push(row(
        "layer_norm",
        "[5,13,77]".into(),
        p,
        cuda.layer_norm(&x, &w, &b, 1e-6),
        cpu.layer_norm(&x, &w, &b, 1e-6),
    ));
    let x = rng.tensor(&[3, 1280], 3.0);
    let (w, b) = (rng.tensor(&[1280], 1.0), rng.tensor(&[1280], 1.0));
    rows.push(row(
        "layer_norm",
        "[3,1280]".into(),
        p,
        cuda.layer_norm(&x, &w, &b, 1e-5),
        cpu.layer_norm(&x, &w, &b, 1e-5),
    ));
    let x = rng.tensor(&[2, 37, 9, 11], 2.0);
    let (w, b) = (rng.tensor(&[37], 1.0), rng.tensor(&[37], 1.0));
    rows.push(row(
        "layer_norm2d",
        "[2,37,9,11]".into(),
        p,
        cuda.layer_norm2d(&x, &w, &b, 1e-6),
        cpu.layer_norm2d(&x, &w, &b, 1e-6),
    ));
    let x = rng.tensor(&[3, 1001], 4.0);
    rows.push(row("gelu", "[3,1001]".into(), p, cuda.gelu(x.clone()), cpu.gelu(x.clone())));
    rows.push(row("gelu_out", "[3,1001]".into(), p, cuda.gelu_out(&x), cpu.gelu_out(&x)));
    rows.push(row("relu", "[3,1001]".into(), p, cuda.relu(x.clone()), cpu.relu(x.clone())));
    let x = rng.tensor(&[7, 131], 6.0);
    rows.push(row("softmax", "[7,131]".into(), p, cuda.softmax(x.clone()), cpu.softmax(x.clone())));
    // Masked logits: -inf at the start of a row (the first values a lane sees), every other one,
    // all but one.
    let mut x = rng.tensor(&[3, 131], 6.0);
    for (i, v) in x.data_mut().iter_mut().enumerate() {
        let (r, c) = (i / 131, i % 131);
        if (r == 0 && c < 70) || (r == 1 && c % 2 == 0) || (r == 2 && c != 100) {
            *v = f32::NEG_INFINITY;
        }
    }
    rows.push(row("softmax", "[3,131] rows with -inf".into(), p, cuda.softmax(x.clone()), cpu.softmax(x)));
    let (a, bb) = (rng.tensor(&[4, 333], 1.0), rng.tensor(&[4, 333], 1.0));
    rows.push(row("add_scaled", "[4,333]".into(), p, cuda.add_scaled(a.clone(), &bb, 1.0), a.add(&bb)));
    let (a, t) = (rng.tensor(&[2, 3, 5, 7], 1.0), rng.tensor(&[3, 5, 7], 1.0));
    let bshape = "[2,3,5,7] + 0.5 [3,5,7]".to_string();
    rows.push(row("add_scaled", bshape, p, cuda.add_scaled(a.clone(), &t, 0.5), cpu.add_scaled(a, &t, 0.5)));
    let (a, t) = (rng.tensor(&[3, 5, 7], 1.0), rng.tensor(&[3, 1, 7], 1.0));
    let bshape = "[3,5,7] - 2 [3,1,7]".to_string();
    rows.push(row(
        "add_scaled",
        bshape,
        p,
        cuda.add_scaled(a.clone(), &t, -2.0),
        cpu.add_scaled(a, &t, -2.0),
    ));
    let x = rng.tensor(&[5, 67], 3.0);
    rows.push(row("scale", "[5,67] x 0.3".into(), p, cuda.scale(x.clone(), 0.3), cpu.scale(x, 0.3)));
    let parts = [rng.tensor(&[2, 1, 5], 1.0), rng.tensor(&[2, 4, 5], 1.0), rng.tensor(&[2, 0, 5], 1.0)];
    let refs: Vec<&Tensor> = parts.iter().collect();
    rows.push(row("cat", "[2,1|4|0,5] axis 1".into(), p, cuda.cat(&refs, 1), Tensor::cat(&refs, 1)));
    let x = rng.tensor(&[2, 3, 5, 7, 3], 1.0);
    let perm = [2, 0, 4, 1, 3];
    rows.push(row(
        "permute",
        "[2,3,5,7,3] by [2,0,4,1,3]".into(),
        p,
        cuda.permute(&x, &perm),
        x.permute(&perm),
    ));
    rows.push(row(
        "narrow",
        "[2,3,5,7,3] axis 2 1..4".into(),
        p,
        cuda.narrow(&x, 2, 1, 3),
        x.narrow(2, 1, 3),
    ));

    // The storage casts, round trip (f32 -> storage -> f32).
    let x = rng.tensor(&[3, 1001], 5.0);
    rows.push(row(
        "cast",
        "[3,1001] f32 -> storage -> f32".into(),
        p,
        cast_round_trip(cuda, &x),
        Ok(x.clone()),
    ));
    // The naive path's materialised bias (attention_add_rel_bias), against the formula.
    let (bh, nq, (kh, kw)) = (3, 29, (5, 7));
    let (s, rel) = (rng.tensor(&[bh, nq, kh * kw], 2.0), rng.tensor(&[bh, nq, kh + kw], 1.0));
    let want = Tensor::from_fn(vec![bh, nq, kh * kw], |i| {
        let (r, j) = (i / (kh * kw), i % (kh * kw));
        0.7 * s.data()[i] + rel.data()[r * (kh + kw) + j / kw] + rel.data()[r * (kh + kw) + kh + j % kw]
    });
    rows.push(row(
        "attention_add_rel_bias",
        format!("[{bh},{nq},{kh}x{kw}]"),
        p,
        attention_add_rel_bias(cuda, &s, &rel, (kh, kw), 0.7),
        want,
    ));

    // Window partition with padding (23 x 17 -> 28 x 28) and its inverse.
    let x = rng.tensor(&[2, 23, 17, 5], 1.0);
    let got = cuda.window_partition(&x, 14);
    let want = cpu.window_partition(&x, 14);
    let pad_ok = matches!((&got, &want), (Ok((_, a)), Ok((_, b))) if a == b);
    rows.push(row(
        "window_partition",
        format!("[2,23,17,5] w14{}", if pad_ok { "" } else { " PAD MISMATCH" }),
        p,
        got.as_ref()
            .map(|g| g.0.clone())
            .map_err(|e| medsa_core::Error::arg("window_partition", e.to_string()))
            .and_then(|t| {
                if pad_ok {
                    Ok(t)
                } else {
                    Err(medsa_core::Error::arg("window_partition", "padded size differs"))
                }
            }),
        want.as_ref()
            .map(|g| g.0.clone())
            .map_err(|e| medsa_core::Error::arg("window_partition", e.to_string())),
    ));
    if let Ok((xw, pad)) = &want {
        rows.push(row(
            "window_unpartition",
            "[8,14,14,5]->[2,23,17,5]".into(),
            p,
            cuda.window_unpartition(xw, 14, *pad, (23, 17)),
            cpu.window_unpartition(xw, 14, *pad, (23, 17)),
        ));
    }

    // Resizes (PyTorch semantics), up and down, non-integer ratios.
    let x = rng.tensor(&[2, 3, 17, 23], 1.0);
    for (mode, name) in [
        (ResizeMode::Bilinear, "resize bilinear"),
        (ResizeMode::Bicubic, "resize bicubic"),
        (ResizeMode::Nearest, "resize nearest"),
    ] {
        for out in [(31, 9), (64, 70)] {
            rows.push(row(
                name,
                format!("[2,3,17,23]->{out:?}"),
                p,
                cuda.resize(&x, out, mode),
                cpu.resize(&x, out, mode),
            ));
        }
    }

    // Convolutions: patch embed (16 / 16), 3x3 pad 1, 3x3 stride 2 pad 1, 1x1, the mask
    // downscaling (2x2 / 2), depthwise 3x3, two groups; awkward spatial sizes.
    let convs: [(&str, [usize; 4], [usize; 4], Conv2d); 7] = [
        ("patch 16/16", [2, 3, 35, 48], [29, 3, 16, 16], Conv2d::new(16, 0)),
        ("3x3 p1", [2, 13, 11, 9], [17, 13, 3, 3], Conv2d::new(1, 1)),
        ("3x3 s2 p1", [1, 7, 15, 12], [5, 7, 3, 3], Conv2d::new(2, 1)),
        ("1x1", [2, 33, 7, 5], [19, 33, 1, 1], Conv2d::new(1, 0)),
        ("2x2 s2", [3, 4, 13, 14], [16, 4, 2, 2], Conv2d::new(2, 0)),
        ("depthwise 3x3", [2, 12, 9, 10], [12, 1, 3, 3], Conv2d { stride: 1, padding: 1, groups: 12 }),
        ("2 groups 3x3 s2", [1, 8, 11, 9], [6, 4, 3, 3], Conv2d { stride: 2, padding: 1, groups: 2 }),
    ];
    for (name, xs, ws, g) in convs {
        let (x, w, b) = (rng.tensor(&xs, 1.0), rng.tensor(&ws, 0.5), rng.tensor(&[ws[0]], 1.0));
        rows.push(row(
            "conv2d",
            format!("{name} {xs:?}"),
            p,
            cuda.conv2d(&x, &w, Some(&b), g),
            cpu.conv2d(&x, &w, Some(&b), g),
        ));
    }
    let (x, w, b) = (rng.tensor(&[2, 9, 7, 5], 1.0), rng.tensor(&[9, 6, 2, 2], 0.5), rng.tensor(&[6], 1.0));
    rows.push(row(
        "conv_transpose2x2",
        "[2,9,7,5]->[2,6,14,10]".into(),
        p,
        cuda.conv_transpose2x2(&x, &w, &b),
        cpu.conv_transpose2x2(&x, &w, &b),
    ));
    // Positional encodings: rel-pos tables resampled up, down and not at all, qs != ks.
    for (qs, ks, rows_t) in [(14, 14, 27), (14, 14, 15), (9, 5, 40), (5, 9, 17), (3, 3, 27)] {
        let t = rng.tensor(&[rows_t, 24], 1.0);
        rows.push(row(
            "rel_pos_table",
            format!("q{qs} k{ks} from {rows_t} rows"),
            p,
            cuda.rel_pos_table(qs, ks, &t),
            cpu.rel_pos_table(qs, ks, &t),
        ));
    }
    let coords = rng.tensor(&[3, 37, 2], 1.0);
    let gauss = rng.tensor(&[2, 64], 2.0);
    rows.push(row(
        "pe_encode",
        "[3,37,2] F64".into(),
        p,
        cuda.pe_encode(&coords, &gauss),
        cpu.pe_encode(&coords, &gauss),
    ));
    // Attention the decoder's factored paths need: 256-wide heads, value dim != head dim.
    for (bh, nq, nk, hd, dv) in [(1, 56, 300, 256, 256), (2, 7, 129, 32, 200), (3, 70, 9, 16, 256)] {
        let q = rng.tensor(&[bh, nq, hd], 1.0);
        let k = rng.tensor(&[bh, nk, hd], 1.0);
        let v = rng.tensor(&[bh, nk, dv], 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        rows.push(row(
            "attention",
            format!("bh{bh} q{nq} k{nk} d{hd} dv{dv}"),
            p,
            cuda.attention(&q, &k, &v, scale, None),
            cpu.attention(&q, &k, &v, scale, None),
        ));
    }

    // GEMMs.
    let x = rng.tensor(&[3, 17, 45], 1.0);
    let (w, b) = (rng.tensor(&[29, 45], 1.0), rng.tensor(&[29], 1.0));
    rows.push(row(
        "linear",
        "[3,17,45]x[29,45]+b".into(),
        p,
        cuda.linear(&x, &w, Some(&b)),
        cpu.linear(&x, &w, Some(&b)),
    ));
    for (act, with_bias) in [(Activation::Gelu, true), (Activation::Relu, true), (Activation::Gelu, false)] {
        let bias = with_bias.then_some(&b);
        rows.push(row(
            "linear_act",
            format!("[3,17,45]x[29,45]{} {act:?}", if with_bias { "+b" } else { "" }),
            p,
            cuda.linear_act(&x, &w, bias, act),
            cpu.linear_act(&x, &w, bias, act),
        ));
    }
    let r = rng.tensor(&[3, 17, 29], 1.0);
    for (s, with_bias) in [(1.0, true), (0.37, true), (-2.0, false)] {
        let bias = with_bias.then_some(&b);
        rows.push(row(
            "linear_add",
            format!("[3,17,29]+{s}*([3,17,45]x[29,45]{})", if with_bias { "+b" } else { "" }),
            p,
            cuda.linear_add(r.clone(), &x, &w, bias, s),
            cpu.linear_add(r.clone(), &x, &w, bias, s),
        ));
    }
    let (a, bm) = (rng.tensor(&[33, 70], 1.0), rng.tensor(&[70, 19], 1.0));
    rows.push(row("matmul", "[33,70]x[70,19]".into(), p, cuda.matmul(&a, &bm), cpu.matmul(&a, &bm)));
    let (a, bm) = (rng.tensor(&[5, 9, 31], 1.0), rng.tensor(&[5, 31, 12], 1.0));
    rows.push(row("bmm", "[5,9,31]x[5,31,12]".into(), p, cuda.bmm(&a, &bm), cpu.bmm(&a, &bm)));
    let bt = rng.tensor(&[5, 12, 31], 1.0);
    rows.push(row("bmm_nt", "[5,9,31]x[5,12,31]T".into(), p, cuda.bmm_nt(&a, &bt), cpu.bmm_nt(&a, &bt)));
    let at = rng.tensor(&[5, 31, 9], 1.0);
    rows.push(row("bmm_tn", "[5,31,9]Tx[5,31,12]".into(), p, cuda.bmm_tn(&at, &bm), cpu.bmm_tn(&at, &bm)));

    // SD-Trans depth attention: D = 1..7, both groupings, head dims 64 / 80, windowed (nw = 4,
    // P = 9) and global (nw = 1) layouts, with the depth-grid bias.
    for depth in 1..=7usize {
        for (hd, heads, nw, pp) in [(64, 2, 4, 9), (80, 1, 1, 10)] {
            for grouping in [DepthGrouping::Official, DepthGrouping::PerWindow] {
                let volumes = 2;
                let n0 = volumes * depth * nw;
                let c = heads * hd;
                let qkv = rng.tensor(&[n0, pp, 3 * c], 1.0);
                let (dh, dw) = match closest_numbers(depth) {
                    Ok(g) => g,
                    Err(e) => {
                        rows.push(CheckRow::failed("depth_attention", format!("D={depth}"), p, e));
                        continue;
                    }
                };
                let tabs = rel_tables(&cpu, &mut rng, (dh, dw), (dh, dw), hd).ok();
                let rel = tabs.as_ref().map(|(rh, rw)| RelPos { rh, rw });
                let scale = 1.0 / (hd as f32).sqrt();
                rows.push(row(
                    "depth_attention",
                    format!("D{depth} {dh}x{dw} nw{nw} P{pp} d{hd} {grouping:?}"),
                    p,
                    cuda.depth_attention(&qkv, heads, depth, nw, grouping, rel, scale).map_err(Into::into),
                    cpu.depth_attention(&qkv, heads, depth, nw, grouping, rel, scale),
                ));
            }
        }
    }

    // HyP-Adpt chain.
    for r in [32usize, 64] {
        let (bs, t) = (3, 7);
        let x = rng.tensor(&[bs, t, r], 1.0);
        let w = rng.tensor(&[bs, 3, r, r], 0.5);
        let (g, be) = (rng.tensor(&[3, r], 1.0), rng.tensor(&[3, r], 0.5));
        rows.push(row(
            "hyper_chain",
            format!("B{bs} T{t} r{r} L3"),
            p,
            cuda.hyper_chain(&x, &w, &g, &be, 1e-5).map_err(Into::into),
            cpu.hyper_chain(&x, &w, &g, &be, 1e-5),
        ));
    }
    rows
}

/// Both tensor-core kernels forced (bf16): a square and non-square window grids with the bias,
/// and `heads > 1` straight from a packed qkv buffer through strides; `quick`: one non-square
/// case per kernel (for the slow concurrent emulator).
pub fn tc_kernel_rows(cuda: &Cuda, seed: u64, quick: bool) -> Vec<CheckRow> {
    let cpu = medsa_ref::Cpu;
    let p = Precision::Bf16;
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    for (kernel, name) in
        [(AttentionKernel::Window, "attention_window_fwd"), (AttentionKernel::Flash, "attention_flash_fwd")]
    {
        let cases: &[(usize, (usize, usize), usize)] = if quick {
            &[(64, (13, 11), 1)]
        } else {
            &[(64, (14, 14), 4), (80, (14, 14), 3), (64, (13, 11), 2), (80, (7, 19), 2), (64, (5, 11), 2)]
        };
        for &(hd, g, bh) in cases {
            let n = g.0 * g.1;
            let q = rng.tensor(&[bh, n, hd], 1.0);
            let k = rng.tensor(&[bh, n, hd], 1.0);
            let v = rng.tensor(&[bh, n, hd], 1.0);
            let scale = 1.0 / (hd as f32).sqrt();
            let want = rel_tables(&cpu, &mut rng, g, g, hd).and_then(|(rh, rw)| {
                let r = cpu.attention(&q, &k, &v, scale, Some(RelPos { rh: &rh, rw: &rw }))?;
                Ok((r, rh, rw))
            });
            let (got, want) = match want {
                Ok((r, rh, rw)) => (forced_tc(cuda, &q, &k, &v, &rh, &rw, (g, g), scale, kernel), Ok(r)),
                Err(e) => (Err(medsa_core::Error::arg("check", "no reference")), Err(e)),
            };
            rows.push(row(name, format!("bh{bh} {}x{} d{hd} bias", g.0, g.1), p, got, want));
        }
        if !quick {
            let (got, want) = strided_heads(cuda, &mut rng, (2, 3, (9, 7), 64), Some(kernel));
            rows.push(row(name, "B2 H3 9x7 d64 packed qkv strides".into(), p, got, want));
        }
    }
    rows
}

#[allow(clippy::too_many_arguments)]
fn forced_tc(
    cuda: &Cuda,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rh: &Tensor,
    rw: &Tensor,
    g: ((usize, usize), (usize, usize)),
    scale: f32,
    kernel: AttentionKernel,
) -> medsa_core::Result<Tensor> {
    let run = || -> crate::Result<Tensor> {
        let (qd, kd, vd) =
            (cuda.upload(q, Storage::Bf16)?, cuda.upload(k, Storage::Bf16)?, cuda.upload(v, Storage::Bf16)?);
        let (bh, nq, hd, nk) = (q.dim(0), q.dim(1), q.dim(2), k.dim(1));
        let mut od = cuda.alloc(bh * nq * hd, Storage::Bf16)?;
        let (rhd, rwd) = (cuda.upload_f32(rh.data())?, cuda.upload_f32(rw.data())?);
        let shape = AttnShape::contiguous(bh, nq, nk, hd, Some(g), scale);
        cuda.attention_tc_dev(&qd, &kd, &vd, &mut od, &shape, Some((&rhd, &rwd)), None, Some(kernel))?;
        cuda.download(&od, &[bh, nq, hd])
    };
    run().map_err(Into::into)
}

fn cast_round_trip(cuda: &Cuda, x: &Tensor) -> medsa_core::Result<Tensor> {
    let run = || -> crate::Result<Tensor> {
        let st = cuda.precision().storage();
        let ew = KernelConfig::elementwise(st);
        let n = x.numel();
        let (xd, ed, yd) = (cuda.upload_f32(x.data())?, cuda.alloc(n, st)?, cuda.alloc(n, Storage::F32)?);
        let l = geometry::elementwise(n);
        let mut a = KernelArgs::new();
        a.push(&xd.addr()).push(&ed.addr()).push(&(n as i64));
        cuda.launch(&ew, "cast_f32_to_elem", &l, &a)?;
        let mut a = KernelArgs::new();
        a.push(&ed.addr()).push(&yd.addr()).push(&(n as i64));
        cuda.launch(&ew, "cast_elem_to_f32", &l, &a)?;
        cuda.download(&yd, x.shape())
    };
    run().map_err(Into::into)
}

fn attention_add_rel_bias(
    cuda: &Cuda,
    s: &Tensor,
    rel: &Tensor,
    (kh, kw): (usize, usize),
    scale: f32,
) -> medsa_core::Result<Tensor> {
    let run = || -> crate::Result<Tensor> {
        let st = cuda.precision().storage();
        let (bh, nq, nk) = (s.dim(0), s.dim(1), s.dim(2));
        let (sd, rd) = (cuda.upload(s, st)?, cuda.upload_f32(rel.data())?);
        let mut a = KernelArgs::new();
        a.push(&sd.addr()).push(&rd.addr());
        for v in [bh, nq, nk, kh, kw] {
            a.push(&(v as i32));
        }
        a.push(&scale);
        cuda.launch(
            &KernelConfig::elementwise(st),
            "attention_add_rel_bias",
            &geometry::elementwise(bh * nq * nk),
            &a,
        )?;
        cuda.download(&sd, s.shape())
    };
    run().map_err(Into::into)
}

/// `[B, N, 3, H, hd]` (a packed qkv projection) -> q, k, v as `[B * H, N, hd]`.
fn unpack_qkv(qkv: &Tensor, b: usize, n: usize, heads: usize, hd: usize) -> [Tensor; 3] {
    let c = heads * hd;
    let d = qkv.data();
    std::array::from_fn(|which| {
        Tensor::from_fn(vec![b * heads, n, hd], |i| {
            let (bh, r, e) = (i / (n * hd), (i / hd) % n, i % hd);
            let (bi, h) = (bh / heads, bh % heads);
            d[(bi * n + r) * 3 * c + which * c + h * hd + e]
        })
        .unwrap_or_else(|_| unreachable!("shape and data agree"))
    })
}

/// Attention with `heads > 1` read straight from a packed qkv buffer through strides and written
/// as `[B, N, H * hd]`: both kernels' head / batch / row strides, against the reference on the
/// unpacked operands.
fn strided_heads(
    cuda: &Cuda,
    rng: &mut Rng,
    (b, heads, grid, hd): (usize, usize, (usize, usize), usize),
    tc: Option<AttentionKernel>,
) -> (medsa_core::Result<Tensor>, medsa_core::Result<Tensor>) {
    let cpu = medsa_ref::Cpu;
    let (n, c) = (grid.0 * grid.1, heads * hd);
    let qkv = rng.tensor(&[b, n, 3 * c], 1.0);
    let scale = 1.0 / (hd as f32).sqrt();
    let want = (|| {
        let (rh, rw) = rel_tables(&cpu, rng, grid, grid, hd)?;
        let [q, k, v] = unpack_qkv(&qkv, b, n, heads, hd);
        let o = cpu.attention(&q, &k, &v, scale, Some(RelPos { rh: &rh, rw: &rw }))?;
        // [B * H, N, hd] -> [B, N, H * hd]
        let od = o.data();
        let packed = Tensor::from_fn(vec![b, n, c], |i| {
            let (bi, r, ch) = (i / (n * c), (i / c) % n, i % c);
            od[((bi * heads + ch / hd) * n + r) * hd + ch % hd]
        })?;
        Ok::<_, medsa_core::Error>((packed, rh, rw))
    })();
    let (want, rh, rw) = match want {
        Ok(w) => w,
        Err(e) => return (Err(medsa_core::Error::arg("check", "no reference")), Err(e)),
    };
    let got = (|| -> crate::Result<Tensor> {
        let st = if tc.is_some() { Storage::Bf16 } else { cuda.precision().storage() };
        let qkvd = cuda.upload(&qkv, st)?;
        let mut od = cuda.alloc(b * n * c, st)?;
        let (rhd, rwd) = (cuda.upload_f32(rh.data())?, cuda.upload_f32(rw.data())?);
        let layout = AttnLayout::packed_qkv(heads, n, hd);
        let shape =
            AttnShape { bh: b * heads, nq: n, nk: n, hd, dv: hd, grids: Some((grid, grid)), scale, layout };
        match tc {
            Some(kernel) => cuda.attention_tc_dev(
                &qkvd,
                &qkvd,
                &qkvd,
                &mut od,
                &shape,
                Some((&rhd, &rwd)),
                None,
                Some(kernel),
            )?,
            None => cuda.attention_scalar_dev(&qkvd, &qkvd, &qkvd, &mut od, &shape, Some((&rhd, &rwd)))?,
        }
        cuda.download(&od, &[b, n, c])
    })();
    (got.map_err(Into::into), Ok(want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_flags_nan_and_shape() {
        let a = Tensor::new(vec![2], vec![1.0, 2.0]).unwrap();
        let b = Tensor::new(vec![2], vec![1.0, 2.5]).unwrap();
        assert_eq!(compare(&a, &b), (0.5, 0.2));
        let n = Tensor::new(vec![2], vec![f32::NAN, 2.0]).unwrap();
        assert!(!compare(&n, &b).0.is_finite());
        assert!(!compare(&a, &Tensor::zeros(vec![1, 2]).unwrap()).0.is_finite());
        let mut r = Rng::new(7);
        let t = r.tensor(&[1000], 1.0);
        assert!(t.data().iter().all(|v| (-1.0..1.0).contains(v)));
        assert!(t.max_abs() > 0.9);
    }
}
