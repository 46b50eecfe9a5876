//! The whole network: image encoder + prompt encoder + mask decoder, built from a checkpoint.

use crate::config::{DepthSettings, EncoderConfig, ModelConfig};
use crate::decoder::{DecoderOutput, ImageContext, MaskDecoder};
use crate::encoder::ImageEncoder;
use crate::nn::{place, Trace};
use crate::prompt::{PromptBatch, PromptEncoder};
use crate::tiny_vit::TinyVitEncoder;
use crate::weights::{InitPolicy, TensorMap, WeightLoader};
use crate::{Error, Result};
use medsa_core::{Backend, Tensor};

/// The image encoder of a [`Sam`]: SAM's / Med-SA's ViT or LiteMedSAM's TinyViT.
#[derive(Clone, Debug)]
pub enum Encoder {
    /// ViT (spec 3).
    Vit(ImageEncoder),
    /// TinyViT ([`crate::tiny_vit`]).
    TinyVit(TinyVitEncoder),
}

impl Encoder {
    /// Builds the encoder described by `cfg` from `image_encoder.*` tensors.
    pub fn load(wl: &mut WeightLoader, cfg: &EncoderConfig) -> Result<Self> {
        Ok(match cfg {
            EncoderConfig::Vit(c) => Encoder::Vit(ImageEncoder::load(wl, c)?),
            EncoderConfig::TinyVit(c) => Encoder::TinyVit(TinyVitEncoder::load(wl, c)?),
        })
    }

    /// `x [N, 3, S, S]` → `[N, 256, G, G]`. `depth` (SD-Trans) needs Med-SA's ViT: with the
    /// TinyViT it is an [`Error::Config`].
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        depth: Option<DepthSettings>,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        match self {
            Encoder::Vit(e) => e.forward(be, x, depth, trace),
            Encoder::TinyVit(e) => {
                if depth.is_some() {
                    return Err(Error::Config(
                        "SD-Trans (depth settings) needs Med-SA's ViT encoder; TinyViT has no depth branch"
                            .into(),
                    ));
                }
                e.forward(be, x, trace)
            }
        }
    }
}

/// Options of [`Sam::from_tensors`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// What to do with tensors the checkpoint lacks. `None` (the default): they are errors.
    /// `Some(InitPolicy::Zeros)` or `Some(InitPolicy::Training { seed })`: missing adapter
    /// tensors (encoder adapters, HyP-Adpt, decoder adapters) are initialised, e.g. to load SAM
    /// weights into a Med-SA model; [`Loaded::initialised`] lists them. `Random` builds a whole
    /// random model (benchmarks, tests).
    pub init: Option<InitPolicy>,
}

/// A model and what loading it had to do.
pub struct Loaded {
    /// The model.
    pub model: Sam,
    /// Tensors that were initialised instead of loaded.
    pub initialised: Vec<String>,
}

/// SAM, Med-SA or LiteMedSAM.
#[derive(Clone, Debug)]
pub struct Sam {
    /// Configuration.
    pub cfg: ModelConfig,
    /// Image encoder.
    pub encoder: Encoder,
    /// Prompt encoder.
    pub prompt: PromptEncoder,
    /// Mask decoder.
    pub decoder: MaskDecoder,
}

impl Sam {
    /// Builds the model from checkpoint tensors. Every tensor must be used and every needed
    /// tensor present with the right shape, otherwise the error lists all the problems.
    pub fn from_tensors(cfg: &ModelConfig, tensors: TensorMap, opts: LoadOptions) -> Result<Loaded> {
        let mut wl = WeightLoader::new(tensors);
        if let Some(policy) = opts.init {
            wl.allow_init(policy);
        }
        let encoder = Encoder::load(&mut wl, &cfg.encoder)?;
        let prompt = PromptEncoder::load(&mut wl, &cfg.prompt);
        let decoder = MaskDecoder::load(&mut wl, &cfg.decoder)?;
        let initialised = wl.finish()?;
        Ok(Loaded { model: Sam { cfg: cfg.clone(), encoder, prompt, decoder }, initialised })
    }

    /// `cfg` with seeded random weights for every tensor (`InitPolicy::Random`, rel-pos tables
    /// included): for tests, benchmarks and the GPU checks, where the values do not matter but
    /// must repeat.
    pub fn random(cfg: &ModelConfig, seed: u64) -> Result<Sam> {
        Ok(Sam::from_tensors(cfg, TensorMap::new(), LoadOptions { init: Some(InitPolicy::Random { seed }) })?
            .model)
    }

    /// This model with its weights placed where `be` computes, once ([`Backend::upload`]): the
    /// encoders' and the decoder's weights and the prompt encoder's mask path and `no_mask_embed`
    /// (its point embeddings and PE matrix stay on the host, where the few sparse tokens are
    /// made). On a device backend a prediction then moves only the image up, the prompt's tokens
    /// up and its results down. On a host backend it is a copy of the model.
    pub fn placed(&self, be: &dyn Backend) -> Result<Sam> {
        let mut m = self.clone();
        m.encoder = match &self.encoder {
            Encoder::Vit(e) => Encoder::Vit(e.placed(be)?),
            Encoder::TinyVit(e) => Encoder::TinyVit(e.placed(be)?),
        };
        // HyP-Adpt's stacked norm rows are visited one row at a time (as host copies): they are
        // placed whole below instead.
        crate::train::params::visit_decoder(&mut m.decoder, &mut |name, t| {
            if name.contains(".norms.") {
                Ok(())
            } else {
                place(be, t)
            }
        })?;
        for a in m.decoder.layers.iter_mut().filter_map(|l| l.adapters.as_mut()) {
            place(be, &mut a.hyp.gamma)?;
            place(be, &mut a.hyp.beta)?;
        }
        let p = &mut m.prompt;
        place(be, &mut p.no_mask)?;
        for (w, b) in &mut p.mask_convs {
            place(be, w)?;
            place(be, b)?;
        }
        for n in &mut p.mask_norms {
            place(be, &mut n.w)?;
            place(be, &mut n.b)?;
        }
        Ok(m)
    }

    /// Image embeddings `[N, 256, G, G]` of preprocessed images `[N, 3, S, S]`.
    pub fn embed(
        &self,
        be: &dyn Backend,
        x: &Tensor,
        depth: Option<DepthSettings>,
        trace: &mut Trace,
    ) -> Result<Tensor> {
        let bad = x.data().iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(Error::Image(format!("{bad} of {} input values are NaN or infinite", x.numel())));
        }
        self.encoder.forward(be, x, depth, trace)
    }

    /// The decoder's per-image work for `image [N, 256, G, G]` with the prompt encoder's
    /// `dense_pe [1, 256, G, G]`, done once so that [`Sam::decode_prepared`] runs only what
    /// depends on the prompt (see [`MaskDecoder::prepare`]).
    pub fn prepare_image(&self, be: &dyn Backend, image: &Tensor, dense_pe: &Tensor) -> Result<ImageContext> {
        let d = self.prompt.no_mask.numel();
        self.decoder.prepare(be, image, dense_pe, &self.prompt.no_mask.clone().reshape(vec![d])?)
    }

    /// Prompt encoder and decoder for B prompt sets on `image [N, 256, G, G]` (N = 1 or B)
    /// with the prompt encoder's `dense_pe [1, 256, G, G]`. To decode many prompts on one image,
    /// call [`Sam::prepare_image`] once and then [`Sam::decode_prepared`] (as the
    /// [`crate::predictor::Predictor`] does).
    pub fn decode(
        &self,
        be: &dyn Backend,
        image: &Tensor,
        dense_pe: &Tensor,
        prompts: &PromptBatch,
        trace: &mut Trace,
    ) -> Result<DecoderOutput> {
        self.decode_prepared(be, &ImageContext::new(be, image, dense_pe)?, prompts, trace)
    }

    /// [`Sam::decode`] on a prepared image: only the prompt-dependent work.
    pub fn decode_prepared(
        &self,
        be: &dyn Backend,
        image: &ImageContext,
        prompts: &PromptBatch,
        trace: &mut Trace,
    ) -> Result<DecoderOutput> {
        let emb = self.prompt.forward(be, prompts)?;
        trace.record("sparse_embeddings", &emb.sparse);
        if trace.is_enabled() {
            trace.record("dense_embeddings", &emb.dense.to_tensor(emb.sparse.dim(0), image.grid())?);
        }
        self.decoder.forward(be, image, &emb, trace)
    }

    /// The masks and IoUs of a selection `[start, end)` of the mask tokens, where `be` keeps
    /// them.
    pub fn select(be: &dyn Backend, out: &DecoderOutput, range: (usize, usize)) -> Result<(Tensor, Tensor)> {
        let (s, e) = range;
        Ok((be.narrow(&out.masks, 1, s, e - s)?, be.narrow(&out.iou, 1, s, e - s)?))
    }
}
