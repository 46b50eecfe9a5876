//! One fine-tuning step: forward with tapes, the loss, the backward through decoder and
//! encoder, and the optimizer update of every trainable parameter that got a gradient.

use crate::config::DepthSettings;
use crate::nn::Trace;
use crate::prompt::PromptBatch;
use crate::sam::{Encoder, Sam};
use crate::train::decoder::{decoder_backward, decoder_forward};
use crate::train::encoder::{encoder_backward, encoder_forward, Checkpointing};
use crate::train::layers::Ctx;
use crate::train::loss::{iou_loss, mask_loss, LossConfig};
use crate::train::optim::Optimizer;
use crate::train::params::{visit_trainable, Grads, Trainable};
use crate::train::tiny_vit::{tiny_vit_backward, tiny_vit_forward};
use crate::{Error, Result};
use medsa_core::{Backend, Tensor};
use std::borrow::Cow;

/// The encoder's tape of a step, if its backward runs.
enum EncoderTape {
    None,
    Vit(crate::train::encoder::EncoderTape),
    TinyVit(crate::train::tiny_vit::TinyVitTape),
}

/// What one forward + backward needs besides the model.
#[derive(Clone, Copy, Debug)]
pub struct StepConfig<'a> {
    /// The loss.
    pub loss: &'a LossConfig,
    /// Which parameters get gradients.
    pub trainable: &'a Trainable,
    /// The mask token whose logits the loss takes (0 for SAM's single-mask output and for the
    /// official Med-SA decoder's first output).
    pub mask_index: usize,
    /// Activation checkpointing in the encoder.
    pub checkpointing: Checkpointing,
    /// Report the gradient of every encoder block's output (parity checks; costs a backward
    /// through blocks that have nothing to train).
    pub every_block: bool,
}

/// The image side of a step: preprocessed images through the encoder, or image embeddings
/// computed once (the encoder frozen).
#[derive(Clone, Copy, Debug)]
pub enum StepInput<'a> {
    /// Preprocessed images `[N, 3, S, S]`, with SD-Trans settings for volumes.
    Images(&'a Tensor, Option<DepthSettings>),
    /// Cached image embeddings `[N, 256, G, G]` with the dense positional encoding
    /// `[1, 256, G, G]` of the prompt encoder (`PromptEncoder::dense_pe`, a constant: the
    /// prompt encoder never trains), both computed once.
    Embeddings {
        /// The image embeddings.
        embeddings: &'a Tensor,
        /// The dense positional encoding.
        dense_pe: &'a Tensor,
    },
}

/// The results of [`forward_backward`].
#[derive(Debug)]
pub struct StepOutput {
    /// Total loss.
    pub loss: f64,
    /// The logits the loss was taken on `[B, 1, 4G, 4G]`.
    pub logits: Tensor,
    /// Predicted IoU of that mask `[B, 1]`.
    pub iou: Tensor,
    /// Gradients of the trainable parameters.
    pub grads: Grads,
    /// Gradient of the image embedding `[N, 256, G, G]`, when the encoder's backward runs or
    /// [`StepConfig::every_block`] asks for it.
    pub d_embedding: Option<Tensor>,
    /// Gradient of each encoder block's output, where computed (ViT only).
    pub d_blocks: Vec<Option<Tensor>>,
}

/// Forward, loss and backward for B prompt sets with targets `target [B, 1, 4G, 4G]` (0/1).
/// `step` numbers the step in error messages.
pub fn forward_backward(
    be: &dyn Backend,
    model: &Sam,
    input: StepInput<'_>,
    prompts: &PromptBatch,
    target: &Tensor,
    cfg: StepConfig<'_>,
    step: u64,
) -> Result<StepOutput> {
    let train_encoder = cfg.trainable.any_under("image_encoder.");
    let (emb, etape) = match (input, &model.encoder) {
        (StepInput::Embeddings { .. }, _) if train_encoder => {
            return Err(Error::Config(
                "encoder parameters are trainable, but the step was given cached embeddings".into(),
            ))
        }
        (StepInput::Embeddings { embeddings, .. }, _) => (Cow::Borrowed(embeddings), EncoderTape::None),
        (StepInput::Images(x, depth), Encoder::Vit(enc)) if train_encoder || cfg.every_block => {
            let (emb, t) = encoder_forward(be, enc, x, depth, cfg.checkpointing, &mut Trace::disabled())?;
            (Cow::Owned(emb), EncoderTape::Vit(t))
        }
        (StepInput::Images(x, None), Encoder::TinyVit(enc)) if train_encoder => {
            let (emb, t) = tiny_vit_forward(be, enc, x)?;
            (Cow::Owned(emb), EncoderTape::TinyVit(t))
        }
        (StepInput::Images(x, depth), _) => {
            (Cow::Owned(model.embed(be, x, depth, &mut Trace::disabled())?), EncoderTape::None)
        }
    };
    let emb_prompts = model.prompt.forward(be, prompts)?;
    let dense_pe = match input {
        StepInput::Embeddings { dense_pe, .. } => Cow::Borrowed(dense_pe),
        StepInput::Images(..) => Cow::Owned(model.prompt.dense_pe(be)?),
    };
    let (dec, dtape) = decoder_forward(be, &model.decoder, &emb, &dense_pe, &emb_prompts)?;
    let (b, m, h, w) = (dec.masks.dim(0), dec.masks.dim(1), dec.masks.dim(2), dec.masks.dim(3));
    if cfg.mask_index >= m {
        return Err(Error::Config(format!("mask index {} of {m} mask tokens", cfg.mask_index)));
    }
    let logits = dec.masks.narrow(1, cfg.mask_index, 1)?;
    let iou = dec.iou.narrow(1, cfg.mask_index, 1)?;
    let l = mask_loss(cfg.loss, &logits, target, step)?;
    let mut loss = l.loss;
    let mut dmasks = vec![0f32; b * m * h * w];
    for s in 0..b {
        dmasks[(s * m + cfg.mask_index) * h * w..][..h * w]
            .copy_from_slice(&l.dlogits.data()[s * h * w..(s + 1) * h * w]);
    }
    let diou = if cfg.loss.iou_weight > 0.0 {
        let (li, di) = iou_loss(&iou, &logits, target, step)?;
        loss += cfg.loss.iou_weight as f64 * li;
        let mut full = vec![0f32; b * m];
        for s in 0..b {
            full[s * m + cfg.mask_index] = di.data()[s] * cfg.loss.iou_weight;
        }
        Some(Tensor::new(vec![b, m], full)?)
    } else {
        None
    };
    let dmasks = Tensor::new(vec![b, m, h, w], dmasks)?;
    let mut grads = Grads::new();
    let mut c = Ctx { be, tr: cfg.trainable, grads: &mut grads };
    let image_grad = cfg.every_block || !matches!(etape, EncoderTape::None);
    let d_embedding = decoder_backward(&mut c, &model.decoder, &dtape, &dmasks, diou.as_ref(), image_grad)?;
    let d_blocks = match (&model.encoder, &etape, &d_embedding) {
        (Encoder::Vit(e), EncoderTape::Vit(t), Some(d)) => {
            encoder_backward(&mut c, e, t, d, cfg.every_block)?
        }
        (Encoder::TinyVit(e), EncoderTape::TinyVit(t), Some(d)) => {
            tiny_vit_backward(&mut c, e, t, d)?;
            Vec::new()
        }
        _ => Vec::new(),
    };
    Ok(StepOutput { loss, logits, iou, grads, d_embedding, d_blocks })
}

/// The optimizer update of every trainable parameter of `model` that has a gradient in `grads`
/// (a parameter without one, like PyTorch's `grad is None`, is left as it is). Every gradient is
/// checked first, so a NaN or infinite one is [`Error::NonFinite`] and nothing is updated.
pub fn apply(model: &mut Sam, opt: &mut Optimizer, grads: &Grads, lr: f32, step: u64) -> Result<()> {
    if let Some((n, _)) = grads.iter().find(|(_, g)| !g.all_finite()) {
        return Err(Error::NonFinite { what: format!("gradient of {n}"), step });
    }
    visit_trainable(model, &mut |n, p| match grads.get(n) {
        Some(g) => opt.step_finite(n, p, g, lr),
        None => Ok(()),
    })
}
