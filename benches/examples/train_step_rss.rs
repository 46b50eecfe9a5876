//! One Med-SA ViT-B fine-tuning step (official set, 1024x1024, one click) on the CPU, for
//! measuring time and peak memory: `/usr/bin/time -v target/release/examples/train_step_rss
//! [--checkpoint] [--forward] [--steps N]`; `--forward` also times the forward alone first.

use medsa_benches::FineTuneStep;
use medsa_model::train::encoder::Checkpointing;

// See benches/ops.rs: mimalloc reuses freed tensor memory instead of faulting it in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> medsa_model::Result<()> {
    medsa_benches::keep_freed_memory();
    let ckpt = std::env::args().any(|a| a == "--checkpoint");
    let forward_too = std::env::args().any(|a| a == "--forward");
    let mut s = FineTuneStep::medsa_vit_b()?;
    if forward_too {
        let t = std::time::Instant::now();
        s.forward()?;
        eprintln!("forward {:.2} s", t.elapsed().as_secs_f64());
    }
    let mode = if ckpt { Checkpointing::PerBlock } else { Checkpointing::Off };
    let steps: usize =
        std::env::args().skip_while(|a| a != "--steps").nth(1).and_then(|n| n.parse().ok()).unwrap_or(1);
    for _ in 0..steps {
        let t = std::time::Instant::now();
        let loss = s.step(mode)?;
        eprintln!("step ({mode:?}) {:.2} s, loss {loss:.4}", t.elapsed().as_secs_f64());
    }
    Ok(())
}
