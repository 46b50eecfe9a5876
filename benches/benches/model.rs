//! Model-stage benchmarks on the CPU at ViT-B sizes with random weights: the image encoder at
//! 1024x1024, the prompt encoder + decoder for one point, and the paper decoder (HyP-Adpt) with
//! 64 prompt sets on one embedding, with its hyper-weight chain timed alone.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use criterion::{criterion_group, criterion_main, Criterion};
use medsa_benches::random_image;
use medsa_core::Tensor;
use medsa_model::config::{Activation, HypConfig, ModelConfig, VitSize};
use medsa_model::nn::Trace;
use medsa_model::prompt::PromptBatch;
use medsa_ref::Cpu;
use medsa_testkit::random_tensor;
use std::hint::black_box;

// See benches/ops.rs: mimalloc reuses freed tensor memory instead of faulting it in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn one_point(sets: usize) -> PromptBatch {
    let coords: Vec<f32> =
        (0..sets).flat_map(|i| [100.0 + 13.0 * i as f32, 500.0 - 7.0 * i as f32]).collect();
    PromptBatch {
        coords: Some(Tensor::new(vec![sets, 1, 2], coords).unwrap()),
        labels: vec![1; sets],
        ..Default::default()
    }
}

fn encoder(c: &mut Criterion) {
    let model = medsa_model::Sam::random(&ModelConfig::sam(VitSize::B), 1).unwrap();
    let x = random_image(1024);
    let mut g = c.benchmark_group("model");
    g.sample_size(10);
    g.bench_function("sam_vit_b_encoder_1024", |b| {
        b.iter(|| black_box(model.embed(&Cpu, &x, None, &mut Trace::disabled()).unwrap()))
    });
    g.finish();
}

fn decoder(c: &mut Criterion) {
    let model = medsa_model::Sam::random(&ModelConfig::sam(VitSize::B), 1).unwrap();
    let emb = random_tensor(&[1, 256, 64, 64], 5);
    let pe = model.prompt.dense_pe(&Cpu).unwrap();
    let p = one_point(1);
    let mut g = c.benchmark_group("model");
    g.sample_size(30);
    // What `Predictor::predict` runs per prompt: the image side is prepared at `set_image`.
    let image = model.prepare_image(&Cpu, &emb, &pe).unwrap();
    g.bench_function("sam_prompt_and_decoder_1_point", |b| {
        b.iter(|| black_box(model.decode_prepared(&Cpu, &image, &p, &mut Trace::disabled()).unwrap()))
    });
    // A one-off `Sam::decode` call: layouts prepared per call, no cached first block.
    g.bench_function("sam_prompt_and_decoder_1_point_unprepared", |b| {
        b.iter(|| black_box(model.decode(&Cpu, &emb, &pe, &p, &mut Trace::disabled()).unwrap()))
    });
    g.finish();
}

fn hyp_decoder(c: &mut Criterion) {
    let hyp = HypConfig {
        r: 32,
        n_layers: 3,
        gen_hidden: 256,
        norm_eps: 1e-5,
        adapter_hidden: 64,
        mlp_scale: 0.5,
        act: Activation::Gelu,
    };
    let model = medsa_model::Sam::random(&ModelConfig::medsa(VitSize::B, 1024, Some(hyp)), 1).unwrap();
    let emb = random_tensor(&[1, 256, 64, 64], 5);
    let pe = model.prompt.dense_pe(&Cpu).unwrap();
    let sets = 64;
    let p = one_point(sets);
    let image = model.prepare_image(&Cpu, &emb, &pe).unwrap();
    let mut g = c.benchmark_group("model");
    g.sample_size(10);
    g.bench_function("hyp_decoder_64_sets", |b| {
        b.iter(|| black_box(model.decode_prepared(&Cpu, &image, &p, &mut Trace::disabled()).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, decoder, hyp_decoder, encoder);
criterion_main!(benches);
