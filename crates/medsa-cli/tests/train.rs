//! `medsa train` end to end on the real LiteMedSAM weights and the `cases2d` slices: one epoch
//! of the paper adapters, the run folder, the adapters loaded back by `segment` and `eval`, and
//! the typed errors of adapter files that do not fit (another base, a missing tensor, a wrong
//! shape) and of bad manifests.
//!
//! The run needs the LiteMedSAM weights and `../shared/data`; without them it prints why and
//! returns (CI fetches the weights first, and there it fails instead).

#![allow(clippy::unwrap_used)]

use medsa_model::weights::{read_safetensors, write_safetensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cases2d");
    d.join("manifest.json").is_file().then(|| d.canonicalize().unwrap())
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsa-train-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn medsa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medsa")).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "failed:\n{out}\n{err}");
    out.into_owned()
}

fn fails(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure with {needle:?}");
    assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn train_then_segment_and_eval_with_the_adapters() {
    let (Some(data), Ok(_)) = (data_dir(), medsa_model::lite::find_weights()) else {
        assert!(std::env::var_os("CI").is_none(), "CI must have ../shared/data and the LiteMedSAM weights");
        return eprintln!("skipped: no ../shared/data or LiteMedSAM weights");
    };
    let dir = temp_dir("run");
    let run = dir.join("run");
    let manifest = data.join("manifest.json");
    let o = medsa(&[
        "train",
        "--manifest",
        manifest.to_str().unwrap(),
        "--adapters",
        "paper",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        run.to_str().unwrap(),
    ]);
    let stdout = ok(&o);
    assert!(stdout.contains("held-out") && stdout.contains("samples"), "{stdout}");
    for f in [
        "settings.json",
        "split.json",
        "log.jsonl",
        "curves.png",
        "best.safetensors",
        "last.safetensors",
        "state.safetensors",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let best = run.join("best.safetensors");
    let adapters = read_safetensors(&best).unwrap();
    assert!(
        !adapters.is_empty() && adapters.keys().all(|k| k.contains("Adapter")),
        "paper rule: adapters only"
    );
    let size = std::fs::metadata(&best).unwrap().len();
    assert!(size < 8 << 20, "adapter file is {size} bytes");

    // The adapters on top of the base: segment and eval.
    let img = data.join("colin27_z60_brain_img.png");
    let mask = dir.join("mask.png");
    ok(&medsa(&[
        "segment",
        img.to_str().unwrap(),
        "--box",
        "19,21,161,194",
        "--adapters",
        best.to_str().unwrap(),
        "--out",
        mask.to_str().unwrap(),
    ]));
    assert!(mask.is_file());
    let eval = ok(&medsa(&[
        "eval",
        "--data",
        manifest.to_str().unwrap(),
        "--limit",
        "1",
        "--prompt",
        "box",
        "--no-progress",
        "--adapters",
        best.to_str().unwrap(),
        "--out",
        dir.join("eval").to_str().unwrap(),
    ]));
    assert!(eval.contains("box"), "{eval}");

    // Adapter files that do not fit are typed errors naming the problem.
    let seg = |adapters: &Path, weights: Option<&Path>| {
        let mut a =
            vec!["segment".to_string(), img.display().to_string(), "--box".into(), "19,21,161,194".into()];
        a.extend([
            "--adapters".into(),
            adapters.display().to_string(),
            "--out".into(),
            mask.display().to_string(),
        ]);
        if let Some(w) = weights {
            a.extend(["--weights".into(), w.display().to_string()]);
        }
        Command::new(env!("CARGO_BIN_EXE_medsa")).args(&a).output().unwrap()
    };
    let copy = dir.join("lite_copy.pth");
    let mut bytes = std::fs::read(medsa_model::lite::find_weights().unwrap()).unwrap();
    bytes.extend_from_slice(b"\0");
    std::fs::write(&copy, bytes).unwrap();
    fails(&seg(&best, Some(&copy)), "sha256");
    let header = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        m.metadata().clone()
    };
    let mut list: Vec<(String, medsa_core::Tensor)> = adapters.clone().into_iter().collect();
    let (name, _) = list.remove(0);
    let missing = dir.join("missing.safetensors");
    write_safetensors(&missing, &list, header(&best)).unwrap();
    fails(&seg(&missing, None), &format!("missing {name}"));
    let mut shaped: Vec<(String, medsa_core::Tensor)> = adapters.into_iter().collect();
    let first = shaped[0].1.clone();
    shaped[0].1 = medsa_core::Tensor::zeros(vec![first.numel() + 1]).unwrap();
    let wrong = dir.join("wrong.safetensors");
    write_safetensors(&wrong, &shaped, header(&best)).unwrap();
    fails(&seg(&wrong, None), &format!("{}: {} values", shaped[0].0, first.numel() + 1));
    std::fs::write(dir.join("junk.safetensors"), b"junk").unwrap();
    fails(&seg(&dir.join("junk.safetensors"), None), "adapter checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_manifests_are_clear_errors() {
    let dir = temp_dir("bad");
    let out = dir.join("out");
    let m = dir.join("m.json");
    std::fs::write(&m, r#"[{"image": "no_such_img.png", "mask": "no_such_mask.png"}]"#).unwrap();
    fails(
        &medsa(&["train", "--manifest", m.to_str().unwrap(), "--out", out.to_str().unwrap()]),
        "no_such_img.png",
    );
    std::fs::write(&m, "{ not json").unwrap();
    fails(&medsa(&["train", "--manifest", m.to_str().unwrap(), "--out", out.to_str().unwrap()]), "m.json");
    fails(
        &medsa(&[
            "train",
            "--manifest",
            m.to_str().unwrap(),
            "--prompt",
            "lasso",
            "--out",
            out.to_str().unwrap(),
        ]),
        "lasso",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
