//! `#[repr(C)]` mirrors of the parameter structs the kernels take by value.
//!
//! Each struct matches the C struct of the same name in `kernels/cuda/` field by field (pointers
//! as `u64` device addresses); the layout tests pin sizes and offsets so a change on one side
//! without the other fails on the CPU; the emulator also checks every argument's size against
//! the kernel's own parameter types at each launch. Tail padding is an explicit `_pad` field, so
//! the structs are `NoUninit` and their bytes can be handed to any device.

/// `AttnParams` of `attention.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::NoUninit)]
pub struct AttnParams {
    /// q, k, v, o device pointers (bf16).
    pub q: u64,
    /// Keys.
    pub k: u64,
    /// Values.
    pub v: u64,
    /// Output.
    pub o: u64,
    /// Flash: per-query tables `[BH, nq, kh + kw]` f32, or 0.
    pub rel: u64,
    /// Window / rel tables: `Rh [qh, kh, hd]` f32, or 0.
    pub rh: u64,
    /// `Rw [qw, kw, hd]` f32.
    pub rw: u64,
    /// Batch and head strides (elements) of q, k, v, o.
    pub q_sb: i64,
    /// Head stride of q.
    pub q_sh: i64,
    /// Batch stride of k.
    pub k_sb: i64,
    /// Head stride of k.
    pub k_sh: i64,
    /// Batch stride of v.
    pub v_sb: i64,
    /// Head stride of v.
    pub v_sh: i64,
    /// Batch stride of o.
    pub o_sb: i64,
    /// Head stride of o.
    pub o_sh: i64,
    /// Row strides (elements).
    pub q_sr: i32,
    /// Row stride of k.
    pub k_sr: i32,
    /// Row stride of v.
    pub v_sr: i32,
    /// Row stride of o.
    pub o_sr: i32,
    /// Heads (b*h is split as b = bh / heads).
    pub heads: i32,
    /// Queries.
    pub nq: i32,
    /// Keys.
    pub nk: i32,
    /// Query grid rows.
    pub qh: i32,
    /// Query grid columns.
    pub qw: i32,
    /// Key grid rows.
    pub kh: i32,
    /// Key grid columns.
    pub kw: i32,
    /// Softmax scale.
    pub scale: f32,
}

/// `ScalarAttnParams` of `attention_scalar.cu`: [`AttnParams`] without `rel` and with `hd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::NoUninit)]
pub struct ScalarAttnParams {
    /// q, k, v, o device pointers (storage dtype).
    pub q: u64,
    /// Keys.
    pub k: u64,
    /// Values.
    pub v: u64,
    /// Output.
    pub o: u64,
    /// `Rh [qh, kh, hd]` f32 or 0.
    pub rh: u64,
    /// `Rw [qw, kw, hd]` f32.
    pub rw: u64,
    /// Strides as in [`AttnParams`].
    pub q_sb: i64,
    /// Head stride of q.
    pub q_sh: i64,
    /// Batch stride of k.
    pub k_sb: i64,
    /// Head stride of k.
    pub k_sh: i64,
    /// Batch stride of v.
    pub v_sb: i64,
    /// Head stride of v.
    pub v_sh: i64,
    /// Batch stride of o.
    pub o_sb: i64,
    /// Head stride of o.
    pub o_sh: i64,
    /// Row stride of q.
    pub q_sr: i32,
    /// Row stride of k.
    pub k_sr: i32,
    /// Row stride of v.
    pub v_sr: i32,
    /// Row stride of o.
    pub o_sr: i32,
    /// Heads.
    pub heads: i32,
    /// Queries.
    pub nq: i32,
    /// Keys.
    pub nk: i32,
    /// Query grid rows.
    pub qh: i32,
    /// Query grid columns.
    pub qw: i32,
    /// Key grid rows.
    pub kh: i32,
    /// Key grid columns.
    pub kw: i32,
    /// Head dim.
    pub hd: i32,
    /// Softmax scale.
    pub scale: f32,
    /// Value / output dim.
    pub dv: i32,
}

/// `DepthParams` of `depth_attention.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::NoUninit)]
pub struct DepthParams {
    /// `[N0, P, 3C]` qkv (storage dtype).
    pub qkv: u64,
    /// `[N0, P, C]` output.
    pub out: u64,
    /// `Rh [dh, dh, hd]` f32 or 0.
    pub rh: u64,
    /// `Rw [dw, dw, hd]` f32.
    pub rw: u64,
    /// Leading extent N0 = B*D*nW.
    pub n0: i32,
    /// Tokens per window P.
    pub p: i32,
    /// Channels C.
    pub c: i32,
    /// Heads.
    pub heads: i32,
    /// Head dim.
    pub hd: i32,
    /// Depth D.
    pub depth: i32,
    /// Depth grid rows.
    pub dh: i32,
    /// Depth grid columns.
    pub dw: i32,
    /// Windows per slice.
    pub nw: i32,
    /// 0 official, 1 per_window.
    pub grouping: i32,
    /// Number of sequences N0*P/D.
    pub nseq: i32,
    /// Softmax scale.
    pub scale: f32,
}

/// `ConvParams` of `conv.cu` (`conv2d_im2col`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::NoUninit)]
pub struct ConvParams {
    /// `[N, Cin, H, W]` input.
    pub x: u64,
    /// `[N, G, Cin/G KH KW, HO WO]` columns.
    pub cols: u64,
    /// Batch.
    pub n: i32,
    /// Input channels.
    pub cin: i32,
    /// Input height.
    pub h: i32,
    /// Input width.
    pub w: i32,
    /// Kernel height.
    pub kh: i32,
    /// Kernel width.
    pub kw: i32,
    /// Stride.
    pub stride: i32,
    /// Zero padding.
    pub pad: i32,
    /// Channel groups.
    pub groups: i32,
    /// Output height.
    pub ho: i32,
    /// Output width.
    pub wo: i32,
    /// The C struct's tail padding (to 8-byte alignment), explicit so every byte is defined.
    pub _pad: i32,
}

/// `HypParams` of `hyper_chain.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::NoUninit)]
pub struct HypParams {
    /// `[B, T, r]` input.
    pub x: u64,
    /// `[B, L, r, r]` generated weights.
    pub w: u64,
    /// `[L, r]` LayerNorm weights (f32).
    pub gamma: u64,
    /// `[L, r]` LayerNorm biases (f32).
    pub beta: u64,
    /// `[B, T, r]` output.
    pub y: u64,
    /// Prompt sets.
    pub b: i32,
    /// Tokens per set.
    pub t: i32,
    /// LayerNorm eps.
    pub eps: f32,
    /// The C struct's tail padding (to 8-byte alignment), explicit so every byte is defined.
    pub _pad: i32,
}

/// `CopyGeom` of `elementwise.cu` (`strided_copy`): the output shape and the input strides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::NoUninit)]
pub struct CopyGeom {
    /// Output extents, row-major; unused trailing entries 1.
    pub dim: [i64; 6],
    /// Input element stride of each output axis.
    pub stride: [i64; 6],
    /// Input element of output element 0.
    pub offset: i64,
    /// Output elements.
    pub n: i64,
    /// Axes used.
    pub rank: i32,
    /// The C struct's tail padding (to 8-byte alignment), explicit so every byte is defined.
    pub _pad: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_c_structs() {
        // 7 pointers, 8 i64 strides, 11 i32, 1 f32 -> 56 + 64 + 48 = 168.
        assert_eq!(size_of::<AttnParams>(), 168);
        assert_eq!(offset_of!(AttnParams, q_sb), 56);
        assert_eq!(offset_of!(AttnParams, q_sr), 120);
        assert_eq!(offset_of!(AttnParams, scale), 164);
        // 6 pointers, 8 i64, 12 i32, 1 f32, dv -> 48 + 64 + 52 + 4 = 168.
        assert_eq!(offset_of!(ScalarAttnParams, hd), 156);
        assert_eq!(offset_of!(ScalarAttnParams, scale), 160);
        assert_eq!(size_of::<ScalarAttnParams>(), 168);
        assert_eq!(offset_of!(ScalarAttnParams, dv), 164);
        // 2 pointers, 11 i32 -> 16 + 44 = 60 -> padded 64.
        assert_eq!(size_of::<ConvParams>(), 64);
        assert_eq!(offset_of!(DepthParams, scale), 32 + 11 * 4);
        assert_eq!(size_of::<DepthParams>(), 80);
        assert_eq!(offset_of!(HypParams, eps), 48);
        assert_eq!(size_of::<HypParams>(), 56);
        // 14 i64, 2 i32 -> 112 + 8 = 120.
        assert_eq!(offset_of!(CopyGeom, offset), 96);
        assert_eq!(offset_of!(CopyGeom, rank), 112);
        assert_eq!(size_of::<CopyGeom>(), 120);
    }
}
