//! Seeded prompt simulation from a 2D ground-truth mask (spec sections 7.2 and 7.3).
//!
//! All prompts are in pixel coordinates of the mask's image, in **(x, y) order**: `x` is the
//! column index, `y` the row index (SAM's convention; the prompt encoder adds the +0.5 pixel
//! centre shift itself). Points have integer-valued coordinates; boxes may be fractional.
//!
//! Prompt types ([`PromptKind`]):
//! - `1pt` / `3pt`: 1 or 3 distinct foreground pixels drawn uniformly ([`random_points`]);
//! - `bbox0.5` / `bbox0.75`: a box whose IoU with the target's tight box is τ within 0.02
//!   ([`bbox_with_iou`], the \[PROPOSED\] algorithm of spec 7.3);
//! - `jitterbox`: SAM's training box, the tight box with Gaussian noise per coordinate
//!   ([`jittered_box`]);
//! - `iterative:N`: one random positive point, then N - 1 corrective clicks, each from
//!   [`next_click`] on the previous prediction (the caller runs the model in between and feeds
//!   the previous low-res logits back as the mask prompt).
//!
//! Box convention: a [`BoxPrompt`] `(x0, y0, x1, y1)` names the first and last pixel it covers
//! (inclusive corners, as SAM's `batched_mask_to_box` and MedSAM's tight boxes), so as a region
//! it spans `[x0, x1 + 1] × [y0, y1 + 1]` in pixel-edge coordinates. Box IoU and areas are
//! computed on those regions; for integer corners that is exactly the IoU of the pixel sets,
//! and a one-pixel object has a one-pixel (non-degenerate) box.
//!
//! Reproducibility: every function takes the random generator explicitly; [`case_rng`] builds
//! a [`ChaCha8Rng`] from a seed and a per-case stream number, so a case gets the same prompts
//! whatever order the cases are run in. Integer draws use rand 0.9's portable `usize`
//! sampling; the Gaussian of [`jittered_box`] goes through `f64::ln`/`cos` (Box–Muller), so it is
//! bit-identical across runs and equal to the last ulp of the platform's libm across platforms.

use crate::mask::{Connectivity, Mask};
use crate::{edt, EvalError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A point prompt in pixel coordinates: `x` = column, `y` = row, `label` in SAM's coding
/// ([`Point::POSITIVE`] = 1 foreground, [`Point::NEGATIVE`] = 0 background).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Column (pixel index).
    pub x: f32,
    /// Row (pixel index).
    pub y: f32,
    /// 1 positive (foreground), 0 negative (background).
    pub label: i32,
}

impl Point {
    /// SAM's label of a foreground click.
    pub const POSITIVE: i32 = 1;
    /// SAM's label of a background click.
    pub const NEGATIVE: i32 = 0;

    /// A positive click.
    pub fn positive(x: f32, y: f32) -> Point {
        Point { x, y, label: Point::POSITIVE }
    }

    /// A negative click.
    pub fn negative(x: f32, y: f32) -> Point {
        Point { x, y, label: Point::NEGATIVE }
    }

    /// Whether this is a positive click.
    pub fn is_positive(&self) -> bool {
        self.label == Point::POSITIVE
    }
}

/// A box prompt `(x0, y0, x1, y1)`: first and last covered column and row (inclusive corners,
/// XYXY as SAM takes it; see the module docs for the region convention).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoxPrompt {
    /// First column.
    pub x0: f32,
    /// First row.
    pub y0: f32,
    /// Last column (inclusive).
    pub x1: f32,
    /// Last row (inclusive).
    pub y1: f32,
}

impl BoxPrompt {
    /// Width of the covered region, `x1 - x0 + 1` (0 if inverted).
    pub fn width(&self) -> f64 {
        (self.x1 as f64 - self.x0 as f64 + 1.0).max(0.0)
    }

    /// Height of the covered region, `y1 - y0 + 1` (0 if inverted).
    pub fn height(&self) -> f64 {
        (self.y1 as f64 - self.y0 as f64 + 1.0).max(0.0)
    }

    /// Area of the covered region.
    pub fn area(&self) -> f64 {
        self.width() * self.height()
    }

    /// IoU of the covered regions of two boxes (0 when both are degenerate).
    pub fn iou(&self, other: &BoxPrompt) -> f64 {
        let ix = (self.x1.min(other.x1) as f64 + 1.0 - self.x0.max(other.x0) as f64).max(0.0);
        let iy = (self.y1.min(other.y1) as f64 + 1.0 - self.y0.max(other.y0) as f64).max(0.0);
        let inter = ix * iy;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// A simulated prompt: points and/or one box.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    /// Point prompts (possibly empty).
    pub points: Vec<Point>,
    /// The box prompt, if any.
    pub bbox: Option<BoxPrompt>,
}

/// The prompt protocols of the paper (plus SAM's jittered box).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PromptKind {
    /// One random positive point (`1pt`).
    OnePoint,
    /// Three random positive points (`3pt`).
    ThreePoints,
    /// A box with IoU `target_iou` against the tight box (`bbox0.5`, `bbox0.75`).
    BBox {
        /// The requested IoU τ, in (0, 1].
        target_iou: f64,
    },
    /// SAM's jittered tight box (`jitterbox`).
    JitteredBox,
    /// One random positive point then `clicks - 1` corrective clicks (`iterative:N`).
    Iterative {
        /// Total number of clicks, >= 1.
        clicks: usize,
    },
}

impl fmt::Display for PromptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PromptKind::OnePoint => write!(f, "1pt"),
            PromptKind::ThreePoints => write!(f, "3pt"),
            PromptKind::BBox { target_iou } => write!(f, "bbox{target_iou}"),
            PromptKind::JitteredBox => write!(f, "jitterbox"),
            PromptKind::Iterative { clicks } => write!(f, "iterative:{clicks}"),
        }
    }
}

impl FromStr for PromptKind {
    type Err = EvalError;

    /// Parses `1pt`, `3pt`, `bbox<τ>` (τ in (0, 1], e.g. `bbox0.5`), `jitterbox`,
    /// `iterative:N` (N >= 1).
    fn from_str(s: &str) -> Result<PromptKind> {
        let err = || EvalError::PromptParse(s.to_string());
        match s {
            "1pt" => Ok(PromptKind::OnePoint),
            "3pt" => Ok(PromptKind::ThreePoints),
            "jitterbox" => Ok(PromptKind::JitteredBox),
            _ => {
                if let Some(t) = s.strip_prefix("bbox") {
                    let target_iou: f64 = t.parse().map_err(|_| err())?;
                    if !(target_iou > 0.0 && target_iou <= 1.0) {
                        return Err(err());
                    }
                    Ok(PromptKind::BBox { target_iou })
                } else if let Some(n) = s.strip_prefix("iterative:") {
                    let clicks: usize = n.parse().map_err(|_| err())?;
                    if clicks == 0 {
                        return Err(err());
                    }
                    Ok(PromptKind::Iterative { clicks })
                } else {
                    Err(err())
                }
            }
        }
    }
}

/// The random generator of one case: ChaCha8 seeded with `seed`, on stream `case`.
pub fn case_rng(seed: u64, case: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(case);
    rng
}

fn nonempty_2d(gt: &Mask, what: &'static str) -> Result<(usize, usize)> {
    let dims = gt.dims2(what)?;
    if !gt.any() {
        return Err(EvalError::EmptyMask { what });
    }
    Ok(dims)
}

/// `n` positive points on distinct foreground pixels drawn uniformly without replacement. If
/// the mask has fewer than `n` foreground pixels, all of them are returned followed by
/// repeats in the same random order (SAM accepts duplicate points). Errors on an empty or
/// non-2D mask or `n = 0`.
pub fn random_points<R: Rng + ?Sized>(gt: &Mask, n: usize, rng: &mut R) -> Result<Vec<Point>> {
    let (_, w) = nonempty_2d(gt, "random_points")?;
    if n == 0 {
        return Err(EvalError::arg("random_points", "n = 0"));
    }
    let mut fg = gt.foreground_indices();
    let k = n.min(fg.len());
    // Partial Fisher–Yates shuffle of the first k entries.
    for i in 0..k {
        let j = rng.random_range(i..fg.len());
        fg.swap(i, j);
    }
    Ok((0..n)
        .map(|i| {
            let p = fg[i % k];
            Point::positive((p % w) as f32, (p / w) as f32)
        })
        .collect())
}

/// The tight box of the foreground of a 2D mask.
pub fn tight_box(gt: &Mask) -> Result<BoxPrompt> {
    nonempty_2d(gt, "tight_box")?;
    let bb = gt.bbox().ok_or(EvalError::EmptyMask { what: "tight_box" })?;
    Ok(BoxPrompt { x0: bb.min[1] as f32, y0: bb.min[0] as f32, x1: bb.max[1] as f32, y1: bb.max[0] as f32 })
}

/// A box from a region `[a, b]` (pixel-edge coordinates) per axis.
fn from_region(ax: f64, bx: f64, ay: f64, by: f64) -> BoxPrompt {
    BoxPrompt { x0: ax as f32, y0: ay as f32, x1: (bx - 1.0) as f32, y1: (by - 1.0) as f32 }
}

/// Number of tries of the rejection sampler of [`bbox_with_iou`].
pub const BBOX_TRIES: usize = 100;
/// Accepted deviation from the requested IoU.
pub const BBOX_IOU_TOLERANCE: f64 = 0.02;

/// A box whose IoU with the tight box of `gt` is `target_iou` (τ) within
/// [`BBOX_IOU_TOLERANCE`] (spec 7.3, \[PROPOSED\]):
/// 1. tight box region of width W, height H;
/// 2. scales k_w, k_h ~ U[0.8/√τ, 1.2/√τ], centre shift (dx, dy) ~ U[±0.25 W] × U[±0.25 H];
/// 3. clip to the image; accept if |IoU − τ| < 0.02; up to [`BBOX_TRIES`] tries;
/// 4. fallback: the tight box enlarged by 1/√τ about its centre, shifted (never shrunk) to fit
///    in the image, which keeps it containing the tight box so its IoU is exactly τ; where the
///    image is too narrow (or short) the other side grows instead, and only when the whole
///    image holds less than area/τ is the IoU above τ (the whole image is returned).
pub fn bbox_with_iou<R: Rng + ?Sized>(gt: &Mask, target_iou: f64, rng: &mut R) -> Result<BoxPrompt> {
    let (h, w) = nonempty_2d(gt, "bbox_with_iou")?;
    if !(target_iou > 0.0 && target_iou <= 1.0) {
        return Err(EvalError::arg("bbox_with_iou", format!("target IoU {target_iou} outside (0, 1]")));
    }
    let tight = tight_box(gt)?;
    let (gw, gh) = (tight.width(), tight.height());
    let (cx, cy) = (tight.x0 as f64 + gw / 2.0, tight.y0 as f64 + gh / 2.0);
    let (wf, hf) = (w as f64, h as f64);
    let s = 1.0 / target_iou.sqrt();
    for _ in 0..BBOX_TRIES {
        let kw = s * (0.8 + 0.4 * rng.random::<f64>());
        let kh = s * (0.8 + 0.4 * rng.random::<f64>());
        let dx = gw * (0.5 * rng.random::<f64>() - 0.25);
        let dy = gh * (0.5 * rng.random::<f64>() - 0.25);
        let (bw, bh) = (kw * gw, kh * gh);
        let ax = (cx + dx - bw / 2.0).max(0.0);
        let bx = (cx + dx + bw / 2.0).min(wf);
        let ay = (cy + dy - bh / 2.0).max(0.0);
        let by = (cy + dy + bh / 2.0).min(hf);
        if bx <= ax || by <= ay {
            continue;
        }
        let b = from_region(ax, bx, ay, by);
        if (b.iou(&tight) - target_iou).abs() < BBOX_IOU_TOLERANCE {
            return Ok(b);
        }
    }
    // Fallback: a box containing the tight box with area gw*gh/τ, fitted into the image.
    let area = gw * gh / target_iou;
    let mut bw = (gw * s).min(wf);
    let bh = (area / bw).min(hf);
    bw = (area / bh).min(wf);
    let ax = (cx - bw / 2.0).clamp(0.0, wf - bw);
    let ay = (cy - bh / 2.0).clamp(0.0, hf - bh);
    Ok(from_region(ax, ax + bw, ay, ay + bh))
}

/// Standard normal sample (Box–Muller).
fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Largest standard deviation of the box jitter, in pixels.
pub const JITTER_MAX_STD: f64 = 20.0;

/// SAM's training box (SAM paper, appendix): the tight box with independent Gaussian noise on
/// each coordinate, std = 10 % of the box side along that axis (region width / height) capped
/// at [`JITTER_MAX_STD`] px; then clipped to the image and put back in order (x0 <= x1,
/// y0 <= y1).
pub fn jittered_box<R: Rng + ?Sized>(gt: &Mask, rng: &mut R) -> Result<BoxPrompt> {
    let (h, w) = nonempty_2d(gt, "jittered_box")?;
    let t = tight_box(gt)?;
    let sx = (0.1 * t.width()).min(JITTER_MAX_STD);
    let sy = (0.1 * t.height()).min(JITTER_MAX_STD);
    let clip = |v: f64, n: usize| v.clamp(0.0, (n - 1) as f64);
    let x0 = clip(t.x0 as f64 + sx * normal(rng), w);
    let y0 = clip(t.y0 as f64 + sy * normal(rng), h);
    let x1 = clip(t.x1 as f64 + sx * normal(rng), w);
    let y1 = clip(t.y1 as f64 + sy * normal(rng), h);
    Ok(BoxPrompt {
        x0: x0.min(x1) as f32,
        y0: y0.min(y1) as f32,
        x1: x0.max(x1) as f32,
        y1: y0.max(y1) as f32,
    })
}

/// The initial prompt of `kind` from the ground truth. For [`PromptKind::Iterative`] this is
/// the first click (one random positive point); the corrections come from [`next_click`].
pub fn simulate<R: Rng + ?Sized>(kind: PromptKind, gt: &Mask, rng: &mut R) -> Result<Prompt> {
    Ok(match kind {
        PromptKind::OnePoint | PromptKind::Iterative { .. } => {
            Prompt { points: random_points(gt, 1, rng)?, bbox: None }
        }
        PromptKind::ThreePoints => Prompt { points: random_points(gt, 3, rng)?, bbox: None },
        PromptKind::BBox { target_iou } => {
            Prompt { points: Vec::new(), bbox: Some(bbox_with_iou(gt, target_iou, rng)?) }
        }
        PromptKind::JitteredBox => Prompt { points: Vec::new(), bbox: Some(jittered_box(gt, rng)?) },
    })
}

/// The next click of the iterative protocol, deterministic given the masks:
/// - error regions: FN = `gt AND NOT pred` (missed), FP = `pred AND NOT gt` (false), split into
///   4-connected components;
/// - the largest component over both wins (FN on ties); its click is positive for FN,
///   negative for FP;
/// - the click goes at the component's interior: the pixel with the largest Euclidean distance
///   to the nearest pixel outside the component, where outside the image counts as outside
///   (RITM / SAM-style clicker, `cv2.distanceTransform` of the zero-padded region); ties go to
///   the first pixel in row-major order.
///
/// Returns `None` when the prediction equals the ground truth.
pub fn next_click(gt: &Mask, pred: &Mask) -> Result<Option<Point>> {
    gt.dims2("next_click")?;
    let fneg = gt.and_not(pred)?;
    let fpos = pred.and_not(gt)?;
    let cn = fneg.components(Connectivity::Face);
    let cp = fpos.components(Connectivity::Face);
    let best_n = cn.largest().map(|l| (l, cn.size(l)));
    let best_p = cp.largest().map(|l| (l, cp.size(l)));
    let (region, positive) = match (best_n, best_p) {
        (None, None) => return Ok(None),
        (Some((l, _)), None) => (cn.mask_of(l), true),
        (None, Some((l, _))) => (cp.mask_of(l), false),
        (Some((ln, sn)), Some((lp, sp))) => {
            if sn >= sp {
                (cn.mask_of(ln), true)
            } else {
                (cp.mask_of(lp), false)
            }
        }
    };
    let best = interior_point(&region)?;
    Ok(best.map(|(x, y)| {
        let (x, y) = (x as f32, y as f32);
        if positive {
            Point::positive(x, y)
        } else {
            Point::negative(x, y)
        }
    }))
}

/// The most interior pixel `(x, y)` of a 2-D `region`: the largest Euclidean distance to the
/// nearest pixel outside it, outside the image counting as outside; ties go to the first pixel
/// in row-major order. `None` for an empty region.
pub fn interior_point(region: &Mask) -> Result<Option<(usize, usize)>> {
    let (h, w) = region.dims2("interior_point")?;
    // Outside the region (including a one-pixel frame around the image) is the feature set.
    let padded = Mask::from_fn(&[h + 2, w + 2], |i| {
        i[0] == 0 || i[1] == 0 || i[0] == h + 1 || i[1] == w + 1 || !region.data()[(i[0] - 1) * w + i[1] - 1]
    })?;
    let d = edt::squared_edt(&padded, &[1.0, 1.0])?;
    let mut best: Option<(usize, f64)> = None;
    for (p, &inside) in region.data().iter().enumerate() {
        if inside {
            let v = d[(p / w + 1) * (w + 2) + p % w + 1];
            if best.is_none_or(|(_, bv)| v > bv) {
                best = Some((p, v));
            }
        }
    }
    Ok(best.map(|(p, _)| (p % w, p / w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_roundtrip() {
        for s in ["1pt", "3pt", "bbox0.5", "bbox0.75", "jitterbox", "iterative:5"] {
            let k: PromptKind = s.parse().expect("parse");
            assert_eq!(k.to_string(), s);
        }
        for s in ["", "2pt", "bbox", "bbox1.5", "bbox0", "iterative:0", "iterative:x"] {
            assert!(s.parse::<PromptKind>().is_err(), "{s}");
        }
    }

    #[test]
    fn box_iou_pixel_regions() {
        let a = BoxPrompt { x0: 0.0, y0: 0.0, x1: 1.0, y1: 1.0 }; // 2x2 pixels
        let b = BoxPrompt { x0: 1.0, y0: 0.0, x1: 2.0, y1: 1.0 };
        assert_eq!(a.area(), 4.0);
        assert!((a.iou(&b) - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(a.iou(&a), 1.0);
    }

    #[test]
    fn empty_gt_is_an_error() {
        let gt = Mask::zeros(&[8, 8]).expect("mask");
        let mut rng = case_rng(1, 0);
        assert!(matches!(random_points(&gt, 1, &mut rng), Err(EvalError::EmptyMask { .. })));
        assert!(bbox_with_iou(&gt, 0.5, &mut rng).is_err());
        assert!(jittered_box(&gt, &mut rng).is_err());
        let vol = Mask::zeros(&[2, 8, 8]).expect("mask");
        assert!(matches!(random_points(&vol, 1, &mut rng), Err(EvalError::Not2d { .. })));
    }
}
