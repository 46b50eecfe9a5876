//! The bad-input table of `medsa-eval`: prompt-type strings, masks, spacings and prompt
//! simulation on wrong input, and the typed [`EvalError`] each gets.
//!
//! | input | what is wrong | error |
//! |---|---|---|
//! | prompt type | empty, unknown (`2pt`, ` 1pt`), `bbox` without τ, τ ≤ 0, τ > 1, NaN or infinite τ | `PromptParse` |
//! | prompt type | `iterative:0`, negative, or a count overflowing usize | `PromptParse` |
//! | mask | rank 0 or above 8, a zero-length axis, an element count overflowing usize | `InvalidShape` |
//! | mask | data length ≠ the shape's element count | `InvalidShape` |
//! | metrics | prediction and ground truth of different shapes | `ShapeMismatch` |
//! | metrics | spacing zero, negative, NaN, infinite, or of the wrong length | `InvalidSpacing` |
//! | metrics | both masks empty | `Ok`: Dice = IoU = 1, HD95 = ASSD = 0 |
//! | metrics | one mask empty | `Ok`: HD95 and ASSD `None` (undefined), Dice 0 |
//! | prompt simulation | empty ground truth (points, tight box, τ-box, jittered box) | `EmptyMask` |
//! | prompt simulation | a 3-D mask | `Not2d` |
//! | prompt simulation | 0 points; τ outside (0, 1] or NaN | `InvalidArgument` |
//! | corrective click | prediction of another shape | `ShapeMismatch` |

#![allow(clippy::unwrap_used)]

use medsa_eval::metrics::{dice, evaluate, hd95};
use medsa_eval::prompts::{bbox_with_iou, case_rng, jittered_box, next_click, random_points, tight_box};
use medsa_eval::{EvalError, Mask, PromptKind};

type Check = fn(&EvalError) -> bool;
type Run = Box<dyn Fn() -> Result<(), EvalError>>;

fn check(rows: Vec<(&str, Run, Check)>) {
    let mut failures = Vec::new();
    for (what, run, want) in &rows {
        match run() {
            Ok(()) => failures.push(format!("{what}: accepted")),
            Err(e) if want(&e) => {}
            Err(e) => failures.push(format!("{what}: wrong error {e:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

fn square(n: usize, fg: bool) -> Mask {
    Mask::from_fn(&[n, n], |i| fg && i[0] >= 1 && i[1] >= 1 && i[0] < n - 1 && i[1] < n - 1).unwrap()
}

#[test]
fn every_bad_input_gets_its_typed_error() {
    let parse = |e: &EvalError| matches!(e, EvalError::PromptParse(_));
    let shape = |e: &EvalError| matches!(e, EvalError::InvalidShape { .. });
    let mismatch = |e: &EvalError| matches!(e, EvalError::ShapeMismatch { .. });
    let spacing = |e: &EvalError| matches!(e, EvalError::InvalidSpacing { .. });
    let empty = |e: &EvalError| matches!(e, EvalError::EmptyMask { .. });
    let arg = |e: &EvalError| matches!(e, EvalError::InvalidArgument { .. });
    let mut rows: Vec<(&str, Run, Check)> = Vec::new();
    for s in [
        "",
        "2pt",
        " 1pt",
        "1PT",
        "bbox",
        "bbox0",
        "bbox-0.5",
        "bbox1.5",
        "bboxNaN",
        "bboxinf",
        "iterative:0",
        "iterative:-1",
        "iterative:",
        "iterative:99999999999999999999999",
    ] {
        rows.push(("prompt type", Box::new(move || s.parse::<PromptKind>().map(drop)), parse));
    }
    rows.extend([
        ("mask: rank 0", Box::new(|| Mask::zeros(&[]).map(drop)) as Run, shape as Check),
        ("mask: rank 9", Box::new(|| Mask::zeros(&[1; 9]).map(drop)), shape),
        ("mask: zero axis", Box::new(|| Mask::zeros(&[4, 0]).map(drop)), shape),
        ("mask: count overflows", Box::new(|| Mask::zeros(&[usize::MAX, 2]).map(drop)), shape),
        ("mask: terabyte shape", Box::new(|| Mask::zeros(&[1 << 20, 1 << 20]).map(drop)), shape),
        ("mask: data length", Box::new(|| Mask::new(&[2, 2], vec![true; 3]).map(drop)), shape),
        ("dice: shapes differ", Box::new(|| dice(&square(4, true), &square(5, true)).map(drop)), mismatch),
        (
            "hd95: zero spacing",
            Box::new(|| hd95(&square(4, true), &square(4, true), &[0.0, 1.0]).map(drop)),
            spacing,
        ),
        (
            "hd95: negative spacing",
            Box::new(|| hd95(&square(4, true), &square(4, true), &[1.0, -1.0]).map(drop)),
            spacing,
        ),
        (
            "hd95: NaN spacing",
            Box::new(|| hd95(&square(4, true), &square(4, true), &[f64::NAN, 1.0]).map(drop)),
            spacing,
        ),
        (
            "hd95: infinite spacing",
            Box::new(|| evaluate(&square(4, true), &square(4, true), &[1.0, f64::INFINITY]).map(drop)),
            spacing,
        ),
        (
            "hd95: spacing of the wrong length",
            Box::new(|| hd95(&square(4, true), &square(4, true), &[1.0]).map(drop)),
            spacing,
        ),
        (
            "points: empty ground truth",
            Box::new(|| random_points(&square(4, false), 1, &mut case_rng(0, 0)).map(drop)),
            empty,
        ),
        (
            "points: 3-D mask",
            Box::new(|| random_points(&Mask::zeros(&[2, 2, 2]).unwrap(), 1, &mut case_rng(0, 0)).map(drop)),
            |e: &EvalError| matches!(e, EvalError::Not2d { .. }),
        ),
        (
            "points: n = 0",
            Box::new(|| random_points(&square(4, true), 0, &mut case_rng(0, 0)).map(drop)),
            arg,
        ),
        ("tight box: empty", Box::new(|| tight_box(&square(4, false)).map(drop)), empty),
        (
            "tau box: empty",
            Box::new(|| bbox_with_iou(&square(4, false), 0.5, &mut case_rng(0, 0)).map(drop)),
            empty,
        ),
        (
            "tau box: tau 0",
            Box::new(|| bbox_with_iou(&square(4, true), 0.0, &mut case_rng(0, 0)).map(drop)),
            arg,
        ),
        (
            "tau box: tau NaN",
            Box::new(|| bbox_with_iou(&square(4, true), f64::NAN, &mut case_rng(0, 0)).map(drop)),
            arg,
        ),
        (
            "tau box: tau 1.5",
            Box::new(|| bbox_with_iou(&square(4, true), 1.5, &mut case_rng(0, 0)).map(drop)),
            arg,
        ),
        (
            "jittered box: empty",
            Box::new(|| jittered_box(&square(4, false), &mut case_rng(0, 0)).map(drop)),
            empty,
        ),
        (
            "click: shapes differ",
            Box::new(|| next_click(&square(4, true), &square(5, true)).map(drop)),
            mismatch,
        ),
    ]);
    check(rows);
}

#[test]
fn empty_masks_have_defined_metrics() {
    let none = square(6, false);
    let some = square(6, true);
    let m = evaluate(&none, &none, &[1.0, 1.0]).unwrap();
    assert_eq!((m.dice, m.iou, m.hd95, m.assd), (1.0, 1.0, Some(0.0), Some(0.0)));
    let m = evaluate(&some, &none, &[1.0, 1.0]).unwrap();
    assert_eq!((m.dice, m.hd95, m.assd), (0.0, None, None));
}
