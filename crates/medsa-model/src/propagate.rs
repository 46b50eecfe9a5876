//! 3-D prompting that follows the organ: from key slices outward, each slice is prompted from
//! the previous slice's mask (MedSAM's 3-D inference with a 2-D model).
//!
//! **Rule.** A key slice is segmented from the user's prompt. Then, slice by slice away from
//! it, the next slice's prompt is made from the mask just predicted:
//! - `Box`: the mask's bounding box grown by `margin_mm` on each side (converted to pixels with
//!   the slice's pixel spacing, rounded up), clipped to the slice; no side moves inward by more
//!   than `max_shrink_mm` or outward by more than `max_grow_mm` from the previous slice's box
//!   (the key slice's prompt box, or its mask's box for a click), so one under- or
//!   over-segmented slice neither collapses the chain nor throws it onto a neighbour;
//! - `Click`: one foreground click at the mask's most interior pixel (largest distance to its
//!   outside, [`medsa_eval::prompts::interior_point`]).
//!
//! With `consistent` the model's candidate masks (SAM's single mask and its three multimask
//! candidates: one more decoder run) compete, and the one closest to the previous slice's mask
//! (Dice) is kept, not the one the model scores best: a small structure's single mask slides
//! onto a neighbour more often than all four do. With `mask_feedback` the previous slice's
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
//! **Cost.** Each visited slice costs one encoder run and one decoder run, in slice order along
//! each chain. The model is reached through [`SliceSegmenter`], so the rule itself is tested
//! with a stand-in segmenter.

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

/// The prompt for the next slice from `mask` (`[H, W]`) and the previous slice's box.
fn follow_prompt(
    mask: &[bool],
    prev_box: Option<BoxPrompt>,
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
            let key_area = count(&prev) as f64;
            let mut z = k;
            let stop = loop {
                if z == limit || (dir < 0 && z == 0) {
                    break at_limit;
                }
                let next = if dir < 0 { z - 1 } else { z + 1 };
                let mut prompt = follow_prompt(&prev, prev_box, size, spacing, opts)?;
                if opts.mask_feedback {
                    prompt.mask = prev_low.clone();
                }
                let pa = count(&prev);
                let mut m = if opts.consistent {
                    // The candidate closest to the previous mask.
                    let c = seg.candidates(next, &prompt)?;
                    let dice = |m: &SliceMask| {
                        let i = m.mask.iter().zip(&prev).filter(|(a, b)| **a && **b).count();
                        2.0 * i as f64 / (count(&m.mask) + pa).max(1) as f64
                    };
                    c.into_iter()
                        .max_by(|a, b| dice(a).total_cmp(&dice(b)))
                        .ok_or_else(|| Error::Volume("no mask".into()))?
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
                    rule: Rule::Propagated { key: k, from: z },
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An ellipsoid (radius shrinking away from slice 10, gone beyond |z - 10| > 6) and, from
    /// three slices away from the centre on, a bright bar beside it (inside the key slice's box,
    /// outside the organ); the stand-in segmenter returns every bright pixel inside the box (or
    /// the organ under a click), as a box-following model would.
    struct Oracle {
        h: usize,
        w: usize,
        calls: Vec<usize>,
    }

    fn ellipse(z: usize, y: usize, x: usize) -> bool {
        let r = 8.0 - 1.3 * (z as f64 - 10.0).abs();
        let (dy, dx) = (y as f64 - 20.0, (x as f64 - 20.0) / 1.2);
        r > 0.0 && dy * dy + dx * dx <= r * r
    }

    fn bar(z: usize, y: usize, x: usize) -> bool {
        z.abs_diff(10) >= 3 && (10..12).contains(&x) && (12..28).contains(&y)
    }

    impl SliceSegmenter for Oracle {
        fn segment(&mut self, z: usize, p: &Prompt) -> Result<SliceMask> {
            self.calls.push(z);
            let mut mask = vec![false; self.h * self.w];
            if let Some(b) = p.bbox {
                if b.x1 as usize >= self.w || b.y1 as usize >= self.h {
                    return Err(Error::Prompt("box outside the slice".into()));
                }
                for y in b.y0 as usize..=b.y1 as usize {
                    for x in b.x0 as usize..=b.x1 as usize {
                        mask[y * self.w + x] = ellipse(z, y, x) || bar(z, y, x);
                    }
                }
            } else if let Some(c) = p.points.first() {
                let (cx, cy) = (c.x as usize, c.y as usize);
                if ellipse(z, cy, cx) {
                    for (i, m) in mask.iter_mut().enumerate() {
                        *m = ellipse(z, i / self.w, i % self.w);
                    }
                }
            }
            Ok(SliceMask { mask, low_res: None })
        }
    }

    fn truth(z: usize, h: usize, w: usize) -> Vec<bool> {
        (0..h * w).map(|i| ellipse(z, i / w, i % w)).collect()
    }

    fn dice(a: &[bool], b: &[bool]) -> f64 {
        let i = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
        2.0 * i as f64 / (count(a) + count(b)).max(1) as f64
    }

    #[test]
    fn boxes_follow_a_shrinking_organ_and_stop_at_its_end() {
        let (h, w) = (40, 40);
        let key_box = BoxPrompt { x0: 10.0, y0: 11.0, x1: 30.0, y1: 29.0 };
        let mut keys = BTreeMap::new();
        keys.insert(10, Prompt::bbox(key_box));
        let opts = PropagateOptions { margin_mm: 1.0, min_area_mm2: 1.0, ..Default::default() };
        let mut oracle = Oracle { h, w, calls: Vec::new() };
        let p = propagate(&mut oracle, 20, (h, w), [1.0, 1.0], &keys, &opts).unwrap();
        // The organ spans slices 4..=16; nothing is written past its ends.
        assert_eq!(p.masks.keys().copied().collect::<Vec<_>>(), (4..=16).collect::<Vec<_>>());
        assert!(p.ends.iter().all(|e| e.stop == Stop::Vanished), "{:?}", p.ends);
        for (&z, m) in &p.masks {
            assert!(dice(m, &truth(z, h, w)) > 0.95, "slice {z}: propagated box stays on the organ");
        }
        assert!(p.slices.iter().any(|s| s.rule == Rule::Propagated { key: 10, from: 11 }));
        // The same key box reused unchanged: the bar inside it ruins the small slices.
        let mut fixed = Oracle { h, w, calls: Vec::new() };
        let z = 15;
        let m = fixed.segment(z, &Prompt::bbox(key_box)).unwrap();
        assert!(dice(&m.mask, &truth(z, h, w)) < 0.5);
        // One encoder + decoder run per slice: each slice segmented once, plus the two misses.
        assert_eq!(oracle.calls.len(), 13 + 2);
    }

    #[test]
    fn clicks_follow_and_two_keys_split_the_gap() {
        let (h, w) = (40, 40);
        let mut keys = BTreeMap::new();
        keys.insert(8, Prompt::points(vec![Point::foreground(20.0, 20.0)]));
        keys.insert(13, Prompt::points(vec![Point::foreground(20.0, 20.0)]));
        let opts = PropagateOptions {
            follow: Follow::Click,
            min_area_mm2: 1.0,
            max_growth: 3.0,
            max_key_growth: 3.0,
            ..Default::default()
        };
        let p =
            propagate(&mut Oracle { h, w, calls: Vec::new() }, 20, (h, w), [1.0, 1.0], &keys, &opts).unwrap();
        assert_eq!(p.masks.keys().copied().collect::<Vec<_>>(), (4..=16).collect::<Vec<_>>());
        let rule = |z: usize| p.slices.iter().find(|s| s.slice == z).unwrap().rule;
        assert_eq!(rule(10), Rule::Propagated { key: 8, from: 9 });
        assert_eq!(rule(11), Rule::Propagated { key: 13, from: 12 });
        assert!(p.ends.iter().filter(|e| e.stop == Stop::Met).count() == 2, "{:?}", p.ends);
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        let (h, w) = (40, 40);
        let o = &mut Oracle { h, w, calls: Vec::new() };
        let opts = PropagateOptions::default();
        let mut keys = BTreeMap::new();
        keys.insert(25, Prompt::bbox(BoxPrompt { x0: 10.0, y0: 10.0, x1: 30.0, y1: 30.0 }));
        assert!(matches!(
            propagate(o, 20, (h, w), [1.0, 1.0], &keys, &opts),
            Err(Error::NoSuchSlice { slice: 25, .. })
        ));
        let mut empty = BTreeMap::new();
        empty.insert(1, Prompt::bbox(BoxPrompt { x0: 0.0, y0: 0.0, x1: 5.0, y1: 5.0 }));
        let e = propagate(o, 20, (h, w), [1.0, 1.0], &empty, &opts).unwrap_err();
        assert!(matches!(e, Error::Prompt(_)) && e.to_string().contains("empty mask"), "{e}");
        let mut outside = BTreeMap::new();
        outside.insert(10, Prompt::bbox(BoxPrompt { x0: 10.0, y0: 10.0, x1: 90.0, y1: 30.0 }));
        assert!(matches!(propagate(o, 20, (h, w), [1.0, 1.0], &outside, &opts), Err(Error::Prompt(_))));
        assert!(propagate(o, 20, (h, w), [1.0, 1.0], &BTreeMap::new(), &opts).is_err());
    }

    #[test]
    fn boxes_shrink_slowly_and_leaks_stop_the_chain() {
        let (h, w) = (40, 40);
        let mut tiny = vec![false; h * w];
        tiny[20 * w + 20] = true;
        let prev = BoxPrompt { x0: 10.0, y0: 10.0, x1: 30.0, y1: 30.0 };
        let opts = PropagateOptions { margin_mm: 1.0, max_shrink_mm: 2.0, ..Default::default() };
        let b = follow_prompt(&tiny, Some(prev), (h, w), [1.0, 1.0], &opts).unwrap().bbox.unwrap();
        assert_eq!((b.x0, b.y0, b.x1, b.y1), (12.0, 12.0, 28.0, 28.0), "each side moves in by 2 mm at most");
        let b = follow_prompt(&tiny, None, (h, w), [0.5, 0.5], &opts).unwrap().bbox.unwrap();
        assert_eq!((b.x0, b.x1), (18.0, 22.0), "1 mm margin at 0.5 mm pixels is 2 px");

        // A segmenter whose mask floods the slice three slices above the key.
        struct Leaky;
        impl SliceSegmenter for Leaky {
            fn segment(&mut self, z: usize, _: &Prompt) -> Result<SliceMask> {
                let n = if z >= 13 { 1600 } else { 100 };
                Ok(SliceMask { mask: (0..1600).map(|i| i < n).collect(), low_res: None })
            }
        }
        let mut keys = BTreeMap::new();
        keys.insert(10, Prompt::bbox(BoxPrompt { x0: 0.0, y0: 0.0, x1: 39.0, y1: 2.0 }));
        let no_retry = PropagateOptions { retry: false, ..Default::default() };
        let p = propagate(&mut Leaky, 20, (h, w), [1.0, 1.0], &keys, &no_retry).unwrap();
        let up = p.ends.iter().find(|e| e.direction > 0).unwrap();
        assert_eq!((up.last, up.stop), (12, Stop::Jump(16.0)));
        assert!(!p.masks.contains_key(&13), "nothing written where the chain stopped");
        let lenient = PropagateOptions { max_growth: 100.0, ..no_retry };
        let p = propagate(&mut Leaky, 20, (h, w), [1.0, 1.0], &keys, &lenient).unwrap();
        assert_eq!(p.ends.iter().find(|e| e.direction > 0).unwrap().stop, Stop::Leak(16.0));
    }

    #[test]
    fn a_slice_range_bounds_the_chains() {
        let (h, w) = (40, 40);
        let keys = BTreeMap::from([(10, Prompt::bbox(BoxPrompt { x0: 10.0, y0: 11.0, x1: 30.0, y1: 29.0 }))]);
        let opts = PropagateOptions {
            margin_mm: 1.0,
            min_area_mm2: 1.0,
            extent: Some((7, 14)),
            ..Default::default()
        };
        let o = &mut Oracle { h, w, calls: Vec::new() };
        let p = propagate(o, 20, (h, w), [1.0, 1.0], &keys, &opts).unwrap();
        assert_eq!(p.masks.keys().copied().collect::<Vec<_>>(), (7..=14).collect::<Vec<_>>());
        assert!(p.ends.iter().all(|e| e.stop == Stop::Range), "{:?}", p.ends);
        assert!(o.calls.iter().all(|z| (7..=14).contains(z)), "no slice outside the range is segmented");
        let outside = PropagateOptions { extent: Some((11, 14)), ..opts };
        let e = propagate(o, 20, (h, w), [1.0, 1.0], &keys, &outside).unwrap_err();
        assert!(matches!(e, Error::Prompt(_)) && e.to_string().contains("outside"), "{e}");
    }

    #[test]
    fn boxes_grow_slowly_when_asked() {
        let (h, w) = (40, 40);
        let full = vec![true; h * w];
        let prev = BoxPrompt { x0: 10.0, y0: 10.0, x1: 30.0, y1: 30.0 };
        let b = follow_prompt(&full, Some(prev), (h, w), [1.0, 1.0], &PropagateOptions::default())
            .unwrap()
            .bbox
            .unwrap();
        assert_eq!((b.x0, b.y0, b.x1, b.y1), (9.0, 9.0, 31.0, 31.0), "each side moves out by 1 mm at most");
        let opts = PropagateOptions { max_grow_mm: f64::INFINITY, ..Default::default() };
        let b = follow_prompt(&full, Some(prev), (h, w), [1.0, 1.0], &opts).unwrap().bbox.unwrap();
        assert_eq!((b.x0, b.y0, b.x1, b.y1), (0.0, 0.0, 39.0, 39.0), "unbounded growth");
    }

    #[test]
    fn a_leak_is_retried_with_the_previous_box() {
        // Every slice from 13 on floods the slice, whatever the prompt.
        struct Flood;
        impl SliceSegmenter for Flood {
            fn segment(&mut self, z: usize, _: &Prompt) -> Result<SliceMask> {
                let n = if z >= 13 { 1600 } else { 100 };
                Ok(SliceMask { mask: (0..1600).map(|i| i < n).collect(), low_res: None })
            }
        }
        let (h, w) = (40, 40);
        let keys = BTreeMap::from([(10, Prompt::bbox(BoxPrompt { x0: 0.0, y0: 0.0, x1: 39.0, y1: 2.0 }))]);
        let retry = PropagateOptions { extent: Some((0, 13)), ..Default::default() };
        let p = propagate(&mut Flood, 20, (h, w), [1.0, 1.0], &keys, &retry).unwrap();
        let r13 = p.slices.iter().find(|s| s.slice == 13).expect("slice 13 written after the retry");
        let b12 = p.slices.iter().find(|s| s.slice == 12).unwrap().bbox.unwrap();
        assert_eq!(r13.bbox, Some(b12), "the retry prompts with the previous slice's box");
        let inside = |i: usize| (i % w) as f32 <= b12.x1 && (i / w) as f32 <= b12.y1;
        assert!(p.masks[&13].iter().enumerate().all(|(i, &v)| !v || inside(i)), "cut to that box");
        let plain = PropagateOptions { retry: false, ..retry };
        let p = propagate(&mut Flood, 20, (h, w), [1.0, 1.0], &keys, &plain).unwrap();
        assert!(!p.masks.contains_key(&13) && p.ends.iter().any(|e| matches!(e.stop, Stop::Jump(_))));
    }

    #[test]
    fn the_candidate_closest_to_the_previous_mask_is_kept() {
        // The model's first mask is a blob off the organ on every slice but the key; its second
        // candidate is the organ.
        struct TwoMinds(Oracle);
        impl SliceSegmenter for TwoMinds {
            fn segment(&mut self, z: usize, p: &Prompt) -> Result<SliceMask> {
                if z == 10 {
                    return self.0.segment(z, p);
                }
                Ok(SliceMask { mask: (0..1600).map(|i| i < 120).collect(), low_res: None })
            }
            fn candidates(&mut self, z: usize, p: &Prompt) -> Result<Vec<SliceMask>> {
                let (h, w) = (self.0.h, self.0.w);
                let organ = SliceMask { mask: truth(z, h, w), low_res: None };
                Ok(vec![self.segment(z, p)?, organ])
            }
        }
        let (h, w) = (40, 40);
        let keys = BTreeMap::from([(10, Prompt::bbox(BoxPrompt { x0: 10.0, y0: 11.0, x1: 30.0, y1: 29.0 }))]);
        let base = PropagateOptions { margin_mm: 1.0, min_area_mm2: 1.0, ..Default::default() };
        let opts = base;
        let base = PropagateOptions { consistent: false, ..base };
        let p = propagate(
            &mut TwoMinds(Oracle { h, w, calls: Vec::new() }),
            20,
            (h, w),
            [1.0, 1.0],
            &keys,
            &opts,
        )
        .unwrap();
        for z in 5..=15 {
            assert!(dice(&p.masks[&z], &truth(z, h, w)) > 0.95, "slice {z} follows the organ");
        }
        let p = propagate(
            &mut TwoMinds(Oracle { h, w, calls: Vec::new() }),
            20,
            (h, w),
            [1.0, 1.0],
            &keys,
            &base,
        )
        .unwrap();
        assert!(p.masks.get(&11).map_or(true, |m| dice(m, &truth(11, h, w)) < 0.1), "the first mask is off");
    }
}
