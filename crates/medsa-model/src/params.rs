//! Parameter accounting: total and adapter parameters per component, computed from a config
//! without allocating the model (spec 7.4 explains why the paper's "13M of 636M" is not what the
//! official code trains).

use crate::config::ModelConfig;
use crate::decoder::MaskDecoder;
use crate::prompt::PromptEncoder;
use crate::sam::Encoder;
use crate::weights::WeightLoader;
use crate::Result;

/// Parameter counts of one component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every parameter (persistent buffers are counted in [`ParamReport::buffers`]).
    pub total: usize,
    /// Parameters of adapters (names containing `Adapter` or `HyP_`): what fine-tuning trains.
    pub adapters: usize,
}

/// Counts per component and for the whole model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParamReport {
    /// `image_encoder.*`.
    pub image_encoder: Counts,
    /// Of which `Depth_Adapter` (used only by SD-Trans in 3D).
    pub depth_adapters: usize,
    /// `prompt_encoder.*`.
    pub prompt_encoder: Counts,
    /// `mask_decoder.*`.
    pub mask_decoder: Counts,
    /// Persistent buffers stored in checkpoints but not trained (the prompt encoder's random
    /// Fourier matrix).
    pub buffers: usize,
}

impl ParamReport {
    /// Whole model.
    pub fn total(&self) -> Counts {
        Counts {
            total: self.image_encoder.total + self.prompt_encoder.total + self.mask_decoder.total,
            adapters: self.image_encoder.adapters + self.prompt_encoder.adapters + self.mask_decoder.adapters,
        }
    }
}

/// Counts the parameters `cfg` describes (the tensors a checkpoint of it holds).
pub fn count(cfg: &ModelConfig) -> Result<ParamReport> {
    let mut wl = WeightLoader::dry_run();
    Encoder::load(&mut wl, &cfg.encoder)?;
    PromptEncoder::load(&mut wl, &cfg.prompt);
    MaskDecoder::load(&mut wl, &cfg.decoder)?;
    let mut r = ParamReport::default();
    for (name, n) in wl.into_requests() {
        if name.ends_with("positional_encoding_gaussian_matrix") {
            r.buffers += n;
            continue;
        }
        let adapter = name.contains("Adapter") || name.contains("HyP_");
        let c = if name.starts_with("image_encoder.") {
            if name.contains("Depth_Adapter") {
                r.depth_adapters += n;
            }
            &mut r.image_encoder
        } else if name.starts_with("prompt_encoder.") {
            &mut r.prompt_encoder
        } else {
            &mut r.mask_decoder
        };
        c.total += n;
        if adapter {
            c.adapters += n;
        }
    }
    Ok(r)
}
