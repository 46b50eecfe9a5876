//! The device seam: the one small interface the CUDA backend's host code talks to.
//!
//! [`Device`] allocates, copies, launches a kernel by name with its grid, block, dynamic shared
//! memory and argument bytes, runs a GEMM with cuBLAS's column-major arguments, and synchronises.
//! Two implementations: [`crate::driver::Driver`] (a real GPU through cudarc, NVRTC, cuBLAS) and
//! [`crate::emulator::Emulator`] (the same `.cu` sources compiled as C++ and run on the CPU).
//! Everything above the seam (launch geometry, parameter packing, strides, buffer sizes) is shared,
//! so it runs in CI on the emulator.

use crate::error::Result;
use crate::geometry::Launch;
use crate::source::KernelConfig;
use std::any::Any;

/// Where a [`Device`]'s kernels really run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// A CUDA GPU.
    Gpu,
    /// The CPU emulator: results are emulated, never a GPU pass.
    Emulated,
}

impl DeviceKind {
    /// `gpu` or `emulated`.
    pub fn label(self) -> &'static str {
        match self {
            DeviceKind::Gpu => "gpu",
            DeviceKind::Emulated => "emulated",
        }
    }
}

/// A device allocation: its address as kernels see it, its size, and what keeps it alive.
pub struct Buffer {
    addr: u64,
    bytes: usize,
    _keep: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({:#x}, {} B)", self.addr, self.bytes)
    }
}

impl Buffer {
    /// Wraps an allocation made by a [`Device`] implementation; `keep` frees it when dropped.
    pub fn new(addr: u64, bytes: usize, keep: Box<dyn Any + Send + Sync>) -> Self {
        Buffer { addr, bytes, _keep: keep }
    }
    /// The device address (what a kernel parameter holds).
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The arguments of one kernel launch, each as the bytes of a `#[repr(C)]` value, in order
/// (what `cuLaunchKernel`'s `kernelParams` point to).
#[derive(Clone, Debug, Default)]
pub struct KernelArgs {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl KernelArgs {
    /// No arguments yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends one argument (a pointer as `u64`, an `i32` / `i64` / `f32`, or a parameter struct).
    pub fn push<T: bytemuck::NoUninit>(&mut self, v: &T) -> &mut Self {
        let b = bytemuck::bytes_of(v);
        self.spans.push((self.bytes.len(), b.len()));
        self.bytes.extend_from_slice(b);
        self
    }
    /// Appends every argument of `other`, in order.
    pub fn append(&mut self, other: &KernelArgs) -> &mut Self {
        for &(o, n) in &other.spans {
            self.spans.push((self.bytes.len(), n));
            self.bytes.extend_from_slice(&other.bytes[o..o + n]);
        }
        self
    }
    /// The arguments' bytes, one slice each.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(o, n)| &self.bytes[o..o + n])
    }
    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Element type of a GEMM's A, B and C (compute is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmType {
    /// `CUDA_R_32F`.
    F32,
    /// `CUDA_R_16BF`.
    Bf16,
}

impl GemmType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            GemmType::F32 => 4,
            GemmType::Bf16 => 2,
        }
    }
}

/// The arguments of `cublasGemmStridedBatchedEx` (column-major): for every batch `i`,
/// `C_i = alpha op(A_i) op(B_i) + beta C_i` with `op(A)` `m x k`, `op(B)` `k x n`, `C` `m x n`,
/// `A_i = a + i stride_a` (elements) and so on; compute type f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmCall {
    /// Element type of A, B, C.
    pub dtype: GemmType,
    /// `op(A) = Aᵀ`.
    pub trans_a: bool,
    /// `op(B) = Bᵀ`.
    pub trans_b: bool,
    /// Rows of `op(A)` and C.
    pub m: i32,
    /// Columns of `op(B)` and C.
    pub n: i32,
    /// Inner dimension.
    pub k: i32,
    /// Scale of the product.
    pub alpha: f32,
    /// A's device address.
    pub a: u64,
    /// Leading dimension of A.
    pub lda: i32,
    /// Elements between batches of A.
    pub stride_a: i64,
    /// B's device address.
    pub b: u64,
    /// Leading dimension of B.
    pub ldb: i32,
    /// Elements between batches of B.
    pub stride_b: i64,
    /// Scale of C's old value.
    pub beta: f32,
    /// C's device address.
    pub c: u64,
    /// Leading dimension of C.
    pub ldc: i32,
    /// Elements between batches of C.
    pub stride_c: i64,
    /// Batch count.
    pub batch: i32,
}

/// What the CUDA backend needs from a device. Every call is ordered after the previous ones
/// (one stream); `copy_out` and `synchronize` wait for all of them.
pub trait Device: Send + Sync + std::fmt::Debug {
    /// GPU or emulated.
    fn kind(&self) -> DeviceKind;
    /// A human-readable name (device name and architecture, or the emulator's settings).
    fn name(&self) -> String;
    /// Largest dynamic shared memory per block, in bytes.
    fn max_shared_memory(&self) -> usize;
    /// A zeroed allocation of `bytes` bytes (at least one byte is allocated).
    fn alloc(&self, bytes: usize) -> Result<Buffer>;
    /// Copies `src` to the start of `dst` (`src.len() <= dst.bytes()`).
    fn copy_in(&self, dst: &Buffer, src: &[u8]) -> Result<()>;
    /// Copies the first `dst.len()` bytes of `src` back to the host.
    fn copy_out(&self, src: &Buffer, dst: &mut [u8]) -> Result<()>;
    /// Launches entry point `entry` of the module `cfg` with `args`.
    fn launch(&self, cfg: &KernelConfig, entry: &str, launch: &Launch, args: &KernelArgs) -> Result<()>;
    /// One strided-batched GEMM.
    fn gemm(&self, call: &GemmCall) -> Result<()>;
    /// Waits for everything issued so far.
    fn synchronize(&self) -> Result<()>;
    /// The device as `Any`, so a caller can reach implementation-only tools (CUDA events).
    fn as_any(&self) -> &dyn Any;
}
