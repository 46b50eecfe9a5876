//! `impl Backend for Cuda`: every trait method delegates to the file of its op family
//! (forward ops on the device; the backward ops of training on the CPU reference for now).

use super::Cuda;
use medsa_core::backward::{AttentionGrads, ConvGrads, HyperChainGrads, LinearGrads, NormGrads};
use medsa_core::{Activation, Backend, Conv2d, DepthGrouping, RelPos, ResizeMode, Tensor};

impl Backend for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, t: &Tensor) -> medsa_core::Result<Tensor> {
        Ok(self.place(t)?)
    }

    fn permute(&self, x: &Tensor, perm: &[usize]) -> medsa_core::Result<Tensor> {
        self.permute_fwd(x, perm)
    }

    fn narrow(&self, x: &Tensor, dim: usize, start: usize, len: usize) -> medsa_core::Result<Tensor> {
        self.narrow_fwd(x, dim, start, len)
    }

    fn add_scaled(&self, a: Tensor, b: &Tensor, s: f32) -> medsa_core::Result<Tensor> {
        self.add_scaled_fwd(&a, b, s)
    }

    fn cat(&self, parts: &[&Tensor], dim: usize) -> medsa_core::Result<Tensor> {
        self.cat_fwd(parts, dim)
    }

    fn scale(&self, x: Tensor, s: f32) -> medsa_core::Result<Tensor> {
        self.scale_fwd(&x, s)
    }

    fn host(&self) -> &dyn Backend {
        &self.cpu
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> medsa_core::Result<Tensor> {
        self.linear_fwd(x, w, b, None, None)
    }

    fn linear_act(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        act: Activation,
    ) -> medsa_core::Result<Tensor> {
        self.linear_fwd(x, w, b, Some(act), None)
    }

    fn linear_add(
        &self,
        r: Tensor,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        s: f32,
    ) -> medsa_core::Result<Tensor> {
        self.linear_fwd(x, w, b, None, Some((&r, s)))
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        self.matmul_fwd(a, b)
    }

    fn bmm(&self, a: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        self.bmm_fwd(a, b, (false, false))
    }

    fn bmm_nt(&self, a: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        self.bmm_fwd(a, b, (false, true))
    }

    fn bmm_tn(&self, a: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        self.bmm_fwd(a, b, (true, false))
    }

    fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> medsa_core::Result<Tensor> {
        self.layer_norm_fwd(x, w, b, eps)
    }

    fn layer_norm2d(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> medsa_core::Result<Tensor> {
        self.layer_norm2d_fwd(x, w, b, eps)
    }

    fn gelu(&self, x: Tensor) -> medsa_core::Result<Tensor> {
        self.gelu_fwd(&x)
    }

    fn gelu_out(&self, x: &Tensor) -> medsa_core::Result<Tensor> {
        self.gelu_fwd(x)
    }

    fn relu(&self, x: Tensor) -> medsa_core::Result<Tensor> {
        self.relu_fwd(&x)
    }

    fn softmax(&self, x: Tensor) -> medsa_core::Result<Tensor> {
        self.softmax_fwd(&x)
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, geom: Conv2d) -> medsa_core::Result<Tensor> {
        self.conv2d_fwd(x, w, b, geom)
    }

    fn conv_transpose2x2(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        self.conv_transpose2x2_fwd(x, w, b)
    }

    fn window_partition(&self, x: &Tensor, window: usize) -> medsa_core::Result<(Tensor, (usize, usize))> {
        self.window_partition_fwd(x, window)
    }

    fn window_unpartition(
        &self,
        x: &Tensor,
        window: usize,
        padded: (usize, usize),
        hw: (usize, usize),
    ) -> medsa_core::Result<Tensor> {
        self.window_unpartition_fwd(x, window, padded, hw)
    }

    fn rel_pos_table(&self, qs: usize, ks: usize, table: &Tensor) -> medsa_core::Result<Tensor> {
        self.rel_pos_table_fwd(qs, ks, table)
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> medsa_core::Result<Tensor> {
        self.attention_fwd(q, k, v, scale, rel)
    }

    fn attention_qkv(
        &self,
        qkv: &Tensor,
        heads: usize,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> medsa_core::Result<Tensor> {
        self.attention_qkv_fwd(qkv, heads, scale, rel)
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
    ) -> medsa_core::Result<Tensor> {
        Ok(Cuda::depth_attention(self, qkv, heads, depth, nw, grouping, rel, scale)?)
    }

    fn hyper_chain(
        &self,
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> medsa_core::Result<Tensor> {
        Ok(Cuda::hyper_chain(self, x, w, gamma, beta, eps)?)
    }

    fn resize(&self, x: &Tensor, out: (usize, usize), mode: ResizeMode) -> medsa_core::Result<Tensor> {
        self.resize_fwd(x, out, mode)
    }

    fn pe_encode(&self, coords: &Tensor, gaussian: &Tensor) -> medsa_core::Result<Tensor> {
        self.pe_encode_fwd(coords, gaussian)
    }

    // Backward ops: on the CPU reference until the training kernels exist (the tensors live on
    // the host side of the trait either way).
    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        params: bool,
    ) -> medsa_core::Result<LinearGrads> {
        self.cpu.linear_backward(x, w, dy, params)
    }
    fn layer_norm_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        eps: f32,
        dy: &Tensor,
        params: bool,
    ) -> medsa_core::Result<NormGrads> {
        self.cpu.layer_norm_backward(x, w, eps, dy, params)
    }
    fn gelu_backward(&self, x: &Tensor, dy: Tensor) -> medsa_core::Result<Tensor> {
        self.cpu.gelu_backward(x, dy)
    }
    fn relu_backward(&self, y: &Tensor, dy: Tensor) -> medsa_core::Result<Tensor> {
        self.cpu.relu_backward(y, dy)
    }
    fn softmax_backward(&self, y: &Tensor, dy: Tensor) -> medsa_core::Result<Tensor> {
        self.cpu.softmax_backward(y, dy)
    }
    fn attention_lse(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> medsa_core::Result<(Tensor, Tensor)> {
        self.cpu.attention_lse(q, k, v, scale, rel)
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
    ) -> medsa_core::Result<AttentionGrads> {
        self.cpu.attention_backward(q, k, v, scale, rel, o, lse, dout)
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
    ) -> medsa_core::Result<Tensor> {
        self.cpu.depth_attention_backward(qkv, heads, depth, nw, grouping, rel, scale, dout)
    }
    fn hyper_chain_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> medsa_core::Result<HyperChainGrads> {
        self.cpu.hyper_chain_backward(x, w, gamma, beta, eps, dy)
    }
    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        geom: Conv2d,
        dy: &Tensor,
        params: bool,
    ) -> medsa_core::Result<ConvGrads> {
        self.cpu.conv2d_backward(x, w, geom, dy, params)
    }
}
