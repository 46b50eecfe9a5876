//! Fine-tuning benchmarks on the CPU, each against the forward it extends, measured in the same
//! run: one Med-SA ViT-B step at 1024x1024 (official set: encoder adapters + mask decoder, one
//! click, Dice + BCE, AdamW) with and without activation checkpointing, and one LiteMedSAM
//! decoder step on a cached image embedding (`decoder` set, one box) against the decoder's
//! forward.

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use medsa_benches::{keep_freed_memory, FineTuneStep, LiteDecoderStep};
use medsa_core::par::on_pool;
use medsa_model::train::decoder::decoder_forward;
use medsa_model::train::encoder::Checkpointing;
use medsa_model::train::optim::Optimizer;
use medsa_model::train::step::{apply, forward_backward, StepInput};
use medsa_ref::Cpu;
use std::hint::black_box;

// See benches/ops.rs: mimalloc reuses freed tensor memory instead of faulting it in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn vit_b_step(c: &mut Criterion) {
    keep_freed_memory();
    let mut s = FineTuneStep::medsa_vit_b().unwrap();
    let mut g = c.benchmark_group("train");
    g.sample_size(10);
    g.bench_function("medsa_vit_b_forward_1024_1_click", |b| b.iter(|| black_box(s.forward().unwrap())));
    g.bench_function("medsa_vit_b_step_official_1024", |b| {
        b.iter(|| black_box(s.step(Checkpointing::Off).unwrap()))
    });
    g.bench_function("medsa_vit_b_step_official_1024_checkpointed", |b| {
        b.iter(|| black_box(s.step(Checkpointing::PerBlock).unwrap()))
    });
    g.finish();
}

fn lite_decoder_step(c: &mut Criterion) {
    keep_freed_memory();
    let mut s = LiteDecoderStep::new().unwrap();
    let mut g = c.benchmark_group("train");
    g.sample_size(20);
    // Forward and step on the rayon pool, as `medsa train` runs its steps.
    g.bench_function("lite_decoder_forward_cached_embedding", |b| {
        b.iter(|| black_box(on_pool(|| s.forward()).unwrap()))
    });
    // The step's parts, to see where it goes beyond the forward: the forward that keeps the
    // tape, and the optimizer update alone.
    let emb_prompts = s.model.prompt.forward(&Cpu, &s.prompt).unwrap();
    g.bench_function("lite_decoder_forward_with_tape", |b| {
        b.iter(|| {
            black_box(
                decoder_forward(&Cpu, &s.model.decoder, &s.embedding, &s.dense_pe, &emb_prompts).unwrap().0,
            )
        })
    });
    let input = StepInput::Embeddings { embeddings: &s.embedding, dense_pe: &s.dense_pe };
    let grads = forward_backward(&Cpu, &s.model, input, &s.prompt, &s.target, s.config(), 0).unwrap().grads;
    let mut model2 = s.model.clone();
    let mut opt2 = Optimizer::new(Default::default());
    g.bench_function("lite_decoder_adamw_update", |b| {
        b.iter(|| apply(&mut model2, &mut opt2, &grads, 1e-4, 0).unwrap())
    });
    g.bench_function("lite_decoder_step_cached_embedding", |b| {
        b.iter(|| black_box(on_pool(|| s.step()).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, lite_decoder_step, vit_b_step);
criterion_main!(benches);
