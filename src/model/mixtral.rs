//! Mixtral (`MixtralForCausalLM`) and its dense relatives `LlamaForCausalLM` /
//! `MistralForCausalLM`, whose single MLP is one expert of weight 1; and GGUF's `llama`
//! architecture, dense or MoE as llama.cpp writes Mixtral (stacked `ffn_*_exps`).
//! Block: RMSNorm, rotary GQA (optionally a sliding window), SwiGLU experts behind a
//! softmax → top-k → renormalise router.

use super::hf::{self, HfConfig};
use super::names::{self, ExpertNames, Experts};
use super::plan::{Act, FfnPlan, LayerPlan, Mlp, MoePlan, RouterOrder, RouterPlan};
use super::{Family, Has, ggufmeta, model_config, plain_attention};
use crate::config::{MAX_EXPERTS, MAX_FF, MAX_POSITIONS, MAX_TOP_K, ModelConfig};
use crate::error::{Error, Result};
use crate::model::ggufmeta::GgufMeta;
use crate::model::names::ModelNames;

pub const MIXTRAL: Family = Family {
    name: "mixtral",
    hf: &["MixtralForCausalLM", "mixtral"],
    gguf: &["llama"],
    from_hf: mixtral_hf,
    from_gguf: llama_gguf,
    fixup: None,
};

pub const LLAMA: Family = Family {
    name: "llama",
    hf: &["LlamaForCausalLM", "llama", "MistralForCausalLM", "mistral"],
    gguf: &[],
    from_hf: llama_hf,
    from_gguf: llama_gguf,
    fixup: None,
};

/// Mixtral's router: softmax over all experts, top-k, renormalised.
fn router() -> RouterPlan {
    RouterPlan { order: RouterOrder::SoftmaxTopK, bias: false, renorm: true, scale: 1.0 }
}

fn llama_like(c: &HfConfig) -> Result<()> {
    c.refuse("attention_bias", "biases on Llama-family projections")?;
    c.refuse("mlp_bias", "biases on Llama-family MLPs")?;
    if c.act("hidden_act", "silu")? != Act::SiluGlu {
        return Err(Error::config(format!(
            "'hidden_act' = {:?} is not supported here (only silu)",
            c.str("hidden_act")
        )));
    }
    Ok(())
}

fn mixtral_hf(c: &HfConfig, _has: Has) -> Result<(ModelConfig, ModelNames)> {
    llama_like(c)?;
    let k = hf::common(c, 1e-6)?;
    let experts = c.req("num_local_experts", MAX_EXPERTS)?;
    let top_k = c.req("num_experts_per_tok", MAX_TOP_K)?;
    let ff = c.req("intermediate_size", MAX_FF)?;
    let window = c.opt("sliding_window", MAX_POSITIONS)?;
    let layer = LayerPlan {
        post_norms: false,
        attn: plain_attention(&k.rope, k.head_dim, window),
        ffn: FfnPlan::Moe(MoePlan {
            experts,
            top_k,
            ff,
            router: router(),
            act: Act::SiluGlu,
            expert_bias: false,
            shared: None,
        }),
    };
    let plan = vec![layer; k.layers];
    let layers = (0..k.layers)
        .map(|l| {
            let p = format!("model.layers.{l}");
            let m = format!("{p}.block_sparse_moe");
            let experts = Experts::Separate(
                (0..experts)
                    .map(|e| ExpertNames {
                        w1: format!("{m}.experts.{e}.w1.weight"),
                        w2: format!("{m}.experts.{e}.w2.weight"),
                        w3: format!("{m}.experts.{e}.w3.weight"),
                    })
                    .collect(),
            );
            names::hf_layer(&p, &plan[l], Some((format!("{m}.gate.weight"), None)), experts, None, None)
        })
        .collect();
    let cfg = model_config("mixtral", c.arch.clone(), &k, false, plan);
    Ok((cfg, names::hf_model(layers, k.tie)))
}

fn llama_hf(c: &HfConfig, _has: Has) -> Result<(ModelConfig, ModelNames)> {
    llama_like(c)?;
    let k = hf::common(c, 1e-6)?;
    let ff = c.req("intermediate_size", MAX_FF)?;
    let window = c.opt("sliding_window", MAX_POSITIONS)?;
    let layer = LayerPlan {
        post_norms: false,
        attn: plain_attention(&k.rope, k.head_dim, window),
        ffn: FfnPlan::Dense(Mlp { ff, act: Act::SiluGlu }),
    };
    let plan = vec![layer; k.layers];
    let layers = (0..k.layers)
        .map(|l| {
            let p = format!("model.layers.{l}");
            names::hf_layer(&p, &plan[l], None, names::hf_mlp(&format!("{p}.mlp")), None, None)
        })
        .collect();
    let cfg = model_config("llama", c.arch.clone(), &k, false, plan);
    Ok((cfg, names::hf_model(layers, k.tie)))
}

/// GGUF `llama`: dense, or MoE (`expert_count` > 1) as llama.cpp writes Mixtral. The
/// converter permutes q/k rows for adjacent-pair rotary.
fn llama_gguf(m: &GgufMeta, has: Has) -> Result<(ModelConfig, ModelNames)> {
    let k = ggufmeta::common(m)?;
    let experts = m.opt("expert_count", MAX_EXPERTS)?.unwrap_or(1);
    let ff = m.req("feed_forward_length", MAX_FF)?;
    let ffn = if experts > 1 {
        let top_k = m.req("expert_used_count", MAX_TOP_K)?;
        FfnPlan::Moe(MoePlan {
            experts,
            top_k,
            ff: m.opt("expert_feed_forward_length", MAX_FF)?.unwrap_or(ff),
            router: router(),
            act: Act::SiluGlu,
            expert_bias: false,
            shared: None,
        })
    } else {
        FfnPlan::Dense(Mlp { ff, act: Act::SiluGlu })
    };
    let family = if experts > 1 { "mixtral" } else { "llama" };
    let layer = LayerPlan { attn: plain_attention(&k.rope, k.head_dim, None), ffn, post_norms: false };
    let plan = vec![layer; k.layers];
    let layers = (0..k.layers).map(|l| names::gguf_layer(l, &plan[l], has, "ffn_norm")).collect();
    let cfg = model_config(family, m.arch.to_string(), &k, true, plan);
    Ok((cfg, names::gguf_model(layers, has)))
}
