//! The Backend ops of `elementwise.cu` on the device: `layer_norm`, `layer_norm2d`, `gelu`,
//! `relu`, `softmax`, `window_partition`, `window_unpartition`, `resize`, and the data movement
//! `add_scaled`, `scale`, `cat` (`cat_part`), `permute`, `narrow` (`strided_copy`).

use super::{i32_of, i64_of, Args, Cuda, Operand};
use crate::device::KernelArgs;
use crate::error::Result;
use crate::geometry;
use crate::params::CopyGeom;
use crate::source::KernelConfig;
use medsa_core::{ResizeMode, Tensor};

impl Cuda {
    fn ew(&self) -> KernelConfig {
        KernelConfig::elementwise(self.storage())
    }

    /// `entry(x, y, n)` over every element of `x`.
    fn unary_op(&self, entry: &str, x: &Tensor) -> medsa_core::Result<Tensor> {
        if x.numel() == 0 {
            return Ok(x.clone());
        }
        let mut extra = KernelArgs::new();
        extra.push(&i64_of(x.numel()));
        let l = geometry::elementwise(x.numel());
        Ok(self.run_op(
            &self.ew(),
            entry,
            &l,
            &[Operand::Stored(x)],
            self.stored_output(x.numel(), x.shape()),
            Args::Flat(extra),
        )?)
    }

    /// The Backend op `add_scaled`: `a + s·b`, `b` broadcast onto `a` by
    /// [`medsa_core::shape::broadcast_run`].
    pub(super) fn add_scaled_fwd(&self, a: &Tensor, b: &Tensor, s: f32) -> medsa_core::Result<Tensor> {
        let (_, rep, inner) = medsa_core::shape::broadcast_run(a.shape(), b.shape())?;
        if a.numel() == 0 {
            return Ok(a.clone());
        }
        let mut extra = KernelArgs::new();
        extra.push(&i64_of(a.numel())).push(&i64_of(rep)).push(&i64_of(inner)).push(&s);
        Ok(self.run_op(
            &self.ew(),
            "add_scaled",
            &geometry::elementwise(a.numel()),
            &[Operand::Stored(a), Operand::Stored(b)],
            self.stored_output(a.numel(), a.shape()),
            Args::Flat(extra),
        )?)
    }

    /// The Backend op `scale`: `x · s`.
    pub(super) fn scale_fwd(&self, x: &Tensor, s: f32) -> medsa_core::Result<Tensor> {
        if x.numel() == 0 {
            return Ok(x.clone());
        }
        let mut extra = KernelArgs::new();
        extra.push(&i64_of(x.numel())).push(&s);
        Ok(self.run_op(
            &self.ew(),
            "scale_fwd",
            &geometry::elementwise(x.numel()),
            &[Operand::Stored(x)],
            self.stored_output(x.numel(), x.shape()),
            Args::Flat(extra),
        )?)
    }

    /// The Backend op `cat`: `parts` joined along `dim`, one `cat_part` launch per part into one
    /// output buffer (checked as [`Tensor::cat`] checks).
    pub(super) fn cat_fwd(&self, parts: &[&Tensor], dim: usize) -> medsa_core::Result<Tensor> {
        let first = parts.first().ok_or_else(|| medsa_core::Error::arg("cat", "no tensors"))?;
        let r = first.rank();
        let same_off_axis =
            |p: &Tensor| p.rank() == r && (0..r).all(|i| i == dim || p.dim(i) == first.dim(i));
        if dim >= r || !parts.iter().all(|p| same_off_axis(p)) {
            // The reference names the problem.
            return Tensor::cat(parts, dim);
        }
        let outer: usize = first.shape()[..dim].iter().product();
        let inner: usize = first.shape()[dim + 1..].iter().product();
        let total: usize = parts.iter().map(|p| p.dim(dim)).sum();
        let mut shape = first.shape().to_vec();
        shape[dim] = total;
        if outer * total * inner == 0 {
            return Tensor::zeros(shape);
        }
        let y = self.alloc(outer * total * inner, self.storage())?;
        let mut offset = 0;
        for p in parts {
            let chunk = p.dim(dim) * inner;
            if outer * chunk > 0 {
                let x = self.operand(p, self.storage())?;
                let mut a = KernelArgs::new();
                a.push(&x.addr()).push(&y.addr());
                a.push(&i64_of(outer))
                    .push(&i64_of(chunk))
                    .push(&i64_of(total * inner))
                    .push(&i64_of(offset));
                self.launch(&self.ew(), "cat_part", &geometry::elementwise(outer * chunk), &a)?;
            }
            offset += chunk;
        }
        Ok(self.resident(y, &shape)?)
    }

    /// `strided_copy`: the contiguous tensor of `shape` read from `x` at `offset` through
    /// `stride` (per output axis). Ranks above 6 go through the host.
    fn strided_copy(
        &self,
        x: &Tensor,
        shape: &[usize],
        stride: &[usize],
        offset: usize,
    ) -> medsa_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        if n == 0 {
            return Tensor::zeros(shape.to_vec());
        }
        let mut g = CopyGeom {
            dim: [1; 6],
            n: i64_of(n),
            rank: shape.len() as i32,
            offset: i64_of(offset),
            ..Default::default()
        };
        for (i, (&d, &st)) in shape.iter().zip(stride).enumerate() {
            g.dim[i] = i64_of(d);
            g.stride[i] = i64_of(st);
        }
        let mut extra = KernelArgs::new();
        extra.push(&g);
        Ok(self.run_op(
            &self.ew(),
            "strided_copy",
            &geometry::elementwise(n),
            &[Operand::Stored(x)],
            self.stored_output(n, shape),
            Args::Flat(extra),
        )?)
    }

    /// The Backend op `permute`: output axis `i` is input axis `perm[i]`.
    pub(super) fn permute_fwd(&self, x: &Tensor, perm: &[usize]) -> medsa_core::Result<Tensor> {
        let r = x.rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return Err(medsa_core::Error::arg(
                "permute",
                format!("{perm:?} is not a permutation of {r} axes"),
            ));
        }
        if r > 6 {
            return x.permute(perm);
        }
        let st = medsa_core::tensor::strides(x.shape());
        let shape: Vec<usize> = perm.iter().map(|&p| x.dim(p)).collect();
        let stride: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
        self.strided_copy(x, &shape, &stride, 0)
    }

    /// The Backend op `narrow`: `start..start+len` of axis `dim`.
    pub(super) fn narrow_fwd(
        &self,
        x: &Tensor,
        dim: usize,
        start: usize,
        len: usize,
    ) -> medsa_core::Result<Tensor> {
        if dim >= x.rank() || start.checked_add(len).is_none_or(|e| e > x.dim(dim)) {
            return Err(medsa_core::Error::arg(
                "narrow",
                format!("axis {dim} range {start}..{start}+{len} outside shape {:?}", x.shape()),
            ));
        }
        if x.rank() > 6 {
            return x.narrow(dim, start, len);
        }
        let st = medsa_core::tensor::strides(x.shape());
        let mut shape = x.shape().to_vec();
        shape[dim] = len;
        self.strided_copy(x, &shape, &st, start * st[dim])
    }

    /// The Backend op `layer_norm` over the last axis.
    pub(super) fn layer_norm_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        eps: f32,
    ) -> medsa_core::Result<Tensor> {
        const OP: &str = "layer_norm";
        if x.numel() == 0 {
            return Ok(x.clone());
        }
        let c = x.last_dim();
        if x.rank() == 0 || c == 0 {
            return Err(medsa_core::Error::shape(OP, format!("input {:?}", x.shape())));
        }
        w.expect_shape(OP, "weight", &[c])?;
        b.expect_shape(OP, "bias", &[c])?;
        let rows = x.numel() / c;
        let mut extra = KernelArgs::new();
        extra.push(&i64_of(rows)).push(&i32_of(OP, c)?).push(&eps);
        Ok(self.run_op(
            &self.ew(),
            "layer_norm_fwd",
            &geometry::rows(rows)?,
            &[Operand::Stored(x), Operand::F32(w), Operand::F32(b)],
            self.stored_output(x.numel(), x.shape()),
            Args::Flat(extra),
        )?)
    }

    /// The Backend op `layer_norm2d`: SAM's LayerNorm2d over the channels of `[B, C, H, W]`.
    pub(super) fn layer_norm2d_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        eps: f32,
    ) -> medsa_core::Result<Tensor> {
        const OP: &str = "layer_norm2d";
        x.expect_rank(OP, "x", 4)?;
        let (bs, c, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        w.expect_shape(OP, "weight", &[c])?;
        b.expect_shape(OP, "bias", &[c])?;
        if x.numel() == 0 {
            return Ok(x.clone());
        }
        let mut extra = KernelArgs::new();
        extra.push(&i32_of(OP, bs)?).push(&i32_of(OP, c)?).push(&i64_of(h * wd)).push(&eps);
        Ok(self.run_op(
            &self.ew(),
            "layer_norm2d_fwd",
            &geometry::elementwise(bs * h * wd),
            &[Operand::Stored(x), Operand::F32(w), Operand::F32(b)],
            self.stored_output(x.numel(), x.shape()),
            Args::Flat(extra),
        )?)
    }

    /// The Backend op `gelu` (exact, erf).
    pub(super) fn gelu_fwd(&self, x: &Tensor) -> medsa_core::Result<Tensor> {
        self.unary_op("gelu_fwd", x)
    }

    /// The Backend op `relu`.
    pub(super) fn relu_fwd(&self, x: &Tensor) -> medsa_core::Result<Tensor> {
        self.unary_op("relu_fwd", x)
    }

    /// The Backend op `softmax` over the last axis.
    pub(super) fn softmax_fwd(&self, x: &Tensor) -> medsa_core::Result<Tensor> {
        let cols = x.last_dim();
        if x.numel() == 0 || cols == 0 {
            return Ok(x.clone());
        }
        let rows = x.numel() / cols;
        let mut extra = KernelArgs::new();
        extra.push(&i64_of(rows)).push(&i32_of("softmax", cols)?);
        Ok(self.run_op(
            &self.ew(),
            "softmax_fwd",
            &geometry::rows(rows)?,
            &[Operand::Stored(x)],
            self.stored_output(x.numel(), x.shape()),
            Args::Flat(extra),
        )?)
    }

    /// `window_partition_fwd` / `window_unpartition_fwd` of `src` into `out_shape`, with the
    /// geometry `[b, h, w, c, window, nwh, nww]`.
    fn window_op(
        &self,
        entry: &'static str,
        src: &Tensor,
        geom: [usize; 7],
        out_shape: &[usize],
    ) -> Result<Tensor> {
        let n_out = out_shape.iter().product();
        let mut extra = KernelArgs::new();
        for v in geom {
            extra.push(&i32_of(entry, v)?);
        }
        let l = geometry::elementwise(n_out);
        self.run_op(
            &self.ew(),
            entry,
            &l,
            &[Operand::Stored(src)],
            self.stored_output(n_out, out_shape),
            Args::Flat(extra),
        )
    }

    /// The Backend op `window_partition`: `[B, H, W, C]` -> `[B * nW, window, window, C]` (zero
    /// padding at the bottom / right) and the padded size.
    pub(super) fn window_partition_fwd(
        &self,
        x: &Tensor,
        window: usize,
    ) -> medsa_core::Result<(Tensor, (usize, usize))> {
        const OP: &str = "window_partition";
        x.expect_rank(OP, "x", 4)?;
        if window == 0 {
            return Err(medsa_core::Error::arg(OP, "window must be positive"));
        }
        let (b, h, w, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (nwh, nww) = (h.div_ceil(window), w.div_ceil(window));
        let (hp, wp) = (nwh * window, nww * window);
        let out = [b * nwh * nww, window, window, c];
        if out.iter().product::<usize>() == 0 {
            return Ok((Tensor::zeros(out.to_vec())?, (hp, wp)));
        }
        let t = self.window_op("window_partition_fwd", x, [b, h, w, c, window, nwh, nww], &out)?;
        Ok((t, (hp, wp)))
    }

    /// The Backend op `window_unpartition`: the inverse of `window_partition`, cropped to `hw`.
    pub(super) fn window_unpartition_fwd(
        &self,
        x: &Tensor,
        window: usize,
        padded: (usize, usize),
        hw: (usize, usize),
    ) -> medsa_core::Result<Tensor> {
        const OP: &str = "window_unpartition";
        x.expect_rank(OP, "x", 4)?;
        let (hp, wp) = padded;
        let (h, w) = hw;
        if window == 0 || hp % window != 0 || wp % window != 0 || h > hp || w > wp {
            return Err(medsa_core::Error::arg(
                OP,
                format!("window {window}, padded {padded:?}, size {hw:?}"),
            ));
        }
        let (nwh, nww) = (hp / window, wp / window);
        let c = x.dim(3);
        let nwin = nwh * nww;
        if nwin == 0 || x.dim(0) / nwin * nwin != x.dim(0) || x.dim(1) != window || x.dim(2) != window {
            return Err(medsa_core::Error::shape(
                OP,
                format!("{:?} is not [B*{nwin}, {window}, {window}, C]", x.shape()),
            ));
        }
        let b = x.dim(0) / nwin;
        let out = [b, h, w, c];
        if out.iter().product::<usize>() == 0 {
            return Tensor::zeros(out.to_vec());
        }
        Ok(self.window_op("window_unpartition_fwd", x, [b, h, w, c, window, nwh, nww], &out)?)
    }

    /// The Backend op `resize` (PyTorch's `F.interpolate`, `align_corners=False`) of `[B, C, H, W]`.
    pub(super) fn resize_fwd(
        &self,
        x: &Tensor,
        out: (usize, usize),
        mode: ResizeMode,
    ) -> medsa_core::Result<Tensor> {
        const OP: &str = "resize";
        x.expect_rank(OP, "x", 4)?;
        let (b, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let shape = [b, c, out.0, out.1];
        if h == 0 || w == 0 {
            return Err(medsa_core::Error::arg(OP, format!("empty input {:?}", x.shape())));
        }
        let n: usize = shape.iter().product();
        if n == 0 {
            return Tensor::zeros(shape.to_vec());
        }
        let entry = match mode {
            ResizeMode::Bilinear => "resize_bilinear",
            ResizeMode::Bicubic => "resize_bicubic",
            ResizeMode::Nearest => "resize_nearest",
        };
        let mut extra = KernelArgs::new();
        for v in [b * c, h, w, out.0, out.1] {
            extra.push(&i32_of(OP, v)?);
        }
        Ok(self.run_op(
            &self.ew(),
            entry,
            &geometry::elementwise(n),
            &[Operand::Stored(x)],
            self.stored_output(n, &shape),
            Args::Flat(extra),
        )?)
    }
}
