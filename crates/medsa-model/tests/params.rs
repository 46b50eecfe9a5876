//! Parameter accounting against the counts of spec 7.4, which were verified by instantiating the
//! official PyTorch modules.

#![allow(clippy::unwrap_used)]

use medsa_model::config::{Activation, HypConfig, ModelConfig, VitSize};
use medsa_model::params::count;

#[test]
fn sam_and_medsa_counts_match_the_official_modules() {
    // (size, SAM total, Med-SA total with 3 adapters per block, encoder adapters)
    let table = [
        (VitSize::B, 93_735_472, 104_386_864, 10_651_392),
        (VitSize::L, 312_342_832, 350_183_728, 37_840_896),
        (VitSize::H, 641_090_608, 719_887_408, 78_796_800),
    ];
    for (size, sam_total, medsa_total, enc_adapters) in table {
        let sam = count(&ModelConfig::sam(size)).unwrap();
        assert_eq!(sam.total().total, sam_total, "{size:?} SAM");
        assert_eq!(sam.total().adapters, 0);
        assert_eq!(sam.mask_decoder.total, 4_058_340);
        assert_eq!(sam.prompt_encoder.total, 6_220);
        let medsa = count(&ModelConfig::medsa(size, 1024, None)).unwrap();
        assert_eq!(medsa.total().total, medsa_total, "{size:?} Med-SA");
        assert_eq!(medsa.image_encoder.adapters, enc_adapters, "{size:?} adapters");
        // Two adapters per block without the depth branch (2D training).
        assert_eq!(enc_adapters - medsa.depth_adapters, enc_adapters / 3 * 2);
    }
}

#[test]
fn hyp_decoder_adapters_match_spec_12_5() {
    let hyp = HypConfig {
        r: 32,
        n_layers: 3,
        gen_hidden: 256,
        norm_eps: 1e-5,
        adapter_hidden: 64,
        mlp_scale: 0.5,
        act: Activation::Gelu,
    };
    let r = count(&ModelConfig::medsa(VitSize::B, 1024, Some(hyp))).unwrap();
    // Per layer: HyP (256·32+32 + 32·256+256 + 256·256+256 + 3072·256+3072 + 3·2·32)
    // + MLP_Adapter and Image_Adapter (2 × (256·64+64 + 64·256+256)).
    let hyp_layer = (256 * 32 + 32) + (32 * 256 + 256) + (256 * 256 + 256) + (3072 * 256 + 3072) + 3 * 64;
    let adapters_layer = 2 * ((256 * 64 + 64) + (64 * 256 + 256));
    assert_eq!(r.mask_decoder.adapters, 2 * (hyp_layer + adapters_layer));
    assert_eq!(r.mask_decoder.total, 4_058_340 + r.mask_decoder.adapters);
}
