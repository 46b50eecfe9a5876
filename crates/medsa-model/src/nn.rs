//! Small building blocks shared by the encoder and decoder: linear layers, layer norms, MLPs and
//! the Med-SA bottleneck adapter.

use crate::config::Activation;
use crate::weights::WeightLoader;
use crate::Result;
use medsa_core::{Backend, Conv2d, Tensor};
use std::collections::BTreeMap;

/// `y = x Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub w: Tensor,
    /// `[out]`.
    pub b: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` `[out, in]` and, with `bias`, `{prefix}.bias`.
    pub fn load(wl: &mut WeightLoader, prefix: &str, inp: usize, out: usize, bias: bool) -> Self {
        Linear {
            w: wl.take(&format!("{prefix}.weight"), &[out, inp]),
            b: bias.then(|| wl.take(&format!("{prefix}.bias"), &[out])),
        }
    }
    /// Applies the layer over the last axis.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        Ok(be.linear(x, &self.w, self.b.as_ref())?)
    }
    /// The layer followed by `act`, fused where the backend can ([`Backend::linear_act`]).
    pub fn forward_act(&self, be: &dyn Backend, x: &Tensor, act: Activation) -> Result<Tensor> {
        Ok(be.linear_act(x, &self.w, self.b.as_ref(), act)?)
    }
    /// `r + s·layer(x)` into the residual stream `r`, fused where the backend can
    /// ([`Backend::linear_add`]).
    pub fn forward_add(&self, be: &dyn Backend, r: Tensor, x: &Tensor, s: f32) -> Result<Tensor> {
        Ok(be.linear_add(r, x, &self.w, self.b.as_ref(), s)?)
    }
    /// Number of parameters.
    pub fn params(&self) -> usize {
        self.w.numel() + self.b.as_ref().map_or(0, Tensor::numel)
    }
}

/// LayerNorm over the last axis (or over channels for [`LayerNorm::forward2d`]).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Scale.
    pub w: Tensor,
    /// Shift.
    pub b: Tensor,
    /// Epsilon inside the root.
    pub eps: f32,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias` of width `c`.
    pub fn load(wl: &mut WeightLoader, prefix: &str, c: usize, eps: f32) -> Self {
        LayerNorm {
            w: wl.take(&format!("{prefix}.weight"), &[c]),
            b: wl.take(&format!("{prefix}.bias"), &[c]),
            eps,
        }
    }
    /// Over the last axis.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        Ok(be.layer_norm(x, &self.w, &self.b, self.eps)?)
    }
    /// SAM's LayerNorm2d on `[B, C, H, W]`.
    pub fn forward2d(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        Ok(be.layer_norm2d(x, &self.w, &self.b, self.eps)?)
    }
}

/// Applies an activation.
pub fn activate(be: &dyn Backend, act: Activation, x: Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => be.gelu(x)?,
        Activation::Relu => be.relu(x)?,
    })
}

/// The Med-SA adapter `D_fc2(act(D_fc1(x)))` (spec 3.5); the skip, if any, is the caller's.
#[derive(Clone, Debug)]
pub struct Adapter {
    /// Down-projection.
    pub fc1: Linear,
    /// Up-projection.
    pub fc2: Linear,
    /// Bottleneck activation.
    pub act: Activation,
}

impl Adapter {
    /// Loads `{prefix}.D_fc1` / `{prefix}.D_fc2`.
    pub fn load(wl: &mut WeightLoader, prefix: &str, dim: usize, hidden: usize, act: Activation) -> Self {
        Adapter {
            fc1: Linear::load(wl, &format!("{prefix}.D_fc1"), dim, hidden, true),
            fc2: Linear::load(wl, &format!("{prefix}.D_fc2"), hidden, dim, true),
            act,
        }
    }
    /// `D_fc2(act(D_fc1(x)))`.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward_act(be, x, self.act)?;
        self.fc2.forward(be, &h)
    }
    /// `r + s·D_fc2(act(D_fc1(x)))`: the adapter added into the residual stream `r`.
    pub fn forward_add(&self, be: &dyn Backend, r: Tensor, x: &Tensor, s: f32) -> Result<Tensor> {
        let h = self.fc1.forward_act(be, x, self.act)?;
        self.fc2.forward_add(be, r, &h, s)
    }
    /// Number of parameters.
    pub fn params(&self) -> usize {
        self.fc1.params() + self.fc2.params()
    }
}

/// SAM's `MLP`: `layers.{i}` Linear layers with ReLU between them.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// The layers.
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// Loads `{prefix}.layers.{i}` for `depth` layers `inp → hidden … → out`.
    pub fn load(
        wl: &mut WeightLoader,
        prefix: &str,
        inp: usize,
        hidden: usize,
        out: usize,
        depth: usize,
    ) -> Self {
        let layers = (0..depth)
            .map(|i| {
                let a = if i == 0 { inp } else { hidden };
                let b = if i + 1 == depth { out } else { hidden };
                Linear::load(wl, &format!("{prefix}.layers.{i}"), a, b, true)
            })
            .collect();
        Mlp { layers }
    }
    /// Forward with ReLU after every layer but the last.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = if i + 1 < self.layers.len() {
                l.forward_act(be, &h, Activation::Relu)?
            } else {
                l.forward(be, &h)?
            };
        }
        Ok(h)
    }
}

/// SAM's neck (spec 3.7), shared by the ViT and TinyViT encoders: 1×1 conv (no bias),
/// LayerNorm2d, 3×3 conv (pad 1, no bias), LayerNorm2d.
#[derive(Clone, Debug)]
pub struct Neck {
    /// `neck.0` `[out, in, 1, 1]`.
    pub conv0: Tensor,
    /// `neck.1`.
    pub norm1: LayerNorm,
    /// `neck.2` `[out, out, 3, 3]`.
    pub conv2: Tensor,
    /// `neck.3`.
    pub norm3: LayerNorm,
}

impl Neck {
    /// Loads `{prefix}.neck.{0..3}` for `inp → out` channels.
    pub fn load(wl: &mut WeightLoader, prefix: &str, inp: usize, out: usize, eps: f32) -> Self {
        Neck {
            conv0: wl.take(&format!("{prefix}.neck.0.weight"), &[out, inp, 1, 1]),
            norm1: LayerNorm::load(wl, &format!("{prefix}.neck.1"), out, eps),
            conv2: wl.take(&format!("{prefix}.neck.2.weight"), &[out, out, 3, 3]),
            norm3: LayerNorm::load(wl, &format!("{prefix}.neck.3"), out, eps),
        }
    }
    /// `x [B, in, G, G]` → `[B, out, G, G]`.
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let h = be.conv2d(x, &self.conv0, None, Conv2d::new(1, 0))?;
        let h = self.norm1.forward2d(be, &h)?;
        let h = be.conv2d(&h, &self.conv2, None, Conv2d::new(1, 1))?;
        self.norm3.forward2d(be, &h)
    }
}

impl Neck {
    /// Places the neck's weights where `be` computes ([`place`]).
    pub fn place(&mut self, be: &dyn Backend) -> Result<()> {
        for t in [
            &mut self.conv0,
            &mut self.conv2,
            &mut self.norm1.w,
            &mut self.norm1.b,
            &mut self.norm3.w,
            &mut self.norm3.b,
        ] {
            place(be, t)?;
        }
        Ok(())
    }
}

/// Replaces `t` by its copy where `be` computes ([`Backend::upload`]): how a model's weights
/// are prepared once for a device backend.
pub fn place(be: &dyn Backend, t: &mut Tensor) -> Result<()> {
    *t = be.upload(t)?;
    Ok(())
}

/// Optional recorder of intermediate tensors under the golden files' names
/// (`enc.blocks.3`, `transformer.layers.0.queries`, ...), for parity checks.
#[derive(Default)]
pub struct Trace {
    enabled: bool,
    prefix: String,
    tensors: BTreeMap<String, Tensor>,
}

impl Trace {
    /// A recorder that keeps everything.
    pub fn enabled() -> Self {
        Trace { enabled: true, ..Default::default() }
    }
    /// A recorder that keeps nothing (the normal inference path).
    pub fn disabled() -> Self {
        Trace::default()
    }
    /// Names recorded from now on start with `prefix`.
    pub fn set_prefix(&mut self, prefix: &str) {
        self.prefix = prefix.to_string();
    }
    /// True if recording.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }
    /// The tensor recorded under `name` (prefix included), if any.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }
    /// Everything recorded, by name.
    pub fn into_tensors(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }
    /// Records `t` under `name` (a clone; nothing happens when disabled).
    pub fn record(&mut self, name: &str, t: &Tensor) {
        if self.enabled {
            self.tensors.insert(format!("{}{name}", self.prefix), t.clone());
        }
    }
}
