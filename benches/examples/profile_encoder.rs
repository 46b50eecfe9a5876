//! Time per Backend op of one SAM ViT-B encoder run at 1024 and of one decoder run on the CPU
//! (random weights):
//! `cargo run --release -p medsa-benches --example profile_encoder`.

use medsa_benches::{random_image, random_model};
use medsa_core::{Backend, Conv2d, DepthGrouping, RelPos, ResizeMode, Result, Tensor};
use medsa_model::config::{ModelConfig, VitSize};
use medsa_model::nn::Trace;
use medsa_ref::Cpu;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
struct Timed(Mutex<BTreeMap<&'static str, (f64, usize)>>);

impl Timed {
    fn time<T>(&self, op: &'static str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        let mut m = self.0.lock().expect("lock");
        let e = m.entry(op).or_default();
        e.0 += t.elapsed().as_secs_f64();
        e.1 += 1;
        r
    }
}

impl Backend for Timed {
    fn name(&self) -> &'static str {
        "timed-cpu"
    }
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        self.time("linear", || Cpu.linear(x, w, b))
    }
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("matmul", || Cpu.matmul(a, b))
    }
    fn bmm(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("bmm", || Cpu.bmm(a, b))
    }
    fn layer_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        self.time("layer_norm", || Cpu.layer_norm(x, w, b, eps))
    }
    fn layer_norm2d(&self, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        self.time("layer_norm2d", || Cpu.layer_norm2d(x, w, b, eps))
    }
    fn gelu(&self, x: Tensor) -> Result<Tensor> {
        self.time("gelu", || Cpu.gelu(x))
    }
    fn relu(&self, x: Tensor) -> Result<Tensor> {
        self.time("relu", || Cpu.relu(x))
    }
    fn softmax(&self, x: Tensor) -> Result<Tensor> {
        self.time("softmax", || Cpu.softmax(x))
    }
    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, g: Conv2d) -> Result<Tensor> {
        self.time("conv2d", || Cpu.conv2d(x, w, b, g))
    }
    fn conv_transpose2x2(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.time("conv_transpose2x2", || Cpu.conv_transpose2x2(x, w, b))
    }
    fn window_partition(&self, x: &Tensor, w: usize) -> Result<(Tensor, (usize, usize))> {
        self.time("window_partition", || Cpu.window_partition(x, w))
    }
    fn window_unpartition(
        &self,
        x: &Tensor,
        w: usize,
        p: (usize, usize),
        hw: (usize, usize),
    ) -> Result<Tensor> {
        self.time("window_unpartition", || Cpu.window_unpartition(x, w, p, hw))
    }
    fn rel_pos_table(&self, qs: usize, ks: usize, t: &Tensor) -> Result<Tensor> {
        self.time("rel_pos_table", || Cpu.rel_pos_table(qs, ks, t))
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
        self.time(op, || Cpu.attention(q, k, v, s, rel))
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
        self.time("depth_attention", || Cpu.depth_attention(qkv, h, d, nw, g, rel, s))
    }
    fn hyper_chain(&self, x: &Tensor, w: &Tensor, g: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
        self.time("hyper_chain", || Cpu.hyper_chain(x, w, g, b, eps))
    }
    fn resize(&self, x: &Tensor, out: (usize, usize), mode: ResizeMode) -> Result<Tensor> {
        self.time("resize", || Cpu.resize(x, out, mode))
    }
    fn pe_encode(&self, c: &Tensor, g: &Tensor) -> Result<Tensor> {
        self.time("pe_encode", || Cpu.pe_encode(c, g))
    }
}

// See benches/ops.rs: mimalloc reuses freed tensor memory instead of faulting it in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> medsa_model::Result<()> {
    let model = random_model(&ModelConfig::sam(VitSize::B))?;
    let x = random_image(1024);
    let timed = Timed::default();
    let t = Instant::now();
    let emb = model.embed(&timed, &x, None, &mut Trace::disabled())?;
    report(&timed, t.elapsed().as_secs_f64());
    // The prompt encoder and decoder for one point (median of 10 runs is in the criterion bench).
    let pe = model.prompt.dense_pe(&Cpu)?;
    let p = medsa_model::prompt::PromptBatch {
        coords: Some(Tensor::new(vec![1, 1, 2], vec![300.0, 500.0])?),
        labels: vec![1],
        ..Default::default()
    };
    model.decode(&Cpu, &emb, &pe, &p, &mut Trace::disabled())?;
    let timed = Timed::default();
    let t = Instant::now();
    model.decode(&timed, &emb, &pe, &p, &mut Trace::disabled())?;
    eprintln!("\nprompt encoder + decoder, one point:");
    report(&timed, t.elapsed().as_secs_f64());
    Ok(())
}

fn report(timed: &Timed, total: f64) {
    let m = timed.0.lock().expect("lock");
    let ops: f64 = m.values().map(|v| v.0).sum();
    eprintln!("{:<24} {:>9} {:>6} {:>6}", "op", "seconds", "calls", "share");
    for (op, (s, n)) in m.iter() {
        eprintln!("{op:<24} {s:>9.3} {n:>6} {:>5.1}%", 100.0 * s / total);
    }
    eprintln!(
        "{:<24} {:>9.3}        {:>5.1}%",
        "outside ops (permutes...)",
        total - ops,
        100.0 * (total - ops) / total
    );
    eprintln!("{:<24} {total:>9.3}", "total");
}
