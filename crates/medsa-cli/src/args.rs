//! Parsers for the prompt, slice and window arguments. Each returns a message that says what was
//! expected; clap prefixes it with the argument's name and the offending value.

use medsa_io::nifti::Axis;
#[cfg(test)]
use medsa_io::window::HuWindow;
pub use medsa_io::window::Window;
use medsa_model::predictor::{BoxPrompt, Point};

fn numbers(s: &str, what: &str, expected: &str) -> Result<Vec<f32>, String> {
    s.split(',')
        .map(|p| {
            let p = p.trim();
            let v: f32 =
                p.parse().map_err(|_| format!("`{p}` is not a number; expected {expected} ({what})"))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(format!("`{p}` is not a finite number; expected {expected} ({what})"))
            }
        })
        .collect()
}

/// `x0,y0,x1,y1` in original-image pixels, `x0 <= x1`, `y0 <= y1`, none negative.
pub fn parse_box(s: &str) -> Result<BoxPrompt, String> {
    const EXPECTED: &str = "x0,y0,x1,y1";
    let v = numbers(s, "box corners in pixels", EXPECTED)?;
    let [x0, y0, x1, y1] = v[..] else {
        return Err(format!("{} numbers; expected 4: {EXPECTED} (box corners in pixels)", v.len()));
    };
    if x0 < 0.0 || y0 < 0.0 {
        return Err(format!("negative corner; expected {EXPECTED} with pixel coordinates >= 0"));
    }
    if x0 > x1 || y0 > y1 {
        return Err(format!("corners out of order; expected {EXPECTED} with x0 <= x1 and y0 <= y1"));
    }
    Ok(BoxPrompt { x0, y0, x1, y1 })
}

/// `x,y` (a foreground click) or `x,y,label` with label `1`/`fg`/`pos` or `0`/`bg`/`neg`.
pub fn parse_point(s: &str) -> Result<Point, String> {
    const EXPECTED: &str = "x,y or x,y,label (label 1/fg or 0/bg)";
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 2 && parts.len() != 3 {
        return Err(format!("{} fields; expected {EXPECTED}", parts.len()));
    }
    let xy = numbers(&parts[..2].join(","), "click position in pixels", EXPECTED)?;
    if xy[0] < 0.0 || xy[1] < 0.0 {
        return Err(format!("negative coordinate; expected {EXPECTED} with pixel coordinates >= 0"));
    }
    let foreground = match parts.get(2).map(|l| l.to_ascii_lowercase()) {
        None => true,
        Some(l) => match l.as_str() {
            "1" | "fg" | "pos" | "+" => true,
            "0" | "bg" | "neg" | "-" => false,
            other => return Err(format!("label `{other}`; expected {EXPECTED}")),
        },
    };
    Ok(Point { x: xy[0], y: xy[1], foreground })
}

/// `AXIS:INDEX` with AXIS `x|y|z` (or `sagittal|coronal|axial`).
pub fn parse_slice(s: &str) -> Result<(Axis, usize), String> {
    const EXPECTED: &str = "AXIS:INDEX, e.g. z:90 (AXIS x, y, z, sagittal, coronal or axial)";
    let Some((a, i)) = s.split_once(':') else {
        return Err(format!("no `:`; expected {EXPECTED}"));
    };
    let axis = parse_axis(a)?;
    let index = i.trim().parse().map_err(|_| format!("`{i}` is not a slice index; expected {EXPECTED}"))?;
    Ok((axis, index))
}

/// `x|y|z` (or `sagittal|coronal|axial`).
pub fn parse_axis(s: &str) -> Result<Axis, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an axis; expected x, y, z, sagittal, coronal or axial"))
}

/// `ct-abdomen`, `ct-brain`, `ct-bone`, `mri` or `LO,HI` (a CT window in HU).
pub fn parse_window(s: &str) -> Result<Window, String> {
    s.parse().map_err(|e: medsa_io::Error| e.to_string())
}

/// A slice range `FIRST-LAST` (inclusive).
pub fn parse_range(s: &str) -> std::result::Result<(usize, usize), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("`{s}`: expected FIRST-LAST, e.g. 64-73"))?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| format!("`{a}` is not a slice index"))?,
        b.trim().parse().map_err(|_| format!("`{b}` is not a slice index"))?,
    );
    if a > b {
        return Err(format!("`{s}`: FIRST must not be after LAST"));
    }
    Ok((a, b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn boxes() {
        assert_eq!(parse_box("1,2,3,4").unwrap(), BoxPrompt { x0: 1.0, y0: 2.0, x1: 3.0, y1: 4.0 });
        assert_eq!(parse_box(" 1.5, 2 ,3,4").unwrap().x0, 1.5);
        for bad in ["1,2,3", "1,2,3,4,5", "a,2,3,4", "3,2,1,4", "1,5,3,4", "-1,2,3,4", "nan,1,2,3", ""] {
            let e = parse_box(bad).unwrap_err();
            assert!(e.contains("x0,y0,x1,y1"), "{bad}: {e}");
        }
    }

    #[test]
    fn points() {
        assert!(parse_point("3,4").unwrap().foreground);
        assert!(!parse_point("3,4,0").unwrap().foreground);
        assert!(!parse_point("3,4,bg").unwrap().foreground);
        for bad in ["3", "3,4,5,6", "3,x", "3,4,maybe", "-3,4"] {
            assert!(parse_point(bad).unwrap_err().contains("x,y"), "{bad}");
        }
    }

    #[test]
    fn slices_and_windows() {
        assert_eq!(parse_slice("z:90").unwrap(), (Axis::Z, 90));
        assert_eq!(parse_slice("axial:3").unwrap(), (Axis::Z, 3));
        assert!(parse_slice("z90").is_err());
        assert!(parse_slice("q:1").is_err());
        assert!(parse_slice("z:-1").is_err());
        assert_eq!(parse_window("mri").unwrap(), Window::Mri);
        assert_eq!(parse_window("ct-bone").unwrap(), Window::Hu(HuWindow::BONE));
        assert_eq!(parse_window("-100,200").unwrap(), Window::Hu(HuWindow::new(-100.0, 200.0).unwrap()));
        assert!(parse_window("200,-100").is_err());
        assert!(parse_window("soft").is_err());
    }
}
