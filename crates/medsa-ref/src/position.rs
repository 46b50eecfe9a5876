//! Positional ops: SAM's relative-position tables (`rel_pos_table`, spec 3.3) and the
//! random-Fourier encoding of the prompt encoder (`pe_encode`, spec 4).

use medsa_core::{Result, Tensor};

/// SAM's `get_rel_pos` (spec 3.3): resample `table [rows, d]` to `2·max(qs, ks) − 1` rows with
/// PyTorch's linear interpolation (align_corners False), then gather `[qs, ks, d]`.
pub(crate) fn rel_pos_table(qs: usize, ks: usize, table: &Tensor) -> Result<Tensor> {
    let coords = medsa_core::backend::RelPosCoords::checked(qs, ks, table)?;
    let (rows, d, l) = (table.dim(0), table.dim(1), coords.l);
    let t = table.data();
    let resampled: Vec<f32> = if rows == l {
        t.to_vec()
    } else {
        let scale = rows as f32 / l as f32;
        let mut out = vec![0f32; l * d];
        for o in 0..l {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(rows - 1);
            let i1 = if i0 < rows - 1 { i0 + 1 } else { i0 };
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let l0 = 1.0 - l1;
            for c in 0..d {
                out[o * d + c] = l0 * t[i0 * d + c] + l1 * t[i1 * d + c];
            }
        }
        out
    };
    let mut out = vec![0f32; qs * ks * d];
    for i in 0..qs {
        for j in 0..ks {
            let r = coords.row(i, j);
            out[(i * ks + j) * d..(i * ks + j + 1) * d].copy_from_slice(&resampled[r * d..(r + 1) * d]);
        }
    }
    Tensor::new(vec![qs, ks, d], out)
}

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
