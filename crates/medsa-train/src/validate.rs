//! Validation with the `medsa eval` protocol for volumes: for each source and label of a
//! validation set, every selected slice where the label is present is segmented from its tight
//! box (single-mask output, logits > 0 at the original size); the other selected slices are
//! predicted empty; Dice, IoU and HD95 are computed in 3-D over the selected slices with the
//! voxel spacing (a slice range is one contiguous slab, so HD95 is the slab's). A 2-D case is a
//! one-slice volume. Labels absent from a source's selected slices are left out. Each set also
//! reports the mean 2-D Dice over its prompted (slice, label) samples.

use crate::dataset::Dataset;
use crate::manifest::ValidationSet;
use crate::Result;
use medsa_core::{Backend, Tensor};
use medsa_eval::metrics;
use medsa_eval::prompts::tight_box;
use medsa_eval::Mask;
use medsa_model::predictor::{BoxPrompt, MaskOutput, Predictor, Prompt};
use medsa_model::Sam;
use serde::Serialize;

/// Metrics of one label in one source.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabelResult {
    /// Source id.
    pub source: String,
    /// Label id.
    pub label: i64,
    /// Label name (`37 Hippocampus_L` or the id).
    pub name: String,
    /// Slices where the label is present (each prompted once).
    pub slices: usize,
    /// 3-D Dice.
    pub dice: f64,
    /// 3-D IoU.
    pub iou: f64,
    /// 3-D HD95 in mm (None when exactly one mask is empty).
    pub hd95: Option<f64>,
}

/// Metrics of one validation set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SetResult {
    /// The set's name.
    pub name: String,
    /// Per source and label.
    pub labels: Vec<LabelResult>,
    /// Mean 3-D Dice over `labels`.
    pub mean_dice: f64,
    /// Mean 2-D Dice over every prompted (slice, label) sample.
    pub mean_slice_dice: f64,
}

/// Runs the protocol (module docs) on `set`. `embedding(source, slice)` gives the image
/// embedding `[1, C, G, G]` of a slice (from a cache while the encoder is frozen).
pub fn validate(
    model: &Sam,
    be: &dyn Backend,
    data: &Dataset,
    set: &ValidationSet,
    embedding: &mut dyn FnMut(usize, usize) -> Result<Tensor>,
) -> Result<SetResult> {
    let sel = &set.select;
    let mut predictor = Predictor::new(model, be)?;
    let mut labels = Vec::new();
    let mut slice_dice = Vec::new();
    for (si, src) in data.sources.iter().enumerate() {
        if !sel.takes_source(&src.id) {
            continue;
        }
        let per = src.labels_per_slice(data.axis)?;
        let slices: Vec<usize> = (0..per.len()).filter(|&z| sel.takes_slice(z)).collect();
        let ids: Vec<i64> = match &sel.label_ids {
            Some(ids) => ids.clone(),
            None => slices
                .iter()
                .flat_map(|&z| per[z].iter().copied())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let ids: Vec<i64> = ids.into_iter().filter(|l| slices.iter().any(|&z| per[z].contains(l))).collect();
        if ids.is_empty() {
            continue;
        }
        // Per label: stacked predicted and true masks over the selected slices.
        let mut pred: Vec<Vec<bool>> = vec![Vec::new(); ids.len()];
        let mut gt: Vec<Vec<bool>> = vec![Vec::new(); ids.len()];
        let mut prompted = vec![0usize; ids.len()];
        let mut hw = (0, 0);
        for &z in &slices {
            let sl = src.slice(data.axis, z)?;
            hw = (sl.image.height, sl.image.width);
            let present: Vec<usize> = (0..ids.len()).filter(|&k| per[z].contains(&ids[k])).collect();
            if !present.is_empty() {
                predictor.set_embedding(embedding(si, z)?, hw)?;
            }
            // One decoder batch for every label present on the slice.
            let masks: Vec<Mask> = ids.iter().map(|&id| sl.mask(id)).collect::<Result<_>>()?;
            let boxes: Vec<Prompt> = present
                .iter()
                .map(|&k| {
                    let b = tight_box(&masks[k])?;
                    Ok(Prompt::bbox(BoxPrompt { x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1 }))
                })
                .collect::<Result<_>>()?;
            let preds = if boxes.is_empty() {
                Vec::new()
            } else {
                predictor.predict_batch(&boxes, MaskOutput::Single)?
            };
            for (k, m) in masks.iter().enumerate() {
                match present.iter().position(|&p| p == k) {
                    Some(i) => {
                        let pm = Mask::new(&[hw.0, hw.1], preds[i].mask(0))?;
                        slice_dice.push(metrics::dice(&pm, m)?);
                        pred[k].extend_from_slice(pm.data());
                        prompted[k] += 1;
                    }
                    None => pred[k].extend(std::iter::repeat_n(false, hw.0 * hw.1)),
                }
                gt[k].extend_from_slice(m.data());
            }
        }
        let [row, col] = src.slice_spacing(data.axis);
        let spacing = [src.slice_gap(data.axis), row, col];
        let shape = [slices.len(), hw.0, hw.1];
        for (k, &id) in ids.iter().enumerate() {
            let p = Mask::new(&shape, std::mem::take(&mut pred[k]))?;
            let g = Mask::new(&shape, std::mem::take(&mut gt[k]))?;
            let m = metrics::evaluate(&p, &g, &spacing)?;
            labels.push(LabelResult {
                source: src.id.clone(),
                label: id,
                name: data.label_name(id),
                slices: prompted[k],
                dice: m.dice,
                iou: m.iou,
                hd95: m.hd95,
            });
        }
    }
    let mean_dice = if labels.is_empty() {
        f64::NAN
    } else {
        labels.iter().map(|l| l.dice).sum::<f64>() / labels.len() as f64
    };
    let mean_slice_dice = slice_dice.iter().sum::<f64>() / slice_dice.len() as f64;
    Ok(SetResult { name: set.name.clone(), labels, mean_dice, mean_slice_dice })
}
