//! LiteMedSAM with the real weights on the six real MRI slices of `../shared/data/cases2d`,
//! with the official LiteMedSAM inference preprocessing (data README): medsa's Dice against the
//! reference mask must be within 0.01 of `litemedsam_reference.json` for every case (tight box).
//!
//! Needs the weights (`cargo xtask fetch-weights`, or `$MEDSA_LITE_MEDSAM`): without them the
//! test fails with the instructions, it does not pass silently.

#![allow(clippy::unwrap_used)]

use medsa_core::Tensor;
use medsa_io::image::{load_image, ColorMode};
use medsa_model::nn::Trace;
use medsa_model::preprocess::{
    lite_medsam_official_box, lite_medsam_official_input, lite_medsam_official_postprocess, ImageU8,
};
use medsa_model::prompt::PromptBatch;
use medsa_model::{lite, Sam};
use medsa_ref::Cpu;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn data_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cases2d");
    d.join("manifest.json").exists().then_some(d)
}

fn gray(path: &Path) -> ImageU8 {
    let img = load_image(path, ColorMode::Gray).unwrap();
    ImageU8::new(img.width() as usize, img.height() as usize, 1, img.into_data()).unwrap()
}

fn dice(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count() as f64;
    let total = (a.iter().filter(|x| **x).count() + b.iter().filter(|x| **x).count()) as f64;
    if total == 0.0 {
        1.0
    } else {
        2.0 * inter / total
    }
}

/// The official inference for one box: mask (logit > 0) at original size and predicted IoU.
fn segment(model: &Sam, img: &ImageU8, bbox: [f64; 4]) -> (Vec<bool>, f32) {
    let s = model.cfg.encoder.img_size();
    let (x, frame) = lite_medsam_official_input(img, s).unwrap();
    let emb = model.embed(&Cpu, &x, None, &mut Trace::disabled()).unwrap();
    let dense_pe = model.prompt.dense_pe(&Cpu).unwrap();
    let b = lite_medsam_official_box(bbox, &frame).unwrap();
    let batch =
        PromptBatch { boxes: Some(Tensor::new(vec![1, 4], b.to_vec()).unwrap()), ..Default::default() };
    let dec = model.decode(&Cpu, &emb, &dense_pe, &batch, &mut Trace::disabled()).unwrap();
    let (low, iou) = Sam::select(&Cpu, &dec, model.cfg.single_select).unwrap();
    let logits = lite_medsam_official_postprocess(&Cpu, &low, &frame).unwrap();
    assert_eq!(logits.shape(), &[1, 1, img.height, img.width]);
    (logits.data().iter().map(|&v| v > 0.0).collect(), iou.data()[0])
}

#[test]
fn official_inference_dice_matches_reference() {
    let Some(dir) = data_dir() else {
        if std::env::var_os("CI").is_some() {
            panic!("CI must have ../shared/data beside the clone");
        }
        eprintln!("skipped: no ../shared/data/cases2d");
        return;
    };
    let weights = lite::find_weights().unwrap_or_else(|e| panic!("{e}"));
    let model = lite::load(&weights).unwrap();
    let read =
        |f: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap() };
    let manifest = read("manifest.json");
    let reference = read("litemedsam_reference.json");
    let mut failures = Vec::new();
    let cases = manifest.as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let name = case["case"].as_str().unwrap();
        let img = gray(&dir.join(case["image"].as_str().unwrap()));
        let truth: Vec<bool> =
            gray(&dir.join(case["mask"].as_str().unwrap())).data.iter().map(|&v| v > 0).collect();
        let official: Vec<bool> =
            gray(&dir.join(case["litemedsam_pred"].as_str().unwrap())).data.iter().map(|&v| v > 0).collect();
        let bbox: Vec<f64> = case["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let t = std::time::Instant::now();
        let (mask, iou) = segment(&model, &img, bbox.try_into().unwrap());
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let r = reference["results"].as_array().unwrap().iter().find(|r| r["case"] == name).unwrap();
        let ref_dice = r["box"]["dice"].as_f64().unwrap();
        let ref_iou = r["box"]["pred_iou"].as_f64().unwrap();
        let d = dice(&mask, &truth);
        let agree = dice(&mask, &official);
        eprintln!(
            "{name}: Dice {d:.4} (reference {ref_dice:.4}, diff {:+.4}), pred IoU {iou:.4} (reference {ref_iou:.4}), \
             Dice vs official prediction {agree:.4}, {ms:.0} ms",
            d - ref_dice
        );
        if (d - ref_dice).abs() > 0.01 {
            failures.push(format!("{name}: Dice {d:.4}, reference {ref_dice:.4}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
