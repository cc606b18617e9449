//! The Mixtral family: `MixtralForCausalLM` (sparse MoE) and its dense relatives
//! `LlamaForCausalLM` / `MistralForCausalLM`, whose single MLP is one expert chosen with
//! weight 1 — as Hugging Face names their tensors, and as GGUF's `llama` architecture
//! does (llama.cpp writes Mixtral as `llama` with stacked `ffn_*_exps` experts). The
//! forward pass itself is family-independent (see `cpu`, `gpu::model`).

use super::{ExpertNames, Experts, LayerNames, ModelNames};
use crate::config::{Arch, ModelConfig};

pub fn hf_names(cfg: &ModelConfig) -> ModelNames {
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
                experts: Experts::Separate(experts),
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

/// GGUF `llama` names. `has` says whether the file holds a tensor (a missing `output`
/// means tied embeddings; old Mixtral GGUFs store experts one tensor each).
pub fn gguf_names(cfg: &ModelConfig, has: impl Fn(&str) -> bool) -> ModelNames {
    let layers = (0..cfg.layers)
        .map(|l| {
            let p = format!("blk.{l}");
            let moe = cfg.experts > 1;
            let experts = if !moe {
                Experts::Stacked {
                    gate: format!("{p}.ffn_gate.weight"),
                    up: format!("{p}.ffn_up.weight"),
                    down: format!("{p}.ffn_down.weight"),
                }
            } else if has(&format!("{p}.ffn_gate_exps.weight")) || !has(&format!("{p}.ffn_gate.0.weight")) {
                Experts::Stacked {
                    gate: format!("{p}.ffn_gate_exps.weight"),
                    up: format!("{p}.ffn_up_exps.weight"),
                    down: format!("{p}.ffn_down_exps.weight"),
                }
            } else {
                Experts::Separate(
                    (0..cfg.experts)
                        .map(|e| ExpertNames {
                            w1: format!("{p}.ffn_gate.{e}.weight"),
                            w2: format!("{p}.ffn_down.{e}.weight"),
                            w3: format!("{p}.ffn_up.{e}.weight"),
                        })
                        .collect(),
                )
            };
            LayerNames {
                attn_norm: format!("{p}.attn_norm.weight"),
                wq: format!("{p}.attn_q.weight"),
                wk: format!("{p}.attn_k.weight"),
                wv: format!("{p}.attn_v.weight"),
                wo: format!("{p}.attn_output.weight"),
                ffn_norm: format!("{p}.ffn_norm.weight"),
                router: moe.then(|| format!("{p}.ffn_gate_inp.weight")),
                experts,
            }
        })
        .collect();
    let embed = "token_embd.weight".to_string();
    ModelNames {
        lm_head: if has("output.weight") { "output.weight".to_string() } else { embed.clone() },
        embed,
        final_norm: "output_norm.weight".to_string(),
        layers,
    }
}
