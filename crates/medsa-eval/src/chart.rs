//! PNG charts in a built-in 3x5 pixel font (no font files): the drawing primitives behind
//! [`crate::report::dice_chart`] and [`line_chart`] (training curves).

use crate::{EvalError, Result};
use image::{Rgb, RgbImage};

/// 3x5 glyphs, one row per byte, bit 2 = left column.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [6, 1, 2, 4, 7],
        '3' => [6, 1, 2, 1, 6],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 6, 1, 6],
        '6' => [3, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 6],
        '.' => [0, 0, 0, 0, 2],
        ':' => [0, 2, 0, 2, 0],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        '/' => [1, 1, 2, 4, 4],
        '%' => [5, 1, 2, 4, 5],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        _ => [0; 5],
    }
}

/// Width in pixels of `text` at `scale` (4 columns per glyph including the gap).
pub(crate) fn text_width(text: &str, scale: u32) -> u32 {
    (text.chars().count() as u32 * 4).saturating_sub(1) * scale
}

pub(crate) fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

pub(crate) fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    for y in y0.min(y1)..=y0.max(y1) {
        for x in x0.min(x1)..=x0.max(x1) {
            put(img, x, y, c);
        }
    }
}

pub(crate) fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, scale: u32, c: Rgb<u8>) {
    let s = scale as i64;
    for (k, ch) in text.chars().enumerate() {
        let g = glyph(ch);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    let px = x + (k as i64 * 4 + col) * s;
                    let py = y + row as i64 * s;
                    fill_rect(img, px, py, px + s - 1, py + s - 1, c);
                }
            }
        }
    }
}

/// One curve of a [`line_chart`]: a name for the legend and `(x, y)` points in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points, x increasing.
    pub points: Vec<(f64, f64)>,
}

const PALETTE: [Rgb<u8>; 6] = [
    Rgb([31, 119, 180]),
    Rgb([214, 39, 40]),
    Rgb([44, 160, 44]),
    Rgb([148, 103, 189]),
    Rgb([255, 127, 14]),
    Rgb([23, 190, 207]),
];

/// A line chart of `series` with axes scaled to the finite data (y from 0 when every value is
/// non-negative), the range printed at the axis ends, `title` on top and a legend. Non-finite
/// points are left out; a chart without any finite point is [`EvalError::InvalidArgument`].
pub fn line_chart(
    title: &str,
    x_label: &str,
    series: &[Series],
    width: u32,
    height: u32,
) -> Result<RgbImage> {
    if !(160..=8192).contains(&width) || !(120..=8192).contains(&height) {
        return Err(EvalError::arg("line_chart", format!("chart size {width}x{height} out of range")));
    }
    let pts = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        return Err(EvalError::arg("line_chart", format!("chart `{title}` has no finite point")));
    }
    if y0 >= 0.0 {
        y0 = 0.0;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let (w, h) = (width as i64, height as i64);
    let (left, right, top, bottom) = (40i64, w - 10, 22i64, h - 30);
    let black = Rgb([0, 0, 0]);
    let grey = Rgb([200, 200, 200]);
    draw_text(&mut img, title, left, 6, 2, black);
    fill_rect(&mut img, left, top, left, bottom, black);
    fill_rect(&mut img, left, bottom, right, bottom, black);
    for k in 1..4 {
        let y = bottom - (bottom - top) * k / 4;
        fill_rect(&mut img, left + 1, y, right, y, grey);
    }
    let fmt = |v: f64| if v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") };
    draw_text(&mut img, &fmt(y1), 2, top, 1, black);
    draw_text(&mut img, &fmt(y0), 2, bottom - 5, 1, black);
    draw_text(&mut img, &fmt(x0), left, bottom + 4, 1, black);
    let xs = fmt(x1);
    draw_text(&mut img, &xs, right - text_width(&xs, 1) as i64, bottom + 4, 1, black);
    draw_text(
        &mut img,
        x_label,
        (left + right) / 2 - text_width(x_label, 1) as i64 / 2,
        bottom + 14,
        1,
        black,
    );
    let px = |x: f64| left + ((x - x0) / (x1 - x0) * (right - left) as f64).round() as i64;
    let py = |y: f64| bottom - ((y - y0) / (y1 - y0) * (bottom - top) as f64).round() as i64;
    for (k, s) in series.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let finite: Vec<(i64, i64)> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| (px(x), py(y)))
            .collect();
        for pair in finite.windows(2) {
            line(&mut img, pair[0], pair[1], c);
        }
        if let [(x, y)] = finite[..] {
            fill_rect(&mut img, x - 1, y - 1, x + 1, y + 1, c);
        }
        let ly = top + 4 + 10 * k as i64;
        let lx = right - text_width(&s.name, 1) as i64 - 14;
        fill_rect(&mut img, lx, ly + 1, lx + 8, ly + 3, c);
        draw_text(&mut img, &s.name, lx + 11, ly, 1, black);
    }
    Ok(img)
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for t in 0..=n {
        put(img, x0 + (x1 - x0) * t / n, y0 + (y1 - y0) * t / n, c);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn line_chart_draws_each_series_in_its_colour() {
        let s = vec![
            Series { name: "loss".into(), points: vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)] },
            Series { name: "dice".into(), points: vec![(0.0, 0.2), (2.0, f64::NAN)] },
        ];
        let img = line_chart("curves", "step", &s, 320, 200).unwrap();
        let has = |c: Rgb<u8>| img.pixels().any(|p| *p == c);
        assert!(has(PALETTE[0]) && has(PALETTE[1]));
        assert!(line_chart(
            "empty",
            "x",
            &[Series { name: "a".into(), points: vec![(0.0, f64::NAN)] }],
            320,
            200
        )
        .is_err());
        assert!(line_chart("small", "x", &s, 10, 10).is_err());
    }
}
