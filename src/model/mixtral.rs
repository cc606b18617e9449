//! The Mixtral family as Hugging Face names it: `MixtralForCausalLM` (sparse MoE) and its
//! dense relatives `LlamaForCausalLM` / `MistralForCausalLM`, whose single MLP is treated
//! as one expert chosen with weight 1. Maps hub tensor names onto the engine's layer
//! structure; the forward pass itself is family-independent (see `cpu`, `gpu::model`).

use super::{ExpertNames, LayerNames, ModelNames};
use crate::config::{Arch, ModelConfig};

pub fn tensor_names(cfg: &ModelConfig) -> ModelNames {
    let layers = (0..cfg.layers)
        .map(|l| {
            let p = format!("model.layers.{l}");
            let (router, experts) = match cfg.arch {
                Arch::Mixtral => (
                    Some(format!("{p}.block_sparse_moe.gate.weight")),
                    (0..cfg.experts)
                        .map(|e| ExpertNames {
                            w1: format!("{p}.block_sparse_moe.experts.{e}.w1.weight"),
                            w2: format!("{p}.block_sparse_moe.experts.{e}.w2.weight"),
                            w3: format!("{p}.block_sparse_moe.experts.{e}.w3.weight"),
                        })
                        .collect(),
                ),
                Arch::Llama | Arch::Mistral => (
                    None,
                    vec![ExpertNames {
                        w1: format!("{p}.mlp.gate_proj.weight"),
                        w2: format!("{p}.mlp.down_proj.weight"),
                        w3: format!("{p}.mlp.up_proj.weight"),
                    }],
                ),
            };
            LayerNames {
                attn_norm: format!("{p}.input_layernorm.weight"),
                wq: format!("{p}.self_attn.q_proj.weight"),
                wk: format!("{p}.self_attn.k_proj.weight"),
                wv: format!("{p}.self_attn.v_proj.weight"),
                wo: format!("{p}.self_attn.o_proj.weight"),
                ffn_norm: format!("{p}.post_attention_layernorm.weight"),
                router,
                experts,
            }
        })
        .collect();
    let embed = "model.embed_tokens.weight".to_string();
    ModelNames {
        lm_head: if cfg.tie_embeddings { embed.clone() } else { "lm_head.weight".to_string() },
        embed,
        final_norm: "model.norm.weight".to_string(),
        layers,
    }
}
