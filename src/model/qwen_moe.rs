//! Qwen2-MoE (`Qwen2MoeForCausalLM`, GGUF `qwen2moe`: Qwen1.5-MoE) and Qwen3-MoE
//! (`Qwen3MoeForCausalLM`, GGUF `qwen3moe`: Qwen3-30B-A3B).
//! - router: softmax over all experts, top-k, renormalised only with `norm_topk_prob`;
//! - Qwen2-MoE: q/k/v biases, a shared expert scaled by sigmoid(w · x), dense layers
//!   through `mlp_only_layers` / `decoder_sparse_step`;
//! - Qwen3-MoE: per-head q/k RMSNorm before rotary, optional biases on q/k/v/o, an
//!   explicit `head_dim`.
//!
//! llama.cpp's graphs fix what the GGUF does not say: qwen2moe never renormalises and has
//! every layer MoE; qwen3moe always renormalises. Rotary is NEOX (HF's rotate-half).

use super::hf::{self, HfConfig};
use super::names::{self, ExpertNames, Experts, SharedNames};
use super::plan::{FfnPlan, LayerPlan, Mlp, MoePlan, QkNorm, RouterOrder, RouterPlan, SharedExpert};
use super::{Family, Has, ggufmeta, model_config, plain_attention};
use crate::config::{MAX_EXPERTS, MAX_FF, MAX_LAYERS, MAX_POSITIONS, MAX_TOP_K, ModelConfig};
use crate::error::{Error, Result};
use crate::model::ggufmeta::GgufMeta;
use crate::model::names::ModelNames;

pub const QWEN2MOE: Family = Family {
    name: "qwen2moe",
    hf: &["Qwen2MoeForCausalLM", "qwen2_moe"],
    gguf: &["qwen2moe"],
    from_hf: qwen2_hf,
    from_gguf: qwen2_gguf,
    fixup: None,
};

pub const QWEN3MOE: Family = Family {
    name: "qwen3moe",
    hf: &["Qwen3MoeForCausalLM", "qwen3_moe"],
    gguf: &["qwen3moe"],
    from_hf: qwen3_hf,
    from_gguf: qwen3_gguf,
    fixup: None,
};

fn qwen2_hf(c: &HfConfig, has: Has) -> Result<(ModelConfig, ModelNames)> {
    qwen_hf(c, has, false)
}
fn qwen3_hf(c: &HfConfig, has: Has) -> Result<(ModelConfig, ModelNames)> {
    qwen_hf(c, has, true)
}
fn qwen2_gguf(m: &GgufMeta, has: Has) -> Result<(ModelConfig, ModelNames)> {
    qwen_gguf(m, has, false)
}
fn qwen3_gguf(m: &GgufMeta, has: Has) -> Result<(ModelConfig, ModelNames)> {
    qwen_gguf(m, has, true)
}

fn router(renorm: bool) -> RouterPlan {
    RouterPlan { order: RouterOrder::SoftmaxTopK, bias: false, renorm, scale: 1.0 }
}

fn qwen_hf(c: &HfConfig, has: Has, v3: bool) -> Result<(ModelConfig, ModelNames)> {
    let k = hf::common(c, 1e-6)?;
    let act = c.act("hidden_act", "silu")?;
    // num_experts 0 makes every layer dense.
    let experts = match c.obj.get("num_experts").and_then(|v| v.as_u64()) {
        Some(0) => 0,
        _ => c.req_any(&["num_experts", "num_local_experts"], MAX_EXPERTS)?,
    };
    let sparse_step = c.opt("decoder_sparse_step", MAX_LAYERS)?.unwrap_or(1);
    let mlp_only = c.usize_list("mlp_only_layers")?;
    let renorm = c.flag("norm_topk_prob")?.unwrap_or(false);
    let (qkv_bias, o_bias) = if v3 {
        let b = c.flag("attention_bias")?.unwrap_or(false);
        (b, b)
    } else {
        (c.flag("qkv_bias")?.unwrap_or(true), false)
    };
    // The window applies only with use_sliding_window; Qwen2-MoE then slides on the
    // layers `layer_types` names (transformers derives them from max_window_layers).
    let use_window = c.flag("use_sliding_window")?.unwrap_or(false);
    let window = if use_window { Some(c.req("sliding_window", MAX_POSITIONS)?) } else { None };
    let sliding: Vec<bool> = match (window, v3) {
        (None, _) => vec![false; k.layers],
        (Some(_), true) => vec![true; k.layers],
        (Some(_), false) => match c.layer_types(k.layers)? {
            Some(t) => t,
            None => {
                let max_window_layers = c.opt("max_window_layers", MAX_LAYERS)?.unwrap_or(28);
                (0..k.layers).map(|i| (i + 1) % 2 == 1 && i < max_window_layers).collect()
            }
        },
    };
    let mut plan = Vec::with_capacity(k.layers);
    let mut layers = Vec::with_capacity(k.layers);
    for (l, &slides) in sliding.iter().enumerate() {
        let mut attn = plain_attention(&k.rope, k.head_dim, window.filter(|_| slides));
        attn.qkv_bias = qkv_bias;
        attn.o_bias = o_bias;
        if v3 {
            attn.qk_norm = QkNorm::PerHead;
        }
        let moe = experts > 0 && !mlp_only.contains(&l) && (l + 1).is_multiple_of(sparse_step);
        let p = format!("model.layers.{l}");
        let m = format!("{p}.mlp");
        let ffn = if moe {
            FfnPlan::Moe(MoePlan {
                experts,
                top_k: c.req("num_experts_per_tok", MAX_TOP_K)?,
                ff: c.req("moe_intermediate_size", MAX_FF)?,
                router: router(renorm),
                act,
                expert_bias: false,
                shared: if v3 {
                    None
                } else {
                    Some(SharedExpert { ff: c.req("shared_expert_intermediate_size", MAX_FF)?, gated: true })
                },
            })
        } else {
            FfnPlan::Dense(Mlp { ff: c.req("intermediate_size", MAX_FF)?, act })
        };
        let layer = LayerPlan { attn, ffn, post_norms: false };
        let names = if moe {
            // Hub checkpoints store each expert; transformers' runtime layout is fused.
            let ex = if has(&format!("{m}.experts.gate_up_proj")) {
                Experts::StackedGateUp {
                    gate_up: format!("{m}.experts.gate_up_proj"),
                    down: format!("{m}.experts.down_proj"),
                }
            } else {
                Experts::Separate(
                    (0..experts)
                        .map(|e| ExpertNames {
                            w1: format!("{m}.experts.{e}.gate_proj.weight"),
                            w2: format!("{m}.experts.{e}.down_proj.weight"),
                            w3: format!("{m}.experts.{e}.up_proj.weight"),
                        })
                        .collect(),
                )
            };
            let shared = (!v3).then(|| SharedNames {
                expert: names::hf_mlp(&format!("{m}.shared_expert")),
                gate_inp: Some(format!("{m}.shared_expert_gate.weight")),
            });
            names::hf_layer(&p, &layer, Some((format!("{m}.gate.weight"), None)), ex, None, shared)
        } else {
            names::hf_layer(&p, &layer, None, names::hf_mlp(&m), None, None)
        };
        plan.push(layer);
        layers.push(names);
    }
    let family = if v3 { "qwen3moe" } else { "qwen2moe" };
    Ok((model_config(family, c.arch.clone(), &k, false, plan), names::hf_model(layers, k.tie)))
}

fn qwen_gguf(m: &GgufMeta, has: Has, v3: bool) -> Result<(ModelConfig, ModelNames)> {
    let k = ggufmeta::common(m)?;
    let experts = m.req("expert_count", MAX_EXPERTS)?;
    let top_k = m.req("expert_used_count", MAX_TOP_K)?;
    let ff = m.req("expert_feed_forward_length", MAX_FF)?;
    let renorm = m.flag("expert_weights_norm").unwrap_or(v3);
    let shared = match m.opt("expert_shared_feed_forward_length", MAX_FF)? {
        Some(sff) => Some(SharedExpert { ff: sff, gated: has("blk.0.ffn_gate_inp_shexp.weight") }),
        None if !v3 && has("blk.0.ffn_gate_shexp.weight") => {
            return Err(m.bad(format!("{}.expert_shared_feed_forward_length is missing", m.arch)));
        }
        None => None,
    };
    let mut attn = plain_attention(&k.rope, k.head_dim, None);
    attn.qkv_bias = has("blk.0.attn_q.bias");
    attn.o_bias = has("blk.0.attn_output.bias");
    if has("blk.0.attn_q_norm.weight") {
        attn.qk_norm = QkNorm::PerHead;
    } else if v3 {
        return Err(m.bad("qwen3moe without blk.0.attn_q_norm.weight"));
    }
    let layer = LayerPlan {
        post_norms: false,
        attn,
        ffn: FfnPlan::Moe(MoePlan {
            experts,
            top_k,
            ff,
            router: router(renorm),
            act: super::plan::Act::SiluGlu,
            expert_bias: false,
            shared,
        }),
    };
    if k.layers > 0 && !has("blk.0.ffn_gate_inp.weight") {
        return Err(Error::format(
            &m.g.file,
            "blk.0.ffn_gate_inp.weight is missing: dense layers are not supported here",
        ));
    }
    let plan = vec![layer; k.layers];
    let layers = (0..k.layers).map(|l| names::gguf_layer(l, &plan[l], has, "ffn_norm")).collect();
    let family = if v3 { "qwen3moe" } else { "qwen2moe" };
    Ok((model_config(family, m.arch.to_string(), &k, false, plan), names::gguf_model(layers, has)))
}
