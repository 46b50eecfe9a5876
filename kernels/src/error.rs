//! Typed errors of the CUDA layer.

/// Everything that can go wrong in `medsa-kernels`.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No CUDA driver library (`libcuda.so`) could be loaded.
    #[error(
        "no CUDA driver: libcuda could not be loaded (install an NVIDIA driver, or use the CPU backend)"
    )]
    NoDriver,
    /// The driver loaded but reports no device.
    #[error("no CUDA device: the driver reports {0} devices")]
    NoDevice(i32),
    /// No NVRTC library (`libnvrtc.so.13`) could be loaded.
    #[error(
        "no NVRTC: libnvrtc.so.13 could not be loaded (run .ci/cuda-wheels.sh and put its lib= \
         directory on LD_LIBRARY_PATH, or install the CUDA 13 runtime compiler)"
    )]
    NoNvrtc,
    /// No cuBLAS library (`libcublas.so.13`) could be loaded.
    #[error("no cuBLAS: libcublas could not be loaded (install the CUDA 13 cuBLAS library)")]
    NoCublas,
    /// The CPU emulator could not run (no host compiler, a module that does not load, a GEMM
    /// outside its allocations, a kernel that wrote past a buffer).
    #[error("emulator: {0}")]
    Emulator(String),
    /// The host C++ compiler rejected a kernel source in the emulator build.
    #[error("the emulator build of {config} failed to compile ({source_path}):\n{log}")]
    EmulatorCompile {
        /// The config (source and defines).
        config: String,
        /// The generated C++ file.
        source_path: String,
        /// The compiler's messages.
        log: String,
    },
    /// A kernel launch failed (on the emulator: a deadlock, a divergent warp collective, a
    /// misaligned or out-of-range shared address, a wrong argument list).
    #[error("launch of {entry} ({config}) failed: {msg}")]
    Launch {
        /// The entry point.
        entry: String,
        /// The config.
        config: String,
        /// What went wrong.
        msg: String,
    },
    /// NVRTC rejected a kernel source.
    #[error("NVRTC failed to compile {kernel} ({config}) for {arch}:\n{log}")]
    Compile {
        /// The source file.
        kernel: &'static str,
        /// The config (its defines).
        config: String,
        /// The target architecture.
        arch: String,
        /// The compiler log.
        log: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Cublas(#[from] cudarc::cublas::result::CublasError),
    /// An op was asked for a shape or config the kernels do not support.
    #[error("{op}: unsupported: {msg}")]
    Unsupported {
        /// The op.
        op: &'static str,
        /// Why.
        msg: String,
    },
    /// A shape or argument error from the numeric layer.
    #[error(transparent)]
    Core(#[from] medsa_core::Error),
}

impl KernelError {
    /// Shorthand for [`KernelError::Unsupported`].
    pub fn unsupported(op: &'static str, msg: impl Into<String>) -> Self {
        KernelError::Unsupported { op, msg: msg.into() }
    }
}

impl From<KernelError> for medsa_core::Error {
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::Core(c) => c,
            other => medsa_core::Error::Backend { backend: "cuda", msg: other.to_string() },
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
