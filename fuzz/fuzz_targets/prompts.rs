//! Prompt and argument strings: `PromptKind::from_str` (medsa-eval), `Axis::from_str` and
//! `HuWindow::preset` (medsa-io), and the CLI's `--box` / `--point` / `--slice` / `--window`
//! parsers (crates/medsa-cli/src/args.rs, compiled into this target by path because medsa-cli
//! is a binary-only crate).
#![no_main]

use libfuzzer_sys::fuzz_target;
use medsa_eval::PromptKind;
use medsa_io::nifti::Axis;
use medsa_io::window::HuWindow;

#[path = "../../crates/medsa-cli/src/args.rs"]
#[allow(dead_code, missing_docs)]
mod args;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(k) = s.parse::<PromptKind>() {
        // Display and parse round-trip.
        let again: PromptKind = k.to_string().parse().expect("a displayed PromptKind parses");
        assert_eq!(again, k);
    }
    let _ = s.parse::<Axis>();
    if let Ok(w) = HuWindow::preset(s) {
        assert!(w.lower < w.upper);
    }
    if let Ok(b) = args::parse_box(s) {
        assert!(
            b.x0 >= 0.0
                && b.y0 >= 0.0
                && b.x0 <= b.x1
                && b.y0 <= b.y1
                && b.x1.is_finite()
                && b.y1.is_finite()
        );
    }
    if let Ok(p) = args::parse_point(s) {
        assert!(p.x.is_finite() && p.y.is_finite() && p.x >= 0.0 && p.y >= 0.0);
    }
    let _ = args::parse_slice(s);
    let _ = args::parse_axis(s);
    if let Ok(args::Window::Hu(w)) = args::parse_window(s) {
        assert!(w.lower < w.upper && w.lower.is_finite() && w.upper.is_finite());
    }
});
