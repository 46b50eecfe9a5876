//! Peak RSS of segmenting a NIfTI volume with the `VolumePredictor` (issue 4, "Done when"):
//! reads the volume (default: Colin27 `ch2.nii.gz`), applies the MRI window, segments it along z
//! with a tiny random Med-SA (img 32, width 16, 2 blocks) at D = 8 with a click on every slice,
//! writes the mask as `.nii.gz`, and prints the peak RSS (`VmHWM`) against
//! `3 × volume f32 bytes` (the tiny model's few hundred KiB are not even added).
//!
//! `cargo run -p medsa-model --example volume_rss [-- VOLUME.nii.gz [OUT.nii.gz]]`

#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use medsa_io::nifti::{Labels, Volume};
use medsa_model::predictor::{Point, Prompt};
use medsa_model::volume::{SliceAxis, VolumeOptions, VolumePredictor, VolumePrompts, VolumeView};

/// `VmHWM` (peak resident set) of this process in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/volumes/colin27/ch2.nii.gz").to_string()
    });
    let output = args
        .next()
        .unwrap_or_else(|| std::env::temp_dir().join("medsa_volume_rss_mask.nii.gz").display().to_string());
    let base = peak_rss();
    let t0 = std::time::Instant::now();
    let mut vol = Volume::read(&input).unwrap();
    medsa_io::window::mri_window(vol.data_mut()).unwrap();
    let after_read = peak_rss();
    let model = medsa_model::Sam::random(&support::tiny_medsa_config(32, 1), 27).unwrap();
    let view = VolumeView::new(vol.data(), vol.dims()).unwrap();
    let (h, w) = view.slice_shape(SliceAxis::Z);
    let mut prompts = VolumePrompts::new();
    for z in 0..view.n_slices(SliceAxis::Z) {
        prompts.insert(z, Prompt::points(vec![Point::foreground(w as f32 / 2.0, h as f32 / 2.0)]));
    }
    let opts = VolumeOptions { axis: SliceAxis::Z, depth: 8, ..VolumeOptions::default() };
    let seg = VolumePredictor::new(&model, &medsa_ref::Cpu, opts)
        .unwrap()
        .segment(&view, &prompts, |_, _| {})
        .unwrap();
    vol.write_labels(&output, Labels::U8(&seg.labels)).unwrap();
    let peak = peak_rss();
    let vol_bytes = vol.data().len() * 4;
    // The tiny model is well under 1 MiB; the limit leaves it out, which only makes it stricter.
    let limit = 3 * vol_bytes;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "volume {:?} ({:.1} MiB as f32), {} chunks encoded, {:.2} s",
        vol.dims(),
        mib(vol_bytes),
        seg.chunks_encoded,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "peak RSS: at start {:.1} MiB, after read + window {:.1} MiB, overall {:.1} MiB",
        mib(base),
        mib(after_read),
        mib(peak)
    );
    println!(
        "limit 3 x volume f32 = {:.1} MiB (model not added): {}",
        mib(limit),
        if peak <= limit { "OK" } else { "OVER" }
    );
    println!("mask written to {output}");
}
