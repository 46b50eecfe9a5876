//! `cargo xtask bench` (GPU part): CUDA-event medians of the attention kernels at the ViT-B and
//! ViT-H shapes (bf16), their TFLOP/s, the share of the bf16 GEMM rate cuBLAS reaches in the same
//! run, and the ratio against the naive path (cuBLAS Q·Kᵀ, materialised bias, softmax kernel,
//! cuBLAS P·V) in the same run. Exit status 2 with "skipped: no CUDA driver" without a driver.

use anyhow::Result;
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use half::bf16;
use medsa_kernels::check::Rng;
use medsa_kernels::cuda::{AttnShape, TcKernel};
use medsa_kernels::cudarc;
use medsa_kernels::geometry;
use medsa_kernels::source::{KernelConfig, Storage};
use medsa_kernels::{driver_available, Cuda, Precision};

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
fn time_ms(cuda: &Cuda, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f32> {
    let st = cuda.stream();
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

fn upload_bf16(cuda: &Cuda, rng: &mut Rng, n: usize, scale: f32) -> Result<CudaSlice<bf16>> {
    let v: Vec<bf16> = (0..n).map(|_| bf16::from_f32(rng.uniform() * scale)).collect();
    Ok(cuda.stream().clone_htod(&v)?)
}

/// bf16 cuBLAS GEMM rate (TFLOP/s) on an `n x n x n` problem.
fn cublas_rate(cuda: &Cuda, iters: usize, n: usize) -> Result<f64> {
    let mut rng = Rng::new(3);
    let a = upload_bf16(cuda, &mut rng, n * n, 1.0)?;
    let b = upload_bf16(cuda, &mut rng, n * n, 1.0)?;
    let mut c = cuda.stream().alloc_zeros::<bf16>(n * n)?;
    let ni = n as i32;
    let cfg = GemmConfig {
        transa: CUBLAS_OP_N,
        transb: CUBLAS_OP_N,
        m: ni,
        n: ni,
        k: ni,
        alpha: bf16::ONE,
        lda: ni,
        ldb: ni,
        beta: bf16::ZERO,
        ldc: ni,
    };
    let ms = time_ms(cuda, iters, || {
        // SAFETY: all three buffers hold n*n elements.
        unsafe { cuda.blas().gemm(cfg, &a, &b, &mut c) }?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / (ms as f64 * 1e-3) / 1e12)
}

struct Case {
    name: &'static str,
    bh: usize,
    grid: usize,
    hd: usize,
    kernel: TcKernel,
}

/// The naive path: rel tables, S = Q Kᵀ (cuBLAS), S = scale S + bias (materialised), softmax,
/// O = P V (cuBLAS).
#[allow(clippy::too_many_arguments)]
fn naive(
    cuda: &Cuda,
    s: &AttnShape,
    q: &CudaSlice<bf16>,
    k: &CudaSlice<bf16>,
    v: &CudaSlice<bf16>,
    o: &mut CudaSlice<bf16>,
    logits: &mut CudaSlice<bf16>,
    rel: &(CudaSlice<f32>, CudaSlice<f32>),
    rel_out: &CudaSlice<f32>,
) -> Result<()> {
    let st = cuda.stream();
    let (bh, nq, nk, hd) = (s.bh, s.nq, s.nk, s.hd);
    let ((qh, qw), (kh, kw)) = s.grids.unwrap_or(((nq, 1), (nk, 1)));
    // Per-query tables with the attention module's own kernel (rel_tables_fwd).
    let f = cuda.function(&KernelConfig::attention(hd), "rel_tables_fwd")?;
    let p = medsa_kernels::params::AttnParams {
        q: q.device_ptr(st).0,
        rh: rel.0.device_ptr(st).0,
        rw: rel.1.device_ptr(st).0,
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
    let l = geometry::rel_tables(nq, bh, kh, kw)?;
    let out = rel_out.device_ptr(st).0;
    let mut b = st.launch_builder(&f);
    b.arg(&p).arg(&out);
    // SAFETY: rel_out holds bh*nq*(kh+kw) floats.
    unsafe { b.launch(LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: 0 }) }?;
    // S^T (col-major nk x nq) = K (op T, lda hd) * Q (lda hd).
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig {
            transa: CUBLAS_OP_T,
            transb: CUBLAS_OP_N,
            m: nk as i32,
            n: nq as i32,
            k: hd as i32,
            alpha: bf16::ONE,
            lda: hd as i32,
            ldb: hd as i32,
            beta: bf16::ZERO,
            ldc: nk as i32,
        },
        batch_size: bh as i32,
        stride_a: (nk * hd) as i64,
        stride_b: (nq * hd) as i64,
        stride_c: (nq * nk) as i64,
    };
    // SAFETY: strides describe the contiguous [bh, n, hd] / [bh, nq, nk] buffers.
    unsafe { cuda.blas().gemm_strided_batched(cfg, k, q, logits) }?;
    let ew = KernelConfig::elementwise(Storage::Bf16);
    let f = cuda.function(&ew, "add_rel_bias")?;
    let sp = logits.device_ptr(st).0;
    let (bhi, nqi, nki, khi, kwi) = (bh as i32, nq as i32, nk as i32, kh as i32, kw as i32);
    let l = geometry::elementwise(bh * nq * nk);
    let mut b = st.launch_builder(&f);
    b.arg(&sp).arg(&out).arg(&bhi).arg(&nqi).arg(&nki).arg(&khi).arg(&kwi).arg(&s.scale);
    // SAFETY: logits hold bh*nq*nk elements, rel_out bh*nq*(kh+kw).
    unsafe { b.launch(LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: 0 }) }?;
    let f = cuda.function(&ew, "softmax_last")?;
    let rows = (bh * nq) as i64;
    let l = geometry::rows(bh * nq)?;
    let mut b = st.launch_builder(&f);
    b.arg(&sp).arg(&sp).arg(&rows).arg(&nki);
    // SAFETY: in-place row softmax over bh*nq rows of nk.
    unsafe { b.launch(LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: 0 }) }?;
    // O^T (hd x nq) = V^T (hd x nk, lda hd) * P^T (nk x nq, ldb nk).
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_N,
            m: hd as i32,
            n: nq as i32,
            k: nk as i32,
            alpha: bf16::ONE,
            lda: hd as i32,
            ldb: nk as i32,
            beta: bf16::ZERO,
            ldc: hd as i32,
        },
        batch_size: bh as i32,
        stride_a: (nk * hd) as i64,
        stride_b: (nq * nk) as i64,
        stride_c: (nq * hd) as i64,
    };
    // SAFETY: as above.
    unsafe { cuda.blas().gemm_strided_batched(cfg, v, logits, o) }?;
    Ok(())
}

/// Runs the GPU benchmarks; returns the process exit status.
pub fn run(args: &BenchArgs) -> Result<i32> {
    if !driver_available() {
        println!("skipped: no CUDA driver");
        return Ok(crate::gpu_check::EXIT_NO_DRIVER);
    }
    let cuda = Cuda::new(args.device, Precision::Bf16)?;
    println!("device: {} ({})", cuda.device_name().unwrap_or_default(), cuda.arch().sm());
    let gemm = cublas_rate(&cuda, args.iters, 8192)?;
    println!("cuBLAS bf16 GEMM 8192^3: {gemm:.1} TFLOP/s");
    let cases = [
        Case { name: "global ViT-B b1", bh: 12, grid: 64, hd: 64, kernel: TcKernel::Flash },
        Case { name: "global ViT-B b8", bh: 96, grid: 64, hd: 64, kernel: TcKernel::Flash },
        Case { name: "global ViT-H b1", bh: 16, grid: 64, hd: 80, kernel: TcKernel::Flash },
        Case { name: "window ViT-B b1", bh: 25 * 12, grid: 14, hd: 64, kernel: TcKernel::Window },
        Case { name: "window ViT-H b1", bh: 25 * 16, grid: 14, hd: 80, kernel: TcKernel::Window },
        Case { name: "window ViT-H b8", bh: 8 * 25 * 16, grid: 14, hd: 80, kernel: TcKernel::Window },
    ];
    println!(
        "{:<18} {:<22} {:>10} {:>9} {:>9} {:>11} {:>8}",
        "kernel", "shape", "median ms", "TFLOP/s", "% cuBLAS", "naive ms", "speedup"
    );
    let mut rng = Rng::new(11);
    for c in cases {
        let n = c.grid * c.grid;
        let shape = AttnShape {
            bh: c.bh,
            nq: n,
            nk: n,
            hd: c.hd,
            grids: Some(((c.grid, c.grid), (c.grid, c.grid))),
            scale: 1.0 / (c.hd as f32).sqrt(),
        };
        let q = upload_bf16(&cuda, &mut rng, c.bh * n * c.hd, 1.0)?;
        let k = upload_bf16(&cuda, &mut rng, c.bh * n * c.hd, 1.0)?;
        let v = upload_bf16(&cuda, &mut rng, c.bh * n * c.hd, 1.0)?;
        let mut o = cuda.stream().alloc_zeros::<bf16>(c.bh * n * c.hd)?;
        let table: Vec<f32> = (0..c.grid * c.grid * c.hd).map(|_| rng.uniform() * 0.1).collect();
        let rel = (cuda.upload_f32(&table)?, cuda.upload_f32(&table)?);
        let mut scratch = cuda.stream().alloc_zeros::<f32>(c.bh * n * 2 * c.grid)?;
        let ms = time_ms(&cuda, args.iters, || {
            cuda.attention_tc_dev(
                &q,
                &k,
                &v,
                &mut o,
                &shape,
                Some((&rel.0, &rel.1)),
                Some(&mut scratch),
                Some(c.kernel),
            )?;
            Ok(())
        })?;
        let flops = 4.0 * (c.bh * n * n * c.hd) as f64;
        let tf = flops / (ms as f64 * 1e-3) / 1e12;
        let logits_bytes = c.bh * n * n * 2;
        let naive_ms = if logits_bytes < (24usize << 30) {
            let mut logits = cuda.stream().alloc_zeros::<bf16>(c.bh * n * n)?;
            let mut o2 = cuda.stream().alloc_zeros::<bf16>(c.bh * n * c.hd)?;
            Some(time_ms(&cuda, args.iters, || {
                naive(&cuda, &shape, &q, &k, &v, &mut o2, &mut logits, &rel, &scratch)
            })?)
        } else {
            None
        };
        println!(
            "{:<18} {:<22} {:>10.3} {:>9.1} {:>8.1}% {:>11} {:>8}",
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
