//! Time per Backend op of one SAM ViT-B encoder run at 1024 and of one decoder run on the CPU
//! (random weights):
//! `cargo run --release -p medsa-benches --example profile_encoder [-- --decoder | --train]`.
//! `--train [--by-shape]` times one Med-SA ViT-B fine-tuning step (forward with tapes, backward) per op;
//! `--train-decoder [--by-shape]` a LiteMedSAM decoder step on a cached embedding, averaged
//! over `RUNS` steps (environment variable, default 10).

use medsa_benches::random_image;
use medsa_core::backward::{AttentionGrads, ConvGrads, HyperChainGrads, LinearGrads, NormGrads};
use medsa_core::{Backend, Conv2d, DepthGrouping, RelPos, ResizeMode, Result, Tensor, Upscaling};
use medsa_model::config::{ModelConfig, VitSize};
use medsa_model::nn::Trace;
use medsa_ref::Cpu;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// Seconds and calls per op; with `by_shape`, per op and shape of its first operand.
#[derive(Default)]
struct Timed {
    by_shape: bool,
    ops: Mutex<BTreeMap<String, (f64, usize)>>,
}

impl Timed {
    fn time<T>(&self, op: &'static str, shape: &[usize], f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        let key = if self.by_shape { format!("{op} {shape:?}") } else { op.to_string() };
        let mut m = self.ops.lock().expect("lock");
        let e = m.entry(key).or_default();
        e.0 += t.elapsed().as_secs_f64();
        e.1 += 1;
        r
    }
}

impl Backend for Timed {
    fn name(&self) -> &'static str {
        "timed-cpu"
    }
    fn host(&self) -> &dyn Backend {
        self
    }
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        self.time("linear", x.shape(), || Cpu.linear(x, w, b))
    }
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("matmul", a.shape(), || Cpu.matmul(a, b))
    }
    fn bmm(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("bmm", a.shape(), || Cpu.bmm(a, b))
    }
    fn bmm_nt(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("bmm_nt", a.shape(), || Cpu.bmm_nt(a, b))
    }
    fn bmm_tn(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("bmm_tn", a.shape(), || Cpu.bmm_tn(a, b))
    }
    fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        self.time("layer_norm", x.shape(), || Cpu.layer_norm(x, w, b, eps))
    }
    fn layer_norm2d(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        self.time("layer_norm2d", x.shape(), || Cpu.layer_norm2d(x, w, b, eps))
    }
    fn gelu(&self, x: Tensor) -> Result<Tensor> {
        let s = x.shape().to_vec();
        self.time("gelu", &s, || Cpu.gelu(x))
    }
    fn gelu_out(&self, x: &Tensor) -> Result<Tensor> {
        self.time("gelu_out", x.shape(), || Cpu.gelu_out(x))
    }
    fn relu(&self, x: Tensor) -> Result<Tensor> {
        let s = x.shape().to_vec();
        self.time("relu", &s, || Cpu.relu(x))
    }
    fn softmax(&self, x: Tensor) -> Result<Tensor> {
        let s = x.shape().to_vec();
        self.time("softmax", &s, || Cpu.softmax(x))
    }
    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: Conv2d) -> Result<Tensor> {
        self.time("conv2d", x.shape(), || Cpu.conv2d(x, w, b, g))
    }
    fn conv_transpose2x2(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("conv_transpose2x2", x.shape(), || Cpu.conv_transpose2x2(x, w, b))
    }
    fn window_partition(&self, x: &Tensor, w: usize) -> Result<(Tensor, (usize, usize))> {
        self.time("window_partition", x.shape(), || Cpu.window_partition(x, w))
    }
    fn window_unpartition(
        &self,
        x: &Tensor,
        w: usize,
        p: (usize, usize),
        hw: (usize, usize),
    ) -> Result<Tensor> {
        self.time("window_unpartition", x.shape(), || Cpu.window_unpartition(x, w, p, hw))
    }
    fn rel_pos_table(&self, qs: usize, ks: usize, t: &Tensor) -> Result<Tensor> {
        self.time("rel_pos_table", &[qs], || Cpu.rel_pos_table(qs, ks, t))
    }
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        s: f32,
        rel: Option<RelPos<'_>>,
    ) -> Result<Tensor> {
        let op = if q.dim(1) > 1024 { "attention (global)" } else { "attention (windowed)" };
        self.time(op, q.shape(), || Cpu.attention(q, k, v, s, rel))
    }
    #[allow(clippy::too_many_arguments)]
    fn depth_attention(
        &self,
        qkv: &Tensor,
        h: usize,
        d: usize,
        nw: usize,
        g: DepthGrouping,
        rel: Option<RelPos<'_>>,
        s: f32,
    ) -> Result<Tensor> {
        self.time("depth_attention", qkv.shape(), || Cpu.depth_attention(qkv, h, d, nw, g, rel, s))
    }
    fn hyper_chain(&self, x: &Tensor, w: &Tensor, g: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        self.time("hyper_chain", x.shape(), || Cpu.hyper_chain(x, w, g, b, eps))
    }
    fn upscale_masks(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
    ) -> Result<Tensor> {
        self.time("upscale_masks", keys.shape(), || Cpu.upscale_masks(keys, grid, up, hyper))
    }
    fn upscale_masks_taped(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
    ) -> Result<(Tensor, medsa_core::backward::UpscaleTape)> {
        self.time("upscale_masks_taped", keys.shape(), || Cpu.upscale_masks_taped(keys, grid, up, hyper))
    }
    #[allow(clippy::too_many_arguments)]
    fn upscale_masks_backward_taped(
        &self,
        keys: &Tensor,
        grid: (usize, usize),
        up: &Upscaling<'_>,
        hyper: &Tensor,
        tape: &medsa_core::backward::UpscaleTape,
        dlogits: &Tensor,
        params: bool,
    ) -> Result<medsa_core::backward::UpscaleGrads> {
        self.time("upscale_masks_backward_taped", keys.shape(), || {
            Cpu.upscale_masks_backward_taped(keys, grid, up, hyper, tape, dlogits, params)
        })
    }
    fn resize(&self, x: &Tensor, out: (usize, usize), mode: ResizeMode) -> Result<Tensor> {
        self.time("resize", x.shape(), || Cpu.resize(x, out, mode))
    }
    fn pe_encode(&self, c: &Tensor, g: &Tensor) -> Result<Tensor> {
        self.time("pe_encode", c.shape(), || Cpu.pe_encode(c, g))
    }

    fn linear_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor, params: bool) -> Result<LinearGrads> {
        self.time("linear_backward", x.shape(), || Cpu.linear_backward(x, w, dy, params))
    }
    fn layer_norm_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        eps: f32,
        dy: &Tensor,
        params: bool,
    ) -> Result<NormGrads> {
        self.time("layer_norm_backward", x.shape(), || Cpu.layer_norm_backward(x, w, eps, dy, params))
    }
    fn gelu_backward(&self, x: &Tensor, dy: Tensor) -> Result<Tensor> {
        self.time("gelu_backward", x.shape(), || Cpu.gelu_backward(x, dy))
    }
    fn relu_backward(&self, y: &Tensor, dy: Tensor) -> Result<Tensor> {
        self.time("relu_backward", y.shape(), || Cpu.relu_backward(y, dy))
    }
    fn softmax_backward(&self, y: &Tensor, dy: Tensor) -> Result<Tensor> {
        self.time("softmax_backward", y.shape(), || Cpu.softmax_backward(y, dy))
    }
    fn attention_lse(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
    ) -> Result<(Tensor, Tensor)> {
        self.time("attention_lse", q.shape(), || Cpu.attention_lse(q, k, v, scale, rel))
    }
    fn attention_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        rel: Option<RelPos<'_>>,
        o: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
    ) -> Result<AttentionGrads> {
        self.time("attention_backward", q.shape(), || {
            Cpu.attention_backward(q, k, v, scale, rel, o, lse, dout)
        })
    }
    fn depth_attention_backward(
        &self,
        qkv: &Tensor,
        heads: usize,
        depth: usize,
        nw: usize,
        grouping: DepthGrouping,
        rel: Option<RelPos<'_>>,
        scale: f32,
        dout: &Tensor,
    ) -> Result<Tensor> {
        self.time("depth_attention_backward", qkv.shape(), || {
            Cpu.depth_attention_backward(qkv, heads, depth, nw, grouping, rel, scale, dout)
        })
    }
    fn hyper_chain_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<HyperChainGrads> {
        self.time("hyper_chain_backward", x.shape(), || Cpu.hyper_chain_backward(x, w, gamma, beta, eps, dy))
    }
    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        geom: Conv2d,
        dy: &Tensor,
        params: bool,
    ) -> Result<ConvGrads> {
        self.time("conv2d_backward", x.shape(), || Cpu.conv2d_backward(x, w, geom, dy, params))
    }
}

// See benches/ops.rs: mimalloc reuses freed tensor memory instead of faulting it in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> medsa_model::Result<()> {
    if std::env::args().any(|a| a == "--lite-forwards") {
        // LiteMedSAM's decoder forward as inference runs it (`Sam::decode`), then the forward
        // that keeps the training tape, per op and shape, averaged over RUNS runs each.
        use medsa_model::train::decoder::decoder_forward;
        medsa_benches::keep_freed_memory();
        let s = medsa_benches::LiteDecoderStep::new()?;
        let runs: usize = std::env::var("RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
        let prompts = s.model.prompt.forward(&Cpu, &s.prompt)?;
        for taped in [false, true] {
            let timed = Timed { by_shape: true, ..Default::default() };
            let t = Instant::now();
            for _ in 0..runs {
                if taped {
                    decoder_forward(&timed, &s.model.decoder, &s.embedding, &s.dense_pe, &prompts)?;
                } else {
                    s.model.decode(&timed, &s.embedding, &s.dense_pe, &s.prompt, &mut Trace::disabled())?;
                }
            }
            eprintln!("{}", if taped { "forward with tape" } else { "Sam::decode" });
            let mut m = timed.ops.lock().expect("lock");
            m.values_mut().for_each(|v| *v = (v.0 / runs as f64, v.1 / runs));
            drop(m);
            report(&timed, t.elapsed().as_secs_f64() / runs as f64);
        }
        return Ok(());
    }
    if std::env::args().any(|a| a == "--train-decoder") {
        use medsa_model::train::params::{trainable_shapes, Trainable, TrainableRule};
        use medsa_model::train::step::{forward_backward, StepConfig, StepInput};
        medsa_benches::keep_freed_memory();
        let mut model = medsa_model::Sam::random(&ModelConfig::lite_medsam(), 1)?;
        let trainable = Trainable::select(&TrainableRule::Decoder, &trainable_shapes(&mut model)?)?;
        let emb = medsa_testkit::random_tensor(&[1, 256, 64, 64], 5);
        let pe = model.prompt.dense_pe(&Cpu)?;
        let p = medsa_model::prompt::PromptBatch {
            boxes: Some(Tensor::new(vec![1, 4], vec![60.0, 70.0, 150.0, 190.0])?),
            ..Default::default()
        };
        let target = Tensor::full(vec![1, 1, 256, 256], 0.0)?;
        let loss = Default::default();
        let cfg = StepConfig {
            loss: &loss,
            trainable: &trainable,
            mask_index: 0,
            checkpointing: Default::default(),
            every_block: false,
        };
        let runs: usize = std::env::var("RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
        let timed = Timed { by_shape: std::env::args().any(|a| a == "--by-shape"), ..Default::default() };
        let t = Instant::now();
        let mut opt = medsa_model::train::optim::Optimizer::new(Default::default());
        let mut update = 0.0;
        for _ in 0..runs {
            // On the rayon pool, as `medsa train` runs its steps.
            let r = medsa_core::par::on_pool(|| {
                let input = StepInput::Embeddings { embeddings: &emb, dense_pe: &pe };
                forward_backward(&timed, &model, input, &p, &target, cfg, 0)
            })?;
            let t = Instant::now();
            medsa_model::train::step::apply(&mut model, &mut opt, &r.grads, 1e-4, 0)?;
            update += t.elapsed().as_secs_f64();
        }
        eprintln!(
            "optimizer update (AdamW, {} tensors): {:.4} s per step",
            trainable.len(),
            update / runs as f64
        );
        let mut m = timed.ops.lock().expect("lock");
        m.values_mut().for_each(|v| *v = (v.0 / runs as f64, v.1 / runs));
        drop(m);
        report(&timed, t.elapsed().as_secs_f64() / runs as f64);
        return Ok(());
    }
    if std::env::args().any(|a| a == "--train") {
        use medsa_model::train::step::{forward_backward, StepConfig, StepInput};
        let s = medsa_benches::FineTuneStep::medsa_vit_b()?;
        let cfg = StepConfig {
            loss: &s.loss,
            trainable: &s.trainable,
            mask_index: 0,
            checkpointing: Default::default(),
            every_block: false,
        };
        medsa_benches::keep_freed_memory();
        // The second step, as in a training run (the first faults the tapes' memory in).
        forward_backward(&Cpu, &s.model, StepInput::Images(&s.image, None), &s.prompt, &s.target, cfg, 0)?;
        let timed = Timed { by_shape: std::env::args().any(|a| a == "--by-shape"), ..Default::default() };
        let t = Instant::now();
        forward_backward(&timed, &s.model, StepInput::Images(&s.image, None), &s.prompt, &s.target, cfg, 0)?;
        report(&timed, t.elapsed().as_secs_f64());
        return Ok(());
    }
    let model = medsa_model::Sam::random(&ModelConfig::sam(VitSize::B), 1)?;
    // `--decoder`: skip the encoder (random embeddings) and run the decoder 200 times, e.g.
    // under `perf record`.
    let decoder_only = std::env::args().any(|a| a == "--decoder");
    let emb = if decoder_only {
        medsa_testkit::random_tensor(&[1, 256, 64, 64], 5)
    } else {
        let x = random_image(1024);
        let timed = Timed::default();
        let t = Instant::now();
        let emb = model.embed(&timed, &x, None, &mut Trace::disabled())?;
        report(&timed, t.elapsed().as_secs_f64());
        emb
    };
    // The prompt encoder and decoder for one point (median of 10 runs is in the criterion bench).
    let pe = model.prompt.dense_pe(&Cpu)?;
    let p = medsa_model::prompt::PromptBatch {
        coords: Some(Tensor::new(vec![1, 1, 2], vec![300.0, 500.0])?),
        labels: vec![1],
        ..Default::default()
    };
    // As `Predictor::predict` after `set_image`: the image side is prepared once.
    let image = model.prepare_image(&Cpu, &emb, &pe)?;
    model.decode_prepared(&Cpu, &image, &p, &mut Trace::disabled())?;
    // Per op and operand shape, averaged over runs decoder runs.
    let runs = if decoder_only { 200 } else { 20 };
    let timed = Timed { by_shape: true, ..Default::default() };
    let t = Instant::now();
    for _ in 0..runs {
        model.decode_prepared(&timed, &image, &p, &mut Trace::disabled())?;
    }
    eprintln!("\nprompt encoder + decoder, one point (mean of {runs} runs):");
    let mut m = timed.ops.lock().expect("lock");
    m.values_mut().for_each(|v| *v = (v.0 / runs as f64, v.1 / runs));
    drop(m);
    report(&timed, t.elapsed().as_secs_f64() / runs as f64);
    Ok(())
}

fn report(timed: &Timed, total: f64) {
    let m = timed.ops.lock().expect("lock");
    let ops: f64 = m.values().map(|v| v.0).sum();
    eprintln!("{:<40} {:>9} {:>6} {:>6}", "op", "seconds", "calls", "share");
    for (op, (s, n)) in m.iter() {
        eprintln!("{op:<40} {s:>9.4} {n:>6} {:>5.1}%", 100.0 * s / total);
    }
    eprintln!(
        "{:<40} {:>9.4}        {:>5.1}%",
        "outside ops (permutes...)",
        total - ops,
        100.0 * (total - ops) / total
    );
    eprintln!("{:<40} {total:>9.4}", "total");
}
