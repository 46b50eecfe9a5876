//! 3-D prompting that follows the organ: from key slices outward, each slice is prompted from
//! the previous slice's mask (MedSAM's 3-D inference with a 2-D model).
//!
//! **Rule.** A key slice is segmented from the user's prompt. Then, slice by slice away from
//! it, the next slice's prompt is made from the mask just predicted:
//! - `Box`: the mask's bounding box grown by `margin_mm` on each side (converted to pixels with
//!   the slice's pixel spacing, rounded up), clipped to the slice; no side moves inward by more
//!   than `max_shrink_mm` or outward by more than `max_grow_mm` from the previous slice's box
//!   (the key slice's prompt box, or its mask's box for a click), so one under- or
//!   over-segmented slice neither collapses the chain nor throws it onto a neighbour; with
//!   `within_key`, no side leaves the key slice's box grown by the margin either (for a key
//!   slice at the organ's largest cross-section, as MedSAM's protocol takes it);
//! - `Click`: one foreground click at the mask's most interior pixel (largest distance to its
//!   outside, [`medsa_eval::prompts::interior_point`]).
//!
//! With `consistent` the model's candidate masks (SAM's single mask and its three multimask
//! candidates: one more decoder run) compete, and the one closest to the previous slice's mask
//! (Dice) is kept, not the one the model scores best: a small structure's single mask slides
//! onto a neighbour more often than all four do. With `key_candidates` as well, the key slice's
//! own box competes too (two more decoder runs per slice): its closest candidate replaces the
//! chain's when it is closer to the previous mask, larger than the chain's mask and no larger
//! than the previous one ([`Rule::KeyBox`]). So it only gives back area the chain lost: it
//! brings back a chain whose box has shrunk onto part of the organ, without taking the fixed
//! box's large masks where the organ ends, and never trims the chain's mask. With `mask_feedback` the previous slice's
//! low-res logits go along as the mask prompt (then there is one mask, no candidates); with
//! `clip_to_box` a propagated mask is cut to its prompt box. `extent` bounds the chains to a
//! slice range (the slice range of a 3-D box prompt, as MedSAM's 3-D inference takes it).
//! A chain **stops** (and writes nothing on that slice) when the new mask is empty
//! ([`Stop::Vanished`]), smaller than `min_area_mm2` ([`Stop::TooSmall`]), more than
//! `max_growth` times the previous mask's area ([`Stop::Jump`]: an organ does not double from
//! one slice to the next; a leak into a neighbour does), or more than `max_key_growth` times the
//! key slice's area ([`Stop::Leak`]: a slow leak that grows a little on every slice). With
//! `retry`, a jump or a leak first gets a second try: the slice is segmented again with the
//! previous slice's box and the mask cut to that box; the chain goes on if that mask passes the
//! checks. Defaults (the best of the variants measured on Colin27 with LiteMedSAM, README):
//! margin 2 mm, sides move in and out by 1 mm per slice at most, 10 mm², 3 and 3, retry and
//! consistent on, no mask feedback.
//!
//! **Several key slices.** Between two key slices each chain runs to the midpoint, so every
//! slice in between is prompted from its nearer key slice's side ([`Stop::Met`]); outside the
//! outermost keys the chains run to the organ's end or the volume's edge ([`Stop::Edge`]).
//! Every slice's record says which rule made its prompt ([`SliceRecord::rule`]).
//!
//! **Cost.** Each visited slice costs one encoder run and one decoder run (two with
//! `consistent`, four with `key_candidates`), in slice order along each chain. The model is
//! reached through [`SliceSegmenter`], so the rule itself is tested with a stand-in segmenter.

use crate::predictor::{BoxPrompt, MaskOutput, Point, Predictor, Prompt};
use crate::{Error, Result, Sam};
use medsa_core::{Backend, Tensor};
use medsa_eval::Mask;
use std::collections::BTreeMap;

/// How the next slice is prompted from the previous mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// The previous mask's box plus a margin.
    Box,
    /// A click at the previous mask's most interior pixel.
    Click,
}

/// Settings of the propagation (module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PropagateOptions {
    /// How the next slice is prompted.
    pub follow: Follow,
    /// Box margin per side, mm.
    pub margin_mm: f64,
    /// Largest inward move of a box side from one slice to the next, mm.
    pub max_shrink_mm: f64,
    /// Largest outward move of a box side from one slice to the next, mm.
    pub max_grow_mm: f64,
    /// Smallest mask that continues a chain, mm².
    pub min_area_mm2: f64,
    /// Largest plausible area ratio new / previous.
    pub max_growth: f64,
    /// Largest plausible area ratio new / key slice.
    pub max_key_growth: f64,
    /// Feed the previous slice's low-res logits as the mask prompt.
    pub mask_feedback: bool,
    /// Keep only the part of each propagated mask inside its prompt box (box rule only), so a
    /// chain's box grows by at most the margin per slice.
    pub clip_to_box: bool,
    /// On an implausible jump or leak, segment the slice once more with the previous slice's
    /// box, the mask cut to that box, and go on if that mask passes the checks.
    pub retry: bool,
    /// Of the model's candidate masks, keep the one closest (Dice) to the previous slice's.
    pub consistent: bool,
    /// Slices `(first, last)` the chains may visit (a 3-D box's slice range); `None`: all.
    pub extent: Option<(usize, usize)>,
    /// Keep every propagated box inside its key slice's box grown by the margin: for a key
    /// slice at the organ's largest cross-section (the MedSAM protocol), no slice of the organ
    /// reaches outside it.
    pub within_key: bool,
    /// With `consistent`: the key slice's box competes on every slice; its closest mask is kept
    /// instead of the chain's when it is closer (Dice) to the previous mask, larger than the
    /// chain's mask and no larger than the previous one ([`Rule::KeyBox`]), so a chain whose
    /// box has drifted onto a part of the organ comes back to the whole, while the fixed box's
    /// habit of staying large where the organ shrinks is refused (two more decoder runs per
    /// slice).
    pub key_candidates: bool,
}

impl Default for PropagateOptions {
    fn default() -> Self {
        PropagateOptions {
            follow: Follow::Box,
            margin_mm: 2.0,
            max_shrink_mm: 1.0,
            max_grow_mm: 1.0,
            min_area_mm2: 10.0,
            max_growth: 3.0,
            max_key_growth: 3.0,
            mask_feedback: false,
            clip_to_box: false,
            retry: true,
            consistent: true,
            extent: None,
            within_key: false,
            key_candidates: false,
        }
    }
}

/// Why a chain ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// The mask on the next slice was empty.
    Vanished,
    /// The mask on the next slice was below the minimum area (pixels).
    TooSmall(usize),
    /// The mask on the next slice grew by this factor over the previous one.
    Jump(f64),
    /// The mask on the next slice grew to this factor of the key slice's mask.
    Leak(f64),
    /// The chain reached the volume's first or last slice.
    Edge,
    /// The chain reached the half of the gap that the next key slice's chain covers.
    Met,
    /// The chain reached the end of the slice range it was given.
    Range,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Vanished => write!(f, "the mask vanished"),
            Stop::TooSmall(a) => write!(f, "the mask fell to {a} pixels, below the minimum area"),
            Stop::Jump(r) => write!(f, "the mask grew {r:.1}x in one slice (implausible)"),
            Stop::Leak(r) => write!(f, "the mask grew to {r:.1}x the key slice's (a leak)"),
            Stop::Edge => write!(f, "the volume ends"),
            Stop::Met => write!(f, "the next key slice's chain takes over"),
            Stop::Range => write!(f, "the given slice range ends"),
        }
    }
}

/// Which rule made a slice's prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The user's prompt on a key slice.
    Key,
    /// Made from the mask of slice `from`, in the chain of key slice `key`.
    Propagated {
        /// The key slice of the chain.
        key: usize,
        /// The slice whose mask made the prompt.
        from: usize,
    },
    /// The key slice `key`'s box, reused: its mask agreed with the previous slice's mask
    /// better than the propagated prompt's ([`PropagateOptions::key_candidates`]).
    KeyBox {
        /// The key slice of the chain.
        key: usize,
    },
}

/// One segmented slice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceRecord {
    /// Slice index.
    pub slice: usize,
    /// The rule that made its prompt.
    pub rule: Rule,
    /// The box prompt, if any.
    pub bbox: Option<BoxPrompt>,
    /// The first click, if any.
    pub click: Option<Point>,
    /// Foreground pixels of its mask.
    pub area: usize,
}

/// How one chain (one key slice, one direction) ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChainEnd {
    /// The key slice.
    pub key: usize,
    /// −1 toward slice 0, +1 toward the last slice.
    pub direction: i8,
    /// The last slice with a mask written.
    pub last: usize,
    /// Why it ended.
    pub stop: Stop,
}

/// The result: masks per slice (row-major, the slice's size) and the records.
#[derive(Clone, Debug, Default)]
pub struct Propagation {
    /// Masks of the segmented slices.
    pub masks: BTreeMap<usize, Vec<bool>>,
    /// Per segmented slice, in the order they were segmented.
    pub slices: Vec<SliceRecord>,
    /// Per chain.
    pub ends: Vec<ChainEnd>,
}

/// A slice's predicted mask and its low-res logits (for mask feedback).
pub struct SliceMask {
    /// Mask `[H, W]`, row-major.
    pub mask: Vec<bool>,
    /// Low-res logits `[4G, 4G]`, if the segmenter has them.
    pub low_res: Option<Tensor>,
}

/// Segments one slice of a volume from a prompt in that slice's pixels.
pub trait SliceSegmenter {
    /// The mask of `slice` for `prompt`.
    fn segment(&mut self, slice: usize, prompt: &Prompt) -> Result<SliceMask>;

    /// Every mask the model offers for `prompt` (SAM's single mask and its multimask
    /// candidates); by default the one mask of [`SliceSegmenter::segment`].
    fn candidates(&mut self, slice: usize, prompt: &Prompt) -> Result<Vec<SliceMask>> {
        Ok(vec![self.segment(slice, prompt)?])
    }
}

/// A [`SliceSegmenter`] over a model: `embedding(slice)` gives the slice's image embedding
/// `[1, C, G, G]` (computed or cached by the caller), slices are `size = (H, W)`.
pub struct ModelSegmenter<'a, F> {
    predictor: Predictor<'a>,
    embedding: F,
    size: (usize, usize),
    output: MaskOutput,
    current: Option<usize>,
}

impl<'a, F: FnMut(usize) -> Result<Tensor>> ModelSegmenter<'a, F> {
    /// A segmenter for `model` on `be` keeping the mask `output` chooses ([`MaskOutput`]).
    pub fn new(
        model: &'a Sam,
        be: &'a dyn Backend,
        size: (usize, usize),
        output: MaskOutput,
        embedding: F,
    ) -> Result<Self> {
        Ok(ModelSegmenter { predictor: Predictor::new(model, be)?, embedding, size, output, current: None })
    }
}

impl<F: FnMut(usize) -> Result<Tensor>> SliceSegmenter for ModelSegmenter<'_, F> {
    fn segment(&mut self, slice: usize, prompt: &Prompt) -> Result<SliceMask> {
        if self.current != Some(slice) {
            self.predictor.set_embedding((self.embedding)(slice)?, self.size)?;
            self.current = Some(slice);
        }
        let output = if prompt.mask.is_some() { MaskOutput::Single } else { self.output };
        let p = self.predictor.predict(prompt, output)?;
        let k = output.keep(&p);
        Ok(SliceMask { mask: p.mask(k), low_res: Some(p.low_res(k)?) })
    }

    fn candidates(&mut self, slice: usize, prompt: &Prompt) -> Result<Vec<SliceMask>> {
        let mut out = vec![self.segment(slice, prompt)?];
        if prompt.mask.is_none() {
            let p = self.predictor.predict(prompt, MaskOutput::Multimask)?;
            for k in 0..p.iou.len() {
                out.push(SliceMask { mask: p.mask(k), low_res: Some(p.low_res(k)?) });
            }
        }
        Ok(out)
    }
}

fn count(m: &[bool]) -> usize {
    m.iter().filter(|&&v| v).count()
}

/// The prompt for the next slice from `mask` (`[H, W]`), the previous slice's box and the key
/// slice's box.
fn follow_prompt(
    mask: &[bool],
    prev_box: Option<BoxPrompt>,
    key_box: Option<BoxPrompt>,
    size: (usize, usize),
    spacing: [f64; 2],
    opts: &PropagateOptions,
) -> Result<Prompt> {
    let (h, w) = size;
    let m = Mask::new(&[h, w], mask.to_vec()).map_err(|e| Error::Volume(e.to_string()))?;
    match opts.follow {
        Follow::Box => {
            let bb = m.bbox().ok_or_else(|| Error::Volume("cannot follow an empty mask".into()))?;
            let my = (opts.margin_mm / spacing[0]).ceil() as usize;
            let mx = (opts.margin_mm / spacing[1]).ceil() as usize;
            let mut b = BoxPrompt {
                x0: bb.min[1].saturating_sub(mx) as f32,
                y0: bb.min[0].saturating_sub(my) as f32,
                x1: (bb.max[1] + mx).min(w - 1) as f32,
                y1: (bb.max[0] + my).min(h - 1) as f32,
            };
            if let Some(p) = prev_box {
                let (sy, sx) =
                    ((opts.max_shrink_mm / spacing[0]) as f32, (opts.max_shrink_mm / spacing[1]) as f32);
                let (gy, gx) =
                    ((opts.max_grow_mm / spacing[0]) as f32, (opts.max_grow_mm / spacing[1]) as f32);
                b.x0 = b.x0.clamp(p.x0 - gx, p.x0 + sx);
                b.y0 = b.y0.clamp(p.y0 - gy, p.y0 + sy);
                b.x1 = b.x1.clamp(p.x1 - sx, p.x1 + gx);
                b.y1 = b.y1.clamp(p.y1 - sy, p.y1 + gy);
            }
            if let (true, Some(k)) = (opts.within_key, key_box) {
                let (kx0, ky0) = (k.x0 - mx as f32, k.y0 - my as f32);
                let (kx1, ky1) = (k.x1 + mx as f32, k.y1 + my as f32);
                b.x0 = b.x0.clamp(kx0, kx1);
                b.y0 = b.y0.clamp(ky0, ky1);
                b.x1 = b.x1.clamp(b.x0, kx1.max(b.x0));
                b.y1 = b.y1.clamp(b.y0, ky1.max(b.y0));
            }
            Ok(Prompt::bbox(b))
        }
        Follow::Click => {
            let (x, y) = medsa_eval::prompts::interior_point(&m)
                .map_err(|e| Error::Volume(e.to_string()))?
                .ok_or_else(|| Error::Volume("cannot follow an empty mask".into()))?;
            Ok(Prompt::points(vec![Point::foreground(x as f32, y as f32)]))
        }
    }
}

/// Keeps only the part of `mask` (row-major, `w` wide) inside `bbox`.
fn clip(mask: &mut [bool], bbox: Option<BoxPrompt>, w: usize) {
    let Some(b) = bbox else { return };
    for (i, v) in mask.iter_mut().enumerate() {
        let (x, y) = ((i % w) as f32, (i / w) as f32);
        *v &= x >= b.x0 && x <= b.x1 && y >= b.y0 && y <= b.y1;
    }
}

/// Why a chain must stop at a mask of `a` pixels after one of `pa` (key slice `key_area`),
/// if it must.
fn check(a: usize, pa: usize, key_area: f64, px_area: f64, opts: &PropagateOptions) -> Option<Stop> {
    if a == 0 {
        Some(Stop::Vanished)
    } else if (a as f64) * px_area < opts.min_area_mm2 {
        Some(Stop::TooSmall(a))
    } else if a as f64 > opts.max_growth * pa as f64 {
        Some(Stop::Jump(a as f64 / pa as f64))
    } else if a as f64 > opts.max_key_growth * key_area {
        Some(Stop::Leak(a as f64 / key_area))
    } else {
        None
    }
}

/// Propagates from the key prompts (module docs) over `n_slices` slices of `size = (H, W)`
/// pixels with pixel `spacing = [row, column]` mm. A key slice outside the volume is
/// [`Error::NoSuchSlice`]; a key prompt that gives an empty mask is [`Error::Prompt`]; a prompt
/// outside its slice is the segmenter's [`Error::Prompt`].
pub fn propagate(
    seg: &mut dyn SliceSegmenter,
    n_slices: usize,
    size: (usize, usize),
    spacing: [f64; 2],
    keys: &BTreeMap<usize, Prompt>,
    opts: &PropagateOptions,
) -> Result<Propagation> {
    if keys.is_empty() {
        return Err(Error::Prompt("propagation needs at least one key slice".into()));
    }
    if let Some(&k) = keys.keys().find(|&&k| k >= n_slices) {
        return Err(Error::NoSuchSlice { slice: k, slices: n_slices });
    }
    if let Some((first, last)) = opts.extent {
        if let Some(&k) = keys.keys().find(|&&k| k < first || k > last) {
            return Err(Error::Prompt(format!(
                "key slice {k} is outside the propagation's slice range {first}-{last}"
            )));
        }
    }
    if !(spacing.iter().all(|s| s.is_finite() && *s > 0.0)
        && opts.max_growth > 1.0
        && opts.max_key_growth > 1.0
        && opts.margin_mm >= 0.0)
    {
        return Err(Error::Config(format!(
            "propagation: spacing {spacing:?} and options {opts:?} are not usable"
        )));
    }
    let px_area = spacing[0] * spacing[1];
    let key_list: Vec<usize> = keys.keys().copied().collect();
    let mut out = Propagation::default();
    let mut key_masks = Vec::new();
    for (&k, prompt) in keys {
        let m = seg.segment(k, prompt)?;
        let area = count(&m.mask);
        if area == 0 {
            return Err(Error::Prompt(format!(
                "key slice {k}: the prompt gives an empty mask, so there is nothing to follow"
            )));
        }
        out.slices.push(SliceRecord {
            slice: k,
            rule: Rule::Key,
            bbox: prompt.bbox,
            click: prompt.points.first().copied(),
            area,
        });
        out.masks.insert(k, m.mask.clone());
        key_masks.push(m);
    }
    for (i, &k) in key_list.iter().enumerate() {
        for dir in [-1i8, 1] {
            // The slices this chain may fill: up to the midpoint toward the neighbouring key.
            let (limit, at_limit) = match dir {
                -1 if i > 0 => ((key_list[i - 1] + k) / 2 + 1, Stop::Met),
                -1 => (0, Stop::Edge),
                _ if i + 1 < key_list.len() => ((k + key_list[i + 1]) / 2, Stop::Met),
                _ => (n_slices - 1, Stop::Edge),
            };
            let (limit, at_limit) = match (opts.extent, dir) {
                (Some((first, _)), -1) if first > limit => (first, Stop::Range),
                (Some((_, last)), 1) if last < limit => (last, Stop::Range),
                _ => (limit, at_limit),
            };
            let (mut prev, mut prev_low) = (key_masks[i].mask.clone(), key_masks[i].low_res.clone());
            let mut prev_box = keys[&k].bbox;
            // The key slice's box: the user's, or the key mask's for a click.
            let key_box = prev_box.or_else(|| {
                Mask::new(&[size.0, size.1], key_masks[i].mask.clone()).ok()?.bbox().map(|bb| BoxPrompt {
                    x0: bb.min[1] as f32,
                    y0: bb.min[0] as f32,
                    x1: bb.max[1] as f32,
                    y1: bb.max[0] as f32,
                })
            });
            let key_area = count(&prev) as f64;
            let mut z = k;
            let stop = loop {
                if z == limit || (dir < 0 && z == 0) {
                    break at_limit;
                }
                let next = if dir < 0 { z - 1 } else { z + 1 };
                let mut prompt = follow_prompt(&prev, prev_box, key_box, size, spacing, opts)?;
                if opts.mask_feedback {
                    prompt.mask = prev_low.clone();
                }
                let pa = count(&prev);
                let mut rule = Rule::Propagated { key: k, from: z };
                let mut m = if opts.consistent {
                    // The candidate closest to the previous mask.
                    let dice = |m: &SliceMask| {
                        let i = m.mask.iter().zip(&prev).filter(|(a, b)| **a && **b).count();
                        2.0 * i as f64 / (count(&m.mask) + pa).max(1) as f64
                    };
                    let best = |c: Vec<SliceMask>| {
                        c.into_iter()
                            .map(|m| (dice(&m), m))
                            .max_by(|a, b| a.0.total_cmp(&b.0))
                            .ok_or_else(|| Error::Volume("the segmenter gave no mask".into()))
                    };
                    let (d, m) = best(seg.candidates(next, &prompt)?)?;
                    match (opts.key_candidates, key_box) {
                        (true, Some(b)) if prompt.bbox != Some(b) => {
                            let (dk, mk) = best(seg.candidates(next, &Prompt::bbox(b))?)?;
                            // Only area the chain lost comes back.
                            let ak = count(&mk.mask);
                            if dk > d && count(&m.mask) < ak && ak <= pa {
                                (rule, prompt) = (Rule::KeyBox { key: k }, Prompt::bbox(b));
                                mk
                            } else {
                                m
                            }
                        }
                        _ => m,
                    }
                } else {
                    seg.segment(next, &prompt)?
                };
                if opts.clip_to_box {
                    clip(&mut m.mask, prompt.bbox, size.1);
                }
                let mut a = count(&m.mask);
                let mut verdict = check(a, pa, key_area, px_area, opts);
                if let (true, Some(Stop::Jump(_) | Stop::Leak(_)), Some(b)) = (opts.retry, verdict, prev_box)
                {
                    // The previous box, the mask cut to it.
                    let mut again = Prompt { bbox: Some(b), ..prompt.clone() };
                    again.points.clear();
                    let mut m2 = seg.segment(next, &again)?;
                    clip(&mut m2.mask, Some(b), size.1);
                    let a2 = count(&m2.mask);
                    if let v2 @ None = check(a2, pa, key_area, px_area, opts) {
                        (prompt, m, a, verdict) = (again, m2, a2, v2);
                    }
                }
                if let Some(stop) = verdict {
                    break stop;
                }
                out.slices.push(SliceRecord {
                    slice: next,
                    rule,
                    bbox: prompt.bbox,
                    click: prompt.points.first().copied(),
                    area: a,
                });
                out.masks.insert(next, m.mask.clone());
                (prev, prev_low, prev_box, z) = (m.mask, m.low_res, prompt.bbox, next);
            };
            out.ends.push(ChainEnd { key: k, direction: dir, last: z, stop });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
