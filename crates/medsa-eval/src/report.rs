//! Evaluation reports: per-case records, means with seeded bootstrap confidence intervals, a
//! markdown table, a CSV file, JSON and a PNG bar chart of the mean Dice per prompt type.
//!
//! Grouping: records are summarised per (prompt, structure) in order of first appearance.
//! When a prompt has records of more than one structure, one more summary with structure
//! `all` averages every record of that prompt (each record weighs the same, so for volumes
//! that all contain every organ it is the mean over organs of the per-organ means).
//!
//! Empty-mask policy ([`crate::metrics`]): a record whose HD95 / ASSD is `None` (exactly one
//! of prediction and ground truth empty) is left out of that metric's mean and counted in
//! [`Summary::hd95_excluded`]; Dice and IoU always count.
//!
//! Intervals are the percentile bootstrap of the mean ([`bootstrap_mean_ci`]): `resamples`
//! resamples with replacement of the values, the CI bounds are numpy-linear percentiles of the
//! resampled means. The generator is [`crate::prompts::case_rng`]`(seed, 0)` for every group and
//! metric, so a group's interval does not depend on the other groups, and Dice, IoU and HD95 of
//! a group with no exclusions are resampled with the same indices (a paired bootstrap).

use crate::chart::{draw_text, fill_rect, text_width};
use crate::metrics::{percentile_sorted, SegMetrics};
use crate::prompts::case_rng;
use crate::{EvalError, Result};
use image::{Rgb, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// The metrics of one structure of one case under one prompt type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// Case identifier (file stem, manifest id).
    pub case: String,
    /// Structure name or label id (`"fg"` for binary tasks).
    pub structure: String,
    /// Prompt type, as [`crate::PromptKind`]'s display (`1pt`, `bbox0.5`, ...).
    pub prompt: String,
    /// Dice coefficient.
    pub dice: f64,
    /// IoU.
    pub iou: f64,
    /// HD95 in mm; `None` when undefined (exactly one mask empty).
    pub hd95: Option<f64>,
    /// ASSD in mm; `None` when undefined.
    pub assd: Option<f64>,
}

impl CaseRecord {
    /// A record from computed metrics.
    pub fn new(
        case: impl Into<String>,
        structure: impl Into<String>,
        prompt: impl Into<String>,
        m: &SegMetrics,
    ) -> Self {
        CaseRecord {
            case: case.into(),
            structure: structure.into(),
            prompt: prompt.into(),
            dice: m.dice,
            iou: m.iou,
            hd95: m.hd95,
            assd: m.assd,
        }
    }
}

/// A mean with its bootstrap confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanCi {
    /// Number of values averaged.
    pub n: usize,
    /// The mean.
    pub mean: f64,
    /// Lower bound of the interval.
    pub lo: f64,
    /// Upper bound of the interval.
    pub hi: f64,
}

/// Settings of the bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootstrapConfig {
    /// Number of resamples (default 2000).
    pub resamples: usize,
    /// Confidence level in (0, 1) (default 0.95).
    pub confidence: f64,
    /// Seed of the resampling (default 0).
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig { resamples: 2000, confidence: 0.95, seed: 0 }
    }
}

/// Mean of `values` with a percentile-bootstrap interval; `None` for no values. One value (or
/// all equal values) gives `lo = hi = mean`.
pub fn bootstrap_mean_ci(values: &[f64], cfg: &BootstrapConfig) -> Result<Option<MeanCi>> {
    if cfg.resamples == 0 || !(cfg.confidence > 0.0 && cfg.confidence < 1.0) {
        return Err(EvalError::arg(
            "bootstrap_mean_ci",
            format!(
                "need resamples > 0 and confidence in (0, 1), got {} and {}",
                cfg.resamples, cfg.confidence
            ),
        ));
    }
    let n = values.len();
    if n == 0 {
        return Ok(None);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = case_rng(cfg.seed, 0);
    let mut means = Vec::with_capacity(cfg.resamples);
    for _ in 0..cfg.resamples {
        let mut s = 0.0;
        for _ in 0..n {
            s += values[rng.random_range(0..n)];
        }
        means.push(s / n as f64);
    }
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - cfg.confidence) / 2.0 * 100.0;
    let lo = percentile_sorted(&means, alpha);
    let hi = percentile_sorted(&means, 100.0 - alpha);
    Ok(Some(MeanCi { n, mean, lo, hi }))
}

/// The averaged results of one (prompt, structure) group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Prompt type.
    pub prompt: String,
    /// Structure, or `all` for the per-prompt aggregate over structures.
    pub structure: String,
    /// Number of records in the group.
    pub n: usize,
    /// Mean Dice.
    pub dice: MeanCi,
    /// Mean IoU.
    pub iou: MeanCi,
    /// Mean HD95 in mm over the records where it is defined; `None` if it is nowhere defined.
    pub hd95: Option<MeanCi>,
    /// Mean ASSD in mm over the records where it is defined.
    pub assd: Option<MeanCi>,
    /// Records left out of the HD95 and ASSD means (exactly one mask empty).
    pub hd95_excluded: usize,
}

/// Per-case records and their summaries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The bootstrap settings used.
    pub bootstrap: BootstrapConfig,
    /// All records, in input order.
    pub records: Vec<CaseRecord>,
    /// One summary per (prompt, structure) group, plus the `all` aggregates (module docs).
    pub summaries: Vec<Summary>,
}

fn summarise(
    prompt: &str,
    structure: &str,
    recs: &[&CaseRecord],
    cfg: &BootstrapConfig,
) -> Result<Option<Summary>> {
    let dice: Vec<f64> = recs.iter().map(|r| r.dice).collect();
    let iou: Vec<f64> = recs.iter().map(|r| r.iou).collect();
    let hd: Vec<f64> = recs.iter().filter_map(|r| r.hd95).collect();
    let assd: Vec<f64> = recs.iter().filter_map(|r| r.assd).collect();
    let (Some(d), Some(i)) = (bootstrap_mean_ci(&dice, cfg)?, bootstrap_mean_ci(&iou, cfg)?) else {
        return Ok(None);
    };
    Ok(Some(Summary {
        prompt: prompt.to_string(),
        structure: structure.to_string(),
        n: recs.len(),
        dice: d,
        iou: i,
        hd95: bootstrap_mean_ci(&hd, cfg)?,
        assd: bootstrap_mean_ci(&assd, cfg)?,
        hd95_excluded: recs.len() - hd.len(),
    }))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_default()
}

fn ci_md(m: Option<&MeanCi>, prec: usize) -> String {
    match m {
        Some(m) => format!("{:.p$} [{:.p$}, {:.p$}]", m.mean, m.lo, m.hi, p = prec),
        None => "n/a".to_string(),
    }
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    std::fs::write(path, contents)
        .map_err(|source| EvalError::Io { path: path.display().to_string(), source })
}

impl Report {
    /// Summarises `records` (module docs for grouping and intervals).
    pub fn new(records: Vec<CaseRecord>, bootstrap: BootstrapConfig) -> Result<Report> {
        // Groups in order of first appearance.
        let mut prompts: Vec<&str> = Vec::new();
        for r in &records {
            if !prompts.contains(&r.prompt.as_str()) {
                prompts.push(&r.prompt);
            }
        }
        let mut summaries = Vec::new();
        for p in &prompts {
            let of_prompt: Vec<&CaseRecord> = records.iter().filter(|r| r.prompt == *p).collect();
            let mut structures: Vec<&str> = Vec::new();
            for r in &of_prompt {
                if !structures.contains(&r.structure.as_str()) {
                    structures.push(&r.structure);
                }
            }
            for s in &structures {
                let recs: Vec<&CaseRecord> =
                    of_prompt.iter().copied().filter(|r| r.structure == *s).collect();
                summaries.extend(summarise(p, s, &recs, &bootstrap)?);
            }
            if structures.len() > 1 {
                summaries.extend(summarise(p, "all", &of_prompt, &bootstrap)?);
            }
        }
        Ok(Report { bootstrap, records, summaries })
    }

    /// The summary that stands for each prompt in the chart: the `all` aggregate where there is
    /// one, otherwise the prompt's single structure group (its first one).
    pub fn per_prompt(&self) -> Vec<&Summary> {
        let mut out: Vec<&Summary> = Vec::new();
        for s in &self.summaries {
            match out.iter().position(|o| o.prompt == s.prompt) {
                None => out.push(s),
                Some(i) if s.structure == "all" => out[i] = s,
                Some(_) => {}
            }
        }
        out
    }

    /// Markdown: the summary table (mean [95 % CI]) followed by the per-case table.
    pub fn to_markdown(&self) -> String {
        let pct = self.bootstrap.confidence * 100.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| prompt | structure | n | Dice [{pct:.0}% CI] | IoU [{pct:.0}% CI] | HD95 mm [{pct:.0}% CI] | HD95 excluded |"
        );
        let _ = writeln!(s, "|---|---|---:|---|---|---|---:|");
        for m in &self.summaries {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                md_cell(&m.prompt),
                md_cell(&m.structure),
                m.n,
                ci_md(Some(&m.dice), 4),
                ci_md(Some(&m.iou), 4),
                ci_md(m.hd95.as_ref(), 2),
                m.hd95_excluded
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "| case | structure | prompt | Dice | IoU | HD95 mm | ASSD mm |");
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|");
        for r in &self.records {
            let na = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "n/a".to_string());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.4} | {:.4} | {} | {} |",
                md_cell(&r.case),
                md_cell(&r.structure),
                md_cell(&r.prompt),
                r.dice,
                r.iou,
                na(r.hd95),
                na(r.assd)
            );
        }
        s
    }

    /// CSV with one header and two kinds of rows: `row = case` (one per record; CI columns
    /// empty) and `row = mean` (one per summary; `case` empty, `n` filled). Undefined values
    /// (HD95 with one empty mask, a mean with no value) are empty fields.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "row,case,structure,prompt,n,dice,dice_lo,dice_hi,iou,iou_lo,iou_hi,hd95_mm,hd95_lo,hd95_hi,assd_mm,assd_lo,assd_hi,hd95_excluded\n",
        );
        let f = |v: f64| format!("{v:.6}");
        for r in &self.records {
            let _ = writeln!(
                s,
                "case,{},{},{},1,{},,,{},,,{},,,{},,,",
                csv_field(&r.case),
                csv_field(&r.structure),
                csv_field(&r.prompt),
                f(r.dice),
                f(r.iou),
                opt(r.hd95, 6),
                opt(r.assd, 6)
            );
        }
        let ci = |m: Option<&MeanCi>| match m {
            Some(m) => format!("{},{},{}", f(m.mean), f(m.lo), f(m.hi)),
            None => ",,".to_string(),
        };
        for m in &self.summaries {
            let _ = writeln!(
                s,
                "mean,,{},{},{},{},{},{},{},{}",
                csv_field(&m.structure),
                csv_field(&m.prompt),
                m.n,
                ci(Some(&m.dice)),
                ci(Some(&m.iou)),
                ci(m.hd95.as_ref()),
                ci(m.assd.as_ref()),
                m.hd95_excluded
            );
        }
        s
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Writes [`Report::to_markdown`] to `path`.
    pub fn write_markdown(&self, path: &Path) -> Result<()> {
        write_file(path, self.to_markdown().as_bytes())
    }

    /// Writes [`Report::to_csv`] to `path`.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        write_file(path, self.to_csv().as_bytes())
    }

    /// Writes [`Report::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_file(path, self.to_json()?.as_bytes())
    }

    /// Draws the chart of [`dice_chart`] for [`Report::per_prompt`].
    pub fn dice_chart(&self, width: u32, height: u32) -> Result<RgbImage> {
        dice_chart(&self.per_prompt(), width, height)
    }

    /// Writes the Dice chart (640 x 400) as a PNG to `path`.
    pub fn write_chart(&self, path: &Path) -> Result<()> {
        let img = self.dice_chart(640, 400)?;
        img.save_with_format(path, image::ImageFormat::Png)
            .map_err(|source| EvalError::Image { path: path.display().to_string(), source })
    }
}

// ---------------------------------------------------------------------------------------------
// Chart

/// A bar chart of the mean Dice per summary (one bar each, in order) on a 0–1 axis, with the
/// confidence interval as a whisker, the mean printed above each bar and the prompt name (and
/// structure, unless `all` or the only one) below, in a built-in 3x5 pixel font.
pub fn dice_chart(summaries: &[&Summary], width: u32, height: u32) -> Result<RgbImage> {
    if !(160..=8192).contains(&width) || !(120..=8192).contains(&height) {
        return Err(EvalError::arg(
            "dice_chart",
            format!("size {width}x{height} outside 160..8192 x 120..8192"),
        ));
    }
    let white = Rgb([255, 255, 255]);
    let axis = Rgb([40, 40, 40]);
    let grid = Rgb([225, 225, 225]);
    let palette = [
        Rgb([31, 119, 180]),
        Rgb([255, 127, 14]),
        Rgb([44, 160, 44]),
        Rgb([214, 39, 40]),
        Rgb([148, 103, 189]),
        Rgb([140, 86, 75]),
        Rgb([227, 119, 194]),
        Rgb([127, 127, 127]),
    ];
    let mut img = RgbImage::from_pixel(width, height, white);
    let (left, right, top, bottom) = (44i64, width as i64 - 12, 34i64, height as i64 - 40);
    let title = "MEAN DICE (95% CI)";
    draw_text(&mut img, title, (width as i64 - text_width(title, 2) as i64) / 2, 8, 2, axis);
    let ypix = |v: f64| bottom - ((bottom - top) as f64 * v.clamp(0.0, 1.0)).round() as i64;
    for k in 0..=4 {
        let v = k as f64 / 4.0;
        let y = ypix(v);
        fill_rect(&mut img, left, y, right, y, if k == 0 { axis } else { grid });
        let label = match k {
            0 => "0",
            1 => ".25",
            2 => ".5",
            3 => ".75",
            _ => "1",
        };
        draw_text(&mut img, label, left - 6 - text_width(label, 2) as i64, y - 5, 2, axis);
    }
    fill_rect(&mut img, left, top, left, bottom, axis);
    let n = summaries.len().max(1) as i64;
    let slot = (right - left) / n;
    let show_structure = {
        let mut v: Vec<&str> = summaries.iter().map(|s| s.structure.as_str()).collect();
        v.dedup();
        v.len() > 1
    };
    for (i, s) in summaries.iter().enumerate() {
        let c = palette[i % palette.len()];
        let x0 = left + i as i64 * slot + slot / 6;
        let x1 = left + (i as i64 + 1) * slot - slot / 6;
        let cx = (x0 + x1) / 2;
        fill_rect(&mut img, x0, ypix(s.dice.mean), x1, bottom - 1, c);
        // Whisker with caps.
        let (ylo, yhi) = (ypix(s.dice.lo), ypix(s.dice.hi));
        fill_rect(&mut img, cx, yhi, cx, ylo, axis);
        let cap = ((x1 - x0) / 6).max(2);
        fill_rect(&mut img, cx - cap, yhi, cx + cap, yhi, axis);
        fill_rect(&mut img, cx - cap, ylo, cx + cap, ylo, axis);
        // Mean above the whisker.
        let val = format!("{:.3}", s.dice.mean);
        let val = val.strip_prefix('0').unwrap_or(&val).to_string();
        let vs = if text_width(&val, 2) as i64 <= slot { 2 } else { 1 };
        draw_text(
            &mut img,
            &val,
            cx - text_width(&val, vs) as i64 / 2,
            (yhi - 6 * vs as i64 - 2).max(top - 12),
            vs,
            axis,
        );
        // Labels below the axis.
        let mut lines = vec![s.prompt.clone()];
        if show_structure && s.structure != "all" {
            lines.push(s.structure.clone());
        }
        for (li, line) in lines.iter().enumerate() {
            let sc = if text_width(line, 2) as i64 <= slot { 2 } else { 1 };
            let y = bottom + 6 + li as i64 * 14;
            draw_text(&mut img, line, cx - text_width(line, sc) as i64 / 2, y, sc, axis);
        }
    }
    Ok(img)
}
