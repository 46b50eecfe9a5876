//! Helpers shared by the targets: the small golden model config and model building from parsed
//! tensors the way `medsa` does it (detect, then load).
#![allow(dead_code)]

use medsa_model::config::ModelConfig;
use medsa_model::detect::detect;
use medsa_model::weights::TensorMap;
use medsa_model::{LoadOptions, Sam};
use std::sync::OnceLock;

/// The `config` of the golden case `sam_tiny` (../shared/golden/sam_tiny.io.safetensors),
/// embedded so the targets need no files at run time.
pub fn sam_tiny() -> &'static ModelConfig {
    static CFG: OnceLock<ModelConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../configs/sam_tiny.json")).expect("embedded JSON");
        medsa_model::golden::model_config(&v).expect("embedded sam_tiny config")
    })
}

/// Largest total element count for which a model is built from shapes alone (the harness
/// stands in for the file data a real checkpoint would have to carry).
pub const MAX_BUILD_NUMEL: usize = 1 << 22;

/// What `medsa` does with a checkpoint's tensors: detect the network, build it; and, as a fixed
/// point, load them into the small golden SAM.
pub fn load_tensors(tensors: TensorMap) {
    let detected = detect(tensors.iter().map(|(k, t)| (k.as_str(), t.shape())));
    if let Ok(d) = detected {
        let _ = Sam::from_tensors(&d.config, tensors.clone(), LoadOptions::default());
    }
    let _ = Sam::from_tensors(sam_tiny(), tensors, LoadOptions::default());
}
