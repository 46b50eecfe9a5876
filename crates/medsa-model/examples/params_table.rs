//! Prints the parameter-accounting table of the README: total vs adapter parameters per
//! component for SAM and Med-SA (encoder adapters, and the paper's decoder adapters with r = 32).
//! `cargo run -p medsa-model --example params_table`

#![allow(clippy::print_stdout)]

use medsa_model::config::{Activation, HypConfig, ModelConfig, VitSize};
use medsa_model::params::count;

fn main() -> medsa_model::Result<()> {
    let hyp = HypConfig {
        r: 32,
        n_layers: 3,
        gen_hidden: 256,
        norm_eps: 1e-5,
        adapter_hidden: 64,
        mlp_scale: 0.5,
        act: Activation::Gelu,
    };
    let m = |n: usize| format!("{:.2}M", n as f64 / 1e6);
    println!("| model | total | image encoder (adapters) | of which Depth_Adapter | mask decoder (adapters) | trainable adapters | share |");
    println!("|---|---|---|---|---|---|---|");
    for (name, size) in [("ViT-B", VitSize::B), ("ViT-L", VitSize::L), ("ViT-H", VitSize::H)] {
        for (label, cfg) in [
            ("SAM", ModelConfig::sam(size)),
            ("Med-SA (enc. adapters)", ModelConfig::medsa(size, 1024, None)),
            ("Med-SA (enc. + HyP decoder)", ModelConfig::medsa(size, 1024, Some(hyp.clone()))),
        ] {
            let r = count(&cfg)?;
            let t = r.total();
            println!(
                "| {label} {name} | {} | {} ({}) | {} | {} ({}) | {} | {:.1}% |",
                m(t.total),
                m(r.image_encoder.total),
                m(r.image_encoder.adapters),
                m(r.depth_adapters),
                m(r.mask_decoder.total),
                m(r.mask_decoder.adapters),
                m(t.adapters),
                100.0 * t.adapters as f64 / t.total as f64
            );
        }
    }
    Ok(())
}
