//! Tests of the propagation rule with stand-in segmenters: a shrinking ellipsoid beside a bright
//! bar, floods, two-candidate models.

#![allow(clippy::unwrap_used)]

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
    let p = propagate(&mut Oracle { h, w, calls: Vec::new() }, 20, (h, w), [1.0, 1.0], &keys, &opts).unwrap();
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
    let b = follow_prompt(&tiny, Some(prev), None, (h, w), [1.0, 1.0], &opts).unwrap().bbox.unwrap();
    assert_eq!((b.x0, b.y0, b.x1, b.y1), (12.0, 12.0, 28.0, 28.0), "each side moves in by 2 mm at most");
    let b = follow_prompt(&tiny, None, None, (h, w), [0.5, 0.5], &opts).unwrap().bbox.unwrap();
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
    let opts =
        PropagateOptions { margin_mm: 1.0, min_area_mm2: 1.0, extent: Some((7, 14)), ..Default::default() };
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
    let b = follow_prompt(&full, Some(prev), None, (h, w), [1.0, 1.0], &PropagateOptions::default())
        .unwrap()
        .bbox
        .unwrap();
    assert_eq!((b.x0, b.y0, b.x1, b.y1), (9.0, 9.0, 31.0, 31.0), "each side moves out by 1 mm at most");
    let opts = PropagateOptions { max_grow_mm: f64::INFINITY, ..Default::default() };
    let b = follow_prompt(&full, Some(prev), None, (h, w), [1.0, 1.0], &opts).unwrap().bbox.unwrap();
    assert_eq!((b.x0, b.y0, b.x1, b.y1), (0.0, 0.0, 39.0, 39.0), "unbounded growth");
    let key = BoxPrompt { x0: 12.0, y0: 5.0, x1: 25.0, y1: 33.0 };
    let inside = PropagateOptions { within_key: true, ..opts };
    let b = follow_prompt(&full, Some(prev), Some(key), (h, w), [1.0, 1.0], &inside).unwrap().bbox.unwrap();
    assert_eq!(
        (b.x0, b.y0, b.x1, b.y1),
        (10.0, 3.0, 27.0, 35.0),
        "the key box plus the 2 mm margin bounds it"
    );
    let mut corner = vec![false; h * w];
    corner[39 * w + 39] = true;
    let b = follow_prompt(&corner, None, Some(key), (h, w), [1.0, 1.0], &inside).unwrap().bbox.unwrap();
    assert!(
        b.x0 <= b.x1 && b.y0 <= b.y1 && b.x1 <= 27.0 && b.y1 <= 35.0,
        "a mask outside the key box: {b:?}"
    );
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
    let opts = PropagateOptions { margin_mm: 1.0, min_area_mm2: 1.0, ..Default::default() };
    let run = |opts: &PropagateOptions| {
        propagate(&mut TwoMinds(Oracle { h, w, calls: Vec::new() }), 20, (h, w), [1.0, 1.0], &keys, opts)
            .unwrap()
    };
    let p = run(&opts);
    for z in 5..=15 {
        assert!(dice(&p.masks[&z], &truth(z, h, w)) > 0.95, "slice {z} follows the organ");
    }
    let p = run(&PropagateOptions { consistent: false, ..opts });
    assert!(p.masks.get(&11).map_or(true, |m| dice(m, &truth(11, h, w)) < 0.1), "the first mask is off");
}

/// What [`KeyBoxModel`] gives for the key box (at the key slice: the organ) and for every
/// other box.
#[derive(Clone, Copy)]
enum KeyBoxCase {
    /// Key box: the organ; other boxes: the organ's left half (a chain that drifted).
    Half,
    /// Key box: the key slice's organ plus a line, which does not shrink with the organ; other
    /// boxes: the organ.
    Large,
    /// Key box: the organ; other boxes: the organ plus a stray pixel that moves from slice to
    /// slice (so the key box's mask agrees better, but is smaller).
    Stray,
}

struct KeyBoxModel {
    key_box: BoxPrompt,
    case: KeyBoxCase,
}

impl SliceSegmenter for KeyBoxModel {
    fn segment(&mut self, z: usize, p: &Prompt) -> Result<SliceMask> {
        let organ = truth(z, 40, 40);
        let mask = match (p.bbox == Some(self.key_box) && z != 10, self.case) {
            (true, KeyBoxCase::Large) => {
                (0..1600).map(|i| ellipse(10, i / 40, i % 40) || (i / 40 == 20 && i % 40 > 4)).collect()
            }
            (true, _) => organ,
            (false, KeyBoxCase::Half) if z != 10 => {
                organ.iter().enumerate().map(|(i, &v)| v && i % 40 < 20).collect()
            }
            (false, KeyBoxCase::Stray) => organ.iter().enumerate().map(|(i, &v)| v || i == z).collect(),
            (false, _) => organ,
        };
        Ok(SliceMask { mask, low_res: None })
    }
}

#[test]
fn the_key_box_brings_a_drifted_chain_back() {
    // Looser than the key slice's mask box plus the margin, so no chain box equals it.
    let key_box = BoxPrompt { x0: 8.0, y0: 9.0, x1: 32.0, y1: 31.0 };
    let keys = BTreeMap::from([(10, Prompt::bbox(key_box))]);
    let opts = PropagateOptions { margin_mm: 1.0, min_area_mm2: 1.0, ..Default::default() };
    let run = |case: KeyBoxCase, key_candidates: bool| {
        let o = PropagateOptions { key_candidates, ..opts };
        propagate(&mut KeyBoxModel { key_box, case }, 20, (40, 40), [1.0, 1.0], &keys, &o).unwrap()
    };
    let drifted = run(KeyBoxCase::Half, false);
    assert!(dice(&drifted.masks[&12], &truth(12, 40, 40)) < 0.8, "the chain keeps half the organ");
    let back = run(KeyBoxCase::Half, true);
    assert_eq!(back.masks.keys().copied().collect::<Vec<_>>(), (4..=16).collect::<Vec<_>>());
    for (&z, m) in &back.masks {
        assert!(dice(m, &truth(z, 40, 40)) > 0.99, "slice {z}: the key box's whole organ is kept");
    }
    for s in back.slices.iter().filter(|s| s.slice != 10) {
        assert_eq!(
            (s.rule, s.bbox),
            (Rule::KeyBox { key: 10 }, Some(key_box)),
            "the record names the key box"
        );
    }
    // The key box only gives back area the chain lost: a mask larger than the previous slice's
    // (the fixed box staying large where the organ shrinks) or smaller than the chain's is
    // refused, however well it overlaps the previous mask.
    for case in [KeyBoxCase::Large, KeyBoxCase::Stray] {
        let p = run(case, true);
        assert!(p.slices.iter().all(|s| !matches!(s.rule, Rule::KeyBox { .. })), "{:?}", p.slices);
        for (&z, m) in &p.masks {
            let stray = matches!(case, KeyBoxCase::Stray);
            let chain: Vec<bool> =
                truth(z, 40, 40).iter().enumerate().map(|(i, &v)| v || (stray && i == z)).collect();
            assert_eq!(m, &chain, "slice {z}: the chain's own mask");
        }
    }
}
