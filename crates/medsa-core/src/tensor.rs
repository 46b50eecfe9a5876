//! The tensor type: a shape and contiguous row-major f32 data, in host memory or resident on a
//! device ([`crate::resident`]).
//!
//! There are no strided views and no autograd. Data-movement helpers ([`Tensor::permute`],
//! [`Tensor::narrow`], [`Tensor::cat`]) materialise their result on the host; the model calls
//! the Backend's ops of the same names, which keep device tensors on their device.

use crate::resident::DeviceData;
use crate::{Error, Result};
use std::sync::{Arc, OnceLock};

/// Largest element count a tensor may have (16 Gi elements, 64 GiB of f32). Shapes from outside
/// are checked against it before anything is allocated.
pub const MAX_ELEMENTS: usize = 1 << 34;

/// Element count of `shape`, or an error if it overflows or exceeds [`MAX_ELEMENTS`].
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    let mut n: usize = 1;
    for &d in shape {
        n = n.checked_mul(d).ok_or_else(|| Error::TooLarge {
            shape: shape.to_vec(),
            what: "element count overflows usize",
        })?;
    }
    if n > MAX_ELEMENTS {
        return Err(Error::TooLarge { shape: shape.to_vec(), what: "more than 2^34 elements" });
    }
    Ok(n)
}

/// A dense row-major f32 tensor.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    store: Store,
}

/// Where the elements are.
#[derive(Clone)]
enum Store {
    Host(Vec<f32>),
    /// On a device; `host` caches the one download a host read makes.
    Device {
        buf: Arc<dyn DeviceData>,
        host: OnceLock<Vec<f32>>,
    },
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.store {
            Store::Host(_) => write!(f, "Tensor{:?}", self.shape),
            Store::Device { .. } => write!(f, "Tensor{:?}@device", self.shape),
        }
    }
}

/// Equal shapes and elements (a device tensor is read for the comparison).
impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        self.shape == other.shape && self.data() == other.data()
    }
}

impl Tensor {
    /// A tensor from a shape and its row-major data; the lengths must agree.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Result<Self> {
        let shape = shape.into();
        let n = checked_numel(&shape)?;
        if n != data.len() {
            return Err(Error::shape(
                "Tensor::new",
                format!("shape {shape:?} needs {n} elements, data has {}", data.len()),
            ));
        }
        Ok(Tensor { shape, store: Store::Host(data) })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Result<Self> {
        Self::full(shape, 0.0)
    }

    /// A tensor filled with `value`.
    pub fn full(shape: impl Into<Vec<usize>>, value: f32) -> Result<Self> {
        let shape = shape.into();
        let n = checked_numel(&shape)?;
        Ok(Tensor { shape, store: Store::Host(vec![value; n]) })
    }

    /// A tensor whose element at flat index `i` is `f(i)`.
    pub fn from_fn(shape: impl Into<Vec<usize>>, f: impl FnMut(usize) -> f32) -> Result<Self> {
        let shape = shape.into();
        let n = checked_numel(&shape)?;
        Ok(Tensor { shape, store: Store::Host((0..n).map(f).collect()) })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Size of dimension `i` (negative `i` counts from the end is not supported: use `rank`).
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    /// Size of the last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// A tensor of `shape` whose elements are the first `numel(shape)` of a device buffer
    /// (what a backend returns; see [`crate::resident`]).
    pub fn on_device(shape: impl Into<Vec<usize>>, buf: Arc<dyn DeviceData>) -> Result<Self> {
        let shape = shape.into();
        let n = checked_numel(&shape)?;
        if buf.len() < n {
            return Err(Error::shape(
                "Tensor::on_device",
                format!("shape {shape:?} needs {n} elements, the buffer holds {}", buf.len()),
            ));
        }
        Ok(Tensor { shape, store: Store::Device { buf, host: OnceLock::new() } })
    }

    /// The device buffer, when the tensor is resident on a device.
    pub fn device_data(&self) -> Option<&Arc<dyn DeviceData>> {
        match &self.store {
            Store::Host(_) => None,
            Store::Device { buf, .. } => Some(buf),
        }
    }

    /// Whether `self` and `other` hold the same elements of the same shape, without reading a
    /// device: two device tensors are the same when they share one buffer, two host tensors
    /// when their elements are equal; a host and a device tensor are never the same.
    pub fn same_data(&self, other: &Tensor) -> bool {
        self.shape == other.shape
            && match (&self.store, &other.store) {
                (Store::Host(a), Store::Host(b)) => a == b,
                (Store::Device { buf: a, .. }, Store::Device { buf: b, .. }) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// Whether the elements are in host memory (not resident on a device).
    pub fn is_host(&self) -> bool {
        matches!(self.store, Store::Host(_))
    }

    /// The data, row-major; a device tensor is downloaded once (and the copy kept), or the
    /// device's error is returned.
    pub fn try_data(&self) -> Result<&[f32]> {
        match &self.store {
            Store::Host(v) => Ok(v),
            Store::Device { buf, host } => {
                if let Some(v) = host.get() {
                    return Ok(v);
                }
                let v = buf.read(self.numel()).map_err(|msg| Error::Backend { backend: "device", msg })?;
                Ok(host.get_or_init(|| v))
            }
        }
    }

    /// The data, row-major. A device tensor is downloaded once, as [`Tensor::try_data`] does;
    /// code that can meet a failing device calls that (or [`crate::Backend::download`]) instead.
    ///
    /// # Panics
    /// If the tensor is resident on a device and reading it fails.
    pub fn data(&self) -> &[f32] {
        match self.try_data() {
            Ok(v) => v,
            Err(e) => panic!("reading a device tensor {:?}: {e}", self.shape),
        }
    }

    /// The data, mutable; a device tensor moves to the host first.
    pub fn data_mut(&mut self) -> &mut [f32] {
        if let Store::Device { .. } = self.store {
            let v = self.data().to_vec();
            self.store = Store::Host(v);
        }
        match &mut self.store {
            Store::Host(v) => v,
            Store::Device { .. } => unreachable!("moved to the host above"),
        }
    }

    /// Consumes the tensor, returning its data (a device tensor is downloaded).
    ///
    /// # Panics
    /// As [`Tensor::data`].
    pub fn into_data(self) -> Vec<f32> {
        let n = self.numel();
        match self.store {
            Store::Host(v) => v,
            Store::Device { buf, host } => host.into_inner().unwrap_or_else(|| match buf.read(n) {
                Ok(v) => v,
                Err(e) => panic!("reading a device tensor {:?}: {e}", self.shape),
            }),
        }
    }

    /// The tensor in host memory: itself if it is there, else downloaded (or the device's error).
    pub fn into_host(self) -> Result<Tensor> {
        if self.is_host() {
            return Ok(self);
        }
        self.try_data()?;
        let shape = self.shape.clone();
        Ok(Tensor { shape, store: Store::Host(self.into_data()) })
    }

    /// Same data, new shape (same element count); a device tensor stays on its device.
    pub fn reshape(self, shape: impl Into<Vec<usize>>) -> Result<Self> {
        let shape = shape.into();
        let n = checked_numel(&shape)?;
        if n != self.numel() {
            return Err(Error::shape("reshape", format!("cannot view {:?} as {shape:?}", self.shape)));
        }
        Ok(Tensor { shape, store: self.store })
    }

    /// Checks that the shape equals `expected`; `what` names the tensor in the error.
    pub fn expect_shape(&self, op: &'static str, what: &str, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(Error::shape(
                op,
                format!("{what} has shape {:?}, expected {expected:?}", self.shape),
            ));
        }
        Ok(())
    }

    /// Checks the rank; `what` names the tensor in the error.
    pub fn expect_rank(&self, op: &'static str, what: &str, rank: usize) -> Result<()> {
        if self.rank() != rank {
            return Err(Error::shape(
                op,
                format!("{what} must have rank {rank}, got shape {:?}", self.shape),
            ));
        }
        Ok(())
    }

    /// Materialised permutation of the axes: output axis `i` is input axis `perm[i]`.
    /// Large tensors are copied in parallel (rayon), in blocks of output rows.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        use rayon::prelude::*;
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::arg("permute", format!("{perm:?} is not a permutation of {r} axes")));
        }
        let out_shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        let data = self.data();
        if r == 0 || data.is_empty() {
            return Tensor::new(out_shape, data.to_vec());
        }
        if r >= 2
            && perm[r - 2] == r - 1
            && perm[r - 1] == r - 2
            && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
        {
            let (rows, cols) = (self.shape[r - 2], self.shape[r - 1]);
            return Tensor::new(out_shape, transpose_last2(data, rows, cols));
        }
        let in_strides = strides(&self.shape);
        let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
        let inner = out_shape[r - 1];
        let inner_stride = src_strides[r - 1];
        let outer_shape = &out_shape[..r - 1];
        let mut out = vec![0f32; data.len()];
        // Each task fills `rows` consecutive output rows of `inner` elements.
        let rows = (1 << 16) / inner.max(1) + 1;
        let fill = |(task, chunk): (usize, &mut [f32])| {
            let first_row = task * rows;
            // Multi-index of the first row over the outer axes.
            let mut idx = vec![0usize; r - 1];
            let mut rem = first_row;
            for a in (0..r - 1).rev() {
                idx[a] = rem % outer_shape[a];
                rem /= outer_shape[a];
            }
            for row in chunk.chunks_exact_mut(inner) {
                let base: usize = idx.iter().zip(&src_strides).map(|(i, s)| i * s).sum();
                if inner_stride == 1 {
                    row.copy_from_slice(&data[base..base + inner]);
                } else {
                    row.iter_mut().enumerate().for_each(|(j, v)| *v = data[base + j * inner_stride]);
                }
                for a in (0..r - 1).rev() {
                    idx[a] += 1;
                    if idx[a] < outer_shape[a] {
                        break;
                    }
                    idx[a] = 0;
                }
            }
        };
        if out.len() < crate::par::SERIAL_BELOW {
            out.chunks_mut(rows * inner).enumerate().for_each(fill);
        } else {
            out.par_chunks_mut(rows * inner).enumerate().for_each(fill);
        }
        Tensor::new(out_shape, out)
    }

    /// The slice `start..start+len` of axis `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        if dim >= self.rank() || start.checked_add(len).is_none_or(|e| e > self.shape[dim]) {
            return Err(Error::arg(
                "narrow",
                format!("axis {dim} range {start}..{start}+{len} outside shape {:?}", self.shape),
            ));
        }
        let outer: usize = self.shape[..dim].iter().product();
        let inner: usize = self.shape[dim + 1..].iter().product();
        let d = self.shape[dim];
        let mut out = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let base = (o * d + start) * inner;
            out.extend_from_slice(&self.data()[base..base + len * inner]);
        }
        let mut shape = self.shape.clone();
        shape[dim] = len;
        Tensor::new(shape, out)
    }

    /// Concatenation along axis `dim`; all other axes must agree.
    pub fn cat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = parts.first().ok_or_else(|| Error::arg("cat", "no tensors"))?;
        let r = first.rank();
        if dim >= r {
            return Err(Error::arg("cat", format!("axis {dim} out of range for rank {r}")));
        }
        for p in parts {
            let ok = p.rank() == r
                && p.shape.iter().zip(&first.shape).enumerate().all(|(i, (a, b))| i == dim || a == b);
            if !ok {
                return Err(Error::shape(
                    "cat",
                    format!("{:?} and {:?} differ off axis {dim}", first.shape, p.shape),
                ));
            }
        }
        let outer: usize = first.shape[..dim].iter().product();
        let inner: usize = first.shape[dim + 1..].iter().product();
        let total: usize = parts.iter().map(|p| p.shape[dim]).sum();
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for p in parts {
                let chunk = p.shape[dim] * inner;
                out.extend_from_slice(&p.data()[o * chunk..(o + 1) * chunk]);
            }
        }
        let mut shape = first.shape.clone();
        shape[dim] = total;
        Tensor::new(shape, out)
    }

    /// Elementwise sum of two tensors of the same shape.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        if self.shape != other.shape {
            return Err(Error::shape("add", format!("{:?} + {:?}", self.shape, other.shape)));
        }
        // Straight into a new buffer: a copy of `self` first would be one more pass over memory.
        let sum = self.data().iter().zip(other.data()).map(|(a, b)| a + b).collect();
        Tensor::new(self.shape.clone(), sum)
    }

    /// In-place elementwise `self += other`.
    pub fn add_assign(&mut self, other: &Tensor) -> Result<()> {
        if self.shape != other.shape {
            return Err(Error::shape("add", format!("{:?} + {:?}", self.shape, other.shape)));
        }
        self.data_mut().iter_mut().zip(other.data()).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// In-place `self += other`, `other` broadcast as in [`Tensor::add_scaled_assign`] (e.g. a
    /// `[C]` bias on `[N, C]`).
    pub fn add_broadcast_assign(&mut self, other: &Tensor) -> Result<()> {
        self.add_scaled_assign(other, 1.0)
    }

    /// In-place `self += s·other` (each element `self + (s·other)`, rounded twice; `s = 1`
    /// adds exactly), `other` broadcast onto `self` by [`crate::shape::broadcast_run`]: the
    /// reference of [`crate::Backend::add_scaled`].
    pub fn add_scaled_assign(&mut self, other: &Tensor, s: f32) -> Result<()> {
        let (_, rep, inner) = crate::shape::broadcast_run(&self.shape, &other.shape)?;
        if inner == 0 || rep == 0 {
            return Ok(());
        }
        let b = other.data();
        for (i, run) in self.data_mut().chunks_exact_mut(inner).enumerate() {
            let row = &b[(i / rep) * inner..][..inner];
            if s == 1.0 {
                run.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            } else {
                run.iter_mut().zip(row).for_each(|(a, b)| *a += s * b);
            }
        }
        Ok(())
    }

    /// `self * s` elementwise.
    pub fn scale(mut self, s: f32) -> Tensor {
        self.data_mut().iter_mut().for_each(|v| *v *= s);
        self
    }

    /// Largest absolute value (0 for an empty tensor; NaN if any element is NaN).
    pub fn max_abs(&self) -> f32 {
        let mut m = 0f32;
        for &v in self.data() {
            if v.is_nan() {
                return f32::NAN;
            }
            m = m.max(v.abs());
        }
        m
    }

    /// True if every element is finite. Checked a block at a time without an early exit inside
    /// a block, so that the check vectorises (it runs on every gradient of every step).
    pub fn all_finite(&self) -> bool {
        self.data().chunks(1024).all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()))
    }
}

/// Every `[rows, cols]` matrix of `data` transposed to `[cols, rows]`, in parallel over bands of
/// `TILE` output rows. Inside a band, full `TILE × TILE` tiles go through a small array: whole
/// cache lines are read from `TILE` input rows and whole lines written to `TILE` output rows.
fn transpose_last2(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const TILE: usize = 16;
    let mut out = vec![0f32; data.len()];
    if rows == 0 || cols == 0 {
        return out;
    }
    let band_of = |(band, ob): (usize, &mut [f32]), im: &[f32]| {
        let c0 = band * TILE;
        let cw = ob.len() / rows;
        let full = if cw == TILE { rows / TILE * TILE } else { 0 };
        let mut tile = [[0f32; TILE]; TILE];
        for r0 in (0..full).step_by(TILE) {
            for (a, t) in tile.iter_mut().enumerate() {
                t.copy_from_slice(&im[(r0 + a) * cols + c0..][..TILE]);
            }
            for (b, dst) in ob.chunks_exact_mut(rows).enumerate() {
                for (a, d) in dst[r0..r0 + TILE].iter_mut().enumerate() {
                    *d = tile[a][b];
                }
            }
        }
        for r in full..rows {
            for (c, &v) in im[r * cols + c0..][..cw].iter().enumerate() {
                ob[c * rows + r] = v;
            }
        }
    };
    let m = rows * cols;
    if data.len() < crate::par::SERIAL_BELOW {
        for (om, im) in out.chunks_mut(m).zip(data.chunks(m)) {
            om.chunks_mut(TILE * rows).enumerate().for_each(|b| band_of(b, im));
        }
    } else {
        out.par_chunks_mut(m).zip(data.par_chunks(m)).for_each(|(om, im)| {
            om.par_chunks_mut(TILE * rows).enumerate().for_each(|b| band_of(b, im));
        });
    }
    out
}

/// Row-major strides of `shape`, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The block-wise check finds a NaN or an infinity wherever it sits: inside the first
    /// block, at a block's edge, in the short last block.
    #[test]
    fn all_finite_finds_every_non_finite_element() {
        let n = 3 * 1024 + 17;
        assert!(iota(&[n]).all_finite());
        for at in [0, 1023, 1024, 2500, n - 1] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut t = iota(&[n]);
                t.data_mut()[at] = bad;
                assert!(!t.all_finite(), "{bad} at {at}");
            }
        }
    }

    /// A device buffer that counts its reads (and can be made to fail them).
    #[derive(Debug)]
    struct FakeDevice {
        data: Vec<f32>,
        reads: std::sync::atomic::AtomicUsize,
        fail: bool,
    }

    impl DeviceData for FakeDevice {
        fn len(&self) -> usize {
            self.data.len()
        }
        fn read(&self, n: usize) -> std::result::Result<Vec<f32>, String> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.fail {
                return Err("device lost".into());
            }
            Ok(self.data[..n].to_vec())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn fake(data: Vec<f32>, fail: bool) -> Arc<FakeDevice> {
        Arc::new(FakeDevice { data, reads: Default::default(), fail })
    }

    /// A device tensor keeps its buffer through reshape and clone, is read once however often
    /// host code looks at it, moves to the host on a write, and reports a failing device as an
    /// error from `try_data` / `into_host`.
    #[test]
    fn device_tensors_read_once_and_move_to_the_host_on_write() {
        let reads = |d: &Arc<FakeDevice>| d.reads.load(std::sync::atomic::Ordering::Relaxed);
        let dev = fake((0..8).map(|i| i as f32).collect(), false);
        assert!(Tensor::on_device(vec![3, 3], dev.clone()).is_err(), "9 elements from a buffer of 8");
        let t = Tensor::on_device(vec![2, 3], dev.clone()).unwrap();
        assert!(!t.is_host() && t.device_data().is_some());
        let t = t.reshape(vec![3, 2]).unwrap();
        assert!(!t.is_host());
        assert_eq!(reads(&dev), 0, "reshape reads nothing");
        assert_eq!(t.data(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(t.data()[5], 5.0);
        assert_eq!(reads(&dev), 1, "the download is cached");
        let mut w = t.clone();
        w.data_mut()[0] = 9.0;
        assert!(w.is_host() && !t.is_host());
        assert_eq!(t.data()[0], 0.0, "the device tensor is unchanged");
        assert_eq!(t.permute(&[1, 0]).unwrap().data(), &[0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
        assert_eq!(t.clone().into_host().unwrap().data(), t.data());
        assert_eq!(reads(&dev), 1);
        let lost = Tensor::on_device(vec![2], fake(vec![1.0, 2.0], true)).unwrap();
        assert!(matches!(lost.try_data(), Err(Error::Backend { .. })));
        assert!(lost.into_host().is_err());
    }

    fn iota(shape: &[usize]) -> Tensor {
        Tensor::from_fn(shape.to_vec(), |i| i as f32).unwrap()
    }

    #[test]
    fn permute_matches_index_formula() {
        let t = iota(&[2, 3, 4, 5]);
        let p = t.permute(&[2, 0, 3, 1]).unwrap();
        assert_eq!(p.shape(), &[4, 2, 5, 3]);
        for a in 0..2 {
            for b in 0..3 {
                for c in 0..4 {
                    for d in 0..5 {
                        let src = t.data()[((a * 3 + b) * 4 + c) * 5 + d];
                        let dst = p.data()[((c * 2 + a) * 5 + d) * 3 + b];
                        assert_eq!(src, dst);
                    }
                }
            }
        }
        assert!(t.permute(&[0, 0, 1, 2]).is_err());
    }

    /// The tiled transpose of the last two axes against the index formula, on sizes that are
    /// not multiples of its tile.
    #[test]
    fn last_two_axes_transpose_matches_index_formula() {
        for (b, r, c) in [(1, 1, 1), (2, 33, 70), (3, 64, 31), (1, 100, 1), (2, 1, 45)] {
            let t = iota(&[b, r, c]);
            let p = t.permute(&[0, 2, 1]).unwrap();
            assert_eq!(p.shape(), &[b, c, r]);
            for bi in 0..b {
                for i in 0..r {
                    for j in 0..c {
                        assert_eq!(
                            p.data()[(bi * c + j) * r + i],
                            t.data()[(bi * r + i) * c + j],
                            "{b}x{r}x{c}"
                        );
                    }
                }
            }
        }
        let t = iota(&[5, 3]);
        assert_eq!(t.permute(&[1, 0]).unwrap().data()[..5], [0.0, 3.0, 6.0, 9.0, 12.0]);
    }

    #[test]
    fn narrow_and_cat_are_inverse() {
        let t = iota(&[3, 7, 2]);
        let a = t.narrow(1, 0, 3).unwrap();
        let b = t.narrow(1, 3, 4).unwrap();
        assert_eq!(Tensor::cat(&[&a, &b], 1).unwrap(), t);
        assert!(t.narrow(1, 5, 3).is_err());
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::zeros(vec![usize::MAX, 2]).is_err());
        assert!(Tensor::zeros(vec![1 << 20, 1 << 20]).is_err());
        let mut t = iota(&[2, 3]);
        assert!(t.add_broadcast_assign(&iota(&[2])).is_err());
        t.add_broadcast_assign(&iota(&[3])).unwrap();
        assert_eq!(t.data(), &[0.0, 2.0, 4.0, 3.0, 5.0, 7.0]);
    }

    #[test]
    fn add_scaled_broadcasts_one_run_of_unit_axes() {
        // [2, 1, 3] on [2, 2, 3]: each set's row on both queries.
        let mut t = Tensor::zeros(vec![2, 2, 3]).unwrap();
        t.add_scaled_assign(&iota(&[2, 1, 3]), 2.0).unwrap();
        assert_eq!(t.data(), &[0.0, 2.0, 4.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 6.0, 8.0, 10.0]);
        assert_eq!(crate::shape::broadcast_run(&[4, 5, 6], &[5, 6]).unwrap(), (1, 4, 30));
        assert_eq!(crate::shape::broadcast_run(&[4, 5, 6], &[4, 1, 1]).unwrap(), (4, 30, 1));
        assert_eq!(crate::shape::broadcast_run(&[4, 5, 6], &[4, 5, 6]).unwrap(), (1, 1, 120));
        // Two separate runs, a non-unit mismatch, a longer operand: refused.
        assert!(crate::shape::broadcast_run(&[4, 5, 6], &[1, 5, 1]).is_err());
        assert!(crate::shape::broadcast_run(&[4, 5, 6], &[4, 2, 6]).is_err());
        assert!(crate::shape::broadcast_run(&[5, 6], &[1, 5, 6]).is_err());
    }

    #[test]
    fn same_data_compares_host_elements() {
        let a = iota(&[2, 3]);
        assert!(a.same_data(&a.clone()));
        assert!(!a.same_data(&a.clone().reshape(vec![3, 2]).unwrap()));
        assert!(!a.same_data(&a.clone().scale(2.0)));
    }
}
