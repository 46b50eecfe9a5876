//! Structure names of a label map: a text file with `id name` per line (further columns
//! ignored; other lines skipped), as atlases ship them (`aal.nii.txt` beside `aal.nii.gz`).

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads `id name` lines.
pub fn read_label_names(path: &Path) -> Result<BTreeMap<i64, String>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.to_string()))
        })
        .collect())
}

/// The names file beside a label map, if present: `aal.nii.gz` → `aal.nii.txt`, else `aal.txt`.
pub fn label_names_beside(labels: &Path) -> Option<PathBuf> {
    let name = labels.file_name()?.to_string_lossy().into_owned();
    let base = name.strip_suffix(".gz").unwrap_or(&name);
    let candidates = [format!("{base}.txt"), format!("{}.txt", base.strip_suffix(".nii").unwrap_or(base))];
    candidates.iter().map(|c| labels.with_file_name(c)).find(|p| p.is_file())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_beside_a_label_map() {
        let dir = std::env::temp_dir().join(format!("medsa-label-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("atlas.nii.txt"),
            "37 Hippocampus_L 4101\n# comment\nx y\n38 Hippocampus_R\n",
        )
        .unwrap();
        let p = label_names_beside(&dir.join("atlas.nii.gz")).unwrap();
        let names = read_label_names(&p).unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(names[&37], "Hippocampus_L");
        assert!(label_names_beside(&dir.join("other.nii.gz")).is_none());
        assert!(read_label_names(&dir.join("missing.txt")).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
