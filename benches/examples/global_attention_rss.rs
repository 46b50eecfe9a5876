//! One ViT-B global-attention call (12 heads x 4096 tokens x 64, rel-pos bias) on the CPU, for
//! measuring peak memory: `/usr/bin/time -v target/release/examples/global_attention_rss`.

use medsa_benches::GlobalAttention;
use medsa_ref::Cpu;

// See benches/ops.rs: mimalloc reuses freed tensor memory instead of faulting it in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> medsa_core::Result<()> {
    let p = GlobalAttention::new(&Cpu)?;
    let out = p.run(&Cpu)?;
    eprintln!("output {:?}, max |x| {}", out.shape(), out.max_abs());
    Ok(())
}
