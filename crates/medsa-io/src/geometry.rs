//! Slice geometry of a 3-D voxel grid: the axes, and moving 2-D slices out of and into a
//! volume along any of them. Pure index arithmetic on `[x, y, z]` data; no file format.
//!
//! # Conventions
//!
//! - **Index order.** A volume's data is indexed `[x, y, z]` with `x` fastest in memory, as
//!   NIfTI stores voxels: voxel `(x, y, z)` is `data[x + nx * (y + ny * z)]`.
//! - **Slice orientation** ([`Axis`], [`extract_slice`]): the two in-plane axes are the
//!   remaining ones in increasing order (`Z` -> `(x, y)`, `Y` -> `(x, z)`, `X` -> `(y, z)`).
//!   Columns follow the first in-plane axis from index 0; rows follow the second **from its last
//!   index down**, so that row 0 is the top of a display. This is numpy's
//!   `np.rot90(vol[..., k])` for `vol[x, y, z]`: for an RAS volume an axial slice has row 0
//!   anterior and column 0 the subject's left, the convention of `../shared/data/cases2d`.

use crate::error::{Error, Result};

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
    /// `"X"`, `"Y"` or `"Z"`, as errors name the axis.
    pub fn label(self) -> &'static str {
        match self {
            Axis::X => "X",
            Axis::Y => "Y",
            Axis::Z => "Z",
        }
    }

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
            axis: axis.label(),
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
            axis: axis.label(),
            index,
            msg: format!("volume data has {len} values, dims {dims:?} need {n:?}"),
        });
    }
    SliceGeometry::new(dims, axis, index).ok_or_else(|| Error::Slice {
        axis: axis.label(),
        index,
        msg: format!("index outside 0..{} (dims {dims:?})", dims[axis.index()]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
