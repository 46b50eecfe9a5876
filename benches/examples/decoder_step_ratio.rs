//! The LiteMedSAM decoder step (`decoder` set, cached embedding) against the decoder's inference
//! forward, measured interleaved: `PAIRS` (default 40) rounds of one forward then one step,
//! after three warm-up rounds, so that a drift of the machine's speed (this 2-core VM's varies
//! by tens of percent over minutes) lands on both sides of each ratio. Prints the medians and
//! quartiles of the forward, the step and the per-round ratio step / forward. Both run on the
//! rayon pool, as `medsa train` runs its steps (`medsa_core::par::on_pool`).
//!
//! `cargo run --release -p medsa-benches --example decoder_step_ratio`

use medsa_benches::{keep_freed_memory, LiteDecoderStep};
use medsa_core::par::on_pool;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

fn main() -> medsa_model::Result<()> {
    keep_freed_memory();
    let pairs: usize = std::env::var("PAIRS").ok().and_then(|s| s.parse().ok()).unwrap_or(40).max(1);
    let mut s = LiteDecoderStep::new()?;
    let (mut fwd, mut step, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..pairs + 3 {
        let t = Instant::now();
        std::hint::black_box(on_pool(|| s.forward())?);
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(on_pool(|| s.step())?);
        let st = t.elapsed().as_secs_f64();
        if round >= 3 {
            fwd.push(f * 1e3);
            step.push(st * 1e3);
            ratio.push(st / f);
        }
    }
    for (what, v, unit) in
        [("decoder forward", fwd, " ms"), ("decoder step", step, " ms"), ("step / forward", ratio, "x")]
    {
        let (q1, m, q3) = quartiles(v);
        println!("{what:<16} median {m:8.2}{unit}   quartiles {q1:.2} .. {q3:.2}");
    }
    println!("({pairs} interleaved rounds)");
    Ok(())
}
