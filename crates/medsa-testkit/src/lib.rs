//! `medsa-testkit`: what medsa's tests, benches and GPU checks share, so each is written once.
//!
//! - [`Rng`], [`random_vec`], [`random_tensor`]: deterministic pseudo-random values in
//!   `[-1, 1)` (splitmix64), the same on every machine and run, with no dependency;
//! - [`rel_err`], [`rel_diff`], [`max_abs_diff`], [`assert_close`]: the error measures the tests
//!   compare with. A NaN anywhere counts as an infinite error, so a broken output never passes.
//!
//! Random models are [`medsa_model::Sam::random`]'s job (this crate sits below the model).

use medsa_core::Tensor;

/// A splitmix64 generator: tiny, seedable, and good enough for test inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed; nearby seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`, on a grid of `2^-23`.
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
    }

    /// `n` uniform values in `[-1, 1)`.
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }

    /// A tensor of uniform values in `[-scale, scale)`.
    pub fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        let data = (0..n).map(|_| self.uniform() * scale).collect();
        Tensor::new(shape.to_vec(), data).expect("a shape's element count matches its data")
    }
}

/// `n` uniform values in `[-1, 1)` from `seed`.
pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
    Rng::new(seed).vec(n)
}

/// A tensor of uniform values in `[-1, 1)` from `seed`.
pub fn random_tensor(shape: &[usize], seed: u64) -> Tensor {
    Rng::new(seed).tensor(shape, 1.0)
}

/// `max |a − b|` over all elements; infinite on a NaN or a shape mismatch.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    if a.shape() != b.shape() {
        return f32::INFINITY;
    }
    a.data().iter().zip(b.data()).fold(0f32, |m, (x, y)| {
        let e = (x - y).abs();
        if e.is_nan() {
            f32::INFINITY
        } else {
            m.max(e)
        }
    })
}

/// `max |a − reference| / max |reference|` (plain `max |a − reference|` for an all-zero
/// reference); infinite on a NaN or a shape mismatch.
pub fn rel_diff(a: &Tensor, reference: &Tensor) -> f32 {
    let scale = reference.max_abs();
    let e = max_abs_diff(a, reference);
    if scale > 0.0 {
        e / scale
    } else {
        e
    }
}

/// `max |cand − reference| / max(max |reference|, floor)` against an f64 reference; infinite on a
/// NaN. Panics when the element counts differ (a test's own bug).
pub fn rel_err(cand: &Tensor, reference: &[f64], floor: f64) -> f64 {
    assert_eq!(cand.numel(), reference.len(), "element count");
    let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs())).max(floor);
    let err = cand.data().iter().zip(reference).fold(0f64, |m, (a, b)| {
        let e = (*a as f64 - b).abs();
        if e.is_nan() {
            f64::INFINITY
        } else {
            m.max(e)
        }
    });
    err / scale
}

/// Panics, naming `what` and the error, unless `rel_err(cand, reference, 1e-30) <= tol`.
pub fn assert_close(cand: &Tensor, reference: &[f64], tol: f64, what: &str) {
    let e = rel_err(cand, reference, 1e-30);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_in_range_and_repeat_per_seed() {
        let a = random_vec(10_000, 7);
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
        assert_eq!(a, random_vec(10_000, 7));
        assert_ne!(a, random_vec(10_000, 8));
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn error_measures_see_nan_and_shape_mismatch() {
        let a = Tensor::new(vec![2], vec![1.0, f32::NAN]).expect("tensor");
        let b = Tensor::new(vec![2], vec![1.0, 2.0]).expect("tensor");
        assert_eq!(max_abs_diff(&a, &b), f32::INFINITY);
        assert_eq!(rel_err(&a, &[1.0, 2.0], 1e-30), f64::INFINITY);
        let c = Tensor::new(vec![1, 2], vec![1.0, 2.0]).expect("tensor");
        assert_eq!(rel_diff(&c, &b), f32::INFINITY);
        assert_eq!(rel_diff(&b, &b), 0.0);
        assert!((rel_err(&b, &[1.0, 2.5], 1e-30) - 0.2).abs() < 1e-12);
    }
}
