//! Checkpoint detection from names and shapes, structure-aware: the input is text, one tensor
//! per line, `name<TAB>d0,d1,...` (the layout of ../shared/golden/lite_medsam_keys.txt, whose
//! middle dtype column is accepted and ignored). When the shapes are small enough the detected
//! model is also built from zero tensors of those shapes.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use medsa_core::Tensor;
use medsa_model::detect::detect;
use medsa_model::weights::TensorMap;
use medsa_model::{LoadOptions, Sam};

fn parse(text: &str) -> Vec<(String, Vec<usize>)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split('\t');
            let name = f.next()?.to_string();
            let shape = f.last()?.trim_matches(|c| c == '[' || c == ']' || c == ' ');
            let shape = shape
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().ok())
                .collect::<Option<Vec<usize>>>()?;
            Some((name, shape))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let names = parse(text);
    let Ok(d) = detect(names.iter().map(|(n, s)| (n.as_str(), s.as_slice()))) else { return };
    // Build the model only when a file with these shapes would be of a plausible size.
    let mut total = 0usize;
    for (_, s) in &names {
        match s.iter().try_fold(1usize, |a, &x| a.checked_mul(x)).and_then(|n| total.checked_add(n)) {
            Some(t) if t <= common::MAX_BUILD_NUMEL => total = t,
            _ => return,
        }
    }
    let mut tensors = TensorMap::new();
    for (n, s) in names {
        if n.ends_with("num_batches_tracked") {
            continue;
        }
        let Ok(t) = Tensor::zeros(s) else { return };
        tensors.insert(n, t);
    }
    let _ = Sam::from_tensors(&d.config, tensors, LoadOptions::default());
});
