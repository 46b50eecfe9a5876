//! Opening a GPU: typed errors, never a panic. (The op checks run on the emulator, and on the
//! GPU as well when there is one, in `tests/emulator.rs`.)
#![allow(clippy::unwrap_used)]

use medsa_kernels::{driver_available, Cuda, KernelError, Precision};

#[test]
fn cuda_new_reports_a_typed_error_or_opens_a_device() {
    match Cuda::new(0, Precision::F32) {
        Ok(c) => assert!(driver_available(), "{}", c.device_name()),
        Err(KernelError::NoDriver) => assert!(!driver_available()),
        Err(KernelError::NoDevice(_) | KernelError::NoNvrtc | KernelError::NoCublas) => {
            assert!(driver_available())
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}
