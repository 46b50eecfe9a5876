//! Window partition and unpartition with zero padding (spec 3.4).

use medsa_core::{Error, Result, Tensor};

pub(crate) fn window_partition(x: &Tensor, win: usize) -> Result<(Tensor, (usize, usize))> {
    const OP: &str = "window_partition";
    x.expect_rank(OP, "input", 4)?;
    if win == 0 {
        return Err(Error::arg(OP, "window size 0"));
    }
    let (b, h, w, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (hp, wp) = (h.div_ceil(win) * win, w.div_ceil(win) * win);
    let (nwh, nww) = (hp / win, wp / win);
    let mut out = Tensor::zeros(vec![b * nwh * nww, win, win, c])?;
    let xs = x.data();
    let os = out.data_mut();
    for bi in 0..b {
        for wy in 0..nwh {
            for wx in 0..nww {
                let widx = (bi * nwh + wy) * nww + wx;
                for r in 0..win {
                    let y = wy * win + r;
                    if y >= h {
                        break;
                    }
                    let x0 = wx * win;
                    let cols = win.min(w.saturating_sub(x0));
                    let src = ((bi * h + y) * w + x0) * c;
                    let dst = ((widx * win + r) * win) * c;
                    os[dst..dst + cols * c].copy_from_slice(&xs[src..src + cols * c]);
                }
            }
        }
    }
    Ok((out, (hp, wp)))
}

pub(crate) fn window_unpartition(
    x: &Tensor,
    win: usize,
    padded: (usize, usize),
    hw: (usize, usize),
) -> Result<Tensor> {
    const OP: &str = "window_unpartition";
    x.expect_rank(OP, "input", 4)?;
    let (hp, wp) = padded;
    let (h, w) = hw;
    if win == 0 || hp % win != 0 || wp % win != 0 || h > hp || w > wp {
        return Err(Error::arg(OP, format!("window {win}, padded {hp}x{wp}, crop {h}x{w}")));
    }
    let (nwh, nww) = (hp / win, wp / win);
    let c = x.dim(3);
    if x.dim(1) != win || x.dim(2) != win || nwh * nww == 0 || !x.dim(0).is_multiple_of(nwh * nww) {
        return Err(Error::shape(
            OP,
            format!("{:?} is not a batch of {win}x{win} windows of a {hp}x{wp} grid", x.shape()),
        ));
    }
    let b = x.dim(0) / (nwh * nww);
    let mut out = Tensor::zeros(vec![b, h, w, c])?;
    let xs = x.data();
    let os = out.data_mut();
    for bi in 0..b {
        for y in 0..h {
            let (wy, r) = (y / win, y % win);
            for wx in 0..nww {
                let x0 = wx * win;
                if x0 >= w {
                    break;
                }
                let cols = win.min(w - x0);
                let widx = (bi * nwh + wy) * nww + wx;
                let src = ((widx * win + r) * win) * c;
                let dst = ((bi * h + y) * w + x0) * c;
                os[dst..dst + cols * c].copy_from_slice(&xs[src..src + cols * c]);
            }
        }
    }
    Ok(out)
}
