//! A tiny random Med-SA model for the volume tests and the RSS example.

use medsa_model::config::{
    Activation, DecoderConfig, DecoderVariant, EncoderAdapters, ModelConfig, Preprocess, VitConfig,
};
use medsa_model::decoder::MaskDecoder;
use medsa_model::prompt::PromptEncoder;
use medsa_model::weights::{InitPolicy, TensorMap, WeightLoader};
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

/// `cfg` with seeded random weights for every tensor (rel-pos tables included).
pub fn random_model(cfg: &ModelConfig, seed: u64) -> Sam {
    let mut wl = WeightLoader::new(TensorMap::new());
    wl.allow_init(InitPolicy::Random { seed });
    let encoder = Encoder::load(&mut wl, &cfg.encoder).expect("encoder");
    let prompt = PromptEncoder::load(&mut wl, &cfg.prompt);
    let decoder = MaskDecoder::load(&mut wl, &cfg.decoder).expect("decoder");
    wl.finish().expect("every tensor initialised");
    Sam { cfg: cfg.clone(), encoder, prompt, decoder }
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
