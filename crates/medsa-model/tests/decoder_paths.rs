//! The decoder's fast paths against its literal ones, on random weights of awkward sizes:
//! the three evaluation orders of [`DecoderAttention`], and the channels-last mask head against
//! the spec's ConvTranspose2d / LayerNorm2d version. Also which attention path SAM's shapes take.

#![allow(clippy::unwrap_used)]

use medsa_core::Tensor;
use medsa_model::config::DecoderConfig;
use medsa_model::decoder::{AttentionPath, DecoderAttention, ImageContext, MaskDecoder};
use medsa_model::nn::Linear;
use medsa_model::weights::{InitPolicy, TensorMap, WeightLoader};
use medsa_ref::Cpu;
use medsa_testkit::{random_tensor, rel_diff};

fn linear(inp: usize, out: usize, bias: bool, seed: u64) -> Linear {
    Linear {
        w: random_tensor(&[out, inp], seed).scale(0.5),
        b: bias.then(|| random_tensor(&[out], seed + 1)),
    }
}

fn attention(d: usize, inner: usize, heads: usize, bias: bool, seed: u64) -> DecoderAttention {
    DecoderAttention {
        q: linear(d, inner, bias, seed),
        k: linear(d, inner, bias, seed + 10),
        v: linear(d, inner, bias, seed + 20),
        out: linear(inner, d, bias, seed + 30),
        num_heads: heads,
    }
}

/// Largest absolute difference relative to the largest absolute value of `reference`.

#[test]
fn attention_paths_agree() {
    // (sets, queries, keys, width, inner width, heads, biases)
    for (i, &(b, nq, nk, d, inner, heads, bias)) in [
        (2, 5, 37, 24, 12, 3, true),
        (1, 9, 3, 20, 20, 5, true),
        (3, 1, 50, 16, 8, 2, false),
        (1, 13, 13, 18, 6, 1, true),
        (2, 40, 2, 12, 12, 4, true),
    ]
    .iter()
    .enumerate()
    {
        let seed = 100 * i as u64;
        let att = attention(d, inner, heads, bias, seed);
        let q = random_tensor(&[b, nq, d], seed + 1);
        let k = random_tensor(&[b, nk, d], seed + 2);
        let v = random_tensor(&[b, nk, d], seed + 3);
        let direct = att.forward_with(&Cpu, &q, &k, &v, AttentionPath::Direct).unwrap();
        assert_eq!(direct.shape(), &[b, nq, d]);
        for path in [AttentionPath::FewQueries, AttentionPath::FewKeys] {
            let fast = att.forward_with(&Cpu, &q, &k, &v, path).unwrap();
            let e = rel_diff(&fast, &direct);
            assert!(e < 2e-5, "case {i} {path:?}: relative difference {e:e}");
        }
        let chosen = att.forward(&Cpu, &q, &k, &v).unwrap();
        assert!(rel_diff(&chosen, &direct) < 2e-5, "case {i}: the chosen path");
    }
}

#[test]
fn attention_rejects_mismatched_operands() {
    let att = attention(8, 8, 2, true, 1);
    let q = random_tensor(&[2, 3, 8], 2);
    let k = random_tensor(&[2, 5, 8], 3);
    let v_wrong = random_tensor(&[2, 4, 8], 4);
    for path in [AttentionPath::Direct, AttentionPath::FewQueries, AttentionPath::FewKeys] {
        assert!(att.forward_with(&Cpu, &q, &k, &v_wrong, path).is_err(), "{path:?}");
        assert!(att.forward_with(&Cpu, &random_tensor(&[1, 3, 8], 5), &k, &k, path).is_err(), "{path:?}");
    }
    let no_heads = DecoderAttention { num_heads: 0, ..att.clone() };
    assert!(no_heads.forward(&Cpu, &q, &k, &k).is_err());
    let uneven = DecoderAttention { num_heads: 3, ..att };
    assert!(uneven.forward(&Cpu, &q, &k, &k).is_err());
}

#[test]
fn sam_shapes_take_the_cheap_paths() {
    let att = attention(256, 128, 8, true, 7);
    // One point: 1 IoU + 4 mask + 2 point tokens against 64 x 64 image tokens.
    assert_eq!(att.path(7, 4096), AttentionPath::FewQueries);
    assert_eq!(att.path(4096, 7), AttentionPath::FewKeys);
    // Token self-attention (no downsampling) stays direct.
    let self_attn = attention(256, 256, 8, true, 8);
    assert_eq!(self_attn.path(7, 7), AttentionPath::Direct);
    // Many prompt tokens make the factored forms dearer than projecting the image.
    assert_eq!(att.path(40, 4096), AttentionPath::Direct);
    assert_eq!(att.path(4096, 40), AttentionPath::Direct);
}

fn random_decoder(d: usize, seed: u64) -> MaskDecoder {
    let cfg = DecoderConfig {
        transformer_dim: d,
        num_heads: 2,
        mlp_dim: 2 * d,
        iou_head_hidden: d,
        ..DecoderConfig::sam()
    };
    let mut wl = WeightLoader::new(TensorMap::new());
    wl.allow_init(InitPolicy::Random { seed });
    let dec = MaskDecoder::load(&mut wl, &cfg).unwrap();
    wl.finish().unwrap();
    dec
}

#[test]
fn channels_last_mask_head_matches_the_literal_one() {
    for (i, &(b, gh, gw, d)) in [(1, 4, 4, 16), (2, 3, 5, 32), (1, 7, 2, 8)].iter().enumerate() {
        let dec = random_decoder(d, 40 + i as u64);
        let keys = random_tensor(&[b, gh * gw, d], 50 + i as u64);
        let hyper = random_tensor(&[b, 4, d / 8], 60 + i as u64);
        let fast = dec.masks(&Cpu, &keys, (gh, gw), &hyper).unwrap();
        let literal = dec.masks_reference(&Cpu, &keys, (gh, gw), &hyper).unwrap();
        assert_eq!(fast.shape(), &[b, 4, 4 * gh, 4 * gw]);
        let e = rel_diff(&fast, &literal);
        assert!(e < 2e-5, "{b}x{gh}x{gw}x{d}: relative difference {e:e}");
    }
}

/// A small random SAM (2-layer decoder) through its public API.
fn random_sam(variant: medsa_model::config::DecoderVariant, hyp: bool) -> medsa_model::Sam {
    use medsa_model::config::{Activation, HypConfig, ModelConfig, VitSize};
    let mut cfg = ModelConfig::sam(VitSize::B);
    let medsa_model::config::EncoderConfig::Vit(enc) = &mut cfg.encoder else { unreachable!() };
    // A one-block encoder keeps the random model small; only the decoder runs here.
    enc.depth = 1;
    enc.global_attn_indexes = vec![0];
    cfg.decoder.variant = variant;
    cfg.decoder.hyp = hyp.then_some(HypConfig {
        r: 8,
        n_layers: 2,
        gen_hidden: 16,
        norm_eps: 1e-5,
        adapter_hidden: 8,
        mlp_scale: 0.5,
        act: Activation::Gelu,
    });
    medsa_model::Sam::random(&cfg, 3).unwrap()
}

#[test]
fn prepared_first_block_equals_the_full_path() {
    use medsa_model::config::DecoderVariant;
    use medsa_model::nn::Trace;
    use medsa_model::prompt::PromptBatch;
    for (variant, hyp) in [(DecoderVariant::Sam, false), (DecoderVariant::MedsaOfficial, true)] {
        let sam = random_sam(variant, hyp);
        let emb = random_tensor(&[1, 256, 64, 64], 9);
        let pe = sam.prompt.dense_pe(&Cpu).unwrap();
        let prepared = sam.prepare_image(&Cpu, &emb, &pe).unwrap();
        assert!(prepared.is_prepared());
        for sets in [1, 3] {
            let coords: Vec<f32> = (0..sets * 4).map(|i| 100.0 + 61.0 * i as f32).collect();
            let p = PromptBatch {
                coords: Some(Tensor::new(vec![sets, 2, 2], coords).unwrap()),
                labels: (0..sets * 2).map(|i| (i % 2) as i64).collect(),
                ..Default::default()
            };
            let fast = sam.decode_prepared(&Cpu, &prepared, &p, &mut Trace::disabled()).unwrap();
            let full = sam.decode(&Cpu, &emb, &pe, &p, &mut Trace::disabled()).unwrap();
            let e = rel_diff(&fast.masks, &full.masks).max(rel_diff(&fast.iou, &full.iou));
            assert!(e < 1e-4, "{variant:?}, {sets} sets: relative difference {e:e}");
            // A mask prompt cannot use the prepared first block: same answer by the full path.
            let masked = PromptBatch { masks: Some(random_tensor(&[sets, 1, 256, 256], 4)), ..p.clone() };
            let a = sam.decode_prepared(&Cpu, &prepared, &masked, &mut Trace::disabled()).unwrap();
            let b = sam.decode(&Cpu, &emb, &pe, &masked, &mut Trace::disabled()).unwrap();
            assert_eq!(a.masks.data(), b.masks.data(), "{variant:?}, {sets} sets, mask prompt");
            // A context of another width, or of a number of images that is neither 1 nor the
            // number of sets, does not fit the decoder.
            let narrow =
                ImageContext::new(&Cpu, &random_tensor(&[1, 128, 64, 64], 1), &pe.narrow(1, 0, 128).unwrap());
            assert!(sam.decode_prepared(&Cpu, &narrow.unwrap(), &p, &mut Trace::disabled()).is_err());
            let two = ImageContext::new(&Cpu, &random_tensor(&[2, 256, 64, 64], 1), &pe).unwrap();
            assert_eq!(two.images(), 2);
            if sets != 2 {
                assert!(sam.decode_prepared(&Cpu, &two, &p, &mut Trace::disabled()).is_err());
            }
        }
        assert!(ImageContext::new(&Cpu, &emb, &random_tensor(&[1, 256, 64, 63], 2)).is_err());
        assert!(ImageContext::new(&Cpu, &random_tensor(&[256, 64, 64], 2), &pe).is_err());
    }
}
