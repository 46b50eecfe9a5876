//! Med-SA adapters inside LiteMedSAM's TinyViT: a fresh adapter changes nothing (bit for bit,
//! on the real weights), and the TinyViT backward matches finite differences of the loss.

#![allow(clippy::unwrap_used)]

mod support;

use medsa_core::Tensor;
use medsa_model::config::{DecoderConfig, ModelConfig, Preprocess};
use medsa_model::config::{TinyVitAdapters, TinyVitConfig};
use medsa_model::nn::Trace;
use medsa_model::prompt::PromptBatch;
use medsa_model::train::encoder::Checkpointing;
use medsa_model::train::loss::LossConfig;
use medsa_model::train::params::{trainable_shapes, Trainable, TrainableRule};
use medsa_model::train::step::{forward_backward, StepConfig, StepInput};
use medsa_model::weights::InitPolicy;
use medsa_model::{lite, LoadOptions, Sam};
use medsa_ref::Cpu;

#[test]
fn fresh_tiny_vit_adapters_change_nothing_bit_for_bit() {
    let path = match lite::find_weights() {
        Ok(p) => p,
        Err(e) if std::env::var_os("CI").is_none() => return eprintln!("skipped: {e}"),
        Err(e) => panic!("CI must have the LiteMedSAM weights: {e}"),
    };
    let tensors = lite::read_weights(&path).unwrap();
    let base_cfg = ModelConfig::lite_medsam();
    let base = Sam::from_tensors(&base_cfg, tensors.clone(), LoadOptions::default()).unwrap().model;
    let mut cfg = base_cfg.clone();
    if let medsa_model::config::EncoderConfig::TinyVit(t) = &mut cfg.encoder {
        t.adapters = Some(TinyVitAdapters::default());
    }
    let loaded =
        Sam::from_tensors(&cfg, tensors, LoadOptions { init: Some(InitPolicy::Training { seed: 3 }) })
            .unwrap();
    // Two adapters of two linear layers (weight, bias) in each of the 10 attention blocks.
    assert_eq!(loaded.initialised.len(), 10 * 2 * 4, "{:?}", loaded.initialised);
    assert!(loaded.initialised.iter().all(|n| n.contains("_Adapter.D_fc")));
    let x = Tensor::from_fn(vec![1, 3, 256, 256], |i| ((i * 7919) % 255) as f32 / 255.0).unwrap();
    let a = base.embed(&Cpu, &x, None, &mut Trace::disabled()).unwrap();
    let b = loaded.model.embed(&Cpu, &x, None, &mut Trace::disabled()).unwrap();
    assert_eq!(a.data(), b.data());
}

/// A TinyViT of LiteMedSAM's structure at toy sizes: 64x64 input, widths 8/16/16/24, windows 7
/// (padded), grid 8, with adapters; a 16-wide SAM decoder.
fn tiny_lite() -> ModelConfig {
    let t = TinyVitConfig {
        img_size: 64,
        embed_dims: vec![8, 16, 16, 24],
        merge_strides: vec![2, 2, 2],
        depths: vec![1, 1, 2, 1],
        num_heads: vec![1, 2, 2, 3],
        window_sizes: vec![7, 7, 7, 7],
        out_chans: 16,
        adapters: Some(TinyVitAdapters::default()),
        ..TinyVitConfig::lite_medsam()
    };
    let dec = DecoderConfig {
        transformer_dim: 16,
        num_heads: 2,
        mlp_dim: 32,
        iou_head_hidden: 16,
        ..DecoderConfig::sam()
    };
    ModelConfig::assemble(t, dec, Preprocess::LiteMedsamOfficial)
}

#[test]
fn tiny_vit_gradients_match_finite_differences() {
    let mut model = medsa_model::Sam::random(&tiny_lite(), 11).unwrap();
    let shapes = trainable_shapes(&mut model).unwrap();
    let tr = Trainable::select(&TrainableRule::Paper, &shapes).unwrap();
    assert!(tr.names().any(|n| n.starts_with("image_encoder.layers.1.")), "TinyViT adapters train");
    let all = Trainable::from_names(shapes.iter().map(|(n, _)| n.clone()));
    let x = Tensor::from_fn(vec![1, 3, 64, 64], |i| ((i * 31) % 97) as f32 / 97.0).unwrap();
    let p = PromptBatch {
        boxes: Some(Tensor::new(vec![1, 4], vec![10.0, 12.0, 40.0, 50.0]).unwrap()),
        ..Default::default()
    };
    let t = Tensor::from_fn(vec![1, 1, 32, 32], |i| f32::from((i / 32) % 32 > 10)).unwrap();
    let loss = LossConfig::default();
    fn cfg<'a>(loss: &'a LossConfig, tr: &'a Trainable) -> StepConfig<'a> {
        StepConfig {
            loss,
            trainable: tr,
            mask_index: 0,
            checkpointing: Checkpointing::Off,
            every_block: false,
        }
    }
    let r = forward_backward(&Cpu, &model, StepInput::Images(&x, None), &p, &t, cfg(&loss, &all), 0).unwrap();
    let none = Trainable::none();
    let loss_of = |m: &Sam| {
        forward_backward(&Cpu, m, StepInput::Images(&x, None), &p, &t, cfg(&loss, &none), 0).unwrap().loss
    };
    for name in [
        "image_encoder.layers.1.blocks.0.Space_Adapter.D_fc1.weight",
        "image_encoder.layers.1.blocks.0.MLP_Adapter.D_fc2.bias",
        "image_encoder.layers.1.blocks.0.attn.norm.weight",
        "image_encoder.layers.2.blocks.1.attn.qkv.weight",
        "image_encoder.layers.2.blocks.0.mlp.norm.bias",
        "image_encoder.layers.3.blocks.0.Space_Adapter.D_fc2.weight",
        "image_encoder.layers.3.blocks.0.mlp.fc1.weight",
    ] {
        let g = r.grads.get(name).unwrap_or_else(|| panic!("{name}: no gradient"));
        support::check_fd(&mut model, name, g, loss_of);
    }
}
