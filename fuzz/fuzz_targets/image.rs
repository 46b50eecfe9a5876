//! PNG / JPEG bytes -> `decode_image` (RGB and gray), then the overlay renderer on the result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medsa_io::image::{decode_image, render_overlay, ColorMode, Marker, Overlay};

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts from its panic hook, before `decode_image` can turn a panic of the
    // third-party JPEG decoder into `Error::DecoderPanic`. Replace the hook with a silent one:
    // a panic anywhere else still reaches libfuzzer-sys's own catch_unwind, which aborts.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    for mode in [ColorMode::Rgb, ColorMode::Gray] {
        let Ok(img) = decode_image(data, mode, "<fuzz>") else { continue };
        let n = img.width() as usize * img.height() as usize * img.channels() as usize;
        assert_eq!(img.data().len(), n);
        if n <= 1 << 20 {
            let (w, h) = (img.width() as f32, img.height() as f32);
            let markers = [
                Marker { x: w / 2.0, y: h / 2.0, foreground: true },
                Marker { x: -5.0, y: h + 7.0, foreground: false },
                Marker { x: 1e30, y: -1e30, foreground: true },
            ];
            let boxes = [[0.0, 0.0, w - 1.0, h - 1.0], [w + 3.0, -2.0, -1e9, 1e9]];
            let mask: Vec<u8> = img.data().iter().step_by(img.channels() as usize).map(|&v| v & 1).collect();
            let overlay = Overlay { mask: Some(&mask), markers: &markers, boxes: &boxes };
            let out = render_overlay(&img, &overlay).expect("overlay of a decoded image");
            assert_eq!((out.width(), out.height(), out.channels()), (img.width(), img.height(), 3));
        }
    }
});
