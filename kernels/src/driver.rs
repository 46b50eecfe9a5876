//! The GPU implementation of [`Device`]: cudarc's driver API, NVRTC and cuBLAS on one stream.
//!
//! Modules are compiled by NVRTC on first use and cached per kernel config; with `MEDSA_PTX_DIR`
//! set, PTX produced by `cargo xtask ptx` (`<dir>/sm_XY/<stem>.ptx`) is loaded instead.

use crate::device::{Buffer, Device, DeviceKind, GemmCall, GemmType, KernelArgs};
use crate::error::{KernelError, Result};
use crate::geometry::{self, Launch};
use crate::source::{compile_ptx, nvrtc_available, Arch, KernelConfig};
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use std::any::Any;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Whether a CUDA driver library can be loaded (never panics).
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the candidate names of libcuda.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A CUDA GPU.
pub struct Driver {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    arch: Arch,
    max_smem: usize,
    modules: Mutex<HashMap<KernelConfig, Arc<CudaModule>>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Driver({})", self.arch.sm())
    }
}

impl Driver {
    /// Opens device `ordinal`. Returns [`KernelError::NoDriver`] / [`KernelError::NoDevice`] /
    /// [`KernelError::NoNvrtc`] / [`KernelError::NoCublas`] (never panics) when the machine cannot
    /// run the kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_available() {
            return Err(KernelError::NoDriver);
        }
        let count = CudaContext::device_count()?;
        if count <= 0 || ordinal >= count as usize {
            return Err(KernelError::NoDevice(count));
        }
        if !nvrtc_available() && std::env::var_os("MEDSA_PTX_DIR").is_none() {
            return Err(KernelError::NoNvrtc);
        }
        // SAFETY: only tries to dlopen the candidate names of libcublas.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(KernelError::NoCublas);
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = Arch { major: major as u32, minor: minor as u32 };
        if !arch.supported() {
            return Err(KernelError::unsupported(
                "Cuda::new",
                format!("{} (the kernels need sm_80+)", arch.sm()),
            ));
        }
        let max_smem = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
            as usize;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone())?;
        Ok(Driver { ctx, stream, blas, arch, max_smem, modules: Mutex::new(HashMap::new()) })
    }

    /// The device architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }
    /// The stream every call runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The compiled entry point `entry` of `cfg` (compiled and cached on first use).
    pub fn function(&self, cfg: &KernelConfig, entry: &str) -> Result<CudaFunction> {
        let module = {
            let mut cache =
                self.modules.lock().map_err(|_| KernelError::unsupported("Cuda", "module cache poisoned"))?;
            match cache.get(cfg) {
                Some(m) => m.clone(),
                None => {
                    let from_dir = std::env::var_os("MEDSA_PTX_DIR").and_then(|dir| {
                        let p = std::path::Path::new(&dir)
                            .join(self.arch.sm())
                            .join(format!("{}.ptx", cfg.stem()));
                        std::fs::read_to_string(p).ok()
                    });
                    let ptx = match from_dir {
                        Some(s) => s,
                        None => compile_ptx(cfg, self.arch)?,
                    };
                    let m = self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
                    cache.insert(cfg.clone(), m.clone());
                    m
                }
            }
        };
        Ok(module.load_function(entry)?)
    }
}

impl Device for Driver {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Gpu
    }

    fn name(&self) -> String {
        format!("{} ({})", self.ctx.name().unwrap_or_else(|_| "CUDA device".into()), self.arch.sm())
    }

    fn max_shared_memory(&self) -> usize {
        self.max_smem
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        let s: CudaSlice<u8> = self.stream.alloc_zeros::<u8>(bytes.max(1))?;
        let addr = {
            let (p, _sync) = s.device_ptr(&self.stream);
            p
        };
        Ok(Buffer::new(addr, bytes, Box::new(s)))
    }

    fn copy_in(&self, dst: &Buffer, src: &[u8]) -> Result<()> {
        if src.len() > dst.bytes() {
            return Err(KernelError::unsupported("copy_in", format!("{} B into {dst:?}", src.len())));
        }
        if src.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: dst is a live allocation of at least src.len() bytes on this context; the copy
        // completes before `src` can go away because the stream is synchronised right after.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.addr(), src, self.stream.cu_stream()) }?;
        self.stream.synchronize()?;
        Ok(())
    }

    fn copy_out(&self, src: &Buffer, dst: &mut [u8]) -> Result<()> {
        if dst.len() > src.bytes() {
            return Err(KernelError::unsupported("copy_out", format!("{} B from {src:?}", dst.len())));
        }
        if dst.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: src is a live allocation of at least dst.len() bytes; synchronised below.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src.addr(), self.stream.cu_stream()) }?;
        self.stream.synchronize()?;
        Ok(())
    }

    fn launch(&self, cfg: &KernelConfig, entry: &str, l: &Launch, args: &KernelArgs) -> Result<()> {
        let f = self.function(cfg, entry)?;
        let smem = l.smem as usize;
        if smem > self.max_smem {
            return Err(KernelError::unsupported(
                "launch",
                format!("{entry}: {smem} B of shared memory > device limit {}", self.max_smem),
            ));
        }
        if smem > geometry::DEFAULT_SMEM {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                l.smem as i32,
            )?;
        }
        // cuLaunchKernel copies the argument values before it returns.
        let mut copies: Vec<Vec<u8>> = args.iter().map(<[u8]>::to_vec).collect();
        let mut ptrs: Vec<*mut c_void> = copies.iter_mut().map(|c| c.as_mut_ptr().cast::<c_void>()).collect();
        self.ctx.bind_to_thread()?;
        // SAFETY: the argument bytes match the kernel's parameter list (the emulator checks every
        // size against the C types on every CI run); the buffers they name are live.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                l.grid,
                l.block,
                l.smem,
                self.stream.cu_stream(),
                &mut ptrs,
            )
        }?;
        Ok(())
    }

    fn gemm(&self, g: &GemmCall) -> Result<()> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let ty = match g.dtype {
            GemmType::F32 => cudaDataType_t::CUDA_R_32F,
            GemmType::Bf16 => cudaDataType_t::CUDA_R_16BF,
        };
        let (alpha, beta) = (g.alpha, g.beta);
        self.ctx.bind_to_thread()?;
        // SAFETY: the addresses, leading dimensions and strides describe live allocations (the
        // emulator bounds-checks the same calls against its allocations on every CI run).
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(g.trans_a),
                op(g.trans_b),
                g.m,
                g.n,
                g.k,
                (&alpha as *const f32).cast(),
                g.a as *const c_void,
                ty,
                g.lda,
                g.stride_a,
                g.b as *const c_void,
                ty,
                g.ldb,
                g.stride_b,
                (&beta as *const f32).cast(),
                g.c as *mut c_void,
                ty,
                g.ldc,
                g.stride_c,
                g.batch,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
