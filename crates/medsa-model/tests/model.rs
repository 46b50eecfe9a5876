//! Model-level behaviour: training initialisation, prompt-set independence, strict checkpoint
//! loading and bad input, on the small golden models.

#![allow(clippy::unwrap_used)]

use medsa_core::{Backend, Tensor};
use medsa_model::config::{Activation, HypConfig, ModelConfig};
use medsa_model::golden::{default_dir, model_config, read_io};
use medsa_model::nn::Trace;
use medsa_model::predictor::{BoxPrompt, MaskOutput, Point, Predictor, Prompt};
use medsa_model::preprocess::ImageU8;
use medsa_model::prompt::PromptBatch;
use medsa_model::weights::{read_safetensors, InitPolicy, TensorMap};
use medsa_model::{Error, LoadOptions, Sam};
use medsa_ref::Cpu;
use medsa_testkit::max_abs_diff;
use std::path::PathBuf;

fn golden() -> Option<PathBuf> {
    let d = default_dir();
    if d.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have ../shared/golden");
        eprintln!("skipped: no golden folder");
    }
    d
}

fn case(dir: &std::path::Path, name: &str) -> (ModelConfig, TensorMap) {
    let (_, cfg) = read_io(&dir.join(format!("{name}.io.safetensors"))).unwrap();
    (model_config(&cfg).unwrap(), read_safetensors(&dir.join(format!("{name}.weights.safetensors"))).unwrap())
}

fn load(cfg: &ModelConfig, t: TensorMap, init: Option<InitPolicy>) -> Sam {
    Sam::from_tensors(cfg, t, LoadOptions { init }).unwrap().model
}

fn points(coords: &[[f32; 2]], sets: usize) -> PromptBatch {
    let n = coords.len() / sets;
    PromptBatch {
        coords: Some(Tensor::new(vec![sets, n, 2], coords.iter().flatten().copied().collect()).unwrap()),
        labels: vec![1; sets * n],
        ..Default::default()
    }
}

#[test]
fn fresh_paper_decoder_equals_sam_bit_for_bit() {
    let Some(dir) = golden() else { return };
    let (cfg, tensors) = case(&dir, "sam_tiny");
    let sam = load(&cfg, tensors.clone(), None);
    let mut hyp_cfg = cfg.clone();
    hyp_cfg.decoder.hyp = Some(HypConfig {
        r: 4,
        n_layers: 3,
        gen_hidden: 8,
        norm_eps: 1e-5,
        adapter_hidden: 4,
        mlp_scale: 0.5,
        act: Activation::Gelu,
    });
    let loaded =
        Sam::from_tensors(&hyp_cfg, tensors, LoadOptions { init: Some(InitPolicy::Training { seed: 7 }) })
            .unwrap();
    // 2 layers x (HyP: D_fc1, gen.0, gen.2, 3 norms, D_fc2 = 14 tensors; 2 adapters x 4 tensors).
    assert_eq!(loaded.initialised.len(), 2 * (14 + 8));
    let fresh = loaded.model;
    let hyp = &fresh.decoder.layers[0].adapters.as_ref().unwrap().hyp;
    assert!(
        hyp.down.w.max_abs() > 0.0 && hyp.generator_out.w.max_abs() > 0.0,
        "only up-projections start at zero"
    );
    assert_eq!(hyp.up.w.max_abs(), 0.0);

    let img = Tensor::from_fn(vec![1, 3, 64, 64], |i| ((i * 7919 % 256) as f32 - 128.0) / 64.0).unwrap();
    let emb = sam.embed(&Cpu, &img, None, &mut Trace::disabled()).unwrap();
    let pe = sam.prompt.dense_pe(&Cpu).unwrap();
    let batch = points(&[[10.0, 20.0], [40.0, 12.0]], 1);
    let a = sam.decode(&Cpu, &emb, &pe, &batch, &mut Trace::disabled()).unwrap();
    let b = fresh.decode(&Cpu, &emb, &pe, &batch, &mut Trace::disabled()).unwrap();
    assert_eq!(a.masks, b.masks);
    assert_eq!(a.iou, b.iou);
}

#[test]
fn prompt_sets_in_a_batch_do_not_influence_each_other() {
    let Some(dir) = golden() else { return };
    let (cfg, tensors) = case(&dir, "medsa_hyp_decoder");
    let model = load(&cfg, tensors, None);
    let s = cfg.prompt.input_image_size.0;
    let img = Tensor::from_fn(vec![1, 3, s, s], |i| ((i * 31 % 97) as f32 - 48.0) / 30.0).unwrap();
    let emb = model.embed(&Cpu, &img, None, &mut Trace::disabled()).unwrap();
    let pe = model.prompt.dense_pe(&Cpu).unwrap();
    let run = |p: PromptBatch| model.decode(&Cpu, &emb, &pe, &p, &mut Trace::disabled()).unwrap();
    let before = run(points(&[[5.0, 6.0], [30.0, 40.0], [50.0, 9.0]], 3));
    let after = run(points(&[[5.0, 6.0], [12.0, 22.0], [50.0, 9.0]], 3));
    for set in [0, 2] {
        assert_eq!(
            before.masks.narrow(0, set, 1).unwrap(),
            after.masks.narrow(0, set, 1).unwrap(),
            "set {set}"
        );
        assert_eq!(before.iou.narrow(0, set, 1).unwrap(), after.iou.narrow(0, set, 1).unwrap());
    }
    assert_ne!(
        before.masks.narrow(0, 1, 1).unwrap(),
        after.masks.narrow(0, 1, 1).unwrap(),
        "moved set must change"
    );
}

#[test]
fn checkpoint_problems_are_listed_together() {
    let Some(dir) = golden() else { return };
    let (cfg, mut tensors) = case(&dir, "sam_tiny");
    tensors.remove("mask_decoder.iou_token.weight");
    tensors.insert("image_encoder.neck.0.weight".into(), Tensor::zeros(vec![3, 3]).unwrap());
    tensors.insert("image_encoder.blocks.0.extra".into(), Tensor::zeros(vec![1]).unwrap());
    let err = Sam::from_tensors(&cfg, tensors, LoadOptions::default()).err().expect("must fail");
    let Error::Checkpoint(r) = &err else { panic!("{err}") };
    assert_eq!(r.missing, ["mask_decoder.iou_token.weight"]);
    assert_eq!(r.unexpected, ["image_encoder.blocks.0.extra"]);
    assert_eq!(r.wrong_shape.len(), 1);
    let msg = err.to_string();
    assert!(msg.contains("iou_token") && msg.contains("neck.0.weight") && msg.contains("[3, 3]"), "{msg}");
}

#[test]
fn a_non_safetensors_file_is_a_clear_error() {
    let path = std::env::temp_dir().join(format!("medsa-not-safetensors-{}.bin", std::process::id()));
    std::fs::write(&path, b"PK\x03\x04 this is a zip, not safetensors").unwrap();
    let err = read_safetensors(&path).unwrap_err();
    std::fs::remove_file(&path).ok();
    assert!(matches!(err, Error::NotSafetensors { .. }), "{err}");
    assert!(err.to_string().contains("medsa-not-safetensors"), "{err}");
    assert!(matches!(read_safetensors("/nonexistent/x.safetensors".as_ref()), Err(Error::Io { .. })));
}

#[test]
fn bad_images_and_prompts_are_typed_errors() {
    let Some(dir) = golden() else { return };
    let (cfg, tensors) = case(&dir, "sam_tiny");
    let model = load(&cfg, tensors, None);
    // NaN in the image.
    let mut img = Tensor::zeros(vec![1, 3, 64, 64]).unwrap();
    img.data_mut()[100] = f32::NAN;
    let err = model.embed(&Cpu, &img, None, &mut Trace::disabled()).unwrap_err();
    assert!(matches!(err, Error::Image(_)) && err.to_string().contains("NaN"), "{err}");
    // A zero-sized image.
    assert!(matches!(ImageU8::new(0, 10, 3, vec![]), Err(Error::Image(_))));

    let mut p = Predictor::new(&model, &Cpu).unwrap();
    let err =
        p.predict(&Prompt::points(vec![Point::foreground(1.0, 1.0)]), MaskOutput::Multimask).unwrap_err();
    assert!(err.to_string().contains("set_image"), "{err}");
    let image = ImageU8::new(61, 45, 3, (0..61 * 45 * 3).map(|i| (i * 13 % 251) as u8).collect()).unwrap();
    p.set_image(&image).unwrap();
    // Empty prompt.
    let err = p.predict(&Prompt::default(), MaskOutput::Multimask).unwrap_err();
    assert!(matches!(err, Error::Prompt(_)) && err.to_string().contains("empty"), "{err}");
    // Point outside the image, NaN point, inverted box.
    for bad in [Point::foreground(61.5, 3.0), Point::background(3.0, -1.0), Point::foreground(f32::NAN, 1.0)]
    {
        let err = p.predict(&Prompt::points(vec![bad]), MaskOutput::Multimask).unwrap_err();
        assert!(matches!(err, Error::Prompt(_)) && err.to_string().contains("outside"), "{err}");
    }
    let err = p
        .predict(&Prompt::bbox(BoxPrompt { x0: 30.0, y0: 5.0, x1: 10.0, y1: 20.0 }), MaskOutput::Single)
        .unwrap_err();
    assert!(matches!(err, Error::Prompt(_)), "{err}");
    // A good prompt works, and its low-res logits feed back as a mask prompt.
    let out = p.predict(&Prompt::points(vec![Point::foreground(30.0, 20.0)]), MaskOutput::Multimask).unwrap();
    assert_eq!(out.logits.shape(), &[3, 45, 61]);
    assert_eq!(out.iou.len(), 3);
    let again = Prompt {
        mask: Some(out.low_res(out.best()).unwrap()),
        ..Prompt::points(vec![Point::foreground(30.0, 20.0)])
    };
    let refined = p.predict(&again, MaskOutput::Single).unwrap();
    assert_eq!(refined.logits.shape(), &[1, 45, 61]);
    // Batched prediction equals one-by-one prediction (up to GEMM summation order).
    let prompts = [
        Prompt::points(vec![Point::foreground(30.0, 20.0)]),
        Prompt::points(vec![Point::foreground(5.0, 40.0)]),
    ];
    let batched = p.predict_batch(&prompts, MaskOutput::Multimask).unwrap();
    for (b, single) in batched.iter().zip(&prompts) {
        let one = p.predict(single, MaskOutput::Multimask).unwrap();
        let diff = max_abs_diff(&b.low_res_logits, &one.low_res_logits);
        assert!(diff <= 1e-5 * one.low_res_logits.max_abs(), "batched differs by {diff}");
    }
    // The first prompt set on an image ran the full decoder; the later ones use the first
    // block's prepared image side: the same masks and scores.
    let cached =
        p.predict(&Prompt::points(vec![Point::foreground(30.0, 20.0)]), MaskOutput::Multimask).unwrap();
    let diff = max_abs_diff(&cached.low_res_logits, &out.low_res_logits);
    assert!(diff <= 1e-4 * out.low_res_logits.max_abs(), "prepared image differs by {diff}");
    assert!(
        cached.iou.iter().zip(&out.iou).all(|(a, b)| (a - b).abs() <= 1e-4),
        "{:?} vs {:?}",
        cached.iou,
        out.iou
    );
}

#[test]
fn patch_embed_as_one_gemm_equals_the_strided_convolution() {
    // The reshape-permute-GEMM patch embedding against SAM's conv (stride = kernel, no padding)
    // on the golden model's weights and a random image; an image whose sides are not multiples
    // of the patch falls back to the convolution, which drops the partial patches.
    let Some(dir) = golden() else { return };
    let (cfg, tensors) = case(&dir, "medsa_2d");
    let sam = load(&cfg, tensors, None);
    let enc = match &sam.encoder {
        medsa_model::Encoder::Vit(e) => e,
        _ => panic!("medsa_2d has a ViT encoder"),
    };
    let p = enc.cfg.patch_size;
    let mut rng = medsa_testkit::Rng::new(7);
    for (h, w) in [(3 * p, 5 * p), (3 * p + 3, 2 * p + 1)] {
        let x = rng.tensor(&[2, enc.cfg.in_chans, h, w], 1.0);
        let got = enc.patch_embed(&Cpu, &x).unwrap();
        let conv = Cpu
            .conv2d(&x, &enc.patch_w, Some(&enc.patch_b), medsa_core::Conv2d::new(p, 0))
            .unwrap()
            .permute(&[0, 2, 3, 1])
            .unwrap();
        assert_eq!(got.shape(), conv.shape());
        let scale = conv.data().iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max_abs_diff(&got, &conv) <= 1e-5 * scale, "{h}x{w}: {}", max_abs_diff(&got, &conv));
    }
}
