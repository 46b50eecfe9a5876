//! The CUDA kernels on the CPU emulator: the prelude primitives against the ISA's layout tables,
//! every CUDA backend op against `medsa-ref` in every thread order, and mutations of the kernels
//! that the emulator must catch. Results here are emulated, never a GPU pass.
#![allow(clippy::unwrap_used)]

use medsa_kernels::check::{run_suite, CheckRow};
use medsa_kernels::emulator::{EmuOptions, Emulator, SourcePatch, ThreadOrder};
use medsa_kernels::probe::run_probes;
use medsa_kernels::{Cuda, KernelError, Precision};

const ORDERS: [ThreadOrder; 4] =
    [ThreadOrder::Forward, ThreadOrder::Reverse, ThreadOrder::Shuffled(0x5eed), ThreadOrder::Concurrent];

fn emulator(order: ThreadOrder, patches: &[(&str, &str)]) -> Emulator {
    let patches =
        patches.iter().map(|(f, r)| SourcePatch { find: f.to_string(), replace: r.to_string() }).collect();
    Emulator::new(EmuOptions { order, workers: 0, patches }).unwrap()
}

fn failures(rows: &[CheckRow]) -> Vec<String> {
    rows.iter()
        .filter(|r| !r.pass)
        .map(|r| {
            format!("{:?} {} {}: abs {} rel {} {:?}", r.precision, r.op, r.shape, r.max_abs, r.rel, r.error)
        })
        .collect()
}

#[test]
fn probes_match_the_isa_layouts_in_every_thread_order() {
    for order in ORDERS {
        let rows = run_probes(&emulator(order, &[]), 7);
        assert_eq!(rows.len(), 7);
        let f = failures(&rows);
        assert!(f.is_empty(), "{order:?}: {}", f.join("\n"));
    }
}

/// Every CUDA op on the emulator in several thread orders (reported as emulated), and on the GPU
/// too when the machine has a driver; every entry point of every `.cu` file must have run.
#[test]
fn every_cuda_op_matches_the_reference() {
    let mut launched = std::collections::BTreeSet::new();
    for (order, p) in [
        (ThreadOrder::Forward, Precision::F32),
        (ThreadOrder::Forward, Precision::Bf16),
        (ThreadOrder::Reverse, Precision::Bf16),
        (ThreadOrder::Shuffled(0x5eed), Precision::F32),
    ] {
        let emu = std::sync::Arc::new(emulator(order, &[]));
        let cuda = Cuda::on(emu.clone(), p);
        let mut rows = run_suite(&cuda, 0x5eed);
        rows.extend(run_probes(emu.as_ref(), 3));
        let f = failures(&rows);
        eprintln!("emulated, {order:?} {p:?}: {} checks, {} failed", rows.len(), f.len());
        assert!(f.is_empty(), "emulated, {order:?} {p:?}:\n{}", f.join("\n"));
        launched.extend(emu.launched());
    }
    for src in medsa_kernels::source::Source::ALL {
        for e in src.entries() {
            assert!(
                launched.contains(&(src.file_name(), e.to_string())),
                "{} {e} never ran",
                src.file_name()
            );
        }
    }
    if medsa_kernels::driver_available() {
        for p in [Precision::F32, Precision::Bf16] {
            let cuda = Cuda::new(0, p).unwrap();
            let mut rows = run_suite(&cuda, 0x5eed);
            rows.extend(run_probes(cuda.device().as_ref(), 3));
            let f = failures(&rows);
            eprintln!("gpu {}, {p:?}: {} checks, {} failed", cuda.device_name(), rows.len(), f.len());
            assert!(f.is_empty(), "gpu {p:?}:\n{}", f.join("\n"));
        }
    }
}

/// Rows of `check` that a mutation must make fail (at least one).
fn must_fail(what: &str, rows: &[CheckRow]) {
    let f = failures(rows);
    assert!(!f.is_empty(), "the mutation ({what}) was not caught: all {} rows pass", rows.len());
    eprintln!("{what}: caught by {} of {} rows, e.g. {}", f.len(), rows.len(), f[0]);
}

fn tc_rows(order: ThreadOrder, patch: (&str, &str)) -> Vec<CheckRow> {
    let dev = std::sync::Arc::new(emulator(order, &[patch]));
    medsa_kernels::check::tc_kernel_rows(&Cuda::on(dev, Precision::Bf16), 3, false)
}

#[test]
fn tensor_core_kernels_match_with_real_concurrent_threads() {
    let dev = std::sync::Arc::new(emulator(ThreadOrder::Concurrent, &[]));
    let rows = medsa_kernels::check::tc_kernel_rows(&Cuda::on(dev, Precision::Bf16), 5, true);
    assert_eq!(rows.len(), 2);
    let f = failures(&rows);
    assert!(f.is_empty(), "concurrent:\n{}", f.join("\n"));
}

#[test]
fn mutation_wrong_fragment_index_is_caught() {
    // P's A fragment for P V: register 1 takes rows g + 8 of the first n8 tile; give it the
    // second tile's rows g instead.
    let patch = (
        "a[mt][1] = pack_bf16x2(s[mt][2 * kk][2], s[mt][2 * kk][3]);",
        "a[mt][1] = pack_bf16x2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);",
    );
    must_fail("wrong fragment index", &tc_rows(ThreadOrder::Forward, patch));
}

#[test]
fn mutation_removed_syncthreads_is_caught() {
    // attention_flash_fwd's barrier that publishes each K / V tile (and Q) to every warp.
    let patch = ("        __syncthreads();  // tile j visible", "        // (barrier removed)");
    for order in [ThreadOrder::Forward, ThreadOrder::Reverse] {
        let rows = tc_rows(order, patch);
        let flash: Vec<CheckRow> = rows.into_iter().filter(|r| r.op == "attention_flash_fwd").collect();
        must_fail(&format!("removed __syncthreads, {order:?}"), &flash);
    }
    let dev =
        emulator(ThreadOrder::Forward, &[("    s[t] = x[t];\n    __syncthreads();", "    s[t] = x[t];")]);
    let rows = run_probes(&dev, 7);
    must_fail("removed __syncthreads in probe_barrier", &rows);
}

#[test]
fn mutation_second_m_tile_reusing_the_first_rows_is_caught() {
    // Each warp's second m16 tile: its query fragments loaded from the first tile's rows.
    let patch = ("base + (mt * 16 * LDS + ks * 16) * 2);", "base + (0 * 16 * LDS + ks * 16) * 2);");
    must_fail("second m16 tile reads the first tile's rows", &tc_rows(ThreadOrder::Forward, patch));
}

#[test]
fn mutation_removed_q_fragment_barrier_is_caught() {
    // attention_flash_fwd stages Q over the second K / V buffer: without the barrier after the
    // Q fragments are loaded, the first warp's prefetch of tile 1 overwrites the others' Q rows.
    let patch = (
        "            __syncthreads();  // every warp holds its Q fragments",
        "            // (barrier removed)",
    );
    let rows: Vec<CheckRow> =
        tc_rows(ThreadOrder::Forward, patch).into_iter().filter(|r| r.op == "attention_flash_fwd").collect();
    must_fail("removed Q-fragment barrier", &rows);
}

#[test]
fn mutation_incremental_key_split_is_caught() {
    // The bias's (ki, kj) key split stepped by 8 instead of 7 between n8 tiles.
    let patch = ("kj += e == 0 ? 1 : 7;", "kj += e == 0 ? 1 : 8;");
    must_fail("wrong incremental key split", &tc_rows(ThreadOrder::Forward, patch));
}

#[test]
fn mutation_off_by_one_tile_bound_is_caught() {
    // The last, partial K / V tile of attention_flash_fwd dropped.
    let patch = ("const int ntiles = (nk + BLOCK_N - 1) / BLOCK_N;", "const int ntiles = nk / BLOCK_N;");
    let rows: Vec<CheckRow> =
        tc_rows(ThreadOrder::Forward, patch).into_iter().filter(|r| r.op == "attention_flash_fwd").collect();
    must_fail("off-by-one tile bound", &rows);
}

#[test]
fn divergent_collective_is_a_launch_error() {
    let dev = emulator(
        ThreadOrder::Forward,
        &[(
            "    y[t] = __shfl_xor_sync(0xffffffffu",
            "    if (t < 16) __syncwarp();\n    y[t] = __shfl_xor_sync(0xffffffffu",
        )],
    );
    let e = medsa_kernels::probe::shfl_xor(&dev).unwrap_err();
    assert!(matches!(&e, KernelError::Launch { .. }) && e.to_string().contains("divergent"), "{e}");
}

#[test]
fn shared_memory_overrun_is_a_launch_error() {
    // probe_ldmatrix stages 1024 bytes of shared memory; launch it with 512.
    let dev = emulator(ThreadOrder::Forward, &[]);
    use medsa_kernels::device::{Device, KernelArgs};
    let (m, o) = (dev.alloc(512).unwrap(), dev.alloc(512).unwrap());
    let mut a = KernelArgs::new();
    a.push(&m.addr()).push(&o.addr()).push(&0i32);
    let l = medsa_kernels::geometry::Launch { grid: (1, 1, 1), block: (32, 1, 1), smem: 512 };
    let e = dev.launch(&medsa_kernels::source::KernelConfig::probe(), "probe_ldmatrix", &l, &a).unwrap_err();
    assert!(e.to_string().contains("dynamic shared memory"), "{e}");
}

#[test]
fn a_wrong_argument_list_is_a_launch_error() {
    let dev = emulator(ThreadOrder::Forward, &[]);
    use medsa_kernels::device::{Device, KernelArgs};
    let mut a = KernelArgs::new();
    a.push(&0u64).push(&0u64).push(&1i64); // probe_shfl_xor takes (float*, float*, int)
    let l = medsa_kernels::geometry::Launch { grid: (1, 1, 1), block: (32, 1, 1), smem: 0 };
    let e = dev.launch(&medsa_kernels::source::KernelConfig::probe(), "probe_shfl_xor", &l, &a).unwrap_err();
    assert!(e.to_string().contains("argument 2 is 8 bytes, the kernel takes 4"), "{e}");
}
