//! The CUDA backend's core: the [`Cuda`] struct, [`Precision`], device buffers ([`DBuf`]),
//! construction, transfers, and `Cuda::run_op`, the one upload / allocate / launch / download
//! path of the ops.
//!
//! The CUDA implementation of [`medsa_core::Backend`] is written against the device seam
//! ([`crate::device::Device`]): the same host code drives a GPU ([`Driver`]) or the CPU emulator
//! ([`Emulator`]), so launch geometry, parameter packing, strides and buffer sizes run in CI.
//! Tensors stay on the device between ops: an op's result is a device tensor ([`Resident`],
//! through [`medsa_core::resident`]); an operand already resident on this device is used where
//! it is, a host operand is uploaded (and counted: [`Cuda::transfers`]). Moving data is
//! explicit: `Backend::upload` places weights and images, `Backend::download` brings a result
//! back. [`Precision::Bf16`] stores activations as bf16 on the device and runs the tensor-core
//! attention and bf16 GEMMs (f32 accumulation); [`Precision::F32`] is the parity mode (f32
//! storage, CUDA-core attention, f32 GEMMs).
//!
//! One file per Backend op family, each named after the ops it implements (and the `.cu` file it
//! launches): [`attention`], [`depth_attention`], [`hyper_chain`], [`gemm`] (linear, matmul, bmm),
//! [`conv`] (conv2d, conv_transpose2x2), [`position`] (rel_pos_table, pe_encode),
//! [`elementwise`] (norms, activations, softmax, window partition, resize); [`backend`] holds
//! `impl Backend for Cuda`, which delegates to them. Every forward op of the trait runs on the
//! device (attention wider than 256 per head, which no model here has, falls back to
//! `medsa_ref::Cpu`); the backward ops of training are delegated to `medsa_ref::Cpu` for now.

pub mod attention;
pub mod backend;
pub mod conv;
pub mod depth_attention;
pub mod elementwise;
pub mod gemm;
pub mod hyper_chain;
pub mod position;

pub use attention::{AttentionKernel, AttnLayout, AttnShape, Strides};

use crate::device::{Buffer, Device, DeviceKind, KernelArgs};
use crate::driver::Driver;
use crate::emulator::{EmuOptions, Emulator};
use crate::error::{KernelError, Result};
use crate::geometry::Launch;
use crate::source::{KernelConfig, Storage};
use half::bf16;
use medsa_core::resident::DeviceData;
use medsa_core::Tensor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

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

/// The CUDA backend.
pub struct Cuda {
    dev: Arc<dyn Device>,
    precision: Precision,
    cpu: medsa_ref::Cpu,
    transfers: Arc<Transfers>,
}

/// Host↔device copies of tensor data a [`Cuda`] backend has made (uploads of host operands and
/// of `Backend::upload`, downloads of results), shared with its resident tensors.
#[derive(Debug, Default)]
pub struct Transfers {
    uploads: AtomicUsize,
    downloads: AtomicUsize,
}

/// A snapshot of [`Transfers`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferCount {
    /// Host → device copies.
    pub uploads: usize,
    /// Device → host copies.
    pub downloads: usize,
}

/// A tensor's buffer on a [`Cuda`] device: the elements in the storage they were made in, and
/// (made on first need, by a cast kernel on the device) the same elements in the other storage,
/// so that a bf16 activation can feed an f32 operand slot and an f32 weight a bf16 one.
#[derive(Debug)]
pub struct Resident {
    dev: Arc<dyn Device>,
    buf: DBuf,
    other: OnceLock<DBuf>,
    transfers: Arc<Transfers>,
}

impl DeviceData for Resident {
    fn len(&self) -> usize {
        self.buf.len
    }
    fn read(&self, n: usize) -> std::result::Result<Vec<f32>, String> {
        self.transfers.downloads.fetch_add(1, Ordering::Relaxed);
        read_buf(self.dev.as_ref(), &self.buf, n).map_err(|e| e.to_string())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The first `n` elements of `b` as f32 (one copy to the host).
fn read_buf(dev: &dyn Device, b: &DBuf, n: usize) -> Result<Vec<f32>> {
    if n > b.len {
        return Err(KernelError::unsupported("download", format!("{n} elements from {}", b.len)));
    }
    Ok(match b.storage {
        Storage::F32 => {
            let mut v = vec![0f32; n];
            dev.copy_out(&b.buf, bytemuck::cast_slice_mut(&mut v))?;
            v
        }
        Storage::Bf16 => {
            let mut v = vec![bf16::ZERO; n];
            dev.copy_out(&b.buf, bytemuck::cast_slice_mut(&mut v))?;
            v.into_iter().map(f32::from).collect()
        }
    })
}

/// An operand's device buffer for one op: resident (borrowed from its tensor) or uploaded for
/// this op.
pub(crate) enum Held<'a> {
    /// Already on this device.
    Resident(&'a DBuf),
    /// Uploaded from the host.
    Uploaded(DBuf),
}

impl Held<'_> {
    /// The buffer.
    pub(crate) fn buf(&self) -> &DBuf {
        match self {
            Held::Resident(b) => b,
            Held::Uploaded(b) => b,
        }
    }
    /// Its device address.
    pub(crate) fn addr(&self) -> u64 {
        self.buf().addr()
    }
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

/// One operand of [`Cuda::run_op`]: a host tensor and the storage it is uploaded in.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Operand<'a> {
    /// Uploaded in the backend's storage (activations, weights).
    Stored(&'a Tensor),
    /// Uploaded as f32 in either precision (norm parameters, biases, rel tables, coordinates).
    F32(&'a Tensor),
    /// No tensor: the kernel sees a null address (an optional operand such as an absent bias).
    Absent,
}

/// The output buffer of [`Cuda::run_op`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output<'a> {
    /// Elements allocated (zeroed).
    pub len: usize,
    /// Their storage.
    pub storage: Storage,
    /// Shape of the downloaded tensor (the buffer's first `numel(shape)` elements).
    pub shape: &'a [usize],
}

/// The argument list of [`Cuda::run_op`]'s launch.
pub(crate) enum Args<'a> {
    /// The operand addresses in order, the output address, then these (scalar) arguments.
    Flat(KernelArgs),
    /// One `#[repr(C)]` parameter struct, built from the operand addresses (0 for
    /// [`Operand::Absent`]) and the output address.
    Packed(&'a dyn Fn(&[u64], u64) -> Result<KernelArgs>),
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
        Cuda { dev, precision, cpu: medsa_ref::Cpu, transfers: Arc::default() }
    }

    /// The host↔device copies of tensor data made so far (by this backend and by reads of its
    /// resident tensors).
    pub fn transfers(&self) -> TransferCount {
        TransferCount {
            uploads: self.transfers.uploads.load(Ordering::Relaxed),
            downloads: self.transfers.downloads.load(Ordering::Relaxed),
        }
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

    /// An [`Output`] of `len` elements in this backend's storage, downloaded as `shape`.
    fn stored_output<'a>(&self, len: usize, shape: &'a [usize]) -> Output<'a> {
        Output { len, storage: self.storage(), shape }
    }

    // ---- transfers -------------------------------------------------------------------------

    /// Uploads `t` in `storage`.
    pub fn upload(&self, t: &Tensor, storage: Storage) -> Result<DBuf> {
        self.upload_slice(t.data(), storage)
    }

    /// Uploads f32 data in `storage`.
    pub fn upload_slice(&self, data: &[f32], storage: Storage) -> Result<DBuf> {
        let b = self.alloc(data.len(), storage)?;
        self.transfers.uploads.fetch_add(1, Ordering::Relaxed);
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
        self.transfers.downloads.fetch_add(1, Ordering::Relaxed);
        Ok(Tensor::new(shape.to_vec(), read_buf(self.dev.as_ref(), b, n)?)?)
    }

    // ---- resident tensors ------------------------------------------------------------------

    /// `b` as a device tensor of `shape` (its first `numel(shape)` elements), no copy.
    pub fn resident(&self, b: DBuf, shape: &[usize]) -> Result<Tensor> {
        let r = Resident {
            dev: self.dev.clone(),
            buf: b,
            other: OnceLock::new(),
            transfers: self.transfers.clone(),
        };
        Ok(Tensor::on_device(shape.to_vec(), Arc::new(r))?)
    }

    /// `t`'s buffer when it is resident on this backend's device.
    fn resident_of<'t>(&self, t: &'t Tensor) -> Option<&'t Resident> {
        let r = t.device_data()?.as_any().downcast_ref::<Resident>()?;
        std::ptr::addr_eq(Arc::as_ptr(&r.dev), Arc::as_ptr(&self.dev)).then_some(r)
    }

    /// `t` on the device in `storage`: where it is when it is resident here (cast on the device,
    /// once, when it is resident in the other storage), else uploaded for this op.
    pub(crate) fn operand<'t>(&self, t: &'t Tensor, storage: Storage) -> Result<Held<'t>> {
        let Some(r) = self.resident_of(t) else {
            return Ok(Held::Uploaded(self.upload_slice(t.data(), storage)?));
        };
        if r.buf.storage == storage {
            return Ok(Held::Resident(&r.buf));
        }
        if r.other.get().is_none() {
            let cast = self.cast(&r.buf, storage)?;
            // Another thread may have cast it first: either copy is the same.
            let _ = r.other.set(cast);
        }
        match r.other.get() {
            Some(b) => Ok(Held::Resident(b)),
            None => Err(KernelError::unsupported("operand", "cast buffer vanished".to_string())),
        }
    }

    /// `src` converted to `storage` on the device (`cast_f32_to_elem` / `cast_elem_to_f32`).
    fn cast(&self, src: &DBuf, storage: Storage) -> Result<DBuf> {
        let y = self.alloc(src.len, storage)?;
        let entry = match storage {
            Storage::Bf16 => "cast_f32_to_elem",
            Storage::F32 => "cast_elem_to_f32",
        };
        let mut a = KernelArgs::new();
        a.push(&src.addr()).push(&y.addr()).push(&i64_of(src.len));
        let cfg = KernelConfig::elementwise(Storage::Bf16);
        self.launch(&cfg, entry, &crate::geometry::elementwise(src.len.max(1)), &a)?;
        Ok(y)
    }

    /// `t` resident on this device, the way `Backend::upload` places it: f32, so that weights
    /// and images keep their exact values; ops wanting bf16 get a cast copy made once.
    pub fn place(&self, t: &Tensor) -> Result<Tensor> {
        if self.resident_of(t).is_some() {
            return Ok(t.clone());
        }
        let b = self.upload_slice(t.data(), Storage::F32)?;
        self.resident(b, t.shape())
    }

    // ---- launches --------------------------------------------------------------------------

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

    /// One op on the device: uploads `operands`, allocates `out`, launches `entry` of `cfg` with
    /// geometry `l` and the argument list `args` (operand addresses, output address, then the
    /// extra arguments; or one parameter struct), and returns the output, resident.
    pub(crate) fn run_op(
        &self,
        cfg: &KernelConfig,
        entry: &str,
        l: &Launch,
        operands: &[Operand<'_>],
        out: Output<'_>,
        args: Args<'_>,
    ) -> Result<Tensor> {
        let st = self.storage();
        let bufs = operands
            .iter()
            .map(|o| match *o {
                Operand::Stored(t) => self.operand(t, st).map(Some),
                Operand::F32(t) => self.operand(t, Storage::F32).map(Some),
                Operand::Absent => Ok(None),
            })
            .collect::<Result<Vec<Option<Held<'_>>>>>()?;
        let addrs: Vec<u64> = bufs.iter().map(|b| b.as_ref().map_or(0, Held::addr)).collect();
        let y = self.alloc(out.len, out.storage)?;
        let a = match args {
            Args::Flat(extra) => {
                let mut a = KernelArgs::new();
                for addr in &addrs {
                    a.push(addr);
                }
                a.push(&y.addr()).append(&extra);
                a
            }
            Args::Packed(build) => build(&addrs, y.addr())?,
        };
        self.launch(cfg, entry, l, &a)?;
        self.resident(y, out.shape)
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
}
