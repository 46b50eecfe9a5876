//! SAM's prompt encoder (spec 4): points, boxes and mask prompts in the model's input frame.

use crate::config::PromptEncoderConfig;
use crate::nn::LayerNorm;
use crate::weights::WeightLoader;
use crate::{Error, Result};
use medsa_core::{Backend, Conv2d, Tensor};

/// Prompts for a batch of B prompt sets, in input-frame pixels (x, y).
#[derive(Clone, Debug, Default)]
pub struct PromptBatch {
    /// Point coordinates `[B, n, 2]`.
    pub coords: Option<Tensor>,
    /// Point labels, `B·n` values: 1 foreground, 0 background, −1 padding.
    pub labels: Vec<i64>,
    /// Boxes `[B, 4]` as (x0, y0, x1, y1).
    pub boxes: Option<Tensor>,
    /// Mask prompts `[B, 1, 4G, 4G]` (low-res logits).
    pub masks: Option<Tensor>,
}

impl PromptBatch {
    /// Number of prompt sets: from points, else boxes, else masks, else 1 (spec 4).
    pub fn batch(&self) -> usize {
        [&self.coords, &self.boxes, &self.masks]
            .iter()
            .find_map(|t| t.as_ref().map(|t| t.dim(0)))
            .unwrap_or(1)
    }

    /// The sets of several batches in one batch. Sets with fewer points are padded with SAM's
    /// padding point (label −1 at (0, 0)); all batches must agree in having boxes and masks.
    pub fn concat(parts: &[PromptBatch]) -> Result<PromptBatch> {
        let first = parts.first().ok_or_else(|| Error::Prompt("no prompt batches to join".into()))?;
        if parts
            .iter()
            .any(|p| p.boxes.is_some() != first.boxes.is_some() || p.masks.is_some() != first.masks.is_some())
        {
            return Err(Error::Prompt("prompt batches differ in having boxes or mask prompts".into()));
        }
        let npts = |p: &PromptBatch| p.coords.as_ref().map_or(0, |c| c.dim(1));
        let n = parts.iter().map(npts).max().unwrap_or(0);
        let total: usize = parts.iter().map(PromptBatch::batch).sum();
        let (mut coords, mut labels) = (Vec::with_capacity(total * n * 2), Vec::with_capacity(total * n));
        let (mut boxes, mut masks) = (Vec::new(), Vec::new());
        let mut mask_shape = None;
        for p in parts {
            let (b, k) = (p.batch(), npts(p));
            if p.labels.len() != b * k {
                return Err(Error::Prompt(format!(
                    "{} point labels for {b} sets of {k} points",
                    p.labels.len()
                )));
            }
            for i in 0..b {
                if let Some(c) = &p.coords {
                    coords.extend_from_slice(&c.data()[i * k * 2..(i + 1) * k * 2]);
                }
                labels.extend_from_slice(&p.labels[i * k..(i + 1) * k]);
                coords.extend(std::iter::repeat_n(0.0, (n - k) * 2));
                labels.extend(std::iter::repeat_n(-1, n - k));
            }
            if let Some(t) = &p.boxes {
                boxes.extend_from_slice(t.data());
            }
            if let Some(t) = &p.masks {
                if *mask_shape.get_or_insert_with(|| t.shape()[1..].to_vec()) != t.shape()[1..] {
                    return Err(Error::Prompt("mask prompts of different sizes".into()));
                }
                masks.extend_from_slice(t.data());
            }
        }
        let with = |rest: Vec<usize>| [vec![total], rest].concat();
        Ok(PromptBatch {
            coords: (n > 0).then(|| Tensor::new(vec![total, n, 2], coords)).transpose()?,
            labels,
            boxes: first.boxes.is_some().then(|| Tensor::new(vec![total, 4], boxes)).transpose()?,
            masks: match mask_shape {
                Some(sh) => Some(Tensor::new(with(sh), masks)?),
                None => None,
            },
        })
    }
}

/// The prompt encoder's dense embedding.
#[derive(Clone, Debug)]
pub enum DenseEmbedding {
    /// No mask prompt: `no_mask_embed` `[D]`, the same at every cell of every set (kept as one
    /// vector; SAM broadcasts it to `[B, D, G, G]`).
    NoMask(Tensor),
    /// Embedded mask prompts `[B, D, G, G]`.
    Masks(Tensor),
}

impl DenseEmbedding {
    /// The embedding as SAM returns it, `[B, D, G, G]`, for `b` sets on a `grid`.
    pub fn to_tensor(&self, b: usize, grid: (usize, usize)) -> Result<Tensor> {
        match self {
            DenseEmbedding::Masks(t) => Ok(t.clone()),
            DenseEmbedding::NoMask(v) => {
                let (d, gg) = (v.numel(), grid.0 * grid.1);
                let mut t = Tensor::zeros(vec![b, d, grid.0, grid.1])?;
                for (plane, &x) in t.data_mut().chunks_exact_mut(gg.max(1)).zip(v.data().iter().cycle()) {
                    plane.fill(x);
                }
                Ok(t)
            }
        }
    }
}

/// Output of the prompt encoder.
#[derive(Clone, Debug)]
pub struct PromptEmbeddings {
    /// Sparse tokens `[B, Ns, D]`, in host memory.
    pub sparse: Tensor,
    /// Dense embedding.
    pub dense: DenseEmbedding,
    /// Per sparse token: false for padding points (label −1 and the appended pad point).
    pub valid: Vec<bool>,
}

/// The prompt encoder's weights.
#[derive(Clone, Debug)]
pub struct PromptEncoder {
    /// Configuration.
    pub cfg: PromptEncoderConfig,
    /// `pe_layer.positional_encoding_gaussian_matrix` `[2, D/2]`.
    pub gaussian: Tensor,
    /// `point_embeddings.{0..3}`: negative, positive, box corner 1, box corner 2.
    pub point_embeddings: [Tensor; 4],
    /// `not_a_point_embed`.
    pub not_a_point: Tensor,
    /// `no_mask_embed`.
    pub no_mask: Tensor,
    /// Mask downscaling convs (0, 3, 6) and norms (1, 4).
    pub mask_convs: [(Tensor, Tensor); 3],
    /// Mask downscaling LayerNorm2ds.
    pub mask_norms: [LayerNorm; 2],
}

impl PromptEncoder {
    /// Loads `prompt_encoder.*`.
    pub fn load(wl: &mut WeightLoader, cfg: &PromptEncoderConfig) -> Self {
        let (d, m) = (cfg.embed_dim, cfg.mask_in_chans);
        let p = "prompt_encoder";
        let pe = |wl: &mut WeightLoader, n: &str| wl.take(&format!("{p}.{n}.weight"), &[1, d]);
        let conv = |wl: &mut WeightLoader, i: usize, o: usize, inp: usize, k: usize| {
            (
                wl.take(&format!("{p}.mask_downscaling.{i}.weight"), &[o, inp, k, k]),
                wl.take(&format!("{p}.mask_downscaling.{i}.bias"), &[o]),
            )
        };
        PromptEncoder {
            cfg: cfg.clone(),
            gaussian: wl.take(&format!("{p}.pe_layer.positional_encoding_gaussian_matrix"), &[2, d / 2]),
            point_embeddings: [
                pe(wl, "point_embeddings.0"),
                pe(wl, "point_embeddings.1"),
                pe(wl, "point_embeddings.2"),
                pe(wl, "point_embeddings.3"),
            ],
            not_a_point: pe(wl, "not_a_point_embed"),
            no_mask: pe(wl, "no_mask_embed"),
            mask_convs: [conv(wl, 0, m / 4, 1, 2), conv(wl, 3, m, m / 4, 2), conv(wl, 6, d, m, 1)],
            mask_norms: [
                LayerNorm::load(wl, &format!("{p}.mask_downscaling.1"), m / 4, 1e-6),
                LayerNorm::load(wl, &format!("{p}.mask_downscaling.4"), m, 1e-6),
            ],
        }
    }

    /// `get_dense_pe`: the positional encoding of every embedding cell, `[1, D, G, G]`.
    pub fn dense_pe(&self, be: &dyn Backend) -> Result<Tensor> {
        let (h, w) = self.cfg.image_embedding_size;
        let coords = Tensor::from_fn(vec![h, w, 2], |i| {
            let (cell, axis) = (i / 2, i % 2);
            if axis == 0 {
                ((cell % w) as f32 + 0.5) / w as f32
            } else {
                ((cell / w) as f32 + 0.5) / h as f32
            }
        })?;
        let pe = be.pe_encode(&coords, &self.gaussian)?;
        let d = pe.last_dim();
        Ok(be.permute(&pe, &[2, 0, 1])?.reshape(vec![1, d, h, w])?)
    }

    /// PE of input-frame pixel coordinates `[..., 2]` (x divided by the width, y by the height).
    fn pe_pixels(&self, be: &dyn Backend, coords: &Tensor) -> Result<Tensor> {
        let (sh, sw) = self.cfg.input_image_size;
        let mut c = coords.clone();
        for xy in c.data_mut().chunks_exact_mut(2) {
            xy[0] /= sw as f32;
            xy[1] /= sh as f32;
        }
        Ok(be.pe_encode(&c, &self.gaussian)?)
    }

    /// Encodes a batch of prompts (spec 4). The few sparse tokens are computed on the host
    /// ([`Backend::host`]) and stay there (the decoder uploads them with its tokens); a mask
    /// prompt is embedded where `be` computes.
    pub fn forward(&self, be: &dyn Backend, p: &PromptBatch) -> Result<PromptEmbeddings> {
        let host = be.host();
        let d = self.cfg.embed_dim;
        let b = p.batch();
        let (gh, gw) = self.cfg.image_embedding_size;
        let mut parts: Vec<Tensor> = Vec::new();
        let mut valid_parts: Vec<Vec<bool>> = Vec::new();
        if let Some(coords) = &p.coords {
            coords.expect_rank("prompt_encoder", "point coords", 3)?;
            let n = coords.dim(1);
            if coords.dim(0) != b || coords.dim(2) != 2 || p.labels.len() != b * n {
                return Err(Error::Prompt(format!(
                    "point coords {:?} and {} labels do not describe {b} sets",
                    coords.shape(),
                    p.labels.len()
                )));
            }
            let pad = p.boxes.is_none();
            let np = n + usize::from(pad);
            let mut c = Vec::with_capacity(b * np * 2);
            let mut labels = Vec::with_capacity(b * np);
            for s in 0..b {
                for i in 0..n {
                    let xy = &coords.data()[(s * n + i) * 2..(s * n + i) * 2 + 2];
                    c.extend([xy[0] + 0.5, xy[1] + 0.5]);
                    labels.push(p.labels[s * n + i]);
                }
                if pad {
                    c.extend([0.0, 0.0]);
                    labels.push(-1);
                }
            }
            let mut pe = self.pe_pixels(host, &Tensor::new(vec![b, np, 2], c)?)?;
            for (row, &l) in pe.data_mut().chunks_exact_mut(d).zip(&labels) {
                let add = match l {
                    -1 => {
                        row.fill(0.0);
                        Some(&self.not_a_point)
                    }
                    0 => Some(&self.point_embeddings[0]),
                    1 => Some(&self.point_embeddings[1]),
                    _ => None,
                };
                if let Some(e) = add {
                    row.iter_mut().zip(e.data()).for_each(|(a, v)| *a += v);
                }
            }
            parts.push(pe);
            valid_parts.push(labels.iter().map(|&l| l != -1).collect());
        }
        if let Some(boxes) = &p.boxes {
            boxes.expect_shape("prompt_encoder", "boxes", &[b, 4])?;
            let c: Vec<f32> = boxes.data().iter().map(|v| v + 0.5).collect();
            let mut pe = self.pe_pixels(host, &Tensor::new(vec![b, 2, 2], c)?)?;
            for (i, row) in pe.data_mut().chunks_exact_mut(d).enumerate() {
                let e = &self.point_embeddings[2 + i % 2];
                row.iter_mut().zip(e.data()).for_each(|(a, v)| *a += v);
            }
            parts.push(pe);
            valid_parts.push(vec![true; b * 2]);
        }
        let sparse = if parts.is_empty() {
            Tensor::zeros(vec![b, 0, d])?
        } else {
            Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1)?
        };
        // Per-set validity in the concatenated token order.
        let mut valid = Vec::with_capacity(sparse.numel() / d.max(1));
        for s in 0..b {
            for v in &valid_parts {
                let per = v.len() / b;
                valid.extend_from_slice(&v[s * per..(s + 1) * per]);
            }
        }
        let dense = match &p.masks {
            Some(m) => {
                m.expect_shape("prompt_encoder", "mask prompt", &[b, 1, 4 * gh, 4 * gw])?;
                DenseEmbedding::Masks(self.embed_masks(be, m)?)
            }
            None => DenseEmbedding::NoMask(self.no_mask.clone().reshape(vec![d])?),
        };
        Ok(PromptEmbeddings { sparse, dense, valid })
    }

    fn embed_masks(&self, be: &dyn Backend, m: &Tensor) -> Result<Tensor> {
        let [(w0, b0), (w3, b3), (w6, b6)] = &self.mask_convs;
        let h = be.conv2d(m, w0, Some(b0), Conv2d::new(2, 0))?;
        let h = be.gelu(self.mask_norms[0].forward2d(be, &h)?)?;
        let h = be.conv2d(&h, w3, Some(b3), Conv2d::new(2, 0))?;
        let h = be.gelu(self.mask_norms[1].forward2d(be, &h)?)?;
        Ok(be.conv2d(&h, w6, Some(b6), Conv2d::new(1, 0))?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod concat_tests {
    use super::*;

    #[test]
    fn concat_pads_points_and_keeps_boxes_in_order() {
        let a = PromptBatch {
            coords: Some(Tensor::new(vec![1, 1, 2], vec![1.0, 2.0]).unwrap()),
            labels: vec![1],
            boxes: Some(Tensor::new(vec![1, 4], vec![0.0, 0.0, 5.0, 5.0]).unwrap()),
            masks: None,
        };
        let b = PromptBatch {
            coords: Some(Tensor::new(vec![1, 2, 2], vec![3.0, 4.0, 5.0, 6.0]).unwrap()),
            labels: vec![1, 0],
            boxes: Some(Tensor::new(vec![1, 4], vec![1.0, 1.0, 2.0, 2.0]).unwrap()),
            masks: None,
        };
        let c = PromptBatch::concat(&[a.clone(), b]).unwrap();
        assert_eq!(c.coords.as_ref().unwrap().shape(), &[2, 2, 2]);
        assert_eq!(c.coords.unwrap().data(), &[1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(c.labels, vec![1, -1, 1, 0]);
        assert_eq!(c.boxes.unwrap().data(), &[0.0, 0.0, 5.0, 5.0, 1.0, 1.0, 2.0, 2.0]);
        let no_box = PromptBatch { boxes: None, ..a.clone() };
        assert!(PromptBatch::concat(&[a, no_box]).is_err());
        assert!(PromptBatch::concat(&[]).is_err());
    }
}
