//! The CUDA implementation of [`medsa_core::Backend`].
//!
//! Per op: upload the operands, launch, download (the data stays f32 on the host side of the
//! trait). [`Precision::Bf16`] stores activations as bf16 on the device and runs the tensor-core
//! attention and bf16 cuBLAS GEMMs (f32 accumulation); [`Precision::F32`] is the parity mode
//! (f32 storage, CUDA-core attention, f32 cuBLAS). Modules are compiled by NVRTC on first use and
//! cached per (kernel config, arch); with `MEDSA_PTX_DIR` set, PTX produced by `cargo xtask ptx`
//! (`<dir>/sm_XY/<stem>.ptx`) is loaded instead of compiling.
//!
//! Convolutions, the transposed convolution, `rel_pos_table` and `pe_encode` are delegated to
//! `medsa_ref::Cpu` for now (small or im2col-bound), and so are the backward ops of training;
//! everything else runs on the GPU.

use crate::error::{KernelError, Result};
use crate::geometry::{self, Launch};
use crate::params::{AttnParams, DepthParams, HypParams, ScalarAttnParams};
use crate::source::{
    compile_ptx, nvrtc_available, Arch, KernelConfig, Storage, SCALAR_MAX_HEAD_DIM, TC_HEAD_DIMS,
};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use half::bf16;
use medsa_core::backward::{AttentionGrads, ConvGrads, HyperChainGrads, LinearGrads, NormGrads};
use medsa_core::{Backend, Conv2d, DepthGrouping, RelPos, ResizeMode, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Storage and math mode of a [`Cuda`] backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 storage, CUDA-core attention, f32 cuBLAS: the parity mode (tolerance 1e-4).
    F32,
    /// bf16 storage, tensor-core attention, bf16 cuBLAS with f32 accumulation (tolerance 2e-2).
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
}

/// Whether a CUDA driver library can be loaded (never panics).
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the candidate names of libcuda.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A device buffer in either storage dtype.
#[derive(Debug)]
pub enum DBuf {
    /// f32 storage.
    F32(CudaSlice<f32>),
    /// bf16 storage.
    Bf16(CudaSlice<bf16>),
}

/// Which tensor-core attention kernel to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcKernel {
    /// `window_attn_fwd` (all keys in shared memory, <= 256 keys).
    Window,
    /// `rel_tables_fwd` + `flash_attn_fwd`.
    Flash,
}

/// Problem description of a device-side attention launch (contiguous `[BH, N, hd]` operands).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    /// Batch * heads.
    pub bh: usize,
    /// Queries.
    pub nq: usize,
    /// Keys.
    pub nk: usize,
    /// Head dim.
    pub hd: usize,
    /// Query grid (qh, qw) and key grid (kh, kw) of the relative-position bias.
    pub grids: Option<((usize, usize), (usize, usize))>,
    /// Softmax scale.
    pub scale: f32,
}

/// The CUDA backend.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    arch: Arch,
    precision: Precision,
    max_smem: usize,
    modules: Mutex<HashMap<KernelConfig, Arc<CudaModule>>>,
    cpu: medsa_ref::Cpu,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda({}, {:?})", self.arch.sm(), self.precision)
    }
}

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

fn i32_of(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| KernelError::unsupported(op, format!("extent {v} exceeds i32")))
}

impl Cuda {
    /// Opens device `ordinal`. Returns [`KernelError::NoDriver`] / [`KernelError::NoDevice`] /
    /// [`KernelError::NoNvrtc`] (never panics) when the machine cannot run the kernels.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self> {
        if !driver_available() {
            return Err(KernelError::NoDriver);
        }
        let count = CudaContext::device_count()?;
        if count <= 0 || ordinal >= count as usize {
            return Err(KernelError::NoDevice(count));
        }
        if !nvrtc_available() && std::env::var_os("MEDSA_PTX_DIR").is_none() {
            return Err(KernelError::NoNvrtc);
        }
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = Arch { major: major as u32, minor: minor as u32 };
        if !arch.supported() {
            return Err(KernelError::unsupported(
                "Cuda::new",
                format!("{} (the kernels need sm_80+)", arch.sm()),
            ));
        }
        let max_smem = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
            as usize;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone())?;
        Ok(Cuda {
            ctx,
            stream,
            blas,
            arch,
            precision,
            max_smem,
            modules: Mutex::new(HashMap::new()),
            cpu: medsa_ref::Cpu,
        })
    }

    /// The device architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }
    /// The precision mode.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// The stream every op runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The cuBLAS handle (bound to [`Cuda::stream`]).
    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }
    /// The device name.
    pub fn device_name(&self) -> Result<String> {
        Ok(self.ctx.name()?)
    }

    /// The compiled entry point `entry` of `cfg` (compiled and cached on first use).
    pub fn function(&self, cfg: &KernelConfig, entry: &str) -> Result<CudaFunction> {
        let module = {
            let mut cache =
                self.modules.lock().map_err(|_| KernelError::unsupported("Cuda", "module cache poisoned"))?;
            match cache.get(cfg) {
                Some(m) => m.clone(),
                None => {
                    let ptx = match std::env::var_os("MEDSA_PTX_DIR") {
                        Some(dir) => {
                            let p = std::path::Path::new(&dir)
                                .join(self.arch.sm())
                                .join(format!("{}.ptx", cfg.stem()));
                            match std::fs::read_to_string(&p) {
                                Ok(s) => s,
                                Err(_) => compile_ptx(cfg, self.arch)?,
                            }
                        }
                        None => compile_ptx(cfg, self.arch)?,
                    };
                    let m = self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
                    cache.insert(cfg.clone(), m.clone());
                    m
                }
            }
        };
        Ok(module.load_function(entry)?)
    }

    fn prepare(&self, f: &CudaFunction, l: &Launch) -> Result<LaunchConfig> {
        let smem = l.smem as usize;
        if smem > self.max_smem {
            return Err(KernelError::unsupported(
                "launch",
                format!("{smem} B of shared memory > device limit {}", self.max_smem),
            ));
        }
        if smem > geometry::DEFAULT_SMEM {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                l.smem as i32,
            )?;
        }
        Ok(LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: l.smem })
    }

    // ---- transfers -------------------------------------------------------------------------

    /// Uploads `t` in `storage`.
    pub fn upload(&self, t: &Tensor, storage: Storage) -> Result<DBuf> {
        Ok(match storage {
            Storage::F32 => DBuf::F32(self.stream.clone_htod(t.data())?),
            Storage::Bf16 => {
                let v: Vec<bf16> = t.data().iter().map(|&x| bf16::from_f32(x)).collect();
                DBuf::Bf16(self.stream.clone_htod(&v)?)
            }
        })
    }

    /// Uploads f32 data (norm parameters, rel tables are always f32).
    pub fn upload_f32(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        Ok(self.stream.clone_htod(data)?)
    }

    /// Allocates a zeroed buffer of `n` elements in `storage`.
    pub fn alloc(&self, n: usize, storage: Storage) -> Result<DBuf> {
        Ok(match storage {
            Storage::F32 => DBuf::F32(self.stream.alloc_zeros::<f32>(n.max(1))?),
            Storage::Bf16 => DBuf::Bf16(self.stream.alloc_zeros::<bf16>(n.max(1))?),
        })
    }

    /// Downloads `b` as an f32 tensor of `shape`.
    pub fn download(&self, b: &DBuf, shape: &[usize]) -> Result<Tensor> {
        let n = medsa_core::tensor::checked_numel(shape)?;
        let mut v: Vec<f32> = match b {
            DBuf::F32(s) => self.stream.clone_dtoh(s)?,
            DBuf::Bf16(s) => self.stream.clone_dtoh(s)?.into_iter().map(f32::from).collect(),
        };
        v.truncate(n);
        Ok(Tensor::new(shape.to_vec(), v)?)
    }

    /// The raw device address of a buffer.
    pub fn dptr(&self, b: &DBuf) -> u64 {
        match b {
            DBuf::F32(s) => ptr(s, &self.stream),
            DBuf::Bf16(s) => ptr(s, &self.stream),
        }
    }

    fn storage(&self) -> Storage {
        self.precision.storage()
    }

    fn ew(&self) -> KernelConfig {
        KernelConfig::elementwise(self.storage())
    }

    // ---- elementwise launches --------------------------------------------------------------

    fn unary(&self, entry: &'static str, x: &Tensor) -> Result<Tensor> {
        let f = self.function(&self.ew(), entry)?;
        let xd = self.upload(x, self.storage())?;
        let yd = self.alloc(x.numel(), self.storage())?;
        let n = x.numel() as i64;
        let (xp, yp) = (self.dptr(&xd), self.dptr(&yd));
        let cfg = self.prepare(&f, &geometry::elementwise(x.numel()))?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&xp).arg(&yp).arg(&n);
        // SAFETY: pointers and extents describe live buffers of n elements.
        unsafe { b.launch(cfg) }?;
        self.download(&yd, x.shape())
    }

    /// Elementwise `a + b` on the device.
    pub fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.shape() != b.shape() {
            return Err(medsa_core::Error::shape("add", format!("{:?} + {:?}", a.shape(), b.shape())).into());
        }
        let f = self.function(&self.ew(), "add_fwd")?;
        let (ad, bd) = (self.upload(a, self.storage())?, self.upload(b, self.storage())?);
        let yd = self.alloc(a.numel(), self.storage())?;
        let n = a.numel() as i64;
        let (ap, bp, yp) = (self.dptr(&ad), self.dptr(&bd), self.dptr(&yd));
        let cfg = self.prepare(&f, &geometry::elementwise(a.numel()))?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&ap).arg(&bp).arg(&yp).arg(&n);
        // SAFETY: three live buffers of n elements.
        unsafe { l.launch(cfg) }?;
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
        let f = self.function(&self.ew(), "layer_norm_last")?;
        let xd = self.upload(x, self.storage())?;
        let yd = self.alloc(x.numel(), self.storage())?;
        let (wd, bd) = (self.upload_f32(w.data())?, self.upload_f32(b.data())?);
        let (xp, yp, wp, bp) =
            (self.dptr(&xd), self.dptr(&yd), ptr(&wd, &self.stream), ptr(&bd, &self.stream));
        let (rows_i, c_i) = (rows as i64, i32_of(OP, c)?);
        let cfg = self.prepare(&f, &geometry::rows(rows)?)?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&xp).arg(&wp).arg(&bp).arg(&yp).arg(&rows_i).arg(&c_i).arg(&eps);
        // SAFETY: x, y hold rows*c elements; w, b hold c.
        unsafe { l.launch(cfg) }?;
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
        let f = self.function(&self.ew(), entry)?;
        let xd = self.upload(src, self.storage())?;
        let yd = self.alloc(n_out, self.storage())?;
        let (xp, yp) = (self.dptr(&xd), self.dptr(&yd));
        let g: Vec<i32> = geom.iter().map(|&v| i32_of(entry, v)).collect::<Result<_>>()?;
        let cfg = self.prepare(&f, &geometry::elementwise(n_out))?;
        let mut l = self.stream.launch_builder(&f);
        l.arg(&xp).arg(&yp);
        for v in &g {
            l.arg(v);
        }
        // SAFETY: extents match the buffers (checked by the callers).
        unsafe { l.launch(cfg) }?;
        self.download(&yd, out_shape)
    }

    // ---- attention -------------------------------------------------------------------------

    /// Tensor-core attention on device buffers (bf16, contiguous `[BH, N, hd]`). `rel` holds the
    /// expanded tables `Rh [qh, kh, hd]`, `Rw [qw, kw, hd]` (f32); `kernel` forces a kernel,
    /// otherwise the windowed kernel is used up to 256 keys.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_tc_dev(
        &self,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        o: &mut CudaSlice<bf16>,
        shape: &AttnShape,
        rel: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
        rel_scratch: Option<&mut CudaSlice<f32>>,
        kernel: Option<TcKernel>,
    ) -> Result<()> {
        const OP: &str = "attention";
        let s = shape;
        if !TC_HEAD_DIMS.contains(&s.hd) {
            return Err(KernelError::unsupported(OP, format!("tensor-core head dim {}", s.hd)));
        }
        let ((qh, qw), (kh, kw)) = s.grids.unwrap_or(((s.nq, 1), (s.nk, 1)));
        let cfg = KernelConfig::attention(s.hd);
        let st = &self.stream;
        let (nqhd, nkhd) = ((s.nq * s.hd) as i64, (s.nk * s.hd) as i64);
        let mut p = AttnParams {
            q: ptr(q, st),
            k: ptr(k, st),
            v: ptr(v, st),
            o: ptr(o, st),
            q_sb: nqhd,
            k_sb: nkhd,
            v_sb: nkhd,
            o_sb: nqhd,
            q_sr: s.hd as i32,
            k_sr: s.hd as i32,
            v_sr: s.hd as i32,
            o_sr: s.hd as i32,
            heads: 1,
            nq: i32_of(OP, s.nq)?,
            nk: i32_of(OP, s.nk)?,
            qh: i32_of(OP, qh)?,
            qw: i32_of(OP, qw)?,
            kh: i32_of(OP, kh)?,
            kw: i32_of(OP, kw)?,
            scale: s.scale,
            ..Default::default()
        };
        let has_rel = s.grids.is_some() && rel.is_some();
        if let (true, Some((rh, rw))) = (has_rel, rel) {
            p.rh = ptr(rh, st);
            p.rw = ptr(rw, st);
        }
        let which = kernel.unwrap_or(if geometry::prefer_window_kernel(s.nk) {
            TcKernel::Window
        } else {
            TcKernel::Flash
        });
        let relg = has_rel.then_some((kh, kw));
        match which {
            TcKernel::Window => {
                let f = self.function(&cfg, "window_attn_fwd")?;
                let lc = self.prepare(&f, &geometry::window_attn(s.nq, s.nk, s.bh, s.hd, relg)?)?;
                let mut b = st.launch_builder(&f);
                b.arg(&p);
                // SAFETY: params describe live contiguous buffers.
                unsafe { b.launch(lc) }?;
            }
            TcKernel::Flash => {
                let mut own;
                if has_rel {
                    let scratch: &mut CudaSlice<f32> = match rel_scratch {
                        Some(s2) => s2,
                        None => {
                            own = st.alloc_zeros::<f32>(s.bh * s.nq * (kh + kw))?;
                            &mut own
                        }
                    };
                    if scratch.len() < s.bh * s.nq * (kh + kw) {
                        return Err(KernelError::unsupported(OP, "rel scratch too small"));
                    }
                    let out = ptr(scratch, st);
                    let f = self.function(&cfg, "rel_tables_fwd")?;
                    let lc = self.prepare(&f, &geometry::rel_tables(s.nq, s.bh, kh, kw)?)?;
                    let mut b = st.launch_builder(&f);
                    b.arg(&p).arg(&out);
                    // SAFETY: out holds bh*nq*(kh+kw) floats.
                    unsafe { b.launch(lc) }?;
                    p.rel = out;
                }
                let f = self.function(&cfg, "flash_attn_fwd")?;
                let lc = self.prepare(&f, &geometry::flash_attn(s.nq, s.nk, s.bh, s.hd, relg)?)?;
                let mut b = st.launch_builder(&f);
                b.arg(&p);
                // SAFETY: params describe live contiguous buffers (rel scratch outlives the launch
                // on this stream: freed only after the download synchronises).
                unsafe { b.launch(lc) }?;
                st.synchronize()?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_scalar(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
        shape: AttnShape,
        dv: usize,
    ) -> Result<Tensor> {
        const OP: &str = "attention";
        let st = self.storage();
        let (qd, kd, vd) = (self.upload(q, st)?, self.upload(k, st)?, self.upload(v, st)?);
        let od = self.alloc(shape.bh * shape.nq * dv, st)?;
        let ((qh, qw), (kh, kw)) = shape.grids.unwrap_or(((shape.nq, 1), (shape.nk, 1)));
        let rel_bufs = match rel {
            Some(r) => Some((self.upload_f32(r.rh.data())?, self.upload_f32(r.rw.data())?)),
            None => None,
        };
        if dv != shape.hd {
            return Err(KernelError::unsupported(OP, format!("value dim {dv} != head dim {}", shape.hd)));
        }
        let hd = shape.hd;
        let p = ScalarAttnParams {
            q: self.dptr(&qd),
            k: self.dptr(&kd),
            v: self.dptr(&vd),
            o: self.dptr(&od),
            rh: rel_bufs.as_ref().map_or(0, |(a, _)| ptr(a, &self.stream)),
            rw: rel_bufs.as_ref().map_or(0, |(_, b)| ptr(b, &self.stream)),
            q_sb: (shape.nq * hd) as i64,
            k_sb: (shape.nk * hd) as i64,
            v_sb: (shape.nk * hd) as i64,
            o_sb: (shape.nq * hd) as i64,
            q_sr: hd as i32,
            k_sr: hd as i32,
            v_sr: hd as i32,
            o_sr: hd as i32,
            heads: 1,
            nq: i32_of(OP, shape.nq)?,
            nk: i32_of(OP, shape.nk)?,
            qh: i32_of(OP, qh)?,
            qw: i32_of(OP, qw)?,
            kh: i32_of(OP, kh)?,
            kw: i32_of(OP, kw)?,
            hd: i32_of(OP, hd)?,
            scale,
            ..Default::default()
        };
        let f = self.function(&KernelConfig::attn_scalar(st), "attn_scalar_fwd")?;
        let lc = self.prepare(&f, &geometry::attn_scalar(shape.nq, shape.bh, hd, rel.map(|_| (kh, kw)))?)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p);
        // SAFETY: params describe live contiguous buffers.
        unsafe { b.launch(lc) }?;
        self.download(&od, &[shape.bh, shape.nq, dv])
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
        let shape = AttnShape { bh, nq, nk, hd, grids, scale };
        if bh == 0 || nq == 0 || nk == 0 || hd == 0 {
            return Ok(Tensor::zeros(vec![bh, nq, dv])?);
        }
        if dv != hd || hd > SCALAR_MAX_HEAD_DIM {
            // Shapes no kernel here covers (the decoder's few-query attention runs with the
            // full 256-wide token as its head): the CPU reference, so the model still runs.
            return Ok(self.cpu.attention(q, k, v, scale, rel)?);
        }
        if self.precision == Precision::Bf16 && TC_HEAD_DIMS.contains(&hd) {
            let to_bf = |t: &Tensor| -> Result<CudaSlice<bf16>> {
                let v: Vec<bf16> = t.data().iter().map(|&x| bf16::from_f32(x)).collect();
                Ok(self.stream.clone_htod(&v)?)
            };
            let (qd, kd, vd) = (to_bf(q)?, to_bf(k)?, to_bf(v)?);
            let mut od = self.stream.alloc_zeros::<bf16>(bh * nq * hd)?;
            let rel_bufs = match rel {
                Some(r) => Some((self.upload_f32(r.rh.data())?, self.upload_f32(r.rw.data())?)),
                None => None,
            };
            self.attention_tc_dev(
                &qd,
                &kd,
                &vd,
                &mut od,
                &shape,
                rel_bufs.as_ref().map(|(a, b)| (a, b)),
                None,
                None,
            )?;
            return self.download(&DBuf::Bf16(od), &[bh, nq, hd]);
        }
        self.attention_scalar(q, k, v, scale, rel, shape, dv)
    }

    // ---- SD-Trans depth attention and HyP chain (model ops outside the Backend trait) ------

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
        let l = geometry::depth_attn(nseq, heads, depth, hd, dh, dw, self.max_smem)?;
        let st = self.storage();
        let qd = self.upload(qkv, st)?;
        let od = self.alloc(n0 * p * c, st)?;
        let rel_bufs = match rel {
            Some(r) => Some((self.upload_f32(r.rh.data())?, self.upload_f32(r.rw.data())?)),
            None => None,
        };
        let prm = DepthParams {
            qkv: self.dptr(&qd),
            out: self.dptr(&od),
            rh: rel_bufs.as_ref().map_or(0, |(a, _)| ptr(a, &self.stream)),
            rw: rel_bufs.as_ref().map_or(0, |(_, b)| ptr(b, &self.stream)),
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
        let f = self.function(&KernelConfig::depth_attn(st), "depth_attn_fwd")?;
        let lc = self.prepare(&f, &l)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&prm);
        // SAFETY: params describe live buffers of the checked extents.
        unsafe { b.launch(lc) }?;
        self.download(&od, &[n0, p, c])
    }

    /// The fused HyP-Adpt chain (spec 5.4): `x [B, T, r]`, generated `w [B, L, r, r]`,
    /// LayerNorm `gamma, beta [L, r]` → `[B, T, r]`, `d ← ReLU(LN_n(d · W[b, n]))` for each layer.
    pub fn hyp_chain(
        &self,
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<Tensor> {
        const OP: &str = "hyp_chain";
        x.expect_rank(OP, "x", 3)?;
        w.expect_rank(OP, "w", 4)?;
        let (b, t, r) = (x.dim(0), x.dim(1), x.dim(2));
        let layers = w.dim(1);
        w.expect_shape(OP, "w", &[b, layers, r, r])?;
        gamma.expect_shape(OP, "gamma", &[layers, r])?;
        beta.expect_shape(OP, "beta", &[layers, r])?;
        let l = geometry::hyp_chain(b, t, r, layers)?;
        if b == 0 || t == 0 {
            return Ok(x.clone());
        }
        let st = self.storage();
        let (xd, wd) = (self.upload(x, st)?, self.upload(w, st)?);
        let (gd, bd) = (self.upload_f32(gamma.data())?, self.upload_f32(beta.data())?);
        let yd = self.alloc(x.numel(), st)?;
        let prm = HypParams {
            x: self.dptr(&xd),
            w: self.dptr(&wd),
            gamma: ptr(&gd, &self.stream),
            beta: ptr(&bd, &self.stream),
            y: self.dptr(&yd),
            b: i32_of(OP, b)?,
            t: i32_of(OP, t)?,
            eps,
        };
        let f = self.function(&KernelConfig::hyp_chain(st, r, layers), "hyp_chain_fwd")?;
        let lc = self.prepare(&f, &l)?;
        let mut lb = self.stream.launch_builder(&f);
        lb.arg(&prm);
        // SAFETY: params describe live buffers of the checked extents.
        unsafe { lb.launch(lc) }?;
        self.download(&yd, x.shape())
    }

    // ---- GEMMs -----------------------------------------------------------------------------

    /// Row-major batched `C[b] = op(A[b]) · op(B[b])` through cuBLAS (column-major trick:
    /// computes `Cᵀ = op(B)ᵀ op(A)ᵀ`). `a_t` / `b_t`: whether A / B are stored transposed
    /// (`A` as `[K, M]`, `B` as `[N, K]`). Strides 0 broadcast an operand.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        a: &Tensor,
        b: &Tensor,
        batch: usize,
        m: usize,
        n: usize,
        k: usize,
        a_t: bool,
        b_t: bool,
        sa: usize,
        sb: usize,
    ) -> Result<DBuf> {
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        const OP: &str = "gemm";
        let (mi, ni, ki) = (i32_of(OP, m)?, i32_of(OP, n)?, i32_of(OP, k)?);
        // In column-major terms: C^T [n, m] = B' [n, k] * A' [k, m].
        let transa = if b_t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let transb = if a_t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let lda = if b_t { ki } else { ni };
        let ldb = if a_t { mi } else { ki };
        let st = self.storage();
        let (ad, bd) = (self.upload(a, st)?, self.upload(b, st)?);
        let mut cd = self.alloc(batch * m * n, st)?;
        let bc = i32_of(OP, batch)?;
        macro_rules! run {
            ($A:expr, $B:expr, $C:expr, $one:expr, $zero:expr) => {{
                let cfg = StridedBatchedConfig {
                    gemm: GemmConfig {
                        transa,
                        transb,
                        m: ni,
                        n: mi,
                        k: ki,
                        alpha: $one,
                        lda,
                        ldb,
                        beta: $zero,
                        ldc: ni,
                    },
                    batch_size: bc,
                    stride_a: sb as i64,
                    stride_b: sa as i64,
                    stride_c: (m * n) as i64,
                };
                // SAFETY: the strides and leading dimensions describe the uploaded buffers.
                unsafe { self.blas.gemm_strided_batched(cfg, $B, $A, $C) }?;
            }};
        }
        match (&ad, &bd, &mut cd) {
            (DBuf::F32(a), DBuf::F32(b), DBuf::F32(c)) => run!(a, b, c, 1.0f32, 0.0f32),
            (DBuf::Bf16(a), DBuf::Bf16(b), DBuf::Bf16(c)) => run!(a, b, c, bf16::ONE, bf16::ZERO),
            _ => return Err(KernelError::unsupported(OP, "mixed storage")),
        }
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
            let yd = self.gemm(x, w, 1, m, out_f, in_f, false, true, 0, 0)?;
            if let Some(b) = b {
                let f = self.function(&self.ew(), "add_bias_rows")?;
                let bd = self.upload_f32(b.data())?;
                let (yp, bp) = (self.dptr(&yd), ptr(&bd, &self.stream));
                let (rows, n) = (m as i64, i32_of(OP, out_f)?);
                let cfg = self.prepare(&f, &geometry::elementwise(m * out_f))?;
                let mut l = self.stream.launch_builder(&f);
                l.arg(&yp).arg(&bp).arg(&rows).arg(&n);
                // SAFETY: y holds rows*n elements, b holds n.
                unsafe { l.launch(cfg) }?;
                self.download(&yd, &shape)
            } else {
                self.download(&yd, &shape)
            }
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
        backend_err(self.gemm(a, b, 1, m, n, k, false, false, 0, 0).and_then(|c| self.download(&c, &[m, n])))
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
            self.gemm(a, b, bs, m, n, k, false, false, m * k, k * n)
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
            let f = self.function(&self.ew(), "layer_norm_2d")?;
            let xd = self.upload(x, self.storage())?;
            let yd = self.alloc(x.numel(), self.storage())?;
            let (wdv, bdv) = (self.upload_f32(w.data())?, self.upload_f32(b.data())?);
            let (xp, yp, wp, bp) =
                (self.dptr(&xd), self.dptr(&yd), ptr(&wdv, &self.stream), ptr(&bdv, &self.stream));
            let (bi, ci, hw) = (i32_of(OP, bs)?, i32_of(OP, c)?, (h * wd) as i64);
            let cfg = self.prepare(&f, &geometry::elementwise(bs * h * wd))?;
            let mut l = self.stream.launch_builder(&f);
            l.arg(&xp).arg(&wp).arg(&bp).arg(&yp).arg(&bi).arg(&ci).arg(&hw).arg(&eps);
            // SAFETY: x, y hold b*c*h*w elements; w, b hold c.
            unsafe { l.launch(cfg) }?;
            self.download(&yd, x.shape())
        })())
    }

    fn gelu(&self, x: Tensor) -> medsa_core::Result<Tensor> {
        if x.numel() == 0 {
            return Ok(x);
        }
        backend_err(self.unary("gelu_erf", &x))
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
            let f = self.function(&self.ew(), "softmax_last")?;
            let xd = self.upload(&x, self.storage())?;
            let yd = self.alloc(x.numel(), self.storage())?;
            let (xp, yp) = (self.dptr(&xd), self.dptr(&yd));
            let (ri, ci) = (rows as i64, i32_of("softmax", cols)?);
            let cfg = self.prepare(&f, &geometry::rows(rows)?)?;
            let mut l = self.stream.launch_builder(&f);
            l.arg(&xp).arg(&yp).arg(&ri).arg(&ci);
            // SAFETY: x, y hold rows*cols elements.
            unsafe { l.launch(cfg) }?;
            self.download(&yd, x.shape())
        })())
    }

    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, geom: Conv2d) -> medsa_core::Result<Tensor> {
        self.cpu.conv2d(x, w, b, geom)
    }

    fn conv_transpose2x2(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> medsa_core::Result<Tensor> {
        self.cpu.conv_transpose2x2(x, w, b)
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
        self.cpu.rel_pos_table(qs, ks, table)
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
        Ok(Cuda::hyp_chain(self, x, w, gamma, beta, eps)?)
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
            let f = self.function(&self.ew(), entry)?;
            let xd = self.upload(x, self.storage())?;
            let yd = self.alloc(n, self.storage())?;
            let (xp, yp) = (self.dptr(&xd), self.dptr(&yd));
            let a: Vec<i32> =
                [b * c, h, w, out.0, out.1].iter().map(|&v| i32_of(OP, v)).collect::<Result<_>>()?;
            let cfg = self.prepare(&f, &geometry::elementwise(n))?;
            let mut l = self.stream.launch_builder(&f);
            l.arg(&xp).arg(&yp);
            for v in &a {
                l.arg(v);
            }
            // SAFETY: x holds planes*h*w, y planes*oh*ow elements.
            unsafe { l.launch(cfg) }?;
            self.download(&yd, &shape)
        })())
    }

    fn pe_encode(&self, coords: &Tensor, gaussian: &Tensor) -> medsa_core::Result<Tensor> {
        self.cpu.pe_encode(coords, gaussian)
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
