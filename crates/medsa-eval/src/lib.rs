//! `medsa-eval`: the evaluation protocol of Med-SA (spec sections 7.2, 7.3 and 8).
//!
//! - [`mask`]: binary masks in 2D and 3D ([`Mask`]), tight bounding boxes, binary erosion with
//!   the cross-shaped structuring element, surfaces and connected components;
//! - [`edt`]: the exact Euclidean distance transform (Felzenszwalb–Huttenlocher, separable,
//!   anisotropic spacing);
//! - [`metrics`]: Dice, IoU, HD95 and ASSD in millimetres, with the empty-mask policy of
//!   [`metrics::SegMetrics`];
//! - [`prompts`]: seeded prompt simulation from a ground-truth mask in (x, y) pixel order:
//!   random points, BBox τ, SAM's jittered box and the iterative protocol's next click;
//! - [`chart`]: PNG charts in a built-in pixel font (the report's bars, training curves);
//! - [`report`]: per-case records, means with seeded 95 % bootstrap intervals, a markdown table,
//!   a CSV file and a PNG bar chart.
//!
//! Everything is deterministic: given the same seed, masks and records, every function returns
//! bit-identical results on every platform (the random streams are [`rand_chacha::ChaCha8Rng`]).
//!
//! ```
//! use medsa_eval::{metrics, Mask};
//! let gt = Mask::from_fn(&[8, 8], |i| (2..6).contains(&i[0]) && (2..6).contains(&i[1])).unwrap();
//! let m = metrics::evaluate(&gt, &gt, &[1.0, 1.0]).unwrap();
//! assert_eq!(m.dice, 1.0);
//! assert_eq!(m.hd95, Some(0.0));
//! ```

pub mod chart;
pub mod edt;
pub mod error;
pub mod mask;
pub mod metrics;
pub mod prompts;
pub mod report;

pub use error::{EvalError, Result};
pub use mask::{BoundingBox, Components, Connectivity, Mask};
pub use metrics::SegMetrics;
pub use prompts::{BoxPrompt, Point, Prompt, PromptKind};
pub use report::{CaseRecord, MeanCi, Report, Summary};
