//! End-to-end tests of the `medsa` binary.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn medsa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medsa")).args(args).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/demo")
}

fn golden_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden");
    d.join("index.json").exists().then_some(d)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsa-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn help_teaches_every_subcommand() {
    let o = medsa(&["--help"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    for sub in ["segment", "segment-volume", "info", "convert", "demo", "eval"] {
        assert!(out.contains(sub), "--help lacks {sub}:\n{out}");
    }
    for sub in ["segment", "segment-volume", "info", "convert", "demo"] {
        let o = medsa(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help failed");
        let (out, _) = text(&o);
        assert!(out.contains("Example"), "{sub} --help has no example:\n{out}");
    }
}

#[test]
fn bad_box_and_point_strings_are_clear_errors() {
    let img = demo_dir().join("colin27_z60_brain_img.png");
    let img = img.to_str().unwrap();
    let out = tmp("never.png");
    let out = out.to_str().unwrap();
    for (flag, value) in [
        ("--box", "1,2,3"),
        ("--box", "a,b,c,d"),
        ("--box", "10,10,5,20"),
        ("--box", "-1,2,3,4"),
        ("--point", "12"),
        ("--point", "1,2,maybe"),
    ] {
        let o = medsa(&["segment", img, flag, value, "--out", out]);
        assert!(!o.status.success(), "{flag} {value} was accepted");
        let (_, err) = text(&o);
        assert!(err.contains(flag), "{flag} {value}: the error does not name the argument:\n{err}");
        let expected = if flag == "--box" { "x0,y0,x1,y1" } else { "x,y" };
        assert!(err.contains(expected), "{flag} {value}: no expected format:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // No prompt at all, and a missing input file.
    let o = medsa(&["segment", img, "--out", out]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("no prompt"));
    let o = medsa(&["info", "/nonexistent/x.pth"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("/nonexistent/x.pth"));
}

#[test]
fn info_detects_golden_families() {
    let Some(dir) = golden_dir() else {
        eprintln!("skipped: no ../shared/golden beside the workspace");
        return;
    };
    for (file, family) in [
        ("sam_tiny.weights.safetensors", "family:          SAM"),
        ("medsa_3d.weights.safetensors", "family:          Med-SA"),
        ("medsa_hyp_decoder.weights.safetensors", "family:          Med-SA"),
    ] {
        let o = medsa(&["info", dir.join(file).to_str().unwrap()]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{file}: {err}");
        assert!(out.contains(family), "{file}:\n{out}");
        assert!(out.contains("must be configured"), "{file}:\n{out}");
    }
    let o = medsa(&["info", dir.join("medsa_3d.weights.safetensors").to_str().unwrap()]);
    let (out, _) = text(&o);
    assert!(out.contains("Depth_Adapter yes"), "{out}");
    assert!(out.contains("Med-SA official"), "{out}");
}

#[test]
fn convert_pth_fixture_to_readable_safetensors() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../medsa-io/tests/fixtures");
    for name in ["tiny_state_dict.pth", "medsa_training_ckpt.pth"] {
        let input = fixtures.join(name);
        let output = tmp(&format!("{name}.safetensors"));
        let o = medsa(&["convert", input.to_str().unwrap(), output.to_str().unwrap()]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{name}: {err}");
        assert!(out.contains("tensors"), "{out}");
        // Same names, shapes and values as the .pth.
        let ck = medsa_io::pth::read_pth(&input).unwrap();
        let bytes = std::fs::read(&output).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), ck.tensors().len(), "{name}");
        let mut floats = 0;
        for (k, t) in ck.tensors() {
            let view = st.tensor(k).unwrap_or_else(|e| panic!("{name}: {k}: {e}"));
            assert_eq!(view.shape(), t.shape.as_slice(), "{name}: {k}");
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => medsa_core::DType::F32,
                safetensors::Dtype::F16 => medsa_core::DType::F16,
                safetensors::Dtype::BF16 => medsa_core::DType::BF16,
                _ => continue,
            };
            let got = medsa_core::dtype::decode_le(dtype, view.data()).unwrap();
            assert_eq!(got, t.to_tensor().unwrap().data(), "{name}: {k}");
            floats += 1;
        }
        assert!(floats > 0, "{name} has no float tensors");
    }
    // Not a checkpoint: a clear error naming the file.
    let png = demo_dir().join("colin27_z60_brain_img.png");
    let o = medsa(&["convert", png.to_str().unwrap(), tmp("x.safetensors").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("colin27_z60_brain_img.png"));
}

#[test]
fn segment_demo_slice_matches_the_official_dice() {
    let weights = match medsa_model::lite::find_weights() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let dir = demo_dir();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let case =
        cases["cases"].as_array().unwrap().iter().find(|c| c["case"] == "colin27_z78_Thalamus_L").unwrap();
    let b: Vec<String> = case["box"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let mask = tmp("thalamus_mask.png");
    let overlay = tmp("thalamus_overlay.png");
    let o = medsa(&[
        "segment",
        dir.join(case["image"].as_str().unwrap()).to_str().unwrap(),
        "--box",
        &b.join(","),
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        mask.to_str().unwrap(),
        "--overlay",
        overlay.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let read = |p: &Path| {
        let i = medsa_io::image::load_image(p, medsa_io::image::ColorMode::Gray).unwrap();
        (i.width(), i.height(), i.into_data())
    };
    let (w, h, pred) = read(&mask);
    let (tw, th, truth) = read(&dir.join(case["mask"].as_str().unwrap()));
    assert_eq!((w, h), (tw, th));
    assert!(pred.iter().all(|&v| v == 0 || v == 255), "mask is not 0/255");
    let inter = pred.iter().zip(&truth).filter(|(a, b)| **a > 0 && **b > 0).count() as f64;
    let total = (pred.iter().filter(|v| **v > 0).count() + truth.iter().filter(|v| **v > 0).count()) as f64;
    let dice = 2.0 * inter / total;
    let reference = case["reference"]["dice"].as_f64().unwrap();
    assert!((dice - reference).abs() <= 0.01, "Dice {dice:.4}, official {reference:.4}");
    let (ow, oh, _) = read(&overlay);
    assert_eq!((ow, oh), (w, h));
}

#[test]
fn cuda_device_without_a_gpu_is_a_clear_error() {
    if medsa_kernels::driver_available() {
        return; // a GPU machine: `--device cuda` opens it (covered by the segment tests there)
    }
    let img = demo_dir().join("colin27_z60_brain_img.png");
    let out = tmp("nogpu.png");
    let run = |device: &str| {
        let o = medsa(&[
            "segment",
            img.to_str().unwrap(),
            "--box",
            "10,10,50,50",
            "--device",
            device,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        text(&o).1
    };
    for device in ["cuda", "cuda:1"] {
        let err = run(device);
        assert!(err.contains("no CUDA driver") && err.contains("--device cpu"), "{err}");
    }
    let err = run("gpu");
    assert!(err.contains("want cpu, cuda, cuda:N or cuda-emulator"), "{err}");
    assert!(!out.exists(), "no output may be written");
}

/// The whole LiteMedSAM forward through the CUDA backend's host code and kernels, on the
/// emulator (results emulated): in f32 the mask equals the CPU reference's pixel for pixel.
#[test]
fn cuda_emulator_device_gives_the_cpu_mask() {
    let weights = match medsa_model::lite::find_weights() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let img = demo_dir().join("colin27_z60_Hippocampus_L_img.png");
    let run = |device: &str, out: &Path| {
        let o = medsa(&[
            "segment",
            img.to_str().unwrap(),
            "--box",
            "100,100,140,150",
            "--weights",
            weights.to_str().unwrap(),
            "--device",
            device,
            "--precision",
            "f32",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{device}: {}", text(&o).1);
        medsa_io::image::load_image(out, medsa_io::image::ColorMode::Gray).unwrap().into_data()
    };
    let cpu = run("cpu", &tmp("dev_cpu.png"));
    let emu = run("cuda-emulator", &tmp("dev_emu.png"));
    assert!(cpu.iter().any(|&v| v > 0));
    assert_eq!(cpu, emu, "the emulated CUDA mask differs from the CPU reference's");
}

/// `segment-volume` (propagation, the default) with an SD-Trans checkpoint (the tiny golden
/// `medsa_3d`) from two key slices of the Colin27 T1: every slice written, the chains meeting
/// between the keys, one encoder run per chunk (plus the returns to the keys' chunks); a
/// --box-slice without its --box is an error naming both counts, a key slice given twice an
/// error naming it, --radius without --fixed-box an error naming --fixed-box.
#[test]
fn segment_volume_propagates_sd_trans_from_several_key_slices() {
    let (Some(dir), vol) = (
        golden_dir(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/volumes/colin27/ch2.nii.gz"),
    ) else {
        assert!(std::env::var_os("CI").is_none(), "CI must have ../shared/golden beside the clone");
        return;
    };
    assert!(vol.exists() || std::env::var_os("CI").is_none(), "CI must have ../shared/data");
    if !vol.exists() {
        return;
    }
    let (weights, out) = (dir.join("medsa_3d.weights.safetensors"), tmp("sd_trans_propagated.nii.gz"));
    let (w, v, o) = (weights.to_str().unwrap(), vol.to_str().unwrap(), out.to_str().unwrap());
    let keys =
        ["--box-slice", "60", "--box", "22,22,159,192", "--box-slice", "100", "--box", "30,30,150,180"];
    let args: Vec<&str> =
        ["segment-volume", v, "--weights", w, "--depth", "2", "-o", o].into_iter().chain(keys).collect();
    let r = medsa(&args);
    let (stdout, err) = text(&r);
    let all = format!("{stdout}{err}");
    assert!(r.status.success(), "{all}");
    assert!(
        all.contains("key slice 60, up: slices written to 80, then the next key slice's chain takes over"),
        "{all}"
    );
    assert!(all.contains("key slice 100, down: slices written to 81"), "{all}");
    assert!(all.contains("propagated from key slices [60, 100] over 181 slices"), "{all}");
    assert!(all.contains("chunks of D = 2: 94 encoder runs"), "{all}");
    assert!(out.exists());
    let r = medsa(&[
        "segment-volume",
        v,
        "--weights",
        w,
        "--box-slice",
        "60",
        "--box-slice",
        "70",
        "--box",
        "1,1,9,9",
        "-o",
        o,
    ]);
    assert!(!r.status.success());
    assert!(text(&r).1.contains("give one --box per --box-slice (2 key slices, 1 boxes)"), "{:?}", text(&r));
    let twice = ["segment-volume", v, "--weights", w, "--box-slice", "60", "--box", "1,1,9,9"];
    let r = medsa(&[&twice[..], &["--box-slice", "60", "--box", "2,2,9,9", "-o", o]].concat());
    assert!(!r.status.success());
    assert!(text(&r).1.contains("--box-slice 60 is given twice"), "{:?}", text(&r));
    for (extra, named) in
        [(&["--radius", "3"][..], "--fixed-box"), (&["--fixed-box", "--slice-range", "1-9"], "--slice-range")]
    {
        let r = medsa(&[&twice[..], extra, &["-o", o]].concat());
        assert!(!r.status.success());
        assert!(text(&r).1.contains(named), "{extra:?}: {:?}", text(&r));
    }
}
