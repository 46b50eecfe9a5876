//! `cargo xtask parity PATH...`: runs golden cases on the CPU reference and prints, per output
//! tensor, the max abs error, the error over the allowed limit and PASS/FAIL. A folder runs its
//! forward cases (`index.json`) and its training cases (`index-train.json`);
//! `--write-outputs DIR` also writes each case's computed `out.*` tensors to
//! `DIR/NAME.safetensors` under the reference names, for independent checkers.

use anyhow::{bail, Context, Result};
use medsa_model::golden::{list_cases, run_case, CaseReport};
use medsa_model::train::golden as train_golden;
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
    /// Also write each case's computed outputs to DIR/NAME.safetensors (names `out.*`).
    #[arg(long, value_name = "DIR")]
    write_outputs: Option<PathBuf>,
}

/// A case and which runner it takes.
struct Case {
    dir: PathBuf,
    name: String,
    train: bool,
}

fn expand(path: &Path) -> Result<Vec<Case>> {
    if path.join("index.json").is_file() {
        let fwd = list_cases(path).with_context(|| format!("reading {}", path.display()))?;
        let train = train_golden::list_cases(path).with_context(|| format!("reading {}", path.display()))?;
        let case = |name: String, train: bool| Case { dir: path.to_path_buf(), name, train };
        return Ok(fwd
            .into_iter()
            .map(|c| case(c, false))
            .chain(train.into_iter().map(|c| case(c, true)))
            .collect());
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path.file_name().and_then(|n| n.to_str()).context("case path has no name")?;
    if !dir.join(format!("{name}.io.safetensors")).is_file() {
        bail!("{}: neither a golden folder (index.json) nor a case (NAME.io.safetensors)", path.display());
    }
    let train = train_golden::list_cases(&dir)?.iter().any(|c| c == name);
    Ok(vec![Case { dir, name: name.to_string(), train }])
}

/// Writes a case's computed outputs as `dir/NAME.safetensors` under the reference names.
fn write_outputs(dir: &Path, r: &CaseReport) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let named: Vec<(String, medsa_core::Tensor)> =
        r.outputs.iter().map(|(k, v)| (format!("out.{k}"), v.clone())).collect();
    medsa_model::weights::write_safetensors(&dir.join(format!("{}.safetensors", r.name)), &named, None)?;
    Ok(())
}

/// Runs the cases; returns Err if any tensor fails or any case cannot run.
pub fn run(args: &ParityArgs) -> Result<()> {
    let mut cases = Vec::new();
    for p in &args.paths {
        cases.extend(expand(p)?);
    }
    let (mut passed, mut failed) = (0, Vec::new());
    for case in &cases {
        let name = &case.name;
        let r: CaseReport = if case.train {
            train_golden::run_case(&case.dir, name, &Cpu)
        } else {
            run_case(&case.dir, name, &Cpu)
        };
        if let Some(dir) = &args.write_outputs {
            write_outputs(dir, &r)?;
        }
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
