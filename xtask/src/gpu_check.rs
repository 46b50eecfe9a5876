//! `cargo xtask gpu-check`: every CUDA kernel and Backend op against `medsa-ref` on fresh random
//! inputs of awkward sizes, in f32 (tolerance 1e-4) and bf16 (2e-2) storage; one table with max
//! abs / rel error and a verdict. Exit status 0 when all pass, 1 on any failure, 2 (with
//! "skipped: no CUDA driver") when the machine has no driver.

use anyhow::Result;
use medsa_kernels::check::{run_suite, TOL_BF16, TOL_F32};
use medsa_kernels::{driver_available, Cuda, Precision};

/// Exit status when there is no CUDA driver.
pub const EXIT_NO_DRIVER: i32 = 2;

/// Arguments of `cargo xtask gpu-check`.
#[derive(clap::Args, Debug, Clone)]
pub struct GpuCheckArgs {
    /// Seed of the random inputs (default: from the clock, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Only this precision (f32 or bf16); default both.
    #[arg(long)]
    pub precision: Option<String>,
}

/// Runs the check; returns the process exit status.
pub fn run(args: &GpuCheckArgs) -> Result<i32> {
    if !driver_available() {
        println!("skipped: no CUDA driver");
        return Ok(EXIT_NO_DRIVER);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let precisions = match args.precision.as_deref() {
        None => vec![Precision::F32, Precision::Bf16],
        Some("f32") => vec![Precision::F32],
        Some("bf16") => vec![Precision::Bf16],
        Some(other) => anyhow::bail!("--precision {other}: want f32 or bf16"),
    };
    let mut failed = 0usize;
    let mut total = 0usize;
    println!("seed {seed}; tolerances: f32 {TOL_F32:e}, bf16 {TOL_BF16:e} (rel = max|out-ref|/max|ref|)");
    println!("{:<20} {:<44} {:<5} {:>12} {:>12}  verdict", "op", "shape", "prec", "max abs", "rel");
    for p in precisions {
        let cuda = Cuda::new(args.device, p)?;
        if total == 0 {
            println!("device: {} ({})", cuda.device_name().unwrap_or_default(), cuda.arch().sm());
        }
        for r in run_suite(&cuda, seed).into_iter().chain(crate::gpu_model::checks(&cuda, seed)) {
            total += 1;
            if !r.pass {
                failed += 1;
            }
            let prec = match r.precision {
                Precision::F32 => "f32",
                Precision::Bf16 => "bf16",
            };
            println!(
                "{:<20} {:<44} {:<5} {:>12.3e} {:>12.3e}  {}{}",
                r.op,
                r.shape,
                prec,
                r.max_abs,
                r.rel,
                if r.pass { "ok" } else { "FAIL" },
                r.error.map(|e| format!("  ({e})")).unwrap_or_default()
            );
        }
    }
    println!("{} checks, {} failed", total, failed);
    Ok(if failed == 0 { 0 } else { 1 })
}
