//! `cargo xtask gpu-bundle`: what a lent GPU machine (no Rust toolchain, no registry) needs to run
//! `scripts/gpu-session.sh`: release `medsa` and `xtask` binaries (x86-64, debug info stripped),
//! the PTX of every kernel config for sm_80 and sm_90, and the `segment_anything` wheel of the
//! official-SAM baseline (`scripts/torch_baselines.py` imports it from the zip), in
//! `target/gpu-bundle`.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Arguments of `gpu-bundle`.
#[derive(clap::Args, Debug, Clone)]
pub struct GpuBundleArgs {
    /// Output folder (default: <repo>/target/gpu-bundle).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds the bundle.
pub fn run_bundle(args: &GpuBundleArgs) -> Result<()> {
    let root = crate::ptx::repo_root();
    let out = args.out.clone().unwrap_or_else(|| root.join("target/gpu-bundle"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(&cargo)
            .args(["build", "--release", "-p", "medsa-cli", "-p", "xtask"])
            .current_dir(&root),
        "cargo build --release",
    )?;
    for bin in ["medsa", "xtask"] {
        let dst = out.join(bin);
        let tmp = out.join(format!("{bin}.tmp"));
        std::fs::copy(root.join("target/release").join(bin), &tmp)
            .with_context(|| format!("copying {bin}"))?;
        run(Command::new("strip").arg("--strip-debug").arg(&tmp), "strip")?;
        std::fs::rename(&tmp, &dst).with_context(|| format!("writing {}", dst.display()))?;
    }
    // The pinned NVRTC / ptxas wheels (.ci/cuda-wheels.sh) compile the PTX.
    let lib = crate::ptx::wheels_dir(None).join("nvidia/cu13/lib");
    let ld = match std::env::var("LD_LIBRARY_PATH") {
        Ok(old) if !old.is_empty() => format!("{}:{old}", lib.display()),
        _ => lib.display().to_string(),
    };
    run(
        Command::new(out.join("xtask"))
            .arg("ptx")
            .arg("--out")
            .arg(out.join("ptx"))
            .env("LD_LIBRARY_PATH", ld)
            .current_dir(&root),
        "xtask ptx (run .ci/cuda-wheels.sh first if NVRTC is missing)",
    )?;
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // The official SAM code for the PyTorch baseline: a pure-Python wheel from PyPI.
    let wheels = out.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    let sam_wheel = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&wheels)
        .arg(SEGMENT_ANYTHING)
        .status()
        .is_ok_and(|s| s.success());
    let sam_note = if sam_wheel {
        format!("{SEGMENT_ANYTHING} wheel carried")
    } else {
        eprintln!("warning: `pip download {SEGMENT_ANYTHING}` failed: the official-SAM baseline will fail on the GPU");
        format!("NO {SEGMENT_ANYTHING} wheel (pip download failed)")
    };
    let note = format!("commit {rev}, built {}, {sam_note}", utc_now());
    std::fs::write(out.join("BUNDLE.txt"), &note)?;
    let size: u64 = dir_size(&out);
    println!(
        "{}: {note}, {:.1} MiB (carry it with scripts/gpu-session.sh)",
        out.display(),
        size as f64 / 1048576.0
    );
    Ok(())
}

/// The official Segment Anything release on PyPI (the baseline's model code).
const SEGMENT_ANYTHING: &str = "segment-anything==1.0";

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%FT%TZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The carried script checks its bundle before anything else (exit 3, naming the fix).
    #[test]
    fn gpu_session_script_reports_a_missing_bundle() {
        let root = crate::ptx::repo_root();
        let out = std::env::temp_dir().join(format!("medsa-gpu-session-{}", std::process::id()));
        let o = Command::new("bash")
            .arg(root.join("scripts/gpu-session.sh"))
            .arg("--dry-run")
            .env("MEDSA_BUNDLE", out.join("no-bundle"))
            .env("OUT", &out)
            .current_dir(&root)
            .output()
            .expect("bash runs");
        assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stdout));
        let summary = std::fs::read_to_string(out.join("summary.txt")).expect("summary written");
        assert!(summary.contains("cargo xtask gpu-bundle"), "{summary}");
        let _ = std::fs::remove_dir_all(&out);
    }

    /// The PyTorch-baseline script without torch (this machine): a dry run says it measured
    /// nothing and passes; a real run fails. With torch present, a dry run measures on the CPU.
    #[test]
    fn torch_baselines_script_reports_what_it_could_not_measure() {
        let root = crate::ptx::repo_root();
        let out = std::env::temp_dir().join(format!("medsa-torch-baselines-{}", std::process::id()));
        let run = |dry: bool| {
            let mut c = Command::new("python3");
            c.arg(root.join("scripts/torch_baselines.py")).arg(&out);
            if dry {
                c.arg("--dry-run");
            }
            let o = c.output().expect("python3 runs");
            let table = std::fs::read_to_string(out.join("torch-baselines.txt")).expect("table written");
            (o.status.code(), table)
        };
        let (dry_rc, table) = run(true);
        if table.contains("torch is not importable") {
            assert_eq!(dry_rc, Some(0), "{table}");
            assert!(table.contains("nothing was measured"), "{table}");
            assert_eq!(run(false).0, Some(1));
        } else {
            assert_eq!(dry_rc, Some(0), "{table}");
            assert!(table.contains("sdpa ViT-B b1") && table.contains("dry run"), "{table}");
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}
