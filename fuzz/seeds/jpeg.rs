//! Writes the JPEG seeds of fuzz/corpus/image (gray and RGB, baseline and progressive-free,
//! 4:4:4 and odd sizes) with the `image` crate's encoder. Not part of any build: compile it as
//! a one-file binary depending on `image = { version = "0.25", default-features = false,
//! features = ["jpeg"] }` and run it from the repository root.
use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;

fn main() {
    let dir = std::path::Path::new("fuzz/corpus/image");
    std::fs::create_dir_all(dir).expect("corpus dir");
    let cases: [(&str, u32, u32, ExtendedColorType, u8); 4] = [
        ("gray_9x7.jpg", 9, 7, ExtendedColorType::L8, 90),
        ("rgb_8x8.jpg", 8, 8, ExtendedColorType::Rgb8, 75),
        ("rgb_17x5.jpg", 17, 5, ExtendedColorType::Rgb8, 30),
        ("gray_1x1.jpg", 1, 1, ExtendedColorType::L8, 100),
    ];
    for (name, w, h, color, q) in cases {
        let ch = if color == ExtendedColorType::L8 { 1 } else { 3 };
        let px: Vec<u8> = (0..w * h * ch).map(|i| (i * 37 % 251) as u8).collect();
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, q).encode(&px, w, h, color).expect("encode");
        std::fs::write(dir.join(name), out).expect("write seed");
    }
}
