//! The CUDA implementation of [`medsa_core::Backend`], written against the device seam
//! ([`crate::device::Device`]): the same host code drives a GPU ([`Driver`]) or the CPU emulator
//! ([`Emulator`]), so launch geometry, parameter packing, strides and buffer sizes run in CI.
//!
//! Per op: upload the operands, launch, download (the data stays f32 on the host side of the
//! trait). [`Precision::Bf16`] stores activations as bf16 on the device and runs the tensor-core
//! attention and bf16 GEMMs (f32 accumulation); [`Precision::F32`] is the parity mode (f32
//! storage, CUDA-core attention, f32 GEMMs).
//!
//! Every forward op runs on the device (attention wider than 256 per head, which no model here
//! has, falls back to `medsa_ref::Cpu`); the backward ops of training are delegated to
//! `medsa_ref::Cpu` for now.

use crate::device::{Buffer, Device, DeviceKind, GemmCall, GemmType, KernelArgs};
use crate::driver::Driver;
use crate::emulator::{EmuOptions, Emulator};
use crate::error::{KernelError, Result};
use crate::geometry::{self, Launch};
use crate::params::{AttnParams, ConvParams, DepthParams, HypParams, ScalarAttnParams};
use crate::source::{KernelConfig, Storage, SCALAR_MAX_HEAD_DIM, TC_HEAD_DIMS};
use half::bf16;
use medsa_core::backward::{AttentionGrads, ConvGrads, HyperChainGrads, LinearGrads, NormGrads};
use medsa_core::{Backend, Conv2d, DepthGrouping, RelPos, ResizeMode, Tensor};
use std::sync::Arc;

/// Storage and math mode of a [`Cuda`] backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 storage, CUDA-core attention, f32 GEMMs: the parity mode (tolerance 1e-4).
    F32,
    /// bf16 storage, tensor-core attention, bf16 GEMMs with f32 accumulation (tolerance 2e-2).
    Bf16,
}

impl Precision {
    /// The kernels' storage dtype.
    pub fn storage(self) -> Storage {
        match self {
            Precision::F32 => Storage::F32,
            Precision::Bf16 => Storage::Bf16,
        }
    }
    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        self.storage().name()
    }
}

/// A device buffer of `len` elements in one storage dtype.
#[derive(Debug)]
pub struct DBuf {
    buf: Buffer,
    storage: Storage,
    len: usize,
}

impl DBuf {
    /// The device address.
    pub fn addr(&self) -> u64 {
        self.buf.addr()
    }
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The storage dtype.
    pub fn storage(&self) -> Storage {
        self.storage
    }
}

fn elem_size(s: Storage) -> usize {
    match s {
        Storage::F32 => 4,
        Storage::Bf16 => 2,
    }
}

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

/// The CUDA backend.
pub struct Cuda {
    dev: Arc<dyn Device>,
    precision: Precision,
    cpu: medsa_ref::Cpu,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda({:?}, {:?})", self.dev, self.precision)
    }
}

fn i32_of(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| KernelError::unsupported(op, format!("extent {v} exceeds i32")))
}

fn i64_of(v: usize) -> i64 {
    v as i64
}

impl Cuda {
    /// The GPU `ordinal`. Returns [`KernelError::NoDriver`] / [`KernelError::NoDevice`] /
    /// [`KernelError::NoNvrtc`] / [`KernelError::NoCublas`] (never panics) when the machine
    /// cannot run the kernels.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self> {
        Ok(Self::on(Arc::new(Driver::new(ordinal)?), precision))
    }

    /// The CPU emulator of the device (results are emulated, never a GPU pass).
    pub fn emulated(precision: Precision, opts: EmuOptions) -> Result<Self> {
        Ok(Self::on(Arc::new(Emulator::new(opts)?), precision))
    }

    /// A backend on any [`Device`].
    pub fn on(dev: Arc<dyn Device>, precision: Precision) -> Self {
        Cuda { dev, precision, cpu: medsa_ref::Cpu }
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn Device> {
        &self.dev
    }
    /// GPU or emulated.
    pub fn kind(&self) -> DeviceKind {
        self.dev.kind()
    }
    /// The GPU driver, when this backend runs on one (CUDA events, cuBLAS for benchmarks).
    pub fn driver(&self) -> Option<&Driver> {
        self.dev.as_any().downcast_ref::<Driver>()
    }
    /// The precision mode.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// The device name.
    pub fn device_name(&self) -> String {
        self.dev.name()
    }

    fn storage(&self) -> Storage {
        self.precision.storage()
    }

    fn ew(&self) -> KernelConfig {
        KernelConfig::elementwise(self.storage())
    }

    // ---- transfers -------------------------------------------------------------------------

    /// Uploads `t` in `storage`.
    pub fn upload(&self, t: &Tensor, storage: Storage) -> Result<DBuf> {
        self.upload_slice(t.data(), storage)
    }

    /// Uploads f32 data in `storage`.
    pub fn upload_slice(&self, data: &[f32], storage: Storage) -> Result<DBuf> {
        let b = self.alloc(data.len(), storage)?;
        match storage {
            Storage::F32 => self.dev.copy_in(&b.buf, bytemuck::cast_slice(data))?,
            Storage::Bf16 => {
                let v: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                self.dev.copy_in(&b.buf, bytemuck::cast_slice(&v))?
            }
        }
        Ok(b)
    }

    /// Uploads f32 data (norm parameters and rel tables are always f32).
    pub fn upload_f32(&self, data: &[f32]) -> Result<DBuf> {
        self.upload_slice(data, Storage::F32)
    }

    /// A zeroed buffer of `n` elements in `storage`.
    pub fn alloc(&self, n: usize, storage: Storage) -> Result<DBuf> {
        Ok(DBuf { buf: self.dev.alloc(n * elem_size(storage))?, storage, len: n })
    }

    /// Downloads `b` as an f32 tensor of `shape` (its first `numel(shape)` elements).
    pub fn download(&self, b: &DBuf, shape: &[usize]) -> Result<Tensor> {
        let n = medsa_core::tensor::checked_numel(shape)?;
        if n > b.len {
            return Err(KernelError::unsupported("download", format!("{shape:?} from {} elements", b.len)));
        }
        let v = match b.storage {
            Storage::F32 => {
                let mut v = vec![0f32; n];
                self.dev.copy_out(&b.buf, bytemuck::cast_slice_mut(&mut v))?;
                v
            }
            Storage::Bf16 => {
                let mut v = vec![bf16::ZERO; n];
                self.dev.copy_out(&b.buf, bytemuck::cast_slice_mut(&mut v))?;
                v.into_iter().map(f32::from).collect()
            }
        };
        Ok(Tensor::new(shape.to_vec(), v)?)
    }

    /// Launches `entry` of `cfg` (after checking its shared memory against the device).
    pub fn launch(&self, cfg: &KernelConfig, entry: &str, l: &Launch, args: &KernelArgs) -> Result<()> {
        let max = self.dev.max_shared_memory();
        if l.smem as usize > max {
            return Err(KernelError::unsupported(
                "launch",
                format!("{entry}: {} B of shared memory > device limit {max}", l.smem),
            ));
        }
        self.dev.launch(cfg, entry, l, args)
    }

    fn ew_launch(&self, entry: &str, l: &Launch, args: &KernelArgs) -> Result<()> {
        self.launch(&self.ew(), entry, l, args)
    }

    fn check_storage(op: &'static str, bufs: &[&DBuf], want: Storage) -> Result<()> {
        if bufs.iter().any(|b| b.storage != want) {
            return Err(KernelError::unsupported(
                op,
                format!("operands must be {} on the device", want.name()),
            ));
        }
        Ok(())
    }

    // ---- elementwise launches --------------------------------------------------------------

    fn unary(&self, entry: &'static str, x: &Tensor) -> Result<Tensor> {
        let xd = self.upload(x, self.storage())?;
        let yd = self.alloc(x.numel(), self.storage())?;
        let mut a = KernelArgs::new();
        a.push(&xd.addr()).push(&yd.addr()).push(&i64_of(x.numel()));
        self.ew_launch(entry, &geometry::elementwise(x.numel()), &a)?;
        self.download(&yd, x.shape())
    }

    /// Elementwise `a + b` on the device.
    pub fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.shape() != b.shape() {
            return Err(medsa_core::Error::shape("add", format!("{:?} + {:?}", a.shape(), b.shape())).into());
        }
        let (ad, bd) = (self.upload(a, self.storage())?, self.upload(b, self.storage())?);
        let yd = self.alloc(a.numel(), self.storage())?;
        let mut args = KernelArgs::new();
        args.push(&ad.addr()).push(&bd.addr()).push(&yd.addr()).push(&i64_of(a.numel()));
        self.ew_launch("add_fwd", &geometry::elementwise(a.numel()), &args)?;
        self.download(&yd, a.shape())
    }

    fn norm_rows(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        let c = x.last_dim();
        if x.rank() == 0 || c == 0 {
            return Err(medsa_core::Error::shape(OP, format!("input {:?}", x.shape())).into());
        }
        w.expect_shape(OP, "weight", &[c])?;
        b.expect_shape(OP, "bias", &[c])?;
        let rows = x.numel() / c;
        let xd = self.upload(x, self.storage())?;
        let yd = self.alloc(x.numel(), self.storage())?;
        let (wd, bd) = (self.upload_f32(w.data())?, self.upload_f32(b.data())?);
        let mut a = KernelArgs::new();
        a.push(&xd.addr()).push(&wd.addr()).push(&bd.addr()).push(&yd.addr());
        a.push(&i64_of(rows)).push(&i32_of(OP, c)?).push(&eps);
        self.ew_launch("layer_norm_fwd", &geometry::rows(rows)?, &a)?;
        self.download(&yd, x.shape())
    }

    fn partition_launch(
        &self,
        entry: &'static str,
        src: &Tensor,
        n_out: usize,
        geom: [usize; 7],
        out_shape: &[usize],
    ) -> Result<Tensor> {
        let xd = self.upload(src, self.storage())?;
        let yd = self.alloc(n_out, self.storage())?;
        let mut a = KernelArgs::new();
        a.push(&xd.addr()).push(&yd.addr());
        for v in geom {
            a.push(&i32_of(entry, v)?);
        }
        self.ew_launch(entry, &geometry::elementwise(n_out), &a)?;
        self.download(&yd, out_shape)
    }

    // ---- attention -------------------------------------------------------------------------

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

    fn attention_impl(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> Result<Tensor> {
        let dims = medsa_core::backend::attention_dims(q, k, v, rel)?;
        let (bh, nq, nk, hd, dv, grids) = (dims.bh, dims.nq, dims.nk, dims.d, dims.dv, dims.grids);
        if bh == 0 || nq == 0 || nk == 0 || hd == 0 {
            return Ok(Tensor::zeros(vec![bh, nq, dv])?);
        }
        if hd.max(dv) > SCALAR_MAX_HEAD_DIM {
            // Wider heads than any model here uses: the CPU reference, so such a model still runs.
            return Ok(self.cpu.attention(q, k, v, scale, rel)?);
        }
        let layout = AttnLayout::contiguous(nq, nk, hd, dv);
        let shape = AttnShape { bh, nq, nk, hd, dv, grids, scale, layout };
        let tc = self.precision == Precision::Bf16 && TC_HEAD_DIMS.contains(&hd) && dv == hd;
        let st = if tc { Storage::Bf16 } else { self.storage() };
        let (qd, kd, vd) = (self.upload(q, st)?, self.upload(k, st)?, self.upload(v, st)?);
        let mut od = self.alloc(bh * nq * dv, st)?;
        let rel_bufs = match rel {
            Some(r) => Some((self.upload_f32(r.rh.data())?, self.upload_f32(r.rw.data())?)),
            None => None,
        };
        let rel_refs = rel_bufs.as_ref().map(|(a, b)| (a, b));
        if tc {
            self.attention_tc_dev(&qd, &kd, &vd, &mut od, &shape, rel_refs, None, None)?;
        } else {
            self.attention_scalar_dev(&qd, &kd, &vd, &mut od, &shape, rel_refs)?;
        }
        self.download(&od, &[bh, nq, dv])
    }

    // ---- SD-Trans depth attention and HyP chain --------------------------------------------

    /// SD-Trans depth attention (spec 3.6, golden README 5.2) on `qkv [N0, P, 3C]` (the qkv
    /// projection of the window-partitioned batch), `depth` slices, `nw` windows per slice,
    /// `grouping`; `rel` = the tables resampled and expanded to the `closest_numbers(depth)`
    /// grid (`Rh [dh, dh, hd]`, `Rw [dw, dw, hd]`). Returns `[N0, P, C]` in the layout of `qkv`.
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
        let st = self.storage();
        let qd = self.upload(qkv, st)?;
        let od = self.alloc(n0 * p * c, st)?;
        let rel_bufs = match rel {
            Some(r) => Some((self.upload_f32(r.rh.data())?, self.upload_f32(r.rw.data())?)),
            None => None,
        };
        let prm = DepthParams {
            qkv: qd.addr(),
            out: od.addr(),
            rh: rel_bufs.as_ref().map_or(0, |(a, _)| a.addr()),
            rw: rel_bufs.as_ref().map_or(0, |(_, b)| b.addr()),
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
        let mut a = KernelArgs::new();
        a.push(&prm);
        self.launch(&KernelConfig::depth_attention(st), "depth_attention_fwd", &l, &a)?;
        self.download(&od, &[n0, p, c])
    }

    /// The fused HyP-Adpt chain (spec 5.4): `x [B, T, r]`, generated `w [B, L, r, r]`,
    /// LayerNorm `gamma, beta [L, r]` → `[B, T, r]`, `d ← ReLU(LN_n(d · W[b, n]))` for each layer.
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
        let st = self.storage();
        let (xd, wd) = (self.upload(x, st)?, self.upload(w, st)?);
        let (gd, bd) = (self.upload_f32(gamma.data())?, self.upload_f32(beta.data())?);
        let yd = self.alloc(x.numel(), st)?;
        let prm = HypParams {
            x: xd.addr(),
            w: wd.addr(),
            gamma: gd.addr(),
            beta: bd.addr(),
            y: yd.addr(),
            b: i32_of(OP, b)?,
            t: i32_of(OP, t)?,
            eps,
            _pad: 0,
        };
        let mut a = KernelArgs::new();
        a.push(&prm);
        self.launch(&KernelConfig::hyper_chain(st, r, layers), "hyper_chain_fwd", &l, &a)?;
        self.download(&yd, x.shape())
    }

    // ---- GEMMs -----------------------------------------------------------------------------

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
    fn gemm_at(
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

    // ---- convolutions and positional encodings --------------------------------------------

    /// `conv2d` on the device: im2col (any stride, padding, groups), one batched GEMM per image
    /// over its groups, then the bias per channel.
    fn conv2d_dev(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: Conv2d) -> Result<Tensor> {
        const OP: &str = "conv2d";
        let (n, cin, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (cout, cpg, kh, kw) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
        let (ho, wo) = ((h + 2 * g.padding - kh) / g.stride + 1, (wd + 2 * g.padding - kw) / g.stride + 1);
        let (npix, kdim, coutg) = (ho * wo, cpg * kh * kw, cout / g.groups);
        let st = self.storage();
        let es = elem_size(st) as u64;
        let (xd, wdv) = (self.upload(x, st)?, self.upload(w, st)?);
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
            let bd = self.upload_f32(b.data())?;
            let mut a = KernelArgs::new();
            a.push(&yd.addr())
                .push(&bd.addr())
                .push(&i32_of(OP, n)?)
                .push(&i32_of(OP, cout)?)
                .push(&i64_of(npix));
            self.launch(&conv, "conv2d_add_bias", &geometry::elementwise(yd.len()), &a)?;
        }
        self.download(&yd, &[n, cout, ho, wo])
    }

    fn conv_transpose2x2_dev(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        const OP: &str = "conv_transpose2x2";
        let (n, cin, h, wd, cout) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3), w.dim(1));
        let st = self.storage();
        let (xd, wdv, bd) = (self.upload(x, st)?, self.upload(w, st)?, self.upload_f32(b.data())?);
        let yd = self.alloc(n * cout * 4 * h * wd, st)?;
        let mut a = KernelArgs::new();
        a.push(&xd.addr()).push(&wdv.addr()).push(&bd.addr()).push(&yd.addr());
        for v in [n, cin, cout, h, wd] {
            a.push(&i32_of(OP, v)?);
        }
        self.launch(&KernelConfig::conv(st), "conv_transpose2x2_fwd", &geometry::elementwise(yd.len()), &a)?;
        self.download(&yd, &[n, cout, 2 * h, 2 * wd])
    }

    fn rel_pos_table_dev(&self, qs: usize, ks: usize, table: &Tensor) -> Result<Tensor> {
        const OP: &str = "rel_pos_table";
        let c = medsa_core::backend::RelPosCoords::checked(qs, ks, table)?;
        let (rows, d) = (table.dim(0), table.dim(1));
        let scale = rows as f32 / c.l as f32;
        let td = self.upload_f32(table.data())?;
        let out = self.alloc(qs * ks * d, Storage::F32)?;
        let mut a = KernelArgs::new();
        a.push(&td.addr()).push(&out.addr());
        for v in [rows, d, qs, ks, c.l] {
            a.push(&i32_of(OP, v)?);
        }
        a.push(&scale).push(&c.sq).push(&c.sk).push(&c.off);
        self.launch(
            &KernelConfig::position(self.storage()),
            "rel_pos_table_fwd",
            &geometry::elementwise(out.len()),
            &a,
        )?;
        self.download(&out, &[qs, ks, d])
    }

    fn pe_encode_dev(&self, coords: &Tensor, gaussian: &Tensor, shape: &[usize]) -> Result<Tensor> {
        const OP: &str = "pe_encode";
        let f = gaussian.dim(1);
        let points = coords.numel() / 2;
        let (cd, gd) = (self.upload_f32(coords.data())?, self.upload_f32(gaussian.data())?);
        let out = self.alloc(points * 2 * f, self.storage())?;
        let mut a = KernelArgs::new();
        a.push(&cd.addr()).push(&gd.addr()).push(&out.addr()).push(&i64_of(points)).push(&i32_of(OP, f)?);
        self.launch(
            &KernelConfig::position(self.storage()),
            "pe_encode_fwd",
            &geometry::elementwise(points * f),
            &a,
        )?;
        self.download(&out, shape)
    }

    #[allow(clippy::too_many_arguments)]
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
        let (ad, bd) = (self.upload(a, st)?, self.upload(b, st)?);
        let mut cd = self.alloc(batch * mnk.0 * mnk.1, st)?;
        self.gemm_dev(&ad, &bd, &mut cd, batch, mnk, trans, strides)?;
        Ok(cd)
    }
}

fn backend_err<T>(r: Result<T>) -> medsa_core::Result<T> {
    r.map_err(Into::into)
}

impl Backend for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> medsa_core::Result<Tensor> {
        const OP: &str = "linear";
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
            return Ok(y);
        }
        backend_err((|| {
            let yd = self.gemm(x, w, 1, (m, out_f, in_f), (false, true), (0, 0))?;
            if let Some(b) = b {
                let bd = self.upload_f32(b.data())?;
                let mut a = KernelArgs::new();
                a.push(&yd.addr()).push(&bd.addr()).push(&i64_of(m)).push(&i32_of(OP, out_f)?);
                self.ew_launch("linear_add_bias", &geometry::elementwise(m * out_f), &a)?;
            }
            self.download(&yd, &shape)
        })())
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        const OP: &str = "matmul";
        a.expect_rank(OP, "a", 2)?;
        b.expect_rank(OP, "b", 2)?;
        let (m, k, n) = (a.dim(0), a.dim(1), b.dim(1));
        b.expect_shape(OP, "b", &[k, n])?;
        if m * n * k == 0 {
            return Tensor::zeros(vec![m, n]);
        }
        backend_err(
            self.gemm(a, b, 1, (m, n, k), (false, false), (0, 0)).and_then(|c| self.download(&c, &[m, n])),
        )
    }

    fn bmm(&self, a: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        const OP: &str = "bmm";
        a.expect_rank(OP, "a", 3)?;
        b.expect_rank(OP, "b", 3)?;
        let (bs, m, k, n) = (a.dim(0), a.dim(1), a.dim(2), b.dim(2));
        b.expect_shape(OP, "b", &[bs, k, n])?;
        if bs * m * n * k == 0 {
            return Tensor::zeros(vec![bs, m, n]);
        }
        backend_err(
            self.gemm(a, b, bs, (m, n, k), (false, false), (m * k, k * n))
                .and_then(|c| self.download(&c, &[bs, m, n])),
        )
    }

    fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> medsa_core::Result<Tensor> {
        if x.numel() == 0 {
            return Ok(x.clone());
        }
        backend_err(self.norm_rows(x, w, b, eps))
    }

    fn layer_norm2d(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> medsa_core::Result<Tensor> {
        const OP: &str = "layer_norm2d";
        x.expect_rank(OP, "x", 4)?;
        let (bs, c, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        w.expect_shape(OP, "weight", &[c])?;
        b.expect_shape(OP, "bias", &[c])?;
        if x.numel() == 0 {
            return Ok(x.clone());
        }
        backend_err((|| {
            let xd = self.upload(x, self.storage())?;
            let yd = self.alloc(x.numel(), self.storage())?;
            let (wdv, bdv) = (self.upload_f32(w.data())?, self.upload_f32(b.data())?);
            let mut a = KernelArgs::new();
            a.push(&xd.addr()).push(&wdv.addr()).push(&bdv.addr()).push(&yd.addr());
            a.push(&i32_of(OP, bs)?).push(&i32_of(OP, c)?).push(&i64_of(h * wd)).push(&eps);
            self.ew_launch("layer_norm2d_fwd", &geometry::elementwise(bs * h * wd), &a)?;
            self.download(&yd, x.shape())
        })())
    }

    fn gelu(&self, x: Tensor) -> medsa_core::Result<Tensor> {
        if x.numel() == 0 {
            return Ok(x);
        }
        backend_err(self.unary("gelu_fwd", &x))
    }

    fn relu(&self, x: Tensor) -> medsa_core::Result<Tensor> {
        if x.numel() == 0 {
            return Ok(x);
        }
        backend_err(self.unary("relu_fwd", &x))
    }

    fn softmax(&self, x: Tensor) -> medsa_core::Result<Tensor> {
        let cols = x.last_dim();
        if x.numel() == 0 || cols == 0 {
            return Ok(x);
        }
        backend_err((|| {
            let rows = x.numel() / cols;
            let xd = self.upload(&x, self.storage())?;
            let yd = self.alloc(x.numel(), self.storage())?;
            let mut a = KernelArgs::new();
            a.push(&xd.addr()).push(&yd.addr()).push(&i64_of(rows)).push(&i32_of("softmax", cols)?);
            self.ew_launch("softmax_fwd", &geometry::rows(rows)?, &a)?;
            self.download(&yd, x.shape())
        })())
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, geom: Conv2d) -> medsa_core::Result<Tensor> {
        let out = medsa_core::backend::conv2d_shape(x, w, b, geom)?;
        if out.iter().product::<usize>() == 0 {
            return Tensor::zeros(out.to_vec());
        }
        backend_err(self.conv2d_dev(x, w, b, geom))
    }

    fn conv_transpose2x2(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        let out = medsa_core::backend::conv_transpose2x2_shape(x, w, b)?;
        if out.iter().product::<usize>() == 0 {
            return Tensor::zeros(out.to_vec());
        }
        backend_err(self.conv_transpose2x2_dev(x, w, b))
    }

    fn window_partition(&self, x: &Tensor, window: usize) -> medsa_core::Result<(Tensor, (usize, usize))> {
        const OP: &str = "window_partition";
        x.expect_rank(OP, "x", 4)?;
        if window == 0 {
            return Err(medsa_core::Error::arg(OP, "window must be positive"));
        }
        let (b, h, w, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (nwh, nww) = (h.div_ceil(window), w.div_ceil(window));
        let (hp, wp) = (nwh * window, nww * window);
        let out = [b * nwh * nww, window, window, c];
        let n = out.iter().product();
        if n == 0 {
            return Ok((Tensor::zeros(out.to_vec())?, (hp, wp)));
        }
        let t = backend_err(self.partition_launch(
            "window_partition_fwd",
            x,
            n,
            [b, h, w, c, window, nwh, nww],
            &out,
        ))?;
        Ok((t, (hp, wp)))
    }

    fn window_unpartition(
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
        let n = out.iter().product();
        if n == 0 {
            return Tensor::zeros(out.to_vec());
        }
        backend_err(self.partition_launch(
            "window_unpartition_fwd",
            x,
            n,
            [b, h, w, c, window, nwh, nww],
            &out,
        ))
    }

    fn rel_pos_table(&self, qs: usize, ks: usize, table: &Tensor) -> medsa_core::Result<Tensor> {
        medsa_core::backend::RelPosCoords::checked(qs, ks, table)?;
        if table.dim(1) == 0 {
            return Tensor::zeros(vec![qs, ks, 0]);
        }
        backend_err(self.rel_pos_table_dev(qs, ks, table))
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> medsa_core::Result<Tensor> {
        backend_err(self.attention_impl(q, k, v, scale, rel))
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
        backend_err((|| {
            let xd = self.upload(x, self.storage())?;
            let yd = self.alloc(n, self.storage())?;
            let mut a = KernelArgs::new();
            a.push(&xd.addr()).push(&yd.addr());
            for v in [b * c, h, w, out.0, out.1] {
                a.push(&i32_of(OP, v)?);
            }
            self.ew_launch(entry, &geometry::elementwise(n), &a)?;
            self.download(&yd, &shape)
        })())
    }

    fn pe_encode(&self, coords: &Tensor, gaussian: &Tensor) -> medsa_core::Result<Tensor> {
        let shape = medsa_core::backend::pe_encode_shape(coords, gaussian)?;
        if shape.iter().product::<usize>() == 0 {
            return Tensor::zeros(shape);
        }
        backend_err(self.pe_encode_dev(coords, gaussian, &shape))
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
