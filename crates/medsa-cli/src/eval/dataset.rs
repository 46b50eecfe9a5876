//! Loading the dataset of `medsa eval` and checking it before the model is loaded: a 2-D
//! manifest of image / mask pairs, or a 3-D volume with its label map and structures (formats
//! in the [parent module's docs](super)); and the dataset line of the report.

use anyhow::{anyhow, bail, Context, Result};
use medsa_eval::Mask;
use medsa_io::image::{load_image, ColorMode};
use medsa_io::label_names::{label_names_beside, read_label_names};
use medsa_io::nifti::Volume;
use medsa_model::preprocess::ImageU8;
use serde::Deserialize;
use std::path::Path;

use super::{EvalArgs, NONZERO};

/// The dataset of one run.
pub enum Dataset {
    /// `--data`: 2-D cases.
    Cases(Vec<Case2d>),
    /// `--volume`: one volume and its structures.
    Volume(Box<VolumeData>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ManifestFile {
    List(Vec<ManifestCase>),
    Object { cases: Vec<ManifestCase> },
}

#[derive(Deserialize)]
struct ManifestCase {
    case: Option<String>,
    image: String,
    mask: String,
    #[serde(default, alias = "spacing")]
    pixel_spacing_mm: Option<Vec<f64>>,
}

/// One 2-D case of a manifest.
pub struct Case2d {
    /// Case id (unique in the manifest).
    pub id: String,
    /// The image, 8-bit gray.
    pub image: ImageU8,
    /// Ground truth `[H, W]`, not empty.
    pub gt: Mask,
    /// Pixel spacing `[row, column]` in mm.
    pub spacing: [f64; 2],
}

fn gray(path: &Path) -> Result<ImageU8> {
    let img =
        load_image(path, ColorMode::Gray).with_context(|| format!("reading image {}", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    ImageU8::new(w, h, 1, img.into_data()).with_context(|| format!("image {}", path.display()))
}

/// Reads and checks a 2D manifest and every image and mask it names.
pub fn load_manifest(path: &Path, limit: Option<usize>) -> Result<Vec<Case2d>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading manifest {}", path.display()))?;
    let file: ManifestFile = serde_json::from_str(&text).with_context(|| {
        format!(
            "parsing manifest {}: expected a JSON array of cases (or {{\"cases\": [...]}}) with \
             \"image\" and \"mask\" paths",
            path.display()
        )
    })?;
    let list = match file {
        ManifestFile::List(v) | ManifestFile::Object { cases: v } => v,
    };
    if list.is_empty() {
        bail!("manifest {} lists no cases", path.display());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let n = limit.unwrap_or(list.len()).min(list.len());
    let mut out = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    for (i, c) in list.into_iter().take(n).enumerate() {
        let image_path = dir.join(&c.image);
        let mask_path = dir.join(&c.mask);
        let id = c.case.clone().unwrap_or_else(|| {
            image_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("case{i}"))
        });
        if !seen.insert(id.clone()) {
            bail!("manifest {}: case id {id:?} appears twice", path.display());
        }
        let image = gray(&image_path)?;
        let m = gray(&mask_path)?;
        if (m.width, m.height) != (image.width, image.height) {
            bail!(
                "case {id}: mask {} is {}x{} but image {} is {}x{}",
                mask_path.display(),
                m.width,
                m.height,
                image_path.display(),
                image.width,
                image.height
            );
        }
        let gt = Mask::new(&[m.height, m.width], m.data.iter().map(|&v| v > 0).collect())?;
        if !gt.any() {
            bail!("case {id}: mask {} is empty; prompts cannot be simulated", mask_path.display());
        }
        let spacing = match c.pixel_spacing_mm.as_deref() {
            None => [1.0, 1.0],
            Some(&[r, col]) if r.is_finite() && r > 0.0 && col.is_finite() && col > 0.0 => [r, col],
            Some(s) => bail!("case {id}: pixel_spacing_mm {s:?} is not two positive numbers [row, column]"),
        };
        out.push(Case2d { id, image, gt, spacing });
    }
    Ok(out)
}

/// The dataset line of the report for 2-D cases.
pub fn describe_2d(args: &EvalArgs, cases: &[Case2d]) -> String {
    let data = args.data.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
    let spacing: Vec<String> = {
        let mut v: Vec<String> =
            cases.iter().map(|c| format!("{} x {} mm", c.spacing[0], c.spacing[1])).collect();
        v.dedup();
        v
    };
    format!("- dataset: 2D manifest `{data}`, {} cases; pixel spacing {}\n", cases.len(), spacing.join(", "))
}

/// A volume ready for evaluation.
pub struct VolumeData {
    /// 8-bit intensities, x fastest.
    pub image: Vec<u8>,
    /// Label values, x fastest.
    pub labels: Vec<i64>,
    /// The label map (grid and header for the written predictions).
    pub label_volume: Volume,
    /// `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Voxel spacing in mm along x, y, z.
    pub spacing: [f64; 3],
    /// `(label id, display name)` of each structure evaluated.
    pub structures: Vec<(i64, String)>,
}

/// Reads and checks `--volume`, `--labels` (restricted to `--slices`), `--label-ids` and the
/// structure names.
pub fn load_volume(args: &EvalArgs, vol_path: &Path) -> Result<VolumeData> {
    let labels_path = args.labels.as_deref().ok_or_else(|| anyhow!("--volume needs --labels"))?;
    if args.label_ids.is_empty() {
        bail!("--volume needs --label-ids (e.g. --label-ids 77)");
    }
    let vol = Volume::read(vol_path).with_context(|| format!("reading volume {}", vol_path.display()))?;
    let lab =
        Volume::read(labels_path).with_context(|| format!("reading label map {}", labels_path.display()))?;
    if vol.dims() != lab.dims() {
        bail!(
            "volume {} is {:?} but label map {} is {:?}",
            vol_path.display(),
            vol.dims(),
            labels_path.display(),
            lab.dims()
        );
    }
    let image = args.window.to_u8(vol.data()).with_context(|| format!("windowing {}", vol_path.display()))?;
    let mut labels: Vec<i64> = lab.data().iter().map(|&v| v.round() as i64).collect();
    if let Some((first, last)) = args.slices {
        let n = lab.dims()[args.axis.index()];
        if last >= n {
            bail!("--slices {first}-{last}: the volume has {n} slices along {:?}", args.axis);
        }
        let dims = lab.dims();
        for (i, l) in labels.iter_mut().enumerate() {
            let c = [i % dims[0], (i / dims[0]) % dims[1], i / (dims[0] * dims[1])];
            if !(first..=last).contains(&c[args.axis.index()]) {
                *l = 0;
            }
        }
    }
    let names_path = args.label_names.clone().or_else(|| label_names_beside(labels_path));
    let names = match &names_path {
        Some(p) => read_label_names(p).with_context(|| format!("reading label names {}", p.display()))?,
        None => Default::default(),
    };
    let mut structures = Vec::new();
    if args.label_ids.contains(&NONZERO) {
        if args.label_ids.len() > 1 {
            bail!("--label-ids nonzero stands alone (it makes the label map binary)");
        }
        labels.iter_mut().for_each(|l| *l = i64::from(*l != 0));
        if !labels.contains(&1) {
            bail!("{} has no non-zero voxel", labels_path.display());
        }
        structures.push((1, "non-zero".to_string()));
    }
    for &id in args.label_ids.iter().filter(|&&i| i != NONZERO) {
        if structures.iter().any(|(i, _)| *i == id) {
            continue;
        }
        if !labels.contains(&id) {
            bail!("label {id} does not occur in {}", labels_path.display());
        }
        let name = names.get(&id).map(|n| format!("{id} {n}")).unwrap_or_else(|| id.to_string());
        structures.push((id, name));
    }
    let s = lab.spacing();
    let spacing = [s[0] as f64, s[1] as f64, s[2] as f64];
    if spacing.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        bail!("label map {} has voxel spacing {s:?}; need positive pixdim", labels_path.display());
    }
    Ok(VolumeData { image, labels, dims: lab.dims(), spacing, structures, label_volume: lab })
}

/// The dataset line of the report for a volume.
pub fn describe_3d(args: &EvalArgs, v: &VolumeData) -> String {
    format!(
        "- dataset: 3D volume `{}`, labels `{}` ({} x {} x {} voxels, spacing {} x {} x {} mm), slicing axis {:?}{}, \
         window `{}`; structures: {}\n",
        args.volume.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
        args.labels.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
        v.dims[0],
        v.dims[1],
        v.dims[2],
        v.spacing[0],
        v.spacing[1],
        v.spacing[2],
        args.axis,
        args.slices.map(|(a, b)| format!(" (slices {a}-{b} only)")).unwrap_or_default(),
        args.window.describe(),
        v.structures.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(", ")
    )
}
