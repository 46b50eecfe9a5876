//! Binary masks in 2D and 3D: construction, tight bounding boxes, binary erosion, surfaces and
//! connected components.
//!
//! A [`Mask`] is a row-major array of booleans with a shape in axis order: `[height, width]` for
//! an image, `[depth, height, width]` for a volume (any rank >= 1 works). Pixel spacing, where an
//! operation needs it, is passed separately as one value per axis in the same order
//! (`[row spacing, column spacing]`, `[slice, row, column]`, in mm).
//!
//! Image border convention: [`Mask::erode`] treats everything outside the array as background
//! (scipy's `binary_erosion` with its default `border_value=0`), so foreground pixels on the
//! image border are always part of the [`Mask::surface`].

use crate::{EvalError, Result};

/// Largest element count a mask may have (2^34, the tensor limit of `medsa-core`).
pub const MAX_ELEMENTS: usize = medsa_core::tensor::MAX_ELEMENTS;

/// Largest rank a mask may have (full connectivity enumerates 3^rank neighbours).
pub const MAX_RANK: usize = 8;

/// Neighbourhood used by [`Mask::components`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Connectivity {
    /// Neighbours share a face: 4-connectivity in 2D, 6 in 3D (scipy `ndimage.label`'s default
    /// structure, and the cross-shaped structuring element of the erosion).
    Face,
    /// Neighbours share at least a corner: 8-connectivity in 2D, 26 in 3D.
    Full,
}

/// Tight, inclusive bounding box of a mask's foreground, per axis in the mask's axis order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BoundingBox {
    /// Smallest foreground index per axis.
    pub min: Vec<usize>,
    /// Largest foreground index per axis (inclusive).
    pub max: Vec<usize>,
}

impl BoundingBox {
    /// Number of pixels covered along each axis (`max - min + 1`).
    pub fn extent(&self) -> Vec<usize> {
        self.min.iter().zip(&self.max).map(|(a, b)| b - a + 1).collect()
    }
}

/// A binary mask: shape (axis order, row-major) and one `bool` per element.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mask {
    shape: Vec<usize>,
    data: Vec<bool>,
}

/// Element count of a mask shape, checked: 1 <= rank <= [`MAX_RANK`], no zero axis, no overflow, at most
/// [`MAX_ELEMENTS`].
pub(crate) fn checked_len(shape: &[usize]) -> Result<usize> {
    let bad = |msg: &str| EvalError::InvalidShape { shape: shape.to_vec(), msg: msg.to_string() };
    if shape.is_empty() {
        return Err(bad("rank 0; a mask needs at least one axis"));
    }
    if shape.len() > MAX_RANK {
        return Err(bad("rank above 8"));
    }
    if shape.contains(&0) {
        return Err(bad("an axis has length 0"));
    }
    let mut n: usize = 1;
    for &d in shape {
        n = n.checked_mul(d).ok_or_else(|| bad("element count overflows usize"))?;
    }
    if n > MAX_ELEMENTS {
        return Err(bad("more than 2^34 elements"));
    }
    Ok(n)
}

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1];
    }
    s
}

/// Writes the multi-index of the flat index `flat` into `out`.
pub(crate) fn unravel_into(flat: usize, shape: &[usize], out: &mut [usize]) {
    let mut r = flat;
    for k in (0..shape.len()).rev() {
        out[k] = r % shape[k];
        r /= shape[k];
    }
}

/// Checks that `spacing` has one finite positive value per axis of `shape`.
pub(crate) fn check_spacing(shape: &[usize], spacing: &[f64]) -> Result<()> {
    if spacing.len() != shape.len() || spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(EvalError::InvalidSpacing { spacing: spacing.to_vec(), rank: shape.len() });
    }
    Ok(())
}

impl Mask {
    /// A mask from its shape and row-major data.
    pub fn new(shape: &[usize], data: Vec<bool>) -> Result<Mask> {
        let n = checked_len(shape)?;
        if data.len() != n {
            return Err(EvalError::InvalidShape {
                shape: shape.to_vec(),
                msg: format!("data has {} elements, the shape needs {n}", data.len()),
            });
        }
        Ok(Mask { shape: shape.to_vec(), data })
    }

    /// An all-background mask.
    pub fn zeros(shape: &[usize]) -> Result<Mask> {
        let n = checked_len(shape)?;
        Ok(Mask { shape: shape.to_vec(), data: vec![false; n] })
    }

    /// A mask whose element at multi-index `idx` (axis order) is `f(idx)`.
    pub fn from_fn(shape: &[usize], mut f: impl FnMut(&[usize]) -> bool) -> Result<Mask> {
        let n = checked_len(shape)?;
        let mut idx = vec![0usize; shape.len()];
        let mut data = Vec::with_capacity(n);
        for flat in 0..n {
            unravel_into(flat, shape, &mut idx);
            data.push(f(&idx));
        }
        Ok(Mask { shape: shape.to_vec(), data })
    }

    /// Foreground where `value > threshold` (NaN is background). For logits use threshold 0.0,
    /// for probabilities 0.5.
    pub fn from_threshold(shape: &[usize], values: &[f32], threshold: f32) -> Result<Mask> {
        Mask::new(shape, values.iter().map(|&v| v > threshold).collect())
    }

    /// [`Mask::from_threshold`] on a tensor, keeping the tensor's shape.
    pub fn from_tensor(t: &medsa_core::Tensor, threshold: f32) -> Result<Mask> {
        Mask::from_threshold(t.shape(), t.data(), threshold)
    }

    /// Foreground where `labels[i] == label` (one structure of a label map).
    pub fn from_labels<T: PartialEq>(shape: &[usize], labels: &[T], label: &T) -> Result<Mask> {
        Mask::new(shape, labels.iter().map(|v| v == label).collect())
    }

    /// The shape in axis order.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Row-major data.
    pub fn data(&self) -> &[bool] {
        &self.data
    }

    /// Mutable row-major data (the length is fixed).
    pub fn data_mut(&mut self) -> &mut [bool] {
        &mut self.data
    }

    /// Number of elements (foreground and background).
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Number of foreground elements.
    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&b| b).count()
    }

    /// Whether at least one element is foreground.
    pub fn any(&self) -> bool {
        self.data.iter().any(|&b| b)
    }

    /// The value at a multi-index, or `None` outside the array.
    pub fn get(&self, idx: &[usize]) -> Option<bool> {
        if idx.len() != self.shape.len() || idx.iter().zip(&self.shape).any(|(i, d)| i >= d) {
            return None;
        }
        let flat = idx.iter().zip(strides(&self.shape)).map(|(i, s)| i * s).sum::<usize>();
        self.data.get(flat).copied()
    }

    /// Height of a 2D mask (`shape[0]`), or an error for other ranks.
    pub fn height(&self) -> Result<usize> {
        self.dims2("Mask::height").map(|(h, _)| h)
    }

    /// Width of a 2D mask (`shape[1]`), or an error for other ranks.
    pub fn width(&self) -> Result<usize> {
        self.dims2("Mask::width").map(|(_, w)| w)
    }

    /// `(height, width)` of a 2D mask.
    pub(crate) fn dims2(&self, what: &'static str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [h, w] => Ok((h, w)),
            _ => Err(EvalError::Not2d { what, shape: self.shape.clone() }),
        }
    }

    /// Multi-index of a flat index.
    pub fn unravel(&self, flat: usize) -> Vec<usize> {
        let mut out = vec![0; self.shape.len()];
        unravel_into(flat, &self.shape, &mut out);
        out
    }

    /// Flat indices of the foreground, ascending.
    pub fn foreground_indices(&self) -> Vec<usize> {
        self.data.iter().enumerate().filter_map(|(i, &b)| b.then_some(i)).collect()
    }

    fn zip_with(&self, other: &Mask, what: &'static str, f: impl Fn(bool, bool) -> bool) -> Result<Mask> {
        if self.shape != other.shape {
            return Err(EvalError::ShapeMismatch { what, a: self.shape.clone(), b: other.shape.clone() });
        }
        let data = self.data.iter().zip(&other.data).map(|(&a, &b)| f(a, b)).collect();
        Ok(Mask { shape: self.shape.clone(), data })
    }

    /// Elementwise `self AND other`.
    pub fn and(&self, other: &Mask) -> Result<Mask> {
        self.zip_with(other, "Mask::and", |a, b| a & b)
    }

    /// Elementwise `self OR other`.
    pub fn or(&self, other: &Mask) -> Result<Mask> {
        self.zip_with(other, "Mask::or", |a, b| a | b)
    }

    /// Elementwise `self AND NOT other`.
    pub fn and_not(&self, other: &Mask) -> Result<Mask> {
        self.zip_with(other, "Mask::and_not", |a, b| a & !b)
    }

    /// Elementwise `self XOR other`.
    pub fn xor(&self, other: &Mask) -> Result<Mask> {
        self.zip_with(other, "Mask::xor", |a, b| a ^ b)
    }

    /// Elementwise complement.
    pub fn not(&self) -> Mask {
        Mask { shape: self.shape.clone(), data: self.data.iter().map(|b| !b).collect() }
    }

    /// Tight inclusive bounding box of the foreground, `None` for an empty mask.
    pub fn bbox(&self) -> Option<BoundingBox> {
        let r = self.rank();
        let mut min = vec![usize::MAX; r];
        let mut max = vec![0usize; r];
        let mut idx = vec![0usize; r];
        let mut found = false;
        for (flat, &b) in self.data.iter().enumerate() {
            if b {
                found = true;
                unravel_into(flat, &self.shape, &mut idx);
                for k in 0..r {
                    min[k] = min[k].min(idx[k]);
                    max[k] = max[k].max(idx[k]);
                }
            }
        }
        found.then_some(BoundingBox { min, max })
    }

    /// Binary erosion with the cross-shaped structuring element (a pixel and its 2·rank face
    /// neighbours; scipy's `generate_binary_structure(rank, 1)`, MONAI's default). Outside the
    /// array counts as background, so foreground on the image border is eroded away.
    pub fn erode(&self) -> Mask {
        let st = strides(&self.shape);
        let mut idx = vec![0usize; self.rank()];
        let mut out = vec![false; self.data.len()];
        for (flat, &b) in self.data.iter().enumerate() {
            if !b {
                continue;
            }
            unravel_into(flat, &self.shape, &mut idx);
            let mut keep = true;
            for k in 0..self.rank() {
                if idx[k] == 0
                    || idx[k] + 1 == self.shape[k]
                    || !self.data[flat - st[k]]
                    || !self.data[flat + st[k]]
                {
                    keep = false;
                    break;
                }
            }
            out[flat] = keep;
        }
        Mask { shape: self.shape.clone(), data: out }
    }

    /// The surface (boundary) of the mask: the mask minus its [`Mask::erode`]. Border
    /// foreground pixels are surface; an empty mask has an empty surface.
    pub fn surface(&self) -> Mask {
        let e = self.erode();
        let data = self.data.iter().zip(&e.data).map(|(&a, &b)| a & !b).collect();
        Mask { shape: self.shape.clone(), data }
    }

    /// Connected components of the foreground, labelled 1, 2, ... in order of their first
    /// element in row-major order.
    pub fn components(&self, connectivity: Connectivity) -> Components {
        let r = self.rank();
        // Neighbour offsets as per-axis deltas in {-1, 0, 1}.
        let mut offsets: Vec<Vec<isize>> = Vec::new();
        match connectivity {
            Connectivity::Face => {
                for k in 0..r {
                    for d in [-1isize, 1] {
                        let mut o = vec![0isize; r];
                        o[k] = d;
                        offsets.push(o);
                    }
                }
            }
            Connectivity::Full => {
                let total = 3usize.pow(r as u32);
                for code in 0..total {
                    let mut c = code;
                    let mut o = vec![0isize; r];
                    for ok in o.iter_mut() {
                        *ok = (c % 3) as isize - 1;
                        c /= 3;
                    }
                    if o.iter().any(|&d| d != 0) {
                        offsets.push(o);
                    }
                }
            }
        }
        let st = strides(&self.shape);
        let mut labels = vec![0u32; self.data.len()];
        let mut sizes = Vec::new();
        let mut stack = Vec::new();
        let mut idx = vec![0usize; r];
        for start in 0..self.data.len() {
            if !self.data[start] || labels[start] != 0 {
                continue;
            }
            let label = sizes.len() as u32 + 1;
            let mut size = 0usize;
            labels[start] = label;
            stack.push(start);
            while let Some(p) = stack.pop() {
                size += 1;
                unravel_into(p, &self.shape, &mut idx);
                'nb: for o in &offsets {
                    let mut q = p as isize;
                    for k in 0..r {
                        let c = idx[k] as isize + o[k];
                        if c < 0 || c >= self.shape[k] as isize {
                            continue 'nb;
                        }
                        q += o[k] * st[k] as isize;
                    }
                    let q = q as usize;
                    if self.data[q] && labels[q] == 0 {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
            sizes.push(size);
        }
        Components { shape: self.shape.clone(), labels, sizes }
    }

    /// The sub-mask at `index` along `axis` (rank - 1), e.g. slice `z` of a `[D, H, W]` volume
    /// with `axis = 0`.
    pub fn slice(&self, axis: usize, index: usize) -> Result<Mask> {
        if self.rank() < 2 || axis >= self.rank() || index >= self.shape[axis] {
            return Err(EvalError::arg(
                "Mask::slice",
                format!("axis {axis} index {index} for a mask of shape {:?}", self.shape),
            ));
        }
        let outer: usize = self.shape[..axis].iter().product();
        let inner: usize = self.shape[axis + 1..].iter().product();
        let n = self.shape[axis];
        let mut data = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            let base = (o * n + index) * inner;
            data.extend_from_slice(&self.data[base..base + inner]);
        }
        let mut shape = self.shape.clone();
        shape.remove(axis);
        Ok(Mask { shape, data })
    }

    /// Stacks equally shaped masks along a new leading axis (slices into a volume).
    pub fn stack(slices: &[Mask]) -> Result<Mask> {
        let first = slices.first().ok_or_else(|| EvalError::arg("Mask::stack", "no slices"))?;
        let mut shape = vec![slices.len()];
        shape.extend_from_slice(&first.shape);
        checked_len(&shape)?;
        let mut data = Vec::with_capacity(first.numel() * slices.len());
        for s in slices {
            if s.shape != first.shape {
                return Err(EvalError::ShapeMismatch {
                    what: "Mask::stack",
                    a: first.shape.clone(),
                    b: s.shape.clone(),
                });
            }
            data.extend_from_slice(&s.data);
        }
        Ok(Mask { shape, data })
    }
}

/// The connected components of a mask ([`Mask::components`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Components {
    shape: Vec<usize>,
    labels: Vec<u32>,
    sizes: Vec<usize>,
}

impl Components {
    /// Per-element labels: 0 for background, 1..=[`Components::count`] for the components.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Number of components.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }

    /// Element count of component `label` (1-based), 0 for an unknown label.
    pub fn size(&self, label: u32) -> usize {
        (label as usize).checked_sub(1).and_then(|i| self.sizes.get(i)).copied().unwrap_or(0)
    }

    /// Element counts of components 1, 2, ...
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The label of the largest component (the first one on ties), `None` if there is none.
    pub fn largest(&self) -> Option<u32> {
        let mut best: Option<(usize, usize)> = None;
        for (i, &s) in self.sizes.iter().enumerate() {
            if best.is_none_or(|(_, bs)| s > bs) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i as u32 + 1)
    }

    /// The mask of one component.
    pub fn mask_of(&self, label: u32) -> Mask {
        Mask {
            shape: self.shape.clone(),
            data: self.labels.iter().map(|&l| l == label && label != 0).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: &[&str]) -> Mask {
        let h = rows.len();
        let w = rows[0].len();
        let data = rows.iter().flat_map(|r| r.bytes().map(|b| b == b'#')).collect();
        Mask::new(&[h, w], data).expect("test mask")
    }

    #[test]
    fn shape_checks() {
        assert!(Mask::new(&[2, 2], vec![true; 3]).is_err());
        assert!(Mask::zeros(&[]).is_err());
        assert!(Mask::zeros(&[3, 0]).is_err());
        assert!(Mask::zeros(&[usize::MAX, 2]).is_err());
        let a = Mask::zeros(&[2, 2]).expect("ok");
        let b = Mask::zeros(&[2, 3]).expect("ok");
        assert!(a.and(&b).is_err());
    }

    #[test]
    fn bbox_and_surface() {
        let a = m(&["......", ".####.", ".####.", ".####.", "......"]);
        let bb = a.bbox().expect("non-empty");
        assert_eq!(bb.min, vec![1, 1]);
        assert_eq!(bb.max, vec![3, 4]);
        assert_eq!(bb.extent(), vec![3, 4]);
        assert_eq!(a.erode(), m(&["......", "......", "..##..", "......", "......"]));
        assert_eq!(a.surface(), m(&["......", ".####.", ".#..#.", ".####.", "......"]));
        assert_eq!(Mask::zeros(&[3, 3]).expect("ok").bbox(), None);
    }

    #[test]
    fn border_pixels_are_surface() {
        let full = Mask::from_fn(&[4, 5], |_| true).expect("ok");
        assert_eq!(full.surface(), m(&["#####", "#...#", "#...#", "#####"]));
        // 3D: a full 3x3x3 cube keeps only its centre after erosion.
        let cube = Mask::from_fn(&[3, 3, 3], |_| true).expect("ok");
        assert_eq!(cube.erode().count(), 1);
        assert_eq!(cube.surface().count(), 26);
    }

    #[test]
    fn components_face_vs_full() {
        let a = m(&["#..#", ".#.#", "....", "##.."]);
        let face = a.components(Connectivity::Face);
        assert_eq!(face.count(), 4);
        assert_eq!(face.sizes(), &[1, 2, 1, 2]);
        assert_eq!(face.largest(), Some(2));
        let full = a.components(Connectivity::Full);
        assert_eq!(full.count(), 3);
        assert_eq!(full.sizes(), &[2, 2, 2]);
        assert_eq!(full.mask_of(1), m(&["#...", ".#..", "....", "...."]));
    }

    #[test]
    fn slice_and_stack_roundtrip() {
        let v = Mask::from_fn(&[3, 4, 5], |i| (i[0] + 2 * i[1] + i[2]) % 3 == 0).expect("ok");
        let slices: Vec<Mask> = (0..3).map(|z| v.slice(0, z).expect("slice")).collect();
        assert_eq!(Mask::stack(&slices).expect("stack"), v);
        let s = v.slice(1, 2).expect("slice");
        assert_eq!(s.shape(), &[3, 5]);
        assert_eq!(s.get(&[1, 4]), v.get(&[1, 2, 4]));
        assert!(v.slice(3, 0).is_err());
    }
}
