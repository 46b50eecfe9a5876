//! The run's loss and validation-Dice history and its `curves.png` (loss as a running mean
//! above, validation Dice per set and epoch below).

use crate::validate::SetResult;
use crate::{Error, Result};
use medsa_eval::chart::{line_chart, Series};
use medsa_model::weights::write_atomically;
use std::path::Path;

/// Loss and validation-Dice history for `curves.png`.
#[derive(Default)]
pub(crate) struct History {
    pub(crate) loss: Vec<(f64, f64)>,
    pub(crate) dice: Vec<(String, Vec<(f64, f64)>)>,
}

impl History {
    pub(crate) fn add_dice(&mut self, set: &str, epoch: usize, dice: f64) {
        let name = format!("val dice {set}");
        match self.dice.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push((epoch as f64, dice)),
            None => self.dice.push((name, vec![(epoch as f64, dice)])),
        }
    }

    pub(crate) fn add_validation(&mut self, epoch: usize, r: &[SetResult]) {
        for s in r {
            self.add_dice(&s.name, epoch, s.mean_dice);
        }
    }

    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        // The loss as a running mean over 16 steps, so the trend shows through the noise.
        let mut smooth = Vec::with_capacity(self.loss.len());
        for i in 0..self.loss.len() {
            let lo = i.saturating_sub(15);
            let w = &self.loss[lo..=i];
            smooth.push((self.loss[i].0, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64));
        }
        if smooth.is_empty() || self.dice.is_empty() {
            return Ok(());
        }
        let top = line_chart(
            "training loss",
            "step",
            &[Series { name: "loss (mean of 16)".into(), points: smooth }],
            640,
            300,
        )?;
        let series: Vec<Series> =
            self.dice.iter().map(|(n, p)| Series { name: n.clone(), points: p.clone() }).collect();
        let bottom = line_chart("validation mean dice", "epoch", &series, 640, 300)?;
        let mut img = image::RgbImage::new(640, 600);
        image::imageops::replace(&mut img, &top, 0, 0);
        image::imageops::replace(&mut img, &bottom, 0, 300);
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::Config(format!("encoding {}: {e}", path.display())))?;
        Ok(write_atomically(path, &bytes)?)
    }
}

/// The part of a logged validation the curves need.
#[derive(serde::Deserialize)]
pub(crate) struct SetResultRow {
    pub(crate) name: String,
    pub(crate) mean_dice: f64,
}
