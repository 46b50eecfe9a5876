//! Storage dtypes. Compute is always f32; f16 and bf16 exist for storage (checkpoints, GPU).

use crate::{Error, Result};

/// A storage element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Name as written by safetensors (`F32`, `F16`, `BF16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Decodes little-endian `bytes` of `dtype` to f32 (exact for every dtype here).
///
/// The bytes need not be aligned.
pub fn decode_le(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(dtype.size()) {
        return Err(Error::DType {
            dtype: dtype.name().into(),
            msg: format!("{} bytes is not a multiple of {}", bytes.len(), dtype.size()),
        });
    }
    Ok(match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
    })
}

/// Encodes f32 values as little-endian `dtype` bytes (round to nearest even for f16/bf16).
pub fn encode_le(dtype: DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect(),
        DType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = [0.0f32, 1.5, -2.25, 65504.0, 1e-3];
        for dt in [DType::F32, DType::F16, DType::BF16] {
            let back = decode_le(dt, &encode_le(dt, &v)).unwrap();
            for (a, b) in v.iter().zip(&back) {
                let tol = match dt {
                    DType::F32 => 0.0,
                    DType::F16 => 1e-3 * a.abs(),
                    DType::BF16 => 8e-3 * a.abs(),
                };
                assert!((a - b).abs() <= tol, "{dt}: {a} vs {b}");
            }
        }
        assert!(decode_le(DType::F16, &[1, 2, 3]).is_err());
    }
}
