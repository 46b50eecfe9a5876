//! `medsa-core`: the small pieces every other medsa crate shares.
//!
//! - [`Tensor`]: a shape plus contiguous row-major `f32` data (all compute is f32), in host memory
//!   or resident on a device ([`resident`]);
//! - [`DType`] and the f16/bf16 storage conversions ([`dtype`]);
//! - [`Error`], the typed error of the numeric layer;
//! - [`Backend`], the op set the network is written against (ARCHITECTURE.md, "Tensors and the
//!   Backend"). `medsa-ref` implements it on the CPU, `medsa-kernels` on CUDA;
//! - [`backward`]: the gradients its backward ops return;
//! - [`shape`]: the operand checks every backend shares.

pub mod backend;
pub mod backward;
pub mod dtype;
pub mod error;
pub mod par;
pub mod resident;
pub mod shape;
pub mod tensor;

pub use backend::{Activation, Backend, Conv2d, DepthGrouping, RelPos, ResizeMode, Upscaling};
pub use dtype::DType;
pub use error::{Error, Result};
pub use tensor::Tensor;
