//! Training: the golden training cases, activation checkpointing, trainable sets, the
//! explicit backward against finite differences of the whole model, and bad input.

#![allow(clippy::unwrap_used)]

mod support;

use medsa_core::{DepthGrouping, Tensor};
use medsa_model::config::{DecoderVariant, DepthSettings};
use medsa_model::golden::default_dir;
use medsa_model::prompt::PromptBatch;
use medsa_model::train::encoder::Checkpointing;
use medsa_model::train::loss::LossConfig;
use medsa_model::train::optim::Optimizer;
use medsa_model::train::params::{glob_match, trainable_shapes, visit_trainable, Trainable, TrainableRule};
use medsa_model::train::step::{apply, forward_backward, StepConfig, StepInput};
use medsa_model::{Error, Sam};
use medsa_ref::Cpu;
use support::{check_fd, tiny_medsa_config};

#[test]
fn golden_training_cases_pass() {
    let Some(dir) = default_dir() else {
        if std::env::var_os("CI").is_some() {
            panic!("CI must have ../shared/golden beside the clone");
        }
        eprintln!("skipped: no golden folder");
        return;
    };
    let cases = medsa_model::train::golden::list_cases(&dir).unwrap();
    assert!(!cases.is_empty(), "no training case listed");
    let mut failures = Vec::new();
    for name in &cases {
        let r = medsa_model::train::golden::run_case(&dir, name, &Cpu);
        if let Some(e) = &r.error {
            failures.push(format!("{name}: {e}"));
        }
        failures
            .extend(r.checks.iter().filter(|c| !c.pass).map(|c| format!("{name}: {} {:?}", c.name, c.note)));
        assert!(r.checks.len() > 50, "{name}: only {} tensors compared", r.checks.len());
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Two volumes of D = 2 slices at 48x48 (grid 3, window 2: padded windows), one click per slice.
fn tiny_3d() -> (Sam, Tensor, PromptBatch, Tensor, DepthSettings) {
    let model = Sam::random(&tiny_medsa_config(48, 2), 7).unwrap();
    let x = Tensor::from_fn(vec![4, 3, 48, 48], |i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).unwrap();
    let prompts = PromptBatch {
        coords: Some(Tensor::new(vec![4, 1, 2], vec![10.0, 12.0, 30.0, 8.0, 20.0, 40.0, 5.0, 5.0]).unwrap()),
        labels: vec![1, 1, 1, 0],
        ..Default::default()
    };
    let target = Tensor::from_fn(vec![4, 1, 12, 12], |i| f32::from(i % 12 < 6)).unwrap();
    (model, x, prompts, target, DepthSettings { depth: 2, grouping: DepthGrouping::PerWindow })
}

fn step_cfg<'a>(loss: &'a LossConfig, tr: &'a Trainable, ck: Checkpointing) -> StepConfig<'a> {
    StepConfig { loss, trainable: tr, mask_index: 0, checkpointing: ck, every_block: true }
}

#[test]
fn checkpointing_and_early_stop_give_the_same_gradients_bit_for_bit() {
    let (mut model, x, p, t, depth) = tiny_3d();
    let tr = Trainable::select(&TrainableRule::Official, &trainable_shapes(&mut model).unwrap()).unwrap();
    let loss = LossConfig::default();
    let run = |ck, every_block| {
        let cfg = StepConfig { every_block, ..step_cfg(&loss, &tr, ck) };
        forward_backward(&Cpu, &model, StepInput::Images(&x, Some(depth)), &p, &t, cfg, 0)
    };
    // Also: the backward that stops inside the lowest trainable block gives the same gradients
    // as the one that goes all the way down for the block-output gradients.
    let (a, b) = (run(Checkpointing::Off, true).unwrap(), run(Checkpointing::PerBlock, false).unwrap());
    assert!(b.d_blocks.iter().all(Option::is_none));
    assert_eq!(a.loss, b.loss);
    assert!(a.grads.len() > 20);
    for (n, g) in a.grads.iter() {
        assert_eq!(g.data(), b.grads.get(n).unwrap().data(), "{n}");
    }
    assert!(a.grads.get("image_encoder.blocks.0.Depth_Adapter.D_fc1.weight").is_some(), "SD-Trans trains");
}

/// The whole model's backward (encoder with SD-Trans, both decoder variants) against central
/// differences of the loss, one element of several parameters across the network.
#[test]
fn model_gradients_match_finite_differences() {
    for variant in [DecoderVariant::Sam, DecoderVariant::MedsaOfficial] {
        let (mut model, x, p, t, depth) = tiny_3d();
        model.decoder.cfg.variant = variant;
        let shapes = trainable_shapes(&mut model).unwrap();
        let all = Trainable::from_names(shapes.iter().map(|(n, _)| n.clone()));
        let loss = LossConfig::default();
        let r = forward_backward(
            &Cpu,
            &model,
            StepInput::Images(&x, Some(depth)),
            &p,
            &t,
            step_cfg(&loss, &all, Checkpointing::Off),
            0,
        )
        .unwrap();
        let names = [
            "image_encoder.blocks.0.norm1.weight",
            "image_encoder.blocks.0.attn.qkv.weight",
            "image_encoder.blocks.0.Depth_Adapter.D_fc2.weight",
            "image_encoder.blocks.1.Space_Adapter.D_fc1.bias",
            "image_encoder.blocks.1.mlp.lin1.weight",
            "mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
            "mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj.weight",
            "mask_decoder.transformer.layers.1.cross_attn_token_to_image.v_proj.bias",
            "mask_decoder.transformer.final_attn_token_to_image.q_proj.weight",
            "mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj.bias",
            "mask_decoder.iou_token.weight",
            "mask_decoder.mask_tokens.weight",
            "mask_decoder.output_upscaling.1.weight",
            "mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
        ];
        let none = Trainable::none();
        let loss_of = |m: &Sam| {
            let cfg = step_cfg(&loss, &none, Checkpointing::Off);
            forward_backward(&Cpu, m, StepInput::Images(&x, Some(depth)), &p, &t, cfg, 0).unwrap().loss
        };
        for name in names {
            let g = r.grads.get(name).unwrap_or_else(|| panic!("{variant:?} {name}: no gradient"));
            check_fd(&mut model, name, g, loss_of);
        }
    }
}

#[test]
fn trainable_rules_select_by_name() {
    let mut model = Sam::random(&tiny_medsa_config(48, 2), 1).unwrap();
    let shapes = trainable_shapes(&mut model).unwrap();
    let sel = |r: &str| Trainable::select(&r.parse().unwrap(), &shapes);
    let paper = sel("paper").unwrap();
    assert!(paper.names().all(|n| n.contains("Adapter")) && paper.len() == 2 * 3 * 4);
    let dec = sel("decoder").unwrap();
    assert!(dec.names().all(|n| n.starts_with("mask_decoder.")));
    let off = sel("official").unwrap();
    assert_eq!(off.len(), paper.len() + dec.len());
    let globs = sel("*.norm1.*,mask_decoder.iou_token.weight").unwrap();
    assert_eq!(globs.len(), 2 * 2 + 2 * 2 + 1, "{:?}", globs.names().collect::<Vec<_>>());
    match sel("image_encoder.*.no_such_layer.*") {
        Err(Error::NoTrainableMatch { pattern }) => assert_eq!(pattern, "image_encoder.*.no_such_layer.*"),
        other => panic!("{other:?}"),
    }
    assert!(glob_match("a*b?d", "aXXbcd") && !glob_match("a*b?d", "abd") && glob_match("*", ""));
}

#[test]
fn a_nan_loss_or_gradient_is_a_typed_error_and_changes_nothing() {
    let (mut model, x, p, t, depth) = tiny_3d();
    let tr = Trainable::select(&TrainableRule::Paper, &trainable_shapes(&mut model).unwrap()).unwrap();
    let loss = LossConfig::default();
    let input = StepInput::Images(&x, Some(depth));
    // A NaN weight upstream of the loss.
    let mut broken = model.clone();
    visit_trainable(&mut broken, &mut |n, w| {
        if n == "mask_decoder.output_upscaling.0.bias" {
            w.data_mut()[0] = f32::NAN;
        }
        Ok(())
    })
    .unwrap();
    match forward_backward(&Cpu, &broken, input, &p, &t, step_cfg(&loss, &tr, Checkpointing::Off), 3) {
        Err(Error::NonFinite { what, step: 3 }) => assert_eq!(what, "loss"),
        other => panic!("{other:?}"),
    }
    // A NaN gradient: nothing is updated.
    let mut r =
        forward_backward(&Cpu, &model, input, &p, &t, step_cfg(&loss, &tr, Checkpointing::Off), 0).unwrap();
    let name = r.grads.iter().map(|(n, _)| n.clone()).last().unwrap();
    r.grads.iter_mut().find(|(n, _)| **n == name).unwrap().1.data_mut()[0] = f32::INFINITY;
    let before = model.clone();
    let mut opt = Optimizer::new(Default::default());
    match apply(&mut model, &mut opt, &r.grads, 1e-3, 0) {
        Err(Error::NonFinite { what, .. }) => assert_eq!(what, format!("gradient of {name}")),
        other => panic!("{other:?}"),
    }
    let mut changed = 0;
    let mut b = before;
    let mut old = Vec::new();
    visit_trainable(&mut b, &mut |_, w| {
        old.push(w.clone());
        Ok(())
    })
    .unwrap();
    let mut i = 0;
    visit_trainable(&mut model, &mut |_, w| {
        changed += usize::from(w.data() != old[i].data());
        i += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(changed, 0);
}

#[test]
fn training_lowers_the_loss() {
    let (mut model, x, p, t, depth) = tiny_3d();
    let tr = Trainable::select(&TrainableRule::Official, &trainable_shapes(&mut model).unwrap()).unwrap();
    let loss = LossConfig::default();
    let mut opt = Optimizer::new(Default::default());
    let mut losses = Vec::new();
    for step in 0..8 {
        let r = forward_backward(
            &Cpu,
            &model,
            StepInput::Images(&x, Some(depth)),
            &p,
            &t,
            step_cfg(&loss, &tr, Checkpointing::Off),
            step,
        )
        .unwrap();
        losses.push(r.loss);
        apply(&mut model, &mut opt, &r.grads, 1e-2, step).unwrap();
    }
    // A random model learns slowly, but every AdamW step must go downhill; a wrong sign or a
    // gradient of the wrong tensor goes up or stalls.
    assert!(losses.windows(2).all(|w| w[1] < w[0]) && losses[7] < 0.99 * losses[0], "{losses:?}");
}
