//! The decoder attention's factored orders for training (tokens → image and image → tokens)
//! against the spec's direct order: outputs, input gradients and every parameter gradient, on
//! awkward sizes with biases on every projection, and with the image-side gradients switched off.

#![allow(clippy::unwrap_used)]

use medsa_core::Tensor;
use medsa_model::decoder::DecoderAttention;
use medsa_model::nn::Linear;
use medsa_model::train::factored_attention::{
    few_keys_backward, few_keys_forward, few_queries_backward, few_queries_forward,
};
use medsa_model::train::layers::{attention_backward, attention_forward, Ctx};
use medsa_model::train::params::{Grads, Trainable};
use medsa_ref::Cpu;
use medsa_testkit::{random_tensor, rel_diff};

const NAME: &str = "attn";

/// Width 12, 3 heads, internal downsampling 2 (head dim 2).
fn attention(seed: u64) -> DecoderAttention {
    let lin = |o: usize, i: usize, s: u64| Linear {
        w: random_tensor(&[o, i], s),
        b: Some(random_tensor(&[o], s ^ 9)),
    };
    DecoderAttention {
        q: lin(6, 12, seed),
        k: lin(6, 12, seed ^ 1),
        v: lin(6, 12, seed ^ 2),
        out: lin(12, 6, seed ^ 3),
        num_heads: 3,
    }
}

fn trainable() -> Trainable {
    let names = ["q_proj", "k_proj", "v_proj", "out_proj"]
        .iter()
        .flat_map(|p| ["weight", "bias"].map(|w| format!("{NAME}.{p}.{w}")));
    Trainable::from_names(names)
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}");
    let e = rel_diff(a, b);
    assert!(e < 1e-5, "{what}: relative difference {e:e}");
}

/// The key bias adds the same amount to every logit of a softmax row, so its gradient is zero:
/// exactly in the factored orders, within rounding in the direct one.
fn same_grads(a: &Grads, b: &Grads) {
    assert_eq!(a.len(), 8, "every projection's weight and bias");
    for (n, g) in a.iter() {
        let r = b.get(n).unwrap_or_else(|| panic!("{n} missing"));
        if n.ends_with("k_proj.bias") {
            assert!(g.max_abs() < 1e-5 && r.max_abs() < 1e-5, "{n}: {} and {}", g.max_abs(), r.max_abs());
        } else {
            close(g, r, n);
        }
    }
}

#[test]
fn few_queries_order_matches_the_direct_order() {
    for (b, t, n, seed) in [(1, 5, 17, 1), (2, 3, 29, 2)] {
        let a = attention(seed);
        let (q, k, v) = (
            random_tensor(&[b, t, 12], seed ^ 10),
            random_tensor(&[b, n, 12], seed ^ 11),
            random_tensor(&[b, n, 12], seed ^ 12),
        );
        let dy = random_tensor(&[b, t, 12], seed ^ 13);
        let tr = trainable();
        let (y0, t0) = attention_forward(&Cpu, &a, q.clone(), k.clone(), v.clone()).unwrap();
        let (y1, t1) = few_queries_forward(&Cpu, &a, q, k, v).unwrap();
        close(&y1, &y0, "output");
        let (mut g0, mut g1, mut g2) = (Grads::new(), Grads::new(), Grads::new());
        let (dq0, dk0, dv0) =
            attention_backward(&mut Ctx { be: &Cpu, tr: &tr, grads: &mut g0 }, &a, NAME, &t0, &dy).unwrap();
        let mut c1 = Ctx { be: &Cpu, tr: &tr, grads: &mut g1 };
        let (dq1, image) = few_queries_backward(&mut c1, &a, NAME, &t1, &dy, true).unwrap();
        let (dk1, dv1) = image.unwrap();
        close(&dq1, &dq0, "dq");
        close(&dk1, &dk0, "dk");
        close(&dv1, &dv0, "dv");
        same_grads(&g1, &g0);
        let mut c2 = Ctx { be: &Cpu, tr: &tr, grads: &mut g2 };
        let (dq2, image) = few_queries_backward(&mut c2, &a, NAME, &t1, &dy, false).unwrap();
        assert!(image.is_none());
        assert_eq!(dq2.data(), dq1.data());
        same_grads(&g2, &g1);
    }
}

#[test]
fn few_keys_order_matches_the_direct_order() {
    for (b, n, t, seed) in [(1, 23, 4, 3), (2, 31, 6, 4)] {
        let a = attention(seed);
        let (q, k, v) = (
            random_tensor(&[b, n, 12], seed ^ 10),
            random_tensor(&[b, t, 12], seed ^ 11),
            random_tensor(&[b, t, 12], seed ^ 12),
        );
        let dy = random_tensor(&[b, n, 12], seed ^ 13);
        let tr = trainable();
        let (y0, t0) = attention_forward(&Cpu, &a, q.clone(), k.clone(), v.clone()).unwrap();
        let (y1, t1) = few_keys_forward(&Cpu, &a, &q, k, v).unwrap();
        close(&y1, &y0, "output");
        let (mut g0, mut g1, mut g2) = (Grads::new(), Grads::new(), Grads::new());
        let (dq0, dk0, dv0) =
            attention_backward(&mut Ctx { be: &Cpu, tr: &tr, grads: &mut g0 }, &a, NAME, &t0, &dy).unwrap();
        let mut c1 = Ctx { be: &Cpu, tr: &tr, grads: &mut g1 };
        let (dq1, dk1, dv1) = few_keys_backward(&mut c1, &a, NAME, &t1, &q, &dy, true).unwrap();
        close(&dq1.unwrap(), &dq0, "dq");
        close(&dk1, &dk0, "dk");
        close(&dv1, &dv0, "dv");
        same_grads(&g1, &g0);
        let mut c2 = Ctx { be: &Cpu, tr: &tr, grads: &mut g2 };
        let (dq2, dk2, _) = few_keys_backward(&mut c2, &a, NAME, &t1, &q, &dy, false).unwrap();
        assert!(dq2.is_none());
        assert_eq!(dk2.data(), dk1.data());
        same_grads(&g2, &g1);
    }
}
