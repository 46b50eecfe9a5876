//! LiteMedSAM's TinyViT encoder with its forward-with-tape and backward, far enough to train the
//! Med-SA adapters inside its attention blocks ([`crate::tiny_vit`] module docs: placement).
//!
//! The convolutional layer 0 and its `PatchMerging` run without a tape (nothing there trains and
//! the image needs no gradient); from layer 1 on every attention block and downsample keeps its
//! tape, and the backward runs from the neck down to the lowest block with a trainable parameter.
//! TinyViT's window attention has a constant per-head bias and at most 196 tokens per window, so
//! its weights are kept (`[windows·heads, N, N]`) and reversed with
//! [`medsa_core::Backend::softmax_backward`].

use crate::tiny_vit::{PatchMerging, TinyAttention, TinyVitBlock, TinyVitEncoder, TinyVitStage};
use crate::train::layers::{
    adapter_backward, adapter_forward, neck_backward, neck_forward, AdapterTape, Ctx, NeckTape,
};
use crate::{Error, Result};
use medsa_core::{Backend, Tensor};

/// One TinyViT attention's tape.
struct AttnTape {
    xw: Tensor,
    h: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    merged: Tensor,
}

struct BlockTape {
    padded: (usize, usize),
    attn: AttnTape,
    space: Option<AdapterTape>,
    x1: Tensor,
    x2: Tensor,
    n: Tensor,
    fc1_out: Tensor,
    gelu: Tensor,
    mlp_adapter: Option<AdapterTape>,
}

struct MergeTape {
    x: Tensor,
    c1: Tensor,
    g1: Tensor,
    c2: Tensor,
    g2: Tensor,
}

/// A layer's tape: its blocks' tapes and its downsample's.
struct LayerTape {
    blocks: Vec<BlockTape>,
    merge: Option<MergeTape>,
}

/// What [`tiny_vit_backward`] needs.
pub struct TinyVitTape {
    layers: Vec<Option<LayerTape>>,
    neck: NeckTape,
}

fn attention_forward(be: &dyn Backend, a: &TinyAttention, xw: Tensor) -> Result<(Tensor, AttnTape)> {
    let (bw, n, c) = (xw.dim(0), xw.dim(1), xw.dim(2));
    let (nh, kd) = (a.num_heads, a.key_dim);
    if a.bias.shape() != [nh, n, n] {
        return Err(Error::Config(format!("TinyViT attention: {n} tokens, bias {:?}", a.bias.shape())));
    }
    let h = a.norm.forward(be, &xw)?;
    let qkv = a.qkv.forward(be, &h)?.reshape(vec![bw, n, nh, 3 * kd])?.permute(&[0, 2, 1, 3])?;
    let q = qkv.narrow(3, 0, kd)?.reshape(vec![bw * nh, n, kd])?;
    let k = qkv.narrow(3, kd, kd)?.reshape(vec![bw * nh, n, kd])?;
    let v = qkv.narrow(3, 2 * kd, kd)?.reshape(vec![bw * nh, n, kd])?;
    let scale = (kd as f64).powf(-0.5) as f32;
    let mut logits = be.bmm_nt(&q, &k)?;
    let bias = a.bias.data();
    for (i, tile) in logits.data_mut().chunks_exact_mut(n * n).enumerate() {
        let b = &bias[(i % nh) * n * n..(i % nh + 1) * n * n];
        tile.iter_mut().zip(b).for_each(|(l, &bv)| *l = *l * scale + bv);
    }
    let p = be.softmax(logits)?;
    let o = be.bmm(&p, &v)?;
    let merged = o.reshape(vec![bw, nh, n, kd])?.permute(&[0, 2, 1, 3])?.reshape(vec![bw, n, c])?;
    let y = a.proj.forward(be, &merged)?;
    Ok((y, AttnTape { xw, h, q, k, v, p, merged }))
}

/// Backward of [`attention_forward`]: the gradient of its input `xw [Bw, N, C]`.
fn attention_backward(
    c: &mut Ctx<'_>,
    a: &TinyAttention,
    p: &str,
    t: &AttnTape,
    dy: &Tensor,
) -> Result<Tensor> {
    let be = c.be;
    let (bw, n, ch) = (t.xw.dim(0), t.xw.dim(1), t.xw.dim(2));
    let (nh, kd) = (a.num_heads, a.key_dim);
    let scale = (kd as f64).powf(-0.5) as f32;
    let dm = c.linear(&a.proj, &format!("{p}.proj"), &t.merged, dy)?;
    let d_o = dm.reshape(vec![bw, n, nh, kd])?.permute(&[0, 2, 1, 3])?.reshape(vec![bw * nh, n, kd])?;
    // o = P v: dP = dO vᵀ, dv = Pᵀ dO; logits = scale·q kᵀ + bias.
    let dp = be.bmm_nt(&d_o, &t.v)?;
    let dv = be.bmm_tn(&t.p, &d_o)?;
    let ds = be.softmax_backward(&t.p, dp)?.scale(scale);
    let dq = be.bmm(&ds, &t.k)?;
    let dk = be.bmm_tn(&ds, &t.q)?;
    // Back to the per-head [q | k | v] layout of the qkv projection.
    let parts = Tensor::cat(&[&dq, &dk, &dv], 2)?.reshape(vec![bw, nh, n, 3 * kd])?;
    let dqkv = parts.permute(&[0, 2, 1, 3])?.reshape(vec![bw, n, 3 * ch])?;
    let dh = c.linear(&a.qkv, &format!("{p}.qkv"), &t.h, &dqkv)?;
    c.norm(&a.norm, &format!("{p}.norm"), &t.xw, &dh)
}

fn block_forward(be: &dyn Backend, blk: &TinyVitBlock, x: &Tensor) -> Result<(Tensor, BlockTape)> {
    let (hh, ww, c) = (x.dim(1), x.dim(2), x.dim(3));
    let win = blk.window;
    let (xw, padded) = be.window_partition(x, win)?;
    let nw = xw.dim(0);
    let (mut a, attn) = attention_forward(be, &blk.attn, xw.reshape(vec![nw, win * win, c])?)?;
    let space = match &blk.adapters {
        Some(ad) => {
            let (s, t) = adapter_forward(be, &ad.space, &a)?;
            a.add_assign(&s)?;
            Some(t)
        }
        None => None,
    };
    let a = be.window_unpartition(&a.reshape(vec![nw, win, win, c])?, win, padded, (hh, ww))?;
    let x1 = x.add(&a)?;
    let x2 = blk.local_conv.forward(be, &x1.permute(&[0, 3, 1, 2])?)?.permute(&[0, 2, 3, 1])?;
    let n = blk.mlp_norm.forward(be, &x2)?;
    let fc1_out = blk.fc1.forward(be, &n)?;
    let gelu = be.gelu_out(&fc1_out)?;
    let mut y = x2.add(&blk.fc2.forward(be, &gelu)?)?;
    let mlp_adapter = match &blk.adapters {
        Some(ad) => {
            let (m, t) = adapter_forward(be, &ad.mlp, &n)?;
            y.add_assign(&m.scale(ad.mlp_scale))?;
            Some(t)
        }
        None => None,
    };
    Ok((y, BlockTape { padded, attn, space, x1, x2, n, fc1_out, gelu, mlp_adapter }))
}

fn block_backward(
    c: &mut Ctx<'_>,
    blk: &TinyVitBlock,
    p: &str,
    t: &BlockTape,
    dy: &Tensor,
) -> Result<Tensor> {
    let be = c.be;
    let (hh, ww, ch) = (t.x1.dim(1), t.x1.dim(2), t.x1.dim(3));
    let win = blk.window;
    let dg = c.linear(&blk.fc2, &format!("{p}.mlp.fc2"), &t.gelu, dy)?;
    let dfc1 = be.gelu_backward(&t.fc1_out, dg)?;
    let mut dn = c.linear(&blk.fc1, &format!("{p}.mlp.fc1"), &t.n, &dfc1)?;
    if let (Some(ad), Some(at)) = (&blk.adapters, &t.mlp_adapter) {
        dn.add_assign(&adapter_backward(
            c,
            &ad.mlp,
            &format!("{p}.MLP_Adapter"),
            at,
            &dy.clone().scale(ad.mlp_scale),
        )?)?;
    }
    let dx2 = dy.add(&c.norm(&blk.mlp_norm, &format!("{p}.mlp.norm"), &t.x2, &dn)?)?;
    // local_conv (frozen, folded BatchNorm) on the channel-first x1.
    let lc = &blk.local_conv;
    let dx1 = be.conv2d_backward(
        &t.x1.permute(&[0, 3, 1, 2])?,
        &lc.w,
        lc.geom,
        &dx2.permute(&[0, 3, 1, 2])?,
        false,
    )?;
    let dx1 = dx1.dx.permute(&[0, 2, 3, 1])?;
    // x1 = x + unpartition(a + space(a)).
    let nw = t.attn.xw.dim(0);
    let da = be.window_partition(&dx1, win)?.0.reshape(vec![nw, win * win, ch])?;
    let mut dattn = da.clone();
    if let (Some(ad), Some(st)) = (&blk.adapters, &t.space) {
        dattn.add_assign(&adapter_backward(c, &ad.space, &format!("{p}.Space_Adapter"), st, &da)?)?;
    }
    let dxw = attention_backward(c, &blk.attn, &format!("{p}.attn"), &t.attn, &dattn)?;
    let mut dx = be.window_unpartition(&dxw.reshape(vec![nw, win, win, ch])?, win, t.padded, (hh, ww))?;
    dx.add_assign(&dx1)?;
    Ok(dx)
}

fn merge_forward(be: &dyn Backend, m: &PatchMerging, x: Tensor) -> Result<(Tensor, MergeTape)> {
    let c1 = m.conv1.forward(be, &x)?;
    let g1 = be.gelu_out(&c1)?;
    let c2 = m.conv2.forward(be, &g1)?;
    let g2 = be.gelu_out(&c2)?;
    let y = m.conv3.forward(be, &g2)?;
    Ok((y, MergeTape { x, c1, g1, c2, g2 }))
}

fn merge_backward(be: &dyn Backend, m: &PatchMerging, t: &MergeTape, dy: &Tensor) -> Result<Tensor> {
    let d = be.conv2d_backward(&t.g2, &m.conv3.w, m.conv3.geom, dy, false)?.dx;
    let d = be.gelu_backward(&t.c2, d)?;
    let d = be.conv2d_backward(&t.g1, &m.conv2.w, m.conv2.geom, &d, false)?.dx;
    let d = be.gelu_backward(&t.c1, d)?;
    Ok(be.conv2d_backward(&t.x, &m.conv1.w, m.conv1.geom, &d, false)?.dx)
}

/// The TinyViT encoder on preprocessed images `x [N, 3, S, S]` → embeddings `[N, 256, G, G]`,
/// keeping tapes from layer 1 on.
pub fn tiny_vit_forward(be: &dyn Backend, enc: &TinyVitEncoder, x: &Tensor) -> Result<(Tensor, TinyVitTape)> {
    let h = be.gelu(enc.patch_embed[0].forward(be, x)?)?;
    let mut h = enc.patch_embed[1].forward(be, &h)?;
    let mut layers = Vec::with_capacity(enc.layers.len());
    for layer in &enc.layers {
        match &layer.stage {
            TinyVitStage::Conv(blocks) => {
                for blk in blocks {
                    h = blk.forward(be, &h)?;
                }
                if let Some(ds) = &layer.downsample {
                    h = ds.forward(be, &h)?;
                }
                layers.push(None);
            }
            TinyVitStage::Attn(blocks) => {
                let mut t = h.permute(&[0, 2, 3, 1])?;
                let mut tapes = Vec::with_capacity(blocks.len());
                for blk in blocks {
                    let (y, tape) = block_forward(be, blk, &t)?;
                    t = y;
                    tapes.push(tape);
                }
                h = t.permute(&[0, 3, 1, 2])?;
                let merge = match &layer.downsample {
                    Some(ds) => {
                        let (y, mt) = merge_forward(be, ds, h)?;
                        h = y;
                        Some(mt)
                    }
                    None => None,
                };
                layers.push(Some(LayerTape { blocks: tapes, merge }));
            }
        }
    }
    let (emb, neck) = neck_forward(be, &enc.neck, h)?;
    Ok((emb, TinyVitTape { layers, neck }))
}

/// Backward of [`tiny_vit_forward`] from the embedding gradient: adds the trainable block
/// parameters' gradients, down to the lowest layer with one.
pub fn tiny_vit_backward(
    c: &mut Ctx<'_>,
    enc: &TinyVitEncoder,
    t: &TinyVitTape,
    demb: &Tensor,
) -> Result<()> {
    let lowest = (0..enc.layers.len()).find(|i| c.tr.any_under(&format!("image_encoder.layers.{i}.")));
    let Some(lowest) = lowest else { return Ok(()) };
    let mut d = neck_backward(c.be, &enc.neck, &t.neck, demb)?;
    for (i, (layer, lt)) in enc.layers.iter().zip(&t.layers).enumerate().rev() {
        if i < lowest {
            break;
        }
        let (TinyVitStage::Attn(blocks), Some(lt)) = (&layer.stage, lt) else {
            return Err(Error::NotTrainable {
                name: format!("image_encoder.layers.{i}.*"),
                why: "TinyViT's convolutional layer has no backward pass".into(),
            });
        };
        if let (Some(ds), Some(mt)) = (&layer.downsample, &lt.merge) {
            d = merge_backward(c.be, ds, mt, &d)?;
        }
        let mut dt = d.permute(&[0, 2, 3, 1])?;
        for (j, (blk, bt)) in blocks.iter().zip(&lt.blocks).enumerate().rev() {
            let name = format!("image_encoder.layers.{i}.blocks.{j}");
            if i == lowest
                && !(0..=j).any(|k| c.tr.any_under(&format!("image_encoder.layers.{i}.blocks.{k}.")))
            {
                break;
            }
            dt = block_backward(c, blk, &name, bt, &dt)?;
        }
        d = dt.permute(&[0, 3, 1, 2])?;
    }
    Ok(())
}
