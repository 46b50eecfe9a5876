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
