//! `--device` / `--precision`: where a command runs its model.

use anyhow::{Context, Result};
use medsa_core::Backend;
use medsa_kernels::{Cuda, EmuOptions, Precision};

/// A device named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU reference backend.
    Cpu,
    /// CUDA GPU N.
    Cuda(usize),
    /// The CUDA backend on the CPU emulator of the device.
    CudaEmulator,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            "cuda-emulator" => Ok(DeviceChoice::CudaEmulator),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("`{s}`: want cpu, cuda, cuda:N or cuda-emulator")),
            },
        }
    }
}

/// CUDA storage precision.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionArg {
    /// bf16 storage, tensor-core attention, f32 accumulation: the fast path.
    Bf16,
    /// f32 storage throughout: matches the CPU reference to 1e-4.
    F32,
}

/// The device options shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where the model runs: `cpu` (the reference backend), `cuda` / `cuda:N` (GPU N, every
    /// forward op through the hand-written CUDA kernels), or `cuda-emulator` (the same CUDA host
    /// code and kernel sources run on the CPU emulator: slow, for checking the CUDA path on a
    /// machine without a GPU; its results are emulated, not a GPU's).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceChoice,
    /// Storage precision on CUDA (ignored on the CPU).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Bf16)]
    pub precision: PrecisionArg,
}

impl Default for DeviceArgs {
    fn default() -> Self {
        DeviceArgs { device: DeviceChoice::Cpu, precision: PrecisionArg::Bf16 }
    }
}

impl DeviceArgs {
    /// Opens the backend; a clear error when the machine has no GPU or no CUDA library.
    pub fn open(&self) -> Result<Box<dyn Backend>> {
        let p = match self.precision {
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::F32 => Precision::F32,
        };
        Ok(match self.device {
            DeviceChoice::Cpu => Box::new(medsa_ref::Cpu),
            DeviceChoice::Cuda(n) => Box::new(
                Cuda::new(n, p)
                    .with_context(|| format!("--device cuda:{n}: cannot use the GPU (try --device cpu)"))?,
            ),
            DeviceChoice::CudaEmulator => Box::new(
                Cuda::emulated(p, EmuOptions::default())
                    .context("--device cuda-emulator needs a host C++ compiler ($CXX, default c++)")?,
            ),
        })
    }

    /// A one-line description for reports, e.g. `CPU reference backend`.
    pub fn describe(&self, be: &dyn Backend) -> String {
        match self.device {
            DeviceChoice::Cpu => "CPU reference backend".into(),
            DeviceChoice::Cuda(n) => format!("CUDA backend on GPU {n} ({:?}, {})", self.precision, be.name()),
            DeviceChoice::CudaEmulator => {
                format!("CUDA backend on the CPU emulator ({:?}; emulated, not a GPU result)", self.precision)
            }
        }
    }
}
