//! Prompt simulation: points inside the mask, boxes at the requested IoU, reproducibility,
//! the iterative protocol's next click.

#![allow(clippy::unwrap_used)]

use medsa_eval::prompts::{
    bbox_with_iou, case_rng, jittered_box, next_click, random_points, simulate, tight_box, BBOX_IOU_TOLERANCE,
};
use medsa_eval::{BoxPrompt, Mask, Point, PromptKind};
use proptest::prelude::*;

fn rect(h: usize, w: usize, r0: usize, r1: usize, c0: usize, c1: usize) -> Mask {
    Mask::from_fn(&[h, w], |i| (r0..r1).contains(&i[0]) && (c0..c1).contains(&i[1])).expect("mask")
}

fn at(m: &Mask, p: &Point) -> Option<bool> {
    m.get(&[p.y as usize, p.x as usize])
}

/// A random blob: union of a few rectangles in an h x w image.
fn blob_strategy() -> impl Strategy<Value = Mask> {
    (8usize..80, 8usize..80).prop_flat_map(|(h, w)| {
        prop::collection::vec((0..h, 0..w, 1usize..20, 1usize..20), 1..4).prop_map(move |rects| {
            Mask::from_fn(&[h, w], |i| {
                rects.iter().any(|&(r, c, dh, dw)| i[0] >= r && i[0] < r + dh && i[1] >= c && i[1] < c + dw)
            })
            .expect("mask")
        })
    })
}

/// Two random blobs on one image size.
fn blob_pair_strategy() -> impl Strategy<Value = (Mask, Mask)> {
    (8usize..60, 8usize..60).prop_flat_map(|(h, w)| {
        let rects = move || {
            prop::collection::vec((0..h, 0..w, 1usize..20, 1usize..20), 0..4).prop_map(move |rects| {
                Mask::from_fn(&[h, w], |i| {
                    rects
                        .iter()
                        .any(|&(r, c, dh, dw)| i[0] >= r && i[0] < r + dh && i[1] >= c && i[1] < c + dw)
                })
                .expect("mask")
            })
        };
        (rects(), rects())
    })
}

#[test]
fn xy_order_on_a_single_pixel() {
    // Foreground at row 2, column 5: the point is x = 5, y = 2.
    let gt = Mask::from_fn(&[4, 9], |i| i == [2, 5]).expect("mask");
    let p = random_points(&gt, 1, &mut case_rng(0, 0)).expect("points");
    assert_eq!(p, vec![Point::positive(5.0, 2.0)]);
    assert_eq!(tight_box(&gt).expect("box"), BoxPrompt { x0: 5.0, y0: 2.0, x1: 5.0, y1: 2.0 });
    // Fewer pixels than points: repeats.
    let p3 = random_points(&gt, 3, &mut case_rng(0, 0)).expect("points");
    assert_eq!(p3.len(), 3);
    assert!(p3.iter().all(|q| *q == Point::positive(5.0, 2.0)));
}

#[test]
fn tight_box_of_a_rectangle() {
    let gt = rect(30, 40, 5, 12, 7, 30);
    let b = tight_box(&gt).expect("box");
    assert_eq!(b, BoxPrompt { x0: 7.0, y0: 5.0, x1: 29.0, y1: 11.0 });
    assert_eq!((b.width(), b.height()), (23.0, 7.0));
}

#[test]
fn same_seed_same_prompts_other_seed_other_prompts() {
    let gt = rect(64, 64, 10, 50, 5, 40);
    let kinds = ["1pt", "3pt", "bbox0.5", "bbox0.75", "jitterbox", "iterative:5"];
    for k in kinds {
        let kind: PromptKind = k.parse().expect("kind");
        let a = simulate(kind, &gt, &mut case_rng(7, 3)).expect("prompt");
        let b = simulate(kind, &gt, &mut case_rng(7, 3)).expect("prompt");
        assert_eq!(a, b, "{k}");
        let c = simulate(kind, &gt, &mut case_rng(8, 3)).expect("prompt");
        let d = simulate(kind, &gt, &mut case_rng(7, 4)).expect("prompt");
        assert!(a != c && a != d, "{k}: different seed or case gave the same prompt");
    }
}

#[test]
fn fixed_seed_golden_values() {
    // Pins the random stream: a change of rand / rand_chacha / the algorithm shows up here.
    let gt = rect(64, 64, 10, 50, 5, 40);
    let p = random_points(&gt, 3, &mut case_rng(42, 0)).expect("points");
    let again = random_points(&gt, 3, &mut case_rng(42, 0)).expect("points");
    assert_eq!(p, again);
    let golden: Vec<(f32, f32)> = p.iter().map(|q| (q.x, q.y)).collect();
    assert_eq!(golden, GOLDEN_3PT.to_vec());
}

const GOLDEN_3PT: [(f32, f32); 3] = [(38.0, 18.0), (14.0, 37.0), (36.0, 15.0)];

#[test]
fn boxes_at_image_border_and_tiny_objects() {
    let mut rng = case_rng(1, 1);
    for gt in [
        rect(64, 64, 0, 20, 0, 20),   // corner
        rect(64, 64, 30, 31, 30, 31), // one pixel
        rect(64, 64, 0, 64, 20, 40),  // full height
        rect(16, 16, 2, 3, 0, 16),    // one-pixel line across
    ] {
        let tight = tight_box(&gt).expect("box");
        for tau in [0.5, 0.75] {
            for _ in 0..50 {
                let b = bbox_with_iou(&gt, tau, &mut rng).expect("box");
                assert!((b.iou(&tight) - tau).abs() < BBOX_IOU_TOLERANCE, "tau {tau} iou {}", b.iou(&tight));
                assert!(b.x0 >= 0.0 && b.y0 >= 0.0 && b.x1 <= 63.0 && b.y1 <= 63.0);
            }
        }
    }
    // Too small an image: the whole image, IoU above tau.
    let gt = rect(4, 4, 0, 4, 0, 3);
    let b = bbox_with_iou(&gt, 0.5, &mut rng).expect("box");
    assert!(b.iou(&tight_box(&gt).expect("box")) >= 0.5);
}

#[test]
fn jittered_box_statistics() {
    let gt = rect(256, 256, 50, 150, 60, 100); // 40 wide, 100 high
    let t = tight_box(&gt).expect("box");
    let mut rng = case_rng(3, 0);
    let n = 4000;
    let (mut sx, mut sxx, mut sy, mut syy) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..n {
        let b = jittered_box(&gt, &mut rng).expect("box");
        assert!(b.x0 <= b.x1 && b.y0 <= b.y1 && b.x0 >= 0.0 && b.y1 <= 255.0);
        let (dx, dy) = (b.x0 as f64 - t.x0 as f64, b.y0 as f64 - t.y0 as f64);
        sx += dx;
        sxx += dx * dx;
        sy += dy;
        syy += dy * dy;
    }
    let nf = n as f64;
    let (mx, my) = (sx / nf, sy / nf);
    let (stdx, stdy) = ((sxx / nf - mx * mx).sqrt(), (syy / nf - my * my).sqrt());
    // std 10 % of the side: 4 px in x, 10 px in y.
    assert!(mx.abs() < 0.3 && my.abs() < 0.6, "means {mx} {my}");
    assert!((stdx - 4.0).abs() < 0.3 && (stdy - 10.0).abs() < 0.6, "stds {stdx} {stdy}");
    // The std is capped at 20 px for big boxes.
    let big = rect(460, 460, 100, 360, 100, 360); // side 260: 10 % = 26 px, capped at 20
    let (mut s2, m) = (0.0, 2000);
    for _ in 0..m {
        let b = jittered_box(&big, &mut rng).expect("box");
        s2 += (b.x0 as f64 - 100.0).powi(2);
    }
    let std = (s2 / m as f64).sqrt();
    assert!((std - 20.0).abs() < 1.5, "capped std {std}");
}

#[test]
fn next_click_missed_region_is_positive_at_its_centre() {
    let gt = rect(32, 32, 4, 13, 10, 19); // 9x9, centre (row 8, col 14)
    let pred = Mask::zeros(&[32, 32]).expect("mask");
    assert_eq!(next_click(&gt, &pred).expect("click"), Some(Point::positive(14.0, 8.0)));
    assert_eq!(next_click(&gt, &gt).expect("click"), None);
}

#[test]
fn next_click_false_region_is_negative() {
    let gt = rect(32, 32, 4, 13, 10, 19);
    // Prediction: GT minus a 2x2 corner (small FN) plus a 5x7 blob elsewhere (larger FP).
    let fp = rect(32, 32, 20, 25, 2, 9);
    let pred = gt.and_not(&rect(32, 32, 4, 6, 10, 12)).expect("and").or(&fp).expect("or");
    let c = next_click(&gt, &pred).expect("click").expect("some");
    assert_eq!(c.label, Point::NEGATIVE);
    // Columns 4, 5 and 6 of row 22 are all 3 px from the outside; ties go to the first pixel.
    assert_eq!((c.x, c.y), (4.0, 22.0));
    assert_eq!(at(&fp, &c), Some(true));
}

#[test]
fn next_click_on_the_border_stays_inside() {
    // Missed region touching the image border: the outside counts as outside the region,
    // so the click is not put on the border row.
    let gt = rect(20, 20, 0, 5, 0, 20);
    let pred = Mask::zeros(&[20, 20]).expect("mask");
    let c = next_click(&gt, &pred).expect("click").expect("some");
    assert_eq!(c.y, 2.0);
    assert!(c.is_positive());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn points_lie_inside_the_mask(gt in blob_strategy(), seed in any::<u64>(), n in 1usize..6) {
        let pts = random_points(&gt, n, &mut case_rng(seed, 0)).expect("points");
        prop_assert_eq!(pts.len(), n);
        for p in &pts {
            prop_assert!(p.is_positive());
            prop_assert_eq!(p.x.fract(), 0.0);
            prop_assert_eq!(at(&gt, p), Some(true));
        }
        if gt.count() >= n {
            for i in 0..n {
                for j in i + 1..n {
                    prop_assert!(pts[i] != pts[j], "duplicate point");
                }
            }
        }
    }

    #[test]
    fn boxes_reach_the_requested_iou(gt in blob_strategy(), seed in any::<u64>(), tau in prop::sample::select(vec![0.5, 0.75])) {
        let tight = tight_box(&gt).expect("box");
        let (h, w) = (gt.height().expect("2d") as f64, gt.width().expect("2d") as f64);
        // Only images that can hold a box of area tight/tau (else the whole image is returned).
        prop_assume!(tight.area() / tau <= h * w);
        let b = bbox_with_iou(&gt, tau, &mut case_rng(seed, 1)).expect("box");
        prop_assert!((b.iou(&tight) - tau).abs() < BBOX_IOU_TOLERANCE, "iou {} tau {}", b.iou(&tight), tau);
        prop_assert!(b.x0 >= 0.0 && b.y0 >= 0.0 && (b.x1 as f64) <= w - 1.0 + 1e-4 && (b.y1 as f64) <= h - 1.0 + 1e-4);
    }

    #[test]
    fn next_click_lies_in_an_error_region((gt, pr) in blob_pair_strategy()) {
        match next_click(&gt, &pr).expect("click") {
            None => prop_assert_eq!(&gt, &pr),
            Some(c) => {
                let (g, p) = (at(&gt, &c), at(&pr, &c));
                if c.is_positive() {
                    prop_assert_eq!((g, p), (Some(true), Some(false)));
                } else {
                    prop_assert_eq!((g, p), (Some(false), Some(true)));
                }
            }
        }
    }
}
