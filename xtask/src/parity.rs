//! `cargo xtask parity PATH...`: runs golden cases on the CPU reference and prints, per output
//! tensor, the max abs error, the error over the allowed limit and PASS/FAIL.

use anyhow::{bail, Context, Result};
use medsa_model::golden::{list_cases, run_case};
use medsa_ref::Cpu;
use std::path::{Path, PathBuf};

/// Arguments of `parity`.
#[derive(clap::Args)]
pub struct ParityArgs {
    /// Golden folders (every case in `index.json`) or case prefixes `DIR/NAME`.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print only failing tensors and the per-case verdicts.
    #[arg(long)]
    quiet: bool,
}

fn expand(path: &Path) -> Result<Vec<(PathBuf, String)>> {
    if path.join("index.json").is_file() {
        let cases = list_cases(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(cases.into_iter().map(|c| (path.to_path_buf(), c)).collect());
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path.file_name().and_then(|n| n.to_str()).context("case path has no name")?;
    if !dir.join(format!("{name}.io.safetensors")).is_file() {
        bail!("{}: neither a golden folder (index.json) nor a case (NAME.io.safetensors)", path.display());
    }
    Ok(vec![(dir, name.to_string())])
}

/// Runs the cases; returns Err if any tensor fails or any case cannot run.
pub fn run(args: &ParityArgs) -> Result<()> {
    let mut cases = Vec::new();
    for p in &args.paths {
        cases.extend(expand(p)?);
    }
    let (mut passed, mut failed) = (0, Vec::new());
    for (dir, name) in &cases {
        let r = run_case(dir, name, &Cpu);
        println!("== {name}");
        if let Some(e) = &r.error {
            println!("   cannot run: {e}");
        }
        for c in &r.checks {
            if args.quiet && c.pass {
                continue;
            }
            let ratio = if c.limit > 0.0 {
                c.max_abs_err / c.limit
            } else if c.max_abs_err == 0.0 {
                0.0
            } else {
                f64::INFINITY
            };
            println!(
                "   {:<52} max_abs {:>10.3e}  err/limit {:>7.4}  {}{}",
                c.name,
                c.max_abs_err,
                ratio,
                if c.pass { "PASS" } else { "FAIL" },
                c.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default()
            );
        }
        let verdict = if r.passed() { "PASS" } else { "FAIL" };
        println!("   {verdict}: {} tensors", r.checks.len());
        if r.passed() {
            passed += 1;
        } else {
            failed.push(name.clone());
        }
    }
    println!("\n{passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        bail!("failing cases: {}", failed.join(", "));
    }
    Ok(())
}
