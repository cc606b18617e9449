//! OLMoE (`OlmoeForCausalLM`, GGUF `olmoe`: OLMoE-1B-7B). Every layer is MoE with
//! Qwen2-MoE's router (softmax, top-k, renormalised only with `norm_topk_prob`) and no
//! shared expert; q and k are RMS-normalised over the whole projection (before the head
//! split and rotary). `clip_qkv` is refused: llama.cpp ignores it, transformers clamps.
//! llama.cpp's olmoe never renormalises. Rotary is NEOX (HF's rotate-half).

use super::hf::{self, HfConfig};
use super::names::{self, ExpertNames, Experts};
use super::plan::{FfnPlan, LayerPlan, MoePlan, QkNorm, RouterOrder, RouterPlan};
use super::{Family, Has, ggufmeta, model_config, plain_attention};
use crate::config::{MAX_EXPERTS, MAX_FF, MAX_TOP_K, ModelConfig};
use crate::error::Result;
use crate::model::ggufmeta::GgufMeta;
use crate::model::names::ModelNames;

pub const OLMOE: Family = Family {
    name: "olmoe",
    hf: &["OlmoeForCausalLM", "olmoe"],
    gguf: &["olmoe"],
    from_hf: olmoe_hf,
    from_gguf: olmoe_gguf,
    fixup: None,
};

fn layer(
    attn: super::plan::AttnPlan,
    experts: usize,
    top_k: usize,
    ff: usize,
    renorm: bool,
    act: super::plan::Act,
) -> LayerPlan {
    LayerPlan {
        post_norms: false,
        attn,
        ffn: FfnPlan::Moe(MoePlan {
            experts,
            top_k,
            ff,
            router: RouterPlan { order: RouterOrder::SoftmaxTopK, bias: false, renorm, scale: 1.0 },
            act,
            expert_bias: false,
            shared: None,
        }),
    }
}

fn olmoe_hf(c: &HfConfig, _has: Has) -> Result<(ModelConfig, ModelNames)> {
    c.refuse("clip_qkv", "clamping q/k/v is not implemented")?;
    let k = hf::common(c, 1e-5)?;
    let bias = c.flag("attention_bias")?.unwrap_or(false);
    let mut attn = plain_attention(&k.rope, k.head_dim, None);
    (attn.qkv_bias, attn.o_bias, attn.qk_norm) = (bias, bias, QkNorm::Whole);
    let experts = c.req_any(&["num_experts", "num_local_experts"], MAX_EXPERTS)?;
    let l = layer(
        attn,
        experts,
        c.req("num_experts_per_tok", MAX_TOP_K)?,
        c.req("intermediate_size", MAX_FF)?,
        c.flag("norm_topk_prob")?.unwrap_or(false),
        c.act("hidden_act", "silu")?,
    );
    let plan = vec![l; k.layers];
    let layers = (0..k.layers)
        .map(|i| {
            let p = format!("model.layers.{i}");
            let m = format!("{p}.mlp");
            let ex = Experts::Separate(
                (0..experts)
                    .map(|e| ExpertNames {
                        w1: format!("{m}.experts.{e}.gate_proj.weight"),
                        w2: format!("{m}.experts.{e}.down_proj.weight"),
                        w3: format!("{m}.experts.{e}.up_proj.weight"),
                    })
                    .collect(),
            );
            names::hf_layer(&p, &plan[i], Some((format!("{m}.gate.weight"), None)), ex, None, None)
        })
        .collect();
    Ok((model_config("olmoe", c.arch.clone(), &k, false, plan), names::hf_model(layers, k.tie)))
}

fn olmoe_gguf(m: &GgufMeta, has: Has) -> Result<(ModelConfig, ModelNames)> {
    m.refuse("attention.clamp_kqv", "clamping q/k/v is not implemented")?;
    let k = ggufmeta::common(m)?;
    let mut attn = plain_attention(&k.rope, k.head_dim, None);
    attn.qkv_bias = has("blk.0.attn_q.bias");
    attn.o_bias = has("blk.0.attn_output.bias");
    attn.qk_norm = QkNorm::Whole;
    let l = layer(
        attn,
        m.req("expert_count", MAX_EXPERTS)?,
        m.req("expert_used_count", MAX_TOP_K)?,
        m.opt("expert_feed_forward_length", MAX_FF)?.map_or_else(|| m.req("feed_forward_length", MAX_FF), Ok)?,
        m.flag("expert_weights_norm").unwrap_or(false),
        super::plan::Act::SiluGlu,
    );
    let plan = vec![l; k.layers];
    let layers = (0..k.layers).map(|i| names::gguf_layer(i, &plan[i], has, "ffn_norm")).collect();
    Ok((model_config("olmoe", m.arch.to_string(), &k, false, plan), names::gguf_model(layers, has)))
}
