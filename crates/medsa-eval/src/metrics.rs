//! Segmentation metrics in 2D and 3D: Dice, IoU, HD95 and the average symmetric surface
//! distance (ASSD), with distances in mm from the pixel / voxel spacing (spec section 8).
//!
//! Definitions (P = prediction, G = ground truth, both binary [`Mask`]s of one shape):
//! - Dice = 2|P∩G| / (|P| + |G|), IoU = |P∩G| / |P∪G|, exact (no smoothing terms; the
//!   official code adds 1e-4 / 1e-6, which only matters for nearly empty masks).
//! - Surface ∂M = M minus its binary erosion with the cross-shaped structuring element
//!   ([`Mask::surface`]); outside the image counts as background, so foreground on the image
//!   border is surface.
//! - d(∂A→∂B) = for each surface element of A, the Euclidean distance in mm to the nearest
//!   surface element of B, through the exact distance transform ([`crate::edt`]).
//! - HD95 = max(P95 of d(∂P→∂G), P95 of d(∂G→∂P)), percentiles as numpy's default `linear`
//!   method ([`percentile`]); this is MONAI's `compute_hausdorff_distance(percentile=95)`.
//! - ASSD = the mean of the concatenation of d(∂P→∂G) and d(∂G→∂P) (MONAI's
//!   `compute_average_surface_distance(symmetric=True)`).
//!
//! **Empty-mask policy** (spec 8, \[PROPOSED\]):
//! - P and G both empty: Dice = IoU = 1, HD95 = ASSD = `Some(0.0)` (a perfect empty answer).
//! - exactly one of them empty: Dice = IoU = 0, HD95 = ASSD = `None` (undefined; the report
//!   excludes it from the HD95 / ASSD means and counts the exclusions, see
//!   [`crate::report::Summary`]).

use crate::mask::{check_spacing, Mask};
use crate::{edt, EvalError, Result};
use serde::{Deserialize, Serialize};

/// All metrics of one prediction against one ground truth.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegMetrics {
    /// Dice coefficient in [0, 1].
    pub dice: f64,
    /// Intersection over union in [0, 1].
    pub iou: f64,
    /// 95th-percentile symmetric Hausdorff distance in mm; `None` when exactly one mask is empty.
    pub hd95: Option<f64>,
    /// Average symmetric surface distance in mm; `None` when exactly one mask is empty.
    pub assd: Option<f64>,
    /// Foreground element count of the prediction.
    pub pred_count: usize,
    /// Foreground element count of the ground truth.
    pub gt_count: usize,
}

fn same_shape(what: &'static str, a: &Mask, b: &Mask) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(EvalError::ShapeMismatch { what, a: a.shape().to_vec(), b: b.shape().to_vec() });
    }
    Ok(())
}

/// (|P∩G|, |P|, |G|).
fn overlap(pred: &Mask, gt: &Mask) -> (usize, usize, usize) {
    let (mut i, mut p, mut g) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.data().iter().zip(gt.data()) {
        i += (a & b) as usize;
        p += a as usize;
        g += b as usize;
    }
    (i, p, g)
}

/// Dice coefficient; 1 when both masks are empty.
pub fn dice(pred: &Mask, gt: &Mask) -> Result<f64> {
    same_shape("dice", pred, gt)?;
    let (i, p, g) = overlap(pred, gt);
    Ok(if p + g == 0 { 1.0 } else { 2.0 * i as f64 / (p + g) as f64 })
}

/// Intersection over union; 1 when both masks are empty.
pub fn iou(pred: &Mask, gt: &Mask) -> Result<f64> {
    same_shape("iou", pred, gt)?;
    let (i, p, g) = overlap(pred, gt);
    let u = p + g - i;
    Ok(if u == 0 { 1.0 } else { i as f64 / u as f64 })
}

/// d(∂from→∂to): for every surface element of `from` (row-major order), the distance in mm to
/// the nearest surface element of `to`. Empty if `from` is empty; all `f64::INFINITY` if only
/// `to` is empty.
pub fn surface_distances(from: &Mask, to: &Mask, spacing: &[f64]) -> Result<Vec<f64>> {
    same_shape("surface_distances", from, to)?;
    check_spacing(from.shape(), spacing)?;
    surface_distances_of(&from.surface(), &to.surface(), spacing)
}

fn surface_distances_of(from_surface: &Mask, to_surface: &Mask, spacing: &[f64]) -> Result<Vec<f64>> {
    let d2 = edt::squared_edt(to_surface, spacing)?;
    Ok(from_surface.data().iter().zip(&d2).filter(|(&s, _)| s).map(|(_, &d)| d.sqrt()).collect())
}

/// The `q`-th percentile (0 <= q <= 100) of `values` with numpy's default `linear` method
/// (`np.percentile(values, q)`); `None` for no values or a `q` outside [0, 100].
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() || !(0.0..=100.0).contains(&q) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some(percentile_sorted(&v, q))
}

/// [`percentile`] on already sorted, non-empty values.
pub(crate) fn percentile_sorted(v: &[f64], q: f64) -> f64 {
    let n = v.len();
    let virtual_index = (n - 1) as f64 * (q / 100.0);
    let lo = (virtual_index.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let t = virtual_index - lo as f64;
    let (a, b) = (v[lo], v[hi]);
    // numpy's `_lerp`: interpolate from the nearer end for accuracy.
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// The `q`-th percentile symmetric Hausdorff distance in mm:
/// max(Pq of d(∂P→∂G), Pq of d(∂G→∂P)). `q = 100` is the classic Hausdorff distance.
/// Empty-mask policy as in the module docs: both empty gives `Some(0.0)`, one empty `None`.
pub fn hausdorff_percentile(pred: &Mask, gt: &Mask, spacing: &[f64], q: f64) -> Result<Option<f64>> {
    same_shape("hausdorff_percentile", pred, gt)?;
    check_spacing(pred.shape(), spacing)?;
    if !(0.0..=100.0).contains(&q) {
        return Err(EvalError::arg("hausdorff_percentile", format!("percentile {q} outside [0, 100]")));
    }
    let (sp, sg) = (pred.surface(), gt.surface());
    hd_of(&sp, &sg, spacing, q)
}

fn hd_of(sp: &Mask, sg: &Mask, spacing: &[f64], q: f64) -> Result<Option<f64>> {
    match (sp.any(), sg.any()) {
        (false, false) => Ok(Some(0.0)),
        (true, false) | (false, true) => Ok(None),
        (true, true) => {
            let a = surface_distances_of(sp, sg, spacing)?;
            let b = surface_distances_of(sg, sp, spacing)?;
            let pa = percentile(&a, q).unwrap_or(0.0);
            let pb = percentile(&b, q).unwrap_or(0.0);
            Ok(Some(pa.max(pb)))
        }
    }
}

/// HD95 in mm ([`hausdorff_percentile`] with q = 95).
pub fn hd95(pred: &Mask, gt: &Mask, spacing: &[f64]) -> Result<Option<f64>> {
    hausdorff_percentile(pred, gt, spacing, 95.0)
}

/// Average symmetric surface distance in mm (same empty-mask policy as [`hd95`]).
pub fn assd(pred: &Mask, gt: &Mask, spacing: &[f64]) -> Result<Option<f64>> {
    same_shape("assd", pred, gt)?;
    check_spacing(pred.shape(), spacing)?;
    assd_of(&pred.surface(), &gt.surface(), spacing)
}

fn assd_of(sp: &Mask, sg: &Mask, spacing: &[f64]) -> Result<Option<f64>> {
    match (sp.any(), sg.any()) {
        (false, false) => Ok(Some(0.0)),
        (true, false) | (false, true) => Ok(None),
        (true, true) => {
            let a = surface_distances_of(sp, sg, spacing)?;
            let b = surface_distances_of(sg, sp, spacing)?;
            let n = (a.len() + b.len()) as f64;
            Ok(Some((a.iter().sum::<f64>() + b.iter().sum::<f64>()) / n))
        }
    }
}

/// Every metric of [`SegMetrics`] at once (surfaces computed once).
pub fn evaluate(pred: &Mask, gt: &Mask, spacing: &[f64]) -> Result<SegMetrics> {
    same_shape("evaluate", pred, gt)?;
    check_spacing(pred.shape(), spacing)?;
    let (i, p, g) = overlap(pred, gt);
    let dice = if p + g == 0 { 1.0 } else { 2.0 * i as f64 / (p + g) as f64 };
    let iou = if p + g - i == 0 { 1.0 } else { i as f64 / (p + g - i) as f64 };
    let (sp, sg) = (pred.surface(), gt.surface());
    let (hd95, assd) = match (sp.any(), sg.any()) {
        (false, false) => (Some(0.0), Some(0.0)),
        (true, false) | (false, true) => (None, None),
        (true, true) => {
            let a = surface_distances_of(&sp, &sg, spacing)?;
            let b = surface_distances_of(&sg, &sp, spacing)?;
            let pa = percentile(&a, 95.0).unwrap_or(0.0);
            let pb = percentile(&b, 95.0).unwrap_or(0.0);
            let n = (a.len() + b.len()) as f64;
            (Some(pa.max(pb)), Some((a.iter().sum::<f64>() + b.iter().sum::<f64>()) / n))
        }
    };
    Ok(SegMetrics { dice, iou, hd95, assd, pred_count: p, gt_count: g })
}

/// Per-structure metrics of two label maps of one shape: for each label in `labels`, the masks
/// `pred == label` and `gt == label` are evaluated with [`evaluate`].
pub fn evaluate_labels<T: PartialEq>(
    shape: &[usize],
    pred: &[T],
    gt: &[T],
    labels: &[T],
    spacing: &[f64],
) -> Result<Vec<SegMetrics>> {
    labels
        .iter()
        .map(|l| {
            let p = Mask::from_labels(shape, pred, l)?;
            let g = Mask::from_labels(shape, gt, l)?;
            evaluate(&p, &g, spacing)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_percentile_examples() {
        // np.percentile([1, 2, 3, 4], 95) = 3.85; np.percentile([0, 10], 50) = 5.
        let p = percentile(&[4.0, 1.0, 3.0, 2.0], 95.0).expect("p");
        assert!((p - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[0.0, 10.0], 50.0), Some(5.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 95.0), None);
        assert_eq!(percentile(&[1.0], 101.0), None);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let a = Mask::zeros(&[3, 3]).expect("ok");
        let b = Mask::zeros(&[3, 4]).expect("ok");
        assert!(dice(&a, &b).is_err());
        assert!(evaluate(&a, &b, &[1.0, 1.0]).is_err());
        assert!(evaluate(&a, &a, &[1.0]).is_err());
    }
}
