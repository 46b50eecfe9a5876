//! `cargo xtask gpu-check`: every CUDA kernel and Backend op against `medsa-ref` on fresh random
//! inputs of awkward sizes, in f32 (tolerance 1e-4) and bf16 (2e-2) storage, plus the prelude
//! probes and the whole-model checks; one table with max abs / rel error and a verdict. On a GPU
//! by default; `--emulate` runs the same table on the CPU emulator (reported as emulated, never
//! as a GPU pass). Exit status 0 when all pass, 1 on any failure, 2 (with "skipped: no CUDA
//! driver") when asked for a GPU on a machine without a driver.

use anyhow::Result;
use medsa_kernels::check::{run_suite, CheckRow, TOL_BF16, TOL_F32};
use medsa_kernels::probe::run_probes;
use medsa_kernels::{driver_available, Cuda, DeviceKind, EmuOptions, Precision, ThreadOrder};

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
    /// Run on the CPU emulator of the device instead of a GPU (the same kernel sources compiled as
    /// C++; results are reported as emulated).
    #[arg(long)]
    pub emulate: bool,
    /// Emulator thread order: forward, reverse, shuffled (seeded by --seed), or concurrent (every
    /// CUDA thread a host thread with real barriers; slow).
    #[arg(long, default_value = "forward")]
    pub order: String,
}

fn print_row(r: &CheckRow, kind: DeviceKind) {
    println!(
        "{:<24} {:<44} {:<5} {:>12.3e} {:>12.3e}  {}{}",
        r.op,
        r.shape,
        r.precision.name(),
        r.max_abs,
        r.rel,
        match (r.pass, kind) {
            (true, DeviceKind::Gpu) => "ok",
            (true, DeviceKind::Emulated) => "ok (emulated)",
            (false, _) => "FAIL",
        },
        r.error.as_ref().map(|e| format!("  ({e})")).unwrap_or_default()
    );
}

/// Runs the check; returns the process exit status.
pub fn run(args: &GpuCheckArgs) -> Result<i32> {
    if !args.emulate && !driver_available() {
        println!("skipped: no CUDA driver (use --emulate for the CPU emulator)");
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
    let order = match args.order.as_str() {
        "forward" => ThreadOrder::Forward,
        "reverse" => ThreadOrder::Reverse,
        "shuffled" => ThreadOrder::Shuffled(seed),
        "concurrent" => ThreadOrder::Concurrent,
        other => anyhow::bail!("--order {other}: want forward, reverse, shuffled or concurrent"),
    };
    let open = |p: Precision| -> Result<Cuda> {
        Ok(if args.emulate {
            Cuda::emulated(p, EmuOptions { order, ..Default::default() })?
        } else {
            Cuda::new(args.device, p)?
        })
    };
    let (mut failed, mut total) = (0usize, 0usize);
    println!("seed {seed}; tolerances: f32 {TOL_F32:e}, bf16 {TOL_BF16:e} (rel = max|out-ref|/max|ref|)");
    for (i, &p) in precisions.iter().enumerate() {
        let cuda = open(p)?;
        let kind = cuda.kind();
        let mut rows = Vec::new();
        if i == 0 {
            println!("device: {} [{}]", cuda.device_name(), kind.label());
            println!("{:<24} {:<44} {:<5} {:>12} {:>12}  verdict", "op", "shape", "prec", "max abs", "rel");
            rows.extend(run_probes(cuda.device().as_ref(), seed));
        }
        rows.extend(run_suite(&cuda, seed));
        rows.extend(crate::gpu_model::checks(&cuda, seed));
        for r in &rows {
            total += 1;
            failed += usize::from(!r.pass);
            print_row(r, kind);
        }
    }
    let what = if args.emulate { " (emulated on the CPU, not a GPU result)" } else { "" };
    println!("{total} checks, {failed} failed{what}");
    Ok(if failed == 0 { 0 } else { 1 })
}
