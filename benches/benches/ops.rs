//! Op benchmarks of the CPU reference. Throughput is reported in elements/s where one element is
//! one FLOP, so criterion's `Gelem/s` reads as GFLOP/s.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use medsa_benches::GlobalAttention;
use medsa_testkit::random_tensor;
use medsa_core::Backend;
use medsa_ref::Cpu;
use std::hint::black_box;

// The binaries (medsa, benches) use mimalloc: glibc maps every large tensor fresh, so each op
// would page-fault its whole output in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn gemm_vit_b_mlp(c: &mut Criterion) {
    // ViT-B MLP lin1 at 1024x1024: [4096 tokens, 768] · [768, 3072], as the model runs it
    // (`linear` with the [out, in] weight), and as a plain row-major matmul.
    let (m, k, n) = (4096, 768, 3072);
    let a = random_tensor(&[m, k], 1);
    let b = random_tensor(&[k, n], 2);
    let w = random_tensor(&[n, k], 3);
    let mut g = c.benchmark_group("cpu");
    g.sample_size(20);
    g.throughput(Throughput::Elements((2 * m * k * n) as u64));
    g.bench_function("gemm_4096x768x3072", |bench| {
        bench.iter(|| black_box(Cpu.linear(&a, &w, None).unwrap()))
    });
    g.bench_function("matmul_rowmajor_4096x768x3072", |bench| {
        bench.iter(|| black_box(Cpu.matmul(&a, &b).unwrap()))
    });
    g.finish();
}

fn global_attention(c: &mut Criterion) {
    let p = GlobalAttention::new(&Cpu).unwrap();
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10);
    g.throughput(Throughput::Elements(GlobalAttention::flops() as u64));
    g.bench_function("global_attention_12x4096x64_relpos", |bench| {
        bench.iter(|| black_box(p.run(&Cpu).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, gemm_vit_b_mlp, global_attention);
criterion_main!(benches);
