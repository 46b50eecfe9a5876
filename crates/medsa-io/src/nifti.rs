//! NIfTI-1 volumes: read `.nii` / `.nii.gz` into f32, write label masks on the input's grid,
//! and move 2-D slices in and out of a volume.
//!
//! # Conventions
//!
//! - **Index order.** A [`Volume`] is indexed `[x, y, z]` with `x` fastest in memory, exactly as
//!   NIfTI stores voxels: voxel `(x, y, z)` is `data[x + nx * (y + ny * z)]`
//!   ([`Volume::index`]).
//! - **World coordinates.** [`Volume::affine`] maps `(x, y, z, 1)` to scanner/world millimetres
//!   in NIfTI's RAS+ convention (x to the subject's Right, y Anterior, z Superior). It is the
//!   sform when `sform_code > 0`, else the qform when `qform_code > 0`, else
//!   `diag(pixdim[1], pixdim[2], pixdim[3], 1)` (NIfTI "method 1").
//! - **Voxel values** are the stored values times `scl_slope` plus `scl_inter` when `scl_slope`
//!   is finite and non-zero (NIfTI's rule), converted to f32. NaN or infinite voxels are an
//!   error ([`Error::NonFinite`]).
//! - **Slice orientation** ([`Axis`], [`extract_slice`]): the two in-plane axes are the
//!   remaining ones in increasing order (`Z` -> `(x, y)`, `Y` -> `(x, z)`, `X` -> `(y, z)`).
//!   Columns follow the first in-plane axis from index 0; rows follow the second **from its last
//!   index down**, so that row 0 is the top of a display. This is numpy's
//!   `np.rot90(vol[..., k])` for `vol[x, y, z]`: for an RAS volume an axial slice has row 0
//!   anterior and column 0 the subject's left, the convention of `../shared/data/cases2d`.
//!
//! # Limits
//!
//! Only single-file NIfTI-1 (`n+1` magic) with scalar integer or float voxels is read; header/
//! image pairs, NIfTI-2, complex and RGB voxels are typed errors. A volume is 3-D; a 4-D file
//! with one time point (and any trailing dims of size 1) is accepted as 3-D. The voxel count is
//! checked against [`MAX_VOXELS`] before anything is allocated, and voxel bytes are read in
//! pieces as they arrive, so a small file that claims a huge volume costs nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use ::nifti::Endianness;
/// The NIfTI-1 header type of the `nifti` crate, as kept by [`Volume::header`].
pub use ::nifti::NiftiHeader;

use crate::error::{io, name, Error, Result};

/// Largest voxel count read or written (2^31 voxels, 8 GiB as f32).
pub const MAX_VOXELS: usize = 1 << 31;

/// Largest extension region (bytes between the 348-byte header and `vox_offset`) accepted.
const MAX_EXTENSION_BYTES: usize = 64 << 20;

/// Size of a NIfTI-1 header.
const HEADER_BYTES: usize = 348;

/// A 3-D scalar volume in f32 with the geometry of the file it came from.
#[derive(Clone, Debug)]
pub struct Volume {
    data: Vec<f32>,
    dims: [usize; 3],
    spacing: [f32; 3],
    affine: [[f64; 4]; 4],
    header: NiftiHeader,
    /// Bytes 348..vox_offset of the source file (extender and extensions), in the source's
    /// byte order; written back unchanged with label volumes.
    extensions: Vec<u8>,
}

/// A label volume to write on the grid of a reference [`Volume`] (`x` fastest, same length as
/// the reference's data).
#[derive(Clone, Copy, Debug)]
pub enum Labels<'a> {
    /// Unsigned 8-bit labels (NIfTI datatype 2), e.g. a 0/1 mask.
    U8(&'a [u8]),
    /// Signed 16-bit labels (NIfTI datatype 4), for atlases with more than 255 structures.
    I16(&'a [i16]),
}

/// A volume axis, used to pick slices. For an RAS-oriented volume `X` gives sagittal, `Y`
/// coronal and `Z` axial slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    /// The first index axis (`x`).
    X,
    /// The second index axis (`y`).
    Y,
    /// The third index axis (`z`).
    Z,
}

impl std::str::FromStr for Axis {
    type Err = Error;

    /// `x`/`sagittal`, `y`/`coronal`, `z`/`axial` (any case).
    fn from_str(s: &str) -> Result<Axis> {
        match s.to_ascii_lowercase().as_str() {
            "x" | "sagittal" => Ok(Axis::X),
            "y" | "coronal" => Ok(Axis::Y),
            "z" | "axial" => Ok(Axis::Z),
            _ => Err(Error::InvalidArgument {
                op: "Axis::from_str",
                msg: format!("{s:?} is not an axis (x, y, z, sagittal, coronal, axial)"),
            }),
        }
    }
}

impl Axis {
    /// Position of the axis in `[x, y, z]`.
    pub fn index(self) -> usize {
        match self {
            Axis::X => 0,
            Axis::Y => 1,
            Axis::Z => 2,
        }
    }

    /// The in-plane axes `(columns, rows)` of a slice along this axis, in increasing order.
    pub fn in_plane(self) -> (usize, usize) {
        match self {
            Axis::X => (1, 2),
            Axis::Y => (0, 2),
            Axis::Z => (0, 1),
        }
    }
}

/// A 2-D slice, row-major (`data[row * width + col]`); see the module docs for its orientation.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice<T> {
    /// Pixels, row-major.
    pub data: Vec<T>,
    /// Number of columns.
    pub width: usize,
    /// Number of rows.
    pub height: usize,
}

impl Volume {
    /// Reads a `.nii` or `.nii.gz` file (gzip is detected from the content, not the name).
    pub fn read(path: impl AsRef<Path>) -> Result<Volume> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
        let len = file.metadata().map_err(|e| io(path, e))?.len();
        read_stream(BufReader::new(file), Some(len), &name(path))
    }

    /// Reads a `.nii` or `.nii.gz` image held in memory; `file` names it in errors.
    pub fn from_bytes(bytes: &[u8], file: &str) -> Result<Volume> {
        read_stream(bytes, Some(bytes.len() as u64), file)
    }

    /// Voxel values, `x` fastest.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// Voxel values, mutable (for intensity windows, see [`crate::window`]).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    /// Consumes the volume, returning its voxel values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    /// `[nx, ny, nz]`.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }
    /// Voxel size in mm along x, y, z (`pixdim[1..4]`), each finite and > 0.
    pub fn spacing(&self) -> [f32; 3] {
        self.spacing
    }
    /// Voxel-to-world matrix (rows), see the module docs.
    pub fn affine(&self) -> &[[f64; 4]; 4] {
        &self.affine
    }
    /// The source file's header, unchanged.
    pub fn header(&self) -> &NiftiHeader {
        &self.header
    }
    /// Flat index of voxel `(x, y, z)`, or `None` outside the volume.
    pub fn index(&self, x: usize, y: usize, z: usize) -> Option<usize> {
        let [nx, ny, nz] = self.dims;
        (x < nx && y < ny && z < nz).then(|| x + nx * (y + ny * z))
    }
    /// Value of voxel `(x, y, z)`, or `None` outside the volume.
    pub fn get(&self, x: usize, y: usize, z: usize) -> Option<f32> {
        self.index(x, y, z).map(|i| self.data[i])
    }
    /// The slice `index` along `axis`, oriented as the module docs say.
    pub fn slice(&self, axis: Axis, index: usize) -> Result<Slice<f32>> {
        extract_slice(&self.data, self.dims, axis, index)
    }

    /// Writes `labels` (same grid as this volume) to `path` as NIfTI-1, gzip-compressed when the
    /// name ends in `.gz`. The header is this volume's with only the datatype, dims, scaling and
    /// display range changed, so affine, pixdim, units and orientation are identical.
    pub fn write_labels(&self, path: impl AsRef<Path>, labels: Labels<'_>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.encode_labels(labels)?;
        let gz = path.to_string_lossy().to_ascii_lowercase().ends_with(".gz");
        let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
        let mut out = std::io::BufWriter::new(file);
        if gz {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            enc.write_all(&bytes).map_err(|e| io(path, e))?;
            out = enc.finish().map_err(|e| io(path, e))?;
        } else {
            out.write_all(&bytes).map_err(|e| io(path, e))?;
        }
        out.flush().map_err(|e| io(path, e))
    }

    /// The uncompressed `.nii` bytes [`Volume::write_labels`] writes.
    pub fn encode_labels(&self, labels: Labels<'_>) -> Result<Vec<u8>> {
        let n = self.data.len();
        let (len, datatype, bitpix) = match labels {
            Labels::U8(v) => (v.len(), 2i16, 8i16),
            Labels::I16(v) => (v.len(), 4, 16),
        };
        if len != n {
            return Err(Error::InvalidArgument {
                op: "write_labels",
                msg: format!("{len} labels for a volume of {:?} = {n} voxels", self.dims),
            });
        }
        let mut h = self.header.clone();
        h.dim = [3, 1, 1, 1, 1, 1, 1, 1];
        for (d, &v) in h.dim[1..4].iter_mut().zip(&self.dims) {
            // dims came from a u16 header field, so they fit.
            *d = u16::try_from(v).unwrap_or(u16::MAX);
        }
        h.datatype = datatype;
        h.bitpix = bitpix;
        h.scl_slope = 1.0;
        h.scl_inter = 0.0;
        h.cal_min = 0.0;
        h.cal_max = 0.0;
        h.glmin = 0;
        h.glmax = 0;
        h.magic = *b"n+1\0";
        let mut ext = self.extensions.clone();
        if ext.len() < 4 {
            ext.resize(4, 0);
        }
        h.vox_offset = (HEADER_BYTES + ext.len()) as f32;
        let big = h.endianness == Endianness::Big;
        let mut out = Vec::with_capacity(HEADER_BYTES + ext.len() + len * bitpix as usize / 8);
        write_header(&mut out, &h, big);
        out.extend_from_slice(&ext);
        match labels {
            Labels::U8(v) => out.extend_from_slice(v),
            Labels::I16(v) => {
                for &x in v {
                    out.extend_from_slice(&if big { x.to_be_bytes() } else { x.to_le_bytes() });
                }
            }
        }
        Ok(out)
    }
}

/// The slice `index` along `axis` of a volume `data` with dims `[nx, ny, nz]` (`x` fastest),
/// oriented as the module docs say.
pub fn extract_slice<T: Copy>(data: &[T], dims: [usize; 3], axis: Axis, index: usize) -> Result<Slice<T>> {
    let geo = checked_geometry(data.len(), dims, axis, index)?;
    let mut out = Vec::with_capacity(geo.width * geo.height);
    for row in 0..geo.height {
        for col in 0..geo.width {
            out.push(data[geo.voxel(col, row)]);
        }
    }
    Ok(Slice { data: out, width: geo.width, height: geo.height })
}

/// Writes a 2-D `slice` (oriented as [`extract_slice`] returns it) into slice `index` along
/// `axis` of the volume `data` with dims `[nx, ny, nz]`: the inverse of [`extract_slice`].
pub fn insert_slice<T: Copy>(
    data: &mut [T],
    dims: [usize; 3],
    axis: Axis,
    index: usize,
    slice: &Slice<T>,
) -> Result<()> {
    let geo = checked_geometry(data.len(), dims, axis, index)?;
    if slice.width != geo.width || slice.height != geo.height || slice.data.len() != geo.width * geo.height {
        return Err(Error::Slice {
            axis,
            index,
            msg: format!(
                "slice is {}x{} with {} pixels, the volume's slice is {}x{}",
                slice.width,
                slice.height,
                slice.data.len(),
                geo.width,
                geo.height
            ),
        });
    }
    for row in 0..geo.height {
        for col in 0..geo.width {
            data[geo.voxel(col, row)] = slice.data[row * geo.width + col];
        }
    }
    Ok(())
}

/// Index arithmetic of one slice: voxel = `base + col·su + (height − 1 − row)·sv`, so row 0 is
/// the top of the displayed slice (the highest index along the second in-plane axis).
#[derive(Clone, Copy, Debug)]
pub struct SliceGeometry {
    base: usize,
    su: usize,
    sv: usize,
    /// Slice width: the size of the first in-plane axis.
    pub width: usize,
    /// Slice height: the size of the second in-plane axis.
    pub height: usize,
}

impl SliceGeometry {
    /// Slice `index` along `axis` of a volume of `dims` (`x` fastest), or None when the index
    /// is outside the volume.
    pub fn new(dims: [usize; 3], axis: Axis, index: usize) -> Option<Self> {
        if index >= dims[axis.index()] {
            return None;
        }
        let strides = [1, dims[0], dims[0] * dims[1]];
        let (u, v) = axis.in_plane();
        Some(SliceGeometry {
            base: index * strides[axis.index()],
            su: strides[u],
            sv: strides[v],
            width: dims[u],
            height: dims[v],
        })
    }

    /// Flat index of pixel `(col, row)`.
    pub fn voxel(&self, col: usize, row: usize) -> usize {
        self.base + col * self.su + (self.height - 1 - row) * self.sv
    }
}

/// [`SliceGeometry`] for `len` values of `dims`: both mismatches are [`Error::Slice`].
fn checked_geometry(len: usize, dims: [usize; 3], axis: Axis, index: usize) -> Result<SliceGeometry> {
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(len) {
        return Err(Error::Slice {
            axis,
            index,
            msg: format!("volume data has {len} values, dims {dims:?} need {n:?}"),
        });
    }
    SliceGeometry::new(dims, axis, index).ok_or_else(|| Error::Slice {
        axis,
        index,
        msg: format!("index outside 0..{} (dims {dims:?})", dims[axis.index()]),
    })
}

// ----- reading ---------------------------------------------------------------------------------

/// Scalar voxel types of NIfTI-1 that are read.
#[derive(Clone, Copy, Debug)]
enum Scalar {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl Scalar {
    fn from_code(code: i16) -> Option<Scalar> {
        Some(match code {
            2 => Scalar::U8,
            4 => Scalar::I16,
            8 => Scalar::I32,
            16 => Scalar::F32,
            64 => Scalar::F64,
            256 => Scalar::I8,
            512 => Scalar::U16,
            768 => Scalar::U32,
            1024 => Scalar::I64,
            1280 => Scalar::U64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Scalar::U8 | Scalar::I8 => 1,
            Scalar::I16 | Scalar::U16 => 2,
            Scalar::I32 | Scalar::U32 | Scalar::F32 => 4,
            Scalar::I64 | Scalar::U64 | Scalar::F64 => 8,
        }
    }

    /// Decodes one element from exactly `size()` bytes.
    fn decode(self, b: &[u8], big: bool) -> f64 {
        macro_rules! num {
            ($t:ty, $n:expr) => {{
                let mut a = [0u8; $n];
                a.copy_from_slice(&b[..$n]);
                (if big { <$t>::from_be_bytes(a) } else { <$t>::from_le_bytes(a) }) as f64
            }};
        }
        match self {
            Scalar::U8 => b[0] as f64,
            Scalar::I8 => b[0] as i8 as f64,
            Scalar::I16 => num!(i16, 2),
            Scalar::U16 => num!(u16, 2),
            Scalar::I32 => num!(i32, 4),
            Scalar::U32 => num!(u32, 4),
            Scalar::I64 => num!(i64, 8),
            Scalar::U64 => num!(u64, 8),
            Scalar::F32 => num!(f32, 4),
            Scalar::F64 => num!(f64, 8),
        }
    }
}

/// Reads up to `buf.len()` bytes, returning how many arrived before end of input.
fn read_full(r: &mut impl Read, buf: &mut [u8], file: &str) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::Gzip { file: file.into(), msg: e.to_string() }),
        }
    }
    Ok(got)
}

fn read_stream(mut input: impl BufRead, len: Option<u64>, file: &str) -> Result<Volume> {
    let head = input.fill_buf().map_err(|e| Error::Gzip { file: file.into(), msg: e.to_string() })?;
    if head.starts_with(&[0x1f, 0x8b]) {
        // Compressed size says nothing about the payload size.
        read_nii(flate2::bufread::GzDecoder::new(input), None, true, file)
    } else {
        read_nii(input, len, false, file)
    }
}

fn header_err(file: &str, msg: impl Into<String>) -> Error {
    Error::NiftiHeader { file: file.into(), msg: msg.into() }
}

/// Checks everything about `h` that the volume path needs; returns `(dims, scalar, n)`.
fn validate_header(h: &NiftiHeader, file: &str) -> Result<([usize; 3], Scalar, usize)> {
    if &h.magic == b"ni1\0" {
        return Err(header_err(
            file,
            "a .hdr/.img header (magic ni1) is not supported; convert the pair to a single .nii",
        ));
    }
    let ndim = h.dim[0] as usize;
    if ndim == 0 || ndim > 7 {
        return Err(header_err(file, format!("dim[0] = {} is not in 1..=7", h.dim[0])));
    }
    // The field is i16 on disk; a negative value shows up as > i16::MAX here.
    if let Some(d) = h.dim[1..=ndim].iter().find(|&&d| d > i16::MAX as u16) {
        return Err(header_err(file, format!("negative dimension {}", *d as i16)));
    }
    let all: Vec<usize> = h.dim[1..=ndim].iter().map(|&d| d as usize).collect();
    if all.contains(&0) {
        return Err(Error::ZeroDim { file: file.into(), dims: all });
    }
    if ndim < 3 || all[3..].iter().any(|&d| d != 1) {
        return Err(Error::NotAVolume { file: file.into(), ndim, dims: all });
    }
    let dims = [all[0], all[1], all[2]];
    let n = dims[0] * dims[1] * dims[2]; // each < 2^15, cannot overflow
    if n > MAX_VOXELS {
        return Err(Error::TooLarge {
            file: file.into(),
            dims: dims.to_vec(),
            what: format!("{n} voxels is more than the limit of {MAX_VOXELS}"),
        });
    }
    let scalar = Scalar::from_code(h.datatype)
        .ok_or_else(|| Error::UnsupportedDataType { file: file.into(), code: h.datatype })?;
    let spacing = [h.pixdim[1], h.pixdim[2], h.pixdim[3]];
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(Error::Spacing { file: file.into(), spacing });
    }
    Ok((dims, scalar, n))
}

fn read_nii(mut r: impl Read, len: Option<u64>, gz: bool, file: &str) -> Result<Volume> {
    let mut raw = [0u8; HEADER_BYTES];
    let got = read_full(&mut r, &mut raw, file)?;
    if got < HEADER_BYTES {
        return Err(Error::Truncated {
            file: file.into(),
            what: "header",
            expected: HEADER_BYTES as u64,
            got: got as u64,
        });
    }
    let size_le = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let size_be = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if size_le == 540 || size_be == 540 {
        return Err(header_err(file, "NIfTI-2 is not supported; save the volume as NIfTI-1"));
    }
    if size_le != 348 && size_be != 348 {
        return Err(header_err(file, format!("sizeof_hdr is {size_le}, expected 348")));
    }
    let header = NiftiHeader::from_reader(&raw[..]).map_err(|e| header_err(file, e.to_string()))?;
    let (dims, scalar, n) = validate_header(&header, file)?;

    let vo = header.vox_offset;
    if !vo.is_finite() || vo < 0.0 || vo.fract() != 0.0 {
        return Err(header_err(file, format!("vox_offset {vo} is not a whole byte offset")));
    }
    let vox_offset = (vo as usize).max(HEADER_BYTES);
    if vox_offset - HEADER_BYTES > MAX_EXTENSION_BYTES {
        return Err(header_err(file, format!("vox_offset {vo} leaves an oversized extension")));
    }
    let mut extensions = vec![0u8; vox_offset - HEADER_BYTES];
    let got = read_full(&mut r, &mut extensions, file)?;
    if got < extensions.len() {
        return Err(Error::Truncated {
            file: file.into(),
            what: "header extensions",
            expected: vox_offset as u64,
            got: (HEADER_BYTES + got) as u64,
        });
    }

    let nbytes = (n as u64) * scalar.size() as u64;
    if let Some(len) = len {
        if len < vox_offset as u64 + nbytes {
            return Err(Error::Truncated {
                file: file.into(),
                what: "voxel data",
                expected: nbytes,
                got: len.saturating_sub(vox_offset as u64),
            });
        }
    }
    // Grow as bytes arrive, so a lying gzip header cannot make us allocate up front.
    let mut bytes = Vec::with_capacity((nbytes as usize).min(64 << 20));
    let res = (&mut r).take(nbytes).read_to_end(&mut bytes);
    match res {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(Error::Gzip { file: file.into(), msg: e.to_string() }),
    }
    if (bytes.len() as u64) < nbytes {
        return Err(Error::Truncated {
            file: file.into(),
            what: if gz { "gzip stream (voxel data)" } else { "voxel data" },
            expected: nbytes,
            got: bytes.len() as u64,
        });
    }
    if gz {
        // Read to the end of the stream so the gzip CRC and length are checked.
        let mut sink = [0u8; 8192];
        loop {
            match r.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(Error::Truncated {
                        file: file.into(),
                        what: "gzip stream (trailer)",
                        expected: nbytes,
                        got: nbytes,
                    })
                }
                Err(e) => return Err(Error::Gzip { file: file.into(), msg: e.to_string() }),
            }
        }
    }

    let big = header.endianness == Endianness::Big;
    let (slope, inter) = (header.scl_slope as f64, header.scl_inter as f64);
    let scale = slope.is_finite() && slope != 0.0 && inter.is_finite();
    let mut data = Vec::with_capacity(n);
    let mut bad = 0usize;
    let mut first_bad = None;
    for (i, c) in bytes.chunks_exact(scalar.size()).enumerate() {
        let mut v = scalar.decode(c, big);
        if scale {
            v = v * slope + inter;
        }
        let v = v as f32;
        if !v.is_finite() {
            bad += 1;
            first_bad.get_or_insert(i);
        }
        data.push(v);
    }
    drop(bytes);
    if let Some(i) = first_bad {
        let first = [i % dims[0], (i / dims[0]) % dims[1], i / (dims[0] * dims[1])];
        return Err(Error::NonFinite { file: file.into(), count: bad, first });
    }
    let spacing = [header.pixdim[1], header.pixdim[2], header.pixdim[3]];
    let affine = affine_of(&header);
    Ok(Volume { data, dims, spacing, affine, header, extensions })
}

/// The voxel-to-world matrix of `h` (sform, else qform, else pixdim diagonal).
fn affine_of(h: &NiftiHeader) -> [[f64; 4]; 4] {
    let mut a = [[0.0f64; 4]; 4];
    a[3][3] = 1.0;
    if h.sform_code > 0 {
        for (row, src) in a.iter_mut().zip([h.srow_x, h.srow_y, h.srow_z]) {
            for (d, s) in row.iter_mut().zip(src) {
                *d = s as f64;
            }
        }
    } else if h.qform_code > 0 {
        // NIfTI-1 "method 2": rotation from the unit quaternion (a, b, c, d), columns scaled by
        // pixdim with qfac = pixdim[0] flipping z (nifti1.h comments).
        let (mut b, mut c, mut d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let mut aa = 1.0 - (b * b + c * c + d * d);
        if aa < 1e-7 {
            let norm = (b * b + c * c + d * d).sqrt();
            if norm > 0.0 {
                b /= norm;
                c /= norm;
                d /= norm;
            }
            aa = 0.0;
        }
        let q0 = aa.sqrt();
        let r = [
            [q0 * q0 + b * b - c * c - d * d, 2.0 * (b * c - q0 * d), 2.0 * (b * d + q0 * c)],
            [2.0 * (b * c + q0 * d), q0 * q0 + c * c - b * b - d * d, 2.0 * (c * d - q0 * b)],
            [2.0 * (b * d - q0 * c), 2.0 * (c * d + q0 * b), q0 * q0 + d * d - c * c - b * b],
        ];
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let s = [h.pixdim[1] as f64, h.pixdim[2] as f64, h.pixdim[3] as f64 * qfac];
        let t = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
        for ((row, r), t) in a.iter_mut().zip(r).zip(t) {
            for ((d, r), s) in row.iter_mut().zip(r).zip(s) {
                *d = r * s;
            }
            row[3] = t;
        }
    } else {
        for (i, row) in a.iter_mut().take(3).enumerate() {
            row[i] = h.pixdim[i + 1] as f64;
        }
    }
    a
}

/// Serialises the 348-byte NIfTI-1 header in the given byte order.
fn write_header(out: &mut Vec<u8>, h: &NiftiHeader, big: bool) {
    let start = out.len();
    macro_rules! put {
        ($v:expr) => {{
            let v = $v;
            if big {
                out.extend_from_slice(&v.to_be_bytes());
            } else {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }};
    }
    let fixed = |out: &mut Vec<u8>, bytes: &[u8], len: usize| {
        let k = bytes.len().min(len);
        out.extend_from_slice(&bytes[..k]);
        out.resize(out.len() + len - k, 0);
    };
    put!(348i32);
    fixed(out, &h.data_type, 10);
    fixed(out, &h.db_name, 18);
    put!(h.extents);
    put!(h.session_error);
    out.push(h.regular);
    out.push(h.dim_info);
    for d in h.dim {
        put!(d);
    }
    put!(h.intent_p1);
    put!(h.intent_p2);
    put!(h.intent_p3);
    put!(h.intent_code);
    put!(h.datatype);
    put!(h.bitpix);
    put!(h.slice_start);
    for p in h.pixdim {
        put!(p);
    }
    put!(h.vox_offset);
    put!(h.scl_slope);
    put!(h.scl_inter);
    put!(h.slice_end);
    out.push(h.slice_code);
    out.push(h.xyzt_units);
    put!(h.cal_max);
    put!(h.cal_min);
    put!(h.slice_duration);
    put!(h.toffset);
    put!(h.glmax);
    put!(h.glmin);
    fixed(out, &h.descrip, 80);
    fixed(out, &h.aux_file, 24);
    put!(h.qform_code);
    put!(h.sform_code);
    for q in [h.quatern_b, h.quatern_c, h.quatern_d, h.quatern_x, h.quatern_y, h.quatern_z] {
        put!(q);
    }
    for r in h.srow_x.iter().chain(&h.srow_y).chain(&h.srow_z) {
        put!(*r);
    }
    fixed(out, &h.intent_name, 16);
    fixed(out, &h.magic, 4);
    debug_assert_eq!(out.len() - start, HEADER_BYTES);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(dims: &[u16], datatype: i16, bitpix: i16) -> NiftiHeader {
        let mut h = NiftiHeader {
            datatype,
            bitpix,
            magic: *b"n+1\0",
            vox_offset: 352.0,
            endianness: Endianness::Little,
            ..NiftiHeader::default()
        };
        h.dim = [dims.len() as u16, 1, 1, 1, 1, 1, 1, 1];
        h.dim[1..=dims.len()].copy_from_slice(dims);
        h.pixdim = [1.0, 0.5, 0.75, 2.0, 1.0, 1.0, 1.0, 1.0];
        h.sform_code = 0;
        h.qform_code = 0;
        h
    }

    /// A `.nii` byte image with f32 voxels.
    fn nii_f32(h: &NiftiHeader, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, h, h.endianness == Endianness::Big);
        out.extend_from_slice(&[0; 4]);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    #[test]
    fn reads_a_small_volume_and_its_slices() {
        let h = header(&[2, 3, 4], 16, 32);
        let vals: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let v = Volume::from_bytes(&nii_f32(&h, &vals), "t").unwrap();
        assert_eq!(v.dims(), [2, 3, 4]);
        assert_eq!(v.spacing(), [0.5, 0.75, 2.0]);
        assert_eq!(v.get(1, 2, 3), Some(23.0));
        assert_eq!(v.affine()[0][0], 0.5);
        assert_eq!(v.affine()[2][2], 2.0);
        // Axial slice z=1: width nx=2, height ny=3, row 0 = y=2.
        let s = v.slice(Axis::Z, 1).unwrap();
        assert_eq!((s.width, s.height), (2, 3));
        assert_eq!(s.data, vec![10.0, 11.0, 8.0, 9.0, 6.0, 7.0]);
        // Sagittal slice x=0: width ny=3, height nz=4, row 0 = z=3.
        let s = v.slice(Axis::X, 0).unwrap();
        assert_eq!((s.width, s.height), (3, 4));
        assert_eq!(&s.data[..3], &[18.0, 20.0, 22.0]);
        assert!(v.slice(Axis::Y, 3).is_err());
    }

    #[test]
    fn insert_inverts_extract_on_every_axis() {
        let dims = [3, 4, 5];
        let vol: Vec<u32> = (0..60).collect();
        for axis in [Axis::X, Axis::Y, Axis::Z] {
            for k in 0..dims[axis.index()] {
                let s = extract_slice(&vol, dims, axis, k).unwrap();
                let mut blank = vec![u32::MAX; 60];
                insert_slice(&mut blank, dims, axis, k, &s).unwrap();
                for (i, (&b, &o)) in blank.iter().zip(&vol).enumerate() {
                    let c = [i % 3, (i / 3) % 4, i / 12];
                    if c[axis.index()] == k {
                        assert_eq!(b, o);
                    } else {
                        assert_eq!(b, u32::MAX);
                    }
                }
            }
        }
        let bad = Slice { data: vec![0u32; 6], width: 2, height: 3 };
        let mut v = vol.clone();
        assert!(matches!(insert_slice(&mut v, dims, Axis::Z, 0, &bad), Err(Error::Slice { .. })));
    }

    #[test]
    fn rejects_bad_headers_with_typed_errors() {
        let vals = vec![0.0f32; 24];
        let mut h = header(&[4, 6], 16, 32);
        assert!(matches!(
            Volume::from_bytes(&nii_f32(&h, &vals), "t"),
            Err(Error::NotAVolume { ndim: 2, .. })
        ));
        h = header(&[2, 3, 2, 2], 16, 32);
        assert!(matches!(
            Volume::from_bytes(&nii_f32(&h, &vals), "t"),
            Err(Error::NotAVolume { ndim: 4, .. })
        ));
        h = header(&[2, 3, 4, 1], 16, 32);
        assert_eq!(Volume::from_bytes(&nii_f32(&h, &vals), "t").unwrap().dims(), [2, 3, 4]);
        h = header(&[2, 0, 4], 16, 32);
        assert!(matches!(Volume::from_bytes(&nii_f32(&h, &vals), "t"), Err(Error::ZeroDim { .. })));
        h = header(&[2, 3, 4], 16, 32);
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            h.pixdim[3] = bad;
            assert!(matches!(Volume::from_bytes(&nii_f32(&h, &vals), "t"), Err(Error::Spacing { .. })));
        }
        // 32767^3 voxels: rejected before any allocation.
        h = header(&[32767, 32767, 32767], 16, 32);
        assert!(matches!(Volume::from_bytes(&nii_f32(&h, &vals), "t"), Err(Error::TooLarge { .. })));
        h = header(&[2, 3, 4], 32, 64); // complex64
        assert!(matches!(
            Volume::from_bytes(&nii_f32(&h, &vals), "t"),
            Err(Error::UnsupportedDataType { code: 32, .. })
        ));
        h = header(&[2, 3, 4], 16, 32);
        let bytes = nii_f32(&h, &vals);
        assert!(matches!(
            Volume::from_bytes(&bytes[..bytes.len() - 1], "t"),
            Err(Error::Truncated { what: "voxel data", .. })
        ));
        assert!(matches!(
            Volume::from_bytes(&bytes[..100], "t"),
            Err(Error::Truncated { what: "header", .. })
        ));
        assert!(matches!(Volume::from_bytes(&[0u8; 400], "t"), Err(Error::NiftiHeader { .. })));
    }

    /// Every single-byte corruption and truncation of a small `.nii` is a result or a typed
    /// error, never a panic or a huge allocation.
    #[test]
    fn mutated_headers_never_panic() {
        let h = header(&[3, 4, 5], 4, 16);
        let mut bytes = Vec::new();
        write_header(&mut bytes, &h, false);
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend((0..60i16).flat_map(|v| v.to_le_bytes()));
        for i in 0..bytes.len() {
            let _ = Volume::from_bytes(&bytes[..i], "t");
            for x in [0x01u8, 0x80, 0xff, 0x7f, 0x40] {
                let mut m = bytes.clone();
                m[i] ^= x;
                let _ = Volume::from_bytes(&m, "t");
            }
        }
    }

    #[test]
    fn nan_voxels_are_named() {
        let h = header(&[2, 3, 4], 16, 32);
        let mut vals = vec![1.0f32; 24];
        vals[7] = f32::NAN;
        vals[20] = f32::NEG_INFINITY;
        match Volume::from_bytes(&nii_f32(&h, &vals), "t") {
            Err(Error::NonFinite { count: 2, first: [1, 0, 1], .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn qform_affine_follows_nifti1() {
        let mut h = header(&[2, 2, 2], 16, 32);
        h.qform_code = 1;
        // 180 degrees about z: (b, c, d) = (0, 0, 1).
        h.quatern_d = 1.0;
        h.quatern_x = 10.0;
        h.pixdim[0] = -1.0;
        let a = affine_of(&h);
        assert_eq!(a[0], [-0.5, 0.0, 0.0, 10.0]);
        assert_eq!(a[1], [0.0, -0.75, 0.0, 0.0]);
        assert_eq!(a[2], [0.0, 0.0, -2.0, 0.0]);
    }

    #[test]
    fn big_endian_and_scaling() {
        let mut h = header(&[2, 1, 1], 4, 16);
        h.endianness = Endianness::Big;
        h.scl_slope = 2.0;
        h.scl_inter = -1.0;
        let mut out = Vec::new();
        write_header(&mut out, &h, true);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&300i16.to_be_bytes());
        out.extend_from_slice(&(-5i16).to_be_bytes());
        let v = Volume::from_bytes(&out, "t").unwrap();
        assert_eq!(v.data(), &[599.0, -11.0]);
        // Labels keep the big-endian header.
        let back = Volume::from_bytes(&v.encode_labels(Labels::I16(&[7, -2])).unwrap(), "t2").unwrap();
        assert_eq!(back.data(), &[7.0, -2.0]);
        assert_eq!(back.header().endianness, Endianness::Big);
    }
}
