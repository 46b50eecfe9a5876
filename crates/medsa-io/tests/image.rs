//! PNG loading, mask saving and overlays on the real slices in `../shared/data/cases2d`.

#![allow(clippy::unwrap_used)]

mod common;

use medsa_io::image::{decode_image, load_image, save_mask_png, save_overlay, ColorMode, Marker, Overlay};
use medsa_io::Error;

#[test]
fn loads_case_images_as_rgb_and_gray() {
    let Some(shared) = common::shared() else { return };
    let path = shared.join("data/cases2d/colin27_z78_Thalamus_L_img.png");
    let rgb = load_image(&path, ColorMode::Rgb).unwrap();
    let gray = load_image(&path, ColorMode::Gray).unwrap();
    assert_eq!((rgb.width(), rgb.height(), rgb.channels()), (181, 217, 3));
    assert_eq!((gray.width(), gray.height(), gray.channels()), (181, 217, 1));
    for (p, &g) in rgb.data().chunks(3).zip(gray.data()) {
        assert_eq!(p, [g, g, g]);
    }
}

#[test]
fn mask_png_round_trips_as_0_255_and_overlay_saves() {
    let Some(shared) = common::shared() else { return };
    let dir = shared.join("data/cases2d");
    let mask = load_image(dir.join("colin27_z78_Thalamus_L_mask.png"), ColorMode::Gray).unwrap();
    let bits: Vec<u8> = mask.data().iter().map(|&m| (m > 127) as u8).collect();
    let out = common::scratch("mask.png");
    save_mask_png(&out, &bits, mask.width(), mask.height()).unwrap();
    let back = load_image(&out, ColorMode::Gray).unwrap();
    assert_eq!(back.data(), mask.data());
    assert!(back.data().iter().all(|&v| v == 0 || v == 255));
    assert!(matches!(save_mask_png(&out, &bits[1..], 181, 217), Err(Error::InvalidArgument { .. })));

    let img = load_image(dir.join("colin27_z78_Thalamus_L_img.png"), ColorMode::Rgb).unwrap();
    let ov = common::scratch("overlay.png");
    let markers = [Marker { x: 78.0, y: 110.0, foreground: true }];
    let boxes = [[67.0, 95.0, 90.0, 124.0]];
    save_overlay(&ov, &img, &Overlay { mask: Some(&bits), markers: &markers, boxes: &boxes }).unwrap();
    let o = load_image(&ov, ColorMode::Rgb).unwrap();
    assert_eq!((o.width(), o.height()), (181, 217));
    assert_ne!(o.data(), img.data());
    for p in [out, ov] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn truncated_png_is_a_typed_error() {
    let Some(shared) = common::shared() else { return };
    let bytes = std::fs::read(shared.join("data/cases2d/colin27_z60_brain_img.png")).unwrap();
    for cut in [bytes.len() / 2, 40, 8, 0] {
        assert!(matches!(decode_image(&bytes[..cut], ColorMode::Rgb, "cut.png"), Err(Error::Image { .. })));
    }
    assert!(matches!(
        load_image(shared.join("data/cases2d/does_not_exist.png"), ColorMode::Rgb),
        Err(Error::Io { .. })
    ));
}

/// Fuzzer finding: this JPEG made zune-jpeg 0.5.15 panic inside its AVX2 IDCT. It must be a
/// typed error.
#[test]
fn malformed_jpeg_that_panics_the_decoder_is_a_typed_error() {
    let bytes = include_bytes!("fixtures/jpeg_decoder_panic.bin");
    for mode in [medsa_io::image::ColorMode::Rgb, medsa_io::image::ColorMode::Gray] {
        let err = medsa_io::image::decode_image(bytes, mode, "crash.jpg").unwrap_err();
        assert!(err.to_string().contains("crash.jpg"), "{err}");
    }
}
