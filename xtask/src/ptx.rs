//! `cargo xtask ptx`: compiles every kernel config with NVRTC for sm_80 and sm_90 (no GPU
//! needed), writes the PTX under `target/ptx/<arch>/`, assembles it with `ptxas -v` and prints
//! registers, shared memory and spills per kernel. Fails on a compile error or on any spill in an
//! attention kernel.
//!
//! NVRTC and ptxas come from the pinned PyPI wheels that `.ci/cuda-wheels.sh` installs into
//! `.cuda-wheels/`. If libnvrtc is not loadable yet, the command re-executes itself with
//! `LD_LIBRARY_PATH` pointing at the wheels (the dynamic loader reads it only at start-up).

use anyhow::{bail, Context, Result};
use medsa_kernels::geometry;
use medsa_kernels::source::{
    all_configs, compile_ptx, nvrtc_available, nvrtc_version, Arch, KernelConfig, Source,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Arguments of `cargo xtask ptx`.
#[derive(clap::Args, Debug, Clone)]
pub struct PtxArgs {
    /// Target architectures, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["sm_80".to_string(), "sm_90".to_string()])]
    pub arch: Vec<String>,
    /// Output directory (default: <repo>/target/ptx).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// ptxas to use (default: the wheel's, then PATH).
    #[arg(long)]
    pub ptxas: Option<PathBuf>,
    /// Directory the wheels were installed into (default: <repo>/.cuda-wheels).
    #[arg(long)]
    pub wheels: Option<PathBuf>,
}

const REEXEC_ENV: &str = "MEDSA_XTASK_NVRTC_REEXEC";

/// The repository root: the nearest ancestor of the working directory that holds
/// `.ci/cuda-wheels.sh`, else the parent of the xtask crate as it was built.
pub fn repo_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(root) = cwd.ancestors().find(|d| d.join(".ci/cuda-wheels.sh").is_file()) {
            return root.to_path_buf();
        }
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The wheel install directory: `--wheels`, `$CUDA_WHEELS_DIR`, or `<repo>/.cuda-wheels`.
pub fn wheels_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("CUDA_WHEELS_DIR") {
        return PathBuf::from(p);
    }
    repo_root().join(".cuda-wheels")
}

/// Makes libnvrtc loadable: returns `Ok(None)` when it already is, or `Ok(Some(code))` after
/// re-running this process with `LD_LIBRARY_PATH` set to the wheels (the caller exits with
/// `code`).
pub fn ensure_nvrtc(wheels: &Path) -> Result<Option<i32>> {
    if nvrtc_available() {
        return Ok(None);
    }
    let lib = wheels.join("nvidia/cu13/lib");
    if !lib.join("libnvrtc.so.13").is_file() {
        bail!(
            "libnvrtc.so.13 is not loadable and {} has no NVRTC wheel: run `.ci/cuda-wheels.sh` \
             (installs the pinned NVRTC 13.0.88 / ptxas wheels into .cuda-wheels) and retry",
            wheels.display()
        );
    }
    if std::env::var_os(REEXEC_ENV).is_some() {
        bail!("libnvrtc.so.13 is in {} but still not loadable (wrong architecture or glibc?)", lib.display());
    }
    let mut path = lib.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let status = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_LIBRARY_PATH", path)
        .env(REEXEC_ENV, "1")
        .status()
        .context("re-running xtask with LD_LIBRARY_PATH set")?;
    Ok(Some(status.code().unwrap_or(1)))
}

fn find_ptxas(args: &PtxArgs, wheels: &Path) -> Result<PathBuf> {
    if let Some(p) = &args.ptxas {
        return Ok(p.clone());
    }
    let w = wheels.join("nvidia/cu13/bin/ptxas");
    if w.is_file() {
        return Ok(w);
    }
    if Command::new("ptxas").arg("--version").output().is_ok() {
        return Ok(PathBuf::from("ptxas"));
    }
    bail!("no ptxas: run `.ci/cuda-wheels.sh` or pass --ptxas")
}

fn parse_arch(s: &str) -> Result<Arch> {
    let digits = s.trim().trim_start_matches("sm_").trim_start_matches("compute_");
    let v: u32 = digits.parse().with_context(|| format!("bad arch {s:?} (want sm_80, sm_90, ...)"))?;
    let arch = Arch { major: v / 10, minor: v % 10 };
    if !arch.supported() {
        bail!("{s}: the kernels need sm_80 or newer (bf16 mma.sync, cp.async)");
    }
    Ok(arch)
}

/// Resource usage of one entry point as `ptxas -v` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasInfo {
    /// Entry point name.
    pub entry: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory bytes.
    pub smem: u32,
    /// Stack frame bytes.
    pub stack: u32,
    /// Spill store bytes.
    pub spill_stores: u32,
    /// Spill load bytes.
    pub spill_loads: u32,
}

fn num_before(line: &str, key: &str) -> Option<u32> {
    let i = line.find(key)?;
    line[..i].split(|c: char| !c.is_ascii_digit()).rev().find(|t| !t.is_empty())?.parse().ok()
}

/// Parses the `ptxas -v` log into one record per entry point.
pub fn parse_ptxas(log: &str) -> Vec<PtxasInfo> {
    let mut out: Vec<PtxasInfo> = Vec::new();
    let mut cur: Option<usize> = None;
    for line in log.lines() {
        let quoted = line.split('\'').nth(1);
        if line.contains("Compiling entry function") || line.contains("Function properties for") {
            if let Some(name) = quoted.or_else(|| line.rsplit(' ').next()) {
                let name = name.trim().to_string();
                cur = Some(match out.iter().position(|i| i.entry == name) {
                    Some(i) => i,
                    None => {
                        out.push(PtxasInfo { entry: name, ..Default::default() });
                        out.len() - 1
                    }
                });
            }
            continue;
        }
        let Some(i) = cur else { continue };
        if line.contains("stack frame") {
            out[i].stack = num_before(line, "bytes stack frame").unwrap_or(0);
            out[i].spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
            out[i].spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used") && line.contains("registers") {
            out[i].registers = num_before(line, "registers").unwrap_or(0);
            out[i].smem = num_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// Dynamic shared memory of `entry` at a representative model shape, for the report.
fn typical_dynamic_smem(cfg: &KernelConfig, entry: &str) -> Option<(u32, &'static str)> {
    let def = |k: &str| cfg.defines.iter().find(|(n, _)| *n == k).map(|(_, v)| *v as usize);
    let hd = def("HEAD_DIM").unwrap_or(64);
    let g = 64;
    let l = match (cfg.source, entry) {
        (Source::Attention, "attention_flash_fwd") => {
            (geometry::attention_flash(g * g, g * g, 12, hd, Some((g, g))).ok()?, "global 64x64")
        }
        (Source::Attention, "attention_window_fwd") => {
            (geometry::attention_window(196, 196, 300, hd, Some((14, 14))).ok()?, "window 14x14")
        }
        (Source::AttentionScalar, _) => {
            (geometry::attention_scalar(g * g, 12, 80, Some((g, g))).ok()?, "hd80 64x64")
        }
        (Source::DepthAttention, _) => {
            (geometry::depth_attention(1000, 16, 8, 80, 2, 4, geometry::DEFAULT_SMEM).ok()?, "D=8 hd80")
        }
        (Source::HyperChain, _) => {
            (geometry::hyper_chain(8, 7, def("HYP_R")?, def("HYP_LAYERS")?).ok()?, "T=7")
        }
        _ => return None,
    };
    Some((l.0.smem, l.1))
}

/// Runs `cargo xtask ptx`.
pub fn run(args: &PtxArgs) -> Result<()> {
    let wheels = wheels_dir(args.wheels.as_deref());
    if let Some(code) = ensure_nvrtc(&wheels)? {
        if code == 0 {
            return Ok(());
        }
        std::process::exit(code);
    }
    let archs: Vec<Arch> = args.arch.iter().map(|a| parse_arch(a)).collect::<Result<_>>()?;
    let ptxas = find_ptxas(args, &wheels)?;
    let out_root = args.out.clone().unwrap_or_else(|| repo_root().join("target/ptx"));
    let (maj, min) = nvrtc_version().unwrap_or((0, 0));
    println!("NVRTC {maj}.{min}, ptxas {}, output {}", ptxas.display(), out_root.display());

    let mut failures: Vec<String> = Vec::new();
    println!(
        "{:<24} {:<60} {:<6} {:>5} {:>9} {:>11} {:>6} {:>12} {:>12}",
        "kernel", "config", "arch", "regs", "smem(st)", "smem(dyn)", "stack", "spill st/ld", "at"
    );
    for arch in &archs {
        let dir = out_root.join(arch.sm());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for cfg in all_configs() {
            let ptx = match compile_ptx(&cfg, *arch) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("{}", e));
                    continue;
                }
            };
            let ptx_path = dir.join(format!("{}.ptx", cfg.stem()));
            std::fs::write(&ptx_path, &ptx).with_context(|| format!("writing {}", ptx_path.display()))?;
            let cubin = dir.join(format!("{}.cubin", cfg.stem()));
            let res = Command::new(&ptxas)
                .arg("-v")
                .arg(format!("-arch={}", arch.sm()))
                .arg("-o")
                .arg(&cubin)
                .arg(&ptx_path)
                .output()
                .with_context(|| format!("running {}", ptxas.display()))?;
            let log =
                format!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
            if !res.status.success() {
                failures.push(format!("ptxas failed on {} ({}):\n{log}", cfg.label(), arch.sm()));
                continue;
            }
            let infos = parse_ptxas(&log);
            for entry in cfg.source.entries() {
                let Some(info) = infos.iter().find(|i| i.entry == *entry) else {
                    failures.push(format!(
                        "{}: ptxas reported nothing for {entry} ({})",
                        cfg.label(),
                        arch.sm()
                    ));
                    continue;
                };
                let (dyn_smem, at) = typical_dynamic_smem(&cfg, entry)
                    .map_or(("-".to_string(), ""), |(b, s)| (b.to_string(), s));
                let spill = info.spill_stores + info.spill_loads > 0;
                println!(
                    "{:<24} {:<60} {:<6} {:>5} {:>9} {:>11} {:>6} {:>12} {:>12}{}",
                    entry,
                    cfg.label(),
                    arch.sm(),
                    info.registers,
                    info.smem,
                    dyn_smem,
                    info.stack,
                    format!("{}/{}", info.spill_stores, info.spill_loads),
                    at,
                    if spill { "  SPILL" } else { "" }
                );
                if spill && cfg.is_attention() {
                    failures.push(format!(
                        "{entry} ({}, {}) spills {} B / {} B",
                        cfg.label(),
                        arch.sm(),
                        info.spill_stores,
                        info.spill_loads
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("error: {f}");
        }
        bail!("{} failure(s)", failures.len());
    }
    println!(
        "ok: {} configs x {} archs compiled, no spills in attention kernels",
        all_configs().len(),
        archs.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_log() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'attention_flash_fwd' for 'sm_80'\n\
ptxas info    : Function properties for attention_flash_fwd\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 168 registers, used 1 barriers, 1024 bytes smem, 536 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'gelu_fwd' for 'sm_80'\n\
ptxas info    : Function properties for gelu_fwd\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 12 registers, used 0 barriers, 380 bytes cmem[0]\n";
        let v = parse_ptxas(log);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            PtxasInfo {
                entry: "attention_flash_fwd".into(),
                registers: 168,
                smem: 1024,
                stack: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert_eq!(v[1].registers, 12);
        assert_eq!(v[1].smem, 0);
        assert!(parse_arch("sm_75").is_err());
        assert_eq!(parse_arch("sm_90").ok(), Some(Arch::SM90));
    }
}
