//! `cargo xtask ci`: everything CI checks, in the order a developer would run it: the pinned
//! NVRTC/ptxas wheels, the LiteMedSAM weights, the whole test suite, every kernel through
//! NVRTC + ptxas, the GPU check table on the CPU emulator, every fuzz target for 30 s, and the golden parity cases.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Arguments of `ci`.
#[derive(clap::Args)]
pub struct CiArgs {
    /// Golden folder for the parity step.
    #[arg(long, default_value = "../shared/golden")]
    golden: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn step(name: &str, cmd: &mut Command) -> Result<()> {
    println!("\n=== ci: {name}");
    let status = cmd.status().with_context(|| format!("starting {name}"))?;
    if !status.success() {
        bail!("ci step `{name}` failed ({status})");
    }
    Ok(())
}

/// Runs the CI steps; stops at the first failure.
pub fn run(args: &CiArgs) -> Result<()> {
    let root = repo_root();
    let out = Command::new("bash")
        .arg(root.join(".ci/cuda-wheels.sh"))
        .output()
        .context("running .ci/cuda-wheels.sh")?;
    if !out.status.success() {
        bail!("installing the CUDA wheels failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lib =
        stdout.lines().find_map(|l| l.strip_prefix("lib=")).context("cuda-wheels.sh printed no lib=")?;
    let ld = match std::env::var("LD_LIBRARY_PATH") {
        Ok(old) if !old.is_empty() => format!("{lib}:{old}"),
        _ => lib.to_string(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_cmd = |args: &[&str]| {
        let mut c = Command::new(&cargo);
        // CI=true: a test whose data, weights or NVRTC are missing fails instead of skipping.
        c.args(args).current_dir(&root).env("LD_LIBRARY_PATH", &ld).env("CI", "true");
        c
    };
    step("fetch LiteMedSAM weights", &mut cargo_cmd(&["run", "-q", "-p", "xtask", "--", "fetch-weights"]))?;
    step("tests", &mut cargo_cmd(&["test", "--workspace", "--no-fail-fast"]))?;
    step("ptx (sm_80, sm_90)", &mut cargo_cmd(&["run", "-q", "-p", "xtask", "--", "ptx"]))?;
    step(
        "gpu-check --emulate (every kernel on the CPU emulator)",
        &mut cargo_cmd(&[
            "run",
            "-q",
            "-p",
            "xtask",
            "--",
            "gpu-check",
            "--emulate",
            "--order",
            "shuffled",
            "--seed",
            "1",
        ]),
    )?;
    step(
        "fuzz (30 s per target)",
        &mut cargo_cmd(&["run", "-q", "-p", "xtask", "--", "fuzz", "--seconds", "30", "--seed", "1"]),
    )?;
    let golden = args.golden.to_string_lossy().into_owned();
    step("golden parity", &mut cargo_cmd(&["run", "-q", "-p", "xtask", "--", "parity", "--quiet", &golden]))?;
    Ok(())
}
