//! safetensors bytes -> `parse_safetensors` -> checkpoint detection -> `Sam::from_tensors`
//! (with the detected config and with the golden `sam_tiny` config).
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = medsa_model::weights::parse_safetensors(data) {
        common::load_tensors(tensors);
    }
});
