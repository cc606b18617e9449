//! Gemma 3 (`Gemma3ForCausalLM`, `gemma3_text`; GGUF `gemma3`: Gemma 3 270M … 27B, text).
//! A dense block with four RMSNorms — before and after attention, before and after the
//! FFN (`post_norms`) — per-head q/k RMSNorm before rotary, a GELU-tanh GLU, embeddings
//! scaled by √hidden, and tied embeddings. Layers alternate five local (sliding-window,
//! rotary base 10 000) and one global (full attention, base 1 000 000 with the model's
//! rope scaling); transformers names them in `layer_types`, llama.cpp derives them from
//! `sliding_window_pattern` (6): layer l is local iff l % 6 < 5.
//!
//! Hugging Face norms compute x̂ · (1 + w) (`norm_offset` 1); llama.cpp's converter stores
//! 1 + w. Queries are scaled by `query_pre_attn_scalar`^-½ (llama.cpp: head_dim^-½, and
//! (hidden / heads)^-½ for the 62-layer 27B, which is what its 168 means there).
//! Rotary is NEOX (HF rotate-half) in both formats.

use super::hf::{self, HfConfig};
use super::names::{self, ModelNames};
use super::plan::{Act, FfnPlan, LayerPlan, Mlp, QkNorm, RopePlan, RopeScaling};
use super::{Family, Has, ggufmeta, model_config, plain_attention};
use crate::config::{MAX_FF, MAX_LAYERS, MAX_POSITIONS, ModelConfig};
use crate::error::{Error, Result};
use crate::gguf::Value;
use crate::model::ggufmeta::GgufMeta;
use serde_json::Map;

pub const GEMMA3: Family = Family {
    name: "gemma3",
    hf: &["Gemma3ForCausalLM", "gemma3_text"],
    gguf: &["gemma3"],
    from_hf: gemma3_hf,
    from_gguf: gemma3_gguf,
    fixup: None,
};

/// One layer: dense GELU-tanh FFN, per-head q/k norms, post-norms.
fn layer(rope: &RopePlan, head_dim: usize, window: Option<usize>, scale: f32, ff: usize) -> LayerPlan {
    let mut attn = plain_attention(rope, head_dim, window);
    attn.qk_norm = QkNorm::PerHead;
    attn.scale = scale;
    LayerPlan { attn, ffn: FfnPlan::Dense(Mlp { ff, act: Act::GeluTanhGlu }), post_norms: true }
}

/// transformers 5 keeps one rope dict per layer type under `rope_parameters`; older
/// configs give `rope_theta` (+ `rope_scaling`) for global layers and
/// `rope_local_base_freq` for local ones.
fn hf_ropes(c: &HfConfig) -> Result<(RopePlan, RopePlan)> {
    let per_type =
        c.obj.get("rope_parameters").and_then(|p| p.as_object()).filter(|p| p.contains_key("full_attention"));
    if let Some(p) = per_type {
        let one = |kind: &str| -> Result<RopePlan> {
            let inner = p.get(kind).cloned().unwrap_or_else(|| serde_json::json!({"rope_type": "default"}));
            let mut obj = Map::new();
            obj.insert("rope_parameters".into(), inner);
            if let Some(m) = c.obj.get("max_position_embeddings") {
                obj.insert("max_position_embeddings".into(), m.clone());
            }
            hf::rope(&HfConfig { obj, arch: c.arch.clone() })
                .map_err(|e| Error::config(format!("rope_parameters.{kind}: {e}")))
        };
        let local = one("sliding_attention")?;
        // Without its own theta the local base is Gemma's 10 000, not the generic default.
        let local = if p.get("sliding_attention").and_then(|s| s.get("rope_theta")).is_none() {
            RopePlan { theta: 10_000.0, ..local }
        } else {
            local
        };
        return Ok((one("full_attention")?, local));
    }
    let mut global = hf::rope(c)?;
    if c.obj.get("rope_theta").is_none() {
        global.theta = 1_000_000.0;
    }
    let local_theta = c.float("rope_local_base_freq")?.unwrap_or(10_000.0);
    if !(local_theta > 1.0) {
        return Err(Error::config(format!("'rope_local_base_freq' = {local_theta} must be > 1")));
    }
    Ok((global, RopePlan { theta: local_theta as f32, scaling: RopeScaling::None }))
}

fn gemma3_hf(c: &HfConfig, _has: Has) -> Result<(ModelConfig, ModelNames)> {
    let mut k = hf::common(c, 1e-6)?;
    k.tie = c.flag("tie_word_embeddings")?.unwrap_or(true);
    let act = c.act(
        if c.str("hidden_activation").is_some() { "hidden_activation" } else { "hidden_act" },
        "gelu_pytorch_tanh",
    )?;
    if act != Act::GeluTanhGlu {
        return Err(Error::config("Gemma 3 with an activation other than gelu_pytorch_tanh is not supported"));
    }
    c.refuse("final_logit_softcapping", "logit soft-capping")?;
    c.refuse("attn_logit_softcapping", "attention soft-capping")?;
    c.refuse("use_bidirectional_attention", "bidirectional attention")?;
    let ff = c.req("intermediate_size", MAX_FF)?;
    let window = c.req("sliding_window", MAX_POSITIONS)?;
    let scalar = c.float("query_pre_attn_scalar")?.unwrap_or(k.head_dim as f64);
    if !(scalar > 0.0) {
        return Err(Error::config(format!("'query_pre_attn_scalar' = {scalar} must be positive")));
    }
    let scale = (1.0 / scalar.sqrt()) as f32;
    let sliding = match c.layer_types(k.layers)? {
        Some(t) => t,
        None => {
            let n = c.opt("sliding_window_pattern", MAX_LAYERS)?.unwrap_or(6);
            (0..k.layers).map(|l| (l + 1) % n != 0).collect()
        }
    };
    let (global, local) = hf_ropes(c)?;
    let mut plan = Vec::with_capacity(k.layers);
    let mut layers = Vec::with_capacity(k.layers);
    for (l, &slides) in sliding.iter().enumerate() {
        let lp = if slides {
            layer(&local, k.head_dim, Some(window), scale, ff)
        } else {
            layer(&global, k.head_dim, None, scale, ff)
        };
        let p = format!("model.layers.{l}");
        let mut n = names::hf_layer(&p, &lp, None, names::hf_mlp(&format!("{p}.mlp")), None, None);
        // Gemma's four norms: post_attention_layernorm is *after* attention here.
        n.ffn_norm = format!("{p}.pre_feedforward_layernorm.weight");
        n.post_attn_norm = Some(format!("{p}.post_attention_layernorm.weight"));
        n.post_ffn_norm = Some(format!("{p}.post_feedforward_layernorm.weight"));
        plan.push(lp);
        layers.push(n);
    }
    let mut cfg = model_config("gemma3", c.arch.clone(), &k, false, plan);
    cfg.embed_scale = (k.hidden as f64).sqrt() as f32;
    cfg.norm_offset = 1.0;
    Ok((cfg, names::hf_model(layers, k.tie)))
}

fn gemma3_gguf(m: &GgufMeta, has: Has) -> Result<(ModelConfig, ModelNames)> {
    let k = ggufmeta::common(m)?;
    m.refuse("final_logit_softcapping", "logit soft-capping")?;
    m.refuse("attn_logit_softcapping", "attention soft-capping")?;
    let ff = m.req("feed_forward_length", MAX_FF)?;
    // llama.cpp: no (or a zero) sliding window means every layer is global.
    let window = match m.g.get(&format!("{}.attention.sliding_window", m.arch)).and_then(|v| v.as_u64()) {
        None | Some(0) => None,
        Some(_) => Some(m.req("attention.sliding_window", MAX_POSITIONS)?),
    };
    let key = format!("{}.attention.sliding_window_pattern", m.arch);
    let sliding: Vec<bool> = match (window, m.g.get(&key)) {
        (None, _) => vec![false; k.layers],
        (Some(_), Some(Value::Array(a))) => {
            if a.len() != k.layers {
                return Err(m.bad(format!("{key} has {} entries for {} layers", a.len(), k.layers)));
            }
            a.iter()
                .map(|v| v.as_bool().ok_or_else(|| m.bad(format!("{key} entry {v:?} is not a boolean"))))
                .collect::<Result<_>>()?
        }
        (Some(_), _) => {
            let n = m.opt("attention.sliding_window_pattern", MAX_LAYERS)?.unwrap_or(6);
            (0..k.layers).map(|l| l % n < n - 1).collect()
        }
    };
    let local =
        RopePlan { theta: m.float("rope.freq_base_swa")?.unwrap_or(10_000.0) as f32, scaling: RopeScaling::None };
    let head = if k.layers == 62 { k.hidden / k.heads } else { k.head_dim };
    let scale = 1.0 / (head as f32).sqrt();
    let plan: Vec<LayerPlan> =
        sliding
            .iter()
            .map(|&s| {
                if s {
                    layer(&local, k.head_dim, window, scale, ff)
                } else {
                    layer(&k.rope, k.head_dim, None, scale, ff)
                }
            })
            .collect();
    let layers = (0..k.layers).map(|l| names::gguf_layer(l, &plan[l], has, "ffn_norm")).collect();
    let mut cfg = model_config("gemma3", m.arch.to_string(), &k, false, plan);
    cfg.embed_scale = (k.hidden as f32).sqrt();
    Ok((cfg, names::gguf_model(layers, has)))
}
