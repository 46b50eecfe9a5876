//! `medsa-ref`: the CPU reference backend. Every op of [`medsa_core::Backend`] in f32.
//!
//! It is the truth the GPU kernels are checked against and the CPU path users run, so the two
//! hot spots are fast: matrix products go through the `gemm` crate (AVX-512 where the CPU has
//! it) and attention is blocked by head and query block ([`attention::QUERY_BLOCK`]) with a
//! vectorisable exp. Everything else is plain, parallel over rows with rayon.
//!
//! ```
//! use medsa_core::{Backend, Tensor};
//! let cpu = medsa_ref::Cpu;
//! let a = Tensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
//! let b = Tensor::new(vec![2, 1], vec![1.0, 1.0]).unwrap();
//! assert_eq!(cpu.matmul(&a, &b).unwrap().data(), &[3.0, 7.0]);
//! ```

mod act;
pub mod attention;
mod attention_backward;
mod backward;
mod conv;
mod depth_attention;
mod gemm;
mod hyper_chain;
mod norm;
mod position;
mod resize;
mod upscale_masks;
mod upscale_masks_backward;
mod window;

use gemm::{batched_new, matmul_into, matmul_new, MatRef, Par};
use medsa_core::backward::{
    AttentionGrads, ConvGrads, HyperChainGrads, LinearGrads, NormGrads, UpscaleGrads,
};
use medsa_core::{Backend, Conv2d, DepthGrouping, Error, RelPos, ResizeMode, Result, Tensor, Upscaling};

/// The CPU reference backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn host(&self) -> &dyn Backend {
        self
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        w.expect_rank(OP, "weight", 2)?;
        let (out_f, in_f) = (w.dim(0), w.dim(1));
        if x.rank() == 0 || x.last_dim() != in_f {
            return Err(Error::shape(
                OP,
                format!("input {:?} does not end in {in_f} (weight {:?})", x.shape(), w.shape()),
            ));
        }
        let m: usize = x.shape()[..x.rank() - 1].iter().product();
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank checked") = out_f;
        if let Some(b) = b {
            b.expect_shape(OP, "bias", &[out_f])?;
        }
        if m <= gemm::FEW_ROWS {
            let y = gemm::few_rows_linear(x.data(), w.data(), b.map(Tensor::data), m, in_f, out_f);
            return Tensor::new(shape, y);
        }
        let (xm, wt) = (MatRef::row_major(x.data(), m, in_f), MatRef::transposed(w.data(), in_f, out_f));
        let Some(b) = b else { return Tensor::new(shape, matmul_new(xm, wt, Par::Auto)) };
        // Start from the bias and accumulate the product onto it.
        let mut y = vec![0f32; m * out_f];
        medsa_core::par::for_chunks(&mut y, out_f, |r| r.copy_from_slice(b.data()));
        matmul_into(&mut y, xm, wt, true, Par::Auto);
        Tensor::new(shape, y)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        a.expect_rank(OP, "a", 2)?;
        b.expect_rank(OP, "b", 2)?;
        let (m, k, n) = (a.dim(0), a.dim(1), b.dim(1));
        if b.dim(0) != k {
            return Err(Error::shape(OP, format!("{:?} · {:?}", a.shape(), b.shape())));
        }
        let y = matmul_new(MatRef::row_major(a.data(), m, k), MatRef::row_major(b.data(), k, n), Par::Auto);
        Tensor::new(vec![m, n], y)
    }

    fn bmm(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "bmm";
        a.expect_rank(OP, "a", 3)?;
        b.expect_rank(OP, "b", 3)?;
        let (bs, m, k, n) = (a.dim(0), a.dim(1), a.dim(2), b.dim(2));
        if b.dim(0) != bs || b.dim(1) != k {
            return Err(Error::shape(OP, format!("{:?} · {:?}", a.shape(), b.shape())));
        }
        Tensor::new(vec![bs, m, n], batched_new(a.data(), b.data(), (bs, m, k, n), (false, false)))
    }

    fn bmm_nt(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "bmm_nt";
        a.expect_rank(OP, "a", 3)?;
        b.expect_rank(OP, "b", 3)?;
        let (bs, m, k, n) = (a.dim(0), a.dim(1), a.dim(2), b.dim(1));
        if b.dim(0) != bs || b.dim(2) != k {
            return Err(Error::shape(OP, format!("{:?} · {:?}ᵀ", a.shape(), b.shape())));
        }
        Tensor::new(vec![bs, m, n], batched_new(a.data(), b.data(), (bs, m, k, n), (false, true)))
    }

    fn bmm_tn(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "bmm_tn";
        a.expect_rank(OP, "a", 3)?;
        b.expect_rank(OP, "b", 3)?;
        let (bs, k, m, n) = (a.dim(0), a.dim(1), a.dim(2), b.dim(2));
        if b.dim(0) != bs || b.dim(1) != k {
            return Err(Error::shape(OP, format!("{:?}ᵀ · {:?}", a.shape(), b.shape())));
        }
        Tensor::new(vec![bs, m, n], batched_new(a.data(), b.data(), (bs, m, k, n), (true, false)))
    }

    fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        let c = x.last_dim();
        if x.rank() == 0 {
            return Err(Error::shape(OP, "scalar input"));
        }
        w.expect_shape(OP, "weight", &[c])?;
        b.expect_shape(OP, "bias", &[c])?;
        let mut y = x.clone();
        norm::layer_norm_rows(y.data_mut(), c, w.data(), b.data(), eps);
        Ok(y)
    }

    fn layer_norm2d(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "layer_norm2d";
        x.expect_rank(OP, "input", 4)?;
        let c = x.dim(1);
        w.expect_shape(OP, "weight", &[c])?;
        b.expect_shape(OP, "bias", &[c])?;
        let mut y = x.clone();
        norm::layer_norm_channels(y.data_mut(), c, x.dim(2) * x.dim(3), w.data(), b.data(), eps);
        Ok(y)
    }

    fn gelu(&self, mut x: Tensor) -> Result<Tensor> {
        medsa_core::par::for_chunks(x.data_mut(), 1 << 14, act::gelu_inplace);
        Ok(x)
    }

    fn gelu_out(&self, x: &Tensor) -> Result<Tensor> {
        Tensor::new(x.shape().to_vec(), act::gelu_new(x.data()))
    }

    fn relu(&self, mut x: Tensor) -> Result<Tensor> {
        medsa_core::par::for_chunks(x.data_mut(), 1 << 14, |c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
        Ok(x)
    }

    fn softmax(&self, mut x: Tensor) -> Result<Tensor> {
        let n = x.last_dim();
        if x.rank() == 0 || n == 0 {
            return Err(Error::shape(
                "softmax",
                format!("cannot normalise over the last axis of {:?}", x.shape()),
            ));
        }
        // Whole rows per task, at least ~8k values each, so short rows do not cost a task each.
        let rows = (8192 / n).max(1);
        medsa_core::par::for_chunks(x.data_mut(), n * rows, |c| {
            if n < 16 {
                act::softmax_short_rows(c, n);
            } else {
                c.chunks_exact_mut(n).for_each(|r| {
                    act::softmax_row(r);
                });
            }
        });
        Ok(x)
    }

    fn upscale_masks(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
    ) -> Result<Tensor> {
        Ok(upscale_masks::upscale_masks(keys, grid, up, hyper, false)?.0)
    }

    fn upscale_masks_taped(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
    ) -> Result<(Tensor, medsa_core::backward::UpscaleTape)> {
        match upscale_masks::upscale_masks(keys, grid, up, hyper, true)? {
            (logits, Some(tape)) => Ok((logits, tape)),
            (_, None) => Err(Error::arg("upscale_masks_taped", "the fused mask head returned no tape")),
        }
    }

    fn upscale_masks_backward_taped(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
        tape: &medsa_core::backward::UpscaleTape,
        dlogits: &Tensor,
        params: bool,
    ) -> Result<UpscaleGrads> {
        upscale_masks_backward::upscale_masks_backward(keys, grid, up, hyper, tape, dlogits, params)
    }

    fn upscale_masks_backward(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
        dlogits: &Tensor,
        params: bool,
    ) -> Result<UpscaleGrads> {
        let (_, tape) = self.upscale_masks_taped(keys, grid, up, hyper)?;
        upscale_masks_backward::upscale_masks_backward(keys, grid, up, hyper, &tape, dlogits, params)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, geom: Conv2d) -> Result<Tensor> {
        conv::conv2d(x, w, b, geom)
    }

    fn conv_transpose2x2(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        conv::conv_transpose2x2(x, w, b)
    }

    fn window_partition(&self, x: &Tensor, window: usize) -> Result<(Tensor, (usize, usize))> {
        window::window_partition(x, window)
    }

    fn window_unpartition(
        &self,
        x: &Tensor,
        window: usize,
        padded: (usize, usize),
        hw: (usize, usize),
    ) -> Result<Tensor> {
        window::window_unpartition(x, window, padded, hw)
    }

    fn rel_pos_table(&self, qs: usize, ks: usize, table: &Tensor) -> Result<Tensor> {
        position::rel_pos_table(qs, ks, table)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> Result<Tensor> {
        attention::attention(q, k, v, scale, rel)
    }

    fn depth_attention(
        &self,
        qkv: &Tensor,
        heads: usize,
        depth: usize,
        nw: usize,
        grouping: DepthGrouping,
        rel: Option<RelPos<'_>>,
        scale: f32,
    ) -> Result<Tensor> {
        depth_attention::depth_attention(qkv, heads, depth, nw, grouping, rel, scale)
    }

    fn hyper_chain(&self, x: &Tensor, w: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        hyper_chain::hyper_chain(x, w, gamma, beta, eps)
    }

    fn resize(&self, x: &Tensor, out: (usize, usize), mode: ResizeMode) -> Result<Tensor> {
        resize::resize(x, out, mode)
    }

    fn pe_encode(&self, coords: &Tensor, gaussian: &Tensor) -> Result<Tensor> {
        position::pe_encode(coords, gaussian)
    }

    fn linear_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, params: bool) -> Result<LinearGrads> {
        backward::linear_backward(x, w, dy, params)
    }

    fn layer_norm_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        eps: f32,
        dy: &Tensor,
        params: bool,
    ) -> Result<NormGrads> {
        backward::layer_norm_backward(x, w, eps, dy, params)
    }

    fn gelu_backward(&self, x: &Tensor, dy: Tensor) -> Result<Tensor> {
        backward::gelu_backward(x, dy)
    }

    fn relu_backward(&self, y: &Tensor, dy: Tensor) -> Result<Tensor> {
        backward::relu_backward(y, dy)
    }

    fn softmax_backward(&self, y: &Tensor, dy: Tensor) -> Result<Tensor> {
        backward::softmax_backward(y, dy)
    }

    fn attention_lse(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> Result<(Tensor, Tensor)> {
        attention::attention_lse(q, k, v, scale, rel)
    }

    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
        o: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
    ) -> Result<AttentionGrads> {
        attention_backward::attention_backward(q, k, v, scale, rel, o, lse, dout)
    }

    fn depth_attention_backward(
        &self,
        qkv: &Tensor,
        heads: usize,
        depth: usize,
        nw: usize,
        grouping: DepthGrouping,
        rel: Option<RelPos<'_>>,
        scale: f32,
        dout: &Tensor,
    ) -> Result<Tensor> {
        attention_backward::depth_attention_backward(qkv, heads, depth, nw, grouping, rel, scale, dout)
    }

    fn hyper_chain_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<HyperChainGrads> {
        hyper_chain::hyper_chain_backward(x, w, gamma, beta, eps, dy)
    }

    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        geom: Conv2d,
        dy: &Tensor,
        params: bool,
    ) -> Result<ConvGrads> {
        backward::conv2d_backward(x, w, geom, dy, params)
    }
}
