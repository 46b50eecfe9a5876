//! The ViT image encoder's forward with tape and its backward (spec 3.3-3.7): windowed and
//! global blocks with decomposed relative-position attention, padded windows, pad-before-norm,
//! the Space / MLP / Depth adapters, SD-Trans depth attention in both groupings, and the neck.
//!
//! The patch embedding and the position embedding are frozen and their input (the image) needs
//! no gradient, so the backward stops at the first block's input. With
//! [`Checkpointing::PerBlock`] the forward keeps only each block's input (and the last block's
//! tape, whose backward comes first) and the backward recomputes the other blocks' tapes from
//! them (activation checkpointing); either way no `Nq × Nk`
//! attention weights are kept, only each softmax row's log-sum-exp.

use crate::config::DepthSettings;
use crate::encoder::{Block, ImageEncoder};
use crate::nn::Trace;
use crate::train::layers::{
    adapter_backward, adapter_forward, neck_backward, neck_forward, AdapterTape, Ctx, NeckTape,
};
use crate::{Error, Result};
use medsa_core::backend::closest_numbers;
use medsa_core::{Backend, RelPos, ResizeMode, Tensor};

/// What the encoder forward keeps for its backward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checkpointing {
    /// Every block's tape (fastest, most memory).
    #[default]
    Off,
    /// Only each block's input (and the last block's tape); the backward recomputes the other
    /// blocks (about one more encoder forward).
    PerBlock,
}

/// One block's attention: the packed qkv, the per-head operands and the saved log-sum-exp.
struct AttnTape {
    normed: Tensor,
    qkv: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    merged: Tensor,
    tables: Option<(Tensor, Tensor)>,
}

struct DepthTape {
    nw: usize,
    tables: Option<(Tensor, Tensor)>,
    attn_out: Tensor,
    proj_out: Tensor,
    adapter: AdapterTape,
}

/// One block's tape.
struct BlockTape {
    xw: Option<Tensor>,
    padded: (usize, usize),
    attn: AttnTape,
    space: Option<AdapterTape>,
    depth: Option<DepthTape>,
    x1: Tensor,
    n: Tensor,
    lin1_out: Tensor,
    gelu: Tensor,
    mlp_adapter: Option<AdapterTape>,
}

/// What the encoder's backward needs.
pub struct EncoderTape {
    inputs: Vec<Tensor>,
    blocks: Vec<Option<BlockTape>>,
    neck: NeckTape,
    depth: Option<DepthSettings>,
}

fn block_forward(
    be: &dyn Backend,
    blk: &Block,
    x: &Tensor,
    depth: Option<DepthSettings>,
) -> Result<(Tensor, BlockTape)> {
    let (hh, ww) = (x.dim(1), x.dim(2));
    let pad_before_norm = blk.adapters.as_ref().is_some_and(|a| a.cfg.pad_before_norm);
    let (xw, padded) = match blk.window {
        Some(win) => {
            let (t, p) = be.window_partition(x, win)?;
            (Some(t), p)
        }
        None => (None, (hh, ww)),
    };
    let normed = match (blk.window, pad_before_norm) {
        (Some(_), true) => blk.norm1.forward(be, xw.as_ref().unwrap_or(x))?,
        (Some(win), false) => be.window_partition(&blk.norm1.forward(be, x)?, win)?.0,
        (None, _) => blk.norm1.forward(be, x)?,
    };
    let xw = if pad_before_norm { xw } else { None };
    let (mut h, attn) = attention_forward(be, blk, normed)?;
    let mut space = None;
    let mut dtape = None;
    if let Some(a) = &blk.adapters {
        let (s, t) = adapter_forward(be, &a.space, &h)?;
        h.add_assign(&s)?;
        space = Some(t);
        if let Some(d) = depth {
            let nw = match blk.window {
                Some(win) => (padded.0 / win) * (padded.1 / win),
                None => 1,
            };
            let (xd, t) = depth_forward(be, blk, &attn, nw, d, &a.depth)?;
            h.add_assign(&xd)?;
            dtape = Some(t);
        }
    } else if depth.is_some() {
        return Err(Error::Config("SD-Trans needs Med-SA adapter blocks (Depth_Adapter)".into()));
    }
    if let Some(win) = blk.window {
        h = be.window_unpartition(&h, win, padded, (hh, ww))?;
    }
    let x1 = x.add(&h)?;
    let n = blk.norm2.forward(be, &x1)?;
    let lin1_out = blk.lin1.forward(be, &n)?;
    let gelu = be.gelu_out(&lin1_out)?;
    let mut y = x1.add(&blk.lin2.forward(be, &gelu)?)?;
    let mut mlp_adapter = None;
    if let Some(a) = &blk.adapters {
        let (m, t) = adapter_forward(be, &a.mlp, &n)?;
        y.add_assign(&m.scale(a.cfg.mlp_scale))?;
        mlp_adapter = Some(t);
    }
    Ok((y, BlockTape { xw, padded, attn, space, depth: dtape, x1, n, lin1_out, gelu, mlp_adapter }))
}

/// SAM's attention on `normed [B', h, w, C]` with its tape (see `encoder::Attention::forward`).
fn attention_forward(be: &dyn Backend, blk: &Block, normed: Tensor) -> Result<(Tensor, AttnTape)> {
    let at = &blk.attn;
    let (b, h, w, c) = (normed.dim(0), normed.dim(1), normed.dim(2), normed.dim(3));
    let (nh, hd) = (at.num_heads, c / at.num_heads);
    let n = h * w;
    let qkv = at.qkv.forward(be, &normed)?.reshape(vec![b, n, 3, nh, hd])?;
    let parts = qkv.permute(&[2, 0, 3, 1, 4])?;
    let qkv = qkv.reshape(vec![b, h, w, 3 * c])?;
    let part = |i: usize| -> Result<Tensor> { Ok(parts.narrow(0, i, 1)?.reshape(vec![b * nh, n, hd])?) };
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    let tables = match &at.rel {
        Some((th, tw)) => Some((be.rel_pos_table(h, h, th)?, be.rel_pos_table(w, w, tw)?)),
        None => None,
    };
    let rel = tables.as_ref().map(|(rh, rw)| RelPos { rh, rw });
    let (o, lse) = be.attention_lse(&q, &k, &v, (hd as f32).powf(-0.5), rel)?;
    let merged =
        o.clone().reshape(vec![b, nh, h, w, hd])?.permute(&[0, 2, 3, 1, 4])?.reshape(vec![b, h, w, c])?;
    let y = at.proj.forward(be, &merged)?;
    Ok((y, AttnTape { normed, qkv, q, k, v, o, lse, merged, tables }))
}

fn depth_forward(
    be: &dyn Backend,
    blk: &Block,
    attn: &AttnTape,
    nw: usize,
    d: DepthSettings,
    adapter: &crate::nn::Adapter,
) -> Result<(Tensor, DepthTape)> {
    let normed = &attn.normed;
    let (n0, hh, ww, c) = (normed.dim(0), normed.dim(1), normed.dim(2), normed.dim(3));
    let (dh, dw) = closest_numbers(d.depth)?;
    // The depth branch shares norm1 and the qkv projection with the space branch.
    let qkv = attn.qkv.clone().reshape(vec![n0, hh * ww, 3 * c])?;
    let tables = match &blk.attn.rel {
        Some((th, tw)) => Some((be.rel_pos_table(dh, dh, th)?, be.rel_pos_table(dw, dw, tw)?)),
        None => None,
    };
    let rel = tables.as_ref().map(|(rh, rw)| RelPos { rh, rw });
    let scale = ((c / blk.attn.num_heads) as f32).powf(-0.5);
    let attn_out = be.depth_attention(&qkv, blk.attn.num_heads, d.depth, nw, d.grouping, rel, scale)?;
    let proj_out = blk.attn.proj.forward(be, &attn_out)?;
    let (y, adapter) = adapter_forward(be, adapter, &proj_out)?;
    Ok((y.reshape(vec![n0, hh, ww, c])?, DepthTape { nw, tables, attn_out, proj_out, adapter }))
}

/// Backward of one block: the gradient of its input, or `None` without `need_dx` (the lowest
/// block that trains: then only what its trainable parameters need is computed).
#[allow(clippy::too_many_arguments)]
fn block_backward(
    c: &mut Ctx<'_>,
    blk: &Block,
    p: &str,
    x: &Tensor,
    t: &BlockTape,
    dy: &Tensor,
    depth: Option<DepthSettings>,
    need_dx: bool,
) -> Result<Option<Tensor>> {
    let be = c.be;
    let (hh, ww) = (x.dim(1), x.dim(2));
    // MLP and MLP_Adapter on n = norm2(x1); x1 gets the residual.
    let dgelu = c.linear(&blk.lin2, &format!("{p}.mlp.lin2"), &t.gelu, dy)?;
    let dlin1 = be.gelu_backward(&t.lin1_out, dgelu)?;
    let mut dn = c.linear(&blk.lin1, &format!("{p}.mlp.lin1"), &t.n, &dlin1)?;
    if let (Some(a), Some(at)) = (&blk.adapters, &t.mlp_adapter) {
        let ds = dy.clone().scale(a.cfg.mlp_scale);
        dn.add_assign(&adapter_backward(c, &a.mlp, &format!("{p}.MLP_Adapter"), at, &ds)?)?;
    }
    let mut dx1 = dy.add(&c.norm(&blk.norm2, &format!("{p}.norm2"), &t.x1, &dn)?)?;
    // Attention branch: x1 = x + unpartition(h).
    let dh = match blk.window {
        Some(win) => be.window_partition(&dx1, win)?.0,
        None => dx1.clone(),
    };
    let mut dattn = dh.clone();
    if let (Some(a), Some(st)) = (&blk.adapters, &t.space) {
        dattn.add_assign(&adapter_backward(c, &a.space, &format!("{p}.Space_Adapter"), st, &dh)?)?;
    }
    let below = ["norm1.", "attn."].iter().any(|n| c.tr.any_under(&format!("{p}.{n}")));
    if !need_dx && !below {
        // Nothing under the attention output trains and nothing below this block needs a
        // gradient: only the Depth_Adapter's own parameters are left.
        if let (Some(a), Some(dt)) = (&blk.adapters, &t.depth) {
            let dd = dh.reshape(dt.proj_out.shape().to_vec())?;
            adapter_backward(c, &a.depth, &format!("{p}.Depth_Adapter"), &dt.adapter, &dd)?;
        }
        return Ok(None);
    }
    let mut dqkv = attention_backward(c, blk, p, &t.attn, &dattn)?;
    if let (Some(a), Some(dt), Some(d)) = (&blk.adapters, &t.depth, depth) {
        let dd = dh.clone().reshape(dt.proj_out.shape().to_vec())?;
        let dproj = adapter_backward(c, &a.depth, &format!("{p}.Depth_Adapter"), &dt.adapter, &dd)?;
        let dattn_out = c.linear(&blk.attn.proj, &format!("{p}.attn.proj"), &dt.attn_out, &dproj)?;
        let (n0, c3) = (t.attn.qkv.dim(0), t.attn.qkv.last_dim());
        let qkv = t.attn.qkv.clone().reshape(vec![n0, t.attn.qkv.numel() / (n0 * c3).max(1), c3])?;
        let rel = dt.tables.as_ref().map(|(rh, rw)| RelPos { rh, rw });
        let scale = ((c3 / 3 / blk.attn.num_heads) as f32).powf(-0.5);
        let g = be.depth_attention_backward(
            &qkv,
            blk.attn.num_heads,
            d.depth,
            dt.nw,
            d.grouping,
            rel,
            scale,
            &dattn_out,
        )?;
        dqkv.add_assign(&g.reshape(dqkv.shape().to_vec())?)?;
    }
    let dnormed = c.linear(&blk.attn.qkv, &format!("{p}.attn.qkv"), &t.attn.normed, &dqkv)?;
    // norm1 before or after the window padding.
    let dxn = match (blk.window, &t.xw) {
        (Some(win), Some(xw)) => {
            let d = c.norm(&blk.norm1, &format!("{p}.norm1"), xw, &dnormed)?;
            be.window_unpartition(&d, win, t.padded, (hh, ww))?
        }
        (Some(win), None) => {
            let d = be.window_unpartition(&dnormed, win, t.padded, (hh, ww))?;
            c.norm(&blk.norm1, &format!("{p}.norm1"), x, &d)?
        }
        (None, _) => c.norm(&blk.norm1, &format!("{p}.norm1"), x, &dnormed)?,
    };
    dx1.add_assign(&dxn)?;
    Ok(Some(dx1))
}

/// Backward of [`attention_forward`] up to the qkv projection's output: `dqkv` `[B', h, w, 3C]`.
fn attention_backward(c: &mut Ctx<'_>, blk: &Block, p: &str, t: &AttnTape, dy: &Tensor) -> Result<Tensor> {
    let at = &blk.attn;
    let (b, h, w, ch) = (t.normed.dim(0), t.normed.dim(1), t.normed.dim(2), t.normed.dim(3));
    let (nh, hd) = (at.num_heads, ch / at.num_heads);
    let dmerged = c.linear(&at.proj, &format!("{p}.attn.proj"), &t.merged, dy)?;
    let dout = dmerged.reshape(vec![b, h, w, nh, hd])?.permute(&[0, 3, 1, 2, 4])?.reshape(vec![
        b * nh,
        h * w,
        hd,
    ])?;
    let rel = t.tables.as_ref().map(|(rh, rw)| RelPos { rh, rw });
    let g = c.be.attention_backward(&t.q, &t.k, &t.v, (hd as f32).powf(-0.5), rel, &t.o, &t.lse, &dout)?;
    // [3, B, nh, N, hd] → [B, N, 3, nh, hd].
    let parts = [&g.dq, &g.dk, &g.dv];
    let stacked = Tensor::cat(&parts, 0)?.reshape(vec![3, b, nh, h * w, hd])?;
    Ok(stacked.permute(&[1, 3, 0, 2, 4])?.reshape(vec![b, h, w, 3 * ch])?)
}

/// The encoder on preprocessed images `x [N, 3, S, S]` (with SD-Trans when `depth` is set):
/// the embedding `[N, 256, G, G]` and a tape for [`encoder_backward`]. Block outputs are
/// recorded in `trace` under the golden names.
pub fn encoder_forward(
    be: &dyn Backend,
    enc: &ImageEncoder,
    x: &Tensor,
    depth: Option<DepthSettings>,
    checkpointing: Checkpointing,
    trace: &mut Trace,
) -> Result<(Tensor, EncoderTape)> {
    let mut h = enc.patch_embed(be, x)?;
    if let Some(pe) = &enc.pos_embed {
        let g = enc.cfg.grid();
        let pe = if pe.dim(1) == g {
            pe.clone()
        } else {
            be.resize(&pe.permute(&[0, 3, 1, 2])?, (g, g), ResizeMode::Bicubic)?.permute(&[0, 2, 3, 1])?
        };
        let table = pe.shape()[1..].to_vec();
        h.add_broadcast_assign(&pe.reshape(table)?)?;
    }
    let mut inputs = Vec::with_capacity(enc.blocks.len());
    let mut blocks = Vec::with_capacity(enc.blocks.len());
    for (i, blk) in enc.blocks.iter().enumerate() {
        let name = format!("enc.blocks.{i}");
        let (y, tape) = match checkpointing {
            Checkpointing::Off => {
                let (y, t) = block_forward(be, blk, &h, depth)?;
                (y, Some(t))
            }
            // The last block's backward runs first, right after the neck's: recomputing its
            // tape would save no memory at the peak, only time.
            Checkpointing::PerBlock if i + 1 == enc.blocks.len() => {
                let (y, t) = block_forward(be, blk, &h, depth)?;
                (y, Some(t))
            }
            // The inference forward: the same ops in the same order, without a tape.
            Checkpointing::PerBlock => (blk.forward(be, &h, depth, &mut Trace::disabled(), &name)?, None),
        };
        inputs.push(std::mem::replace(&mut h, y));
        blocks.push(tape);
        trace.record(&name, &h);
    }
    let (emb, neck) = neck_forward(be, &enc.neck, h.permute(&[0, 3, 1, 2])?)?;
    Ok((emb, EncoderTape { inputs, blocks, neck, depth }))
}

/// Backward of [`encoder_forward`] from the embedding gradient `demb [N, 256, G, G]`: adds the
/// trainable block parameters' gradients and returns the gradient of each block's output
/// `[N, G, G, C]` in block order (the golden files' `out.grad.enc.blocks.<i>`) when
/// `every_block` asks for them (all `None` otherwise). Without `every_block` the backward
/// stops inside the lowest block with a trainable parameter.
pub fn encoder_backward(
    c: &mut Ctx<'_>,
    enc: &ImageEncoder,
    t: &EncoderTape,
    demb: &Tensor,
    every_block: bool,
) -> Result<Vec<Option<Tensor>>> {
    let be = c.be;
    let mut dh = neck_backward(be, &enc.neck, &t.neck, demb)?.permute(&[0, 2, 3, 1])?;
    let nb = enc.blocks.len();
    let lowest = (0..nb).find(|i| c.tr.any_under(&format!("image_encoder.blocks.{i}."))).unwrap_or(nb);
    let mut outs = vec![None; nb];
    for i in (0..nb).rev() {
        if every_block {
            outs[i] = Some(dh.clone());
        }
        if i < lowest && !(every_block && i > 0) {
            break;
        }
        let need_dx = i > lowest || (every_block && i > 0);
        let recomputed;
        let tape = match &t.blocks[i] {
            Some(tape) => tape,
            None => {
                recomputed = block_forward(be, &enc.blocks[i], &t.inputs[i], t.depth)?.1;
                &recomputed
            }
        };
        let name = format!("image_encoder.blocks.{i}");
        match block_backward(c, &enc.blocks[i], &name, &t.inputs[i], tape, &dh, t.depth, need_dx)? {
            Some(d) => dh = d,
            None => break,
        }
    }
    Ok(outs)
}
