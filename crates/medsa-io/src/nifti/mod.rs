//! The NIfTI-1 codec: read `.nii` / `.nii.gz` into an f32 [`Volume`] with its geometry, and
//! write label masks on the input's grid.
//!
//! Slicing lives in [`crate::geometry`]; its items are re-exported here ([`Axis`], [`Slice`],
//! [`SliceGeometry`], [`extract_slice`], [`insert_slice`]) so `medsa_io::nifti::Axis` and the
//! other old paths keep working, and [`Volume::slice`] cuts a slice of a volume.
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
//! - **Slice orientation**: as [`crate::geometry`] says (row 0 is the top of a display).
//!
//! # Limits
//!
//! Only single-file NIfTI-1 (`n+1` magic) with scalar integer or float voxels is read; header/
//! image pairs, NIfTI-2, complex and RGB voxels are typed errors. A volume is 3-D; a 4-D file
//! with one time point (and any trailing dims of size 1) is accepted as 3-D. The voxel count is
//! checked against [`MAX_VOXELS`] before anything is allocated, and voxel bytes are read in
//! pieces as they arrive, so a small file that claims a huge volume costs nothing. The header
//! checks and the header writer are in the private `header` module.

mod header;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use ::nifti::Endianness;
/// The NIfTI-1 header type of the `nifti` crate, as kept by [`Volume::header`].
pub use ::nifti::NiftiHeader;

use crate::error::{io, name, Error, Result};
pub use crate::geometry::{extract_slice, insert_slice, Axis, Slice, SliceGeometry};
pub use header::MAX_VOXELS;
use header::{affine_of, header_err, validate_header, write_header, HEADER_BYTES};

/// Largest extension region (bytes between the 348-byte header and `vox_offset`) accepted.
const MAX_EXTENSION_BYTES: usize = 64 << 20;

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
    /// The slice `index` along `axis`, oriented as [`crate::geometry`] says.
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

// ----- reading ---------------------------------------------------------------------------------

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
