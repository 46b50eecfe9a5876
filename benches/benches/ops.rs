//! Op benchmarks of the CPU reference, one criterion group per Backend op family the encoder and
//! decoder spend their time in, named by the op (`linear/...`, `attention/...`,
//! `attention_backward/...`, `depth_attention/...`), at the shapes SAM ViT-B at 1024 (grid 64, 14 x 14 windows) and its
//! decoder run them. Throughput is reported in elements/s where one element is one FLOP (for the
//! products) or one output value (for the rest), so criterion's `Gelem/s` reads as GFLOP/s for
//! the products. `cargo xtask bench` relates every rate to `linear`'s, measured in the same run.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use medsa_benches::GlobalAttention;
use medsa_core::{Backend, Conv2d, DepthGrouping, RelPos, ResizeMode, Tensor, Upscaling};
use medsa_ref::Cpu;
use medsa_testkit::random_tensor;
use std::hint::black_box;

// The binaries (medsa, benches) use mimalloc: glibc maps every large tensor fresh, so each op
// would page-fault its whole output in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// ViT-B's width, heads, head dim, grid at 1024 and window side.
const C: usize = 768;
const HEADS: usize = 12;
const HD: usize = 64;
const GRID: usize = 64;
const WIN: usize = 14;

fn group<'a>(
    c: &'a mut Criterion,
    op: &str,
    samples: usize,
    elements: usize,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(op);
    g.sample_size(samples);
    g.throughput(Throughput::Elements(elements as u64));
    g
}

/// `linear` and `matmul`: ViT-B's MLP lin1 at 1024, `[4096, 768] · [768, 3072]`, as the model
/// runs it (the `[out, in]` weight) and as a plain row-major product. `linear` is the GEMM rate
/// the other rows are compared with.
fn linear_and_matmul(c: &mut Criterion) {
    let (m, k, n) = (GRID * GRID, C, 4 * C);
    let a = random_tensor(&[m, k], 1);
    let b = random_tensor(&[k, n], 2);
    let w = random_tensor(&[n, k], 3);
    let mut g = group(c, "linear", 20, 2 * m * k * n);
    g.bench_function("vit_b_mlp_4096x768x3072", |bench| {
        bench.iter(|| black_box(Cpu.linear(&a, &w, None).unwrap()))
    });
    g.finish();
    let mut g = group(c, "matmul", 20, 2 * m * k * n);
    g.bench_function("rowmajor_4096x768x3072", |bench| bench.iter(|| black_box(Cpu.matmul(&a, &b).unwrap())));
    g.finish();
}

/// `attention`: the global block (12 heads x 4096 tokens, rel-pos bias) and the windowed blocks
/// (25 windows of 14 x 14 = 196 tokens x 12 heads, rel-pos bias).
fn attention(c: &mut Criterion) {
    let p = GlobalAttention::new(&Cpu).unwrap();
    let mut g = group(c, "attention", 10, GlobalAttention::flops() as usize);
    g.bench_function("global_vit_b_12x4096x64_relpos", |bench| {
        bench.iter(|| black_box(p.run(&Cpu).unwrap()))
    });
    g.finish();

    let windows = GRID.div_ceil(WIN).pow(2);
    let (bh, n) = (windows * HEADS, WIN * WIN);
    let (q, k, v) =
        (random_tensor(&[bh, n, HD], 4), random_tensor(&[bh, n, HD], 5), random_tensor(&[bh, n, HD], 6));
    let table = random_tensor(&[2 * WIN - 1, HD], 7).scale(0.1);
    let rh = Cpu.rel_pos_table(WIN, WIN, &table).unwrap();
    let rw = Cpu.rel_pos_table(WIN, WIN, &table).unwrap();
    let mut g = group(c, "attention", 10, 4 * bh * n * n * HD);
    g.bench_function("window_vit_b_300x196x64_relpos", |bench| {
        bench.iter(|| black_box(Cpu.attention(&q, &k, &v, 0.125, Some(RelPos { rh: &rh, rw: &rw })).unwrap()))
    });
    g.finish();
}

/// `attention_backward`: the global block's backward from the forward's output and saved
/// log-sum-exp (five products of the forward's size each: the weights recomputed, dV, dP, dQ,
/// dK; counted as 2.5x the forward's FLOPs).
fn attention_backward(c: &mut Criterion) {
    let p = GlobalAttention::new(&Cpu).unwrap();
    let rel = Some(RelPos { rh: &p.rh, rw: &p.rw });
    let scale = 1.0 / (HD as f32).sqrt();
    let (o, lse) = Cpu.attention_lse(&p.q, &p.k, &p.v, scale, rel).unwrap();
    let dout = random_tensor(o.shape(), 8);
    let mut g = group(c, "attention_backward", 10, (2.5 * GlobalAttention::flops()) as usize);
    g.bench_function("global_vit_b_12x4096x64_relpos", |bench| {
        bench.iter(|| {
            black_box(Cpu.attention_backward(&p.q, &p.k, &p.v, scale, rel, &o, &lse, &dout).unwrap())
        })
    });
    g.finish();
}

/// `depth_attention`: SD-Trans in a windowed ViT-B block over D = 8 slices (25 windows of 196
/// tokens, depth-grid bias on the 2 x 4 grid).
fn depth_attention(c: &mut Criterion) {
    let (depth, nw, p) = (8, GRID.div_ceil(WIN).pow(2), WIN * WIN);
    let qkv = random_tensor(&[depth * nw, p, 3 * C], 8);
    let table = random_tensor(&[7, HD], 9).scale(0.1);
    let rh = Cpu.rel_pos_table(2, 2, &table).unwrap();
    let rw = Cpu.rel_pos_table(4, 4, &table).unwrap();
    let flops = 4 * nw * p * HEADS * depth * depth * HD;
    let mut g = group(c, "depth_attention", 10, flops);
    g.bench_function("vit_b_window_d8", |bench| {
        bench.iter(|| {
            let rel = Some(RelPos { rh: &rh, rw: &rw });
            black_box(
                Cpu.depth_attention(&qkv, HEADS, depth, nw, DepthGrouping::PerWindow, rel, 0.125).unwrap(),
            )
        })
    });
    g.finish();
}

/// `layer_norm` over ViT-B tokens, `layer_norm2d` over the neck's channels.
fn layer_norm(c: &mut Criterion) {
    let x = random_tensor(&[GRID * GRID, C], 10);
    let (w, b) = (random_tensor(&[C], 11), random_tensor(&[C], 12));
    let mut g = group(c, "layer_norm", 20, x.numel());
    g.bench_function("vit_b_tokens_4096x768", |bench| {
        bench.iter(|| black_box(Cpu.layer_norm(&x, &w, &b, 1e-6).unwrap()))
    });
    g.finish();
    let x = random_tensor(&[1, 256, GRID, GRID], 13);
    let (w, b) = (random_tensor(&[256], 14), random_tensor(&[256], 15));
    let mut g = group(c, "layer_norm2d", 20, x.numel());
    g.bench_function("neck_256x64x64", |bench| {
        bench.iter(|| black_box(Cpu.layer_norm2d(&x, &w, &b, 1e-6).unwrap()))
    });
    g.finish();
}

/// `gelu` on ViT-B's MLP hidden layer, `softmax` over windowed-attention rows.
fn activations(c: &mut Criterion) {
    let x = random_tensor(&[GRID * GRID, 4 * C], 16);
    let mut g = group(c, "gelu", 20, x.numel());
    g.bench_function("vit_b_mlp_4096x3072", |bench| bench.iter(|| black_box(Cpu.gelu(x.clone()).unwrap())));
    g.finish();
    let rows = random_tensor(&[300 * 196, 196], 17).scale(4.0);
    let mut g = group(c, "softmax", 20, rows.numel());
    g.bench_function("window_rows_58800x196", |bench| {
        bench.iter(|| black_box(Cpu.softmax(rows.clone()).unwrap()))
    });
    g.finish();
}

/// `conv2d`: the patch embedding (16 x 16, stride 16) and the neck's 3 x 3 conv.
fn conv2d(c: &mut Criterion) {
    let x = random_tensor(&[1, 3, 1024, 1024], 18);
    let w = random_tensor(&[C, 3, 16, 16], 19).scale(0.05);
    let b = random_tensor(&[C], 20);
    let mut g = group(c, "conv2d", 10, 2 * GRID * GRID * C * 3 * 256);
    g.bench_function("patch_embed_1024_16x16", |bench| {
        bench.iter(|| black_box(Cpu.conv2d(&x, &w, Some(&b), Conv2d::new(16, 0)).unwrap()))
    });
    g.finish();
    let x = random_tensor(&[1, 256, GRID, GRID], 21);
    let w = random_tensor(&[256, 256, 3, 3], 22).scale(0.05);
    let mut g = group(c, "conv2d", 10, 2 * GRID * GRID * 256 * 256 * 9);
    g.bench_function("neck_3x3_256x64x64", |bench| {
        bench.iter(|| black_box(Cpu.conv2d(&x, &w, None, Conv2d::new(1, 1)).unwrap()))
    });
    g.finish();
}

/// `window_partition` / `window_unpartition` of ViT-B's 64 x 64 x 768 tokens into 14 x 14
/// windows (padded to 70 x 70).
fn window_partition(c: &mut Criterion) {
    let x = random_tensor(&[1, GRID, GRID, C], 23);
    let (parts, padded) = Cpu.window_partition(&x, WIN).unwrap();
    let mut g = group(c, "window_partition", 20, parts.numel());
    g.bench_function("vit_b_64x64x768_win14", |bench| {
        bench.iter(|| black_box(Cpu.window_partition(&x, WIN).unwrap()))
    });
    g.finish();
    let mut g = group(c, "window_unpartition", 20, x.numel());
    g.bench_function("vit_b_64x64x768_win14", |bench| {
        bench.iter(|| black_box(Cpu.window_unpartition(&parts, WIN, padded, (GRID, GRID)).unwrap()))
    });
    g.finish();
}

/// `upscale_masks`: the decoder's mask head on one prompt set (keys `[1, 4096, 256]` to four
/// 256 x 256 mask logits).
fn upscale_masks(c: &mut Criterion) {
    let keys = random_tensor(&[1, GRID * GRID, 256], 24);
    let (w0, b0) = (random_tensor(&[256, 64, 2, 2], 25).scale(0.1), random_tensor(&[64], 26));
    let (nw, nb) = (random_tensor(&[64], 27), random_tensor(&[64], 28));
    let (w1, b1) = (random_tensor(&[64, 32, 2, 2], 29).scale(0.1), random_tensor(&[32], 30));
    let up = Upscaling { conv0: (&w0, &b0), norm: (&nw, &nb, 1e-6), conv1: (&w1, &b1) };
    let hyper = random_tensor(&[1, 4, 32], 31);
    let mut g = group(c, "upscale_masks", 20, 4 * 256 * 256);
    g.bench_function("sam_decoder_1_set", |bench| {
        bench.iter(|| black_box(Cpu.upscale_masks(&keys, (GRID, GRID), &up, &hyper).unwrap()))
    });
    g.finish();
}

/// `hyper_chain`: HyP-Adpt's generated-weight chain at the shape the decoder runs it, 64 prompt
/// sets x 7 tokens x r = 32, 3 layers.
fn hyper_chain(c: &mut Criterion) {
    let x = random_tensor(&[64, 7, 32], 32);
    let w = random_tensor(&[64, 3, 32, 32], 33).scale(0.2);
    let gamma = Tensor::full(vec![3, 32], 1.0).unwrap();
    let beta = Tensor::zeros(vec![3, 32]).unwrap();
    let mut g = group(c, "hyper_chain", 20, 2 * 64 * 7 * 32 * 32 * 3);
    g.bench_function("64x7x32_3_layers", |bench| {
        bench.iter(|| black_box(Cpu.hyper_chain(&x, &w, &gamma, &beta, 1e-5).unwrap()))
    });
    g.finish();
}

/// `pe_encode` (the dense positional encoding of the 64 x 64 grid) and `resize` (the bicubic
/// position-embedding resample and the bilinear mask upsampling).
fn position_and_resize(c: &mut Criterion) {
    let coords = Tensor::from_fn(vec![GRID * GRID, 2], |i| ((i / 2) % GRID) as f32 / GRID as f32).unwrap();
    let gaussian = random_tensor(&[2, 128], 34);
    let mut g = group(c, "pe_encode", 20, GRID * GRID * 256);
    g.bench_function("dense_64x64x256", |bench| {
        bench.iter(|| black_box(Cpu.pe_encode(&coords, &gaussian).unwrap()))
    });
    g.finish();
    let masks = random_tensor(&[1, 4, 256, 256], 35);
    let mut g = group(c, "resize", 20, 4 * 1024 * 1024);
    g.bench_function("bilinear_masks_4x256_to_1024", |bench| {
        bench.iter(|| black_box(Cpu.resize(&masks, (1024, 1024), ResizeMode::Bilinear).unwrap()))
    });
    g.finish();
}

criterion_group!(
    benches,
    linear_and_matmul,
    attention,
    attention_backward,
    depth_attention,
    layer_norm,
    activations,
    conv2d,
    window_partition,
    upscale_masks,
    hyper_chain,
    position_and_resize
);
criterion_main!(benches);
