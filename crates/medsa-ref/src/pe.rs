//! Random-Fourier positional encoding of SAM's prompt encoder (spec 4).

use medsa_core::{Error, Result, Tensor};

pub(crate) fn pe_encode(coords: &Tensor, gaussian: &Tensor) -> Result<Tensor> {
    const OP: &str = "pe_encode";
    gaussian.expect_rank(OP, "gaussian matrix", 2)?;
    if gaussian.dim(0) != 2 || coords.last_dim() != 2 || coords.rank() == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "coords {:?} must end in 2, gaussian {:?} must be [2, F]",
                coords.shape(),
                gaussian.shape()
            ),
        ));
    }
    let f = gaussian.dim(1);
    let g = gaussian.data();
    let n = coords.numel() / 2;
    let mut out = vec![0f32; n * 2 * f];
    let two_pi = 2.0 * std::f32::consts::PI;
    for (p, c) in coords.data().chunks_exact(2).enumerate() {
        let (x, y) = (2.0 * c[0] - 1.0, 2.0 * c[1] - 1.0);
        let row = &mut out[p * 2 * f..(p + 1) * 2 * f];
        for j in 0..f {
            let u = two_pi * (x * g[j] + y * g[f + j]);
            row[j] = u.sin();
            row[f + j] = u.cos();
        }
    }
    let mut shape = coords.shape().to_vec();
    *shape.last_mut().expect("rank checked above") = 2 * f;
    Tensor::new(shape, out)
}
