//! The Backend ops `linear`, `linear_act`, `linear_add`, `matmul` and `bmm` on the device:
//! batched GEMMs (cuBLAS on a GPU, its documented semantics on the emulator) and, after a
//! linear layer's GEMM, its bias, activation and residual add in one pass (`linear_epilogue`).

use super::{i32_of, i64_of, Cuda, DBuf};
use crate::device::{GemmCall, GemmType, KernelArgs};
use crate::error::Result;
use crate::geometry;
use crate::source::{KernelConfig, Storage};
use medsa_core::{Activation, Backend, Tensor};

impl Cuda {
    /// Row-major batched `C[b] = op(A[b]) · op(B[b])` on device buffers, as a column-major GEMM
    /// (`Cᵀ = op(B)ᵀ op(A)ᵀ`). `a_t` / `b_t`: whether A / B are stored transposed (`A` as
    /// `[K, M]`, `B` as `[N, K]`); `sa` / `sb`: batch strides (0 broadcasts an operand).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_dev(
        &self,
        a: &DBuf,
        b: &DBuf,
        c: &mut DBuf,
        batch: usize,
        mnk: (usize, usize, usize),
        trans: (bool, bool),
        strides: (usize, usize),
    ) -> Result<()> {
        Self::check_storage("gemm", &[a, b, c], a.storage)?;
        self.gemm_at(a.storage, (a.addr(), b.addr(), c.addr()), batch, mnk, trans, strides)
    }

    /// [`Cuda::gemm_dev`] on raw device addresses (sub-ranges of buffers) in storage `st`.
    pub(super) fn gemm_at(
        &self,
        st: Storage,
        (a, b, c): (u64, u64, u64),
        batch: usize,
        (m, n, k): (usize, usize, usize),
        (a_t, b_t): (bool, bool),
        (sa, sb): (usize, usize),
    ) -> Result<()> {
        const OP: &str = "gemm";
        let (mi, ni, ki) = (i32_of(OP, m)?, i32_of(OP, n)?, i32_of(OP, k)?);
        self.dev.gemm(&GemmCall {
            dtype: match st {
                Storage::F32 => GemmType::F32,
                Storage::Bf16 => GemmType::Bf16,
            },
            trans_a: b_t,
            trans_b: a_t,
            m: ni,
            n: mi,
            k: ki,
            alpha: 1.0,
            a: b,
            lda: if b_t { ki } else { ni },
            stride_a: i64_of(sb),
            b: a,
            ldb: if a_t { mi } else { ki },
            stride_b: i64_of(sa),
            beta: 0.0,
            c,
            ldc: ni,
            stride_c: i64_of(m * n),
            batch: i32_of(OP, batch)?,
        })
    }

    /// `gemm_dev` on tensors (resident or uploaded) in this backend's storage; returns C on the
    /// device.
    fn gemm(
        &self,
        a: &Tensor,
        b: &Tensor,
        batch: usize,
        mnk: (usize, usize, usize),
        trans: (bool, bool),
        strides: (usize, usize),
    ) -> Result<DBuf> {
        let st = self.storage();
        let (ad, bd) = (self.operand(a, st)?, self.operand(b, st)?);
        let mut cd = self.alloc(batch * mnk.0 * mnk.1, st)?;
        self.gemm_dev(ad.buf(), bd.buf(), &mut cd, batch, mnk, trans, strides)?;
        Ok(cd)
    }

    /// The Backend ops `linear` (`act` and `residual` None), `linear_act` (`act`) and
    /// `linear_add` (`residual` = `(r, s)`): `y = act(x wᵀ (+ b))`, then `r + s·y`, over the
    /// last axis of `x`.
    pub(super) fn linear_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        act: Option<Activation>,
        residual: Option<(&Tensor, f32)>,
    ) -> medsa_core::Result<Tensor> {
        const OP: &str = "linear";
        if let Some((r, _)) = residual {
            medsa_core::shape::linear_add_residual(r, x, w)?;
        }
        w.expect_rank(OP, "weight", 2)?;
        let (out_f, in_f) = (w.dim(0), w.dim(1));
        if x.rank() == 0 || x.last_dim() != in_f {
            return Err(medsa_core::Error::shape(
                OP,
                format!("input {:?} vs weight {:?}", x.shape(), w.shape()),
            ));
        }
        if let Some(b) = b {
            b.expect_shape(OP, "bias", &[out_f])?;
        }
        let m = x.numel() / in_f.max(1);
        let mut shape = x.shape().to_vec();
        if let Some(l) = shape.last_mut() {
            *l = out_f;
        }
        if m == 0 || out_f == 0 || in_f == 0 {
            let mut y = Tensor::zeros(shape)?;
            if let Some(b) = b {
                y.add_broadcast_assign(b)?;
            }
            let y = match act {
                Some(Activation::Gelu) => self.cpu.gelu(y)?,
                Some(Activation::Relu) => self.cpu.relu(y)?,
                None => y,
            };
            return match residual {
                Some((r, s)) => self.add_scaled(r.clone(), &y, s),
                None => Ok(y),
            };
        }
        let yd = self.gemm(x, w, 1, (m, out_f, in_f), (false, true), (0, 0))?;
        let code: i32 = match act {
            None => 0,
            Some(Activation::Gelu) => 1,
            Some(Activation::Relu) => 2,
        };
        if b.is_some() || code != 0 || residual.is_some() {
            let bd = b.map(|b| self.operand(b, Storage::F32)).transpose()?;
            let rd = residual.map(|(r, _)| self.operand(r, self.storage())).transpose()?;
            let mut a = KernelArgs::new();
            a.push(&yd.addr()).push(&bd.as_ref().map_or(0, |d| d.addr()));
            a.push(&rd.as_ref().map_or(0, |d| d.addr()));
            a.push(&i64_of(m)).push(&i32_of(OP, out_f)?).push(&code);
            a.push(&residual.map_or(1.0f32, |(_, s)| s));
            self.launch(
                &KernelConfig::elementwise(self.storage()),
                "linear_epilogue",
                &geometry::elementwise(m * out_f),
                &a,
            )?;
        }
        Ok(self.resident(yd, &shape)?)
    }

    /// The Backend op `matmul`: `[m, k] x [k, n]`.
    pub(super) fn matmul_fwd(&self, a: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        const OP: &str = "matmul";
        a.expect_rank(OP, "a", 2)?;
        b.expect_rank(OP, "b", 2)?;
        let (m, k, n) = (a.dim(0), a.dim(1), b.dim(1));
        b.expect_shape(OP, "b", &[k, n])?;
        if m * n * k == 0 {
            return Tensor::zeros(vec![m, n]);
        }
        let c = self.gemm(a, b, 1, (m, n, k), (false, false), (0, 0))?;
        Ok(self.resident(c, &[m, n])?)
    }

    /// The Backend ops `bmm` (`[bs, m, k] x [bs, k, n]`), `bmm_nt` (`b` stored `[bs, n, k]`) and
    /// `bmm_tn` (`a` stored `[bs, k, m]`): one batched GEMM with the operands' transpose flags.
    pub(super) fn bmm_fwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        (a_t, b_t): (bool, bool),
    ) -> medsa_core::Result<Tensor> {
        let op = match (a_t, b_t) {
            (false, false) => "bmm",
            (false, true) => "bmm_nt",
            (true, false) => "bmm_tn",
            (true, true) => "bmm_tt",
        };
        a.expect_rank(op, "a", 3)?;
        b.expect_rank(op, "b", 3)?;
        let bs = a.dim(0);
        let (m, k) = if a_t { (a.dim(2), a.dim(1)) } else { (a.dim(1), a.dim(2)) };
        let n = if b_t { b.dim(1) } else { b.dim(2) };
        b.expect_shape(op, "b", &if b_t { [bs, n, k] } else { [bs, k, n] })?;
        if bs * m * n * k == 0 {
            return Tensor::zeros(vec![bs, m, n]);
        }
        let c = self.gemm(a, b, bs, (m, n, k), (a_t, b_t), (m * k, k * n))?;
        Ok(self.resident(c, &[bs, m, n])?)
    }
}
