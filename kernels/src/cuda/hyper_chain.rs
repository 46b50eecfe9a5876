//! The Backend op `hyper_chain` on the device (`hyper_chain.cu`): the fused HyP-Adpt
//! hyper-weight chain, every layer in one launch.

use super::{i32_of, Args, Cuda, Operand};
use crate::device::KernelArgs;
use crate::error::Result;
use crate::geometry;
use crate::params::HypParams;
use crate::source::KernelConfig;
use medsa_core::Tensor;

impl Cuda {
    /// The fused HyP-Adpt chain (spec 5.4): `x [B, T, r]`, generated `w [B, L, r, r]`,
    /// LayerNorm `gamma, beta [L, r]` → `[B, T, r]`, `d ← ReLU(LN_n(d · W[b, n]))` for each layer.
    /// (What the Backend method `hyper_chain` runs, with this crate's error type.)
    pub fn hyper_chain(
        &self,
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "hyper_chain";
        x.expect_rank(OP, "x", 3)?;
        w.expect_rank(OP, "w", 4)?;
        let (b, t, r) = (x.dim(0), x.dim(1), x.dim(2));
        let layers = w.dim(1);
        w.expect_shape(OP, "w", &[b, layers, r, r])?;
        gamma.expect_shape(OP, "gamma", &[layers, r])?;
        beta.expect_shape(OP, "beta", &[layers, r])?;
        let l = geometry::hyper_chain(b, t, r, layers)?;
        if b == 0 || t == 0 {
            return Ok(x.clone());
        }
        let params = |a: &[u64], y: u64| -> Result<KernelArgs> {
            let prm = HypParams {
                x: a[0],
                w: a[1],
                gamma: a[2],
                beta: a[3],
                y,
                b: i32_of(OP, b)?,
                t: i32_of(OP, t)?,
                eps,
                _pad: 0,
            };
            let mut args = KernelArgs::new();
            args.push(&prm);
            Ok(args)
        };
        self.run_op(
            &KernelConfig::hyper_chain(self.storage(), r, layers),
            "hyper_chain_fwd",
            &l,
            &[Operand::Stored(x), Operand::Stored(w), Operand::F32(gamma), Operand::F32(beta)],
            self.stored_output(x.numel(), x.shape()),
            Args::Packed(&params),
        )
    }
}
