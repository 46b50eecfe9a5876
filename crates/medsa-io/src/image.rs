//! PNG / JPEG in and out: load an image as 8-bit RGB or grayscale, save a binary mask as a
//! 0/255 PNG, and draw an overlay (the mask tinted over the image, point prompts and boxes).
//!
//! Pixels are row-major with interleaved channels: `data[(y * width + x) * channels + c]`,
//! `(x, y) = (0, 0)` the top-left pixel. Prompt coordinates are in pixels of the image, `x`
//! to the right and `y` down, with pixel centres at integer coordinates.
//!
//! The format is detected from the content, not the file name. Decoding uses the `image`
//! crate's default limits (512 MiB per allocation), so a small file that claims a huge canvas
//! is an [`Error::Image`] rather than an allocation failure.

use std::path::Path;

use image::{ImageReader, Limits};

use crate::error::{io, name, Error, Result};

/// An 8-bit image, gray (1 channel) or RGB (3 channels), row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    width: u32,
    height: u32,
    channels: u8,
    data: Vec<u8>,
}

/// Which pixel format [`load_image`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMode {
    /// 3 channels; gray images are replicated.
    Rgb,
    /// 1 channel; colour images are converted with the `image` crate's luma weights.
    Gray,
}

impl Image {
    /// An image from its parts; `channels` is 1 or 3, `data.len() == width * height * channels`
    /// and neither side is zero.
    pub fn new(width: u32, height: u32, channels: u8, data: Vec<u8>) -> Result<Image> {
        let n = (width as u64) * (height as u64) * (channels as u64);
        if !(channels == 1 || channels == 3) || width == 0 || height == 0 || n != data.len() as u64 {
            return Err(Error::InvalidArgument {
                op: "Image::new",
                msg: format!(
                    "{width}x{height}x{channels} with {} bytes (channels 1 or 3, non-zero sides)",
                    data.len()
                ),
            });
        }
        Ok(Image { width, height, channels, data })
    }
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }
    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }
    /// 1 (gray) or 3 (RGB).
    pub fn channels(&self) -> u8 {
        self.channels
    }
    /// Pixels, row-major, channels interleaved.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// Consumes the image, returning its pixels.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
    /// The image as 3-channel RGB (gray replicated).
    pub fn to_rgb(&self) -> Image {
        if self.channels == 3 {
            return self.clone();
        }
        let data = self.data.iter().flat_map(|&g| [g, g, g]).collect();
        Image { width: self.width, height: self.height, channels: 3, data }
    }
}

/// Loads a PNG or JPEG file.
pub fn load_image(path: impl AsRef<Path>, mode: ColorMode) -> Result<Image> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    decode_image(&bytes, mode, &name(path))
}

/// Decodes a PNG or JPEG held in memory; `file` names it in errors.
pub fn decode_image(bytes: &[u8], mode: ColorMode, file: &str) -> Result<Image> {
    let err = |source| Error::Image { file: file.into(), source };
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image { file: file.into(), source: image::ImageError::IoError(e) })?;
    reader.limits(Limits::default());
    // The JPEG decoder (zune-jpeg 0.5.15) can panic on malformed data (found by the `image` fuzz
    // target; regression input in tests/fixtures/jpeg_decoder_panic.bin). A panic inside the
    // third-party decoder becomes a typed error here instead of taking the caller down.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| Error::DecoderPanic { file: file.into() })?;
    let img = decoded.map_err(err)?;
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 {
        return Err(Error::EmptyImage { file: file.into(), width, height });
    }
    Ok(match mode {
        ColorMode::Rgb => Image { width, height, channels: 3, data: img.to_rgb8().into_raw() },
        ColorMode::Gray => Image { width, height, channels: 1, data: img.to_luma8().into_raw() },
    })
}

/// Saves an image as PNG (gray or RGB, 8-bit).
pub fn save_png(path: impl AsRef<Path>, image: &Image) -> Result<()> {
    let path = path.as_ref();
    let color =
        if image.channels == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    image::save_buffer_with_format(
        path,
        &image.data,
        image.width,
        image.height,
        color,
        image::ImageFormat::Png,
    )
    .map_err(|source| match source {
        image::ImageError::IoError(e) => io(path, e),
        source => Error::Image { file: name(path), source },
    })
}

/// Saves a binary mask (`mask[y * width + x]`, non-zero = foreground) as an 8-bit PNG with
/// values 0 and 255.
pub fn save_mask_png(path: impl AsRef<Path>, mask: &[u8], width: u32, height: u32) -> Result<()> {
    let data = mask.iter().map(|&m| if m != 0 { 255 } else { 0 }).collect();
    let img = Image::new(width, height, 1, data)?;
    save_png(path, &img)
}

/// A point prompt drawn on an overlay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Marker {
    /// Column, pixels.
    pub x: f32,
    /// Row, pixels.
    pub y: f32,
    /// Foreground (drawn green) or background (drawn red).
    pub foreground: bool,
}

/// What [`render_overlay`] draws over an image.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overlay<'a> {
    /// A mask on the image grid (`mask[y * width + x]`, non-zero = foreground), tinted blue
    /// with its boundary drawn solid.
    pub mask: Option<&'a [u8]>,
    /// Point prompts.
    pub markers: &'a [Marker],
    /// Box prompts `[x0, y0, x1, y1]` in pixels (inclusive corners), drawn as yellow outlines.
    pub boxes: &'a [[f32; 4]],
}

const MASK_RGB: [u8; 3] = [30, 144, 255];
const FG_RGB: [u8; 3] = [0, 230, 0];
const BG_RGB: [u8; 3] = [230, 0, 0];
const BOX_RGB: [u8; 3] = [255, 215, 0];

/// Draws `overlay` over `image` and returns the RGB result. Marks outside the image are clipped;
/// a mask of the wrong size or a non-finite coordinate is an error.
pub fn render_overlay(image: &Image, overlay: &Overlay<'_>) -> Result<Image> {
    let mut out = image.to_rgb();
    let (w, h) = (out.width as usize, out.height as usize);
    if let Some(mask) = overlay.mask {
        if mask.len() != w * h {
            return Err(Error::InvalidArgument {
                op: "render_overlay",
                msg: format!("mask has {} pixels, image is {w}x{h}", mask.len()),
            });
        }
        for y in 0..h {
            for x in 0..w {
                if mask[y * w + x] == 0 {
                    continue;
                }
                let edge = x == 0
                    || y == 0
                    || x + 1 == w
                    || y + 1 == h
                    || mask[y * w + x - 1] == 0
                    || mask[y * w + x + 1] == 0
                    || mask[(y - 1) * w + x] == 0
                    || mask[(y + 1) * w + x] == 0;
                let p = &mut out.data[(y * w + x) * 3..][..3];
                for (c, &m) in p.iter_mut().zip(&MASK_RGB) {
                    *c = if edge { m } else { ((*c as u16 * 11 + m as u16 * 9) / 20) as u8 };
                }
            }
        }
    }
    let check = |v: f32| {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(Error::InvalidArgument { op: "render_overlay", msg: format!("coordinate {v} is not finite") })
        }
    };
    let thick = ((w.min(h) as f32) / 256.0).ceil().max(1.0);
    for b in overlay.boxes {
        let [x0, y0, x1, y1] = [check(b[0])?, check(b[1])?, check(b[2])?, check(b[3])?];
        let (x0, x1) = (x0.min(x1), x0.max(x1));
        let (y0, y1) = (y0.min(y1), y0.max(y1));
        for t in 0..thick as i64 {
            let t = t as f32;
            fill_rect(&mut out, x0 - t, y0 - t, x1 + t, y0 - t, BOX_RGB);
            fill_rect(&mut out, x0 - t, y1 + t, x1 + t, y1 + t, BOX_RGB);
            fill_rect(&mut out, x0 - t, y0 - t, x0 - t, y1 + t, BOX_RGB);
            fill_rect(&mut out, x1 + t, y0 - t, x1 + t, y1 + t, BOX_RGB);
        }
    }
    let radius = 2.5 * thick + 1.0;
    for m in overlay.markers {
        let (cx, cy) = (check(m.x)?, check(m.y)?);
        let color = if m.foreground { FG_RGB } else { BG_RGB };
        let r_out = radius + thick;
        let xs = (cx - r_out).floor().max(0.0) as i64..=(cx + r_out).ceil().min(w as f32) as i64;
        for py in (cy - r_out).floor().max(0.0) as i64..=(cy + r_out).ceil().min(h as f32) as i64 {
            for px in xs.clone() {
                let d = ((px as f32 - cx).powi(2) + (py as f32 - cy).powi(2)).sqrt();
                if d <= radius {
                    put(&mut out, px, py, color);
                } else if d <= r_out {
                    put(&mut out, px, py, [255, 255, 255]);
                }
            }
        }
    }
    Ok(out)
}

/// Renders an overlay ([`render_overlay`]) and saves it as PNG.
pub fn save_overlay(path: impl AsRef<Path>, image: &Image, overlay: &Overlay<'_>) -> Result<()> {
    save_png(path, &render_overlay(image, overlay)?)
}

fn put(img: &mut Image, x: i64, y: i64, rgb: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u64) < img.width as u64 && (y as u64) < img.height as u64 {
        let i = (y as usize * img.width as usize + x as usize) * 3;
        img.data[i..i + 3].copy_from_slice(&rgb);
    }
}

/// Fills the pixels whose centres lie in `[x0, x1] x [y0, y1]` (rounded), clipped to the image.
fn fill_rect(img: &mut Image, x0: f32, y0: f32, x1: f32, y1: f32, rgb: [u8; 3]) {
    let (w, h) = (img.width as f32, img.height as f32);
    let cx0 = x0.round().max(0.0);
    let cy0 = y0.round().max(0.0);
    let cx1 = x1.round().min(w - 1.0);
    let cy1 = y1.round().min(h - 1.0);
    if cx0 > cx1 || cy0 > cy1 {
        return;
    }
    for y in cy0 as i64..=cy1 as i64 {
        for x in cx0 as i64..=cx1 as i64 {
            put(img, x, y, rgb);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_draws_mask_points_and_box() {
        let img = Image::new(64, 64, 1, vec![100; 64 * 64]).unwrap();
        let mut mask = vec![0u8; 64 * 64];
        for y in 20..40 {
            for x in 20..40 {
                mask[y * 64 + x] = 1;
            }
        }
        let markers = [
            Marker { x: 30.0, y: 30.0, foreground: true },
            Marker { x: 5.0, y: 5.0, foreground: false },
            Marker { x: -50.0, y: 1e6, foreground: false },
        ];
        let boxes = [[10.0, 12.0, 50.0, 52.0], [-100.0, -100.0, 1000.0, 1000.0]];
        let out =
            render_overlay(&img, &Overlay { mask: Some(&mask), markers: &markers, boxes: &boxes }).unwrap();
        let px = |x: usize, y: usize| &out.data()[(y * 64 + x) * 3..][..3];
        assert_eq!(px(30, 30), FG_RGB);
        assert_eq!(px(5, 5), BG_RGB);
        assert_eq!(px(10, 30), BOX_RGB);
        assert_eq!(px(20, 25), MASK_RGB); // mask boundary
        assert_eq!(px(25, 35), [68, 119, 169]); // tinted interior
        assert_eq!(px(60, 5), [100, 100, 100]);
        assert!(render_overlay(&img, &Overlay { mask: Some(&mask[1..]), ..Default::default() }).is_err());
        let nan = [Marker { x: f32::NAN, y: 0.0, foreground: true }];
        assert!(render_overlay(&img, &Overlay { markers: &nan, ..Default::default() }).is_err());
    }

    /// A PNG whose header declares a zero width.
    fn zero_width_png() -> Vec<u8> {
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(0u32.to_be_bytes()); // width
        ihdr.extend(4u32.to_be_bytes()); // height
        ihdr.extend([8, 0, 0, 0, 0]); // 8-bit gray
        let mut crc = flate2::Crc::new();
        crc.update(&ihdr);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(13u32.to_be_bytes());
        png.extend(&ihdr);
        png.extend(crc.sum().to_be_bytes());
        png
    }

    #[test]
    fn zero_sized_image_is_a_typed_error() {
        let err = decode_image(&zero_width_png(), ColorMode::Gray, "zero.png").unwrap_err();
        assert!(matches!(err, Error::Image { .. } | Error::EmptyImage { .. }), "{err}");
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(decode_image(b"not an image", ColorMode::Rgb, "x"), Err(Error::Image { .. })));
        assert!(matches!(decode_image(&[], ColorMode::Gray, "x"), Err(Error::Image { .. })));
        assert!(Image::new(0, 5, 1, vec![]).is_err());
        assert!(Image::new(2, 2, 2, vec![0; 8]).is_err());
    }
}
