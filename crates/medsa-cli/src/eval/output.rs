//! Writing the results of `medsa eval`: the logs the loops fill (per-round rows of
//! `iterative:N`, per-slice 2-D scores of a volume), the report files in `--out`, the predicted
//! masks of `--save-pred`, and the summary table on stdout.

use anyhow::{Context, Result};
use medsa_eval::metrics::SegMetrics;
use medsa_eval::report::Report;
use medsa_eval::Mask;
use medsa_io::nifti::{Labels, Volume};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use super::prompt::{EvalPrompt, Multimask, Round};
use super::{dedup, EvalArgs};

/// Per-round rows of the iterative protocol.
#[derive(Default)]
pub struct RoundLog {
    csv: String,
    /// (prompt, round) -> Dice values.
    dice: Vec<(String, usize, Vec<f64>)>,
}

impl RoundLog {
    /// Logs round `round` (from 1) of `prompt` on `case` / `structure`, scored `m`.
    pub fn push(
        &mut self,
        case: &str,
        structure: &str,
        prompt: &str,
        round: usize,
        r: &Round,
        m: &SegMetrics,
    ) {
        if self.csv.is_empty() {
            self.csv.push_str(
                "case,structure,prompt,round,click_x,click_y,click_label,pred_iou,dice,iou,hd95_mm\n",
            );
        }
        let (cx, cy, cl) = match r.click {
            Some(c) => (format!("{}", c.x), format!("{}", c.y), if c.is_positive() { "1" } else { "0" }),
            None => (String::new(), String::new(), ""),
        };
        let _ = writeln!(
            self.csv,
            "{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{}",
            csv_field(case),
            csv_field(structure),
            prompt,
            round,
            cx,
            cy,
            cl,
            r.pred_iou,
            m.dice,
            m.iou,
            m.hd95.map(|v| format!("{v:.6}")).unwrap_or_default()
        );
        match self.dice.iter_mut().find(|(p, k, _)| p == prompt && *k == round) {
            Some((_, _, v)) => v.push(m.dice),
            None => self.dice.push((prompt.to_string(), round, vec![m.dice])),
        }
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        if self.dice.is_empty() {
            return s;
        }
        let _ = writeln!(s, "| prompt | round (clicks) | n | mean Dice |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for (p, k, v) in &self.dice {
            let _ =
                writeln!(s, "| {p} | {k} | {} | {:.4} |", v.len(), v.iter().sum::<f64>() / v.len() as f64);
        }
        s
    }
}

/// Per-slice 2-D scores of a volume (`slices.csv`), and the Dice values per (structure,
/// prompt) for the mean 2-D Dice of the report.
pub struct SliceLog {
    csv: String,
    /// `[structure][prompt]` -> Dice per slice, in the order logged.
    dice: Vec<Vec<Vec<f64>>>,
}

impl SliceLog {
    /// An empty log for `structures` x `prompts`.
    pub fn new(structures: usize, prompts: usize) -> Self {
        SliceLog {
            csv: String::from("structure,prompt,slice,gt_pixels,pred_pixels,dice,iou\n"),
            dice: vec![vec![Vec::new(); prompts]; structures],
        }
    }

    /// Logs slice `z` of structure `s` (named `name`) under prompt `pi` (`kind`): the ground
    /// truth and prediction and their 2-D metrics `m`.
    pub fn push(
        &mut self,
        (s, pi): (usize, usize),
        name: &str,
        kind: EvalPrompt,
        z: usize,
        (gt, pred): (&Mask, &Mask),
        m: &SegMetrics,
    ) {
        let _ = writeln!(
            self.csv,
            "{},{kind},{z},{},{},{:.6},{:.6}",
            csv_field(name),
            gt.count(),
            pred.count(),
            m.dice,
            m.iou
        );
        self.dice[s][pi].push(m.dice);
    }

    /// The Dice values of structure `s` under prompt `pi`.
    pub fn dice(&self, s: usize, pi: usize) -> &[f64] {
        &self.dice[s][pi]
    }

    /// Writes `slices.csv` into `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::write(out.join("slices.csv"), &self.csv)
            .with_context(|| format!("writing {}", out.join("slices.csv").display()))
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `--save-pred`: writes the predicted mask `pred` of label `id` under `kind` on the grid of
/// `label_volume` as `pred_<id>_<kind>.nii.gz` in `out`.
pub fn save_prediction(
    out: &Path,
    label_volume: &Volume,
    id: i64,
    kind: EvalPrompt,
    pred: &[u8],
) -> Result<()> {
    let file = out.join(format!("pred_{id}_{}.nii.gz", kind.to_string().replace(':', "-")));
    label_volume.write_labels(&file, Labels::U8(pred)).with_context(|| format!("writing {}", file.display()))
}

/// Writes `report.md`, `report.csv`, `report.json`, `iterative_rounds.csv` (when rounds were
/// logged) and `dice_by_prompt.png` into `--out`.
pub fn write_outputs(
    args: &EvalArgs,
    report: &Report,
    rounds: &RoundLog,
    model_line: &str,
    what: &str,
    extra_md: &str,
    elapsed: f64,
) -> Result<()> {
    let out = &args.out;
    let mut md = String::new();
    let _ = writeln!(md, "# medsa eval\n");
    let _ = write!(md, "{what}{model_line}");
    let _ = writeln!(
        md,
        "- prompts: {}; seed {}",
        dedup(&args.prompts).iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "),
        args.seed
    );
    let _ = writeln!(
        md,
        "- inference: mask = logits > 0 at the original size; {}; `iterative:N` reports round N, each \
         correction at the interior of the largest error region with all clicks so far and the previous \
         low-res logits as mask prompt (single mask)",
        match args.multimask {
            Multimask::Auto =>
                "multimask (best predicted IoU of 3) for one-click prompts (`1pt`, first round of \
                                `iterative:N`), single mask otherwise (SAM's rule)",
            Multimask::Always => "multimask (best predicted IoU of 3) for every prompt without a mask prompt",
            Multimask::Never => "single-mask output for every prompt",
        }
    );
    let _ = writeln!(
        md,
        "- metrics: Dice, IoU, HD95 / ASSD in mm (surface = mask minus its erosion); HD95 undefined \
         when exactly one mask is empty (left out of the mean, counted as excluded); mean [95 % percentile \
         bootstrap CI, {} resamples]",
        report.bootstrap.resamples
    );
    let _ = writeln!(md, "- wall time: {elapsed:.1} s\n");
    md.push_str(&report.to_markdown());
    if !rounds.dice.is_empty() {
        let _ = writeln!(md, "\n## Iterative protocol: mean Dice per round\n");
        md.push_str(&rounds.markdown());
    }
    if !extra_md.is_empty() {
        let _ = writeln!(md, "\n## Per-slice 2D Dice (slices where the structure is present)\n");
        md.push_str(extra_md);
    }
    let w = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    w("report.md", md.as_bytes())?;
    w("report.csv", report.to_csv().as_bytes())?;
    w("report.json", report.to_json()?.as_bytes())?;
    if !rounds.csv.is_empty() {
        w("iterative_rounds.csv", rounds.csv.as_bytes())?;
    }
    let chart = out.join("dice_by_prompt.png");
    report.write_chart(&chart).with_context(|| format!("writing {}", chart.display()))?;
    Ok(())
}

/// Prints the summary table (prompt, structure, n, Dice / IoU / HD95 with 95 % intervals) and
/// where the report is to stdout.
pub fn print_summary(report: &Report, out: &Path) -> Result<()> {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:<22} {:>4}  {:<26} {:<26} {:<24}",
        "prompt", "structure", "n", "Dice [95% CI]", "IoU [95% CI]", "HD95 mm [95% CI]"
    );
    for m in &report.summaries {
        let ci = |c: &medsa_eval::MeanCi, p: usize| format!("{:.p$} [{:.p$}, {:.p$}]", c.mean, c.lo, c.hi);
        let _ = writeln!(
            s,
            "{:<14} {:<22} {:>4}  {:<26} {:<26} {:<24}",
            m.prompt,
            m.structure,
            m.n,
            ci(&m.dice, 4),
            ci(&m.iou, 4),
            m.hd95.as_ref().map(|c| ci(c, 2)).unwrap_or_else(|| "n/a".into())
        );
    }
    let _ = writeln!(s, "report: {}", out.join("report.md").display());
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    lock.write_all(s.as_bytes()).context("writing to stdout")?;
    Ok(())
}
