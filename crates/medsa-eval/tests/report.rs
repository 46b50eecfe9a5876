//! Reports: bootstrap intervals, grouping, exclusions, markdown / CSV / JSON / PNG writers.

#![allow(clippy::unwrap_used)]

use medsa_eval::metrics::evaluate;
use medsa_eval::report::{bootstrap_mean_ci, BootstrapConfig};
use medsa_eval::{CaseRecord, Mask, Report};

fn rec(case: &str, structure: &str, prompt: &str, dice: f64, hd95: Option<f64>) -> CaseRecord {
    CaseRecord {
        case: case.into(),
        structure: structure.into(),
        prompt: prompt.into(),
        dice,
        iou: dice / (2.0 - dice),
        hd95,
        assd: hd95.map(|h| h / 2.0),
    }
}

#[test]
fn bootstrap_is_seeded_and_brackets_the_mean() {
    let v: Vec<f64> = (0..40).map(|i| 0.5 + 0.01 * ((i * 37) % 41) as f64).collect();
    let cfg = BootstrapConfig::default();
    let a = bootstrap_mean_ci(&v, &cfg).expect("ok").expect("some");
    let b = bootstrap_mean_ci(&v, &cfg).expect("ok").expect("some");
    assert_eq!(a, b);
    assert_eq!(a.n, 40);
    assert!(a.lo < a.mean && a.mean < a.hi, "{a:?}");
    // Width close to the normal approximation 2 * 1.96 * sd / sqrt(n).
    let sd = (v.iter().map(|x| (x - a.mean).powi(2)).sum::<f64>() / 40.0).sqrt();
    let expected = 2.0 * 1.96 * sd / 40f64.sqrt();
    assert!(((a.hi - a.lo) / expected - 1.0).abs() < 0.15, "width {} vs {expected}", a.hi - a.lo);
    let c = bootstrap_mean_ci(&v, &BootstrapConfig { seed: 1, ..cfg }).expect("ok").expect("some");
    assert_ne!((a.lo, a.hi), (c.lo, c.hi));
    // Degenerate inputs.
    assert_eq!(bootstrap_mean_ci(&[], &cfg).expect("ok"), None);
    let one = bootstrap_mean_ci(&[0.25], &cfg).expect("ok").expect("some");
    assert_eq!((one.mean, one.lo, one.hi), (0.25, 0.25, 0.25));
    assert!(bootstrap_mean_ci(&v, &BootstrapConfig { resamples: 0, ..cfg }).is_err());
    assert!(bootstrap_mean_ci(&v, &BootstrapConfig { confidence: 1.0, ..cfg }).is_err());
}

fn sample_report() -> Report {
    let records = vec![
        rec("a", "thalamus_l", "1pt", 0.8, Some(3.0)),
        rec("b", "thalamus_l", "1pt", 0.6, None),
        rec("a", "thalamus_r", "1pt", 0.7, Some(5.0)),
        rec("a", "thalamus_l", "bbox0.5", 0.9, Some(1.0)),
        rec("b", "thalamus_l", "bbox0.5", 0.95, Some(2.0)),
    ];
    Report::new(records, BootstrapConfig::default()).expect("report")
}

#[test]
fn grouping_and_exclusions() {
    let r = sample_report();
    let keys: Vec<(&str, &str, usize)> =
        r.summaries.iter().map(|s| (s.prompt.as_str(), s.structure.as_str(), s.n)).collect();
    assert_eq!(
        keys,
        vec![
            ("1pt", "thalamus_l", 2),
            ("1pt", "thalamus_r", 1),
            ("1pt", "all", 3),
            ("bbox0.5", "thalamus_l", 2)
        ]
    );
    let l = &r.summaries[0];
    assert!((l.dice.mean - 0.7).abs() < 1e-12);
    assert_eq!(l.hd95_excluded, 1);
    let hd = l.hd95.expect("one defined value");
    assert_eq!((hd.n, hd.mean), (1, 3.0));
    let all = &r.summaries[2];
    assert!((all.dice.mean - 0.7).abs() < 1e-12);
    assert_eq!(all.hd95.expect("some").mean, 4.0);
    let per_prompt: Vec<(&str, &str)> =
        r.per_prompt().iter().map(|s| (s.prompt.as_str(), s.structure.as_str())).collect();
    assert_eq!(per_prompt, vec![("1pt", "all"), ("bbox0.5", "thalamus_l")]);
}

#[test]
fn markdown_and_csv() {
    let r = sample_report();
    let md = r.to_markdown();
    assert!(md.starts_with("| prompt | structure | n | Dice [95% CI]"));
    assert!(md.contains("| 1pt | thalamus_l | 2 | 0.7000 ["));
    assert!(md.contains("| b | thalamus_l | 1pt | 0.6000 | 0.4286 | n/a | n/a |"));
    let csv = r.to_csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + 5 + 4);
    let cols = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == cols), "ragged CSV");
    assert_eq!(lines[2], "case,b,thalamus_l,1pt,1,0.600000,,,0.428571,,,,,,,,,");
    assert!(lines[6].starts_with("mean,,thalamus_l,1pt,2,0.700000,"));
    assert!(lines[6].ends_with(",1"));
    // Quoting of awkward names.
    let q =
        Report::new(vec![rec("x,\"y\"", "s", "1pt", 1.0, Some(0.0))], BootstrapConfig::default()).expect("r");
    assert!(q.to_csv().lines().nth(1).expect("row").starts_with("case,\"x,\"\"y\"\"\",s,"));
    let json = r.to_json().expect("json");
    let back: Report = serde_json::from_str(&json).expect("parse");
    // serde_json's default float parsing may differ in the last ulp, so compare the CSV.
    assert_eq!(back.to_csv(), r.to_csv());
}

#[test]
fn report_from_real_metrics_and_files() {
    let gt = Mask::from_fn(&[32, 32], |i| (8..24).contains(&i[0]) && (8..24).contains(&i[1])).expect("gt");
    let mut records = Vec::new();
    for (k, prompt) in ["1pt", "3pt", "bbox0.5", "bbox0.75", "iterative:5"].iter().enumerate() {
        for case in 0..4 {
            let shift = (case + k) % 4;
            let pred = Mask::from_fn(&[32, 32], |i| {
                (8 + shift..24).contains(&i[0]) && (8..24 - shift / 2).contains(&i[1])
            })
            .expect("pred");
            let m = evaluate(&pred, &gt, &[0.8, 0.8]).expect("metrics");
            records.push(CaseRecord::new(format!("case{case}"), "fg", *prompt, &m));
        }
    }
    let r = Report::new(records, BootstrapConfig { resamples: 500, ..Default::default() }).expect("report");
    assert_eq!(r.summaries.len(), 5);
    let dir = std::env::temp_dir().join(format!("medsa-eval-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    r.write_markdown(&dir.join("report.md")).expect("md");
    r.write_csv(&dir.join("report.csv")).expect("csv");
    r.write_json(&dir.join("report.json")).expect("json");
    let png = dir.join("dice.png");
    r.write_chart(&png).expect("png");
    let img = image::open(&png).expect("read png").to_rgb8();
    assert_eq!(img.dimensions(), (640, 400));
    // The bars are drawn: some pixels have the first palette colour.
    assert!(img.pixels().any(|p| p.0 == [31, 119, 180]));
    assert!(std::fs::read_to_string(dir.join("report.csv")).expect("csv").starts_with("row,case,"));
    // A write into a missing directory is a typed error naming the path.
    let err = r.write_csv(&dir.join("missing").join("x.csv")).expect_err("missing dir");
    assert!(err.to_string().contains("missing"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
    // Chart size limits.
    assert!(r.dice_chart(10, 10).is_err());
}
