//! The Backend op `depth_attention` on the device (`depth_attention.cu`): SD-Trans attention
//! across the slices of a volume, read straight out of the qkv projection through strides.

use super::{i32_of, Args, Cuda, Operand};
use crate::device::KernelArgs;
use crate::error::Result;
use crate::geometry;
use crate::params::DepthParams;
use crate::source::KernelConfig;
use medsa_core::{DepthGrouping, RelPos, Tensor};

impl Cuda {
    /// SD-Trans depth attention (spec 3.6, golden README 5.2) on `qkv [N0, P, 3C]` (the qkv
    /// projection of the window-partitioned batch), `depth` slices, `nw` windows per slice,
    /// `grouping`; `rel` = the tables resampled and expanded to the `closest_numbers(depth)`
    /// grid (`Rh [dh, dh, hd]`, `Rw [dw, dw, hd]`). Returns `[N0, P, C]` in the layout of `qkv`.
    /// (What the Backend method `depth_attention` runs, with this crate's error type.)
    #[allow(clippy::too_many_arguments)]
    pub fn depth_attention(
        &self,
        qkv: &Tensor,
        heads: usize,
        depth: usize,
        nw: usize,
        grouping: DepthGrouping,
        rel: Option<RelPos<'_>>,
        scale: f32,
    ) -> Result<Tensor> {
        const OP: &str = "depth_attention";
        let dims = medsa_core::backend::depth_attention_dims(qkv, heads, depth, nw, rel)?;
        let (n0, p, c, hd, (dh, dw)) = (dims.n0, dims.p, dims.c, dims.hd, dims.grid);
        let nseq = n0 * p / depth;
        let l = geometry::depth_attention(nseq, heads, depth, hd, dh, dw, self.dev.max_shared_memory())?;
        let (rh, rw) = match rel {
            Some(r) => (Operand::F32(r.rh), Operand::F32(r.rw)),
            None => (Operand::Absent, Operand::Absent),
        };
        let params = |a: &[u64], out: u64| -> Result<KernelArgs> {
            let prm = DepthParams {
                qkv: a[0],
                out,
                rh: a[1],
                rw: a[2],
                n0: i32_of(OP, n0)?,
                p: i32_of(OP, p)?,
                c: i32_of(OP, c)?,
                heads: i32_of(OP, heads)?,
                hd: i32_of(OP, hd)?,
                depth: i32_of(OP, depth)?,
                dh: i32_of(OP, dh)?,
                dw: i32_of(OP, dw)?,
                nw: i32_of(OP, nw)?,
                grouping: i32::from(grouping == DepthGrouping::PerWindow),
                nseq: i32_of(OP, nseq)?,
                scale,
            };
            let mut args = KernelArgs::new();
            args.push(&prm);
            Ok(args)
        };
        let shape = [n0, p, c];
        self.run_op(
            &KernelConfig::depth_attention(self.storage()),
            "depth_attention_fwd",
            &l,
            &[Operand::Stored(qkv), rh, rw],
            self.stored_output(n0 * p * c, &shape),
            Args::Packed(&params),
        )
    }
}
