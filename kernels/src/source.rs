//! Kernel sources, their configs, and NVRTC compilation to PTX.
//!
//! Every `.cu` file in `kernels/cuda/` is embedded with `include_str!`. A [`KernelConfig`] names
//! one source plus the `#define`s that specialise it (head dim, tile sizes, storage dtype); the
//! text NVRTC sees is the defines, then `device_prelude.cuh`, then `common.cuh`, then the source
//! (the CPU emulator compiles the same text with `emulator_prelude.hpp` as the prelude). No file is read at run
//! time and no CUDA header is needed. [`all_configs`] lists every config the crate launches; it is
//! what `cargo xtask ptx` compiles for sm_80 and sm_90.

use crate::error::{KernelError, Result};

/// The device prelude NVRTC sees first: types and the PTX primitives (`asm`).
pub const DEVICE_PRELUDE: &str = include_str!("../cuda/device_prelude.cuh");
/// The emulator's stand-in for [`DEVICE_PRELUDE`] (see [`crate::emulator`]).
pub const EMULATOR_PRELUDE: &str = include_str!("../cuda/emulator_prelude.hpp");
/// The helpers both builds share, after the prelude.
pub const COMMON: &str = include_str!("../cuda/common.cuh");

/// One `.cu` file of `kernels/cuda/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// `attention.cu`: tensor-core flash / windowed attention and the per-query bias tables.
    Attention,
    /// `attention_scalar.cu`: CUDA-core attention for any head dim (f32 parity path, decoder).
    AttentionScalar,
    /// `depth_attention.cu`: SD-Trans depth attention through strides.
    DepthAttention,
    /// `hyper_chain.cu`: the fused HyP-Adpt hyper-weight chain.
    HyperChain,
    /// `elementwise.cu`: norms, activations, window partition, resizes, softmax, casts.
    Elementwise,
    /// `conv.cu`: im2col (any stride, padding, groups), the 2x2 transposed conv, channel bias.
    Conv,
    /// `position.cu`: the rel-pos table resample + gather, the random-Fourier prompt encoding.
    Position,
    /// `probe.cu`: one kernel per prelude primitive (mma, ldmatrix, shuffles, cp.async, barriers).
    Probe,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 8] = [
        Source::Attention,
        Source::AttentionScalar,
        Source::DepthAttention,
        Source::HyperChain,
        Source::Elementwise,
        Source::Conv,
        Source::Position,
        Source::Probe,
    ];

    /// File name under `kernels/cuda/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Source::Attention => "attention.cu",
            Source::AttentionScalar => "attention_scalar.cu",
            Source::DepthAttention => "depth_attention.cu",
            Source::HyperChain => "hyper_chain.cu",
            Source::Elementwise => "elementwise.cu",
            Source::Conv => "conv.cu",
            Source::Position => "position.cu",
            Source::Probe => "probe.cu",
        }
    }

    /// The source text (without the common prelude).
    pub fn text(self) -> &'static str {
        match self {
            Source::Attention => include_str!("../cuda/attention.cu"),
            Source::AttentionScalar => include_str!("../cuda/attention_scalar.cu"),
            Source::DepthAttention => include_str!("../cuda/depth_attention.cu"),
            Source::HyperChain => include_str!("../cuda/hyper_chain.cu"),
            Source::Elementwise => include_str!("../cuda/elementwise.cu"),
            Source::Conv => include_str!("../cuda/conv.cu"),
            Source::Position => include_str!("../cuda/position.cu"),
            Source::Probe => include_str!("../cuda/probe.cu"),
        }
    }

    /// The `extern "C"` entry points the source defines.
    pub fn entries(self) -> &'static [&'static str] {
        match self {
            Source::Attention => &["attention_flash_fwd", "attention_window_fwd", "attention_rel_tables"],
            Source::AttentionScalar => &["attention_scalar_fwd"],
            Source::DepthAttention => &["depth_attention_fwd"],
            Source::HyperChain => &["hyper_chain_fwd"],
            Source::Elementwise => &[
                "layer_norm_fwd",
                "layer_norm2d_fwd",
                "gelu_fwd",
                "relu_fwd",
                "add_scaled",
                "strided_copy",
                "scale_fwd",
                "cat_part",
                "softmax_fwd",
                "window_partition_fwd",
                "window_unpartition_fwd",
                "resize_bilinear",
                "resize_bicubic",
                "resize_nearest",
                "cast_f32_to_elem",
                "cast_elem_to_f32",
                "linear_epilogue",
                "attention_add_rel_bias",
            ],
            Source::Conv => &["conv2d_im2col", "conv_transpose2x2_fwd", "conv2d_add_bias"],
            Source::Position => &["rel_pos_table_fwd", "pe_encode_fwd"],
            Source::Probe => &[
                "probe_mma",
                "probe_ldmatrix",
                "probe_shfl_xor",
                "probe_cp_async",
                "probe_barrier",
                "probe_bf16",
            ],
        }
    }
}

/// Storage dtype of a kernel config (compute is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    /// f32 storage: the parity path.
    F32,
    /// bf16 storage: the fast path.
    Bf16,
}

impl Storage {
    /// Short name (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::Bf16 => "bf16",
        }
    }
}

/// A source plus the defines that specialise it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelConfig {
    /// The source file.
    pub source: Source,
    /// `#define NAME VALUE` lines prepended to the source, in order.
    pub defines: Vec<(&'static str, i64)>,
}

/// Head dims the tensor-core attention kernels are built for (ViT-B/L: 64, ViT-H: 80).
pub const TC_HEAD_DIMS: [usize; 2] = [64, 80];
/// Keys per chunk of the tensor-core attention kernels.
pub const ATTN_BLOCK_N: usize = 64;
/// Warps per CTA of the tensor-core attention kernels.
pub const ATTN_WARPS: usize = 4;
/// m16 query tiles per warp of the tensor-core attention kernels (each K / V fragment loaded from
/// shared memory feeds this many mma's).
pub const ATTN_M_TILES: usize = 2;
/// Largest head / value dim of the CUDA-core attention kernel (its configs are built for
/// [`SCALAR_HD_MAX`]).
pub const SCALAR_MAX_HEAD_DIM: usize = 256;
/// The `HD_MAX` configs of the CUDA-core attention (registers per lane grow with it).
pub const SCALAR_HD_MAX: [usize; 2] = [128, 256];

fn dtype_define(s: Storage) -> (&'static str, i64) {
    ("DTYPE_BF16", i64::from(s == Storage::Bf16))
}

impl KernelConfig {
    /// Tensor-core attention (bf16 storage) for one head dim.
    pub fn attention(head_dim: usize) -> Self {
        KernelConfig {
            source: Source::Attention,
            defines: vec![
                ("DTYPE_BF16", 1),
                ("HEAD_DIM", head_dim as i64),
                ("BLOCK_N", ATTN_BLOCK_N as i64),
                ("NUM_WARPS", ATTN_WARPS as i64),
                ("M_TILES", ATTN_M_TILES as i64),
            ],
        }
    }

    /// CUDA-core attention for head and value dims up to `dims` (the smallest config of
    /// [`SCALAR_HD_MAX`] that holds it; at most [`SCALAR_MAX_HEAD_DIM`]).
    pub fn attention_scalar(storage: Storage, dims: usize) -> Self {
        let hd_max = SCALAR_HD_MAX.into_iter().find(|&m| dims <= m).unwrap_or(SCALAR_MAX_HEAD_DIM);
        KernelConfig {
            source: Source::AttentionScalar,
            defines: vec![dtype_define(storage), ("HD_MAX", hd_max as i64)],
        }
    }

    /// SD-Trans depth attention for head dims up to 128.
    pub fn depth_attention(storage: Storage) -> Self {
        KernelConfig { source: Source::DepthAttention, defines: vec![dtype_define(storage), ("HD_MAX", 128)] }
    }

    /// The convolution kernels.
    pub fn conv(storage: Storage) -> Self {
        KernelConfig { source: Source::Conv, defines: vec![dtype_define(storage)] }
    }

    /// The positional-encoding kernels.
    pub fn position(storage: Storage) -> Self {
        KernelConfig { source: Source::Position, defines: vec![dtype_define(storage)] }
    }

    /// The HyP-Adpt chain for bottleneck width `r` (<= 128) and `layers` layers.
    pub fn hyper_chain(storage: Storage, r: usize, layers: usize) -> Self {
        KernelConfig {
            source: Source::HyperChain,
            defines: vec![dtype_define(storage), ("HYP_R", r as i64), ("HYP_LAYERS", layers as i64)],
        }
    }

    /// The elementwise / normalisation / data-movement kernels.
    pub fn elementwise(storage: Storage) -> Self {
        KernelConfig { source: Source::Elementwise, defines: vec![dtype_define(storage)] }
    }

    /// The prelude probes.
    pub fn probe() -> Self {
        KernelConfig { source: Source::Probe, defines: vec![] }
    }

    /// Whether the config holds attention kernels (a spill there fails `cargo xtask ptx`).
    pub fn is_attention(&self) -> bool {
        matches!(self.source, Source::Attention | Source::AttentionScalar | Source::DepthAttention)
    }

    /// A short human label, e.g. `attention.cu[DTYPE_BF16=1,HEAD_DIM=64,...]`.
    pub fn label(&self) -> String {
        let d: Vec<String> = self.defines.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}[{}]", self.source.file_name(), d.join(","))
    }

    /// A file-name-safe stem, e.g. `attention-DTYPE_BF16_1-HEAD_DIM_64-...`.
    pub fn stem(&self) -> String {
        let mut s = self.source.file_name().trim_end_matches(".cu").to_string();
        for (k, v) in &self.defines {
            s.push_str(&format!("-{k}_{v}"));
        }
        s
    }

    /// The full text handed to NVRTC: defines, device prelude, common helpers, source.
    pub fn full_source(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.defines {
            s.push_str(&format!("#define {k} {v}\n"));
        }
        s.push_str(DEVICE_PRELUDE);
        s.push('\n');
        s.push_str(COMMON);
        s.push('\n');
        s.push_str(self.source.text());
        s
    }
}

/// Every config the crate can launch (what `cargo xtask ptx` compiles).
pub fn all_configs() -> Vec<KernelConfig> {
    let mut v = Vec::new();
    for hd in TC_HEAD_DIMS {
        v.push(KernelConfig::attention(hd));
    }
    for s in [Storage::F32, Storage::Bf16] {
        for m in SCALAR_HD_MAX {
            v.push(KernelConfig::attention_scalar(s, m));
        }
        v.push(KernelConfig::depth_attention(s));
        v.push(KernelConfig::conv(s));
        v.push(KernelConfig::position(s));
        v.push(KernelConfig::hyper_chain(s, 32, 3));
        v.push(KernelConfig::hyper_chain(s, 64, 3));
        v.push(KernelConfig::elementwise(s));
    }
    v.push(KernelConfig::probe());
    v
}

/// A GPU architecture NVRTC compiles for (`sm_XY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arch {
    /// Major compute capability.
    pub major: u32,
    /// Minor compute capability.
    pub minor: u32,
}

impl Arch {
    /// Ampere A100 (the minimum: cp.async, ldmatrix, bf16 mma).
    pub const SM80: Arch = Arch { major: 8, minor: 0 };
    /// Hopper H100 / H200.
    pub const SM90: Arch = Arch { major: 9, minor: 0 };

    /// `sm_XY`.
    pub fn sm(self) -> String {
        format!("sm_{}{}", self.major, self.minor)
    }

    /// Whether the kernels can run on it (bf16 mma.sync and cp.async need sm_80).
    pub fn supported(self) -> bool {
        self.major >= 8
    }
}

/// Whether libnvrtc can be loaded (cudarc panics on first use otherwise, so check first).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen candidate library names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version `(major, minor)`, if the library loads.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_available() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); both out-pointers are valid.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Compiles one config for `arch` with NVRTC and returns the PTX text.
pub fn compile_ptx(cfg: &KernelConfig, arch: Arch) -> Result<String> {
    if !nvrtc_available() {
        return Err(KernelError::NoNvrtc);
    }
    let opts = cudarc::nvrtc::CompileOptions {
        fmad: Some(true),
        options: vec![
            format!("--gpu-architecture={}", arch.sm()),
            "--std=c++17".into(),
            "--generate-line-info".into(),
        ],
        name: Some(cfg.source.file_name().into()),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(cfg.full_source(), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(e) => {
            let log = match &e {
                cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
                other => format!("{other:?}"),
            };
            Err(KernelError::Compile {
                kernel: cfg.source.file_name(),
                config: cfg.label(),
                arch: arch.sm(),
                log,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_appears_in_its_source() {
        for s in Source::ALL {
            for e in s.entries() {
                assert!(s.text().contains(&format!("{e}(")), "{} does not define {e}", s.file_name());
                assert!(s.text().contains("extern \"C\""));
            }
            assert!(!s.text().contains("#include"), "{} must be header-free", s.file_name());
        }
    }

    #[test]
    fn labels_are_unique() {
        let cfgs = all_configs();
        let mut stems: Vec<String> = cfgs.iter().map(|c| c.stem()).collect();
        stems.sort();
        stems.dedup();
        assert_eq!(stems.len(), cfgs.len());
        assert!(cfgs[0].full_source().starts_with("#define DTYPE_BF16 1\n#define HEAD_DIM 64\n"));
    }

    #[test]
    fn every_config_compiles_with_nvrtc() {
        if !nvrtc_available() {
            assert!(std::env::var_os("CI").is_none(), "CI must have NVRTC (.ci/cuda-wheels.sh)");
            eprintln!("skipped: no NVRTC");
            return;
        }
        for cfg in all_configs() {
            for arch in [Arch::SM80, Arch::SM90] {
                let ptx = compile_ptx(&cfg, arch).unwrap_or_else(|e| panic!("{e}"));
                for e in cfg.source.entries() {
                    assert!(ptx.contains(&format!(".entry {e}(")), "{} lacks {e}", cfg.label());
                }
            }
        }
    }
}
