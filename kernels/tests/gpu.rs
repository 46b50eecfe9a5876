//! GPU-vs-CPU tests, gated on the driver: without one they print "skipped: no CUDA driver".
#![allow(clippy::unwrap_used)]

use medsa_kernels::check::run_suite;
use medsa_kernels::{driver_available, Cuda, KernelError, Precision};

#[test]
fn cuda_new_reports_a_typed_error_without_a_driver() {
    if driver_available() {
        eprintln!("skipped: a CUDA driver is present");
        return;
    }
    assert!(matches!(Cuda::new(0, Precision::F32), Err(KernelError::NoDriver)));
}

#[test]
fn every_cuda_op_matches_the_reference() {
    if !driver_available() {
        eprintln!("skipped: no CUDA driver");
        return;
    }
    let mut failures = Vec::new();
    for p in [Precision::F32, Precision::Bf16] {
        let cuda = Cuda::new(0, p).unwrap();
        for r in run_suite(&cuda, 0x5eed) {
            if !r.pass {
                failures.push(format!(
                    "{:?} {} {}: abs {} rel {} {:?}",
                    r.precision, r.op, r.shape, r.max_abs, r.rel, r.error
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
