//! PyTorch `.pth` checkpoints (the zip format of `torch.save` since 1.6) read without Python,
//! and a safetensors writer for `medsa convert`.
//!
//! # What is read
//!
//! A checkpoint is a zip archive `<name>/data.pkl` + `<name>/data/<key>` (+ `version`,
//! `byteorder`). `data.pkl` is unpickled by a restricted virtual machine that executes nothing
//! (see the `pickle` submodule): any global outside a short allow-list (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor{,_v2}`, `torch._utils._rebuild_parameter{,_with_state}`,
//! `torch.<Dtype>Storage`) is rejected with [`Error::UnsafeGlobal`] as soon as it is read. Tensors
//! are then rebuilt from their storages with offset, size and stride (non-contiguous views are
//! materialised) into row-major data:
//!
//! - floating storages (`float32`, `float16`, `bfloat16`, `float64`) as f32 values;
//! - integer and bool storages as i64 values (so `num_batches_tracked` is kept exactly).
//!
//! Recognised layouts ([`Checkpoint::layout`]):
//! - a plain state dict (SAM, LiteMedSAM): `{name: tensor}`;
//! - a training checkpoint (Med-SA): a dict with the weights under `state_dict` (or `model`),
//!   whose other entries (`epoch`, `best_tol`, `model` name, ...) become [`Checkpoint::fields`].
//!   Only the selected weights are read from the archive; optimizer state is not loaded.
//!
//! Big-endian archives (`byteorder` = `big`) are rejected.

mod pickle;

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;

use medsa_core::Tensor;

use crate::error::{io, name, Error, Result};
use pickle::{Id, Obj, Pickled, TensorRef};

pub use pickle::StorageDType;

/// Largest `data.pkl` accepted (SAM ViT-H's is about 100 KB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// A tensor read from a checkpoint, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PthTensor {
    /// The storage dtype in the file.
    pub dtype: StorageDType,
    /// The shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: TensorData,
}

/// Values of a [`PthTensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Floating-point storages, converted to f32 (exact for f32/f16/bf16).
    F32(Vec<f32>),
    /// Integer and bool storages, widened to i64.
    I64(Vec<i64>),
}

impl PthTensor {
    /// Element count.
    pub fn numel(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// The tensor as a medsa-core f32 [`Tensor`] (integer values are converted to f32).
    pub fn to_tensor(&self) -> Result<Tensor> {
        let data = match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        };
        Ok(Tensor::new(self.shape.clone(), data)?)
    }
}

/// A non-tensor entry of a checkpoint (epoch, metrics, names).
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// Python `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// Anything else, described (`dict with 3 entries`, `tensor [2, 3]`), not loaded.
    Other(String),
}

/// Where the weights were found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The top-level object is the state dict.
    StateDict,
    /// The state dict is the entry with this key of a top-level dict.
    Nested(String),
}

/// The tensors (in file order) and scalar fields of a checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    tensors: Vec<(String, PthTensor)>,
    index: HashMap<String, usize>,
    fields: Vec<(String, Field)>,
    layout: Layout,
}

impl Checkpoint {
    /// Tensors in the order of the file's state dict.
    pub fn tensors(&self) -> &[(String, PthTensor)] {
        &self.tensors
    }
    /// Consumes the checkpoint, returning its tensors in file order.
    pub fn into_tensors(self) -> Vec<(String, PthTensor)> {
        self.tensors
    }
    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&PthTensor> {
        self.index.get(name).map(|&i| &self.tensors[i].1)
    }
    /// Non-tensor entries: the top-level fields of a training checkpoint, and any non-tensor
    /// value found inside the state dict (named `<state dict key>.<name>`).
    pub fn fields(&self) -> &[(String, Field)] {
        &self.fields
    }
    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
    /// Where the weights were found.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// Reads a `.pth` checkpoint file.
pub fn read_pth(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    read_archive(std::io::BufReader::new(file), &name(path))
}

/// Reads a `.pth` checkpoint held in memory; `file` names it in errors.
pub fn read_pth_bytes(bytes: &[u8], file: &str) -> Result<Checkpoint> {
    read_archive(std::io::Cursor::new(bytes), file)
}

fn zip_err(file: &str, e: impl std::fmt::Display) -> Error {
    Error::Zip { file: file.into(), msg: e.to_string() }
}

fn read_archive<R: Read + Seek>(reader: R, file: &str) -> Result<Checkpoint> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| zip_err(file, e))?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok()).map(|n| n.into_owned()).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .or_else(|| names.iter().find(|n| n.as_str() == "data.pkl"))
        .ok_or_else(|| Error::Layout {
            file: file.into(),
            msg: format!(
                "no <name>/data.pkl entry among {} entries; not a torch.save zip archive",
                names.len()
            ),
        })?
        .clone();
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_owned();

    let byteorder = format!("{prefix}byteorder");
    if names.contains(&byteorder) {
        let order = read_entry(&mut zip, &byteorder, 64, file)?;
        if order.trim_ascii() != b"little" {
            return Err(Error::Layout {
                file: file.into(),
                msg: format!(
                    "byteorder {:?} (only little-endian archives are read)",
                    String::from_utf8_lossy(&order)
                ),
            });
        }
    }

    let bytes = read_entry(&mut zip, &pkl, MAX_PICKLE_BYTES, file)?;
    let pickled = pickle::unpickle(&bytes, file)?;
    drop(bytes);
    let (layout, entries, fields) = select(&pickled, file)?;

    // Validate every view first; read each storage once, only as far as its views reach, and
    // drop it after its last tensor.
    let views: Vec<View> = entries.iter().map(|(k, t)| View::new(k, t, file)).collect::<Result<_>>()?;
    let mut uses: HashMap<&str, (usize, u64)> = HashMap::new();
    for ((_, t), v) in entries.iter().zip(&views) {
        let u = uses.entry(t.storage.as_str()).or_default();
        u.0 += 1;
        u.1 = u.1.max(v.needed.saturating_mul(t.dtype.size() as u64));
    }
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    let mut index = HashMap::with_capacity(entries.len());
    for ((key, t), view) in entries.iter().zip(views) {
        let want = uses.get(t.storage.as_str()).map_or(0, |u| u.1);
        if !cache.contains_key(&t.storage) {
            let entry = format!("{prefix}data/{}", t.storage);
            let data = read_prefix(&mut zip, &entry, want, file)?;
            cache.insert(t.storage.clone(), data);
        }
        let storage = cache.get(&t.storage).map(Vec::as_slice).unwrap_or(&[]);
        let tensor = materialise(key, t, view, storage, file)?;
        if let Some(n) = uses.get_mut(t.storage.as_str()) {
            n.0 -= 1;
            if n.0 == 0 {
                cache.remove(&t.storage);
            }
        }
        if index.insert(key.clone(), tensors.len()).is_some() {
            return Err(Error::Layout { file: file.into(), msg: format!("duplicate key {key}") });
        }
        tensors.push((key.clone(), tensor));
    }
    Ok(Checkpoint { tensors, index, fields, layout })
}

fn open_entry<'z, R: Read + Seek>(
    zip: &'z mut zip::ZipArchive<R>,
    entry: &str,
    file: &str,
) -> Result<zip::read::ZipFile<'z, R>> {
    zip.by_name(entry).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => Error::MissingEntry { file: file.into(), entry: entry.into() },
        e => zip_err(file, format!("{entry}: {e}")),
    })
}

/// Reads `f` up to `want` bytes; the allocation grows with the bytes that really arrive.
fn read_up_to(f: impl Read, want: u64, entry: &str, file: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    f.take(want).read_to_end(&mut out).map_err(|e| zip_err(file, format!("{entry}: {e}")))?;
    if (out.len() as u64) < want {
        return Err(zip_err(file, format!("{entry}: {} of {want} bytes readable", out.len())));
    }
    Ok(out)
}

/// Reads a whole zip entry of at most `limit` bytes.
fn read_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    entry: &str,
    limit: u64,
    file: &str,
) -> Result<Vec<u8>> {
    let f = open_entry(zip, entry, file)?;
    let size = f.size();
    if size > limit {
        return Err(Error::Layout {
            file: file.into(),
            msg: format!("{entry} is {size} bytes, more than the limit of {limit}"),
        });
    }
    read_up_to(f, size, entry, file)
}

/// Reads the first `want` bytes of a storage entry (all of it when it is shorter).
fn read_prefix<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    entry: &str,
    want: u64,
    file: &str,
) -> Result<Vec<u8>> {
    let f = open_entry(zip, entry, file)?;
    let n = f.size().min(want);
    read_up_to(f, n, entry, file)
}

type Selected = (Layout, Vec<(String, TensorRef)>, Vec<(String, Field)>);

/// Finds the state dict in the unpickled object and splits it into tensors and fields.
fn select(p: &Pickled, file: &str) -> Result<Selected> {
    let layout_err = |msg: String| Error::Layout { file: file.into(), msg };
    let root = match &p.arena[p.root] {
        Obj::Dict(d) => d,
        o => return Err(layout_err(format!("the pickled object is a {}, expected a dict", o.kind()))),
    };
    let key_of = |id: Id| match &p.arena[id] {
        Obj::Str(s) => Some(s.as_str()),
        _ => None,
    };
    let has_tensor = |d: &[(Id, Id)]| d.iter().any(|&(_, v)| matches!(p.arena[v], Obj::Tensor(_)));
    let nested = ["state_dict", "model"].into_iter().find_map(|want| {
        root.iter().find_map(|&(k, v)| match &p.arena[v] {
            Obj::Dict(d) if key_of(k) == Some(want) && has_tensor(d) => Some((want, d)),
            _ => None,
        })
    });
    let (layout, dict, prefix) = match nested {
        Some((k, d)) => (Layout::Nested(k.to_owned()), d, format!("{k}.")),
        None if has_tensor(root) => (Layout::StateDict, root, String::new()),
        None => {
            let keys: Vec<String> = root
                .iter()
                .take(12)
                .map(|&(k, v)| format!("{}: {}", key_of(k).unwrap_or("<non-str>"), p.arena[v].kind()))
                .collect();
            return Err(layout_err(format!(
                "no tensors at the top level nor under `state_dict` / `model` (entries: {})",
                keys.join(", ")
            )));
        }
    };
    let mut tensors = Vec::new();
    let mut fields = Vec::new();
    for &(k, v) in dict {
        let key = key_of(k)
            .ok_or_else(|| layout_err(format!("state dict key is a {}, expected str", p.arena[k].kind())))?;
        match &p.arena[v] {
            Obj::Tensor(t) => tensors.push((key.to_owned(), t.clone())),
            _ => fields.push((format!("{prefix}{key}"), field(p, v))),
        }
    }
    if let Layout::Nested(sel) = &layout {
        for &(k, v) in root {
            match key_of(k) {
                Some(key) if key == sel => {}
                Some(key) => fields.push((key.to_owned(), field(p, v))),
                None => fields.push((format!("<{} key>", p.arena[k].kind()), field(p, v))),
            }
        }
    }
    Ok((layout, tensors, fields))
}

fn field(p: &Pickled, id: Id) -> Field {
    match &p.arena[id] {
        Obj::None => Field::None,
        Obj::Bool(b) => Field::Bool(*b),
        Obj::Int(i) => Field::Int(*i),
        Obj::Float(f) => Field::Float(*f),
        Obj::Str(s) => Field::Str(s.clone()),
        Obj::Bytes(n) => Field::Other(format!("bytes of length {n}")),
        Obj::Tuple(v) => Field::Other(format!("tuple of {} items", v.len())),
        Obj::List(v) => Field::Other(format!("list of {} items", v.len())),
        Obj::Dict(v) => Field::Other(format!("dict with {} entries", v.len())),
        Obj::Tensor(t) => Field::Other(format!("{} tensor {:?}", t.dtype, t.shape)),
        o => Field::Other(o.kind().to_owned()),
    }
}

/// A validated view: its shape, element count, effective strides and storage extent.
struct View {
    shape: Vec<usize>,
    numel: usize,
    /// Strides with those of size-1 axes zeroed (never applied, so walking cannot overflow).
    stride: Vec<u64>,
    /// One past the largest storage element index the view touches (0 when empty).
    needed: u64,
}

impl View {
    fn new(key: &str, t: &TensorRef, file: &str) -> Result<View> {
        let too_large = |what: &str| Error::TooLarge {
            file: format!("{file}: tensor {key}"),
            dims: t.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect(),
            what: what.into(),
        };
        let shape: Vec<usize> = t
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| too_large("dimension overflows usize")))
            .collect::<Result<_>>()?;
        let numel = medsa_core::tensor::checked_numel(&shape).map_err(|e| too_large(&e.to_string()))?;
        let stride: Vec<u64> =
            t.shape.iter().zip(&t.stride).map(|(&d, &s)| if d == 1 { 0 } else { s }).collect();
        let needed = if numel == 0 {
            0
        } else {
            let mut last = t.offset;
            for (&d, &s) in t.shape.iter().zip(&stride) {
                last = (d - 1)
                    .checked_mul(s)
                    .and_then(|x| last.checked_add(x))
                    .ok_or_else(|| too_large("stride arithmetic overflows"))?;
            }
            last.checked_add(1).ok_or_else(|| too_large("storage offset overflows"))?
        };
        Ok(View { shape, numel, stride, needed })
    }
}

/// Builds the row-major tensor `t` from the raw bytes of its storage.
fn materialise(key: &str, t: &TensorRef, view: View, storage: &[u8], file: &str) -> Result<PthTensor> {
    let View { shape, numel, stride, needed } = view;
    let es = t.dtype.size() as u64;
    let available = storage.len() as u64 / es;
    if numel == 0 {
        let data = if t.dtype.is_float() { TensorData::F32(Vec::new()) } else { TensorData::I64(Vec::new()) };
        return Ok(PthTensor { dtype: t.dtype, shape, data });
    }
    if needed > available {
        return Err(Error::StorageTooSmall {
            file: file.into(),
            tensor: key.into(),
            storage: t.storage.clone(),
            needed,
            available,
        });
    }
    // Storage element index of each output element, in row-major order.
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&d, &s) in t.shape.iter().zip(&stride).rev() {
            if d != 1 && s != expect {
                ok = false;
            }
            expect *= d;
        }
        ok
    };
    let es = es as usize;
    let elem = |i: u64| &storage[i as usize * es..][..es];
    let mut positions: Box<dyn Iterator<Item = u64>> = if contiguous {
        Box::new(t.offset..t.offset + numel as u64)
    } else {
        Box::new(StridedIter::new(&t.shape, &stride, t.offset, numel))
    };
    let data = if t.dtype.is_float() {
        let dec: fn(&[u8]) -> f32 = match t.dtype {
            StorageDType::F64 => |b| f64::from_le_bytes(arr(b)) as f32,
            StorageDType::F32 => |b| f32::from_le_bytes(arr(b)),
            StorageDType::F16 => |b| half::f16::from_le_bytes(arr(b)).to_f32(),
            _ => |b| half::bf16::from_le_bytes(arr(b)).to_f32(),
        };
        TensorData::F32(positions.by_ref().map(|i| dec(elem(i))).collect())
    } else {
        let dec: fn(&[u8]) -> i64 = match t.dtype {
            StorageDType::I64 => |b| i64::from_le_bytes(arr(b)),
            StorageDType::I32 => |b| i32::from_le_bytes(arr(b)) as i64,
            StorageDType::I16 => |b| i16::from_le_bytes(arr(b)) as i64,
            StorageDType::I8 => |b| b[0] as i8 as i64,
            _ => |b| b[0] as i64,
        };
        TensorData::I64(positions.by_ref().map(|i| dec(elem(i))).collect())
    };
    Ok(PthTensor { dtype: t.dtype, shape, data })
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Row-major walk over a strided view, yielding storage element indices.
struct StridedIter {
    shape: Vec<u64>,
    stride: Vec<u64>,
    idx: Vec<u64>,
    pos: u64,
    left: usize,
}

impl StridedIter {
    fn new(shape: &[u64], stride: &[u64], offset: u64, numel: usize) -> Self {
        StridedIter {
            shape: shape.to_vec(),
            stride: stride.to_vec(),
            idx: vec![0; shape.len()],
            pos: offset,
            left: numel,
        }
    }
}

impl Iterator for StridedIter {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let out = self.pos;
        // Increment the multi-index; bounds were checked against the storage beforehand.
        for a in (0..self.shape.len()).rev() {
            self.idx[a] += 1;
            self.pos += self.stride[a];
            if self.idx[a] < self.shape[a] {
                break;
            }
            self.pos -= self.stride[a] * self.shape[a];
            self.idx[a] = 0;
        }
        Some(out)
    }
}

// ----- safetensors -----------------------------------------------------------------------------

struct StView<'a> {
    t: &'a PthTensor,
    dtype: safetensors::Dtype,
}

impl StView<'_> {
    fn new(t: &PthTensor) -> StView<'_> {
        use safetensors::Dtype as D;
        let dtype = match t.dtype {
            StorageDType::F64 | StorageDType::F32 => D::F32,
            StorageDType::F16 => D::F16,
            StorageDType::BF16 => D::BF16,
            StorageDType::I64 => D::I64,
            StorageDType::I32 => D::I32,
            StorageDType::I16 => D::I16,
            StorageDType::I8 => D::I8,
            StorageDType::U8 => D::U8,
            StorageDType::Bool => D::BOOL,
        };
        StView { t, dtype }
    }
}

impl safetensors::View for StView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.t.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        use safetensors::Dtype as D;
        let bytes: Vec<u8> = match (&self.t.data, self.dtype) {
            (TensorData::F32(v), D::F16) => medsa_core::dtype::encode_le(medsa_core::DType::F16, v),
            (TensorData::F32(v), D::BF16) => medsa_core::dtype::encode_le(medsa_core::DType::BF16, v),
            (TensorData::F32(v), _) => medsa_core::dtype::encode_le(medsa_core::DType::F32, v),
            (TensorData::I64(v), D::I32) => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
            (TensorData::I64(v), D::I16) => v.iter().flat_map(|&x| (x as i16).to_le_bytes()).collect(),
            (TensorData::I64(v), D::I8 | D::U8 | D::BOOL) => v.iter().map(|&x| x as u8).collect(),
            (TensorData::I64(v), _) => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        };
        bytes.into()
    }
    fn data_len(&self) -> usize {
        self.t.numel() * self.dtype.bitsize() / 8
    }
}

/// Writes tensors to a `.safetensors` file, each in its storage dtype (f64 becomes f32, the
/// precision it was read at); `metadata` goes into the header's `__metadata__`. Tensors are
/// encoded one at a time while writing.
pub fn write_safetensors<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a PthTensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let views: Vec<(&str, StView<'_>)> = tensors.into_iter().map(|(k, t)| (k, StView::new(t))).collect();
    let mut seen = std::collections::HashSet::new();
    for (k, v) in &views {
        if !seen.insert(*k) {
            return Err(Error::Safetensors { file: name(path), msg: format!("duplicate name {k}") });
        }
        if medsa_core::tensor::checked_numel(&v.t.shape).ok() != Some(v.t.numel()) {
            return Err(Error::Safetensors {
                file: name(path),
                msg: format!("tensor {k}: shape {:?} and {} values disagree", v.t.shape, v.t.numel()),
            });
        }
    }
    safetensors::serialize_to_file(views, metadata, path)
        .map_err(|e| Error::Safetensors { file: name(path), msg: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_iter_walks_a_transpose() {
        // A 2x3 view of a 3x2 row-major storage (transpose): strides (1, 2).
        let got: Vec<u64> = StridedIter::new(&[2, 3], &[1, 2], 0, 6).collect();
        assert_eq!(got, vec![0, 2, 4, 1, 3, 5]);
        let got: Vec<u64> = StridedIter::new(&[2, 2], &[0, 1], 3, 4).collect();
        assert_eq!(got, vec![3, 4, 3, 4]);
    }

    /// Every single-byte corruption and every truncation of a real torch-style pickle gives a
    /// result or a typed error, never a panic.
    #[test]
    fn mutated_pickles_never_panic() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_state_dict.pth");
        let bytes = std::fs::read(path).unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let pkl = read_entry(&mut zip, "archive/data.pkl", MAX_PICKLE_BYTES, "t").unwrap();
        let run = |b: &[u8]| {
            if let Ok(p) = pickle::unpickle(b, "t") {
                if let Ok((_, entries, _)) = select(&p, "t") {
                    let storage = [0u8; 64];
                    for (k, t) in &entries {
                        if let Ok(v) = View::new(k, t, "t") {
                            let _ = materialise(k, t, v, &storage, "t");
                        }
                    }
                }
            }
        };
        for i in 0..pkl.len() {
            run(&pkl[..i]);
            for x in [0x01u8, 0x80, 0xff, 0x7f] {
                let mut m = pkl.clone();
                m[i] ^= x;
                run(&m);
            }
        }
    }
}
