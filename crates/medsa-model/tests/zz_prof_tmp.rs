use medsa_core::{Backend, Tensor};
use medsa_model::{lite, tiny_vit::*};
use medsa_ref::Cpu;
use std::time::Instant;
#[test]
fn prof() {
    let m = lite::load(&lite::find_weights().unwrap()).unwrap();
    let medsa_model::Encoder::TinyVit(e) = &m.encoder else { panic!() };
    let be = &Cpu;
    let x = Tensor::from_fn(vec![1, 3, 256, 256], |i| ((i * 7919) % 255) as f32 / 255.0).unwrap();
    let t = Instant::now();
    let h = be.gelu(e.patch_embed[0].forward(be, &x).unwrap()).unwrap();
    let mut h = e.patch_embed[1].forward(be, &h).unwrap();
    eprintln!("patch {:?}", t.elapsed());
    for (i, layer) in e.layers.iter().enumerate() {
        let t = Instant::now();
        match &layer.stage {
            TinyVitStage::Conv(blocks) => {
                for b in blocks {
                    let t1 = Instant::now();
                    let a = b.conv1.forward(be, &h).unwrap();
                    eprintln!("  conv1 {:?}", t1.elapsed());
                    let t1 = Instant::now();
                    let a = be.gelu(a).unwrap();
                    eprintln!("  gelu {:?}", t1.elapsed());
                    let t1 = Instant::now();
                    let a = b.conv2.forward(be, &a).unwrap();
                    eprintln!("  conv2 {:?}", t1.elapsed());
                    let t1 = Instant::now();
                    let _ = b.conv3.forward(be, &a).unwrap();
                    eprintln!("  conv3 {:?}", t1.elapsed());
                    h = b.forward(be, &h).unwrap()
                }
            }
            TinyVitStage::Attn(blocks) => {
                let mut tt = h.permute(&[0, 2, 3, 1]).unwrap();
                for b in blocks {
                    tt = b.forward(be, &tt).unwrap();
                }
                h = tt.permute(&[0, 3, 1, 2]).unwrap();
            }
        }
        eprintln!("layer {i} blocks {:?}", t.elapsed());
        let t = Instant::now();
        if let Some(ds) = &layer.downsample {
            h = ds.forward(be, &h).unwrap();
        }
        eprintln!("layer {i} down {:?}", t.elapsed());
    }
}
