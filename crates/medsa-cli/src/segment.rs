//! `medsa segment`: one image (PNG / JPEG) or one NIfTI slice, one prompt set.

use crate::args::{parse_box, parse_point, parse_slice, parse_window, Window};
use crate::model::{self, WeightsArgs};
use anyhow::{bail, Context, Result};
use medsa_io::image::{load_image, save_mask_png, save_overlay, ColorMode, Image, Marker, Overlay};
use medsa_io::nifti::{Axis, Volume};
use medsa_model::predictor::{BoxPrompt, MaskOutput, Point, Predictor, Prompt};
use medsa_model::preprocess::ImageU8;
use medsa_model::Sam;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `medsa segment`.
#[derive(clap::Args, Debug)]
pub struct SegmentArgs {
    /// Input image: PNG or JPEG (gray or RGB), or a NIfTI volume (.nii / .nii.gz) with --slice.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// Box prompt in original-image pixels: x0,y0,x1,y1 (inclusive corners, x to the right,
    /// y down).
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = parse_box, allow_hyphen_values = true)]
    pub bbox: Option<BoxPrompt>,
    /// Click prompt in original-image pixels: x,y (foreground) or x,y,label with label 1/fg or
    /// 0/bg. Repeat for several clicks.
    #[arg(long = "point", value_name = "X,Y[,LABEL]", value_parser = parse_point, allow_hyphen_values = true)]
    pub points: Vec<Point>,
    /// Output mask: PNG, 0/255, at the input's size.
    #[arg(long, short, value_name = "MASK.png")]
    pub out: PathBuf,
    /// Also write an overlay PNG: the image with the mask tinted and the prompt drawn.
    #[arg(long, value_name = "OVERLAY.png")]
    pub overlay: Option<PathBuf>,
    /// Decode SAM's three candidate masks and keep the one with the best predicted IoU
    /// (default: the single-mask output).
    #[arg(long)]
    pub multimask: bool,
    /// For NIfTI input: the slice to segment, AXIS:INDEX (e.g. z:90). Prompts are in that
    /// slice's pixels (row 0 = the highest index of the slice's second axis, as the rot90
    /// display of the slice).
    #[arg(long, value_name = "AXIS:INDEX", value_parser = parse_slice)]
    pub slice: Option<(Axis, usize)>,
    /// For NIfTI input: intensity window: ct-abdomen, ct-brain, ct-bone, mri or LO,HI (HU).
    /// Default: mri for volumes without negative values, ct-abdomen otherwise.
    #[arg(long, value_name = "WINDOW", value_parser = parse_window, allow_hyphen_values = true)]
    pub window: Option<Window>,
    #[command(flatten)]
    pub weights: WeightsArgs,
}

/// True for `.nii` / `.nii.gz` paths.
pub fn is_nifti(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// The window `chosen`, or the default for `values` (mri unless there are negative values).
pub fn window_or_default(chosen: Option<Window>, values: &[f32]) -> Window {
    chosen.unwrap_or_else(|| {
        let w = if values.iter().any(|&v| v < 0.0) {
            Window::Hu(medsa_io::window::HuWindow::ABDOMEN)
        } else {
            Window::Mri
        };
        tracing::info!("no --window given: using the {}", w.describe());
        w
    })
}

/// `[0, 1]` values → 8-bit gray (`round(255·v)`).
pub fn to_gray_u8(values: &[f32]) -> Vec<u8> {
    values.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

/// Reads the input as an 8-bit image (RGB for PNG/JPEG, gray for a NIfTI slice).
fn read_input(args: &SegmentArgs) -> Result<ImageU8> {
    if is_nifti(&args.image) {
        let Some((axis, index)) = args.slice else {
            bail!("{} is a NIfTI volume: give --slice AXIS:INDEX (e.g. --slice z:90)", args.image.display());
        };
        let mut vol =
            Volume::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
        let window = window_or_default(args.window, vol.data());
        window.apply(vol.data_mut()).with_context(|| format!("windowing {}", args.image.display()))?;
        let s = vol
            .slice(axis, index)
            .with_context(|| format!("{}: slice {axis:?}:{index}", args.image.display()))?;
        return Ok(ImageU8::new(s.width, s.height, 1, to_gray_u8(&s.data))?);
    }
    if args.slice.is_some() || args.window.is_some() {
        bail!("--slice and --window apply to NIfTI volumes (.nii, .nii.gz) only");
    }
    let img = load_image(&args.image, ColorMode::Rgb)
        .with_context(|| format!("reading {}", args.image.display()))?;
    Ok(ImageU8::new(img.width() as usize, img.height() as usize, 3, img.into_data())?)
}

/// A 0/255 mask, its predicted IoU and the encoder + decoder time.
pub struct Segmented {
    /// `H × W`, row-major, 0 or 255.
    pub mask: Vec<u8>,
    /// Predicted IoU of the kept mask.
    pub iou: f32,
    /// Wall time of the embedding and the decoding.
    pub ms: f64,
}

/// Segments `image` with one prompt set.
pub fn segment_image(
    model: &Sam,
    be: &dyn medsa_core::Backend,
    image: &ImageU8,
    prompt: &Prompt,
    output: MaskOutput,
) -> Result<Segmented> {
    let t = Instant::now();
    let mut p = Predictor::new(model, be)?;
    p.set_image(image)?;
    let embed_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut seg = decode(&p, prompt, output)?;
    tracing::debug!(embed_ms, decode_ms = seg.ms, "segmented");
    seg.ms += embed_ms;
    Ok(seg)
}

/// Decodes one prompt set on the predictor's cached embedding (`ms` is the decoding time only).
pub fn decode(p: &Predictor<'_>, prompt: &Prompt, output: MaskOutput) -> Result<Segmented> {
    let t = Instant::now();
    let pred = p.predict(prompt, output)?;
    let k = output.keep(&pred);
    let mask = pred.mask(k).into_iter().map(|b| if b { 255 } else { 0 }).collect();
    Ok(Segmented {
        mask,
        iou: pred.iou.get(k).copied().unwrap_or(f32::NAN),
        ms: t.elapsed().as_secs_f64() * 1e3,
    })
}

/// Writes the overlay of `mask` and the prompt over `image`.
pub fn write_overlay(path: &Path, image: &ImageU8, mask: &[u8], prompt: &Prompt) -> Result<()> {
    let img = Image::new(image.width as u32, image.height as u32, image.channels as u8, image.data.clone())?;
    let markers: Vec<Marker> =
        prompt.points.iter().map(|p| Marker { x: p.x, y: p.y, foreground: p.foreground }).collect();
    let boxes: Vec<[f32; 4]> = prompt.bbox.iter().map(|b| [b.x0, b.y0, b.x1, b.y1]).collect();
    save_overlay(path, &img, &Overlay { mask: Some(mask), markers: &markers, boxes: &boxes })
        .with_context(|| format!("writing overlay {}", path.display()))
}

/// Runs `medsa segment`.
pub fn run(args: &SegmentArgs) -> Result<()> {
    if args.bbox.is_none() && args.points.is_empty() {
        bail!("no prompt: give --box x0,y0,x1,y1 and/or one or more --point x,y[,label]");
    }
    let image = read_input(args)?;
    let model = model::load(&args.weights)?;
    let prompt = Prompt { points: args.points.clone(), bbox: args.bbox, mask: None };
    let seg = segment_image(
        &model.sam,
        model.backend.as_ref(),
        &image,
        &prompt,
        MaskOutput::multimask_if(args.multimask),
    )
    .with_context(|| format!("segmenting {}", args.image.display()))?;
    save_mask_png(&args.out, &seg.mask, image.width as u32, image.height as u32)
        .with_context(|| format!("writing mask {}", args.out.display()))?;
    let fg = seg.mask.iter().filter(|&&v| v != 0).count();
    crate::say(format!(
        "{}: {}x{}, {} foreground pixels ({:.1} %), predicted IoU {:.3}, {:.0} ms ({} from {})",
        args.out.display(),
        image.width,
        image.height,
        fg,
        100.0 * fg as f64 / seg.mask.len() as f64,
        seg.iou,
        seg.ms,
        model.detected.family,
        model.path.display()
    ));
    if let Some(o) = &args.overlay {
        write_overlay(o, &image, &seg.mask, &prompt)?;
        crate::say(format!("{}: overlay", o.display()));
    }
    Ok(())
}
