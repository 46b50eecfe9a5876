//! Prompt simulation during training, on the ground truth of each sample, in original pixels.
//!
//! - `click`: one random foreground pixel (the official Med-SA rule);
//! - `box:N`: the tight box with each side moved outward by a random 0..=N pixels, clipped to the
//!   image (MedSAM's rule; `box` = `box:5`);
//! - `iterative:N`: a random foreground click, then N − 1 rounds in which the current model
//!   predicts (no gradient) and a click goes to the interior of the largest error region
//!   (`medsa_eval::prompts::next_click`), with the previous low-res logits as the mask prompt;
//!   the loss is taken on the last round (SAM-Med2D's rule). The rounds run in
//!   [`crate::run`], which has the model.

use crate::{Error, Result};
use medsa_eval::prompts::{random_points, tight_box};
use medsa_eval::Mask;
use medsa_model::predictor::{BoxPrompt, Point, Prompt};
use rand::Rng;

/// How a run prompts each sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PromptRule {
    /// One random foreground click.
    Click,
    /// The tight box grown by up to `jitter` pixels per side.
    Box {
        /// Largest outward move of a side, pixels.
        jitter: u32,
    },
    /// Iterative error-region clicks with mask feedback.
    Iterative {
        /// Rounds (clicks), at least 1.
        rounds: usize,
    },
}

impl std::str::FromStr for PromptRule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!("prompt rule `{s}`: expected click, box, box:N or iterative:N (N >= 1)"))
        };
        Ok(match s.split_once(':') {
            None if s == "click" => PromptRule::Click,
            None if s == "box" => PromptRule::Box { jitter: 5 },
            Some(("box", n)) => PromptRule::Box { jitter: n.parse().map_err(|_| bad())? },
            Some(("iterative", n)) => match n.parse() {
                Ok(r) if r >= 1 => PromptRule::Iterative { rounds: r },
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        })
    }
}

impl std::fmt::Display for PromptRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PromptRule::Click => write!(f, "click"),
            PromptRule::Box { jitter } => write!(f, "box:{jitter}"),
            PromptRule::Iterative { rounds } => write!(f, "iterative:{rounds}"),
        }
    }
}

/// The tight box of `gt` (`[H, W]`) with each side moved outward by a uniform 0..=`jitter`
/// pixels, clipped to the image.
pub fn jittered_box<R: Rng + ?Sized>(gt: &Mask, jitter: u32, rng: &mut R) -> Result<BoxPrompt> {
    let b = tight_box(gt)?;
    let (h, w) = (gt.height()? as f32, gt.width()? as f32);
    let mut grow = || rng.random_range(0..=jitter) as f32;
    let x0 = (b.x0 - grow()).max(0.0);
    let y0 = (b.y0 - grow()).max(0.0);
    let x1 = (b.x1 + grow()).min(w - 1.0);
    let y1 = (b.y1 + grow()).min(h - 1.0);
    Ok(BoxPrompt { x0, y0, x1, y1 })
}

/// The first-round prompt of `rule` on `gt`.
pub fn first_prompt<R: Rng + ?Sized>(rule: PromptRule, gt: &Mask, rng: &mut R) -> Result<Prompt> {
    if !gt.any() {
        return Err(Error::Config("cannot prompt an empty mask".into()));
    }
    Ok(match rule {
        PromptRule::Box { jitter } => Prompt::bbox(jittered_box(gt, jitter, rng)?),
        PromptRule::Click | PromptRule::Iterative { .. } => {
            let p = random_points(gt, 1, rng)?;
            Prompt::points(p.iter().map(|p| Point { x: p.x, y: p.y, foreground: p.is_positive() }).collect())
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn jittered_boxes_contain_the_tight_box_and_stay_inside() {
        let gt = Mask::from_fn(&[20, 30], |i| (5..9).contains(&i[0]) && (1..28).contains(&i[1])).unwrap();
        let t = tight_box(&gt).unwrap();
        let mut rng = medsa_eval::prompts::case_rng(3, 4);
        let mut moved = false;
        for _ in 0..100 {
            let b = jittered_box(&gt, 5, &mut rng).unwrap();
            assert!(b.x0 <= t.x0 && b.y0 <= t.y0 && b.x1 >= t.x1 && b.y1 >= t.y1);
            assert!(b.x0 >= 0.0 && b.y0 >= 0.0 && b.x1 <= 29.0 && b.y1 <= 19.0);
            assert!(t.x0 - b.x0 <= 5.0 && b.y1 - t.y1 <= 5.0);
            moved |= b.y0 != t.y0;
        }
        assert!(moved, "the jitter moves sides");
        assert_eq!(jittered_box(&gt, 0, &mut rng).unwrap().x0, t.x0);
    }

    #[test]
    fn rules_parse_and_print() {
        for s in ["click", "box:5", "box:0", "iterative:3"] {
            assert_eq!(s.parse::<PromptRule>().unwrap().to_string(), s);
        }
        assert_eq!("box".parse::<PromptRule>().unwrap(), PromptRule::Box { jitter: 5 });
        for bad in ["", "boxes", "box:-1", "iterative:0", "click:2"] {
            assert!(bad.parse::<PromptRule>().is_err(), "{bad}");
        }
        let empty = Mask::zeros(&[4, 4]).unwrap();
        assert!(first_prompt(PromptRule::Click, &empty, &mut medsa_eval::prompts::case_rng(0, 0)).is_err());
    }
}
