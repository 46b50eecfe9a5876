//! The training manifest: one JSON file that names the data and how it splits.
//!
//! ```json
//! {
//!   "volumes": [
//!     {"id": "colin27", "image": "colin27/ch2.nii.gz", "labels": "colin27/aal.nii.gz", "window": "mri"}
//!   ],
//!   "axis": "z",
//!   "train": {"label_ids": [37, 41, 71, 73, 75, 77], "exclude_slices": [[64, 73]]},
//!   "validation": [
//!     {"name": "slab", "label_ids": [37, 41, 71, 73, 75, 77], "slices": [64, 73]},
//!     {"name": "right", "label_ids": [38, 42, 72, 74, 76, 78]}
//!   ]
//! }
//! ```
//!
//! - `volumes`: 3-D NIfTI image + label-map pairs on one grid; `window` is `mri` (the default),
//!   `ct-abdomen`, `ct-brain`, `ct-bone` or `"LO,HI"` in HU, mapping intensities to 8-bit slices as
//!   `medsa eval` does. `id` defaults to the image's file stem.
//! - `images`: 2-D `image` / `mask` files (`case`, `pixel_spacing_mm` optional), as in the
//!   `medsa eval` manifest; a mask's non-zero pixels are label 1. A bare JSON array of such cases
//!   (an eval manifest) is a training manifest with a seeded 80 / 20 split by case.
//! - `axis`: slicing axis of the volumes, `x|y|z` (or sagittal / coronal / axial).
//! - `train` and each `validation` set select by `sources` (volume or case ids; default all),
//!   `label_ids` (default every non-zero label of the selected sources), `slices` (an inclusive
//!   `[first, last]` range) and `exclude_slices` (inclusive ranges left out).
//! - `split` (`{"seed": 0, "validation_fraction": 0.2}`): holds out that fraction of the sources
//!   (at least one) as a validation set `held-out` with the training labels, the rest training.
//!
//! Paths are relative to the manifest's folder (or absolute). Every problem is an
//! [`Error::Manifest`] naming the manifest and the entry.

use crate::{Error, Result};
use medsa_io::nifti::Axis;
use medsa_io::window::Window;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One 3-D image + label map.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeEntry {
    /// Source id (default: the image's file stem).
    #[serde(default)]
    pub id: Option<String>,
    /// Intensity volume.
    pub image: String,
    /// Label map on the same grid.
    pub labels: String,
    /// Intensity window (default `mri`).
    #[serde(default)]
    pub window: Option<String>,
}

/// One 2-D image + mask (further fields, as the `cases2d` manifest has, are ignored).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ImageEntry {
    /// Source id (default: the image's file stem).
    #[serde(default, alias = "id")]
    pub case: Option<String>,
    /// Gray or RGB image file (PNG, JPEG).
    pub image: String,
    /// Mask file; non-zero pixels are label 1.
    pub mask: String,
    /// Pixel spacing `[row, column]` in mm (default 1 mm).
    #[serde(default, alias = "spacing")]
    pub pixel_spacing_mm: Option<[f64; 2]>,
}

/// Which samples a set takes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// Source ids (default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    /// Label ids (default every non-zero label present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_ids: Option<Vec<i64>>,
    /// Inclusive slice range `[first, last]` (default all slices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<[usize; 2]>,
    /// Inclusive slice ranges left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_slices: Vec<[usize; 2]>,
}

impl Selection {
    /// Whether slice `z` is in the selection's range and not excluded.
    pub fn takes_slice(&self, z: usize) -> bool {
        self.slices.is_none_or(|[a, b]| (a..=b).contains(&z))
            && !self.exclude_slices.iter().any(|[a, b]| (*a..=*b).contains(&z))
    }

    /// Whether source `id` is selected.
    pub fn takes_source(&self, id: &str) -> bool {
        self.sources.as_ref().is_none_or(|s| s.iter().any(|x| x == id))
    }
}

/// A named validation set.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ValidationSet {
    /// Name in logs and reports.
    pub name: String,
    /// What it takes.
    #[serde(flatten)]
    pub select: Selection,
}

/// A seeded random split by source.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Seed of the shuffle.
    pub seed: u64,
    /// Fraction of the sources held out (at least one).
    pub validation_fraction: f64,
}

/// The manifest as written.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// 3-D sources.
    #[serde(default)]
    pub volumes: Vec<VolumeEntry>,
    /// 2-D sources.
    #[serde(default)]
    pub images: Vec<ImageEntry>,
    /// Slicing axis (default `z`).
    #[serde(default)]
    pub axis: Option<String>,
    /// The training selection.
    #[serde(default)]
    pub train: Selection,
    /// Validation selections.
    #[serde(default)]
    pub validation: Vec<ValidationSet>,
    /// A random split by source.
    #[serde(default)]
    pub split: Option<Split>,
}

impl Manifest {
    /// Reads and checks a manifest; returns it with the folder its paths are relative to.
    pub fn read(path: &Path) -> Result<(Manifest, PathBuf)> {
        let bad = |msg: String| Error::Manifest { path: path.into(), msg };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let expected =
            "expected an object with `volumes` or `images` (see the medsa_train::manifest docs) or a JSON \
                        array of {\"image\", \"mask\"} cases";
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("{e}; {expected}")))?;
        let m = if value.is_array() {
            let images = serde_json::from_value(value).map_err(|e| bad(format!("{e}; {expected}")))?;
            Manifest {
                images,
                split: Some(Split { seed: 0, validation_fraction: 0.2 }),
                ..Manifest::default()
            }
        } else {
            serde_json::from_value(value).map_err(|e| bad(format!("{e}; {expected}")))?
        };
        m.check().map_err(bad)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((m, dir))
    }

    /// The slicing axis.
    pub fn axis(&self) -> std::result::Result<Axis, String> {
        match &self.axis {
            None => Ok(Axis::Z),
            Some(a) => {
                a.parse().map_err(|_| format!("axis `{a}`: expected x, y, z, sagittal, coronal or axial"))
            }
        }
    }

    /// The window of volume `i`.
    pub fn window(&self, i: usize) -> std::result::Result<Window, String> {
        match self.volumes.get(i).and_then(|v| v.window.as_deref()) {
            None => Ok(Window::Mri),
            Some(w) => w.parse().map_err(|e: medsa_io::Error| format!("volume {i}: window: {e}")),
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.volumes.is_empty() && self.images.is_empty() {
            return Err("lists no `volumes` and no `images`".into());
        }
        self.axis()?;
        for i in 0..self.volumes.len() {
            self.window(i)?;
        }
        let mut sets: Vec<(&str, &Selection)> = vec![("train", &self.train)];
        sets.extend(self.validation.iter().map(|v| (v.name.as_str(), &v.select)));
        for (name, s) in sets {
            for r in s.slices.iter().chain(&s.exclude_slices) {
                if r[0] > r[1] {
                    return Err(format!("set `{name}`: slice range {r:?} has first > last"));
                }
            }
        }
        if let Some(sp) = &self.split {
            if !(sp.validation_fraction > 0.0 && sp.validation_fraction < 1.0) {
                return Err(format!(
                    "split.validation_fraction {} must be in (0, 1)",
                    sp.validation_fraction
                ));
            }
        }
        let mut names: Vec<&str> = self.validation.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("two validation sets are named `{}`", w[0]));
        }
        Ok(())
    }
}
