//! NIfTI-1 bytes -> `Volume::from_bytes`, as given (plain or gzip) and, for plain input, also
//! gzip-compressed; then what `medsa segment-volume` does with a volume: slices along every
//! axis, intensity windows, label masks written on the input's grid and read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medsa_io::nifti::{Axis, Labels, Volume};
use medsa_io::window::{mri_window, HuWindow};
use std::io::Write;

fn exercise(bytes: &[u8]) {
    let Ok(v) = Volume::from_bytes(bytes, "<fuzz>") else { return };
    let dims = v.dims();
    assert_eq!(v.data().len(), dims.iter().product::<usize>());
    for s in v.spacing() {
        assert!(s.is_finite() && s > 0.0);
    }
    for axis in [Axis::X, Axis::Y, Axis::Z] {
        let n = dims[axis.index()];
        for i in [0, n / 2, n - 1, n] {
            let _ = v.slice(axis, i);
        }
    }
    let mut data = v.data().to_vec();
    HuWindow::BRAIN.apply(&mut data);
    let mut data = v.data().to_vec();
    let _ = mri_window(&mut data);
    let labels = vec![1u8; v.data().len()];
    if let Ok(out) = v.encode_labels(Labels::U8(&labels)) {
        let back = Volume::from_bytes(&out, "<labels>").expect("written labels read back");
        assert_eq!(back.dims(), dims);
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if !data.starts_with(&[0x1f, 0x8b]) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if gz.write_all(data).is_ok() {
            if let Ok(bytes) = gz.finish() {
                exercise(&bytes);
            }
        }
    }
});
