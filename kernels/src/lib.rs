//! `medsa-kernels`: hand-written CUDA kernels (compiled at run time with NVRTC through cudarc)
//! and the CUDA implementation of [`medsa_core::Backend`].
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod error;
pub mod geometry;
pub mod params;
pub mod source;
pub use error::{KernelError, Result};
pub mod check;
pub mod cuda;
pub use cuda::{driver_available, Cuda, Precision};
/// The cudarc version the kernels are built against (for callers that launch on device buffers).
pub use cudarc;
