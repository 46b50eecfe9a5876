//! Launch geometry: grid / block sizes, dynamic shared memory and the index maps the kernels use.
//!
//! Pure Rust, no driver needed, so all of it is unit-tested on the CPU. The formulas mirror the
//! `.cu` files exactly (each function names the kernel and the layout it sizes).

use crate::error::{KernelError, Result};
use crate::source::{ATTN_BLOCK_N, ATTN_M_TILES, ATTN_WARPS, SCALAR_MAX_HEAD_DIM, TC_HEAD_DIMS};

/// Largest head dim of `depth_attention_fwd` (its config's `HD_MAX`).
pub const DEPTH_MAX_HEAD_DIM: usize = 128;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Grid dimensions (CTAs).
    pub grid: (u32, u32, u32),
    /// Block dimensions (threads).
    pub block: (u32, u32, u32),
    /// Dynamic shared memory bytes.
    pub smem: u32,
}

impl Launch {
    /// Total threads launched.
    pub fn threads(&self) -> u64 {
        let g = u64::from(self.grid.0) * u64::from(self.grid.1) * u64::from(self.grid.2);
        g * u64::from(self.block.0) * u64::from(self.block.1) * u64::from(self.block.2)
    }
}

/// Largest `gridDim.y` / `gridDim.z`.
pub const MAX_GRID_YZ: usize = 65_535;
/// Largest `gridDim.x`.
pub const MAX_GRID_X: usize = (1 << 31) - 1;
/// Dynamic shared memory a kernel may use without opting in.
pub const DEFAULT_SMEM: usize = 48 * 1024;
/// Opt-in dynamic shared memory limit of sm_80 (A100); sm_90 allows 227 KiB.
pub const SM80_MAX_SMEM: usize = 163 * 1024;
/// Most keys the windowed kernel holds in shared memory (SAM windows have 196).
pub const WINDOW_MAX_KEYS: usize = 256;
/// Threads of the elementwise kernels.
pub const EW_THREADS: u32 = 256;
/// Grid cap of the grid-stride elementwise kernels.
pub const EW_MAX_BLOCKS: usize = 1 << 16;

/// Query rows per warp of the tensor-core attention kernels.
pub const fn attention_warp_m() -> usize {
    16 * ATTN_M_TILES
}

/// Query rows per CTA of `attention_flash_fwd`.
pub const fn attention_flash_block_m() -> usize {
    attention_warp_m() * ATTN_WARPS
}

/// Shared-memory row stride (elements) of the tensor-core kernels: `hd + 8` (conflict-free ldmatrix).
pub const fn tc_row_stride(head_dim: usize) -> usize {
    head_dim + 8
}

fn too_big(op: &'static str, what: &str, v: usize, max: usize) -> KernelError {
    KernelError::unsupported(op, format!("{what} = {v} exceeds the launch limit {max}"))
}

fn u32_of(op: &'static str, what: &str, v: usize, max: usize) -> Result<u32> {
    if v > max {
        return Err(too_big(op, what, v, max));
    }
    u32::try_from(v).map_err(|_| too_big(op, what, v, max))
}

fn check_tc(op: &'static str, head_dim: usize, nq: usize, nk: usize, bh: usize) -> Result<()> {
    if !TC_HEAD_DIMS.contains(&head_dim) {
        return Err(KernelError::unsupported(
            op,
            format!("head dim {head_dim} (tensor-core kernels are built for {TC_HEAD_DIMS:?})"),
        ));
    }
    if nq == 0 || nk == 0 || bh == 0 {
        return Err(KernelError::unsupported(op, format!("empty problem nq={nq} nk={nk} bh={bh}")));
    }
    Ok(())
}

/// `attention_flash_fwd`: one CTA per (128-query tile, b*h); smem = double-buffered K and V tiles
/// (the Q tile staged over the second) (bf16, row stride hd + 8) + the CTA's per-query bias rows (f32) when biased.
pub fn attention_flash(
    nq: usize,
    nk: usize,
    bh: usize,
    head_dim: usize,
    rel: Option<(usize, usize)>,
) -> Result<Launch> {
    const OP: &str = "attention_flash_fwd";
    check_tc(OP, head_dim, nq, nk, bh)?;
    let bm = attention_flash_block_m();
    // Two K / V buffers of ATTN_BLOCK_N rows each; the Q tile is staged over the second one.
    let tiles = (2 * ATTN_BLOCK_N + bm.max(2 * ATTN_BLOCK_N)) * tc_row_stride(head_dim) * 2;
    // Bias rows padded to an odd stride (kh + kw) | 1 (no bank conflicts; see attention.cu).
    let rel_bytes = rel.map_or(0, |(kh, kw)| bm * ((kh + kw) | 1) * 4);
    Ok(Launch {
        grid: (
            u32_of(OP, "query tiles", nq.div_ceil(bm), MAX_GRID_X)?,
            u32_of(OP, "b*h", bh, MAX_GRID_YZ)?,
            1,
        ),
        block: (32 * ATTN_WARPS as u32, 1, 1),
        smem: u32_of(OP, "shared memory", tiles + rel_bytes, SM80_MAX_SMEM)?,
    })
}

/// `attention_window_fwd`: one CTA per window*head; smem = all K and V rows (padded to 16) + one
/// 32-row Q tile and its bias rows per warp.
pub fn attention_window(
    nq: usize,
    nk: usize,
    bh: usize,
    head_dim: usize,
    rel: Option<(usize, usize)>,
) -> Result<Launch> {
    const OP: &str = "attention_window_fwd";
    check_tc(OP, head_dim, nq, nk, bh)?;
    if nk > WINDOW_MAX_KEYS {
        return Err(too_big(OP, "keys per window", nk, WINDOW_MAX_KEYS));
    }
    let kv_rows = nk.div_ceil(16) * 16;
    let q_rows = ATTN_WARPS * attention_warp_m();
    let tiles = (2 * kv_rows + q_rows) * tc_row_stride(head_dim) * 2;
    let rel_bytes = rel.map_or(0, |(kh, kw)| q_rows * (kh + kw) * 4);
    Ok(Launch {
        grid: (u32_of(OP, "windows*heads", bh, MAX_GRID_X)?, 1, 1),
        block: (32 * ATTN_WARPS as u32, 1, 1),
        smem: u32_of(OP, "shared memory", tiles + rel_bytes, SM80_MAX_SMEM)?,
    })
}

/// `attention_rel_tables`: eight threads per (b*h, query, table entry).
pub fn attention_rel_tables(nq: usize, bh: usize, kh: usize, kw: usize) -> Result<Launch> {
    const OP: &str = "attention_rel_tables";
    // Eight threads per table element.
    let threads = 8 * nq * (kh + kw);
    Ok(Launch {
        grid: (
            u32_of(OP, "blocks", threads.div_ceil(256), MAX_GRID_X)?,
            u32_of(OP, "b*h", bh, MAX_GRID_YZ)?,
            1,
        ),
        block: (256, 1, 1),
        smem: 0,
    })
}

/// `attention_scalar_fwd`: one warp per (b*h, query), 4 warps per CTA; smem per warp
/// `(hd + kh + kw + 32)` floats.
pub fn attention_scalar(
    nq: usize,
    bh: usize,
    head_dim: usize,
    rel: Option<(usize, usize)>,
) -> Result<Launch> {
    const OP: &str = "attention_scalar_fwd";
    if head_dim == 0 || head_dim > SCALAR_MAX_HEAD_DIM {
        return Err(KernelError::unsupported(OP, format!("head dim {head_dim} (1..={SCALAR_MAX_HEAD_DIM})")));
    }
    let rs = rel.map_or(0, |(kh, kw)| kh + kw);
    let warps = 4usize;
    Ok(Launch {
        grid: (
            u32_of(OP, "query groups", nq.div_ceil(warps), MAX_GRID_X)?,
            u32_of(OP, "b*h", bh, MAX_GRID_YZ)?,
            1,
        ),
        block: (32 * warps as u32, 1, 1),
        smem: u32_of(OP, "shared memory", warps * (head_dim + rs + 32) * 4, SM80_MAX_SMEM)?,
    })
}

/// Shared floats one warp of `depth_attention_fwd` uses.
pub fn depth_attention_warp_floats(depth: usize, head_dim: usize, dh: usize, dw: usize) -> usize {
    2 * depth * (head_dim + 1) + head_dim + dh + dw + 32
}

/// `depth_attention_fwd`: one warp per (sequence, head), up to 4 warps per CTA while the CTA fits the
/// default 48 KiB; a single warp may opt in up to `max_smem`.
pub fn depth_attention(
    nseq: usize,
    heads: usize,
    depth: usize,
    head_dim: usize,
    dh: usize,
    dw: usize,
    max_smem: usize,
) -> Result<Launch> {
    const OP: &str = "depth_attention_fwd";
    if head_dim == 0 || head_dim > DEPTH_MAX_HEAD_DIM {
        return Err(KernelError::unsupported(OP, format!("head dim {head_dim} (1..={DEPTH_MAX_HEAD_DIM})")));
    }
    if depth == 0 || dh * dw != depth {
        return Err(KernelError::unsupported(OP, format!("depth {depth} is not the grid {dh} x {dw}")));
    }
    let per_warp = depth_attention_warp_floats(depth, head_dim, dh, dw) * 4;
    if per_warp > max_smem {
        return Err(too_big(OP, "shared memory per warp", per_warp, max_smem));
    }
    let warps = (DEFAULT_SMEM / per_warp).clamp(1, 4);
    let total = nseq * heads;
    Ok(Launch {
        grid: (u32_of(OP, "blocks", total.div_ceil(warps), MAX_GRID_X)?, 1, 1),
        block: (32 * warps as u32, 1, 1),
        smem: u32_of(OP, "shared memory", warps * per_warp, max_smem)?,
    })
}

/// `hyper_chain_fwd`: one CTA per (8 tokens, prompt set); smem = all layers of `W[b]` + one r-vector
/// per warp (f32).
pub fn hyper_chain(b: usize, t: usize, r: usize, layers: usize) -> Result<Launch> {
    const OP: &str = "hyper_chain_fwd";
    if r == 0 || r > 128 || layers == 0 {
        return Err(KernelError::unsupported(OP, format!("r = {r}, layers = {layers} (r in 1..=128)")));
    }
    let warps = 8usize;
    Ok(Launch {
        grid: (
            u32_of(OP, "token groups", t.div_ceil(warps).max(1), MAX_GRID_X)?,
            u32_of(OP, "prompt sets", b, MAX_GRID_YZ)?,
            1,
        ),
        block: (32 * warps as u32, 1, 1),
        smem: u32_of(OP, "shared memory", (layers * r * r + warps * r) * 4, SM80_MAX_SMEM)?,
    })
}

/// Row kernels (`layer_norm_fwd`, `softmax_fwd`): one warp per row, 8 rows per CTA.
pub fn rows(rows: usize) -> Result<Launch> {
    Ok(Launch {
        grid: (u32_of("row kernel", "blocks", rows.div_ceil(8).max(1), MAX_GRID_X)?, 1, 1),
        block: (EW_THREADS, 1, 1),
        smem: 0,
    })
}

/// Grid-stride elementwise kernels over `n` items.
pub fn elementwise(n: usize) -> Launch {
    let blocks = n.div_ceil(EW_THREADS as usize).clamp(1, EW_MAX_BLOCKS);
    Launch { grid: (blocks as u32, 1, 1), block: (EW_THREADS, 1, 1), smem: 0 }
}

/// Whether a tensor-core attention launch can use the windowed kernel (all keys in shared memory)
/// rather than the streaming flash kernel.
pub fn prefer_window_kernel(nk: usize) -> bool {
    nk <= WINDOW_MAX_KEYS
}

/// SD-Trans grid and sequence indexing, shared with the CPU reference (`depth_attention.cu`'s
/// `depth_row` mirrors [`depth_row`]).
pub use medsa_core::backend::depth_row;

#[cfg(test)]
mod tests {
    use super::*;
    use medsa_core::backend::closest_numbers;
    use medsa_core::DepthGrouping;

    #[test]
    fn flash_geometry_covers_awkward_sizes() {
        for (nq, nk) in [(1, 1), (63, 65), (64, 64), (65, 4095), (4096, 4096), (197, 3)] {
            for hd in TC_HEAD_DIMS {
                let l = attention_flash(nq, nk, 12, hd, Some((64, 64))).unwrap();
                assert!(l.grid.0 as usize * attention_flash_block_m() >= nq);
                assert!((l.grid.0 as usize - 1) * attention_flash_block_m() < nq);
                assert_eq!(l.grid.1, 12);
                assert_eq!(l.block.0, 128);
            }
        }
        // ViT-B global: 4 * 64 rows of 72 bf16 (Q over the second K / V buffer) + 128 bias rows
        // of 129 floats: 103 KB, two CTAs per SM on sm_90.
        let l = attention_flash(4096, 4096, 12, 64, Some((64, 64))).unwrap();
        assert_eq!(l.grid, (32, 12, 1));
        assert_eq!(l.smem as usize, 256 * 72 * 2 + 128 * 129 * 4);
        assert!(2 * (l.smem as usize + 1024) <= 228 * 1024);
        assert_eq!(attention_flash(4096, 4096, 16, 80, None).unwrap().smem as usize, 256 * 88 * 2);
        assert!(attention_flash(10, 10, 1, 72, None).is_err());
        assert!(attention_flash(10, 10, 70_000, 64, None).is_err());
        assert!(attention_flash(0, 10, 1, 64, None).is_err());
    }

    #[test]
    fn window_geometry() {
        // SAM window: 196 keys -> 208 staged rows.
        let l = attention_window(196, 196, 25 * 12, 80, Some((14, 14))).unwrap();
        assert_eq!(l.grid, (300, 1, 1));
        assert_eq!(l.smem as usize, (2 * 208 + 128) * 88 * 2 + 128 * 28 * 4);
        assert!(l.smem as usize <= SM80_MAX_SMEM);
        assert!(attention_window(257, 257, 1, 64, None).is_err());
        assert!(prefer_window_kernel(196) && !prefer_window_kernel(4096));
    }

    #[test]
    fn scalar_and_depth_geometry() {
        let l = attention_scalar(7, 8, 16, None).unwrap();
        assert_eq!(l.grid, (2, 8, 1));
        assert_eq!(l.smem, 4 * (16 + 32) * 4);
        assert!(attention_scalar(7, 8, 257, None).is_err());
        for d in 1..=7 {
            let (dh, dw) = closest_numbers(d).unwrap();
            assert_eq!(dh * dw, d);
            let l = depth_attention(100, 12, d, 80, dh, dw, DEFAULT_SMEM).unwrap();
            let warps = l.block.0 as usize / 32;
            assert!(l.grid.0 as usize * warps >= 1200);
            assert!(l.smem as usize <= DEFAULT_SMEM);
        }
        // D = 96, hd 80 needs more than 48 KiB for one warp.
        assert!(depth_attention(10, 16, 96, 80, 8, 12, DEFAULT_SMEM).is_err());
        let l = depth_attention(10, 16, 96, 80, 8, 12, SM80_MAX_SMEM).unwrap();
        assert_eq!(l.block.0, 32);
        assert!(depth_attention(10, 16, 6, 80, 2, 2, DEFAULT_SMEM).is_err());
    }

    #[test]
    fn depth_rows_follow_golden_readme() {
        // 4 slices, 4 windows per slice, D = 4, P = 2: official group j = 0 is slice 0, windows 0..3.
        let (p, d, nw) = (2, 4, 4);
        let rows: Vec<usize> = (0..d).map(|k| depth_row(DepthGrouping::Official, 0, k, p, d, nw)).collect();
        assert_eq!(rows, vec![0, 1, 2, 3]);
        // per_window: sequence (b=0, win=1, p=1) holds row (0*4 + k)*4 + 1.
        let (b, win, pos) = (0, 1, 1);
        let s = (b * nw + win) * p + pos;
        let rows: Vec<usize> = (0..d).map(|k| depth_row(DepthGrouping::PerWindow, s, k, p, d, nw)).collect();
        assert_eq!(rows, vec![1, 5, 9, 13]);
        // Both groupings visit every (row, position) exactly once.
        for g in [DepthGrouping::Official, DepthGrouping::PerWindow] {
            let (b, nw, p, d) = (2, 3, 5, 4);
            let n0 = b * d * nw;
            let mut seen = vec![0u8; n0 * p];
            for s in 0..n0 * p / d {
                for k in 0..d {
                    seen[depth_row(g, s, k, p, d, nw) * p + s % p] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "{g:?}");
        }
        // Global blocks (nw = 1): the groupings agree.
        for s in 0..12 {
            for k in 0..3 {
                assert_eq!(
                    depth_row(DepthGrouping::Official, s, k, 4, 3, 1),
                    depth_row(DepthGrouping::PerWindow, s, k, 4, 3, 1)
                );
            }
        }
    }

    #[test]
    fn elementwise_and_rows() {
        let l = elementwise(1);
        assert_eq!(l.grid.0, 1);
        let l = elementwise(usize::MAX / 2);
        assert_eq!(l.grid.0 as usize, EW_MAX_BLOCKS);
        assert_eq!(rows(17).unwrap().grid.0, 3);
        let l = hyper_chain(4, 9, 32, 3).unwrap();
        assert_eq!(l.grid, (2, 4, 1));
        assert_eq!(l.smem as usize, (3 * 32 * 32 + 8 * 32) * 4);
        assert!(hyper_chain(4, 9, 129, 3).is_err());
        // 4096 queries x 128 entries x 8 threads, 256 a block.
        assert_eq!(attention_rel_tables(4096, 12, 64, 64).unwrap().grid, (16384, 12, 1));
    }
}
