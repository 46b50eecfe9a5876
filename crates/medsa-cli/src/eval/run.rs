//! The loops of `medsa eval`: over 2-D cases, and over a volume's slices and structures (the
//! per-slice prompt types, then the volume rules `keybox` and `propagate`, then the 3-D
//! metrics). Both datasets score a prompt type on one slice through the same step, [`score`],
//! which also holds the one loop over the rounds of `iterative:N`.

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use medsa_core::{Backend, Tensor};
use medsa_eval::metrics::{self, SegMetrics};
use medsa_eval::prompts;
use medsa_eval::report::CaseRecord;
use medsa_eval::Mask;
use medsa_io::nifti::{extract_slice, insert_slice, Axis, Slice};
use medsa_model::predictor::{embed_image, BoxPrompt, MaskOutput, Point, Predictor, Prompt};
use medsa_model::preprocess::ImageU8;
use medsa_model::propagate::{Follow, ModelSegmenter};
use medsa_model::Sam;
use medsa_train::augment::Dihedral;
use medsa_train::cache::{EmbeddingCache, Key};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::dataset::{Case2d, VolumeData};
use super::output::{self, RoundLog, SliceLog};
use super::prompt::{run_prompt, EvalPrompt, Outcome};
use super::EvalArgs;
use crate::model::Model;

fn progress(len: u64, hidden: bool, what: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
    {
        pb.set_style(style);
    }
    pb.set_prefix(what.to_string());
    pb
}

/// One prompt type on one embedded 2-D ground truth.
struct Trial<'a> {
    /// Ground truth `[H, W]`.
    gt: &'a Mask,
    /// Pixel spacing `[row, column]` in mm.
    spacing: &'a [f64; 2],
    kind: EvalPrompt,
    /// Stream of the prompt simulation's generator ([`medsa_eval::prompts::case_rng`]).
    stream: u64,
    /// Case and structure under which the rounds of `iterative:N` are logged.
    case: &'a str,
    structure: &'a str,
}

/// Runs `t.kind` ([`run_prompt`]; `what` names the trial in its errors) and scores the final
/// mask; for `iterative:N` every round is scored and logged in `rounds`. The step the 2-D and
/// the 3-D loops share.
fn score(
    args: &EvalArgs,
    predictor: &Predictor<'_>,
    t: &Trial<'_>,
    rounds: &mut RoundLog,
    what: impl FnOnce() -> String,
) -> Result<(Outcome, SegMetrics)> {
    let out = run_prompt(predictor, t.gt, t.kind, args.multimask, args.seed, t.stream).with_context(what)?;
    let m = metrics::evaluate(&out.pred, t.gt, t.spacing)?;
    if t.kind.clicks().is_some() {
        for (r, round) in out.rounds.iter().enumerate() {
            let rm = metrics::evaluate(&round.pred, t.gt, t.spacing)?;
            rounds.push(t.case, t.structure, &t.kind.to_string(), r + 1, round, &rm);
        }
    }
    Ok((out, m))
}

/// Every prompt type on every case of a manifest; one record per (case, prompt).
pub fn run_2d(
    args: &EvalArgs,
    predictor: &mut Predictor<'_>,
    cases: &[Case2d],
    prompts_list: &[EvalPrompt],
    rounds: &mut RoundLog,
) -> Result<Vec<CaseRecord>> {
    let pb = progress((cases.len() * prompts_list.len()) as u64, args.no_progress, "eval");
    let mut records = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        pb.set_message(format!("{}: embedding", case.id));
        predictor.set_image(&case.image).with_context(|| format!("case {}: image embedding", case.id))?;
        for kind in prompts_list {
            pb.set_message(format!("{} {kind}", case.id));
            let trial = Trial {
                gt: &case.gt,
                spacing: &case.spacing,
                kind: *kind,
                stream: i as u64,
                case: &case.id,
                structure: "fg",
            };
            let (_, m) =
                score(args, predictor, &trial, rounds, || format!("case {} prompt {kind}", case.id))?;
            records.push(CaseRecord::new(case.id.clone(), "fg", kind.to_string(), &m));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(records)
}

/// A slice of the volume where at least one structure is present.
struct Todo {
    /// Its index along the slicing axis.
    z: usize,
    /// Its labels.
    labels: Slice<i64>,
    /// Indices of the structures present in it.
    present: Vec<usize>,
}

/// The ground truth of structure `id` on a label slice.
fn structure_mask(labels: &Slice<i64>, id: i64) -> Result<Mask> {
    Ok(Mask::new(&[labels.height, labels.width], labels.data.iter().map(|l| *l == id).collect())?)
}

/// Image embeddings of a volume's slices: every slice is embedded once, whichever rules visit
/// it, and with `--cache-dir` kept on disk for the next run.
struct Embeddings<'a> {
    model: &'a Sam,
    be: &'a dyn Backend,
    v: &'a VolumeData,
    axis: Axis,
    cache: EmbeddingCache,
}

impl<'a> Embeddings<'a> {
    fn new(args: &EvalArgs, model: &'a Model, v: &'a VolumeData) -> Result<Self> {
        let dir = match &args.cache_dir {
            None => None,
            Some(d) => Some((d.clone(), fingerprint(args, model, v)?)),
        };
        let cache = EmbeddingCache::new(usize::MAX, dir)
            .with_context(|| "the embedding cache folder (--cache-dir)".to_string())?;
        Ok(Embeddings { model: &model.sam, be: model.backend.as_ref(), v, axis: args.axis, cache })
    }

    fn get(&mut self, z: usize) -> Result<Tensor> {
        let (model, be, v, axis) = (self.model, self.be, self.v, self.axis);
        let key = Key { source: 0, slice: z, symmetry: Dihedral(0) };
        let e = self.cache.get_or_compute(key, || {
            let img = extract_slice(&v.image, v.dims, axis, z)?;
            let image = ImageU8::new(img.width, img.height, 1, img.data)?;
            Ok(embed_image(model, be, &image)?)
        });
        e.with_context(|| format!("slice {z}: image embedding"))
    }
}

/// What a slice embedding depends on: the weights (and adapters) file contents, the
/// preprocessing, the slicing axis and the windowed 8-bit volume.
fn fingerprint(args: &EvalArgs, model: &Model, v: &VolumeData) -> Result<String> {
    let mut bytes = Vec::new();
    for f in std::iter::once(&model.path).chain(args.model.adapters.as_ref()) {
        let sha = medsa_io::fetch::sha256_file(f).with_context(|| format!("hashing {}", f.display()))?;
        bytes.extend(sha.as_bytes());
    }
    bytes.extend(format!("|{:?}|{:?}|{:?}|", model.sam.cfg.preprocess, args.axis, v.dims).as_bytes());
    bytes.extend(&v.image);
    Ok(medsa_io::fetch::sha256_hex(&bytes)[..16].to_string())
}

/// Predicted volumes `[structure][prompt]`, 0/1, x fastest.
type Preds = Vec<Vec<Vec<u8>>>;

/// One 3-D evaluation: the volume, the prompt types and the slices to prompt.
struct Volume3d<'a> {
    args: &'a EvalArgs,
    v: &'a VolumeData,
    prompts: &'a [EvalPrompt],
    /// Case id of the records: the volume's file name without `.nii` / `.nii.gz`.
    case: String,
    /// In-plane spacing `[row, column]` of a slice in mm.
    spacing2: [f64; 2],
    todo: Vec<Todo>,
}

/// Every prompt type on every structure of a volume; one record per (structure, prompt) with
/// the 3-D metrics, and the per-slice tables of the report.
pub fn run_3d(
    args: &EvalArgs,
    model: &Model,
    predictor: &mut Predictor<'_>,
    v: &VolumeData,
    prompts_list: &[EvalPrompt],
    rounds: &mut RoundLog,
) -> Result<(Vec<CaseRecord>, String)> {
    let axis = args.axis;
    let (col_ax, row_ax) = axis.in_plane();
    let case = args
        .volume
        .as_deref()
        .and_then(|p| p.file_name())
        .map(|s| s.to_string_lossy().trim_end_matches(".gz").trim_end_matches(".nii").to_string())
        .unwrap_or_else(|| "volume".into());
    let mut todo = Vec::new();
    for z in 0..v.dims[axis.index()] {
        let labels = extract_slice(&v.labels, v.dims, axis, z)?;
        let present: Vec<usize> =
            (0..v.structures.len()).filter(|&s| labels.data.contains(&v.structures[s].0)).collect();
        if !present.is_empty() {
            todo.push(Todo { z, labels, present });
        }
    }
    let vol = Volume3d {
        args,
        v,
        prompts: prompts_list,
        case,
        spacing2: [v.spacing[row_ax], v.spacing[col_ax]],
        todo,
    };
    let mut preds: Preds = vec![vec![vec![0u8; v.labels.len()]; prompts_list.len()]; v.structures.len()];
    let mut slices = SliceLog::new(v.structures.len(), prompts_list.len());
    let mut emb = Embeddings::new(args, model, v)?;
    vol.slice_rules(predictor, &mut emb, &mut preds, &mut slices, rounds)?;
    let propagation_md = vol.volume_rules(predictor, &mut emb, &mut preds, &mut slices)?;
    slices.write(&args.out)?;
    vol.score_3d(&preds, &slices, &propagation_md)
}

impl Volume3d<'_> {
    /// The per-slice prompt types: each slice with a structure embedded once, every present
    /// structure prompted on it.
    fn slice_rules(
        &self,
        predictor: &mut Predictor<'_>,
        emb: &mut Embeddings<'_>,
        preds: &mut Preds,
        slices: &mut SliceLog,
        rounds: &mut RoundLog,
    ) -> Result<()> {
        let (args, v) = (self.args, self.v);
        let per_slice = self.prompts.iter().any(|k| !k.volumetric());
        let pb = progress(
            if per_slice { self.todo.len() as u64 } else { 0 },
            args.no_progress || !per_slice,
            "slices",
        );
        for t in self.todo.iter().filter(|_| per_slice) {
            let (z, lab) = (t.z, &t.labels);
            pb.set_message(format!("slice {z}"));
            predictor.set_embedding(emb.get(z)?, (lab.height, lab.width))?;
            let slice_case = format!("{} slice {z}", self.case);
            for &s in &t.present {
                let (id, name) = &v.structures[s];
                let gt = structure_mask(lab, *id)?;
                for (pi, kind) in self.prompts.iter().enumerate().filter(|(_, k)| !k.volumetric()) {
                    let trial = Trial {
                        gt: &gt,
                        spacing: &self.spacing2,
                        kind: *kind,
                        stream: ((s as u64) << 32) | z as u64,
                        case: &slice_case,
                        structure: name,
                    };
                    let (out, m2) = score(args, predictor, &trial, rounds, || {
                        format!("structure {name}, slice {z}, prompt {kind}")
                    })?;
                    slices.push((s, pi), name, *kind, z, (&gt, &out.pred), &m2);
                    let sl = Slice {
                        data: out.pred.data().iter().map(|&b| u8::from(b)).collect(),
                        width: lab.width,
                        height: lab.height,
                    };
                    insert_slice(&mut preds[s][pi], v.dims, args.axis, z, &sl)?;
                }
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// The volume rules (`keybox`, `propagate`): per structure, from its largest cross-section.
    /// Returns the rows of the propagation table.
    fn volume_rules(
        &self,
        predictor: &mut Predictor<'_>,
        emb: &mut Embeddings<'_>,
        preds: &mut Preds,
        slices: &mut SliceLog,
    ) -> Result<String> {
        let v = self.v;
        let first = self.todo.first();
        let (h, w) = (first.map_or(0, |t| t.labels.height), first.map_or(0, |t| t.labels.width));
        let mut propagation_md = String::new();
        for (pi, kind) in self.prompts.iter().enumerate().filter(|(_, k)| k.volumetric()) {
            for (s, (id, name)) in v.structures.iter().enumerate() {
                let gts: Vec<(usize, Mask)> = self
                    .todo
                    .iter()
                    .filter(|t| t.present.contains(&s))
                    .map(|t| Ok((t.z, structure_mask(&t.labels, *id)?)))
                    .collect::<Result<_>>()?;
                let Some((key, key_gt)) = gts.iter().max_by_key(|(z, m)| (m.count(), std::cmp::Reverse(*z)))
                else {
                    continue;
                };
                let tb = prompts::tight_box(key_gt)?;
                let key_box = BoxPrompt { x0: tb.x0, y0: tb.y0, x1: tb.x1, y1: tb.y1 };
                let (gt_first, gt_last) = (gts[0].0, gts[gts.len() - 1].0);
                let masks: BTreeMap<usize, Vec<bool>> = match kind {
                    EvalPrompt::KeyBox => {
                        let mut out = BTreeMap::new();
                        for z in gt_first..=gt_last {
                            predictor.set_embedding(emb.get(z)?, (h, w))?;
                            out.insert(
                                z,
                                predictor.predict(&Prompt::bbox(key_box), MaskOutput::Single)?.mask(0),
                            );
                        }
                        out
                    }
                    EvalPrompt::Propagate(opts) => {
                        let click = opts.follow == Follow::Click;
                        let key_prompt = if click {
                            let (x, y) =
                                prompts::interior_point(key_gt)?.ok_or_else(|| anyhow!("empty key slice"))?;
                            Prompt::points(vec![Point::foreground(x as f32, y as f32)])
                        } else {
                            Prompt::bbox(key_box)
                        };
                        // `click`: the segmenter takes the multimask output for its click
                        // prompts without a mask prompt, whatever `--multimask` says.
                        let (model, be) = (emb.model, emb.be);
                        let mut seg =
                            ModelSegmenter::new(model, be, (h, w), MaskOutput::multimask_if(click), |z| {
                                emb.get(z).map_err(|e| medsa_model::Error::Volume(format!("{e:#}")))
                            })?;
                        let keys = BTreeMap::from([(*key, key_prompt)]);
                        let mut opts = *opts;
                        if opts.extent.is_some() {
                            opts.extent = Some((gt_first, gt_last));
                        }
                        let n_slices = v.dims[self.args.axis.index()];
                        let p = medsa_model::propagate::propagate(
                            &mut seg,
                            n_slices,
                            (h, w),
                            self.spacing2,
                            &keys,
                            &opts,
                        )
                        .with_context(|| format!("structure {name}, {kind}"))?;
                        let (lo, hi) = (
                            p.masks.keys().next().copied().unwrap_or(*key),
                            p.masks.keys().last().copied().unwrap_or(*key),
                        );
                        let ends: Vec<String> = p
                            .ends
                            .iter()
                            .map(|e| {
                                format!(
                                    "{} at {}: {}",
                                    if e.direction < 0 { "down" } else { "up" },
                                    e.last,
                                    e.stop
                                )
                            })
                            .collect();
                        let _ = writeln!(
                            propagation_md,
                            "| {name} | {kind} | {key} | {lo}-{hi} | {gt_first}-{gt_last} | {} |",
                            ends.join("; ")
                        );
                        p.masks
                    }
                    _ => unreachable!("only volume rules here"),
                };
                for (z, m) in &masks {
                    let sl = Slice { data: m.iter().map(|&b| u8::from(b)).collect(), width: w, height: h };
                    insert_slice(&mut preds[s][pi], v.dims, self.args.axis, *z, &sl)?;
                }
                for (z, gt) in &gts {
                    let pred = match masks.get(z) {
                        Some(m) => Mask::new(&[h, w], m.clone())?,
                        None => Mask::zeros(&[h, w])?,
                    };
                    let m2 = metrics::evaluate(&pred, gt, &self.spacing2)?;
                    slices.push((s, pi), name, *kind, *z, (gt, &pred), &m2);
                }
            }
        }
        Ok(propagation_md)
    }

    /// The 3-D metrics on the native grid (and `--save-pred`), and the per-slice Dice table
    /// followed by the propagation table.
    fn score_3d(
        &self,
        preds: &Preds,
        slices: &SliceLog,
        propagation_md: &str,
    ) -> Result<(Vec<CaseRecord>, String)> {
        let v = self.v;
        // Mask shape [nz, ny, nx] (x fastest), spacing [sz, sy, sx].
        let shape = [v.dims[2], v.dims[1], v.dims[0]];
        let spacing3 = [v.spacing[2], v.spacing[1], v.spacing[0]];
        let mut records = Vec::new();
        let mut md = String::new();
        let _ = writeln!(md, "| structure | prompt | slices prompted | mean 2D Dice per slice |");
        let _ = writeln!(md, "|---|---|---:|---:|");
        for (s, (id, name)) in v.structures.iter().enumerate() {
            let gt = Mask::new(&shape, v.labels.iter().map(|l| l == id).collect())?;
            for (pi, kind) in self.prompts.iter().enumerate() {
                let pred = Mask::new(&shape, preds[s][pi].iter().map(|&b| b != 0).collect())?;
                let m = metrics::evaluate(&pred, &gt, &spacing3)?;
                records.push(CaseRecord::new(self.case.clone(), name.clone(), kind.to_string(), &m));
                let d = slices.dice(s, pi);
                let _ = writeln!(
                    md,
                    "| {name} | {kind} | {} | {:.4} |",
                    d.len(),
                    if d.is_empty() { f64::NAN } else { d.iter().sum::<f64>() / d.len() as f64 }
                );
                if self.args.save_pred {
                    output::save_prediction(&self.args.out, &v.label_volume, *id, *kind, &preds[s][pi])?;
                }
            }
        }
        if !propagation_md.is_empty() {
            let _ = writeln!(md, "\n## Propagation\n\n| structure | rule | key slice | slices written | true extent | chain ends |\n|---|---|---:|---|---|---|");
            md.push_str(propagation_md);
        }
        Ok((records, md))
    }
}
