//! Adapter fine-tuning (ARCHITECTURE.md, "Training"), written the way llm.c trains GPT-2: each
//! module has a forward that keeps what its backward needs and an explicit backward; there is no
//! general autograd engine.
//!
//! - [`layers`]: tapes and backward of linear layers, norms, adapters, MLPs, decoder attention;
//! - [`factored_attention`]: the decoder's token ↔ image attentions in their factored orders;
//! - [`encoder`]: the ViT encoder's forward with tape (optionally checkpointed) and backward;
//! - [`tiny_vit`]: LiteMedSAM's TinyViT forward with tape and backward (its adapters train);
//! - [`decoder`]: the mask decoder's forward with tape and backward;
//! - [`loss`]: BCE-with-logits with `pos_weight`, soft Dice, their sum, the IoU-head MSE term;
//! - [`optim`]: Adam / AdamW with PyTorch's semantics, gradient clipping, learning-rate schedules;
//! - [`golden`]: the parity runner of the golden training cases;
//! - [`params`]: parameters by official name, trainable sets, gradients;
//! - [`step`]: one fine-tuning step (forward, loss, backward, optimizer update).

pub mod decoder;
pub mod encoder;
pub mod factored_attention;
pub mod golden;
pub mod layers;
pub mod loss;
pub mod optim;
pub mod params;
pub mod step;
pub mod tiny_vit;
