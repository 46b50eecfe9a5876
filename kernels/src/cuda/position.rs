//! The Backend ops `rel_pos_table` and `pe_encode` on the device (`position.cu`): SAM's
//! relative-position table (resampled and gathered) and the prompt encoder's random-Fourier
//! encoding.

use super::{i32_of, i64_of, Args, Cuda, Operand, Output};
use crate::device::KernelArgs;
use crate::geometry;
use crate::source::{KernelConfig, Storage};
use medsa_core::backend::RelPosCoords;
use medsa_core::Tensor;

impl Cuda {
    /// The Backend op `rel_pos_table`: `[qs, ks, d]` (f32) from `table [rows, d]`.
    pub(super) fn rel_pos_table_fwd(
        &self,
        qs: usize,
        ks: usize,
        table: &Tensor,
    ) -> medsa_core::Result<Tensor> {
        const OP: &str = "rel_pos_table";
        let c = RelPosCoords::checked(qs, ks, table)?;
        let (rows, d) = (table.dim(0), table.dim(1));
        if d == 0 {
            return Tensor::zeros(vec![qs, ks, 0]);
        }
        let scale = rows as f32 / c.l as f32;
        let mut extra = KernelArgs::new();
        for v in [rows, d, qs, ks, c.l] {
            extra.push(&i32_of(OP, v)?);
        }
        extra.push(&scale).push(&c.sq).push(&c.sk).push(&c.off);
        let len = qs * ks * d;
        Ok(self.run_op(
            &KernelConfig::position(self.storage()),
            "rel_pos_table_fwd",
            &geometry::elementwise(len),
            &[Operand::F32(table)],
            Output { len, storage: Storage::F32, shape: &[qs, ks, d] },
            Args::Flat(extra),
        )?)
    }

    /// The Backend op `pe_encode`: `coords [..., 2]` (in [0, 1]) and the gaussian matrix `[2, F]`
    /// -> `[..., 2F]` (sines, then cosines).
    pub(super) fn pe_encode_fwd(&self, coords: &Tensor, gaussian: &Tensor) -> medsa_core::Result<Tensor> {
        const OP: &str = "pe_encode";
        let shape = medsa_core::backend::pe_encode_shape(coords, gaussian)?;
        if shape.iter().product::<usize>() == 0 {
            return Tensor::zeros(shape);
        }
        let f = gaussian.dim(1);
        let points = coords.numel() / 2;
        let mut extra = KernelArgs::new();
        extra.push(&i64_of(points)).push(&i32_of(OP, f)?);
        Ok(self.run_op(
            &KernelConfig::position(self.storage()),
            "pe_encode_fwd",
            &geometry::elementwise(points * f),
            &[Operand::F32(coords), Operand::F32(gaussian)],
            self.stored_output(points * 2 * f, &shape),
            Args::Flat(extra),
        )?)
    }
}
