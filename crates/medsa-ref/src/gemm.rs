//! Matrix products on the `gemm` crate (runtime-dispatched AVX-512 / AVX2 micro-kernels).
//!
//! Only this module calls into `gemm`; everything else in the crate goes through
//! [`matmul_into`], which takes strided views described by [`MatRef`].

use crate::act::dot;
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A read-only strided matrix view: element `(i, j)` is at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major `[cols, rows]` matrix (no copy).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: 1, cs: rows }
    }
    fn span_ok(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// How much parallelism a product may use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Par {
    /// Single thread (the caller already parallelises).
    Seq,
    /// All rayon threads, when the product is big enough to profit.
    Auto,
}

/// `dst [m, n] (row-major) = a [m, k] · b [k, n]`, or `dst += a · b` when `accumulate`.
///
/// # Panics
/// If the views do not fit their slices (an internal invariant: callers check shapes first).
pub(crate) fn matmul_into(dst: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, accumulate: bool, par: Par) {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and an initialised slice stays
    // initialised: `product` only ever writes finished values into it.
    let dst = unsafe { &mut *(std::ptr::from_mut::<[f32]>(dst) as *mut [MaybeUninit<f32>]) };
    product(dst, a, b, accumulate, par);
}

/// `a [m, k] · b [k, n]` in a new row-major buffer, each element written once: the output is
/// never zero-filled first (a zero fill of the decoder's 4096 x 256 products, single-threaded,
/// cost more than some of the products).
pub(crate) fn matmul_new(a: MatRef<'_>, b: MatRef<'_>, par: Par) -> Vec<f32> {
    let len = a.rows * b.cols;
    let mut out = Vec::with_capacity(len);
    product(&mut out.spare_capacity_mut()[..len], a, b, false, par);
    // SAFETY: `product` without `accumulate` writes all `len` elements.
    unsafe { out.set_len(len) };
    out
}

/// `bs` products `a_i [m, k] · b_i [k, n]` of row-major batches (`a_transposed`: `a_i` stored
/// `[k, m]`; `b_transposed`: `b_i` stored `[n, k]`) in one new `[bs, m, n]` buffer, in parallel
/// over the batch (or inside the one product).
pub(crate) fn batched_new(
    a: &[f32],
    b: &[f32],
    (bs, m, k, n): (usize, usize, usize, usize),
    (a_transposed, b_transposed): (bool, bool),
) -> Vec<f32> {
    let len = bs * m * n;
    let mut out = Vec::with_capacity(len);
    if len > 0 {
        let par = if bs == 1 { Par::Auto } else { Par::Seq };
        out.spare_capacity_mut()[..len].par_chunks_mut(m * n).enumerate().for_each(|(i, yi)| {
            let ai = &a[i * m * k..(i + 1) * m * k];
            let ai = if a_transposed { MatRef::transposed(ai, m, k) } else { MatRef::row_major(ai, m, k) };
            let bi = &b[i * k * n..(i + 1) * k * n];
            let bi = if b_transposed { MatRef::transposed(bi, k, n) } else { MatRef::row_major(bi, k, n) };
            product(yi, ai, bi, false, par);
        });
    }
    // SAFETY: each of the `bs` chunks of `m·n` elements was written whole by `product`.
    unsafe { out.set_len(len) };
    out
}

/// [`matmul_into`] on a possibly uninitialised `dst`: without `accumulate` every element is
/// written and none is read; with it, `dst` must be initialised.
fn product(dst: &mut [MaybeUninit<f32>], a: MatRef<'_>, b: MatRef<'_>, accumulate: bool, par: Par) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && dst.len() == m * n && a.span_ok() && b.span_ok(), "matmul_into views");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(MaybeUninit::new(0.0));
        }
        return;
    }
    if k <= SHORT_K && b.cs == 1 {
        return short_product(dst, a, b, accumulate, par);
    }
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    if par == Par::Auto && flops > 1.0e8 && m >= 512 && b.cs == 1 && b.rs != 1 {
        // gemm's threaded path runs ~25% faster (measured at 4096x768x3072: 190 vs 154 GFLOP/s)
        // when the right-hand matrix is column-major. Transposing it costs k·n copies against
        // m·k·n multiply-adds, so only worth it for many rows (at m = 56, the decoder's token
        // queries, the copy cost more than the product).
        const T: usize = 32;
        let mut bt = vec![0f32; k * n];
        for j0 in (0..n).step_by(T) {
            for i0 in (0..k).step_by(T) {
                for j in j0..(j0 + T).min(n) {
                    for i in i0..(i0 + T).min(k) {
                        bt[j * k + i] = b.data[i * b.rs + j];
                    }
                }
            }
        }
        return product(dst, a, MatRef::transposed(&bt, k, n), accumulate, par);
    }
    let parallelism = match par {
        Par::Auto if flops > 2.0e6 => Parallelism::Rayon(0),
        _ => Parallelism::None,
    };
    // SAFETY: the asserts above guarantee that every index the views describe lies inside its
    // slice and that `dst` holds exactly m·n elements with row stride n; `dst` is exclusively
    // borrowed and does not alias the inputs. With `read_dst = accumulate = false`, gemm writes
    // every element of `dst` without reading it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Up to this inner dimension, with a row-major right-hand side, [`short_product`] beats
/// `gemm`, which packs panels of both operands for a handful of multiply-adds per output
/// (the mask head's backward, 65536 x 4 x 32: 2.2 ms through `gemm`).
const SHORT_K: usize = 8;

/// [`product`] for `k <= SHORT_K`: each output row is `Σ_p a[i, p] · b[p, :]`, accumulated in a
/// row buffer and written once, in parallel over blocks of rows.
fn short_product(dst: &mut [MaybeUninit<f32>], a: MatRef<'_>, b: MatRef<'_>, accumulate: bool, par: Par) {
    const ROWS: usize = 256;
    let (k, n) = (a.cols, b.cols);
    let block = |(blk, out): (usize, &mut [MaybeUninit<f32>])| {
        let mut acc = vec![0f32; n];
        for (r, row) in out.chunks_exact_mut(n).enumerate() {
            let i = blk * ROWS + r;
            if accumulate {
                // SAFETY: with `accumulate`, `dst` is initialised (the contract of `product`).
                acc.iter_mut().zip(row.iter()).for_each(|(x, v)| *x = unsafe { v.assume_init() });
            } else {
                acc.fill(0.0);
            }
            for p in 0..k {
                let av = a.data[i * a.rs + p * a.cs];
                let br = &b.data[p * b.rs..p * b.rs + n];
                acc.iter_mut().zip(br).for_each(|(x, &bv)| *x += av * bv);
            }
            row.iter_mut().zip(&acc).for_each(|(v, &x)| *v = MaybeUninit::new(x));
        }
    };
    if par == Par::Auto && a.rows * n * k > 1 << 20 {
        dst.par_chunks_mut(n * ROWS).enumerate().for_each(block);
    } else {
        dst.chunks_mut(n * ROWS).enumerate().for_each(block);
    }
}

/// Up to this many input rows, [`few_rows_linear`] beats `gemm` (measured at 7 × 2048 → 256:
/// 2.2 ms through `gemm`, which packs the whole weight for a handful of rows).
pub(crate) const FEW_ROWS: usize = 16;

/// `y [m, out] = x [m, in] · wᵀ + b` for a few rows `m`: one dot product per (output, row),
/// parallel over blocks of output features, each weight row read once.
pub(crate) fn few_rows_linear(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    inp: usize,
    out: usize,
) -> Vec<f32> {
    const BLOCK: usize = 32;
    // Computed transposed ([out, m]) so that each task owns a contiguous slice.
    let mut yt = vec![0f32; out * m];
    let block = |(blk, cols): (usize, &mut [f32])| {
        for (oi, col) in cols.chunks_exact_mut(m).enumerate() {
            let o = blk * BLOCK + oi;
            let wr = &w[o * inp..(o + 1) * inp];
            let bias = b.map_or(0.0, |b| b[o]);
            for (i, v) in col.iter_mut().enumerate() {
                *v = dot(&x[i * inp..(i + 1) * inp], wr) + bias;
            }
        }
    };
    if m > 0 && out > 0 {
        // Below ~1M multiply-adds a rayon dispatch costs more than it saves.
        if m * inp * out < 1 << 20 {
            yt.chunks_mut(BLOCK * m).enumerate().for_each(block);
        } else {
            yt.par_chunks_mut(BLOCK * m).enumerate().for_each(block);
        }
    }
    let mut y = vec![0f32; m * out];
    for (o, col) in yt.chunks_exact(m.max(1)).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            y[i * out + o] = v;
        }
    }
    y
}
