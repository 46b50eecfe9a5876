//! Losses of mask training on low-res mask logits `x [B, C, spatial...]` against a 0/1 target of
//! the same shape. The crate has no autograd, so every loss returns its value and its gradient
//! with respect to its input.
//!
//! - [`bce_with_logits`]: torch `BCEWithLogitsLoss(pos_weight = w)`, mean reduction;
//! - [`soft_dice`]: MONAI `DiceLoss(sigmoid = True)`, mean over (batch, channel);
//! - [`mask_loss`]: their weighted sum as the paper / the official 3-D script trains
//!   ([`LossConfig::default`]);
//! - [`iou_loss`]: LiteMedSAM's MSE between the IoU head and the IoU of the thresholded mask.
//!
//! Inputs are f32; every sum is accumulated in f64 and gradients are rounded to f32 once.

use crate::{Error, Result};
use medsa_core::Tensor;
use rayon::prelude::*;

/// Weights and options of the mask loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// Weight of the BCE term.
    pub bce_weight: f32,
    /// torch's `pos_weight`: weight of the positive (`t = 1`) part of BCE.
    pub bce_pos_weight: f32,
    /// Weight of the soft-Dice term.
    pub dice_weight: f32,
    /// MONAI's `squared_pred`: Dice denominator `Σp² + Σt²` instead of `Σp + Σt`.
    pub dice_squared_pred: bool,
    /// Dice smoothing `s`, added to numerator and denominator (MONAI `smooth_nr = smooth_dr`).
    pub dice_smooth: f32,
    /// Weight of the IoU-head term; [`mask_loss`] does not use it, the caller adds
    /// `iou_weight · iou_loss` (LiteMedSAM trains with 1, the paper with 0).
    pub iou_weight: f32,
}

impl Default for LossConfig {
    /// The paper's / official 3-D loss: `BCE + Dice(squared_pred)`, `pos_weight = 1`,
    /// smoothing `1e-5`, no IoU term.
    fn default() -> Self {
        LossConfig {
            bce_weight: 1.0,
            bce_pos_weight: 1.0,
            dice_weight: 1.0,
            dice_squared_pred: true,
            dice_smooth: 1e-5,
            iou_weight: 0.0,
        }
    }
}

impl LossConfig {
    /// Checks that every weight and the smoothing are finite and not negative.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("bce_weight", self.bce_weight),
            ("bce_pos_weight", self.bce_pos_weight),
            ("dice_weight", self.dice_weight),
            ("dice_smooth", self.dice_smooth),
            ("iou_weight", self.iou_weight),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::Config(format!("loss {what} must be finite and >= 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// The mask loss of one batch and its gradient.
#[derive(Debug, Clone)]
pub struct MaskLoss {
    /// `bce_weight · bce + dice_weight · dice`.
    pub loss: f64,
    /// The unweighted BCE term.
    pub bce: f64,
    /// The unweighted Dice term.
    pub dice: f64,
    /// `∂loss / ∂logits`, shape of the logits.
    pub dlogits: Tensor,
}

/// What the losses need of one logit `x`, from one `exp`: `σ(x)`, `σ(−x)` and
/// `log(1 + e^−|x|)` (so `softplus(±x) = max(±x, 0) + log(1 + e^−|x|)`), each evaluated in the
/// form that neither overflows nor cancels.
#[derive(Clone, Copy)]
struct Logit {
    x: f64,
    p: f64,
    q: f64,
    log1p_e: f64,
}

/// [`Logit`] of every element, in parallel (elementwise, so the same on every run).
fn logits_of(x: &[f32]) -> Vec<Logit> {
    x.par_iter()
        .map(|&x| {
            let x = f64::from(x);
            let e = (-x.abs()).exp();
            let (big, small) = (1.0 / (1.0 + e), e / (1.0 + e));
            let (p, q) = if x >= 0.0 { (big, small) } else { (small, big) };
            Logit { x, p, q, log1p_e: e.ln_1p() }
        })
        .collect()
}

/// Shapes equal, at least `min_rank` dimensions, not empty; target values finite in [0, 1].
fn check_pair(op: &str, logits: &Tensor, target: &Tensor, min_rank: usize) -> Result<()> {
    if logits.shape() != target.shape() {
        return Err(Error::Config(format!(
            "{op}: logits have shape {:?} but the target has shape {:?}",
            logits.shape(),
            target.shape()
        )));
    }
    if logits.rank() < min_rank || logits.numel() == 0 {
        return Err(Error::Config(format!(
            "{op}: logits of shape {:?} must be non-empty with at least {min_rank} dimensions",
            logits.shape()
        )));
    }
    check_target(op, target)
}

fn check_target(op: &str, target: &Tensor) -> Result<()> {
    if let Some((i, v)) = target.data().iter().enumerate().find(|(_, v)| !(0.0..=1.0).contains(*v)) {
        return Err(Error::Config(format!(
            "{op}: target values must lie in [0, 1], found {v} at flat index {i}"
        )));
    }
    Ok(())
}

/// BCE value and f64 gradient (of the mean) over flat data.
fn bce_parts(x: &[Logit], t: &[f32], pos_weight: f64) -> (f64, Vec<f64>) {
    let inv_n = 1.0 / x.len() as f64;
    let mut sum = 0.0f64;
    let grad = x
        .iter()
        .zip(t)
        .map(|(l, &t)| {
            let t = f64::from(t);
            // -(w t log σ(x) + (1-t) log(1-σ(x))) with -log σ(x) = softplus(-x), -log(1-σ(x)) = softplus(x).
            let (sp_neg, sp_pos) = ((-l.x).max(0.0) + l.log1p_e, l.x.max(0.0) + l.log1p_e);
            sum += pos_weight * t * sp_neg + (1.0 - t) * sp_pos;
            (-pos_weight * t * l.q + (1.0 - t) * l.p) * inv_n
        })
        .collect();
    (sum * inv_n, grad)
}

/// Dice value and f64 gradient over `groups` contiguous (batch, channel) slices.
fn dice_parts(x: &[Logit], t: &[f32], groups: usize, squared: bool, smooth: f64) -> (f64, Vec<f64>) {
    let size = x.len() / groups;
    let inv_g = 1.0 / groups as f64;
    let mut grad = vec![0.0f64; x.len()];
    let mut total = 0.0f64;
    for g in 0..groups {
        let r = g * size..(g + 1) * size;
        let (xs, ts, gs) = (&x[r.clone()], &t[r.clone()], &mut grad[r]);
        let (mut inter, mut sp, mut st) = (0.0f64, 0.0f64, 0.0f64);
        for (l, &t) in xs.iter().zip(ts) {
            let (p, t) = (l.p, f64::from(t));
            inter += p * t;
            sp += if squared { p * p } else { p };
            st += if squared { t * t } else { t };
        }
        let num = 2.0 * inter + smooth;
        let den = sp + st + smooth;
        total += 1.0 - num / den;
        // l = 1 - N/D: ∂l/∂p_i = -2 t_i / D + N/D² · ∂D/∂p_i, ∂p/∂x = σ(x) σ(-x).
        for ((gi, l), &t) in gs.iter_mut().zip(xs).zip(ts) {
            let p = l.p;
            let dd = if squared { 2.0 * p } else { 1.0 };
            let dl_dp = -2.0 * f64::from(t) / den + num / (den * den) * dd;
            *gi = dl_dp * p * l.q * inv_g;
        }
    }
    (total * inv_g, grad)
}

fn to_tensor(shape: &[usize], grad: Vec<f64>) -> Result<Tensor> {
    Ok(Tensor::new(shape.to_vec(), grad.into_iter().map(|g| g as f32).collect())?)
}

/// torch `BCEWithLogitsLoss(pos_weight = w)` with mean reduction over all elements:
/// `mean(-(w·t·log σ(x) + (1 − t)·log(1 − σ(x))))`, computed through softplus so large logits
/// neither overflow nor lose the loss. Returns the value and `∂/∂logits`.
pub fn bce_with_logits(logits: &Tensor, target: &Tensor, pos_weight: f32) -> Result<(f64, Tensor)> {
    check_pair("bce_with_logits", logits, target, 1)?;
    let (v, g) = bce_parts(&logits_of(logits.data()), target.data(), f64::from(pos_weight));
    Ok((v, to_tensor(logits.shape(), g)?))
}

/// MONAI `DiceLoss(sigmoid = True)` on logits `[B, C, spatial...]`: with `p = σ(x)`, per
/// (b, c) `1 − (2Σpt + s) / (Σp² + Σt² + s)` (`squared_pred`) or `1 − (2Σpt + s) / (Σp + Σt + s)`,
/// sums over the spatial dimensions, mean over (b, c). Returns the value and `∂/∂logits`.
pub fn soft_dice(logits: &Tensor, target: &Tensor, squared_pred: bool, smooth: f32) -> Result<(f64, Tensor)> {
    check_pair("soft_dice", logits, target, 3)?;
    let groups = logits.dim(0) * logits.dim(1);
    let (v, g) =
        dice_parts(&logits_of(logits.data()), target.data(), groups, squared_pred, f64::from(smooth));
    Ok((v, to_tensor(logits.shape(), g)?))
}

/// The training loss `bce_weight · BCE + dice_weight · Dice` of logits `[B, C, spatial...]`
/// against a target in [0, 1] of the same shape, with its gradient. `step` (0-based) only names
/// the step in the error when the loss or its gradient is not finite
/// ([`Error::NonFinite`] with `what = "loss"`). A shape mismatch is [`Error::Config`].
pub fn mask_loss(cfg: &LossConfig, logits: &Tensor, target: &Tensor, step: u64) -> Result<MaskLoss> {
    cfg.validate()?;
    check_pair("mask_loss", logits, target, 3)?;
    let (x, t) = (logits_of(logits.data()), target.data());
    let groups = logits.dim(0) * logits.dim(1);
    let (bce, gb) = bce_parts(&x, t, f64::from(cfg.bce_pos_weight));
    let (dice, gd) = dice_parts(&x, t, groups, cfg.dice_squared_pred, f64::from(cfg.dice_smooth));
    let (wb, wd) = (f64::from(cfg.bce_weight), f64::from(cfg.dice_weight));
    let loss = wb * bce + wd * dice;
    let grad: Vec<f64> = gb.iter().zip(&gd).map(|(b, d)| wb * b + wd * d).collect();
    if !loss.is_finite() || grad.iter().any(|g| !g.is_finite()) {
        return Err(Error::NonFinite { what: "loss".into(), step });
    }
    Ok(MaskLoss { loss, bce, dice, dlogits: to_tensor(logits.shape(), grad)? })
}

/// LiteMedSAM's IoU-head term: `mean over (b, m) of (pred_iou − iou)²`, where `iou` is the IoU
/// of the thresholded mask (`logit > 0`) with the target (`t > 0.5`), and the IoU of two empty
/// masks is 1. The IoU is a constant target: no gradient flows to the logits. Shapes:
/// `pred_iou [B, M]`, `logits [B, M, spatial...]`, `target` the logits' shape or `[B, 1,
/// spatial...]` (broadcast over the M masks). Returns the value and
/// `∂/∂pred_iou = 2 (pred − iou) / (B·M)`; a non-finite value is [`Error::NonFinite`] with
/// `what = "IoU loss"` at `step`.
pub fn iou_loss(pred_iou: &Tensor, logits: &Tensor, target: &Tensor, step: u64) -> Result<(f64, Tensor)> {
    let ls = logits.shape();
    let ts = target.shape();
    let shapes = || format!("pred_iou {:?}, logits {ls:?}, target {ts:?}", pred_iou.shape());
    if ls.len() < 3 || logits.numel() == 0 || pred_iou.shape() != &ls[..2] {
        return Err(Error::Config(format!(
            "iou_loss needs pred_iou [B, M] and non-empty logits [B, M, spatial...]: {}",
            shapes()
        )));
    }
    let broadcast = ts.len() == ls.len() && ts[0] == ls[0] && ts[1] == 1 && ts[2..] == ls[2..];
    if ts != ls && !broadcast {
        return Err(Error::Config(format!(
            "iou_loss target must have the logits' shape or [B, 1, spatial...]: {}",
            shapes()
        )));
    }
    check_target("iou_loss", target)?;
    let (b, m) = (ls[0], ls[1]);
    let size = logits.numel() / (b * m);
    let inv = 1.0 / (b * m) as f64;
    let mut loss = 0.0f64;
    let mut grad = Vec::with_capacity(b * m);
    for (k, &pred) in pred_iou.data().iter().enumerate() {
        let tk = if broadcast { k / m } else { k };
        let xs = &logits.data()[k * size..(k + 1) * size];
        let tv = &target.data()[tk * size..(tk + 1) * size];
        let (mut inter, mut union) = (0u64, 0u64);
        for (&x, &t) in xs.iter().zip(tv) {
            let (a, c) = (x > 0.0, t > 0.5);
            inter += u64::from(a && c);
            union += u64::from(a || c);
        }
        let iou = if union == 0 { 1.0 } else { inter as f64 / union as f64 };
        let d = f64::from(pred) - iou;
        loss += d * d * inv;
        grad.push(2.0 * d * inv);
    }
    if !loss.is_finite() {
        return Err(Error::NonFinite { what: "IoU loss".into(), step });
    }
    Ok((loss, to_tensor(pred_iou.shape(), grad)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// xorshift64*: a tiny deterministic generator for the tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Logits k/256 for k in [-768, 768]: x ± 2⁻¹⁰ is exact in f32.
        fn logit(&mut self) -> f32 {
            (self.next() % 1537) as f32 / 256.0 - 3.0
        }
    }

    const H: f32 = 1.0 / 1024.0;

    fn random_pair(shape: &[usize], seed: u64) -> (Tensor, Tensor) {
        let mut rng = Rng(seed);
        let n: usize = shape.iter().product();
        let x = Tensor::from_fn(shape.to_vec(), |_| rng.logit()).expect("shape");
        let mut t = Tensor::from_fn(shape.to_vec(), |_| (rng.next() % 2) as f32).expect("shape");
        // Both target values present.
        t.data_mut()[0] = 0.0;
        t.data_mut()[n - 1] = 1.0;
        (x, t)
    }

    /// Central finite differences of `f` at every element of `x`, compared with `grad`.
    fn check_grad(x: &Tensor, grad: &Tensor, f: impl Fn(&Tensor) -> f64) {
        assert_eq!(x.shape(), grad.shape());
        let h = f64::from(H);
        for i in 0..x.numel() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp.data_mut()[i] += H;
            xm.data_mut()[i] -= H;
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            let g = f64::from(grad.data()[i]);
            assert!((fd - g).abs() <= 1e-7 + 1e-4 * g.abs(), "element {i}: analytic {g}, fd {fd}");
        }
    }

    #[test]
    fn bce_matches_hand_value() {
        let x = Tensor::new([3], vec![0.0, 2.0, -1.0]).expect("shape");
        let t = Tensor::new([3], vec![1.0, 0.0, 1.0]).expect("shape");
        // pos_weight 2: (2·ln 2 + ln(1 + e²) + 2·ln(1 + e)) / 3.
        let want = (2.0 * 2f64.ln() + (1.0 + 2f64.exp()).ln() + 2.0 * (1.0 + 1f64.exp()).ln()) / 3.0;
        let (v, g) = bce_with_logits(&x, &t, 2.0).expect("bce");
        assert!((v - want).abs() < 1e-12 && (v - 2.046_581_915_733_103).abs() < 1e-12, "{v}");
        // ∂/∂x = (-w t σ(-x) + (1-t) σ(x)) / 3.
        let want_g = [-2.0 * 0.5 / 3.0, sigmoid(2.0) / 3.0, -2.0 * sigmoid(1.0) / 3.0];
        for (a, b) in g.data().iter().zip(want_g) {
            assert!((f64::from(*a) - b).abs() < 1e-7);
        }
    }

    #[test]
    fn bce_gradient_matches_finite_differences() {
        for (shape, w, seed) in [(&[2usize, 1, 5, 7][..], 1.0, 1), (&[1, 3, 4, 4][..], 2.0, 2)] {
            let (x, t) = random_pair(shape, seed);
            let (_, g) = bce_with_logits(&x, &t, w).expect("bce");
            check_grad(&x, &g, |x| bce_with_logits(x, &t, w).expect("bce").0);
        }
    }

    #[test]
    fn bce_is_stable_for_large_logits() {
        let x = Tensor::new([2], vec![200.0, -200.0]).expect("shape");
        let t = Tensor::new([2], vec![0.0, 1.0]).expect("shape");
        let (v, g) = bce_with_logits(&x, &t, 1.0).expect("bce");
        assert!((v - 200.0).abs() < 1e-9, "{v}");
        assert!(g.all_finite());
    }

    #[test]
    fn dice_gradient_matches_finite_differences() {
        for (shape, squared, seed) in
            [(&[2usize, 1, 5, 7][..], true, 3), (&[1, 3, 4, 4][..], false, 4), (&[2, 2, 3], true, 5)]
        {
            let (x, t) = random_pair(shape, seed);
            let (_, g) = soft_dice(&x, &t, squared, 1e-5).expect("dice");
            check_grad(&x, &g, |x| soft_dice(x, &t, squared, 1e-5).expect("dice").0);
        }
    }

    #[test]
    fn dice_of_perfect_prediction_is_near_zero() {
        let (_, t) = random_pair(&[2, 3, 4, 4], 6);
        // One channel with an empty target: a perfect (empty) prediction is also near 0.
        let mut t = t;
        t.data_mut()[16..32].iter_mut().for_each(|v| *v = 0.0);
        let x = Tensor::from_fn(t.shape().to_vec(), |i| if t.data()[i] > 0.5 { 30.0 } else { -30.0 })
            .expect("shape");
        for squared in [true, false] {
            let (v, _) = soft_dice(&x, &t, squared, 1e-5).expect("dice");
            assert!((0.0..1e-6).contains(&v), "squared {squared}: {v}");
        }
    }

    #[test]
    fn squared_and_plain_dice_differ() {
        let (x, t) = random_pair(&[1, 3, 4, 4], 7);
        let (a, _) = soft_dice(&x, &t, true, 1e-5).expect("dice");
        let (b, _) = soft_dice(&x, &t, false, 1e-5).expect("dice");
        assert!((a - b).abs() > 1e-3, "{a} vs {b}");
    }

    #[test]
    fn mask_loss_is_the_weighted_sum_and_its_gradient_matches() {
        let cfg = LossConfig { bce_weight: 0.7, bce_pos_weight: 2.0, dice_weight: 1.3, ..Default::default() };
        let (x, t) = random_pair(&[2, 1, 5, 7], 8);
        let out = mask_loss(&cfg, &x, &t, 0).expect("loss");
        let (bce, _) = bce_with_logits(&x, &t, 2.0).expect("bce");
        let (dice, _) = soft_dice(&x, &t, true, 1e-5).expect("dice");
        assert_eq!((out.bce, out.dice), (bce, dice));
        assert!((out.loss - (0.7f32 as f64 * bce + 1.3f32 as f64 * dice)).abs() < 1e-12);
        check_grad(&x, &out.dlogits, |x| mask_loss(&cfg, x, &t, 0).expect("loss").loss);
        let d = LossConfig::default();
        assert_eq!((d.bce_weight, d.bce_pos_weight, d.dice_weight, d.iou_weight), (1.0, 1.0, 1.0, 0.0));
        assert!(d.dice_squared_pred && d.dice_smooth == 1e-5);
    }

    #[test]
    fn shape_mismatch_and_nan_logits_are_typed_errors() {
        let (x, _) = random_pair(&[2, 1, 5, 7], 9);
        let (_, t) = random_pair(&[2, 1, 5, 6], 9);
        match mask_loss(&LossConfig::default(), &x, &t, 3) {
            Err(Error::Config(msg)) => {
                assert!(msg.contains("[2, 1, 5, 7]") && msg.contains("[2, 1, 5, 6]"), "{msg}")
            }
            other => panic!("expected Error::Config, got {other:?}"),
        }
        let (mut x, t) = random_pair(&[2, 1, 5, 7], 10);
        x.data_mut()[4] = f32::NAN;
        match mask_loss(&LossConfig::default(), &x, &t, 7) {
            Err(Error::NonFinite { what, step }) => assert_eq!((what.as_str(), step), ("loss", 7)),
            other => panic!("expected Error::NonFinite, got {other:?}"),
        }
        let bad = Tensor::full([2, 1, 5, 7], 2.0).expect("shape");
        assert!(matches!(mask_loss(&LossConfig::default(), &x, &bad, 0), Err(Error::Config(_))));
    }

    #[test]
    fn iou_loss_targets_the_thresholded_iou() {
        // B = 1, M = 3, 2×2; target [1, 1, 2, 2] broadcast over the masks.
        let t = Tensor::new([1, 1, 2, 2], vec![1.0, 1.0, 0.0, 0.0]).expect("shape");
        let x = Tensor::new([1, 3, 2, 2], vec![1., 2., -1., -1., 1., -1., 1., -1., -1., -1., -1., -1.])
            .expect("shape");
        let pred = Tensor::new([1, 3], vec![0.9, 0.5, 0.0]).expect("shape");
        let (v, g) = iou_loss(&pred, &x, &t, 0).expect("iou");
        // IoUs: 1 (exact), 1/3 (one of three), 0 (empty prediction, non-empty target).
        let d = [0.9f32 as f64 - 1.0, 0.5 - 1.0 / 3.0, 0.0];
        let want: f64 = d.iter().map(|d| d * d).sum::<f64>() / 3.0;
        assert!((v - want).abs() < 1e-12, "{v} vs {want}");
        for (a, d) in g.data().iter().zip(d) {
            assert!((f64::from(*a) - 2.0 * d / 3.0).abs() < 1e-7);
        }
        // Two empty masks have IoU 1.
        let empty = Tensor::zeros([1, 1, 2, 2]).expect("shape");
        let x0 = Tensor::full([1, 1, 2, 2], -1.0).expect("shape");
        let p1 = Tensor::new([1, 1], vec![1.0]).expect("shape");
        assert_eq!(iou_loss(&p1, &x0, &empty, 0).expect("iou").0, 0.0);
    }

    #[test]
    fn iou_loss_gradient_matches_finite_differences_and_rejects_bad_shapes() {
        let (x, t) = random_pair(&[2, 3, 4, 5], 11);
        let mut rng = Rng(12);
        let pred = Tensor::from_fn([2, 3], |_| (rng.next() % 1024) as f32 / 1024.0).expect("shape");
        let (_, g) = iou_loss(&pred, &x, &t, 0).expect("iou");
        check_grad(&pred, &g, |p| iou_loss(p, &x, &t, 0).expect("iou").0);
        let wrong = Tensor::zeros([2, 2]).expect("shape");
        assert!(matches!(iou_loss(&wrong, &x, &t, 0), Err(Error::Config(_))));
        let (_, t2) = random_pair(&[2, 2, 4, 5], 13);
        assert!(matches!(iou_loss(&pred, &x, &t2, 0), Err(Error::Config(_))));
        let mut nan = pred.clone();
        nan.data_mut()[1] = f32::NAN;
        assert!(matches!(iou_loss(&nan, &x, &t, 5), Err(Error::NonFinite { step: 5, .. })));
    }
}
