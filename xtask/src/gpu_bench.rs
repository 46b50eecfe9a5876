//! `cargo xtask bench` (GPU part): CUDA-event medians of the attention kernels at the ViT-B and
//! ViT-H shapes (bf16), their TFLOP/s, the share of the bf16 GEMM rate cuBLAS reaches in the same
//! run, and the ratio against the naive path (cuBLAS Q·Kᵀ, materialised bias, softmax kernel,
//! cuBLAS P·V) in the same run. Exit status 2 with "skipped: no CUDA driver" without a driver.

use anyhow::{Context, Result};
use cudarc::driver::sys::CUevent_flags;
use medsa_kernels::cuda::{AttentionKernel, AttnShape, DBuf};
use medsa_kernels::cudarc;
use medsa_kernels::device::KernelArgs;
use medsa_kernels::geometry;
use medsa_kernels::source::{KernelConfig, Storage};
use medsa_kernels::{driver_available, Cuda, Precision};
use medsa_testkit::Rng;

/// Arguments of `cargo xtask bench` (GPU part).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Timed repetitions per case (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median milliseconds of `f` over `iters` runs (after two warm-ups), timed with CUDA events.
pub fn time_ms(cuda: &Cuda, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f32> {
    let st = cuda.driver().context("timing needs a GPU (CUDA events)")?.stream();
    let ctx = st.context();
    f()?;
    f()?;
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let a = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        let b = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        a.record(st)?;
        f()?;
        b.record(st)?;
        b.synchronize()?;
        v.push(a.elapsed_ms(&b)?);
    }
    Ok(median(v))
}

fn upload_bf16(cuda: &Cuda, rng: &mut Rng, n: usize, scale: f32) -> Result<DBuf> {
    let v: Vec<f32> = (0..n).map(|_| rng.uniform() * scale).collect();
    Ok(cuda.upload_slice(&v, Storage::Bf16)?)
}

/// bf16 GEMM rate (TFLOP/s) of the device's GEMM on an `n x n x n` problem.
fn cublas_rate(cuda: &Cuda, iters: usize, n: usize) -> Result<f64> {
    let mut rng = Rng::new(3);
    let a = upload_bf16(cuda, &mut rng, n * n, 1.0)?;
    let b = upload_bf16(cuda, &mut rng, n * n, 1.0)?;
    let mut c = cuda.alloc(n * n, Storage::Bf16)?;
    let ms =
        time_ms(cuda, iters, || Ok(cuda.gemm_dev(&a, &b, &mut c, 1, (n, n, n), (false, false), (0, 0))?))?;
    Ok(2.0 * (n as f64).powi(3) / (ms as f64 * 1e-3) / 1e12)
}

struct Case {
    name: &'static str,
    bh: usize,
    grid: usize,
    hd: usize,
    kernel: AttentionKernel,
}

/// The naive path: rel tables, S = Q Kᵀ (GEMM), S = scale S + bias (materialised), softmax,
/// O = P V (GEMM).
#[allow(clippy::too_many_arguments)]
fn naive(
    cuda: &Cuda,
    s: &AttnShape,
    q: &DBuf,
    k: &DBuf,
    v: &DBuf,
    o: &mut DBuf,
    logits: &mut DBuf,
    rel: &(DBuf, DBuf),
    rel_out: &DBuf,
) -> Result<()> {
    let (bh, nq, nk, hd) = (s.bh, s.nq, s.nk, s.hd);
    let ((qh, qw), (kh, kw)) = s.grids.unwrap_or(((nq, 1), (nk, 1)));
    // Per-query tables with the attention module's own kernel (attention_rel_tables).
    let p = medsa_kernels::params::AttnParams {
        q: q.addr(),
        rh: rel.0.addr(),
        rw: rel.1.addr(),
        q_sb: (nq * hd) as i64,
        q_sr: hd as i32,
        heads: 1,
        nq: nq as i32,
        nk: nk as i32,
        qh: qh as i32,
        qw: qw as i32,
        kh: kh as i32,
        kw: kw as i32,
        scale: s.scale,
        ..Default::default()
    };
    let mut a = KernelArgs::new();
    a.push(&p).push(&rel_out.addr());
    cuda.launch(
        &KernelConfig::attention(hd),
        "attention_rel_tables",
        &geometry::attention_rel_tables(nq, bh, kh, kw)?,
        &a,
    )?;
    // S [bh, nq, nk] = Q [bh, nq, hd] K[bh, nk, hd]ᵀ
    cuda.gemm_dev(q, k, logits, bh, (nq, nk, hd), (false, true), (nq * hd, nk * hd))?;
    let ew = KernelConfig::elementwise(Storage::Bf16);
    let (bhi, nqi, nki, khi, kwi) = (bh as i32, nq as i32, nk as i32, kh as i32, kw as i32);
    let mut a = KernelArgs::new();
    a.push(&logits.addr())
        .push(&rel_out.addr())
        .push(&bhi)
        .push(&nqi)
        .push(&nki)
        .push(&khi)
        .push(&kwi)
        .push(&s.scale);
    cuda.launch(&ew, "attention_add_rel_bias", &geometry::elementwise(bh * nq * nk), &a)?;
    let mut a = KernelArgs::new();
    a.push(&logits.addr()).push(&logits.addr()).push(&((bh * nq) as i64)).push(&nki);
    cuda.launch(&ew, "softmax_fwd", &geometry::rows(bh * nq)?, &a)?;
    // O [bh, nq, hd] = P [bh, nq, nk] V [bh, nk, hd]
    cuda.gemm_dev(logits, v, o, bh, (nq, hd, nk), (false, false), (nq * nk, nk * hd))?;
    Ok(())
}

/// Runs the GPU benchmarks; returns the process exit status.
pub fn run(args: &BenchArgs) -> Result<i32> {
    if !driver_available() {
        println!("skipped: no CUDA driver");
        return Ok(crate::gpu_check::EXIT_NO_DRIVER);
    }
    let cuda = Cuda::new(args.device, Precision::Bf16)?;
    println!("device: {}", cuda.device_name());
    let gemm = cublas_rate(&cuda, args.iters, 8192)?;
    println!("cuBLAS bf16 GEMM 8192^3 (through the device seam): {gemm:.1} TFLOP/s");
    let cases = [
        Case { name: "attention flash ViT-B b1", bh: 12, grid: 64, hd: 64, kernel: AttentionKernel::Flash },
        Case { name: "attention flash ViT-B b8", bh: 96, grid: 64, hd: 64, kernel: AttentionKernel::Flash },
        Case { name: "attention flash ViT-H b1", bh: 16, grid: 64, hd: 80, kernel: AttentionKernel::Flash },
        Case {
            name: "attention window ViT-B b1",
            bh: 25 * 12,
            grid: 14,
            hd: 64,
            kernel: AttentionKernel::Window,
        },
        Case {
            name: "attention window ViT-H b1",
            bh: 25 * 16,
            grid: 14,
            hd: 80,
            kernel: AttentionKernel::Window,
        },
        Case {
            name: "attention window ViT-H b8",
            bh: 8 * 25 * 16,
            grid: 14,
            hd: 80,
            kernel: AttentionKernel::Window,
        },
    ];
    println!(
        "{:<26} {:<22} {:>10} {:>9} {:>9} {:>11} {:>8}",
        "kernel", "shape", "median ms", "TFLOP/s", "% cuBLAS", "naive ms", "speedup"
    );
    let mut rng = Rng::new(11);
    for c in cases {
        let n = c.grid * c.grid;
        let grids = Some(((c.grid, c.grid), (c.grid, c.grid)));
        let shape = AttnShape::contiguous(c.bh, n, n, c.hd, grids, 1.0 / (c.hd as f32).sqrt());
        let q = upload_bf16(&cuda, &mut rng, c.bh * n * c.hd, 1.0)?;
        let k = upload_bf16(&cuda, &mut rng, c.bh * n * c.hd, 1.0)?;
        let v = upload_bf16(&cuda, &mut rng, c.bh * n * c.hd, 1.0)?;
        let mut o = cuda.alloc(c.bh * n * c.hd, Storage::Bf16)?;
        let table: Vec<f32> = (0..c.grid * c.grid * c.hd).map(|_| rng.uniform() * 0.1).collect();
        let rel = (cuda.upload_f32(&table)?, cuda.upload_f32(&table)?);
        let scratch = cuda.alloc(c.bh * n * 2 * c.grid, Storage::F32)?;
        let ms = time_ms(&cuda, args.iters, || {
            cuda.attention_tc_dev(
                &q,
                &k,
                &v,
                &mut o,
                &shape,
                Some((&rel.0, &rel.1)),
                Some(&scratch),
                Some(c.kernel),
            )?;
            Ok(())
        })?;
        let flops = 4.0 * (c.bh * n * n * c.hd) as f64;
        let tf = flops / (ms as f64 * 1e-3) / 1e12;
        let logits_bytes = c.bh * n * n * 2;
        let naive_ms = if logits_bytes < (24usize << 30) {
            let mut logits = cuda.alloc(c.bh * n * n, Storage::Bf16)?;
            let mut o2 = cuda.alloc(c.bh * n * c.hd, Storage::Bf16)?;
            Some(time_ms(&cuda, args.iters, || {
                naive(&cuda, &shape, &q, &k, &v, &mut o2, &mut logits, &rel, &scratch)
            })?)
        } else {
            None
        };
        println!(
            "{:<26} {:<22} {:>10.3} {:>9.1} {:>8.1}% {:>11} {:>8}",
            c.name,
            format!("bh{} {}x{} d{}", c.bh, c.grid, c.grid, c.hd),
            ms,
            tf,
            100.0 * tf / gemm,
            naive_ms.map_or("-".into(), |m| format!("{m:.3}")),
            naive_ms.map_or("-".into(), |m| format!("{:.2}x", m / ms)),
        );
    }
    crate::gpu_model::encoder_bench(&cuda, 5)?;
    Ok(0)
}
