//! Intensity windows that map raw voxel values to `[0, 1]`.
//!
//! - CT: a Hounsfield-unit window [`HuWindow`] (`lower`, `upper`): values are clipped to the
//!   window and mapped linearly, `lower -> 0`, `upper -> 1`. Presets: [`HuWindow::ABDOMEN`]
//!   (the default, `[-175, 250]`), [`HuWindow::BRAIN`] (`[0, 80]`), [`HuWindow::BONE`]
//!   (`[-450, 1050]`).
//! - MRI: [`percentile_window`] clips to percentiles of the **non-zero** voxels (default
//!   0.5 % and 99.5 %, [`mri_window`]) and maps that range to `[0, 1]`; zero voxels (background)
//!   stay 0, as in MedSAM's preprocessing. Percentiles interpolate linearly between order
//!   statistics, like numpy's default `np.percentile`.
//!
//! [`Window`] is either of the two, as the command line and the training manifests name them
//! (`mri`, `ct-abdomen`, `ct-brain`, `ct-bone` or `LO,HI` in HU).
//!
//! All functions work on a flat slice, so they apply to a whole [`crate::nifti::Volume`]
//! (`volume.data_mut()`) or to one 2-D slice alike.

use crate::error::{Error, Result};

/// A CT window in Hounsfield units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HuWindow {
    /// Value mapped to 0 (and everything below it).
    pub lower: f32,
    /// Value mapped to 1 (and everything above it).
    pub upper: f32,
}

impl HuWindow {
    /// Soft-tissue abdomen window `[-175, 250]` HU (the default).
    pub const ABDOMEN: HuWindow = HuWindow { lower: -175.0, upper: 250.0 };
    /// Brain window `[0, 80]` HU.
    pub const BRAIN: HuWindow = HuWindow { lower: 0.0, upper: 80.0 };
    /// Bone window `[-450, 1050]` HU.
    pub const BONE: HuWindow = HuWindow { lower: -450.0, upper: 1050.0 };

    /// A window from its bounds; both finite and `lower < upper`.
    pub fn new(lower: f32, upper: f32) -> Result<HuWindow> {
        if !(lower.is_finite() && upper.is_finite() && lower < upper) {
            return Err(Error::InvalidArgument {
                op: "HuWindow::new",
                msg: format!("window [{lower}, {upper}] needs finite bounds with lower < upper"),
            });
        }
        Ok(HuWindow { lower, upper })
    }

    /// A window from the radiological level (centre) and width.
    pub fn from_level_width(level: f32, width: f32) -> Result<HuWindow> {
        HuWindow::new(level - width / 2.0, level + width / 2.0)
    }

    /// A preset by name: `abdomen`, `brain` or `bone`.
    pub fn preset(name: &str) -> Result<HuWindow> {
        match name.to_ascii_lowercase().as_str() {
            "abdomen" => Ok(HuWindow::ABDOMEN),
            "brain" => Ok(HuWindow::BRAIN),
            "bone" => Ok(HuWindow::BONE),
            _ => Err(Error::InvalidArgument {
                op: "HuWindow::preset",
                msg: format!("unknown window {name:?} (abdomen, brain, bone)"),
            }),
        }
    }

    /// Clips `values` to the window and maps it to `[0, 1]` in place. NaN stays NaN.
    pub fn apply(&self, values: &mut [f32]) {
        // Division, not a reciprocal product, so the bounds map exactly to 0 and 1.
        let width = self.upper - self.lower;
        for v in values {
            *v = (v.clamp(self.lower, self.upper) - self.lower) / width;
        }
    }
}

impl Default for HuWindow {
    fn default() -> Self {
        HuWindow::ABDOMEN
    }
}

/// An intensity window for a volume: a CT window in HU or the MRI percentile window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Window {
    /// A CT window in Hounsfield units.
    Hu(HuWindow),
    /// MRI: 0.5-99.5 % percentiles of the non-zero voxels ([`mri_window`]).
    Mri,
}

impl Window {
    /// What the window is, for messages and reports.
    pub fn describe(&self) -> String {
        match self {
            Window::Hu(w) => format!("CT window [{}, {}] HU", w.lower, w.upper),
            Window::Mri => "MRI window (0.5-99.5 % of non-zero voxels)".into(),
        }
    }

    /// Maps `values` to `[0, 1]` in place; a non-finite value is an error.
    pub fn apply(&self, values: &mut [f32]) -> Result<()> {
        match self {
            Window::Hu(w) => {
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(Error::InvalidArgument {
                        op: "Window::apply",
                        msg: format!("voxel {i} is {}: the volume has non-finite values", values[i]),
                    });
                }
                w.apply(values);
            }
            Window::Mri => {
                mri_window(values)?;
            }
        }
        Ok(())
    }

    /// [`Window::apply`], then 8 bits (`round(255 v)`), as the 2-D models see a slice.
    pub fn to_u8(&self, values: &[f32]) -> Result<Vec<u8>> {
        let mut v = values.to_vec();
        self.apply(&mut v)?;
        Ok(v.iter().map(|&x| (x * 255.0).round().clamp(0.0, 255.0) as u8).collect())
    }
}

impl std::str::FromStr for Window {
    type Err = Error;

    /// `mri`, `ct-abdomen`, `ct-brain`, `ct-bone` (or without `ct-`), or `LO,HI` in HU.
    fn from_str(s: &str) -> Result<Window> {
        const EXPECTED: &str = "ct-abdomen, ct-brain, ct-bone, mri or LO,HI in Hounsfield units";
        match s.trim().to_ascii_lowercase().as_str() {
            "ct-abdomen" | "abdomen" => return Ok(Window::Hu(HuWindow::ABDOMEN)),
            "ct-brain" | "brain" => return Ok(Window::Hu(HuWindow::BRAIN)),
            "ct-bone" | "bone" => return Ok(Window::Hu(HuWindow::BONE)),
            "mri" => return Ok(Window::Mri),
            _ => {}
        }
        let bad = |msg: String| Error::InvalidArgument { op: "Window::from_str", msg };
        let v: Vec<f32> = s
            .split(',')
            .map(|p| p.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(format!("`{s}`; expected {EXPECTED}")))?;
        let [lo, hi] = v[..] else {
            return Err(bad(format!("`{s}`; expected {EXPECTED}")));
        };
        HuWindow::new(lo, hi)
            .map(Window::Hu)
            .map_err(|e| bad(format!("{e}; expected {EXPECTED} with LO < HI")))
    }
}

/// [`percentile_window`] with MedSAM's MRI percentiles, 0.5 % and 99.5 %.
pub fn mri_window(values: &mut [f32]) -> Result<(f32, f32)> {
    percentile_window(values, 0.5, 99.5)
}

/// Clips `values` to the `lower_pct` and `upper_pct` percentiles of the non-zero values and
/// maps that range to `[0, 1]` in place; zero values stay 0. Returns the two percentile values.
///
/// With no non-zero value everything stays 0 and `(0, 0)` is returned; when both percentiles
/// are equal, every non-zero value maps to 0. Non-finite values are an error.
pub fn percentile_window(values: &mut [f32], lower_pct: f32, upper_pct: f32) -> Result<(f32, f32)> {
    if !(0.0..=100.0).contains(&lower_pct) || !(0.0..=100.0).contains(&upper_pct) || lower_pct > upper_pct {
        return Err(Error::InvalidArgument {
            op: "percentile_window",
            msg: format!("percentiles {lower_pct}, {upper_pct} must satisfy 0 <= lower <= upper <= 100"),
        });
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument {
            op: "percentile_window",
            msg: format!("value {} at index {i} is not finite", values[i]),
        });
    }
    let mut nz: Vec<f32> = values.iter().copied().filter(|&v| v != 0.0).collect();
    if nz.is_empty() {
        return Ok((0.0, 0.0));
    }
    let lo = percentile(&mut nz, lower_pct);
    let hi = percentile(&mut nz, upper_pct);
    for v in values.iter_mut() {
        if *v != 0.0 {
            *v = if hi > lo { (v.clamp(lo, hi) - lo) / (hi - lo) } else { 0.0 };
        }
    }
    Ok((lo, hi))
}

/// The `pct` percentile of `v` (non-empty, finite) with linear interpolation; reorders `v`.
fn percentile(v: &mut [f32], pct: f32) -> f32 {
    let pos = pct as f64 / 100.0 * (v.len() - 1) as f64;
    let k = pos.floor() as usize;
    let frac = pos - k as f64;
    let (_, &mut a, right) = v.select_nth_unstable_by(k, f32::total_cmp);
    if frac == 0.0 || right.is_empty() {
        return a;
    }
    let b = right.iter().copied().fold(f32::INFINITY, f32::min);
    (a as f64 + frac * (b as f64 - a as f64)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hu_window_clips_and_scales() {
        let mut v = [-1000.0, -175.0, 37.5, 250.0, 3000.0];
        HuWindow::default().apply(&mut v);
        assert_eq!(v, [0.0, 0.0, 0.5, 1.0, 1.0]);
        let mut v = [40.0];
        HuWindow::BRAIN.apply(&mut v);
        assert_eq!(v, [0.5]);
        assert_eq!(HuWindow::from_level_width(300.0, 1500.0).unwrap(), HuWindow::BONE);
        assert!(HuWindow::new(5.0, 5.0).is_err());
        assert!(HuWindow::new(f32::NAN, 5.0).is_err());
        assert_eq!(HuWindow::preset("Bone").unwrap(), HuWindow::BONE);
        assert!(HuWindow::preset("lung").is_err());
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        // np.percentile([1..=10], [0.5, 99.5]) = [1.045, 9.955]
        let mut v: Vec<f32> = (1..=10).map(|i| i as f32).collect();
        v.push(0.0);
        let (lo, hi) = mri_window(&mut v).unwrap();
        assert!((lo - 1.045).abs() < 1e-5 && (hi - 9.955).abs() < 1e-5, "{lo} {hi}");
        assert_eq!(v[10], 0.0);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[9], 1.0);
        assert!((v[4] - (5.0 - 1.045) / (9.955 - 1.045)).abs() < 1e-6);
        let mut z = vec![0.0f32; 4];
        assert_eq!(mri_window(&mut z).unwrap(), (0.0, 0.0));
        assert!(percentile_window(&mut [1.0, f32::NAN], 1.0, 99.0).is_err());
        assert!(percentile_window(&mut [1.0], 60.0, 50.0).is_err());
    }
}
