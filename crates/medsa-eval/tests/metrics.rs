//! Metrics against hand-computed cases and against a plain brute-force definition.

#![allow(clippy::unwrap_used)]

use medsa_eval::metrics::{assd, dice, evaluate, hausdorff_percentile, hd95, iou, surface_distances};
use medsa_eval::{edt, Mask};
use proptest::prelude::*;

fn rect(shape: &[usize], r0: usize, r1: usize, c0: usize, c1: usize) -> Mask {
    Mask::from_fn(shape, |i| (r0..r1).contains(&i[0]) && (c0..c1).contains(&i[1])).expect("mask")
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn shifted_squares_isotropic() {
    // GT cols 10..20, prediction cols 12..22, rows 10..20 both (see the derivation in the
    // report: 16 surface distances of 0, 4 of 1 and 16 of 2 in each direction).
    let gt = rect(&[40, 40], 10, 20, 10, 20);
    let pred = rect(&[40, 40], 10, 20, 12, 22);
    assert!(close(dice(&pred, &gt).expect("dice"), 0.8, 1e-12));
    assert!(close(iou(&pred, &gt).expect("iou"), 2.0 / 3.0, 1e-12));
    let mut d = surface_distances(&pred, &gt, &[1.0, 1.0]).expect("sd");
    d.sort_by(f64::total_cmp);
    assert_eq!(d.len(), 36);
    assert_eq!(d.iter().filter(|&&v| v == 0.0).count(), 16);
    assert_eq!(d.iter().filter(|&&v| v == 1.0).count(), 4);
    assert_eq!(d.iter().filter(|&&v| v == 2.0).count(), 16);
    assert_eq!(hd95(&pred, &gt, &[1.0, 1.0]).expect("hd95"), Some(2.0));
    // ASSD = (0*16 + 1*4 + 2*16) / 36 in both directions.
    let a = assd(&pred, &gt, &[1.0, 1.0]).expect("assd").expect("defined");
    assert!(close(a, 36.0 / 36.0, 1e-12));
    // Classic Hausdorff (q = 100) is 2 as well.
    assert_eq!(hausdorff_percentile(&pred, &gt, &[1.0, 1.0], 100.0).expect("hd"), Some(2.0));
}

#[test]
fn shifted_squares_anisotropic() {
    // Same masks, columns 3 mm apart, rows 1 mm. Distances pred->GT: top/bottom rows
    // 16 x 0, 2 x 3, 2 x 6; left column rows 11..18: 1,2,3,4,4,3,2,1; right column 8 x 6.
    let gt = rect(&[40, 40], 10, 20, 10, 20);
    let pred = rect(&[40, 40], 10, 20, 12, 22);
    let sp = [1.0, 3.0];
    let m = evaluate(&pred, &gt, &sp).expect("evaluate");
    assert_eq!(m.hd95, Some(6.0));
    let expected_assd = (2.0 * 1.0 + 2.0 * 2.0 + 4.0 * 3.0 + 2.0 * 4.0 + 10.0 * 6.0) / 36.0;
    assert!(close(m.assd.expect("defined"), expected_assd, 1e-12));
    // Rows 3 mm apart instead: the shift is along columns, so the HD95 is 2 mm again.
    assert_eq!(hd95(&pred, &gt, &[3.0, 1.0]).expect("hd95"), Some(2.0));
}

#[test]
fn discs_radius_10_and_12() {
    let disc = |r: f64| {
        Mask::from_fn(&[64, 64], |i| {
            let (y, x) = (i[0] as f64 - 32.0, i[1] as f64 - 32.0);
            x * x + y * y <= r * r
        })
        .expect("disc")
    };
    let (gt, pred) = (disc(10.0), disc(12.0));
    let m = evaluate(&pred, &gt, &[1.0, 1.0]).expect("evaluate");
    let (ng, np) = (gt.count() as f64, pred.count() as f64);
    assert!(close(m.dice, 2.0 * ng / (ng + np), 1e-12));
    assert!(close(m.iou, ng / np, 1e-12));
    let h = m.hd95.expect("defined");
    assert!((1.5..=2.5).contains(&h), "hd95 {h}");
    // With 0.5 mm pixels every distance halves.
    let h2 = hd95(&pred, &gt, &[0.5, 0.5]).expect("hd95").expect("defined");
    assert!(close(h2, h / 2.0, 1e-12));
}

#[test]
fn identical_masks() {
    let gt = rect(&[20, 30], 3, 9, 4, 25);
    let m = evaluate(&gt, &gt, &[0.7, 1.3]).expect("evaluate");
    assert_eq!((m.dice, m.iou, m.hd95, m.assd), (1.0, 1.0, Some(0.0), Some(0.0)));
}

#[test]
fn empty_mask_policy() {
    let empty = Mask::zeros(&[16, 16]).expect("mask");
    let gt = rect(&[16, 16], 2, 6, 2, 6);
    // Both empty: perfect.
    let m = evaluate(&empty, &empty, &[1.0, 1.0]).expect("evaluate");
    assert_eq!((m.dice, m.iou, m.hd95, m.assd), (1.0, 1.0, Some(0.0), Some(0.0)));
    // Exactly one empty: Dice = IoU = 0, HD95 / ASSD undefined, either way round.
    for (p, g) in [(&empty, &gt), (&gt, &empty)] {
        let m = evaluate(p, g, &[1.0, 1.0]).expect("evaluate");
        assert_eq!((m.dice, m.iou, m.hd95, m.assd), (0.0, 0.0, None, None));
        assert_eq!(hd95(p, g, &[1.0, 1.0]).expect("hd95"), None);
    }
    assert_eq!(hd95(&empty, &empty, &[1.0, 1.0]).expect("hd95"), Some(0.0));
}

#[test]
fn border_touching_masks() {
    // A mask filling the image: its surface is the image border (outside = background).
    let full = Mask::from_fn(&[10, 10], |_| true).expect("mask");
    let inner = rect(&[10, 10], 1, 9, 1, 9);
    // full's surface is the outer ring; inner's surface is the ring one pixel in: every
    // distance is 1 except the four corners of the outer ring (sqrt 2).
    let d = surface_distances(&full, &inner, &[1.0, 1.0]).expect("sd");
    assert_eq!(d.len(), 36);
    assert_eq!(d.iter().filter(|&&v| close(v, 2f64.sqrt(), 1e-12)).count(), 4);
    let m = evaluate(&inner, &full, &[1.0, 1.0]).expect("evaluate");
    assert_eq!(m.hd95, Some(2f64.sqrt()));
}

#[test]
fn volumes_with_anisotropic_voxels() {
    // Two single voxels two slices apart, 2.5 mm slices: HD95 = 5 mm.
    let a = Mask::from_fn(&[4, 3, 3], |i| i == [0, 1, 1]).expect("mask");
    let b = Mask::from_fn(&[4, 3, 3], |i| i == [2, 1, 1]).expect("mask");
    assert_eq!(hd95(&a, &b, &[2.5, 1.0, 1.0]).expect("hd95"), Some(5.0));
    assert_eq!(dice(&a, &b).expect("dice"), 0.0);
    // A 3x3x3 cube vs a 5x5x5 cube around the same centre, 2 mm slices, 1 mm in-plane:
    // every outer-surface voxel is 1 mm in-plane or 2 mm across slices from the inner one.
    let cube =
        |r: usize| Mask::from_fn(&[9, 9, 9], |i| i.iter().all(|&c| c + r >= 4 && c <= 4 + r)).expect("cube");
    let m = evaluate(&cube(2), &cube(1), &[2.0, 1.0, 1.0]).expect("evaluate");
    assert!(close(m.dice, 2.0 * 27.0 / (27.0 + 125.0), 1e-12));
    let h = m.hd95.expect("defined");
    assert!(h > 1.0 && h <= 3.0f64.sqrt() * 2.0, "hd95 {h}");
}

// ---------------------------------------------------------------------------------------------
// Brute force

fn neighbours_all_fg(m: &Mask, idx: &[usize]) -> bool {
    for k in 0..idx.len() {
        for delta in [-1i64, 1] {
            let c = idx[k] as i64 + delta;
            if c < 0 || c >= m.shape()[k] as i64 {
                return false;
            }
            let mut j = idx.to_vec();
            j[k] = c as usize;
            if m.get(&j) != Some(true) {
                return false;
            }
        }
    }
    true
}

fn brute_surface(m: &Mask) -> Vec<Vec<usize>> {
    (0..m.numel())
        .map(|f| m.unravel(f))
        .filter(|i| m.get(i) == Some(true) && !neighbours_all_fg(m, i))
        .collect()
}

fn brute_directed(a: &[Vec<usize>], b: &[Vec<usize>], sp: &[f64]) -> Vec<f64> {
    a.iter()
        .map(|p| {
            b.iter()
                .map(|q| {
                    p.iter()
                        .zip(q)
                        .zip(sp)
                        .map(|((&x, &y), &s)| ((x as f64 - y as f64) * s).powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .fold(f64::INFINITY, f64::min)
        })
        .collect()
}

fn brute_percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = (v.len() - 1) as f64 * q / 100.0;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

fn brute_hd95(p: &Mask, g: &Mask, sp: &[f64]) -> Option<f64> {
    let (sp_, sg) = (brute_surface(p), brute_surface(g));
    match (sp_.is_empty(), sg.is_empty()) {
        (true, true) => Some(0.0),
        (false, false) => Some(
            brute_percentile(&brute_directed(&sp_, &sg, sp), 95.0)
                .max(brute_percentile(&brute_directed(&sg, &sp_, sp), 95.0)),
        ),
        _ => None,
    }
}

fn mask_strategy() -> impl Strategy<Value = (Vec<usize>, Vec<bool>, Vec<bool>, Vec<f64>)> {
    prop_oneof![
        (1usize..14, 1usize..14).prop_map(|(h, w)| vec![h, w]),
        (1usize..5, 1usize..7, 1usize..7).prop_map(|(d, h, w)| vec![d, h, w]),
    ]
    .prop_flat_map(|shape| {
        let n: usize = shape.iter().product();
        let r = shape.len();
        (
            Just(shape),
            prop::collection::vec(prop::bool::weighted(0.4), n),
            prop::collection::vec(prop::bool::weighted(0.4), n),
            prop::collection::vec(0.2f64..4.0, r),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn metrics_match_brute_force((shape, a, b, sp) in mask_strategy()) {
        let p = Mask::new(&shape, a).expect("mask");
        let g = Mask::new(&shape, b).expect("mask");
        let m = evaluate(&p, &g, &sp).expect("evaluate");
        let inter = p.data().iter().zip(g.data()).filter(|(x, y)| **x && **y).count() as f64;
        let (np, ng) = (p.count() as f64, g.count() as f64);
        let bd = if np + ng == 0.0 { 1.0 } else { 2.0 * inter / (np + ng) };
        let bi = if np + ng - inter == 0.0 { 1.0 } else { inter / (np + ng - inter) };
        prop_assert!((m.dice - bd).abs() < 1e-12);
        prop_assert!((m.iou - bi).abs() < 1e-12);
        match (m.hd95, brute_hd95(&p, &g, &sp)) {
            (Some(x), Some(y)) => prop_assert!((x - y).abs() <= 1e-6, "hd95 {} vs brute {}", x, y),
            (x, y) => prop_assert_eq!(x, y),
        }
        // Surface of the library equals the plain definition.
        let lib: Vec<Vec<usize>> = p.surface().foreground_indices().into_iter().map(|f| p.unravel(f)).collect();
        prop_assert_eq!(lib, brute_surface(&p));
    }

    #[test]
    fn edt_matches_brute_force((shape, a, _b, sp) in mask_strategy()) {
        let f = Mask::new(&shape, a).expect("mask");
        let d = edt::edt(&f, &sp).expect("edt");
        let sites: Vec<Vec<usize>> = f.foreground_indices().into_iter().map(|i| f.unravel(i)).collect();
        let all: Vec<Vec<usize>> = (0..f.numel()).map(|i| f.unravel(i)).collect();
        let brute = brute_directed(&all, &sites, &sp);
        for (x, y) in d.iter().zip(&brute) {
            prop_assert!(x == y || (x - y).abs() <= 1e-9, "{} vs {}", x, y);
        }
    }
}
