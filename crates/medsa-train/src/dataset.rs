//! The loaded data of a manifest: sources (volumes or 2-D cases) with 8-bit pixels and label
//! maps, the samples a selection takes, and the resolved split.
//!
//! A **sample** is one (source, slice, label) with the label present on the slice; with SD-Trans
//! (`depth = D`) it is a chunk of D consecutive slices starting at `slice`, every one of which
//! holds the label. Slices are oriented as `medsa_io::nifti::extract_slice` returns them (what
//! `medsa eval` and `segment-volume` see).

use crate::manifest::{Manifest, Selection, ValidationSet};
use crate::{Error, Result};
use medsa_eval::Mask;
use medsa_io::image::{load_image, ColorMode};
use medsa_io::label_names::{label_names_beside, read_label_names};
use medsa_io::nifti::{extract_slice, Axis, Volume};
use medsa_model::preprocess::ImageU8;
use rand::seq::SliceRandom;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Pixels and labels of one source.
#[derive(Clone, Debug)]
pub enum Pixels {
    /// A volume, x fastest, `[nx, ny, nz]`.
    Volume {
        /// 8-bit intensities after the window.
        image: Vec<u8>,
        /// Label values.
        labels: Vec<i64>,
        /// Grid size.
        dims: [usize; 3],
    },
    /// A 2-D case.
    Image {
        /// Gray 8-bit image.
        image: ImageU8,
        /// Labels, row-major: 1 where the mask is non-zero.
        labels: Vec<i64>,
    },
}

/// One volume or 2-D case.
#[derive(Clone, Debug)]
pub struct Source {
    /// Id in selections and logs.
    pub id: String,
    /// The data.
    pub pixels: Pixels,
    /// Voxel spacing in mm, `[x, y, z]` for volumes, `[column, row, 1]` for 2-D cases.
    pub spacing: [f64; 3],
}

/// One 2-D slice of a source with its labels.
#[derive(Clone, Debug)]
pub struct SliceData {
    /// Gray image.
    pub image: ImageU8,
    /// Labels, row-major.
    pub labels: Vec<i64>,
}

impl SliceData {
    /// The mask of `label` `[H, W]`.
    pub fn mask(&self, label: i64) -> Result<Mask> {
        Ok(Mask::new(
            &[self.image.height, self.image.width],
            self.labels.iter().map(|&l| l == label).collect(),
        )?)
    }
}

impl Source {
    /// Slices along `axis` (1 for a 2-D case).
    pub fn n_slices(&self, axis: Axis) -> usize {
        match &self.pixels {
            Pixels::Volume { dims, .. } => dims[axis.index()],
            Pixels::Image { .. } => 1,
        }
    }

    /// Slice `z` along `axis`.
    pub fn slice(&self, axis: Axis, z: usize) -> Result<SliceData> {
        match &self.pixels {
            Pixels::Volume { image, labels, dims } => {
                let img = extract_slice(image, *dims, axis, z)?;
                let lab = extract_slice(labels, *dims, axis, z)?;
                Ok(SliceData { image: ImageU8::new(img.width, img.height, 1, img.data)?, labels: lab.data })
            }
            Pixels::Image { image, labels } if z == 0 => {
                Ok(SliceData { image: image.clone(), labels: labels.clone() })
            }
            Pixels::Image { .. } => Err(Error::Config(format!("{}: a 2-D case has only slice 0", self.id))),
        }
    }

    /// Pixel spacing of a slice along `axis`, `[row, column]` in mm (as `medsa eval`).
    pub fn slice_spacing(&self, axis: Axis) -> [f64; 2] {
        let (col, row) = match self.pixels {
            Pixels::Image { .. } => (0, 1),
            Pixels::Volume { .. } => axis.in_plane(),
        };
        [self.spacing[row], self.spacing[col]]
    }

    /// Spacing between slices along `axis` in mm.
    pub fn slice_gap(&self, axis: Axis) -> f64 {
        match self.pixels {
            Pixels::Image { .. } => 1.0,
            Pixels::Volume { .. } => self.spacing[axis.index()],
        }
    }

    /// The label values present on each slice along `axis`.
    pub fn labels_per_slice(&self, axis: Axis) -> Result<Vec<BTreeSet<i64>>> {
        (0..self.n_slices(axis))
            .map(|z| {
                let s = match &self.pixels {
                    Pixels::Volume { labels, dims, .. } => extract_slice(labels, *dims, axis, z)?.data,
                    Pixels::Image { labels, .. } => labels.clone(),
                };
                Ok(s.into_iter().filter(|&l| l != 0).collect())
            })
            .collect()
    }
}

/// A training sample: `label` on slice `slice` (or the chunk of D slices from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Index into [`Dataset::sources`].
    pub source: usize,
    /// First slice.
    pub slice: usize,
    /// Label id.
    pub label: i64,
}

/// A manifest's data, loaded and split.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The sources.
    pub sources: Vec<Source>,
    /// Slicing axis of the volumes.
    pub axis: Axis,
    /// The training selection (after the split).
    pub train: Selection,
    /// Validation selections (after the split).
    pub validation: Vec<ValidationSet>,
    /// Label names by id (from `<labels>.txt` beside a label map, as `medsa eval`).
    pub label_names: std::collections::BTreeMap<i64, String>,
}

fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn stem(p: &Path) -> String {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.trim_end_matches(".gz").trim_end_matches(".nii").split('.').next().unwrap_or(&name).to_string()
}

impl Dataset {
    /// Loads every file a manifest names (read at `path`), checking sizes and labels.
    pub fn load(path: &Path) -> Result<Dataset> {
        let (m, dir) = Manifest::read(path)?;
        let bad = |msg: String| Error::Manifest { path: path.into(), msg };
        let axis = m.axis().map_err(bad)?;
        let mut sources = Vec::new();
        let mut label_names = std::collections::BTreeMap::new();
        for (i, v) in m.volumes.iter().enumerate() {
            let (ip, lp) = (resolve(&dir, &v.image), resolve(&dir, &v.labels));
            for p in [&ip, &lp] {
                if !p.is_file() {
                    return Err(bad(format!("volume {i}: {} does not exist", p.display())));
                }
            }
            let vol = Volume::read(&ip).map_err(|e| bad(format!("volume {i}: {}: {e}", ip.display())))?;
            let lab = Volume::read(&lp).map_err(|e| bad(format!("volume {i}: {}: {e}", lp.display())))?;
            if vol.dims() != lab.dims() {
                return Err(bad(format!(
                    "volume {i}: image {} is {:?} but labels {} are {:?}",
                    ip.display(),
                    vol.dims(),
                    lp.display(),
                    lab.dims()
                )));
            }
            let window = m.window(i).map_err(bad)?;
            let image = window.to_u8(vol.data()).map_err(|e| bad(format!("volume {i}: {e}")))?;
            let s = lab.spacing();
            let spacing = [s[0] as f64, s[1] as f64, s[2] as f64];
            if spacing.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(bad(format!("volume {i}: {} has voxel spacing {s:?}", lp.display())));
            }
            if let Some(names) = label_names_beside(&lp) {
                label_names.extend(read_label_names(&names).map_err(|e| bad(format!("volume {i}: {e}")))?);
            }
            let labels = lab.data().iter().map(|&v| v.round() as i64).collect();
            sources.push(Source {
                id: v.id.clone().unwrap_or_else(|| stem(&ip)),
                pixels: Pixels::Volume { image, labels, dims: lab.dims() },
                spacing,
            });
        }
        for (i, c) in m.images.iter().enumerate() {
            let (ip, mp) = (resolve(&dir, &c.image), resolve(&dir, &c.mask));
            for p in [&ip, &mp] {
                if !p.is_file() {
                    return Err(bad(format!("image {i}: {} does not exist", p.display())));
                }
            }
            let gray = |p: &Path| -> Result<ImageU8> {
                let img = load_image(p, ColorMode::Gray)
                    .map_err(|e| bad(format!("image {i}: {}: {e}", p.display())))?;
                let (w, h) = (img.width() as usize, img.height() as usize);
                Ok(ImageU8::new(w, h, 1, img.into_data())?)
            };
            let (image, mask) = (gray(&ip)?, gray(&mp)?);
            if (image.width, image.height) != (mask.width, mask.height) {
                return Err(bad(format!(
                    "image {i}: mask {} is {}x{} but the image is {}x{}",
                    mp.display(),
                    mask.width,
                    mask.height,
                    image.width,
                    image.height
                )));
            }
            let [r, col] = c.pixel_spacing_mm.unwrap_or([1.0, 1.0]);
            if !(r > 0.0 && col > 0.0 && r.is_finite() && col.is_finite()) {
                return Err(bad(format!("image {i}: pixel_spacing_mm [{r}, {col}] is not positive")));
            }
            let labels = mask.data.iter().map(|&v| i64::from(v > 0)).collect();
            sources.push(Source {
                id: c.case.clone().unwrap_or_else(|| stem(&ip)),
                pixels: Pixels::Image { image, labels },
                spacing: [col, r, 1.0],
            });
        }
        let mut ids = BTreeSet::new();
        if let Some(s) = sources.iter().find(|s| !ids.insert(s.id.clone())) {
            return Err(bad(format!("source id `{}` appears twice", s.id)));
        }
        let mut d =
            Dataset { sources, axis, train: m.train.clone(), validation: m.validation.clone(), label_names };
        for (name, sel) in std::iter::once(("train", &m.train))
            .chain(m.validation.iter().map(|v| (v.name.as_str(), &v.select)))
        {
            for id in sel.sources.iter().flatten() {
                if !ids.contains(id) {
                    return Err(bad(format!(
                        "set `{name}` names source `{id}`, which the manifest does not list"
                    )));
                }
            }
        }
        if let Some(split) = m.split {
            d.split_by_source(split.seed, split.validation_fraction);
        }
        Ok(d)
    }

    /// Holds out `fraction` of the training sources (at least one, and one left) as the
    /// validation set `held-out`, shuffled by `seed`.
    pub fn split_by_source(&mut self, seed: u64, fraction: f64) {
        let mut ids: Vec<String> =
            self.sources.iter().map(|s| s.id.clone()).filter(|id| self.train.takes_source(id)).collect();
        if ids.len() < 2 {
            return;
        }
        ids.shuffle(&mut medsa_eval::prompts::case_rng(seed, 0x5e11));
        let n_val = ((ids.len() as f64 * fraction).round() as usize).clamp(1, ids.len() - 1);
        let (val, train) = ids.split_at(n_val);
        let mut v = self.train.clone();
        v.sources = Some(val.to_vec());
        self.train.sources = Some(train.to_vec());
        self.validation.push(ValidationSet { name: "held-out".into(), select: v });
    }

    /// The samples of `sel` (chunks of `depth` slices), in source / slice / label order.
    pub fn samples(&self, sel: &Selection, depth: usize) -> Result<Vec<Sample>> {
        if depth == 0 {
            return Err(Error::Config("depth 0".into()));
        }
        let mut out = Vec::new();
        for (si, s) in self.sources.iter().enumerate() {
            if !sel.takes_source(&s.id) {
                continue;
            }
            let per = s.labels_per_slice(self.axis)?;
            let wanted: Vec<i64> = match &sel.label_ids {
                Some(ids) => ids.clone(),
                None => per.iter().flatten().copied().collect::<BTreeSet<_>>().into_iter().collect(),
            };
            for z in 0..per.len().saturating_sub(depth - 1) {
                if !(z..z + depth).all(|k| sel.takes_slice(k)) {
                    continue;
                }
                for &l in &wanted {
                    if (z..z + depth).all(|k| per[k].contains(&l)) {
                        out.push(Sample { source: si, slice: z, label: l });
                    }
                }
            }
        }
        Ok(out)
    }

    /// A label's name (`37 Hippocampus_L`), or its id.
    pub fn label_name(&self, id: i64) -> String {
        self.label_names.get(&id).map(|n| format!("{id} {n}")).unwrap_or_else(|| id.to_string())
    }

    /// The ids of the sources `sel` takes.
    pub fn source_ids(&self, sel: &Selection) -> Vec<String> {
        self.sources.iter().filter(|s| sel.takes_source(&s.id)).map(|s| s.id.clone()).collect()
    }
}
