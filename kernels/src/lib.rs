//! `medsa-kernels`: hand-written CUDA kernels and the CUDA implementation of
//! [`medsa_core::Backend`], behind a device seam with two implementations: a GPU (cudarc, NVRTC,
//! cuBLAS) and a CPU emulator that compiles the same kernel sources as C++ and runs them.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod check;
pub mod cuda;
pub mod device;
pub mod driver;
pub mod emulator;
pub mod error;
pub mod geometry;
pub mod params;
pub mod probe;
pub mod source;
pub use cuda::{Cuda, Precision};
/// The cudarc version the kernels are built against (for callers that launch on device buffers).
pub use cudarc;
pub use device::{Device, DeviceKind};
pub use driver::driver_available;
pub use emulator::{EmuOptions, ThreadOrder};
pub use error::{KernelError, Result};
