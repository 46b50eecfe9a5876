//! Random-Fourier positional encoding of SAM's prompt encoder (spec 4).

use medsa_core::{Result, Tensor};

pub(crate) fn pe_encode(coords: &Tensor, gaussian: &Tensor) -> Result<Tensor> {
    let shape = medsa_core::backend::pe_encode_shape(coords, gaussian)?;
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
    Tensor::new(shape, out)
}
