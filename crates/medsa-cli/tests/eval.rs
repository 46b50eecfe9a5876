//! `medsa eval` end to end: a two-case manifest over `../shared/data/cases2d` with `bbox0.75`
//! and `1pt`, the report files, the CSV rows, the same seed giving the same CSV, and clear
//! errors for bad input.
//!
//! The runs need the LiteMedSAM weights (`cargo xtask fetch-weights` or `$MEDSA_LITE_MEDSAM`)
//! and `../shared/data`; without them those tests print why and return (CI fetches the weights
//! first). The bad-input tests need neither: inputs are checked before the model is loaded.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cases2d");
    d.join("manifest.json").is_file().then(|| d.canonicalize().unwrap())
}

/// A fresh empty folder under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsa-eval-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn medsa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medsa")).arg("eval").args(args).output().unwrap()
}

/// Skip reason, if the run cannot happen here.
fn skip_reason() -> Option<String> {
    if data_dir().is_none() {
        return Some("no ../shared/data/cases2d beside the workspace".into());
    }
    if let Err(e) = medsa_model::lite::find_weights() {
        return Some(format!("LiteMedSAM weights absent ({e})"));
    }
    None
}

/// Writes a manifest with the first two cases of cases2d (absolute paths).
fn two_case_manifest(dir: &Path) -> PathBuf {
    let data = data_dir().unwrap();
    let cases = ["colin27_z78_Thalamus_L", "colin27_z66_Putamen_L"];
    let list: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "case": c,
                "image": data.join(format!("{c}_img.png")),
                "mask": data.join(format!("{c}_mask.png")),
                "pixel_spacing_mm": [1.0, 1.0],
            })
        })
        .collect();
    let p = dir.join("manifest.json");
    std::fs::write(&p, serde_json::to_string_pretty(&list).unwrap()).unwrap();
    p
}

fn run_eval(manifest: &Path, out: &Path, seed: &str) -> String {
    let o = medsa(&[
        "--data",
        manifest.to_str().unwrap(),
        "--prompt",
        "bbox0.75",
        "--prompt",
        "1pt",
        "--seed",
        seed,
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "medsa eval failed:\n{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("bbox0.75") && stdout.contains("1pt"), "summary on stdout:\n{stdout}");
    std::fs::read_to_string(out.join("report.csv")).unwrap()
}

#[test]
fn eval_two_cases_reports_and_is_reproducible() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let dir = temp_dir("two");
    let manifest = two_case_manifest(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    let csv = run_eval(&manifest, &a, "7");
    for f in ["report.md", "report.csv", "report.json", "dice_by_prompt.png"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(a.join("dice_by_prompt.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("row,case,structure,prompt,"), "{}", lines[0]);
    let case_rows: Vec<Vec<&str>> =
        lines.iter().filter(|l| l.starts_with("case,")).map(|l| l.split(',').collect()).collect();
    let mean_rows: Vec<Vec<&str>> =
        lines.iter().filter(|l| l.starts_with("mean,")).map(|l| l.split(',').collect()).collect();
    assert_eq!(case_rows.len(), 4, "2 cases x 2 prompts:\n{csv}");
    assert_eq!(mean_rows.len(), 2, "one mean per prompt:\n{csv}");
    for case in ["colin27_z78_Thalamus_L", "colin27_z66_Putamen_L"] {
        for prompt in ["bbox0.75", "1pt"] {
            let row = case_rows.iter().find(|r| r[1] == case && r[3] == prompt);
            let row = row.unwrap_or_else(|| panic!("no row for {case} {prompt}:\n{csv}"));
            let dice: f64 = row[5].parse().unwrap();
            assert!((0.0..=1.0).contains(&dice), "{row:?}");
        }
    }
    for row in &mean_rows {
        assert_eq!(row[4], "2", "n of {row:?}");
        let (m, lo, hi): (f64, f64, f64) =
            (row[5].parse().unwrap(), row[6].parse().unwrap(), row[7].parse().unwrap());
        assert!(lo <= m && m <= hi, "{row:?}");
    }
    // A box with IoU 0.75 on these small structures: LiteMedSAM gets most of it.
    let box_mean: f64 = mean_rows.iter().find(|r| r[3] == "bbox0.75").unwrap()[5].parse().unwrap();
    assert!(box_mean > 0.5, "bbox0.75 mean Dice {box_mean}");
    let md = std::fs::read_to_string(a.join("report.md")).unwrap();
    assert!(md.contains("| bbox0.75 | fg | 2 |"), "{md}");

    // Same seed, same CSV.
    assert_eq!(run_eval(&manifest, &b, "7"), csv);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_iterative_writes_rounds() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let dir = temp_dir("iter");
    let manifest = two_case_manifest(&dir);
    let out = dir.join("out");
    let o = medsa(&[
        "--data",
        manifest.to_str().unwrap(),
        "--prompt",
        "iterative:3",
        "--limit",
        "1",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rounds = std::fs::read_to_string(out.join("iterative_rounds.csv")).unwrap();
    let rows: Vec<&str> = rounds.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{rounds}");
    assert!(rows[0].starts_with("colin27_z78_Thalamus_L,fg,iterative:3,1,"), "{rounds}");
    // The first click is positive and inside the mask (simulated from the ground truth).
    let first: Vec<&str> = rows[0].split(',').collect();
    assert_eq!(first[6], "1", "{rounds}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn assert_fails(args: &[&str], needle: &str) {
    let o = medsa(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure for {args:?}");
    assert!(err.contains(needle), "stderr of {args:?} lacks {needle:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = temp_dir("bad");
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    // Unknown prompt kind (rejected by the argument parser).
    assert_fails(&["--data", "m.json", "--prompt", "2pt", "--out", out], "unknown prompt kind");
    // Missing manifest.
    let missing = dir.join("nope.json");
    assert_fails(&["--data", missing.to_str().unwrap(), "--prompt", "1pt", "--out", out], "nope.json");
    // Bad JSON.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    assert_fails(&["--data", bad.to_str().unwrap(), "--prompt", "1pt", "--out", out], "parsing manifest");
    // A case whose image does not exist.
    let m = dir.join("m.json");
    std::fs::write(&m, r#"[{"image": "no_such_img.png", "mask": "no_such_mask.png"}]"#).unwrap();
    assert_fails(&["--data", m.to_str().unwrap(), "--prompt", "bbox0.5", "--out", out], "no_such_img.png");
    // 3D without label ids.
    assert_fails(&["--volume", "v.nii.gz", "--prompt", "bbox0.75", "--out", out], "label");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A volume run with `--cache-dir`: the first run writes one embedding per slice, the second
/// reads them back (no encoder run) and reports the same figures.
#[test]
fn eval_volume_reuses_its_embedding_cache() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let colin = data_dir().unwrap().join("../volumes/colin27");
    let dir = temp_dir("cache");
    let cache = dir.join("cache");
    let run = |out: &str| {
        let o = medsa(&[
            "--volume",
            colin.join("ch2.nii.gz").to_str().unwrap(),
            "--labels",
            colin.join("aal.nii.gz").to_str().unwrap(),
            "--label-ids",
            "77",
            "--slices",
            "78-79",
            "--prompt",
            "keybox",
            "--prompt",
            "propagate:extent",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--bootstrap",
            "10",
            "--no-progress",
            "--out",
            dir.join(out).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let csv = std::fs::read_to_string(dir.join(out).join("report.csv")).unwrap();
        // The figures, without the run's timing.
        csv.lines()
            .filter(|l| l.starts_with("case,") || l.starts_with("mean,"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let first = run("a");
    let files = || std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(files(), 2, "one embedding per slice of the slab");
    let modified = |p: std::fs::DirEntry| p.metadata().unwrap().modified().unwrap();
    let before: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| modified(e.unwrap())).collect();
    assert_eq!(run("b"), first, "the cached embeddings give the same report");
    let after: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| modified(e.unwrap())).collect();
    assert_eq!((files(), &after), (2, &before), "nothing re-embedded or rewritten");
    let _ = std::fs::remove_dir_all(&dir);
}
