//! The CPU half of `cargo xtask bench`: runs the criterion benches of `medsa-benches` and prints
//! their medians with GFLOP/s and the ratio to the GEMM rate measured in the same run.

use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

/// Runs `cargo bench -p medsa-benches` and summarises `target/criterion/*/new/estimates.json`.
pub fn run(filter: Option<&str>) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["bench", "-p", "medsa-benches", "--"]).current_dir(root);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    let status = cmd.status().context("running cargo bench")?;
    anyhow::ensure!(status.success(), "cargo bench failed ({status})");
    summarise(&root.join("target/criterion"))
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Prints one row per benchmark: median time, throughput (GFLOP/s when the bench declares its
/// FLOPs as elements), and the share of the GEMM rate.
pub fn summarise(dir: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for group in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
        for bench in std::fs::read_dir(group.path()).into_iter().flatten().flatten() {
            let new = bench.path().join("new");
            let (Some(est), Some(b)) =
                (read_json(&new.join("estimates.json")), read_json(&new.join("benchmark.json")))
            else {
                continue;
            };
            let median_ns = est["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
            let flops = b["throughput"]["Elements"].as_f64();
            rows.push((b["full_id"].as_str().unwrap_or("?").to_string(), median_ns, flops));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let gemm_rate = rows.iter().find(|r| r.0.starts_with("linear/")).and_then(|r| r.2.map(|f| f / r.1));
    println!("\n{:<48} {:>12} {:>10} {:>10}", "benchmark (criterion median)", "time", "GFLOP/s", "of GEMM");
    for (id, ns, flops) in &rows {
        let rate = flops.map(|f| f / ns);
        let share = match (rate, gemm_rate) {
            (Some(r), Some(g)) => format!("{:.0}%", 100.0 * r / g),
            _ => "-".into(),
        };
        let t = if *ns > 1e9 { format!("{:.3} s", ns / 1e9) } else { format!("{:.2} ms", ns / 1e6) };
        println!(
            "{:<48} {:>12} {:>10} {:>10}",
            id,
            t,
            rate.map(|r| format!("{r:.1}")).unwrap_or("-".into()),
            share
        );
    }
    Ok(())
}
