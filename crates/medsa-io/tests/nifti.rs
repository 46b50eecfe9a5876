//! NIfTI reading, writing, slicing and windows on the real volumes in `../shared/data/volumes`.

#![allow(clippy::unwrap_used)]

mod common;

use medsa_io::nifti::{extract_slice, insert_slice, Axis, Labels, Volume};
use medsa_io::window::{mri_window, HuWindow};
use medsa_io::{image, Error};

fn colin(name: &str) -> Option<Volume> {
    let path = common::shared()?.join("data/volumes/colin27").join(name);
    Some(Volume::read(path).unwrap())
}

#[test]
fn colin27_geometry_and_values() {
    let Some(v) = colin("ch2.nii.gz") else { return };
    assert_eq!(v.dims(), [181, 217, 181]);
    assert_eq!(v.spacing(), [1.0, 1.0, 1.0]);
    assert_eq!(
        *v.affine(),
        [[1.0, 0.0, 0.0, -90.0], [0.0, 1.0, 0.0, -125.0], [0.0, 0.0, 1.0, -71.0], [0.0, 0.0, 0.0, 1.0]]
    );
    assert_eq!(v.data().len(), 181 * 217 * 181);
    let max = v.data().iter().copied().fold(0.0f32, f32::max);
    assert!(v.data().iter().all(|&x| x >= 0.0 && x.fract() == 0.0) && max <= 255.0 && max > 100.0);
}

#[test]
fn axial_slice_matches_the_cases2d_mask() {
    // cases2d masks are rot90 of the RAS axial slice of ch2bet > 0: our slice orientation.
    let Some(shared) = common::shared() else { return };
    let bet = Volume::read(shared.join("data/volumes/colin27/ch2bet.nii.gz")).unwrap();
    for (z, case) in [(60, "colin27_z60_brain"), (90, "colin27_z90_brain")] {
        let s = bet.slice(Axis::Z, z).unwrap();
        assert_eq!((s.width, s.height), (181, 217));
        let png = shared.join(format!("data/cases2d/{case}_mask.png"));
        let mask = image::load_image(png, image::ColorMode::Gray).unwrap();
        assert_eq!((mask.width(), mask.height()), (181, 217));
        let ours: Vec<u8> = s.data.iter().map(|&v| if v > 0.0 { 255 } else { 0 }).collect();
        assert_eq!(ours, mask.data(), "{case}");
    }
}

#[test]
fn ct_head_hounsfield_values_match_the_threshold_masks() {
    let Some(shared) = common::shared() else { return };
    let dir = shared.join("data/volumes/ct_head");
    let ct = Volume::read(dir.join("ct_0051.nii.gz")).unwrap();
    assert_eq!(ct.dims(), [256, 256, 108]);
    assert_eq!(ct.spacing(), [0.957_031_2, 0.957_031_2, 1.5]);
    assert!((ct.affine()[0][0] - 0.957_031_2).abs() < 1e-6 && ct.affine()[2][2] == 1.5);
    let bone = Volume::read(dir.join("mask_bone_thr226.nii.gz")).unwrap();
    let head = Volume::read(dir.join("mask_head_thr-142.nii.gz")).unwrap();
    assert_eq!(bone.affine(), ct.affine());
    let (mut nb, mut nh) = (0, 0);
    for ((&hu, &b), &h) in ct.data().iter().zip(bone.data()).zip(head.data()) {
        assert_eq!(b != 0.0, hu >= 226.0);
        assert_eq!(h != 0.0, hu >= -142.0);
        nb += (b != 0.0) as usize;
        nh += (h != 0.0) as usize;
    }
    assert!(nb > 1000 && nh > nb);

    let mut w = ct.data().to_vec();
    HuWindow::BONE.apply(&mut w);
    assert!(w.iter().all(|&x| (0.0..=1.0).contains(&x)));
    for ((&hu, &x), &b) in ct.data().iter().zip(&w).zip(bone.data()) {
        if b != 0.0 {
            assert!(x >= (226.0 + 450.0) / 1500.0 - 1e-6, "{hu} -> {x}");
        }
    }
}

#[test]
fn mri_percentile_window_on_colin27() {
    let Some(mut v) = colin("ch2bet.nii.gz") else { return };
    let zeros: Vec<bool> = v.data().iter().map(|&x| x == 0.0).collect();
    let (lo, hi) = mri_window(v.data_mut()).unwrap();
    assert!(0.0 < lo && lo < hi && hi <= 255.0, "{lo} {hi}");
    for (&x, &z) in v.data().iter().zip(&zeros) {
        assert!((0.0..=1.0).contains(&x));
        if z {
            assert_eq!(x, 0.0);
        }
    }
    let ones = v.data().iter().filter(|&&x| x == 1.0).count();
    let nz = zeros.iter().filter(|&&z| !z).count();
    // About 0.5 % of the non-zero voxels lie at or above the upper percentile.
    assert!(ones > 0 && ones < nz / 50, "{ones} of {nz}");
}

#[test]
fn label_round_trip_keeps_grid_and_values() {
    let Some(v) = colin("ch2.nii.gz") else { return };
    let labels: Vec<u8> = v.data().iter().map(|&x| x as u8).collect();
    let path = common::scratch("ch2_labels.nii.gz");
    v.write_labels(&path, Labels::U8(&labels)).unwrap();
    let back = Volume::read(&path).unwrap();
    assert_eq!(back.dims(), v.dims());
    assert_eq!(back.spacing(), v.spacing());
    assert_eq!(back.affine(), v.affine());
    assert_eq!(back.data(), v.data());
    let (a, b) = (v.header(), back.header());
    assert_eq!(
        (a.sform_code, a.qform_code, a.srow_x, a.srow_y, a.srow_z),
        (b.sform_code, b.qform_code, b.srow_x, b.srow_y, b.srow_z)
    );
    assert_eq!((a.pixdim, a.xyzt_units, a.quatern_b), (b.pixdim, b.xyzt_units, b.quatern_b));
    assert_eq!(b.datatype, 2);
    std::fs::remove_file(&path).unwrap();

    // i16 labels, uncompressed, written slice by slice through insert_slice.
    let dims = v.dims();
    let mut vol = vec![0i16; labels.len()];
    for z in 0..dims[2] {
        let s = extract_slice(v.data(), dims, Axis::Z, z).unwrap();
        let s = medsa_io::Slice {
            data: s.data.iter().map(|&x| -(x as i16)).collect(),
            width: s.width,
            height: s.height,
        };
        insert_slice(&mut vol, dims, Axis::Z, z, &s).unwrap();
    }
    let path = common::scratch("ch2_labels.nii");
    v.write_labels(&path, Labels::I16(&vol)).unwrap();
    let back = Volume::read(&path).unwrap();
    assert!(back.data().iter().zip(v.data()).all(|(&b, &a)| b == -a));
    assert_eq!(back.affine(), v.affine());
    std::fs::remove_file(&path).unwrap();

    assert!(matches!(
        v.write_labels(common::scratch("short.nii"), Labels::U8(&labels[1..])),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn truncated_and_corrupt_gzip_are_typed_errors() {
    let Some(shared) = common::shared() else { return };
    let bytes = std::fs::read(shared.join("data/volumes/colin27/ch2.nii.gz")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 4, 200, 10] {
        let err = Volume::from_bytes(&bytes[..cut], "ch2-cut").unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "cut at {cut}: {err}");
    }
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let err = Volume::from_bytes(&bad, "ch2-corrupt").unwrap_err();
    assert!(matches!(err, Error::Gzip { .. } | Error::Truncated { .. }), "{err}");
}

#[test]
fn slices_along_every_axis_have_documented_shapes() {
    let Some(v) = colin("aal.nii.gz") else { return };
    let [nx, ny, nz] = v.dims();
    let s = v.slice(Axis::X, 90).unwrap();
    assert_eq!((s.width, s.height), (ny, nz));
    assert_eq!(s.data[0], v.get(90, 0, nz - 1).unwrap());
    let s = v.slice(Axis::Y, 100).unwrap();
    assert_eq!((s.width, s.height), (nx, nz));
    assert_eq!(s.data[(nz - 1 - 70) * nx + 33], v.get(33, 100, 70).unwrap());
    assert!(matches!(v.slice(Axis::Z, nz), Err(Error::Slice { .. })));
}
