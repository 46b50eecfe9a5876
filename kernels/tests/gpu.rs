//! The same checks on a real GPU. Without a CUDA driver the GPU tests are reported as ignored
//! (`cargo test -- --ignored` runs them on a GPU machine); the emulated runs are in
//! `tests/emulator.rs`.
#![allow(clippy::unwrap_used)]

use medsa_kernels::check::run_suite;
use medsa_kernels::probe::run_probes;
use medsa_kernels::{driver_available, Cuda, KernelError, Precision};

#[test]
fn cuda_new_reports_a_typed_error_without_a_driver() {
    if driver_available() {
        // With a driver, Cuda::new either opens a device or reports one of the typed errors.
        match Cuda::new(0, Precision::F32) {
            Ok(_) | Err(KernelError::NoDevice(_) | KernelError::NoNvrtc | KernelError::NoCublas) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
        return;
    }
    assert!(matches!(Cuda::new(0, Precision::F32), Err(KernelError::NoDriver)));
}

#[test]
#[ignore = "needs a CUDA GPU (run with --ignored on a GPU machine)"]
fn every_cuda_op_and_probe_matches_on_the_gpu() {
    let mut failures = Vec::new();
    for p in [Precision::F32, Precision::Bf16] {
        let cuda = Cuda::new(0, p).unwrap();
        let mut rows = run_suite(&cuda, 0x5eed);
        if p == Precision::F32 {
            rows.extend(run_probes(cuda.device().as_ref(), 7));
        }
        for r in rows.into_iter().filter(|r| !r.pass) {
            failures.push(format!(
                "{:?} {} {}: abs {} rel {} {:?}",
                r.precision, r.op, r.shape, r.max_abs, r.rel, r.error
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
