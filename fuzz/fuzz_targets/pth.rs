//! `.pth` bytes -> `read_pth_bytes` (zip + restricted unpickler + strided views) -> f32
//! tensors as `medsa` takes them (`lite::read_weights`) -> detection and model building.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use medsa_io::pth::{read_pth_bytes, TensorData};
use medsa_model::weights::TensorMap;

fuzz_target!(|data: &[u8]| {
    let Ok(ck) = read_pth_bytes(data, "<fuzz>") else { return };
    let _ = ck.layout();
    for (k, _) in ck.fields() {
        let _ = ck.field(k);
    }
    let mut tensors = TensorMap::new();
    for (name, t) in ck.tensors() {
        assert_eq!(ck.get(name).map(|t| t.numel()), Some(t.numel()));
        let converted = t.to_tensor();
        if let (TensorData::F32(_), Ok(tensor)) = (&t.data, converted) {
            tensors.insert(name.clone(), tensor);
        }
    }
    common::load_tensors(tensors);
});
