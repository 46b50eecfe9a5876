//! Shared inputs of medsa's benchmarks: deterministic random tensors at the paper's sizes and
//! their FLOP counts, used by the criterion benches and by the peak-memory examples.

use medsa_core::{Backend, RelPos, Result, Tensor};
use medsa_testkit::random_tensor;

/// The ViT-B global-attention problem (spec 3.1/3.3): 12 heads, a 64x64 token grid, head dim 64,
/// with the 127-row relative-position tables expanded to `[64, 64, 64]`.
pub struct GlobalAttention {
    /// Queries `[12, 4096, 64]`.
    pub q: Tensor,
    /// Keys `[12, 4096, 64]`.
    pub k: Tensor,
    /// Values `[12, 4096, 64]`.
    pub v: Tensor,
    /// `Rh` `[64, 64, 64]`.
    pub rh: Tensor,
    /// `Rw` `[64, 64, 64]`.
    pub rw: Tensor,
}

impl GlobalAttention {
    /// Heads, tokens per side, head dim.
    pub const SHAPE: (usize, usize, usize) = (12, 64, 64);

    /// Builds the inputs on `backend` (the tables go through `rel_pos_table`).
    pub fn new(backend: &dyn Backend) -> Result<Self> {
        let (h, g, d) = Self::SHAPE;
        let table = random_tensor(&[2 * g - 1, d], 4).scale(0.1);
        Ok(GlobalAttention {
            q: random_tensor(&[h, g * g, d], 1),
            k: random_tensor(&[h, g * g, d], 2),
            v: random_tensor(&[h, g * g, d], 3),
            rh: backend.rel_pos_table(g, g, &table)?,
            rw: backend.rel_pos_table(g, g, &table)?,
        })
    }

    /// Runs the attention once.
    pub fn run(&self, backend: &dyn Backend) -> Result<Tensor> {
        let d = Self::SHAPE.2;
        backend.attention(
            &self.q,
            &self.k,
            &self.v,
            1.0 / (d as f32).sqrt(),
            Some(RelPos { rh: &self.rh, rw: &self.rw }),
        )
    }

    /// FLOPs counted as the two matrix products (4·h·N²·d); the bias and softmax come on top.
    pub fn flops() -> f64 {
        let (h, g, d) = Self::SHAPE;
        let n = (g * g) as f64;
        4.0 * h as f64 * n * n * d as f64
    }
}

/// A preprocessed input `[1, 3, S, S]` in SAM's normalised range.
pub fn random_image(s: usize) -> Tensor {
    random_tensor(&[1, 3, s, s], 9).scale(2.0)
}

/// One fine-tuning step of Med-SA ViT-B (official trainable set: encoder adapters + the whole
/// mask decoder) on one 1024x1024 image with one click, as the training benchmarks and the
/// peak-memory example run it.
pub struct FineTuneStep {
    /// The model (random weights).
    pub model: medsa_model::Sam,
    /// The preprocessed image.
    pub image: Tensor,
    /// One foreground click.
    pub prompt: medsa_model::prompt::PromptBatch,
    /// A target mask `[1, 1, 256, 256]` (a disc).
    pub target: Tensor,
    /// Dice + BCE.
    pub loss: medsa_model::train::loss::LossConfig,
    /// The `official` rule's parameters.
    pub trainable: medsa_model::train::params::Trainable,
    /// AdamW.
    pub opt: medsa_model::train::optim::Optimizer,
}

impl FineTuneStep {
    /// Med-SA ViT-B at 1024 with random weights.
    pub fn medsa_vit_b() -> medsa_model::Result<Self> {
        use medsa_model::train::params::{trainable_shapes, Trainable, TrainableRule};
        let cfg = medsa_model::config::ModelConfig::medsa(medsa_model::config::VitSize::B, 1024, None);
        let mut model = medsa_model::Sam::random(&cfg, 1)?;
        let trainable = Trainable::select(&TrainableRule::Official, &trainable_shapes(&mut model)?)?;
        let prompt = medsa_model::prompt::PromptBatch {
            coords: Some(Tensor::new(vec![1, 1, 2], vec![500.0, 420.0])?),
            labels: vec![1],
            ..Default::default()
        };
        let target = Tensor::from_fn(vec![1, 1, 256, 256], |i| {
            let (y, x) = ((i / 256) as f32 - 105.0, (i % 256) as f32 - 125.0);
            if x * x + y * y < 40.0 * 40.0 {
                1.0
            } else {
                0.0
            }
        })?;
        Ok(FineTuneStep {
            model,
            image: random_image(1024),
            prompt,
            target,
            loss: Default::default(),
            trainable,
            opt: medsa_model::train::optim::Optimizer::new(Default::default()),
        })
    }

    /// The forward alone (encoder, prompt encoder, decoder), the reference a step is compared to.
    pub fn forward(&self) -> medsa_model::Result<Tensor> {
        let be = medsa_ref::Cpu;
        let emb = self.model.embed(&be, &self.image, None, &mut medsa_model::nn::Trace::disabled())?;
        let pe = self.model.prompt.dense_pe(&be)?;
        let out = self.model.decode(&be, &emb, &pe, &self.prompt, &mut medsa_model::nn::Trace::disabled())?;
        Ok(out.masks)
    }

    /// Forward + backward + AdamW; returns the loss.
    pub fn step(
        &mut self,
        checkpointing: medsa_model::train::encoder::Checkpointing,
    ) -> medsa_model::Result<f64> {
        use medsa_model::train::step::{apply, forward_backward, StepConfig, StepInput};
        let cfg = StepConfig {
            loss: &self.loss,
            trainable: &self.trainable,
            mask_index: 0,
            checkpointing,
            every_block: false,
        };
        let input = StepInput::Images(&self.image, None);
        let r = forward_backward(&medsa_ref::Cpu, &self.model, input, &self.prompt, &self.target, cfg, 0)?;
        apply(&mut self.model, &mut self.opt, &r.grads, 1e-4, 0)?;
        Ok(r.loss)
    }
}

/// One LiteMedSAM decoder step on a cached image embedding (`decoder` set: the whole mask
/// decoder; one box; Dice + BCE; AdamW), as the training bench and `decoder_step_ratio` run it.
pub struct LiteDecoderStep {
    /// The model (random weights, LiteMedSAM's config).
    pub model: medsa_model::Sam,
    /// The cached image embedding `[1, 256, 64, 64]`.
    pub embedding: Tensor,
    /// The decoder's dense positional encoding, computed once.
    pub dense_pe: Tensor,
    /// One box.
    pub prompt: medsa_model::prompt::PromptBatch,
    /// A target mask `[1, 1, 256, 256]` (a band).
    pub target: Tensor,
    /// Dice + BCE.
    pub loss: medsa_model::train::loss::LossConfig,
    /// The `decoder` rule's parameters.
    pub trainable: medsa_model::train::params::Trainable,
    /// AdamW.
    pub opt: medsa_model::train::optim::Optimizer,
}

impl LiteDecoderStep {
    /// LiteMedSAM with random weights and a random embedding.
    pub fn new() -> medsa_model::Result<Self> {
        use medsa_model::train::params::{trainable_shapes, Trainable, TrainableRule};
        let mut model = medsa_model::Sam::random(&medsa_model::config::ModelConfig::lite_medsam(), 1)?;
        let trainable = Trainable::select(&TrainableRule::Decoder, &trainable_shapes(&mut model)?)?;
        let dense_pe = model.prompt.dense_pe(&medsa_ref::Cpu)?;
        let prompt = medsa_model::prompt::PromptBatch {
            boxes: Some(Tensor::new(vec![1, 4], vec![60.0, 70.0, 150.0, 190.0])?),
            ..Default::default()
        };
        let target =
            Tensor::from_fn(vec![1, 1, 256, 256], |i| f32::from(((i / 256) as i32 - 128).abs() < 50))?;
        Ok(LiteDecoderStep {
            model,
            embedding: medsa_testkit::random_tensor(&[1, 256, 64, 64], 5),
            dense_pe,
            prompt,
            target,
            loss: Default::default(),
            trainable,
            opt: medsa_model::train::optim::Optimizer::new(Default::default()),
        })
    }

    /// The decoder's inference forward (`Sam::decode`), the reference a step is compared to.
    pub fn forward(&self) -> medsa_model::Result<Tensor> {
        let (be, mut trace) = (medsa_ref::Cpu, medsa_model::nn::Trace::disabled());
        Ok(self.model.decode(&be, &self.embedding, &self.dense_pe, &self.prompt, &mut trace)?.masks)
    }

    /// The step's configuration (no checkpointing: there is no encoder in it).
    pub fn config(&self) -> medsa_model::train::step::StepConfig<'_> {
        medsa_model::train::step::StepConfig {
            loss: &self.loss,
            trainable: &self.trainable,
            mask_index: 0,
            checkpointing: medsa_model::train::encoder::Checkpointing::Off,
            every_block: false,
        }
    }

    /// Forward with tape + backward + AdamW; returns the loss.
    pub fn step(&mut self) -> medsa_model::Result<f64> {
        use medsa_model::train::step::{apply, forward_backward, StepInput};
        let input = StepInput::Embeddings { embeddings: &self.embedding, dense_pe: &self.dense_pe };
        let r = forward_backward(
            &medsa_ref::Cpu,
            &self.model,
            input,
            &self.prompt,
            &self.target,
            self.config(),
            0,
        )?;
        apply(&mut self.model, &mut self.opt, &r.grads, 1e-4, 0)?;
        Ok(r.loss)
    }
}

/// Tells mimalloc to keep freed memory committed instead of returning it to the OS after 10 ms
/// (`mi_option_purge_delay` = -1). Each tensor is a fresh allocation; once purged, its pages
/// come back zeroed by the kernel on the next touch, and on this VM that zeroing took a quarter
/// to a third of a training step (`clear_page_erms` in `perf`). Peak memory is unchanged: the
/// kept pages are the ones reused.
pub fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc's `mi_option_e` (index 15 in v2 and v3).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is allowed at any time; it only changes later purge decisions.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}
