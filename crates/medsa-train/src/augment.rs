//! Seeded augmentation as in the official 3-D pipeline: flips and 90-degree rotations of the
//! slice (image and labels together) and an intensity shift of the image.
//!
//! The eight symmetries of the square are [`Dihedral`] codes 0..8: bit 0 transposes, bit 1
//! flips columns, bit 2 flips rows (applied after the transpose). With the encoder frozen each
//! symmetry of an image is embedded once and cached; an intensity shift changes the pixels, so
//! a shifted image is embedded afresh every time (LiteMedSAM's min-max normalisation undoes most
//! of a shift anyway; it matters for SAM's fixed normalisation).

use crate::{Error, Result};
use medsa_model::preprocess::ImageU8;
use rand::Rng;

/// One of the eight symmetries of the square (0 = identity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dihedral(pub u8);

impl Dihedral {
    /// Output `(width, height)` of a `width x height` image.
    pub fn out_size(self, width: usize, height: usize) -> (usize, usize) {
        if self.0 & 1 != 0 {
            (height, width)
        } else {
            (width, height)
        }
    }

    /// `data` (row-major `width x height`) transformed.
    pub fn apply<T: Copy>(self, data: &[T], width: usize, height: usize) -> Vec<T> {
        let (w, h) = self.out_size(width, height);
        let mut out = Vec::with_capacity(data.len());
        for r in 0..h {
            for c in 0..w {
                let r2 = if self.0 & 4 != 0 { h - 1 - r } else { r };
                let c2 = if self.0 & 2 != 0 { w - 1 - c } else { c };
                let (sr, sc) = if self.0 & 1 != 0 { (c2, r2) } else { (r2, c2) };
                out.push(data[sr * width + sc]);
            }
        }
        out
    }

    /// A gray image transformed.
    pub fn apply_image(self, img: &ImageU8) -> Result<ImageU8> {
        if img.channels != 1 {
            return Err(Error::Config(format!(
                "augmentation needs a gray image, got {} channels",
                img.channels
            )));
        }
        let (w, h) = self.out_size(img.width, img.height);
        Ok(ImageU8::new(w, h, 1, self.apply(&img.data, img.width, img.height))?)
    }
}

/// Which augmentations a run uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Random row / column flips.
    pub flips: bool,
    /// Random 90-degree rotations.
    pub rot90: bool,
    /// Intensity shift: a uniform offset in `[-s, s]` (fraction of the 8-bit range) added to
    /// every pixel, clamped; 0 = off.
    pub intensity_shift: f32,
}

impl Augment {
    /// Draws a symmetry allowed by the settings.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Dihedral {
        // Rotations are {0, transpose + column flip, both flips, transpose + row flip}.
        const ROT: [u8; 4] = [0, 3, 6, 5];
        match (self.flips, self.rot90) {
            (false, false) => Dihedral(0),
            (true, false) => Dihedral([0, 2, 4, 6][rng.random_range(0..4)]),
            (false, true) => Dihedral(ROT[rng.random_range(0..4)]),
            (true, true) => Dihedral(rng.random_range(0..8)),
        }
    }

    /// Draws the intensity offset in 8-bit units (0 when off).
    pub fn draw_shift<R: Rng + ?Sized>(&self, rng: &mut R) -> i32 {
        if self.intensity_shift > 0.0 {
            let s = self.intensity_shift as f64 * 255.0;
            rng.random_range(-s..=s).round() as i32
        } else {
            0
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.intensity_shift) {
            return Err(Error::Config(format!("intensity shift {} must be in [0, 1]", self.intensity_shift)));
        }
        Ok(())
    }
}

/// `img` with `shift` added to every pixel, clamped to 0..=255.
pub fn shift_intensity(img: &ImageU8, shift: i32) -> ImageU8 {
    let mut out = img.clone();
    for v in &mut out.data {
        *v = (*v as i32 + shift).clamp(0, 255) as u8;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_eight_symmetries_are_distinct_and_invertible() {
        let (w, h) = (3, 2);
        let data: Vec<u32> = (0..6).collect();
        let mut seen = std::collections::BTreeSet::new();
        for t in 0..8 {
            let d = Dihedral(t);
            let out = d.apply(&data, w, h);
            assert!(seen.insert(out.clone()), "symmetry {t} repeats another");
            // Applying the inverse (the same code for involutions; rotations pair 3 <-> 5) gives back the input.
            let inv = match t {
                3 => 5,
                5 => 3,
                t => t,
            };
            let (w2, h2) = d.out_size(w, h);
            assert_eq!(Dihedral(inv).apply(&out, w2, h2), data, "symmetry {t}");
        }
        // Code 3 is a quarter turn: the top-left pixel goes to the top-right.
        assert_eq!(Dihedral(3).apply(&data, w, h), vec![3, 0, 4, 1, 5, 2]);
    }

    #[test]
    fn draws_respect_the_settings() {
        let mut rng = medsa_eval::prompts::case_rng(1, 2);
        let none = Augment::default();
        let flips = Augment { flips: true, ..none };
        for _ in 0..50 {
            assert_eq!(none.draw(&mut rng), Dihedral(0));
            assert_eq!(flips.draw(&mut rng).0 & 1, 0, "flips alone never transpose");
            assert_eq!(none.draw_shift(&mut rng), 0);
        }
        let img = ImageU8::new(2, 1, 1, vec![10, 250]).unwrap();
        assert_eq!(shift_intensity(&img, 10).data, vec![20, 255]);
        assert!(Augment { intensity_shift: 2.0, ..none }.validate().is_err());
    }
}
