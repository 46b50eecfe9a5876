//! The prompts of `medsa eval`: the prompt types of `--prompt` (parsed and printed), the
//! multimask policy of `--multimask`, and one prompt type run on one embedded slice
//! ([`run_prompt`], with the corrective rounds of `iterative:N`).

use anyhow::{bail, Result};
use medsa_eval::prompts::{self, case_rng, next_click, PromptKind};
use medsa_eval::Mask;
use medsa_model::predictor::{BoxPrompt, MaskOutput, Point, Prediction, Predictor, Prompt};
use medsa_model::propagate::{Follow, PropagateOptions};
use std::str::FromStr;

/// The `--multimask` policy: which predictions take SAM's multimask output. The variants' docs
/// are its `--help` text; [`Multimask::wants`] applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Multimask {
    /// SAM's rule: one-click prompts only (`1pt`, the first round of `iterative:N`); several
    /// points, boxes and corrective rounds take the single mask.
    Auto,
    /// Every prediction without a mask prompt.
    Always,
    /// Never: always the single-mask output.
    Never,
}

impl Multimask {
    /// Whether the prediction of `kind` from `prompt` takes the multimask output, by the
    /// variant's rule: the one place the policy is decided. A prompt with a mask prompt (a
    /// corrective round of `iterative:N`) never does.
    pub fn wants(self, kind: EvalPrompt, prompt: &Prompt) -> bool {
        if prompt.mask.is_some() {
            return false;
        }
        match self {
            Multimask::Auto => {
                matches!(kind, EvalPrompt::Sim(PromptKind::OnePoint | PromptKind::Iterative { .. }))
                    && prompt.points.len() == 1
                    && prompt.bbox.is_none()
            }
            Multimask::Always => true,
            Multimask::Never => false,
        }
    }
}

/// One prompt type of the evaluation: a `medsa-eval` protocol or the tight box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EvalPrompt {
    /// A simulated prompt of `medsa-eval` (`1pt`, `3pt`, `bbox<τ>`, `jitterbox`, `iterative:N`).
    Sim(PromptKind),
    /// The tight box of the ground truth (`box`).
    TightBox,
    /// 3D: the tight box of the structure's largest cross-section (the key slice), reused
    /// unchanged on every slice of the structure's extent (`keybox`).
    KeyBox,
    /// 3D: from the key slice (largest cross-section, its tight box) outward, each slice
    /// prompted from the previous slice's mask ([`medsa_model::propagate`]); the options are
    /// written as suffixes: `propagate`, `:click`, `:mask`, `:clip`, `:extent` (chains stay
    /// inside the structure's true slice range, as `keybox` does), `:within-key` (boxes stay
    /// inside the key box plus the margin), `:key-candidates` (the key box's masks compete on
    /// every slice), `:single` (the model's one mask, no candidate choice), `:no-retry`,
    /// `:margin=MM`, `:shrink=MM`, `:grow=MM`, `:growth=R`, `:leak=R`.
    Propagate(PropagateOptions),
}

impl std::fmt::Display for EvalPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalPrompt::Sim(k) => write!(f, "{k}"),
            EvalPrompt::TightBox => write!(f, "box"),
            EvalPrompt::KeyBox => write!(f, "keybox"),
            EvalPrompt::Propagate(o) => {
                let d = PropagateOptions::default();
                write!(f, "propagate")?;
                if o.follow == Follow::Click {
                    write!(f, ":click")?;
                }
                if o.mask_feedback {
                    write!(f, ":mask")?;
                }
                if o.clip_to_box {
                    write!(f, ":clip")?;
                }
                if !o.consistent {
                    write!(f, ":single")?;
                }
                if !o.retry {
                    write!(f, ":no-retry")?;
                }
                if o.extent.is_some() {
                    write!(f, ":extent")?;
                }
                if o.within_key {
                    write!(f, ":within-key")?;
                }
                if o.key_candidates {
                    write!(f, ":key-candidates")?;
                }
                if o.max_grow_mm != d.max_grow_mm {
                    write!(f, ":grow={}", o.max_grow_mm)?;
                }
                if o.margin_mm != d.margin_mm {
                    write!(f, ":margin={}", o.margin_mm)?;
                }
                if o.max_shrink_mm != d.max_shrink_mm {
                    write!(f, ":shrink={}", o.max_shrink_mm)?;
                }
                if o.max_growth != d.max_growth {
                    write!(f, ":growth={}", o.max_growth)?;
                }
                if o.max_key_growth != d.max_key_growth {
                    write!(f, ":leak={}", o.max_key_growth)?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for EvalPrompt {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "box" | "tightbox" => Ok(EvalPrompt::TightBox),
            "keybox" => Ok(EvalPrompt::KeyBox),
            p if p == "propagate" || p.starts_with("propagate:") => {
                parse_propagate(p).map(EvalPrompt::Propagate)
            }
            _ => s.parse::<PromptKind>().map(EvalPrompt::Sim).map_err(|_| {
                format!(
                    "unknown prompt kind {s:?}: expected 1pt, 3pt, bbox<τ> with τ in (0, 1] (bbox0.5, \
                     bbox0.75), jitterbox, box, iterative:N with N >= 1, or for volumes keybox, propagate, \
                     propagate:extent, propagate:mask, propagate:click"
                )
            }),
        }
    }
}

/// `propagate[:click][:mask][:clip][:extent][:within-key][:key-candidates][:single][:no-retry][:margin=MM][:shrink=MM][:grow=MM][:growth=R][:leak=R]`.
fn parse_propagate(s: &str) -> std::result::Result<PropagateOptions, String> {
    let mut o = PropagateOptions::default();
    for part in s.split(':').skip(1) {
        let num = |v: &str| -> std::result::Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{s}: `{v}` is not a number >= 0"))
        };
        match part.split_once('=') {
            None if part == "click" => o.follow = Follow::Click,
            None if part == "mask" => o.mask_feedback = true,
            None if part == "clip" => o.clip_to_box = true,
            None if part == "no-retry" => o.retry = false,
            None if part == "single" => o.consistent = false,
            // The structure's slice range is set per structure by the volume loop.
            None if part == "extent" => o.extent = Some((0, usize::MAX)),
            None if part == "within-key" => o.within_key = true,
            None if part == "key-candidates" => o.key_candidates = true,
            Some(("grow", v)) => o.max_grow_mm = num(v)?,
            Some(("margin", v)) => o.margin_mm = num(v)?,
            Some(("shrink", v)) => o.max_shrink_mm = num(v)?,
            Some(("growth", v)) => o.max_growth = num(v)?,
            Some(("leak", v)) => o.max_key_growth = num(v)?,
            _ => return Err(format!("{s}: unknown propagate option `{part}` (click, mask, clip, extent, within-key, key-candidates, single, no-retry, margin=MM, shrink=MM, grow=MM, growth=R, leak=R)")),
        }
    }
    Ok(o)
}

impl EvalPrompt {
    /// Whether the rule works on a whole structure (3D) rather than slice by slice.
    pub fn volumetric(&self) -> bool {
        matches!(self, EvalPrompt::KeyBox | EvalPrompt::Propagate { .. })
    }

    /// `N` of `iterative:N`, the rounds of a prompt with corrective clicks.
    pub fn clicks(&self) -> Option<usize> {
        match self {
            EvalPrompt::Sim(PromptKind::Iterative { clicks }) => Some(*clicks),
            _ => None,
        }
    }
}

fn to_model_point(p: &prompts::Point) -> Point {
    Point { x: p.x, y: p.y, foreground: p.is_positive() }
}

fn to_model_box(b: &prompts::BoxPrompt) -> BoxPrompt {
    BoxPrompt { x0: b.x0, y0: b.y0, x1: b.x1, y1: b.y1 }
}

/// Result of one prompt type on one 2D ground truth.
pub struct Outcome {
    /// Final prediction mask `[H, W]`.
    pub pred: Mask,
    /// Per-round (mask, clicks so far) for `iterative:N`; one entry otherwise.
    pub rounds: Vec<Round>,
}

/// One prediction of a prompt type: the first, or a corrective round of `iterative:N`.
pub struct Round {
    /// Its mask `[H, W]`.
    pub pred: Mask,
    /// The click added in this round (the first point in round 1), if any.
    pub click: Option<prompts::Point>,
    /// The decoder's predicted IoU of the kept mask.
    pub pred_iou: f32,
}

/// Runs one prompt type on one embedded image against ground truth `gt` (`[H, W]`).
/// The predictor must hold the image's embedding ([`Predictor::set_image`]).
pub fn run_prompt(
    predictor: &Predictor<'_>,
    gt: &Mask,
    kind: EvalPrompt,
    policy: Multimask,
    seed: u64,
    stream: u64,
) -> Result<Outcome> {
    let shape = gt.shape().to_vec();
    let mut rng = case_rng(seed, stream);
    let to_mask = |p: &Prediction, k: usize| Mask::new(&shape, p.mask(k)).map_err(anyhow::Error::from);
    let initial = match kind {
        EvalPrompt::TightBox => prompts::Prompt { points: Vec::new(), bbox: Some(prompts::tight_box(gt)?) },
        EvalPrompt::KeyBox | EvalPrompt::Propagate { .. } => bail!("{kind} needs a volume (--volume)"),
        EvalPrompt::Sim(k) => prompts::simulate(k, gt, &mut rng)?,
    };
    let mut prompt = Prompt {
        points: initial.points.iter().map(to_model_point).collect(),
        bbox: initial.bbox.as_ref().map(to_model_box),
        mask: None,
    };
    // One prediction of `prompt`, kept candidate `k` chosen by the policy.
    let predict = |prompt: &Prompt| -> Result<(Prediction, usize)> {
        let output = MaskOutput::multimask_if(policy.wants(kind, prompt));
        let pred = predictor.predict(prompt, output)?;
        let k = output.keep(&pred);
        Ok((pred, k))
    };
    let (mut pred, mut k) = predict(&prompt)?;
    let mut mask = to_mask(&pred, k)?;
    let mut rounds =
        vec![Round { pred: mask.clone(), click: initial.points.first().copied(), pred_iou: pred.iou[k] }];
    if let Some(n) = kind.clicks() {
        for _ in 1..n {
            let Some(click) = next_click(gt, &mask)? else {
                // Perfect prediction: nothing left to correct; later rounds keep it.
                rounds.push(Round { pred: mask.clone(), click: None, pred_iou: pred.iou[k] });
                continue;
            };
            prompt.points.push(to_model_point(&click));
            prompt.mask = Some(pred.low_res(k)?);
            (pred, k) = predict(&prompt)?;
            mask = to_mask(&pred, k)?;
            rounds.push(Round { pred: mask.clone(), click: Some(click), pred_iou: pred.iou[k] });
        }
    }
    Ok(Outcome { pred: mask, rounds })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn propagate_options_parse_and_print_back() {
        let p: EvalPrompt = "propagate:mask:extent:key-candidates:single:no-retry:grow=2".parse().unwrap();
        let EvalPrompt::Propagate(o) = p else { panic!("{p}") };
        assert!(o.mask_feedback && o.key_candidates && !o.consistent && !o.retry && o.extent.is_some());
        assert_eq!(o.max_grow_mm, 2.0);
        assert_eq!(p.to_string().parse::<EvalPrompt>().unwrap(), p);
        assert_eq!("propagate".parse::<EvalPrompt>().unwrap().to_string(), "propagate");
        let e = "propagate:sideways".parse::<EvalPrompt>().unwrap_err();
        assert!(e.contains("sideways") && e.contains("extent"), "{e}");
    }
}
