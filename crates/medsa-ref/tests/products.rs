//! The matrix products of the CPU backend (`linear`, `matmul`, `bmm`, `bmm_nt`, `bmm_tn`, and the products
//! inside `linear_backward`) against a plain f64 product, on random awkward shapes (proptest) and
//! at the sizes where they take other paths: few rows, threaded gemm, a transposed right-hand
//! side, a short inner dimension, outputs written without a zero fill.

#![allow(clippy::unwrap_used)]

use medsa_core::{Backend, Tensor};
use medsa_ref::Cpu;
use medsa_testkit::random_tensor;
use proptest::prelude::*;

const TOL: f64 = 1e-5;

fn assert_close(out: &Tensor, reference: &[f64], what: &str) {
    medsa_testkit::assert_close(out, reference, TOL, what);
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

fn ref_matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn linear_matches(m in 1usize..70, k in 1usize..90, n in 1usize..50, bias in any::<bool>(), seed in any::<u64>()) {
        let x = random_tensor(&[m, k], seed);
        let w = random_tensor(&[n, k], seed ^ 1);
        let b = random_tensor(&[n], seed ^ 2);
        let y = Cpu.linear(&x, &w, bias.then_some(&b)).unwrap();
        let mut wt = vec![0f64; k * n];
        for i in 0..n { for j in 0..k { wt[j * n + i] = w.data()[i * k + j] as f64; } }
        let mut r = ref_matmul(&f64s(&x), &wt, m, k, n);
        if bias { for i in 0..m { for j in 0..n { r[i * n + j] += b.data()[j] as f64; } } }
        assert_close(&y, &r, "linear");
    }

    #[test]
    fn matmul_and_bmm_match(bs in 1usize..4, m in 1usize..40, k in 1usize..70, n in 1usize..40, seed in any::<u64>()) {
        let a = random_tensor(&[bs, m, k], seed);
        let b = random_tensor(&[bs, k, n], seed ^ 3);
        let y = Cpu.bmm(&a, &b).unwrap();
        let mut r = Vec::new();
        for i in 0..bs {
            r.extend(ref_matmul(&f64s(&a)[i * m * k..(i + 1) * m * k], &f64s(&b)[i * k * n..(i + 1) * k * n], m, k, n));
        }
        assert_close(&y, &r, "bmm");
        let a0 = a.narrow(0, 0, 1).unwrap().reshape(vec![m, k]).unwrap();
        let b0 = b.narrow(0, 0, 1).unwrap().reshape(vec![k, n]).unwrap();
        assert_close(&Cpu.matmul(&a0, &b0).unwrap(), &r[..m * n], "matmul");
    }

    #[test]
    fn bmm_nt_matches(bs in 1usize..4, m in 1usize..40, k in 1usize..70, n in 1usize..40, seed in any::<u64>()) {
        let a = random_tensor(&[bs, m, k], seed);
        let b = random_tensor(&[bs, n, k], seed ^ 3);
        let y = Cpu.bmm_nt(&a, &b).unwrap();
        let bt = f64s(&b.permute(&[0, 2, 1]).unwrap());
        let mut r = Vec::new();
        for i in 0..bs {
            r.extend(ref_matmul(&f64s(&a)[i * m * k..(i + 1) * m * k], &bt[i * k * n..(i + 1) * k * n], m, k, n));
        }
        assert_close(&y, &r, "bmm_nt");
    }

    #[test]
    fn bmm_tn_matches(bs in 1usize..4, m in 1usize..40, k in 1usize..70, n in 1usize..40, seed in any::<u64>()) {
        let a = random_tensor(&[bs, k, m], seed);
        let b = random_tensor(&[bs, k, n], seed ^ 3);
        let y = Cpu.bmm_tn(&a, &b).unwrap();
        let at = f64s(&a.permute(&[0, 2, 1]).unwrap());
        let mut r = Vec::new();
        for i in 0..bs {
            r.extend(ref_matmul(&at[i * m * k..(i + 1) * m * k], &f64s(&b)[i * k * n..(i + 1) * k * n], m, k, n));
        }
        assert_close(&y, &r, "bmm_tn");
    }
}

/// The products write their outputs without zero-filling them first: at the decoder's shapes
/// (threaded gemm, and the transposed-operand path), after the allocator has handed out and
/// taken back NaN-filled memory of the same size, every element must be the product.
#[test]
fn products_write_every_element_at_decoder_shapes() {
    let poison = |n: usize| drop(std::hint::black_box(vec![f32::NAN; n]));
    let (m, k, n) = (4096, 56, 256);
    let a = random_tensor(&[1, m, k], 1);
    let b = random_tensor(&[1, k, n], 2);
    let r = ref_matmul(&f64s(&a), &f64s(&b), m, k, n);
    poison(m * n);
    assert_close(&Cpu.bmm(&a, &b).unwrap(), &r, "bmm");
    let bt = b.permute(&[0, 2, 1]).unwrap();
    poison(m * n);
    assert_close(&Cpu.bmm_nt(&a, &bt).unwrap(), &r, "bmm_nt");
    poison(m * n);
    assert_close(&Cpu.bmm_tn(&a.permute(&[0, 2, 1]).unwrap(), &b).unwrap(), &r, "bmm_tn");
    // The mask head's backward: a short inner dimension with the left operand transposed.
    let (a4, b4) = (random_tensor(&[1, 4, 3000], 5), random_tensor(&[1, 4, 32], 6));
    let r4 = ref_matmul(&f64s(&a4.permute(&[0, 2, 1]).unwrap()), &f64s(&b4), 3000, 4, 32);
    poison(3000 * 32);
    assert_close(&Cpu.bmm_tn(&a4, &b4).unwrap(), &r4, "bmm_tn, k = 4");
    poison(m * n);
    let a2 = a.clone().reshape(vec![m, k]).unwrap();
    assert_close(&Cpu.linear(&a2, &bt.clone().reshape(vec![n, k]).unwrap(), None).unwrap(), &r, "linear");
    // linear_backward: dx = dy · w and dw = dyᵀ · x at [4096, 256] x [256, 56].
    let dy = random_tensor(&[m, n], 3);
    let w = b.clone().reshape(vec![k, n]).unwrap().permute(&[1, 0]).unwrap();
    poison(m * k);
    let g = Cpu.linear_backward(&a2, &w, &dy, true).unwrap();
    assert_close(&g.dx, &ref_matmul(&f64s(&dy), &f64s(&w), m, n, k), "linear_backward dx");
    let dyt = f64s(&dy.permute(&[1, 0]).unwrap());
    assert_close(&g.dw.unwrap(), &ref_matmul(&dyt, &f64s(&a2), n, m, k), "linear_backward dw");
}

/// The paths that depend on size: a few-row linear big enough to run in parallel, a product
/// with enough rows for the row-major right-hand side to be transposed first, and a long
/// product with a short inner dimension (no gemm packing), threaded. (The short product's
/// accumulating form runs in `attention_backward` on query blocks of a few rows: the
/// finite-difference tests in `backward.rs` cover it.)
#[test]
fn size_dependent_paths_match() {
    let (m, k, n) = (7, 2048, 300);
    let (x, w, b) = (random_tensor(&[m, k], 4), random_tensor(&[n, k], 5), random_tensor(&[n], 6));
    let y = Cpu.linear(&x, &w, Some(&b)).unwrap();
    let mut wt = vec![0f64; k * n];
    for i in 0..n {
        for j in 0..k {
            wt[j * n + i] = w.data()[i * k + j] as f64;
        }
    }
    let mut r = ref_matmul(&f64s(&x), &wt, m, k, n);
    r.iter_mut().enumerate().for_each(|(i, v)| *v += b.data()[i % n] as f64);
    assert_close(&y, &r, "few-row linear");
    let (m, k, n) = (520, 200, 501);
    let (a, bm) = (random_tensor(&[m, k], 7), random_tensor(&[k, n], 8));
    assert_close(
        &Cpu.matmul(&a, &bm).unwrap(),
        &ref_matmul(&f64s(&a), &f64s(&bm), m, k, n),
        "matmul 520x200x501",
    );
    let (m, k, n) = (65536, 4, 32);
    let (a, bm) = (random_tensor(&[1, m, k], 9), random_tensor(&[1, k, n], 10));
    let r = ref_matmul(&f64s(&a), &f64s(&bm), m, k, n);
    assert_close(&Cpu.bmm(&a, &bm).unwrap(), &r, "bmm 65536x4x32");
}
