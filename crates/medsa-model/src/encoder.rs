//! The ViT image encoder of SAM and Med-SA (spec 3): patch embedding, absolute position
//! embedding, windowed/global blocks with decomposed relative-position attention, Med-SA's
//! adapters, SD-Trans across slices, and the neck.

use crate::config::{DepthSettings, EncoderAdapters, VitConfig};
use crate::nn::{place, Adapter, LayerNorm, Linear, Neck, Trace};
use crate::weights::WeightLoader;
use crate::{Error, Result};
use medsa_core::backend::{closest_numbers, depth_row};
use medsa_core::{Activation, Backend, Conv2d, RelPos, ResizeMode, Tensor};

/// SAM's multi-head attention with decomposed relative-position bias (spec 3.3).
#[derive(Clone, Debug)]
pub struct Attention {
    /// `qkv` projection C → 3C (`[q | k | v]`, head-major).
    pub qkv: Linear,
    /// Output projection.
    pub proj: Linear,
    /// Relative-position tables `(rel_h, rel_w)`, `[rows, hd]`.
    pub rel: Option<(Tensor, Tensor)>,
    /// Heads.
    pub num_heads: usize,
}

impl Attention {
    fn load(wl: &mut WeightLoader, p: &str, cfg: &VitConfig, rel_rows: usize) -> Self {
        let (c, hd) = (cfg.embed_dim, cfg.head_dim());
        let rel = cfg.use_rel_pos.then(|| {
            // SAM and Med-SA before 2024-01-29 use rel_pos_*, Med-SA after uses rel_* (spec 11.4).
            let h = wl.take_aliased(&format!("{p}.rel_pos_h"), &[&format!("{p}.rel_h")], &[rel_rows, hd]);
            let w = wl.take_aliased(&format!("{p}.rel_pos_w"), &[&format!("{p}.rel_w")], &[rel_rows, hd]);
            (h, w)
        });
        Attention {
            qkv: Linear::load(wl, &format!("{p}.qkv"), c, 3 * c, true),
            proj: Linear::load(wl, &format!("{p}.proj"), c, c, true),
            rel,
            num_heads: cfg.num_heads,
        }
    }

    /// `x [B', h, w, C]` → `[B', h, w, C]`; the token grid is `h × w` (a window, the whole grid,
    /// or SD-Trans's `dh × dw` depth grid, for which the tables are resampled).
    pub fn forward(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (nh, hd) = (self.num_heads, c / self.num_heads);
        let n = h * w;
        let qkv = self.qkv.forward(be, x)?.reshape(vec![b, n, 3 * c])?;
        let tables = match &self.rel {
            Some((th, tw)) => Some((be.rel_pos_table(h, h, th)?, be.rel_pos_table(w, w, tw)?)),
            None => None,
        };
        let rel = tables.as_ref().map(|(rh, rw)| RelPos { rh, rw });
        let o = be.attention_qkv(&qkv, nh, (hd as f32).powf(-0.5), rel)?.reshape(vec![b, h, w, c])?;
        self.proj.forward(be, &o)
    }
}

/// Med-SA's three encoder adapters (spec 3.5, 12.2).
#[derive(Clone, Debug)]
pub struct BlockAdapters {
    /// After attention, with skip.
    pub space: Adapter,
    /// Parallel to the MLP, no skip, scaled.
    pub mlp: Adapter,
    /// SD-Trans depth branch, no skip (3D only).
    pub depth: Adapter,
    /// Settings.
    pub cfg: EncoderAdapters,
}

/// One encoder block: SAM's `Block` or Med-SA's `AdapterBlock` (spec 3.5, 3.6).
#[derive(Clone, Debug)]
pub struct Block {
    /// `norm1` (shared by the space and depth branches).
    pub norm1: LayerNorm,
    /// Attention (shared by both branches).
    pub attn: Attention,
    /// `norm2`.
    pub norm2: LayerNorm,
    /// `mlp.lin1`.
    pub lin1: Linear,
    /// `mlp.lin2`.
    pub lin2: Linear,
    /// Window side, or None for a global block.
    pub window: Option<usize>,
    /// Med-SA adapters.
    pub adapters: Option<BlockAdapters>,
}

impl Block {
    fn load(wl: &mut WeightLoader, p: &str, cfg: &VitConfig, global: bool) -> Self {
        let c = cfg.embed_dim;
        let g = cfg.grid();
        let rel_rows = if global { 2 * g - 1 } else { 2 * cfg.window_size - 1 };
        let adapters = cfg.adapters.as_ref().map(|a| BlockAdapters {
            space: Adapter::load(wl, &format!("{p}.Space_Adapter"), c, a.hidden, a.act),
            mlp: Adapter::load(wl, &format!("{p}.MLP_Adapter"), c, a.hidden, a.act),
            depth: Adapter::load(wl, &format!("{p}.Depth_Adapter"), c, a.hidden, a.act),
            cfg: a.clone(),
        });
        Block {
            norm1: LayerNorm::load(wl, &format!("{p}.norm1"), c, cfg.ln_eps),
            attn: Attention::load(wl, &format!("{p}.attn"), cfg, rel_rows),
            norm2: LayerNorm::load(wl, &format!("{p}.norm2"), c, cfg.ln_eps),
            lin1: Linear::load(wl, &format!("{p}.mlp.lin1"), c, cfg.mlp_dim, true),
            lin2: Linear::load(wl, &format!("{p}.mlp.lin2"), cfg.mlp_dim, c, true),
            window: (!global).then_some(cfg.window_size),
            adapters,
        }
    }

    /// `x [N, G, G, C]` → `[N, G, G, C]`. With `depth`, N is `volumes × D` slices and the
    /// SD-Trans depth branch runs (Med-SA blocks only).
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        depth: Option<DepthSettings>,
        trace: &mut Trace,
        name: &str,
    ) -> Result<Tensor> {
        let (hh, ww) = (x.dim(1), x.dim(2));
        let pad_before_norm = self.adapters.as_ref().is_some_and(|a| a.cfg.pad_before_norm);
        let partition = |t: &Tensor| -> Result<(Tensor, (usize, usize))> {
            match self.window {
                Some(win) => Ok(be.window_partition(t, win)?),
                None => Ok((t.clone(), (hh, ww))),
            }
        };
        // Space branch input: padding before norm1 (Med-SA) or after it (SAM), spec 3.5.
        let (xw, padded) = partition(x)?;
        let normed = if pad_before_norm {
            self.norm1.forward(be, &xw)?
        } else {
            partition(&self.norm1.forward(be, x)?)?.0
        };
        let mut h = self.attn.forward(be, &normed)?;
        if let Some(a) = &self.adapters {
            h = a.space.forward_add(be, h.clone(), &h, 1.0)?;
            if let Some(d) = depth {
                let nw = match self.window {
                    Some(win) => (padded.0 / win) * (padded.1 / win),
                    None => 1,
                };
                let xd = self.depth_branch(be, &normed, nw, d, &a.depth, trace, name)?;
                h = be.add_scaled(h, &xd, 1.0)?;
            }
        } else if depth.is_some() {
            return Err(Error::Config("SD-Trans needs Med-SA adapter blocks (Depth_Adapter)".into()));
        }
        if let Some(win) = self.window {
            h = be.window_unpartition(&h, win, padded, (hh, ww))?;
        }
        let mut x = be.add_scaled(x.clone(), &h, 1.0)?;
        let n = self.norm2.forward(be, &x)?;
        x = self.lin2.forward_add(be, x, &self.lin1.forward_act(be, &n, Activation::Gelu)?, 1.0)?;
        if let Some(a) = &self.adapters {
            x = a.mlp.forward_add(be, x, &n, a.cfg.mlp_scale)?;
        }
        Ok(x)
    }

    /// SD-Trans depth branch (spec 3.6, golden README 5.2) on the normed, window-partitioned
    /// batch `normed [N·nW, hh, ww, C]`: the shared qkv projection, attention along each depth
    /// sequence on the `closest_numbers(D)` grid (tables resampled), the shared `proj` and
    /// `Depth_Adapter`. LayerNorm, projections and adapter act per token, so they run in the
    /// batch's own layout; only the attention gathers the sequences (by index).
    #[allow(clippy::too_many_arguments)]
    fn depth_branch(
        &self,
        be: &dyn Backend,
        normed: &Tensor,
        nw: usize,
        d: DepthSettings,
        adapter: &Adapter,
        trace: &mut Trace,
        name: &str,
    ) -> Result<Tensor> {
        let (n0, hh, ww, c) = (normed.dim(0), normed.dim(1), normed.dim(2), normed.dim(3));
        let p = hh * ww;
        let (dh, dw) = closest_numbers(d.depth)?;
        if n0 % (d.depth * nw) != 0 {
            return Err(Error::Config(format!(
                "{} slices are not a multiple of depth {}",
                n0 / nw.max(1),
                d.depth
            )));
        }
        let heads = self.attn.num_heads;
        let qkv = self.attn.qkv.forward(be, normed)?.reshape(vec![n0, p, 3 * c])?;
        let tables = match &self.attn.rel {
            Some((th, tw)) => Some((be.rel_pos_table(dh, dh, th)?, be.rel_pos_table(dw, dw, tw)?)),
            None => None,
        };
        let rel = tables.as_ref().map(|(rh, rw)| RelPos { rh, rw });
        let scale = ((c / heads) as f32).powf(-0.5);
        let o = be.depth_attention(&qkv, heads, d.depth, nw, d.grouping, rel, scale)?;
        let o = adapter.forward(be, &self.attn.proj.forward(be, &o)?)?;
        if trace.is_enabled() {
            // The golden files store the sequences in sequence order, `[Nseq, dh, dw, C]`.
            let nseq = n0 * p / d.depth;
            let mut seq = Vec::with_capacity(n0 * p * c);
            for s in 0..nseq {
                for k in 0..d.depth {
                    let tok = depth_row(d.grouping, s, k, p, d.depth, nw) * p + s % p;
                    seq.extend_from_slice(&o.data()[tok * c..(tok + 1) * c]);
                }
            }
            trace.record(&format!("{name}.depth_adapter"), &Tensor::new(vec![nseq, dh, dw, c], seq)?);
        }
        Ok(o.reshape(vec![n0, hh, ww, c])?)
    }
}

/// The image encoder: patch embedding, position embedding, blocks and neck (spec 3).
#[derive(Clone, Debug)]
pub struct ImageEncoder {
    /// Configuration.
    pub cfg: VitConfig,
    /// `patch_embed.proj` weight `[C, 3, 16, 16]`.
    pub patch_w: Tensor,
    /// `patch_embed.proj` bias.
    pub patch_b: Tensor,
    /// `pos_embed` `[1, P, P, C]`.
    pub pos_embed: Option<Tensor>,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// SAM's neck.
    pub neck: Neck,
}

impl ImageEncoder {
    /// Builds the encoder from `image_encoder.*` tensors.
    pub fn load(wl: &mut WeightLoader, cfg: &VitConfig) -> Result<Self> {
        cfg.validate()?;
        let (c, o, ps) = (cfg.embed_dim, cfg.out_chans, cfg.patch_size);
        let p = "image_encoder";
        let blocks = (0..cfg.depth)
            .map(|i| Block::load(wl, &format!("{p}.blocks.{i}"), cfg, cfg.global_attn_indexes.contains(&i)))
            .collect();
        Ok(ImageEncoder {
            cfg: cfg.clone(),
            patch_w: wl.take(&format!("{p}.patch_embed.proj.weight"), &[c, cfg.in_chans, ps, ps]),
            patch_b: wl.take(&format!("{p}.patch_embed.proj.bias"), &[c]),
            pos_embed: cfg.pos_embed_grid.map(|g| wl.take(&format!("{p}.pos_embed"), &[1, g, g, c])),
            blocks,
            neck: Neck::load(wl, p, c, o, cfg.neck_ln_eps),
        })
    }

    /// SAM's `patch_embed` on `x [B, in, H, W]` → `[B, H/p, W/p, C]`: a p×p convolution with
    /// stride p is, patch by patch, the flattened `(channel, row, col)` patch times the flattened
    /// weight `[C, in·p·p]`. So it runs as a reshape, one permute and one GEMM that lands in the
    /// blocks' channels-last layout directly (no im2col, no permute after). Sizes that are not
    /// multiples of p (which SAM's preprocessing never makes) take the convolution, which drops
    /// the partial patches as PyTorch does.
    pub fn patch_embed(&self, be: &dyn Backend, x: &Tensor) -> Result<Tensor> {
        let p = self.cfg.patch_size;
        x.expect_rank("patch_embed", "image", 4)?;
        let (b, cin, hh, ww) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let c = self.patch_w.dim(0);
        if hh % p != 0 || ww % p != 0 || cin != self.patch_w.dim(1) {
            let conv = be.conv2d(x, &self.patch_w, Some(&self.patch_b), Conv2d::new(p, 0))?;
            return Ok(be.permute(&conv, &[0, 2, 3, 1])?);
        }
        let (gh, gw) = (hh / p, ww / p);
        let patches = be.permute(&x.clone().reshape(vec![b, cin, gh, p, gw, p])?, &[0, 2, 4, 1, 3, 5])?;
        let patches = patches.reshape(vec![b, gh, gw, cin * p * p])?;
        let w = self.patch_w.clone().reshape(vec![c, cin * p * p])?;
        Ok(be.linear(&patches, &w, Some(&self.patch_b))?)
    }

    /// This encoder with every weight placed where `be` computes ([`Backend::upload`]: once, so
    /// that a forward on a device backend moves only the image up and the embedding down).
    pub fn placed(&self, be: &dyn Backend) -> Result<ImageEncoder> {
        let mut e = self.clone();
        let up = |t: &mut Tensor| place(be, t);
        crate::train::params::visit_vit(&mut e, &mut |_, t| up(t))?;
        up(&mut e.patch_w)?;
        up(&mut e.patch_b)?;
        if let Some(pe) = &mut e.pos_embed {
            up(pe)?;
        }
        for b in &mut e.blocks {
            if let Some((h, w)) = &mut b.attn.rel {
                up(h)?;
                up(w)?;
            }
        }
        e.neck.place(be)?;
        Ok(e)
    }

    /// `x [N, 3, S, S]` (preprocessed) → embeddings `[N, 256, G, G]`. With `depth`, the batch is
    /// `volumes × D` slices, slice-major, and SD-Trans attends across the slices of each volume.
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        depth: Option<DepthSettings>,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let s = self.cfg.img_size;
        x.expect_rank("image_encoder", "image", 4).map_err(Error::from)?;
        if x.dim(1) != self.cfg.in_chans || x.dim(2) != s || x.dim(3) != s {
            return Err(Error::Image(format!(
                "encoder input {:?} must be [N, {}, {s}, {s}]",
                x.shape(),
                self.cfg.in_chans
            )));
        }
        if let Some(d) = depth {
            if d.depth == 0 || !x.dim(0).is_multiple_of(d.depth) {
                return Err(Error::Config(format!(
                    "{} slices are not a multiple of depth {}",
                    x.dim(0),
                    d.depth
                )));
            }
        }
        let _span = tracing::debug_span!("image_encoder", n = x.dim(0)).entered();
        let mut h = self.patch_embed(be, x)?;
        trace.record("enc.patch_embed", &h);
        if let Some(pe) = &self.pos_embed {
            let g = self.cfg.grid();
            let pe = if pe.dim(1) == g {
                pe.clone()
            } else {
                // Med-SA: the stored 64x64 table is resized bicubically on every forward (3.2).
                let nchw = be.permute(pe, &[0, 3, 1, 2])?;
                be.permute(&be.resize(&nchw, (g, g), ResizeMode::Bicubic)?, &[0, 2, 3, 1])?
            };
            trace.record("enc.pos_embed", &pe);
            let table = pe.shape()[1..].to_vec();
            h = be.add_scaled(h, &pe.reshape(table)?, 1.0)?;
        }
        for (i, blk) in self.blocks.iter().enumerate() {
            let name = format!("enc.blocks.{i}");
            let _span = tracing::debug_span!("block", i).entered();
            h = blk.forward(be, &h, depth, trace, &name)?;
            trace.record(&name, &h);
        }
        let h = be.permute(&h, &[0, 3, 1, 2])?;
        let h = self.neck.forward(be, &h)?;
        trace.record("image_embedding", &h);
        Ok(h)
    }
}
