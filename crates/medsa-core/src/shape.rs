//! Operand checks shared by every [`crate::Backend`] implementation, so that all backends accept
//! and reject the same shapes with the same messages: attention, depth attention, convolutions,
//! the relative-position table, the PE encoding, the broadcast of `add_scaled` and the residual
//! of `linear_add`.

use crate::backend::{closest_numbers, Conv2d, RelPos};
use crate::{Error, Result, Tensor};

/// Checked dimensions of a [`Backend::attention`] call, shared by every backend so that they
/// accept and reject the same operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch × heads.
    pub bh: usize,
    /// Queries.
    pub nq: usize,
    /// Keys (at least one).
    pub nk: usize,
    /// Query/key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
    /// Query and key grids `((qh, qw), (kh, kw))` of the relative-position bias.
    pub grids: Option<((usize, usize), (usize, usize))>,
}

/// The checked output shape `[N, Cout, 2H, 2W]` of [`Backend::conv_transpose2x2`] for input
/// `x [N, Cin, H, W]`, weight `w [Cin, Cout, 2, 2]` and bias `[Cout]`.
pub fn conv_transpose2x2_shape(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<[usize; 4]> {
    const OP: &str = "conv_transpose2x2";
    x.expect_rank(OP, "input", 4)?;
    w.expect_rank(OP, "weight", 4)?;
    let cout = w.dim(1);
    w.expect_shape(OP, "weight", &[x.dim(1), cout, 2, 2])?;
    b.expect_shape(OP, "bias", &[cout])?;
    Ok([x.dim(0), cout, 2 * x.dim(2), 2 * x.dim(3)])
}

/// The checked output shape of [`Backend::pe_encode`]: `coords [..., 2]` with the gaussian
/// matrix `[2, F]` gives `[..., 2F]`.
pub fn pe_encode_shape(coords: &Tensor, gaussian: &Tensor) -> Result<Vec<usize>> {
    const OP: &str = "pe_encode";
    gaussian.expect_rank(OP, "gaussian matrix", 2)?;
    if gaussian.dim(0) != 2 || coords.rank() == 0 || coords.last_dim() != 2 {
        return Err(Error::shape(
            OP,
            format!(
                "coords {:?} must end in 2, gaussian {:?} must be [2, F]",
                coords.shape(),
                gaussian.shape()
            ),
        ));
    }
    let mut shape = coords.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = 2 * gaussian.dim(1);
    }
    Ok(shape)
}

/// Where SAM's `get_rel_pos` reads (spec 3.3): the resampled table has `l = 2 max(qs, ks) - 1`
/// rows, and output `(i, j)` takes row `clamp(trunc(i sq - j sk + off), 0, l - 1)`, with the
/// coordinates computed exactly as PyTorch does (f32 tensors times Python floats).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RelPosCoords {
    /// Rows of the resampled table.
    pub l: usize,
    /// Query coordinate scale.
    pub sq: f32,
    /// Key coordinate scale.
    pub sk: f32,
    /// Offset.
    pub off: f32,
}

impl RelPosCoords {
    /// The coordinates of [`Backend::rel_pos_table`] for `qs` queries, `ks` keys and a table of
    /// `table [rows, d]`, after checking the arguments.
    pub fn checked(qs: usize, ks: usize, table: &Tensor) -> Result<Self> {
        const OP: &str = "rel_pos_table";
        table.expect_rank(OP, "table", 2)?;
        if qs == 0 || ks == 0 || table.dim(0) == 0 {
            return Err(Error::arg(OP, format!("q size {qs}, k size {ks}, table rows {}", table.dim(0))));
        }
        Ok(RelPosCoords {
            l: 2 * qs.max(ks) - 1,
            sq: (ks as f64 / qs as f64).max(1.0) as f32,
            sk: (qs as f64 / ks as f64).max(1.0) as f32,
            off: ((ks - 1) as f64 * (qs as f64 / ks as f64).max(1.0)) as f32,
        })
    }

    /// The table row output `(i, j)` reads.
    pub fn row(&self, i: usize, j: usize) -> usize {
        let r = ((i as f32 * self.sq - j as f32 * self.sk) + self.off) as i64;
        r.clamp(0, self.l as i64 - 1) as usize
    }
}

/// The checked output shape `[N, Cout, HO, WO]` of [`Backend::conv2d`] for input `x [N, Cin, H, W]`,
/// weight `w [Cout, Cin / groups, KH, KW]` and optional bias `[Cout]`: the one contract every
/// backend validates against.
pub fn conv2d_shape(x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: Conv2d) -> Result<[usize; 4]> {
    const OP: &str = "conv2d";
    x.expect_rank(OP, "input", 4)?;
    w.expect_rank(OP, "weight", 4)?;
    let (n, cin, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (cout, cpg, kh, kw) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
    if g.stride == 0 || g.groups == 0 || kh == 0 || kw == 0 {
        return Err(Error::arg(OP, format!("stride {}, groups {}, kernel {kh}x{kw}", g.stride, g.groups)));
    }
    if cin % g.groups != 0 || cout % g.groups != 0 || cpg != cin / g.groups {
        return Err(Error::shape(
            OP,
            format!("input {:?} and weight {:?} do not fit groups {}", x.shape(), w.shape(), g.groups),
        ));
    }
    if let Some(b) = b {
        b.expect_shape(OP, "bias", &[cout])?;
    }
    let (hp, wp) = (h + 2 * g.padding, wd + 2 * g.padding);
    if hp < kh || wp < kw {
        return Err(Error::shape(OP, format!("kernel {kh}x{kw} larger than padded input {hp}x{wp}")));
    }
    Ok([n, cout, (hp - kh) / g.stride + 1, (wp - kw) / g.stride + 1])
}

/// Validates the operands of [`Backend::attention`].
pub fn attention_dims(q: &Tensor, k: &Tensor, v: &Tensor, rel: Option<RelPos<'_>>) -> Result<AttentionDims> {
    const OP: &str = "attention";
    q.expect_rank(OP, "q", 3)?;
    k.expect_rank(OP, "k", 3)?;
    v.expect_rank(OP, "v", 3)?;
    let (bh, nq, d) = (q.dim(0), q.dim(1), q.dim(2));
    let (nk, dv) = (k.dim(1), v.dim(2));
    k.expect_shape(OP, "k", &[bh, nk, d])?;
    v.expect_shape(OP, "v", &[bh, nk, dv])?;
    if nk == 0 {
        return Err(crate::Error::shape(OP, "no keys"));
    }
    let grids = match rel {
        Some(r) => {
            r.rh.expect_rank(OP, "Rh", 3)?;
            r.rw.expect_rank(OP, "Rw", 3)?;
            let (qh, kh) = (r.rh.dim(0), r.rh.dim(1));
            let (qw, kw) = (r.rw.dim(0), r.rw.dim(1));
            if qh * qw != nq || kh * kw != nk || r.rh.dim(2) != d || r.rw.dim(2) != d {
                return Err(crate::Error::shape(
                    OP,
                    format!(
                        "Rh {:?} / Rw {:?} do not fit q {:?}, k {:?}",
                        r.rh.shape(),
                        r.rw.shape(),
                        q.shape(),
                        k.shape()
                    ),
                ));
            }
            Some(((qh, qw), (kh, kw)))
        }
        None => None,
    };
    Ok(AttentionDims { bh, nq, nk, d, dv, grids })
}

/// Checked dimensions of a [`Backend::depth_attention`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthDims {
    /// Entries of the window-partitioned batch.
    pub n0: usize,
    /// Tokens per entry.
    pub p: usize,
    /// Channels C.
    pub c: usize,
    /// Head width.
    pub hd: usize,
    /// The depth grid `(dh, dw)`, `dh·dw = depth`.
    pub grid: (usize, usize),
}

/// Validates the operands of [`Backend::depth_attention`]; without tables the grid is
/// [`closest_numbers`]`(depth)`.
pub fn depth_attention_dims(
    qkv: &Tensor,
    heads: usize,
    depth: usize,
    nw: usize,
    rel: Option<RelPos<'_>>,
) -> Result<DepthDims> {
    const OP: &str = "depth_attention";
    qkv.expect_rank(OP, "qkv", 3)?;
    let (n0, p, c3) = (qkv.dim(0), qkv.dim(1), qkv.dim(2));
    if c3 % 3 != 0 || heads == 0 || (c3 / 3) % heads != 0 || depth == 0 || nw == 0 || n0 % (depth * nw) != 0 {
        return Err(crate::Error::shape(
            OP,
            format!("qkv {:?}, heads {heads}, depth {depth}, windows {nw}", qkv.shape()),
        ));
    }
    let (c, hd) = (c3 / 3, c3 / 3 / heads);
    let grid = match rel {
        Some(r) => {
            let (gh, gw) = (r.rh.dim(0), r.rw.dim(0));
            if r.rh.shape() != [gh, gh, hd] || r.rw.shape() != [gw, gw, hd] || gh * gw != depth {
                return Err(crate::Error::shape(
                    OP,
                    format!(
                        "tables {:?} / {:?} do not describe a grid of {depth} tokens",
                        r.rh.shape(),
                        r.rw.shape()
                    ),
                ));
            }
            (gh, gw)
        }
        None => closest_numbers(depth)?,
    };
    Ok(DepthDims { n0, p, c, hd, grid })
}

/// How `b` broadcasts onto `a` in [`crate::Backend::add_scaled`]: `(outer, rep, inner)` with
/// `a` viewed as `[outer, rep, inner]` and `b` as `[outer, inner]`, so `a`'s element `i` takes
/// `b[(i / (rep·inner))·inner + i % inner]`. `b`'s shape, aligned with `a`'s trailing axes
/// (missing leading axes count as extent 1), must equal `a`'s except on one contiguous run of
/// axes where `b` has extent 1: a residual add (`b` of `a`'s shape), a table repeated over a
/// batch (`b` a suffix of `a`), a per-set row repeated over the queries (`[B, 1, N]` on
/// `[B, Q, N]`).
pub fn broadcast_run(a: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
    let bad = || Error::shape("add_scaled", format!("{b:?} does not broadcast onto {a:?}"));
    if b.len() > a.len() {
        return Err(bad());
    }
    let lead = a.len() - b.len();
    let bd = |i: usize| if i < lead { 1 } else { b[i - lead] };
    let differs: Vec<usize> = (0..a.len()).filter(|&i| bd(i) != a[i]).collect();
    let (start, end) = match (differs.first(), differs.last()) {
        (Some(&s), Some(&e)) => (s, e + 1),
        _ => (0, 0),
    };
    if (start..end).any(|i| bd(i) != 1) {
        return Err(bad());
    }
    let prod = |r: std::ops::Range<usize>| -> usize { a[r].iter().product() };
    Ok((prod(0..start), prod(start..end), prod(end..a.len())))
}

/// [`crate::Backend::linear_add`]'s residual `r`: exactly the layer's output shape, `x`'s with the
/// last axis `w.dim(0)` (no broadcast: the residual is the stream the layer writes into).
pub fn linear_add_residual(r: &Tensor, x: &Tensor, w: &Tensor) -> Result<()> {
    w.expect_rank("linear_add", "weight", 2)?;
    let mut out = x.shape().to_vec();
    if let Some(l) = out.last_mut() {
        *l = w.dim(0);
    }
    if r.shape() != out.as_slice() {
        return Err(Error::shape(
            "linear_add",
            format!(
                "residual {:?} vs the layer's output {out:?} (input {:?}, weight {:?})",
                r.shape(),
                x.shape(),
                w.shape()
            ),
        ));
    }
    Ok(())
}

/// Checked `(B, N, hd)` of a [`crate::Backend::attention_qkv`] call: `qkv [B, N, 3·heads·hd]`
/// and, with `rel`, tables `rh [qh, kh, hd]`, `rw [qw, kw, hd]` on a grid of `N = qh·qw = kh·kw`
/// tokens.
pub fn attention_qkv_dims(
    qkv: &Tensor,
    heads: usize,
    rel: Option<RelPos<'_>>,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "attention_qkv";
    qkv.expect_rank(OP, "qkv", 3)?;
    let (b, n, c3) = (qkv.dim(0), qkv.dim(1), qkv.dim(2));
    if heads == 0 || c3 == 0 || c3 % (3 * heads) != 0 {
        return Err(Error::shape(
            OP,
            format!("qkv {:?} does not split into q, k, v of {heads} heads", qkv.shape()),
        ));
    }
    let hd = c3 / (3 * heads);
    if let Some(r) = rel {
        r.rh.expect_rank(OP, "rh", 3)?;
        r.rw.expect_rank(OP, "rw", 3)?;
        let (qh, kh, qw, kw) = (r.rh.dim(0), r.rh.dim(1), r.rw.dim(0), r.rw.dim(1));
        if r.rh.dim(2) != hd || r.rw.dim(2) != hd || qh * qw != n || kh * kw != n {
            return Err(Error::shape(
                OP,
                format!("tables {:?} / {:?} for {n} tokens of head dim {hd}", r.rh.shape(), r.rw.shape()),
            ));
        }
    }
    Ok((b, n, hd))
}
