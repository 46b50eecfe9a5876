//! Checks of the prelude primitives through the kernels of `probe.cu`, on any [`Device`]: on the
//! emulator they test its warp-level helpers against the PTX ISA's fragment layouts (written out
//! again here, independently of the emulator's C++), on a GPU they confirm that the hardware and
//! the emulator agree.
//!
//! Layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" and "ldmatrix"), with lane `t`,
//! `g = t / 4`, `q = t % 4`:
//! - A (16 x 16 bf16, row-major), register `i` holds `(g + 8 (i % 2), 2q + 8 (i / 2) + {0, 1})`;
//! - B (16 x 8, column-major), register `i` holds `(2q + 8 i + {0, 1}, g)`;
//! - C / D (16 x 8 f32), element `e` is `(g + 8 (e / 2), 2q + e % 2)`;
//! - `ldmatrix.x4`: matrix `i`'s row `r` address comes from lane `8 i + r`; lane `t`'s register
//!   `i` holds row `t / 4`, columns `2q, 2q + 1` (`.trans`: column `t / 4`, rows `2q, 2q + 1`).

use crate::check::CheckRow;
use crate::cuda::Precision;
use crate::device::{Device, KernelArgs};
use crate::error::Result;
use crate::geometry::Launch;
use crate::source::KernelConfig;
use half::bf16;
use medsa_testkit::Rng;

fn warp_launch(smem: u32) -> Launch {
    Launch { grid: (1, 1, 1), block: (32, 1, 1), smem }
}

fn upload<T: bytemuck::NoUninit>(dev: &dyn Device, v: &[T]) -> Result<crate::device::Buffer> {
    let b = dev.alloc(std::mem::size_of_val(v))?;
    dev.copy_in(&b, bytemuck::cast_slice(v))?;
    Ok(b)
}

fn download<T: bytemuck::Pod + Default + Clone>(
    dev: &dyn Device,
    b: &crate::device::Buffer,
    n: usize,
) -> Result<Vec<T>> {
    let mut v = vec![T::default(); n];
    dev.copy_out(b, bytemuck::cast_slice_mut(&mut v))?;
    Ok(v)
}

fn pack(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// `(max abs error, number of mismatches)` of one probe as a check row.
fn verdict(op: &str, shape: &str, r: Result<(f32, usize)>) -> CheckRow {
    match r {
        Ok((err, bad)) => CheckRow {
            op: op.into(),
            shape: format!("{shape}{}", if bad > 0 { format!(" ({bad} wrong)") } else { String::new() }),
            precision: Precision::F32,
            max_abs: err,
            rel: err,
            pass: bad == 0,
            error: None,
        },
        Err(e) => CheckRow::failed(op, shape.into(), Precision::F32, e),
    }
}

/// One `mma_bf16_16816` with every lane's fragments built from the layout table.
pub fn mma(dev: &dyn Device, rng: &mut Rng) -> Result<(f32, usize)> {
    let bf = |x: f32| bf16::from_f32(x);
    let a: Vec<bf16> = (0..16 * 16).map(|_| bf(rng.uniform())).collect();
    let b: Vec<bf16> = (0..16 * 8).map(|_| bf(rng.uniform())).collect();
    let c: Vec<f32> = (0..16 * 8).map(|_| rng.uniform()).collect();
    let (at, bt) = (|r: usize, k: usize| a[r * 16 + k], |k: usize, n: usize| b[k * 8 + n]);
    let (mut af, mut bfr, mut cf) = (vec![0u32; 128], vec![0u32; 64], vec![0f32; 128]);
    for t in 0..32 {
        let (g, q) = (t / 4, t % 4);
        for i in 0..4 {
            let (r, k) = (g + 8 * (i % 2), 2 * q + 8 * (i / 2));
            af[4 * t + i] = pack(at(r, k).to_bits(), at(r, k + 1).to_bits());
        }
        for i in 0..2 {
            let k = 2 * q + 8 * i;
            bfr[2 * t + i] = pack(bt(k, g).to_bits(), bt(k + 1, g).to_bits());
        }
        for e in 0..4 {
            cf[4 * t + e] = c[(g + 8 * (e / 2)) * 8 + 2 * q + e % 2];
        }
    }
    let (ad, bd, cd, dd) = (upload(dev, &af)?, upload(dev, &bfr)?, upload(dev, &cf)?, dev.alloc(128 * 4)?);
    let mut args = KernelArgs::new();
    args.push(&ad.addr()).push(&bd.addr()).push(&cd.addr()).push(&dd.addr());
    dev.launch(&KernelConfig::probe(), "probe_mma", &warp_launch(0), &args)?;
    let d: Vec<f32> = download(dev, &dd, 128)?;
    let (mut err, mut bad) = (0f32, 0);
    for t in 0..32 {
        let (g, q) = (t / 4, t % 4);
        for e in 0..4 {
            let (r, n) = (g + 8 * (e / 2), 2 * q + e % 2);
            let want: f64 = f64::from(c[r * 8 + n])
                + (0..16).map(|k| f64::from(at(r, k).to_f32()) * f64::from(bt(k, n).to_f32())).sum::<f64>();
            let diff = (f64::from(d[4 * t + e]) - want).abs() as f32;
            err = err.max(diff);
            bad += usize::from(diff.is_nan() || diff > 1e-5 * (1.0 + want.abs() as f32));
        }
    }
    Ok((err, bad))
}

/// `ldmatrix_x4` (`trans = false`) or `ldmatrix_x4_trans` on four 8 x 8 matrices of distinct codes.
pub fn ldmatrix(dev: &dyn Device, trans: bool) -> Result<(f32, usize)> {
    let code = |i: usize, r: usize, c: usize| (i * 64 + r * 8 + c) as u16 + 1;
    let m: Vec<u16> = (0..256).map(|e| code(e / 64, (e / 8) % 8, e % 8)).collect();
    let (md, od) = (upload(dev, &m)?, dev.alloc(128 * 4)?);
    let mut args = KernelArgs::new();
    args.push(&md.addr()).push(&od.addr()).push(&i32::from(trans));
    dev.launch(&KernelConfig::probe(), "probe_ldmatrix", &warp_launch(32 * 16 * 2), &args)?;
    let out: Vec<u32> = download(dev, &od, 128)?;
    let mut bad = 0;
    for t in 0..32 {
        let (g, q) = (t / 4, t % 4);
        for i in 0..4 {
            let want = if trans {
                pack(code(i, 2 * q, g), code(i, 2 * q + 1, g))
            } else {
                pack(code(i, g, 2 * q), code(i, g, 2 * q + 1))
            };
            bad += usize::from(out[4 * t + i] != want);
        }
    }
    Ok((0.0, bad))
}

/// `__shfl_xor_sync` for every lane mask 1, 2, 4, 8, 16.
pub fn shfl_xor(dev: &dyn Device) -> Result<(f32, usize)> {
    let x: Vec<f32> = (0..32).map(|t| t as f32 * 1.5 - 7.0).collect();
    let (xd, yd) = (upload(dev, &x)?, dev.alloc(32 * 4)?);
    let mut bad = 0;
    for o in [1i32, 2, 4, 8, 16] {
        let mut args = KernelArgs::new();
        args.push(&xd.addr()).push(&yd.addr()).push(&o);
        dev.launch(&KernelConfig::probe(), "probe_shfl_xor", &warp_launch(0), &args)?;
        let y: Vec<f32> = download(dev, &yd, 32)?;
        bad += (0..32).filter(|&t| y[t] != x[t ^ o as usize]).count();
    }
    Ok((0.0, bad))
}

/// `cp_async16` of 32 rows, the rows from `nvalid` on zero-filled.
pub fn cp_async(dev: &dyn Device) -> Result<(f32, usize)> {
    let src: Vec<u16> = (0..256).map(|e| e as u16 * 3 + 1).collect();
    let (sd, od) = (upload(dev, &src)?, dev.alloc(256 * 2)?);
    let nvalid = 19i32;
    let mut args = KernelArgs::new();
    args.push(&sd.addr()).push(&od.addr()).push(&nvalid);
    dev.launch(&KernelConfig::probe(), "probe_cp_async", &warp_launch(256 * 2), &args)?;
    let out: Vec<u16> = download(dev, &od, 256)?;
    let bad = (0..256).filter(|&e| out[e] != if e / 8 < nvalid as usize { src[e] } else { 0 }).count();
    Ok((0.0, bad))
}

/// `__syncthreads` between a shared write and a read of another warp's value (128 threads).
pub fn barrier(dev: &dyn Device) -> Result<(f32, usize)> {
    let x: Vec<f32> = (0..128).map(|t| t as f32 + 0.25).collect();
    let (xd, yd) = (upload(dev, &x)?, dev.alloc(128 * 4)?);
    let mut args = KernelArgs::new();
    args.push(&xd.addr()).push(&yd.addr());
    let l = Launch { grid: (1, 1, 1), block: (128, 1, 1), smem: 128 * 4 };
    dev.launch(&KernelConfig::probe(), "probe_barrier", &l, &args)?;
    let y: Vec<f32> = download(dev, &yd, 128)?;
    Ok((0.0, (0..128).filter(|&t| y[t] != x[127 - t]).count()))
}

/// `f32_to_bf16` and `pack_bf16x2`: ties to even, overflow to infinity, signed zero,
/// subnormals, NaN to a NaN.
pub fn bf16_rounding(dev: &dyn Device, rng: &mut Rng) -> Result<(f32, usize)> {
    let mut x: Vec<f32> = vec![
        1.0,
        1.0 + 1.0 / 256.0, // a tie, to even (1.0)
        1.0 + 3.0 / 256.0, // a tie, to even (1 + 2^-6)
        -(1.0 + 1.0 / 256.0),
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        1e-40,
        f32::MIN_POSITIVE,
        f32::NAN,
    ];
    x.extend((0..52).map(|_| rng.uniform() * 1e3));
    let n = x.len();
    let (xd, yd, pd) = (upload(dev, &x)?, dev.alloc(n * 2)?, dev.alloc(n * 2)?);
    let mut args = KernelArgs::new();
    args.push(&xd.addr()).push(&yd.addr()).push(&pd.addr()).push(&(n as i32));
    let l = Launch { grid: (1, 1, 1), block: (64, 1, 1), smem: 0 };
    dev.launch(&KernelConfig::probe(), "probe_bf16", &l, &args)?;
    let y: Vec<u16> = download(dev, &yd, n)?;
    let packed: Vec<u32> = download(dev, &pd, n / 2)?;
    // Round to nearest even on the bits, written out: add 0x7fff plus the lowest kept bit.
    let rne = |v: f32| -> u16 {
        let u = v.to_bits();
        ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
    };
    let mut bad = 0;
    for (i, &v) in x.iter().enumerate() {
        let ok = |h: u16| if v.is_nan() { (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0 } else { h == rne(v) };
        bad += usize::from(!ok(y[i]));
        if i % 2 == 0 && i + 1 < n {
            let p = packed[i / 2];
            bad += usize::from(!ok((p & 0xffff) as u16)) + usize::from((p >> 16) as u16 != y[i + 1]);
        }
    }
    Ok((0.0, bad))
}

/// Every probe on `dev`, as check rows.
pub fn run_probes(dev: &dyn Device, seed: u64) -> Vec<CheckRow> {
    let mut rng = Rng::new(seed);
    vec![
        verdict("probe mma", "m16n8k16 bf16 -> f32, every lane", mma(dev, &mut rng)),
        verdict("probe ldmatrix", "x4, every lane", ldmatrix(dev, false)),
        verdict("probe ldmatrix", "x4.trans, every lane", ldmatrix(dev, true)),
        verdict("probe shfl_xor", "masks 1..16", shfl_xor(dev)),
        verdict("probe cp.async", "32 rows, 13 zero-filled", cp_async(dev)),
        verdict("probe barrier", "128 threads, reversed read", barrier(dev)),
        verdict("probe bf16", "ties, inf, -0, subnormal, NaN", bf16_rounding(dev, &mut rng)),
    ]
}
