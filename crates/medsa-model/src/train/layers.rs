//! Forward-with-tape and backward of the small building blocks shared by the encoder and the
//! decoder: linear layers, layer norms, the Med-SA adapter, SAM's MLP, the decoder's multi-head
//! attention in the spec's direct order, and SAM's neck. Each forward returns its output and a
//! tape of what its backward needs; each backward takes the tape and the output gradient, adds
//! the gradients of trainable parameters to [`Grads`] and returns the input gradient.

use crate::config::Activation;
use crate::decoder::DecoderAttention;
use crate::nn::{activate, Adapter, LayerNorm, Linear, Mlp, Neck};
use crate::train::params::{Grads, Trainable};
use crate::Result;
use medsa_core::{Backend, Conv2d, Tensor};

/// What a backward pass writes to: the backend, the trainable set and the gradients.
pub struct Ctx<'a> {
    /// The backend.
    pub be: &'a dyn Backend,
    /// Which parameters get gradients.
    pub tr: &'a Trainable,
    /// The gradients.
    pub grads: &'a mut Grads,
}

impl Ctx<'_> {
    /// Backward of `l` at input `x` (named `name`): the input gradient; parameter gradients
    /// when `name.weight` / `name.bias` train.
    pub fn linear(&mut self, l: &Linear, name: &str, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let (tw, tb) = (self.tr.contains(&wn), l.b.is_some() && self.tr.contains(&bn));
        let g = self.be.linear_backward(x, &l.w, dy, tw || tb)?;
        if let (true, Some(dw)) = (tw, g.dw) {
            self.grads.add(wn, dw)?;
        }
        if let (true, Some(db)) = (tb, g.db) {
            self.grads.add(bn, db)?;
        }
        Ok(g.dx)
    }

    /// Backward of the LayerNorm `n` at input `x`.
    pub fn norm(&mut self, n: &LayerNorm, name: &str, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let (tw, tb) = (self.tr.contains(&wn), self.tr.contains(&bn));
        let g = self.be.layer_norm_backward(x, &n.w, n.eps, dy, tw || tb)?;
        if let (true, Some(dw)) = (tw, g.dw) {
            self.grads.add(wn, dw)?;
        }
        if let (true, Some(db)) = (tb, g.db) {
            self.grads.add(bn, db)?;
        }
        Ok(g.dx)
    }

    /// Adds a parameter gradient if `name` trains.
    pub fn param(&mut self, name: String, g: impl FnOnce() -> Result<Tensor>) -> Result<()> {
        if self.tr.contains(&name) {
            self.grads.add(name, g()?)?;
        }
        Ok(())
    }
}

/// Backward of an activation at its input `x` (GELU) or output `y` (ReLU).
pub fn activation_backward(
    be: &dyn Backend,
    act: Activation,
    x: &Tensor,
    y: &Tensor,
    dy: Tensor,
) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => be.gelu_backward(x, dy)?,
        Activation::Relu => be.relu_backward(y, dy)?,
    })
}

/// What [`Adapter`]'s backward needs: its input, the bottleneck before and after the activation.
pub struct AdapterTape {
    x: Tensor,
    pre: Tensor,
    act: Tensor,
}

/// `D_fc2(act(D_fc1(x)))` with its tape.
pub fn adapter_forward(be: &dyn Backend, a: &Adapter, x: &Tensor) -> Result<(Tensor, AdapterTape)> {
    let pre = a.fc1.forward(be, x)?;
    let act = activate(be, a.act, pre.clone())?;
    let y = a.fc2.forward(be, &act)?;
    Ok((y, AdapterTape { x: x.clone(), pre, act }))
}

/// Backward of [`adapter_forward`] (named `name`: `...Space_Adapter`).
pub fn adapter_backward(
    c: &mut Ctx<'_>,
    a: &Adapter,
    name: &str,
    t: &AdapterTape,
    dy: &Tensor,
) -> Result<Tensor> {
    let da = c.linear(&a.fc2, &format!("{name}.D_fc2"), &t.act, dy)?;
    let dpre = activation_backward(c.be, a.act, &t.pre, &t.act, da)?;
    c.linear(&a.fc1, &format!("{name}.D_fc1"), &t.x, &dpre)
}

/// SAM's MLP tape: each layer's input, and the last pre-ReLU outputs' ReLU results.
pub struct MlpTape {
    inputs: Vec<Tensor>,
}

/// SAM's [`Mlp`] (ReLU between layers) with its tape.
pub fn mlp_forward(be: &dyn Backend, m: &Mlp, x: &Tensor) -> Result<(Tensor, MlpTape)> {
    let mut inputs = Vec::with_capacity(m.layers.len());
    let mut h = x.clone();
    for (i, l) in m.layers.iter().enumerate() {
        let y = l.forward(be, &h)?;
        inputs.push(h);
        h = if i + 1 < m.layers.len() { be.relu(y)? } else { y };
    }
    Ok((h, MlpTape { inputs }))
}

/// Backward of [`mlp_forward`] (named `name`, layers `name.layers.{i}`).
pub fn mlp_backward(c: &mut Ctx<'_>, m: &Mlp, name: &str, t: &MlpTape, dy: &Tensor) -> Result<Tensor> {
    let mut d = dy.clone();
    for (i, l) in m.layers.iter().enumerate().rev() {
        if i + 1 < m.layers.len() {
            // The input of layer i + 1 is ReLU(output of layer i).
            d = c.be.relu_backward(&t.inputs[i + 1], d)?;
        }
        d = c.linear(l, &format!("{name}.layers.{i}"), &t.inputs[i], &d)?;
    }
    Ok(d)
}

/// `[B, N, H·hd]` → `[B·H, N, hd]`.
fn split_heads(t: Tensor, h: usize) -> Result<Tensor> {
    let (b, n, c) = (t.dim(0), t.dim(1), t.dim(2));
    Ok(t.reshape(vec![b, n, h, c / h])?.permute(&[0, 2, 1, 3])?.reshape(vec![b * h, n, c / h])?)
}

/// `[B·H, N, hd]` → `[B, N, H·hd]`.
fn merge_heads(t: Tensor, b: usize) -> Result<Tensor> {
    let (bh, n, hd) = (t.dim(0), t.dim(1), t.dim(2));
    let h = bh / b.max(1);
    Ok(t.reshape(vec![b, h, n, hd])?.permute(&[0, 2, 1, 3])?.reshape(vec![b, n, h * hd])?)
}

/// What [`DecoderAttention`]'s backward needs (the spec's direct order: project, attend,
/// project), its inputs included: callers hand them over and borrow them back
/// ([`AttentionTape::inputs`]) instead of keeping copies.
pub struct AttentionTape {
    q_in: Tensor,
    k_in: Tensor,
    v_in: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    merged: Tensor,
}

impl AttentionTape {
    /// The forward's inputs `(q, k, v)`.
    pub fn inputs(&self) -> (&Tensor, &Tensor, &Tensor) {
        (&self.q_in, &self.k_in, &self.v_in)
    }
}

/// The decoder attention `q [B, Nq, D]`, `k, v [B, Nk, D]` → `[B, Nq, D]` with its tape.
pub fn attention_forward(
    be: &dyn Backend,
    a: &DecoderAttention,
    q_in: Tensor,
    k_in: Tensor,
    v_in: Tensor,
) -> Result<(Tensor, AttentionTape)> {
    let h = a.num_heads;
    let hd = a.q.w.dim(0) / h;
    let q = split_heads(a.q.forward(be, &q_in)?, h)?;
    let k = split_heads(a.k.forward(be, &k_in)?, h)?;
    let v = split_heads(a.v.forward(be, &v_in)?, h)?;
    let (o, lse) = be.attention_lse(&q, &k, &v, 1.0 / (hd as f32).sqrt(), None)?;
    let merged = merge_heads(o.clone(), q_in.dim(0))?;
    let y = a.out.forward(be, &merged)?;
    Ok((y, AttentionTape { q_in, k_in, v_in, q, k, v, o, lse, merged }))
}

/// Backward of [`attention_forward`] (named `name`): the gradients of `(q_in, k_in, v_in)`.
pub fn attention_backward(
    c: &mut Ctx<'_>,
    a: &DecoderAttention,
    name: &str,
    t: &AttentionTape,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let h = a.num_heads;
    let b = t.q_in.dim(0);
    let hd = a.q.w.dim(0) / h;
    let dmerged = c.linear(&a.out, &format!("{name}.out_proj"), &t.merged, dy)?;
    let dout = split_heads(dmerged, h)?;
    let g = c.be.attention_backward(&t.q, &t.k, &t.v, 1.0 / (hd as f32).sqrt(), None, &t.o, &t.lse, &dout)?;
    let dq = c.linear(&a.q, &format!("{name}.q_proj"), &t.q_in, &merge_heads(g.dq, b)?)?;
    let dk = c.linear(&a.k, &format!("{name}.k_proj"), &t.k_in, &merge_heads(g.dk, b)?)?;
    let dv = c.linear(&a.v, &format!("{name}.v_proj"), &t.v_in, &merge_heads(g.dv, b)?)?;
    Ok((dq, dk, dv))
}

/// What the neck's backward needs: its input and each layer's input after the first.
pub struct NeckTape {
    x: Tensor,
    c0: Tensor,
    n1: Tensor,
    c2: Tensor,
}

/// SAM's neck (frozen) on `x [B, C, G, G]` with its tape.
pub fn neck_forward(be: &dyn Backend, n: &Neck, x: Tensor) -> Result<(Tensor, NeckTape)> {
    let c0 = be.conv2d(&x, &n.conv0, None, Conv2d::new(1, 0))?;
    let n1 = n.norm1.forward2d(be, &c0)?;
    let c2 = be.conv2d(&n1, &n.conv2, None, Conv2d::new(1, 1))?;
    let y = n.norm3.forward2d(be, &c2)?;
    Ok((y, NeckTape { x, c0, n1, c2 }))
}

/// LayerNorm2d backward through the channels-last row norm (no parameter gradients).
fn norm2d_backward(be: &dyn Backend, n: &LayerNorm, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let g =
        be.layer_norm_backward(&x.permute(&[0, 2, 3, 1])?, &n.w, n.eps, &dy.permute(&[0, 2, 3, 1])?, false)?;
    Ok(g.dx.permute(&[0, 3, 1, 2])?)
}

/// The gradient of the neck's input for the embedding gradient `dy [B, 256, G, G]`.
pub fn neck_backward(be: &dyn Backend, n: &Neck, t: &NeckTape, dy: &Tensor) -> Result<Tensor> {
    let d = norm2d_backward(be, &n.norm3, &t.c2, dy)?;
    let d = be.conv2d_backward(&t.n1, &n.conv2, Conv2d::new(1, 1), &d, false)?.dx;
    let d = norm2d_backward(be, &n.norm1, &t.c0, &d)?;
    Ok(be.conv2d_backward(&t.x, &n.conv0, Conv2d::new(1, 0), &d, false)?.dx)
}
