//! Pre- and post-processing (spec 6): SAM's ResizeLongestSide with PIL's exact uint8 bilinear
//! resize, normalisation and padding, prompt coordinate transforms, and mask postprocessing.

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
        if width == 0 || height == 0 {
            return Err(Error::Image(format!("cannot resize to {width}x{height}")));
        }
        let c = self.channels;
        let mut img = self.clone();
        if width != self.width {
            let taps = pil_taps(self.width, width);
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
            let taps = pil_taps(self.height, height);
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

/// PIL's bilinear taps for one axis: per output index, the first source index and the
/// fixed-point weights.
fn pil_taps(input: usize, output: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let support = scale.max(1.0);
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64).max(xmin as i64 + 1) as usize;
            let raw: Vec<f64> =
                (xmin..xmax).map(|x| (1.0 - ((x as f64 - center + 0.5) / support).abs()).max(0.0)).collect();
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
    let cropped = up.narrow(2, 0, h)?.narrow(3, 0, w)?;
    Ok(be.resize(&cropped, frame.original, ResizeMode::Bilinear)?)
}

#[cfg(test)]
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
}
