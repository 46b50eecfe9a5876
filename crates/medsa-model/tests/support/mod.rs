//! A tiny random Med-SA model for the volume tests and the RSS example.

use medsa_model::config::{
    Activation, DecoderConfig, DecoderVariant, EncoderAdapters, ModelConfig, Preprocess, VitConfig,
};
use medsa_model::{Encoder, Sam};

/// Med-SA at input side `img_size` (grid `img_size / 16`), width 16, two blocks (block 0
/// windowed with `window`, block 1 global), adapters of width 4, a 16-wide SAM decoder, SAM's
/// preprocessing.
#[allow(dead_code)]
pub fn tiny_medsa_config(img_size: usize, window: usize) -> ModelConfig {
    let vit = VitConfig {
        img_size,
        patch_size: 16,
        in_chans: 3,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_dim: 32,
        window_size: window,
        global_attn_indexes: vec![1],
        out_chans: 16,
        use_rel_pos: true,
        pos_embed_grid: Some(img_size / 16),
        ln_eps: 1e-6,
        neck_ln_eps: 1e-6,
        adapters: Some(EncoderAdapters {
            hidden: 4,
            act: Activation::Gelu,
            mlp_scale: 0.5,
            pad_before_norm: true,
        }),
    };
    let dec = DecoderConfig {
        transformer_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_dim: 32,
        downsample_rate: 2,
        num_mask_tokens: 4,
        iou_head_depth: 3,
        iou_head_hidden: 16,
        ln_eps: 1e-5,
        variant: DecoderVariant::Sam,
        hyp: None,
    };
    ModelConfig::assemble(vit, dec, Preprocess::sam())
}

/// Sets every relative-position table of the encoder to zero.
#[allow(dead_code)]
pub fn zero_rel_tables(model: &mut Sam) {
    let Encoder::Vit(enc) = &mut model.encoder else { panic!("not a ViT") };
    for b in &mut enc.blocks {
        if let Some((h, w)) = &mut b.attn.rel {
            h.data_mut().fill(0.0);
            w.data_mut().fill(0.0);
        }
    }
}

/// Sets element `idx` of parameter `name` of `model` to `value`; returns the old value.
#[allow(dead_code)]
pub fn set_param(model: &mut Sam, name: &str, idx: usize, value: f32) -> f32 {
    let mut old = f32::NAN;
    medsa_model::train::params::visit_trainable(model, &mut |n, w| {
        if n == name {
            old = std::mem::replace(&mut w.data_mut()[idx], value);
        }
        Ok(())
    })
    .expect("visiting parameters");
    old
}

/// Checks the backward's gradient `g` of parameter `name` against central differences of
/// `loss(model)`, at the element with the largest gradient and at `g.numel() / 3`: within 1 % of
/// the gradient's largest magnitude plus 1 % of the element's own.
#[allow(dead_code)]
pub fn check_fd(model: &mut Sam, name: &str, g: &medsa_core::Tensor, mut loss: impl FnMut(&Sam) -> f64) {
    let n = g.numel();
    let big = (0..n).max_by(|&a, &b| g.data()[a].abs().total_cmp(&g.data()[b].abs())).expect("non-empty");
    let scale = g.max_abs() as f64;
    for idx in [big, n / 3] {
        let w0 = set_param(model, name, idx, 0.0);
        let h = 1e-2f32.max(w0.abs() * 1e-2);
        set_param(model, name, idx, w0 + h);
        let lp = loss(model);
        set_param(model, name, idx, w0 - h);
        let lm = loss(model);
        set_param(model, name, idx, w0);
        let fd = (lp - lm) / (2.0 * h as f64);
        let an = g.data()[idx] as f64;
        assert!(
            (fd - an).abs() <= 0.01 * scale.max(1e-5) + 0.01 * an.abs(),
            "{name}[{idx}]: backward {an:e}, finite differences {fd:e} (max |g| {scale:e})"
        );
    }
}
