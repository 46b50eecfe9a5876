//! `VolumePredictor` and SD-Trans over volumes: the chunk policy (every slice written exactly
//! once, the last chunk overlapping), D = 1, permutation equivariance of `per_window` depth
//! attention, slice orientation identical to medsa-io, typed errors, Colin27 end to end, and the
//! per-slice chunk embeddings SD-Trans propagation uses.

#![allow(clippy::unwrap_used)]

mod support;

use medsa_core::{DepthGrouping, Tensor};
use medsa_io::nifti::{extract_slice, Axis, Labels, Volume};
use medsa_model::config::DepthSettings;
use medsa_model::nn::Trace;
use medsa_model::predictor::{BoxPrompt, MaskOutput, Point, Prompt};
use medsa_model::volume::{
    plan_chunks, preprocess_slice, Chunk, ChunkEmbeddings, SliceAxis, VolumeOptions, VolumePredictor,
    VolumePrompts, VolumeSegmentation, VolumeView,
};
use medsa_model::{Error, Sam};
use medsa_ref::Cpu;
use support::{tiny_medsa_config, zero_rel_tables};

/// A smooth synthetic volume in [0, 1], `x` fastest.
fn synthetic(dims: [usize; 3]) -> Vec<f32> {
    let [nx, ny, nz] = dims;
    let mut v = Vec::with_capacity(nx * ny * nz);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let (fx, fy, fz) = (x as f32 / nx as f32, y as f32 / ny as f32, z as f32);
                v.push(0.5 + 0.5 * (6.0 * fx + 3.0 * fy * fy + 0.7 * fz).sin() * (1.0 - fx * fy));
            }
        }
    }
    v
}

/// A positive click per slice, moving with the slice index, in a `w × h` slice.
fn point_prompts(slices: std::ops::Range<usize>, (h, w): (usize, usize), shift: usize) -> VolumePrompts {
    let mut p = VolumePrompts::new();
    for s in slices {
        let k = s + shift;
        let x = (3 + 5 * k) % w;
        let y = (2 + 7 * k) % h;
        p.insert(s, Prompt::points(vec![Point::foreground(x as f32, y as f32), Point::background(1.0, 1.0)]));
    }
    p
}

fn segment(
    model: &Sam,
    data: &[f32],
    dims: [usize; 3],
    prompts: &VolumePrompts,
    depth: usize,
) -> VolumeSegmentation {
    let view = VolumeView::new(data, dims).unwrap();
    let opts = VolumeOptions { depth, ..VolumeOptions::default() };
    VolumePredictor::new(model, &Cpu, opts).unwrap().segment(&view, prompts, |_, _| {}).unwrap()
}

/// Labels of z slices `z0 .. z1` of a volume with `nx·ny` voxels per slice.
fn z_slab(labels: &[u8], dims: [usize; 3], z0: usize, z1: usize) -> &[u8] {
    let plane = dims[0] * dims[1];
    &labels[z0 * plane..z1 * plane]
}

#[test]
fn plan_chunks_write_every_slice_exactly_once() {
    let c = |start, depth, first_new| Chunk { start, depth, first_new };
    assert_eq!(plan_chunks(8, 4).unwrap(), vec![c(0, 4, 0), c(4, 4, 4)]);
    // Not a multiple: the last chunk is the last D slices and writes only its new ones.
    assert_eq!(plan_chunks(10, 4).unwrap(), vec![c(0, 4, 0), c(4, 4, 4), c(6, 4, 8)]);
    // Fewer slices than D: one chunk at D' = n.
    assert_eq!(plan_chunks(3, 8).unwrap(), vec![c(0, 3, 0)]);
    assert_eq!(plan_chunks(5, 1).unwrap().len(), 5);
    for n in 1..40 {
        for d in 1..12 {
            let chunks = plan_chunks(n, d).unwrap();
            let mut written = vec![0; n];
            for ch in &chunks {
                assert_eq!(ch.depth, d.min(n));
                assert!(ch.start <= ch.first_new && ch.first_new < ch.end() && ch.end() <= n, "{ch:?}");
                written[ch.first_new..ch.end()].iter_mut().for_each(|w| *w += 1);
            }
            assert!(written.iter().all(|&w| w == 1), "n {n} d {d}: {written:?}");
        }
    }
    let colin = plan_chunks(181, 8).unwrap();
    assert_eq!(colin.len(), 23);
    assert_eq!(*colin.last().unwrap(), c(173, 8, 176));
    assert!(matches!(plan_chunks(10, 0), Err(Error::Config(_))));
    assert!(matches!(plan_chunks(0, 4), Err(Error::Volume(_))));
}

#[test]
fn slices_are_oriented_like_medsa_io() {
    let dims = [3, 4, 5];
    let data: Vec<f32> = (0..60).map(|i| i as f32 / 59.0).collect();
    let view = VolumeView::new(&data, dims).unwrap();
    for (axis, io_axis) in [(SliceAxis::X, Axis::X), (SliceAxis::Y, Axis::Y), (SliceAxis::Z, Axis::Z)] {
        assert_eq!(SliceAxis::from_index(io_axis.index()), Some(axis));
        for k in 0..view.n_slices(axis) {
            let ours = view.slice(axis, k).unwrap();
            let io = extract_slice(&data, dims, io_axis, k).unwrap();
            assert_eq!(ours, io.data, "{axis:?} {k}");
            assert_eq!(view.slice_shape(axis), (io.height, io.width));
        }
        // slice_pixel is the inverse: the pixel it names holds the voxel's value.
        for z in 0..5 {
            for y in 0..4 {
                for x in 0..3 {
                    let (k, px, py) = view.slice_pixel(axis, [x, y, z]).unwrap();
                    let s = view.slice(axis, k).unwrap();
                    let w = view.slice_shape(axis).1;
                    assert_eq!(s[py as usize * w + px as usize], data[x + 3 * (y + 4 * z)]);
                }
            }
        }
        assert!(view.slice_pixel(axis, [3, 0, 0]).is_none());
        assert!(matches!(view.slice(axis, view.n_slices(axis)), Err(Error::NoSuchSlice { .. })));
    }
}

/// Slices are preprocessed exactly as `Predictor::set_image` does for an 8-bit image, and the
/// mask of slice k along any axis lands on the voxels of slice k in medsa-io's orientation.
#[test]
fn preprocessing_matches_set_image_and_masks_land_on_their_slice() {
    use medsa_model::config::Preprocess;
    use medsa_model::predictor::Predictor;
    use medsa_model::preprocess::ImageU8;
    use medsa_model::volume::preprocess_slice;
    let dims = [20, 24, 6];
    let data = synthetic(dims);
    let view = VolumeView::new(&data, dims).unwrap();
    for pre in [Preprocess::sam(), Preprocess::CodeAUnitRange] {
        let mut cfg = tiny_medsa_config(64, 2);
        cfg.preprocess = pre.clone();
        let model = Sam::random(&cfg, 24).unwrap();
        for (axis, io_axis) in [(SliceAxis::Y, Axis::Y), (SliceAxis::X, Axis::X)] {
            let k = 3;
            let (h, w) = view.slice_shape(axis);
            let gray: Vec<u8> =
                view.slice(axis, k).unwrap().iter().map(|&v| (v * 255.0).round() as u8).collect();
            let mut p2d = Predictor::new(&model, &Cpu).unwrap();
            p2d.set_image(&ImageU8::new(w, h, 1, gray).unwrap()).unwrap();
            let x = preprocess_slice(&model, &view, axis, k).unwrap();
            let e = model.embed(&Cpu, &x, None, &mut Trace::disabled()).unwrap();
            assert_eq!(e.data(), p2d.embedding().unwrap().data(), "{pre:?} {axis:?}");

            // D = 1 on this axis: slice k's labels are the 2-D decode of its D = 1 embedding.
            let prompt = Prompt::points(vec![Point::foreground(w as f32 / 2.0, h as f32 / 3.0)]);
            let mut prompts = VolumePrompts::new();
            prompts.insert(k, prompt.clone());
            let opts = VolumeOptions { axis, depth: 1, ..VolumeOptions::default() };
            let seg = VolumePredictor::new(&model, &Cpu, opts)
                .unwrap()
                .segment(&view, &prompts, |_, _| {})
                .unwrap();
            let e1 = model
                .embed(
                    &Cpu,
                    &x,
                    Some(DepthSettings { depth: 1, grouping: DepthGrouping::PerWindow }),
                    &mut Trace::disabled(),
                )
                .unwrap();
            p2d.set_embedding(e1, (h, w)).unwrap();
            let want: Vec<u8> =
                p2d.predict(&prompt, MaskOutput::Single).unwrap().mask(0).into_iter().map(u8::from).collect();
            assert!(want.contains(&1) && want.contains(&0), "trivial mask");
            assert_eq!(extract_slice(&seg.labels, dims, io_axis, k).unwrap().data, want, "{pre:?} {axis:?}");
            let others = seg.labels.iter().filter(|&&v| v != 0).count();
            assert_eq!(others, want.iter().filter(|&&v| v != 0).count(), "only slice {k} is written");
        }
    }
}

/// With zero relative-position tables, `per_window` SD-Trans attends over the D slices of a
/// chunk as a set: permuting the slices permutes the embeddings. The control with random tables
/// shows the test can fail, and changing one slice changes the others' embeddings (the depth
/// branch really mixes slices).
#[test]
fn per_window_depth_attention_is_equivariant_to_slice_permutation() {
    // Grid 4 with window 2: 4 windows per slice in block 0, block 1 global.
    let cfg = tiny_medsa_config(64, 2);
    let mut model = Sam::random(&cfg, 7).unwrap();
    let d = 4;
    let x = Tensor::from_fn(vec![d, 3, 64, 64], |i| (i as f32 * 0.37).sin() * 1.7 + (i % 97) as f32 / 50.0)
        .unwrap();
    let perm = [2, 0, 3, 1];
    let parts: Vec<Tensor> = perm.iter().map(|&p| x.narrow(0, p, 1).unwrap()).collect();
    let xp = Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0).unwrap();
    let settings = Some(DepthSettings { depth: d, grouping: DepthGrouping::PerWindow });
    let embed = |m: &Sam, x: &Tensor| m.embed(&Cpu, x, settings, &mut Trace::disabled()).unwrap();
    let max_perm_err = |e: &Tensor, ep: &Tensor| {
        perm.iter()
            .enumerate()
            .map(|(i, &p)| {
                let a = ep.narrow(0, i, 1).unwrap();
                let b = e.narrow(0, p, 1).unwrap();
                a.data().iter().zip(b.data()).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max)
            })
            .fold(0.0f32, f32::max)
    };

    // Control: random rel tables make the depth grid positional.
    let (e, ep) = (embed(&model, &x), embed(&model, &xp));
    let control = max_perm_err(&e, &ep);

    zero_rel_tables(&mut model);
    let (e, ep) = (embed(&model, &x), embed(&model, &xp));
    let scale = e.max_abs();
    let err = max_perm_err(&e, &ep);
    assert!(err <= 1e-5 * scale.max(1.0), "per_window not equivariant: err {err}, scale {scale}");
    assert!(control > 1e-3 * scale, "control with random rel tables is equivariant too: {control}");

    // The depth branch mixes slices: changing slice 3 changes slice 0's embedding.
    let mut x2 = x.clone();
    let plane = 3 * 64 * 64;
    x2.data_mut()[3 * plane..].iter_mut().for_each(|v| *v = -*v);
    let e2 = embed(&model, &x2);
    let moved = e2
        .narrow(0, 0, 1)
        .unwrap()
        .data()
        .iter()
        .zip(e.narrow(0, 0, 1).unwrap().data())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-4 * scale, "slice 0 ignores slice 3: {moved}");
}

#[test]
fn depth_one_works_and_each_slice_is_its_own_chunk() {
    let model = Sam::random(&tiny_medsa_config(64, 2), 24).unwrap();
    let dims = [20, 24, 3];
    let data = synthetic(dims);
    let prompts = point_prompts(0..3, (24, 20), 0);
    let seg = segment(&model, &data, dims, &prompts, 1);
    assert_eq!(seg.chunks_encoded, 3);
    assert_eq!(seg.predicted_iou.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(seg.predicted_iou.values().all(|v| v.is_finite()));
    for z in 0..3 {
        let one = &data[z * 480..(z + 1) * 480];
        let single = segment(&model, one, [20, 24, 1], &point_prompts(0..1, (24, 20), z), 1);
        assert_eq!(z_slab(&seg.labels, dims, z, z + 1), &single.labels[..], "slice {z}");
        assert_eq!(seg.predicted_iou[&z], single.predicted_iou[&0], "IoU of slice {z}");
    }
}

/// 10 slices at D = 4: chunks [0,4), [4,8) and the overlapping last chunk [6,10), which writes
/// only slices 8 and 9. Each written slab equals segmenting that chunk's slices as a volume of
/// their own, so slices 6 and 7 come from [4,8) and 8, 9 from [6,10).
#[test]
fn non_multiple_slice_count_writes_every_slice_with_the_last_chunk_overlapping() {
    // Seed 24 gives non-trivial masks (most random tiny models predict all or nothing).
    let model = Sam::random(&tiny_medsa_config(64, 2), 24).unwrap();
    let dims = [20, 24, 10];
    let plane = 480;
    let data = synthetic(dims);
    let mut calls = Vec::new();
    let view = VolumeView::new(&data, dims).unwrap();
    let opts = VolumeOptions { depth: 4, ..VolumeOptions::default() };
    let prompts = point_prompts(0..10, (24, 20), 0);
    let seg = VolumePredictor::new(&model, &Cpu, opts)
        .unwrap()
        .segment(&view, &prompts, |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(calls, vec![(4, 10), (8, 10), (10, 10)]);
    assert_eq!(seg.chunks_encoded, 3);
    assert_eq!(seg.predicted_iou.keys().copied().collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert_eq!(seg.dims, dims);
    // Every slice got a mask decision with some foreground and some background.
    let fg: Vec<usize> =
        (0..10).map(|z| z_slab(&seg.labels, dims, z, z + 1).iter().filter(|&&v| v == 1).count()).collect();
    eprintln!("foreground per slice: {fg:?} of {plane}");
    assert!(fg.iter().all(|&n| n > 0) && fg.iter().any(|&n| n < plane), "{fg:?}");
    for (z0, z1, write_from) in [(0, 4, 0), (4, 8, 4), (6, 10, 8)] {
        let sub = &data[z0 * plane..z1 * plane];
        let alone = segment(&model, sub, [20, 24, z1 - z0], &point_prompts(0..z1 - z0, (24, 20), z0), 4);
        assert_eq!(
            z_slab(&seg.labels, dims, write_from, z1),
            z_slab(&alone.labels, [20, 24, z1 - z0], write_from - z0, z1 - z0),
            "slices {write_from}..{z1} must come from chunk [{z0}, {z1})"
        );
        for z in write_from..z1 {
            assert_eq!(seg.predicted_iou[&z], alone.predicted_iou[&(z - z0)], "IoU of slice {z}");
        }
    }
    // Fewer slices than D: one chunk at D' = n, the same as asking for D = n.
    let three = &data[..3 * plane];
    let p3 = point_prompts(0..3, (24, 20), 0);
    let a = segment(&model, three, [20, 24, 3], &p3, 8);
    let b = segment(&model, three, [20, 24, 3], &p3, 3);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.chunks_encoded, 1);
}

#[test]
fn chunks_without_prompts_are_skipped_and_their_slices_stay_zero() {
    let model = Sam::random(&tiny_medsa_config(64, 2), 5).unwrap();
    let dims = [20, 24, 12];
    let data = synthetic(dims);
    let mut prompts = VolumePrompts::new();
    prompts.insert(5, Prompt::points(vec![Point::foreground(10.0, 12.0)]));
    let seg = segment(&model, &data, dims, &prompts, 4);
    assert_eq!(seg.chunks_encoded, 1);
    for z in (0..12).filter(|&z| z != 5) {
        assert!(z_slab(&seg.labels, dims, z, z + 1).iter().all(|&v| v == 0), "slice {z}");
    }
}

#[test]
fn key_box_is_reused_on_neighbours() {
    let b = BoxPrompt { x0: 1.0, y0: 2.0, x1: 10.0, y1: 12.0 };
    let b2 = BoxPrompt { x0: 0.0, y0: 0.0, x1: 5.0, y1: 5.0 };
    let mut p = VolumePrompts::new();
    p.key_box(1, b, 3).key_box(7, b2, 3);
    p.insert(2, Prompt::points(vec![Point::foreground(3.0, 3.0)]));
    let r = p.resolve(9).unwrap();
    assert_eq!(r.keys().copied().collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
    assert!(r[&2].bbox.is_none() && r[&2].points.len() == 1, "an explicit set wins");
    for s in [0, 1, 3] {
        assert_eq!(r[&s].bbox, Some(b), "slice {s}");
    }
    // 4 is equidistant (3) from both keys: the lower key wins; 5.. are nearer to 7.
    assert_eq!(r[&4].bbox, Some(b));
    for s in 5..9 {
        assert_eq!(r[&s].bbox, Some(b2), "slice {s}");
    }
    // Clipped to the volume, and a key outside it is an error.
    assert_eq!(VolumePrompts::new().key_box(0, b, 100).resolve(4).unwrap().len(), 4);
    assert!(matches!(
        VolumePrompts::new().key_box(4, b, 1).resolve(4),
        Err(Error::NoSuchSlice { slice: 4, slices: 4 })
    ));
}

#[test]
fn bad_input_is_a_typed_error() {
    let model = Sam::random(&tiny_medsa_config(64, 2), 1).unwrap();
    let dims = [20, 24, 6];
    let data = synthetic(dims);
    let view = VolumeView::new(&data, dims).unwrap();
    let vp =
        VolumePredictor::new(&model, &Cpu, VolumeOptions { depth: 4, ..VolumeOptions::default() }).unwrap();
    let run = |p: &VolumePrompts| vp.segment(&view, p, |_, _| {});
    let one = |slice: usize, prompt: Prompt| {
        let mut p = VolumePrompts::new();
        p.insert(slice, prompt);
        p
    };
    let pt = |x: f32, y: f32| Prompt::points(vec![Point::foreground(x, y)]);
    let bx = |x0, y0, x1, y1| Prompt::bbox(BoxPrompt { x0, y0, x1, y1 });

    // A prompt on a slice that does not exist.
    assert!(matches!(run(&one(6, pt(1.0, 1.0))), Err(Error::NoSuchSlice { slice: 6, slices: 6 })));
    // Prompts outside the 20 x 24 slice, a reversed box, an empty set.
    assert!(matches!(run(&one(0, pt(21.0, 1.0))), Err(Error::Prompt(_))));
    assert!(matches!(run(&one(0, pt(1.0, f32::NAN))), Err(Error::Prompt(_))));
    assert!(matches!(run(&one(0, bx(0.0, 0.0, 5.0, 25.0))), Err(Error::Prompt(_))));
    assert!(matches!(run(&one(0, bx(5.0, 0.0, 1.0, 3.0))), Err(Error::Prompt(_))));
    assert!(matches!(run(&one(0, Prompt::default())), Err(Error::Prompt(_))));
    // Edges are inside (SAM's rule), as for the 2-D Predictor.
    assert!(run(&one(0, bx(0.0, 0.0, 20.0, 24.0))).is_ok());
    // D = 0.
    assert!(matches!(
        VolumePredictor::new(&model, &Cpu, VolumeOptions { depth: 0, ..VolumeOptions::default() }),
        Err(Error::Config(_))
    ));
    // Zero-thickness volumes, wrong lengths, NaN and unwindowed voxels.
    assert!(matches!(VolumeView::new(&[], [20, 24, 0]), Err(Error::Volume(_))));
    assert!(matches!(VolumeView::new(&[], [0, 0, 0]), Err(Error::Volume(_))));
    assert!(matches!(VolumeView::new(&data, [20, 24, 5]), Err(Error::Volume(_))));
    let mut nan = data.clone();
    nan[1234] = f32::NAN;
    let e = VolumeView::new(&nan, dims).unwrap_err();
    assert!(matches!(e, Error::Volume(_)) && e.to_string().contains("(14, 13, 2)"), "{e}");
    let mut hu = data.clone();
    hu[7] = 40.0;
    assert!(matches!(VolumeView::new(&hu, dims), Err(Error::Volume(_))));
    // A model without Med-SA adapters has no depth branch.
    let mut sam_cfg = tiny_medsa_config(64, 2);
    if let medsa_model::config::EncoderConfig::Vit(v) = &mut sam_cfg.encoder {
        v.adapters = None;
    }
    let sam = Sam::random(&sam_cfg, 1).unwrap();
    let vp = VolumePredictor::new(&sam, &Cpu, VolumeOptions::default()).unwrap();
    assert!(matches!(vp.segment(&view, &one(0, pt(1.0, 1.0)), |_, _| {}), Err(Error::Config(_))));
}

/// The Colin27 T1 (181 x 217 x 181) end to end: MRI window, a tiny random Med-SA at D = 8 with a
/// prompt on every axial slice (a key box around slice 90, clicks elsewhere), the mask written
/// as NIfTI and read back on the input's grid.
#[test]
fn colin27_end_to_end_with_a_tiny_random_model() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/volumes/colin27/ch2.nii.gz");
    if !path.exists() {
        assert!(std::env::var_os("CI").is_none(), "CI must have ../shared/data beside the clone");
        eprintln!("skipped: no {}", path.display());
        return;
    }
    let t0 = std::time::Instant::now();
    let mut vol = Volume::read(&path).unwrap();
    assert_eq!(vol.dims(), [181, 217, 181]);
    medsa_io::window::mri_window(vol.data_mut()).unwrap();
    let model = Sam::random(&tiny_medsa_config(32, 1), 27).unwrap();
    let view = VolumeView::new(vol.data(), vol.dims()).unwrap();
    let (h, w) = view.slice_shape(SliceAxis::Z);
    assert_eq!((h, w), (217, 181));
    let mut prompts = VolumePrompts::new();
    prompts.key_box(90, BoxPrompt { x0: 40.0, y0: 50.0, x1: 140.0, y1: 170.0 }, 20);
    for z in (0..181usize).filter(|z| z.abs_diff(90) > 20) {
        prompts.insert(z, Prompt::points(vec![Point::foreground(90.0, 108.0)]));
    }
    let opts = VolumeOptions { axis: SliceAxis::Z, depth: 8, ..VolumeOptions::default() };
    let mut last = (0, 0);
    let seg = VolumePredictor::new(&model, &Cpu, opts)
        .unwrap()
        .segment(&view, &prompts, |done, total| {
            assert!(done > last.0 && total == 181);
            last = (done, total);
        })
        .unwrap();
    assert_eq!(last, (181, 181));
    assert_eq!(seg.chunks_encoded, 23);
    assert_eq!(seg.predicted_iou.len(), 181);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("colin27_volume_predictor_mask.nii.gz");
    vol.write_labels(&out, Labels::U8(&seg.labels)).unwrap();
    let back = Volume::read(&out).unwrap();
    assert_eq!(back.dims(), vol.dims());
    assert_eq!(back.affine(), vol.affine());
    assert_eq!(back.spacing(), vol.spacing());
    assert!(back.data().iter().zip(&seg.labels).all(|(&a, &b)| a == b as f32));
    eprintln!(
        "colin27: {} foreground voxels of {}, {:.1} s",
        seg.foreground(),
        seg.labels.len(),
        t0.elapsed().as_secs_f64()
    );
}

/// The embeddings SD-Trans propagation prompts slice by slice: each slice's is the one its
/// chunk's encoder run gives (the chunks `VolumePredictor` encodes, the last one overlapping),
/// made once per chunk a chain enters.
#[test]
fn chunk_embeddings_are_the_chunked_encoders_and_run_once_per_chunk() {
    let model = Sam::random(&tiny_medsa_config(64, 2), 24).unwrap();
    let dims = [20, 24, 10];
    let data = synthetic(dims);
    let view = VolumeView::new(&data, dims).unwrap();
    let axis = VolumeOptions::default().axis;
    let settings = DepthSettings { depth: 4, grouping: DepthGrouping::PerWindow };
    let mut ce = ChunkEmbeddings::new(&model, &Cpu, &view, axis, settings).unwrap();
    let direct = |start: usize| {
        let parts: Vec<Tensor> =
            (start..start + 4).map(|k| preprocess_slice(&model, &view, axis, k).unwrap()).collect();
        let x = Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0).unwrap();
        model.embed(&Cpu, &x, Some(settings), &mut Trace::disabled()).unwrap()
    };
    let chunks = [direct(0), direct(4), direct(6)];
    // A chain down from slice 5, then one up from it: chunks [4, 8), [0, 4), [4, 8) (kept), and
    // the overlapping last chunk [6, 10) for slices 8 and 9.
    for (z, chunk, start) in
        [(5, 1, 4), (4, 1, 4), (3, 0, 0), (0, 0, 0), (5, 1, 4), (6, 1, 4), (7, 1, 4), (8, 2, 6), (9, 2, 6)]
    {
        let e = ce.embedding(z).unwrap();
        assert_eq!(e.data(), chunks[chunk].narrow(0, z - start, 1).unwrap().data(), "slice {z}");
    }
    assert_eq!(ce.encoder_runs(), 3, "one encoder run per chunk");
    assert!(matches!(ce.embedding(10), Err(Error::NoSuchSlice { slice: 10, slices: 10 })));
}
