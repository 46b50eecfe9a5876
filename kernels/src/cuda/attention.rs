//! The Backend op `attention` on the device (`attention.cu`, `attention_scalar.cu`): the operand
//! layout types ([`AttnShape`], [`AttnLayout`], [`Strides`]), the tensor-core launches
//! ([`Cuda::attention_tc_dev`]: windowed or flash, [`AttentionKernel`]), the CUDA-core launch
//! ([`Cuda::attention_scalar_dev`]) and the op on host tensors that picks between them.

use super::{elem_size, i32_of, i64_of, Cuda, DBuf, Precision};
use crate::device::KernelArgs;
use crate::error::{KernelError, Result};
use crate::geometry;
use crate::params::{AttnParams, ScalarAttnParams};
use crate::source::{KernelConfig, Storage, SCALAR_MAX_HEAD_DIM, TC_HEAD_DIMS};
use medsa_core::{Backend, RelPos, Tensor};

/// Which tensor-core attention kernel to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// `attention_window_fwd` (all keys in shared memory, <= 256 keys).
    Window,
    /// `attention_rel_tables` + `attention_flash_fwd`.
    Flash,
}

/// Offset and batch, head and row strides (elements) of one attention operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    /// First element inside the buffer.
    pub offset: usize,
    /// Between batches.
    pub batch: usize,
    /// Between heads.
    pub head: usize,
    /// Between rows (tokens).
    pub row: usize,
}

/// Where q, k, v and o live: `bh = batch * heads` problems, each operand addressed as
/// `buffer + offset + b * batch + h * head + row * row_stride` (q, k, v may share one buffer,
/// e.g. the packed qkv projection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnLayout {
    /// Heads per batch entry (`bh` is split as `b = bh / heads`).
    pub heads: usize,
    /// Queries.
    pub q: Strides,
    /// Keys.
    pub k: Strides,
    /// Values.
    pub v: Strides,
    /// Output.
    pub o: Strides,
}

impl AttnLayout {
    /// Contiguous `[BH, N, hd]` q, k and `[BH, N, dv]` v, o.
    pub fn contiguous(nq: usize, nk: usize, hd: usize, dv: usize) -> Self {
        let s = |n: usize, d: usize| Strides { offset: 0, batch: n * d, head: 0, row: d };
        AttnLayout { heads: 1, q: s(nq, hd), k: s(nk, hd), v: s(nk, dv), o: s(nq, dv) }
    }

    /// q, k, v read from SAM's packed qkv projection `[B, N, 3C]` (each token `[q | k | v]`, each
    /// `[heads, hd]`), the output written with the heads merged, `[B, N, C]`.
    pub fn packed_qkv(heads: usize, n: usize, hd: usize) -> Self {
        let c = heads * hd;
        let part = |which: usize| Strides { offset: which * c, batch: n * 3 * c, head: hd, row: 3 * c };
        let o = Strides { offset: 0, batch: n * c, head: hd, row: c };
        AttnLayout { heads, q: part(0), k: part(1), v: part(2), o }
    }
}

/// Problem description of a device-side attention launch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    /// Batch * heads.
    pub bh: usize,
    /// Queries.
    pub nq: usize,
    /// Keys.
    pub nk: usize,
    /// Head dim (of q and k).
    pub hd: usize,
    /// Value dim (of v and o; the tensor-core kernels need `dv = hd`).
    pub dv: usize,
    /// Query grid (qh, qw) and key grid (kh, kw) of the relative-position bias.
    pub grids: Option<((usize, usize), (usize, usize))>,
    /// Softmax scale.
    pub scale: f32,
    /// Operand strides.
    pub layout: AttnLayout,
}

impl AttnShape {
    /// A problem on contiguous `[BH, N, hd]` operands (`dv = hd`; set `dv` and `layout` for others).
    pub fn contiguous(
        bh: usize,
        nq: usize,
        nk: usize,
        hd: usize,
        grids: Option<((usize, usize), (usize, usize))>,
        scale: f32,
    ) -> Self {
        AttnShape { bh, nq, nk, hd, dv: hd, grids, scale, layout: AttnLayout::contiguous(nq, nk, hd, hd) }
    }
}

impl Cuda {
    /// The packed pointers, strides and sizes both attention kernels take (bounds-checked).
    fn attn_params(shape: &AttnShape, q: &DBuf, k: &DBuf, v: &DBuf, o: &DBuf) -> Result<AttnParams> {
        const OP: &str = "attention";
        let s = shape;
        let ((qh, qw), (kh, kw)) = s.grids.unwrap_or(((s.nq, 1), (s.nk, 1)));
        let l = &s.layout;
        if s.bh == 0 || s.nq == 0 || s.nk == 0 || s.hd == 0 {
            return Err(KernelError::unsupported(OP, format!("empty problem {s:?}")));
        }
        if l.heads == 0 || !s.bh.is_multiple_of(l.heads) {
            return Err(KernelError::unsupported(
                OP,
                format!("bh {} is not a multiple of heads {}", s.bh, l.heads),
            ));
        }
        // Every operand's last element must lie inside its buffer.
        let batches = s.bh / l.heads;
        for (name, st, rows, cols, buf) in [
            ("q", l.q, s.nq, s.hd, q),
            ("k", l.k, s.nk, s.hd, k),
            ("v", l.v, s.nk, s.dv, v),
            ("o", l.o, s.nq, s.dv, o),
        ] {
            let last =
                st.offset + (batches - 1) * st.batch + (l.heads - 1) * st.head + (rows - 1) * st.row + cols;
            if last > buf.len {
                return Err(KernelError::unsupported(
                    OP,
                    format!("{name}: strides {st:?} reach element {last} of a {}-element buffer", buf.len),
                ));
            }
        }
        let at = |b: &DBuf, st: Strides| b.addr() + (st.offset * elem_size(b.storage)) as u64;
        Ok(AttnParams {
            q: at(q, l.q),
            k: at(k, l.k),
            v: at(v, l.v),
            o: at(o, l.o),
            q_sb: i64_of(l.q.batch),
            q_sh: i64_of(l.q.head),
            k_sb: i64_of(l.k.batch),
            k_sh: i64_of(l.k.head),
            v_sb: i64_of(l.v.batch),
            v_sh: i64_of(l.v.head),
            o_sb: i64_of(l.o.batch),
            o_sh: i64_of(l.o.head),
            q_sr: i32_of(OP, l.q.row)?,
            k_sr: i32_of(OP, l.k.row)?,
            v_sr: i32_of(OP, l.v.row)?,
            o_sr: i32_of(OP, l.o.row)?,
            heads: i32_of(OP, l.heads)?,
            nq: i32_of(OP, s.nq)?,
            nk: i32_of(OP, s.nk)?,
            qh: i32_of(OP, qh)?,
            qw: i32_of(OP, qw)?,
            kh: i32_of(OP, kh)?,
            kw: i32_of(OP, kw)?,
            scale: s.scale,
            ..Default::default()
        })
    }

    /// Tensor-core attention on device buffers (bf16). `rel` holds the expanded tables
    /// `Rh [qh, kh, hd]`, `Rw [qw, kw, hd]` (f32); `rel_scratch` (f32, `bh * nq * (kh + kw)`) the
    /// flash kernel's per-query tables (allocated when `None`); `kernel` forces a kernel,
    /// otherwise the windowed kernel is used up to 256 keys. Every stride must be a multiple of 8
    /// elements (16-byte rows for `cp.async` and `ldmatrix`).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_tc_dev(
        &self,
        q: &DBuf,
        k: &DBuf,
        v: &DBuf,
        o: &mut DBuf,
        shape: &AttnShape,
        rel: Option<(&DBuf, &DBuf)>,
        rel_scratch: Option<&DBuf>,
        kernel: Option<AttentionKernel>,
    ) -> Result<()> {
        const OP: &str = "attention";
        let s = shape;
        if !TC_HEAD_DIMS.contains(&s.hd) || s.dv != s.hd {
            return Err(KernelError::unsupported(
                OP,
                format!("tensor-core head dim {} (value dim {})", s.hd, s.dv),
            ));
        }
        Self::check_storage(OP, &[q, k, v, o], Storage::Bf16)?;
        let l = &s.layout;
        for st in [l.q, l.k, l.v, l.o] {
            if st.offset % 8 != 0 || st.batch % 8 != 0 || st.head % 8 != 0 || st.row % 8 != 0 {
                return Err(KernelError::unsupported(
                    OP,
                    format!("strides {st:?} are not multiples of 8 elements"),
                ));
            }
        }
        let mut p = Self::attn_params(s, q, k, v, o)?;
        let ((_, _), (kh, kw)) = s.grids.unwrap_or(((s.nq, 1), (s.nk, 1)));
        let has_rel = s.grids.is_some() && rel.is_some();
        if let (true, Some((rh, rw))) = (has_rel, rel) {
            Self::check_storage(OP, &[rh, rw], Storage::F32)?;
            p.rh = rh.addr();
            p.rw = rw.addr();
        }
        let cfg = KernelConfig::attention(s.hd);
        let which = kernel.unwrap_or(if geometry::prefer_window_kernel(s.nk) {
            AttentionKernel::Window
        } else {
            AttentionKernel::Flash
        });
        let relg = has_rel.then_some((kh, kw));
        match which {
            AttentionKernel::Window => {
                let mut a = KernelArgs::new();
                a.push(&p);
                self.launch(
                    &cfg,
                    "attention_window_fwd",
                    &geometry::attention_window(s.nq, s.nk, s.bh, s.hd, relg)?,
                    &a,
                )?;
            }
            AttentionKernel::Flash => {
                let own;
                if has_rel {
                    let need = s.bh * s.nq * (kh + kw);
                    let scratch = match rel_scratch {
                        Some(b) => b,
                        None => {
                            own = self.alloc(need, Storage::F32)?;
                            &own
                        }
                    };
                    Self::check_storage(OP, &[scratch], Storage::F32)?;
                    if scratch.len < need {
                        return Err(KernelError::unsupported(OP, "rel scratch too small"));
                    }
                    let mut a = KernelArgs::new();
                    a.push(&p).push(&scratch.addr());
                    self.launch(
                        &cfg,
                        "attention_rel_tables",
                        &geometry::attention_rel_tables(s.nq, s.bh, kh, kw)?,
                        &a,
                    )?;
                    p.rel = scratch.addr();
                }
                let mut a = KernelArgs::new();
                a.push(&p);
                self.launch(
                    &cfg,
                    "attention_flash_fwd",
                    &geometry::attention_flash(s.nq, s.nk, s.bh, s.hd, relg)?,
                    &a,
                )?;
                // The scratch may be ours: it must outlive the launch.
                self.dev.synchronize()?;
            }
        }
        Ok(())
    }

    /// CUDA-core attention (`attention_scalar_fwd`) on device buffers in this backend's storage, head
    /// and value dims up to [`SCALAR_MAX_HEAD_DIM`], any strides.
    pub fn attention_scalar_dev(
        &self,
        q: &DBuf,
        k: &DBuf,
        v: &DBuf,
        o: &mut DBuf,
        shape: &AttnShape,
        rel: Option<(&DBuf, &DBuf)>,
    ) -> Result<()> {
        const OP: &str = "attention";
        let s = shape;
        if s.hd.max(s.dv) > SCALAR_MAX_HEAD_DIM {
            return Err(KernelError::unsupported(
                OP,
                format!("head dim {} / value dim {} > {SCALAR_MAX_HEAD_DIM}", s.hd, s.dv),
            ));
        }
        Self::check_storage(OP, &[q, k, v, o], self.storage())?;
        let t = Self::attn_params(s, q, k, v, o)?;
        let ((_, _), (kh, kw)) = s.grids.unwrap_or(((s.nq, 1), (s.nk, 1)));
        let rel = if s.grids.is_some() { rel } else { None };
        if let Some((rh, rw)) = rel {
            Self::check_storage(OP, &[rh, rw], Storage::F32)?;
        }
        let p = ScalarAttnParams {
            q: t.q,
            k: t.k,
            v: t.v,
            o: t.o,
            rh: rel.map_or(0, |(a, _)| a.addr()),
            rw: rel.map_or(0, |(_, b)| b.addr()),
            q_sb: t.q_sb,
            q_sh: t.q_sh,
            k_sb: t.k_sb,
            k_sh: t.k_sh,
            v_sb: t.v_sb,
            v_sh: t.v_sh,
            o_sb: t.o_sb,
            o_sh: t.o_sh,
            q_sr: t.q_sr,
            k_sr: t.k_sr,
            v_sr: t.v_sr,
            o_sr: t.o_sr,
            heads: t.heads,
            nq: t.nq,
            nk: t.nk,
            qh: t.qh,
            qw: t.qw,
            kh: t.kh,
            kw: t.kw,
            hd: i32_of(OP, s.hd)?,
            scale: s.scale,
            dv: i32_of(OP, s.dv)?,
        };
        let mut a = KernelArgs::new();
        a.push(&p);
        let l = geometry::attention_scalar(s.nq, s.bh, s.hd, rel.map(|_| (kh, kw)))?;
        self.launch(
            &KernelConfig::attention_scalar(self.storage(), s.hd.max(s.dv)),
            "attention_scalar_fwd",
            &l,
            &a,
        )
    }

    /// The Backend op `attention_qkv`: q, k, v read from the packed `qkv [B, N, 3C]` and the
    /// output written as `[B, N, C]`, all through strides ([`AttnLayout`]), by the same kernels
    /// as [`Cuda::attention_fwd`] (heads wider than 256: the CPU reference).
    pub(super) fn attention_qkv_fwd(
        &self,
        qkv: &Tensor,
        heads: usize,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> medsa_core::Result<Tensor> {
        let (b, n, hd) = medsa_core::shape::attention_qkv_dims(qkv, heads, rel)?;
        let c = heads * hd;
        if b == 0 || n == 0 {
            return Tensor::zeros(vec![b, n, c]);
        }
        if hd > SCALAR_MAX_HEAD_DIM {
            return self.cpu.attention_qkv(qkv, heads, scale, rel);
        }
        let layout = AttnLayout::packed_qkv(heads, n, hd);
        let grids = rel.map(|r| ((r.rh.dim(0), r.rw.dim(0)), (r.rh.dim(1), r.rw.dim(1))));
        let shape = AttnShape { bh: b * heads, nq: n, nk: n, hd, dv: hd, grids, scale, layout };
        let tc = self.precision == Precision::Bf16 && TC_HEAD_DIMS.contains(&hd);
        let st = if tc { Storage::Bf16 } else { self.storage() };
        let qkvd = self.operand(qkv, st)?;
        let mut od = self.alloc(b * n * c, st)?;
        let rel_bufs = match rel {
            Some(r) => Some((self.operand(r.rh, Storage::F32)?, self.operand(r.rw, Storage::F32)?)),
            None => None,
        };
        let rel_refs = rel_bufs.as_ref().map(|(a, b)| (a.buf(), b.buf()));
        let d = qkvd.buf();
        if tc {
            self.attention_tc_dev(d, d, d, &mut od, &shape, rel_refs, None, None)?;
        } else {
            self.attention_scalar_dev(d, d, d, &mut od, &shape, rel_refs)?;
        }
        Ok(self.resident(od, &[b, n, c])?)
    }

    /// The Backend op `attention` on host tensors: the tensor-core kernels in bf16 for head dims
    /// they are built for, the CUDA-core kernel otherwise, the CPU reference past 256 per head.
    pub(super) fn attention_fwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> medsa_core::Result<Tensor> {
        let dims = medsa_core::backend::attention_dims(q, k, v, rel)?;
        let (bh, nq, nk, hd, dv, grids) = (dims.bh, dims.nq, dims.nk, dims.d, dims.dv, dims.grids);
        if bh == 0 || nq == 0 || nk == 0 || hd == 0 {
            return Tensor::zeros(vec![bh, nq, dv]);
        }
        if hd.max(dv) > SCALAR_MAX_HEAD_DIM {
            // Wider heads than any model here uses: the CPU reference, so such a model still runs.
            return self.cpu.attention(q, k, v, scale, rel);
        }
        let layout = AttnLayout::contiguous(nq, nk, hd, dv);
        let shape = AttnShape { bh, nq, nk, hd, dv, grids, scale, layout };
        let tc = self.precision == Precision::Bf16 && TC_HEAD_DIMS.contains(&hd) && dv == hd;
        let st = if tc { Storage::Bf16 } else { self.storage() };
        let (qd, kd, vd) = (self.operand(q, st)?, self.operand(k, st)?, self.operand(v, st)?);
        let mut od = self.alloc(bh * nq * dv, st)?;
        let rel_bufs = match rel {
            Some(r) => Some((self.operand(r.rh, Storage::F32)?, self.operand(r.rw, Storage::F32)?)),
            None => None,
        };
        let rel_refs = rel_bufs.as_ref().map(|(a, b)| (a.buf(), b.buf()));
        let (qd, kd, vd) = (qd.buf(), kd.buf(), vd.buf());
        if tc {
            self.attention_tc_dev(qd, kd, vd, &mut od, &shape, rel_refs, None, None)?;
        } else {
            self.attention_scalar_dev(qd, kd, vd, &mut od, &shape, rel_refs)?;
        }
        Ok(self.resident(od, &[bh, nq, dv])?)
    }
}
