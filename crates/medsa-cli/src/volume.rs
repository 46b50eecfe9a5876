//! `medsa segment-volume`: a NIfTI volume with a key-slice box or per-slice clicks.

use crate::args::{parse_axis, parse_box, parse_point, parse_window, Window};
use crate::model::{self, WeightsArgs};
use crate::segment::{segment_image, to_gray_u8, window_or_default};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use medsa_core::DepthGrouping;
use medsa_io::nifti::{insert_slice, Axis, Labels, Slice, Volume};
use medsa_model::config::DepthSettings;
use medsa_model::predictor::{BoxPrompt, MaskOutput, Point, Prompt};
use medsa_model::preprocess::ImageU8;
use medsa_model::volume::{
    ChunkEmbeddings, SliceAxis, VolumeOptions, VolumePredictor, VolumePrompts, VolumeView,
};
use std::path::PathBuf;
use std::time::Instant;

/// SD-Trans depth grouping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Grouping {
    /// The paper's: the same token of the same window across the D slices.
    PerWindow,
    /// The official code's grouping, for checkpoints trained with it.
    Official,
}

/// Arguments of `medsa segment-volume`.
#[derive(clap::Args, Debug)]
pub struct SegmentVolumeArgs {
    /// Input volume (.nii or .nii.gz, 3-D).
    #[arg(value_name = "VOL.nii.gz")]
    pub volume: PathBuf,
    /// Key slice of --box (index along --axis). Repeatable for several key slices, each with
    /// its own --box, in the same order.
    #[arg(long, value_name = "K", requires = "bbox", conflicts_with = "point_slice")]
    pub box_slice: Vec<usize>,
    /// Box on the key slice, in that slice's pixels: x0,y0,x1,y1. One per --box-slice.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", value_parser = parse_box, requires = "box_slice", allow_hyphen_values = true)]
    pub bbox: Vec<BoxPrompt>,
    /// With --fixed-box: slices on each side of the key slice that reuse its box.
    #[arg(long, value_name = "R", default_value_t = 0, requires = "fixed_box")]
    pub radius: usize,
    /// Slice of the --point clicks.
    #[arg(long, value_name = "K", requires = "points")]
    pub point_slice: Option<usize>,
    /// Click on --point-slice, in that slice's pixels: x,y or x,y,label (1/fg, 0/bg). Repeatable.
    #[arg(long = "point", value_name = "X,Y[,LABEL]", value_parser = parse_point, requires = "point_slice", allow_hyphen_values = true)]
    pub points: Vec<Point>,
    /// Slice axis: x, y or z (sagittal, coronal, axial for RAS volumes).
    #[arg(long, value_name = "AXIS", value_parser = parse_axis, default_value = "z")]
    pub axis: Axis,
    /// Chunk depth D: slices encoded together through SD-Trans (Med-SA with Depth_Adapter only).
    #[arg(long, value_name = "D", default_value_t = 8)]
    pub depth: usize,
    /// SD-Trans depth grouping (Med-SA with Depth_Adapter only).
    #[arg(long, value_enum, default_value_t = Grouping::PerWindow)]
    pub grouping: Grouping,
    /// Intensity window: ct-abdomen, ct-brain, ct-bone, mri or LO,HI (HU). Default: mri for
    /// volumes without negative values, ct-abdomen otherwise.
    #[arg(long, value_name = "WINDOW", value_parser = parse_window, allow_hyphen_values = true)]
    pub window: Option<Window>,
    /// Keep the best of SAM's three candidate masks on each slice.
    #[arg(long)]
    pub multimask: bool,
    /// The fixed box instead of propagation: the key slice's box reused unchanged on the slices
    /// within --radius of it (clicks: their own slice only). On Colin27 and the head CT it
    /// beats the default propagation on 4 of the 14 targets measured (the skull ring, the right
    /// putamen, both amygdalae: where the key slice's mask is poor or the organ is compact)
    /// and loses on the other 10 (README).
    #[arg(long)]
    pub fixed_box: bool,
    /// Without --fixed-box: also feed the previous slice's low-res logits as the mask prompt
    /// (the chain's prompt then gives one mask, no candidates; see the README).
    #[arg(long, conflicts_with = "fixed_box")]
    pub mask_feedback: bool,
    /// Without --fixed-box: the chains stay inside slices FIRST-LAST (inclusive), e.g. the slice
    /// range of a 3-D box around the organ; nothing is written outside it. Give it: without a
    /// range, SAM finds something in every box and the chains run on past the organ.
    #[arg(long, value_name = "FIRST-LAST", conflicts_with = "fixed_box", value_parser = crate::args::parse_range)]
    pub slice_range: Option<(usize, usize)>,
    /// Let propagated boxes leave their key slice's box plus the margin (by default they stay
    /// inside it, which is right when each key slice is the organ's largest cross-section, as
    /// MedSAM's protocol picks it).
    #[arg(long = "no-within-key", action = clap::ArgAction::SetFalse, conflicts_with = "fixed_box")]
    pub within_key: bool,
    /// Do not let the key slice's box compete on every slice. By default its mask replaces the
    /// chain's when it agrees better (Dice) with the previous slice's mask, is larger than the
    /// chain's mask and no larger than the previous one, so a chain that drifted onto part of
    /// the organ comes back to the whole (two more decoder runs per slice; on the Colin27 brain
    /// 0.85 with it, 0.72 without, see the README).
    #[arg(long = "no-key-candidates", action = clap::ArgAction::SetFalse, conflicts_with = "fixed_box")]
    pub key_candidates: bool,
    /// Output label volume (.nii or .nii.gz): 1 = foreground, with the input's header and affine.
    #[arg(long, short, value_name = "MASK.nii.gz")]
    pub out: PathBuf,
    #[command(flatten)]
    pub weights: WeightsArgs,
}

fn slice_axis(a: Axis) -> SliceAxis {
    match a {
        Axis::X => SliceAxis::X,
        Axis::Y => SliceAxis::Y,
        Axis::Z => SliceAxis::Z,
    }
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} slices, {{elapsed_precise}} (eta {{eta}})"
    )) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Runs `medsa segment-volume`.
pub fn run(args: &SegmentVolumeArgs) -> Result<()> {
    let mut prompts = VolumePrompts::new();
    if let Some(k) =
        args.box_slice.iter().enumerate().find_map(|(i, k)| args.box_slice[..i].contains(k).then_some(k))
    {
        bail!("--box-slice {k} is given twice: each key slice takes one --box");
    }
    if args.box_slice.len() != args.bbox.len() {
        bail!(
            "give one --box per --box-slice ({} key slices, {} boxes)",
            args.box_slice.len(),
            args.bbox.len()
        );
    }
    match (args.box_slice.is_empty(), args.point_slice) {
        (false, None) => {
            for (&k, &b) in args.box_slice.iter().zip(&args.bbox) {
                prompts.key_box(k, b, args.radius);
            }
        }
        (true, Some(k)) if !args.points.is_empty() => {
            prompts.insert(k, Prompt::points(args.points.clone()));
        }
        _ => bail!("give either --box-slice K --box x0,y0,x1,y1, or --point-slice K --point x,y[,label] ..."),
    }
    if args.depth == 0 {
        bail!("--depth must be at least 1");
    }
    let t0 = Instant::now();
    let mut vol = Volume::read(&args.volume).with_context(|| format!("reading {}", args.volume.display()))?;
    let dims = vol.dims();
    let window = window_or_default(args.window, vol.data());
    window.apply(vol.data_mut()).with_context(|| format!("windowing {}", args.volume.display()))?;
    let model = model::load(&args.weights)?;
    let axis = slice_axis(args.axis);
    let view = VolumeView::new(vol.data(), dims).with_context(|| format!("{}", args.volume.display()))?;
    let slices = view.n_slices(axis);
    let resolved = prompts.resolve(slices).with_context(|| format!("{}: prompts", args.volume.display()))?;
    let grouping = match args.grouping {
        Grouping::PerWindow => DepthGrouping::PerWindow,
        Grouping::Official => DepthGrouping::Official,
    };
    let depth = model.detected.adapters.depth.then_some(DepthSettings { depth: args.depth, grouping });
    let (labels, how) = if !args.fixed_box {
        propagate_slices(args, &model.sam, model.backend.as_ref(), &view, axis, vol.spacing(), depth)?
    } else if depth.is_some() {
        let opts = VolumeOptions {
            axis,
            depth: args.depth,
            grouping,
            output: MaskOutput::multimask_if(args.multimask),
            label: 1,
        };
        let pb = bar(slices, "SD-Trans");
        let seg = VolumePredictor::new(&model.sam, model.backend.as_ref(), opts)?
            .segment(&view, &prompts, |done, _| pb.set_position(done as u64))
            .with_context(|| format!("segmenting {}", args.volume.display()))?;
        pb.finish_and_clear();
        (
            seg.labels,
            format!(
                "fixed prompts on {} slices, Med-SA SD-Trans, chunks of D = {}, {} chunks encoded",
                resolved.len(),
                args.depth,
                seg.chunks_encoded
            ),
        )
    } else {
        // No Depth_Adapter (LiteMedSAM, SAM, 2-D Med-SA): each prompted slice on its own through
        // the 2-D predictor, with the same prompt propagation (key box on ±radius slices).
        eprintln!(
            "note: {} has no SD-Trans depth adapters: segmenting the {} prompted slices one by one in 2-D",
            model.detected.family,
            resolved.len()
        );
        let pb = bar(resolved.len(), "2-D slices");
        let mut labels = vec![0u8; vol.data().len()];
        let (h, w) = view.slice_shape(axis);
        for (&s, prompt) in &resolved {
            let pixels = view.slice(axis, s)?;
            let img = ImageU8::new(w, h, 1, to_gray_u8(&pixels))?;
            let seg = segment_image(
                &model.sam,
                model.backend.as_ref(),
                &img,
                prompt,
                MaskOutput::multimask_if(args.multimask),
            )
            .with_context(|| format!("{}: slice {s}", args.volume.display()))?;
            let slice =
                Slice { data: seg.mask.iter().map(|&v| u8::from(v != 0)).collect(), width: w, height: h };
            insert_slice(&mut labels, dims, args.axis, s, &slice)?;
            pb.inc(1);
        }
        pb.finish_and_clear();
        (
            labels,
            format!(
                "fixed prompts on {} slices, {} slice by slice (2-D)",
                resolved.len(),
                model.detected.family
            ),
        )
    };
    vol.write_labels(&args.out, Labels::U8(&labels))
        .with_context(|| format!("writing {}", args.out.display()))?;
    let fg = labels.iter().filter(|&&v| v != 0).count();
    crate::say(format!(
        "{}: {}x{}x{} labels, {fg} foreground voxels ({how}, {}), {:.1} s",
        args.out.display(),
        dims[0],
        dims[1],
        dims[2],
        window.describe(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Without `--fixed-box`: the key slice's prompt, then each slice from the previous mask
/// ([`medsa_model::propagate`]); prints how each chain ended. With SD-Trans (`depth`), each
/// slice's embedding is its chunk's, one encoder run per chunk a chain enters
/// ([`ChunkEmbeddings`]); the prompts still follow slice by slice, inside a chunk too.
#[allow(clippy::too_many_arguments)]
fn propagate_slices(
    args: &SegmentVolumeArgs,
    sam: &medsa_model::Sam,
    be: &dyn medsa_core::Backend,
    view: &VolumeView<'_>,
    axis: SliceAxis,
    spacing: [f32; 3],
    depth: Option<DepthSettings>,
) -> Result<(Vec<u8>, String)> {
    use medsa_model::propagate::{propagate, Follow, ModelSegmenter, PropagateOptions, Rule};
    let (keys, follow): (std::collections::BTreeMap<usize, Prompt>, _) = match args.point_slice {
        None if !args.box_slice.is_empty() => (
            args.box_slice.iter().zip(&args.bbox).map(|(&k, &b)| (k, Prompt::bbox(b))).collect(),
            Follow::Box,
        ),
        Some(k) => ([(k, Prompt::points(args.points.clone()))].into(), Follow::Click),
        None => bail!("propagation needs --box-slice K --box ... or --point-slice K --point ..."),
    };
    let (h, w) = view.slice_shape(axis);
    // In-plane spacing [row, column], as the slices are cut (see medsa_io::nifti).
    let (col, row) = args.axis.in_plane();
    let mut chunked = depth.map(|d| ChunkEmbeddings::new(sam, be, view, axis, d)).transpose()?;
    let embed = |z: usize| -> medsa_model::Result<medsa_core::Tensor> {
        if let Some(c) = chunked.as_mut() {
            return c.embedding(z);
        }
        let img = ImageU8::new(w, h, 1, to_gray_u8(&view.slice(axis, z)?))?;
        medsa_model::predictor::embed_image(sam, be, &img)
    };
    let mut seg = ModelSegmenter::new(
        sam,
        be,
        (h, w),
        MaskOutput::multimask_if(args.multimask || follow == Follow::Click),
        embed,
    )?;
    let opts = PropagateOptions {
        follow,
        mask_feedback: args.mask_feedback,
        extent: args.slice_range,
        within_key: args.within_key,
        key_candidates: args.key_candidates,
        ..Default::default()
    };
    if opts.extent.is_none() {
        eprintln!("note: no --slice-range: each chain runs until its mask vanishes or jumps, which may be past the organ's end");
    }
    let sp = [spacing[row] as f64, spacing[col] as f64];
    let p = propagate(&mut seg, view.n_slices(axis), (h, w), sp, &keys, &opts).with_context(|| {
        format!("{}: propagation from key slices {:?}", args.volume.display(), keys.keys())
    })?;
    let dims = view.dims();
    let mut labels = vec![0u8; dims.iter().product()];
    for (&z, m) in &p.masks {
        let slice = Slice { data: m.iter().map(|&v| u8::from(v)).collect(), width: w, height: h };
        insert_slice(&mut labels, dims, args.axis, z, &slice)?;
    }
    // Which rule made each slice's prompt (shown with -v), then how each chain ended.
    for r in &p.slices {
        match r.rule {
            Rule::Key => tracing::info!("slice {}: the key prompt, {} pixels", r.slice, r.area),
            Rule::Propagated { key, from } => tracing::info!(
                "slice {}: prompt from slice {from}'s mask (chain of key slice {key}), {} pixels",
                r.slice,
                r.area
            ),
            Rule::KeyBox { key } => tracing::info!(
                "slice {}: key slice {key}'s box (its mask agreed better with the previous slice), {} pixels",
                r.slice,
                r.area
            ),
        }
    }
    for e in &p.ends {
        crate::say(format!(
            "key slice {}, {}: slices written to {}, then {}",
            e.key,
            if e.direction < 0 { "down" } else { "up" },
            e.last,
            e.stop
        ));
    }
    drop(seg);
    let runs = match (&chunked, depth) {
        (Some(c), Some(d)) => {
            format!(" (SD-Trans, chunks of D = {}: {} encoder runs)", d.depth, c.encoder_runs())
        }
        _ => String::new(),
    };
    let keys: Vec<usize> = keys.keys().copied().collect();
    Ok((labels, format!("propagated from key slices {keys:?} over {} slices{runs}", p.masks.len())))
}
