//! The NIfTI-1 header of the codec: the checks a parsed header must pass before any voxel is
//! read (dims, voxel type, spacing, size limit), its voxel-to-world matrix, and its 348-byte
//! serialisation in either byte order.

use ::nifti::NiftiHeader;

use crate::error::{Error, Result};

/// Largest voxel count read or written (2^31 voxels, 8 GiB as f32).
pub const MAX_VOXELS: usize = 1 << 31;

/// Size of a NIfTI-1 header.
pub(super) const HEADER_BYTES: usize = 348;

/// Scalar voxel types of NIfTI-1 that are read.
#[derive(Clone, Copy, Debug)]
pub(super) enum Scalar {
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
    pub(super) fn from_code(code: i16) -> Option<Scalar> {
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

    pub(super) fn size(self) -> usize {
        match self {
            Scalar::U8 | Scalar::I8 => 1,
            Scalar::I16 | Scalar::U16 => 2,
            Scalar::I32 | Scalar::U32 | Scalar::F32 => 4,
            Scalar::I64 | Scalar::U64 | Scalar::F64 => 8,
        }
    }

    /// Decodes one element from exactly `size()` bytes.
    pub(super) fn decode(self, b: &[u8], big: bool) -> f64 {
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

/// An [`Error::NiftiHeader`] for `file`.
pub(super) fn header_err(file: &str, msg: impl Into<String>) -> Error {
    Error::NiftiHeader { file: file.into(), msg: msg.into() }
}

/// Checks everything about `h` that the volume path needs; returns `(dims, scalar, n)`.
pub(super) fn validate_header(h: &NiftiHeader, file: &str) -> Result<([usize; 3], Scalar, usize)> {
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

/// The voxel-to-world matrix of `h` (sform, else qform, else pixdim diagonal).
pub(super) fn affine_of(h: &NiftiHeader) -> [[f64; 4]; 4] {
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
pub(super) fn write_header(out: &mut Vec<u8>, h: &NiftiHeader, big: bool) {
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
