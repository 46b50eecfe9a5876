//! The paper's decoder adapters (spec 5.4): HyP-Adpt, whose bottleneck weights are generated
//! from the pooled prompt, and the MLP / Image adapters beside it in each two-way layer.

use crate::config::HypConfig;
use crate::nn::{Adapter, Linear};
use crate::prompt::PromptEmbeddings;
use crate::weights::WeightLoader;
use crate::Result;
use medsa_core::{Activation, Backend, Tensor};

/// HyP-Adpt (spec 5.4): weights generated from the prompt, applied on a bottleneck.
#[derive(Clone, Debug)]
pub struct HyperPromptAdapter {
    /// Down-projection D → r.
    pub down: Linear,
    /// Weight generator, hidden layer D → gen_hidden (ReLU after it); checkpoint `gen.0`.
    pub generator_hidden: Linear,
    /// Weight generator, output layer gen_hidden → N·r·r; checkpoint `gen.2`.
    pub generator_out: Linear,
    /// LayerNorm weights of the N generated layers, stacked `[N, r]`.
    pub gamma: Tensor,
    /// LayerNorm biases, stacked `[N, r]`.
    pub beta: Tensor,
    /// Up-projection r → D (zero-initialised in training).
    pub up: Linear,
    /// Settings.
    pub cfg: HypConfig,
}

impl HyperPromptAdapter {
    pub(super) fn load(wl: &mut WeightLoader, p: &str, d: usize, cfg: &HypConfig) -> Self {
        let r = cfg.r;
        HyperPromptAdapter {
            down: Linear::load(wl, &format!("{p}.D_fc1"), d, r, true),
            generator_hidden: Linear::load(wl, &format!("{p}.gen.0"), d, cfg.gen_hidden, true),
            generator_out: Linear::load(
                wl,
                &format!("{p}.gen.2"),
                cfg.gen_hidden,
                cfg.n_layers * r * r,
                true,
            ),
            gamma: stack((0..cfg.n_layers).map(|i| wl.take(&format!("{p}.norms.{i}.weight"), &[r]))),
            beta: stack((0..cfg.n_layers).map(|i| wl.take(&format!("{p}.norms.{i}.bias"), &[r]))),
            up: Linear::load(wl, &format!("{p}.D_fc2"), r, d, true),
            cfg: cfg.clone(),
        }
    }

    /// Generated weights `[B, N, r, r]` for the pooled prompt vectors `e [B, D]`.
    pub fn generate(&self, be: &dyn Backend, e: &Tensor) -> Result<Tensor> {
        let h = self.generator_hidden.forward_act(be, e, Activation::Relu)?;
        let w = self.generator_out.forward(be, &h)?;
        let r = self.cfg.r;
        Ok(w.reshape(vec![e.dim(0), self.cfg.n_layers, r, r])?)
    }

    /// `a [B, T, D]` with weights `w [B, N, r, r]` → `[B, T, D]`:
    /// `up(chain(down(a)))`, chain = N × (per-set matmul, LayerNorm, ReLU) as one backend op.
    pub fn forward(&self, be: &dyn Backend, a: &Tensor, w: &Tensor) -> Result<Tensor> {
        let d = self.down.forward(be, a)?;
        let d = be.hyper_chain(&d, w, &self.gamma, &self.beta, self.cfg.norm_eps)?;
        self.up.forward(be, &d)
    }
}

/// The paper's three decoder adapters of one two-way layer.
#[derive(Clone, Debug)]
pub struct DecoderAdapters {
    /// HyP-Adpt after the token→image cross-attention.
    pub hyp: HyperPromptAdapter,
    /// Parallel to the MLP, scaled.
    pub mlp: Adapter,
    /// After the image→token residual.
    pub image: Adapter,
}

/// Stacks `[r]` tensors into `[N, r]` (empty placeholders stay empty in a dry run).
fn stack(parts: impl Iterator<Item = Tensor>) -> Tensor {
    let parts: Vec<Tensor> = parts.collect();
    let n = parts.len();
    let data: Vec<f32> = parts.iter().flat_map(|t| t.data().iter().copied()).collect();
    let r = data.len() / n.max(1);
    Tensor::new(vec![n, r], data).unwrap_or_else(|_| Tensor::new(vec![0], Vec::new()).expect("empty tensor"))
}

/// Mean of the valid sparse tokens per prompt set, `[B, D]` (golden README 5.3); a set without
/// valid tokens gets zeros.
pub fn pooled_prompt(p: &PromptEmbeddings) -> Result<Tensor> {
    let (b, ns, d) = (p.sparse.dim(0), p.sparse.dim(1), p.sparse.dim(2));
    let mut e = vec![0f32; b * d];
    for s in 0..b {
        let mut count = 0usize;
        for t in 0..ns {
            if p.valid[s * ns + t] {
                count += 1;
                let row = &p.sparse.data()[(s * ns + t) * d..(s * ns + t + 1) * d];
                e[s * d..(s + 1) * d].iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
        }
        if count > 0 {
            e[s * d..(s + 1) * d].iter_mut().for_each(|v| *v /= count as f32);
        }
    }
    Ok(Tensor::new(vec![b, d], e)?)
}
