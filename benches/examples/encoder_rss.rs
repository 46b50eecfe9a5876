//! One SAM ViT-B image-encoder run at 1024x1024 with random weights on the CPU, for measuring
//! peak memory: `/usr/bin/time -v target/release/examples/encoder_rss`.

use medsa_benches::random_image;
use medsa_model::config::{ModelConfig, VitSize};
use medsa_model::nn::Trace;
use medsa_ref::Cpu;

// See benches/ops.rs: mimalloc reuses freed tensor memory instead of faulting it in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> medsa_model::Result<()> {
    let model = medsa_model::Sam::random(&ModelConfig::sam(VitSize::B), 1)?;
    let t = std::time::Instant::now();
    let emb = model.embed(&Cpu, &random_image(1024), None, &mut Trace::disabled())?;
    eprintln!("embedding {:?} in {:.2} s", emb.shape(), t.elapsed().as_secs_f64());
    Ok(())
}
