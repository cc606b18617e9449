//! GraniteMoE (`GraniteMoeForCausalLM`, GGUF `granitemoe`: granite-3.x-1b-a400m /
//! 3b-a800m) and GraniteMoeShared (`GraniteMoeSharedForCausalLM`: the same with an
//! ungated shared expert, `shared_mlp`, which llama.cpp writes as granitemoe with
//! `ffn_*_shexp`). Mixtral's block with four multipliers:
//!   h = embed · embedding_multiplier;  h += attn(rms(h)) · residual_multiplier;
//!   h += moe(rms(h)) · residual_multiplier;  logits = lm_head(rms(h)) / logits_scaling,
//! attention scaled by attention_multiplier (not 1/sqrt(d)). The router takes the top-k
//! raw logits and a softmax over those k (equal to softmax → top-k → renormalise, which is
//! how llama.cpp computes it). Experts are stored fused: `input_linear` [E, 2 ff, d] (gate
//! rows, then up rows) and `output_linear` [E, d, ff]. The converter permutes q/k rows for
//! adjacent-pair rotary, as for llama.

use super::hf::{self, HfConfig};
use super::names::{self, Experts, SharedNames};
use super::plan::{Act, FfnPlan, LayerPlan, MoePlan, RouterOrder, RouterPlan, SharedExpert};
use super::{Family, Has, ggufmeta, model_config, plain_attention};
use crate::config::{MAX_EXPERTS, MAX_FF, MAX_TOP_K, ModelConfig};
use crate::error::{Error, Result};
use crate::model::ggufmeta::GgufMeta;
use crate::model::names::ModelNames;

pub const GRANITEMOE: Family = Family {
    name: "granitemoe",
    hf: &["GraniteMoeForCausalLM", "granitemoe", "GraniteMoeSharedForCausalLM", "granitemoeshared"],
    gguf: &["granitemoe"],
    from_hf: granite_hf,
    from_gguf: granite_gguf,
    fixup: None,
};

fn moe(experts: usize, top_k: usize, ff: usize, act: Act, shared_ff: Option<usize>) -> FfnPlan {
    FfnPlan::Moe(MoePlan {
        experts,
        top_k,
        ff,
        router: RouterPlan { order: RouterOrder::TopKSoftmax, bias: false, renorm: false, scale: 1.0 },
        act,
        expert_bias: false,
        shared: shared_ff.map(|ff| SharedExpert { ff, gated: false }),
    })
}

fn multiplier(what: &str, v: Option<f64>) -> Result<f32> {
    match v {
        None => Ok(1.0),
        Some(x) if x.is_finite() && x != 0.0 => Ok(x as f32),
        Some(x) => Err(Error::config(format!("'{what}' = {x} must be a finite, non-zero number"))),
    }
}

fn granite_hf(c: &HfConfig, _has: Has) -> Result<(ModelConfig, ModelNames)> {
    let k = hf::common(c, 1e-6)?;
    let bias = c.flag("attention_bias")?.unwrap_or(false);
    let mut attn = plain_attention(&k.rope, k.head_dim, None);
    (attn.qkv_bias, attn.o_bias) = (bias, bias);
    attn.scale = multiplier("attention_multiplier", c.float("attention_multiplier")?)?;
    // GraniteMoeShared: shared_intermediate_size 0 means no shared expert.
    let shared_ff = match c.obj.get("shared_intermediate_size").and_then(|v| v.as_u64()) {
        None | Some(0) => None,
        _ => Some(c.req("shared_intermediate_size", MAX_FF)?),
    };
    let ffn = moe(
        c.req("num_local_experts", MAX_EXPERTS)?,
        c.req("num_experts_per_tok", MAX_TOP_K)?,
        c.req("intermediate_size", MAX_FF)?,
        c.act("hidden_act", "silu")?,
        shared_ff,
    );
    let plan = vec![LayerPlan { attn, ffn, post_norms: false }; k.layers];
    let layers = (0..k.layers)
        .map(|l| {
            let p = format!("model.layers.{l}");
            let m = format!("{p}.block_sparse_moe");
            let ex = Experts::StackedGateUp {
                gate_up: format!("{m}.input_linear.weight"),
                down: format!("{m}.output_linear.weight"),
            };
            let shared = shared_ff.map(|_| SharedNames {
                expert: Experts::StackedGateUp {
                    gate_up: format!("{p}.shared_mlp.input_linear.weight"),
                    down: format!("{p}.shared_mlp.output_linear.weight"),
                },
                gate_inp: None,
            });
            names::hf_layer(&p, &plan[l], Some((format!("{m}.router.layer.weight"), None)), ex, None, shared)
        })
        .collect();
    let mut cfg = model_config("granitemoe", c.arch.clone(), &k, false, plan);
    cfg.embed_scale = multiplier("embedding_multiplier", c.float("embedding_multiplier")?)?;
    cfg.residual_scale = multiplier("residual_multiplier", c.float("residual_multiplier")?)?;
    cfg.logit_scale = 1.0 / multiplier("logits_scaling", c.float("logits_scaling")?)?;
    Ok((cfg, names::hf_model(layers, k.tie)))
}

fn granite_gguf(m: &GgufMeta, has: Has) -> Result<(ModelConfig, ModelNames)> {
    let k = ggufmeta::common(m)?;
    let bad = |r: Error| m.bad(r);
    let mut attn = plain_attention(&k.rope, k.head_dim, None);
    attn.qkv_bias = has("blk.0.attn_q.bias");
    attn.o_bias = has("blk.0.attn_output.bias");
    attn.scale = multiplier("attention.scale", m.float("attention.scale")?).map_err(bad)?;
    let ffn = moe(
        m.req("expert_count", MAX_EXPERTS)?,
        m.req("expert_used_count", MAX_TOP_K)?,
        m.opt("expert_feed_forward_length", MAX_FF)?.map_or_else(|| m.req("feed_forward_length", MAX_FF), Ok)?,
        Act::SiluGlu,
        m.opt("expert_shared_feed_forward_length", MAX_FF)?,
    );
    let plan = vec![LayerPlan { attn, ffn, post_norms: false }; k.layers];
    let layers = (0..k.layers).map(|l| names::gguf_layer(l, &plan[l], has, "ffn_norm")).collect();
    let mut cfg = model_config("granitemoe", m.arch.to_string(), &k, true, plan);
    cfg.embed_scale = multiplier("embedding_scale", m.float("embedding_scale")?).map_err(bad)?;
    cfg.residual_scale = multiplier("residual_scale", m.float("residual_scale")?).map_err(bad)?;
    cfg.logit_scale = 1.0 / multiplier("logit_scale", m.float("logit_scale")?).map_err(bad)?;
    Ok((cfg, names::gguf_model(layers, has)))
}
