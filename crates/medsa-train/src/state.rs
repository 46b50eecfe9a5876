//! The resumable state of a run (`state.safetensors` in the run folder): the trainable tensors
//! (`param:NAME`), the optimizer moments and step counts (`optim:NAME.exp_avg`, ...), and in the
//! header the optimizer step, the best validation score so far, the base checkpoint's sha256 and
//! the run's settings. Every random draw of a run is a function of the seed, the epoch and the
//! position in the epoch, so the step is all the random state there is: resuming at step `s`
//! continues exactly where an uninterrupted run would be.

use crate::{Error, Result};
use medsa_core::Tensor;
use medsa_model::train::optim::Optimizer;
use medsa_model::train::params::{visit_trainable, Trainable};
use medsa_model::weights::{parse_safetensors, write_safetensors};
use medsa_model::Sam;
use std::collections::HashMap;
use std::path::Path;

/// Header format tag.
pub const FORMAT: &str = "medsa-train-state/1";

/// A run's state at an optimizer step.
#[derive(Clone, Debug)]
pub struct RunState {
    /// Optimizer steps taken.
    pub step: u64,
    /// The settings the run was started with (JSON; a resume must use the same).
    pub settings: String,
    /// sha256 of the base checkpoint.
    pub base_sha256: String,
    /// Best validation mean Dice so far and the step it was reached at.
    pub best: Option<(f64, u64)>,
    /// Trainable tensors.
    pub params: Vec<(String, Tensor)>,
    /// Optimizer state ([`Optimizer::state`]).
    pub optim: Vec<(String, Tensor)>,
}

impl RunState {
    /// The state of `model`'s `trainable` tensors and `opt` at `step`.
    pub fn capture(
        model: &mut Sam,
        trainable: &Trainable,
        opt: &Optimizer,
        step: u64,
        settings: &str,
        base_sha256: &str,
        best: Option<(f64, u64)>,
    ) -> Result<RunState> {
        let mut params = Vec::new();
        visit_trainable(model, &mut |n, t| {
            if trainable.contains(n) {
                params.push((n.to_string(), t.clone()));
            }
            Ok(())
        })?;
        Ok(RunState {
            step,
            settings: settings.into(),
            base_sha256: base_sha256.into(),
            best,
            params,
            optim: opt.state(),
        })
    }

    /// Writes the state (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> =
            self.params.iter().map(|(n, t)| (format!("param:{n}"), t.clone())).collect();
        tensors.extend(self.optim.iter().map(|(n, t)| (format!("optim:{n}"), t.clone())));
        let mut h = HashMap::new();
        h.insert("format".into(), FORMAT.into());
        h.insert("step".into(), self.step.to_string());
        h.insert("settings".into(), self.settings.clone());
        h.insert("base_sha256".into(), self.base_sha256.clone());
        if let Some((d, s)) = self.best {
            h.insert("best_dice".into(), format!("{d:?}"));
            h.insert("best_step".into(), s.to_string());
        }
        Ok(write_safetensors(path, &tensors, Some(h))?)
    }

    /// Reads a state written by [`RunState::save`]; anything else is [`Error::Run`].
    pub fn load(path: &Path) -> Result<RunState> {
        let bad = |msg: String| Error::Run { path: path.into(), msg };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read the run state: {e}")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("corrupt run state: {e}")))?;
        let h = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| h.get(k).cloned().ok_or_else(|| bad(format!("run state has no `{k}`")));
        if field("format")? != FORMAT {
            return Err(bad(format!("not a {FORMAT} file")));
        }
        let step = field("step")?.parse().map_err(|_| bad("`step` is not a number".into()))?;
        let best = match (h.get("best_dice"), h.get("best_step")) {
            (Some(d), Some(s)) => Some((
                d.parse().map_err(|_| bad("`best_dice` is not a number".into()))?,
                s.parse().map_err(|_| bad("`best_step` is not a number".into()))?,
            )),
            _ => None,
        };
        let tensors = parse_safetensors(&bytes).map_err(|e| bad(format!("corrupt run state: {e}")))?;
        let (mut params, mut optim) = (Vec::new(), Vec::new());
        for (n, t) in tensors {
            if let Some(p) = n.strip_prefix("param:") {
                params.push((p.to_string(), t));
            } else if let Some(o) = n.strip_prefix("optim:") {
                optim.push((o.to_string(), t));
            } else {
                return Err(bad(format!("unexpected tensor `{n}` in the run state")));
            }
        }
        Ok(RunState {
            step,
            settings: field("settings")?,
            base_sha256: field("base_sha256")?,
            best,
            params,
            optim,
        })
    }

    /// Puts the saved tensors into `model` and the saved moments into `opt`. The trainable set
    /// must be the saved one, tensor for tensor and shape for shape.
    pub fn restore(
        &self,
        model: &mut Sam,
        trainable: &Trainable,
        opt: &mut Optimizer,
        path: &Path,
    ) -> Result<()> {
        let bad = |msg: String| Error::Run { path: path.into(), msg };
        let saved: HashMap<&str, &Tensor> = self.params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        if saved.len() != trainable.len() || trainable.names().any(|n| !saved.contains_key(n)) {
            return Err(bad(format!(
                "the run state holds {} trainable tensors that are not this run's {} (another trainable rule or model?)",
                saved.len(),
                trainable.len()
            )));
        }
        let mut shapes = Vec::new();
        visit_trainable(model, &mut |n, t| {
            if let Some(s) = saved.get(n) {
                if s.shape() != t.shape() {
                    return Err(medsa_model::Error::Config(format!(
                        "{n}: {:?} in the run state, {:?} in the model",
                        s.shape(),
                        t.shape()
                    )));
                }
                shapes.push((n.to_string(), t.shape().to_vec()));
            }
            Ok(())
        })
        .map_err(|e| bad(e.to_string()))?;
        opt.load_state(&self.optim, &shapes)?;
        visit_trainable(model, &mut |n, t| {
            if let Some(s) = saved.get(n) {
                *t = (*s).clone();
            }
            Ok(())
        })?;
        Ok(())
    }
}
