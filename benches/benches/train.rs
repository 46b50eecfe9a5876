//! Fine-tuning benchmarks on the CPU, each against the forward it extends, measured in the same
//! run: one Med-SA ViT-B step at 1024x1024 (official set: encoder adapters + mask decoder, one
//! click, Dice + BCE, AdamW) with and without activation checkpointing, and one LiteMedSAM
//! decoder step on a cached image embedding (`decoder` set, one box) against the decoder's
//! forward.

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use medsa_benches::{keep_freed_memory, FineTuneStep};
use medsa_core::Tensor;
use medsa_model::config::ModelConfig;
use medsa_model::nn::Trace;
use medsa_model::prompt::PromptBatch;
use medsa_model::train::decoder::decoder_forward;
use medsa_model::train::encoder::Checkpointing;
use medsa_model::train::optim::Optimizer;
use medsa_model::train::params::{trainable_shapes, Trainable, TrainableRule};
use medsa_model::train::step::{apply, forward_backward, StepConfig, StepInput};
use medsa_ref::Cpu;
use medsa_testkit::random_tensor;
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
    let mut model = medsa_model::Sam::random(&ModelConfig::lite_medsam(), 1).unwrap();
    let trainable =
        Trainable::select(&TrainableRule::Decoder, &trainable_shapes(&mut model).unwrap()).unwrap();
    let emb = random_tensor(&[1, 256, 64, 64], 5);
    let pe = model.prompt.dense_pe(&Cpu).unwrap();
    let p = PromptBatch {
        boxes: Some(Tensor::new(vec![1, 4], vec![60.0, 70.0, 150.0, 190.0]).unwrap()),
        ..Default::default()
    };
    let target =
        Tensor::from_fn(vec![1, 1, 256, 256], |i| f32::from(((i / 256) as i32 - 128).abs() < 50)).unwrap();
    let loss = Default::default();
    let mut opt = Optimizer::new(Default::default());
    let mut g = c.benchmark_group("train");
    g.sample_size(20);
    g.bench_function("lite_decoder_forward_cached_embedding", |b| {
        b.iter(|| black_box(model.decode(&Cpu, &emb, &pe, &p, &mut Trace::disabled()).unwrap()))
    });
    // The step's parts, to see where it goes beyond the forward: the forward that keeps the
    // tape, and the optimizer update alone.
    let emb_prompts = model.prompt.forward(&Cpu, &p).unwrap();
    g.bench_function("lite_decoder_forward_with_tape", |b| {
        b.iter(|| black_box(decoder_forward(&Cpu, &model.decoder, &emb, &pe, &emb_prompts).unwrap().0))
    });
    let cfg = StepConfig {
        loss: &loss,
        trainable: &trainable,
        mask_index: 0,
        checkpointing: Checkpointing::Off,
        every_block: false,
    };
    let input = StepInput::Embeddings { embeddings: &emb, dense_pe: &pe };
    let grads = forward_backward(&Cpu, &model, input, &p, &target, cfg, 0).unwrap().grads;
    let mut model2 = model.clone();
    let mut opt2 = Optimizer::new(Default::default());
    g.bench_function("lite_decoder_adamw_update", |b| {
        b.iter(|| apply(&mut model2, &mut opt2, &grads, 1e-4, 0).unwrap())
    });
    g.bench_function("lite_decoder_step_cached_embedding", |b| {
        b.iter(|| {
            let r = forward_backward(&Cpu, &model, input, &p, &target, cfg, 0).unwrap();
            apply(&mut model, &mut opt, &r.grads, 1e-4, 0).unwrap();
            black_box(r.loss)
        })
    });
    g.finish();
}

criterion_group!(benches, lite_decoder_step, vit_b_step);
criterion_main!(benches);
