//! Training runs end to end on tiny random models and a synthetic volume: reproducibility,
//! exact resume, loss that falls (LiteMedSAM-shaped TinyViT with adapters, Med-SA ViT with the
//! paper adapters, SD-Trans chunks), and the typed errors of checkpoints, states and manifests.

#![allow(clippy::unwrap_used)]

use medsa_core::DepthGrouping;
use medsa_io::nifti::Axis;
use medsa_model::adapters;
use medsa_model::config::{
    Activation, DecoderConfig, DepthSettings, EncoderAdapters, HypConfig, ModelConfig, Preprocess, VitConfig,
};
use medsa_model::config::{TinyVitAdapters, TinyVitConfig};
use medsa_model::train::encoder::Checkpointing;
use medsa_model::train::loss::LossConfig;
use medsa_model::train::optim::{LrSchedule, OptimizerConfig};
use medsa_model::train::params::TrainableRule;
use medsa_model::weights::{read_safetensors, write_safetensors, TensorMap};
use medsa_model::Sam;
use medsa_ref::Cpu;
use medsa_train::augment::Augment;
use medsa_train::dataset::{Dataset, Pixels, Source};
use medsa_train::manifest::{Selection, ValidationSet};
use medsa_train::prompts::PromptRule;
use medsa_train::run::{train, Observer, Quiet, RunInfo, StepLog, TrainConfig};
use medsa_train::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsa-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// LiteMedSAM's structure at toy sizes (64 px input, grid 8) with TinyViT adapters and the
/// paper's decoder adapters; random weights.
fn tiny_lite(seed: u64) -> Sam {
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
        hyp: Some(HypConfig::paper(16, 4)),
        ..DecoderConfig::sam()
    };
    let cfg = ModelConfig::assemble(t, dec, Preprocess::LiteMedsamOfficial);
    Sam::random(&cfg, seed).unwrap()
}

/// Med-SA's ViT at 32 px (grid 2), width 16, two blocks, with Space / MLP / Depth adapters.
fn tiny_medsa(seed: u64) -> Sam {
    let vit = VitConfig {
        img_size: 32,
        patch_size: 16,
        in_chans: 3,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_dim: 32,
        window_size: 2,
        global_attn_indexes: vec![1],
        out_chans: 16,
        use_rel_pos: true,
        pos_embed_grid: Some(2),
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
        num_heads: 2,
        mlp_dim: 32,
        iou_head_hidden: 16,
        hyp: Some(HypConfig::paper(16, 4)),
        ..DecoderConfig::sam()
    };
    let cfg = ModelConfig::assemble(vit, dec, Preprocess::sam());
    Sam::random(&cfg, seed).unwrap()
}

/// A 24 x 20 x 8 volume with a bright ellipse (label 1) that shrinks away from slice 3 and a
/// second structure (label 2) on slices 2..6; validation on slices 6..7.
fn synthetic() -> Dataset {
    let dims = [24usize, 20, 8];
    let (mut image, mut labels) = (Vec::new(), Vec::new());
    for z in 0..dims[2] {
        let r = 7.0 - (z as f64 - 3.0).abs() * 1.2;
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let (dx, dy) = (x as f64 - 11.0, (y as f64 - 9.0) * 1.3);
                let inside = r > 0.0 && dx * dx + dy * dy < r * r;
                let second = (2..6).contains(&z) && (18..22).contains(&x) && (3..7).contains(&y);
                labels.push(if inside {
                    1
                } else if second {
                    2
                } else {
                    0
                });
                image.push(if inside {
                    200
                } else if second {
                    120
                } else {
                    ((x * 7 + y * 3) % 40) as u8
                });
            }
        }
    }
    Dataset {
        sources: vec![Source {
            id: "vol".into(),
            pixels: Pixels::Volume { image, labels, dims },
            spacing: [1.0, 1.0, 2.0],
        }],
        axis: Axis::Z,
        train: Selection { exclude_slices: vec![[6, 7]], ..Selection::default() },
        validation: vec![ValidationSet {
            name: "val".into(),
            select: Selection { slices: Some([6, 7]), ..Selection::default() },
        }],
        label_names: Default::default(),
    }
}

fn config(rule: TrainableRule, epochs: usize) -> TrainConfig {
    TrainConfig {
        rule,
        prompt: PromptRule::Box { jitter: 2 },
        epochs,
        batch: 2,
        optimizer: OptimizerConfig { lr: 3e-3, ..OptimizerConfig::default() },
        schedule: LrSchedule::Constant,
        clip_norm: Some(1.0),
        loss: LossConfig::default(),
        seed: 7,
        augment: Augment { flips: true, rot90: true, intensity_shift: 0.0 },
        depth: None,
        checkpointing: Checkpointing::Off,
        cache_bytes: 64 << 20,
        cache_dir: None,
    }
}

fn info() -> RunInfo {
    RunInfo { base_sha256: "test-base".into(), base_file: "random".into(), command: "test".into() }
}

fn tensors(p: &Path) -> Vec<(String, Vec<u32>)> {
    read_safetensors(p)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.data().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// Sets the stop flag after `after` steps, like a Ctrl-C.
struct StopAfter<'a> {
    after: u64,
    stop: &'a AtomicBool,
    losses: Vec<f64>,
    dice: Vec<f64>,
}

impl<'a> StopAfter<'a> {
    /// Records losses and Dice without ever stopping.
    fn never(stop: &'a AtomicBool) -> Self {
        StopAfter { after: u64::MAX, stop, losses: Vec::new(), dice: Vec::new() }
    }
}

impl Observer for StopAfter<'_> {
    fn step(&mut self, s: &StepLog) {
        self.losses.push(s.loss);
        self.dice.push(s.dice);
        if s.step + 1 == self.after {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn same_seed_gives_identical_parameters_and_resume_continues_exactly() {
    let data = synthetic();
    let cfg = config(TrainableRule::Paper, 2);
    let never = AtomicBool::new(false);
    let (a, b, c) = (tmp("repro-a"), tmp("repro-b"), tmp("resume"));
    let sa = train(&mut tiny_lite(1), &Cpu, &data, &cfg, &info(), &a, false, &never, &mut Quiet).unwrap();
    train(&mut tiny_lite(1), &Cpu, &data, &cfg, &info(), &b, false, &never, &mut Quiet).unwrap();
    assert!(!sa.interrupted && sa.steps > 4, "{sa:?}");
    assert_eq!(
        tensors(&a.join("last.safetensors")),
        tensors(&b.join("last.safetensors")),
        "same seed, same bits"
    );
    assert_eq!(tensors(&a.join("state.safetensors")), tensors(&b.join("state.safetensors")));

    // Stopped after 3 steps (mid-epoch), then resumed on a fresh copy of the base.
    let stop = AtomicBool::new(false);
    let mut obs = StopAfter { after: 3, stop: &stop, losses: Vec::new(), dice: Vec::new() };
    let s1 = train(&mut tiny_lite(1), &Cpu, &data, &cfg, &info(), &c, false, &stop, &mut obs).unwrap();
    assert!(s1.interrupted && s1.steps == 3, "{s1:?}");
    let s2 = train(&mut tiny_lite(1), &Cpu, &data, &cfg, &info(), &c, true, &never, &mut Quiet).unwrap();
    assert_eq!(s2.steps, sa.steps);
    assert_eq!(
        tensors(&a.join("last.safetensors")),
        tensors(&c.join("last.safetensors")),
        "resume == uninterrupted"
    );
    assert_eq!(tensors(&a.join("state.safetensors")), tensors(&c.join("state.safetensors")));
    let log = std::fs::read_to_string(c.join("log.jsonl")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"kind\":\"step\"")).count() as u64,
        sa.steps,
        "one log line per step"
    );
    for f in ["settings.json", "split.json", "curves.png", "best.safetensors", "summary.json"] {
        assert!(c.join(f).is_file(), "{f}");
    }

    // A resume with other settings, or from a corrupt state, is refused with a reason.
    let other = TrainConfig { seed: 8, ..cfg.clone() };
    let e = train(&mut tiny_lite(1), &Cpu, &data, &other, &info(), &c, true, &never, &mut Quiet).unwrap_err();
    assert!(matches!(e, Error::Run { .. }) && e.to_string().contains("other settings"), "{e}");
    std::fs::write(c.join("state.safetensors"), b"not a state").unwrap();
    let e = train(&mut tiny_lite(1), &Cpu, &data, &cfg, &info(), &c, true, &never, &mut Quiet).unwrap_err();
    assert!(matches!(e, Error::Run { .. }), "{e}");
    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Settings for the tests that check that a loss falls: no augmentation, a high rate.
fn learning(epochs: usize) -> TrainConfig {
    TrainConfig {
        augment: Augment::default(),
        optimizer: OptimizerConfig { lr: 2e-2, ..OptimizerConfig::default() },
        clip_norm: None,
        ..config(TrainableRule::Paper, epochs)
    }
}

fn epoch_means(losses: &[f64], per_epoch: usize) -> Vec<f64> {
    losses.chunks(per_epoch).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
}

#[test]
fn tiny_vit_adapters_train_with_the_decoder() {
    // LiteMedSAM's shape: TinyViT adapters + the whole decoder (the official rule).
    let data = synthetic();
    let cfg = TrainConfig { rule: TrainableRule::Official, ..learning(6) };
    let out = tmp("learn-lite");
    let never = AtomicBool::new(false);
    let mut obs = StopAfter::never(&never);
    let s = train(&mut tiny_lite(2), &Cpu, &data, &cfg, &info(), &out, false, &never, &mut obs).unwrap();
    let m = epoch_means(&obs.losses, s.steps as usize / 6);
    assert!(m[5] < 0.85 * m[0], "epoch mean losses {m:?}");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn medsa_vit_with_paper_adapters_learns_and_sd_trans_chunks_train() {
    let data = synthetic();
    let never = AtomicBool::new(false);
    let out = tmp("learn-vit");
    // The paper's PEFT on a random backbone: the loss falls.
    let cfg = learning(8);
    let mut obs = StopAfter::never(&never);
    let s = train(&mut tiny_medsa(3), &Cpu, &data, &cfg, &info(), &out, false, &never, &mut obs).unwrap();
    let m = epoch_means(&obs.losses, s.steps as usize / 8);
    assert!(m.windows(2).all(|w| w[1] < w[0]) && m[7] < 0.99 * m[0], "epoch mean losses {m:?}");
    // Encoder adapters + the decoder (the official rule): the ellipse is learned.
    let official = TrainConfig { rule: TrainableRule::Official, ..learning(8) };
    let mut obs = StopAfter::never(&never);
    let s =
        train(&mut tiny_medsa(3), &Cpu, &data, &official, &info(), &out, false, &never, &mut obs).unwrap();
    let d = epoch_means(&obs.dice, s.steps as usize / 8);
    assert!(d[7] > 0.3, "training Dice per epoch {d:?}");

    // SD-Trans: chunks of 2 consecutive slices through the depth branch, both groupings.
    for grouping in [DepthGrouping::PerWindow, DepthGrouping::Official] {
        let cfg3 =
            TrainConfig { batch: 1, depth: Some(DepthSettings { depth: 2, grouping }), ..official.clone() };
        let mut obs = StopAfter::never(&never);
        let s =
            train(&mut tiny_medsa(3), &Cpu, &data, &cfg3, &info(), &out, false, &never, &mut obs).unwrap();
        let m = epoch_means(&obs.losses, s.steps as usize / 8);
        assert!(m[7] < 0.9 * m[0], "{grouping:?}: epoch mean losses {m:?}");
    }
    // Chunks need a trainable encoder and batch 1.
    let bad = TrainConfig {
        depth: Some(DepthSettings { depth: 2, grouping: DepthGrouping::PerWindow }),
        ..cfg.clone()
    };
    assert!(train(&mut tiny_medsa(3), &Cpu, &data, &bad, &info(), &out, false, &never, &mut Quiet).is_err());
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn adapter_checkpoints_check_their_base_and_shapes() {
    let data = synthetic();
    let cfg = config(TrainableRule::Paper, 1);
    let out = tmp("ckpt");
    let never = AtomicBool::new(false);
    train(&mut tiny_lite(4), &Cpu, &data, &cfg, &info(), &out, false, &never, &mut Quiet).unwrap();
    let path = out.join("best.safetensors");
    let file = adapters::read(&path).unwrap();
    assert_eq!(file.meta.base_sha256, "test-base");
    assert_eq!(file.meta.trainable_rule, "paper");
    assert!(file.tensors.keys().all(|n| n.contains("Adapter")), "paper rule: adapters only");

    let mut base = TensorMap::new();
    file.merge_into(&mut base, "test-base", &path).unwrap();
    assert_eq!(base.len(), file.tensors.len());
    let e = file.merge_into(&mut TensorMap::new(), "another-base", &path).unwrap_err();
    assert!(e.to_string().contains("sha256"), "{e}");
    let (name, t) = file.tensors.iter().next().unwrap();
    let mut wrong = TensorMap::new();
    wrong.insert(name.clone(), medsa_core::Tensor::zeros(vec![t.numel() + 1]).unwrap());
    let e = file.merge_into(&mut wrong, "test-base", &path).unwrap_err();
    assert!(e.to_string().contains(name.as_str()), "{e}");

    // Not an adapter file: garbage, and safetensors without the header.
    let junk = out.join("junk.safetensors");
    std::fs::write(&junk, b"garbage").unwrap();
    assert!(matches!(adapters::read(&junk), Err(medsa_model::Error::Adapters { .. })));
    write_safetensors(&junk, &[("x".into(), t.clone())], None).unwrap();
    let e = adapters::read(&junk).unwrap_err();
    assert!(e.to_string().contains("format"), "{e}");
    let _ = std::fs::remove_dir_all(out);
}

fn png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)])).save(path).unwrap();
}

#[test]
fn manifests_name_their_problems_and_empty_masks_are_skipped() {
    let dir = tmp("manifest");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..4u32 {
        png(&dir.join(format!("c{i}_img.png")), 40, 30, |x, y| ((x * 5 + y * 3 + i) % 255) as u8);
        // Case 3's mask is empty.
        png(&dir.join(format!("c{i}_mask.png")), 40, 30, |x, y| {
            if i != 3 && (10..20 + i).contains(&x) && (8..18).contains(&y) {
                255
            } else {
                0
            }
        });
    }
    let cases: Vec<String> = (0..4)
        .map(|i| format!(r#"{{"case": "c{i}", "image": "c{i}_img.png", "mask": "c{i}_mask.png"}}"#))
        .collect();
    let manifest = dir.join("m.json");
    std::fs::write(
        &manifest,
        format!(r#"{{"images": [{}], "validation": [{{"name": "v", "sources": ["c0"]}}], "train": {{"sources": ["c1", "c2", "c3"]}}}}"#, cases.join(",")),
    )
    .unwrap();
    let data = Dataset::load(&manifest).unwrap();
    assert_eq!(data.samples(&data.train, 1).unwrap().len(), 2, "c3 has no sample");
    let out = tmp("manifest-run");
    let never = AtomicBool::new(false);
    let cfg = TrainConfig { augment: Augment::default(), ..config(TrainableRule::Decoder, 1) };
    let s = train(&mut tiny_lite(5), &Cpu, &data, &cfg, &info(), &out, false, &never, &mut Quiet).unwrap();
    assert_eq!(s.skipped_sources, vec!["c3".to_string()]);
    assert!(s.last.as_ref().unwrap()[0].mean_dice.is_finite());

    // A bare eval manifest is a training manifest with an 80 / 20 split by case.
    let bare = dir.join("bare.json");
    std::fs::write(&bare, format!("[{}]", cases.join(","))).unwrap();
    let d = Dataset::load(&bare).unwrap();
    assert_eq!(d.validation.len(), 1);
    assert_eq!(d.source_ids(&d.validation[0].select).len() + d.source_ids(&d.train).len(), 4);

    let expect = |text: String, needle: &str| {
        std::fs::write(&manifest, text).unwrap();
        let e = Dataset::load(&manifest).unwrap_err();
        assert!(matches!(e, Error::Manifest { .. }) && e.to_string().contains(needle), "{needle}: {e}");
    };
    expect(r#"{"images": [{"image": "nope.png", "mask": "c0_mask.png"}]}"#.into(), "nope.png");
    expect(r#"{"images": []}"#.into(), "no `volumes`");
    expect("{ not json".into(), "expected");
    expect(format!(r#"{{"images": [{}], "train": {{"sources": ["zz"]}}}}"#, cases[0]), "zz");
    expect(format!(r#"{{"images": [{}], "train": {{"slices": [5, 2]}}}}"#, cases[0]), "first > last");
    expect(format!(r#"{{"images": [{}], "axis": "w"}}"#, cases[0]), "axis");
    expect(format!(r#"{{"images": [{}], "colour": 1}}"#, cases[0]), "colour");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn click_and_iterative_prompts_and_intensity_shifts_train() {
    let data = synthetic();
    let never = AtomicBool::new(false);
    let out = tmp("prompts");
    for prompt in [PromptRule::Click, PromptRule::Iterative { rounds: 3 }] {
        let cfg = TrainConfig {
            prompt,
            augment: Augment { flips: true, rot90: false, intensity_shift: 0.1 },
            ..config(TrainableRule::Decoder, 1)
        };
        let mut obs = StopAfter::never(&never);
        let s = train(&mut tiny_lite(6), &Cpu, &data, &cfg, &info(), &out, false, &never, &mut obs).unwrap();
        assert!(s.steps > 0 && obs.losses.iter().all(|l| l.is_finite()), "{prompt}: {:?}", obs.losses);
    }
    let _ = std::fs::remove_dir_all(out);
}
