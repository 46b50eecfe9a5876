//! Optimizers of adapter training with PyTorch's semantics: `torch.optim.Adam` / `AdamW`
//! (single-tensor, non-amsgrad, `maximize = False`), `torch.nn.utils.clip_grad_norm_`, and the
//! learning-rate schedules the training scripts use.
//!
//! State is kept per parameter name, as PyTorch keeps it per parameter (including the step
//! count), so a parameter that only starts receiving gradients later has its own bias
//! correction. Parameters without a gradient are simply not stepped: the caller does not call
//! [`Optimizer::step_param`] for them, and their state (if any) is left as it is.

use rayon::prelude::*;
use std::collections::btree_map::{BTreeMap, Entry};

use crate::{Error, Result};
use medsa_core::Tensor;

/// Which of PyTorch's two Adam variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// `torch.optim.Adam`: weight decay is L2 added to the gradient, `g ← g + wd·p`.
    Adam,
    /// `torch.optim.AdamW`: decoupled weight decay, `p ← p·(1 − lr·wd)` before the update.
    AdamW,
}

/// Hyper-parameters of [`Optimizer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerConfig {
    /// Adam or AdamW.
    pub kind: OptimizerKind,
    /// Base learning rate (the schedule scales it; [`Optimizer::step_param`] takes the current one).
    pub lr: f32,
    /// `(β1, β2)`.
    pub betas: (f32, f32),
    /// `ε` added to the bias-corrected `sqrt(v)`.
    pub eps: f32,
    /// Weight decay (L2 for Adam, decoupled for AdamW).
    pub weight_decay: f32,
}

impl Default for OptimizerConfig {
    /// AdamW, lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 (torch's AdamW defaults
    /// apart from the learning rate).
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::AdamW,
            lr: 1e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The f64 a Python script would use for a hyper-parameter written as this f32: the shortest
/// decimal that rounds to it (`0.9f32` → `0.9`, not `0.89999997615814`), so bias corrections
/// and step sizes match PyTorch, whose hyper-parameters are Python floats.
fn widen(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Adam state of one parameter.
#[derive(Debug, Clone)]
struct ParamState {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// Adam / AdamW over named parameters.
#[derive(Debug, Clone)]
pub struct Optimizer {
    cfg: OptimizerConfig,
    state: BTreeMap<String, ParamState>,
}

const SUFFIXES: [&str; 3] = [".exp_avg_sq", ".exp_avg", ".step"];

impl Optimizer {
    /// An optimizer with no state yet.
    pub fn new(cfg: OptimizerConfig) -> Self {
        Optimizer { cfg, state: BTreeMap::new() }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// Steps taken by parameter `name` (0 if it was never stepped).
    pub fn param_steps(&self, name: &str) -> u64 {
        self.state.get(name).map_or(0, |s| s.step)
    }

    /// One Adam / AdamW step of `param` with gradient `grad` at learning rate `lr`, exactly as
    /// PyTorch's single-tensor implementation orders it: `t += 1`; Adam: `g += wd·p`, AdamW:
    /// `p *= 1 − lr·wd`; `m += (g − m)(1 − β1)`; `v = β2·v + (1 − β2)·g²`;
    /// `p −= lr / (1 − β1^t) · m / (sqrt(v) / sqrt(1 − β2^t) + ε)`. The per-step scalars (bias
    /// corrections, step size) are computed in f64 from the hyper-parameters as Python writes
    /// them; the elements in f32, as PyTorch's f32 run computes them.
    ///
    /// A shape mismatch between `param` and `grad` is [`Error::Config`]; a non-finite gradient
    /// element is [`Error::NonFinite`] (`what = "gradient of {name}"`, `step` = the 0-based
    /// index of the step that was attempted), returned before the parameter or any state is
    /// touched.
    pub fn step_param(&mut self, name: &str, param: &mut Tensor, grad: &Tensor, lr: f32) -> Result<()> {
        self.check_shapes(name, param, grad)?;
        if !grad.all_finite() {
            return Err(Error::NonFinite {
                what: format!("gradient of {name}"),
                step: self.param_steps(name),
            });
        }
        self.update(name, param, grad, lr)
    }

    /// [`Optimizer::step_param`] for a gradient already known to be finite (the step's
    /// [`crate::train::step::apply`] checks every gradient once, before any parameter moves).
    pub(crate) fn step_finite(
        &mut self,
        name: &str,
        param: &mut Tensor,
        grad: &Tensor,
        lr: f32,
    ) -> Result<()> {
        self.check_shapes(name, param, grad)?;
        self.update(name, param, grad, lr)
    }

    /// The gradient's and the stored moments' shapes against the parameter's.
    fn check_shapes(&self, name: &str, param: &Tensor, grad: &Tensor) -> Result<()> {
        if param.shape() != grad.shape() {
            return Err(Error::Config(format!(
                "optimizer: parameter {name} has shape {:?} but its gradient has shape {:?}",
                param.shape(),
                grad.shape()
            )));
        }
        if let Some(s) = self.state.get(name).filter(|s| s.exp_avg.shape() != param.shape()) {
            let (have, want) = (s.exp_avg.shape(), param.shape());
            let msg = format!("moments have shape {have:?}, the parameter has shape {want:?}");
            return Err(Error::OptimizerState { name: name.to_string(), msg });
        }
        Ok(())
    }

    /// The update itself, on checked operands.
    fn update(&mut self, name: &str, param: &mut Tensor, grad: &Tensor, lr: f32) -> Result<()> {
        let s = match self.state.entry(name.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let zeros = Tensor::zeros(param.shape().to_vec())?;
                e.insert(ParamState { exp_avg: zeros.clone(), exp_avg_sq: zeros, step: 0 })
            }
        };
        s.step += 1;
        let (lr, wd, eps) = (widen(lr), widen(self.cfg.weight_decay), widen(self.cfg.eps));
        let (b1, b2) = (widen(self.cfg.betas.0), widen(self.cfg.betas.1));
        // Python's `beta ** step` on floats is C `pow`, hence `powf`, not `powi`.
        let t = s.step as f64;
        let bias_c1 = 1.0 - b1.powf(t);
        let bias_c2_sqrt = (1.0 - b2.powf(t)).sqrt();
        let step_size = lr / bias_c1;
        let adamw = self.cfg.kind == OptimizerKind::AdamW;
        // Element-wise in f32 as torch's own f32 step (`addcdiv_`), branch-free so it vectorises;
        // the same result for any split, so chunks run in parallel. AdamW decays the weight,
        // Adam adds `wd·p` to the gradient; with `wd = 0` both are exact identities.
        const CHUNK: usize = 1 << 14;
        let decay = if adamw { (1.0 - lr * wd) as f32 } else { 1.0 };
        let l2 = if adamw { 0.0 } else { wd as f32 };
        let (b1, b2, eps) = (b1 as f32, b2 as f32, eps as f32);
        let (step_size, bias_c2_sqrt) = (step_size as f32, bias_c2_sqrt as f32);
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let pv = *p * decay;
                let gv = g + l2 * pv;
                let mn = *m + (gv - *m) * (1.0 - b1);
                let vn = b2 * *v + (1.0 - b2) * gv * gv;
                *p = pv - step_size * mn / (vn.sqrt() / bias_c2_sqrt + eps);
                *m = mn;
                *v = vn;
            }
        };
        param
            .data_mut()
            .par_chunks_mut(CHUNK)
            .zip(grad.data().par_chunks(CHUNK))
            .zip(s.exp_avg.data_mut().par_chunks_mut(CHUNK))
            .zip(s.exp_avg_sq.data_mut().par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| update(p, g, m, v));
        Ok(())
    }

    /// The state for an exact resume, sorted by parameter name: per stepped parameter
    /// `"{name}.exp_avg"`, `"{name}.exp_avg_sq"` (the parameter's shape) and `"{name}.step"`, a
    /// one-element tensor holding the step count as f32 (exact up to 2^24 = 16 777 216 steps).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.state.len());
        for (name, s) in &self.state {
            out.push((format!("{name}.exp_avg"), s.exp_avg.clone()));
            out.push((format!("{name}.exp_avg_sq"), s.exp_avg_sq.clone()));
            let step = Tensor::new([1], vec![s.step as f32]).expect("a [1] tensor holds one element");
            out.push((format!("{name}.step"), step));
        }
        out
    }

    /// Replaces the state with `entries` (as written by [`Optimizer::state`]) for the
    /// parameters `params` (name, shape). Every entry must belong to a listed parameter; a
    /// parameter with any entry must have all three, with moments of its shape, finite, a
    /// non-negative second moment, and an integral step ≥ 1. A listed parameter with no entry
    /// starts fresh (PyTorch likewise has no state for a parameter that never had a gradient).
    /// Any problem is [`Error::OptimizerState`] and leaves the current state unchanged.
    pub fn load_state(
        &mut self,
        entries: &[(String, Tensor)],
        params: &[(String, Vec<usize>)],
    ) -> Result<()> {
        let shapes: BTreeMap<&str, &[usize]> =
            params.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
        type Parts<'a> = [Option<&'a Tensor>; 3];
        let mut found: BTreeMap<&str, Parts<'_>> = BTreeMap::new();
        for (key, tensor) in entries {
            let bad = |msg: String| Error::OptimizerState { name: key.clone(), msg };
            let (which, name) = SUFFIXES
                .iter()
                .enumerate()
                .find_map(|(i, suf)| key.strip_suffix(suf).map(|n| (i, n)))
                .ok_or_else(|| bad("not an `.exp_avg`, `.exp_avg_sq` or `.step` entry".into()))?;
            if !shapes.contains_key(name) {
                return Err(bad(format!("no trainable parameter is named {name}")));
            }
            let slot = &mut found.entry(name).or_default()[which];
            if slot.replace(tensor).is_some() {
                return Err(bad("the entry appears twice".into()));
            }
        }
        let mut state = BTreeMap::new();
        for (name, parts) in found {
            let shape = shapes[name];
            let bad = |msg: String| Error::OptimizerState { name: name.to_string(), msg };
            let [Some(sq), Some(avg), Some(step)] = parts else {
                let missing: Vec<&str> =
                    SUFFIXES.iter().zip(parts).filter(|(_, p)| p.is_none()).map(|(s, _)| &s[1..]).collect();
                return Err(bad(format!("missing {}", missing.join(", "))));
            };
            for (what, t) in [("exp_avg", avg), ("exp_avg_sq", sq)] {
                if t.shape() != shape {
                    return Err(bad(format!(
                        "{what} has shape {:?}, the parameter has shape {shape:?}",
                        t.shape()
                    )));
                }
                if !t.all_finite() {
                    return Err(bad(format!("{what} is not finite")));
                }
            }
            if sq.data().iter().any(|&v| v < 0.0) {
                return Err(bad("exp_avg_sq has a negative element".into()));
            }
            let n = step.data().first().copied().unwrap_or(f32::NAN);
            if step.numel() != 1 || !(n >= 1.0 && n.fract() == 0.0 && n <= 16_777_216.0) {
                return Err(bad(format!(
                    "step must be one integer >= 1, got {:?} of shape {:?}",
                    step.data(),
                    step.shape()
                )));
            }
            state.insert(
                name.to_string(),
                ParamState { exp_avg: avg.clone(), exp_avg_sq: sq.clone(), step: n as u64 },
            );
        }
        self.state = state;
        Ok(())
    }
}

/// `torch.nn.utils.clip_grad_norm_` (L2, `error_if_nonfinite = False`): returns the global L2
/// norm of all gradients (accumulated in f64); with `clip_coef = max_norm / (total + 1e-6)`,
/// every gradient is multiplied by `clip_coef` when it is below 1. A non-finite total leaves
/// the gradients untouched, so the optimizer's check names the offending parameter.
pub fn clip_grad_norm(grads: &mut [&mut Tensor], max_norm: f64) -> f64 {
    let sq: f64 = grads.iter().flat_map(|g| g.data()).map(|&v| f64::from(v) * f64::from(v)).sum();
    let total = sq.sqrt();
    let coef = max_norm / (total + 1e-6);
    if total.is_finite() && coef < 1.0 {
        for g in grads.iter_mut() {
            g.data_mut().iter_mut().for_each(|v| *v = (f64::from(*v) * coef) as f32);
        }
    }
    total
}

/// Learning rate as a function of the 0-based optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// `lr = base`.
    Constant,
    /// torch `StepLR`: `lr = base · gamma^⌊step / every⌋` (`every = 0` never decays).
    Step {
        /// Steps between decays.
        every: u64,
        /// Factor of each decay.
        gamma: f64,
    },
    /// Linear warm-up then cosine decay: `lr = base · (step + 1) / warmup` for
    /// `step < warmup`; then `min_lr + (base − min_lr) · (1 + cos(π · (step − warmup) /
    /// (total − warmup))) / 2` up to `total`, which gives `base` at `step = warmup` and
    /// `min_lr` at `step = total`; `min_lr` from `total` on.
    WarmupCosine {
        /// Warm-up steps (0: none).
        warmup: u64,
        /// Step at which the cosine reaches `min_lr`.
        total: u64,
        /// Final learning rate.
        min_lr: f64,
    },
}

impl LrSchedule {
    /// The learning rate at `step` (0-based) for base rate `base`.
    pub fn lr(&self, base: f64, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step { every, gamma } => {
                let k = step.checked_div(every).unwrap_or(0);
                base * gamma.powi(i32::try_from(k).unwrap_or(i32::MAX))
            }
            LrSchedule::WarmupCosine { warmup, total, min_lr } => {
                if step < warmup {
                    base * (step + 1) as f64 / warmup as f64
                } else if step >= total {
                    min_lr
                } else {
                    let progress = (step - warmup) as f64 / (total - warmup) as f64;
                    min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P0: [f32; 3] = [0.5, -1.0, 2.0];
    const GRADS: [[f32; 3]; 3] = [[0.1, -0.2, 0.3], [-0.05, 0.4, 0.25], [0.2, 0.1, -0.6]];

    fn cfg(kind: OptimizerKind, wd: f32) -> OptimizerConfig {
        OptimizerConfig { kind, lr: 1e-2, betas: (0.9, 0.999), eps: 1e-8, weight_decay: wd }
    }

    fn t3(v: [f32; 3]) -> Tensor {
        Tensor::new([3], v.to_vec()).expect("shape")
    }

    /// torch's Adam / AdamW written out in f64 for three steps.
    fn by_hand(adamw: bool, lr: f64, wd: f64) -> [f64; 3] {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let mut p = P0.map(f64::from);
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for (k, g) in GRADS.iter().enumerate() {
            let t = (k + 1) as f64;
            for i in 0..3 {
                let mut g = f64::from(g[i]);
                if adamw {
                    p[i] *= 1.0 - lr * wd;
                } else {
                    g += wd * p[i];
                }
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let step_size = lr / (1.0 - b1.powf(t));
                let denom = v[i].sqrt() / (1.0 - b2.powf(t)).sqrt() + eps;
                p[i] -= step_size * m[i] / denom;
            }
        }
        p
    }

    fn run(cfg: OptimizerConfig) -> Tensor {
        let mut opt = Optimizer::new(cfg);
        let mut p = t3(P0);
        for g in GRADS {
            opt.step_param("w", &mut p, &t3(g), cfg.lr).expect("step");
        }
        assert_eq!(opt.param_steps("w"), 3);
        p
    }

    #[test]
    fn adam_and_adamw_match_torch_formulas() {
        for (kind, adamw) in [(OptimizerKind::Adam, false), (OptimizerKind::AdamW, true)] {
            for wd in [0.0f32, 0.1] {
                let got = run(cfg(kind, wd));
                let want = by_hand(adamw, 1e-2, if wd == 0.0 { 0.0 } else { 0.1 });
                for (a, b) in got.data().iter().zip(want) {
                    assert!((f64::from(*a) - b).abs() < 1e-6, "{kind:?} wd {wd}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn adam_weight_decay_differs_from_adamw() {
        let a = run(cfg(OptimizerKind::Adam, 0.1));
        let w = run(cfg(OptimizerKind::AdamW, 0.1));
        let diff = a.data().iter().zip(w.data()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff > 1e-4, "{diff}");
    }

    #[test]
    fn first_adam_step_moves_by_lr_times_sign() {
        let mut opt = Optimizer::new(cfg(OptimizerKind::Adam, 0.0));
        let mut p = t3(P0);
        let g = t3([0.3, -0.002, 5.0]);
        opt.step_param("w", &mut p, &g, 1e-3).expect("step");
        for ((new, old), g) in p.data().iter().zip(P0).zip(g.data()) {
            let moved = f64::from(*new) - f64::from(old);
            assert!((moved + 1e-3 * f64::from(g.signum())).abs() < 1e-7, "{moved}");
        }
    }

    #[test]
    fn nan_gradient_leaves_param_and_state_untouched() {
        let mut opt = Optimizer::new(OptimizerConfig::default());
        let mut p = t3(P0);
        opt.step_param("w", &mut p, &t3(GRADS[0]), 1e-4).expect("step");
        let (p_before, s_before) = (p.clone(), opt.state());
        let err = opt.step_param("w", &mut p, &t3([0.1, f32::NAN, 0.0]), 1e-4);
        match err {
            Err(Error::NonFinite { what, step }) => assert_eq!((what.as_str(), step), ("gradient of w", 1)),
            other => panic!("expected Error::NonFinite, got {other:?}"),
        }
        assert_eq!(p, p_before);
        assert_eq!(opt.state(), s_before);
        assert_eq!(opt.param_steps("w"), 1);
        let wrong = Tensor::zeros([4]).expect("shape");
        assert!(matches!(opt.step_param("w", &mut p, &wrong, 1e-4), Err(Error::Config(_))));
    }

    fn params() -> Vec<(String, Vec<usize>)> {
        vec![("a.weight".into(), vec![3]), ("b.bias".into(), vec![2, 2])]
    }

    fn step_both(opt: &mut Optimizer, a: &mut Tensor, b: &mut Tensor, k: usize) {
        let ga = t3(GRADS[k % 3]);
        let gb = Tensor::from_fn([2, 2], |i| (i as f32 - 1.5) * (k as f32 + 1.0) * 0.1).expect("shape");
        opt.step_param("a.weight", a, &ga, 1e-2).expect("step");
        // b only gets a gradient from step 1 on: its own step count lags behind.
        if k > 0 {
            opt.step_param("b.bias", b, &gb, 1e-2).expect("step");
        }
    }

    #[test]
    fn state_round_trip_resumes_bit_identically() {
        let c = cfg(OptimizerKind::AdamW, 0.05);
        let fresh = || (t3(P0), Tensor::new([2, 2], vec![1.0, -2.0, 0.25, 3.0]).expect("shape"));
        let run = |opt: &mut Optimizer, ab: &mut (Tensor, Tensor), steps: std::ops::Range<usize>| {
            steps.for_each(|k| step_both(opt, &mut ab.0, &mut ab.1, k))
        };
        let (mut full, mut first) = (Optimizer::new(c), Optimizer::new(c));
        let (mut ab1, mut ab2) = (fresh(), fresh());
        run(&mut full, &mut ab1, 0..6);
        run(&mut first, &mut ab2, 0..3);
        let saved = first.state();
        assert_eq!(saved.len(), 6);
        assert_eq!(saved[2], ("a.weight.step".to_string(), Tensor::new([1], vec![3.0]).expect("shape")));
        let mut resumed = Optimizer::new(c);
        resumed.load_state(&saved, &params()).expect("load");
        assert_eq!(resumed.param_steps("b.bias"), 2);
        run(&mut resumed, &mut ab2, 3..6);
        let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&ab1.0), bits(&ab1.1)), (bits(&ab2.0), bits(&ab2.1)));
        assert_eq!(full.state(), resumed.state());
    }

    #[test]
    fn load_state_rejects_wrong_shape_missing_entry_and_unknown_name() {
        let mut opt = Optimizer::new(OptimizerConfig::default());
        let (mut a, mut b) = (t3(P0), Tensor::zeros([2, 2]).expect("shape"));
        step_both(&mut opt, &mut a, &mut b, 0);
        step_both(&mut opt, &mut a, &mut b, 1);
        let good = opt.state();
        let expect_err = |entries: &[(String, Tensor)], name: &str, needle: &str| {
            let mut o = opt.clone();
            match o.load_state(entries, &params()) {
                Err(Error::OptimizerState { name: n, msg }) => {
                    assert_eq!(n, name);
                    assert!(msg.contains(needle), "{msg}");
                }
                other => panic!("expected Error::OptimizerState, got {other:?}"),
            }
            assert_eq!(o.state(), good, "a failed load leaves the state as it was");
        };
        let mut wrong = good.clone();
        wrong[0].1 = Tensor::zeros([4]).expect("shape");
        expect_err(&wrong, "a.weight", "[4]");
        let missing: Vec<_> = good.iter().filter(|(k, _)| k != "b.bias.exp_avg_sq").cloned().collect();
        expect_err(&missing, "b.bias", "exp_avg_sq");
        let mut unknown = good.clone();
        unknown.push(("c.weight.exp_avg".into(), Tensor::zeros([3]).expect("shape")));
        expect_err(&unknown, "c.weight.exp_avg", "c.weight");
        let mut bad_step = good.clone();
        bad_step[2].1 = Tensor::new([1], vec![1.5]).expect("shape");
        expect_err(&bad_step, "a.weight", "step");
    }

    #[test]
    fn clip_grad_norm_scales_to_max_norm() {
        let mut g1 = Tensor::new([2], vec![3.0, 4.0]).expect("shape");
        let mut g2 = Tensor::new([1], vec![12.0]).expect("shape");
        let total = clip_grad_norm(&mut [&mut g1, &mut g2], 20.0);
        assert_eq!(total, 13.0);
        assert_eq!((g1.data(), g2.data()), (&[3.0f32, 4.0][..], &[12.0f32][..]));
        let total = clip_grad_norm(&mut [&mut g1, &mut g2], 6.5);
        assert_eq!(total, 13.0);
        let c = 6.5 / (13.0 + 1e-6);
        for (got, want) in g1.data().iter().chain(g2.data()).zip([3.0, 4.0, 12.0]) {
            assert!((f64::from(*got) - want * c).abs() < 1e-6, "{got}");
        }
        let after = clip_grad_norm(&mut [&mut g1, &mut g2], 6.5);
        assert!((after - 6.5).abs() < 1e-5, "{after}");
    }

    #[test]
    fn schedules_at_a_few_steps() {
        let base = 1e-3;
        assert_eq!(LrSchedule::Constant.lr(base, 12345), base);
        let s = LrSchedule::Step { every: 10, gamma: 0.5 };
        assert_eq!([0, 9, 10, 25].map(|k| s.lr(base, k)), [1e-3, 1e-3, 5e-4, 2.5e-4]);
        assert_eq!(LrSchedule::Step { every: 0, gamma: 0.5 }.lr(base, 99), base);
        let c = LrSchedule::WarmupCosine { warmup: 4, total: 14, min_lr: 1e-5 };
        let half = 1e-5 + (1e-3 - 1e-5) * 0.5;
        for (k, want) in [(0, 2.5e-4), (3, 1e-3), (4, 1e-3), (9, half), (14, 1e-5), (100, 1e-5)] {
            assert!((c.lr(base, k) - want).abs() < 1e-15, "step {k}: {} vs {want}", c.lr(base, k));
        }
        assert!(c.lr(base, 6) > c.lr(base, 7));
    }
}
