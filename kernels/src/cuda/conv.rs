//! The Backend ops `conv2d` and `conv_transpose2x2` on the device (`conv.cu`): im2col, grouped
//! GEMMs and the channel bias; the 2x2 / stride-2 transposed conv.

use super::{elem_size, i32_of, i64_of, Args, Cuda, Operand};
use crate::device::KernelArgs;
use crate::geometry;
use crate::params::ConvParams;
use crate::source::{KernelConfig, Storage};
use medsa_core::{Conv2d, Tensor};

impl Cuda {
    /// The Backend op `conv2d` on the device: im2col (any stride, padding, groups), one batched
    /// GEMM per image over its groups, then the bias per channel.
    pub(super) fn conv2d_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        g: Conv2d,
    ) -> medsa_core::Result<Tensor> {
        const OP: &str = "conv2d";
        let out = medsa_core::backend::conv2d_shape(x, w, b, g)?;
        if out.iter().product::<usize>() == 0 {
            return Tensor::zeros(out.to_vec());
        }
        let (n, cin, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (cout, cpg, kh, kw) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
        let (ho, wo) = ((h + 2 * g.padding - kh) / g.stride + 1, (wd + 2 * g.padding - kw) / g.stride + 1);
        let (npix, kdim, coutg) = (ho * wo, cpg * kh * kw, cout / g.groups);
        let st = self.storage();
        let es = elem_size(st) as u64;
        let (xd, wdv) = (self.operand(x, st)?, self.operand(w, st)?);
        let cols = self.alloc(n * cin * kh * kw * npix, st)?;
        let yd = self.alloc(n * cout * npix, st)?;
        let p = ConvParams {
            x: xd.addr(),
            cols: cols.addr(),
            n: i32_of(OP, n)?,
            cin: i32_of(OP, cin)?,
            h: i32_of(OP, h)?,
            w: i32_of(OP, wd)?,
            kh: i32_of(OP, kh)?,
            kw: i32_of(OP, kw)?,
            stride: i32_of(OP, g.stride)?,
            pad: i32_of(OP, g.padding)?,
            groups: i32_of(OP, g.groups)?,
            ho: i32_of(OP, ho)?,
            wo: i32_of(OP, wo)?,
            _pad: 0,
        };
        let mut a = KernelArgs::new();
        a.push(&p);
        let conv = KernelConfig::conv(st);
        self.launch(&conv, "conv2d_im2col", &geometry::elementwise(cols.len()), &a)?;
        for img in 0..n {
            // y[img, g] [coutg, npix] = W_g [coutg, kdim] cols[img, g] [kdim, npix], over g.
            let cols_at = cols.addr() + (img * g.groups * kdim * npix) as u64 * es;
            let y_at = yd.addr() + (img * cout * npix) as u64 * es;
            self.gemm_at(
                st,
                (wdv.addr(), cols_at, y_at),
                g.groups,
                (coutg, npix, kdim),
                (false, false),
                (coutg * kdim, kdim * npix),
            )?;
        }
        if let Some(b) = b {
            let bd = self.operand(b, Storage::F32)?;
            let mut a = KernelArgs::new();
            a.push(&yd.addr())
                .push(&bd.addr())
                .push(&i32_of(OP, n)?)
                .push(&i32_of(OP, cout)?)
                .push(&i64_of(npix));
            self.launch(&conv, "conv2d_add_bias", &geometry::elementwise(yd.len()), &a)?;
        }
        Ok(self.resident(yd, &[n, cout, ho, wo])?)
    }

    /// The Backend op `conv_transpose2x2`: `x [N, Cin, H, W]`, `w [Cin, Cout, 2, 2]`, `b [Cout]`
    /// -> `[N, Cout, 2H, 2W]`.
    pub(super) fn conv_transpose2x2_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
    ) -> medsa_core::Result<Tensor> {
        const OP: &str = "conv_transpose2x2";
        let out = medsa_core::backend::conv_transpose2x2_shape(x, w, b)?;
        let len = out.iter().product::<usize>();
        if len == 0 {
            return Tensor::zeros(out.to_vec());
        }
        let (n, cin, h, wd, cout) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(1));
        let mut extra = KernelArgs::new();
        for v in [n, cin, cout, h, wd] {
            extra.push(&i32_of(OP, v)?);
        }
        Ok(self.run_op(
            &KernelConfig::conv(self.storage()),
            "conv_transpose2x2_fwd",
            &geometry::elementwise(len),
            &[Operand::Stored(x), Operand::Stored(w), Operand::F32(b)],
            self.stored_output(len, &out),
            Args::Flat(extra),
        )?)
    }
}
