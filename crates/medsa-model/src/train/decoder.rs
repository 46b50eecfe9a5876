//! The mask decoder's forward with tape and its backward (spec 5.1-5.4): SAM's two-way
//! transformer in both variants, the paper's HyP-Adpt / MLP_Adapter / Image_Adapter, the
//! hypernetwork MLPs, the IoU head and the mask head ([`medsa_core::Backend::upscale_masks`]).
//!
//! The attentions between tokens and image (token → image in each block and the final one,
//! image → token in each block) take the factored orders of [`crate::train::factored_attention`],
//! so the 4096 image tokens are never projected in them, forward or backward; the token
//! self-attention takes the spec's direct order (project q, k, v; attend; project out). Both
//! equal the literal form within f32 rounding. The mask head keeps its layers' outputs
//! ([`Backend::upscale_masks_taped`]) instead of recomputing them in the backward. The prompt embeddings
//! are constants (the prompt encoder runs without gradient, as in the official code); the
//! backward returns the gradient of the image embedding, which continues into the encoder, when
//! asked for (without it, the products that only it needs are skipped).

use crate::config::DecoderVariant;
use crate::decoder::two_way::with_pe;
use crate::decoder::{pooled_prompt, DecoderOutput, ImageContext, MaskDecoder, OutputUpscaling, TwoWayBlock};
use crate::prompt::PromptEmbeddings;
use crate::train::factored_attention::{
    few_keys_backward, few_keys_forward, few_queries_backward, few_queries_forward, FewKeysTape,
    FewQueriesTape,
};
use crate::train::layers::{
    adapter_backward, adapter_forward, attention_backward, attention_forward, mlp_backward, mlp_forward,
    AdapterTape, AttentionTape, Ctx, MlpTape,
};
use crate::{Error, Result};
use medsa_core::backward::UpscaleTape;
use medsa_core::{Backend, Tensor};

/// HyP-Adpt of one block: the generator's tape and the chain's operands.
struct HypTape {
    gen_in: Tensor,
    gen_hidden: Tensor,
    w: Tensor,
    a: Tensor,
    down: Tensor,
    chain: Tensor,
}

/// One two-way block's tape.
struct BlockTape {
    self_attn: AttentionTape,
    q1: Tensor,
    cross_t2i: FewQueriesTape,
    hyp: Option<HypTape>,
    q2: Tensor,
    n2: Tensor,
    relu: Tensor,
    mlp_adapter: Option<AdapterTape>,
    q3: Tensor,
    cross_i2t: FewKeysTape,
    image_adapter: Option<AdapterTape>,
    k1: Tensor,
}

/// What [`decoder_backward`] needs of a [`decoder_forward`].
pub struct DecoderTape {
    b: usize,
    n_img: usize,
    grid: (usize, usize),
    blocks: Vec<BlockTape>,
    final_attn: FewQueriesTape,
    q_final: Tensor,
    hyper_in: Vec<MlpTape>,
    hyper: Tensor,
    upscale: UpscaleTape,
    iou_in: MlpTape,
}

/// Sum over the sets of `[B, G², D]` into `[N, G², D]` (N = 1: every set shares one image).
fn to_images(d: Tensor, n_img: usize) -> Result<Tensor> {
    if n_img == d.dim(0) {
        return Ok(d);
    }
    let per = d.numel() / d.dim(0).max(1);
    let mut out = vec![0f32; per];
    for set in d.data().chunks_exact(per.max(1)) {
        out.iter_mut().zip(set).for_each(|(a, b)| *a += b);
    }
    Ok(Tensor::new(vec![1, d.dim(1), d.dim(2)], out)?)
}

/// The decoder for B prompt sets on `image [N, D, G_h, G_w]` (N = 1 or B) with the dense PE
/// `[1, D, G_h, G_w]`, keeping what [`decoder_backward`] needs.
pub fn decoder_forward(
    be: &dyn Backend,
    dec: &MaskDecoder,
    image: &Tensor,
    dense_pe: &Tensor,
    prompts: &PromptEmbeddings,
) -> Result<(DecoderOutput, DecoderTape)> {
    let d = dec.cfg.transformer_dim;
    let b = prompts.sparse.dim(0);
    if image.rank() != 4 || image.dim(1) != d || dense_pe.shape() != [1, d, image.dim(2), image.dim(3)] {
        return Err(Error::Config(format!(
            "image embeddings {:?} with dense PE {:?} do not fit decoder width {d}",
            image.shape(),
            dense_pe.shape()
        )));
    }
    let (n_img, gh, gw) = (image.dim(0), image.dim(2), image.dim(3));
    if n_img != 1 && n_img != b {
        return Err(Error::Config(format!("{n_img} image embeddings for {b} prompt sets")));
    }
    // keys = image tokens (repeated per set) + the dense prompt embedding.
    let context = ImageContext::new(be, image, dense_pe)?;
    let mut keys = context.keys(be, &prompts.dense, b)?;
    let key_pe = context.pe;
    let query_pe = dec.tokens(be, &prompts.sparse)?;
    let hyp_e = if dec.cfg.hyp.is_some() { Some(pooled_prompt(prompts)?) } else { None };
    let mut queries = query_pe.clone();
    let mut blocks = Vec::with_capacity(dec.layers.len());
    for layer in &dec.layers {
        let (q, k, tape) =
            block_forward(be, dec.cfg.variant, layer, queries, keys, &query_pe, &key_pe, hyp_e.as_ref())?;
        blocks.push(tape);
        queries = q;
        keys = k;
    }
    let qf = queries.add(&query_pe)?;
    let kf = with_pe(be, &keys, &key_pe)?;
    let (a, final_attn) = few_queries_forward(be, &dec.final_attn, qf, kf, keys)?;
    let q_final = queries.add(&a)?;
    let hs = dec.norm_final.forward(be, &q_final)?;
    // Heads.
    let c8 = d / 8;
    let mut hyper = Vec::with_capacity(dec.hyper_mlps.len());
    let mut hyper_in = Vec::with_capacity(dec.hyper_mlps.len());
    for (k, mlp) in dec.hyper_mlps.iter().enumerate() {
        let (y, tape) = mlp_forward(be, mlp, &be.narrow(&hs, 1, 1 + k, 1)?.reshape(vec![b, d])?)?;
        hyper.push(y.reshape(vec![b, 1, c8])?);
        hyper_in.push(tape);
    }
    let hyper = be.cat(&hyper.iter().collect::<Vec<_>>(), 1)?;
    let (masks, upscale) =
        be.upscale_masks_taped(final_attn.inputs().2, (gh, gw), &dec.upscaling.op(), &hyper)?;
    let (iou, iou_in) = mlp_forward(be, &dec.iou_head, &hs.narrow(1, 0, 1)?.reshape(vec![b, d])?)?;
    let tape = DecoderTape {
        b,
        n_img,
        grid: (gh, gw),
        blocks,
        final_attn,
        q_final,
        hyper_in,
        hyper,
        upscale,
        iou_in,
    };
    Ok((DecoderOutput { masks, iou }, tape))
}

#[allow(clippy::too_many_arguments)]
fn block_forward(
    be: &dyn Backend,
    variant: DecoderVariant,
    l: &TwoWayBlock,
    queries: Tensor,
    keys: Tensor,
    query_pe: &Tensor,
    key_pe: &Tensor,
    hyp_e: Option<&Tensor>,
) -> Result<(Tensor, Tensor, BlockTape)> {
    // 1. Self-attention (SAM: no residual and no PE in layer 0; official Med-SA: the PE is
    //    added to the queries for good from layer 1 on, and the residual is always there).
    let (q1, self_attn) = match variant {
        DecoderVariant::Sam if l.index == 0 => {
            attention_forward(be, &l.self_attn, queries.clone(), queries.clone(), queries)?
        }
        DecoderVariant::Sam => {
            let qp = queries.add(query_pe)?;
            let (a, t) = attention_forward(be, &l.self_attn, qp.clone(), qp, queries.clone())?;
            (queries.add(&a)?, t)
        }
        DecoderVariant::MedsaOfficial => {
            let qq = if l.index > 0 { queries.add(query_pe)? } else { queries };
            let (a, t) = attention_forward(be, &l.self_attn, qq.clone(), qq.clone(), qq.clone())?;
            (qq.add(&a)?, t)
        }
    };
    let n1 = l.norm1.forward(be, &q1)?;
    // 2. Tokens → image (+ HyP-Adpt on the attention output).
    let kpe = with_pe(be, &keys, key_pe)?;
    let (a, cross_t2i) = few_queries_forward(be, &l.cross_t2i, n1.add(query_pe)?, kpe, keys)?;
    let (_, kpe, keys) = cross_t2i.inputs();
    let mut q2 = n1.add(&a)?;
    let hyp = match (&l.adapters, hyp_e) {
        (Some(ad), Some(e)) => {
            let h = &ad.hyp;
            let gen_hidden = be.relu(h.generator_hidden.forward(be, e)?)?;
            let r = h.cfg.r;
            let w =
                h.generator_out.forward(be, &gen_hidden)?.reshape(vec![e.dim(0), h.cfg.n_layers, r, r])?;
            let down = h.down.forward(be, &a)?;
            let chain = be.hyper_chain(&down, &w, &h.gamma, &h.beta, h.cfg.norm_eps)?;
            q2.add_assign(&h.up.forward(be, &chain)?)?;
            Some(HypTape { gen_in: e.clone(), gen_hidden, w, a, down, chain })
        }
        _ => None,
    };
    let n2 = l.norm2.forward(be, &q2)?;
    // 3. MLP (+ the scaled MLP_Adapter in parallel).
    let relu = be.relu(l.lin1.forward(be, &n2)?)?;
    let mut q3 = n2.add(&l.lin2.forward(be, &relu)?)?;
    let mlp_adapter = match &l.adapters {
        Some(ad) => {
            let (y, t) = adapter_forward(be, &ad.mlp, &n2)?;
            q3.add_assign(&y.scale(ad.hyp.cfg.mlp_scale))?;
            Some(t)
        }
        None => None,
    };
    let n3 = l.norm3.forward(be, &q3)?;
    // 4. Image → tokens (+ Image_Adapter with skip on the new keys).
    let (a4, cross_i2t) = few_keys_forward(be, &l.cross_i2t, kpe, n3.add(query_pe)?, n3.clone())?;
    let mut k1 = a4.add(keys)?;
    let image_adapter = match &l.adapters {
        Some(ad) => {
            let (y, t) = adapter_forward(be, &ad.image, &k1)?;
            k1.add_assign(&y)?;
            Some(t)
        }
        None => None,
    };
    let keys_out = l.norm4.forward(be, &k1)?;
    let tape = BlockTape {
        self_attn,
        q1,
        cross_t2i,
        hyp,
        q2,
        n2,
        relu,
        mlp_adapter,
        q3,
        cross_i2t,
        image_adapter,
        k1,
    };
    Ok((n3, keys_out, tape))
}

/// Gradients flowing out of a block: its queries and, when asked for, its keys (the query PE's
/// gradient is accumulated in place).
struct BlockGrads {
    queries: Tensor,
    keys: Option<Tensor>,
}

#[allow(clippy::too_many_arguments)]
fn block_backward(
    c: &mut Ctx<'_>,
    variant: DecoderVariant,
    l: &TwoWayBlock,
    t: &BlockTape,
    d_queries: Tensor,
    d_keys: Tensor,
    d_query_pe: &mut Tensor,
    mlp_scale: f32,
    keys_grad: bool,
) -> Result<BlockGrads> {
    let p = format!("mask_decoder.transformer.layers.{}", l.index);
    // 4.
    let dk1 = c.norm(&l.norm4, &format!("{p}.norm4"), &t.k1, &d_keys)?;
    let dk1 = match (&l.adapters, &t.image_adapter) {
        (Some(ad), Some(at)) => {
            dk1.add(&adapter_backward(c, &ad.image, &format!("{p}.Image_Adapter"), at, &dk1)?)?
        }
        _ => dk1,
    };
    let (_, kpe, _) = t.cross_t2i.inputs();
    let i2t = format!("{p}.cross_attn_image_to_token");
    let (d_kpe, d_q4, d_n3v) = few_keys_backward(c, &l.cross_i2t, &i2t, &t.cross_i2t, kpe, &dk1, keys_grad)?;
    let mut dkeys = d_kpe.map(|d| dk1.add(&d)).transpose()?;
    let mut dn3 = d_queries.add(&d_q4)?;
    dn3.add_assign(&d_n3v)?;
    d_query_pe.add_assign(&d_q4)?;
    // 3.
    let dq3 = c.norm(&l.norm3, &format!("{p}.norm3"), &t.q3, &dn3)?;
    let (lin1, lin2) = variant.mlp_keys();
    let drelu = c.linear(&l.lin2, &format!("{p}.{lin2}"), &t.relu, &dq3)?;
    let dlin1 = c.be.relu_backward(&t.relu, drelu)?;
    let mut dn2 = dq3.add(&c.linear(&l.lin1, &format!("{p}.{lin1}"), &t.n2, &dlin1)?)?;
    if let (Some(ad), Some(at)) = (&l.adapters, &t.mlp_adapter) {
        let ds = dq3.clone().scale(mlp_scale);
        dn2.add_assign(&adapter_backward(c, &ad.mlp, &format!("{p}.MLP_Adapter"), at, &ds)?)?;
    }
    // 2.
    let dq2 = c.norm(&l.norm2, &format!("{p}.norm2"), &t.q2, &dn2)?;
    let mut da = dq2.clone();
    if let (Some(ad), Some(ht)) = (&l.adapters, &t.hyp) {
        let h = &ad.hyp;
        let hp = format!("{p}.HyP_Adapter");
        let dchain = c.linear(&h.up, &format!("{hp}.D_fc2"), &ht.chain, &dq2)?;
        let g = c.be.hyper_chain_backward(&ht.down, &ht.w, &h.gamma, &h.beta, h.cfg.norm_eps, &dchain)?;
        for (what, grad) in [("weight", &g.dgamma), ("bias", &g.dbeta)] {
            let r = grad.dim(1);
            for (i, row) in grad.data().chunks_exact(r.max(1)).enumerate() {
                c.param(format!("{hp}.norms.{i}.{what}"), || Ok(Tensor::new(vec![r], row.to_vec())?))?;
            }
        }
        da.add_assign(&c.linear(&h.down, &format!("{hp}.D_fc1"), &ht.a, &g.dx)?)?;
        if c.tr.any_under(&format!("{hp}.gen.")) {
            let dw = g.dw.reshape(vec![ht.w.dim(0), ht.w.numel() / ht.w.dim(0).max(1)])?;
            let dh = c.linear(&h.generator_out, &format!("{hp}.gen.2"), &ht.gen_hidden, &dw)?;
            let dh = c.be.relu_backward(&ht.gen_hidden, dh)?;
            c.linear(&h.generator_hidden, &format!("{hp}.gen.0"), &ht.gen_in, &dh)?;
        }
    }
    let t2i = format!("{p}.cross_attn_token_to_image");
    let (d_q2in, d_image) = few_queries_backward(c, &l.cross_t2i, &t2i, &t.cross_t2i, &da, keys_grad)?;
    let dn1 = dq2.add(&d_q2in)?;
    d_query_pe.add_assign(&d_q2in)?;
    if let (Some(dkeys), Some((d_kpe2, d_keysv))) = (&mut dkeys, d_image) {
        dkeys.add_assign(&d_kpe2)?;
        dkeys.add_assign(&d_keysv)?;
    }
    // 1.
    let dq1 = c.norm(&l.norm1, &format!("{p}.norm1"), &t.q1, &dn1)?;
    let sp = format!("{p}.self_attn");
    let (dq, dk, dv) = attention_backward(c, &l.self_attn, &sp, &t.self_attn, &dq1)?;
    let dqueries = match variant {
        DecoderVariant::Sam if l.index == 0 => {
            let mut d = dq.add(&dk)?;
            d.add_assign(&dv)?;
            d
        }
        DecoderVariant::Sam => {
            let dqp = dq.add(&dk)?;
            d_query_pe.add_assign(&dqp)?;
            let mut d = dq1.add(&dv)?;
            d.add_assign(&dqp)?;
            d
        }
        DecoderVariant::MedsaOfficial => {
            let mut d = dq1.add(&dq)?;
            d.add_assign(&dk)?;
            d.add_assign(&dv)?;
            if l.index > 0 {
                d_query_pe.add_assign(&d)?;
            }
            d
        }
    };
    Ok(BlockGrads { queries: dqueries, keys: dkeys })
}

/// Backward of [`decoder_forward`] for the gradients of its mask logits `dmasks [B, M, 4G, 4G]`
/// and, if the loss uses it, of the predicted IoU `diou [B, M]`. Adds the gradients of the
/// trainable decoder parameters to `c.grads` and, with `image_grad`, returns the gradient of the
/// image embedding `[N, D, G_h, G_w]`.
pub fn decoder_backward(
    c: &mut Ctx<'_>,
    dec: &MaskDecoder,
    t: &DecoderTape,
    dmasks: &Tensor,
    diou: Option<&Tensor>,
    image_grad: bool,
) -> Result<Option<Tensor>> {
    let d = dec.cfg.transformer_dim;
    let (b, m, c8) = (t.b, dec.cfg.num_mask_tokens, d / 8);
    let root = "mask_decoder";
    // Mask head.
    let up = dec.upscaling.op();
    let train_up = c.tr.any_under(&format!("{root}.output_upscaling."));
    let keys_final = t.final_attn.inputs().2;
    let ug =
        c.be.upscale_masks_backward_taped(keys_final, t.grid, &up, &t.hyper, &t.upscale, dmasks, train_up)?;
    let keys = OutputUpscaling::keys(root);
    for (key, grads) in keys.iter().zip([ug.conv0, ug.norm, ug.conv1]) {
        if let Some((w, bb)) = grads {
            c.param(format!("{key}.weight"), || Ok(w))?;
            c.param(format!("{key}.bias"), || Ok(bb))?;
        }
    }
    let tt = t.q_final.dim(1);
    let mut dhs = vec![0f32; b * tt * d];
    for (k, mlp) in dec.hyper_mlps.iter().enumerate() {
        let mut dy = vec![0f32; b * c8];
        for s in 0..b {
            dy[s * c8..(s + 1) * c8]
                .copy_from_slice(&ug.dhyper.data()[(s * m + k) * c8..(s * m + k + 1) * c8]);
        }
        let dx = mlp_backward(
            c,
            mlp,
            &format!("{root}.output_hypernetworks_mlps.{k}"),
            &t.hyper_in[k],
            &Tensor::new(vec![b, c8], dy)?,
        )?;
        for s in 0..b {
            dhs[(s * tt + 1 + k) * d..(s * tt + 2 + k) * d].copy_from_slice(&dx.data()[s * d..(s + 1) * d]);
        }
    }
    if let Some(diou) = diou {
        let dx = mlp_backward(c, &dec.iou_head, &format!("{root}.iou_prediction_head"), &t.iou_in, diou)?;
        for s in 0..b {
            dhs[s * tt * d..(s * tt + 1) * d].copy_from_slice(&dx.data()[s * d..(s + 1) * d]);
        }
    }
    let dhs = Tensor::new(vec![b, tt, d], dhs)?;
    // Final attention and norm.
    let transformer = "mask_decoder.transformer";
    let dqf = c.norm(&dec.norm_final, &format!("{transformer}.norm_final_attn"), &t.q_final, &dhs)?;
    let final_name = format!("{transformer}.final_attn_token_to_image");
    let keys_grad = image_grad || !dec.layers.is_empty();
    let (d_qin, d_image) =
        few_queries_backward(c, &dec.final_attn, &final_name, &t.final_attn, &dqf, keys_grad)?;
    let mut d_query_pe = d_qin.clone();
    let mut d_queries = dqf.add(&d_qin)?;
    let mut d_keys = match d_image {
        Some((d_kpe, d_kv)) => {
            let mut d = ug.dkeys.add(&d_kpe)?;
            d.add_assign(&d_kv)?;
            Some(d)
        }
        None => None,
    };
    let mlp_scale = dec.cfg.hyp.as_ref().map_or(0.0, |h| h.mlp_scale);
    for (i, (layer, bt)) in dec.layers.iter().zip(&t.blocks).enumerate().rev() {
        let dk = d_keys.take().ok_or_else(|| Error::Config("decoder backward: no key gradient".into()))?;
        let keys_grad = image_grad || i > 0;
        let g = block_backward(
            c,
            dec.cfg.variant,
            layer,
            bt,
            d_queries,
            dk,
            &mut d_query_pe,
            mlp_scale,
            keys_grad,
        )?;
        d_queries = g.queries;
        d_keys = g.keys;
    }
    // The tokens are both the first queries and the query PE: [iou_token; mask_tokens; sparse].
    let dtok = d_queries.add(&d_query_pe)?;
    c.param(format!("{root}.iou_token.weight"), || {
        let mut g = vec![0f32; d];
        for s in 0..b {
            g.iter_mut().zip(&dtok.data()[s * tt * d..(s * tt + 1) * d]).for_each(|(a, v)| *a += v);
        }
        Ok(Tensor::new(vec![1, d], g)?)
    })?;
    c.param(format!("{root}.mask_tokens.weight"), || {
        let mut g = vec![0f32; m * d];
        for s in 0..b {
            g.iter_mut().zip(&dtok.data()[(s * tt + 1) * d..(s * tt + 1 + m) * d]).for_each(|(a, v)| *a += v);
        }
        Ok(Tensor::new(vec![m, d], g)?)
    })?;
    // The keys were the image tokens plus a constant.
    let Some(d_keys) = d_keys.filter(|_| image_grad) else { return Ok(None) };
    let di = to_images(d_keys, t.n_img)?;
    let (n, (gh, gw)) = (di.dim(0), t.grid);
    Ok(Some(di.reshape(vec![n, gh, gw, d])?.permute(&[0, 3, 1, 2])?))
}
