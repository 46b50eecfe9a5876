//! `VolumePredictor`: segments a 3-D volume with Med-SA's SD-Trans encoder (spec 3.6, 9).
//!
//! The volume is cut into 2-D slices along one axis. Consecutive slices are encoded together in
//! chunks of D through [`Sam::embed`] with [`DepthSettings`], so the depth branch attends across
//! the D slices of a chunk. Every slice that has a prompt set is then decoded on its own
//! embedding, its mask logits are postprocessed to the slice size and thresholded at 0, and the
//! foreground is written into a `u8` label volume on the input grid.
//!
//! # Input
//!
//! A [`VolumeView`] borrows f32 voxels with dims `[nx, ny, nz]`, `x` fastest (voxel `(x, y, z)`
//! is `data[x + nx·(y + ny·z)]`, exactly as `medsa_io::nifti::Volume` stores them). The caller
//! has already mapped intensities to `[0, 1]` (e.g. `medsa_io::window::HuWindow::apply` or
//! `mri_window`); values outside `[0, 1]`, NaN and infinities are an [`Error::Volume`].
//!
//! # Slice orientation
//!
//! Slices follow `medsa_io::nifti::extract_slice` exactly (numpy's `np.rot90(vol[..., k])`): the
//! two in-plane axes are the remaining ones in increasing order (`Z` → `(x, y)`, `Y` → `(x, z)`,
//! `X` → `(y, z)`). Columns follow the first in-plane axis from index 0; rows follow the second
//! from its **last** index down, so row 0 is the top of a display. For an RAS volume an axial
//! slice has row 0 anterior and column 0 the subject's left. Prompts are given in these slice
//! pixels: `x` = column, `y` = row, as for the 2-D [`Predictor`] (a point may lie anywhere in
//! `[0, width] × [0, height]`). [`VolumeView::slice_pixel`] maps a voxel index to its slice and
//! pixel; [`VolumeView::slice`] returns a slice's pixels.
//!
//! # Prompts
//!
//! [`VolumePrompts`] holds one prompt set per slice ([`VolumePrompts::insert`]), and/or key-slice
//! boxes ([`VolumePrompts::key_box`]): one box on a key slice reused unchanged on the slices
//! within a radius of it (clipped to the volume). An explicit per-slice set wins over a key box
//! on the same slice; between overlapping key boxes the nearest key wins (ties: the lower key).
//! Every prompt is checked before any slice is encoded: a slice outside the volume is an
//! [`Error::NoSuchSlice`], a point or box outside the slice an [`Error::Prompt`].
//!
//! # Chunks, and the last chunk
//!
//! With `n` slices and chunk depth D (≥ 1; D = 0 is an [`Error::Config`]), [`plan_chunks`]:
//! - if `n < D`, one chunk of all `n` slices, encoded with depth `D' = n`;
//! - otherwise chunks `[0, D)`, `[D, 2D)`, … and, when `n` is not a multiple of D, a **last chunk
//!   of the last D slices** `[n − D, n)`. It overlaps the previous chunk; only its new slices
//!   (those from the previous chunk's end on) are decoded and written, the overlapped ones keep
//!   the result of the earlier chunk and serve as depth context only.
//!
//! So every chunk holds D real, consecutive slices (no padding, no repeated slices in the depth
//! attention), no slice is ever dropped, and each slice is written by exactly one chunk.
//! Chunks without any prompted slice among their new slices are not encoded at all (their
//! output is all 0 regardless), so a key box on a few slices of a large volume costs only the
//! chunks it touches. Slices without prompts inside an encoded chunk are still encoded as
//! context and stay 0 in the output.
//!
//! # Memory
//!
//! The volume is borrowed, not copied. At any time the predictor holds one chunk's preprocessed
//! input `[D, 3, S, S]`, its encoder activations and embeddings `[D, 256, G, G]`, one slice's
//! decoder state, the resolved prompt sets, and the output labels (one byte per voxel). Peak
//! memory is therefore the volume (held by the caller) + `n_voxels` bytes + one chunk, whatever
//! the slice count.
//!
//! ```no_run
//! # fn main() -> medsa_model::Result<()> {
//! use medsa_model::predictor::BoxPrompt;
//! use medsa_model::volume::{SliceAxis, VolumeOptions, VolumePredictor, VolumePrompts, VolumeView};
//! # let model: medsa_model::Sam = todo!();
//! # let (voxels, dims): (Vec<f32>, [usize; 3]) = todo!();
//! let cpu = medsa_ref::Cpu;
//! let volume = VolumeView::new(&voxels, dims)?; // intensities already windowed to [0, 1]
//! let mut prompts = VolumePrompts::new();
//! prompts.key_box(90, BoxPrompt { x0: 60.0, y0: 70.0, x1: 120.0, y1: 140.0 }, 10);
//! let opts = VolumeOptions { axis: SliceAxis::Z, depth: 8, ..VolumeOptions::default() };
//! let seg = VolumePredictor::new(&model, &cpu, opts)?.segment(&volume, &prompts, |done, total| {
//!     eprintln!("{done}/{total} slices");
//! })?;
//! assert_eq!(seg.labels.len(), voxels.len());
//! # Ok(()) }
//! ```

use crate::config::{DepthSettings, Preprocess};
use crate::nn::Trace;
use crate::predictor::{BoxPrompt, MaskOutput, Predictor, Prompt};
use crate::preprocess::{normalize_and_pad, Frame, ImageU8};
use crate::{Error, Result, Sam};
use medsa_core::{Backend, DepthGrouping, Tensor};
use medsa_io::nifti::{Axis, SliceGeometry};
use std::collections::BTreeMap;

/// A volume axis along which slices are cut. For an RAS volume `X` gives sagittal, `Y` coronal
/// and `Z` axial slices (`medsa_io::nifti::Axis` has the same meaning and order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SliceAxis {
    /// The first index axis (`x`).
    X,
    /// The second index axis (`y`).
    Y,
    /// The third index axis (`z`).
    Z,
}

impl SliceAxis {
    /// Position of the axis in `[x, y, z]`.
    pub fn index(self) -> usize {
        match self {
            SliceAxis::X => 0,
            SliceAxis::Y => 1,
            SliceAxis::Z => 2,
        }
    }

    /// The axis at position `i` of `[x, y, z]` (e.g. from `medsa_io::nifti::Axis::index`).
    pub fn from_index(i: usize) -> Option<SliceAxis> {
        match i {
            0 => Some(SliceAxis::X),
            1 => Some(SliceAxis::Y),
            2 => Some(SliceAxis::Z),
            _ => None,
        }
    }

    /// The in-plane axes `(columns, rows)`, in increasing order.
    fn in_plane(self) -> (usize, usize) {
        Axis::from(self).in_plane()
    }
}

impl From<SliceAxis> for Axis {
    fn from(a: SliceAxis) -> Axis {
        match a {
            SliceAxis::X => Axis::X,
            SliceAxis::Y => Axis::Y,
            SliceAxis::Z => Axis::Z,
        }
    }
}

/// A borrowed intensity volume in `[0, 1]`, dims `[nx, ny, nz]`, `x` fastest.
#[derive(Clone, Copy, Debug)]
pub struct VolumeView<'a> {
    data: &'a [f32],
    dims: [usize; 3],
}

impl<'a> VolumeView<'a> {
    /// Wraps `data` with dims `[nx, ny, nz]` after checking it: every dim ≥ 1 (a zero-thickness
    /// volume is an error), `data.len() == nx·ny·nz`, every voxel finite and in `[0, 1]`.
    pub fn new(data: &'a [f32], dims: [usize; 3]) -> Result<Self> {
        if dims.contains(&0) {
            return Err(Error::Volume(format!("volume dims {dims:?} have a zero-size dimension")));
        }
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(Error::Volume(format!(
                "dims {dims:?} need {n:?} voxels, the data has {}",
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|v| !(0.0..=1.0).contains(v)) {
            let (x, y, z) = (i % dims[0], (i / dims[0]) % dims[1], i / (dims[0] * dims[1]));
            let v = data[i];
            let why = if v.is_finite() {
                "is outside [0, 1]: window the intensities first (HU window or MRI percentiles)"
            } else {
                "is not finite"
            };
            return Err(Error::Volume(format!("voxel ({x}, {y}, {z}) value {v} {why}")));
        }
        Ok(VolumeView { data, dims })
    }

    /// `[nx, ny, nz]`.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// The voxels, `x` fastest.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Number of slices along `axis`.
    pub fn n_slices(&self, axis: SliceAxis) -> usize {
        self.dims[axis.index()]
    }

    /// `(height, width)` of the slices along `axis`.
    pub fn slice_shape(&self, axis: SliceAxis) -> (usize, usize) {
        let (u, v) = axis.in_plane();
        (self.dims[v], self.dims[u])
    }

    /// Slice `index` along `axis`, row-major `height × width`, oriented as the module docs say
    /// (the same pixels as `medsa_io::nifti::extract_slice`).
    pub fn slice(&self, axis: SliceAxis, index: usize) -> Result<Vec<f32>> {
        let slices = self.n_slices(axis);
        if index >= slices {
            return Err(Error::NoSuchSlice { slice: index, slices });
        }
        let geo = SliceGeometry::new(self.dims, axis.into(), index)
            .ok_or(Error::NoSuchSlice { slice: index, slices })?;
        let mut out = Vec::with_capacity(geo.width * geo.height);
        for row in 0..geo.height {
            out.extend((0..geo.width).map(|col| self.data[geo.voxel(col, row)]));
        }
        Ok(out)
    }

    /// The slice along `axis` that holds voxel `[x, y, z]` and the voxel's pixel `(x, y)` =
    /// `(column, row)` in that slice, or None outside the volume.
    pub fn slice_pixel(&self, axis: SliceAxis, voxel: [usize; 3]) -> Option<(usize, f32, f32)> {
        if voxel.iter().zip(&self.dims).any(|(v, d)| v >= d) {
            return None;
        }
        let (u, v) = axis.in_plane();
        let row = self.dims[v] - 1 - voxel[v];
        Some((voxel[axis.index()], voxel[u] as f32, row as f32))
    }
}

/// Prompts for a volume: one prompt set per slice and/or key-slice boxes (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct VolumePrompts {
    sets: BTreeMap<usize, Prompt>,
    key_boxes: Vec<KeyBox>,
}

/// One box on a key slice, reused on the slices within `radius` of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyBox {
    /// The key slice.
    pub key: usize,
    /// The box, in the key slice's pixels.
    pub bbox: BoxPrompt,
    /// Slices `key − radius ..= key + radius` (clipped to the volume) get the box.
    pub radius: usize,
}

impl VolumePrompts {
    /// No prompts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the prompt set of `slice`, returning the one it replaces.
    pub fn insert(&mut self, slice: usize, prompt: Prompt) -> Option<Prompt> {
        self.sets.insert(slice, prompt)
    }

    /// Reuses `bbox` (given on slice `key`) on the slices `key − radius ..= key + radius` that
    /// exist. The key slice itself must exist when segmenting.
    pub fn key_box(&mut self, key: usize, bbox: BoxPrompt, radius: usize) -> &mut Self {
        self.key_boxes.push(KeyBox { key, bbox, radius });
        self
    }

    /// The explicit per-slice sets.
    pub fn sets(&self) -> &BTreeMap<usize, Prompt> {
        &self.sets
    }

    /// The key-slice boxes.
    pub fn key_boxes(&self) -> &[KeyBox] {
        &self.key_boxes
    }

    /// True when there is no prompt at all.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.key_boxes.is_empty()
    }

    /// The prompt set of every prompted slice of a volume with `slices` slices: explicit sets
    /// first, then key boxes (nearest key wins). A slice or key outside `0..slices` is an
    /// [`Error::NoSuchSlice`].
    pub fn resolve(&self, slices: usize) -> Result<BTreeMap<usize, Prompt>> {
        if let Some(&slice) = self.sets.keys().find(|&&s| s >= slices) {
            return Err(Error::NoSuchSlice { slice, slices });
        }
        if let Some(k) = self.key_boxes.iter().find(|k| k.key >= slices) {
            return Err(Error::NoSuchSlice { slice: k.key, slices });
        }
        let mut out = self.sets.clone();
        // (distance, key) of the key box currently assigned to a slice.
        let mut from_key: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for k in &self.key_boxes {
            let lo = k.key.saturating_sub(k.radius);
            let hi = k.key.saturating_add(k.radius).min(slices - 1);
            for s in lo..=hi {
                if self.sets.contains_key(&s) {
                    continue;
                }
                let rank = (s.abs_diff(k.key), k.key);
                if from_key.get(&s).is_none_or(|&r| rank < r) {
                    from_key.insert(s, rank);
                    out.insert(s, Prompt::bbox(k.bbox));
                }
            }
        }
        Ok(out)
    }
}

/// Settings of a [`VolumePredictor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeOptions {
    /// The axis the volume is cut along (default `Z`, axial for RAS volumes).
    pub axis: SliceAxis,
    /// Chunk depth D: slices encoded together through SD-Trans (default 8, must be ≥ 1).
    pub depth: usize,
    /// SD-Trans grouping (default [`DepthGrouping::PerWindow`], the paper's; use `Official` for
    /// checkpoints trained with the official code).
    pub grouping: DepthGrouping,
    /// Which mask each slice keeps ([`MaskOutput`]; default the single-mask output).
    pub output: MaskOutput,
    /// The label written for foreground voxels (default 1).
    pub label: u8,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            axis: SliceAxis::Z,
            depth: 8,
            grouping: DepthGrouping::PerWindow,
            output: MaskOutput::Single,
            label: 1,
        }
    }
}

/// One encoder run of [`plan_chunks`]: slices `start .. start + depth` are encoded together and
/// slices `first_new .. start + depth` are decoded and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First slice encoded.
    pub start: usize,
    /// Slices encoded (the SD-Trans depth of this run).
    pub depth: usize,
    /// First slice whose result this chunk writes (`start`, except for an overlapping last chunk).
    pub first_new: usize,
}

impl Chunk {
    /// One past the last slice.
    pub fn end(&self) -> usize {
        self.start + self.depth
    }
}

/// The chunks that segment `slices` slices at depth `depth` (module docs, "the last chunk"):
/// the written ranges `first_new .. end` partition `0 .. slices`.
pub fn plan_chunks(slices: usize, depth: usize) -> Result<Vec<Chunk>> {
    if depth == 0 {
        return Err(Error::Config("chunk depth D must be at least 1".into()));
    }
    if slices == 0 {
        return Err(Error::Volume("the volume has no slices along the slice axis".into()));
    }
    let d = depth.min(slices);
    let mut chunks: Vec<Chunk> =
        (0..slices / d).map(|i| Chunk { start: i * d, depth: d, first_new: i * d }).collect();
    let covered = (slices / d) * d;
    if covered < slices {
        chunks.push(Chunk { start: slices - d, depth: d, first_new: covered });
    }
    Ok(chunks)
}

/// The result of [`VolumePredictor::segment`].
#[derive(Clone, Debug)]
pub struct VolumeSegmentation {
    /// Labels on the input grid, `x` fastest: [`VolumeOptions::label`] for foreground, else 0.
    pub labels: Vec<u8>,
    /// `[nx, ny, nz]`, the input's.
    pub dims: [usize; 3],
    /// The predicted IoU of the mask written on each decoded (prompted) slice.
    pub predicted_iou: BTreeMap<usize, f32>,
    /// Encoder runs made (chunks with at least one prompted new slice).
    pub chunks_encoded: usize,
}

impl VolumeSegmentation {
    /// Number of foreground voxels.
    pub fn foreground(&self) -> usize {
        self.labels.iter().filter(|&&v| v != 0).count()
    }
}

/// Segments volumes in chunks of D slices through SD-Trans (see the module docs).
pub struct VolumePredictor<'a> {
    model: &'a Sam,
    be: &'a dyn Backend,
    opts: VolumeOptions,
}

impl<'a> VolumePredictor<'a> {
    /// A predictor for `model` (a Med-SA ViT with adapters: SD-Trans needs `Depth_Adapter`) on
    /// backend `be`. D = 0 is an [`Error::Config`].
    pub fn new(model: &'a Sam, be: &'a dyn Backend, opts: VolumeOptions) -> Result<Self> {
        if opts.depth == 0 {
            return Err(Error::Config("chunk depth D must be at least 1".into()));
        }
        Ok(VolumePredictor { model, be, opts })
    }

    /// The settings.
    pub fn options(&self) -> &VolumeOptions {
        &self.opts
    }

    /// Segments `volume` with `prompts`. `progress(done, total)` is called after each chunk
    /// with the number of slices whose result is final and the slice count (skipped chunks
    /// count as done). Every prompt is validated before the first chunk is encoded.
    pub fn segment(
        &self,
        volume: &VolumeView<'_>,
        prompts: &VolumePrompts,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<VolumeSegmentation> {
        let axis = self.opts.axis;
        let slices = volume.n_slices(axis);
        let chunks = plan_chunks(slices, self.opts.depth)?;
        let resolved = prompts.resolve(slices)?;
        let (height, width) = volume.slice_shape(axis);
        for (&s, p) in &resolved {
            self.check_prompt(s, p, (height, width))?;
        }
        let dims = volume.dims();
        let mut labels = vec![0u8; volume.data().len()];
        let mut predicted_iou = BTreeMap::new();
        let mut predictor = Predictor::new(self.model, self.be)?;
        let settings = DepthSettings { depth: self.opts.depth, grouping: self.opts.grouping };
        let mut embeddings = ChunkEmbeddings::new(self.model, self.be, volume, axis, settings)?;
        let mut done = 0;
        for chunk in &chunks {
            // The chunk is encoded at its first prompted slice (never if none is prompted).
            for (&s, prompt) in resolved.range(chunk.first_new..chunk.end()) {
                predictor.set_embedding(embeddings.embedding(s)?, (height, width))?;
                let pred = predictor.predict(prompt, self.opts.output)?;
                let k = self.opts.output.keep(&pred);
                predicted_iou.insert(s, pred.iou.get(k).copied().unwrap_or(f32::NAN));
                let geo = SliceGeometry::new(dims, axis.into(), s)
                    .ok_or(Error::NoSuchSlice { slice: s, slices })?;
                for (i, fg) in pred.mask(k).into_iter().enumerate() {
                    if fg {
                        labels[geo.voxel(i % width, i / width)] = self.opts.label;
                    }
                }
            }
            done += chunk.end() - chunk.first_new;
            progress(done, slices);
        }
        Ok(VolumeSegmentation { labels, dims, predicted_iou, chunks_encoded: embeddings.encoder_runs() })
    }

    /// Checks one slice's prompt set against the slice size `(height, width)`.
    fn check_prompt(&self, slice: usize, p: &Prompt, (h, w): (usize, usize)) -> Result<()> {
        let inside = |x: f32, y: f32| {
            x.is_finite() && y.is_finite() && x >= 0.0 && y >= 0.0 && x <= w as f32 && y <= h as f32
        };
        if p.points.is_empty() && p.bbox.is_none() && p.mask.is_none() {
            return Err(Error::Prompt(format!(
                "slice {slice}: the prompt set is empty (give a point, a box or a mask)"
            )));
        }
        for pt in &p.points {
            if !inside(pt.x, pt.y) {
                return Err(Error::Prompt(format!(
                    "slice {slice}: point ({}, {}) is outside the {w}x{h} slice",
                    pt.x, pt.y
                )));
            }
        }
        if let Some(b) = p.bbox {
            if !inside(b.x0, b.y0) || !inside(b.x1, b.y1) || b.x0 > b.x1 || b.y0 > b.y1 {
                return Err(Error::Prompt(format!(
                    "slice {slice}: box ({}, {}, {}, {}) is not a box inside the {w}x{h} slice",
                    b.x0, b.y0, b.x1, b.y1
                )));
            }
        }
        if let Some(m) = &p.mask {
            let g = self.model.cfg.prompt.image_embedding_size;
            if m.shape() != [4 * g.0, 4 * g.1] || !m.all_finite() {
                return Err(Error::Prompt(format!(
                    "slice {slice}: mask prompt {:?} must be finite [{}, {}] low-res logits",
                    m.shape(),
                    4 * g.0,
                    4 * g.1
                )));
            }
        }
        Ok(())
    }
}

/// The preprocessed encoder input `[D, 3, S, S]` of one chunk.
fn chunk_input(model: &Sam, volume: &VolumeView<'_>, axis: SliceAxis, chunk: &Chunk) -> Result<Tensor> {
    let s = model.cfg.prompt.input_image_size.0;
    let mut data = Vec::with_capacity(chunk.depth * 3 * s * s);
    for k in chunk.start..chunk.end() {
        let x = preprocess_slice(model, volume, axis, k)?;
        data.extend_from_slice(x.data());
    }
    Ok(Tensor::new(vec![chunk.depth, 3, s, s], data)?)
}

/// The image embedding of any slice of a volume through SD-Trans, for [`VolumePredictor`] and
/// for prompting slice by slice (mask propagation, [`crate::propagate`]): slice `z`'s embedding
/// comes from the encoder run
/// over its chunk of [`plan_chunks`] (the D slices SD-Trans attends across), made when a slice
/// of that chunk is first asked for. The last two chunks' embeddings are kept, so a chain that
/// walks outward slice by slice costs one encoder run per chunk it enters (a second chain that
/// comes back to the key slice's chunk after two others pays one run more).
pub struct ChunkEmbeddings<'a> {
    model: &'a Sam,
    be: &'a dyn Backend,
    volume: &'a VolumeView<'a>,
    axis: SliceAxis,
    grouping: DepthGrouping,
    chunks: Vec<Chunk>,
    kept: Vec<(usize, Tensor)>,
    runs: usize,
}

impl<'a> ChunkEmbeddings<'a> {
    /// Embeddings of `volume`'s slices along `axis` in chunks of `depth` slices.
    pub fn new(
        model: &'a Sam,
        be: &'a dyn Backend,
        volume: &'a VolumeView<'a>,
        axis: SliceAxis,
        settings: DepthSettings,
    ) -> Result<Self> {
        let chunks = plan_chunks(volume.n_slices(axis), settings.depth)?;
        Ok(ChunkEmbeddings {
            model,
            be,
            volume,
            axis,
            grouping: settings.grouping,
            chunks,
            kept: Vec::new(),
            runs: 0,
        })
    }

    /// The embedding `[1, C, G, G]` of slice `z`; a slice outside the volume is
    /// [`Error::NoSuchSlice`].
    pub fn embedding(&mut self, z: usize) -> Result<Tensor> {
        let slices = self.volume.n_slices(self.axis);
        let c = self
            .chunks
            .iter()
            .position(|c| (c.first_new..c.end()).contains(&z))
            .ok_or(Error::NoSuchSlice { slice: z, slices })?;
        let chunk = self.chunks[c];
        if !self.kept.iter().any(|(k, _)| *k == c) {
            let _span =
                tracing::debug_span!("volume_chunk", start = chunk.start, depth = chunk.depth).entered();
            let x = chunk_input(self.model, self.volume, self.axis, &chunk)?;
            let settings = DepthSettings { depth: chunk.depth, grouping: self.grouping };
            let emb = self.model.embed(self.be, &x, Some(settings), &mut Trace::disabled())?;
            self.runs += 1;
            if self.kept.len() == 2 {
                self.kept.remove(0);
            }
            self.kept.push((c, emb));
        }
        let (_, emb) =
            self.kept.iter().find(|(k, _)| *k == c).ok_or(Error::NoSuchSlice { slice: z, slices })?;
        self.be.narrow(emb, 0, z - chunk.start, 1).map_err(Into::into)
    }

    /// Encoder runs made so far.
    pub fn encoder_runs(&self) -> usize {
        self.runs
    }
}

/// One slice as the model's input `[1, 3, S, S]`: `[0, 1]` → `round(255·v)` as an 8-bit gray
/// image, then exactly [`Predictor::set_image`]'s preprocessing for the model's convention
/// (SAM: longest side to S with PIL bilinear, mean/std, pad; Med-SA CODE-A: S×S stretch, /255).
/// Gray is resized before it is repeated to RGB, which gives the same bytes as resizing RGB.
pub fn preprocess_slice(
    model: &Sam,
    volume: &VolumeView<'_>,
    axis: SliceAxis,
    index: usize,
) -> Result<Tensor> {
    let (h, w) = volume.slice_shape(axis);
    let pixels = volume.slice(axis, index)?;
    // VolumeView guarantees values in [0, 1], so the cast cannot saturate.
    let gray = ImageU8::new(w, h, 1, pixels.iter().map(|&v| (v * 255.0).round() as u8).collect())?;
    let s = model.cfg.prompt.input_image_size.0;
    match &model.cfg.preprocess {
        Preprocess::SamNormalized { mean, std } => {
            let frame = Frame::longest_side((h, w), s);
            let resized = gray.resize_pil_bilinear(frame.input.1, frame.input.0)?.to_rgb();
            normalize_and_pad(&resized.to_tensor()?, *mean, *std, s)
        }
        Preprocess::CodeAUnitRange => {
            Ok(gray.resize_pil_bilinear(s, s)?.to_rgb().to_tensor()?.scale(1.0 / 255.0))
        }
        #[allow(unreachable_patterns)]
        other => {
            Err(Error::Config(format!("the VolumePredictor does not implement preprocessing {other:?}")))
        }
    }
}
